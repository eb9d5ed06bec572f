//! The upstream side:
//!
//! - `health.rs`: target health shared by all workers ([`Upstreams`]), round robin over the
//!   targets that have not just refused a connection.
//! - `connect.rs`: the one place that connects to a target.
//! - `pool.rs`: each worker's own keep-alive connections ([`Pool`]), and sending a request.
//! - `exchange.rs`: a request and its answer's head over an HTTP/1.1 connection.
//! - `retry.rs`: when a request lost on a kept-alive connection may go again.
//! - `headers.rs`: the header rules for a proxied hop (hop-by-hop, `X-Forwarded-*`).

mod connect;
mod exchange;
mod headers;
mod health;
mod pool;
mod retry;

pub use headers::{
    Added, Hop, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, set_forwarded,
    strip_hop_by_hop,
};
pub use health::Upstreams;
pub use pool::Pool;
