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

/// Where an answer's connection goes back once its body is read to the end: the pool's slot
/// it was taken from.
pub trait Recycle: Send + Sync + std::fmt::Debug {
    /// Keeps the connection for the next request.
    fn put(&self, sender: SendRequest<Body>);
    /// Counts and logs an answer cut off at its request's deadline.
    fn cut_off(&self);
}

/// An upstream's answer body, streamed to the client, that gives its connection back once read
/// to the end (and closes it otherwise).
#[derive(Debug)]
pub struct Answer {
    inner: Incoming,
    release: Option<(SendRequest<Body>, Arc<dyn Recycle>)>,
    /// The request's deadline, which the body must end by too.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl Answer {
    /// The body of an answer that came on `sender`'s connection, which goes back to `to`.
    pub fn new(inner: Incoming, sender: SendRequest<Body>, to: Arc<dyn Recycle>) -> Answer {
        let mut answer = Answer {
            inner,
            release: Some((sender, to)),
            deadline: None,
        };
        if answer.inner.is_end_stream() {
            answer.release();
        }
        answer
    }

    /// Ends the body with an error if it has not ended when `deadline` fires: an upstream
    /// that stalls mid-body cannot hold the client's connection past the request's deadline.
    pub fn end_by(&mut self, deadline: Pin<Box<Sleep>>) {
        if self.release.is_some() {
            self.deadline = Some(deadline);
        }
    }

    fn release(&mut self) {
        self.deadline = None;
        if let Some((sender, slot)) = self.release.take() {
            slot.put(sender);
        }
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
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => this.release = None,
            Poll::Pending if this.deadline.as_mut().is_some_and(|d| fired(d, cx)) => {
                // The connection is mid-message: close it rather than reuse it.
                if let Some((_, slot)) = this.release.take() {
                    slot.cut_off();
                }
                this.deadline = None;
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
