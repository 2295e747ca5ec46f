//! The manual clock and the tick period.

use wasmtime::Linker;

use super::memory::write;
use crate::state::{lock, WorkerState};

pub(super) fn link(linker: &mut Linker<WorkerState>) -> wasmtime::Result<()> {
    host_call!(linker, "proxy_get_current_time_nanoseconds", |c, out: i32| {
        let now = lock(&c.data().shared).clock_ns;
        write(&mut c, out, &now.to_le_bytes())?;
        Ok(0)
    });
    host_call!(linker, "proxy_set_tick_period_milliseconds", |c, period: i32| {
        c.data_mut().tick_period_ms = period as u32;
        Ok(0)
    });
    Ok(())
}
