//! Measuring the Envoys: each configuration in its own Envoy, the runs interleaved (A B C A B C
//! ...), every figure into a typed [`Results`]. Writing them up is `report`'s job.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use floodgate_demo::backend::Backend;
use floodgate_demo::client::http_request;
use floodgate_demo::envoy::{self, Envoy, Ports};

use crate::control;
use crate::load::{self, Kind, Load, Outcome};
use crate::results::{FixedRate, LatencyRow, Memory, Plan, Results, Saturation, UpgradeRow};
use crate::setups::{self, name, HTTP_SET, UPGRADE_SET};
use crate::system::{cpu_ns, envoy_version, machine, pin, rss_kib};

/// One configuration's running Envoy.
pub(crate) struct Proxy {
    pub(crate) name: &'static str,
    pub(crate) envoy: Envoy,
    /// CPU the idle Envoy burns per second (timers, stats): subtracted from every run.
    idle_ns_per_s: f64,
}

/// The proxy of configuration `name`.
fn by_name<'a>(proxies: &'a [Proxy], name: &str) -> anyhow::Result<&'a Proxy> {
    proxies.iter().find(|p| p.name == name).with_context(|| format!("no configuration named {name}"))
}

/// The proxies of `names`, in that order.
fn set<'a>(proxies: &'a [Proxy], names: &[&str]) -> anyhow::Result<Vec<&'a Proxy>> {
    names.iter().map(|n| by_name(proxies, n)).collect()
}

/// Runs the whole bench: every Envoy configuration, then floodgate-control.
pub async fn run(plan: Plan) -> anyhow::Result<Results> {
    let started = Instant::now();
    let pinned = pin(std::process::id(), 1);
    let backend = Backend::start(0).await?;
    let proxies = start_proxies(setups::setups(), &backend, plan.quick, started).await?;
    warm_up(&proxies).await;
    let (machine, envoy) = (machine(), envoy_version());

    let http = set(&proxies, &HTTP_SET)?;
    let mut fixed = Vec::new();
    for &rate in &plan.rates {
        fixed.push(fixed_rate(&plan, &http, rate).await);
    }
    let saturation = saturation(&plan, &http).await;
    let upgrades = upgrades(&plan, &set(&proxies, &UPGRADE_SET)?).await;
    let memory = memory(&proxies, &backend).await?;
    drop(proxies);
    let control = control::measure(&plan).await.map_err(|e| format!("{e:#}"));
    Ok(Results {
        configurations: setups::setups().iter().map(|s| (s.name, s.what)).collect(),
        plan,
        machine,
        envoy,
        pinned,
        fixed,
        saturation,
        upgrades,
        memory,
        control,
        elapsed: started.elapsed(),
    })
}

/// Every configuration in its own Envoy, validated, pinned to CPU 0, its idle CPU measured.
pub(crate) async fn start_proxies(
    setups: Vec<setups::Setup>,
    backend: &Backend,
    quick: bool,
    started: Instant,
) -> anyhow::Result<Vec<Proxy>> {
    let mut proxies = Vec::new();
    for setup in setups {
        let ports = Ports::free(backend.addr.port())?;
        let config = setups::render(&setup, ports)?;
        let (ok, log) = envoy::validate(&config).await?;
        if !ok {
            bail!("{} does not validate:\n{log}", setup.name);
        }
        let envoy = Envoy::start(&config, ports, 1).await.with_context(|| setup.name)?;
        let pinned = envoy.pid().is_some_and(|pid| pin(pid, 0));
        if !pinned {
            eprintln!("bench: could not pin {} to CPU 0 (taskset missing?)", setup.name);
        }
        proxies.push(Proxy { name: setup.name, envoy, idle_ns_per_s: 0.0 });
    }
    eprintln!("bench: {} Envoys up in {:?}", proxies.len(), started.elapsed());
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Idle CPU of each Envoy (all idle at once, once they have settled).
    let idle_over = if quick { Duration::from_secs(1) } else { Duration::from_secs(3) };
    let rates = idle_rates(&proxies, idle_over).await;
    for (p, r) in proxies.iter_mut().zip(rates) {
        p.idle_ns_per_s = r;
    }
    Ok(proxies)
}

async fn idle_rates(proxies: &[Proxy], over: Duration) -> Vec<f64> {
    let before: Vec<u64> = proxies.iter().map(|p| cpu_ns(p.envoy.pid().unwrap_or(0))).collect();
    tokio::time::sleep(over).await;
    proxies
        .iter()
        .zip(before)
        .map(|(p, b)| cpu_ns(p.envoy.pid().unwrap_or(0)).saturating_sub(b) as f64 / over.as_secs_f64())
        .collect()
}

/// Every proxy, both kinds of load, briefly.
pub(crate) async fn warm_up(proxies: &[Proxy]) {
    for p in proxies {
        let _ = load::run(
            p.envoy.listen,
            Load { kind: Kind::Http, rate: 500, duration: Duration::from_millis(500), connections: 8 },
        )
        .await;
        let _ = load::run(
            p.envoy.listen,
            Load { kind: Kind::Upgrade, rate: 100, duration: Duration::from_millis(300), connections: 1 },
        )
        .await;
    }
}

struct Measured {
    outcome: Outcome,
    cpu_ns: u64,
}

/// What a closed loop got through one proxy: requests per second, and Envoy CPU per request
/// (µs, idle not subtracted: Envoy is busy throughout) and its share of one CPU.
pub(crate) struct Saturated {
    pub(crate) per_s: f64,
    pub(crate) cpu_us: f64,
    pub(crate) busy: f64,
    pub(crate) errors: u64,
}

/// A closed loop of 64 keep-alive connections through `p` for `run`: with Envoy on one CPU and
/// the generator and backend on the other, Envoy is the bottleneck (`busy` near 1 says so).
pub(crate) async fn saturated(p: &Proxy, run: Duration) -> Saturated {
    let pid = p.envoy.pid().unwrap_or(0);
    let before = cpu_ns(pid);
    let t = load::closed_loop(p.envoy.listen, 64, run).await;
    let used = cpu_ns(pid).saturating_sub(before) as f64;
    Saturated {
        per_s: t.per_s(),
        cpu_us: used / 1000.0 / t.completed.max(1) as f64,
        busy: used / t.elapsed.as_nanos().max(1) as f64,
        errors: t.errors,
    }
}

/// One load on one proxy, with the Envoy CPU it took beyond idle.
async fn measure(p: &Proxy, load: Load) -> Measured {
    let pid = p.envoy.pid().unwrap_or(0);
    let before = cpu_ns(pid);
    let outcome = load::run(p.envoy.listen, load).await;
    let used = cpu_ns(pid).saturating_sub(before);
    let idle = (p.idle_ns_per_s * outcome.elapsed.as_secs_f64()) as u64;
    Measured { outcome, cpu_ns: used.saturating_sub(idle) }
}

/// Sums the measurements of one configuration over rounds.
#[derive(Default)]
struct Acc {
    hist: Option<hdrhistogram::Histogram<u64>>,
    ok: u64,
    refused: u64,
    errors: u64,
    scheduled: u64,
    secs: f64,
    cpu_ns: u64,
}

impl Acc {
    fn add(&mut self, m: &Measured) {
        match &mut self.hist {
            Some(h) => {
                let _ = h.add(&m.outcome.latency);
            }
            None => self.hist = Some(m.outcome.latency.clone()),
        }
        self.ok += m.outcome.ok;
        self.refused += m.outcome.refused;
        self.errors += m.outcome.errors;
        self.scheduled += m.outcome.scheduled;
        self.secs += m.outcome.elapsed.as_secs_f64();
        self.cpu_ns += m.cpu_ns;
    }
    fn p(&self, q: f64) -> u64 {
        self.hist.as_ref().map_or(0, |h| h.value_at_quantile(q))
    }
    fn completed(&self) -> u64 {
        self.ok + self.refused
    }
    fn cpu_us(&self) -> f64 {
        self.cpu_ns as f64 / 1000.0 / self.completed().max(1) as f64
    }
}

/// Section 1: HTTP/1.1 keep-alive at `rate` on 16 connections, `plan.rounds` rounds interleaved.
async fn fixed_rate(plan: &Plan, set: &[&Proxy], rate: u64) -> FixedRate {
    let mut accs: Vec<Acc> = set.iter().map(|_| Acc::default()).collect();
    let mut rounds: Vec<Vec<f64>> = set.iter().map(|_| Vec::new()).collect();
    for _ in 0..plan.rounds {
        for ((acc, cpu), p) in accs.iter_mut().zip(rounds.iter_mut()).zip(set) {
            let m = measure(p, Load { kind: Kind::Http, rate, duration: plan.run, connections: 16 }).await;
            let mut one = Acc::default();
            one.add(&m);
            cpu.push(one.cpu_us());
            acc.add(&m);
        }
    }
    let rows = set
        .iter()
        .zip(&accs)
        .zip(rounds)
        .map(|((p, a), cpu_rounds)| LatencyRow {
            name: p.name,
            p50: a.p(0.5),
            p90: a.p(0.9),
            p99: a.p(0.99),
            cpu_us: a.cpu_us(),
            cpu_rounds,
            errors: a.errors,
        })
        .collect();
    FixedRate { rate, rows }
}

/// Section 2: each configuration saturated by a closed loop, `plan.saturation_rounds` rounds
/// interleaved.
async fn saturation(plan: &Plan, set: &[&Proxy]) -> Vec<Saturation> {
    let mut rows: Vec<Saturation> = set.iter().map(|p| Saturation { name: p.name, ..Saturation::default() }).collect();
    for _ in 0..plan.saturation_rounds {
        for (row, p) in rows.iter_mut().zip(set) {
            let s = saturated(p, plan.saturation_run).await;
            row.per_s.push(s.per_s);
            row.cpu_us.push(s.cpu_us);
            row.busy.push(s.busy);
            row.errors += s.errors;
        }
    }
    rows
}

/// Section 3: WebSocket upgrades, a new connection each, at least two rounds interleaved.
async fn upgrades(plan: &Plan, set: &[&Proxy]) -> Vec<UpgradeRow> {
    let mut accs: Vec<Acc> = set.iter().map(|_| Acc::default()).collect();
    for _ in 0..plan.rounds.max(2) {
        for (acc, p) in accs.iter_mut().zip(set) {
            let load = Load { kind: Kind::Upgrade, rate: plan.upgrade_rate, duration: plan.run, connections: 1 };
            acc.add(&measure(p, load).await);
        }
    }
    set.iter()
        .zip(&accs)
        .map(|(p, a)| UpgradeRow {
            name: p.name,
            admitted: a.ok,
            refused: a.refused,
            p50: a.p(0.5),
            p99: a.p(0.99),
            per_s: a.completed() as f64 / a.secs.max(0.001),
            cpu_us: a.cpu_us(),
        })
        .collect()
}

/// Section 4: Envoy RSS after the runs, and of an Envoy tracking 1,000 breakers.
async fn memory(proxies: &[Proxy], backend: &Backend) -> anyhow::Result<Memory> {
    let rss = |n: &str| -> anyhow::Result<u64> { Ok(by_name(proxies, n)?.envoy.pid().map_or(0, rss_kib)) };
    let (none_kib, floodgate_kib) = (rss(name::NONE)?, rss(name::FLOODGATE)?);
    let thousand_breakers_kib = thousand_breakers(backend).await?;
    Ok(Memory { none_kib, floodgate_kib, thousand_breakers_kib })
}

/// RSS of an Envoy whose filter tracks 1,000 breakers (keyed by a header).
async fn thousand_breakers(backend: &Backend) -> anyhow::Result<u64> {
    let setup = setups::thousand_breakers();
    let ports = Ports::free(backend.addr.port())?;
    let envoy = Envoy::start(&setups::render(&setup, ports)?, ports, 1).await?;
    for i in 0..1000 {
        let key = format!("breaker-{i}");
        http_request(envoy.listen, "GET", "/", &[("x-breaker", &key)], "").await?;
    }
    let text = envoy.prometheus().await?;
    let tracked = text.lines().filter(|l| l.starts_with("floodgate_state{")).count();
    if tracked < 1000 {
        bail!("only {tracked} breakers tracked");
    }
    Ok(envoy.pid().map_or(0, rss_kib))
}
