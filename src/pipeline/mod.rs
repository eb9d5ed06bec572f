//! One request's way through sluice. [`Proxy::serve_request`] runs the phases of
//! `phase` in order (head → route → auth → limit → payload → idempotency → forward), each
//! able to answer early, and the respond phase makes every outcome the client's answer.
//!
//! - [`App`] (`app.rs`): the state every worker shares, one generation per config.
//! - [`Proxy`]: one worker's view of it, with the worker's own upstream pool and request ids.
//! - `router.rs`, `credentials.rs`, `limits.rs`, `client.rs`, `request_id.rs`: what the phases
//!   look things up with — routes, keys, the limiter and its headers, the client's address.
//! - `record.rs`: what is counted and logged of each request; the log line waits for the end of
//!   the answer's body ([`AccessLine`]). `trace.rs`: its spans, when traces are on.
//! - [`Endpoint`]: a path answered whole after the head phase (the batch endpoint), so that
//!   the pipeline does not name what sits above it.

mod app;
mod client;
mod credentials;
mod limits;
mod phase;
mod record;
mod request_id;
mod router;
mod trace;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::Either;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as _;
use hyper::body::Incoming;
use tracing::Instrument;

pub use app::{App, Lifecycle};
pub use client::{client_ip, is_trusted};
pub use credentials::{ClientCert, Keys, X_API_KEY, presented_key};
pub use limits::{Caller, Limits, Verdict};
pub use phase::forward::host_from_authority;
pub use phase::head::{FromBatch, Tls, Unmeasured};
pub use request_id::RequestIds;
pub use router::{Routed, Router};

use crate::body::Body;
use crate::problem::Problem;
use crate::upstream::Pool;
use phase::respond;
pub use record::AccessLine;
use record::{Record, Tracked};

/// An answer's future, boxed: what an [`Endpoint`] returns.
pub type Answering<'a> = Pin<Box<dyn Future<Output = Result<Response<Body>, Problem>> + Send + 'a>>;

/// A path answered whole once the request's head has passed: the batch endpoint.
pub trait Endpoint: Send + Sync + std::fmt::Debug {
    /// The path it answers, if it is on (`batch.path`).
    fn path<'a>(&self, app: &'a App) -> Option<&'a str>;
    /// Answers a request to its path.
    fn answer<'a>(
        &'a self,
        proxy: &'a Proxy,
        peer: SocketAddr,
        req: Request<Body>,
    ) -> Answering<'a>;
}

/// Credentials checked as the auth phase checks them, for an endpoint that checks its own
/// (the batch, before its items run).
pub use phase::auth::authenticate;

/// One worker's handle on the app.
#[derive(Debug)]
pub struct Proxy {
    pub app: Arc<App>,
    pool: Pool,
    ids: RequestIds,
    /// This worker's index: its metrics shard.
    worker: usize,
    endpoint: Option<Arc<dyn Endpoint>>,
}

impl Proxy {
    pub fn new(app: Arc<App>, worker: usize) -> Proxy {
        Proxy {
            pool: Pool::new(&app.upstreams, &app.metrics, worker),
            ids: RequestIds::new(worker),
            worker,
            app,
            endpoint: None,
        }
    }

    /// Closes idle upstream connections that their upstream has closed (see [`Pool::tidy`]).
    pub fn tidy(&self) {
        self.pool.tidy();
    }

    /// This proxy, handing requests to `endpoint`'s path to it.
    pub fn with_endpoint(mut self, endpoint: Arc<dyn Endpoint>) -> Proxy {
        self.endpoint = Some(endpoint);
        self
    }

    /// The endpoint whose path `path` is, if any.
    fn endpoint_for(&self, path: &str) -> Option<&dyn Endpoint> {
        let endpoint = self.endpoint.as_deref()?;
        (endpoint.path(&self.app) == Some(path)).then_some(endpoint)
    }

    /// Answers one request. Never fails: a panic inside becomes a 500 for this request only.
    /// The request's access-log line comes with the answer: the connection writes it once the
    /// body has gone out, with the bytes it sent. A plain function, so that the future the
    /// connection holds is no larger than needed.
    pub fn serve(
        &self,
        peer: SocketAddr,
        req: Request<Incoming>,
    ) -> impl Future<Output = (Response<Body>, Option<AccessLine>)> + '_ {
        self.traced(peer, req.map(Body::Incoming), false)
    }

    /// Answers one request whatever its body: a client's, or a batch item's made in memory.
    /// Its access-log line is written at once, with the length the answer announces.
    /// A plain function, as `serve` is.
    pub fn serve_request(
        &self,
        peer: SocketAddr,
        req: Request<Body>,
    ) -> impl Future<Output = Response<Body>> + '_ {
        self.traced(peer, req, true).map(|(res, _)| res)
    }

    /// The answer, in the request's span when traces are on. Boxed: hyper moves the future it
    /// is given twice (into its service call's state, then into the connection's), and the
    /// answer's is a kilobyte.
    fn traced(
        &self,
        peer: SocketAddr,
        req: Request<Body>,
        log_now: bool,
    ) -> impl Future<Output = (Response<Body>, Option<AccessLine>)> + '_ {
        if crate::telemetry::on() {
            let span = trace::request(&req);
            let traced = self.answer(peer, req, log_now).instrument(span);
            return Either::Left(Box::pin(traced));
        }
        Either::Right(Box::pin(self.answer(peer, req, log_now)))
    }

    /// The request's answer and its access-log line, unless `log_now` wrote it already (with
    /// the length the answer announces); its span (when traces are on) is told what became
    /// of it. An `async` block, not an `async fn`: that would keep its arguments twice, as
    /// given and as the body's own locals, and copy the 300-byte request from one to the other.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn holds its arguments twice"
    )]
    fn answer(
        &self,
        peer: SocketAddr,
        req: Request<Body>,
        log_now: bool,
    ) -> impl Future<Output = (Response<Body>, Option<AccessLine>)> + '_ {
        async move {
            let head = req.method() == Method::HEAD;
            let shard = self.app.metrics.shard(self.worker);
            let rec = Record::new(&self.app, req.method(), req.headers());
            let mut tracked = Tracked::new(&self.app, shard, self.request_id(&req), rec);
            let id = &tracked.id;
            // Boxed: a future is moved (copied) once into each future that awaits it, and this
            // one is kilobytes; inline, every level above it would copy it again per request.
            let handling = Box::pin(phase::run(self, peer, id, &mut tracked.rec, req));
            let mut res = respond::contain_panic(handling, id).await;
            if crate::telemetry::on() {
                // Within the request's span: `answer` runs instrumented with it. Before `finish`,
                // which hands the record's fields on to the access line.
                trace::answered(
                    &tracing::Span::current(),
                    &self.app,
                    &tracked.rec,
                    res.status(),
                );
            }
            let mut line = respond::finish(self, &mut tracked, &mut res, head);
            if log_now && let Some(line) = line.take() {
                line.write(&self.app, record::length(res.headers()), true);
            }
            (res, line)
        }
    }

    /// A fresh request id, for answers given before any request was parsed.
    pub fn new_request_id(&self) -> HeaderValue {
        self.ids.pick(None)
    }

    /// The id a request is answered and logged under: its own if it sent a usable one.
    pub(crate) fn request_id<B>(&self, req: &Request<B>) -> HeaderValue {
        self.ids
            .pick(req.headers().get(&self.app.config.headers.request_id))
    }

    /// The answer to every request on a connection over `max_connections`.
    pub fn overloaded<B>(&self, req: &Request<B>) -> Response<Body> {
        let started = tokio::time::Instant::now();
        let id = self.request_id(req);
        let mut res = respond::problem(Problem::Overloaded, &id);
        let len = res.body().size_hint().exact().unwrap_or_default();
        self.answered_alone(Some(req.method()), &id, res.status(), len, started);
        res.headers_mut()
            .insert(self.app.config.headers.request_id.clone(), id);
        if req.method() == Method::HEAD {
            respond::without_body(&mut res);
        }
        res
    }

    /// Counts and logs an answer given outside the pipeline (see `record::answered_alone`).
    pub fn answered_alone(
        &self,
        method: Option<&Method>,
        id: &HeaderValue,
        status: StatusCode,
        bytes_out: u64,
        started: tokio::time::Instant,
    ) {
        let shard = self.app.metrics.shard(self.worker);
        record::answered_alone(&self.app, shard, method, id, status, bytes_out, started);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_future_stays_small() {
        // Every level that awaits a future copies it in; the phases are boxed so that what
        // the connection holds per request stays small (it was 8 KiB).
        let overrides = crate::config::Overrides {
            upstreams: vec!["http://127.0.0.1:1".into()],
            ..Default::default()
        };
        let config = crate::config::Config::defaults(&overrides).unwrap();
        let app = Arc::new(App::new(config).unwrap());
        let proxy = Proxy::new(app, 0);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let serving = proxy.serve_request(peer, Request::new(Body::Empty));
        assert!(
            std::mem::size_of_val(&serving) <= 1024,
            "{}",
            std::mem::size_of_val(&serving)
        );
        // What `serve` returns (it takes hyper's body, which only a connection makes).
        let answering = proxy.traced(peer, Request::new(Body::Empty), false);
        assert!(
            std::mem::size_of_val(&answering) <= 1024,
            "{}",
            std::mem::size_of_val(&answering)
        );
    }
}
