//! The global allocator: mimalloc, asked for alignment only when a type needs more than every
//! block already has.
//!
//! The `mimalloc` crate's allocator passes every allocation to `mi_malloc_aligned`, whose fast
//! path serves blocks of up to 1 KiB only. Larger ones take a slower generic path, and with
//! mimalloc 3 a block whose size class is not a power of two is over-allocated and aligned by
//! hand, so that its `free` has to find the block's start again. Futures, read buffers and
//! header maps are that size, several per request. mimalloc aligns every block of 16 bytes or
//! more to 16 bytes (and smaller ones to their size), the same rule `std`'s system allocator
//! relies on, so most layouts can take the plain `mi_malloc`.
//!
//! mimalloc 2 (the `v2` feature) ran 0.5 % fewer instructions per proxied request than
//! mimalloc 3, with no more memory after a million keys (docs/performance.md).

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment of every `mi_malloc` block of at least this many bytes.
const MIN_ALIGN: usize = 16;

/// mimalloc with plain calls for layouts its blocks satisfy anyway.
pub struct Allocator;

/// Whether a block of `size` bytes from the plain entry points is aligned enough for `align`.
#[inline]
fn plain(align: usize, size: usize) -> bool {
    align <= MIN_ALIGN && align <= size
}

// SAFETY: every path returns a block of at least `layout.size()` bytes aligned to
// `layout.align()` (mimalloc's own guarantee when `plain` holds, `*_aligned` otherwise), and
// every block is freed by `mi_free`, which takes blocks from all of these entry points.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        // SAFETY: plain FFI calls; a null result is passed on as allocation failure.
        unsafe {
            if plain(align, size) {
                mi::mi_malloc(size).cast()
            } else {
                mi::mi_malloc_aligned(size, align).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        // SAFETY: as in `alloc`.
        unsafe {
            if plain(align, size) {
                mi::mi_zalloc(size).cast()
            } else {
                mi::mi_zalloc_aligned(size, align).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator, so from mimalloc.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        // SAFETY: `ptr` came from this allocator, so from mimalloc.
        unsafe {
            if plain(align, new_size) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, align).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZES: [usize; 12] = [1, 7, 8, 15, 16, 24, 100, 1000, 1100, 3000, 9000, 70_000];
    const ALIGNS: [usize; 8] = [1, 2, 8, 16, 32, 64, 128, 4096];

    fn layouts() -> impl Iterator<Item = Layout> {
        SIZES.into_iter().flat_map(|size| {
            ALIGNS
                .into_iter()
                .map(move |align| Layout::from_size_align(size, align).unwrap())
        })
    }

    #[test]
    fn every_block_has_its_layouts_alignment_and_size() {
        for layout in layouts() {
            // SAFETY: non-zero sizes; each block is written within its size and freed once.
            unsafe {
                let p = Allocator.alloc(layout);
                assert!(!p.is_null(), "{layout:?}");
                assert_eq!(p as usize % layout.align(), 0, "{layout:?}");
                p.write_bytes(0xa5, layout.size());
                Allocator.dealloc(p, layout);

                let z = Allocator.alloc_zeroed(layout);
                assert_eq!(z as usize % layout.align(), 0, "{layout:?}");
                let zeroed = std::slice::from_raw_parts(z, layout.size());
                assert!(zeroed.iter().all(|&b| b == 0), "{layout:?}");
                Allocator.dealloc(z, layout);
            }
        }
    }

    #[test]
    fn realloc_keeps_the_contents_and_the_alignment() {
        for layout in layouts() {
            for new_size in [1, 16, 200, 5000, 100_000] {
                // SAFETY: as above; the block is read only within the smaller of the two sizes.
                unsafe {
                    let p = Allocator.alloc(layout);
                    for i in 0..layout.size() {
                        p.add(i).write(i as u8);
                    }
                    let q = Allocator.realloc(p, layout, new_size);
                    assert!(!q.is_null(), "{layout:?} -> {new_size}");
                    assert_eq!(q as usize % layout.align(), 0, "{layout:?} -> {new_size}");
                    for i in 0..layout.size().min(new_size) {
                        assert_eq!(q.add(i).read(), i as u8, "{layout:?} -> {new_size}");
                    }
                    let grown = Layout::from_size_align(new_size, layout.align()).unwrap();
                    Allocator.dealloc(q, grown);
                }
            }
        }
    }
}
