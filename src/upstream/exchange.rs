//! One request and its answer's head over an HTTP/1.1 connection, driven in the request's own
//! task. The request goes out as the socket takes it while the answer is watched for: an
//! upstream may answer (a 413, say) before it has read the whole body.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body::Body as _;

use super::headers::Added;
use crate::body::Body;
use crate::h1::{self, Conn, Out};
use crate::problem::UpstreamFault;

/// A body up to this size is copied in after the head, so that the request goes out in one
/// write; a larger one is written from its own bytes.
const COPY_BODY: usize = 16 * 1024;

/// Why an exchange brought no answer.
#[derive(Debug)]
pub(super) enum Lost {
    /// The connection ended before an answer's head had come whole. On a kept-alive
    /// connection, most likely the upstream had just closed it.
    Closed,
    /// Anything else: the fault to answer with.
    Fault(UpstreamFault),
}

/// What of the request is still to go out, after what the connection's `write` holds.
enum Sending {
    /// Nothing more.
    Held,
    /// A large body, uncopied.
    Bytes(Bytes),
    /// A streamed body, framed as its head said.
    Streamed(Body, Out),
    /// All of it, or as much as the upstream took before its answer or a failed write.
    Done,
}

/// Why the request could not be sent whole.
enum Unsent {
    /// Writing to the upstream failed; its answer may have come all the same.
    Io,
    /// The client's body broke off or grew past `max_body`: the forward phase names that.
    Body,
}

/// Sends `req`, with the fields sluice `added`, on `conn` and waits for its answer's head; the
/// answer's body is left in the connection, to be read as the client takes it. The request's
/// body is taken, and its map too once written out: it takes the answer's fields.
pub(super) async fn exchange(
    conn: &mut Conn,
    req: &mut Request<Body>,
    added: &Added<'_>,
) -> Result<h1::Answer, Lost> {
    let body = std::mem::replace(req.body_mut(), Body::Empty);
    let head = req.method() == Method::HEAD;
    let known = match &body {
        Body::Empty | Body::Full(None) => Some(0),
        Body::Full(Some(bytes)) => Some(bytes.len()),
        _ => None,
    };
    let out = h1::write_request(&mut conn.write, req, |out| added.write(out), known);
    let mut fields = std::mem::take(req.headers_mut());
    let mut sending = match body {
        Body::Empty | Body::Full(None) => Sending::Held,
        Body::Full(Some(bytes)) if bytes.len() <= COPY_BODY => {
            conn.write.extend_from_slice(&bytes);
            Sending::Held
        }
        Body::Full(Some(bytes)) => Sending::Bytes(bytes),
        streamed => Sending::Streamed(streamed, out),
    };
    let mut whole = true;
    poll_fn(|cx| {
        if !matches!(sending, Sending::Done) {
            match poll_send(conn, &mut sending, cx) {
                Poll::Ready(Ok(())) => sending = Sending::Done,
                Poll::Ready(Err(Unsent::Io)) => {
                    (sending, whole) = (Sending::Done, false);
                }
                Poll::Ready(Err(Unsent::Body)) => {
                    return Poll::Ready(Err(Lost::Fault(UpstreamFault::Reset)));
                }
                Poll::Pending => {}
            }
        }
        let mut answer = ready!(poll_answer(conn, head, &mut fields, cx))?;
        // An answer before the request's end leaves the connection mid-request.
        answer.keep_alive &= whole && matches!(sending, Sending::Done);
        Poll::Ready(Ok(answer))
    })
    .await
}

/// Writes what is left of the request, as far as the socket takes it.
fn poll_send(
    conn: &mut Conn,
    sending: &mut Sending,
    cx: &mut Context<'_>,
) -> Poll<Result<(), Unsent>> {
    loop {
        ready!(conn.poll_flush_out(cx)).map_err(|_| Unsent::Io)?;
        match sending {
            Sending::Held | Sending::Done => return Poll::Ready(Ok(())),
            Sending::Bytes(bytes) => {
                ready!(conn.poll_write_bytes(cx, bytes)).map_err(|_| Unsent::Io)?;
                return Poll::Ready(Ok(()));
            }
            Sending::Streamed(body, out) => match ready!(Pin::new(&mut *body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        frame_data(&mut conn.write, *out, &data);
                    }
                }
                Some(Err(_)) => return Poll::Ready(Err(Unsent::Body)),
                None => {
                    if *out == Out::Chunked {
                        conn.write.extend_from_slice(b"0\r\n\r\n");
                    }
                    *sending = Sending::Held;
                }
            },
        }
    }
}

/// Puts `data` in `write` as a body framed `out` takes it.
fn frame_data(write: &mut Vec<u8>, out: Out, data: &[u8]) {
    if out != Out::Chunked {
        write.extend_from_slice(data);
    } else if !data.is_empty() {
        // An empty chunk would end the body.
        let mut size = [0u8; 16];
        let digits = hex(data.len(), &mut size);
        write.extend_from_slice(digits);
        write.extend_from_slice(b"\r\n");
        write.extend_from_slice(data);
        write.extend_from_slice(b"\r\n");
    }
}

/// `n` in hexadecimal digits, written at the end of `buf`.
fn hex(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// Reads until an answer's head has come whole; its fields go into `fields`.
fn poll_answer(
    conn: &mut Conn,
    head: bool,
    fields: &mut HeaderMap,
    cx: &mut Context<'_>,
) -> Poll<Result<h1::Answer, Lost>> {
    loop {
        // Nothing to parse until something has come.
        let read = &mut conn.read;
        match (!read.is_empty()).then(|| h1::take_answer(read, head, fields)) {
            Some(Ok(Some(answer))) => return Poll::Ready(Ok(answer)),
            None | Some(Ok(None)) => {}
            Some(Err(h1::Bad)) => {
                return Poll::Ready(Err(Lost::Fault(UpstreamFault::BadResponse)));
            }
        }
        match ready!(conn.poll_fill(cx)) {
            Ok(0) => return Poll::Ready(Err(Lost::Closed)),
            Ok(_) => {}
            Err(e) if closed(&e) => return Poll::Ready(Err(Lost::Closed)),
            Err(_) => return Poll::Ready(Err(Lost::Fault(UpstreamFault::Reset))),
        }
    }
}

/// Whether a read failed because the upstream closed or reset the connection.
fn closed(e: &io::Error) -> bool {
    use io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    matches!(
        e.kind(),
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_framed_in_lowercase_hex_and_empty_data_sends_nothing() {
        let mut write = Vec::new();
        frame_data(&mut write, Out::Chunked, &[b'x'; 26]);
        frame_data(&mut write, Out::Chunked, b"");
        frame_data(&mut write, Out::Length, b"abc");
        let mut expected = b"1a\r\n".to_vec();
        expected.extend_from_slice(&[b'x'; 26]);
        expected.extend_from_slice(b"\r\nabc");
        assert_eq!(write, expected);
        let mut buf = [0u8; 16];
        assert_eq!(hex(0, &mut buf), b"0");
        assert_eq!(hex(usize::MAX, &mut buf), b"ffffffffffffffff");
    }
}
