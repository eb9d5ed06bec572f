//! The forward phase: the request rewritten in place for the upstream, its body read or
//! streamed within the route's deadline, and the upstream's answer made ready for the client.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;

use http::header::{CONTENT_LENGTH, COOKIE, EXPECT, HOST, HeaderMap, TRANSFER_ENCODING};
use http::uri::Uri;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use http_body::Body as _;
use tokio::time::{Instant, Sleep, sleep_until};
use tracing::Instrument;

use super::Ctx;
use crate::body::{self, Body, Counted, Progress, fired};
use crate::config::Route;
use crate::pipeline::{Proxy, credentials, is_trusted, trace};
use crate::problem::{Deadline, Limit, Malformed, Problem, UpstreamFault};
use crate::upstream::{Added, Hop, set_forwarded, strip_hop_by_hop};
use crate::{json, media};

/// Sends the request upstream as the route says; the answer, or why there is none.
/// A plain function: its future is `forward_by`'s, not one more level that would copy it.
pub(crate) fn forward<'a>(
    ctx: &'a mut Ctx<'_>,
    req: &'a mut Request<Body>,
) -> impl Future<Output = Result<Response<Body>, Problem>> + 'a {
    let timeout = ctx.proxy.app.config.routes[ctx.route].request_timeout;
    forward_by(ctx, req, Instant::now() + timeout)
}

/// [`forward`], within a deadline that began earlier (with a body already read). The request
/// is rewritten where it lies and its body taken; it goes down by reference, as a request
/// moved into each level's future would be copied at every level (it is 300 bytes).
pub(crate) async fn forward_by(
    ctx: &mut Ctx<'_>,
    req: &mut Request<Body>,
    deadline: Instant,
) -> Result<Response<Body>, Problem> {
    let app = &*ctx.proxy.app;
    let route = &app.config.routes[ctx.route];
    let added = prepare(ctx, route, req)?;
    credentials::strip_credentials(&app.config.auth, req.headers_mut());
    let upstream = &app.config.upstreams[route.upstream].name;
    let span = crate::telemetry::on().then(|| trace::upstream(upstream, req));
    let sending = send(ctx.proxy, ctx.route, route, req, &added, deadline);
    let res = match &span {
        None => sending.await?,
        Some(span) => {
            let res = sending.instrument(span.clone()).await;
            trace::upstream_answered(span, &res);
            res?
        }
    };
    ctx.rec.upstream_status = Some(res.status());
    Ok(res)
}

/// Makes the request head ready for an HTTP/1.1 upstream: origin-form URI, `Host` kept as the
/// client named it (`has_host`: whether it has one), hop-by-hop headers dropped; and the
/// fields sluice adds (X-Forwarded-*, the key's name, the request id), which the head gets
/// as it is written.
fn prepare<'a>(
    ctx: &Ctx<'a>,
    route: &Route,
    req: &mut Request<Body>,
) -> Result<Added<'a>, Problem> {
    let (app, peer, client, tls) = (&*ctx.proxy.app, ctx.peer, ctx.client, ctx.tls);
    if host_from_authority(req) {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        *req.uri_mut() = Uri::try_from(path).unwrap_or_else(|_| Uri::from_static("/"));
    } else if !ctx.has_host {
        let host = app.config.upstreams[route.upstream].host.clone();
        req.headers_mut().insert(HOST, host);
    }
    if req.version() == Version::HTTP_2 {
        join_cookies(req.headers_mut());
    }
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    strip_hop_by_hop(headers).map_err(|_| Problem::Malformed(Malformed::Coding))?;
    // sluice already answered any `Expect: 100-continue` when it read the body.
    headers.remove(EXPECT);
    let hop = Hop {
        peer: peer.ip(),
        peer_trusted: is_trusted(peer.ip(), &app.config.server.trusted_proxies),
        client,
        tls,
        key_name: ctx.who.map(|i| app.keys.name(i)),
        id: (&app.config.headers.request_id, ctx.id),
    };
    Ok(set_forwarded(headers, hop))
}

/// Joins the `Cookie` fields an HTTP/2 client may send one per cookie into the one line that
/// HTTP/1.1 takes (RFC 9113 §8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    let mut lines = headers.get_all(COOKIE).iter();
    let (Some(first), Some(second)) = (lines.next(), lines.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for line in std::iter::once(second).chain(lines) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(line.as_bytes());
    }
    if let Ok(joined) = HeaderValue::from_bytes(&joined) {
        headers.insert(COOKIE, joined);
    }
}

/// Sets `Host` from the URI's authority, if it has one: HTTP/2 and absolute-form requests
/// carry the host there, and it wins over a Host header (RFC 9112 §3.2.2); any user info stays
/// out. Whether there was one.
pub fn host_from_authority<B>(req: &mut Request<B>) -> bool {
    let Some(authority) = req.uri().authority() else {
        return false;
    };
    let host = match authority.port() {
        Some(port) => format!("{}:{port}", authority.host()),
        None => authority.host().to_string(),
    };
    if let Ok(host) = HeaderValue::try_from(host) {
        req.headers_mut().insert(HOST, host);
    }
    true
}

/// Sends the request upstream and waits for the answer's head, all within the route's
/// `request_timeout`, which the answer's body must then end by too. A JSON body the route
/// validates is read whole first; others stream. A body already in memory (a batch item's)
/// is checked the same way.
async fn send(
    proxy: &Proxy,
    r: usize,
    route: &Route,
    req: &mut Request<Body>,
    added: &Added<'_>,
    deadline: Instant,
) -> Result<Response<Body>, Problem> {
    // One timer for the whole request: the body read, the answer's head, the answer's body.
    let mut deadline = Box::pin(sleep_until(deadline));
    let validate = route.validate_json && media::is_json(req.headers());
    let (body, progress) = match std::mem::replace(req.body_mut(), Body::Empty) {
        Body::Incoming(body) if validate => {
            let reading = pin!(body::read_whole(body, route.max_body));
            let bytes = before(&mut deadline, reading)
                .await
                .ok_or(Problem::TimedOut(Deadline::Body))??;
            json::validate(&bytes)?;
            (Body::full(bytes), None)
        }
        // No body at all (a GET): nothing to count, and an empty body can be sent again.
        Body::Incoming(body) if body.is_end_stream() => (Body::Empty, None),
        Body::Incoming(body) => {
            // A length not given (HTTP/2, or chunked) is chunked upstream, said outright: for
            // a GET or HEAD, hyper would otherwise send no body at all.
            if !req.headers().contains_key(CONTENT_LENGTH) {
                let chunked = HeaderValue::from_static("chunked");
                req.headers_mut().insert(TRANSFER_ENCODING, chunked);
            }
            let progress = Arc::new(Progress::default());
            let counted = Counted::new(body, route.max_body, progress.clone());
            (Body::Counted(counted), Some(progress))
        }
        Body::Full(Some(bytes)) => {
            if bytes.len() as u64 > route.max_body {
                let max = route.max_body;
                return Err(Problem::TooLarge(Limit::Body { max }));
            }
            if validate {
                json::validate(&bytes)?;
            }
            (Body::full(bytes), None)
        }
        other => (other, None),
    };
    let app = &*proxy.app;
    let unfinished = || progress.as_ref().is_some_and(|p| !p.complete());
    let client_fault = || {
        progress
            .as_ref()
            .and_then(|p| p.fault(route.max_body))
            .map(Problem::from)
    };
    let shard = app.metrics.shard(proxy.worker);
    let sending = Instant::now();
    *req.body_mut() = body;
    let forwarding = pin!(proxy.pool.send(
        &app.upstreams,
        route.upstream,
        req,
        added,
        sending.into_std()
    ));
    let mut outcome = before(&mut deadline, forwarding).await;
    // In place: the answer (200 bytes) is copied at every move.
    if let Some(Ok(res)) = &mut outcome
        && let Err(fault) = for_client(res)
    {
        outcome = Some(Err(fault));
    }
    match outcome {
        Some(Ok(_)) => shard.upstream_latency(r, sending.elapsed()),
        Some(Err(e)) if client_fault().is_none() => {
            shard.upstream_error(route.upstream, e);
        }
        None if !unfinished() => shard.upstream_error(route.upstream, UpstreamFault::TimedOut),
        _ => {}
    }
    match outcome {
        Some(Ok(mut res)) => {
            if let Body::Upstream(body) = res.body_mut() {
                body.end_by(deadline);
            }
            Ok(res)
        }
        Some(Err(e)) => Err(client_fault().unwrap_or_else(|| {
            let upstream = &app.config.upstreams[route.upstream].name;
            tracing::warn!(error = %e, %upstream, "upstream failed");
            e.problem(app.config.server.timeout_status)
        })),
        None if unfinished() => Err(Problem::TimedOut(Deadline::Body)),
        None => Err(UpstreamFault::TimedOut.problem(app.config.server.timeout_status)),
    }
}

/// `work`'s output, or `None` if `deadline` fires first. `work` is pinned where the caller
/// made it: a future is copied each time it is moved, and this one can be a kilobyte.
fn before<'a, F: Future>(
    deadline: &'a mut Pin<Box<Sleep>>,
    mut work: Pin<&'a mut F>,
) -> impl Future<Output = Option<F::Output>> + 'a {
    poll_fn(move |cx| match work.as_mut().poll(cx) {
        Poll::Ready(out) => Poll::Ready(Some(out)),
        Poll::Pending if fired(deadline, cx) => Poll::Ready(None),
        Poll::Pending => Poll::Pending,
    })
}

/// The upstream's answer for the client: untouched but for hop-by-hop headers and the framing
/// sluice gives it. One that cannot be passed on as it was meant is a bad response.
fn for_client(res: &mut Response<Body>) -> Result<(), UpstreamFault> {
    // sluice never sends `Upgrade` upstream, so a 101 answers nothing it asked.
    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
        return Err(UpstreamFault::BadResponse);
    }
    let framing = strip_hop_by_hop(res.headers_mut());
    // A coding sluice would drop matters only where a body follows (not HEAD, 204, 304).
    if framing.is_err() && !res.body().is_end_stream() {
        return Err(UpstreamFault::BadResponse);
    }
    if res.status() == StatusCode::NO_CONTENT {
        res.headers_mut().remove(CONTENT_LENGTH); // RFC 9110 §8.6; hyper drops it on HTTP/1.1 only
    }
    // sluice speaks its own HTTP version to the client, whatever the upstream's.
    *res.version_mut() = Version::HTTP_11;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Work that uses up the task's whole cooperative budget on every poll, and never ends.
    fn greedy() -> impl Future<Output = ()> {
        poll_fn(|cx| {
            loop {
                let unit = pin!(tokio::task::consume_budget());
                if unit.poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
        })
    }

    #[tokio::test]
    async fn the_deadline_is_seen_even_past_work_that_uses_up_the_budget() {
        let mut deadline = Box::pin(sleep_until(Instant::now() + Duration::from_millis(20)));
        let work = pin!(greedy());
        let outer = tokio::time::timeout(Duration::from_secs(2), before(&mut deadline, work));
        assert_eq!(outer.await.expect("the deadline was not seen"), None);
    }
}
