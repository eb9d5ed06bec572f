//! What an operator sees: Prometheus metrics on the admin listener, and access-log lines.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use support::process::{Launch, Process};
use support::*;

const SMALL: &str = r#"
[upstreams.api]
targets = ["{upstream}"]
[upstreams.gone]
targets = ["http://127.0.0.1:1"]
[policies.default]
rate = "1/m"
burst = 3
[[routes]]
path = "/gone"
upstream = "gone"
policy = "none"
[[routes]]
path = "/"
upstream = "api"
"#;

#[tokio::test]
async fn answers_to_heads_sluice_could_not_read_are_counted_under_no_route() {
    let up = spawn_upstream().await;
    let sluice = Sluice::builder()
        .upstream(&up)
        .header_read_timeout("300ms")
        .server(r#"max_header_bytes = "1KiB""#)
        .start();
    let not_http = raw::exchange(sluice.addr, "GET / HTTP/9.9\r\n\r\n").await;
    assert!(not_http.starts_with("HTTP/1.1 400 "), "{not_http}");
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2048)
    );
    assert!(
        raw::exchange(sluice.addr, &big)
            .await
            .starts_with("HTTP/1.1 431 ")
    );
    let half = raw::exchange(sluice.addr, "GET / HTTP/1.1\r\n").await;
    assert!(half.starts_with("HTTP/1.1 408 "), "{half}");

    let text = sluice.metrics().await;
    for status in [400, 431, 408] {
        let series =
            format!(r#"sluice_requests_total{{route="none",method="other",status="{status}"}}"#);
        assert_eq!(metric_value(&text, &series), 1.0, "{status}");
    }
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn metrics_count_known_traffic() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(SMALL, &up.url());
    for _ in 0..3 {
        assert_eq!(get(sluice.addr, "/ok").await.status, 200);
    }
    assert_eq!(get(sluice.addr, "/ok").await.status, 429);
    let text_body = request(Method::POST, "/ok")
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from("x")));
    assert_eq!(
        send(sluice.addr, text_body.unwrap()).await.status,
        429,
        "still limited"
    );
    assert_eq!(get(sluice.addr, "/gone").await.status, 502);

    let res = get(sluice.admin.unwrap(), "/metrics").await;
    assert_eq!(res.status, 200);
    assert!(res.header("content-type").contains("openmetrics-text"));
    let text = String::from_utf8(res.body.to_vec()).unwrap();
    assert_eq!(
        metric_value(
            &text,
            r#"sluice_requests_total{route="/",method="GET",status="200"}"#
        ),
        3.0
    );
    assert_eq!(
        metric_value(
            &text,
            r#"sluice_requests_total{route="/",method="GET",status="429"}"#
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &text,
            r#"sluice_requests_total{route="/",method="POST",status="429"}"#
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &text,
            r#"sluice_requests_total{route="/gone",method="GET",status="502"}"#
        ),
        1.0
    );
    let decisions = r#"sluice_limiter_decisions_total{policy="default",limit="default",decision="#;
    assert_eq!(
        metric_value(&text, &format!(r#"{decisions}"allowed"}}"#)),
        3.0
    );
    assert_eq!(
        metric_value(&text, &format!(r#"{decisions}"refused"}}"#)),
        2.0
    );
    assert_eq!(
        metric_value(
            &text,
            r#"sluice_upstream_errors_total{upstream="gone",kind="refused"}"#
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &text,
            r#"sluice_upstream_latency_seconds_count{route="/",upstream="api"}"#
        ),
        3.0
    );
    assert_eq!(
        metric_value(
            &text,
            r#"sluice_upstream_latency_seconds_bucket{le="+Inf",route="/",upstream="api"}"#
        ),
        3.0
    );
    assert_eq!(metric_value(&text, "sluice_limiter_keys"), 1.0);
    assert_eq!(metric_value(&text, "sluice_requests_in_flight"), 0.0);
    let hash = metric_line(&text, "sluice_config_info{").unwrap();
    assert!(!hash.contains("0000000000000000"), "{hash}");
    assert!(
        !text.contains("127.0.0.1\""),
        "no client addresses in labels"
    );
}

#[tokio::test]
async fn open_connections_and_in_flight_requests_are_gauged() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(SMALL, &up.url());
    let addr = sluice.addr;
    let slow = tokio::spawn(async move { get(addr, "/slow/500").await });
    up.wait_for(1).await;
    let text = sluice.metrics().await;
    assert_eq!(metric_value(&text, "sluice_requests_in_flight"), 1.0);
    assert_eq!(metric_value(&text, "sluice_connections_open"), 1.0);
    assert_eq!(slow.await.unwrap().status, 200);
}

#[tokio::test]
async fn a_request_its_client_abandons_leaves_no_one_in_flight_and_counts_as_499() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(SMALL, &up.url());
    let client = raw::open(sluice.addr, "GET /slow/300 HTTP/1.1\r\nHost: x\r\n\r\n").await;
    up.wait_for(1).await;
    drop(client); // before the upstream answers
    tokio::time::sleep(Duration::from_millis(400)).await;
    let text = sluice.metrics().await;
    assert_eq!(metric_value(&text, "sluice_requests_in_flight"), 0.0);
    assert_eq!(
        metric_value(
            &text,
            r#"sluice_requests_total{route="/",method="GET",status="499"}"#
        ),
        1.0
    );
}

/// Runs the binary with JSON logs, sends the requests, and returns the access-log lines.
async fn access_lines(launch: Launch, requests: usize) -> Vec<serde_json::Value> {
    let up = spawn_upstream().await;
    let json_logs = ["--upstream", &up.url(), "--log-format", "json"];
    let mut p = launch.args(json_logs).start().await;
    for i in 0..requests {
        let req = request(Method::GET, &format!("/item/{i}?q=secret"))
            .header("x-api-key", "the-secret-key");
        send(p.addr, req.body(Full::<Bytes>::default()).unwrap()).await;
    }
    send(p.addr, post_json("/v1", "{nope")).await;
    p.signal("TERM");
    p.wait().await;
    p.log()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))
        })
        .filter(|v| v["target"] == "sluice::access")
        .collect()
}

#[tokio::test]
async fn access_log_lines_are_json_with_the_request_fields() {
    let lines = access_lines(Process::new(), 2).await;
    assert_eq!(lines.len(), 3, "{lines:?}");
    let ok = &lines[0]["fields"];
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["upstream_status"], 200);
    assert_eq!(ok["route"], "/");
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["limit"], "allowed");
    assert_eq!(
        ok["client"], "-",
        "no key names without [[auth.keys]]; never the key itself"
    );
    assert_eq!(ok["request_id"].as_str().unwrap().len(), 16);
    assert!(ok["duration_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(ok["bytes_out"], 11);
    let bad = &lines[2]["fields"];
    assert_eq!(bad["status"], 400);
    assert!(bad["upstream_status"].is_null());
    assert_eq!(bad["bytes_in"], 5);
    let all = serde_json::to_string(&lines).unwrap();
    assert!(
        !all.contains("the-secret-key"),
        "the key never reaches the logs"
    );
    assert!(!all.contains("secret\""), "nor the raw path's query");
}

#[tokio::test]
async fn access_logs_can_be_turned_off() {
    let quiet = Process::new().config("[server]\naccess_log = false\n");
    let lines = access_lines(quiet, 2).await;
    assert!(lines.is_empty(), "{lines:?}");
}
