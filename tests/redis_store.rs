//! The Redis store against a real `redis-server`, with the time passed in so that every check
//! is exact: it decides as the in-memory store does, leases stay within their bound, refusals
//! cost nothing, and it carries on through a flushed script cache and a dead server.

mod support;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use sluice::limiter::redis::{OnError, RedisStore, Servers, Settings, Sharing};
use sluice::limiter::{
    Clock, Decision, Error, Gcra, Limit, ManualClock, MemoryStore, Policy, Rate, Store, Window,
};
use support::nz;
use support::redis::{EPOCH, Redis};

const ONE: NonZeroU32 = NonZeroU32::MIN;

fn settings(redis: &Redis, sharing: Sharing, on_error: OnError) -> Settings {
    Settings {
        servers: Servers::One(redis.url()),
        timeout: Duration::from_millis(500),
        sharing,
        on_error,
        key_secret: b"test secret".to_vec(),
    }
}

fn store(settings: &Settings, clock: &Arc<ManualClock>) -> RedisStore<Arc<ManualClock>> {
    let store = RedisStore::with_clock(settings, 10_000, clock.clone(), true).unwrap();
    assert!(store.wait_until_up(Duration::from_secs(5)), "redis answers");
    store
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The published rule in small: 5 back to back, 1/s, at most 8 in any 2 s.
fn small() -> Policy {
    let rate = Gcra::new(Rate::per_second(ONE), nz(5)).unwrap();
    let window = Window::new(Duration::from_secs(2), nz(8)).unwrap();
    Policy::new("small", &[Limit::Window(window), Limit::Rate(rate)]).unwrap()
}

/// One step of a random run: advance the clock, then check, peek or stand.
#[derive(Debug, Clone)]
struct Step {
    advance_micros: u64,
    key: u8,
    cost: u32,
    op: u8,
}

fn step() -> impl Strategy<Value = Step> {
    (
        prop_oneof![Just(0u64), 0..2_000u64, 0..400_000u64, 0..5_000_000u64],
        0..3u8,
        1..4u32,
        0..6u8,
    )
        .prop_map(|(advance_micros, key, cost, op)| Step {
            advance_micros,
            key,
            cost,
            op,
        })
}

fn policy() -> impl Strategy<Value = Policy> {
    let rate = (1..20u32, prop_oneof![Just(1u64), Just(60)], 3..30u32);
    let window = (1..90u64, 3..40u32);
    (prop::option::of(rate), prop::option::of(window))
        .prop_filter("a policy has a limit", |(r, w)| r.is_some() || w.is_some())
        .prop_map(|(rate, window)| {
            let mut limits = Vec::new();
            if let Some((secs, n)) = window {
                let w = Window::new(Duration::from_millis(secs * 100), nz(n)).unwrap();
                limits.push(Limit::Window(w));
            }
            if let Some((count, per, burst)) = rate {
                let rate = Rate::new(nz(count), Duration::from_secs(per)).unwrap();
                limits.push(Limit::Rate(Gcra::new(rate, nz(burst)).unwrap()));
            }
            Policy::new("p", &limits).unwrap()
        })
}

/// Run by hand rather than by `proptest!`, so that the one server its cases share (each with
/// keys of its own) is stopped when the test ends: a static one would outlive the process.
#[test]
fn redis_decides_exactly_as_memory_does() {
    let redis = &Redis::start();
    let config = ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    };
    let cases = (policy(), prop::collection::vec(step(), 1..60));
    let outcome = TestRunner::new(config).run(&cases, |(policy, steps)| {
        let clock = Arc::new(ManualClock::new(EPOCH));
        let memory = MemoryStore::with_clock(clock.clone(), 10_000);
        let shared = store(&settings(redis, Sharing::Exact, OnError::Deny), &clock);
        // Each case has keys of its own in the one server.
        let run = format!("{:?}", Instant::now());
        rt().block_on(async {
            for (i, s) in steps.iter().enumerate() {
                clock.advance(Duration::from_micros(s.advance_micros));
                let key = format!("{run}-{}", s.key);
                let cost = nz(s.cost);
                let (a, b) = match s.op {
                    0 => (
                        memory.peek(&policy, key.as_bytes(), cost).await,
                        shared.peek(&policy, key.as_bytes(), cost).await,
                    ),
                    1 => (
                        memory.standing(&policy, key.as_bytes()).await,
                        shared.standing(&policy, key.as_bytes()).await,
                    ),
                    _ => (
                        memory.check(&policy, key.as_bytes(), cost).await,
                        shared.check(&policy, key.as_bytes(), cost).await,
                    ),
                };
                prop_assert_eq!(a, b, "step {}: {:?}", i, s);
            }
            Ok(())
        })
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
}

#[test]
fn a_full_window_refuses_and_the_bucket_does_not_move() {
    let redis = Redis::start();
    let clock = Arc::new(ManualClock::new(EPOCH));
    let store = store(&settings(&redis, Sharing::Exact, OnError::Deny), &clock);
    // At most 4 in any 2 s, bursts of 5 at 1/s: the window fills while the bucket has room.
    let rate = Gcra::new(Rate::per_second(ONE), nz(5)).unwrap();
    let window = Window::new(Duration::from_secs(2), nz(4)).unwrap();
    let policy = Policy::new("p", &[Limit::Window(window), Limit::Rate(rate)]).unwrap();
    rt().block_on(async {
        let check = |cost| store.check(&policy, b"alice", nz(cost));
        assert!(check(4).await.unwrap().is_allowed());
        let refused = check(1).await.unwrap();
        assert!(!refused.is_allowed());
        let limits = refused.limits(&policy);
        assert!(limits[0].refused && !limits[1].refused, "{limits:?}");
        let rate_left = limits[1].remaining;
        for _ in 0..5 {
            assert!(!check(1).await.unwrap().is_allowed());
        }
        let standing = store.standing(&policy, b"alice").await.unwrap();
        assert_eq!(rate_left, 1);
        assert_eq!(
            standing.limits(&policy)[1].remaining,
            rate_left,
            "refusals took nothing"
        );
        // Refusals of unknown keys store nothing; every key held has a TTL.
        let too_much = store.check(&policy, b"bob", nz(9)).await;
        assert!(matches!(too_much, Err(Error::InsufficientCapacity(_))));
        let keys = redis.keys();
        assert_eq!(keys.len(), 1, "{keys:?}");
        let ttl: i64 = redis.cli(&["PTTL", &keys[0]]).parse().unwrap();
        assert!(
            ttl > 0 && ttl <= 5_000,
            "{ttl}: the bucket is fresh in 4 s, plus a second"
        );
        assert!(
            !keys[0].contains("alice"),
            "the client key never reaches Redis"
        );
    });
}

#[test]
fn a_held_refusal_costs_no_round_trip_and_ends_with_its_wait() {
    let redis = Redis::start();
    let clock = Arc::new(ManualClock::new(EPOCH));
    let store = store(&settings(&redis, Sharing::Exact, OnError::Deny), &clock);
    let policy = small();
    rt().block_on(async {
        assert!(
            store
                .check(&policy, b"k", nz(5))
                .await
                .unwrap()
                .is_allowed()
        );
        let refused = store.check(&policy, b"k", ONE).await.unwrap();
        let wait = refused.retry_after(&policy).unwrap();
        assert_eq!(wait, Duration::from_secs(1));
        let calls = store.health().calls[0];
        clock.advance(wait / 2);
        for _ in 0..10 {
            let again = store.check(&policy, b"k", ONE).await.unwrap();
            assert!(!again.is_allowed());
            assert_eq!(again.retry_after(&policy), Some(wait / 2));
        }
        assert_eq!(store.health().calls[0], calls, "answered without Redis");
        assert_eq!(store.health().local[0], 10);
        clock.advance(wait / 2);
        assert!(store.check(&policy, b"k", ONE).await.unwrap().is_allowed());
        assert_eq!(store.health().calls[0], calls + 1);
    });
}

#[test]
fn replicas_sharing_a_key_admit_the_policy_once() {
    let redis = Redis::start();
    let clock = Arc::new(ManualClock::new(EPOCH));
    let settings = settings(&redis, Sharing::Exact, OnError::Deny);
    let replicas: Vec<_> = (0..3).map(|_| store(&settings, &clock)).collect();
    let policy = Policy::published_default();
    rt().block_on(async {
        let mut admitted = 0;
        for i in 0..300 {
            let d = replicas[i % 3]
                .check(&policy, b"shared", ONE)
                .await
                .unwrap();
            admitted += usize::from(d.is_allowed());
        }
        assert_eq!(admitted, 100);
    });
}

/// Admissions per replica over a random run in lease mode never exceed the exact limit by
/// more than replicas × lease in any window.
#[test]
fn leases_overshoot_a_window_by_at_most_replicas_times_lease() {
    let redis = Redis::start();
    let clock = Arc::new(ManualClock::new(EPOCH));
    let (lease, replicas) = (4u32, 3usize);
    let sharing = Sharing::Lease {
        tokens: nz(lease),
        ttl: Duration::from_millis(250),
    };
    let settings = settings(&redis, sharing, OnError::Deny);
    let stores: Vec<_> = (0..replicas).map(|_| store(&settings, &clock)).collect();
    // Only a window: at most 20 in any 2 s.
    let window = Window::new(Duration::from_secs(2), nz(20)).unwrap();
    let policy = Policy::new("w", &[Limit::Window(window)]).unwrap();
    let mut admitted: Vec<u64> = Vec::new();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    rt().block_on(async {
        for _ in 0..3_000 {
            // xorshift: a fixed pseudo-random walk of replicas and gaps of 0–20 ms.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            clock.advance(Duration::from_micros(seed % 20_000));
            let replica = &stores[(seed >> 32) as usize % replicas];
            if replica
                .check(&policy, b"k", ONE)
                .await
                .unwrap()
                .is_allowed()
            {
                admitted.push(clock.now());
            }
        }
    });
    let bound = 20 + replicas * lease as usize;
    let most = admitted
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            admitted[i..]
                .iter()
                .take_while(|&&u| u < t + 2_000_000_000)
                .count()
        })
        .max()
        .unwrap();
    assert!(most <= bound, "{most} in one window, bound {bound}");
    assert!(most >= 20, "leases let through at least the limit: {most}");
}

#[test]
fn a_flushed_script_cache_is_reloaded_without_a_failure() {
    let redis = Redis::start();
    let clock = Arc::new(ManualClock::new(EPOCH));
    let store = store(&settings(&redis, Sharing::Exact, OnError::Deny), &clock);
    let policy = small();
    rt().block_on(async {
        assert!(store.check(&policy, b"k", ONE).await.unwrap().is_allowed());
        redis.cli(&["SCRIPT", "FLUSH"]);
        assert!(store.check(&policy, b"k", ONE).await.unwrap().is_allowed());
        let standing = store.standing(&policy, b"k").await.unwrap();
        assert_eq!(standing.limits(&policy)[1].remaining, 3);
        assert_eq!(store.health().calls[1..], [0, 0], "no call failed");
    });
}

/// Redis dies: each `on_error` answers at once (no check waits on it long); Redis restarts
/// and the store notices by itself.
#[test]
fn a_dead_redis_falls_back_per_on_error_and_is_noticed_when_back() {
    let mut redis = Redis::start();
    let clock = Arc::new(ManualClock::new(EPOCH));
    let policy = small();
    let mut stores: Vec<(OnError, RedisStore<Arc<ManualClock>>)> =
        [OnError::Local, OnError::Allow, OnError::Deny]
            .into_iter()
            .map(|on_error| {
                let mut s = settings(&redis, Sharing::Exact, on_error);
                s.timeout = Duration::from_millis(50);
                (on_error, store(&s, &clock))
            })
            .collect();
    redis.kill();
    rt().block_on(async {
        for (on_error, store) in &mut stores {
            let mut slowest = Duration::ZERO;
            let mut outcomes: Vec<Result<bool, Error>> = Vec::new();
            for _ in 0..8 {
                let started = Instant::now();
                let d = store.check(&policy, b"k", ONE).await;
                slowest = slowest.max(started.elapsed());
                outcomes.push(d.map(|d: Decision| d.is_allowed()));
            }
            assert!(
                slowest < Duration::from_millis(400),
                "{on_error:?}: a check took {slowest:?}"
            );
            match on_error {
                // This replica's memory: the burst of 5, then refusals.
                OnError::Local => assert_eq!(
                    outcomes.iter().filter(|o| **o == Ok(true)).count(),
                    5,
                    "{outcomes:?}"
                ),
                OnError::Allow | OnError::Deny => {
                    assert!(
                        outcomes.iter().all(|o| *o == Err(Error::Unavailable)),
                        "{outcomes:?}"
                    )
                }
            }
            let health = store.health();
            assert!(!health.up);
            assert_eq!(health.fallbacks, 1, "one episode");
            assert_eq!(health.fallback_checks, 8);
        }
    });
    redis.restart();
    for (_, store) in &stores {
        assert!(
            store.wait_until_up(Duration::from_secs(5)),
            "noticed without a restart"
        );
    }
    rt().block_on(async {
        let d = stores[2].1.check(&policy, b"k", ONE).await.unwrap();
        assert!(d.is_allowed());
        assert_eq!(d.limits(&policy)[1].remaining, 4, "state is in Redis again");
    });
}

/// A Redis too slow to answer (`DEBUG SLEEP`): checks give up at `timeout` and fall back,
/// the breaker stops calling it, and the store is back once Redis answers again.
#[test]
fn a_slow_redis_costs_a_check_no_more_than_the_timeout() {
    let redis = Redis::start_with(&["--enable-debug-command", "local"]);
    let clock = Arc::new(ManualClock::new(EPOCH));
    let mut s = settings(&redis, Sharing::Exact, OnError::Local);
    s.timeout = Duration::from_millis(50);
    let store = store(&s, &clock);
    let policy = small();
    let port = redis.port;
    let sleeper = std::thread::spawn(move || {
        std::process::Command::new("redis-cli")
            .args(["-p", &port.to_string(), "DEBUG", "SLEEP", "1.5"])
            .output()
            .unwrap()
    });
    // Until DEBUG SLEEP has Redis in its grip.
    std::thread::sleep(Duration::from_millis(200));
    rt().block_on(async {
        for i in 0..5 {
            let started = Instant::now();
            let d = store.check(&policy, b"k", ONE).await.unwrap();
            assert!(d.is_allowed(), "check {i}: this replica's own burst");
            let took = started.elapsed();
            assert!(took < Duration::from_millis(300), "check {i} took {took:?}");
        }
    });
    let health = store.health();
    assert_eq!(health.calls[2], 3, "three timeouts open the breaker");
    assert_eq!(health.fallback_checks, 5);
    sleeper.join().unwrap();
    assert!(store.wait_until_up(Duration::from_secs(5)));
}
