use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;
use crate::server::activity::Active;

const BARE_400: &[u8] = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Thu, 26 Nov 2026 18:00:00 GMT\r\n\r\n";

#[test]
fn the_status_is_read_from_the_status_line_whatever_follows() {
    assert_eq!(status_of(BARE_400), Some(400));
    assert_eq!(
        status_of(b"HTTP/1.1 431 Request Header Fields Too Large\r\n\r\n"),
        Some(431)
    );
    assert_eq!(
        status_of(b"HTTP/1.1 414 URI Too Long\r\nx: y\r\n"),
        Some(414)
    );
    assert_eq!(
        status_of(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
        Some(200)
    );
    assert_eq!(status_of(b"HTTP/1.0 400 Bad Request\r\n\r\n"), Some(400));
    assert_eq!(status_of(b"HTTP/1.1 4"), None);
    assert_eq!(status_of(b"HTTP/1.1 4x0 Bad\r\n"), None);
    assert_eq!(status_of(b"HTTP/2 400 \r\n"), None);
    assert_eq!(status_of(b"{\"partial\":"), None);
    assert_eq!(status_of(b""), None);
}

fn proxy() -> Arc<Proxy> {
    let overrides = crate::config::Overrides {
        upstreams: vec!["http://127.0.0.1:1".into()],
        ..Default::default()
    };
    let config = crate::config::Config::defaults(&overrides).unwrap();
    Arc::new(Proxy::new(
        Arc::new(crate::pipeline::App::new(config).unwrap()),
        0,
    ))
}

/// A `ClientIo` over one end of a loopback connection, the client's end, and its state.
async fn connected() -> (ClientIo<TcpStream>, TcpStream, Arc<ConnState>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    let state = Arc::new(ConnState::default());
    let current = Arc::new(arc_swap::ArcSwap::new(proxy()));
    (ClientIo::new(server, current, state.clone()), client, state)
}

/// One `poll_read` as hyper makes it; whether it read any bytes (false when it would wait).
async fn read_once(io: &mut ClientIo<TcpStream>) -> bool {
    let mut space = [0u8; 4096];
    std::future::poll_fn(|cx| {
        let mut buf = ReadBuf::new(&mut space);
        match Pin::new(&mut *io).poll_read(cx, &mut buf) {
            Poll::Ready(r) => Poll::Ready(r.map(|()| !buf.filled().is_empty()).unwrap()),
            Poll::Pending => Poll::Ready(false),
        }
    })
    .await
}

/// Sends `bytes` as the client, and lets them arrive.
async fn send(client: &mut TcpStream, bytes: &[u8]) {
    client.write_all(bytes).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
}

/// What the client receives next.
async fn received(client: &mut TcpStream) -> String {
    let mut got = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(1), client.read(&mut got));
    let n = read.await.expect("timed out").unwrap();
    String::from_utf8_lossy(&got[..n]).into_owned()
}

#[tokio::test]
async fn hypers_own_answer_to_a_head_goes_out_as_a_problem() {
    let (mut io, mut client, _state) = connected().await;
    send(&mut client, b"GET / HTTP/1.1\r\nHost x\r\n\r\n").await;
    assert!(read_once(&mut io).await);
    // No request was handed on for that head: the write can only be hyper's own answer.
    io.write_all(BARE_400).await.unwrap();
    io.flush().await.unwrap();
    let got = received(&mut client).await;
    assert!(got.starts_with("HTTP/1.1 400 "), "{got}");
    assert!(
        got.contains("content-type: application/problem+json\r\n"),
        "{got}"
    );
    assert!(got.contains("x-request-id: "), "{got}");
}

#[tokio::test]
async fn a_response_flushed_after_the_next_head_began_goes_out_unchanged() {
    // hyper drops a response's body (and so its `Active`) before flushing its bytes; if
    // the flush waits on a full socket, the next request's bytes may be read first.
    let (mut io, mut client, state) = connected().await;
    send(&mut client, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(read_once(&mut io).await, "the first head");
    let active = Active::new(&state); // handed to the service
    assert!(!read_once(&mut io).await, "hyper's keep-alive read");
    drop(active); // the body has ended; its bytes wait in hyper's buffer
    send(&mut client, b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        read_once(&mut io).await,
        "the next head, read while the flush waits"
    );
    // The proxy's own 400 (invalid JSON, say) is not hyper's bare one.
    let answer = b"HTTP/1.1 400 Bad Request\r\nx-request-id: 1\r\ncontent-length: 2\r\n\r\n{}";
    io.write_all(answer).await.unwrap();
    assert_eq!(received(&mut client).await, String::from_utf8_lossy(answer));
    // Once all of it has gone out, a write is hyper's own again.
    io.flush().await.unwrap();
    io.write_all(BARE_400).await.unwrap();
    let got = received(&mut client).await;
    assert!(got.contains("application/problem+json"), "{got}");
}

#[tokio::test]
async fn hypers_answers_other_than_400_and_431_go_out_unchanged() {
    let (mut io, mut client, _state) = connected().await;
    send(&mut client, b"GET /a HTTP/1.1\r\n").await;
    assert!(read_once(&mut io).await);
    let too_long = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n\r\n";
    io.write_all(too_long).await.unwrap();
    assert_eq!(
        received(&mut client).await,
        String::from_utf8_lossy(too_long)
    );
}
