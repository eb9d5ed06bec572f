//! Small vectored writes sent as one plain write.
//!
//! hyper hands a message's head and body over as separate slices, to be written with one
//! `writev`. On Linux a `writev` to a socket also passes through the file layer and copies
//! each slice into the socket on its own, which costs more in the kernel than copying a few
//! hundred bytes in user space; a plain `send` of one buffer does neither. Most answers a
//! proxy writes are that small.

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::{ptr, slice};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Writes of up to this many bytes in all are copied into one buffer on the stack.
const FLAT: usize = 4096;

/// Writes `bufs` as `poll_write_vectored` would: one non-empty slice, or several that fit in 4 KiB
/// together, as one plain write; anything larger as a vectored write, uncopied.
pub fn poll_write_flat<W: AsyncWrite + ?Sized>(
    io: Pin<&mut W>,
    cx: &mut Context<'_>,
    bufs: &[IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    let mut nonempty = bufs.iter().filter(|b| !b.is_empty());
    let (Some(first), second) = (nonempty.next(), nonempty.next()) else {
        return io.poll_write(cx, &[]);
    };
    let Some(second) = second else {
        return io.poll_write(cx, first);
    };
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    if total > FLAT {
        return io.poll_write_vectored(cx, bufs);
    }
    // Left uninitialized: zeroing it would cost more than the copy.
    let mut flat = [MaybeUninit::<u8>::uninit(); FLAT];
    let mut len = 0;
    for b in [first, second].into_iter().chain(nonempty) {
        // SAFETY: all the slices together fit in `flat` (checked above), so this one fits
        // after those before it; a slice passed in cannot overlap a buffer made here.
        unsafe { ptr::copy_nonoverlapping(b.as_ptr(), flat.as_mut_ptr().add(len).cast(), b.len()) };
        len += b.len();
    }
    // SAFETY: the first `len` bytes were written just above.
    let flat = unsafe { slice::from_raw_parts(flat.as_ptr().cast::<u8>(), len) };
    io.poll_write(cx, flat)
}

/// A stream whose vectored writes go through [`poll_write_flat`]. It still reports vectored
/// writes as supported, so that hyper queues a large body's chunks rather than copying them.
#[derive(Debug)]
pub struct FlatWrites<S>(pub S);

impl<S: AsyncRead + Unpin> AsyncRead for FlatWrites<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FlatWrites<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        poll_write_flat(Pin::new(&mut self.get_mut().0), cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes at most `room` bytes per call, and notes how each call came.
    struct Recorder {
        calls: Vec<(&'static str, usize)>,
        out: Vec<u8>,
        room: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let n = data.len().min(this.room);
            this.calls.push(("write", data.len()));
            this.out.extend_from_slice(&data[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.calls.push(("writev", bufs.len()));
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(this.room - n);
                this.out.extend_from_slice(&b[..take]);
                n += take;
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn write(room: usize, parts: &[&[u8]]) -> (usize, Recorder) {
        let mut io = Recorder {
            calls: Vec::new(),
            out: Vec::new(),
            room,
        };
        let bufs: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let Poll::Ready(Ok(n)) = poll_write_flat(Pin::new(&mut io), &mut cx, &bufs) else {
            panic!("the recorder is always ready");
        };
        (n, io)
    }

    #[test]
    fn a_head_and_a_small_body_go_as_one_plain_write() {
        let (n, io) = write(usize::MAX, &[b"HTTP/1.1 200 OK\r\n\r\n", b"", b"{}", b"\n"]);
        assert_eq!(io.calls, [("write", 22)]);
        assert_eq!(io.out, b"HTTP/1.1 200 OK\r\n\r\n{}\n");
        assert_eq!(n, 22);
    }

    #[test]
    fn one_slice_is_written_as_it_is() {
        let big = vec![7u8; 3 * FLAT];
        let (n, io) = write(usize::MAX, &[b"", &big]);
        assert_eq!((n, io.calls), (3 * FLAT, vec![("write", 3 * FLAT)]));
        let (n, io) = write(usize::MAX, &[b"", b""]);
        assert_eq!((n, io.calls), (0, vec![("write", 0)]));
    }

    #[test]
    fn slices_larger_together_than_the_buffer_stay_vectored() {
        let body = vec![1u8; FLAT];
        let (n, io) = write(usize::MAX, &[b"head", &body]);
        assert_eq!(io.calls, [("writev", 2)]);
        assert_eq!(n, FLAT + 4);
        assert_eq!(&io.out[..4], b"head");
        let (n, io) = write(usize::MAX, &[&body[..FLAT - 4], b"head"]);
        assert_eq!((n, io.calls), (FLAT, vec![("write", FLAT)]));
    }

    #[test]
    fn a_short_write_reports_what_went() {
        let (n, io) = write(5, &[b"abc", b"defgh"]);
        assert_eq!(n, 5);
        assert_eq!(io.out, b"abcde");
    }
}
