//! The TCP filter (root_id `floodgate_tcp`): closes a new downstream connection at once while its
//! breaker does not admit. An upstream connect failure (Envoy's response flags) is a failure; a
//! connection on which the upstream spoke, or whose upstream connection was made, is a success;
//! one that ended before either (a health check, a client that gave up) decides nothing.

use std::rc::Rc;

use proxy_wasm::traits::{Context, StreamContext};
use proxy_wasm::types::{Action, PeerType};

use crate::config::Config;
use crate::guard::{self, Admitted, Verdict};
use crate::host;
use crate::metrics::RejectKind;

/// Envoy `StreamInfo::ResponseFlag` bits that mean the upstream could not be reached:
/// NoHealthyUpstream, UpstreamConnectionFailure, UpstreamOverflow.
const CONNECT_FAILURE_FLAGS: u64 = 0x2 | 0x20 | 0x80;

pub struct TcpFilter {
    config: Rc<Config>,
    admitted: Option<Admitted>,
}

impl TcpFilter {
    pub fn new(config: Rc<Config>) -> Self {
        TcpFilter { config, admitted: None }
    }

    fn settle(&mut self) {
        if let Some(a) = self.admitted.take() {
            let flags = host::property_u64(&["response", "flags"]).ok().flatten().unwrap_or(0);
            if flags & CONNECT_FAILURE_FLAGS != 0 {
                if a.key.policy.failure.resets {
                    guard::finish(a, true);
                } else {
                    guard::abandon(a);
                }
            } else if upstream_connected() {
                guard::finish(a, false);
            } else {
                guard::abandon(a);
            }
        }
    }
}

/// Whether the upstream connection was made: Envoy sets `upstream.local_address` once it is.
fn upstream_connected() -> bool {
    matches!(host::property(&["upstream", "local_address"]), Ok(Some(a)) if !a.is_empty())
}

impl Context for TcpFilter {}

impl StreamContext for TcpFilter {
    fn on_new_connection(&mut self) -> Action {
        let Some(breaker) = self.config.tcp_breaker.clone() else {
            return Action::Continue;
        };
        match guard::check(&self.config, breaker.as_bytes(), false, &|| RejectKind::Tcp) {
            Verdict::Pass => Action::Continue,
            // A TCP connection is never delayed (`guard::check` with `http: false`).
            Verdict::Admit(a) | Verdict::Delay { admitted: a, .. } => {
                self.admitted = Some(a);
                Action::Continue
            }
            Verdict::Refuse(_) => match host::close_downstream() {
                Ok(()) => Action::Pause,
                Err(e) => {
                    log::warn!("cannot close refused connection: {e:?}");
                    Action::Continue
                }
            },
        }
    }

    fn on_upstream_data(&mut self, _: usize, _: bool) -> Action {
        // The upstream answered: the connection works.
        if let Some(a) = self.admitted.take() {
            guard::finish(a, false);
        }
        Action::Continue
    }

    fn on_downstream_close(&mut self, _: PeerType) {
        self.settle();
    }

    fn on_upstream_close(&mut self, _: PeerType) {
        self.settle();
    }

    fn on_log(&mut self) {
        self.settle();
    }
}
