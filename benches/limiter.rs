//! The limiter against governor's keyed DashMap limiter on the same workloads.
//!
//! `cargo bench --bench limiter` prints bytes per key at a million keys for both (from a
//! counting allocator) and a hot-key check of each taking turns in short rounds (robust to a
//! busy machine), then times a check with criterion: one hot key on 1 and 2 threads, and a
//! million keys round robin. Two-thread figures are wall time per check with both threads
//! busy. Last, the parts of a check alone: the clock, the key's hash, and the decision.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sluice::limiter::{
    Clock, Gcra, Limit, MemoryStore, MonotonicClock, Policy, Rate, State, Store,
};
use std::sync::Arc;

/// Bytes allocated and not yet freed, for the per-key memory figure.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const KEYS: u64 = 1_000_000;
const ONE: NonZeroU32 = NonZeroU32::MIN;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

/// governor's nearest equivalent of the published rule: 1/s with bursts of 100.
fn governor() -> DefaultKeyedRateLimiter<u64> {
    RateLimiter::dashmap(Quota::per_second(ONE).allow_burst(nz(100)))
}

/// The same, keyed by byte strings.
fn governor_bytes() -> DefaultKeyedRateLimiter<Vec<u8>> {
    RateLimiter::dashmap(Quota::per_second(ONE).allow_burst(nz(100)))
}

/// The rate half of the published rule alone, like for like with governor.
fn rate_only() -> Policy {
    let gcra = Gcra::new(Rate::per_second(ONE), nz(100)).unwrap();
    Policy::new("rate", &[Limit::Rate(gcra)]).unwrap()
}

fn store() -> MemoryStore {
    MemoryStore::new(2 * KEYS as usize)
}

/// Keeps a result from being optimised away. Criterion 0.5 would do it with a volatile copy of
/// whatever a routine returns, which costs more for a larger result and so skews a comparison
/// of two libraries; `std::hint::black_box` is free.
fn sink<T>(result: T) {
    black_box(result);
}

fn bytes_per_key(fill: impl FnOnce()) -> f64 {
    let before = LIVE.load(Ordering::Relaxed);
    fill();
    (LIVE.load(Ordering::Relaxed) - before) as f64 / KEYS as f64
}

fn report_memory() {
    let (ours, policy) = (store(), Policy::published_default());
    let sluice = bytes_per_key(|| {
        for key in 0..KEYS {
            ours.check_now(&policy, &key.to_le_bytes(), ONE).unwrap();
        }
    });
    let limiter = governor();
    let governor = bytes_per_key(|| {
        for key in 0..KEYS {
            let _ = limiter.check_key(&key);
        }
    });
    assert_eq!(ours.tracked_keys(), KEYS as usize);
    println!("memory at {KEYS} keys: sluice {sluice:.1} B/key, governor {governor:.1} B/key");
}

/// One hot key, all four checks taking turns in short rounds, so that a busy or shared machine
/// slows each of them alike; prints the fastest and the median round of each, on one thread
/// and on two (wall time per check, both threads checking the same key).
fn report_side_by_side() {
    const ROUNDS: usize = 300;
    const CHECKS: u64 = 20_000;
    let (ours, default, rate) = (store(), Policy::published_default(), rate_only());
    let (by_u64, by_bytes, key) = (governor(), governor_bytes(), b"client-key".to_vec());
    let checks: [(&str, &(dyn Fn() + Sync)); 4] = [
        ("sluice, default policy", &|| {
            black_box(ours.check_now(&default, black_box(b"client-key"), ONE)).ok();
        }),
        ("sluice, rate only", &|| {
            black_box(ours.check_now(&rate, black_box(b"client-key"), ONE)).ok();
        }),
        ("governor, u64 key", &|| {
            black_box(by_u64.check_key(black_box(&7))).ok();
        }),
        ("governor, byte key", &|| {
            black_box(by_bytes.check_key(black_box(&key))).ok();
        }),
    ];
    for threads in [1, 2] {
        let mut rounds = vec![Vec::with_capacity(ROUNDS); checks.len()];
        for _ in 0..ROUNDS {
            for ((_, check), times) in checks.iter().zip(&mut rounds) {
                let elapsed = match threads {
                    1 => {
                        let start = Instant::now();
                        (0..CHECKS).for_each(|_| check());
                        start.elapsed()
                    }
                    _ => on_two_threads(CHECKS, check),
                };
                times.push(elapsed.as_secs_f64() * 1e9 / CHECKS as f64);
            }
        }
        println!(
            "hot key, {threads} thread(s), taking turns ({ROUNDS} rounds of {CHECKS} checks):"
        );
        for ((name, _), mut times) in checks.iter().zip(rounds) {
            times.sort_by(f64::total_cmp);
            let (fastest, median) = (times[0], times[ROUNDS / 2]);
            println!("  {name:24} fastest round {fastest:5.1} ns, median {median:5.1} ns");
        }
    }
}

fn hot_key(c: &mut Criterion) {
    let mut group = c.benchmark_group("hot_key_1_thread");
    let (ours, default, rate) = (store(), Policy::published_default(), rate_only());
    group.bench_function("sluice_default_policy", |b| {
        b.iter(|| sink(ours.check_now(&default, black_box(b"client-key"), ONE)))
    });
    group.bench_function("sluice_rate_only", |b| {
        b.iter(|| sink(ours.check_now(&rate, black_box(b"client-key"), ONE)))
    });
    // As the pipeline calls it: through `Arc<dyn Store>` and the ready future.
    let shared: Arc<dyn Store> = Arc::new(store());
    group.bench_function("sluice_default_policy_dyn_store", |b| {
        b.iter(|| {
            let checked = shared.check(&default, black_box(b"client-key"), ONE);
            sink(checked.now_or_never())
        })
    });
    let limiter = governor();
    group.bench_function("governor_keyed_dashmap", |b| {
        b.iter(|| sink(limiter.check_key(black_box(&7))))
    });
    // Keyed by the same bytes as ours, as a proxy would key it by a credential.
    let limiter = governor_bytes();
    let key = b"client-key".to_vec();
    group.bench_function("governor_keyed_dashmap_byte_key", |b| {
        b.iter(|| sink(limiter.check_key(black_box(&key))))
    });
    group.finish();
}

/// Wall time per check with two threads checking the same key at once.
fn on_two_threads(iters: u64, check: impl Fn() + Sync) -> Duration {
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| (0..iters / 2).for_each(|_| check()));
        }
    });
    start.elapsed()
}

fn hot_key_two_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("hot_key_2_threads");
    let (ours, default, rate) = (store(), Policy::published_default(), rate_only());
    group.bench_function("sluice_default_policy", |b| {
        b.iter_custom(|iters| {
            on_two_threads(iters, || {
                black_box(ours.check_now(&default, b"client-key", ONE)).ok();
            })
        })
    });
    group.bench_function("sluice_rate_only", |b| {
        b.iter_custom(|iters| {
            on_two_threads(iters, || {
                black_box(ours.check_now(&rate, b"client-key", ONE)).ok();
            })
        })
    });
    let limiter = governor();
    group.bench_function("governor_keyed_dashmap", |b| {
        b.iter_custom(|iters| {
            on_two_threads(iters, || {
                black_box(limiter.check_key(&7)).ok();
            })
        })
    });
    let (limiter, key) = (governor_bytes(), b"client-key".to_vec());
    group.bench_function("governor_keyed_dashmap_byte_key", |b| {
        b.iter_custom(|iters| {
            on_two_threads(iters, || {
                black_box(limiter.check_key(&key)).ok();
            })
        })
    });
    group.finish();
}

fn million_keys(c: &mut Criterion) {
    let mut group = c.benchmark_group("million_keys_round_robin");
    let (ours, default, rate) = (store(), Policy::published_default(), rate_only());
    let limiter = governor();
    for key in 0..KEYS {
        ours.check_now(&default, &key.to_le_bytes(), ONE).unwrap();
        ours.check_now(&rate, &key.to_le_bytes(), ONE).unwrap();
        let _ = limiter.check_key(&key);
    }
    let mut next = 0u64;
    group.bench_function("sluice_default_policy", |b| {
        b.iter(|| {
            next = (next + 1) % KEYS;
            sink(ours.check_now(&default, &next.to_le_bytes(), ONE))
        })
    });
    group.bench_function("sluice_rate_only", |b| {
        b.iter(|| {
            next = (next + 1) % KEYS;
            sink(ours.check_now(&rate, &next.to_le_bytes(), ONE))
        })
    });
    group.bench_function("governor_keyed_dashmap", |b| {
        b.iter(|| {
            next = (next + 1) % KEYS;
            sink(limiter.check_key(&next))
        })
    });
    // Keyed by the same bytes as ours, made beforehand so no check allocates.
    let (limiter, keys) = (governor_bytes(), byte_keys());
    keys.iter().for_each(|key| drop(limiter.check_key(key)));
    group.bench_function("governor_keyed_dashmap_byte_key", |b| {
        b.iter(|| {
            next = (next + 1) % KEYS;
            sink(limiter.check_key(&keys[next as usize]))
        })
    });
    group.finish();
}

fn byte_keys() -> Vec<Vec<u8>> {
    (0..KEYS).map(|key| key.to_le_bytes().to_vec()).collect()
}

/// The pieces of a check, each alone: what a check costs beyond governor's.
fn parts(c: &mut Criterion) {
    use std::hash::{BuildHasher, Hasher};
    let mut group = c.benchmark_group("parts");
    let clock = MonotonicClock::new();
    group.bench_function("clock", |b| b.iter(|| sink(clock.now())));
    let secret = std::collections::hash_map::RandomState::new();
    group.bench_function("siphash_10_byte_key", |b| {
        b.iter(|| {
            let mut hasher = secret.build_hasher();
            hasher.write(black_box(b"client-key"));
            sink(hasher.finish())
        })
    });
    for (name, policy) in [
        ("rate_only", rate_only()),
        ("default", Policy::published_default()),
    ] {
        let mut spent = State::default();
        while policy.decide(&mut spent, 0, ONE).unwrap().is_allowed() {}
        group.bench_function(format!("decide_refused_{name}"), |b| {
            b.iter(|| sink(policy.decide(&mut black_box(spent), black_box(1), ONE)))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = hot_key, hot_key_two_threads, million_keys, parts
}

fn main() {
    report_memory();
    report_side_by_side();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
