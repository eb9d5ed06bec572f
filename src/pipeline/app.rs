//! The state the workers share. `App` is one generation of it: a config and everything built
//! from it, replaced whole on reload; the limiter's store passes from one generation to the
//! next while `[store]` stays the same, so limits survive a reload. `Lifecycle` is what
//! outlives every generation: open connections, draining, reload counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use super::{Keys, Limits, Router};
use crate::config::Config;
use crate::limiter::redis::RedisStore;
use crate::limiter::{MemoryStore, Store};
use crate::metrics::Metrics;
use crate::upstream::Upstreams;

/// The longest a readiness probe waits for the upstreams: under the kubelet's default probe
/// timeout of 1 s.
const READY_WAIT: std::time::Duration = std::time::Duration::from_millis(800);

/// What outlives a config reload.
pub struct Lifecycle {
    /// Set when shutdown begins: readiness fails and new requests get 503.
    pub draining: AtomicBool,
    /// Client connections open now, across all workers.
    pub connections: AtomicUsize,
    /// Connections asked to close to make room under `max_connections`.
    pub evicted: AtomicU64,
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
    /// The first generation, with the store `[store]` names.
    pub fn new(config: Config) -> std::io::Result<App> {
        let store = store_for(&config)?;
        Ok(App::with_store(config, store))
    }

    /// The first generation, with limiter state in `store`.
    pub fn with_store(config: Config, store: Arc<dyn Store>) -> App {
        let life = Lifecycle {
            draining: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            evicted: AtomicU64::new(0),
            reloads: Default::default(),
        };
        let metrics = Metrics::new(&config);
        App::build(config, Arc::new(life), metrics, store)
    }

    /// The next generation, from a new config. A policy whose limits did not change keeps its
    /// identity, so every client keeps its standing under it; a policy of the same name whose
    /// limits changed gets each client's standing carried over in proportion (the same share
    /// of each limit stays used).
    pub fn reload(mut config: Config, previous: &App) -> std::io::Result<App> {
        let store = if config.store == previous.config.store {
            previous.limits.store().clone()
        } else {
            tracing::info!(
                store = config.store.describe(),
                "limiter store changed; limits start afresh in it"
            );
            store_for(&config)?
        };
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
                let moved = store.carry_over(&old.limiter, &policy.limiter);
                tracing::info!(policy = %policy.name, keys = moved, "policy changed; standing carried over");
            }
        }
        let metrics = Metrics::after(&config, &previous.metrics);
        Ok(App::build(config, previous.life.clone(), metrics, store))
    }

    fn build(config: Config, life: Arc<Lifecycle>, metrics: Metrics, store: Arc<dyn Store>) -> App {
        App {
            router: Router::new(&config.routes),
            upstreams: Upstreams::new(&config.upstreams),
            keys: Keys::new(&config.auth),
            metrics: Arc::new(metrics),
            limits: Limits::new(&config, store),
            config,
            life,
        }
    }

    /// Ready for traffic: not draining, every upstream has a target that accepts a
    /// connection now, and the limiter's store answers where `ready_requires_store`.
    pub async fn ready(&self) -> bool {
        let draining = || self.life.draining.load(Ordering::Relaxed);
        let store = !self.config.store.ready_requires_store || self.limits.store().health().up;
        // Draining is asked again after the probe, which a SIGTERM may have overtaken.
        !draining() && store && self.upstreams.all_reachable(READY_WAIT).await && !draining()
    }
}

/// The store `[store]` names: this process's memory, or Redis (connected in the background).
fn store_for(config: &Config) -> std::io::Result<Arc<dyn Store>> {
    let max_keys = config.server.max_keys;
    Ok(match &config.store.redis {
        None => Arc::new(MemoryStore::new(max_keys)),
        Some(settings) => Arc::new(RedisStore::start(settings, max_keys)?),
    })
}
