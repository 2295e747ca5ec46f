//! The activation rules, as pure functions over [`State`]: both stores run the same code, so the
//! memory store and every Redis replica decide alike. Time is an input (ms since the epoch).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

/// How many events `GET /api/v1/breakers` remembers.
pub(crate) const EVENTS_KEPT: usize = 100;
/// How many resolved alert fingerprints are remembered to drop late, stale firings.
const RESOLVED_KEPT: usize = 1000;
const HOUR_MS: u64 = 3_600_000;

#[derive(Clone, Debug, PartialEq)]
pub struct Rules {
    pub cooldown_ms: u64,
    pub deactivation_delay_ms: u64,
    pub max_activations_per_hour: u32,
    pub max_active_ms: u64,
    /// Hysteresis on backpressure levels: activate at >= this...
    pub activate_level: f64,
    /// ...and schedule the deactivation of an active breaker below this.
    pub deactivate_level: f64,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            cooldown_ms: 30_000,
            deactivation_delay_ms: 120_000,
            max_activations_per_hour: 10,
            max_active_ms: 4 * HOUR_MS,
            activate_level: 0.95,
            deactivate_level: 0.85,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Alert,
    Manual,
}

pub use floodgate_core::wire::Forced;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Activation {
    pub key: String,
    pub state: Forced,
    pub reason: String,
    pub source: Source,
    pub since_ms: u64,
    /// A manual TTL's end.
    pub until_ms: Option<u64>,
    /// Where an alert activation lapses if no firing notification refreshes it.
    pub lapses_ms: Option<u64>,
    /// When a resolved alert (or a falling level) deactivates it.
    pub deactivate_at_ms: Option<u64>,
    pub backpressure_level: Option<f64>,
    pub event_id: String,
}

impl Activation {
    /// When it ends if nothing else happens (what the snapshot's `until` says).
    pub fn ends_ms(&self) -> Option<u64> {
        [self.until_ms, self.lapses_ms, self.deactivate_at_ms].into_iter().flatten().min()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub key: String,
    pub reason: String,
    pub source: Source,
    pub backpressure_level: Option<f64>,
    pub timestamp_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Bumped whenever the snapshot proxies see changes.
    pub version: u64,
    pub activations: BTreeMap<String, Activation>,
    pub last_activated_ms: BTreeMap<String, u64>,
    /// Times of the activations of the last hour (the hourly cap).
    pub recent_activations_ms: Vec<u64>,
    /// Alert fingerprint -> when it resolved; a firing that started before is stale.
    pub resolved_ms: BTreeMap<String, u64>,
    pub events: VecDeque<Event>,
    pub event_seq: u64,
    /// Fleet-wide resets still in the snapshot (see `crate::reset`).
    #[serde(default)]
    pub resets: Vec<crate::reset::Reset>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    AlertFiring {
        key: String,
        reason: String,
        fingerprint: String,
        starts_ms: u64,
        level: Option<f64>,
    },
    AlertResolved {
        key: String,
        reason: String,
        fingerprint: String,
        ends_ms: u64,
    },
    Activate {
        key: String,
        reason: String,
        state: Forced,
        ttl_ms: Option<u64>,
        level: Option<f64>,
    },
    Deactivate {
        key: String,
    },
    /// Closes every proxy's local breaker(s) for `key` (or all, `*`) once.
    Reset {
        key: String,
        reason: String,
    },
    /// Ends activations whose time has come.
    Expire,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    Activated { event_id: String },
    Refreshed,
    Cooldown { retry_in_ms: u64 },
    RateLimited,
    BelowThreshold,
    Stale,
    DeactivationScheduled { at_ms: u64 },
    Deactivated { count: usize },
    NotActive,
    Reset { event_id: String },
}

fn event(s: &mut State, kind: &str, a: &Activation, now: u64) -> Event {
    let e = Event {
        event_id: format!("{}-{}", now, s.event_seq),
        kind: kind.to_string(),
        key: a.key.clone(),
        reason: a.reason.clone(),
        source: a.source,
        backpressure_level: a.backpressure_level,
        timestamp_ms: now,
    };
    s.event_seq += 1;
    s.events.push_back(e.clone());
    while s.events.len() > EVENTS_KEPT {
        s.events.pop_front();
    }
    e
}

/// Applies one command. Returns what happened and the events to publish.
pub fn apply(s: &mut State, cmd: Command, rules: &Rules, now: u64) -> (Outcome, Vec<Event>) {
    s.recent_activations_ms.retain(|&t| t + HOUR_MS > now);
    let mut events = vec![];
    let outcome = match cmd {
        Command::AlertFiring { key, reason, fingerprint, starts_ms, level } => {
            if s.resolved_ms.get(&fingerprint).is_some_and(|&ended| starts_ms <= ended) {
                // Delivered after its own resolution (Alertmanager does not order deliveries).
                return (Outcome::Stale, events);
            }
            let below = level.is_some_and(|l| l < rules.activate_level);
            if let Some(a) = s.activations.get_mut(&key) {
                if level.is_some_and(|l| l < rules.deactivate_level) {
                    if a.deactivate_at_ms.is_none() {
                        let at = now + rules.deactivation_delay_ms;
                        a.deactivate_at_ms = Some(at);
                        s.version += 1;
                        let a = a.clone();
                        events.push(event(s, "deactivation_scheduled", &a, now));
                        return (Outcome::DeactivationScheduled { at_ms: at }, events);
                    }
                    return (Outcome::BelowThreshold, events);
                }
                // Still firing: hold, cancel a scheduled deactivation, push the lapse out.
                if a.source == Source::Alert {
                    // Wake the pollers only for what they must see: a cancelled deactivation,
                    // or a lapse pushed out by more than a tenth of max_active (duplicates and
                    // repeats from an HA pair would otherwise wake every proxy each time).
                    let new_lapse = now + rules.max_active_ms;
                    let moved = new_lapse.saturating_sub(a.lapses_ms.unwrap_or(0)) > rules.max_active_ms / 10;
                    let visible = a.deactivate_at_ms.is_some() || moved;
                    a.lapses_ms = Some(new_lapse);
                    a.deactivate_at_ms = None;
                    if level.is_some() {
                        a.backpressure_level = level;
                    }
                    if visible {
                        s.version += 1;
                    }
                }
                return (Outcome::Refreshed, events);
            }
            if below {
                return (Outcome::BelowThreshold, events);
            }
            if let Some(&last) = s.last_activated_ms.get(&key) {
                if now < last + rules.cooldown_ms {
                    return (Outcome::Cooldown { retry_in_ms: last + rules.cooldown_ms - now }, events);
                }
            }
            let a = Activation {
                key: key.clone(),
                state: Forced::ForcedOpen,
                reason,
                source: Source::Alert,
                since_ms: now,
                until_ms: None,
                lapses_ms: Some(now + rules.max_active_ms),
                deactivate_at_ms: None,
                backpressure_level: level,
                event_id: String::new(),
            };
            activate(s, a, rules, now, &mut events)
        }
        Command::AlertResolved { key, fingerprint, ends_ms, .. } => {
            s.resolved_ms.insert(fingerprint, ends_ms);
            while s.resolved_ms.len() > RESOLVED_KEPT {
                let Some(oldest) = s.resolved_ms.iter().min_by_key(|(_, &t)| t).map(|(k, _)| k.clone()) else { break };
                s.resolved_ms.remove(&oldest);
            }
            match s.activations.get_mut(&key) {
                Some(a) if a.source == Source::Alert => match a.deactivate_at_ms {
                    // Duplicates do not push the deactivation further out.
                    Some(at) => Outcome::DeactivationScheduled { at_ms: at },
                    None => {
                        let at = now + rules.deactivation_delay_ms;
                        a.deactivate_at_ms = Some(at);
                        s.version += 1;
                        let a = a.clone();
                        events.push(event(s, "deactivation_scheduled", &a, now));
                        Outcome::DeactivationScheduled { at_ms: at }
                    }
                },
                _ => Outcome::NotActive,
            }
        }
        Command::Activate { key, reason, state, ttl_ms, level } => {
            let a = Activation {
                key: key.clone(),
                state,
                reason,
                source: Source::Manual,
                since_ms: now,
                until_ms: ttl_ms.map(|t| now + t),
                lapses_ms: None,
                deactivate_at_ms: None,
                backpressure_level: level,
                event_id: String::new(),
            };
            activate(s, a, rules, now, &mut events)
        }
        Command::Deactivate { key } => match s.activations.remove(&key) {
            Some(a) => {
                s.version += 1;
                events.push(event(s, "deactivated", &a, now));
                Outcome::Deactivated { count: 1 }
            }
            None => Outcome::NotActive,
        },
        Command::Reset { key, reason } => crate::reset::apply(s, key, reason, now, &mut events),
        Command::Expire => {
            let due: Vec<String> = s
                .activations
                .values()
                .filter(|a| a.ends_ms().is_some_and(|t| t <= now))
                .map(|a| a.key.clone())
                .collect();
            for key in &due {
                if let Some(a) = s.activations.remove(key) {
                    events.push(event(s, "deactivated", &a, now));
                }
            }
            let resets_left = crate::reset::expire(s, now);
            if !due.is_empty() || resets_left {
                s.version += 1;
            }
            Outcome::Deactivated { count: due.len() }
        }
    };
    (outcome, events)
}

fn activate(s: &mut State, mut a: Activation, rules: &Rules, now: u64, events: &mut Vec<Event>) -> Outcome {
    if s.recent_activations_ms.len() >= rules.max_activations_per_hour as usize {
        events.push(event(s, "rate_limited", &a, now));
        return Outcome::RateLimited;
    }
    s.recent_activations_ms.push(now);
    s.last_activated_ms.insert(a.key.clone(), now);
    let e = event(s, "activated", &a, now);
    a.event_id = e.event_id.clone();
    s.activations.insert(a.key.clone(), a);
    s.version += 1;
    events.push(e.clone());
    Outcome::Activated { event_id: e.event_id }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn firing(key: &str, fp: &str, starts: u64, level: Option<f64>) -> Command {
        Command::AlertFiring {
            key: key.into(),
            reason: "backpressure_critical".into(),
            fingerprint: fp.into(),
            starts_ms: starts,
            level,
        }
    }
    fn resolved(key: &str, fp: &str, ends: u64) -> Command {
        Command::AlertResolved {
            key: key.into(),
            reason: "backpressure_critical".into(),
            fingerprint: fp.into(),
            ends_ms: ends,
        }
    }

    #[test]
    fn firing_activates_and_holds_until_resolved_plus_delay() {
        let r = Rules::default();
        let mut s = State::default();
        assert!(matches!(apply(&mut s, firing("ws", "f1", 0, Some(0.97)), &r, 1_000).0, Outcome::Activated { .. }));
        assert_eq!(apply(&mut s, Command::Expire, &r, 1_000 + 200_000).0, Outcome::Deactivated { count: 0 });
        assert_eq!(
            apply(&mut s, resolved("ws", "f1", 300_000), &r, 300_000).0,
            Outcome::DeactivationScheduled { at_ms: 420_000 }
        );
        // A duplicate resolve does not move it.
        assert_eq!(
            apply(&mut s, resolved("ws", "f1", 300_000), &r, 310_000).0,
            Outcome::DeactivationScheduled { at_ms: 420_000 }
        );
        assert_eq!(apply(&mut s, Command::Expire, &r, 419_999).0, Outcome::Deactivated { count: 0 });
        assert_eq!(apply(&mut s, Command::Expire, &r, 420_000).0, Outcome::Deactivated { count: 1 });
        assert!(s.activations.is_empty());
    }

    #[test]
    fn a_new_firing_cancels_the_scheduled_deactivation() {
        let r = Rules::default();
        let mut s = State::default();
        apply(&mut s, firing("ws", "f1", 0, None), &r, 0);
        apply(&mut s, resolved("ws", "f1", 10_000), &r, 10_000);
        assert_eq!(apply(&mut s, firing("ws", "f2", 20_000, None), &r, 20_000).0, Outcome::Refreshed);
        assert_eq!(s.activations["ws"].deactivate_at_ms, None);
    }

    #[test]
    fn a_lost_resolve_lapses_after_max_active() {
        let r = Rules::default();
        let mut s = State::default();
        apply(&mut s, firing("ws", "f1", 0, None), &r, 0);
        assert_eq!(apply(&mut s, Command::Expire, &r, r.max_active_ms).0, Outcome::Deactivated { count: 1 });
    }

    #[test]
    fn a_firing_delivered_after_its_resolve_is_ignored() {
        let r = Rules::default();
        let mut s = State::default();
        apply(&mut s, resolved("ws", "f1", 5_000), &r, 5_000);
        assert_eq!(apply(&mut s, firing("ws", "f1", 1_000, None), &r, 6_000).0, Outcome::Stale);
        assert!(s.activations.is_empty());
    }

    #[test]
    fn cooldown_and_hourly_cap_including_manual_activations() {
        let r = Rules { max_activations_per_hour: 2, ..Rules::default() };
        let mut s = State::default();
        apply(&mut s, firing("ws", "f1", 0, None), &r, 0);
        apply(&mut s, Command::Deactivate { key: "ws".into() }, &r, 1_000);
        assert_eq!(
            apply(&mut s, firing("ws", "f2", 2_000, None), &r, 2_000).0,
            Outcome::Cooldown { retry_in_ms: 28_000 }
        );
        let manual = Command::Activate {
            key: "chat".into(),
            reason: "manual".into(),
            state: Forced::ForcedOpen,
            ttl_ms: None,
            level: None,
        };
        assert!(matches!(apply(&mut s, manual.clone(), &r, 3_000).0, Outcome::Activated { .. }));
        assert_eq!(apply(&mut s, firing("ws", "f3", 40_000, None), &r, 40_000).0, Outcome::RateLimited);
        assert_eq!(s.events.back().unwrap().kind, "rate_limited");
        // An hour after the first one, there is room again.
        assert!(matches!(apply(&mut s, firing("ws", "f4", 0, None), &r, HOUR_MS + 1).0, Outcome::Activated { .. }));
    }

    #[test]
    fn backpressure_levels_use_hysteresis() {
        let r = Rules::default();
        let mut s = State::default();
        assert_eq!(apply(&mut s, firing("ws", "f1", 0, Some(0.90)), &r, 0).0, Outcome::BelowThreshold);
        assert!(matches!(apply(&mut s, firing("ws", "f1", 0, Some(0.96)), &r, 0).0, Outcome::Activated { .. }));
        assert_eq!(apply(&mut s, firing("ws", "f1", 0, Some(0.90)), &r, 1_000).0, Outcome::Refreshed);
        assert_eq!(
            apply(&mut s, firing("ws", "f1", 0, Some(0.80)), &r, 2_000).0,
            Outcome::DeactivationScheduled { at_ms: 122_000 }
        );
    }

    #[test]
    fn manual_ttl_expires() {
        let r = Rules::default();
        let mut s = State::default();
        let cmd = Command::Activate {
            key: "*".into(),
            reason: "drill".into(),
            state: Forced::ForcedOpen,
            ttl_ms: Some(5_000),
            level: None,
        };
        apply(&mut s, cmd, &r, 0);
        assert_eq!(s.activations["*"].ends_ms(), Some(5_000));
        assert_eq!(apply(&mut s, Command::Expire, &r, 5_000).0, Outcome::Deactivated { count: 1 });
    }

    #[test]
    fn state_round_trips_through_json() {
        let r = Rules::default();
        let mut s = State::default();
        apply(&mut s, firing("ws", "f1", 0, Some(0.99)), &r, 0);
        let back: State = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
