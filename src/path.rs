//! A request path in normal form (RFC 3986 §6.2.2), before routing: percent-encoded unreserved
//! characters decoded, `.` and `..` segments resolved, runs of slashes merged. Routes, scopes
//! and the upstream then all see the same path, so `/x/../admin` or `/%61dmin` cannot reach
//! `/admin` past the route that guards it. `%2F` stays encoded: it is data, not a separator.
//! A path that cannot be put in normal form without a guess is refused (see [`Fault`]).

use http::Uri;
use http::uri::PathAndQuery;

/// Why a path has no normal form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A `%` that does not begin an escape. Kept as it is, it could form a new escape with
    /// characters decoded after it (`%%36%31` would become `%61`).
    StrayPercent,
    /// `%00`: many servers and file systems take a NUL for the end of the path.
    Nul,
    /// A `..` with no segment left to remove: a path that climbs above the root. nginx refuses
    /// it rather than drop the `..`, so that what was asked is never quietly changed.
    AboveRoot,
}

/// `uri` with its path in normal form, or `None` if it already is (nearly every request).
pub fn normalized(uri: &Uri) -> Result<Option<Uri>, Fault> {
    let Some(mut clean) = normal(uri.path())? else {
        return Ok(None);
    };
    if let Some(query) = uri.query() {
        clean.push('?');
        clean.push_str(query);
    }
    let mut parts = uri.clone().into_parts();
    // Only characters that were already in the path come out, so this cannot fail.
    parts.path_and_query = PathAndQuery::try_from(clean).ok();
    Ok(Uri::from_parts(parts).ok())
}

/// `path` in normal form, or `None` if it already is.
#[inline]
pub fn normal(path: &str) -> Result<Option<String>, Fault> {
    if !needs_normalizing(path.as_bytes()) {
        return Ok(None);
    }
    rewritten(path)
}

/// The rare case, kept out of line so that the common one sets up no frame for it.
#[cold]
#[inline(never)]
fn rewritten(path: &str) -> Result<Option<String>, Fault> {
    let bytes = path.as_bytes();
    for i in (0..bytes.len()).filter(|&i| bytes[i] == b'%') {
        match escaped(bytes, i) {
            None => return Err(Fault::StrayPercent),
            Some(0) => return Err(Fault::Nul),
            Some(_) => {}
        }
    }
    Ok(Some(normal_path(path)?).filter(|clean| clean != path))
}

/// Whether the path may need normalizing: it has a percent escape, or a slash followed by a
/// slash or a dot (a false alarm for `/.well-known`, which costs only the slower check).
/// Eight bytes at a time, as every request's path goes through here.
#[inline]
fn needs_normalizing(path: &[u8]) -> bool {
    if path.first() != Some(&b'/') {
        return false; // `*`, or no path: nothing to resolve
    }
    if path.len() < 8 {
        let mut padded = [0u8; 8];
        padded[..path.len()].copy_from_slice(path);
        return suspect(u64::from_le_bytes(padded));
    }
    // Words overlap by a byte, so that every two neighbouring bytes are in one word; the last
    // word ends where the path does.
    let word = |at: usize| u64::from_le_bytes(path[at..at + 8].try_into().unwrap_or_default());
    let last = path.len() - 8;
    let mut at = 0;
    while at < last {
        if suspect(word(at)) {
            return true;
        }
        at += 7;
    }
    suspect(word(last))
}

/// Whether eight bytes (the first in the low bits) hold a `%`, or a `/` followed by a `/` or
/// a `.`. Byte tests that may flag a byte in error only do so next to a byte rightly flagged.
fn suspect(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    // The top bit of every byte that is zero.
    let zeros = |x: u64| x.wrapping_sub(ONES) & !x & (ONES << 7);
    let percent = zeros(word ^ (ONES * u64::from(b'%')));
    let slash = zeros(word ^ (ONES * u64::from(b'/')));
    // `.` is 0x2e and `/` 0x2f: with the low bit set, both are 0x2f.
    let slash_or_dot = zeros((word | ONES) ^ (ONES * u64::from(b'/')));
    percent != 0 || slash & (slash_or_dot >> 8) != 0
}

/// `path` (starting with `/`) with unreserved characters decoded, then dot segments and empty
/// segments removed; a path that ended in a directory still does.
fn normal_path(path: &str) -> Result<String, Fault> {
    let decoded = decode_unreserved(path);
    let mut segments: Vec<&str> = Vec::new();
    let mut directory = false;
    for segment in decoded[1..].split('/') {
        directory = matches!(segment, "" | "." | "..");
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop().ok_or(Fault::AboveRoot)?;
            }
            _ => segments.push(segment),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if directory || segments.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Decodes `%XX` where it stands for an unreserved character (RFC 3986 §2.3); other escapes
/// mean something else decoded, so they stay as they are. Every `%` begins an escape here, so
/// nothing decoded can form a new one.
fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let unreserved = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~');
    while i < bytes.len() {
        if let Some(c) = escaped(bytes, i).filter(unreserved) {
            out.push(c);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    // Only ASCII was decoded, and the rest was a `str` already.
    String::from_utf8(out).unwrap_or_else(|_| path.to_string())
}

/// The byte the escape at `bytes[i]` stands for, if one begins there: `%` and two hex digits.
fn escaped(bytes: &[u8], i: usize) -> Option<u8> {
    if bytes.get(i) != Some(&b'%') {
        return None;
    }
    let digit = |at: usize| char::from(*bytes.get(at)?).to_digit(16);
    Some((digit(i + 1)? * 16 + digit(i + 2)?) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> String {
        let uri: Uri = path.parse().unwrap();
        normalized(&uri)
            .unwrap()
            .map_or(path.to_string(), |u| u.to_string())
    }

    #[test]
    fn paths_already_normal_are_left_alone() {
        for path in [
            "/",
            "/v1/candidates",
            "/a/b/",
            "/a.b/.c/..d/",
            "/a?x=/../y",
            "*",
        ] {
            let uri: Uri = path.parse().unwrap();
            assert_eq!(normalized(&uri), Ok(None), "{path}");
        }
    }

    #[test]
    fn dot_and_empty_segments_are_resolved() {
        assert_eq!(norm("//admin/x"), "/admin/x");
        assert_eq!(norm("/./admin/x"), "/admin/x");
        assert_eq!(norm("/x/../admin/x"), "/admin/x");
        assert_eq!(norm("/a/b/.."), "/a/");
        assert_eq!(norm("/a/."), "/a/");
        assert_eq!(norm("/a//"), "/a/");
        assert_eq!(norm("/a/.."), "/");
        assert_eq!(norm("/x/..?q=1&r=/../"), "/?q=1&r=/../");
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_kept() {
        assert_eq!(norm("/%61dmin/x"), "/admin/x");
        assert_eq!(norm("/x/%2e%2E/admin"), "/admin");
        assert_eq!(norm("/x/%2e%2e/admin"), "/admin");
        assert_eq!(norm("/a%7Eb"), "/a~b");
        assert_eq!(norm("/a%2Fb/%20c"), "/a%2Fb/%20c");
        assert_eq!(norm("/%2536"), "/%2536");
    }

    #[test]
    fn a_percent_that_begins_no_escape_is_refused() {
        for path in [
            "/a%2",
            "/a%zz",
            "/%",
            "/%%36%31dmin",
            "/%2%65%2%65/admin",
            "/a%2/%2e",
        ] {
            let uri: Uri = path.parse().unwrap();
            assert_eq!(normalized(&uri), Err(Fault::StrayPercent), "{path}");
        }
    }

    #[test]
    fn a_nul_or_a_climb_above_the_root_is_refused() {
        for (path, fault) in [
            ("/a%00b", Fault::Nul),
            ("/a/%00", Fault::Nul),
            ("/..", Fault::AboveRoot),
            ("/../etc/passwd", Fault::AboveRoot),
            ("/../../etc/passwd", Fault::AboveRoot),
            ("/a/../../b", Fault::AboveRoot),
            ("/%2e%2e/admin", Fault::AboveRoot),
            ("//../x", Fault::AboveRoot),
        ] {
            let uri: Uri = path.parse().unwrap();
            assert_eq!(normalized(&uri), Err(fault), "{path}");
        }
        // Only the path counts: a query may say what it likes.
        assert_eq!(norm("/a?x=/../../y"), "/a?x=/../../y");
    }

    proptest::proptest! {
        #[test]
        fn the_word_scan_finds_what_a_byte_scan_finds(tail in "[/.%a-z]{0,40}") {
            let path = format!("/{tail}");
            let bytes = path.as_bytes();
            let simple = bytes.contains(&b'%')
                || bytes.windows(2).any(|w| w[0] == b'/' && matches!(w[1], b'/' | b'.'));
            proptest::prop_assert_eq!(needs_normalizing(bytes), simple, "{}", path);
        }

        #[test]
        fn the_normal_form_is_normal(tail in "[/.%0-9a-fA-F]{0,24}") {
            let path = format!("/{tail}");
            if let Ok(Some(clean)) = normal(&path) {
                proptest::prop_assert_eq!(normal(&clean), Ok(None), "{} -> {}", path, clean);
            }
        }
    }

    #[test]
    fn an_absolute_form_uri_keeps_its_scheme_and_authority() {
        assert_eq!(norm("http://h:81//a/./b"), "http://h:81/a/b");
    }
}
