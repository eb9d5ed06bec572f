//! What is kept of one request once it is answered: its counts in the worker's metrics shard
//! and, when `access_log` is on, one log line (target `sluice::access`) with the request id,
//! the client's key name (never the key), route, status, upstream status, duration, sizes and
//! the limiter's decision.

use http::header::CONTENT_LENGTH;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use tokio::time::Instant;

use super::{App, Verdict};
use crate::config::Mode;
use crate::metrics::{Decided, Shard};

/// Filled in by the phases as the request goes.
#[derive(Debug)]
pub struct Record {
    pub started: Instant,
    pub method: Method,
    pub bytes_in: Option<u64>,
    /// The route's label index in the metrics (a route, the batch endpoint, or none).
    pub route: usize,
    /// The `[[auth.keys]]` entry that presented itself.
    pub key: Option<usize>,
    pub verdict: Option<Verdict>,
    /// The client's standing, looked at without a check, for the headers of an answer that
    /// cost it nothing; not counted as a decision.
    pub standing: Option<Verdict>,
    pub upstream_status: Option<StatusCode>,
}

impl Record {
    pub fn new(app: &App, method: &Method, headers: &HeaderMap) -> Record {
        Record {
            started: Instant::now(),
            method: method.clone(),
            // Only the log line uses it.
            bytes_in: if app.config.server.access_log {
                length(headers)
            } else {
                None
            },
            route: app.metrics.no_route(),
            key: None,
            verdict: None,
            standing: None,
            upstream_status: None,
        }
    }

    /// Counts the request; `status` is its answer's, or 499 if it got none. Its access-log line
    /// (when `access_log` is on) comes back, to be written once the answer's body has gone out.
    fn finish(
        &mut self,
        app: &App,
        shard: &Shard,
        id: &HeaderValue,
        status: StatusCode,
    ) -> Option<AccessLine> {
        shard.request(self.route, &self.method, status);
        shard.duration(self.route, self.started.elapsed());
        if status.is_server_error() && self.upstream_status != Some(status) {
            shard.own_error(status);
        }
        let decision = self.verdict.as_ref().map(|v| count_decision(app, shard, v));
        app.config.server.access_log.then(|| AccessLine {
            // A clone shares the id's bytes: no allocation.
            id: id.clone(),
            started: self.started,
            method: std::mem::take(&mut self.method),
            route: self.route,
            key: self.key,
            status,
            upstream_status: self.upstream_status,
            bytes_in: self.bytes_in,
            decision,
        })
    }
}

/// A request's access-log line (target `sluice::access`), held until its answer's body has
/// ended or been dropped: its duration runs to then, and `bytes_out` counts the body bytes the
/// client was actually sent, as nginx's `$body_bytes_sent` does, not the length announced.
#[derive(Debug)]
pub struct AccessLine {
    id: HeaderValue,
    started: Instant,
    method: Method,
    route: usize,
    key: Option<usize>,
    status: StatusCode,
    upstream_status: Option<StatusCode>,
    bytes_in: Option<u64>,
    decision: Option<Decided>,
}

impl AccessLine {
    /// Writes the line: `bytes_out` body bytes went out, and the body went out whole or, if
    /// not `complete`, was cut short (the upstream broke it off, its deadline cut it off, or
    /// the client went away); only then does the line carry `complete = false`.
    pub fn write(&self, app: &App, bytes_out: Option<u64>, complete: bool) {
        let route = app
            .config
            .routes
            .get(self.route)
            .map_or("-", |r| r.path.as_str());
        let route = if self.route == app.metrics.batch_route() {
            app.config.batch.path.as_str()
        } else {
            route
        };
        let client = self
            .key
            .map_or("-", |k| app.config.auth.keys[k].name.as_str());
        let limit = match self.decision {
            None => "-",
            Some(Decided::Allowed) => "allowed",
            Some(Decided::Refused) => "refused",
            Some(Decided::ShadowRefused) => "shadow_refused",
        };
        tracing::info!(
            target: "sluice::access",
            request_id = self.id.to_str().unwrap_or_default(),
            client,
            method = self.method.as_str(),
            route,
            status = self.status.as_u16(),
            upstream_status = self.upstream_status.map(|s| s.as_u16()),
            duration_ms = self.started.elapsed().as_secs_f64() * 1e3,
            bytes_in = self.bytes_in,
            bytes_out,
            complete = (!complete).then_some(false),
            limit,
        );
    }
}

/// Counts and logs an answer sluice gave before any request reached the pipeline: to a head
/// that timed out, was too large or was not HTTP (method unknown: `-`), or to a request on a
/// connection over `max_connections`. Under no route, as a 404 is.
pub fn answered_alone(
    app: &App,
    shard: &Shard,
    method: Option<&Method>,
    id: &HeaderValue,
    status: StatusCode,
    bytes_out: u64,
    started: Instant,
) {
    let mut rec = Record {
        started,
        method: method.cloned().unwrap_or_else(unknown_method),
        bytes_in: None,
        route: app.metrics.no_route(),
        key: None,
        verdict: None,
        standing: None,
        upstream_status: None,
    };
    if let Some(line) = rec.finish(app, shard, id, status) {
        line.write(app, Some(bytes_out), true);
    }
}

fn unknown_method() -> Method {
    Method::from_bytes(b"-").expect("a token")
}

/// The status nginx logs for a request its client abandoned before the answer.
const CLIENT_CLOSED: StatusCode = match StatusCode::from_u16(499) {
    Ok(status) => status,
    Err(_) => unreachable!(),
};

/// A request from its start until it is answered or dropped: counted in flight meanwhile, then
/// counted and logged either way. One dropped unanswered (its client went away, or its batch's
/// deadline passed) is counted and logged as 499.
pub struct Tracked<'a> {
    pub rec: Record,
    /// The request id it is answered and logged under.
    pub id: HeaderValue,
    app: &'a App,
    shard: &'a Shard,
    answered: bool,
}

impl<'a> Tracked<'a> {
    pub fn new(app: &'a App, shard: &'a Shard, id: HeaderValue, rec: Record) -> Tracked<'a> {
        shard.in_flight(1);
        Tracked {
            rec,
            id,
            app,
            shard,
            answered: false,
        }
    }

    /// The request got an answer with `status`: it is counted. Its id comes back, for the
    /// answer, with its access-log line to write once the answer's body has gone out.
    pub fn answered(&mut self, status: StatusCode) -> (HeaderValue, Option<AccessLine>) {
        let line = self.rec.finish(self.app, self.shard, &self.id, status);
        self.answered = true;
        let id = std::mem::replace(&mut self.id, HeaderValue::from_static(""));
        (id, line)
    }
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        if !self.answered
            && let Some(line) = self
                .rec
                .finish(self.app, self.shard, &self.id, CLIENT_CLOSED)
        {
            line.write(self.app, None, false);
        }
        self.shard.in_flight(-1);
    }
}

/// Counts each limit's part in a verdict; returns the request's overall decision.
fn count_decision(app: &App, shard: &Shard, v: &Verdict) -> Decided {
    let shadow = app.config.policies[v.policy()].mode == Mode::Shadow;
    let overall = match (v.allowed(), shadow) {
        (true, _) => Decided::Allowed,
        (false, true) => Decided::ShadowRefused,
        (false, false) => Decided::Refused,
    };
    let limits = app.config.policies[v.policy()].limiter.limits().len();
    for l in 0..limits {
        let decided = if v.allowed() {
            Decided::Allowed
        } else if v.refused_by(l) {
            overall
        } else {
            continue;
        };
        shard.decision(v.policy() * 2 + l, decided);
    }
    overall
}

pub(crate) fn length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}
