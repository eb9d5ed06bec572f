//! HTTPS on the listener: HTTP/1.1 and HTTP/2 by ALPN, client certificates (required, as the
//! client's key, as an `[[auth.keys]]` entry), the guards over TLS, a handshake that does not
//! finish in time, and certificates that rotate without dropping a connection.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use rustls::pki_types::pem::PemObject;
use support::tls::{Ca, Client, Leaf, connect, send_tls, served_name, spawn_https_upstream};
use support::*;

fn tls_table(leaf: &Leaf, extra: &str) -> String {
    format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n{extra}\n",
        path(&leaf.cert),
        path(&leaf.key)
    )
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

fn open_routes(upstream: &str) -> String {
    format!(
        "[upstreams.api]\ntargets = [\"{upstream}\"]\n[[routes]]\npath = \"/\"\npolicy = \"none\"\n"
    )
}

fn get_req(path: &str) -> http::Request<Full<Bytes>> {
    request(Method::GET, path).body(Full::default()).unwrap()
}

#[tokio::test]
async fn https_over_http1_and_http2_reaches_the_upstream_as_https() {
    let (ca, up) = (Ca::new("listener"), spawn_upstream().await);
    let leaf = ca.leaf(&["127.0.0.1"]);
    let sluice = spawn_sluice(
        &format!("{}{}", tls_table(&leaf, ""), open_routes("{upstream}")),
        &up.url(),
    );
    for h2 in [false, true] {
        let client = Client {
            ca: &ca,
            h2,
            cert: None,
        };
        let res = send_tls(sluice.addr, &client, get_req("/v1/x"))
            .await
            .unwrap();
        assert_eq!(res.status, 200, "h2 {h2}");
        let seen = up.last();
        assert_eq!(seen.headers["x-forwarded-proto"], "https");
        assert_eq!(seen.uri, "/v1/x");
        assert!(!res.header("x-request-id").is_empty());
    }
    // Plain HTTP on the same port is not spoken.
    let plain = tokio::time::timeout(
        Duration::from_secs(2),
        raw::exchange(sluice.addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await;
    assert!(plain.is_ok_and(|text| !text.starts_with("HTTP/1.1 200")));
}

#[tokio::test]
async fn https_in_front_of_an_https_upstream() {
    let (ca, up_ca) = (Ca::new("front"), Ca::new("back"));
    let up = spawn_https_upstream(&up_ca.leaf(&["127.0.0.1"]), None).await;
    let toml = format!(
        "{}[upstreams.api]\ntargets = [\"{}\"]\ntls_ca = \"{}\"\n[[routes]]\npath = \"/\"\npolicy = \"none\"\n",
        tls_table(&ca.leaf(&["127.0.0.1"]), ""),
        up.url(),
        path(&up_ca.cert())
    );
    let sluice = spawn_sluice(&toml, "");
    let client = Client {
        ca: &ca,
        h2: true,
        cert: None,
    };
    let res = send_tls(sluice.addr, &client, get_req("/y")).await.unwrap();
    assert_eq!(
        (res.status.as_u16(), &res.body[..]),
        (200, &br#"{"tls":true}"#[..])
    );
    assert_eq!(up.seen()[0].headers["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn a_required_client_certificate_missing_fails_the_handshake() {
    let (ca, clients, up) = (Ca::new("srv"), Ca::new("clients"), spawn_upstream().await);
    let extra = format!("client_ca = \"{}\"", path(&clients.cert()));
    let toml = format!(
        "{}{}",
        tls_table(&ca.leaf(&["127.0.0.1"]), &extra),
        open_routes("{upstream}")
    );
    let sluice = spawn_sluice(&toml, &up.url());
    let anonymous = Client {
        ca: &ca,
        h2: false,
        cert: None,
    };
    assert!(
        send_tls(sluice.addr, &anonymous, get_req("/"))
            .await
            .is_err()
    );
    let strangers = Ca::new("strangers");
    let stranger = strangers.leaf(&["mallory.test"]);
    let forged = Client {
        ca: &ca,
        h2: false,
        cert: Some(&stranger),
    };
    assert!(send_tls(sluice.addr, &forged, get_req("/")).await.is_err());
    assert!(up.seen().is_empty());
    let me = clients.leaf(&["alice.clients.test"]);
    let known = Client {
        ca: &ca,
        h2: false,
        cert: Some(&me),
    };
    assert_eq!(
        send_tls(sluice.addr, &known, get_req("/"))
            .await
            .unwrap()
            .status,
        200
    );
}

/// Each certificate is a client of its own under `key = "client_cert"`, and one named by
/// `cert_sha256` is that key's client.
#[tokio::test]
async fn client_certificates_are_clients_for_limits_and_keys() {
    let (ca, clients, up) = (Ca::new("srv2"), Ca::new("clients2"), spawn_upstream().await);
    let (alice, bob) = (clients.leaf(&["alice.test"]), clients.leaf(&["bob.test"]));
    let alice_der = rustls::pki_types::CertificateDer::pem_file_iter(&alice.cert)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let fingerprint = sha256_bytes(alice_der.as_ref());
    let toml = format!(
        "{}[upstreams.api]\ntargets = [\"{{upstream}}\"]\n\
         [policies.default]\nrate = \"1/m\"\nburst = 2\nkey = \"client_cert\"\n\
         [auth]\nmode = \"api_keys\"\n[[auth.keys]]\nname = \"alice-service\"\ncert_sha256 = \"{fingerprint}\"\n",
        tls_table(
            &ca.leaf(&["127.0.0.1"]),
            &format!("client_ca = \"{}\"", path(&clients.cert()))
        ),
    );
    let sluice = spawn_sluice(&toml, &up.url());
    let as_alice = Client {
        ca: &ca,
        h2: false,
        cert: Some(&alice),
    };
    let as_bob = Client {
        ca: &ca,
        h2: false,
        cert: Some(&bob),
    };
    for _ in 0..2 {
        assert_eq!(
            send_tls(sluice.addr, &as_alice, get_req("/"))
                .await
                .unwrap()
                .status,
            200
        );
    }
    assert_eq!(
        send_tls(sluice.addr, &as_alice, get_req("/"))
            .await
            .unwrap()
            .status,
        429
    );
    assert_eq!(up.last().headers["x-sluice-client"], "alice-service");
    // Bob's certificate is trusted but names no key: 401, and his own standing.
    let bob_res = send_tls(sluice.addr, &as_bob, get_req("/")).await.unwrap();
    assert_problem(&bob_res, 401);
    assert!(
        bob_res.header("ratelimit").starts_with(r#""default";r=2;"#),
        "{}",
        bob_res.header("ratelimit")
    );
}

fn sha256_bytes(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn a_handshake_trickled_slower_than_header_read_timeout_is_closed() {
    let (ca, up) = (Ca::new("slow"), spawn_upstream().await);
    let toml = format!(
        "[server]\nheader_read_timeout = \"300ms\"\n{}{}",
        tls_table(&ca.leaf(&["127.0.0.1"]), ""),
        open_routes("{upstream}")
    );
    let sluice = spawn_sluice(&toml, &up.url());
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(sluice.addr).await.unwrap();
    let started = Instant::now();
    // The start of a ClientHello, a byte at a time.
    for byte in [0x16u8, 0x03, 0x01, 0x00] {
        if s.write_all(&[byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the connection was held open");
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "{took:?}");
}

#[tokio::test]
async fn the_guards_hold_over_tls() {
    let (ca, up) = (Ca::new("guards"), spawn_upstream().await);
    let toml = format!(
        "[server]\nheader_read_timeout = \"300ms\"\nmax_header_bytes = \"1KiB\"\n{}\
         [upstreams.api]\ntargets = [\"{{upstream}}\"]\n[[routes]]\npath = \"/\"\npolicy = \"none\"\nmax_body = \"16B\"\n",
        tls_table(&ca.leaf(&["127.0.0.1"]), "")
    );
    let sluice = spawn_sluice(&toml, &up.url());
    let client = Client {
        ca: &ca,
        h2: false,
        cert: None,
    };
    use tokio::io::AsyncWriteExt;
    // Half a head: 408 at header_read_timeout.
    let mut tls = connect(sluice.addr, &client).await.unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let answer = read_all(&mut tls).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    // A head over max_header_bytes: 431.
    let mut tls = connect(sluice.addr, &client).await.unwrap();
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2048)
    );
    tls.write_all(big.as_bytes()).await.unwrap();
    let answer = read_all(&mut tls).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    // A body over max_body: 413, and the upstream sees nothing.
    let res = send_tls(
        sluice.addr,
        &client,
        post_json("/", r#"{"much":"too long a body"}"#),
    )
    .await
    .unwrap();
    assert_problem(&res, 413);
    assert!(up.seen().is_empty());
}

/// What comes on `tls` until it closes (or 3 s pass), as text.
async fn read_all(tls: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), tls.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

/// New certificate files, picked up by a reload: requests in flight finish on the old
/// handshake, new handshakes get the new certificate, nothing fails. A bad one is refused,
/// and the one in force stays.
#[tokio::test]
async fn certificates_rotate_without_dropping_a_connection() {
    let (ca, up) = (Ca::new("rotate"), spawn_upstream().await);
    let (cert, key) = (ca.dir.join("live.pem"), ca.dir.join("live.key"));
    let install = |leaf: &Leaf| {
        std::fs::copy(&leaf.cert, &cert).unwrap();
        std::fs::copy(&leaf.key, &key).unwrap();
    };
    install(&ca.leaf(&["first.test", "127.0.0.1"]));
    let toml = format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n{}",
        path(&cert),
        path(&key),
        open_routes(&up.url())
    );
    let p = process::Process::start(&toml, &[]).await;
    let client = Client {
        ca: &ca,
        h2: false,
        cert: None,
    };
    assert_eq!(
        served_name(&connect(p.addr, &client).await.unwrap()),
        "first.test"
    );
    let in_flight = send_tls(p.addr, &client, get_req("/slow/800"));
    let rotate = async {
        up.wait_for(1).await;
        install(&ca.leaf(&["second.test", "127.0.0.1"]));
        let answer = post_reload(p.admin).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
    };
    let (res, ()) = tokio::join!(in_flight, rotate);
    assert_eq!(res.unwrap().status, 200, "the request in flight finished");
    assert_eq!(
        served_name(&connect(p.addr, &client).await.unwrap()),
        "second.test"
    );
    // A certificate that is not a certificate: refused with the reason, the old one stays.
    std::fs::write(&cert, "not a certificate").unwrap();
    let refused = post_reload(p.admin).await;
    assert_eq!(refused.status, 422);
    let text = String::from_utf8_lossy(&refused.body);
    assert!(text.contains("server.tls.cert"), "{text}");
    assert_eq!(
        served_name(&connect(p.addr, &client).await.unwrap()),
        "second.test"
    );
    assert!(p.log().contains("config reload refused"));
}

/// cert-manager rotates a mounted Secret by swapping files: sluice sees the change by itself.
#[tokio::test]
async fn changed_certificate_files_are_picked_up_without_a_reload_request() {
    let (ca, up) = (Ca::new("watch"), spawn_upstream().await);
    let (cert, key) = (ca.dir.join("w.pem"), ca.dir.join("w.key"));
    let first = ca.leaf(&["one.test", "127.0.0.1"]);
    std::fs::copy(&first.cert, &cert).unwrap();
    std::fs::copy(&first.key, &key).unwrap();
    let toml = format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n{}",
        path(&cert),
        path(&key),
        open_routes(&up.url())
    );
    let p = process::Process::start(&toml, &[]).await;
    let client = Client {
        ca: &ca,
        h2: true,
        cert: None,
    };
    assert_eq!(
        served_name(&connect(p.addr, &client).await.unwrap()),
        "one.test"
    );
    // Written aside, then renamed into place: what a Secret's update amounts to.
    let next = ca.leaf(&["two.test", "127.0.0.1"]);
    std::fs::copy(&next.key, ca.dir.join("next.key")).unwrap();
    std::fs::copy(&next.cert, ca.dir.join("next.pem")).unwrap();
    std::fs::rename(ca.dir.join("next.key"), &key).unwrap();
    std::fs::rename(ca.dir.join("next.pem"), &cert).unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let name = served_name(&connect(p.addr, &client).await.unwrap());
        if name == "two.test" {
            break;
        }
        assert!(Instant::now() < until, "still {name}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn check_refuses_a_key_that_is_not_the_certificates() {
    let ca = Ca::new("check");
    let (a, b) = (ca.leaf(&["a.test"]), ca.leaf(&["b.test"]));
    let toml = format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n[upstreams.api]\ntargets = [\"http://127.0.0.1:1\"]\n",
        path(&a.cert),
        path(&b.key)
    );
    let (code, stderr) = process::check(&toml);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("`server.tls.cert`: the key does not match the certificate"),
        "{stderr}"
    );
    let missing = toml.replace(&path(&a.cert), "/nonexistent.pem");
    let (_, stderr) = process::check(&missing);
    assert!(
        stderr.contains("line 2: `server.tls.cert`: cannot read /nonexistent.pem"),
        "{stderr}"
    );
}
