//! What caused a problem, by kind: where it came from, the upstream's fault, the deadline
//! that passed, the limit gone past, the rule of HTTP a request broke.

use std::borrow::Cow;

use http::StatusCode;

use super::Problem;

/// Where a problem came from: what decides how it is logged and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The request: its head, body, credentials, rate or shape.
    Client,
    /// The upstream: refused, reset, slow, or not HTTP.
    Upstream,
    /// The limiter's shared store.
    Store,
    /// sluice itself: a fault, overload, or shutdown.
    Own,
}

impl Source {
    /// The label of the problems counter.
    pub fn label(self) -> &'static str {
        match self {
            Source::Client => "client",
            Source::Upstream => "upstream",
            Source::Store => "store",
            Source::Own => "own",
        }
    }
}

/// What went wrong on the upstream's side: the problem it answers, and its metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamFault {
    #[error("every target refused the connection")]
    Refused,
    #[error("the upstream closed or reset the connection")]
    Reset,
    #[error("the upstream did not answer, or end its answer, within request_timeout")]
    TimedOut,
    #[error("the upstream sent an invalid response")]
    BadResponse,
    #[error("every target failed within the last second")]
    NoHealthyTarget,
    #[error("the TLS handshake with the upstream failed")]
    Tls,
}

impl UpstreamFault {
    /// Every fault, in the order of their discriminants (their metrics counters' order).
    pub const ALL: [UpstreamFault; 6] = [
        UpstreamFault::Refused,
        UpstreamFault::Reset,
        UpstreamFault::TimedOut,
        UpstreamFault::BadResponse,
        UpstreamFault::NoHealthyTarget,
        UpstreamFault::Tls,
    ];

    /// The `kind` label of `sluice_upstream_errors_total`.
    pub fn label(self) -> &'static str {
        match self {
            UpstreamFault::Refused => "refused",
            UpstreamFault::Reset => "reset",
            UpstreamFault::TimedOut => "timeout",
            UpstreamFault::BadResponse => "bad_response",
            UpstreamFault::NoHealthyTarget => "no_healthy_target",
            UpstreamFault::Tls => "tls",
        }
    }

    /// The problem it answers; a timeout is answered `timeout_status`.
    pub fn problem(self, timeout_status: StatusCode) -> Problem {
        match self {
            UpstreamFault::Refused => Problem::UpstreamRefused,
            UpstreamFault::Reset => Problem::UpstreamReset,
            UpstreamFault::TimedOut => Problem::TimedOut(Deadline::Answer {
                status: timeout_status,
            }),
            UpstreamFault::BadResponse => Problem::UpstreamBadResponse,
            UpstreamFault::NoHealthyTarget => Problem::NoHealthyUpstream,
            UpstreamFault::Tls => Problem::UpstreamTls,
        }
    }
}

/// A deadline that passed. Every 408 (and the 504 of `timeout_status`) comes from one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// The request head, within `header_read_timeout`.
    Head,
    /// The request body, within `request_timeout`.
    Body,
    /// The upstream's answer, within `request_timeout`; answered `status` (`timeout_status`).
    Answer { status: StatusCode },
    /// A batch item, within the batch's `request_timeout`.
    Batch,
}

/// A size limit a request went past. Every 413 comes from one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The body is (declared or found to be) larger than the route's `max_body`.
    Body { max: u64 },
    /// A batch of more than `max_requests` items.
    Batch { max: usize },
    /// The request costs more than its policy ever admits at once (a batch over the burst).
    Cost { cost: u32, capacity: u32 },
}

impl Deadline {
    /// 408, but for an upstream's answer: `timeout_status` (408 or 504).
    pub fn status(&self) -> StatusCode {
        match self {
            Deadline::Head | Deadline::Body | Deadline::Batch => StatusCode::REQUEST_TIMEOUT,
            Deadline::Answer { status } => *status,
        }
    }

    pub(super) fn detail(&self) -> &'static str {
        match self {
            Deadline::Head => "The request head did not arrive in time.",
            Deadline::Body => "The request body did not arrive in time.",
            Deadline::Answer { .. } => "The upstream did not answer in time.",
            Deadline::Batch => "The batch's deadline passed before this request finished.",
        }
    }
}

impl Limit {
    pub(super) fn detail(&self) -> Cow<'static, str> {
        match self {
            Limit::Body { max } => format!("The request body is larger than {max} bytes."),
            Limit::Batch { max } => format!("A batch may hold at most {max} requests."),
            Limit::Cost { cost, capacity } => format!(
                "This request can never be admitted: a request costing {cost} can never fit a \
                 quota of {capacity}."
            ),
        }
        .into()
    }
}

/// A request that breaks HTTP/1.1's rules, or sluice's reading of them where it is stricter,
/// as nginx is: what a server and the upstream behind it might read two ways is refused, never
/// guessed at. Every 400 about a request's head comes from one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Not valid HTTP/1.1: the request line, a header line, or a header's value.
    Head,
    /// A method that is not upper-case letters, `-` or `_` (`get`, `G!T`).
    Method,
    /// Two `Host` headers, or none in an HTTP/1.1 request whose target names no host.
    HostCount,
    /// A `Host` that is not a host name or address, with an optional port (`a/evil`, empty).
    Host,
    /// A `%` in the path that does not begin an escape (`%` and two hex digits).
    Escape,
    /// `%00` in the path: a NUL, which ends a string for many a server behind.
    Nul,
    /// A path that climbs above the root (`/../etc/passwd`).
    AboveRoot,
    /// `Content-Length` together with `Transfer-Encoding`: two answers to where the body ends.
    LengthAndCoding,
    /// `Content-Length` more than once, even with the same value.
    RepeatedLength,
    /// `Transfer-Encoding` other than `chunked`, once, exactly (a coding, a tab, a repeat).
    Coding,
}

impl Malformed {
    pub(super) fn detail(self) -> &'static str {
        match self {
            Malformed::Head => "The request head is not valid HTTP/1.1.",
            Malformed::Method => "A method must be upper-case letters, such as GET or POST.",
            Malformed::HostCount => {
                "A request may have one Host header only, and an HTTP/1.1 request must have one."
            }
            Malformed::Host => {
                "The Host header must be a host name or address, with an optional port."
            }
            Malformed::Escape => "The path has a % that does not begin an escape (%XX).",
            Malformed::Nul => "The path may not contain %00.",
            Malformed::AboveRoot => "The path climbs above the root with '..'.",
            Malformed::LengthAndCoding => {
                "A request may not have both Content-Length and Transfer-Encoding."
            }
            Malformed::RepeatedLength => "A request may have one Content-Length header only.",
            Malformed::Coding => {
                "Transfer-Encoding may only be chunked, once; other codings are not supported."
            }
        }
    }

    /// Whether the connection is closed after the answer: once a body's framing is in doubt,
    /// so is where the next request begins.
    pub(super) fn closes_connection(self) -> bool {
        match self {
            Malformed::Head
            | Malformed::LengthAndCoding
            | Malformed::RepeatedLength
            | Malformed::Coding => true,
            Malformed::Method
            | Malformed::HostCount
            | Malformed::Host
            | Malformed::Escape
            | Malformed::Nul
            | Malformed::AboveRoot => false,
        }
    }
}

/// Why an `Idempotency-Key` is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFault {
    /// `""`.
    Empty,
    /// More than 255 characters.
    TooLong,
    /// Not a Structured Field String: unquoted, an escape other than `\"` or `\\`, a
    /// character outside printable ASCII, or anything after the closing quote.
    NotString,
    /// The field given more than once.
    Repeated,
}

impl KeyFault {
    pub(super) fn detail(self) -> &'static str {
        match self {
            KeyFault::Empty => "The Idempotency-Key is empty.",
            KeyFault::TooLong => "The Idempotency-Key is longer than 255 characters.",
            KeyFault::NotString => {
                "The Idempotency-Key must be a Structured Field String: printable ASCII in double quotes, such as \"8e03978e-40d5-43e8-bc93-6894a57f9324\"."
            }
            KeyFault::Repeated => "The Idempotency-Key is given more than once.",
        }
    }
}

/// The parts of a request that differ from the one its `Idempotency-Key` was first used with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mismatch {
    pub method: bool,
    /// The path with its query.
    pub path: bool,
    pub body: bool,
}

impl Mismatch {
    /// The names of the parts that differ: `method`, `path`, `body`.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        [
            (self.method, "method"),
            (self.path, "path"),
            (self.body, "body"),
        ]
        .into_iter()
        .filter_map(|(differs, name)| differs.then_some(name))
    }
}
