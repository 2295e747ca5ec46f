//! The Redis store on a real three-master Redis Cluster started by the test on loopback
//! (`redis+cluster://`): every Floodgate key in one hash slot (so the commit script runs), two
//! replicas agreeing, the original keys and channel kept, cross-replica wake-ups, and a new
//! epoch after FLUSHALL on every master.
// Test code throughout: clippy.toml lets it unwrap, expect and panic.
#![cfg(test)]

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::*;
use floodgate_control::engine::Rules;
use floodgate_control::redis_store::{key, RedisStore, EVENTS_CHANNEL};
use floodgate_control::store::Store;
use futures_util::StreamExt;

struct Cluster {
    ports: Vec<u16>,
    nodes: Vec<Child>,
    dir: std::path::PathBuf,
}

impl Cluster {
    fn start() -> Cluster {
        let ports: Vec<u16> =
            (0..3).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).collect();
        // Cluster bus ports are port + 10000: make sure those are below 65536.
        if ports.iter().any(|p| *p > 55_000) {
            return Cluster::start();
        }
        let dir = std::env::temp_dir().join(format!("floodgate-cluster-{}-{}", std::process::id(), ports[0]));
        let mut nodes = vec![];
        for p in &ports {
            let d = dir.join(p.to_string());
            std::fs::create_dir_all(&d).unwrap();
            let child = Command::new("redis-server")
                .args(["--port", &p.to_string(), "--bind", "127.0.0.1", "--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&d)
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server is not installed: run scripts/deps.sh redis");
            nodes.push(child);
        }
        for p in &ports {
            let start = Instant::now();
            while std::net::TcpStream::connect(("127.0.0.1", *p)).is_err() {
                assert!(start.elapsed() < Duration::from_secs(10), "node {p} did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        let cluster = Cluster { ports, nodes, dir };
        let start = Instant::now();
        while !cluster.ports.iter().all(|p| {
            let out = Command::new("redis-cli").args(["-p", &p.to_string(), "cluster", "info"]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok")
        }) {
            assert!(start.elapsed() < Duration::from_secs(20), "cluster_state never ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    fn url(&self) -> String {
        let hosts: Vec<String> = self.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    fn cli(&self, args: &[&str]) -> String {
        let out =
            Command::new("redis-cli").arg("-c").args(["-p", &self.ports[0].to_string()]).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            let _ = n.kill();
            let _ = n.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn replica(cluster: &Cluster) -> axum::Router {
    let store: Arc<dyn Store> = Arc::new(RedisStore::connect(&cluster.url()).await.unwrap());
    app_for(state(store, Rules { cooldown_ms: 0, ..Rules::default() }))
}

#[tokio::test]
async fn the_store_runs_on_a_three_master_cluster() {
    let cluster = Cluster::start();
    // Floodgate's keys all hash to one slot.
    let slot = cluster.cli(&["cluster", "keyslot", &key("state")]);
    for name in ["rev", "version", "deactivations", "fleet"] {
        assert_eq!(cluster.cli(&["cluster", "keyslot", &key(name)]), slot, "{name}");
    }
    let a = replica(&cluster).await;
    let b = replica(&cluster).await;
    eventually(10, "ready", async || call(&a, "GET", "/ready", None, "").await.0 == StatusCode::OK).await;
    // Subscribe to the events on one node (PUBLISH reaches every node of a cluster).
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/", cluster.ports[1])).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(EVENTS_CHANNEL).await.unwrap();

    let v0 = call(&b, "GET", "/v1/snapshot", bearer(), "").await.1["version"].as_u64().unwrap();
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { call(&b, "GET", &format!("/v1/snapshot?version={v0}&wait=20"), bearer(), "").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fire = alert("firing", "CollaborationBackpressureCritical", None, "97%", "fp1");
    let (status, json, _) = call(&a, "POST", "/webhook/alertmanager", bearer(), &fire).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["results"][0]["outcome"]["result"], "activated");
    let (status, snap, _) = waiter.await.unwrap();
    assert_eq!(status, StatusCode::OK, "the other replica's long-poll woke");
    assert_eq!(snap["breakers"][0]["key"], "*");
    assert!(snap["version"].as_u64().unwrap() > v0);

    // The original keys, written next to the commit.
    assert_eq!(cluster.cli(&["get", "collab:circuit_breaker:active"]), "1");
    let status: serde_json::Value =
        serde_json::from_str(&cluster.cli(&["get", "collab:circuit_breaker:status"])).unwrap();
    assert_eq!(status["state"], "open");
    let msg = tokio::time::timeout(Duration::from_secs(3), pubsub.on_message().next()).await.unwrap().unwrap();
    let event: serde_json::Value = serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap();
    assert_eq!(event["event_type"], "activate");

    // Exactly one of two replicas wins concurrent activations of one key.
    let calls = (0..10).map(|i| {
        let r = if i % 2 == 0 { a.clone() } else { b.clone() };
        async move { call(&r, "POST", "/api/v1/breakers/chat/activate", bearer(), "").await.1 }
    });
    let results = futures_util::future::join_all(calls).await;
    assert_eq!(results.iter().filter(|j| j["outcome"]["result"] == "activated").count(), 1, "{results:?}");

    // Every master loses its data: a proxy holding the last version gets a newer one.
    let held = call(&a, "GET", "/v1/snapshot", bearer(), "").await.1["version"].as_u64().unwrap();
    for p in &cluster.ports {
        let out = Command::new("redis-cli").args(["-p", &p.to_string(), "flushall"]).output().unwrap();
        assert!(out.status.success());
    }
    let (status, snap, _) = call(&b, "GET", &format!("/v1/snapshot?version={held}&wait=3"), bearer(), "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(snap["version"].as_u64().unwrap() > held, "{snap}");
    assert_eq!(cluster.cli(&["get", "collab:circuit_breaker:active"]), "");
}
