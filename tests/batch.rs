//! The batch endpoint end to end: `POST /batch` answered 207 with one response per item in
//! request order, item bodies and headers both ways, dependencies (424), concurrency, the
//! whole-batch refusals (400, 405, 413, 415, 422), and each item going through the same limits,
//! credentials, deadline and body checks as a request of its own.

mod support;

use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use serde_json::{Value, json};
use support::*;

/// Routes without limits: `/echo` takes any media type, `/json-only/` takes JSON up to 64
/// bytes, `/get-only/` takes GET, and `/` the rest.
const OPEN: &str = r#"
[upstreams.api]
targets = ["{upstream}"]
[[routes]]
path = "/echo"
policy = "none"
content_types = ["*"]
[[routes]]
path = "/json-only/"
policy = "none"
max_body = "64B"
[[routes]]
path = "/get-only/"
policy = "none"
methods = ["GET"]
[[routes]]
path = "/"
policy = "none"
"#;

/// `OPEN` with `extra` appended (a `[batch]` or `[server]` table).
fn open_with(extra: &str) -> String {
    format!("{OPEN}\n{extra}\n")
}

async fn post_batch(sluice: &Sluice, batch: &Value) -> Answer {
    send(sluice.addr, post_json("/batch", &batch.to_string())).await
}

/// A JSON POST of `batch` to `/batch` with extra headers.
async fn post_batch_with(sluice: &Sluice, batch: &Value, headers: &[(&str, &str)]) -> Answer {
    let mut b = request(Method::POST, "/batch").header("content-type", "application/json");
    for (name, value) in headers {
        b = b.header(*name, *value);
    }
    let req = b.body(Full::new(Bytes::from(batch.to_string()))).unwrap();
    send(sluice.addr, req).await
}

/// The `responses` of a 207, checked to be one per item in request order.
fn responses(res: &Answer, ids: &[&str]) -> Vec<Value> {
    assert_eq!(
        res.status,
        207,
        "body: {}",
        String::from_utf8_lossy(&res.body)
    );
    assert_eq!(res.header("content-type"), "application/json");
    let list = res.json()["responses"]
        .as_array()
        .expect("a responses array")
        .clone();
    let got: Vec<&str> = list.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(got, ids, "one response per item, in request order");
    list
}

/// A problem answered for one item inside the 207; returns its problem body.
fn assert_item_problem(item: &Value, status: u16) -> &Value {
    assert_eq!(item["status"], status, "{item}");
    assert_eq!(
        item["headers"]["content-type"], "application/problem+json",
        "{item}"
    );
    let body = &item["body"];
    assert_eq!(body["status"], status, "{item}");
    assert!(body["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(body["detail"].as_str().is_some_and(|t| !t.is_empty()));
    body
}

/// The 422's `errors` as (field, message) pairs, after checking the problem around them.
fn field_errors(res: &Answer) -> Vec<(String, String)> {
    let body = assert_problem(res, 422);
    body["errors"]
        .as_array()
        .expect("an errors list")
        .iter()
        .map(|e| {
            assert_eq!(
                e.as_object().unwrap().len(),
                2,
                "only field and message: {e}"
            );
            let message = e["message"].as_str().unwrap().to_string();
            assert!(!message.is_empty(), "{e}");
            (e["field"].as_str().unwrap().to_string(), message)
        })
        .collect()
}

fn fields(errors: &[(String, String)]) -> Vec<&str> {
    errors.iter().map(|(f, _)| f.as_str()).collect()
}

/// Bytes that are not UTF-8 (a lone continuation byte, 0xff, a truncated sequence).
const BLOB: &[u8] = &[0x00, 0x9f, 0x92, 0x96, 0xff, b'a', 0xc3];

/// An upstream whose `/blob` answers `BLOB` and whose other paths answer text, both as
/// `application/octet-stream`: the support upstream can only echo what JSON can carry.
async fn spawn_binary_upstream() -> Upstream {
    let octets = "application/octet-stream";
    Upstream::new()
        .on("/blob", Reply::body(octets, BLOB))
        .on("/", Reply::body(octets, &b"plain text, octet-stream"[..]))
        .start()
        .await
}

// ---------------------------------------------------------------------------------------------
// 207: statuses, bodies and headers of the items

#[tokio::test]
async fn mixed_statuses_come_back_in_one_207_in_request_order() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(OPEN, &up.url());
    let batch = json!({"requests": [
        {"id": "created", "method": "POST", "path": "/status/201", "body": {"name": "Ada"}},
        {"id": "conflict", "method": "PUT", "path": "/status/409", "body": {"v": 2}},
        {"id": "empty", "method": "DELETE", "path": "/status/204"},
        {"id": "unprocessable", "method": "GET", "path": "/status/422"},
        {"id": "text", "method": "POST", "path": "/echo",
         "headers": {"Content-Type": "text/plain"}, "body": "{\"looks\": \"like json\"}"},
        {"id": "wrong-method", "method": "POST", "path": "/get-only/x", "body": {}},
        {"id": "ok", "method": "GET", "path": "/anything?q=1"}
    ]});
    let res = post_batch(&sluice, &batch).await;
    let list = responses(
        &res,
        &[
            "created",
            "conflict",
            "empty",
            "unprocessable",
            "text",
            "wrong-method",
            "ok",
        ],
    );
    let statuses: Vec<u64> = list.iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [201, 409, 204, 422, 200, 405, 200]);

    for r in &list {
        let mut keys: Vec<&str> = r.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["body", "headers", "id", "status"], "{r}");
        assert!(r["headers"].is_object(), "{r}");
    }
    // A JSON body stays JSON, whatever the status.
    for i in [0, 1, 3, 6] {
        assert_eq!(list[i]["body"], json!({"ok": true}), "{}", list[i]);
        assert_eq!(list[i]["headers"]["content-type"], "application/json");
    }
    assert_eq!(list[2]["body"], Value::Null, "a 204 has no body");
    // Text is a string, even text that happens to parse as JSON.
    assert_eq!(list[4]["body"], "{\"looks\": \"like json\"}");
    assert_eq!(list[4]["headers"]["content-type"], "text/plain");
    // A refusal by sluice itself is a problem inside the 207, with its own headers.
    assert_item_problem(&list[5], 405);
    assert_eq!(list[5]["headers"]["allow"], "GET, HEAD");

    // Each item that reached the upstream carries the request id the upstream saw.
    for (i, uri) in [(0, "/status/201"), (6, "/anything?q=1")] {
        let seen = up.seen_at(uri);
        let id = list[i]["headers"]["x-request-id"].as_str().unwrap();
        assert!(!id.is_empty());
        assert_eq!(seen.headers["x-request-id"], id);
    }
    let mut got = up.uris();
    got.sort();
    assert_eq!(
        got,
        [
            "/anything?q=1",
            "/echo",
            "/status/201",
            "/status/204",
            "/status/409",
            "/status/422"
        ],
        "everything but the refused item reached the upstream, once"
    );
    assert_eq!(up.seen_at("/status/409").method, Method::PUT);
    assert_eq!(up.seen_at("/status/204").method, Method::DELETE);
}

#[tokio::test]
async fn a_body_that_is_not_utf8_is_base64_with_body_encoding() {
    let up = spawn_binary_upstream().await;
    let sluice = spawn_sluice(OPEN, &up.url());
    let batch = json!({"requests": [
        {"id": "blob", "method": "GET", "path": "/blob"},
        {"id": "text", "method": "GET", "path": "/utf8"}
    ]});
    let res = post_batch(&sluice, &batch).await;
    let list = responses(&res, &["blob", "text"]);
    let blob = &list[0];
    assert_eq!(blob["status"], 200);
    assert_eq!(blob["headers"]["content-type"], "application/octet-stream");
    assert_eq!(blob["body_encoding"], "base64", "{blob}");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(blob["body"].as_str().unwrap())
        .unwrap();
    assert_eq!(decoded, BLOB);
    // A body that is valid UTF-8 is a plain string, whatever its media type.
    let text = &list[1];
    assert_eq!(text["body"], "plain text, octet-stream");
    assert!(text.get("body_encoding").is_none(), "{text}");
}

#[tokio::test]
async fn item_headers_reach_the_upstream_and_come_back_without_hop_by_hop_headers() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(OPEN, &up.url());
    let batch = json!({"requests": [
        {"id": "h", "method": "POST", "path": "/headers", "body": {"a": 1},
         "headers": {
            "X-Custom": "kept",
            "X-Request-Id": "item-7",
            "Connection": "x-private",
            "X-Private": "dropped",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Upgrade": "websocket",
            "Transfer-Encoding": "chunked",
            "Proxy-Authorization": "Basic eDp5"
         }}
    ]});
    let res = post_batch(&sluice, &batch).await;
    let list = responses(&res, &["h"]);
    let seen = up.last();
    assert_eq!(seen.uri, "/headers");
    assert_eq!(seen.headers["x-custom"], "kept");
    assert_eq!(seen.headers["x-request-id"], "item-7");
    for hop in [
        "connection",
        "x-private",
        "keep-alive",
        "te",
        "upgrade",
        "transfer-encoding",
        "proxy-authorization",
    ] {
        assert!(
            !seen.headers.contains_key(hop),
            "{hop} reached the upstream: {:?}",
            seen.headers
        );
    }
    assert_eq!(seen.body, r#"{"a":1}"#, "the body arrived whole");

    let item = &list[0];
    assert_eq!(item["status"], 200);
    let headers = item["headers"].as_object().unwrap();
    assert_eq!(headers["x-upstream-public"], "visible");
    assert_eq!(headers["x-request-id"], "item-7");
    for hop in ["connection", "keep-alive", "x-upstream-private"] {
        assert!(!headers.contains_key(hop), "{hop} came back: {item}");
    }
}

#[tokio::test]
async fn an_item_body_is_sent_as_json_unless_its_headers_name_another_content_type() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(OPEN, &up.url());
    let batch = json!({"requests": [
        {"id": "object", "method": "POST", "path": "/echo?1", "body": {"name": "Ada"}},
        {"id": "text", "method": "POST", "path": "/echo?2",
         "headers": {"Content-Type": "text/plain; charset=utf-8"}, "body": "héllo\nworld"},
        {"id": "vendor", "method": "POST", "path": "/echo?3",
         "headers": {"content-type": "application/vnd.api+json"}, "body": {"a": [1, 2]}},
        {"id": "string", "method": "POST", "path": "/echo?4", "body": "just a string"},
        {"id": "none", "method": "GET", "path": "/echo?5"}
    ]});
    let res = post_batch(&sluice, &batch).await;
    let list = responses(&res, &["object", "text", "vendor", "string", "none"]);
    assert!(list.iter().all(|r| r["status"] == 200), "{list:?}");

    let cases: [(&str, Option<&str>, &[u8]); 5] = [
        ("/echo?1", Some("application/json"), br#"{"name":"Ada"}"#),
        (
            "/echo?2",
            Some("text/plain; charset=utf-8"),
            "héllo\nworld".as_bytes(),
        ),
        (
            "/echo?3",
            Some("application/vnd.api+json"),
            br#"{"a":[1,2]}"#,
        ),
        ("/echo?4", Some("application/json"), br#""just a string""#),
        ("/echo?5", None, b""),
    ];
    for (uri, content_type, body) in cases {
        let seen = up.seen_at(uri);
        assert_eq!(
            seen.headers
                .get("content-type")
                .map(|v| v.to_str().unwrap()),
            content_type,
            "{uri}"
        );
        assert_eq!(seen.body, body, "{uri}");
        assert_eq!(
            seen.headers.get_all("content-type").iter().count(),
            usize::from(content_type.is_some())
        );
    }
    // What the upstream echoed: JSON stays JSON (+json too), text is a string.
    assert_eq!(list[0]["body"], json!({"name": "Ada"}));
    assert_eq!(list[1]["body"], "héllo\nworld");
    assert_eq!(list[2]["body"], json!({"a": [1, 2]}));
    assert_eq!(list[3]["body"], "just a string");
}

/// What serde_json's `arbitrary_precision` reads as the number 12345, not as an object.
const NUMBER_LOOKALIKE: &str = r#"{"$serde_json::private::Number":"12345"}"#;

#[tokio::test]
async fn json_crosses_a_batch_as_written_both_ways() {
    // Digits a float cannot hold, exponents, trailing zeros and key order all stay as sent, and
    // so does an object that serde_json's arbitrary_precision would read as a number.
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(OPEN, &up.url());
    let body =
        r#"{"z":1,"id":123456789012345678901234567890,"a":[1e2,1E5,1e+2,0.10,-0],"huge":1e+400}"#;
    let batch = format!(
        r#"{{"requests": [{{"id": "n", "method": "POST", "path": "/echo?n", "body": {body}}},
            {{"id": "m", "method": "POST", "path": "/echo?m", "body": {NUMBER_LOOKALIKE}}}]}}"#
    );
    let res = send(sluice.addr, post_json("/batch", &batch)).await;
    let text = std::str::from_utf8(&res.body).unwrap();
    assert_eq!(res.status, 207, "{text}");
    assert_eq!(up.seen_at("/echo?n").body, body.as_bytes());
    assert_eq!(up.seen_at("/echo?m").body, NUMBER_LOOKALIKE.as_bytes());
    assert!(text.contains(&format!(r#""body":{body}"#)), "{text}");
    assert!(
        text.contains(&format!(r#""body":{NUMBER_LOOKALIKE}"#)),
        "{text}"
    );
}

#[tokio::test]
async fn an_upstream_answer_shaped_like_a_serde_json_number_comes_back_as_written() {
    const TEXT: &str = r#"{"$serde_json::private::Number":"text"}"#;
    let up = Upstream::new()
        .on("/text", Reply::body("application/json", TEXT))
        .on("/", Reply::body("application/json", NUMBER_LOOKALIKE))
        .start()
        .await;
    let sluice = spawn_sluice(OPEN, &up.url());
    let batch = json!({"requests": [
        {"id": "number", "method": "GET", "path": "/number"},
        {"id": "text", "method": "GET", "path": "/text"}
    ]});
    let res = post_batch(&sluice, &batch).await;
    let text = std::str::from_utf8(&res.body).unwrap();
    assert_eq!(res.status, 207, "{text}");
    for body in [NUMBER_LOOKALIKE, TEXT] {
        assert!(text.contains(&format!(r#""body":{body}}}"#)), "{text}");
    }
}

#[tokio::test]
async fn an_upstream_answer_a_batch_could_not_hold_comes_back_as_text() {
    // A lone surrogate embedded as JSON would make the whole 207 unreadable to many parsers.
    let up = Upstream::new()
        .on("/", Reply::body("application/json", r#""\ud800""#))
        .start()
        .await;
    let sluice = spawn_sluice(OPEN, &up.url());
    let batch = json!({"requests": [{"id": "a", "method": "GET", "path": "/x"}]});
    let res = post_batch(&sluice, &batch).await;
    assert_eq!(res.status, 207);
    assert_eq!(res.json()["responses"][0]["body"], r#""\ud800""#);
}

#[tokio::test]
async fn a_batchs_answers_together_are_bounded_too() {
    // Three answers of 7 MiB each fit the 8 MiB an item may have, not the 16 MiB of a batch.
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(OPEN, &up.url());
    let big = |id: &str| json!({"id": id, "method": "GET", "path": format!("/big/{}", 7 << 20)});
    let batch = json!({"requests": [big("a"), big("b"), big("c")]});
    let res = post_batch(&sluice, &batch).await;
    let list = responses(&res, &["a", "b", "c"]);
    let statuses: Vec<u64> = list.iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        2,
        "{statuses:?}"
    );
    let refused = list.iter().find(|r| r["status"] == 502).unwrap();
    assert_eq!(refused["body"], "response too large for a batch");
}

#[tokio::test]
async fn a_batch_that_json_values_cannot_hold_is_400() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(OPEN, &up.url());
    let item = |body: &[u8]| {
        let mut batch =
            br#"{"requests": [{"id": "a", "method": "POST", "path": "/echo", "body": "#.to_vec();
        batch.extend_from_slice(body);
        batch.extend_from_slice(b"}]}");
        batch
    };
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    for batch in [
        item(b"\"\xff\""),     // not UTF-8
        item(br#""\ud800""#),  // a lone surrogate
        item(deep.as_bytes()), // nested deeper than 128
    ] {
        let req = request(Method::POST, "/batch")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(batch)))
            .unwrap();
        let body = assert_problem(&send(sluice.addr, req).await, 400);
        assert!(body["position"]["column"].is_u64(), "{body}");
    }
    assert!(up.seen().is_empty(), "{:?}", up.uris());
}

// ---------------------------------------------------------------------------------------------
// Dependencies and concurrency

#[tokio::test]
async fn a_failed_dependency_answers_424_directly_and_transitively_without_reaching_upstream() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(OPEN, &up.url());
    let batch = json!({"requests": [
        {"id": "a", "method": "POST", "path": "/status/409", "body": {}},
        {"id": "b", "method": "POST", "path": "/never/b", "body": {}, "depends_on": ["a"]},
        {"id": "c", "method": "GET", "path": "/never/c", "depends_on": ["b"]},
        {"id": "d", "method": "GET", "path": "/fine/d"},
        {"id": "e", "method": "GET", "path": "/never/e", "depends_on": ["d", "a"]},
        {"id": "f", "method": "GET", "path": "/fine/f", "depends_on": ["d"]}
    ]});
    let res = post_batch(&sluice, &batch).await;
    let list = responses(&res, &["a", "b", "c", "d", "e", "f"]);
    let statuses: Vec<u64> = list.iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [409, 424, 424, 200, 424, 200]);

    for (i, dependency, its_status) in [(1, "a", "409"), (2, "b", "424"), (4, "a", "409")] {
        let body = assert_item_problem(&list[i], 424);
        assert_eq!(body["dependency"], dependency, "{}", list[i]);
        let detail = body["detail"].as_str().unwrap();
        assert!(
            detail.contains(&format!("\"{dependency}\"")) && detail.contains(its_status),
            "the detail names the dependency and its status: {detail}"
        );
    }
    let mut got = up.uris();
    got.sort();
    assert_eq!(got, ["/fine/d", "/fine/f", "/status/409"]);
}

#[tokio::test]
async fn independent_items_run_concurrently_up_to_max_concurrency() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&open_with("[batch]\nmax_concurrency = 8"), &up.url());
    let requests: Vec<Value> = (0..5)
        .map(|i| json!({"id": format!("s{i}"), "method": "GET", "path": format!("/slow/300?{i}")}))
        .collect();
    let batch = json!({ "requests": requests });
    let started = Instant::now();
    let res = post_batch(&sluice, &batch).await;
    let took = started.elapsed();
    let list = responses(&res, &["s0", "s1", "s2", "s3", "s4"]);
    assert!(list.iter().all(|r| r["status"] == 200), "{list:?}");
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(
        took < Duration::from_millis(1000),
        "five 300 ms items side by side took {took:?}"
    );
    assert_eq!(up.seen().len(), 5);
}

#[tokio::test]
async fn with_max_concurrency_1_items_run_one_after_another() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&open_with("[batch]\nmax_concurrency = 1"), &up.url());
    let requests: Vec<Value> = (0..5)
        .map(|i| json!({"id": format!("s{i}"), "method": "GET", "path": format!("/slow/300?{i}")}))
        .collect();
    let batch = json!({ "requests": requests });
    let started = Instant::now();
    let watch = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        up.seen().len()
    };
    let (res, in_flight) = tokio::join!(post_batch(&sluice, &batch), watch);
    let took = started.elapsed();
    responses(&res, &["s0", "s1", "s2", "s3", "s4"]);
    assert_eq!(in_flight, 1, "one item at a time reached the upstream");
    assert!(
        took >= Duration::from_millis(1500),
        "five 300 ms items one by one took only {took:?}"
    );
    assert_eq!(up.seen().len(), 5);
}

#[tokio::test]
async fn an_item_starts_only_after_its_dependencies_answered() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&open_with("[batch]\nmax_concurrency = 8"), &up.url());
    let batch = json!({"requests": [
        {"id": "b", "method": "GET", "path": "/after/a", "depends_on": ["a"]},
        {"id": "a", "method": "GET", "path": "/slow/300?a"},
        {"id": "c", "method": "GET", "path": "/slow/300?c"},
        {"id": "d", "method": "GET", "path": "/after/b-and-c", "depends_on": ["b", "c"]}
    ]});
    let started = Instant::now();
    let watch = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let mut early = up.uris();
        early.sort();
        early
    };
    let (res, early) = tokio::join!(post_batch(&sluice, &batch), watch);
    let took = started.elapsed();
    let list = responses(&res, &["b", "a", "c", "d"]);
    assert!(list.iter().all(|r| r["status"] == 200), "{list:?}");
    assert_eq!(
        early,
        ["/slow/300?a", "/slow/300?c"],
        "while a runs, only the independent items have started"
    );
    let order = up.uris();
    assert_eq!(order.len(), 4, "{order:?}");
    assert_eq!(order[2..], ["/after/a", "/after/b-and-c"], "{order:?}");
    assert!(took >= Duration::from_millis(300), "{took:?}");
}

// ---------------------------------------------------------------------------------------------
// Refusals of the whole batch

#[tokio::test]
async fn a_batch_of_101_items_is_413_and_100_is_fine() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(OPEN, &up.url());
    let items = |n: usize| -> Value {
        let list: Vec<Value> = (0..n)
            .map(|i| json!({"id": format!("i{i}"), "method": "GET", "path": format!("/n/{i}")}))
            .collect();
        json!({ "requests": list })
    };
    let res = post_batch(&sluice, &items(101)).await;
    let body = assert_problem(&res, 413);
    assert!(body["detail"].as_str().unwrap().contains("100"), "{body}");
    assert!(up.seen().is_empty(), "nothing of it ran: {:?}", up.uris());

    let res = post_batch(&sluice, &items(100)).await;
    let ids: Vec<String> = (0..100).map(|i| format!("i{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let list = responses(&res, &ids);
    assert!(list.iter().all(|r| r["status"] == 200));
    assert_eq!(up.seen().len(), 100);
}

#[tokio::test]
async fn a_batch_that_is_not_json_is_400_without_json_content_type_415_and_get_405() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(OPEN, &up.url());
    let valid = r#"{"requests": [{"id": "a", "method": "GET", "path": "/x"}]}"#;

    let res = send(sluice.addr, post_json("/batch", r#"{"requests": [ nope"#)).await;
    let body = assert_problem(&res, 400);
    assert!(body["position"]["line"].is_u64(), "{body}");

    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut b = request(Method::POST, "/batch");
        if let Some(ct) = content_type {
            b = b.header("content-type", ct);
        }
        let res = send(sluice.addr, b.body(Full::new(Bytes::from(valid))).unwrap()).await;
        let body = assert_problem(&res, 415);
        assert_eq!(
            body["accepted"],
            json!(["application/json"]),
            "{content_type:?}"
        );
    }

    let res = get(sluice.addr, "/batch").await;
    assert_problem(&res, 405);
    assert_eq!(res.header("allow"), "POST");

    assert!(up.seen().is_empty(), "{:?}", up.uris());

    // application/*+json is JSON too.
    let res = send(
        sluice.addr,
        request(Method::POST, "/batch")
            .header("content-type", "application/vnd.batch+json")
            .body(Full::new(Bytes::from(valid)))
            .unwrap(),
    )
    .await;
    responses(&res, &["a"]);
}

#[tokio::test]
async fn a_custom_batch_path_is_the_endpoint_and_a_disabled_batch_is_proxied() {
    let up = spawn_upstream().await;
    let custom = spawn_sluice(&open_with("[batch]\npath = \"/v1/batch\""), &up.url());
    let batch = json!({"requests": [{"id": "a", "method": "GET", "path": "/x"}]});
    let res = send(custom.addr, post_json("/v1/batch", &batch.to_string())).await;
    responses(&res, &["a"]);
    assert_eq!(up.uris(), ["/x"]);
    let res = send(custom.addr, post_json("/batch", &batch.to_string())).await;
    assert_eq!(res.status, 200, "/batch is an ordinary path now");
    assert_eq!(up.last().uri, "/batch");

    let disabled = spawn_sluice(&open_with("[batch]\nenabled = false"), &up.url());
    let res = post_batch(&disabled, &batch).await;
    assert_eq!(res.status, 200);
    let seen = up.last();
    assert_eq!(seen.uri, "/batch");
    assert_eq!(
        seen.body,
        batch.to_string(),
        "the batch went upstream as it was"
    );
}

// ---------------------------------------------------------------------------------------------
// 422: a batch that is JSON but not a valid batch; nothing of it runs

/// Posts `batch`, expects 422 with exactly the error `fields`, and nothing upstream.
async fn expect_422(sluice: &Sluice, up: &Upstream, batch: Value, fields_: &[&str]) -> Vec<String> {
    let res = post_batch(sluice, &batch).await;
    let errors = field_errors(&res);
    assert_eq!(fields(&errors), fields_, "for {batch}: {errors:?}");
    assert!(up.seen().is_empty(), "for {batch}: {:?}", up.uris());
    errors.into_iter().map(|(_, m)| m).collect()
}

#[tokio::test]
async fn an_item_without_a_valid_method_is_422_at_its_method() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(OPEN, &up.url());
    for method in [
        None,
        Some(json!("NOT A METHOD")),
        Some(json!("")),
        Some(json!(7)),
    ] {
        let mut second = json!({"id": "b", "path": "/x"});
        if let Some(m) = method {
            second["method"] = m;
        }
        let batch = json!({"requests": [
            {"id": "a", "method": "GET", "path": "/fine"},
            second
        ]});
        expect_422(&sluice, &up, batch, &["/requests/1/method"]).await;
    }
}

#[tokio::test]
async fn an_item_without_a_valid_path_is_422_at_its_path() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(OPEN, &up.url());
    for path in [
        None,
        Some(json!("relative/path")),
        Some(json!("http://elsewhere.example/x")),
        Some(json!("/has a space")),
        Some(json!("")),
        Some(json!(["/x"])),
    ] {
        let mut item = json!({"id": "a", "method": "GET"});
        if let Some(p) = path {
            item["path"] = p;
        }
        expect_422(
            &sluice,
            &up,
            json!({ "requests": [item] }),
            &["/requests/0/path"],
        )
        .await;
    }
}

#[tokio::test]
async fn an_item_without_an_id_is_422_at_its_id() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(OPEN, &up.url());
    for id in [None, Some(json!("")), Some(json!(3))] {
        let mut item = json!({"method": "GET", "path": "/x"});
        if let Some(id) = id {
            item["id"] = id;
        }
        let batch = json!({"requests": [{"id": "a", "method": "GET", "path": "/y"}, item]});
        expect_422(&sluice, &up, batch, &["/requests/1/id"]).await;
    }
}

#[tokio::test]
async fn a_duplicate_id_is_422_at_the_later_item_naming_the_first() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(OPEN, &up.url());
    let batch = json!({"requests": [
        {"id": "a", "method": "GET", "path": "/x"},
        {"id": "b", "method": "GET", "path": "/y"},
        {"id": "a", "method": "GET", "path": "/z"}
    ]});
    let messages = expect_422(&sluice, &up, batch, &["/requests/2/id"]).await;
    assert!(messages[0].contains("/requests/0"), "{messages:?}");
}

#[tokio::test]
async fn an_unknown_dependency_is_422_at_its_place_in_depends_on() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(OPEN, &up.url());
    let batch = json!({"requests": [
        {"id": "a", "method": "GET", "path": "/x"},
        {"id": "b", "method": "GET", "path": "/y", "depends_on": ["a", "ghost"]}
    ]});
    let messages = expect_422(&sluice, &up, batch, &["/requests/1/depends_on/1"]).await;
    assert!(messages[0].contains("ghost"), "{messages:?}");

    let not_a_list = json!({"requests": [
        {"id": "a", "method": "GET", "path": "/x", "depends_on": "b"},
        {"id": "b", "method": "GET", "path": "/y"}
    ]});
    expect_422(&sluice, &up, not_a_list, &["/requests/0/depends_on"]).await;
}

#[tokio::test]
async fn a_dependency_cycle_is_422_naming_the_cycle() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(OPEN, &up.url());
    let three = json!({"requests": [
        {"id": "free", "method": "GET", "path": "/w"},
        {"id": "a", "method": "GET", "path": "/x", "depends_on": ["c"]},
        {"id": "b", "method": "GET", "path": "/y", "depends_on": ["a"]},
        {"id": "c", "method": "GET", "path": "/z", "depends_on": ["b"]}
    ]});
    let messages = expect_422(&sluice, &up, three, &["/requests/1/depends_on"]).await;
    assert!(messages[0].contains("a -> c -> b -> a"), "{messages:?}");

    let itself = json!({"requests": [
        {"id": "me", "method": "GET", "path": "/x", "depends_on": ["me"]}
    ]});
    let messages = expect_422(&sluice, &up, itself, &["/requests/0/depends_on"]).await;
    assert!(messages[0].contains("me -> me"), "{messages:?}");
}

#[tokio::test]
async fn an_item_aimed_at_the_batch_endpoint_is_422_at_its_path() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(OPEN, &up.url());
    for path in [
        "/batch",
        "/batch?nested=1",
        "//batch",
        "/./batch",
        "/%62atch",
        "/x/../batch",
    ] {
        let batch = json!({"requests": [
            {"id": "a", "method": "GET", "path": "/x"},
            {"id": "inner", "method": "POST", "path": path, "body": {"requests": []}}
        ]});
        let messages = expect_422(&sluice, &up, batch, &["/requests/1/path"]).await;
        assert!(messages[0].contains("batch"), "{messages:?}");
    }
}

#[tokio::test]
async fn every_error_of_a_batch_is_listed_with_its_json_pointer() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(OPEN, &up.url());
    let batch = json!({"requests": [
        {"id": "a", "method": "GET"},
        {"method": "BAD METHOD", "path": "/y", "colour": "red"},
        {"id": "a", "method": "GET", "path": "/z", "headers": {"X-Ok": "1", "Bad Name": "v"}},
        {"id": "d", "method": "GET", "path": "/w", "depends_on": ["zz"]}
    ]});
    expect_422(
        &sluice,
        &up,
        batch,
        &[
            "/requests/0/path",
            "/requests/1/colour",
            "/requests/1/id",
            "/requests/1/method",
            "/requests/2/headers/Bad Name",
            "/requests/2/id",
            "/requests/3/depends_on/0",
        ],
    )
    .await;
    // The shape of the whole document comes first.
    expect_422(&sluice, &up, json!({"requests": []}), &["/requests"]).await;
    expect_422(&sluice, &up, json!({"items": []}), &["/items", "/requests"]).await;
    expect_422(&sluice, &up, json!([1, 2]), &[""]).await;
}

// ---------------------------------------------------------------------------------------------
// Each item under the same limits, credentials, deadline and checks as a request of its own

/// The default policy with a burst of 3 and nothing else, on a clock that never moves: exactly
/// 3 back to back, however slow the machine.
fn three_at_once(up: &Upstream) -> Sluice {
    Sluice::builder()
        .upstream(up)
        .policy("default", "rate = \"1/s\"\nburst = 3")
        .manual_clock()
        .start()
}

fn gets(n: usize) -> Value {
    let list: Vec<Value> = (0..n)
        .map(|i| json!({"id": format!("g{i}"), "method": "GET", "path": format!("/g/{i}")}))
        .collect();
    json!({ "requests": list })
}

#[tokio::test]
async fn items_over_the_rate_limit_are_429_inside_the_207() {
    let up = spawn_upstream().await;
    let sluice = three_at_once(&up);
    let res = post_batch_with(&sluice, &gets(5), &[("x-api-key", "k1")]).await;
    let list = responses(&res, &["g0", "g1", "g2", "g3", "g4"]);
    let (ok, refused): (Vec<&Value>, Vec<&Value>) = list.iter().partition(|r| r["status"] == 200);
    assert_eq!(ok.len(), 3, "{list:?}");
    assert_eq!(refused.len(), 2, "{list:?}");
    for r in &ok {
        assert!(
            r["headers"]["ratelimit-policy"]
                .as_str()
                .is_some_and(|v| v.starts_with("\"default\";q=3")),
            "{r}"
        );
        assert!(r["headers"]["ratelimit"].as_str().is_some(), "{r}");
    }
    for r in &refused {
        let body = assert_item_problem(r, 429);
        assert_eq!(
            body["type"],
            "https://iana.org/assignments/http-problem-types#quota-exceeded"
        );
        assert_eq!(body["violated-policies"], json!(["default"]));
        let retry: u64 = r["headers"]["retry-after"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry >= 1, "{r}");
        assert_eq!(body["retry_after"], retry);
        assert!(
            r["headers"]["ratelimit"]
                .as_str()
                .is_some_and(|v| v.starts_with("\"default\";r=0;")),
            "{r}"
        );
        assert!(r["headers"]["ratelimit-policy"].is_string(), "{r}");
    }
    assert_eq!(
        up.seen().len(),
        3,
        "refused items never reached the upstream"
    );
}

#[tokio::test]
async fn a_batch_of_n_items_costs_n_requests_of_the_limit() {
    let up = spawn_upstream().await;
    let sluice = three_at_once(&up);
    let res = post_batch_with(&sluice, &gets(3), &[("x-api-key", "k2")]).await;
    let list = responses(&res, &["g0", "g1", "g2"]);
    assert!(
        list.iter().all(|r| r["status"] == 200),
        "the batch itself costs nothing beyond its items: {list:?}"
    );
    let after = send(sluice.addr, keyed("/single", "k2")).await;
    assert_problem(&after, 429);
    let other = send(sluice.addr, keyed("/single", "someone-else")).await;
    assert_eq!(other.status, 200, "another key is unaffected");
    assert_eq!(up.seen().len(), 4);
}

#[tokio::test]
async fn a_batch_without_a_valid_key_is_401_as_a_whole() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&keys_config(""), &up.url());
    let batch = json!({"requests": [{"id": "a", "method": "GET", "path": "/v1/things"}]});
    let res = post_batch(&sluice, &batch).await;
    assert_problem(&res, 401);
    assert!(res.header("www-authenticate").starts_with("Bearer"));
    // A key inside an item does not stand in for the batch's.
    let with_item_key = json!({"requests": [
        {"id": "a", "method": "GET", "path": "/v1/things", "headers": {"X-Api-Key": WRITER_KEY}}
    ]});
    assert_problem(&post_batch(&sluice, &with_item_key).await, 401);
    let wrong = post_batch_with(&sluice, &batch, &[("x-api-key", "sk-not-a-key")]).await;
    assert_problem(&wrong, 401);
    assert!(up.seen().is_empty(), "{:?}", up.uris());
}

#[tokio::test]
async fn items_carry_the_batch_key_which_an_item_header_cannot_override() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&keys_config(""), &up.url());
    let bearer_reader = format!("Bearer {READER_KEY}");
    let bearer_writer = format!("Bearer {WRITER_KEY}");
    let batch = json!({"requests": [
        {"id": "plain", "method": "GET", "path": "/v1/things"},
        {"id": "claims-writer", "method": "GET", "path": "/v1/other",
         "headers": {"Authorization": bearer_writer, "X-Api-Key": WRITER_KEY,
                     "X-Sluice-Client": "writer"}},
        {"id": "write", "method": "POST", "path": "/v1/write/x", "body": {},
         "headers": {"Authorization": bearer_writer}}
    ]});
    let res = post_batch_with(&sluice, &batch, &[("authorization", &bearer_reader)]).await;
    let list = responses(&res, &["plain", "claims-writer", "write"]);
    assert_eq!(list[0]["status"], 200);
    assert_eq!(list[1]["status"], 200);
    let body = assert_item_problem(&list[2], 403);
    assert!(body["detail"].as_str().unwrap().contains("write"), "{body}");

    for uri in ["/v1/things", "/v1/other"] {
        let seen = up.seen_at(uri);
        let clients: Vec<_> = seen.headers.get_all("x-sluice-client").iter().collect();
        assert_eq!(clients, ["reader"], "{uri}");
        let auth: Vec<_> = seen.headers.get_all("authorization").iter().collect();
        assert_eq!(
            auth,
            [bearer_reader.as_str()],
            "{uri}: only the batch's credential"
        );
        assert!(!seen.headers.contains_key("x-api-key"), "{uri}");
    }
    assert_eq!(
        up.seen().len(),
        2,
        "the 403 item never reached the upstream"
    );

    // The writer's batch may write.
    let res = post_batch_with(&sluice, &batch, &[("x-api-key", WRITER_KEY)]).await;
    let list = responses(&res, &["plain", "claims-writer", "write"]);
    assert!(list.iter().all(|r| r["status"] == 200), "{list:?}");
    assert_eq!(
        up.seen_at("/v1/write/x").headers["x-sluice-client"],
        "writer"
    );
}

#[tokio::test]
async fn the_deadline_passing_mid_batch_answers_the_slow_item_408_and_the_rest_in_time() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(
        &open_with("[server]\nrequest_timeout = \"500ms\""),
        &up.url(),
    );
    let batch = json!({"requests": [
        {"id": "fast", "method": "GET", "path": "/status/200"},
        {"id": "slow", "method": "GET", "path": "/slow/2000"}
    ]});
    let started = Instant::now();
    let res = post_batch(&sluice, &batch).await;
    let took = started.elapsed();
    let list = responses(&res, &["fast", "slow"]);
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(1100),
        "{took:?}"
    );
    assert_eq!(list[0]["status"], 200);
    assert_eq!(list[0]["body"], json!({"ok": true}));
    let problem = assert_item_problem(&list[1], 408);
    let mut got = up.uris();
    got.sort();
    assert_eq!(got, ["/slow/2000", "/status/200"]);
    // The slow item's answer names the request id the upstream saw (and its log line has).
    let seen = up.seen_at("/slow/2000");
    assert_eq!(
        problem["request_id"],
        seen.headers["x-request-id"].to_str().unwrap()
    );
    assert_eq!(list[1]["headers"]["x-request-id"], problem["request_id"]);
}

/// `[server] request_timeout` of 500 ms for the batch, and a route that would wait 5 s, so
/// that the batch's own deadline is the one that passes. `extra` goes under `[server]`.
fn batch_deadline_config(extra: &str) -> String {
    format!(
        r#"
[server]
request_timeout = "500ms"
{extra}
[upstreams.api]
targets = ["{{upstream}}"]
[[routes]]
path = "/slow/"
policy = "none"
request_timeout = "5s"
[[routes]]
path = "/"
policy = "none"
"#
    )
}

#[tokio::test]
async fn items_unfinished_at_the_batch_deadline_are_408_even_those_not_yet_started() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&batch_deadline_config(""), &up.url());
    let batch = json!({"requests": [
        {"id": "fast", "method": "GET", "path": "/status/200"},
        {"id": "slow", "method": "GET", "path": "/slow/2000"},
        {"id": "after-slow", "method": "GET", "path": "/never", "depends_on": ["slow"]}
    ]});
    let started = Instant::now();
    let res = post_batch(&sluice, &batch).await;
    let took = started.elapsed();
    let list = responses(&res, &["fast", "slow", "after-slow"]);
    assert!(took < Duration::from_millis(1100), "{took:?}");
    assert_eq!(list[0]["status"], 200);
    for item in &list[1..] {
        let body = assert_item_problem(item, 408);
        assert!(
            body["detail"].as_str().unwrap().contains("deadline"),
            "{item}"
        );
    }
    let mut got = up.uris();
    got.sort();
    assert_eq!(
        got,
        ["/slow/2000", "/status/200"],
        "after-slow never started"
    );
}

/// The batch's deadline is its own: an item it cuts off is 408, as documented, whatever the
/// route's `timeout_status` and however its own timer races the batch's.
#[tokio::test]
async fn items_cut_off_by_the_batch_deadline_answer_408_whatever_timeout_status() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&batch_deadline_config("timeout_status = 504"), &up.url());
    let batch = json!({"requests": [
        {"id": "fast", "method": "GET", "path": "/status/200"},
        {"id": "slow", "method": "GET", "path": "/slow/2000"}
    ]});
    let res = post_batch(&sluice, &batch).await;
    let list = responses(&res, &["fast", "slow"]);
    assert_eq!(list[0]["status"], 200);
    assert_item_problem(&list[1], 408);
}

#[tokio::test]
async fn answers_made_by_the_batch_itself_carry_a_request_id() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(OPEN, &up.url());
    let batch = json!({"requests": [
        {"id": "a", "method": "GET", "path": "/status/500"},
        {"id": "b", "method": "GET", "path": "/never", "depends_on": ["a"]}
    ]});
    let res = post_batch(&sluice, &batch).await;
    let list = responses(&res, &["a", "b"]);
    let body = assert_item_problem(&list[1], 424);
    let id = body["request_id"].as_str().unwrap();
    assert!(!id.is_empty(), "{}", list[1]);
    assert_eq!(list[1]["headers"]["x-request-id"], id);
}

#[tokio::test]
async fn body_size_and_media_type_are_checked_per_item() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(OPEN, &up.url());
    let big = "x".repeat(100);
    let batch = json!({"requests": [
        {"id": "text", "method": "POST", "path": "/json-only/text",
         "headers": {"Content-Type": "text/plain"}, "body": "hello"},
        {"id": "big", "method": "POST", "path": "/json-only/big", "body": {"pad": big}},
        {"id": "fine", "method": "POST", "path": "/json-only/fine", "body": {"ok": 1}},
        {"id": "text-elsewhere", "method": "POST", "path": "/echo",
         "headers": {"Content-Type": "text/plain"}, "body": "hello"}
    ]});
    let res = post_batch(&sluice, &batch).await;
    let list = responses(&res, &["text", "big", "fine", "text-elsewhere"]);
    let body = assert_item_problem(&list[0], 415);
    assert_eq!(body["accepted"], json!(["application/json"]));
    let body = assert_item_problem(&list[1], 413);
    assert_eq!(body["max_body"], 64);
    assert_eq!(list[2]["status"], 200);
    assert_eq!(list[3]["status"], 200);
    assert_eq!(list[3]["body"], "hello");
    let mut got = up.uris();
    got.sort();
    assert_eq!(got, ["/echo", "/json-only/fine"]);
}

#[tokio::test]
async fn an_item_whose_upstream_stalls_mid_body_gets_the_timeout_problem_at_its_routes_deadline() {
    let target = spawn_stalling_upstream().await;
    let toml = "[server]\nrequest_timeout = \"5s\"\n[upstreams.api]\ntargets = [\"{upstream}\"]\n\
                [[routes]]\npath = \"/\"\npolicy = \"none\"\nrequest_timeout = \"300ms\"\n";
    let sluice = spawn_sluice(toml, &target.url());
    let batch = json!({"requests": [{"id": "a", "method": "GET", "path": "/x"}]});
    let started = Instant::now();
    let res = post_batch(&sluice, &batch).await;
    assert_eq!(res.status, 207, "{:?}", res.body);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let item = &res.json()["responses"][0];
    assert_eq!(item["status"], 408, "{item}");
    let detail = item["body"]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("upstream"), "{item}");
}

#[tokio::test]
async fn an_item_past_its_routes_deadline_gets_408_without_the_connections_close() {
    let up = spawn_upstream().await;
    let toml = "[upstreams.api]\ntargets = [\"{upstream}\"]\n\
                [[routes]]\npath = \"/\"\npolicy = \"none\"\nrequest_timeout = \"300ms\"\n";
    let sluice = spawn_sluice(toml, &up.url());
    let batch = json!({"requests": [{"id": "a", "method": "GET", "path": "/slow/2000"}]});
    let res = post_batch(&sluice, &batch).await;
    let item = &res.json()["responses"][0];
    assert_item_problem(item, 408);
    // `Connection: close` is about the client's connection, which the batch keeps.
    assert!(item["headers"].get("connection").is_none(), "{item}");
    assert!(res.headers.get("connection").is_none());
}

#[tokio::test]
async fn items_take_every_forwarded_for_line_of_the_batch_and_none_of_their_own() {
    let up = spawn_upstream().await;
    let toml = format!("[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n{OPEN}");
    let sluice = spawn_sluice(&toml, &up.url());
    // The client forged the first line; the trusted proxy in front added the second.
    let batch = json!({"requests": [{"id": "a", "method": "GET", "path": "/echo",
        "headers": {"x-forwarded-for": "10.0.0.66"}}]});
    let lines = [
        ("x-forwarded-for", "10.9.9.5"),
        ("x-forwarded-for", "203.0.113.7"),
    ];
    let res = post_batch_with(&sluice, &batch, &lines).await;
    responses(&res, &["a"]);
    let seen = up.last();
    assert_eq!(seen.headers["x-real-ip"], "203.0.113.7");
    assert_eq!(
        seen.headers["x-forwarded-for"],
        "10.9.9.5, 203.0.113.7, 127.0.0.1"
    );
}

#[tokio::test]
async fn items_take_the_host_the_batch_named_in_an_absolute_form_target() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(OPEN, &up.url());
    let body = json!({"requests": [{"id": "a", "method": "GET", "path": "/v1/x"}]}).to_string();
    let head = format!(
        "POST http://api.example:99/batch HTTP/1.1\r\nHost: other\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let answer = raw::exchange(sluice.addr, &format!("{head}{body}")).await;
    assert!(answer.starts_with("HTTP/1.1 207 "), "{answer}");
    let seen = up.last();
    assert_eq!(seen.uri, "/v1/x");
    assert_eq!(seen.headers["host"], "api.example:99");
}
