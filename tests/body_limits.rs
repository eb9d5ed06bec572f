//! How much of a body sluice takes: a body over `max_body` is refused with 413, whether its
//! length is declared or it streams, and a streamed one never reaches the upstream whole; a
//! body of unknown length is counted too, and a body the client breaks off is its fault (400).

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::StreamBody;
use support::raw::{dechunk, find, read_answer};
use support::*;
use tokio::io::AsyncWriteExt;

// ---- declared ----------------------------------------------------------------------------------

#[tokio::test]
async fn a_declared_length_over_max_body_gets_413_before_the_body_is_sent() {
    let up = spawn_upstream().await;
    let sluice = guarded().upstream(&up).start();
    for path in ["/json", "/raw/x", "/any/x"] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
        );
        let mut s = raw::open(sluice.addr, head).await;
        // No body byte is ever sent: the answer can only come from the head.
        let res = within(Duration::from_millis(1000), "413", read_answer(&mut s)).await;
        let body = assert_problem(&res, 413);
        assert_eq!(body["max_body"], MAX_BODY, "{path}");
    }
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn a_declared_length_over_max_body_with_expect_100_continue_gets_413_not_100() {
    let up = spawn_upstream().await;
    let sluice = guarded().upstream(&up).start();
    let head = "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n";
    let mut s = raw::open(sluice.addr, head).await;
    let res = within(Duration::from_millis(1000), "413", read_answer(&mut s)).await;
    assert_problem(&res, 413);
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn a_declared_length_of_exactly_max_body_passes() {
    let up = spawn_upstream().await;
    let sluice = guarded().upstream(&up).start();
    let body = json_of_len(MAX_BODY);
    let res = send(sluice.addr, post_json("/exact", &body)).await;
    assert_eq!(res.status, 200);
    assert_eq!(up.last().body, body.as_bytes());
    let res = send(sluice.addr, post_json("/over", &json_of_len(MAX_BODY + 1))).await;
    assert_eq!(assert_problem(&res, 413)["max_body"], MAX_BODY);
    assert_eq!(up.seen().len(), 1);
}

// ---- streamed ----------------------------------------------------------------------------------

#[tokio::test]
async fn oversized_chunked_json_body_gets_413_and_never_reaches_upstream() {
    let up = spawn_upstream().await;
    let sluice = guarded().upstream(&up).start();
    let item = json_of_len(600);
    let chunks = ["[", item.as_str(), ",", item.as_str(), "]"].map(|c| Bytes::from(c.to_string()));
    let res = send(sluice.addr, chunked("/json", "application/json", chunks)).await;
    assert_eq!(assert_problem(&res, 413)["max_body"], MAX_BODY);
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn chunked_bodies_of_exactly_max_body_pass_on_both_kinds_of_route() {
    let up = spawn_upstream().await;
    let sluice = guarded().upstream(&up).start();
    let body = Bytes::from(json_of_len(MAX_BODY));
    let halves = [body.slice(..500), body.slice(500..)];
    let res = send(
        sluice.addr,
        chunked("/json", "application/json", halves.clone()),
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(up.last().body, body);
    let res = send(sluice.addr, chunked("/raw/x", "application/json", halves)).await;
    assert_eq!(res.status, 200);
    assert_eq!(up.last().body, body);
    assert_eq!(up.seen().len(), 2);
}

/// Three chunks of 400 bytes: 1200 in all, over `MAX_BODY` only with the third.
fn three_chunks() -> [Vec<u8>; 3] {
    [vec![b'x'; 400], vec![b'y'; 400], vec![b'z'; 400]]
}

#[tokio::test]
async fn oversized_streamed_body_gets_413_and_the_upstream_never_gets_it_complete() {
    let up = spawn_upstream().await;
    let sluice = guarded().upstream(&up).start();
    let res = send(
        sluice.addr,
        chunked("/raw/x", "application/json", three_chunks()),
    )
    .await;
    assert_eq!(assert_problem(&res, 413)["max_body"], MAX_BODY);
    // One chunk over the limit by itself.
    let one = [vec![b'w'; 1500]];
    let res = send(sluice.addr, chunked("/raw/y", "application/json", one)).await;
    assert_eq!(assert_problem(&res, 413)["max_body"], MAX_BODY);
    // The support upstream records a request whose body broke off with an empty body, so
    // what it may have seen is at most a request it could not read to the end.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for seen in up.seen() {
        assert!(
            seen.body.len() <= MAX_BODY,
            "the upstream got {} bytes",
            seen.body.len()
        );
    }
}

#[tokio::test]
async fn a_streamed_body_is_cut_off_at_max_body_on_the_upstream_wire() {
    let (url, received) = raw::sink().await;
    let sluice = guarded().target(&url).request_timeout("2s").start();
    let res = send(
        sluice.addr,
        chunked("/raw/x", "application/json", three_chunks()),
    )
    .await;
    assert_eq!(assert_problem(&res, 413)["max_body"], MAX_BODY);
    let wire = within(Duration::from_secs(2), "upstream connection end", async {
        loop {
            if let Some(all) = received.lock().unwrap().first().cloned() {
                break all;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let head_len = find(&wire, b"\r\n\r\n").expect("a request head upstream") + 4;
    let head = String::from_utf8_lossy(&wire[..head_len]).to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let (data, complete) = dechunk(&wire[head_len..]);
    assert!(
        data.len() <= MAX_BODY,
        "the upstream received {} body bytes",
        data.len()
    );
    assert!(
        !complete,
        "the cut body must not look complete to the upstream"
    );
}

#[tokio::test]
async fn a_get_body_of_unknown_length_reaches_the_upstream_and_is_counted() {
    // Sent chunked, or over HTTP/2 without content-length: hyper's client would send a GET
    // with no body at all unless told it is chunked.
    let up = spawn_upstream().await;
    let sluice = guarded().upstream(&up).start();
    let head = "GET /any/get HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
                Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let mut s = raw::open(sluice.addr, head).await;
    let res = within(Duration::from_secs(2), "200", read_answer(&mut s)).await;
    assert_eq!(res.status, 200);
    assert_eq!(&up.last().body[..], b"hello");

    let frames = vec![Ok::<_, std::io::Error>(hyper::body::Frame::data(
        Bytes::from(vec![b'a'; 1200]),
    ))];
    let req = http::Request::get("http://api.example/any/big")
        .header("content-type", "text/plain")
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap();
    assert_problem(&send_h2(sluice.addr, req).await, 413);
    let seen = up.last();
    assert!(seen.uri != "/any/big" || seen.body.len() <= MAX_BODY);
}

// ---- broken off --------------------------------------------------------------------------------

#[tokio::test]
async fn a_streamed_body_the_client_breaks_off_gets_400_and_is_not_an_upstream_error() {
    let up = spawn_upstream().await;
    let sluice = guarded().upstream(&up).start();
    // A malformed chunk, then a body cut short by the client closing its side.
    let heads = [
        "POST /raw/a HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n",
        "POST /raw/b HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\nabc",
    ];
    for head in heads {
        let mut s = raw::open(sluice.addr, head).await;
        s.shutdown().await.unwrap();
        let res = within(Duration::from_secs(2), "400", read_answer(&mut s)).await;
        let body = assert_problem(&res, 400);
        assert!(body["detail"].as_str().unwrap().contains("body"), "{body}");
    }
    let text = sluice.metrics().await;
    assert!(!text.contains("sluice_upstream_errors_total{"), "{text}");
}
