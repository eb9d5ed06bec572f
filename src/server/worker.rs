//! One worker: a single-threaded runtime running an accept loop and its connections.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::config;
use crate::pipeline::{App, Proxy};

/// Hyper refuses a read buffer below this size.
const MIN_BUF: usize = 8192;

pub fn spawn(
    i: usize,
    app: Arc<App>,
    listener: std::net::TcpListener,
    stop: watch::Receiver<bool>,
) -> io::Result<JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(format!("sluice-worker-{i}"))
        .spawn(move || {
            let proxy = Arc::new(Proxy::new(app, i));
            rt.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => serve(proxy, listener, stop).await,
                    Err(e) => tracing::error!(error = %e, "worker could not register its listener"),
                }
            });
        })
}

/// Accepts until told to stop, then waits for open connections up to `drain_timeout`.
async fn serve(proxy: Arc<Proxy>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let server = &proxy.app.config.server;
    let builder = builder(server);
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => connection(&proxy, &builder, &graceful, stream, peer),
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(server.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout reached; closing the remaining connections");
    }
}

fn builder(server: &config::Server) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(server.header_read_timeout)
        .max_buf_size(server.max_header_bytes.max(MIN_BUF));
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(server.max_header_bytes).unwrap_or(u32::MAX));
    b
}

fn connection(
    proxy: &Arc<Proxy>,
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let _ = stream.set_nodelay(true);
    let guard = ConnectionGuard::new(&proxy.app);
    let over_limit = guard.open > proxy.app.config.server.max_connections;
    let proxy = proxy.clone();
    let service = service_fn(move |req| {
        let proxy = proxy.clone();
        async move {
            let res = if over_limit {
                proxy.overloaded(&req)
            } else {
                proxy.serve(peer, req).await
            };
            Ok::<_, Infallible>(res)
        }
    });
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .into_owned();
    let conn = graceful.watch(conn);
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, %peer, "client connection ended with an error");
        }
        drop(guard);
    });
}

/// Counts an open client connection for `max_connections`, until dropped.
struct ConnectionGuard {
    app: Arc<App>,
    open: usize,
}

impl ConnectionGuard {
    fn new(app: &Arc<App>) -> ConnectionGuard {
        let open = app.connections.fetch_add(1, Ordering::Relaxed) + 1;
        ConnectionGuard {
            app: app.clone(),
            open,
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.app.connections.fetch_sub(1, Ordering::Relaxed);
    }
}
