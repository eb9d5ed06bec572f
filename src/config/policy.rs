//! `[policies.NAME]`: each policy's limits, compiled for the limiter here so that a bad one is
//! a config error; and how routes and keys name a policy.

use std::num::NonZeroU32;
use std::ops::Range;

use http::HeaderName;
use toml::Spanned;

use super::error::Errors;
use super::{KeySource, Policy, Rate, raw};
use crate::limiter::{self, Gcra, Limit, PolicyName, Window};

/// The built-in policies, each replaced whole by a `[policies.NAME]` table of the same name:
/// `default`, the published rule (1/s sustained, bursts of 100, at most 100 in any 60 s), and
/// `auth_failures`, which slows down key guessing (10 failed attempts, then 10 a minute, per IP).
const BUILT_IN: [(&str, &str); 2] = [
    (
        "default",
        "rate = \"1/s\"\nburst = 100\nwindow = \"60s\"\nwindow_requests = 100\n",
    ),
    (
        "auth_failures",
        "rate = \"10/m\"\nburst = 10\nkey = \"ip\"\n",
    ),
];

pub(super) fn policies(
    raw: &std::collections::BTreeMap<String, Spanned<raw::Policy>>,
    errs: &mut Errors,
) -> Vec<Policy> {
    let mut out = Vec::new();
    for (name, text) in BUILT_IN.iter().filter(|(n, _)| !raw.contains_key(*n)) {
        let p: raw::Policy = toml::from_str(text).expect("built-in policies are valid");
        out.extend(policy(name, &p, 0..0, errs));
    }
    for (name, spanned) in raw {
        out.extend(policy(name, spanned.get_ref(), spanned.span(), errs));
    }
    out
}

/// One policy; its limits are compiled for the limiter here, so a bad one is a config error.
/// The window limit is named after the policy, the rate limit `NAME.rate` when both exist.
fn policy(name: &str, p: &raw::Policy, span: Range<usize>, errs: &mut Errors) -> Option<Policy> {
    let key = format!("policies.{name}");
    let mut fail = |msg: &str| errs.push(&key, span.clone(), msg);
    if name == "none" {
        fail("\"none\" is reserved for routes without a policy");
    }
    // The name is written into the rate-limit headers, which can carry only a `PolicyName`.
    let checked = PolicyName::try_from(name);
    if let Err(bad) = &checked {
        fail(&bad.to_string());
    }
    let rate = match (p.rate, p.burst) {
        (Some(r), Some(b)) => {
            match NonZeroU32::new(b).and_then(|b| Gcra::new(limiter_rate(r), b)) {
                Some(gcra) => Some((r, b, gcra)),
                None => pair_error(
                    &mut fail,
                    "burst must be at least 1, and burst / rate at most a year",
                ),
            }
        }
        (None, None) => None,
        _ => pair_error(&mut fail, "rate and burst go together: set both or neither"),
    };
    let window = match (p.window, p.window_requests) {
        (Some(w), Some(n)) => match NonZeroU32::new(n).and_then(|n| Window::new(w.0, n)) {
            Some(limit) => Some((w.0, n, limit)),
            None => pair_error(
                &mut fail,
                &format!(
                    "window must be above 0 and window_requests 1 to {}",
                    Window::MAX_REQUESTS
                ),
            ),
        },
        (None, None) => None,
        _ => pair_error(
            &mut fail,
            "window and window_requests go together: set both or neither",
        ),
    };
    if p.rate.is_none() && p.window.is_none() {
        fail("a policy needs rate + burst, window + window_requests, or both");
    }
    let limits: Vec<Limit> = window
        .iter()
        .map(|w| Limit::Window(w.2))
        .chain(rate.iter().map(|r| Limit::Rate(r.2)))
        .collect();
    let key_source = key_source(&format!("{key}.key"), &p.key, errs);
    // A bad name is reported above; the limits are still built, under a stand-in name, so
    // that routes naming the policy find it and report nothing more.
    let limiter_name =
        checked.unwrap_or_else(|_| PolicyName::new("invalid").expect("a valid name"));
    Some(Policy {
        name: name.to_string(),
        rate: rate.map(|(r, b, _)| (r, b)),
        window: window.map(|(w, n, _)| (w, n)),
        key: key_source,
        mode: p.mode,
        limiter: limiter::Policy::new(limiter_name, &limits)?,
    })
}

fn limiter_rate(r: Rate) -> limiter::Rate {
    limiter::Rate::new(NonZeroU32::new(r.count).unwrap_or(NonZeroU32::MIN), r.per)
        .expect("a rate's period is not zero")
}

fn pair_error<T>(fail: &mut impl FnMut(&str), msg: &str) -> Option<T> {
    fail(msg);
    None
}

fn key_source(key: &str, v: &Spanned<String>, errs: &mut Errors) -> KeySource {
    match v.get_ref().as_str() {
        "api_key" => KeySource::ApiKey,
        "client_cert" => KeySource::ClientCert,
        "ip" => KeySource::Ip,
        other => match other.strip_prefix("header:").map(HeaderName::try_from) {
            Some(Ok(name)) => KeySource::Header(name),
            _ => {
                errs.push(
                    key,
                    v.span(),
                    format!("{other:?}: expected api_key, client_cert, ip or header:NAME"),
                );
                KeySource::ApiKey
            }
        },
    }
}

/// Resolves a policy name to its index; `"none"` is no policy.
pub(super) fn policy_ref(
    key: &str,
    name: &str,
    span: Range<usize>,
    pols: &[Policy],
    errs: &mut Errors,
) -> Option<usize> {
    if name == "none" {
        return None;
    }
    let found = pols.iter().position(|p| p.name == name);
    if found.is_none() {
        errs.push(key, span, format!("no [policies.{name}] (or \"none\")"));
    }
    found
}
