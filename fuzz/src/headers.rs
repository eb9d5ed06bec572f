//! Header maps from fuzz input: from the field lines of a head, or from structured input
//! whose names are drawn mostly from the few a check reads, so the fuzzer need not guess them.

use arbitrary::Arbitrary;
use http::{HeaderMap, HeaderName, HeaderValue};

/// One header line as the fuzzer writes it.
#[derive(Debug, Arbitrary)]
pub struct Line {
    name: Name,
    value: Vec<u8>,
}

#[derive(Debug, Arbitrary)]
enum Name {
    /// One of the names the code under test looks for (`names[i % len]`).
    Known(u8),
    /// Any other: kept if it is a valid header name.
    Other(String),
}

/// The header map of `lines`: those whose name or value is not valid are left out, as a
/// client cannot send them.
pub fn map(lines: &[Line], names: &[&'static str]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in lines {
        let name = match &line.name {
            Name::Known(i) if !names.is_empty() => {
                HeaderName::from_static(names[usize::from(*i) % names.len()])
            }
            Name::Known(_) => continue,
            Name::Other(s) => match HeaderName::try_from(s.as_str()) {
                Ok(name) => name,
                Err(_) => continue,
            },
        };
        // Trimmed, as hyper trims a value it parses.
        if let Ok(value) = HeaderValue::from_bytes(line.value.trim_ascii()) {
            map.append(name, value);
        }
    }
    map
}

/// The header map of a head's field lines, `Name: value` each (LF or CRLF); lines that are
/// not a valid field are left out, as hyper refuses them.
pub fn parse(text: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in text.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            map.append(name, value);
        }
    }
    map
}
