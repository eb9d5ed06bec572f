//! Floods: more connections than `max_connections`, idle or half-sent, against a normal client
//! that must be served throughout; and a cap that the open file limit could not hold.

mod support;

use std::time::{Duration, Instant};

use support::process::{self, Process};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens `n` connections to `addr` that send `first` (perhaps nothing) and then wait.
async fn flood(addr: std::net::SocketAddr, n: usize, first: &[u8]) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await.unwrap();
        if !first.is_empty() {
            s.write_all(first).await.unwrap();
        }
        held.push(s);
    }
    held
}

/// Whether sluice has closed `s`: its answer, if it gave one, and then the end.
async fn closed(s: &mut TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_millis(500), s.read_to_end(&mut got)).await;
    read.ok()
        .map(|_| String::from_utf8_lossy(&got).into_owned())
}

fn plain_get() -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let req = request(http::Method::GET, "/");
    req.body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap()
}

/// A normal client: a new connection, one request, its answer.
async fn normal_request(addr: std::net::SocketAddr) -> u16 {
    within(Duration::from_secs(2), "a normal request", get(addr, "/"))
        .await
        .status
        .as_u16()
}

#[tokio::test]
async fn idle_sockets_over_the_cap_are_closed_oldest_first_and_a_normal_client_is_served() {
    let up = spawn_upstream().await;
    let sluice = Sluice::builder()
        .upstream(&up)
        .server("max_connections = 20")
        .header_read_timeout("10s")
        .start();
    // A client that keeps its connection between requests, and is answered throughout.
    let mut kept = connect_h1(sluice.addr).await;
    assert_eq!(kept.send_request(plain_get()).await.unwrap().status(), 200);
    let mut flooders = Vec::new();
    for round in 0..4 {
        flooders.extend(flood(sluice.addr, 15, b"").await);
        flooders.extend(flood(sluice.addr, 5, b"GET / HTTP/1.1\r\nHost: x\r\n").await);
        assert_eq!(normal_request(sluice.addr).await, 200, "round {round}");
    }
    // 80 flood connections and the normal ones came on top of the cap of 20: the oldest
    // flood sockets went first, each as it was passed; the newest are still open.
    let mut answers = Vec::new();
    for s in &mut flooders[..40] {
        answers.push(closed(s).await.expect("an old flood socket is closed"));
    }
    let half_sent = answers
        .iter()
        .filter(|a| a.starts_with("HTTP/1.1 503 "))
        .count();
    assert_eq!(
        half_sent, 10,
        "each half-sent head is told why: {answers:?}"
    );
    assert!(
        answers
            .iter()
            .all(|a| a.is_empty() || a.contains("Too many open connections"))
    );
    assert!(
        closed(flooders.last_mut().unwrap()).await.is_none(),
        "the newest is kept"
    );
    // The kept-alive client had asked before: it stays while sockets that never asked remain.
    assert_eq!(kept.send_request(plain_get()).await.unwrap().status(), 200);
    let text = sluice.metrics().await;
    let evicted = metric_value(&text, "sluice_connections_evicted_total");
    assert!(evicted >= 60.0, "{evicted}");
    let open = metric_value(&text, "sluice_connections_open");
    assert!(open <= 22.0, "open: {open}");
    assert!(
        !text.contains(r#"method="GET",status="503""#),
        "a normal request was refused"
    );
    let served = r#"sluice_requests_total{route="/",method="GET",status="200"}"#;
    assert_eq!(metric_value(&text, served), 6.0, "{text}");
    // The half-sent heads closed are answered, counted and logged as a 503 each.
    let refused = r#"sluice_requests_total{route="none",method="other",status="503"}"#;
    assert!(metric_value(&text, refused) >= 10.0);
}

#[tokio::test]
async fn the_default_cap_fits_the_open_file_limit_and_a_flood_cannot_exhaust_it() {
    // 21,000 idle sockets once ran sluice out of descriptors with a hard limit of 20,000.
    // The same, scaled down: a limit of 256 leaves room for 256 - 72 = 184 connections.
    let up = spawn_upstream().await;
    let config = format!("[upstreams.api]\ntargets = [\"{}\"]\n", up.url());
    let sluice = Process::new().config(&config).open_files(256).start().await;
    assert!(
        sluice.log().contains("max_connections=184"),
        "the default cap is lowered to fit: {}",
        sluice.log()
    );
    let started = Instant::now();
    let mut flooders = Vec::new();
    for _ in 0..6 {
        flooders.extend(flood(sluice.addr, 50, b"").await);
        assert_eq!(normal_request(sluice.addr).await, 200);
        assert!(sluice.open_fds() < 256, "{} open", sluice.open_fds());
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!sluice.log().contains("accept failed"), "{}", sluice.log());
}

#[test]
fn a_cap_the_open_file_limit_cannot_hold_is_refused_saying_what_fits() {
    let config = "[upstreams.api]\ntargets = [\"http://127.0.0.1:1\"]\n\
                  [server]\nworkers = 1\nmax_connections = 1000\n";
    let file = temp_file("cap.toml", config);
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 512 && exec \"$0\" check --config \"$1\"")
        .arg(env!("CARGO_BIN_EXE_sluice"))
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("server.max_connections"), "{stderr}");
    assert!(stderr.contains("open file limit is 512"), "{stderr}");
    assert!(stderr.contains("at most 440"), "{stderr}");
    // Without the lowered limit, the same file passes.
    let (code, err) = process::check(config);
    assert_eq!(code, Some(0), "{err}");
}
