//! What sluice refuses before a request reaches the upstream: slow, oversized and unparseable
//! heads (408, 431, 400), idle connections, bodies over `max_body` (413), media types (415), invalid JSON (400),
//! the request deadline (408/504), the connect timeout (502), and which status wins when several
//! apply. Clients that misbehave are played on raw sockets.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use http_body_util::{Full, StreamBody};
use support::raw::{SentAlready, dechunk, find, get_on, read_answer, read_to_eof};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The routes every guard test uses; `[server]` lines come first. `/raw/` streams without
/// JSON validation, `/any/` takes any media type, everything else is a JSON route of 1 KiB.
fn config(server: &str) -> String {
    format!(
        r#"
[server]
{server}
[upstreams.api]
targets = ["{{upstream}}"]
[[routes]]
path = "/raw/"
policy = "none"
max_body = "1KiB"
validate_json = false
[[routes]]
path = "/any/"
policy = "none"
max_body = "1KiB"
content_types = ["*"]
[[routes]]
path = "/"
policy = "none"
max_body = "1KiB"
"#
    )
}

const MAX_BODY: usize = 1024;

/// A request with a complete body.
type Req = http::Request<Full<Bytes>>;

/// A request with `body` and, if given, that Content-Type.
fn with_body(method: Method, path: &str, content_type: Option<&str>, body: &str) -> Req {
    let mut b = request(method, path);
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

/// A valid JSON document of exactly `n` bytes (n >= 4).
fn json_of_len(n: usize) -> String {
    format!("\"{}\"", "a".repeat(n - 2))
}

// ---- 1. slowloris --------------------------------------------------------------------------

#[tokio::test]
async fn half_a_head_gets_408_with_connection_close_then_the_connection_ends() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&config(r#"header_read_timeout = "300ms""#), &up.url());
    let mut s = TcpStream::connect(sluice.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = Instant::now();
    let res = within(Duration::from_secs(2), "408", read_answer(&mut s)).await;
    let waited = started.elapsed();
    assert_problem(&res, 408);
    assert_eq!(res.header("connection"), "close");
    assert!(
        waited >= Duration::from_millis(250),
        "answered before the deadline: {waited:?}"
    );
    let rest = within(Duration::from_secs(1), "close", read_to_eof(&mut s)).await;
    assert!(rest.is_empty(), "bytes after the 408: {rest:?}");
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn a_head_trickled_byte_by_byte_gets_408_at_the_deadline_not_per_read() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&config(r#"header_read_timeout = "300ms""#), &up.url());
    let (mut rd, mut wr) = TcpStream::connect(sluice.addr).await.unwrap().into_split();
    let started = Instant::now();
    // One byte every 50 ms: each read is quick, the head as a whole is not.
    let trickle = tokio::spawn(async move {
        for &b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if wr.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        wr
    });
    let mut raw = Vec::new();
    within(Duration::from_secs(2), "408", rd.read_to_end(&mut raw))
        .await
        .expect("a clean close");
    let waited = started.elapsed();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    assert!(waited < Duration::from_millis(1000), "took {waited:?}");
    trickle.abort();
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn the_first_heads_time_runs_from_the_connection_not_from_its_first_byte() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&config(r#"header_read_timeout = "400ms""#), &up.url());
    let started = Instant::now();
    let mut s = TcpStream::connect(sluice.addr).await.unwrap();
    // Nearly the whole timeout in silence, then one byte: it must not buy a second timeout.
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.write_all(b"G").await.unwrap();
    let mut raw = Vec::new();
    within(Duration::from_secs(2), "408", s.read_to_end(&mut raw))
        .await
        .expect("a clean close");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    let waited = started.elapsed();
    assert!(waited < Duration::from_millis(600), "took {waited:?}");
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_silently_after_header_read_timeout() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&config(r#"header_read_timeout = "300ms""#), &up.url());
    let mut s = TcpStream::connect(sluice.addr).await.unwrap();
    let started = Instant::now();
    let rest = within(Duration::from_secs(2), "close", read_to_eof(&mut s)).await;
    let waited = started.elapsed();
    assert!(rest.is_empty(), "an unused connection got bytes: {rest:?}");
    assert!(
        waited >= Duration::from_millis(250),
        "closed after {waited:?}"
    );
    assert!(up.seen().is_empty());
}

#[tokio::test]

async fn head_timeout_and_431_problems_carry_a_request_id() {
    let up = spawn_upstream().await;
    let toml = config("header_read_timeout = \"300ms\"\nmax_header_bytes = 2048");
    let sluice = spawn_sluice(&toml, &up.url());
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(4096)
    );
    for head in ["GET / HTTP/1.1\r\nHost: x\r\n".to_string(), big] {
        let mut s = TcpStream::connect(sluice.addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        let res = within(Duration::from_secs(2), "answer", read_answer(&mut s)).await;
        let body = res.json();
        let id = body["request_id"].as_str().unwrap_or_default();
        assert!(
            !id.is_empty(),
            "{} without a request id: {body}",
            res.status
        );
        assert_eq!(res.header("x-request-id"), id);
    }
}

#[tokio::test]
async fn a_head_that_is_not_http_gets_a_400_problem_and_the_connection_closes() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&config(""), &up.url());
    for head in [
        "GET / HTTP/1.1\r\nHost: x\r\nno colon in this line\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n",
        "GET / HTTP/7.0\r\nHost: x\r\n\r\n",
        "G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(sluice.addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        let res = within(Duration::from_secs(2), "400", read_answer(&mut s)).await;
        let body = assert_problem(&res, 400);
        assert_eq!(
            body["detail"], "The request head is not valid HTTP/1.1.",
            "{head:?}"
        );
        assert_eq!(res.header("connection"), "close", "{head:?}");
        let rest = within(Duration::from_secs(1), "close", read_to_eof(&mut s)).await;
        assert!(
            rest.is_empty(),
            "bytes after the 400 for {head:?}: {rest:?}"
        );
    }
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn a_bad_head_after_a_good_request_on_the_same_connection_gets_the_400_problem() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&config(""), &up.url());
    let mut s = TcpStream::connect(sluice.addr).await.unwrap();
    s.write_all(b"GET /raw/a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let first = within(Duration::from_secs(2), "200", read_answer(&mut s)).await;
    assert_eq!(first.status, 200);
    s.write_all(b"GET /raw/b HTTP/1.1\r\nHost x\r\n\r\n")
        .await
        .unwrap();
    let second = within(Duration::from_secs(2), "400", read_answer(&mut s)).await;
    assert_problem(&second, 400);
    assert_eq!(up.seen().len(), 1);
    // Sent while the first was still being answered: hyper's bare 400 went out unreplaced.
    let mut s = TcpStream::connect(sluice.addr).await.unwrap();
    s.write_all(b"GET /slow/300 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    up.wait_for(2).await;
    s.write_all(b"GARBAGE\r\n\r\n").await.unwrap();
    // Both answers may come in one read: take all, up to the close after the 400.
    let answers = within(Duration::from_secs(2), "answers", read_to_eof(&mut s)).await;
    let answers = String::from_utf8_lossy(&answers);
    let (first, second) = answers.split_at(answers.find("HTTP/1.1 400 ").expect("a 400"));
    assert!(first.starts_with("HTTP/1.1 200 "), "{answers}");
    assert!(
        second.contains("content-type: application/problem+json"),
        "{answers}"
    );
    assert!(second.contains("\"status\":400"), "{answers}");
}

// ---- 2. idle keep-alive ----------------------------------------------------------------------

/// How long after now the peer closes, failing after `limit`; the bytes must be none.
async fn quiet_close_after(s: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let rest = within(limit, "idle close", read_to_eof(s)).await;
    assert!(rest.is_empty(), "an idle close sends nothing: {rest:?}");
    started.elapsed()
}

#[tokio::test]
async fn a_kept_alive_connection_serves_requests_that_come_within_idle_timeout() {
    let up = spawn_upstream().await;
    let toml = config("idle_timeout = \"300ms\"\nheader_read_timeout = \"2s\"");
    let sluice = spawn_sluice(&toml, &up.url());
    let mut s = TcpStream::connect(sluice.addr).await.unwrap();
    // 200 ms apart: each within the idle timeout of the answer before it, the last well
    // past an idle timeout counted from the start.
    for i in 0..3 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let res = get_on(&mut s, &format!("/n/{i}")).await;
        assert_eq!(res.status, 200, "request {i} on the kept-alive connection");
    }
    let seen: Vec<String> = up.seen().iter().map(|s| s.uri.clone()).collect();
    assert_eq!(seen, ["/n/0", "/n/1", "/n/2"]);
    let peers: Vec<_> = up.seen().iter().map(|s| s.peer).collect();
    assert!(peers.iter().all(|p| *p == peers[0]), "{peers:?}");
}

#[tokio::test]

async fn an_idle_keep_alive_connection_is_closed_quietly_after_idle_timeout() {
    let up = spawn_upstream().await;
    let toml = config("idle_timeout = \"300ms\"\nheader_read_timeout = \"2s\"");
    let sluice = spawn_sluice(&toml, &up.url());
    let mut s = TcpStream::connect(sluice.addr).await.unwrap();
    assert_eq!(get_on(&mut s, "/").await.status, 200);
    let waited = quiet_close_after(&mut s, Duration::from_millis(1500)).await;
    assert!(
        waited >= Duration::from_millis(250),
        "closed after {waited:?}"
    );
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]

async fn a_connection_idle_after_a_slow_request_is_still_closed_after_idle_timeout() {
    let up = spawn_upstream().await;
    let toml = config(
        "idle_timeout = \"300ms\"\nheader_read_timeout = \"200ms\"\nrequest_timeout = \"2s\"",
    );
    let sluice = spawn_sluice(&toml, &up.url());
    let mut s = TcpStream::connect(sluice.addr).await.unwrap();
    assert_eq!(get_on(&mut s, "/slow/500").await.status, 200);
    let waited = quiet_close_after(&mut s, Duration::from_millis(1500)).await;
    assert!(
        waited >= Duration::from_millis(250),
        "closed after {waited:?}"
    );
}

// ---- 3. 431 ----------------------------------------------------------------------------------

#[tokio::test]
async fn a_head_over_max_header_bytes_gets_431_and_the_connection_closes() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&config("max_header_bytes = 2048"), &up.url());
    let mut s = TcpStream::connect(sluice.addr).await.unwrap();
    let head = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(4096)
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let res = within(Duration::from_secs(2), "431", read_answer(&mut s)).await;
    assert_problem(&res, 431);
    assert_eq!(res.header("connection"), "close");
    let rest = within(Duration::from_secs(1), "close", read_to_eof(&mut s)).await;
    assert!(rest.is_empty());
    assert!(up.seen().is_empty());

    // A head just under the limit goes through.
    let req = request(Method::GET, "/fits")
        .header("x-big", "a".repeat(1500))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(sluice.addr, req).await.status, 200);
    assert_eq!(up.last().uri, "/fits");
}

#[tokio::test]
async fn a_head_over_max_header_bytes_in_two_writes_gets_431_even_when_the_second_ends_it() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&config("max_header_bytes = 2048"), &up.url());
    let mut s = TcpStream::connect(sluice.addr).await.unwrap();
    let first = format!("GET / HTTP/1.1\r\nHost: x\r\nX-A: {}\r\n", "a".repeat(1400));
    s.write_all(first.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Each part is under the limit; together they are over it.
    let second = format!("X-B: {}\r\n\r\n", "b".repeat(1400));
    s.write_all(second.as_bytes()).await.unwrap();
    let res = within(Duration::from_secs(2), "431", read_answer(&mut s)).await;
    assert_problem(&res, 431);
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn a_head_pipelined_while_a_request_is_answered_is_held_to_max_header_bytes() {
    // Read while sluice answered the first request, it went uncounted, and past the limit.
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&config(r#"max_header_bytes = "2KiB""#), &up.url());
    let mut s = TcpStream::connect(sluice.addr).await.unwrap();
    s.write_all(b"GET /slow/400 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    up.wait_for(1).await;
    let big = format!(
        "GET /second HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(8000)
    );
    s.write_all(big.as_bytes()).await.unwrap();
    let answers = within(Duration::from_secs(3), "both answers", read_to_eof(&mut s)).await;
    let answers = String::from_utf8_lossy(&answers);
    assert!(answers.starts_with("HTTP/1.1 200 "), "{answers}");
    assert!(answers.contains("HTTP/1.1 431 "), "{answers}");
    assert_eq!(up.seen().len(), 1);
    // Behind a small one in the same write, whether a request is being answered or not.
    let small = "GET /third HTTP/1.1\r\nHost: x\r\n\r\n";
    for slow in [true, false] {
        let mut s = TcpStream::connect(sluice.addr).await.unwrap();
        if slow {
            s.write_all(b"GET /slow/300 HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        s.write_all(format!("{small}{big}").as_bytes())
            .await
            .unwrap();
        let answers = within(Duration::from_secs(3), "answers", read_to_eof(&mut s)).await;
        let answers = String::from_utf8_lossy(&answers);
        let statuses: Vec<_> = answers
            .match_indices("HTTP/1.1 ")
            .map(|(i, _)| &answers[i + 9..i + 12])
            .collect();
        let expected: &[&str] = if slow {
            &["200", "200", "431"]
        } else {
            &["200", "431"]
        };
        assert_eq!(statuses, expected, "{answers}");
    }
    assert!(up.seen().iter().all(|r| r.uri != "/second"));
}

#[tokio::test]
async fn a_head_after_a_body_on_a_kept_alive_connection_is_measured_as_it_came() {
    // Written without spaces after the colons, it is exactly max_header_bytes long; a
    // re-measure from the parsed fields would take it for longer.
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&config(r#"max_header_bytes = "1KiB""#), &up.url());
    let mut s = TcpStream::connect(sluice.addr).await.unwrap();
    s.write_all(
        b"POST /any/a HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(b"ok").await.unwrap();
    assert_eq!(read_answer(&mut s).await.status, 200);
    let mut head = String::from("GET /b HTTP/1.1\r\nHost:x\r\n");
    for i in 0..10 {
        head.push_str(&format!("X-F{i}:{}\r\n", "v".repeat(80)));
    }
    let pad = 1024 - head.len() - "X-Pad:\r\n\r\n".len();
    head.push_str(&format!("X-Pad:{}\r\n\r\n", "p".repeat(pad)));
    assert_eq!(head.len(), 1024);
    s.write_all(head.as_bytes()).await.unwrap();
    assert_eq!(read_answer(&mut s).await.status, 200);
}

#[tokio::test]
async fn a_head_of_more_than_100_fields_gets_431_however_small() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&config(""), &up.url());
    let mut s = TcpStream::connect(sluice.addr).await.unwrap();
    let fields: String = (0..100).map(|i| format!("x-{i}: 1\r\n")).collect();
    let head = format!("GET / HTTP/1.1\r\nHost: x\r\n{fields}\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let res = within(Duration::from_secs(2), "431", read_answer(&mut s)).await;
    assert_problem(&res, 431);
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn an_h2_head_is_held_to_the_same_limits_with_a_431_problem() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&config("max_header_bytes = 2048"), &up.url());
    let h2 = |name: &str, value: &str| {
        http::Request::get("http://api.example/raw/h2")
            .header(name, value)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let res = send_h2(sluice.addr, h2("x-big", &"a".repeat(4096))).await;
    assert_eq!(assert_problem(&res, 431)["status"], 431);
    assert!(!res.header("x-request-id").is_empty());
    // 100 fields and the authority, which is the 101st line (Host) in HTTP/1.1.
    let mut many = http::Request::get("http://api.example/raw/h2");
    for i in 0..100 {
        many = many.header(format!("x-{i}"), "1");
    }
    let res = send_h2(sluice.addr, many.body(Full::new(Bytes::new())).unwrap()).await;
    assert_problem(&res, 431);
    // The authority is the Host line, and counts towards the bytes.
    let far = format!("http://{}example/raw/h2", "a.".repeat(700));
    let req = http::Request::get(far)
        .header("x-big", "a".repeat(700))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_problem(&send_h2(sluice.addr, req).await, 431);
    assert!(up.seen().is_empty());
    // Just under the limit, as over HTTP/1.1.
    let res = send_h2(sluice.addr, h2("x-big", &"a".repeat(1500))).await;
    assert_eq!(res.status, 200);
    // Cookie crumbs are one line in HTTP/1.1: 120 of them, 1.2 KB joined, are within limits.
    let mut crumbs = http::Request::get("http://api.example/raw/h2");
    for i in 0..120 {
        crumbs = crumbs.header("cookie", format!("c{i:03}=1"));
    }
    let res = send_h2(sluice.addr, crumbs.body(Full::new(Bytes::new())).unwrap()).await;
    assert_eq!(res.status, 200);
    assert_eq!(
        up.last().headers["cookie"].len(),
        120 * "c000=1; ".len() - 2
    );
}

#[tokio::test]
async fn an_http2_preface_that_comes_in_pieces_is_still_http2() {
    // Taken for HTTP/1.1 from its first piece, the connection got an HTTP/1.1 408 written
    // into it once its frames had sat for header_read_timeout between requests.
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&config(r#"header_read_timeout = "300ms""#), &up.url());
    let mut stream = TcpStream::connect(sluice.addr).await.unwrap();
    stream.write_all(b"PRI ").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let io = SentAlready {
        inner: stream,
        skip: 4,
    };
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for _ in 0..2 {
        let req = request(Method::GET, "http://api.example/raw/x")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let res = within(Duration::from_secs(2), "answer", h2.send_request(req)).await;
        assert_eq!(res.unwrap().status(), 200);
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    assert_eq!(up.seen().len(), 2);
}

#[tokio::test]
async fn a_get_body_of_unknown_length_reaches_the_upstream_and_is_counted() {
    // Sent chunked, or over HTTP/2 without content-length: hyper's client would send a GET
    // with no body at all unless told it is chunked.
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&config(""), &up.url());
    let mut s = TcpStream::connect(sluice.addr).await.unwrap();
    let head = "GET /any/get HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
                Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    s.write_all(head.as_bytes()).await.unwrap();
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

#[tokio::test]
async fn a_client_that_takes_none_of_its_answer_is_let_go_after_idle_timeout() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&config("idle_timeout = \"1s\""), &up.url());
    let mut s = TcpStream::connect(sluice.addr).await.unwrap();
    let total = 64 << 20;
    let head = format!("GET /big/{total} HTTP/1.1\r\nHost: x\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    // Read nothing for well over idle_timeout: the socket buffers fill, and sluice's writes wait.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let ended = within(Duration::from_secs(5), "the cut-off", async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    let _: () = ended;
    assert!(got > 0, "the answer had begun");
    assert!(got < total, "the whole answer came: {got} bytes");
}

#[tokio::test]
async fn an_http2_client_that_grants_its_answers_no_window_is_let_go() {
    // Its answers cannot be sent, so nothing is ever written that could wait: the connection,
    // and a slot of max_connections, was held for good. sluice's own refusals cost the client
    // nothing, and have no upstream deadline to end them.
    let up = spawn_upstream().await;
    let server = r#"request_timeout = "300ms"
idle_timeout = "300ms""#;
    let sluice = spawn_sluice(&config(server), &up.url());
    let mut s = TcpStream::connect(sluice.addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS: INITIAL_WINDOW_SIZE = 0.
    out.extend([0, 0, 6, 0x4, 0, 0, 0, 0, 0, 0, 0x4, 0, 0, 0, 0]);
    // HEADERS, END_STREAM | END_HEADERS, stream 1: GET http://a/%zz, in HPACK (static-table
    // names, literal values), which sluice refuses with a 400 problem.
    let block = [
        0x82, 0x86, 0x04, 0x04, b'/', b'%', b'z', b'z', 0x01, 0x01, b'a',
    ];
    out.extend([0, 0, block.len() as u8, 0x1, 0x5, 0, 0, 0, 1]);
    out.extend(block);
    s.write_all(&out).await.unwrap();
    let started = Instant::now();
    let closed = read_to_eof(&mut s);
    within(Duration::from_secs(3), "the cut-off", closed).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(550), "{took:?}");
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn a_client_too_slow_to_take_its_answer_within_request_timeout_is_let_go() {
    // It reads, but so slowly that sluice's writes wait on it: hyper then reads no more of the
    // upstream's answer, so only the writes can see the deadline pass.
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&config("request_timeout = \"1s\""), &up.url());
    let mut s = TcpStream::connect(sluice.addr).await.unwrap();
    let head = format!("GET /big/{} HTTP/1.1\r\nHost: x\r\n\r\n", 256 << 20);
    s.write_all(head.as_bytes()).await.unwrap();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 << 10];
        while let Ok(n @ 1..) = s.read(&mut buf).await {
            let _ = n;
            tokio::time::sleep(Duration::from_millis(100)).await; // about 160 KB/s
        }
    });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let text = sluice.metrics().await;
    assert_eq!(
        metric_value(&text, "sluice_connections_open"),
        0.0,
        "still held"
    );
    reader.abort();
}

#[tokio::test]
async fn a_steady_slow_reader_gets_its_whole_answer_past_idle_timeout() {
    // A 207 of 8 MiB: hyper has all of it (and has let go of the request) long before the
    // client has read it; the connection is not idle while the answer still goes out.
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&config("idle_timeout = \"1s\""), &up.url());
    let mut s = TcpStream::connect(sluice.addr).await.unwrap();
    let total: usize = 8 << 20;
    let body = format!(
        r#"{{"requests": [{{"id": "a", "method": "GET", "path": "/big/{}"}}]}}"#,
        total
    );
    let head = format!(
        "POST /batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 << 10];
    within(Duration::from_secs(20), "the whole answer", async {
        // Kept alive: the connection stays open after the answer, so stop once it is all in.
        while got <= total {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
            tokio::time::sleep(Duration::from_millis(20)).await; // about 3 MB/s: 3 s in all
        }
    })
    .await;
    assert!(got > total, "{got} of {total} bytes and a head");
}

// ---- 4. 413 declared -------------------------------------------------------------------------

#[tokio::test]
async fn a_declared_length_over_max_body_gets_413_before_the_body_is_sent() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&config(""), &up.url());
    for path in ["/json", "/raw/x", "/any/x"] {
        let mut s = TcpStream::connect(sluice.addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
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
    let sluice = spawn_sluice(&config(""), &up.url());
    let mut s = TcpStream::connect(sluice.addr).await.unwrap();
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let res = within(Duration::from_millis(1000), "413", read_answer(&mut s)).await;
    assert_problem(&res, 413);
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn a_declared_length_of_exactly_max_body_passes() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&config(""), &up.url());
    let body = json_of_len(MAX_BODY);
    let res = send(sluice.addr, post_json("/exact", &body)).await;
    assert_eq!(res.status, 200);
    assert_eq!(up.last().body, body.as_bytes());
    let res = send(sluice.addr, post_json("/over", &json_of_len(MAX_BODY + 1))).await;
    assert_eq!(assert_problem(&res, 413)["max_body"], MAX_BODY);
    assert_eq!(up.seen().len(), 1);
}

// ---- 5. 413 chunked --------------------------------------------------------------------------

#[tokio::test]
async fn oversized_chunked_json_body_gets_413_and_never_reaches_upstream() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&config(""), &up.url());
    let chunks = vec![
        b"[".to_vec(),
        json_of_len(600).into_bytes(),
        b",".to_vec(),
        json_of_len(600).into_bytes(),
        b"]".to_vec(),
    ];
    let res = send(sluice.addr, chunked("/json", "application/json", chunks)).await;
    assert_eq!(assert_problem(&res, 413)["max_body"], MAX_BODY);
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn chunked_bodies_of_exactly_max_body_pass_on_both_kinds_of_route() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&config(""), &up.url());
    let body = json_of_len(MAX_BODY).into_bytes();
    let halves = vec![body[..500].to_vec(), body[500..].to_vec()];
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

#[tokio::test]
async fn oversized_streamed_body_gets_413_and_the_upstream_never_gets_it_complete() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&config(""), &up.url());
    let chunks = vec![vec![b'x'; 400], vec![b'y'; 400], vec![b'z'; 400]];
    let res = send(
        sluice.addr,
        chunked("/raw/x", "application/json", chunks.clone()),
    )
    .await;
    assert_eq!(assert_problem(&res, 413)["max_body"], MAX_BODY);
    // One chunk over the limit by itself.
    let res = send(
        sluice.addr,
        chunked("/raw/y", "application/json", vec![vec![b'w'; 1500]]),
    )
    .await;
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
    let sluice = spawn_sluice(&config(r#"request_timeout = "2s""#), &url);
    let chunks = vec![vec![b'x'; 400], vec![b'y'; 400], vec![b'z'; 400]];
    let res = send(sluice.addr, chunked("/raw/x", "application/json", chunks)).await;
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

// ---- 6. 415 ----------------------------------------------------------------------------------

#[tokio::test]
async fn a_body_that_is_not_json_gets_415_naming_the_accepted_types() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&config(""), &up.url());
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
    let sluice = spawn_sluice(&config(""), &up.url());
    let mut s = TcpStream::connect(sluice.addr).await.unwrap();
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
    let sluice = spawn_sluice(&config(""), &up.url());
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
    let sluice = spawn_sluice(&config(""), &up.url());
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
    let sluice = spawn_sluice(&config(""), &up.url());
    for ct in [Some("text/plain"), None, Some("image/png")] {
        let res = send(sluice.addr, with_body(Method::POST, "/any/x", ct, "hello")).await;
        assert_eq!(res.status, 200, "{ct:?}");
        assert_eq!(up.last().body, "hello");
    }
    assert_eq!(up.seen().len(), 3);
}

// ---- 7. 400 ----------------------------------------------------------------------------------

#[tokio::test]
async fn invalid_json_gets_400_naming_line_and_column_and_never_reaches_upstream() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&config(""), &up.url());
    let res = send(sluice.addr, post_json("/x", "{\n  \"a\": 1,\n  \"b\" 2\n}")).await;
    let body = assert_problem(&res, 400);
    assert_eq!(
        body["position"],
        serde_json::json!({"line": 3, "column": 7})
    );
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("line 3, column 7"), "{detail}");
    // Sent chunked, the same.
    let chunks = vec![b"{\"a\":".to_vec(), b" tru}".to_vec()];
    let res = send(sluice.addr, chunked("/x", "application/json", chunks)).await;
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
    let sluice = spawn_sluice(&config(""), &up.url());
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
    let sluice = spawn_sluice(&config(""), &up.url());
    let res = send(sluice.addr, post_json("/raw/x", "{not json")).await;
    assert_eq!(res.status, 200);
    assert_eq!(up.last().body, "{not json");
}

#[tokio::test]
async fn a_streamed_body_the_client_breaks_off_gets_400_and_is_not_an_upstream_error() {
    let server = "admin_listen = \"127.0.0.1:0\"";
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&config(server), &up.url());
    // A malformed chunk, then a body cut short by the client closing its side.
    let heads = [
        "POST /raw/a HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n",
        "POST /raw/b HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\nabc",
    ];
    for head in heads {
        let mut s = TcpStream::connect(sluice.addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        s.shutdown().await.unwrap();
        let res = within(Duration::from_secs(2), "400", read_answer(&mut s)).await;
        let body = assert_problem(&res, 400);
        assert!(body["detail"].as_str().unwrap().contains("body"), "{body}");
    }
    let text = sluice.metrics().await;
    assert!(!text.contains("sluice_upstream_errors_total{"), "{text}");
}

// ---- 8. body deadline ------------------------------------------------------------------------

/// Sends a head declaring 10 body bytes and only 3 of them, then waits for the answer.
async fn short_body(sluice: &Sluice, path: &str) -> (Answer, Duration, TcpStream) {
    let mut s = TcpStream::connect(sluice.addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n[1,"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let res = within(Duration::from_secs(2), "408", read_answer(&mut s)).await;
    (res, started.elapsed(), s)
}

#[tokio::test]
async fn a_body_that_stops_short_gets_408_with_connection_close_at_request_timeout() {
    let up = spawn_upstream().await;
    let toml = config("request_timeout = \"300ms\"\nheader_read_timeout = \"2s\"");
    let sluice = spawn_sluice(&toml, &up.url());
    let (res, waited, mut s) = short_body(&sluice, "/json").await;
    assert_problem(&res, 408);
    assert_eq!(res.header("connection"), "close");
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(1500),
        "answered after {waited:?}"
    );
    let rest = within(Duration::from_secs(1), "close", read_to_eof(&mut s)).await;
    assert!(rest.is_empty());
    assert!(
        up.seen().is_empty(),
        "a validated body is read before any upstream contact"
    );
}

#[tokio::test]
async fn a_streamed_body_that_stops_short_gets_408_and_never_completes_upstream() {
    let up = spawn_upstream().await;
    let toml = config("request_timeout = \"300ms\"\nheader_read_timeout = \"2s\"");
    let sluice = spawn_sluice(&toml, &up.url());
    let (res, waited, _s) = short_body(&sluice, "/raw/x").await;
    assert_problem(&res, 408);
    assert_eq!(res.header("connection"), "close");
    assert!(
        waited < Duration::from_millis(1500),
        "answered after {waited:?}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    for seen in up.seen() {
        assert!(seen.body.len() < 10, "the upstream got {:?}", seen.body);
    }
}

// ---- 9. upstream deadline --------------------------------------------------------------------

#[tokio::test]
async fn an_upstream_slower_than_request_timeout_gets_408_with_connection_close() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&config(r#"request_timeout = "300ms""#), &up.url());
    let started = Instant::now();
    let res = get(sluice.addr, "/slow/1000").await;
    let waited = started.elapsed();
    assert_problem(&res, 408);
    assert_eq!(res.header("connection"), "close");
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(900),
        "answered after {waited:?}"
    );
    assert_eq!(up.seen().len(), 1, "the request did reach the upstream");
}

/// Routes under `/slow/`: `/slow/1…` validates JSON, `/slow/2…` streams.
fn slow_routes(server: &str) -> String {
    format!(
        r#"
[server]
{server}
[upstreams.api]
targets = ["{{upstream}}"]
[[routes]]
path = "/slow/1"
policy = "none"
[[routes]]
path = "/slow/2"
policy = "none"
validate_json = false
"#
    )
}

#[tokio::test]
async fn timeout_status_504_answers_a_slow_upstream_with_504() {
    let up = spawn_upstream().await;
    let toml = slow_routes("request_timeout = \"300ms\"\ntimeout_status = 504");
    let sluice = spawn_sluice(&toml, &up.url());
    for path in ["/slow/1000", "/slow/2000"] {
        let started = Instant::now();
        let res = send(sluice.addr, post_json(path, r#"{"a":1}"#)).await;
        let body = assert_problem(&res, 504);
        assert!(
            body["detail"].as_str().unwrap().contains("upstream"),
            "{path}: {body}"
        );
        assert!(started.elapsed() < Duration::from_millis(900), "{path}");
        assert_eq!(up.last().body, r#"{"a":1}"#, "{path}");
    }
}

#[tokio::test]

async fn a_slow_upstream_for_a_bodiless_request_is_an_upstream_timeout() {
    let up = spawn_upstream().await;
    let toml = slow_routes("request_timeout = \"300ms\"\ntimeout_status = 504");
    let sluice = spawn_sluice(&toml, &up.url());
    let res = get(sluice.addr, "/slow/2000").await;
    let body = assert_problem(&res, 504);
    assert!(
        body["detail"].as_str().unwrap().contains("upstream"),
        "{body}"
    );
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]
async fn a_routes_own_request_timeout_overrides_the_servers_both_ways() {
    let up = spawn_upstream().await;
    let route = |server: &str, route: &str| {
        format!(
            "[server]\nrequest_timeout = \"{server}\"\n[upstreams.api]\ntargets = [\"{{upstream}}\"]\n\
             [[routes]]\npath = \"/\"\npolicy = \"none\"\nrequest_timeout = \"{route}\"\n"
        )
    };
    // Server 300 ms, route 3 s: a 600 ms upstream answers.
    let longer = spawn_sluice(&route("300ms", "3s"), &up.url());
    let res = send(longer.addr, post_json("/slow/600", "{}")).await;
    assert_eq!(res.status, 200);
    assert_eq!(up.last().uri, "/slow/600");
    // Server 5 s, route 300 ms: a 1 s upstream times out.
    let shorter = spawn_sluice(&route("5s", "300ms"), &up.url());
    let started = Instant::now();
    assert_problem(
        &send(shorter.addr, post_json("/slow/1000", "{}")).await,
        408,
    );
    assert!(started.elapsed() < Duration::from_millis(900));
    assert_eq!(up.seen().len(), 2);
}

#[tokio::test]
async fn after_an_upstream_timeout_the_upstream_connection_is_not_reused() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&config(r#"request_timeout = "300ms""#), &up.url());
    let peer = |i: usize| up.seen()[i].peer;
    assert_eq!(get(sluice.addr, "/a").await.status, 200);
    assert_eq!(get(sluice.addr, "/b").await.status, 200);
    assert_eq!(
        peer(0),
        peer(1),
        "a finished connection is pooled and reused"
    );
    assert_problem(&get(sluice.addr, "/slow/1000").await, 408);
    assert_eq!(
        peer(2),
        peer(0),
        "the slow request took the pooled connection"
    );
    assert_eq!(get(sluice.addr, "/c").await.status, 200);
    let seen = up.seen();
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[3].uri, "/c");
    assert_ne!(
        peer(3),
        peer(2),
        "the timed-out connection was used again; its answer could be taken for this one"
    );
}

#[tokio::test]
async fn an_upstream_that_stalls_mid_body_is_cut_off_at_request_timeout() {
    let target = spawn_stalling_upstream().await;
    let server = "request_timeout = \"300ms\"\nadmin_listen = \"127.0.0.1:0\"";
    let sluice = spawn_sluice(&config(server), &target.url());
    let mut s = TcpStream::connect(sluice.addr).await.unwrap();
    s.write_all(b"GET /raw/a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut raw = Vec::new();
    let ended = within(Duration::from_secs(3), "the cut-off", async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&chunk[..n]),
            }
        }
    });
    ended.await;
    let waited = started.elapsed();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(
        text.ends_with("{\"partial\":"),
        "more than the upstream sent: {text}"
    );
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(1500),
        "the connection ended after {waited:?}"
    );
    let text = sluice.metrics().await;
    let counted = r#"sluice_upstream_errors_total{upstream="api",kind="timeout"} 1"#;
    assert!(text.contains(counted), "{text}");
}

// ---- 10. connect_timeout ---------------------------------------------------------------------

#[tokio::test]
async fn a_target_that_does_not_accept_within_connect_timeout_gets_502_quickly() {
    let target =
        raw::hanging_target().expect("connects to a full accept queue do not hang on this system");
    let url = target.url.clone();
    let toml = format!(
        r#"
[server]
request_timeout = "5s"
[upstreams.api]
targets = ["{url}"]
connect_timeout = "200ms"
[[routes]]
path = "/"
policy = "none"
"#
    );
    let sluice = spawn_sluice(&toml, &url);
    let started = Instant::now();
    let res = get(sluice.addr, "/").await;
    let waited = started.elapsed();
    assert_problem(&res, 502);
    assert!(
        waited >= Duration::from_millis(150) && waited < Duration::from_millis(800),
        "answered after {waited:?}"
    );
}

// ---- 11. which status wins -------------------------------------------------------------------

const GOOD_KEY: &str = "k-good-123";
const READ_KEY: &str = "k-read-456";

fn auth_config() -> String {
    format!(
        r#"
[upstreams.api]
targets = ["{{upstream}}"]
[[routes]]
path = "/w/"
methods = ["POST"]
policy = "none"
max_body = "1KiB"
scopes = ["write"]
[auth]
mode = "api_keys"
[[auth.keys]]
name = "good"
sha256 = "{}"
scopes = ["write"]
[[auth.keys]]
name = "reader"
sha256 = "{}"
scopes = ["read"]
"#,
        sha256_hex(GOOD_KEY),
        sha256_hex(READ_KEY)
    )
}

fn keyed(key: Option<&str>, method: Method, path: &str, ct: &str, body: String) -> Req {
    let mut b = request(method, path).header("content-type", ct);
    if let Some(key) = key {
        b = b.header("authorization", format!("Bearer {key}"));
    }
    b.body(Full::new(Bytes::from(body))).unwrap()
}

#[tokio::test]
async fn status_order_404_and_405_beat_401() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&auth_config(), &up.url());
    assert_problem(&get(sluice.addr, "/elsewhere").await, 404);
    let req = keyed(
        None,
        Method::DELETE,
        "/w/x",
        "application/json",
        "{}".into(),
    );
    let res = send(sluice.addr, req).await;
    assert_problem(&res, 405);
    assert_eq!(res.header("allow"), "POST");
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn status_order_401_beats_413_and_415() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&auth_config(), &up.url());
    let big = json_of_len(5000);
    for (ct, body) in [
        ("application/json", big.clone()),
        ("text/plain", "{}".to_string()),
        ("text/plain", big),
    ] {
        let res = send(sluice.addr, keyed(None, Method::POST, "/w/x", ct, body)).await;
        assert_problem(&res, 401);
        assert!(!res.header("www-authenticate").is_empty());
    }
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn status_order_403_beats_413_and_415() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&auth_config(), &up.url());
    let big = json_of_len(5000);
    for (ct, body) in [("application/json", big), ("text/plain", "{}".into())] {
        let req = keyed(Some(READ_KEY), Method::POST, "/w/x", ct, body);
        assert_problem(&send(sluice.addr, req).await, 403);
    }
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn status_order_declared_413_beats_415_and_415_beats_400() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&auth_config(), &up.url());
    let req = keyed(
        Some(GOOD_KEY),
        Method::POST,
        "/w/x",
        "text/plain",
        "x".repeat(5000),
    );
    assert_problem(&send(sluice.addr, req).await, 413);
    // JSON by name but not in UTF-8, and not valid either: the media type is refused first.
    let ct = "application/json; charset=latin1";
    let req = keyed(Some(GOOD_KEY), Method::POST, "/w/x", ct, "{nope".into());
    assert_problem(&send(sluice.addr, req).await, 415);
    // With everything right, it passes.
    let req = keyed(
        Some(GOOD_KEY),
        Method::POST,
        "/w/x",
        "application/json",
        "{}".into(),
    );
    assert_eq!(send(sluice.addr, req).await.status, 200);
    assert_eq!(up.seen().len(), 1);
}
