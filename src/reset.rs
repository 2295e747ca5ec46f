//! Fleet-wide resets in this proxy: the poller hands every snapshot it applies to [`on_snapshot`],
//! which applies each reset `event_id` once per proxy (the applied ids live in shared data,
//! bounded, so a repeated snapshot, a poller that changes worker or a config reload never
//! applies one twice), closing the key's local breaker (or every tracked one, `*`) through the
//! recovery ramp. The logic is pure, in `floodgate_core::reset`.

use crate::store::{self, Step, StoreError, REGISTRY_KEY};
use crate::{host, vm};
use floodgate_core::reset::{self, Applied, ResetEntry};
use floodgate_core::wire::WILDCARD;
use floodgate_core::BreakerState;

/// The event ids of the resets this proxy applied (`\n`-separated, oldest first).
pub const APPLIED_KEY: &str = "floodgate/resets";

/// Applies the snapshot's new resets at `now_ms`; returns how many breakers it closed.
pub fn on_snapshot(body: &[u8], now_ms: u64) -> usize {
    let entries = reset::parse_resets(body);
    let mut closed = 0;
    for entry in entries {
        match claim(&entry.event_id) {
            Ok(true) => closed += apply(&entry, now_ms),
            Ok(false) => {}
            Err(e) => log::warn!("reset {} not applied: {e:?}", entry.event_id),
        }
    }
    closed
}

/// Records `event_id` as applied; true for the one caller that recorded it first.
fn claim(event_id: &str) -> Result<bool, StoreError> {
    store::cas_update(APPLIED_KEY, Some(b""), |bytes| {
        let mut applied = Applied::decode(bytes.unwrap_or_default());
        Ok::<_, StoreError>(if applied.insert(event_id) {
            Step::Write(applied.encode(), true)
        } else {
            Step::Keep(false)
        })
    })
}

fn apply(entry: &ResetEntry, now_ms: u64) -> usize {
    let keys: Vec<String> = if entry.key == WILDCARD {
        match host::shared_get(REGISTRY_KEY) {
            Ok((Some(list), _)) => list
                .split(|&b| b == b'\n')
                .filter(|k| !k.is_empty())
                .filter_map(|k| String::from_utf8(k.to_vec()).ok())
                .collect(),
            _ => vec![],
        }
    } else {
        vec![entry.key.clone()]
    };
    let mut closed = 0;
    for key in keys {
        let result = store::cas_update(&store::state_key(&key), None, |bytes| {
            let Some(mut state) = bytes.and_then(BreakerState::decode) else { return Ok(Step::Keep(None)) };
            Ok::<_, StoreError>(match reset::close(&mut state, now_ms) {
                Some(t) => Step::Write(state.encode(), Some(t)),
                None => Step::Keep(None),
            })
        });
        match result {
            Ok(Some(t)) => {
                closed += 1;
                vm::with(|vm| vm.metrics.transition(&key, t.from, t.to));
                log::info!("breaker {key} {} -> closed (reset {})", t.from.name(), entry.event_id);
            }
            Ok(None) => {}
            Err(e) => log::warn!("breaker {key} not reset ({}): {e:?}", entry.event_id),
        }
    }
    closed
}
