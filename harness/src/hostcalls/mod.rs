//! The host calls (imports of module `env`), by concern. Each is registered once with
//! [`host_call!`], which counts it (and the instructions run since the previous call) into the callback's
//! [`crate::CallStats`] and answers an injected
//! fault's status instead of running it. They follow Envoy's semantics: the proxy-wasm Rust SDK
//! panics on statuses it does not expect, so the statuses matter.

use wasmtime::{Caller, Linker};

use crate::state::WorkerState;

/// What a host call sees: the calling worker's state and the module's exports.
pub(crate) type Mem<'a> = Caller<'a, WorkerState>;

/// Registers host call `$name` with the closure's arguments and body (which returns the status):
/// every call is counted, and an injected fault answers its status without running the body.
macro_rules! host_call {
    ($linker:expr, $name:expr, |$c:ident $(, $arg:ident : $ty:ty)* $(,)?| $body:block) => {{
        let name: &'static str = $name;
        $linker.func_wrap(
            "env",
            name,
            move |mut $c: $crate::hostcalls::Mem<'_> $(, $arg: $ty)*| -> wasmtime::Result<i32> {
                let fuel = $c.get_fuel().unwrap_or(0);
                if let Some(status) = $c.data_mut().count(name, fuel) {
                    return Ok(status as i32);
                }
                $body
            },
        )?;
    }};
}

mod buffers;
mod context;
mod headers;
mod http_calls;
mod log;
mod memory;
mod metrics;
mod properties;
mod shared_data;
mod stream;
mod time;

/// Adds every host call this host implements to `linker`.
pub(crate) fn link(linker: &mut Linker<WorkerState>) -> wasmtime::Result<()> {
    log::link(linker)?;
    time::link(linker)?;
    properties::link(linker)?;
    headers::link(linker)?;
    buffers::link(linker)?;
    shared_data::link(linker)?;
    stream::link(linker)?;
    context::link(linker)?;
    metrics::link(linker)?;
    http_calls::link(linker)
}
