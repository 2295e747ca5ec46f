//! Review (quiet state): the same events stepped on two stores, as the filter's guard steps them
//! (head shortcut, in-place probe steps, lean no-op success and its quieten write, full step with
//! `conform`): one writes every state in full (`encode`), the other writes a quiet state as no
//! bytes (`encode_for`, `decode_for`). Two workers may hold different policies (a reload in
//! progress). Every decision and transition must be the same.

use floodgate_core::breaker::{
    admit_probe_in_place, admit_unchanged, record_probe_success_in_place, record_success_clocked,
};
use floodgate_core::policy::MAX_RECOVERY_RAMP_MS;
use floodgate_core::state::{self, Head};
use floodgate_core::{
    admit, record, release, timeout, BreakerState, Call, Decision, Effect, Mode, Policy, ProbeTicket, Transition,
    WindowSpec,
};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Admit { worker: usize, unit: f64 },
    Finish { which: usize, failure: bool },
    Timeout { which: usize },
    Release { which: usize },
    Advance(u64),
    StepBack(u64),
}

struct Store {
    bytes: Option<Vec<u8>>,
    quiet: bool,
}

#[derive(Clone, Copy, Debug)]
struct Out {
    worker: usize,
    probe: Option<ProbeTicket>,
    start: u64,
}

fn lean(p: &Policy) -> Option<u16> {
    match p.window {
        WindowSpec::Count { size } if p.slow_call_ms == 0 && matches!(p.mode, Mode::Enforce | Mode::DryRun) => {
            Some(size)
        }
        _ => None,
    }
}

impl Store {
    fn update<T>(&mut self, p: &Policy, now: u64, step: impl FnOnce(&mut BreakerState) -> (T, Effect)) -> (T, Effect) {
        let mut s = self
            .bytes
            .as_deref()
            .and_then(|b| if self.quiet { BreakerState::decode_for(b, p) } else { BreakerState::decode(b) })
            .unwrap_or_else(|| BreakerState::new(p));
        s.conform(p);
        let (v, e) = step(&mut s);
        if e.changed {
            self.bytes = Some(if self.quiet { s.encode_for(now) } else { s.encode() });
        }
        (v, e)
    }

    /// guard::decide
    fn admit(&mut self, p: &Policy, now: u64, unit: f64) -> (Decision, Option<Transition>) {
        if let Some(h) = self.bytes.as_deref().and_then(Head::peek) {
            if let Some(d) = admit_unchanged(&h, p, now, || unit) {
                return (d, None);
            }
        }
        if let Some(b) = self.bytes.as_mut() {
            if let Some((d, _)) = admit_probe_in_place(b, p, now, || unit) {
                return (d, None);
            }
        }
        let (d, e) = self.update(p, now, |s| admit(s, p, now, unit));
        (d, e.transition)
    }

    /// guard::finish (success_if_noop, record_outcome, probe_success_in_place)
    fn finish(&mut self, p: &Policy, o: Out, now: u64, failure: bool) -> Option<Transition> {
        if !failure {
            if let Some(size) = lean(p).filter(|_| o.probe.is_none()) {
                if let Some(b) = self.bytes.as_deref() {
                    if state::success_is_noop(b, p.half_open_permits, size) {
                        if self.quiet && !b.is_empty() && state::noop_is_quiet(b, o.start) {
                            self.bytes = Some(Vec::new());
                        }
                        return None;
                    }
                }
            }
        }
        let clock = (failure || lean(p).is_none()).then_some(now);
        let at = clock.unwrap_or(o.start);
        let slow = p.slow_call_ms > 0 && at.saturating_sub(o.start) >= p.slow_call_ms;
        if let (None, Some(t), Some(b)) = (clock, o.probe, self.bytes.as_mut()) {
            if record_probe_success_in_place(b, p, o.start, t).is_some() {
                return None;
            }
        }
        let call = Call { failure, slow };
        let (_, e) = self.update(p, at, |s| match clock {
            Some(now) => ((), record(s, p, now, call, o.probe, 0.5)),
            None => ((), record_success_clocked(s, p, o.start, o.probe, || (now, 0.5))),
        });
        e.transition
    }

    fn timeout(&mut self, p: &Policy, o: Out, now: u64) -> Option<Transition> {
        self.update(p, now, |s| ((), timeout(s, p, now, o.probe, 0.5))).1.transition
    }

    fn release(&mut self, p: &Policy, o: Out, now: u64) -> Option<Transition> {
        self.update(p, now, |s| ((), release(s, o.probe, now))).1.transition
    }
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        prop_oneof![8 => Just(Mode::Enforce), 2 => Just(Mode::DryRun), 1 => Just(Mode::Disabled), 1 => Just(Mode::ForcedOpen)],
        0u32..4,
        prop_oneof![Just(0.5), Just(1.0), 0.1f64..1.0],
        prop_oneof![4 => (1u16..12).prop_map(|size| WindowSpec::Count { size }), 1 => (1u16..4).prop_map(|seconds| WindowSpec::Time { seconds })],
        0u32..6,
        prop_oneof![3 => Just(0u64), 1 => 1u64..50],
        1u8..3,
        1u8..3,
        prop_oneof![Just(0u64), 1u64..10_000, Just(MAX_RECOVERY_RAMP_MS)],
        prop_oneof![Just(0u64), 1u64..5_000],
    )
        .prop_map(|(mode, consecutive, rate, window, min, slow, permits, successes, ramp, answer)| {
            let min = match window {
                WindowSpec::Count { size } => min.min(u32::from(size)),
                WindowSpec::Time { .. } => min,
            };
            Policy {
                mode,
                consecutive_failures: consecutive,
                failure_rate: rate,
                slow_call_ms: slow,
                slow_call_rate: 0.5,
                window,
                minimum_calls: min,
                open_base_ms: 1_000,
                open_max_ms: 8_000,
                open_multiplier: 2.0,
                open_jitter: 0.0,
                half_open_permits: permits,
                half_open_successes: successes,
                recovery_ramp_ms: ramp,
                answer_timeout_ms: answer,
            }
        })
}

fn op(back: bool) -> impl Strategy<Value = Op> {
    let back_w = if back { 1 } else { 0 };
    prop_oneof![
        6 => (0usize..2, 0.0f64..1.0).prop_map(|(worker, unit)| Op::Admit { worker, unit }),
        6 => (any::<usize>(), prop::bool::weighted(0.1)).prop_map(|(which, failure)| Op::Finish { which, failure }),
        1 => any::<usize>().prop_map(|which| Op::Timeout { which }),
        1 => any::<usize>().prop_map(|which| Op::Release { which }),
        3 => prop_oneof![1u64..3_000, Just(MAX_RECOVERY_RAMP_MS), (MAX_RECOVERY_RAMP_MS - 5..MAX_RECOVERY_RAMP_MS + 5)].prop_map(Op::Advance),
        back_w => prop_oneof![1u64..3_000, (MAX_RECOVERY_RAMP_MS - 5_000..MAX_RECOVERY_RAMP_MS + 5_000)].prop_map(Op::StepBack),
    ]
}

fn run(policies: [Policy; 2], ops: &[Op]) -> Result<(), TestCaseError> {
    let mut full = Store { bytes: None, quiet: false };
    let mut quiet = Store { bytes: None, quiet: true };
    let mut now = 100_000_000u64;
    let mut out: Vec<Out> = vec![];
    for (i, op) in ops.iter().enumerate() {
        let said = match *op {
            Op::Advance(ms) => {
                now += ms;
                continue;
            }
            Op::StepBack(ms) => {
                now -= ms;
                continue;
            }
            Op::Admit { worker, unit } => {
                let p = &policies[worker];
                let a = full.admit(p, now, unit);
                let b = quiet.admit(p, now, unit);
                if let Decision::Admit { probe } = a.0 {
                    out.push(Out { worker, probe, start: now });
                }
                (format!("{a:?}"), format!("{b:?}"))
            }
            Op::Finish { which, .. } | Op::Timeout { which } | Op::Release { which } if !out.is_empty() => {
                let o = out.remove(which % out.len());
                let p = &policies[o.worker];
                match *op {
                    Op::Finish { failure, .. } => (
                        format!("{:?}", full.finish(p, o, now, failure)),
                        format!("{:?}", quiet.finish(p, o, now, failure)),
                    ),
                    Op::Timeout { .. } => {
                        (format!("{:?}", full.timeout(p, o, now)), format!("{:?}", quiet.timeout(p, o, now)))
                    }
                    _ => (format!("{:?}", full.release(p, o, now)), format!("{:?}", quiet.release(p, o, now))),
                }
            }
            _ => continue,
        };
        prop_assert_eq!(
            &said.0,
            &said.1,
            "op {} {:?} at {}; full {:?} quiet {:?}",
            i,
            op,
            now,
            full.bytes.as_ref().map(|b| b.len()),
            quiet.bytes.as_ref().map(|b| b.len())
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Clock steps back too, with no recovery ramp (a ramp and a step back diverge: see
    /// harness/tests/quiet_review.rs, a_clock_stepped_back_into_a_one_hour_ramp_that_had_just_ended_...).
    #[test]
    fn with_clock_steps_back(
        a in policy(), b in policy(), ops in prop::collection::vec(op(true), 1..200),
    ) {
        run([Policy { recovery_ramp_ms: 0, ..a }, Policy { recovery_ramp_ms: 0, ..b }], &ops)?;
    }

    /// Clock forward only.
    #[test]
    fn stored_quiet_decides_as_stored_in_full_with_two_policies(
        a in policy(), b in policy(), ops in prop::collection::vec(op(false), 1..200),
    ) {
        run([a, b], &ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 5000, ..ProptestConfig::default() })]

    /// Bytes close to an encoding (a state of one shape, a few bytes changed, cut or extended)
    /// through every function that reads a breaker state key, under a policy of another shape.
    #[test]
    fn near_encodings_never_panic_in_any_reader(
        writer in policy(), reader in policy(),
        phase in 0u8..3, slots in prop::collection::vec(prop_oneof![Just(0u64), 1u64..200_000_000], 0..4),
        times in (0u64..200_000_000, 0u64..200_000_000, 0u64..200_000_000),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in prop_oneof![Just(None), any::<prop::sample::Index>().prop_map(Some)],
        extra in prop::collection::vec(any::<u8>(), 0..3),
        now in 0u64..200_000_000, slot in 0u8..40, deadline in 0u64..200_000_000,
    ) {
        let mut s = BreakerState::new(&writer);
        s.phase = [floodgate_core::Phase::Closed, floodgate_core::Phase::HalfOpen, floodgate_core::Phase::Open][usize::from(phase)];
        s.probe_slots = slots;
        (s.since_ms, s.open_until_ms, s.closed_at_ms) = times;
        let mut bytes = s.encode();
        for (i, v) in edits { let i = i.index(bytes.len()); bytes[i] = v; }
        if let Some(c) = cut { bytes.truncate(c.index(bytes.len() + 1)); }
        bytes.extend(extra);
        let p = &reader;
        let t = ProbeTicket { slot, deadline_ms: deadline };
        if let Some(h) = Head::peek(&bytes) {
            let _ = admit_unchanged(&h, p, now, || 0.5);
            let _ = floodgate_core::breaker::refusal_after_delay(&h, p, now, || 0.5);
        }
        let _ = state::success_is_noop(&bytes, p.half_open_permits, 10);
        let _ = state::noop_is_quiet(&bytes, now);
        let _ = state::fits(&bytes, p);
        let _ = state::slot_deadlines(&bytes).count();
        let mut b = bytes.clone();
        let _ = admit_probe_in_place(&mut b, p, now, || 0.5);
        let mut b = bytes.clone();
        let _ = record_probe_success_in_place(&mut b, p, now, t);
        let mut st = BreakerState::decode_for(&bytes, p).unwrap_or_else(|| BreakerState::new(p));
        st.conform(p);
        let _ = admit(&mut st.clone(), p, now, 0.5);
        let _ = record(&mut st.clone(), p, now, Call { failure: true, slow: false }, Some(t), 0.5);
        let _ = timeout(&mut st.clone(), p, now, Some(t), 0.5);
        let _ = record_success_clocked(&mut st.clone(), p, now, Some(t), || (now, 0.5));
        let _ = floodgate_core::reset::close(&mut st.clone(), now);
        let w = st.encode_for(now);
        prop_assert!(BreakerState::decode_for(&w, p).is_some());
    }
}
