//! The batch endpoint: `POST {batch.path}` with a JSON list of requests, answered `207` with
//! one response per item, in request order. Items run through the same pipeline as requests of
//! their own (routes, the batch's credentials, limits at one unit each, body checks), called
//! in-process; `depends_on` orders them, and a failed dependency answers `424`.

pub mod document;
mod parse;
mod run;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use serde::Serialize;
use tokio::time::{Instant, timeout_at};

pub use parse::{Item, parse};

use crate::body::Body;
use crate::body::read_whole;
use crate::media::is_json;
use crate::pipeline::{
    Answering, App, Caller, ClientCert, Endpoint, Proxy, authenticate, client_ip,
};
use crate::problem::{Deadline, Problem};

/// The 207's body.
#[derive(Serialize)]
struct Responses<'a> {
    responses: Vec<run::Answer<'a>>,
}

/// The batch endpoint, as the pipeline calls it once a request's head has passed.
#[derive(Debug)]
pub struct Batch;

impl Endpoint for Batch {
    fn path<'a>(&self, app: &'a App) -> Option<&'a str> {
        let batch = &app.config.batch;
        batch.enabled.then_some(batch.path.as_str())
    }

    fn answer<'a>(
        &'a self,
        proxy: &'a Proxy,
        peer: SocketAddr,
        req: Request<Body>,
    ) -> Answering<'a> {
        Box::pin(handle(proxy, peer, req))
    }
}

/// Answers a request to the batch endpoint.
pub async fn handle(
    proxy: &Proxy,
    peer: SocketAddr,
    mut req: Request<Body>,
) -> Result<Response<Body>, Problem> {
    let app = &*proxy.app;
    let batch = &app.config.batch;
    if req.method() != Method::POST {
        return Err(Problem::MethodNotAllowed {
            allow: HeaderValue::from_static("POST"),
        });
    }
    let caller = Caller {
        headers: req.headers(),
        ip: client_ip(peer.ip(), req.headers(), &app.config.server.trusted_proxies),
        cert: req.extensions().get::<Arc<ClientCert>>().map(|c| &**c),
    };
    authenticate(proxy, &[], &caller).await?;
    if !is_json(req.headers()) {
        return Err(Problem::UnsupportedMediaType {
            accepted: vec!["application/json".into()],
        });
    }
    let deadline = Instant::now() + app.config.server.request_timeout;
    // The items take the batch's Host, so it must be the one the batch named.
    crate::pipeline::host_from_authority(&mut req);
    let (parts, body) = req.into_parts();
    let bytes = match body {
        Body::Incoming(body) => timeout_at(deadline, read_whole(body, batch.max_body))
            .await
            .map_err(|_| Problem::TimedOut(Deadline::Body))??,
        Body::Full(Some(bytes)) => bytes,
        _ => Bytes::new(),
    };
    let items = parse(&bytes, &batch.path, batch.max_requests)?;
    let answers = run::run(proxy, peer, &parts, &items, batch.max_concurrency, deadline).await;
    let body =
        serde_json::to_vec(&Responses { responses: answers }).map_err(|_| Problem::Internal)?;
    let mut res = Response::new(Body::full(body));
    *res.status_mut() = StatusCode::MULTI_STATUS;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(res)
}
