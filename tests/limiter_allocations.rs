//! Checking a key already tracked allocates nothing, however long or binary the key.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::num::NonZeroU32;

use sluice::limiter::{MemoryStore, Policy, Store};

/// Counts this thread's allocations, so other test threads do not disturb the count.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn checking_a_known_key_allocates_nothing() {
    let store = MemoryStore::new(1_000);
    let policy = Policy::published_default();
    let hostile: Vec<u8> = (0..=255).cycle().take(64 * 1024).collect();
    let keys: [&[u8]; 3] = [b"client-1", b"", &hostile];
    for key in keys {
        store.check_now(&policy, key, NonZeroU32::MIN).unwrap();
    }
    let before = allocations();
    for _ in 0..200 {
        for key in keys {
            let decision = store.check(&policy, key, NonZeroU32::MIN);
            let decision = decision.now_or_never().unwrap().unwrap();
            // Reading every header figure allocates nothing either.
            let figures: u64 = decision
                .limits(&policy)
                .iter()
                .map(|l| l.reset_secs())
                .sum();
            std::hint::black_box((
                figures,
                decision.refusal(&policy).map(|r| r.retry_after_secs()),
            ));
        }
    }
    assert_eq!(allocations() - before, 0);
    assert_eq!(store.tracked_keys(), 3);
}
