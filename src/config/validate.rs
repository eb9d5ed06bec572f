//! From the raw file to a checked `Config`: every cross-key rule lives here, and every error
//! names its key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;

use http::{HeaderName, Method, StatusCode};
use toml::Spanned;

use super::error::{Errors, Invalid, line_of};
use super::{Batch, Config, ConfigError, Headers, Overrides, raw};
use super::{Policy, Route, Server, Upstream};
use crate::fds;

/// Parses TOML into the raw structs; type errors and unknown keys name their key and line.
pub(super) fn deserialize(source: &str) -> Result<raw::File, ConfigError> {
    let de = toml::Deserializer::new(source);
    serde_path_to_error::deserialize(de).map_err(|e| {
        // Spanned values add a private segment to the path; the user never wrote it.
        let key = e
            .path()
            .to_string()
            .replace(".$__serde_spanned_private_value", "");
        let inner = e.into_inner();
        let line = inner.span().and_then(|s| line_of(source, s));
        // Errors in reading a value (a number too large) come before any key is known: the
        // key is then the one written on that line.
        let key = match (key.as_str(), line) {
            (".", Some(line)) => written_key(source, line),
            (".", None) => String::new(),
            _ => key,
        };
        // Some syntax errors come with no message of their own (a bare carriage return).
        let message = match inner.message().trim() {
            "" => "invalid TOML".to_string(),
            message => message.to_string(),
        };
        ConfigError::Invalid(Invalid { key, line, message })
    })
}

/// The key on the 1-based `line` with the table it is in, as written: `server.workers` for
/// `workers = 99…` under `[server]`, `routes[1].max_body` under the second `[[routes]]`.
fn written_key(source: &str, line: usize) -> String {
    let text = source.lines().nth(line - 1).unwrap_or_default();
    let key = match text.split_once('=') {
        Some((key, _)) if !key.trim().is_empty() && !key.contains(['[', '"', '#']) => key.trim(),
        _ => return String::new(),
    };
    let mut table = String::new();
    let mut arrays: HashMap<&str, usize> = HashMap::new();
    for text in source.lines().take(line - 1).map(str::trim) {
        if let Some((name, _)) = text.strip_prefix("[[").and_then(|t| t.split_once("]]")) {
            let n = arrays.entry(name.trim()).or_insert(0);
            table = format!("{}[{n}]", name.trim());
            *n += 1;
        } else if let Some((name, _)) = text.strip_prefix('[').and_then(|t| t.split_once(']')) {
            table = name.trim().to_string();
        }
    }
    if table.is_empty() {
        key.to_string()
    } else {
        format!("{table}.{key}")
    }
}

/// Applies flag and environment overrides to the raw file.
pub(super) fn apply(file: &mut raw::File, o: &Overrides) -> Result<(), ConfigError> {
    if let Some(listen) = &o.listen {
        file.server.listen = Spanned::new(0..0, listen.clone());
    }
    if let Some(admin) = &o.admin_listen {
        file.server.admin_listen = Spanned::new(0..0, admin.clone());
    }
    if let Some(workers) = o.workers {
        file.server.workers = Spanned::new(0..0, workers);
    }
    if let Some(url) = &o.store_url {
        file.store.url = Spanned::new(0..0, url.clone());
        file.store.cluster = Spanned::new(0..0, Vec::new());
    }
    if let Some(secret) = &o.store_key_secret {
        file.store.key_secret = Spanned::new(0..0, secret.clone());
    }
    if o.upstreams.is_empty() {
        return Ok(());
    }
    let mut targets: Vec<_> = o
        .upstreams
        .iter()
        .map(|t| Spanned::new(0..0, t.clone()))
        .collect();
    let upstreams = &mut file.upstreams;
    match upstreams.len() {
        0 => {
            let upstream = raw::Upstream::with_targets(targets);
            upstreams.insert("api".into(), Spanned::new(0..0, upstream));
        }
        1 => upstreams.values_mut().for_each(|u| {
            u.get_mut().targets = Spanned::new(0..0, std::mem::take(&mut targets));
        }),
        _ => {
            return Err(ConfigError::Invalid(Invalid {
                key: "--upstream".into(),
                line: None,
                message: "the file names several upstreams; set their targets there".into(),
            }));
        }
    }
    Ok(())
}

/// Checks the raw file as a whole and builds the typed config, reporting every error found.
pub(super) fn check(file: raw::File, source: &str) -> Result<Config, ConfigError> {
    let mut errs = Errors::new(source);
    let server = server(&file.server, &mut errs);
    let upstreams = super::upstream::check(&file.upstreams, &mut errs);
    let policies = super::policy::policies(&file.policies, &mut errs);
    let routes = routes(&file, &server, &upstreams, &policies, &mut errs);
    let batch = batch(&file.batch, &mut errs);
    let auth = super::auth::check(&file.auth, &policies, &mut errs);
    let store = super::store::check(&file.store, &mut errs);
    let telemetry = super::telemetry::check(&file.telemetry, &mut errs);
    super::auth::scopes_need_keys(&file, &mut errs);
    let request_id = header_name("headers.request_id", &file.headers.request_id, &mut errs);
    if let Some(name) = request_id
        .as_ref()
        .filter(|n| RESERVED.contains(&n.as_str()))
    {
        let msg = format!("{name:?} already means something to HTTP or to sluice");
        errs.push("headers.request_id", file.headers.request_id.span(), msg);
    }
    errs.finish()?;
    Ok(Config {
        hash: 0,
        server,
        upstreams,
        policies,
        routes,
        batch,
        auth,
        headers: Headers {
            ratelimit: file.headers.ratelimit,
            request_id: request_id.expect("checked above"),
        },
        store,
        telemetry,
    })
}

fn server(s: &raw::Server, errs: &mut Errors) -> Server {
    let listen = s.listen.get_ref().parse().unwrap_or_else(|_| {
        let msg = format!(
            "{:?} is not an address like 0.0.0.0:8080",
            s.listen.get_ref()
        );
        errs.push("server.listen", s.listen.span(), msg);
        SocketAddr::from(([0, 0, 0, 0], 0))
    });
    let admin_listen = match s.admin_listen.get_ref().as_str() {
        "" => None,
        a => a.parse().map(Some).unwrap_or_else(|_| {
            let msg = format!("{a:?} is not an address (\"\" turns it off)");
            errs.push("server.admin_listen", s.admin_listen.span(), msg);
            None
        }),
    };
    let status = *s.timeout_status.get_ref();
    if status != 408 && status != 504 {
        errs.push(
            "server.timeout_status",
            s.timeout_status.span(),
            "must be 408 or 504",
        );
    }
    let workers = match *s.workers.get_ref() {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n if n > MAX_WORKERS => {
            let msg = format!("at most {MAX_WORKERS} (one thread each; 0 is one per core)");
            errs.push("server.workers", s.workers.span(), msg);
            n
        }
        n => n,
    };
    let max_connections = at_least_one("server.max_connections", &s.max_connections, errs);
    let max_connections = within_fd_limit(&s.max_connections, max_connections, workers, errs);
    let header_read_timeout = errs.positive("server.header_read_timeout", &s.header_read_timeout);
    let request_timeout = errs.positive("server.request_timeout", &s.request_timeout);
    let idle_timeout = errs.positive("server.idle_timeout", &s.idle_timeout);
    // Less than this cannot hold a request line and a Host header.
    const MIN_HEAD: u64 = 256;
    if s.max_header_bytes.get_ref().0 < MIN_HEAD {
        let msg = format!("must be at least {MIN_HEAD}");
        errs.push("server.max_header_bytes", s.max_header_bytes.span(), msg);
    }
    let max_keys = at_least_one("server.max_keys", &s.max_keys, errs);
    Server {
        listen,
        admin_listen,
        workers,
        max_connections,
        header_read_timeout,
        request_timeout,
        timeout_status: StatusCode::from_u16(status).unwrap_or(StatusCode::REQUEST_TIMEOUT),
        idle_timeout,
        max_header_bytes: usize::try_from(s.max_header_bytes.get_ref().0).unwrap_or(usize::MAX),
        trusted_proxies: s.trusted_proxies.iter().map(|c| c.0).collect(),
        drain_timeout: s.drain_timeout.0,
        max_keys,
        access_log: s.access_log,
        tls: s
            .tls
            .as_ref()
            .and_then(|t| super::upstream::server_tls(t, errs)),
    }
}

/// Far more threads than any machine has cores: a typo, not a plan.
const MAX_WORKERS: usize = 1024;

/// A count that must not be zero.
fn at_least_one(key: &str, n: &Spanned<usize>, errs: &mut Errors) -> usize {
    if *n.get_ref() == 0 {
        errs.push(key, n.span(), "must be at least 1");
    }
    *n.get_ref()
}

fn routes(
    file: &raw::File,
    server: &Server,
    ups: &[Upstream],
    pols: &[Policy],
    errs: &mut Errors,
) -> Vec<Route> {
    if file.routes.is_empty() {
        if ups.len() > 1 {
            errs.push(
                "routes",
                second_upstream(file),
                "with several upstreams, [[routes]] must say where each path goes",
            );
        } else if ups.is_empty() {
            errs.push(
                "upstreams",
                0..0,
                "no upstream: pass --upstream URL or add [upstreams.NAME]",
            );
        }
        let default = pols.iter().position(|p| p.name == "default");
        return vec![Route {
            path: "/".into(),
            methods: Vec::new(),
            upstream: 0,
            policy: default,
            max_body: 1 << 20,
            content_types: Some(vec!["application/json".into()]),
            validate_json: true,
            scopes: Vec::new(),
            request_timeout: server.request_timeout,
            idempotency: None,
        }];
    }
    let mut out: Vec<Route> = Vec::new();
    for (i, r) in file.routes.iter().enumerate() {
        out.push(route(i, r, server, ups, pols, errs));
        if out[..i].iter().any(|o| o.path == out[i].path) {
            errs.push(
                format!("routes[{i}].path"),
                r.path.span(),
                "another route has the same path",
            );
        }
    }
    out
}

/// Where the file's second upstream starts: the one that makes `[[routes]]` necessary.
fn second_upstream(file: &raw::File) -> Range<usize> {
    let mut spans: Vec<Range<usize>> = file.upstreams.values().map(|u| u.span()).collect();
    spans.sort_by_key(|s| s.start);
    spans.get(1).cloned().unwrap_or(0..0)
}

fn route(
    i: usize,
    r: &raw::Route,
    server: &Server,
    ups: &[Upstream],
    pols: &[Policy],
    errs: &mut Errors,
) -> Route {
    let key = |k: &str| format!("routes[{i}].{k}");
    request_path(key("path"), &r.path, errs);
    let upstream = match &r.upstream {
        Some(name) => ups
            .iter()
            .position(|u| &u.name == name.get_ref())
            .unwrap_or_else(|| {
                errs.push(
                    key("upstream"),
                    name.span(),
                    format!("no [upstreams.{}]", name.get_ref()),
                );
                0
            }),
        None if ups.len() == 1 => 0,
        None => {
            errs.push(
                key("upstream"),
                r.path.span(),
                "missing: name one of the upstreams",
            );
            0
        }
    };
    let methods = r
        .methods
        .iter()
        .filter_map(
            |m| match Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()) {
                Ok(method) => Some(method),
                Err(_) => {
                    let msg = format!("{:?} is not an HTTP method", m.get_ref());
                    errs.push(key("methods"), m.span(), msg);
                    None
                }
            },
        )
        .collect();
    let content_types = if r.content_types.iter().any(|c| c.get_ref() == "*") {
        None
    } else {
        for c in &r.content_types {
            if c.get_ref().contains(';') {
                let msg = format!(
                    "{:?}: name the media type without parameters (a JSON charset is checked anyway)",
                    c.get_ref()
                );
                errs.push(key("content_types"), c.span(), msg);
            } else if c
                .get_ref()
                .split_once('/')
                .is_none_or(|(t, s)| t.is_empty() || s.is_empty())
            {
                errs.push(
                    key("content_types"),
                    c.span(),
                    format!(
                        "{:?} is not a media type like application/json",
                        c.get_ref()
                    ),
                );
            }
        }
        Some(
            r.content_types
                .iter()
                .map(|c| c.get_ref().trim().to_ascii_lowercase())
                .collect(),
        )
    };
    // The default policy has no line of its own; the route's path stands in for it.
    let policy_span = match r.policy.span() {
        s if s.is_empty() => r.path.span(),
        s => s,
    };
    Route {
        path: r.path.get_ref().clone(),
        methods,
        upstream,
        policy: super::policy::policy_ref(
            &key("policy"),
            r.policy.get_ref(),
            policy_span,
            pols,
            errs,
        ),
        max_body: r.max_body.0,
        content_types,
        validate_json: r.validate_json,
        scopes: r.scopes.iter().map(|s| s.get_ref().clone()).collect(),
        request_timeout: r
            .request_timeout
            .as_ref()
            .map_or(server.request_timeout, |d| {
                errs.positive(&key("request_timeout"), d)
            }),
        idempotency: r
            .idempotency
            .as_ref()
            .and_then(|t| super::idempotency::check(&key("idempotency"), t, errs)),
    }
}

/// A path requests are matched against: they are in normal form by then, so it must be too.
fn request_path(key: String, path: &Spanned<String>, errs: &mut Errors) {
    if !path.get_ref().starts_with('/') {
        return errs.push(key, path.span(), "must start with /");
    }
    match crate::path::normal(path.get_ref()) {
        Ok(None) => {}
        Ok(Some(normal)) => errs.push(
            key,
            path.span(),
            format!("never matches a request: write {normal:?}"),
        ),
        Err(_) => errs.push(key, path.span(), "has a % that does not begin an escape"),
    }
}

fn batch(b: &raw::Batch, errs: &mut Errors) -> Batch {
    request_path("batch.path".into(), &b.path, errs);
    if b.max_body.get_ref().0 == 0 {
        errs.push(
            "batch.max_body",
            b.max_body.span(),
            "must be at least 1 byte",
        );
    }
    Batch {
        enabled: b.enabled,
        path: b.path.get_ref().clone(),
        max_requests: at_least_one("batch.max_requests", &b.max_requests, errs),
        max_concurrency: at_least_one("batch.max_concurrency", &b.max_concurrency, errs),
        max_body: b.max_body.get_ref().0,
    }
}

/// Headers that frame, route or authenticate a message, and those sluice writes itself: a
/// request id written into one of them would break the message or the credentials, or let a
/// client set what the upstream trusts sluice for (`X-Real-IP`, `X-Sluice-Client`).
const RESERVED: [&str; 27] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "cookie",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "x-sluice-client",
    "ratelimit",
    "ratelimit-policy",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "retry-after",
    "www-authenticate",
    "allow",
    "date",
];

/// A header name from the config, made `'static`: it is cloned into every request and
/// response, and a static name clones without touching a reference count shared by all cores.
/// (One small leak per config load.)
fn header_name(key: &str, v: &Spanned<String>, errs: &mut Errors) -> Option<HeaderName> {
    let name = v.get_ref().trim().to_ascii_lowercase();
    if HeaderName::try_from(name.as_str()).is_err() {
        errs.push(
            key,
            v.span(),
            format!("{:?} is not a header name", v.get_ref()),
        );
        return Some(HeaderName::from_static("x-request-id"));
    }
    Some(HeaderName::from_static(Box::leak(name.into_boxed_str())))
}

/// `max_connections`, if the open file limit has room for it beside the reserve (see `fds`):
/// past the limit, accept would fail with nothing to answer, for everyone, before the cap
/// could make room. The default is lowered to fit; a value the config sets is refused, with
/// what would fit.
fn within_fd_limit(
    key: &Spanned<usize>,
    wanted: usize,
    workers: usize,
    errs: &mut Errors,
) -> usize {
    let limit = fds::soft_limit();
    let room = fds::connections_within(limit, workers);
    if wanted <= room || wanted == 0 {
        return wanted;
    }
    if key.span().is_empty() && room > 0 {
        return room;
    }
    let reserve = fds::reserve(workers);
    let msg = format!(
        "{wanted} connections need {} open files with {reserve} for the listeners and the \
         rest, but the open file limit is {limit}: set it to at most {room}, or raise the \
         limit (ulimit -n, systemd LimitNOFILE, or the container's nofile ulimit)",
        wanted as u64 + reserve
    );
    errs.push("server.max_connections", key.span(), msg);
    wanted
}
