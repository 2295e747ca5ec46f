//! The decision both filters share: ask a breaker before a new call, tell it the outcome after.
//! Host errors fail open: a broken shared-data call admits and is counted, it never refuses.

use std::borrow::Cow;
use std::num::NonZeroU64;
use std::rc::Rc;

use crate::config::{Config, ControlConfig};
use crate::host;
use crate::keys::Key;
use crate::metrics::{Outcome, RejectKind};
use crate::store::{self, StoreError};
use crate::vm::{self, Pending, Vm};
use floodgate_core::breaker::{
    admit_probe_in_place, admit_unchanged, record_probe_success_in_place, record_success_clocked, whole_seconds,
    SHORT_RETRY_MS,
};
use floodgate_core::remote::{self, DecideParams, RemoteDecision};
use floodgate_core::state::{self, Head};
use floodgate_core::{
    admit, BreakerState, Call, Decision, Effect, Mode, Phase, Policy, ProbeTicket, Reason, Refusal, RefusedAs,
};

/// A call the breaker admitted; hand it back with [`finish`] or [`abandon`].
pub struct Admitted {
    pub key: Rc<Key>,
    pub probe: Option<ProbeTicket>,
    pub start_ms: u64,
    /// Its entry in this worker's calls in flight (with an answer deadline).
    pub pending: Option<NonZeroU64>,
}

/// Why a call is refused, as the client is told: a local breaker's reason, or the control
/// plane's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub state: RefusedAs,
    pub reason: Cow<'static, str>,
    pub retry_after_ms: u64,
}

impl From<Refusal> for Refused {
    fn from(r: Refusal) -> Self {
        Refused { state: r.state, reason: Cow::Borrowed(r.reason.name()), retry_after_ms: r.retry_after_ms }
    }
}

impl Refused {
    /// Whole seconds for `retry-after`: rounded up, at least 1.
    pub fn retry_after_s(&self) -> u64 {
        self.retry_after_ms.div_ceil(1000).max(1)
    }
}

pub enum Verdict {
    /// Not guarded (disabled, untracked, forced closed, or the host failed): let it through,
    /// record nothing.
    Pass,
    Admit(Admitted),
    /// Admitted by the admission budget to start `wait_ms` from now (`admitted.start_ms` is
    /// that start): the stream waits paused until then (`crate::delay`).
    Delay {
        admitted: Admitted,
        wait_ms: u64,
    },
    Refuse(Refused),
}

/// What a refusal is counted as, asked only when a call is refused (an HTTP filter reads the
/// `upgrade` header for it only then).
pub type Kind<'a> = &'a dyn Fn() -> RejectKind;

/// The breaker's decision for key `name` (as the host gave it), then the admission budget's
/// (DESIGN, `admission`). `http`: an HTTP request, whose call has an answer deadline and which
/// the budget may delay; else a TCP connection (its answer is the upstream connection, bounded by
/// the cluster's connect_timeout, and it is never delayed).
#[inline(always)]
pub fn check(config: &Config, name: &[u8], http: bool, kind: Kind) -> Verdict {
    let key = match config.keys.get(name) {
        Some(key) => key,
        None => match first_use(config, name, kind) {
            Ok(key) => key,
            Err(verdict) => return verdict,
        },
    };
    if key.policy.admission.is_off() {
        // The key moves into the call admitted: no second reference to count and drop.
        return check_key(config, key, http, kind);
    }
    let verdict = check_key(config, key.clone(), http, kind);
    crate::admission::gate(&key, kind, verdict, http)
}

/// A key not cached yet: tracked ones are cached for every later request; the others get the
/// verdict of an untracked key (the control plane's or a forced-open's, else pass).
#[cold]
#[inline(never)]
fn first_use(config: &Config, name: &[u8], kind: Kind) -> Result<Rc<Key>, Verdict> {
    let Ok(breaker) = std::str::from_utf8(name) else { return Err(Verdict::Pass) };
    let policy = config.policy_for(breaker);
    if policy.policy.mode == Mode::Disabled {
        return Err(Verdict::Pass);
    }
    let reserved = config.overrides.contains_key(breaker);
    match vm::with(|vm| vm.registry.tracked(breaker, config.max_breakers, reserved)) {
        Ok(true) => Ok(config.keys.insert(breaker, policy.clone())),
        Ok(false) => Err(untracked(config, breaker, &policy.policy, kind)),
        Err(e) => {
            // No per-key stats for a key that may be untracked: the global counters only.
            log::warn!("breaker registry not read: {e:?}");
            vm::with(|vm| vm.metrics.untracked());
            Err(Verdict::Pass)
        }
    }
}

/// An untracked key: the control plane's verdict, else a configured forced-open still refuses
/// keys past max_breakers; everything else passes.
fn untracked(config: &Config, breaker: &str, p: &Policy, kind: Kind) -> Verdict {
    let Ok(now) = host::now_ms() else {
        return Verdict::Pass;
    };
    vm::with(|vm| {
        if let Some(control) = &config.control {
            if let Some(verdict) = remote_verdict(vm, control, p, breaker, kind, now, false) {
                return verdict;
            }
        }
        vm.metrics.untracked();
        match p.mode {
            Mode::ForcedOpen => {
                let unit = vm.unit(now);
                let retry_after_ms = whole_seconds(p.open_base_ms, p.open_jitter, unit);
                Verdict::Refuse(Refused {
                    state: RefusedAs::ForcedOpen,
                    reason: Cow::Borrowed(Reason::Forced.name()),
                    retry_after_ms,
                })
            }
            _ => Verdict::Pass,
        }
    })
}

fn check_key(config: &Config, key: Rc<Key>, timed: bool, kind: Kind) -> Verdict {
    let Ok(now) = host::now_ms() else {
        return Verdict::Pass;
    };
    vm::with(|vm| {
        let p = &key.policy.policy;
        if let Some(control) = &config.control {
            if let Some(verdict) = remote_verdict(vm, control, p, &key.name, kind, now, true) {
                return verdict;
            }
        }
        let (decision, effect, phase) = match decide(vm, &key, now) {
            Ok(r) => r,
            Err(e) => return lost(vm, &key.name, e),
        };
        if !key.touched.replace(true) {
            vm.metrics.touch(&key.name, phase);
        }
        if effect.transition.is_some() {
            report(vm, &key.name, effect);
        }
        let probe = match decision {
            Decision::Admit { probe } => probe,
            Decision::Refuse(refusal) if p.mode == Mode::DryRun => {
                vm.metrics.would_reject(&key.name, kind());
                log::debug!("dry_run would refuse {}: {:?}", key.name, refusal.reason);
                None
            }
            Decision::Refuse(refusal) => {
                vm.metrics.rejected(&key.name, kind());
                return Verdict::Refuse(refusal.into());
            }
        };
        let pending = if timed { track(vm, &key, probe, now) } else { None };
        Verdict::Admit(Admitted { key, probe, start_ms: now, pending })
    })
}

/// The breaker's decision at `now`: from the state's head alone when that decides without a
/// change (closed, or open before its time: no decoding, no write), else the full step.
fn decide(vm: &mut Vm, key: &Key, now: u64) -> Result<(Decision, Effect, Phase), StoreError> {
    let p = &key.policy.policy;
    let mut read = host::shared_get(&key.state_key)?;
    if let Some(head) = read.0.as_deref().and_then(Head::peek) {
        if let Some(decision) = admit_unchanged(&head, p, now, || vm.unit(now)) {
            return Ok((decision, Effect::default(), head.phase));
        }
    }
    // Half-open: the probe slot is taken on the bytes as read, no decoding.
    let cas = read.1;
    if let Some(bytes) = read.0.as_mut() {
        if let Some((decision, changed)) = admit_probe_in_place(bytes, p, now, || vm.unit(now)) {
            if !changed || store::write_patched(&key.state_key, bytes, cas)? {
                return Ok((decision, Effect { changed, transition: None }, Phase::HalfOpen));
            }
            read = (None, 0);
        }
    }
    let first = read.0.is_some().then_some(read);
    let unit = vm.unit(now);
    let (decision, effect, state) = store::update(&key.state_key, p, now, first, |s| admit(s, p, now, unit))?;
    Ok((decision, effect, state.phase))
}

/// Tracks an admitted call for its answer deadline.
fn track(vm: &mut Vm, key: &Rc<Key>, probe: Option<ProbeTicket>, now: u64) -> Option<NonZeroU64> {
    let timeout_ms = key.policy.policy.answer_timeout_ms;
    if timeout_ms == 0 {
        return None;
    }
    let deadline_ms = now.saturating_add(timeout_ms);
    vm.calls.track(Pending { key: key.clone(), probe, start_ms: now, deadline_ms })
}

/// Applies the control plane's view (refreshed into the VM on every tick: no host call here).
/// `None` leaves the decision to the local breaker. An untracked key is refused by a
/// forced-open like any other, but counted only in `floodgate_untracked_total`.
fn remote_verdict(
    vm: &mut Vm,
    control: &ControlConfig,
    p: &Policy,
    breaker: &str,
    kind: Kind,
    now: u64,
    tracked: bool,
) -> Option<Verdict> {
    let view = vm.remote.view.clone();
    let unit = vm.unit(now);
    let refused = match remote::decide(&view, breaker, now, &remote_params(control, p), unit) {
        RemoteDecision::Local => return None,
        RemoteDecision::Admit => {
            if !tracked {
                vm.metrics.untracked();
            }
            return Some(Verdict::Pass);
        }
        RemoteDecision::Refuse { reason, retry_after_ms } => {
            Refused { state: RefusedAs::ForcedOpen, reason: Cow::Owned(reason.to_string()), retry_after_ms }
        }
        RemoteDecision::Ramp { retry_after_ms } => {
            Refused { state: RefusedAs::Closed, reason: Cow::Borrowed(Reason::RecoveryRamp.name()), retry_after_ms }
        }
    };
    if !tracked {
        vm.metrics.untracked();
        return Some(if p.mode == Mode::DryRun { Verdict::Pass } else { Verdict::Refuse(refused) });
    }
    if p.mode == Mode::DryRun {
        vm.metrics.would_reject(breaker, kind());
        return Some(Verdict::Pass);
    }
    vm.metrics.rejected(breaker, kind());
    Some(Verdict::Refuse(refused))
}

/// How the control plane's view is read for a breaker of policy `p`.
fn remote_params(control: &ControlConfig, p: &Policy) -> DecideParams {
    DecideParams {
        stale_after_ms: control.stale_after_s.saturating_mul(1000),
        ramp_ms: p.recovery_ramp_ms,
        open_retry_ms: p.open_base_ms,
        jitter: p.open_jitter,
        short_retry_ms: SHORT_RETRY_MS,
    }
}

/// What a delayed call's breaker says when its wait ends (`crate::delay`): `None` to start it,
/// else the refusal a new call would get now, because the control plane forced the key open or
/// the breaker opened or went half-open meanwhile (the caller counts it in
/// `floodgate_rejected_total` once the refusal is sent). A host error starts it (fail open); a
/// forced close starts it whatever the local breaker says.
pub fn refusal_after_delay(config: &Config, key: &Key, now: u64) -> Option<Refused> {
    let p = &key.policy.policy;
    let remote = vm::with(|vm| {
        let control = config.control.as_ref()?;
        let view = vm.remote.view.clone();
        let unit = vm.unit(now);
        Some(match remote::decide(&view, &key.name, now, &remote_params(control, p), unit) {
            RemoteDecision::Refuse { reason, retry_after_ms } => {
                Some(Refused { state: RefusedAs::ForcedOpen, reason: Cow::Owned(reason.to_string()), retry_after_ms })
            }
            RemoteDecision::Admit => None,
            RemoteDecision::Local | RemoteDecision::Ramp { .. } => return None,
        })
    });
    if let Some(decided) = remote {
        return decided;
    }
    // The local breaker's state: read only when the control plane leaves the call to it.
    let bytes = host::shared_get(&key.state_key).ok()?.0;
    let head = bytes.as_deref().and_then(Head::peek)?;
    vm::with(|vm| floodgate_core::breaker::refusal_after_delay(&head, p, now, || vm.unit(now))).map(Into::into)
}

/// What ending a tracked call means: `Some(true)` when its answer deadline passed before this
/// end (no answer by then: a failure, as the tick would have counted it), `None` when the tick
/// already counted it. Without a clock reading (`now` = `None`), only the tick decides.
fn settle(vm: &mut Vm, a: &Admitted, now: Option<u64>) -> Option<bool> {
    match a.pending {
        None => Some(false),
        Some(id) => vm.calls.settle(id).map(|deadline| now.is_some_and(|now| now >= deadline)),
    }
}

/// The outcome of an answer whose status is not a failure: [`Success::Counted`] when it changed
/// nothing shared, else the state as read, for the call to be decided (the call stays with
/// the caller: it is not moved through this check and back).
pub enum Success {
    Counted,
    Decide(Option<store::Read>),
}

/// Counts a success with no clock reading and no write when it changes nothing shared: a
/// lean breaker (count window, no slow calls) that is closed with no streak and a full window
/// of successes. The state is read now, not taken from admission, so a streak another worker
/// started meanwhile is still ended by this success, exactly as writing every success would.
/// The answer deadline is the tick's to enforce: a success it has not timed out counts.
pub fn success_if_noop(a: &Admitted) -> Success {
    let Some(size) = a.key.lean.filter(|_| a.probe.is_none()) else {
        return Success::Decide(None);
    };
    let read = match host::shared_get(&a.key.state_key) {
        Ok(read) => read,
        Err(_) => return Success::Decide(None),
    };
    let p = &a.key.policy.policy;
    let Some(bytes) = read.0.as_deref().filter(|b| state::success_is_noop(b, p.half_open_permits, size)) else {
        return Success::Decide(Some(read));
    };
    if !bytes.is_empty() && state::noop_is_quiet(bytes, a.start_ms) {
        quieten(&a.key.state_key, read.1);
    }
    vm::with(|vm| {
        if settle(vm, a, None).is_some() {
            count_success(vm, &a.key);
        }
    });
    Success::Counted
}

/// Writes a quiet breaker's state as no bytes, if nobody wrote since it was read at `cas`: once
/// per quiet spell, so that its later reads copy nothing. A failure to write changes no decision
/// (the bytes stand for the same state), so it is only logged.
#[cold]
#[inline(never)]
fn quieten(state_key: &str, cas: u32) {
    if let Err(e) = store::write_patched(state_key, &[], cas) {
        log::debug!("{state_key} not written as quiet: {e:?}");
    }
}

/// Records the outcome of an admitted call (nothing if its answer deadline already decided it).
pub fn finish(a: Admitted, failure: bool) {
    if failure {
        return record_outcome(a, true, None);
    }
    if let Success::Decide(read) = success_if_noop(&a) {
        record_outcome(a, false, read);
    }
}

/// Writes an outcome. A success of a lean breaker is recorded as of its call's start (no clock
/// reading: nothing it records depends on the time); anything else reads the clock.
pub fn record_outcome(a: Admitted, failure: bool, read: Option<store::Read>) {
    let p = &a.key.policy.policy;
    let clock = (failure || a.key.lean.is_none()).then(|| host::now_ms().unwrap_or(a.start_ms));
    let now = clock.unwrap_or(a.start_ms);
    let slow = p.slow_call_ms > 0 && now.saturating_sub(a.start_ms) >= p.slow_call_ms;
    vm::with(|vm| {
        match settle(vm, &a, clock) {
            None => return,
            Some(true) => return timed_out(vm, &a.key, a.probe, now),
            Some(false) => {}
        }
        if failure {
            vm.metrics.call(&a.key.name, Outcome::Failure);
        } else if slow {
            vm.metrics.call(&a.key.name, Outcome::Slow);
        } else {
            count_success(vm, &a.key);
        }
        let read = match (clock, a.probe) {
            (None, Some(t)) => match probe_success_in_place(&a.key, a.start_ms, t, read) {
                Ok(None) => return,
                Ok(Some(read)) => read,
                Err(e) => {
                    lost(vm, &a.key.name, e);
                    return;
                }
            },
            _ => read,
        };
        let unit = vm.unit(now);
        let call = Call { failure, slow };
        // A success recorded without the clock reads it only if it trips or closes the
        // breaker: the transition happens at this answer, with its own jitter.
        let answered_at = || (host::now_ms().unwrap_or(a.start_ms), unit);
        let step = |s: &mut BreakerState| match clock {
            Some(now) => ((), floodgate_core::record(s, p, now, call, a.probe, unit)),
            None => ((), record_success_clocked(s, p, a.start_ms, a.probe, answered_at)),
        };
        match store::update(&a.key.state_key, p, now, read, step) {
            Ok((_, effect, _)) => report(vm, &a.key.name, effect),
            Err(e) => {
                lost(vm, &a.key.name, e);
            }
        }
    })
}

/// A probe's success (not its breaker's last one), stepped on the state's bytes in place:
/// `Ok(None)` when done, else what to hand to the full step (the bytes as read, or nothing
/// when another worker wrote in between).
fn probe_success_in_place(
    key: &Key,
    start_ms: u64,
    t: ProbeTicket,
    read: Option<store::Read>,
) -> Result<Option<Option<store::Read>>, StoreError> {
    let (mut bytes, cas) = match read {
        Some(read) => read,
        None => host::shared_get(&key.state_key)?,
    };
    let Some(b) = bytes.as_mut() else { return Ok(Some(None)) };
    match record_probe_success_in_place(b, &key.policy.policy, start_ms, t) {
        Some(false) => Ok(None),
        Some(true) if store::write_patched(&key.state_key, b, cas)? => Ok(None),
        Some(true) => Ok(Some(None)),
        None => Ok(Some(Some((bytes, cas)))),
    }
}

/// Counts a success on this worker; [`flush_successes`] adds them to Envoy's stats on the tick.
fn count_success(vm: &mut Vm, key: &Rc<Key>) {
    let n = key.successes.get();
    if n == 0 {
        vm.successes.push(key.clone());
    }
    key.successes.set(n.saturating_add(1));
}

/// Adds the successes counted since the last tick to `floodgate_calls_total` (called on every
/// tick): each key is listed at most once, and the list is emptied.
pub fn flush_successes() {
    vm::with(|vm| {
        for key in std::mem::take(&mut vm.successes) {
            let n = key.successes.replace(0);
            vm.metrics.calls(&key.name, Outcome::Success, i64::from(n));
        }
    })
}

/// Ends a call that decides nothing (the client left, another filter answered): its probe slot,
/// if any, is given back. Past its answer deadline, it had no answer in time: a failure.
pub fn abandon(a: Admitted) {
    if a.pending.is_none() && a.probe.is_none() {
        return;
    }
    let p = &a.key.policy.policy;
    let now = host::now_ms().unwrap_or(a.start_ms);
    vm::with(|vm| match settle(vm, &a, Some(now)) {
        Some(true) => timed_out(vm, &a.key, a.probe, now),
        Some(false) if a.probe.is_some() => {
            let step = |s: &mut BreakerState| ((), floodgate_core::release(s, a.probe, now));
            if let Err(e) = store::update(&a.key.state_key, p, now, None, step) {
                lost(vm, &a.key.name, e);
            }
        }
        _ => {}
    })
}

/// Takes back a call refused in the instant the breaker admitted it (the admission budget had
/// no token): untracked, its probe slot, if any, given back as of its admission. No clock read:
/// its answer deadline cannot have passed.
pub fn withdraw(a: Admitted) {
    if a.pending.is_none() && a.probe.is_none() {
        return;
    }
    let p = &a.key.policy.policy;
    vm::with(|vm| {
        let tracked = settle(vm, &a, None);
        if a.probe.is_some() && tracked.is_some() {
            let step = |s: &mut BreakerState| ((), floodgate_core::release(s, a.probe, a.start_ms));
            if let Err(e) = store::update(&a.key.state_key, p, a.start_ms, None, step) {
                lost(vm, &a.key.name, e);
            }
        }
    })
}

/// A call with no upstream answer within `answer_timeout_ms`: a failure now; a probe re-opens.
fn timed_out(vm: &mut Vm, key: &Key, probe: Option<ProbeTicket>, now: u64) {
    let (breaker, p) = (&key.name, &key.policy.policy);
    vm.metrics.call(breaker, Outcome::Failure);
    let unit = vm.unit(now);
    log::info!("breaker {breaker}: no upstream answer within {} ms, counted as a failure", p.answer_timeout_ms);
    let step = |s: &mut BreakerState| ((), floodgate_core::timeout(s, p, now, probe, unit));
    match store::update(&key.state_key, p, now, None, step) {
        Ok((_, effect, _)) => report(vm, breaker, effect),
        Err(e) => {
            lost(vm, breaker, e);
        }
    }
}

/// Closes this worker's calls that got no answer within `answer_timeout_ms`: each is a failure
/// now (a probe re-opens its breaker). Called on every tick; no host call while none is in flight.
pub fn expire_overdue() {
    if vm::with(|vm| vm.calls.is_empty()) {
        return;
    }
    let Ok(now) = host::now_ms() else { return };
    let due = vm::with(|vm| vm.calls.take_overdue(now));
    for c in due {
        vm::with(|vm| timed_out(vm, &c.key, c.probe, now));
    }
}

#[cold]
#[inline(never)]
fn report(vm: &mut Vm, breaker: &str, effect: Effect) {
    if let Some(t) = effect.transition {
        vm.metrics.transition(breaker, t.from, t.to);
        log::info!("breaker {breaker} {} -> {} ({})", t.from.name(), t.to.name(), t.reason.name());
    }
}

#[cold]
#[inline(never)]
fn lost(vm: &mut Vm, breaker: &str, e: StoreError) -> Verdict {
    vm.metrics.lost(breaker);
    log::warn!("breaker {breaker} state not updated: {e:?}");
    Verdict::Pass
}
