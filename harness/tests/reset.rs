//! Fleet-wide resets in the compiled module: a `reset` entry in a snapshot closes the open
//! breaker once, through the recovery ramp; the same event id in later snapshots never resets
//! again; `*` resets every tracked breaker.
// Test code throughout: clippy.toml lets it unwrap, expect and panic.
#![cfg(test)]

mod common;

use std::time::Duration;

use common::host;
use floodgate_harness::{Host, LocalResponse, Worker, CONTINUE, PAUSE};

const CONTROL: &str = r#"{"defaults": {"consecutive_failures": 3, "open": {"base_ms": 60000, "jitter": 0.0},
    "recovery_ramp_ms": 10000},
    "control": {"cluster": "floodgate_control", "token": "t0ken", "wait_s": 5, "timeout_ms": 7000,
                "retry_ms": 200, "stale_after_s": 30}}"#;

fn worker(host: &mut Host) -> Worker {
    let mut w = host.worker().unwrap();
    w.set_property(&["xds", "node", "id"], b"harness-node");
    w.add_cluster("floodgate_control");
    assert!(w.configure("floodgate", CONTROL).unwrap(), "configuration refused: {:?}", host.logs());
    w
}

fn upgrade(w: &mut Worker, cluster: &str, status: u16) -> Result<(), LocalResponse> {
    let ctx = w.new_context().unwrap();
    w.set_context_property(ctx, &["xds", "cluster_name"], cluster.as_bytes());
    let h = [
        (":method", "GET"),
        (":path", "/ws"),
        (":authority", "c"),
        ("upgrade", "websocket"),
        ("connection", "upgrade"),
    ];
    let action = w.request_headers(ctx, &h, false).unwrap();
    if action == PAUSE {
        let r = w.local_response(ctx).unwrap();
        w.end(ctx).unwrap();
        return Err(r);
    }
    assert_eq!(action, CONTINUE);
    w.response_headers(ctx, &[(":status", &status.to_string())], false).unwrap();
    w.end(ctx).unwrap();
    Ok(())
}

fn trip(w: &mut Worker, cluster: &str) {
    for _ in 0..3 {
        upgrade(w, cluster, 503).unwrap();
    }
    assert_eq!(upgrade(w, cluster, 101).unwrap_err().header("x-floodgate"), Some("open"));
}

fn closed_by(host: &Host, breaker: &str) -> i64 {
    let name = format!("breaker=.={breaker};.;from=.=open;.;to=.=closed;.;floodgate_transitions_total");
    host.metric(&name).unwrap_or(0)
}

fn snapshot(version: u64, resets: &[(&str, &str)]) -> String {
    let entries: Vec<String> = resets
        .iter()
        .map(|(key, id)| {
            format!(
                r#"{{"key": "{key}", "state": "reset", "reason": "fixed", "since": "2026-11-22T10:00:00Z",
                    "until": "2026-11-22T10:05:00Z", "event_id": "{id}"}}"#
            )
        })
        .collect();
    format!(r#"{{"version": {version}, "generated_at": "2026-11-22T10:00:00Z", "breakers": [{}]}}"#, entries.join(","))
}

/// Ticks until one worker polls; answers its poll with `body`. Returns the poller's index.
fn deliver(host: &Host, ws: &mut [Worker], body: &str) -> usize {
    for _ in 0..100 {
        for (i, w) in ws.iter_mut().enumerate() {
            w.tick().unwrap();
            if let Some(call) = w.http_calls().first() {
                let token = call.token;
                w.answer_http_call(token, 200, &[], body.as_bytes()).unwrap();
                return i;
            }
        }
        host.advance(Duration::from_millis(100));
    }
    panic!("no poll");
}

#[test]
fn a_reset_closes_an_open_breaker_once_through_the_ramp_and_a_repeated_event_id_never_again() {
    let mut host = host();
    let mut ws = [worker(&mut host), worker(&mut host)];
    trip(&mut ws[0], "collab_ws");
    deliver(&host, &mut ws, &snapshot(1, &[("collab_ws", "r1")]));
    assert_eq!(closed_by(&host, "collab_ws"), 1);
    // Closed, at the start of its ramp: refused as recovery_ramp on either worker...
    for w in ws.iter_mut() {
        let r = upgrade(w, "collab_ws", 101).unwrap_err();
        assert_eq!(r.header("x-floodgate"), Some("closed"));
        assert!(String::from_utf8_lossy(&r.body).contains(r#""reason":"recovery_ramp""#));
    }
    // ...and admitted once the ramp is over (not after the 60 s open time).
    host.advance(Duration::from_millis(10_000));
    upgrade(&mut ws[1], "collab_ws", 101).unwrap();

    // It trips again. Later snapshots still carry r1 (resets stay for minutes): not applied again.
    trip(&mut ws[1], "collab_ws");
    let before = host.metric("floodgate_control_version");
    for v in 2..5 {
        deliver(&host, &mut ws, &snapshot(v, &[("collab_ws", "r1"), ("other", "r0")]));
    }
    assert_ne!(host.metric("floodgate_control_version"), before, "the snapshots were applied");
    assert_eq!(closed_by(&host, "collab_ws"), 1);
    for w in ws.iter_mut() {
        assert_eq!(upgrade(w, "collab_ws", 101).unwrap_err().header("x-floodgate"), Some("open"));
    }

    // A new reset of every key closes it (once), and each other open breaker.
    trip(&mut ws[0], "chat_ws");
    deliver(&host, &mut ws, &snapshot(5, &[("collab_ws", "r1"), ("*", "r2")]));
    deliver(&host, &mut ws, &snapshot(6, &[("collab_ws", "r1"), ("*", "r2")]));
    assert_eq!(closed_by(&host, "collab_ws"), 2);
    assert_eq!(closed_by(&host, "chat_ws"), 1);
    host.advance(Duration::from_millis(10_000));
    upgrade(&mut ws[0], "collab_ws", 101).unwrap();
    upgrade(&mut ws[1], "chat_ws", 101).unwrap();
}

#[test]
fn a_reset_of_a_closed_breaker_changes_nothing() {
    let mut host = host();
    let mut ws = [worker(&mut host)];
    upgrade(&mut ws[0], "collab_ws", 101).unwrap();
    deliver(&host, &mut ws, &snapshot(1, &[("collab_ws", "r1"), ("*", "r2")]));
    // No ramp starts: the next upgrade is admitted at once.
    upgrade(&mut ws[0], "collab_ws", 101).unwrap();
    assert_eq!(closed_by(&host, "collab_ws"), 0);
}
