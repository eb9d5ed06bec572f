//! sluice: a rate-limiting reverse proxy for HTTP JSON APIs.

pub mod limiter;
