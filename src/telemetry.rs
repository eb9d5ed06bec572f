//! Traces: OpenTelemetry spans made through `tracing` (target [`TARGET`]) and posted to a
//! collector over OTLP/HTTP (protobuf). W3C `traceparent`/`tracestate` are read from the
//! client and sent upstream. Off by default; then [`on`] is false, the request path makes no
//! span, and this costs one branch per request.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderMap, Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of every span made for traces: only the trace layer listens to it.
pub const TARGET: &str = "sluice::otel";

/// A post to the collector that takes longer is dropped (the spans with it).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a collector's answer read: it is a small status message.
const MAX_ANSWER: usize = 64 * 1024;

static ON: AtomicBool = AtomicBool::new(false);

/// Whether traces are on. The only thing the request path asks when they are off.
#[inline]
pub fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// The layer that turns [`TARGET`] spans into OpenTelemetry spans.
pub type Layer = tracing_opentelemetry::OpenTelemetryLayer<tracing_subscriber::Registry, SdkTracer>;

/// The exporter while it runs: dropped or shut down, it sends what it still holds.
#[derive(Debug)]
pub struct Traces {
    provider: SdkTracerProvider,
    /// Runs the posts to the collector, off the workers.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Traces {
    /// Sends the spans still held, then stops.
    pub fn shutdown(mut self) {
        let _ = self.provider.shutdown();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// Traces, as `[telemetry]` asks for them (checked by `config`).
#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    /// Where spans are posted (OTLP over HTTP, protobuf): the endpoint with `/v1/traces`
    /// appended. `None`: no traces, and no span is made.
    pub traces_url: Option<http::Uri>,
    /// The share of traces started here that are kept; a client's sampling decision stands.
    pub sample_ratio: f64,
    pub service_name: String,
}

/// Starts the exporter `config` asks for, if any; the layer to add to the subscriber, after
/// which [`on`] is true.
pub fn start(config: &Telemetry) -> io::Result<Option<(Traces, Layer)>> {
    let Some(url) = &config.traces_url else {
        return Ok(None);
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sluice-traces")
        .enable_all()
        .build()?;
    let client = Post(runtime.handle().clone());
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url.to_string())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(io::Error::other)?;
    let sampler = Sampler::TraceIdRatioBased(config.sample_ratio);
    let provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(sampler)))
        .with_resource(
            Resource::builder()
                .with_service_name(config.service_name.clone())
                .build(),
        )
        .with_batch_exporter(exporter)
        .build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("sluice"))
        .with_location(false)
        .with_threads(false)
        .with_level(false)
        .with_target(false)
        .with_tracked_inactivity(false);
    ON.store(true, Ordering::Relaxed);
    let runtime = Some(runtime);
    Ok(Some((Traces { provider, runtime }, layer)))
}

/// Makes `span` continue the trace the client's `traceparent` (and `tracestate`) name.
pub fn continue_trace(span: &Span, headers: &HeaderMap) {
    if headers.contains_key("traceparent") {
        let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let _ = span.set_parent(cx);
    }
}

/// Sets `traceparent` (and `tracestate`) in `headers` to name `span`: the upstream's spans
/// become its children.
pub fn send_trace(span: &Span, headers: &mut HeaderMap) {
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(headers));
}

/// Posts OTLP requests over plain HTTP/1.1 with hyper, one connection per post (a post
/// carries a batch of spans, every few seconds), on the exporter's own runtime.
#[derive(Debug)]
struct Post(tokio::runtime::Handle);

#[async_trait::async_trait]
impl HttpClient for Post {
    async fn send_bytes(&self, req: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        // The batch processor awaits this from a thread of its own, outside any runtime.
        self.0.spawn(post(req)).await?
    }
}

async fn post(req: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
    let (mut parts, body) = req.into_parts();
    let authority = parts.uri.authority().ok_or("no host")?.clone();
    let port = authority.port_u16().unwrap_or(80);
    let posting = async {
        let tcp = tokio::net::TcpStream::connect((authority.host(), port)).await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        parts.headers.insert(HOST, authority.as_str().parse()?);
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = Uri::try_from(path)?;
        let res = send
            .send_request(Request::from_parts(parts, Full::new(body)))
            .await?;
        let (parts, body) = res.into_parts();
        let body = Limited::new(body, MAX_ANSWER).collect().await?.to_bytes();
        Ok::<_, HttpError>(Response::from_parts(parts, body))
    };
    tokio::time::timeout(EXPORT_TIMEOUT, posting).await?
}
