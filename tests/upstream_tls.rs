//! `https://` upstreams: verified against `tls_ca` (or the system's roots), by name or by
//! `tls_server_name`, with a client certificate where the upstream asks for one; a certificate
//! that does not verify is a 502 that says so, counted under `kind="tls"`.

mod support;

use support::tls::{Ca, spawn_h2_upstream, spawn_https_upstream};
use support::*;

fn config(upstream: &str, tls: &str) -> String {
    format!(
        "[upstreams.api]\ntargets = [\"{upstream}\"]\n{tls}\n[[routes]]\npath = \"/\"\npolicy = \"none\"\n"
    )
}

fn path(p: &std::path::Path) -> String {
    p.display().to_string()
}

#[tokio::test]
async fn an_https_upstream_verified_by_tls_ca_gets_the_request_on_a_kept_connection() {
    let ca = Ca::new("upstream-ca");
    let up = spawn_https_upstream(&ca.leaf(&["127.0.0.1"]), None).await;
    let toml = config(&up.url(), &format!("tls_ca = \"{}\"", path(&ca.cert())));
    let sluice = spawn_sluice(&toml, "");
    for _ in 0..2 {
        let res = get(sluice.addr, "/v1/x?y=1").await;
        assert_eq!(res.status, 200, "{:?}", res.body);
        assert_eq!(&res.body[..], br#"{"tls":true}"#);
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].uri, "/v1/x?y=1");
    assert_eq!(seen[0].headers["x-forwarded-proto"], "http");
    assert!(seen[0].headers.contains_key("x-request-id"));
    assert_eq!(
        seen[0].peer, seen[1].peer,
        "the connection was kept and reused"
    );
}

/// The 502 a certificate that does not verify gets, and its counter.
async fn refused_for_tls(toml: &str) {
    let sluice = spawn_sluice(toml, "");
    let res = get(sluice.addr, "/").await;
    let body = assert_problem(&res, 502);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("certificate did not verify"),
        "{body}"
    );
    let text = sluice.metrics().await;
    let tls = r#"sluice_upstream_errors_total{upstream="api",kind="tls"}"#;
    assert_eq!(metric_value(&text, tls), 1.0, "{text}");
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_a_502_that_says_so() {
    let (ca, other) = (Ca::new("real"), Ca::new("other"));
    let up = spawn_https_upstream(&ca.leaf(&["127.0.0.1"]), None).await;
    refused_for_tls(&config(
        &up.url(),
        &format!("tls_ca = \"{}\"", path(&other.cert())),
    ))
    .await;
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn an_expired_certificate_is_a_502() {
    let ca = Ca::new("expired");
    let up = spawn_https_upstream(&ca.expired_leaf(&["127.0.0.1"]), None).await;
    refused_for_tls(&config(
        &up.url(),
        &format!("tls_ca = \"{}\"", path(&ca.cert())),
    ))
    .await;
}

#[tokio::test]
async fn the_name_checked_is_tls_server_name_when_set() {
    let ca = Ca::new("names");
    let up = spawn_https_upstream(&ca.leaf(&["api.internal"]), None).await;
    let ca_line = format!("tls_ca = \"{}\"", path(&ca.cert()));
    // Checked against the target's IP, which the certificate does not name.
    refused_for_tls(&config(&up.url(), &ca_line)).await;
    let wrong = format!("{ca_line}\ntls_server_name = \"other.internal\"");
    refused_for_tls(&config(&up.url(), &wrong)).await;
    let right = format!("{ca_line}\ntls_server_name = \"api.internal\"");
    let sluice = spawn_sluice(&config(&up.url(), &right), "");
    assert_eq!(get(sluice.addr, "/").await.status, 200);
}

#[tokio::test]
async fn a_client_certificate_is_presented_to_an_upstream_that_asks() {
    let (ca, clients) = (Ca::new("server"), Ca::new("clients"));
    let up = spawn_https_upstream(&ca.leaf(&["127.0.0.1"]), Some(&clients)).await;
    let ca_line = format!("tls_ca = \"{}\"", path(&ca.cert()));
    let without = spawn_sluice(&config(&up.url(), &ca_line), "");
    assert_eq!(get(without.addr, "/").await.status, 502);
    assert!(up.seen().is_empty());
    let me = clients.leaf(&["sluice.test"]);
    let with = format!(
        "{ca_line}\ntls_client_cert = \"{}\"\ntls_client_key = \"{}\"",
        path(&me.cert),
        path(&me.key)
    );
    let sluice = spawn_sluice(&config(&up.url(), &with), "");
    assert_eq!(get(sluice.addr, "/").await.status, 200);
    assert!(up.seen()[0].client_cert);
}

#[tokio::test]
async fn tls_insecure_skip_verify_takes_any_certificate_and_says_so_loudly() {
    let (ca, _other) = (Ca::new("unknown"), Ca::new("unused"));
    let up = spawn_https_upstream(&ca.expired_leaf(&["elsewhere.test"]), None).await;
    let p =
        process::Process::start(&config(&up.url(), "tls_insecure_skip_verify = true"), &[]).await;
    assert_eq!(get(p.addr, "/").await.status, 200);
    let log = p.log();
    assert!(log.contains("tls_insecure_skip_verify"), "{log}");
    assert!(log.contains("WARN"), "{log}");
}

#[test]
fn bad_tls_settings_are_named_by_key_and_line() {
    let check = |toml: &str| {
        let (code, stderr) = process::check(toml);
        assert_eq!(code, Some(1), "{stderr}");
        stderr
    };
    let missing = check(
        "[upstreams.api]\ntargets = [\"https://127.0.0.1:1\"]\ntls_ca = \"/nonexistent/ca.pem\"\n",
    );
    assert!(
        missing.contains("line 3: `upstreams.api.tls_ca`: cannot read /nonexistent/ca.pem"),
        "{missing}"
    );
    let half = check(
        "[upstreams.api]\ntargets = [\"https://127.0.0.1:1\"]\ntls_client_cert = \"/x.pem\"\n",
    );
    assert!(
        half.contains(
            "`upstreams.api.tls_client_cert`: tls_client_cert and tls_client_key go together"
        ),
        "{half}"
    );
    let plain = check("[upstreams.api]\ntargets = [\"http://127.0.0.1:1\"]\ntls_ca = \"/x.pem\"\n");
    assert!(
        plain.contains("line 3: `upstreams.api.targets`: TLS settings need an https:// target"),
        "{plain}"
    );
}

#[tokio::test]
async fn an_upstream_that_offers_http2_gets_it_on_a_shared_connection() {
    let ca = Ca::new("h2");
    let up = spawn_h2_upstream(&ca.leaf(&["127.0.0.1"])).await;
    let toml = config(&up.url(), &format!("tls_ca = \"{}\"", path(&ca.cert())));
    let sluice = spawn_sluice(&toml, "");
    let (a, b) = tokio::join!(get(sluice.addr, "/v1/a?q=1"), get(sluice.addr, "/v1/b"));
    assert_eq!((a.status.as_u16(), b.status.as_u16()), (200, 200));
    assert_eq!(&a.body[..], br#"{"tls":true}"#);
    let again = get(sluice.addr, "/v1/c").await;
    assert_eq!(again.status, 200);
    let seen = up.seen();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter().all(|s| s.version == http::Version::HTTP_2),
        "{seen:?}"
    );
    let mut uris: Vec<&str> = seen.iter().map(|s| s.uri.as_str()).collect();
    uris.sort();
    assert_eq!(
        uris,
        [
            "https://sluice.test/v1/a?q=1",
            "https://sluice.test/v1/b",
            "https://sluice.test/v1/c",
        ]
    );
    // The two at once may each have opened one; the third goes on one already open.
    let mut peers: Vec<_> = seen.iter().map(|s| s.peer).collect();
    peers.sort();
    peers.dedup();
    assert!(peers.len() <= 2, "{peers:?}");
    let third = seen.iter().find(|s| s.uri.ends_with("/v1/c")).unwrap();
    let on_it = seen.iter().filter(|s| s.peer == third.peer).count();
    assert!(
        on_it >= 2,
        "the third request came on a connection of its own"
    );
    // The fields sluice adds, which an HTTP/1.1 head takes as text, go into HTTP/2's map.
    let added = &seen[0].headers;
    assert_eq!(added["x-real-ip"], "127.0.0.1");
    assert_eq!(added["x-forwarded-for"], "127.0.0.1");
    assert_eq!(added["x-forwarded-proto"], "http");
    assert_eq!(added["x-forwarded-host"], "sluice.test");
    assert_eq!(added["x-request-id"].len(), 16);
}
