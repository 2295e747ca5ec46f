//! The activation rules, as pure functions over [`State`]: both stores run the same code, so the
//! memory store and every Redis replica decide alike. Time is an input (ms since the epoch).
//!
//! Alerts are tracked one by one ([`Track`], by fingerprint, with their `startsAt`), and
//! notifications are ordered by what they say, not by when they arrive: a later `startsAt` is a
//! later episode of the alert, and within one episode a resolve comes after every firing. A key
//! is held by its alerts while any of them fires ([`Track::holds`]); by an operator while a manual
//! activation holds ([`Manual`]). The two holds are kept apart on the [`Activation`]: the key is
//! forced open while either holds, and alert levels and resolves never end a manual hold.
//!
//! The snapshot's version is bumped by [`apply`] whenever what proxies see ([`projection`])
//! changes, and only then.

use std::collections::{BTreeMap, VecDeque};

use floodgate_core::wire::{EntryState, SnapshotBody, SnapshotEntry, MAX_SNAPSHOT_BYTES};
use serde::{Deserialize, Serialize};

/// How many events `GET /api/v1/breakers` remembers.
pub(crate) const EVENTS_KEPT: usize = 100;
/// How many alerts (by fingerprint) are tracked; beyond, the resolved ones that ended first and
/// then the firing ones seen least recently are forgotten.
pub const MAX_TRACKS: usize = 2_000;
pub const HOUR_MS: u64 = 3_600_000;
/// The longest a notification is assumed to take to arrive (an HA peer's copy waits its
/// `peer_timeout` per position, a retry its backoff). A firing of an episode that was resolved
/// at `endsAt` and that arrives more than this after it was sent after the resolve: the alert
/// fires again with the same `startsAt` (Prometheus restores it after an outage longer than
/// the alert's `endsAt`), so the episode is open again. Alertmanager's webhook does not expose a
/// firing alert's `endsAt` (it sends the zero time), so the arrival is all there is to go by.
pub const REFIRE_AFTER_MS: u64 = 60_000;

#[derive(Clone, Debug, PartialEq)]
pub struct Rules {
    pub cooldown_ms: u64,
    pub deactivation_delay_ms: u64,
    pub max_activations_per_hour: u32,
    pub max_active_ms: u64,
    /// Hysteresis on backpressure levels: an alert counts from >= this...
    pub activate_level: f64,
    /// ...until its level falls below this.
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

/// One alert, by fingerprint: the newest episode known of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Track {
    pub key: String,
    pub reason: String,
    /// The episode's `startsAt`.
    pub starts_ms: u64,
    /// The episode's `endsAt` once a resolve for it arrived (the latest of them).
    pub resolved_ms: Option<u64>,
    /// When the episode opened again after a resolve (see [`REFIRE_AFTER_MS`]): that firing's
    /// arrival less the delay (when it was sent at the latest); a resolve whose `endsAt` is before
    /// it is older than that firing (the late copy of the earlier resolve). 0 for an episode that
    /// never resolved: its resolves are never judged by clocks (the sender's and this service's
    /// may differ by a little).
    #[serde(default)]
    pub fired_ms: u64,
    /// When a firing notification of this episode last arrived (the lapse counts from here).
    pub seen_ms: u64,
    /// Hysteresis: counts from a level >= activate_level (or no level) until one < deactivate_level.
    pub hot: bool,
    pub level: Option<f64>,
    /// An operator deactivated its key while it fired: it counts again from its next episode.
    pub dismissed: bool,
}

impl Track {
    /// It asks for its key to be held (ignoring the lapse).
    pub fn wants(&self) -> bool {
        self.resolved_ms.is_none() && self.hot && !self.dismissed
    }

    pub fn lapses_ms(&self, rules: &Rules) -> u64 {
        self.seen_ms.saturating_add(rules.max_active_ms)
    }

    /// It holds its key at `now`.
    pub fn holds(&self, rules: &Rules, now: u64) -> bool {
        self.wants() && now < self.lapses_ms(rules)
    }
}

/// An operator's activation: ends only by a manual deactivation or its TTL.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manual {
    pub state: Forced,
    pub reason: String,
    pub until_ms: Option<u64>,
    pub level: Option<f64>,
}

/// The alerts' hold on a key: while some alert of the key fires, then until `deactivate_at_ms`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertHold {
    pub reason: String,
    pub level: Option<f64>,
    /// Set when the last firing alert resolved (or its level fell); a new firing cancels it.
    pub deactivate_at_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Activation {
    pub key: String,
    /// Who started it.
    pub source: Source,
    pub since_ms: u64,
    pub event_id: String,
    pub manual: Option<Manual>,
    pub alert: Option<AlertHold>,
}

impl Activation {
    /// What proxies are told: the operator's state and reason while a manual hold is there.
    pub fn state(&self) -> Forced {
        self.manual.as_ref().map_or(Forced::ForcedOpen, |m| m.state)
    }

    pub fn reason(&self) -> &str {
        match (&self.manual, &self.alert) {
            (Some(m), _) => &m.reason,
            (None, Some(h)) => &h.reason,
            (None, None) => "",
        }
    }

    pub fn level(&self) -> Option<f64> {
        match (&self.manual, &self.alert) {
            (Some(m), h) => m.level.or(h.as_ref().and_then(|h| h.level)),
            (None, Some(h)) => h.level,
            (None, None) => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub event_id: String,
    /// `activated`, `deactivated`, `deactivation_scheduled`, `rate_limited`.
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
    /// Bumped whenever the snapshot proxies see changes (see [`floodgate_core::version`]).
    pub version: u64,
    pub activations: BTreeMap<String, Activation>,
    /// Alert fingerprint -> its newest known episode.
    #[serde(default)]
    pub alerts: BTreeMap<String, Track>,
    pub last_activated_ms: BTreeMap<String, u64>,
    /// Times of the activations of the last hour (the hourly cap).
    pub recent_activations_ms: Vec<u64>,
    pub events: VecDeque<Event>,
    pub event_seq: u64,
    /// When `*` was last deactivated (the original status object's `deactivated_at`).
    #[serde(default)]
    pub wildcard_deactivated_ms: Option<u64>,
    /// Fleet-wide resets still in the snapshot (see `crate::reset`).
    #[serde(default)]
    pub resets: Vec<crate::reset::Reset>,
    /// Drains still in the snapshot (see `crate::drain`).
    #[serde(default)]
    pub drains: Vec<crate::drain::Drain>,
}

impl State {
    /// An empty state whose versions start at the epoch `now_ms`, above `floor` (the highest
    /// version this process has seen, for a store that lost its data).
    pub fn new(now_ms: u64, floor: u64) -> State {
        State { version: floodgate_core::version::next(floor, now_ms), ..State::default() }
    }
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
        starts_ms: u64,
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
    /// Every proxy closes its upgraded streams to `key` (or all, `*`) gradually, until it ends.
    Drain(crate::drain::Request),
    /// Ends what is due, and activates held-back alerts the rules now allow.
    Expire,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    Activated {
        event_id: String,
    },
    /// The key was already active: nothing new (no event, no count against the cap).
    AlreadyActive,
    /// A firing alert of an active key: holds it (cancels a scheduled deactivation).
    Refreshed,
    /// Held back by the cooldown; remembered, activates then if it still fires.
    Cooldown {
        retry_in_ms: u64,
    },
    /// Held back by the hourly cap; remembered, activates then if it still fires.
    RateLimited,
    /// Refused: the snapshot would outgrow what proxies accept.
    SnapshotFull,
    BelowThreshold,
    /// Older than what is known of this alert (or a duplicate): changes nothing.
    Stale,
    DeactivationScheduled {
        at_ms: u64,
    },
    /// A resolve recorded; other alerts (or an operator) still hold the key.
    StillHeld,
    Deactivated {
        count: usize,
    },
    NotActive,
    Reset {
        event_id: String,
    },
    /// A drain holds (or replaced the key's drain) until `until`.
    Draining {
        event_id: String,
        per_second: u32,
        until: String,
    },
}

/// What proxies see of one key: state, reason, end (ms; `None` = until ended).
pub type Projected = (Forced, String, Option<u64>);

/// When each key's alert hold ends if nothing else arrives: the latest lapse of its alerts,
/// rounded up to a whole second (what the snapshot's `until` can say), so that duplicates of a
/// notification arriving within one second do not change the snapshot nor wake the fleet.
fn lapses_by_key<'a>(s: &'a State, rules: &Rules) -> BTreeMap<&'a str, u64> {
    let mut out: BTreeMap<&str, u64> = BTreeMap::new();
    for t in s.alerts.values().filter(|t| t.wants()) {
        let e = out.entry(t.key.as_str()).or_insert(0);
        *e = (*e).max(t.lapses_ms(rules).div_ceil(1000).saturating_mul(1000));
    }
    out
}

fn ends_ms(a: &Activation, lapses: &BTreeMap<&str, u64>) -> Option<u64> {
    let manual = a.manual.as_ref().map(|m| m.until_ms);
    let alert = a
        .alert
        .as_ref()
        .map(|h| Some(h.deactivate_at_ms.unwrap_or_else(|| lapses.get(a.key.as_str()).copied().unwrap_or(0))));
    match (manual, alert) {
        (Some(None), _) | (_, Some(None)) => None,
        (Some(Some(m)), Some(Some(h))) => Some(m.max(h)),
        (Some(Some(t)), None) | (None, Some(Some(t))) => Some(t),
        (None, None) => Some(0),
    }
}

/// Every activation's end if nothing else happens (what the snapshot's `until` says).
pub fn ends(s: &State, rules: &Rules) -> BTreeMap<String, Option<u64>> {
    let lapses = lapses_by_key(s, rules);
    s.activations.iter().map(|(k, a)| (k.clone(), ends_ms(a, &lapses))).collect()
}

/// What proxies see: the version is bumped exactly when this changes.
pub fn projection(s: &State, rules: &Rules) -> BTreeMap<String, Projected> {
    let lapses = lapses_by_key(s, rules);
    s.activations.iter().map(|(k, a)| (k.clone(), (a.state(), a.reason().to_string(), ends_ms(a, &lapses)))).collect()
}

/// The snapshot body proxies poll (entries that ended but were not expired yet are left out).
pub fn snapshot(s: &State, rules: &Rules, now: u64) -> SnapshotBody {
    let lapses = lapses_by_key(s, rules);
    let breakers = s
        .activations
        .values()
        .filter_map(|a| {
            let ends = ends_ms(a, &lapses);
            ends.is_none_or(|t| t > now).then(|| SnapshotEntry {
                key: a.key.clone(),
                state: EntryState::Forced(a.state()),
                reason: Some(a.reason().to_string()),
                since: Some(crate::rfc3339(a.since_ms)),
                until: ends.map(crate::rfc3339),
                event_id: Some(a.event_id.clone()),
                per_second: None,
            })
        })
        .chain(crate::reset::entries(s, now))
        .chain(crate::drain::entries(s, now))
        .collect();
    SnapshotBody { version: s.version, generated_at: Some(crate::rfc3339(now)), breakers }
}

pub(crate) fn snapshot_len(s: &State, rules: &Rules, now: u64) -> usize {
    serde_json::to_vec(&snapshot(s, rules, now)).map_or(usize::MAX, |b| b.len())
}

fn event(s: &mut State, kind: &str, key: &str, reason: &str, source: Source, level: Option<f64>, now: u64) -> Event {
    let e = Event {
        event_id: format!("{}-{}", now, s.event_seq),
        kind: kind.to_string(),
        key: key.to_string(),
        reason: reason.to_string(),
        source,
        backpressure_level: level,
        timestamp_ms: now,
    };
    s.event_seq += 1;
    if kind == "deactivated" && key == floodgate_core::wire::WILDCARD {
        s.wildcard_deactivated_ms = Some(now);
    }
    remember(s, e.clone());
    e
}

/// Keeps `e` among the recent events `GET /api/v1/breakers` lists (the last [`EVENTS_KEPT`]).
pub(crate) fn remember(s: &mut State, e: Event) {
    s.events.push_back(e);
    while s.events.len() > EVENTS_KEPT {
        s.events.pop_front();
    }
}

/// Applies one command. Returns what happened and the events to publish (each once).
pub fn apply(s: &mut State, cmd: Command, rules: &Rules, now: u64) -> (Outcome, Vec<Event>) {
    s.recent_activations_ms.retain(|&t| t.saturating_add(HOUR_MS) > now);
    // Only the cooldown (and the hour's cap window, which the original status object counts
    // over) looks at when a key was last activated: older entries go, so one entry per key ever
    // activated does not pile up in the state (and in every Redis round trip).
    let keep_ms = rules.cooldown_ms.max(HOUR_MS);
    s.last_activated_ms.retain(|_, t| t.saturating_add(keep_ms) > now);
    let before = projection(s, rules);
    let mut events = vec![];
    let outcome = match cmd {
        Command::AlertFiring { key, reason, fingerprint, starts_ms, level } => {
            alert_firing(s, rules, now, &mut events, Firing { key, reason, fingerprint, starts_ms, level })
        }
        Command::AlertResolved { key, reason, fingerprint, starts_ms, ends_ms } => {
            alert_resolved(s, rules, now, &mut events, key, reason, fingerprint, starts_ms, ends_ms)
        }
        Command::Activate { key, reason, state, ttl_ms, level } => {
            let until_ms = ttl_ms.map(|t| now.saturating_add(t));
            manual_activate(s, rules, now, &mut events, key, Manual { state, reason, until_ms, level })
        }
        Command::Reset { key, reason } => crate::reset::apply(s, key, reason, now, &mut events),
        Command::Drain(request) => crate::drain::apply(s, rules, request, now, &mut events),
        Command::Deactivate { key } => manual_deactivate(s, now, &mut events, &key),
        Command::Expire => {
            // Resets and drains are not part of the projection below: their leaving moves the version.
            if crate::reset::expire(s, now) | crate::drain::expire(s, now) {
                s.version = floodgate_core::version::next(s.version, now);
            }
            expire(s, rules, now, &mut events)
        }
    };
    prune_tracks(s);
    if projection(s, rules) != before {
        s.version = floodgate_core::version::next(s.version, now);
    }
    (outcome, events)
}

struct Firing {
    key: String,
    reason: String,
    fingerprint: String,
    starts_ms: u64,
    level: Option<f64>,
}

fn hot_after(hot: bool, level: Option<f64>, rules: &Rules) -> bool {
    match level {
        None => true,
        Some(l) if l >= rules.activate_level => true,
        Some(l) if l < rules.deactivate_level => false,
        Some(_) => hot,
    }
}

fn alert_firing(s: &mut State, rules: &Rules, now: u64, events: &mut Vec<Event>, f: Firing) -> Outcome {
    let sent_by = now.saturating_sub(REFIRE_AFTER_MS);
    match s.alerts.get_mut(&f.fingerprint) {
        Some(t) if f.starts_ms < t.starts_ms => return Outcome::Stale,
        // A copy of a firing sent before the resolve (a late duplicate, a retry).
        Some(t) if f.starts_ms == t.starts_ms && t.resolved_ms.is_some_and(|r| sent_by <= r) => {
            return Outcome::Stale;
        }
        Some(t) if f.starts_ms == t.starts_ms && t.resolved_ms.is_some() => {
            // Sent after the resolve: the alert fires again with the same `startsAt` (Prometheus
            // restored it after an outage longer than its `endsAt`). The episode opens again.
            t.resolved_ms = None;
            t.fired_ms = sent_by;
            t.seen_ms = now;
            t.hot = hot_after(false, f.level, rules);
            t.level = f.level;
            t.reason = f.reason;
        }
        Some(t) if f.starts_ms == t.starts_ms => {
            // A repeat (or an HA peer's duplicate) of the episode: it still fires.
            t.seen_ms = t.seen_ms.max(now);
            t.hot = hot_after(t.hot, f.level, rules);
            t.level = f.level.or(t.level);
            t.reason = f.reason;
        }
        _ => {
            let t = Track {
                key: f.key.clone(),
                reason: f.reason,
                starts_ms: f.starts_ms,
                resolved_ms: None,
                fired_ms: 0,
                seen_ms: now,
                hot: hot_after(false, f.level, rules),
                level: f.level,
                dismissed: false,
            };
            s.alerts.insert(f.fingerprint.clone(), t);
        }
    }
    let (hot, dismissed) = s.alerts.get(&f.fingerprint).map_or((false, false), |t| (t.hot, t.dismissed));
    if let (Some(level), Some(h)) = (f.level, s.activations.get_mut(&f.key).and_then(|a| a.alert.as_mut())) {
        if hot {
            h.level = Some(level);
        }
    }
    let settled = settle(s, rules, now, events, &f.key, Cause::Notification);
    match settled {
        Some(o) => o,
        None if dismissed => Outcome::NotActive,
        None if !hot => Outcome::BelowThreshold,
        None => Outcome::Refreshed,
    }
}

#[allow(clippy::too_many_arguments)]
fn alert_resolved(
    s: &mut State,
    rules: &Rules,
    now: u64,
    events: &mut Vec<Event>,
    key: String,
    reason: String,
    fingerprint: String,
    starts_ms: u64,
    ends_ms: u64,
) -> Outcome {
    match s.alerts.get_mut(&fingerprint) {
        Some(t) if starts_ms < t.starts_ms => return Outcome::Stale,
        Some(t) if starts_ms == t.starts_ms && t.resolved_ms.is_some() => {
            // Already resolved: a duplicate, or a later end of it (kept: firings sent before it
            // are older).
            t.resolved_ms = t.resolved_ms.max(Some(ends_ms));
            return Outcome::Stale;
        }
        // It ended before the firing that opened the episode again was sent: that firing is newer.
        Some(t) if starts_ms == t.starts_ms && ends_ms < t.fired_ms => return Outcome::Stale,
        Some(t) if starts_ms == t.starts_ms => t.resolved_ms = Some(ends_ms),
        _ => {
            let t = Track {
                key: key.clone(),
                reason,
                starts_ms,
                resolved_ms: Some(ends_ms),
                fired_ms: 0,
                seen_ms: now,
                hot: false,
                level: None,
                dismissed: false,
            };
            s.alerts.insert(fingerprint, t);
        }
    }
    match settle(s, rules, now, events, &key, Cause::Notification) {
        Some(o) => o,
        None if s.activations.contains_key(&key) => Outcome::StillHeld,
        None => Outcome::NotActive,
    }
}

fn manual_activate(s: &mut State, rules: &Rules, now: u64, events: &mut Vec<Event>, key: String, m: Manual) -> Outcome {
    if let Some(a) = s.activations.get_mut(&key) {
        // Idempotent: takes the operator's hold (and TTL), no event, no count.
        a.manual = Some(m);
        return Outcome::AlreadyActive;
    }
    if let Some(refused) = room_for(s, rules, now, &key) {
        if refused == Outcome::RateLimited {
            event(s, "rate_limited", &key, &m.reason, Source::Manual, m.level, now);
        }
        return refused;
    }
    let e = event(s, "activated", &key, &m.reason, Source::Manual, m.level, now);
    let outcome = Outcome::Activated { event_id: e.event_id.clone() };
    events.push(e.clone());
    record_activation(s, now, &key);
    let a = Activation {
        key: key.clone(),
        source: Source::Manual,
        since_ms: now,
        event_id: e.event_id,
        manual: Some(m),
        alert: None,
    };
    s.activations.insert(key.clone(), a);
    // Alerts of the key held back until now join as the alert hold.
    settle(s, rules, now, events, &key, Cause::Tick);
    outcome
}

fn manual_deactivate(s: &mut State, now: u64, events: &mut Vec<Event>, key: &str) -> Outcome {
    // The operator's word: alerts firing now do not bring it back; their next episode may.
    for t in s.alerts.values_mut().filter(|t| t.key == key && t.resolved_ms.is_none()) {
        t.dismissed = true;
    }
    match s.activations.remove(key) {
        Some(a) => {
            events.push(event(s, "deactivated", key, a.reason(), Source::Manual, a.level(), now));
            Outcome::Deactivated { count: 1 }
        }
        None => Outcome::NotActive,
    }
}

fn expire(s: &mut State, rules: &Rules, now: u64, events: &mut Vec<Event>) -> Outcome {
    // Active keys first; then keys whose alerts were held back, those that fired first first
    // (under the hourly cap, the one that waited longest wins).
    let active: Vec<String> = s.activations.keys().cloned().collect();
    let mut waiting: BTreeMap<String, u64> = BTreeMap::new();
    for t in s.alerts.values().filter(|t| t.holds(rules, now) && !s.activations.contains_key(&t.key)) {
        let first = waiting.entry(t.key.clone()).or_insert(u64::MAX);
        *first = (*first).min(t.starts_ms);
    }
    let mut waiting: Vec<(u64, String)> = waiting.into_iter().map(|(k, t)| (t, k)).collect();
    waiting.sort();
    let mut count = 0;
    let mut holding = holders(s, rules, now, None);
    for key in active.into_iter().chain(waiting.into_iter().map(|(_, k)| k)) {
        let holder = holding.remove(&key);
        if let Some(Outcome::Deactivated { count: n }) = settle_with(s, rules, now, events, &key, Cause::Tick, holder) {
            count += n;
        }
    }
    Outcome::Deactivated { count }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// A notification for the key: alerts that stop firing schedule the deactivation, a refusal
    /// by the cap is an event.
    Notification,
    /// Time passed (or an operator acted): alerts that stopped firing by now lapsed.
    Tick,
}

/// The refusal, if `key` may not be activated now (cap; snapshot size). Cooldown is the caller's.
fn room_for(s: &State, rules: &Rules, now: u64, key: &str) -> Option<Outcome> {
    if s.recent_activations_ms.len() >= rules.max_activations_per_hour as usize {
        return Some(Outcome::RateLimited);
    }
    // An entry takes at most this much: key and reason are bounded by the API (256 + 128 bytes,
    // escaped at most 6x) plus the fixed fields.
    let entry = 6 * (key.len() + 128) + 256;
    if snapshot_len(s, rules, now).saturating_add(entry) > MAX_SNAPSHOT_BYTES {
        return Some(Outcome::SnapshotFull);
    }
    None
}

fn record_activation(s: &mut State, now: u64, key: &str) {
    s.recent_activations_ms.push(now);
    s.last_activated_ms.insert(key.to_string(), now);
}

/// Brings `key` in line with its alerts and holds at `now`. Returns an outcome when something
/// happened to the key (activated, held back, scheduled, deactivated).
fn settle(s: &mut State, rules: &Rules, now: u64, events: &mut Vec<Event>, key: &str, cause: Cause) -> Option<Outcome> {
    let holder = holders(s, rules, now, Some(key)).remove(key);
    settle_with(s, rules, now, events, key, cause, holder)
}

/// The alert holding each key at `now` (the one seen last), for one key or all.
fn holders(s: &State, rules: &Rules, now: u64, only: Option<&str>) -> BTreeMap<String, Holder> {
    let mut out: BTreeMap<String, (u64, Holder)> = BTreeMap::new();
    for t in s.alerts.values().filter(|t| only.is_none_or(|k| k == t.key) && t.holds(rules, now)) {
        match out.get(&t.key) {
            Some((seen, _)) if *seen >= t.seen_ms => {}
            _ => {
                out.insert(t.key.clone(), (t.seen_ms, (t.reason.clone(), t.level)));
            }
        }
    }
    out.into_iter().map(|(k, (_, h))| (k, h)).collect()
}

/// An alert's reason and level.
type Holder = (String, Option<f64>);

#[allow(clippy::too_many_arguments)]
fn settle_with(
    s: &mut State,
    rules: &Rules,
    now: u64,
    events: &mut Vec<Event>,
    key: &str,
    cause: Cause,
    holder: Option<Holder>,
) -> Option<Outcome> {
    let Some(a) = s.activations.get_mut(key) else {
        let (reason, level) = holder?;
        return Some(alert_activate(s, rules, now, events, key, reason, level, cause));
    };
    let mut outcome = None;
    let (reason_before, level_before) = (a.reason().to_string(), a.level());
    let mut ended_by = Source::Alert;
    if a.manual.as_ref().is_some_and(|m| m.until_ms.is_some_and(|u| u <= now)) {
        a.manual = None;
        ended_by = Source::Manual;
    }
    match (&holder, a.alert.as_mut()) {
        (Some(_), Some(h)) => {
            if h.deactivate_at_ms.take().is_some() {
                outcome = Some(Outcome::Refreshed);
            }
        }
        (Some((reason, level)), None) => {
            a.alert = Some(AlertHold { reason: reason.clone(), level: *level, deactivate_at_ms: None });
        }
        (None, Some(h)) => match h.deactivate_at_ms {
            Some(at) if at <= now => a.alert = None,
            Some(at) => outcome = Some(Outcome::DeactivationScheduled { at_ms: at }),
            None if cause == Cause::Notification => {
                let at = now.saturating_add(rules.deactivation_delay_ms);
                h.deactivate_at_ms = Some(at);
                let (reason, level) = (h.reason.clone(), h.level);
                if a.manual.is_none() {
                    event(s, "deactivation_scheduled", key, &reason, Source::Alert, level, now);
                }
                outcome = Some(Outcome::DeactivationScheduled { at_ms: at });
            }
            // No alert fires any more and none resolved: they lapsed (a lost resolve).
            None => a.alert = None,
        },
        (None, None) => {}
    }
    let Some(a) = s.activations.get(key) else { return outcome };
    if a.manual.is_none() && a.alert.is_none() {
        s.activations.remove(key);
        events.push(event(s, "deactivated", key, &reason_before, ended_by, level_before, now));
        return Some(Outcome::Deactivated { count: 1 });
    }
    outcome
}

#[allow(clippy::too_many_arguments)]
fn alert_activate(
    s: &mut State,
    rules: &Rules,
    now: u64,
    events: &mut Vec<Event>,
    key: &str,
    reason: String,
    level: Option<f64>,
    cause: Cause,
) -> Outcome {
    if let Some(&last) = s.last_activated_ms.get(key) {
        let ready = last.saturating_add(rules.cooldown_ms);
        if now < ready {
            return Outcome::Cooldown { retry_in_ms: ready - now };
        }
    }
    if let Some(refused) = room_for(s, rules, now, key) {
        // Once per hold-back: duplicates and repeats of the notification record nothing more.
        let told = s.events.iter().rev().find(|e| e.key == key).is_some_and(|e| e.kind == "rate_limited");
        if refused == Outcome::RateLimited && cause == Cause::Notification && !told {
            event(s, "rate_limited", key, &reason, Source::Alert, level, now);
        }
        return refused;
    }
    let e = event(s, "activated", key, &reason, Source::Alert, level, now);
    events.push(e.clone());
    record_activation(s, now, key);
    let a = Activation {
        key: key.to_string(),
        source: Source::Alert,
        since_ms: now,
        event_id: e.event_id.clone(),
        manual: None,
        alert: Some(AlertHold { reason, level, deactivate_at_ms: None }),
    };
    s.activations.insert(key.to_string(), a);
    Outcome::Activated { event_id: e.event_id }
}

/// Keeps at most [`MAX_TRACKS`] alerts: resolved ones first (earliest end), then firing ones
/// seen least recently.
fn prune_tracks(s: &mut State) {
    if s.alerts.len() <= MAX_TRACKS {
        return;
    }
    let mut order: Vec<(bool, u64, String)> = s
        .alerts
        .iter()
        .map(|(fp, t)| (t.resolved_ms.is_none(), t.resolved_ms.unwrap_or(t.seen_ms), fp.clone()))
        .collect();
    order.sort();
    let excess = s.alerts.len() - MAX_TRACKS;
    for (_, _, fp) in order.into_iter().take(excess) {
        s.alerts.remove(&fp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_795_341_600_000;

    fn firing(key: &str, fp: &str, starts: u64, level: Option<f64>) -> Command {
        Command::AlertFiring {
            key: key.into(),
            reason: "backpressure_critical".into(),
            fingerprint: fp.into(),
            starts_ms: starts,
            level,
        }
    }
    fn resolved(key: &str, fp: &str, starts: u64) -> Command {
        Command::AlertResolved {
            key: key.into(),
            reason: "backpressure_critical".into(),
            fingerprint: fp.into(),
            starts_ms: starts,
            ends_ms: starts + 1,
        }
    }
    fn manual(key: &str, ttl_ms: Option<u64>) -> Command {
        Command::Activate { key: key.into(), reason: "drill".into(), state: Forced::ForcedOpen, ttl_ms, level: None }
    }
    fn run(s: &mut State, cmd: Command, r: &Rules, now: u64) -> Outcome {
        apply(s, cmd, r, now).0
    }

    #[test]
    fn firing_activates_and_holds_until_resolved_plus_delay() {
        let r = Rules::default();
        let mut s = State::new(T, 0);
        assert!(matches!(run(&mut s, firing("ws", "f1", T, Some(0.97)), &r, T), Outcome::Activated { .. }));
        assert_eq!(run(&mut s, Command::Expire, &r, T + 200_000), Outcome::Deactivated { count: 0 });
        assert_eq!(
            run(&mut s, resolved("ws", "f1", T), &r, T + 300_000),
            Outcome::DeactivationScheduled { at_ms: T + 420_000 }
        );
        // A duplicate resolve changes nothing.
        assert_eq!(run(&mut s, resolved("ws", "f1", T), &r, T + 310_000), Outcome::Stale);
        assert_eq!(run(&mut s, Command::Expire, &r, T + 419_999), Outcome::Deactivated { count: 0 });
        assert_eq!(run(&mut s, Command::Expire, &r, T + 420_000), Outcome::Deactivated { count: 1 });
        assert!(s.activations.is_empty());
    }

    #[test]
    fn an_activation_held_by_two_alerts_holds_while_either_fires() {
        let r = Rules::default();
        let mut s = State::new(T, 0);
        run(&mut s, firing("ws", "a", T, None), &r, T);
        run(&mut s, firing("ws", "b", T + 5, None), &r, T + 10);
        assert_eq!(run(&mut s, resolved("ws", "a", T), &r, T + 1_000), Outcome::StillHeld);
        assert_eq!(run(&mut s, Command::Expire, &r, T + 3_600_000), Outcome::Deactivated { count: 0 });
        assert!(s.activations["ws"].alert.as_ref().unwrap().deactivate_at_ms.is_none());
        assert_eq!(
            run(&mut s, resolved("ws", "b", T + 5), &r, T + 3_600_000),
            Outcome::DeactivationScheduled { at_ms: T + 3_720_000 }
        );
    }

    #[test]
    fn a_late_duplicate_of_an_earlier_resolve_changes_nothing() {
        let r = Rules::default();
        let mut s = State::new(T, 0);
        run(&mut s, firing("ws", "a", T, None), &r, T);
        run(&mut s, resolved("ws", "a", T), &r, T + 1_000);
        // The alert fires again (a new episode) before the deactivation.
        assert_eq!(run(&mut s, firing("ws", "a", T + 60_000, None), &r, T + 60_000), Outcome::Refreshed);
        // The HA peer's copy of the first resolve arrives late.
        assert_eq!(run(&mut s, resolved("ws", "a", T), &r, T + 61_000), Outcome::Stale);
        // So does a firing of the first episode.
        assert_eq!(run(&mut s, firing("ws", "a", T, None), &r, T + 62_000), Outcome::Stale);
        run(&mut s, Command::Expire, &r, T + 500_000);
        assert!(s.activations.contains_key("ws"));
        assert!(s.activations["ws"].alert.as_ref().unwrap().deactivate_at_ms.is_none());
    }

    #[test]
    fn a_re_fire_with_the_same_starts_at_after_a_resolve_activates_again() {
        let r = Rules::default();
        let mut s = State::new(T, 0);
        let resolved_at = |ends_ms| Command::AlertResolved {
            key: "ws".into(),
            reason: "backpressure_critical".into(),
            fingerprint: "f1".into(),
            starts_ms: T,
            ends_ms,
        };
        assert!(matches!(run(&mut s, firing("ws", "f1", T, None), &r, T), Outcome::Activated { .. }));
        // Prometheus goes down; Alertmanager resolves the alert at its endsAt.
        let ends = T + 240_000;
        assert!(matches!(run(&mut s, resolved_at(ends), &r, ends + 30_000), Outcome::DeactivationScheduled { .. }));
        // A copy of a firing sent before the resolve, arriving late, is older.
        assert_eq!(run(&mut s, firing("ws", "f1", T, None), &r, ends + 40_000), Outcome::Stale);
        run(&mut s, Command::Expire, &r, ends + 200_000);
        assert!(s.activations.is_empty());
        // Prometheus is back, restores the alert's start time and it fires again.
        let back = T + 900_000;
        assert!(matches!(run(&mut s, firing("ws", "f1", T, None), &r, back), Outcome::Activated { .. }));
        assert!(s.activations.contains_key("ws"));
        // The late HA copy of the old resolve changes nothing; a new resolve ends it.
        assert_eq!(run(&mut s, resolved_at(ends), &r, back + 1_000), Outcome::Stale);
        assert!(matches!(
            run(&mut s, resolved_at(back + 5_000), &r, back + 6_000),
            Outcome::DeactivationScheduled { .. }
        ));
    }

    #[test]
    fn a_resolve_of_an_episode_that_never_resolved_is_not_judged_by_clocks() {
        // The sender's clock is minutes behind: its endsAt is before the firing arrived here.
        let r = Rules::default();
        let mut s = State::new(T, 0);
        run(&mut s, firing("ws", "f1", T, None), &r, T + 600_000);
        assert!(matches!(run(&mut s, resolved("ws", "f1", T), &r, T + 601_000), Outcome::DeactivationScheduled { .. }));
    }

    #[test]
    fn a_firing_delivered_after_its_own_resolve_is_stale() {
        let r = Rules::default();
        let mut s = State::new(T, 0);
        run(&mut s, resolved("ws", "f1", T), &r, T + 5_000);
        assert_eq!(run(&mut s, firing("ws", "f1", T, None), &r, T + 6_000), Outcome::Stale);
        assert!(s.activations.is_empty());
    }

    #[test]
    fn levels_and_resolves_never_end_a_manual_activation() {
        let r = Rules::default();
        let mut s = State::new(T, 0);
        run(&mut s, manual("*", None), &r, T);
        run(&mut s, firing("*", "a", T, Some(0.97)), &r, T + 1);
        run(&mut s, firing("*", "a", T, Some(0.50)), &r, T + 2);
        run(&mut s, resolved("*", "a", T), &r, T + 3);
        run(&mut s, Command::Expire, &r, T + 10 * HOUR_MS);
        assert_eq!(s.activations["*"].reason(), "drill");
        assert_eq!(
            run(&mut s, Command::Deactivate { key: "*".into() }, &r, T + 10 * HOUR_MS),
            Outcome::Deactivated { count: 1 }
        );
    }

    #[test]
    fn re_activating_an_active_key_is_idempotent() {
        let r = Rules { max_activations_per_hour: 2, ..Rules::default() };
        let mut s = State::new(T, 0);
        assert!(matches!(run(&mut s, manual("ws", None), &r, T), Outcome::Activated { .. }));
        for i in 1..=5 {
            let (o, events) = apply(&mut s, manual("ws", None), &r, T + i);
            assert_eq!((o, events.len()), (Outcome::AlreadyActive, 0));
        }
        assert_eq!(s.recent_activations_ms.len(), 1);
        assert!(matches!(run(&mut s, manual("other", None), &r, T + 10), Outcome::Activated { .. }));
        assert_eq!(s.events.iter().filter(|e| e.kind == "activated").count(), 2);
    }

    #[test]
    fn a_firing_alert_held_back_by_the_cooldown_activates_when_allowed() {
        let r = Rules::default();
        let mut s = State::new(T, 0);
        run(&mut s, firing("ws", "a", T, None), &r, T);
        run(&mut s, Command::Deactivate { key: "ws".into() }, &r, T + 1_000);
        assert_eq!(
            run(&mut s, firing("ws", "b", T + 2_000, None), &r, T + 2_000),
            Outcome::Cooldown { retry_in_ms: 28_000 }
        );
        run(&mut s, Command::Expire, &r, T + 29_999);
        assert!(s.activations.is_empty());
        let (_, events) = apply(&mut s, Command::Expire, &r, T + 30_000);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, "activated");
        assert!(s.activations.contains_key("ws"));
    }

    #[test]
    fn a_firing_alert_held_back_by_the_cap_activates_an_hour_later_only_if_it_still_fires() {
        let r = Rules { max_activations_per_hour: 1, cooldown_ms: 0, ..Rules::default() };
        let mut s = State::new(T, 0);
        run(&mut s, manual("x", Some(1_000)), &r, T);
        assert_eq!(run(&mut s, firing("ws", "a", T + 10, None), &r, T + 10), Outcome::RateLimited);
        assert_eq!(run(&mut s, firing("chat", "c", T + 10, None), &r, T + 10), Outcome::RateLimited);
        run(&mut s, resolved("chat", "c", T + 10), &r, T + 20);
        run(&mut s, Command::Expire, &r, T + HOUR_MS);
        assert!(s.activations.contains_key("ws"));
        assert!(!s.activations.contains_key("chat"));
    }

    #[test]
    fn duplicate_notifications_held_back_by_the_cap_record_rate_limited_once() {
        let r = Rules { max_activations_per_hour: 1, cooldown_ms: 0, ..Rules::default() };
        let mut s = State::new(T, 0);
        run(&mut s, manual("x", None), &r, T);
        for i in 0..5 {
            // The notification, its HA peer's copy and Alertmanager's repeats.
            assert_eq!(run(&mut s, firing("ws", "a", T, None), &r, T + 10 + i), Outcome::RateLimited);
        }
        assert_eq!(s.events.iter().filter(|e| e.kind == "rate_limited").count(), 1);
    }

    #[test]
    fn last_activation_times_are_pruned_past_the_cooldown_and_the_hour() {
        let r = Rules { max_activations_per_hour: u32::MAX, cooldown_ms: 0, ..Rules::default() };
        let mut s = State::new(T, 0);
        for i in 0..50 {
            run(&mut s, manual(&format!("k{i}"), Some(1_000)), &r, T);
        }
        assert_eq!(s.last_activated_ms.len(), 50);
        run(&mut s, Command::Expire, &r, T + HOUR_MS - 1);
        assert_eq!(s.last_activated_ms.len(), 50, "within the hour: kept");
        run(&mut s, Command::Expire, &r, T + HOUR_MS);
        assert!(s.last_activated_ms.is_empty(), "{:?}", s.last_activated_ms);
        // A cooldown longer than the hour keeps them for the cooldown.
        let r = Rules { cooldown_ms: 2 * HOUR_MS, ..r };
        run(&mut s, manual("k", Some(1_000)), &r, T + HOUR_MS);
        run(&mut s, Command::Expire, &r, T + 2 * HOUR_MS + 1);
        assert!(s.last_activated_ms.contains_key("k"));
        run(&mut s, Command::Expire, &r, T + 3 * HOUR_MS);
        assert!(s.last_activated_ms.is_empty());
    }

    #[test]
    fn repeated_firings_that_move_the_lapse_bump_the_version() {
        let r = Rules::default();
        let mut s = State::new(T, 0);
        run(&mut s, firing("ws", "a", T, None), &r, T);
        let v = s.version;
        run(&mut s, firing("ws", "a", T, None), &r, T + 60_200);
        assert!(s.version > v);
        assert_eq!(snapshot(&s, &r, T + 60_200).breakers[0].until, Some(crate::rfc3339(T + 61_000 + r.max_active_ms)));
        // A duplicate (an HA peer's copy) within the same second moves nothing: no bump.
        let v = s.version;
        run(&mut s, firing("ws", "a", T, None), &r, T + 60_700);
        assert_eq!(s.version, v);
        run(&mut s, firing("ws", "a", T, None), &r, T + 61_500);
        assert!(s.version > v);
    }

    #[test]
    fn a_lost_resolve_lapses_after_max_active() {
        let r = Rules::default();
        let mut s = State::new(T, 0);
        run(&mut s, firing("ws", "f1", T, None), &r, T);
        assert_eq!(run(&mut s, Command::Expire, &r, T + r.max_active_ms - 1), Outcome::Deactivated { count: 0 });
        assert_eq!(run(&mut s, Command::Expire, &r, T + r.max_active_ms), Outcome::Deactivated { count: 1 });
    }

    #[test]
    fn a_manual_deactivation_dismisses_the_alerts_firing_now_until_their_next_episode() {
        let r = Rules { cooldown_ms: 0, ..Rules::default() };
        let mut s = State::new(T, 0);
        run(&mut s, firing("ws", "a", T, None), &r, T);
        run(&mut s, Command::Deactivate { key: "ws".into() }, &r, T + 1);
        assert_eq!(run(&mut s, firing("ws", "a", T, None), &r, T + 2), Outcome::NotActive);
        run(&mut s, Command::Expire, &r, T + 3);
        assert!(s.activations.is_empty());
        assert!(matches!(run(&mut s, firing("ws", "a", T + 100, None), &r, T + 100), Outcome::Activated { .. }));
    }

    #[test]
    fn backpressure_levels_use_hysteresis() {
        let r = Rules::default();
        let mut s = State::new(T, 0);
        assert_eq!(run(&mut s, firing("ws", "f1", T, Some(0.90)), &r, T), Outcome::BelowThreshold);
        assert!(matches!(run(&mut s, firing("ws", "f1", T, Some(0.96)), &r, T), Outcome::Activated { .. }));
        assert_eq!(run(&mut s, firing("ws", "f1", T, Some(0.90)), &r, T + 1_000), Outcome::Refreshed);
        assert_eq!(
            run(&mut s, firing("ws", "f1", T, Some(0.80)), &r, T + 2_000),
            Outcome::DeactivationScheduled { at_ms: T + 122_000 }
        );
    }

    #[test]
    fn manual_ttl_expires_and_the_snapshot_says_when() {
        let r = Rules::default();
        let mut s = State::new(T, 0);
        run(&mut s, manual("*", Some(5_000)), &r, T);
        assert_eq!(ends(&s, &r)["*"], Some(T + 5_000));
        assert_eq!(run(&mut s, Command::Expire, &r, T + 5_000), Outcome::Deactivated { count: 1 });
    }

    #[test]
    fn a_write_that_would_outgrow_the_snapshot_is_refused() {
        let r = Rules { max_activations_per_hour: u32::MAX, ..Rules::default() };
        let mut s = State::new(T, 0);
        let mut refused = 0;
        for i in 0..600 {
            let cmd = Command::Activate {
                key: format!("{i:0>250}"),
                reason: "r".repeat(128),
                state: Forced::ForcedOpen,
                ttl_ms: Some(u64::MAX),
                level: None,
            };
            if run(&mut s, cmd, &r, T) == Outcome::SnapshotFull {
                refused += 1;
            }
        }
        assert!(refused > 0);
        let len = serde_json::to_vec(&snapshot(&s, &r, T)).unwrap().len();
        assert!(len <= MAX_SNAPSHOT_BYTES, "{len}");
    }

    #[test]
    fn state_round_trips_through_json() {
        let r = Rules::default();
        let mut s = State::new(T, 0);
        run(&mut s, firing("ws", "f1", T, Some(0.99)), &r, T);
        run(&mut s, manual("*", Some(1)), &r, T);
        let back: State = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
