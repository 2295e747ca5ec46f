//! What a browser's `WebSocket` sees of a Floodgate refusal, in a real headless Chromium through
//! a real Envoy: with `reject.websocket: "close_frame"` a `CloseEvent` with code 1013 and the JSON
//! reason (its `retry_after_s` the breaker's), and with the default HTTP refusal only 1006 with
//! an empty reason, which is why the option exists. The backend sees no request either way.

use floodgate_tests::backend::{Backend, Mode};
use floodgate_tests::client::{upgrade, Upgrade};
use floodgate_tests::envoy::{self, Envoy, Ports};
use floodgate_tests::require_wasm;
use serde_json::{json, Value};

use super::Chromium;

struct Proxy {
    backend: Backend,
    envoy: Envoy,
}

/// Backend + Envoy (`envoy/http-websocket.yaml`) with a breaker that opens for a minute after
/// two failed upgrades, then trips it.
async fn open_breaker(websocket: &str) -> Proxy {
    require_wasm();
    let backend = Backend::start(0).await.unwrap();
    let ports = Ports::free(backend.addr.port()).unwrap();
    let plugin = json!({
        "defaults": {"consecutive_failures": 2, "open": {"base_ms": 60000, "jitter": 0.0}},
        "reject": {"websocket": websocket}
    });
    let config = envoy::render("http-websocket.yaml", ports, &[&plugin.to_string()]).unwrap();
    let envoy = Envoy::start(&config, ports, 2).await.unwrap();
    backend.control.set_mode(Mode::FailHandshakes(503));
    for _ in 0..2 {
        assert!(matches!(upgrade(envoy.listen, "/ws").await.unwrap(), Upgrade::Refused(_)));
    }
    backend.control.set_mode(Mode::Healthy);
    Proxy { backend, envoy }
}

/// Opens `ws://<envoy>/ws` from a page and returns what its `close` event carried, plus
/// whether `open` fired.
async fn browser_close_event(chromium: &Chromium, p: &Proxy) -> Value {
    let mut page = chromium.open("about:blank").await;
    let url = format!("ws://{}/ws", p.envoy.listen);
    page.eval(&format!(
        "window.__events = []; const ws = new WebSocket({url:?}); \
         ws.onopen = () => window.__events.push('open'); \
         ws.onerror = () => window.__events.push('error'); \
         ws.onclose = (e) => {{ window.__close = {{code: e.code, reason: e.reason, wasClean: e.wasClean, \
           events: window.__events}}; }}; true"
    ))
    .await;
    page.wait_for("window.__close ?? null", "the WebSocket's close event").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_reads_1013_and_the_retry_after_from_a_close_frame_refusal_and_only_1006_from_the_http_one() {
    let chromium = Chromium::start().await;

    let p = open_breaker("close_frame").await;
    let seen = p.backend.control.handshakes();
    let close = browser_close_event(&chromium, &p).await;
    assert_eq!(close["code"], 1013, "{close}\n{}", p.envoy.log());
    let reason: Value = serde_json::from_str(close["reason"].as_str().unwrap()).unwrap();
    assert_eq!(reason["reason"], "consecutive_failures", "{close}");
    let retry = reason["retry_after_s"].as_u64().unwrap();
    assert!((59..=60).contains(&retry), "retry_after_s {retry}: the breaker opened for 60 s");
    assert_eq!(close["events"], json!(["open"]), "the handshake completed, then the close frame came: {close}");
    assert_eq!(p.backend.control.handshakes(), seen, "the refused upgrade reached the backend");
    drop(p);

    // The default: the handshake fails with 503, and the page learns nothing but 1006.
    let p = open_breaker("http").await;
    let seen = p.backend.control.handshakes();
    let close = browser_close_event(&chromium, &p).await;
    assert_eq!(close["code"], 1006, "{close}");
    assert_eq!(close["reason"], "", "{close}");
    assert_eq!(close["events"], json!(["error"]), "{close}");
    assert_eq!(p.backend.control.handshakes(), seen, "the refused upgrade reached the backend");
}
