//! The state the workers share. `App` is one generation of it: a config and everything built
//! from it, replaced whole on reload; the limiter's store passes from one generation to the
//! next while `[store]` stays the same, so limits survive a reload. `Lifecycle` is what
//! outlives every generation: open connections, draining, reload counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use super::{Keys, Limits, Router};
use crate::config::{Config, OnError};
use crate::idempotency;
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
    /// Where `Idempotency-Key` answers are kept; shared with the limiter's Redis.
    pub idempotency: Arc<idempotency::Store>,
    pub metrics: Arc<Metrics>,
    pub life: Arc<Lifecycle>,
}

impl App {
    /// The first generation, with the store `[store]` names.
    pub fn new(config: Config) -> std::io::Result<App> {
        let (store, keys) = store_for(&config)?;
        Ok(App::with_stores(config, store, keys))
    }

    /// The first generation, with limiter state in `store` and idempotency keys in memory.
    pub fn with_store(config: Config, store: Arc<dyn Store>) -> App {
        let keys = Arc::new(idempotency::Store::memory(idempotency::Bounds::default()));
        App::with_stores(config, store, keys)
    }

    /// The first generation, with limiter state in `store` and idempotency keys in `keys`.
    pub fn with_stores(
        config: Config,
        store: Arc<dyn Store>,
        keys: Arc<idempotency::Store>,
    ) -> App {
        let life = Lifecycle {
            draining: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            evicted: AtomicU64::new(0),
            reloads: Default::default(),
        };
        let metrics = Metrics::new(&config);
        App::build(config, Arc::new(life), metrics, (store, keys))
    }

    /// The next generation, from a new config. A policy whose limits did not change keeps its
    /// identity, so every client keeps its standing under it; a policy of the same name whose
    /// limits changed gets each client's standing carried over in proportion (the same share
    /// of each limit stays used).
    pub fn reload(mut config: Config, previous: &App) -> std::io::Result<App> {
        let (store, keys) = if config.store == previous.config.store {
            (
                previous.limits.store().clone(),
                previous.idempotency.clone(),
            )
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
        Ok(App::build(
            config,
            previous.life.clone(),
            metrics,
            (store, keys),
        ))
    }

    fn build(config: Config, life: Arc<Lifecycle>, metrics: Metrics, stores: Stores) -> App {
        let (store, idempotency) = stores;
        App {
            idempotency,
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

/// The limiter's store and the idempotency keys' store.
type Stores = (Arc<dyn Store>, Arc<idempotency::Store>);

/// The stores `[store]` names: this process's memory, or Redis (connected in the
/// background), whose connections the idempotency keys share.
fn store_for(config: &Config) -> std::io::Result<Stores> {
    let max_keys = config.server.max_keys;
    let bounds = idempotency::Bounds::default();
    Ok(match &config.store.redis {
        None => (
            Arc::new(MemoryStore::new(max_keys)),
            Arc::new(idempotency::Store::memory(bounds)),
        ),
        Some(settings) => {
            let redis = RedisStore::start(settings, max_keys)?;
            let fallback = (settings.on_error == OnError::Local).then_some(bounds);
            let keys = idempotency::Store::redis(redis.shared(), &settings.key_secret, fallback);
            (Arc::new(redis), Arc::new(keys))
        }
    })
}
