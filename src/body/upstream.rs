//! An upstream's answer body on its way to the client, and the deadline it must end by.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use tokio::time::Sleep;

use super::{Body, Error};

/// Whether `deadline` has passed; if not, the task is woken when it does. Polled outside
/// tokio's cooperative budget (as `tokio::time::timeout` does), so that work which used up the
/// budget cannot keep the deadline from being seen.
pub fn fired(deadline: &mut Pin<Box<Sleep>>, cx: &mut Context<'_>) -> bool {
    let unbudgeted = pin!(tokio::task::unconstrained(deadline.as_mut()));
    unbudgeted.poll(cx).is_ready()
}

/// Where an answer's connection goes back once its body is read to the end, and where what
/// went wrong with it is counted: the pool's slot it was taken from.
pub trait Recycle: Send + Sync + std::fmt::Debug {
    /// Keeps an HTTP/1.1 connection for the next request.
    fn put(&self, sender: SendRequest<Body>);
    /// Counts and logs an answer cut off at its request's deadline.
    fn cut_off(&self);
    /// Counts and logs an answer the upstream broke off mid-body.
    fn broke_off(&self);
}

/// An upstream's answer body, streamed to the client. An HTTP/1.1 connection goes back once
/// the body is read to the end (and is closed otherwise); an HTTP/2 one is shared anyway.
#[derive(Debug)]
pub struct Answer {
    inner: Incoming,
    slot: Arc<dyn Recycle>,
    /// The HTTP/1.1 connection it came on, to give back.
    sender: Option<SendRequest<Body>>,
    /// Not yet ended, cut off or broken off.
    open: bool,
    /// The request's deadline, which the body must end by too.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl Answer {
    /// The body of an answer from `slot`'s target; `sender` is its HTTP/1.1 connection, which
    /// goes back to `slot` once the body has ended.
    pub fn new(
        inner: Incoming,
        sender: Option<SendRequest<Body>>,
        slot: Arc<dyn Recycle>,
    ) -> Answer {
        let mut answer = Answer {
            inner,
            slot,
            sender,
            open: true,
            deadline: None,
        };
        if answer.inner.is_end_stream() {
            answer.ended();
        }
        answer
    }

    /// Ends the body with an error if it has not ended when `deadline` fires: an upstream
    /// that stalls mid-body cannot hold the client's connection past the request's deadline.
    pub fn end_by(&mut self, deadline: Pin<Box<Sleep>>) {
        if self.open {
            self.deadline = Some(deadline);
        }
    }

    /// The body ended whole: its connection goes back.
    fn ended(&mut self) {
        self.open = false;
        self.deadline = None;
        if let Some(sender) = self.sender.take() {
            self.slot.put(sender);
        }
    }

    /// The body did not end whole: its connection is mid-message, so it is closed, not kept.
    fn broken(&mut self) {
        self.open = false;
        self.deadline = None;
        self.sender = None;
    }
}

impl http_body::Body for Answer {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        let mut polled = Pin::new(&mut this.inner).poll_frame(cx);
        // Trailers stay behind, as nginx leaves them: HTTP/1.1 clients rarely ask for them, and
        // HTTP/2 refuses the connection fields an upstream may put there.
        while let Poll::Ready(Some(Ok(frame))) = &polled {
            if !frame.is_trailers() {
                break;
            }
            polled = Pin::new(&mut this.inner).poll_frame(cx);
        }
        match &polled {
            Poll::Ready(None) => this.ended(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.ended(),
            Poll::Ready(Some(Err(_))) if this.open => {
                this.slot.broke_off();
                this.broken();
            }
            Poll::Pending if this.deadline.as_mut().is_some_and(|d| fired(d, cx)) => {
                this.slot.cut_off();
                this.broken();
                return Poll::Ready(Some(Err(Error::Cut)));
            }
            _ => {}
        }
        polled.map_err(Error::Broken)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
