//! Delays of the admission budget (`admission.max_delay_ms`) in the compiled module: an upgrade
//! past the budget waits paused until its token comes and its worker's tick resumes it; never
//! sooner, never longer than `max_delay_ms` plus one tick; a client that leaves is never resumed;
//! probes, dry runs and TCP connections are never delayed; the per-worker bound holds; a breaker
//! that opened (or a forced_open) while an upgrade waited refuses it then; deadlines and
//! durations count from the resume; data waits with its request; and a model-based test drives
//! random interleavings against a small reference bucket.
// Test code throughout: clippy.toml lets it unwrap, expect and panic.
#![cfg(test)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{host, metric, worker, Rng};
use floodgate_harness::{status, Host, LocalResponse, Worker, CONTINUE, PAUSE};

const BREAKER: &str = "collab_ws";
/// 10 upgrades a second, 2 at once, a wait of up to 500 ms.
const DELAYING: &str = r#"{"defaults": {"consecutive_failures": 3, "open": {"base_ms": 10000, "jitter": 0.0},
    "answer_timeout_ms": 1000, "half_open": {"permits": 2, "successes": 2},
    "admission": {"per_second": 10, "burst": 2, "max_delay_ms": 500}}}"#;
const ADMITTED: &str = "breaker=.=collab_ws;.;floodgate_admission_admitted_total";
const DELAYED: &str = "breaker=.=collab_ws;.;floodgate_admission_delayed_total";
const REJECTED: &str = "breaker=.=collab_ws;.;kind=.=websocket;.;floodgate_admission_rejected_total";
const FAILURES: &str = "breaker=.=collab_ws;.;outcome=.=failure;.;floodgate_calls_total";
const OPENED: &str = "breaker=.=collab_ws;.;from=.=closed;.;to=.=open;.;floodgate_transitions_total";

/// What the filter did with a new upgrade's request headers.
#[derive(Debug)]
enum Start {
    /// Let through at once.
    Now(u32),
    /// Paused with no reply: delayed.
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

/// Ticks every 100 ms for `ms`.
fn run(host: &Host, w: &mut Worker, ms: u64) {
    for _ in 0..ms / 100 {
        host.advance(Duration::from_millis(100));
        w.tick().unwrap();
    }
}

/// Takes `n` tokens (the burst) with upgrades answered 101 at once.
fn spend_the_burst(w: &mut Worker, n: usize) {
    for _ in 0..n {
        let ctx = now(start(w));
        answer(w, ctx, 101);
    }
}

fn held(s: Start) -> u32 {
    match s {
        Start::Held(ctx) => ctx,
        other => panic!("expected a delay, got {other:?}"),
    }
}

fn answer(w: &mut Worker, ctx: u32, status: u16) {
    w.response_headers(ctx, &[(":status", &status.to_string())], false).unwrap();
    w.end(ctx).unwrap();
}

#[test]
fn an_upgrade_past_the_burst_waits_for_its_token_and_the_tick_resumes_it_then_not_before() {
    let mut host = host();
    let mut w = worker(&mut host, DELAYING);
    assert!(matches!(start(&mut w), Start::Now(_)));
    assert!(matches!(start(&mut w), Start::Now(_)));
    let ctx = held(start(&mut w));
    w.tick().unwrap();
    host.advance(Duration::from_millis(99));
    w.tick().unwrap();
    assert_eq!(w.resumed_request(ctx), 0, "resumed before its token came");
    host.advance(Duration::from_millis(1));
    w.tick().unwrap();
    assert_eq!(w.resumed_request(ctx), 1);
    w.tick().unwrap();
    assert_eq!(w.resumed_request(ctx), 1, "resumed twice");
    answer(&mut w, ctx, 101);
    assert_eq!((metric(&host, ADMITTED), metric(&host, DELAYED), metric(&host, REJECTED)), (3, 1, 0));
}

#[test]
fn delays_across_two_workers_start_no_faster_than_the_budget_and_one_past_max_delay_is_refused() {
    let mut host = host();
    let mut ws = [worker(&mut host, DELAYING), worker(&mut host, DELAYING)];
    let t0 = host.now_ms();
    let mut waiting = vec![];
    for i in 0..7 {
        match start(&mut ws[i % 2]) {
            Start::Now(_) => assert!(i < 2, "upgrade {i} let through past the burst"),
            Start::Held(ctx) => waiting.push((i % 2, ctx)),
            Start::Refused(r) => panic!("upgrade {i} refused within max_delay_ms: {r:?}"),
        }
    }
    assert_eq!(waiting.len(), 5);
    // The sixth past the burst would wait 600 ms: refused, told to come back when a wait of at
    // most 500 ms is possible again.
    let Start::Refused(r) = start(&mut ws[1]) else { panic!("not refused past max_delay_ms") };
    assert_eq!(r.header("x-floodgate"), Some("closed"));
    assert!(String::from_utf8_lossy(&r.body).contains(r#""reason":"admission_budget""#));
    // Every worker ticks each 10 ms: each stream starts at the first tick at or after its token.
    let mut started = HashMap::new();
    for _ in 0..70 {
        host.advance(Duration::from_millis(10));
        for (i, w) in ws.iter_mut().enumerate() {
            w.tick().unwrap();
            for &(wi, ctx) in &waiting {
                if wi == i && w.resumed_request(ctx) == 1 {
                    started.entry((wi, ctx)).or_insert(host.now_ms() - t0);
                }
            }
        }
    }
    let mut starts: Vec<u64> = waiting.iter().map(|w| started[w]).collect();
    starts.sort_unstable();
    assert_eq!(starts, [100, 200, 300, 400, 500]);
    assert_eq!((metric(&host, ADMITTED), metric(&host, DELAYED), metric(&host, REJECTED)), (7, 5, 1));
}

#[test]
fn a_client_that_leaves_while_delayed_is_never_resumed_and_decides_nothing() {
    let mut host = host();
    let mut w = worker(&mut host, DELAYING);
    spend_the_burst(&mut w, 2);
    let ctx = held(start(&mut w));
    host.advance(Duration::from_millis(50));
    w.end(ctx).unwrap();
    for _ in 0..30 {
        host.advance(Duration::from_millis(100));
        w.tick().unwrap();
    }
    assert_eq!(w.resumed_request(ctx), 0);
    assert_eq!(metric(&host, FAILURES), 0, "a client that left counted as the backend's failure");
    // Its token stays spent: the next upgrade, a second later, still finds the bucket refilled.
    assert!(matches!(start(&mut w), Start::Now(_)));
}

#[test]
fn a_delayed_call_counts_its_answer_timeout_from_its_start() {
    let mut host = host();
    let mut w = worker(&mut host, DELAYING);
    spend_the_burst(&mut w, 2);
    // It waits 100 ms, then has answer_timeout_ms (1 s) from its start: 1.1 s in all.
    let ctx = held(start(&mut w));
    host.advance(Duration::from_millis(100));
    w.tick().unwrap();
    assert_eq!(w.resumed_request(ctx), 1);
    host.advance(Duration::from_millis(990));
    w.tick().unwrap();
    assert_eq!(metric(&host, FAILURES), 0, "timed out counting from its arrival, not its start");
    host.advance(Duration::from_millis(20));
    w.tick().unwrap();
    assert_eq!(metric(&host, FAILURES), 1);
}

#[test]
fn a_half_open_probe_is_never_delayed() {
    let config = r#"{"defaults": {"consecutive_failures": 1, "open": {"base_ms": 10000, "jitter": 0.0},
        "half_open": {"permits": 2, "successes": 2},
        "admission": {"per_second": 1, "burst": 1, "max_delay_ms": 5000}}}"#;
    let mut host = host();
    let mut w = worker(&mut host, config);
    let Start::Now(ctx) = start(&mut w) else { panic!("first upgrade not admitted") };
    answer(&mut w, ctx, 503);
    host.advance(Duration::from_secs(11));
    // Half-open: the first probe takes the one token; the second finds none and is refused,
    // not held with a probe slot.
    let Start::Now(probe) = start(&mut w) else { panic!("first probe not admitted") };
    match start(&mut w) {
        Start::Refused(r) => assert_eq!(r.header("x-floodgate"), Some("half_open")),
        other => panic!("a probe was not refused: {other:?}"),
    }
    answer(&mut w, probe, 101);
}

#[test]
fn dry_run_never_delays() {
    let config =
        r#"{"defaults": {"mode": "dry_run", "admission": {"per_second": 1, "burst": 1, "max_delay_ms": 5000}}}"#;
    let mut host = host();
    let mut w = worker(&mut host, config);
    for i in 0..5 {
        assert!(matches!(start(&mut w), Start::Now(_)), "upgrade {i} held or refused in dry_run");
    }
    assert_eq!(metric(&host, DELAYED), 0);
    assert_eq!(metric(&host, "breaker=.=collab_ws;.;kind=.=websocket;.;floodgate_would_reject_total"), 4);
}

#[test]
fn tcp_connections_are_never_delayed() {
    let config =
        r#"{"breaker": "backend_tcp", "defaults": {"admission": {"per_second": 1, "burst": 1, "max_delay_ms": 5000}}}"#;
    let mut host = host();
    let mut w = host.worker().unwrap();
    assert!(w.configure("floodgate_tcp", config).unwrap(), "{:?}", host.logs());
    let first = w.new_context().unwrap();
    assert_eq!(w.new_connection(first).unwrap(), CONTINUE);
    let second = w.new_context().unwrap();
    w.new_connection(second).unwrap();
    assert!(w.closed_downstream(second), "the second connection was not refused");
    assert_eq!(metric(&host, "breaker=.=backend_tcp;.;floodgate_admission_delayed_total"), 0);
}

#[test]
fn a_clock_stepping_back_while_upgrades_wait_holds_them_no_more_than_one_tick_longer() {
    let mut host = host();
    let mut w = worker(&mut host, DELAYING);
    for _ in 0..2 {
        assert!(matches!(start(&mut w), Start::Now(_)));
    }
    let waiting: Vec<u32> = (0..3).map(|_| held(start(&mut w))).collect();
    let third = waiting[2];
    // `third` waits 300 ms. 100 ms pass, then the clock steps an hour back.
    host.advance(Duration::from_millis(100));
    w.tick().unwrap();
    host.rewind(Duration::from_secs(3600));
    let mut ticks = 0;
    while w.resumed_request(third) == 0 {
        host.advance(Duration::from_millis(100));
        w.tick().unwrap();
        ticks += 1;
        assert!(ticks <= 10, "still held a second after an hour's step back");
    }
    // 100 ms counted before the step, the step's tick lost, then 200 ms more.
    assert_eq!(ticks, 3);
}

#[test]
fn a_clock_stepping_forward_resumes_every_delayed_upgrade_it_passes() {
    let mut host = host();
    let mut w = worker(&mut host, DELAYING);
    for _ in 0..2 {
        assert!(matches!(start(&mut w), Start::Now(_)));
    }
    let waiting: Vec<u32> = (0..5).map(|_| held(start(&mut w))).collect();
    host.advance(Duration::from_secs(3600));
    w.tick().unwrap();
    assert!(waiting.iter().all(|&ctx| w.resumed_request(ctx) == 1));
}

#[test]
fn a_worker_holding_its_limit_refuses_the_next_upgrade_past_the_budget() {
    // A budget that could delay ten million: the worker's own bound (16,384) decides.
    let config = r#"{"defaults": {"admission": {"per_second": 1000000, "burst": 1, "max_delay_ms": 10000}}}"#;
    let mut host = host();
    let mut w = worker(&mut host, config);
    assert!(matches!(start(&mut w), Start::Now(_)));
    for i in 0..16_384 {
        if !matches!(start(&mut w), Start::Held(_)) {
            panic!("upgrade {i} not held below the bound");
        }
    }
    assert!(matches!(start(&mut w), Start::Refused(_)), "held past the bound");
    host.advance(Duration::from_secs(10));
    w.tick().unwrap();
    // All started: there is room again.
    assert!(matches!(start(&mut w), Start::Now(_)));
    assert!(matches!(start(&mut w), Start::Held(_)));
}

#[test]
fn a_resume_the_host_refuses_is_logged_and_the_other_streams_still_start() {
    let mut host = host();
    let mut w = worker(&mut host, DELAYING);
    for _ in 0..2 {
        assert!(matches!(start(&mut w), Start::Now(_)));
    }
    let a = held(start(&mut w));
    let b = held(start(&mut w));
    host.inject_fault("proxy_continue_stream", status::INTERNAL_FAILURE, 1);
    host.advance(Duration::from_millis(200));
    w.tick().unwrap();
    assert_eq!((w.resumed_request(a), w.resumed_request(b)), (0, 1));
    // The one the host refused is not retried (Envoy does not refuse a live stream's resume).
    host.advance(Duration::from_millis(200));
    w.tick().unwrap();
    assert_eq!(w.resumed_request(a), 0);
}

#[test]
fn a_failing_clock_on_the_tick_resumes_nothing_and_the_next_tick_catches_up() {
    let mut host = host();
    let mut w = worker(&mut host, DELAYING);
    for _ in 0..2 {
        assert!(matches!(start(&mut w), Start::Now(_)));
    }
    let ctx = held(start(&mut w));
    host.advance(Duration::from_millis(100));
    host.inject_fault("proxy_get_current_time_nanoseconds", status::INTERNAL_FAILURE, 1);
    w.tick().unwrap();
    assert_eq!(w.resumed_request(ctx), 0);
    host.clear_faults();
    w.tick().unwrap();
    assert_eq!(w.resumed_request(ctx), 1);
}

#[test]
fn an_upgrade_waiting_when_the_breaker_trips_is_refused_as_open_and_never_sent_upstream() {
    let config = r#"{"defaults": {"consecutive_failures": 2, "open": {"base_ms": 10000, "jitter": 0.0},
        "admission": {"per_second": 10, "burst": 2, "max_delay_ms": 500}}}"#;
    let mut host = host();
    let mut ws = [worker(&mut host, config), worker(&mut host, config)];
    let Start::Now(a) = start(&mut ws[0]) else { panic!("not admitted") };
    let Start::Now(b) = start(&mut ws[1]) else { panic!("not admitted") };
    let waiting = held(start(&mut ws[0]));
    // Both calls in flight fail: the breaker opens while the third waits for its token.
    answer(&mut ws[0], a, 503);
    answer(&mut ws[1], b, 503);
    host.advance(Duration::from_millis(100));
    ws[0].tick().unwrap();
    assert_eq!(ws[0].resumed_request(waiting), 0, "sent to a backend whose breaker is open");
    let reply = ws[0].local_response(waiting).expect("refused with a local reply");
    assert_eq!((reply.status, reply.header("x-floodgate")), (503, Some("open")));
    assert!(String::from_utf8_lossy(&reply.body).contains(r#""reason":"consecutive_failures""#), "{reply:?}");
    // Envoy then ends the stream with that reply: no outcome is recorded for it.
    answer(&mut ws[0], waiting, 503);
    let rejected = "breaker=.=collab_ws;.;kind=.=websocket;.;floodgate_rejected_total";
    assert_eq!((metric(&host, rejected), metric(&host, FAILURES)), (1, 2));
}

#[test]
fn a_failing_state_read_when_the_wait_ends_starts_the_upgrade() {
    let mut host = host();
    let mut w = worker(&mut host, DELAYING);
    spend_the_burst(&mut w, 2);
    let ctx = held(start(&mut w));
    host.advance(Duration::from_millis(100));
    host.inject_fault("proxy_get_shared_data", status::INTERNAL_FAILURE, 1);
    w.tick().unwrap();
    assert_eq!(w.resumed_request(ctx), 1, "a host error refused (it must fail open)");
}

/// Calls delayed longer than `answer_timeout_ms` are not timed out while they wait (never sent:
/// the backend cannot have failed them). A postponed start once looked like a clock that stepped
/// back to `Calls::take_overdue`, which moved the deadline to the first tick plus the timeout:
/// three such calls tripped the breaker.
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
/// reloads) is in debt: the debt taken at the old rate is cut to what the new budget's
/// `max_delay_ms` can owe. Paid back at the new rate (from 100/s with 10 s of delay to 1/s, 1,000
/// tokens), it refused every upgrade for about 17 minutes.
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

/// A forced_open from the control plane (an operator, or backpressure: nothing new to this
/// backend) that comes, through a real poll, while an upgrade waits: the upgrade gets the
/// forced_open refusal when its wait ends, not a trip upstream.
#[test]
fn a_delayed_upgrade_is_not_sent_upstream_past_a_forced_open_that_came_while_it_waited() {
    let mut host = host();
    let (mut w, ctx) = waiting_when_forced_open(&mut host);
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
/// they will be sent first". A delayed client's data (an eager first WebSocket frame, any body;
/// with `shed: all`, a POST's body) and trailers are held while it waits (a Continue would let
/// the upgrade skip its wait and the budget), and flow after its resume.
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

/// With a burst of 1 at 10/s: spends the burst, then delays an upgrade whose token comes 100 ms
/// later, on a worker that ticks 50 ms and 150 ms later: resumed 50 ms after its token.
fn resumed_50_ms_after_its_token(host: &Host, w: &mut Worker) -> u32 {
    let first = now(start(w));
    answer(w, first, 101);
    let ctx = held(start(w));
    host.advance(Duration::from_millis(50));
    w.tick().unwrap();
    host.advance(Duration::from_millis(100));
    w.tick().unwrap();
    assert_eq!(w.resumed_request(ctx), 1);
    ctx
}

/// A delayed call's duration (for `slow_call`) counts from its resume, up to a tick (100 ms) after
/// its token: the proxy's own lateness is not the backend's slowness. Counted from the token, a
/// backend answering every delayed upgrade in 60 ms under a 100 ms `slow_call` was "slow" for
/// each one resumed more than 40 ms late: in a storm, a slow_call_rate trip of a healthy backend.
#[test]
fn the_ticks_lateness_does_not_make_a_delayed_call_slow() {
    let config = r#"{"defaults": {"slow_call": {"duration_ms": 100, "rate": 0.5},
        "admission": {"per_second": 10, "burst": 1, "max_delay_ms": 1000}}}"#;
    let slow = "breaker=.=collab_ws;.;outcome=.=slow;.;floodgate_calls_total";
    let mut host = host();
    let mut w = worker(&mut host, config);
    let ctx = resumed_50_ms_after_its_token(&host, &mut w);
    // The backend answers 60 ms after the upgrade reached it.
    host.advance(Duration::from_millis(60));
    answer(&mut w, ctx, 101);
    w.tick().unwrap();
    assert_eq!(metric(&host, slow), 0, "a 60 ms answer counted slow: the 50 ms it waited for the tick counted");
}

/// The same lateness against `answer_timeout_ms`: the deadline counts from the resume, so the
/// backend has its whole time to answer (with 200 ms, a call resumed 50 ms after its token and
/// answered 180 ms after it reached the backend is a success).
#[test]
fn the_ticks_lateness_is_not_taken_from_a_delayed_calls_answer_timeout() {
    // (A slow_call duration: not the lean path, so the answer reads the clock and its deadline.)
    let config = r#"{"defaults": {"answer_timeout_ms": 200, "slow_call": {"duration_ms": 1000, "rate": 1.0},
        "admission": {"per_second": 10, "burst": 1, "max_delay_ms": 1000}}}"#;
    let mut host = host();
    let mut w = worker(&mut host, config);
    let ctx = resumed_50_ms_after_its_token(&host, &mut w);
    host.advance(Duration::from_millis(100));
    w.tick().unwrap();
    // The backend answers 180 ms after the upgrade reached it.
    host.advance(Duration::from_millis(80));
    answer(&mut w, ctx, 101);
    w.tick().unwrap();
    assert_eq!(metric(&host, FAILURES), 0, "answered within answer_timeout_ms of reaching the backend: a failure");
}

// ---- model-based ----

/// The reference: DESIGN's bucket, written plainly (thousandths of a token, integer refill).
struct Bucket {
    tokens: i64,
    last: u64,
    per_second: i64,
    cap: i64,
    max_delay: u64,
}

struct Waiting {
    worker: usize,
    ctx: u32,
    start: u64,
    left: bool,
    resumed: bool,
}

enum Expect {
    Now,
    Wait(u64),
    Refuse,
}

impl Bucket {
    fn take(&mut self, now: u64) -> Expect {
        self.tokens = (self.tokens + (now - self.last) as i64 * self.per_second).min(self.cap);
        self.last = now;
        if self.tokens >= 1000 {
            self.tokens -= 1000;
            return Expect::Now;
        }
        let wait = (1000 - self.tokens) as u64;
        let wait = wait.div_ceil(self.per_second as u64);
        if wait <= self.max_delay {
            self.tokens -= 1000;
            Expect::Wait(wait)
        } else {
            Expect::Refuse
        }
    }
}

/// Random interleavings on three workers of new upgrades, clients leaving, time passing and
/// ticks: every upgrade is let through, held or refused as the reference bucket says; a held
/// one is resumed exactly once, at its worker's first tick at or after its start, unless its
/// client left first; nothing is resumed early, late or twice.
#[test]
fn random_interleavings_delay_exactly_as_the_reference_bucket() {
    let sequences: u64 = std::env::var("FLOODGATE_MODEL_SEQUENCES").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let config = r#"{"defaults": {"admission": {"per_second": 20, "burst": 3, "max_delay_ms": 400}}}"#;
    for seed in 1..=sequences {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
        let mut host = host();
        let mut ws: Vec<Worker> = (0..3).map(|_| worker(&mut host, config)).collect();
        let mut model = Bucket { tokens: 3000, last: host.now_ms(), per_second: 20, cap: 3000, max_delay: 400 };
        let mut waiting: Vec<Waiting> = vec![];
        for step in 0..300 {
            let now = host.now_ms();
            let i = rng.below(3) as usize;
            match rng.below(10) {
                0..=4 => {
                    let got = start(&mut ws[i]);
                    match (model.take(now), got) {
                        (Expect::Now, Start::Now(ctx)) => answer(&mut ws[i], ctx, 101),
                        (Expect::Wait(wait), Start::Held(ctx)) => {
                            waiting.push(Waiting { worker: i, ctx, start: now + wait, left: false, resumed: false })
                        }
                        (Expect::Refuse, Start::Refused(r)) => assert_eq!(r.status, 503),
                        (_, got) => panic!("seed {seed} step {step}: the model and the filter differ: {got:?}"),
                    }
                }
                5 => {
                    // A waiting client leaves.
                    if let Some(e) = waiting.iter_mut().find(|e| !e.left && !e.resumed) {
                        ws[e.worker].end(e.ctx).unwrap();
                        e.left = true;
                    }
                }
                6..=7 => host.advance(Duration::from_millis(rng.below(120))),
                _ => {
                    ws[i].tick().unwrap();
                    let now = host.now_ms();
                    for e in waiting.iter_mut().filter(|e| e.worker == i) {
                        let resumed = ws[i].resumed_request(e.ctx);
                        assert!(resumed <= 1, "seed {seed} step {step}: ctx {} resumed twice", e.ctx);
                        if resumed == 1 && !e.resumed {
                            assert!(!e.left, "seed {seed} step {step}: ctx {} resumed after its client left", e.ctx);
                            assert!(
                                e.start <= now,
                                "seed {seed} step {step}: ctx {} resumed at {now}, before {}",
                                e.ctx,
                                e.start
                            );
                            e.resumed = true;
                            // The backend answers: the call ends (no answer deadline left to pass).
                            answer(&mut ws[i], e.ctx, 101);
                        }
                        assert!(
                            e.resumed || e.left || e.start > now,
                            "seed {seed} step {step}: ctx {} due at {} still held at {now}",
                            e.ctx,
                            e.start
                        );
                    }
                }
            }
        }
        // Everything still waiting starts within max_delay_ms once every worker ticks.
        host.advance(Duration::from_millis(400));
        for w in ws.iter_mut() {
            w.tick().unwrap();
        }
        for e in &waiting {
            assert_eq!(ws[e.worker].resumed_request(e.ctx), u32::from(!e.left), "seed {seed}: ctx {}", e.ctx);
        }
    }
}

/// A worker with a control plane (`floodgate_control`) whose first poll is out: the poll's token.
fn controlled_worker(host: &mut Host, config: &str) -> (Worker, u32) {
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
    (w, poll.expect("no poll"))
}

/// A worker polling the control plane (1 upgrade/s, burst 1, up to 5 s of delay) with one upgrade
/// waiting when a forced_open of its key comes: the worker and that upgrade's context.
fn waiting_when_forced_open(host: &mut Host) -> (Worker, u32) {
    let config = r#"{"defaults": {"admission": {"per_second": 1, "burst": 1, "max_delay_ms": 5000}},
        "control": {"cluster": "floodgate_control", "token": "t0ken", "wait_s": 5, "timeout_ms": 7000,
                    "retry_ms": 200, "stale_after_s": 30}}"#;
    let (mut w, token) = controlled_worker(host, config);
    let first = now(start(&mut w));
    answer(&mut w, first, 101);
    let ctx = held(start(&mut w));
    w.answer_http_call(token, 200, &[], forced_open_snapshot(BREAKER).as_bytes()).unwrap();
    w.tick().unwrap();
    (w, ctx)
}

fn forced_open_snapshot(key: &str) -> String {
    format!(
        r#"{{"version": 1, "generated_at": "2026-11-22T10:00:00Z", "breakers": [{{"key": "{key}",
            "state": "forced_open", "reason": "backpressure_critical", "since": "2026-11-22T09:58:00Z",
            "until": null, "event_id": "e1"}}]}}"#
    )
}

/// Upgrades refused when their wait ends (here by a control-plane forced_open) were never sent:
/// their entries among the worker's calls in flight must go with the refusal. Left there with
/// their token's deadline, the same tick's `expire_overdue` (after `delay::on_tick`) timed them
/// out as failures whenever the tick came `answer_timeout_ms` after their token (a wall clock
/// stepping forward, a late tick under a short timeout): three never-sent upgrades tripped the
/// local breaker of a healthy backend, which then stayed open after the forced_open ended.
#[test]
fn upgrades_refused_when_their_wait_ends_are_not_timed_out_as_failures() {
    let config = r#"{"defaults": {"consecutive_failures": 3, "answer_timeout_ms": 1000,
        "open": {"base_ms": 10000, "jitter": 0.0},
        "admission": {"per_second": 1, "burst": 1, "max_delay_ms": 5000}},
        "control": {"cluster": "floodgate_control", "token": "t0ken", "wait_s": 5, "timeout_ms": 7000,
                    "retry_ms": 200, "stale_after_s": 30}}"#;
    let mut host = host();
    let (mut w, token) = controlled_worker(&mut host, config);
    let first = now(start(&mut w));
    answer(&mut w, first, 101);
    // Three upgrades wait 1, 2 and 3 s for their tokens; the control plane forces the key open.
    let waiting: Vec<u32> = (0..3).map(|_| held(start(&mut w))).collect();
    w.answer_http_call(token, 200, &[], forced_open_snapshot(BREAKER).as_bytes()).unwrap();
    w.tick().unwrap();
    // The wall clock steps 5 s forward: every wait ends at the next tick, each refused.
    host.advance(Duration::from_secs(5));
    w.tick().unwrap();
    for &ctx in &waiting {
        assert_eq!(w.resumed_request(ctx), 0);
        let reply = w.local_response(ctx).expect("not refused");
        assert_eq!(reply.header("x-floodgate"), Some("forced_open"));
        answer(&mut w, ctx, 503);
    }
    run(&host, &mut w, 1_000);
    assert_eq!(metric(&host, FAILURES), 0, "upgrades never sent upstream counted as the backend's failures");
    assert_eq!(metric(&host, OPENED), 0, "the local breaker tripped on upgrades it never sent");
}

/// A refusal at the end of a wait that could not be sent (the host refused the local reply, or
/// the stream was gone) refused nothing: the upgrade is resumed (fail open) or was never there.
/// It is not a rejection: `floodgate_rejected_total` counted it all the same, so the dashboard
/// showed a refused upgrade that reached the backend.
#[test]
fn a_refusal_at_the_end_of_a_wait_that_could_not_be_sent_is_not_counted_as_a_rejection() {
    let config = r#"{"defaults": {"consecutive_failures": 2, "open": {"base_ms": 10000, "jitter": 0.0},
        "admission": {"per_second": 10, "burst": 2, "max_delay_ms": 500}}}"#;
    let rejected = "breaker=.=collab_ws;.;kind=.=websocket;.;floodgate_rejected_total";
    let mut host = host();
    let mut w = worker(&mut host, config);
    let a = now(start(&mut w));
    let b = now(start(&mut w));
    let sent_late = held(start(&mut w));
    let gone = held(start(&mut w));
    answer(&mut w, a, 503);
    answer(&mut w, b, 503);
    host.inject_fault("proxy_send_local_response", status::INTERNAL_FAILURE, 1);
    run(&host, &mut w, 100);
    assert_eq!(w.resumed_request(sent_late), 1, "a refusal that could not be sent must start the upgrade");
    assert_eq!(metric(&host, rejected), 0, "an upgrade sent upstream counted as rejected");
    host.inject_fault("proxy_set_effective_context", status::NOT_FOUND, 1);
    run(&host, &mut w, 100);
    assert_eq!(w.local_response(gone), None);
    assert_eq!(metric(&host, rejected), 0, "a stream the host no longer had counted as rejected");
}

/// Every root context of a VM ticks, and each runs `delay::on_tick` over the VM's one set of
/// delayed streams with its own configuration: with `vm_id: floodgate` for both the HTTP filter
/// (with a control plane) and the TCP filter (without), the TCP root's tick may end an upgrade's
/// wait, and re-checked it without the control plane's view. Here the TCP filter's root is
/// added while an upgrade of the HTTP filter waits, and its timer fires first: the forced_open
/// that came meanwhile must still refuse the upgrade, as the stream's own configuration says.
#[test]
fn a_delayed_upgrade_is_re_checked_with_its_own_filters_configuration_whichever_root_ticks() {
    let mut host = host();
    let (mut w, ctx) = waiting_when_forced_open(&mut host);
    let (tcp, ok) = w.add_root("floodgate_tcp", r#"{"breaker": "backend_tcp"}"#).unwrap();
    assert!(ok, "{:?}", host.logs());
    // The TCP root's timer fires first.
    for _ in 0..20 {
        host.advance(Duration::from_millis(100));
        w.tick_root(tcp).unwrap();
        w.tick().unwrap();
    }
    assert_eq!(
        w.resumed_request(ctx),
        0,
        "sent upstream past a forced_open: re-checked with another filter's configuration"
    );
    let reply = w.local_response(ctx).expect("left hanging");
    assert_eq!(reply.header("x-floodgate"), Some("forced_open"));
}

/// The refusal at the end of a wait is the configured one: `reject.status` and its extra
/// headers, the breaker's state, counted by its kind; under `close_frame` it stays the HTTP
/// refusal (README: the tick has no 101 to complete), and the call decides nothing.
#[test]
fn a_refusal_at_the_end_of_a_wait_carries_the_configured_status_and_headers() {
    let config = r#"{"defaults": {"consecutive_failures": 2, "open": {"base_ms": 10000, "jitter": 0.0},
        "admission": {"per_second": 10, "burst": 2, "max_delay_ms": 500}},
        "reject": {"status": 429, "headers": {"x-team": "collab"}, "websocket": "close_frame"}}"#;
    let rejected = "breaker=.=collab_ws;.;kind=.=websocket;.;floodgate_rejected_total";
    let mut host = host();
    let mut w = worker(&mut host, config);
    let a = now(start(&mut w));
    let b = now(start(&mut w));
    let waiting = held(start(&mut w));
    answer(&mut w, a, 503);
    answer(&mut w, b, 503);
    run(&host, &mut w, 100);
    let reply = w.local_response(waiting).expect("not refused");
    assert_eq!(
        (reply.status, reply.header("x-floodgate"), reply.header("x-team")),
        (429, Some("open"), Some("collab"))
    );
    assert_eq!(reply.header("retry-after"), Some("10"));
    answer(&mut w, waiting, 429);
    run(&host, &mut w, 1_000);
    assert_eq!((metric(&host, rejected), metric(&host, FAILURES)), (1, 2));
}

/// The control plane's forced_open needs no host call (the worker's copy of its view): a state
/// read that fails when the wait ends may fail the local breaker's re-check open, not the
/// control plane's. A delayed upgrade went upstream past a forced_open on a failed state read.
#[test]
fn a_failing_state_read_when_the_wait_ends_does_not_skip_a_forced_open() {
    let mut host = host();
    let (mut w, ctx) = waiting_when_forced_open(&mut host);
    host.advance(Duration::from_secs(1));
    host.inject_fault("proxy_get_shared_data", status::INTERNAL_FAILURE, 100);
    w.tick().unwrap();
    host.clear_faults();
    assert_eq!(w.resumed_request(ctx), 0, "sent upstream past a forced_open because the local state was not read");
    let reply = w.local_response(ctx).expect("left hanging");
    assert_eq!(reply.header("x-floodgate"), Some("forced_open"));
}
