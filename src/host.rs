//! The one adapter between Floodgate and the proxy-wasm host. Every host call the filters make
//! goes through here, and every status the host can return becomes a [`HostError`]: nothing here
//! panics, whatever the host answers. (The SDK's own `hostcalls` panic on statuses they do not
//! expect, so the calls are declared here directly.)

use std::ptr::null_mut;

/// A host call that did not succeed, with the raw proxy-wasm status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostError {
    NotFound,
    BadArgument,
    SerializationFailure,
    ParseFailure,
    /// Shared data changed since it was read.
    CasMismatch,
    InternalFailure,
    Unimplemented,
    Other(u32),
}

impl HostError {
    fn from_status(status: u32) -> Result<(), HostError> {
        match status {
            0 => Ok(()),
            1 => Err(HostError::NotFound),
            2 => Err(HostError::BadArgument),
            3 => Err(HostError::SerializationFailure),
            4 => Err(HostError::ParseFailure),
            8 => Err(HostError::CasMismatch),
            10 => Err(HostError::InternalFailure),
            12 => Err(HostError::Unimplemented),
            s => Err(HostError::Other(s)),
        }
    }
}

impl HostError {
    /// The error for a status the SDK returned (calls that must go through the SDK).
    pub fn from_sdk(status: proxy_wasm::types::Status) -> HostError {
        match HostError::from_status(status as u32) {
            Err(e) => e,
            Ok(()) => HostError::Other(0),
        }
    }
}

pub type HostResult<T> = Result<T, HostError>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderMap {
    RequestHeaders = 0,
    ResponseHeaders = 2,
    HttpCallResponseHeaders = 6,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Buffer {
    HttpResponseBody = 1,
    HttpCallResponseBody = 4,
    VmConfiguration = 6,
    PluginConfiguration = 7,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter = 0,
    Gauge = 1,
}

#[allow(clashing_extern_declarations)]
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_get_property(path_data: *const u8, path_size: usize, rd: *mut *mut u8, rs: *mut usize) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        rd: *mut *mut u8,
        rs: *mut usize,
    ) -> u32;
    fn proxy_get_buffer_bytes(buffer_type: u32, start: usize, max_size: usize, rd: *mut *mut u8, rs: *mut usize)
        -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        rd: *mut *mut u8,
        rs: *mut usize,
        cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(key_data: *const u8, key_size: usize, vd: *const u8, vs: usize, cas: u32) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        details_data: *const u8,
        details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_close_stream(stream_type: u32) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_define_metric(metric_type: u32, name_data: *const u8, name_size: usize, return_id: *mut u32) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_set_buffer_bytes(buffer_type: u32, start: usize, size: usize, data: *const u8, data_size: usize) -> u32;
}

#[link(wasm_import_module = "wasi_snapshot_preview1")]
extern "C" {
    fn random_get(buf: *mut u8, len: usize) -> u16;
}

/// 64 random bits from the host (WASI `random_get`, which Envoy serves from its own random
/// source): two workers that start in the same instant still draw different values.
pub fn random_u64() -> HostResult<u64> {
    let mut b = [0u8; 8];
    // SAFETY: the host writes at most 8 bytes into a live buffer of 8 bytes.
    match unsafe { random_get(b.as_mut_ptr(), b.len()) } {
        0 => Ok(u64::from_le_bytes(b)),
        e => Err(HostError::Other(u32::from(e))),
    }
}

/// A `u64` property (Envoy serializes integers as 8 little-endian bytes); `Ok(None)` when unset.
pub fn property_u64(path: &[&str]) -> HostResult<Option<u64>> {
    Ok(property(path)?.and_then(|b| b.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes)))
}

/// Takes ownership of a buffer the host allocated in our memory (through the SDK's allocator).
fn owned(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        return None;
    }
    // SAFETY: the host wrote `size` bytes into a buffer it obtained from proxy_on_memory_allocate,
    // which allocates a Vec<u8> of exactly that capacity with the global allocator.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

pub fn log(level: LogLevel, message: &str) {
    // A failed log call has nowhere to be reported: ignore it.
    // SAFETY: pointer and length of a live &str.
    let _ = unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) };
}

/// Host time in milliseconds since the epoch.
pub fn now_ms() -> HostResult<u64> {
    let mut ns = 0u64;
    // SAFETY: the host writes one u64.
    HostError::from_status(unsafe { proxy_get_current_time_nanoseconds(&mut ns) })?;
    Ok(ns / 1_000_000)
}

/// A property by path (`["xds", "cluster_name"]`). `Ok(None)` when it is not set.
pub fn property(path: &[&str]) -> HostResult<Option<Vec<u8>>> {
    let mut serialized = Vec::with_capacity(32);
    for part in path {
        serialized.extend_from_slice(part.as_bytes());
        serialized.push(0);
    }
    property_path(&serialized)
}

/// A property by its path as the ABI takes it: each segment followed by `\0` (a constant on
/// the request path, so nothing is built per request).
pub fn property_path(serialized: &[u8]) -> HostResult<Option<Vec<u8>>> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: valid input slice; the host fills the out-pointers.
    match HostError::from_status(unsafe {
        proxy_get_property(serialized.as_ptr(), serialized.len(), &mut data, &mut size)
    }) {
        Ok(()) => Ok(owned(data, size)),
        Err(HostError::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn header(map: HeaderMap, name: &str) -> HostResult<Option<Vec<u8>>> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: valid input slice; the host fills the out-pointers.
    match HostError::from_status(unsafe {
        proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), &mut data, &mut size)
    }) {
        Ok(()) => Ok(owned(data, size)),
        Err(HostError::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes a header (no error when it is absent).
pub fn remove_header(map: HeaderMap, name: &str) -> HostResult<()> {
    // SAFETY: valid input slice.
    HostError::from_status(unsafe { proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) })
}

pub fn buffer(kind: Buffer, max_size: usize) -> HostResult<Option<Vec<u8>>> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: the host fills the out-pointers.
    match HostError::from_status(unsafe { proxy_get_buffer_bytes(kind as u32, 0, max_size, &mut data, &mut size) }) {
        Ok(()) => Ok(owned(data, size)),
        Err(HostError::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A shared-data value and its CAS token; `(None, 0)` when the key does not exist.
pub fn shared_get(key: &str) -> HostResult<(Option<Vec<u8>>, u32)> {
    let (mut data, mut size, mut cas) = (null_mut(), 0usize, 0u32);
    // SAFETY: valid input slice; the host fills the out-pointers.
    match HostError::from_status(unsafe {
        proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas)
    }) {
        // An empty value comes back as no buffer at all (the host allocates nothing for it):
        // it is there, and empty.
        Ok(()) => Ok((Some(owned(data, size).unwrap_or_default()), cas)),
        Err(HostError::NotFound) => Ok((None, 0)),
        Err(e) => Err(e),
    }
}

/// Writes `value` if the key's CAS is still `cas` (0 = unconditionally).
pub fn shared_set(key: &str, value: &[u8], cas: u32) -> HostResult<()> {
    // SAFETY: valid input slices.
    HostError::from_status(unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) })
}

/// Serializes a header list in the proxy-wasm map format, into one buffer sized once.
pub fn serialize_headers(headers: &[(&str, &str)]) -> Vec<u8> {
    let data: usize = headers.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut out = Vec::with_capacity(4 + headers.len() * 8 + data);
    out.extend_from_slice(&(headers.len() as u32).to_le_bytes());
    for (k, v) in headers {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in headers {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

pub fn send_local_response(status: u16, headers: &[(&str, &str)], body: &[u8], details: &str) -> HostResult<()> {
    let map = serialize_headers(headers);
    // SAFETY: valid input slices.
    HostError::from_status(unsafe {
        proxy_send_local_response(
            u32::from(status),
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            map.as_ptr(),
            map.len(),
            -1,
        )
    })
}

pub fn close_downstream() -> HostResult<()> {
    const DOWNSTREAM: u32 = 2;
    // SAFETY: plain value.
    HostError::from_status(unsafe { proxy_close_stream(DOWNSTREAM) })
}

/// Makes `context_id` the context later host calls of this callback apply to (a root context
/// acting on one of its worker's streams).
pub fn set_effective_context(context_id: u32) -> HostResult<()> {
    // SAFETY: plain value.
    HostError::from_status(unsafe { proxy_set_effective_context(context_id) })
}

/// Resets the current HTTP stream (`proxy_close_stream(HttpRequest)`): for an upgraded stream,
/// Envoy closes the downstream connection.
pub fn close_http_stream() -> HostResult<()> {
    const HTTP_REQUEST: u32 = 0;
    // SAFETY: plain value.
    HostError::from_status(unsafe { proxy_close_stream(HTTP_REQUEST) })
}

/// Resumes the current HTTP stream's request, paused by its request-headers callback
/// (`proxy_continue_stream(HttpRequest)`).
pub fn resume_http_request() -> HostResult<()> {
    const HTTP_REQUEST: u32 = 0;
    // SAFETY: plain value.
    HostError::from_status(unsafe { proxy_continue_stream(HTTP_REQUEST) })
}

/// Replaces the `size` bytes of the current response body chunk by `data`.
pub fn replace_response_body(size: usize, data: &[u8]) -> HostResult<()> {
    const HTTP_RESPONSE_BODY: u32 = 1;
    // SAFETY: valid input slice.
    HostError::from_status(unsafe { proxy_set_buffer_bytes(HTTP_RESPONSE_BODY, 0, size, data.as_ptr(), data.len()) })
}

pub fn define_metric(kind: MetricKind, name: &str) -> HostResult<u32> {
    let mut id = 0u32;
    // SAFETY: valid input slice; the host writes one u32.
    HostError::from_status(unsafe { proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment_metric(id: u32, offset: i64) -> HostResult<()> {
    // SAFETY: plain values.
    HostError::from_status(unsafe { proxy_increment_metric(id, offset) })
}

pub fn record_metric(id: u32, value: u64) -> HostResult<()> {
    // SAFETY: plain values.
    HostError::from_status(unsafe { proxy_record_metric(id, value) })
}

pub fn set_tick_period_ms(period: u32) -> HostResult<()> {
    // SAFETY: plain value.
    HostError::from_status(unsafe { proxy_set_tick_period_milliseconds(period) })
}

/// Routes the `log` crate to the host's log, dropping messages the host cannot take.
struct HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }
    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let level = match record.level() {
                log::Level::Error => LogLevel::Error,
                log::Level::Warn => LogLevel::Warn,
                log::Level::Info => LogLevel::Info,
                log::Level::Debug => LogLevel::Debug,
                log::Level::Trace => LogLevel::Trace,
            };
            log(level, &record.args().to_string());
        }
    }
    fn flush(&self) {}
}

static LOGGER: HostLogger = HostLogger;

/// Installs the logger and a panic hook that reports at critical level (a panic aborts the VM;
/// the log line is what tells an operator why).
pub fn install_logging() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
    std::panic::set_hook(Box::new(|info| log(LogLevel::Critical, &format!("{info}"))));
}
