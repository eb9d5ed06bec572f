//! `[routes.idempotency]`: `Idempotency-Key` on a route, checked into [`Idempotency`].

use toml::Spanned;

use super::Idempotency;
use super::error::Errors;
use super::raw;
use http::Method;

/// The largest answer a route may store for a key: the memory store holds 64 MiB in all.
const MAX_STORED_BODY: u64 = 16 << 20;

/// `[routes.idempotency]`, checked; `None` unless `enabled`.
pub(super) fn check(
    key: &str,
    t: &Spanned<raw::Idempotency>,
    errs: &mut Errors,
) -> Option<Idempotency> {
    let (span, t) = (t.span(), t.get_ref());
    let key = |k: &str| format!("{key}.{k}");
    let at = |s: std::ops::Range<usize>| if s.is_empty() { span.clone() } else { s };
    if !t.enabled {
        if *t.required.get_ref() {
            let msg = "a key cannot be required while enabled = false";
            errs.push(key("required"), at(t.required.span()), msg);
        }
        return None;
    }
    let mut methods = Vec::new();
    for m in &t.methods {
        match Method::from_bytes(m.get_ref().as_bytes()) {
            Ok(method) if m.get_ref().bytes().all(|b| b.is_ascii_uppercase()) => {
                methods.push(method);
            }
            _ => {
                let msg = format!("{:?} is not an HTTP method in upper case", m.get_ref());
                errs.push(key("methods"), at(m.span()), msg);
            }
        }
    }
    if t.methods.is_empty() {
        errs.push(
            key("methods"),
            span.clone(),
            "name at least one method, such as \"POST\"",
        );
    }
    let ttl = errs.positive(&key("ttl"), &t.ttl);
    let max = t.max_stored_body.get_ref().0;
    if max == 0 || max > MAX_STORED_BODY {
        let msg = "must be from 1 byte to 16MiB";
        errs.push(key("max_stored_body"), at(t.max_stored_body.span()), msg);
    }
    Some(Idempotency {
        methods,
        required: *t.required.get_ref(),
        ttl,
        max_stored_body: max,
    })
}
