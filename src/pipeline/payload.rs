//! Checks on a request's body before it goes upstream: declared size (413), media type (415),
//! and, for JSON that the route validates, reading it whole within `max_body` (413) and parsing
//! it (400). Other bodies stream through, counted: past `max_body` the upstream request is cut
//! off, so the upstream never receives more than `max_body` bytes, and the client gets 413.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::body::BoxError;
use crate::config::Route;
use crate::problem::{Limit, Problem};

/// Refuses a body by what its head declares: a length over `max_body`, or a media type the
/// route does not accept. `has_body` is false for requests that carry none (GET, empty).
pub fn check_head(route: &Route, headers: &HeaderMap, has_body: bool) -> Result<(), Problem> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > route.max_body) {
        let max = route.max_body;
        return Err(Problem::TooLarge(Limit::Body { max }));
    }
    // An HTTP/2 request may end its stream only after its head, even with no body at all.
    let has_body = has_body && declared != Some(0);
    if let (true, Some(accepted)) = (has_body, &route.content_types)
        && !media_type_accepted(accepted, headers)
    {
        return Err(Problem::UnsupportedMediaType {
            accepted: accepted.clone(),
        });
    }
    Ok(())
}

/// Whether the body's Content-Type is JSON (`application/json` or `application/*+json`).
/// Any line counts: a body that one of them calls JSON is checked as JSON.
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(CONTENT_TYPE)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| json_essence(essence(v))))
}

/// The one Content-Type a message has. A second line makes it none: RFC 9110 allows one, and
/// checking only the first would let the other one through to the upstream unchecked.
fn content_type(headers: &HeaderMap) -> Option<&str> {
    let mut lines = headers.get_all(CONTENT_TYPE).iter();
    let value = lines.next()?;
    match lines.next() {
        None => value.to_str().ok(),
        Some(_) => None,
    }
}

fn essence(value: &str) -> &str {
    value.split(';').next().unwrap_or_default().trim()
}

fn json_essence(essence: &str) -> bool {
    let Some((kind, sub)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case("json") || sub.to_ascii_lowercase().ends_with("+json"))
}

/// A missing Content-Type is not accepted; JSON must be UTF-8 (the only charset JSON has).
fn media_type_accepted(accepted: &[String], headers: &HeaderMap) -> bool {
    let Some(value) = content_type(headers) else {
        return false;
    };
    let essence = essence(value);
    let json = json_essence(essence);
    if json && !utf8_charset(value) {
        return false;
    }
    accepted.iter().any(|a| {
        a.eq_ignore_ascii_case(essence)
            || (a == "application/json" && json)
            || a.strip_suffix("/*").is_some_and(|kind| {
                essence
                    .split_once('/')
                    .is_some_and(|(k, _)| k.eq_ignore_ascii_case(kind))
            })
    })
}

fn utf8_charset(value: &str) -> bool {
    value
        .split(';')
        .skip(1)
        .all(|param| match param.split_once('=') {
            Some((name, v)) if name.trim().eq_ignore_ascii_case("charset") => {
                let v = v.trim().trim_matches('"');
                v.eq_ignore_ascii_case("utf-8") || v.eq_ignore_ascii_case("utf8")
            }
            _ => true,
        })
}

/// Reads a body whole, refusing it as soon as it passes `limit` bytes. A body that arrives in
/// one piece is returned without copying.
pub async fn read_whole(mut body: Incoming, limit: u64) -> Result<Bytes, Problem> {
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| Problem::UnreadableBody)?;
        let Ok(data) = frame.into_data() else {
            continue;
        }; // trailers are not forwarded
        total += data.len() as u64;
        if total > limit {
            return Err(Problem::TooLarge(Limit::Body { max: limit }));
        }
        match &first {
            None => first = Some(data),
            Some(head) => {
                if rest.is_empty() {
                    rest.extend_from_slice(head);
                }
                rest.extend_from_slice(&data);
            }
        }
    }
    Ok(if rest.is_empty() {
        first.unwrap_or_default()
    } else {
        rest.freeze()
    })
}

/// Parses without building anything: only whether the bytes are one valid JSON value, in
/// UTF-8 as RFC 8259 §8.1 asks (the parse alone skips over the bytes inside strings).
pub fn validate_json(bytes: &[u8]) -> Result<(), Problem> {
    if bytes.is_empty() {
        return Ok(());
    }
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(invalid_json_at(bytes, e.valid_up_to(), "invalid UTF-8"));
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
        .map(drop)
        .map_err(invalid_json)
}

/// The 400 for JSON refused at byte `offset`, with its line and column counted from 1.
pub fn invalid_json_at(bytes: &[u8], offset: usize, reason: &str) -> Problem {
    let before = &bytes[..offset];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    Problem::InvalidJson {
        line: before.iter().filter(|&&b| b == b'\n').count() + 1,
        column: offset - line_start + 1,
        reason: reason.into(),
    }
}

/// A JSON parse error as the 400 it answers.
pub fn invalid_json(e: serde_json::Error) -> Problem {
    let reason = e.to_string();
    // serde_json appends " at line L column C"; the position has members of its own.
    let reason = reason
        .split(" at line ")
        .next()
        .unwrap_or_default()
        .to_string();
    Problem::InvalidJson {
        line: e.line(),
        column: e.column(),
        reason,
    }
}

/// How a streamed body is doing, shared between the body and the request that sent it.
#[derive(Debug)]
pub struct Progress(AtomicU8);

impl Default for Progress {
    fn default() -> Self {
        Progress(AtomicU8::new(STREAMING))
    }
}

const STREAMING: u8 = 0;
const COMPLETE: u8 = 1;
const TOO_LARGE: u8 = 2;
const UNREADABLE: u8 = 3;

impl Progress {
    pub fn complete(&self) -> bool {
        self.0.load(Ordering::Relaxed) == COMPLETE
    }

    /// The client's fault, if the body broke off on its side: over `limit`, or unreadable
    /// (the client closed its connection mid-body, or sent a malformed chunk).
    pub fn fault(&self, limit: u64) -> Option<Problem> {
        match self.0.load(Ordering::Relaxed) {
            TOO_LARGE => Some(Problem::TooLarge(Limit::Body { max: limit })),
            UNREADABLE => Some(Problem::UnreadableBody),
            _ => None,
        }
    }
}

/// A request body streamed to the upstream, cut off past `limit` bytes.
#[derive(Debug)]
pub struct Counted {
    inner: Incoming,
    left: u64,
    progress: Arc<Progress>,
}

impl Counted {
    pub fn new(inner: Incoming, limit: u64, progress: Arc<Progress>) -> Counted {
        if inner.is_end_stream() {
            // No body at all: nothing will poll it, and nothing is awaited from the client.
            progress.0.store(COMPLETE, Ordering::Relaxed);
        }
        Counted {
            inner,
            left: limit,
            progress,
        }
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let Poll::Ready(frame) = polled else {
            return Poll::Pending;
        };
        let this = self.get_mut();
        match frame {
            None => {
                this.progress.0.store(COMPLETE, Ordering::Relaxed);
                Poll::Ready(None)
            }
            Some(Ok(frame)) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                if len > this.left {
                    // The frame that would pass the limit is never sent.
                    this.progress.0.store(TOO_LARGE, Ordering::Relaxed);
                    return Poll::Ready(Some(Err("request body over max_body".into())));
                }
                this.left -= len;
                if this.inner.is_end_stream() {
                    this.progress.0.store(COMPLETE, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.progress.0.store(UNREADABLE, Ordering::Relaxed);
                Poll::Ready(Some(Err(e.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(ct: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(ct) = ct {
            h.insert(CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        }
        h
    }

    fn json_only() -> Vec<String> {
        vec!["application/json".into()]
    }

    #[test]
    fn json_and_its_suffix_forms_are_accepted_in_utf8_only() {
        let ok = [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/problem+json",
            "application/json;charset=\"UTF8\"",
        ];
        for ct in ok {
            assert!(
                media_type_accepted(&json_only(), &headers(Some(ct))),
                "{ct}"
            );
        }
        let refused = [
            Some("text/plain"),
            Some("application/json; charset=latin1"),
            Some("application/jsonx"),
            None,
        ];
        for ct in refused {
            assert!(!media_type_accepted(&json_only(), &headers(ct)), "{ct:?}");
        }
    }

    #[test]
    fn other_accepted_types_match_exactly_or_by_wildcard() {
        let accepted = vec!["text/csv".to_string(), "image/*".to_string()];
        assert!(media_type_accepted(
            &accepted,
            &headers(Some("text/csv; charset=latin1"))
        ));
        assert!(media_type_accepted(&accepted, &headers(Some("image/png"))));
        assert!(!media_type_accepted(
            &accepted,
            &headers(Some("text/plain"))
        ));
    }

    #[test]
    fn invalid_json_names_line_and_column() {
        assert_eq!(validate_json(br#"{"a": [1, 2]}"#), Ok(()));
        assert_eq!(validate_json(b""), Ok(()));
        match validate_json(b"{\n  \"a\": 1,\n  \"b\" 2\n}") {
            Err(Problem::InvalidJson {
                line: 3,
                column,
                reason,
            }) => {
                assert_eq!(column, 7);
                assert!(!reason.contains("at line"), "{reason}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            validate_json(b"{} {}").is_err(),
            "trailing data is not one JSON value"
        );
    }
}
