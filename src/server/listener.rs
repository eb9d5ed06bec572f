//! Listening sockets: one per worker on the same address via `SO_REUSEPORT`, so the kernel
//! spreads connections over the workers without a shared accept queue.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Pending connections the kernel may queue per listener.
const BACKLOG: i32 = 1024;

/// `n` listeners on `addr`; port 0 is resolved once so all of them share the chosen port.
pub fn bind_workers(addr: SocketAddr, n: usize) -> io::Result<Vec<TcpListener>> {
    let first = bind_reuse(addr, n > 1)?;
    let actual = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..n {
        all.push(bind_reuse(actual, true)?);
    }
    Ok(all)
}

/// One plain listener (the admin side).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    bind_reuse(addr, false)
}

fn bind_reuse(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket
        .bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}
