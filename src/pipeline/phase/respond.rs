//! The respond phase: whatever the outcome, the answer the client gets. A problem becomes its
//! problem+json; a panic becomes a 500 for this request alone; every answer of a limited route
//! carries the rate-limit headers, every answer the request id; an answer to `HEAD` loses its
//! body. Then the request is counted; it is logged once its answer's body has gone out.

use std::future::poll_fn;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::task::Poll;

use http::header::CONTENT_LENGTH;
use http::{HeaderMap, HeaderValue, Response};

use super::{Ctx, Refused};
use crate::body::Body;
use crate::pipeline::Proxy;
use crate::pipeline::record::{AccessLine, Tracked};
use crate::problem::Problem;

/// A refusal before the limits: the problem, with the client's standing under the policy it
/// would have counted under kept for the headers.
pub(super) async fn refused(ctx: &mut Ctx<'_>, refused: Refused, headers: &HeaderMap) -> Problem {
    let app = &*ctx.proxy.app;
    ctx.rec.standing = app
        .limits
        .standing(&app.config, refused.policy, &ctx.caller(headers))
        .await;
    refused.problem
}

/// A problem as the answer, under request id `id`.
pub(crate) fn problem(p: Problem, id: &HeaderValue) -> Response<Body> {
    p.into_response(id.to_str().unwrap_or_default())
}

/// Finishes the answer: rate-limit headers, the request id, no body to `HEAD`; then counts the
/// request. Its access-log line comes back, to write once the body has gone out.
pub(crate) fn finish(
    proxy: &Proxy,
    tracked: &mut Tracked<'_>,
    res: &mut Response<Body>,
    head: bool,
) -> Option<AccessLine> {
    let app = &*proxy.app;
    if let Some(v) = tracked
        .rec
        .verdict
        .as_ref()
        .or(tracked.rec.standing.as_ref())
    {
        app.limits.write_headers(v, res.headers_mut());
    }
    let (id, line) = tracked.answered(res.status());
    res.headers_mut()
        .insert(app.config.headers.request_id.clone(), id);
    if head {
        without_body(res);
    }
    line
}

/// An answer to HEAD carries no body (RFC 9110 §9.3.2), only the length a GET would get.
/// hyper leaves the body out over HTTP/1.1, but would send it over HTTP/2, where the client
/// then takes the stream as broken.
pub(crate) fn without_body(res: &mut Response<Body>) {
    if let Body::Full(Some(bytes)) = res.body() {
        let len = HeaderValue::from(bytes.len());
        res.headers_mut().entry(CONTENT_LENGTH).or_insert(len);
        *res.body_mut() = Body::Empty;
    }
}

/// Runs a request's phases to its answer: a problem becomes its problem+json, and a panic a
/// 500 for this request alone. One `poll_fn` over the boxed phases, where `catch_unwind`, a
/// `map` and a `match` would each move the 200-byte answer once more.
pub(crate) fn contain_panic<'a, F>(
    mut handling: Pin<Box<F>>,
    id: &'a HeaderValue,
) -> impl Future<Output = Response<Body>> + 'a
where
    F: Future<Output = Result<Response<Body>, Problem>> + 'a,
{
    poll_fn(move |cx| {
        let polled = panic::catch_unwind(AssertUnwindSafe(|| handling.as_mut().poll(cx)));
        Poll::Ready(match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(Ok(res))) => res,
            Ok(Poll::Ready(Err(p))) => problem(p, id),
            Err(_) => {
                tracing::error!(request_id = ?id, "request handler panicked");
                problem(Problem::Internal, id)
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_while_handling_becomes_a_500_problem() {
        let id = HeaderValue::from_static("req-1");
        let panicking = poll_fn(|_| -> Poll<Result<Response<Body>, Problem>> { panic!("bug") });
        let res = contain_panic(Box::pin(panicking), &id).await;
        assert_eq!(res.status(), 500);
        assert_eq!(
            res.headers()[http::header::CONTENT_TYPE],
            "application/problem+json"
        );
    }
}
