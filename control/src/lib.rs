//! floodgate-control: turns Alertmanager alerts (and operators' calls) into breaker activations,
//! and serves them to every Envoy through a long-poll snapshot.

pub mod app;
pub mod drain;
pub mod engine;
pub mod legacy;
pub mod metrics;
pub mod redis_store;
pub mod reset;
pub mod settings;
pub mod store;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// RFC 3339 (whole seconds) of `ms` since the epoch, as on the wire (never panics).
pub use floodgate_core::time::format_rfc3339_ms as rfc3339;

/// Ends activations whose time has come, and activates firing alerts that the cooldown or the
/// hourly cap held back once the rules allow, twice a second. With Redis, every replica runs it
/// and the store's compare-and-set lets exactly one of them act on each.
pub async fn expiry_loop(state: Arc<app::AppState>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        match state.store.apply(engine::Command::Expire, &state.rules, now_ms()).await {
            Ok((outcome, events)) => {
                state.metrics.count(&outcome);
                for e in events {
                    // Deactivations that came due, and alerts held back that activate now.
                    tracing::info!(key = %e.key, reason = %e.reason, event = %e.kind, "breaker {}", e.kind);
                }
            }
            Err(e) => tracing::warn!(error = %e, "expiry pass failed"),
        }
    }
}
