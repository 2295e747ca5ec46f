//! The control contract, end to end across the two sides: every snapshot floodgate-control
//! serves parses in the filter's parser (floodgate-core, the code floodgate.wasm runs), and every
//! fleet header the filter sends decodes in floodgate-control's fleet table.
// Test code throughout: clippy.toml lets it unwrap, expect and panic.
#![cfg(test)]

mod common;

use std::sync::Arc;

use axum::http::StatusCode;
use common::*;
use floodgate_control::engine::Rules;
use floodgate_control::store::MemoryStore;
use floodgate_core::remote::{parse_snapshot, Forced};
use floodgate_core::wire::{encode_fleet_header, percent_encode};
use proptest::prelude::*;

fn unlimited() -> Rules {
    Rules { cooldown_ms: 0, max_activations_per_hour: u32::MAX, ..Rules::default() }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Keys as operators and Envoy name breakers, within DESIGN's bounds (1 to 256 bytes of printable
/// ASCII without spaces): cluster names with dots and pipes, `*`, any such byte.
fn key() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z_]{1,12}", "outbound\\|[0-9]{2,4}\\|\\|[a-z.]{1,20}", Just("*".to_string()), "[!-~]{1,256}"]
}

/// What an activation asks for: its state, a reason up to DESIGN's 128 bytes, a TTL up to 30 days.
fn activation() -> impl Strategy<Value = (Forced, String, Option<u64>)> {
    (
        prop_oneof![Just(Forced::ForcedOpen), Just(Forced::ForcedClosed)],
        "[ -~]{0,128}",
        proptest::option::of(1u64..=30 * 86_400),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_snapshot_the_control_plane_serves_parses_in_the_filter(
        activations in proptest::collection::btree_map(key(), activation(), 0..40)
    ) {
        runtime().block_on(async {
            let r = app_for(state(Arc::new(MemoryStore::default()), unlimited()));
            for (key, (state, reason, ttl_s)) in &activations {
                let body = serde_json::json!({"state": state, "reason": reason, "ttl_s": ttl_s}).to_string();
                let uri = format!("/api/v1/breakers/{}/activate", percent_encode(key));
                let (status, json, _) = call(&r, "POST", &uri, bearer(), &body).await;
                prop_assert!(status.is_success(), "{uri}: {status} {json}");
            }
            let (status, _, text) = call(&r, "GET", "/v1/snapshot", bearer(), "").await;
            prop_assert_eq!(status, StatusCode::OK);
            let snapshot = parse_snapshot(text.as_bytes());
            prop_assert!(snapshot.is_ok(), "the filter refused {text}: {snapshot:?}");
            let snapshot = snapshot.unwrap();
            prop_assert_eq!(snapshot.overrides.len(), activations.len());
            for o in &snapshot.overrides {
                let (state, reason, ttl_s) = &activations[&o.key];
                prop_assert_eq!(o.state, *state);
                prop_assert_eq!(&o.reason, if reason.is_empty() { "forced" } else { reason.as_str() });
                prop_assert_eq!(o.until_ms == 0, ttl_s.is_none());
            }
            Ok(())
        })?;
    }

    #[test]
    fn every_drain_the_control_plane_serves_reaches_the_filter_with_its_pace_and_end(
        activations in proptest::collection::btree_map(key(), activation(), 0..10),
        drains in proptest::collection::btree_map(key(), (1u32..=10_000, 1u64..=30 * 86_400), 0..20)
    ) {
        runtime().block_on(async {
            let r = app_for(state(Arc::new(MemoryStore::default()), unlimited()));
            for (key, (state, reason, ttl_s)) in &activations {
                let body = serde_json::json!({"state": state, "reason": reason, "ttl_s": ttl_s}).to_string();
                let uri = format!("/api/v1/breakers/{}/activate", percent_encode(key));
                prop_assert!(call(&r, "POST", &uri, bearer(), &body).await.0.is_success());
            }
            let started = floodgate_control::now_ms();
            for (key, (per_second, duration_s)) in &drains {
                let body = serde_json::json!({"per_second": per_second, "duration_s": duration_s}).to_string();
                let uri = format!("/api/v1/breakers/{}/drain", percent_encode(key));
                let (status, json, _) = call(&r, "POST", &uri, bearer(), &body).await;
                prop_assert!(status.is_success(), "{uri}: {status} {json}");
            }
            let (status, _, text) = call(&r, "GET", "/v1/snapshot", bearer(), "").await;
            prop_assert_eq!(status, StatusCode::OK);
            let snapshot = parse_snapshot(text.as_bytes());
            prop_assert!(snapshot.is_ok(), "the filter refused {text}: {snapshot:?}");
            let snapshot = snapshot.unwrap();
            prop_assert_eq!(snapshot.overrides.len(), activations.len(), "drains are not overrides");
            prop_assert_eq!(snapshot.drains.len(), drains.len());
            for d in &snapshot.drains {
                let (per_second, duration_s) = drains[&d.key];
                prop_assert_eq!(d.per_second, per_second);
                // `until` is in whole seconds: within the second before the drain's end.
                let end = started + duration_s * 1000;
                prop_assert!(d.until_ms + 1000 > end && d.until_ms <= end + 1000, "{d:?} vs {end}");
                prop_assert!(!d.event_id.is_empty());
            }
            Ok(())
        })?;
    }

    #[test]
    fn every_fleet_header_the_filter_sends_shows_in_the_fleet_table(
        states in proptest::collection::btree_map(key(), prop_oneof!["closed", "open", "half_open"], 0..20)
    ) {
        runtime().block_on(async {
            let r = app_for(state(Arc::new(MemoryStore::default()), unlimited()));
            let header = encode_fleet_header(states.iter().map(|(k, s)| (k.as_str(), s.as_str())));
            let req = axum::http::Request::get("/v1/snapshot")
                .header("authorization", "Bearer s3cret")
                .header("x-floodgate-proxy", "envoy-1")
                .header("x-floodgate-breakers", header)
                .body(axum::body::Body::empty())
                .unwrap();
            let resp = tower::ServiceExt::oneshot(r.clone(), req).await.unwrap();
            prop_assert_eq!(resp.status(), StatusCode::OK);
            let (_, fleet, _) = call(&r, "GET", "/api/v1/fleet", bearer(), "").await;
            let shown: std::collections::BTreeMap<String, String> =
                serde_json::from_value(fleet["proxies"][0]["breakers"].clone()).unwrap();
            prop_assert_eq!(shown, states);
            Ok(())
        })?;
    }
}

/// A proxy follows a control plane that restarted with an empty memory store at once (its view
/// is live: no waiting for `stale_after_s`), because the new process's versions start at a later
/// epoch, above every version the old one issued.
#[test]
fn a_proxy_follows_a_restarted_control_plane_at_once() {
    runtime().block_on(async {
        let first = app_for(state(Arc::new(MemoryStore::default()), unlimited()));
        call(&first, "POST", "/api/v1/breakers/collab_ws/activate", bearer(), "").await;
        for i in 0..50 {
            call(&first, "POST", &format!("/api/v1/breakers/k{i}/activate"), bearer(), "").await;
        }
        let (_, _, text) = call(&first, "GET", "/v1/snapshot", bearer(), "").await;
        let now = floodgate_control::now_ms();
        let view = floodgate_core::remote::RemoteView::default()
            .apply(parse_snapshot(text.as_bytes()).unwrap(), now, 120_000)
            .unwrap();
        assert_eq!(view.overrides.len(), 51);
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        // The service restarts: a new, empty memory store.
        let second = app_for(state(Arc::new(MemoryStore::default()), unlimited()));
        let (status, _, text) =
            call(&second, "GET", &format!("/v1/snapshot?version={}&wait=5", view.version), bearer(), "").await;
        assert_eq!(status, StatusCode::OK, "answers at once: the proxy's version is not the store's");
        let snap = parse_snapshot(text.as_bytes()).unwrap();
        assert!(snap.version > view.version, "{} then {}", view.version, snap.version);
        let now = floodgate_control::now_ms();
        assert!(view.live(now, 120_000));
        let next = view.apply(snap, now, 120_000).expect("a live view takes the restarted control plane's snapshot");
        assert!(next.overrides.is_empty());
    });
}
