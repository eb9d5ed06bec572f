//! `Host` headers: whether a value is a host, with an optional port (`host::is_valid`).
//!
//! The input is the header's value, any bytes. The answer must be that of RFC 3986's grammar
//! read another way (some split into a host and a port that each fit theirs), with sluice's
//! two limits: a name is not empty, and a port has at most five digits. Case never changes
//! it, and a name or IPv6 address taken is an authority the `http` crate takes too, as an
//! HTTP/2 upstream is sent it as `:authority`.

#![no_main]

use http::uri::Authority;
use libfuzzer_sys::fuzz_target;
use sluice::host::is_valid;

fuzz_target!(|value: &[u8]| {
    let valid = is_valid(value);
    assert_eq!(
        valid,
        reference(value),
        "{:?}",
        String::from_utf8_lossy(value)
    );
    assert_eq!(is_valid(&value.to_ascii_uppercase()), valid, "upper case");
    assert_eq!(is_valid(&value.to_ascii_lowercase()), valid, "lower case");
    // An HTTP/2 upstream is sent the Host as `:authority`, which the `http` crate must take.
    // It takes no `%` escape and no IPvFuture: such a Host, rare as it is, is replaced by the
    // upstream's own authority there (see docs/fuzzing.md), so those are set aside here.
    if valid && !value.contains(&b'%') && !value.starts_with(b"[v") && !value.starts_with(b"[V") {
        let authority = Authority::try_from(value);
        assert!(
            authority.is_ok(),
            "taken, but not an authority: {authority:?}"
        );
    }
});

/// `host [":" port]`: the value is a host, or some colon splits it into a host and a port.
fn reference(value: &[u8]) -> bool {
    is_host(value)
        || (0..value.len())
            .any(|i| value[i] == b':' && is_host(&value[..i]) && is_port(&value[i + 1..]))
}

/// `port = *DIGIT`, at most five of them.
fn is_port(port: &[u8]) -> bool {
    port.len() <= 5 && port.iter().all(u8::is_ascii_digit)
}

/// `host = IP-literal / IPv4address / reg-name`; an IPv4 address is a reg-name too.
fn is_host(host: &[u8]) -> bool {
    match host {
        [b'[', literal @ .., b']'] => is_ipv6(literal) || is_ip_future(literal),
        _ => is_reg_name(host),
    }
}

fn is_ipv6(literal: &[u8]) -> bool {
    std::str::from_utf8(literal).is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok())
}

/// `IPvFuture = "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" )`
fn is_ip_future(literal: &[u8]) -> bool {
    let Some(rest) = literal.strip_prefix(b"v").or(literal.strip_prefix(b"V")) else {
        return false;
    };
    let Some(dot) = rest.iter().position(|&b| b == b'.') else {
        return false;
    };
    let (version, address) = rest.split_at(dot);
    let address = &address[1..];
    !version.is_empty()
        && version.iter().all(u8::is_ascii_hexdigit)
        && !address.is_empty()
        && address
            .iter()
            .all(|&b| is_unreserved(b) || is_sub_delim(b) || b == b':')
}

/// `reg-name = *( unreserved / pct-encoded / sub-delims )`, here not empty.
fn is_reg_name(name: &[u8]) -> bool {
    if name.is_empty() {
        return false;
    }
    let mut rest = name;
    while let [first, tail @ ..] = rest {
        rest = match (first, tail) {
            (b'%', [a, b, after @ ..]) if a.is_ascii_hexdigit() && b.is_ascii_hexdigit() => after,
            (b'%', _) => return false,
            (&b, _) if is_unreserved(b) || is_sub_delim(b) => tail,
            _ => return false,
        };
    }
    true
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}
