//! `floodgate-control serve` runs the service; `floodgate-control ctl ...` talks to one.

use std::path::PathBuf;
use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use floodgate_control::app::{app, AppState, Tokens};
use floodgate_control::metrics::Metrics;
use floodgate_control::redis_store::RedisStore;
use floodgate_control::store::{MemoryStore, Store};
use floodgate_control::{expiry_loop, settings};
use floodgate_core::wire::percent_encode;

#[derive(Parser)]
#[command(name = "floodgate-control", version, about = "Alertmanager-driven breaker activations for Floodgate")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the service.
    Serve {
        /// TOML config file; the environment (FLOODGATE_*) overrides it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Run without a bearer token (local experiments only).
        #[arg(long)]
        no_auth: bool,
    },
    /// Operator commands against a running service.
    Ctl {
        #[arg(long, env = "FLOODGATE_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long, env = "FLOODGATE_TOKEN", default_value = "")]
        token: String,
        #[command(subcommand)]
        action: Ctl,
    },
}

#[derive(Subcommand)]
enum Ctl {
    /// Active breakers and recent events.
    Status,
    /// Force a breaker key (or `*`) open.
    Activate {
        key: String,
        #[arg(long, default_value = "manual")]
        reason: String,
        #[arg(long)]
        ttl_s: Option<u64>,
    },
    Deactivate {
        key: String,
    },
    /// Close every proxy's local breaker(s) for a key (or `*`) once, through the recovery ramp.
    Reset {
        key: String,
        #[arg(long, default_value = "manual")]
        reason: String,
    },
    /// Close every proxy's existing WebSockets to a key (or `*`) gradually: at most
    /// `--per-second` per second per proxy, for `--for` seconds.
    Drain {
        key: String,
        #[arg(long)]
        per_second: u32,
        /// How long the drain lasts, in seconds.
        #[arg(long = "for", value_name = "SECONDS")]
        duration_s: u64,
        #[arg(long, default_value = "manual")]
        reason: String,
    },
    /// Proxies and their local breaker states.
    Fleet,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Serve { config, no_auth } => serve(config, no_auth).await,
        Cmd::Ctl { url, token, action } => ctl(&url, &token, action).await,
    }
}

async fn serve(config: Option<PathBuf>, no_auth: bool) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let s = settings::load(config.as_deref(), &|k| std::env::var(k).ok(), no_auth).map_err(|e| anyhow!(e))?;
    let store: Arc<dyn Store> = match &s.redis_url {
        Some(url) => Arc::new(RedisStore::connect(url).await.map_err(|e| anyhow!("FLOODGATE_REDIS_URL: {e}"))?),
        None => Arc::new(MemoryStore::default()),
    };
    let state = Arc::new(AppState {
        store,
        rules: s.rules.clone(),
        tokens: Tokens { admin: s.token.clone(), poll: s.poll_token.clone(), webhook: s.webhook_token.clone() },
        alerts: s.alerts.clone(),
        key_label: s.key_label.clone(),
        metrics: Metrics::default(),
        waiters: AtomicI64::new(0),
        snapshots: Default::default(),
    });
    tokio::spawn(expiry_loop(state.clone()));
    let listener = tokio::net::TcpListener::bind(s.listen).await.with_context(|| format!("binding {}", s.listen))?;
    tracing::info!(listen = %listener.local_addr()?, store = if s.redis_url.is_some() { "redis" } else { "memory" }, auth = s.token.is_some(), "floodgate-control serving");
    axum::serve(listener, app(state)).with_graceful_shutdown(shutdown()).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term => {} }
}

async fn ctl(url: &str, token: &str, action: Ctl) -> anyhow::Result<()> {
    let (method, path, body) = match action {
        Ctl::Status => ("GET", "/api/v1/breakers".to_string(), String::new()),
        Ctl::Fleet => ("GET", "/api/v1/fleet".to_string(), String::new()),
        Ctl::Activate { key, reason, ttl_s } => (
            "POST",
            format!("/api/v1/breakers/{}/activate", percent_encode(&key)),
            serde_json::json!({"reason": reason, "ttl_s": ttl_s}).to_string(),
        ),
        Ctl::Deactivate { key } => {
            ("POST", format!("/api/v1/breakers/{}/deactivate", percent_encode(&key)), String::new())
        }
        Ctl::Drain { key, per_second, duration_s, reason } => (
            "POST",
            format!("/api/v1/breakers/{}/drain", percent_encode(&key)),
            serde_json::json!({"per_second": per_second, "duration_s": duration_s, "reason": reason}).to_string(),
        ),
        Ctl::Reset { key, reason } => (
            "POST",
            format!("/api/v1/breakers/{}/reset", percent_encode(&key)),
            serde_json::json!({"reason": reason}).to_string(),
        ),
    };
    let authority =
        url.strip_prefix("http://").ok_or_else(|| anyhow!("--url must start with http://"))?.trim_end_matches('/');
    let mut stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(authority))
        .await
        .context("connect timed out")??;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {authority}\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    let pretty = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| body.to_string());
    println!("{pretty}");
    if !status.starts_with('2') {
        bail!("HTTP {status}");
    }
    Ok(())
}
