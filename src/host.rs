//! What a `Host` header may say (RFC 9110 §7.2, RFC 3986 §3.2.2): a host name or an IPv4
//! address, or an IPv6 address in brackets, then an optional `:port`. Anything else (`a/evil`,
//! an empty value, a space, a user) is refused, as nginx refuses it: routes, logs and the
//! upstream's own virtual hosts would each read such a value their own way.

/// Whether `value` is a host, with an optional port.
pub fn is_valid(value: &[u8]) -> bool {
    let (host, port) = match value {
        [b'[', rest @ ..] => {
            let Some(end) = rest.iter().position(|&b| b == b']') else {
                return false;
            };
            let (literal, after) = (&rest[..end], &rest[end + 1..]);
            if !is_ip_literal(literal) {
                return false;
            }
            match after {
                [] => return true,
                [b':', port @ ..] => (&[][..], port),
                _ => return false,
            }
        }
        _ => match value.iter().rposition(|&b| b == b':') {
            Some(colon) => (&value[..colon], &value[colon + 1..]),
            None => (value, &[][..]),
        },
    };
    let named = value.first() == Some(&b'[') || is_reg_name(host);
    named && port.len() <= 5 && port.iter().all(u8::is_ascii_digit)
}

/// A registered name or an IPv4 address: RFC 3986's `reg-name`, not empty. Letters, digits,
/// `-._~`, the sub-delimiters, and `%` escapes.
fn is_reg_name(host: &[u8]) -> bool {
    let mut i = 0;
    while i < host.len() {
        match host[i] {
            b'%' => {
                let hex = |at: usize| host.get(at).is_some_and(u8::is_ascii_hexdigit);
                if !(hex(i + 1) && hex(i + 2)) {
                    return false;
                }
                i += 3;
                continue;
            }
            b if is_unreserved(b) || is_sub_delim(b) => {}
            _ => return false,
        }
        i += 1;
    }
    !host.is_empty()
}

/// The inside of `[...]`: an IPv6 address (hex digits, `:`, and `.` for an embedded IPv4),
/// or an IPvFuture: `v`, a version in hex, `.`, then unreserved characters, sub-delimiters
/// and `:` (RFC 3986 §3.2.2), so that no `/`, `@` or `?` hides in brackets.
fn is_ip_literal(literal: &[u8]) -> bool {
    let text = std::str::from_utf8(literal).unwrap_or_default();
    if text.parse::<std::net::Ipv6Addr>().is_ok() {
        return true;
    }
    let [b'v' | b'V', rest @ ..] = literal else {
        return false;
    };
    let Some(dot) = rest.iter().position(|&b| b == b'.') else {
        return false;
    };
    let (version, address) = (&rest[..dot], &rest[dot + 1..]);
    !version.is_empty()
        && version.iter().all(u8::is_ascii_hexdigit)
        && !address.is_empty()
        && address
            .iter()
            .all(|&b| is_unreserved(b) || is_sub_delim(b) || b == b':')
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_names_addresses_and_ports_are_valid() {
        for host in [
            "api",
            "api.example.com",
            "api.example.com:8080",
            "127.0.0.1",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8443",
            "[2001:db8::7]",
            "[::ffff:10.0.0.1]:80",
            "under_score.local",
            "xn--bcher-kva.example",
            "a%41b",
            "host:",
        ] {
            assert!(is_valid(host.as_bytes()), "{host}");
        }
    }

    #[test]
    fn an_ipvfuture_holds_only_what_rfc_3986_lets_it() {
        // Found by the `host` fuzz target: any printable byte passed after `[v?.`.
        for host in ["[v1.x]", "[V1F.a:b]", "[v12.a-b~c!$]:80"] {
            assert!(is_valid(host.as_bytes()), "{host}");
        }
        for host in [
            "[vv.e11:.fg2x]",
            "[v1./evil]",
            "[v1.a@b]",
            "[v1.a?b]",
            "[v1.a%41]",
            "[v1.]",
            "[v.x]",
            "[vx]",
        ] {
            assert!(!is_valid(host.as_bytes()), "{host:?}");
        }
    }

    #[test]
    fn anything_else_is_not() {
        for host in [
            "",
            "a/evil",
            "a\\evil",
            "a b",
            "user@api",
            "api:80:80",
            "api:http",
            "api:123456",
            ":80",
            "[::1",
            "[::1]x",
            "[zz::1]",
            "[::1]:x",
            "a%4",
            "a%zz",
            "api\t",
            "a?b",
            "a#b",
        ] {
            assert!(!is_valid(host.as_bytes()), "{host:?}");
        }
    }
}
