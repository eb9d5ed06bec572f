//! Where per-key state lives: the [`Store`] trait the request pipeline calls.
//!
//! A check returns [`Checked`], a future the async caller awaits. The in-memory store answers
//! on the spot with [`Checked::Ready`] (no boxing, no allocation, no suspension); a store that
//! must ask a server (Redis, shared by replicas) returns [`Checked::Pending`]. The trait is
//! object safe, so the server can hold an `Arc<dyn Store>` chosen at start-up.

use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::decision::Decision;
use super::policy::{InsufficientCapacity, Policy};

/// Why a check has no decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request costs more than the policy's smallest quota, so it can never be admitted.
    #[error(transparent)]
    InsufficientCapacity(#[from] InsufficientCapacity),
    /// The shared store did not answer in time and no local decision stands in for it
    /// (`on_error = "allow"` or `"deny"`: the caller chooses).
    #[error("the shared limiter store is unreachable")]
    Unavailable,
}

/// How a store is doing, for `/readyz` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    /// `memory` or `redis`.
    pub kind: &'static str,
    /// Whether the store answers now (always, for the in-memory store).
    pub up: bool,
    /// Calls to a remote store by result: answered, failed, timed out.
    pub calls: [u64; 3],
    /// Call latency: per bucket of [`CALL_BUCKETS`] (not cumulative), then the sum in
    /// microseconds.
    pub latency: [u64; CALL_BUCKETS.len() + 1],
    /// Times the store became unreachable (each episode once).
    pub fallbacks: u64,
    /// Checks decided without it while it was unreachable.
    pub fallback_checks: u64,
    /// Checks answered on this replica without a call: a cached refusal, a leased token.
    pub local: [u64; 2],
}

/// Upper bounds of the store call latency buckets, in seconds.
pub const CALL_BUCKETS: [f64; 12] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];

/// What a check resolves to.
pub type Outcome = Result<Decision, Error>;

/// A check in progress: ready at once for local stores, pending for remote ones.
pub enum Checked<'a> {
    /// Decided already; `None` once taken by polling.
    Ready(Option<Outcome>),
    /// Waiting on a remote store.
    Pending(Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>),
}

impl Checked<'_> {
    /// A check that is already decided.
    pub fn ready(outcome: Outcome) -> Self {
        Checked::Ready(Some(outcome))
    }

    /// The outcome if it is known without waiting (always, for the in-memory store).
    pub fn now_or_never(self) -> Option<Outcome> {
        match self {
            Checked::Ready(outcome) => outcome,
            Checked::Pending(_) => None,
        }
    }
}

impl Future for Checked<'_> {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        match self.get_mut() {
            Checked::Ready(outcome) => {
                Poll::Ready(outcome.take().expect("polled after completion"))
            }
            Checked::Pending(future) => future.as_mut().poll(cx),
        }
    }
}

/// Per-key limiter state, checked and updated atomically per key.
pub trait Store: Send + Sync {
    /// Checks a request of `cost` by `key` (any bytes: credential, address, header) under
    /// `policy`, taking the cost from every limit if all admit it and from none otherwise.
    fn check<'a>(&'a self, policy: &'a Policy, key: &'a [u8], cost: NonZeroU32) -> Checked<'a>;

    /// What `check` would decide now, without taking anything (a guard that must refuse
    /// before it knows whether the request will count).
    fn peek<'a>(&'a self, policy: &'a Policy, key: &'a [u8], cost: NonZeroU32) -> Checked<'a>;

    /// Where `key` stands under `policy` now, as an admission that took nothing: what its
    /// rate-limit headers say on an answer that cost it nothing.
    fn standing<'a>(&'a self, policy: &'a Policy, key: &'a [u8]) -> Checked<'a>;

    /// How many keys hold state now (for metrics).
    fn tracked_keys(&self) -> usize;

    /// How the store is doing. The in-memory store is always up.
    fn health(&self) -> Health {
        Health {
            kind: "memory",
            up: true,
            ..Health::default()
        }
    }

    /// Drops state that a fresh key would have anyway; returns how many keys went. For stores
    /// that expire state by themselves, nothing to do.
    fn sweep(&self) -> usize {
        0
    }

    /// Carries every key's standing under policy `from` over to policy `to` (a changed policy
    /// on reload): each keeps the same share of each limit used. Returns how many keys moved.
    fn carry_over(&self, from: &Policy, to: &Policy) -> usize {
        let _ = (from, to);
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    #[test]
    fn a_ready_check_resolves_on_first_poll() {
        let policy = Policy::published_default();
        let mut state = Default::default();
        let decision = policy.decide(&mut state, 0, NonZeroU32::MIN).unwrap();
        let mut checked = Checked::ready(Ok(decision));
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(
            Pin::new(&mut checked).poll(&mut cx),
            Poll::Ready(Ok(decision))
        );
        assert_eq!(
            Checked::ready(Ok(decision)).now_or_never(),
            Some(Ok(decision))
        );
    }

    #[test]
    fn a_pending_check_is_awaited() {
        let policy = Policy::published_default();
        let decision = policy
            .decide(&mut Default::default(), 0, NonZeroU32::MIN)
            .unwrap();
        let pending = Checked::Pending(Box::pin(async move { Ok(decision) }));
        let mut cx = Context::from_waker(Waker::noop());
        let mut pending = pending;
        assert_eq!(
            Pin::new(&mut pending).poll(&mut cx),
            Poll::Ready(Ok(decision))
        );
        let again = Checked::Pending(Box::pin(async move { Ok(decision) }));
        assert_eq!(again.now_or_never(), None);
    }
}
