//! A request's spans when traces are on (see `telemetry`): one per request (a batch item's is
//! a child of its batch's), made as it starts and given its route, client, verdict and status
//! once answered; and one for the call upstream, whose context the upstream gets.

use http::{Request, Response, StatusCode};
use opentelemetry::trace::TraceContextExt as _;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::record::Record;
use super::{App, FromBatch};
use crate::body::Body;
use crate::config::Mode;
use crate::problem::Problem;
use crate::telemetry;

/// The span of a request: a server span that continues the client's trace, or, for a batch
/// item, a span under its batch's.
pub(super) fn request<B>(req: &Request<B>) -> Span {
    let item = req.extensions().get::<FromBatch>().is_some();
    let method = req.method().as_str();
    let span = tracing::info_span!(
        target: telemetry::TARGET,
        "request",
        "otel.name" = method,
        "otel.kind" = if item { "internal" } else { "server" },
        "otel.status_code" = Empty,
        "http.request.method" = method,
        "url.path" = req.uri().path(),
        "http.route" = Empty,
        "http.response.status_code" = Empty,
        "error.type" = Empty,
        "sluice.client" = Empty,
        "sluice.limit.policy" = Empty,
        "sluice.limit.decision" = Empty,
    );
    if !item {
        telemetry::continue_trace(&span, req.headers());
    }
    span
}

/// Writes what became of the request into its span: the route it took, the client's key name
/// (never the key), the limiter's verdict and the status.
pub(super) fn answered(span: &Span, app: &App, rec: &Record, status: StatusCode) {
    let route = if rec.route == app.metrics.batch_route() {
        Some(app.config.batch.path.as_str())
    } else {
        app.config.routes.get(rec.route).map(|r| r.path.as_str())
    };
    if let Some(route) = route {
        span.record("http.route", route);
        // The span has started: its name is changed on it, not through a field.
        let name = format!("{} {route}", rec.method);
        span.context().span().update_name(name);
    }
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("error.type", status.as_str());
        span.record("otel.status_code", "ERROR");
    }
    if let Some(k) = rec.key {
        span.record("sluice.client", app.config.auth.keys[k].name.as_str());
    }
    if let Some(v) = &rec.verdict {
        let policy = &app.config.policies[v.policy()];
        let decision = match (v.allowed(), policy.mode == Mode::Shadow) {
            (true, _) => "allowed",
            (false, true) => "shadow_refused",
            (false, false) => "refused",
        };
        span.record("sluice.limit.policy", policy.name.as_str());
        span.record("sluice.limit.decision", decision);
    }
}

/// The span of the call to `upstream`, under the request's; `req` gets its `traceparent`.
pub(super) fn upstream<B>(upstream: &str, req: &mut Request<B>) -> Span {
    let method = req.method().as_str();
    let span = tracing::info_span!(
        target: telemetry::TARGET,
        "upstream",
        "otel.name" = method,
        "otel.kind" = "client",
        "otel.status_code" = Empty,
        "http.request.method" = method,
        "sluice.upstream" = upstream,
        "http.response.status_code" = Empty,
        "error.type" = Empty,
    );
    telemetry::send_trace(&span, req.headers_mut());
    span
}

/// Writes the upstream's answer, or why there is none, into its span.
pub(super) fn upstream_answered(span: &Span, res: &Result<Response<Body>, Problem>) {
    match res {
        Ok(res) => {
            span.record("http.response.status_code", res.status().as_u16());
            if res.status().is_server_error() {
                span.record("error.type", res.status().as_str());
                span.record("otel.status_code", "ERROR");
            }
        }
        Err(p) => {
            span.record("error.type", p.status().as_str());
            span.record("otel.status_code", "ERROR");
        }
    }
}
