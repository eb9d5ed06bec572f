//! Rolling window: at most `N` requests admitted in any window of length `W`, never more.
//!
//! An exact sliding log would keep `N` timestamps per key. Instead time is cut into slots of
//! `L = ⌈W / k⌉` and the state keeps admitted counts for the current slot and the `k` before
//! it: `k + 1` slots covering `[now − (k+1)·L, now] ⊇ (now − W, now]`. Every request that an
//! exact log counts is counted here, so the window is never overshot; a request is only
//! forgotten late, when its slot leaves, at most `(k+1)·L − W` (≈ `W / k`) after the exact
//! log forgets it. That is the lateness bound ([`Window::lateness`]): this limit admits no
//! later than an exact log would, plus that bound.
//!
//! All of it is packed in one `u64`: `k + 1` counters of `b = bits(N)` bits at the bottom and
//! the slot number (modulo `2^e`, `e ≥ 19`) above them, with the top bit left clear for the
//! store's lock; `k` is as large as fits (5 for
//! `N = 100`, so 12 s late at most for the 60-s default). A key idle for more than `2^e` slots
//! could have its slot number alias; that only keeps stale counts, which errs on the safe side,
//! and the sweeper drops such keys long before.

use std::num::NonZeroU32;
use std::time::Duration;

use super::clock::{Interval, Nanos, nanos, to_micros};
use super::decision::Figures;

/// Bits kept for the slot number, so aliasing needs half a million idle slots.
const MIN_EPOCH_BITS: u32 = 19;
/// Bits a window may use: all but the top one, which the store uses as a lock.
const WORD_BITS: u32 = u64::BITS - 1;
/// More slots than this buy little precision and cost time per check.
const MAX_SLOTS: u32 = 32;
/// The longest window (about 73 years), so times never overflow.
const MAX_LENGTH: Nanos = 1 << 61;

/// A validated rolling-window limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// `W`.
    length: Nanos,
    /// `N`.
    max: u32,
    /// `L`, the slot length.
    slot: Interval,
    /// `k + 1`, the counters kept.
    slots: u32,
    /// `b`, bits per counter.
    bits: u32,
    /// A 1 in the lowest bit of every counter, to sum them all with one multiplication.
    ones: u64,
    /// `⌈2¹⁶ / b⌉`, to divide a bit position by `b` with a multiplication.
    per_bit: u32,
}

impl Window {
    /// The most requests a window can count: two counters of `b` bits must fit beside the
    /// epoch in one word.
    pub const MAX_REQUESTS: u32 = (1 << ((WORD_BITS - MIN_EPOCH_BITS) / 2)) - 1;

    /// At most `max` requests in any window of `length`; `None` if that cannot be kept in one
    /// word (over [`Window::MAX_REQUESTS`]) or the window is empty or absurdly long.
    pub fn new(length: Duration, max: NonZeroU32) -> Option<Window> {
        let length = nanos(length);
        let bits = u32::BITS - max.get().leading_zeros();
        let slots = ((WORD_BITS - MIN_EPOCH_BITS) / bits).min(MAX_SLOTS);
        if slots < 2 || length == 0 || length > MAX_LENGTH {
            return None;
        }
        let ones = (0..slots).fold(0, |ones, age| ones | 1 << (age * bits));
        Some(Window {
            length,
            max: max.get(),
            slot: Interval::new(to_micros(length.div_ceil(u64::from(slots - 1)))),
            slots,
            bits,
            ones,
            per_bit: (1u32 << 16).div_ceil(bits),
        })
    }

    /// `N`, the most requests in any window.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// `W`, the window length.
    pub fn length(&self) -> Duration {
        Duration::from_nanos(self.length)
    }

    /// `k`, the number of slots a window spans.
    pub fn sub_windows(&self) -> u32 {
        self.slots - 1
    }

    /// How much later than an exact sliding log this limit may forget a request.
    pub fn lateness(&self) -> Duration {
        Duration::from_nanos(self.slot.nanos() * u64::from(self.slots) - self.length)
    }

    /// `W` in nanoseconds, the header's `w`.
    pub(crate) fn length_nanos(&self) -> Nanos {
        self.length
    }

    /// `L`, the slot length, in nanoseconds (whole microseconds).
    pub(crate) fn slot_nanos(&self) -> Nanos {
        self.slot.nanos()
    }

    /// `k + 1`, the counters a key keeps.
    pub(crate) fn slots(&self) -> u32 {
        self.slots
    }

    /// The state word of a key whose counters, newest first, are for slot `index` and the
    /// slots before it (as a shared store keeps them, unpacked).
    pub(crate) fn word(&self, index: u64, counts: impl IntoIterator<Item = u64>) -> u64 {
        let most = (1 << self.bits) - 1;
        let packed = counts
            .into_iter()
            .take(self.slots as usize)
            .enumerate()
            .fold(0, |word, (age, n)| {
                word | n.min(most) << (age as u32 * self.bits)
            });
        ((index & self.epoch_mask()) << self.epoch_shift()) | packed
    }

    /// The state once `cost` (≤ N) is taken from state `word` in slot `index` (see
    /// [`Window::slot_of`]), if it fits.
    #[inline]
    pub(crate) fn admit(&self, word: u64, index: u64, cost: u32) -> Option<u64> {
        debug_assert!(cost <= self.max);
        let (index, counts) = self.position_in(word, index);
        (self.total(counts) + cost <= self.max).then(|| {
            let epoch = index & self.epoch_mask();
            (epoch << self.epoch_shift()) | (counts + u64::from(cost))
        })
    }

    /// The exact wait before `cost` (≤ N) fits state `word` at `now`: zero if it fits now.
    pub(crate) fn wait(&self, word: u64, now: Nanos, cost: u32) -> Nanos {
        let (index, counts) = self.position(word, now);
        let total = self.total(counts);
        if total + cost <= self.max {
            return 0;
        }
        // Slots leave oldest first; find the first slot boundary that frees enough.
        let mut left = total;
        for age in (0..self.slots).rev() {
            left = left.saturating_sub(self.count(counts, age));
            if left + cost <= self.max {
                return self.leaves(index, age) - now;
            }
        }
        unreachable!("cost {cost} over the window's max {}", self.max)
    }

    /// The header figures for state `word` at `now`.
    #[inline]
    pub(crate) fn figures(&self, word: u64, now: Nanos) -> Figures {
        let (index, counts) = self.position(word, now);
        Figures {
            remaining: self.max.saturating_sub(self.total(counts)),
            reset: self.reset(counts, index, now),
        }
    }

    /// When the slot `age` slots before slot `index` stops counting.
    fn leaves(&self, index: u64, age: u32) -> Nanos {
        (index + u64::from(self.slots - age)) * self.slot.nanos()
    }

    /// Time until every counted request has left: when the newest non-empty slot leaves.
    fn reset(&self, counts: u64, index: u64, now: Nanos) -> Nanos {
        if counts == 0 {
            return 0;
        }
        self.leaves(index, self.age_of_bit(counts.trailing_zeros())) - now
    }

    /// State `word` of window `from`, carried over to this window: the same share of the quota
    /// counts as used (rounded up), all of it in the current slot, so it leaves a whole window
    /// from now — later than it would have, never earlier.
    pub(crate) fn carried(&self, from: &Window, word: u64, now: Nanos) -> u64 {
        let used = u64::from(from.total(from.position(word, now).1));
        let share = (used * u64::from(self.max)).div_ceil(u64::from(from.max));
        if share == 0 {
            return 0;
        }
        let epoch = self.slot.count_in(now) & self.epoch_mask();
        (epoch << self.epoch_shift()) | share.min(u64::from(self.max))
    }

    /// Whether `word` is indistinguishable from a key never seen.
    pub(crate) fn is_fresh(&self, word: u64, now: Nanos) -> bool {
        self.position(word, now).1 == 0
    }

    fn epoch_shift(&self) -> u32 {
        self.slots * self.bits
    }

    fn epoch_mask(&self) -> u64 {
        u64::MAX >> (self.epoch_shift() + u64::BITS - WORD_BITS)
    }

    fn counts_mask(&self) -> u64 {
        (1 << self.epoch_shift()) - 1
    }

    /// The slot `now` falls in and the counters as of that slot (age 0 is that slot; slots that
    /// have left are dropped). A reading up to `k + 1` slots older than the state (another
    /// thread read the clock earlier but updated the key later) counts as in the state's
    /// slot, so a request is never counted in a slot that has already left.
    #[inline]
    fn position(&self, word: u64, now: Nanos) -> (u64, u64) {
        self.position_in(word, self.slot_of(now))
    }

    /// The slot `now` falls in.
    #[inline]
    pub(crate) fn slot_of(&self, now: Nanos) -> u64 {
        self.slot.count_in(now)
    }

    /// [`Window::position`] with the slot of `now` worked out already.
    #[inline]
    fn position_in(&self, word: u64, index: u64) -> (u64, u64) {
        let counts = word & self.counts_mask();
        let stored = word >> self.epoch_shift();
        let mask = self.epoch_mask();
        let elapsed = (index & mask).wrapping_sub(stored) & mask;
        if elapsed < u64::from(self.slots) {
            return (
                index,
                (counts << (elapsed as u32 * self.bits)) & self.counts_mask(),
            );
        }
        let behind = mask - elapsed + 1;
        if counts != 0 && behind <= u64::from(self.slots) {
            return (index + behind, counts);
        }
        (index, 0)
    }

    /// `bit / b`: exact for every bit position of a word and every `b ≤ 22`.
    fn age_of_bit(&self, bit: u32) -> u32 {
        (bit * self.per_bit) >> 16
    }

    /// The counter for the slot `age` slots before the current one.
    fn count(&self, counts: u64, age: u32) -> u32 {
        // A counter has at most 22 bits, so the cast is lossless.
        ((counts >> (age * self.bits)) & ((1 << self.bits) - 1)) as u32
    }

    /// The sum of the counters, read off the top counter of `counts × ones` (its prefix sums):
    /// exact because no sum exceeds `N`, which fits a counter, so nothing carries.
    fn total(&self, counts: u64) -> u32 {
        let top = (self.slots - 1) * self.bits;
        // A counter has at most 22 bits, so the cast is lossless.
        ((counts.wrapping_mul(self.ones) >> top) & ((1 << self.bits) - 1)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Nanos = 1_000_000_000;

    fn default_window() -> Window {
        Window::new(Duration::from_secs(60), NonZeroU32::new(100).unwrap()).unwrap()
    }

    /// Sends `cost` at `now`, keeping the state when admitted; a refusal says how long to
    /// wait.
    fn send(window: &Window, word: &mut u64, now: Nanos, cost: u32) -> Result<(), Nanos> {
        let wait = window.wait(*word, now, cost);
        match window.admit(*word, window.slot_of(now), cost) {
            Some(next) if wait == 0 => {
                *word = next;
                Ok(())
            }
            None if wait > 0 => Err(wait),
            verdict => panic!("admitted {verdict:?} but a wait of {wait}"),
        }
    }

    #[test]
    fn default_window_has_five_slots_of_twelve_seconds() {
        let window = default_window();
        assert_eq!(window.sub_windows(), 5);
        assert_eq!(window.lateness(), Duration::from_secs(12));
    }

    #[test]
    fn hundred_pass_then_refused_until_their_slot_leaves() {
        let window = default_window();
        let mut word = 0;
        let start = 30 * SEC; // slot 2 spans [24 s, 36 s)
        for _ in 0..100 {
            assert!(send(&window, &mut word, start, 1).is_ok());
        }
        let refused = send(&window, &mut word, start, 1);
        assert_eq!(refused.unwrap_err(), 96 * SEC - start);
        assert!(send(&window, &mut word, 96 * SEC - 1, 1).is_err());
        assert!(send(&window, &mut word, 96 * SEC, 1).is_ok());
    }

    #[test]
    fn requests_spread_out_leave_slot_by_slot() {
        let window = default_window();
        let mut word = 0;
        for slot in 0..4 {
            for _ in 0..25 {
                assert!(send(&window, &mut word, slot * 12 * SEC, 1).is_ok());
            }
        }
        let refused = send(&window, &mut word, 50 * SEC, 30);
        // Slots 0 and 1 must both leave (slot 1 at 84 s) before 30 more fit.
        assert_eq!(refused.unwrap_err(), 34 * SEC);
        assert_eq!(
            window.figures(word, 50 * SEC),
            Figures {
                remaining: 0,
                reset: (108 - 50) * SEC
            }
        );
        assert!(window.is_fresh(word, 108 * SEC));
        assert!(!window.is_fresh(word, 108 * SEC - 1));
    }

    #[test]
    fn an_idle_key_comes_back_fresh() {
        let window = default_window();
        let mut word = 0;
        send(&window, &mut word, 0, 100).unwrap();
        let later = 1_000_000 * SEC;
        assert_eq!(
            window.figures(word, later),
            Figures {
                remaining: 100,
                reset: 0
            }
        );
        assert!(send(&window, &mut word, later, 100).is_ok());
        // Slot [999 996 s, 1 000 008 s) leaves 72 s after it began.
        assert_eq!(
            window.figures(word, later),
            Figures {
                remaining: 0,
                reset: 68 * SEC
            }
        );
    }

    #[test]
    fn a_clock_reading_a_little_behind_the_state_counts_in_the_state_slot() {
        let window = default_window();
        let mut word = 0;
        send(&window, &mut word, 12 * SEC, 99).unwrap();
        // Another thread read 11.9 s, then took the lock after the request above.
        let behind = 12 * SEC - 100_000_000;
        assert!(send(&window, &mut word, behind, 1).is_ok());
        assert!(send(&window, &mut word, behind, 1).is_err());
        assert!(send(&window, &mut word, 84 * SEC - 1, 1).is_err());
        assert!(send(&window, &mut word, 84 * SEC, 100).is_ok());
    }

    #[test]
    fn bit_positions_divide_exactly_for_every_counter_width() {
        for max in (0..22).map(|b| (1u32 << b) + 1) {
            let Some(window) = Window::new(Duration::from_secs(60), NonZeroU32::new(max).unwrap())
            else {
                continue;
            };
            for bit in 0..64 {
                assert_eq!(
                    window.age_of_bit(bit),
                    bit / window.bits,
                    "{bit} / {}",
                    window.bits
                );
            }
        }
    }

    #[test]
    fn the_top_bit_of_a_word_is_never_set() {
        // The store uses it as the lock of a two-limit state.
        for bits in 1..=22 {
            let max = NonZeroU32::new((1 << bits) - 1).unwrap();
            let window = Window::new(Duration::from_millis(7), max).unwrap();
            for now in [0, 1 << 40, (1 << 62) - 1] {
                let mut word = 0;
                send(&window, &mut word, now, max.get()).unwrap();
                assert_eq!(word >> 63, 0, "{bits} bits at {now}");
                assert!(window.wait(word, now, 1) > 0, "the window is full");
            }
        }
    }

    #[test]
    fn windows_that_do_not_fit_a_word_are_rejected() {
        let nz = |n| NonZeroU32::new(n).unwrap();
        assert!(Window::new(Duration::ZERO, nz(1)).is_none());
        assert!(Window::new(Duration::from_secs(1), nz(1 << 22)).is_none());
        let big = Window::new(Duration::from_secs(1), nz((1 << 22) - 1)).unwrap();
        assert_eq!(big.sub_windows(), 1);
        let one = Window::new(Duration::from_secs(62), nz(1)).unwrap();
        assert_eq!(one.sub_windows(), 31);
        assert_eq!(one.lateness(), Duration::from_secs(2));
    }
}
