//! Running a batch: items in dependency order, independent ones concurrently (up to
//! `max_concurrency`), each through the same pipeline as a request of its own, in-process.
//! An item whose dependency did not answer 2xx is answered 424 without running; the whole
//! batch shares one deadline, after which unfinished items are answered 408.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::header::{
    AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderMap, HeaderValue,
};
use http::request::Parts;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::parse::Item;
use crate::body::{self, Body};
use crate::media::is_json;
use crate::pipeline::{ClientCert, FromBatch, Proxy, Tls, X_API_KEY};
use crate::problem::{Deadline, Problem};
use crate::upstream::{X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO};

/// The largest item response a batch carries; beyond it the item is answered 502.
const MAX_ITEM_RESPONSE: usize = 8 << 20;

/// What the answers of one batch may hold in all, as the 207 holds them at once (and text
/// may double as JSON); an answer past it is answered 502 as one too large.
const MAX_BATCH_ANSWERS: usize = 16 << 20;

/// One item's answer, as it appears in the 207 (members in this order).
#[derive(Debug, Clone, Serialize)]
pub struct Answer<'a> {
    id: &'a str,
    #[serde(serialize_with = "code")]
    pub status: StatusCode,
    headers: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_encoding: Option<&'static str>,
    /// `null` for an empty body.
    body: Option<Payload>,
}

/// An answer's body in the 207.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
enum Payload {
    /// JSON from the upstream, as it wrote it.
    Json(Box<RawValue>),
    /// Text, or base64 with `body_encoding`.
    Text(String),
    /// A problem document sluice wrote for the item.
    Problem(Value),
}

/// A status is written as its number.
fn code<S: Serializer>(status: &StatusCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u16(status.as_u16())
}

/// Runs every item; the answers come back in request order.
pub async fn run<'a>(
    proxy: &Proxy,
    peer: SocketAddr,
    batch: &Parts,
    items: &'a [Item<'_>],
    max_concurrency: usize,
    deadline: Instant,
) -> Vec<Answer<'a>> {
    let mut answers: Vec<Option<Answer>> = vec![None; items.len()];
    // Each started item's request id, fixed before it runs: an item cut off at the deadline
    // is answered under the id its log line carries.
    let mut ids: Vec<Option<HeaderValue>> = vec![None; items.len()];
    let budget = AtomicUsize::new(MAX_BATCH_ANSWERS);
    let budget = &budget;
    let schedule = async {
        let mut started = vec![false; items.len()];
        let mut running = FuturesUnordered::new();
        loop {
            start_ready(
                proxy,
                items,
                &mut answers,
                &mut started,
                &mut running,
                max_concurrency,
                |i| {
                    let mut req = item_request(&items[i], batch);
                    let id = proxy.request_id(&req);
                    let name = proxy.app.config.headers.request_id.clone();
                    req.headers_mut().insert(name, id.clone());
                    ids[i] = Some(id);
                    async move {
                        (
                            i,
                            answer(
                                proxy,
                                &items[i].id,
                                proxy.serve_request(peer, req).await,
                                budget,
                            )
                            .await,
                        )
                    }
                },
            );
            match running.next().await {
                Some((i, answer)) => answers[i] = Some(answer),
                None => break,
            }
        }
    };
    // Biased, the deadline first: an item whose own timeout fires in the same instant is cut
    // off by the batch's deadline rather than answered by its route's timeout, so the answer
    // does not depend on which timer is polled first.
    tokio::select! {
        biased;
        _ = tokio::time::sleep_until(deadline) => {}
        _ = schedule => {}
    }
    answers
        .into_iter()
        .zip(items)
        .zip(ids)
        .map(|((a, item), request_id)| {
            a.unwrap_or_else(|| {
                problem(
                    proxy,
                    &item.id,
                    Problem::TimedOut(Deadline::Batch),
                    request_id,
                )
            })
        })
        .collect()
}

/// Starts every item whose dependencies have all answered, while slots are free; answers 424
/// at once for an item with a dependency that did not succeed (which may unblock others).
fn start_ready<'a, F: Future>(
    proxy: &Proxy,
    items: &'a [Item<'_>],
    answers: &mut [Option<Answer<'a>>],
    started: &mut [bool],
    running: &mut FuturesUnordered<F>,
    max: usize,
    mut start: impl FnMut(usize) -> F,
) {
    let mut progress = true;
    while progress {
        progress = false;
        for i in 0..items.len() {
            if started[i] || items[i].depends_on.iter().any(|&d| answers[d].is_none()) {
                continue;
            }
            let failed = items[i]
                .depends_on
                .iter()
                .find(|&&d| !answers[d].as_ref().is_some_and(|a| a.status.is_success()));
            if let Some(&d) = failed {
                let status = answers[d].as_ref().map_or(0, |a| a.status.as_u16());
                let failed = Problem::DependencyFailed {
                    dependency: items[d].id.clone(),
                    status,
                };
                answers[i] = Some(problem(proxy, &items[i].id, failed, None));
                started[i] = true;
                progress = true;
            } else if running.len() < max {
                started[i] = true;
                running.push(start(i));
            }
        }
    }
}

/// The item as a request of its own: its method, path, headers and body, with the batch's
/// credentials, client certificate and client headers (which an item cannot override).
fn item_request(item: &Item, batch: &Parts) -> Request<Body> {
    let extensions = &batch.extensions;
    let (cert, tls) = (extensions.get::<Arc<ClientCert>>(), extensions.get::<Tls>());
    let batch = &batch.headers;
    let mut headers = HeaderMap::with_capacity(item.headers.len() + 4);
    for (name, value) in &item.headers {
        headers.append(name.clone(), value.clone());
    }
    // What says who the client is comes from the batch, every line of it: a trusted proxy may
    // have added a line of its own after the client's.
    let from_batch = [
        &AUTHORIZATION,
        &X_API_KEY,
        &HOST,
        &X_FORWARDED_FOR,
        &X_FORWARDED_PROTO,
        &X_FORWARDED_HOST,
    ];
    headers.remove(CONTENT_LENGTH);
    for name in from_batch {
        headers.remove(name);
    }
    for name in from_batch {
        for value in batch.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    let body = item.body.map_or(Body::Empty, |raw| {
        if !headers.contains_key(CONTENT_TYPE) {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        // A string sent as another media type is that text, not a JSON string.
        let text = (!is_json(&headers))
            .then(|| serde_json::from_str::<String>(raw.get()).ok())
            .flatten();
        Body::full(text.unwrap_or_else(|| raw.get().to_owned()))
    });
    let mut req = Request::new(body);
    *req.method_mut() = item.method.clone();
    *req.uri_mut() = item.uri.clone();
    *req.headers_mut() = headers;
    req.extensions_mut().insert(FromBatch);
    if let Some(cert) = cert {
        req.extensions_mut().insert(cert.clone());
    }
    if let Some(tls) = tls {
        req.extensions_mut().insert(*tls);
    }
    req
}

/// An item's response, read whole and rendered for the 207.
async fn answer<'a>(
    proxy: &Proxy,
    id: &'a str,
    res: Response<Body>,
    budget: &AtomicUsize,
) -> Answer<'a> {
    let (parts, body) = res.into_parts();
    // A body cut off is answered under the request id the item's answer already carries.
    let request_id = || {
        parts
            .headers
            .get(&proxy.app.config.headers.request_id)
            .cloned()
    };
    let bytes = match read_within(body, budget).await {
        Ok(bytes) => bytes,
        // Not sluice's problem with the request, nor the upstream's: the one answer a batch
        // gives that is not a problem document (documented).
        Err(Unread::TooLarge) => {
            return Answer {
                id,
                status: StatusCode::BAD_GATEWAY,
                headers: Map::new(),
                body_encoding: None,
                body: Some(Payload::Text("response too large for a batch".into())),
            };
        }
        Err(Unread::Cut) => {
            let status = proxy.app.config.server.timeout_status;
            let p = Problem::TimedOut(Deadline::Answer { status });
            return problem(proxy, id, p, request_id());
        }
        Err(Unread::Broken) => return problem(proxy, id, Problem::UpstreamReset, request_id()),
    };
    let mut headers = Map::new();
    // The answer is a part of the batch's, not a message of its own: a `Connection: close`
    // (a 408's) would speak of a connection the item does not have.
    for (name, value) in parts.headers.iter().filter(|(n, _)| *n != CONNECTION) {
        let value = String::from_utf8_lossy(value.as_bytes());
        match headers.get_mut(name.as_str()) {
            Some(Value::String(prior)) => *prior = format!("{prior}, {value}"),
            _ => drop(headers.insert(name.to_string(), Value::String(value.into_owned()))),
        }
    }
    let (body_encoding, body) = render_body(&parts.headers, &bytes);
    Answer {
        id,
        status: parts.status,
        headers,
        body_encoding,
        body,
    }
}

/// JSON stays JSON as written, other text is a string, anything else is base64.
fn render_body(headers: &HeaderMap, bytes: &[u8]) -> (Option<&'static str>, Option<Payload>) {
    if bytes.is_empty() {
        return (None, None);
    }
    let base64 = || {
        let base64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        (Some("base64"), Some(Payload::Text(base64)))
    };
    let Ok(text) = std::str::from_utf8(bytes) else {
        return base64();
    };
    // Only one JSON value is embedded; anything else under a JSON type is text.
    // Held to what a batch itself may hold, so that a client's parser can read the 207.
    let json = is_json(headers)
        .then(|| serde_json::from_str::<&RawValue>(text).ok())
        .flatten()
        .filter(|_| super::document::holdable(bytes).is_ok());
    match json {
        Some(raw) => (None, Some(Payload::Json(raw.to_owned()))),
        // Text full of control characters would be up to six times its size as a JSON string
        // (`\u0001`); quotes, tabs and newlines at most double it.
        None if escaped_len(bytes) > bytes.len() * 2 => base64(),
        None => (None, Some(Payload::Text(text.to_owned()))),
    }
}

/// The length of `bytes` written as the inside of a JSON string.
fn escaped_len(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .map(|&b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..0x20 => 6,
            _ => 1,
        })
        .sum()
}

/// Why an item's answer could not be read into the 207.
#[derive(Debug)]
enum Unread {
    /// Past `MAX_ITEM_RESPONSE`, or past what is left of the batch's `MAX_BATCH_ANSWERS`.
    TooLarge,
    /// The upstream's answer did not end within the item's `request_timeout`.
    Cut,
    /// The upstream broke off.
    Broken,
}

/// An item's answer body, read whole, within `MAX_ITEM_RESPONSE` and what is left of the
/// batch's `budget`, which it takes from as it arrives (items run at once). An answer not
/// kept gives back what it took.
async fn read_within(body: Body, budget: &AtomicUsize) -> Result<Bytes, Unread> {
    let mut body = std::pin::pin!(body);
    let mut read = BytesMut::new();
    let outcome = loop {
        let data = match body.frame().await {
            None => break Ok(()),
            Some(Err(body::Error::Cut)) => break Err(Unread::Cut),
            Some(Err(_)) => break Err(Unread::Broken),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue, // trailers
            },
        };
        let take = |left: usize| left.checked_sub(data.len());
        if read.len() + data.len() > MAX_ITEM_RESPONSE
            || budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, take)
                .is_err()
        {
            break Err(Unread::TooLarge);
        }
        read.extend_from_slice(&data);
    };
    if outcome.is_err() {
        budget.fetch_add(read.len(), Ordering::Relaxed);
    }
    outcome.map(|()| read.freeze())
}

/// An answer sluice gives for an item itself, under `request_id` or, for an item that never
/// ran, a new one.
fn problem<'a>(
    proxy: &Proxy,
    id: &'a str,
    p: Problem,
    request_id: Option<HeaderValue>,
) -> Answer<'a> {
    let request_id = request_id.unwrap_or_else(|| proxy.new_request_id());
    let request_id = request_id.to_str().unwrap_or_default();
    let mut headers = Map::new();
    headers.insert("content-type".into(), "application/problem+json".into());
    let id_header = proxy.app.config.headers.request_id.to_string();
    headers.insert(id_header, request_id.into());
    Answer {
        id,
        status: p.status(),
        headers,
        body_encoding: None,
        body: Some(Payload::Problem(p.body(request_id))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_that_would_more_than_double_as_a_json_string_is_base64() {
        let plain = HeaderMap::new();
        let lines = b"\"1\",\"a\"\n\"2\",\"b\"\n0\t0\t0\n1\t7\t3\n";
        let (encoding, body) = render_body(&plain, lines);
        assert!(encoding.is_none());
        assert!(matches!(body, Some(Payload::Text(t)) if t.as_bytes() == lines));
        let controls = [1u8; 300];
        let (encoding, body) = render_body(&plain, &controls);
        assert_eq!(encoding, Some("base64"));
        let Some(Payload::Text(b64)) = body else {
            panic!("{body:?}")
        };
        assert_eq!(b64.len(), 400);
        assert_eq!(escaped_len(b"a\x01\"\\\n"), 1 + 6 + 2 + 2 + 2);
        // JSON goes in as it is, however many quotes it has.
        let mut json = HeaderMap::new();
        json.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let list = br#"["a","b","c","d","e","f"]"#;
        let (encoding, body) = render_body(&json, list);
        assert!(encoding.is_none());
        assert!(matches!(body, Some(Payload::Json(_))));
    }
}
