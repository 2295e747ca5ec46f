//! Measuring floodgate-control: webhook latency on each store, and long-poll waiters held on one
//! replica and woken by a change.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use floodgate_demo::client::http_request;
use floodgate_demo::procs::{ControlPlane, Redis};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::load::{self, Outcome};
use crate::results::{Control, Plan, Webhook};
use crate::system::{open_files_limit, rss_kib};

/// Webhooks sent per second.
const WEBHOOK_RATE: u64 = 500;

/// Section 6: webhooks on the memory and Redis stores, then `plan.waiters` long-polls.
pub async fn measure(plan: &Plan) -> anyhow::Result<Control> {
    let token = "bench-token";
    let mut redis = Redis::start().await?;
    let url = redis.url();
    let mut webhooks = Vec::new();
    for (store, env) in [("memory", vec![]), ("redis", vec![("FLOODGATE_REDIS_URL", url.as_str())])] {
        let mut env = env;
        env.push(("FLOODGATE_COOLDOWN_S", "0"));
        let control = ControlPlane::start(0, token, &env).await?;
        let out = send_webhooks(control.addr, token, WEBHOOK_RATE, plan.run).await;
        webhooks.push(Webhook { store, p50: out.p(0.5), p99: out.p(0.99), max: out.p(1.0), errors: out.errors });
    }
    redis.stop().await?;

    let control = ControlPlane::start(0, token, &[]).await?;
    let rss_idle_kib = rss_kib(control.pid().unwrap_or(0));
    let (held, rss_held_kib, woken_ms, woken) = waiters(&control, plan.waiters).await?;
    Ok(Control { webhook_rate: WEBHOOK_RATE, webhooks, held, rss_idle_kib, rss_held_kib, woken_ms, woken })
}

async fn send_webhooks(addr: SocketAddr, token: &str, rate: u64, duration: Duration) -> Outcome {
    let body = r#"{"version":"4","status":"firing","receiver":"floodgate","groupKey":"bench","truncatedAlerts":0,
        "alerts":[{"status":"firing","labels":{"alertname":"CollaborationBackpressureCritical","breaker":"bench"},
        "annotations":{"summary":"97%"},"startsAt":"2026-11-22T10:00:00Z","fingerprint":"f1"}]}"#;
    let auth = format!("Bearer {token}");
    let mut hist = load::histogram();
    let (mut ok, mut errors, mut scheduled) = (0, 0, 0);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for due in load::schedule(start, rate, duration) {
        tokio::time::sleep_until(due.into()).await;
        scheduled += 1;
        let auth = auth.clone();
        tasks.push(tokio::spawn(async move {
            let r = http_request(
                addr,
                "POST",
                "/webhook/alertmanager",
                &[("authorization", &auth), ("content-type", "application/json")],
                body,
            )
            .await;
            (due.elapsed(), r.map(|(s, _, _)| s).unwrap_or(0))
        }));
    }
    for t in tasks {
        match t.await {
            Ok((d, 200)) => {
                ok += 1;
                let _ = hist.record(d.as_micros().max(1) as u64);
            }
            _ => errors += 1,
        }
    }
    Outcome { latency: hist, scheduled, ok, refused: 0, errors, elapsed: start.elapsed() }
}

/// Holds `n` long-polls, measures RSS, then activates and times the wake-up of all of them:
/// (held, RSS KiB with them held, ms to the last answer, answered).
async fn waiters(control: &ControlPlane, n: usize) -> anyhow::Result<(usize, u64, f64, usize)> {
    let streams = hold(control, n).await?;
    let held = wait_held(control, streams.len()).await?;
    let rss = control.pid().map_or(0, rss_kib);
    let (woken_ms, woken) = wake(control, streams).await?;
    Ok((held, rss, woken_ms, woken))
}

/// Opens up to `n` long-polls on the current version (fewer if the open-file limit says so).
async fn hold(control: &ControlPlane, n: usize) -> anyhow::Result<Vec<TcpStream>> {
    let state = control.json("GET", "/api/v1/breakers", "").await?;
    let version = state["version"].as_u64().unwrap_or(0);
    let request = format!(
        "GET /v1/snapshot?version={version}&wait=60 HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer {}\r\n\r\n",
        control.token
    );
    // Each waiter is a socket here and one in the service: stay under this process's limit.
    let limit = open_files_limit().saturating_sub(300) as usize;
    if limit < n {
        eprintln!("bench: open-file limit allows {limit} waiters, not {n}");
    }
    let n = n.min(limit);
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        match TcpStream::connect(control.addr).await {
            Ok(mut s) => {
                if s.write_all(request.as_bytes()).await.is_ok() {
                    streams.push(s);
                }
            }
            Err(e) => {
                eprintln!("bench: waiter connect failed after {}: {e} (raise ulimit -n)", streams.len());
                break;
            }
        }
    }
    Ok(streams)
}

/// Waits (up to 30 s) until the service holds `n` waiters; how many it holds.
async fn wait_held(control: &ControlPlane, n: usize) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut held = 0;
    while Instant::now() < deadline {
        let (_, _, text) = control.call("GET", "/metrics", "").await?;
        held = floodgate_demo::stats::value(&text, "floodgate_control_poll_waiters", &[]).unwrap_or(0.0) as usize;
        if held >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(held)
}

/// Activates a breaker and times the answers on `streams`: (ms to the last, answered).
async fn wake(control: &ControlPlane, streams: Vec<TcpStream>) -> anyhow::Result<(f64, usize)> {
    let mut tasks = Vec::with_capacity(streams.len());
    for mut s in streams {
        tasks.push(tokio::spawn(async move {
            let mut b = [0u8; 64];
            match tokio::time::timeout(Duration::from_secs(20), s.read(&mut b)).await {
                Ok(Ok(n)) if n > 0 => Some(Instant::now()),
                _ => None,
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let changed = Instant::now();
    control.json("POST", "/api/v1/breakers/bench/activate", r#"{"reason":"bench"}"#).await?;
    let mut last = changed;
    let mut woken = 0;
    for t in tasks {
        if let Ok(Some(at)) = t.await {
            woken += 1;
            last = last.max(at);
        }
    }
    Ok(((last - changed).as_secs_f64() * 1000.0, woken))
}
