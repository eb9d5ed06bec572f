//! The link to Redis: the connections (to one server, or to a cluster), a breaker that stops
//! calling Redis while it fails, and the counters of every call.
//!
//! Each runtime that calls Redis has a connection of its own (a *lane*), made on first use and
//! reconnecting by itself: a worker's calls never cross to another thread, and its socket and
//! timers belong to the runtime that uses them. While the breaker is open, checks do not call
//! Redis at all; a thread of the store's own probes it (`PING`) every [`PROBE_EVERY`] and closes
//! the breaker when it answers. Each episode is logged once when it starts and once when it
//! ends.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use tokio::runtime::{Handle, Id};
use tokio::sync::{Notify, watch};
use tracing::Instrument;

use super::Servers;
use crate::limiter::store::{CALL_BUCKETS, Health};

/// How often an unreachable store is probed.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);

/// Failures in a row that open the breaker: one slow call is not an outage.
const FAILURES_TO_OPEN: u32 = 3;

/// The longest a connection attempt, or a probe, may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A connection to one server or to a cluster; cheap to clone (both are handles).
#[derive(Clone)]
enum Server {
    One(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Server {
    /// Runs a script (loading it first where Redis answers `NOSCRIPT`).
    async fn run<T: redis::FromRedisValue>(
        &self,
        call: &redis::ScriptInvocation<'_>,
    ) -> redis::RedisResult<T> {
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

/// Makes lanes: a client for one server or a cluster, and the timeouts of their calls.
enum Client {
    One(redis::Client, ConnectionManagerConfig),
    Cluster(ClusterClient),
}

impl Client {
    fn new(servers: &Servers, timeout: Duration) -> redis::RedisResult<Client> {
        Ok(match servers {
            Servers::One(url) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(PROBE_EVERY);
                Client::One(redis::Client::open(url.as_str())?, config)
            }
            Servers::Cluster(nodes) => Client::Cluster(
                ClusterClient::builder(nodes.iter().map(String::as_str))
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(timeout)
                    .retries(1)
                    .build()?,
            ),
        })
    }

    /// A connection of the current runtime's, connecting on first use.
    fn lane(&self) -> redis::RedisResult<Server> {
        Ok(match self {
            Client::One(client, config) => Server::One(ConnectionManager::new_lazy_with_config(
                client.clone(),
                config.clone(),
            )?),
            Client::Cluster(client) => Server::Cluster(
                client.get_pending_async_connection_with_config(ClusterConfig::new()),
            ),
        })
    }
}

/// What a call came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Called {
    Answered = 0,
    Failed = 1,
    TimedOut = 2,
}

/// The connections, the breaker and the counters; shared by the store and its thread.
pub(super) struct Link {
    servers: Servers,
    /// `None` if the address cannot make a client (the breaker then never closes).
    client: Option<Client>,
    /// One connection per runtime that calls.
    lanes: DashMap<Id, Server>,
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
    fn new(servers: Servers, timeout: Duration) -> Link {
        let client = Client::new(&servers, timeout)
            .map_err(
                |e| tracing::error!(error = %e, store = %servers, "limiter store: bad address"),
            )
            .ok();
        Link {
            servers,
            client,
            lanes: DashMap::new(),
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
        self.up.load(Ordering::Relaxed)
    }

    /// The current runtime's connection, made now if it has none.
    fn lane(&self) -> Option<Server> {
        let id = Handle::try_current().ok()?.id();
        if let Some(lane) = self.lanes.get(&id) {
            return Some(lane.clone());
        }
        let lane = self.client.as_ref()?.lane().ok()?;
        Some(self.lanes.entry(id).or_insert(lane).clone())
    }

    /// Runs `call` on this runtime's connection; `None` if the breaker is open, or the call
    /// fails or takes longer than `timeout` (counted, and moving the breaker).
    pub async fn run<T: redis::FromRedisValue>(
        &self,
        call: redis::ScriptInvocation<'static>,
        timeout: Duration,
    ) -> Option<T> {
        if !self.is_up() {
            return None;
        }
        let server = self.lane()?;
        let started = Instant::now();
        let calling = tokio::time::timeout(timeout, server.run(&call));
        let answer = if crate::telemetry::on() {
            calling.instrument(store_span()).await
        } else {
            calling.await
        };
        let (result, values) = match answer {
            Ok(Ok(values)) => (Called::Answered, Some(values)),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "limiter store call failed");
                (Called::Failed, None)
            }
            Err(_) => (Called::TimedOut, None),
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
            up: self.is_up(),
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

    /// Ends an episode. Every runtime starts on a new connection: an old one may still be
    /// reconnecting, and would fail the first calls.
    fn came_up(&self) {
        let since = self
            .down_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.lanes.clear();
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

    /// Whether Redis answers a `PING` on this runtime's connection. A connection that does not
    /// is dropped, so that the next probe starts from nothing, whatever state its own
    /// reconnecting is in.
    async fn probe(&self) -> bool {
        let Some(server) = self.lane() else {
            return false;
        };
        let answer = tokio::time::timeout(CONNECT_TIMEOUT, server.ping()).await;
        if let Ok(Err(e)) = &answer {
            tracing::debug!(error = %e, "limiter store: no answer to a probe");
        }
        let answered = matches!(answer, Ok(Ok(())));
        if !answered && let Ok(handle) = Handle::try_current() {
            self.lanes.remove(&handle.id());
        }
        answered
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

/// Starts the link's thread, which probes Redis at start and whenever the breaker opens.
pub(super) fn start(servers: Servers, timeout: Duration) -> std::io::Result<(Arc<Link>, Thread)> {
    // rustls needs a process-wide provider for `rediss://`; whoever installed one first wins.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let (stop, stopped) = watch::channel(false);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let link = Arc::new(Link::new(servers, timeout));
    let tended = link.clone();
    std::thread::Builder::new()
        .name("sluice-store".into())
        .spawn(move || rt.block_on(tend(tended, stopped)))?;
    Ok((link, Thread { stop }))
}

/// Closes the breaker when Redis answers, and probes while it is open.
async fn tend(link: Arc<Link>, mut stopped: watch::Receiver<bool>) {
    let mut first = true;
    loop {
        if !link.is_up() {
            if link.probe().await {
                link.came_up();
            } else if first {
                link.went_down("no answer at start");
            }
        }
        first = false;
        let wait = async {
            if link.is_up() {
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

/// The span of a call to Redis, under the request's (when traces are on).
fn store_span() -> tracing::Span {
    tracing::info_span!(
        target: crate::telemetry::TARGET,
        "redis",
        "otel.name" = "EVALSHA",
        "otel.kind" = "client",
        "db.system.name" = "redis",
        "db.operation.name" = "EVALSHA",
    )
}
