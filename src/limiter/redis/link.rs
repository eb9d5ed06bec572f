//! The link to Redis: the connection (one server, or a cluster), a breaker that stops calling
//! it while it fails, and the counters of every call.
//!
//! The connection lives on a thread of the store's own, and every call runs there: its sockets
//! and timers never belong to a worker's runtime, so a store lives and ends independently of
//! the workers that call it. While the breaker is open, checks do not call Redis at all; the
//! thread probes it (`PING`) every [`PROBE_EVERY`] and closes the breaker when it answers.
//! Each episode is logged once when it starts and once when it ends.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use tokio::sync::{Notify, watch};

use super::Servers;
use crate::limiter::store::{CALL_BUCKETS, Health};

/// How often an unreachable store is probed.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);

/// Failures in a row that open the breaker: one slow call is not an outage.
const FAILURES_TO_OPEN: u32 = 3;

/// The longest a connection attempt may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A connection to one server or to a cluster; cheap to clone (both are handles).
#[derive(Clone)]
pub(super) enum Server {
    One(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Server {
    /// Runs the limits script (loading it first where Redis answers `NOSCRIPT`).
    pub async fn run(&self, call: &redis::ScriptInvocation<'_>) -> redis::RedisResult<Vec<i64>> {
        match self {
            Server::One(c) => call.invoke_async(&mut c.clone()).await,
            Server::Cluster(c) => call.invoke_async(&mut c.clone()).await,
        }
    }

    async fn ping(&self) -> redis::RedisResult<()> {
        let ping = redis::cmd("PING");
        match self {
            Server::One(c) => ping.query_async(&mut c.clone()).await,
            Server::Cluster(c) => ping.query_async(&mut c.clone()).await,
        }
    }
}

/// What a call came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Called {
    Answered = 0,
    Failed = 1,
    TimedOut = 2,
}

/// The connection, the breaker and the counters; shared by the store and its thread.
pub(super) struct Link {
    servers: Servers,
    /// The thread's runtime, where calls run.
    runtime: tokio::runtime::Handle,
    server: ArcSwapOption<Server>,
    /// The breaker: closed (`true`) while Redis answers.
    up: AtomicBool,
    failures: AtomicU32,
    /// Wakes the thread to probe at once.
    broke: Notify,
    /// When the current episode began, for its log line.
    down_since: Mutex<Option<Instant>>,
    calls: [AtomicU64; 3],
    latency: [AtomicU64; CALL_BUCKETS.len() + 1],
    fallbacks: AtomicU64,
    fallback_checks: AtomicU64,
    local: [AtomicU64; 2],
}

impl Link {
    fn new(servers: Servers, runtime: tokio::runtime::Handle) -> Link {
        Link {
            servers,
            runtime,
            server: ArcSwapOption::empty(),
            up: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            broke: Notify::new(),
            down_since: Mutex::new(None),
            calls: Default::default(),
            latency: Default::default(),
            fallbacks: AtomicU64::new(0),
            fallback_checks: AtomicU64::new(0),
            local: Default::default(),
        }
    }

    /// Whether calls go to Redis: the breaker is closed.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed) && self.server.load().is_some()
    }

    /// Runs `call` on the store's thread; `None` if the breaker is open, or the call fails or
    /// takes longer than `timeout` (counted, and moving the breaker).
    pub async fn run(
        &self,
        call: redis::ScriptInvocation<'static>,
        timeout: Duration,
    ) -> Option<Vec<i64>> {
        if !self.up.load(Ordering::Relaxed) {
            return None;
        }
        let server = self.server.load_full()?;
        let started = Instant::now();
        let task = self.runtime.spawn(async move { server.run(&call).await });
        let abort = task.abort_handle();
        let answer = tokio::time::timeout(timeout, task).await;
        let (result, values) = match answer {
            Ok(Ok(Ok(values))) => (Called::Answered, Some(values)),
            Ok(Ok(Err(e))) => {
                tracing::debug!(error = %e, "limiter store call failed");
                (Called::Failed, None)
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "limiter store call ended");
                (Called::Failed, None)
            }
            Err(_) => {
                abort.abort();
                (Called::TimedOut, None)
            }
        };
        self.called(result, started.elapsed());
        values
    }

    /// Counts a call and moves the breaker.
    fn called(&self, result: Called, took: Duration) {
        self.calls[result as usize].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        if let Some(bucket) = CALL_BUCKETS.iter().position(|&b| secs <= b) {
            self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.latency[CALL_BUCKETS.len()].fetch_add(micros, Ordering::Relaxed);
        if result == Called::Answered {
            self.failures.store(0, Ordering::Relaxed);
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= FAILURES_TO_OPEN && self.up.swap(false, Ordering::Relaxed) {
            self.went_down(match result {
                Called::TimedOut => "calls time out",
                _ => "calls fail",
            });
        }
    }

    /// A check decided without the store.
    pub fn fell_back(&self) {
        self.fallback_checks.fetch_add(1, Ordering::Relaxed);
    }

    /// A check answered from what this replica holds: `0` a refusal, `1` a leased token.
    pub fn answered_locally(&self, which: usize) {
        self.local[which].fetch_add(1, Ordering::Relaxed);
    }

    pub fn health(&self) -> Health {
        let read = |n: &AtomicU64| n.load(Ordering::Relaxed);
        Health {
            kind: "redis",
            up: self.up.load(Ordering::Relaxed),
            calls: self.calls.each_ref().map(read),
            latency: self.latency.each_ref().map(read),
            fallbacks: read(&self.fallbacks),
            fallback_checks: read(&self.fallback_checks),
            local: self.local.each_ref().map(read),
        }
    }

    /// Starts an episode: counted and logged once, until [`Link::came_up`] ends it.
    fn went_down(&self, why: &str) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        *self.down_since.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        tracing::warn!(store = %self.servers, why, "limiter store unreachable; deciding without it until it answers");
        self.broke.notify_one();
    }

    fn came_up(&self) {
        let since = self
            .down_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.failures.store(0, Ordering::Relaxed);
        self.up.store(true, Ordering::Relaxed);
        match since {
            Some(since) => {
                let after = format!("{:.1}s", since.elapsed().as_secs_f64());
                tracing::info!(store = %self.servers, after, "limiter store reachable again");
            }
            None => tracing::info!(store = %self.servers, "limiter store connected"),
        }
    }
}

/// The store's thread; stops when dropped.
pub(super) struct Thread {
    stop: watch::Sender<bool>,
}

impl Drop for Thread {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Starts the link's thread, which connects, and reconnects and probes while Redis is down.
pub(super) fn start(servers: Servers, timeout: Duration) -> std::io::Result<(Arc<Link>, Thread)> {
    // rustls needs a process-wide provider for `rediss://`; whoever installed one first wins.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let (stop, stopped) = watch::channel(false);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let link = Arc::new(Link::new(servers, rt.handle().clone()));
    let tended = link.clone();
    std::thread::Builder::new()
        .name("sluice-store".into())
        .spawn(move || rt.block_on(tend(tended, timeout, stopped)))?;
    Ok((link, Thread { stop }))
}

/// Keeps the link up: connects, then probes whenever the breaker is open.
async fn tend(link: Arc<Link>, timeout: Duration, mut stopped: watch::Receiver<bool>) {
    let mut first = true;
    loop {
        if !link.up.load(Ordering::Relaxed) {
            if probe(&link, timeout).await {
                link.came_up();
            } else if first {
                link.went_down("no answer at start");
            }
        }
        first = false;
        let wait = async {
            if link.up.load(Ordering::Relaxed) {
                link.broke.notified().await;
            } else {
                tokio::time::sleep(PROBE_EVERY).await;
            }
        };
        tokio::select! {
            () = wait => {}
            _ = stopped.changed() => return,
        }
    }
}

/// Connects if there is no connection yet, then asks for a `PONG`.
async fn probe(link: &Link, timeout: Duration) -> bool {
    let server = match link.server.load_full() {
        Some(server) => server,
        None => {
            match tokio::time::timeout(CONNECT_TIMEOUT, connect(&link.servers, timeout)).await {
                Ok(Ok(server)) => {
                    let server = Arc::new(server);
                    link.server.store(Some(server.clone()));
                    server
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "limiter store: cannot connect");
                    return false;
                }
                Err(_) => return false,
            }
        }
    };
    let answer = tokio::time::timeout(CONNECT_TIMEOUT, server.ping()).await;
    if matches!(answer, Ok(Ok(()))) {
        return true;
    }
    // Start again from nothing next time, whatever state the old connection's own
    // reconnecting is in.
    link.server.store(None);
    false
}

/// A connection that reconnects by itself; calls past `timeout` fail.
async fn connect(servers: &Servers, timeout: Duration) -> redis::RedisResult<Server> {
    match servers {
        Servers::One(url) => {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1)
                .set_max_delay(PROBE_EVERY);
            let client = redis::Client::open(url.as_str())?;
            let manager = ConnectionManager::new_with_config(client, config).await?;
            Ok(Server::One(manager))
        }
        Servers::Cluster(nodes) => {
            let client = ClusterClient::builder(nodes.iter().map(String::as_str))
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(timeout)
                .retries(1)
                .build()?;
            Ok(Server::Cluster(client.get_async_connection().await?))
        }
    }
}
