//! The HTTP filter (root_id `floodgate`): refuses new upgrades (or, with `shed: all`, every new
//! request) while the breaker does not admit, and feeds upstream answers back to it. It never
//! touches bodies, so an upgraded stream flows untouched.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::config::{Config, KeySource, Shed, WebSocketReject};
use crate::guard::{self, Admitted, Refused, Verdict};
use crate::host::{self, HeaderMap};
use crate::metrics::RejectKind;
use crate::websocket;

pub struct HttpFilter {
    config: Rc<Config>,
    admitted: Option<Admitted>,
    /// This stream's answer is Floodgate's own 101 + close frame (`reject.websocket`).
    close_frame_sent: bool,
}

impl HttpFilter {
    pub fn new(config: Rc<Config>) -> Self {
        HttpFilter { config, admitted: None, close_frame_sent: false }
    }
}

fn request_header(name: &str) -> Option<Vec<u8>> {
    host::header(HeaderMap::RequestHeaders, name).ok().flatten()
}

/// A WebSocket upgrade: HTTP/1.1 `upgrade: websocket`, or HTTP/2 extended CONNECT with
/// `:protocol: websocket` (Envoy usually presents the latter to filters as the former).
pub fn is_websocket_upgrade(upgrade: Option<&[u8]>, protocol: Option<&[u8]>) -> bool {
    let is_ws = |v: &[u8]| v.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"websocket"));
    upgrade.is_some_and(is_ws) || protocol.is_some_and(is_ws)
}

fn breaker_key(source: &KeySource) -> Option<String> {
    let bytes = match source {
        KeySource::Cluster => host::property(&["xds", "cluster_name"]),
        KeySource::Route => host::property(&["xds", "route_name"]),
        KeySource::Header(name) => host::header(HeaderMap::RequestHeaders, name),
    };
    match bytes {
        Ok(Some(b)) if !b.is_empty() => String::from_utf8(b).ok(),
        _ => None,
    }
}

/// DESIGN's refusal body.
pub fn refusal_body(breaker: &str, refusal: &Refused) -> String {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        error: &'a str,
        breaker: &'a str,
        state: &'a str,
        reason: &'a str,
        retry_after_s: u64,
    }
    let body = Body {
        error: "circuit_open",
        breaker,
        state: refusal.state.name(),
        reason: &refusal.reason,
        retry_after_s: refusal.retry_after_s(),
    };
    // Serializing plain strings and numbers cannot fail; an empty body would still be a refusal.
    serde_json::to_string(&body).unwrap_or_default()
}

impl HttpFilter {
    fn refuse(&mut self, breaker: &str, refusal: &Refused, upgrade: bool) -> Action {
        if upgrade && self.config.reject.websocket == WebSocketReject::CloseFrame {
            match websocket::refuse(refusal, &self.config.reject.headers) {
                Ok(()) => {
                    self.close_frame_sent = true;
                    return Action::Pause;
                }
                Err(why) => log::debug!("close_frame refusal not possible ({why:?}): HTTP refusal"),
            }
        }
        let retry = refusal.retry_after_s().to_string();
        let mut headers: Vec<(&str, &str)> = vec![
            ("retry-after", retry.as_str()),
            ("x-floodgate", refusal.state.name()),
            ("content-type", "application/json"),
        ];
        headers.extend(self.config.reject.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let body = refusal_body(breaker, refusal);
        match host::send_local_response(self.config.reject.status, &headers, body.as_bytes(), "floodgate_circuit_open")
        {
            Ok(()) => Action::Pause,
            Err(e) => {
                // Could not answer: let the request through rather than leave it hanging.
                log::warn!("local reply failed: {e:?}");
                Action::Continue
            }
        }
    }
}

impl Context for HttpFilter {}

impl HttpContext for HttpFilter {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let upgrade =
            is_websocket_upgrade(request_header("upgrade").as_deref(), request_header(":protocol").as_deref());
        if self.config.shed == Shed::WebSocket && !upgrade {
            return Action::Continue;
        }
        let Some(breaker) = breaker_key(&self.config.key) else {
            return Action::Continue;
        };
        let kind = if upgrade { RejectKind::WebSocket } else { RejectKind::Http };
        match guard::check(&self.config, &breaker, kind) {
            Verdict::Pass => Action::Continue,
            Verdict::Admit(a) => {
                self.admitted = Some(a);
                Action::Continue
            }
            Verdict::Refuse(refusal) => self.refuse(&breaker, &refusal, upgrade),
        }
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if self.close_frame_sent {
            websocket::strip_local_reply_headers();
            return Action::Continue;
        }
        if let Some(a) = self.admitted.take() {
            let status = host::header(HeaderMap::ResponseHeaders, ":status")
                .ok()
                .flatten()
                .and_then(|s| std::str::from_utf8(&s).ok().and_then(|s| s.parse::<u16>().ok()));
            match status {
                Some(status) => {
                    let failure = a.policy.failure.is_failure(status);
                    guard::finish(a, failure);
                }
                None => guard::abandon(a),
            }
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        // No upstream answer: reset, connect failure or timeout (or the client went away).
        if let Some(a) = self.admitted.take() {
            if a.policy.failure.resets {
                guard::finish(a, true);
            } else {
                guard::abandon(a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use floodgate_core::{Reason, Refusal, RefusedAs};

    #[test]
    fn detects_upgrades_in_both_forms() {
        assert!(is_websocket_upgrade(Some(b"websocket"), None));
        assert!(is_websocket_upgrade(Some(b"WebSocket"), None));
        assert!(is_websocket_upgrade(Some(b"foo, websocket"), None));
        assert!(is_websocket_upgrade(None, Some(b"websocket")));
        assert!(!is_websocket_upgrade(Some(b"h2c"), None));
        assert!(!is_websocket_upgrade(None, None));
    }

    #[test]
    fn refusal_body_matches_design() {
        let r = Refusal { state: RefusedAs::Open, reason: Reason::FailureRate, retry_after_ms: 11_001 };
        assert_eq!(
            refusal_body("collab_ws", &r.into()),
            r#"{"error":"circuit_open","breaker":"collab_ws","state":"open","reason":"failure_rate","retry_after_s":12}"#
        );
    }
}
