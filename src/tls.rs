//! TLS configurations, built once from PEM files with rustls.
//!
//! The crypto provider is aws-lc-rs: rustls's default, the one its maintainers support for
//! post-quantum key exchange (X25519MLKEM768, preferred here), and FIPS-validated; ring's
//! provider is deprecated in rustls for lack of post-quantum algorithms. It builds with the C
//! compiler sluice needs anyway.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// The crypto provider every TLS configuration of sluice uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Why a TLS configuration could not be built; each names its file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate in it")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no PEM private key in it (PKCS#8, RSA or EC)")]
    NoKey { path: PathBuf },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error("the key does not match the certificate: {0}")]
    Mismatch(String),
    #[error("no trusted root certificate: the system has none, and tls_ca is not set")]
    NoRoots,
}

/// How sluice meets an https:// upstream: whom it trusts, and what it presents.
#[derive(Clone, PartialEq, Eq)]
pub struct Upstream {
    /// PEM bundle of the CAs to trust; `None`: the system's roots.
    pub ca: Option<PathBuf>,
    /// A client certificate chain and its key, for upstreams that ask (mTLS).
    pub client: Option<(PathBuf, PathBuf)>,
    /// Accept any certificate (a loud warning at start).
    pub insecure_skip_verify: bool,
}

impl Upstream {
    /// The rustls client configuration: HTTP/2 or HTTP/1.1 by ALPN, TLS 1.2 and 1.3.
    pub fn client_config(&self) -> Result<ClientConfig, Error> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the provider supports TLS 1.2 and 1.3");
        let builder = if self.insecure_skip_verify {
            let algorithms = provider().signature_verification_algorithms;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(algorithms)))
        } else {
            builder.with_root_certificates(self.roots()?)
        };
        let mut config = match &self.client {
            Some((cert, key)) => builder
                .with_client_auth_cert(certificates(cert)?, private_key(key)?)
                .map_err(|e| Error::Mismatch(e.to_string()))?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    fn roots(&self) -> Result<RootCertStore, Error> {
        let mut roots = RootCertStore::empty();
        match &self.ca {
            Some(path) => {
                for cert in certificates(path)? {
                    roots.add(cert).map_err(|e| Error::Invalid {
                        path: path.clone(),
                        what: e.to_string(),
                    })?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err(Error::NoRoots);
                }
            }
        }
        Ok(roots)
    }
}

/// HTTPS on the listener: its certificate, and whom it asks for client certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, RSA or EC).
    pub key: PathBuf,
    /// ALPN protocols offered, in order of preference.
    pub alpn: Vec<Vec<u8>>,
    /// TLS 1.3 only (`min_version = "1.3"`); else 1.2 and 1.3.
    pub tls13_only: bool,
    /// Clients must present a certificate signed by this CA (mTLS).
    pub client_ca: Option<PathBuf>,
}

impl Server {
    /// The rustls server configuration; checks that the key is the certificate's.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, Error> {
        let versions: &[&rustls::SupportedProtocolVersion] = if self.tls13_only {
            &[&rustls::version::TLS13]
        } else {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        };
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .expect("the provider supports TLS 1.2 and 1.3");
        let builder = match &self.client_ca {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates(path)? {
                    roots.add(cert).map_err(|e| invalid(path, e))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .map_err(|e| invalid(path, e))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certificates(&self.cert)?, private_key(&self.key)?)
            .map_err(|e| Error::Mismatch(e.to_string()))?;
        config.alpn_protocols = self.alpn.clone();
        Ok(config)
    }

    /// The files a certificate rotation changes.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        [&self.cert, &self.key]
            .into_iter()
            .chain(&self.client_ca)
            .map(PathBuf::as_path)
    }
}

fn invalid(path: &Path, e: impl fmt::Display) -> Error {
    Error::Invalid {
        path: path.to_owned(),
        what: e.to_string(),
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("ca", &self.ca)
            .field("client", &self.client.as_ref().map(|(cert, _)| cert))
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .finish()
    }
}

/// The certificates of a PEM file, in order; at least one.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Invalid {
            path: path.to_owned(),
            what: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => Error::NoKey {
            path: path.to_owned(),
        },
        other => Error::Invalid {
            path: path.to_owned(),
            what: other.to_string(),
        },
    })
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

/// Who a (verified) client certificate names: its first DNS name, else its subject's common
/// name, else `None`.
pub fn identity(cert: &CertificateDer<'_>) -> Option<String> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    if let Some(name) = parsed.valid_dns_names().next() {
        return Some(name.to_string());
    }
    common_name(parsed.subject())
}

/// The common name (OID 2.5.4.3) in a certificate subject's DER: the string after the OID.
fn common_name(subject: &[u8]) -> Option<String> {
    const CN: [u8; 5] = [0x06, 0x03, 0x55, 0x04, 0x03];
    let at = subject.windows(CN.len()).position(|w| w == CN)? + CN.len();
    let (&tag, rest) = subject.get(at..)?.split_first()?;
    // UTF8String, PrintableString, IA5String, TeletexString: one byte per character or UTF-8.
    if !matches!(tag, 0x0c | 0x13 | 0x16 | 0x14) {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        n if n < 0x80 => (usize::from(n), rest),
        0x81 => (usize::from(*rest.first()?), rest.get(1..)?),
        0x82 => (
            usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?])),
            rest.get(2..)?,
        ),
        _ => return None,
    };
    let name = std::str::from_utf8(rest.get(..len)?).ok()?;
    (!name.is_empty()).then(|| name.to_string())
}

/// The name an upstream's certificate is checked against (and sent as SNI): `name` if set,
/// else the target's host, a DNS name or an IP address.
pub fn server_name(name: Option<&str>, host: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(name.unwrap_or(host).to_owned()).ok()
}

/// `tls_insecure_skip_verify`: any certificate, for any name, is taken. The handshake's
/// signatures are still checked, so the connection is at least with the holder of the key.
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_common_name_is_read_from_a_subject() {
        // SEQUENCE { SET { SEQUENCE { OID 2.5.4.3, UTF8String "client-7" } } }
        let subject = [
            0x30, 0x13, 0x31, 0x11, 0x30, 0x0f, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x08, b'c',
            b'l', b'i', b'e', b'n', b't', b'-', b'7',
        ];
        assert_eq!(common_name(&subject[2..]).as_deref(), Some("client-7"));
        assert_eq!(common_name(&subject[..12]), None, "cut short");
        assert_eq!(common_name(&[0x30, 0x00]), None);
        let mut bmp = subject;
        bmp[11] = 0x1e;
        assert_eq!(common_name(&bmp), None, "strings sluice does not read");
    }
}
