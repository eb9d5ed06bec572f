//! A policy: a name and the limits a request must all pass, checked together per key.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::clock::Nanos;
use super::decision::{
    Decider, Decision, Figures, LimitKind, LimitReport, MAX_LIMITS, Report, State,
};
use super::gcra::{Gcra, Rate};
use super::name::PolicyName;
use super::window::Window;

/// One limit of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Rate with burst.
    Rate(Gcra),
    /// Rolling window.
    Window(Window),
}

impl Limit {
    /// The limit's algorithm.
    pub fn kind(&self) -> LimitKind {
        match self {
            Limit::Rate(_) => LimitKind::Rate,
            Limit::Window(_) => LimitKind::Window,
        }
    }

    /// The largest cost this limit can ever admit at once.
    pub fn capacity(&self) -> u32 {
        match self {
            Limit::Rate(gcra) => gcra.burst(),
            Limit::Window(window) => window.max(),
        }
    }

    /// `q` and `w` (whole seconds, rounded up) of the limit's `RateLimit-Policy` item.
    pub fn quota_and_window_secs(&self) -> (u32, u64) {
        let window = match self {
            Limit::Rate(gcra) => gcra.window(),
            Limit::Window(window) => window.length_nanos(),
        };
        (self.capacity(), window.div_ceil(1_000_000_000))
    }

    /// The limit's state once `cost` is taken at `at` (limit `i` of its policy), if it fits.
    #[inline]
    fn admit(&self, word: u64, at: &At, i: usize, cost: u32) -> Option<u64> {
        match self {
            Limit::Rate(gcra) => gcra.admit(word, at.now, cost),
            Limit::Window(window) => window.admit(word, at.slots[i], cost),
        }
    }

    /// What the limit works out from the time alone.
    #[inline]
    fn slot_of(&self, now: Nanos) -> u64 {
        match self {
            Limit::Rate(_) => 0,
            Limit::Window(window) => window.slot_of(now),
        }
    }

    fn wait(&self, word: u64, now: Nanos, cost: u32) -> Nanos {
        match self {
            Limit::Rate(gcra) => gcra.wait(word, now, cost),
            Limit::Window(window) => window.wait(word, now, cost),
        }
    }

    #[inline]
    fn figures(&self, word: u64, now: Nanos) -> Figures {
        match self {
            Limit::Rate(gcra) => gcra.figures(word, now),
            Limit::Window(window) => window.figures(word, now),
        }
    }

    /// The report's fixed part: what the limit is, not how much is left.
    fn blank_report(&self) -> LimitReport {
        let window = match self {
            Limit::Rate(gcra) => gcra.window(),
            Limit::Window(window) => window.length_nanos(),
        };
        LimitReport {
            kind: self.kind(),
            quota: self.capacity(),
            remaining: 0,
            refused: false,
            window,
            reset: 0,
        }
    }

    fn is_fresh(&self, word: u64, now: Nanos) -> bool {
        match self {
            Limit::Rate(gcra) => gcra.is_fresh(word, now),
            Limit::Window(window) => window.is_fresh(word, now),
        }
    }
}

/// The time of a check, with what each limit of its policy works out from the time alone (a
/// window's slot). Made before the key's state is read, so the map's shared lock is held for
/// as little as possible.
#[derive(Debug, Clone, Copy)]
pub(crate) struct At {
    now: Nanos,
    slots: [u64; MAX_LIMITS],
}

/// A request costing more than a limit's whole quota: it can never be admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a request costing {cost} can never fit a quota of {capacity}")]
pub struct InsufficientCapacity {
    /// What the request asked for.
    pub cost: u32,
    /// The most the policy admits at once (its smallest quota).
    pub capacity: u32,
}

/// Distinguishes policies, so one key under two policies never shares state.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A validated policy: a name and one or two limits. Clones share the identity.
#[derive(Debug, Clone)]
pub struct Policy {
    id: u64,
    /// Names the policy's state in a shared store: the same on every replica and across
    /// reloads for the same name and limits.
    fingerprint: u64,
    name: PolicyName,
    len: usize,
    limits: [Limit; MAX_LIMITS],
    /// The smallest quota.
    capacity: u32,
    /// The reports with every limit's fixed part filled in, copied for each report.
    blank: Report,
}

impl Policy {
    /// A policy named `name` (a [`PolicyName`], or a `&str` that is one) of `limits` (one or
    /// two, in header order); `None` otherwise.
    pub fn new(name: impl TryInto<PolicyName>, limits: &[Limit]) -> Option<Policy> {
        let name = name.try_into().ok()?;
        let first = *limits.first()?;
        if limits.len() > MAX_LIMITS {
            return None;
        }
        let mut all = [first; MAX_LIMITS];
        all[..limits.len()].copy_from_slice(limits);
        let mut blank = Report::new();
        limits
            .iter()
            .for_each(|limit| blank.push(limit.blank_report()));
        Some(Policy {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            fingerprint: fingerprint(name.as_str(), limits),
            name,
            len: limits.len(),
            limits: all,
            capacity: limits.iter().map(Limit::capacity).min().unwrap_or(0),
            blank,
        })
    }

    /// The published rule: 1 request/s sustained, bursts of 100, at most 100 in any 60 s.
    pub fn published_default() -> Policy {
        let hundred = NonZeroU32::new(100).expect("100 is not zero");
        let rate = Gcra::new(Rate::per_second(NonZeroU32::MIN), hundred).expect("valid rate");
        let window = Window::new(Duration::from_secs(60), hundred).expect("valid window");
        Policy::new("default", &[Limit::Window(window), Limit::Rate(rate)]).expect("two limits")
    }

    /// The policy's name, as configured.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    /// The policy's name, as the rate-limit headers write it.
    pub fn policy_name(&self) -> &PolicyName {
        &self.name
    }

    /// A number unique to this policy (and its clones) within the process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// A hash of the name and the limits, stable across processes and versions of the same
    /// state layout: what a shared store names the policy's keys by.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The limits, in the order given.
    pub fn limits(&self) -> &[Limit] {
        &self.limits[..self.len]
    }

    /// The largest cost a single request may have: the smallest quota.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Checks a request of `cost` at `now` against a key's `state`, taking the cost from every
    /// limit if all admit it and from none otherwise.
    #[inline(always)]
    pub fn decide(
        &self,
        state: &mut State,
        now: Nanos,
        cost: NonZeroU32,
    ) -> Result<Decision, InsufficientCapacity> {
        self.decide_at(state, &self.at(now), cost)
    }

    /// `now`, with what each limit works out from it alone.
    #[inline(always)]
    pub(crate) fn at(&self, now: Nanos) -> At {
        let mut slots = [0; MAX_LIMITS];
        for (slot, limit) in slots.iter_mut().zip(self.limits()) {
            *slot = limit.slot_of(now);
        }
        At { now, slots }
    }

    /// [`Policy::decide`] at a time made by [`Policy::at`] of this policy.
    #[inline(always)]
    pub(crate) fn decide_at(
        &self,
        state: &mut State,
        at: &At,
        cost: NonZeroU32,
    ) -> Result<Decision, InsufficientCapacity> {
        let (now, cost) = (at.now, cost.get());
        if cost > self.capacity {
            let capacity = self.capacity;
            return Err(InsufficientCapacity { cost, capacity });
        }
        // The first refusal decides; which limits refused, and for how long, is worked out
        // only if asked (`Decision::retry_after`, `Decision::limits`). Written out rather
        // than looped, so a one-limit policy runs only its own limit's code.
        let refused = Decision::new(*state, now, cost, false);
        let Some(first) = self.limits[0].admit(state[0], at, 0, cost) else {
            return Ok(refused);
        };
        let second = match self.len {
            1 => state[1],
            _ => match self.limits[1].admit(state[1], at, 1, cost) {
                Some(second) => second,
                None => return Ok(refused),
            },
        };
        *state = [first, second];
        Ok(Decision::new(*state, now, cost, true))
    }

    /// A key's `state` under policy `from`, carried over to this policy: each limit takes the
    /// share used of the limit of the same kind in `from` (a kind `from` lacks starts fresh).
    pub fn carried(&self, from: &Policy, state: &State, now: Nanos) -> State {
        let mut next = State::default();
        for (word, limit) in next.iter_mut().zip(self.limits()) {
            let old = from
                .limits()
                .iter()
                .zip(state)
                .find(|(l, _)| l.kind() == limit.kind());
            *word = match (limit, old) {
                (Limit::Rate(new), Some((Limit::Rate(old), &w))) => new.carried(old, w, now),
                (Limit::Window(new), Some((Limit::Window(old), &w))) => new.carried(old, w, now),
                _ => 0,
            };
        }
        next
    }

    /// Whether `state` is the same as a fresh key's at `now`, so dropping it loses nothing.
    pub fn is_fresh(&self, state: &State, now: Nanos) -> bool {
        let mut words = state.iter();
        self.limits()
            .iter()
            .zip(&mut words)
            .all(|(limit, word)| limit.is_fresh(*word, now))
    }
}

impl Decider for Policy {
    fn waits(&self, state: &State, now: Nanos, cost: u32) -> [Nanos; MAX_LIMITS] {
        let mut waits = [0; MAX_LIMITS];
        for ((limit, &word), wait) in self.limits().iter().zip(state).zip(&mut waits) {
            *wait = limit.wait(word, now, cost);
        }
        waits
    }

    fn report(&self, state: &State, now: Nanos, cost: u32, refused: bool) -> Report {
        let mut report = self.blank;
        // Only a refusal needs the limits' admission test, and so the time worked out for it.
        let (limits, at) = (
            self.limits().iter().zip(state),
            refused.then(|| self.at(now)),
        );
        for (i, (item, (limit, &word))) in report.items_mut().iter_mut().zip(limits).enumerate() {
            let Figures { remaining, reset } = limit.figures(word, now);
            let refuses = at.is_some_and(|at| limit.admit(word, &at, i, cost).is_none());
            (item.remaining, item.reset, item.refused) = (remaining, reset, refuses);
        }
        report
    }
}

/// SHA-256 over a layout tag, the name and each limit's figures, truncated to 64 bits.
fn fingerprint(name: &str, limits: &[Limit]) -> u64 {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(b"sluice-limits-v1\0");
    hash.update(name.as_bytes());
    for limit in limits {
        let (tag, a, b) = match limit {
            Limit::Rate(gcra) => (b'r', gcra.capacity(), u64::from(gcra.burst())),
            Limit::Window(window) => (b'w', window.length_nanos(), u64::from(window.max())),
        };
        hash.update([0, tag]);
        hash.update(a.to_be_bytes());
        hash.update(b.to_be_bytes());
    }
    let digest = hash.finalize();
    u64::from_be_bytes(
        digest[..8]
            .try_into()
            .expect("a SHA-256 digest has 32 bytes"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Nanos = 1_000_000_000;
    const ONE: NonZeroU32 = NonZeroU32::MIN;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn default_policy_admits_a_burst_of_100_then_refuses_the_101st() {
        let policy = Policy::published_default();
        let mut state = State::default();
        for i in 0..100 {
            let decision = policy.decide(&mut state, 0, ONE).unwrap();
            assert!(decision.is_allowed(), "request {i}");
            assert_eq!(decision.limits(&policy)[0].remaining, 99 - i);
        }
        let refused = policy.decide(&mut state, 0, ONE).unwrap();
        assert!(!refused.is_allowed());
        let report = refused.limits(&policy);
        let violated: Vec<LimitKind> = report.violated().map(|(_, l)| l.kind).collect();
        assert_eq!(violated, [LimitKind::Window, LimitKind::Rate]);
        // The window holds it longest: slot [0, 12 s) leaves at 72 s.
        assert_eq!(refused.retry_after(&policy), Some(Duration::from_secs(72)));
    }

    #[test]
    fn after_a_burst_one_per_second_waits_for_the_window() {
        let policy = Policy::published_default();
        let mut state = State::default();
        policy.decide(&mut state, 0, nz(100)).unwrap();
        for second in 1..72 {
            let decision = policy.decide(&mut state, second * SEC, ONE).unwrap();
            assert!(!decision.is_allowed(), "second {second}");
            assert_eq!(decision.limits(&policy).violated().count(), 1);
        }
        assert!(
            policy
                .decide(&mut state, 72 * SEC, ONE)
                .unwrap()
                .is_allowed()
        );
    }

    #[test]
    fn a_refusal_takes_nothing_from_any_limit() {
        let policy = Policy::published_default();
        let mut state = State::default();
        policy.decide(&mut state, 0, nz(99)).unwrap();
        let before = state;
        // At 5 s the rate has 6 left but the window only 1: the window alone refuses.
        let refused = policy.decide(&mut state, 5 * SEC, nz(2)).unwrap();
        assert!(!refused.is_allowed());
        assert_eq!(state, before);
        let rate = refused.limits(&policy)[1];
        assert_eq!((rate.remaining, rate.refused), (6, false));
        assert!(refused.limits(&policy)[0].refused);
        assert!(
            policy
                .decide(&mut state, 5 * SEC, ONE)
                .unwrap()
                .is_allowed()
        );
    }

    #[test]
    fn a_cost_over_the_smallest_quota_is_an_error() {
        let rate = Gcra::new(Rate::per_second(ONE), nz(10)).unwrap();
        let window = Window::new(Duration::from_secs(60), nz(20)).unwrap();
        let policy = Policy::new("p", &[Limit::Rate(rate), Limit::Window(window)]).unwrap();
        let err = policy.decide(&mut State::default(), 0, nz(11)).unwrap_err();
        assert_eq!(
            err,
            InsufficientCapacity {
                cost: 11,
                capacity: 10
            }
        );
    }

    #[test]
    fn a_policy_has_one_or_two_limits() {
        let rate = Limit::Rate(Gcra::new(Rate::per_minute(ONE), ONE).unwrap());
        assert!(Policy::new("none", &[]).is_none());
        assert!(Policy::new("three", &[rate, rate, rate]).is_none());
        let one = Policy::new("one", &[rate]).unwrap();
        assert_eq!((one.name(), one.limits().len()), ("one", 1));
        assert_eq!(one.id(), one.clone().id());
        assert_ne!(one.id(), Policy::new("one", &[rate]).unwrap().id());
        // Another process (or a reload) names the same policy the same in a shared store.
        let again = Policy::new("one", &[rate]).unwrap();
        assert_eq!(one.fingerprint(), again.fingerprint());
        assert_ne!(
            one.fingerprint(),
            Policy::new("two", &[rate]).unwrap().fingerprint()
        );
        let slower = Limit::Rate(Gcra::new(Rate::per_hour(ONE), ONE).unwrap());
        let other = Policy::new("one", &[slower]).unwrap();
        assert_ne!(one.fingerprint(), other.fingerprint());
    }

    #[test]
    fn a_policy_is_named_only_what_the_headers_can_carry() {
        let rate = Limit::Rate(Gcra::new(Rate::per_minute(ONE), ONE).unwrap());
        assert!(Policy::new("we\"ird", &[rate]).is_none());
        let name = PolicyName::new("gold").unwrap();
        let gold = Policy::new(name.clone(), &[rate]).unwrap();
        assert_eq!(gold.policy_name(), &name);
        assert_eq!(
            gold.fingerprint(),
            Policy::new("gold", &[rate]).unwrap().fingerprint()
        );
    }

    #[test]
    fn state_is_fresh_once_every_limit_has_refilled() {
        let policy = Policy::published_default();
        let mut state = State::default();
        assert!(policy.is_fresh(&state, 0));
        policy.decide(&mut state, 0, nz(10)).unwrap();
        assert!(!policy.is_fresh(&state, 71 * SEC));
        assert!(policy.is_fresh(&state, 72 * SEC));
    }

    /// Sends 10 requests a second for `seconds`; returns the admission times.
    fn flood(policy: &Policy, seconds: u64) -> Vec<Nanos> {
        let mut state = State::default();
        (0..seconds * 10)
            .map(|tick| tick * SEC / 10)
            .filter(|&now| policy.decide(&mut state, now, ONE).unwrap().is_allowed())
            .collect()
    }

    #[test]
    fn no_rolling_minute_ever_admits_more_than_100() {
        let admitted = flood(&Policy::published_default(), 3_600);
        for (i, &start) in admitted.iter().enumerate() {
            let in_window = admitted[i..].iter().take_while(|&&t| t < start + 60 * SEC);
            assert!(in_window.count() <= 100, "window from {start}");
        }
    }

    #[test]
    fn sustained_throughput_converges_to_one_per_second() {
        let admitted = flood(&Policy::published_default(), 3_600);
        let last_half_hour = admitted.iter().filter(|&&t| t >= 1_800 * SEC).count();
        assert!(
            (1_799..=1_801).contains(&last_half_hour),
            "{last_half_hour}"
        );
        assert!(admitted.len() <= 3_600 + 100);
    }
}
