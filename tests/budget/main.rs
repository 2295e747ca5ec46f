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

/// A backend and an Envoy (`--concurrency 2`) in front of it with `plugin` as the filter's
/// configuration.
async fn budget_proxy(plugin: serde_json::Value) -> (Backend, Envoy) {
    let backend = Backend::start(0).await.unwrap();
    let ports = Ports::free(backend.addr.port()).unwrap();
    let config = envoy::render("http-websocket.yaml", ports, &[&plugin.to_string()]).unwrap();
    let proxy = Envoy::start(&config, ports, 2).await.unwrap();
    (backend, proxy)
}

async fn metric(envoy: &Envoy, name: &str, labels: &[(&str, &str)]) -> f64 {
    stats::value_or_zero(&envoy.prometheus().await.unwrap(), name, labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_upgrades_is_cut_to_the_budget_across_both_workers() {
    require_wasm();
    let (backend, proxy) = budget_proxy(json!({"defaults": {"admission": {"per_second": 1, "burst": 20}}})).await;
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

/// Opens an upgrade; `Ok(time to its 101)` or the refusal.
async fn timed_upgrade(addr: std::net::SocketAddr) -> (Duration, Upgrade) {
    let started = Instant::now();
    let got = client::upgrade(addr, "/ws").await.unwrap();
    (started.elapsed(), got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_past_the_budget_waits_its_turn_at_the_budgets_pace_and_one_past_max_delay_is_refused() {
    require_wasm();
    let (backend, proxy) =
        budget_proxy(json!({"defaults": {"admission": {"per_second": 10, "burst": 5, "max_delay_ms": 2000}}})).await;
    // 40 upgrades at once over both workers: the burst (5) opens at once, what 2 s of the
    // budget allows (20) waits its turn, the rest is refused at once.
    let attempts: Vec<_> = (0..40).map(|_| tokio::spawn(timed_upgrade(proxy.listen))).collect();
    let (mut opened, mut sessions, mut refused) = (vec![], vec![], vec![]);
    for a in attempts {
        match a.await.unwrap() {
            (t, Upgrade::Open(s)) => {
                opened.push(t);
                sessions.push(s);
            }
            (t, Upgrade::Refused(r)) => refused.push((t, r)),
        }
    }
    opened.sort_unstable();
    let times: Vec<u128> = opened.iter().map(Duration::as_millis).collect();
    eprintln!("opened at {times:?} ms; {} refused", refused.len());
    // The spawns take a few ms; a token or two may refill meanwhile.
    assert!((25..=27).contains(&opened.len()), "{} opened at {times:?}", opened.len());
    // Paced: the k-th past the burst opens no sooner than its token (100 ms apart), less the
    // tick (100 ms) and the time the burst took to arrive.
    for (k, t) in opened.iter().enumerate().skip(7) {
        let token_ms = (k as u64 - 5) * 100;
        assert!(t.as_millis() as u64 + 250 >= token_ms, "upgrade {k} opened at {t:?}: {times:?}");
    }
    assert!(opened.last().unwrap() <= &Duration::from_millis(2600), "waited past max_delay_ms: {times:?}");
    for (t, r) in &refused {
        assert!(*t < Duration::from_secs(1), "a refusal waited {t:?}");
        assert_eq!(r.json()["reason"], "admission_budget", "{}", r.body);
    }
    assert_eq!(backend.control.accepted(), opened.len() as u64);
    let b = ("breaker", "collab_ws");
    let delayed = metric(&proxy, "floodgate_admission_delayed_total", &[b]).await;
    let admitted = metric(&proxy, "floodgate_admission_admitted_total", &[b]).await;
    assert_eq!(admitted, opened.len() as f64);
    assert!((20.0..=22.0).contains(&delayed), "{delayed} delayed");
    for s in sessions.iter_mut() {
        client::echo(s, "paced").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_leaves_while_its_upgrade_waits_never_reaches_the_backend() {
    use tokio::io::AsyncWriteExt;
    require_wasm();
    let (backend, proxy) =
        budget_proxy(json!({"defaults": {"admission": {"per_second": 1, "burst": 1, "max_delay_ms": 3000}}})).await;
    let Upgrade::Open(mut first) = client::upgrade(proxy.listen, "/ws").await.unwrap() else {
        panic!("the first upgrade was not admitted")
    };
    // The next waits a second; its client leaves after 200 ms.
    let mut sock = tokio::net::TcpStream::connect(proxy.listen).await.unwrap();
    let req = "GET /ws HTTP/1.1\r\nhost: collab\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
               sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    sock.write_all(req.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(sock);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(backend.control.accepted(), 1, "the upgrade of a client that left reached the backend");
    let b = ("breaker", "collab_ws");
    assert_eq!(metric(&proxy, "floodgate_admission_delayed_total", &[b]).await, 1.0);
    assert_eq!(metric(&proxy, "floodgate_calls_total", &[b, ("outcome", "failure")]).await, 0.0);
    // Envoy and the first session carry on; the next upgrade is admitted.
    client::echo(&mut first, "still here").await.unwrap();
    match client::upgrade(proxy.listen, "/ws").await.unwrap() {
        Upgrade::Open(mut s) => client::echo(&mut s, "next").await.unwrap(),
        Upgrade::Refused(r) => panic!("refused: {} {}", r.status, r.body),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrades_waiting_when_the_breaker_trips_are_refused_as_open_and_never_reach_the_backend() {
    require_wasm();
    let (backend, proxy) = budget_proxy(json!({"defaults": {"consecutive_failures": 2, "open": {"base_ms": 60000},
        "admission": {"per_second": 2, "burst": 2, "max_delay_ms": 3000}}}))
    .await;
    backend.control.set_mode(Mode::FailHandshakes(503));
    // Eight at once: the burst (2) goes and fails, tripping the breaker; those that came before
    // the trip wait for tokens 0.5-3 s away and are refused when their wait ends (any that came
    // after the trip are refused at once).
    let attempts: Vec<_> = (0..8).map(|_| tokio::spawn(timed_upgrade(proxy.listen))).collect();
    let mut by_state = std::collections::BTreeMap::<String, usize>::new();
    let mut refused_after_waiting = 0;
    for a in attempts {
        let (t, got) = a.await.unwrap();
        let Upgrade::Refused(r) = got else { panic!("an upgrade opened on a failing backend") };
        let state = r.headers.get("x-floodgate").cloned().unwrap_or_else(|| format!("backend {}", r.status));
        if state == "open" && t >= Duration::from_millis(400) {
            refused_after_waiting += 1;
        }
        *by_state.entry(state).or_default() += 1;
    }
    assert_eq!(by_state.get("backend 503"), Some(&2), "{by_state:?}");
    assert_eq!(by_state.get("open"), Some(&6), "{by_state:?}");
    assert_eq!(backend.control.handshakes(), 2, "a delayed upgrade reached a backend whose breaker was open");
    let b = ("breaker", "collab_ws");
    let delayed = metric(&proxy, "floodgate_admission_delayed_total", &[b]).await;
    assert!(delayed >= 1.0, "nothing was delayed: the test tests nothing");
    assert_eq!(refused_after_waiting as f64, delayed, "{by_state:?}");
    assert_eq!(metric(&proxy, "floodgate_calls_total", &[b, ("outcome", "failure")]).await, 2.0);
}
