//! An upstream's answer body on its way to the client, and the deadline it must end by.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

use super::Error;
use crate::h1::{Conn, Reader};

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
    fn put(&self, conn: Box<Conn>);
    /// Counts and logs an answer cut off at its request's deadline.
    fn cut_off(&self);
    /// Counts and logs an answer the upstream broke off mid-body.
    fn broke_off(&self);
}

/// An upstream's answer body, streamed to the client. An HTTP/1.1 connection goes back once
/// the body is read to the end (and is closed otherwise); an HTTP/2 one is shared anyway.
#[derive(Debug)]
pub struct Answer {
    inner: Inner,
    slot: Arc<dyn Recycle>,
    /// Not yet ended, cut off or broken off.
    open: bool,
    /// The request's deadline, which the body must end by too.
    deadline: Option<Pin<Box<Sleep>>>,
}

#[derive(Debug)]
enum Inner {
    /// Read off its HTTP/1.1 connection, which it holds.
    H1(Reader),
    /// From hyper's HTTP/2 connection.
    H2(Incoming),
}

impl Answer {
    /// The body of an HTTP/1.1 answer from `slot`'s target, whose connection goes back to
    /// `slot` once the body has ended.
    pub fn h1(reader: Reader, slot: Arc<dyn Recycle>) -> Answer {
        Answer::new(Inner::H1(reader), slot)
    }

    /// The body of an HTTP/2 answer from `slot`'s target.
    pub fn h2(body: Incoming, slot: Arc<dyn Recycle>) -> Answer {
        Answer::new(Inner::H2(body), slot)
    }

    fn new(inner: Inner, slot: Arc<dyn Recycle>) -> Answer {
        let mut answer = Answer {
            inner,
            slot,
            open: true,
            deadline: None,
        };
        if answer.is_end_stream() {
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

    /// The body ended whole: its connection goes back, if it may carry another request.
    fn ended(&mut self) {
        self.open = false;
        self.deadline = None;
        if let Inner::H1(reader) = &mut self.inner
            && let Some(conn) = reader.take_conn()
        {
            self.slot.put(conn);
        }
    }

    /// The body did not end whole: its connection is mid-message, so it is closed, not kept.
    fn broken(&mut self) {
        self.open = false;
        self.deadline = None;
        if let Inner::H1(reader) = &mut self.inner {
            drop(reader.take_conn());
        }
    }

    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match &mut self.inner {
            Inner::H1(reader) => reader
                .poll_data(cx)
                .map(|data| data.map(|data| data.map(Frame::data).map_err(Error::BrokenOff))),
            Inner::H2(body) => {
                let mut polled = Pin::new(&mut *body).poll_frame(cx);
                // Trailers stay behind, as nginx leaves them: HTTP/1.1 clients rarely ask for
                // them, and HTTP/2 refuses the connection fields an upstream may put there.
                while let Poll::Ready(Some(Ok(frame))) = &polled {
                    if !frame.is_trailers() {
                        break;
                    }
                    polled = Pin::new(&mut *body).poll_frame(cx);
                }
                polled.map_err(Error::Broken)
            }
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
        let polled = this.poll_inner(cx);
        match &polled {
            Poll::Ready(None) => this.ended(),
            Poll::Ready(Some(Ok(_))) if this.is_end_stream() => this.ended(),
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
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::H1(reader) => reader.is_end_stream(),
            Inner::H2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::H1(reader) => reader.size_hint(),
            Inner::H2(body) => body.size_hint(),
        }
    }
}
