//! Test parts. Nothing is mocked; everything talks over real sockets.
//!
//! - `upstream`: a real upstream, scripted per path, that records what it saw
//! - `proxy`: a real sluice in this process, from TOML or a builder, optionally on a manual clock
//! - `client`: requests over HTTP/1.1 and HTTP/2, and checks of the answers
//! - `raw`: hand-written bytes on raw sockets, for clients and upstreams that misbehave
//! - `recorder`: an upstream that keeps the bytes it was sent, and reads them strictly
//! - `faulty`: a raw upstream scripted per connection: closes, resets, hangs, garbage
//! - `process`: the built binary as a process of its own
//! - `redis`: real `redis-server`s
//! - `tls`: certificates made at test time, and an HTTPS upstream
#![allow(dead_code, unused_imports)] // each test file uses its own subset

pub mod client;
pub mod faulty;
pub mod process;
pub mod proxy;
pub mod raw;
pub mod recorder;
pub mod redis;
pub mod tls;
pub mod upstream;

pub use client::*;
pub use proxy::*;
pub use upstream::*;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;

/// `n` as a `NonZeroU32`, for limits written as literals.
pub fn nz(n: u32) -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(n).expect("not zero")
}

/// Runs `fut`, failing the test if it takes longer than `limit`.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {limit:?}"))
}

/// Writes `text` to a new file named after `name` in this test run's temporary directory.
pub fn temp_file(name: &str, text: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!("sluice-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("{n}-{name}"));
    std::fs::write(&path, text).unwrap();
    path
}

/// A free loopback port (bound and released; the binary under test binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (up to 5 s) until something accepts connections on `addr`: a binary just started.
pub async fn wait_for_listener(addr: SocketAddr) {
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {addr}");
}
