//! One request's way through sluice, in phases: route (404/405) → credentials (401/403) →
//! body checks (413/415) → forward within the deadline (408, 400, 502/503/504) → response.
//! `App` is the state shared by every worker; `Proxy` is one worker's view of it, with the
//! worker's own upstream pool and request-id counter.

mod app;
mod auth;
mod client;
mod forward;
mod limit;
mod payload;
mod record;
mod request_id;
mod route;

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::FutureExt;
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as _;
use hyper::body::Incoming;

pub use app::{App, Lifecycle};
pub use auth::X_API_KEY;
pub use auth::{Keys, presented_key};
pub use client::{client_ip, is_trusted};
pub use forward::host_from_authority;
pub use limit::{Limits, Verdict};
pub use request_id::RequestIds;
pub use route::{Routed, Router};

use crate::body::Body;
use crate::config::{AuthMode, KeySource, Route};
use crate::problem::Problem;
use crate::upstream::Pool;
use record::{Record, Tracked};

/// One request's cost under its limits (a batch costs one per item).
const ONE: NonZeroU32 = NonZeroU32::MIN;

/// One worker's handle on the app.
#[derive(Debug)]
pub struct Proxy {
    pub app: Arc<App>,
    pool: Pool,
    ids: RequestIds,
    /// This worker's index: its metrics shard.
    worker: usize,
}

impl Proxy {
    pub fn new(app: Arc<App>, worker: usize) -> Proxy {
        Proxy {
            pool: Pool::new(&app.upstreams, &app.metrics, worker),
            ids: RequestIds::new(worker),
            worker,
            app,
        }
    }

    /// Answers one request. Never fails: a panic inside becomes a 500 for this request only.
    /// A plain function, so that the future the connection holds is no larger than needed.
    pub fn serve(
        &self,
        peer: SocketAddr,
        req: Request<Incoming>,
    ) -> impl Future<Output = Response<Body>> + '_ {
        self.serve_request(peer, req.map(Body::Incoming))
    }

    /// Answers one request whatever its body: a client's, or a batch item's made in memory.
    pub async fn serve_request(&self, peer: SocketAddr, req: Request<Body>) -> Response<Body> {
        let id = self.request_id(&req);
        let head = req.method() == Method::HEAD;
        let shard = self.app.metrics.shard(self.worker);
        let rec = Record::new(&self.app, req.method(), req.headers());
        let mut tracked = Tracked::new(&self.app, shard, &id, rec);
        // Boxed: a future is moved (copied) once into each future that awaits it, and this
        // one is kilobytes; inline, every level above it would copy it again per request.
        let handling = Box::pin(self.handle(peer, &id, req, &mut tracked.rec));
        let mut res = contain_panic(
            async {
                match handling.await {
                    Ok(res) => res,
                    Err(p) => problem(p, &id),
                }
            },
            &id,
        )
        .await;
        if let Some(v) = tracked
            .rec
            .verdict
            .as_ref()
            .or(tracked.rec.standing.as_ref())
        {
            self.app.limits.write_headers(v, res.headers_mut());
        }
        tracked.answered(&res);
        res.headers_mut()
            .insert(self.app.config.headers.request_id.clone(), id);
        if head {
            without_body(&mut res);
        }
        res
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

    /// The phases, in the order that decides which status wins when several apply.
    async fn handle(
        &self,
        peer: SocketAddr,
        id: &HeaderValue,
        mut req: Request<Body>,
        rec: &mut Record,
    ) -> Result<Response<Body>, Problem> {
        let app = &*self.app;
        let draining = app.life.draining.load(Ordering::Relaxed);
        if draining && req.extensions().get::<crate::batch::FromBatch>().is_none() {
            return Err(Problem::Draining);
        }
        let unmeasured = req.version() == http::Version::HTTP_2
            || req.extensions().get::<Unmeasured>().is_some();
        if unmeasured && !head_fits(&req, &app.config.server) {
            return Err(Problem::HeadTooLarge);
        }
        let has_host = one_host(&req).ok_or(Problem::MalformedHost)?;
        match crate::path::normalized(req.uri()) {
            Ok(None) => {}
            Ok(Some(uri)) => *req.uri_mut() = uri,
            Err(_) => return Err(Problem::MalformedPath),
        }
        if app.config.batch.enabled && req.uri().path() == app.config.batch.path {
            rec.route = app.metrics.batch_route();
            // Boxed: kept inline, the batch's future would enlarge every request's.
            return Box::pin(crate::batch::handle(self, peer, req)).await;
        }
        let client = client_ip(peer.ip(), req.headers(), &app.config.server.trusted_proxies);
        // Standing shown to a client not known (yet) under `api_keys`: not under a policy keyed
        // by a header, which would show the standing of whatever value the client names.
        let shown = |i: Option<usize>| {
            i.filter(|&i| {
                app.config.auth.mode == AuthMode::None
                    || !matches!(app.config.policies[i].key, KeySource::Header(_))
            })
        };
        // Routing and credentials; a refusal here costs nothing, and its answer shows the
        // client's standing under the policy named with it.
        let admitted = 'admit: {
            let (r, route) = match self.route(&req) {
                Ok(found) => found,
                Err((policy, p)) => break 'admit Err((shown(policy), p)),
            };
            rec.route = r;
            match self
                .authenticate(&route.scopes, req.headers(), client)
                .await
            {
                Ok(who) => Ok((r, route, who)),
                Err(p) => {
                    let policy = match p {
                        // The failed-credentials guard's 429: its own standing is what counts.
                        Problem::RateLimited { .. } => app.limits.auth_failures(),
                        // A known key: the policy its requests count under.
                        Problem::MissingScope { key, .. } => {
                            app.config.auth.keys[key].policy.or(route.policy)
                        }
                        _ => shown(route.policy),
                    };
                    Err((policy, p))
                }
            }
        };
        let (r, route, who) = match admitted {
            Ok(admitted) => admitted,
            Err((policy, p)) => {
                let headers = req.headers();
                rec.standing = app
                    .limits
                    .standing(&app.config, policy, headers, client)
                    .await;
                return Err(p);
            }
        };
        rec.key = who;
        let policy = who
            .and_then(|k| app.config.auth.keys[k].policy)
            .or(route.policy);
        if let Some(i) = policy {
            let (v, admitted) = app
                .limits
                .check(&app.config, i, req.headers(), client, ONE)
                .await;
            rec.verdict = v;
            admitted?;
        }
        payload::check_head(route, req.headers(), !req.body().is_end_stream())?;
        let (mut parts, body) = req.into_parts();
        forward::prepare(app, route, peer, client, id, has_host, &mut parts)?;
        auth::identify_upstream(&app.config.auth, &app.keys, who, &mut parts.headers);
        // Boxed, so that requests answered before this point (a 429) move a small future.
        let res = Box::pin(forward::send(self, r, route, parts, body)).await?;
        rec.upstream_status = Some(res.status());
        Ok(res)
    }

    /// Credentials (401/403), behind the guard that makes guessing keys slow: a client that
    /// failed too often is refused (429) before its key is even looked at.
    pub(crate) async fn authenticate(
        &self,
        scopes: &[String],
        headers: &HeaderMap,
        client: IpAddr,
    ) -> Result<Option<usize>, Problem> {
        let app = &*self.app;
        if app.config.auth.mode == AuthMode::None {
            return Ok(None);
        }
        app.limits.guard_auth(&app.config, headers, client).await?;
        match auth::authenticate(&app.config.auth, &app.keys, scopes, headers) {
            Err(p @ (Problem::MissingCredentials | Problem::UnknownCredentials)) => {
                app.limits.auth_failed(&app.config, headers, client).await;
                Err(p)
            }
            other => other,
        }
    }

    /// The request's route; on a refusal, with the policy of the route it matched, if any.
    fn route<B>(&self, req: &Request<B>) -> Result<(usize, &Route), (Option<usize>, Problem)> {
        let app = &*self.app;
        let routes = &app.config.routes;
        match app.router.route(routes, req.method(), req.uri().path()) {
            Routed::Route(i) => Ok((i, &routes[i])),
            Routed::NotFound => Err((None, Problem::NoRoute)),
            Routed::MethodNotAllowed(i, allow) => Err((
                routes[i].policy,
                Problem::MethodNotAllowed {
                    allow: allow.clone(),
                },
            )),
        }
    }

    /// The answer to every request on a connection over `max_connections`.
    pub fn overloaded<B>(&self, req: &Request<B>) -> Response<Body> {
        let started = tokio::time::Instant::now();
        let id = self.request_id(req);
        let mut res = problem(Problem::Overloaded, &id);
        let len = res.body().size_hint().exact().unwrap_or_default();
        self.answered_alone(Some(req.method()), &id, res.status(), len, started);
        res.headers_mut()
            .insert(self.app.config.headers.request_id.clone(), id);
        if req.method() == Method::HEAD {
            without_body(&mut res);
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

/// An answer to HEAD carries no body (RFC 9110 §9.3.2), only the length a GET would get.
/// hyper leaves the body out over HTTP/1.1, but would send it over HTTP/2, where the client
/// then takes the stream as broken.
fn without_body(res: &mut Response<Body>) {
    if let Body::Full(Some(bytes)) = res.body() {
        let len = HeaderValue::from(bytes.len());
        res.headers_mut().entry(CONTENT_LENGTH).or_insert(len);
        *res.body_mut() = Body::Empty;
    }
}

/// Runs a request's future; a panic in it becomes a 500 for this request alone. A plain
/// function, not an `async fn`: that would hold `handling` twice, as its argument and inside
/// `CatchUnwind`.
fn contain_panic<'a>(
    handling: impl Future<Output = Response<Body>> + 'a,
    id: &'a HeaderValue,
) -> impl Future<Output = Response<Body>> + 'a {
    AssertUnwindSafe(handling)
        .catch_unwind()
        .map(move |caught| {
            caught.unwrap_or_else(|_| {
                tracing::error!(request_id = ?id, "request handler panicked");
                problem(Problem::Internal, id)
            })
        })
}

/// The most header fields a request head may have, HTTP/1.1's (hyper's) and HTTP/2's alike.
const MAX_FIELDS: usize = 100;

/// Marks an HTTP/1.1 request whose head its connection could not measure as it arrived: it
/// was read while an earlier request was answered, or behind another head in one read.
#[derive(Debug, Clone, Copy)]
pub struct Unmeasured;

/// Whether a head the connection did not measure as it arrived (HTTP/2, or an `Unmeasured`
/// HTTP/1.1 one) is within the limits of one it did: 100 fields, and `max_header_bytes`
/// counted as its HTTP/1.1 form would be. For HTTP/2, that form has `:authority` as its
/// `Host` line, and the cookie crumbs (RFC 9113 §8.2.3) joined into one line, as sent upstream.
fn head_fits(req: &Request<Body>, server: &crate::config::Server) -> bool {
    let headers = req.headers();
    let h2 = req.version() == http::Version::HTTP_2;
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

/// Whether the request has a `Host` header; `None` if it breaks RFC 9112 §3.2: more than one,
/// or none in an HTTP/1.1 request whose target names no host. A batch item has its batch's,
/// checked with the batch.
fn one_host(req: &Request<Body>) -> Option<bool> {
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), None) => Some(true),
        (Some(_), Some(_)) => None,
        (None, _) => {
            let allowed = req.version() != http::Version::HTTP_11
                || req.uri().authority().is_some()
                || req.extensions().get::<crate::batch::FromBatch>().is_some();
            allowed.then_some(false)
        }
    }
}

fn problem(p: Problem, id: &HeaderValue) -> Response<Body> {
    p.into_response(id.to_str().unwrap_or_default())
        .map(Body::full)
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
        let app = Arc::new(App::new(crate::config::Config::defaults(&overrides).unwrap()).unwrap());
        let proxy = Proxy::new(app, 0);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let serving = proxy.serve_request(peer, Request::new(Body::Empty));
        assert!(std::mem::size_of_val(&serving) <= 1024);
    }

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
