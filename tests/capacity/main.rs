//! Many WebSockets at once through a shipped Envoy config (`envoy/http-websocket.yaml`, its own
//! plugin configuration). A test binary of its own: its thousands of connections take ephemeral
//! ports, which would collide with the free ports other tests pick for their Envoys meanwhile.
// Test code throughout: clippy.toml lets it unwrap, expect and panic.
#![cfg(test)]

use std::time::Duration;

use floodgate_tests::backend::Backend;
use floodgate_tests::client::{self, Upgrade};
use floodgate_tests::envoy::{self, Envoy, Ports};
use floodgate_tests::{eventually, require_wasm};

/// Raises this process's open-file limit to its hard limit (Envoy, started from here, inherits it).
fn raise_open_file_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    lim.rlim_cur
}

async fn cluster_stat(e: &Envoy, name: &str) -> u64 {
    let (_, _, text) =
        client::http_get(e.admin, &format!("/stats?filter=^cluster\\.collab_ws\\.{name}$")).await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("cluster.collab_ws.{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no cluster.collab_ws.{name} in {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_websockets_open_together_through_the_shipped_config_and_all_echo() {
    use futures_util::StreamExt;
    const SESSIONS: usize = 2_000;
    let limit = raise_open_file_limit();
    // Each session holds a client and a backend socket here, and two in Envoy.
    assert!(limit >= 2 * SESSIONS as u64 + 500, "open-file hard limit {limit} is too low for {SESSIONS} sessions");
    require_wasm();
    let start = std::time::Instant::now();
    let backend = Backend::start(0).await.unwrap();
    let ports = Ports::free(backend.addr.port()).unwrap();
    // The file as shipped, plugin configuration included; only ports and the module path change.
    let e = Envoy::start(&envoy::render("http-websocket.yaml", ports, &[]).unwrap(), ports, 2).await.unwrap();
    let listen = e.listen;
    let opened: Vec<Upgrade> = futures_util::stream::iter(0..SESSIONS)
        .map(|_| async move { client::upgrade(listen, "/ws").await.unwrap() })
        .buffer_unordered(100)
        .collect()
        .await;
    let mut sessions = Vec::new();
    for u in opened {
        match u {
            Upgrade::Open(s) => sessions.push(*s),
            Upgrade::Refused(r) => {
                panic!("session {} refused: {} {:?} {}", sessions.len(), r.status, r.headers, r.body)
            }
        }
    }
    let opened_in = start.elapsed();
    assert_eq!(sessions.len(), SESSIONS);
    eventually(Duration::from_secs(10), "the backend to hold every session", || async {
        (backend.control.sessions() == SESSIONS as i64).then_some(())
    })
    .await;
    assert_eq!(cluster_stat(&e, "upstream_rq_active").await, SESSIONS as u64, "requests Envoy holds open");
    assert_eq!(cluster_stat(&e, "upstream_cx_active").await, SESSIONS as u64, "upstream connections");
    assert_eq!(cluster_stat(&e, "upstream_rq_pending_overflow").await, 0);
    assert_eq!(cluster_stat(&e, "upstream_cx_overflow").await, 0);
    // At the end, every one of them is still open and echoes.
    let echoed = futures_util::stream::iter(sessions.iter_mut().enumerate())
        .map(|(i, s)| async move { client::echo(s, &format!("still here {i}")).await.is_ok() })
        .buffer_unordered(200)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;
    assert_eq!(echoed, SESSIONS, "sessions that echoed at the end");
    assert_eq!(backend.control.sessions(), SESSIONS as i64);
    println!(
        "{SESSIONS} sessions opened in {:.1} s, all echoed; {:.1} s in all",
        opened_in.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
}
