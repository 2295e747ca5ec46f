//! The whole loop with real processes: Envoy (`--concurrency 2`) with Floodgate polling a real
//! floodgate-control (on a real Redis where the test needs durability), and a real Alertmanager
//! delivering alerts to its webhook. Each test starts its own processes on free ports.
// Test code throughout: clippy.toml lets it unwrap, expect and panic.
#![cfg(test)]

use std::time::{Duration, Instant};

use floodgate_tests::backend::Backend;
use floodgate_tests::client::{self, Refused, Session, Upgrade};
use floodgate_tests::envoy::{self, Envoy, Ports};
use floodgate_tests::procs::{Alertmanager, ControlPlane, Redis};
use floodgate_tests::{eventually, require_wasm, stats};
use serde_json::json;

/// The admin token (the test's own API calls); proxies carry the poll-only token and
/// Alertmanager the webhook-only one, as the shipped manifests do.
const TOKEN: &str = "loop-test-token";
const POLL_TOKEN: &str = "loop-test-poll-token";
const WEBHOOK_TOKEN: &str = "loop-test-webhook-token";

/// Starts floodgate-control with the scoped tokens, and `env`.
async fn control_plane(env: &[(&str, &str)]) -> ControlPlane {
    let mut all = vec![("FLOODGATE_POLL_TOKEN", POLL_TOKEN), ("FLOODGATE_WEBHOOK_TOKEN", WEBHOOK_TOKEN)];
    all.extend_from_slice(env);
    ControlPlane::start(0, TOKEN, &all).await.unwrap()
}
/// The filter's tick (`poller::TICK_MS`): how often each worker refreshes its copy of the view.
const WORKER_TICK: Duration = Duration::from_millis(100);

fn plugin_config(wait_s: u32, stale_after_s: u64, ramp_ms: u64) -> String {
    json!({
        "defaults": {"consecutive_failures": 5, "recovery_ramp_ms": ramp_ms},
        "control": {"cluster": "floodgate_control", "token": POLL_TOKEN, "wait_s": wait_s,
                    "timeout_ms": u64::from(wait_s) * 1000 + 2000, "retry_ms": 200,
                    "stale_after_s": stale_after_s}
    })
    .to_string()
}

struct Proxy {
    envoy: Envoy,
}

impl Proxy {
    async fn start(backend: &Backend, control: &ControlPlane, node: &str, plugin: &str) -> Proxy {
        require_wasm();
        let ports = Ports { control: control.addr.port(), ..Ports::free(backend.addr.port()).unwrap() };
        let config = envoy::render("control.yaml", ports, &[plugin])
            .unwrap()
            .replace("id: floodgate-local", &format!("id: {node}"));
        Proxy { envoy: Envoy::start(&config, ports, 2).await.unwrap() }
    }

    async fn upgrade(&self, path: &str) -> Upgrade {
        client::upgrade(self.envoy.listen, path).await.unwrap()
    }

    async fn expect_open(&self, path: &str) -> Session {
        match self.upgrade(path).await {
            Upgrade::Open(s) => *s,
            Upgrade::Refused(r) => panic!("expected 101 on {path}, got {} {}\n{}", r.status, r.body, self.envoy.log()),
        }
    }

    async fn refusal(&self, path: &str) -> Option<Refused> {
        match self.upgrade(path).await {
            Upgrade::Refused(r) => Some(r),
            Upgrade::Open(_) => None,
        }
    }

    /// Waits until the filter refuses `path` and returns the refusal and when it was seen. The
    /// other workers pick the snapshot up at their next tick: waits that long before returning.
    async fn first_refusal(&self, path: &str, within: Duration) -> (Refused, Instant) {
        let seen = eventually(within, &format!("a refused upgrade on {path}"), || async {
            self.refusal(path).await.filter(|r| r.headers.contains_key("x-floodgate")).map(|r| (r, Instant::now()))
        })
        .await;
        tokio::time::sleep(WORKER_TICK * 2).await;
        seen
    }

    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        stats::value_or_zero(&self.envoy.prometheus().await.unwrap(), name, labels)
    }
}

/// Upgrades on fresh connections (so Envoy spreads them over its workers): how many were refused
/// by the filter with `reason`.
async fn refused_with(proxy: &Proxy, path: &str, n: usize, reason: &str) -> usize {
    let mut refused = 0;
    for _ in 0..n {
        if let Some(r) = proxy.refusal(path).await {
            if r.json()["reason"] == reason {
                refused += 1;
            }
        }
    }
    refused
}

async fn assert_echoes(session: &mut Session, what: &str) {
    client::echo(session, what).await.unwrap_or_else(|e| panic!("the session opened before stopped echoing: {e}"));
}

fn alert(status_ends: Option<&str>) -> serde_json::Value {
    let mut a = json!({
        "labels": {"alertname": "CollaborationBackpressureCritical", "breaker": "collab_ws", "severity": "critical"},
        "annotations": {"summary": "Collaboration backpressure at 97%"},
    });
    if let Some(ends) = status_ends {
        a["endsAt"] = json!(ends);
    }
    json!([a])
}

fn rfc3339_now() -> String {
    floodgate_control::rfc3339(floodgate_control::now_ms())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_alertmanager_alert_refuses_new_upgrades_fleet_wide_then_resolving_ramps_them_back() {
    let redis = Redis::start().await.unwrap();
    let env = [
        ("FLOODGATE_REDIS_URL", redis.url()),
        ("FLOODGATE_DEACTIVATION_DELAY_S", "2".into()),
        ("FLOODGATE_COOLDOWN_S", "0".into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let control = control_plane(&env).await;
    let alertmanager = Alertmanager::start(&control.webhook_url(), WEBHOOK_TOKEN).await.unwrap();
    let backend = Backend::start(0).await.unwrap();
    let proxy = Proxy::start(&backend, &control, "envoy-a", &plugin_config(5, 30, 4000)).await;

    // Below any alert nothing is refused; a session opens and echoes.
    let mut session = proxy.expect_open("/ws").await;
    assert_echoes(&mut session, "before").await;
    eventually(Duration::from_secs(10), "the first poll", || async {
        (proxy.metric("floodgate_control_polls_total", &[("result", "ok")]).await >= 1.0).then_some(())
    })
    .await;

    alertmanager.post_alerts(&alert(None)).await.unwrap();
    // When the webhook landed: the activation appears in the control plane's API.
    let activated = eventually(Duration::from_secs(20), "the activation in floodgate-control", || async {
        let b = control.json("GET", "/api/v1/breakers", "").await.ok()?;
        let active = b["activations"].as_array()?.iter().any(|a| a["key"] == "collab_ws");
        active.then(Instant::now)
    })
    .await;
    let (refusal, refused_at) = proxy.first_refusal("/ws", Duration::from_secs(5)).await;
    let delay = refused_at.saturating_duration_since(activated);
    println!("webhook -> first refused upgrade: {} ms", delay.as_millis());
    assert!(delay < Duration::from_secs(1), "took {delay:?}");
    assert_eq!(refusal.status, 503);
    assert_eq!(refusal.headers["x-floodgate"], "forced_open");
    let body = refusal.json();
    assert_eq!((body["breaker"].as_str(), body["reason"].as_str()), (Some("collab_ws"), Some("backpressure_critical")));
    assert!(refusal.headers["retry-after"].parse::<u64>().unwrap() >= 1);

    // Every new upgrade is refused, whichever worker takes it; the session opened before echoes.
    assert_eq!(refused_with(&proxy, "/ws", 20, "backpressure_critical").await, 20);
    assert_echoes(&mut session, "during").await;
    assert_eq!(proxy.metric("floodgate_forced", &[("breaker", "collab_ws")]).await, 1.0);
    let handshakes = backend.control.handshakes();

    // Resolved: the deactivation comes after the delay, then the ramp admits a rising share.
    alertmanager.post_alerts(&alert(Some(&rfc3339_now()))).await.unwrap();
    let ramp_refusals = std::cell::Cell::new(0);
    let reopened = eventually(Duration::from_secs(30), "an admitted upgrade after resolving", || async {
        match proxy.upgrade("/ws").await {
            Upgrade::Open(_) => Some(Instant::now()),
            Upgrade::Refused(r) => {
                if r.json()["reason"] == "recovery_ramp" {
                    ramp_refusals.set(ramp_refusals.get() + 1);
                }
                None
            }
        }
    })
    .await;
    let ramp_seen = refused_with(&proxy, "/ws", 30, "recovery_ramp").await + ramp_refusals.get();
    println!("recovery ramp refusals seen: {ramp_seen}");
    assert!(ramp_seen > 0, "no upgrade was held back by the ramp");
    tokio::time::sleep(Duration::from_millis(4000).saturating_sub(reopened.elapsed())).await;
    assert_eq!(refused_with(&proxy, "/ws", 10, "recovery_ramp").await, 0, "the ramp did not end");
    assert!(backend.control.handshakes() > handshakes);
    assert_echoes(&mut session, "after").await;
    let events = control.json("GET", "/api/v1/breakers", "").await.unwrap();
    assert!(events["activations"].as_array().unwrap().is_empty(), "{events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wildcard_activation_refuses_every_cluster_and_a_keyed_one_only_its_own() {
    let control = control_plane(&[("FLOODGATE_COOLDOWN_S", "0")]).await;
    let backend = Backend::start(0).await.unwrap();
    let proxy = Proxy::start(&backend, &control, "envoy-a", &plugin_config(5, 30, 0)).await;
    proxy.expect_open("/ws").await;
    proxy.expect_open("/chat").await;

    let started = Instant::now();
    control.json("POST", "/api/v1/breakers/*/activate", r#"{"reason":"maintenance"}"#).await.unwrap();
    let (r, at) = proxy.first_refusal("/chat", Duration::from_secs(5)).await;
    println!("manual activation -> first refused upgrade: {} ms", at.duration_since(started).as_millis());
    assert_eq!(r.json()["reason"], "maintenance");
    assert_eq!(refused_with(&proxy, "/ws", 5, "maintenance").await, 5);
    assert_eq!(refused_with(&proxy, "/chat", 5, "maintenance").await, 5);

    control.json("POST", "/api/v1/breakers/*/deactivate", "").await.unwrap();
    eventually(Duration::from_secs(5), "upgrades admitted again", || async {
        proxy.refusal("/ws").await.is_none().then_some(())
    })
    .await;
    // One worker admits; the other drops the wildcard at its next tick. Until then it would
    // still refuse /chat with the wildcard's reason.
    tokio::time::sleep(WORKER_TICK * 2).await;

    control.json("POST", "/api/v1/breakers/chat_ws/activate", r#"{"reason":"chat_overload"}"#).await.unwrap();
    let (r, _) = proxy.first_refusal("/chat", Duration::from_secs(5)).await;
    assert_eq!((r.json()["breaker"].as_str(), r.json()["reason"].as_str()), (Some("chat_ws"), Some("chat_overload")));
    for _ in 0..5 {
        proxy.expect_open("/ws").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_control_plane_lapses_after_stale_after_s_and_is_followed_again_after_restart() {
    let redis = Redis::start().await.unwrap();
    let url = redis.url();
    let mut control = control_plane(&[("FLOODGATE_REDIS_URL", url.as_str())]).await;
    let backend = Backend::start(0).await.unwrap();
    let proxy = Proxy::start(&backend, &control, "envoy-a", &plugin_config(1, 4, 0)).await;

    control.json("POST", "/api/v1/breakers/collab_ws/activate", r#"{"reason":"incident"}"#).await.unwrap();
    proxy.first_refusal("/ws", Duration::from_secs(5)).await;
    assert_eq!(proxy.metric("floodgate_control_stale", &[]).await, 0.0);

    control.stop().await.unwrap();
    let stopped = Instant::now();
    // The last snapshot holds for a while...
    assert_eq!(refused_with(&proxy, "/ws", 3, "incident").await, 3);
    // ...then lapses: local breaking only, and the staleness shows.
    eventually(Duration::from_secs(15), "upgrades admitted once the snapshot is stale", || async {
        proxy.refusal("/ws").await.is_none().then_some(())
    })
    .await;
    let lapsed_after = stopped.elapsed();
    println!("control plane down -> overrides lapsed after {} ms (stale_after_s = 4)", lapsed_after.as_millis());
    assert!(lapsed_after >= Duration::from_secs(2), "lapsed too early: {lapsed_after:?}");
    eventually(Duration::from_secs(5), "floodgate_control_stale = 1", || async {
        (proxy.metric("floodgate_control_stale", &[]).await == 1.0).then_some(())
    })
    .await;
    assert!(proxy.metric("floodgate_control_polls_total", &[("result", "error")]).await >= 1.0);

    // Back (its state kept in Redis): the filter catches up by itself.
    control.restart().await.unwrap();
    let (r, _) = proxy.first_refusal("/ws", Duration::from_secs(40)).await;
    assert_eq!(r.json()["reason"], "incident");
    eventually(Duration::from_secs(5), "floodgate_control_stale = 0", || async {
        (proxy.metric("floodgate_control_stale", &[]).await == 0.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_envoys_apply_an_activation_and_the_fleet_lists_both_with_one_poller_each() {
    let control = control_plane(&[]).await;
    let backend = Backend::start(0).await.unwrap();
    let plugin = plugin_config(5, 30, 0);
    let a = Proxy::start(&backend, &control, "envoy-a", &plugin).await;
    let b = Proxy::start(&backend, &control, "envoy-b", &plugin).await;
    // Some traffic so each proxy tracks its breaker and reports it.
    a.expect_open("/ws").await;
    b.expect_open("/chat").await;

    control.json("POST", "/api/v1/breakers/collab_ws/activate", r#"{"reason":"fleet_test"}"#).await.unwrap();
    a.first_refusal("/ws", Duration::from_secs(5)).await;
    b.first_refusal("/ws", Duration::from_secs(5)).await;

    let fleet = eventually(Duration::from_secs(10), "both proxies in the fleet with their breakers", || async {
        let f = control.json("GET", "/api/v1/fleet", "").await.ok()?;
        let proxies = f["proxies"].as_array()?.clone();
        let find = |id: &str| proxies.iter().find(|p| p["proxy"] == id).cloned();
        let (pa, pb) = (find("envoy-a")?, find("envoy-b")?);
        (pa["breakers"]["collab_ws"] == "closed" && pb["breakers"]["chat_ws"] == "closed").then_some(f)
    })
    .await;
    println!("fleet: {fleet}");

    // One long-poll held per Envoy, whatever its worker count.
    let waiters = eventually(Duration::from_secs(10), "two held long-polls", || async {
        let (_, _, text) = control.call("GET", "/metrics", "").await.ok()?;
        let v = stats::value(&text, "floodgate_control_poll_waiters", &[])?;
        (v == 2.0).then_some(v)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, _, text) = control.call("GET", "/metrics", "").await.unwrap();
    assert_eq!(stats::value(&text, "floodgate_control_poll_waiters", &[]), Some(waiters));
}
