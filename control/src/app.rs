//! The HTTP API: `app(state)` builds the router, so tests call it directly.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State as AxState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::engine::{Command, Forced, Outcome, Rules};
use crate::metrics::Metrics;
use crate::store::{FleetEntry, Store, StoreError};
use crate::{now_ms, rfc3339};
use floodgate_core::wire::{self, EntryState, SnapshotBody, SnapshotEntry};

pub const MAX_BODY: usize = 1 << 20;
pub const MAX_WAIT_S: u64 = 60;

pub struct AppState {
    pub store: Arc<dyn Store>,
    pub rules: Rules,
    /// `None` only when auth is explicitly disabled.
    pub token: Option<String>,
    /// Alert name -> reason.
    pub alerts: BTreeMap<String, String>,
    /// The alert label that names the breaker key (else `*`).
    pub key_label: String,
    pub metrics: Metrics,
    pub waiters: AtomicI64,
    pub snapshots: SnapshotCache,
}

/// The last snapshot body served, with its version: a change wakes every waiter at once, and
/// they all answer with the same bytes instead of each reading the store and serializing.
#[derive(Default)]
pub struct SnapshotCache(std::sync::Mutex<Option<(u64, Bytes)>>);

impl SnapshotCache {
    fn get(&self, version: u64) -> Option<Bytes> {
        let guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().filter(|(v, _)| *v == version).map(|(_, b)| b.clone())
    }

    fn put(&self, version: u64, body: Bytes) {
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if guard.as_ref().is_none_or(|(v, _)| *v < version) {
            *guard = Some((version, body));
        }
    }
}

/// The one error type: a status and a message, answered as `{"error": message}`.
#[derive(Debug)]
pub struct AppError(pub StatusCode, pub String);

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        // 503 makes Alertmanager retry: an accepted alert is never lost.
        AppError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

fn bad_request(msg: impl Into<String>) -> AppError {
    AppError(StatusCode::BAD_REQUEST, msg.into())
}

fn internal(msg: String) -> AppError {
    AppError(StatusCode::INTERNAL_SERVER_ERROR, msg)
}

pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/webhook/alertmanager", post(webhook))
        .route("/webhook/backpressure", post(webhook))
        .route("/v1/snapshot", get(snapshot))
        .route("/api/v1/breakers", get(breakers))
        .route("/api/v1/breakers/{key}/activate", post(activate))
        .route("/api/v1/breakers/{key}/deactivate", post(deactivate))
        .route("/api/v1/breakers/{key}/reset", post(reset))
        .route("/api/v1/fleet", get(fleet))
        .route("/api/circuit-breaker/status", get(legacy_status))
        .route("/api/circuit-breaker/activate", post(legacy_activate))
        .route("/api/circuit-breaker/deactivate", post(legacy_deactivate))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/ui", get(|| async { Html(include_str!("../ui/index.html")) }))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

fn authorize(s: &AppState, headers: &HeaderMap) -> Result<(), AppError> {
    let Some(token) = &s.token else { return Ok(()) };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| AppError(StatusCode::UNAUTHORIZED, "missing or malformed bearer token".into()))?;
    if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        Ok(())
    } else {
        Err(AppError(StatusCode::FORBIDDEN, "wrong token".into()))
    }
}

// ---- Alertmanager ----

#[derive(Deserialize)]
struct AmPayload {
    alerts: Vec<AmAlert>,
    #[serde(default, rename = "truncatedAlerts")]
    truncated_alerts: u64,
}

#[derive(Deserialize)]
struct AmAlert {
    status: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default, rename = "startsAt")]
    starts_at: Option<String>,
    #[serde(default, rename = "endsAt")]
    ends_at: Option<String>,
    #[serde(default)]
    fingerprint: Option<String>,
}

/// `"97.5%"` -> 0.975; a bare number <= 1 is taken as a fraction.
pub fn parse_level(summary: &str) -> Option<f64> {
    let t = summary.trim();
    let (num, pct) = match t.find('%') {
        Some(i) => (t[..i].rsplit(|c: char| !(c.is_ascii_digit() || c == '.')).next()?, true),
        None => (t, false),
    };
    let v: f64 = num.parse().ok()?;
    let v = if pct || v > 1.0 { v / 100.0 } else { v };
    v.is_finite().then_some(v)
}

fn time_ms(t: Option<&str>, default: u64) -> u64 {
    t.and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .filter(|&ms| ms > 0)
        .unwrap_or(default)
}

async fn webhook(AxState(s): AxState<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Result<Response, AppError> {
    let started = Instant::now();
    authorize(&s, &headers)?;
    s.metrics.webhooks.inc();
    let payload: AmPayload = serde_json::from_slice(&body).map_err(|e| {
        s.metrics.webhooks_failed.inc();
        bad_request(format!("invalid Alertmanager payload: {e}"))
    })?;
    if payload.truncated_alerts > 0 {
        tracing::warn!(truncated = payload.truncated_alerts, "alertmanager truncated alerts (max_alerts)");
    }
    let now = now_ms();
    // Check the whole payload before applying any of it: a 400 changes nothing.
    let mut commands = vec![];
    let mut results = vec![];
    for (i, a) in payload.alerts.iter().enumerate() {
        let name = a.labels.get("alertname").cloned().unwrap_or_default();
        let Some(reason) = s.alerts.get(&name).cloned() else {
            results.push(json!({"alert": name, "result": "ignored"}));
            continue;
        };
        let key = a.labels.get(&s.key_label).cloned().filter(|k| !k.is_empty()).unwrap_or_else(|| "*".into());
        let fingerprint = a.fingerprint.clone().unwrap_or_else(|| format!("{name}/{key}"));
        let cmd = match a.status.as_str() {
            "firing" => Command::AlertFiring {
                key: key.clone(),
                reason,
                fingerprint,
                starts_ms: time_ms(a.starts_at.as_deref(), now),
                level: a.annotations.get("summary").and_then(|v| parse_level(v)),
            },
            "resolved" => Command::AlertResolved {
                key: key.clone(),
                reason,
                fingerprint,
                ends_ms: time_ms(a.ends_at.as_deref(), now),
            },
            other => {
                s.metrics.webhooks_failed.inc();
                return Err(bad_request(format!("alerts[{i}].status: must be firing or resolved, got {other:?}")));
            }
        };
        commands.push((name, key, a.status.clone(), cmd));
    }
    for (name, key, status, cmd) in commands {
        let outcome = match s.store.apply(cmd, &s.rules, now).await {
            Ok((o, _)) => o,
            Err(e) => {
                s.metrics.webhooks_failed.inc();
                tracing::error!(error = %e, "webhook not applied; answering 503 so Alertmanager retries");
                return Err(e.into());
            }
        };
        s.metrics.count(&outcome);
        tracing::info!(alert = %name, key = %key, status = %status, outcome = ?outcome, "alert applied");
        results.push(json!({"alert": name, "key": key, "outcome": outcome}));
    }
    s.metrics.webhook_seconds.observe(started.elapsed().as_secs_f64());
    Ok(Json(json!({"results": results})).into_response())
}

// ---- snapshot long-poll ----

#[derive(Deserialize)]
struct SnapshotQuery {
    version: Option<String>,
    wait: Option<String>,
}

async fn snapshot_body(s: &AppState) -> Result<SnapshotBody, AppError> {
    let st = s.store.state().await?;
    let now = now_ms();
    let breakers = st
        .activations
        .values()
        .filter(|a| a.ends_ms().is_none_or(|t| t > now))
        .map(|a| SnapshotEntry {
            key: a.key.clone(),
            state: EntryState::Forced(a.state),
            reason: Some(a.reason.clone()),
            since: Some(rfc3339(a.since_ms)),
            until: a.ends_ms().map(rfc3339),
            event_id: Some(a.event_id.clone()),
        })
        .chain(crate::reset::entries(&st, now))
        .collect();
    Ok(SnapshotBody { version: st.version, generated_at: Some(rfc3339(now)), breakers })
}

/// The snapshot at `version`, from the cache when it holds that version.
async fn snapshot_response(s: &AppState, version: u64) -> Result<Response, AppError> {
    let body = match s.snapshots.get(version) {
        Some(body) => body,
        None => {
            let snapshot = snapshot_body(s).await?;
            let body = Bytes::from(serde_json::to_vec(&snapshot).map_err(|e| internal(e.to_string()))?);
            let v = snapshot.version;
            s.snapshots.put(v, body.clone());
            body
        }
    };
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn snapshot(
    AxState(s): AxState<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<SnapshotQuery>,
) -> Result<Response, AppError> {
    authorize(&s, &headers)?;
    let known: Option<u64> = match q.version.as_deref() {
        None | Some("") => None,
        Some(v) => Some(v.parse().map_err(|_| bad_request(format!("version: not a number: {v:?}")))?),
    };
    let wait: u64 = match q.wait.as_deref() {
        None | Some("") => 0,
        Some(v) => v.parse().map_err(|_| bad_request(format!("wait: not a number: {v:?}")))?,
    };
    if let Some(proxy) = headers.get(wire::PROXY_HEADER).and_then(|v| v.to_str().ok()) {
        let breakers = headers
            .get(wire::FLEET_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(wire::decode_fleet_header)
            .unwrap_or_default();
        let entry =
            FleetEntry { proxy: proxy.to_string(), last_poll_ms: now_ms(), version: known.unwrap_or(0), breakers };
        if let Err(e) = s.store.record_poll(entry).await {
            tracing::warn!(error = %e, "fleet entry not recorded");
        }
    }
    let mut versions = s.store.versions();
    let Some(known) = known else {
        let current = *versions.borrow();
        return snapshot_response(&s, current).await;
    };
    // Any other version answers at once: newer, or older after the store lost its state (the
    // proxy decides what to make of that).
    if *versions.borrow_and_update() == known && wait > 0 {
        s.waiters.fetch_add(1, Ordering::SeqCst);
        s.metrics.poll_waiters.set(s.waiters.load(Ordering::SeqCst));
        let wait = Duration::from_secs(wait.min(MAX_WAIT_S));
        let _ = tokio::time::timeout(wait, versions.wait_for(|v| *v != known)).await;
        s.waiters.fetch_sub(1, Ordering::SeqCst);
        s.metrics.poll_waiters.set(s.waiters.load(Ordering::SeqCst));
    }
    let current = *versions.borrow();
    if current != known {
        snapshot_response(&s, current).await
    } else {
        Ok(StatusCode::NOT_MODIFIED.into_response())
    }
}

// ---- operator API ----

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ActivateBody {
    reason: Option<String>,
    ttl_s: Option<u64>,
    backpressure_level: Option<f64>,
    state: Option<Forced>,
}

fn parse_activate(body: &Bytes) -> Result<ActivateBody, AppError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(ActivateBody::default());
    }
    serde_json::from_slice(body).map_err(|e| bad_request(format!("invalid activation body: {e}")))
}

async fn do_activate(s: &AppState, key: String, body: ActivateBody) -> Result<Response, AppError> {
    if key.is_empty() {
        return Err(bad_request("key: must not be empty"));
    }
    if body.ttl_s == Some(0) {
        return Err(bad_request("ttl_s: must be at least 1"));
    }
    let cmd = Command::Activate {
        key: key.clone(),
        reason: body.reason.unwrap_or_else(|| "manual".into()),
        state: body.state.unwrap_or_default(),
        ttl_ms: body.ttl_s.map(|t| t * 1000),
        level: body.backpressure_level,
    };
    let (outcome, _) = s.store.apply(cmd, &s.rules, now_ms()).await?;
    s.metrics.count(&outcome);
    let status = match outcome {
        Outcome::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::OK,
    };
    Ok((status, Json(json!({"key": key, "outcome": outcome}))).into_response())
}

async fn do_deactivate(s: &AppState, key: String) -> Result<Response, AppError> {
    let (outcome, _) = s.store.apply(Command::Deactivate { key: key.clone() }, &s.rules, now_ms()).await?;
    s.metrics.count(&outcome);
    Ok(Json(json!({"key": key, "outcome": outcome})).into_response())
}

async fn activate(
    AxState(s): AxState<Arc<AppState>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    authorize(&s, &headers)?;
    do_activate(&s, key, parse_activate(&body)?).await
}

async fn deactivate(
    AxState(s): AxState<Arc<AppState>>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    authorize(&s, &headers)?;
    do_deactivate(&s, key).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ResetBody {
    reason: Option<String>,
}

/// `POST /api/v1/breakers/{key}/reset`: every proxy closes its local breaker(s) for `key` (or
/// all, `*`) once, through the recovery ramp.
async fn reset(
    AxState(s): AxState<Arc<AppState>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    authorize(&s, &headers)?;
    crate::reset::check_key(&key).map_err(bad_request)?;
    let body: ResetBody = if body.iter().all(|b| b.is_ascii_whitespace()) {
        ResetBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| bad_request(format!("invalid reset body: {e}")))?
    };
    let reason = body.reason.unwrap_or_else(|| "manual".into());
    if reason.len() > 128 {
        return Err(bad_request("reason: at most 128 bytes"));
    }
    let (outcome, _) = s.store.apply(Command::Reset { key: key.clone(), reason }, &s.rules, now_ms()).await?;
    Ok(Json(json!({"key": key, "outcome": outcome})).into_response())
}

async fn breakers(AxState(s): AxState<Arc<AppState>>, headers: HeaderMap) -> Result<Response, AppError> {
    authorize(&s, &headers)?;
    let st = s.store.state().await?;
    let activations: Vec<_> = st
        .activations
        .values()
        .map(|a| {
            json!({
                "key": a.key, "state": a.state, "reason": a.reason, "source": a.source,
                "since": rfc3339(a.since_ms), "until": a.ends_ms().map(rfc3339),
                "deactivate_at": a.deactivate_at_ms.map(rfc3339),
                "backpressure_level": a.backpressure_level, "event_id": a.event_id,
            })
        })
        .collect();
    let events: Vec<_> = st
        .events
        .iter()
        .rev()
        .map(|e| {
            json!({"event_id": e.event_id, "type": e.kind, "key": e.key, "reason": e.reason,
                   "source": e.source, "backpressure_level": e.backpressure_level,
                   "timestamp": rfc3339(e.timestamp_ms)})
        })
        .collect();
    Ok(Json(json!({"version": st.version, "activations": activations, "events": events})).into_response())
}

async fn fleet(AxState(s): AxState<Arc<AppState>>, headers: HeaderMap) -> Result<Response, AppError> {
    authorize(&s, &headers)?;
    let proxies: Vec<_> = s
        .store
        .fleet()
        .await?
        .into_iter()
        .map(|f| json!({"proxy": f.proxy, "last_poll": rfc3339(f.last_poll_ms), "version": f.version, "breakers": f.breakers}))
        .collect();
    Ok(Json(json!({"proxies": proxies})).into_response())
}

// ---- the original global API (key `*`) ----

async fn legacy_status(AxState(s): AxState<Arc<AppState>>, headers: HeaderMap) -> Result<Response, AppError> {
    authorize(&s, &headers)?;
    let st = s.store.state().await?;
    let body = match st.activations.get("*") {
        Some(a) => json!({
            "active": true, "reason": a.reason, "activated_at": rfc3339(a.since_ms),
            "deactivate_at": a.ends_ms().map(rfc3339), "backpressure_level": a.backpressure_level,
        }),
        None => json!({"active": false}),
    };
    Ok(Json(body).into_response())
}

async fn legacy_activate(
    AxState(s): AxState<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    authorize(&s, &headers)?;
    do_activate(&s, "*".into(), parse_activate(&body)?).await
}

async fn legacy_deactivate(AxState(s): AxState<Arc<AppState>>, headers: HeaderMap) -> Result<Response, AppError> {
    authorize(&s, &headers)?;
    do_deactivate(&s, "*".into()).await
}

async fn ready(AxState(s): AxState<Arc<AppState>>) -> Response {
    match s.store.ping().await {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(e) => AppError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

async fn metrics(AxState(s): AxState<Arc<AppState>>) -> Response {
    match s.metrics.render() {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response(),
        Err(e) => AppError(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}
