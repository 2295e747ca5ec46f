//! A drain through floodgate-control in the real Envoy (`--concurrency 2`): 200 WebSockets to
//! one cluster are closed at 20 a second across both workers, the sessions whose server is
//! sending read a 1012 close frame first, sessions to another cluster stay, new upgrades are not
//! refused, and `floodgate_drained_total` counts the 200.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use floodgate_tests::backend::Backend;
use floodgate_tests::client::{self, Session};
use floodgate_tests::envoy::{self, Envoy, Ports};
use floodgate_tests::procs::ControlPlane;
use floodgate_tests::{eventually, require_wasm, stats};

const TOKEN: &str = "drain-test-token";

async fn metric(envoy: &Envoy, name: &str, labels: &[(&str, &str)]) -> f64 {
    stats::value_or_zero(&envoy.prometheus().await.unwrap(), name, labels)
}

async fn control_envoy(backend: &Backend, control: &ControlPlane) -> Envoy {
    let plugin = json!({"control": {"cluster": "floodgate_control", "token": TOKEN, "wait_s": 5,
                                    "timeout_ms": 7000, "retry_ms": 200, "stale_after_s": 30}})
    .to_string();
    let ports = Ports { control: control.addr.port(), ..Ports::free(backend.addr.port()).unwrap() };
    let config = envoy::render("control.yaml", ports, &[&plugin]).unwrap();
    Envoy::start(&config, ports, 2).await.unwrap()
}

/// floodgate-control, a backend, and an Envoy in front of it that has its first snapshot.
async fn polling_envoy() -> (ControlPlane, Backend, Envoy) {
    let control = ControlPlane::start(0, TOKEN, &[]).await.unwrap();
    let backend = Backend::start(0).await.unwrap();
    let proxy = control_envoy(&backend, &control).await;
    eventually(Duration::from_secs(15), "the first snapshot", || async {
        (metric(&proxy, "floodgate_control_version", &[]).await > 0.0).then_some(())
    })
    .await;
    (control, backend, proxy)
}

async fn open(envoy: &Envoy, path: &str) -> Session {
    match client::upgrade(envoy.listen, path).await.unwrap() {
        client::Upgrade::Open(s) => *s,
        client::Upgrade::Refused(r) => panic!("refused: {} {}\n{}", r.status, r.body, envoy.log()),
    }
}

/// How a session ended: when, and the close frame's code if one came first.
#[derive(Debug)]
struct End {
    at: Instant,
    close_code: Option<u16>,
}

/// Holds `s` until it ends. A chatty session sends a message every 20 ms, so its server (an echo
/// backend) sends all the time.
async fn hold(mut s: Session, chatty: bool) -> End {
    let mut every = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            msg = s.next() => match msg {
                Some(Ok(Message::Close(frame))) => {
                    let close_code = Some(frame.map_or(1005, |f| u16::from(f.code)));
                    return End { at: Instant::now(), close_code };
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return End { at: Instant::now(), close_code: None },
            },
            _ = every.tick(), if chatty => {
                let _ = s.send(Message::text("tick")).await;
            }
        }
    }
}

/// The filter's own record of its pace: `(host ms, streams chosen)` per tick that chose, from
/// its debug log, and the worker threads those lines came from.
fn chosen(log: &str, key: &str) -> (Vec<(u64, usize)>, std::collections::BTreeSet<String>) {
    let marker = format!("drain of {key}: chose ");
    let mut threads = std::collections::BTreeSet::new();
    let record = log
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find(&marker)? + marker.len()..];
            let (n, rest) = rest.split_once(" stream(s) at ")?;
            // Envoy's default log format: `[time][thread id][level][logger] ...`.
            if let Some(thread) = l.split(']').nth(1) {
                threads.insert(thread.trim_start_matches('[').to_string());
            }
            Some((rest.trim().parse().ok()?, n.parse().ok()?))
        })
        .collect();
    (record, threads)
}

/// The most streams chosen within any one second (by the proxy's clock).
fn most_chosen_in_one_second(chosen: &[(u64, usize)]) -> usize {
    chosen
        .iter()
        .map(|(a, _)| chosen.iter().filter(|(b, _)| *b >= *a && *b < a + 1000).map(|(_, n)| n).sum())
        .max()
        .unwrap_or(0)
}

/// The most ends within any one second.
fn most_in_one_second(ends: &[Instant]) -> usize {
    let window = Duration::from_secs(1);
    ends.iter().map(|a| ends.iter().filter(|b| **b >= *a && **b - *a < window).count()).max().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drain_closes_200_websockets_at_20_a_second_with_1012_for_those_whose_server_sends() {
    require_wasm();
    let (control, _backend, proxy) = polling_envoy().await;
    let mut drained = vec![];
    for i in 0..200 {
        drained.push(tokio::spawn(hold(open(&proxy, "/ws").await, i % 2 == 0)));
    }
    let mut others = vec![];
    for _ in 0..20 {
        others.push(open(&proxy, "/chat").await);
    }

    let started = Instant::now();
    let answer = control.json("POST", "/api/v1/breakers/collab_ws/drain", r#"{"per_second":20,"duration_s":60}"#);
    assert_eq!(answer.await.unwrap()["outcome"]["result"], "draining");
    let mut ends = vec![];
    for (i, task) in drained.into_iter().enumerate() {
        let end = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .unwrap_or_else(|_| panic!("session {i} still open 30 s into the drain\n{}", proxy.log()))
            .unwrap();
        ends.push((i, end));
    }
    let client_span = print_client_view(started, &ends);
    check_the_filters_pace(&proxy.log(), client_span);
    check_close_frames(&ends);

    let b = ("breaker", "collab_ws");
    eventually(Duration::from_secs(5), "floodgate_drained_total 200", || async {
        (metric(&proxy, "floodgate_drained_total", &[b]).await == 200.0).then_some(())
    })
    .await;
    assert_eq!(metric(&proxy, "floodgate_drained_total", &[("breaker", "chat_ws")]).await, 0.0);
    for s in others.iter_mut() {
        client::echo(s, "untouched").await.unwrap();
    }
    // The drain refuses no new upgrade.
    let mut fresh = open(&proxy, "/ws").await;
    client::echo(&mut fresh, "welcome").await.unwrap();
}

/// Prints when the clients saw their sessions end (all, then sending and idle apart); returns
/// the span from the first end to the last.
fn print_client_view(started: Instant, ends: &[(usize, End)]) -> Duration {
    let bins = |parity: Option<usize>| {
        let t: Vec<Instant> =
            ends.iter().filter(|(i, _)| parity.is_none_or(|p| i % 2 == p)).map(|(_, e)| e.at).collect();
        let mut per_second = [0usize; 16];
        for x in &t {
            per_second[((*x - started).as_secs() as usize).min(15)] += 1;
        }
        (most_in_one_second(&t), per_second)
    };
    for (kind, parity) in [("all", None), ("sending", Some(0)), ("idle", Some(1))] {
        let (most, per_second) = bins(parity);
        println!("drain: clients, {kind}: at most {most} ends in one second, per second since the POST {per_second:?}");
    }
    let first = ends.iter().map(|(_, e)| e.at).min().unwrap();
    let last = ends.iter().map(|(_, e)| e.at).max().unwrap();
    println!("drain: clients saw the first end {:?} after the POST, the last {:?}", first - started, last - started);
    last - first
}

/// The filter's own record: both workers chose, 200 in all, never more than 20 within one
/// second, over about 10 s. Clients see the ends over that plus Envoy's delayed close (about
/// 1 s) for the sessions it resets without a close frame.
fn check_the_filters_pace(log: &str, client_span: Duration) {
    let (record, threads) = chosen(log, "collab_ws");
    let total: usize = record.iter().map(|(_, n)| n).sum();
    let most = most_chosen_in_one_second(&record);
    let span = record.last().unwrap().0 - record[0].0;
    println!(
        "drain: the filter chose {total} streams in {} ticks on worker threads {threads:?}, at most {most} \
         within one second, over {span} ms; clients saw the ends over {client_span:?}",
        record.len()
    );
    assert_eq!(threads.len(), 2, "both workers drain their own streams: {threads:?}");
    assert_eq!(total, 200, "the filter's record");
    assert!(most <= 20, "{most} streams chosen within one second across both workers");
    assert!((9_000..=12_000).contains(&span), "filter span {span} ms");
    assert!(client_span >= Duration::from_millis(9_000) && client_span <= Duration::from_millis(13_500));
}

/// Every sending session read a 1012 close frame before its end; no idle one got a frame.
fn check_close_frames(ends: &[(usize, End)]) {
    let idle_framed = ends.iter().filter(|(i, e)| i % 2 == 1 && e.close_code.is_some()).count();
    let sending_1012 = ends.iter().filter(|(i, e)| i % 2 == 0 && e.close_code == Some(1012)).count();
    println!(
        "drain: {sending_1012} of 100 sending sessions read a 1012 close frame; {idle_framed} idle ones got a frame"
    );
    for (i, e) in ends.iter().filter(|(i, _)| i % 2 == 0) {
        assert_eq!(e.close_code, Some(1012), "sending session {i} ended without the 1012 close frame");
    }
    assert_eq!(idle_framed, 0, "a session whose server sent nothing is closed without a frame");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
/// Envoy turns an HTTP/2 extended CONNECT into an HTTP/1.1 upgrade for the backend and shows
/// filters the backend's 101: such a WebSocket is drained like any other (its stream is reset).
async fn an_http2_websocket_to_an_http1_backend_is_drained_too() {
    require_wasm();
    let control = ControlPlane::start(0, TOKEN, &[]).await.unwrap();
    let backend = Backend::start(0).await.unwrap();
    let plugin = json!({"control": {"cluster": "floodgate_control", "token": TOKEN, "wait_s": 5,
                                    "timeout_ms": 7000, "retry_ms": 200, "stale_after_s": 30}})
    .to_string();
    let ports = Ports { control: control.addr.port(), ..Ports::free(backend.addr.port()).unwrap() };
    let config = envoy::render("control.yaml", ports, &[&plugin])
        .unwrap()
        .replace("# http2_protocol_options: {allow_connect: true}", "http2_protocol_options: {allow_connect: true}");
    let proxy = Envoy::start(&config, ports, 2).await.unwrap();
    eventually(Duration::from_secs(15), "the first snapshot", || async {
        (metric(&proxy, "floodgate_control_version", &[]).await > 0.0).then_some(())
    })
    .await;
    let mut sessions = vec![];
    for i in 0..5 {
        let mut u = super::h2_upgrade(proxy.listen, "/ws").await;
        assert_eq!(u.status, 200);
        u.echo(&format!("hi {i}")).await;
        sessions.push(u);
    }
    let answer = control.json("POST", "/api/v1/breakers/collab_ws/drain", r#"{"per_second":10,"duration_s":60}"#);
    assert_eq!(answer.await.unwrap()["outcome"]["result"], "draining");
    let mut ended = 0;
    for mut s in sessions {
        match tokio::time::timeout(Duration::from_secs(5), s.recv.data()).await {
            Ok(None) | Ok(Some(Err(_))) => ended += 1,
            Ok(Some(Ok(chunk))) => println!("h2 drain: data {chunk:02x?}"),
            Err(_) => {}
        }
    }
    println!("h2 drain: {ended} of 5 HTTP/2 sessions ended");
    assert_eq!(ended, 5, "HTTP/2 sessions still open after the drain\n{}", proxy.log());
    eventually(Duration::from_secs(5), "floodgate_drained_total 5", || async {
        (metric(&proxy, "floodgate_drained_total", &[("breaker", "collab_ws")]).await == 5.0).then_some(())
    })
    .await;
}

/// What a session whose server sends large frames saw: messages that were not what it sent,
/// and the close frame's code if one came before the end.
async fn hold_large(mut s: Session, id: u8) -> (usize, Option<u16>) {
    let mut wrong = 0;
    for seq in 0u32.. {
        let mut msg = vec![id; 200_000];
        msg[..4].copy_from_slice(&seq.to_be_bytes());
        if s.send(Message::binary(msg.clone())).await.is_err() {
            return (wrong, None);
        }
        loop {
            match tokio::time::timeout(Duration::from_secs(10), s.next()).await {
                Ok(Some(Ok(Message::Binary(b)))) => {
                    if b[..] != msg[..] {
                        wrong += 1;
                    }
                    break;
                }
                Ok(Some(Ok(Message::Close(frame)))) => return (wrong, Some(frame.map_or(1005, |f| u16::from(f.code)))),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_))) | Ok(None) | Err(_) => return (wrong, None),
            }
        }
    }
    (wrong, None)
}

/// Envoy hands the filter a large frame in several chunks: the drain's 1012 close frame goes in
/// between two frames, so the client reads every message whole and then the 1012.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_whose_server_sends_frames_larger_than_a_chunk_read_whole_messages_then_the_1012() {
    require_wasm();
    let (control, _backend, proxy) = polling_envoy().await;
    let mut tasks = vec![];
    for i in 0..10u8 {
        tasks.push(tokio::spawn(hold_large(open(&proxy, "/ws").await, i + 1)));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = control.json("POST", "/api/v1/breakers/collab_ws/drain", r#"{"per_second":10,"duration_s":60}"#);
    assert_eq!(answer.await.unwrap()["outcome"]["result"], "draining");
    let mut seen = vec![];
    for t in tasks {
        seen.push(
            tokio::time::timeout(Duration::from_secs(20), t).await.expect("a session outlived the drain").unwrap(),
        );
    }
    println!("drain of large frames: (wrong messages, close code) per session: {seen:?}");
    assert!(seen.iter().all(|(wrong, _)| *wrong == 0), "a client read a message it did not send: {seen:?}");
    assert!(seen.iter().all(|(_, code)| *code == Some(1012)), "a session ended without the 1012: {seen:?}");
}
