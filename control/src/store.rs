//! Where the activation state lives. One trait, two implementations: in memory (one replica) and
//! Redis (durable, shared by several replicas). Both run the same [`engine`] rules.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::engine::{self, Command, Event, Outcome, Rules, State};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store contended: gave up after retries")]
    Contended,
    #[error("store holds a state this version cannot read: {0}")]
    Corrupt(String),
}

/// One proxy's last poll, for `GET /api/v1/fleet`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FleetEntry {
    pub proxy: String,
    pub last_poll_ms: u64,
    pub version: u64,
    /// Breaker key -> local state, as the proxy reported it.
    pub breakers: BTreeMap<String, String>,
}

/// The fleet table holds at most this many proxies...
pub const MAX_FLEET: usize = 10_000;
/// ...and drops a proxy not polled for this long.
pub const FLEET_TTL_MS: u64 = 600_000;

#[async_trait]
pub trait Store: Send + Sync {
    /// Applies a command atomically (one winner among concurrent writers, on every replica).
    async fn apply(&self, cmd: Command, rules: &Rules, now_ms: u64) -> Result<(Outcome, Vec<Event>), StoreError>;
    async fn state(&self) -> Result<State, StoreError>;
    /// The store's snapshot version now, read from the store itself (a store that lost its
    /// state starts a new epoch here).
    async fn version(&self) -> Result<u64, StoreError>;
    /// The store's version, first lifted above `floor` (a new epoch, content unchanged) when it
    /// is below: a proxy that holds a higher version than a restarted store (a failover, a
    /// restored backup, an in-memory restart with the clock stepped back) follows at once instead
    /// of refusing lower versions until its view is stale. The caller caps `floor`
    /// ([`floodgate_core::version::floor_cap`]).
    async fn lift(&self, floor: u64) -> Result<u64, StoreError>;
    /// Records a poll; expired entries go, and a new proxy beyond [`MAX_FLEET`] is not recorded.
    async fn record_poll(&self, entry: FleetEntry) -> Result<(), StoreError>;
    /// The proxies polled within [`FLEET_TTL_MS`] of `now_ms`.
    async fn fleet(&self, now_ms: u64) -> Result<Vec<FleetEntry>, StoreError>;
    async fn ping(&self) -> Result<(), StoreError>;
    /// The snapshot version, updated on every change (from any replica, for shared stores).
    fn versions(&self) -> watch::Receiver<u64>;
}

pub struct MemoryStore {
    state: Mutex<State>,
    fleet: Mutex<BTreeMap<String, FleetEntry>>,
    version: watch::Sender<u64>,
}

impl Default for MemoryStore {
    /// An empty store whose versions start at the epoch now (above any version an earlier run
    /// of the service issued, see [`floodgate_core::version`]).
    fn default() -> Self {
        let state = State::new(crate::now_ms(), 0);
        let version = watch::channel(state.version).0;
        MemoryStore { state: Mutex::new(state), fleet: Mutex::default(), version }
    }
}

fn poisoned<T>(_: T) -> StoreError {
    StoreError::Unavailable("memory store lock poisoned".into())
}

#[async_trait]
impl Store for MemoryStore {
    async fn apply(&self, cmd: Command, rules: &Rules, now_ms: u64) -> Result<(Outcome, Vec<Event>), StoreError> {
        let (result, version) = {
            let mut s = self.state.lock().map_err(poisoned)?;
            let r = engine::apply(&mut s, cmd, rules, now_ms);
            (r, s.version)
        };
        self.version.send_if_modified(|v| std::mem::replace(v, version) != version);
        Ok(result)
    }

    async fn state(&self) -> Result<State, StoreError> {
        Ok(self.state.lock().map_err(poisoned)?.clone())
    }

    async fn version(&self) -> Result<u64, StoreError> {
        Ok(self.state.lock().map_err(poisoned)?.version)
    }

    async fn lift(&self, floor: u64) -> Result<u64, StoreError> {
        let version = {
            let mut s = self.state.lock().map_err(poisoned)?;
            if s.version < floor {
                let before = s.version;
                s.version = floodgate_core::version::next(floor, crate::now_ms());
                tracing::warn!(from = before, to = s.version, "a proxy holds a higher version: started a new epoch");
            }
            s.version
        };
        self.version.send_if_modified(|v| std::mem::replace(v, version) != version);
        Ok(version)
    }

    async fn record_poll(&self, entry: FleetEntry) -> Result<(), StoreError> {
        let mut fleet = self.fleet.lock().map_err(poisoned)?;
        let now = entry.last_poll_ms;
        if !fleet.contains_key(&entry.proxy) && fleet.len() >= MAX_FLEET {
            fleet.retain(|_, e| e.last_poll_ms.saturating_add(FLEET_TTL_MS) > now);
            if fleet.len() >= MAX_FLEET {
                return Ok(());
            }
        }
        fleet.insert(entry.proxy.clone(), entry);
        Ok(())
    }

    async fn fleet(&self, now_ms: u64) -> Result<Vec<FleetEntry>, StoreError> {
        let mut fleet = self.fleet.lock().map_err(poisoned)?;
        fleet.retain(|_, e| e.last_poll_ms.saturating_add(FLEET_TTL_MS) > now_ms);
        Ok(fleet.values().cloned().collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn versions(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}
