//! `[auth]` and `[[auth.keys]]`: who a client may be, by an API key's SHA-256 or a client
//! certificate's, and the policy and scopes each key has.

use std::collections::HashSet;

use toml::Spanned;

use super::error::Errors;
use super::policy::policy_ref;
use super::{ApiKey, Auth, Policy, raw};

pub(super) fn check(a: &raw::Auth, pols: &[Policy], errs: &mut Errors) -> Auth {
    let mode = *a.mode.get_ref();
    if mode == raw::AuthMode::ApiKeys && a.keys.is_empty() {
        // Nothing to point at but the key that asks for them.
        errs.push(
            "auth.keys",
            a.mode.span(),
            "auth.mode = \"api_keys\" needs at least one [[auth.keys]]",
        );
    }
    let keys = a.keys.iter().enumerate().map(|(i, k)| {
        let digest = |field: &str, v: &Option<Spanned<String>>, errs: &mut Errors| {
            let v = v.as_ref()?;
            let msg = match field {
                "sha256" => "expected 64 hex digits, as printed by `sluice hash-key`",
                _ => "expected 64 hex digits: the SHA-256 of the certificate's DER",
            };
            let found = hex32(v.get_ref());
            if found.is_none() {
                errs.push(format!("auth.keys[{i}].{field}"), v.span(), msg);
            }
            found
        };
        let sha256 = digest("sha256", &k.sha256, errs);
        let cert_sha256 = digest("cert_sha256", &k.cert_sha256, errs);
        if k.sha256.is_none() && k.cert_sha256.is_none() {
            let msg = "a key needs sha256 (an API key's) or cert_sha256 (a client certificate's)";
            errs.push(format!("auth.keys[{i}]"), k.name.span(), msg);
        }
        let policy = k.policy.as_ref().and_then(|p| {
            let key = format!("auth.keys[{i}].policy");
            policy_ref(&key, p.get_ref(), p.span(), pols, errs)
        });
        ApiKey {
            name: k.name.get_ref().clone(),
            sha256,
            cert_sha256,
            scopes: k.scopes.clone(),
            policy,
        }
    });
    let keys: Vec<ApiKey> = keys.collect();
    // Which key a client is must not depend on the order of the list.
    let (mut hashes, mut certs, mut names) = (HashSet::new(), HashSet::new(), HashSet::new());
    for (i, (k, raw)) in keys.iter().zip(&a.keys).enumerate() {
        if let (Some(sha256), Some(at)) = (k.sha256, &raw.sha256)
            && !hashes.insert(sha256)
        {
            let key = format!("auth.keys[{i}].sha256");
            errs.push(key, at.span(), "another key has the same sha256");
        }
        if let (Some(sha256), Some(at)) = (k.cert_sha256, &raw.cert_sha256)
            && !certs.insert(sha256)
        {
            let key = format!("auth.keys[{i}].cert_sha256");
            errs.push(key, at.span(), "another key has the same cert_sha256");
        }
        if !names.insert(k.name.as_str()) {
            let key = format!("auth.keys[{i}].name");
            errs.push(key, raw.name.span(), "another key has the same name");
        }
    }
    Auth {
        mode,
        keys,
        forward_credentials: a.forward_credentials,
    }
}

/// Scopes are checked against a key's: with no keys at all, a route's scopes would guard
/// nothing. (Keys listed with the mode left at `none` is auth switched off, on purpose.)
pub(super) fn scopes_need_keys(file: &raw::File, errs: &mut Errors) {
    if !file.auth.keys.is_empty() {
        return;
    }
    for (i, r) in file.routes.iter().enumerate() {
        if let Some(scope) = r.scopes.first() {
            let msg = "scopes are checked against [[auth.keys]], and there are none";
            errs.push(format!("routes[{i}].scopes"), scope.span(), msg);
        }
    }
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
