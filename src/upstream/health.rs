//! Target health, shared by every worker: round robin over an upstream's targets, skipping
//! those that refused a connection within the last [`FAIL_TIMEOUT`], and the readiness probe.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::future;

use super::connect::{Tls, reachable};
use crate::config::{self, Target};

/// How long a target that refused a connection is skipped. Short, because a sidecar's only
/// target is usually just restarting, and every request in this time gets a 503.
const FAIL_TIMEOUT: Duration = Duration::from_secs(1);

/// All upstreams of the config, with the health of each target; shared by every worker.
#[derive(Debug)]
pub struct Upstreams {
    list: Vec<Upstream>,
    epoch: Instant,
}

#[derive(Debug)]
struct Upstream {
    name: String,
    targets: Vec<TargetState>,
    next: AtomicUsize,
    connect_timeout: Duration,
}

#[derive(Debug)]
struct TargetState {
    target: Target,
    /// For an `https://` target.
    tls: Option<Tls>,
    /// Milliseconds since `Upstreams::epoch` until which the target is skipped.
    down_until: AtomicU64,
}

impl Upstreams {
    pub fn new(config: &[config::Upstream]) -> Upstreams {
        let list = config
            .iter()
            .map(|u| Upstream {
                name: u.name.clone(),
                targets: u
                    .targets
                    .iter()
                    .map(|t| TargetState {
                        target: t.clone(),
                        tls: tls(u, t),
                        down_until: AtomicU64::new(0),
                    })
                    .collect(),
                next: AtomicUsize::new(0),
                connect_timeout: u.connect_timeout,
            })
            .collect();
        Upstreams {
            list,
            epoch: Instant::now(),
        }
    }

    /// The order in which to try the targets of upstream `u` for one request: round robin,
    /// skipping targets that failed within `FAIL_TIMEOUT`. Empty when all of them did.
    pub(super) fn plan(&self, u: usize) -> impl Iterator<Item = usize> + '_ {
        let up = &self.list[u];
        let n = up.targets.len();
        let start = if n == 1 {
            0
        } else {
            up.next.fetch_add(1, Ordering::Relaxed)
        };
        let now = self.now_ms();
        (0..n)
            .map(move |k| (start + k) % n)
            .filter(move |&t| up.targets[t].down_until.load(Ordering::Relaxed) <= now)
    }

    pub(super) fn name(&self, u: usize) -> &str {
        &self.list[u].name
    }

    pub(super) fn target(&self, u: usize, t: usize) -> &Target {
        &self.list[u].targets[t].target
    }

    pub(super) fn tls(&self, u: usize, t: usize) -> Option<&Tls> {
        self.list[u].targets[t].tls.as_ref()
    }

    pub(super) fn connect_timeout(&self, u: usize) -> Duration {
        self.list[u].connect_timeout
    }

    pub(super) fn mark_down(&self, u: usize, t: usize) {
        let until = self.now_ms() + FAIL_TIMEOUT.as_millis() as u64;
        self.list[u].targets[t]
            .down_until
            .store(until, Ordering::Relaxed);
    }

    /// Whether every upstream has a target that accepts a connection now: all targets tried
    /// at once, each within its upstream's `connect_timeout`, and `wait` in all. Tried, not
    /// remembered: an app that is not listening yet has had no request fail. A probe marks no
    /// target down; only requests do.
    pub async fn all_reachable(&self, wait: Duration) -> bool {
        let upstream = |u: usize| async move {
            let timeout = self.connect_timeout(u);
            let tries = (0..self.list[u].targets.len())
                .map(|t| Box::pin(reachable(self.target(u, t), timeout)))
                .collect::<Vec<_>>();
            !tries.is_empty() && future::select_ok(tries).await.is_ok()
        };
        let all = future::join_all((0..self.list.len()).map(upstream));
        tokio::time::timeout(wait, all)
            .await
            .is_ok_and(|reached| reached.into_iter().all(|ok| ok))
    }

    /// The number of targets of each upstream, to size a worker's pool.
    pub(super) fn shape(&self) -> Vec<usize> {
        self.list.iter().map(|u| u.targets.len()).collect()
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// TLS to target `t` of upstream `u`, if it is `https://`: the upstream's configuration, and
/// the name to check its certificate against (`tls_server_name`, else the host).
fn tls(u: &config::Upstream, t: &Target) -> Option<Tls> {
    let config = u.tls.as_ref().filter(|_| t.tls)?;
    let name = crate::tls::server_name(config.server_name.as_deref(), &t.host)?;
    Some(Tls::new(config.config.clone(), name))
}
