//! Requests and responses pass through intact, both ways, with the proxy headers set.

mod support;

use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use support::*;

#[tokio::test]
async fn method_path_query_headers_and_body_reach_the_upstream_intact() {
    let up = spawn_upstream().await;
    let sluice = spawn_default(&up.url());
    let req = request(Method::PUT, "/v1/items/7?x=1&y=two%20words")
        .header("content-type", "application/json")
        .header("x-custom", "kept")
        .header("accept", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"name":"Ada"}"#)))
        .unwrap();
    let res = send(sluice.addr, req).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["ok"], true);
    let seen = up.last();
    assert_eq!(seen.method, Method::PUT);
    assert_eq!(seen.uri, "/v1/items/7?x=1&y=two%20words");
    assert_eq!(seen.headers["x-custom"], "kept");
    assert_eq!(
        seen.headers["host"], "sluice.test",
        "Host is kept as the client sent it"
    );
    assert_eq!(seen.headers["content-type"], "application/json");
    assert_eq!(&seen.body[..], br#"{"name":"Ada"}"#);
}

#[tokio::test]
async fn a_chunked_request_body_is_forwarded_whole() {
    let up = spawn_upstream().await;
    let sluice = spawn_default(&up.url());
    let res = send(sluice.addr, chunked_json("/echo", ["[1,", "2,", "3]"])).await;
    assert_eq!(res.status, 200);
    assert_eq!(&res.body[..], b"[1,2,3]");
    assert_eq!(&up.last().body[..], b"[1,2,3]");
}

#[tokio::test]
async fn without_json_validation_a_chunked_body_streams_through_unbuffered() {
    let up = spawn_upstream().await;
    let sluice = Sluice::builder()
        .upstream(&up)
        .route("/", "validate_json = false")
        .start();
    let res = send(sluice.addr, chunked_json("/echo", ["[1,", "2,", "3]"])).await;
    assert_eq!(&res.body[..], b"[1,2,3]");
    let seen = up.last();
    assert_eq!(&seen.body[..], b"[1,2,3]");
    assert_eq!(
        seen.headers["transfer-encoding"], "chunked",
        "streamed, not buffered into a length"
    );
}

#[tokio::test]
async fn several_mib_stream_through_both_ways() {
    let up = spawn_upstream().await;
    let sluice = Sluice::builder()
        .upstream(&up)
        .route("/", r#"max_body = "16MiB""#)
        .start();
    let payload = format!("\"{}\"", "x".repeat(6 << 20));
    let res = send(sluice.addr, post_json("/echo", &payload)).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.body.len(), payload.len());
    assert!(res.body == payload.as_bytes());
    assert_eq!(up.last().body.len(), payload.len());

    let res = get(sluice.addr, &format!("/big/{}", 5 << 20)).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.body.len(), 5 << 20);
}

#[tokio::test]
async fn upstream_statuses_and_bodies_pass_through_untouched() {
    let up = spawn_upstream().await;
    let sluice = spawn_default(&up.url());
    for code in [200u16, 201, 202, 204, 400, 404, 409, 422, 500, 503] {
        let res = get(sluice.addr, &format!("/status/{code}")).await;
        assert_eq!(res.status, code);
        if code != 204 {
            assert_eq!(&res.body[..], br#"{"ok":true}"#, "status {code}");
            assert_eq!(
                res.header("content-type"),
                "application/json",
                "not a problem body: {code}"
            );
        }
    }
    assert_eq!(up.seen().len(), 10);
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_both_ways() {
    let up = spawn_upstream().await;
    let sluice = spawn_default(&up.url());
    let req = request(Method::GET, "/headers")
        .header("connection", "keep-alive, x-client-private")
        .header("x-client-private", "1")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic Zm9vOg==")
        .header("x-client-public", "2")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = send(sluice.addr, req).await;
    let seen = up.last();
    for name in [
        "x-client-private",
        "keep-alive",
        "te",
        "proxy-authorization",
    ] {
        assert!(
            seen.headers.get(name).is_none(),
            "{name} reached the upstream"
        );
    }
    assert_eq!(seen.headers["x-client-public"], "2");
    assert!(res.headers.get("x-upstream-private").is_none());
    assert!(res.headers.get("keep-alive").is_none());
    assert_eq!(res.header("x-upstream-public"), "visible");
}

#[tokio::test]
async fn forwarded_headers_name_the_peer_when_no_proxy_is_trusted() {
    let up = spawn_upstream().await;
    let sluice = spawn_default(&up.url());
    let req = request(Method::GET, "/")
        .header("x-forwarded-for", "203.0.113.5")
        .header("x-forwarded-proto", "https")
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(sluice.addr, req).await;
    let seen = up.last();
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.5, 127.0.0.1");
    assert_eq!(
        seen.headers["x-forwarded-proto"], "http",
        "an untrusted client cannot claim https"
    );
    assert_eq!(seen.headers["x-forwarded-host"], "sluice.test");
    assert_eq!(
        seen.headers["x-real-ip"], "127.0.0.1",
        "the client is the socket peer"
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_client_is_the_rightmost_untrusted_address() {
    let up = spawn_upstream().await;
    let sluice = Sluice::builder()
        .upstream(&up)
        .server(r#"trusted_proxies = ["127.0.0.0/8", "10.0.0.0/8"]"#)
        .start();
    let req = request(Method::GET, "/")
        .header("x-forwarded-for", "6.6.6.6, 203.0.113.5, 10.0.0.7")
        .header("x-forwarded-proto", "https")
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(sluice.addr, req).await;
    let seen = up.last();
    assert_eq!(seen.headers["x-real-ip"], "203.0.113.5");
    assert_eq!(
        seen.headers["x-forwarded-for"],
        "6.6.6.6, 203.0.113.5, 10.0.0.7, 127.0.0.1"
    );
    assert_eq!(
        seen.headers["x-forwarded-proto"], "https",
        "a trusted proxy's proto is kept"
    );
}

#[tokio::test]
async fn every_x_forwarded_for_line_counts() {
    // A proxy in front may add a line of its own rather than append to the client's.
    let up = spawn_upstream().await;
    let sluice = Sluice::builder()
        .upstream(&up)
        .server(r#"trusted_proxies = ["127.0.0.0/8"]"#)
        .start();
    let req = request(Method::GET, "/")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-for", "203.0.113.5")
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(sluice.addr, req).await;
    let seen = up.last();
    assert_eq!(seen.headers["x-real-ip"], "203.0.113.5");
    let lines: Vec<_> = seen.headers.get_all("x-forwarded-for").iter().collect();
    assert_eq!(lines, ["6.6.6.6, 203.0.113.5, 127.0.0.1"]);
}

#[tokio::test]
async fn the_request_id_is_kept_or_generated_and_sent_both_ways() {
    let up = spawn_upstream().await;
    let sluice = spawn_default(&up.url());
    let req = request(Method::GET, "/")
        .header("x-request-id", "client-123")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = send(sluice.addr, req).await;
    assert_eq!(res.header("x-request-id"), "client-123");
    assert_eq!(up.last().headers["x-request-id"], "client-123");

    let res = get(sluice.addr, "/").await;
    let made = res.header("x-request-id").to_string();
    assert_eq!(made.len(), 16);
    assert_eq!(up.last().headers["x-request-id"], made.as_str());
    assert_ne!(get(sluice.addr, "/").await.header("x-request-id"), made);
}

#[tokio::test]
async fn an_absolute_form_target_names_the_host_whatever_host_says() {
    let up = spawn_upstream().await;
    let sluice = spawn_default(&up.url());
    let head =
        "GET http://api.example:99/v1/abs?x=1 HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n";
    let answer = raw::exchange(sluice.addr, head).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let seen = up.last();
    assert_eq!(seen.uri, "/v1/abs?x=1");
    assert_eq!(seen.headers["host"], "api.example:99");
    assert_eq!(seen.headers.get_all("host").iter().count(), 1);
}

#[tokio::test]
async fn an_http_1_1_request_needs_exactly_one_host() {
    let up = spawn_upstream().await;
    let sluice = spawn_default(&up.url());
    for head in [
        "GET /v1/x HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
        "GET /v1/x HTTP/1.1\r\nConnection: close\r\n\r\n",
    ] {
        let answer = raw::exchange(sluice.addr, head).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert!(answer.contains("one Host header only"), "{answer}");
    }
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn a_connection_header_cannot_take_host_away() {
    let up = spawn_upstream().await;
    let sluice = spawn_default(&up.url());
    let head = "GET /v1/x HTTP/1.1\r\nHost: api.example\r\nConnection: host, close\r\n\r\n";
    let answer = raw::exchange(sluice.addr, head).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(up.last().headers["host"], "api.example");
}

#[tokio::test]
async fn a_transfer_coding_other_than_chunked_is_400() {
    // sluice frames the body itself: a gzip coding would reach the upstream undeclared.
    let up = spawn_upstream().await;
    let sluice = spawn_default(&up.url());
    let head = "POST /v1/x HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n\
        Transfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
    let answer = raw::exchange(sluice.addr, head).await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("may only be chunked"), "{answer}");
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn an_h2_clients_cookie_fields_reach_an_http1_upstream_as_one() {
    let up = spawn_upstream().await;
    let sluice = spawn_default(&up.url());
    let req = http::Request::get("http://api.example/v1/x")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("cookie", "c=3")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send_h2(sluice.addr, req).await.status, 200);
    let seen = up.last();
    let lines: Vec<_> = seen.headers.get_all("cookie").iter().collect();
    assert_eq!(lines, ["a=1; b=2; c=3"]);
}

#[tokio::test]
async fn an_http_1_0_request_without_host_gets_the_upstreams_own() {
    let up = spawn_upstream().await;
    let sluice = spawn_default(&up.url());
    let answer = raw::exchange(sluice.addr, "GET /v1/old HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200 "), "{answer}");
    let seen = up.last();
    assert_eq!(seen.uri, "/v1/old");
    assert_eq!(seen.headers["host"], up.addr.to_string());
}

#[tokio::test]
async fn an_h2c_request_reaches_an_http1_upstream() {
    let up = spawn_upstream().await;
    let sluice = spawn_default(&up.url());
    let uri = "http://api.example:8080/v1/things?page=2";
    let req = http::Request::get(uri)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = send_h2(sluice.addr, req).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["ok"], true);
    assert!(!res.header("x-request-id").is_empty());
    let seen = up.last();
    assert_eq!(seen.uri, "/v1/things?page=2");
    assert_eq!(seen.headers["host"], "api.example:8080");
}

#[tokio::test]
async fn connections_to_the_upstream_are_reused() {
    let up = spawn_upstream().await;
    let sluice = spawn_default(&up.url());
    for _ in 0..5 {
        assert_eq!(get(sluice.addr, "/").await.status, 200);
    }
    // Five client connections, one after the other: the upstream sees one pooled connection.
    let peers: std::collections::HashSet<_> = up.seen().iter().map(|s| s.peer).collect();
    assert_eq!(peers.len(), 1, "{peers:?}");
}

/// An upstream that answers once it has the head, before the body it refuses, and then drains
/// what still comes: the client gets that answer, not a 502, while its body is still on its way.
#[tokio::test]
async fn an_answer_before_the_end_of_a_streamed_body_reaches_the_client() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const EARLY: &[u8] = b"HTTP/1.1 413 Content Too Large\r\ncontent-type: application/json\r\n\
                           content-length: 14\r\nconnection: close\r\n\r\n{\"early\":true}";
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let upstream = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut chunk = [0u8; 64 * 1024];
        while raw::find(&head, b"\r\n\r\n").is_none() {
            let n = conn.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before the head's end");
            head.extend_from_slice(&chunk[..n]);
        }
        conn.write_all(EARLY).await.unwrap();
        // Drain until sluice lets the connection go, as a server that answered early does.
        while matches!(conn.read(&mut chunk).await, Ok(n) if n > 0) {}
        String::from_utf8_lossy(&head).into_owned()
    });
    let sluice = Sluice::builder()
        .target(&format!("http://{up}"))
        .route("/", "validate_json = false\nmax_body = \"64MiB\"")
        .start();
    let length = 32 << 20;
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\n\r\n"
    );
    let client = tokio::net::TcpStream::connect(sluice.addr).await.unwrap();
    let (mut read, mut write) = client.into_split();
    write.write_all(head.as_bytes()).await.unwrap();
    // The body goes on in the background, up to its length or until sluice stops taking it.
    let body = tokio::spawn(async move {
        let chunk = vec![b' '; 64 * 1024];
        let mut sent = 0;
        while sent < length && write.write_all(&chunk).await.is_ok() {
            sent += chunk.len();
        }
        sent
    });
    let answer = within(
        Duration::from_secs(5),
        "the early answer",
        raw::read_answer(&mut read),
    )
    .await;
    assert_eq!(answer.status, 413);
    assert_eq!(&answer.body[..], b"{\"early\":true}");
    let seen = within(Duration::from_secs(5), "the upstream's end", upstream)
        .await
        .unwrap();
    assert!(seen.starts_with("POST /upload HTTP/1.1\r\n"), "{seen}");
    let sent = within(Duration::from_secs(5), "the client's body", body)
        .await
        .unwrap();
    assert!(
        sent < length,
        "the whole body went through before the answer: {sent}"
    );
}
