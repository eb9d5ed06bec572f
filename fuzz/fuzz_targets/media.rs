//! Media types: whether a body is JSON (`media::is_json`) and whether a route takes it
//! (`media::accepted`).
//!
//! The input is lines: `Content-Type: VALUE` is a line of the request's head, any other line
//! a media type the route lists in `content_types`.
//!
//! Case never matters; a route that takes only JSON takes only what `is_json` calls JSON,
//! in UTF-8, on a single Content-Type line; a `type/*` entry takes every subtype; the
//! answer does not depend on where the route lists a type.

#![no_main]

use http::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sluice::media::{accepted, is_json};

const FIELD: &[u8] = b"content-type:";

fuzz_target!(|data: &[u8]| {
    let mut lines = Vec::new();
    let mut types = Vec::new();
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match line.get(..FIELD.len()) {
            Some(name) if name.eq_ignore_ascii_case(FIELD) => {
                // Trimmed, as hyper trims a value it parses.
                let value = line[FIELD.len()..].trim_ascii();
                lines.extend(HeaderValue::from_bytes(value).ok());
            }
            // Lowercased, as the config stores them.
            _ => types.push(String::from_utf8_lossy(line).to_ascii_lowercase()),
        }
    }
    let headers = map(&lines);

    let json = is_json(&headers);
    let taken = accepted(&types, &headers);
    // Case: the same answers with every line in upper case, or in lower case.
    for spelled in [upper(&lines), lower(&lines)] {
        let other = map(&spelled);
        assert_eq!(is_json(&other), json, "{lines:?}");
        assert_eq!(accepted(&types, &other), taken, "{lines:?} for {types:?}");
    }
    if taken {
        assert_eq!(
            lines.len(),
            1,
            "taken with {} Content-Type lines",
            lines.len()
        );
    }
    let json_only = ["application/json".to_string()];
    if accepted(&json_only, &headers) {
        assert!(json, "taken as JSON, but not JSON: {lines:?}");
        let latin = map(&[with_param(&lines[0], "; charset=latin1")]);
        assert!(
            !accepted(&json_only, &latin),
            "JSON in Latin-1 taken: {lines:?}"
        );
    }
    // A parameter other than charset changes nothing.
    if lines.len() == 1 {
        let more = map(&[with_param(&lines[0], "; q=1")]);
        assert_eq!(accepted(&types, &more), taken, "{lines:?} for {types:?}");
        assert_eq!(is_json(&more), json, "{lines:?}");
    }
    // The order of the route's list does not matter.
    let reversed: Vec<String> = types.iter().rev().cloned().collect();
    assert_eq!(accepted(&reversed, &headers), taken);
    // `type/*` takes every subtype of its type, when the value has one.
    if let [line] = &lines[..]
        && let Some((kind, _)) = line.to_str().ok().and_then(|v| essence(v).split_once('/'))
        && !kind.is_empty()
        && !json
    {
        let wildcard = [format!("{}/*", kind.to_ascii_lowercase())];
        assert!(
            accepted(&wildcard, &headers),
            "{line:?} not taken by {wildcard:?}"
        );
    }
});

fn map(lines: &[HeaderValue]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in lines {
        headers.append(CONTENT_TYPE, line.clone());
    }
    headers
}

fn upper(lines: &[HeaderValue]) -> Vec<HeaderValue> {
    lines
        .iter()
        .map(|l| respelled(l, u8::to_ascii_uppercase))
        .collect()
}

fn lower(lines: &[HeaderValue]) -> Vec<HeaderValue> {
    lines
        .iter()
        .map(|l| respelled(l, u8::to_ascii_lowercase))
        .collect()
}

fn respelled(line: &HeaderValue, f: fn(&u8) -> u8) -> HeaderValue {
    let bytes: Vec<u8> = line.as_bytes().iter().map(f).collect();
    HeaderValue::from_bytes(&bytes).expect("the same bytes but for case")
}

fn with_param(line: &HeaderValue, param: &str) -> HeaderValue {
    let bytes = [line.as_bytes(), param.as_bytes()].concat();
    HeaderValue::from_bytes(&bytes).expect("a valid value, and a parameter")
}

/// The media type without parameters.
fn essence(value: &str) -> &str {
    value.split(';').next().unwrap_or_default().trim()
}
