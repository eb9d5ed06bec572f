//! Graceful shutdown: stop accepting, let in-flight requests finish, then stop.

mod support;

use std::time::{Duration, Instant};

use support::process::Process;
use support::*;

#[tokio::test]
async fn an_in_flight_request_finishes_after_shutdown_begins() {
    let up = spawn_upstream().await;
    let sluice = spawn_default(&up.url());
    let addr = sluice.addr;
    let admin = sluice.admin.unwrap();
    assert_eq!(get(admin, "/readyz").await.status, 200);
    let slow = tokio::spawn(async move { get(addr, "/slow/600").await });
    up.wait_for(1).await;

    let started = Instant::now();
    let stopped = sluice.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );

    let res = slow.await.unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["ok"], true);
    stopped.await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "shutdown waited for the request"
    );
}

#[tokio::test]
async fn a_batch_accepted_before_shutdown_runs_all_its_items() {
    let up = spawn_upstream().await;
    let sluice = Sluice::builder()
        .upstream(&up)
        .toml("[batch]\nmax_concurrency = 1")
        .start();
    let addr = sluice.addr;
    // One item at a time: the later ones start after shutdown has begun.
    let batch = r#"{"requests": [
        {"id": "a", "method": "GET", "path": "/slow/300"},
        {"id": "b", "method": "GET", "path": "/slow/100"},
        {"id": "c", "method": "GET", "path": "/x", "depends_on": ["b"]}
    ]}"#;
    let running = tokio::spawn(async move { send(addr, post_json("/batch", batch)).await });
    up.wait_for(1).await;
    let stopped = sluice.shutdown();
    let res = running.await.unwrap();
    assert_eq!(res.status, 207);
    let statuses: Vec<u64> = res.json()["responses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 200, 200]);
    stopped.await.unwrap();
}

#[tokio::test]
async fn an_idle_kept_alive_connection_closes_as_the_drain_begins() {
    let up = spawn_upstream().await;
    let sluice = Sluice::builder()
        .upstream(&up)
        .server("drain_timeout = \"20s\"\nidle_timeout = \"20s\"")
        .start();
    let mut idle = tokio::net::TcpStream::connect(sluice.addr).await.unwrap();
    assert_eq!(raw::get_on(&mut idle, "/x").await.status, 200);
    // Waiting for its next request, the connection is woken by the drain and closes.
    let started = Instant::now();
    within(Duration::from_secs(5), "the drain", sluice.shutdown())
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let rest = within(
        Duration::from_secs(2),
        "the close",
        raw::read_to_eof(&mut idle),
    )
    .await;
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
}

#[tokio::test]
async fn drain_timeout_bounds_the_wait() {
    let up = spawn_upstream().await;
    let sluice = Sluice::builder()
        .upstream(&up)
        .server(r#"drain_timeout = "300ms""#)
        .start();
    let addr = sluice.addr;
    let slow = tokio::spawn(async move {
        let mut sender = connect_h1(addr).await;
        let req = request(http::Method::GET, "/slow/5000")
            .body(http_body_util::Empty::<bytes::Bytes>::new());
        sender.send_request(req.unwrap()).await
    });
    up.wait_for(1).await;
    let started = Instant::now();
    sluice.shutdown().await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert!(
        slow.await.unwrap().is_err(),
        "the cut-off request fails rather than hanging"
    );
}

#[tokio::test]
async fn the_binary_drains_on_sigterm_and_exits_0() {
    let up = spawn_upstream().await;
    let mut p = Process::new().args(["--upstream", &up.url()]).start().await;
    let addr = p.addr;
    let slow = tokio::spawn(async move { get(addr, "/slow/500").await });
    up.wait_for(1).await;
    p.signal("TERM");
    assert_eq!(slow.await.unwrap().status, 200);
    assert_eq!(p.wait().await.code(), Some(0));
}

#[tokio::test]
async fn a_second_sigterm_a_second_later_cuts_the_drain_short() {
    let up = spawn_upstream().await;
    let toml = format!(
        "[server]\ndrain_timeout = \"30s\"\n[upstreams.api]\ntargets = [\"{}\"]\n",
        up.url()
    );
    let mut p = Process::start(&toml, &[]).await;
    let addr = p.addr;
    // Holds the drain open for 20 s, far longer than the test waits.
    let _slow = tokio::spawn(async move { get(addr, "/slow/20000").await });
    up.wait_for(1).await;
    p.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(p.try_wait().is_none(), "the first signal drains");
    p.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        p.try_wait().is_none(),
        "a second signal within a second of the first may be the same Ctrl-C"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    p.signal("TERM");
    let started = Instant::now();
    let status = p.wait().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(status.code(), Some(1));
}
