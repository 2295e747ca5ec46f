//! Reading and writing the module's linear memory, and handing it bytes it allocates.

use wasmtime::{bail, format_err, Extern};

use super::Mem;

fn memory(caller: &mut Mem<'_>) -> wasmtime::Result<wasmtime::Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Ok(m),
        _ => bail!("module exports no memory"),
    }
}

pub(super) fn read(caller: &mut Mem<'_>, ptr: i32, len: i32) -> wasmtime::Result<Vec<u8>> {
    let m = memory(caller)?;
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    let data = m.data(&caller);
    data.get(ptr..ptr + len).map(<[u8]>::to_vec).ok_or_else(|| format_err!("read out of bounds: {ptr}+{len}"))
}

pub(super) fn read_str(caller: &mut Mem<'_>, ptr: i32, len: i32) -> wasmtime::Result<String> {
    Ok(String::from_utf8_lossy(&read(caller, ptr, len)?).into_owned())
}

pub(super) fn write(caller: &mut Mem<'_>, ptr: i32, bytes: &[u8]) -> wasmtime::Result<()> {
    let m = memory(caller)?;
    let ptr = ptr as u32 as usize;
    m.data_mut(caller)
        .get_mut(ptr..ptr + bytes.len())
        .ok_or_else(|| format_err!("write out of bounds"))?
        .copy_from_slice(bytes);
    Ok(())
}

pub(super) fn write_u32(caller: &mut Mem<'_>, ptr: i32, v: u32) -> wasmtime::Result<()> {
    write(caller, ptr, &v.to_le_bytes())
}

/// Copies `bytes` into memory the module allocates, and writes its address and size.
pub(super) fn give(caller: &mut Mem<'_>, bytes: &[u8], ptr_out: i32, size_out: i32) -> wasmtime::Result<()> {
    let alloc = match caller.get_export("proxy_on_memory_allocate") {
        Some(Extern::Func(f)) => f.typed::<i32, i32>(&caller)?,
        _ => bail!("module exports no proxy_on_memory_allocate"),
    };
    // As Envoy: nothing is allocated for an empty answer.
    let addr = if bytes.is_empty() {
        0
    } else {
        caller.data_mut().allocations += 1;
        alloc.call(&mut *caller, bytes.len() as i32)?
    };
    if !bytes.is_empty() {
        write(caller, addr, bytes)?;
    }
    write_u32(caller, ptr_out, addr as u32)?;
    write_u32(caller, size_out, bytes.len() as u32)
}
