//! Connections to a target: the one place that makes the transport (TCP, and TLS over it for
//! an `https://` target) and the client connection over that: HTTP/2 (hyper's) where the
//! upstream offers it by ALPN, HTTP/1.1 (`crate::h1`, driven by each request) otherwise.

use std::sync::Arc;
use std::time::Duration;

use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::body::Body;
use crate::config::Target;
use crate::h1::{Conn, Io};

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

/// A connection's sending half.
pub(super) enum Sender {
    /// One request at a time; kept in the pool between requests.
    H1(Box<Conn>),
    /// Many requests at once; shared by every request to the target.
    H2(http2::SendRequest<Body>),
}

/// A new connection to `target`, TLS included, within `timeout`; an HTTP/2 one's connection
/// task runs beside.
pub(super) async fn connect(
    target: &Target,
    tls: Option<&Tls>,
    timeout: Duration,
) -> Result<Sender, Failed> {
    let connecting = async {
        let stream = open(target).await.map_err(Failed::Unreachable)?;
        stream.set_nodelay(true).map_err(Failed::Unreachable)?;
        let Some(tls) = tls else {
            return Ok(Sender::H1(Box::new(Conn::new(Io::Tcp(stream)))));
        };
        let name = tls.name.clone();
        let stream = tls
            .connector
            .connect(name, stream)
            .await
            .map_err(Failed::Tls)?;
        if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
            http2(stream).await
        } else {
            Ok(Sender::H1(Box::new(Conn::new(Io::Tls(Box::new(stream))))))
        }
    };
    tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| Failed::Unreachable(std::io::ErrorKind::TimedOut.into()))?
}

/// The HTTP/2 client connection over `io`.
async fn http2<IO>(io: IO) -> Result<Sender, Failed>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| Failed::Unreachable(std::io::Error::other(e)))?;
    drive(conn);
    Ok(Sender::H2(sender))
}

/// Runs an HTTP/2 connection's task beside the requests that share it.
fn drive<F>(conn: F)
where
    F: std::future::Future<Output = hyper::Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
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
