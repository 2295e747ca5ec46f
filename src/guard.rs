//! The decision both filters share: ask a breaker before a new call, tell it the outcome after.
//! Host errors fail open: a broken shared-data call admits and is counted, it never refuses.

use std::borrow::Cow;
use std::rc::Rc;

use crate::config::{BreakerPolicy, Config, ControlConfig};
use crate::host;
use crate::metrics::{Outcome, RejectKind};
use crate::store::{self, StoreError};
use crate::vm::{self, Pending, Vm};
use floodgate_core::breaker::{whole_seconds, SHORT_RETRY_MS};
use floodgate_core::remote::{self, DecideParams, RemoteDecision};
use floodgate_core::{Call, Decision, Effect, Mode, Policy, ProbeTicket, Reason, Refusal, RefusedAs};

/// A call the breaker admitted; hand it back with [`finish`] or [`abandon`].
pub struct Admitted {
    pub breaker: String,
    pub policy: Rc<BreakerPolicy>,
    pub probe: Option<ProbeTicket>,
    pub start_ms: u64,
    /// Its entry in this worker's calls in flight (with an answer deadline).
    pub pending: Option<u64>,
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
    Refuse(Refused),
}

/// The breaker's decision, then the admission budget's (DESIGN, `admission`).
pub fn check(config: &Config, breaker: &str, kind: RejectKind) -> Verdict {
    crate::admission::gate(breaker, kind, check_breaker(config, breaker, kind))
}

fn check_breaker(config: &Config, breaker: &str, kind: RejectKind) -> Verdict {
    let policy = config.policy_for(breaker);
    if policy.policy.mode == Mode::Disabled {
        return Verdict::Pass;
    }
    let Ok(now) = host::now_ms() else {
        return Verdict::Pass;
    };
    vm::with(|vm| {
        let reserved = config.overrides.contains_key(breaker);
        let tracked = match vm.registry.tracked(breaker, config.max_breakers, reserved) {
            Ok(t) => t,
            Err(e) => {
                // No per-key stats for a key that may be untracked: the global counters only.
                log::warn!("breaker registry not read: {e:?}");
                vm.metrics.untracked();
                return Verdict::Pass;
            }
        };
        let p = &policy.policy;
        if let Some(control) = &config.control {
            if let Some(verdict) = remote_verdict(vm, control, p, breaker, kind, now, tracked) {
                return verdict;
            }
        }
        if !tracked {
            vm.metrics.untracked();
            // A configured forced-open still refuses keys past max_breakers.
            return match p.mode {
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
            };
        }
        let unit = vm.unit(now);
        let (decision, effect, state) = match store::update(breaker, p, |s| floodgate_core::admit(s, p, now, unit)) {
            Ok(r) => r,
            Err(e) => return lost(vm, breaker, e),
        };
        vm.metrics.touch(breaker, state.phase);
        report(vm, breaker, effect);
        let probe = match decision {
            Decision::Admit { probe } => probe,
            Decision::Refuse(refusal) if p.mode == Mode::DryRun => {
                vm.metrics.would_reject(breaker, kind);
                log::debug!("dry_run would refuse {breaker}: {:?}", refusal.reason);
                None
            }
            Decision::Refuse(refusal) => {
                vm.metrics.rejected(breaker, kind);
                return Verdict::Refuse(refusal.into());
            }
        };
        // TCP's answer is the upstream connection, bounded by the cluster's connect_timeout.
        let pending = (p.answer_timeout_ms > 0 && kind != RejectKind::Tcp)
            .then(|| {
                vm.calls.track(Pending {
                    breaker: breaker.to_string(),
                    policy: policy.clone(),
                    probe,
                    start_ms: now,
                    deadline_ms: now.saturating_add(p.answer_timeout_ms),
                })
            })
            .flatten();
        Verdict::Admit(Admitted { breaker: breaker.to_string(), policy: policy.clone(), probe, start_ms: now, pending })
    })
}

/// Applies the control plane's view (refreshed into the VM on every tick: no host call here).
/// `None` leaves the decision to the local breaker. An untracked key is refused by a
/// forced-open like any other, but counted only in `floodgate_untracked_total`.
fn remote_verdict(
    vm: &mut Vm,
    control: &ControlConfig,
    p: &Policy,
    breaker: &str,
    kind: RejectKind,
    now: u64,
    tracked: bool,
) -> Option<Verdict> {
    let view = vm.remote.view.clone();
    let params = DecideParams {
        stale_after_ms: control.stale_after_s.saturating_mul(1000),
        ramp_ms: p.recovery_ramp_ms,
        open_retry_ms: p.open_base_ms,
        jitter: p.open_jitter,
        short_retry_ms: SHORT_RETRY_MS,
    };
    let unit = vm.unit(now);
    let refused = match remote::decide(&view, breaker, now, &params, unit) {
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
        vm.metrics.would_reject(breaker, kind);
        return Some(Verdict::Pass);
    }
    vm.metrics.rejected(breaker, kind);
    Some(Verdict::Refuse(refused))
}

/// What ending a tracked call means: `Some(true)` when its answer deadline passed before this
/// end (no answer by then: a failure, as the tick would have counted it), `None` when the tick
/// already counted it.
fn settle(vm: &mut Vm, a: &Admitted, now: u64) -> Option<bool> {
    match a.pending {
        None => Some(false),
        Some(id) => vm.calls.settle(id).map(|deadline| now >= deadline),
    }
}

/// Records the outcome of an admitted call (nothing if its answer deadline already decided it).
pub fn finish(a: Admitted, failure: bool) {
    let now = host::now_ms().unwrap_or(a.start_ms);
    let p = &a.policy.policy;
    let slow = p.slow_call_ms > 0 && now.saturating_sub(a.start_ms) >= p.slow_call_ms;
    vm::with(|vm| {
        match settle(vm, &a, now) {
            None => return,
            Some(true) => return timed_out(vm, &a.breaker, p, a.probe, now),
            Some(false) => {}
        }
        let outcome = if failure {
            Outcome::Failure
        } else if slow {
            Outcome::Slow
        } else {
            Outcome::Success
        };
        vm.metrics.call(&a.breaker, outcome);
        let unit = vm.unit(now);
        let call = Call { failure, slow };
        match store::update(&a.breaker, p, |s| ((), floodgate_core::record(s, p, now, call, a.probe, unit))) {
            Ok((_, effect, _)) => report(vm, &a.breaker, effect),
            Err(e) => {
                lost(vm, &a.breaker, e);
            }
        }
    })
}

/// Ends a call that decides nothing (the client left, another filter answered): its probe slot,
/// if any, is given back. Past its answer deadline, it had no answer in time: a failure.
pub fn abandon(a: Admitted) {
    if a.pending.is_none() && a.probe.is_none() {
        return;
    }
    let p = &a.policy.policy;
    let now = host::now_ms().unwrap_or(a.start_ms);
    vm::with(|vm| match settle(vm, &a, now) {
        Some(true) => timed_out(vm, &a.breaker, p, a.probe, now),
        Some(false) if a.probe.is_some() => {
            if let Err(e) = store::update(&a.breaker, p, |s| ((), floodgate_core::release(s, a.probe, now))) {
                lost(vm, &a.breaker, e);
            }
        }
        _ => {}
    })
}

/// A call with no upstream answer within `answer_timeout_ms`: a failure now; a probe re-opens.
fn timed_out(vm: &mut Vm, breaker: &str, p: &Policy, probe: Option<ProbeTicket>, now: u64) {
    vm.metrics.call(breaker, Outcome::Failure);
    let unit = vm.unit(now);
    log::info!("breaker {breaker}: no upstream answer within {} ms, counted as a failure", p.answer_timeout_ms);
    match store::update(breaker, p, |s| ((), floodgate_core::timeout(s, p, now, probe, unit))) {
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
        vm::with(|vm| timed_out(vm, &c.breaker, &c.policy.policy, c.probe, now));
    }
}

fn report(vm: &mut Vm, breaker: &str, effect: Effect) {
    if let Some(t) = effect.transition {
        vm.metrics.transition(breaker, t.from, t.to);
        log::info!("breaker {breaker} {} -> {} ({})", t.from.name(), t.to.name(), t.reason.name());
    }
}

fn lost(vm: &mut Vm, breaker: &str, e: StoreError) -> Verdict {
    vm.metrics.lost(breaker);
    log::warn!("breaker {breaker} state not updated: {e:?}");
    Verdict::Pass
}
