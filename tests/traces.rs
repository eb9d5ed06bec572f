//! Traces end to end: the built binary posts its spans over OTLP/HTTP to a receiver in the
//! test, which decodes them; the upstream shows which `traceparent` it was sent.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use serde_json::json;
use support::process::Process;
use support::*;

/// One span as received.
#[derive(Debug, Clone)]
struct Got {
    name: String,
    kind: i32,
    trace: String,
    id: String,
    parent: String,
    service: String,
    attrs: HashMap<String, String>,
}

impl Got {
    fn attr(&self, key: &str) -> &str {
        self.attrs.get(key).map_or("", String::as_str)
    }
}

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const INTERNAL: i32 = 1;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP/HTTP receiver on loopback: every span posted to `/v1/traces`.
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<Got>>>,
    posts: Arc<Mutex<usize>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let posts = Arc::new(Mutex::new(0));
        let (s, p) = (spans.clone(), posts.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (s, p) = (s.clone(), p.clone());
                let service = service_fn(move |req: Request<Incoming>| {
                    let (s, p) = (s.clone(), p.clone());
                    async move {
                        assert_eq!(req.uri().path(), "/v1/traces");
                        assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                        let body = req.into_body().collect().await?.to_bytes();
                        let export = ExportTraceServiceRequest::decode(body).unwrap();
                        *p.lock().unwrap() += 1;
                        s.lock().unwrap().extend(decoded(export));
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::new())))
                    }
                });
                tokio::spawn(async move {
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service);
                    let _ = conn.await;
                });
            }
        });
        Receiver {
            url: format!("http://{addr}"),
            spans,
            posts,
        }
    }

    /// The spans received once at least `n` have come (waits up to 5 s).
    async fn spans(&self, n: usize) -> Vec<Got> {
        for _ in 0..100 {
            if self.spans.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.spans.lock().unwrap().clone()
    }
}

fn decoded(export: ExportTraceServiceRequest) -> Vec<Got> {
    let mut out = Vec::new();
    for rs in export.resource_spans {
        let resource = rs.resource.unwrap_or_default();
        let service = resource
            .attributes
            .iter()
            .find(|a| a.key == "service.name")
            .map(|a| value(a.value.as_ref()))
            .unwrap_or_default();
        for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
            let attrs = span
                .attributes
                .iter()
                .map(|a| (a.key.clone(), value(a.value.as_ref())))
                .collect();
            out.push(Got {
                name: span.name,
                kind: span.kind,
                trace: hex(&span.trace_id),
                id: hex(&span.span_id),
                parent: hex(&span.parent_span_id),
                service: service.clone(),
                attrs,
            });
        }
    }
    out
}

fn value(v: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(n)) => n.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

const CONFIG: &str = r#"
[upstreams.api]
targets = ["{upstream}"]
[policies.tight]
rate = "1/m"
burst = 1
[[routes]]
path = "/limited"
upstream = "api"
policy = "tight"
[[routes]]
path = "/"
upstream = "api"
policy = "none"
[auth]
mode = "api_keys"
[[auth.keys]]
name = "acme"
sha256 = "{sha}"
[telemetry]
otlp_endpoint = "{endpoint}"
sample_ratio = 1.0
service_name = "edge"
"#;

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// sluice as a process, exporting to `endpoint`, with batches sent every 50 ms.
async fn start(up: &Upstream, endpoint: &str, env: &[(&str, &str)]) -> Process {
    let toml = CONFIG
        .replace("{upstream}", &up.url())
        .replace("{sha}", &sha256_hex("secret-key"))
        .replace("{endpoint}", endpoint);
    let mut all = vec![("OTEL_BSP_SCHEDULE_DELAY", "50")];
    all.extend_from_slice(env);
    Process::start(&toml, &all).await
}

fn traceparent(seen: &support::Seen) -> Vec<String> {
    let header = seen.headers["traceparent"].to_str().unwrap();
    header.split('-').map(str::to_string).collect()
}

#[tokio::test]
async fn a_proxied_request_a_429_and_a_batch_are_traced_and_the_trace_goes_upstream() {
    let up = spawn_upstream().await;
    let receiver = Receiver::start().await;
    let sluice = start(&up, &receiver.url, &[]).await;
    let client_parent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let headers = [
        ("traceparent", client_parent.as_str()),
        ("tracestate", "vendor=1"),
        ("x-api-key", "secret-key"),
    ];
    assert_eq!(
        get_with(sluice.addr, "/limited/a", &headers).await.status,
        200
    );
    let keyed = [("x-api-key", "secret-key")];
    assert_eq!(
        get_with(sluice.addr, "/limited/b", &keyed).await.status,
        429
    );
    let batch = json!({"requests": [{"id": "i", "method": "GET", "path": "/item"}]});
    let mut req = post_json("/batch", &batch.to_string());
    req.headers_mut()
        .insert("x-api-key", "secret-key".parse().unwrap());
    assert_eq!(send(sluice.addr, req).await.status, 207);

    // request + upstream, request (429), batch + item + upstream.
    let spans = receiver.spans(6).await;
    let named = |name: &str| -> Vec<&Got> { spans.iter().filter(|s| s.name == name).collect() };
    assert!(spans.iter().all(|s| s.service == "edge"), "{spans:#?}");

    // The client's trace continued: same trace id, the client's span as parent.
    let proxied = named("GET /limited")
        .into_iter()
        .find(|s| s.attr("http.response.status_code") == "200")
        .unwrap_or_else(|| panic!("{spans:#?}"));
    assert_eq!(
        (proxied.trace.as_str(), proxied.parent.as_str()),
        (CLIENT_TRACE, CLIENT_SPAN)
    );
    assert_eq!(proxied.kind, SERVER);
    assert_eq!(proxied.attr("http.request.method"), "GET");
    assert_eq!(proxied.attr("http.route"), "/limited");
    assert_eq!(proxied.attr("sluice.client"), "acme");
    assert_eq!(proxied.attr("sluice.limit.decision"), "allowed");
    assert!(
        !spans
            .iter()
            .flat_map(|s| s.attrs.values())
            .any(|v| v.contains("secret-key"))
    );
    // The upstream call is its child, and the upstream was sent that span as parent.
    let call = spans
        .iter()
        .find(|s| s.kind == CLIENT && s.parent == proxied.id)
        .unwrap_or_else(|| panic!("{spans:#?}"));
    assert_eq!(call.trace, CLIENT_TRACE);
    assert_eq!(call.attr("http.response.status_code"), "200");
    let sent = traceparent(&up.seen_at("/limited/a"));
    assert_eq!(sent, ["00", CLIENT_TRACE, call.id.as_str(), "01"]);
    assert_eq!(up.seen_at("/limited/a").headers["tracestate"], "vendor=1");

    // The 429: a root span of its own, refused, and nothing sent upstream.
    let refused = named("GET /limited")
        .into_iter()
        .find(|s| s.attr("http.response.status_code") == "429")
        .unwrap_or_else(|| panic!("{spans:#?}"));
    assert_eq!(refused.parent, "");
    assert_ne!(refused.trace, CLIENT_TRACE);
    assert_eq!(refused.attr("sluice.limit.decision"), "refused");
    assert!(!spans.iter().any(|s| s.parent == refused.id), "{spans:#?}");

    // The batch: its item a child span, the item's upstream call under it.
    let batch = named("POST /batch");
    assert_eq!(batch.len(), 1, "{spans:#?}");
    assert_eq!(batch[0].attr("http.response.status_code"), "207");
    let item = spans
        .iter()
        .find(|s| s.parent == batch[0].id)
        .unwrap_or_else(|| panic!("{spans:#?}"));
    assert_eq!((item.kind, item.name.as_str()), (INTERNAL, "GET /"));
    assert_eq!(item.trace, batch[0].trace);
    let item_call = spans
        .iter()
        .find(|s| s.parent == item.id)
        .unwrap_or_else(|| panic!("{spans:#?}"));
    assert_eq!(item_call.kind, CLIENT);
    let sent = traceparent(&up.seen_at("/item"));
    assert_eq!(
        (sent[1].as_str(), sent[2].as_str()),
        (item.trace.as_str(), item_call.id.as_str())
    );
}

#[tokio::test]
async fn with_no_endpoint_nothing_is_exported_and_traceparent_passes_untouched() {
    let up = spawn_upstream().await;
    let receiver = Receiver::start().await;
    // Even with the standard variables pointing at a collector.
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url.as_str())];
    let sluice = start(&up, "", &env).await;
    let client_parent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let headers = [("traceparent", client_parent.as_str())];
    let headers = [headers[0], ("x-api-key", "secret-key")];
    assert_eq!(get_with(sluice.addr, "/a", &headers).await.status, 200);
    assert_eq!(
        get_with(sluice.addr, "/limited", &headers[1..])
            .await
            .status,
        200
    );
    assert_eq!(
        get_with(sluice.addr, "/limited", &headers[1..])
            .await
            .status,
        429
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(*receiver.posts.lock().unwrap(), 0);
    assert_eq!(
        up.seen_at("/a").headers["traceparent"],
        client_parent.as_str()
    );
}
