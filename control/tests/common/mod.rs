#![allow(dead_code)]

use std::sync::atomic::AtomicI64;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use floodgate_control::app::{app, AppState};
use floodgate_control::engine::Rules;
use floodgate_control::metrics::Metrics;
use floodgate_control::settings::default_alerts;
use floodgate_control::store::Store;
use http_body_util::BodyExt;
use tower::ServiceExt;

pub const TOKEN: &str = "s3cret";
pub const POLL_TOKEN: &str = "poll-only";
pub const WEBHOOK_TOKEN: &str = "webhook-only";

pub fn state(store: Arc<dyn Store>, rules: Rules) -> Arc<AppState> {
    Arc::new(AppState {
        store,
        rules,
        tokens: floodgate_control::app::Tokens {
            admin: Some(TOKEN.into()),
            poll: Some(POLL_TOKEN.into()),
            webhook: Some(WEBHOOK_TOKEN.into()),
        },
        alerts: default_alerts(),
        key_label: "breaker".into(),
        metrics: Metrics::default(),
        waiters: AtomicI64::new(0),
        snapshots: Default::default(),
    })
}

pub async fn call(
    router: &Router,
    method: &str,
    uri: &str,
    auth: Option<&str>,
    body: &str,
) -> (StatusCode, serde_json::Value, String) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = router.clone().oneshot(req.body(Body::from(body.to_string())).unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null), text)
}

pub fn bearer() -> Option<&'static str> {
    Some("Bearer s3cret")
}

pub fn alert(status: &str, name: &str, breaker: Option<&str>, summary: &str, fingerprint: &str) -> String {
    let mut labels = serde_json::json!({"alertname": name, "severity": "critical"});
    if let Some(b) = breaker {
        labels["breaker"] = b.into();
    }
    serde_json::json!({
        "version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0, "status": status, "receiver": "floodgate",
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am",
        "alerts": [{"status": status, "labels": labels, "annotations": {"summary": summary},
                    "startsAt": "2026-11-22T10:00:00Z",
                    // As Alertmanager sends them: a resolve ends when it is sent (at the latest);
                    // a firing alert's endsAt is not exposed (the zero time).
                    "endsAt": if status == "resolved" {
                        floodgate_control::rfc3339(floodgate_control::now_ms())
                    } else {
                        "0001-01-01T00:00:00Z".to_string()
                    },
                    "generatorURL": "http://prom", "fingerprint": fingerprint}]
    })
    .to_string()
}

pub fn app_for(state: Arc<AppState>) -> Router {
    app(state)
}

/// A real `redis-server` on a free loopback port, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Self::start_on(port)
    }

    pub fn start_on(port: u16) -> RedisServer {
        Self::start_with(port, &[])
    }

    /// With extra arguments, e.g. `["--replicaof", "127.0.0.1", "6379"]`.
    pub fn start_with(port: u16, extra: &[&str]) -> RedisServer {
        let dir = std::env::temp_dir().join(format!("floodgate-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .args(extra)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is not installed: run scripts/deps.sh redis");
        wait_for_port(port, "redis-server");
        RedisServer { port, child, dir }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn signal_quietly(&self, signal: &str) -> std::io::Result<std::process::ExitStatus> {
        std::process::Command::new("kill").args(["-s", signal, &self.child.id().to_string()]).status()
    }

    /// Sends `signal` (`STOP`: the server hangs, connections stay open; `CONT`: it goes on).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let ok = std::process::Command::new("kill").args(["-s", signal, &pid]).status().unwrap().success();
        assert!(ok, "kill -s {signal} {pid}");
    }

    pub fn stop(&mut self) {
        let _ = self.signal_quietly("CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A real Redis Sentinel (`redis-server --sentinel`) watching the master on `master_port` as
/// `mymaster`, with short timings.
pub struct Sentinel {
    pub port: u16,
    child: std::process::Child,
}

impl Sentinel {
    pub fn start(master_port: u16) -> Sentinel {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("floodgate-sentinel-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n",
                dir.display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is not installed: run scripts/deps.sh redis");
        wait_for_port(port, "sentinel");
        Sentinel { port, child }
    }

    pub async fn command(&self, args: &[&str]) -> redis::Value {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut con).await.unwrap()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (10 s at most) until something listens on `port`.
fn wait_for_port(port: u16, what: &str) {
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < std::time::Duration::from_secs(10), "{what} did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Polls until `f` is true or fails after `secs`.
pub async fn eventually(secs: u64, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f().await {
        assert!(start.elapsed() < std::time::Duration::from_secs(secs), "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
