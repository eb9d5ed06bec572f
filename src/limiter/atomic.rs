//! A key's state as atomics, so a check needs only the map's shared (read) lock.
//!
//! - **One limit**: one word, updated by compare-and-swap, as a lock-free token bucket is.
//! - **Two limits**: both words must change together. The top bit of the first word is a
//!   lock, held only while the new words are stored (no limit ever sets that bit: a
//!   theoretical arrival time stays below 2⁶³ ns and a window keeps it clear). Readers
//!   never take it: they read the first word, the second, then the first again, and retry
//!   if it changed or was locked (a sequence lock). Every admission changes the first word
//!   (a later arrival time, or a larger count), so an unchanged first word means an
//!   unchanged state.
//!
//! A refusal therefore writes nothing at all, and an admission is one compare-and-swap (plus
//! two stores for two limits). Keys in one shard no longer wait for each other, and many
//! threads refusing one hot key do not contend on a lock.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering, fence};

use super::decision::{Decision, MAX_LIMITS, State};
use super::policy::{At, InsufficientCapacity, Policy};

/// The lock bit of the first word.
pub(crate) const LOCKED: u64 = 1 << 63;

/// A key's state, shared by the threads checking it.
#[derive(Debug, Default)]
pub(crate) struct AtomicState([AtomicU64; MAX_LIMITS]);

impl AtomicState {
    pub(crate) fn new(state: State) -> AtomicState {
        AtomicState(state.map(AtomicU64::new))
    }

    /// A consistent copy of the state.
    pub(crate) fn load(&self) -> State {
        let mut spins = 0u32;
        loop {
            if let Some(state) = self.read() {
                return state;
            }
            spins = wait(spins);
        }
    }

    /// The state, through exclusive access (no other thread can be checking it).
    pub(crate) fn get_mut(&mut self) -> State {
        self.0.each_mut().map(|word| *word.get_mut())
    }

    /// [`Policy::decide_at`] on this state, atomically: the cost is taken from every limit or
    /// from none, as if the check ran alone.
    #[inline(always)]
    pub(crate) fn decide(
        &self,
        policy: &Policy,
        at: &At,
        cost: NonZeroU32,
    ) -> Result<Decision, InsufficientCapacity> {
        // One attempt inline; the retries that contention needs are a loop out of line, so
        // the common case does not pay for setting a loop up.
        match self.attempt(policy, at, cost)? {
            Some(decision) => Ok(decision),
            None => self.decide_contended(policy, at, cost),
        }
    }

    #[cold]
    #[inline(never)]
    fn decide_contended(
        &self,
        policy: &Policy,
        at: &At,
        cost: NonZeroU32,
    ) -> Result<Decision, InsufficientCapacity> {
        let mut spins = 0u32;
        loop {
            if let Some(decision) = self.attempt(policy, at, cost)? {
                return Ok(decision);
            }
            spins = wait(spins);
        }
    }

    /// One try at [`AtomicState::decide`]; `None` if another thread got in the way.
    #[inline(always)]
    fn attempt(
        &self,
        policy: &Policy,
        at: &At,
        cost: NonZeroU32,
    ) -> Result<Option<Decision>, InsufficientCapacity> {
        let single = policy.limits().len() == 1;
        let Some((first, mut next)) = self.words() else {
            return Ok(None);
        };
        let decision = policy.decide_at(&mut next, at, cost)?;
        debug_assert!(next[0] & LOCKED == 0, "a limit set the lock bit");
        let done = if !decision.is_allowed() {
            single || self.unchanged(first)
        } else if single {
            self.swap(first, next[0])
        } else if self.swap(first, first | LOCKED) {
            // The lock is taken from the very word the decision was made on, so the second
            // word cannot have changed since it was read. The fence keeps the stores below
            // from being seen before the lock.
            fence(Ordering::Release);
            self.0[1].store(next[1], Ordering::Relaxed);
            self.0[0].store(next[0], Ordering::Release);
            true
        } else {
            false
        };
        Ok(done.then_some(decision))
    }

    /// Both words as of one instant, or `None` if a writer was at work.
    fn read(&self) -> Option<State> {
        let (first, state) = self.words()?;
        self.unchanged(first).then_some(state)
    }

    /// The first word, then both, unless a writer holds the lock. Not yet checked for a
    /// writer that came and went in between: see [`AtomicState::unchanged`].
    fn words(&self) -> Option<(u64, State)> {
        let first = self.0[0].load(Ordering::Acquire);
        (first & LOCKED == 0).then(|| (first, [first, self.0[1].load(Ordering::Relaxed)]))
    }

    /// Whether the first word still reads `first`, so what was read after it is consistent.
    fn unchanged(&self, first: u64) -> bool {
        fence(Ordering::Acquire);
        self.0[0].load(Ordering::Relaxed) == first
    }

    fn swap(&self, current: u64, new: u64) -> bool {
        self.0[0]
            .compare_exchange_weak(current, new, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }
}

/// Waits a moment for a writer to finish its two stores; if it seems to have been preempted
/// meanwhile, gives the core away rather than spin.
fn wait(spins: u32) -> u32 {
    if spins < 64 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
    spins.saturating_add(1)
}
