//! Invariants of the limiter, checked on random policies and request timings.

mod support;

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use sluice::limiter::{Gcra, Limit, ManualClock, MemoryStore, Nanos, Policy, Rate, State, Window};
use support::nz;

/// One request: the time since the previous one and its cost.
type Event = (Nanos, u32);

fn gcra() -> impl Strategy<Value = Gcra> {
    (1..20u32, prop_oneof![Just(1u64), Just(60)], 1..50u32).prop_map(|(count, per, burst)| {
        let rate = Rate::new(nz(count), Duration::from_secs(per)).unwrap();
        Gcra::new(rate, nz(burst)).unwrap()
    })
}

fn window() -> impl Strategy<Value = Window> {
    (1..120u64, 1..200u32)
        .prop_map(|(secs, max)| Window::new(Duration::from_secs(secs), nz(max)).unwrap())
}

fn events() -> impl Strategy<Value = Vec<Event>> {
    let gap = prop_oneof![Just(0u64), 0..3_000_000_000u64, 0..200_000_000_000u64];
    prop::collection::vec((gap, 1..6u32), 1..300)
}

/// Runs `events` through `policy` from a fresh key; returns (time, cost, admitted) for each.
fn run(policy: &Policy, events: &[Event]) -> Vec<(Nanos, u32, bool)> {
    let (mut state, mut now) = (State::default(), 0);
    let capacity = policy.capacity();
    events
        .iter()
        .map(|&(gap, cost)| {
            now += gap;
            let cost = cost.min(capacity);
            let decision = policy.decide(&mut state, now, nz(cost)).unwrap();
            (now, cost, decision.is_allowed())
        })
        .collect()
}

/// Total cost admitted in `[from, to]`.
fn admitted_between(log: &[(Nanos, u32, bool)], from: Nanos, to: Nanos) -> u64 {
    let in_range = log.iter().filter(|&&(t, _, ok)| ok && from <= t && t <= to);
    in_range.map(|&(_, cost, _)| u64::from(cost)).sum()
}

proptest! {
    #[test]
    fn a_rate_never_admits_more_than_burst_plus_what_refilled(gcra in gcra(), events in events()) {
        let policy = Policy::new("rate", &[Limit::Rate(gcra)]).unwrap();
        let log = run(&policy, &events);
        let emission = gcra.emission().as_nanos() as u64;
        let mut prefix = vec![0u64];
        for &(_, cost, ok) in &log {
            prefix.push(prefix.last().unwrap() + if ok { u64::from(cost) } else { 0 });
        }
        // Every run of consecutive requests, ties included, is an interval of time.
        for (i, &(from, _, _)) in log.iter().enumerate() {
            for (j, &(to, _, _)) in log.iter().enumerate().skip(i) {
                let refilled = (to - from) / emission;
                prop_assert!(prefix[j + 1] - prefix[i] <= u64::from(gcra.burst()) + refilled);
            }
        }
    }

    #[test]
    fn no_rolling_window_ever_admits_more_than_its_max(window in window(), events in events()) {
        let policy = Policy::new("window", &[Limit::Window(window)]).unwrap();
        let log = run(&policy, &events);
        let length = window.length().as_nanos() as u64;
        for &(end, _, _) in &log {
            let start = (end + 1).saturating_sub(length);
            prop_assert!(admitted_between(&log, start, end) <= u64::from(window.max()));
        }
    }

    #[test]
    fn a_window_refuses_only_what_an_exact_log_refuses_within_the_lateness(
        window in window(),
        events in events(),
    ) {
        let policy = Policy::new("window", &[Limit::Window(window)]).unwrap();
        let log = run(&policy, &events);
        let reach = (window.length() + window.lateness()).as_nanos() as u64;
        for &(now, cost, ok) in &log {
            if !ok {
                // The same admissions, forgotten `lateness` late, would refuse it too.
                let counted = admitted_between(&log, (now + 1).saturating_sub(reach), now);
                prop_assert!(counted + u64::from(cost) > u64::from(window.max()));
            }
        }
    }

    #[test]
    fn retry_after_is_exact_and_a_refusal_takes_nothing(
        gcra in gcra(),
        window in window(),
        events in events(),
    ) {
        let policy = Policy::new("both", &[Limit::Window(window), Limit::Rate(gcra)]).unwrap();
        let (mut state, mut now) = (State::default(), 0);
        for (gap, cost) in events {
            now += gap;
            let cost = nz(cost.min(policy.capacity()));
            let before = state;
            let decision = policy.decide(&mut state, now, cost).unwrap();
            let Some(wait) = decision.retry_after(&policy) else { continue };
            prop_assert_eq!(state, before);
            // The limits named as refusing are exactly those that refuse on their own.
            let report = decision.limits(&policy);
            prop_assert!(report.violated().count() > 0);
            prop_assert_eq!(decision.refusal(&policy).unwrap().limits, report.refused_set());
            for ((limit, item), word) in policy.limits().iter().zip(report.iter()).zip(state) {
                let alone = Policy::new("alone", &[*limit]).unwrap();
                let verdict = alone.decide(&mut [word, 0], now, cost);
                prop_assert_eq!(item.refused, !verdict.unwrap().is_allowed());
            }
            let wait = wait.as_nanos() as u64;
            prop_assert!(wait > 0);
            let early = policy.decide(&mut state.clone(), now + wait - 1, cost).unwrap();
            prop_assert!(!early.is_allowed());
            let on_time = policy.decide(&mut state.clone(), now + wait, cost).unwrap();
            prop_assert!(on_time.is_allowed());
        }
    }

    #[test]
    fn keys_never_interfere(
        gcra in gcra(),
        window in window(),
        events in prop::collection::vec((any::<bool>(), 0..3_000_000_000u64, 1..6u32), 1..200),
    ) {
        let policy = Policy::new("both", &[Limit::Window(window), Limit::Rate(gcra)]).unwrap();
        let shared = MemoryStore::with_clock(Arc::new(ManualClock::new(0)), 1_000);
        let alone = [
            MemoryStore::with_clock(Arc::new(ManualClock::new(0)), 1_000),
            MemoryStore::with_clock(Arc::new(ManualClock::new(0)), 1_000),
        ];
        for (is_b, gap, cost) in events {
            let cost = nz(cost.min(policy.capacity()));
            let key: &[u8] = if is_b { b"b" } else { b"a" };
            shared.clock().advance_nanos(gap);
            alone.iter().for_each(|store| store.clock().advance_nanos(gap));
            let together = shared.check_now(&policy, key, cost).unwrap();
            let apart = alone[usize::from(is_b)].check_now(&policy, key, cost).unwrap();
            prop_assert_eq!(together, apart);
        }
    }

    #[test]
    fn sweeping_never_changes_a_decision(
        gcra in gcra(),
        window in window(),
        events in prop::collection::vec((any::<bool>(), events()), 1..4),
    ) {
        let policy = Policy::new("both", &[Limit::Window(window), Limit::Rate(gcra)]).unwrap();
        let swept = MemoryStore::with_clock(Arc::new(ManualClock::new(0)), 1_000);
        let kept = MemoryStore::with_clock(Arc::new(ManualClock::new(0)), 1_000);
        for (sweep, run) in events {
            for (gap, cost) in run {
                let cost = nz(cost.min(policy.capacity()));
                swept.clock().advance_nanos(gap);
                kept.clock().advance_nanos(gap);
                if sweep {
                    swept.sweep();
                }
                let a = swept.check_now(&policy, b"k", cost).unwrap();
                prop_assert_eq!(a, kept.check_now(&policy, b"k", cost).unwrap());
            }
        }
    }
}
