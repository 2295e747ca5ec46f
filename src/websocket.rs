//! `reject.websocket: "close_frame"`: a refusal a browser can read. For an HTTP/1.1 WebSocket
//! upgrade with a valid `sec-websocket-key`, Floodgate completes the handshake itself (101 with
//! the right `sec-websocket-accept`) and sends, as the local reply's body, a close frame with code
//! 1013 (Try Again Later) and the reason `{"reason":"...","retry_after_s":N}`. The stream then
//! ends; the backend never sees the request.
//!
//! Envoy's local reply adds `content-length` and `content-type` to a reply with a body; the
//! filter removes both when the reply passes its response-headers callback, so the HTTP/1 codec
//! writes the 101 without them and the frame bytes unframed after it.

use floodgate_core::handshake;

use crate::guard::Refused;
use crate::host::{self, HeaderMap, HostError};

/// Why the close-frame refusal was not sent: the caller sends the HTTP refusal instead.
#[derive(Debug, PartialEq, Eq)]
pub enum Fallback {
    /// Not an HTTP/1.1 request (HTTP/2 and HTTP/3 WebSockets have no 101).
    NotHttp11,
    /// No `sec-websocket-key`, or not base64 of 16 bytes.
    BadKey,
    Host(HostError),
}

/// Sends the 101 + close frame local reply. On `Err` nothing was sent.
pub fn refuse(refusal: &Refused, extra_headers: &[(String, String)]) -> Result<(), Fallback> {
    let protocol = host::property(&["request", "protocol"]).map_err(Fallback::Host)?;
    if protocol.as_deref() != Some(b"HTTP/1.1") {
        return Err(Fallback::NotHttp11);
    }
    let key = host::header(HeaderMap::RequestHeaders, "sec-websocket-key").map_err(Fallback::Host)?;
    let accept = key.as_deref().and_then(handshake::accept).ok_or(Fallback::BadKey)?;
    let retry = refusal.retry_after_s();
    let retry_header = retry.to_string();
    let mut headers: Vec<(&str, &str)> = vec![
        ("upgrade", "websocket"),
        ("connection", "upgrade"),
        ("sec-websocket-accept", accept.as_str()),
        ("retry-after", retry_header.as_str()),
        ("x-floodgate", refusal.state.name()),
    ];
    headers.extend(extra_headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let reason = handshake::close_reason(&refusal.reason, retry);
    let frame = handshake::close_frame(handshake::TRY_AGAIN_LATER, &reason);
    host::send_local_response(101, &headers, &frame, "floodgate_circuit_open_close_frame").map_err(Fallback::Host)
}

/// Called with the local reply's response headers: removes what Envoy adds to a reply with a
/// body and a 101 must not carry. Failures are logged (the client then sees a 101 that still
/// carries a `content-length`, which browsers accept).
pub fn strip_local_reply_headers() {
    for name in ["content-length", "content-type"] {
        if let Err(e) = host::remove_header(HeaderMap::ResponseHeaders, name) {
            log::warn!("close_frame refusal: could not remove {name}: {e:?}");
        }
    }
}
