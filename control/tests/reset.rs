//! `POST /api/v1/breakers/{key}/reset` through the router: a reset entry in the snapshot with
//! its event id, a version that moves (waking long-polls), key and body checks, auth.
// Test code throughout: clippy.toml lets it unwrap, expect and panic.
#![cfg(test)]

mod common;

use std::sync::Arc;

use axum::http::StatusCode;
use common::*;
use floodgate_control::engine::Rules;
use floodgate_control::store::MemoryStore;

fn router() -> axum::Router {
    app_for(state(Arc::new(MemoryStore::default()), Rules::default()))
}

#[tokio::test]
async fn a_reset_travels_in_the_snapshot_as_a_reset_entry_with_its_event_id() {
    let r = router();
    let (status, json, _) =
        call(&r, "POST", "/api/v1/breakers/collab_ws/reset", bearer(), r#"{"reason":"backend fixed"}"#).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["outcome"]["result"], "reset");
    let event_id = json["outcome"]["event_id"].as_str().unwrap().to_string();
    let (status, snap, _) = call(&r, "GET", "/v1/snapshot", bearer(), "").await;
    assert_eq!(status, StatusCode::OK);
    let v1 = snap["version"].as_u64().unwrap();
    let b = &snap["breakers"][0];
    assert_eq!(b["key"], "collab_ws");
    assert_eq!(b["state"], "reset");
    assert_eq!(b["event_id"], event_id.as_str());
    assert_eq!(b["reason"], "backend fixed");
    // Kept for five minutes.
    let since = floodgate_core::time::parse_rfc3339_ms(b["since"].as_str().unwrap()).unwrap();
    let until = floodgate_core::time::parse_rfc3339_ms(b["until"].as_str().unwrap()).unwrap();
    assert_eq!(until - since, 300_000);
    // A proxy long-polling at that version is woken by the next reset (of every key, percent-encoded).
    let waiter = {
        let r = r.clone();
        let uri = format!("/v1/snapshot?version={v1}&wait=20");
        tokio::spawn(async move { call(&r, "GET", &uri, bearer(), "").await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let (status, json, _) = call(&r, "POST", "/api/v1/breakers/%2A/reset", bearer(), "").await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let (status, snap, _) = waiter.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(snap["version"].as_u64().unwrap() > v1, "{snap}");
    let keys: Vec<_> = snap["breakers"].as_array().unwrap().iter().map(|b| b["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["collab_ws", "*"]);
    assert_ne!(snap["breakers"][1]["event_id"], event_id.as_str());
    assert_eq!(snap["breakers"][1]["reason"], "manual");
    // The event list shows it.
    let (_, list, _) = call(&r, "GET", "/api/v1/breakers", bearer(), "").await;
    assert_eq!(list["events"][0]["type"], "reset");
    assert_eq!(list["events"][0]["key"], "*");
}

#[tokio::test]
async fn a_reset_needs_the_admin_token_a_valid_key_and_a_valid_body() {
    let r = router();
    let (_, before, _) = call(&r, "GET", "/v1/snapshot", bearer(), "").await;
    let uri = "/api/v1/breakers/collab_ws/reset";
    assert_eq!(call(&r, "POST", uri, None, "").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(call(&r, "POST", uri, Some("Bearer nope"), "").await.0, StatusCode::FORBIDDEN);
    let (status, json, _) = call(&r, "POST", "/api/v1/breakers/a%20b/reset", bearer(), "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(json["error"].as_str().unwrap().starts_with("key:"), "{json}");
    let long = format!("/api/v1/breakers/{}/reset", "k".repeat(257));
    assert_eq!(call(&r, "POST", &long, bearer(), "").await.0, StatusCode::BAD_REQUEST);
    let (status, json, _) = call(&r, "POST", uri, bearer(), r#"{"ttl_s": 5}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(json["error"].as_str().unwrap().contains("ttl_s"), "{json}");
    let reason = format!(r#"{{"reason":"{}"}}"#, "r".repeat(129));
    let (status, json, _) = call(&r, "POST", uri, bearer(), &reason).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(json["error"].as_str().unwrap().contains("reason"), "{json}");
    // Nothing reached the snapshot.
    let (_, snap, _) = call(&r, "GET", "/v1/snapshot", bearer(), "").await;
    assert_eq!(snap["version"], before["version"]);
    assert_eq!(snap["breakers"].as_array().unwrap().len(), 0);
}
