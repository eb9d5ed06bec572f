//! A problem as the bytes that go out: its JSON document, a response of any body type, or a
//! raw HTTP/1.1 answer written before any request was parsed.

use bytes::Bytes;
use http::Response;
use http::header::{
    ALLOW, CONNECTION, CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE,
};
use serde_json::{Map, Value, json};

use super::{
    IDEMPOTENCY_KEY_IN_FLIGHT, IDEMPOTENCY_KEY_MALFORMED, IDEMPOTENCY_KEY_MISSING,
    IDEMPOTENCY_KEY_REUSED, Limit, Problem, QUOTA_EXCEEDED,
};

impl Problem {
    /// The problem document.
    pub fn body(&self, request_id: &str) -> Value {
        let status = self.status();
        let kind = match self {
            Problem::RateLimited { .. } => QUOTA_EXCEEDED,
            Problem::IdempotencyKeyMissing => IDEMPOTENCY_KEY_MISSING,
            Problem::IdempotencyKeyMalformed(_) => IDEMPOTENCY_KEY_MALFORMED,
            Problem::IdempotencyKeyInFlight => IDEMPOTENCY_KEY_IN_FLIGHT,
            Problem::IdempotencyKeyReused(_) => IDEMPOTENCY_KEY_REUSED,
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
            Problem::IdempotencyKeyReused(m) => {
                Some(("mismatch", json!(m.names().collect::<Vec<_>>())))
            }
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
                // Not `HeaderValue::from(u64)`, which allocates twice.
                let secs = itoa::Buffer::new().format(retry_after).parse();
                headers.insert(RETRY_AFTER, secs.expect("digits are a header value"));
            }
            // The first request is likely answered within a second.
            Problem::IdempotencyKeyInFlight | Problem::StoreUnavailable => {
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
/// type, title, status, detail, request_id, then the extensions), written into one string of
/// just the room it takes: one with room to spare would take a second allocation to become
/// `Bytes`.
fn rate_limited_body(retry_after: u64, violated: &Violated, request_id: &str) -> String {
    let mut secs = itoa::Buffer::new();
    let secs = secs.format(retry_after);
    let unit = if retry_after == 1 {
        " second"
    } else {
        " seconds"
    };
    let head = [
        "{\"type\":\"",
        QUOTA_EXCEEDED,
        "\",\"title\":\"Too Many Requests\",\"status\":429,",
        "\"detail\":\"Rate limit exceeded; retry after ",
        secs,
        unit,
        ".\",\"request_id\":",
    ];
    let tail = [
        ",\"retry_after\":",
        secs,
        ",\"violated-policies\":",
        &violated.0,
        "}",
    ];
    let quoted_id = request_id.len() + 2;
    let room = head.iter().chain(&tail).map(|p| p.len()).sum::<usize>() + quoted_id;
    let mut s = String::with_capacity(room);
    head.iter().for_each(|p| s.push_str(p));
    push_json_str(&mut s, request_id);
    tail.iter().for_each(|p| s.push_str(p));
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
    use crate::problem::Deadline;
    use http::StatusCode;

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
            let violated = Violated::new(names);
            let written = rate_limited_body(retry_after, &violated, id);
            if !id.contains('"') {
                assert_eq!(
                    written.capacity(),
                    written.len(),
                    "the room it takes, no more"
                );
            }
            let p = Problem::RateLimited {
                retry_after,
                violated,
            };
            let expected = p.body(id).to_string();
            assert_eq!(written, expected);
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
