//! Credentials: the key a request presents (Bearer, Basic user name, or X-Api-Key), and, with
//! `auth.mode = "api_keys"`, whether it is a known key with the route's scopes (401/403).
//! Keys are stored and looked up by SHA-256 digest only.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use http::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest, Sha256};

use crate::config::{ApiKey, Auth, AuthMode};
use crate::problem::Problem;

pub static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// The certificate a client presented over TLS (verified against `server.tls.client_ca`): who
/// it names, and its SHA-256, which `[[auth.keys]] cert_sha256` may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub identity: Arc<str>,
    pub sha256: [u8; 32],
}

impl ClientCert {
    pub fn of(cert: &rustls_pki_types::CertificateDer<'_>) -> ClientCert {
        let sha256: [u8; 32] = Sha256::digest(cert.as_ref()).into();
        let identity = crate::tls::identity(cert).unwrap_or_else(|| hex(&sha256));
        ClientCert {
            identity: identity.into(),
            sha256,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The configured keys, by the digest of an API key and of a client certificate, with each
/// key's name ready as a header value.
#[derive(Debug)]
pub struct Keys {
    by_digest: HashMap<[u8; 32], usize>,
    by_cert: HashMap<[u8; 32], usize>,
    names: Vec<HeaderValue>,
}

impl Keys {
    pub fn new(auth: &Auth) -> Keys {
        let digests = |of: fn(&ApiKey) -> Option<[u8; 32]>| {
            let keys = auth.keys.iter().enumerate();
            keys.filter_map(|(i, k)| Some((of(k)?, i))).collect()
        };
        let (by_digest, by_cert) = (digests(|k| k.sha256), digests(|k| k.cert_sha256));
        let names = auth
            .keys
            .iter()
            .map(|k| {
                HeaderValue::from_str(&k.name).unwrap_or(HeaderValue::from_static("invalid-name"))
            })
            .collect();
        Keys {
            by_digest,
            by_cert,
            names,
        }
    }

    /// The `X-Sluice-Client` value for key `i`.
    pub fn name(&self, i: usize) -> &HeaderValue {
        &self.names[i]
    }
}

/// The key the request presents, if any: `Authorization: Bearer KEY`, `Authorization: Basic`
/// with the key as user name, or `X-Api-Key: KEY`.
pub fn presented_key(headers: &HeaderMap) -> Option<Cow<'_, [u8]>> {
    if let Some(auth) = headers.get(AUTHORIZATION) {
        let value = auth.as_bytes();
        if let Some(token) = strip_scheme(value, b"bearer ") {
            return non_empty(Cow::Borrowed(token));
        }
        if let Some(encoded) = strip_scheme(value, b"basic ") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()?;
            let user = match decoded.iter().position(|&b| b == b':') {
                Some(colon) => decoded[..colon].to_vec(),
                None => decoded,
            };
            return non_empty(Cow::Owned(user));
        }
    }
    headers
        .get(&X_API_KEY)
        .and_then(|v| non_empty(Cow::Borrowed(v.as_bytes())))
}

fn strip_scheme<'a>(value: &'a [u8], scheme: &[u8]) -> Option<&'a [u8]> {
    let head = value.get(..scheme.len())?;
    head.eq_ignore_ascii_case(scheme)
        .then(|| value[scheme.len()..].trim_ascii())
}

fn non_empty(key: Cow<'_, [u8]>) -> Option<Cow<'_, [u8]>> {
    (!key.is_empty()).then_some(key)
}

/// Who the request is, when keys are required: the index of its `[[auth.keys]]` entry, by the
/// API key it presents or, without one, by its client certificate. `Ok(None)` when
/// `auth.mode = "none"`.
pub fn authenticate(
    auth: &Auth,
    keys: &Keys,
    scopes: &[String],
    headers: &HeaderMap,
    cert: Option<&ClientCert>,
) -> Result<Option<usize>, Problem> {
    if auth.mode == AuthMode::None {
        return Ok(None);
    }
    let found = match (presented_key(headers), cert) {
        (Some(presented), _) => {
            let digest: [u8; 32] = Sha256::digest(&presented).into();
            keys.by_digest.get(&digest)
        }
        (None, Some(cert)) => keys.by_cert.get(&cert.sha256),
        (None, None) => return Err(Problem::MissingCredentials),
    };
    let &i = found.ok_or(Problem::UnknownCredentials)?;
    check_scopes(i, &auth.keys[i], scopes)?;
    Ok(Some(i))
}

fn check_scopes(i: usize, key: &ApiKey, scopes: &[String]) -> Result<(), Problem> {
    match scopes.iter().find(|s| !key.scopes.contains(s)) {
        Some(missing) => Err(Problem::MissingScope {
            scope: missing.clone(),
            key: i,
        }),
        None => Ok(()),
    }
}

/// Keeps the client's credentials from the upstream unless `forward_credentials`. (The upstream
/// learns the key's name from X-Sluice-Client, which the forward phase sets.)
pub fn strip_credentials(auth: &Auth, headers: &mut HeaderMap) {
    if !auth.forward_credentials {
        headers.remove(AUTHORIZATION);
        headers.remove(&X_API_KEY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn a_key_is_found_in_each_of_its_three_places() {
        assert_eq!(
            presented_key(&with("authorization", "Bearer abc")).as_deref(),
            Some(&b"abc"[..])
        );
        assert_eq!(
            presented_key(&with("authorization", "bearer  abc ")).as_deref(),
            Some(&b"abc"[..])
        );
        // "abc:" in base64
        assert_eq!(
            presented_key(&with("authorization", "Basic YWJjOg==")).as_deref(),
            Some(&b"abc"[..])
        );
        assert_eq!(
            presented_key(&with("x-api-key", "abc")).as_deref(),
            Some(&b"abc"[..])
        );
    }

    #[test]
    fn empty_or_malformed_credentials_are_no_key() {
        assert_eq!(presented_key(&with("authorization", "Bearer ")), None);
        assert_eq!(presented_key(&with("authorization", "Basic !!!")), None);
        assert_eq!(presented_key(&with("authorization", "Digest x")), None);
        assert_eq!(presented_key(&HeaderMap::new()), None);
    }
}
