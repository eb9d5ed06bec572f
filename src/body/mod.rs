//! The one body type that flows through sluice, both ways: a client's streamed request body,
//! an upstream's streamed response, or a small body sluice made itself. An enum rather than a
//! boxed trait object, so forwarding allocates nothing for the body.
//!
//! - `counted.rs`: a request body streamed upstream, cut off past `max_body`.
//! - `read.rs`: a request body read whole, within a limit.
//! - `upstream.rs`: an upstream's answer body, which gives its connection back when read.
//!
//! A body that breaks off on the client's side says so with a [`Fault`].

mod counted;
mod read;
mod upstream;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;

pub use counted::{Counted, Progress};
pub use read::read_whole;
pub use upstream::{Answer, Recycle, fired};

use crate::problem::{Limit, Problem};

/// Why a request body could not be had whole: the client's doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Larger than `max` bytes.
    TooLarge { max: u64 },
    /// Broken off: the connection closed mid-body, or a malformed chunk.
    Unreadable,
}

impl From<Fault> for Problem {
    fn from(fault: Fault) -> Problem {
        match fault {
            Fault::TooLarge { max } => Problem::TooLarge(Limit::Body { max }),
            Fault::Unreadable => Problem::UnreadableBody,
        }
    }
}

/// Why a body stream ended before its end.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request body went past the route's `max_body`: the frame that would pass it is never
    /// sent on.
    #[error("request body over max_body")]
    TooLarge,
    /// An upstream's answer did not end within the request's `request_timeout`.
    #[error("the upstream's answer did not end within request_timeout")]
    Cut,
    /// The stream broke: its sender closed or reset the connection, or sent a malformed chunk.
    #[error(transparent)]
    Broken(#[from] hyper::Error),
    /// An upstream's HTTP/1.1 answer broke off: the same, read by sluice itself.
    #[error("the upstream's answer broke off: {0}")]
    BrokenOff(std::io::Error),
}

/// A request or response body.
#[derive(Debug)]
pub enum Body {
    /// No body at all.
    Empty,
    /// A complete body held in memory (problem details, admin answers); taken on first poll.
    Full(Option<Bytes>),
    /// A client's request body, streamed to the upstream as it arrives.
    Incoming(Incoming),
    /// A client's request body, streamed and cut off past the route's `max_body`.
    Counted(Counted),
    /// An upstream's response body, streamed to the client; hands its connection back to the pool.
    Upstream(Answer),
    /// Bytes already read from a body, then the rest of it (an answer too large to keep for an
    /// idempotency key, passed on as it comes).
    Resumed(Box<Resumed>),
}

/// The part of a body already read, and the body it came from.
#[derive(Debug)]
pub struct Resumed {
    pub head: Option<Bytes>,
    pub rest: Body,
}

impl Resumed {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match self.head.take() {
            Some(head) => Poll::Ready(Some(Ok(Frame::data(head)))),
            None => Pin::new(&mut self.rest).poll_frame(cx),
        }
    }

    fn size_hint(&self) -> SizeHint {
        let head = self.head.as_ref().map_or(0, |h| h.len() as u64);
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + head);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + head);
        }
        hint
    }
}

impl Body {
    /// A body held in memory.
    pub fn full(bytes: impl Into<Bytes>) -> Body {
        Body::Full(Some(bytes.into()))
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Body {
        Body::full(bytes)
    }
}

impl From<Incoming> for Body {
    fn from(b: Incoming) -> Body {
        Body::Incoming(b)
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Body::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(Error::Broken),
            Body::Counted(b) => Pin::new(b).poll_frame(cx),
            Body::Upstream(b) => Pin::new(b).poll_frame(cx),
            Body::Resumed(b) => b.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(data) => data.is_none(),
            Body::Incoming(b) => b.is_end_stream(),
            Body::Counted(b) => b.is_end_stream(),
            Body::Upstream(b) => b.is_end_stream(),
            Body::Resumed(b) => b.head.is_none() && b.rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Body::Incoming(b) => b.size_hint(),
            Body::Counted(b) => b.size_hint(),
            Body::Upstream(b) => b.size_hint(),
            Body::Resumed(b) => b.size_hint(),
        }
    }
}
