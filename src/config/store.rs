//! `[store]`: where the limiter keeps its state — this process's memory, or Redis shared by
//! every replica — checked into [`Store`].

use std::num::NonZeroU32;

use redis::IntoConnectionInfo;
use toml::Spanned;

use super::error::Errors;
use super::raw::{self, StoreKind, StoreSync};
use crate::limiter::redis::{OnError, Servers, Settings, Sharing};

/// Where limiter state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    /// `None`: this process's memory.
    pub redis: Option<Settings>,
    /// What a check does while Redis is unreachable.
    pub on_error: OnError,
    /// Whether `/readyz` fails while Redis is unreachable.
    pub ready_requires_store: bool,
}

impl Store {
    /// One line for `sluice check` and the startup log.
    pub fn describe(&self) -> String {
        match &self.redis {
            None => "memory".into(),
            Some(s) => {
                let sharing = match s.sharing {
                    Sharing::Exact => "exact".to_string(),
                    Sharing::Lease { tokens, ttl } => {
                        format!("lease {tokens} for {}ms", ttl.as_millis())
                    }
                };
                let on_error = format!("{:?}", s.on_error).to_lowercase();
                format!("redis {} ({sharing}, on_error {on_error})", s.servers)
            }
        }
    }
}

pub(super) fn check(s: &raw::Store, errs: &mut Errors) -> Store {
    let store = Store {
        redis: None,
        on_error: s.on_error,
        ready_requires_store: s.ready_requires_store,
    };
    if *s.kind.get_ref() == StoreKind::Memory {
        return store;
    }
    let timeout = s.timeout.get_ref().0;
    if timeout.is_zero() {
        errs.push("store.timeout", s.timeout.span(), "must be more than 0");
    }
    let sharing = match s.sync {
        StoreSync::Exact => Sharing::Exact,
        StoreSync::Lease => {
            let ttl = s.lease_ttl.get_ref().0;
            if ttl.is_zero() {
                errs.push("store.lease_ttl", s.lease_ttl.span(), "must be more than 0");
            }
            let tokens = NonZeroU32::new(*s.lease.get_ref()).unwrap_or_else(|| {
                errs.push("store.lease", s.lease.span(), "must be at least 1");
                NonZeroU32::MIN
            });
            Sharing::Lease { tokens, ttl }
        }
    };
    if s.key_secret.get_ref().is_empty() {
        let msg = "set a secret (or SLUICE_STORE_KEY_SECRET), the same on every replica: \
                   client keys are stored in Redis only as a keyed hash under it";
        errs.push("store.key_secret", s.key_secret.span(), msg);
    }
    Store {
        redis: Some(Settings {
            servers: servers(s, errs),
            timeout,
            sharing,
            on_error: s.on_error,
            key_secret: s.key_secret.get_ref().as_bytes().to_vec(),
        }),
        ..store
    }
}

/// `url`, or the `cluster` nodes when they are given (not both).
fn servers(s: &raw::Store, errs: &mut Errors) -> Servers {
    let nodes = s.cluster.get_ref();
    if nodes.is_empty() {
        url("store.url", &s.url, errs);
        return Servers::One(s.url.get_ref().clone());
    }
    if s.url.span() != (0..0) {
        let msg = "set url (one server) or cluster (its nodes), not both";
        errs.push("store.cluster", s.cluster.span(), msg);
    }
    for node in nodes {
        url("store.cluster", node, errs);
    }
    Servers::Cluster(nodes.iter().map(|n| n.get_ref().clone()).collect())
}

fn url(key: &str, url: &Spanned<String>, errs: &mut Errors) {
    let text = url.get_ref();
    let scheme = text.split_once("://").map(|(scheme, _)| scheme);
    let problem = match scheme {
        Some("redis" | "rediss") => text
            .as_str()
            .into_connection_info()
            .err()
            .map(|e| e.to_string()),
        _ => Some("expected redis://HOST:PORT/DB or rediss://… (TLS)".into()),
    };
    if let Some(problem) = problem {
        // The URL may hold a password: name the key, not the value.
        errs.push(key, url.span(), format!("not a Redis URL: {problem}"));
    }
}
