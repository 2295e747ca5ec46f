//! Floodgate: a proxy-wasm circuit breaker for Envoy that refuses new WebSocket upgrades while
//! a backend is failing and leaves existing connections alone.
//!
//! - `floodgate_core` (crate `core/`): the pure breaker, override and poller decisions, and the
//!   control contract's wire types (no host calls; time is an input).
//! - [`config`]: plugin configuration, parsed and validated into typed policies.
//! - [`host`]: the one adapter that makes host calls; [`store`]: breaker state in shared data.
//! - [`guard`], [`http`], [`tcp`], [`root`]: the filters; [`metrics`]: Envoy stats.
//! - [`poller`]: one poller per Envoy brings the control plane's overrides into shared data.
//! - [`reset`], [`drain`]: the control plane's fleet-wide resets and drains, applied here.
//! - [`admission`], [`delay`]: the admission budget, and the upgrades it delays.

pub mod admission;
pub mod alloc;
pub mod config;
pub mod delay;
pub mod drain;
pub mod guard;
pub mod host;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod poller;
pub mod reset;
pub mod root;
pub mod store;
pub mod tcp;
pub mod vm;
pub mod websocket;

proxy_wasm::main! {{
    host::install_logging();
    proxy_wasm::set_root_context(|id| -> Box<dyn proxy_wasm::traits::RootContext> { Box::new(root::Root::with_id(id)) });
}}
