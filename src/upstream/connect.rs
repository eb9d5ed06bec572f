//! Connections to a target: the one place that makes the transport (plain TCP today) and the
//! HTTP/1.1 client connection over it.

use std::time::Duration;

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::Body;
use crate::config::Target;
use crate::flat::FlatWrites;

/// A new HTTP/1.1 connection to `target`, within `timeout`; its connection task runs beside.
pub(super) async fn connect(
    target: &Target,
    timeout: Duration,
) -> std::io::Result<SendRequest<Body>> {
    let stream = open(target, timeout).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(FlatWrites(stream)))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
    Ok(sender)
}

/// A TCP connection to `target`, or an error if it is refused or takes longer than `timeout`.
pub(super) async fn open(target: &Target, timeout: Duration) -> std::io::Result<TcpStream> {
    let connecting = async {
        match target.addr {
            Some(addr) => TcpStream::connect(addr).await,
            None => TcpStream::connect((target.host.as_str(), target.port)).await,
        }
    };
    tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)?
}
