//! One worker: a single-threaded runtime running an accept loop and its connections.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::cap::Cap;
use super::client_io::Current;
use super::conn;
use super::drain::Drain;
use super::reload::Generation;
use crate::batch::Batch;
use crate::config;
use crate::pipeline::{App, Proxy};

/// hyper's own read buffer limit, kept well above `max_header_bytes` so that the head limit is
/// enforced (with a problem body) by `ClientIo` rather than by hyper's bare 431.
const READ_BUF: usize = 400 * 1024;

/// Connections over `max_connections` still taken in: they wait for room made for them, or are
/// answered 503. Past this, accepting pauses and new connections wait in the listen backlog:
/// closing the connections evicted for them takes a moment, and their sockets must not run the
/// process out of file descriptors meanwhile (`fds::reserve` keeps room for these).
const OVER_CAP: usize = 32;

/// How often idle upstream connections are looked at for a close by their upstream.
const TIDY_EVERY: Duration = Duration::from_secs(1);

pub fn spawn(
    i: usize,
    generations: watch::Receiver<Arc<Generation>>,
    listener: std::net::TcpListener,
    cap: Arc<Cap>,
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
                    Ok(listener) => serve(i, current, listener, generations, &cap, stop).await,
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
    cap: &Cap,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = builder(&current.load().app.config.server);
    let drain = Drain::new();
    let mut tidy = tokio::time::interval(TIDY_EVERY);
    tidy.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let full = {
            let proxy = current.load();
            let open = proxy.app.life.connections.load(Ordering::Relaxed);
            open >= proxy
                .app
                .config
                .server
                .max_connections
                .saturating_add(OVER_CAP)
        };
        tokio::select! {
            // Evicted connections close on their own tasks, which this lets run.
            () = tokio::time::sleep(Duration::from_millis(1)), if full => {}
            accepted = listener.accept(), if !full => match accepted {
                Ok(accepted) => conn::accept(&current, &builder, &drain, cap, accepted),
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
            _ = tidy.tick() => current.load().tidy(),
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    let timeout = current.load().app.config.server.drain_timeout;
    if tokio::time::timeout(timeout, drain.shutdown())
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
