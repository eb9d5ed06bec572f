//! Raw sockets, for clients and upstreams that misbehave: bytes written by hand (all at once,
//! in pieces, or a byte at a time) and messages read by hand, with nothing in between to fix
//! them up.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::{Answer, within};

/// Connects to `addr` and writes `bytes`; the connection, to write more or read the answer.
pub async fn open(addr: SocketAddr, bytes: impl AsRef<[u8]>) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes.as_ref()).await.unwrap();
    s
}

/// Writes `raw` (one or more requests) on a new connection and reads until sluice closes it.
pub async fn exchange(addr: SocketAddr, raw: &str) -> String {
    let mut s = open(addr, raw).await;
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    answer
}

/// Writes `bytes` one at a time, `every` apart, on a task of its own, until they are all out or
/// the peer has gone; the task gives the writer back.
pub fn trickle(
    mut writer: OwnedWriteHalf,
    bytes: &'static [u8],
    every: Duration,
) -> JoinHandle<OwnedWriteHalf> {
    tokio::spawn(async move {
        for &b in bytes {
            if writer.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(every).await;
        }
        writer
    })
}

/// Where `needle` first occurs in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one HTTP/1.1 message, a head and the `Content-Length` body after it, starting with
/// what `buf` already holds; whatever came after it stays in `buf`. `None` if the connection
/// ends (or fails) first.
pub async fn read_message(
    s: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
) -> Option<(String, Bytes)> {
    let head_len = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        read_more(s, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
    let length: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.trim().parse().unwrap());
    while buf.len() < head_len + length {
        read_more(s, buf).await?;
    }
    let body = Bytes::copy_from_slice(&buf[head_len..head_len + length]);
    buf.drain(..head_len + length);
    Some((head, body))
}

async fn read_more(s: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 4096];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

/// Reads one HTTP/1.1 response with a `Content-Length` body, and asserts nothing came after it.
pub async fn read_answer(s: &mut (impl AsyncRead + Unpin)) -> Answer {
    let mut buf = Vec::new();
    let Some((head, body)) = read_message(s, &mut buf).await else {
        panic!(
            "closed before a complete response: {:?}",
            String::from_utf8_lossy(&buf)
        );
    };
    assert!(buf.is_empty(), "bytes after the response: {buf:?}");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap();
    let mut headers = HeaderMap::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').unwrap();
        headers.append(
            HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
            HeaderValue::from_str(value.trim()).unwrap(),
        );
    }
    Answer {
        status: StatusCode::from_u16(status.parse().unwrap()).unwrap(),
        headers,
        body,
    }
}

/// Sends `GET path` on a kept-alive raw connection and reads the answer (within 3 s).
pub async fn get_on(s: &mut TcpStream, path: &str) -> Answer {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    within(Duration::from_secs(3), "answer", read_answer(s)).await
}

/// Reads until the peer closes; returns what came before the end.
pub async fn read_to_eof(s: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)
        .await
        .expect("a clean close, not a reset");
    rest
}

/// Reads until the peer closes or resets the connection; returns what came before.
pub async fn read_until_closed(s: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut all = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    while let Ok(n @ 1..) = s.read(&mut chunk).await {
        all.extend_from_slice(&chunk[..n]);
    }
    all
}

/// The status codes of every response in a text of several.
pub fn statuses(text: &str) -> Vec<&str> {
    text.match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect()
}

/// A TCP server that answers every connection with `reply`, whatever was sent, and closes it;
/// its URL.
pub async fn server(reply: &'static [u8]) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(reply).await;
        }
    });
    url
}

/// What a [`sink`] read on each connection, until the connection ended.
pub type Received = Arc<Mutex<Vec<Vec<u8>>>>;

/// An upstream that reads everything sent to it (for up to 3 s a connection) and never
/// answers; its URL.
pub async fn sink() -> (String, Received) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let received: Received = Arc::default();
    let log = received.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut all = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut all)).await;
                log.lock().unwrap().push(all);
            });
        }
    });
    (url, received)
}

/// The data of a chunked body, and whether its last (zero) chunk arrived.
pub fn dechunk(mut raw: &[u8]) -> (Vec<u8>, bool) {
    let mut data = Vec::new();
    while let Some(eol) = find(raw, b"\r\n") {
        let size_text = std::str::from_utf8(&raw[..eol]).unwrap();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return (data, true);
        }
        let chunk = &raw[eol + 2..];
        if chunk.len() < size {
            data.extend_from_slice(chunk);
            break;
        }
        data.extend_from_slice(&chunk[..size]);
        raw = chunk.get(size + 2..).unwrap_or_default();
    }
    (data, false)
}

/// A target a connection to hangs on, as to a host that drops SYNs: a listener that never
/// accepts, its accept queue filled. It lasts as long as this value.
pub struct Hanging {
    pub url: String,
    _listener: socket2::Socket,
    _held: Vec<std::net::TcpStream>,
}

/// A [`Hanging`] target, or `None` when this system completes or refuses such connects instead.
pub fn hanging_target() -> Option<Hanging> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    sock.bind(&any.into()).unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut held = Vec::new();
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            Ok(s) => held.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Some(Hanging {
                    url: format!("http://{addr}"),
                    _listener: sock,
                    _held: held,
                });
            }
            Err(_) => return None,
        }
    }
    None
}

/// A socket whose first `skip` bytes written were already sent by hand: the writer's first
/// bytes are taken as written without going out again.
pub struct SentAlready {
    pub inner: TcpStream,
    pub skip: usize,
}

impl AsyncRead for SentAlready {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SentAlready {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.skip > 0 {
            let n = self.skip.min(data.len());
            self.skip -= n;
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
