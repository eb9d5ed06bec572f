//! Several sluice replicas sharing one limit per client in a real `redis-server` (or a
//! three-node Redis Cluster): exactly the published rule in exact mode, within the documented
//! bound in lease mode, and each `on_error` as documented while Redis is down.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::limiter::ManualClock;
use support::process::Process;
use support::redis::{Cluster, EPOCH, Redis};
use support::*;

/// The published rule by default; `store` is the body of `[store]`.
fn config(upstream: &str, store: &str, policy: &str) -> String {
    format!(
        "[upstreams.api]\ntargets = [\"{upstream}\"]\n{policy}\n[store]\nkind = \"redis\"\n\
         key_secret = \"shared by the replicas\"\n{store}\n"
    )
}

/// Small enough to wait out: 5 back to back, 1/s.
const SMALL: &str = "[policies.default]\nrate = \"1/s\"\nburst = 5\n";

/// Waits (up to 10 s) until the replica's `/readyz` says its store is up.
async fn store_up(admin: SocketAddr) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let body = get(admin, "/readyz").await.body;
        if body.ends_with(br#""store":"up"}"#) {
            return;
        }
        assert!(Instant::now() < until, "{}", String::from_utf8_lossy(&body));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn replicas(toml: &str, n: usize) -> Vec<Process> {
    let mut all = Vec::new();
    for _ in 0..n {
        let p = Process::start(toml, &[]).await;
        store_up(p.admin).await;
        all.push(p);
    }
    all
}

/// Sends `n` requests for `key` round robin over the replicas at `addrs`; the answers, in order.
async fn spread(addrs: &[SocketAddr], key: &str, n: usize) -> Vec<Answer> {
    let mut answers = Vec::with_capacity(n);
    for i in 0..n {
        answers.push(send(addrs[i % addrs.len()], keyed("/", key)).await);
    }
    answers
}

/// The proxy addresses of `replicas`.
fn addrs(replicas: &[Process]) -> Vec<SocketAddr> {
    replicas.iter().map(|p| p.addr).collect()
}

fn admitted(answers: &[Answer]) -> usize {
    answers.iter().filter(|a| a.status == 200).count()
}

#[tokio::test]
async fn three_replicas_in_exact_mode_admit_exactly_the_published_100() {
    let (redis, up) = (Redis::start(), spawn_upstream().await);
    let toml = config(
        &up.url(),
        &format!("url = \"{}\"\ntimeout = \"1s\"", redis.url()),
        "",
    );
    let replicas = replicas(&toml, 3).await;
    let answers = spread(&addrs(&replicas), "alice", 300).await;
    assert_eq!(admitted(&answers), 100);
    assert_eq!(up.seen().len(), 100);
    for refused in answers.iter().filter(|a| a.status != 200) {
        assert_eq!(refused.status, 429);
        let retry: u64 = refused.header("retry-after").parse().unwrap();
        assert!((59..=72).contains(&retry), "{retry}");
        assert!(refused.header("ratelimit").starts_with(r#""default";r=0;"#));
    }
    // The figures are the shared ones, whichever replica answers.
    let last_admitted = answers.iter().rfind(|a| a.status == 200).unwrap();
    assert!(
        last_admitted
            .header("ratelimit")
            .starts_with(r#""default";r=0;t="#)
    );
    // Every key Redis holds expires; none names the client.
    let keys = redis.keys();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(redis.cli(&["PTTL", &keys[0]]).parse::<i64>().unwrap() > 0);
    assert!(!keys[0].contains("alice"));
}

#[tokio::test]
async fn three_replicas_in_lease_mode_admit_at_most_three_leases_more() {
    let (redis, up) = (Redis::start(), spawn_upstream().await);
    let store = format!(
        "url = \"{}\"\ntimeout = \"1s\"\nsync = \"lease\"\nlease = 10\nlease_ttl = \"5s\"",
        redis.url()
    );
    let replicas = replicas(&config(&up.url(), &store, ""), 3).await;
    let answers = spread(&addrs(&replicas), "alice", 300).await;
    let n = admitted(&answers);
    assert!((100..=130).contains(&n), "{n} admitted");
    // Most requests were answered without a round trip: leased tokens and held refusals.
    let mut local = 0.0;
    for p in &replicas {
        let text = metrics(p.admin).await;
        local += metric_value(&text, r#"sluice_store_local_answers_total{answer="lease"}"#);
        local += metric_value(
            &text,
            r#"sluice_store_local_answers_total{answer="refusal"}"#,
        );
    }
    assert!(local >= 250.0, "{local} answered locally");
}

#[tokio::test]
async fn a_refused_client_retrying_after_retry_after_is_admitted_by_another_replica() {
    // Two replicas in this process, on one manual clock whose time the Redis script takes:
    // waiting out Retry-After is a step of the clock.
    let (redis, up) = (Redis::start(), spawn_upstream().await);
    let clock = Arc::new(ManualClock::new(EPOCH));
    let store = format!(
        "[store]\nkind = \"redis\"\nkey_secret = \"shared by the replicas\"\nurl = \"{}\"\ntimeout = \"1s\"",
        redis.url()
    );
    let replica = || {
        Sluice::builder()
            .upstream(&up)
            .policy("default", "rate = \"1/s\"\nburst = 5")
            .toml(&store)
            .clock(&clock)
            .start()
    };
    let replicas = [replica(), replica()];
    for r in &replicas {
        store_up(r.admin.unwrap()).await;
    }
    let answers = spread(&replicas.each_ref().map(|r| r.addr), "bob", 6).await;
    assert_eq!(admitted(&answers), 5);
    let refused = &answers[5];
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("retry-after"), "1");
    // Still refused at once, on either replica.
    assert_eq!(send(replicas[0].addr, keyed("/", "bob")).await.status, 429);
    clock.advance(Duration::from_secs(1));
    assert_eq!(send(replicas[1].addr, keyed("/", "bob")).await.status, 200);
    assert_eq!(send(replicas[0].addr, keyed("/", "bob")).await.status, 429);
}

#[tokio::test]
async fn a_three_node_cluster_admits_exactly_100_without_crossslot_errors() {
    let (cluster, up) = (Cluster::start(), spawn_upstream().await);
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let store = format!("cluster = [{}]\ntimeout = \"1s\"", nodes.join(", "));
    let replicas = replicas(&config(&up.url(), &store, ""), 3).await;
    let answers = spread(&addrs(&replicas), "carol", 300).await;
    assert_eq!(admitted(&answers), 100);
    for p in &replicas {
        let text = metrics(p.admin).await;
        assert_eq!(
            metric_value(&text, r#"sluice_store_calls_total{result="error"}"#),
            0.0
        );
    }
    // Several clients spread over the slots, each exact.
    let answers = spread(&addrs(&replicas), "dave", 120).await;
    assert_eq!(admitted(&answers), 100);
    let held: usize = cluster.nodes.iter().map(|n| n.keys().len()).sum();
    assert_eq!(held, 2);
}

/// Redis is killed mid-run: `deny` answers 503 with `Retry-After`, `allow` passes without
/// rate-limit headers, `local` limits on the replica's own; none waits on Redis for long.
/// Redis comes back empty, and every replica notices by itself.
#[tokio::test]
async fn while_redis_is_down_each_on_error_answers_at_once_and_recovery_is_automatic() {
    let (mut redis, up) = (Redis::start(), spawn_upstream().await);
    let mut processes = Vec::new();
    for on_error in ["deny", "allow", "local"] {
        let store = format!(
            "url = \"{}\"\ntimeout = \"50ms\"\non_error = \"{on_error}\"\nready_requires_store = {}",
            redis.url(),
            on_error == "deny"
        );
        let p = Process::start(&config(&up.url(), &store, SMALL), &[]).await;
        store_up(p.admin).await;
        assert_eq!(send(p.addr, keyed("/", "erin")).await.status, 200);
        processes.push(p);
    }
    redis.kill();
    for (p, on_error) in processes.iter().zip(["deny", "allow", "local"]) {
        let mut slowest = Duration::ZERO;
        let mut answers = Vec::new();
        for _ in 0..10 {
            let started = Instant::now();
            answers.push(send(p.addr, keyed("/", "erin")).await);
            slowest = slowest.max(started.elapsed());
        }
        assert!(
            slowest < Duration::from_millis(500),
            "{on_error}: {slowest:?}"
        );
        match on_error {
            "deny" => {
                for a in &answers {
                    let body = assert_problem(a, 503);
                    assert!(body["detail"].as_str().unwrap().contains("Rate limits"));
                    assert_eq!(a.header("retry-after"), "1");
                }
                let ready = get(p.admin, "/readyz").await;
                assert_eq!(ready.status, 503, "ready_requires_store");
                assert!(ready.body.ends_with(br#""store":"down"}"#));
            }
            "allow" => {
                assert!(answers.iter().all(|a| a.status == 200));
                assert!(answers.iter().all(|a| a.header("ratelimit").is_empty()));
                let ready = get(p.admin, "/readyz").await;
                assert_eq!(ready.status, 200, "the store is not required");
            }
            _ => {
                // This replica's own memory: a fresh burst of 5.
                assert_eq!(admitted(&answers), 5);
                assert!(
                    answers[0]
                        .header("ratelimit")
                        .starts_with(r#""default";r=4;"#)
                );
            }
        }
        let text = metrics(p.admin).await;
        assert_eq!(
            metric_value(&text, "sluice_store_fallbacks_total"),
            1.0,
            "{on_error}"
        );
        assert_eq!(metric_value(&text, r#"sluice_store_up{kind="redis"}"#), 0.0);
        assert!(metric_value(&text, "sluice_store_fallback_checks_total") >= 10.0);
        let log = p.log();
        assert_eq!(log.matches("limiter store unreachable").count(), 1, "{log}");
    }
    redis.restart();
    for p in &processes {
        store_up(p.admin).await;
        assert_eq!(send(p.addr, keyed("/", "frank")).await.status, 200);
        assert!(p.log().contains("limiter store reachable again"));
    }
    assert_eq!(
        redis.keys().len(),
        1,
        "the replicas share frank's state again"
    );
    assert_eq!(get(processes[0].admin, "/readyz").await.status, 200);
}

#[tokio::test]
async fn a_reload_that_changes_the_store_switches_to_it() {
    let (redis, up) = (Redis::start(), spawn_upstream().await);
    let memory = format!("[upstreams.api]\ntargets = [\"{}\"]\n{SMALL}", up.url());
    let p = Process::start(&memory, &[]).await;
    assert_eq!(
        get(p.admin, "/readyz").await.body,
        r#"{"status":"ready","store":"memory"}"#
    );
    assert_eq!(send(p.addr, keyed("/", "gina")).await.status, 200);
    // A timeout no busy test machine reaches: every check must go to Redis.
    p.rewrite_config(&config(
        &up.url(),
        &format!("url = \"{}\"\ntimeout = \"1s\"", redis.url()),
        SMALL,
    ));
    let reloaded = post_reload(p.admin).await;
    assert_eq!(reloaded.status, 200, "{:?}", reloaded.body);
    store_up(p.admin).await;
    let answers: Vec<Answer> = spread(&[p.addr], "gina", 6).await;
    assert_eq!(admitted(&answers), 5, "a fresh start in the new store");
    assert_eq!(redis.keys().len(), 1);
}

#[tokio::test]
async fn a_store_secret_from_the_environment_and_a_bad_url_named_by_key_and_line() {
    let up = spawn_upstream().await;
    let redis = Redis::start();
    let toml = format!(
        "[upstreams.api]\ntargets = [\"{}\"]\n[store]\nkind = \"redis\"\nurl = \"{}\"\n",
        up.url(),
        redis.url()
    );
    let p = Process::start(
        &toml,
        &[("SLUICE_STORE_KEY_SECRET", "from the environment")],
    )
    .await;
    store_up(p.admin).await;
    assert_eq!(send(p.addr, keyed("/", "hank")).await.status, 200);
    let (code, err) = support::process::check("[store]\nkind = \"redis\"\nurl = \"http://x:1\"\n");
    assert_ne!(code, Some(0));
    assert!(
        err.contains("line 3: `store.url`: not a Redis URL"),
        "{err}"
    );
    assert!(err.contains("`store.key_secret`"), "{err}");
}
