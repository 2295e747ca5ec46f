//! Drains in the compiled module, with two workers of one proxy driven step by step: the drain's
//! shared bucket paces both workers together (never more than `per_second` closes in any
//! second), each worker closes its oldest streams to the drained key and no other, a stream that
//! ends by itself is never counted twice, server data on a chosen stream becomes a 1012 close
//! frame, and a drain that ends (or leaves the snapshot, or repeats, or arrives late) behaves.
// Test code throughout: clippy.toml lets it unwrap, expect and panic.
#![cfg(test)]

mod common;

use std::time::Duration;

use common::host;
use floodgate_core::time::format_rfc3339_ms;
use floodgate_harness::{Host, Worker, CONTINUE};

const CONTROL: &str = r#"{"control": {"cluster": "floodgate_control", "token": "t0ken", "wait_s": 5,
    "timeout_ms": 7000, "retry_ms": 200, "stale_after_s": 60}}"#;
/// Each worker ticks every 100 ms (the filter's tick), the two 50 ms apart.
const STEP_MS: u64 = 50;

fn worker(host: &mut Host) -> Worker {
    let mut w = host.worker().unwrap();
    w.set_property(&["xds", "node", "id"], b"harness-node");
    w.add_cluster("floodgate_control");
    assert!(w.configure("floodgate", CONTROL).unwrap(), "configuration refused: {:?}", host.logs());
    w
}

/// An upgrade to `cluster` that the backend accepts (101) and that stays open: its context.
fn open_session(w: &mut Worker, cluster: &str) -> u32 {
    let ctx = w.new_context().unwrap();
    w.set_context_property(ctx, &["xds", "cluster_name"], cluster.as_bytes());
    let h = [
        (":method", "GET"),
        (":path", "/ws"),
        (":authority", "c"),
        ("upgrade", "websocket"),
        ("connection", "upgrade"),
    ];
    assert_eq!(w.request_headers(ctx, &h, false).unwrap(), CONTINUE);
    w.response_headers(ctx, &[(":status", "101")], false).unwrap();
    ctx
}

struct Drain<'a> {
    key: &'a str,
    per_second: u32,
    since_ms: u64,
    until_ms: u64,
    event_id: &'a str,
}

fn snapshot(version: u64, drains: &[Drain]) -> String {
    let entries: Vec<String> = drains
        .iter()
        .map(|d| {
            format!(
                r#"{{"key": "{}", "state": "draining", "per_second": {}, "reason": "deploy", "since": "{}",
                    "until": "{}", "event_id": "{}"}}"#,
                d.key,
                d.per_second,
                format_rfc3339_ms(d.since_ms),
                format_rfc3339_ms(d.until_ms),
                d.event_id
            )
        })
        .collect();
    format!(r#"{{"version": {version}, "breakers": [{}]}}"#, entries.join(","))
}

/// Answers the poller's pending poll (ticking until one is dispatched) with `body`.
fn deliver(host: &Host, ws: &mut [Worker], body: &str) {
    for _ in 0..200 {
        for w in ws.iter_mut() {
            if let Some(call) = w.http_calls().first() {
                let token = call.token;
                w.answer_http_call(token, 200, &[], body.as_bytes()).unwrap();
                return;
            }
            w.tick().unwrap();
        }
        host.advance(Duration::from_millis(10));
    }
    panic!("no poll");
}

/// A stream the filter closed: when (host ms), on which worker, which context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Closed {
    at_ms: u64,
    worker: usize,
    ctx: u32,
}

/// Runs the workers for `ms`, ticking each every 100 ms (50 ms apart); every stream the filter
/// closes then ends, as Envoy ends a reset stream. Returns the closes, in order.
fn run(host: &Host, ws: &mut [Worker], open: &mut [Vec<u32>], ms: u64) -> Vec<Closed> {
    let mut closed = vec![];
    for step in 0..ms / STEP_MS {
        host.advance(Duration::from_millis(STEP_MS));
        let i = step as usize % ws.len();
        ws[i].tick().unwrap();
        let now = host.now_ms();
        let (w, live) = (&mut ws[i], &mut open[i]);
        for ctx in live.clone() {
            if w.closed_http(ctx) {
                closed.push(Closed { at_ms: now, worker: i, ctx });
                w.end(ctx).unwrap();
                live.retain(|&c| c != ctx);
            }
        }
    }
    closed
}

/// The most closes in any window of one second.
fn most_in_one_second(closed: &[Closed]) -> usize {
    closed
        .iter()
        .map(|c| closed.iter().filter(|d| d.at_ms >= c.at_ms && d.at_ms < c.at_ms + 1_000).count())
        .max()
        .unwrap_or(0)
}

fn drained(host: &Host, key: &str) -> i64 {
    host.metric(&format!("breaker=.={key};.;floodgate_drained_total")).unwrap_or(0)
}

#[test]
fn a_drain_closes_the_oldest_streams_of_its_key_on_both_workers_never_more_than_per_second_a_second() {
    let mut host = host();
    let mut ws = [worker(&mut host), worker(&mut host)];
    let mut open: Vec<Vec<u32>> = vec![vec![], vec![]];
    let mut others = vec![];
    for i in 0..200 {
        let w = i % 2;
        open[w].push(open_session(&mut ws[w], "collab_ws"));
        others.push((w, open_session(&mut ws[w], "chat_ws")));
        host.advance(Duration::from_millis(1));
    }
    let now = host.now_ms();
    let d = Drain { key: "collab_ws", per_second: 20, since_ms: now, until_ms: now + 30_000, event_id: "d1" };
    deliver(&host, &mut ws, &snapshot(1, &[d]));
    let order = open.clone();
    let closed = run(&host, &mut ws, &mut open, 14_000);
    assert_eq!(closed.len(), 200, "every session to the key closed");
    let span = closed.last().unwrap().at_ms - closed[0].at_ms;
    println!("200 closes over {span} ms, at most {} in one second", most_in_one_second(&closed));
    assert!(most_in_one_second(&closed) <= 20, "more than 20 in one second");
    assert!((9_000..=10_500).contains(&span), "20 a second: about 10 s, took {span} ms");
    for (w, oldest_first) in order.iter().enumerate() {
        let on_w: Vec<u32> = closed.iter().filter(|c| c.worker == w).map(|c| c.ctx).collect();
        assert!(on_w.len() >= 80, "both workers close their own streams: worker {w} closed {}", on_w.len());
        assert_eq!(&on_w, oldest_first, "worker {w} closes its oldest first");
    }
    for (w, ctx) in others {
        assert!(!ws[w].closed_http(ctx), "a session to another key was closed");
    }
    assert_eq!(drained(&host, "collab_ws"), 200);
    assert_eq!(drained(&host, "chat_ws"), 0);
}

#[test]
fn a_stream_that_ends_by_itself_while_chosen_is_neither_closed_nor_counted() {
    let mut host = host();
    let mut ws = [worker(&mut host)];
    let (a, b) = (open_session(&mut ws[0], "k"), open_session(&mut ws[0], "k"));
    let now = host.now_ms();
    deliver(
        &host,
        &mut ws,
        &snapshot(1, &[Drain { key: "k", per_second: 1, since_ms: now, until_ms: now + 60_000, event_id: "d1" }]),
    );
    // The bucket starts empty at the first tick; one token a second later chooses the oldest, `a`.
    ws[0].tick().unwrap();
    host.advance(Duration::from_millis(1_000));
    ws[0].tick().unwrap();
    // `a` ends by itself (its client left) before the tick that would close it.
    ws[0].end(a).unwrap();
    host.advance(Duration::from_millis(100));
    ws[0].tick().unwrap();
    assert!(!ws[0].closed_http(a));
    assert_eq!(drained(&host, "k"), 0, "its end was not the drain's doing");
    // It took the token: `b` is chosen a second later, and closed and counted once.
    let closed = run(&host, &mut ws, &mut [vec![b]], 3_000);
    assert_eq!(closed.iter().map(|c| c.ctx).collect::<Vec<_>>(), [b]);
    assert!(closed[0].at_ms - now >= 2_000, "b waited for its own token");
    assert_eq!(drained(&host, "k"), 1);
}

#[test]
fn server_data_on_a_chosen_stream_becomes_a_1012_close_frame_and_the_stream_is_closed_and_counted_once() {
    let mut host = host();
    let mut ws = [worker(&mut host)];
    let (a, b, c) = (open_session(&mut ws[0], "k"), open_session(&mut ws[0], "k"), open_session(&mut ws[0], "k"));
    let now = host.now_ms();
    deliver(
        &host,
        &mut ws,
        &snapshot(1, &[Drain { key: "k", per_second: 10, since_ms: now, until_ms: now + 60_000, event_id: "d1" }]),
    );
    ws[0].tick().unwrap(); // the bucket starts empty
    host.advance(Duration::from_millis(100));
    ws[0].tick().unwrap(); // one token: the oldest, `a`, is chosen
    let data = b"\x81\x05hello";
    ws[0].response_body(c, data, false).unwrap();
    assert_eq!(ws[0].response_body_sent(c), data, "a stream not chosen passes its data");
    ws[0].response_body(a, data, false).unwrap();
    let frame = ws[0].response_body_sent(a);
    assert_eq!(&frame[..4], &[0x88, frame[1], 0x03, 0xF4], "a close frame with code 1012: {frame:02x?}");
    assert_eq!(&frame[4..], br#"{"reason":"draining"}"#);
    ws[0].response_body(a, data, false).unwrap();
    assert!(ws[0].response_body_sent(a).is_empty(), "nothing follows the close frame");
    // `a`'s client answers the close frame and leaves before the tick: the drain's doing, once.
    ws[0].end(a).unwrap();
    assert_eq!(drained(&host, "k"), 1);
    host.advance(Duration::from_millis(100));
    ws[0].tick().unwrap(); // nothing to close; `b` is chosen
    assert!(!ws[0].closed_http(a) && !ws[0].closed_http(b));
    host.advance(Duration::from_millis(100));
    ws[0].tick().unwrap(); // `b` is closed without data (its server sent none); `c` is chosen
    assert!(ws[0].closed_http(b) && !ws[0].closed_http(c));
    ws[0].end(b).unwrap();
    assert_eq!(drained(&host, "k"), 2, "a is counted once, b once");
}

#[test]
fn a_drain_that_ends_stops_closing_and_one_that_leaves_the_snapshot_too() {
    let mut host = host();
    let mut ws = [worker(&mut host), worker(&mut host)];
    let mut open: Vec<Vec<u32>> = vec![(0..50).map(|_| open_session(&mut ws[0], "k")).collect(), vec![]];
    open[1] = (0..50).map(|_| open_session(&mut ws[1], "k")).collect();
    let now = host.now_ms();
    deliver(
        &host,
        &mut ws,
        &snapshot(1, &[Drain { key: "k", per_second: 10, since_ms: now, until_ms: now + 3_000, event_id: "d1" }]),
    );
    let ends = now + 3_000;
    let closed = run(&host, &mut ws, &mut open, 8_000);
    assert!((20..=30).contains(&closed.len()), "about 3 s at 10 a second: {}", closed.len());
    // The last ones chosen before the end are closed at the next tick, no later.
    assert!(closed.iter().all(|c| c.at_ms <= ends + 100), "closed after the end: {closed:?}");
    // A second drain stops when a snapshot without it arrives.
    let now = host.now_ms();
    deliver(
        &host,
        &mut ws,
        &snapshot(2, &[Drain { key: "k", per_second: 10, since_ms: now, until_ms: now + 60_000, event_id: "d2" }]),
    );
    let first = run(&host, &mut ws, &mut open, 2_000).len();
    assert!(first >= 15, "the second drain closes: {first}");
    deliver(&host, &mut ws, &snapshot(3, &[]));
    let after = run(&host, &mut ws, &mut open, 3_000);
    assert!(after.len() <= 2, "at most the streams already chosen close after it left: {after:?}");
    let left = open[0].len() + open[1].len();
    assert!(left >= 40, "the rest stay open: {left}");
    assert_eq!(drained(&host, "k") as usize, 100 - left);
}

#[test]
fn a_repeated_drain_keeps_its_pace_and_a_late_one_starts_without_a_burst() {
    let mut host = host();
    let mut ws = [worker(&mut host), worker(&mut host)];
    let mut open: Vec<Vec<u32>> = vec![(0..60).map(|_| open_session(&mut ws[0], "k")).collect(), vec![]];
    open[1] = (0..60).map(|_| open_session(&mut ws[1], "k")).collect();
    // It arrives late: it started a minute ago (and the proxy never saw it).
    let now = host.now_ms();
    let d = || Drain { key: "k", per_second: 10, since_ms: now - 60_000, until_ms: now + 60_000, event_id: "d1" };
    deliver(&host, &mut ws, &snapshot(1, &[d()]));
    let mut closed = vec![];
    for v in 2..10 {
        // The same drain again in each new snapshot (other entries changed).
        closed.extend(run(&host, &mut ws, &mut open, 500));
        deliver(&host, &mut ws, &snapshot(v, &[d()]));
    }
    closed.extend(run(&host, &mut ws, &mut open, 1_000));
    let first_second = closed.iter().filter(|c| c.at_ms < now + 1_000).count();
    println!("late drain: {first_second} in its first second, {} in total", closed.len());
    assert!(first_second <= 10, "no catch-up burst: {first_second}");
    assert!(most_in_one_second(&closed) <= 10);
    assert!((40..=50).contains(&closed.len()), "5 s at 10 a second: {}", closed.len());
    // A drain that arrives after its end closes nothing.
    let now = host.now_ms();
    let over = Drain { key: "k", per_second: 10, since_ms: now - 60_000, until_ms: now - 1_000, event_id: "d2" };
    deliver(&host, &mut ws, &snapshot(20, &[over]));
    assert!(run(&host, &mut ws, &mut open, 3_000).len() <= 2, "only streams chosen before it arrived");
}

#[test]
fn a_wildcard_drain_closes_streams_of_every_key_at_one_shared_pace() {
    let mut host = host();
    let mut ws = [worker(&mut host)];
    let mut open =
        vec![(0..40).map(|i| open_session(&mut ws[0], if i % 2 == 0 { "a" } else { "b" })).collect::<Vec<_>>()];
    let now = host.now_ms();
    deliver(
        &host,
        &mut ws,
        &snapshot(1, &[Drain { key: "*", per_second: 10, since_ms: now, until_ms: now + 60_000, event_id: "d1" }]),
    );
    let closed = run(&host, &mut ws, &mut open, 2_050);
    assert!((18..=20).contains(&closed.len()), "10 a second for both keys together: {}", closed.len());
    assert!(drained(&host, "a") >= 9 && drained(&host, "b") >= 9, "oldest first alternates between the keys");
}

#[test]
fn an_unreachable_control_plane_never_closes_connections_by_itself() {
    let mut host = host();
    let mut ws = [worker(&mut host)];
    let mut open = vec![(0..200).map(|_| open_session(&mut ws[0], "k")).collect::<Vec<_>>()];
    let now = host.now_ms();
    let d = Drain { key: "k", per_second: 1, since_ms: now, until_ms: now + 3_600_000, event_id: "d1" };
    deliver(&host, &mut ws, &snapshot(1, &[d]));
    // No poll is answered any more: the view goes stale after `stale_after_s` (60 s).
    let before = run(&host, &mut ws, &mut open, 61_000).len();
    assert!((55..=61).contains(&before), "one a second while the view is live: {before}");
    assert!(run(&host, &mut ws, &mut open, 30_000).is_empty(), "a stale view drains nothing");
}

/// Runs one worker for `ms` with server data on every open stream after each tick, closing what
/// the filter closed; returns how many it closed.
fn run_with_data(host: &Host, w: &mut Worker, open: &mut Vec<u32>, ms: u64) -> usize {
    let mut closed = 0;
    for _ in 0..ms / 100 {
        host.advance(Duration::from_millis(100));
        w.tick().unwrap();
        for ctx in open.clone() {
            if w.closed_http(ctx) {
                w.end(ctx).unwrap();
                open.retain(|&c| c != ctx);
                closed += 1;
            } else {
                w.response_body(ctx, b"\x81\x01x", false).unwrap();
            }
        }
    }
    closed
}

#[test]
fn host_calls_failing_during_a_drain_never_trap_never_count_what_was_not_closed_and_the_drain_resumes() {
    use floodgate_harness::status;
    let shared = host();
    for call in [
        "proxy_get_shared_data",
        "proxy_set_shared_data",
        "proxy_get_current_time_nanoseconds",
        "proxy_set_effective_context",
        "proxy_close_stream",
        "proxy_set_buffer_bytes",
        "proxy_get_buffer_bytes",
    ] {
        for st in [status::NOT_FOUND, status::BAD_ARGUMENT, status::CAS_MISMATCH, status::INTERNAL_FAILURE] {
            let mut host = shared.sibling();
            let mut w = worker(&mut host);
            let mut open: Vec<u32> = (0..60).map(|_| open_session(&mut w, "k")).collect();
            let now = host.now_ms();
            let d = Drain { key: "k", per_second: 10, since_ms: now, until_ms: now + 600_000, event_id: "d1" };
            deliver(&host, std::slice::from_mut(&mut w), &snapshot(1, &[d]));
            host.inject_fault(call, st, 1_000_000);
            let during = run_with_data(&host, &mut w, &mut open, 2_000);
            let counted = drained(&host, "k");
            assert_eq!(counted, during as i64, "{call} -> {st}: counted {counted}, closed {during}");
            if call.contains("shared_data") || call.contains("time") {
                assert_eq!(during, 0, "{call} -> {st}: closed without its bucket");
            }
            host.clear_faults();
            let after = run_with_data(&host, &mut w, &mut open, 2_000);
            assert!(after >= 10, "{call} -> {st}: the drain did not resume ({after} closed)");
            assert_eq!(drained(&host, "k"), (during + after) as i64, "{call} -> {st}");
        }
    }
}

/// The frames a client reads from a server's bytes (opcode, payload), and what is left over
/// (bytes that are not a whole frame).
fn frames(mut b: &[u8]) -> (Vec<(u8, Vec<u8>)>, Vec<u8>) {
    let mut out = vec![];
    loop {
        if b.len() < 2 {
            return (out, b.to_vec());
        }
        let (op, len7) = (b[0] & 0x0F, u64::from(b[1] & 0x7F));
        let (len, at) = match len7 {
            126 if b.len() >= 4 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().unwrap()), 10),
            126 | 127 => return (out, b.to_vec()),
            n => (n, 2),
        };
        let end = at + len as usize;
        if b.len() < end {
            return (out, b.to_vec());
        }
        out.push((op, b[at..end].to_vec()));
        b = &b[end..];
    }
}

#[test]
fn the_1012_close_frame_goes_in_at_a_frame_boundary_when_a_frame_spans_the_chunks() {
    let mut host = host();
    let mut ws = [worker(&mut host)];
    let a = open_session(&mut ws[0], "k");
    let now = host.now_ms();
    deliver(
        &host,
        &mut ws,
        &snapshot(1, &[Drain { key: "k", per_second: 10, since_ms: now, until_ms: now + 60_000, event_id: "d1" }]),
    );
    let mut client = vec![];
    // A text frame of 10 bytes whose first half arrives before the drain chooses the stream.
    ws[0].response_body(a, b"\x81\x0ahello", false).unwrap();
    client.extend(ws[0].response_body_sent(a));
    ws[0].tick().unwrap();
    host.advance(Duration::from_millis(100));
    ws[0].tick().unwrap(); // `a` is chosen
                           // The rest of the frame, then a whole one, in one chunk; then more.
    ws[0].response_body(a, b"world\x81\x03abc", false).unwrap();
    client.extend(ws[0].response_body_sent(a));
    ws[0].response_body(a, b"\x81\x03def", false).unwrap();
    client.extend(ws[0].response_body_sent(a));
    let (got, rest) = frames(&client);
    assert!(rest.is_empty(), "the client is left with a partial frame: {rest:02x?} after {got:02x?}");
    assert_eq!(got.first(), Some(&(1, b"helloworld".to_vec())), "the frame under way reaches the client whole");
    let close = got.iter().find(|(op, _)| *op == 8).expect("a close frame");
    assert_eq!(&close.1[..2], &[0x03, 0xF4], "code 1012: {got:02x?}");
    assert_eq!(got.last().map(|f| f.0), Some(8), "nothing follows the close frame: {got:02x?}");
}

#[test]
fn a_drain_reaches_streams_admitted_while_the_control_plane_forces_their_key_closed() {
    let mut host = host();
    let mut ws = [worker(&mut host)];
    let now = host.now_ms();
    deliver(&host, &mut ws, r#"{"version": 1, "breakers": [{"key": "k", "state": "forced_closed", "reason": "ops"}]}"#);
    ws[0].tick().unwrap();
    let mut open = vec![(0..5).map(|_| open_session(&mut ws[0], "k")).collect::<Vec<_>>()];
    let d = Drain { key: "k", per_second: 10, since_ms: now, until_ms: now + 60_000, event_id: "d1" };
    let drain = snapshot(2, &[d])
        .replace(r#""breakers": ["#, r#""breakers": [{"key": "k", "state": "forced_closed", "reason": "ops"},"#);
    deliver(&host, &mut ws, &drain);
    let closed = run(&host, &mut ws, &mut open, 3_000);
    assert_eq!(closed.len(), 5, "the drain closed {} of the 5 sessions to its key", closed.len());
    assert_eq!(drained(&host, "k"), 5);
}

#[test]
fn a_drain_never_puts_a_websocket_close_frame_into_another_upgraded_protocol() {
    let mut host = host();
    let mut w = host.worker().unwrap();
    w.set_property(&["xds", "node", "id"], b"harness-node");
    w.add_cluster("floodgate_control");
    let config = CONTROL.replacen('{', r#"{"shed": "all", "#, 1);
    assert!(w.configure("floodgate", &config).unwrap(), "configuration refused: {:?}", host.logs());
    let mut ws = [w];
    // A 101 to another protocol than WebSocket (`upgrade_configs` may allow any).
    let ctx = ws[0].new_context().unwrap();
    ws[0].set_context_property(ctx, &["xds", "cluster_name"], b"k");
    let h = [(":method", "GET"), (":path", "/"), (":authority", "c"), ("upgrade", "foo"), ("connection", "upgrade")];
    assert_eq!(ws[0].request_headers(ctx, &h, false).unwrap(), CONTINUE);
    ws[0].response_headers(ctx, &[(":status", "101")], false).unwrap();
    let now = host.now_ms();
    deliver(
        &host,
        &mut ws,
        &snapshot(1, &[Drain { key: "k", per_second: 10, since_ms: now, until_ms: now + 60_000, event_id: "d1" }]),
    );
    for _ in 0..30 {
        host.advance(Duration::from_millis(100));
        ws[0].tick().unwrap();
        ws[0].response_body(ctx, b"plain bytes", false).unwrap();
        assert_eq!(ws[0].response_body_sent(ctx), b"plain bytes", "another protocol's bytes were replaced");
    }
}

#[test]
fn a_wildcard_drain_reaches_client_chosen_untracked_keys_and_counts_them_under_the_wildcard() {
    let mut host = host();
    let mut w = host.worker().unwrap();
    w.set_property(&["xds", "node", "id"], b"harness-node");
    w.add_cluster("floodgate_control");
    let config = CONTROL.replacen('{', r#"{"key": "header:x-room", "max_breakers": 2, "#, 1);
    assert!(w.configure("floodgate", &config).unwrap(), "configuration refused: {:?}", host.logs());
    let mut ws = [w];
    let session = |w: &mut Worker, room: &str| {
        let ctx = w.new_context().unwrap();
        let h = [(":method", "GET"), (":path", "/ws"), ("upgrade", "websocket"), ("x-room", room)];
        assert_eq!(w.request_headers(ctx, &h, false).unwrap(), CONTINUE);
        w.response_headers(ctx, &[(":status", "101")], false).unwrap();
        ctx
    };
    let mut open = vec![(0..10).map(|i| session(&mut ws[0], &format!("room-{i}"))).collect::<Vec<_>>()];
    let long = session(&mut ws[0], &"x".repeat(300));
    let now = host.now_ms();
    deliver(
        &host,
        &mut ws,
        &snapshot(1, &[Drain { key: "*", per_second: 10, since_ms: now, until_ms: now + 60_000, event_id: "d1" }]),
    );
    let closed = run(&host, &mut ws, &mut open, 3_000);
    assert_eq!(closed.len(), 10, "every session with a key of bounded length");
    assert!(!ws[0].closed_http(long), "a key longer than a breaker key may be is not kept");
    assert_eq!((drained(&host, "room-0"), drained(&host, "room-1")), (1, 1), "the tracked keys");
    assert_eq!(drained(&host, "*"), 8, "the untracked ones, under one series");
    let series = host.metrics().iter().filter(|m| m.name.contains("floodgate_drained_total")).count();
    assert_eq!(series, 3);
}
