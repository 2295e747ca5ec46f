//! The root context: reads `plugin_root_id` to know which filter it serves, validates the
//! configuration, and creates the per-request or per-connection contexts.

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext, StreamContext};
use proxy_wasm::types::ContextType;

use crate::config::{self, Config, FilterKind};
use crate::host::{self, Buffer};
use crate::http::HttpFilter;
use crate::poller::{self, Poller};
use crate::tcp::TcpFilter;
use floodgate_core::{Mode, Policy};

pub const HTTP_ROOT_ID: &str = "floodgate";
pub const TCP_ROOT_ID: &str = "floodgate_tcp";
pub const POLLER_ROOT_ID: &str = "floodgate_poller";
/// Larger plugin configurations are refused rather than read.
const MAX_CONFIG_BYTES: usize = 1 << 20;

pub struct Root {
    kind: FilterKind,
    config: Option<Rc<Config>>,
    poller: Option<Poller>,
    /// This root context's id (a drain acts as other contexts, then as this one again).
    id: u32,
}

impl Root {
    pub fn new() -> Self {
        Self::with_id(0)
    }

    pub fn with_id(id: u32) -> Self {
        Root { kind: FilterKind::Http, config: None, poller: None, id }
    }
}

impl Default for Root {
    fn default() -> Self {
        Self::new()
    }
}

fn root_id() -> String {
    match host::property(&["plugin_root_id"]) {
        Ok(Some(b)) => String::from_utf8(b).unwrap_or_default(),
        _ => String::new(),
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, _: usize) {
        if let Some(p) = self.poller.as_mut() {
            p.on_response(token, num_headers, body_size);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        self.kind = match root_id().as_str() {
            TCP_ROOT_ID => FilterKind::Tcp,
            POLLER_ROOT_ID => FilterKind::Poller,
            _ => FilterKind::Http,
        };
        let bytes = match host::buffer(Buffer::PluginConfiguration, MAX_CONFIG_BYTES) {
            Ok(b) => b.unwrap_or_default(),
            Err(e) => {
                log::error!("invalid configuration: cannot read plugin configuration: {e:?}");
                return false;
            }
        };
        match config::parse(&bytes, self.kind) {
            Ok(c) => {
                log::info!("configured ({:?}, {} breaker override(s))", self.kind, c.overrides.len());
                let forced = c.forced_keys();
                self.poller = c.control.clone().map(|control| Poller::new(Rc::new(control), forced.clone()));
                if self.poller.is_none() && self.kind == FilterKind::Http {
                    // No poller to report it: the configuration's forced-opens, set once here.
                    crate::vm::with(|vm| poller::reconcile_forced(vm, forced));
                }
                // The poller, answer deadlines of calls in flight and the successes counted
                // since the last tick (added to Envoy's stats then) run on this worker's tick.
                if self.poller.is_some() || self.kind != FilterKind::Poller {
                    if let Err(e) = host::set_tick_period_ms(poller::TICK_MS) {
                        log::error!("invalid configuration: control: cannot start the worker's timer: {e:?}");
                        return false;
                    }
                }
                self.config = Some(Rc::new(c));
                true
            }
            Err(e) => {
                log::error!("invalid configuration: {e}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        // Out of `self` for the tick, so the SDK's dispatch (on `&self`) can be lent to it.
        if let Some(mut p) = self.poller.take() {
            p.on_tick(&|cluster, headers, timeout_ms| {
                // The SDK panics only on statuses Envoy does not return for this call.
                self.dispatch_http_call(cluster, headers, None, vec![], Duration::from_millis(timeout_ms.into()))
                    .map_err(host::HostError::from_sdk)
            });
            crate::drain::on_tick(self.id, p.stale_after_ms());
            self.poller = Some(p);
        }
        // With the control plane's view as this tick refreshed it, and before answer deadlines
        // are enforced: a delayed call starts now, its deadline counts from now.
        crate::delay::on_tick(self.id);
        crate::guard::expire_overdue();
        crate::guard::flush_successes();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // The SDK aborts on None; without a configuration, pass everything through.
        let config = self.config.clone().unwrap_or_else(|| Rc::new(passthrough()));
        Some(Box::new(HttpFilter::new(config, context_id)))
    }

    fn create_stream_context(&self, _: u32) -> Option<Box<dyn StreamContext>> {
        let config = self.config.clone().unwrap_or_else(|| Rc::new(passthrough()));
        Some(Box::new(TcpFilter::new(config)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(match self.kind {
            FilterKind::Tcp => ContextType::StreamContext,
            _ => ContextType::HttpContext,
        })
    }
}

/// Every breaker disabled: what a context without a valid configuration does.
fn passthrough() -> Config {
    Config {
        shed: config::Shed::WebSocket,
        key: config::KeySource::Cluster,
        defaults: Rc::new(config::BreakerPolicy {
            policy: Policy { mode: Mode::Disabled, answer_timeout_ms: 0, ..Policy::default() },
            failure: Default::default(),
            admission: Default::default(),
        }),
        overrides: Default::default(),
        reject: config::Reject { status: 503, headers: vec![], websocket: Default::default() },
        control: None,
        max_breakers: 1,
        tcp_breaker: None,
        keys: Default::default(),
    }
}
