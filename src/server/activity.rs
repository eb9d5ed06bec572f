//! What a connection's service tells its socket: which requests it has been handed and is
//! answering (each marked by an [`Active`]), how far their answers have got, and what the
//! socket tells the service back: whether a head was read without being measured. And what the
//! connection cap asks of it: to close, to make room for a newer one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Waker;

use futures_util::task::AtomicWaker;

/// Requests being answered on one connection; the connection is idle when none are.
#[derive(Debug, Default)]
pub struct ConnState {
    active: AtomicUsize,
    /// Requests handed to the service so far.
    started: AtomicUsize,
    /// The connection's reader, woken when the last request ends so the idle timer starts.
    reader: AtomicWaker,
    /// Goes up each time an answer hands on a part of its body, or ends: an HTTP/2 connection
    /// whose answers make no progress is stuck on a client that grants them no window.
    progress: AtomicUsize,
    /// HTTP/1.1 bytes were read that no head measure saw (while a request was answered, or
    /// past the end of a head): the heads parsed from them are checked once parsed, until the
    /// next head is measured as it comes.
    unmeasured: AtomicBool,
    /// Asked to close, to make room under `max_connections`: it does once it has no request
    /// in progress.
    evicted: AtomicBool,
}

impl ConnState {
    /// Whether the request being parsed may come from bytes no head measure saw.
    pub fn unmeasured(&self) -> bool {
        self.unmeasured.load(Ordering::Relaxed)
    }

    pub(super) fn set_unmeasured(&self, unmeasured: bool) {
        self.unmeasured.store(unmeasured, Ordering::Relaxed);
    }

    /// An answer handed on a part of its body.
    pub fn progressed(&self) {
        bump(&self.progress);
    }

    pub(super) fn progress(&self) -> usize {
        self.progress.load(Ordering::Relaxed)
    }

    /// Whether any request is being answered.
    pub(super) fn busy(&self) -> bool {
        self.active.load(Ordering::Relaxed) > 0
    }

    /// How many requests have been handed to the service.
    pub(super) fn started(&self) -> usize {
        self.started.load(Ordering::Relaxed)
    }

    /// Whether no request was ever handed to the service.
    pub(super) fn never_asked(&self) -> bool {
        self.started() == 0
    }

    /// Wakes `waker` when the last request in progress ends, or the connection is asked to
    /// close.
    pub(super) fn wake_reader(&self, waker: &Waker) {
        self.reader.register(waker);
    }

    /// Asks the connection to close, and wakes its reader to see it.
    pub(super) fn evict(&self) {
        self.evicted.store(true, Ordering::Relaxed);
        self.reader.wake();
    }

    pub(super) fn evicted(&self) -> bool {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Ends when the connection is asked to close: for the time before its reader runs.
    pub(super) async fn until_evicted(&self) {
        std::future::poll_fn(|cx| {
            self.reader.register(cx.waker());
            if self.evicted() {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
    }
}

/// Adds one. A load and a store, not an atomic add: the connection and its answers run on
/// one thread.
fn bump(counter: &AtomicUsize) {
    let n = counter.load(Ordering::Relaxed);
    counter.store(n.wrapping_add(1), Ordering::Relaxed);
}

/// Marks a request in progress on its connection until dropped (with the response body).
#[derive(Debug)]
pub struct Active(Arc<ConnState>);

impl Active {
    pub fn new(state: &Arc<ConnState>) -> Active {
        state.active.fetch_add(1, Ordering::Relaxed);
        bump(&state.started);
        Active(state.clone())
    }

    /// The request's answer handed on a part of its body.
    pub fn progressed(&self) {
        self.0.progressed();
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.progressed();
        if self.0.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.reader.wake();
        }
    }
}
