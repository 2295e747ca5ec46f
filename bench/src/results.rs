//! What one `make bench` run measured, typed: the measuring modules fill it, `report` writes it.
//! Rows carry their configuration's name and are looked up by it.

use std::time::Duration;

/// How long and how hard to measure.
#[derive(Clone, Debug)]
pub struct Plan {
    pub quick: bool,
    pub rates: Vec<u64>,
    pub rounds: usize,
    pub run: Duration,
    /// Section 2: rounds of a closed loop, each this long.
    pub saturation_rounds: usize,
    pub saturation_run: Duration,
    pub upgrade_rate: u64,
    pub waiters: usize,
}

impl Plan {
    /// `make bench-quick`: a smoke run.
    pub fn quick() -> Plan {
        Plan {
            quick: true,
            rates: vec![1000],
            rounds: 1,
            run: Duration::from_secs(2),
            saturation_rounds: 1,
            saturation_run: Duration::from_secs(2),
            upgrade_rate: 200,
            waiters: 1000,
        }
    }

    /// `make bench`.
    pub fn full() -> Plan {
        Plan {
            quick: false,
            rates: vec![1000, 5000],
            rounds: 3,
            run: Duration::from_secs(5),
            saturation_rounds: 5,
            saturation_run: Duration::from_secs(3),
            upgrade_rate: 300,
            waiters: 10_000,
        }
    }
}

pub struct Results {
    pub plan: Plan,
    /// CPU model, cores and kernel.
    pub machine: String,
    /// "Envoy 1.40.0".
    pub envoy: String,
    /// Whether this process could pin itself to CPU 1.
    pub pinned: bool,
    /// Every configuration: name and description.
    pub configurations: Vec<(&'static str, &'static str)>,
    /// Section 1, one table per fixed rate.
    pub fixed: Vec<FixedRate>,
    /// Section 2.
    pub saturation: Vec<Saturation>,
    /// Section 3.
    pub upgrades: Vec<UpgradeRow>,
    /// Section 4.
    pub memory: Memory,
    /// Section 6, or why it could not be measured.
    pub control: Result<Control, String>,
    pub elapsed: Duration,
}

/// One configuration at one fixed rate of HTTP requests (summed over rounds).
#[derive(Clone, Debug, Default)]
pub struct LatencyRow {
    pub name: &'static str,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    /// Envoy CPU per completed request, idle subtracted.
    pub cpu_us: f64,
    /// The same, per round (the spread over runs).
    pub cpu_rounds: Vec<f64>,
    pub errors: u64,
}

pub struct FixedRate {
    pub rate: u64,
    pub rows: Vec<LatencyRow>,
}

impl FixedRate {
    pub fn row(&self, name: &str) -> Option<&LatencyRow> {
        self.rows.iter().find(|r| r.name == name)
    }
}

/// One configuration saturated by a closed loop, round by round (rounds interleaved across
/// configurations).
#[derive(Clone, Debug, Default)]
pub struct Saturation {
    pub name: &'static str,
    /// Requests per second through Envoy.
    pub per_s: Vec<f64>,
    /// Envoy CPU per request (µs).
    pub cpu_us: Vec<f64>,
    /// Envoy's share of its one CPU (near 1: Envoy was the bottleneck).
    pub busy: Vec<f64>,
    pub errors: u64,
}

/// The middle value (the mean of the two middle ones for an even count); 0 for none.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// One configuration under WebSocket upgrades (summed over rounds).
#[derive(Clone, Debug, Default)]
pub struct UpgradeRow {
    pub name: &'static str,
    pub admitted: u64,
    pub refused: u64,
    pub p50: u64,
    pub p99: u64,
    pub per_s: f64,
    pub cpu_us: f64,
}

/// Envoy RSS in KiB.
#[derive(Clone, Debug, Default)]
pub struct Memory {
    pub none_kib: u64,
    pub floodgate_kib: u64,
    pub thousand_breakers_kib: u64,
}

/// Webhook latency with one store.
#[derive(Clone, Debug)]
pub struct Webhook {
    pub store: &'static str,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
    pub errors: u64,
}

/// floodgate-control under webhooks and held long-polls.
#[derive(Clone, Debug, Default)]
pub struct Control {
    pub webhook_rate: u64,
    pub webhooks: Vec<Webhook>,
    pub held: usize,
    pub rss_idle_kib: u64,
    pub rss_held_kib: u64,
    /// From the change to the last waiter answered.
    pub woken_ms: f64,
    pub woken: usize,
}

impl Control {
    /// RSS per held long-poll.
    pub fn per_waiter_kib(&self) -> f64 {
        self.rss_held_kib.saturating_sub(self.rss_idle_kib) as f64 / self.held.max(1) as f64
    }
}
