//! What a replica keeps of the shared state between calls, so that most checks need no round
//! trip:
//!
//! - **Refusals.** A key's state in the store only moves forward (more used, never less), so
//!   a refusal worked out from a state seen earlier still holds now. Until the limiter would
//!   admit on that state, a client hammering while refused is refused here.
//! - **Leases** (`sync = "lease"`): tokens taken from the store at once, spent here, and
//!   dropped unspent after `lease_ttl`. One request per key asks for a lease at a time; others
//!   that find none ask for just their own cost, so a replica never holds more than `lease`
//!   unspent tokens of a key.
//!
//! Pure: the time is passed in (this replica's clock; the store's time is worked out from
//! when its reply was seen).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use super::script::{Reply, Take};
use crate::limiter::clock::{Nanos, nanos};
use crate::limiter::decision::{Decision, State};
use crate::limiter::memory::Mix;
use crate::limiter::policy::Policy;

/// A key under a policy: the policy's fingerprint and a keyed hash of the client key.
pub(super) type Id = (u64, u64);

/// What is held for one key.
#[derive(Debug, Clone, Copy)]
enum Held {
    /// The store refused, seeing `state` at its time `at` (this replica's `seen`). Kept until
    /// `until`, when the wait of the refused request is over.
    Refused {
        state: State,
        at: Nanos,
        seen: Nanos,
        until: Nanos,
    },
    /// `left` tokens leased, spendable until `expires`; `state` is the store's after the
    /// lease. `asking`: a request for the next lease is on its way.
    Lease {
        left: u32,
        state: State,
        at: Nanos,
        seen: Nanos,
        expires: Nanos,
        asking: bool,
    },
}

/// What to do with a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Found {
    /// Decided here, without the store.
    Decided(Decision),
    /// Ask the store for this.
    Ask(Take),
}

/// The refusals and leases of one replica.
#[derive(Debug)]
pub(super) struct Local {
    held: DashMap<Id, Held, BuildHasherDefault<Mix>>,
    /// Entries held; beyond `cap`, nothing new is kept (checks ask the store instead).
    count: AtomicUsize,
    cap: usize,
    /// Hashes client keys for `Id`s; this process's own secret.
    secret: RandomState,
    /// `lease` and `lease_ttl` in lease mode.
    lease: Option<(NonZeroU32, Nanos)>,
}

impl Local {
    pub fn new(cap: usize, lease: Option<(NonZeroU32, std::time::Duration)>) -> Local {
        Local {
            held: DashMap::default(),
            count: AtomicUsize::new(0),
            cap,
            secret: RandomState::new(),
            lease: lease.map(|(n, ttl)| (n, nanos(ttl))),
        }
    }

    pub fn id(&self, policy: &Policy, key: &[u8]) -> Id {
        let mut hasher = self.secret.build_hasher();
        hasher.write(key);
        (policy.fingerprint(), hasher.finish())
    }

    /// Answers a check of `cost` from what is held, or says what to ask the store for.
    pub fn check(&self, id: Id, policy: &Policy, cost: NonZeroU32, now: Nanos) -> Found {
        if let Some(mut held) = self.held.get_mut(&id) {
            if let Some(found) = self.answer_held(&mut held, policy, cost, now) {
                return found;
            }
            // A refusal whose wait is over here: the store decides again.
            drop(held);
            self.remove(id);
        }
        let Some((lease, _)) = self.lease else {
            return Found::Ask(Take::exactly(cost.get()));
        };
        if self.count.load(Ordering::Relaxed) < self.cap
            && let Entry::Vacant(vacant) = self.held.entry(id)
        {
            vacant.insert(lease_entry(0, State::default(), 0, now, now, true));
            self.count.fetch_add(1, Ordering::Relaxed);
            return Found::Ask(lease_of(lease, cost));
        }
        Found::Ask(Take::exactly(cost.get()))
    }

    /// The answer from `held`; `None` for a refusal that no longer holds.
    fn answer_held(
        &self,
        held: &mut Held,
        policy: &Policy,
        cost: NonZeroU32,
        now: Nanos,
    ) -> Option<Found> {
        match held {
            Held::Refused {
                state, at, seen, ..
            } => {
                let mut state = *state;
                let at = *at + now.saturating_sub(*seen);
                let decision = policy.decide(&mut state, at, cost).ok()?;
                (!decision.is_allowed()).then_some(Found::Decided(decision))
            }
            Held::Lease {
                left,
                state,
                at,
                seen,
                expires,
                asking,
            } => {
                if now < *expires && *left >= cost.get() {
                    *left -= cost.get();
                    let at = *at + now.saturating_sub(*seen);
                    return Some(Found::Decided(Decision::new(*state, at, cost.get(), true)));
                }
                Some(match (self.lease, *asking) {
                    (Some((lease, _)), false) => {
                        *asking = true;
                        Found::Ask(lease_of(lease, cost))
                    }
                    _ => Found::Ask(Take::exactly(cost.get())),
                })
            }
        }
    }

    /// Where a refusal held for `id` stands now: a peek (which takes nothing) answered here.
    pub fn refused(
        &self,
        id: Id,
        policy: &Policy,
        cost: NonZeroU32,
        now: Nanos,
    ) -> Option<Decision> {
        let held = self.held.get(&id)?;
        let Held::Refused {
            state, at, seen, ..
        } = *held
        else {
            return None;
        };
        let mut state = state;
        let decision = policy
            .decide(&mut state, at + now.saturating_sub(seen), cost)
            .ok()?;
        (!decision.is_allowed()).then_some(decision)
    }

    /// The store's `reply` to `take` for a check of `cost`: the decision, and what to hold.
    pub fn answered(
        &self,
        id: Id,
        policy: &Policy,
        cost: NonZeroU32,
        take: Take,
        reply: Reply,
        now: Nanos,
    ) -> Decision {
        let mut state = reply.before;
        let granted = NonZeroU32::new(reply.taken).filter(|n| *n >= cost);
        let Some(granted) = granted else {
            let refused = Decision::new(state, reply.now, cost.get(), false);
            self.refusal(id, policy, refused, state, now);
            return refused;
        };
        // The same arithmetic as the script's, for the figures; it admits what the script did.
        let _ = policy.decide(&mut state, reply.now, granted);
        let decision = Decision::new(state, reply.now, cost.get(), true);
        if take.most > take.least {
            let left = granted.get() - cost.get();
            self.leased(id, left, state, reply.now, now);
        }
        decision
    }

    /// A call for `id` failed: the next request may ask for a lease again.
    pub fn failed(&self, id: Id) {
        if let Some(mut held) = self.held.get_mut(&id)
            && let Held::Lease { asking, .. } = &mut *held
        {
            *asking = false;
        }
    }

    /// Drops refusals whose wait is over and leases past their time; returns how many went.
    pub fn sweep(&self, now: Nanos) -> usize {
        let mut dropped = 0;
        self.held.retain(|_, held| {
            let keep = match *held {
                Held::Refused { until, .. } => now < until,
                Held::Lease {
                    expires, asking, ..
                } => asking || now < expires,
            };
            dropped += usize::from(!keep);
            keep
        });
        self.count.fetch_sub(dropped, Ordering::Relaxed);
        dropped
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Holds a refusal of the store's, decided on `state` (a refusal takes nothing).
    fn refusal(&self, id: Id, policy: &Policy, refused: Decision, state: State, now: Nanos) {
        let wait = refused.retry_after(policy).map_or(0, nanos);
        let held = Held::Refused {
            state,
            at: refused.now(),
            seen: now,
            until: now.saturating_add(wait),
        };
        match self.held.entry(id) {
            // Tokens still leased here stay spendable; the refusal is not worth holding.
            Entry::Occupied(mut entry) => match entry.get_mut() {
                Held::Lease {
                    left,
                    expires,
                    asking,
                    ..
                } if *left > 0 && now < *expires => *asking = false,
                other => *other = held,
            },
            Entry::Vacant(vacant) => {
                if self.count.load(Ordering::Relaxed) < self.cap {
                    vacant.insert(held);
                    self.count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn leased(&self, id: Id, tokens: u32, state: State, at: Nanos, now: Nanos) {
        let Some((_, ttl)) = self.lease else { return };
        match self.held.entry(id) {
            Entry::Occupied(mut entry) => {
                let kept = match *entry.get() {
                    Held::Lease { left, expires, .. } if now < expires => left,
                    _ => 0,
                };
                let expires = now.saturating_add(ttl);
                *entry.get_mut() = lease_entry(kept + tokens, state, at, now, expires, false);
            }
            Entry::Vacant(vacant) => {
                if self.count.load(Ordering::Relaxed) < self.cap {
                    let expires = now.saturating_add(ttl);
                    vacant.insert(lease_entry(tokens, state, at, now, expires, false));
                    self.count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn remove(&self, id: Id) {
        if self.held.remove(&id).is_some() {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

fn lease_entry(
    left: u32,
    state: State,
    at: Nanos,
    seen: Nanos,
    expires: Nanos,
    asking: bool,
) -> Held {
    Held::Lease {
        left,
        state,
        at,
        seen,
        expires,
        asking,
    }
}

/// A lease's take: at least the request's cost, as many as `lease` if they fit.
fn lease_of(lease: NonZeroU32, cost: NonZeroU32) -> Take {
    Take {
        least: cost.get(),
        most: lease.get().max(cost.get()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MS: Nanos = 1_000_000;
    const ONE: NonZeroU32 = NonZeroU32::MIN;

    fn leasing(cap: usize) -> Local {
        Local::new(
            cap,
            Some((NonZeroU32::new(10).unwrap(), Duration::from_millis(250))),
        )
    }

    /// The store's reply to `take` on a fresh key at `at`: as much as asked.
    fn granted(take: Take, at: Nanos) -> Reply {
        Reply {
            taken: take.most,
            now: at,
            before: State::default(),
        }
    }

    fn asked(found: Found) -> Take {
        match found {
            Found::Ask(take) => take,
            Found::Decided(d) => panic!("decided {d:?}, expected a question"),
        }
    }

    #[test]
    fn a_lease_is_spent_here_and_one_request_asks_for_the_next() {
        let (local, policy) = (leasing(100), Policy::published_default());
        let id = local.id(&policy, b"k");
        let take = asked(local.check(id, &policy, ONE, 0));
        assert_eq!(take, Take { least: 1, most: 10 });
        // While the lease is on its way, another request asks for its own cost only.
        assert_eq!(asked(local.check(id, &policy, ONE, 0)), Take::exactly(1));
        let first = local.answered(id, &policy, ONE, take, granted(take, 5 * MS), 0);
        assert!(first.is_allowed());
        // The figures are the store's, with the whole lease counted as used.
        assert_eq!(first.limits(&policy)[0].remaining, 90);
        for i in 0..9 {
            match local.check(id, &policy, ONE, MS * i) {
                Found::Decided(d) => assert!(d.is_allowed()),
                Found::Ask(take) => panic!("token {i} asked for {take:?}"),
            }
        }
        let next = asked(local.check(id, &policy, ONE, 10 * MS));
        assert_eq!(next.most, 10);
        assert_eq!(
            asked(local.check(id, &policy, ONE, 10 * MS)),
            Take::exactly(1)
        );
        local.failed(id);
        assert_eq!(
            asked(local.check(id, &policy, ONE, 10 * MS)).most,
            10,
            "asking again"
        );
    }

    #[test]
    fn unspent_tokens_are_dropped_after_lease_ttl() {
        let (local, policy) = (leasing(100), Policy::published_default());
        let id = local.id(&policy, b"k");
        let take = asked(local.check(id, &policy, ONE, 0));
        local.answered(id, &policy, ONE, take, granted(take, 0), 0);
        assert!(matches!(
            local.check(id, &policy, ONE, 249 * MS),
            Found::Decided(_)
        ));
        assert!(matches!(
            local.check(id, &policy, ONE, 250 * MS),
            Found::Ask(_)
        ));
        local.failed(id);
        assert_eq!(local.sweep(250 * MS), 1);
        assert_eq!(local.len(), 0);
    }

    #[test]
    fn a_refusal_is_held_until_its_wait_is_over() {
        let local = Local::new(100, None);
        let policy = Policy::published_default();
        let id = local.id(&policy, b"k");
        let mut spent = State::default();
        policy
            .decide(&mut spent, 0, NonZeroU32::new(100).unwrap())
            .unwrap();
        let take = asked(local.check(id, &policy, ONE, 0));
        let reply = Reply {
            taken: 0,
            now: 0,
            before: spent,
        };
        let refused = local.answered(id, &policy, ONE, take, reply, 0);
        assert!(!refused.is_allowed());
        let wait = refused.retry_after(&policy).unwrap();
        assert_eq!(wait, Duration::from_secs(72));
        let halfway = nanos(wait) / 2;
        match local.check(id, &policy, ONE, halfway) {
            Found::Decided(d) => assert_eq!(d.retry_after(&policy), Some(wait / 2)),
            Found::Ask(take) => panic!("asked for {take:?}"),
        }
        assert!(
            local.refused(id, &policy, ONE, halfway).is_some(),
            "a peek too"
        );
        assert_eq!(local.sweep(halfway), 0);
        assert!(matches!(
            local.check(id, &policy, ONE, nanos(wait)),
            Found::Ask(_)
        ));
        assert_eq!(local.len(), 0, "gone once the wait is over");
    }

    #[test]
    fn nothing_new_is_held_past_the_cap() {
        let (local, policy) = (leasing(1), Policy::published_default());
        let (a, b) = (local.id(&policy, b"a"), local.id(&policy, b"b"));
        assert_eq!(asked(local.check(a, &policy, ONE, 0)).most, 10);
        assert_eq!(asked(local.check(b, &policy, ONE, 0)), Take::exactly(1));
        assert_eq!(local.len(), 1);
    }
}
