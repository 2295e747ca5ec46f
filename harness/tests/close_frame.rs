//! `reject.websocket: "close_frame"` in the harness: the 101 local reply and its close frame, the
//! HTTP refusal for HTTP/2 and for a missing or invalid key, and the fall back to the HTTP
//! refusal when the host will not send the 101.
// Test code throughout: clippy.toml lets it unwrap, expect and panic.
#![cfg(test)]

use floodgate_harness::{built_module, status, Host, LocalResponse, Worker, CONTINUE, PAUSE};

const BREAKER: &str = "collab_ws";
const CONFIG: &str = r#"{"defaults": {"consecutive_failures": 2, "open": {"base_ms": 12000, "jitter": 0.0}},
    "reject": {"websocket": "close_frame"}}"#;
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A worker whose breaker is open (two failed upgrades).
fn open_breaker(host: &mut Host) -> Worker {
    let mut w = host.worker().unwrap();
    assert!(w.configure("floodgate", CONFIG).unwrap(), "configuration refused: {:?}", host.logs());
    for _ in 0..2 {
        let (ctx, action) = upgrade(&mut w, "HTTP/1.1", Some(KEY));
        assert_eq!(action, CONTINUE);
        w.response_headers(ctx, &[(":status", "503")], false).unwrap();
        w.end(ctx).unwrap();
    }
    w
}

fn upgrade(w: &mut Worker, protocol: &str, key: Option<&str>) -> (u32, u32) {
    let ctx = w.new_context().unwrap();
    w.set_context_property(ctx, &["xds", "cluster_name"], BREAKER.as_bytes());
    w.set_context_property(ctx, &["request", "protocol"], protocol.as_bytes());
    let mut headers = vec![
        (":method", "GET"),
        (":path", "/ws"),
        (":authority", "collab"),
        ("upgrade", "websocket"),
        ("connection", "upgrade"),
        ("sec-websocket-version", "13"),
    ];
    if let Some(k) = key {
        headers.push(("sec-websocket-key", k));
    }
    let action = w.request_headers(ctx, &headers, false).unwrap();
    (ctx, action)
}

fn refused(w: &mut Worker, protocol: &str, key: Option<&str>) -> LocalResponse {
    let (ctx, action) = upgrade(w, protocol, key);
    assert_eq!(action, PAUSE, "expected a refusal");
    let reply = w.local_response(ctx).expect("a refusal sends a local reply");
    w.end(ctx).unwrap();
    reply
}

fn assert_http_refusal(r: &LocalResponse) {
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.body.starts_with(br#"{"error":"circuit_open","breaker":"collab_ws","state":"open""#), "{r:?}");
}

#[test]
fn an_http11_upgrade_gets_101_with_the_accept_and_a_1013_close_frame() {
    let mut host = Host::new(&built_module()).unwrap();
    let mut w = open_breaker(&mut host);
    let r = refused(&mut w, "HTTP/1.1", Some(KEY));
    assert_eq!(r.status, 101, "{r:?}");
    assert_eq!(r.header("sec-websocket-accept"), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    assert_eq!(r.header("upgrade"), Some("websocket"));
    assert_eq!(r.header("connection"), Some("upgrade"));
    assert_eq!(r.header("retry-after"), Some("12"));
    assert_eq!(r.header("x-floodgate"), Some("open"));
    assert_eq!(r.header("content-type"), None);
    let reason = br#"{"reason":"consecutive_failures","retry_after_s":12}"#;
    let mut frame = vec![0x88, 2 + reason.len() as u8, 0x03, 0xF5];
    frame.extend_from_slice(reason);
    assert_eq!(r.body, frame);
    let rejected = host.metric(&format!("breaker=.={BREAKER};.;kind=.=websocket;.;floodgate_rejected_total"));
    assert_eq!(rejected, Some(1));
}

#[test]
fn http2_a_missing_key_and_an_invalid_key_keep_the_http_refusal() {
    let mut host = Host::new(&built_module()).unwrap();
    let mut w = open_breaker(&mut host);
    assert_http_refusal(&refused(&mut w, "HTTP/2", Some(KEY)));
    assert_http_refusal(&refused(&mut w, "HTTP/1.1", None));
    assert_http_refusal(&refused(&mut w, "HTTP/1.1", Some("dGhlIHNhbXBsZSBub25jZQ")));
    assert_http_refusal(&refused(&mut w, "HTTP/1.0", Some(KEY)));
}

#[test]
fn when_the_host_will_not_send_the_101_the_http_refusal_goes_out_instead() {
    for st in [status::BAD_ARGUMENT, status::INTERNAL_FAILURE, status::UNIMPLEMENTED] {
        let mut host = Host::new(&built_module()).unwrap();
        let mut w = open_breaker(&mut host);
        host.inject_fault("proxy_send_local_response", st, 1);
        assert_http_refusal(&refused(&mut w, "HTTP/1.1", Some(KEY)));
    }
    // Removing the headers Envoy adds may fail too: the 101 still went out, nothing traps.
    let mut host = Host::new(&built_module()).unwrap();
    let mut w = open_breaker(&mut host);
    host.inject_fault("proxy_remove_header_map_value", status::INTERNAL_FAILURE, 10);
    let (ctx, action) = upgrade(&mut w, "HTTP/1.1", Some(KEY));
    assert_eq!(action, PAUSE);
    assert_eq!(w.local_response(ctx).unwrap().status, 101);
    w.response_headers(ctx, &[(":status", "101"), ("content-length", "56")], true).unwrap();
    w.end(ctx).unwrap();
}
