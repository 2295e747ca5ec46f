//! Floodgate's pure logic, shared by the filter (`floodgate.wasm`) and `floodgate-control`: the
//! circuit breaker, its shared-state encoding, the control plane's overrides and the poller's
//! decisions, and the wire types of the control contract. No proxy-wasm SDK, no tokio, no clock,
//! no host calls: time and randomness are inputs; decisions, transitions and new states are
//! outputs. Tested natively.

pub mod admission;
pub mod breaker;
pub mod classify;
pub mod drain;
pub mod handshake;
pub mod policy;
pub mod poll;
pub mod remote;
pub mod reset;
pub mod state;
pub mod time;
pub mod version;
pub mod window;
pub mod wire;

#[cfg(test)]
mod tests;

pub use breaker::{
    admit, record, record_success, release, timeout, Call, Decision, Effect, ProbeTicket, Refusal, RefusedAs,
    Transition,
};
pub use policy::{Mode, Policy, WindowSpec};
pub use state::{BreakerState, Phase, Reason};
