//! `sluice demo`: a small in-process JSON API to put the proxy in front of. It answers with the
//! statuses the API documentation lists: 201 on create, 202 when a check is queued, 204 on
//! delete, 409 for a duplicate file, 422 for an invalid field, 404 for what does not exist.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// The largest body the demo API reads.
const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, Default)]
struct Store {
    next_id: u64,
    candidates: BTreeMap<u64, Candidate>,
}

#[derive(Debug)]
struct Candidate {
    name: String,
    files: Vec<String>,
}

/// Serves the demo API on `listener` until the task is dropped.
pub async fn serve_api(listener: TcpListener) {
    let store = Arc::new(Mutex::new(Store::default()));
    while let Ok((stream, _)) = listener.accept().await {
        let store = store.clone();
        let service = service_fn(move |req| {
            let store = store.clone();
            async move { Ok::<_, Infallible>(handle(&store, req).await) }
        });
        tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service),
        );
    }
}

/// Starts the demo API on a thread of its own, on a free loopback port.
pub fn spawn_api() -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("sluice-demo-api".into())
        .spawn(move || {
            rt.block_on(async move {
                if let Ok(listener) = TcpListener::from_std(listener) {
                    serve_api(listener).await;
                }
            });
        })?;
    Ok(addr)
}

/// The curl lines `sluice demo` prints, for a proxy at `proxy`.
/// curl lines to try against the proxy at `proxy`; over HTTPS when `tls`, trusting the CA in
/// the environment variable `CA` (a PEM file).
pub fn curl_lines(proxy: SocketAddr, tls: bool) -> String {
    let u = match tls {
        true => format!("--cacert \"$CA\" https://{proxy}"),
        false => format!("http://{proxy}"),
    };
    let j = "-H 'Content-Type: application/json'";
    [
        format!("curl -i {u}/v1/candidates -X POST {j} -d '{{\"name\": \"Ada\"}}'            # 201"),
        format!("curl -i {u}/v1/candidates -X POST {j} -d '{{\"name\": \"\"}}'               # 422"),
        format!("curl -i {u}/v1/candidates/1/files -X POST {j} -d '{{\"type\": \"cv\"}}'      # 201, again: 409"),
        format!("curl -i {u}/v1/reports -X POST {j} -d '{{\"candidate_id\": 1}}'           # 202"),
        format!("curl -i {u}/v1/candidates/1 -X DELETE                                       # 204"),
        format!("curl -i {u}/v1/candidates -X POST -H 'Content-Type: text/plain' -d hi      # from sluice"),
        format!("for i in $(seq 101); do curl -s -o /dev/null -w '%{{http_code}} ' -H 'X-Api-Key: demo' {u}/v1/candidates; done"),
    ]
    .join("\n")
}

async fn handle(store: &Mutex<Store>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": "body too large"}),
            );
        }
    };
    let input: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return reply(StatusCode::BAD_REQUEST, json!({"error": e.to_string()})),
        }
    };
    let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
    match (&method, segments.as_slice()) {
        (&Method::GET, ["v1", "candidates"]) => {
            let all: Vec<Value> = store
                .candidates
                .iter()
                .map(|(id, c)| candidate(*id, c))
                .collect();
            reply(StatusCode::OK, json!({ "candidates": all }))
        }
        (&Method::POST, ["v1", "candidates"]) => create(&mut store, &input),
        (&Method::GET, ["v1", "candidates", id]) => match find(&store, id) {
            Some((id, c)) => reply(StatusCode::OK, candidate(id, c)),
            None => not_found(),
        },
        (&Method::DELETE, ["v1", "candidates", id]) => {
            match id.parse().ok().and_then(|id| store.candidates.remove(&id)) {
                Some(_) => reply(StatusCode::NO_CONTENT, Value::Null),
                None => not_found(),
            }
        }
        (&Method::POST, ["v1", "candidates", id, "files"]) => add_file(&mut store, id, &input),
        (&Method::POST, ["v1", "reports"]) => queue_report(&store, &input),
        _ => not_found(),
    }
}

fn create(store: &mut Store, input: &Value) -> Response<Full<Bytes>> {
    let Some(name) = input
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.trim().is_empty())
    else {
        return invalid("name", "is required and must be a non-empty string");
    };
    store.next_id += 1;
    let id = store.next_id;
    let c = Candidate {
        name: name.to_string(),
        files: Vec::new(),
    };
    let body = candidate(id, &c);
    store.candidates.insert(id, c);
    reply(StatusCode::CREATED, body)
}

fn add_file(store: &mut Store, id: &str, input: &Value) -> Response<Full<Bytes>> {
    let Some(kind) = input.get("type").and_then(Value::as_str) else {
        return invalid("type", "is required");
    };
    let Some((id, c)) = id
        .parse()
        .ok()
        .and_then(|id: u64| Some((id, store.candidates.get_mut(&id)?)))
    else {
        return not_found();
    };
    if c.files.iter().any(|f| f == kind) {
        let msg = format!("the candidate already has a file of type {kind:?}");
        return reply(StatusCode::CONFLICT, json!({ "error": msg }));
    }
    c.files.push(kind.to_string());
    reply(
        StatusCode::CREATED,
        json!({ "candidate_id": id, "type": kind }),
    )
}

fn queue_report(store: &Store, input: &Value) -> Response<Full<Bytes>> {
    let id = input.get("candidate_id").and_then(Value::as_u64);
    match id.filter(|id| store.candidates.contains_key(id)) {
        Some(id) => reply(
            StatusCode::ACCEPTED,
            json!({ "candidate_id": id, "status": "pending" }),
        ),
        None => invalid("candidate_id", "must name an existing candidate"),
    }
}

fn find<'a>(store: &'a Store, id: &str) -> Option<(u64, &'a Candidate)> {
    let id = id.parse().ok()?;
    store.candidates.get(&id).map(|c| (id, c))
}

fn candidate(id: u64, c: &Candidate) -> Value {
    json!({ "id": id, "name": c.name, "files": c.files })
}

fn invalid(field: &str, message: &str) -> Response<Full<Bytes>> {
    reply(
        StatusCode::UNPROCESSABLE_ENTITY,
        json!({ "errors": [{ "field": field, "message": message }] }),
    )
}

fn not_found() -> Response<Full<Bytes>> {
    reply(StatusCode::NOT_FOUND, json!({ "error": "not found" }))
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let bytes = if body.is_null() {
        Bytes::new()
    } else {
        Bytes::from(body.to_string())
    };
    let mut res = Response::new(Full::new(bytes));
    *res.status_mut() = status;
    if !body.is_null() {
        res.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    res
}
