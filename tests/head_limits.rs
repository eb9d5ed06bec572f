//! Request heads sluice refuses before anything reaches the upstream: heads that are not HTTP
//! (400), heads over `max_header_bytes` or 100 fields (431), however they arrive (in pieces,
//! pipelined behind another request, over HTTP/2), each refusal a problem with a request id.
//! Clients are played on raw sockets.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use support::raw::{SentAlready, read_answer, read_to_eof};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn head_timeout_and_431_problems_carry_a_request_id() {
    let up = spawn_upstream().await;
    let sluice = guarded()
        .upstream(&up)
        .header_read_timeout("300ms")
        .server("max_header_bytes = 2048")
        .start();
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(4096)
    );
    for head in ["GET / HTTP/1.1\r\nHost: x\r\n".to_string(), big] {
        let mut s = raw::open(sluice.addr, head).await;
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
    let sluice = guarded().upstream(&up).start();
    for head in [
        "GET / HTTP/1.1\r\nHost: x\r\nno colon in this line\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n",
        "GET / HTTP/7.0\r\nHost: x\r\n\r\n",
        "G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let mut s = raw::open(sluice.addr, head).await;
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
    let sluice = guarded().upstream(&up).start();
    let mut s = raw::open(sluice.addr, "GET /raw/a HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let first = within(Duration::from_secs(2), "200", read_answer(&mut s)).await;
    assert_eq!(first.status, 200);
    s.write_all(b"GET /raw/b HTTP/1.1\r\nHost x\r\n\r\n")
        .await
        .unwrap();
    let second = within(Duration::from_secs(2), "400", read_answer(&mut s)).await;
    assert_problem(&second, 400);
    assert_eq!(up.seen().len(), 1);
    // Sent while the first was still being answered: hyper's bare 400 went out unreplaced.
    let mut s = raw::open(sluice.addr, "GET /slow/300 HTTP/1.1\r\nHost: x\r\n\r\n").await;
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

#[tokio::test]
async fn a_head_over_max_header_bytes_gets_431_and_the_connection_closes() {
    let up = spawn_upstream().await;
    let sluice = guarded()
        .upstream(&up)
        .server("max_header_bytes = 2048")
        .start();
    let head = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(4096)
    );
    let mut s = raw::open(sluice.addr, head).await;
    let res = within(Duration::from_secs(2), "431", read_answer(&mut s)).await;
    assert_problem(&res, 431);
    assert_eq!(res.header("connection"), "close");
    let rest = within(Duration::from_secs(1), "close", read_to_eof(&mut s)).await;
    assert!(rest.is_empty());
    assert!(up.seen().is_empty());

    // A head just under the limit goes through.
    let fits = "a".repeat(1500);
    let res = get_with(sluice.addr, "/fits", &[("x-big", &fits)]).await;
    assert_eq!(res.status, 200);
    assert_eq!(up.last().uri, "/fits");
}

#[tokio::test]
async fn a_head_over_max_header_bytes_in_two_writes_gets_431_even_when_the_second_ends_it() {
    let up = spawn_upstream().await;
    let sluice = guarded()
        .upstream(&up)
        .server("max_header_bytes = 2048")
        .start();
    let first = format!("GET / HTTP/1.1\r\nHost: x\r\nX-A: {}\r\n", "a".repeat(1400));
    let mut s = raw::open(sluice.addr, first).await;
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
    let sluice = guarded()
        .upstream(&up)
        .server(r#"max_header_bytes = "2KiB""#)
        .start();
    let mut s = raw::open(sluice.addr, "GET /slow/400 HTTP/1.1\r\nHost: x\r\n\r\n").await;
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
        let expected: &[&str] = if slow {
            &["200", "200", "431"]
        } else {
            &["200", "431"]
        };
        assert_eq!(raw::statuses(&answers), expected, "{answers}");
    }
    assert!(up.seen().iter().all(|r| r.uri != "/second"));
}

#[tokio::test]
async fn a_head_after_a_body_on_a_kept_alive_connection_is_measured_as_it_came() {
    // Written without spaces after the colons, it is exactly max_header_bytes long; a
    // re-measure from the parsed fields would take it for longer.
    let up = spawn_upstream().await;
    let sluice = guarded()
        .upstream(&up)
        .server(r#"max_header_bytes = "1KiB""#)
        .start();
    let post =
        "POST /any/a HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n";
    let mut s = raw::open(sluice.addr, post).await;
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
    let sluice = guarded().upstream(&up).start();
    let fields: String = (0..100).map(|i| format!("x-{i}: 1\r\n")).collect();
    let head = format!("GET / HTTP/1.1\r\nHost: x\r\n{fields}\r\n");
    let mut s = raw::open(sluice.addr, head).await;
    let res = within(Duration::from_secs(2), "431", read_answer(&mut s)).await;
    assert_problem(&res, 431);
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn an_h2_head_is_held_to_the_same_limits_with_a_431_problem() {
    let up = spawn_upstream().await;
    let sluice = guarded()
        .upstream(&up)
        .server("max_header_bytes = 2048")
        .start();
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
    let sluice = guarded().upstream(&up).header_read_timeout("300ms").start();
    let stream = raw::open(sluice.addr, "PRI ").await;
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
