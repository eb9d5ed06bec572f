//! sluice: a rate-limiting reverse proxy for HTTP JSON APIs.
//!
//! The modules, bottom to top (each uses only those above it in this list):
//!
//! - [`problem`]: every answer sluice gives itself, as RFC 9457 problem details; where each
//!   came from, and its status, decided in one place.
//! - [`json`], [`media`], [`path`], [`host`]: pure checks — a body's JSON, its media type, a
//!   path's normal form, a `Host` header. [`tls`]: rustls configurations from PEM files.
//!   [`fds`]: the open file limit, which bounds connections.
//! - [`h1`]: HTTP/1.1 to an upstream on the wire: a request's head written, an answer's head
//!   parsed, its body taken by its framing; driven by the request's own task.
//! - [`body`]: the body type that flows through, both ways: counted, read whole, or an
//!   upstream's answer; with its own fault type.
//! - [`limiter`]: the rate-limit algorithms (pure, clock passed in), the `Store` trait, the
//!   in-memory store and the Redis store shared by replicas.
//! - [`idempotency`]: `Idempotency-Key`: the key, the request's fingerprint, and the stored
//!   answers, in memory or in the limiter's Redis.
//! - [`config`]: the TOML file, checked once into typed values.
//! - [`metrics`]: Prometheus counters, one shard per worker.
//! - [`upstream`]: target health, connecting, each worker's keep-alive pool, hop-by-hop and
//!   X-Forwarded-* headers.
//! - [`pipeline`]: one request, in phases (`pipeline/phase/`): head → route → auth → limit →
//!   payload → idempotency → forward → respond.
//! - [`batch`]: the batch endpoint: many requests in one, each through the pipeline, with
//!   dependencies, answered 207.
//! - [`server`]: per-core workers, listeners, connection limits, head deadlines, graceful
//!   drain, reload, and the admin listener (`/healthz`, `/readyz`, `/metrics`).
//! - [`telemetry`]: OpenTelemetry traces over OTLP, off unless configured.
//! - [`flat`]: small writes to sockets as one plain write; [`alloc`]: the allocator;
//!   [`cli`] and [`demo`]: the command line and the built-in demo API.
//!
//! `docs/architecture.md` follows a request through the files, and names the one place that
//! makes each status.

pub mod alloc;
pub mod batch;
pub mod body;
pub mod cli;
pub mod config;
pub mod demo;
pub mod fds;
pub mod flat;
pub mod h1;
pub mod host;
pub mod idempotency;
pub mod json;
pub mod limiter;
pub mod media;
pub mod metrics;
pub mod path;
pub mod pipeline;
pub mod problem;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod upstream;
