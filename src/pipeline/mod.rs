//! One request's way through sluice: route → (limits and guards) → forward → response headers.
//! `App` is the state shared by every worker; `Proxy` is one worker's view of it, with the
//! worker's own upstream pool and request-id counter.

mod client;
mod forward;
mod request_id;
mod route;

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use futures_util::FutureExt;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;

pub use client::{client_ip, is_trusted};
pub use request_id::RequestIds;
pub use route::{Routed, Router};

use crate::body::Body;
use crate::config::Config;
use crate::problem::Problem;
use crate::upstream::{Pool, Upstreams};

/// Everything the workers share: the config and the state that outlives one request.
#[derive(Debug)]
pub struct App {
    pub config: Config,
    pub router: Router,
    pub upstreams: Upstreams,
    /// Set when shutdown begins: readiness fails and new requests get 503.
    pub draining: AtomicBool,
    /// Client connections open now, across all workers.
    pub connections: AtomicUsize,
}

impl App {
    pub fn new(config: Config) -> App {
        App {
            router: Router::new(&config.routes),
            upstreams: Upstreams::new(&config.upstreams),
            config,
            draining: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
        }
    }

    /// Ready for traffic: not draining, and every upstream has a target not known to fail.
    pub fn ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed)
            && (0..self.config.upstreams.len()).all(|u| self.upstreams.healthy(u))
    }
}

/// One worker's handle on the app.
#[derive(Debug)]
pub struct Proxy {
    pub app: Arc<App>,
    pool: Pool,
    ids: RequestIds,
}

impl Proxy {
    pub fn new(app: Arc<App>, worker: usize) -> Proxy {
        Proxy {
            pool: Pool::new(&app.upstreams),
            ids: RequestIds::new(worker),
            app,
        }
    }

    /// Answers one request. Never fails: a panic inside becomes a 500 for this request only.
    pub async fn serve(&self, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
        let id = self
            .ids
            .pick(req.headers().get(&self.app.config.headers.request_id));
        let mut res = contain_panic(self.handle(peer, &id, req), &id).await;
        res.headers_mut()
            .insert(self.app.config.headers.request_id.clone(), id);
        res
    }

    async fn handle(
        &self,
        peer: SocketAddr,
        id: &HeaderValue,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let app = &*self.app;
        if app.draining.load(Ordering::Relaxed) {
            return problem(Problem::Draining, id);
        }
        let route = match app
            .router
            .route(&app.config.routes, req.method(), req.uri().path())
        {
            Routed::Route(i) => &app.config.routes[i],
            Routed::NotFound => return problem(Problem::NoRoute, id),
            Routed::MethodNotAllowed(_, allow) => {
                return problem(
                    Problem::MethodNotAllowed {
                        allow: allow.clone(),
                    },
                    id,
                );
            }
        };
        let client = client_ip(peer.ip(), req.headers(), &app.config.server.trusted_proxies);
        let req = forward::upstream_request(app, peer, client, id, req);
        match self.pool.send(&app.upstreams, route.upstream, req).await {
            Ok(res) => forward::client_response(res),
            Err(e) => {
                tracing::warn!(request_id = ?id, error = %e, upstream = %app.config.upstreams[route.upstream].name, "upstream failed");
                problem(e.into(), id)
            }
        }
    }

    /// The answer to every request on a connection over `max_connections`.
    pub fn overloaded(&self, req: &Request<Incoming>) -> Response<Body> {
        let id = self
            .ids
            .pick(req.headers().get(&self.app.config.headers.request_id));
        let mut res = problem(Problem::Overloaded, &id);
        res.headers_mut()
            .insert(self.app.config.headers.request_id.clone(), id);
        res
    }
}

/// Runs a request's future; a panic in it becomes a 500 for this request alone.
async fn contain_panic(
    handling: impl Future<Output = Response<Body>>,
    id: &HeaderValue,
) -> Response<Body> {
    AssertUnwindSafe(handling)
        .catch_unwind()
        .await
        .unwrap_or_else(|_| {
            tracing::error!(request_id = ?id, "request handler panicked");
            problem(Problem::Internal, id)
        })
}

fn problem(p: Problem, id: &HeaderValue) -> Response<Body> {
    p.into_response(id.to_str().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_while_handling_becomes_a_500_problem() {
        let id = HeaderValue::from_static("req-1");
        let res = contain_panic(async { panic!("bug") }, &id).await;
        assert_eq!(res.status(), 500);
        assert_eq!(
            res.headers()[http::header::CONTENT_TYPE],
            "application/problem+json"
        );
    }
}
