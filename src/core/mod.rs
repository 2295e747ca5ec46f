//! The pure circuit breaker: no proxy-wasm SDK, no clock, no host calls. Time and randomness are
//! inputs; decisions, transitions and the new state are outputs. Tested natively.

pub mod breaker;
pub mod classify;
pub mod policy;
pub mod remote;
pub mod state;
pub mod window;

#[cfg(test)]
mod tests;

pub use breaker::{admit, record, release, Call, Decision, Effect, ProbeTicket, Refusal, RefusedAs, Transition};
pub use policy::{Mode, Policy, WindowSpec};
pub use state::{BreakerState, Phase, Reason};
