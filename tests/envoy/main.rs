//! Floodgate in the real Envoy (`--concurrency 2`) in front of a real WebSocket backend.
//! Each test starts its own backend and Envoy on free ports.
// Test code throughout: clippy.toml lets it unwrap, expect and panic.
#![cfg(test)]

use std::time::Duration;

use floodgate_tests::backend::{Backend, Mode};
use floodgate_tests::client::{self, Refused, Upgrade};
use floodgate_tests::envoy::{self, Envoy, Ports};
use floodgate_tests::{eventually, require_wasm, stats};

const BREAKER: &str = "collab_ws";

mod close_frame;
mod drain;

struct Proxy {
    backend: Backend,
    envoy: Envoy,
}

/// Backend + Envoy running `envoy/http-websocket.yaml` with `plugin_config`.
async fn proxy(plugin_config: &str) -> Proxy {
    require_wasm();
    let backend = Backend::start(0).await.unwrap();
    let ports = Ports::free(backend.addr.port()).unwrap();
    let config = envoy::render("http-websocket.yaml", ports, &[plugin_config]).unwrap();
    let envoy = Envoy::start(&config, ports, 2).await.unwrap();
    Proxy { backend, envoy }
}

/// As [`proxy`], with HTTP/2 WebSockets switched on the way the shipped config's comment says.
async fn proxy_h2(plugin_config: &str) -> Proxy {
    require_wasm();
    let backend = Backend::start(0).await.unwrap();
    let ports = Ports::free(backend.addr.port()).unwrap();
    let config = envoy::render("http-websocket.yaml", ports, &[plugin_config]).unwrap();
    let opted_in = config
        .replace("# http2_protocol_options: {allow_connect: true}", "http2_protocol_options: {allow_connect: true}");
    assert_ne!(opted_in, config, "envoy/http-websocket.yaml no longer carries the opt-in line");
    let envoy = Envoy::start(&opted_in, ports, 2).await.unwrap();
    Proxy { backend, envoy }
}

impl Proxy {
    async fn upgrade(&self) -> Upgrade {
        client::upgrade(self.envoy.listen, "/ws").await.unwrap()
    }

    async fn expect_open(&self) -> client::Session {
        match self.upgrade().await {
            Upgrade::Open(s) => *s,
            Upgrade::Refused(r) => panic!("expected 101, got {} {}\n{}", r.status, r.body, self.envoy.log()),
        }
    }

    async fn expect_refused(&self) -> Refused {
        match self.upgrade().await {
            Upgrade::Refused(r) => r,
            Upgrade::Open(_) => panic!("expected a refusal, got 101"),
        }
    }

    /// `n` upgrades the backend fails with 503 (they reach it and count as failures).
    async fn failed_upgrades(&self, n: usize) {
        self.backend.control.set_mode(Mode::FailHandshakes(503));
        for _ in 0..n {
            let r = self.expect_refused().await;
            assert_eq!(r.status, 503);
            assert!(!r.headers.contains_key("x-floodgate"), "refused by the filter too early: {}", r.body);
        }
    }

    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.envoy.prometheus().await.unwrap();
        stats::value_or_zero(&text, name, labels)
    }
}

/// Waits until Envoy's stats count `want` successes for `breaker`: successes reach the stats on
/// each worker's 100 ms tick, not with the answer (the request path makes no stats call for them).
async fn wait_successes(envoy: &Envoy, breaker: &str, want: f64) {
    let what = format!("{want} successes of {breaker} in the stats");
    eventually(Duration::from_secs(3), &what, || async move {
        let text = envoy.prometheus().await.ok()?;
        let got = stats::value_or_zero(&text, "floodgate_calls_total", &[("breaker", breaker), ("outcome", "success")]);
        (got == want).then_some(())
    })
    .await
}

fn cfg(json: serde_json::Value) -> String {
    json.to_string()
}

#[tokio::test]
async fn below_the_thresholds_nothing_is_refused() {
    let p = proxy(&cfg(serde_json::json!({"defaults": {"consecutive_failures": 3, "minimum_calls": 10}}))).await;
    // Two failures, then successes: the streak resets before it reaches 3.
    p.failed_upgrades(2).await;
    p.backend.control.set_mode(Mode::Healthy);
    for _ in 0..10 {
        p.expect_open().await;
    }
    p.failed_upgrades(2).await;
    p.backend.control.set_mode(Mode::Healthy);
    p.expect_open().await;
    assert_eq!(p.metric("floodgate_rejected_total", &[("breaker", BREAKER), ("kind", "websocket")]).await, 0.0);
    assert_eq!(p.metric("floodgate_state", &[("breaker", BREAKER)]).await, 0.0);
}

/// A quiet breaker (its count window full of successes) is stored as an empty shared-data value
/// (README, "Shared state"): Envoy takes the empty write (no update is lost), reads it back on
/// both workers as a closed breaker, and the breaker still trips at the third failure in a row.
#[tokio::test]
async fn a_quiet_breaker_stored_as_an_empty_value_admits_and_still_trips_at_the_third_failure() {
    let p = proxy(&cfg(serde_json::json!({
        "defaults": {"consecutive_failures": 3, "failure_rate": 1.0, "minimum_calls": 5, "window": {"kind": "count", "size": 5},
                     "open": {"base_ms": 60000, "jitter": 0.0}}
    })))
    .await;
    for _ in 0..12 {
        p.expect_open().await;
    }
    assert_eq!(p.metric("floodgate_updates_lost_total", &[("breaker", BREAKER)]).await, 0.0, "{}", p.envoy.log());
    p.failed_upgrades(2).await;
    p.backend.control.set_mode(Mode::Healthy);
    p.expect_open().await;
    p.failed_upgrades(3).await;
    let r = p.expect_refused().await;
    assert_eq!(r.headers.get("x-floodgate").map(String::as_str), Some("open"));
    assert_eq!(r.json()["reason"], "consecutive_failures");
    assert_eq!(p.metric("floodgate_updates_lost_total", &[("breaker", BREAKER)]).await, 0.0);
}

#[tokio::test]
async fn after_the_failures_the_next_upgrade_gets_the_design_refusal_and_never_reaches_the_backend() {
    let p = proxy(&cfg(serde_json::json!({
        "defaults": {"consecutive_failures": 3, "open": {"base_ms": 60000, "jitter": 0.0}}
    })))
    .await;
    p.failed_upgrades(3).await;
    p.backend.control.set_mode(Mode::Healthy);
    let seen = p.backend.control.handshakes();
    let r = p.expect_refused().await;
    assert_eq!(r.status, 503);
    assert_eq!(r.headers.get("x-floodgate").map(String::as_str), Some("open"));
    assert_eq!(r.headers.get("content-type").map(String::as_str), Some("application/json"));
    let retry: u64 = r.headers["retry-after"].parse().unwrap();
    assert!((59..=60).contains(&retry), "retry-after {retry}");
    let body = r.json();
    assert_eq!(body["error"], "circuit_open");
    assert_eq!(body["breaker"], BREAKER);
    assert_eq!(body["state"], "open");
    assert_eq!(body["reason"], "consecutive_failures");
    assert_eq!(body["retry_after_s"], retry);
    // Several more, on both workers: all refused, none reaches the backend.
    for _ in 0..6 {
        assert_eq!(p.expect_refused().await.status, 503);
    }
    assert_eq!(p.backend.control.handshakes(), seen, "a refused upgrade reached the backend");
}

#[tokio::test]
async fn a_session_opened_before_the_trip_keeps_echoing_while_the_breaker_is_open() {
    let p = proxy(&cfg(serde_json::json!({"defaults": {"consecutive_failures": 2, "open": {"base_ms": 60000}}}))).await;
    let mut session = p.expect_open().await;
    client::echo(&mut session, "before").await.unwrap();
    p.failed_upgrades(2).await;
    assert_eq!(p.expect_refused().await.headers.get("x-floodgate").map(String::as_str), Some("open"));
    for i in 0..20 {
        client::echo(&mut session, &format!("while open {i}")).await.unwrap();
    }
    assert_eq!(p.backend.control.sessions(), 1);
}

#[tokio::test]
async fn half_open_admits_exactly_the_permitted_probes_and_their_success_closes_the_breaker() {
    let p = proxy(&cfg(serde_json::json!({"defaults": {
        "consecutive_failures": 2,
        "open": {"base_ms": 800, "jitter": 0.0},
        "half_open": {"permits": 2, "successes": 2}
    }})))
    .await;
    p.failed_upgrades(2).await;
    assert_eq!(p.expect_refused().await.headers.get("x-floodgate").map(String::as_str), Some("open"));
    // Slow but healthy: the probes overlap with the other attempts.
    p.backend.control.set_mode(Mode::SlowHandshakes(Duration::from_millis(600)));
    tokio::time::sleep(Duration::from_millis(900)).await; // the configured open time
    let before = p.backend.control.handshakes();
    let attempts = (0..6).map(|_| client::upgrade(p.envoy.listen, "/ws"));
    let results: Vec<Upgrade> =
        futures_util::future::join_all(attempts).await.into_iter().map(Result::unwrap).collect();
    let opened = results.iter().filter(|r| matches!(r, Upgrade::Open(_))).count();
    let half_open_refusals = results
        .iter()
        .filter(|r| matches!(r, Upgrade::Refused(x) if x.headers.get("x-floodgate").map(String::as_str) == Some("half_open")))
        .count();
    assert_eq!(opened, 2, "exactly `permits` probes get through");
    assert_eq!(half_open_refusals, 4);
    assert_eq!(p.backend.control.handshakes() - before, 2, "the backend saw exactly the probes");
    // Two probe successes closed it.
    p.backend.control.set_mode(Mode::Healthy);
    p.expect_open().await;
    assert_eq!(p.metric("floodgate_state", &[("breaker", BREAKER)]).await, 0.0);
    for (from, to) in [("closed", "open"), ("open", "half_open"), ("half_open", "closed")] {
        let n = p.metric("floodgate_transitions_total", &[("breaker", BREAKER), ("from", from), ("to", to)]).await;
        assert_eq!(n, 1.0, "{from} -> {to}");
    }
}

#[tokio::test]
async fn a_probe_failure_reopens_the_breaker_for_longer() {
    let p = proxy(&cfg(serde_json::json!({"defaults": {
        "consecutive_failures": 2,
        "open": {"base_ms": 700, "multiplier": 4.0, "max_ms": 60000, "jitter": 0.0},
        "half_open": {"permits": 1, "successes": 1}
    }})))
    .await;
    p.failed_upgrades(2).await;
    let first = p.expect_refused().await;
    assert_eq!(first.headers["retry-after"], "1");
    tokio::time::sleep(Duration::from_millis(800)).await; // the configured open time
                                                          // The probe reaches the failing backend...
    let probe = p.expect_refused().await;
    assert!(!probe.headers.contains_key("x-floodgate"), "the probe should reach the backend");
    // ...and re-opens the breaker for base * multiplier = 2.8 s.
    let r = p.expect_refused().await;
    assert_eq!(r.headers.get("x-floodgate").map(String::as_str), Some("open"));
    assert_eq!(r.json()["reason"], "probe_failed");
    assert_eq!(r.headers["retry-after"], "3");
    assert_eq!(
        p.metric("floodgate_transitions_total", &[("breaker", BREAKER), ("from", "half_open"), ("to", "open")]).await,
        1.0
    );
}

#[tokio::test]
async fn dry_run_never_refuses_but_reports_the_state() {
    let p = proxy(&cfg(
        serde_json::json!({"defaults": {"mode": "dry_run", "consecutive_failures": 2, "open": {"base_ms": 60000}}}),
    ))
    .await;
    p.failed_upgrades(3).await;
    p.backend.control.set_mode(Mode::Healthy);
    for _ in 0..4 {
        p.expect_open().await;
    }
    assert_eq!(p.metric("floodgate_state", &[("breaker", BREAKER)]).await, 2.0);
    assert_eq!(p.metric("floodgate_rejected_total", &[("breaker", BREAKER), ("kind", "websocket")]).await, 0.0);
    assert!(p.metric("floodgate_would_reject_total", &[("breaker", BREAKER), ("kind", "websocket")]).await >= 4.0);
}

#[tokio::test]
async fn shed_all_refuses_plain_requests_too() {
    let p = proxy(&cfg(
        serde_json::json!({"shed": "all", "defaults": {"consecutive_failures": 2, "open": {"base_ms": 60000}}}),
    ))
    .await;
    let (status, _, _) = client::http_get(p.envoy.listen, "/").await.unwrap();
    assert_eq!(status, 200);
    p.failed_upgrades(2).await;
    let before = p.backend.control.plain_requests();
    let (status, headers, body) = client::http_get(p.envoy.listen, "/").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers.get("x-floodgate").map(String::as_str), Some("open"));
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "circuit_open");
    assert_eq!(p.backend.control.plain_requests(), before);
    assert_eq!(p.metric("floodgate_rejected_total", &[("breaker", BREAKER), ("kind", "http")]).await, 1.0);
}

#[tokio::test]
async fn shed_websocket_lets_plain_requests_through_while_open() {
    let p = proxy(&cfg(serde_json::json!({"defaults": {"consecutive_failures": 2, "open": {"base_ms": 60000}}}))).await;
    p.failed_upgrades(2).await;
    assert_eq!(p.expect_refused().await.headers.get("x-floodgate").map(String::as_str), Some("open"));
    let (status, _, _) = client::http_get(p.envoy.listen, "/").await.unwrap();
    assert_eq!(status, 200);
}

/// Opens a TCP connection through Envoy and sends a plain HTTP request: the answer, or `None`
/// when Envoy closed the connection without one.
async fn tcp_roundtrip(addr: std::net::SocketAddr) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    (!buf.is_empty()).then(|| String::from_utf8_lossy(&buf).into_owned())
}

#[tokio::test]
async fn tcp_filter_closes_new_connections_while_open_and_passes_them_when_closed() {
    require_wasm();
    // The upstream port has no listener at first: connections fail to connect.
    let upstream_port = envoy::free_port().unwrap();
    let ports = Ports::free(upstream_port).unwrap();
    let plugin = cfg(
        serde_json::json!({"breaker": "backend_tcp", "defaults": {"consecutive_failures": 2, "open": {"base_ms": 60000}}}),
    );
    let config = envoy::render("tcp.yaml", ports, &[&plugin]).unwrap();
    let e = Envoy::start(&config, ports, 2).await.unwrap();
    let metric = |name: &'static str, labels: Vec<(&'static str, &'static str)>| {
        let admin = e.admin;
        async move {
            let (_, _, text) = client::http_get(admin, "/stats/prometheus").await.unwrap();
            stats::value_or_zero(&text, name, &labels)
        }
    };
    for _ in 0..2 {
        assert_eq!(tcp_roundtrip(e.listen).await, None);
    }
    eventually(Duration::from_secs(5), "the breaker to open", || async {
        (metric("floodgate_state", vec![("breaker", "backend_tcp")]).await == 2.0).then_some(())
    })
    .await;
    // The backend is up now, but the breaker is open: new connections are closed unanswered.
    let backend = Backend::start(upstream_port).await.unwrap();
    assert_eq!(tcp_roundtrip(e.listen).await, None);
    assert_eq!(backend.control.plain_requests(), 0);
    assert_eq!(metric("floodgate_rejected_total", vec![("breaker", "backend_tcp"), ("kind", "tcp")]).await, 1.0);
    assert_eq!(metric("floodgate_calls_total", vec![("breaker", "backend_tcp"), ("outcome", "failure")]).await, 2.0);

    // A closed breaker passes connections through.
    let backend2 = Backend::start(0).await.unwrap();
    let ports2 = Ports::free(backend2.addr.port()).unwrap();
    let config2 = envoy::render("tcp.yaml", ports2, &[&plugin]).unwrap();
    let e2 = Envoy::start(&config2, ports2, 2).await.unwrap();
    let answer = tcp_roundtrip(e2.listen).await.expect("an answer through the TCP proxy");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(backend2.control.plain_requests(), 1);
}

#[tokio::test]
async fn invalid_configurations_are_refused_by_envoy_with_the_field_named() {
    require_wasm();
    let ports = Ports::free(8081).unwrap();
    let cases = [
        (r#"{"defaults": {"consecutive_failure": 3}}"#, "defaults.consecutive_failure"),
        (r#"{"defaults": {"failure_rate": 1.5}}"#, "defaults.failure_rate"),
        (r#"{"defaults": {"open": {"base_ms": "soon"}}}"#, "defaults.open.base_ms"),
        (r#"{"breakers": {"collab_ws": {"half_open": {"permits": 0}}}}"#, "breakers.collab_ws.half_open.permits"),
        // Wider than the shared streak counter: it could never trip.
        (r#"{"defaults": {"consecutive_failures": 70000}}"#, "defaults.consecutive_failures"),
        (r#"{"breakers": {"collab_ws": {"answer_timeout_ms": 5}}}"#, "breakers.collab_ws.answer_timeout_ms"),
    ];
    for (plugin, field) in cases {
        let config = envoy::render("http-websocket.yaml", ports, &[plugin]).unwrap();
        let (ok, log) = envoy::validate(&config).await.unwrap();
        assert!(!ok, "Envoy accepted {plugin}");
        let line = log
            .lines()
            .find(|l| l.contains("invalid configuration"))
            .unwrap_or_else(|| panic!("no config error in:\n{log}"));
        assert!(line.contains(field), "{line:?} does not name {field}");
    }
}

#[tokio::test]
async fn prometheus_stats_carry_the_breaker_label_and_match_what_happened() {
    let p = proxy(&cfg(serde_json::json!({"defaults": {"consecutive_failures": 3, "open": {"base_ms": 60000}}}))).await;
    for _ in 0..4 {
        p.expect_open().await;
    }
    p.failed_upgrades(3).await;
    for _ in 0..5 {
        p.expect_refused().await;
    }
    wait_successes(&p.envoy, BREAKER, 4.0).await;
    let text = p.envoy.prometheus().await.unwrap();
    let v = |name: &str, labels: &[(&str, &str)]| stats::value(&text, name, labels);
    assert_eq!(v("floodgate_state", &[("breaker", BREAKER)]), Some(2.0));
    assert_eq!(v("floodgate_rejected_total", &[("breaker", BREAKER), ("kind", "websocket")]), Some(5.0));
    assert_eq!(
        v("floodgate_transitions_total", &[("breaker", BREAKER), ("from", "closed"), ("to", "open")]),
        Some(1.0)
    );
    assert_eq!(v("floodgate_calls_total", &[("breaker", BREAKER), ("outcome", "success")]), Some(4.0));
    assert_eq!(v("floodgate_calls_total", &[("breaker", BREAKER), ("outcome", "failure")]), Some(3.0));
    assert!(text.contains("floodgate_state{breaker=\"collab_ws\"}"), "label form:\n{text}");
}

#[tokio::test]
async fn every_shipped_envoy_config_validates() {
    require_wasm();
    let dir = floodgate_demo::repo_root().join("envoy");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if !name.ends_with(".yaml") {
            continue;
        }
        let ports = Ports::free(8081).unwrap();
        let (ok, log) = envoy::validate(&envoy::render(&name, ports, &[]).unwrap()).await.unwrap();
        assert!(ok, "{name} does not validate:\n{log}");
        checked += 1;
    }
    assert!(checked >= 2, "found {checked} configs in {}", dir.display());
}

#[tokio::test]
async fn behind_the_upgrade_matcher_plain_requests_skip_the_filter() {
    require_wasm();
    let backend = Backend::start(0).await.unwrap();
    let ports = Ports::free(backend.addr.port()).unwrap();
    // `shed: all` would refuse plain requests too; the matcher keeps them out of the filter.
    let plugin =
        r#"{"shed": "all", "breakers": {"collab_ws": {"consecutive_failures": 3, "open": {"base_ms": 60000}}}}"#;
    let config = envoy::render("http-websocket-matcher.yaml", ports, &[plugin]).unwrap();
    let envoy = Envoy::start(&config, ports, 2).await.unwrap();
    let p = Proxy { backend, envoy };
    p.failed_upgrades(3).await;
    let r = p.expect_refused().await;
    assert_eq!(r.headers.get("x-floodgate").map(String::as_str), Some("open"), "{}", r.body);
    let (status, headers, _) = client::http_get(p.envoy.listen, "/plain").await.unwrap();
    assert_eq!(status, 200);
    assert!(!headers.contains_key("x-floodgate"));
    assert_eq!(p.backend.control.plain_requests(), 1, "the plain request reached the backend");
}

// ---- The Envoy release under test ----

#[tokio::test]
async fn the_envoy_under_test_is_the_binary_named_and_reports_the_release_asked_for() {
    let p = proxy(&cfg(serde_json::json!({}))).await;
    let (status, _, body) = client::http_get(p.envoy.admin, "/server_info").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    // "<commit>/1.40.0/Clean/RELEASE/BoringSSL"
    let version = info["version"].as_str().unwrap();
    let release = version.split('/').nth(1).unwrap();
    let binary = envoy::envoy_binary();
    let out = std::process::Command::new(&binary).arg("--version").output().unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains(version), "{} --version says {printed:?}, the running Envoy {version}", binary.display());
    match std::env::var("FLOODGATE_ENVOY_VERSION") {
        Ok(want) => assert!(
            release == want || release.starts_with(&format!("{want}.")),
            "asked for Envoy {want} ({}), running {release}",
            binary.display()
        ),
        Err(_) => println!("FLOODGATE_ENVOY_VERSION unset: not checking the release"),
    }
    println!("Envoy {release} from {}", binary.display());
}

// ---- Many WebSockets through a shipped config ----

/// The Envoy configs the project ships (and the templates its demo and bench run).
fn shipped_envoy_configs() -> Vec<std::path::PathBuf> {
    let root = floodgate_demo::repo_root();
    let mut files: Vec<_> = std::fs::read_dir(root.join("envoy"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.push(root.join("deploy/compose/envoy.yaml"));
    files.push(root.join("bench/envoy/base.yaml"));
    files.sort();
    files
}

#[test]
fn every_shipped_envoy_config_lets_each_upstream_cluster_hold_at_least_10000_websockets() {
    let mut checked = 0;
    for file in shipped_envoy_configs() {
        let text = std::fs::read_to_string(&file).unwrap();
        let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let clusters = doc["static_resources"]["clusters"].as_sequence().unwrap();
        for c in clusters {
            let name = c["name"].as_str().unwrap();
            if name == "floodgate_control" {
                continue; // one long-poll per Envoy
            }
            let thresholds = c["circuit_breakers"]["thresholds"]
                .as_sequence()
                .unwrap_or_else(|| panic!("{}: cluster {name} keeps Envoy's default 1,024", file.display()));
            let default = thresholds
                .iter()
                .find(|t| t.get("priority").is_none_or(|p| p.as_str() == Some("DEFAULT")))
                .unwrap_or_else(|| panic!("{}: {name} has no DEFAULT-priority thresholds", file.display()));
            for field in ["max_connections", "max_pending_requests", "max_requests"] {
                let v = default[field].as_u64().unwrap_or(0);
                assert!(v >= 10_000, "{}: {name}.{field} is {v}, below 10,000", file.display());
            }
            checked += 1;
        }
        let why = text.contains("1,024") || text.contains("Envoy's own limits never interfere");
        assert!(why, "{}: say why the thresholds are raised", file.display());
    }
    assert!(checked >= 6, "checked {checked} clusters");
}

// ---- HTTP/2 WebSockets (RFC 8441 extended CONNECT) ----

/// What Envoy answered an HTTP/2 extended CONNECT with `:protocol: websocket`.
struct H2Upgrade {
    status: u16,
    headers: std::collections::BTreeMap<String, String>,
    send: h2::SendStream<bytes::Bytes>,
    recv: h2::RecvStream,
}

/// Opens an HTTP/2 connection (prior knowledge, cleartext) and sends an extended CONNECT for
/// `path`, once Envoy has advertised SETTINGS_ENABLE_CONNECT_PROTOCOL.
///
/// Envoy forwards it to the HTTP/1.1 backend as an HTTP/1.1 upgrade (GET, `upgrade: websocket`)
/// and copies the other headers; it does not make up a `sec-websocket-key`, which RFC 8441
/// clients do not send and RFC 6455 servers require, so this client sends one.
async fn h2_upgrade(addr: std::net::SocketAddr, path: &str) -> H2Upgrade {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.unwrap();
    eventually(Duration::from_secs(5), "Envoy to enable extended CONNECT", || {
        let enabled = client.is_extended_connect_protocol_enabled();
        async move { enabled.then_some(()) }
    })
    .await;
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://{addr}{path}"))
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(())
        .unwrap();
    req.extensions_mut().insert(h2::ext::Protocol::from_static("websocket"));
    let (response, send) = client.send_request(req, false).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), response).await.unwrap().unwrap();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    H2Upgrade { status: response.status().as_u16(), headers, send, recv: response.into_body() }
}

impl H2Upgrade {
    /// The rest of the response body (a refusal's JSON).
    async fn body(mut self) -> String {
        let mut body = Vec::new();
        while let Some(chunk) = tokio::time::timeout(Duration::from_secs(5), self.recv.data()).await.unwrap() {
            let chunk = chunk.unwrap();
            let _ = self.recv.flow_control().release_capacity(chunk.len());
            body.extend_from_slice(&chunk);
        }
        String::from_utf8(body).unwrap()
    }

    /// Sends `text` as a masked WebSocket text frame on the stream and waits for the backend's
    /// echo (an unmasked text frame).
    async fn echo(&mut self, text: &str) {
        assert!(text.len() < 126);
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        let mut frame = vec![0x81, 0x80 | text.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.send.send_data(frame.into(), false).unwrap();
        let mut got = Vec::new();
        let want_len = 2 + text.len();
        while got.len() < want_len {
            let chunk = tokio::time::timeout(Duration::from_secs(5), self.recv.data())
                .await
                .expect("no echo within 5 s")
                .expect("stream ended before the echo")
                .unwrap();
            let _ = self.recv.flow_control().release_capacity(chunk.len());
            got.extend_from_slice(&chunk);
        }
        assert_eq!(&got[..2], &[0x81, text.len() as u8], "an unmasked text frame of {} bytes", text.len());
        assert_eq!(&got[2..want_len], text.as_bytes());
    }
}

fn assert_design_refusal(status: u16, headers: &std::collections::BTreeMap<String, String>, body: &str, state: &str) {
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers.get("x-floodgate").map(String::as_str), Some(state), "{headers:?}");
    assert_eq!(headers.get("content-type").map(String::as_str), Some("application/json"));
    let retry: u64 = headers["retry-after"].parse().unwrap();
    assert!(retry >= 1, "retry-after {retry}");
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["error"], "circuit_open");
    assert_eq!(json["breaker"], BREAKER);
    assert_eq!(json["state"], state);
    assert_eq!(json["retry_after_s"], retry);
}

#[tokio::test]
async fn an_http2_websocket_is_admitted_while_closed_and_its_data_reaches_the_backend() {
    let p = proxy_h2(&cfg(serde_json::json!({"defaults": {"consecutive_failures": 2}}))).await;
    let before = p.backend.control.accepted();
    let mut ws = h2_upgrade(p.envoy.listen, "/ws").await;
    assert_eq!(ws.status, 200, "an admitted extended CONNECT is answered 200 ({:?})", ws.headers);
    assert!(!ws.headers.contains_key("x-floodgate"));
    assert_eq!(p.backend.control.accepted() - before, 1, "the backend accepted one WebSocket");
    for i in 0..3 {
        ws.echo(&format!("over http/2 {i}")).await;
    }
    assert_eq!(p.backend.control.sessions(), 1);
    wait_successes(&p.envoy, BREAKER, 1.0).await;
}

#[tokio::test]
async fn an_http2_websocket_gets_the_design_refusal_while_the_breaker_is_open_and_never_reaches_the_backend() {
    let p =
        proxy_h2(&cfg(serde_json::json!({"defaults": {"consecutive_failures": 2, "open": {"base_ms": 60000}}}))).await;
    p.failed_upgrades(2).await;
    p.backend.control.set_mode(Mode::Healthy);
    let seen = p.backend.control.handshakes();
    let ws = h2_upgrade(p.envoy.listen, "/ws").await;
    let (status, headers) = (ws.status, ws.headers.clone());
    let body = ws.body().await;
    assert_design_refusal(status, &headers, &body, "open");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["reason"], "consecutive_failures");
    assert_eq!(p.backend.control.handshakes(), seen, "the refused upgrade reached the backend");
    assert_eq!(p.metric("floodgate_rejected_total", &[("breaker", BREAKER), ("kind", "websocket")]).await, 1.0);
}

#[tokio::test]
async fn an_http2_websocket_gets_the_design_refusal_while_forced_open() {
    let p = proxy_h2(&cfg(serde_json::json!({"defaults": {"mode": "forced_open"}}))).await;
    let ws = h2_upgrade(p.envoy.listen, "/ws").await;
    let (status, headers) = (ws.status, ws.headers.clone());
    let body = ws.body().await;
    assert_design_refusal(status, &headers, &body, "forced_open");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["reason"], "forced");
    assert_eq!(p.backend.control.handshakes(), 0, "the refused upgrade reached the backend");
}

// ---- issue 11: outcomes are the backend's, answer deadlines, bounded client-chosen keys ----

/// Sends an upgrade request on a raw connection and leaves after `wait` without an answer.
async fn leave_after(addr: std::net::SocketAddr, wait: Duration) {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = "GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
               sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    s.write_all(req.as_bytes()).await.unwrap();
    tokio::time::sleep(wait).await;
    drop(s);
}

#[tokio::test]
async fn clients_leaving_a_slow_handshake_do_not_trip_the_breaker() {
    let p = proxy(&cfg(serde_json::json!({"defaults": {"consecutive_failures": 2, "open": {"base_ms": 60000}}}))).await;
    p.backend.control.set_mode(Mode::SlowHandshakes(Duration::from_millis(1_500)));
    let leaving = (0..6).map(|_| leave_after(p.envoy.listen, Duration::from_millis(200)));
    futures_util::future::join_all(leaving).await;
    // Their streams have ended (Envoy logged them) well before the backend would answer.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(p.metric("floodgate_calls_total", &[("breaker", BREAKER), ("outcome", "failure")]).await, 0.0);
    assert_eq!(p.metric("floodgate_state", &[("breaker", BREAKER)]).await, 0.0);
    // The slow but healthy backend still gets new upgrades.
    let mut s = p.expect_open().await;
    client::echo(&mut s, "still admitted").await.unwrap();
}

#[tokio::test]
async fn a_client_leaving_a_half_open_probe_gives_the_slot_back_without_reopening() {
    let p = proxy(&cfg(serde_json::json!({"defaults": {
        "consecutive_failures": 2, "open": {"base_ms": 600, "jitter": 0.0},
        "half_open": {"permits": 1, "successes": 1}
    }})))
    .await;
    p.failed_upgrades(2).await;
    p.backend.control.set_mode(Mode::SlowHandshakes(Duration::from_millis(1_500)));
    tokio::time::sleep(Duration::from_millis(700)).await;
    leave_after(p.envoy.listen, Duration::from_millis(200)).await; // the probe's client leaves
    tokio::time::sleep(Duration::from_millis(200)).await;
    let reopened =
        p.metric("floodgate_transitions_total", &[("breaker", BREAKER), ("from", "half_open"), ("to", "open")]).await;
    assert_eq!(reopened, 0.0, "a client that left re-opened the breaker");
    // The slot is free: the next upgrade is the probe, and its success closes the breaker.
    p.backend.control.set_mode(Mode::Healthy);
    p.expect_open().await;
    assert_eq!(p.metric("floodgate_state", &[("breaker", BREAKER)]).await, 0.0);
}

#[tokio::test]
async fn a_backend_that_never_answers_reopens_a_half_open_breaker_within_answer_timeout_ms() {
    let p = proxy(&cfg(serde_json::json!({"defaults": {
        "consecutive_failures": 2, "open": {"base_ms": 500, "max_ms": 60000, "multiplier": 20.0, "jitter": 0.0},
        "half_open": {"permits": 1, "successes": 1}, "answer_timeout_ms": 1500
    }})))
    .await;
    p.failed_upgrades(2).await;
    // The backend accepts and never answers the handshake (the route has `timeout: 0s`).
    p.backend.control.set_mode(Mode::SlowHandshakes(Duration::from_secs(3_600)));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let addr = p.envoy.listen;
    let probe_started = std::time::Instant::now();
    let probe = tokio::spawn(async move { client::upgrade(addr, "/ws").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(p.metric("floodgate_state", &[("breaker", BREAKER)]).await, 1.0, "the probe holds half-open");
    eventually(Duration::from_secs(4), "the half-open breaker to re-open", || async {
        let n = p
            .metric("floodgate_transitions_total", &[("breaker", BREAKER), ("from", "half_open"), ("to", "open")])
            .await;
        (n == 1.0).then_some(())
    })
    .await;
    // answer_timeout_ms after the probe started, plus a tick (100 ms) and this test's polling.
    let waited = probe_started.elapsed();
    assert!(waited >= Duration::from_millis(1_400), "re-opened {waited:?} after the probe started: too early");
    assert!(waited < Duration::from_millis(2_300), "re-opened {waited:?} after the probe started");
    let r = p.expect_refused().await;
    assert_eq!(r.headers.get("x-floodgate").map(String::as_str), Some("open"));
    assert_eq!(r.json()["reason"], "probe_failed");
    probe.abort();
}

/// `envoy/http-websocket.yaml` with a local rate limit (1 request per hour) after Floodgate.
fn with_rate_limit_after_floodgate(config: &str) -> String {
    let router = "          - name: envoy.filters.http.router";
    assert!(config.contains(router));
    let limit = "          - name: envoy.filters.http.local_ratelimit
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: after_floodgate
              token_bucket: {max_tokens: 1, tokens_per_fill: 1, fill_interval: 3600s}
              filter_enabled: {runtime_key: rl_enabled, default_value: {numerator: 100, denominator: HUNDRED}}
              filter_enforced: {runtime_key: rl_enforced, default_value: {numerator: 100, denominator: HUNDRED}}
";
    config.replacen(router, &format!("{limit}{router}"), 1)
}

#[tokio::test]
async fn a_429_from_a_filter_after_floodgate_is_not_a_failure() {
    require_wasm();
    let backend = Backend::start(0).await.unwrap();
    let ports = Ports::free(backend.addr.port()).unwrap();
    // 4xx count as failures here, so a 429 taken for the backend's answer would trip it.
    let plugin =
        cfg(serde_json::json!({"defaults": {"consecutive_failures": 2, "failure": {"statuses": ["4xx", "5xx"]}}}));
    let config = with_rate_limit_after_floodgate(&envoy::render("http-websocket.yaml", ports, &[&plugin]).unwrap());
    let e = Envoy::start(&config, ports, 2).await.unwrap();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        match client::upgrade(e.listen, "/ws").await.unwrap() {
            Upgrade::Open(_) => statuses.push(101),
            Upgrade::Refused(r) => {
                assert!(!r.headers.contains_key("x-floodgate"), "Floodgate refused: {}", r.body);
                statuses.push(r.status);
            }
        }
    }
    assert_eq!(statuses, [101, 429, 429, 429, 429, 429], "the rate limiter answers after the first");
    wait_successes(&e, BREAKER, 1.0).await;
    let text = e.prometheus().await.unwrap();
    assert_eq!(
        stats::value_or_zero(&text, "floodgate_calls_total", &[("breaker", BREAKER), ("outcome", "failure")]),
        0.0
    );
    assert_eq!(
        stats::value_or_zero(&text, "floodgate_calls_total", &[("breaker", BREAKER), ("outcome", "success")]),
        1.0
    );
    assert_eq!(stats::value_or_zero(&text, "floodgate_state", &[("breaker", BREAKER)]), 0.0);
}

/// An RBAC filter after Floodgate that denies every request, so its 403 is another filter's reply.
fn with_rbac_deny_after_floodgate(config: &str) -> String {
    let router = "          - name: envoy.filters.http.router";
    assert!(config.contains(router));
    let rbac = "          - name: envoy.filters.http.rbac
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: DENY
                policies:
                  everyone:
                    permissions: [{any: true}]
                    principals: [{any: true}]
";
    config.replacen(router, &format!("{rbac}{router}"), 1)
}

#[tokio::test]
async fn a_403_from_rbac_after_floodgate_is_not_a_failure() {
    require_wasm();
    let backend = Backend::start(0).await.unwrap();
    let ports = Ports::free(backend.addr.port()).unwrap();
    // 4xx count as failures here, so RBAC's 403 taken for the backend's answer would trip it.
    let plugin =
        cfg(serde_json::json!({"defaults": {"consecutive_failures": 2, "failure": {"statuses": ["4xx", "5xx"]}}}));
    let config = with_rbac_deny_after_floodgate(&envoy::render("http-websocket.yaml", ports, &[&plugin]).unwrap());
    let e = Envoy::start(&config, ports, 2).await.unwrap();
    for _ in 0..6 {
        let Upgrade::Refused(r) = client::upgrade(e.listen, "/ws").await.unwrap() else { panic!("RBAC admitted") };
        assert_eq!(r.status, 403, "{}", r.body);
        assert!(!r.headers.contains_key("x-floodgate"), "Floodgate refused: {}", r.body);
    }
    assert_eq!(backend.control.handshakes(), 0);
    let text = e.prometheus().await.unwrap();
    assert_eq!(
        stats::value_or_zero(&text, "floodgate_calls_total", &[("breaker", BREAKER), ("outcome", "failure")]),
        0.0
    );
    assert_eq!(stats::value_or_zero(&text, "floodgate_state", &[("breaker", BREAKER)]), 0.0);
}

#[tokio::test]
async fn a_configured_forced_open_shows_in_floodgate_forced_and_refuses() {
    let p = proxy(&cfg(serde_json::json!({"defaults": {"mode": "forced_open"}}))).await;
    let Upgrade::Refused(r) = p.upgrade().await else { panic!("admitted while forced open") };
    assert_eq!(r.headers.get("x-floodgate").map(String::as_str), Some("forced_open"));
    let text = p.envoy.prometheus().await.unwrap();
    assert_eq!(stats::value_or_zero(&text, "floodgate_forced", &[("breaker", "*")]), 1.0, "{text}");
}

#[tokio::test]
async fn envoys_own_503_for_an_unreachable_backend_is_a_failure() {
    require_wasm();
    // Nothing listens on the backend port: Envoy answers 503 itself (connection failure).
    let ports = Ports::free(envoy::free_port().unwrap()).unwrap();
    let plugin = cfg(serde_json::json!({"defaults": {"consecutive_failures": 2, "open": {"base_ms": 60000}}}));
    let config = envoy::render("http-websocket.yaml", ports, &[&plugin]).unwrap();
    let e = Envoy::start(&config, ports, 2).await.unwrap();
    for _ in 0..2 {
        let Upgrade::Refused(r) = client::upgrade(e.listen, "/ws").await.unwrap() else { panic!("101 from nowhere") };
        assert_eq!(r.status, 503);
        assert!(!r.headers.contains_key("x-floodgate"));
    }
    let Upgrade::Refused(r) = client::upgrade(e.listen, "/ws").await.unwrap() else { panic!("admitted") };
    assert_eq!(r.headers.get("x-floodgate").map(String::as_str), Some("open"));
}

#[tokio::test]
async fn fifteen_hundred_client_chosen_keys_leave_stats_bounded() {
    require_wasm();
    let backend = Backend::start(0).await.unwrap();
    let ports = Ports::free(backend.addr.port()).unwrap();
    let plugin = cfg(serde_json::json!({"shed": "all", "key": "header:x-room", "max_breakers": 16,
        "defaults": {"consecutive_failures": 2, "open": {"base_ms": 60000}}, "breakers": {BREAKER: {}}}));
    let config = envoy::render("http-websocket.yaml", ports, &[&plugin]).unwrap();
    let e = Envoy::start(&config, ports, 2).await.unwrap();
    let count = |text: &str| text.lines().filter(|l| !l.starts_with('#') && l.contains("floodgate_")).count();
    let before = count(&e.prometheus().await.unwrap());
    let rss_kib = |pid: Option<u32>| -> u64 {
        let status = pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok()).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    let rss_before = rss_kib(e.pid());
    for i in 0..1500 {
        let room = format!("junk-{i}");
        let (status, _, _) = client::http_request(e.listen, "GET", "/", &[("x-room", &room)], "").await.unwrap();
        assert_eq!(status, 200);
    }
    let text = e.prometheus().await.unwrap();
    let after = count(&text);
    let rss_after = rss_kib(e.pid());
    let grown_kib = rss_after.saturating_sub(rss_before);
    // The Envoy process (stats, both worker VMs, shared data) grows by little: 1,500 keys with a
    // dozen stats each would be 18,000 stats.
    assert!(grown_kib < 32 * 1024, "Envoy's RSS grew by {grown_kib} KiB over 1500 keys");
    // 16 tracked keys, each with its dozen series, and the global ones.
    assert!(after <= 16 * 12 + 10, "{after} floodgate series after 1500 keys (before: {before})");
    assert_eq!(stats::value_or_zero(&text, "floodgate_untracked_total", &[]), 1500.0 - 16.0);
    assert_eq!(stats::value(&text, "floodgate_state", &[("breaker", BREAKER)]), None);
    // The key named in `breakers` is still tracked although junk filled max_breakers: its
    // series appear with its first request.
    let (status, _, _) = client::http_request(e.listen, "GET", "/", &[("x-room", BREAKER)], "").await.unwrap();
    assert_eq!(status, 200);
    wait_successes(&e, BREAKER, 1.0).await;
    println!("1500 client-chosen keys: {after} floodgate series (before {before}), Envoy RSS +{grown_kib} KiB");
}

#[tokio::test]
async fn tcp_connections_count_once_the_upstream_connection_exists() {
    require_wasm();
    let backend = Backend::start(0).await.unwrap();
    let ports = Ports::free(backend.addr.port()).unwrap();
    let plugin = cfg(serde_json::json!({"breaker": "backend_tcp", "defaults": {"consecutive_failures": 2}}));
    let config = envoy::render("tcp.yaml", ports, &[&plugin]).unwrap();
    let e = Envoy::start(&config, ports, 2).await.unwrap();
    // Connections that reach the upstream and close without a byte either way (the backend does
    // not speak first): Envoy made the upstream connection, so each is a success.
    for _ in 0..3 {
        let s = tokio::net::TcpStream::connect(e.listen).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(s);
    }
    let admin = e.admin;
    eventually(Duration::from_secs(5), "three successes", || async move {
        let (_, _, text) = client::http_get(admin, "/stats/prometheus").await.unwrap();
        let ok =
            stats::value_or_zero(&text, "floodgate_calls_total", &[("breaker", "backend_tcp"), ("outcome", "success")]);
        (ok == 3.0).then_some(())
    })
    .await;
}

/// Browsers over TLS would otherwise send WebSockets as extended CONNECT, which Envoy forwards to
/// an HTTP/1.1 backend without `sec-websocket-key` (envoyproxy/envoy#8547).
#[test]
fn shipped_configs_leave_http2_websockets_off_unless_the_user_opts_in() {
    let root = floodgate_demo::repo_root();
    for path in [
        "envoy/http-websocket.yaml",
        "envoy/http-websocket-matcher.yaml",
        "envoy/control.yaml",
        "deploy/compose/envoy.yaml",
    ] {
        let text = std::fs::read_to_string(root.join(path)).unwrap();
        let enabled = text
            .lines()
            .any(|l| l.trim_start().starts_with("http2_protocol_options:") && l.contains("allow_connect: true"));
        assert!(!enabled, "{path} enables extended CONNECT by default");
        assert!(text.contains("# http2_protocol_options: {allow_connect: true}"), "{path} lost the opt-in line");
    }
}

#[tokio::test]
async fn an_envoy_whose_listen_port_was_taken_meanwhile_starts_on_another() {
    require_wasm();
    let backend = Backend::start(0).await.unwrap();
    let ports = Ports::free(backend.addr.port()).unwrap();
    // Another process takes the listen port between its choice and Envoy's bind.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", ports.listen)).unwrap();
    let config = envoy::render("http-websocket.yaml", ports, &["{}"]).unwrap();
    let envoy = Envoy::start(&config, ports, 1).await.unwrap();
    assert_ne!(envoy.listen.port(), ports.listen);
    match client::upgrade(envoy.listen, "/ws").await.unwrap() {
        Upgrade::Open(mut s) => client::echo(&mut s, "moved").await.unwrap(),
        Upgrade::Refused(r) => panic!("refused: {} {}", r.status, r.body),
    }
    drop(squatter);
}
