//! TLS on both sides: `[server.tls]`, and `[upstreams.NAME]` with its targets (`http://` or
//! `https://`) and, for `https://` ones, the TLS settings. Each is built into a rustls
//! configuration here, so that a bad file stops sluice at load, naming its key.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use http::HeaderValue;
use toml::Spanned;

use super::error::Errors;
use super::{ServerTls, Target, Upstream, UpstreamTls, raw};

pub(super) fn check(
    raw: &BTreeMap<String, Spanned<raw::Upstream>>,
    errs: &mut Errors,
) -> Vec<Upstream> {
    let mut out = Vec::new();
    for (name, u) in raw {
        let u = u.get_ref();
        let key = format!("upstreams.{name}.targets");
        if u.targets.get_ref().is_empty() {
            errs.push(&key, u.targets.span(), "needs at least one target");
        }
        let targets = u
            .targets
            .get_ref()
            .iter()
            .filter_map(|t| {
                target(t.get_ref())
                    .map_err(|m| errs.push(&key, t.span(), m))
                    .ok()
            })
            .collect::<Vec<Target>>();
        let host = targets.first().map(Target::authority).unwrap_or_default();
        let tls = tls(name, u, targets.iter().any(|t| t.tls), errs);
        out.push(Upstream {
            name: name.clone(),
            host: HeaderValue::try_from(host).unwrap_or(HeaderValue::from_static("localhost")),
            targets,
            connect_timeout: errs.positive(
                &format!("upstreams.{name}.connect_timeout"),
                &u.connect_timeout,
            ),
            tls,
        });
    }
    out
}

/// Parses `http://host:port` or `https://host:port`.
fn target(s: &str) -> Result<Target, String> {
    let uri: http::Uri = s
        .parse()
        .map_err(|_| format!("{s:?} is not a URL like http://127.0.0.1:3000"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("{s:?}: a target is http:// or https://")),
    };
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(format!(
            "{s:?}: a target is scheme, host and port, without a path"
        ));
    }
    let host = uri.host().ok_or_else(|| format!("{s:?} has no host"))?;
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(format!("{s:?}: a target has no user info"));
    }
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    // Read by hand: `Uri::port` is `None` for a port out of range, which would mean 80.
    let authority = uri.authority().map_or("", |a| a.as_str());
    let after_host = authority
        .rfind(']')
        .map_or(authority, |i| &authority[i + 1..]);
    let port = match after_host.rsplit_once(':') {
        None if tls => 443,
        None => 80,
        Some((_, p)) => p
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{s:?}: the port must be 1 to 65535"))?,
    };
    let addr = host
        .parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, port));
    Ok(Target {
        host,
        port,
        addr,
        tls,
    })
}

/// The TLS settings of upstream `name`, whose targets include `https://` ones if `https`.
fn tls(name: &str, u: &raw::Upstream, https: bool, errs: &mut Errors) -> Option<UpstreamTls> {
    let key = |k: &str| format!("upstreams.{name}.{k}");
    let path = |v: &Spanned<String>| (!v.get_ref().is_empty()).then(|| PathBuf::from(v.get_ref()));
    let set = [
        &u.tls_ca,
        &u.tls_server_name,
        &u.tls_client_cert,
        &u.tls_client_key,
    ];
    if !https {
        if let Some(v) = set.iter().find(|v| !v.get_ref().is_empty()) {
            errs.push(
                key("targets"),
                v.span(),
                "TLS settings need an https:// target",
            );
        }
        return None;
    }
    let client = match (path(&u.tls_client_cert), path(&u.tls_client_key)) {
        (Some(cert), Some(k)) => Some((cert, k)),
        (None, None) => None,
        _ => {
            let msg = "tls_client_cert and tls_client_key go together: set both or neither";
            errs.push(key("tls_client_cert"), u.tls_client_cert.span(), msg);
            None
        }
    };
    let server_name = Some(u.tls_server_name.get_ref().clone()).filter(|n| !n.is_empty());
    if let Some(n) = &server_name
        && crate::tls::server_name(Some(n), "").is_none()
    {
        let msg = format!("{n:?} is not a DNS name or an IP address");
        errs.push(key("tls_server_name"), u.tls_server_name.span(), msg);
    }
    let settings = crate::tls::Upstream {
        ca: path(&u.tls_ca),
        client,
        insecure_skip_verify: u.tls_insecure_skip_verify,
    };
    match settings.client_config() {
        Ok(config) => Some(UpstreamTls {
            settings,
            config: Arc::new(config),
            server_name,
        }),
        Err(e) => {
            // The file that failed names the key: the CA bundle, or the client's pair.
            let span = match &e {
                crate::tls::Error::Read { path, .. }
                | crate::tls::Error::NoCertificate { path }
                | crate::tls::Error::Invalid { path, .. }
                    if Some(path) == settings.ca.as_ref() =>
                {
                    (key("tls_ca"), u.tls_ca.span())
                }
                crate::tls::Error::NoRoots => (key("tls_ca"), u.tls_ca.span()),
                crate::tls::Error::NoKey { .. } => (key("tls_client_key"), u.tls_client_key.span()),
                _ => (key("tls_client_cert"), u.tls_client_cert.span()),
            };
            errs.push(span.0, span.1, e.to_string());
            None
        }
    }
}

/// `[server.tls]`, built into the listener's rustls configuration.
pub(super) fn server_tls(t: &Spanned<raw::ServerTls>, errs: &mut Errors) -> Option<ServerTls> {
    let (t, at) = (t.get_ref(), t.span());
    let key = |k: &str| format!("server.tls.{k}");
    let mut alpn = Vec::new();
    for name in t.alpn.get_ref() {
        match name.as_str() {
            "h2" | "http/1.1" => alpn.push(name.as_bytes().to_vec()),
            other => {
                let msg =
                    format!("{other:?}: ALPN names sluice speaks are \"h2\" and \"http/1.1\"");
                errs.push(key("alpn"), t.alpn.span(), msg);
            }
        }
    }
    let tls13_only = match t.min_version.get_ref().as_str() {
        "1.2" => false,
        "1.3" => true,
        other => {
            let msg = format!("{other:?}: \"1.2\" or \"1.3\"");
            errs.push(key("min_version"), t.min_version.span(), msg);
            false
        }
    };
    let settings = crate::tls::Server {
        cert: PathBuf::from(t.cert.get_ref()),
        key: PathBuf::from(t.key.get_ref()),
        alpn,
        tls13_only,
        client_ca: (!t.client_ca.get_ref().is_empty())
            .then(|| PathBuf::from(t.client_ca.get_ref())),
    };
    match settings.server_config() {
        Ok(config) => Some(ServerTls {
            settings,
            config: Arc::new(config),
        }),
        Err(e) => {
            let (name, span) = match &e {
                crate::tls::Error::NoKey { .. } => ("key", t.key.span()),
                crate::tls::Error::Read { path, .. }
                | crate::tls::Error::NoCertificate { path }
                | crate::tls::Error::Invalid { path, .. } => {
                    if Some(path) == settings.client_ca.as_ref() {
                        ("client_ca", t.client_ca.span())
                    } else if *path == settings.key {
                        ("key", t.key.span())
                    } else {
                        ("cert", t.cert.span())
                    }
                }
                _ => ("cert", at),
            };
            errs.push(key(name), span, e.to_string());
            None
        }
    }
}
