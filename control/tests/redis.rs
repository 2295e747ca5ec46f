//! The Redis store against a real `redis-server`: atomicity across replicas, the hourly cap,
//! deactivation firing once, restarts, cross-replica wake-ups, and Redis outages.
// Test code throughout: clippy.toml lets it unwrap, expect and panic.
#![cfg(test)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::*;
use floodgate_control::engine::{Command, Forced, Rules};
use floodgate_control::redis_store::{RedisStore, CHANGES_CHANNEL, EVENTS_CHANNEL};
use floodgate_control::store::Store;
use futures_util::StreamExt;

async fn replica(redis: &RedisServer, rules: Rules) -> (Arc<dyn Store>, axum::Router) {
    let store: Arc<dyn Store> = Arc::new(RedisStore::connect(&redis.url()).await.unwrap());
    let router = app_for(state(store.clone(), rules));
    (store, router)
}

#[tokio::test]
async fn concurrent_webhooks_on_two_replicas_activate_exactly_once() {
    let redis = RedisServer::start();
    let (store, a) = replica(&redis, Rules::default()).await;
    let (_, b) = replica(&redis, Rules::default()).await;
    let calls = (0..20).map(|i| {
        let r = if i % 2 == 0 { a.clone() } else { b.clone() };
        async move {
            let body =
                alert("firing", "CollaborationBackpressureCritical", Some("collab_ws"), "99%", &format!("fp{i}"));
            call(&r, "POST", "/webhook/alertmanager", bearer(), &body).await
        }
    });
    let results = futures_util::future::join_all(calls).await;
    let activated = results
        .iter()
        .filter(|(s, j, _)| *s == StatusCode::OK && j["results"][0]["outcome"]["result"] == "activated")
        .count();
    assert_eq!(activated, 1, "{results:?}");
    let st = store.state().await.unwrap();
    assert_eq!(st.events.iter().filter(|e| e.kind == "activated").count(), 1);
}

#[tokio::test]
async fn the_hourly_cap_holds_across_replicas() {
    let redis = RedisServer::start();
    let rules = Rules { max_activations_per_hour: 3, cooldown_ms: 0, ..Rules::default() };
    let (sa, _) = replica(&redis, rules.clone()).await;
    let (sb, _) = replica(&redis, rules.clone()).await;
    let mut outcomes = vec![];
    for i in 0..6 {
        let s = if i % 2 == 0 { &sa } else { &sb };
        let cmd = Command::Activate {
            key: format!("k{i}"),
            reason: "m".into(),
            state: Forced::ForcedOpen,
            ttl_ms: None,
            level: None,
        };
        outcomes.push(s.apply(cmd, &rules, floodgate_control::now_ms()).await.unwrap().0);
    }
    let activated =
        outcomes.iter().filter(|o| matches!(o, floodgate_control::engine::Outcome::Activated { .. })).count();
    assert_eq!(activated, 3, "{outcomes:?}");
}

#[tokio::test]
async fn a_scheduled_deactivation_fires_once_with_two_replicas_running() {
    let redis = RedisServer::start();
    let rules = Rules { deactivation_delay_ms: 500, ..Rules::default() };
    let (sa, ra) = replica(&redis, rules.clone()).await;
    let (_sb, rb) = replica(&redis, rules.clone()).await;
    // Listen to the events channel as the original subscribers do.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(EVENTS_CHANNEL).await.unwrap();
    // The global breaker (`*`, no breaker label): the one the original channel carries.
    let fire = alert("firing", "CollaborationBackpressureCritical", None, "97%", "fp");
    call(&ra, "POST", "/webhook/alertmanager", bearer(), &fire).await;
    let resolve = alert("resolved", "CollaborationBackpressureCritical", None, "97%", "fp");
    call(&rb, "POST", "/webhook/alertmanager", bearer(), &resolve).await;
    // Both replicas run their expiry loop.
    let loops: Vec<_> = [ra.clone(), rb.clone()]
        .into_iter()
        .zip([sa.clone(), _sb.clone()])
        .map(|(_, st)| tokio::spawn(floodgate_control::expiry_loop(state(st, rules.clone()))))
        .collect();
    let mut messages = pubsub.on_message();
    let mut kinds = vec![];
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(200), messages.next()).await {
            Ok(Some(m)) => {
                let v: serde_json::Value = serde_json::from_str(&m.get_payload::<String>().unwrap()).unwrap();
                kinds.push(v["event_type"].as_str().unwrap().to_string());
                assert!(v["timestamp"].is_string() && v["key"] == "*", "{v}");
            }
            _ => continue,
        }
    }
    loops.iter().for_each(|l| l.abort());
    assert_eq!(kinds.iter().filter(|k| *k == "deactivate").count(), 1, "{kinds:?}");
    assert_eq!(kinds.first().map(String::as_str), Some("activate"));
    assert!(sa.state().await.unwrap().activations.is_empty());
    let zcard: u64 = redis::cmd("ZCARD")
        .arg(floodgate_control::redis_store::key("deactivations"))
        .query_async(&mut client.get_multiplexed_async_connection().await.unwrap())
        .await
        .unwrap();
    assert_eq!(zcard, 0, "the deactivation queue is empty after it fired");
}

#[tokio::test]
async fn state_survives_a_restart_of_the_service() {
    let redis = RedisServer::start();
    let before = {
        let (_, r) = replica(&redis, Rules::default()).await;
        assert_eq!(
            call(&r, "POST", "/api/v1/breakers/collab_ws/activate", bearer(), r#"{"reason":"drill"}"#).await.0,
            StatusCode::OK
        );
        call(&r, "GET", "/v1/snapshot", bearer(), "").await.1["version"].clone()
    };
    let (_, r) = replica(&redis, Rules::default()).await;
    let (_, snap, _) = call(&r, "GET", "/v1/snapshot", bearer(), "").await;
    assert_eq!(snap["breakers"][0]["key"], "collab_ws");
    assert_eq!(snap["version"], before);
}

#[tokio::test]
async fn an_activation_on_one_replica_wakes_a_long_poll_on_the_other_within_100ms() {
    let redis = RedisServer::start();
    let (_, a) = replica(&redis, Rules::default()).await;
    let (_, b) = replica(&redis, Rules::default()).await;
    let v0 = call(&b, "GET", "/v1/snapshot", bearer(), "").await.1["version"].as_u64().unwrap();
    let waiter = tokio::spawn(async move {
        let uri = format!("/v1/snapshot?version={v0}&wait=30");
        let (status, json, _) = call(&b, "GET", &uri, bearer(), "").await;
        (status, json, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await; // let the poll start waiting
    let sent = Instant::now();
    call(&a, "POST", "/api/v1/breakers/ws/activate", bearer(), "").await;
    let (status, json, woke) = waiter.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["breakers"][0]["key"], "ws");
    let latency = woke.duration_since(sent);
    println!("cross-replica wake-up: {latency:?}");
    assert!(latency < Duration::from_millis(100), "woke after {latency:?}");
}

#[tokio::test]
async fn a_redis_outage_answers_503_and_the_service_recovers_by_itself() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let (_, r) = replica(&redis, Rules::default()).await;
    assert_eq!(call(&r, "GET", "/ready", None, "").await.0, StatusCode::OK);
    redis.stop();
    let fire = alert("firing", "CollaborationBackpressureCritical", Some("ws"), "97%", "fp");
    let (status, json, _) = call(&r, "POST", "/webhook/alertmanager", bearer(), &fire).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{json}");
    assert_eq!(call(&r, "GET", "/ready", None, "").await.0, StatusCode::SERVICE_UNAVAILABLE);
    let _redis2 = RedisServer::start_on(port);
    eventually(15, "the service to reach Redis again", async || {
        call(&r, "POST", "/webhook/alertmanager", bearer(), &fire).await.0 == StatusCode::OK
    })
    .await;
    assert_eq!(call(&r, "GET", "/ready", None, "").await.0, StatusCode::OK);
}

#[tokio::test]
async fn with_sentinel_the_service_follows_a_failover() {
    let master = RedisServer::start();
    let replica_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let replica_of = master.port.to_string();
    let replica_node = RedisServer::start_with(replica_port, &["--replicaof", "127.0.0.1", &replica_of]);
    let sentinel = Sentinel::start(master.port);
    let url = format!("redis+sentinel://127.0.0.1:{}/mymaster", sentinel.port);
    let store: Arc<dyn Store> = Arc::new(RedisStore::connect(&url).await.unwrap());
    let router = app_for(state(store.clone(), Rules { cooldown_ms: 0, ..Rules::default() }));
    let (s, _, _) = call(&router, "POST", "/api/v1/breakers/collab_ws/activate", bearer(), "{}").await;
    assert_eq!(s, StatusCode::OK);
    // Wait until the replica has the activation and Sentinel knows it, then fail over.
    eventually(20, "the sentinel to see the replica", async || {
        matches!(sentinel.command(&["SENTINEL", "replicas", "mymaster"]).await, redis::Value::Array(ref v) if !v.is_empty())
    })
    .await;
    eventually(20, "a failover to be accepted", async || {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", sentinel.port)).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("SENTINEL").arg("failover").arg("mymaster").query_async::<redis::Value>(&mut con).await.is_ok()
    })
    .await;
    eventually(30, "the replica to become master", async || {
        let addr = sentinel.command(&["SENTINEL", "get-master-addr-by-name", "mymaster"]).await;
        format!("{addr:?}").contains(&replica_port.to_string())
    })
    .await;
    // The service writes to the new master: the old activation is there, and a new one lands.
    eventually(30, "a write through the new master", async || {
        let (s, _, _) = call(&router, "POST", "/api/v1/breakers/chat_ws/activate", bearer(), "{}").await;
        s == StatusCode::OK
    })
    .await;
    let st = store.state().await.unwrap();
    assert!(st.activations.contains_key("collab_ws") && st.activations.contains_key("chat_ws"), "{st:?}");
    drop(replica_node);
}

async fn snapshot_version(r: &axum::Router) -> u64 {
    call(r, "GET", "/v1/snapshot", bearer(), "").await.1["version"].as_u64().unwrap()
}

async fn redis_cmd(redis: &RedisServer, args: &[&str]) -> redis::Value {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(&mut con).await.unwrap()
}

/// What a proxy holding `held` makes of a poll: it must get a newer version, never a 304 on the
/// old content nor an older number.
async fn a_proxy_holding(r: &axum::Router, held: u64) -> (StatusCode, serde_json::Value, Duration) {
    let t = Instant::now();
    let (status, snap, _) = call(r, "GET", &format!("/v1/snapshot?version={held}&wait=3"), bearer(), "").await;
    (status, snap, t.elapsed())
}

#[tokio::test]
async fn flushall_never_makes_a_proxys_version_stale() {
    let redis = RedisServer::start();
    let (_, a) = replica(&redis, Rules::default()).await;
    call(&a, "POST", "/api/v1/breakers/collab_ws/activate", bearer(), "").await;
    let held = snapshot_version(&a).await;
    redis_cmd(&redis, &["FLUSHALL"]).await;
    let (status, snap, took) = a_proxy_holding(&a, held).await;
    assert_eq!(status, StatusCode::OK, "after FLUSHALL the replica must not confirm version {held}: {snap}");
    let new = snap["version"].as_u64().unwrap();
    assert!(new > held, "a new epoch above {held}: {new}");
    assert_eq!(snap["breakers"], serde_json::json!([]), "the store lost the activation: {snap}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // The filter follows at once (its view is live: no waiting for stale_after_s).
    let view = floodgate_core::remote::RemoteView {
        version: held,
        confirmed_ms: floodgate_control::now_ms(),
        ..Default::default()
    };
    let parsed = floodgate_core::remote::parse_snapshot(snap.to_string().as_bytes()).unwrap();
    assert_eq!(view.apply(parsed, floodgate_control::now_ms(), 120_000).unwrap().version, new);
    // A replica started after the loss (it never saw `held`) agrees, and writes go on above it.
    let (_, b) = replica(&redis, Rules::default()).await;
    assert_eq!(snapshot_version(&b).await, new);
    call(&b, "POST", "/api/v1/breakers/chat/activate", bearer(), "").await;
    assert!(snapshot_version(&a).await > new);
}

#[tokio::test]
async fn a_redis_restart_without_persistence_never_makes_a_proxys_version_stale() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let (_, a) = replica(&redis, Rules::default()).await;
    call(&a, "POST", "/api/v1/breakers/collab_ws/activate", bearer(), "").await;
    let held = snapshot_version(&a).await;
    redis.stop();
    let redis = RedisServer::start_on(port);
    let mut last = None;
    eventually(15, "the replica to serve a new epoch", async || {
        let (status, snap, _) = a_proxy_holding(&a, held).await;
        assert_ne!(status, StatusCode::NOT_MODIFIED, "confirmed version {held} of a store that lost it");
        last = Some(snap.clone());
        status == StatusCode::OK
    })
    .await;
    let snap = last.unwrap();
    assert!(snap["version"].as_u64().unwrap() > held, "{snap} after {held}");
    assert_eq!(snap["breakers"], serde_json::json!([]));
    drop(redis);
}

#[tokio::test]
async fn concurrent_writers_on_two_replicas_issue_strictly_growing_versions() {
    let redis = RedisServer::start();
    let rules = Rules { cooldown_ms: 0, max_activations_per_hour: u32::MAX, ..Rules::default() };
    let (_, a) = replica(&redis, rules.clone()).await;
    let (_, b) = replica(&redis, rules).await;
    // Every commit publishes its version, in commit order: a subscriber sees them all.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(CHANGES_CHANNEL).await.unwrap();
    let start = snapshot_version(&a).await;
    let calls = (0..20).map(|i| {
        let r = if i % 2 == 0 { a.clone() } else { b.clone() };
        async move {
            let (status, _, text) = call(&r, "POST", &format!("/api/v1/breakers/k{i}/activate"), bearer(), "").await;
            assert_eq!(status, StatusCode::OK, "{text}");
            snapshot_version(&r).await
        }
    });
    let seen = futures_util::future::join_all(calls).await;
    let last = snapshot_version(&a).await;
    assert!(seen.iter().all(|&v| v > start && v <= last), "{seen:?} within ({start}, {last}]");
    let mut published = vec![];
    let mut messages = pubsub.on_message();
    while published.len() < 20 {
        let msg = tokio::time::timeout(Duration::from_secs(5), messages.next()).await.expect("20 commits published");
        published.push(msg.unwrap().get_payload::<String>().unwrap().parse::<u64>().unwrap());
    }
    // Each activation produced its own version: 20 writes, 20 versions, strictly growing in
    // commit order (so all distinct), the last one the store's.
    assert!(published.windows(2).all(|w| w[0] < w[1]), "not strictly growing: {published:?}");
    assert!(published[0] > start, "{published:?} after {start}");
    assert_eq!(*published.last().unwrap(), last, "{published:?}");
    let st: serde_json::Value = call(&a, "GET", "/api/v1/breakers", bearer(), "").await.1;
    assert_eq!(st["activations"].as_array().unwrap().len(), 20);
}

#[tokio::test]
async fn a_hung_redis_is_answered_within_one_second_by_polls_that_carry_the_proxy_header() {
    use axum::body::Body;
    use tower::ServiceExt;
    let redis = RedisServer::start();
    let (_, r) = replica(&redis, Rules::default()).await;
    let held = snapshot_version(&r).await;
    // Hung, not refused: connections stay open and nothing answers.
    redis.signal("STOP");
    let held_poll = format!("/v1/snapshot?version={held}&wait=20");
    for uri in [held_poll.as_str(), "/v1/snapshot"] {
        for attempt in 0..3 {
            let req = axum::http::Request::get(uri)
                .header("authorization", "Bearer s3cret")
                .header(floodgate_core::wire::PROXY_HEADER, "envoy-1")
                .header(floodgate_core::wire::FLEET_HEADER, "collab_ws=closed")
                .body(Body::empty())
                .unwrap();
            let t = Instant::now();
            let status = r.clone().oneshot(req).await.unwrap().status();
            let took = t.elapsed();
            println!("hung: {uri} attempt {attempt}: {status} in {took:?}");
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{uri}");
            assert!(took < Duration::from_secs(1), "{uri} took {took:?}");
        }
    }
    redis.signal("CONT");
    eventually(10, "polls to answer again", async || {
        call(&r, "GET", "/v1/snapshot", bearer(), "").await.0 == StatusCode::OK
    })
    .await;
}

#[tokio::test]
async fn a_redis_outage_is_answered_within_one_second() {
    let mut redis = RedisServer::start();
    let (_, r) = replica(&redis, Rules::default()).await;
    let held = snapshot_version(&r).await;
    redis.stop();
    let fire = alert("firing", "CollaborationBackpressureCritical", Some("ws"), "97%", "fp");
    let held_poll = format!("/v1/snapshot?version={held}&wait=20");
    for (method, uri, body) in [
        ("POST", "/webhook/alertmanager", fire.as_str()),
        ("GET", "/ready", ""),
        ("GET", held_poll.as_str(), ""),
        ("GET", "/v1/snapshot", ""),
        ("POST", "/api/v1/breakers/ws/activate", ""),
        ("GET", "/api/circuit-breaker/status", ""),
    ] {
        for attempt in 0..3 {
            let t = Instant::now();
            let (status, json, _) = call(&r, method, uri, bearer(), body).await;
            let took = t.elapsed();
            println!("outage: {method} {uri} attempt {attempt}: {status} in {took:?}");
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{method} {uri}: {json}");
            assert!(took < Duration::from_secs(1), "{method} {uri} took {took:?}");
        }
    }
}

#[tokio::test]
async fn started_while_redis_is_down_the_service_is_unready_until_redis_answers() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let t = Instant::now();
    let store: Arc<dyn Store> =
        Arc::new(RedisStore::connect(&format!("redis://127.0.0.1:{port}/")).await.expect("comes up without Redis"));
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let r = app_for(state(store, Rules::default()));
    let t = Instant::now();
    assert_eq!(call(&r, "GET", "/ready", None, "").await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(call(&r, "GET", "/health", None, "").await.0, StatusCode::OK);
    let fire = alert("firing", "CollaborationBackpressureCritical", Some("ws"), "97%", "fp");
    assert_eq!(call(&r, "POST", "/webhook/alertmanager", bearer(), &fire).await.0, StatusCode::SERVICE_UNAVAILABLE);
    let _redis = RedisServer::start_on(port);
    eventually(10, "ready once Redis answers", async || call(&r, "GET", "/ready", None, "").await.0 == StatusCode::OK)
        .await;
    assert_eq!(call(&r, "POST", "/webhook/alertmanager", bearer(), &fire).await.0, StatusCode::OK);
    assert!(snapshot_version(&r).await > 1_700_000_000_000_000);
}

/// The original service's status object, as its callers read it.
#[derive(serde::Deserialize, Debug)]
struct OriginalStatus {
    state: String,
    activated_at: Option<String>,
    deactivated_at: Option<String>,
    activation_reason: Option<String>,
    activation_count_last_hour: u32,
    last_backpressure_level: Option<f64>,
    grace_period_ends_at: Option<String>,
    scheduled_deactivation_at: Option<String>,
}

/// The original event object, as its subscribers parse it.
#[derive(serde::Deserialize, Debug)]
struct OriginalEvent {
    event_id: String,
    event_type: String,
    timestamp: String,
    reason: String,
    backpressure_level: Option<f64>,
    metadata: std::collections::HashMap<String, serde_json::Value>,
}

fn is_time(t: &Option<String>) -> bool {
    t.as_deref().and_then(floodgate_core::time::parse_rfc3339_ms).is_some()
}

#[tokio::test]
async fn the_original_keys_and_channel_keep_their_shapes() {
    let redis = RedisServer::start();
    let (_, r) = replica(&redis, Rules::default()).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(EVENTS_CHANNEL).await.unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let status_key = async |con: &mut redis::aio::MultiplexedConnection| -> OriginalStatus {
        let raw: String = redis::cmd("GET").arg("collab:circuit_breaker:status").query_async(con).await.unwrap();
        serde_json::from_str(&raw).unwrap()
    };
    let active_key = async |con: &mut redis::aio::MultiplexedConnection| -> Option<String> {
        redis::cmd("GET").arg("collab:circuit_breaker:active").query_async(con).await.unwrap()
    };

    let body = r#"{"reason":"backpressure_critical","backpressure_level":0.975,"extra":"ignored"}"#;
    let (status, json, _) = call(&r, "POST", "/api/circuit-breaker/activate", bearer(), body).await;
    assert_eq!((status, json["status"].as_str()), (StatusCode::OK, Some("activated")), "{json}");
    assert!(json["message"].is_string());
    assert_eq!(active_key(&mut con).await.as_deref(), Some("1"));
    let st = status_key(&mut con).await;
    assert_eq!((st.state.as_str(), st.activation_reason.as_deref()), ("open", Some("backpressure_critical")));
    assert!(is_time(&st.activated_at) && is_time(&st.grace_period_ends_at), "{st:?}");
    assert_eq!((st.activation_count_last_hour, st.last_backpressure_level), (1, Some(0.975)));
    assert!(st.scheduled_deactivation_at.is_none() && st.deactivated_at.is_none(), "{st:?}");

    let (_, json, _) = call(&r, "POST", "/api/circuit-breaker/activate", bearer(), "").await;
    assert_eq!(json["status"], "skipped");
    let (_, json, _) = call(&r, "POST", "/api/circuit-breaker/deactivate", bearer(), "").await;
    assert_eq!(json["status"], "deactivated");
    let (_, json, _) = call(&r, "POST", "/api/circuit-breaker/deactivate", bearer(), "").await;
    assert_eq!(json["status"], "skipped");
    assert_eq!(active_key(&mut con).await, None);
    let st = status_key(&mut con).await;
    assert_eq!(st.state, "closed");
    assert!(is_time(&st.deactivated_at) && st.activated_at.is_none(), "{st:?}");

    // The HTTP status object is the same object.
    let (_, http, _) = call(&r, "GET", "/api/circuit-breaker/status", bearer(), "").await;
    let http: OriginalStatus = serde_json::from_value(http).unwrap();
    assert_eq!(http.state, "closed");

    let mut messages = pubsub.on_message();
    let mut events = vec![];
    while events.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(3), messages.next()).await.unwrap().unwrap();
        let e: OriginalEvent = serde_json::from_str(&m.get_payload::<String>().unwrap()).unwrap();
        assert!(floodgate_core::time::parse_rfc3339_ms(&e.timestamp).is_some(), "{e:?}");
        assert!(!e.event_id.is_empty());
        events.push(e);
    }
    assert_eq!(events.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>(), ["activate", "deactivate"]);
    assert_eq!(events[0].reason, "backpressure_critical");
    assert_eq!(events[0].backpressure_level, Some(0.975));
    assert_eq!(events[0].metadata["key"], "*");
    // Nothing else was published (each event once).
    assert!(tokio::time::timeout(Duration::from_millis(300), messages.next()).await.is_err());
}

#[tokio::test]
async fn a_store_whose_version_went_back_never_makes_a_proxys_version_stale() {
    // A restored backup, or a Sentinel failover to a replica that missed the last writes.
    let redis = RedisServer::start();
    let (_, a) = replica(&redis, Rules::default()).await;
    call(&a, "POST", "/api/v1/breakers/one/activate", bearer(), "").await;
    let state_key = floodgate_control::redis_store::key("state");
    let version_key = floodgate_control::redis_store::key("version");
    let backup_state = match redis_cmd(&redis, &["GET", &state_key]).await {
        redis::Value::BulkString(b) => String::from_utf8(b).unwrap(),
        other => panic!("{other:?}"),
    };
    let backup_version = snapshot_version(&a).await.to_string();
    call(&a, "POST", "/api/v1/breakers/two/activate", bearer(), "").await;
    let held = snapshot_version(&a).await;
    redis_cmd(&redis, &["SET", &state_key, &backup_state]).await;
    redis_cmd(&redis, &["SET", &version_key, &backup_version]).await;
    let (status, snap, took) = a_proxy_holding(&a, held).await;
    assert_eq!(status, StatusCode::OK, "{snap}");
    assert!(snap["version"].as_u64().unwrap() > held, "{snap} after {held}");
    assert_eq!(snap["breakers"].as_array().unwrap().len(), 1, "the restored content: {snap}");
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[tokio::test]
async fn events_of_other_keys_never_reach_the_original_channel() {
    let redis = RedisServer::start();
    let (_, r) = replica(&redis, Rules { cooldown_ms: 0, ..Rules::default() }).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(EVENTS_CHANNEL).await.unwrap();
    // A breaker for one backend: the original subscribers would read it as the whole service.
    call(&r, "POST", "/api/v1/breakers/collab_ws/activate", bearer(), "").await;
    let fire = alert("firing", "CollaborationBackpressureCritical", Some("chat_ws"), "97%", "fp-chat");
    call(&r, "POST", "/webhook/alertmanager", bearer(), &fire).await;
    call(&r, "POST", "/api/v1/breakers/collab_ws/deactivate", bearer(), "").await;
    // The global one, as the original service had.
    call(&r, "POST", "/api/v1/breakers/*/activate", bearer(), "").await;
    let mut messages = pubsub.on_message();
    let m = tokio::time::timeout(Duration::from_secs(3), messages.next()).await.unwrap().unwrap();
    let e: serde_json::Value = serde_json::from_str(&m.get_payload::<String>().unwrap()).unwrap();
    assert_eq!((e["event_type"].as_str(), e["key"].as_str()), (Some("activate"), Some("*")), "{e}");
    assert!(tokio::time::timeout(Duration::from_millis(300), messages.next()).await.is_err(), "only `*` events");
    // The others are kept for the API.
    let (_, list, _) = call(&r, "GET", "/api/v1/breakers", bearer(), "").await;
    let keys: Vec<&str> = list["events"].as_array().unwrap().iter().filter_map(|e| e["key"].as_str()).collect();
    assert!(keys.contains(&"collab_ws") && keys.contains(&"chat_ws"), "{list}");
}
