//! Connections to a target: the one place that makes the transport (TCP, and TLS over it for
//! an `https://` target) and the HTTP/1.1 client connection over that.

use std::sync::Arc;
use std::time::Duration;

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::body::Body;
use crate::config::Target;
use crate::flat::FlatWrites;

/// TLS to one `https://` target: the upstream's configuration, and the name its certificate
/// is checked against (also sent as SNI, unless it is an IP address).
#[derive(Clone)]
pub(super) struct Tls {
    pub connector: TlsConnector,
    pub name: ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("name", &self.name).finish()
    }
}

impl Tls {
    pub fn new(config: Arc<rustls::ClientConfig>, name: ServerName<'static>) -> Tls {
        Tls {
            connector: TlsConnector::from(config),
            name,
        }
    }
}

/// Why no connection was made.
#[derive(Debug)]
pub(super) enum Failed {
    /// Refused, unreachable, or not within the connect timeout.
    Unreachable(std::io::Error),
    /// The TLS handshake failed: most often a certificate that does not verify.
    Tls(std::io::Error),
}

/// A new HTTP/1.1 connection to `target`, TLS included, within `timeout`; its connection task
/// runs beside.
pub(super) async fn connect(
    target: &Target,
    tls: Option<&Tls>,
    timeout: Duration,
) -> Result<SendRequest<Body>, Failed> {
    let connecting = async {
        let stream = open(target).await.map_err(Failed::Unreachable)?;
        stream.set_nodelay(true).map_err(Failed::Unreachable)?;
        match tls {
            None => handshake(FlatWrites(stream)).await,
            Some(tls) => {
                let name = tls.name.clone();
                let stream = tls.connector.connect(name, stream).await;
                handshake(stream.map_err(Failed::Tls)?).await
            }
        }
    };
    tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| Failed::Unreachable(std::io::ErrorKind::TimedOut.into()))?
}

/// The HTTP/1.1 client connection over `io`.
async fn handshake<IO>(io: IO) -> Result<SendRequest<Body>, Failed>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| Failed::Unreachable(std::io::Error::other(e)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
    Ok(sender)
}

/// A TCP connection to `target`.
async fn open(target: &Target) -> std::io::Result<TcpStream> {
    match target.addr {
        Some(addr) => TcpStream::connect(addr).await,
        None => TcpStream::connect((target.host.as_str(), target.port)).await,
    }
}

/// A TCP connection to `target`, or an error if it is refused or takes longer than `timeout`.
pub(super) async fn reachable(target: &Target, timeout: Duration) -> std::io::Result<TcpStream> {
    tokio::time::timeout(timeout, open(target))
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)?
}
