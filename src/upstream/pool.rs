//! A worker's keep-alive connections to upstream targets. Each worker has its own pool, so a
//! request never waits on another core. An HTTP/1.1 connection is used by one request at a
//! time, in the request's own task (`exchange.rs`); it goes back to its slot when the answer's
//! body has been read to the end, and is dropped (closed) otherwise; an HTTP/2 one
//! (an `https://` upstream that offers it) is shared by every request to its target.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::uri::{Authority, Scheme, Uri};
use http::{Request, Response};
use hyper::client::conn::http2;

use super::connect::{Failed, Sender, connect};
use super::exchange::{Lost, exchange};
use super::headers::Added;
use super::{Upstreams, retry};
use crate::body::{Answer, Body, Recycle};
use crate::config::Target;
use crate::h1::{Conn, Reader};
use crate::metrics::Metrics;
use crate::problem::UpstreamFault;

/// Idle connections kept per target and worker; beyond this a finished connection is closed.
const MAX_IDLE: usize = 256;

/// One worker's pool: an idle stack per (upstream, target).
#[derive(Debug)]
pub struct Pool {
    slots: Vec<Vec<Arc<Slot>>>,
}

#[derive(Debug)]
struct Slot {
    idle: Mutex<Idle>,
    /// Where an answer cut off at its deadline is counted.
    metrics: Arc<Metrics>,
    worker: usize,
    upstream: usize,
    name: String,
}

#[derive(Debug, Default)]
struct Idle {
    /// Connections, each with the time it will have rested long enough to be suspect
    /// (`retry::rested`); the last one put back is taken first.
    stack: Vec<(Box<Conn>, Instant)>,
    /// What this worker has seen of the target closing kept-alive connections.
    trust: retry::Trust,
    /// The target's HTTP/2 connection, shared, while it is open.
    shared: Option<http2::SendRequest<Body>>,
}

impl Slot {
    /// Counts and logs an answer cut off at the request's deadline.
    fn cut_off(&self) {
        let shard = self.metrics.shard(self.worker);
        shard.upstream_error(self.upstream, UpstreamFault::TimedOut);
        tracing::warn!(
            upstream = %self.name,
            "upstream answer cut off: it had not ended within request_timeout"
        );
    }

    /// Counts and logs an answer the upstream broke off mid-body: the client got a part.
    fn broke_off(&self) {
        let shard = self.metrics.shard(self.worker);
        shard.upstream_error(self.upstream, UpstreamFault::Reset);
        tracing::warn!(
            upstream = %self.name,
            "upstream answer broken off: the upstream closed or reset it before its end"
        );
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle connection for a request sent at `now`, and whether the request is worth a copy
    /// to send again (`retry::Trust::wary`).
    fn take(&self, now: Instant) -> Option<(Box<Conn>, bool)> {
        let mut idle = self.idle();
        let (conn, rested) = idle.stack.pop()?;
        Some((conn, idle.trust.wary(now, rested)))
    }

    /// The target's shared HTTP/2 connection, if it has one open.
    fn shared(&self) -> Option<http2::SendRequest<Body>> {
        let mut idle = self.idle();
        match &idle.shared {
            Some(sender) if !sender.is_closed() => Some(sender.clone()),
            Some(_) => idle.shared.take().and(None),
            None => None,
        }
    }

    fn share(&self, sender: &http2::SendRequest<Body>) {
        self.idle().shared = Some(sender.clone());
    }

    fn put(&self, conn: Box<Conn>) {
        let rested = retry::rested(Instant::now());
        let mut idle = self.idle();
        if idle.stack.len() < MAX_IDLE {
            idle.stack.push((conn, rested));
        }
    }

    /// What follows a request lost on a connection taken from here, which the upstream closed
    /// before its answer: the request's `copy`, to send on a new connection, if it has one.
    fn retry(
        &self,
        copy: Option<Request<Body>>,
        now: Instant,
    ) -> Result<Request<Body>, UpstreamFault> {
        self.closed(now);
        let copy = copy.ok_or(UpstreamFault::Reset)?;
        let upstream = &self.name;
        tracing::debug!(%upstream, "reused connection found closed; sending again");
        Ok(copy)
    }

    /// Notes that the upstream closed a connection taken from here by itself.
    fn closed(&self, at: Instant) {
        self.idle().trust.closed(at);
    }
}

/// The outcome of trying one target.
enum Attempt {
    /// No connection could be made; the request was not sent. The fault to answer if no
    /// target takes it, when it is not a refusal (a failed TLS handshake).
    Unreachable(Option<UpstreamFault>),
    Failed(UpstreamFault),
}

impl Pool {
    /// Worker `worker`'s pool; it counts answers cut off at their deadline in `metrics`.
    pub fn new(upstreams: &Upstreams, metrics: &Arc<Metrics>, worker: usize) -> Pool {
        let slot = |upstream| Slot {
            idle: Mutex::default(),
            metrics: metrics.clone(),
            worker,
            upstream,
            name: upstreams.name(upstream).to_string(),
        };
        let slots = upstreams
            .shape()
            .into_iter()
            .enumerate()
            .map(|(u, n)| (0..n).map(|_| Arc::new(slot(u))).collect())
            .collect();
        Pool { slots }
    }

    /// Sends `req`, with the fields sluice `added`, to upstream `u` at `now`: round robin over
    /// its targets, moving on to the next target while connections fail. The request must
    /// already be in origin form; its body is taken when it is sent.
    pub async fn send(
        &self,
        ups: &Upstreams,
        u: usize,
        req: &mut Request<Body>,
        added: &Added<'_>,
        now: Instant,
    ) -> Result<Response<Body>, UpstreamFault> {
        let mut fault = UpstreamFault::NoHealthyTarget;
        for t in ups.plan(u) {
            match self.send_to(ups, u, t, req, added, now).await {
                Ok(res) => return Ok(res),
                Err(Attempt::Failed(e)) => return Err(e),
                Err(Attempt::Unreachable(why)) => {
                    ups.mark_down(u, t);
                    // A failed handshake says more than a refusal of another target.
                    if fault != UpstreamFault::Tls {
                        fault = why.unwrap_or(UpstreamFault::Refused);
                    }
                }
            }
        }
        Err(fault)
    }

    /// Closes the idle connections whose upstream has closed them meanwhile, rather than hold
    /// their sockets until they are next taken. Called every second: a look at a connection
    /// that has seen nothing costs no system call.
    pub fn tidy(&self) {
        for slot in self.slots.iter().flatten() {
            let mut idle = slot.idle();
            let before = idle.stack.len();
            idle.stack.retain_mut(|(conn, _)| !conn.closed_while_idle());
            if idle.stack.len() < before {
                idle.trust.closed(Instant::now());
            }
        }
    }

    async fn send_to(
        &self,
        ups: &Upstreams,
        u: usize,
        t: usize,
        req: &mut Request<Body>,
        added: &Added<'_>,
        now: Instant,
    ) -> Result<Response<Body>, Attempt> {
        let slot = &self.slots[u][t];
        // The HTTP/2 and connecting paths are boxed: their futures (a TLS handshake's among
        // them) are kilobytes, and unboxed they would be copied with this future at every
        // move, on every request, whether or not it takes them.
        if let Some(shared) = slot.shared() {
            return Box::pin(send_h2(slot, shared, ups.target(u, t), req, added)).await;
        }
        while let Some((mut conn, wary)) = slot.take(now) {
            if conn.closed_while_idle() {
                slot.closed(now);
                continue;
            }
            let copy = if wary { retry::replayable(req) } else { None };
            match send_h1(slot, conn, req, added).await {
                Ok(res) => {
                    if wary {
                        slot.idle().trust.kept_alive(); // only then: no second lock per request
                    }
                    return Ok(res);
                }
                // Written and lost: only a copy can go again, on a new connection.
                Err(Lost::Closed) => {
                    *req = slot.retry(copy, now).map_err(Attempt::Failed)?;
                    break;
                }
                Err(Lost::Fault(fault)) => return Err(Attempt::Failed(fault)),
            }
        }
        let connecting = connect(ups.target(u, t), ups.tls(u, t), ups.connect_timeout(u));
        let conn = match Box::pin(connecting).await {
            Ok(Sender::H1(conn)) => conn,
            Ok(Sender::H2(sender)) => {
                slot.share(&sender);
                return Box::pin(send_h2(slot, sender, ups.target(u, t), req, added)).await;
            }
            Err(Failed::Unreachable(e)) => {
                tracing::debug!(upstream = %slot.name, error = %e, "upstream target unreachable");
                return Err(Attempt::Unreachable(None));
            }
            Err(Failed::Tls(e)) => {
                let upstream = &slot.name;
                tracing::warn!(%upstream, error = %e, "upstream TLS handshake failed");
                return Err(Attempt::Unreachable(Some(UpstreamFault::Tls)));
            }
        };
        send_h1(slot, conn, req, added)
            .await
            .map_err(|lost| match lost {
                Lost::Closed => Attempt::Failed(UpstreamFault::Reset),
                Lost::Fault(fault) => Attempt::Failed(fault),
            })
    }
}

/// Sends `req`, with the fields sluice `added`, on `conn`, an HTTP/1.1 connection from or for
/// `slot`; the answer's body, read as the client takes it, gives the connection back to `slot`
/// once it has ended.
async fn send_h1(
    slot: &Arc<Slot>,
    mut conn: Box<Conn>,
    req: &mut Request<Body>,
    added: &Added<'_>,
) -> Result<Response<Body>, Lost> {
    let answer = exchange(&mut conn, req, added).await?;
    let reader = Reader::new(conn, answer.framing, answer.keep_alive);
    let mut res = Response::new(Body::Upstream(Answer::h1(reader, slot.clone())));
    *res.status_mut() = answer.status;
    *res.version_mut() = answer.version;
    *res.headers_mut() = answer.headers;
    Ok(res)
}

/// Sends `req`, with the fields sluice `added`, on `slot`'s shared HTTP/2 connection: its
/// target in the URI, as HTTP/2 asks (`:scheme` and `:authority`), the `Host` it named
/// becoming the authority.
async fn send_h2(
    slot: &Arc<Slot>,
    mut sender: http2::SendRequest<Body>,
    target: &Target,
    req: &mut Request<Body>,
    added: &Added<'_>,
) -> Result<Response<Body>, Attempt> {
    let mut req = std::mem::replace(req, Request::new(Body::Empty));
    added.insert_into(req.headers_mut());
    let authority = req
        .headers_mut()
        .remove(http::header::HOST)
        .and_then(|host| Authority::try_from(host.as_bytes()).ok())
        .or_else(|| Authority::try_from(target.authority()).ok());
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(Scheme::HTTPS);
    parts.authority = authority;
    *req.uri_mut() =
        Uri::from_parts(parts).map_err(|_| Attempt::Failed(UpstreamFault::BadResponse))?;
    *req.version_mut() = http::Version::HTTP_2;
    match sender.send_request(req).await {
        Ok(res) => Ok(res.map(|inner| Body::Upstream(Answer::h2(inner, slot.clone())))),
        Err(e) => Err(Attempt::Failed(classify(&e))),
    }
}

fn classify(e: &hyper::Error) -> UpstreamFault {
    if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        UpstreamFault::BadResponse
    } else {
        UpstreamFault::Reset
    }
}

impl Recycle for Slot {
    fn put(&self, conn: Box<Conn>) {
        Slot::put(self, conn);
    }

    fn cut_off(&self) {
        Slot::cut_off(self);
    }

    fn broke_off(&self) {
        Slot::broke_off(self);
    }
}
