//! The Redis store: the whole activation state is one JSON value, written by a Lua script that
//! checks a revision first (optimistic concurrency: among concurrent writers on any replica,
//! exactly one wins each round and the others re-read and re-apply). The same script keeps the
//! deactivation queue (a sorted set), publishes events on `collab:circuit_breaker:events`, and
//! announces the new version on a changes channel that wakes the long-polls of every replica.
//! Pub/sub may drop messages, so each replica also re-reads the version every second.

use std::sync::{Arc, RwLock};
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

/// Where the store's Redis is: a `redis://` (or `rediss://`) URL, or Sentinel:
/// `redis+sentinel://[:password@]host:port[,host:port...]/<master name>[/<db>]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Direct(String),
    Sentinel { sentinels: Vec<String>, master: String, db: u32, password: Option<String> },
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, StoreError> {
        let Some(rest) = url.strip_prefix("redis+sentinel://") else { return Ok(Target::Direct(url.to_string())) };
        let bad = |why: &str| StoreError::Unavailable(format!("redis+sentinel URL {url:?}: {why}"));
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((a, r)) => (Some(a.trim_start_matches(':').to_string()), r),
            None => (None, rest),
        };
        let (hosts, path) = rest.split_once('/').ok_or_else(|| bad("missing /<master name>"))?;
        let mut parts = path.split('/');
        let master = parts.next().filter(|m| !m.is_empty()).ok_or_else(|| bad("missing master name"))?.to_string();
        let db = match parts.next() {
            None | Some("") => 0,
            Some(d) => d.parse().map_err(|_| bad("db must be a number"))?,
        };
        let sentinels: Vec<String> = hosts.split(',').filter(|h| !h.is_empty()).map(String::from).collect();
        if sentinels.is_empty() {
            return Err(bad("no sentinel address"));
        }
        Ok(Target::Sentinel { sentinels, master, db, password: auth.filter(|a| !a.is_empty()) })
    }

    /// The master's URL now: asks the sentinels in turn.
    pub async fn resolve(&self) -> Result<String, StoreError> {
        let (sentinels, master, db, password) = match self {
            Target::Direct(url) => return Ok(url.clone()),
            Target::Sentinel { sentinels, master, db, password } => (sentinels, master, db, password),
        };
        let mut last = String::from("no sentinel answered");
        for s in sentinels {
            let asked = async {
                let client = redis::Client::open(format!("redis://{s}/"))?;
                let mut con = client.get_multiplexed_async_connection().await?;
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(master)
                    .query_async::<Option<(String, u16)>>(&mut con)
                    .await
            };
            match tokio::time::timeout(Duration::from_secs(2), asked).await {
                Ok(Ok(Some((host, port)))) => {
                    let auth = password.as_ref().map(|p| format!(":{p}@")).unwrap_or_default();
                    return Ok(format!("redis://{auth}{host}:{port}/{db}"));
                }
                Ok(Ok(None)) => last = format!("sentinel {s} does not know master {master:?}"),
                Ok(Err(e)) => last = format!("sentinel {s}: {e}"),
                Err(_) => last = format!("sentinel {s}: timed out"),
            }
        }
        Err(StoreError::Unavailable(last))
    }
}

async fn manager(url: &str) -> Result<ConnectionManager, StoreError> {
    let client = redis::Client::open(url).map_err(unavailable)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(2))
        .set_response_timeout(Duration::from_secs(2))
        .set_number_of_retries(2)
        .set_max_delay(2_000);
    ConnectionManager::new_with_config(client, config).await.map_err(unavailable)
}

/// The connection in use; replaced when Sentinel names a new master.
type Shared = Arc<RwLock<(String, ConnectionManager)>>;

fn current(shared: &Shared) -> ConnectionManager {
    match shared.read() {
        Ok(g) => g.1.clone(),
        Err(e) => e.into_inner().1.clone(),
    }
}

pub struct RedisStore {
    con: Shared,
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
    /// Connects to `url` (see [`Target`]); with Sentinel, follows the master as it moves.
    pub async fn connect(url: &str) -> Result<RedisStore, StoreError> {
        let target = Target::parse(url)?;
        let master = target.resolve().await?;
        let con: Shared = Arc::new(RwLock::new((master.clone(), manager(&master).await?)));
        let (tx, _) = watch::channel(0u64);
        let mut store = RedisStore { con, script: redis::Script::new(COMMIT), version: tx, tasks: vec![] };
        if let Ok(v) = store.read_version().await {
            store.version.send_replace(v);
        }
        store.tasks.push(tokio::spawn(listen_for_changes(target.clone(), store.version.clone())));
        store.tasks.push(tokio::spawn(reconcile(store.con.clone(), store.version.clone())));
        if matches!(target, Target::Sentinel { .. }) {
            store.tasks.push(tokio::spawn(follow_master(target, store.con.clone())));
        }
        Ok(store)
    }

    fn con(&self) -> ConnectionManager {
        current(&self.con)
    }

    async fn read_version(&self) -> Result<u64, StoreError> {
        let v: Option<u64> = self.con().get(key("version")).await.map_err(unavailable)?;
        Ok(v.unwrap_or(0))
    }
}

/// Asks the sentinels every second which node is master, and switches when it changes.
async fn follow_master(target: Target, shared: Shared) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Ok(master) = target.resolve().await else { continue };
        let known = match shared.read() {
            Ok(g) => g.0.clone(),
            Err(e) => e.into_inner().0.clone(),
        };
        if master == known {
            continue;
        }
        match manager(&master).await {
            Ok(con) => {
                tracing::warn!(master = %redact(&master), "Redis master changed (Sentinel); switching");
                match shared.write() {
                    Ok(mut g) => *g = (master, con),
                    Err(e) => *e.into_inner() = (master, con),
                }
            }
            Err(e) => tracing::warn!(error = %e, "new Redis master not reachable yet"),
        }
    }
}

fn redact(url: &str) -> String {
    match url.split_once('@') {
        Some((_, host)) => format!("redis://***@{host}"),
        None => url.to_string(),
    }
}

async fn listen_for_changes(target: Target, version: watch::Sender<u64>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let client = match target.resolve().await {
            Ok(url) => redis::Client::open(url).ok(),
            Err(_) => None,
        };
        if let Some(mut pubsub) = match client {
            Some(c) => c.get_async_pubsub().await.ok(),
            None => None,
        } {
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

async fn reconcile(shared: Shared, version: watch::Sender<u64>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Ok(Some(v)) = current(&shared).get::<_, Option<u64>>(key("version")).await {
            version.send_if_modified(|cur| std::mem::replace(cur, v.max(*cur)) != v.max(*cur));
        }
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn apply(&self, cmd: Command, rules: &Rules, now_ms: u64) -> Result<(Outcome, Vec<Event>), StoreError> {
        let mut con = self.con();
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
                engine::ends(&state, rules).into_iter().filter_map(|(k, t)| t.map(|t| (t, k))).collect();
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
        let raw: Option<String> = self.con().get(key("state")).await.map_err(unavailable)?;
        match raw {
            Some(j) => serde_json::from_str(&j).map_err(|e| StoreError::Corrupt(e.to_string())),
            None => Ok(State::default()),
        }
    }

    async fn record_poll(&self, entry: FleetEntry) -> Result<(), StoreError> {
        let json = serde_json::to_string(&entry).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.con().hset::<_, _, _, ()>(key("fleet"), &entry.proxy, json).await.map_err(unavailable)
    }

    async fn fleet(&self) -> Result<Vec<FleetEntry>, StoreError> {
        let all: Vec<(String, String)> = self.con().hgetall(key("fleet")).await.map_err(unavailable)?;
        Ok(all.into_iter().filter_map(|(_, j)| serde_json::from_str(&j).ok()).collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        redis::cmd("PING").query_async::<String>(&mut self.con()).await.map(|_| ()).map_err(unavailable)
    }

    fn versions(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_parse() {
        assert_eq!(Target::parse("redis://h:6379/").unwrap(), Target::Direct("redis://h:6379/".into()));
        assert_eq!(
            Target::parse("redis+sentinel://:pw@s1:26379,s2:26379/mymaster/2").unwrap(),
            Target::Sentinel {
                sentinels: vec!["s1:26379".into(), "s2:26379".into()],
                master: "mymaster".into(),
                db: 2,
                password: Some("pw".into())
            }
        );
        assert!(Target::parse("redis+sentinel://s1:26379").is_err());
        assert!(Target::parse("redis+sentinel://s1:26379/").is_err());
        assert!(Target::parse("redis+sentinel:///m").is_err());
    }
}
