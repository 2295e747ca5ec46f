//! The Redis store: the whole activation state is one JSON value, written by a Lua script that
//! checks a revision first (optimistic concurrency: among concurrent writers on any replica,
//! exactly one wins each round and the others re-read and re-apply). The same script keeps the
//! deactivation queue (a sorted set) and the original service's keys (`collab:circuit_breaker:active`
//! and `:status`), publishes events on `collab:circuit_breaker:events` in the original shape, and
//! announces the new version on a changes channel that wakes the long-polls of every replica.
//! Pub/sub may drop messages, so each replica also re-reads the version every second.
//!
//! Floodgate's own keys share one hash tag (`collab:circuit_breaker:{floodgate}:...`), so the
//! script's keys live in one hash slot of a Redis Cluster. The original keys cannot carry that
//! tag (their names are fixed): on a cluster they are written right after the commit instead of
//! inside it.
//!
//! Every call gives up after [`OP_TIMEOUT`] (the service answers 503 within a second when Redis
//! cannot be reached). The connection is made in the background: a service started while Redis
//! is down comes up unready and becomes ready when Redis answers.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncCommands, Cmd, Pipeline, RedisFuture, Value};
use tokio::sync::watch;

use crate::engine::{self, Command, Event, Outcome, Rules, State};
use crate::legacy;
use crate::store::{FleetEntry, Store, StoreError, FLEET_TTL_MS, MAX_FLEET};

pub const PREFIX: &str = "collab:circuit_breaker:";
pub const EVENTS_CHANNEL: &str = "collab:circuit_breaker:events";
/// "1" while `*` is active (the original service's key).
pub const ACTIVE_KEY: &str = "collab:circuit_breaker:active";
/// The original status object of `*`, as JSON.
pub const STATUS_KEY: &str = "collab:circuit_breaker:status";
/// Floodgate's own keys: one hash tag, one cluster slot.
pub const TAGGED: &str = "collab:circuit_breaker:{floodgate}:";
/// Each commit publishes its new version here (what wakes the long-polls of every replica).
pub const CHANGES_CHANNEL: &str = "collab:circuit_breaker:{floodgate}:changes";
const MAX_ATTEMPTS: usize = 32;
/// Every store call answers within this (then: unavailable).
pub const OP_TIMEOUT: Duration = Duration::from_millis(600);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(400);

const COMMIT: &str = r#"
-- KEYS: state, rev, version, deactivations[, active, status]
-- ARGV: expected_rev, state_json, version, active, status_json, n_scheduled, (score, key)*,
--       events_channel, changes_channel, n_events, event*
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[3], ARGV[3])
if #KEYS >= 6 then
  if ARGV[4] == '1' then redis.call('SET', KEYS[5], '1') else redis.call('DEL', KEYS[5]) end
  redis.call('SET', KEYS[6], ARGV[5])
end
redis.call('DEL', KEYS[4])
local i = 7
for _ = 1, tonumber(ARGV[6]) do
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

/// Starts a new epoch in a store that lost its state (or never had one); one writer wins.
const INIT: &str = r#"
-- KEYS: state, rev, version[, active, status]   ARGV: state_json, version, status_json, changes_channel
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[3], ARGV[2])
if #KEYS >= 5 then
  redis.call('DEL', KEYS[4])
  redis.call('SET', KEYS[5], ARGV[3])
end
redis.call('PUBLISH', ARGV[4], ARGV[2])
return 1
"#;

/// A new version for the same state (compare-and-set on the revision).
const LIFT: &str = r#"
-- KEYS: state, rev, version   ARGV: expected_rev, state_json, version, changes_channel
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[3], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[3])
return 1
"#;

pub fn key(name: &str) -> String {
    format!("{TAGGED}{name}")
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// `url` with any password replaced by `***` (for logs and errors).
pub fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://***{}", &url[at..]),
        (None, Some(at)) => format!("***{}", &url[at..]),
        _ => url.to_string(),
    }
}

/// Where the store's Redis is: a `redis://` (or `rediss://`) URL; Sentinel:
/// `redis+sentinel://[:password@]host:port[,host:port...]/<master name>[/<db>]`; or a Redis
/// Cluster: `redis+cluster://[[user]:password@]host:port[,host:port...]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Direct(String),
    Sentinel { sentinels: Vec<String>, master: String, db: u32, password: Option<String> },
    Cluster { nodes: Vec<String> },
}

fn split_auth(rest: &str) -> (Option<String>, &str) {
    match rest.rsplit_once('@') {
        Some((a, r)) => (Some(a.to_string()), r),
        None => (None, rest),
    }
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, StoreError> {
        if let Some(rest) = url.strip_prefix("redis+cluster://") {
            let (auth, hosts) = split_auth(rest);
            let auth = auth.map(|a| format!("{a}@")).unwrap_or_default();
            let nodes: Vec<String> = hosts
                .trim_end_matches('/')
                .split(',')
                .filter(|h| !h.is_empty())
                .map(|h| format!("redis://{auth}{h}/"))
                .collect();
            if nodes.is_empty() {
                return Err(StoreError::Unavailable(format!("redis+cluster URL {}: no node address", redact(url))));
            }
            return Ok(Target::Cluster { nodes });
        }
        let Some(rest) = url.strip_prefix("redis+sentinel://") else {
            redis::parse_redis_url(url)
                .ok_or_else(|| StoreError::Unavailable(format!("Redis URL {}: not a redis:// URL", redact(url))))?;
            return Ok(Target::Direct(url.to_string()));
        };
        let bad = |why: &str| StoreError::Unavailable(format!("redis+sentinel URL {}: {why}", redact(url)));
        let (auth, rest) = split_auth(rest);
        let auth = auth.map(|a| a.trim_start_matches(':').to_string());
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

    /// The master's URL now (asks the sentinels in turn); for a cluster, its first node.
    pub async fn resolve(&self) -> Result<String, StoreError> {
        let (sentinels, master, db, password) = match self {
            Target::Direct(url) => return Ok(url.clone()),
            Target::Cluster { nodes } => {
                return nodes.first().cloned().ok_or(StoreError::Unavailable("no node".into()))
            }
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

    fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster { .. })
    }
}

/// A connection to one Redis (direct or Sentinel's master) or to a cluster.
#[derive(Clone)]
pub enum Con {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Con {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Con::Single(c) => c.req_packed_command(cmd),
            Con::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Con::Single(c) => c.req_packed_commands(cmd, offset, count),
            Con::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Con::Single(c) => c.get_db(),
            Con::Cluster(c) => c.get_db(),
        }
    }
}

async fn connect(target: &Target, url: &str) -> Result<Con, StoreError> {
    let made = async {
        match target {
            Target::Cluster { nodes } => {
                let client = redis::cluster::ClusterClient::builder(nodes.clone())
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(OP_TIMEOUT)
                    .retries(1)
                    .build()
                    .map_err(unavailable)?;
                client.get_async_connection().await.map(Con::Cluster).map_err(unavailable)
            }
            _ => {
                let client = redis::Client::open(url).map_err(unavailable)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_response_timeout(OP_TIMEOUT)
                    .set_number_of_retries(1)
                    .set_max_delay(500);
                ConnectionManager::new_with_config(client, config).await.map(Con::Single).map_err(unavailable)
            }
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT * 4, made).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Unavailable("connecting to Redis timed out".into())),
    }
}

/// The connection in use (`None` until the first one is made), with the URL it was made for;
/// replaced when Sentinel names a new master.
type Shared = Arc<RwLock<Option<(String, Con)>>>;

fn current(shared: &Shared) -> Option<(String, Con)> {
    match shared.read() {
        Ok(g) => g.clone(),
        Err(e) => e.into_inner().clone(),
    }
}

fn replace(shared: &Shared, value: (String, Con)) {
    match shared.write() {
        Ok(mut g) => *g = Some(value),
        Err(e) => *e.into_inner() = Some(value),
    }
}

/// Runs `f` within [`OP_TIMEOUT`].
async fn within<T>(f: impl std::future::Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    match tokio::time::timeout(OP_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Unavailable(format!("Redis did not answer within {OP_TIMEOUT:?}"))),
    }
}

pub struct RedisStore {
    target: Target,
    con: Shared,
    version: watch::Sender<u64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

/// The event as published on the channel: the original event object, or nothing for events the
/// original channel does not carry.
pub fn event_json(e: &Event) -> Option<String> {
    legacy::channel_event(e).and_then(|c| serde_json::to_string(&c).ok())
}

impl RedisStore {
    /// Starts connecting to `url` (see [`Target`]) and returns at once: until Redis answers,
    /// every call is unavailable (and `/ready` says so). With Sentinel, follows the master.
    pub async fn connect(url: &str) -> Result<RedisStore, StoreError> {
        let target = Target::parse(url)?;
        let con: Shared = Arc::new(RwLock::new(None));
        let (tx, _) = watch::channel(0u64);
        let mut store = RedisStore { target: target.clone(), con, version: tx, tasks: vec![] };
        // A first attempt inline, so a reachable Redis is used from the first request.
        if let Ok(master) = target.resolve().await {
            if let Ok(c) = connect(&target, &master).await {
                replace(&store.con, (master, c));
            }
        }
        if let Ok(v) = store.version().await {
            store.version.send_replace(v);
        }
        store.tasks.push(tokio::spawn(keep_connected(target.clone(), store.con.clone())));
        store.tasks.push(tokio::spawn(listen_for_changes(target.clone(), store.version.clone())));
        store.tasks.push(tokio::spawn(reconcile(target, store.con.clone(), store.version.clone())));
        Ok(store)
    }

    fn con(&self) -> Result<Con, StoreError> {
        current(&self.con).map(|c| c.1).ok_or_else(|| StoreError::Unavailable("not connected to Redis yet".into()))
    }
}

/// Connects when there is no connection yet, and (Sentinel) switches when the master moves.
async fn keep_connected(target: Target, shared: Shared) {
    loop {
        let known = current(&shared).map(|c| c.0);
        let follow = matches!(target, Target::Sentinel { .. });
        if known.is_none() || follow {
            if let Ok(master) = target.resolve().await {
                if known.as_deref() != Some(master.as_str()) {
                    match connect(&target, &master).await {
                        Ok(con) => {
                            if known.is_some() {
                                tracing::warn!(master = %redact(&master), "Redis master changed (Sentinel); switching");
                            } else {
                                tracing::info!(redis = %redact(&master), "connected to Redis");
                            }
                            replace(&shared, (master, con));
                        }
                        Err(e) => tracing::warn!(error = %e, "Redis not reachable yet"),
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn raise(version: &watch::Sender<u64>, v: u64) {
    version.send_if_modified(|cur| {
        let next = v.max(*cur);
        std::mem::replace(cur, next) != next
    });
}

async fn listen_for_changes(target: Target, version: watch::Sender<u64>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        // On a cluster, PUBLISH reaches every node: listening on one is enough.
        let client = match target.resolve().await {
            Ok(url) => redis::Client::open(url).ok(),
            Err(_) => None,
        };
        if let Some(mut pubsub) = match client {
            Some(c) => tokio::time::timeout(CONNECT_TIMEOUT * 4, c.get_async_pubsub()).await.ok().and_then(Result::ok),
            None => None,
        } {
            if pubsub.subscribe(CHANGES_CHANNEL).await.is_ok() {
                backoff = Duration::from_millis(100);
                let mut messages = pubsub.on_message();
                while let Some(msg) = messages.next().await {
                    if let Ok(v) = msg.get_payload::<String>().map(|s| s.parse::<u64>().unwrap_or(0)) {
                        raise(&version, v);
                    }
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Every second: the store's version (a lost state starts a new epoch here, so long-polls on
/// this replica wake up even when no write comes).
async fn reconcile(target: Target, shared: Shared, version: watch::Sender<u64>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some((_, con)) = current(&shared) else { continue };
        let floor = *version.borrow();
        if let Ok(v) = within(read_version(&target, con, floor)).await {
            raise(&version, v);
        }
    }
}

/// The version key, or a new epoch (above `floor`) when the state is gone or went back below
/// what this replica has seen (a restored backup, a failover to a replica that missed writes).
async fn read_version(target: &Target, mut con: Con, floor: u64) -> Result<u64, StoreError> {
    let v: Option<u64> = con.get(key("version")).await.map_err(unavailable)?;
    match v {
        Some(v) if v >= floor => Ok(v),
        Some(_) => {
            lift(&mut con, floor).await?;
            let v: Option<u64> = con.get(key("version")).await.map_err(unavailable)?;
            Ok(v.unwrap_or(0))
        }
        None => {
            init(target, &mut con, floor).await?;
            let v: Option<u64> = con.get(key("version")).await.map_err(unavailable)?;
            Ok(v.unwrap_or(0))
        }
    }
}

/// Moves a state whose version went back to a new epoch above `floor` (content unchanged).
async fn lift(con: &mut Con, floor: u64) -> Result<(), StoreError> {
    let (raw, rev): (Option<String>, Option<String>) =
        redis::pipe().get(key("state")).get(key("rev")).query_async(con).await.map_err(unavailable)?;
    let Some(raw) = raw else { return Ok(()) };
    let mut state: State = serde_json::from_str(&raw).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    if state.version >= floor {
        return Ok(());
    }
    let before = state.version;
    state.version = floodgate_core::version::next(floor, crate::now_ms());
    let json = serde_json::to_string(&state).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let won: i64 = redis::cmd("EVAL")
        .arg(LIFT)
        .arg(3)
        .arg(key("state"))
        .arg(key("rev"))
        .arg(key("version"))
        .arg(rev.unwrap_or_else(|| "0".into()))
        .arg(&json)
        .arg(state.version)
        .arg(CHANGES_CHANNEL)
        .query_async(con)
        .await
        .map_err(unavailable)?;
    if won == 1 {
        tracing::warn!(from = before, to = state.version, "the store's version went back: started a new epoch");
    }
    Ok(())
}

async fn init(target: &Target, con: &mut Con, floor: u64) -> Result<(), StoreError> {
    let now = crate::now_ms();
    let state = State::new(now, floor);
    let json = serde_json::to_string(&state).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let status = serde_json::to_string(&legacy::status(&state, &Rules::default(), now))
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let mut cmd = redis::cmd("EVAL");
    let cluster = target.is_cluster();
    cmd.arg(INIT).arg(if cluster { 3 } else { 5 }).arg(key("state")).arg(key("rev")).arg(key("version"));
    if !cluster {
        cmd.arg(ACTIVE_KEY).arg(STATUS_KEY);
    }
    cmd.arg(&json).arg(state.version).arg(&status).arg(CHANGES_CHANNEL);
    let won: i64 = cmd.query_async(con).await.map_err(unavailable)?;
    if won == 1 {
        tracing::warn!(version = state.version, "Redis held no state: started a new version epoch");
        if cluster {
            legacy_keys(con, false, &status).await?;
        }
    }
    Ok(())
}

/// The original keys, outside the commit (on a cluster, where they cannot share its slot, nor
/// one pipeline: each is its own command).
async fn legacy_keys(con: &mut Con, active: bool, status: &str) -> Result<(), StoreError> {
    if active {
        con.set::<_, _, ()>(ACTIVE_KEY, "1").await.map_err(unavailable)?;
    } else {
        con.del::<_, ()>(ACTIVE_KEY).await.map_err(unavailable)?;
    }
    con.set::<_, _, ()>(STATUS_KEY, status).await.map_err(unavailable)
}

impl RedisStore {
    async fn apply_inner(&self, cmd: Command, rules: &Rules, now_ms: u64) -> Result<(Outcome, Vec<Event>), StoreError> {
        let mut con = self.con()?;
        let cluster = self.target.is_cluster();
        for _ in 0..MAX_ATTEMPTS {
            let (raw, rev): (Option<String>, Option<String>) =
                redis::pipe().get(key("state")).get(key("rev")).query_async(&mut con).await.map_err(unavailable)?;
            let mut state: State = match &raw {
                Some(j) => serde_json::from_str(j).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                None => {
                    let floor = *self.version.borrow();
                    State::new(now_ms, floor)
                }
            };
            let floor = *self.version.borrow();
            if state.version < floor {
                state.version = floodgate_core::version::next(floor, now_ms);
            }
            let (outcome, events) = engine::apply(&mut state, cmd.clone(), rules, now_ms);
            let json = serde_json::to_string(&state).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if raw.as_deref() == Some(json.as_str()) {
                return Ok((outcome, events));
            }
            let active = state.activations.contains_key(legacy::KEY);
            let status = serde_json::to_string(&legacy::status(&state, rules, now_ms))
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let mut inv = redis::cmd("EVAL");
            inv.arg(COMMIT).arg(if cluster { 4 } else { 6 });
            inv.arg(key("state")).arg(key("rev")).arg(key("version")).arg(key("deactivations"));
            if !cluster {
                inv.arg(ACTIVE_KEY).arg(STATUS_KEY);
            }
            inv.arg(rev.unwrap_or_else(|| "0".into())).arg(&json).arg(state.version);
            inv.arg(if active { "1" } else { "0" }).arg(&status);
            let scheduled: Vec<_> =
                engine::ends(&state, rules).into_iter().filter_map(|(k, t)| t.map(|t| (t, k))).collect();
            inv.arg(scheduled.len());
            for (t, k) in &scheduled {
                inv.arg(*t).arg(k);
            }
            let published: Vec<String> = events.iter().filter_map(event_json).collect();
            inv.arg(EVENTS_CHANNEL).arg(CHANGES_CHANNEL).arg(published.len());
            for e in &published {
                inv.arg(e);
            }
            let won: i64 = inv.query_async(&mut con).await.map_err(unavailable)?;
            if won == 1 {
                if cluster {
                    legacy_keys(&mut con, active, &status).await?;
                }
                raise(&self.version, state.version);
                return Ok((outcome, events));
            }
        }
        Err(StoreError::Contended)
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn apply(&self, cmd: Command, rules: &Rules, now_ms: u64) -> Result<(Outcome, Vec<Event>), StoreError> {
        within(self.apply_inner(cmd, rules, now_ms)).await
    }

    async fn state(&self) -> Result<State, StoreError> {
        within(async {
            let mut con = self.con()?;
            let raw: Option<String> = con.get(key("state")).await.map_err(unavailable)?;
            let raw = match raw {
                Some(j) => Some(j),
                None => {
                    let floor = *self.version.borrow();
                    init(&self.target, &mut con, floor).await?;
                    con.get(key("state")).await.map_err(unavailable)?
                }
            };
            match raw {
                Some(j) => serde_json::from_str(&j).map_err(|e| StoreError::Corrupt(e.to_string())),
                None => Err(StoreError::Unavailable("the state vanished while being read".into())),
            }
        })
        .await
    }

    async fn version(&self) -> Result<u64, StoreError> {
        let floor = *self.version.borrow();
        let v = within(read_version(&self.target, self.con()?, floor)).await?;
        raise(&self.version, v);
        Ok(v)
    }

    async fn lift(&self, floor: u64) -> Result<u64, StoreError> {
        let floor = floor.max(*self.version.borrow());
        let v = within(read_version(&self.target, self.con()?, floor)).await?;
        raise(&self.version, v);
        Ok(v)
    }

    async fn record_poll(&self, entry: FleetEntry) -> Result<(), StoreError> {
        within(async {
            let mut con = self.con()?;
            let json = serde_json::to_string(&entry).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let (known, len): (bool, usize) = redis::pipe()
                .hexists(key("fleet"), &entry.proxy)
                .hlen(key("fleet"))
                .query_async(&mut con)
                .await
                .map_err(unavailable)?;
            if !known && len >= MAX_FLEET {
                let left = prune_fleet(&mut con, entry.last_poll_ms).await?;
                if left.len() >= MAX_FLEET {
                    return Ok(());
                }
            }
            con.hset::<_, _, _, ()>(key("fleet"), &entry.proxy, json).await.map_err(unavailable)
        })
        .await
    }

    async fn fleet(&self, now_ms: u64) -> Result<Vec<FleetEntry>, StoreError> {
        within(async { prune_fleet(&mut self.con()?, now_ms).await }).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        within(async {
            redis::cmd("PING").query_async::<String>(&mut self.con()?).await.map(|_| ()).map_err(unavailable)
        })
        .await
    }

    fn versions(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

/// The live fleet entries; expired (and unreadable) ones are deleted.
async fn prune_fleet(con: &mut Con, now_ms: u64) -> Result<Vec<FleetEntry>, StoreError> {
    let all: Vec<(String, String)> = con.hgetall(key("fleet")).await.map_err(unavailable)?;
    let mut live = vec![];
    let mut gone = vec![];
    for (proxy, j) in all {
        match serde_json::from_str::<FleetEntry>(&j) {
            Ok(e) if e.last_poll_ms.saturating_add(FLEET_TTL_MS) > now_ms => live.push(e),
            _ => gone.push(proxy),
        }
    }
    if !gone.is_empty() {
        con.hdel::<_, _, ()>(key("fleet"), gone).await.map_err(unavailable)?;
    }
    Ok(live)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls_parse() {
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
        assert_eq!(
            Target::parse("redis+cluster://:pw@a:7000,b:7001").unwrap(),
            Target::Cluster { nodes: vec!["redis://:pw@a:7000/".into(), "redis://:pw@b:7001/".into()] }
        );
        assert!(Target::parse("redis+sentinel://s1:26379").is_err());
        assert!(Target::parse("redis+sentinel://s1:26379/").is_err());
        assert!(Target::parse("redis+sentinel:///m").is_err());
        assert!(Target::parse("redis+cluster://").is_err());
        assert!(Target::parse("http://x").is_err());
    }

    #[test]
    fn errors_and_logs_never_show_a_password() {
        for url in ["redis+sentinel://:hunter2@s1:26379", "redis+cluster://u:hunter2@", "redis://:hunter2@h:1/x/y/z"] {
            if let Err(e) = Target::parse(url) {
                assert!(!e.to_string().contains("hunter2"), "{e}");
            }
            assert!(!redact(url).contains("hunter2"), "{}", redact(url));
        }
        assert_eq!(redact("redis://:pw@h:6379/0"), "redis://***@h:6379/0");
        assert_eq!(redact("redis://h:6379/0"), "redis://h:6379/0");
    }

    #[test]
    fn every_floodgate_key_is_in_one_hash_slot() {
        let slot = |k: &str| redis::cluster_routing::get_slot(k.as_bytes());
        let s = slot(&key("state"));
        for name in ["rev", "version", "deactivations", "fleet"] {
            assert_eq!(slot(&key(name)), s, "{name}");
        }
        assert!(key("state").starts_with(PREFIX));
    }
}
