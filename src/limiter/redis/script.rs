//! The Lua script that checks and takes a client's limits inside Redis, and the two ends of a
//! call to it: a policy's limits as arguments, and the reply as the in-memory limiter's
//! [`State`], so that one piece of arithmetic (in `gcra.rs`, `window.rs`) reports on both.

use std::sync::LazyLock;

use crate::limiter::clock::Nanos;
use crate::limiter::decision::{MAX_LIMITS, State};
use crate::limiter::policy::{Limit, Policy};

/// The script, loaded once per Redis (`EVALSHA`, and `SCRIPT LOAD` again on `NOSCRIPT`).
pub(super) static LIMITS: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("limits.lua")));

const NANOS_PER_MICRO: Nanos = 1_000;

/// What to ask of the script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Take {
    /// Less than this fits: take nothing. 0 only reads.
    pub least: u32,
    /// Take up to this many when they fit.
    pub most: u32,
}

impl Take {
    /// Exactly `n`, or nothing.
    pub fn exactly(n: u32) -> Take {
        Take { least: n, most: n }
    }

    /// Nothing: where the key stands.
    pub const READ: Take = Take { least: 0, most: 0 };
}

/// A reply: how many were taken, Redis's time, and the key's state before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Reply {
    pub taken: u32,
    /// Redis's clock (or the injected one), in nanoseconds since the Unix epoch.
    pub now: Nanos,
    pub before: State,
}

/// Fills in the script's arguments for `take` under `policy`. `now` is the time to use, in
/// nanoseconds, or `None` for Redis's clock.
pub(super) fn invocation(
    key: &str,
    policy: &Policy,
    take: Take,
    now: Option<Nanos>,
) -> redis::ScriptInvocation<'static> {
    let mut call = LIMITS.key(key);
    match now {
        Some(now) => call.arg(now / NANOS_PER_MICRO),
        None => call.arg(""),
    };
    call.arg(take.least).arg(take.most);
    for limit in policy.limits() {
        match limit {
            Limit::Rate(gcra) => call
                .arg("r")
                .arg(gcra.emission_nanos() / NANOS_PER_MICRO)
                .arg(gcra.capacity() / NANOS_PER_MICRO),
            Limit::Window(window) => call
                .arg("w")
                .arg(window.slot_nanos() / NANOS_PER_MICRO)
                .arg(window.slots())
                .arg(window.max()),
        };
    }
    call
}

/// Reads the script's reply for `policy`; `None` if it is not the shape the script sends.
pub(super) fn reply(policy: &Policy, values: &[i64]) -> Option<Reply> {
    let [taken, now, stored @ ..] = values else {
        return None;
    };
    let number = |v: &i64| u64::try_from(*v).ok();
    let mut before = State::default();
    let mut fields = stored.iter();
    for (word, limit) in before.iter_mut().zip(policy.limits()).take(MAX_LIMITS) {
        *word = match limit {
            Limit::Rate(_) => number(fields.next()?)? * NANOS_PER_MICRO,
            Limit::Window(window) => {
                let index = number(fields.next()?)?;
                let mut counts = Vec::with_capacity(window.slots() as usize);
                for _ in 0..window.slots() {
                    counts.push(number(fields.next()?)?);
                }
                window.word(index, counts)
            }
        };
    }
    Some(Reply {
        taken: u32::try_from(*taken).ok()?,
        now: number(now)?.checked_mul(NANOS_PER_MICRO)?,
        before,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    #[test]
    fn a_reply_becomes_the_in_memory_state() {
        let policy = Policy::published_default();
        // The default's window keeps 6 counters of 12 s slots, then the rate's TAT.
        let (slot, tat) = (150_000_000_i64, 1_800_000_000_000_000_i64);
        let mut values = vec![3, 1_800_000_000_000_000, slot, 2, 0, 0, 0, 0, 1, tat];
        let reply = reply(&policy, &values).unwrap();
        assert_eq!(reply.taken, 3);
        assert_eq!(reply.now, 1_800_000_000_000_000_000);
        let (limits, now) = (policy.limits(), reply.now);
        let (Limit::Window(window), Limit::Rate(_)) = (limits[0], limits[1]) else {
            panic!("window, then rate");
        };
        assert_eq!(
            reply.before[0],
            window.word(slot as u64, [2, 0, 0, 0, 0, 1])
        );
        assert_eq!(reply.before[1], tat as u64 * 1_000);
        let mut state = reply.before;
        assert!(policy.decide(&mut state, now, NonZeroU32::MIN).is_ok());
        values.pop();
        assert_eq!(super::reply(&policy, &values), None, "a field short");
        assert_eq!(super::reply(&policy, &[-1, 0]), None, "negative");
    }
}
