//! The admission budget and the fleet-wide reset in the real Envoy (`--concurrency 2`): a burst
//! of upgrades is cut to the budget across both workers, the refused ones saying
//! `admission_budget`; a reset through floodgate-control closes an open breaker on two Envoys.
// Test code throughout: clippy.toml lets it unwrap, expect and panic.
#![cfg(test)]

use std::time::{Duration, Instant};

use floodgate_tests::backend::{Backend, Mode};
use floodgate_tests::client::{self, Upgrade};
use floodgate_tests::envoy::{self, Envoy, Ports};
use floodgate_tests::procs::ControlPlane;
use floodgate_tests::{eventually, require_wasm, stats};
use serde_json::json;

const TOKEN: &str = "budget-test-token";

async fn metric(envoy: &Envoy, name: &str, labels: &[(&str, &str)]) -> f64 {
    stats::value_or_zero(&envoy.prometheus().await.unwrap(), name, labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_upgrades_is_cut_to_the_budget_across_both_workers() {
    require_wasm();
    let backend = Backend::start(0).await.unwrap();
    let ports = Ports::free(backend.addr.port()).unwrap();
    let plugin = json!({"defaults": {"admission": {"per_second": 1, "burst": 20}}}).to_string();
    let config = envoy::render("http-websocket.yaml", ports, &[&plugin]).unwrap();
    let proxy = Envoy::start(&config, ports, 2).await.unwrap();
    let started = Instant::now();
    // 60 upgrades at once, each on its own connection (Envoy spreads them over its workers).
    let attempts: Vec<_> = (0..60).map(|_| tokio::spawn(client::upgrade(proxy.listen, "/ws"))).collect();
    let mut sessions = vec![];
    let mut refused = vec![];
    for a in attempts {
        match a.await.unwrap().unwrap() {
            Upgrade::Open(s) => sessions.push(s),
            Upgrade::Refused(r) => refused.push(r),
        }
    }
    let elapsed = started.elapsed().as_secs();
    // The burst, plus what one token per second refilled meanwhile.
    assert!(
        sessions.len() >= 20 && sessions.len() as u64 <= 20 + elapsed + 1,
        "{} admitted in {elapsed} s",
        sessions.len()
    );
    assert_eq!(backend.control.accepted(), sessions.len() as u64);
    for r in &refused {
        assert_eq!(r.status, 503);
        assert_eq!(r.headers.get("x-floodgate").map(String::as_str), Some("closed"));
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["reason"], "admission_budget", "{}", r.body);
        let retry: u64 = r.headers["retry-after"].parse().unwrap();
        assert!((1..=21).contains(&retry), "retry-after {retry}");
    }
    let b = ("breaker", "collab_ws");
    let admitted = metric(&proxy, "floodgate_admission_admitted_total", &[b]).await;
    let rejected = metric(&proxy, "floodgate_admission_rejected_total", &[b, ("kind", "websocket")]).await;
    assert_eq!((admitted, rejected), (sessions.len() as f64, refused.len() as f64));
    // Sessions admitted keep echoing; the refusals took nothing from them.
    for s in sessions.iter_mut() {
        client::echo(s, "still here").await.unwrap();
    }
}

fn control_plugin() -> String {
    json!({
        "defaults": {"consecutive_failures": 3, "open": {"base_ms": 600000, "max_ms": 600000}},
        "control": {"cluster": "floodgate_control", "token": TOKEN, "wait_s": 5, "timeout_ms": 7000,
                    "retry_ms": 200, "stale_after_s": 30}
    })
    .to_string()
}

async fn control_envoy(backend: &Backend, control: &ControlPlane, node: &str) -> Envoy {
    let ports = Ports { control: control.addr.port(), ..Ports::free(backend.addr.port()).unwrap() };
    let config = envoy::render("control.yaml", ports, &[&control_plugin()])
        .unwrap()
        .replace("id: floodgate-local", &format!("id: {node}"));
    Envoy::start(&config, ports, 2).await.unwrap()
}

async fn refused_as(envoy: &Envoy) -> Option<String> {
    match client::upgrade(envoy.listen, "/ws").await.unwrap() {
        Upgrade::Refused(r) => r.headers.get("x-floodgate").cloned(),
        Upgrade::Open(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reset_through_floodgate_control_closes_an_open_breaker_on_two_envoys_once() {
    require_wasm();
    let control = ControlPlane::start(0, TOKEN, &[]).await.unwrap();
    let backend = Backend::start(0).await.unwrap();
    let envoys =
        [control_envoy(&backend, &control, "envoy-a").await, control_envoy(&backend, &control, "envoy-b").await];
    backend.control.set_mode(Mode::FailHandshakes(503));
    for e in &envoys {
        eventually(Duration::from_secs(10), "the breaker open", || async {
            (refused_as(e).await.as_deref() == Some("open")).then_some(())
        })
        .await;
    }
    backend.control.set_mode(Mode::Healthy);
    // Open for ten minutes; the operator who fixed the backend resets it.
    let answer =
        control.json("POST", "/api/v1/breakers/collab_ws/reset", r#"{"reason":"backend fixed"}"#).await.unwrap();
    assert_eq!(answer["outcome"]["result"], "reset", "{answer}");
    let closed = ("breaker", "collab_ws");
    for e in &envoys {
        eventually(Duration::from_secs(10), "the reset applied", || async {
            (metric(e, "floodgate_transitions_total", &[closed, ("from", "open"), ("to", "closed")]).await == 1.0)
                .then_some(())
        })
        .await;
        match client::upgrade(e.listen, "/ws").await.unwrap() {
            Upgrade::Open(mut s) => client::echo(&mut s, "back").await.unwrap(),
            Upgrade::Refused(r) => panic!("refused after the reset: {} {}", r.status, r.body),
        }
    }
    // It trips again; the reset, still in the snapshot, is not applied a second time, even when
    // another change makes every proxy fetch the snapshot again.
    backend.control.set_mode(Mode::FailHandshakes(503));
    for e in &envoys {
        eventually(Duration::from_secs(10), "the breaker open again", || async {
            (refused_as(e).await.as_deref() == Some("open")).then_some(())
        })
        .await;
    }
    control.json("POST", "/api/v1/breakers/chat_ws/activate", r#"{"reason":"other"}"#).await.unwrap();
    for e in &envoys {
        eventually(Duration::from_secs(10), "the new snapshot", || async {
            (metric(e, "floodgate_control_version", &[]).await >= 2.0).then_some(())
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for e in &envoys {
        assert_eq!(refused_as(e).await.as_deref(), Some("open"));
        assert_eq!(metric(e, "floodgate_transitions_total", &[closed, ("from", "open"), ("to", "closed")]).await, 1.0);
    }
}
