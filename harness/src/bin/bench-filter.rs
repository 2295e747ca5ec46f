//! `make bench-filter`: the filter's cost per request on its hot paths, counted exactly in the
//! harness (wasm instructions via fuel, host calls by name, linear memory), with where the
//! instructions went (between which host calls). Deterministic: the same module gives the same
//! numbers on any machine. Writes bench/results/filter.md and exits non-zero when a path exceeds
//! its target (issue 15), so `make test` keeps the request path lean.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use floodgate_harness::{CallStats, Host, Worker, CONTINUE, PAUSE};

const BREAKER: &str = "collab_ws";

/// Successes that fill the default count window (100 calls): a warm breaker's steady state.
const WARM_REQUESTS: usize = 100;

struct Row {
    path: &'static str,
    /// Most instructions and host calls the path may take (issue 15), if it has a target.
    target: Option<(u64, u32)>,
    stats: CallStats,
}

fn add(total: &mut CallStats, s: &CallStats) {
    total.instructions += s.instructions;
    for (k, v) in &s.host_calls {
        *total.host_calls.entry(k.clone()).or_default() += v;
    }
    total.segments.extend(s.segments.iter().cloned());
}

/// One request: request headers (+ response headers and end when admitted); its summed cost.
fn request(w: &mut Worker, upgrade: bool, status: u16, expect: u32) -> wasmtime::Result<CallStats> {
    let mut total = CallStats::default();
    let ctx = w.new_context()?;
    add(&mut total, &w.last);
    w.set_context_property(ctx, &["xds", "cluster_name"], BREAKER.as_bytes());
    let mut headers = vec![(":method", "GET"), (":path", "/ws"), (":authority", "collab")];
    if upgrade {
        headers.extend([("upgrade", "websocket"), ("connection", "upgrade")]);
    }
    let action = w.request_headers(ctx, &headers, false)?;
    add(&mut total, &w.last);
    if action != expect {
        wasmtime::bail!("expected action {expect}, got {action}");
    }
    if action == CONTINUE {
        w.response_headers(ctx, &[(":status", &status.to_string())], false)?;
        add(&mut total, &w.last);
    }
    w.end(ctx)?;
    add(&mut total, &w.last);
    Ok(total)
}

struct Path {
    name: &'static str,
    target: Option<(u64, u32)>,
    upgrade: bool,
    status: u16,
    expect: u32,
    /// Requests on the warm worker before the measured one.
    warm: usize,
}

fn measure(
    p: Path,
    config: &str,
    setup: impl Fn(&Host, &mut Worker) -> wasmtime::Result<()>,
) -> wasmtime::Result<(Row, usize)> {
    let Path { name, target, upgrade, status, expect, warm } = p;
    let wasm = std::env::var_os("FLOODGATE_WASM").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip1/release/floodgate.wasm")
    });
    let mut host = Host::new(&wasm)?;
    let mut w = host.worker()?;
    if !w.configure("floodgate", config)? {
        wasmtime::bail!("configuration refused: {:?}", host.logs());
    }
    setup(&host, &mut w)?;
    // Warm: metric ids cached, the breaker registered, as on a worker that has served traffic.
    for _ in 0..warm {
        request(&mut w, upgrade, status, expect)?;
    }
    let stats = request(&mut w, upgrade, status, expect)?;
    let memory = w.memory_bytes();
    Ok((Row { path: name, target, stats }, memory))
}

/// Why a path misses its target, if it does.
fn over_target(r: &Row) -> Option<String> {
    let (i, c) = r.target?;
    let calls = r.stats.total_host_calls();
    (r.stats.instructions > i || calls > c)
        .then(|| format!("{}: {} instructions, {calls} host calls (target {i}, {c})", r.path, r.stats.instructions))
}

/// Where a path's instructions went: the segments between host calls, largest first.
fn profile(r: &Row) -> String {
    let mut by: BTreeMap<&str, u64> = BTreeMap::new();
    for (label, n) in &r.stats.segments {
        *by.entry(label.as_str()).or_default() += n;
    }
    let mut by: Vec<_> = by.into_iter().filter(|(_, n)| *n > 0).collect();
    by.sort_by_key(|b| std::cmp::Reverse(b.1));
    let mut out = format!(
        "\n**{}** ({} instructions)\n\n| callback: after -> until | instructions |\n|---|---:|\n",
        r.path, r.stats.instructions
    );
    for (label, n) in by {
        out.push_str(&format!("| {label} | {n} |\n"));
    }
    out
}

fn main() -> wasmtime::Result<()> {
    let config = r#"{"defaults": {"consecutive_failures": 3, "open": {"base_ms": 60000, "jitter": 0.0},
                     "half_open": {"permits": 32, "successes": 100}}}"#;
    let shed_all = r#"{"shed": "all", "defaults": {"consecutive_failures": 3}}"#;
    let trip = |_: &Host, w: &mut Worker| -> wasmtime::Result<()> {
        for _ in 0..3 {
            request(w, true, 503, CONTINUE)?;
        }
        Ok(())
    };
    let half_open = |h: &Host, w: &mut Worker| -> wasmtime::Result<()> {
        trip(h, w)?;
        h.advance(Duration::from_secs(61));
        Ok(())
    };
    let none = |_: &Host, _: &mut Worker| Ok(());
    let path = |name, target, upgrade, status, expect, warm| Path { name, target, upgrade, status, expect, warm };
    let rows = vec![
        measure(path("plain request, `shed: websocket` (not guarded)", None, false, 200, CONTINUE, 1), config, none)?,
        measure(
            path("plain request, `shed: all`, closed, admitted", Some((3_000, 5)), false, 200, CONTINUE, WARM_REQUESTS),
            shed_all,
            none,
        )?,
        measure(
            path("plain request, `shed: all`, closed, window still filling", None, false, 200, CONTINUE, 1),
            shed_all,
            none,
        )?,
        measure(
            path("upgrade, closed, admitted (101)", Some((5_000, 6)), true, 101, CONTINUE, WARM_REQUESTS),
            config,
            none,
        )?,
        measure(path("upgrade, open, refused (503 local reply)", Some((6_000, 6)), true, 101, PAUSE, 1), config, trip)?,
        measure(
            path("upgrade, half-open probe, admitted (101)", Some((8_000, 8)), true, 101, CONTINUE, 1),
            config,
            half_open,
        )?,
    ];
    let mut out = String::from(
        "# Filter cost per request (harness, deterministic)\n\n\
         Counted by `make bench-filter` in the wasmtime harness: wasm instructions (fuel) and host\n\
         calls for one whole request on a warm worker (context creation, request headers, response\n\
         headers when admitted, log/done/delete). Warm means the breaker registered and its window\n\
         full of successes (100 requests before), as on a worker that has served traffic; one row\n\
         shows a window still filling. The same module gives the same numbers anywhere. A path over\n\
         its target (issue 15) fails `make bench-filter` and so `make test`.\n\n\
         | path | wasm instructions | host calls | target | by call |\n|---|---:|---:|---|---|\n",
    );
    let mut memory = 0;
    let mut over = Vec::new();
    for (r, m) in &rows {
        memory = memory.max(*m);
        let by: Vec<String> =
            r.stats.host_calls.iter().map(|(k, v)| format!("{}×{v}", k.trim_start_matches("proxy_"))).collect();
        let calls = r.stats.total_host_calls();
        over.extend(over_target(r));
        let target = match r.target {
            Some((i, c)) => format!("≤ {i}, ≤ {c}"),
            None => "–".to_string(),
        };
        out.push_str(&format!("| {} | {} | {calls} | {target} | {} |\n", r.path, r.stats.instructions, by.join(", ")));
    }
    out.push_str(&format!("\nLinear memory after these requests: {} KiB.\n", memory / 1024));
    out.push_str("\n### Where the instructions went\n\nInstructions between consecutive host calls of each callback (summed over the request's callbacks; a host call's reply buffer is allocated inside the call, so its allocation counts toward the segment that ends at the next call).\n");
    for (r, _) in &rows {
        out.push_str(&profile(r));
    }
    let dest = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/results/filter.md");
    std::fs::write(&dest, &out)?;
    print!("{out}");
    println!("\nwritten to {}", dest.display());
    if !over.is_empty() {
        wasmtime::bail!("over target:\n{}", over.join("\n"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_over_either_target_is_reported_and_one_within_both_is_not() {
        let row = |instructions, calls: u32| Row {
            path: "p",
            target: Some((3_000, 5)),
            stats: CallStats {
                instructions,
                host_calls: BTreeMap::from([("proxy_get_property".to_string(), calls)]),
                segments: vec![],
            },
        };
        assert_eq!(over_target(&row(3_000, 5)), None);
        assert!(over_target(&row(3_001, 5)).is_some());
        assert!(over_target(&row(2_000, 6)).is_some());
        assert_eq!(over_target(&Row { target: None, ..row(9_999, 9) }), None);
    }
}
