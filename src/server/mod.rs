//! The server: one thread per worker, each with its own single-threaded runtime, listener
//! (`SO_REUSEPORT`) and upstream pool, so a request stays on one core from accept to answer;
//! plus a small control thread for the admin listener and the limiter's sweeper. Shutdown
//! drains in-flight requests.

mod admin;
mod client_io;
mod listener;
mod worker;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use tokio::sync::watch;

use crate::config::Config;
use crate::pipeline::App;

/// A started server. Dropping it does not stop it: call `shutdown` then `join`.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    app: Arc<App>,
    stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    control: Option<(watch::Sender<bool>, JoinHandle<()>)>,
}

/// Binds every listener (so errors surface here, before anything runs) and starts the workers.
pub fn start(config: Config) -> io::Result<Running> {
    let listeners = listener::bind_workers(config.server.listen, config.server.workers)?;
    let addr = listeners[0].local_addr()?;
    let admin = config.server.admin_listen.map(listener::bind).transpose()?;
    let admin_addr = admin.as_ref().map(|l| l.local_addr()).transpose()?;
    let app = Arc::new(App::new(config));
    let (stop, stopped) = watch::channel(false);
    let workers = listeners
        .into_iter()
        .enumerate()
        .map(|(i, l)| worker::spawn(i, app.clone(), l, stopped.clone()))
        .collect::<io::Result<_>>()?;
    let control = Some(admin::spawn(app.clone(), admin)?);
    tracing::info!(%addr, admin = ?admin_addr, workers = app.config.server.workers, "sluice listening");
    Ok(Running {
        addr,
        admin_addr,
        app,
        stop,
        workers,
        control,
    })
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

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Begins shutdown: readiness fails, listeners close, in-flight requests may finish.
    pub fn shutdown(&self) {
        self.app.draining.store(true, Ordering::Relaxed);
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
