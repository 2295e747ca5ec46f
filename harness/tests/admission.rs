//! The admission budget in the compiled module: one bucket per breaker shared by interleaved
//! workers, refilled by the clock, steady through clock steps; refusals carry `admission_budget`.
// Test code throughout: clippy.toml lets it unwrap, expect and panic.
#![cfg(test)]

mod common;

use std::time::Duration;

use common::{host, metric, worker};
use floodgate_harness::{status, LocalResponse, Worker, CONTINUE, PAUSE};

const BREAKER: &str = "collab_ws";
const BUDGET: &str = r#"{"defaults": {"consecutive_failures": 3, "open": {"base_ms": 10000, "jitter": 0.0},
    "half_open": {"permits": 2, "successes": 2}, "admission": {"per_second": 10, "burst": 20}}}"#;

/// Starts an upgrade; `Ok(ctx)` when admitted (the upstream then answers `status`), else the
/// local reply.
fn upgrade(w: &mut Worker, status: u16) -> Result<u32, LocalResponse> {
    let ctx = w.new_context().unwrap();
    w.set_context_property(ctx, &["xds", "cluster_name"], BREAKER.as_bytes());
    let headers = [
        (":method", "GET"),
        (":path", "/ws"),
        (":authority", "collab"),
        ("upgrade", "websocket"),
        ("connection", "upgrade"),
    ];
    let action = w.request_headers(ctx, &headers, false).unwrap();
    if action == PAUSE {
        let reply = w.local_response(ctx).expect("a refusal sends a local reply");
        w.end(ctx).unwrap();
        return Err(reply);
    }
    assert_eq!(action, CONTINUE);
    w.response_headers(ctx, &[(":status", &status.to_string())], false).unwrap();
    w.end(ctx).unwrap();
    Ok(ctx)
}

/// Upgrades alternating between the workers, at the current time; how many were admitted.
fn burst(ws: &mut [Worker], n: usize) -> usize {
    (0..n).filter(|i| upgrade(&mut ws[i % ws.len()], 101).is_ok()).count()
}

#[test]
fn two_interleaved_workers_admit_exactly_the_budget_and_refill_with_the_clock() {
    let mut host = host();
    let mut ws = [worker(&mut host, BUDGET), worker(&mut host, BUDGET)];
    // A full bucket: the burst, and not one more, whichever worker asks.
    assert_eq!(burst(&mut ws, 50), 20);
    // 10 per second: 250 ms later, 2 more (2.5 tokens), then 0.5 s later 5 more (5.5 tokens... 5).
    host.advance(Duration::from_millis(250));
    assert_eq!(burst(&mut ws, 10), 2);
    host.advance(Duration::from_millis(500));
    assert_eq!(burst(&mut ws, 10), 5);
    // Steady arrivals at the rate all pass, on both workers in turn.
    for i in 0..30 {
        host.advance(Duration::from_millis(100));
        assert!(upgrade(&mut ws[i % 2], 101).is_ok(), "arrival {i} at the rate refused");
    }
    // A long idle time refills to the burst only.
    host.advance(Duration::from_secs(3600));
    assert_eq!(burst(&mut ws, 50), 20);
    let admitted = 20 + 2 + 5 + 30 + 20;
    let refused = (50 - 20) + (10 - 2) + (10 - 5) + (50 - 20);
    assert_eq!(metric(&host, "breaker=.=collab_ws;.;floodgate_admission_admitted_total"), admitted);
    let rejected = "breaker=.=collab_ws;.;kind=.=websocket;.;floodgate_admission_rejected_total";
    assert_eq!(metric(&host, rejected), refused);
    assert_eq!(metric(&host, "breaker=.=collab_ws;.;kind=.=websocket;.;floodgate_rejected_total"), refused);
    // The breaker itself saw only the admitted calls, all successes (in the stats from the tick).
    for w in ws.iter_mut() {
        w.tick().unwrap();
    }
    assert_eq!(metric(&host, "breaker=.=collab_ws;.;outcome=.=success;.;floodgate_calls_total"), admitted);
}

#[test]
fn a_refusal_says_admission_budget_in_the_breakers_state_with_a_spread_retry_after() {
    let mut host = host();
    let mut ws = [worker(&mut host, BUDGET), worker(&mut host, BUDGET)];
    assert_eq!(burst(&mut ws, 20), 20);
    let mut retry = std::collections::BTreeSet::new();
    for i in 0..200 {
        let r = upgrade(&mut ws[i % 2], 101).expect_err("the bucket is empty");
        assert_eq!(r.status, 503);
        assert_eq!(r.header("x-floodgate"), Some("closed"));
        let s: u64 = r.header("retry-after").unwrap().parse().unwrap();
        let body = String::from_utf8_lossy(&r.body);
        let expected = format!(
            r#"{{"error":"circuit_open","breaker":"collab_ws","state":"closed","reason":"admission_budget","retry_after_s":{s}}}"#
        );
        assert_eq!(body, expected);
        retry.insert(s);
    }
    // Burst 20 at 10/s refills in 2 s: the next token is 100 ms away (1 s), spread over 2 s more.
    assert_eq!(retry.into_iter().collect::<Vec<_>>(), [1, 2, 3]);
}

#[test]
fn a_budget_refusal_in_half_open_says_half_open_and_gives_the_probe_slot_back() {
    let config = r#"{"defaults": {"consecutive_failures": 3, "open": {"base_ms": 10000, "jitter": 0.0},
        "half_open": {"permits": 1, "successes": 2}, "admission": {"per_second": 1, "burst": 1}}}"#;
    let mut host = host();
    let mut w = worker(&mut host, config);
    for _ in 0..3 {
        upgrade(&mut w, 503).unwrap();
        host.advance(Duration::from_secs(1));
    }
    // Open: the breaker refuses, and takes no token for it.
    assert_eq!(upgrade(&mut w, 101).unwrap_err().header("x-floodgate"), Some("open"));
    host.advance(Duration::from_millis(10_001));
    // Half-open: a probe takes the one permit and the one token, and waits for its answer.
    let probe = w.new_context().unwrap();
    w.set_context_property(probe, &["xds", "cluster_name"], BREAKER.as_bytes());
    let h = [(":method", "GET"), (":path", "/ws"), ("upgrade", "websocket"), ("connection", "upgrade")];
    assert_eq!(w.request_headers(probe, &h, false).unwrap(), CONTINUE);
    assert_eq!(upgrade(&mut w, 101).unwrap_err().header("x-floodgate"), Some("half_open"));
    w.response_headers(probe, &[(":status", "101")], false).unwrap();
    w.end(probe).unwrap();
    // The permit is free again but the bucket is empty: refused by the budget, as half_open.
    let r = upgrade(&mut w, 101).unwrap_err();
    assert_eq!(r.header("x-floodgate"), Some("half_open"));
    assert!(String::from_utf8_lossy(&r.body).contains(r#""state":"half_open","reason":"admission_budget""#));
    // Its probe slot went back: a second later the next probe gets it (a held slot would refuse
    // for its 30 s lease) and closes the breaker.
    host.advance(Duration::from_secs(1));
    upgrade(&mut w, 101).expect("the slot was given back");
    assert_eq!(metric(&host, "breaker=.=collab_ws;.;from=.=half_open;.;to=.=closed;.;floodgate_transitions_total"), 1);
}

#[test]
fn clock_steps_backwards_and_forwards_neither_refuse_more_nor_admit_more() {
    let mut host = host();
    let mut ws = [worker(&mut host, BUDGET), worker(&mut host, BUDGET)];
    assert_eq!(burst(&mut ws, 20), 20);
    // The clock steps back an hour: the bucket refills from here as if no time had passed.
    host.rewind(Duration::from_secs(3600));
    assert_eq!(burst(&mut ws, 5), 0);
    host.advance(Duration::from_millis(500));
    assert_eq!(burst(&mut ws, 10), 5);
    // Steps forward by an hour: full again, the burst and no more.
    host.advance(Duration::from_secs(3600));
    assert_eq!(burst(&mut ws, 50), 20);
    // The clock jitters: 300 ms forward, 200 ms back, twenty times (2 s net, 6 s forward). The
    // bucket refills by the forward steps it sees (3 tokens each) and never by a backward one.
    host.advance(Duration::from_secs(10));
    assert_eq!(burst(&mut ws, 20), 20);
    let mut admitted = 0;
    for _ in 0..20 {
        host.advance(Duration::from_millis(300));
        admitted += burst(&mut ws, 5);
        host.rewind(Duration::from_millis(200));
        admitted += burst(&mut ws, 5);
    }
    assert_eq!(admitted, 60);
}

#[test]
fn contention_or_a_failing_store_admits_and_counts_the_loss() {
    let mut host = host();
    let mut w = worker(&mut host, BUDGET);
    upgrade(&mut w, 101).unwrap();
    host.inject_fault("proxy_get_shared_data", status::INTERNAL_FAILURE, 1000);
    for _ in 0..40 {
        upgrade(&mut w, 101).expect("a store failure never refuses");
    }
}
