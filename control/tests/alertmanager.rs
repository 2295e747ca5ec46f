//! Real Alertmanager delivery: two Alertmanagers that do not gossip (an HA pair whose cluster is
//! partitioned, the worst case of at-least-once delivery: every notification arrives twice, in
//! any order) both post to one floodgate-control served over TCP. Two alerts fire for one
//! breaker; when the first resolves the breaker stays forced open (the other still fires); when
//! the second resolves it is deactivated once, after the delay. Each activation and deactivation
//! is one event, whatever the duplicates.
// Test code throughout: clippy.toml lets it unwrap, expect and panic.
#![cfg(test)]

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use floodgate_control::engine::Rules;
use floodgate_control::store::{MemoryStore, Store};

struct Alertmanager {
    port: u16,
    child: Child,
    dir: std::path::PathBuf,
}

impl Alertmanager {
    fn start(webhook_url: &str, token: &str) -> Alertmanager {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("floodgate-am-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), token).unwrap();
        let config = format!(
            "route:\n  receiver: floodgate\n  group_by: [alertname, breaker]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n- name: floodgate\n  webhook_configs:\n  - url: {webhook_url}\n    send_resolved: true\n    http_config:\n      authorization:\n        type: Bearer\n        credentials_file: {}\n",
            dir.join("token").display()
        );
        std::fs::write(dir.join("alertmanager.yml"), config).unwrap();
        let child =
            Command::new(std::env::var("FLOODGATE_ALERTMANAGER").unwrap_or("/usr/bin/prometheus-alertmanager".into()))
                .arg(format!("--config.file={}", dir.join("alertmanager.yml").display()))
                .arg(format!("--storage.path={}", dir.join("data").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--cluster.listen-address=")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("alertmanager is not installed: run scripts/deps.sh prometheus");
        Alertmanager { port, child, dir }
    }

    async fn post(&self, alerts: &serde_json::Value) {
        let client = reqwest_like::post(self.port, "/api/v2/alerts", &alerts.to_string()).await;
        assert_eq!(client, 200, "alertmanager refused {alerts}");
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A minimal HTTP/1.1 client (no extra dependency).
mod reqwest_like {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    pub async fn request(port: u16, method: &str, path: &str, body: &str) -> Option<u16> {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        out.split_whitespace().nth(1)?.parse().ok()
    }

    pub async fn post(port: u16, path: &str, body: &str) -> u16 {
        request(port, "POST", path, body).await.unwrap_or(0)
    }
}

fn alert(name: &str, starts: &str, ends: Option<&str>) -> serde_json::Value {
    let mut a = serde_json::json!({
        "labels": {"alertname": "CollaborationBackpressureCritical", "breaker": "collab_ws", "instance": name},
        "annotations": {"summary": "Backpressure at 97%"},
        "startsAt": starts,
    });
    if let Some(e) = ends {
        a["endsAt"] = e.into();
    }
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unclustered_alertmanager_pair_delivering_everything_twice_activates_and_deactivates_once() {
    let store = Arc::new(MemoryStore::default());
    let rules = Rules { cooldown_ms: 0, deactivation_delay_ms: 1_500, ..Rules::default() };
    let app_state = state(store.clone(), rules);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let router = app_for(app_state.clone());
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let expiry = tokio::spawn(floodgate_control::expiry_loop(app_state.clone()));
    let url = format!("http://127.0.0.1:{port}/webhook/alertmanager");
    let pair = [Alertmanager::start(&url, WEBHOOK_TOKEN), Alertmanager::start(&url, WEBHOOK_TOKEN)];
    for am in &pair {
        eventually(20, "alertmanager ready", async || {
            reqwest_like::request(am.port, "GET", "/-/ready", "").await == Some(200)
        })
        .await;
    }
    let now = |offset_s: i64| {
        let ms = (floodgate_control::now_ms() as i64 + offset_s * 1000) as u64;
        floodgate_control::rfc3339(ms)
    };
    let (a_starts, b_starts) = (now(-60), now(-30));
    // Prometheus sends every alert to both.
    for am in &pair {
        am.post(&serde_json::json!([alert("a", &a_starts, None), alert("b", &b_starts, None)])).await;
    }
    let forced = async || store.state().await.unwrap().activations.contains_key("collab_ws");
    eventually(20, "the breaker to be forced open", async || forced().await).await;
    // A resolves (on both); B still fires: the breaker stays open well past the delay.
    for am in &pair {
        am.post(&serde_json::json!([alert("a", &a_starts, Some(&now(0)))])).await;
    }
    eventually(20, "A's resolve to arrive", async || {
        store.state().await.unwrap().alerts.values().any(|t| t.resolved_ms.is_some())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(forced().await, "deactivated while B still fires");
    // B resolves: deactivated once, after the delay.
    for am in &pair {
        am.post(&serde_json::json!([alert("b", &b_starts, Some(&now(0)))])).await;
    }
    eventually(20, "the breaker to be deactivated", async || !forced().await).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // late duplicates from the pair land
    let st = store.state().await.unwrap();
    assert!(st.activations.is_empty(), "a late duplicate re-activated it: {st:?}");
    let kinds: Vec<&str> = st.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "activated").count(), 1, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "deactivated").count(), 1, "{kinds:?}");
    // Both Alertmanagers delivered: every notification came at least twice.
    let received = app_state.metrics.webhooks.get();
    println!("webhooks received: {received}, events: {kinds:?}");
    assert!(received >= 6, "{received}");
    server.abort();
    expiry.abort();
}
