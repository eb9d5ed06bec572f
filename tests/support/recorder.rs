//! A real HTTP/1.1 upstream that keeps every byte it was sent, per connection, as it came off
//! the socket: to check that what reaches an upstream can be read only one way. It answers
//! each request 200 `{"ok":true}` once its body is read.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// The bytes of each connection, in the order they were accepted.
type Log = Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>>;

pub struct Recorder {
    pub addr: SocketAddr,
    log: Log,
}

impl Recorder {
    pub async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Log::default();
        let connections = log.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let bytes = Arc::new(Mutex::new(Vec::new()));
                connections.lock().unwrap().push(bytes.clone());
                let io = TokioIo::new(Tee { stream, bytes });
                let service = service_fn(|req: http::Request<Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    let body = Full::new(Bytes::from_static(br#"{"ok":true}"#));
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "application/json")
                            .body(body)
                            .unwrap(),
                    )
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new().serve_connection(io, service),
                );
            }
        });
        Recorder { addr, log }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything every connection was sent, one after the other.
    pub fn bytes(&self) -> Vec<u8> {
        let log = self.log.lock().unwrap();
        log.iter().flat_map(|c| c.lock().unwrap().clone()).collect()
    }

    /// Everything received, as text (lossy), for assertions and messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }

    /// The requests received, read strictly: each connection must be a series of whole
    /// requests, each framed one way only (at most one `Content-Length`, or `Transfer-Encoding:
    /// chunked` alone), with nothing left over. Panics, showing the bytes, if not.
    pub fn requests(&self) -> Vec<Received> {
        let log = self.log.lock().unwrap();
        let mut all = Vec::new();
        for connection in log.iter() {
            let bytes = connection.lock().unwrap().clone();
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let (request, len) = parse_one(rest)
                    .unwrap_or_else(|why| panic!("{why}: {:?}", String::from_utf8_lossy(rest)));
                all.push(request);
                rest = &rest[len..];
            }
        }
        all
    }
}

/// One request as the upstream received it.
#[derive(Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    /// The values of the header `name` (any case).
    pub fn all(&self, name: &str) -> Vec<&str> {
        let named = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name));
        named.map(|(_, v)| v.as_str()).collect()
    }
}

/// The request at the start of `bytes`, and its length.
fn parse_one(bytes: &[u8]) -> Result<(Received, usize), String> {
    let mut fields = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut fields);
    let head = match req.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("a partial head".into()),
        Err(e) => return Err(format!("an invalid head ({e})")),
    };
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let mut received = Received {
        method: req.method.unwrap_or_default().to_string(),
        path: req.path.unwrap_or_default().to_string(),
        headers,
        body: Vec::new(),
    };
    let (lengths, codings) = (
        received.all("content-length"),
        received.all("transfer-encoding"),
    );
    let end = match (&lengths[..], &codings[..]) {
        ([], []) => head,
        ([length], []) => {
            let length: usize = length.parse().map_err(|_| "a bad Content-Length")?;
            let end = head + length;
            received.body = bytes.get(head..end).ok_or("a short body")?.to_vec();
            end
        }
        ([], ["chunked"]) => head + dechunk(&bytes[head..], &mut received.body)?,
        _ => return Err(format!("framed two ways: {lengths:?} and {codings:?}")),
    };
    Ok((received, end))
}

/// Decodes the chunked body at the start of `bytes` into `body`; its length on the wire.
fn dechunk(bytes: &[u8], body: &mut Vec<u8>) -> Result<usize, String> {
    let mut at = 0;
    loop {
        let line_end = at
            + bytes[at..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or("a cut chunk")?;
        let size = std::str::from_utf8(&bytes[at..line_end]).map_err(|_| "a bad chunk size")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("a bad chunk size {size:?}"))?;
        at = line_end + 2;
        if size == 0 {
            // No trailers from sluice: the empty line ends the body.
            return if bytes.get(at..at + 2) == Some(b"\r\n") {
                Ok(at + 2)
            } else {
                Err("a chunked body without its end".into())
            };
        }
        body.extend_from_slice(bytes.get(at..at + size).ok_or("a cut chunk")?);
        at += size + 2;
    }
}

/// A stream that copies what it reads into `bytes`.
struct Tee {
    stream: TcpStream,
    bytes: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Tee {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if polled.is_ready() {
            let new = &buf.filled()[before..];
            this.bytes.lock().unwrap().extend_from_slice(new);
        }
        polled
    }
}

impl AsyncWrite for Tee {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
