//! Polling the control plane: exactly one poller per Envoy process, chosen through a lease in
//! shared data (so it works with nothing but the HTTP filter configured, as under Istio's
//! WasmPlugin). Every root context ticks: it refreshes its worker's copy of the view, and takes
//! or renews the lease; the holder long-polls `GET /v1/snapshot` and writes what it gets into
//! shared data. Nothing here refuses traffic: a failing control plane only makes the view stale.

use std::rc::Rc;

use crate::config::ControlConfig;
use crate::host::{self, Buffer, HeaderMap, HostError};
use crate::metrics::PollResult;
use crate::store::{self, Step, StoreError, REGISTRY_KEY};
use crate::vm::{self, Vm};
use floodgate_core::poll::{self, Lease, LeaseStep};
use floodgate_core::remote::{self, RemoteView, SnapshotError};
use floodgate_core::state::Head;
use floodgate_core::wire;

/// The view every worker reads (JSON of [`RemoteView`]).
pub const VIEW_KEY: &str = "floodgate/control";
/// `<worker>:<expires_ms>` of the worker that polls.
pub const LEASE_KEY: &str = "floodgate/poller";
/// A counter handing out worker numbers, only when the host has no randomness for worker ids.
pub const WORKERS_KEY: &str = "floodgate/workers";
/// The keys `floodgate_forced` is 1 for, one a line, kept by whichever worker polls.
pub const FORCED_KEY: &str = "floodgate/forced";
/// How often each root context ticks: the delay between a new snapshot and every worker using it.
pub const TICK_MS: u32 = 100;

struct InFlight {
    token: u32,
    sent_ms: u64,
    /// The version the poll asked about (None: asked for the snapshot at once).
    asked: Option<u64>,
}

/// Dispatches an HTTP call through the SDK (which must know the call to route its answer back to
/// the root context): `(cluster, headers, timeout_ms) -> token`.
pub type Dispatch<'a> = &'a dyn Fn(&str, Vec<(&str, &str)>, u32) -> Result<u32, HostError>;

pub struct Poller {
    config: Rc<ControlConfig>,
    /// A random 64-bit id: two workers never draw the same one, however they start.
    worker: Option<u64>,
    /// Keys a configuration forces open (`*` for `defaults`), reported in `floodgate_forced`.
    config_forced: Vec<String>,
    started_ms: u64,
    in_flight: Option<InFlight>,
    next_poll_ms: u64,
    failures: u32,
    proxy_id: Option<String>,
    /// Gauges as last set by this poller, to write only changes.
    reported: Option<(u64, bool)>,
}

impl Poller {
    pub fn new(config: Rc<ControlConfig>, config_forced: Vec<String>) -> Self {
        Poller {
            config,
            worker: None,
            config_forced,
            started_ms: 0,
            in_flight: None,
            next_poll_ms: 0,
            failures: 0,
            proxy_id: None,
            reported: None,
        }
    }

    pub fn stale_after_ms(&self) -> u64 {
        self.config.stale_after_s.saturating_mul(1000)
    }

    pub fn on_tick(&mut self, dispatch: Dispatch) {
        let Ok(now) = host::now_ms() else { return };
        if self.started_ms == 0 {
            self.started_ms = now;
        }
        vm::with(refresh_view);
        let Some(worker) = self.worker_id() else { return };
        if !holds_lease(worker, now) {
            return;
        }
        self.report_gauges(now);
        if let Some(f) = &self.in_flight {
            // Envoy always answers a dispatched call (at the latest at its timeout); this only
            // guards against a callback that never comes.
            if !poll::callback_overdue(f.sent_ms, self.config.timeout_ms, now) {
                return;
            }
            log::warn!("control poll {} got no callback; polling again", f.token);
            self.in_flight = None;
        }
        if now >= self.next_poll_ms {
            self.dispatch(now, dispatch);
        }
    }

    fn worker_id(&mut self) -> Option<u64> {
        if self.worker.is_none() {
            let id = host::random_u64().or_else(|e| {
                log::warn!("control poller: no host randomness ({e:?}); numbering workers instead");
                next_worker_number().map(u64::from)
            });
            match id {
                Ok(n) => self.worker = Some(n.max(1)),
                Err(e) => log::warn!("control poller: no worker id yet: {e:?}"),
            }
        }
        self.worker
    }

    fn dispatch(&mut self, now: u64, dispatch: Dispatch) {
        let view = vm::with(|vm| vm.remote.view.clone());
        let poll::PollRequest { asked, path } =
            poll::poll_request(&view, now, self.stale_after_ms(), &self.config.path, u64::from(self.config.wait_s));
        let proxy = self.proxy_id().to_string();
        let states = local_states();
        let auth = format!("Bearer {}", self.config.token);
        let mut headers = vec![
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", self.config.authority.as_str()),
            (wire::PROXY_HEADER, proxy.as_str()),
            (wire::FLEET_HEADER, states.as_str()),
        ];
        if !self.config.token.is_empty() {
            headers.push(("authorization", auth.as_str()));
        }
        let timeout = u32::try_from(self.config.timeout_ms).unwrap_or(u32::MAX);
        match dispatch(&self.config.cluster, headers, timeout) {
            Ok(token) => self.in_flight = Some(InFlight { token, sent_ms: now, asked }),
            Err(e) => self.failed(now, &format!("cannot dispatch to cluster {:?}: {e:?}", self.config.cluster)),
        }
    }

    pub fn on_response(&mut self, token: u32, num_headers: usize, body_size: usize) {
        let Some(f) = self.in_flight.take_if(|f| f.token == token) else { return };
        let Ok(now) = host::now_ms() else { return };
        if num_headers == 0 {
            return self.failed(now, "no response (unreachable, reset or timed out)");
        }
        let status = host::header(HeaderMap::HttpCallResponseHeaders, ":status").ok().flatten();
        match status.as_deref() {
            Some(b"304") => match write_view(|v| poll::confirm(v, f.asked, now).ok_or(None)) {
                Ok(_) => self.succeeded(PollResult::NotModified),
                Err(e) => self.failed(now, &e.to_string()),
            },
            Some(b"200") => {
                if body_size > remote::MAX_SNAPSHOT_BYTES {
                    return self.failed(now, &format!("snapshot ignored: {:?}", SnapshotError::TooLarge(body_size)));
                }
                let body = match host::buffer(Buffer::HttpCallResponseBody, body_size) {
                    Ok(b) => b.unwrap_or_default(),
                    Err(e) => return self.failed(now, &format!("cannot read the snapshot: {e:?}")),
                };
                let snapshot = match remote::parse_snapshot(&body) {
                    Ok(s) => s,
                    Err(e) => return self.failed(now, &format!("snapshot ignored: {e:?}")),
                };
                let stale_after = self.stale_after_ms();
                match write_view(|v| v.apply(snapshot.clone(), now, stale_after).map_err(Some)) {
                    Ok(v) => {
                        log::info!(
                            "control snapshot version {} applied ({} override(s))",
                            v.version,
                            v.overrides.len()
                        );
                        vm::with(|vm| vm.remote = vm::RemoteCache { cas: 0, view: Rc::new(v) });
                        crate::reset::on_snapshot(&body, now);
                        self.succeeded(PollResult::Ok);
                        self.report_gauges(now);
                    }
                    Err(e) => self.failed(now, &e.to_string()),
                }
            }
            other => {
                let status = other.map(String::from_utf8_lossy).unwrap_or_default();
                self.failed(now, &format!("control plane answered {status:?}"))
            }
        }
    }

    fn succeeded(&mut self, result: PollResult) {
        self.failures = 0;
        self.next_poll_ms = 0;
        vm::with(|vm| vm.metrics.poll(result));
    }

    fn failed(&mut self, now: u64, why: &str) {
        self.failures = self.failures.saturating_add(1);
        let delay = poll::retry_delay_ms(self.config.retry_ms, self.failures, vm::with(|vm| vm.unit(now)));
        self.next_poll_ms = now.saturating_add(delay);
        vm::with(|vm| vm.metrics.poll(PollResult::Error));
        log::warn!("control poll failed ({} in a row): {why}; next in {delay} ms", self.failures);
    }

    fn report_gauges(&mut self, now: u64) {
        let stale_after = self.stale_after_ms();
        vm::with(|vm: &mut Vm| {
            let view = vm.remote.view.clone();
            let stale = poll::is_stale(view.confirmed_ms, self.started_ms, now, stale_after);
            if self.reported != Some((view.version, stale)) {
                vm.metrics.control(view.version, stale);
                self.reported = Some((view.version, stale));
            }
            let mut forced: Vec<String> = view.forced_open_keys(now, stale_after).map(str::to_string).collect();
            forced.extend(self.config_forced.iter().cloned());
            reconcile_forced(vm, forced);
        })
    }

    fn proxy_id(&mut self) -> &str {
        self.proxy_id.get_or_insert_with(|| {
            // Envoy's `node.id` (the attribute `xds.node`; plain `node` is not served to root contexts).
            let id = host::property(&["xds", "node", "id"]).ok().flatten().and_then(|b| String::from_utf8(b).ok());
            id.filter(|s| !s.is_empty()).unwrap_or_else(|| "unknown".to_string())
        })
    }
}

/// Decodes the shared view into this worker's cache when its CAS moved.
fn refresh_view(vm: &mut Vm) {
    match host::shared_get(VIEW_KEY) {
        Ok((Some(bytes), cas)) if cas != vm.remote.cas => match serde_json::from_slice::<RemoteView>(&bytes) {
            Ok(view) => vm.remote = vm::RemoteCache { cas, view: Rc::new(view) },
            Err(e) => log::warn!("shared control view unreadable, keeping the last one: {e}"),
        },
        Ok(_) => {}
        Err(e) => log::debug!("shared control view not read: {e:?}"),
    }
}

enum WriteError {
    Host(HostError),
    Contended,
    Encode,
    Refused(SnapshotError),
}

impl From<StoreError> for WriteError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Host(e) => WriteError::Host(e),
            StoreError::Contended => WriteError::Contended,
        }
    }
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Host(e) => write!(f, "cannot store the view: {e:?}"),
            WriteError::Contended => write!(f, "cannot store the view: other workers kept writing"),
            WriteError::Encode => write!(f, "cannot encode the view"),
            WriteError::Refused(e) => write!(f, "snapshot ignored: {e:?}"),
        }
    }
}

/// Read-modify-write of the shared view. `step` returning `Err(None)` leaves the view as it is.
fn write_view(
    mut step: impl FnMut(&RemoteView) -> Result<RemoteView, Option<SnapshotError>>,
) -> Result<RemoteView, WriteError> {
    store::cas_update(VIEW_KEY, None, |bytes| {
        let current: RemoteView = bytes.and_then(|b| serde_json::from_slice(b).ok()).unwrap_or_default();
        match step(&current) {
            Ok(next) => {
                let encoded = serde_json::to_vec(&next).map_err(|_| WriteError::Encode)?;
                Ok(Step::Write(encoded, next))
            }
            Err(None) => Ok(Step::Keep(current)),
            Err(Some(e)) => Err(WriteError::Refused(e)),
        }
    })
}

/// Takes the lease if it is free or expired, renews it when half spent. True while held.
///
/// A lease taken from nobody (or from another worker) is held only once a later tick reads it
/// back: Envoy creates a missing key unconditionally whatever CAS is given, so two workers that
/// both found no lease both "succeed", the later write winning. Reading back on the next tick
/// (each write happens within one callback, long before) leaves exactly one holder.
fn holds_lease(worker: u64, now: u64) -> bool {
    let Ok((bytes, cas)) = host::shared_get(LEASE_KEY) else { return false };
    let current = bytes.as_deref().and_then(Lease::parse);
    match poll::lease_step(current, worker, now) {
        LeaseStep::Hold => true,
        LeaseStep::Wait => false,
        LeaseStep::Take(lease) => {
            let taken = host::shared_set(LEASE_KEY, lease.encode().as_bytes(), cas).is_ok();
            let renewed = current.is_some_and(|l| l.holder == worker && l.expires_ms > now);
            if taken && !renewed {
                log::info!("worker {worker:016x} takes the control poller lease");
            }
            taken && renewed
        }
    }
}

/// Sets `floodgate_forced` to what holds now (`desired`), against the list of keys it was last
/// set to 1 for, kept in shared data: whichever worker reports clears what another set.
pub fn reconcile_forced(vm: &mut Vm, mut desired: Vec<String>) {
    desired.sort_unstable();
    desired.dedup();
    let Ok((bytes, cas)) = host::shared_get(FORCED_KEY) else { return };
    let bytes = bytes.unwrap_or_default();
    let current: Vec<&str> =
        bytes.split(|&b| b == b'\n').filter_map(|k| std::str::from_utf8(k).ok()).filter(|k| !k.is_empty()).collect();
    if current.len() == desired.len() && current.iter().zip(&desired).all(|(a, b)| *a == b.as_str()) {
        return;
    }
    let encoded = desired.join("\n");
    if host::shared_set(FORCED_KEY, encoded.as_bytes(), cas).is_err() {
        return; // another worker reported meanwhile; the next tick compares again
    }
    for key in current.iter().filter(|k| !desired.iter().any(|d| d == *k)) {
        vm.metrics.forced(key, false);
    }
    for key in desired.iter().filter(|d| !current.contains(&d.as_str())) {
        vm.metrics.forced(key, true);
    }
}

fn next_worker_number() -> Result<u32, StoreError> {
    store::cas_update(WORKERS_KEY, Some(b"0"), |bytes| {
        let n: u32 = bytes.and_then(|b| std::str::from_utf8(b).ok()?.parse().ok()).unwrap_or(0);
        let next = n.wrapping_add(1).max(1);
        Ok(Step::Write(next.to_string().into_bytes(), next))
    })
}

/// The fleet header: this Envoy's breakers and their phases, for `GET /api/v1/fleet`.
fn local_states() -> String {
    let Ok((Some(list), _)) = host::shared_get(REGISTRY_KEY) else { return String::new() };
    let states = list.split(|&b| b == b'\n').filter_map(|key| {
        let key = std::str::from_utf8(key).ok().filter(|k| !k.is_empty())?;
        let (bytes, _) = host::shared_get(&store::state_key(key)).ok()?;
        Some((key, Head::peek(&bytes?)?.phase.name()))
    });
    wire::encode_fleet_header(states)
}
