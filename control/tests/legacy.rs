//! The original service's API, written from its models (DESIGN: status object, activate and
//! deactivate answers), on the memory store: the status object while closed and while open,
//! the answers of activate (activated, then skipped) and deactivate (deactivated, then skipped).
// Test code throughout: clippy.toml lets it unwrap, expect and panic.
#![cfg(test)]

mod common;

use std::sync::Arc;

use axum::http::StatusCode;
use common::*;
use floodgate_control::engine::Rules;
use floodgate_control::store::MemoryStore;

const FIELDS: [&str; 8] = [
    "state",
    "activated_at",
    "deactivated_at",
    "activation_reason",
    "activation_count_last_hour",
    "last_backpressure_level",
    "grace_period_ends_at",
    "scheduled_deactivation_at",
];

fn fields(v: &serde_json::Value) -> Vec<String> {
    let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn the_status_object_while_closed_and_while_open() {
    let r = app_for(state(Arc::new(MemoryStore::default()), Rules::default()));
    let mut want: Vec<String> = FIELDS.iter().map(|f| f.to_string()).collect();
    want.sort();
    let (status, closed, _) = call(&r, "GET", "/api/circuit-breaker/status", bearer(), "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fields(&closed), want);
    assert_eq!(
        closed,
        serde_json::json!({"state": "closed", "activated_at": null, "deactivated_at": null,
            "activation_reason": null, "activation_count_last_hour": 0, "last_backpressure_level": null,
            "grace_period_ends_at": null, "scheduled_deactivation_at": null})
    );
    // An alert without the breaker label acts on `*`.
    let fire = alert("firing", "CollaborationBackpressureCritical", None, "Backpressure at 97.5%", "fp");
    call(&r, "POST", "/webhook/backpressure", bearer(), &fire).await;
    let (_, open, _) = call(&r, "GET", "/api/circuit-breaker/status", bearer(), "").await;
    assert_eq!(fields(&open), want);
    assert_eq!(open["state"], "open");
    assert_eq!(open["activation_reason"], "backpressure_critical");
    assert_eq!(open["activation_count_last_hour"], 1);
    assert_eq!(open["last_backpressure_level"], 0.975);
    for t in ["activated_at", "grace_period_ends_at", "scheduled_deactivation_at"] {
        assert!(floodgate_core::time::parse_rfc3339_ms(open[t].as_str().unwrap()).is_some(), "{t}: {open}");
    }
    // Resolved: the deactivation is scheduled, and the object says when.
    let resolve = alert("resolved", "CollaborationBackpressureCritical", None, "", "fp");
    call(&r, "POST", "/webhook/backpressure", bearer(), &resolve).await;
    let (_, resolving, _) = call(&r, "GET", "/api/circuit-breaker/status", bearer(), "").await;
    assert_eq!(resolving["state"], "open");
    assert_ne!(resolving["scheduled_deactivation_at"], open["scheduled_deactivation_at"]);
}

#[tokio::test]
async fn activate_and_deactivate_answer_as_the_original() {
    let r = app_for(state(Arc::new(MemoryStore::default()), Rules::default()));
    let answer = async |uri: &str, body: &str| {
        let (status, json, _) = call(&r, "POST", uri, bearer(), body).await;
        assert_eq!(status, StatusCode::OK, "{json}");
        let mut keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["message", "status"], "{json}");
        assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()));
        json["status"].as_str().unwrap().to_string()
    };
    let body = r#"{"reason": "operator_drill", "backpressure_level": 0.99}"#;
    assert_eq!(answer("/api/circuit-breaker/activate", body).await, "activated");
    assert_eq!(answer("/api/circuit-breaker/activate", body).await, "skipped");
    let (_, st, _) = call(&r, "GET", "/api/circuit-breaker/status", bearer(), "").await;
    assert_eq!(
        (st["activation_reason"].as_str(), st["activation_count_last_hour"].as_u64()),
        (Some("operator_drill"), Some(1))
    );
    assert_eq!(answer("/api/circuit-breaker/deactivate", "").await, "deactivated");
    assert_eq!(answer("/api/circuit-breaker/deactivate", "").await, "skipped");
    let (_, st, _) = call(&r, "GET", "/api/circuit-breaker/status", bearer(), "").await;
    assert_eq!(st["state"], "closed");
    assert!(st["deactivated_at"].is_string(), "{st}");
}
