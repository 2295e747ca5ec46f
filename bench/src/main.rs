//! `make bench`: Floodgate's cost against no filter and the alternatives users would pick,
//! measured side by side on the same Envoy binary in one run, interleaved (A B C A B C ...), and
//! written to BENCHMARKS.md. `--quick` is a short smoke run for CI (it never fails on speed).
//!
//! Every Envoy runs with `--concurrency 1` pinned to CPU 0; this process (load generator and
//! backend) is pinned to CPU 1. The backend cluster's circuit-breaker thresholds are raised so
//! Envoy's own limits never interfere.
//!
//! Measuring and writing are apart: `setups` (the Envoy configurations, by name), `measure` and
//! `control` (the runs, into `results`), `filter_costs` (the harness's counts, read from
//! bench/results/filter.md) and `report` (the markdown).

mod control;
mod filter_costs;
mod host_calls;
mod load;
mod measure;
mod report;
mod results;
mod setups;
mod storm;
mod system;

use filter_costs::FilterCosts;
use floodgate_demo::repo_root;
use results::Plan;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    if std::env::args().any(|a| a == "--host-calls") {
        let plan = if quick { host_calls::Plan::QUICK } else { host_calls::Plan::FULL };
        let md = host_calls::run(plan).await?;
        println!("{md}\nwritten to {}", host_calls::write(&md, plan)?.display());
        return Ok(());
    }
    // `--storm-only`: the reconnect storm alone, its section replaced in the existing report.
    let storm_only = std::env::args().any(|a| a == "--storm-only");
    let dest = if quick { repo_root().join("target/BENCHMARKS-quick.md") } else { repo_root().join("BENCHMARKS.md") };
    let md = if storm_only {
        std::fs::read_to_string(&dest).unwrap_or_default()
    } else {
        let results = measure::run(if quick { Plan::quick() } else { Plan::full() }).await?;
        let filter = FilterCosts::read(&repo_root().join("bench/results/filter.md")).ok();
        let host_calls = std::fs::read_to_string(repo_root().join("bench/results/host-calls.md")).ok();
        report::render(&results, filter.as_ref(), host_calls.as_deref())
    };
    // `--no-storm`: sections 1 to 6 only; the storm section already in the report is kept.
    if std::env::args().any(|a| a == "--no-storm") {
        let old = std::fs::read_to_string(&dest).unwrap_or_default();
        let section = match (old.find("<!-- storm -->"), old.find("<!-- /storm -->")) {
            (Some(a), Some(b)) if b > a => &old[a..b + "<!-- /storm -->".len()],
            _ => "",
        };
        let md = if section.is_empty() { md } else { storm::splice(&md, section) };
        std::fs::write(&dest, &md)?;
        println!("{md}\nwritten to {}", dest.display());
        return Ok(());
    }
    let storm = storm::run(if quick { storm::StormPlan::quick() } else { storm::StormPlan::full() }).await?;
    let svg_name = if quick { "BENCHMARKS-quick-storm.svg" } else { "BENCHMARKS-storm.svg" };
    std::fs::write(dest.with_file_name(svg_name), storm::svg(&storm))?;
    let md = storm::splice(&md, &storm::report(&storm, svg_name));
    std::fs::write(&dest, &md)?;
    println!("{md}\nwritten to {}", dest.display());
    Ok(())
}
