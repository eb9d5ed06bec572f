//! The limiter as the phases use it: what identifies the client under a policy, and the
//! store's decision; then the rate-limit headers that every response of a limited route
//! carries, 429 or not. Also the guard that slows down key guessing.

use std::borrow::Cow;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::credentials::{ClientCert, presented_key};
use crate::config::{Config, KeySource, Mode, OnError, Policy, RateLimitHeaders};
use crate::limiter::{Decision, Error, MAX_LIMITS, PolicyName, Refusal, Report, Store};
use crate::problem::{Limit, Problem, Violated};

/// Policies with up to this many limits have the 429's list of violated limits rendered for
/// every combination at start.
const PRERENDERED_LIMITS: usize = 4;

static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// The limiter as the pipeline uses it: the store, and each policy's names and headers.
pub struct Limits {
    store: Arc<dyn Store>,
    policies: Vec<Named>,
    style: RateLimitHeaders,
    auth_failures: Option<usize>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("keys", &self.store.tracked_keys())
            .finish()
    }
}

/// A policy's limits, their names and the parts of its headers that never change.
struct Named {
    /// The limits, to report on a decision.
    limiter: crate::limiter::Policy,
    /// Per limit, in the policy's order: `default`, `default.rate`.
    names: Vec<PolicyName>,
    /// `RateLimit-Policy`, complete.
    policy_header: HeaderValue,
    /// Per limit, the start of its `RateLimit` item: `"default";r=`.
    prefixes: Vec<Vec<u8>>,
    /// The violated limits of a 429, indexed by the bit set of the limits that refused.
    refusals: Vec<Violated>,
}

impl Named {
    fn new(p: &Policy) -> Named {
        let both = p.limiter.limits().len() > 1;
        // A PolicyName goes between a string's quotes as it is.
        let name = p.limiter.policy_name();
        let names: Vec<PolicyName> = p
            .limiter
            .limits()
            .iter()
            .enumerate()
            .map(|(i, _)| {
                if both && i == 1 {
                    name.rate_name()
                } else {
                    name.clone()
                }
            })
            .collect();
        let items: Vec<String> = names
            .iter()
            .zip(p.limiter.limits())
            .map(|(name, limit)| {
                let (quota, window) = limit.quota_and_window_secs();
                format!("\"{name}\";q={quota};w={window}")
            })
            .collect();
        let refusals = if names.len() <= PRERENDERED_LIMITS {
            (0..1usize << names.len())
                .map(|set| violated_names(&names, |i| set & (1 << i) != 0))
                .collect()
        } else {
            Vec::new()
        };
        Named {
            limiter: p.limiter.clone(),
            refusals,
            policy_header: HeaderValue::from_str(&items.join(", "))
                .unwrap_or(HeaderValue::from_static("")),
            prefixes: names
                .iter()
                .map(|n| format!("\"{n}\";r=").into_bytes())
                .collect(),
            names,
        }
    }
}

/// What the limit phase decided for one request: enough to write the headers.
#[derive(Debug, Clone, Copy)]
pub struct Verdict {
    policy: usize,
    decision: Decision,
    /// For a refusal, the wait and the limits that refused.
    refusal: Option<Refusal>,
}

impl Verdict {
    /// The index of the policy that decided.
    pub fn policy(&self) -> usize {
        self.policy
    }

    pub fn allowed(&self) -> bool {
        self.decision.is_allowed()
    }

    /// Whether limit `i` of the policy (in its order) refused.
    pub fn refused_by(&self, i: usize) -> bool {
        self.refusal.is_some_and(|r| r.limits >> i & 1 == 1)
    }
}

impl Limits {
    pub fn new(config: &Config, store: Arc<dyn Store>) -> Limits {
        Limits {
            store,
            policies: config.policies.iter().map(Named::new).collect(),
            style: config.headers.ratelimit,
            auth_failures: config
                .policies
                .iter()
                .position(|p| p.name == "auth_failures"),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Checks a request of `cost` under policy `i` of `config`. A refusal is `Err` unless the
    /// policy is in shadow mode; the verdict (for the headers) comes back either way.
    pub async fn check(
        &self,
        config: &Config,
        i: usize,
        caller: &Caller<'_>,
        cost: NonZeroU32,
    ) -> (Option<Verdict>, Result<(), Problem>) {
        let policy = &config.policies[i];
        let mut buf = [0u8; 17];
        let key = client_key(&policy.key, caller, &mut buf);
        let decision = match self.store.check(&policy.limiter, &key, cost).await {
            Ok(d) => d,
            Err(Error::InsufficientCapacity(e)) => {
                let limit = Limit::Cost {
                    cost: e.cost,
                    capacity: e.capacity,
                };
                return (None, Err(Problem::TooLarge(limit)));
            }
            // Unless the store falls back to this replica's memory, the config decides.
            Err(Error::Unavailable) => match config.store.on_error {
                OnError::Allow => return (None, Ok(())),
                OnError::Deny | OnError::Local => return (None, Err(Problem::StoreUnavailable)),
            },
        };
        let verdict = self.verdict(i, decision);
        let refused = if decision.is_allowed() {
            Ok(())
        } else if policy.mode == Mode::Shadow {
            tracing::debug!(policy = %policy.name, "shadow policy would refuse");
            Ok(())
        } else {
            Err(self.refusal(verdict))
        };
        (Some(verdict), refused)
    }

    /// The verdict of policy `i`; for a refusal, the wait and which limits refused.
    fn verdict(&self, i: usize, decision: Decision) -> Verdict {
        Verdict {
            policy: i,
            decision,
            refusal: decision.refusal(&self.policies[i].limiter),
        }
    }

    /// The 429 for a refused verdict.
    fn refusal(&self, v: Verdict) -> Problem {
        let named = &self.policies[v.policy];
        let refusal = v.refusal.unwrap_or_default();
        let set = refusal.limits;
        let violated = match named.refusals.get(set) {
            Some(rendered) => rendered.clone(),
            None => violated_names(&named.names, |i| set & (1 << i) != 0),
        };
        Problem::RateLimited {
            retry_after: refusal.retry_after_secs().max(1),
            violated,
        }
    }

    /// Refuses a credential check from a client that has failed too often (429), without
    /// counting this attempt; `auth_failed` counts the attempts that fail.
    pub async fn guard_auth(&self, config: &Config, caller: &Caller<'_>) -> Result<(), Problem> {
        let Some(i) = self.auth_failures else {
            return Ok(());
        };
        let policy = &config.policies[i];
        let mut buf = [0u8; 17];
        let key = client_key(&policy.key, caller, &mut buf);
        match self
            .store
            .peek(&policy.limiter, &key, NonZeroU32::MIN)
            .await
        {
            Ok(decision) if !decision.is_allowed() && policy.mode == Mode::Enforce => {
                Err(self.refusal(self.verdict(i, decision)))
            }
            _ => Ok(()),
        }
    }

    /// Where the client stands under policy `i`, taking nothing: for the headers of an answer
    /// that cost it nothing (a 401, 403 or 405 on a limited route).
    pub async fn standing(
        &self,
        config: &Config,
        i: Option<usize>,
        caller: &Caller<'_>,
    ) -> Option<Verdict> {
        let i = i?;
        let policy = &config.policies[i];
        let mut buf = [0u8; 17];
        let key = client_key(&policy.key, caller, &mut buf);
        let decision = self.store.standing(&policy.limiter, &key).await.ok()?;
        Some(self.verdict(i, decision))
    }

    /// The policy that refuses clients with too many failed credential checks.
    pub fn auth_failures(&self) -> Option<usize> {
        self.auth_failures
    }

    /// Counts a failed credential check against the client.
    pub async fn auth_failed(&self, config: &Config, caller: &Caller<'_>) {
        if let Some(i) = self.auth_failures {
            let _ = self.check(config, i, caller, NonZeroU32::MIN).await;
        }
    }

    /// Writes the rate-limit headers of `v` into `headers`.
    pub fn write_headers(&self, v: &Verdict, headers: &mut HeaderMap) {
        let named = &self.policies[v.policy];
        let limits = v.decision.limits(&named.limiter);
        if limits.is_empty() {
            return;
        }
        if matches!(self.style, RateLimitHeaders::Ietf | RateLimitHeaders::Both) {
            headers.insert(RATELIMIT_POLICY.clone(), named.policy_header.clone());
            if let Ok(value) = ratelimit_value(&limits, &named.prefixes) {
                headers.insert(RATELIMIT.clone(), value);
            }
        }
        if matches!(
            self.style,
            RateLimitHeaders::XRatelimit | RateLimitHeaders::Both
        ) {
            let tightest = limits.tightest();
            headers.insert(X_LIMIT.clone(), HeaderValue::from(tightest.quota));
            headers.insert(X_REMAINING.clone(), HeaderValue::from(tightest.remaining));
            headers.insert(X_RESET.clone(), HeaderValue::from(tightest.reset_secs()));
        }
    }
}

/// The `RateLimit` field of `limits`: per limit its prefix (policy name and quota), remaining
/// and reset. The numbers are formatted first, so that the value is written once into an
/// allocation of just its size, which becomes the value's bytes as it is.
fn ratelimit_value(
    limits: &Report,
    prefixes: &[Vec<u8>],
) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    let mut numbers = [[itoa::Buffer::new(), itoa::Buffer::new()]; MAX_LIMITS];
    let mut parts: [[&[u8]; 3]; MAX_LIMITS] = [[&[]; 3]; MAX_LIMITS];
    let mut len = 2 * limits.len().saturating_sub(1); // the ", " between limits
    let each = limits.iter().zip(prefixes).zip(&mut numbers);
    for (((limit, prefix), [remaining, reset]), part) in each.zip(&mut parts) {
        let remaining = remaining.format(limit.remaining).as_bytes();
        let reset = reset.format(limit.reset_secs()).as_bytes();
        len += prefix.len() + remaining.len() + b";t=".len() + reset.len();
        *part = [prefix, remaining, reset];
    }
    let mut value = Vec::with_capacity(len);
    for (i, [prefix, remaining, reset]) in parts[..limits.len()].iter().enumerate() {
        if i > 0 {
            value.extend_from_slice(b", ");
        }
        value.extend_from_slice(prefix);
        value.extend_from_slice(remaining);
        value.extend_from_slice(b";t=");
        value.extend_from_slice(reset);
    }
    HeaderValue::from_maybe_shared(Bytes::from(value))
}

fn violated_names(names: &[PolicyName], refused: impl Fn(usize) -> bool) -> Violated {
    Violated::new(
        names
            .iter()
            .enumerate()
            .filter(|&(i, _)| refused(i))
            .map(|(_, n)| n.as_str()),
    )
}

/// Who a request says it is: what a policy's `key` is taken from.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub headers: &'a HeaderMap,
    /// The client's address (the peer's, or the one a trusted proxy reports).
    pub ip: IpAddr,
    /// The certificate it presented over TLS, verified.
    pub cert: Option<&'a ClientCert>,
}

/// The bytes that identify the client under a policy. Addresses are tagged with a NUL byte,
/// which no header value can start with, so a presented key can never pose as an address.
/// The client's key under `policy` (by its `key`); with none, the presented credential, else
/// the address: what scopes an idempotency key to its client.
pub(crate) fn client_key_under<'a>(
    config: &Config,
    policy: Option<usize>,
    caller: &Caller<'a>,
    buf: &'a mut [u8; 17],
) -> Cow<'a, [u8]> {
    let source = policy.map_or(&KeySource::ApiKey, |i| &config.policies[i].key);
    client_key(source, caller, buf)
}

fn client_key<'a>(source: &KeySource, caller: &Caller<'a>, buf: &'a mut [u8; 17]) -> Cow<'a, [u8]> {
    let presented = match source {
        KeySource::ApiKey => presented_key(caller.headers),
        KeySource::ClientCert => caller.cert.map(|c| Cow::Borrowed(c.identity.as_bytes())),
        KeySource::Header(name) => caller
            .headers
            .get(name)
            .map(|v| Cow::Borrowed(v.as_bytes())),
        KeySource::Ip => None,
    };
    if let Some(key) = presented.filter(|k| k.first() != Some(&0)) {
        return key;
    }
    let len = match caller.ip {
        IpAddr::V4(v4) => {
            buf[1..5].copy_from_slice(&v4.octets());
            5
        }
        IpAddr::V6(v6) => {
            buf[1..17].copy_from_slice(&v6.octets());
            17
        }
    };
    Cow::Borrowed(&buf[..len])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::{LimitKind, LimitReport};

    fn limit(remaining: u32, reset_secs: u64) -> LimitReport {
        LimitReport {
            kind: LimitKind::Rate,
            quota: 100,
            remaining,
            refused: false,
            window: 60_000_000_000,
            reset: reset_secs * 1_000_000_000,
        }
    }

    #[test]
    fn the_ratelimit_value_lists_each_limit_in_order() {
        let prefixes = [
            b"\"default\";r=".to_vec(),
            b"\"default.window\";r=".to_vec(),
        ];
        let mut report = Report::new();
        report.push(limit(0, 1));
        let value = ratelimit_value(&report, &prefixes).unwrap();
        assert_eq!(value, "\"default\";r=0;t=1");
        report.push(limit(4_294_967_295, 86_400));
        let value = ratelimit_value(&report, &prefixes).unwrap();
        let expected = "\"default\";r=0;t=1, \"default.window\";r=4294967295;t=86400";
        assert_eq!(value, expected);
        assert_eq!(ratelimit_value(&Report::new(), &prefixes).unwrap(), "");
    }
}
