//! What a JSON route refuses in a body: another media type (415, naming the accepted ones) and
//! JSON that does not parse or is not UTF-8 (400, naming the line and column); a route may
//! take any media type, or pass bodies on unchecked.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::{Full, StreamBody};
use support::raw::read_answer;
use support::*;
use tokio::io::AsyncWriteExt;

// ---- 415 ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_body_that_is_not_json_gets_415_naming_the_accepted_types() {
    let up = spawn_upstream().await;
    let sluice = guarded().upstream(&up).start();
    let refused = [
        Some("text/plain"),
        None,
        Some("application/json; charset=latin1"),
        Some("application/jsonx"),
    ];
    for ct in refused {
        let res = send(sluice.addr, with_body(Method::POST, "/x", ct, "{}")).await;
        let body = assert_problem(&res, 415);
        assert_eq!(
            body["accepted"],
            serde_json::json!(["application/json"]),
            "{ct:?}"
        );
    }
    // A second line that names another type: checking the first alone let it through. The
    // route takes any body that is not checked as JSON, so only the media type refuses it.
    let twice = request(Method::POST, "/raw/x")
        .header("content-type", "application/json")
        .header("content-type", "application/xml")
        .body(Full::new(Bytes::from_static(b"<a/>")))
        .unwrap();
    assert_problem(&send(sluice.addr, twice).await, 415);
    // Where any type goes, a body that either line calls JSON is still checked as JSON.
    let twice = request(Method::POST, "/any/x")
        .header("content-type", "text/plain")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{not json")))
        .unwrap();
    assert_problem(&send(sluice.addr, twice).await, 400);
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn a_refusal_of_a_small_body_that_has_arrived_keeps_the_connection() {
    // As with a 429 to a client that posts too often: the connection stays usable.
    let up = spawn_upstream().await;
    let sluice = guarded().upstream(&up).start();
    let mut s = tokio::net::TcpStream::connect(sluice.addr).await.unwrap();
    let head =
        "POST /x HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello";
    for _ in 0..2 {
        s.write_all(head.as_bytes()).await.unwrap();
        let res = within(Duration::from_secs(2), "415", read_answer(&mut s)).await;
        assert_problem(&res, 415);
        assert!(res.headers.get("connection").is_none());
    }
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn an_early_refusal_over_http2_reaches_the_client_while_it_is_still_sending() {
    let up = spawn_upstream().await;
    let sluice = guarded().upstream(&up).start();
    for _ in 0..20 {
        // One chunk, then the body stays open until the answer has come.
        type Chunk = Result<http_body::Frame<Bytes>, std::io::Error>;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Chunk>();
        tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"hello"))))
            .unwrap();
        let rx = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk, rx))
        });
        let rx = Box::pin(rx);
        let req = request(Method::POST, "/x")
            .header("content-type", "text/plain")
            .body(StreamBody::new(rx))
            .unwrap();
        let res = within(Duration::from_secs(2), "415", send_h2(sluice.addr, req)).await;
        assert_problem(&res, 415);
        drop(tx);
    }
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn json_media_types_and_bodiless_requests_pass_the_media_type_check() {
    let up = spawn_upstream().await;
    let sluice = guarded().upstream(&up).start();
    for ct in [
        "application/json",
        "application/problem+json",
        "application/json; charset=utf-8",
        "Application/JSON;charset=\"UTF-8\"",
    ] {
        let res = send(sluice.addr, with_body(Method::POST, "/x", Some(ct), "{}")).await;
        assert_eq!(res.status, 200, "{ct}: {:?}", res.body);
        assert_eq!(up.last().headers["content-type"], ct);
    }
    assert_eq!(get(sluice.addr, "/get").await.status, 200);
    let empty = request(Method::POST, "/empty")
        .header("content-length", "0")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(sluice.addr, empty).await.status, 200);
    // Over HTTP/2 the stream may end after the head: Content-Length 0 still means no body.
    let empty = futures_util::stream::empty::<Result<http_body::Frame<Bytes>, std::io::Error>>();
    let h2 = request(Method::POST, "/empty-h2")
        .header("content-length", "0")
        .body(StreamBody::new(empty))
        .unwrap();
    assert_eq!(send_h2(sluice.addr, h2).await.status, 200);
    let seen = up.seen();
    assert_eq!(seen.len(), 7);
    assert_eq!(seen[5].uri, "/empty");
    assert!(seen[5].body.is_empty());
    assert_eq!(seen[6].uri, "/empty-h2");
}

#[tokio::test]
async fn a_route_with_any_content_type_takes_anything() {
    let up = spawn_upstream().await;
    let sluice = guarded().upstream(&up).start();
    for ct in [Some("text/plain"), None, Some("image/png")] {
        let res = send(sluice.addr, with_body(Method::POST, "/any/x", ct, "hello")).await;
        assert_eq!(res.status, 200, "{ct:?}");
        assert_eq!(up.last().body, "hello");
    }
    assert_eq!(up.seen().len(), 3);
}

// ---- 400 ---------------------------------------------------------------------------------------

#[tokio::test]
async fn invalid_json_gets_400_naming_line_and_column_and_never_reaches_upstream() {
    let up = spawn_upstream().await;
    let sluice = guarded().upstream(&up).start();
    let res = send(sluice.addr, post_json("/x", "{\n  \"a\": 1,\n  \"b\" 2\n}")).await;
    let body = assert_problem(&res, 400);
    assert_eq!(
        body["position"],
        serde_json::json!({"line": 3, "column": 7})
    );
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("line 3, column 7"), "{detail}");
    // Sent chunked, the same.
    let res = send(sluice.addr, chunked_json("/x", ["{\"a\":", " tru}"])).await;
    assert_eq!(assert_problem(&res, 400)["position"]["line"], 1);
    // A Connection header that names Content-Type used to strip it before the JSON check,
    // which then let the body through unchecked.
    let req = request(Method::POST, "/x")
        .header("content-type", "application/json")
        .header("connection", "content-type")
        .body(Full::new(Bytes::from_static(b"a=1&admin=true")))
        .unwrap();
    assert_problem(&send(sluice.addr, req).await, 400);
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn json_that_is_not_utf8_gets_400_and_never_reaches_upstream() {
    let up = spawn_upstream().await;
    let sluice = guarded().upstream(&up).start();
    let req = request(Method::POST, "/x")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{\n \"a\": \"\xff\"}")))
        .unwrap();
    let body = assert_problem(&send(sluice.addr, req).await, 400);
    assert_eq!(
        body["position"],
        serde_json::json!({"line": 2, "column": 8})
    );
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn without_validate_json_invalid_json_goes_through() {
    let up = spawn_upstream().await;
    let sluice = guarded().upstream(&up).start();
    let res = send(sluice.addr, post_json("/raw/x", "{not json")).await;
    assert_eq!(res.status, 200);
    assert_eq!(up.last().body, "{not json");
}
