//! The one place where sluice's own refusals and faults become HTTP: RFC 9457 problem details
//! (`application/problem+json`). Responses from the upstream never pass through here.
//!
//! Each problem says where it came from ([`Source`]: the client, the upstream, the limiter's
//! store, or sluice itself), and every status is decided here, in one exhaustive `match`: every
//! 408 comes from a [`Deadline`] that passed, every 413 from a [`Limit`] a request went past.
//! A leaf: it knows HTTP and JSON, not the bodies or phases that carry its answers.

mod cause;
mod render;

use std::borrow::Cow;

use http::StatusCode;
use http::header::HeaderValue;

pub use cause::{Deadline, KeyFault, Limit, Malformed, Mismatch, Source, UpstreamFault};
pub use render::Violated;

/// The problem type of a 429, registered with IANA.
pub const QUOTA_EXCEEDED: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";

/// The problem types of the `Idempotency-Key` refusals: sluice's own (the draft registers
/// none), one per refusal so that a client can tell them apart.
pub const IDEMPOTENCY_KEY_MISSING: &str = "urn:sluice:problem:idempotency-key-missing";
pub const IDEMPOTENCY_KEY_MALFORMED: &str = "urn:sluice:problem:idempotency-key-malformed";
pub const IDEMPOTENCY_KEY_IN_FLIGHT: &str = "urn:sluice:problem:idempotency-key-in-flight";
pub const IDEMPOTENCY_KEY_REUSED: &str = "urn:sluice:problem:idempotency-key-reused";

/// One invalid field of a batch, for the `errors` member of a 422.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// A JSON pointer into the request body, e.g. `/requests/3/method`.
    pub field: String,
    pub message: String,
}

/// Everything sluice answers by itself, named by what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A deadline passed.
    TimedOut(Deadline),
    /// A request went past a size limit.
    TooLarge(Limit),
    /// A batch that is valid JSON but not a valid batch.
    BatchInvalid { errors: Vec<FieldError> },
    /// A reloaded config that does not validate; the running one stays.
    ConfigInvalid { errors: Vec<FieldError> },
    /// A batch item whose dependency did not answer 2xx.
    DependencyFailed { dependency: String, status: u16 },
    /// The request head is larger than `max_header_bytes`.
    HeadTooLarge,
    /// The request breaks a rule of HTTP/1.1.
    Malformed(Malformed),
    /// No route matches the path.
    NoRoute,
    /// The route exists but not for this method; `allow` lists the methods it takes.
    MethodNotAllowed { allow: HeaderValue },
    /// `auth.mode = "api_keys"` and the request presents no key.
    MissingCredentials,
    /// The presented key is not one of `[[auth.keys]]`.
    UnknownCredentials,
    /// The key is valid (`key`, its place in `[[auth.keys]]`) but lacks `scope`, which the
    /// route requires.
    MissingScope { scope: String, key: usize },
    /// Over the rate limit: retry after `retry_after` seconds; `violated` names the limits.
    RateLimited {
        retry_after: u64,
        violated: Violated,
    },
    /// The body's media type is not one the route accepts.
    UnsupportedMediaType { accepted: Vec<String> },
    /// The body is not valid JSON where the route validates it.
    InvalidJson {
        line: usize,
        column: usize,
        reason: String,
    },
    /// The client broke off while sending the body.
    UnreadableBody,
    /// Every target of the upstream refused the connection or could not be reached in time.
    UpstreamRefused,
    /// The upstream closed or reset the connection before a complete answer.
    UpstreamReset,
    /// The upstream answered with something that is not HTTP.
    UpstreamBadResponse,
    /// The TLS handshake with an `https://` upstream failed: its certificate did not verify.
    UpstreamTls,
    /// Every target of the upstream failed recently; none is tried until one recovers.
    NoHealthyUpstream,
    /// More open client connections than `max_connections`.
    Overloaded,
    /// Shutdown has begun; the client should go elsewhere.
    Draining,
    /// The route requires an `Idempotency-Key` and the request has none.
    IdempotencyKeyMissing,
    /// The `Idempotency-Key` is not one.
    IdempotencyKeyMalformed(KeyFault),
    /// A request with the same `Idempotency-Key` is still in flight.
    IdempotencyKeyInFlight,
    /// The `Idempotency-Key` was first used with another method, path or body.
    IdempotencyKeyReused(Mismatch),
    /// The shared limiter store is unreachable and `on_error = "deny"`.
    StoreUnavailable,
    /// A fault inside sluice.
    Internal,
}

impl Problem {
    /// The status: one arm per kind of problem, and no other place decides one.
    pub fn status(&self) -> StatusCode {
        match self {
            Problem::TimedOut(deadline) => deadline.status(),
            Problem::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Problem::BatchInvalid { .. } | Problem::ConfigInvalid { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Problem::DependencyFailed { .. } => StatusCode::FAILED_DEPENDENCY,
            Problem::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Problem::NoRoute => StatusCode::NOT_FOUND,
            Problem::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Problem::MissingCredentials | Problem::UnknownCredentials => StatusCode::UNAUTHORIZED,
            Problem::MissingScope { .. } => StatusCode::FORBIDDEN,
            Problem::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Problem::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Problem::InvalidJson { .. }
            | Problem::UnreadableBody
            | Problem::Malformed(_)
            | Problem::IdempotencyKeyMissing
            | Problem::IdempotencyKeyMalformed(_) => StatusCode::BAD_REQUEST,
            Problem::IdempotencyKeyInFlight => StatusCode::CONFLICT,
            Problem::IdempotencyKeyReused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Problem::UpstreamRefused
            | Problem::UpstreamReset
            | Problem::UpstreamBadResponse
            | Problem::UpstreamTls => StatusCode::BAD_GATEWAY,
            Problem::NoHealthyUpstream
            | Problem::Overloaded
            | Problem::Draining
            | Problem::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Problem::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Where the problem came from.
    pub fn source(&self) -> Source {
        match self {
            Problem::TimedOut(Deadline::Head | Deadline::Body)
            | Problem::TooLarge(_)
            | Problem::BatchInvalid { .. }
            | Problem::ConfigInvalid { .. }
            | Problem::DependencyFailed { .. }
            | Problem::HeadTooLarge
            | Problem::Malformed(_)
            | Problem::NoRoute
            | Problem::MethodNotAllowed { .. }
            | Problem::MissingCredentials
            | Problem::UnknownCredentials
            | Problem::MissingScope { .. }
            | Problem::RateLimited { .. }
            | Problem::UnsupportedMediaType { .. }
            | Problem::InvalidJson { .. }
            | Problem::UnreadableBody
            | Problem::IdempotencyKeyMissing
            | Problem::IdempotencyKeyMalformed(_)
            | Problem::IdempotencyKeyInFlight
            | Problem::IdempotencyKeyReused(_) => Source::Client,
            Problem::TimedOut(Deadline::Answer { .. } | Deadline::Batch)
            | Problem::UpstreamRefused
            | Problem::UpstreamReset
            | Problem::UpstreamBadResponse
            | Problem::UpstreamTls
            | Problem::NoHealthyUpstream => Source::Upstream,
            Problem::StoreUnavailable => Source::Store,
            Problem::Overloaded | Problem::Draining | Problem::Internal => Source::Own,
        }
    }

    /// One sentence for the `detail` member.
    pub fn detail(&self) -> Cow<'static, str> {
        let text = match self {
            Problem::TimedOut(deadline) => deadline.detail(),
            Problem::TooLarge(limit) => return limit.detail(),
            Problem::BatchInvalid { .. } => "The batch is not valid; see errors.",
            Problem::ConfigInvalid { .. } => {
                "The new config is not valid; the running config stays. See errors."
            }
            Problem::DependencyFailed { dependency, status } => {
                let what = format!("the request {dependency:?} it depends on answered {status}");
                return format!("Not run: {what}.").into();
            }
            Problem::HeadTooLarge => "The request head is too large.",
            Problem::Malformed(rule) => rule.detail(),
            Problem::NoRoute => "No route matches this path.",
            Problem::MethodNotAllowed { .. } => {
                "This route does not accept this method; see the Allow header."
            }
            Problem::MissingCredentials => {
                "An API key is required: Authorization: Bearer KEY, or X-Api-Key: KEY."
            }
            Problem::UnknownCredentials => "The API key is not valid.",
            Problem::MissingScope { scope, .. } => {
                return format!("The API key lacks the scope {scope:?} this route requires.")
                    .into();
            }
            Problem::RateLimited { retry_after, .. } => {
                let s = if *retry_after == 1 { "" } else { "s" };
                return format!("Rate limit exceeded; retry after {retry_after} second{s}.").into();
            }
            Problem::UnsupportedMediaType { accepted } => {
                let list = accepted.join(", ");
                return format!("A request body must have a Content-Type of: {list}.").into();
            }
            Problem::InvalidJson {
                line,
                column,
                reason,
            } => {
                let at = format!("line {line}, column {column}");
                return format!("The body is not valid JSON at {at}: {reason}.").into();
            }
            Problem::UnreadableBody => "The request body could not be read to its end.",
            Problem::IdempotencyKeyMissing => {
                "This route requires an Idempotency-Key header, such as Idempotency-Key: \"8e03978e-40d5-43e8-bc93-6894a57f9324\"."
            }
            Problem::IdempotencyKeyMalformed(fault) => fault.detail(),
            Problem::IdempotencyKeyInFlight => {
                "A request with this Idempotency-Key is still in progress; retry after it has been answered."
            }
            Problem::IdempotencyKeyReused(mismatch) => {
                let parts: Vec<&str> = mismatch.names().collect();
                let parts = parts.join(" and ");
                return format!("This Idempotency-Key was first used with another {parts}; a new request needs a new key.").into();
            }
            Problem::UpstreamRefused => "The upstream refused the connection.",
            Problem::UpstreamReset => {
                "The upstream closed the connection before answering in full."
            }
            Problem::UpstreamBadResponse => "The upstream sent an invalid HTTP response.",
            Problem::UpstreamTls => {
                "The TLS handshake with the upstream failed: its certificate did not verify."
            }
            Problem::NoHealthyUpstream => "No healthy upstream target is available.",
            Problem::Overloaded => "Too many open connections; try again shortly.",
            Problem::Draining => "The proxy is shutting down; try again shortly.",
            Problem::StoreUnavailable => {
                "Rate limits cannot be checked right now; try again shortly."
            }
            Problem::Internal => "An internal error occurred in the proxy.",
        };
        Cow::Borrowed(text)
    }

    /// Whether the connection is closed after this answer: after a head or body that did not
    /// arrive whole, the client's stream is in an unknown state; a 408 tells the client to
    /// give up the connection (RFC 9110 §15.5.9); overload and shutdown want it gone.
    pub fn closes_connection(&self) -> bool {
        match self {
            Problem::TimedOut(Deadline::Head | Deadline::Body) => true,
            Problem::TimedOut(Deadline::Answer { status }) => {
                *status == StatusCode::REQUEST_TIMEOUT
            }
            Problem::HeadTooLarge => true,
            Problem::Malformed(rule) => rule.closes_connection(),
            Problem::Overloaded | Problem::Draining => true,
            // Answered inside a 207: the batch's connection is not this item's.
            Problem::TimedOut(Deadline::Batch) => false,
            Problem::TooLarge(_)
            | Problem::BatchInvalid { .. }
            | Problem::ConfigInvalid { .. }
            | Problem::DependencyFailed { .. }
            | Problem::NoRoute
            | Problem::MethodNotAllowed { .. }
            | Problem::MissingCredentials
            | Problem::UnknownCredentials
            | Problem::MissingScope { .. }
            | Problem::RateLimited { .. }
            | Problem::UnsupportedMediaType { .. }
            | Problem::InvalidJson { .. }
            | Problem::UnreadableBody
            | Problem::IdempotencyKeyMissing
            | Problem::IdempotencyKeyMalformed(_)
            | Problem::IdempotencyKeyInFlight
            | Problem::IdempotencyKeyReused(_)
            | Problem::UpstreamRefused
            | Problem::UpstreamReset
            | Problem::UpstreamBadResponse
            | Problem::UpstreamTls
            | Problem::NoHealthyUpstream
            | Problem::StoreUnavailable
            | Problem::Internal => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_faults_are_listed_in_the_order_of_their_counters() {
        for (i, fault) in UpstreamFault::ALL.iter().enumerate() {
            assert_eq!(*fault as usize, i);
        }
    }
}
