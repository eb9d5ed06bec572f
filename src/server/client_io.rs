//! A client connection's stream, as hyper reads and writes it: the glue between the socket,
//! the head meter (`head`), the phase timing (`timing`) and the requests the service answers
//! (`activity`). hyper has not seen a request yet while a head arrives, so a 408 or 431 for
//! it is written here, and the connection closed. hyper's own bare answer to a head it cannot
//! parse is replaced here with a problem, like every other refusal.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::activity::ConnState;
use super::head::{Meter, Preface, Protocol, Verdict};
use super::timing::{Alarm, Limits, Phase, Timing};
use crate::pipeline::Proxy;
use crate::problem::{Deadline, Malformed, Problem};

/// A worker's proxy for the generation in force, swapped on reload; each request takes the
/// current one, so a reload reaches connections that are already open.
pub type Current = Arc<arc_swap::ArcSwap<Proxy>>;

/// The stream, with the timers and counters of the phase between requests.
pub struct ClientIo<S> {
    stream: S,
    /// The generation in force, swapped at a reload; seeing whether it changed is one load.
    current: arc_swap::Cache<Current, Arc<Proxy>>,
    /// The generation the current head is read under: its request ids, and `limits`.
    proxy: Arc<Proxy>,
    state: Arc<ConnState>,
    limits: Limits,
    preface: Preface,
    timing: Timing,
    /// Never later than the deadline of the current phase; on firing, the real deadline is
    /// checked and the timer set again (see `Timing::alarm`).
    timer: Pin<Box<Sleep>>,
    /// Wakes the connection when a waiting write has waited too long; made only once a write
    /// has had to wait.
    write_timer: Option<Pin<Box<Sleep>>>,
    /// The current head, until its end (or a fault) is found.
    meter: Option<Meter>,
    /// `ConnState::started` when hyper last had nothing left to write and no request in
    /// progress: every request until then has been answered in full.
    answered: usize,
    /// The problem written in place of hyper's own answer, and how much of it has gone out.
    /// Once set, anything more hyper writes is dropped: the connection is closing.
    replacement: Option<(Vec<u8>, usize)>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> ClientIo<S> {
    pub fn new(stream: S, current: Current, state: Arc<ConnState>) -> ClientIo<S> {
        let mut current = arc_swap::Cache::new(current);
        let proxy = current.load().clone();
        let limits = Limits::new(&proxy.app.config);
        let now = Instant::now();
        ClientIo {
            stream,
            current,
            proxy,
            state,
            limits,
            preface: Preface::default(),
            timing: Timing::new(now),
            timer: Box::pin(tokio::time::sleep_until(now + limits.shortest())),
            write_timer: None,
            meter: None,
            answered: 0,
            replacement: None,
        }
    }

    fn protocol(&self) -> Protocol {
        self.preface.protocol()
    }

    /// Keeps account of a write: see `Timing::write_waits`.
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match &polled {
            Poll::Pending => {
                let protocol = self.protocol();
                let Ok(wake) = self
                    .timing
                    .write_waits(Instant::now(), &self.limits, protocol)
                else {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client did not take its answer in time",
                    )));
                };
                let timer = self
                    .write_timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(wake)));
                if timer.deadline() != wake {
                    timer.as_mut().reset(wake);
                }
                let _ = timer.as_mut().poll(cx); // wakes this task when the limit passes
            }
            Poll::Ready(Ok(n)) if *n > 0 => self.timing.write_went(self.protocol(), Instant::now),
            Poll::Ready(_) => {}
        }
        polled
    }

    /// Whether the current phase's deadline has passed; if not, the timer is set again.
    fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        while self.timer.as_mut().poll(cx).is_ready() {
            let progress = self.state.progress();
            let protocol = self.protocol();
            match self
                .timing
                .alarm(Instant::now(), progress, &self.limits, protocol)
            {
                Alarm::Expired => return true,
                Alarm::At(next) => self.timer.as_mut().reset(next),
                Alarm::Off => return false,
            }
        }
        false
    }

    /// The timer ran out: an idle connection ends quietly; a half-sent head gets a 408; an
    /// HTTP/2 connection stuck on its answers is cut.
    fn expire(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.timing.phase() {
            Phase::Head => {
                self.answer(cx, &Problem::TimedOut(Deadline::Head));
                Err(io::ErrorKind::TimedOut.into())
            }
            Phase::Busy => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took none of its answers in time",
            )),
            Phase::Idle => Ok(()), // end of stream: hyper closes the connection cleanly
        }
    }

    /// Asked to close to make room for a newer connection (see `cap`): an idle connection ends
    /// quietly, as at its idle timeout; a half-sent head gets a 503.
    fn make_room(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.timing.phase() {
            Phase::Head => {
                self.answer(cx, &Problem::Overloaded);
                let error = "closed to make room under max_connections";
                Err(io::Error::new(io::ErrorKind::ConnectionAborted, error))
            }
            Phase::Idle | Phase::Busy => Ok(()), // end of stream: hyper closes the connection
        }
    }

    /// Writes a problem straight to the stream, and ends it (over TLS, with a close_notify,
    /// so that the client reads the answer as complete); best effort, as the connection ends
    /// anyway.
    fn answer(&mut self, cx: &mut Context<'_>, problem: &Problem) {
        let bytes = self.problem_bytes(problem);
        let mut sent = 0;
        while sent < bytes.len() {
            match Pin::new(&mut self.stream).poll_write(cx, &bytes[sent..]) {
                Poll::Ready(Ok(n)) if n > 0 => sent += n,
                _ => return,
            }
        }
        let _ = Pin::new(&mut self.stream).poll_flush(cx);
        let _ = Pin::new(&mut self.stream).poll_shutdown(cx);
    }

    /// A problem as a whole HTTP/1.1 answer, with a fresh request id; counted and logged as
    /// an answer to a request with no method.
    fn problem_bytes(&self, problem: &Problem) -> Vec<u8> {
        let id = self.proxy.new_request_id();
        let header = &self.proxy.app.config.headers.request_id;
        let (bytes, body) = problem.to_http1(header, id.to_str().unwrap_or_default());
        let status = problem.status();
        let since = self.timing.since();
        self.proxy
            .answered_alone(None, &id, status, body as u64, since);
        bytes
    }

    /// Accounts for bytes read while no request is being answered.
    fn saw_head_bytes(&mut self, cx: &mut Context<'_>, new: &[u8]) -> io::Result<()> {
        if self.preface.sniff(new) != Protocol::Http1 {
            return Ok(()); // HTTP/2 has no head phase
        }
        if self.timing.phase() == Phase::Idle {
            self.head_begins();
        }
        let Some(meter) = &mut self.meter else {
            // Past the end of the head: a body, or the next heads.
            self.state.set_unmeasured(true);
            return Ok(());
        };
        // What follows a head in the same read is within the limit if the whole read is.
        let fits = meter.seen() + new.len() <= self.limits.max_header_bytes;
        match meter.feed(new) {
            Verdict::More => {}
            Verdict::Fits => self.meter = None,
            Verdict::Complete(n) => {
                self.meter = None;
                if n < new.len() && !fits {
                    self.state.set_unmeasured(true);
                }
            }
            Verdict::TooLarge => {
                self.answer(cx, &Problem::HeadTooLarge);
                let error = "request head too large";
                return Err(io::Error::new(io::ErrorKind::InvalidData, error));
            }
            // Refused before hyper reads it, so no rule of hyper's settles what it means.
            Verdict::Refused(rule) => {
                self.answer(cx, &Problem::Malformed(rule));
                let error = "request head refused: ambiguous framing";
                return Err(io::Error::new(io::ErrorKind::InvalidData, error));
            }
            // hyper refuses it too, and its answer is replaced. Left to hyper because bytes
            // read between requests may yet be the end of a body hyper is reading.
            Verdict::Invalid => self.meter = None,
        }
        Ok(())
    }

    /// The first bytes of a head arrived while idle.
    fn head_begins(&mut self) {
        self.timing.head_began(Instant::now);
        self.state.set_unmeasured(false);
        self.follow_reload();
        let mut meter = Meter::new(self.limits.max_header_bytes);
        let earlier = self.preface.take_matched();
        if !earlier.is_empty() {
            meter.feed(earlier); // a prefix of the HTTP/2 preface: no end, far below a limit
        }
        self.meter = Some(meter);
    }

    /// A phase begins (idle, or a head): if the config was reloaded since, it runs under the
    /// new limits, and its deadline may be nearer than the timer. This also lets go of the old
    /// generation, and with it the old upstream pool.
    fn follow_reload(&mut self) {
        let now = self.current.load();
        if Arc::ptr_eq(now, &self.proxy) {
            return;
        }
        self.proxy = now.clone();
        self.limits = Limits::new(&self.proxy.app.config);
        let deadline = self.timing.deadline(&self.limits, self.protocol());
        if let Some(deadline) = deadline.filter(|&d| d < self.timer.deadline()) {
            self.timer.as_mut().reset(deadline);
        }
    }

    /// Whether hyper writes its own answer: over HTTP/1.1, with every request the service was
    /// handed answered in full. hyper answers nothing else by itself but a head it could not
    /// parse, so this is that answer (or more of hyper's writes after it).
    fn hypers_own(&self) -> bool {
        self.replacement.is_some()
            || (self.protocol() == Protocol::Http1 && self.state.started() == self.answered)
    }

    /// Whether `data`, hyper's own answer, is to be replaced: a 400 or 431 is, by the problem
    /// sluice writes for it. Sets up the problem that goes out instead.
    fn replaces(&mut self, data: &[u8]) -> bool {
        if self.replacement.is_some() {
            return true;
        }
        let problem = match status_of(data) {
            Some(400) => Problem::Malformed(Malformed::Head),
            Some(431) => Problem::HeadTooLarge,
            _ => return false,
        };
        self.replacement = Some((self.problem_bytes(&problem), 0));
        true
    }

    /// Writes what is left of the replacing problem.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some((bytes, sent)) = &mut self.replacement else {
            return Poll::Ready(Ok(()));
        };
        while *sent < bytes.len() {
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, &bytes[*sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *sent += n;
        }
        Poll::Ready(Ok(()))
    }
}

/// The status of the answer `data` begins with, read from its status line. Read by hand: were
/// httparse's answer parser called here too, it would no longer be inlined where hyper's client
/// parses every upstream answer.
fn status_of(data: &[u8]) -> Option<u16> {
    let [_, b' ', digits @ ..] = data.strip_prefix(b"HTTP/1.")?.get(..5)? else {
        return None;
    };
    let digit = |d: &u8| d.is_ascii_digit().then(|| u16::from(d - b'0'));
    digits
        .iter()
        .try_fold(0, |status, d| Some(status * 10 + digit(d)?))
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ClientIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let (busy, protocol) = (this.state.busy(), this.protocol());
        if this.timing.settle(busy, protocol, Instant::now) {
            this.follow_reload();
        }
        let phase = this.timing.phase();
        this.state.wake_reader(cx.waker());
        if phase != Phase::Busy && this.state.evicted() {
            return Poll::Ready(this.make_room(cx));
        }
        if (phase != Phase::Busy || protocol == Protocol::Http2) && this.timed_out(cx) {
            return Poll::Ready(this.expire(cx));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.stream).poll_read(cx, buf))?;
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            if phase != Phase::Busy {
                this.saw_head_bytes(cx, new)?;
            } else if protocol == Protocol::Http1 {
                this.state.set_unmeasured(true);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ClientIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.hypers_own() && this.replaces(data) {
            ready!(this.poll_replacement(cx))?;
            return Poll::Ready(Ok(data.len()));
        }
        let polled = Pin::new(&mut this.stream).poll_write(cx, data);
        this.wrote(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.hypers_own() {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            if this.replaces(first) {
                ready!(this.poll_replacement(cx))?;
                return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
            }
        }
        let polled = crate::flat::poll_write_flat(Pin::new(&mut this.stream), cx, bufs);
        this.wrote(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    /// hyper flushes once it has written all it had: with no request in progress either,
    /// every answer owed so far has gone out.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let started = this.state.started();
        if started != this.answered && !this.state.busy() {
            this.answered = started;
        }
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
