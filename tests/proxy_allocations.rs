//! Allocations per proxied request, counted over a real exchange: a client and an upstream on
//! loopback sockets, both written to allocate nothing per request, so that every allocation
//! counted is sluice's. The count is pinned: a change that adds one fails here.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sluice::config::{Config, Overrides};
use sluice::server;

/// Allocations a proxied GET makes in sluice, all threads counted (among them the request's
/// and the answer's header maps, the boxed answer and phases, the deadline's timer and the
/// header values sluice writes). 8 when the upstream exchange moved into the request's own
/// task; 9 since the answer's future is boxed, which costs fewer instructions than the two
/// copies hyper made of it unboxed.
const MOST_PER_REQUEST: usize = 9;

/// Counts every thread's allocations: sluice's worker is not the test's thread.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const ANSWER: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}";

/// An upstream that answers every request on a connection with [`ANSWER`], from a fixed
/// buffer; it takes requests without bodies only.
fn upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                let mut have = 0;
                loop {
                    match conn.read(&mut buf[have..]) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => have += n,
                    }
                    while let Some(end) = find(&buf[..have], b"\r\n\r\n") {
                        if conn.write_all(ANSWER).is_err() {
                            return;
                        }
                        buf.copy_within(end + 4..have, 0);
                        have -= end + 4;
                    }
                }
            });
        }
    });
    addr
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sends one GET on `conn` and reads its whole answer into `buf`; its status.
fn get(conn: &mut TcpStream, buf: &mut [u8]) -> u16 {
    conn.write_all(b"GET /v1/items?page=2 HTTP/1.1\r\nHost: api.test\r\nX-Api-Key: client-7\r\nAccept: application/json\r\n\r\n")
        .unwrap();
    let mut have = 0;
    let head = loop {
        let n = conn.read(&mut buf[have..]).unwrap();
        assert!(n > 0, "sluice closed the connection");
        have += n;
        if let Some(end) = find(&buf[..have], b"\r\n\r\n") {
            break end + 4;
        }
    };
    let text = std::str::from_utf8(&buf[..head]).unwrap();
    let status = text[9..12].parse().unwrap();
    // Read without allocating: this thread's allocations count too.
    let field = "content-length:";
    let length: usize = text
        .lines()
        .find(|l| l.len() > field.len() && l[..field.len()].eq_ignore_ascii_case(field))
        .map(|l| l[field.len()..].trim().parse().unwrap())
        .expect("a content-length");
    while have < head + length {
        have += conn.read(&mut buf[have..]).unwrap();
    }
    assert_eq!(&buf[head..have], b"{\"ok\":true}");
    status
}

#[test]
fn a_proxied_request_allocates_no_more_than_pinned() {
    let up = upstream();
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\naccess_log = false\n\
         [upstreams.api]\ntargets = [\"http://{up}\"]\n\
         [policies.default]\nrate = \"100000/s\"\nburst = 100000\nkey = \"api_key\"\n"
    );
    let config = Config::parse(&toml, &Overrides::default()).unwrap();
    let running = server::start(config).unwrap();
    let mut conn = TcpStream::connect(running.local_addr()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    // Warm up: connections made, tables and buffers grown, the key known.
    for _ in 0..100 {
        assert_eq!(get(&mut conn, &mut buf), 200);
    }
    const COUNTED: usize = 500;
    let (before, started) = (ALLOCATIONS.load(Ordering::Relaxed), Instant::now());
    for _ in 0..COUNTED {
        get(&mut conn, &mut buf);
    }
    let counted = ALLOCATIONS.load(Ordering::Relaxed) - before;
    // Work done once a second (hyper's cached `Date`, the pool's look at idle connections) may
    // allocate during the count: a few per second it took are no request's.
    let aside = 4 * (started.elapsed().as_secs() as usize + 1);
    running.shutdown();
    println!(
        "allocations per proxied request: {:.3} ({counted} in {COUNTED} requests)",
        counted as f64 / COUNTED as f64
    );
    assert!(
        counted <= MOST_PER_REQUEST * COUNTED + aside,
        "{counted} allocations in {COUNTED} proxied requests, more than the {MOST_PER_REQUEST} \
         per request pinned"
    );
}
