//! One request's phases, in the order that decides which status wins when several apply. Each
//! may answer early; a new phase is a file here and a line in [`run`].
//!
//! | phase | answers early with |
//! | --- | --- |
//! | [`head`] | 503 (draining), 431 (an HTTP/2 or unmeasured head), 400 (`Host`, path) |
//! | (the batch endpoint takes its own path here) | |
//! | [`route`] | 404, 405 |
//! | [`auth`] | 429 (too many failed credentials), 401, 403 |
//! | [`limit`] | 429 |
//! | [`payload`] | 413 (declared length), 415 |
//! | [`idempotency`] | 400 (`Idempotency-Key` missing or malformed), 413 / 408 (the body, read to fingerprint it), 409, 422, a stored answer |
//! | [`forward`] | 400 (transfer coding), 408 / 413 / 400 (the body), 502, 503, 408 or 504 |
//! | [`respond`] | every answer: problem, rate-limit headers, request id, `HEAD` |

pub(crate) mod auth;
pub(crate) mod forward;
pub(crate) mod head;
mod idempotency;
mod limit;
mod payload;
pub(crate) mod respond;
mod route;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Request, Response};

use super::Proxy;
use super::record::Record;
use crate::body::Body;
use crate::config::{AuthMode, KeySource};
use crate::pipeline::{App, Caller, ClientCert};
use crate::problem::Problem;

/// What the phases know of one request as it goes.
pub(crate) struct Ctx<'a> {
    pub proxy: &'a Proxy,
    pub peer: SocketAddr,
    /// The request id it is answered and logged under.
    pub id: &'a HeaderValue,
    /// What is counted and logged of it.
    pub rec: &'a mut Record,
    /// The client's address (the peer's, or the one a trusted proxy reports).
    pub client: IpAddr,
    /// Whether the request named its `Host`.
    pub has_host: bool,
    /// Its route, once routed.
    pub route: usize,
    /// The `[[auth.keys]]` entry that presented itself.
    pub who: Option<usize>,
    /// Whether the request came over TLS.
    pub tls: bool,
    /// The certificate the client presented over TLS.
    pub cert: Option<Arc<ClientCert>>,
}

impl<'a> Ctx<'a> {
    /// Who the request says it is, for the limits.
    pub fn caller<'h>(&'h self, headers: &'h HeaderMap) -> Caller<'h> {
        Caller {
            headers,
            ip: self.client,
            cert: self.cert.as_deref(),
        }
    }
}

/// A refusal before the limits: it costs the client nothing, and its answer shows where the
/// client stands under `policy`, the one it would have counted under.
pub(crate) struct Refused {
    pub policy: Option<usize>,
    pub problem: Problem,
}

/// The policy whose standing a refusal may show: not, under `api_keys`, one keyed by a header
/// the client names, which would show the standing of whatever value it sends.
fn shown(app: &App, policy: Option<usize>) -> Option<usize> {
    policy.filter(|&i| {
        app.config.auth.mode == AuthMode::None
            || !matches!(app.config.policies[i].key, KeySource::Header(_))
    })
}

/// The phases, in order, for a request from `peer` answered under `id`. An `async` block, not
/// an `async fn`, for the reason `Proxy::answer` gives.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn holds its arguments twice"
)]
pub(crate) fn run<'a>(
    proxy: &'a Proxy,
    peer: SocketAddr,
    id: &'a HeaderValue,
    rec: &'a mut Record,
    mut req: Request<Body>,
) -> impl Future<Output = Result<Response<Body>, Problem>> + 'a {
    async move {
        let ctx = &mut Ctx {
            proxy,
            peer,
            id,
            rec,
            client: peer.ip(),
            has_host: false,
            route: 0,
            who: None,
            tls: false,
            cert: None,
        };
        head::check(ctx, &mut req)?;
        if let Some(endpoint) = ctx.proxy.endpoint_for(req.uri().path()) {
            ctx.rec.route = ctx.proxy.app.metrics.batch_route();
            return endpoint.answer(ctx.proxy, ctx.peer, req).await;
        }
        let admitted = match route::find(ctx, &req) {
            Ok(()) => auth::check(ctx, req.headers()).await,
            Err(refused) => Err(refused),
        };
        if let Err(refused) = admitted {
            return Err(respond::refused(ctx, refused, req.headers()).await);
        }
        limit::check(ctx, req.headers()).await?;
        payload::check(ctx, &req)?;
        // Boxed, so that requests answered before this point (a 429) move a small future.
        match idempotency::check(ctx, &req)? {
            None => Box::pin(forward::forward(ctx, &mut req)).await,
            Some(scope) => Box::pin(idempotency::forward_keyed(ctx, &mut req, scope)).await,
        }
    }
}
