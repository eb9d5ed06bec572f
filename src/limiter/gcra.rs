//! Rate with burst: the generic cell rate algorithm (GCRA), a token bucket kept as one number.
//!
//! The state is the theoretical arrival time (TAT): when the bucket would be full again.
//! A request of cost `n` is admitted when `max(tat, now) + n·T − now ≤ burst·T`, where `T` is
//! the emission interval (one request's worth of time). A fresh key (`tat ≤ now`) may send
//! `burst` back to back, then one per `T`.

use std::num::NonZeroU32;
use std::time::Duration;

use super::clock::{Interval, Nanos, nanos, to_micros};
use super::decision::Figures;

/// A sustained rate: `count` requests per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    count: NonZeroU32,
    per: Duration,
}

impl Rate {
    /// `count` requests per `per`; `None` for an empty period.
    pub fn new(count: NonZeroU32, per: Duration) -> Option<Rate> {
        (!per.is_zero()).then_some(Rate { count, per })
    }

    /// `count` requests per second.
    pub fn per_second(count: NonZeroU32) -> Rate {
        Rate {
            count,
            per: Duration::from_secs(1),
        }
    }

    /// `count` requests per minute.
    pub fn per_minute(count: NonZeroU32) -> Rate {
        Rate {
            count,
            per: Duration::from_secs(60),
        }
    }

    /// `count` requests per hour.
    pub fn per_hour(count: NonZeroU32) -> Rate {
        Rate {
            count,
            per: Duration::from_secs(3_600),
        }
    }
}

/// A validated rate-and-burst limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// `T`: time one request is worth, rounded up (to whole microseconds, the resolution of a
    /// shared store's clock) so the rate is never exceeded.
    emission: Interval,
    burst: u32,
    /// `burst · T`: how far ahead of now the TAT may run.
    capacity: Nanos,
    /// `burst · per / count` exactly, rounded up only at the end: the header's `w`. `capacity`
    /// can be a few nanoseconds more (`T` is rounded up), which would round `3/s` with a burst
    /// of 3 up to a window of 2 s.
    window: Nanos,
}

/// The longest a bucket may take to refill (about 73 years), so times never overflow.
const MAX_CAPACITY: Nanos = 1 << 61;

impl Gcra {
    /// `rate` sustained with bursts of `burst`; `None` if the refill time is absurdly long.
    pub fn new(rate: Rate, burst: NonZeroU32) -> Option<Gcra> {
        let emission = to_micros(nanos(rate.per).div_ceil(u64::from(rate.count.get())));
        let capacity = emission.checked_mul(u64::from(burst.get()))?;
        let exact = u128::from(nanos(rate.per)) * u128::from(burst.get());
        let window = exact.div_ceil(u128::from(rate.count.get())) as Nanos; // ≤ capacity
        (capacity <= MAX_CAPACITY).then_some(Gcra {
            emission: Interval::new(emission),
            burst: burst.get(),
            capacity,
            window,
        })
    }

    /// Requests a fresh key may send back to back.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// The emission interval `T` (one request per `T` sustained).
    pub fn emission(&self) -> Duration {
        Duration::from_nanos(self.emission.nanos())
    }

    /// `T` in nanoseconds.
    pub(crate) fn emission_nanos(&self) -> Nanos {
        self.emission.nanos()
    }

    /// `burst · T`: the time a fresh bucket holds.
    pub(crate) fn capacity(&self) -> Nanos {
        self.capacity
    }

    /// The time the burst is worth at the configured rate: the header's `w`.
    pub(crate) fn window(&self) -> Nanos {
        self.window
    }

    /// The state once `cost` (≤ burst) is taken at `now` from state `tat`, if it fits.
    #[inline]
    pub(crate) fn admit(&self, tat: Nanos, now: Nanos, cost: u32) -> Option<Nanos> {
        let next = self.taken(tat, now, cost);
        (next <= now.saturating_add(self.capacity)).then_some(next)
    }

    /// The exact wait before `cost` fits state `tat` at `now`: zero if it fits now.
    pub(crate) fn wait(&self, tat: Nanos, now: Nanos, cost: u32) -> Nanos {
        let next = self.taken(tat, now, cost);
        next.saturating_sub(now.saturating_add(self.capacity))
    }

    /// The TAT with `cost` taken, whether or not that fits.
    #[inline]
    fn taken(&self, tat: Nanos, now: Nanos, cost: u32) -> Nanos {
        debug_assert!(cost <= self.burst);
        tat.max(now) + u64::from(cost) * self.emission.nanos()
    }

    /// The header figures for state `tat` at `now`.
    #[inline]
    pub(crate) fn figures(&self, tat: Nanos, now: Nanos) -> Figures {
        let used = tat.saturating_sub(now).min(self.capacity);
        Figures {
            // At most `burst`, so the cast is lossless.
            remaining: self.emission.count_in(self.capacity - used) as u32,
            // Measured against `window`, like `w`: `T`'s rounding (at most `burst` ns) would
            // make a whole bucket's `t` a second more than its `w`.
            reset: used.saturating_sub(self.capacity - self.window),
        }
    }

    /// State `tat` of limit `from`, carried over to this limit: the same share of the bucket
    /// stays spent (half the burst used stays half used).
    pub(crate) fn carried(&self, from: &Gcra, tat: Nanos, now: Nanos) -> Nanos {
        let used = u128::from(tat.saturating_sub(now).min(from.capacity));
        let share = used * u128::from(self.capacity) / u128::from(from.capacity.max(1));
        now + share as Nanos
    }

    /// Whether `tat` is indistinguishable from a key never seen.
    pub(crate) fn is_fresh(&self, tat: Nanos, now: Nanos) -> bool {
        tat <= now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Nanos = 1_000_000_000;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    fn default_rate() -> Gcra {
        Gcra::new(Rate::per_second(nz(1)), nz(100)).unwrap()
    }

    /// Sends `cost` at `now`, keeping the state when admitted; a refusal says how long to
    /// wait.
    fn send(gcra: &Gcra, tat: &mut Nanos, now: Nanos, cost: u32) -> Result<(), Nanos> {
        let wait = gcra.wait(*tat, now, cost);
        match gcra.admit(*tat, now, cost) {
            Some(next) if wait == 0 => {
                *tat = next;
                Ok(())
            }
            None if wait > 0 => Err(wait),
            verdict => panic!("admitted {verdict:?} but a wait of {wait}"),
        }
    }

    #[test]
    fn fresh_key_gets_its_burst_then_the_rate() {
        let gcra = default_rate();
        let (mut tat, now) = (0, 10 * SEC);
        for _ in 0..100 {
            assert!(send(&gcra, &mut tat, now, 1).is_ok());
        }
        let refused = send(&gcra, &mut tat, now, 1);
        assert!(refused.is_err());
        assert_eq!(refused.unwrap_err(), SEC);
        assert!(send(&gcra, &mut tat, now + SEC - 1, 1).is_err());
        assert!(send(&gcra, &mut tat, now + SEC, 1).is_ok());
        assert!(send(&gcra, &mut tat, now + SEC, 1).is_err());
    }

    #[test]
    fn cost_takes_that_many_tokens() {
        let gcra = default_rate();
        let mut tat = 0;
        assert!(send(&gcra, &mut tat, 0, 60).is_ok());
        let refused = send(&gcra, &mut tat, 0, 41);
        assert_eq!(refused.unwrap_err(), SEC);
        assert!(send(&gcra, &mut tat, SEC, 41).is_ok());
    }

    #[test]
    fn the_window_is_exact_where_the_emission_interval_is_rounded() {
        let three = NonZeroU32::new(3).unwrap();
        let gcra = Gcra::new(Rate::per_second(three), three).unwrap();
        assert_eq!(
            gcra.window(),
            SEC,
            "3/s with a burst of 3 is worth one second"
        );
        assert!(
            gcra.capacity() > SEC,
            "T is rounded up, so the rate is never exceeded"
        );
        let mut tat = 0;
        send(&gcra, &mut tat, 0, 3).unwrap();
        assert_eq!(
            gcra.figures(tat, 0).reset,
            SEC,
            "t matches w for a whole bucket"
        );
    }

    #[test]
    fn figures_count_down_and_refill() {
        let gcra = default_rate();
        let fresh = gcra.figures(0, 5 * SEC);
        assert_eq!(
            fresh,
            Figures {
                remaining: 100,
                reset: 0
            }
        );
        assert_eq!(gcra.capacity(), 100 * SEC);
        assert_eq!(gcra.window(), 100 * SEC);
        let mut tat = 0;
        for _ in 0..2 {
            send(&gcra, &mut tat, 5 * SEC, 1).unwrap();
        }
        assert_eq!(
            gcra.figures(tat, 5 * SEC),
            Figures {
                remaining: 98,
                reset: 2 * SEC
            }
        );
        send(&gcra, &mut tat, 5 * SEC, 1).unwrap();
        assert_eq!(
            gcra.figures(tat, 5 * SEC),
            Figures {
                remaining: 97,
                reset: 3 * SEC
            }
        );
        assert!(!gcra.is_fresh(tat, 7 * SEC));
        assert!(gcra.is_fresh(tat, 8 * SEC));
    }

    #[test]
    fn emission_rounds_up_so_the_rate_is_never_exceeded() {
        let gcra = Gcra::new(Rate::per_second(nz(3)), nz(1)).unwrap();
        assert_eq!(gcra.emission(), Duration::from_nanos(333_334_000));
        let per_hour = Gcra::new(Rate::per_hour(nz(2)), nz(5)).unwrap();
        assert_eq!(per_hour.emission(), Duration::from_secs(1_800));
        assert!(Rate::new(nz(1), Duration::ZERO).is_none());
        let absurd = Rate::new(nz(1), Duration::from_secs(u64::MAX / 4)).unwrap();
        assert!(Gcra::new(absurd, nz(u32::MAX)).is_none());
    }
}
