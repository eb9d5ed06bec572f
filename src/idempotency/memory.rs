//! Keys in this process's memory: a map under one lock (held for a lookup or an insert, never
//! across an `.await`), bounded in entries and in bytes. Past a bound, the completed answers
//! nearest their expiry make room; in-flight locks are never evicted. Time is passed in.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use super::answer::{Answer, Fingerprint, Scope};
use super::{Begun, Full};
use crate::limiter::Nanos;

/// How much one process holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Keys, in flight or complete.
    pub entries: usize,
    /// Bytes of stored answers.
    pub bytes: usize,
}

impl Default for Bounds {
    /// 100,000 keys and 64 MiB of answers: a day of keys at a request a second, in memory
    /// a sidecar can spare.
    fn default() -> Bounds {
        Bounds {
            entries: 100_000,
            bytes: 64 << 20,
        }
    }
}

#[derive(Debug)]
enum State {
    InFlight { token: u128 },
    Complete { answer: Arc<Answer>, size: usize },
}

#[derive(Debug)]
struct Entry {
    fingerprint: Fingerprint,
    state: State,
    /// When it is gone: the lock's expiry, then the answer's.
    until: Nanos,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<Scope, Entry>,
    /// Completed entries by expiry, to drop the expired and evict the nearest.
    order: BTreeMap<(Nanos, Scope), ()>,
    bytes: usize,
}

/// The in-memory store.
#[derive(Debug, Default)]
pub struct Memory {
    inner: Mutex<Inner>,
    bounds: Bounds,
}

impl Memory {
    pub fn new(bounds: Bounds) -> Memory {
        Memory {
            inner: Mutex::default(),
            bounds,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Looks `scope` up at `now`; a key seen for the first time is locked for `token` until
    /// `lock_until`.
    pub fn begin(
        &self,
        scope: Scope,
        fingerprint: Fingerprint,
        token: u128,
        now: Nanos,
        lock_until: Nanos,
    ) -> Result<Begun, Full> {
        let mut inner = self.lock();
        inner.expire(now);
        if let Some(entry) = inner.map.get(&scope) {
            if entry.until > now {
                if let Some(m) = entry.fingerprint.mismatch(&fingerprint) {
                    return Ok(Begun::Mismatch(m));
                }
                return Ok(match &entry.state {
                    State::InFlight { .. } => Begun::InFlight,
                    State::Complete { answer, .. } => Begun::Replay(Answer::clone(answer)),
                });
            }
            inner.remove(&scope);
        }
        while inner.map.len() >= self.bounds.entries {
            if !inner.evict_one() {
                return Err(Full);
            }
        }
        let state = State::InFlight { token };
        let until = lock_until;
        inner.map.insert(
            scope,
            Entry {
                fingerprint,
                state,
                until,
            },
        );
        Ok(Begun::Fresh)
    }

    /// Stores `answer` under `scope` until `until`, if `token` still holds its lock. An answer
    /// larger than the byte bound is not stored: the key is released instead.
    pub fn complete(&self, scope: Scope, token: u128, answer: Answer, until: Nanos) {
        let mut inner = self.lock();
        if !inner.holds(&scope, token) {
            return;
        }
        let size = answer.size();
        if size > self.bounds.bytes {
            inner.remove(&scope);
            return;
        }
        while inner.bytes + size > self.bounds.bytes && inner.evict_one() {}
        inner.bytes += size;
        inner.order.insert((until, scope), ());
        if let Some(entry) = inner.map.get_mut(&scope) {
            entry.until = until;
            entry.state = State::Complete {
                answer: Arc::new(answer),
                size,
            };
        }
    }

    /// Drops `scope`'s lock, if `token` still holds it, so that a retry goes through.
    pub fn release(&self, scope: Scope, token: u128) {
        let mut inner = self.lock();
        if inner.holds(&scope, token) {
            inner.remove(&scope);
        }
    }

    /// Keys held, and bytes of answers.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.map.len(), inner.bytes)
    }
}

impl Inner {
    fn holds(&self, scope: &Scope, token: u128) -> bool {
        matches!(self.map.get(scope), Some(Entry { state: State::InFlight { token: t }, .. }) if *t == token)
    }

    fn remove(&mut self, scope: &Scope) {
        if let Some(entry) = self.map.remove(scope)
            && let State::Complete { size, .. } = entry.state
        {
            self.bytes -= size;
            self.order.remove(&(entry.until, *scope));
        }
    }

    /// Drops the completed entries whose time is over (a few at a time: each call does some).
    fn expire(&mut self, now: Nanos) {
        for _ in 0..8 {
            match self.order.first_key_value() {
                Some((&(until, scope), ())) if until <= now => self.remove(&scope),
                _ => return,
            }
        }
    }

    /// Drops the completed entry nearest its expiry; false if there is none.
    fn evict_one(&mut self) -> bool {
        let Some((&(_, scope), ())) = self.order.first_key_value() else {
            return false;
        };
        self.remove(&scope);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderMap, Method, StatusCode};

    const SEC: Nanos = 1_000_000_000;

    fn scope(i: u64) -> Scope {
        let mut s = [0u8; 32];
        s[..8].copy_from_slice(&i.to_be_bytes());
        Scope(s)
    }

    fn print(body: &[u8]) -> Fingerprint {
        Fingerprint::new(&Method::POST, "/v1/candidates", body)
    }

    fn answer(body: &'static [u8]) -> Answer {
        Answer {
            status: StatusCode::CREATED,
            headers: HeaderMap::new(),
            body: Bytes::from_static(body),
        }
    }

    #[test]
    fn a_key_goes_from_in_flight_to_complete_and_expires_at_its_ttl() {
        let m = Memory::new(Bounds::default());
        let (s, f) = (scope(1), print(b"{}"));
        assert_eq!(m.begin(s, f, 7, 0, 60 * SEC), Ok(Begun::Fresh));
        assert_eq!(m.begin(s, f, 8, SEC, 61 * SEC), Ok(Begun::InFlight));
        m.complete(s, 7, answer(b"{\"id\":1}"), 2 * SEC + 3600 * SEC);
        let replay = Begun::Replay(answer(b"{\"id\":1}"));
        assert_eq!(m.begin(s, f, 9, 3 * SEC, 63 * SEC), Ok(replay.clone()));
        // Still there a nanosecond before the ttl is over, gone at it.
        let end = 2 * SEC + 3600 * SEC;
        assert_eq!(m.begin(s, f, 9, end - 1, end + SEC), Ok(replay));
        assert_eq!(m.begin(s, f, 10, end, end + SEC), Ok(Begun::Fresh));
    }

    #[test]
    fn another_body_under_the_same_key_is_a_mismatch_in_flight_or_complete() {
        let m = Memory::new(Bounds::default());
        let s = scope(1);
        m.begin(s, print(b"{}"), 1, 0, SEC).unwrap();
        assert!(
            matches!(m.begin(s, print(b"[]"), 2, 0, SEC), Ok(Begun::Mismatch(x)) if x.body && !x.method)
        );
        m.complete(s, 1, answer(b""), 100 * SEC);
        assert!(matches!(
            m.begin(s, print(b"[]"), 2, 0, SEC),
            Ok(Begun::Mismatch(_))
        ));
    }

    #[test]
    fn a_released_or_expired_lock_lets_the_retry_through_and_an_old_token_does_nothing() {
        let m = Memory::new(Bounds::default());
        let (s, f) = (scope(1), print(b"{}"));
        m.begin(s, f, 1, 0, 10 * SEC).unwrap();
        m.release(s, 1);
        assert_eq!(m.begin(s, f, 2, 0, 10 * SEC), Ok(Begun::Fresh));
        // The lock of a replica that never came back expires by itself.
        assert_eq!(m.begin(s, f, 3, 10 * SEC, 20 * SEC), Ok(Begun::Fresh));
        m.release(s, 2);
        m.complete(s, 2, answer(b"stale"), 100 * SEC);
        assert_eq!(m.begin(s, f, 4, 11 * SEC, 20 * SEC), Ok(Begun::InFlight));
    }

    #[test]
    fn memory_stays_within_its_bounds_under_100k_distinct_keys() {
        let bounds = Bounds {
            entries: 10_000,
            bytes: 1 << 20,
        };
        let m = Memory::new(bounds);
        let body: &'static [u8] = &[b'x'; 300];
        let print = print(b"{}");
        for i in 0..100_000u64 {
            let now = i * 1000;
            let begun = m.begin(scope(i), print, u128::from(i), now, now + SEC);
            assert_eq!(begun, Ok(Begun::Fresh));
            m.complete(scope(i), u128::from(i), answer(body), now + 3600 * SEC);
            let (entries, bytes) = m.usage();
            assert!(
                entries <= bounds.entries && bytes <= bounds.bytes,
                "{entries} {bytes}"
            );
        }
        // The newest answers are the ones kept.
        let last = scope(99_999);
        assert!(matches!(
            m.begin(last, print, 0, 100_000_000, 0),
            Ok(Begun::Replay(_))
        ));
        assert_eq!(
            m.begin(scope(0), print, 1, 100_000_000, 200_000_000),
            Ok(Begun::Fresh)
        );
    }

    #[test]
    fn locks_are_never_evicted_and_a_store_full_of_them_says_so() {
        let m = Memory::new(Bounds {
            entries: 2,
            bytes: 1 << 20,
        });
        m.begin(scope(1), print(b""), 1, 0, SEC).unwrap();
        m.begin(scope(2), print(b""), 2, 0, SEC).unwrap();
        assert_eq!(m.begin(scope(3), print(b""), 3, 0, SEC), Err(Full));
        assert_eq!(
            m.begin(scope(1), print(b""), 4, 0, SEC),
            Ok(Begun::InFlight)
        );
    }

    #[test]
    fn an_answer_over_the_byte_bound_is_not_stored_and_frees_its_key() {
        let m = Memory::new(Bounds {
            entries: 10,
            bytes: 200,
        });
        let (s, f) = (scope(1), print(b""));
        m.begin(s, f, 1, 0, SEC).unwrap();
        m.complete(s, 1, answer(&[b'x'; 500]), 100 * SEC);
        assert_eq!(m.usage(), (0, 0));
        assert_eq!(m.begin(s, f, 2, 0, SEC), Ok(Begun::Fresh));
    }
}
