//! `make demo` end to end in its short form: `cargo run -p floodgate-demo -- --short` (the command
//! `make demo` runs, `cargo run -q -p floodgate-demo` without naming the binary, with `--short`)
//! drives the whole loop, and this test checks the numbers of its machine-readable summary line,
//! not its exit code. `make test-demo` builds the module and floodgate-control first, as
//! `make demo` does.
// Test code throughout: clippy.toml lets it unwrap, expect and panic.
#![cfg(test)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Runs the short demo and returns everything it printed; interrupts it (SIGINT, so it stops its
/// own processes) if it runs past `within`.
fn run_short_demo(within: Duration) -> String {
    floodgate_tests::require_wasm();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(cargo)
        .args(["run", "-q", "-p", "floodgate-demo", "--", "--short"])
        .current_dir(floodgate_demo::repo_root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut out = String::new();
            let _ = pipe.read_to_string(&mut out);
            out
        })
    };
    // Both pipes are read while the demo runs, so neither can fill up and stall it.
    let reader = drain(Box::new(child.stdout.take().unwrap()));
    let err_reader = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > within {
            let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
            let _ = child.wait();
            panic!("the short demo ran past {within:?}:\n{}", reader.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = reader.join().unwrap();
    let err = err_reader.join().unwrap();
    assert!(status.success(), "the demo failed ({status}):\n{out}\n{err}");
    println!("{out}");
    out
}

#[test]
fn the_short_demo_keeps_every_early_session_refuses_in_both_acts_and_never_fails_while_forced_open() {
    let start = Instant::now();
    let out = run_short_demo(Duration::from_secs(180));
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("demo-summary: "))
        .unwrap_or_else(|| panic!("no demo-summary line in:\n{out}"));
    let s: Value = serde_json::from_str(line).unwrap();
    let n = |v: &Value| v.as_u64().unwrap_or_else(|| panic!("not a number: {v} in {s}"));
    println!("short demo: {:.1} s, summary {s}", start.elapsed().as_secs_f64());

    // Every steady session was open before the incident and is still open, echoing, at the end.
    let steady = n(&s["steady_sessions"]);
    assert_eq!(steady, 20);
    assert_eq!(n(&s["alive_at_incident"]), steady, "sessions open when act 1 began");
    assert_eq!(n(&s["alive_at_end"]), steady, "sessions open at the end");
    assert_eq!(n(&s["echo_failures"]), 0);
    assert!(n(&s["echoes"]) >= steady * 20, "each session echoes about once a second: {s}");

    // Act 1: the backend's failures trip the local breaker, which refuses, then closes again.
    assert!(n(&s["act1"]["failed"]) >= 5, "the 5 failures that trip the breaker reached the backend: {s}");
    assert!(n(&s["act1"]["refused"]) > 0, "act 1 refused nothing: {s}");
    assert!(n(&s["refused_by_reason"]["consecutive_failures"]) > 0, "{s}");
    let (opened, closed) = (n(&s["opened_at"]), n(&s["closed_at"]));
    assert!(opened < closed, "the local breaker opened at {opened}s and closed at {closed}s");

    // Act 2: the alert forces the breaker open through the control plane; every new upgrade is
    // refused with its reason and none reaches the backend to fail; then it is released.
    assert!(n(&s["act2"]["refused"]) > 0, "act 2 refused nothing: {s}");
    assert!(n(&s["refused_by_reason"]["backpressure_critical"]) > 0, "{s}");
    assert!(n(&s["forced_open"]["seconds"]) >= 3, "forced open too briefly to judge: {s}");
    assert!(n(&s["forced_open"]["refused"]) > 0, "{s}");
    assert_eq!(n(&s["forced_open"]["failed"]), 0, "a new upgrade failed while forced open: {s}");
    assert_eq!(n(&s["act2"]["failed"]), 0, "a new upgrade failed in act 2: {s}");
    let (forced, released) = (n(&s["forced_at"]), n(&s["released_at"]));
    assert!(closed < forced && forced < released, "forced open at {forced}s, released at {released}s");
    // After the release, new upgrades are admitted again.
    assert!(n(&s["act2"]["admitted"]) > 0, "{s}");
}
