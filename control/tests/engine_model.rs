//! The activation engine against a small reference model, on random histories: several alerts
//! on several keys firing and resolving over episodes, each notification possibly delivered twice
//! and late (as an Alertmanager HA pair delivers them), mixed with operators' activations (with
//! and without TTL), deactivations and clock advances.
//!
//! The model keeps every notification delivered and derives what it knows of each alert from the
//! whole list (the newest episode by `startsAt`, a resolve after the firings of its episode, the
//! hysteresis folded over that episode's firings), then applies the rules per key. Invariants
//! after every step: a key is forced open exactly when the model says; every event is published
//! once (unique ids, activated/deactivated alternating per key, as many as the model's
//! transitions); versions strictly grow whenever what proxies see changes, and never go back.
// Test code throughout: clippy.toml lets it unwrap, expect and panic.
#![cfg(test)]

use std::collections::{BTreeMap, HashSet};

use floodgate_control::engine::{self, Command, Forced, Outcome, Rules, State};
use proptest::prelude::*;

const T0: u64 = 1_795_341_600_000;
const KEYS: [&str; 3] = ["a", "b", "*"];
/// Alert `i` belongs to key `ALERT_KEY[i]`.
const ALERT_KEY: [usize; 4] = [0, 0, 1, 2];
const LEVELS: [Option<f64>; 4] = [None, Some(0.97), Some(0.90), Some(0.80)];
const STEPS_MS: [u64; 9] = [0, 0, 1_000, 15_000, 31_000, 130_000, 600_000, 1_900_000, 3_600_000];
const TTLS: [Option<u64>; 3] = [None, Some(20_000), Some(300_000)];

fn rules() -> Rules {
    Rules {
        cooldown_ms: 30_000,
        deactivation_delay_ms: 120_000,
        max_activations_per_hour: 3,
        max_active_ms: 3_600_000,
        activate_level: 0.95,
        deactivate_level: 0.85,
    }
}

#[derive(Clone, Copy, Debug)]
enum Action {
    Notify { alert: usize, episode: u64, resolved: bool, level: usize },
    Activate { key: usize, ttl: usize },
    Deactivate { key: usize },
    Tick,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => (0..4usize, 0..3u64, any::<bool>(), 0..4usize)
            .prop_map(|(alert, episode, resolved, level)| Action::Notify { alert, episode, resolved, level }),
        1 => (0..3usize, 0..3usize).prop_map(|(key, ttl)| Action::Activate { key, ttl }),
        1 => (0..3usize).prop_map(|key| Action::Deactivate { key }),
        1 => Just(Action::Tick),
    ]
}

/// Steps: (clock advance, action, a second copy delivered this many steps later).
fn history() -> impl Strategy<Value = Vec<(usize, Action, Option<usize>)>> {
    proptest::collection::vec((0..STEPS_MS.len(), action(), proptest::option::of(0..6usize)), 1..50)
}

/// The deliveries in order, each with when it was sent (a resolve's `endsAt`): duplicates of
/// notifications land later (an HA peer, a retry). An alert may fire again with the `startsAt`
/// of an episode that resolved (Prometheus restores it after an outage longer than its `endsAt`).
fn deliveries(steps: &[(usize, Action, Option<usize>)]) -> Vec<(u64, Action, u64)> {
    let mut sent = T0;
    let mut out: Vec<(u64, Action, u64)> = steps
        .iter()
        .map(|(dt, a, _)| {
            sent += STEPS_MS[*dt];
            (STEPS_MS[*dt], *a, sent)
        })
        .collect();
    for (i, (_, a, dup)) in steps.iter().enumerate().rev() {
        if let (Action::Notify { .. }, Some(lag)) = (a, dup) {
            let at = (i + 1 + lag).min(out.len());
            let original = out[i].2;
            out.insert(at, (0, *a, original));
        }
    }
    out
}

fn starts(alert: usize, episode: u64) -> u64 {
    T0 - 1_000_000 + episode * 600_000 + alert as u64 * 1_000
}

#[derive(Clone, Copy, PartialEq)]
enum Cause {
    Notification,
    Tick,
}

#[derive(Default, Clone, Debug)]
struct KeyModel {
    active: bool,
    /// `Some(until)` while a manual activation holds.
    manual: Option<Option<u64>>,
    alert_hold: bool,
    deactivate_at: Option<u64>,
    activations: usize,
    deactivations: usize,
}

#[derive(Clone, Copy, Debug)]
struct Delivered {
    alert: usize,
    starts: u64,
    resolved: bool,
    level: Option<f64>,
    arrival: u64,
    order: u64,
    applied: bool,
}

#[derive(Default)]
struct Model {
    /// (alert, starts, resolved, level, arrival, order, applied) in arrival order. `order` is a
    /// resolve's `endsAt`; for a firing that opens a resolved episode again its arrival less
    /// `REFIRE_AFTER_MS` (sent at the latest), else 0; what is known of an alert is its greatest
    /// (starts, order, resolved). `applied`: it was newer than what was known when it arrived (a
    /// firing of an open episode always is).
    delivered: Vec<Delivered>,
    dismissed: BTreeMap<usize, u64>,
    keys: [KeyModel; 3],
    last_activated: BTreeMap<usize, u64>,
    recent: Vec<u64>,
}

impl Model {
    /// The newest episode known of `alert`, and whether it resolved.
    fn newest_order(&self, alert: usize) -> Option<(u64, u64, bool)> {
        self.delivered.iter().filter(|d| d.alert == alert).map(|d| (d.starts, d.order, d.resolved)).max()
    }

    fn newest(&self, alert: usize) -> Option<(u64, bool)> {
        self.newest_order(alert).map(|(starts, _, resolved)| (starts, resolved))
    }

    fn deliver(&mut self, alert: usize, starts: u64, resolved: bool, level: Option<f64>, now: u64, sent: u64) {
        let order = if resolved { sent } else { now.saturating_sub(engine::REFIRE_AFTER_MS) };
        let known = self.newest_order(alert);
        let applied = match known {
            None => true,
            Some((s, _, false)) if !resolved && s == starts => true,
            Some(k) => (starts, order, resolved) > k,
        };
        // Only a firing that opens a resolved episode again is ordered by its arrival; the
        // others (a new episode, repeats) come before any resolve of their episode.
        let reopens = !resolved && applied && known.is_some_and(|(s, _, r)| r && s == starts);
        let order = if resolved || reopens { order } else { 0 };
        self.delivered.push(Delivered { alert, starts, resolved, level, arrival: now, order, applied });
    }

    fn fires(&self, alert: usize, r: &Rules, now: u64) -> bool {
        let Some((starts, false)) = self.newest(alert) else { return false };
        if self.dismissed.get(&alert).is_some_and(|&d| starts <= d) {
            return false;
        }
        // The hysteresis folds the firings applied since the episode last opened.
        let of_episode: Vec<&Delivered> =
            self.delivered.iter().filter(|d| d.alert == alert && d.starts == starts && d.applied).collect();
        let opened = of_episode.iter().rposition(|d| d.resolved).map_or(0, |i| i + 1);
        let (mut hot, mut seen) = (false, 0);
        for d in &of_episode[opened..] {
            hot = match d.level {
                None => true,
                Some(l) if l >= r.activate_level => true,
                Some(l) if l < r.deactivate_level => false,
                Some(_) => hot,
            };
            seen = d.arrival;
        }
        hot && now < seen + r.max_active_ms
    }

    fn key_fires(&self, key: usize, r: &Rules, now: u64) -> bool {
        (0..ALERT_KEY.len()).any(|a| ALERT_KEY[a] == key && self.fires(a, r, now))
    }

    fn room(&mut self, r: &Rules, now: u64) -> bool {
        self.recent.retain(|&t| t + engine::HOUR_MS > now);
        self.recent.len() < r.max_activations_per_hour as usize
    }

    fn record(&mut self, key: usize, now: u64) {
        self.recent.push(now);
        self.last_activated.insert(key, now);
        self.keys[key].activations += 1;
    }

    fn settle(&mut self, key: usize, r: &Rules, now: u64, cause: Cause) {
        let firing = self.key_fires(key, r, now);
        if !self.keys[key].active {
            let cooled = self.last_activated.get(&key).is_none_or(|&t| now >= t + r.cooldown_ms);
            if firing && cooled && self.room(r, now) {
                self.record(key, now);
                let k = &mut self.keys[key];
                (k.active, k.manual, k.alert_hold, k.deactivate_at) = (true, None, true, None);
            }
            return;
        }
        let k = &mut self.keys[key];
        if k.manual.is_some_and(|u| u.is_some_and(|u| u <= now)) {
            k.manual = None;
        }
        if firing {
            k.alert_hold = true;
            k.deactivate_at = None;
        } else if k.alert_hold {
            match k.deactivate_at {
                Some(at) if at <= now => (k.alert_hold, k.deactivate_at) = (false, None),
                Some(_) => {}
                None if cause == Cause::Notification => k.deactivate_at = Some(now + r.deactivation_delay_ms),
                None => k.alert_hold = false,
            }
        }
        if k.manual.is_none() && !k.alert_hold {
            k.active = false;
            k.deactivations += 1;
        }
    }

    fn tick(&mut self, r: &Rules, now: u64) {
        let active: Vec<usize> = (0..KEYS.len()).filter(|&k| self.keys[k].active).collect();
        for key in active {
            self.settle(key, r, now, Cause::Tick);
        }
        // Held-back keys: the one whose alert fired first goes first; ties by key name.
        let mut waiting: Vec<(u64, &str, usize)> = (0..KEYS.len())
            .filter(|&k| !self.keys[k].active)
            .filter_map(|k| {
                let first = (0..ALERT_KEY.len())
                    .filter(|&a| ALERT_KEY[a] == k && self.fires(a, r, now))
                    .filter_map(|a| self.newest(a).map(|n| n.0))
                    .min()?;
                Some((first, KEYS[k], k))
            })
            .collect();
        waiting.sort();
        let waiting: Vec<usize> = waiting.into_iter().map(|w| w.2).collect();
        for key in waiting {
            self.settle(key, r, now, Cause::Tick);
        }
    }

    fn act(&mut self, a: Action, r: &Rules, now: u64, sent: u64) {
        match a {
            Action::Notify { alert, episode, resolved, level } => {
                let level = if resolved { None } else { LEVELS[level] };
                self.deliver(alert, starts(alert, episode), resolved, level, now, sent);
                self.settle(ALERT_KEY[alert], r, now, Cause::Notification);
            }
            Action::Activate { key, ttl } => {
                let until = TTLS[ttl].map(|t| now + t);
                if self.keys[key].active {
                    self.keys[key].manual = Some(until);
                } else if self.room(r, now) {
                    self.record(key, now);
                    let k = &mut self.keys[key];
                    (k.active, k.manual, k.alert_hold, k.deactivate_at) = (true, Some(until), false, None);
                    self.settle(key, r, now, Cause::Tick);
                }
            }
            Action::Deactivate { key } => {
                for alert in (0..ALERT_KEY.len()).filter(|&a| ALERT_KEY[a] == key) {
                    if let Some((starts, false)) = self.newest(alert) {
                        self.dismissed.insert(alert, starts);
                    }
                }
                let k = &mut self.keys[key];
                if k.active {
                    (k.active, k.manual, k.alert_hold, k.deactivate_at) = (false, None, false, None);
                    k.deactivations += 1;
                }
            }
            Action::Tick => {}
        }
    }
}

fn command(a: Action, sent: u64) -> Command {
    match a {
        Action::Notify { alert, episode, resolved: false, level } => Command::AlertFiring {
            key: KEYS[ALERT_KEY[alert]].into(),
            reason: "backpressure_critical".into(),
            fingerprint: format!("fp{alert}"),
            starts_ms: starts(alert, episode),
            level: LEVELS[level],
        },
        Action::Notify { alert, episode, resolved: true, .. } => Command::AlertResolved {
            key: KEYS[ALERT_KEY[alert]].into(),
            reason: "backpressure_critical".into(),
            fingerprint: format!("fp{alert}"),
            starts_ms: starts(alert, episode),
            ends_ms: sent,
        },
        Action::Activate { key, ttl } => Command::Activate {
            key: KEYS[key].into(),
            reason: "drill".into(),
            state: Forced::ForcedOpen,
            ttl_ms: TTLS[ttl],
            level: None,
        },
        Action::Deactivate { key } => Command::Deactivate { key: KEYS[key].into() },
        Action::Tick => Command::Expire,
    }
}

/// The engine's side of the run: applies commands and checks the event and version invariants.
struct Run {
    s: State,
    r: Rules,
    ids: HashSet<String>,
    active_by_events: BTreeMap<String, bool>,
    counts: BTreeMap<String, (usize, usize)>,
}

impl Run {
    fn apply(&mut self, cmd: Command, now: u64) -> Result<Outcome, TestCaseError> {
        let (before, v0) = (engine::projection(&self.s, &self.r), self.s.version);
        let (outcome, events) = engine::apply(&mut self.s, cmd.clone(), &self.r, now);
        let after = engine::projection(&self.s, &self.r);
        prop_assert!(self.s.version >= v0, "version went back on {cmd:?}");
        if after != before {
            prop_assert!(self.s.version > v0, "{cmd:?} changed what proxies see without a new version");
        }
        for e in events {
            prop_assert!(self.ids.insert(e.event_id.clone()), "event {} published twice", e.event_id);
            let active = self.active_by_events.entry(e.key.clone()).or_insert(false);
            let c = self.counts.entry(e.key.clone()).or_default();
            match e.kind.as_str() {
                "activated" => {
                    prop_assert!(!*active, "{} activated twice in a row", e.key);
                    (*active, c.0) = (true, c.0 + 1);
                }
                "deactivated" => {
                    prop_assert!(*active, "{} deactivated while not active", e.key);
                    (*active, c.1) = (false, c.1 + 1);
                }
                other => prop_assert!(false, "{other} events are kept, not published"),
            }
        }
        Ok(outcome)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_engine_follows_the_reference_model(steps in history()) {
        let r = rules();
        let mut run = Run {
            s: State::new(T0, 0),
            r: r.clone(),
            ids: HashSet::new(),
            active_by_events: BTreeMap::new(),
            counts: BTreeMap::new(),
        };
        let mut model = Model::default();
        let mut now = T0;
        for (i, (dt, a, sent)) in deliveries(&steps).into_iter().enumerate() {
            now += dt;
            run.apply(Command::Expire, now)?;
            model.tick(&r, now);
            let outcome = run.apply(command(a, sent), now)?;
            model.act(a, &r, now, sent);
            run.apply(Command::Expire, now)?;
            model.tick(&r, now);
            let snapshot = engine::snapshot(&run.s, &r, now);
            for (k, name) in KEYS.iter().enumerate() {
                let m = &model.keys[k];
                let engine_active = run.s.activations.contains_key(*name);
                prop_assert_eq!(engine_active, m.active,
                    "step {}: {:?} -> {:?}: key {} engine {} model {:?}\n{:#?}", i, a, outcome, name, engine_active, m, run.s);
                prop_assert_eq!(snapshot.breakers.iter().any(|b| b.key == *name), m.active, "snapshot of {} at step {}", name, i);
                let (on, off) = run.counts.get(*name).copied().unwrap_or_default();
                prop_assert_eq!((on, off), (m.activations, m.deactivations), "events of {}", name);
            }
        }
    }
}
