//! A connection to an upstream with its buffers, and an answer's body read from it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use http_body::SizeHint;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::io::poll_read_buf;

use super::{Bad, Framing, Step};

/// The room a read asks for: an answer's head and a small body at once.
const READ: usize = 8 * 1024;

/// A write buffer grown past this by a large chunk is not kept for the next request.
const KEEP_WRITE: usize = 64 * 1024;

/// The transport: TCP, or TLS over it.
pub enum Io {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// An HTTP/1.1 connection to an upstream, used by one request at a time.
pub struct Conn {
    io: Io,
    /// Bytes read and not yet taken: the start of an answer, or of its body.
    pub read: BytesMut,
    /// Bytes to write (a request's head, and its body or a chunk of it); emptied once written.
    pub write: Vec<u8>,
    /// How much of `write` is written.
    written: usize,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tls = matches!(self.io, Io::Tls(_));
        f.debug_struct("Conn")
            .field("tls", &tls)
            .finish_non_exhaustive()
    }
}

impl Conn {
    pub fn new(io: Io) -> Conn {
        Conn {
            io,
            read: BytesMut::new(),
            write: Vec::new(),
            written: 0,
        }
    }

    /// Reads what has come into `read`; `Ok(0)` once the upstream has closed the connection.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < READ / 2 {
            // Reclaims the buffer's own room once the answers that shared it are gone.
            self.read.reserve(READ);
        }
        poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
    }

    /// Writes all that `write` holds, and flushes it.
    pub fn poll_flush_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.write.len() {
            let rest = &self.write[self.written..];
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        self.written = 0;
        if self.write.capacity() > KEEP_WRITE {
            self.write = Vec::new();
        } else {
            self.write.clear();
        }
        Poll::Ready(Ok(()))
    }

    /// Writes `data` uncopied (a large body), after all that `write` holds.
    pub fn poll_write_bytes(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Bytes,
    ) -> Poll<io::Result<()>> {
        ready!(self.poll_flush_out(cx))?;
        while !data.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, data))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            data.advance(n);
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Whether the upstream closed this connection (or broke it, or sent bytes nobody asked
    /// for) while it lay idle. The socket is only read if it has become readable since it was
    /// last read dry: while nothing has come, this costs no system call.
    pub fn closed_while_idle(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        self.poll_fill(&mut cx).is_ready()
    }
}

/// An answer's body, read off its connection as the client takes it. The connection is had
/// back ([`Reader::take_conn`]) once the body has ended whole, if it may carry another request.
#[derive(Debug)]
pub struct Reader {
    conn: Option<Box<Conn>>,
    framing: Framing,
    keep_alive: bool,
    /// Why the body broke off, held back for one poll (see `poll_data`).
    broke: Option<io::Error>,
}

impl Reader {
    pub fn new(conn: Box<Conn>, framing: Framing, keep_alive: bool) -> Reader {
        Reader {
            conn: Some(conn),
            framing,
            keep_alive,
            broke: None,
        }
    }

    pub fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    pub fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }

    /// The connection, for the next request: only once the body has ended whole, on a
    /// connection that stays open, with nothing read past the body's end.
    pub fn take_conn(&mut self) -> Option<Box<Conn>> {
        let reusable = self.keep_alive && self.framing == Framing::Done;
        let conn = self.conn.take()?;
        (reusable && conn.read.is_empty()).then_some(conn)
    }

    /// The body's next bytes: `None` at its end, an error if it broke off.
    ///
    /// A break is reported one poll late, the task woken at once: the bytes that came before
    /// it may still sit in the client connection's buffer, and an error would close that
    /// connection without writing them. Pending first lets them be flushed.
    pub fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        if let Some(e) = self.broke.take() {
            return Poll::Ready(Some(Err(e)));
        }
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        let broke = loop {
            match self.framing.next(&mut conn.read) {
                Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(data))),
                Ok(Step::End) => return Poll::Ready(None),
                Ok(Step::More) => {}
                Err(Bad) => break malformed(),
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if self.framing.ends_at_close() => return Poll::Ready(None),
                Ok(0) => break io::ErrorKind::UnexpectedEof.into(),
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        self.conn = None; // mid-message: closed, never reused
        self.broke = Some(broke);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

fn malformed() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "malformed chunked body")
}
