//! `POST /api/v1/breakers/{key}/drain` through the router, on the memory store and on a real
//! Redis shared by two replicas: a `draining` entry in the snapshot with `per_second` and
//! `until`, a version that moves when it starts and when it ends, body and key checks naming the
//! field, token scopes, a fast 503 when the store is down, and `ctl drain`.
// Test code throughout: clippy.toml lets it unwrap, expect and panic.
#![cfg(test)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::*;
use floodgate_control::engine::{Command, Rules};
use floodgate_control::redis_store::RedisStore;
use floodgate_control::store::{MemoryStore, Store};
use floodgate_core::time::parse_rfc3339_ms;

const URI: &str = "/api/v1/breakers/collab_ws/drain";

async fn snapshot(r: &axum::Router) -> serde_json::Value {
    let (status, snap, _) = call(r, "GET", "/v1/snapshot", bearer(), "").await;
    assert_eq!(status, StatusCode::OK);
    snap
}

/// Starts a drain through `post`, checks the entry `read` serves, then ends it (the expiry pass
/// `store` runs, as if `duration_s` had passed) and checks it left: shared by both stores.
async fn drain_travels_and_leaves(store: Arc<dyn Store>, post: &axum::Router, read: &axum::Router) {
    let v0 = snapshot(read).await["version"].as_u64().unwrap();
    let (status, json, _) = call(post, "POST", URI, bearer(), r#"{"per_second": 20, "duration_s": 10}"#).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["outcome"]["result"], "draining");
    assert_eq!(json["outcome"]["per_second"], 20);
    let event_id = json["outcome"]["event_id"].as_str().unwrap().to_string();
    let snap = snapshot(read).await;
    assert!(snap["version"].as_u64().unwrap() > v0, "a drain moves the version: {snap}");
    let e = &snap["breakers"][0];
    assert_eq!((e["key"].as_str(), e["state"].as_str()), (Some("collab_ws"), Some("draining")), "{snap}");
    assert_eq!(e["per_second"], 20);
    assert_eq!(e["event_id"], event_id.as_str());
    let since = parse_rfc3339_ms(e["since"].as_str().unwrap()).unwrap();
    let until = parse_rfc3339_ms(e["until"].as_str().unwrap()).unwrap();
    assert_eq!(until - since, 10_000, "until is duration_s after it started");
    // The filter's parser finds it (the contract's other side).
    let drains = floodgate_core::drain::parse_drains(snap.to_string().as_bytes());
    assert_eq!(drains.len(), 1);
    assert_eq!((drains[0].per_second, drains[0].until_ms), (20, until));
    // The listing shows it in progress.
    let (_, list, _) = call(read, "GET", "/api/v1/breakers", bearer(), "").await;
    assert_eq!(list["drains"][0]["key"], "collab_ws", "{list}");
    assert_eq!(list["events"][0]["type"], "draining", "{list}");
    // Past its end the expiry pass removes it, and the version moves again.
    let v1 = snap["version"].as_u64().unwrap();
    // (`until` is in whole seconds: the drain ends within the second after it.)
    store.apply(Command::Expire, &Rules::default(), until + 1_000).await.unwrap();
    let after = snapshot(read).await;
    assert!(after["version"].as_u64().unwrap() > v1, "{after}");
    assert_eq!(after["breakers"].as_array().unwrap().len(), 0, "{after}");
}

#[tokio::test]
async fn a_drain_travels_in_the_snapshot_with_its_pace_and_end_then_leaves() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let r = app_for(state(store.clone(), Rules::default()));
    drain_travels_and_leaves(store, &r, &r).await;
}

#[tokio::test]
async fn a_drain_posted_to_one_redis_replica_is_served_by_the_other_and_leaves_when_it_ends() {
    let redis = RedisServer::start();
    let a: Arc<dyn Store> = Arc::new(RedisStore::connect(&redis.url()).await.unwrap());
    let b: Arc<dyn Store> = Arc::new(RedisStore::connect(&redis.url()).await.unwrap());
    let (ra, rb) = (app_for(state(a, Rules::default())), app_for(state(b.clone(), Rules::default())));
    drain_travels_and_leaves(b, &ra, &rb).await;
}

#[tokio::test]
async fn a_drain_wakes_a_long_poll() {
    let r = app_for(state(Arc::new(MemoryStore::default()), Rules::default()));
    let v = snapshot(&r).await["version"].as_u64().unwrap();
    let waiter = {
        let r = r.clone();
        tokio::spawn(async move { call(&r, "GET", &format!("/v1/snapshot?version={v}&wait=20"), bearer(), "").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent = Instant::now();
    call(&r, "POST", "/api/v1/breakers/%2A/drain", bearer(), r#"{"per_second": 5, "duration_s": 60}"#).await;
    let (status, snap, _) = waiter.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(sent.elapsed() < Duration::from_secs(2));
    assert_eq!(snap["breakers"][0]["key"], "*", "{snap}");
    assert_eq!(snap["breakers"][0]["state"], "draining", "{snap}");
}

#[tokio::test]
async fn a_malformed_drain_is_refused_with_400_naming_the_field_and_changes_nothing() {
    let r = app_for(state(Arc::new(MemoryStore::default()), Rules::default()));
    let before = snapshot(&r).await;
    let cases = [
        ("", "per_second"),
        (r#"{"duration_s": 10}"#, "per_second"),
        (r#"{"per_second": 20}"#, "duration_s"),
        (r#"{"per_second": 0, "duration_s": 10}"#, "per_second"),
        (r#"{"per_second": 10001, "duration_s": 10}"#, "per_second"),
        (r#"{"per_second": -1, "duration_s": 10}"#, "per_second"),
        (r#"{"per_second": "20", "duration_s": 10}"#, "per_second"),
        (r#"{"per_second": 20, "duration_s": 0}"#, "duration_s"),
        (r#"{"per_second": 20, "duration_s": 2592001}"#, "duration_s"),
        (r#"{"per_second": 20, "duration_s": 10, "ttl_s": 5}"#, "ttl_s"),
        (r#"{"per_second": 20, "duration_s": 10, "reason": "\u0007"}"#, "reason"),
        ("{nope", "invalid drain body"),
    ];
    for (body, field) in cases {
        let (status, json, _) = call(&r, "POST", URI, bearer(), body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {json}");
        assert!(json["error"].as_str().unwrap().contains(field), "{body}: {json} does not name {field}");
    }
    for bad_key in ["a%20b", &"k".repeat(257)] {
        let uri = format!("/api/v1/breakers/{bad_key}/drain");
        let (status, json, _) = call(&r, "POST", &uri, bearer(), r#"{"per_second":1,"duration_s":1}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
        assert!(json["error"].as_str().unwrap().starts_with("key:"), "{json}");
    }
    assert_eq!(snapshot(&r).await, before);
}

#[tokio::test]
async fn only_the_admin_token_may_drain() {
    let r = app_for(state(Arc::new(MemoryStore::default()), Rules::default()));
    let body = r#"{"per_second": 20, "duration_s": 10}"#;
    assert_eq!(call(&r, "POST", URI, None, body).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(call(&r, "POST", URI, Some("Bearer nope"), body).await.0, StatusCode::FORBIDDEN);
    let poll = format!("Bearer {POLL_TOKEN}");
    assert_eq!(call(&r, "POST", URI, Some(&poll), body).await.0, StatusCode::FORBIDDEN);
    let webhook = format!("Bearer {WEBHOOK_TOKEN}");
    assert_eq!(call(&r, "POST", URI, Some(&webhook), body).await.0, StatusCode::FORBIDDEN);
    assert_eq!(snapshot(&r).await["breakers"].as_array().unwrap().len(), 0);
    assert_eq!(call(&r, "POST", URI, bearer(), body).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_drain_while_redis_is_down_is_answered_503_within_one_second() {
    let mut redis = RedisServer::start();
    let store: Arc<dyn Store> = Arc::new(RedisStore::connect(&redis.url()).await.unwrap());
    let r = app_for(state(store, Rules::default()));
    redis.stop();
    for _ in 0..3 {
        let t = Instant::now();
        let (status, json, _) = call(&r, "POST", URI, bearer(), r#"{"per_second": 20, "duration_s": 10}"#).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{json}");
        assert!(t.elapsed() < Duration::from_secs(1), "took {:?}", t.elapsed());
    }
}

#[tokio::test]
async fn ctl_drain_posts_the_drain_and_prints_the_answer() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let r = app_for(state(store.clone(), Rules::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, r).await });
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_floodgate-control"))
        .args(["ctl", "--url", &format!("http://{addr}"), "--token", TOKEN])
        .args(["drain", "collab_ws", "--per-second", "20", "--for", "600"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("\"draining\""), "{stdout}");
    let st = store.state().await.unwrap();
    assert_eq!(st.drains.len(), 1);
    assert_eq!((st.drains[0].key.as_str(), st.drains[0].per_second), ("collab_ws", 20));
    assert_eq!(st.drains[0].until_ms - st.drains[0].since_ms, 600_000);
    // A refused drain makes ctl fail with the status.
    let bad = tokio::process::Command::new(env!("CARGO_BIN_EXE_floodgate-control"))
        .args(["ctl", "--url", &format!("http://{addr}"), "--token", TOKEN])
        .args(["drain", "collab_ws", "--per-second", "0", "--for", "600"])
        .output()
        .await
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stdout).contains("per_second"));
}
