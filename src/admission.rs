//! The admission budget in shared data: one token bucket per breaker (`floodgate/a/<breaker>`),
//! taken with compare-and-swap so every worker of the Envoy draws from the same budget. The
//! bucket itself is pure (`floodgate_core::admission`); this adapter reads, steps and writes it.
//!
//! [`gate`] runs after the breaker admitted a new call, in every state: an upgrade the breaker
//! refuses takes no token. A host error or lasting contention admits (and is counted as lost),
//! as everywhere in the filter: the budget never refuses because shared data failed.

use std::borrow::Cow;

use crate::guard::{self, Kind, Refused, Verdict};
use crate::keys::Key;
use crate::store::{self, Step, StoreError};
use crate::vm;
use floodgate_core::admission::{self, Bucket, Budget, Take};
use floodgate_core::{Mode, RefusedAs};

pub const KEY_PREFIX: &str = "floodgate/a/";
/// The reason an upgrade refused by the budget carries.
pub const REASON: &str = "admission_budget";

pub fn bucket_key(breaker: &str) -> String {
    store::prefixed(KEY_PREFIX, breaker)
}

/// Takes a token from the bucket at shared-data key `bucket_key` at `now_ms` (or, when
/// `may_delay`, one that comes within the budget's `max_delay_ms`).
pub fn take(bucket_key: &str, budget: Budget, now_ms: u64, may_delay: bool) -> Result<Take, StoreError> {
    // The full bucket is encoded only when the key is missing, not on every upgrade.
    let full = || Bucket::full(budget).encode();
    store::cas_update_lazy(bucket_key, Some(full), |bytes| {
        let mut bucket = bytes.and_then(Bucket::decode).unwrap_or_else(|| Bucket::full(budget));
        let (take, changed) = bucket.take(budget, now_ms, may_delay);
        Ok::<_, StoreError>(if changed { Step::Write(bucket.encode(), take) } else { Step::Keep(take) })
    })
}

/// What the budget makes of an admitted call.
enum Budgeted {
    Admit,
    Delay(u64),
    Refuse(Refused),
}

/// Applies the breaker's admission budget to a call the breaker admitted. `http`: an HTTP
/// request, which may be delayed (`max_delay_ms`) unless it is a half-open probe (a probe
/// answers now or not at all), the breaker only counts (`dry_run`), or the worker holds
/// [`crate::delay::MAX_DELAYED`] streams already.
pub fn gate(key: &Key, kind: Kind, verdict: Verdict, http: bool) -> Verdict {
    let Verdict::Admit(mut admitted) = verdict else { return verdict };
    let budget = key.policy.admission;
    if budget.is_off() {
        return Verdict::Admit(admitted);
    }
    let now = admitted.start_ms;
    let may_delay = http
        && budget.max_delay_ms > 0
        && admitted.probe.is_none()
        && key.policy.policy.mode != Mode::DryRun
        && vm::with(|vm| vm.delayed.has_room());
    let taken = take(&key.bucket_key, budget, now, may_delay);
    let breaker = key.name.as_str();
    let budgeted = vm::with(|vm| match taken {
        Ok(Take::Admit) => {
            vm.metrics.admission_admitted(breaker);
            Budgeted::Admit
        }
        Ok(Take::Delay { wait_ms }) => {
            vm.metrics.admission_delayed(breaker);
            // The call starts when its token comes: its answer deadline and its duration (for
            // slow calls) count from then.
            admitted.start_ms = now.saturating_add(wait_ms);
            if let Some(id) = admitted.pending {
                vm.calls.postpone(id, admitted.start_ms);
            }
            Budgeted::Delay(wait_ms)
        }
        Ok(Take::Refuse { .. }) if key.policy.policy.mode == Mode::DryRun => {
            vm.metrics.would_reject(breaker, kind());
            Budgeted::Admit
        }
        Ok(Take::Refuse { wait_ms }) => {
            vm.metrics.admission_rejected(breaker, kind());
            let retry_after_ms = admission::retry_after_ms(budget, wait_ms, vm.unit(now));
            // The breaker admitted this call as a probe only in half-open.
            let state = if admitted.probe.is_some() { RefusedAs::HalfOpen } else { RefusedAs::Closed };
            Budgeted::Refuse(Refused { state, reason: Cow::Borrowed(REASON), retry_after_ms })
        }
        Err(e) => {
            vm.metrics.lost(breaker);
            log::warn!("breaker {breaker} admission budget not updated: {e:?}");
            Budgeted::Admit
        }
    });
    match budgeted {
        Budgeted::Admit => Verdict::Admit(admitted),
        Budgeted::Delay(wait_ms) => Verdict::Delay { admitted, wait_ms },
        Budgeted::Refuse(refused) => {
            // A probe slot taken for this call goes back.
            guard::withdraw(admitted);
            Verdict::Refuse(refused)
        }
    }
}
