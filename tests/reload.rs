//! Hot reload: a valid config is swapped in without failing a request, limiter state survives,
//! and an invalid one is refused and changes nothing.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use sluice::config::{Config, Overrides};
use sluice::server::{self, Running, Source};
use support::process::Process;
use support::*;

fn toml(upstream: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
workers = 2
[upstreams.api]
targets = ["{upstream}"]
[policies.default]
rate = "1/s"
burst = 3
{extra}
[[routes]]
path = "/free"
policy = "none"
[[routes]]
path = "/"
"#
    )
}

fn start(path: &Path) -> Running {
    let config = Config::load(path, &Overrides::default()).unwrap();
    let source = Source {
        path: path.to_path_buf(),
        overrides: Overrides::default(),
    };
    let options = server::Options {
        source: Some(source),
        ..server::Options::default()
    };
    server::start_with(config, options).unwrap()
}

#[tokio::test]
async fn a_reload_changes_routes_and_policies_while_load_runs_and_no_request_fails() {
    let up = spawn_upstream().await;
    let path = temp_file("load", &toml(&up.url(), ""));
    let running = start(&path);
    let addr = running.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let status = get(addr, "/free/x").await.status;
                    let counter = if status == 200 { &ok } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        get(addr, "/v2/x").await.status,
        200,
        "served by the / route before the reload"
    );

    let new_policy = "[policies.gold]\nrate = \"5/s\"\nburst = 10\n";
    let new_route = "[[routes]]\npath = \"/v2\"\nmethods = [\"POST\"]\npolicy = \"gold\"\n";
    let changed = toml(&up.url(), &format!("{new_policy}{new_route}"));
    std::fs::write(&path, changed).unwrap();
    let hash = running.reload().expect("a valid config reloads");
    tokio::time::sleep(Duration::from_millis(150)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed during the reload"
    );
    assert!(ok.load(Ordering::Relaxed) > 10);
    let res = get(addr, "/v2/x").await;
    assert_eq!(res.status, 405, "the new route is in force");
    let gold = send(addr, post_json("/v2/x", "{}")).await;
    assert_eq!(gold.status, 200);
    assert!(
        gold.header("ratelimit-policy").contains(r#""gold";q=10"#),
        "and its new policy"
    );
    assert_eq!(running.app().config.hash, hash);
    running.shutdown();
}

#[tokio::test]
async fn a_key_that_used_its_burst_stays_limited_after_a_reload_that_kept_its_policy() {
    let up = spawn_upstream().await;
    let path = temp_file("kept", &toml(&up.url(), ""));
    let running = start(&path);
    let addr = running.local_addr();
    for _ in 0..3 {
        assert_eq!(send(addr, keyed("/a", "k")).await.status, 200);
    }
    assert_eq!(send(addr, keyed("/a", "k")).await.status, 429);
    // Routes change, the policy does not.
    std::fs::write(&path, toml(&up.url(), "[[routes]]\npath = \"/other\"\n")).unwrap();
    running.reload().unwrap();
    assert_eq!(
        send(addr, keyed("/a", "k")).await.status,
        429,
        "still limited"
    );
    assert_eq!(send(addr, keyed("/a", "fresh")).await.status, 200);
    running.shutdown();
}

#[tokio::test]
async fn an_invalid_reload_is_refused_and_changes_nothing() {
    let up = spawn_upstream().await;
    let path = temp_file("invalid", &toml(&up.url(), ""));
    let running = start(&path);
    let (addr, admin) = (running.local_addr(), running.admin_addr().unwrap());
    let before = running.app().config.hash;
    std::fs::write(
        &path,
        toml(&up.url(), "[policies.broken]\nrate = \"fast\"\nburst = 1\n"),
    )
    .unwrap();

    let res = post_reload(admin).await;
    assert_eq!(res.status, 422);
    assert_eq!(res.header("content-type"), "application/problem+json");
    let errors = &res.json()["errors"];
    assert_eq!(errors[0]["field"], "policies.broken.rate");
    assert!(
        errors[0]["message"].as_str().unwrap().contains("line"),
        "{errors}"
    );

    assert!(running.reload().is_err());
    assert_eq!(running.app().config.hash, before, "the old config stays");
    assert_eq!(get(addr, "/free/x").await.status, 200);
    let metrics = metrics(admin).await;
    assert!(
        metrics.contains("sluice_config_reloads_total{result=\"failure\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("sluice_config_reloads_total{result=\"success\"} 0"));
    running.shutdown();
}

#[tokio::test]
async fn post_reload_on_the_admin_listener_swaps_the_config_and_rebinds_a_changed_address() {
    let up = spawn_upstream().await;
    let path = temp_file("rebind", &toml(&up.url(), ""));
    let running = start(&path);
    let (old, admin) = (running.local_addr(), running.admin_addr().unwrap());
    let port = free_port();
    let moved = toml(&up.url(), "").replace(
        "listen = \"127.0.0.1:0\"\nadmin",
        &format!("listen = \"127.0.0.1:{port}\"\nadmin"),
    );
    std::fs::write(&path, moved).unwrap();

    let res = post_reload(admin).await;
    assert_eq!(res.status, 200, "{:?}", res.body);
    assert_eq!(res.json()["status"], "reloaded");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let new = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(get(new, "/free/x").await.status, 200);
    assert!(
        tokio::net::TcpStream::connect(old).await.is_err(),
        "the old address is closed"
    );
    running.shutdown();
}

#[tokio::test]
async fn once_shutdown_has_begun_a_reload_is_refused_with_503() {
    let up = spawn_upstream().await;
    let path = temp_file("draining", &toml(&up.url(), ""));
    let running = start(&path);
    let (addr, admin) = (running.local_addr(), running.admin_addr().unwrap());
    let slow = tokio::spawn(async move { get(addr, "/slow/500").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    running.shutdown();
    let res = post_reload(admin).await;
    assert_problem(&res, 503);
    assert!(matches!(
        running.reload(),
        Err(server::ReloadError::Draining)
    ));
    assert_eq!(slow.await.unwrap().status, 200);
}

#[tokio::test]
async fn a_changed_max_keys_waits_for_a_restart() {
    let up = spawn_upstream().await;
    let path = temp_file(
        "max-keys",
        &toml(&up.url(), "").replace("workers = 2", "workers = 1\nmax_keys = 5"),
    );
    let running = start(&path);
    std::fs::write(
        &path,
        toml(&up.url(), "").replace("workers = 2", "workers = 1\nmax_keys = 50"),
    )
    .unwrap();
    running.reload().unwrap();
    assert_eq!(running.app().config.server.max_keys, 5);
    running.shutdown();
}

#[tokio::test]
async fn a_kept_alive_connection_reads_its_next_head_under_the_reloaded_limits() {
    use tokio::io::AsyncWriteExt;
    let up = spawn_upstream().await;
    let path = temp_file("head-limits", &toml(&up.url(), ""));
    let running = start(&path);
    let mut kept = tokio::net::TcpStream::connect(running.local_addr())
        .await
        .unwrap();
    assert_eq!(raw::get_on(&mut kept, "/free/a").await.status, 200);

    let smaller =
        toml(&up.url(), "").replace("workers = 2", "workers = 2\nmax_header_bytes = 1024");
    std::fs::write(&path, smaller).unwrap();
    running.reload().unwrap();
    let big = format!(
        "GET /free/b HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2000)
    );
    kept.write_all(big.as_bytes()).await.unwrap();
    assert_eq!(raw::read_answer(&mut kept).await.status, 431);
    running.shutdown();
}

#[tokio::test]
async fn a_connection_busy_during_a_reload_goes_idle_under_the_new_idle_timeout() {
    use tokio::io::AsyncReadExt;
    let up = spawn_upstream().await;
    let long = toml(&up.url(), "").replace("workers = 2", "workers = 1\nidle_timeout = \"30s\"");
    let path = temp_file("idle", &long);
    let running = start(&path);
    let mut s = raw::open(
        running.local_addr(),
        "GET /slow/300 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let short = long.replace("idle_timeout = \"30s\"", "idle_timeout = \"200ms\"");
    std::fs::write(&path, short).unwrap();
    running.reload().unwrap();
    // The answer, then the connection closes once idle for the new 200 ms, not the old 30 s.
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut raw)).await;
    assert!(
        read.is_ok(),
        "still open after 3 s: {:?}",
        String::from_utf8_lossy(&raw)
    );
    assert!(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 200 "));
    running.shutdown();
}

#[tokio::test]
async fn without_a_config_file_a_reload_is_refused() {
    let up = spawn_upstream().await;
    let sluice = spawn_default(&up.url());
    assert!(matches!(
        sluice.running().reload(),
        Err(server::ReloadError::NoFile)
    ));
}

#[tokio::test]
async fn sighup_reloads_the_running_binary() {
    let up = spawn_upstream().await;
    let text = toml(&up.url(), "");
    let mut p = Process::new().config(&text).start().await;
    assert_eq!(get(p.addr, "/v2/x").await.status, 200);
    p.rewrite_config(&format!(
        "{text}[[routes]]\npath = \"/v2\"\nmethods = [\"POST\"]\n"
    ));
    p.signal("HUP");
    let mut status = 0;
    for _ in 0..50 {
        status = get(p.addr, "/v2/x").await.status.as_u16();
        if status == 405 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 405, "the reloaded route answers");
    p.signal("TERM");
    assert_eq!(p.wait().await.code(), Some(0));
}

#[tokio::test]
async fn under_a_changed_policy_each_key_keeps_its_share_of_the_limit() {
    let up = spawn_upstream().await;
    let path = temp_file("changed", &toml(&up.url(), ""));
    let running = start(&path);
    let addr = running.local_addr();
    for _ in 0..3 {
        assert_eq!(send(addr, keyed("/a", "spent")).await.status, 200);
    }
    assert_eq!(send(addr, keyed("/a", "third")).await.status, 200);
    // The burst doubles: a key that used all of it stays limited, one that used a third of it
    // has a third of the new burst used.
    std::fs::write(&path, toml(&up.url(), "").replace("burst = 3", "burst = 6")).unwrap();
    running.reload().unwrap();
    assert_eq!(send(addr, keyed("/a", "spent")).await.status, 429);
    let mut passed = 0;
    while send(addr, keyed("/a", "third")).await.status == 200 {
        passed += 1;
    }
    assert_eq!(
        passed, 4,
        "6 minus the 2 that a third of the burst now counts for"
    );
    running.shutdown();
}

#[tokio::test]
async fn counters_carry_on_across_a_reload() {
    let up = spawn_upstream().await;
    let path = temp_file("counters", &toml(&up.url(), ""));
    let running = start(&path);
    let (addr, admin) = (running.local_addr(), running.admin_addr().unwrap());
    let (free, keyed_ok) = (3, 2);
    for _ in 0..free {
        assert_eq!(get(addr, "/free/x").await.status, 200);
    }
    for _ in 0..keyed_ok {
        assert_eq!(send(addr, keyed("/a", "k")).await.status, 200);
    }
    std::fs::write(&path, toml(&up.url(), "[[routes]]\npath = \"/other\"\n")).unwrap();
    running.reload().unwrap();
    for _ in 0..2 {
        assert_eq!(get(addr, "/free/x").await.status, 200);
    }
    assert_eq!(send(addr, keyed("/a", "k")).await.status, 200);

    let text = metrics(admin).await;
    let at = |name: &str| metric_value(&text, name);
    assert_eq!(
        at(r#"sluice_requests_total{route="/free",method="GET",status="200"}"#),
        5.0
    );
    assert_eq!(
        at(r#"sluice_requests_total{route="/",method="GET",status="200"}"#),
        3.0
    );
    assert_eq!(
        at(r#"sluice_upstream_latency_seconds_count{route="/free",upstream="api"}"#),
        5.0
    );
    assert_eq!(
        at(
            r#"sluice_limiter_decisions_total{policy="default",limit="default",decision="allowed"}"#
        ),
        3.0
    );
    assert!(!text.contains(r#"route="/other""#), "{text}");
    running.shutdown();
}
