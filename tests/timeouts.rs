//! Timeouts, when either side is too slow for sluice. A client: a head that does not come in
//! time (408, or a silent close), a kept-alive connection left idle, a body that stops short,
//! an answer it does not take. An upstream: slower than `request_timeout` (408, or 504 with
//! `timeout_status`, per server or per route), stalling mid-answer, or not accepting within
//! `connect_timeout` (502). Clients are played on raw sockets.

mod support;

use std::time::{Duration, Instant};

use support::raw::{get_on, read_answer, read_to_eof, read_until_closed};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---- the head ---------------------------------------------------------------------------------

#[tokio::test]
async fn half_a_head_gets_408_with_connection_close_then_the_connection_ends() {
    let up = spawn_upstream().await;
    let sluice = guarded().upstream(&up).header_read_timeout("300ms").start();
    let mut s = raw::open(sluice.addr, "GET / HTTP/1.1\r\nHost: x\r\n").await;
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
    let sluice = guarded().upstream(&up).header_read_timeout("300ms").start();
    let (mut rd, wr) = TcpStream::connect(sluice.addr).await.unwrap().into_split();
    let started = Instant::now();
    // One byte every 50 ms: each read is quick, the head as a whole is not.
    let head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let trickle = raw::trickle(wr, head, Duration::from_millis(50));
    let raw = within(Duration::from_secs(2), "408", read_to_eof(&mut rd)).await;
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
    let sluice = guarded().upstream(&up).header_read_timeout("400ms").start();
    let started = Instant::now();
    let mut s = TcpStream::connect(sluice.addr).await.unwrap();
    // Nearly the whole timeout in silence, then one byte: it must not buy a second timeout.
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.write_all(b"G").await.unwrap();
    let raw = within(Duration::from_secs(2), "408", read_to_eof(&mut s)).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    let waited = started.elapsed();
    assert!(waited < Duration::from_millis(600), "took {waited:?}");
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_silently_after_header_read_timeout() {
    let up = spawn_upstream().await;
    let sluice = guarded().upstream(&up).header_read_timeout("300ms").start();
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

// ---- idle keep-alive ---------------------------------------------------------------------------

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
    let sluice = guarded()
        .upstream(&up)
        .idle_timeout("300ms")
        .header_read_timeout("2s")
        .start();
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
    assert_eq!(up.uris(), ["/n/0", "/n/1", "/n/2"]);
    let peers: Vec<_> = up.seen().iter().map(|s| s.peer).collect();
    assert!(peers.iter().all(|p| *p == peers[0]), "{peers:?}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_quietly_after_idle_timeout() {
    let up = spawn_upstream().await;
    let sluice = guarded()
        .upstream(&up)
        .idle_timeout("300ms")
        .header_read_timeout("2s")
        .start();
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
    let sluice = guarded()
        .upstream(&up)
        .idle_timeout("300ms")
        .header_read_timeout("200ms")
        .request_timeout("2s")
        .start();
    let mut s = TcpStream::connect(sluice.addr).await.unwrap();
    assert_eq!(get_on(&mut s, "/slow/500").await.status, 200);
    let waited = quiet_close_after(&mut s, Duration::from_millis(1500)).await;
    assert!(
        waited >= Duration::from_millis(250),
        "closed after {waited:?}"
    );
}

// ---- the body ----------------------------------------------------------------------------------

/// Sends a head declaring 10 body bytes and only 3 of them, then waits for the answer.
async fn short_body(sluice: &Sluice, path: &str) -> (Answer, Duration, TcpStream) {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n[1,"
    );
    let mut s = raw::open(sluice.addr, head).await;
    let started = Instant::now();
    let res = within(Duration::from_secs(2), "408", read_answer(&mut s)).await;
    (res, started.elapsed(), s)
}

#[tokio::test]
async fn a_body_that_stops_short_gets_408_with_connection_close_at_request_timeout() {
    let up = spawn_upstream().await;
    let sluice = guarded()
        .upstream(&up)
        .request_timeout("300ms")
        .header_read_timeout("2s")
        .start();
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
    let sluice = guarded()
        .upstream(&up)
        .request_timeout("300ms")
        .header_read_timeout("2s")
        .start();
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

// ---- the answer --------------------------------------------------------------------------------

#[tokio::test]
async fn a_client_that_takes_none_of_its_answer_is_let_go_after_idle_timeout() {
    let up = spawn_upstream().await;
    let sluice = guarded().upstream(&up).idle_timeout("400ms").start();
    let total = 64 << 20;
    let head = format!("GET /big/{total} HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut s = raw::open(sluice.addr, head).await;
    // Read nothing for well over idle_timeout: the socket buffers fill, and sluice's writes wait.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let got = within(
        Duration::from_secs(5),
        "the cut-off",
        read_until_closed(&mut s),
    )
    .await
    .len();
    assert!(got > 0, "the answer had begun");
    assert!(got < total, "the whole answer came: {got} bytes");
}

#[tokio::test]
async fn an_http2_client_that_grants_its_answers_no_window_is_let_go() {
    // Its answers cannot be sent, so nothing is ever written that could wait: the connection,
    // and a slot of max_connections, was held for good. sluice's own refusals cost the client
    // nothing, and have no upstream deadline to end them.
    let up = spawn_upstream().await;
    let sluice = guarded()
        .upstream(&up)
        .request_timeout("300ms")
        .idle_timeout("300ms")
        .start();
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
    let mut s = raw::open(sluice.addr, out).await;
    let started = Instant::now();
    within(Duration::from_secs(3), "the cut-off", read_to_eof(&mut s)).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(550), "{took:?}");
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn a_client_too_slow_to_take_its_answer_within_request_timeout_is_let_go() {
    // It reads, but so slowly that sluice's writes wait on it: hyper then reads no more of the
    // upstream's answer, so only the writes can see the deadline pass.
    let up = spawn_upstream().await;
    let sluice = guarded().upstream(&up).request_timeout("400ms").start();
    let head = format!("GET /big/{} HTTP/1.1\r\nHost: x\r\n\r\n", 256 << 20);
    let mut s = raw::open(sluice.addr, head).await;
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 << 10];
        while let Ok(1..) = s.read(&mut buf).await {
            tokio::time::sleep(Duration::from_millis(100)).await; // about 160 KB/s
        }
    });
    tokio::time::sleep(Duration::from_millis(1200)).await;
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
    // A 207 of 3 MiB: hyper has all of it (and has let go of the request) long before the
    // client has read it; the connection is not idle while the answer still goes out.
    let up = spawn_upstream().await;
    let sluice = guarded().upstream(&up).idle_timeout("400ms").start();
    let total: usize = 3 << 20;
    let body =
        format!(r#"{{"requests": [{{"id": "a", "method": "GET", "path": "/big/{total}"}}]}}"#);
    let head = format!(
        "POST /batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = raw::open(sluice.addr, head).await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 << 10];
    within(Duration::from_secs(20), "the whole answer", async {
        // Kept alive: the connection stays open after the answer, so stop once it is all in.
        while got <= total {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
            tokio::time::sleep(Duration::from_millis(20)).await; // about 3 MB/s: 1 s in all
        }
    })
    .await;
    assert!(got > total, "{got} of {total} bytes and a head");
}

// ---- the upstream ------------------------------------------------------------------------------

#[tokio::test]
async fn an_upstream_slower_than_request_timeout_gets_408_with_connection_close() {
    let up = spawn_upstream().await;
    let sluice = guarded().upstream(&up).request_timeout("300ms").start();
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

/// Routes under `/slow/` with a deadline of 300 ms answered 504: `/slow/1…` validates JSON,
/// `/slow/2…` streams.
fn slow_routes_504(up: &Upstream) -> Sluice {
    Sluice::builder()
        .upstream(up)
        .request_timeout("300ms")
        .server("timeout_status = 504")
        .route("/slow/1", "policy = \"none\"")
        .route("/slow/2", "policy = \"none\"\nvalidate_json = false")
        .start()
}

#[tokio::test]
async fn timeout_status_504_answers_a_slow_upstream_with_504() {
    let up = spawn_upstream().await;
    let sluice = slow_routes_504(&up);
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
    let sluice = slow_routes_504(&up);
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
    let timeouts = |server: &str, route: &str| {
        let route = format!("policy = \"none\"\nrequest_timeout = \"{route}\"");
        Sluice::builder()
            .upstream(&up)
            .request_timeout(server)
            .route("/", &route)
            .start()
    };
    // Server 300 ms, route 3 s: a 600 ms upstream answers.
    let longer = timeouts("300ms", "3s");
    let res = send(longer.addr, post_json("/slow/600", "{}")).await;
    assert_eq!(res.status, 200);
    assert_eq!(up.last().uri, "/slow/600");
    // Server 5 s, route 300 ms: a 1 s upstream times out.
    let shorter = timeouts("5s", "300ms");
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
    let sluice = guarded().upstream(&up).request_timeout("300ms").start();
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
    let sluice = guarded().upstream(&target).request_timeout("300ms").start();
    let mut s = raw::open(sluice.addr, "GET /raw/a HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let started = Instant::now();
    let raw = within(
        Duration::from_secs(3),
        "the cut-off",
        read_until_closed(&mut s),
    )
    .await;
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

#[tokio::test]
async fn a_target_that_does_not_accept_within_connect_timeout_gets_502_quickly() {
    let target =
        raw::hanging_target().expect("connects to a full accept queue do not hang on this system");
    let sluice = Sluice::builder()
        .target(&target.url)
        .connect_timeout("200ms")
        .request_timeout("5s")
        .route("/", "policy = \"none\"")
        .start();
    let started = Instant::now();
    let res = get(sluice.addr, "/").await;
    let waited = started.elapsed();
    assert_problem(&res, 502);
    assert!(
        waited >= Duration::from_millis(150) && waited < Duration::from_millis(800),
        "answered after {waited:?}"
    );
}
