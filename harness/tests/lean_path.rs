//! The lean request path (issue 15): orders and inputs where its shortcuts (a success judged
//! a no-op, a transition dated at its answer, a quiet breaker stored as an empty value) decide
//! exactly as writing every outcome through, in full.
// Test code throughout: clippy.toml lets it unwrap, expect and panic.
#![cfg(test)]

mod common;

use common::{metric, worker};
use floodgate_harness::{built_module, Host, Worker, CONTINUE};

const BREAKER: &str = "collab_ws";

const UPGRADE: [(&str, &str); 4] =
    [(":method", "GET"), (":path", "/ws"), ("upgrade", "websocket"), ("connection", "upgrade")];

/// A new upgrade to the breaker: its context, and whether the filter let it through.
fn try_upgrade(w: &mut Worker) -> (u32, bool) {
    let ctx = w.new_context().unwrap();
    w.set_context_property(ctx, &["xds", "cluster_name"], BREAKER.as_bytes());
    let action = w.request_headers(ctx, &UPGRADE, false).unwrap();
    (ctx, action == CONTINUE)
}

/// An upgrade the filter lets through (it fails the test if refused).
fn upgrade(w: &mut Worker) -> u32 {
    let (ctx, admitted) = try_upgrade(w);
    assert!(admitted, "refused: {:?}", w.local_response(ctx));
    ctx
}

/// One failure trips the breaker (`consecutive_failures: 1`, open for 1 s); a second later a
/// probe's 101 closes it (`half_open: {permits: 1, successes: 1}`).
fn trip_and_close(host: &Host, w: &mut Worker) {
    let ctx = upgrade(w);
    answer_from(w, ctx, 503, "via_upstream", 0);
    host.advance(std::time::Duration::from_millis(1_001));
    let probe = upgrade(w);
    answer_from(w, probe, 101, "via_upstream", 0);
}

/// How many of `tries` new upgrades the filter lets through (each ended unanswered).
fn admitted_of(w: &mut Worker, tries: usize) -> usize {
    (0..tries)
        .filter(|_| {
            let (ctx, admitted) = try_upgrade(w);
            w.end(ctx).unwrap();
            admitted
        })
        .count()
}

fn answer_from(w: &mut Worker, ctx: u32, status: u16, details: &str, flags: u64) {
    w.set_context_property(ctx, &["response", "code_details"], details.as_bytes());
    w.set_context_property(ctx, &["response", "flags"], &flags.to_le_bytes());
    w.response_headers(ctx, &[(":status", &status.to_string())], false).unwrap();
    w.end(ctx).unwrap();
}

fn opened(host: &Host) -> i64 {
    metric(host, &format!("breaker=.={BREAKER};.;from=.=closed;.;to=.=open;.;floodgate_transitions_total"))
}

/// DESIGN: "a reply made by Envoy itself counts as a connect failure, reset or timeout (under
/// `resets`), not by its status". A status the configuration does not count as a failure (here
/// 503 ignored) must still be a failure when Envoy made it because the upstream never answered,
/// also once the window is full of successes (where a success is a no-op).
#[test]
fn envoys_own_reply_for_an_unreachable_upstream_is_a_failure_whatever_its_status_even_on_a_clean_full_window() {
    let mut host = Host::new(&built_module()).unwrap();
    let config = r#"{"defaults": {"consecutive_failures": 3, "window": {"kind": "count", "size": 10},
        "failure": {"statuses": ["5xx"], "ignore_statuses": [503], "resets": true},
        "open": {"base_ms": 60000, "jitter": 0.0}}}"#;
    let mut a = worker(&mut host, config);
    for _ in 0..10 {
        let ctx = upgrade(&mut a);
        answer_from(&mut a, ctx, 101, "via_upstream", 0);
    }
    // The backend goes away: Envoy answers every upgrade itself (connection failure, flag UF).
    for _ in 0..3 {
        let ctx = upgrade(&mut a);
        answer_from(&mut a, ctx, 503, "upstream_reset_before_response_started{connection_failure}", 0x20);
    }
    a.tick().unwrap();
    assert_eq!(metric(&host, &format!("breaker=.={BREAKER};.;outcome=.=failure;.;floodgate_calls_total")), 3);
    assert_eq!(opened(&host), 1, "three connection failures in a row trip the breaker");
}

/// DESIGN: `recovery_ramp_ms`: "after closing, admit a linearly rising share of new upgrades
/// (0 -> 100 %) over this time". The ramp starts when the last probe's success closes the
/// breaker, not when that probe was admitted: a probe whose 101 took 6 s must not leave a 5 s
/// ramp already over at the moment the breaker closes.
#[test]
fn the_recovery_ramp_starts_when_the_last_probe_closes_the_breaker_not_when_it_was_admitted() {
    let mut host = Host::new(&built_module()).unwrap();
    let config = r#"{"defaults": {"consecutive_failures": 1, "window": {"kind": "count", "size": 10},
        "open": {"base_ms": 1000, "jitter": 0.0}, "half_open": {"permits": 1, "successes": 1},
        "answer_timeout_ms": 10000, "recovery_ramp_ms": 5000}}"#;
    let mut a = worker(&mut host, config);
    let ctx = upgrade(&mut a);
    answer_from(&mut a, ctx, 503, "via_upstream", 0);
    assert_eq!(opened(&host), 1);
    host.advance(std::time::Duration::from_millis(1_001));
    let probe = upgrade(&mut a);
    host.advance(std::time::Duration::from_millis(6_000));
    answer_from(&mut a, probe, 101, "via_upstream", 0);
    let closed = format!("breaker=.={BREAKER};.;from=.=half_open;.;to=.=closed;.;floodgate_transitions_total");
    assert_eq!(metric(&host, &closed), 1);
    // 1 ms after closing, the ramp's share is 0.02 %: twenty new upgrades are all but all refused.
    host.advance(std::time::Duration::from_millis(1));
    let admitted = admitted_of(&mut a, 20);
    assert!(admitted <= 1, "{admitted} of 20 admitted 1 ms after closing with a 5 s ramp");
}

/// Every shape of foreign or damaged bytes in a breaker's shared state (an older or newer
/// encoding, truncated, padded, out-of-range fields), met by each lean shortcut (the head read
/// at admission, the in-place probe, the success no-op check): never a trap, and a closed
/// breaker's traffic passes (fail open).
#[test]
fn foreign_truncated_or_garbage_state_bytes_never_trap_and_fail_open_on_every_lean_shortcut() {
    let config = r#"{"defaults": {"consecutive_failures": 3, "window": {"kind": "count", "size": 10},
        "open": {"base_ms": 1000, "jitter": 0.0}, "half_open": {"permits": 3, "successes": 2}}}"#;
    let key = format!("floodgate/b/{BREAKER}");
    // A real state of each phase, taken from the module itself: its window one call short of
    // full (a full window of successes is quiet, written as no bytes, which `samples` has).
    let mut host = Host::new(&built_module()).unwrap();
    let mut a = worker(&mut host, config);
    for _ in 0..9 {
        let ctx = upgrade(&mut a);
        answer_from(&mut a, ctx, 101, "via_upstream", 0);
    }
    let closed = host.shared_data(&key).unwrap().0;
    let mut half_open = closed.clone();
    half_open[1] = 1;
    let mut samples: Vec<Vec<u8>> = vec![vec![], vec![1], vec![2], vec![0xff; 7], vec![0; 200]];
    for n in [1, 7, 30, 31, closed.len() / 2, closed.len() - 1] {
        samples.push(closed[..n].to_vec());
        samples.push(half_open[..n].to_vec());
    }
    for base in [&closed, &half_open] {
        let mut longer = base.clone();
        longer.push(0);
        samples.push(longer);
        for (at, value) in [(0, 2u8), (0, 0), (1, 3), (1, 0xff), (30, 0), (30, 33), (30, 0xff)] {
            let mut b = base.clone();
            b[at] = value;
            samples.push(b);
        }
        // The window header right after three slots: kind, size, next, filled.
        let w = 31 + 8 * 3;
        for (off, bytes) in
            [(0, vec![1u8]), (0, vec![7]), (1, vec![0, 0]), (1, vec![0xff, 0xff]), (3, vec![10, 0]), (5, vec![11, 0])]
        {
            let mut b = base.clone();
            if w + off + bytes.len() <= b.len() {
                b[w + off..w + off + bytes.len()].copy_from_slice(&bytes);
                samples.push(b);
            }
        }
    }
    for (i, bytes) in samples.iter().enumerate() {
        host.set_shared_data(&key, bytes);
        let ctx = a.new_context().unwrap();
        a.set_context_property(ctx, &["xds", "cluster_name"], BREAKER.as_bytes());
        let action = a.request_headers(ctx, &UPGRADE, false).unwrap_or_else(|e| panic!("sample {i}: {e:#}"));
        if action == CONTINUE {
            host.set_shared_data(&key, bytes);
            a.set_context_property(ctx, &["response", "code_details"], b"via_upstream");
            a.response_headers(ctx, &[(":status", "101")], false).unwrap_or_else(|e| panic!("sample {i}: {e:#}"));
        }
        a.end(ctx).unwrap_or_else(|e| panic!("sample {i}: {e:#}"));
        a.tick().unwrap_or_else(|e| panic!("sample {i}: {e:#}"));
        // Damaged bytes are replaced by a fresh (closed) state: the next upgrade passes.
        if bytes[..] != half_open[..] {
            let ctx = upgrade(&mut a);
            answer_from(&mut a, ctx, 101, "via_upstream", 0);
        }
    }
}

/// DESIGN: "OPEN lasts `base_ms` ... spread by `jitter`". A success can trip a rate window (the
/// one that brings it to `minimum_calls`); the open time then starts when that success is
/// recorded, not when its call was admitted: a call answered after 3 s must not leave a 10 s
/// open time (at least 5 s with the jitter) over after 2 s.
#[test]
fn a_success_that_trips_the_failure_rate_opens_the_breaker_from_its_answer_not_from_its_admission() {
    let mut host = Host::new(&built_module()).unwrap();
    let config = r#"{"defaults": {"consecutive_failures": 0, "failure_rate": 0.5, "minimum_calls": 4,
        "window": {"kind": "count", "size": 10}, "answer_timeout_ms": 0,
        "open": {"base_ms": 10000, "jitter": 0.5}}}"#;
    let mut a = worker(&mut host, config);
    for status in [503, 503, 101] {
        let ctx = upgrade(&mut a);
        answer_from(&mut a, ctx, status, "via_upstream", 0);
    }
    assert_eq!(opened(&host), 0);
    let slow = upgrade(&mut a);
    host.advance(std::time::Duration::from_millis(3_000));
    answer_from(&mut a, slow, 101, "via_upstream", 0);
    assert_eq!(opened(&host), 1, "2 failures in 4 calls reach the 0.5 rate");
    // At least base * (1 - jitter) = 5 s from the answer: still open 2.001 s later.
    host.advance(std::time::Duration::from_millis(2_001));
    assert!(!try_upgrade(&mut a).1, "open for less than base * (1 - jitter)");
}

/// `floodgate_calls_total{outcome="success"}` counts every success exactly once, on whichever
/// worker, whether it was written or judged a no-op and flushed on the tick; a call the tick
/// already counted as a failure (no answer in time) is not counted again when its answer comes.
#[test]
fn every_success_is_counted_exactly_once_across_workers_whether_written_or_flushed_on_the_tick() {
    let mut host = Host::new(&built_module()).unwrap();
    let config = r#"{"defaults": {"consecutive_failures": 5, "window": {"kind": "count", "size": 10},
        "answer_timeout_ms": 1000}}"#;
    let mut a = worker(&mut host, config);
    let mut b = worker(&mut host, config);
    let success = format!("breaker=.={BREAKER};.;outcome=.=success;.;floodgate_calls_total");
    let failure = format!("breaker=.={BREAKER};.;outcome=.=failure;.;floodgate_calls_total");
    for i in 0..15 {
        let w = if i % 3 == 0 { &mut b } else { &mut a };
        let ctx = upgrade(w);
        answer_from(w, ctx, 101, "via_upstream", 0);
    }
    let hung = upgrade(&mut a);
    host.advance(std::time::Duration::from_millis(1_000));
    a.tick().unwrap();
    answer_from(&mut a, hung, 101, "via_upstream", 0);
    for _ in 0..4 {
        let ctx = upgrade(&mut b);
        answer_from(&mut b, ctx, 101, "via_upstream", 0);
    }
    a.tick().unwrap();
    b.tick().unwrap();
    assert_eq!((metric(&host, &success), metric(&host, &failure)), (19, 1));
    a.tick().unwrap();
    b.tick().unwrap();
    assert_eq!((metric(&host, &success), metric(&host, &failure)), (19, 1), "a second tick adds nothing");
}

fn state_bytes(host: &Host) -> Vec<u8> {
    host.shared_data(&format!("floodgate/b/{BREAKER}")).expect("the breaker has a state").0
}

/// A quiet breaker (closed, no streak, its count window full of successes) is written as no
/// bytes, so its admission and its successes read the state with nothing copied into the module
/// (in Envoy, no call into the module's allocator); a failure brings the whole state back, and
/// once the failure has left the window the breaker is quiet again.
#[test]
fn a_healthy_breaker_is_written_as_no_bytes_and_read_with_nothing_copied_into_the_module() {
    let mut host = Host::new(&built_module()).unwrap();
    let config = r#"{"defaults": {"consecutive_failures": 3, "window": {"kind": "count", "size": 10},
        "open": {"base_ms": 60000, "jitter": 0.0}}}"#;
    let mut a = worker(&mut host, config);
    for _ in 0..10 {
        let ctx = upgrade(&mut a);
        answer_from(&mut a, ctx, 101, "via_upstream", 0);
    }
    assert_eq!(state_bytes(&host), Vec::<u8>::new(), "a full window of successes is quiet");
    let ctx = upgrade(&mut a);
    // Copied in: the `upgrade` header and the cluster's name; the state: nothing.
    assert_eq!(a.last.allocations, 2, "request headers: {:?}", a.last.host_calls);
    a.set_context_property(ctx, &["response", "code_details"], b"via_upstream");
    a.response_headers(ctx, &[(":status", "101")], false).unwrap();
    assert_eq!(a.last.allocations, 1, "the answer: `:status` only, {:?}", a.last.host_calls);
    a.end(ctx).unwrap();

    let ctx = upgrade(&mut a);
    answer_from(&mut a, ctx, 503, "via_upstream", 0);
    assert!(!state_bytes(&host).is_empty(), "a failure is remembered");
    for i in 0..10 {
        assert!(!state_bytes(&host).is_empty(), "quiet after {i} successes with the failure still in the window");
        let ctx = upgrade(&mut a);
        answer_from(&mut a, ctx, 101, "via_upstream", 0);
    }
    assert_eq!(state_bytes(&host), Vec::<u8>::new(), "the failure left the window");
    // Two more failures do not trip: the streak the first one began was ended by successes.
    for _ in 0..2 {
        let ctx = upgrade(&mut a);
        answer_from(&mut a, ctx, 503, "via_upstream", 0);
    }
    assert_eq!(opened(&host), 0);
}

/// A breaker that closed from half-open keeps its closing time while its recovery ramp runs,
/// even with its window full of successes (the ramp needs it), and past its ramp for as long as
/// the longest ramp a reload could set (an hour); the first success after that writes it as no
/// bytes.
#[test]
fn a_breaker_keeps_its_closing_time_for_the_longest_ramp_a_reload_could_set_and_is_written_as_no_bytes_after() {
    let mut host = Host::new(&built_module()).unwrap();
    let config = r#"{"defaults": {"consecutive_failures": 1, "window": {"kind": "count", "size": 10},
        "open": {"base_ms": 1000, "jitter": 0.0}, "half_open": {"permits": 1, "successes": 1},
        "recovery_ramp_ms": 5000}}"#;
    let mut a = worker(&mut host, config);
    trip_and_close(&host, &mut a);
    let closed = format!("breaker=.={BREAKER};.;from=.=half_open;.;to=.=closed;.;floodgate_transitions_total");
    assert_eq!(metric(&host, &closed), 1);
    let closed_at = host.now_ms();
    // Fill the window during the ramp (refused tries are the ramp's share).
    let mut successes = 0;
    while successes < 12 {
        host.advance(std::time::Duration::from_millis(50));
        let (ctx, admitted) = try_upgrade(&mut a);
        if admitted {
            answer_from(&mut a, ctx, 101, "via_upstream", 0);
            successes += 1;
        } else {
            a.end(ctx).unwrap();
        }
    }
    assert!(host.now_ms() < closed_at + 5_000, "the window filled within the ramp");
    let during = state_bytes(&host);
    assert!(!during.is_empty(), "a ramping breaker keeps its closing time");
    let head = floodgate_core::state::Head::peek(&during).unwrap();
    assert_eq!(head.closed_at_ms, closed_at, "{head:?}");
    host.advance(std::time::Duration::from_millis(5_000));
    let ctx = upgrade(&mut a);
    answer_from(&mut a, ctx, 101, "via_upstream", 0);
    assert!(!state_bytes(&host).is_empty(), "its own ramp is over, a reloaded one could still run");
    host.advance(std::time::Duration::from_millis(floodgate_core::policy::MAX_RECOVERY_RAMP_MS - 5_000));
    let ctx = upgrade(&mut a);
    answer_from(&mut a, ctx, 101, "via_upstream", 0);
    assert_eq!(state_bytes(&host), Vec::<u8>::new(), "quiet an hour after closing");
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
    answer_from(&mut a, ctx, 503, "via_upstream", 0);
    assert_eq!(opened(&host), 1);
    host.advance(std::time::Duration::from_millis(1_001));
    let first = upgrade(&mut a);
    let second = upgrade(&mut a);
    answer_from(&mut a, first, 101, "via_upstream", 0);
    // Quiet once no ramp a reload could configure can still run (an hour after closing).
    host.advance(std::time::Duration::from_millis(3_600_001));
    for _ in 0..5 {
        let ctx = upgrade(&mut a);
        answer_from(&mut a, ctx, 101, "via_upstream", 0);
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
    answer_from(&mut a, ctx, 101, "via_upstream", 0);
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
            answer_from(&mut a, ctx, 101, "via_upstream", 0);
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
            answer_from(&mut b, ctx, 503, "via_upstream", 0);
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
    trip_and_close(&host, &mut a);
    let closed_at = host.now_ms();
    // Within the hour after closing, the closing time is kept even with the window full.
    host.advance(std::time::Duration::from_millis(5_001));
    for _ in 0..4 {
        let ctx = upgrade(&mut a);
        answer_from(&mut a, ctx, 101, "via_upstream", 0);
    }
    let kept = state_bytes(&host);
    assert_eq!(floodgate_core::state::Head::peek(&kept).unwrap().closed_at_ms, closed_at);
    host.advance(std::time::Duration::from_millis(3_600_000));
    let ctx = upgrade(&mut a);
    answer_from(&mut a, ctx, 101, "via_upstream", 0);
    assert_eq!(state_bytes(&host), Vec::<u8>::new(), "quiet an hour after closing");
    // NTP steps the clock back to 40 % into the old ramp.
    host.rewind(std::time::Duration::from_millis(host.now_ms() - (closed_at + 2_000)));
    let admitted = admitted_of(&mut a, 40);
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
        trip_and_close(&host, &mut a);
        for _ in 0..3 {
            let ctx = upgrade(&mut a);
            answer_from(&mut a, ctx, 101, "via_upstream", 0);
        }
        let three = state_bytes(&host);
        assert!(floodgate_core::state::Head::peek(&three).unwrap().closed_at_ms > 0);
        let ctx = upgrade(&mut a);
        answer_from(&mut a, ctx, 101, "via_upstream", 0);
        assert!(!state_bytes(&host).is_empty(), "the closing time is kept for an hour, though this policy has no ramp");
        if full {
            let mut s = floodgate_core::BreakerState::decode(&three).unwrap();
            s.window.record(host.now_ms(), false, false);
            host.set_shared_data(&format!("floodgate/b/{BREAKER}"), &s.encode());
        }
        host.advance(std::time::Duration::from_millis(1));
        let mut b = worker(&mut host, after);
        admitted_of(&mut b, 40)
    };
    let reference = admitted_after_reload(true);
    assert!(reference <= 2, "stored in full, the new ramp refuses nearly all: {reference} of 40 admitted");
    let quiet = admitted_after_reload(false);
    assert_eq!(quiet, reference, "admitted of 40 on the empty value, stored in full");
}
