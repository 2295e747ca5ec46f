//! The HTTP API: `app(state)` builds the router, so tests call it directly.
//!
//! Every request passes the [`authorize`] layer before its handler runs (so no body is read for
//! a request without the right token), then a timeout. Inputs are bounded ([`MAX_KEY_BYTES`],
//! [`MAX_REASON_BYTES`], [`MAX_TTL_S`]); a bad one is answered 400 naming the field. Every
//! answer, errors included, is a typed JSON body.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, RawQuery, Request, State as AxState};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tower_http::timeout::TimeoutLayer;

use crate::engine::{self, Command, Forced, Outcome, Rules, Source};
use crate::legacy;
use crate::metrics::Metrics;
use crate::store::{FleetEntry, Store, StoreError};
use crate::{now_ms, rfc3339};
use floodgate_core::wire::{self, MAX_FLEET_HEADER_BYTES};

pub const MAX_BODY: usize = 1 << 20;
pub const MAX_WAIT_S: u64 = 60;
pub const MAX_KEY_BYTES: usize = 256;
pub const MAX_REASON_BYTES: usize = 128;
pub const MAX_FINGERPRINT_BYTES: usize = 256;
/// 30 days: the longest `ttl_s` (and `max_active_s`).
pub const MAX_TTL_S: u64 = 30 * 24 * 3600;
/// Requests other than the long-poll end after this long (408).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The bearer tokens and their scopes. `admin: None` only when auth is explicitly disabled.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    /// May do everything.
    pub admin: Option<String>,
    /// May only poll `GET /v1/snapshot` (the one proxy configs carry).
    pub poll: Option<String>,
    /// May only post the webhook (the one Alertmanager carries).
    pub webhook: Option<String>,
}

impl Tokens {
    pub fn admin(token: &str) -> Tokens {
        Tokens { admin: Some(token.to_string()), ..Tokens::default() }
    }
}

pub struct AppState {
    pub store: Arc<dyn Store>,
    pub rules: Rules,
    pub tokens: Tokens,
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

/// Every error: `{"error": message}` with its status.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error: String,
}

#[derive(Debug)]
pub struct AppError(pub StatusCode, pub String);

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        // 503 makes Alertmanager retry: an accepted alert is never lost.
        AppError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

impl From<BytesRejection> for AppError {
    fn from(e: BytesRejection) -> Self {
        AppError(e.status(), e.body_text())
    }
}

impl From<PathRejection> for AppError {
    fn from(e: PathRejection) -> Self {
        AppError(StatusCode::BAD_REQUEST, format!("key: {}", e.body_text()))
    }
}

fn bad_request(msg: impl Into<String>) -> AppError {
    AppError(StatusCode::BAD_REQUEST, msg.into())
}

/// A breaker key: 1 to 256 bytes of printable ASCII, no spaces (`*` is the wildcard).
pub fn check_key(field: &str, key: &str) -> Result<(), AppError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(bad_request(format!("{field}: must be 1 to {MAX_KEY_BYTES} bytes, got {}", key.len())));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad_request(format!("{field}: only printable ASCII without spaces")));
    }
    Ok(())
}

fn check_reason(field: &str, reason: &str) -> Result<(), AppError> {
    if reason.len() > MAX_REASON_BYTES {
        return Err(bad_request(format!("{field}: at most {MAX_REASON_BYTES} bytes, got {}", reason.len())));
    }
    if reason.chars().any(char::is_control) {
        return Err(bad_request(format!("{field}: no control characters")));
    }
    Ok(())
}

fn check_level(field: &str, level: Option<f64>) -> Result<(), AppError> {
    match level {
        Some(l) if !(0.0..=1.0).contains(&l) => Err(bad_request(format!("{field}: a fraction from 0 to 1, got {l}"))),
        _ => Ok(()),
    }
}

pub fn app(state: Arc<AppState>) -> Router {
    let long_poll_timeout = Duration::from_secs(MAX_WAIT_S + 10);
    let polls = Router::new()
        .route("/v1/snapshot", get(snapshot))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, long_poll_timeout));
    Router::new()
        .route("/webhook/alertmanager", post(webhook))
        .route("/webhook/backpressure", post(webhook))
        .route("/api/v1/breakers", get(breakers))
        .route("/api/v1/breakers/{key}/activate", post(activate))
        .route("/api/v1/breakers/{key}/deactivate", post(deactivate))
        .route("/api/v1/breakers/{key}/reset", post(reset))
        .route("/api/v1/breakers/{key}/drain", post(drain))
        .route("/api/v1/fleet", get(fleet))
        .route("/api/circuit-breaker/status", get(legacy_status))
        .route("/api/circuit-breaker/activate", post(legacy_activate))
        .route("/api/circuit-breaker/deactivate", post(legacy_deactivate))
        .route("/health", get(|| async { Json(Health { status: "ok".into() }) }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/ui", get(|| async { Html(include_str!("../ui/index.html")) }))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT))
        .merge(polls)
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// What a request may need a token for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    Open,
    Poll,
    Webhook,
    Admin,
}

fn scope(method: &Method, path: &str) -> Scope {
    match (method, path) {
        (_, "/health" | "/ready" | "/metrics" | "/ui") => Scope::Open,
        (&Method::GET, "/v1/snapshot") => Scope::Poll,
        (&Method::POST, "/webhook/alertmanager" | "/webhook/backpressure") => Scope::Webhook,
        _ => Scope::Admin,
    }
}

fn matches(given: &str, token: Option<&String>) -> bool {
    token.is_some_and(|t| bool::from(given.as_bytes().ct_eq(t.as_bytes())))
}

/// The token check, before any handler (and so before any body) runs: 401 without a bearer
/// token, 403 with a wrong one or one outside its scope.
async fn authorize(AxState(s): AxState<Arc<AppState>>, req: Request, next: Next) -> Response {
    let needs = scope(req.method(), req.uri().path());
    if needs == Scope::Open || s.tokens.admin.is_none() {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(given) = given.filter(|g| !g.is_empty()) else {
        return AppError(StatusCode::UNAUTHORIZED, "missing or malformed bearer token".into()).into_response();
    };
    let allowed = matches(given, s.tokens.admin.as_ref())
        || (needs == Scope::Poll && matches(given, s.tokens.poll.as_ref()))
        || (needs == Scope::Webhook && matches(given, s.tokens.webhook.as_ref()));
    if allowed {
        return next.run(req).await;
    }
    let scoped = matches(given, s.tokens.poll.as_ref()) || matches(given, s.tokens.webhook.as_ref());
    let why = if scoped { "token not allowed here (outside its scope)" } else { "wrong token" };
    AppError(StatusCode::FORBIDDEN, why.into()).into_response()
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

fn time_ms(t: &str) -> Option<u64> {
    floodgate_core::time::parse_rfc3339_ms(t)
}

/// One alert's result in the webhook's answer.
#[derive(Debug, Serialize)]
pub struct AlertResult {
    pub alert: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Why this alert was rejected (`result: "rejected"`); the others are applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct WebhookAnswer {
    pub results: Vec<AlertResult>,
}

async fn webhook(
    AxState(s): AxState<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let started = Instant::now();
    s.metrics.webhooks.inc();
    let result = webhook_inner(&s, body).await;
    if result.is_err() {
        s.metrics.webhooks_failed.inc();
    }
    s.metrics.webhook_seconds.observe(started.elapsed().as_secs_f64());
    result.map(|a| Json(a).into_response())
}

async fn webhook_inner(s: &AppState, body: Result<Bytes, BytesRejection>) -> Result<WebhookAnswer, AppError> {
    let body = body?;
    let payload: AmPayload =
        parse_json(&body).map_err(|e| bad_request(format!("invalid Alertmanager payload: {e}")))?;
    if payload.truncated_alerts > 0 {
        tracing::warn!(truncated = payload.truncated_alerts, "alertmanager truncated alerts (max_alerts)");
    }
    let now = now_ms();
    // An alert that fails a check is rejected by itself (in its result): Alertmanager does not
    // retry a 4xx, so a 400 would lose every valid alert of the group. Only a payload of the
    // wrong shape is a 400 (above).
    let mut commands = vec![];
    let mut results = vec![];
    for (i, a) in payload.alerts.iter().enumerate() {
        let name = a.labels.get("alertname").cloned().unwrap_or_default();
        let Some(reason) = s.alerts.get(&name).cloned() else {
            results.push(AlertResult { alert: name, key: None, result: Some("ignored"), outcome: None, error: None });
            continue;
        };
        match alert_command(s, i, a, reason, now) {
            Ok((key, cmd)) => commands.push((name, key, a.status.clone(), cmd)),
            Err(AppError(_, error)) => {
                tracing::warn!(alert = %name, %error, "alert rejected");
                results.push(AlertResult {
                    alert: name,
                    key: None,
                    result: Some("rejected"),
                    outcome: None,
                    error: Some(error),
                });
            }
        }
    }
    for (name, key, status, cmd) in commands {
        let outcome = match s.store.apply(cmd, &s.rules, now).await {
            Ok((o, _)) => o,
            Err(e) => {
                tracing::error!(error = %e, "webhook not applied; answering 503 so Alertmanager retries");
                return Err(e.into());
            }
        };
        s.metrics.count(&outcome);
        tracing::info!(alert = %name, key = %key, status = %status, outcome = ?outcome, "alert applied");
        results.push(AlertResult { alert: name, key: Some(key), result: None, outcome: Some(outcome), error: None });
    }
    Ok(WebhookAnswer { results })
}

/// One alert's command and key, or why it is rejected (naming the field).
fn alert_command(s: &AppState, i: usize, a: &AmAlert, reason: String, now: u64) -> Result<(String, Command), AppError> {
    let name = a.labels.get("alertname").cloned().unwrap_or_default();
    let key = a.labels.get(&s.key_label).cloned().filter(|k| !k.is_empty()).unwrap_or_else(|| "*".into());
    check_key(&format!("alerts[{i}].labels.{}", s.key_label), &key)?;
    let fingerprint = a.fingerprint.clone().filter(|f| !f.is_empty()).unwrap_or_else(|| format!("{name}/{key}"));
    if fingerprint.len() > MAX_FINGERPRINT_BYTES {
        return Err(bad_request(format!("alerts[{i}].fingerprint: at most {MAX_FINGERPRINT_BYTES} bytes")));
    }
    let starts_ms = a
        .starts_at
        .as_deref()
        .and_then(time_ms)
        .ok_or_else(|| bad_request(format!("alerts[{i}].startsAt: missing or not RFC 3339")))?;
    let cmd = match a.status.as_str() {
        "firing" => Command::AlertFiring {
            key: key.clone(),
            reason,
            fingerprint,
            starts_ms,
            level: a.annotations.get("summary").and_then(|v| parse_level(v)),
        },
        "resolved" => Command::AlertResolved {
            key: key.clone(),
            reason,
            fingerprint,
            starts_ms,
            ends_ms: a.ends_at.as_deref().and_then(time_ms).filter(|&t| t > 0).unwrap_or(now),
        },
        other => return Err(bad_request(format!("alerts[{i}].status: must be firing or resolved, got {other:?}"))),
    };
    Ok((key, cmd))
}

// ---- snapshot long-poll ----

/// `version` and `wait` from the query string; anything else is ignored.
fn snapshot_query(raw: Option<&str>) -> Result<(Option<u64>, u64), AppError> {
    let (mut version, mut wait) = (None, 0);
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let num = |field: &str| -> Result<Option<u64>, AppError> {
            match v {
                "" => Ok(None),
                v => v.parse().map(Some).map_err(|_| {
                    let shown: String = v.chars().take(32).collect();
                    bad_request(format!("{field}: not a whole number: {shown:?}"))
                }),
            }
        };
        match k {
            "version" => version = num("version")?,
            "wait" => wait = num("wait")?.unwrap_or(0),
            _ => {}
        }
    }
    Ok((version, wait.min(MAX_WAIT_S)))
}

/// The snapshot at the store's version now, from the cache when it holds that version.
async fn snapshot_response(s: &AppState, version: u64) -> Result<Response, AppError> {
    let body = match s.snapshots.get(version) {
        Some(body) => body,
        None => {
            let st = s.store.state().await?;
            let snapshot = engine::snapshot(&st, &s.rules, now_ms());
            let body = Bytes::from(
                serde_json::to_vec(&snapshot)
                    .map_err(|e| AppError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
            );
            if body.len() > wire::MAX_SNAPSHOT_BYTES {
                tracing::error!(bytes = body.len(), "snapshot larger than proxies accept");
            }
            s.snapshots.put(snapshot.version, body.clone());
            body
        }
    };
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Counts a waiting long-poll for as long as it lives: a client that goes away drops the
/// handler's future, and with it the guard.
struct Waiting<'a>(&'a AppState);

impl<'a> Waiting<'a> {
    fn new(s: &'a AppState) -> Self {
        let n = s.waiters.fetch_add(1, Ordering::SeqCst) + 1;
        s.metrics.poll_waiters.set(n);
        Waiting(s)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let n = self.0.waiters.fetch_sub(1, Ordering::SeqCst) - 1;
        self.0.metrics.poll_waiters.set(n);
    }
}

fn fleet_entry(headers: &HeaderMap, known: Option<u64>) -> Option<FleetEntry> {
    let proxy = headers.get(wire::PROXY_HEADER).and_then(|v| v.to_str().ok())?;
    if check_key("x-floodgate-proxy", proxy).is_err() {
        return None;
    }
    let breakers = headers
        .get(wire::FLEET_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= MAX_FLEET_HEADER_BYTES)
        .map(wire::decode_fleet_header)
        .unwrap_or_default();
    Some(FleetEntry { proxy: proxy.to_string(), last_poll_ms: now_ms(), version: known.unwrap_or(0), breakers })
}

/// How long a poll may take to learn the store's version (and read the snapshot): past it, the
/// answer is 503 (DESIGN: within one second when the store cannot be reached).
pub const STORE_DEADLINE: Duration = Duration::from_millis(800);

/// How long a poll waits for its fleet entry to be recorded before it goes on without it.
const POLL_RECORD_HEAD_START: Duration = Duration::from_millis(50);

/// Runs `f` within [`STORE_DEADLINE`] from `started`; 503 past it.
async fn by_deadline<T>(
    started: tokio::time::Instant,
    f: impl std::future::Future<Output = Result<T, AppError>>,
) -> Result<T, AppError> {
    tokio::time::timeout_at(started + STORE_DEADLINE, f).await.unwrap_or_else(|_| {
        Err(AppError(StatusCode::SERVICE_UNAVAILABLE, "store unavailable: no answer within the deadline".into()))
    })
}

/// The store's version now, confirmed with the store; lifted above the proxy's `known` version
/// when that is higher (the store restarted or lost its data): the proxy follows at once.
async fn confirmed_version(s: &AppState, known: Option<u64>) -> Result<u64, AppError> {
    let current = s.store.version().await?;
    match known {
        Some(k) if k > current => {
            let floor = k.min(floodgate_core::version::floor_cap(now_ms()));
            Ok(s.store.lift(floor).await?)
        }
        _ => Ok(current),
    }
}

async fn snapshot(
    AxState(s): AxState<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, AppError> {
    let started = tokio::time::Instant::now();
    let (known, wait) = snapshot_query(q.as_deref())?;
    if let Some(entry) = fleet_entry(&headers, known) {
        // Off the answer's path: a slow or hung store delays no poll (nor its 503) by more than
        // a head start, in which a store that answers has recorded it.
        let st = s.clone();
        let recording = tokio::spawn(async move {
            if let Err(e) = st.store.record_poll(entry).await {
                tracing::warn!(error = %e, "fleet entry not recorded");
            }
        });
        let _ = tokio::time::timeout(POLL_RECORD_HEAD_START, recording).await;
    }
    let mut versions = s.store.versions();
    versions.borrow_and_update();
    // The store's version, confirmed now: a replica that cannot reach it confirms nothing.
    let current = by_deadline(started, confirmed_version(&s, known)).await?;
    let Some(known) = known else { return by_deadline(started, snapshot_response(&s, current)).await };
    if current != known {
        // Newer, or (after a clock step back) older: the proxy decides; it follows a newer epoch.
        return by_deadline(started, snapshot_response(&s, current)).await;
    }
    if wait > 0 {
        let _waiting = Waiting::new(&s);
        let _ = tokio::time::timeout(Duration::from_secs(wait), versions.wait_for(|v| *v != known)).await;
    }
    let started = tokio::time::Instant::now();
    let current = by_deadline(started, confirmed_version(&s, Some(known))).await?;
    if current != known {
        by_deadline(started, snapshot_response(&s, current)).await
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

/// The original API's activate body: unknown fields are ignored, as the original did.
#[derive(Deserialize, Default)]
struct LegacyActivateBody {
    reason: Option<String>,
    ttl_s: Option<u64>,
    backpressure_level: Option<f64>,
}

fn parse_body<T: serde::de::DeserializeOwned + Default>(body: &Bytes) -> Result<T, AppError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    parse_json(body).map_err(|e| bad_request(format!("invalid activation body: {e}")))
}

/// Parses JSON; the error names the field where it went wrong (`alerts[0].status: ...`).
fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })
}

fn activate_command(key: String, body: ActivateBody) -> Result<Command, AppError> {
    check_key("key", &key)?;
    let reason = body.reason.unwrap_or_else(|| "manual".into());
    check_reason("reason", &reason)?;
    if let Some(t) = body.ttl_s {
        if t == 0 || t > MAX_TTL_S {
            return Err(bad_request(format!("ttl_s: from 1 to {MAX_TTL_S} (30 days), got {t}")));
        }
    }
    check_level("backpressure_level", body.backpressure_level)?;
    Ok(Command::Activate {
        key,
        reason,
        state: body.state.unwrap_or_default(),
        ttl_ms: body.ttl_s.map(|t| t * 1000),
        level: body.backpressure_level,
    })
}

#[derive(Debug, Serialize)]
pub struct KeyAnswer {
    pub key: String,
    pub outcome: Outcome,
}

async fn activate(
    AxState(s): AxState<Arc<AppState>>,
    key: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let Path(key) = key?;
    let cmd = activate_command(key.clone(), parse_body(&body?)?)?;
    let (outcome, _) = s.store.apply(cmd, &s.rules, now_ms()).await?;
    s.metrics.count(&outcome);
    let status = match outcome {
        Outcome::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        Outcome::SnapshotFull => StatusCode::INSUFFICIENT_STORAGE,
        _ => StatusCode::OK,
    };
    Ok((status, Json(KeyAnswer { key, outcome })).into_response())
}

async fn deactivate(
    AxState(s): AxState<Arc<AppState>>,
    key: Result<Path<String>, PathRejection>,
) -> Result<Response, AppError> {
    let Path(key) = key?;
    check_key("key", &key)?;
    let (outcome, _) = s.store.apply(Command::Deactivate { key: key.clone() }, &s.rules, now_ms()).await?;
    s.metrics.count(&outcome);
    Ok(Json(KeyAnswer { key, outcome }).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ResetBody {
    reason: Option<String>,
}

/// `POST /api/v1/breakers/{key}/reset`: every proxy closes its local breaker(s) for `key` (or
/// all, `*`) once, through the recovery ramp. The token was checked by the layer.
async fn reset(
    AxState(s): AxState<Arc<AppState>>,
    key: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let Path(key) = key?;
    let body = body?;
    crate::reset::check_key(&key).map_err(bad_request)?;
    let body: ResetBody = if body.iter().all(|b| b.is_ascii_whitespace()) {
        ResetBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| bad_request(format!("invalid reset body: {e}")))?
    };
    let reason = body.reason.unwrap_or_else(|| "manual".into());
    check_reason("reason", &reason)?;
    let (outcome, _) = s.store.apply(Command::Reset { key: key.clone(), reason }, &s.rules, now_ms()).await?;
    s.metrics.count(&outcome);
    Ok(Json(ResetAnswer { key, outcome }).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainBody {
    per_second: u64,
    duration_s: u64,
    reason: Option<String>,
}

/// `POST /api/v1/breakers/{key}/drain`: every proxy closes its upgraded streams to `key` (or all,
/// `*`) at most `per_second` per second, for `duration_s`. The token was checked by the layer.
async fn drain(
    AxState(s): AxState<Arc<AppState>>,
    key: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let Path(key) = key?;
    let body = body?;
    check_key("key", &key)?;
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(bad_request("per_second: required (body {\"per_second\": N, \"duration_s\": S})"));
    }
    let b: DrainBody = parse_json(&body).map_err(|e| bad_request(format!("invalid drain body: {e}")))?;
    let (per_second, duration_ms) = crate::drain::check(b.per_second, b.duration_s).map_err(bad_request)?;
    let reason = b.reason.unwrap_or_else(|| "manual".into());
    check_reason("reason", &reason)?;
    let cmd = Command::Drain(crate::drain::Request { key: key.clone(), reason, per_second, duration_ms });
    let (outcome, _) = s.store.apply(cmd, &s.rules, now_ms()).await?;
    s.metrics.count(&outcome);
    let status = match outcome {
        Outcome::SnapshotFull => StatusCode::INSUFFICIENT_STORAGE,
        _ => StatusCode::OK,
    };
    Ok((status, Json(KeyAnswer { key, outcome })).into_response())
}

#[derive(Debug, Serialize)]
pub struct ResetAnswer {
    pub key: String,
    pub outcome: Outcome,
}

/// One activation in `GET /api/v1/breakers`.
#[derive(Debug, Serialize)]
pub struct ActivationView {
    pub key: String,
    pub state: Forced,
    pub reason: String,
    pub source: Source,
    pub since: String,
    pub until: Option<String>,
    pub deactivate_at: Option<String>,
    pub backpressure_level: Option<f64>,
    pub event_id: String,
    /// Held by an operator (until `until`, or until deactivated).
    pub manual: bool,
    /// Fingerprints of the alerts firing for it.
    pub alerts: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct EventView {
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub key: String,
    pub reason: String,
    pub source: Source,
    pub backpressure_level: Option<f64>,
    pub timestamp: String,
}

/// A firing alert the cooldown or the hourly cap holds back.
#[derive(Debug, Serialize)]
pub struct WaitingView {
    pub fingerprint: String,
    pub key: String,
    pub reason: String,
    pub starts_at: String,
}

/// A drain in progress in `GET /api/v1/breakers`.
#[derive(Debug, Serialize)]
pub struct DrainView {
    pub key: String,
    pub per_second: u32,
    pub reason: String,
    pub since: String,
    pub until: String,
    pub event_id: String,
}

#[derive(Debug, Serialize)]
pub struct BreakersAnswer {
    pub version: u64,
    pub activations: Vec<ActivationView>,
    pub drains: Vec<DrainView>,
    pub waiting: Vec<WaitingView>,
    pub events: Vec<EventView>,
}

async fn breakers(AxState(s): AxState<Arc<AppState>>) -> Result<Response, AppError> {
    let st = s.store.state().await?;
    let now = now_ms();
    let ends = engine::ends(&st, &s.rules);
    let activations = st
        .activations
        .values()
        .map(|a| ActivationView {
            key: a.key.clone(),
            state: a.state(),
            reason: a.reason().to_string(),
            source: a.source,
            since: rfc3339(a.since_ms),
            until: ends.get(&a.key).copied().flatten().map(rfc3339),
            deactivate_at: a.alert.as_ref().and_then(|h| h.deactivate_at_ms).map(rfc3339),
            backpressure_level: a.level(),
            event_id: a.event_id.clone(),
            manual: a.manual.is_some(),
            alerts: st
                .alerts
                .iter()
                .filter(|(_, t)| t.key == a.key && t.holds(&s.rules, now))
                .map(|(fp, _)| fp.clone())
                .collect(),
        })
        .collect();
    let waiting = st
        .alerts
        .iter()
        .filter(|(_, t)| t.holds(&s.rules, now) && !st.activations.contains_key(&t.key))
        .map(|(fp, t)| WaitingView {
            fingerprint: fp.clone(),
            key: t.key.clone(),
            reason: t.reason.clone(),
            starts_at: rfc3339(t.starts_ms),
        })
        .collect();
    let events = st
        .events
        .iter()
        .rev()
        .map(|e| EventView {
            event_id: e.event_id.clone(),
            kind: e.kind.clone(),
            key: e.key.clone(),
            reason: e.reason.clone(),
            source: e.source,
            backpressure_level: e.backpressure_level,
            timestamp: rfc3339(e.timestamp_ms),
        })
        .collect();
    let drains = st
        .drains
        .iter()
        .filter(|d| d.until_ms > now)
        .map(|d| DrainView {
            key: d.key.clone(),
            per_second: d.per_second,
            reason: d.reason.clone(),
            since: rfc3339(d.since_ms),
            until: rfc3339(d.until_ms),
            event_id: d.event_id.clone(),
        })
        .collect();
    Ok(Json(BreakersAnswer { version: st.version, activations, drains, waiting, events }).into_response())
}

#[derive(Debug, Serialize)]
pub struct ProxyView {
    pub proxy: String,
    pub last_poll: String,
    pub version: u64,
    pub breakers: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
pub struct FleetAnswer {
    pub proxies: Vec<ProxyView>,
}

async fn fleet(AxState(s): AxState<Arc<AppState>>) -> Result<Response, AppError> {
    let proxies = s
        .store
        .fleet(now_ms())
        .await?
        .into_iter()
        .map(|f| ProxyView {
            proxy: f.proxy,
            last_poll: rfc3339(f.last_poll_ms),
            version: f.version,
            breakers: f.breakers,
        })
        .collect();
    Ok(Json(FleetAnswer { proxies }).into_response())
}

// ---- the original global API (key `*`) ----

async fn legacy_status(AxState(s): AxState<Arc<AppState>>) -> Result<Response, AppError> {
    let st = s.store.state().await?;
    Ok(Json(legacy::status(&st, &s.rules, now_ms())).into_response())
}

fn answer(status: &str, message: String) -> Response {
    Json(legacy::Answer { status: status.to_string(), message }).into_response()
}

async fn legacy_activate(
    AxState(s): AxState<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let b: LegacyActivateBody = parse_body(&body?)?;
    let body = ActivateBody { reason: b.reason, ttl_s: b.ttl_s, backpressure_level: b.backpressure_level, state: None };
    let cmd = activate_command(legacy::KEY.to_string(), body)?;
    let (outcome, _) = s.store.apply(cmd, &s.rules, now_ms()).await?;
    s.metrics.count(&outcome);
    Ok(match outcome {
        Outcome::Activated { event_id } => answer("activated", format!("circuit breaker activated (event {event_id})")),
        Outcome::AlreadyActive => answer("skipped", "circuit breaker already active".into()),
        Outcome::RateLimited => answer("skipped", "rate limited: too many activations in the last hour".into()),
        Outcome::SnapshotFull => answer("skipped", "too many activations for the snapshot".into()),
        other => answer("skipped", format!("{other:?}")),
    })
}

async fn legacy_deactivate(AxState(s): AxState<Arc<AppState>>) -> Result<Response, AppError> {
    let (outcome, _) = s.store.apply(Command::Deactivate { key: legacy::KEY.into() }, &s.rules, now_ms()).await?;
    s.metrics.count(&outcome);
    Ok(match outcome {
        Outcome::Deactivated { .. } => answer("deactivated", "circuit breaker deactivated".into()),
        _ => answer("skipped", "circuit breaker not active".into()),
    })
}

#[derive(Debug, Serialize)]
pub struct Health {
    pub status: String,
}

async fn ready(AxState(s): AxState<Arc<AppState>>) -> Response {
    match s.store.ping().await {
        Ok(()) => Json(Health { status: "ready".into() }).into_response(),
        Err(e) => AppError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

async fn metrics(AxState(s): AxState<Arc<AppState>>) -> Response {
    match s.metrics.render() {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response(),
        Err(e) => AppError(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}
