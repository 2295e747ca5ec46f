//! `reject.websocket: "close_frame"` in the real Envoy, read byte by byte by a raw TCP client:
//! the 101 Floodgate answers itself, its `sec-websocket-accept`, the missing `content-length` and
//! `content-type`, the close frame (1013 and the JSON reason), and the end of the stream.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{assert_design_refusal, cfg, h2_upgrade, proxy, proxy_h2, Mode, BREAKER};

/// RFC 6455 section 1.3's example key and the accept value it gives.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Everything Envoy sent on one raw HTTP/1.1 upgrade: the head, what followed it, and whether
/// the connection ended (EOF) within the time allowed.
struct Raw {
    status: u16,
    headers: BTreeMap<String, String>,
    rest: Vec<u8>,
    closed: bool,
}

async fn raw_upgrade(addr: std::net::SocketAddr, key: Option<&str>) -> Raw {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let key_line = key.map(|k| format!("sec-websocket-key: {k}\r\n")).unwrap_or_default();
    let req = format!(
        "GET /ws HTTP/1.1\r\nhost: {addr}\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
         sec-websocket-version: 13\r\n{key_line}\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut closed = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match tokio::time::timeout(deadline - Instant::now(), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    let end = got.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response head") + 4;
    let head = String::from_utf8(got[..end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Raw { status, headers, rest: got[end..].to_vec(), closed }
}

fn close_frame_config(extra: serde_json::Value) -> String {
    let mut c = serde_json::json!({
        "defaults": {"consecutive_failures": 2, "open": {"base_ms": 60000, "jitter": 0.0}},
        "reject": {"websocket": "close_frame"}
    });
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        c.extend(extra.clone());
    }
    cfg(c)
}

#[tokio::test]
async fn close_frame_answers_101_with_the_accept_then_a_1013_close_frame_carrying_the_retry_after() {
    let p = proxy(&close_frame_config(serde_json::json!({}))).await;
    p.failed_upgrades(2).await;
    p.backend.control.set_mode(Mode::Healthy);
    let seen = p.backend.control.handshakes();

    let r = raw_upgrade(p.envoy.listen, Some(KEY)).await;
    assert_eq!(r.status, 101, "{:?}\n{}", r.headers, p.envoy.log());
    assert_eq!(r.headers.get("sec-websocket-accept").map(String::as_str), Some(ACCEPT), "{:?}", r.headers);
    assert_eq!(r.headers.get("upgrade").map(|v| v.to_ascii_lowercase()).as_deref(), Some("websocket"));
    assert_eq!(r.headers.get("connection").map(|v| v.to_ascii_lowercase()).as_deref(), Some("upgrade"));
    assert!(!r.headers.contains_key("content-length"), "a 101 carries no content-length: {:?}", r.headers);
    assert!(!r.headers.contains_key("content-type"), "{:?}", r.headers);
    assert!(!r.headers.contains_key("transfer-encoding"), "{:?}", r.headers);
    assert_eq!(r.headers.get("x-floodgate").map(String::as_str), Some("open"));
    let retry: u64 = r.headers["retry-after"].parse().unwrap();
    assert!((59..=60).contains(&retry), "retry-after {retry}");

    // One unmasked close frame, FIN set, and nothing after it.
    assert!(r.rest.len() >= 4, "no close frame after the 101: {:?}", r.rest);
    assert_eq!(r.rest[0], 0x88, "FIN + opcode close");
    let len = usize::from(r.rest[1]);
    assert!(len <= 125, "a control frame's payload is at most 125 bytes (mask bit clear)");
    assert_eq!(r.rest.len(), 2 + len, "exactly one frame: {:?}", r.rest);
    assert_eq!(u16::from_be_bytes([r.rest[2], r.rest[3]]), 1013, "Try Again Later");
    let reason: serde_json::Value = serde_json::from_slice(&r.rest[4..]).unwrap();
    assert_eq!(reason, serde_json::json!({"reason": "consecutive_failures", "retry_after_s": retry}));
    assert!(r.closed, "the stream ends after the close frame");

    assert_eq!(p.backend.control.handshakes(), seen, "the refused upgrade reached the backend");
    assert_eq!(p.metric("floodgate_rejected_total", &[("breaker", BREAKER), ("kind", "websocket")]).await, 1.0);
}

#[tokio::test]
async fn close_frame_keeps_the_http_refusal_without_a_valid_key_for_http2_and_for_plain_requests() {
    let p = proxy_h2(&close_frame_config(serde_json::json!({"shed": "all"}))).await;
    p.failed_upgrades(2).await;
    p.backend.control.set_mode(Mode::Healthy);
    let seen = (p.backend.control.handshakes(), p.backend.control.plain_requests());

    for key in [None, Some("not-a-key"), Some("dGhlIHNhbXBsZSBub25jZQ=")] {
        let r = raw_upgrade(p.envoy.listen, key).await;
        let body = String::from_utf8_lossy(&r.rest).to_string();
        assert_design_refusal(r.status, &r.headers, &body, "open");
    }
    let ws = h2_upgrade(p.envoy.listen, "/ws").await;
    let (status, headers) = (ws.status, ws.headers.clone());
    assert_design_refusal(status, &headers, &ws.body().await, "open");
    let (status, headers, _) = floodgate_tests::client::http_get(p.envoy.listen, "/plain").await.unwrap();
    assert_eq!(status, 503);
    assert_eq!(headers.get("x-floodgate").map(String::as_str), Some("open"));

    assert_eq!((p.backend.control.handshakes(), p.backend.control.plain_requests()), seen);
}
