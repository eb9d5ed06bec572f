//! What sluice answers by itself: problem+json for 404, 405, 502 and 503.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use support::*;
use tokio::net::TcpListener;

const ROUTES: &str = r#"
[upstreams.api]
targets = ["{upstream}"]
[[routes]]
path = "/v1/reports"
methods = ["GET", "POST"]
[[routes]]
path = "/v1/"
"#;

#[tokio::test]
async fn no_matching_route_is_404_and_never_reaches_the_upstream() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(ROUTES, &up.url());
    assert_problem(&get(sluice.addr, "/other").await, 404);
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn a_head_request_sluice_refuses_gets_the_head_of_the_problem_and_no_body() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(ROUTES, &up.url());
    let length = get(sluice.addr, "/other").await.body.len().to_string();
    let head = || {
        request(Method::HEAD, "http://api.example/other")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    // Over HTTP/2 a body on a HEAD stream broke it: the client saw no status at all.
    for res in [
        send(sluice.addr, head()).await,
        send_h2(sluice.addr, head()).await,
    ] {
        assert_eq!(res.status, 404);
        assert_eq!(res.header("content-type"), "application/problem+json");
        assert_eq!(res.header("content-length"), length);
        assert!(res.body.is_empty());
    }
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn a_method_the_route_does_not_take_is_405_with_allow() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(ROUTES, &up.url());
    let req = request(Method::DELETE, "/v1/reports/1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = send(sluice.addr, req).await;
    assert_problem(&res, 405);
    assert_eq!(res.header("allow"), "GET, POST, HEAD");
    assert!(up.seen().is_empty());
    // The longer prefix takes no DELETE, the shorter one takes anything.
    let req = request(Method::DELETE, "/v1/candidates/1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(sluice.addr, req).await.status, 200);
}

#[tokio::test]
async fn a_refused_connection_is_502_then_503_while_the_target_is_down() {
    let sluice = spawn_default(&closed_port());
    let body = assert_problem(&get(sluice.addr, "/").await, 502);
    assert!(body["detail"].as_str().unwrap().contains("refused"));
    let body = assert_problem(&get(sluice.addr, "/").await, 503);
    assert!(body["detail"].as_str().unwrap().contains("healthy"));
    let admin = sluice.admin.unwrap();
    assert_eq!(
        get(admin, "/readyz").await.status,
        503,
        "not ready while every target fails"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        get(sluice.addr, "/").await.status,
        502,
        "tried again after the fail timeout"
    );
}

#[tokio::test]
async fn readiness_waits_for_the_upstream_to_listen_before_any_request() {
    let port = free_port();
    let sluice = spawn_default(&format!("http://127.0.0.1:{port}"));
    let admin = sluice.admin.unwrap();
    assert_eq!(
        get(admin, "/readyz").await.status,
        503,
        "nothing listens yet"
    );
    let _app = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    assert_eq!(get(admin, "/readyz").await.status, 200);
}

#[tokio::test]
async fn readiness_tries_the_targets_at_once_and_marks_none_down() {
    let target = raw::hanging_target().expect("connects to a full accept queue hang");
    let hanging = target.url.clone();
    let good = spawn_upstream().await;
    let sluice = Sluice::builder().target(&hanging).upstream(&good).start();
    let started = std::time::Instant::now();
    assert_eq!(get(sluice.admin.unwrap(), "/readyz").await.status, 200);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "not held up by the hanging one"
    );

    let sluice = spawn_default(&hanging);
    let started = std::time::Instant::now();
    assert_eq!(get(sluice.admin.unwrap(), "/readyz").await.status, 503);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "within a kubelet's probe timeout"
    );

    // A probe's failure is not a request's: the next request still tries the target.
    let sluice = spawn_default(&closed_port());
    assert_eq!(get(sluice.admin.unwrap(), "/readyz").await.status, 503);
    let body = assert_problem(&get(sluice.addr, "/").await, 502);
    assert!(body["detail"].as_str().unwrap().contains("refused"));
}

#[tokio::test]
async fn a_garbage_answer_is_502() {
    let sluice = spawn_default(&raw::server(b"this is not http\r\n\r\n").await);
    let body = assert_problem(&get(sluice.addr, "/").await, 502);
    assert!(body["detail"].as_str().unwrap().contains("invalid"));
}

#[tokio::test]
async fn an_answer_head_of_more_than_100_fields_is_502() {
    fn answer(fields: usize) -> &'static [u8] {
        let fields: String = (0..fields).map(|i| format!("x-{i}: 1\r\n")).collect();
        let head = format!("HTTP/1.1 200 OK\r\n{fields}content-length: 2\r\n\r\n{{}}");
        Box::leak(head.into_bytes().into_boxed_slice())
    }
    let sluice = spawn_default(&raw::server(answer(90)).await);
    assert_eq!(get(sluice.addr, "/").await.status, 200);
    let sluice = spawn_default(&raw::server(answer(100)).await);
    let body = assert_problem(&get(sluice.addr, "/").await, 502);
    assert!(body["detail"].as_str().unwrap().contains("invalid"));
}

#[tokio::test]
async fn an_answer_with_transfer_encoding_loses_its_content_length() {
    // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3): passed on, the 2 would cut
    // the body short and the client would take it as complete.
    let url = raw::server(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n\
          1e\r\n{\"padding\":\"xxxxxxxxxxxxxxxx\"}\r\n0\r\n\r\n",
    )
    .await;
    let sluice = spawn_default(&url);
    let res = get(sluice.addr, "/").await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["padding"], "xxxxxxxxxxxxxxxx");
    let req = http::Request::get("http://api.example/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = send_h2(sluice.addr, req).await;
    assert_eq!(res.body.len(), 30);
    assert_eq!(res.header("content-length"), "");
}

#[tokio::test]
async fn an_answer_sluice_cannot_pass_on_as_meant_is_502() {
    for reply in [
        // A coding sluice would drop, leaving the body gzip with nothing to say so.
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"[..],
        // Chunked twice: the inner chunks would reach the client as if they were the body.
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, chunked\r\n\r\n\
          7\r\n2\r\n{}\r\n\r\n0\r\n\r\n0\r\n\r\n",
        // sluice never asks for an upgrade.
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\n",
    ] {
        let sluice = spawn_default(&raw::server(reply).await);
        let body = assert_problem(&get(sluice.addr, "/").await, 502);
        assert!(body["detail"].as_str().unwrap().contains("invalid"));
    }
}

#[tokio::test]
async fn an_answers_trailers_stay_behind_even_those_http2_forbids() {
    let url = raw::server(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n\
          0\r\nconnection: close\r\nx-checksum: abc\r\n\r\n",
    )
    .await;
    let sluice = spawn_default(&url);
    let req = http::Request::get("http://api.example/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    // The stream ends whole: a connection field among the trailers used to reset it.
    let res = send_h2(sluice.addr, req).await;
    assert_eq!((res.status.as_u16(), &res.body[..]), (200, &b"ok"[..]));
}

#[tokio::test]
async fn an_unknown_coding_on_an_answer_without_a_body_passes() {
    let url = raw::server(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n").await;
    let sluice = spawn_default(&url);
    let req = request(Method::HEAD, "/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = send(sluice.addr, req).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("transfer-encoding"), "");
}

#[tokio::test]
async fn an_http_1_0_answer_goes_to_the_client_as_http_1_1() {
    let url = raw::server(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n{}").await;
    let sluice = spawn_default(&url);
    // Two requests on one connection: sluice keeps it open, so it must say HTTP/1.1.
    let head =
        "GET / HTTP/1.1\r\nHost: h\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    let answer = raw::exchange(sluice.addr, head).await;
    assert_eq!(answer.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{answer}");
    assert!(!answer.contains("HTTP/1.0"), "{answer}");
}

#[tokio::test]
async fn a_204_goes_out_without_content_length_on_h2_too() {
    let url = raw::server(b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n").await;
    let sluice = spawn_default(&url);
    let req = http::Request::get("http://api.example/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = send_h2(sluice.addr, req).await;
    assert_eq!(res.status, 204);
    assert_eq!(res.header("content-length"), "");
}

#[tokio::test]
async fn a_connection_closed_before_answering_is_502() {
    let sluice = spawn_default(&raw::server(b"").await);
    let body = assert_problem(&get(sluice.addr, "/").await, 502);
    assert!(body["detail"].as_str().unwrap().contains("closed"));
}

#[tokio::test]
async fn a_truncated_answer_is_cut_off_not_completed() {
    let up = Upstream::new()
        .on("/", Reply::cut_after("partial", 100))
        .start()
        .await;
    let sluice = spawn_default(&up.url());
    let mut sender = connect_h1(sluice.addr).await;
    let req = request(Method::GET, "/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = http_body_util::BodyExt::collect(res.into_body()).await;
    assert!(
        body.is_err(),
        "the client must see the body end early, not a complete one"
    );
}

#[tokio::test]
async fn round_robin_skips_a_target_that_refuses() {
    let good = spawn_upstream().await;
    let bad = closed_port();
    let sluice = Sluice::builder().target(&bad).upstream(&good).start();
    for _ in 0..6 {
        assert_eq!(get(sluice.addr, "/").await.status, 200);
    }
    assert_eq!(good.seen().len(), 6);
}

#[tokio::test]
async fn round_robin_spreads_over_live_targets() {
    let a = spawn_upstream().await;
    let b = spawn_upstream().await;
    let sluice = Sluice::builder().upstream(&a).upstream(&b).start();
    for _ in 0..6 {
        assert_eq!(get(sluice.addr, "/").await.status, 200);
    }
    assert_eq!((a.seen().len(), b.seen().len()), (3, 3));
}

#[tokio::test]
async fn a_connection_over_max_connections_gets_503_when_every_other_is_answering() {
    // An idle connection would be closed to make room (see floods.rs); one answering a request
    // is not, so the newcomer is refused.
    let up = Upstream::new()
        .on("/slow", Reply::ok().after(Duration::from_millis(800)))
        .start()
        .await;
    let sluice = Sluice::builder()
        .upstream(&up)
        .server("max_connections = 1")
        .start();
    let mut held = connect_h1(sluice.addr).await;
    let slow = tokio::spawn(async move {
        let req = request(Method::GET, "/slow").body(Full::new(Bytes::new()));
        held.send_request(req.unwrap()).await.unwrap().status()
    });
    within(Duration::from_secs(2), "the slow request upstream", async {
        while up.seen().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    let res = get(sluice.addr, "/").await;
    assert_problem(&res, 503);
    assert_eq!(res.header("connection"), "close");
    // Over HTTP/2 too, and to a HEAD without the body. Then the connection closes: HTTP/2
    // has no `Connection: close`, so it used to stay open, answering 503 for good.
    let (mut h2, conn) = connect_h2(sluice.addr).await;
    let head = request(Method::HEAD, "http://api.example/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = h2.send_request(head).await.unwrap();
    assert_eq!(res.status(), 503);
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap();
    assert!(body.to_bytes().is_empty());
    let closed = tokio::time::timeout(Duration::from_secs(2), conn).await;
    assert!(closed.is_ok(), "the HTTP/2 connection stayed open");
    assert_eq!(
        slow.await.unwrap(),
        200,
        "the busy connection was left alone"
    );
    assert_eq!(
        up.seen().len(),
        1,
        "the refused requests never reached the upstream"
    );
    let text = sluice.metrics().await;
    for method in ["GET", "HEAD"] {
        let series =
            format!(r#"sluice_requests_total{{route="none",method="{method}",status="503"}}"#);
        assert_eq!(metric_value(&text, &series), 1.0, "{method}");
    }
    assert_eq!(metric_value(&text, "sluice_connections_evicted_total"), 0.0);
}
