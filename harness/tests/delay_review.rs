//! Event orders that broke delays of the admission budget (`admission.max_delay_ms`), found in
//! review: a delayed call's answer deadline, the breaker's state when a delayed upgrade is
//! resumed, and a budget lowered while its bucket is in debt.
// Test code throughout: clippy.toml lets it unwrap, expect and panic.
#![cfg(test)]

use std::time::Duration;

use floodgate_harness::{built_module, Host, LocalResponse, Worker, CONTINUE, PAUSE};

const BREAKER: &str = "collab_ws";
const FAILURES: &str = "breaker=.=collab_ws;.;outcome=.=failure;.;floodgate_calls_total";
const OPENED: &str = "breaker=.=collab_ws;.;from=.=closed;.;to=.=open;.;floodgate_transitions_total";

fn host() -> Host {
    Host::new(&built_module()).unwrap_or_else(|e| panic!("{e:#}"))
}

fn worker(host: &mut Host, config: &str) -> Worker {
    let mut w = host.worker().unwrap();
    assert!(w.configure("floodgate", config).unwrap(), "configuration refused: {:?}", host.logs());
    w
}

fn metric(host: &Host, name: &str) -> i64 {
    host.metric(name).unwrap_or(0)
}

#[derive(Debug)]
enum Start {
    Now(u32),
    Held(u32),
    Refused(LocalResponse),
}

fn start(w: &mut Worker) -> Start {
    let ctx = w.new_context().unwrap();
    w.set_context_property(ctx, &["xds", "cluster_name"], BREAKER.as_bytes());
    let headers = [(":method", "GET"), (":path", "/ws"), ("upgrade", "websocket"), ("connection", "upgrade")];
    let action = w.request_headers(ctx, &headers, false).unwrap();
    match (action, w.local_response(ctx)) {
        (CONTINUE, None) => Start::Now(ctx),
        (PAUSE, None) => Start::Held(ctx),
        (PAUSE, Some(reply)) => {
            w.end(ctx).unwrap();
            Start::Refused(reply)
        }
        other => panic!("unexpected {other:?}"),
    }
}

fn now(s: Start) -> u32 {
    match s {
        Start::Now(ctx) => ctx,
        other => panic!("expected an admission, got {other:?}"),
    }
}

fn held(s: Start) -> u32 {
    match s {
        Start::Held(ctx) => ctx,
        Start::Refused(r) => panic!("expected a delay, refused: {} {:?}", r.status, r.header("x-floodgate")),
        other => panic!("expected a delay, got {other:?}"),
    }
}

fn answer(w: &mut Worker, ctx: u32, status: u16) {
    w.response_headers(ctx, &[(":status", &status.to_string())], false).unwrap();
    w.end(ctx).unwrap();
}

/// Ticks every 100 ms for `ms`.
fn run(host: &Host, w: &mut Worker, ms: u64) {
    for _ in 0..ms / 100 {
        host.advance(Duration::from_millis(100));
        w.tick().unwrap();
    }
}

/// Calls delayed longer than `answer_timeout_ms`: the tick's clock-step guard in
/// `Calls::take_overdue` (a call that starts after now "keeps its full timeout from now") sees a
/// postponed start as a clock that stepped back, and moves the deadline back to the first tick
/// plus the timeout. Each delayed call then times out while it still waits (never sent), counted
/// as the backend's failure: three of them trip the breaker.
#[test]
fn calls_delayed_longer_than_their_answer_timeout_are_not_failures_while_they_wait() {
    let config = r#"{"defaults": {"consecutive_failures": 3, "answer_timeout_ms": 1000,
        "admission": {"per_second": 1, "burst": 1, "max_delay_ms": 5000}}}"#;
    let mut host = host();
    let mut w = worker(&mut host, config);
    let first = now(start(&mut w));
    answer(&mut w, first, 101);
    // Three upgrades wait 1, 2 and 3 s for their tokens.
    let waiting: Vec<u32> = (0..3).map(|_| held(start(&mut w))).collect();
    // The backend answers each one as soon as it is sent.
    let mut answered = [false; 3];
    for _ in 0..35 {
        run(&host, &mut w, 100);
        for (i, &ctx) in waiting.iter().enumerate() {
            if w.resumed_request(ctx) == 1 && !answered[i] {
                answer(&mut w, ctx, 101);
                answered[i] = true;
            }
        }
        assert_eq!(metric(&host, FAILURES), 0, "calls still waiting counted as failures");
        assert_eq!(metric(&host, OPENED), 0, "the breaker tripped on calls it never sent");
    }
    assert_eq!(answered, [true; 3]);
}

/// The default answer timeout (10 s) and the longest delay (10 s): a call that waited 10 s must
/// still have its full 10 s from its start, not the 100 ms left of "first tick + 10 s".
#[test]
fn a_call_delayed_max_delay_keeps_its_full_answer_timeout_from_its_start() {
    let config = r#"{"defaults": {"consecutive_failures": 3,
        "admission": {"per_second": 1, "burst": 1, "max_delay_ms": 10000}}}"#;
    let mut host = host();
    let mut w = worker(&mut host, config);
    let first = now(start(&mut w));
    answer(&mut w, first, 101);
    // Ten upgrades wait 1 to 10 s; the earlier nine are answered at once when they start.
    let waiting: Vec<u32> = (0..10).map(|_| held(start(&mut w))).collect();
    let last = waiting[9];
    let mut answered = [false; 9];
    for _ in 0..100 {
        run(&host, &mut w, 100);
        for (i, &ctx) in waiting[..9].iter().enumerate() {
            if w.resumed_request(ctx) == 1 && !answered[i] {
                answer(&mut w, ctx, 101);
                answered[i] = true;
            }
        }
    }
    assert_eq!(w.resumed_request(last), 1, "not resumed when its token came");
    // The backend takes 2 s to answer the upgrade: well within answer_timeout_ms of its start.
    run(&host, &mut w, 2_000);
    assert_eq!(metric(&host, FAILURES), 0, "timed out counting from its first tick, not its start");
    answer(&mut w, last, 101);
}

/// A budget lowered by a configuration update while its bucket (shared data, kept across
/// reloads) is in debt: the debt was taken at the old rate, within the old `max_delay_ms`, but is
/// paid back at the new rate. From 100/s with up to 10 s of delay to 1/s, the bucket owes 1,000
/// tokens: every upgrade is refused for about 17 minutes, where the new budget alone would let one
/// through at least every second. Expected: a wait never longer than the current budget's
/// `max_delay_ms` plus its refill time.
#[test]
fn lowering_the_budget_while_its_bucket_is_in_debt_does_not_lock_upgrades_out() {
    let old = r#"{"defaults": {"admission": {"per_second": 100, "burst": 1, "max_delay_ms": 10000}}}"#;
    let new = r#"{"defaults": {"admission": {"per_second": 1, "burst": 1, "max_delay_ms": 10000}}}"#;
    let mut host = host();
    let mut before = worker(&mut host, old);
    now(start(&mut before));
    // A storm: 1,000 upgrades delayed up to 10 s at the old rate.
    for _ in 0..1_000 {
        held(start(&mut before));
    }
    // The operator lowers the budget (the same Envoy, the same shared data).
    let mut after = worker(&mut host, new);
    // 20 s later, the old delays all started long ago; the new budget (1/s, up to 10 s of delay)
    // admits or delays the next upgrade.
    host.advance(Duration::from_secs(20));
    match start(&mut after) {
        Start::Refused(r) => panic!(
            "refused 20 s after the budget changed (retry-after {:?}): the old debt is paid at the new rate",
            r.header("retry-after")
        ),
        Start::Now(_) | Start::Held(_) => {}
    }
}

/// DESIGN: the breaker "refuses new upgrades while open". An upgrade delayed by the budget has
/// not reached the backend; if the breaker trips while it waits, resuming it sends a new upgrade
/// into an open breaker (and every call delayed before the trip with it: up to
/// `per_second * max_delay_ms` of them, into a backend that is failing). Expected: it is
/// answered with the breaker's refusal, not sent upstream.
#[test]
fn a_delayed_upgrade_is_not_sent_upstream_when_its_breaker_opened_while_it_waited() {
    let config = r#"{"defaults": {"consecutive_failures": 3, "open": {"base_ms": 60000, "jitter": 0.0},
        "answer_timeout_ms": 0, "admission": {"per_second": 1, "burst": 3, "max_delay_ms": 5000}}}"#;
    let mut host = host();
    let mut w = worker(&mut host, config);
    let admitted: Vec<u32> = (0..3).map(|_| now(start(&mut w))).collect();
    let ctx = held(start(&mut w));
    // The three admitted fail: the breaker opens for a minute.
    for a in admitted {
        answer(&mut w, a, 503);
    }
    assert_eq!(metric(&host, OPENED), 1);
    match start(&mut w) {
        Start::Refused(r) => assert_eq!(r.header("x-floodgate"), Some("open")),
        other => panic!("a new upgrade was not refused by the open breaker: {other:?}"),
    }
    run(&host, &mut w, 2_000);
    assert_eq!(w.resumed_request(ctx), 0, "a delayed upgrade was sent upstream through an open breaker");
    let reply = w.local_response(ctx).expect("a delayed upgrade left hanging: neither resumed nor answered");
    assert_eq!(reply.header("x-floodgate"), Some("open"));
}

/// The same with the control plane's forced_open (an operator, or backpressure, says: nothing
/// new to this backend): what the budget delayed before it still goes through for up to
/// `max_delay_ms`.
#[test]
fn a_delayed_upgrade_is_not_sent_upstream_past_a_forced_open_that_came_while_it_waited() {
    let config = r#"{"defaults": {"admission": {"per_second": 1, "burst": 1, "max_delay_ms": 5000}},
        "control": {"cluster": "floodgate_control", "token": "t0ken", "wait_s": 5, "timeout_ms": 7000,
                    "retry_ms": 200, "stale_after_s": 30}}"#;
    let mut host = host();
    let mut w = host.worker().unwrap();
    w.set_property(&["xds", "node", "id"], b"harness-node");
    w.add_cluster("floodgate_control");
    assert!(w.configure("floodgate", config).unwrap(), "configuration refused: {:?}", host.logs());
    let mut poll = None;
    for _ in 0..5 {
        w.tick().unwrap();
        poll = poll.or_else(|| w.http_calls().first().map(|c| c.token));
        host.advance(Duration::from_millis(100));
    }
    let token = poll.expect("no poll");
    let first = now(start(&mut w));
    answer(&mut w, first, 101);
    let ctx = held(start(&mut w));
    let snapshot = format!(
        r#"{{"version": 1, "generated_at": "2026-11-22T10:00:00Z", "breakers": [{{"key": "{BREAKER}",
            "state": "forced_open", "reason": "backpressure_critical", "since": "2026-11-22T09:58:00Z",
            "until": null, "event_id": "e1"}}]}}"#
    );
    w.answer_http_call(token, 200, &[], snapshot.as_bytes()).unwrap();
    w.tick().unwrap();
    match start(&mut w) {
        Start::Refused(r) => assert_eq!(r.header("x-floodgate"), Some("forced_open")),
        other => panic!("a new upgrade was not refused by the forced_open: {other:?}"),
    }
    run(&host, &mut w, 2_000);
    assert_eq!(w.resumed_request(ctx), 0, "a delayed upgrade was sent upstream past a forced_open");
    let reply = w.local_response(ctx).expect("a delayed upgrade left hanging: neither resumed nor answered");
    assert_eq!(reply.header("x-floodgate"), Some("forced_open"));
}

/// Envoy's `FilterDataStatus::Continue`: "If headers have not yet been sent to the next filter,
/// they will be sent first". A delayed client that sends bytes after its request headers (an
/// eager first WebSocket frame, any body; with `shed: all`, a POST's body) gets the filter's
/// body callback, which answers Continue (the SDK's default): Envoy then resumes the paused
/// headers at once, and the upgrade skips its wait and passes the budget (its token is still
/// owed). Trailers likewise. Expected: while it waits, its data is held (StopIterationAndBuffer);
/// after its resume, it flows.
#[test]
fn data_from_a_delayed_client_does_not_start_its_upgrade_before_its_token() {
    let config = r#"{"defaults": {"admission": {"per_second": 10, "burst": 1, "max_delay_ms": 500}}}"#;
    let mut host = host();
    let mut w = worker(&mut host, config);
    let first = now(start(&mut w));
    answer(&mut w, first, 101);
    let ctx = held(start(&mut w));
    assert_eq!(w.request_body(ctx, b"\x81\x05early", false).unwrap(), PAUSE, "the body resumed a waiting upgrade");
    assert_eq!(w.request_trailers(ctx, &[("x-t", "1")]).unwrap(), PAUSE, "trailers resumed a waiting upgrade");
    run(&host, &mut w, 100);
    assert_eq!(w.resumed_request(ctx), 1);
    assert_eq!(w.request_body(ctx, b"\x81\x05later", false).unwrap(), CONTINUE, "a resumed stream's data held");
    answer(&mut w, ctx, 101);
}

/// A delayed call's duration (for `slow_call`) counts from its token's time, but the tick resumes
/// it up to a tick (100 ms) later: the proxy's own lateness counts as the backend's slowness. A
/// backend that answers every delayed upgrade in 60 ms, under a 100 ms `slow_call`, is "slow"
/// for each one resumed more than 40 ms after its token; in a reconnect storm, where most
/// upgrades are delayed, that is a slow_call_rate trip of a healthy backend.
#[test]
fn the_ticks_lateness_does_not_make_a_delayed_call_slow() {
    let config = r#"{"defaults": {"slow_call": {"duration_ms": 100, "rate": 0.5},
        "admission": {"per_second": 10, "burst": 1, "max_delay_ms": 1000}}}"#;
    let slow = "breaker=.=collab_ws;.;outcome=.=slow;.;floodgate_calls_total";
    let mut host = host();
    let mut w = worker(&mut host, config);
    let first = now(start(&mut w));
    answer(&mut w, first, 101);
    // Its token comes at +100 ms; this worker's ticks fall at +50, +150...
    let ctx = held(start(&mut w));
    host.advance(Duration::from_millis(50));
    w.tick().unwrap();
    host.advance(Duration::from_millis(100));
    w.tick().unwrap();
    assert_eq!(w.resumed_request(ctx), 1);
    // The backend answers 60 ms after the upgrade reached it.
    host.advance(Duration::from_millis(60));
    answer(&mut w, ctx, 101);
    w.tick().unwrap();
    assert_eq!(metric(&host, slow), 0, "a 60 ms answer counted slow: the 50 ms it waited for the tick counted");
}

/// The same lateness against `answer_timeout_ms`: the deadline counts from the token's time, so
/// the up-to-a-tick wait for the resume is taken from the backend's time to answer. With 200 ms
/// (the smallest is 100), a call resumed 50 ms late that the backend answers 180 ms after it
/// reached it is a failure.
#[test]
fn the_ticks_lateness_is_not_taken_from_a_delayed_calls_answer_timeout() {
    // (A slow_call duration: not the lean path, so the answer reads the clock and its deadline.)
    let config = r#"{"defaults": {"answer_timeout_ms": 200, "slow_call": {"duration_ms": 1000, "rate": 1.0},
        "admission": {"per_second": 10, "burst": 1, "max_delay_ms": 1000}}}"#;
    let mut host = host();
    let mut w = worker(&mut host, config);
    let first = now(start(&mut w));
    answer(&mut w, first, 101);
    // Its token comes at +100 ms; this worker's ticks fall at +50, +150, +250...
    let ctx = held(start(&mut w));
    host.advance(Duration::from_millis(50));
    w.tick().unwrap();
    host.advance(Duration::from_millis(100));
    w.tick().unwrap();
    assert_eq!(w.resumed_request(ctx), 1);
    host.advance(Duration::from_millis(100));
    w.tick().unwrap();
    // The backend answers 180 ms after the upgrade reached it.
    host.advance(Duration::from_millis(80));
    answer(&mut w, ctx, 101);
    w.tick().unwrap();
    assert_eq!(metric(&host, FAILURES), 0, "answered within answer_timeout_ms of reaching the backend: a failure");
}
