//! A raw upstream scripted per connection, for faults at the byte level: it reads a request,
//! writes what it is told (half a status line, a head and part of a body, garbage), and ends
//! the connection as it is told (a close, a reset, a hang). It records the requests it read and
//! knows which of its connections are still open:
//! `faulty::Upstream::start(|_conn| vec![Step::Read, Step::Write(b"garbage\r\n\r\n"), Step::Hang])`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::raw::{read_message, read_until_closed};

/// A complete 200 answer, `{"ok":true}`, on a connection kept alive.
pub const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                        content-length: 11\r\n\r\n{\"ok\":true}";

/// The longest a [`Step::Hang`] holds a connection: past it, sluice has surely failed the test
/// already, and the upstream lets go so that nothing outlives the test run.
const HANG_LIMIT: Duration = Duration::from_secs(10);

/// One step of a connection's script. A connection whose script runs out is closed.
#[derive(Debug, Clone)]
pub enum Step {
    /// Reads one request (its head and `Content-Length` body); if the connection ends first,
    /// so does the script.
    Read,
    /// Reads one request if it begins to arrive within this time; otherwise closes the
    /// connection, as an upstream's keep-alive timeout does.
    ReadWithin(Duration),
    /// Writes these bytes (an answer to the request last read, or part of one).
    Write(&'static [u8]),
    /// Waits this long.
    Pause(Duration),
    /// Waits until the test calls [`Upstream::go`]: to reset only once the client has seen what
    /// was written before.
    AwaitGo,
    /// Closes the connection (a FIN).
    Close,
    /// Resets the connection (SO_LINGER 0: an RST, and whatever was still unsent is lost).
    Reset,
    /// Holds the connection open, reading and dropping whatever comes, until the peer closes it.
    Hang,
}

/// A request the upstream read: on which connection (counted from 1), its method and target,
/// and whether anything was written back after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub conn: usize,
    pub request: String,
    pub answered: bool,
}

type Script = Arc<dyn Fn(usize) -> Vec<Step> + Send + Sync>;

/// A running scripted upstream.
pub struct Upstream {
    pub url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    go: Arc<Semaphore>,
    healed: Arc<AtomicBool>,
}

/// A healthy connection's script: up to 100 requests, each answered [`OK`].
fn healthy() -> Vec<Step> {
    [Step::Read, Step::Write(OK)]
        .into_iter()
        .cycle()
        .take(200)
        .collect()
}

impl Upstream {
    /// Listens on a loopback port of its own; connection `n` (from 1) follows `script(n)`.
    pub async fn start(script: impl Fn(usize) -> Vec<Step> + Send + Sync + 'static) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = Upstream {
            url: format!("http://{}", listener.local_addr().unwrap()),
            hits: Arc::default(),
            accepted: Arc::default(),
            open: Arc::default(),
            go: Arc::new(Semaphore::new(0)),
            healed: Arc::default(),
        };
        let script: Script = Arc::new(script);
        let (hits, accepted, open, go, healed) = (
            up.hits.clone(),
            up.accepted.clone(),
            up.open.clone(),
            up.go.clone(),
            up.healed.clone(),
        );
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let n = accepted.fetch_add(1, Ordering::SeqCst) + 1;
                let conn = Conn {
                    n,
                    hits: hits.clone(),
                    go: go.clone(),
                    _open: Open::new(&open),
                };
                let steps = if healed.load(Ordering::SeqCst) {
                    healthy()
                } else {
                    script(n)
                };
                tokio::spawn(conn.run(s, steps));
            }
        });
        up
    }

    /// Every request read so far, in the order read.
    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections accepted and not yet ended.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// From now on, new connections are healthy: each request on them is answered [`OK`].
    pub fn heal(&self) {
        self.healed.store(true, Ordering::SeqCst);
    }

    /// Lets one connection waiting at [`Step::AwaitGo`] (now or later) go on.
    pub fn go(&self) {
        self.go.add_permits(1);
    }

    /// Waits (up to 5 s) until every connection accepted has ended: for a [`Step::Hang`], until
    /// sluice closed it.
    pub async fn wait_all_closed(&self) {
        for _ in 0..500 {
            if self.open() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{} upstream connections still open", self.open());
    }
}

/// One connection's part in the count of open ones, given back however its task ends.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(count: &Arc<AtomicUsize>) -> Open {
        count.fetch_add(1, Ordering::SeqCst);
        Open(count.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Conn {
    n: usize,
    hits: Arc<Mutex<Vec<Hit>>>,
    go: Arc<Semaphore>,
    _open: Open,
}

impl Conn {
    async fn run(self, mut s: TcpStream, steps: Vec<Step>) {
        let mut buf = Vec::new();
        for step in steps {
            match step {
                Step::Read => {
                    if !self.read(&mut s, &mut buf).await {
                        return;
                    }
                }
                Step::ReadWithin(idle) => {
                    // Only the first byte has to come in time: a request is never cut in two.
                    if tokio::time::timeout(idle, s.readable()).await.is_err()
                        || !self.read(&mut s, &mut buf).await
                    {
                        return;
                    }
                }
                Step::Write(bytes) => {
                    if s.write_all(bytes).await.is_err() {
                        return;
                    }
                    if let Some(last) = self
                        .hits
                        .lock()
                        .unwrap()
                        .iter_mut()
                        .rfind(|h| h.conn == self.n)
                    {
                        last.answered = true;
                    }
                }
                Step::Pause(d) => tokio::time::sleep(d).await,
                Step::AwaitGo => self.go.acquire().await.unwrap().forget(),
                Step::Close => return,
                Step::Reset => {
                    let _ = s.set_zero_linger();
                    return;
                }
                Step::Hang => {
                    let _ = tokio::time::timeout(HANG_LIMIT, read_until_closed(&mut s)).await;
                    return;
                }
            }
        }
    }

    /// Reads one request and records it; false if the connection ended first.
    async fn read(&self, s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
        let Some((head, _)) = read_message(s, buf).await else {
            return false;
        };
        let mut words = head.split(' ');
        let request = format!(
            "{} {}",
            words.next().unwrap_or_default(),
            words.next().unwrap_or_default()
        );
        self.hits.lock().unwrap().push(Hit {
            conn: self.n,
            request,
            answered: false,
        });
        true
    }
}
