//! Successes a worker counts without writing (they change nothing shared) against failures
//! written at once on another worker: the breaker trips at the very failure it trips at when
//! every outcome is written through, for a consecutive-failure streak and a failure-rate window,
//! over many interleavings, including a success answered while another worker's failures land.
// Test code throughout: clippy.toml lets it unwrap, expect and panic.
#![cfg(test)]

use floodgate_core::{record, BreakerState, Call, Phase, Policy, WindowSpec};
use floodgate_harness::{built_module, Host, Worker, CONTINUE};

const BREAKER: &str = "collab_ws";
const SIZE: u16 = 10;

fn config(streak: u32, rate: f64) -> String {
    format!(
        r#"{{"defaults": {{"consecutive_failures": {streak}, "failure_rate": {rate}, "minimum_calls": {SIZE},
            "window": {{"kind": "count", "size": {SIZE}}}, "open": {{"base_ms": 60000, "jitter": 0.0}}}}}}"#
    )
}

fn policy(streak: u32, rate: f64) -> Policy {
    Policy {
        consecutive_failures: streak,
        failure_rate: rate,
        minimum_calls: u32::from(SIZE),
        window: WindowSpec::Count { size: SIZE },
        ..Policy::default()
    }
}

fn admit(w: &mut Worker) -> u32 {
    let ctx = w.new_context().unwrap();
    w.set_context_property(ctx, &["xds", "cluster_name"], BREAKER.as_bytes());
    let headers = [(":method", "GET"), (":path", "/ws"), ("upgrade", "websocket"), ("connection", "upgrade")];
    let action = w.request_headers(ctx, &headers, false).unwrap();
    assert_eq!(action, CONTINUE, "refused before any trip: {:?}", w.local_response(ctx));
    ctx
}

fn answer(w: &mut Worker, ctx: u32, status: u16) {
    w.set_context_property(ctx, &["response", "code_details"], b"via_upstream");
    w.response_headers(ctx, &[(":status", &status.to_string())], false).unwrap();
    w.end(ctx).unwrap();
}

fn opened(host: &Host) -> bool {
    let name = format!("breaker=.={BREAKER};.;from=.=closed;.;to=.=open;.;floodgate_transitions_total");
    host.metric(&name).unwrap_or(0) > 0
}

/// One step: worker A's success or worker B's failure. `overlap`: A admits its call before B's
/// failure and answers it after (so A's admission saw the state before that failure).
#[derive(Clone, Copy, Debug)]
enum Step {
    Success { overlap: bool },
    Failure,
}

/// How many failures were recorded when the breaker opened (a failure, or a success that
/// brought the window to `minimum_calls`), on two workers.
fn trips_on_two_workers(config: &str, warm: usize, steps: &[Step]) -> Option<usize> {
    let mut host = Host::new(&built_module()).unwrap();
    let mut a = host.worker().unwrap();
    let mut b = host.worker().unwrap();
    assert!(a.configure("floodgate", config).unwrap() && b.configure("floodgate", config).unwrap());
    for _ in 0..warm {
        let ctx = admit(&mut a);
        answer(&mut a, ctx, 101);
    }
    let mut failures = 0;
    let mut held = None;
    for step in steps {
        match *step {
            Step::Success { overlap: true } if held.is_none() => held = Some(admit(&mut a)),
            Step::Success { .. } => {
                let ctx = admit(&mut a);
                answer(&mut a, ctx, 101);
            }
            Step::Failure => {
                failures += 1;
                let ctx = admit(&mut b);
                answer(&mut b, ctx, 503);
                if let Some(ctx) = held.take() {
                    answer(&mut a, ctx, 101);
                }
            }
        }
        // A success can trip too: the call that brings the window to `minimum_calls`.
        if opened(&host) {
            return Some(failures);
        }
    }
    None
}

/// The same outcomes written through, in the order their answers came, on one state.
fn trips_written_through(p: &Policy, warm: usize, steps: &[Step]) -> Option<usize> {
    let mut s = BreakerState::new(p);
    let success = Call { failure: false, slow: false };
    for _ in 0..warm {
        record(&mut s, p, 0, success, None, 0.5);
    }
    let mut failures = 0;
    let mut held = false;
    for step in steps {
        match *step {
            Step::Success { overlap: true } if !held => held = true,
            Step::Success { .. } => {
                record(&mut s, p, 0, success, None, 0.5);
            }
            Step::Failure => {
                failures += 1;
                record(&mut s, p, 0, Call { failure: true, slow: false }, None, 0.5);
                if std::mem::take(&mut held) && s.phase == Phase::Closed {
                    record(&mut s, p, 0, success, None, 0.5);
                }
            }
        }
        if s.phase == Phase::Open {
            return Some(failures);
        }
    }
    None
}

/// Deterministic pseudo-random steps: more failures than successes, so most sequences trip.
fn steps(seed: u64, n: usize) -> Vec<Step> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x % 5 {
                0 => Step::Success { overlap: false },
                1 => Step::Success { overlap: true },
                _ => Step::Failure,
            }
        })
        .collect()
}

#[test]
fn successes_buffered_on_one_worker_and_failures_on_another_trip_at_the_same_count_as_writing_through() {
    // A streak of 3 (rate off), then a rate of 50 % over the last 10 calls (streak off): on a
    // full window of successes (A's successes then change nothing shared) and on one still
    // filling (they count).
    let cases = [(3, 1.0, 0), (3, 1.0, 10), (0, 0.5, 0), (0, 0.5, 10), (4, 0.6, 10)];
    let mut tripped = 0;
    for (streak, rate, warm) in cases {
        let (config, p) = (config(streak, rate), policy(streak, rate));
        for seed in 0..40 {
            let steps = steps(seed, 40);
            let expected = trips_written_through(&p, warm, &steps);
            let got = trips_on_two_workers(&config, warm, &steps);
            assert_eq!(got, expected, "streak {streak}, rate {rate}, warm {warm}, steps {steps:?}");
            tripped += usize::from(got.is_some());
        }
    }
    assert!(tripped > 100, "only {tripped} sequences tripped: the test would not see a difference");
}

#[test]
fn a_success_answered_after_another_workers_failure_still_ends_the_streak() {
    // F F (B), then A's success, admitted before B's second failure and answered after it:
    // written through, the streak is 0 again, so B needs 3 more failures.
    let steps = [Step::Failure, Step::Success { overlap: true }, Step::Failure, Step::Failure, Step::Failure];
    let expected = trips_written_through(&policy(3, 1.0), 10, &steps);
    assert_eq!(expected, None);
    assert_eq!(trips_on_two_workers(&config(3, 1.0), 10, &steps), expected);
    let more = [&steps[..], &[Step::Failure]].concat();
    assert_eq!(trips_on_two_workers(&config(3, 1.0), 10, &more), Some(5));
}
