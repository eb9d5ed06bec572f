//! Paths: the normal form routes and scopes see (`path::normal`, `path::normalized`).
//!
//! The input is a path as a client would send it. What comes out must be normal (no empty,
//! `.` or `..` segment, no escape of an unreserved character, no stray `%`, no `%00`),
//! normalizing it again must change nothing, and a URI keeps all but its path. The answer,
//! normal form or refusal, must be that of a plain reading of RFC 3986 §6.2.2 done here, one
//! step after another: so the fast test that lets nearly every path through untouched never
//! lets one through that needed work.

#![no_main]

use http::Uri;
use libfuzzer_sys::fuzz_target;
use sluice::path::{Fault, normal, normalized};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check_path(text);
    if let Ok(uri) = text.parse::<Uri>() {
        check_uri(&uri);
    }
});

fn check_path(path: &str) {
    let got = normal(path);
    let expected = reference(path);
    match (&got, &expected) {
        (Ok(None), Ok(same)) => assert_eq!(same, path, "{path:?} left as it is"),
        (Ok(Some(clean)), Ok(expected)) => assert_eq!(clean, expected, "{path:?}"),
        _ => assert_eq!(
            got.as_ref().err(),
            expected.as_ref().err(),
            "{path:?}: {got:?}"
        ),
    }
    match got {
        Ok(Some(clean)) => {
            assert_ne!(clean, path, "`Some` for a path already normal");
            assert_is_normal(&clean);
            assert!(
                matches!(normal(&clean), Ok(None)),
                "{path:?} -> {clean:?}, which is not normal: {:?}",
                normal(&clean)
            );
        }
        // Already normal: then it must be, if it is a path at all (not `*`).
        Ok(None) if path.starts_with('/') => assert_is_normal(path),
        Ok(None) => {}
        Err(_) => return,
    }
    assert!(
        !path.starts_with('/') || !has_stray_percent(path.as_bytes()),
        "{path:?} has a `%` that begins no escape, and was let through"
    );
}

/// A path in normal form, as routes and scopes compare it.
fn assert_is_normal(path: &str) {
    assert!(path.starts_with('/'), "{path:?}");
    let bytes = path.as_bytes();
    assert!(!has_stray_percent(bytes), "{path:?}");
    assert!(!path.contains("%00"), "{path:?}");
    // Between slashes; the last may be empty: a directory's trailing slash.
    let segments: Vec<&str> = path[1..].split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        assert!(
            !matches!(*segment, "." | "..") && (last || !segment.is_empty()),
            "{path:?} keeps the segment {segment:?}"
        );
    }
    for (i, _) in path.match_indices('%') {
        let c = hex_byte(&bytes[i + 1..i + 3]);
        assert!(
            !(c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')),
            "{path:?} keeps an escape of the unreserved {:?}",
            char::from(c)
        );
    }
}

fn check_uri(uri: &Uri) {
    match normalized(uri) {
        Ok(Some(clean)) => {
            let path = normal(uri.path());
            assert!(
                matches!(&path, Ok(Some(p)) if p == clean.path()),
                "{uri} -> {clean}, but its path alone -> {path:?}"
            );
            assert_eq!(clean.query(), uri.query(), "{uri} -> {clean}");
            assert_eq!(clean.scheme(), uri.scheme(), "{uri} -> {clean}");
            assert_eq!(clean.authority(), uri.authority(), "{uri} -> {clean}");
            assert!(matches!(normalized(&clean), Ok(None)), "{uri} -> {clean}");
        }
        // Left as it is only if its path is normal already.
        Ok(None) => assert!(
            matches!(normal(uri.path()), Ok(None)),
            "{uri} left alone, but its path -> {:?}",
            normal(uri.path())
        ),
        Err(_) => assert!(normal(uri.path()).is_err(), "{uri} refused, its path not"),
    }
}

fn has_stray_percent(bytes: &[u8]) -> bool {
    (0..bytes.len()).any(|i| {
        bytes[i] == b'%'
            && !(bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}

/// Two hex digits (checked by `has_stray_percent` first) as the byte they stand for.
fn hex_byte(digits: &[u8]) -> u8 {
    let d = |b: u8| char::from(b).to_digit(16).unwrap_or(0) as u8;
    d(digits[0]) * 16 + d(digits[1])
}

/// RFC 3986's normalization of a path, step by step: refuse a `%` that begins no escape and
/// `%00`; decode escapes of unreserved characters; drop empty and `.` segments and resolve
/// `..`, refusing one that climbs above the root; keep a final slash. Not a path (`*`): as
/// it is.
fn reference(path: &str) -> Result<String, Fault> {
    if !path.starts_with('/') {
        return Ok(path.to_string());
    }
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            decoded.push(bytes[i]);
            i += 1;
            continue;
        }
        let escape = bytes
            .get(i + 1..i + 3)
            .filter(|d| d.iter().all(u8::is_ascii_hexdigit));
        let Some(digits) = escape else {
            return Err(Fault::StrayPercent);
        };
        match hex_byte(digits) {
            0 => return Err(Fault::Nul),
            c if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') => {
                decoded.push(c)
            }
            _ => decoded.extend_from_slice(&bytes[i..i + 3]),
        }
        i += 3;
    }
    let decoded = String::from_utf8(decoded).expect("only ASCII decoded");
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let mut kept = Vec::new();
    for segment in &segments {
        match *segment {
            "" | "." => {}
            ".." => {
                kept.pop().ok_or(Fault::AboveRoot)?;
            }
            other => kept.push(other),
        }
    }
    let mut out: String = kept.iter().map(|s| format!("/{s}")).collect();
    // A path that ends in a directory keeps its final slash; the root is `/`.
    if kept.is_empty() || matches!(segments.last(), Some(&("" | "." | ".."))) {
        out.push('/');
    }
    Ok(out)
}
