//! TLS for tests: certificate authorities and certificates made at test time (rcgen; no key is
//! ever committed), written to a directory of the test's own, and an HTTPS upstream on
//! loopback that records what it received.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, date_time_ymd,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// A certificate authority of the test's own, its certificate written as `ca.pem` in `dir`.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub dir: PathBuf,
    name: String,
}

/// A certificate and its key, as PEM files.
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let dir = std::env::temp_dir().join(format!(
            "sluice-tls-{}-{name}-{}",
            std::process::id(),
            unique()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), issuer.pem()).unwrap();
        Ca {
            issuer,
            dir,
            name: name.to_string(),
        }
    }

    /// The CA's certificate, PEM.
    pub fn cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for `names` (DNS names or IP addresses), valid now.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        self.issue(names, |_| {})
    }

    /// A certificate for `names` that expired in 2020.
    pub fn expired_leaf(&self, names: &[&str]) -> Leaf {
        self.issue(names, |params| {
            params.not_before = date_time_ymd(2019, 1, 1);
            params.not_after = date_time_ymd(2020, 1, 1);
        })
    }

    fn issue(&self, names: &[&str], adjust: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        adjust(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let stem = format!("{}-{}", self.name, unique());
        let leaf = Leaf {
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}.key")),
        };
        std::fs::write(&leaf.cert, cert.pem()).unwrap();
        std::fs::write(&leaf.key, key.serialize_pem()).unwrap();
        leaf
    }
}

impl Drop for Ca {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// What the HTTPS upstream received: the request head, and whether the client presented a
/// certificate.
#[derive(Debug, Clone)]
pub struct Seen {
    pub version: http::Version,
    pub uri: String,
    pub headers: http::HeaderMap,
    pub peer: SocketAddr,
    pub client_cert: bool,
}

/// An HTTPS (HTTP/1.1) upstream on loopback, answering `200 {"tls":true}`.
pub struct HttpsUpstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl HttpsUpstream {
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Serves `leaf` over HTTP/1.1; with `clients`, requires a client certificate signed by that
/// CA.
pub async fn spawn_https_upstream(leaf: &Leaf, clients: Option<&Ca>) -> HttpsUpstream {
    spawn(leaf, clients, false).await
}

/// Serves `leaf`, offering HTTP/2 by ALPN (and HTTP/1.1).
pub async fn spawn_h2_upstream(leaf: &Leaf) -> HttpsUpstream {
    spawn(leaf, None, true).await
}

async fn spawn(leaf: &Leaf, clients: Option<&Ca>, h2: bool) -> HttpsUpstream {
    let chain = CertificateDer::pem_file_iter(&leaf.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&leaf.key).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap();
    let builder = match clients {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca.cert()).unwrap() {
                roots.add(cert.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = match h2 {
        true => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        false => vec![b"http/1.1".to_vec()],
    };
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let (acceptor, log) = (acceptor.clone(), log.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let client_cert = tls.get_ref().1.peer_certificates().is_some();
                let service = service_fn(move |req: Request<Incoming>| {
                    let log = log.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let _ = body.collect().await;
                        log.lock().unwrap().push(Seen {
                            version: parts.version,
                            uri: parts.uri.to_string(),
                            headers: parts.headers,
                            peer,
                            client_cert,
                        });
                        let mut res =
                            Response::new(Full::new(Bytes::from_static(br#"{"tls":true}"#)));
                        res.headers_mut()
                            .insert("content-type", "application/json".parse().unwrap());
                        Ok::<_, Infallible>(res)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(TokioIo::new(tls), service)
                .await;
            });
        }
    });
    HttpsUpstream { addr, seen }
}

/// How a test client meets an HTTPS listener.
pub struct Client<'a> {
    /// The CA the client trusts.
    pub ca: &'a Ca,
    /// HTTP/2 (offered by ALPN) or HTTP/1.1.
    pub h2: bool,
    /// A client certificate to present.
    pub cert: Option<&'a Leaf>,
}

/// A TLS connection to `addr` as `client` would make it; the handshake's error otherwise.
pub async fn connect(
    addr: SocketAddr,
    client: &Client<'_>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(client.ca.cert()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match client.cert {
        Some(leaf) => {
            let chain = CertificateDer::pem_file_iter(&leaf.cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(&leaf.key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![if client.h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(addr.ip().to_string()).unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    // With TLS 1.3 a refused client certificate shows only at the first read.
    use tokio::io::AsyncReadExt;
    let mut none = [0u8; 0];
    let _ = tokio::time::timeout(std::time::Duration::from_millis(1), tls.read(&mut none)).await;
    Ok(tls)
}

/// The subject's common name of the certificate the server presented on `tls`: the string
/// after the last OID 2.5.4.3 in its DER (the issuer's comes first).
pub fn served_name(tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> String {
    const CN: [u8; 5] = [0x06, 0x03, 0x55, 0x04, 0x03];
    let der = tls.get_ref().1.peer_certificates().unwrap()[0].as_ref();
    let at = der.windows(5).rposition(|w| w == CN).unwrap() + 5;
    let len = der[at + 1] as usize;
    String::from_utf8(der[at + 2..at + 2 + len].to_vec()).unwrap()
}

/// Sends `req` over a new TLS connection to `addr`.
pub async fn send_tls(
    addr: SocketAddr,
    client: &Client<'_>,
    req: Request<Full<Bytes>>,
) -> std::io::Result<super::Answer> {
    let tls = connect(addr, client).await?;
    let io = TokioIo::new(tls);
    let res = if client.h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        sender.send_request(req).await
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        sender.send_request(req).await
    };
    let (parts, body) = res.map_err(std::io::Error::other)?.into_parts();
    let body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    Ok(super::Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}
