//! `Idempotency-Key` end to end, on the built binary: a retried POST reaches the upstream
//! once and gets the first answer again, byte for byte; a duplicate in flight gets 409, the
//! key with another body 422, a missing or malformed key 400; an answer the client may retry
//! (5xx) is not kept; replicas sharing one redis-server replay each other's answers.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use support::process::Process;
use support::redis::Redis;
use support::*;

/// An upstream that creates a candidate per request it receives: `201`, a new id each time.
async fn creating(delay: Duration) -> Upstream {
    let made = Arc::new(AtomicUsize::new(0));
    Upstream::new()
        .on_fn("/v1/candidates", move |_| {
            let id = made.fetch_add(1, Ordering::SeqCst) + 1;
            let body = format!("{{\"id\":{id},\"name\":\"Ada\",\"note\":\"\\u00e9\\n\"}}");
            Reply::body("application/json", body)
                .status_code(201)
                .header("location", &format!("/v1/candidates/{id}"))
                .after(delay)
        })
        .start()
        .await
}

/// A config with the upstream and `[routes.idempotency]` holding `idem` on `/`.
fn config(upstream: &str, idem: &str, extra: &str) -> String {
    format!(
        "[upstreams.api]\ntargets = [\"{upstream}\"]\n{extra}\n[[routes]]\npath = \"/\"\n\
         [routes.idempotency]\nenabled = true\n{idem}\n"
    )
}

fn post(path: &str, key: Option<&str>, body: &str) -> Request<Full<Bytes>> {
    let mut b = request(Method::POST, path)
        .header("content-type", "application/json")
        .header("x-api-key", "alice");
    if let Some(key) = key {
        b = b.header("idempotency-key", key);
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

const ADA: &str = r#"{"name": "Ada"}"#;

#[tokio::test]
async fn a_retry_after_completion_replays_the_answer_byte_for_byte_and_the_upstream_sees_one() {
    let up = creating(Duration::ZERO).await;
    let sluice = Process::start(&config(&up.url(), "", ""), &[]).await;
    let first = send(sluice.addr, post("/v1/candidates", Some("\"k-1\""), ADA)).await;
    assert_eq!(first.status, 201);
    assert_eq!(first.header("idempotent-replayed"), "");
    let again = send(sluice.addr, post("/v1/candidates", Some("\"k-1\""), ADA)).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.body, first.body);
    assert_eq!(again.header("location"), "/v1/candidates/1");
    assert_eq!(again.header("content-type"), "application/json");
    assert_eq!(again.header("idempotent-replayed"), "true");
    // A replay is an answer of its own: its request id, and the rate-limit headers as now.
    assert_ne!(again.header("x-request-id"), first.header("x-request-id"));
    assert!(
        again.header("ratelimit").contains("r=98"),
        "{:?}",
        again.headers
    );
    assert_eq!(up.seen().len(), 1);
    // Another key is another request.
    let other = send(sluice.addr, post("/v1/candidates", Some("\"k-2\""), ADA)).await;
    assert_eq!(other.header("location"), "/v1/candidates/2");
    assert_eq!(up.seen().len(), 2);
}

#[tokio::test]
async fn twenty_duplicates_racing_reach_the_upstream_once_and_the_others_get_409_or_the_replay() {
    let up = creating(Duration::from_millis(300)).await;
    let sluice = Process::start(&config(&up.url(), "", ""), &[]).await;
    let racing: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn(send(
                sluice.addr,
                post("/v1/candidates", Some("\"race\""), ADA),
            ))
        })
        .collect();
    let mut created = 0;
    for answer in racing {
        let answer = within(Duration::from_secs(10), "an answer", answer)
            .await
            .unwrap();
        match answer.status.as_u16() {
            201 if answer.header("idempotent-replayed") == "true" => {}
            201 => created += 1,
            409 => {
                let body = assert_problem(&answer, 409);
                assert_eq!(body["type"], "urn:sluice:problem:idempotency-key-in-flight");
                assert_eq!(answer.header("retry-after"), "1");
            }
            other => panic!("unexpected {other}: {:?}", answer.body),
        }
    }
    assert_eq!(created, 1);
    assert_eq!(up.seen().len(), 1);
    let after = send(sluice.addr, post("/v1/candidates", Some("\"race\""), ADA)).await;
    assert_eq!(
        (after.status.as_u16(), after.header("idempotent-replayed")),
        (201, "true")
    );
    assert_eq!(up.seen().len(), 1);
    let text = metrics(sluice.admin).await;
    let count = |o: &str| {
        metric_value(
            &text,
            &format!("sluice_idempotency_requests_total{{outcome=\"{o}\"}}"),
        )
    };
    assert_eq!((count("stored"), count("not_stored")), (1.0, 0.0));
    assert_eq!(count("in_flight") + count("replayed"), 20.0);
    assert_eq!(metric_value(&text, "sluice_idempotency_keys"), 1.0);
}

#[tokio::test]
async fn the_same_key_with_another_body_or_path_gets_422_naming_the_mismatch() {
    let up = creating(Duration::ZERO).await;
    let sluice = Process::start(&config(&up.url(), "", ""), &[]).await;
    send(sluice.addr, post("/v1/candidates", Some("\"k\""), ADA)).await;
    let other = send(
        sluice.addr,
        post("/v1/candidates", Some("\"k\""), r#"{"name": "Bob"}"#),
    )
    .await;
    let body = assert_problem(&other, 422);
    assert_eq!(body["type"], "urn:sluice:problem:idempotency-key-reused");
    assert_eq!(body["mismatch"], serde_json::json!(["body"]));
    let elsewhere = send(sluice.addr, post("/v1/candidates?x=1", Some("\"k\""), ADA)).await;
    assert_eq!(
        assert_problem(&elsewhere, 422)["mismatch"],
        serde_json::json!(["path"])
    );
    assert_eq!(up.seen().len(), 1);
    // The key belongs to its client: another client's same key is its own.
    let bob = request(Method::POST, "/v1/candidates")
        .header("content-type", "application/json")
        .header("x-api-key", "bob")
        .header("idempotency-key", "\"k\"")
        .body(Full::new(Bytes::from(r#"{"name": "Bob"}"#)))
        .unwrap();
    assert_eq!(send(sluice.addr, bob).await.status, 201);
    assert_eq!(up.seen().len(), 2);
}

#[tokio::test]
async fn a_missing_key_where_required_and_a_malformed_key_get_400_without_reaching_upstream() {
    let up = creating(Duration::ZERO).await;
    let sluice = Process::start(&config(&up.url(), "required = true", ""), &[]).await;
    let missing = send(sluice.addr, post("/v1/candidates", None, ADA)).await;
    let body = assert_problem(&missing, 400);
    assert_eq!(body["type"], "urn:sluice:problem:idempotency-key-missing");
    let long = format!("\"{}\"", "k".repeat(256));
    for bad in ["unquoted", "\"\"", long.as_str(), "\"a\";p=1", "\"tab\\t\""] {
        let answer = send(sluice.addr, post("/v1/candidates", Some(bad), ADA)).await;
        let body = assert_problem(&answer, 400);
        assert_eq!(
            body["type"], "urn:sluice:problem:idempotency-key-malformed",
            "{bad}"
        );
    }
    // Methods the key does not apply to pass as before.
    assert_eq!(get(sluice.addr, "/v1/candidates").await.status, 201);
    assert_eq!(up.seen().len(), 1);
    assert_eq!(up.seen()[0].method, Method::GET);
}

#[tokio::test]
async fn an_upstream_500_is_not_kept_and_the_retry_reaches_the_upstream() {
    let calls = Arc::new(AtomicUsize::new(0));
    let up = Upstream::new()
        .on_fn("/v1/reports", move |_| {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 => Reply::status(500),
                1 => Reply::status(429),
                _ => Reply::status(202),
            }
        })
        .start()
        .await;
    let sluice = Process::start(&config(&up.url(), "", ""), &[]).await;
    let statuses: Vec<u16> = {
        let mut all = Vec::new();
        for _ in 0..4 {
            let answer = send(sluice.addr, post("/v1/reports", Some("\"r\""), ADA)).await;
            all.push((
                answer.status.as_u16(),
                answer.header("idempotent-replayed") == "true",
            ));
        }
        all.into_iter()
            .map(|(s, replayed)| s + u16::from(replayed) * 1000)
            .collect()
    };
    // 500 and 429 went through each time; the 202 was kept and replayed.
    assert_eq!(statuses, [500, 429, 202, 1202]);
    assert_eq!(up.seen().len(), 3);
}

#[tokio::test]
async fn an_answer_over_max_stored_body_passes_through_whole_and_is_not_kept() {
    let up = Upstream::new()
        .on("/v1/files", Reply::bytes(5000))
        .start()
        .await;
    let sluice = Process::start(&config(&up.url(), "max_stored_body = \"1KiB\"", ""), &[]).await;
    for _ in 0..2 {
        let answer = send(sluice.addr, post("/v1/files", Some("\"f\""), ADA)).await;
        assert_eq!((answer.status.as_u16(), answer.body.len()), (200, 5000));
        assert_eq!(answer.header("idempotent-replayed"), "");
    }
    assert_eq!(up.seen().len(), 2);
}

#[tokio::test]
async fn a_replay_counts_against_the_rate_limit() {
    let up = creating(Duration::ZERO).await;
    let policy = "[policies.default]\nrate = \"1/m\"\nburst = 2\n";
    let sluice = Process::start(&config(&up.url(), "", policy), &[]).await;
    assert_eq!(
        send(sluice.addr, post("/v1/candidates", Some("\"k\""), ADA))
            .await
            .status,
        201
    );
    let replay = send(sluice.addr, post("/v1/candidates", Some("\"k\""), ADA)).await;
    assert_eq!(replay.header("idempotent-replayed"), "true");
    let refused = send(sluice.addr, post("/v1/candidates", Some("\"k\""), ADA)).await;
    assert_problem(&refused, 429);
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]
async fn a_retry_refused_with_429_leaves_the_kept_answer_for_the_next_retry() {
    let up = creating(Duration::ZERO).await;
    let policy = "[policies.default]\nrate = \"10/s\"\nburst = 1\n";
    let sluice = Process::start(&config(&up.url(), "", policy), &[]).await;
    let first = send(sluice.addr, post("/v1/candidates", Some("\"k\""), ADA)).await;
    assert_eq!(first.status, 201);
    assert_problem(
        &send(sluice.addr, post("/v1/candidates", Some("\"k\""), ADA)).await,
        429,
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    let replay = send(sluice.addr, post("/v1/candidates", Some("\"k\""), ADA)).await;
    assert_eq!(replay.header("idempotent-replayed"), "true");
    assert_eq!(replay.body, first.body);
    assert_eq!(up.seen().len(), 1);
}

#[test]
fn sluice_check_shows_where_keys_apply() {
    let toml = config("http://127.0.0.1:1", "required = true\nttl = \"1h\"", "");
    let file = temp_file("idem.toml", &toml);
    let out = process::command()
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "route / -> api, policy default, Idempotency-Key on POST PATCH for 3600s, required"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn batch_items_with_a_key_are_replayed_too() {
    let up = creating(Duration::ZERO).await;
    let sluice = Process::start(&config(&up.url(), "", ""), &[]).await;
    let batch = r#"{"requests": [{"id": "c", "method": "POST", "path": "/v1/candidates",
        "headers": {"Idempotency-Key": "\"b-1\""}, "body": {"name": "Ada"}}]}"#;
    let first = send(sluice.addr, post("/batch", None, batch)).await;
    let again = send(sluice.addr, post("/batch", None, batch)).await;
    assert_eq!((first.status.as_u16(), again.status.as_u16()), (207, 207));
    let (first, again) = (first.json(), again.json());
    assert_eq!(first["responses"][0]["status"], 201);
    assert_eq!(again["responses"][0]["body"], first["responses"][0]["body"]);
    assert_eq!(
        again["responses"][0]["headers"]["idempotent-replayed"],
        "true"
    );
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]
async fn three_replicas_on_one_redis_replay_each_others_answers() {
    let (redis, up) = (Redis::start(), creating(Duration::from_millis(300)).await);
    let store = format!(
        "[store]\nkind = \"redis\"\nurl = \"{}\"\ntimeout = \"1s\"\nkey_secret = \"shared\"\n",
        redis.url()
    );
    let toml = config(&up.url(), "", &store);
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let p = Process::start(&toml, &[]).await;
        wait_for_store(p.admin).await;
        replicas.push(p);
    }
    // While the first is in flight on one replica, the others see its lock.
    let first = tokio::spawn(send(
        replicas[0].addr,
        post("/v1/candidates", Some("\"r\""), ADA),
    ));
    up.wait_for(1).await;
    let during = send(replicas[1].addr, post("/v1/candidates", Some("\"r\""), ADA)).await;
    assert_problem(&during, 409);
    let first = first.await.unwrap();
    assert_eq!(first.status, 201);
    for replica in &replicas[1..] {
        let again = send(replica.addr, post("/v1/candidates", Some("\"r\""), ADA)).await;
        assert_eq!(
            (again.status.as_u16(), again.header("idempotent-replayed")),
            (201, "true")
        );
        assert_eq!(again.body, first.body);
    }
    let other = send(
        replicas[2].addr,
        post("/v1/candidates", Some("\"r\""), "{}"),
    )
    .await;
    assert_problem(&other, 422);
    assert_eq!(up.seen().len(), 1);
    // Redis holds the key as an HMAC, never as sent.
    let keys = redis.keys();
    assert!(
        keys.iter().any(|k| k.starts_with("sluice:idem:{")),
        "{keys:?}"
    );
    assert!(
        !keys
            .iter()
            .any(|k| k.contains("alice") || k.contains("\"r\""))
    );
}

#[tokio::test]
async fn the_lock_of_a_replica_that_died_mid_request_frees_itself() {
    let (redis, up) = (Redis::start(), creating(Duration::from_secs(5)).await);
    let store = format!(
        "[store]\nkind = \"redis\"\nurl = \"{}\"\ntimeout = \"1s\"\nkey_secret = \"shared\"\n",
        redis.url()
    );
    // A 1 s deadline: the lock lasts 2 s (the deadline and a second).
    let toml = config(&up.url(), "", &store)
        .replace("path = \"/\"\n", "path = \"/\"\nrequest_timeout = \"1s\"\n");
    let (doomed, survivor) = (
        Process::start(&toml, &[]).await,
        Process::start(&toml, &[]).await,
    );
    wait_for_store(doomed.admin).await;
    wait_for_store(survivor.admin).await;
    let addr = doomed.addr;
    let lost =
        tokio::spawn(async move { send(addr, post("/v1/candidates", Some("\"d\""), ADA)).await });
    up.wait_for(1).await;
    let killed_at = std::time::Instant::now();
    drop(doomed); // SIGKILL: nothing is released
    lost.abort();
    let held = send(survivor.addr, post("/v1/candidates", Some("\"d\""), ADA)).await;
    assert_problem(&held, 409);
    tokio::time::sleep(Duration::from_millis(2100).saturating_sub(killed_at.elapsed())).await;
    let retry = tokio::spawn(send(
        survivor.addr,
        post("/v1/candidates", Some("\"d\""), ADA),
    ));
    up.wait_for(2).await;
    drop(retry);
    assert_eq!(up.seen().len(), 2);
}

/// Waits (up to 10 s) until the replica's `/readyz` says its store is up.
async fn wait_for_store(admin: std::net::SocketAddr) {
    for _ in 0..500 {
        if get(admin, "/readyz")
            .await
            .body
            .ends_with(br#""store":"up"}"#)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the store did not come up");
}

#[test]
fn bad_idempotency_settings_name_the_key_and_line() {
    let toml = "[upstreams.api]\ntargets = [\"http://127.0.0.1:1\"]\n[[routes]]\npath = \"/\"\n\
                [routes.idempotency]\nenabled = true\nmethods = [\"post\"]\nttl = \"0s\"\n\
                max_stored_body = \"64MiB\"\n";
    let (code, err) = process::check(toml);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("line 7: `routes[0].idempotency.methods`"),
        "{err}"
    );
    assert!(
        err.contains("line 8: `routes[0].idempotency.ttl`: must be more than 0"),
        "{err}"
    );
    assert!(
        err.contains("line 9: `routes[0].idempotency.max_stored_body`"),
        "{err}"
    );
    let unknown = toml.replace("ttl = \"0s\"", "tll = \"1h\"");
    let (_, err) = process::check(&unknown);
    assert!(err.contains("tll"), "{err}");
}
