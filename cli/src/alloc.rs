//! The CLI's global allocator: the system's, asking the kernel for transparent huge pages on
//! large blocks.
//!
//! The detector's tensors are tens to hundreds of megabytes. `main` has glibc keep every block
//! in its heap for reuse (`keep_freed_memory`), so the kernel backs each page once, when the
//! heap first grows over it; before that, every block above 32 MiB was mapped fresh and touching
//! it took a page fault per 4 KiB (17 % of the reference detector's inference at D = 7 in perf).
//! Where transparent huge pages are enabled on request (`madvise`, the usual default), marking
//! a large block `MADV_HUGEPAGE` before first use has new heap memory faulted in 2 MiB at a
//! time. Nothing else changes: the memory comes from and goes back to the system allocator.

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks at least this large are marked (smaller ones rarely span a whole huge page).
const HUGE_FROM: usize = 8 << 20;
/// The huge page size on x86-64 and most aarch64 kernels.
const HUGE_PAGE: usize = 2 << 20;

/// [`System`], with large blocks marked for transparent huge pages.
pub(crate) struct HugePages;

impl HugePages {
    /// Advises the whole huge pages inside `[ptr, ptr + size)`; errors (no THP support) are
    /// ignored, as the advice is only a hint.
    fn advise(ptr: *mut u8, size: usize) {
        #[cfg(target_os = "linux")]
        {
            let start = (ptr as usize).next_multiple_of(HUGE_PAGE);
            let end = (ptr as usize + size) / HUGE_PAGE * HUGE_PAGE;
            if end > start {
                // SAFETY: [start, end) lies inside the block just allocated for the caller, which
                // owns it; MADV_HUGEPAGE changes only how the kernel backs those pages, never
                // their contents or mapping.
                unsafe {
                    libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (ptr, size);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments and returns its result;
// the advice only touches memory of a block this allocator just returned.
unsafe impl GlobalAlloc for HugePages {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as given (the caller upholds `GlobalAlloc::alloc`'s contract).
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() && layout.size() >= HUGE_FROM {
            Self::advise(p, layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() && layout.size() >= HUGE_FROM {
            Self::advise(p, layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; `new_size` is the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() && new_size >= HUGE_FROM {
            Self::advise(p, new_size);
        }
        p
    }
}
