//! One client connection: taken in under `max_connections` (see `cap`), its TLS handshake
//! where the listener has TLS (within `header_read_timeout`), then hyper over `ClientIo`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;

use super::activity::{Active, ConnState};
use super::cap::Cap;
use super::client_io::{ClientIo, Current};
use super::drain::{Drain, Watch};
use crate::body::{self, Body};
use crate::pipeline::{AccessLine, ClientCert, Lifecycle, Proxy, Tls, Unmeasured};

/// A new connection: its TLS handshake first, within `header_read_timeout`, where the
/// listener has TLS; then hyper serves it.
pub(super) fn accept(
    current: &Current,
    builder: &auto::Builder<TokioExecutor>,
    drain: &Drain,
    cap: &Cap,
    (stream, peer): (TcpStream, SocketAddr),
) {
    let _ = stream.set_nodelay(true);
    let proxy = current.load_full();
    let guard = ConnectionGuard::new(&proxy.app.life);
    let server = &proxy.app.config.server;
    let state = Arc::new(ConnState::default());
    let admitted = cap.admit(&state, guard.open, server.max_connections);
    if admitted.evicted > 0 {
        let evicted = admitted.evicted as u64;
        proxy.app.life.evicted.fetch_add(evicted, Ordering::Relaxed);
    }
    let conn = Conn {
        state,
        guard,
        refused: !admitted.served,
    };
    let Some(tls) = &server.tls else {
        let peer = Peer {
            addr: peer,
            tls: false,
            cert: None,
        };
        return serve(current, builder, drain.watch(), stream, peer, conn);
    };
    let acceptor = TlsAcceptor::from(tls.config.clone());
    let limit = server.header_read_timeout;
    let (current, builder, watch) = (current.clone(), builder.clone(), drain.watch());
    tokio::spawn(async move {
        let handshake = tokio::time::timeout(limit, acceptor.accept(stream));
        let done = tokio::select! {
            done = handshake => done,
            () = conn.state.until_evicted() => {
                tracing::debug!(%peer, "closed in its TLS handshake to make room under max_connections");
                return;
            }
        };
        match done {
            Ok(Ok(stream)) => {
                let cert = stream.get_ref().1.peer_certificates();
                let peer = Peer {
                    addr: peer,
                    tls: true,
                    cert: cert
                        .and_then(|c| c.first())
                        .map(|c| Arc::new(ClientCert::of(c))),
                };
                serve(&current, &builder, watch, stream, peer, conn);
            }
            Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake not done within header_read_timeout"),
        }
    });
}

/// A connection's standing: its state, its place under `max_connections`, and whether it is
/// over the cap with no room made for it.
struct Conn {
    state: Arc<ConnState>,
    guard: ConnectionGuard,
    refused: bool,
}

/// Who is at the other end of a connection.
#[derive(Debug, Clone)]
struct Peer {
    addr: SocketAddr,
    /// The connection is TLS.
    tls: bool,
    /// The certificate the client presented, verified against `server.tls.client_ca`.
    cert: Option<Arc<ClientCert>>,
}

/// hyper serving `stream`, one request at a time through the current proxy; each request
/// carries the client's certificate, if it presented one.
fn serve<S>(
    current: &Current,
    builder: &auto::Builder<TokioExecutor>,
    drain: Watch,
    stream: S,
    peer: Peer,
    conn: Conn,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Conn {
        state,
        guard,
        refused,
    } = conn;
    // A connection over the limit, with no room made for it, answers 503 and then closes:
    // HTTP/1.1 by the answer's `Connection: close`, HTTP/2 (which has no such header) by a
    // GOAWAY once it is sent.
    let refused = refused.then(Arc::<Notify>::default);
    let io = ClientIo::new(stream, current.clone(), state.clone());
    let current = current.clone();
    let refusing = refused.clone();
    let addr = peer.addr;
    let service = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        let (proxy, active) = (current.load_full(), Active::new(&state));
        if state.unmeasured() {
            req.extensions_mut().insert(Unmeasured);
        }
        if peer.tls {
            req.extensions_mut().insert(Tls);
        }
        if let Some(cert) = &peer.cert {
            req.extensions_mut().insert(cert.clone());
        }
        let (refusing, addr) = (refusing.clone(), peer.addr);
        async move {
            let (res, line) = match refusing {
                Some(refused) => {
                    refused.notify_one();
                    (proxy.overloaded(&req), None)
                }
                None => proxy.serve(addr, req).await,
            };
            let log = line.map(|line| Log {
                line,
                proxy,
                sent: 0,
            });
            Ok::<_, Infallible>(res.map(|body| Answer { body, active, log }))
        }
    });
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned();
    let Some(refused) = refused else {
        tokio::spawn(async move {
            if let Err(e) = drain.run(conn).await {
                tracing::debug!(error = %e, peer = %addr, "client connection ended with an error");
            }
            drop(guard);
        });
        return;
    };
    tokio::spawn(async move {
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            () = refused.notified() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
        drop(guard);
    });
}

/// A response body that keeps its request marked in progress on the connection until hyper
/// has written it and dropped it; the idle timeout starts after that. It writes the request's
/// access-log line when the body ends, breaks off or is dropped, with the bytes it gave hyper.
struct Answer {
    body: Body,
    /// Also counts the answer's progress, for a connection's timer.
    active: Active,
    /// The access-log line still to write, if `access_log` is on.
    log: Option<Log>,
}

/// An access-log line on its way out with its answer's body.
struct Log {
    line: AccessLine,
    /// The config the request ran under, which names its route and client.
    proxy: Arc<Proxy>,
    /// Body bytes handed to hyper so far.
    sent: u64,
}

impl Answer {
    /// Writes the access-log line, once.
    fn logged(&mut self, complete: bool) {
        if let Some(log) = self.log.take() {
            log.line.write(&log.proxy.app, Some(log.sent), complete);
        }
    }
}

impl http_body::Body for Answer {
    type Data = Bytes;
    type Error = body::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, body::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                this.active.progressed();
                if let (Some(log), Some(data)) = (&mut this.log, frame.data_ref()) {
                    log.sent += data.len() as u64;
                }
            }
            Poll::Ready(None) => this.logged(true),
            Poll::Ready(Some(Err(_))) => this.logged(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Answer {
    /// hyper drops a body it has sent the end of without polling it again, and one it stops
    /// sending (the client went away): the body ended whole only in the first case.
    fn drop(&mut self) {
        let complete = http_body::Body::is_end_stream(&self.body);
        self.logged(complete);
    }
}

/// Counts an open client connection for `max_connections`, until dropped.
struct ConnectionGuard {
    life: Arc<Lifecycle>,
    open: usize,
}

impl ConnectionGuard {
    fn new(life: &Arc<Lifecycle>) -> ConnectionGuard {
        let open = life.connections.fetch_add(1, Ordering::Relaxed) + 1;
        ConnectionGuard {
            life: life.clone(),
            open,
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.life.connections.fetch_sub(1, Ordering::Relaxed);
    }
}
