//! Sending a request once more when the kept-alive connection it went out on turns out to have
//! been closed by the upstream before it answered: an upstream may close an idle connection
//! (its keep-alive timeout) or close one right after an answer, and a request sluice writes to
//! that connection in the meantime is lost, through no fault of either. Only requests that may
//! be repeated (RFC 9110 §9.2.2) with a body held in memory are sent again, once, on a new
//! connection, as nginx's `proxy_next_upstream error` and Go's `http.Transport` do.
//!
//! A request is consumed as it is sent, so sending it again needs a copy taken before,
//! and copying the head costs about 4 % of a proxied request's instructions. So the copy is
//! only taken when a lost request is likely: see [`Trust::wary`].

use std::time::{Duration, Instant};

use http::Request;

use crate::body::Body;

/// A connection idle this long may have met the upstream's keep-alive timeout just now. Well
/// below the timeouts servers default to (gunicorn 2 s, Node and Apache 5 s, nginx 75 s), and
/// far above how long a connection rests between requests under load, when the copy would
/// cost the most.
const IDLE: Duration = Duration::from_millis(250);

/// How long after a target closed a kept-alive connection by itself its connections are
/// suspect: a target that closes connections after some answers keeps doing so, and such a
/// close can still be on its way when the connection is reused.
const SUSPECT: Duration = Duration::from_secs(10);

/// When a connection put back into the pool at `at` has rested long enough to be suspect.
pub(super) fn rested(at: Instant) -> Instant {
    at + IDLE
}

/// How far one worker trusts a target's kept-alive connections.
#[derive(Debug, Default)]
pub(super) struct Trust {
    /// Whether the target has answered on a reused connection. Until it has, it may be one that
    /// closes every connection after its answer, and a connection is reused at best to be found
    /// closed: each such reuse is worth a copy.
    kept_alive: bool,
    /// Until when its connections are suspect, since it closed one by itself.
    suspect_until: Option<Instant>,
}

impl Trust {
    /// Whether a request sent at `now` on a connection of this target that has rested since
    /// `rested` (see [`rested`]) is worth a copy. Instants are compared rather than durations
    /// worked out: this runs for nearly every request.
    pub(super) fn wary(&self, now: Instant, rested: Instant) -> bool {
        now >= rested || !self.kept_alive || self.suspect_until.is_some_and(|until| now < until)
    }

    /// Notes that a reused connection answered.
    pub(super) fn kept_alive(&mut self) {
        self.kept_alive = true;
    }

    /// Notes that the target closed a kept-alive connection by itself at `at`.
    pub(super) fn closed(&mut self, at: Instant) {
        self.suspect_until = Some(at + SUSPECT);
    }
}

/// A copy of `req` to send again, if it may be sent twice: a method that may be repeated and
/// no body or one held in memory. A streamed body cannot be sent twice.
pub(super) fn replayable(req: &Request<Body>) -> Option<Request<Body>> {
    let body = match req.body() {
        Body::Empty => Body::Empty,
        Body::Full(bytes) => Body::Full(bytes.clone()),
        _ => return None,
    };
    if !req.method().is_idempotent() {
        return None;
    }
    let mut copy = Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;
    use http_body::Body as _;

    fn req(method: Method, body: Body) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri("/v1/items?page=2")
            .header("host", "api.test")
            .header("x-request-id", "5f0c9d2e41a7b3c8")
            .body(body)
            .unwrap()
    }

    #[test]
    fn only_methods_that_may_be_repeated_are_copied() {
        for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            let m = Method::from_bytes(m.as_bytes()).unwrap();
            assert!(replayable(&req(m.clone(), Body::Empty)).is_some(), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT"] {
            let m = Method::from_bytes(m.as_bytes()).unwrap();
            assert!(replayable(&req(m.clone(), Body::Empty)).is_none(), "{m}");
        }
    }

    #[test]
    fn the_copy_has_the_whole_head_and_a_body_held_in_memory() {
        let original = req(Method::PUT, Body::full(&b"{\"a\":1}"[..]));
        let copy = replayable(&original).unwrap();
        assert_eq!(copy.method(), Method::PUT);
        assert_eq!(copy.uri(), "/v1/items?page=2");
        assert_eq!(copy.version(), original.version());
        assert_eq!(copy.headers(), original.headers());
        assert_eq!(copy.body().size_hint().exact(), Some(7));
    }

    #[test]
    fn a_target_is_suspect_until_a_reused_connection_answers() {
        let put = Instant::now();
        let mut trust = Trust::default();
        assert!(trust.wary(put, rested(put)));
        trust.kept_alive();
        assert!(
            !trust.wary(put + Duration::from_millis(1), rested(put)),
            "the hot path: reused at once, nothing closed"
        );
    }

    #[test]
    fn a_connection_is_suspect_after_a_long_rest_or_soon_after_its_target_closed_one() {
        let put = Instant::now();
        let after = |ms| put + Duration::from_millis(ms);
        let mut trust = Trust::default();
        trust.kept_alive();
        assert!(!trust.wary(after(249), rested(put)));
        assert!(trust.wary(after(250), rested(put)));
        trust.closed(put);
        assert!(trust.wary(after(1), rested(put)));
        assert!(trust.wary(after(9_999), rested(after(9_900))));
        assert!(!trust.wary(after(10_000), rested(after(9_900))));
    }
}
