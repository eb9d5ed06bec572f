//! The control thread: the limiter's periodic sweep, and the admin listener, apart from the
//! workers so that probes answer even when they are busy:
//! `/healthz` (the process is alive), `/readyz` (listening, not draining, upstreams healthy)
//! `/metrics` (Prometheus) and `POST /reload`.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::certs::{WATCH_EVERY, Watch};
use super::reload::{AdminChange, ReloadError, Reloader};
use crate::body::Body;
use crate::metrics::{Live, render};
use crate::pipeline::App;
use crate::problem::{FieldError, Problem};

/// How often the limiter drops keys whose state a fresh key would have anyway.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Starts the control thread (admin listener, if any, and the limiter's sweeper); it stops
/// when the returned sender says so.
pub fn spawn(
    reloader: Arc<Reloader>,
    listener: Option<std::net::TcpListener>,
) -> io::Result<(watch::Sender<bool>, JoinHandle<()>)> {
    let (done, until) = watch::channel(false);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let thread = std::thread::Builder::new()
        .name("sluice-control".into())
        .spawn(move || rt.block_on(control(reloader, listener, until)))?;
    Ok((done, thread))
}

async fn control(
    reloader: Arc<Reloader>,
    listener: Option<std::net::TcpListener>,
    mut until: watch::Receiver<bool>,
) {
    let mut listener = register(listener);
    let mut generations = reloader.subscribe();
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    let (mut look, mut certs) = (tokio::time::interval(WATCH_EVERY), Watch::default());
    loop {
        tokio::select! {
            Some(stream) = accept(listener.as_ref()) => serve(&reloader, stream),
            _ = sweep.tick() => {
                let dropped = reloader.current().limits.store().sweep();
                tracing::debug!(dropped, "limiter swept");
            }
            _ = look.tick(), if reloader.has_source() => {
                let app = reloader.current();
                let files = app.config.server.tls.iter().flat_map(|t| t.settings.files());
                if certs.changed(files) {
                    tracing::info!("the listener's certificate files changed; reloading");
                    let _ = reloader.reload(); // logged and counted either way
                }
            }
            Ok(()) = generations.changed() => {
                match generations.borrow_and_update().take_admin() {
                    AdminChange::Keep => {}
                    AdminChange::Off => listener = None,
                    AdminChange::To(new) => listener = register(Some(new)),
                }
            }
            _ = until.changed() => break,
        }
    }
}

fn register(listener: Option<std::net::TcpListener>) -> Option<TcpListener> {
    listener
        .map(TcpListener::from_std)
        .transpose()
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "admin listener failed");
            None
        })
}

/// The next admin connection; never, without an admin listener.
async fn accept(listener: Option<&TcpListener>) -> Option<TcpStream> {
    match listener {
        Some(l) => l.accept().await.ok().map(|(stream, _)| stream),
        None => std::future::pending().await,
    }
}

fn serve(reloader: &Arc<Reloader>, stream: TcpStream) {
    let reloader = reloader.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let reloader = reloader.clone();
        async move {
            let res = match req.uri().path() {
                "/readyz" => readyz(&reloader.current()).await,
                _ => answer(&reloader, &req),
            };
            Ok::<_, Infallible>(res)
        }
    });
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::spawn(conn);
}

fn answer(reloader: &Reloader, req: &Request<Incoming>) -> Response<Body> {
    match req.uri().path() {
        "/reload" if req.method() == Method::POST => reload(reloader),
        "/reload" => Problem::MethodNotAllowed {
            allow: HeaderValue::from_static("POST"),
        }
        .into_response(""),
        "/healthz" => json(StatusCode::OK, r#"{"status":"ok"}"#),
        "/metrics" => reloader.between_reloads(metrics),
        _ => Problem::NoRoute.into_response(""),
    }
}

/// `GET /readyz`: 200 while sluice takes requests and every upstream accepts connections
/// (and the limiter's store answers, where `ready_requires_store`). The body says how the
/// store is: `memory`, or a shared store `up` or `down`.
async fn readyz(app: &App) -> Response<Body> {
    let health = app.limits.store().health();
    let store = match (health.kind, health.up) {
        ("memory", _) => "memory",
        (_, true) => "up",
        (_, false) => "down",
    };
    let (status, word) = match app.ready().await {
        true => (StatusCode::OK, "ready"),
        false => (StatusCode::SERVICE_UNAVAILABLE, "not ready"),
    };
    let mut res = json(status, "");
    *res.body_mut() = Body::full(format!(r#"{{"status":"{word}","store":"{store}"}}"#));
    res
}

/// `POST /reload`: 200 with the new config's hash, or 422 listing what is wrong.
fn reload(reloader: &Reloader) -> Response<Body> {
    match reloader.reload() {
        Ok(hash) => {
            let mut res = json(StatusCode::OK, "");
            *res.body_mut() =
                Body::full(format!(r#"{{"status":"reloaded","hash":"{hash:016x}"}}"#));
            res
        }
        Err(ReloadError::Draining) => Problem::Draining.into_response(""),
        Err(e) => {
            let errors = match &e {
                ReloadError::Config(c) if !c.invalid().is_empty() => c
                    .invalid()
                    .iter()
                    .map(|i| FieldError {
                        field: i.key.clone(),
                        message: i.to_string(),
                    })
                    .collect(),
                other => vec![FieldError {
                    field: String::new(),
                    message: other.to_string(),
                }],
            };
            Problem::ConfigInvalid { errors }.into_response("")
        }
    }
}

fn metrics(app: &App) -> Response<Body> {
    let live = Live {
        metrics: app.metrics.clone(),
        connections: app.life.connections.load(Ordering::Relaxed) as u64,
        max_connections: app.config.server.max_connections as u64,
        evicted: app.life.evicted.load(Ordering::Relaxed),
        tracked_keys: app.limits.store().tracked_keys() as u64,
        store: app.limits.store().health(),
        idempotency: app.idempotency.outcomes(),
        idempotency_keys: app.idempotency.usage().0 as u64,
        reloads: app
            .life
            .reloads
            .each_ref()
            .map(|n| n.load(Ordering::Relaxed)),
    };
    let mut res = Response::new(Body::full(render(live)));
    let kind = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    res
}

fn json(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut res = Response::new(Body::full(body));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}
