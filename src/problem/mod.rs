//! The one place where sluice's own refusals and faults become HTTP: RFC 9457 problem details
//! (`application/problem+json`). Responses from the upstream never pass through here.
//!
//! Each problem says where it came from ([`Source`]: the client, the upstream, the limiter's
//! store, or sluice itself), and every status is decided here, in one exhaustive `match`: every
//! 408 comes from a [`Deadline`] that passed, every 413 from a [`Limit`] a request went past.
//! A leaf: it knows HTTP and JSON, not the bodies or phases that carry its answers.

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{
    ALLOW, CONNECTION, CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{Response, StatusCode};
use serde_json::{Map, Value, json};

/// The problem type of a 429, registered with IANA.
pub const QUOTA_EXCEEDED: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";

/// One invalid field of a batch, for the `errors` member of a 422.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// A JSON pointer into the request body, e.g. `/requests/3/method`.
    pub field: String,
    pub message: String,
}

/// Where a problem came from: what decides how it is logged and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The request: its head, body, credentials, rate or shape.
    Client,
    /// The upstream: refused, reset, slow, or not HTTP.
    Upstream,
    /// The limiter's shared store.
    Store,
    /// sluice itself: a fault, overload, or shutdown.
    Own,
}

impl Source {
    /// The label of the problems counter.
    pub fn label(self) -> &'static str {
        match self {
            Source::Client => "client",
            Source::Upstream => "upstream",
            Source::Store => "store",
            Source::Own => "own",
        }
    }
}

/// What went wrong on the upstream's side: the problem it answers, and its metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamFault {
    #[error("every target refused the connection")]
    Refused,
    #[error("the upstream closed or reset the connection")]
    Reset,
    #[error("the upstream did not answer, or end its answer, within request_timeout")]
    TimedOut,
    #[error("the upstream sent an invalid response")]
    BadResponse,
    #[error("every target failed within the last second")]
    NoHealthyTarget,
    #[error("the TLS handshake with the upstream failed")]
    Tls,
}

impl UpstreamFault {
    /// Every fault, in the order of their discriminants (their metrics counters' order).
    pub const ALL: [UpstreamFault; 6] = [
        UpstreamFault::Refused,
        UpstreamFault::Reset,
        UpstreamFault::TimedOut,
        UpstreamFault::BadResponse,
        UpstreamFault::NoHealthyTarget,
        UpstreamFault::Tls,
    ];

    /// The `kind` label of `sluice_upstream_errors_total`.
    pub fn label(self) -> &'static str {
        match self {
            UpstreamFault::Refused => "refused",
            UpstreamFault::Reset => "reset",
            UpstreamFault::TimedOut => "timeout",
            UpstreamFault::BadResponse => "bad_response",
            UpstreamFault::NoHealthyTarget => "no_healthy_target",
            UpstreamFault::Tls => "tls",
        }
    }

    /// The problem it answers; a timeout is answered `timeout_status`.
    pub fn problem(self, timeout_status: StatusCode) -> Problem {
        match self {
            UpstreamFault::Refused => Problem::UpstreamRefused,
            UpstreamFault::Reset => Problem::UpstreamReset,
            UpstreamFault::TimedOut => Problem::TimedOut(Deadline::Answer {
                status: timeout_status,
            }),
            UpstreamFault::BadResponse => Problem::UpstreamBadResponse,
            UpstreamFault::NoHealthyTarget => Problem::NoHealthyUpstream,
            UpstreamFault::Tls => Problem::UpstreamTls,
        }
    }
}

/// A deadline that passed. Every 408 (and the 504 of `timeout_status`) comes from one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// The request head, within `header_read_timeout`.
    Head,
    /// The request body, within `request_timeout`.
    Body,
    /// The upstream's answer, within `request_timeout`; answered `status` (`timeout_status`).
    Answer { status: StatusCode },
    /// A batch item, within the batch's `request_timeout`.
    Batch,
}

/// A size limit a request went past. Every 413 comes from one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The body is (declared or found to be) larger than the route's `max_body`.
    Body { max: u64 },
    /// A batch of more than `max_requests` items.
    Batch { max: usize },
    /// The request costs more than its policy ever admits at once (a batch over the burst).
    Cost { cost: u32, capacity: u32 },
}

/// Everything sluice answers by itself, named by what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A deadline passed.
    TimedOut(Deadline),
    /// A request went past a size limit.
    TooLarge(Limit),
    /// A batch that is valid JSON but not a valid batch.
    BatchInvalid { errors: Vec<FieldError> },
    /// A reloaded config that does not validate; the running one stays.
    ConfigInvalid { errors: Vec<FieldError> },
    /// A batch item whose dependency did not answer 2xx.
    DependencyFailed { dependency: String, status: u16 },
    /// The request head is larger than `max_header_bytes`.
    HeadTooLarge,
    /// The request head is not valid HTTP/1.1 (method, target, version or a header line).
    MalformedHead,
    /// The path has a `%` that does not begin an escape (`%` and two hex digits).
    MalformedPath,
    /// Two `Host` headers, or none in an HTTP/1.1 request whose target names no host.
    MalformedHost,
    /// `Transfer-Encoding` names a coding other than `chunked`.
    UnknownTransferCoding,
    /// No route matches the path.
    NoRoute,
    /// The route exists but not for this method; `allow` lists the methods it takes.
    MethodNotAllowed { allow: HeaderValue },
    /// `auth.mode = "api_keys"` and the request presents no key.
    MissingCredentials,
    /// The presented key is not one of `[[auth.keys]]`.
    UnknownCredentials,
    /// The key is valid (`key`, its place in `[[auth.keys]]`) but lacks `scope`, which the
    /// route requires.
    MissingScope { scope: String, key: usize },
    /// Over the rate limit: retry after `retry_after` seconds; `violated` names the limits.
    RateLimited {
        retry_after: u64,
        violated: Violated,
    },
    /// The body's media type is not one the route accepts.
    UnsupportedMediaType { accepted: Vec<String> },
    /// The body is not valid JSON where the route validates it.
    InvalidJson {
        line: usize,
        column: usize,
        reason: String,
    },
    /// The client broke off while sending the body.
    UnreadableBody,
    /// Every target of the upstream refused the connection or could not be reached in time.
    UpstreamRefused,
    /// The upstream closed or reset the connection before a complete answer.
    UpstreamReset,
    /// The upstream answered with something that is not HTTP.
    UpstreamBadResponse,
    /// The TLS handshake with an `https://` upstream failed: its certificate did not verify.
    UpstreamTls,
    /// Every target of the upstream failed recently; none is tried until one recovers.
    NoHealthyUpstream,
    /// More open client connections than `max_connections`.
    Overloaded,
    /// Shutdown has begun; the client should go elsewhere.
    Draining,
    /// The shared limiter store is unreachable and `on_error = "deny"`.
    StoreUnavailable,
    /// A fault inside sluice.
    Internal,
}

impl Problem {
    /// The status: one arm per kind of problem, and no other place decides one.
    pub fn status(&self) -> StatusCode {
        match self {
            Problem::TimedOut(deadline) => deadline.status(),
            Problem::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Problem::BatchInvalid { .. } | Problem::ConfigInvalid { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Problem::DependencyFailed { .. } => StatusCode::FAILED_DEPENDENCY,
            Problem::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Problem::NoRoute => StatusCode::NOT_FOUND,
            Problem::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Problem::MissingCredentials | Problem::UnknownCredentials => StatusCode::UNAUTHORIZED,
            Problem::MissingScope { .. } => StatusCode::FORBIDDEN,
            Problem::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Problem::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Problem::InvalidJson { .. }
            | Problem::UnreadableBody
            | Problem::MalformedHead
            | Problem::MalformedPath
            | Problem::MalformedHost
            | Problem::UnknownTransferCoding => StatusCode::BAD_REQUEST,
            Problem::UpstreamRefused
            | Problem::UpstreamReset
            | Problem::UpstreamBadResponse
            | Problem::UpstreamTls => StatusCode::BAD_GATEWAY,
            Problem::NoHealthyUpstream
            | Problem::Overloaded
            | Problem::Draining
            | Problem::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Problem::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Where the problem came from.
    pub fn source(&self) -> Source {
        match self {
            Problem::TimedOut(Deadline::Head | Deadline::Body)
            | Problem::TooLarge(_)
            | Problem::BatchInvalid { .. }
            | Problem::ConfigInvalid { .. }
            | Problem::DependencyFailed { .. }
            | Problem::HeadTooLarge
            | Problem::MalformedHead
            | Problem::MalformedPath
            | Problem::MalformedHost
            | Problem::UnknownTransferCoding
            | Problem::NoRoute
            | Problem::MethodNotAllowed { .. }
            | Problem::MissingCredentials
            | Problem::UnknownCredentials
            | Problem::MissingScope { .. }
            | Problem::RateLimited { .. }
            | Problem::UnsupportedMediaType { .. }
            | Problem::InvalidJson { .. }
            | Problem::UnreadableBody => Source::Client,
            Problem::TimedOut(Deadline::Answer { .. } | Deadline::Batch)
            | Problem::UpstreamRefused
            | Problem::UpstreamReset
            | Problem::UpstreamBadResponse
            | Problem::UpstreamTls
            | Problem::NoHealthyUpstream => Source::Upstream,
            Problem::StoreUnavailable => Source::Store,
            Problem::Overloaded | Problem::Draining | Problem::Internal => Source::Own,
        }
    }

    /// One sentence for the `detail` member.
    pub fn detail(&self) -> Cow<'static, str> {
        let text = match self {
            Problem::TimedOut(deadline) => deadline.detail(),
            Problem::TooLarge(limit) => return limit.detail(),
            Problem::BatchInvalid { .. } => "The batch is not valid; see errors.",
            Problem::ConfigInvalid { .. } => {
                "The new config is not valid; the running config stays. See errors."
            }
            Problem::DependencyFailed { dependency, status } => {
                let what = format!("the request {dependency:?} it depends on answered {status}");
                return format!("Not run: {what}.").into();
            }
            Problem::HeadTooLarge => "The request head is too large.",
            Problem::MalformedHead => "The request head is not valid HTTP/1.1.",
            Problem::MalformedPath => "The path has a % that does not begin an escape (%XX).",
            Problem::MalformedHost => {
                "A request may have one Host header only, and an HTTP/1.1 request must have one."
            }
            Problem::UnknownTransferCoding => {
                "Transfer-Encoding may name only chunked; other codings are not supported."
            }
            Problem::NoRoute => "No route matches this path.",
            Problem::MethodNotAllowed { .. } => {
                "This route does not accept this method; see the Allow header."
            }
            Problem::MissingCredentials => {
                "An API key is required: Authorization: Bearer KEY, or X-Api-Key: KEY."
            }
            Problem::UnknownCredentials => "The API key is not valid.",
            Problem::MissingScope { scope, .. } => {
                return format!("The API key lacks the scope {scope:?} this route requires.")
                    .into();
            }
            Problem::RateLimited { retry_after, .. } => {
                let s = if *retry_after == 1 { "" } else { "s" };
                return format!("Rate limit exceeded; retry after {retry_after} second{s}.").into();
            }
            Problem::UnsupportedMediaType { accepted } => {
                let list = accepted.join(", ");
                return format!("A request body must have a Content-Type of: {list}.").into();
            }
            Problem::InvalidJson {
                line,
                column,
                reason,
            } => {
                let at = format!("line {line}, column {column}");
                return format!("The body is not valid JSON at {at}: {reason}.").into();
            }
            Problem::UnreadableBody => "The request body could not be read to its end.",
            Problem::UpstreamRefused => "The upstream refused the connection.",
            Problem::UpstreamReset => {
                "The upstream closed the connection before answering in full."
            }
            Problem::UpstreamBadResponse => "The upstream sent an invalid HTTP response.",
            Problem::UpstreamTls => {
                "The TLS handshake with the upstream failed: its certificate did not verify."
            }
            Problem::NoHealthyUpstream => "No healthy upstream target is available.",
            Problem::Overloaded => "Too many open connections; try again shortly.",
            Problem::Draining => "The proxy is shutting down; try again shortly.",
            Problem::StoreUnavailable => {
                "Rate limits cannot be checked right now; try again shortly."
            }
            Problem::Internal => "An internal error occurred in the proxy.",
        };
        Cow::Borrowed(text)
    }

    /// Whether the connection is closed after this answer: after a head or body that did not
    /// arrive whole, the client's stream is in an unknown state; a 408 tells the client to
    /// give up the connection (RFC 9110 §15.5.9); overload and shutdown want it gone.
    pub fn closes_connection(&self) -> bool {
        match self {
            Problem::TimedOut(Deadline::Head | Deadline::Body) => true,
            Problem::TimedOut(Deadline::Answer { status }) => {
                *status == StatusCode::REQUEST_TIMEOUT
            }
            Problem::HeadTooLarge | Problem::MalformedHead => true,
            Problem::Overloaded | Problem::Draining => true,
            // Answered inside a 207: the batch's connection is not this item's.
            Problem::TimedOut(Deadline::Batch) => false,
            Problem::TooLarge(_)
            | Problem::BatchInvalid { .. }
            | Problem::ConfigInvalid { .. }
            | Problem::DependencyFailed { .. }
            | Problem::MalformedPath
            | Problem::MalformedHost
            | Problem::UnknownTransferCoding
            | Problem::NoRoute
            | Problem::MethodNotAllowed { .. }
            | Problem::MissingCredentials
            | Problem::UnknownCredentials
            | Problem::MissingScope { .. }
            | Problem::RateLimited { .. }
            | Problem::UnsupportedMediaType { .. }
            | Problem::InvalidJson { .. }
            | Problem::UnreadableBody
            | Problem::UpstreamRefused
            | Problem::UpstreamReset
            | Problem::UpstreamBadResponse
            | Problem::UpstreamTls
            | Problem::NoHealthyUpstream
            | Problem::StoreUnavailable
            | Problem::Internal => false,
        }
    }

    /// The problem document.
    pub fn body(&self, request_id: &str) -> Value {
        let status = self.status();
        let kind = match self {
            Problem::RateLimited { .. } => QUOTA_EXCEEDED,
            _ => "about:blank",
        };
        let mut doc = json!({
            "type": kind,
            "title": status.canonical_reason().unwrap_or(""),
            "status": status.as_u16(),
            "detail": self.detail(),
            "request_id": request_id,
        });
        if let (Some(obj), Some((name, value))) = (doc.as_object_mut(), self.extension()) {
            obj.insert(name.into(), value);
        }
        if let (
            Some(obj),
            Problem::RateLimited {
                retry_after,
                violated,
            },
        ) = (doc.as_object_mut(), self)
        {
            obj.insert("retry_after".into(), json!(retry_after));
            let names: Value = serde_json::from_str(&violated.0).unwrap_or_default();
            obj.insert("violated-policies".into(), names);
        }
        doc
    }

    /// A member beyond the standard ones, for clients that act on it.
    fn extension(&self) -> Option<(&'static str, Value)> {
        match self {
            Problem::RateLimited { .. } => None, // two members: see `body`
            Problem::BatchInvalid { errors } | Problem::ConfigInvalid { errors } => {
                let list: Vec<Value> = errors
                    .iter()
                    .map(|e| json!({ "field": e.field, "message": e.message }))
                    .collect();
                Some(("errors", Value::Array(list)))
            }
            Problem::DependencyFailed { dependency, .. } => Some(("dependency", json!(dependency))),
            Problem::UnsupportedMediaType { accepted } => Some(("accepted", json!(accepted))),
            Problem::TooLarge(Limit::Body { max }) => Some(("max_body", json!(max))),
            Problem::InvalidJson { line, column, .. } => {
                let mut at = Map::new();
                at.insert("line".into(), json!(line));
                at.insert("column".into(), json!(column));
                Some(("position", Value::Object(at)))
            }
            _ => None,
        }
    }

    /// The problem as a complete response, whatever body type carries the bytes;
    /// `request_id` ties it to the logs.
    pub fn into_response<B: From<Bytes>>(self, request_id: &str) -> Response<B> {
        let body = match &self {
            // The most frequent answer under load: written straight, without a JSON tree.
            Problem::RateLimited {
                retry_after,
                violated,
            } => rate_limited_body(*retry_after, violated, request_id),
            _ => self.body(request_id).to_string(),
        };
        let mut res = Response::new(B::from(Bytes::from(body)));
        *res.status_mut() = self.status();
        let headers = res.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.closes_connection() {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        match self {
            Problem::MethodNotAllowed { allow } => {
                headers.insert(ALLOW, allow);
            }
            Problem::RateLimited { retry_after, .. } => {
                headers.insert(RETRY_AFTER, HeaderValue::from(retry_after));
            }
            Problem::StoreUnavailable => {
                // The store is probed twice a second: worth trying again after one.
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Problem::MissingCredentials | Problem::UnknownCredentials => {
                let challenge = HeaderValue::from_static("Bearer realm=\"sluice\"");
                headers.insert(WWW_AUTHENTICATE, challenge);
            }
            _ => {}
        }
        res
    }

    /// The problem as raw HTTP/1.1 bytes, for answers written before any request was parsed
    /// (the connection closes right after), and the length of its body.
    pub fn to_http1(&self, id_header: &HeaderName, request_id: &str) -> (Vec<u8>, usize) {
        let body = self.body(request_id).to_string();
        let status = self.status();
        let head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\n{id_header}: {request_id}\r\nconnection: close\r\n\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        );
        let len = body.len();
        ([head.into_bytes(), body.into_bytes()].concat(), len)
    }
}

impl Deadline {
    /// 408, but for an upstream's answer: `timeout_status` (408 or 504).
    pub fn status(&self) -> StatusCode {
        match self {
            Deadline::Head | Deadline::Body | Deadline::Batch => StatusCode::REQUEST_TIMEOUT,
            Deadline::Answer { status } => *status,
        }
    }

    fn detail(&self) -> &'static str {
        match self {
            Deadline::Head => "The request head did not arrive in time.",
            Deadline::Body => "The request body did not arrive in time.",
            Deadline::Answer { .. } => "The upstream did not answer in time.",
            Deadline::Batch => "The batch's deadline passed before this request finished.",
        }
    }
}

impl Limit {
    fn detail(&self) -> Cow<'static, str> {
        match self {
            Limit::Body { max } => format!("The request body is larger than {max} bytes."),
            Limit::Batch { max } => format!("A batch may hold at most {max} requests."),
            Limit::Cost { cost, capacity } => format!(
                "This request can never be admitted: a request costing {cost} can never fit a \
                 quota of {capacity}."
            ),
        }
        .into()
    }
}

/// The limits that refused a request, as the JSON array of their names a 429 body carries.
/// Rendered once per policy at start; a refusal copies these few bytes and shares no counter
/// with other cores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violated(String);

impl Violated {
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Violated {
        let names: Vec<&str> = names.into_iter().collect();
        Violated(serde_json::to_string(&names).unwrap_or_else(|_| "[]".into()))
    }
}

/// The 429 body, byte for byte what `Problem::body` serializes (members in insertion order:
/// type, title, status, detail, request_id, then the extensions), written into one string.
fn rate_limited_body(retry_after: u64, violated: &Violated, request_id: &str) -> String {
    let mut secs = itoa::Buffer::new();
    let secs = secs.format(retry_after);
    let mut s = String::with_capacity(240 + request_id.len() + violated.0.len());
    s.push_str("{\"type\":\"");
    s.push_str(QUOTA_EXCEEDED);
    s.push_str("\",\"title\":\"Too Many Requests\",\"status\":429,");
    s.push_str("\"detail\":\"Rate limit exceeded; retry after ");
    s.push_str(secs);
    s.push_str(if retry_after == 1 {
        " second"
    } else {
        " seconds"
    });
    s.push_str(".\",\"request_id\":");
    push_json_str(&mut s, request_id);
    s.push_str(",\"retry_after\":");
    s.push_str(secs);
    s.push_str(",\"violated-policies\":");
    s.push_str(&violated.0);
    s.push('}');
    s
}

/// Appends `text` as a JSON string; request ids rarely need escaping, so look first.
fn push_json_str(out: &mut String, text: &str) {
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(text);
        out.push('"');
    } else {
        out.push_str(&Value::from(text).to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_rfc9457_json_with_the_request_id() {
        let res = Problem::NoRoute.into_response::<Bytes>("abc");
        assert_eq!(res.status(), 404);
        assert_eq!(res.headers()[CONTENT_TYPE], "application/problem+json");
        let v: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(v["status"], 404);
        assert_eq!(v["title"], "Not Found");
        assert_eq!(v["request_id"], "abc");
        assert_eq!(v["type"], "about:blank");
    }

    #[test]
    fn upstream_faults_are_listed_in_the_order_of_their_counters() {
        for (i, fault) in UpstreamFault::ALL.iter().enumerate() {
            assert_eq!(*fault as usize, i);
        }
    }

    #[test]
    fn method_not_allowed_carries_allow() {
        let allow = HeaderValue::from_static("GET, POST");
        let res = Problem::MethodNotAllowed { allow }.into_response::<Bytes>("x");
        assert_eq!(res.status(), 405);
        assert_eq!(res.headers()[ALLOW], "GET, POST");
    }

    #[test]
    fn timeouts_close_the_connection_and_401_challenges() {
        assert_eq!(
            Problem::TimedOut(Deadline::Body)
                .into_response::<Bytes>("x")
                .headers()[CONNECTION],
            "close"
        );
        let to = Problem::TimedOut(Deadline::Answer {
            status: StatusCode::GATEWAY_TIMEOUT,
        });
        assert!(
            to.into_response::<Bytes>("x")
                .headers()
                .get(CONNECTION)
                .is_none()
        );
        let res = Problem::MissingCredentials.into_response::<Bytes>("x");
        assert!(res.headers().contains_key(WWW_AUTHENTICATE));
    }

    #[test]
    fn a_429_body_is_byte_for_byte_the_json_document() {
        for (retry_after, names, id) in [
            (1, vec!["default"], "abc"),
            (72, vec!["default", "default.rate"], "5f0c9d2e41a7b3c8"),
            (
                3,
                vec!["odd \"name\""],
                "id with \"quotes\" and \\ and \ttab",
            ),
        ] {
            let p = Problem::RateLimited {
                retry_after,
                violated: Violated::new(names),
            };
            let expected = p.body(id).to_string();
            let res = p.into_response::<Bytes>(id);
            assert_eq!(std::str::from_utf8(res.body()).unwrap(), expected);
        }
    }

    #[test]
    fn raw_http1_answers_are_complete_messages() {
        let header = HeaderName::from_static("x-request-id");
        let (bytes, _) = Problem::TimedOut(Deadline::Head).to_http1(&header, "id-1");
        let raw = String::from_utf8(bytes).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 408 Request Timeout\r\n"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(head.contains("connection: close"));
        assert!(head.contains("x-request-id: id-1\r\n"));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["request_id"], "id-1");
    }
}
