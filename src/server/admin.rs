//! The control thread: the limiter's periodic sweep, and the admin listener, apart from the
//! workers so that probes answer even when they are busy:
//! `/healthz` (the process is alive), `/readyz` (listening, not draining, upstreams healthy)
//! and `/metrics` (Prometheus).

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::body::Body;
use crate::metrics::{Live, render};
use crate::pipeline::App;
use crate::problem::Problem;

/// How often the limiter drops keys whose state a fresh key would have anyway.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Starts the control thread (admin listener, if any, and the limiter's sweeper); it stops
/// when the returned sender says so.
pub fn spawn(
    app: Arc<App>,
    listener: Option<std::net::TcpListener>,
) -> io::Result<(watch::Sender<bool>, JoinHandle<()>)> {
    let (done, mut until) = watch::channel(false);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let thread = std::thread::Builder::new()
        .name("sluice-control".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = listener
                    .map(TcpListener::from_std)
                    .transpose()
                    .unwrap_or_else(|e| {
                        tracing::error!(error = %e, "admin listener failed");
                        None
                    });
                let mut sweep = tokio::time::interval(SWEEP_EVERY);
                loop {
                    tokio::select! {
                        Some(stream) = accept(listener.as_ref()) => serve(&app, stream),
                        _ = sweep.tick() => {
                            let dropped = app.limits.store().sweep();
                            tracing::debug!(dropped, "limiter swept");
                        }
                        _ = until.changed() => break,
                    }
                }
            });
        })?;
    Ok((done, thread))
}

/// The next admin connection; never, without an admin listener.
async fn accept(listener: Option<&TcpListener>) -> Option<TcpStream> {
    match listener {
        Some(l) => l.accept().await.ok().map(|(stream, _)| stream),
        None => std::future::pending().await,
    }
}

fn serve(app: &Arc<App>, stream: TcpStream) {
    let app = app.clone();
    let service = service_fn(move |req| {
        let res = answer(&app, &req);
        async move { Ok::<_, Infallible>(res) }
    });
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::spawn(conn);
}

fn answer(app: &App, req: &Request<Incoming>) -> Response<Body> {
    match req.uri().path() {
        "/healthz" => json(StatusCode::OK, r#"{"status":"ok"}"#),
        "/readyz" if app.ready() => json(StatusCode::OK, r#"{"status":"ready"}"#),
        "/readyz" => json(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"not ready"}"#),
        "/metrics" => metrics(app),
        _ => Problem::NoRoute.into_response(""),
    }
}

fn metrics(app: &App) -> Response<Body> {
    let live = Live {
        metrics: app.metrics.clone(),
        connections: app.connections.load(Ordering::Relaxed) as u64,
        tracked_keys: app.limits.store().tracked_keys() as u64,
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
