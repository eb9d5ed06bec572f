//! Requests that sluice and the server behind it might read two ways (the classic request
//! smuggling shapes: CL.TE, TE.CL, TE.TE) and heads nginx refuses: each is answered 400 with
//! a problem before anything reaches the upstream. What does reach the upstream, recorded
//! byte for byte, reads one way only.

mod support;

use std::time::Duration;

use support::recorder::Recorder;
use support::*;

/// Writes `raw` on a new connection; everything sluice answers before it closes (within 3 s).
async fn answer_to(sluice: &Sluice, raw: &str) -> String {
    let mut s = raw::open(sluice.addr, raw).await;
    let bytes = within(
        Duration::from_secs(3),
        "the close",
        raw::read_until_closed(&mut s),
    )
    .await;
    String::from_utf8_lossy(&bytes).into_owned()
}

fn assert_400(answer: &str, detail: &str, raw: &str) {
    assert!(answer.starts_with("HTTP/1.1 400 "), "{raw:?}\n-> {answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(
        answer.contains(detail),
        "{raw:?}: want {detail:?}\n-> {answer}"
    );
    assert_eq!(status_lines(answer), 1, "one answer: {answer}");
}

/// How many status lines `answer` has: `HTTP/1.1 ` and three digits.
fn status_lines(answer: &str) -> usize {
    let starts = answer.match_indices("HTTP/1.1 ").map(|(i, _)| i + 9);
    let digits = |i: usize| {
        answer
            .as_bytes()
            .get(i..i + 3)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    starts.filter(|&i| digits(i)).count()
}

const BOTH: &str = "may not have both Content-Length and Transfer-Encoding";
const CODING: &str = "Transfer-Encoding may only be chunked";

#[tokio::test]
async fn a_body_framed_two_ways_is_refused_and_nothing_reaches_the_upstream() {
    let rec = Recorder::start().await;
    let sluice = guarded().target(&rec.url()).start();
    let post = "POST /any/x HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n";
    for (fields, body, detail) in [
        // CL.TE: a front end that goes by the length forwards "G" as the next request's start.
        (
            "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
            "0\r\n\r\nG",
            BOTH,
        ),
        // TE.CL: one that goes by the coding sends "SMUGGLED" on as a request.
        (
            "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
            "8\r\nSMUGGLED\r\n0\r\n\r\n",
            BOTH,
        ),
        // TE.TE: a coding one side reads and the other does not.
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n",
            "0\r\n\r\n",
            CODING,
        ),
        ("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n", CODING),
        ("Transfer-Encoding:\tchunked\r\n", "0\r\n\r\n", CODING),
        (
            "Transfer-Encoding: chunked, identity\r\n",
            "0\r\n\r\n",
            CODING,
        ),
        ("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n", CODING),
        (
            "Transfer-Encoding:\tchunked\r\nContent-Length: 4\r\n",
            "0\r\n\r\n",
            BOTH,
        ),
        (
            "Content-Length: 2\r\nContent-Length: 2\r\n",
            "{}",
            "one Content-Length header only",
        ),
        (
            "Content-Length: 2\r\nContent-Length: 7\r\n",
            "{}",
            "one Content-Length header only",
        ),
        // Not valid HTTP/1.1 at all: refused by the parser, with a problem all the same.
        (
            "Transfer-Encoding : chunked\r\n",
            "0\r\n\r\n",
            "not valid HTTP/1.1",
        ),
        (
            " Transfer-Encoding: chunked\r\n",
            "0\r\n\r\n",
            "not valid HTTP/1.1",
        ),
        ("Content-Length: +2\r\n", "{}", "not valid HTTP/1.1"),
        ("Content-Length: 2, 2\r\n", "{}", "not valid HTTP/1.1"),
    ] {
        let raw = format!("{post}{fields}\r\n{body}");
        let answer = answer_to(&sluice, &raw).await;
        assert_400(&answer, detail, &raw);
    }
    // Bare line feeds frame a head as CRLF does, and hide nothing.
    let raw =
        "POST /any/x HTTP/1.1\nHost: h\nTransfer-Encoding: chunked\nContent-Length: 3\n\n0\r\n\r\n";
    assert_400(&answer_to(&sluice, raw).await, BOTH, raw);
    assert!(rec.requests().is_empty(), "{}", rec.text());
}

#[tokio::test]
async fn heads_nginx_refuses_are_400_and_go_no_further() {
    let rec = Recorder::start().await;
    let sluice = guarded().target(&rec.url()).start();
    for (line, host, detail) in [
        (
            "GET /x HTTP/1.1",
            "Host: a/evil",
            "must be a host name or address",
        ),
        (
            "GET /x HTTP/1.1",
            "Host: ",
            "must be a host name or address",
        ),
        (
            "GET /x HTTP/1.1",
            "Host: a b",
            "must be a host name or address",
        ),
        (
            "GET /x HTTP/1.1",
            "Host: user@a",
            "must be a host name or address",
        ),
        (
            "GET /x HTTP/1.1",
            "Host: a\r\nHost: b",
            "one Host header only",
        ),
        ("get /x HTTP/1.1", "Host: a", "upper-case letters"),
        ("G!T /x HTTP/1.1", "Host: a", "upper-case letters"),
        ("Get /x HTTP/1.1", "Host: a", "upper-case letters"),
        ("GET /a%00.json HTTP/1.1", "Host: a", "%00"),
        (
            "GET /../../etc/passwd HTTP/1.1",
            "Host: a",
            "above the root",
        ),
        (
            "GET /a/%2e%2e/%2E%2E/etc/passwd HTTP/1.1",
            "Host: a",
            "above the root",
        ),
        ("GET /a%zz HTTP/1.1", "Host: a", "does not begin an escape"),
    ] {
        let raw = format!("{line}\r\n{host}\r\nConnection: close\r\n\r\n");
        let answer = answer_to(&sluice, &raw).await;
        assert_400(&answer, detail, &raw);
    }
    assert!(rec.requests().is_empty(), "{}", rec.text());
    // The same heads without their fault pass: the rules refuse only what they name.
    for raw in [
        "GET /x HTTP/1.1\r\nHost: a.example:8080\r\nConnection: close\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: [::1]:80\r\nConnection: close\r\n\r\n",
        "GET /a/../x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        "M-SEARCH_X /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    ] {
        let answer = answer_to(&sluice, raw).await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{raw:?}\n-> {answer}");
    }
    let paths: Vec<String> = rec.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/x", "/x", "/x", "/x"]);
}

#[tokio::test]
async fn a_smuggling_head_behind_a_good_one_never_reaches_the_upstream_as_a_request() {
    // The second head comes in the same write as the first, before its answer: sluice reads
    // it as hyper does, by the coding, and closes the connection after answering it, so the
    // bytes after the chunked body are never read as a request.
    let rec = Recorder::start().await;
    let sluice = guarded().target(&rec.url()).start();
    let raw = "GET /x HTTP/1.1\r\nHost: h\r\n\r\n\
        POST /any/x HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n\
        Content-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n\
        0\r\n\r\nGET /admin HTTP/1.1\r\nHost: h\r\n\r\n";
    let answer = answer_to(&sluice, raw).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let received = rec.requests();
    assert!(!received.is_empty() && received.len() <= 2, "{received:?}");
    assert!(received.iter().all(|r| r.path != "/admin"), "{received:?}");
    assert!(!answer.contains("/admin") && !rec.text().contains("/admin"));
}

#[tokio::test]
async fn bodies_reach_the_upstream_framed_one_way() {
    let rec = Recorder::start().await;
    let sluice = guarded().target(&rec.url()).start();
    let json = r#"{"name":"ada"}"#;
    let by_length = format!(
        "POST /any/a HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{json}",
        json.len()
    );
    let chunked = format!(
        "POST /any/b HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{json}\r\n0\r\n\r\n",
        json.len()
    );
    for raw in [by_length, chunked] {
        let answer = answer_to(&sluice, &raw).await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    }
    let received = rec.requests(); // panics on anything framed two ways
    assert_eq!(received.len(), 2);
    for r in &received {
        assert_eq!(r.body, json.as_bytes(), "{r:?}");
    }
}

#[tokio::test]
async fn claims_of_who_the_client_is_reach_the_upstream_only_from_a_trusted_proxy() {
    let raw = "GET /x HTTP/1.1\r\nHost: h\r\nForwarded: for=6.6.6.6;proto=https\r\n\
        True-Client-IP: 6.6.6.6\r\nX-Forwarded-For: 6.6.6.6\r\nConnection: close\r\n\r\n";
    let rec = Recorder::start().await;
    let untrusted = guarded().target(&rec.url()).start();
    assert!(
        answer_to(&untrusted, raw)
            .await
            .starts_with("HTTP/1.1 200 ")
    );
    let trusted = guarded()
        .target(&rec.url())
        .server("trusted_proxies = [\"127.0.0.1/32\"]")
        .start();
    assert!(answer_to(&trusted, raw).await.starts_with("HTTP/1.1 200 "));
    let received = rec.requests();
    let [from_untrusted, from_trusted] = &received[..] else {
        panic!("{received:?}");
    };
    assert!(
        from_untrusted.all("forwarded").is_empty(),
        "{from_untrusted:?}"
    );
    assert!(from_untrusted.all("true-client-ip").is_empty());
    assert_eq!(from_untrusted.all("x-real-ip"), ["127.0.0.1"]);
    assert_eq!(
        from_untrusted.all("x-forwarded-for"),
        ["6.6.6.6, 127.0.0.1"]
    );
    assert_eq!(from_trusted.all("forwarded"), ["for=6.6.6.6;proto=https"]);
    assert_eq!(from_trusted.all("true-client-ip"), ["6.6.6.6"]);
    assert_eq!(from_trusted.all("x-real-ip"), ["6.6.6.6"]);
}
