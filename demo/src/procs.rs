//! The real servers around Envoy: Redis, floodgate-control, Alertmanager and Prometheus, each a
//! child process on free loopback ports, with its log in a scratch directory, killed on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tokio::process::{Child, Command};

use crate::client::{http_get, http_request, HttpAnswer};
use crate::envoy::{free_port, scratch_dir};
use crate::repo_root;

/// A child process with a log file, killed when dropped.
pub struct Proc {
    child: Option<Child>,
    name: &'static str,
    dir: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, mut cmd: Command, dir: PathBuf) -> anyhow::Result<Proc> {
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let child = cmd
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Proc { child: Some(child), name, dir })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.log", self.name))).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Kills the process and waits for it to exit.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            c.start_kill()?;
            c.wait().await?;
        }
        Ok(())
    }

    fn exited(&mut self) -> Option<String> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(status)) => Some(format!("{} exited ({status}):\n{}", self.name, self.log())),
            _ => None,
        }
    }

    async fn wait_http(&mut self, addr: SocketAddr, path: &str, within: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Some(why) = self.exited() {
                bail!(why);
            }
            if let Ok((200, _, _)) = http_get(addr, path).await {
                return Ok(());
            }
            if start.elapsed() > within {
                bail!("{} not ready on {addr}{path} within {within:?}:\n{}", self.name, self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }
}

/// A scratch `redis-server` (no persistence) on a free port; `restart` keeps the port.
pub struct Redis {
    pub port: u16,
    proc: Proc,
}

impl Redis {
    pub async fn start() -> anyhow::Result<Redis> {
        Self::start_on(free_port()?).await
    }

    pub async fn start_on(port: u16) -> anyhow::Result<Redis> {
        let dir = scratch_dir()?;
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir);
        let mut proc = Proc::spawn("redis", cmd, dir).context("redis-server: run scripts/deps.sh redis")?;
        let start = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if let Some(why) = proc.exited() {
                bail!(why);
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!("redis-server did not start:\n{}", proc.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Redis { port, proc })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.proc.stop().await
    }
}

/// `$FLOODGATE_CONTROL_BIN`, else the debug build (`cargo build -p floodgate-control`).
pub fn control_binary() -> PathBuf {
    std::env::var_os("FLOODGATE_CONTROL_BIN").map(PathBuf::from).unwrap_or_else(|| {
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"));
        target.join("debug/floodgate-control")
    })
}

/// A `floodgate-control serve` process.
pub struct ControlPlane {
    pub addr: SocketAddr,
    pub token: String,
    env: Vec<(String, String)>,
    proc: Proc,
}

impl ControlPlane {
    /// Starts it on `port` (0: a free one) with `FLOODGATE_*` settings from `env`.
    pub async fn start(port: u16, token: &str, env: &[(&str, &str)]) -> anyhow::Result<ControlPlane> {
        let port = if port == 0 { free_port()? } else { port };
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let proc = Self::spawn(addr, token, &env).await?;
        Ok(ControlPlane { addr, token: token.to_string(), env, proc })
    }

    async fn spawn(addr: SocketAddr, token: &str, env: &[(String, String)]) -> anyhow::Result<Proc> {
        let bin = control_binary();
        if !bin.exists() {
            bail!("{} is missing: build it with `cargo build -p floodgate-control`", bin.display());
        }
        let mut cmd = Command::new(&bin);
        cmd.arg("serve").env("FLOODGATE_LISTEN", addr.to_string()).env("FLOODGATE_TOKEN", token);
        cmd.env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut proc = Proc::spawn("floodgate-control", cmd, scratch_dir()?)?;
        proc.wait_http(addr, "/health", Duration::from_secs(20)).await?;
        Ok(proc)
    }

    /// Stops the process (the port stays reserved for [`ControlPlane::restart`]).
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.proc.stop().await
    }

    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.proc.stop().await?;
        self.proc = Self::spawn(self.addr, &self.token, &self.env).await?;
        Ok(())
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// A request with the bearer token.
    pub async fn call(&self, method: &str, path: &str, body: &str) -> anyhow::Result<HttpAnswer> {
        let auth = format!("Bearer {}", self.token);
        let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
        http_request(self.addr, method, path, &headers, body).await
    }

    pub async fn json(&self, method: &str, path: &str, body: &str) -> anyhow::Result<serde_json::Value> {
        match self.call(method, path, body).await? {
            (s, _, text) if (200..300).contains(&s) => Ok(serde_json::from_str(&text)?),
            (s, _, text) => Err(anyhow!("{method} {path} answered {s}: {text}")),
        }
    }

    pub fn webhook_url(&self) -> String {
        format!("http://{}/webhook/alertmanager", self.addr)
    }
}

/// A real Alertmanager routing every alert to one webhook, with short timings.
pub struct Alertmanager {
    pub addr: SocketAddr,
    proc: Proc,
}

impl Alertmanager {
    pub fn binary() -> PathBuf {
        std::env::var_os("FLOODGATE_ALERTMANAGER")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/usr/bin/prometheus-alertmanager".into())
    }

    /// `group_wait`/`group_interval` short so a test or the demo sees notifications within seconds.
    pub async fn start(webhook_url: &str, token: &str) -> anyhow::Result<Alertmanager> {
        let dir = scratch_dir()?;
        let token_file = dir.join("token");
        std::fs::write(&token_file, token)?;
        let config = format!(
            "route:\n  receiver: floodgate\n  group_by: [alertname, breaker]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n- name: floodgate\n  webhook_configs:\n  - url: {webhook_url}\n    send_resolved: true\n    http_config:\n      authorization:\n        type: Bearer\n        credentials_file: {}\n",
            token_file.display()
        );
        let config_file = dir.join("alertmanager.yml");
        std::fs::write(&config_file, config)?;
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut cmd = Command::new(Self::binary());
        cmd.arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            // No gossip: a lone instance needs no cluster port.
            .arg("--cluster.listen-address=");
        let mut proc = Proc::spawn("alertmanager", cmd, dir).context("alertmanager: run scripts/deps.sh prometheus")?;
        proc.wait_http(addr, "/-/ready", Duration::from_secs(20)).await?;
        Ok(Alertmanager { addr, proc })
    }

    /// Posts alerts to `/api/v2/alerts` (as Prometheus does).
    pub async fn post_alerts(&self, alerts: &serde_json::Value) -> anyhow::Result<()> {
        let body = alerts.to_string();
        match http_request(self.addr, "POST", "/api/v2/alerts", &[("content-type", "application/json")], &body).await? {
            (200, _, _) => Ok(()),
            (s, _, text) => Err(anyhow!("alertmanager answered {s}: {text}")),
        }
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }
}

/// A real Prometheus with the given config text (scrape and rule files are the caller's).
pub struct Prometheus {
    pub addr: SocketAddr,
    proc: Proc,
}

impl Prometheus {
    pub fn binary() -> PathBuf {
        std::env::var_os("FLOODGATE_PROMETHEUS").map(PathBuf::from).unwrap_or_else(|| "/usr/bin/prometheus".into())
    }

    /// Writes `files` (name, content) next to `prometheus.yml` and starts Prometheus on them.
    pub async fn start(config: &str, files: &[(&str, &str)]) -> anyhow::Result<Prometheus> {
        let dir = scratch_dir()?;
        std::fs::write(dir.join("prometheus.yml"), config)?;
        for (name, text) in files {
            std::fs::write(dir.join(name), text)?;
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut cmd = Command::new(Self::binary());
        cmd.current_dir(&dir)
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"));
        let mut proc = Proc::spawn("prometheus", cmd, dir).context("prometheus: run scripts/deps.sh prometheus")?;
        proc.wait_http(addr, "/-/ready", Duration::from_secs(30)).await?;
        Ok(Prometheus { addr, proc })
    }

    /// An instant query; the `data.result` array.
    pub async fn query(&self, expr: &str) -> anyhow::Result<serde_json::Value> {
        let path = format!("/api/v1/query?query={}", url_encode(expr));
        match http_get(self.addr, &path).await? {
            (200, _, text) => Ok(serde_json::from_str::<serde_json::Value>(&text)?["data"]["result"].clone()),
            (s, _, text) => Err(anyhow!("query {expr:?} answered {s}: {text}")),
        }
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }
}

pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
