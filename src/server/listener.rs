//! Listening sockets: one per worker on the same address via `SO_REUSEPORT`, so the kernel
//! spreads connections over the workers without a shared accept queue.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Pending connections the kernel may queue per listener.
const BACKLOG: i32 = 1024;

/// `n` listeners on `addr`; port 0 is resolved once so all of them share the chosen port.
/// `held` is the address this process listens on already (at a reload), whose port it may share.
pub fn bind_workers(
    addr: SocketAddr,
    n: usize,
    held: Option<SocketAddr>,
) -> io::Result<Vec<TcpListener>> {
    let own_port = held.is_some_and(|h| h.port() == addr.port());
    if n > 1 && addr.port() != 0 && !own_port {
        // Any process of the same user may join a group of `SO_REUSEPORT` listeners, and a
        // second sluice would then take half the traffic, with limits of its own. A listener
        // without the option cannot bind beside one, so a held port shows here.
        drop(bound(addr, false)?);
    }
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
    let socket = bound(addr, reuse_port)?;
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// A socket bound to `addr`, not yet listening.
fn bound(addr: SocketAddr, reuse_port: bool) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket
        .bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_held_by_another_group_of_workers_is_refused() {
        let held = bind_workers("127.0.0.1:0".parse().unwrap(), 2, None).unwrap();
        let addr = held[0].local_addr().unwrap();
        let e = bind_workers(addr, 2, None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
        assert!(bind_workers(addr, 1, None).is_err());
        // At a reload, the same port on another address beside the process's own listeners.
        let any: SocketAddr = format!("0.0.0.0:{}", addr.port()).parse().unwrap();
        assert_eq!(bind_workers(any, 2, Some(addr)).unwrap().len(), 2);
        drop(held);
        assert_eq!(bind_workers(addr, 2, None).unwrap().len(), 2);
    }
}
