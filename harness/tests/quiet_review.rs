//! Review of the quiet (empty) state encoding: orders and inputs where storing a quiet breaker
//! as no bytes must decide exactly as storing every state in full.
// Test code throughout: clippy.toml lets it unwrap, expect and panic.
#![cfg(test)]

mod common;

use common::{metric, worker};
use floodgate_harness::{built_module, Host, Worker, CONTINUE};
use std::time::Duration;

const BREAKER: &str = "collab_ws";

fn upgrade(w: &mut Worker) -> u32 {
    let ctx = w.new_context().unwrap();
    w.set_context_property(ctx, &["xds", "cluster_name"], BREAKER.as_bytes());
    let headers = [(":method", "GET"), (":path", "/ws"), ("upgrade", "websocket"), ("connection", "upgrade")];
    let action = w.request_headers(ctx, &headers, false).unwrap();
    assert_eq!(action, CONTINUE, "refused: {:?}", w.local_response(ctx));
    ctx
}

fn answer_from(w: &mut Worker, ctx: u32, status: u16) {
    w.set_context_property(ctx, &["response", "code_details"], b"via_upstream");
    w.set_context_property(ctx, &["response", "flags"], &0u64.to_le_bytes());
    w.response_headers(ctx, &[(":status", &status.to_string())], false).unwrap();
    w.end(ctx).unwrap();
}

fn state_bytes(host: &Host) -> Vec<u8> {
    host.shared_data(&format!("floodgate/b/{BREAKER}")).expect("the breaker has a state").0
}

fn opened(host: &Host) -> i64 {
    metric(host, &format!("breaker=.={BREAKER};.;from=.=closed;.;to=.=open;.;floodgate_transitions_total"))
}

/// Two probes in flight; the first one's success closes the breaker, the window fills with
/// successes and is written as no bytes; then the second probe's 101 arrives. Its lean success
/// goes to `record_probe_success_in_place`, which must read the empty value as a closed breaker
/// (it once indexed past the empty bytes: a trap). Stored in full, the late probe's success is
/// simply counted as a closed breaker's success.
#[test]
fn a_late_probe_answering_after_its_breaker_closed_and_went_quiet_does_not_trap() {
    let mut host = Host::new(&built_module()).unwrap();
    let config = r#"{"defaults": {"consecutive_failures": 1, "window": {"kind": "count", "size": 4},
        "minimum_calls": 4, "open": {"base_ms": 1000, "jitter": 0.0},
        "half_open": {"permits": 2, "successes": 1}}}"#;
    let mut a = worker(&mut host, config);
    let ctx = upgrade(&mut a);
    answer_from(&mut a, ctx, 503);
    assert_eq!(opened(&host), 1);
    host.advance(Duration::from_millis(1_001));
    let first = upgrade(&mut a);
    let second = upgrade(&mut a);
    answer_from(&mut a, first, 101);
    // Quiet once no ramp a reload could configure can still run (an hour after closing).
    host.advance(Duration::from_millis(3_600_001));
    for _ in 0..5 {
        let ctx = upgrade(&mut a);
        answer_from(&mut a, ctx, 101);
    }
    assert_eq!(state_bytes(&host), Vec::<u8>::new(), "the breaker is quiet");
    // The second probe's answer.
    a.set_context_property(second, &["response", "code_details"], b"via_upstream");
    a.set_context_property(second, &["response", "flags"], &0u64.to_le_bytes());
    let answered = a.response_headers(second, &[(":status", "101")], false);
    assert!(answered.is_ok(), "the late probe's success trapped the module: {answered:?}");
    a.end(second).unwrap();
    // And the worker still serves.
    let ctx = upgrade(&mut a);
    answer_from(&mut a, ctx, 101);
}

/// A config reload that changes the count window's size of a healthy breaker. Stored in full,
/// a window of 10 successes no longer fits `size: 20`, and `conform` keeps a window full of
/// successes full in its new size (any other window starts afresh), which is also how the empty
/// value reads under the new policy: with `minimum_calls: 5` and `failure_rate: 0.5`, both trip
/// at the 10th failure (10 of 20). (Once, `conform` started every resized window empty, and the
/// empty value tripped five failures later than the full state.)
#[test]
fn after_a_reload_that_resizes_the_window_the_breaker_trips_at_the_same_failure_as_stored_in_full() {
    let before = r#"{"defaults": {"consecutive_failures": 1000, "window": {"kind": "count", "size": 10},
        "minimum_calls": 5, "failure_rate": 0.5, "open": {"base_ms": 60000, "jitter": 0.0}}}"#;
    let after = r#"{"defaults": {"consecutive_failures": 1000, "window": {"kind": "count", "size": 20},
        "minimum_calls": 5, "failure_rate": 0.5, "open": {"base_ms": 60000, "jitter": 0.0}}}"#;
    // Stored in full: the quiet state's full encoding under the old policy replaces the empty
    // value (what every writer stored before this change).
    let trips_at = |full: bool| {
        let mut host = Host::new(&built_module()).unwrap();
        let mut a = worker(&mut host, before);
        for _ in 0..11 {
            let ctx = upgrade(&mut a);
            answer_from(&mut a, ctx, 101);
        }
        assert_eq!(state_bytes(&host), Vec::<u8>::new(), "a full window of successes is quiet");
        if full {
            let old = floodgate_core::Policy {
                window: floodgate_core::WindowSpec::Count { size: 10 },
                ..floodgate_core::Policy::default()
            };
            let bytes = floodgate_core::BreakerState::quiet(&old).encode();
            host.set_shared_data(&format!("floodgate/b/{BREAKER}"), &bytes);
        }
        // A second worker with the reloaded configuration (what a reload gives every worker).
        let mut b = worker(&mut host, after);
        for n in 1..=20 {
            let ctx = upgrade(&mut b);
            answer_from(&mut b, ctx, 503);
            if opened(&host) == 1 {
                return n;
            }
        }
        0
    };
    let reference = trips_at(true);
    assert_eq!(reference, 10, "stored in full, conform keeps the window full of successes: 10 of 20 trips");
    assert_eq!(trips_at(false), reference, "the failure the breaker trips at after the reload");
}

/// The wall clock steps back after a breaker went quiet, into the recovery ramp it ended more
/// than an hour before. The empty value has no closing time, so the ramp does not start again:
/// every upgrade passes. (Stored in full, with its closing time, the state would ramp again; a
/// breaker keeps its closing time, and so ramps again after such a step, only in the hour after
/// it closed, as long as any ramp a configuration allows could run.)
#[test]
fn a_clock_stepped_back_into_a_ramp_that_ended_over_an_hour_before_does_not_start_it_again() {
    let config = r#"{"defaults": {"consecutive_failures": 1, "window": {"kind": "count", "size": 4},
        "minimum_calls": 4, "open": {"base_ms": 1000, "jitter": 0.0}, "half_open": {"permits": 1, "successes": 1},
        "recovery_ramp_ms": 5000}}"#;
    let mut host = Host::new(&built_module()).unwrap();
    let mut a = worker(&mut host, config);
    let ctx = upgrade(&mut a);
    answer_from(&mut a, ctx, 503);
    host.advance(Duration::from_millis(1_001));
    let probe = upgrade(&mut a);
    answer_from(&mut a, probe, 101);
    let closed_at = host.now_ms();
    // Within the hour after closing, the closing time is kept even with the window full.
    host.advance(Duration::from_millis(5_001));
    for _ in 0..4 {
        let ctx = upgrade(&mut a);
        answer_from(&mut a, ctx, 101);
    }
    let kept = state_bytes(&host);
    assert_eq!(floodgate_core::state::Head::peek(&kept).unwrap().closed_at_ms, closed_at);
    host.advance(Duration::from_millis(3_600_000));
    let ctx = upgrade(&mut a);
    answer_from(&mut a, ctx, 101);
    assert_eq!(state_bytes(&host), Vec::<u8>::new(), "quiet an hour after closing");
    // NTP steps the clock back to 40 % into the old ramp.
    host.rewind(Duration::from_millis(host.now_ms() - (closed_at + 2_000)));
    let headers = [(":method", "GET"), (":path", "/ws"), ("upgrade", "websocket"), ("connection", "upgrade")];
    let mut admitted = 0;
    for _ in 0..40 {
        let ctx = a.new_context().unwrap();
        a.set_context_property(ctx, &["xds", "cluster_name"], BREAKER.as_bytes());
        if a.request_headers(ctx, &headers, false).unwrap() == CONTINUE {
            admitted += 1;
        }
        a.end(ctx).unwrap();
    }
    assert_eq!(admitted, 40, "the ended ramp started again after the clock stepped back");
}

/// A config reload that turns the recovery ramp on (or lengthens it) right after a breaker
/// closed. Stored in full, a worker with the reloaded policy finds the closing time and ramps
/// (`ramp_refuses` reads `closed_at_ms` under the reader's `recovery_ramp_ms`): 1 ms into a 60 s
/// ramp nearly every new upgrade is refused. A breaker is not written as no bytes while any ramp
/// a configuration allows could still run, even when its own policy has none, so the reloaded
/// worker decides the same. (Once, quietness was judged under the writer's ramp, and the empty
/// value admitted them all.)
#[test]
fn a_reload_that_turns_the_ramp_on_decides_as_the_state_stored_in_full() {
    let before = r#"{"defaults": {"consecutive_failures": 1, "window": {"kind": "count", "size": 4},
        "minimum_calls": 4, "open": {"base_ms": 1000, "jitter": 0.0}, "half_open": {"permits": 1, "successes": 1}}}"#;
    let after = r#"{"defaults": {"consecutive_failures": 1, "window": {"kind": "count", "size": 4},
        "minimum_calls": 4, "open": {"base_ms": 1000, "jitter": 0.0}, "half_open": {"permits": 1, "successes": 1},
        "recovery_ramp_ms": 60000}}"#;
    let admitted_after_reload = |full: bool| {
        let mut host = Host::new(&built_module()).unwrap();
        let mut a = worker(&mut host, before);
        let ctx = upgrade(&mut a);
        answer_from(&mut a, ctx, 503);
        host.advance(Duration::from_millis(1_001));
        let probe = upgrade(&mut a);
        answer_from(&mut a, probe, 101);
        for _ in 0..3 {
            let ctx = upgrade(&mut a);
            answer_from(&mut a, ctx, 101);
        }
        let three = state_bytes(&host);
        assert!(floodgate_core::state::Head::peek(&three).unwrap().closed_at_ms > 0);
        let ctx = upgrade(&mut a);
        answer_from(&mut a, ctx, 101);
        assert!(!state_bytes(&host).is_empty(), "the closing time is kept for an hour, though this policy has no ramp");
        if full {
            let mut s = floodgate_core::BreakerState::decode(&three).unwrap();
            s.window.record(host.now_ms(), false, false);
            host.set_shared_data(&format!("floodgate/b/{BREAKER}"), &s.encode());
        }
        host.advance(Duration::from_millis(1));
        let mut b = worker(&mut host, after);
        let headers = [(":method", "GET"), (":path", "/ws"), ("upgrade", "websocket"), ("connection", "upgrade")];
        let mut admitted = 0;
        for _ in 0..40 {
            let ctx = b.new_context().unwrap();
            b.set_context_property(ctx, &["xds", "cluster_name"], BREAKER.as_bytes());
            if b.request_headers(ctx, &headers, false).unwrap() == CONTINUE {
                admitted += 1;
            }
            b.end(ctx).unwrap();
        }
        admitted
    };
    let reference = admitted_after_reload(true);
    assert!(reference <= 2, "stored in full, the new ramp refuses nearly all: {reference} of 40 admitted");
    let quiet = admitted_after_reload(false);
    assert_eq!(quiet, reference, "admitted of 40 on the empty value, stored in full");
}
