//! A real HTTP/1.1 upstream on loopback, scripted per path, that records every request it saw:
//! `Upstream::new().on("/slow", Reply::ok().after(Duration::from_millis(300))).start().await`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What the upstream received for one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The connection it came on, so that tests can tell connections apart.
    pub peer: SocketAddr,
}

impl Seen {
    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or_default()
    }
}

/// What the upstream answers to one request: a status, headers, a body, and when.
#[derive(Debug, Clone)]
pub struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Content,
    delay: Duration,
}

#[derive(Debug, Clone)]
enum Content {
    Bytes(Bytes),
    /// The request's own body.
    Echo,
    /// This many bytes of `x`, streamed.
    Repeat(usize),
    /// `sent` of an announced `length`, then nothing more, the connection held open.
    Stall {
        sent: Bytes,
        length: usize,
    },
    /// `sent` of an announced `length`, then the connection is closed.
    Cut {
        sent: Bytes,
        length: usize,
    },
}

const OK_BODY: &[u8] = br#"{"ok":true}"#;

impl Reply {
    /// 200 with `{"ok":true}` as `application/json`: the answer to any path not scripted.
    pub fn ok() -> Reply {
        Reply::status(200)
    }

    /// `code` with `{"ok":true}` as `application/json`.
    pub fn status(code: u16) -> Reply {
        Reply {
            status: StatusCode::from_u16(code).unwrap(),
            headers: HeaderMap::new(),
            body: Content::Bytes(Bytes::from_static(OK_BODY)),
            delay: Duration::ZERO,
        }
        .header("content-type", "application/json")
    }

    /// 200 with `body` as `content_type`.
    pub fn body(content_type: &str, body: impl Into<Bytes>) -> Reply {
        Reply {
            body: Content::Bytes(body.into()),
            ..Reply::ok()
        }
        .header("content-type", content_type)
    }

    /// 200 with the request's body and content type.
    pub fn echo() -> Reply {
        Reply {
            body: Content::Echo,
            ..Reply::ok()
        }
    }

    /// 200 with `n` bytes of `x` (as `application/json`), streamed rather than held in memory.
    pub fn bytes(n: usize) -> Reply {
        Reply {
            body: Content::Repeat(n),
            ..Reply::ok()
        }
    }

    /// 200 with hop-by-hop headers (`Connection` naming `x-upstream-private`, `Keep-Alive`) beside
    /// the end-to-end `x-upstream-public: visible`.
    pub fn hop_by_hop() -> Reply {
        Reply::ok()
            .header("connection", "x-upstream-private")
            .header("x-upstream-private", "secret")
            .header("keep-alive", "timeout=5")
            .header("x-upstream-public", "visible")
    }

    /// 200 announcing a JSON body of `length` bytes, of which only `sent` ever comes: the head
    /// and `sent` go out, then the connection is held open.
    pub fn stall_after(sent: &'static str, length: usize) -> Reply {
        Reply {
            body: Content::Stall {
                sent: Bytes::from_static(sent.as_bytes()),
                length,
            },
            ..Reply::ok()
        }
    }

    /// 200 announcing a JSON body of `length` bytes, of which `sent` comes before the upstream
    /// closes the connection.
    pub fn cut_after(sent: &'static str, length: usize) -> Reply {
        Reply {
            body: Content::Cut {
                sent: Bytes::from_static(sent.as_bytes()),
                length,
            },
            ..Reply::ok()
        }
    }

    /// Sets a response header (replacing one of the same name).
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
        self
    }

    /// The same answer with status `code`.
    pub fn status_code(mut self, code: u16) -> Reply {
        self.status = StatusCode::from_u16(code).unwrap();
        self
    }

    /// The same answer, `delay` after the request has been read.
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

type Behaviour = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// An upstream being scripted; `start` runs it.
#[derive(Default)]
pub struct Script {
    paths: Vec<(String, Behaviour)>,
}

impl Script {
    /// Answers `reply` on `path`: exactly that path, or every path under it if it ends in `/`.
    /// The first `on` that matches a request answers it; paths matched by none answer
    /// [`Reply::ok`].
    pub fn on(self, path: &str, reply: Reply) -> Script {
        self.on_fn(path, move |_| reply.clone())
    }

    /// Answers what `answer` makes of each request on `path` (matched as by [`Script::on`]).
    pub fn on_fn(
        mut self,
        path: &str,
        answer: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Script {
        self.paths.push((path.to_string(), Arc::new(answer)));
        self
    }

    /// Listens on a loopback port of its own and serves every connection with the script.
    pub async fn start(self) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (log, script) = (seen.clone(), Arc::new(self));
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let (log, script) = (log.clone(), script.clone());
                let service = service_fn(move |req| {
                    let (log, script) = (log.clone(), script.clone());
                    async move { Ok::<_, Infallible>(script.answer(&log, peer, req).await) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Upstream { addr, seen }
    }

    fn reply_for(&self, seen: &Seen) -> Reply {
        let path = seen.path();
        self.paths
            .iter()
            .find(|(p, _)| path == p || (p.ends_with('/') && path.starts_with(p.as_str())))
            .map_or_else(Reply::ok, |(_, behaviour)| behaviour(seen))
    }

    async fn answer(
        &self,
        log: &Mutex<Vec<Seen>>,
        peer: SocketAddr,
        req: Request<Incoming>,
    ) -> Response<Answering> {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let seen = Seen {
            method: parts.method,
            uri: parts.uri.to_string(),
            headers: parts.headers,
            body,
            peer,
        };
        log.lock().unwrap().push(seen.clone());
        let reply = self.reply_for(&seen);
        if !reply.delay.is_zero() {
            tokio::time::sleep(reply.delay).await;
        }
        let mut headers = reply.headers;
        let body = match reply.body {
            Content::Bytes(b) => Answering::Data(Some(b).filter(|b| !b.is_empty())),
            Content::Echo => {
                if let Some(ct) = seen.headers.get("content-type") {
                    headers.insert("content-type", ct.clone());
                }
                Answering::Data(Some(seen.body).filter(|b| !b.is_empty()))
            }
            Content::Repeat(n) => Answering::Repeat(n),
            Content::Stall { sent, length } => Answering::Partial {
                sent: Some(sent),
                length,
                cut: false,
                flushed: false,
            },
            Content::Cut { sent, length } => Answering::Partial {
                sent: Some(sent),
                length,
                cut: true,
                flushed: false,
            },
        };
        let mut res = Response::new(body);
        *res.status_mut() = reply.status;
        *res.headers_mut() = headers;
        res
    }
}

/// A body as the upstream sends it; each announces its full length, so it goes out with a
/// `Content-Length` however much of it comes.
enum Answering {
    Data(Option<Bytes>),
    Repeat(usize),
    Partial {
        sent: Option<Bytes>,
        length: usize,
        cut: bool,
        /// Whether the connection has had its chance to write out what was sent.
        flushed: bool,
    },
}

/// The chunk `Reply::bytes` streams.
static XS: [u8; 64 << 10] = [b'x'; 64 << 10];

impl Body for Answering {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match &mut *self {
            Answering::Data(data) => Poll::Ready(data.take().map(|b| Ok(Frame::data(b)))),
            Answering::Repeat(0) => Poll::Ready(None),
            Answering::Repeat(left) => {
                let n = (*left).min(XS.len());
                *left -= n;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&XS[..n])))))
            }
            Answering::Partial {
                sent, cut, flushed, ..
            } => match sent.take() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                // Pending once, so that hyper writes out the head and `sent` before the error
                // makes it drop the connection.
                None if *cut && !*flushed => {
                    *flushed = true;
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                None if *cut => Poll::Ready(Some(Err(std::io::ErrorKind::BrokenPipe.into()))),
                // Never woken: the connection stays open with the answer unfinished.
                None => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Answering::Data(None) | Answering::Repeat(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Answering::Data(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |b| b.len() as u64))
            }
            Answering::Repeat(left) => SizeHint::with_exact(*left as u64),
            Answering::Partial { length, .. } => SizeHint::with_exact(*length as u64),
        }
    }
}

/// A running upstream and what it has seen.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    /// An upstream to script; every path answers [`Reply::ok`] until told otherwise.
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> Script {
        Script::default()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the upstream saw no request")
    }

    /// The request targets received, in arrival order.
    pub fn uris(&self) -> Vec<String> {
        self.seen().into_iter().map(|s| s.uri).collect()
    }

    /// The request received for `uri`.
    pub fn seen_at(&self, uri: &str) -> Seen {
        self.seen()
            .into_iter()
            .find(|s| s.uri == uri)
            .unwrap_or_else(|| panic!("the upstream never saw {uri}: {:?}", self.uris()))
    }

    /// Waits (up to 5 s) until `n` requests have arrived: a request sent from another task is
    /// then surely in flight, however late that task ran on a busy machine.
    pub async fn wait_for(&self, n: usize) {
        for _ in 0..500 {
            if self.seen.lock().unwrap().len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the upstream saw fewer than {n} requests");
    }
}

/// The number after `prefix` in the request's path.
fn number_after(seen: &Seen, prefix: &str) -> u64 {
    let n = seen.path().strip_prefix(prefix).unwrap_or_default();
    n.parse()
        .unwrap_or_else(|_| panic!("{prefix}N needs a number: {}", seen.uri))
}

/// The upstream most tests use. `/status/N` answers N; `/slow/MS` answers after MS
/// milliseconds; `/echo` answers with the request body and content type; `/headers` answers
/// with hop-by-hop response headers; `/big/N` streams N bytes; anything else answers 200
/// `{"ok":true}`.
pub async fn spawn_upstream() -> Upstream {
    Upstream::new()
        .on_fn("/status/", |s| {
            Reply::status(number_after(s, "/status/") as u16)
        })
        .on_fn("/slow/", |s| {
            Reply::ok().after(Duration::from_millis(number_after(s, "/slow/")))
        })
        .on("/echo", Reply::echo())
        .on("/headers", Reply::hop_by_hop())
        .on_fn("/big/", |s| Reply::bytes(number_after(s, "/big/") as usize))
        .start()
        .await
}

/// An upstream that announces a 100-byte JSON answer, sends its first 12 bytes
/// (`{"partial":`), then holds every connection open.
pub async fn spawn_stalling_upstream() -> Upstream {
    Upstream::new()
        .on("/", Reply::stall_after(r#"{"partial":"#, 100))
        .start()
        .await
}

/// An upstream address where nothing listens.
pub fn closed_port() -> String {
    // Bound but not listening: connections are refused, and no other test's listener can be
    // given the port while the socket is held (for the rest of the test run).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let url = format!("http://{}", socket.local_addr().unwrap());
    std::mem::forget(socket);
    url
}
