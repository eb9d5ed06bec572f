//! A batch body, checked whole before anything runs: valid JSON (else 400), at most
//! `max_requests` items (else 413), and every item well formed with its dependencies known and
//! acyclic (else 422, with a JSON pointer per error).

use http::header::{HeaderName, HeaderValue};
use http::{Method, Uri};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::document::{self, Document};
use crate::problem::{FieldError, Limit, Problem};

/// The most errors one 422 lists; the rest are left for the next attempt.
const MAX_ERRORS: usize = 50;

/// One request of a batch, ready to run; its body is the text the batch holds.
#[derive(Debug, Clone)]
pub struct Item<'a> {
    pub id: String,
    pub method: Method,
    pub uri: Uri,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Option<&'a RawValue>,
    /// Indexes of the items this one waits for.
    pub depends_on: Vec<usize>,
}

/// Parses and checks a batch body.
pub fn parse<'a>(
    bytes: &'a [u8],
    batch_path: &str,
    max_requests: usize,
) -> Result<Vec<Item<'a>>, Problem> {
    let Document { value: doc, bodies } = document::read(bytes, max_requests)?;
    let mut errors = Errors::default();
    let Some(requests) = requests(&doc, &mut errors) else {
        return Err(errors.into_problem());
    };
    if requests.len() > max_requests {
        return Err(Problem::TooLarge(Limit::Batch { max: max_requests }));
    }
    let mut items: Vec<Item> = requests
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let body = bodies.get(i).copied().flatten();
            item(i, r, body, batch_path, &mut errors)
        })
        .collect();
    resolve_dependencies(requests, &mut items, &mut errors);
    if errors.0.is_empty() {
        find_cycle(&items, &mut errors);
    }
    match errors.0.is_empty() {
        true => Ok(items),
        false => Err(errors.into_problem()),
    }
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        if self.0.len() < MAX_ERRORS {
            self.0.push(FieldError {
                field: field.into(),
                message: message.into(),
            });
        }
    }

    fn into_problem(self) -> Problem {
        Problem::BatchInvalid { errors: self.0 }
    }
}

fn requests<'a>(doc: &'a Value, errors: &mut Errors) -> Option<&'a Vec<Value>> {
    let Some(obj) = doc.as_object() else {
        errors.push("", "must be an object with a \"requests\" array");
        return None;
    };
    for key in obj.keys().filter(|k| *k != "requests") {
        errors.push(format!("/{}", escape(key)), "unknown member");
    }
    match obj.get("requests").and_then(Value::as_array) {
        Some(list) if list.is_empty() => errors.push("/requests", "must hold at least one request"),
        Some(list) if errors.0.is_empty() => return Some(list),
        Some(_) => {}
        None => errors.push("/requests", "is required and must be an array"),
    }
    None
}

const MEMBERS: [&str; 6] = ["id", "method", "path", "headers", "body", "depends_on"];

fn item<'a>(
    i: usize,
    value: &Value,
    body: Option<&'a RawValue>,
    batch_path: &str,
    errors: &mut Errors,
) -> Item<'a> {
    let at = |member: &str| format!("/requests/{i}/{member}");
    let empty = Map::new();
    let obj = value.as_object().unwrap_or_else(|| {
        errors.push(format!("/requests/{i}"), "must be an object");
        &empty
    });
    for key in obj.keys().filter(|k| !MEMBERS.contains(&k.as_str())) {
        errors.push(at(&escape(key)), "unknown member");
    }
    let id = match obj.get("id").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => {
            errors.push(at("id"), "is required and must be a non-empty string");
            String::new()
        }
    };
    let method = match obj
        .get("method")
        .and_then(Value::as_str)
        // Case-insensitive, as route methods are: "get" is GET.
        .map(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()))
    {
        Some(Ok(m)) => m,
        _ => {
            errors.push(
                at("method"),
                "is required and must be an HTTP method such as \"GET\"",
            );
            Method::GET
        }
    };
    let uri = path(obj.get("path"), batch_path).unwrap_or_else(|message| {
        errors.push(at("path"), message);
        Uri::from_static("/")
    });
    Item {
        id,
        method,
        uri,
        headers: headers(i, obj.get("headers"), errors),
        body,
        depends_on: Vec::new(),
    }
}

fn path(value: Option<&Value>, batch_path: &str) -> Result<Uri, &'static str> {
    let Some(p) = value.and_then(Value::as_str).filter(|p| p.starts_with('/')) else {
        return Err("is required and must be a path starting with /");
    };
    let uri: Uri = p.parse().map_err(|_| "is not a valid path")?;
    // In the normal form the item will be routed by, so that no spelling reaches the batch.
    let uri = match crate::path::normalized(&uri) {
        Ok(normal) => normal.unwrap_or(uri),
        Err(_) => return Err("has a % that does not begin an escape"),
    };
    if uri.path() == batch_path {
        return Err("cannot be the batch endpoint itself");
    }
    Ok(uri)
}

fn headers(i: usize, value: Option<&Value>, errors: &mut Errors) -> Vec<(HeaderName, HeaderValue)> {
    let Some(value) = value else {
        return Vec::new();
    };
    let Some(obj) = value.as_object() else {
        errors.push(
            format!("/requests/{i}/headers"),
            "must be an object of strings",
        );
        return Vec::new();
    };
    let mut out = Vec::with_capacity(obj.len());
    for (name, v) in obj {
        let parsed = v.as_str().and_then(|v| {
            Some((
                HeaderName::try_from(name).ok()?,
                HeaderValue::try_from(v).ok()?,
            ))
        });
        match parsed {
            Some(pair) => out.push(pair),
            None => errors.push(
                format!("/requests/{i}/headers/{}", escape(name)),
                "must be a valid header name with a string value",
            ),
        }
    }
    out
}

/// Turns `depends_on` ids into indexes; duplicate ids and unknown ids are errors.
fn resolve_dependencies(requests: &[Value], items: &mut [Item], errors: &mut Errors) {
    let mut seen = std::collections::HashMap::new();
    for (i, item) in items.iter().enumerate().filter(|(_, it)| !it.id.is_empty()) {
        if let Some(first) = seen.insert(item.id.as_str(), i) {
            errors.push(
                format!("/requests/{i}/id"),
                format!("duplicates the id of /requests/{first}"),
            );
        }
    }
    let mut resolved = Vec::with_capacity(items.len());
    for (i, request) in requests.iter().enumerate() {
        let mut deps = Vec::new();
        match request.get("depends_on") {
            None => {}
            Some(Value::Array(ids)) => {
                for (k, id) in ids.iter().enumerate() {
                    match id.as_str().and_then(|id| seen.get(id)) {
                        Some(&j) => deps.push(j),
                        None => errors.push(
                            format!("/requests/{i}/depends_on/{k}"),
                            format!("no request has the id {id}"),
                        ),
                    }
                }
            }
            Some(_) => errors.push(
                format!("/requests/{i}/depends_on"),
                "must be an array of ids",
            ),
        }
        resolved.push(deps);
    }
    for (item, deps) in items.iter_mut().zip(resolved) {
        item.depends_on = deps;
    }
}

/// Reports one dependency cycle, if there is any (depth-first search, three colours).
fn find_cycle(items: &[Item], errors: &mut Errors) {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        i: usize,
        items: &[Item],
        marks: &mut [Mark],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        marks[i] = Mark::Open;
        path.push(i);
        for &d in &items[i].depends_on {
            match marks[d] {
                Mark::Open => {
                    let start = path.iter().position(|&p| p == d).unwrap_or(0);
                    return Some(path[start..].to_vec());
                }
                Mark::New => {
                    if let Some(cycle) = visit(d, items, marks, path) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks[i] = Mark::Done;
        None
    }
    let mut marks = vec![Mark::New; items.len()];
    for i in 0..items.len() {
        if marks[i] == Mark::New
            && let Some(cycle) = visit(i, items, &mut marks, &mut Vec::new())
        {
            let names: Vec<&str> = cycle
                .iter()
                .chain(cycle.first())
                .map(|&c| items[c].id.as_str())
                .collect();
            let msg = format!("is part of a dependency cycle: {}", names.join(" -> "));
            errors.push(format!("/requests/{}/depends_on", cycle[0]), msg);
            return;
        }
    }
}

/// Escapes a member name for a JSON pointer (RFC 6901).
fn escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(body: &str) -> Vec<(String, String)> {
        match parse(body.as_bytes(), "/batch", 3) {
            Err(Problem::BatchInvalid { errors }) => {
                errors.into_iter().map(|e| (e.field, e.message)).collect()
            }
            other => panic!("expected 422, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_batch_resolves_dependencies_to_indexes() {
        let body = r#"{"requests": [
            {"id": "c", "method": "POST", "path": "/v1/candidates", "body": {"name": "Ada"}},
            {"id": "r", "method": "post", "path": "/v1/reports?x=1", "depends_on": ["c"], "headers": {"X-Trace": "1"}}
        ]}"#;
        let items = parse(body.as_bytes(), "/batch", 100).unwrap();
        assert_eq!(items[1].depends_on, [0]);
        assert_eq!(items[1].uri, "/v1/reports?x=1");
        assert_eq!(items[1].headers[0].0, "x-trace");
        assert_eq!(items[0].method, Method::POST);
    }

    #[test]
    fn not_json_is_400_and_too_many_is_413() {
        assert!(matches!(
            parse(b"{nope", "/batch", 3),
            Err(Problem::InvalidJson { .. })
        ));
        let four = r#"{"requests": [{}, {}, {}, {}]}"#;
        assert_eq!(
            parse(four.as_bytes(), "/batch", 3).unwrap_err(),
            Problem::TooLarge(Limit::Batch { max: 3 })
        );
    }

    #[test]
    fn each_field_error_has_a_json_pointer() {
        let e = errors(
            r#"{"requests": [{"id": "a", "method": "GET"}, {"method": "NOT A METHOD", "path": "/x"}]}"#,
        );
        assert_eq!(e[0].0, "/requests/0/path");
        assert_eq!(e[1].0, "/requests/1/id");
        assert_eq!(e[2].0, "/requests/1/method");
    }

    #[test]
    fn duplicate_unknown_and_cyclic_dependencies_are_refused() {
        let dup = errors(
            r#"{"requests": [{"id": "a", "method": "GET", "path": "/"}, {"id": "a", "method": "GET", "path": "/"}]}"#,
        );
        assert_eq!(
            dup,
            [(
                "/requests/1/id".to_string(),
                "duplicates the id of /requests/0".to_string()
            )]
        );
        let unknown = errors(
            r#"{"requests": [{"id": "a", "method": "GET", "path": "/", "depends_on": ["zz"]}]}"#,
        );
        assert_eq!(unknown[0].0, "/requests/0/depends_on/0");
        let cycle = errors(
            r#"{"requests": [{"id": "a", "method": "GET", "path": "/", "depends_on": ["c"]},
                {"id": "b", "method": "GET", "path": "/", "depends_on": ["a"]},
                {"id": "c", "method": "GET", "path": "/", "depends_on": ["b"]}]}"#,
        );
        assert_eq!(cycle[0].0, "/requests/0/depends_on");
        assert!(cycle[0].1.contains("a -> c -> b -> a"), "{}", cycle[0].1);
    }

    #[test]
    fn an_item_cannot_aim_at_the_batch_endpoint() {
        let e = errors(r#"{"requests": [{"id": "a", "method": "POST", "path": "/batch"}]}"#);
        assert_eq!(
            e[0],
            (
                "/requests/0/path".to_string(),
                "cannot be the batch endpoint itself".to_string()
            )
        );
    }

    #[test]
    fn the_shape_is_checked_before_the_items() {
        assert_eq!(errors(r#"[1]"#)[0].0, "");
        assert_eq!(errors(r#"{"requests": {}}"#)[0].0, "/requests");
        assert_eq!(errors(r#"{"requests": []}"#)[0].0, "/requests");
        assert_eq!(errors(r#"{"requests": [], "extra": 1}"#)[0].0, "/extra");
    }
}
