//! The admin listener, on its own small thread so probes answer even when workers are busy:
//! `/healthz` (the process is alive) and `/readyz` (listening, not draining, upstreams healthy).

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::Body;
use crate::pipeline::App;
use crate::problem::Problem;

/// Starts the admin thread; it stops when the returned sender says so.
pub fn spawn(
    app: Arc<App>,
    listener: std::net::TcpListener,
) -> io::Result<(watch::Sender<bool>, JoinHandle<()>)> {
    let (done, mut until) = watch::channel(false);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let thread = std::thread::Builder::new().name("sluice-admin".into()).spawn(move || {
        rt.block_on(async move {
            let listener = match TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => return tracing::error!(error = %e, "admin listener failed"),
            };
            loop {
                tokio::select! {
                    Ok((stream, _)) = listener.accept() => {
                        let app = app.clone();
                        let service = service_fn(move |req| {
                            let res = answer(&app, &req);
                            async move { Ok::<_, Infallible>(res) }
                        });
                        tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
                    }
                    _ = until.changed() => break,
                }
            }
        });
    })?;
    Ok((done, thread))
}

fn answer(app: &App, req: &Request<Incoming>) -> Response<Body> {
    match req.uri().path() {
        "/healthz" => json(StatusCode::OK, r#"{"status":"ok"}"#),
        "/readyz" if app.ready() => json(StatusCode::OK, r#"{"status":"ready"}"#),
        "/readyz" => json(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"not ready"}"#),
        _ => Problem::NoRoute.into_response(""),
    }
}

fn json(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut res = Response::new(Body::full(body));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}
