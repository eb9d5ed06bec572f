//! The client side: requests sent over real HTTP/1.1 and HTTP/2 connections, answers read to
//! the end, and the checks most tests make of them.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

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

/// A new HTTP/1.1 connection to `addr`, kept open for as many requests as the test sends.
pub async fn connect_h1<B>(addr: SocketAddr) -> http1::SendRequest<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// A new HTTP/2 (prior knowledge, h2c) connection to `addr`, and the task that drives it,
/// which ends when the connection closes.
pub async fn connect_h2<B>(
    addr: SocketAddr,
) -> (http2::SendRequest<B>, JoinHandle<hyper::Result<()>>)
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    (sender, tokio::spawn(conn))
}

/// Sends one request over a new HTTP/1.1 connection to `addr`.
pub async fn send<B>(addr: SocketAddr, req: Request<B>) -> Answer
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut sender = connect_h1(addr).await;
    read(sender.send_request(req).await.unwrap()).await
}

/// Sends one request over a new HTTP/2 (prior knowledge, h2c) connection.
pub async fn send_h2<B>(addr: SocketAddr, req: Request<B>) -> Answer
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut sender, _) = connect_h2(addr).await;
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

/// A GET of `path` on `addr` with a Host header.
pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    get_with(addr, path, &[]).await
}

/// A GET of `path` on `addr` with a Host header and `headers`.
pub async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut b = request(Method::GET, path);
    for (name, value) in headers {
        b = b.header(*name, *value);
    }
    send(addr, b.body(Full::new(Bytes::new())).unwrap()).await
}

/// A request builder with Host set, as every HTTP/1.1 client does.
pub fn request(method: Method, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "sluice.test")
}

/// `Bearer KEY`, as an `Authorization` header presents an API key.
pub fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// A GET of `path` presenting the API key `key` in `X-Api-Key`.
pub fn keyed(path: &str, key: &str) -> Request<Full<Bytes>> {
    request(Method::GET, path)
        .header("x-api-key", key)
        .body(Full::default())
        .unwrap()
}

/// A JSON POST of `body` to `path`.
pub fn post_json(path: &str, body: &str) -> Request<Full<Bytes>> {
    request(Method::POST, path)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// A POST of `content_type` whose body is sent chunked, one chunk per item, with no
/// Content-Length.
pub fn chunked<C: Into<Bytes>>(
    path: &str,
    content_type: &str,
    chunks: impl IntoIterator<Item = C>,
) -> Request<impl http_body::Body<Data = Bytes, Error = std::io::Error> + Send + 'static> {
    let frames: Vec<Result<_, std::io::Error>> = chunks
        .into_iter()
        .map(|c| Ok(hyper::body::Frame::data(c.into())))
        .collect();
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    request(Method::POST, path)
        .header("content-type", content_type)
        .body(body)
        .unwrap()
}

/// A request with `body` and, if given, that Content-Type.
pub fn with_body(
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> Request<Full<Bytes>> {
    let mut b = request(method, path);
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

/// A valid JSON document of exactly `n` bytes (n >= 4).
pub fn json_of_len(n: usize) -> String {
    format!("\"{}\"", "a".repeat(n - 2))
}

/// A JSON POST whose body is sent chunked, one chunk per item, with no Content-Length.
pub fn chunked_json(
    path: &str,
    chunks: impl IntoIterator<Item = &'static str>,
) -> Request<impl http_body::Body<Data = Bytes, Error = std::io::Error> + Send + 'static> {
    chunked(path, "application/json", chunks)
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

/// The `/metrics` text of the admin listener at `admin`.
pub async fn metrics(admin: SocketAddr) -> String {
    String::from_utf8(get(admin, "/metrics").await.body.to_vec()).unwrap()
}

/// `POST /reload` on the admin listener at `admin`.
pub async fn post_reload(admin: SocketAddr) -> Answer {
    let req = request(Method::POST, "/reload").body(Full::<Bytes>::default());
    send(admin, req.unwrap()).await
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
