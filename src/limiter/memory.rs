//! The in-memory store: one DashMap per policy from a keyed hash of the client key to its state.
//!
//! - **Keys** are never stored: a client key (any bytes, any length) becomes a 64-bit SipHash
//!   under a random per-process secret, so hostile keys cost no memory and cannot be crafted to
//!   collide. Two distinct keys of one policy share state only if their hashes collide by
//!   chance: about `n² / 2⁶⁵` for `n` keys (3 in 100 million at a million keys). SipHash-1-3
//!   is std's keyed hash, a PRF with a security argument; it costs about 15 ns for a short
//!   key. A faster keyed hash (foldhash, ahash) would need a new dependency and offers weaker
//!   guarantees against crafted collisions, so it is not used.
//! - **State** is two words per key (16 bytes; 24 with the hash), kept as atomics
//!   ([`AtomicState`]) so that a check takes only the shard's shared lock: a refusal writes
//!   nothing and an admission is a compare-and-swap. `entry` (the exclusive lock) is used only
//!   for a key not yet seen, and a new key is stored only once admitted, so refused requests
//!   from unknown keys cost no memory either.
//! - **Sweeping**: [`MemoryStore::sweep`] drops every key whose state equals a fresh key's, so
//!   eviction never changes a decision. The server calls it periodically.
//! - **At `max_keys`**, keys already tracked carry on as before, but a key not yet tracked is
//!   checked against one overflow state per policy, shared by all such keys (as if they were a
//!   single client). A flood of new keys thus limits itself and cannot buy anyone fresh quota;
//!   once a sweep makes room, new keys get their own state again. The cap is approximate under
//!   concurrency, by at most one key per thread checking at the same moment.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::num::NonZeroU32;
use std::ops::Deref;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use dashmap::mapref::one::Ref;

use super::atomic::AtomicState;
use super::clock::{Clock, MonotonicClock, Nanos};
use super::decision::{Decision, State};
use super::policy::{At, Policy};
use super::store::{Checked, Outcome, Store};

/// Policies whose tables are found with one atomic load instead of a map lookup; a process
/// has a handful (more only as configs are reloaded), and the rest go to a map.
const FAST_TABLES: usize = 16;

/// The map key of the state shared by new keys once the store is full.
const OVERFLOW: u64 = u64::MAX;

/// Hashes a `u64` that is already a good hash (or a small id) with one multiplication.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Mix(u64);

/// The golden-ratio constant: odd, so multiplying by it permutes `u64`s.
const PHI: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for Mix {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(PHI);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(PHI);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type Map<V> = DashMap<u64, V, BuildHasherDefault<Mix>>;

/// A table of more slots than this is shrunk by a sweep that leaves it three-quarters empty.
const SHRINK_ABOVE: usize = 4096;

/// One policy's keys.
struct Table {
    policy: Policy,
    states: Map<AtomicState>,
}

impl Table {
    fn new(policy: &Policy) -> Table {
        Table {
            policy: policy.clone(),
            states: Map::default(),
        }
    }
}

/// A policy's table, from the fast slots or from the map.
enum TableRef<'a> {
    Fast(&'a Table),
    Mapped(Ref<'a, u64, Table>),
}

impl Deref for TableRef<'_> {
    type Target = Table;

    fn deref(&self) -> &Table {
        match self {
            TableRef::Fast(table) => table,
            TableRef::Mapped(table) => table,
        }
    }
}

/// Limiter state in this process's memory.
pub struct MemoryStore<C = MonotonicClock> {
    clock: C,
    secret: RandomState,
    fast: [OnceLock<Table>; FAST_TABLES],
    tables: Map<Table>,
    tracked: AtomicUsize,
    max_keys: usize,
}

impl MemoryStore {
    /// A store on the real clock holding state for at most about `max_keys` keys.
    pub fn new(max_keys: usize) -> Self {
        MemoryStore::with_clock(MonotonicClock::new(), max_keys)
    }
}

impl<C: Clock> MemoryStore<C> {
    /// A store reading time from `clock`.
    pub fn with_clock(clock: C, max_keys: usize) -> Self {
        MemoryStore {
            clock,
            secret: RandomState::new(),
            fast: [const { OnceLock::new() }; FAST_TABLES],
            tables: Map::default(),
            tracked: AtomicUsize::new(0),
            max_keys,
        }
    }

    /// The store's clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// The cap on tracked keys.
    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// How many keys hold state now (the overflow state is not counted).
    pub fn tracked_keys(&self) -> usize {
        self.tracked.load(Ordering::Relaxed)
    }

    /// Checks synchronously; what [`Store::check`] answers, ready at once.
    pub fn check_now(&self, policy: &Policy, key: &[u8], cost: NonZeroU32) -> Outcome {
        // Everything that needs no state first: the shard's lock is shared by every key of
        // the shard, and held only while the key's state is read and updated.
        let at = policy.at(self.clock.now());
        let hash = self.hash(key);
        let table = self.table(policy);
        if let Some(state) = table.states.get(&hash) {
            return Ok(state.decide(policy, &at, cost)?);
        }
        self.check_new(&table, hash, &at, cost)
    }

    /// Decides on a copy of the key's state: what `check_now` would answer, taking nothing.
    pub fn peek_now(&self, policy: &Policy, key: &[u8], cost: NonZeroU32) -> Outcome {
        let now = self.clock.now();
        let mut state = self.state_of(policy, key);
        Ok(policy.decide(&mut state, now, cost)?)
    }

    /// Where the key stands now, as an admission that took nothing.
    pub fn standing_now(&self, policy: &Policy, key: &[u8]) -> Decision {
        let now = self.clock.now();
        Decision::new(self.state_of(policy, key), now, 1, true)
    }

    /// A copy of the key's state (the shared one for a key over `max_keys`).
    fn state_of(&self, policy: &Policy, key: &[u8]) -> State {
        let table = self.table(policy);
        match table.states.get(&self.hash(key)) {
            Some(state) => state.load(),
            None if self.tracked_keys() >= self.max_keys => table
                .states
                .get(&OVERFLOW)
                .map(|s| s.load())
                .unwrap_or_default(),
            None => State::default(),
        }
    }

    /// Drops every key whose state is that of a fresh key; returns how many were dropped.
    pub fn sweep(&self) -> usize {
        let now = self.clock.now();
        let fast = self.fast.iter().filter_map(OnceLock::get);
        let dropped = fast
            .map(|table| Self::sweep_table(table, now))
            .sum::<usize>()
            + self
                .tables
                .iter()
                .map(|table| Self::sweep_table(&table, now))
                .sum::<usize>();
        self.tracked.fetch_sub(dropped, Ordering::Relaxed);
        self.tables.retain(|_, table| !table.states.is_empty());
        dropped
    }

    /// See [`Store::carry_over`]. A key that already has state under `to` keeps it.
    pub fn carry_over(&self, from: &Policy, to: &Policy) -> usize {
        let now = self.clock.now();
        let (old, new) = (self.table(from), self.table(to));
        let mut moved = 0;
        for entry in old.states.iter() {
            let state = to.carried(from, &entry.value().load(), now);
            if to.is_fresh(&state, now) {
                continue;
            }
            if let Entry::Vacant(vacant) = new.states.entry(*entry.key()) {
                vacant.insert(AtomicState::new(state));
                if *entry.key() != OVERFLOW {
                    self.tracked.fetch_add(1, Ordering::Relaxed);
                    moved += 1;
                }
            }
        }
        moved
    }

    fn sweep_table(table: &Table, now: Nanos) -> usize {
        let mut dropped = 0;
        table.states.retain(|&hash, state| {
            let fresh = table.policy.is_fresh(&state.get_mut(), now);
            dropped += usize::from(fresh && hash != OVERFLOW);
            !fresh
        });
        // A table keeps its capacity when keys go; after a flood of one-off keys it would hold
        // the flood's memory for good (and removals leave tombstones that make it grow again
        // sooner). Mostly empty, it is rebuilt to fit what is left.
        let capacity = table.states.capacity();
        if capacity > SHRINK_ABOVE && table.states.len() < capacity / 4 {
            table.states.shrink_to_fit();
        }
        dropped
    }

    /// The key's keyed hash, never [`OVERFLOW`]. The bytes go in without a length prefix:
    /// SipHash pads its last block with the length, so distinct keys stay distinct inputs.
    #[inline]
    fn hash(&self, key: &[u8]) -> u64 {
        let mut hasher = self.secret.build_hasher();
        hasher.write(key);
        hasher.finish().min(OVERFLOW - 1)
    }

    /// The policy's table, made on first use.
    #[inline]
    fn table(&self, policy: &Policy) -> TableRef<'_> {
        let slot = &self.fast[(policy.id() % FAST_TABLES as u64) as usize];
        match slot.get() {
            Some(fast) if fast.policy.id() == policy.id() => TableRef::Fast(fast),
            _ => self.table_slow(slot, policy),
        }
    }

    /// The policy's table when it is not yet made or not in its fast slot.
    #[cold]
    fn table_slow<'a>(&'a self, slot: &'a OnceLock<Table>, policy: &Policy) -> TableRef<'a> {
        let fast = slot.get_or_init(|| Table::new(policy));
        if fast.policy.id() == policy.id() {
            return TableRef::Fast(fast);
        }
        if let Some(table) = self.tables.get(&policy.id()) {
            return TableRef::Mapped(table);
        }
        let table = self.tables.entry(policy.id());
        TableRef::Mapped(table.or_insert_with(|| Table::new(policy)).downgrade())
    }

    /// A key with no state yet: stored only if admitted, and only below the cap. Kept out of
    /// line, so a check of a known key stays small.
    #[cold]
    #[inline(never)]
    fn check_new(&self, table: &Table, hash: u64, at: &At, cost: NonZeroU32) -> Outcome {
        let policy = &table.policy;
        if self.tracked_keys() >= self.max_keys {
            if let Some(shared) = table.states.get(&OVERFLOW) {
                return Ok(shared.decide(policy, at, cost)?);
            }
            let shared = table.states.entry(OVERFLOW).or_default();
            return Ok(shared.decide(policy, at, cost)?);
        }
        match table.states.entry(hash) {
            Entry::Occupied(state) => Ok(state.get().decide(policy, at, cost)?),
            Entry::Vacant(vacant) => {
                let mut state = State::default();
                let decision = policy.decide_at(&mut state, at, cost)?;
                if decision.is_allowed() {
                    vacant.insert(AtomicState::new(state));
                    self.tracked.fetch_add(1, Ordering::Relaxed);
                }
                Ok(decision)
            }
        }
    }
}

impl<C: Clock> Store for MemoryStore<C> {
    fn check<'a>(&'a self, policy: &'a Policy, key: &'a [u8], cost: NonZeroU32) -> Checked<'a> {
        Checked::ready(self.check_now(policy, key, cost))
    }

    fn peek<'a>(&'a self, policy: &'a Policy, key: &'a [u8], cost: NonZeroU32) -> Checked<'a> {
        Checked::ready(self.peek_now(policy, key, cost))
    }

    fn standing<'a>(&'a self, policy: &'a Policy, key: &'a [u8]) -> Checked<'a> {
        Checked::ready(Ok(self.standing_now(policy, key)))
    }

    fn tracked_keys(&self) -> usize {
        MemoryStore::tracked_keys(self)
    }

    fn sweep(&self) -> usize {
        MemoryStore::sweep(self)
    }

    fn carry_over(&self, from: &Policy, to: &Policy) -> usize {
        MemoryStore::carry_over(self, from, to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::clock::ManualClock;
    use crate::limiter::store::Error;
    use crate::limiter::{Gcra, Limit, Rate};
    use std::sync::Arc;
    use std::time::Duration;

    const ONE: NonZeroU32 = NonZeroU32::MIN;

    fn store(max_keys: usize) -> MemoryStore<Arc<ManualClock>> {
        MemoryStore::with_clock(Arc::new(ManualClock::new(0)), max_keys)
    }

    fn admitted(store: &MemoryStore<Arc<ManualClock>>, policy: &Policy, key: &[u8]) -> bool {
        store.check_now(policy, key, ONE).unwrap().is_allowed()
    }

    fn burst(store: &MemoryStore<Arc<ManualClock>>, policy: &Policy, key: &[u8]) -> usize {
        (0..1000)
            .take_while(|_| admitted(store, policy, key))
            .count()
    }

    #[test]
    fn peeking_decides_like_a_check_but_takes_nothing() {
        let store = store(100);
        let policy = Policy::published_default();
        let hundred = NonZeroU32::new(100).unwrap();
        assert!(store.peek_now(&policy, b"k", hundred).unwrap().is_allowed());
        assert_eq!(store.tracked_keys(), 0, "a peek stores nothing");
        assert_eq!(burst(&store, &policy, b"k"), 100);
        let peeked = store.peek_now(&policy, b"k", ONE).unwrap();
        let checked = store.check_now(&policy, b"k", ONE).unwrap();
        assert_eq!(peeked, checked);
        assert!(!peeked.is_allowed());
    }

    #[test]
    fn standing_reports_what_is_left_and_takes_nothing() {
        let store = store(100);
        let policy = Policy::published_default();
        let left = |d: Decision| d.limits(&policy).iter().map(|l| l.remaining).min();
        assert_eq!(left(store.standing_now(&policy, b"k")), Some(100));
        assert_eq!(store.tracked_keys(), 0, "standing stores nothing");
        store.check_now(&policy, b"k", ONE).unwrap();
        store.check_now(&policy, b"k", ONE).unwrap();
        let standing = store.standing_now(&policy, b"k");
        assert!(standing.is_allowed());
        assert_eq!(left(standing), Some(98));
        assert_eq!(left(store.standing_now(&policy, b"k")), Some(98));
    }

    fn sized(burst: u32) -> Policy {
        let n = NonZeroU32::new(burst).unwrap();
        let rate = Gcra::new(Rate::per_second(ONE), n).unwrap();
        let window = crate::limiter::Window::new(Duration::from_secs(60), n).unwrap();
        Policy::new("p", &[Limit::Window(window), Limit::Rate(rate)]).unwrap()
    }

    #[test]
    fn a_changed_policy_takes_over_each_keys_share_of_its_limits() {
        let store = store(100);
        let (old, new) = (sized(4), sized(8));
        for _ in 0..2 {
            assert!(admitted(&store, &old, b"half"));
        }
        assert_eq!(burst(&store, &old, b"spent"), 4);
        assert_eq!(store.carry_over(&old, &new), 2);
        assert_eq!(burst(&store, &new, b"half"), 4, "half of 8 stays used");
        assert_eq!(burst(&store, &new, b"spent"), 0, "all of it stays used");
        assert_eq!(burst(&store, &new, b"fresh"), 8);
    }

    #[test]
    fn keys_and_policies_never_share_state() {
        let store = store(100);
        let (a, b) = (Policy::published_default(), Policy::published_default());
        assert_eq!(burst(&store, &a, b"alice"), 100);
        assert_eq!(burst(&store, &a, b"bob"), 100);
        assert_eq!(burst(&store, &b, b"alice"), 100);
        assert_eq!(store.tracked_keys(), 3);
    }

    #[test]
    fn many_policies_never_share_state_and_are_swept() {
        let store = store(1_000);
        let policies: Vec<Policy> = (0..40).map(|_| Policy::published_default()).collect();
        for policy in &policies {
            assert_eq!(burst(&store, policy, b"alice"), 100);
        }
        assert_eq!(store.tracked_keys(), 40);
        store.clock().advance(Duration::from_secs(1000));
        assert_eq!(store.sweep(), 40);
        assert_eq!((store.tracked_keys(), store.tables.len()), (0, 0));
    }

    #[test]
    fn hostile_keys_are_hashed_not_stored() {
        let store = store(100);
        let policy = Policy::published_default();
        let huge = vec![0xFF_u8; 1 << 20];
        assert!(admitted(&store, &policy, &huge));
        assert!(admitted(&store, &policy, &[]));
        assert_eq!(burst(&store, &policy, &huge), 99);
        assert_eq!(store.tracked_keys(), 2);
    }

    #[test]
    fn refusals_for_unknown_keys_store_nothing() {
        let store = store(100);
        let policy = Policy::published_default();
        let err = store.check_now(&policy, b"k", NonZeroU32::new(101).unwrap());
        assert!(matches!(err, Err(Error::InsufficientCapacity(_))));
        assert_eq!(store.tracked_keys(), 0);
    }

    #[test]
    fn a_sweep_gives_back_the_room_of_a_flood_of_keys() {
        let store = store(1_000_000);
        let policy = Policy::published_default();
        for i in 0..100_000_u32 {
            assert!(admitted(&store, &policy, &i.to_le_bytes()));
        }
        let flooded = store.table(&policy).states.capacity();
        assert!(flooded >= 100_000, "{flooded}");
        store.clock().advance(Duration::from_secs(30));
        assert!(admitted(&store, &policy, b"regular"));
        store.clock().advance(Duration::from_secs(42));
        assert_eq!(store.sweep(), 100_000);
        let swept = store.table(&policy).states.capacity();
        assert!(swept < flooded / 16, "{flooded} -> {swept}");
        // The key that stayed keeps its state: its request 42 s ago still counts in the
        // 60-s window, so 99 more fit.
        assert_eq!(burst(&store, &policy, b"regular"), 99);
    }

    #[test]
    fn sweep_drops_only_keys_that_are_fresh_again() {
        let store = store(100);
        let policy = Policy::published_default();
        let ten = NonZeroU32::new(10).unwrap();
        store.check_now(&policy, b"old", ten).unwrap();
        store.clock().advance(Duration::from_secs(30));
        store.check_now(&policy, b"new", ten).unwrap();
        store.clock().advance(Duration::from_secs(42));
        assert_eq!(store.sweep(), 1);
        assert_eq!(store.tracked_keys(), 1);
        // The survivor keeps its state: 10 spent in slot [24 s, 36 s) until 96 s.
        let decision = store.check_now(&policy, b"new", ONE).unwrap();
        assert_eq!(decision.limits(&policy)[0].remaining, 89);
        store.clock().advance(Duration::from_secs(1000));
        assert_eq!(store.sweep(), 1);
        assert_eq!(store.tracked_keys(), 0);
    }

    #[test]
    fn at_the_cap_new_keys_share_one_state_and_old_keys_keep_theirs() {
        let store = store(2);
        let policy = Policy::published_default();
        assert!(admitted(&store, &policy, b"a"));
        assert!(admitted(&store, &policy, b"b"));
        let flood: usize = (0..500)
            .filter(|i| admitted(&store, &policy, format!("flood-{i}").as_bytes()))
            .count();
        assert_eq!(flood, 100);
        assert_eq!(store.tracked_keys(), 2);
        assert_eq!(burst(&store, &policy, b"a"), 99);
        assert!(!admitted(&store, &policy, b"newcomer"));
        store.clock().advance(Duration::from_secs(1000));
        store.sweep();
        assert!(admitted(&store, &policy, b"newcomer"));
        assert_eq!(store.tracked_keys(), 1);
    }

    #[test]
    fn many_threads_on_one_key_get_exactly_the_burst() {
        let store = store(100);
        let policy = Policy::published_default();
        let admitted_total: usize = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        (0..500)
                            .filter(|_| admitted(&store, &policy, b"hot"))
                            .count()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).sum()
        });
        assert_eq!(admitted_total, 100);
        assert_eq!(store.tracked_keys(), 1);
    }

    #[test]
    fn both_words_of_a_key_change_together_under_contention() {
        // Two limits of the same size move in lockstep: any torn update or torn read would show
        // as a pair of different figures, or a figure seen twice.
        let store = store(100);
        let policy = sized(1000);
        let seen: Vec<Vec<(u32, u32, bool)>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        (0..600)
                            .map(|_| {
                                let decision = store.check_now(&policy, b"hot", ONE).unwrap();
                                let [window, rate] = [0, 1].map(|i| decision.limits(&policy)[i]);
                                (window.remaining, rate.remaining, decision.is_allowed())
                            })
                            .collect()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let mut admitted: Vec<u32> = Vec::new();
        for (window, rate, allowed) in seen.into_iter().flatten() {
            assert_eq!(window, rate, "the two limits moved apart");
            if allowed {
                admitted.push(window);
            } else {
                assert_eq!(window, 0, "a refusal before the quota was spent");
            }
        }
        admitted.sort_unstable();
        assert_eq!(admitted, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn the_store_trait_is_ready_at_once() {
        let store = store(100);
        let shared: Arc<dyn Store> = Arc::new(store);
        let rate = Gcra::new(Rate::per_second(ONE), ONE).unwrap();
        let policy = Policy::new("one", &[Limit::Rate(rate)]).unwrap();
        let first = shared.check(&policy, b"k", ONE).now_or_never().unwrap();
        assert!(first.unwrap().is_allowed());
        let second = shared
            .check(&policy, b"k", ONE)
            .now_or_never()
            .unwrap()
            .unwrap();
        assert_eq!(second.retry_after(&policy), Some(Duration::from_secs(1)));
        assert_eq!(shared.tracked_keys(), 1);
    }
}
