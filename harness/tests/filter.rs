//! The compiled floodgate.wasm in the harness: interleaved workers, clock jumps, every host-call
//! failure, CAS contention, configuration errors, exact metrics, and the control-plane poller.
// Test code throughout: clippy.toml lets it unwrap, expect and panic.
#![cfg(test)]

mod common;

use std::time::Duration;

use common::host;
use floodgate_harness::{status, Host, Worker, CONTINUE, PAUSE};

const BREAKER: &str = "collab_ws";
const CONFIG: &str = r#"{"defaults": {"consecutive_failures": 3, "open": {"base_ms": 10000, "jitter": 0.0},
    "half_open": {"permits": 2, "successes": 2}}}"#;

fn worker(host: &mut Host, config: &str) -> Worker {
    let mut w = host.worker().unwrap();
    w.set_property(&["xds", "node", "id"], b"harness-node");
    w.add_cluster("floodgate_control");
    assert!(w.configure("floodgate", config).unwrap(), "configuration refused: {:?}", host.logs());
    w
}

/// The name Envoy sees for a metric with labels (Istio tag form).
fn tagged(name: &str, labels: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (k, v) in labels {
        s.push_str(&format!("{k}=.={v};.;"));
    }
    s + name
}

fn metric(host: &Host, name: &str, labels: &[(&str, &str)]) -> i64 {
    host.metric(&tagged(name, labels)).unwrap_or(0)
}

/// Starts an upgrade to `cluster`; returns its context and the filter's action.
fn upgrade(w: &mut Worker, cluster: &str) -> (u32, u32) {
    let ctx = w.new_context().unwrap();
    w.set_context_property(ctx, &["xds", "cluster_name"], cluster.as_bytes());
    let headers = [
        (":method", "GET"),
        (":path", "/ws"),
        (":authority", "collab"),
        ("upgrade", "websocket"),
        ("connection", "upgrade"),
    ];
    let action = w.request_headers(ctx, &headers, false).unwrap();
    (ctx, action)
}

/// The upstream answers `status`, and the stream ends.
fn answer(w: &mut Worker, ctx: u32, status: u16) {
    w.response_headers(ctx, &[(":status", &status.to_string())], false).unwrap();
    w.end(ctx).unwrap();
}

/// An upgrade that reaches the upstream and gets `status`.
fn call(w: &mut Worker, status: u16) {
    let (ctx, action) = upgrade(w, BREAKER);
    assert_eq!(action, CONTINUE, "expected admission, got a refusal: {:?}", w.local_response(ctx));
    answer(w, ctx, status);
}

/// An upgrade the filter refuses; its local reply.
fn refused(w: &mut Worker) -> floodgate_harness::LocalResponse {
    let (ctx, action) = upgrade(w, BREAKER);
    assert_eq!(action, PAUSE, "expected a refusal");
    let reply = w.local_response(ctx).expect("a refusal sends a local reply");
    w.end(ctx).unwrap();
    reply
}

fn transitions(host: &Host, from: &str, to: &str) -> i64 {
    metric(host, "floodgate_transitions_total", &[("breaker", BREAKER), ("from", from), ("to", to)])
}

#[test]
fn two_interleaved_workers_trip_the_breaker_exactly_once_and_both_refuse() {
    let mut host = host();
    let mut a = worker(&mut host, CONFIG);
    let mut b = worker(&mut host, CONFIG);
    call(&mut a, 503);
    call(&mut b, 503);
    // Both start their third call before either sees its answer: two admissions, one trip.
    let (ca, _) = upgrade(&mut a, BREAKER);
    let (cb, _) = upgrade(&mut b, BREAKER);
    answer(&mut b, cb, 503);
    answer(&mut a, ca, 503);
    assert_eq!(transitions(&host, "closed", "open"), 1);
    for w in [&mut a, &mut b] {
        let r = refused(w);
        assert_eq!(r.status, 503);
        assert_eq!(r.header("x-floodgate"), Some("open"));
        assert_eq!(r.header("retry-after"), Some("10"));
    }
    assert_eq!(metric(&host, "floodgate_state", &[("breaker", BREAKER)]), 2);
}

#[test]
fn half_open_admits_exactly_permits_probes_across_workers() {
    let mut host = host();
    let mut a = worker(&mut host, CONFIG);
    let mut b = worker(&mut host, CONFIG);
    for _ in 0..3 {
        call(&mut a, 503);
    }
    host.advance(Duration::from_millis(10_001));
    let (p1, act1) = upgrade(&mut a, BREAKER);
    let (p2, act2) = upgrade(&mut b, BREAKER);
    assert_eq!((act1, act2), (CONTINUE, CONTINUE), "two permits, two probes");
    for w in [&mut a, &mut b] {
        let r = refused(w);
        assert_eq!(r.header("x-floodgate"), Some("half_open"));
    }
    answer(&mut a, p1, 101);
    answer(&mut b, p2, 101);
    assert_eq!(transitions(&host, "open", "half_open"), 1);
    assert_eq!(transitions(&host, "half_open", "closed"), 1);
    call(&mut b, 101);
}

#[test]
fn a_probe_failure_reopens_for_longer() {
    let mut host = host();
    let mut a = worker(&mut host, CONFIG);
    for _ in 0..3 {
        call(&mut a, 503);
    }
    host.advance(Duration::from_millis(10_001));
    call(&mut a, 503);
    assert_eq!(transitions(&host, "half_open", "open"), 1);
    // Doubled: still open after the first open time.
    host.advance(Duration::from_millis(10_001));
    assert_eq!(refused(&mut a).header("x-floodgate"), Some("open"));
    host.advance(Duration::from_millis(10_000));
    call(&mut a, 101);
}

#[test]
fn clock_jumps_of_zero_past_the_open_time_and_of_hours_are_handled() {
    let mut host = host();
    // Without an answer deadline (with one, the overdue probe re-opens: see the answer tests).
    let config = r#"{"defaults": {"consecutive_failures": 3, "open": {"base_ms": 10000, "jitter": 0.0},
        "half_open": {"permits": 2, "successes": 2}, "answer_timeout_ms": 0}}"#;
    let mut a = worker(&mut host, config);
    for _ in 0..3 {
        call(&mut a, 503);
    }
    host.advance(Duration::ZERO);
    refused(&mut a);
    host.advance(Duration::from_millis(9_999));
    refused(&mut a);
    host.advance(Duration::from_millis(2));
    // The next request after the open time is a probe.
    let (ctx, action) = upgrade(&mut a, BREAKER);
    assert_eq!(action, CONTINUE);
    assert_eq!(metric(&host, "floodgate_state", &[("breaker", BREAKER)]), 1);
    // Hours pass before its answer: its probe slot expired long ago, so it decides nothing...
    host.advance(Duration::from_secs(5 * 3600));
    answer(&mut a, ctx, 101);
    assert_eq!(metric(&host, "floodgate_state", &[("breaker", BREAKER)]), 1);
    assert_eq!(transitions(&host, "half_open", "closed"), 0);
    // ...and fresh probes close the breaker.
    call(&mut a, 101);
    call(&mut a, 101);
    assert_eq!(transitions(&host, "half_open", "closed"), 1);

    // A time window forgets failures an hour old.
    let mut rate_host = crate::host();
    let mut w = worker(&mut rate_host, RATE_CONFIG);
    for _ in 0..3 {
        call(&mut w, 503);
    }
    rate_host.advance(Duration::from_secs(3600));
    call(&mut w, 503);
    call(&mut w, 101);
    assert_eq!(transitions(&rate_host, "closed", "open"), 0);
}

const RATE_CONFIG: &str = r#"{"defaults": {"consecutive_failures": 0, "failure_rate": 0.5, "minimum_calls": 4,
    "window": {"kind": "time", "seconds": 10}}}"#;

/// Every host call the request path makes, failing with every status the host can return.
#[test]
fn every_host_call_failing_with_every_status_never_traps_and_fails_open() {
    let calls = [
        "proxy_get_shared_data",
        "proxy_set_shared_data",
        "proxy_get_property",
        "proxy_get_header_map_value",
        "proxy_get_current_time_nanoseconds",
        "proxy_define_metric",
        "proxy_increment_metric",
        "proxy_record_metric",
        "proxy_log",
    ];
    let statuses = [
        status::NOT_FOUND,
        status::BAD_ARGUMENT,
        status::SERIALIZATION_FAILURE,
        status::PARSE_FAILURE,
        status::EMPTY,
        status::CAS_MISMATCH,
        status::INTERNAL_FAILURE,
        status::UNIMPLEMENTED,
    ];
    for call_name in calls {
        for st in statuses {
            let mut host = host();
            let mut w = worker(&mut host, CONFIG);
            host.inject_fault(call_name, st, 1000);
            // Closed: admitted whatever fails, and the stream completes.
            let (ctx, action) = upgrade(&mut w, BREAKER);
            assert_eq!(action, CONTINUE, "{call_name} -> {st}: refused");
            answer(&mut w, ctx, 101);
        }
    }
    // Open: failures the decision does not depend on (metrics, logging) still refuse; failing
    // to read the state admits.
    for (call_name, refuses) in [
        ("proxy_increment_metric", true),
        ("proxy_record_metric", true),
        ("proxy_log", true),
        ("proxy_get_shared_data", false),
        ("proxy_get_current_time_nanoseconds", false),
    ] {
        let mut host = host();
        let mut w = worker(&mut host, CONFIG);
        for _ in 0..3 {
            call(&mut w, 503);
        }
        host.inject_fault(call_name, status::INTERNAL_FAILURE, 1000);
        let (ctx, action) = upgrade(&mut w, BREAKER);
        assert_eq!(action == PAUSE, refuses, "{call_name}");
        w.end(ctx).unwrap();
    }
    // A refusal whose local reply fails is let through rather than left hanging.
    let mut host = host();
    let mut w = worker(&mut host, CONFIG);
    for _ in 0..3 {
        call(&mut w, 503);
    }
    host.inject_fault("proxy_send_local_response", status::INTERNAL_FAILURE, 1);
    let (_, action) = upgrade(&mut w, BREAKER);
    assert_eq!(action, CONTINUE);
}

#[test]
fn sustained_cas_contention_is_bounded_and_the_loss_is_counted() {
    let mut host = host();
    let mut w = worker(&mut host, CONFIG);
    call(&mut w, 101);
    host.inject_fault("proxy_set_shared_data", status::CAS_MISMATCH, 10);
    let (ctx, _) = upgrade(&mut w, BREAKER);
    w.response_headers(ctx, &[(":status", "503")], false).unwrap();
    let sets = w.last.host_calls.get("proxy_set_shared_data").copied().unwrap_or(0);
    assert_eq!(sets, 8, "bounded retries: {:?}", w.last.host_calls);
    w.end(ctx).unwrap();
    assert_eq!(metric(&host, "floodgate_updates_lost_total", &[("breaker", BREAKER)]), 1);
    assert_eq!(metric(&host, "floodgate_calls_total", &[("breaker", BREAKER), ("outcome", "failure")]), 1);
    // The contention ends: updates land again.
    host.clear_faults();
    call(&mut w, 503);
    call(&mut w, 503);
    call(&mut w, 503);
    assert_eq!(transitions(&host, "closed", "open"), 1);
}

#[test]
fn configuration_errors_fail_on_configure_naming_the_field() {
    for (config, field) in [
        (r#"{"defaults": {"failure_rate": 1.5}}"#, "defaults.failure_rate"),
        (r#"{"defaults": {"consecutive_failurez": 3}}"#, "consecutive_failurez"),
        (r#"{"breakers": {"x": {"half_open": {"permits": "three"}}}}"#, "breakers.x.half_open.permits"),
        (r#"{"shed": "some"}"#, "shed"),
        (r#"{"control": {"cluster": "c", "wait_s": 30, "timeout_ms": 1000}}"#, "control.timeout_ms"),
        ("not json", "invalid configuration"),
    ] {
        let mut host = host();
        let mut w = host.worker().unwrap();
        assert!(!w.configure("floodgate", config).unwrap(), "{config} accepted");
        let logs = host.logs();
        let line = logs.iter().find(|l| l.message.starts_with("invalid configuration")).expect("a log line");
        assert!(line.message.contains(field), "{config}: {}", line.message);
        assert_eq!(line.level, 4, "logged at error");
    }
}

#[test]
fn metrics_after_a_scripted_scenario_are_exact() {
    let mut host = host();
    let mut a = worker(&mut host, CONFIG);
    let mut b = worker(&mut host, CONFIG);
    call(&mut a, 101);
    call(&mut b, 101);
    call(&mut a, 503);
    call(&mut b, 503);
    call(&mut a, 503);
    refused(&mut a);
    refused(&mut b);
    // A plain request is not guarded under `shed: websocket`.
    let ctx = a.new_context().unwrap();
    a.set_context_property(ctx, &["xds", "cluster_name"], BREAKER.as_bytes());
    assert_eq!(a.request_headers(ctx, &[(":method", "GET"), (":path", "/")], true).unwrap(), CONTINUE);
    answer(&mut a, ctx, 500);
    host.advance(Duration::from_millis(10_001));
    call(&mut a, 101);
    call(&mut b, 101);
    // Successes reach Envoy's stats on each worker's tick.
    a.tick().unwrap();
    b.tick().unwrap();
    let b_ = ("breaker", BREAKER);
    assert_eq!(metric(&host, "floodgate_calls_total", &[b_, ("outcome", "success")]), 4);
    assert_eq!(metric(&host, "floodgate_calls_total", &[b_, ("outcome", "failure")]), 3);
    assert_eq!(metric(&host, "floodgate_calls_total", &[b_, ("outcome", "slow")]), 0);
    assert_eq!(metric(&host, "floodgate_rejected_total", &[b_, ("kind", "websocket")]), 2);
    assert_eq!(metric(&host, "floodgate_rejected_total", &[b_, ("kind", "http")]), 0);
    assert_eq!(transitions(&host, "closed", "open"), 1);
    assert_eq!(transitions(&host, "open", "half_open"), 1);
    assert_eq!(transitions(&host, "half_open", "closed"), 1);
    assert_eq!(transitions(&host, "half_open", "open"), 0);
    assert_eq!(metric(&host, "floodgate_state", &[b_]), 0);
    assert_eq!(metric(&host, "floodgate_updates_lost_total", &[b_]), 0);
}

#[test]
fn the_tcp_filter_closes_new_connections_while_open() {
    let mut host = host();
    let config = r#"{"breaker": "backend_tcp", "defaults": {"consecutive_failures": 2, "open": {"base_ms": 5000}}}"#;
    let mut w = host.worker().unwrap();
    assert!(w.configure("floodgate_tcp", config).unwrap(), "{:?}", host.logs());
    for _ in 0..2 {
        let ctx = w.new_context().unwrap();
        assert_eq!(w.new_connection(ctx).unwrap(), CONTINUE);
        // UpstreamConnectionFailure.
        w.set_context_property(ctx, &["response", "flags"], &0x20u64.to_le_bytes());
        w.downstream_close(ctx, 1).unwrap();
        w.end(ctx).unwrap();
    }
    let ctx = w.new_context().unwrap();
    assert_eq!(w.new_connection(ctx).unwrap(), PAUSE);
    assert!(w.closed_downstream(ctx));
    assert_eq!(metric(&host, "floodgate_rejected_total", &[("breaker", "backend_tcp"), ("kind", "tcp")]), 1);
}

// ---- the control-plane poller ----

const CONTROL: &str = r#"{"defaults": {"consecutive_failures": 3},
    "control": {"cluster": "floodgate_control", "token": "t0ken", "wait_s": 5, "timeout_ms": 7000,
                "retry_ms": 200, "stale_after_s": 30}}"#;

fn snapshot(version: u64, key: &str) -> String {
    format!(
        r#"{{"version": {version}, "generated_at": "2026-11-22T10:00:00Z", "breakers": [{{"key": "{key}",
            "state": "forced_open", "reason": "backpressure_critical", "since": "2026-11-22T09:58:00Z",
            "until": null, "event_id": "e{version}"}}]}}"#
    )
}

fn tick_all(workers: &mut [&mut Worker]) {
    for w in workers.iter_mut() {
        w.tick().unwrap();
    }
}

fn polls(host: &Host, result: &str) -> i64 {
    metric(host, "floodgate_control_polls_total", &[("result", result)])
}

#[test]
fn exactly_one_worker_polls_and_another_takes_over_when_it_stops() {
    let mut host = host();
    let mut a = worker(&mut host, CONTROL);
    let mut b = worker(&mut host, CONTROL);
    let mut c = worker(&mut host, CONTROL);
    assert_eq!(a.tick_period_ms(), 100);
    for _ in 0..5 {
        tick_all(&mut [&mut a, &mut b, &mut c]);
        host.advance(Duration::from_millis(100));
    }
    let calls: Vec<_> = [&a, &b, &c].iter().flat_map(|w| w.http_calls()).collect();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let poll = &calls[0];
    assert_eq!(poll.cluster, "floodgate_control");
    assert_eq!(poll.header(":path"), Some("/v1/snapshot"));
    assert_eq!(poll.header("authorization"), Some("Bearer t0ken"));
    assert_eq!(poll.header("x-floodgate-proxy"), Some("harness-node"));
    assert_eq!(poll.timeout_ms, 7000);
    let holder = if !a.http_calls().is_empty() {
        0
    } else if !b.http_calls().is_empty() {
        1
    } else {
        2
    };

    // The holder answers, then stops ticking (its thread is stuck): another takes the lease.
    let mut ws = [a, b, c];
    ws[holder].answer_http_call(poll.token, 200, &[], snapshot(1, "other").as_bytes()).unwrap();
    ws[holder].tick().unwrap();
    let second = ws[holder].http_calls();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].header(":path"), Some("/v1/snapshot?version=1&wait=5"));
    host.advance(Duration::from_millis(3_100));
    let others: Vec<usize> = (0..3).filter(|&i| i != holder).collect();
    // A lease is held once read back on the next tick (a missing key is created
    // unconditionally, so a first write proves nothing): two ticks.
    for _ in 0..2 {
        for &i in &others {
            ws[i].tick().unwrap();
        }
        host.advance(Duration::from_millis(100));
    }
    let taken: Vec<usize> = others.iter().copied().filter(|&i| !ws[i].http_calls().is_empty()).collect();
    assert_eq!(taken.len(), 1, "exactly one worker takes over");
}

/// The worker that holds the lease after a few ticks, and its first poll's token.
fn poller(host: &Host, ws: &mut [Worker]) -> (usize, u32) {
    for _ in 0..3 {
        for w in ws.iter_mut() {
            w.tick().unwrap();
        }
        host.advance(Duration::from_millis(100));
    }
    let i = ws.iter().position(|w| !w.http_calls().is_empty()).expect("a poll");
    (i, ws[i].http_calls()[0].token)
}

/// Lets the poller's backoff pass and returns its next poll's token.
fn next_poll(host: &Host, w: &mut Worker) -> u32 {
    for _ in 0..100 {
        if let Some(c) = w.http_calls().first() {
            return c.token;
        }
        host.advance(Duration::from_millis(100));
        w.tick().unwrap();
    }
    panic!("no new poll");
}

#[test]
fn a_snapshot_refuses_on_every_worker_and_bad_snapshots_are_ignored_and_counted() {
    let mut host = host();
    let mut ws = [worker(&mut host, CONTROL), worker(&mut host, CONTROL)];
    let (p, token) = poller(&host, &mut ws);
    ws[p].answer_http_call(token, 200, &[], snapshot(3, BREAKER).as_bytes()).unwrap();
    assert_eq!(polls(&host, "ok"), 1);
    // Every worker applies it at its next tick.
    for w in ws.iter_mut() {
        w.tick().unwrap();
        let r = refused(w);
        assert_eq!(r.header("x-floodgate"), Some("forced_open"));
        assert!(String::from_utf8_lossy(&r.body).contains(r#""reason":"backpressure_critical""#));
    }
    assert_eq!(host.metric("floodgate_control_version"), Some(3));
    assert_eq!(metric(&host, "floodgate_forced", &[("breaker", BREAKER)]), 1);

    let good = snapshot(4, "*");
    let mut oversized = snapshot(4, "*").into_bytes();
    oversized.truncate(oversized.len() - 1);
    oversized.extend(std::iter::repeat_n(b' ', 300 * 1024));
    oversized.push(b'}');
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("malformed", b"{not json".to_vec()),
        ("truncated", good.as_bytes()[..good.len() / 2].to_vec()),
        ("oversized", oversized),
        ("backwards", snapshot(2, "*").into_bytes()),
    ];
    let mut errors = 0;
    for (what, body) in bad {
        let token = next_poll(&host, &mut ws[p]);
        ws[p].answer_http_call(token, 200, &[], &body).unwrap();
        errors += 1;
        assert_eq!(polls(&host, "error"), errors, "{what} not counted");
        assert_eq!(host.metric("floodgate_control_version"), Some(3), "{what} applied");
        for w in ws.iter_mut() {
            w.tick().unwrap();
            refused(w);
        }
    }
    // Errors from the control plane itself: a 500, and no answer at all.
    let token = next_poll(&host, &mut ws[p]);
    ws[p].answer_http_call(token, 500, &[], b"oops").unwrap();
    let token = next_poll(&host, &mut ws[p]);
    ws[p].fail_http_call(token).unwrap();
    assert_eq!(polls(&host, "error"), errors + 2);
    // Still the last good snapshot.
    refused(&mut ws[0]);
    let token = next_poll(&host, &mut ws[p]);
    ws[p].answer_http_call(token, 304, &[], b"").unwrap();
    assert_eq!(polls(&host, "not_modified"), 1);
}

#[test]
fn an_unreachable_control_plane_lapses_overrides_after_stale_after_s() {
    let mut host = host();
    let mut ws = [worker(&mut host, CONTROL)];
    let (p, token) = poller(&host, &mut ws);
    ws[p].answer_http_call(token, 200, &[], snapshot(1, "*").as_bytes()).unwrap();
    ws[p].tick().unwrap();
    refused(&mut ws[p]);
    // From now on every poll fails; the view holds for stale_after_s (30 s), then lapses.
    let start = host.now_ms();
    while host.now_ms() - start < 29_000 {
        if let Some(c) = ws[p].http_calls().first() {
            let t = c.token;
            ws[p].fail_http_call(t).unwrap();
        }
        host.advance(Duration::from_millis(500));
        ws[p].tick().unwrap();
    }
    refused(&mut ws[p]);
    assert_eq!(host.metric("floodgate_control_stale"), Some(0));
    host.advance(Duration::from_millis(1_500));
    ws[p].tick().unwrap();
    call(&mut ws[p], 101);
    assert_eq!(host.metric("floodgate_control_stale"), Some(1));
    assert_eq!(metric(&host, "floodgate_forced", &[("breaker", "*")]), 0);
}

// ---- issue 11: outcomes, answer deadlines, bounded state, overrides, time, the poller ----

/// An upgrade whose stream gets `status` with the given `response.code_details` and flags.
fn answer_from(w: &mut Worker, ctx: u32, status: u16, details: &str, flags: u64) {
    w.set_context_property(ctx, &["response", "code_details"], details.as_bytes());
    w.set_context_property(ctx, &["response", "flags"], &flags.to_le_bytes());
    w.response_headers(ctx, &[(":status", &status.to_string())], false).unwrap();
    w.end(ctx).unwrap();
}

fn state(host: &Host) -> i64 {
    metric(host, "floodgate_state", &[("breaker", BREAKER)])
}

#[test]
fn replies_of_other_filters_and_clients_that_leave_decide_nothing_envoys_own_replies_are_failures() {
    let mut host = host();
    let mut a = worker(&mut host, CONFIG);
    // A rate limiter's 429 and RBAC's 403 after Floodgate, and clients that leave before the
    // upstream answered (flag DC): many more than the streak of 3, nothing trips.
    for i in 0..10 {
        let (ctx, action) = upgrade(&mut a, BREAKER);
        assert_eq!(action, CONTINUE);
        match i % 3 {
            0 => answer_from(&mut a, ctx, 429, "request_rate_limited", 0x800),
            1 => answer_from(&mut a, ctx, 403, "rbac_access_denied_matched_policy[none]", 0),
            _ => {
                a.set_context_property(ctx, &["response", "flags"], &0x4000u64.to_le_bytes());
                a.end(ctx).unwrap();
            }
        }
    }
    assert_eq!(transitions(&host, "closed", "open"), 0);
    assert_eq!(metric(&host, "floodgate_calls_total", &[("breaker", BREAKER), ("outcome", "failure")]), 0);
    // Envoy's own 503 (connection failure) and 504 (upstream timeout), whatever their status,
    // and an upstream reset before any answer: three failures, the breaker opens.
    let (c1, _) = upgrade(&mut a, BREAKER);
    answer_from(&mut a, c1, 503, "upstream_reset_before_response_started{connection_failure}", 0x20);
    let (c2, _) = upgrade(&mut a, BREAKER);
    answer_from(&mut a, c2, 504, "response_timeout", 0x4);
    let (c3, _) = upgrade(&mut a, BREAKER);
    a.set_context_property(c3, &["response", "flags"], &0x10u64.to_le_bytes());
    a.end(c3).unwrap();
    assert_eq!(transitions(&host, "closed", "open"), 1);
}

#[test]
fn a_client_leaving_a_half_open_probe_gives_its_slot_back_without_reopening() {
    let mut host = host();
    let mut a = worker(&mut host, CONFIG);
    for _ in 0..3 {
        call(&mut a, 503);
    }
    host.advance(Duration::from_millis(10_001));
    let (p1, _) = upgrade(&mut a, BREAKER);
    let (p2, _) = upgrade(&mut a, BREAKER);
    refused(&mut a); // both permits taken
    a.set_context_property(p1, &["response", "flags"], &0x4000u64.to_le_bytes());
    a.end(p1).unwrap();
    assert_eq!(transitions(&host, "half_open", "open"), 0, "a client that left is not a probe failure");
    // Its slot is free again: a new probe gets it; two successes close the breaker.
    let (p3, action) = upgrade(&mut a, BREAKER);
    assert_eq!(action, CONTINUE);
    answer(&mut a, p2, 101);
    answer(&mut a, p3, 101);
    assert_eq!(transitions(&host, "half_open", "closed"), 1);
}

#[test]
fn a_backend_that_never_answers_reopens_a_half_open_breaker_within_answer_timeout_ms() {
    let mut host = host();
    let config = r#"{"defaults": {"consecutive_failures": 3, "open": {"base_ms": 10000, "jitter": 0.0},
        "half_open": {"permits": 1, "successes": 1}, "answer_timeout_ms": 2000}}"#;
    let mut a = worker(&mut host, config);
    assert_eq!(a.tick_period_ms(), 100, "answer deadlines need the tick");
    // Closed: three calls that hang are three failures once their deadline passes.
    let hung: Vec<u32> = (0..3).map(|_| upgrade(&mut a, BREAKER).0).collect();
    host.advance(Duration::from_millis(1_999));
    a.tick().unwrap();
    assert_eq!(transitions(&host, "closed", "open"), 0);
    host.advance(Duration::from_millis(1));
    a.tick().unwrap();
    assert_eq!(transitions(&host, "closed", "open"), 1);
    // Their late ends decide nothing more.
    for ctx in hung {
        answer(&mut a, ctx, 101);
    }
    assert_eq!(metric(&host, "floodgate_calls_total", &[("breaker", BREAKER), ("outcome", "failure")]), 3);
    host.advance(Duration::from_millis(10_001));
    let (probe, action) = upgrade(&mut a, BREAKER);
    assert_eq!(action, CONTINUE);
    assert_eq!(state(&host), 1);
    host.advance(Duration::from_millis(2_000));
    a.tick().unwrap();
    assert_eq!(transitions(&host, "half_open", "open"), 1);
    let r = refused(&mut a);
    assert!(String::from_utf8_lossy(&r.body).contains("probe_failed"), "{}", String::from_utf8_lossy(&r.body));
    answer(&mut a, probe, 101);
    assert_eq!(state(&host), 2);
}

#[test]
fn another_worker_notices_a_probe_whose_worker_is_gone_past_answer_timeout_ms() {
    let mut host = host();
    let config = r#"{"defaults": {"consecutive_failures": 1, "open": {"base_ms": 1000, "jitter": 0.0},
        "half_open": {"permits": 1, "successes": 1}, "answer_timeout_ms": 2000}}"#;
    let mut a = worker(&mut host, config);
    let mut b = worker(&mut host, config);
    call(&mut a, 503);
    host.advance(Duration::from_millis(1_001));
    let (_probe, _) = upgrade(&mut a, BREAKER); // a never ticks again
    host.advance(Duration::from_millis(2_000));
    let r = refused(&mut b);
    assert!(String::from_utf8_lossy(&r.body).contains("probe_failed"));
}

#[test]
fn fifteen_hundred_client_chosen_keys_leave_stats_and_vm_memory_bounded() {
    let mut host = host();
    let config = r#"{"key": "header:x-room", "max_breakers": 16, "defaults": {"consecutive_failures": 2},
        "breakers": {"collab_ws": {}}}"#;
    let mut ws = [worker(&mut host, config), worker(&mut host, config)];
    let base: Vec<usize> = ws.iter_mut().map(|w| w.memory_bytes()).collect();
    let send = |w: &mut Worker, room: &str, status: u16| {
        let ctx = w.new_context().unwrap();
        let headers = [(":method", "GET"), (":path", "/ws"), ("upgrade", "websocket"), ("x-room", room)];
        let action = w.request_headers(ctx, &headers, false).unwrap();
        answer(w, ctx, status);
        action
    };
    for i in 0..1500 {
        let room = format!("junk-{i}-{}", "x".repeat(i % 200));
        assert_eq!(send(&mut ws[i % 2], &room, 101), CONTINUE);
    }
    let stats = host.metrics().len();
    // 16 tracked keys with their series (12 each plus transitions), and a few global ones.
    assert!(stats <= 8 + 17 * 21, "{stats} stats after 1500 keys");
    assert_eq!(host.metric("floodgate_untracked_total"), Some(1500 - 16));
    for (i, w) in ws.iter_mut().enumerate() {
        let grown = w.memory_bytes() - base[i];
        assert!(grown <= 256 * 1024, "worker {i} grew by {grown} bytes");
    }
    // The key named in `breakers` is tracked although the junk filled max_breakers.
    assert_eq!(send(&mut ws[0], BREAKER, 503), CONTINUE);
    assert_eq!(send(&mut ws[1], BREAKER, 503), CONTINUE);
    assert_eq!(send(&mut ws[0], BREAKER, 101), PAUSE, "collab_ws tripped: it is tracked");
    println!(
        "1500 client-chosen keys: {stats} stats, {} untracked",
        host.metric("floodgate_untracked_total").unwrap_or(0)
    );
}

/// With the default `max_breakers` (1,024) every junk key may be tracked: each then costs only
/// the series it uses (its state and its successes), not a dozen defined up front.
#[test]
fn fifteen_hundred_client_chosen_keys_under_the_default_bound_cost_two_stats_each() {
    let mut host = host();
    let config = r#"{"key": "header:x-room"}"#;
    let mut w = worker(&mut host, config);
    let before = host.metrics().len();
    for i in 0..1500 {
        let ctx = w.new_context().unwrap();
        let room = format!("junk-{i}");
        let headers = [(":method", "GET"), (":path", "/ws"), ("upgrade", "websocket"), ("x-room", room.as_str())];
        assert_eq!(w.request_headers(ctx, &headers, false).unwrap(), CONTINUE);
        answer(&mut w, ctx, 101);
    }
    let added = host.metrics().len() - before;
    assert_eq!(host.metric("floodgate_untracked_total"), Some(1500 - 1024));
    // 1,024 tracked keys: floodgate_state and floodgate_calls_total{outcome="success"} each, plus
    // the global untracked counter.
    assert!(added <= 2 * 1024 + 2, "{added} stats after 1500 keys");
    println!("1500 client-chosen keys, default max_breakers: {added} stats");
}

#[test]
fn a_forced_open_refuses_untracked_keys_too() {
    let mut host = host();
    let config = r#"{"key": "header:x-room", "max_breakers": 1, "defaults": {"mode": "forced_open"}}"#;
    let mut a = worker(&mut host, config);
    assert_eq!(metric(&host, "floodgate_forced", &[("breaker", "*")]), 1, "config forced_open is reported");
    for room in ["first", "second", "third"] {
        let ctx = a.new_context().unwrap();
        let headers = [(":method", "GET"), (":path", "/ws"), ("upgrade", "websocket"), ("x-room", room)];
        assert_eq!(a.request_headers(ctx, &headers, false).unwrap(), PAUSE, "{room}");
        a.end(ctx).unwrap();
    }
    assert_eq!(host.metric("floodgate_untracked_total"), Some(2));
}

#[test]
fn floodgate_forced_is_cleared_by_the_worker_that_polls_after_the_lease_moves() {
    let mut host = host();
    let mut ws = [worker(&mut host, CONTROL), worker(&mut host, CONTROL)];
    let (p, token) = poller(&host, &mut ws);
    ws[p].answer_http_call(token, 200, &[], snapshot(3, BREAKER).as_bytes()).unwrap();
    assert_eq!(metric(&host, "floodgate_forced", &[("breaker", BREAKER)]), 1);
    // The poller's worker stops; the other takes the lease and gets a snapshot without it.
    let other = 1 - p;
    let mut token = None;
    for _ in 0..40 {
        host.advance(Duration::from_millis(100));
        ws[other].tick().unwrap();
        if let Some(c) = ws[other].http_calls().first() {
            token = Some(c.token);
            break;
        }
    }
    let token = token.expect("the other worker polls");
    let empty = r#"{"version": 4, "generated_at": "2026-11-22T10:00:00Z", "breakers": []}"#;
    ws[other].answer_http_call(token, 200, &[], empty.as_bytes()).unwrap();
    assert_eq!(metric(&host, "floodgate_forced", &[("breaker", BREAKER)]), 0);
}

#[test]
fn workers_that_start_in_the_same_instant_elect_one_poller() {
    for _ in 0..20 {
        let mut host = host();
        let mut ws: Vec<Worker> = (0..4).map(|_| worker(&mut host, CONTROL)).collect();
        // All find no lease on their first tick, in the same millisecond: each writes its own.
        for w in ws.iter_mut() {
            w.tick().unwrap();
        }
        for _ in 0..5 {
            host.advance(Duration::from_millis(100));
            for w in ws.iter_mut() {
                w.tick().unwrap();
            }
        }
        let polling = ws.iter().filter(|w| !w.http_calls().is_empty()).count();
        assert_eq!(polling, 1);
    }
}

#[test]
fn a_clock_stepped_back_never_refuses_a_closed_breaker_with_a_ramp() {
    let mut host = host();
    let config = r#"{"defaults": {"consecutive_failures": 1, "open": {"base_ms": 1000, "jitter": 0.0},
        "half_open": {"permits": 1, "successes": 1}, "recovery_ramp_ms": 600000}}"#;
    let mut a = worker(&mut host, config);
    call(&mut a, 503);
    host.advance(Duration::from_millis(1_001));
    call(&mut a, 101); // closes; the 10-minute ramp starts now
    host.advance(Duration::from_millis(600_001));
    call(&mut a, 101);
    host.rewind(Duration::from_secs(3_600));
    for _ in 0..20 {
        call(&mut a, 101);
    }
}

#[test]
fn retry_after_spreads_over_whole_seconds_for_half_open_refusals() {
    let mut host = host();
    let config = r#"{"defaults": {"consecutive_failures": 1, "open": {"base_ms": 1000, "jitter": 0.2},
        "half_open": {"permits": 1, "successes": 1}}}"#;
    let mut a = worker(&mut host, config);
    call(&mut a, 503);
    host.advance(Duration::from_millis(2_000));
    let (_probe, _) = upgrade(&mut a, BREAKER);
    let seen: std::collections::BTreeSet<String> =
        (0..60).map(|_| refused(&mut a).header("retry-after").unwrap_or_default().to_string()).collect();
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["1", "2"]);
}

#[test]
fn tcp_health_checks_decide_nothing_and_only_reached_upstreams_count() {
    let mut host = host();
    let mut w = host.worker().unwrap();
    let config = r#"{"breaker": "backend_tcp", "defaults": {"consecutive_failures": 1,
        "open": {"base_ms": 1000, "jitter": 0.0}, "half_open": {"permits": 1, "successes": 1}}}"#;
    assert!(w.configure("floodgate_tcp", config).unwrap(), "{:?}", host.logs());
    let calls = |host: &Host, outcome: &str| {
        metric(host, "floodgate_calls_total", &[("breaker", "backend_tcp"), ("outcome", outcome)])
    };
    // Connect failure: the breaker opens.
    let ctx = w.new_context().unwrap();
    assert_eq!(w.new_connection(ctx).unwrap(), CONTINUE);
    w.set_context_property(ctx, &["response", "flags"], &0x20u64.to_le_bytes());
    w.downstream_close(ctx, 1).unwrap();
    w.end(ctx).unwrap();
    host.advance(Duration::from_millis(1_001));
    // Half-open: a health check connects and leaves before the upstream connection exists. It
    // decides nothing (no success closes the breaker) and gives its probe slot back.
    let hc = w.new_context().unwrap();
    assert_eq!(w.new_connection(hc).unwrap(), CONTINUE);
    w.downstream_close(hc, 2).unwrap();
    w.end(hc).unwrap();
    assert_eq!(calls(&host, "success"), 0);
    assert_eq!(metric(&host, "floodgate_state", &[("breaker", "backend_tcp")]), 1);
    // A connection whose upstream connection was made, closed without a byte: a success.
    let ok = w.new_context().unwrap();
    assert_eq!(w.new_connection(ok).unwrap(), CONTINUE, "the health check gave its slot back");
    w.set_context_property(ok, &["upstream", "local_address"], b"127.0.0.1:40000");
    w.downstream_close(ok, 2).unwrap();
    w.end(ok).unwrap();
    w.tick().unwrap(); // successes reach Envoy's stats on the tick
    assert_eq!(calls(&host, "success"), 1);
    assert_eq!(metric(&host, "floodgate_state", &[("breaker", "backend_tcp")]), 0);
}
