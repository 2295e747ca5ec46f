//! Every endpoint and error status, through the router, on the memory store.
// Test code throughout: clippy.toml lets it unwrap, expect and panic.
#![cfg(test)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::*;
use floodgate_control::engine::Rules;
use floodgate_control::store::{MemoryStore, Store};

fn router() -> axum::Router {
    app_for(state(Arc::new(MemoryStore::default()), Rules::default()))
}

#[tokio::test]
async fn auth_missing_is_401_and_wrong_is_403_and_probes_are_open() {
    let r = router();
    for uri in ["/api/v1/breakers", "/api/v1/fleet", "/v1/snapshot", "/api/circuit-breaker/status"] {
        assert_eq!(call(&r, "GET", uri, None, "").await.0, StatusCode::UNAUTHORIZED, "{uri}");
        assert_eq!(call(&r, "GET", uri, Some("Basic eA=="), "").await.0, StatusCode::UNAUTHORIZED, "{uri}");
        assert_eq!(call(&r, "GET", uri, Some("Bearer nope"), "").await.0, StatusCode::FORBIDDEN, "{uri}");
    }
    assert_eq!(call(&r, "POST", "/webhook/alertmanager", None, "{}").await.0, StatusCode::UNAUTHORIZED);
    for uri in ["/health", "/ready", "/metrics", "/ui"] {
        assert_eq!(call(&r, "GET", uri, None, "").await.0, StatusCode::OK, "{uri}");
    }
}

#[tokio::test]
async fn firing_alert_activates_the_labelled_breaker_and_the_snapshot_shows_it() {
    let r = router();
    let body = alert("firing", "CollaborationBackpressureCritical", Some("collab_ws"), "Backpressure at 97.5%", "fp1");
    let (status, json, _) = call(&r, "POST", "/webhook/alertmanager", bearer(), &body).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["results"][0]["outcome"]["result"], "activated");
    let (status, snap, _) = call(&r, "GET", "/v1/snapshot", bearer(), "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(snap["version"].as_u64().unwrap() > 1_700_000_000_000_000, "an epoch version: {snap}");
    let b = &snap["breakers"][0];
    assert_eq!(
        (b["key"].as_str(), b["state"].as_str(), b["reason"].as_str()),
        (Some("collab_ws"), Some("forced_open"), Some("backpressure_critical"))
    );
    let (_, list, _) = call(&r, "GET", "/api/v1/breakers", bearer(), "").await;
    assert_eq!(list["activations"][0]["backpressure_level"], 0.975);
    assert_eq!(list["events"][0]["type"], "activated");
}

#[tokio::test]
async fn an_alert_without_the_breaker_label_activates_star_and_unknown_alerts_are_ignored() {
    let r = router();
    let body = alert("firing", "WebSocketConnectionsCritical", None, "", "fp2");
    let (_, json, _) = call(&r, "POST", "/webhook/backpressure", bearer(), &body).await;
    assert_eq!(json["results"][0]["key"], "*");
    let (_, status, _) = call(&r, "GET", "/api/circuit-breaker/status", bearer(), "").await;
    assert_eq!(
        (status["state"].as_str(), status["activation_reason"].as_str()),
        (Some("open"), Some("websocket_exhaustion"))
    );
    let (_, json, _) =
        call(&r, "POST", "/webhook/alertmanager", bearer(), &alert("firing", "DiskFull", None, "", "fp3")).await;
    assert_eq!(json["results"][0]["result"], "ignored");
}

#[tokio::test]
async fn malformed_payloads_get_400_naming_the_problem_and_big_ones_413() {
    let r = router();
    let (status, json, _) = call(&r, "POST", "/webhook/alertmanager", bearer(), "{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(json["error"].as_str().unwrap().contains("invalid Alertmanager payload"), "{json}");
    let (status, json, _) = call(&r, "POST", "/webhook/alertmanager", bearer(), r#"{"status":"firing"}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(json["error"].as_str().unwrap().contains("alerts"), "{json}");
    let mut bad_status: serde_json::Value =
        serde_json::from_str(&alert("firing", "CollaborationBackpressureCritical", None, "", "f")).unwrap();
    bad_status["alerts"][0]["status"] = "weird".into();
    let bad_status = bad_status.to_string();
    // A bad alert is rejected by itself (Alertmanager does not retry a 400): 200, named.
    let (status, json, _) = call(&r, "POST", "/webhook/alertmanager", bearer(), &bad_status).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["results"][0]["result"], "rejected", "{json}");
    assert!(json["results"][0]["error"].as_str().unwrap().contains("alerts[0].status"), "{json}");
    let (_, list, _) = call(&r, "GET", "/api/v1/breakers", bearer(), "").await;
    assert_eq!(list["activations"], serde_json::json!([]), "a rejected alert must change nothing");
    let big = format!(r#"{{"alerts":[],"pad":"{}"}}"#, "x".repeat(1 << 20));
    assert_eq!(call(&r, "POST", "/webhook/alertmanager", bearer(), &big).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, json, _) = call(&r, "POST", "/api/v1/breakers/ws/activate", bearer(), r#"{"ttl":5}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(json["error"].as_str().unwrap().contains("ttl"), "{json}");
    let (status, _, _) = call(&r, "GET", "/v1/snapshot?version=abc", bearer(), "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn manual_activate_with_ttl_and_deactivate_and_the_legacy_api() {
    let r = router();
    let (status, json, _) = call(
        &r,
        "POST",
        "/api/v1/breakers/collab_ws/activate",
        bearer(),
        r#"{"reason":"drill","ttl_s":60,"backpressure_level":0.99}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let (_, snap, _) = call(&r, "GET", "/v1/snapshot", bearer(), "").await;
    assert!(snap["breakers"][0]["until"].is_string());
    let (_, json, _) = call(&r, "POST", "/api/v1/breakers/collab_ws/deactivate", bearer(), "").await;
    assert_eq!(json["outcome"]["result"], "deactivated");
    let (_, json, _) = call(&r, "POST", "/api/v1/breakers/collab_ws/deactivate", bearer(), "").await;
    assert_eq!(json["outcome"]["result"], "not_active");
    let (status, json, _) = call(&r, "POST", "/api/circuit-breaker/activate", bearer(), "").await;
    assert_eq!((status, json["status"].as_str()), (StatusCode::OK, Some("activated")));
    let (_, st, _) = call(&r, "GET", "/api/circuit-breaker/status", bearer(), "").await;
    assert_eq!(st["state"], "open");
    call(&r, "POST", "/api/circuit-breaker/deactivate", bearer(), "").await;
    let (_, st, _) = call(&r, "GET", "/api/circuit-breaker/status", bearer(), "").await;
    assert_eq!(st["state"], "closed");
}

#[tokio::test]
async fn the_hourly_cap_answers_429_and_counts() {
    let r = app_for(state(Arc::new(MemoryStore::default()), Rules { max_activations_per_hour: 1, ..Rules::default() }));
    assert_eq!(call(&r, "POST", "/api/v1/breakers/a/activate", bearer(), "").await.0, StatusCode::OK);
    assert_eq!(call(&r, "POST", "/api/v1/breakers/b/activate", bearer(), "").await.0, StatusCode::TOO_MANY_REQUESTS);
    let (_, _, text) = call(&r, "GET", "/metrics", None, "").await;
    assert!(text.contains("floodgate_control_rate_limited_total 1"), "{text}");
    assert!(text.contains("floodgate_control_activations_total 1"), "{text}");
}

#[tokio::test]
async fn long_poll_returns_at_once_when_newer_waits_then_304_and_wakes_on_change() {
    let r = router();
    let (_, snap, _) = call(&r, "GET", "/v1/snapshot", bearer(), "").await;
    let v0 = snap["version"].as_u64().unwrap();
    // Nothing newer than v0: waits, then 304.
    let t = Instant::now();
    let (status, _, _) = call(&r, "GET", &format!("/v1/snapshot?version={v0}&wait=1"), bearer(), "").await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(t.elapsed() >= Duration::from_millis(900));
    // A waiting poll is woken by a change.
    let r2 = r.clone();
    let waiter = tokio::spawn(async move {
        let t = Instant::now();
        let (status, json, _) = call(&r2, "GET", &format!("/v1/snapshot?version={v0}&wait=30"), bearer(), "").await;
        (status, json, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    call(&r, "POST", "/api/v1/breakers/ws/activate", bearer(), "").await;
    let (status, json, waited) = waiter.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(json["version"].as_u64().unwrap() > v0);
    assert!(waited < Duration::from_secs(5), "woke after {waited:?}");
    // Newer than what the poller knows: at once.
    let t = Instant::now();
    let uri = format!("/v1/snapshot?version={v0}&wait=30");
    assert_eq!(call(&r, "GET", &uri, bearer(), "").await.0, StatusCode::OK);
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn polls_record_the_fleet() {
    let r = router();
    let req = axum::http::Request::builder()
        .uri("/v1/snapshot")
        .header("authorization", "Bearer s3cret")
        .header("x-floodgate-proxy", "envoy-a")
        .header("x-floodgate-breakers", "collab_ws=open,outbound%7C80%7C%7Cchat=closed")
        .body(axum::body::Body::empty())
        .unwrap();
    use tower::ServiceExt;
    assert_eq!(r.clone().oneshot(req).await.unwrap().status(), StatusCode::OK);
    let (_, fleet, _) = call(&r, "GET", "/api/v1/fleet", bearer(), "").await;
    let p = &fleet["proxies"][0];
    assert_eq!(p["proxy"], "envoy-a");
    assert_eq!(p["breakers"]["collab_ws"], "open");
    assert_eq!(p["breakers"]["outbound|80||chat"], "closed");
}

#[tokio::test]
async fn settings_refuse_to_start_without_a_token_unless_auth_is_disabled() {
    use floodgate_control::settings::load;
    let none = |_: &str| None;
    assert!(load(None, &none, false).unwrap_err().contains("FLOODGATE_TOKEN"));
    assert!(load(None, &none, true).unwrap().token.is_none());
    let env = |k: &str| match k {
        "FLOODGATE_TOKEN" => Some("t".to_string()),
        "FLOODGATE_COOLDOWN_S" => Some("5".to_string()),
        _ => None,
    };
    let s = load(None, &env, false).unwrap();
    assert_eq!((s.token.as_deref(), s.rules.cooldown_ms), (Some("t"), 5_000));
    let bad = |k: &str| (k == "FLOODGATE_COOLDOWN_S").then(|| "soon".to_string());
    assert!(load(None, &bad, true).unwrap_err().contains("FLOODGATE_COOLDOWN_S"));
}

/// The OpenAPI document lists every route the router serves, with its method.
#[test]
fn the_openapi_document_covers_every_route() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap();
    let app = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/app.rs")).unwrap();
    let mut routes = 0;
    for line in app.lines().map(str::trim).filter(|l| l.starts_with(".route(\"")) {
        let path = line.trim_start_matches(".route(\"").split('"').next().unwrap();
        let method = if line.contains("post(") { "post" } else { "get" };
        let section = doc.split(&format!("\n  {path}:\n")).nth(1).unwrap_or_else(|| panic!("{path} missing"));
        let section = format!("\n{}", section.split("\n  /").next().unwrap());
        assert!(section.contains(&format!("\n    {method}:")), "{method} {path} missing");
        routes += 1;
    }
    assert!(routes >= 14, "found {routes} routes");
}

#[test]
fn settings_empty_variables_never_override_the_file_and_scoped_tokens_load() {
    use floodgate_control::settings::load;
    let dir = std::env::temp_dir().join(format!("floodgate-settings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("control.toml");
    std::fs::write(&file, "token = \"admin\"\nredis_url = \"redis://127.0.0.1:6379/\"\npoll_token = \"p\"\n").unwrap();
    let env = |k: &str| match k {
        "FLOODGATE_REDIS_URL" | "FLOODGATE_TOKEN" => Some(String::new()),
        "FLOODGATE_WEBHOOK_TOKEN" => Some("w".to_string()),
        _ => None,
    };
    let s = load(Some(&file), &env, false).unwrap();
    assert_eq!(s.redis_url.as_deref(), Some("redis://127.0.0.1:6379/"), "an empty variable is unset");
    assert_eq!(
        (s.token.as_deref(), s.poll_token.as_deref(), s.webhook_token.as_deref()),
        (Some("admin"), Some("p"), Some("w"))
    );
    // A scoped token equal to the admin token would have no scope.
    let same = |k: &str| match k {
        "FLOODGATE_TOKEN" | "FLOODGATE_POLL_TOKEN" => Some("x".to_string()),
        _ => None,
    };
    assert!(load(None, &same, false).unwrap_err().contains("FLOODGATE_POLL_TOKEN"));
    // max_active_s is bounded (30 days).
    let long = |k: &str| match k {
        "FLOODGATE_TOKEN" => Some("t".to_string()),
        "FLOODGATE_MAX_ACTIVE_S" => Some("2592001".to_string()),
        _ => None,
    };
    assert!(load(None, &long, false).unwrap_err().contains("max_active_s"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_proxy_holding_a_higher_version_than_a_restarted_control_plane_gets_a_higher_one_at_once() {
    // The proxy followed a control plane whose store is gone (a Redis failover or restored
    // backup, an in-memory restart with the clock stepped back): it holds a version above the
    // fresh store's, and its view is live.
    let store = Arc::new(MemoryStore::default());
    let r = app_for(state(store.clone(), Rules::default()));
    let fresh = store.version().await.unwrap();
    let held = fresh + 10_000_000;
    let now = floodgate_control::now_ms();
    let view = floodgate_core::remote::RemoteView { version: held, confirmed_ms: now, ..Default::default() };
    let t = Instant::now();
    let (status, snap, text) =
        call(&r, "GET", &format!("/v1/snapshot?version={held}&wait=20"), Some("Bearer poll-only"), "").await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(t.elapsed() < Duration::from_secs(1), "at once, not after the wait: {:?}", t.elapsed());
    let got = snap["version"].as_u64().unwrap();
    assert!(got > held, "{got} above the proxy's {held}");
    // The filter's parser and live view take it (no waiting for stale_after_s).
    let parsed = floodgate_core::remote::parse_snapshot(text.as_bytes()).unwrap();
    assert_eq!(view.apply(parsed, floodgate_control::now_ms(), 120_000).unwrap().version, got);
    // The next poll with that version waits as usual; writes go on above it.
    let (status, _, _) = call(&r, "GET", &format!("/v1/snapshot?version={got}&wait=0"), bearer(), "").await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    call(&r, "POST", "/api/v1/breakers/ws/activate", bearer(), "").await;
    assert!(store.version().await.unwrap() > got);
    // A forged version cannot push the numbering towards u64::MAX: at most a day ahead.
    let (status, snap, _) =
        call(&r, "GET", &format!("/v1/snapshot?version={}", u64::MAX), Some("Bearer poll-only"), "").await;
    assert_eq!(status, StatusCode::OK);
    let cap = floodgate_core::version::floor_cap(floodgate_control::now_ms());
    assert!(snap["version"].as_u64().unwrap() <= cap + 1, "{snap}");
}

#[test]
fn a_poll_token_equal_to_the_webhook_token_is_refused_at_startup() {
    use floodgate_control::settings::load;
    let env = |k: &str| match k {
        "FLOODGATE_TOKEN" => Some("admin".to_string()),
        "FLOODGATE_POLL_TOKEN" | "FLOODGATE_WEBHOOK_TOKEN" => Some("shared".to_string()),
        _ => None,
    };
    let err = load(None, &env, false).unwrap_err();
    assert!(err.contains("FLOODGATE_POLL_TOKEN") && err.contains("FLOODGATE_WEBHOOK_TOKEN"), "{err}");
    // Also when they differ only by the whitespace a presented token is trimmed of.
    let spaced = |k: &str| match k {
        "FLOODGATE_TOKEN" => Some("admin".to_string()),
        "FLOODGATE_POLL_TOKEN" => Some("shared\n".to_string()),
        "FLOODGATE_WEBHOOK_TOKEN" => Some(" shared".to_string()),
        _ => None,
    };
    assert!(load(None, &spaced, false).is_err());
}

#[tokio::test]
async fn configured_tokens_are_trimmed_like_presented_ones() {
    use floodgate_control::settings::load;
    let env = |k: &str| match k {
        "FLOODGATE_TOKEN" => Some("s3cret\n".to_string()),
        "FLOODGATE_POLL_TOKEN" => Some(" poll-only ".to_string()),
        _ => None,
    };
    let s = load(None, &env, false).unwrap();
    assert_eq!((s.token.as_deref(), s.poll_token.as_deref()), (Some("s3cret"), Some("poll-only")));
    // A token from a file with a trailing newline still authorizes its holder.
    let mut st = state(Arc::new(MemoryStore::default()), Rules::default());
    Arc::get_mut(&mut st).unwrap().tokens =
        floodgate_control::app::Tokens { admin: s.token.clone(), poll: s.poll_token.clone(), webhook: None };
    let r = app_for(st);
    assert_eq!(call(&r, "GET", "/api/v1/breakers", bearer(), "").await.0, StatusCode::OK);
    assert_eq!(call(&r, "GET", "/v1/snapshot", Some("Bearer poll-only"), "").await.0, StatusCode::OK);
}
