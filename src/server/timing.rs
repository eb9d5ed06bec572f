//! A client connection's phases (idle, reading a head, busy answering) and their deadlines,
//! and how long a write may wait on a slow reader. Every instant is passed in: nothing here
//! reads a clock. Where the time is needed only on some paths, it is passed as a function,
//! called only there: a clock read costs more than all the rest.

use std::time::Duration;

use tokio::time::Instant;

use super::head::Protocol;
use crate::config;

/// The limits on the time between requests and on a request head.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    /// The longest `request_timeout` of any route: no HTTP/1.1 answer is written for longer.
    pub answer_timeout: Duration,
}

impl Limits {
    pub fn new(config: &config::Config) -> Limits {
        let server = &config.server;
        let routes = config.routes.iter().map(|r| r.request_timeout);
        Limits {
            header_read_timeout: server.header_read_timeout,
            idle_timeout: server.idle_timeout,
            max_header_bytes: server.max_header_bytes,
            answer_timeout: routes.fold(server.request_timeout, Duration::max),
        }
    }

    /// The shortest time any phase may last.
    pub fn shortest(&self) -> Duration {
        self.header_read_timeout.min(self.idle_timeout)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No request in progress and no byte of the next one yet.
    Idle,
    /// Bytes of a request head have arrived; no request has been handed on for them yet.
    Head,
    /// A request is being answered; its body may be read.
    Busy,
}

/// What the connection's timer, on firing, is to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alarm {
    /// The phase's deadline has passed.
    Expired,
    /// Fire again then.
    At(Instant),
    /// The phase has no deadline.
    Off,
}

/// A write has waited on the client for longer than it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooSlow;

/// The connection's phase and when it began.
#[derive(Debug)]
pub struct Timing {
    phase: Phase,
    /// No request has been answered yet on this connection.
    first: bool,
    /// When the current phase began; its deadline is this plus the phase's timeout. In an
    /// HTTP/1.1 request, when its head began; in HTTP/2, when its answers last moved.
    since: Instant,
    /// The answers' progress count when last looked at.
    progress: usize,
    /// Since when the client has taken none of what is written to it.
    stalled: Option<Instant>,
}

impl Timing {
    /// A connection accepted at `now`: it must send its first head within
    /// `header_read_timeout`.
    pub fn new(now: Instant) -> Timing {
        Timing {
            phase: Phase::Idle,
            first: true,
            since: now,
            progress: 0,
            stalled: None,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn since(&self) -> Instant {
        self.since
    }

    /// Takes whether requests are in progress, as a read finds it. True when the connection
    /// has just become idle: its last request ended.
    pub fn settle(
        &mut self,
        busy: bool,
        protocol: Protocol,
        now: impl FnOnce() -> Instant,
    ) -> bool {
        match (self.phase, busy) {
            (Phase::Busy, false) => {
                self.phase = Phase::Idle;
                self.since = now();
                true
            }
            (Phase::Idle | Phase::Head, true) => {
                self.phase = Phase::Busy;
                self.first = false;
                // HTTP/2: the answers' progress is measured from here (HTTP/1.1 keeps the time
                // its head began).
                if protocol == Protocol::Http2 {
                    self.since = now();
                }
                false
            }
            _ => false,
        }
    }

    /// The first bytes of a head arrived while idle.
    pub fn head_began(&mut self, now: impl FnOnce() -> Instant) {
        self.phase = Phase::Head;
        // The first head's time runs from the connection's start, not from its first byte.
        if !self.first {
            self.since = now();
        }
    }

    /// The deadline of the current phase. While HTTP/1.1 answers a request there is none: a
    /// write that waits has its own. An HTTP/2 connection whose answers hand on nothing for
    /// longer than any answer may wait on its upstream, and then `idle_timeout`, has a client
    /// that grants them no window (as nginx's `send_timeout` bounds such streams).
    pub fn deadline(&self, limits: &Limits, protocol: Protocol) -> Option<Instant> {
        match self.phase {
            // Until the first request, a connection has header_read_timeout to send its head.
            Phase::Idle if self.first => Some(self.since + limits.header_read_timeout),
            Phase::Idle => Some(self.since + limits.idle_timeout),
            Phase::Head => Some(self.since + limits.header_read_timeout),
            Phase::Busy if protocol == Protocol::Http2 => {
                Some(self.since + limits.answer_timeout + limits.idle_timeout)
            }
            Phase::Busy => None,
        }
    }

    /// The timer fired at `now`, with the answers' progress count at `progress`. Set again,
    /// it fires no later than the deadline, nor than the earliest deadline a later phase could
    /// have: so a request moves the deadline without touching the runtime's timers.
    pub fn alarm(
        &mut self,
        now: Instant,
        progress: usize,
        limits: &Limits,
        protocol: Protocol,
    ) -> Alarm {
        if self.phase == Phase::Busy && progress != self.progress {
            self.progress = progress;
            self.since = now;
        }
        match self.deadline(limits, protocol) {
            None => Alarm::Off,
            Some(deadline) if deadline <= now => Alarm::Expired,
            Some(deadline) => Alarm::At(deadline.min(now + limits.shortest())),
        }
    }

    /// A write must wait on the client at `now`: when to look again, unless it has waited too
    /// long. A client that takes nothing for `idle_timeout` is gone, as nginx's `send_timeout`
    /// has it. One that reads, but too slowly to take an HTTP/1.1 answer within the longest
    /// `request_timeout` from its head, is let go too: hyper reads no more of the answer while
    /// a write waits, so the answer's own deadline cannot see it.
    pub fn write_waits(
        &mut self,
        now: Instant,
        limits: &Limits,
        protocol: Protocol,
    ) -> Result<Instant, TooSlow> {
        let answering = self.phase == Phase::Busy && protocol == Protocol::Http1;
        let answer_end = answering.then(|| self.since + limits.answer_timeout);
        let gone = *self.stalled.get_or_insert(now) + limits.idle_timeout;
        if now >= gone || answer_end.is_some_and(|end| now >= end) {
            return Err(TooSlow);
        }
        Ok(answer_end.map_or(gone, |end| end.min(gone)))
    }

    /// The client took some of what was written. Bytes of an answer that go out after its
    /// request ended keep the connection from counting as idle (HTTP/1.1 only: over HTTP/2
    /// they may be answers to pings, which are no use).
    pub fn write_went(&mut self, protocol: Protocol, now: impl FnOnce() -> Instant) {
        if self.stalled.is_some() {
            self.stalled = None;
        }
        if self.phase == Phase::Idle && protocol == Protocol::Http1 {
            self.since = now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Protocol::{Http1, Http2};

    const LIMITS: Limits = Limits {
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        max_header_bytes: 1024,
        answer_timeout: Duration::from_secs(30),
    };

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn unused() -> Instant {
        panic!("the time was read where it is not needed")
    }

    #[test]
    fn a_new_connection_has_header_read_timeout_from_its_start_for_its_first_head() {
        let t0 = Instant::now();
        let mut timing = Timing::new(t0);
        assert_eq!(timing.deadline(&LIMITS, Http1), Some(t0 + secs(10)));
        timing.head_began(unused);
        assert_eq!(timing.phase(), Phase::Head);
        assert_eq!(timing.deadline(&LIMITS, Http1), Some(t0 + secs(10)));
        assert_eq!(
            timing.alarm(t0 + secs(9), 0, &LIMITS, Http1),
            Alarm::At(t0 + secs(10))
        );
        assert_eq!(
            timing.alarm(t0 + secs(10), 0, &LIMITS, Http1),
            Alarm::Expired
        );
    }

    #[test]
    fn a_kept_alive_connection_has_idle_timeout_then_header_read_timeout_from_the_heads_start() {
        let t0 = Instant::now();
        let mut timing = Timing::new(t0);
        timing.head_began(unused);
        assert!(!timing.settle(true, Http1, unused));
        assert_eq!(timing.phase(), Phase::Busy);
        assert_eq!(
            timing.deadline(&LIMITS, Http1),
            None,
            "a waiting write has its own"
        );
        assert_eq!(timing.alarm(t0 + secs(500), 0, &LIMITS, Http1), Alarm::Off);
        assert!(!timing.settle(true, Http1, unused), "no change");
        assert!(timing.settle(false, Http1, || t0 + secs(2)));
        assert_eq!(timing.deadline(&LIMITS, Http1), Some(t0 + secs(62)));
        // The timer fires at most a shortest phase apart, so a new phase's deadline is seen.
        assert_eq!(
            timing.alarm(t0 + secs(3), 0, &LIMITS, Http1),
            Alarm::At(t0 + secs(13))
        );
        timing.head_began(|| t0 + secs(20));
        assert_eq!(timing.deadline(&LIMITS, Http1), Some(t0 + secs(30)));
    }

    #[test]
    fn idle_writes_of_an_http1_answer_move_the_idle_deadline() {
        let t0 = Instant::now();
        let mut timing = Timing::new(t0);
        timing.settle(true, Http1, unused);
        timing.settle(false, Http1, || t0 + secs(1));
        timing.write_went(Http1, || t0 + secs(50));
        assert_eq!(timing.deadline(&LIMITS, Http1), Some(t0 + secs(110)));
        timing.write_went(Http2, unused);
        assert_eq!(timing.deadline(&LIMITS, Http1), Some(t0 + secs(110)));
    }

    #[test]
    fn an_http2_connection_is_cut_when_its_answers_make_no_progress() {
        let t0 = Instant::now();
        let mut timing = Timing::new(t0);
        timing.settle(true, Http2, || t0 + secs(1));
        let stuck = t0 + secs(1 + 30 + 60);
        assert_eq!(timing.deadline(&LIMITS, Http2), Some(stuck));
        // Progress at the timer moves the deadline.
        assert_eq!(
            timing.alarm(t0 + secs(5), 1, &LIMITS, Http2),
            Alarm::At(t0 + secs(15))
        );
        assert_eq!(timing.deadline(&LIMITS, Http2), Some(t0 + secs(5 + 90)));
        assert_eq!(
            timing.alarm(t0 + secs(95), 1, &LIMITS, Http2),
            Alarm::Expired
        );
    }

    #[test]
    fn a_write_may_wait_idle_timeout_and_an_http1_answer_no_longer_than_answer_timeout() {
        let t0 = Instant::now();
        let mut timing = Timing::new(t0);
        // Idle, or HTTP/2: idle_timeout from when the client stopped taking bytes.
        assert_eq!(
            timing.write_waits(t0 + secs(1), &LIMITS, Http1),
            Ok(t0 + secs(61))
        );
        assert_eq!(
            timing.write_waits(t0 + secs(60), &LIMITS, Http1),
            Ok(t0 + secs(61))
        );
        assert_eq!(
            timing.write_waits(t0 + secs(61), &LIMITS, Http1),
            Err(TooSlow)
        );
        timing.write_went(Http1, || t0 + secs(61));
        assert_eq!(
            timing.write_waits(t0 + secs(70), &LIMITS, Http1),
            Ok(t0 + secs(130))
        );
        // An HTTP/1.1 answer: also answer_timeout from its head.
        let mut timing = Timing::new(t0);
        timing.settle(true, Http1, unused);
        assert_eq!(
            timing.write_waits(t0 + secs(20), &LIMITS, Http1),
            Ok(t0 + secs(30))
        );
        timing.write_went(Http1, unused);
        assert_eq!(
            timing.write_waits(t0 + secs(30), &LIMITS, Http1),
            Err(TooSlow)
        );
        assert_eq!(
            timing.write_waits(t0 + secs(30), &LIMITS, Http2),
            Ok(t0 + secs(90))
        );
    }
}
