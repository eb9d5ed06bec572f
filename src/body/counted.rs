//! A request body streamed to the upstream and counted on the way: cut off past the route's
//! `max_body`, so the upstream never receives more, with the outcome shared with the request
//! that sent it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;

use super::{Error, Fault};

/// How a streamed body is doing, shared between the body and the request that sent it.
#[derive(Debug)]
pub struct Progress(AtomicU8);

impl Default for Progress {
    fn default() -> Self {
        Progress(AtomicU8::new(STREAMING))
    }
}

const STREAMING: u8 = 0;
const COMPLETE: u8 = 1;
const TOO_LARGE: u8 = 2;
const UNREADABLE: u8 = 3;

impl Progress {
    pub fn complete(&self) -> bool {
        self.0.load(Ordering::Relaxed) == COMPLETE
    }

    /// The client's fault, if the body broke off on its side: over `max`, or unreadable (the
    /// client closed its connection mid-body, or sent a malformed chunk).
    pub fn fault(&self, max: u64) -> Option<Fault> {
        match self.0.load(Ordering::Relaxed) {
            TOO_LARGE => Some(Fault::TooLarge { max }),
            UNREADABLE => Some(Fault::Unreadable),
            _ => None,
        }
    }
}

/// A request body streamed to the upstream, cut off past `limit` bytes.
#[derive(Debug)]
pub struct Counted {
    inner: Incoming,
    left: u64,
    progress: Arc<Progress>,
}

impl Counted {
    pub fn new(inner: Incoming, limit: u64, progress: Arc<Progress>) -> Counted {
        if inner.is_end_stream() {
            // No body at all: nothing will poll it, and nothing is awaited from the client.
            progress.0.store(COMPLETE, Ordering::Relaxed);
        }
        Counted {
            inner,
            left: limit,
            progress,
        }
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let Poll::Ready(frame) = polled else {
            return Poll::Pending;
        };
        let this = self.get_mut();
        match frame {
            None => {
                this.progress.0.store(COMPLETE, Ordering::Relaxed);
                Poll::Ready(None)
            }
            Some(Ok(frame)) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                if len > this.left {
                    // The frame that would pass the limit is never sent.
                    this.progress.0.store(TOO_LARGE, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(Error::TooLarge)));
                }
                this.left -= len;
                if this.inner.is_end_stream() {
                    this.progress.0.store(COMPLETE, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.progress.0.store(UNREADABLE, Ordering::Relaxed);
                Poll::Ready(Some(Err(Error::Broken(e))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
