//! The config file as written: serde structs that mirror the TOML, with unknown keys refused.
//! Every default here is the published rule; `Config::from_raw` turns this into checked values.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::units::{Cidr, Dur, Rate, Size};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub upstreams: BTreeMap<String, Spanned<Upstream>>,
    #[serde(default)]
    pub policies: BTreeMap<String, Spanned<Policy>>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub batch: Batch,
    #[serde(default)]
    pub auth: Auth,
    #[serde(default)]
    pub headers: Headers,
    #[serde(default)]
    pub store: Store,
    #[serde(default)]
    pub telemetry: super::telemetry::Raw,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    pub listen: Spanned<String>,
    pub admin_listen: Spanned<String>,
    pub workers: Spanned<usize>,
    pub max_connections: Spanned<usize>,
    pub header_read_timeout: Spanned<Dur>,
    pub request_timeout: Spanned<Dur>,
    pub timeout_status: Spanned<u16>,
    pub idle_timeout: Spanned<Dur>,
    pub max_header_bytes: Spanned<Size>,
    pub trusted_proxies: Vec<Cidr>,
    pub drain_timeout: Dur,
    pub max_keys: Spanned<usize>,
    pub access_log: bool,
    pub tls: Option<Spanned<ServerTls>>,
}

/// `[server.tls]`: HTTPS on the listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
    #[serde(default = "default_alpn")]
    pub alpn: Spanned<Vec<String>>,
    #[serde(default = "default_min_version")]
    pub min_version: Spanned<String>,
    #[serde(default = "unset")]
    pub client_ca: Spanned<String>,
}

fn default_alpn() -> Spanned<Vec<String>> {
    Spanned::new(0..0, vec!["h2".into(), "http/1.1".into()])
}

fn default_min_version() -> Spanned<String> {
    Spanned::new(0..0, "1.2".into())
}

impl Default for Server {
    fn default() -> Self {
        let secs = |s| Dur(std::time::Duration::from_secs(s));
        let spanned_secs = |s| Spanned::new(0..0, secs(s));
        Server {
            listen: Spanned::new(0..0, "0.0.0.0:8080".into()),
            admin_listen: Spanned::new(0..0, "127.0.0.1:9090".into()),
            workers: Spanned::new(0..0, 0),
            max_connections: Spanned::new(0..0, 10_000),
            header_read_timeout: spanned_secs(10),
            request_timeout: spanned_secs(60),
            timeout_status: Spanned::new(0..0, 408),
            idle_timeout: spanned_secs(75),
            max_header_bytes: Spanned::new(0..0, Size(16 * 1024)),
            trusted_proxies: Vec::new(),
            drain_timeout: secs(30),
            max_keys: Spanned::new(0..0, 1_000_000),
            access_log: true,
            tls: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub targets: Spanned<Vec<Spanned<String>>>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Spanned<Dur>,
    #[serde(default = "unset")]
    pub tls_ca: Spanned<String>,
    #[serde(default = "unset")]
    pub tls_server_name: Spanned<String>,
    #[serde(default)]
    pub tls_insecure_skip_verify: bool,
    #[serde(default = "unset")]
    pub tls_client_cert: Spanned<String>,
    #[serde(default = "unset")]
    pub tls_client_key: Spanned<String>,
}

impl Upstream {
    /// An upstream of `targets` with every other key at its default (from `--upstream`).
    pub fn with_targets(targets: Vec<Spanned<String>>) -> Upstream {
        Upstream {
            targets: Spanned::new(0..0, targets),
            connect_timeout: default_connect_timeout(),
            tls_ca: unset(),
            tls_server_name: unset(),
            tls_insecure_skip_verify: false,
            tls_client_cert: unset(),
            tls_client_key: unset(),
        }
    }
}

fn unset() -> Spanned<String> {
    Spanned::new(0..0, String::new())
}

fn default_connect_timeout() -> Spanned<Dur> {
    Spanned::new(0..0, Dur(std::time::Duration::from_secs(5)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub rate: Option<Rate>,
    pub burst: Option<u32>,
    pub window: Option<Dur>,
    pub window_requests: Option<u32>,
    #[serde(default = "default_key")]
    pub key: Spanned<String>,
    #[serde(default)]
    pub mode: Mode,
}

fn default_key() -> Spanned<String> {
    Spanned::new(0..0, "api_key".into())
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Shadow,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub path: Spanned<String>,
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    pub upstream: Option<Spanned<String>>,
    #[serde(default = "default_policy")]
    pub policy: Spanned<String>,
    #[serde(default = "default_max_body")]
    pub max_body: Size,
    #[serde(default = "default_content_types")]
    pub content_types: Vec<Spanned<String>>,
    #[serde(default = "yes")]
    pub validate_json: bool,
    #[serde(default)]
    pub scopes: Vec<Spanned<String>>,
    pub request_timeout: Option<Spanned<Dur>>,
    pub idempotency: Option<Spanned<Idempotency>>,
}

/// `[routes.idempotency]`: `Idempotency-Key` on a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Idempotency {
    pub enabled: bool,
    pub methods: Vec<Spanned<String>>,
    pub required: Spanned<bool>,
    pub ttl: Spanned<Dur>,
    pub max_stored_body: Spanned<Size>,
}

impl Default for Idempotency {
    fn default() -> Idempotency {
        Idempotency {
            enabled: false,
            methods: ["POST", "PATCH"]
                .map(|m| Spanned::new(0..0, m.to_string()))
                .into(),
            required: Spanned::new(0..0, false),
            ttl: Spanned::new(0..0, Dur(std::time::Duration::from_secs(24 * 3600))),
            max_stored_body: Spanned::new(0..0, Size(256 << 10)),
        }
    }
}

fn default_policy() -> Spanned<String> {
    Spanned::new(0..0, "default".into())
}

fn default_max_body() -> Size {
    Size(1 << 20)
}

fn default_content_types() -> Vec<Spanned<String>> {
    vec![Spanned::new(0..0, "application/json".into())]
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Batch {
    pub enabled: bool,
    pub path: Spanned<String>,
    pub max_requests: Spanned<usize>,
    pub max_concurrency: Spanned<usize>,
    pub max_body: Spanned<Size>,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            enabled: true,
            path: Spanned::new(0..0, "/batch".into()),
            max_requests: Spanned::new(0..0, 100),
            max_concurrency: Spanned::new(0..0, 8),
            max_body: Spanned::new(0..0, Size(8 << 20)),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    #[serde(default = "no_auth")]
    pub mode: Spanned<AuthMode>,
    #[serde(default)]
    pub keys: Vec<ApiKey>,
    #[serde(default = "yes")]
    pub forward_credentials: bool,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            mode: no_auth(),
            keys: Vec::new(),
            forward_credentials: true,
        }
    }
}

fn no_auth() -> Spanned<AuthMode> {
    Spanned::new(0..0, AuthMode::None)
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    #[default]
    None,
    ApiKeys,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub name: Spanned<String>,
    pub sha256: Option<Spanned<String>>,
    pub cert_sha256: Option<Spanned<String>>,
    #[serde(default)]
    pub scopes: Vec<String>,
    pub policy: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Headers {
    pub ratelimit: RateLimitHeaders,
    pub request_id: Spanned<String>,
}

impl Default for Headers {
    fn default() -> Self {
        Headers {
            ratelimit: RateLimitHeaders::Ietf,
            request_id: Spanned::new(0..0, "x-request-id".into()),
        }
    }
}

/// Which rate-limit response headers to send.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RateLimitHeaders {
    #[default]
    Ietf,
    XRatelimit,
    Both,
    None,
}

/// `[store]`: where limiter state lives.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Store {
    pub kind: Spanned<StoreKind>,
    pub url: Spanned<String>,
    pub cluster: Spanned<Vec<Spanned<String>>>,
    pub timeout: Spanned<Dur>,
    pub on_error: OnError,
    pub sync: StoreSync,
    pub lease: Spanned<u32>,
    pub lease_ttl: Spanned<Dur>,
    pub key_secret: Spanned<String>,
    pub ready_requires_store: bool,
}

impl Default for Store {
    fn default() -> Self {
        let ms = |n| Spanned::new(0..0, Dur(std::time::Duration::from_millis(n)));
        Store {
            kind: Spanned::new(0..0, StoreKind::Memory),
            url: Spanned::new(0..0, "redis://127.0.0.1:6379/0".into()),
            cluster: Spanned::new(0..0, Vec::new()),
            timeout: ms(20),
            on_error: OnError::Local,
            sync: StoreSync::Exact,
            lease: Spanned::new(0..0, 10),
            lease_ttl: ms(250),
            key_secret: Spanned::new(0..0, String::new()),
            ready_requires_store: false,
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    #[default]
    Memory,
    Redis,
}

pub use crate::limiter::redis::OnError;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreSync {
    #[default]
    Exact,
    Lease,
}
