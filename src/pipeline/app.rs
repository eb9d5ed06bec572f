//! The state the workers share. `App` is one generation of it: a config and everything built
//! from it, replaced whole on reload. `Lifecycle` is what outlives every generation: the
//! limiter's store (so limits survive a reload), open connections, draining, reload counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use super::{Keys, Limits, Router};
use crate::config::Config;
use crate::limiter::{MemoryStore, Store};
use crate::metrics::Metrics;
use crate::upstream::Upstreams;

/// The longest a readiness probe waits for the upstreams: under the kubelet's default probe
/// timeout of 1 s.
const READY_WAIT: std::time::Duration = std::time::Duration::from_millis(800);

/// What outlives a config reload.
pub struct Lifecycle {
    pub store: Arc<dyn Store>,
    /// Set when shutdown begins: readiness fails and new requests get 503.
    pub draining: AtomicBool,
    /// Client connections open now, across all workers.
    pub connections: AtomicUsize,
    /// Reloads that took effect, and reloads refused.
    pub reloads: [AtomicU64; 2],
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle")
            .field("draining", &self.draining)
            .field("connections", &self.connections)
            .finish_non_exhaustive()
    }
}

/// One generation of shared state: a config and everything built from it.
#[derive(Debug)]
pub struct App {
    pub config: Config,
    pub router: Router,
    pub upstreams: Upstreams,
    pub keys: Keys,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    pub life: Arc<Lifecycle>,
}

impl App {
    /// The first generation.
    pub fn new(config: Config) -> App {
        let life = Lifecycle {
            store: Arc::new(MemoryStore::new(config.server.max_keys)),
            draining: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            reloads: Default::default(),
        };
        let metrics = Metrics::new(&config);
        App::build(config, Arc::new(life), metrics)
    }

    /// The next generation, from a new config. A policy whose limits did not change keeps its
    /// identity, so every client keeps its standing under it; a policy of the same name whose
    /// limits changed gets each client's standing carried over in proportion (the same share
    /// of each limit stays used).
    pub fn reload(mut config: Config, previous: &App) -> App {
        for policy in &mut config.policies {
            let Some(old) = previous
                .config
                .policies
                .iter()
                .find(|old| old.name == policy.name)
            else {
                continue;
            };
            if old.rate == policy.rate && old.window == policy.window {
                policy.limiter = old.limiter.clone();
            } else {
                let moved = previous
                    .life
                    .store
                    .carry_over(&old.limiter, &policy.limiter);
                tracing::info!(policy = %policy.name, keys = moved, "policy changed; standing carried over");
            }
        }
        let metrics = Metrics::after(&config, &previous.metrics);
        App::build(config, previous.life.clone(), metrics)
    }

    fn build(config: Config, life: Arc<Lifecycle>, metrics: Metrics) -> App {
        App {
            router: Router::new(&config.routes),
            upstreams: Upstreams::new(&config.upstreams),
            keys: Keys::new(&config.auth),
            metrics: Arc::new(metrics),
            limits: Limits::new(&config, life.store.clone()),
            config,
            life,
        }
    }

    /// Ready for traffic: not draining, and every upstream has a target that accepts a
    /// connection now.
    pub async fn ready(&self) -> bool {
        let draining = || self.life.draining.load(Ordering::Relaxed);
        // Draining is asked again after the probe, which a SIGTERM may have overtaken.
        !draining() && self.upstreams.all_reachable(READY_WAIT).await && !draining()
    }
}
