//! The shared-data store, with Envoy's CAS semantics.

use wasmtime::Linker;

use super::memory::{give, read, read_str, write_u32};
use crate::abi::status;
use crate::state::{lock, WorkerState};

pub(super) fn link(linker: &mut Linker<WorkerState>) -> wasmtime::Result<()> {
    host_call!(linker, "proxy_get_shared_data", |c, k: i32, kl: i32, ptr_out: i32, size_out: i32, cas_out: i32| {
        let key = read_str(&mut c, k, kl)?;
        let found = lock(&c.data().shared).data.get(&key).cloned();
        match found {
            Some((value, cas)) => {
                give(&mut c, &value, ptr_out, size_out)?;
                write_u32(&mut c, cas_out, cas)?;
                Ok(0)
            }
            None => Ok(status::NOT_FOUND as i32),
        }
    });
    host_call!(linker, "proxy_set_shared_data", |c, k: i32, kl: i32, v: i32, vl: i32, cas: i32| {
        let key = read_str(&mut c, k, kl)?;
        let value = read(&mut c, v, vl)?;
        let mut s = lock(&c.data().shared);
        // Envoy: cas 0 writes unconditionally; a stale cas on an existing key fails.
        if let Some((_, current)) = s.data.get(&key) {
            if cas != 0 && cas as u32 != *current {
                return Ok(status::CAS_MISMATCH as i32);
            }
        }
        let next = s.next_cas();
        s.data.insert(key, (value, next));
        Ok(0)
    });
    Ok(())
}
