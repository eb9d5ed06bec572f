//! Configuration: the TOML file (`raw`) is read once and checked into the typed values below.
//! Nothing past this module parses a string from the config again.

mod auth;
mod error;
mod idempotency;
mod policy;
mod raw;
mod store;
mod telemetry;
mod units;
mod upstream;
mod validate;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, StatusCode};
use ipnet::IpNet;

pub use error::{ConfigError, Invalid};
pub use raw::{AuthMode, Mode, OnError, RateLimitHeaders};
pub use store::Store;
pub use telemetry::Telemetry;
pub use units::{Dur, Rate, Size};

/// A complete, valid configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// A hash of the file and overrides this config came from, to tell configs apart.
    pub hash: u64,
    pub server: Server,
    pub upstreams: Vec<Upstream>,
    pub policies: Vec<Policy>,
    pub routes: Vec<Route>,
    pub batch: Batch,
    pub auth: Auth,
    pub headers: Headers,
    pub store: Store,
    pub telemetry: Telemetry,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub listen: SocketAddr,
    /// `None` when `admin_listen = ""`.
    pub admin_listen: Option<SocketAddr>,
    /// Worker threads, each with its own runtime and listener; never 0 here.
    pub workers: usize,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    pub timeout_status: StatusCode,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub trusted_proxies: Vec<IpNet>,
    pub drain_timeout: Duration,
    /// Client keys the limiter tracks at once; beyond it, new keys share one state per policy.
    pub max_keys: usize,
    /// One log line per request (target `sluice::access`).
    pub access_log: bool,
    /// HTTPS on the listener; `None`: plain HTTP/1.1 and h2c.
    pub tls: Option<ServerTls>,
}

/// `[server.tls]`, with its rustls configuration built (files read, key matched) at load.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub settings: crate::tls::Server,
    pub config: std::sync::Arc<rustls::ServerConfig>,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub targets: Vec<Target>,
    pub connect_timeout: Duration,
    /// For its `https://` targets: how sluice verifies them and what it presents.
    pub tls: Option<UpstreamTls>,
    /// The `Host` sent for a request that named none (HTTP/1.0 allows that, HTTP/1.1
    /// upstreams need one): the first target's `host:port`.
    pub host: HeaderValue,
}

/// TLS to an upstream's `https://` targets, checked (files read, parsed) at load.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub settings: crate::tls::Upstream,
    pub config: std::sync::Arc<rustls::ClientConfig>,
    /// `tls_server_name`: the name certificates are checked against, instead of the host.
    pub server_name: Option<String>,
}

/// One upstream address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// Set when `host` is an IP literal, so connecting needs no name lookup.
    pub addr: Option<SocketAddr>,
    /// `https://`.
    pub tls: bool,
}

impl Target {
    /// `host:port`, an IPv6 address in brackets.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.authority())
    }
}

/// A named set of limits. `rate` with `burst` is a token bucket; `window` a rolling window.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub rate: Option<(Rate, u32)>,
    pub window: Option<(Duration, u32)>,
    pub key: KeySource,
    pub mode: Mode,
    /// The limits, compiled for the limiter (window first, then rate).
    pub limiter: crate::limiter::Policy,
}

/// What identifies a client for its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The presented credential, else the client IP.
    ApiKey,
    /// The verified client certificate's identity (its first DNS name, else its subject's
    /// common name), else the client IP.
    ClientCert,
    Ip,
    Header(HeaderName),
}

#[derive(Debug, Clone)]
pub struct Route {
    pub path: String,
    /// Empty: any method.
    pub methods: Vec<Method>,
    /// Index into `Config::upstreams`.
    pub upstream: usize,
    /// Index into `Config::policies`; `None` for `policy = "none"`.
    pub policy: Option<usize>,
    pub max_body: u64,
    /// Accepted media types (lowercase); `None` accepts any.
    pub content_types: Option<Vec<String>>,
    pub validate_json: bool,
    pub scopes: Vec<String>,
    /// The route's own `request_timeout`, else the server's.
    pub request_timeout: Duration,
    /// `Idempotency-Key` handling; `None` where it is off.
    pub idempotency: Option<Idempotency>,
}

/// `[routes.idempotency]` where `enabled`.
#[derive(Debug, Clone)]
pub struct Idempotency {
    /// The methods whose requests a key applies to.
    pub methods: Vec<Method>,
    /// A request of those methods without a key is refused (400).
    pub required: bool,
    /// How long a completed answer is replayed.
    pub ttl: Duration,
    /// The largest answer body stored; a larger answer passes through and is not stored.
    pub max_stored_body: u64,
}

impl Idempotency {
    /// Whether requests of `method` take a key here.
    pub fn applies_to(&self, method: &Method) -> bool {
        self.methods.contains(method)
    }
}

#[derive(Debug, Clone)]
pub struct Batch {
    pub enabled: bool,
    pub path: String,
    pub max_requests: usize,
    pub max_concurrency: usize,
    /// The largest batch body read.
    pub max_body: u64,
}

#[derive(Debug, Clone)]
pub struct Auth {
    pub mode: AuthMode,
    pub keys: Vec<ApiKey>,
    /// Whether the credential headers (Authorization, X-Api-Key) go on to the upstream.
    pub forward_credentials: bool,
}

#[derive(Debug, Clone)]
pub struct ApiKey {
    pub name: String,
    /// The SHA-256 of the API key it is presented with.
    pub sha256: Option<[u8; 32]>,
    /// The SHA-256 of the client certificate (DER) it is presented with, over mTLS.
    pub cert_sha256: Option<[u8; 32]>,
    pub scopes: Vec<String>,
    /// Index into `Config::policies`: this key's own policy instead of the route's.
    pub policy: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct Headers {
    pub ratelimit: RateLimitHeaders,
    pub request_id: HeaderName,
}

/// Values from flags or `SLUICE_*` variables; each replaces the file's.
#[derive(Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    /// Targets for the only upstream (created as `api` when the file has none).
    pub upstreams: Vec<String>,
    pub workers: Option<usize>,
    /// `store.url` (and no `store.cluster`).
    pub store_url: Option<String>,
    /// `store.key_secret`.
    pub store_key_secret: Option<String>,
}

impl std::fmt::Debug for Overrides {
    /// Everything but the secret (its presence and a hash, so configs still tell apart).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::hash::{Hash, Hasher};
        let secret = self.store_key_secret.as_ref().map(|s| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            s.hash(&mut h);
            format!("hash {:016x}", h.finish())
        });
        f.debug_struct("Overrides")
            .field("listen", &self.listen)
            .field("admin_listen", &self.admin_listen)
            .field("upstreams", &self.upstreams)
            .field("workers", &self.workers)
            .field("store_url", &self.store_url.as_ref().map(|_| "set"))
            .field("store_key_secret", &secret)
            .finish()
    }
}

impl Config {
    /// Reads and checks a config file, then applies the overrides.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let source = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&source, overrides)
    }

    /// Checks a config given as TOML text.
    pub fn parse(source: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut file = validate::deserialize(source)?;
        validate::apply(&mut file, overrides)?;
        let mut config = validate::check(file, source)?;
        config.hash = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (source, format!("{overrides:?}")).hash(&mut h);
            h.finish()
        };
        Ok(config)
    }

    /// The built-in defaults (the published rules) plus the overrides; no file.
    pub fn defaults(overrides: &Overrides) -> Result<Config, ConfigError> {
        Config::parse("", overrides)
    }

    /// The policy a name refers to.
    pub fn policy(&self, name: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.name == name)
    }

    /// A few lines describing what this config does, for `sluice check`.
    /// Every upstream and its targets on one line, for the startup log.
    pub fn summary_of_upstreams(&self) -> String {
        let all: Vec<String> = self
            .upstreams
            .iter()
            .map(|u| format!("{}: {}", u.name, u.describe()))
            .collect();
        all.join("; ")
    }

    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let s = &self.server;
        let admin = s.admin_listen.map_or("off".to_string(), |a| a.to_string());
        let _ = writeln!(
            out,
            "listen {} (admin {admin}), {} worker(s)",
            s.listen, s.workers
        );
        for u in &self.upstreams {
            let _ = writeln!(out, "upstream {}: {}", u.name, u.describe());
        }
        for p in &self.policies {
            let _ = writeln!(out, "policy {}: {}", p.name, p.describe());
        }
        let _ = writeln!(out, "store {}", self.store.describe());
        let _ = match (self.auth.mode, self.auth.keys.len()) {
            (AuthMode::ApiKeys, n) => writeln!(out, "auth api_keys: {n} key(s)"),
            (AuthMode::None, 0) => writeln!(out, "auth none"),
            (AuthMode::None, n) => {
                writeln!(out, "auth none: {n} key(s) and route scopes not checked")
            }
        };
        for r in &self.routes {
            let policy = r.policy.map_or("none", |i| self.policies[i].name.as_str());
            let upstream = &self.upstreams[r.upstream].name;
            let idempotency = r.idempotency.as_ref().map_or(String::new(), |i| {
                let methods: Vec<&str> = i.methods.iter().map(http::Method::as_str).collect();
                let required = if i.required { ", required" } else { "" };
                let ttl = i.ttl.as_secs();
                format!(
                    ", Idempotency-Key on {} for {ttl}s{required}",
                    methods.join(" ")
                )
            });
            let _ = writeln!(
                out,
                "route {} -> {upstream}, policy {policy}{idempotency}",
                r.path
            );
        }
        out
    }
}

impl Upstream {
    /// The targets, as written.
    pub fn describe(&self) -> String {
        let targets: Vec<String> = self.targets.iter().map(|t| t.to_string()).collect();
        targets.join(", ")
    }
}

impl Policy {
    /// The limits in words, e.g. `1/s burst 100, 100 per 60s`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some((rate, burst)) = self.rate {
            parts.push(format!("{rate} burst {burst}"));
        }
        if let Some((window, n)) = self.window {
            parts.push(format!("{n} per {}s", window.as_secs_f64()));
        }
        let shadow = if self.mode == Mode::Shadow {
            " (shadow)"
        } else {
            ""
        };
        format!("{}{shadow}", parts.join(", "))
    }
}

#[cfg(test)]
mod tests;
