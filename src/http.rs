//! The HTTP filter (root_id `floodgate`): refuses new upgrades (or, with `shed: all`, every new
//! request) while the breaker does not admit, and feeds upstream answers back to it. An upgraded
//! stream flows untouched, except one a drain chose (`crate::drain`): its server data becomes a
//! 1012 close frame.

use std::borrow::Cow;
use std::cell::Cell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::config::{Config, KeySource, Shed, WebSocketReject};
use crate::guard::{self, Admitted, Refused, Success, Verdict};
use crate::host::{self, HeaderMap};
use crate::metrics::RejectKind;
use crate::websocket;

pub struct HttpFilter {
    config: Rc<Config>,
    admitted: Option<Admitted>,
    /// This stream's answer is Floodgate's own 101 + close frame (`reject.websocket`).
    close_frame_sent: bool,
    /// Whether the request is a WebSocket upgrade, once read (with `shed: all`, only a refusal
    /// needs to know).
    upgrade: Cell<Option<bool>>,
    /// A WebSocket upgrade let through unguarded (disabled, untracked, forced closed...): the
    /// backend's 101 registers it for drains all the same.
    passed_upgrade: bool,
    /// The admission budget delayed this request (`crate::delay`).
    delayed: bool,
    context_id: u32,
    /// The drain's side of an upgraded stream, made on the backend's 101 (a plain request
    /// carries nothing for drains).
    drain: Option<Box<crate::drain::Stream>>,
}

impl HttpFilter {
    pub fn new(config: Rc<Config>, context_id: u32) -> Self {
        HttpFilter {
            config,
            admitted: None,
            close_frame_sent: false,
            upgrade: Cell::new(None),
            passed_upgrade: false,
            delayed: false,
            context_id,
            drain: None,
        }
    }

    fn is_upgrade(&self) -> bool {
        if let Some(known) = self.upgrade.get() {
            return known;
        }
        let header = host::header(HeaderMap::RequestHeaders, "upgrade").ok().flatten();
        let upgrade = is_websocket_upgrade(header.as_deref());
        self.upgrade.set(Some(upgrade));
        upgrade
    }

    fn kind(&self) -> RejectKind {
        if self.is_upgrade() {
            RejectKind::WebSocket
        } else {
            RejectKind::Http
        }
    }
}

/// A WebSocket upgrade: `upgrade: websocket`. Envoy presents an HTTP/2 extended CONNECT
/// (`:protocol: websocket`) to filters in this HTTP/1.1 form (checked on Envoy 1.36 and 1.40 by
/// the HTTP/2 tests of tests/envoy), so `:protocol` is never read.
pub fn is_websocket_upgrade(upgrade: Option<&[u8]>) -> bool {
    // The usual value alone first; a list (`foo, websocket`) token by token.
    let is_ws = |v: &[u8]| {
        v.eq_ignore_ascii_case(b"websocket")
            || v.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"websocket"))
    };
    upgrade.is_some_and(is_ws)
}

/// The breaker's key as the host gives it (bytes: a cached key is looked up without a copy).
fn breaker_key(source: &KeySource) -> Option<Vec<u8>> {
    const CLUSTER: &[u8] = b"xds\0cluster_name\0";
    const ROUTE: &[u8] = b"xds\0route_name\0";
    let bytes = match source {
        KeySource::Cluster => host::property_path(CLUSTER),
        KeySource::Route => host::property_path(ROUTE),
        KeySource::Header(name) => host::header(HeaderMap::RequestHeaders, name),
    };
    bytes.ok().flatten().filter(|b| !b.is_empty())
}

/// DESIGN's refusal body.
pub fn refusal_body(breaker: &str, refusal: &Refused) -> String {
    let mut body = Vec::new();
    write_refusal_body(&mut body, breaker.as_bytes(), refusal);
    // Only UTF-8 was written: the key and reason as given (a &str) or escaped by serde_json.
    String::from_utf8(body).unwrap_or_default()
}

/// The refusal body into `out`, written directly (no serializer on the refusal path).
fn write_refusal_body(out: &mut Vec<u8>, breaker: &[u8], refusal: &Refused) {
    out.reserve(96 + breaker.len() + refusal.reason.len());
    out.extend_from_slice(br#"{"error":"circuit_open","breaker":"#);
    push_json_string(out, breaker);
    out.extend_from_slice(br#","state":""#);
    out.extend_from_slice(refusal.state.name().as_bytes());
    out.extend_from_slice(br#"","reason":"#);
    match &refusal.reason {
        // DESIGN's reason names need no escaping.
        Cow::Borrowed(name) => {
            out.push(b'"');
            out.extend_from_slice(name.as_bytes());
            out.push(b'"');
        }
        Cow::Owned(reason) => push_json_string(out, reason.as_bytes()),
    }
    out.extend_from_slice(br#","retry_after_s":"#);
    out.extend_from_slice(Decimal::new(refusal.retry_after_s()).as_bytes());
    out.push(b'}');
}

/// `s` (UTF-8) as a JSON string: as is when nothing in it needs escaping (keys usually), else
/// through serde_json.
fn push_json_string(out: &mut Vec<u8>, s: &[u8]) {
    if s.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s);
        out.push(b'"');
    } else {
        // Serializing a string cannot fail; an empty string still makes valid JSON around it.
        let escaped = serde_json::to_vec(&String::from_utf8_lossy(s)).unwrap_or_else(|_| b"\"\"".to_vec());
        out.extend_from_slice(&escaped);
    }
}

/// A number in decimal, on the stack (no formatting machinery on the refusal path).
pub struct Decimal {
    digits: [u8; 20],
    start: usize,
}

impl Decimal {
    pub fn new(mut n: u64) -> Decimal {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        Decimal { digits, start }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.digits[self.start..]
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits are written.
        std::str::from_utf8(self.as_bytes()).unwrap_or("0")
    }
}

impl HttpFilter {
    /// Out of line and cold: the admitted request's path does not carry the refusal.
    #[cold]
    #[inline(never)]
    fn refuse(&mut self, breaker: &[u8], refusal: &Refused, upgrade: bool) -> Action {
        if upgrade && self.config.reject.websocket == WebSocketReject::CloseFrame {
            match websocket::refuse(refusal, &self.config.reject.headers) {
                Ok(()) => {
                    self.close_frame_sent = true;
                    return Action::Pause;
                }
                Err(why) => log::debug!("close_frame refusal not possible ({why:?}): HTTP refusal"),
            }
        }
        match send_refusal(&self.config, breaker, refusal) {
            Ok(()) => Action::Pause,
            Err(e) => {
                // Could not answer: let the request through rather than leave it hanging.
                log::warn!("local reply failed: {e:?}");
                Action::Continue
            }
        }
    }
}

/// DESIGN's HTTP refusal as the current stream's local reply.
pub fn send_refusal(config: &Config, breaker: &[u8], refusal: &Refused) -> host::HostResult<()> {
    let retry = Decimal::new(refusal.retry_after_s());
    let extra = &config.reject.headers;
    let mut headers: Vec<(&str, &str)> = Vec::with_capacity(3 + extra.len());
    headers.extend([
        ("retry-after", retry.as_str()),
        ("x-floodgate", refusal.state.name()),
        ("content-type", "application/json"),
    ]);
    headers.extend(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let mut body = Vec::new();
    write_refusal_body(&mut body, breaker, refusal);
    host::send_local_response(config.reject.status, &headers, &body, "floodgate_circuit_open")
}

impl HttpFilter {
    /// Holds the request until its token comes; the worker's tick resumes it. A worker that
    /// cannot hold it (it checked for room before taking the token) lets it through.
    #[cold]
    #[inline(never)]
    fn delay(&mut self, admitted: Admitted, wait_ms: u64) -> Action {
        let now = admitted.start_ms.saturating_sub(wait_ms);
        let ctx = self.context_id;
        let waiting = crate::delay::Waiting {
            config: self.config.clone(),
            key: admitted.key.clone(),
            kind: self.kind(),
            pending: admitted.pending,
        };
        self.admitted = Some(admitted);
        if crate::vm::with(|vm| vm.delayed.hold(ctx, waiting, now, wait_ms)) {
            self.delayed = true;
            Action::Pause
        } else {
            log::warn!("stream {ctx} not delayed (no room): let through");
            Action::Continue
        }
    }

    /// Whether this request still waits for its token. Its data and trailers must not answer
    /// Continue then: Envoy would send the paused headers on at once.
    #[cold]
    #[inline(never)]
    fn still_delayed(&self) -> bool {
        let ctx = self.context_id;
        crate::vm::with(|vm| vm.delayed.is_waiting(ctx))
    }

    /// A delayed call's answer: its duration counts from when the tick resumed it (up to a
    /// tick after its token), not from its token.
    #[cold]
    #[inline(never)]
    fn started_when_resumed(&mut self) {
        let ctx = self.context_id;
        if let Some(resumed_ms) = crate::vm::with(|vm| vm.delayed.take_resumed(ctx)) {
            if let Some(a) = self.admitted.as_mut() {
                a.start_ms = resumed_ms;
            }
        }
    }

    /// Whether this delayed stream was refused when its wait ended: its call is given back
    /// (the reply is Floodgate's own, not an answer).
    #[cold]
    #[inline(never)]
    fn refused_after_delay(&mut self) -> bool {
        let ctx = self.context_id;
        if !crate::vm::with(|vm| vm.delayed.take_refused(ctx)) {
            return false;
        }
        if let Some(a) = self.admitted.take() {
            guard::withdraw(a);
        }
        true
    }

    /// An upgrade let through unguarded is still one a drain reaches, if its key is one a
    /// breaker could have (of bounded length: the registry keeps it while the stream lives). Its
    /// key is read again here, so the request path keeps nothing for it.
    #[inline(never)]
    fn register_passed(&mut self) {
        let Some(key) = breaker_key(&self.config.key).and_then(|b| String::from_utf8(b).ok()) else { return };
        if crate::store::trackable(&key) {
            if let Ok(now) = host::now_ms() {
                self.register_upgraded(&key, now);
            }
        }
    }

    /// The backend answered 101 to an admitted call: a WebSocket upgrade becomes one of this
    /// worker's live streams for drains (in memory; no host call when the request's kind is
    /// known). Out of line: the plain request's answer does not carry it.
    #[inline(never)]
    fn register_admitted(&mut self, a: &Admitted) {
        if self.is_upgrade() {
            self.register_upgraded(&a.key.name, a.start_ms);
        }
    }

    fn register_upgraded(&mut self, key: &str, since_ms: u64) {
        let mut stream = Box::new(crate::drain::Stream::new(self.context_id));
        stream.upgraded(key, since_ms);
        self.drain = Some(stream);
    }
}

impl Context for HttpFilter {}

impl HttpContext for HttpFilter {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        if self.config.shed == Shed::WebSocket && !self.is_upgrade() {
            return Action::Continue;
        }
        let Some(breaker) = breaker_key(&self.config.key) else {
            return Action::Continue;
        };
        match guard::check(&self.config, &breaker, true, &|| self.kind()) {
            Verdict::Pass => {
                self.passed_upgrade = self.is_upgrade();
                Action::Continue
            }
            Verdict::Admit(a) => {
                self.admitted = Some(a);
                Action::Continue
            }
            Verdict::Delay { admitted, wait_ms } => self.delay(admitted, wait_ms),
            Verdict::Refuse(refusal) => {
                let upgrade = self.is_upgrade();
                self.refuse(&breaker, &refusal, upgrade)
            }
        }
    }

    fn on_http_request_body(&mut self, _: usize, _: bool) -> Action {
        // Paused headers: buffer the data until the tick resumes the request.
        if self.delayed && self.still_delayed() {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_http_request_trailers(&mut self, _: usize) -> Action {
        if self.delayed && self.still_delayed() {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if self.delayed {
            if self.refused_after_delay() {
                return Action::Continue;
            }
            self.started_when_resumed();
        }
        if self.close_frame_sent {
            websocket::strip_local_reply_headers();
            return Action::Continue;
        }
        if self.admitted.is_some() {
            let status = response_status();
            if status == Some(101) {
                if let Some(a) = self.admitted.take() {
                    self.register_admitted(&a);
                    guard::finish(a, false);
                }
            } else {
                answered(&mut self.admitted, status);
            }
        } else if std::mem::take(&mut self.passed_upgrade) && response_status() == Some(101) {
            self.register_passed();
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, _: bool) -> Action {
        match self.drain.as_mut() {
            Some(stream) => stream.on_server_data(body_size),
            None => Action::Continue,
        }
    }

    fn on_log(&mut self) {
        if let Some(stream) = self.drain.as_mut() {
            stream.ended();
        }
        if self.delayed {
            // A client that left while its upgrade waited: never resumed. Its token is spent
            // (the backend sees fewer upgrades than the budget, never more).
            let ctx = self.context_id;
            if crate::vm::with(|vm| vm.delayed.forget(ctx)) {
                if let Some(a) = self.admitted.take() {
                    guard::withdraw(a);
                }
            }
        }
        // The stream ended with no response through this filter: an upstream that never
        // answered (reset, connect failure, timeout: Envoy's flags say so), or a client that
        // went away before the upstream answered, which decides nothing.
        if let Some(a) = self.admitted.take() {
            match response_flags() {
                Some(flags) if flags & DOWNSTREAM_TERMINATION == 0 && flags & NO_UPSTREAM_ANSWER != 0 => no_answer(a),
                _ => guard::abandon(a),
            }
        }
    }
}

/// Envoy `ResponseFlag` bits (`response.flags`, the same in Envoy 1.36 to 1.40) that mean the
/// upstream gave no answer: UH (no healthy upstream), UT (upstream request timeout), UR
/// (upstream remote reset), UF (connection failure), UC (connection termination), UO
/// (overflow), URX (retry limit exceeded), UMSDR (max stream duration), UPE (protocol error).
pub const NO_UPSTREAM_ANSWER: u64 = 0x2 | 0x4 | 0x10 | 0x20 | 0x40 | 0x80 | 0x8000 | 0x80000 | 0x80_0000;
/// DC: the downstream connection went away.
pub const DOWNSTREAM_TERMINATION: u64 = 0x4000;
/// `response.code_details` of an answer the router passed on from the upstream.
pub const VIA_UPSTREAM: &[u8] = b"via_upstream";

/// Who made the response a stream is getting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The upstream: its status is the outcome.
    Upstream,
    /// Envoy, because the upstream gave no answer (connect failure, reset, timeout).
    Envoy,
    /// Another filter (rate limit, RBAC, ext_authz...) or Envoy for a reason not about the
    /// upstream: not an outcome.
    Other,
}

/// Tells the answer's maker from `response.code_details` (`via_upstream` for the router's
/// upstream answers) and `response.flags`. A host that reports no details is taken at its
/// status, as before Envoy had them.
pub fn classify_answer(details: Option<&[u8]>, flags: Option<u64>) -> Answer {
    match details {
        None => Answer::Upstream,
        Some(VIA_UPSTREAM) => Answer::Upstream,
        Some(_) if flags.is_some_and(|f| f & NO_UPSTREAM_ANSWER != 0) => Answer::Envoy,
        Some(_) => Answer::Other,
    }
}

fn response_status() -> Option<u16> {
    let status = host::header(HeaderMap::ResponseHeaders, ":status").ok().flatten()?;
    match status.as_slice() {
        [a @ b'1'..=b'5', b @ b'0'..=b'9', c @ b'0'..=b'9'] => {
            Some(u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'))
        }
        _ => None,
    }
}

/// Decides an admitted call by its answer. Who made the answer (`response.code_details`) is read
/// only when it can change something: for an error status (4xx, 5xx: a failure, or a reply Envoy
/// made because the upstream never answered, which is a failure whatever its status), or a
/// success that is not a no-op (a probe, a streak to end, a window still filling). Only the
/// upstream answers an upgrade with 101, and Envoy's own replies are never 1xx-3xx. The call is taken from `slot` only to be decided: a success that changes nothing
/// leaves it there until it is dropped in place.
fn answered(slot: &mut Option<Admitted>, status: Option<u16>) {
    let Some(a) = slot.as_ref() else { return };
    let success = match status {
        Some(status) if status != 101 && status < 400 && !a.key.policy.failure.is_failure(status) => {
            guard::success_if_noop(a)
        }
        _ => return answered_taken(slot.take(), status),
    };
    match success {
        // Counted: the call is dropped where it is.
        Success::Counted => *slot = None,
        Success::Decide(read) => {
            let Some(a) = slot.take() else { return };
            match answered_by() {
                Answer::Upstream => guard::record_outcome(a, false, read),
                Answer::Envoy => no_answer(a),
                Answer::Other => guard::abandon(a),
            }
        }
    }
}

/// [`answered`] for a 101, an error or failure status, or no status.
#[inline(never)]
fn answered_taken(a: Option<Admitted>, status: Option<u16>) {
    let Some(a) = a else { return };
    match status {
        Some(101) => guard::finish(a, false),
        Some(status) if status >= 400 || a.key.policy.failure.is_failure(status) => match answered_by() {
            Answer::Upstream => {
                let failure = a.key.policy.failure.is_failure(status);
                guard::finish(a, failure)
            }
            Answer::Envoy => no_answer(a),
            Answer::Other => guard::abandon(a),
        },
        Some(_) => guard::finish(a, false),
        None => guard::abandon(a),
    }
}

fn answered_by() -> Answer {
    match host::property(&["response", "code_details"]) {
        Ok(Some(details)) if details.as_slice() == VIA_UPSTREAM => Answer::Upstream,
        Ok(details) => classify_answer(details.as_deref(), response_flags()),
        // Cannot tell who answered: decide nothing (fail open).
        Err(_) => Answer::Other,
    }
}

fn response_flags() -> Option<u64> {
    host::property_u64(&["response", "flags"]).ok().flatten()
}

/// The upstream gave no answer: a failure under `failure.resets`, else nothing.
fn no_answer(a: Admitted) {
    if a.key.policy.failure.resets {
        guard::finish(a, true);
    } else {
        guard::abandon(a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use floodgate_core::{Reason, Refusal, RefusedAs};

    #[test]
    fn detects_upgrades_by_the_upgrade_header() {
        assert!(is_websocket_upgrade(Some(b"websocket")));
        assert!(is_websocket_upgrade(Some(b"WebSocket")));
        assert!(is_websocket_upgrade(Some(b"foo, websocket")));
        assert!(!is_websocket_upgrade(Some(b"h2c")));
        assert!(!is_websocket_upgrade(None));
    }

    #[test]
    fn answers_are_told_apart_by_their_details_and_flags() {
        assert_eq!(classify_answer(Some(b"via_upstream"), Some(0)), Answer::Upstream);
        assert_eq!(classify_answer(None, None), Answer::Upstream);
        let reset = Some(b"upstream_reset_before_response_started{connection_failure}".as_slice());
        assert_eq!(classify_answer(reset, Some(0x20)), Answer::Envoy);
        assert_eq!(classify_answer(Some(b"response_timeout"), Some(0x4)), Answer::Envoy);
        assert_eq!(classify_answer(Some(b"request_rate_limited"), Some(0x800)), Answer::Other);
        assert_eq!(classify_answer(Some(b"rbac_access_denied_matched_policy[none]"), Some(0)), Answer::Other);
        assert_eq!(classify_answer(Some(b"local_rate_limited"), None), Answer::Other);
    }

    #[test]
    fn refusal_bodies_escape_what_json_needs_and_count_in_decimal() {
        // A reason from the control plane (owned) is escaped; DESIGN's names (borrowed) need not be.
        let reason = Cow::Owned("say \"no\"".to_string());
        let r = Refused { state: RefusedAs::ForcedOpen, reason, retry_after_ms: 1_234_567_000 };
        let body = refusal_body("a\\b\n", &r);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["breaker"], "a\\b\n");
        assert_eq!(v["reason"], "say \"no\"");
        assert_eq!(v["retry_after_s"], 1_234_567);
        for n in [0, 7, 10, 18_446_744_073_709_551_615] {
            assert_eq!(Decimal::new(n).as_str(), n.to_string());
        }
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
