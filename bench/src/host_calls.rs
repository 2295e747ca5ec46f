//! `make bench-host-calls`: what one proxy-wasm host call costs in Envoy, by kind, and what wasm
//! instructions cost. The wasm floor makes `CALLS` calls of one kind per request (`calls <kind>
//! <n>`, bench/wasm-floor), or runs `SPIN_INSTRUCTIONS` instructions (`spin <n>`); each such Envoy
//! runs beside the floor doing nothing, interleaved round by round, saturated by a closed loop
//! (Envoy's one CPU busy: its CPU per request is the steadiest figure this machine gives), and a
//! call's cost is the difference in Envoy CPU per request divided by `CALLS`. Floodgate (`shed:
//! all`, closed) runs in the same rounds, so its cost over the floor can be set beside the sum of
//! its calls' and instructions' costs. Written to bench/results/host-calls.md.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use floodgate_demo::backend::Backend;
use floodgate_demo::repo_root;

use crate::measure::{saturated, start_proxies, warm_up};
use crate::results::median;
use crate::setups::{self, Setup};
use crate::system::{envoy_version, machine, pin};

/// Calls of one kind per request: enough that their cost stands above run-to-run noise.
const CALLS: u32 = 8;
/// How many rounds of how long: `make bench-host-calls`, or its smoke run in `make test`.
#[derive(Clone, Copy)]
pub struct Plan {
    rounds: usize,
    run: Duration,
    quick: bool,
}

impl Plan {
    pub const FULL: Plan = Plan { rounds: 7, run: Duration::from_secs(3), quick: false };
    /// One short round: the configurations load and answer, the report renders (its figures
    /// mean nothing).
    pub const QUICK: Plan = Plan { rounds: 1, run: Duration::from_millis(500), quick: true };
}
/// `spin 1000`: 12,437 wasm instructions in `on_http_request_headers` against `pass`'s 137
/// (counted in the harness), so 12,300 more.
const SPIN: &str = "spin 1000";
const SPIN_INSTRUCTIONS: f64 = 12_300.0;
/// Floodgate's wasm instructions on a whole admitted plain request with `shed: all` over the
/// floor's whole request, counted in the harness (bench/results/filter.md: 2,425; the floor
/// `pass`: 987).
const FLOODGATE_EXTRA_INSTRUCTIONS: f64 = 1_440.0;

const FLOOR: &str = "floor";
const FLOODGATE: &str = "floodgate";
/// Floodgate from `$FLOODGATE_WASM_BASELINE` (another build, say main before a change), when set:
/// a before-and-after in one run.
const BASELINE: &str = "floodgate_baseline";
const SHED_ALL: &str = r#"{"shed": "all", "defaults": {"consecutive_failures": 5}}"#;

/// The call kinds (the floor's names for them), with what each reads.
const KINDS: [(&str, &str); 5] = [
    ("shared_get", "`proxy_get_shared_data`, a 64-byte value (the host calls the module's allocator for the copy)"),
    ("shared_get_empty", "`proxy_get_shared_data`, an empty value (nothing copied back, no allocator call)"),
    ("property", "`proxy_get_property` `xds.cluster_name`"),
    ("header", "`proxy_get_header_map_value` `:path`"),
    ("clock", "`proxy_get_current_time_nanoseconds`"),
];

/// Floodgate's calls on an admitted plain request with `shed: all` (bench/results/filter.md),
/// by the kind measured here that stands for each: a quiet breaker's state is an empty value.
const FLOODGATE_CALLS: [(&str, u32); 4] = [("property", 1), ("clock", 1), ("shared_get_empty", 2), ("header", 1)];

fn configurations() -> Vec<Setup> {
    let mut list = vec![
        Setup { name: FLOOR, what: "", filters: setups::floor_filter("wasm_floor", "pass"), lua_open: false },
        Setup { name: FLOODGATE, what: "", filters: setups::wasm_filter(SHED_ALL), lua_open: false },
    ];
    if let Some(module) = std::env::var_os("FLOODGATE_WASM_BASELINE") {
        let filters = setups::wasm_filter_from(std::path::Path::new(&module), SHED_ALL);
        list.push(Setup { name: BASELINE, what: "", filters, lua_open: false });
    }
    for (kind, _) in KINDS {
        let mode = format!("calls {kind} {CALLS}");
        list.push(Setup { name: kind, what: "", filters: setups::floor_filter("wasm_floor", &mode), lua_open: false });
    }
    list.push(Setup { name: "spin", what: "", filters: setups::floor_filter("wasm_floor", SPIN), lua_open: false });
    list
}

/// Per configuration, its Envoy CPU per request round by round (µs).
struct Rounds(Vec<(&'static str, Vec<f64>)>);

impl Rounds {
    fn of(&self, name: &str) -> &[f64] {
        self.0.iter().find(|(n, _)| *n == name).map_or(&[], |(_, r)| r.as_slice())
    }

    /// Round by round, `name`'s CPU per request minus the floor's, divided by `per`.
    fn over_floor(&self, name: &str, per: f64) -> Vec<f64> {
        self.of(name).iter().zip(self.of(FLOOR)).map(|(a, f)| (a - f) / per).collect()
    }
}

fn list(values: &[f64]) -> String {
    let v: Vec<String> = values.iter().map(|x| format!("{x:+.1}")).collect();
    v.join(", ")
}

fn spread(values: &[f64]) -> String {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{lo:.2} to {hi:.2}")
}

pub async fn run(plan: Plan) -> anyhow::Result<String> {
    let started = Instant::now();
    let pinned = pin(std::process::id(), 1);
    let backend = Backend::start(0).await?;
    let proxies = start_proxies(configurations(), &backend, plan.quick, started).await?;
    warm_up(&proxies).await;
    let mut rounds: Vec<(&'static str, Vec<f64>)> = proxies.iter().map(|p| (p.name, Vec::new())).collect();
    for _ in 0..plan.rounds {
        for (p, (_, cpu)) in proxies.iter().zip(rounds.iter_mut()) {
            let s = saturated(p, plan.run).await;
            if s.errors > 0 && s.per_s < 1.0 {
                anyhow::bail!("{}: no request answered ({} errors)", p.name, s.errors);
            }
            cpu.push(s.cpu_us);
        }
    }
    Ok(report(&Rounds(rounds), plan, pinned, started.elapsed()))
}

fn report(r: &Rounds, plan: Plan, pinned: bool, took: Duration) -> String {
    let mut md = String::from("# What a host call costs in Envoy\n\n");
    let _ = writeln!(
        md,
        "Measured by `make bench-host-calls` on {} ({}, `--concurrency 1`{}), in {:.0} s. Each kind of call runs in \
         its own Envoy: the wasm floor (bench/wasm-floor) making {CALLS} such calls per request, beside the floor making \
         none and Floodgate (`shed: all`, closed), each saturated by a closed loop of 64 keep-alive connections (Envoy's \
         CPU busy), {} rounds of {:.1} s interleaved. A call's cost is (Envoy CPU per request − the floor's) / {CALLS}, \
         round by round; the median and the spread over rounds are shown.\n",
        machine(),
        envoy_version(),
        if pinned { ", pinned to CPU 0; the load generator on CPU 1" } else { "" },
        took.as_secs_f64(),
        plan.rounds,
        plan.run.as_secs_f64(),
    );
    md.push_str("| call | µs per call (median) | spread over rounds |\n|---|---:|---|\n");
    for (kind, what) in KINDS {
        let per_call = r.over_floor(kind, f64::from(CALLS));
        let _ = writeln!(md, "| {what} | {:.2} | {} |", median(&per_call), spread(&per_call));
    }
    let per_k = r.over_floor("spin", SPIN_INSTRUCTIONS / 1000.0);
    let _ = writeln!(md, "| 1,000 wasm instructions (`{SPIN}`) | {:.2} | {} |", median(&per_k), spread(&per_k));
    let floodgate = r.over_floor(FLOODGATE, 1.0);
    let calls: f64 =
        FLOODGATE_CALLS.iter().map(|(kind, n)| f64::from(*n) * median(&r.over_floor(kind, f64::from(CALLS)))).sum();
    let instructions = FLOODGATE_EXTRA_INSTRUCTIONS / 1000.0 * median(&per_k);
    let _ = writeln!(
        md,
        "\nFloodgate over the floor, same rounds: {:+.2} µs per request (median; spread {}). Its {} host calls on an \
         admitted plain request (1 property, 1 clock, 2 reads of a quiet breaker's empty state, 1 header) at the costs \
         above: {calls:.2} µs; \
         its ~{FLOODGATE_EXTRA_INSTRUCTIONS:.0} wasm instructions more than the floor's: {instructions:.2} µs.\n",
        median(&floodgate),
        spread(&floodgate),
        FLOODGATE_CALLS.iter().map(|(_, n)| n).sum::<u32>(),
    );
    if !r.of(BASELINE).is_empty() {
        let baseline = r.over_floor(BASELINE, 1.0);
        let change: Vec<f64> = r.of(FLOODGATE).iter().zip(r.of(BASELINE)).map(|(a, b)| a - b).collect();
        let _ = writeln!(
            md,
            "The baseline build (`FLOODGATE_WASM_BASELINE`) over the floor, same rounds: {:+.2} µs per request (median; \
             spread {}). Floodgate minus the baseline, round by round: {} (median {:+.2} µs).\n",
            median(&baseline),
            spread(&baseline),
            list(&change),
            median(&change),
        );
    }
    md.push_str("Envoy CPU per request, round by round (µs):\n\n");
    for (name, cpu) in &r.0 {
        let list: Vec<String> = cpu.iter().map(|c| format!("{c:.1}")).collect();
        let _ = writeln!(md, "- {name}: {}", list.join(", "));
    }
    md
}

/// Writes the report where `make bench-host-calls` promises it (a quick run's under target/).
pub fn write(md: &str, plan: Plan) -> anyhow::Result<std::path::PathBuf> {
    let dest = if plan.quick {
        repo_root().join("target/host-calls-quick.md")
    } else {
        repo_root().join("bench/results/host-calls.md")
    };
    std::fs::write(&dest, md)?;
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use floodgate_demo::envoy::{self, Ports};

    #[tokio::test]
    async fn every_host_call_configuration_validates_in_envoy() {
        let ports = Ports { admin: 9901, listen: 10000, backend: 8081, control: 9000 };
        for setup in configurations() {
            let config = setups::render(&setup, ports).unwrap_or_else(|e| panic!("{e}"));
            let (ok, log) = envoy::validate(&config).await.unwrap_or_else(|e| panic!("{e}"));
            assert!(ok, "{}:\n{log}", setup.name);
        }
    }

    #[test]
    fn a_call_s_cost_is_the_round_s_difference_over_the_floor_per_call() {
        let r = Rounds(vec![(FLOOR, vec![20.0, 30.0]), ("clock", vec![24.0, 38.0])]);
        assert_eq!(r.over_floor("clock", 8.0), vec![0.5, 1.0]);
        assert_eq!(median(&r.over_floor("clock", 8.0)), 0.75);
        assert_eq!(spread(&[0.5, -0.25, 1.0]), "-0.25 to 1.00");
    }
}
