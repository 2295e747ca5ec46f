//! `make bench-filter`: the filter's cost per request on its hot paths, counted exactly in the
//! harness (wasm instructions via fuel, host calls by name, linear memory). Deterministic: the
//! same module gives the same numbers on any machine. Writes bench/results/filter.md.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use floodgate_harness::{CallStats, Host, Worker, CONTINUE, PAUSE};

const BREAKER: &str = "collab_ws";

struct Row {
    path: &'static str,
    instructions: u64,
    host_calls: BTreeMap<String, u32>,
}

fn add(total: &mut CallStats, s: &CallStats) {
    total.instructions += s.instructions;
    for (k, v) in &s.host_calls {
        *total.host_calls.entry(k.clone()).or_default() += v;
    }
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

fn measure(
    path: &'static str,
    config: &str,
    setup: impl Fn(&Host, &mut Worker) -> wasmtime::Result<()>,
    upgrade: bool,
    status: u16,
    expect: u32,
) -> wasmtime::Result<(Row, usize)> {
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
    request(&mut w, upgrade, status, expect)?;
    let s = request(&mut w, upgrade, status, expect)?;
    let memory = w.memory_bytes();
    Ok((Row { path, instructions: s.instructions, host_calls: s.host_calls }, memory))
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
    let budget_wide =
        r#"{"defaults": {"consecutive_failures": 3, "admission": {"per_second": 1000000, "burst": 1000000}}}"#;
    let budget_one = r#"{"defaults": {"consecutive_failures": 3, "admission": {"per_second": 1, "burst": 1}}}"#;
    // The one token goes to a first upgrade; every later one (the clock stands still) is refused.
    let spend = |_: &Host, w: &mut Worker| -> wasmtime::Result<()> {
        request(w, true, 101, CONTINUE)?;
        Ok(())
    };
    let rows = vec![
        measure("plain request, `shed: websocket` (not guarded)", config, none, false, 200, CONTINUE)?,
        measure("plain request, `shed: all`, closed, admitted", shed_all, none, false, 200, CONTINUE)?,
        measure("upgrade, closed, admitted (101)", config, none, true, 101, CONTINUE)?,
        measure("upgrade, open, refused (503 local reply)", config, trip, true, 101, PAUSE)?,
        measure("upgrade, half-open probe, admitted (101)", config, half_open, true, 101, CONTINUE)?,
        measure("upgrade, closed, admission budget admits (101)", budget_wide, none, true, 101, CONTINUE)?,
        measure("upgrade, closed, admission budget refuses (503 local reply)", budget_one, spend, true, 101, PAUSE)?,
    ];
    let mut out = String::from(
        "# Filter cost per request (harness, deterministic)\n\n\
         Counted by `make bench-filter` in the wasmtime harness: wasm instructions (fuel) and host\n\
         calls for one whole request on a warm worker (context creation, request headers, response\n\
         headers when admitted, log/done/delete). The same module gives the same numbers anywhere.\n\n\
         | path | wasm instructions | host calls | by call |\n|---|---:|---:|---|\n",
    );
    let mut memory = 0;
    for (r, m) in &rows {
        memory = memory.max(*m);
        let by: Vec<String> =
            r.host_calls.iter().map(|(k, v)| format!("{}×{v}", k.trim_start_matches("proxy_"))).collect();
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            r.path,
            r.instructions,
            r.host_calls.values().sum::<u32>(),
            by.join(", ")
        ));
    }
    out.push_str(&format!("\nLinear memory after these requests: {} KiB.\n", memory / 1024));
    let dest = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/results/filter.md");
    std::fs::write(&dest, &out)?;
    print!("{out}");
    println!("\nwritten to {}", dest.display());
    Ok(())
}
