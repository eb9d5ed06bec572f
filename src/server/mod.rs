//! The server: one thread per worker, each with its own single-threaded runtime, listener
//! (`SO_REUSEPORT`) and upstream pool, so a request stays on one core from accept to answer;
//! plus a small control thread for the admin listener and the limiter's sweeper. Shutdown
//! drains in-flight requests; a reload swaps the config without dropping a connection.

mod activity;
mod admin;
mod cap;
mod certs;
mod client_io;
mod conn;
mod drain;
pub mod head;
mod listener;
mod reload;
mod timing;
mod worker;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use tokio::sync::watch;

pub use reload::{ReloadError, Source};

use crate::config::Config;
use crate::limiter::Store;
use crate::pipeline::App;
use reload::Reloader;

/// A started server. Dropping it does not stop it: call `shutdown` then `join`.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    reloader: Arc<Reloader>,
    stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    control: Option<(watch::Sender<bool>, JoinHandle<()>)>,
}

/// How a server starts, beyond its config.
#[derive(Default)]
pub struct Options {
    /// Where a reload reads the config from; without one, a reload is refused.
    pub source: Option<Source>,
    /// The limiter's store, instead of the one `[store]` names (tests pass one on a manual
    /// clock, so that waiting out a limit takes no time).
    pub store: Option<Arc<dyn Store>>,
}

/// Binds every listener (so errors surface here, before anything runs) and starts the workers.
/// A reload is refused.
pub fn start(config: Config) -> io::Result<Running> {
    start_with(config, Options::default())
}

/// `start`, with `options`.
pub fn start_with(config: Config, options: Options) -> io::Result<Running> {
    let listeners = listener::bind_workers(config.server.listen, config.server.workers, None)?;
    let addr = listeners[0].local_addr()?;
    let admin = config.server.admin_listen.map(listener::bind).transpose()?;
    let admin_addr = admin.as_ref().map(|l| l.local_addr()).transpose()?;
    warn_of_insecure_upstreams(&config);
    let app = Arc::new(match options.store {
        Some(store) => App::with_store(config, store),
        None => App::new(config)?,
    });
    let reloader = Arc::new(Reloader::new(options.source, app.clone()));
    let (stop, stopped) = watch::channel(false);
    let cap = Arc::new(cap::Cap::default());
    let workers = listeners
        .into_iter()
        .enumerate()
        .map(|(i, l)| worker::spawn(i, reloader.subscribe(), l, cap.clone(), stopped.clone()))
        .collect::<io::Result<_>>()?;
    let control = Some(admin::spawn(reloader.clone(), admin)?);
    let admin = admin_addr.map_or("off".into(), |a| a.to_string());
    let upstreams = app.config.summary_of_upstreams();
    let n = app.config.server.workers;
    let store = app.config.store.describe();
    let max_connections = app.config.server.max_connections;
    let open_files = crate::fds::soft_limit();
    if !crate::fds::fits_with_upstreams(open_files, max_connections, n) {
        tracing::warn!(
            max_connections,
            open_files,
            "the open file limit has room for max_connections, but not for an upstream \
             connection for each as well: at full load, upstream connections may fail (502); \
             raise the limit to twice max_connections"
        );
    }
    tracing::info!(%addr, %admin, workers = n, max_connections, open_files, %upstreams, %store, "sluice listening");
    Ok(Running {
        addr,
        admin_addr,
        reloader,
        stop,
        workers,
        control,
    })
}

/// An upstream whose certificates are not verified is worth a warning every start and reload.
pub(crate) fn warn_of_insecure_upstreams(config: &Config) {
    let insecure = config.upstreams.iter().filter(|u| {
        u.tls
            .as_ref()
            .is_some_and(|t| t.settings.insecure_skip_verify)
    });
    for u in insecure {
        tracing::warn!(
            upstream = %u.name,
            "tls_insecure_skip_verify: this upstream's certificates are NOT verified; anyone on \
             the path to it can read and change its traffic"
        );
    }
}

impl Running {
    /// The proxy's address (useful when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin listener's address, unless it is off.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The generation of shared state in force.
    pub fn app(&self) -> Arc<App> {
        self.reloader.current()
    }

    /// Re-reads the config file; on success every worker switches to it, and the new config's
    /// hash comes back. On failure nothing changes.
    pub fn reload(&self) -> Result<u64, ReloadError> {
        self.reloader.reload()
    }

    /// Begins shutdown: readiness fails, listeners close, in-flight requests may finish.
    pub fn shutdown(&self) {
        // Never in the middle of a reload: one that began before is swapped in while the
        // workers still serve, and one after sees the draining and is refused.
        self.reloader
            .between_reloads(|app| app.life.draining.store(true, Ordering::Relaxed));
        let _ = self.stop.send(true);
    }

    /// Waits until every worker has drained (or hit `drain_timeout`), then stops the admin side.
    pub fn join(mut self) {
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        if let Some((done, thread)) = self.control.take() {
            let _ = done.send(true);
            let _ = thread.join();
        }
    }
}
