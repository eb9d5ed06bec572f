//! The head phase: what is refused from the request head alone, before routing. Shutdown has
//! begun (503); a head its connection could not measure as it came is over the limits (431);
//! the method is not upper-case, `Host` is missing, repeated or not a host, or the path cannot
//! be put in normal form (400). The path is normalized here, for routing and the upstream
//! alike, and the client's address worked out.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{Method, Request, Version};

use super::Ctx;
use crate::body::Body;
use crate::config;
use crate::pipeline::{ClientCert, client_ip};
use crate::problem::{Malformed, Problem};
use crate::{host, path};

/// The most header fields a request head may have, HTTP/1.1's (hyper's) and HTTP/2's alike.
const MAX_FIELDS: usize = 100;

/// Marks an HTTP/1.1 request whose head its connection could not measure as it arrived: it
/// was read while an earlier request was answered, or behind another head in one read.
#[derive(Debug, Clone, Copy)]
pub struct Unmeasured;

/// Marks a request that came over TLS (its `X-Forwarded-Proto` is `https`).
#[derive(Debug, Clone, Copy)]
pub struct Tls;

/// Marks a request made from a batch item: it belongs to a batch already accepted, so it runs
/// even once the proxy has begun to drain, and it has its batch's `Host`.
#[derive(Debug, Clone, Copy)]
pub struct FromBatch;

pub(crate) fn check(ctx: &mut Ctx<'_>, req: &mut Request<Body>) -> Result<(), Problem> {
    let app = &*ctx.proxy.app;
    let from_batch = req.extensions().get::<FromBatch>().is_some();
    if app.life.draining.load(Ordering::Relaxed) && !from_batch {
        return Err(Problem::Draining);
    }
    let unmeasured =
        req.version() == Version::HTTP_2 || req.extensions().get::<Unmeasured>().is_some();
    if unmeasured && !head_fits(req, &app.config.server) {
        return Err(Problem::HeadTooLarge);
    }
    if !is_upper_case(req.method()) {
        return Err(Problem::Malformed(Malformed::Method));
    }
    ctx.has_host = one_host(req, from_batch)?;
    match path::normalized(req.uri()) {
        Ok(None) => {}
        Ok(Some(uri)) => *req.uri_mut() = uri,
        Err(fault) => {
            let rule = match fault {
                path::Fault::StrayPercent => Malformed::Escape,
                path::Fault::Nul => Malformed::Nul,
                path::Fault::AboveRoot => Malformed::AboveRoot,
            };
            return Err(Problem::Malformed(rule));
        }
    }
    let trusted = &app.config.server.trusted_proxies;
    ctx.client = client_ip(ctx.peer.ip(), req.headers(), trusted);
    ctx.tls = req.extensions().get::<Tls>().is_some();
    ctx.cert = req.extensions().get::<Arc<ClientCert>>().cloned();
    Ok(())
}

/// Whether a head the connection did not measure as it arrived (HTTP/2, or an `Unmeasured`
/// HTTP/1.1 one) is within the limits of one it did: 100 fields, and `max_header_bytes`
/// counted as its HTTP/1.1 form would be. For HTTP/2, that form has `:authority` as its
/// `Host` line, and the cookie crumbs (RFC 9113 §8.2.3) joined into one line, as sent upstream.
fn head_fits(req: &Request<Body>, server: &config::Server) -> bool {
    let headers = req.headers();
    let h2 = req.version() == Version::HTTP_2;
    let crumbs = if h2 {
        headers.get_all(http::header::COOKIE).iter().count()
    } else {
        0
    };
    let joined = crumbs.saturating_sub(1);
    let host = match req.uri().authority() {
        Some(a) if h2 && !headers.contains_key(http::header::HOST) => {
            "host: \r\n".len() + a.as_str().len()
        }
        _ => 0,
    };
    if headers.len() - joined + usize::from(host > 0) > MAX_FIELDS {
        return false;
    }
    let target = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    let line = req.method().as_str().len() + target + " HTTP/1.1\r\n".len();
    // An HTTP/1.1 field may have been written without the space after its colon.
    let framing = if h2 { ": \r\n".len() } else { ":\r\n".len() };
    let fields: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + framing + value.len())
        .sum();
    // A crumb joined to the one before it is "; " where it had a name and a line of its own.
    let saved = joined * ("cookie: \r\n".len() - "; ".len());
    line + fields + host - saved + 2 <= server.max_header_bytes
}

/// Whether a method is upper-case letters, `-` and `_`, as nginx requires: methods are
/// case-sensitive, so `get` is not GET, and an upstream may read it either way.
fn is_upper_case(method: &Method) -> bool {
    method
        .as_str()
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
}

/// Whether the request has a `Host` header, which must be a host (RFC 9112 §3.2): one at
/// most, and one in an HTTP/1.1 request whose target names no host. A batch item has its
/// batch's, checked with the batch.
fn one_host(req: &Request<Body>, from_batch: bool) -> Result<bool, Problem> {
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(host), None) if host::is_valid(host.as_bytes()) => Ok(true),
        (Some(_), None) => Err(Problem::Malformed(Malformed::Host)),
        (Some(_), Some(_)) => Err(Problem::Malformed(Malformed::HostCount)),
        (None, _) => {
            let allowed =
                req.version() != Version::HTTP_11 || req.uri().authority().is_some() || from_batch;
            allowed
                .then_some(false)
                .ok_or(Problem::Malformed(Malformed::HostCount))
        }
    }
}
