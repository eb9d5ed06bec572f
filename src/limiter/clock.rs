//! Time for the limiter: nanoseconds since an origin, from an injected clock.
//!
//! The algorithms never read the time themselves; the store asks its [`Clock`] once per check,
//! so tests drive time by hand with [`ManualClock`] and stay exact and instant.
//!
//! The real clock, [`MonotonicClock`], reads the CPU's time-stamp counter through `quanta`
//! (about 8 ns, against about 30 for `Instant::now()`), scaled to nanoseconds by a calibration
//! made once per process; where the counter is not invariant, `quanta` falls back to the OS's
//! monotonic clock. Either way each thread sees time go forward; two threads may read it a few
//! nanoseconds apart and update the key in the other order, which the algorithms tolerate
//! (a reading older than the key's state is treated as no earlier than that state).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A point in time: nanoseconds since the clock's origin (584 years of range).
pub type Nanos = u64;

/// Converts a duration to [`Nanos`], saturating at the far future.
pub(crate) fn nanos(duration: Duration) -> Nanos {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// `nanos` rounded up to whole microseconds: the limits' own spans are, so that a store whose
/// clock counts microseconds (Redis's `TIME`) works them out exactly as the in-memory one does.
pub(crate) fn to_micros(nanos: Nanos) -> Nanos {
    nanos.div_ceil(1_000).saturating_mul(1_000)
}

/// A fixed span of time that other spans are divided by on every check, by multiplication
/// (Granlund–Montgomery): exact for every dividend below 2⁶³ ns (292 years).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Interval {
    nanos: Nanos,
    magic: u128,
    shift: u32,
}

impl Interval {
    /// `nanos` must not be zero.
    pub(crate) fn new(nanos: Nanos) -> Interval {
        assert!(nanos > 0, "an interval cannot be empty");
        // ℓ = ⌈log₂ nanos⌉; magic = ⌈2^(63+ℓ) / nanos⌉, at most 2⁶⁴.
        let ceil_log2 = u64::BITS - (nanos - 1).leading_zeros();
        let shift = 63 + ceil_log2;
        let magic = (1u128 << shift).div_ceil(u128::from(nanos));
        Interval {
            nanos,
            magic,
            shift,
        }
    }

    pub(crate) fn nanos(&self) -> Nanos {
        self.nanos
    }

    /// `⌊span / self⌋`, for `span < 2⁶³`.
    pub(crate) fn count_in(&self, span: Nanos) -> u64 {
        debug_assert!(span < 1 << 63);
        ((u128::from(span) * self.magic) >> self.shift) as u64
    }
}

/// A source of monotonic time.
pub trait Clock: Send + Sync {
    /// The current time; never goes backwards.
    fn now(&self) -> Nanos;
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Nanos {
        (**self).now()
    }
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now(&self) -> Nanos {
        (**self).now()
    }
}

/// The real clock: time since the clock was made, from the CPU's invariant time-stamp counter
/// (or the OS's monotonic clock), so wall-clock jumps do not matter.
#[derive(Debug, Clone)]
pub struct MonotonicClock {
    source: quanta::Clock,
    origin: u64,
}

impl MonotonicClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        let source = quanta::Clock::new();
        let origin = source.raw();
        MonotonicClock { source, origin }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock::new()
    }
}

impl Clock for MonotonicClock {
    #[inline]
    fn now(&self) -> Nanos {
        self.source.delta_as_nanos(self.origin, self.source.raw())
    }
}

/// A clock that moves only when told to; for tests.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicU64,
}

impl ManualClock {
    /// A clock reading `start`.
    pub fn new(start: Nanos) -> Self {
        ManualClock {
            now: AtomicU64::new(start),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(nanos(by), Ordering::SeqCst);
    }

    /// Moves the clock forward by `by` nanoseconds.
    pub fn advance_nanos(&self, by: Nanos) {
        self.now.fetch_add(by, Ordering::SeqCst);
    }

    /// Sets the clock to `to`; the caller keeps it monotonic.
    pub fn set(&self, to: Nanos) {
        self.now.store(to, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Nanos {
        self.now.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(5);
        assert_eq!(clock.now(), 5);
        clock.advance(Duration::from_micros(1));
        assert_eq!(clock.now(), 1_005);
        clock.advance_nanos(2);
        clock.set(clock.now() + 1);
        assert_eq!(clock.now(), 1_008);
    }

    #[test]
    fn interval_division_is_exact_at_the_edges() {
        for d in [
            1,
            2,
            3,
            7,
            1_000_000_000,
            333_333_334,
            (1 << 61) + 1,
            (1 << 63) - 1,
        ] {
            let interval = Interval::new(d);
            let near = [
                0,
                1,
                d - 1,
                d,
                d + 1,
                d.saturating_mul(3) - 1,
                (1 << 63) - 1,
            ];
            for x in near.into_iter().filter(|&x| x < 1 << 63) {
                assert_eq!(interval.count_in(x), x / d, "{x} / {d}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn interval_division_matches_hardware_division(d in 1..u64::MAX >> 1, x in 0..u64::MAX >> 1) {
            proptest::prop_assert_eq!(Interval::new(d).count_in(x), x / d);
        }

        #[test]
        fn interval_division_matches_for_small_divisors(d in 1..100_000_000_000u64, x in 0..u64::MAX >> 1) {
            proptest::prop_assert_eq!(Interval::new(d).count_in(x), x / d);
        }
    }

    #[test]
    fn monotonic_clock_never_goes_backwards() {
        let clock = MonotonicClock::new();
        let a = clock.now();
        std::thread::sleep(Duration::from_millis(2));
        let b = clock.now();
        assert!(b >= a + 1_000_000, "{a} then {b}");
    }
}
