//! The breaker state machine: `admit` before a call, `record` after it. Pure: the caller passes
//! the time and a random value, and writes the state back when `changed` says so.

use super::policy::{Mode, Policy};
use super::state::{self, BreakerState, Head, Phase, Reason};

/// How long a half-open probe may hold its slot before the slot is reclaimed. A probe normally
/// frees it at its response or when its stream ends; this bounds the loss when neither happens
/// (a worker VM torn down mid-request).
pub const PROBE_LEASE_MS: u64 = 30_000;
/// What a client refused in half-open (all probe slots busy) or during the ramp is told to wait.
pub const SHORT_RETRY_MS: u64 = 1_000;

/// The longest `retry-after` told to a client.
pub const MAX_RETRY_MS: u64 = 365 * 86_400_000;

/// What a caller reports about a finished call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    pub failure: bool,
    pub slow: bool,
}

/// Proof that a call holds a half-open probe slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeTicket {
    pub slot: u8,
    pub deadline_ms: u64,
}

/// The state a refused client is told about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusedAs {
    Closed,
    HalfOpen,
    Open,
    ForcedOpen,
}

impl RefusedAs {
    pub fn name(self) -> &'static str {
        match self {
            RefusedAs::Closed => "closed",
            RefusedAs::HalfOpen => "half_open",
            RefusedAs::Open => "open",
            RefusedAs::ForcedOpen => "forced_open",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub state: RefusedAs,
    pub reason: Reason,
    pub retry_after_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Admit { probe: Option<ProbeTicket> },
    Refuse(Refusal),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: Phase,
    pub to: Phase,
    pub reason: Reason,
}

/// The effect of one step on the shared state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Effect {
    /// The state must be written back.
    pub changed: bool,
    pub transition: Option<Transition>,
}

/// Decides whether a new call may go through. `unit` is uniform in [0, 1).
pub fn admit(s: &mut BreakerState, p: &Policy, now_ms: u64, unit: f64) -> (Decision, Effect) {
    let mut effect = Effect::default();
    match p.mode {
        Mode::Disabled => return (Decision::Admit { probe: None }, effect),
        Mode::ForcedOpen => {
            let retry_after_ms = spread(p, p.open_base_ms, unit);
            let refusal = Refusal { state: RefusedAs::ForcedOpen, reason: Reason::Forced, retry_after_ms };
            return (Decision::Refuse(refusal), effect);
        }
        Mode::Enforce | Mode::DryRun => {}
    }
    effect.changed = normalize(s, p, now_ms);
    if s.phase == Phase::HalfOpen && p.answer_timeout_ms > 0 && s.probe_slots.iter().any(|&d| d != 0 && d <= now_ms) {
        // A probe held its slot past answer_timeout_ms without an answer: the probe failed,
        // whichever worker notices first (its own worker may be gone).
        s.reopens = s.reopens.saturating_add(1);
        effect.transition = Some(enter_open(s, p, now_ms, Reason::ProbeFailed, unit));
        effect.changed = true;
    }
    admit_normalized(s, p, now_ms, unit, effect)
}

/// What [`admit`] decides when it would not change the state and the head alone decides: a
/// closed breaker outside its recovery ramp admits, an open one before its time refuses. `None`
/// when the full state is needed (half-open, a ramp, an open time that ended, a clock stepped
/// back): the caller then runs [`admit`]. The same decision as `admit`, without decoding.
pub fn admit_unchanged(h: &Head, p: &Policy, now_ms: u64, unit: impl FnOnce() -> f64) -> Option<Decision> {
    if !matches!(p.mode, Mode::Enforce | Mode::DryRun) {
        return None;
    }
    // What `normalize` would change.
    let clamped = h.phase == Phase::Open && h.open_until_ms > now_ms.saturating_add(p.longest_open_ms());
    if clamped || h.closed_at_ms > now_ms || h.since_ms > now_ms {
        return None;
    }
    match h.phase {
        Phase::Closed => {
            let ramping = p.recovery_ramp_ms > 0 && h.closed_at_ms != 0 && now_ms < h.closed_at_ms + p.recovery_ramp_ms;
            (!ramping).then_some(Decision::Admit { probe: None })
        }
        Phase::Open if now_ms < h.open_until_ms => {
            let retry_after_ms = spread(p, h.open_until_ms - now_ms, unit());
            Some(Decision::Refuse(Refusal { state: RefusedAs::Open, reason: h.reason, retry_after_ms }))
        }
        _ => None,
    }
}

/// Whether a call admitted while the breaker was closed may still start at `now_ms`, after it
/// waited for the admission budget (a delayed upgrade): `None` while the breaker is closed (a
/// ramp does not matter: the call was admitted); the refusal a new call would get once it has
/// opened or gone half-open since (half-open admits only probes, and a delayed call is none).
/// Read from the head alone: nothing changes.
pub fn refusal_after_delay(h: &Head, p: &Policy, now_ms: u64, unit: impl FnOnce() -> f64) -> Option<Refusal> {
    if p.mode != Mode::Enforce {
        return None;
    }
    match h.phase {
        Phase::Closed => None,
        Phase::Open => {
            let retry_after_ms = spread(p, h.open_until_ms.saturating_sub(now_ms), unit());
            Some(Refusal { state: RefusedAs::Open, reason: h.reason, retry_after_ms })
        }
        Phase::HalfOpen => {
            let retry_after_ms = spread(p, SHORT_RETRY_MS, unit());
            Some(Refusal { state: RefusedAs::HalfOpen, reason: h.reason, retry_after_ms })
        }
    }
}

/// [`admit`] on a half-open breaker, stepped on its encoded bytes in place (no decoding, no
/// re-encoding): takes a free probe slot (writing its deadline into `bytes`) or refuses. `None`
/// when the full step is needed (not half-open, a probe past its answer deadline to re-open
/// for, a clock stepped back, a state of another shape). `Some((decision, changed))` otherwise:
/// the same decision and bytes as `admit` then `encode`.
pub fn admit_probe_in_place(
    bytes: &mut [u8],
    p: &Policy,
    now_ms: u64,
    unit: impl FnOnce() -> f64,
) -> Option<(Decision, bool)> {
    let h = Head::peek(bytes)?;
    let steady = h.phase == Phase::HalfOpen && h.closed_at_ms <= now_ms && h.since_ms <= now_ms;
    if !matches!(p.mode, Mode::Enforce | Mode::DryRun) || !steady || !state::fits(bytes, p) {
        return None;
    }
    // One pass: a probe past its answer deadline re-opens (the full step), else the first free slot.
    let mut free = None;
    for (i, d) in state::slot_deadlines(bytes).enumerate() {
        if p.answer_timeout_ms > 0 && d != 0 && d <= now_ms {
            return None;
        }
        if free.is_none() && (d == 0 || d <= now_ms) {
            free = Some(i);
        }
    }
    match free {
        Some(i) => {
            let deadline_ms = now_ms.saturating_add(p.probe_lease_ms()).max(1);
            state::set_slot(bytes, i, deadline_ms);
            Some((Decision::Admit { probe: Some(ProbeTicket { slot: i as u8, deadline_ms }) }, true))
        }
        None => {
            let retry_after_ms = spread(p, SHORT_RETRY_MS, unit());
            Some((Decision::Refuse(Refusal { state: RefusedAs::HalfOpen, reason: h.reason, retry_after_ms }), false))
        }
    }
}

/// [`record_success`] of a probe, stepped on the encoded bytes in place: frees its slot and
/// counts the success. `None` when the full step is needed (a success that closes the breaker,
/// a closed breaker, a state of another shape); `Some(changed)` otherwise, with the same bytes
/// as `record_success` then `encode`.
pub fn record_probe_success_in_place(bytes: &mut [u8], p: &Policy, start_ms: u64, t: ProbeTicket) -> Option<bool> {
    let h = Head::peek(bytes)?;
    // The phase first: a closed breaker's bytes may be the quiet state's empty encoding.
    if h.phase == Phase::Closed || !matches!(p.mode, Mode::Enforce | Mode::DryRun) || !state::fits(bytes, p) {
        return None;
    }
    if h.phase == Phase::Open {
        return Some(false);
    }
    let i = usize::from(t.slot);
    if i >= state::slots(bytes) || state::slot(bytes, i) != t.deadline_ms || t.deadline_ms <= start_ms {
        return Some(false);
    }
    let successes = state::probe_successes(bytes).saturating_add(1);
    if successes >= p.half_open_successes {
        return None;
    }
    state::set_slot(bytes, i, 0);
    state::set_probe_successes(bytes, successes);
    Some(true)
}

fn admit_normalized(
    s: &mut BreakerState,
    p: &Policy,
    now_ms: u64,
    unit: f64,
    mut effect: Effect,
) -> (Decision, Effect) {
    if s.phase == Phase::Open {
        if now_ms < s.open_until_ms {
            let retry_after_ms = spread(p, s.open_until_ms - now_ms, unit);
            let refusal = Refusal { state: RefusedAs::Open, reason: s.reason, retry_after_ms };
            return (Decision::Refuse(refusal), effect);
        }
        effect.transition = Some(enter_half_open(s, now_ms));
        effect.changed = true;
    }
    match s.phase {
        Phase::HalfOpen => {
            let free = s.probe_slots.iter().position(|&deadline| deadline == 0 || deadline <= now_ms);
            match free {
                Some(i) => {
                    let deadline_ms = now_ms.saturating_add(p.probe_lease_ms()).max(1);
                    s.probe_slots[i] = deadline_ms;
                    effect.changed = true;
                    (Decision::Admit { probe: Some(ProbeTicket { slot: i as u8, deadline_ms }) }, effect)
                }
                None => {
                    let retry_after_ms = spread(p, SHORT_RETRY_MS, unit);
                    let refusal = Refusal { state: RefusedAs::HalfOpen, reason: s.reason, retry_after_ms };
                    (Decision::Refuse(refusal), effect)
                }
            }
        }
        _ => {
            if ramp_refuses(s, p, now_ms, unit) {
                // The ramp refuses only the draws above its share: spread with other bits.
                let retry_after_ms = spread(p, SHORT_RETRY_MS, rebits(unit));
                let refusal = Refusal { state: RefusedAs::Closed, reason: Reason::RecoveryRamp, retry_after_ms };
                return (Decision::Refuse(refusal), effect);
            }
            (Decision::Admit { probe: None }, effect)
        }
    }
}

/// Records the outcome of an admitted call. `unit` jitters a new open time.
pub fn record(
    s: &mut BreakerState,
    p: &Policy,
    now_ms: u64,
    call: Call,
    probe: Option<ProbeTicket>,
    unit: f64,
) -> Effect {
    if p.mode == Mode::Disabled {
        return Effect::default();
    }
    let changed = normalize(s, p, now_ms);
    record_normalized(s, p, now_ms, call, probe, unit, Effect { changed, transition: None })
}

/// Records a success without a clock reading (the request path reads the clock once, at
/// admission): as of the call's start, and without [`normalize`], whose clamps need the
/// current time (the next admission applies them). Nothing a success records depends on the
/// time but the probe lease, which the caller's answer deadline enforces, and when a transition
/// happens: [`record_success_clocked`] reads the clock for that.
pub fn record_success(s: &mut BreakerState, p: &Policy, start_ms: u64, probe: Option<ProbeTicket>) -> Effect {
    if p.mode == Mode::Disabled {
        return Effect::default();
    }
    let call = Call { failure: false, slow: false };
    record_normalized(s, p, start_ms, call, probe, 0.0, Effect::default())
}

/// [`record_success`] (as of the call's start, no clock), except that a transition it makes
/// happens when the success is recorded: `clock` (read only then) gives the time and a random
/// value, so an open time starts at this answer and is spread by the jitter, and a recovery
/// ramp starts when the breaker closes (DESIGN), not when the call was admitted.
pub fn record_success_clocked(
    s: &mut BreakerState,
    p: &Policy,
    start_ms: u64,
    probe: Option<ProbeTicket>,
    clock: impl FnOnce() -> (u64, f64),
) -> Effect {
    let effect = record_success(s, p, start_ms, probe);
    let Some(t) = effect.transition else { return effect };
    let (now_ms, unit) = clock();
    match t.to {
        Phase::Open => {
            s.since_ms = now_ms;
            s.open_until_ms = now_ms.saturating_add(p.jittered(p.open_duration_ms(s.reopens), unit));
        }
        Phase::Closed => {
            s.since_ms = now_ms;
            s.closed_at_ms = now_ms.max(1);
        }
        Phase::HalfOpen => {}
    }
    effect
}

fn record_normalized(
    s: &mut BreakerState,
    p: &Policy,
    now_ms: u64,
    call: Call,
    probe: Option<ProbeTicket>,
    unit: f64,
    mut effect: Effect,
) -> Effect {
    match s.phase {
        Phase::Closed => {
            s.window.record(now_ms, call.failure, call.slow);
            s.consecutive_failures = if call.failure { s.consecutive_failures.saturating_add(1) } else { 0 };
            effect.changed = true;
            if let Some(reason) = trip_reason(s, p, now_ms) {
                effect.transition = Some(enter_open(s, p, now_ms, reason, unit));
            }
        }
        Phase::HalfOpen => {
            // Only probes decide a half-open breaker; calls admitted before the trip do not.
            if !take_slot(s, probe, now_ms) {
                return effect;
            }
            effect.changed = true;
            if call.failure {
                s.reopens = s.reopens.saturating_add(1);
                effect.transition = Some(enter_open(s, p, now_ms, Reason::ProbeFailed, unit));
            } else {
                s.probe_successes = s.probe_successes.saturating_add(1);
                if s.probe_successes >= p.half_open_successes {
                    effect.transition = Some(enter_closed(s, now_ms));
                }
            }
        }
        Phase::Open => {}
    }
    effect
}

/// Records a call that got no upstream answer within `answer_timeout_ms`, at that moment: a
/// failure while closed; a probe that still holds its slot re-opens the breaker (`probe_failed`).
pub fn timeout(s: &mut BreakerState, p: &Policy, now_ms: u64, probe: Option<ProbeTicket>, unit: f64) -> Effect {
    if p.mode == Mode::Disabled {
        return Effect::default();
    }
    if s.phase != Phase::HalfOpen {
        return record(s, p, now_ms, Call { failure: true, slow: false }, None, unit);
    }
    let mut effect = Effect { changed: normalize(s, p, now_ms), transition: None };
    let Some(t) = probe else { return effect };
    // The slot's deadline may have passed: a timed-out probe still decides.
    if s.probe_slots.get(usize::from(t.slot)).is_some_and(|&d| d != 0 && d == t.deadline_ms) {
        s.reopens = s.reopens.saturating_add(1);
        effect.transition = Some(enter_open(s, p, now_ms, Reason::ProbeFailed, unit));
        effect.changed = true;
    }
    effect
}

/// Brings a state written under another clock back to `now_ms` (a wall clock stepped
/// backwards): an open time never lasts longer than `open.max_ms` spread by the jitter, a ramp
/// that would start in the future has ended, a phase cannot begin in the future. A step
/// forwards needs nothing: open times pass, windows age, probe slots expire.
pub fn normalize(s: &mut BreakerState, p: &Policy, now_ms: u64) -> bool {
    let mut changed = false;
    let longest = now_ms.saturating_add(p.longest_open_ms());
    if s.phase == Phase::Open && s.open_until_ms > longest {
        s.open_until_ms = longest;
        changed = true;
    }
    if s.closed_at_ms > now_ms {
        s.closed_at_ms = 0;
        changed = true;
    }
    if s.since_ms > now_ms {
        s.since_ms = now_ms;
        changed = true;
    }
    changed
}

/// Frees a probe slot whose call ended without an outcome (refused downstream, cancelled).
pub fn release(s: &mut BreakerState, probe: Option<ProbeTicket>, now_ms: u64) -> Effect {
    Effect { changed: take_slot(s, probe, now_ms), transition: None }
}

/// Probe slots currently held (not free, not expired).
pub fn probes_in_flight(s: &BreakerState, now_ms: u64) -> usize {
    s.probe_slots.iter().filter(|&&d| d != 0 && d > now_ms).count()
}

/// Frees the ticket's slot if it still holds it: a probe whose lease ran out lost its slot and
/// its outcome no longer decides anything.
fn take_slot(s: &mut BreakerState, probe: Option<ProbeTicket>, now_ms: u64) -> bool {
    let Some(t) = probe else { return false };
    match s.probe_slots.get_mut(usize::from(t.slot)) {
        Some(slot) if s.phase == Phase::HalfOpen && *slot == t.deadline_ms && t.deadline_ms > now_ms => {
            *slot = 0;
            true
        }
        _ => false,
    }
}

fn trip_reason(s: &BreakerState, p: &Policy, now_ms: u64) -> Option<Reason> {
    if p.consecutive_failures > 0 && u32::from(s.consecutive_failures) >= p.consecutive_failures {
        return Some(Reason::ConsecutiveFailures);
    }
    let c = s.window.counts(now_ms);
    if c.calls == 0 || c.calls < p.minimum_calls {
        return None;
    }
    let calls = f64::from(c.calls);
    if f64::from(c.failures) / calls >= p.failure_rate {
        return Some(Reason::FailureRate);
    }
    if p.slow_call_ms > 0 && f64::from(c.slow) / calls >= p.slow_call_rate {
        return Some(Reason::SlowCallRate);
    }
    None
}

fn ramp_refuses(s: &BreakerState, p: &Policy, now_ms: u64, unit: f64) -> bool {
    if p.recovery_ramp_ms == 0 || s.closed_at_ms == 0 || now_ms >= s.closed_at_ms + p.recovery_ramp_ms {
        return false;
    }
    let share = now_ms.saturating_sub(s.closed_at_ms) as f64 / p.recovery_ramp_ms as f64;
    unit >= share
}

fn spread(p: &Policy, ms: u64, unit: f64) -> u64 {
    whole_seconds(ms, p.open_jitter, unit)
}

/// Another uniform value in [0, 1) from the low bits of `unit`, where `unit` itself is biased
/// by a decision it already made (a ramp refuses only draws above its share).
pub fn rebits(unit: f64) -> f64 {
    (unit * 4096.0).fract()
}

/// A `retry-after` in whole seconds (returned in ms), spread over the whole seconds between `ms`
/// and `ms * (1 + jitter)`, rounded up, at least one second, so that clients refused together
/// still return spread out after `retry-after` is rounded: with any jitter, at least two
/// different seconds are drawn from (1 or 2 s for a 1 s retry). `unit` is uniform in [0, 1).
pub fn whole_seconds(ms: u64, jitter: f64, unit: f64) -> u64 {
    // No retry-after is longer than a year (an absurd `until` from the control plane).
    let ms = ms.min(MAX_RETRY_MS);
    let lo = ms.div_ceil(1000).max(1);
    let top = ms as f64 * (1.0 + jitter.max(0.0)) / 1000.0;
    let mut hi = if top.is_finite() && top < (u64::MAX / 1000) as f64 { (top.ceil() as u64).max(lo) } else { lo };
    if jitter > 0.0 && hi == lo {
        hi = lo.saturating_add(1);
    }
    let n = hi - lo;
    let pick = ((unit.clamp(0.0, 1.0) * (n as f64 + 1.0)) as u64).min(n);
    lo.saturating_add(pick).saturating_mul(1000)
}

fn enter_open(s: &mut BreakerState, p: &Policy, now_ms: u64, reason: Reason, unit: f64) -> Transition {
    let from = s.phase;
    s.phase = Phase::Open;
    s.reason = reason;
    s.since_ms = now_ms;
    s.open_until_ms = now_ms.saturating_add(p.jittered(p.open_duration_ms(s.reopens), unit));
    s.probe_slots.iter_mut().for_each(|d| *d = 0);
    s.probe_successes = 0;
    Transition { from, to: Phase::Open, reason }
}

fn enter_half_open(s: &mut BreakerState, now_ms: u64) -> Transition {
    s.phase = Phase::HalfOpen;
    s.since_ms = now_ms;
    s.probe_successes = 0;
    s.probe_slots.iter_mut().for_each(|d| *d = 0);
    Transition { from: Phase::Open, to: Phase::HalfOpen, reason: s.reason }
}

/// Closes the breaker as its probes' successes do: the recovery ramp starts, the open-time
/// backoff starts over, the window is cleared. Also what a fleet-wide reset does.
pub(crate) fn enter_closed(s: &mut BreakerState, now_ms: u64) -> Transition {
    let from = s.phase;
    let reason = s.reason;
    s.phase = Phase::Closed;
    s.reason = Reason::None;
    s.since_ms = now_ms;
    s.closed_at_ms = now_ms.max(1);
    s.reopens = 0;
    s.consecutive_failures = 0;
    s.probe_successes = 0;
    s.probe_slots.iter_mut().for_each(|d| *d = 0);
    s.window.clear();
    Transition { from, to: Phase::Closed, reason }
}
