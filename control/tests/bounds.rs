//! Bounds, auth scopes and failure answers, through the router: every bound DESIGN lists is
//! refused with 400 naming the field; 401/403 (scoped tokens) are decided before any body is
//! read; 413 for big bodies; 503 when the store is down; the long-poll gauge does not leak when a
//! client goes away; the fleet table stays bounded; and a fuzzing run (random webhook and API
//! bodies, query strings and headers) never panics the service nor grows its state without bound.
// Test code throughout: clippy.toml lets it unwrap, expect and panic.
#![cfg(test)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use floodgate_control::engine::{Command, Event, Outcome, Rules, State, MAX_TRACKS};
use floodgate_control::store::{FleetEntry, MemoryStore, Store, StoreError, FLEET_TTL_MS, MAX_FLEET};
use proptest::prelude::*;
use tokio::sync::watch;
use tower::ServiceExt;

fn router() -> (Arc<MemoryStore>, axum::Router) {
    let store = Arc::new(MemoryStore::default());
    (store.clone(), app_for(state(store, Rules { max_activations_per_hour: u32::MAX, ..Rules::default() })))
}

async fn error_of(r: &axum::Router, method: &str, uri: &str, body: &str) -> (StatusCode, String) {
    let (status, json, text) = call(r, method, uri, bearer(), body).await;
    (status, json["error"].as_str().map(String::from).unwrap_or(text))
}

async fn assert_400(r: &axum::Router, method: &str, uri: &str, body: &str, field: &str) {
    let (status, error) = error_of(r, method, uri, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {uri} {}: {error}", &body[..body.len().min(80)]);
    assert!(error.contains(field), "{method} {uri}: the error names {field}: {error}");
}

#[tokio::test]
async fn keys_are_1_to_256_printable_ascii_bytes_without_spaces() {
    let (_, r) = router();
    let ok = "k".repeat(256);
    assert_eq!(call(&r, "POST", &format!("/api/v1/breakers/{ok}/activate"), bearer(), "").await.0, StatusCode::OK);
    assert_eq!(call(&r, "POST", "/api/v1/breakers/%2A/activate", bearer(), "").await.0, StatusCode::OK);
    let long = "k".repeat(257);
    for key in [long.as_str(), "a%20b", "caf%C3%A9", "tab%09", "%7F"] {
        assert_400(&r, "POST", &format!("/api/v1/breakers/{key}/activate"), "", "key").await;
        assert_400(&r, "POST", &format!("/api/v1/breakers/{key}/deactivate"), "", "key").await;
    }
    // Not UTF-8 at all.
    assert_400(&r, "POST", "/api/v1/breakers/%FF/activate", "", "key").await;
    // From an alert's label: that alert is rejected, by itself.
    let body = alert("firing", "CollaborationBackpressureCritical", Some("a b"), "99%", "fp");
    assert_rejected(&r, &body, 0, "alerts[0].labels.breaker").await;
    let body = alert("firing", "CollaborationBackpressureCritical", Some(&long), "99%", "fp");
    assert_rejected(&r, &body, 0, "alerts[0].labels.breaker").await;
}

/// The webhook answers 200, with alert `i` rejected naming `field`.
async fn assert_rejected(r: &axum::Router, body: &str, i: usize, field: &str) {
    let (status, json, text) = call(r, "POST", "/webhook/alertmanager", bearer(), body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let result = &json["results"][i];
    assert_eq!(result["result"], "rejected", "{json}");
    assert!(result["error"].as_str().unwrap().contains(field), "the error names {field}: {json}");
}

#[tokio::test]
async fn reasons_ttls_and_levels_are_bounded() {
    let (_, r) = router();
    let act = "/api/v1/breakers/ws/activate";
    let ok = serde_json::json!({"reason": "r".repeat(128), "ttl_s": 30 * 24 * 3600, "backpressure_level": 1.0});
    assert_eq!(call(&r, "POST", act, bearer(), &ok.to_string()).await.0, StatusCode::OK);
    assert_400(&r, "POST", act, &serde_json::json!({"reason": "r".repeat(129)}).to_string(), "reason").await;
    // The issue's 400 KB reason.
    assert_400(&r, "POST", act, &serde_json::json!({"reason": "r".repeat(400_000)}).to_string(), "reason").await;
    assert_400(&r, "POST", act, r#"{"reason":"a\nb"}"#, "reason").await;
    for ttl in ["0", "2592001", "1000000000000", "-1", "1.5", "\"60\""] {
        assert_400(&r, "POST", act, &format!(r#"{{"ttl_s":{ttl}}}"#), "ttl_s").await;
    }
    for level in ["1.5", "-0.1"] {
        assert_400(&r, "POST", act, &format!(r#"{{"backpressure_level":{level}}}"#), "backpressure_level").await;
    }
    assert_400(&r, "POST", act, r#"{"state":"forced_sideways"}"#, "state").await;
    assert_400(&r, "POST", act, r#"{"ttl":5}"#, "ttl").await;
    assert_400(&r, "POST", act, "[1,2", "invalid activation body").await;
    // The original API takes the same bounds.
    let legacy = "/api/circuit-breaker/activate";
    assert_400(&r, "POST", legacy, &serde_json::json!({"reason": "r".repeat(129)}).to_string(), "reason").await;
    // Everything still serves (no date past year 9999 anywhere).
    assert_eq!(call(&r, "GET", "/v1/snapshot", bearer(), "").await.0, StatusCode::OK);
    assert_eq!(call(&r, "GET", "/api/v1/breakers", bearer(), "").await.0, StatusCode::OK);
}

#[tokio::test]
async fn one_bad_alert_in_a_notification_is_rejected_alone_and_the_valid_ones_apply() {
    let (store, r) = router();
    let v: serde_json::Value =
        serde_json::from_str(&alert("firing", "CollaborationBackpressureCritical", Some("ws"), "99%", "fp")).unwrap();
    let good = v["alerts"][0].clone();
    let with = |field: &str, value: serde_json::Value| {
        let mut a = good.clone();
        a[field] = value;
        a
    };
    let mut space = good.clone();
    space["labels"]["breaker"] = "a b".into();
    let mut long = good.clone();
    long["labels"]["breaker"] = "k".repeat(257).into();
    let bad = [
        (with("startsAt", serde_json::Value::Null), "startsAt"),
        (with("startsAt", "yesterday".into()), "startsAt"),
        (with("fingerprint", "f".repeat(257).into()), "fingerprint"),
        (with("status", "weird".into()), "status"),
        (space, "labels.breaker"),
        (long, "labels.breaker"),
    ];
    for (n, (bad, field)) in bad.into_iter().enumerate() {
        // The bad alert first, then a valid one for another key: Alertmanager does not retry a
        // 4xx, so a 400 would lose the valid one.
        let key = format!("k{n}");
        let mut ok = good.clone();
        ok["labels"]["breaker"] = key.clone().into();
        ok["fingerprint"] = format!("fp{n}").into();
        let body = serde_json::json!({"alerts": [bad, ok]}).to_string();
        assert_rejected(&r, &body, 0, &format!("alerts[0].{field}")).await;
        assert!(store.state().await.unwrap().activations.contains_key(&key), "{field}: the valid alert applied");
    }
    // A payload of the wrong shape is still a 400, and changes nothing.
    let before = store.state().await.unwrap().activations.len();
    assert_400(&r, "POST", "/webhook/alertmanager", r#"{"alerts": 7}"#, "alerts").await;
    assert_eq!(store.state().await.unwrap().activations.len(), before);
}

#[tokio::test]
async fn snapshot_query_strings_are_checked() {
    let (_, r) = router();
    assert_400(&r, "GET", "/v1/snapshot?version=abc", "", "version").await;
    assert_400(&r, "GET", "/v1/snapshot?version=-1", "", "version").await;
    assert_400(&r, "GET", "/v1/snapshot?version=99999999999999999999999", "", "version").await;
    assert_400(&r, "GET", "/v1/snapshot?wait=soon", "", "wait").await;
    assert_eq!(call(&r, "GET", "/v1/snapshot?other=1&&version=", bearer(), "").await.0, StatusCode::OK);
    // A huge wait is capped (at 60 s), not an error.
    let (_, snap, _) = call(&r, "GET", "/v1/snapshot", bearer(), "").await;
    let v = snap["version"].as_u64().unwrap();
    let t = Instant::now();
    let r2 = r.clone();
    let poll = tokio::spawn(async move {
        call(&r2, "GET", &format!("/v1/snapshot?version={v}&wait=99999999"), bearer(), "").await.0
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    call(&r, "POST", "/api/v1/breakers/x/activate", bearer(), "").await;
    assert_eq!(poll.await.unwrap(), StatusCode::OK);
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn bodies_over_1_mib_get_413() {
    let (_, r) = router();
    let big = format!(r#"{{"alerts":[],"pad":"{}"}}"#, "x".repeat(1 << 20));
    for uri in ["/webhook/alertmanager", "/api/v1/breakers/ws/activate", "/api/circuit-breaker/activate"] {
        let (status, json, _) = call(&r, "POST", uri, bearer(), &big).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{uri}");
        assert!(json["error"].is_string(), "a typed error body: {json}");
    }
}

const ADMIN_ROUTES: [(&str, &str); 8] = [
    ("GET", "/api/v1/breakers"),
    ("GET", "/api/v1/fleet"),
    ("POST", "/api/v1/breakers/ws/activate"),
    ("POST", "/api/v1/breakers/ws/deactivate"),
    ("GET", "/api/circuit-breaker/status"),
    ("POST", "/api/circuit-breaker/activate"),
    ("POST", "/api/circuit-breaker/deactivate"),
    ("GET", "/api/v1/breakers?x=1"),
];

#[tokio::test]
async fn tokens_are_scoped() {
    let (_, r) = router();
    let poll = format!("Bearer {POLL_TOKEN}");
    let hook = format!("Bearer {WEBHOOK_TOKEN}");
    let fire = alert("firing", "CollaborationBackpressureCritical", Some("ws"), "99%", "fp");
    for (method, uri) in ADMIN_ROUTES {
        assert_eq!(call(&r, method, uri, None, "").await.0, StatusCode::UNAUTHORIZED, "{method} {uri}");
        assert_eq!(call(&r, method, uri, Some("Bearer"), "").await.0, StatusCode::UNAUTHORIZED, "{method} {uri}");
        assert_eq!(call(&r, method, uri, Some("Bearer nope"), "").await.0, StatusCode::FORBIDDEN, "{method} {uri}");
        let (status, json, _) = call(&r, method, uri, Some(&poll), "").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {uri} with the poll token");
        assert!(json["error"].as_str().unwrap().contains("scope"), "{json}");
        assert_eq!(call(&r, method, uri, Some(&hook), "").await.0, StatusCode::FORBIDDEN, "{method} {uri}");
    }
    // The poll token polls, and nothing else.
    assert_eq!(call(&r, "GET", "/v1/snapshot", Some(&poll), "").await.0, StatusCode::OK);
    assert_eq!(call(&r, "POST", "/webhook/alertmanager", Some(&poll), &fire).await.0, StatusCode::FORBIDDEN);
    // The webhook token posts the webhook, and nothing else.
    assert_eq!(call(&r, "POST", "/webhook/alertmanager", Some(&hook), &fire).await.0, StatusCode::OK);
    assert_eq!(call(&r, "POST", "/webhook/backpressure", Some(&hook), &fire).await.0, StatusCode::OK);
    assert_eq!(call(&r, "GET", "/v1/snapshot", Some(&hook), "").await.0, StatusCode::FORBIDDEN);
    // The admin token does everything.
    assert_eq!(call(&r, "GET", "/v1/snapshot", bearer(), "").await.0, StatusCode::OK);
    // Probes need none; unknown paths are 404 whatever the token.
    for uri in ["/health", "/ready", "/metrics", "/ui"] {
        assert_eq!(call(&r, "GET", uri, None, "").await.0, StatusCode::OK, "{uri}");
    }
    assert_eq!(call(&r, "GET", "/nope", None, "").await.0, StatusCode::NOT_FOUND);
}

/// A body that never arrives: a handler that read it would hang.
fn endless_body() -> Body {
    Body::from_stream(futures_util::stream::pending::<Result<Vec<u8>, std::io::Error>>())
}

#[tokio::test]
async fn the_token_is_checked_before_any_body_is_read() {
    let (_, r) = router();
    let poll = format!("Bearer {POLL_TOKEN}");
    for (auth, want) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some("Bearer nope"), StatusCode::FORBIDDEN),
        (Some(poll.as_str()), StatusCode::FORBIDDEN),
    ] {
        for uri in ["/webhook/alertmanager", "/api/v1/breakers/ws/activate", "/api/circuit-breaker/activate"] {
            let mut req = Request::post(uri);
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let resp =
                tokio::time::timeout(Duration::from_secs(2), r.clone().oneshot(req.body(endless_body()).unwrap()))
                    .await
                    .unwrap_or_else(|_| panic!("{uri} with {auth:?} waited for the body"))
                    .unwrap();
            assert_eq!(resp.status(), want, "{uri} {auth:?}");
        }
    }
}

/// A store that is down.
struct DownStore(watch::Sender<u64>);

#[async_trait]
impl Store for DownStore {
    async fn apply(&self, _: Command, _: &Rules, _: u64) -> Result<(Outcome, Vec<Event>), StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn state(&self) -> Result<State, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn version(&self) -> Result<u64, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn lift(&self, _: u64) -> Result<u64, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn record_poll(&self, _: FleetEntry) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn fleet(&self, _: u64) -> Result<Vec<FleetEntry>, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    async fn ping(&self) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    fn versions(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

#[tokio::test]
async fn a_store_that_is_down_gets_503_everywhere_it_is_needed_and_no_304() {
    let r = app_for(state(Arc::new(DownStore(watch::channel(7).0)), Rules::default()));
    let fire = alert("firing", "CollaborationBackpressureCritical", Some("ws"), "99%", "fp");
    for (method, uri, body) in [
        ("POST", "/webhook/alertmanager", fire.as_str()),
        ("GET", "/v1/snapshot", ""),
        // The replica's last known version is 7, but it cannot confirm it: no 304.
        ("GET", "/v1/snapshot?version=7&wait=1", ""),
        ("GET", "/api/v1/breakers", ""),
        ("GET", "/api/v1/fleet", ""),
        ("POST", "/api/v1/breakers/ws/activate", ""),
        ("POST", "/api/v1/breakers/ws/deactivate", ""),
        ("GET", "/api/circuit-breaker/status", ""),
        ("POST", "/api/circuit-breaker/activate", ""),
        ("POST", "/api/circuit-breaker/deactivate", ""),
        ("GET", "/ready", ""),
    ] {
        let (status, json, _) = call(&r, method, uri, bearer(), body).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{method} {uri}");
        assert!(json["error"].is_string(), "{json}");
    }
    assert_eq!(call(&r, "GET", "/health", None, "").await.0, StatusCode::OK);
}

#[tokio::test]
async fn the_poll_waiters_gauge_does_not_leak_when_clients_go_away() {
    let (_, r) = router();
    let (_, snap, _) = call(&r, "GET", "/v1/snapshot", bearer(), "").await;
    let v = snap["version"].as_u64().unwrap();
    let polls: Vec<_> = (0..5)
        .map(|_| {
            let r = r.clone();
            tokio::spawn(
                async move { call(&r, "GET", &format!("/v1/snapshot?version={v}&wait=30"), bearer(), "").await },
            )
        })
        .collect();
    let gauge = async || {
        let (_, _, text) = call(&r, "GET", "/metrics", None, "").await;
        text.lines().find(|l| l.starts_with("floodgate_control_poll_waiters ")).map(|l| l.to_string())
    };
    eventually(5, "five waiters", async || gauge().await.as_deref() == Some("floodgate_control_poll_waiters 5")).await;
    // The clients disconnect: their requests' futures are dropped.
    polls.iter().for_each(|p| p.abort());
    eventually(5, "no waiters", async || gauge().await.as_deref() == Some("floodgate_control_poll_waiters 0")).await;
}

#[tokio::test]
async fn the_fleet_table_is_capped_and_expires() {
    let store = MemoryStore::default();
    let t0 = floodgate_control::now_ms();
    let entry = |i: usize, at: u64| FleetEntry {
        proxy: format!("envoy-{i}"),
        last_poll_ms: at,
        version: 1,
        breakers: BTreeMap::new(),
    };
    for i in 0..MAX_FLEET + 50 {
        store.record_poll(entry(i, t0)).await.unwrap();
    }
    assert_eq!(store.fleet(t0).await.unwrap().len(), MAX_FLEET);
    // Ten minutes later, new proxies take the place of the silent ones.
    let later = t0 + FLEET_TTL_MS;
    store.record_poll(entry(999_999, later)).await.unwrap();
    let fleet = store.fleet(later).await.unwrap();
    assert_eq!(fleet.iter().map(|f| f.proxy.as_str()).collect::<Vec<_>>(), ["envoy-999999"]);
}

#[tokio::test]
async fn alerts_tracked_and_snapshot_size_stay_bounded() {
    let (store, r) = router();
    for i in 0..MAX_TRACKS + 300 {
        let body = alert("resolved", "CollaborationBackpressureCritical", Some("ws"), "", &format!("fp{i}"));
        assert_eq!(call(&r, "POST", "/webhook/alertmanager", bearer(), &body).await.0, StatusCode::OK);
    }
    assert!(store.state().await.unwrap().alerts.len() <= MAX_TRACKS);
    // Activations until the snapshot is full: refused (507) before it passes 256 KiB.
    let reason = "r".repeat(128);
    let mut full = 0;
    for i in 0..1_000 {
        let uri = format!("/api/v1/breakers/{i:0>250}/activate");
        let (status, json, _) =
            call(&r, "POST", &uri, bearer(), &serde_json::json!({"reason": reason}).to_string()).await;
        if status == StatusCode::INSUFFICIENT_STORAGE {
            assert_eq!(json["outcome"]["result"], "snapshot_full");
            full += 1;
        }
    }
    assert!(full > 0);
    let (_, _, text) = call(&r, "GET", "/v1/snapshot", bearer(), "").await;
    assert!(text.len() <= floodgate_core::wire::MAX_SNAPSHOT_BYTES, "{}", text.len());
    assert!(floodgate_core::remote::parse_snapshot(text.as_bytes()).is_ok());
}

// ---- fuzzing ----

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(Into::into),
        any::<i64>().prop_map(Into::into),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Into::into),
        ".{0,40}".prop_map(Into::into),
        Just("firing".into()),
        Just("resolved".into()),
        Just("2026-11-22T10:00:00Z".into()),
        Just("CollaborationBackpressureCritical".into()),
        Just("97.5%".into()),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Into::into),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("alerts".to_string()),
                    Just("status".to_string()),
                    Just("labels".to_string()),
                    Just("alertname".to_string()),
                    Just("breaker".to_string()),
                    Just("annotations".to_string()),
                    Just("summary".to_string()),
                    Just("startsAt".to_string()),
                    Just("endsAt".to_string()),
                    Just("fingerprint".to_string()),
                    Just("reason".to_string()),
                    Just("ttl_s".to_string()),
                    Just("backpressure_level".to_string()),
                    Just("state".to_string()),
                    ".{0,12}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        json_value().prop_map(|v| v.to_string().into_bytes()),
        proptest::collection::vec(any::<u8>(), 0..200),
        json_value().prop_map(|v| {
            // A payload of the right outer shape with random alerts.
            serde_json::json!({"version": "4", "status": "firing", "alerts": [v]}).to_string().into_bytes()
        }),
    ]
}

fn uri() -> impl Strategy<Value = (String, String)> {
    let path = prop_oneof![
        Just(("POST", "/webhook/alertmanager".to_string())),
        Just(("POST", "/webhook/backpressure".to_string())),
        "[!-~]{0,20}"
            .prop_map(|k| ("POST", format!("/api/v1/breakers/{}/activate", floodgate_core::wire::percent_encode(&k)))),
        "[!-~]{0,20}".prop_map(|k| (
            "POST",
            format!("/api/v1/breakers/{}/deactivate", floodgate_core::wire::percent_encode(&k))
        )),
        Just(("POST", "/api/circuit-breaker/activate".to_string())),
        Just(("POST", "/api/circuit-breaker/deactivate".to_string())),
        Just(("GET", "/api/circuit-breaker/status".to_string())),
        Just(("GET", "/api/v1/breakers".to_string())),
        Just(("GET", "/api/v1/fleet".to_string())),
        Just(("GET", "/v1/snapshot".to_string())),
    ];
    let query = prop_oneof![
        Just(String::new()),
        "[a-z=&%0-9]{0,30}".prop_map(|q| format!("?{q}")),
        (any::<u64>(), 0..2u64).prop_map(|(v, w)| format!("?version={v}&wait={w}")),
    ];
    (path, query).prop_map(|((m, p), q)| (m.to_string(), format!("{p}{q}")))
}

fn headers() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    proptest::collection::vec(
        (
            prop_oneof![
                Just("authorization".to_string()),
                Just("x-floodgate-proxy".to_string()),
                Just("x-floodgate-breakers".to_string()),
                Just("content-type".to_string()),
                "[a-z-]{1,12}",
            ],
            prop_oneof![
                Just(b"Bearer s3cret".to_vec()),
                Just(b"Bearer poll-only".to_vec()),
                Just(b"Bearer webhook-only".to_vec()),
                proptest::collection::vec(0x20u8..0x7f, 0..300),
                proptest::collection::vec(any::<u8>(), 0..40),
            ],
        ),
        0..5,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn no_request_panics_the_service_or_grows_its_state_without_bound(
        requests in proptest::collection::vec((uri(), headers(), body()), 1..8)
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (store, r) = router();
            for ((method, uri), headers, body) in requests {
                let mut req = Request::builder().method(method.as_str()).uri(uri.as_str());
                let mut authorized = false;
                for (k, v) in &headers {
                    if let Ok(v) = axum::http::HeaderValue::from_bytes(v) {
                        authorized |= k == "authorization";
                        req = req.header(k.as_str(), v);
                    }
                }
                if !authorized {
                    req = req.header("authorization", "Bearer s3cret");
                }
                let Ok(req) = req.body(Body::from(body)) else { continue };
                let resp = r.clone().oneshot(req).await.unwrap();
                let status = resp.status().as_u16();
                prop_assert!(
                    [200, 304, 400, 401, 403, 404, 405, 413, 415, 429, 507].contains(&status),
                    "{method} {uri}: {status}"
                );
            }
            let st = store.state().await.unwrap();
            prop_assert!(st.events.len() <= 100 && st.alerts.len() <= MAX_TRACKS);
            prop_assert!(serde_json::to_vec(&st).unwrap().len() < 1 << 20);
            Ok(())
        })?;
    }
}

/// A client that sends its headers and never its body is answered 408 after the request timeout
/// (10 s; the clock is paused and advanced by tokio here).
#[tokio::test(start_paused = true)]
async fn a_request_whose_body_never_comes_times_out() {
    let (_, r) = router();
    for uri in ["/webhook/alertmanager", "/api/v1/breakers/ws/activate"] {
        let req = Request::post(uri).header("authorization", "Bearer s3cret").body(endless_body()).unwrap();
        let t = tokio::time::Instant::now();
        let resp = r.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT, "{uri}");
        assert_eq!(t.elapsed(), floodgate_control::app::REQUEST_TIMEOUT);
    }
}
