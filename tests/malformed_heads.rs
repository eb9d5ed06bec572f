//! A head sluice cannot take is refused with a problem, never with hyper's own bare answer:
//! whether it is the connection's first, follows an answered request, comes behind another
//! head in one write, or arrives while an earlier request is still being answered.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONFIG: &str = r#"
[upstreams.api]
targets = ["{upstream}"]
[[routes]]
path = "/"
policy = "none"
"#;

/// Heads that hyper or sluice refuse, and the status they get.
fn bad_heads() -> Vec<(String, u16)> {
    let fields: String = (0..101).map(|i| format!("x-{i}: 1\r\n")).collect();
    [
        (
            "GET / HTTP/1.1\r\nHost: x\r\nno colon in this line\r\n\r\n",
            400,
        ),
        ("GET / HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n", 400),
        ("GET / HTTP/7.0\r\nHost: x\r\n\r\n", 400),
        ("G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ("GARBAGE\r\n\r\n", 400),
        // Framed, then refused by hyper's own checks on what it parsed.
        (
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
            400,
        ),
        (
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            400,
        ),
        (&format!("GET / HTTP/1.1\r\nHost: x\r\n{fields}\r\n"), 431),
    ]
    .into_iter()
    .map(|(head, status)| (head.to_string(), status))
    .collect()
}

const GOOD: &str = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n";

/// Every answer on a raw connection, read until sluice closes it.
async fn answers(s: &mut TcpStream) -> Vec<Answer> {
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut raw));
    read.await
        .expect("the connection closes")
        .expect("a clean close");
    let mut rest = &raw[..];
    let mut all = Vec::new();
    while !rest.is_empty() {
        let Some((answer, len)) = parse_answer(rest) else {
            panic!("not an answer: {:?}", String::from_utf8_lossy(rest));
        };
        all.push(answer);
        rest = &rest[len..];
    }
    all
}

/// The next answer on a raw connection, which must be all that comes.
async fn one_answer(s: &mut TcpStream) -> Answer {
    let mut raw = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(3), s.read(&mut chunk));
        let n = read.await.expect("an answer").unwrap();
        assert!(n > 0, "closed before an answer");
        raw.extend_from_slice(&chunk[..n]);
        if let Some((answer, len)) = parse_answer(&raw) {
            assert_eq!(len, raw.len(), "bytes after the answer");
            return answer;
        }
    }
}

/// The answer at the start of `raw`, and its length with its body; `None` if incomplete.
fn parse_answer(raw: &[u8]) -> Option<(Answer, usize)> {
    let mut fields = [httparse::EMPTY_HEADER; 32];
    let mut head = httparse::Response::new(&mut fields);
    let httparse::Status::Complete(head_len) = head.parse(raw).expect("an answer") else {
        return None;
    };
    let mut headers = HeaderMap::new();
    for field in head.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes()).unwrap();
        headers.append(name, HeaderValue::from_bytes(field.value).unwrap());
    }
    let len: usize = headers
        .get("content-length")
        .map_or(0, |v| v.to_str().unwrap().parse().unwrap());
    let body = Bytes::copy_from_slice(raw.get(head_len..head_len + len)?);
    let status = StatusCode::from_u16(head.code.unwrap()).unwrap();
    let answer = Answer {
        status,
        headers,
        body,
    };
    Some((answer, head_len + len))
}

/// Asserts that the last of `got` is the problem for `head`, and all before it are 200s.
fn assert_refused(got: &[Answer], oks: usize, head: &str, status: u16) {
    let statuses: Vec<_> = got.iter().map(|a| a.status.as_u16()).collect();
    let mut expected = vec![200; oks];
    expected.push(status);
    assert_eq!(statuses, expected, "{head:?}");
    let refusal = got.last().unwrap();
    assert_problem(refusal, status);
    assert!(!refusal.header("x-request-id").is_empty(), "{head:?}");
    assert_eq!(refusal.header("connection"), "close", "{head:?}");
}

#[tokio::test]
async fn a_bad_first_head_gets_a_problem_never_hypers_bare_answer() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(CONFIG, &up.url());
    for (head, status) in bad_heads() {
        let mut s = TcpStream::connect(sluice.addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        assert_refused(&answers(&mut s).await, 0, &head, status);
    }
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn a_bad_head_after_an_answered_request_gets_a_problem() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(CONFIG, &up.url());
    for (head, status) in bad_heads() {
        let mut s = TcpStream::connect(sluice.addr).await.unwrap();
        s.write_all(GOOD.as_bytes()).await.unwrap();
        assert_eq!(one_answer(&mut s).await.status, 200);
        s.write_all(head.as_bytes()).await.unwrap();
        assert_refused(&answers(&mut s).await, 0, &head, status);
    }
}

#[tokio::test]
async fn a_bad_head_behind_a_good_one_in_the_same_write_gets_a_problem() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(CONFIG, &up.url());
    for (head, status) in bad_heads() {
        let mut s = TcpStream::connect(sluice.addr).await.unwrap();
        s.write_all(format!("{GOOD}{head}").as_bytes())
            .await
            .unwrap();
        assert_refused(&answers(&mut s).await, 1, &head, status);
    }
}

#[tokio::test]
async fn a_bad_head_sent_while_a_request_is_answered_gets_a_problem() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(CONFIG, &up.url());
    for (i, (head, status)) in bad_heads().into_iter().enumerate() {
        let mut s = TcpStream::connect(sluice.addr).await.unwrap();
        s.write_all(b"GET /slow/200 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        up.wait_for(i + 1).await;
        s.write_all(head.as_bytes()).await.unwrap();
        assert_refused(&answers(&mut s).await, 1, &head, status);
    }
}
