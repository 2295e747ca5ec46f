//! The Redis store: the whole activation state is one JSON value, written by a Lua script that
//! checks a revision first (optimistic concurrency: among concurrent writers on any replica,
//! exactly one wins each round and the others re-read and re-apply). The same script keeps the
//! deactivation queue (a sorted set), publishes events on `collab:circuit_breaker:events`, and
//! announces the new version on a changes channel that wakes the long-polls of every replica.
//! Pub/sub may drop messages, so each replica also re-reads the version every second.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use tokio::sync::watch;

use crate::engine::{self, Command, Event, Outcome, Rules, State};
use crate::store::{FleetEntry, Store, StoreError};

pub const PREFIX: &str = "collab:circuit_breaker:";
pub const EVENTS_CHANNEL: &str = "collab:circuit_breaker:events";
const CHANGES_CHANNEL: &str = "collab:circuit_breaker:changes";
const MAX_ATTEMPTS: usize = 32;

const COMMIT: &str = r#"
-- KEYS: state, rev, version, deactivations
-- ARGV: expected_rev, state_json, version, n_scheduled, (score, key)*, events_channel, changes_channel, n_events, event*
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[3], ARGV[3])
redis.call('DEL', KEYS[4])
local i = 5
for _ = 1, tonumber(ARGV[4]) do
  redis.call('ZADD', KEYS[4], ARGV[i], ARGV[i + 1])
  i = i + 2
end
local events, changes, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
i = i + 3
for _ = 1, n do
  redis.call('PUBLISH', events, ARGV[i])
  i = i + 1
end
redis.call('PUBLISH', changes, ARGV[3])
return 1
"#;

fn key(name: &str) -> String {
    format!("{PREFIX}{name}")
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

pub struct RedisStore {
    con: ConnectionManager,
    script: redis::Script,
    version: watch::Sender<u64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

/// The event as published on the channel (the original service's subscribers read this).
pub fn event_json(e: &Event) -> String {
    serde_json::json!({
        "event": format!("circuit_breaker_{}", e.kind),
        "event_id": e.event_id,
        "key": e.key,
        "reason": e.reason,
        "source": e.source,
        "backpressure_level": e.backpressure_level,
        "timestamp": crate::rfc3339(e.timestamp_ms),
    })
    .to_string()
}

impl RedisStore {
    pub async fn connect(url: &str) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(2))
            .set_response_timeout(Duration::from_secs(2))
            .set_number_of_retries(2)
            .set_max_delay(2_000);
        let con = ConnectionManager::new_with_config(client.clone(), config).await.map_err(unavailable)?;
        let (tx, _) = watch::channel(0u64);
        let mut store = RedisStore { con, script: redis::Script::new(COMMIT), version: tx, tasks: vec![] };
        if let Ok(v) = store.read_version().await {
            store.version.send_replace(v);
        }
        store.tasks.push(tokio::spawn(listen_for_changes(client, store.version.clone())));
        store.tasks.push(tokio::spawn(reconcile(store.con.clone(), store.version.clone())));
        Ok(store)
    }

    async fn read_version(&self) -> Result<u64, StoreError> {
        let v: Option<u64> = self.con.clone().get(key("version")).await.map_err(unavailable)?;
        Ok(v.unwrap_or(0))
    }
}

async fn listen_for_changes(client: redis::Client, version: watch::Sender<u64>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if let Ok(mut pubsub) = client.get_async_pubsub().await {
            if pubsub.subscribe(CHANGES_CHANNEL).await.is_ok() {
                backoff = Duration::from_millis(100);
                let mut messages = pubsub.on_message();
                while let Some(msg) = messages.next().await {
                    if let Ok(v) = msg.get_payload::<String>().map(|s| s.parse::<u64>().unwrap_or(0)) {
                        version.send_if_modified(|cur| std::mem::replace(cur, v.max(*cur)) != v.max(*cur));
                    }
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn reconcile(mut con: ConnectionManager, version: watch::Sender<u64>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Ok(Some(v)) = con.get::<_, Option<u64>>(key("version")).await {
            version.send_if_modified(|cur| std::mem::replace(cur, v.max(*cur)) != v.max(*cur));
        }
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn apply(&self, cmd: Command, rules: &Rules, now_ms: u64) -> Result<(Outcome, Vec<Event>), StoreError> {
        let mut con = self.con.clone();
        for _ in 0..MAX_ATTEMPTS {
            let (raw, rev): (Option<String>, Option<String>) =
                redis::pipe().get(key("state")).get(key("rev")).query_async(&mut con).await.map_err(unavailable)?;
            let mut state: State = match &raw {
                Some(j) => serde_json::from_str(j).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                None => State::default(),
            };
            let (outcome, events) = engine::apply(&mut state, cmd.clone(), rules, now_ms);
            let json = serde_json::to_string(&state).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if raw.as_deref() == Some(json.as_str()) || (raw.is_none() && state == State::default()) {
                return Ok((outcome, events));
            }
            let mut inv = self.script.prepare_invoke();
            inv.key(key("state")).key(key("rev")).key(key("version")).key(key("deactivations"));
            inv.arg(rev.unwrap_or_else(|| "0".into())).arg(&json).arg(state.version);
            let scheduled: Vec<_> =
                state.activations.values().filter_map(|a| a.ends_ms().map(|t| (t, a.key.clone()))).collect();
            inv.arg(scheduled.len());
            for (t, k) in &scheduled {
                inv.arg(*t).arg(k);
            }
            inv.arg(EVENTS_CHANNEL).arg(CHANGES_CHANNEL).arg(events.len());
            for e in &events {
                inv.arg(event_json(e));
            }
            let won: i64 = inv.invoke_async(&mut con).await.map_err(unavailable)?;
            if won == 1 {
                let v = state.version;
                self.version.send_if_modified(|cur| std::mem::replace(cur, v.max(*cur)) != v.max(*cur));
                return Ok((outcome, events));
            }
        }
        Err(StoreError::Contended)
    }

    async fn state(&self) -> Result<State, StoreError> {
        let raw: Option<String> = self.con.clone().get(key("state")).await.map_err(unavailable)?;
        match raw {
            Some(j) => serde_json::from_str(&j).map_err(|e| StoreError::Corrupt(e.to_string())),
            None => Ok(State::default()),
        }
    }

    async fn record_poll(&self, entry: FleetEntry) -> Result<(), StoreError> {
        let json = serde_json::to_string(&entry).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.con.clone().hset::<_, _, _, ()>(key("fleet"), &entry.proxy, json).await.map_err(unavailable)
    }

    async fn fleet(&self) -> Result<Vec<FleetEntry>, StoreError> {
        let all: Vec<(String, String)> = self.con.clone().hgetall(key("fleet")).await.map_err(unavailable)?;
        Ok(all.into_iter().filter_map(|(_, j)| serde_json::from_str(&j).ok()).collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        redis::cmd("PING").query_async::<String>(&mut self.con.clone()).await.map(|_| ()).map_err(unavailable)
    }

    fn versions(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}
