//! The idempotency phase (draft-ietf-httpapi-idempotency-key-header-06), on a route with
//! `[routes.idempotency]`: a request with an `Idempotency-Key` has its body read whole and
//! fingerprinted; the first with a key is forwarded and its answer kept (unless 5xx or 429),
//! a retry gets that answer again (`Idempotent-Replayed: true`), a duplicate still in flight
//! 409, the key with another request 422. A request without the header costs a lookup.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::HeaderName;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;
use std::sync::Arc;
use tokio::time::{Instant, timeout_at};

use super::{Ctx, forward};
use crate::body::{self, Body, Resumed};
use crate::config::{Idempotency, OnError};
use crate::idempotency::{self as keys, Answer, Begun, Fingerprint, Lock, Outcome, Scope};
use crate::pipeline::limits::client_key_under;
use crate::problem::{Deadline, KeyFault, Limit, Problem, UpstreamFault};

static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
static REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// How much longer than the route's deadline a key stays locked: a lock outlives its request
/// only when the replica holding it is gone.
const LOCK_MARGIN: Duration = Duration::from_secs(1);

/// The key's scope, if the request carries a key this route takes; a missing (where
/// required) or malformed key is refused.
pub(super) fn check(ctx: &Ctx<'_>, req: &Request<Body>) -> Result<Option<Scope>, Problem> {
    let app = &*ctx.proxy.app;
    let route = &app.config.routes[ctx.route];
    let Some(conf) = &route.idempotency else {
        return Ok(None);
    };
    if !conf.applies_to(req.method()) {
        return Ok(None);
    }
    let mut values = req.headers().get_all(&IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return match conf.required {
            true => Err(Problem::IdempotencyKeyMissing),
            false => Ok(None),
        };
    };
    if values.next().is_some() {
        return Err(Problem::IdempotencyKeyMalformed(KeyFault::Repeated));
    }
    let key = keys::parse(value).map_err(Problem::IdempotencyKeyMalformed)?;
    let own = ctx.who.and_then(|k| app.config.auth.keys[k].policy);
    let mut buf = [0u8; 17];
    let caller = ctx.caller(req.headers());
    let client = client_key_under(&app.config, own.or(route.policy), &caller, &mut buf);
    Ok(Some(Scope::new(&client, &route.path, key)))
}

/// Forwards a request that carries a key (`scope`), or answers it from what the key holds.
pub(super) async fn forward_keyed(
    ctx: &mut Ctx<'_>,
    req: &mut Request<Body>,
    scope: Scope,
) -> Result<Response<Body>, Problem> {
    let app = ctx.proxy.app.clone();
    let route = &app.config.routes[ctx.route];
    let Some(conf) = &route.idempotency else {
        return forward::forward(ctx, req).await;
    };
    let deadline = Instant::now() + route.request_timeout;
    let body = std::mem::replace(req.body_mut(), Body::Empty);
    let bytes = timeout_at(deadline, whole(body, route.max_body))
        .await
        .map_err(|_| Problem::TimedOut(Deadline::Body))??;
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let fingerprint = Fingerprint::new(req.method(), target, &bytes);
    if !bytes.is_empty() {
        *req.body_mut() = Body::full(bytes);
    }
    let lock = route.request_timeout + LOCK_MARGIN;
    let store = &app.idempotency;
    let lock = match store.begin(scope, fingerprint, lock).await {
        Ok((Begun::Fresh, Some(lock))) => lock,
        Ok((Begun::Fresh, None)) => return Err(Problem::Internal),
        Ok((Begun::InFlight, _)) => {
            store.count(Outcome::InFlight);
            return Err(Problem::IdempotencyKeyInFlight);
        }
        Ok((Begun::Mismatch(m), _)) => {
            store.count(Outcome::Mismatch);
            return Err(Problem::IdempotencyKeyReused(m));
        }
        Ok((Begun::Replay(answer), _)) => {
            store.count(Outcome::Replayed);
            return Ok(replay(answer));
        }
        Err(keys::Unavailable) if app.config.store.on_error == OnError::Allow => {
            return forward::forward_by(ctx, req, deadline).await;
        }
        Err(keys::Unavailable) => return Err(Problem::StoreUnavailable),
    };
    let held = Held {
        store: &app.idempotency,
        lock: Some(lock),
    };
    let res = forward::forward_by(ctx, req, deadline).await?;
    keep(held, res, conf, app.config.server.timeout_status).await
}

/// A request body whole, within `max` bytes (413 past it).
async fn whole(body: Body, max: u64) -> Result<Bytes, Problem> {
    let bytes = match body {
        Body::Incoming(b) if b.is_end_stream() => Bytes::new(),
        Body::Incoming(b) => body::read_whole(b, max).await?,
        Body::Full(Some(bytes)) => bytes,
        Body::Empty | Body::Full(None) => Bytes::new(),
        // Bodies sluice makes are full or empty; any other is read the same way.
        other => other
            .collect()
            .await
            .map_err(|_| Problem::UnreadableBody)?
            .to_bytes(),
    };
    if bytes.len() as u64 > max {
        return Err(Problem::TooLarge(Limit::Body { max }));
    }
    Ok(bytes)
}

/// A stored answer, again.
fn replay(answer: Answer) -> Response<Body> {
    let mut res = Response::new(Body::full(answer.body));
    *res.status_mut() = answer.status;
    *res.headers_mut() = answer.headers;
    res.headers_mut()
        .insert(REPLAYED.clone(), HeaderValue::from_static("true"));
    res
}

/// Whether an answer is kept: not a 5xx or a 429, which invite a retry.
fn storable(status: StatusCode) -> bool {
    !status.is_server_error() && status != StatusCode::TOO_MANY_REQUESTS
}

/// Keeps the upstream's answer for the key `held` holds, read whole up to `max_stored_body`,
/// before the client gets it: a client that has its answer finds the key complete. A larger
/// one is passed on as it comes, and the key released.
async fn keep(
    mut held: Held<'_>,
    res: Response<Body>,
    conf: &Idempotency,
    timeout_status: StatusCode,
) -> Result<Response<Body>, Problem> {
    if !storable(res.status()) {
        return Ok(res);
    }
    let (parts, mut body) = res.into_parts();
    let mut read = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| match e {
            body::Error::Cut => UpstreamFault::TimedOut.problem(timeout_status),
            body::Error::TooLarge | body::Error::Broken(_) | body::Error::BrokenOff(_) => {
                Problem::UpstreamReset
            }
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers are not passed on
        };
        if (read.len() + data.len()) as u64 > conf.max_stored_body {
            read.extend_from_slice(&data);
            let head = Some(read.freeze());
            let rest = Body::Resumed(Box::new(Resumed { head, rest: body }));
            return Ok(Response::from_parts(parts, rest));
        }
        read.extend_from_slice(&data);
    }
    let bytes = read.freeze();
    if let Some(lock) = held.lock.take() {
        let answer = Answer {
            status: parts.status,
            headers: parts.headers.clone(),
            body: bytes.clone(),
        };
        held.store.complete(lock, answer, conf.ttl).await;
    }
    Ok(Response::from_parts(parts, Body::full(bytes)))
}

/// A key locked for this request; released when dropped unless its answer was stored (the
/// request failed, or was abandoned), so that a retry goes through.
struct Held<'a> {
    store: &'a Arc<keys::Store>,
    lock: Option<Lock>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        match self.lock.take() {
            Some(lock) => {
                self.store.count(Outcome::NotStored);
                self.store.release(lock);
            }
            None => self.store.count(Outcome::Stored),
        }
    }
}
