//! Runs the real Envoy binary on one of the configs in `envoy/`, with its ports, wasm path and
//! plugin configuration swapped for the caller's. The process is killed when dropped.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tokio::process::{Child, Command};

use crate::repo_root;

/// `$FLOODGATE_ENVOY`, else the virtualenv `scripts/deps.sh` makes, else `envoy` on PATH.
pub fn envoy_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("FLOODGATE_ENVOY") {
        return PathBuf::from(p);
    }
    let venv = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default().join(".cache/floodgate/venv/bin/envoy");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("envoy")
    }
}

/// `$FLOODGATE_WASM`, else the release module `make wasm` builds.
pub fn wasm_path() -> PathBuf {
    std::env::var_os("FLOODGATE_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/wasm32-wasip1/release/floodgate.wasm"))
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The ports a rendered config uses, in place of the files' 9901 (admin), 10000 (listener),
/// 8081 (backend), and 9000 (control plane).
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub admin: u16,
    pub listen: u16,
    pub backend: u16,
    pub control: u16,
}

impl Ports {
    pub fn free(backend: u16) -> anyhow::Result<Ports> {
        Ok(Ports { admin: free_port()?, listen: free_port()?, backend, control: 9000 })
    }
}

/// Reads `envoy/<name>` and substitutes ports, the wasm path and the plugin configuration
/// (the one-line `value: '...'` of each Floodgate filter; `None` keeps the file's).
pub fn render(name: &str, ports: Ports, plugin_configs: &[&str]) -> anyhow::Result<String> {
    let path = repo_root().join("envoy").join(name);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let wasm = wasm_path();
    let mut configs = plugin_configs.iter();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let indent = &line[..line.len() - line.trim_start().len()];
        let trimmed = line.trim_start();
        let line = if trimmed.starts_with("value: '") {
            match configs.next() {
                Some(cfg) => format!("{indent}value: '{}'", cfg.replace('\'', "''")),
                None => line.to_string(),
            }
        } else {
            line.replace("port_value: 9901}", &format!("port_value: {}}}", ports.admin))
                .replace("port_value: 10000}", &format!("port_value: {}}}", ports.listen))
                .replace("port_value: 8081}", &format!("port_value: {}}}", ports.backend))
                .replace("port_value: 9000}", &format!("port_value: {}}}", ports.control))
                .replace("target/wasm32-wasip1/release/floodgate.wasm", &wasm.display().to_string())
        };
        out.push_str(&line);
        out.push('\n');
    }
    Ok(out)
}

static SEQ: AtomicU32 = AtomicU32::new(0);

pub fn scratch_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "floodgate-envoy-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

pub struct Envoy {
    child: Child,
    pub admin: SocketAddr,
    pub listen: SocketAddr,
    dir: PathBuf,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `envoy --mode validate`: whether Envoy accepts the config, and what it logged.
pub async fn validate(config: &str) -> anyhow::Result<(bool, String)> {
    let dir = scratch_dir()?;
    let file = dir.join("envoy.yaml");
    std::fs::write(&file, config)?;
    let out = Command::new(envoy_binary())
        .args(["--mode", "validate", "--disable-hot-restart", "-l", "info", "-c"])
        .arg(&file)
        .output()
        .await
        .context("running envoy --mode validate")?;
    let _ = std::fs::remove_dir_all(&dir);
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), log))
}

impl Envoy {
    /// Starts Envoy with `--concurrency N` and waits until its admin says it is ready.
    /// Starts Envoy on `config`, rendered for `ports`. The ports were free when chosen, not
    /// reserved: when another process took one meanwhile (Envoy exits with "Address already in
    /// use"), Envoy is started again on new ones, up to three times; `admin` and `listen` of the
    /// returned Envoy are the ports it runs on.
    pub async fn start(config: &str, ports: Ports, concurrency: u32) -> anyhow::Result<Envoy> {
        let (mut config, mut ports) = (config.to_string(), ports);
        let mut tries = 0;
        loop {
            match Envoy::start_once(&config, ports, concurrency).await {
                Err(e) if tries < 3 && format!("{e:#}").contains("Address already in use") => {
                    tries += 1;
                    let fresh = Ports { admin: free_port()?, listen: free_port()?, ..ports };
                    config = config
                        .replace(&format!("port_value: {}}}", ports.admin), &format!("port_value: {}}}", fresh.admin))
                        .replace(
                            &format!("port_value: {}}}", ports.listen),
                            &format!("port_value: {}}}", fresh.listen),
                        );
                    ports = fresh;
                }
                other => return other,
            }
        }
    }

    async fn start_once(config: &str, ports: Ports, concurrency: u32) -> anyhow::Result<Envoy> {
        let dir = scratch_dir()?;
        let file = dir.join("envoy.yaml");
        std::fs::write(&file, config)?;
        let log = std::fs::File::create(dir.join("envoy.log"))?;
        let child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&file)
            .args(["--concurrency", &concurrency.to_string(), "--disable-hot-restart", "-l", "info"])
            .args(["--component-log-level", "wasm:debug"])
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", envoy_binary().display()))?;
        let mut envoy = Envoy {
            child,
            admin: SocketAddr::from(([127, 0, 0, 1], ports.admin)),
            listen: SocketAddr::from(([127, 0, 0, 1], ports.listen)),
            dir,
        };
        envoy.wait_ready(Duration::from_secs(30)).await?;
        Ok(envoy)
    }

    async fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("envoy exited ({status}) before it was ready:\n{}", self.log());
            }
            if let Ok((200, _, _)) = crate::client::http_get(self.admin, "/ready").await {
                return Ok(());
            }
            if start.elapsed() > within {
                bail!("envoy not ready within {within:?}:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("envoy.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `/stats/prometheus`, the text Prometheus scrapes.
    pub async fn prometheus(&self) -> anyhow::Result<String> {
        match crate::client::http_get(self.admin, "/stats/prometheus").await? {
            (200, _, body) => Ok(body),
            (status, _, body) => Err(anyhow!("stats answered {status}: {body}")),
        }
    }

    /// Stops Envoy and waits for it to exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}
