//! Idempotency keys at the edge (draft-ietf-httpapi-idempotency-key-header-06): the first
//! request with a key is forwarded and its answer kept; a retry gets that answer again
//! without reaching the upstream.
//!
//! - `key.rs`: the header's value, a Structured Field String.
//! - `answer.rs`: the request's [`Fingerprint`], the key's [`Scope`] (client, route, key),
//!   and the stored [`Answer`] with its byte form.
//! - `memory.rs`: this process's bounded map; the entry goes in flight → complete, and
//!   expires at its time on the injected clock.
//! - `redis.rs`: the same entries in the limiter's Redis, shared by replicas; an in-flight
//!   lock there expires by itself, so a replica that crashed does not hold a key for ever.

mod answer;
mod key;
mod memory;
mod redis;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use crate::problem::Mismatch;
pub use answer::{Answer, Fingerprint, Scope};
pub use key::{Fault, MAX_LEN, parse};
pub use memory::{Bounds, Memory};

use crate::limiter::redis::Shared;
use crate::limiter::{Clock, MonotonicClock, Nanos};

/// What became of a request with a key, as counted in `sluice_idempotency_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The first with its key: forwarded, and its answer kept.
    Stored,
    /// The first with its key, forwarded, its answer not kept (5xx, 429, too large, failed).
    NotStored,
    /// Answered with the kept answer.
    Replayed,
    /// Refused: the first with its key was still in flight (409).
    InFlight,
    /// Refused: the key came with another request (422).
    Mismatch,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Stored,
        Outcome::NotStored,
        Outcome::Replayed,
        Outcome::InFlight,
        Outcome::Mismatch,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Stored => "stored",
            Outcome::NotStored => "not_stored",
            Outcome::Replayed => "replayed",
            Outcome::InFlight => "in_flight",
            Outcome::Mismatch => "mismatch",
        }
    }
}

/// What a store found for a key, before the request goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begun {
    /// The key is new: it is now locked for this request.
    Fresh,
    /// A request with the key is still in flight.
    InFlight,
    /// The key was used with another method, path or body.
    Mismatch(Mismatch),
    /// The key's request completed: its answer.
    Replay(Answer),
}

/// The in-memory store holds as many in-flight keys as it may hold keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// Why a key could not be looked up: the shared store is unreachable and has no fallback, or
/// the memory store is full of requests in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

/// What a request holds while it is the one forwarded for its key.
#[derive(Debug)]
pub struct Lock {
    scope: Scope,
    fingerprint: Fingerprint,
    token: u128,
    /// Taken in Redis, not in the fallback memory.
    remote: bool,
}

/// Where keys live: this process's memory, or Redis (falling back to memory while it is
/// unreachable, where `on_error = "local"`).
pub struct Store {
    memory: Option<Memory>,
    redis: Option<redis::Redis>,
    clock: Arc<dyn Clock>,
    seed: u64,
    next: AtomicU64,
    /// Per [`Outcome`]: only requests with a key count, so one set for all workers.
    outcomes: [AtomicU64; Outcome::ALL.len()],
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("memory", &self.memory.as_ref().map(Memory::usage))
            .field("redis", &self.redis.is_some())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Keys in this process's memory, on the real clock.
    pub fn memory(bounds: Bounds) -> Store {
        Store::with_clock(
            Some(Memory::new(bounds)),
            None,
            Arc::new(MonotonicClock::new()),
        )
    }

    /// Keys in the limiter's Redis; `fallback` holds them while it is unreachable.
    pub fn redis(shared: Shared, key_secret: &[u8], fallback: Option<Bounds>) -> Store {
        let redis = redis::Redis::new(shared, key_secret);
        let clock = Arc::new(MonotonicClock::new());
        Store::with_clock(fallback.map(Memory::new), Some(redis), clock)
    }

    /// An in-memory store on `clock`, for tests.
    pub fn memory_with_clock(bounds: Bounds, clock: Arc<dyn Clock>) -> Store {
        Store::with_clock(Some(Memory::new(bounds)), None, clock)
    }

    fn with_clock(
        memory: Option<Memory>,
        redis: Option<redis::Redis>,
        clock: Arc<dyn Clock>,
    ) -> Store {
        use std::hash::{BuildHasher, RandomState};
        Store {
            memory,
            redis,
            clock,
            // Tokens must differ across replicas: each process starts from a random seed.
            seed: RandomState::new().hash_one(std::process::id()),
            next: AtomicU64::new(0),
            outcomes: Default::default(),
        }
    }

    fn token(&self) -> u128 {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        u128::from(self.seed) << 64 | u128::from(n)
    }

    fn now(&self) -> Nanos {
        self.clock.now()
    }

    /// Looks the key up; a new one is locked for this request for `lock` (the longest it can
    /// be in flight), and the [`Lock`] comes back with [`Begun::Fresh`].
    pub async fn begin(
        &self,
        scope: Scope,
        fingerprint: Fingerprint,
        lock: Duration,
    ) -> Result<(Begun, Option<Lock>), Unavailable> {
        let token = self.token();
        let held = |remote| Lock {
            scope,
            fingerprint,
            token,
            remote,
        };
        if let Some(redis) = self.redis.as_ref().filter(|r| r.is_up())
            && let Some(begun) = redis.begin(&scope, &fingerprint, token, lock).await
        {
            let lock = (begun == Begun::Fresh).then(|| held(true));
            return Ok((begun, lock));
        }
        if let Some(redis) = &self.redis {
            redis.fell_back();
        }
        let memory = self.memory.as_ref().ok_or(Unavailable)?;
        let now = self.now();
        let until = now.saturating_add(crate::limiter::nanos(lock));
        let begun = memory
            .begin(scope, fingerprint, token, now, until)
            .map_err(|Full| Unavailable)?;
        let lock = (begun == Begun::Fresh).then(|| held(false));
        Ok((begun, lock))
    }

    /// Stores the answer of the request that holds `lock`, for `ttl`.
    pub async fn complete(&self, lock: Lock, answer: Answer, ttl: Duration) {
        match (&self.redis, &self.memory) {
            (Some(redis), _) if lock.remote => {
                redis
                    .complete(&lock.scope, &lock.fingerprint, lock.token, &answer, ttl)
                    .await;
            }
            (_, Some(memory)) => {
                let until = self.now().saturating_add(crate::limiter::nanos(ttl));
                memory.complete(lock.scope, lock.token, answer, until);
            }
            _ => {}
        }
    }

    /// Gives the key up, so that a retry is forwarded. From Redis, in a task of its own (a
    /// request that was dropped releases its key too); if that fails, the lock expires.
    pub fn release(self: &Arc<Self>, lock: Lock) {
        if lock.remote {
            let store = self.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if let Some(redis) = &store.redis {
                        redis
                            .release(&lock.scope, &lock.fingerprint, lock.token)
                            .await;
                    }
                });
            }
        } else if let Some(memory) = &self.memory {
            memory.release(lock.scope, lock.token);
        }
    }

    pub fn count(&self, outcome: Outcome) {
        self.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts, in the order of [`Outcome::ALL`].
    pub fn outcomes(&self) -> [u64; Outcome::ALL.len()] {
        self.outcomes.each_ref().map(|n| n.load(Ordering::Relaxed))
    }

    /// Keys and bytes of answers held in this process's memory.
    pub fn usage(&self) -> (usize, usize) {
        self.memory.as_ref().map_or((0, 0), Memory::usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::ManualClock;
    use http::{HeaderMap, Method, StatusCode};

    #[tokio::test]
    async fn an_answer_expires_at_its_ttl_on_the_store_clock() {
        let clock = Arc::new(ManualClock::new(0));
        let store = Arc::new(Store::memory_with_clock(Bounds::default(), clock.clone()));
        let scope = Scope::new(b"alice", "/", b"k");
        let print = Fingerprint::new(&Method::POST, "/v1/candidates", b"{}");
        let (begun, lock) = store
            .begin(scope, print, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(begun, Begun::Fresh);
        let answer = Answer {
            status: StatusCode::CREATED,
            headers: HeaderMap::new(),
            body: bytes::Bytes::from_static(b"{\"id\":1}"),
        };
        store
            .complete(lock.unwrap(), answer.clone(), Duration::from_secs(3600))
            .await;
        clock.advance(Duration::from_secs(3600) - Duration::from_nanos(1));
        let (again, _) = store
            .begin(scope, print, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(again, Begun::Replay(answer));
        clock.advance(Duration::from_nanos(1));
        let (after, lock) = store
            .begin(scope, print, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(after, Begun::Fresh);
        store.release(lock.unwrap());
        assert_eq!(store.usage(), (0, 0));
    }
}
