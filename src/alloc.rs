//! The module's allocator: small blocks (up to 4 KiB) come from per-size-class free lists, so
//! the buffers the host hands over on every request (a property, a header, shared data) cost a
//! few instructions instead of a general-purpose `malloc`/`free`. Larger blocks, and a class's
//! first blocks, come from the system allocator. Freed small blocks stay in their class for
//! reuse: what the lists hold is bounded by the most ever live at once.
//!
//! A proxy-wasm VM runs one thread, so the lists need no lock; off wasm (native tests) this
//! module is not the global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Classes of 16, 32, ... 4096 bytes.
const CLASSES: usize = 9;
const MIN: usize = 16;
const MAX: usize = MIN << (CLASSES - 1);

pub struct Pools {
    free: [Cell<*mut u8>; CLASSES],
}

// SAFETY: a proxy-wasm module runs on one thread; the allocator is used only there.
unsafe impl Sync for Pools {}

impl Pools {
    pub const fn new() -> Pools {
        Pools { free: [const { Cell::new(std::ptr::null_mut()) }; CLASSES] }
    }
}

impl Default for Pools {
    fn default() -> Self {
        Pools::new()
    }
}

/// The class of a layout, if it is small: the smallest power of two at least its size.
fn class(layout: Layout) -> Option<usize> {
    if layout.size() > MAX || layout.align() > MIN {
        return None;
    }
    let size = layout.size().max(MIN).next_power_of_two();
    Some((size.trailing_zeros() - MIN.trailing_zeros()) as usize)
}

fn block(class: usize) -> Layout {
    // SAFETY: a power of two no larger than MAX, aligned to MIN (a power of two).
    unsafe { Layout::from_size_align_unchecked(MIN << class, MIN) }
}

unsafe impl GlobalAlloc for Pools {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(c) = class(layout) else {
            // SAFETY: the caller's layout, passed on.
            return unsafe { system_alloc(layout) };
        };
        let head = self.free[c].get();
        if head.is_null() {
            // SAFETY: a valid non-zero layout.
            return unsafe { system_alloc(block(c)) };
        }
        // SAFETY: a free block of this class holds the next free block's address.
        self.free[c].set(unsafe { (head as *mut *mut u8).read() });
        head
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match class(layout) {
            // SAFETY: the block is at least MIN bytes and MIN-aligned: room for one pointer.
            Some(c) => unsafe {
                (ptr as *mut *mut u8).write(self.free[c].get());
                self.free[c].set(ptr);
            },
            // SAFETY: allocated by System with this layout.
            None => unsafe { System.dealloc(ptr, layout) },
        }
    }
}

/// The system allocator, out of line: a block taken from a free list (the usual case) then
/// needs no stack frame for the system allocator's out-pointer.
///
/// # Safety
/// As [`GlobalAlloc::alloc`].
#[cold]
#[inline(never)]
unsafe fn system_alloc(layout: Layout) -> *mut u8 {
    // SAFETY: the caller's layout, passed on.
    unsafe { System.alloc(layout) }
}

#[cfg(target_arch = "wasm32")]
#[global_allocator]
static POOLS: Pools = Pools::new();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freed_small_block_is_reused_for_its_class_and_large_blocks_go_to_the_system() {
        let pools = Pools::new();
        let small = Layout::from_size_align(40, 1).unwrap();
        // SAFETY: each block is freed once, with the layout it was allocated with.
        unsafe {
            let a = pools.alloc(small);
            pools.dealloc(a, small);
            let b = pools.alloc(Layout::from_size_align(64, 8).unwrap());
            assert_eq!(a, b, "40 and 64 bytes share the 64-byte class");
            let c = pools.alloc(small);
            assert_ne!(b, c);
            pools.dealloc(b, Layout::from_size_align(64, 8).unwrap());
            pools.dealloc(c, small);
            let large = Layout::from_size_align(MAX + 1, 1).unwrap();
            let d = pools.alloc(large);
            assert!(!d.is_null());
            pools.dealloc(d, large);
        }
        assert_eq!(class(Layout::from_size_align(0, 1).unwrap()), Some(0));
        assert_eq!(class(Layout::from_size_align(MAX, 1).unwrap()), Some(CLASSES - 1));
        assert_eq!(class(Layout::from_size_align(16, 32).unwrap()), None);
    }
}
