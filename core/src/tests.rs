//! The state machine against a reference model, over random event sequences on a manual clock,
//! plus unit tests of the paths the model leaves out (jitter, ramp, modes, time windows).

use std::collections::VecDeque;

use proptest::prelude::*;

use super::breaker::{probes_in_flight, PROBE_LEASE_MS};
use super::window::Window;
use super::*;

fn policy(consecutive: u32, rate: f64, size: u16, min_calls: u32, permits: u8, successes: u8) -> Policy {
    Policy {
        consecutive_failures: consecutive,
        failure_rate: rate,
        window: WindowSpec::Count { size },
        minimum_calls: min_calls,
        open_base_ms: 1_000,
        open_max_ms: 8_000,
        open_multiplier: 2.0,
        open_jitter: 0.0,
        half_open_permits: permits,
        half_open_successes: successes,
        answer_timeout_ms: 0,
        ..Policy::default()
    }
}

/// The breaker as the docs describe it, written plainly: a queue for the window, a list of
/// probe deadlines, no encoding.
struct Model {
    p: Policy,
    phase: Phase,
    consecutive: u32,
    window: VecDeque<bool>,
    open_until: u64,
    reopens: i32,
    probes: Vec<u64>,
    successes: u8,
}

#[derive(Debug, PartialEq)]
enum Said {
    Admit { probe: bool },
    Refuse(RefusedAs),
}

impl Model {
    fn new(p: Policy) -> Model {
        Model {
            p,
            phase: Phase::Closed,
            consecutive: 0,
            window: VecDeque::new(),
            open_until: 0,
            reopens: 0,
            probes: vec![],
            successes: 0,
        }
    }

    fn open(&mut self, now: u64) {
        self.phase = Phase::Open;
        let d = (self.p.open_base_ms as f64 * self.p.open_multiplier.powi(self.reopens)) as u64;
        self.open_until = now + d.min(self.p.open_max_ms);
        self.probes.clear();
        self.successes = 0;
    }

    fn admit(&mut self, now: u64) -> Said {
        if self.phase == Phase::Open {
            if now < self.open_until {
                return Said::Refuse(RefusedAs::Open);
            }
            self.phase = Phase::HalfOpen;
            self.probes.clear();
            self.successes = 0;
        }
        if self.phase == Phase::HalfOpen {
            self.probes.retain(|&d| d > now);
            if self.probes.len() < usize::from(self.p.half_open_permits) {
                self.probes.push(now + PROBE_LEASE_MS);
                return Said::Admit { probe: true };
            }
            return Said::Refuse(RefusedAs::HalfOpen);
        }
        Said::Admit { probe: false }
    }

    fn record(&mut self, now: u64, failure: bool, probe_deadline: Option<u64>) {
        match self.phase {
            Phase::Closed => {
                self.window.push_back(failure);
                if self.window.len() > self.size() {
                    self.window.pop_front();
                }
                self.consecutive = if failure { self.consecutive + 1 } else { 0 };
                let calls = self.window.len() as u32;
                let fails = self.window.iter().filter(|&&f| f).count() as f64;
                let by_streak = self.p.consecutive_failures > 0 && self.consecutive >= self.p.consecutive_failures;
                let by_rate = calls >= self.p.minimum_calls.max(1) && fails / f64::from(calls) >= self.p.failure_rate;
                if by_streak || by_rate {
                    self.open(now);
                }
            }
            Phase::HalfOpen => {
                self.probes.retain(|&d| d > now);
                let Some(d) = probe_deadline else { return };
                let Some(i) = self.probes.iter().position(|&x| x == d) else { return };
                self.probes.remove(i);
                if failure {
                    self.reopens += 1;
                    self.open(now);
                } else {
                    self.successes += 1;
                    if self.successes >= self.p.half_open_successes {
                        self.phase = Phase::Closed;
                        self.window.clear();
                        self.consecutive = 0;
                        self.reopens = 0;
                        self.probes.clear();
                    }
                }
            }
            Phase::Open => {}
        }
    }

    fn release(&mut self, now: u64, probe_deadline: Option<u64>) {
        if self.phase == Phase::HalfOpen {
            self.probes.retain(|&d| d > now);
            if let Some(i) = probe_deadline.and_then(|d| self.probes.iter().position(|&x| x == d)) {
                self.probes.remove(i);
            }
        }
    }

    fn size(&self) -> usize {
        match self.p.window {
            WindowSpec::Count { size } => usize::from(size),
            WindowSpec::Time { .. } => unreachable!(),
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Admit,
    /// Finish the n-th outstanding call (mod their number).
    Finish {
        which: usize,
        failure: bool,
    },
    Release {
        which: usize,
    },
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Admit),
        4 => (any::<usize>(), any::<bool>()).prop_map(|(which, failure)| Op::Finish { which, failure }),
        1 => any::<usize>().prop_map(|which| Op::Release { which }),
        2 => prop_oneof![0..50u64, 0..3_000u64, Just(PROBE_LEASE_MS)].prop_map(Op::Advance),
    ]
}

fn allowed(from: Phase, to: Phase) -> bool {
    matches!(
        (from, to),
        (Phase::Closed, Phase::Open)
            | (Phase::Open, Phase::HalfOpen)
            | (Phase::HalfOpen, Phase::Open)
            | (Phase::HalfOpen, Phase::Closed)
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn matches_the_reference_model(
        consecutive in 0u32..6,
        rate in prop_oneof![Just(0.5), Just(1.0), 0.1f64..1.0],
        size in 1u16..20,
        min_calls in 0u32..10,
        permits in 1u8..5,
        successes in 1u8..4,
        ops in prop::collection::vec(op(), 1..200),
    ) {
        let min_calls = min_calls.min(u32::from(size));
        let p = policy(consecutive, rate, size, min_calls, permits, successes);
        let mut model = Model::new(p.clone());
        // The real state goes through its encoding at every step, as it does in shared data
        // (a quiet state as no bytes).
        let mut bytes = BreakerState::new(&p).encode();
        let mut now = 1_000u64;
        let mut outstanding: Vec<Option<ProbeTicket>> = vec![];
        for op in ops {
            let mut s = BreakerState::decode_for(&bytes, &p).expect("decodes what it encoded");
            let before = s.phase;
            let effect = match op {
                Op::Admit => {
                    let (d, effect) = admit(&mut s, &p, now, 0.5);
                    let said = match d {
                        Decision::Admit { probe } => {
                            outstanding.push(probe);
                            Said::Admit { probe: probe.is_some() }
                        }
                        Decision::Refuse(r) => Said::Refuse(r.state),
                    };
                    prop_assert_eq!(said, model.admit(now));
                    effect
                }
                Op::Finish { which, failure } if !outstanding.is_empty() => {
                    let t = outstanding.remove(which % outstanding.len());
                    model.record(now, failure, t.map(|t| t.deadline_ms));
                    record(&mut s, &p, now, Call { failure, slow: false }, t, 0.5)
                }
                Op::Release { which } if !outstanding.is_empty() => {
                    let t = outstanding.remove(which % outstanding.len());
                    model.release(now, t.map(|t| t.deadline_ms));
                    release(&mut s, t, now)
                }
                Op::Advance(ms) => {
                    now += ms;
                    Effect::default()
                }
                _ => Effect::default(),
            };
            if let Some(t) = effect.transition {
                prop_assert!(allowed(t.from, t.to), "forbidden {:?} -> {:?}", t.from, t.to);
                prop_assert_eq!(t.from, before);
                prop_assert!(effect.changed);
            }
            prop_assert_eq!(s.phase, model.phase);
            prop_assert!(probes_in_flight(&s, now) <= usize::from(permits));
            if effect.changed {
                bytes = s.encode_for(now);
            } else {
                prop_assert_eq!(&s.encode_for(now), &bytes, "state changed but not flagged");
            }
        }
    }

    #[test]
    fn half_open_admits_exactly_permits_when_more_try(permits in 1u8..=8, tries in 1usize..40) {
        let p = policy(1, 1.0, 10, 1, permits, 1);
        let mut s = BreakerState::new(&p);
        record(&mut s, &p, 0, Call { failure: true, slow: false }, None, 0.5);
        prop_assert_eq!(s.phase, Phase::Open);
        let admitted = (0..tries)
            .filter(|_| matches!(admit(&mut s, &p, 1_000, 0.5).0, Decision::Admit { probe: Some(_) }))
            .count();
        prop_assert_eq!(admitted, tries.min(usize::from(permits)));
    }
}

fn trip(s: &mut BreakerState, p: &Policy, now: u64) {
    for _ in 0..p.consecutive_failures {
        record(s, p, now, Call { failure: true, slow: false }, None, 0.5);
    }
    assert_eq!(s.phase, Phase::Open);
}

#[test]
fn open_time_grows_exponentially_and_is_capped() {
    let p = policy(1, 1.0, 10, 1, 1, 1);
    let mut s = BreakerState::new(&p);
    trip(&mut s, &p, 0);
    let mut now = 0;
    let mut opens = vec![s.open_until_ms - now];
    for _ in 0..5 {
        now = s.open_until_ms;
        let Decision::Admit { probe } = admit(&mut s, &p, now, 0.5).0 else { panic!("probe refused") };
        record(&mut s, &p, now, Call { failure: true, slow: false }, probe, 0.5);
        opens.push(s.open_until_ms - now);
    }
    assert_eq!(opens, vec![1_000, 2_000, 4_000, 8_000, 8_000, 8_000]);
}

#[test]
fn jitter_spreads_open_time_and_retry_after_within_bounds() {
    let p = Policy { open_jitter: 0.2, ..policy(1, 1.0, 10, 1, 1, 1) };
    for (unit, open_ms) in [(0.0, 800), (0.5, 1_000), (0.999, 1_199)] {
        let mut s = BreakerState::new(&p);
        record(&mut s, &p, 0, Call { failure: true, slow: false }, None, unit);
        assert_eq!(s.open_until_ms, open_ms, "unit {unit}");
        let Decision::Refuse(r) = admit(&mut s, &p, 0, unit).0 else { panic!() };
        // Whole seconds between the open time and its jittered top, rounded up.
        assert_eq!(r.retry_after_ms % 1000, 0, "{r:?}");
        assert!(
            r.retry_after_ms >= open_ms && r.retry_after_ms <= (open_ms + open_ms / 5).div_ceil(1000) * 1000 + 1000,
            "{r:?}"
        );
    }
}

#[test]
fn clock_jumps_of_zero_and_of_hours_are_handled() {
    let p = policy(1, 1.0, 10, 1, 1, 1);
    let mut s = BreakerState::new(&p);
    trip(&mut s, &p, 5_000);
    assert!(matches!(admit(&mut s, &p, 5_000, 0.5).0, Decision::Refuse(_)));
    let hours = 5_000 + 3 * 3_600_000;
    assert!(matches!(admit(&mut s, &p, hours, 0.5).0, Decision::Admit { probe: Some(_) }));
    assert_eq!(s.phase, Phase::HalfOpen);
    // Time going backwards (a host clock step) neither panics nor frees slots early.
    assert!(matches!(admit(&mut s, &p, 0, 0.5).0, Decision::Refuse(_)));
}

#[test]
fn a_leaked_probe_slot_is_reclaimed_after_its_lease() {
    let p = policy(1, 1.0, 10, 1, 1, 1);
    let mut s = BreakerState::new(&p);
    trip(&mut s, &p, 0);
    assert!(matches!(admit(&mut s, &p, 1_000, 0.5).0, Decision::Admit { probe: Some(_) }));
    assert!(matches!(admit(&mut s, &p, 1_000 + PROBE_LEASE_MS - 1, 0.5).0, Decision::Refuse(_)));
    assert!(matches!(admit(&mut s, &p, 1_000 + PROBE_LEASE_MS, 0.5).0, Decision::Admit { probe: Some(_) }));
}

#[test]
fn failure_rate_trips_once_minimum_calls_are_in_the_window() {
    let p = policy(0, 0.5, 10, 4, 1, 1);
    let mut s = BreakerState::new(&p);
    for failure in [true, false, true] {
        record(&mut s, &p, 0, Call { failure, slow: false }, None, 0.5);
    }
    assert_eq!(s.phase, Phase::Closed, "3 calls < minimum_calls");
    let e = record(&mut s, &p, 0, Call { failure: false, slow: false }, None, 0.5);
    assert_eq!(e.transition.map(|t| t.reason), Some(Reason::FailureRate));
}

#[test]
fn slow_call_rate_trips_on_slow_successes() {
    let p = Policy { slow_call_ms: 100, slow_call_rate: 0.5, ..policy(0, 1.0, 10, 2, 1, 1) };
    let mut s = BreakerState::new(&p);
    record(&mut s, &p, 0, Call { failure: false, slow: true }, None, 0.5);
    let e = record(&mut s, &p, 0, Call { failure: false, slow: false }, None, 0.5);
    assert_eq!(e.transition.map(|t| t.reason), Some(Reason::SlowCallRate));
}

#[test]
fn time_window_rate_forgets_old_failures() {
    let p = Policy { window: WindowSpec::Time { seconds: 10 }, ..policy(0, 0.5, 10, 3, 1, 1) };
    let mut s = BreakerState::new(&p);
    record(&mut s, &p, 0, Call { failure: true, slow: false }, None, 0.5);
    record(&mut s, &p, 0, Call { failure: true, slow: false }, None, 0.5);
    // 20 s later the two failures are out of the window: one failure in three calls.
    for failure in [false, false, true] {
        record(&mut s, &p, 20_000, Call { failure, slow: false }, None, 0.5);
    }
    assert_eq!(s.phase, Phase::Closed);
}

#[test]
fn recovery_ramp_admits_a_rising_share() {
    let p = Policy { recovery_ramp_ms: 10_000, ..policy(1, 1.0, 10, 1, 1, 1) };
    let mut s = BreakerState::new(&p);
    trip(&mut s, &p, 0);
    let Decision::Admit { probe } = admit(&mut s, &p, 1_000, 0.5).0 else { panic!() };
    record(&mut s, &p, 1_000, Call { failure: false, slow: false }, probe, 0.5);
    assert_eq!(s.phase, Phase::Closed);
    let share = |s: &mut BreakerState, at: u64| {
        (0..100).filter(|i| matches!(admit(s, &p, 1_000 + at, f64::from(*i) / 100.0).0, Decision::Admit { .. })).count()
    };
    assert_eq!(share(&mut s, 0), 0);
    assert_eq!(share(&mut s, 2_500), 25);
    assert_eq!(share(&mut s, 7_500), 75);
    assert_eq!(share(&mut s, 10_000), 100);
    let Decision::Refuse(r) = admit(&mut s, &p, 1_000, 0.9).0 else { panic!() };
    assert_eq!((r.state, r.reason), (RefusedAs::Closed, Reason::RecoveryRamp));
}

#[test]
fn modes_forced_open_refuses_and_disabled_records_nothing() {
    let forced = Policy { mode: Mode::ForcedOpen, ..policy(1, 1.0, 10, 1, 1, 1) };
    let mut s = BreakerState::new(&forced);
    let Decision::Refuse(r) = admit(&mut s, &forced, 0, 0.5).0 else { panic!() };
    assert_eq!((r.state, r.reason), (RefusedAs::ForcedOpen, Reason::Forced));
    let disabled = Policy { mode: Mode::Disabled, ..policy(1, 1.0, 10, 1, 1, 1) };
    let mut s = BreakerState::new(&disabled);
    let e = record(&mut s, &disabled, 0, Call { failure: true, slow: false }, None, 0.5);
    assert!(!e.changed);
    assert_eq!(s.phase, Phase::Closed);
}

#[test]
fn outcomes_of_calls_admitted_before_the_trip_do_not_decide_half_open() {
    let p = policy(1, 1.0, 10, 1, 1, 2);
    let mut s = BreakerState::new(&p);
    trip(&mut s, &p, 0);
    let Decision::Admit { probe } = admit(&mut s, &p, 1_000, 0.5).0 else { panic!() };
    // A late failure of a pre-trip call (no ticket) changes nothing.
    let e = record(&mut s, &p, 1_000, Call { failure: true, slow: false }, None, 0.5);
    assert!(!e.changed);
    assert_eq!(s.phase, Phase::HalfOpen);
    record(&mut s, &p, 1_000, Call { failure: false, slow: false }, probe, 0.5);
    assert_eq!(s.phase, Phase::HalfOpen, "needs two successes");
}

#[test]
fn retry_after_keeps_its_spread_in_whole_seconds() {
    use super::breaker::whole_seconds;
    let seen: std::collections::BTreeSet<u64> =
        (0..100).map(|i| whole_seconds(1_000, 0.1, f64::from(i) / 100.0)).collect();
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [1_000, 2_000]);
    let seen: std::collections::BTreeSet<u64> =
        (0..100).map(|i| whole_seconds(30_000, 0.1, f64::from(i) / 100.0)).collect();
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [30_000, 31_000, 32_000, 33_000]);
    assert_eq!(whole_seconds(2_800, 0.0, 0.9), 3_000);
    assert_eq!(whole_seconds(0, 0.0, 0.9), 1_000);
    assert_eq!(whole_seconds(u64::MAX, 0.5, 0.9) % 1000, 0);
}

#[test]
fn a_clock_stepped_backwards_ends_the_ramp_and_clamps_the_open_time() {
    let p = Policy { recovery_ramp_ms: 60_000, open_jitter: 0.1, ..policy(1, 1.0, 10, 1, 1, 1) };
    let mut s = BreakerState::new(&p);
    s.closed_at_ms = 10_000_000;
    // Stepped back by an hour: the ramp would start in the future and refuse everything.
    for i in 0..20 {
        let (d, _) = admit(&mut s, &p, 10_000_000 - 3_600_000 / 2, f64::from(i) / 20.0);
        assert!(matches!(d, Decision::Admit { .. }), "{d:?}");
    }
    let mut s = BreakerState::new(&p);
    trip(&mut s, &p, 10_000_000);
    let (d, e) = admit(&mut s, &p, 10_000_000 - 3_600_000, 0.5);
    assert!(e.changed);
    assert!(s.open_until_ms <= 10_000_000 - 3_600_000 + p.longest_open_ms(), "{s:?}");
    assert!(matches!(d, Decision::Refuse(_)));
    assert!(matches!(admit(&mut s, &p, 10_000_000 - 3_600_000 + p.longest_open_ms(), 0.5).0, Decision::Admit { .. }));
}

#[test]
fn a_probe_that_times_out_reopens_and_half_open_never_outlives_answer_timeout() {
    let p = Policy { answer_timeout_ms: 5_000, ..policy(1, 1.0, 10, 1, 2, 2) };
    let mut s = BreakerState::new(&p);
    trip(&mut s, &p, 0);
    let Decision::Admit { probe: Some(t) } = admit(&mut s, &p, 1_000, 0.5).0 else { panic!() };
    assert_eq!(t.deadline_ms, 6_000);
    // Its own worker times it out at the deadline: re-open.
    let mut a = s.clone();
    let e = timeout(&mut a, &p, 6_000, Some(t), 0.5);
    assert_eq!(e.transition.map(|t| (t.to, t.reason)), Some((Phase::Open, Reason::ProbeFailed)));
    // Another worker's admit after the deadline notices first: re-open too.
    let mut b = s.clone();
    let (d, e) = admit(&mut b, &p, 6_000, 0.5);
    assert!(matches!(d, Decision::Refuse(r) if r.reason == Reason::ProbeFailed), "{d:?}");
    assert_eq!(e.transition.map(|t| t.to), Some(Phase::Open));
    // A closed breaker counts a timed-out call as a failure.
    let mut c = BreakerState::new(&p);
    assert_eq!(timeout(&mut c, &p, 10, None, 0.5).transition.map(|t| t.to), Some(Phase::Open));
}

#[test]
fn a_time_window_bucket_that_fills_keeps_its_rate() {
    let mut w = window::Window::new(WindowSpec::Time { seconds: 10 });
    for i in 0..200_000u32 {
        w.record(0, i % 4 == 0, false);
    }
    let c = w.counts(0);
    let rate = f64::from(c.failures) / f64::from(c.calls);
    assert!((rate - 0.25).abs() < 0.01, "{c:?}");
}

#[test]
fn ramp_refusals_keep_their_retry_after_spread_late_in_the_ramp() {
    let p = Policy { recovery_ramp_ms: 10_000, open_jitter: 0.1, ..policy(1, 1.0, 10, 1, 1, 1) };
    let mut s = BreakerState::new(&p);
    s.closed_at_ms = 1_000;
    // 90 % into the ramp only draws above 0.9 are refused; they still say 1 or 2 seconds.
    let seen: std::collections::BTreeSet<u64> = (0..1000)
        .filter_map(|i| match admit(&mut s, &p, 10_000, 0.9 + f64::from(i) / 10_000.0).0 {
            Decision::Refuse(r) => Some(r.retry_after_ms),
            Decision::Admit { .. } => None,
        })
        .collect();
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [1_000, 2_000]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    /// The lean admission reads only the head; whenever it decides, `admit` on the whole state
    /// decides the same and changes nothing.
    #[test]
    fn admission_from_the_head_decides_as_admit(
        phase in 0u8..3,
        since in 0u64..2_000,
        open_until in 0u64..40_000,
        closed_at in prop_oneof![Just(0u64), 0u64..2_000],
        ramp in prop_oneof![Just(0u64), 1u64..1_000],
        now in 0u64..30_000,
        unit in 0.0f64..1.0,
    ) {
        let p = Policy { recovery_ramp_ms: ramp, open_max_ms: 20_000, ..policy(3, 0.5, 10, 5, 2, 1) };
        let mut s = BreakerState::new(&p);
        s.phase = [Phase::Closed, Phase::HalfOpen, Phase::Open][usize::from(phase)];
        (s.since_ms, s.open_until_ms, s.closed_at_ms) = (since, open_until, closed_at);
        let head = state::Head::peek(&s.encode()).expect("a valid encoding has a head");
        if let Some(fast) = breaker::admit_unchanged(&head, &p, now, || unit) {
            let (full, effect) = admit(&mut s, &p, now, unit);
            prop_assert_eq!(fast, full);
            prop_assert_eq!(effect, Effect::default());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    /// A probe admitted, refused or answered on the encoded bytes in place leaves the bytes and
    /// decides what the full step on the decoded state does.
    #[test]
    fn probe_steps_in_place_match_the_full_steps(
        slots in prop::collection::vec(prop_oneof![Just(0u64), 1u64..3_000], 3),
        successes in 0u8..3,
        timeout in prop_oneof![Just(0u64), 1u64..2_000],
        time_window in any::<bool>(),
        now in 0u64..3_000,
        slot in 0u8..4,
        unit in 0.0f64..1.0,
    ) {
        let window = if time_window { WindowSpec::Time { seconds: 10 } } else { WindowSpec::Count { size: 10 } };
        let p = Policy { answer_timeout_ms: timeout, window, half_open_successes: 3, ..policy(3, 0.5, 10, 5, 3, 3) };
        let mut s = BreakerState::new(&p);
        s.phase = Phase::HalfOpen;
        s.probe_slots = slots.clone();
        s.probe_successes = successes;
        let bytes = s.encode();

        let mut patched = bytes.clone();
        if let Some((fast, changed)) = breaker::admit_probe_in_place(&mut patched, &p, now, || unit) {
            let mut full = s.clone();
            let (decision, effect) = admit(&mut full, &p, now, unit);
            prop_assert_eq!(fast, decision);
            prop_assert_eq!(changed, effect.changed);
            prop_assert_eq!(&patched, &full.encode());
        }

        let deadline = slots.get(usize::from(slot)).copied().unwrap_or(7);
        let ticket = ProbeTicket { slot, deadline_ms: deadline };
        let mut patched = bytes.clone();
        if let Some(changed) = breaker::record_probe_success_in_place(&mut patched, &p, now, ticket) {
            let mut full = s.clone();
            let effect = record_success(&mut full, &p, now, Some(ticket));
            prop_assert_eq!(changed, effect.changed);
            prop_assert_eq!(effect.transition, None);
            prop_assert_eq!(&patched, &full.encode());
        }
    }
}

#[test]
fn a_delayed_call_starts_only_while_the_breaker_is_closed() {
    let p = policy(1, 1.0, 10, 1, 2, 1);
    let head = |s: &BreakerState| state::Head::peek(&s.encode()).expect("a valid encoding has a head");
    let mut s = BreakerState::new(&p);
    assert_eq!(breaker::refusal_after_delay(&head(&s), &p, 0, || 0.5), None);
    trip(&mut s, &p, 0);
    let open = breaker::refusal_after_delay(&head(&s), &p, 10, || 0.5).expect("open refuses");
    assert_eq!((open.state, open.reason), (RefusedAs::Open, Reason::ConsecutiveFailures));
    // Half-open (its open time ended and a probe went out): a delayed call is no probe.
    let now = s.open_until_ms;
    let Decision::Admit { probe: Some(_) } = admit(&mut s, &p, now, 0.5).0 else { panic!("no probe") };
    let half = breaker::refusal_after_delay(&head(&s), &p, now, || 0.5).expect("half-open refuses");
    assert_eq!(half.state, RefusedAs::HalfOpen);
    // dry_run never refuses.
    let dry = Policy { mode: Mode::DryRun, ..p.clone() };
    assert_eq!(breaker::refusal_after_delay(&head(&s), &dry, now, || 0.5), None);
}

/// One step of [`a_quiet_state_written_as_no_bytes_decides_as_the_state_it_stands_for`] on one
/// state: what was decided, the transition if any, and the phase and streak after.
fn step_quiet_pair(
    s: &mut BreakerState,
    p: &Policy,
    op: &Op,
    now: u64,
    outstanding: &mut Vec<Option<ProbeTicket>>,
) -> (Option<Decision>, Option<Transition>, Phase, u16) {
    let (decided, effect) = match *op {
        Op::Admit => {
            let (d, effect) = admit(s, p, now, 0.5);
            if let Decision::Admit { probe } = d {
                outstanding.push(probe);
            }
            (Some(d), effect)
        }
        Op::Finish { which, failure } if !outstanding.is_empty() => {
            let t = outstanding.remove(which % outstanding.len());
            (None, record(s, p, now, Call { failure, slow: false }, t, 0.5))
        }
        Op::Release { which } if !outstanding.is_empty() => {
            let t = outstanding.remove(which % outstanding.len());
            (None, release(s, t, now))
        }
        _ => (None, Effect::default()),
    };
    (decided, effect.transition, s.phase, s.consecutive_failures)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// A quiet state is written as no bytes, which read back as the quiet state of the policy.
    /// What that loses (when it closed, where its ring stands, when its ramp ended) changes no
    /// decision: the state and its stand-in decide alike over any later events.
    #[test]
    fn a_quiet_state_written_as_no_bytes_decides_as_the_state_it_stands_for(
        consecutive in 0u32..6,
        rate in prop_oneof![Just(0.5), Just(1.0), 0.1f64..1.0],
        size in 1u16..20,
        min_calls in 0u32..10,
        ramp in prop_oneof![Just(0u64), 1u64..5_000],
        next in 0u16..20,
        since in 0u64..10_000,
        closed_at in prop_oneof![Just(0u64), 1u64..10_000],
        ops in prop::collection::vec(op(), 1..150),
    ) {
        let p = Policy { recovery_ramp_ms: ramp, ..policy(consecutive, rate, size, min_calls.min(u32::from(size)), 2, 1) };
        let mut original = BreakerState::quiet(&p);
        if let Window::Count { next: n, .. } = &mut original.window {
            *n = next % size;
        }
        (original.since_ms, original.closed_at_ms) = (since, closed_at);
        // Written once no ramp a policy allows can still run.
        let ramps_over = if closed_at == 0 { 0 } else { closed_at + policy::MAX_RECOVERY_RAMP_MS };
        let mut now = since.max(ramps_over).max(1);
        prop_assert!(original.is_quiet(now));
        let bytes = original.encode_for(now);
        prop_assert!(bytes.is_empty());
        let mut stand_in = BreakerState::decode_for(&bytes, &p).expect("empty bytes are the quiet state");
        prop_assert_eq!(&stand_in, &BreakerState::quiet(&p));
        let (mut a, mut b) = (vec![], vec![]);
        for op in &ops {
            if let Op::Advance(ms) = op {
                now += ms;
            }
            let real = step_quiet_pair(&mut original, &p, op, now, &mut a);
            let quiet = step_quiet_pair(&mut stand_in, &p, op, now, &mut b);
            prop_assert_eq!(real, quiet, "after {:?} at {}", op, now);
        }
    }
}

#[test]
fn only_a_closed_breaker_with_nothing_to_remember_is_quiet() {
    let p = Policy { recovery_ramp_ms: 1_000, ..policy(3, 0.5, 10, 5, 2, 1) };
    let hour = policy::MAX_RECOVERY_RAMP_MS;
    let quiet = BreakerState::quiet(&p);
    assert!(quiet.is_quiet(0));
    assert_eq!(quiet.encode_for(0), Vec::<u8>::new());
    assert_eq!(BreakerState::decode_for(&[], &p), Some(quiet.clone()));
    assert_eq!(BreakerState::decode(&[]), None, "empty bytes need a policy");
    assert_eq!(state::Head::peek(&[]), Some(state::Head::QUIET));
    assert!(state::success_is_noop(&[], 2, 10));
    let not_quiet = |s: &BreakerState, now: u64, why: &str| {
        assert!(!s.is_quiet(now), "{why}");
        assert_eq!(s.encode_for(now), s.encode(), "{why}");
    };
    // A closing time is kept as long as any ramp a reload could configure may still run.
    let mut closed_from_half_open = quiet.clone();
    closed_from_half_open.closed_at_ms = 5_000;
    not_quiet(&closed_from_half_open, 5_000 + 1_000, "past this policy's ramp, within the longest one");
    not_quiet(&closed_from_half_open, 5_000 + hour - 1, "within the longest ramp");
    assert!(closed_from_half_open.is_quiet(5_000 + hour), "past the longest ramp");
    let mut streak = quiet.clone();
    streak.consecutive_failures = 1;
    not_quiet(&streak, 0, "a failure streak");
    let mut failed = quiet.clone();
    failed.window.record(0, true, false);
    not_quiet(&failed, 0, "a failure in the window");
    let mut slow = quiet.clone();
    slow.window.record(0, false, true);
    not_quiet(&slow, 0, "a slow call in the window");
    not_quiet(&BreakerState::new(&p), 0, "a window still filling");
    for phase in [Phase::Open, Phase::HalfOpen] {
        let mut s = quiet.clone();
        s.phase = phase;
        not_quiet(&s, 0, "not closed");
    }
    let mut reopens = quiet.clone();
    reopens.reopens = 1;
    not_quiet(&reopens, 0, "reopens to remember");
    let mut slot = quiet.clone();
    slot.probe_slots[1] = 9;
    not_quiet(&slot, 0, "a probe slot taken");
    let time = Policy { window: WindowSpec::Time { seconds: 10 }, ..p.clone() };
    not_quiet(&BreakerState::new(&time), 0, "a time window");
    assert_eq!(BreakerState::decode_for(&[], &time), Some(BreakerState::new(&time)));
}

#[test]
fn a_no_op_success_s_bytes_are_quiet_only_with_nothing_else_to_remember() {
    let p = policy(3, 0.5, 10, 5, 2, 1);
    let hour = policy::MAX_RECOVERY_RAMP_MS;
    let quiet = BreakerState::quiet(&p);
    let noop = |s: &BreakerState| state::success_is_noop(&s.encode(), 2, 10);
    assert!(noop(&quiet) && state::noop_is_quiet(&quiet.encode(), 0));
    let mut closed = quiet.clone();
    closed.closed_at_ms = 5_000;
    assert!(noop(&closed) && !state::noop_is_quiet(&closed.encode(), 5_000 + hour - 1));
    assert!(state::noop_is_quiet(&closed.encode(), 5_000 + hour));
    for (at, why) in [(2usize, "a reason"), (3, "reopens"), (6, "probe successes")] {
        let mut bytes = quiet.encode();
        bytes[at] = 1;
        assert!(!state::noop_is_quiet(&bytes, 0), "{why}");
    }
    let mut slot = quiet.clone();
    slot.probe_slots[0] = 9;
    assert!(!state::noop_is_quiet(&slot.encode(), 0), "a probe slot taken");
    // Whatever noop_is_quiet accepts is a state is_quiet accepts.
    for s in [&quiet, &closed, &slot] {
        for now in [0, 5_000 + hour - 1, 5_000 + hour] {
            if state::noop_is_quiet(&s.encode(), now) {
                assert!(s.is_quiet(now));
            }
        }
    }
}

#[test]
fn a_reload_that_resizes_a_window_full_of_successes_keeps_it_full_and_starts_any_other_afresh() {
    let small = policy(3, 0.5, 10, 5, 2, 1);
    let large = policy(3, 0.5, 20, 5, 2, 1);
    let mut healthy = BreakerState::quiet(&small);
    healthy.conform(&large);
    assert_eq!(healthy, BreakerState::quiet(&large), "as the empty encoding reads under the larger policy");
    let mut failed = BreakerState::quiet(&small);
    failed.window.record(0, true, false);
    failed.conform(&large);
    assert_eq!(failed.window, Window::new(WindowSpec::Count { size: 20 }), "a window with a failure starts afresh");
    let mut filling = BreakerState::new(&small);
    filling.conform(&large);
    assert_eq!(filling.window, Window::new(WindowSpec::Count { size: 20 }));
    let time = Policy { window: WindowSpec::Time { seconds: 10 }, ..small.clone() };
    let mut to_time = BreakerState::quiet(&small);
    to_time.conform(&time);
    assert_eq!(to_time.window, Window::new(WindowSpec::Time { seconds: 10 }));
}

#[test]
fn the_in_place_probe_steps_read_a_quiet_breaker_s_empty_bytes_as_closed_and_never_index_past_them() {
    let p = policy(3, 0.5, 10, 5, 2, 1);
    let t = ProbeTicket { slot: 1, deadline_ms: 500 };
    assert_eq!(breaker::record_probe_success_in_place(&mut [], &p, 100, t), None);
    assert_eq!(breaker::admit_probe_in_place(&mut [], &p, 100, || 0.5), None);
    for n in 0..40 {
        let short = vec![1u8; n];
        assert!(!state::fits(&short, &p) || n >= 33);
        let _ = (state::slot(&short, 3), state::slots(&short), state::probe_successes(&short));
        let _ = state::slot_deadlines(&short).count();
        let mut b = short.clone();
        state::set_slot(&mut b, 3, 9);
        state::set_probe_successes(&mut b, 2);
    }
}
