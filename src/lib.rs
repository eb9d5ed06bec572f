//! sluice: a rate-limiting reverse proxy for HTTP JSON APIs.

pub mod body;
pub mod cli;
pub mod config;
pub mod demo;
pub mod pipeline;
pub mod problem;
pub mod server;
pub mod upstream;
