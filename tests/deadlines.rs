//! The request deadline on the upstream's side: an upstream slower than `request_timeout`
//! gets the client a 408 (or 504 with `timeout_status`), per server or per route; a connection
//! the deadline cut is not used again, an answer that stalls is cut off, and a target that does
//! not accept within `connect_timeout` is a quick 502.

mod support;

use std::time::{Duration, Instant};

use support::raw::read_until_closed;
use support::*;

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
