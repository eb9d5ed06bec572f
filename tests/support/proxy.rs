//! A real sluice in the test's process, on loopback port 0 and one worker: from raw TOML with
//! `spawn_sluice`, or built in a line with `Sluice::builder()`, optionally on a manual clock:
//! `Sluice::builder().upstream(&up).policy("default", "rate = \"1/s\"\nburst = 5").manual_clock().start()`.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice::config::{Config, Overrides};
use sluice::limiter::redis::RedisStore;
use sluice::limiter::{ManualClock, MemoryStore, Store};
use sluice::server::{self, Options, Running};

use super::{Upstream, metrics, sha256_hex};

/// A running sluice; shuts down (without waiting) when dropped.
pub struct Sluice {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    running: Option<Running>,
    clock: Option<Arc<ManualClock>>,
}

impl Sluice {
    /// A sluice to configure in a line: `Sluice::builder().upstream(&up).start()`.
    pub fn builder() -> Builder {
        Builder::default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    /// Moves the limiter's clock forward (only on a [`Builder::manual_clock`] or
    /// [`Builder::clock`]).
    pub fn advance(&self, by: Duration) {
        self.clock
            .as_ref()
            .expect("started with manual_clock()")
            .advance(by);
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics(&self) -> String {
        metrics(self.admin.expect("an admin listener")).await
    }

    /// Begins shutdown and returns a handle that resolves when it is complete.
    pub fn shutdown(mut self) -> tokio::task::JoinHandle<()> {
        let running = self.running.take().unwrap();
        running.shutdown();
        tokio::task::spawn_blocking(move || running.join())
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        if let Some(r) = &self.running {
            r.shutdown();
        }
    }
}

/// A sluice being configured; `start` writes its TOML and runs it.
#[derive(Default)]
pub struct Builder {
    targets: Vec<String>,
    upstream: Vec<String>,
    server: Vec<String>,
    policies: Vec<(String, String)>,
    routes: Vec<(String, String)>,
    auth: Vec<String>,
    keys: Vec<(String, String, String)>,
    extra: Vec<String>,
    clock: Option<Arc<ManualClock>>,
}

impl Builder {
    /// Adds `up` as a target of the upstream `api`.
    pub fn upstream(self, up: &Upstream) -> Builder {
        self.target(&up.url())
    }

    /// Adds a target URL to the upstream `api`.
    pub fn target(mut self, url: &str) -> Builder {
        self.targets.push(url.to_string());
        self
    }

    /// `upstreams.api.connect_timeout`, such as `"200ms"`.
    pub fn connect_timeout(mut self, duration: &str) -> Builder {
        self.upstream
            .push(format!("connect_timeout = \"{duration}\""));
        self
    }

    /// A line of `[server]`, such as `max_header_bytes = 2048`.
    pub fn server(mut self, line: &str) -> Builder {
        self.server.push(line.to_string());
        self
    }

    /// `server.header_read_timeout`, such as `"300ms"`.
    pub fn header_read_timeout(self, duration: &str) -> Builder {
        self.server(&format!("header_read_timeout = \"{duration}\""))
    }

    /// `server.request_timeout`.
    pub fn request_timeout(self, duration: &str) -> Builder {
        self.server(&format!("request_timeout = \"{duration}\""))
    }

    /// `server.idle_timeout`.
    pub fn idle_timeout(self, duration: &str) -> Builder {
        self.server(&format!("idle_timeout = \"{duration}\""))
    }

    /// `[policies.NAME]` with the lines `body`, such as `rate = "1/s"\nburst = 5`.
    pub fn policy(mut self, name: &str, body: &str) -> Builder {
        self.policies.push((name.to_string(), body.to_string()));
        self
    }

    /// A `[[routes]]` entry for `path` with the lines `body`, such as `policy = "none"`; routes
    /// keep the order they are given in.
    pub fn route(mut self, path: &str, body: &str) -> Builder {
        self.routes.push((path.to_string(), body.to_string()));
        self
    }

    /// A line of `[auth]`, such as `forward_credentials = false`.
    pub fn auth(mut self, line: &str) -> Builder {
        self.auth.push(line.to_string());
        self
    }

    /// An `[[auth.keys]]` entry named `name` for the API key `secret`, with the lines `body`
    /// (such as `scopes = ["read"]`); any key turns on `auth.mode = "api_keys"`.
    pub fn key(mut self, name: &str, secret: &str, body: &str) -> Builder {
        let key = (name.to_string(), secret.to_string(), body.to_string());
        self.keys.push(key);
        self
    }

    /// TOML appended as written; it starts with a table header (`[batch]`, `[headers]` …).
    pub fn toml(mut self, text: &str) -> Builder {
        self.extra.push(text.to_string());
        self
    }

    /// Limiter state on a clock of its own that starts at 0 and moves only by
    /// [`Sluice::advance`], so that waiting out a limit takes no time.
    pub fn manual_clock(self) -> Builder {
        self.clock(&Arc::new(ManualClock::new(0)))
    }

    /// Limiter state on `clock`, which every sluice given it shares (replicas of one Redis
    /// store). With a Redis `[store]`, the store takes its time from the clock too, which
    /// should then read nanoseconds since the Unix epoch, as Redis's own time does.
    pub fn clock(mut self, clock: &Arc<ManualClock>) -> Builder {
        self.clock = Some(clock.clone());
        self
    }

    /// The config as TOML.
    pub fn config(&self) -> String {
        let mut t = String::new();
        if !self.server.is_empty() {
            writeln!(t, "[server]\n{}", self.server.join("\n")).unwrap();
        }
        let targets: Vec<String> = self.targets.iter().map(|u| format!("\"{u}\"")).collect();
        writeln!(t, "[upstreams.api]\ntargets = [{}]", targets.join(", ")).unwrap();
        for line in &self.upstream {
            writeln!(t, "{line}").unwrap();
        }
        for (name, body) in &self.policies {
            writeln!(t, "[policies.{name}]\n{body}").unwrap();
        }
        for (path, body) in &self.routes {
            writeln!(t, "[[routes]]\npath = \"{path}\"\n{body}").unwrap();
        }
        if !self.auth.is_empty() || !self.keys.is_empty() {
            let mode = if self.keys.is_empty() {
                ""
            } else {
                "mode = \"api_keys\""
            };
            writeln!(t, "[auth]\n{mode}\n{}", self.auth.join("\n")).unwrap();
        }
        for (name, secret, body) in &self.keys {
            let sha = sha256_hex(secret);
            writeln!(
                t,
                "[[auth.keys]]\nname = \"{name}\"\nsha256 = \"{sha}\"\n{body}"
            )
            .unwrap();
        }
        for extra in &self.extra {
            writeln!(t, "{extra}").unwrap();
        }
        t
    }

    pub fn start(self) -> Sluice {
        assert!(
            !self.targets.is_empty(),
            "no upstream: call upstream() or target()"
        );
        let toml = self.config();
        let mut options = Options::default();
        if let Some(clock) = &self.clock {
            let config = parse(&toml);
            let max_keys = config.server.max_keys;
            let store: Arc<dyn Store> = match &config.store.redis {
                None => Arc::new(MemoryStore::with_clock(clock.clone(), max_keys)),
                Some(redis) => {
                    let store = RedisStore::with_clock(redis, max_keys, clock.clone(), true);
                    Arc::new(store.expect("the Redis store starts"))
                }
            };
            options.store = Some(store);
        }
        let mut sluice = run(&toml, options);
        sluice.clock = self.clock;
        sluice
    }
}

fn parse(toml: &str) -> Config {
    Config::parse(toml, &Overrides::default())
        .unwrap_or_else(|e| panic!("test config: {e}\n{toml}"))
}

/// Starts sluice from TOML, its proxy and admin listeners on loopback port 0 and one worker
/// unless the TOML sets `server.listen`, `server.admin_listen` or `server.workers`.
fn run(toml: &str, options: Options) -> Sluice {
    let mut config = parse(toml);
    let table: toml::Table = toml.parse().unwrap();
    let set = |key: &str| table.get("server").and_then(|s| s.get(key)).is_some();
    if !set("listen") {
        config.server.listen = "127.0.0.1:0".parse().unwrap();
    }
    if !set("admin_listen") {
        config.server.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    }
    if !set("workers") {
        config.server.workers = 1;
    }
    let running = server::start_with(config, options).expect("sluice starts");
    Sluice {
        addr: running.local_addr(),
        admin: running.admin_addr(),
        running: Some(running),
        clock: None,
    }
}

/// Starts sluice from TOML. `{upstream}` in the text is replaced by `upstream`; the proxy and
/// admin listeners go on loopback port 0 and one worker, unless the TOML says otherwise.
pub fn spawn_sluice(toml: &str, upstream: &str) -> Sluice {
    run(&toml.replace("{upstream}", upstream), Options::default())
}

/// Starts sluice with the built-in defaults in front of `upstream`.
pub fn spawn_default(upstream: &str) -> Sluice {
    Sluice::builder().target(upstream).start()
}

pub const WRITER_KEY: &str = "sk-writer-7f3a9c";
pub const READER_KEY: &str = "sk-reader-2b81de";

/// API keys mode with two keys (`writer` with read and write, `reader` with read only), a route
/// that needs the write scope and one that needs none, no limits. `extra` goes under `[auth]`.
pub fn keys_config(extra: &str) -> String {
    format!(
        r#"
[upstreams.api]
targets = ["{{upstream}}"]
[[routes]]
path = "/v1/write/"
policy = "none"
scopes = ["write"]
[[routes]]
path = "/"
policy = "none"
[auth]
mode = "api_keys"
{extra}
[[auth.keys]]
name = "writer"
sha256 = "{}"
scopes = ["read", "write"]
[[auth.keys]]
name = "reader"
sha256 = "{}"
scopes = ["read"]
"#,
        sha256_hex(WRITER_KEY),
        sha256_hex(READER_KEY)
    )
}

/// The size every route of [`guarded`] takes a body up to.
pub const MAX_BODY: usize = 1024;

/// Three routes without limits, each taking bodies up to [`MAX_BODY`]: `/raw/` streams them
/// without JSON validation, `/any/` takes any media type, `/` checks them as JSON.
pub fn guarded() -> Builder {
    Sluice::builder()
        .route(
            "/raw/",
            "policy = \"none\"\nmax_body = \"1KiB\"\nvalidate_json = false",
        )
        .route(
            "/any/",
            "policy = \"none\"\nmax_body = \"1KiB\"\ncontent_types = [\"*\"]",
        )
        .route("/", "policy = \"none\"\nmax_body = \"1KiB\"")
}
