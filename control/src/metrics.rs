//! The service's own Prometheus metrics, at `/metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::engine::Outcome;

pub struct Metrics {
    registry: Registry,
    pub activations: Counter,
    pub deactivations: Counter,
    pub rate_limited: Counter,
    pub webhooks: Counter,
    pub webhooks_failed: Counter,
    pub poll_waiters: Gauge,
    pub webhook_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("floodgate_control");
        let m = Metrics {
            activations: Counter::default(),
            deactivations: Counter::default(),
            rate_limited: Counter::default(),
            webhooks: Counter::default(),
            webhooks_failed: Counter::default(),
            poll_waiters: Gauge::default(),
            webhook_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            registry: Registry::default(),
        };
        registry.register("activations", "Breaker activations", m.activations.clone());
        registry.register("deactivations", "Breaker deactivations", m.deactivations.clone());
        registry.register("rate_limited", "Activations refused by the hourly cap", m.rate_limited.clone());
        registry.register("webhooks_received", "Alertmanager webhook requests", m.webhooks.clone());
        registry.register("webhooks_failed", "Webhook requests answered with an error", m.webhooks_failed.clone());
        registry.register("poll_waiters", "Snapshot long-polls waiting now", m.poll_waiters.clone());
        registry.register("webhook_duration_seconds", "Time to handle a webhook", m.webhook_seconds.clone());
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn count(&self, outcome: &Outcome) {
        match outcome {
            Outcome::Activated { .. } => {
                self.activations.inc();
            }
            Outcome::Deactivated { count } => {
                self.deactivations.inc_by(*count as u64);
            }
            Outcome::RateLimited => {
                self.rate_limited.inc();
            }
            _ => {}
        }
    }

    pub fn render(&self) -> Result<String, String> {
        let mut out = String::new();
        encode(&mut out, &self.registry).map_err(|e| e.to_string())?;
        Ok(out)
    }
}
