//! Test parts: a real upstream that records what it saw, a real sluice on loopback port 0,
//! and a small client. Nothing is mocked; everything talks over real sockets.
#![allow(dead_code)] // each test file uses its own subset

pub mod process;
pub mod redis;
pub mod upstream;

#[allow(unused_imports)] // each test file uses its own subset
pub use upstream::*;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use sluice::config::{Config, Overrides};
use sluice::server::{self, Running};

/// A running sluice; shuts down (without waiting) when dropped.
pub struct Sluice {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    running: Option<Running>,
}

impl Sluice {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    /// Begins shutdown and returns a handle that resolves when it is complete.
    pub fn shutdown(mut self) -> tokio::task::JoinHandle<()> {
        let running = self.running.take().unwrap();
        running.shutdown();
        tokio::task::spawn_blocking(move || running.join())
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        if let Some(r) = &self.running {
            r.shutdown();
        }
    }
}

/// Starts sluice from TOML. `{upstream}` in the text is replaced by `upstream`; the proxy and
/// admin listeners go on loopback port 0 and one worker, unless the TOML says otherwise.
pub fn spawn_sluice(toml: &str, upstream: &str) -> Sluice {
    let toml = toml.replace("{upstream}", upstream);
    let mut config =
        Config::parse(&toml, &Overrides::default()).unwrap_or_else(|e| panic!("test config: {e}"));
    if !toml.contains("listen =") {
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        config.server.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    }
    if !toml.contains("workers =") {
        config.server.workers = 1;
    }
    start(config)
}

/// Starts sluice with the built-in defaults in front of `upstream`.
pub fn spawn_default(upstream: &str) -> Sluice {
    spawn_sluice(
        &format!("[upstreams.api]\ntargets = [\"{upstream}\"]\n"),
        upstream,
    )
}

pub fn start(config: Config) -> Sluice {
    let running = server::start(config).expect("sluice starts");
    Sluice {
        addr: running.local_addr(),
        admin: running.admin_addr(),
        running: Some(running),
    }
}

/// A complete response, read to the end.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }
}

/// Sends one request over a new HTTP/1.1 connection to `addr`.
pub async fn send<B>(addr: SocketAddr, req: Request<B>) -> Answer
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    read(sender.send_request(req).await.unwrap()).await
}

/// Sends one request over a new HTTP/2 (prior knowledge, h2c) connection.
pub async fn send_h2<B>(addr: SocketAddr, req: Request<B>) -> Answer
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    read(sender.send_request(req).await.unwrap()).await
}

async fn read(res: Response<Incoming>) -> Answer {
    let (parts, body) = res.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// Writes `raw` (one or more requests) on a new connection and reads until sluice closes it.
pub async fn exchange(addr: SocketAddr, raw: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    answer
}

/// A GET of `path` on `addr` with a Host header.
pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    send(
        addr,
        request(Method::GET, path)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
}

/// A request builder with Host set, as every HTTP/1.1 client does.
pub fn request(method: Method, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "sluice.test")
}

/// A JSON POST of `body` to `path`.
pub fn post_json(path: &str, body: &str) -> Request<Full<Bytes>> {
    request(Method::POST, path)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// A POST whose JSON body is sent chunked, one chunk per item, with no Content-Length.
pub fn chunked_json<const N: usize>(
    path: &str,
    chunks: [&'static str; N],
) -> Request<impl http_body::Body<Data = Bytes, Error = std::io::Error> + Send + 'static> {
    let frames = chunks.map(|c| Ok(hyper::body::Frame::data(Bytes::from_static(c.as_bytes()))));
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    request(Method::POST, path)
        .header("content-type", "application/json")
        .body(body)
        .unwrap()
}

/// Asserts a problem+json answer of `status` with the standard members and the request id;
/// returns its body.
pub fn assert_problem(res: &Answer, status: u16) -> serde_json::Value {
    assert_eq!(
        res.status,
        status,
        "body: {}",
        String::from_utf8_lossy(&res.body)
    );
    assert_eq!(res.header("content-type"), "application/problem+json");
    let body = res.json();
    assert_eq!(body["status"], status);
    assert!(body["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(body["detail"].as_str().is_some_and(|t| !t.is_empty()));
    assert_eq!(body["request_id"], res.header("x-request-id"));
    body
}

/// The first line of a metrics text that starts with `prefix`.
pub fn metric_line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find(|l| l.starts_with(prefix))
}

/// The value of the series named in full (labels included) in a metrics text.
pub fn metric_value(text: &str, series: &str) -> f64 {
    let l = metric_line(text, &format!("{series} "))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"));
    l.rsplit(' ').next().unwrap().parse().unwrap()
}

/// The SHA-256 hex of an API key, as `[[auth.keys]] sha256` stores it.
pub fn sha256_hex(key: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub const WRITER_KEY: &str = "sk-writer-7f3a9c";
pub const READER_KEY: &str = "sk-reader-2b81de";

/// API keys mode with two keys (`writer` with read and write, `reader` with read only), a route
/// that needs the write scope and one that needs none, no limits. `extra` goes under `[auth]`.
pub fn keys_config(extra: &str) -> String {
    format!(
        r#"
[upstreams.api]
targets = ["{{upstream}}"]
[[routes]]
path = "/v1/write/"
policy = "none"
scopes = ["write"]
[[routes]]
path = "/"
policy = "none"
[auth]
mode = "api_keys"
{extra}
[[auth.keys]]
name = "writer"
sha256 = "{}"
scopes = ["read", "write"]
[[auth.keys]]
name = "reader"
sha256 = "{}"
scopes = ["read"]
"#,
        sha256_hex(WRITER_KEY),
        sha256_hex(READER_KEY)
    )
}

/// A free loopback port (bound and released; the binary under test binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (up to 5 s) until something accepts connections on `addr`: a binary just started.
pub async fn wait_for_listener(addr: SocketAddr) {
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {addr}");
}
