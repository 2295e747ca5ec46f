//! Delays of the admission budget (`admission.max_delay_ms`) in the compiled module: an upgrade
//! past the budget waits paused until its token comes and its worker's tick resumes it; never
//! sooner, never longer than `max_delay_ms` plus one tick; a client that leaves is never resumed;
//! probes, dry runs and TCP connections are never delayed; the per-worker bound holds; and a
//! model-based test drives random interleavings against a small reference bucket.
// Test code throughout: clippy.toml lets it unwrap, expect and panic.
#![cfg(test)]

use std::collections::HashMap;
use std::time::Duration;

use floodgate_core::remote::{Forced, Override, RemoteView};
use floodgate_harness::{built_module, status, Host, LocalResponse, Worker, CONTINUE, PAUSE};

const BREAKER: &str = "collab_ws";
/// 10 upgrades a second, 2 at once, a wait of up to 500 ms.
const DELAYING: &str = r#"{"defaults": {"consecutive_failures": 3, "open": {"base_ms": 10000, "jitter": 0.0},
    "answer_timeout_ms": 1000, "half_open": {"permits": 2, "successes": 2},
    "admission": {"per_second": 10, "burst": 2, "max_delay_ms": 500}}}"#;
const ADMITTED: &str = "breaker=.=collab_ws;.;floodgate_admission_admitted_total";
const DELAYED: &str = "breaker=.=collab_ws;.;floodgate_admission_delayed_total";
const REJECTED: &str = "breaker=.=collab_ws;.;kind=.=websocket;.;floodgate_admission_rejected_total";
const FAILURES: &str = "breaker=.=collab_ws;.;outcome=.=failure;.;floodgate_calls_total";

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
    for _ in 0..2 {
        let Start::Now(ctx) = start(&mut w) else { panic!("not admitted within the burst") };
        answer(&mut w, ctx, 101);
    }
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
    for _ in 0..2 {
        let Start::Now(ctx) = start(&mut w) else { panic!("not admitted within the burst") };
        answer(&mut w, ctx, 101);
    }
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
fn an_upgrade_waiting_when_the_control_plane_forces_its_key_open_is_refused_with_that_reason() {
    let config = r#"{"defaults": {"admission": {"per_second": 10, "burst": 1, "max_delay_ms": 500}},
        "control": {"cluster": "floodgate_control", "wait_s": 5, "timeout_ms": 7000, "stale_after_s": 120}}"#;
    let mut host = host();
    let mut w = host.worker().unwrap();
    w.add_cluster("floodgate_control");
    assert!(w.configure("floodgate", config).unwrap(), "{:?}", host.logs());
    let Start::Now(first) = start(&mut w) else { panic!("not admitted") };
    answer(&mut w, first, 101);
    let waiting = held(start(&mut w));
    let forced = Override {
        key: BREAKER.into(),
        state: Forced::ForcedOpen,
        reason: "backpressure_critical".into(),
        until_ms: 0,
    };
    let view = RemoteView { version: 7, confirmed_ms: host.now_ms(), overrides: vec![forced], ..RemoteView::default() };
    host.set_shared_data("floodgate/control", &serde_json::to_vec(&view).unwrap());
    host.advance(Duration::from_millis(100));
    w.tick().unwrap();
    assert_eq!(w.resumed_request(waiting), 0);
    let reply = w.local_response(waiting).expect("refused with a local reply");
    assert_eq!(reply.header("x-floodgate"), Some("forced_open"));
    assert!(String::from_utf8_lossy(&reply.body).contains("backpressure_critical"), "{reply:?}");
}

#[test]
fn a_failing_state_read_when_the_wait_ends_starts_the_upgrade() {
    let mut host = host();
    let mut w = worker(&mut host, DELAYING);
    for _ in 0..2 {
        let Start::Now(ctx) = start(&mut w) else { panic!("not admitted") };
        answer(&mut w, ctx, 101);
    }
    let ctx = held(start(&mut w));
    host.advance(Duration::from_millis(100));
    host.inject_fault("proxy_get_shared_data", status::INTERNAL_FAILURE, 1);
    w.tick().unwrap();
    assert_eq!(w.resumed_request(ctx), 1, "a host error refused (it must fail open)");
}

// ---- model-based ----

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

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
