//! What a check answers: admitted or not, and per limit what the rate-limit headers say.
//!
//! Everything here is `Copy` and fixed-size, so deciding and reporting on a policy (at most
//! [`MAX_LIMITS`] limits) never allocates.

use std::ops::Deref;
use std::time::Duration;

use super::clock::Nanos;

/// The most limits a policy may have: one state word each, two words per key.
pub const MAX_LIMITS: usize = 2;

/// Which algorithm a limit uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// Rate with burst (GCRA, a token bucket).
    Rate,
    /// At most N requests in any rolling window.
    Window,
}

/// One limit's state after a check, as draft-ietf-httpapi-ratelimit-headers-11 needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitReport {
    /// The limit's algorithm.
    pub kind: LimitKind,
    /// `q`: requests the limit allows in `window`.
    pub quota: u32,
    /// `r`: requests left now, after this check.
    pub remaining: u32,
    /// Whether this limit refused the request (for `violated-policies`).
    pub refused: bool,
    /// `w` in nanoseconds.
    pub(crate) window: Nanos,
    /// `t` in nanoseconds.
    pub(crate) reset: Nanos,
}

impl LimitReport {
    const EMPTY: LimitReport = LimitReport {
        kind: LimitKind::Rate,
        quota: 0,
        remaining: 0,
        refused: false,
        window: 0,
        reset: 0,
    };

    /// `w`: the window the quota applies to (for a rate, burst × emission interval).
    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.window)
    }

    /// `t`: time until the whole quota is back.
    pub fn reset(&self) -> Duration {
        Duration::from_nanos(self.reset)
    }

    /// `w` in whole seconds, rounded up.
    pub fn window_secs(&self) -> u64 {
        self.window.div_ceil(NANOS_PER_SEC)
    }

    /// `t` in whole seconds, rounded up so the quota is surely back by then.
    pub fn reset_secs(&self) -> u64 {
        self.reset.div_ceil(NANOS_PER_SEC)
    }
}

/// What the headers say of one limit for a key's state: `r` and `t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Figures {
    pub(crate) remaining: u32,
    pub(crate) reset: Nanos,
}

/// The per-limit reports of one check, in the policy's order; inline, no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    len: u8,
    items: [LimitReport; MAX_LIMITS],
}

impl Report {
    pub(crate) const fn new() -> Self {
        Report {
            len: 0,
            items: [LimitReport::EMPTY; MAX_LIMITS],
        }
    }

    /// Appends a limit's report; the policy guarantees at most [`MAX_LIMITS`].
    pub(crate) fn push(&mut self, item: LimitReport) {
        self.items[usize::from(self.len)] = item;
        self.len += 1;
    }

    /// The reports, to fill in.
    pub(crate) fn items_mut(&mut self) -> &mut [LimitReport] {
        &mut self.items[..usize::from(self.len)]
    }
}

impl Deref for Report {
    type Target = [LimitReport];

    fn deref(&self) -> &[LimitReport] {
        &self.items[..usize::from(self.len)]
    }
}

/// A key's state under a policy: one word per limit; all zeros is a fresh key.
pub type State = [u64; MAX_LIMITS];

/// The answer to a check: admitted or not, and the key's state after it (as it was, if
/// refused). A check works out only the verdict, stopping at the first limit that refuses;
/// the wait, which limits refused and the header figures all follow from the state, and are
/// derived only when asked for, from the policy that decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    state: State,
    now: Nanos,
    cost: u32,
    allowed: bool,
}

impl Decision {
    pub(crate) fn new(state: State, now: Nanos, cost: u32, allowed: bool) -> Decision {
        Decision {
            state,
            now,
            cost,
            allowed,
        }
    }

    /// The time the decision was made at.
    pub(crate) fn now(&self) -> Nanos {
        self.now
    }

    /// Whether the request was admitted: its cost has been taken from every limit (else
    /// nothing was taken from any).
    pub fn is_allowed(&self) -> bool {
        self.allowed
    }

    /// For a refusal, the exact wait and the limits that refused. `policy` is the one that
    /// decided.
    pub fn refusal(&self, policy: &impl Decider) -> Option<Refusal> {
        if self.allowed {
            return None;
        }
        let waits = policy.waits(&self.state, self.now, self.cost);
        let refusing = waits.iter().enumerate().filter(|&(_, &wait)| wait > 0);
        Some(Refusal {
            retry_after: Duration::from_nanos(waits.into_iter().max().unwrap_or(0)),
            limits: refusing.fold(0, |set, (i, _)| set | 1 << i),
        })
    }

    /// For a refusal, the exact wait after which the same request is admitted (if nothing
    /// else is spent meanwhile); never early.
    pub fn retry_after(&self, policy: &impl Decider) -> Option<Duration> {
        self.refusal(policy).map(|refusal| refusal.retry_after)
    }

    /// Per limit of `policy` (the one that decided), in its order: what the headers say, and
    /// whether it refused.
    pub fn limits(&self, policy: &impl Decider) -> Report {
        policy.report(&self.state, self.now, self.cost, !self.allowed)
    }
}

/// The policy that made a decision, as far as the decision needs it to explain itself: only
/// the policy knows its limits' arithmetic. `Policy` is the one implementation; the trait is
/// not exported from `limiter`, so no other crate can implement or call it.
pub trait Decider {
    /// Per limit, for a key in `state` at `now`: the exact wait before a request of `cost`
    /// fits (zero if it fits now).
    fn waits(&self, state: &State, now: Nanos, cost: u32) -> [Nanos; MAX_LIMITS];

    /// What the headers say of each limit for a key in `state` at `now` (after a check); if
    /// the request of `cost` was refused, the limits that refuse it are marked.
    fn report(&self, state: &State, now: Nanos, cost: u32, refused: bool) -> Report;
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refusal {
    /// The exact wait after which the same request is admitted (if nothing else is spent
    /// meanwhile); never early.
    pub retry_after: Duration,
    /// The limits that refused: bit `i` for limit `i` of the policy.
    pub limits: usize,
}

impl Refusal {
    /// `Retry-After` in whole seconds, rounded up so a client is never early.
    pub fn retry_after_secs(&self) -> u64 {
        ceil_secs(self.retry_after)
    }
}

impl Report {
    /// The set of limits that refused: bit `i` for limit `i`.
    pub fn refused_set(&self) -> usize {
        self.violated().fold(0, |set, (i, _)| set | 1 << i)
    }

    /// Indexes (in the policy's order) and reports of the limits that refused.
    pub fn violated(&self) -> impl Iterator<Item = (usize, &LimitReport)> {
        self.iter().enumerate().filter(|(_, l)| l.refused)
    }

    /// The limit with the least left (then the longest reset), for `X-RateLimit-*`.
    pub fn tightest(&self) -> &LimitReport {
        self.iter()
            .min_by_key(|l| (l.remaining, std::cmp::Reverse(l.reset)))
            .unwrap_or(&self.items[0])
    }
}

const NANOS_PER_SEC: Nanos = 1_000_000_000;

/// Whole seconds, rounded up.
pub fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(kind: LimitKind, remaining: u32, reset: u64, refused: bool) -> LimitReport {
        LimitReport {
            kind,
            quota: 100,
            remaining,
            refused,
            window: 60 * NANOS_PER_SEC,
            reset: reset * 1_000_000,
        }
    }

    #[test]
    fn seconds_round_up_never_down() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_nanos(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(3)), 3);
        assert_eq!(ceil_secs(Duration::new(3, 1)), 4);
    }

    #[test]
    fn a_report_names_the_refusing_limits_and_the_tightest() {
        let mut limits = Report::new();
        limits.push(report(LimitKind::Window, 0, 60_000, true));
        limits.push(report(LimitKind::Rate, 3, 97_000, false));
        let violated: Vec<usize> = limits.violated().map(|(i, _)| i).collect();
        assert_eq!(violated, [0]);
        assert_eq!(limits.refused_set(), 0b01);
        assert_eq!(limits.tightest().kind, LimitKind::Window);
    }

    #[test]
    fn a_decision_is_small_and_copy() {
        // The state and three numbers: a check returns four words.
        assert!(std::mem::size_of::<Decision>() <= 32);
    }
}
