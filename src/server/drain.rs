//! Draining a worker's client connections: once told, each finishes the request in progress
//! (hyper's graceful shutdown) and closes, and the worker waits until all have closed.
//!
//! A connection's task is polled several times per request; at each poll, a connection only
//! reads one flag. hyper-util's `GracefulShutdown` polls a `watch` receiver's `changed()`
//! instead, which takes a lock every time: about 460 instructions per proxied request.

use std::future::poll_fn;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use hyper_util::server::graceful::GracefulConnection;
use tokio::sync::{Notify, watch};

/// A worker's side: starts the drain and waits for it.
#[derive(Debug)]
pub struct Drain {
    signal: Arc<Signal>,
    /// Each watched connection holds a receiver: all are gone once all have closed.
    open: watch::Sender<()>,
}

#[derive(Debug, Default)]
struct Signal {
    draining: AtomicBool,
    /// Wakes the connections waiting for their next request, so that they see the flag.
    wake: Notify,
}

/// A connection's side, moved into its task.
#[derive(Debug)]
pub struct Watch {
    signal: Arc<Signal>,
    _open: watch::Receiver<()>,
}

impl Drain {
    pub fn new() -> Drain {
        Drain {
            signal: Arc::default(),
            open: watch::channel(()).0,
        }
    }

    /// A handle for one more connection to be drained.
    pub fn watch(&self) -> Watch {
        Watch {
            signal: self.signal.clone(),
            _open: self.open.subscribe(),
        }
    }

    /// Tells every connection to finish, and waits until all have closed.
    pub async fn shutdown(self) {
        self.signal.draining.store(true, Ordering::Release);
        self.signal.wake.notify_waiters();
        self.open.closed().await;
    }
}

impl Watch {
    /// Runs `conn` to its end, shut down gracefully once the drain begins.
    pub async fn run<C: GracefulConnection>(self, conn: C) -> C::Output {
        let signal = &*self.signal;
        let mut conn = pin!(conn);
        // Created before the flag is first read: a drain that begins after that wakes it.
        let mut woken = pin!(signal.wake.notified());
        let (mut registered, mut watching) = (false, true);
        poll_fn(|cx| {
            if watching {
                if !registered {
                    // Once: a spawned task is woken by any of its wakers, and the first one
                    // stays registered until the drain.
                    registered = true;
                    let _ = woken.as_mut().poll(cx);
                }
                if signal.draining.load(Ordering::Acquire) {
                    watching = false;
                    conn.as_mut().graceful_shutdown();
                }
            }
            conn.as_mut().poll(cx)
        })
        .await
    }
}
