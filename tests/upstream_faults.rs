//! Upstream faults, end to end against the built binary: an upstream that refuses connections,
//! closes or resets them before or in the middle of its answer, never answers, answers garbage,
//! cuts a body short, or closes kept-alive connections at random. For each: what the client
//! gets, the counter it is counted under, the log lines, and sluice's open descriptors back to
//! what they were once it is over.
//!
//! `errors.rs`, `timeouts.rs` and `upstream_retry.rs` check sluice's answer to a single fault
//! in-process; here the process meets each one many times over and is looked at from outside.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::Value;
use support::faulty::{self, Step};
use support::process::Process;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Faulty requests per test: enough that a descriptor leaked per request stands out.
const N: usize = 50;

/// sluice's `request_timeout` where a test waits it out: short, so that this costs half a
/// second.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);

/// sluice's `request_timeout` elsewhere: never reached, even on a busy machine.
const NEVER: Duration = Duration::from_secs(5);

/// How long sluice's descriptors may take to come back once the last connection has ended.
const SETTLE: Duration = Duration::from_secs(3);

fn config(target: &str, request_timeout: Duration) -> String {
    let ms = request_timeout.as_millis();
    // 504 rather than the default 408, to show that a hang is answered with the configured one;
    // no policy, so that hundreds of requests are never limited.
    format!(
        r#"
[server]
request_timeout = "{ms}ms"
timeout_status = 504

[upstreams.api]
targets = ["{target}"]
connect_timeout = "500ms"

[[routes]]
path = "/"
policy = "none"
"#
    )
}

/// The binary in front of `target`, logging JSON lines, its own debug lines included; and its
/// open descriptors once it has started in full.
async fn start(target: &str, request_timeout: Duration) -> (Process, Vec<String>) {
    let p = Process::new()
        .config(&config(target, request_timeout))
        .args(["--log-format", "json", "--log", "info,sluice=debug"])
        .start()
        .await;
    // The proxy's port is bound before its threads start: wait for the line logged once they
    // have, and for the admin listener to answer. Then the probes' connections close, and the
    // signal handler is set up: wait until 200 ms go by without a change.
    within(Duration::from_secs(5), "sluice listening", async {
        while !p
            .json_log()
            .iter()
            .any(|l| l["fields"]["message"] == "sluice listening")
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(get(p.admin, "/healthz").await.status, 200);
    let (mut fds, mut still) = (p.fds(), 0);
    for _ in 0..250 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = p.fds();
        still = if now == fds { still + 1 } else { 0 };
        fds = now;
        if still == 10 {
            return (p, fds);
        }
    }
    panic!("sluice's descriptors never held still: {fds:?}");
}

/// Asserts that sluice has the descriptors it had at `baseline` again (as many, of the same
/// kinds), within [`SETTLE`].
async fn assert_fds_back(p: &Process, baseline: &[String]) {
    let now = p.settle_fds(baseline.len(), SETTLE).await;
    let kinds = |fds: &[String]| -> Vec<String> {
        let mut kinds: Vec<String> = fds
            .iter()
            .map(|f| f.split(':').next().unwrap_or_default().to_string())
            .collect();
        kinds.sort();
        kinds
    };
    assert_eq!(
        kinds(&now),
        kinds(baseline),
        "descriptors now: {now:?}\nat the start: {baseline:?}"
    );
}

/// `sluice_upstream_errors_total` of the upstream `api`, by kind; kinds never counted are left
/// out.
fn upstream_errors(metrics: &str) -> BTreeMap<String, u64> {
    series(
        metrics,
        r#"sluice_upstream_errors_total{upstream="api",kind=""#,
    )
}

/// `sluice_requests_total` of `GET` on the route `/`, by status.
fn statuses(metrics: &str) -> BTreeMap<String, u64> {
    series(
        metrics,
        r#"sluice_requests_total{route="/",method="GET",status=""#,
    )
}

/// The counters whose line starts with `prefix` (up to the value of their last label), by that
/// label's value.
fn series(metrics: &str, prefix: &str) -> BTreeMap<String, u64> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .map(|rest| {
            let (label, value) = rest.split_once("\"} ").unwrap();
            (label.to_string(), value.parse::<f64>().unwrap() as u64)
        })
        .collect()
}

fn counts<const K: usize>(pairs: [(&str, usize); K]) -> BTreeMap<String, u64> {
    pairs
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| (k.to_string(), n as u64))
        .collect()
}

/// The fields of the log lines whose message is `message`.
fn logged(p: &Process, message: &str) -> Vec<Value> {
    p.json_log()
        .into_iter()
        .filter(|l| l["fields"]["message"] == message)
        .map(|l| l["fields"].clone())
        .collect()
}

/// The fields of the access-log lines.
fn access(p: &Process) -> Vec<Value> {
    p.json_log()
        .into_iter()
        .filter(|l| l["target"] == "sluice::access")
        .map(|l| l["fields"].clone())
        .collect()
}

/// Waits (up to 2 s) until `n` lines have been logged with `message`; their fields.
async fn wait_logged(p: &Process, message: &str, n: usize) -> Vec<Value> {
    for _ in 0..100 {
        let lines = logged(p, message);
        if lines.len() >= n {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    logged(p, message)
}

/// Heals the upstream, and checks that sluice's next request through it is answered in full:
/// no fault lingers (a target skipped, a connection kept that should not be).
async fn next_request_works(p: &Process, up: &faulty::Upstream) {
    up.heal();
    let res = within(
        Duration::from_secs(3),
        "the next answer",
        get(p.addr, "/next"),
    )
    .await;
    assert_eq!(res.status, 200, "{:?}", res.body);
    assert_eq!(&res.body[..], br#"{"ok":true}"#);
}

/// Waits (up to 2 s) for the access line of the request `id`: it is written once the answer's
/// body has gone out, which may be just after the client has read it.
async fn access_line(p: &Process, id: &str) -> Value {
    for _ in 0..100 {
        if let Some(line) = access(p).into_iter().find(|l| l["request_id"] == id) {
            return line;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no access line for {id}: {:?}", access(p));
}

const FAILED: &str = "upstream failed";
const BROKEN_OFF: &str =
    "upstream answer broken off: the upstream closed or reset it before its end";
const CUT_OFF: &str = "upstream answer cut off: it had not ended within request_timeout";
const SENT_AGAIN: &str = "reused connection found closed; sending again";

/// A fault sluice answers itself, and how.
struct Answered {
    status: u16,
    /// Words of the problem's `detail`.
    detail: &'static str,
    /// The `kind` it is counted under.
    kind: &'static str,
    /// The `error` its `upstream failed` warning names: the fault's own words.
    warning: Option<&'static str>,
    /// Whether it is answered at `request_timeout`, rather than as soon as the fault shows.
    at_the_deadline: bool,
}

/// N GETs at once, each on a new connection, to an upstream whose every connection follows
/// `script`: each is answered as `fault` says, counted once, logged once; the upstream sees
/// each of its connections closed; sluice's descriptors come back to what they were.
async fn answered_by_sluice(script: Vec<Step>, fault: Answered) {
    let up = faulty::Upstream::start(move |_| script.clone()).await;
    let timeout = if fault.at_the_deadline {
        REQUEST_TIMEOUT
    } else {
        NEVER
    };
    let (p, baseline) = start(&up.url, timeout).await;
    let started = Instant::now();
    let answers = within(
        Duration::from_secs(5),
        "the answers",
        join_all((0..N).map(|i| async move { get(p.addr, &format!("/fault/{i}")).await })),
    )
    .await;
    let mut ids = Vec::new();
    for res in &answers {
        let body = assert_problem(res, fault.status);
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(fault.detail), "{detail}");
        ids.push(res.header("x-request-id").to_string());
    }
    let hits = up.hits();
    if fault.at_the_deadline {
        // On a busy machine, the deadline can pass before the upstream has read the request.
        assert!(hits.len() <= N, "none sent twice: {hits:?}");
    } else {
        assert_eq!(hits.len(), N, "each reached the upstream once: {hits:?}");
    }

    let text = metrics(p.admin).await;
    assert_eq!(upstream_errors(&text), counts([(fault.kind, N)]));
    let status = fault.status.to_string();
    assert_eq!(statuses(&text), counts([(status.as_str(), N)]));
    let mut logged_ids: Vec<String> = access(&p)
        .iter()
        .inspect(|l| {
            assert_eq!(l["status"], fault.status, "{l}");
            assert!(l["upstream_status"].is_null(), "{l}");
        })
        .map(|l| l["request_id"].as_str().unwrap().to_string())
        .collect();
    logged_ids.sort();
    ids.sort();
    assert_eq!(logged_ids, ids, "one access line per answer, under its id");
    if let Some(error) = fault.warning {
        let warnings = logged(&p, FAILED);
        assert_eq!(warnings.len(), N, "{warnings:?}");
        for w in warnings {
            assert_eq!(
                (&w["error"], &w["upstream"]),
                (&error.into(), &"api".into())
            );
        }
    }
    up.wait_all_closed().await;
    assert_fds_back(&p, &baseline).await;
    eprintln!("{N} answered in {:?}", started.elapsed());
    next_request_works(&p, &up).await;
}

#[tokio::test]
async fn a_connection_closed_before_any_answer_is_502_counted_as_reset() {
    let fault = Answered {
        status: 502,
        detail: "closed the connection",
        kind: "reset",
        warning: Some("the upstream closed or reset the connection"),
        at_the_deadline: false,
    };
    answered_by_sluice(vec![Step::Read, Step::Close], fault).await;
}

#[tokio::test]
async fn a_reset_in_the_middle_of_the_status_line_is_502_counted_as_reset() {
    // The pause lets sluice read the half line before the reset, as it mostly would.
    let script = vec![
        Step::Read,
        Step::Write(b"HTTP/1.1 2"),
        Step::Pause(Duration::from_millis(20)),
        Step::Reset,
    ];
    let fault = Answered {
        status: 502,
        detail: "closed the connection",
        kind: "reset",
        warning: Some("the upstream closed or reset the connection"),
        at_the_deadline: false,
    };
    answered_by_sluice(script, fault).await;
}

#[tokio::test]
async fn garbage_for_a_status_line_is_502_bad_response_and_sluice_closes_the_connection() {
    // The upstream holds its connections open: sluice must be the one to close them.
    let script = vec![Step::Read, Step::Write(b"garbage\r\n\r\n"), Step::Hang];
    let fault = Answered {
        status: 502,
        detail: "invalid HTTP response",
        kind: "bad_response",
        warning: Some("the upstream sent an invalid response"),
        at_the_deadline: false,
    };
    answered_by_sluice(script, fault).await;
}

#[tokio::test]
async fn an_upstream_that_never_answers_gets_the_configured_timeout_status() {
    let started = Instant::now();
    let fault = Answered {
        status: 504,
        detail: "did not answer in time",
        kind: "timeout",
        // sluice logs no warning for this fault: the access line (504) is all there is.
        warning: None,
        at_the_deadline: true,
    };
    answered_by_sluice(vec![Step::Read, Step::Hang], fault).await;
    assert!(started.elapsed() >= REQUEST_TIMEOUT);
}

#[tokio::test]
async fn a_refused_connection_is_502_then_503_while_the_target_is_skipped() {
    let target = closed_port();
    let (p, baseline) = start(&target, NEVER).await;
    let mut answers = Vec::new();
    for i in 0..N {
        let res = within(
            Duration::from_secs(2),
            "an answer",
            get(p.addr, &format!("/{i}")),
        )
        .await;
        let body = assert_problem(&res, res.status.as_u16());
        answers.push((
            res.status.as_u16(),
            body["detail"].as_str().unwrap().to_string(),
        ));
    }
    // The first finds the target refusing; the target is then skipped for a second, which the
    // next request, at once, falls into.
    assert_eq!(answers[0].0, 502);
    assert_eq!(answers[1].0, 503);
    let refused = answers.iter().filter(|(s, _)| *s == 502).count();
    for (status, detail) in &answers {
        match status {
            502 => assert!(detail.contains("refused"), "{detail}"),
            503 => assert!(detail.contains("healthy"), "{detail}"),
            other => panic!("{other}: {detail}"),
        }
    }
    let text = metrics(p.admin).await;
    let expected = [("refused", refused), ("no_healthy_target", N - refused)];
    assert_eq!(upstream_errors(&text), counts(expected));
    assert_eq!(
        statuses(&text),
        counts([("502", refused), ("503", N - refused)])
    );
    let unreachable = logged(&p, "upstream target unreachable");
    assert_eq!(unreachable.len(), refused, "one connect tried per 502");
    assert!(
        unreachable
            .iter()
            .all(|l| l["error"].as_str().is_some_and(|e| e.contains("refused")))
    );
    let warnings: Vec<_> = logged(&p, FAILED)
        .iter()
        .map(|w| w["error"].as_str().unwrap().to_string())
        .collect();
    let count = |what: &str| warnings.iter().filter(|e| *e == what).count();
    assert_eq!(count("every target refused the connection"), refused);
    assert_eq!(
        count("every target failed within the last second"),
        N - refused
    );
    assert_fds_back(&p, &baseline).await;
}

/// The head of a 200 announcing 100 bytes of JSON, and the 10 of them that ever come.
const HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n";
const PART: &[u8] = b"{\"items\":[";

/// What a client read of one answer: its head and body bytes, until sluice ended the
/// connection.
struct ClientSaw {
    head: String,
    body: Vec<u8>,
}

/// GETs `path` with the request id `id` on a new raw connection. Once the head and `part`
/// body bytes have come, calls `then` (to let the upstream go on); then reads until sluice
/// ends the connection (a close or a reset; within 3 s).
async fn get_until_closed(
    addr: SocketAddr,
    id: &str,
    part: usize,
    then: impl FnOnce(),
) -> ClientSaw {
    let req = format!("GET /cut HTTP/1.1\r\nHost: x\r\nx-request-id: {id}\r\n\r\n");
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let head_len = within(Duration::from_secs(3), "the head", async {
        loop {
            if let Some(i) = raw::find(&buf, b"\r\n\r\n").filter(|i| buf.len() >= i + 4 + part) {
                return i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    then();
    let rest = within(
        Duration::from_secs(3),
        "the end",
        raw::read_until_closed(&mut s),
    )
    .await;
    buf.extend_from_slice(&rest);
    ClientSaw {
        head: String::from_utf8_lossy(&buf[..head_len]).into_owned(),
        body: buf[head_len..].to_vec(),
    }
}

/// Asserts that the client got the upstream's 200 head, exactly the body bytes the upstream
/// sent (`body`), and then the end of the connection.
fn assert_cut_off(read: &ClientSaw, body: &[u8]) {
    assert!(read.head.starts_with("HTTP/1.1 200 "), "{}", read.head);
    assert!(
        read.head.contains("content-length: 100\r\n"),
        "{}",
        read.head
    );
    assert_eq!(
        String::from_utf8_lossy(&read.body),
        String::from_utf8_lossy(body),
        "the bytes the upstream sent, nothing more"
    );
}

/// Checks the counts and log lines of N answers cut off after their 200 head: counted under
/// `kind`, and each logged as `warning` and in an access line with status 200, the `sent` body
/// bytes the client got and `complete: false`.
async fn assert_cut_offs_counted(p: &Process, kind: &str, warning: &str, sent: usize) {
    let warnings = wait_logged(p, warning, N).await;
    assert_eq!(warnings.len(), N, "{warnings:?}");
    assert!(
        warnings.iter().all(|w| w["upstream"] == "api"),
        "{warnings:?}"
    );
    let text = metrics(p.admin).await;
    assert_eq!(upstream_errors(&text), counts([(kind, N)]));
    assert_eq!(statuses(&text), counts([("200", N)]));
    let mut lines = access(p);
    for _ in 0..100 {
        if lines.len() >= N {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        lines = access(p);
    }
    assert_eq!(lines.len(), N);
    for l in &lines {
        assert_eq!(
            (&l["status"], &l["upstream_status"]),
            (&200.into(), &200.into())
        );
        assert_eq!(
            (&l["bytes_out"], &l["complete"]),
            (&sent.into(), &false.into()),
            "{l}"
        );
    }
}

#[tokio::test]
async fn a_reset_mid_body_cuts_the_client_off_after_the_bytes_that_came() {
    // The upstream resets only once the client has its part: a reset can take unread bytes
    // with it, and then sluice would rightly answer 502 instead.
    let up = faulty::Upstream::start(|_| {
        vec![
            Step::Read,
            Step::Write(HEAD),
            Step::Write(PART),
            Step::AwaitGo,
            Step::Reset,
        ]
    })
    .await;
    let (p, baseline) = start(&up.url, NEVER).await;
    for i in 0..N {
        let read = get_until_closed(p.addr, &format!("reset-{i}"), PART.len(), || up.go()).await;
        assert_cut_off(&read, PART);
    }
    assert_cut_offs_counted(&p, "reset", BROKEN_OFF, PART.len()).await;
    up.wait_all_closed().await;
    assert_fds_back(&p, &baseline).await;
    next_request_works(&p, &up).await;
}

#[tokio::test]
async fn a_short_body_then_a_close_cuts_the_client_off_after_the_bytes_that_came() {
    let up = faulty::Upstream::start(|_| {
        vec![
            Step::Read,
            Step::Write(HEAD),
            Step::Write(PART),
            Step::Close,
        ]
    })
    .await;
    let (p, baseline) = start(&up.url, NEVER).await;
    for i in 0..N {
        let read = get_until_closed(p.addr, &format!("short-{i}"), 0, || ()).await;
        assert_cut_off(&read, PART);
    }
    assert_cut_offs_counted(&p, "reset", BROKEN_OFF, PART.len()).await;
    up.wait_all_closed().await;
    assert_fds_back(&p, &baseline).await;
    next_request_works(&p, &up).await;
}

#[tokio::test]
async fn short_body_logs_the_bytes_actually_sent() {
    // Connection 1 announces 100 bytes and sends 10; connection 2 sends its whole answer.
    let up = faulty::Upstream::start(|n| match n {
        1 => vec![
            Step::Read,
            Step::Write(HEAD),
            Step::Write(PART),
            Step::Close,
        ],
        _ => vec![Step::Read, Step::Write(faulty::OK)],
    })
    .await;
    let (p, _) = start(&up.url, NEVER).await;
    let read = get_until_closed(p.addr, "short-body", 0, || ()).await;
    assert_cut_off(&read, PART);
    let line = access_line(&p, "short-body").await;
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(
        line["bytes_out"],
        PART.len(),
        "the body bytes the client got, not the 100 announced: {line}"
    );
    assert_eq!(line["complete"], false, "{line}");
    assert_eq!(wait_logged(&p, BROKEN_OFF, 1).await.len(), 1);
    let text = metrics(p.admin).await;
    assert_eq!(upstream_errors(&text), counts([("reset", 1)]));

    let whole = get_with(p.addr, "/whole", &[("x-request-id", "whole-body")]).await;
    assert_eq!(&whole.body[..], br#"{"ok":true}"#);
    let line = access_line(&p, "whole-body").await;
    assert_eq!(line["bytes_out"], 11, "{line}");
    assert!(
        line["complete"].is_null(),
        "said only of an answer cut short: {line}"
    );
}

/// A 200 announcing 20 bytes, and each byte of its body 50 ms after the one before: a second
/// in all.
fn dripping(steps: &mut Vec<Step>) {
    steps.push(Step::Write(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 20\r\n\r\n",
    ));
    for _ in 0..20 {
        steps.push(Step::Pause(Duration::from_millis(50)));
        steps.push(Step::Write(b"x"));
    }
}

#[tokio::test]
async fn a_slow_drip_passes_whole_within_the_deadline() {
    let up = faulty::Upstream::start(|_| {
        let mut steps = vec![Step::Read];
        dripping(&mut steps);
        steps.push(Step::Hang);
        steps
    })
    .await;
    let (p, baseline) = start(&up.url, NEVER).await;
    let answers = join_all((0..10).map(|i| {
        let id = format!("drip-{i}");
        async move { get_with(p.addr, "/drip", &[("x-request-id", &id)]).await }
    }));
    for res in within(Duration::from_secs(4), "the answers", answers).await {
        assert_eq!(res.status, 200);
        assert_eq!(&res.body[..], &[b'x'; 20][..]);
    }
    for i in 0..10 {
        let line = access_line(&p, &format!("drip-{i}")).await;
        assert_eq!(line["bytes_out"], 20, "{line}");
        assert!(line["complete"].is_null(), "{line}");
        assert!(
            line["duration_ms"].as_f64().unwrap() >= 1000.0,
            "to the last byte: {line}"
        );
    }
    let text = metrics(p.admin).await;
    assert_eq!(upstream_errors(&text), counts([]));
    assert_eq!(statuses(&text), counts([("200", 10)]));
    // The connections go back to the pool; the upstream holds them open. Closing them all is
    // sluice's part once it is stopped, so only the client side is checked here: 10 pooled.
    let now = p.settle_fds(baseline.len() + 10, SETTLE).await;
    assert_eq!(now.len(), baseline.len() + 10, "{now:?}");
}

#[tokio::test]
async fn a_drip_past_the_deadline_is_cut_off_there_though_bytes_keep_coming() {
    let up = faulty::Upstream::start(|_| {
        let mut steps = vec![Step::Read];
        dripping(&mut steps);
        steps.push(Step::Hang);
        steps
    })
    .await;
    let (p, baseline) = start(&up.url, REQUEST_TIMEOUT).await;
    let started = Instant::now();
    let reads =
        join_all((0..10).map(|i| async move {
            get_until_closed(p.addr, &format!("drip-{i}"), 0, || ()).await
        }));
    let reads = reads.await;
    let waited = started.elapsed();
    assert!(
        waited >= REQUEST_TIMEOUT && waited < Duration::from_millis(950),
        "cut off after {waited:?}, not at the drip's end"
    );
    for (i, read) in reads.iter().enumerate() {
        assert!(read.head.starts_with("HTTP/1.1 200 "), "{}", read.head);
        assert!(read.body.len() < 20 && read.body.iter().all(|b| *b == b'x'));
        let line = access_line(&p, &format!("drip-{i}")).await;
        assert_eq!(
            line["bytes_out"],
            read.body.len(),
            "what the client got: {line}"
        );
        assert_eq!(line["complete"], false, "{line}");
    }
    assert_eq!(wait_logged(&p, CUT_OFF, 10).await.len(), 10);
    let text = metrics(p.admin).await;
    assert_eq!(upstream_errors(&text), counts([("timeout", 10)]));
    up.wait_all_closed().await;
    assert_fds_back(&p, &baseline).await;
    next_request_works(&p, &up).await;
}

#[tokio::test]
async fn a_client_gone_mid_body_is_logged_with_what_it_was_sent_and_leaks_nothing() {
    let up = faulty::Upstream::start(|_| {
        let mut steps = vec![Step::Read];
        dripping(&mut steps);
        steps.push(Step::Hang);
        steps
    })
    .await;
    let (p, baseline) = start(&up.url, NEVER).await;
    for i in 0..10 {
        let req = format!("GET /drip HTTP/1.1\r\nHost: x\r\nx-request-id: gone-{i}\r\n\r\n");
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        // The head and the first body byte, then the client goes.
        let mut buf = Vec::new();
        within(Duration::from_secs(3), "a body byte", async {
            while raw::find(&buf, b"\r\n\r\n").is_none_or(|h| buf.len() <= h + 4) {
                let mut chunk = [0u8; 1024];
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed early");
                buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await;
        drop(s);
        let line = access_line(&p, &format!("gone-{i}")).await;
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["complete"], false, "{line}");
        let sent = line["bytes_out"].as_u64().unwrap();
        assert!((1..20).contains(&sent), "{line}");
    }
    // The client's going is not the upstream's fault; its connections, mid-answer, are closed.
    let text = metrics(p.admin).await;
    assert_eq!(upstream_errors(&text), counts([]));
    up.wait_all_closed().await;
    assert_fds_back(&p, &baseline).await;
    next_request_works(&p, &up).await;
}

#[tokio::test]
async fn an_answer_head_then_silence_is_cut_off_at_request_timeout() {
    let up = faulty::Upstream::start(|_| vec![Step::Read, Step::Write(HEAD), Step::Hang]).await;
    let (p, baseline) = start(&up.url, REQUEST_TIMEOUT).await;
    let started = Instant::now();
    let reads =
        join_all((0..N).map(|i| async move {
            get_until_closed(p.addr, &format!("hang-{i}"), 0, || ()).await
        }));
    for read in reads.await {
        assert_cut_off(&read, b"");
    }
    let waited = started.elapsed();
    assert!(
        waited >= REQUEST_TIMEOUT && waited < REQUEST_TIMEOUT * 6,
        "cut off after {waited:?}"
    );
    assert_cut_offs_counted(&p, "timeout", CUT_OFF, 0).await;
    // sluice closed its side of every upstream connection at the deadline.
    up.wait_all_closed().await;
    assert_fds_back(&p, &baseline).await;
    next_request_works(&p, &up).await;
}

/// A small generator of the same choices for the same seed (xorshift64).
struct Dice(u64);

impl Dice {
    fn new(seed: usize) -> Dice {
        Dice((seed as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// A number from 0 to `n - 1`.
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    fn ms(&mut self, most: u64) -> Duration {
        Duration::from_millis(self.below(most + 1))
    }
}

/// Connection `n` of an upstream that keeps connections alive, but not for long and not for
/// sure: it answers the first request, then up to 7 more if each comes within a random idle
/// time of at most 20 ms (else it closes the connection); then it closes the connection at
/// once, or reads one more request and closes without answering, as when its keep-alive timer
/// fires as a request arrives. Never `Connection: close`.
fn closing_at_random(n: usize) -> Vec<Step> {
    let mut dice = Dice::new(n);
    let mut steps = vec![Step::Read, Step::Write(faulty::OK)];
    for _ in 0..dice.below(8) {
        steps.push(Step::ReadWithin(dice.ms(20)));
        steps.push(Step::Write(faulty::OK));
    }
    if dice.below(2) == 0 {
        steps.push(Step::ReadWithin(dice.ms(20)));
    }
    steps
}

/// Concurrent clients, after those sent one at a time.
const CLIENTS: usize = 8;
const ONE_AT_A_TIME: usize = 100;
const EACH: usize = 25;

/// Client `c`'s GETs, `count` of them on one kept-alive connection, at random intervals of at
/// most 25 ms; each answer with its path.
async fn gets_on_one_connection(addr: SocketAddr, c: usize, count: usize) -> Vec<(String, Answer)> {
    let mut dice = Dice::new(1000 + c);
    let mut conn = connect_h1(addr).await;
    let mut answers = Vec::new();
    for i in 0..count {
        let path = format!("/ka/{c}/{i}");
        let req = request(http::Method::GET, &path)
            .body(http_body_util::Full::<bytes::Bytes>::default())
            .unwrap();
        let res = within(Duration::from_secs(3), "an answer", async {
            let res = conn.send_request(req).await.unwrap();
            let (parts, body) = res.into_parts();
            let body = http_body_util::BodyExt::collect(body).await.unwrap();
            Answer {
                status: parts.status,
                headers: parts.headers,
                body: body.to_bytes(),
            }
        })
        .await;
        answers.push((path, res));
        tokio::time::sleep(dice.ms(25)).await;
    }
    answers
}

#[tokio::test]
async fn random_keep_alive_closes_never_hang_a_get_nor_answer_it_twice_nor_leak() {
    let up = faulty::Upstream::start(closing_at_random).await;
    let (p, baseline) = start(&up.url, NEVER).await;
    let mut answers = gets_on_one_connection(p.addr, 0, ONE_AT_A_TIME).await;
    let together = join_all((1..=CLIENTS).map(|c| gets_on_one_connection(p.addr, c, EACH))).await;
    answers.extend(together.into_iter().flatten());
    assert_eq!(answers.len(), ONE_AT_A_TIME + CLIENTS * EACH);

    let hits = up.hits();
    let answered_upstream = |path: &str| {
        let request = format!("GET {path}");
        hits.iter()
            .filter(|h| h.request == request && h.answered)
            .count()
    };
    let mut failed = 0;
    for (path, res) in &answers {
        match res.status.as_u16() {
            200 => {
                assert_eq!(&res.body[..], br#"{"ok":true}"#, "{path}");
                assert_eq!(answered_upstream(path), 1, "{path}: {hits:?}");
            }
            // Lost on a connection the upstream closed, with no copy kept to send again.
            502 => {
                let body = assert_problem(res, 502);
                assert!(
                    body["detail"].as_str().unwrap().contains("closed"),
                    "{body}"
                );
                assert_eq!(answered_upstream(path), 0, "{path}");
                failed += 1;
            }
            other => panic!("{path}: {other} {:?}", res.body),
        }
    }
    let ok = answers.len() - failed;
    assert_eq!(hits.iter().filter(|h| h.answered).count(), ok);
    // Once the target has closed a connection by itself, a lost GET is always sent again for
    // the next 10 s (the whole test): only requests on their way before then can fail.
    assert!(failed <= CLIENTS, "{failed} failed");

    // The closes happened, and sluice sent lost requests again.
    let lost = hits.iter().filter(|h| !h.answered).count();
    let sent_again = logged(&p, SENT_AGAIN).len();
    assert!(
        lost >= 1 && sent_again >= 1,
        "lost {lost}, sent again {sent_again}"
    );
    assert!(up.accepted() > CLIENTS, "{} connections", up.accepted());

    let text = metrics(p.admin).await;
    assert_eq!(statuses(&text), counts([("200", ok), ("502", failed)]));
    assert_eq!(upstream_errors(&text), counts([("reset", failed)]));
    assert_eq!(logged(&p, FAILED).len(), failed);
    eprintln!(
        "{} connections, {lost} requests lost, {sent_again} sent again, {failed} failed",
        up.accepted()
    );

    // The upstream closes every connection within its idle time; then sluice holds none.
    up.wait_all_closed().await;
    assert_fds_back(&p, &baseline).await;
}
