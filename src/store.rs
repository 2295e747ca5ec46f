//! Breaker state in Envoy shared data, so every worker of one Envoy decides alike.
//!
//! Each breaker is one key, `floodgate/b/<breaker>`, updated with compare-and-swap: read, step
//! the pure state machine, write back only if it changed and nobody wrote in between. The set of
//! tracked keys is bounded by `max_breakers` (shared data has no delete) through a registry key.

use hashbrown::HashMap;

use crate::core::{BreakerState, Effect, Policy};
use crate::host::{self, HostError};

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
    let mut k = String::with_capacity(KEY_PREFIX.len() + breaker.len());
    k.push_str(KEY_PREFIX);
    k.push_str(breaker);
    k
}

/// Reads the breaker's state, lets `step` change it, writes it back if changed; retries on
/// CAS mismatch. A missing or unreadable value starts from a fresh state.
pub fn update<T>(
    breaker: &str,
    policy: &Policy,
    mut step: impl FnMut(&mut BreakerState) -> (T, Effect),
) -> Result<(T, Effect, BreakerState), StoreError> {
    let key = state_key(breaker);
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (bytes, cas) = host::shared_get(&key)?;
        let mut state = bytes.as_deref().and_then(BreakerState::decode).unwrap_or_else(|| BreakerState::new(policy));
        state.conform(policy);
        if cas == 0 {
            // Create the key first so every later write is a real compare-and-swap. Two workers
            // racing here both write a fresh state, so nothing is lost.
            host::shared_set(&key, &BreakerState::new(policy).encode(), 0)?;
            continue;
        }
        let (value, effect) = step(&mut state);
        if !effect.changed {
            return Ok((value, effect, state));
        }
        match host::shared_set(&key, &state.encode(), cas) {
            Ok(()) => return Ok((value, effect, state)),
            Err(HostError::CasMismatch) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Contended)
}

/// Whether a breaker key is tracked, remembered per VM so the registry is read once per key.
#[derive(Default)]
pub struct Registry {
    known: HashMap<String, bool>,
}

impl Registry {
    /// `Ok(false)` when `max_breakers` other keys are already tracked.
    pub fn tracked(&mut self, breaker: &str, max_breakers: u32) -> Result<bool, StoreError> {
        if let Some(&t) = self.known.get(breaker) {
            return Ok(t);
        }
        let tracked = register(breaker, max_breakers)?;
        self.known.insert(breaker.to_string(), tracked);
        Ok(tracked)
    }
}

fn register(breaker: &str, max_breakers: u32) -> Result<bool, StoreError> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        // Keys are separated by '\n'; a key containing '\n' is never tracked.
        if breaker.contains('\n') {
            return Ok(false);
        }
        let (bytes, cas) = host::shared_get(REGISTRY_KEY)?;
        if cas == 0 {
            // As for breaker keys: create it first so that appends are real compare-and-swaps.
            host::shared_set(REGISTRY_KEY, b"\n", 0)?;
            continue;
        }
        let list = bytes.unwrap_or_default();
        let count = list.split(|&b| b == b'\n').filter(|k| !k.is_empty()).count();
        if list.split(|&b| b == b'\n').any(|k| k == breaker.as_bytes()) {
            return Ok(true);
        }
        if count >= max_breakers as usize {
            return Ok(false);
        }
        let mut next = list;
        next.extend_from_slice(breaker.as_bytes());
        next.push(b'\n');
        match host::shared_set(REGISTRY_KEY, &next, cas) {
            Ok(()) => return Ok(true),
            Err(HostError::CasMismatch) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Contended)
}
