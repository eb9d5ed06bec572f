//! Which status wins when a request is wrong in several ways at once: no route (404) and a
//! method the route does not take (405) before credentials (401, 403), credentials before the
//! body's size (413) and media type (415), and the media type before invalid JSON (400).

mod support;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use support::*;

const GOOD_KEY: &str = "k-good-123";
const READ_KEY: &str = "k-read-456";

/// One route, `/w/`, that takes JSON POSTs of up to 1 KiB from keys with the `write` scope;
/// `GOOD_KEY` has it, `READ_KEY` has only `read`.
fn writers_only(up: &Upstream) -> Sluice {
    Sluice::builder()
        .upstream(up)
        .route(
            "/w/",
            "methods = [\"POST\"]\npolicy = \"none\"\nmax_body = \"1KiB\"\nscopes = [\"write\"]",
        )
        .key("good", GOOD_KEY, "scopes = [\"write\"]")
        .key("reader", READ_KEY, "scopes = [\"read\"]")
        .start()
}

/// A request to `/w/x` with `body` as `content_type`, and `key` as a bearer token if given.
fn to_w(key: Option<&str>, method: Method, content_type: &str, body: &str) -> Request<Full<Bytes>> {
    let mut b = request(method, "/w/x").header("content-type", content_type);
    if let Some(key) = key {
        b = b.header("authorization", bearer(key));
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

#[tokio::test]
async fn status_order_404_and_405_beat_401() {
    let up = spawn_upstream().await;
    let sluice = writers_only(&up);
    assert_problem(&get(sluice.addr, "/elsewhere").await, 404);
    let req = to_w(None, Method::DELETE, "application/json", "{}");
    let res = send(sluice.addr, req).await;
    assert_problem(&res, 405);
    assert_eq!(res.header("allow"), "POST");
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn status_order_401_beats_413_and_415() {
    let up = spawn_upstream().await;
    let sluice = writers_only(&up);
    let big = json_of_len(5000);
    for (ct, body) in [
        ("application/json", big.as_str()),
        ("text/plain", "{}"),
        ("text/plain", big.as_str()),
    ] {
        let res = send(sluice.addr, to_w(None, Method::POST, ct, body)).await;
        assert_problem(&res, 401);
        assert!(!res.header("www-authenticate").is_empty());
    }
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn status_order_403_beats_413_and_415() {
    let up = spawn_upstream().await;
    let sluice = writers_only(&up);
    let big = json_of_len(5000);
    for (ct, body) in [("application/json", big.as_str()), ("text/plain", "{}")] {
        let req = to_w(Some(READ_KEY), Method::POST, ct, body);
        assert_problem(&send(sluice.addr, req).await, 403);
    }
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn status_order_declared_413_beats_415_and_415_beats_400() {
    let up = spawn_upstream().await;
    let sluice = writers_only(&up);
    let req = to_w(
        Some(GOOD_KEY),
        Method::POST,
        "text/plain",
        &"x".repeat(5000),
    );
    assert_problem(&send(sluice.addr, req).await, 413);
    // JSON by name but not in UTF-8, and not valid either: the media type is refused first.
    let ct = "application/json; charset=latin1";
    let req = to_w(Some(GOOD_KEY), Method::POST, ct, "{nope");
    assert_problem(&send(sluice.addr, req).await, 415);
    // With everything right, it passes.
    let req = to_w(Some(GOOD_KEY), Method::POST, "application/json", "{}");
    assert_eq!(send(sluice.addr, req).await.status, 200);
    assert_eq!(up.seen().len(), 1);
}
