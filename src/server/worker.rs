//! One worker: a single-threaded runtime running an accept loop and its connections.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use super::activity::{Active, ConnState};
use super::client_io::{ClientIo, Current};
use super::reload::Generation;
use crate::batch::Batch;
use crate::body::{self, Body};
use crate::config;
use crate::pipeline::{App, Lifecycle, Proxy, Unmeasured};

/// hyper's own read buffer limit, kept well above `max_header_bytes` so that the head limit is
/// enforced (with a problem body) by `ClientIo` rather than by hyper's bare 431.
const READ_BUF: usize = 400 * 1024;

pub fn spawn(
    i: usize,
    generations: watch::Receiver<Arc<Generation>>,
    listener: std::net::TcpListener,
    stop: watch::Receiver<bool>,
) -> io::Result<JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(format!("sluice-worker-{i}"))
        .spawn(move || {
            let app = generations.borrow().app.clone();
            let current = Arc::new(ArcSwap::from_pointee(proxy(app, i)));
            rt.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => serve(i, current, listener, generations, stop).await,
                    Err(e) => tracing::error!(error = %e, "worker could not register its listener"),
                }
            });
        })
}

/// Accepts until told to stop, then waits for open connections up to `drain_timeout`. A new
/// generation replaces the proxy (and the listener, if its address changed).
async fn serve(
    i: usize,
    current: Current,
    mut listener: TcpListener,
    mut generations: watch::Receiver<Arc<Generation>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = builder(&current.load().app.config.server);
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => connection(&current, &builder, &graceful, stream, peer),
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Ok(()) = generations.changed() => {
                let generation = generations.borrow_and_update().clone();
                builder = self::builder(&generation.app.config.server);
                current.store(Arc::new(proxy(generation.app.clone(), i)));
                if let Some(new) = generation.take_listener(i).map(TcpListener::from_std) {
                    match new {
                        Ok(new) => listener = new,
                        Err(e) => tracing::error!(error = %e, "worker could not register its new listener"),
                    }
                }
            }
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    let drain = current.load().app.config.server.drain_timeout;
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout reached; closing the remaining connections");
    }
}

/// Worker `i`'s proxy for a generation: the pipeline, with the batch endpoint on its path.
fn proxy(app: Arc<App>, i: usize) -> Proxy {
    Proxy::new(app, i).with_endpoint(Arc::new(Batch))
}

fn builder(server: &config::Server) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    // Head deadlines and sizes are ClientIo's job; hyper's own would close without an answer.
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(READ_BUF.max(server.max_header_bytes + 64 * 1024));
    // Past this, the h2 crate answers a bare 431; below it, the pipeline holds HTTP/2 heads to
    // `max_header_bytes` with a problem, as ClientIo does for HTTP/1.1.
    let list = READ_BUF.max(server.max_header_bytes + 64 * 1024);
    b.http2()
        .timer(TokioTimer::new())
        // Each stream may hold an upstream connection: nginx allows 128 at once, hyper 200.
        .max_concurrent_streams(100)
        .max_header_list_size(u32::try_from(list).unwrap_or(u32::MAX));
    b
}

fn connection(
    current: &Current,
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let _ = stream.set_nodelay(true);
    let proxy = current.load_full();
    let guard = ConnectionGuard::new(&proxy.app.life);
    // A connection over the limit answers 503 and then closes: HTTP/1.1 by the answer's
    // `Connection: close`, HTTP/2 (which has no such header) by a GOAWAY once it is sent.
    let refused =
        (guard.open > proxy.app.config.server.max_connections).then(Arc::<Notify>::default);
    let state = Arc::new(ConnState::default());
    let io = ClientIo::new(stream, current.clone(), state.clone());
    let current = current.clone();
    let refusing = refused.clone();
    let service = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        let (proxy, active) = (current.load_full(), Active::new(&state));
        if state.unmeasured() {
            req.extensions_mut().insert(Unmeasured);
        }
        let refusing = refusing.clone();
        async move {
            let res = match refusing {
                Some(refused) => {
                    refused.notify_one();
                    proxy.overloaded(&req)
                }
                None => proxy.serve(peer, req).await,
            };
            Ok::<_, Infallible>(res.map(|body| Answer { body, active }))
        }
    });
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned();
    let Some(refused) = refused else {
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "client connection ended with an error");
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
/// has written it and dropped it; the idle timeout starts after that.
struct Answer {
    body: Body,
    /// Also counts the answer's progress, for a connection's timer.
    active: Active,
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
        if let Poll::Ready(Some(Ok(_))) = polled {
            this.active.progressed();
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
