//! The rate-limit headers (`RateLimit-Policy`, `RateLimit`, `X-RateLimit-*`) and the 429,
//! as `pipeline::Limits` writes them for a client's standing under a policy.
//!
//! The input: a policy (a name, one or two limits), a header style, and a client's requests
//! over time, checked by the in-memory store on a manual clock. After each, the headers must
//! be Structured Field lists (RFC 8941) naming the policy's limits in order, with figures in
//! range; the 429 must carry `Retry-After` and the same body however it is written.

#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::pin::pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use http::HeaderMap;
use libfuzzer_sys::fuzz_target;
use sluice::config::{self, Config, KeySource, Mode, Overrides, RateLimitHeaders};
use sluice::limiter::{Clock, Gcra, Limit, ManualClock, MemoryStore, Policy, Rate, Window};
use sluice::pipeline::{Caller, Limits, Verdict};
use sluice::problem::{Limit as Exceeded, Problem};
use sluice_fuzz::sf;

#[derive(Debug, Arbitrary)]
struct Input {
    name: String,
    limits: Vec<LimitSpec>,
    style: u8,
    shadow: bool,
    max_keys: u8,
    steps: Vec<Step>,
    request_id: String,
}

#[derive(Debug, Arbitrary)]
enum LimitSpec {
    /// `count` per `per_ms` milliseconds, bursts of `burst`.
    Rate { count: u32, per_ms: u64, burst: u32 },
    /// At most `max` in any `length_ms` milliseconds.
    Window { length_ms: u64, max: u32 },
}

#[derive(Debug, Arbitrary)]
enum Step {
    /// After `wait`, a request costing `cost + 1` from client `who`.
    Check { wait: Wait, cost: u16, who: u8 },
    /// After `wait`, the headers of an answer that costs nothing.
    Standing { wait: Wait, who: u8 },
}

#[derive(Debug, Arbitrary)]
enum Wait {
    Nanos(u32),
    Millis(u32),
    Seconds(u32),
}

/// No further than this from the clock's origin (146 years), as the real clock never is.
const HORIZON: u64 = 1 << 62;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    sluice_fuzz::show(&input);
    let Some(policy) = policy(&input) else {
        return;
    };
    let style = [
        RateLimitHeaders::Ietf,
        RateLimitHeaders::XRatelimit,
        RateLimitHeaders::Both,
        RateLimitHeaders::None,
    ][usize::from(input.style % 4)];
    let mut config = base_config().clone();
    config.headers.ratelimit = style;
    let mode = if input.shadow {
        Mode::Shadow
    } else {
        Mode::Enforce
    };
    config.policies = vec![config::Policy {
        name: input.name.clone(),
        rate: None,
        window: None,
        key: KeySource::Ip,
        mode,
        limiter: policy.clone(),
    }];
    let clock = Arc::new(ManualClock::new(0));
    let keys = usize::from(input.max_keys % 4) + 1;
    let store = Arc::new(MemoryStore::with_clock(clock.clone(), keys));
    let limits = Limits::new(&config, store);
    let headers = HeaderMap::new();
    for step in input.steps.iter().take(64) {
        let (wait, who) = match step {
            Step::Check { wait, who, .. } | Step::Standing { wait, who } => (wait, *who),
        };
        let wait = match *wait {
            Wait::Nanos(n) => u64::from(n),
            Wait::Millis(n) => u64::from(n) * 1_000_000,
            Wait::Seconds(n) => u64::from(n) * 1_000_000_000,
        };
        if clock.now() + wait > HORIZON {
            return;
        }
        clock.advance_nanos(wait);
        let caller = Caller {
            headers: &headers,
            ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, who % 8)),
            cert: None,
        };
        let verdict = match step {
            Step::Check { cost, .. } => {
                let cost = NonZeroU32::MIN.saturating_add(u32::from(*cost));
                let (verdict, refused) = ready(limits.check(&config, 0, &caller, cost));
                check_refusal(&policy, mode, cost, verdict, refused, &input.request_id);
                verdict
            }
            Step::Standing { .. } => ready(limits.standing(&config, Some(0), &caller)),
        };
        if let Some(v) = verdict {
            let mut out = HeaderMap::new();
            limits.write_headers(&v, &mut out);
            check_headers(&policy, style, &out);
        }
    }
});

/// The policy the input names, if the limiter would take it.
fn policy(input: &Input) -> Option<Policy> {
    let limits: Option<Vec<Limit>> = input
        .limits
        .iter()
        .take(2)
        .map(|spec| match *spec {
            LimitSpec::Rate {
                count,
                per_ms,
                burst,
            } => {
                let rate = Rate::new(NonZeroU32::new(count)?, Duration::from_millis(per_ms))?;
                Some(Limit::Rate(Gcra::new(rate, NonZeroU32::new(burst)?)?))
            }
            LimitSpec::Window { length_ms, max } => Some(Limit::Window(Window::new(
                Duration::from_millis(length_ms),
                NonZeroU32::new(max)?,
            )?)),
        })
        .collect();
    Policy::new(input.name.as_str(), &limits?)
}

fn base_config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    let overrides = Overrides {
        upstreams: vec!["http://127.0.0.1:3000".into()],
        ..Overrides::default()
    };
    CONFIG.get_or_init(|| Config::defaults(&overrides).expect("the defaults"))
}

/// The in-memory store answers at once: its futures are ready on the first poll.
fn ready<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the in-memory store kept a check waiting"),
    }
}

/// A request is refused only by the policy, with a 429 as its own headers say.
fn check_refusal(
    policy: &Policy,
    mode: Mode,
    cost: NonZeroU32,
    verdict: Option<Verdict>,
    refused: Result<(), Problem>,
    request_id: &str,
) {
    let Some(verdict) = verdict else {
        // Only a cost no limit can ever hold goes unchecked.
        let expected = Exceeded::Cost {
            cost: cost.get(),
            capacity: policy.capacity(),
        };
        assert_eq!(refused, Err(Problem::TooLarge(expected)));
        assert!(cost.get() > policy.capacity());
        return;
    };
    match refused {
        Ok(()) => assert!(verdict.allowed() || mode == Mode::Shadow),
        Err(problem) => {
            assert!(!verdict.allowed() && mode == Mode::Enforce, "{problem:?}");
            check_429(policy, &verdict, problem, request_id);
        }
    }
}

fn check_429(policy: &Policy, verdict: &Verdict, problem: Problem, request_id: &str) {
    let Problem::RateLimited { retry_after, .. } = &problem else {
        panic!("refused as {problem:?}");
    };
    let retry_after = *retry_after;
    assert!(retry_after >= 1, "Retry-After: {retry_after}");
    let tree = problem.body(request_id);
    let res = problem.clone().into_response::<Bytes>(request_id);
    assert_eq!(res.status(), 429);
    assert_eq!(
        res.headers()["retry-after"],
        retry_after.to_string().as_str()
    );
    // Written straight for speed, it must be what the JSON tree gives.
    assert_eq!(
        std::str::from_utf8(res.body()).expect("UTF-8"),
        tree.to_string(),
        "the 429's body, written two ways"
    );
    let names = tree["violated-policies"]
        .as_array()
        .expect("an array of names");
    assert!(!names.is_empty(), "a refusal that names no limit");
    let refusing: Vec<usize> = (0..policy.limits().len())
        .filter(|&i| verdict.refused_by(i))
        .collect();
    assert_eq!(names.len(), refusing.len(), "{names:?}");
}

/// The headers of one answer, for the style configured.
fn check_headers(policy: &Policy, style: RateLimitHeaders, headers: &HeaderMap) {
    let ietf = matches!(style, RateLimitHeaders::Ietf | RateLimitHeaders::Both);
    let x = matches!(style, RateLimitHeaders::XRatelimit | RateLimitHeaders::Both);
    let n = policy.limits().len();
    assert_eq!(headers.contains_key("ratelimit"), ietf);
    assert_eq!(headers.contains_key("ratelimit-policy"), ietf);
    assert_eq!(headers.contains_key("x-ratelimit-limit"), x);
    let mut figures = Vec::new();
    if ietf {
        let read = |name: &str| {
            let value = headers[name].as_bytes();
            let items = sf::list(value).unwrap_or_else(|e| {
                panic!(
                    "{name}: {:?} is not a list: {e:?}",
                    String::from_utf8_lossy(value)
                )
            });
            assert_eq!(items.len(), n, "{name}: one item per limit");
            items
        };
        let declared = read("ratelimit-policy");
        let current = read("ratelimit");
        for (i, (d, c)) in declared.iter().zip(&current).enumerate() {
            let sf::Bare::String(name) = &d.bare else {
                panic!("a limit named by {:?}", d.bare);
            };
            assert_eq!(c.bare, d.bare, "both headers name limit {i} alike");
            assert_eq!(i == 0, name == policy.name(), "limit {i} named {name:?}");
            assert_eq!(keys(d), ["q", "w"]);
            assert_eq!(keys(c), ["r", "t"]);
            let int = |item: &sf::Item, k| item.int(k).expect("an integer");
            let (q, w, r, t) = (int(d, "q"), int(d, "w"), int(c, "r"), int(c, "t"));
            assert_eq!(
                q,
                i64::from(policy.limits()[i].capacity()),
                "q of limit {i}"
            );
            assert!(w >= 1 && r >= 0 && t >= 0, "q={q} w={w} r={r} t={t}");
            assert!(r <= q, "{r} left of {q}");
            let latest = latest_reset(&policy.limits()[i]);
            assert!(
                t <= latest,
                "back in {t} s, of a window of {w} s (at most {latest} s)"
            );
            figures.push((q, r));
        }
        if n == 2 {
            assert_ne!(declared[0].bare, declared[1].bare, "two limits of one name");
        }
    }
    if x {
        let int = |name: &str| -> i64 {
            let v = headers[name].to_str().expect("ASCII");
            v.parse().unwrap_or_else(|_| panic!("{name}: {v:?}"))
        };
        let (q, r, t) = (
            int("x-ratelimit-limit"),
            int("x-ratelimit-remaining"),
            int("x-ratelimit-reset"),
        );
        assert!(
            0 <= r && r <= q && t >= 0,
            "limit {q}, remaining {r}, reset {t}"
        );
        if !figures.is_empty() {
            // The tightest limit: the one with the least left.
            let least = figures.iter().map(|&(_, r)| r).min();
            assert_eq!(Some(r), least);
            assert!(figures.contains(&(q, r)));
        }
    }
}

/// The longest `t` a limit can report, in seconds: a rate's window; a rolling window's, plus
/// how late its slots may forget a request.
fn latest_reset(limit: &Limit) -> i64 {
    let longest = match limit {
        Limit::Rate(_) => return limit.quota_and_window_secs().1 as i64,
        Limit::Window(w) => w.length() + w.lateness(),
    };
    sluice::limiter::ceil_secs(longest) as i64
}

fn keys(item: &sf::Item) -> Vec<&str> {
    item.params.iter().map(|(k, _)| k.as_str()).collect()
}
