//! The original service's shapes, kept for its existing callers and subscribers, applied to the
//! key `*` (DESIGN, from the original models): the status object of
//! `GET /api/circuit-breaker/status` and of the Redis key `collab:circuit_breaker:status`, the
//! activate/deactivate answers, and the event objects on `collab:circuit_breaker:events`.

use serde::{Deserialize, Serialize};

use crate::engine::{self, Event, Rules, State};
use crate::rfc3339;

pub const KEY: &str = floodgate_core::wire::WILDCARD;

/// The original status object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// `closed` or `open`.
    pub state: String,
    pub activated_at: Option<String>,
    pub deactivated_at: Option<String>,
    pub activation_reason: Option<String>,
    /// Activations of the last hour (every key: the hourly cap's count).
    pub activation_count_last_hour: u32,
    pub last_backpressure_level: Option<f64>,
    /// The end of the cooldown that follows an activation of `*`, while it runs.
    pub grace_period_ends_at: Option<String>,
    /// When the activation of `*` ends if nothing else happens.
    pub scheduled_deactivation_at: Option<String>,
}

pub fn status(s: &State, rules: &Rules, now: u64) -> Status {
    let active = s.activations.get(KEY);
    let ends = engine::ends(s, rules);
    let last_level = active.and_then(|a| a.level()).or_else(|| {
        s.alerts.values().filter(|t| t.key == KEY && t.level.is_some()).max_by_key(|t| t.seen_ms).and_then(|t| t.level)
    });
    let grace = s.last_activated_ms.get(KEY).map(|t| t.saturating_add(rules.cooldown_ms)).filter(|&t| t > now);
    Status {
        state: if active.is_some() { "open" } else { "closed" }.to_string(),
        activated_at: active.map(|a| rfc3339(a.since_ms)),
        deactivated_at: s.wildcard_deactivated_ms.map(rfc3339),
        activation_reason: active.map(|a| a.reason().to_string()),
        activation_count_last_hour: u32::try_from(
            s.recent_activations_ms.iter().filter(|&&t| t.saturating_add(engine::HOUR_MS) > now).count(),
        )
        .unwrap_or(u32::MAX),
        last_backpressure_level: last_level,
        grace_period_ends_at: grace.map(rfc3339),
        scheduled_deactivation_at: ends.get(KEY).copied().flatten().map(rfc3339),
    }
}

/// The original activate/deactivate answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// `activated`, `skipped` or `deactivated`.
    pub status: String,
    pub message: String,
}

/// The original event object; Floodgate adds `key` and `source`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelEvent {
    pub event_id: String,
    /// `activate` or `deactivate`.
    pub event_type: String,
    pub timestamp: String,
    pub reason: String,
    pub backpressure_level: Option<f64>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub key: String,
    pub source: engine::Source,
}

/// The event as published on `collab:circuit_breaker:events`; `None` for events the original
/// channel does not carry: those of keys other than `*` (the original service had one global
/// breaker: its subscribers take every `activate` for the whole service being forced open),
/// scheduled deactivations and refusals by the cap. Those are in `GET /api/v1/breakers`.
pub fn channel_event(e: &Event) -> Option<ChannelEvent> {
    if e.key != KEY {
        return None;
    }
    let event_type = match e.kind.as_str() {
        "activated" => "activate",
        "deactivated" => "deactivate",
        _ => return None,
    };
    let mut metadata = serde_json::Map::new();
    metadata.insert("key".into(), e.key.clone().into());
    metadata.insert("source".into(), serde_json::to_value(e.source).unwrap_or(serde_json::Value::Null));
    metadata.insert("floodgate".into(), true.into());
    Some(ChannelEvent {
        event_id: e.event_id.clone(),
        event_type: event_type.to_string(),
        timestamp: rfc3339(e.timestamp_ms),
        reason: e.reason.clone(),
        backpressure_level: e.backpressure_level,
        metadata,
        key: e.key.clone(),
        source: e.source,
    })
}
