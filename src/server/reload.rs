//! Reloading the config while serving (SIGHUP, or `POST /reload` on the admin listener). A new
//! config is checked whole first; if it fails, nothing changes. Otherwise the next generation
//! of shared state is built (the limiter's store carried over, unchanged policies keeping their
//! clients' standing), listeners whose address changed are bound, and everything is handed to
//! the workers at once: requests already running finish on the generation they started on, the
//! next request on any connection uses the new one. No connection is dropped.

use std::io;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::listener;
use crate::config::{Config, ConfigError, Overrides};
use crate::pipeline::App;

/// Where a reload reads its config from: the file and flags sluice was started with.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub overrides: Overrides,
}

/// Why a reload was refused; the running config stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("sluice was started without --config; there is no file to reload")]
    NoFile,
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("cannot bind the new address: {0}")]
    Bind(#[from] io::Error),
    #[error("cannot start the new limiter store: {0}")]
    Store(io::Error),
    #[error("sluice is shutting down; the config in force stays")]
    Draining,
}

/// What the admin listener becomes in a new generation.
#[derive(Debug)]
pub enum AdminChange {
    Keep,
    Off,
    To(TcpListener),
}

/// One generation, as handed to the workers and the control thread.
#[derive(Debug)]
pub struct Generation {
    pub app: Arc<App>,
    /// New listeners, one per worker, when the address changed; each worker takes its own.
    listeners: Mutex<Vec<Option<TcpListener>>>,
    admin: Mutex<AdminChange>,
}

impl Generation {
    pub fn first(app: Arc<App>) -> Generation {
        Generation {
            app,
            listeners: Mutex::new(Vec::new()),
            admin: Mutex::new(AdminChange::Keep),
        }
    }

    /// Worker `i`'s new listener, if the address changed.
    pub fn take_listener(&self, i: usize) -> Option<TcpListener> {
        self.listeners.lock().ok()?.get_mut(i)?.take()
    }

    /// The admin listener's change, taken once.
    pub fn take_admin(&self) -> AdminChange {
        self.admin
            .lock()
            .map(|mut a| std::mem::replace(&mut *a, AdminChange::Keep))
            .unwrap_or(AdminChange::Keep)
    }
}

/// Builds and hands out generations.
#[derive(Debug)]
pub struct Reloader {
    source: Option<Source>,
    generations: watch::Sender<Arc<Generation>>,
    /// Serializes reloads.
    busy: Mutex<()>,
}

impl Reloader {
    pub fn new(source: Option<Source>, first: Arc<App>) -> Reloader {
        let (generations, _) = watch::channel(Arc::new(Generation::first(first)));
        Reloader {
            source,
            generations,
            busy: Mutex::new(()),
        }
    }

    /// Whether there is a file to reload from.
    pub fn has_source(&self) -> bool {
        self.source.is_some()
    }

    /// A receiver of generations, for a worker or the control thread.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Generation>> {
        self.generations.subscribe()
    }

    /// The generation in force.
    pub fn current(&self) -> Arc<App> {
        self.generations.borrow().app.clone()
    }

    /// `read` of the generation in force, never in the middle of a reload: the next
    /// generation's counters start from this one's, so a scrape between the two could count
    /// requests that the next generation does not, and a counter would seem to go down.
    pub fn between_reloads<R>(&self, read: impl FnOnce(&App) -> R) -> R {
        let _no_reload = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        read(&self.current())
    }

    /// Re-reads the config and, if it is valid, swaps it in. Returns the new config's hash.
    pub fn reload(&self) -> Result<u64, ReloadError> {
        let _one_at_a_time = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let previous = self.current();
        let outcome = self.next(&previous);
        let counter = usize::from(outcome.is_err());
        previous.life.reloads[counter].fetch_add(1, Ordering::Relaxed);
        match &outcome {
            Ok(generation) => {
                let hash = generation.app.config.hash;
                tracing::info!(hash = format!("{hash:016x}"), "config reloaded");
                self.generations.send_replace(generation.clone());
            }
            Err(e) => {
                tracing::error!(error = %e, "config reload refused; the running config stays")
            }
        }
        outcome.map(|g| g.app.config.hash)
    }

    fn next(&self, previous: &App) -> Result<Arc<Generation>, ReloadError> {
        // The workers have stopped taking new connections: a new listener would go unserved.
        if previous.life.draining.load(Ordering::Relaxed) {
            return Err(ReloadError::Draining);
        }
        let source = self.source.as_ref().ok_or(ReloadError::NoFile)?;
        let mut config = Config::load(&source.path, &source.overrides)?;
        let old = &previous.config.server;
        if config.server.workers != old.workers {
            tracing::warn!(
                workers = old.workers,
                "the number of workers changes only on restart"
            );
            config.server.workers = old.workers;
        }
        if config.server.max_keys != old.max_keys {
            // The limiter's table, and with it its cap, lives on across reloads.
            tracing::warn!(max_keys = old.max_keys, "max_keys changes only on restart");
            config.server.max_keys = old.max_keys;
        }
        let listeners = match config.server.listen == old.listen {
            true => Vec::new(),
            false => listener::bind_workers(config.server.listen, old.workers, Some(old.listen))?
                .into_iter()
                .map(Some)
                .collect(),
        };
        let admin = match (config.server.admin_listen, old.admin_listen) {
            (new, old) if new == old => AdminChange::Keep,
            (None, _) => AdminChange::Off,
            (Some(addr), _) => AdminChange::To(listener::bind(addr)?),
        };
        super::warn_of_insecure_upstreams(&config);
        let app = Arc::new(App::reload(config, previous).map_err(ReloadError::Store)?);
        Ok(Arc::new(Generation {
            app,
            listeners: Mutex::new(listeners),
            admin: Mutex::new(admin),
        }))
    }
}
