//! sluice: a rate-limiting reverse proxy for HTTP JSON APIs.
//!
//! A request's way, and where each part lives:
//!
//! - [`server`]: per-core workers, listeners, connection limits, head deadlines, graceful drain,
//!   and the admin listener (`/healthz`, `/readyz`).
//! - [`pipeline`]: one request, in phases: route → credentials → limits → body checks →
//!   forward within the deadline → response headers.
//! - [`batch`]: the batch endpoint: many requests in one, with dependencies, answered 207.
//! - [`limiter`]: the rate-limit algorithms (pure, clock passed in), the `Store` trait and the
//!   in-memory store.
//! - [`upstream`]: target health, each worker's keep-alive pool, hop-by-hop and X-Forwarded-*.
//! - [`problem`]: every status sluice produces itself, as RFC 9457 problem details.
//! - [`config`]: the TOML file, checked once into typed values.
//! - [`body`]: the body type that flows through, both ways.
//! - [`flat`]: small answers and requests written to their sockets as one plain write.
//! - [`cli`] and [`demo`]: the command line and the built-in demo API.

pub mod alloc;
pub mod batch;
pub mod body;
pub mod cli;
pub mod config;
pub mod demo;
pub mod flat;
pub mod json;
pub mod limiter;
pub mod media;
pub mod metrics;
pub mod path;
pub mod pipeline;
pub mod problem;
pub mod server;
pub mod upstream;
