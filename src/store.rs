//! Breaker state in Envoy shared data, so every worker of one Envoy decides alike.
//!
//! Each breaker is one key, `floodgate/b/<breaker>`, updated with compare-and-swap: read, step
//! the pure state machine, write back only if it changed and nobody wrote in between. A quiet
//! breaker's value is empty (`floodgate_core::state`). The set of tracked keys is bounded by
//! `max_breakers` (shared data has no delete) through a registry key.

use crate::host::{self, HostError};
use floodgate_core::{BreakerState, Effect, Policy};

pub const KEY_PREFIX: &str = "floodgate/b/";
pub const REGISTRY_KEY: &str = "floodgate/registry";
/// Attempts at one CAS update before the update is given up (and counted as lost).
pub const MAX_CAS_ATTEMPTS: u32 = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreError {
    Host(HostError),
    /// Other workers kept winning the compare-and-swap.
    Contended,
}

impl From<HostError> for StoreError {
    fn from(e: HostError) -> Self {
        StoreError::Host(e)
    }
}

pub fn state_key(breaker: &str) -> String {
    prefixed(KEY_PREFIX, breaker)
}

/// A shared-data key: `prefix` followed by the breaker's name.
pub fn prefixed(prefix: &str, breaker: &str) -> String {
    let mut k = String::with_capacity(prefix.len() + breaker.len());
    k.push_str(prefix);
    k.push_str(breaker);
    k
}

/// What a compare-and-swap update does with the value it read.
pub enum Step<T> {
    /// Write these bytes if nobody wrote since the read (else read again), then return `T`.
    Write(Vec<u8>, T),
    /// Leave the key as it is and return `T`.
    Keep(T),
}

/// Read-modify-write of one shared-data key: `step` sees the current value and says what to do;
/// a compare-and-swap mismatch reads again, up to [`MAX_CAS_ATTEMPTS`] times. With `initial`, a
/// missing key is first created with it (Envoy's cas 0 writes unconditionally), so that every
/// later write is a real compare-and-swap; without, `step` sees `None`.
pub fn cas_update<T, E: From<StoreError>>(
    key: &str,
    initial: Option<&[u8]>,
    step: impl FnMut(Option<&[u8]>) -> Result<Step<T>, E>,
) -> Result<T, E> {
    cas_update_lazy(key, initial.map(|b| move || b.to_vec()), step)
}

/// A shared-data value as read, with its CAS token (`(None, 0)`: the key is missing).
pub type Read = (Option<Vec<u8>>, u32);

/// [`cas_update`] with the initial value built only when the key is missing (the request path
/// must not encode a fresh state on every call).
pub fn cas_update_lazy<T, E: From<StoreError>>(
    key: &str,
    initial: Option<impl Fn() -> Vec<u8>>,
    step: impl FnMut(Option<&[u8]>) -> Result<Step<T>, E>,
) -> Result<T, E> {
    cas_update_from(key, None, initial, step)
}

/// [`cas_update_lazy`] starting from a value the caller already read (`first`), so that a
/// decision that needed the value does not read it twice.
pub fn cas_update_from<T, E: From<StoreError>>(
    key: &str,
    mut first: Option<Read>,
    initial: Option<impl Fn() -> Vec<u8>>,
    mut step: impl FnMut(Option<&[u8]>) -> Result<Step<T>, E>,
) -> Result<T, E> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (bytes, cas) = match first.take() {
            Some(read) => read,
            None => host::shared_get(key).map_err(StoreError::from)?,
        };
        if let (0, Some(initial)) = (cas, &initial) {
            host::shared_set(key, &initial(), 0).map_err(StoreError::from)?;
            continue;
        }
        match step(bytes.as_deref())? {
            Step::Keep(value) => return Ok(value),
            Step::Write(next, value) => match host::shared_set(key, &next, cas) {
                Ok(()) => return Ok(value),
                Err(HostError::CasMismatch) => continue,
                Err(e) => return Err(StoreError::from(e).into()),
            },
        }
    }
    Err(StoreError::Contended.into())
}

/// Writes bytes a caller stepped in place if the key's CAS is still `cas`: `Ok(false)` when
/// another worker wrote since the read (the caller then takes the full step, which reads again).
pub fn write_patched(key: &str, bytes: &[u8], cas: u32) -> Result<bool, StoreError> {
    match host::shared_set(key, bytes, cas) {
        Ok(()) => Ok(true),
        Err(HostError::CasMismatch) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Reads the breaker's state (at `state_key`, or from `first` when already read), lets `step`
/// change it at `now_ms`, writes it back if changed (a quiet state as no bytes). A missing or
/// unreadable value starts from a fresh state. Creating the key is Envoy's unconditional cas-0
/// write: a worker that read the key missing can still overwrite a first update another worker
/// made in between (a window of one host call at a breaker's first use).
pub fn update<T>(
    state_key: &str,
    policy: &Policy,
    now_ms: u64,
    first: Option<Read>,
    mut step: impl FnMut(&mut BreakerState) -> (T, Effect),
) -> Result<(T, Effect, BreakerState), StoreError> {
    let fresh = || BreakerState::new(policy).encode();
    cas_update_from(state_key, first, Some(fresh), |bytes| {
        let mut state =
            bytes.and_then(|b| BreakerState::decode_for(b, policy)).unwrap_or_else(|| BreakerState::new(policy));
        state.conform(policy);
        let (value, effect) = step(&mut state);
        Ok(if effect.changed {
            Step::Write(state.encode_for(now_ms), (value, effect, state))
        } else {
            Step::Keep((value, effect, state))
        })
    })
}

/// Keys longer than this are never tracked (as the control plane's keys are bounded).
pub const MAX_KEY_BYTES: usize = 256;

/// Whether a key may get its own state and stats: bounded in length, no control characters (the
/// registry separates keys with '\n'), and none of the tag delimiters `=.=` and `;.;`, which would
/// let a client-chosen key forge another breaker's labels in Envoy's stats.
pub fn trackable(key: &str) -> bool {
    key.len() <= MAX_KEY_BYTES && !key.chars().any(char::is_control) && !key.contains("=.=") && !key.contains(";.;")
}

/// Which breaker keys are tracked, as this VM knows it. Memory stays bounded whatever keys
/// clients send: only tracked keys are remembered (at most `max_breakers` plus the keys named in
/// `breakers`); once the shared registry is full, its keys are loaded once and every other key
/// is untracked without a host call.
#[derive(Default)]
pub struct Registry {
    known: hashbrown::HashSet<String>,
    /// `max_breakers` at which the shared registry was seen full (its keys are all in `known`).
    full_at: Option<u32>,
}

impl Registry {
    /// `Ok(false)` when `max_breakers` other keys are already tracked. A `reserved` key (named
    /// in `breakers`) is always tracked.
    pub fn tracked(&mut self, breaker: &str, max_breakers: u32, reserved: bool) -> Result<bool, StoreError> {
        if self.known.contains(breaker) {
            return Ok(true);
        }
        if !trackable(breaker) {
            return Ok(false);
        }
        if !reserved && self.full_at.is_some_and(|m| max_breakers <= m) {
            return Ok(false);
        }
        match register(breaker, max_breakers, reserved)? {
            Registered::Tracked => {
                self.known.insert(breaker.to_string());
                Ok(true)
            }
            Registered::Full(keys) => {
                self.known.extend(keys);
                self.full_at = Some(max_breakers);
                Ok(self.known.contains(breaker))
            }
        }
    }

    /// Whether this VM tracks `breaker` already (no host call).
    pub fn knows(&self, breaker: &str) -> bool {
        self.known.contains(breaker)
    }

    /// Keys this VM tracks (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.known.len()
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }
}

enum Registered {
    Tracked,
    /// The registry is full: these are its keys.
    Full(Vec<String>),
}

fn register(breaker: &str, max_breakers: u32, reserved: bool) -> Result<Registered, StoreError> {
    // Keys are separated by '\n' (a key containing '\n' is never tracked).
    cas_update(REGISTRY_KEY, Some(b"\n"), |list| {
        let list = list.unwrap_or_default();
        let keys = || list.split(|&b| b == b'\n').filter(|k| !k.is_empty());
        if keys().any(|k| k == breaker.as_bytes()) {
            return Ok(Step::Keep(Registered::Tracked));
        }
        if !reserved && keys().count() >= max_breakers as usize {
            let all = keys().filter_map(|k| std::str::from_utf8(k).ok().map(str::to_string)).collect();
            return Ok(Step::Keep(Registered::Full(all)));
        }
        let mut next = list.to_vec();
        next.extend_from_slice(breaker.as_bytes());
        next.push(b'\n');
        Ok(Step::Write(next, Registered::Tracked))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_would_forge_stat_labels_or_break_the_registry_are_never_tracked() {
        for key in ["collab_ws", "outbound|80||collab.default.svc.cluster.local", "route with spaces", "*"] {
            assert!(trackable(key), "{key}");
        }
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        for key in ["x;.;kind=.=http", "a=.=b", "line\nbreak", "tab\there", long.as_str()] {
            assert!(!trackable(key), "{key:?}");
        }
    }
}
