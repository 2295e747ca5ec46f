//! The decision both filters share: ask a breaker before a new call, tell it the outcome after.
//! Host errors fail open: a broken shared-data call admits and is counted, it never refuses.

use std::rc::Rc;

use crate::config::{BreakerPolicy, Config};
use crate::core::{self, Call, Decision, Effect, Mode, ProbeTicket, Refusal};
use crate::host;
use crate::metrics::{Outcome, RejectKind};
use crate::store::{self, StoreError};
use crate::vm::{self, Vm};

/// A call the breaker admitted; hand it back with [`finish`] or [`abandon`].
pub struct Admitted {
    pub breaker: String,
    pub policy: Rc<BreakerPolicy>,
    pub probe: Option<ProbeTicket>,
    pub start_ms: u64,
}

pub enum Verdict {
    /// Not guarded (disabled, untracked, or the host failed): let it through, record nothing.
    Pass,
    Admit(Admitted),
    Refuse(Refusal),
}

pub fn check(config: &Config, breaker: &str, kind: RejectKind) -> Verdict {
    let policy = config.policy_for(breaker);
    if policy.policy.mode == Mode::Disabled {
        return Verdict::Pass;
    }
    let Ok(now) = host::now_ms() else {
        return Verdict::Pass;
    };
    vm::with(|vm| {
        match vm.registry.tracked(breaker, config.max_breakers) {
            Ok(true) => {}
            Ok(false) => {
                vm.metrics.untracked();
                return Verdict::Pass;
            }
            Err(e) => return lost(vm, breaker, e),
        }
        let unit = vm.unit(now);
        let p = &policy.policy;
        let (decision, effect, state) = match store::update(breaker, p, |s| core::admit(s, p, now, unit)) {
            Ok(r) => r,
            Err(e) => return lost(vm, breaker, e),
        };
        vm.metrics.touch(breaker, state.phase);
        report(vm, breaker, effect);
        match decision {
            Decision::Admit { probe } => {
                Verdict::Admit(Admitted { breaker: breaker.to_string(), policy: policy.clone(), probe, start_ms: now })
            }
            Decision::Refuse(refusal) if p.mode == Mode::DryRun => {
                vm.metrics.would_reject(breaker, kind);
                log::debug!("dry_run would refuse {breaker}: {:?}", refusal.reason);
                Verdict::Admit(Admitted {
                    breaker: breaker.to_string(),
                    policy: policy.clone(),
                    probe: None,
                    start_ms: now,
                })
            }
            Decision::Refuse(refusal) => {
                vm.metrics.rejected(breaker, kind);
                Verdict::Refuse(refusal)
            }
        }
    })
}

/// Records the outcome of an admitted call.
pub fn finish(a: Admitted, failure: bool) {
    let now = host::now_ms().unwrap_or(a.start_ms);
    let p = &a.policy.policy;
    let slow = p.slow_call_ms > 0 && now.saturating_sub(a.start_ms) >= p.slow_call_ms;
    vm::with(|vm| {
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
        match store::update(&a.breaker, p, |s| ((), core::record(s, p, now, call, a.probe, unit))) {
            Ok((_, effect, _)) => report(vm, &a.breaker, effect),
            Err(e) => {
                lost(vm, &a.breaker, e);
            }
        }
    })
}

/// Gives back a probe slot for a call that ended with no outcome to record.
pub fn abandon(a: Admitted) {
    if a.probe.is_none() {
        return;
    }
    let p = &a.policy.policy;
    let now = host::now_ms().unwrap_or(a.start_ms);
    vm::with(|vm| {
        if let Err(e) = store::update(&a.breaker, p, |s| ((), core::release(s, a.probe, now))) {
            lost(vm, &a.breaker, e);
        }
    })
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

/// Whole seconds for `retry-after`: rounded up, at least 1.
pub fn retry_after_s(refusal: &Refusal) -> u64 {
    refusal.retry_after_ms.div_ceil(1000).max(1)
}
