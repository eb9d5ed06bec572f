//! The one place where sluice's own refusals and faults become HTTP: RFC 9457 problem details
//! (`application/problem+json`). Responses from the upstream never pass through here.

use http::header::{ALLOW, CONNECTION, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use serde_json::json;

use crate::body::Body;

/// Everything sluice answers by itself, named by what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// No route matches the path.
    NoRoute,
    /// The route exists but not for this method; `allow` lists the methods it takes.
    MethodNotAllowed { allow: HeaderValue },
    /// Every target of the upstream refused the connection or could not be reached in time.
    UpstreamRefused,
    /// The upstream closed or reset the connection before a complete answer.
    UpstreamReset,
    /// The upstream answered with something that is not HTTP.
    UpstreamBadResponse,
    /// Every target of the upstream failed recently; none is tried until one recovers.
    NoHealthyUpstream,
    /// More open client connections than `max_connections`.
    Overloaded,
    /// Shutdown has begun; the client should go elsewhere.
    Draining,
    /// A fault inside sluice.
    Internal,
}

impl Problem {
    pub fn status(&self) -> StatusCode {
        match self {
            Problem::NoRoute => StatusCode::NOT_FOUND,
            Problem::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Problem::UpstreamRefused | Problem::UpstreamReset | Problem::UpstreamBadResponse => {
                StatusCode::BAD_GATEWAY
            }
            Problem::NoHealthyUpstream | Problem::Overloaded | Problem::Draining => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Problem::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// One sentence for the `detail` member.
    pub fn detail(&self) -> &'static str {
        match self {
            Problem::NoRoute => "No route matches this path.",
            Problem::MethodNotAllowed { .. } => {
                "This route does not accept this method; see the Allow header."
            }
            Problem::UpstreamRefused => "The upstream refused the connection.",
            Problem::UpstreamReset => {
                "The upstream closed the connection before answering in full."
            }
            Problem::UpstreamBadResponse => "The upstream sent an invalid HTTP response.",
            Problem::NoHealthyUpstream => "No healthy upstream target is available.",
            Problem::Overloaded => "Too many open connections; try again shortly.",
            Problem::Draining => "The proxy is shutting down; try again shortly.",
            Problem::Internal => "An internal error occurred in the proxy.",
        }
    }

    /// The problem as a complete response; `request_id` ties it to the logs.
    pub fn into_response(self, request_id: &str) -> Response<Body> {
        let status = self.status();
        let body = json!({
            "type": "about:blank",
            "title": status.canonical_reason().unwrap_or(""),
            "status": status.as_u16(),
            "detail": self.detail(),
            "request_id": request_id,
        });
        let mut res = Response::new(Body::full(body.to_string()));
        *res.status_mut() = status;
        let headers = res.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match self {
            Problem::MethodNotAllowed { allow } => {
                headers.insert(ALLOW, allow);
            }
            Problem::Overloaded | Problem::Draining => {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn problems_are_rfc9457_json_with_the_request_id() {
        let res = Problem::NoRoute.into_response("abc");
        assert_eq!(res.status(), 404);
        assert_eq!(res.headers()[CONTENT_TYPE], "application/problem+json");
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["status"], 404);
        assert_eq!(v["title"], "Not Found");
        assert_eq!(v["request_id"], "abc");
        assert_eq!(v["type"], "about:blank");
    }

    #[test]
    fn method_not_allowed_carries_allow() {
        let allow = HeaderValue::from_static("GET, POST");
        let res = Problem::MethodNotAllowed { allow }.into_response("x");
        assert_eq!(res.status(), 405);
        assert_eq!(res.headers()[ALLOW], "GET, POST");
    }
}
