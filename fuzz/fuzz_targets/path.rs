//! Paths: the normal form routes and scopes see (`path::normal`, `path::normalized`).
//!
//! The input is a path as a client would send it. What comes out must be normal (no empty,
//! `.` or `..` segment, no escape of an unreserved character, no stray `%`), normalizing it
//! again must change nothing, and a URI keeps all but its path.

#![no_main]

use http::Uri;
use libfuzzer_sys::fuzz_target;
use sluice::path::{normal, normalized};

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
    match normal(path) {
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
        // Refusing is always safe; what must be refused is below.
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
