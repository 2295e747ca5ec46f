//! The TCP filter (root_id `floodgate_tcp`): closes a new downstream connection at once while its
//! breaker does not admit. An upstream connect failure (Envoy's response flags) is a failure; a
//! connection on which the upstream spoke, or that closed without such a flag, is a success.

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
            let flags = match host::property(&["response", "flags"]) {
                Ok(Some(b)) => b.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0),
                _ => 0,
            };
            let failed = flags & CONNECT_FAILURE_FLAGS != 0;
            if failed && !a.policy.failure.resets {
                guard::abandon(a);
            } else {
                guard::finish(a, failed);
            }
        }
    }
}

impl Context for TcpFilter {}

impl StreamContext for TcpFilter {
    fn on_new_connection(&mut self) -> Action {
        let Some(breaker) = self.config.tcp_breaker.clone() else {
            return Action::Continue;
        };
        match guard::check(&self.config, &breaker, RejectKind::Tcp) {
            Verdict::Pass => Action::Continue,
            Verdict::Admit(a) => {
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
