//! `make demo`: the whole loop on one machine, without Docker, as a readable timeline.
//!
//! Envoy (`--concurrency 2`) with Floodgate in front of a WebSocket backend; floodgate-control on
//! Redis; Prometheus scraping Envoy, the control plane and the backend with the shipped rules;
//! Alertmanager routing to the webhook. A client load keeps steady sessions echoing and opens new
//! ones every 100 ms. Act 1: the backend fails handshakes and the local breaker opens, probes and
//! closes. Act 2: the backend reports backpressure, Prometheus alerts, and every new upgrade is
//! refused until the alert resolves; then the ramp lets clients back in. Every process started
//! here is killed when the demo ends, also on Ctrl-C.
//!
//! `--short` (or `FLOODGATE_DEMO_SHORT=1`) runs the same scenario with shortened acts (about
//! 35 seconds), for `make test`. Either way the last line is `demo-summary: {json}`, the numbers
//! the summary prints, for a test to check.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use floodgate_demo::backend::{Backend, Mode};
use floodgate_demo::client::{self, Upgrade};
use floodgate_demo::envoy::{self, Envoy, Ports};
use floodgate_demo::procs::{Alertmanager, ControlPlane, Prometheus, Redis};
use floodgate_demo::{repo_root, stats};

/// The admin token (the demo's own calls and the UI); Envoy carries the poll-only token and
/// Alertmanager the webhook-only one: a leaked proxy config cannot force the fleet open.
const TOKEN: &str = "demo-token";
const POLL_TOKEN: &str = "demo-poll-token";
const WEBHOOK_TOKEN: &str = "demo-webhook-token";
const BREAKER: &str = "collab_ws";
const STEADY_SESSIONS: usize = 20;
const NEW_PER_SECOND: u64 = 10;

#[derive(Default)]
struct Counters {
    admitted: AtomicU64,
    refused: AtomicU64,
    refused_ramp: AtomicU64,
    backend_failed: AtomicU64,
    sessions_alive: AtomicI64,
    echoes: AtomicU64,
    echo_failures: AtomicU64,
    /// Refusals by the `reason` in Floodgate's JSON body.
    refused_by_reason: Mutex<BTreeMap<String, u64>>,
}

/// When each act starts and ends (seconds from the start of the load). Act 2's relief waits until
/// the forced-open has been seen for `hold` seconds, and the run until the release has been seen
/// for `hold` seconds, each at most `slack` seconds past its planned time, so a slow machine
/// still shows the whole act.
#[derive(Clone, Copy, Debug)]
struct Timing {
    fail: u64,
    heal: u64,
    pressure: u64,
    relief: u64,
    end: u64,
    hold: u64,
    slack: u64,
}

impl Timing {
    const FULL: Timing = Timing { fail: 6, heal: 14, pressure: 30, relief: 60, end: 80, hold: 3, slack: 30 };
    /// Act 1: the breaker opens within a second of the failures and its 3 s open time ends after
    /// the backend healed, so the first probes close it. Act 2: as long as the alert path needs.
    const SHORT: Timing = Timing { fail: 3, heal: 6, pressure: 12, relief: 18, end: 26, hold: 3, slack: 25 };

    fn from_args() -> Timing {
        let short_flag = std::env::args().skip(1).any(|a| a == "--short");
        let short_env = std::env::var("FLOODGATE_DEMO_SHORT").is_ok_and(|v| !v.is_empty() && v != "0");
        if short_flag || short_env {
            Timing::SHORT
        } else {
            Timing::FULL
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> anyhow::Result<()> {
    tokio::select! {
        r = run() => r,
        _ = tokio::signal::ctrl_c() => {
            println!("\ninterrupted: stopping every process the demo started");
            Ok(())
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let timing = Timing::from_args();
    println!("Floodgate demo: the whole loop on this machine (about {} seconds)\n", timing.end + 10);
    let redis = Redis::start().await?;
    step(&format!("redis-server on :{}", redis.port));
    let url = redis.url();
    let control = ControlPlane::start(
        0,
        TOKEN,
        &[
            ("FLOODGATE_REDIS_URL", &url),
            ("FLOODGATE_DEACTIVATION_DELAY_S", "5"),
            ("FLOODGATE_COOLDOWN_S", "0"),
            ("FLOODGATE_POLL_TOKEN", POLL_TOKEN),
            ("FLOODGATE_WEBHOOK_TOKEN", WEBHOOK_TOKEN),
        ],
    )
    .await?;
    step(&format!("floodgate-control on {} (Redis store, deactivation delay 5 s)", control.addr));
    let alertmanager = Alertmanager::start(&control.webhook_url(), WEBHOOK_TOKEN).await?;
    step(&format!("alertmanager on {} -> {}", alertmanager.addr, control.webhook_url()));
    let backend = Backend::start(0).await?;
    step(&format!("WebSocket backend on {} (exports collab_backpressure_level)", backend.addr));
    let ports = Ports { control: control.addr.port(), ..Ports::free(backend.addr.port())? };
    let plugin = serde_json::json!({
        "breakers": {BREAKER: {"consecutive_failures": 5, "open": {"base_ms": 3000, "max_ms": 30000},
                               "half_open": {"permits": 2, "successes": 2}, "recovery_ramp_ms": 5000}},
        "control": {"cluster": "floodgate_control", "token": POLL_TOKEN, "wait_s": 10, "timeout_ms": 12000,
                    "stale_after_s": 30}
    });
    let config = envoy::render("control.yaml", ports, &[&plugin.to_string()])?;
    let envoy = Envoy::start(&config, ports, 2).await?;
    step(&format!("envoy --concurrency 2 with floodgate.wasm on {} (admin {})", envoy.listen, envoy.admin));
    let prometheus = start_prometheus(&envoy, &control, &backend, &alertmanager).await?;
    step(&format!("prometheus on {} (rules from deploy/prometheus/rules, `for` shortened to 2s)", prometheus.addr));

    let counters = Arc::new(Counters::default());
    let listen = envoy.listen;
    for i in 0..STEADY_SESSIONS {
        tokio::spawn(steady_session(listen, i, counters.clone()));
    }
    tokio::spawn(new_connections(listen, counters.clone()));
    println!(
        "\nload: {STEADY_SESSIONS} steady sessions echoing every second, {NEW_PER_SECOND} new upgrades per second\n"
    );
    println!(
        "{:>5}  {:<26} {:>9} {:>8} {:>8}  {:>8}  event",
        "t", "breaker", "admitted", "refused", "failed", "sessions"
    );

    let start = Instant::now();
    let mut last = Snapshot::default();
    let mut summary = Summary::default();
    let (mut healed, mut pressured, mut relieved) = (false, false, false);
    let mut failing = false;
    let mut second = 0u64;
    loop {
        second += 1;
        tokio::time::sleep_until((start + Duration::from_secs(second)).into()).await;
        let mut events = Vec::new();
        if second == timing.fail {
            backend.control.set_mode(Mode::FailHandshakes(503));
            failing = true;
            summary.alive_at_incident = Some(counters.sessions_alive.load(Ordering::SeqCst));
            events.push("backend starts failing handshakes (503)".to_string());
        }
        if failing && !healed && second >= timing.heal {
            backend.control.set_mode(Mode::Healthy);
            healed = true;
            events.push("backend healthy again".to_string());
        }
        if !pressured && second >= timing.pressure {
            backend.control.set_backpressure(0.97);
            pressured = true;
            events.push("backend backpressure rises to 0.97".to_string());
        }
        let forced_long_enough = summary.forced_at.is_some_and(|f| second >= f + timing.hold);
        if pressured
            && !relieved
            && second >= timing.relief
            && (forced_long_enough || second >= timing.relief + timing.slack)
        {
            backend.control.set_backpressure(0.30);
            relieved = true;
            events.push("backend backpressure falls to 0.30".to_string());
        }
        let now = Snapshot::read(&envoy, &counters).await;
        let state = now.state_name();
        if state != last.state_name() {
            events.push(format!("breaker -> {state}"));
            summary.note_state(&state, second);
        }
        if let Some(e) = control_event(&control, &mut summary, second).await {
            events.push(e);
        }
        let d = now.delta(&last);
        for (i, (from, to)) in TRANSITIONS.iter().enumerate() {
            if d.transitions[i] > 0.0 {
                events.push(format!("{from} -> {to} x{}", d.transitions[i]));
            }
        }
        if d.ramp > 0 {
            events.push(format!("recovery ramp held back {}", d.ramp));
        }
        let act = if second < timing.fail {
            Act::Before
        } else if second <= timing.pressure {
            Act::One
        } else {
            Act::Two
        };
        let forced_throughout = now.forced >= 1.0 && last.forced >= 1.0;
        summary.add(&d, act, forced_throughout);
        println!(
            "{:>4}s  {:<26} {:>9} {:>8} {:>8}  {:>8}  {}",
            second,
            state,
            d.admitted,
            d.refused,
            d.failed,
            now.sessions,
            events.join("; ")
        );
        last = now;
        let released_long_enough = summary.released_at.is_some_and(|r| second >= r + timing.hold);
        if relieved && second >= timing.end && (released_long_enough || second >= timing.end + timing.slack) {
            break;
        }
    }
    summary.print(&counters);
    // Dropping these kills the processes; listed so the order is explicit.
    drop((prometheus, envoy, alertmanager, control, redis, backend));
    Ok(())
}

fn step(what: &str) {
    println!("  started {what}");
}

async fn start_prometheus(
    envoy: &Envoy,
    control: &ControlPlane,
    backend: &Backend,
    alertmanager: &Alertmanager,
) -> anyhow::Result<Prometheus> {
    let rules_dir = repo_root().join("deploy/prometheus/rules");
    let mut files = Vec::new();
    for name in ["backpressure.yml", "floodgate.yml"] {
        let text = std::fs::read_to_string(rules_dir.join(name)).with_context(|| format!("reading rules {name}"))?;
        // Production waits are minutes; the demo has seconds.
        files.push((name, text.replace("for: 30s", "for: 2s")));
    }
    let config = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
         rule_files: [backpressure.yml, floodgate.yml]\n\
         alerting: {{alertmanagers: [{{static_configs: [{{targets: ['{am}']}}]}}]}}\n\
         scrape_configs:\n\
         - {{job_name: envoy, metrics_path: /stats/prometheus, static_configs: [{{targets: ['{envoy}']}}]}}\n\
         - {{job_name: floodgate-control, static_configs: [{{targets: ['{control}']}}]}}\n\
         - {{job_name: collab-backend, static_configs: [{{targets: ['{backend}'], labels: {{breaker: {BREAKER}}}}}]}}\n",
        am = alertmanager.addr,
        envoy = envoy.admin,
        control = control.addr,
        backend = backend.addr,
    );
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    Prometheus::start(&config, &files).await
}

async fn steady_session(listen: std::net::SocketAddr, i: usize, c: Arc<Counters>) {
    let mut session = loop {
        match client::upgrade(listen, "/ws").await {
            Ok(Upgrade::Open(s)) => break s,
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    c.sessions_alive.fetch_add(1, Ordering::SeqCst);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if client::echo(&mut session, &format!("hello from session {i}")).await.is_ok() {
            c.echoes.fetch_add(1, Ordering::SeqCst);
        } else {
            c.echo_failures.fetch_add(1, Ordering::SeqCst);
            c.sessions_alive.fetch_sub(1, Ordering::SeqCst);
            return;
        }
    }
}

async fn new_connections(listen: std::net::SocketAddr, c: Arc<Counters>) {
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / NEW_PER_SECOND));
    loop {
        tick.tick().await;
        let c = c.clone();
        tokio::spawn(async move {
            match client::upgrade(listen, "/ws").await {
                Ok(Upgrade::Open(_)) => c.admitted.fetch_add(1, Ordering::SeqCst),
                Ok(Upgrade::Refused(r)) if r.headers.contains_key("x-floodgate") => {
                    let reason = r.json()["reason"].as_str().unwrap_or("unknown").to_string();
                    if reason == "recovery_ramp" {
                        c.refused_ramp.fetch_add(1, Ordering::SeqCst);
                    }
                    if let Ok(mut by) = c.refused_by_reason.lock() {
                        *by.entry(reason).or_default() += 1;
                    }
                    c.refused.fetch_add(1, Ordering::SeqCst)
                }
                _ => c.backend_failed.fetch_add(1, Ordering::SeqCst),
            };
        });
    }
}

/// The breaker's transitions the timeline names.
const TRANSITIONS: [(&str, &str); 3] = [("open", "half_open"), ("half_open", "closed"), ("half_open", "open")];

#[derive(Default, Clone)]
struct Snapshot {
    state: f64,
    forced: f64,
    admitted: u64,
    refused: u64,
    ramp: u64,
    failed: u64,
    sessions: i64,
    transitions: [f64; 3],
}

impl Snapshot {
    async fn read(envoy: &Envoy, c: &Counters) -> Snapshot {
        let text = envoy.prometheus().await.unwrap_or_default();
        Snapshot {
            state: stats::value_or_zero(&text, "floodgate_state", &[("breaker", BREAKER)]),
            forced: stats::value_or_zero(&text, "floodgate_forced", &[("breaker", BREAKER)]),
            admitted: c.admitted.load(Ordering::SeqCst),
            refused: c.refused.load(Ordering::SeqCst),
            ramp: c.refused_ramp.load(Ordering::SeqCst),
            transitions: TRANSITIONS.map(|(from, to)| {
                stats::value_or_zero(
                    &text,
                    "floodgate_transitions_total",
                    &[("breaker", BREAKER), ("from", from), ("to", to)],
                )
            }),
            failed: c.backend_failed.load(Ordering::SeqCst),
            sessions: c.sessions_alive.load(Ordering::SeqCst),
        }
    }

    fn state_name(&self) -> String {
        if self.forced >= 1.0 {
            return "forced_open (control)".into();
        }
        match self.state as u64 {
            0 => "closed",
            1 => "half_open",
            _ => "open",
        }
        .into()
    }

    fn delta(&self, before: &Snapshot) -> Snapshot {
        Snapshot {
            admitted: self.admitted - before.admitted,
            refused: self.refused - before.refused,
            ramp: self.ramp - before.ramp,
            transitions: [0, 1, 2].map(|i| self.transitions[i] - before.transitions[i]),
            failed: self.failed - before.failed,
            ..self.clone()
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Act {
    Before,
    One,
    Two,
}

/// New upgrades in one part of the run.
#[derive(Default, Clone, Copy)]
struct Tally {
    admitted: u64,
    refused: u64,
    failed: u64,
}

impl Tally {
    fn add(&mut self, d: &Snapshot) {
        self.admitted += d.admitted;
        self.refused += d.refused;
        self.failed += d.failed;
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({"admitted": self.admitted, "refused": self.refused, "failed": self.failed})
    }
}

#[derive(Default)]
struct Summary {
    admitted: u64,
    refused: u64,
    failed: u64,
    act1: Tally,
    act2: Tally,
    /// Seconds during which the control plane's forced-open held from start to end.
    forced: Tally,
    forced_seconds: u64,
    alive_at_incident: Option<i64>,
    opened_at: Option<u64>,
    closed_at: Option<u64>,
    forced_at: Option<u64>,
    activated_at: Option<u64>,
    released_at: Option<u64>,
    seen_events: usize,
}

impl Summary {
    fn add(&mut self, d: &Snapshot, act: Act, forced_throughout: bool) {
        self.admitted += d.admitted;
        self.refused += d.refused;
        self.failed += d.failed;
        match act {
            Act::Before => {}
            Act::One => self.act1.add(d),
            Act::Two => self.act2.add(d),
        }
        if forced_throughout {
            self.forced.add(d);
            self.forced_seconds += 1;
        }
    }

    fn note_state(&mut self, state: &str, second: u64) {
        match state {
            "open" if self.opened_at.is_none() => self.opened_at = Some(second),
            "closed" if self.opened_at.is_some() && self.closed_at.is_none() => self.closed_at = Some(second),
            s if s.starts_with("forced_open") => self.forced_at = Some(second),
            "closed" if self.forced_at.is_some() => self.released_at = Some(second),
            _ => {}
        }
    }

    fn print(&self, c: &Counters) {
        println!("\nSummary");
        println!(
            "  new upgrades: {} admitted, {} refused by Floodgate, {} failed by the backend",
            self.admitted, self.refused, self.failed
        );
        let alive = c.sessions_alive.load(Ordering::SeqCst);
        println!(
            "  steady sessions: {alive} of {STEADY_SESSIONS} still open; {} echoes answered, {} failed",
            c.echoes.load(Ordering::SeqCst),
            c.echo_failures.load(Ordering::SeqCst)
        );
        if let (Some(o), Some(cl)) = (self.opened_at, self.closed_at) {
            println!("  act 1: local breaker opened at {o}s and closed again at {cl}s after its half-open probes");
        }
        if let Some(f) = self.forced_at {
            let from = self.activated_at.map(|a| format!(" (activation recorded at {a}s)")).unwrap_or_default();
            println!("  act 2: alert -> forced_open at {f}s{from}; released at {}", fmt_opt(self.released_at));
        }
        let by_reason = c.refused_by_reason.lock().map(|m| m.clone()).unwrap_or_default();
        let json = serde_json::json!({
            "steady_sessions": STEADY_SESSIONS,
            "alive_at_incident": self.alive_at_incident,
            "alive_at_end": alive,
            "echoes": c.echoes.load(Ordering::SeqCst),
            "echo_failures": c.echo_failures.load(Ordering::SeqCst),
            "total": {"admitted": self.admitted, "refused": self.refused, "failed": self.failed},
            "act1": self.act1.json(),
            "act2": self.act2.json(),
            "forced_open": {"seconds": self.forced_seconds, "admitted": self.forced.admitted,
                            "refused": self.forced.refused, "failed": self.forced.failed},
            "refused_by_reason": by_reason,
            "opened_at": self.opened_at,
            "closed_at": self.closed_at,
            "forced_at": self.forced_at,
            "activated_at": self.activated_at,
            "released_at": self.released_at,
        });
        println!("\ndemo-summary: {json}");
    }
}

fn fmt_opt(v: Option<u64>) -> String {
    v.map(|s| format!("{s}s")).unwrap_or_else(|| "-".into())
}

/// New events in floodgate-control since the last call, as one line.
async fn control_event(control: &ControlPlane, summary: &mut Summary, second: u64) -> Option<String> {
    let b = control.json("GET", "/api/v1/breakers", "").await.ok()?;
    let events = b["events"].as_array()?;
    let new = events.len().saturating_sub(summary.seen_events);
    summary.seen_events = events.len();
    // Newest first.
    let lines: Vec<String> = events
        .iter()
        .take(new)
        .rev()
        .map(|e| {
            let kind = e["type"].as_str().unwrap_or("event");
            if kind.contains("activ") && !kind.contains("deactiv") && summary.activated_at.is_none() {
                summary.activated_at = Some(second);
            }
            format!("control: {kind} {} ({})", e["key"].as_str().unwrap_or("?"), e["reason"].as_str().unwrap_or("-"))
        })
        .collect();
    (!lines.is_empty()).then(|| lines.join("; "))
}
