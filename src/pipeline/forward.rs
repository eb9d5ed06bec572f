//! Rewriting a request for the upstream and its response for the client, in place.

use std::net::{IpAddr, SocketAddr};

use http::header::{EXPECT, HOST};
use http::uri::Uri;
use http::{HeaderValue, Request, Response, Version};
use hyper::body::Incoming;

use super::{App, is_trusted};
use crate::body::Body;
use crate::problem::Problem;
use crate::upstream::{UpstreamError, set_forwarded, strip_hop_by_hop};

/// The client's request, made ready for an HTTP/1.1 upstream: origin-form URI, `Host` kept as
/// the client sent it, hop-by-hop headers dropped, X-Forwarded-* and the request id set.
pub fn upstream_request(
    app: &App,
    peer: SocketAddr,
    client: IpAddr,
    id: &HeaderValue,
    req: Request<Incoming>,
) -> Request<Body> {
    let (mut parts, body) = req.into_parts();
    if let Some(authority) = parts.uri.authority() {
        // HTTP/2 and absolute-form requests carry the host in the URI rather than in Host.
        if !parts.headers.contains_key(HOST) {
            if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                parts.headers.insert(HOST, host);
            }
        }
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = Uri::try_from(path).unwrap_or_else(|_| Uri::from_static("/"));
    }
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    // sluice already answered any `Expect: 100-continue` when it read the body.
    parts.headers.remove(EXPECT);
    let trusted = is_trusted(peer.ip(), &app.config.server.trusted_proxies);
    set_forwarded(&mut parts.headers, peer.ip(), trusted, client);
    parts
        .headers
        .insert(app.config.headers.request_id.clone(), id.clone());
    Request::from_parts(parts, Body::Incoming(body))
}

/// The upstream's response for the client: untouched but for hop-by-hop headers.
pub fn client_response(mut res: Response<Body>) -> Response<Body> {
    strip_hop_by_hop(res.headers_mut());
    res
}

impl From<UpstreamError> for Problem {
    fn from(e: UpstreamError) -> Problem {
        match e {
            UpstreamError::Refused => Problem::UpstreamRefused,
            UpstreamError::Reset => Problem::UpstreamReset,
            UpstreamError::BadResponse => Problem::UpstreamBadResponse,
            UpstreamError::NoHealthyTarget => Problem::NoHealthyUpstream,
        }
    }
}
