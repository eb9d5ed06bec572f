//! The command line: flags (each with a `SLUICE_*` variable) and the small subcommands.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use sha2::{Digest, Sha256};

use crate::config::{Config, ConfigError, Overrides};
use crate::telemetry;

/// sluice: a rate-limiting reverse proxy for HTTP JSON APIs.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// TOML config file; without one the built-in defaults (the published rules) apply.
    #[arg(long, env = "SLUICE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Proxy listen address, e.g. 0.0.0.0:8080.
    #[arg(long, env = "SLUICE_LISTEN", global = true)]
    pub listen: Option<String>,
    /// Upstream target URL (repeat, or separate with commas, for several).
    #[arg(long, env = "SLUICE_UPSTREAM", value_delimiter = ',', global = true)]
    pub upstream: Vec<String>,
    /// Admin listen address for /healthz, /readyz, /metrics and POST /reload; "" turns it off.
    #[arg(long, env = "SLUICE_ADMIN_LISTEN", global = true)]
    pub admin_listen: Option<String>,
    /// Worker threads; 0 = one per core.
    #[arg(long, env = "SLUICE_WORKERS", global = true)]
    pub workers: Option<usize>,
    /// Redis URL for shared limits (`store.url`); redis:// or rediss://.
    #[arg(long, env = "SLUICE_STORE_URL", hide_env_values = true, global = true)]
    pub store_url: Option<String>,
    /// The secret client keys are hashed under in Redis (`store.key_secret`); prefer the
    /// variable to the flag, which other users of the machine can read.
    #[arg(
        long,
        env = "SLUICE_STORE_KEY_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub store_key_secret: Option<String>,
    /// Log filter, in RUST_LOG syntax.
    #[arg(long, env = "SLUICE_LOG", default_value = "info", global = true)]
    pub log: String,
    /// Log line format.
    #[arg(long, env = "SLUICE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a config and print a short summary; exit 1 on error.
    Check,
    /// Read an API key on stdin and print the SHA-256 hex that [[auth.keys]] stores.
    HashKey,
    /// Run the proxy on 127.0.0.1:8080 in front of a small built-in JSON API.
    Demo,
    /// Ask the admin listener's /healthz; exit 0 when it answers 2xx (for container health checks).
    Healthcheck {
        /// URL to probe instead of the configured admin address.
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Args {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            admin_listen: self.admin_listen.clone(),
            // `SLUICE_UPSTREAM="http://a:1, http://b:2"` reads as two targets.
            upstreams: self
                .upstream
                .iter()
                .map(|u| u.trim().to_string())
                .filter(|u| !u.is_empty())
                .collect(),
            workers: self.workers,
            store_url: self.store_url.clone(),
            store_key_secret: self.store_key_secret.clone(),
        }
    }

    /// What a reload re-reads: the config file and these flags; `None` without a file.
    pub fn source(&self) -> Option<crate::server::Source> {
        let path = self.config.clone()?;
        Some(crate::server::Source {
            path,
            overrides: self.overrides(),
        })
    }

    /// The config file (if any) with the flags applied.
    pub fn load_config(&self) -> Result<Config, ConfigError> {
        self.load_with(&self.overrides())
    }

    pub fn load_with(&self, overrides: &Overrides) -> Result<Config, ConfigError> {
        match &self.config {
            Some(path) => Config::load(path, overrides),
            None => Config::defaults(overrides),
        }
    }
}

/// Sets up logging: `filter` in RUST_LOG syntax, text or JSON lines on stderr; and, given
/// `traces`, the spans of [`telemetry::TARGET`] to it (never to the log, whatever the filter).
pub fn init_tracing(filter: &str, format: LogFormat, traces: Option<telemetry::Layer>) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("sluice: invalid log filter {filter:?} ({e}); using \"info\"");
        tracing_subscriber::EnvFilter::new("info")
    });
    let quiet = format!("{}=off", telemetry::TARGET)
        .parse()
        .expect("a directive");
    let filter = filter.add_directive(quiet);
    let traces = traces.map(|layer| {
        let only = tracing_subscriber::filter::Targets::new()
            .with_target(telemetry::TARGET, tracing::Level::INFO);
        layer.with_filter(only)
    });
    // Colours only for a person at a terminal, never into container logs.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let log = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let log = match format {
        LogFormat::Json => log.json().with_filter(filter).boxed(),
        LogFormat::Text => log.with_filter(filter).boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(traces)
        .with(log)
        .try_init();
}

/// The SHA-256 hex of a key read from `input`, without the whitespace around it: a header
/// value loses that too, so a key hashed with it could never match.
pub fn hash_key(mut input: impl Read) -> Result<String, String> {
    let mut key = String::new();
    input
        .read_to_string(&mut key)
        .map_err(|e| format!("cannot read stdin: {e}"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err("no key on stdin".into());
    }
    if key.chars().any(char::is_control) {
        return Err("a key is one line without control characters".into());
    }
    Ok(Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The URL `healthcheck` probes: the admin address, with a wildcard IP replaced by loopback.
pub fn health_url(admin: SocketAddr) -> String {
    let ip = match admin.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/healthz", SocketAddr::new(ip, admin.port()))
}

/// GETs `url` and tells whether it answered 2xx within two seconds.
pub fn probe(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .ok()
        .filter(|u: &http::Uri| u.scheme_str() == Some("http"))
        .ok_or_else(|| format!("{url:?} is not a URL like http://127.0.0.1:9090/healthz"))?;
    let host = uri
        .host()
        .ok_or("URL has no host")?
        .trim_matches(['[', ']'])
        .to_string();
    let port = uri.port_u16().unwrap_or(80);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let ask = async {
            let stream = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let req = http::Request::get(uri.path())
                .header(
                    http::header::HOST,
                    uri.authority().map_or("localhost", |a| a.as_str()),
                )
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .map_err(|e| e.to_string())?;
            let res = send
                .send_request(req)
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            match res.status().is_success() {
                true => Ok(()),
                false => Err(format!("{url} answered {}", res.status())),
            }
        };
        tokio::time::timeout(Duration::from_secs(2), ask)
            .await
            .map_err(|_| format!("{url} did not answer in 2s"))?
    })
}

/// Waits for SIGTERM or SIGINT (Ctrl-C), calling `reload` on every SIGHUP meanwhile.
pub async fn until_shutdown(reload: impl Fn()) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) {
            loop {
                tokio::select! {
                    _ = term.recv() => return,
                    _ = tokio::signal::ctrl_c() => return,
                    _ = hup.recv() => reload(),
                }
            }
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_key_refuses_what_a_header_cannot_carry() {
        let expected = hash_key("secret".as_bytes()).unwrap();
        assert_eq!(hash_key(" secret \r\n\n".as_bytes()).unwrap(), expected);
        assert!(hash_key("a\nb".as_bytes()).is_err());
        assert!(hash_key("a\u{7f}b".as_bytes()).is_err());
    }

    #[test]
    fn a_probe_names_its_url_when_it_fails() {
        let e = probe("localhost:9").unwrap_err();
        assert!(e.contains("http://"), "{e}");
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/healthz", closed.local_addr().unwrap());
        drop(closed);
        let e = probe(&url).unwrap_err();
        assert!(e.starts_with(&url), "{e}");
    }

    #[test]
    fn hash_key_ignores_the_trailing_newline() {
        let expected = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";
        assert_eq!(hash_key("secret\n".as_bytes()).unwrap(), expected);
        assert_eq!(hash_key("secret".as_bytes()).unwrap(), expected);
        assert!(hash_key("".as_bytes()).is_err());
    }

    #[test]
    fn health_url_uses_loopback_for_a_wildcard_admin_address() {
        assert_eq!(
            health_url("0.0.0.0:9090".parse().unwrap()),
            "http://127.0.0.1:9090/healthz"
        );
        assert_eq!(
            health_url("[::]:9090".parse().unwrap()),
            "http://[::1]:9090/healthz"
        );
    }
}
