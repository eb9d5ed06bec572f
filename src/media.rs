//! Media types of a message: whether its body is JSON, and whether a route accepts it
//! (`content_types`). Pure: header values in, answers out.

use http::HeaderMap;
use http::header::CONTENT_TYPE;

/// Whether the body's Content-Type is JSON (`application/json` or `application/*+json`).
/// Any line counts: a body that one of them calls JSON is checked as JSON.
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(CONTENT_TYPE)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| json_essence(essence(v))))
}

/// The one Content-Type a message has. A second line makes it none: RFC 9110 allows one, and
/// checking only the first would let the other one through to the upstream unchecked.
fn content_type(headers: &HeaderMap) -> Option<&str> {
    let mut lines = headers.get_all(CONTENT_TYPE).iter();
    let value = lines.next()?;
    match lines.next() {
        None => value.to_str().ok(),
        Some(_) => None,
    }
}

fn essence(value: &str) -> &str {
    value.split(';').next().unwrap_or_default().trim()
}

fn json_essence(essence: &str) -> bool {
    let Some((kind, sub)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case("json") || sub.to_ascii_lowercase().ends_with("+json"))
}

/// A missing Content-Type is not accepted; JSON must be UTF-8 (the only charset JSON has).
pub fn accepted(types: &[String], headers: &HeaderMap) -> bool {
    let Some(value) = content_type(headers) else {
        return false;
    };
    let essence = essence(value);
    let json = json_essence(essence);
    if json && !utf8_charset(value) {
        return false;
    }
    types.iter().any(|a| {
        a.eq_ignore_ascii_case(essence)
            || (a == "application/json" && json)
            || a.strip_suffix("/*").is_some_and(|kind| {
                essence
                    .split_once('/')
                    .is_some_and(|(k, _)| k.eq_ignore_ascii_case(kind))
            })
    })
}

fn utf8_charset(value: &str) -> bool {
    value
        .split(';')
        .skip(1)
        .all(|param| match param.split_once('=') {
            Some((name, v)) if name.trim().eq_ignore_ascii_case("charset") => {
                let v = v.trim().trim_matches('"');
                v.eq_ignore_ascii_case("utf-8") || v.eq_ignore_ascii_case("utf8")
            }
            _ => true,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(ct: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(ct) = ct {
            h.insert(CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        }
        h
    }

    fn json_only() -> Vec<String> {
        vec!["application/json".into()]
    }

    #[test]
    fn json_and_its_suffix_forms_are_accepted_in_utf8_only() {
        let ok = [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/problem+json",
            "application/json;charset=\"UTF8\"",
        ];
        for ct in ok {
            assert!(accepted(&json_only(), &headers(Some(ct))), "{ct}");
        }
        let refused = [
            Some("text/plain"),
            Some("application/json; charset=latin1"),
            Some("application/jsonx"),
            None,
        ];
        for ct in refused {
            assert!(!accepted(&json_only(), &headers(ct)), "{ct:?}");
        }
    }

    #[test]
    fn other_accepted_types_match_exactly_or_by_wildcard() {
        let types = vec!["text/csv".to_string(), "image/*".to_string()];
        assert!(accepted(&types, &headers(Some("text/csv; charset=latin1"))));
        assert!(accepted(&types, &headers(Some("image/png"))));
        assert!(!accepted(&types, &headers(Some("text/plain"))));
    }
}
