//! Header rules for one proxied hop: hop-by-hop headers stay behind, X-Forwarded-* are set.

use std::net::IpAddr;

use http::header::{self, FORWARDED, HeaderMap, HeaderName, HeaderValue};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// The `[[auth.keys]]` entry a client presented, by name; never one the client sent.
static X_SLUICE_CLIENT: HeaderName = HeaderName::from_static("x-sluice-client");
static TRUE_CLIENT_IP: HeaderName = HeaderName::from_static("true-client-ip");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus `Proxy-*`;
/// as text, so that a name is compared without being converted.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
];

/// [`HOP_BY_HOP`] as header names, in the same order, for removing those found: a name
/// given as text would be parsed again on every removal.
static HOP_BY_HOP_NAMES: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// A message whose `Transfer-Encoding` names a coding other than `chunked`. sluice frames each
/// body itself, so such a coding would reach the other side undeclared.
#[derive(Debug, PartialEq, Eq)]
pub struct UnknownCoding;

/// Removes hop-by-hop headers, including those the `Connection` header names (but never
/// `Host`, `Content-Type` or `Content-Length`). A message with `Transfer-Encoding` also loses
/// its `Content-Length`, which the coding overrides (RFC 9112 §6.3) and which no longer
/// describes the body sent on. All are removed either way; the error says that the coding was
/// not `chunked` alone.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> Result<(), UnknownCoding> {
    // One pass over the names finds the few present; removing only those saves hashing all
    // nine names for every message.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return Ok(());
    }
    let mut framing = Ok(());
    if present & 1 << TRANSFER_ENCODING != 0 {
        if !only_chunked(headers) {
            framing = Err(UnknownCoding);
        }
        headers.remove(header::CONTENT_LENGTH);
    }
    // Vec::new does not allocate; only a Connection header naming a custom header does.
    let mut named = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        for token in value.to_str().unwrap_or_default().split(',') {
            let token = token.trim();
            let listed = HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(token));
            if token.is_empty()
                || listed
                || END_TO_END.iter().any(|h| h.eq_ignore_ascii_case(token))
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                named.push(name);
            }
        }
    }
    for name in named {
        headers.remove(name);
    }
    for (i, name) in HOP_BY_HOP_NAMES.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    framing
}

/// Headers a `Connection` header cannot remove: the upstream must get the `Host` and the
/// body's type and length that sluice checked, or a JSON body would go on unchecked and
/// without its type.
const END_TO_END: [&str; 3] = ["host", "content-type", "content-length"];

/// [`HOP_BY_HOP`]'s place of `transfer-encoding`.
const TRANSFER_ENCODING: usize = 4;

/// Whether `Transfer-Encoding` names `chunked` and nothing else: once (twice would hide a
/// second layer of chunks), and last, as the body was framed. Empty list elements do not
/// count (RFC 9110 §5.6.1), but a trailing one leaves a body read to the close.
fn only_chunked(headers: &HeaderMap) -> bool {
    let (mut codings, mut last) = (0, "");
    for line in headers.get_all(header::TRANSFER_ENCODING) {
        let Ok(text) = line.to_str() else {
            return false;
        };
        for coding in text.split(',').map(str::trim) {
            codings += usize::from(!coding.is_empty());
            last = coding;
        }
    }
    codings == 1 && last.eq_ignore_ascii_case("chunked")
}

/// Removes a client's `X_Real_IP`, `X_Sluice_Client` and the like: CGI-style servers (WSGI,
/// PHP) read `_` as `-`, so these would pose as the headers sluice sets, or join their values.
fn remove_posing(headers: &mut HeaderMap) {
    const SET_BY_SLUICE: [&str; 5] = [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-real-ip",
        "x-sluice-client",
    ];
    let posing: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            name.contains('_')
                && SET_BY_SLUICE.iter().any(|set| {
                    set.len() == name.len()
                        && set
                            .bytes()
                            .zip(name.bytes())
                            .all(|(s, n)| s == n || (s == b'-' && n == b'_'))
                })
        })
        .cloned()
        .collect();
    for name in posing {
        headers.remove(name);
    }
}

/// The name's place in [`HOP_BY_HOP`]. Comparing text checks lengths first, and most names
/// differ from all nine in length.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    let name = name.as_str();
    HOP_BY_HOP.iter().position(|&h| h == name)
}

/// Who a request came from and what it is answered under: what its upstream is told.
#[derive(Debug, Clone, Copy)]
pub struct Hop<'a> {
    /// The connection's peer, and whether it is a trusted proxy.
    pub peer: IpAddr,
    pub peer_trusted: bool,
    /// The client, as sluice determined it.
    pub client: IpAddr,
    /// Whether the request came over TLS.
    pub tls: bool,
    /// The name of the `[[auth.keys]]` entry the client presented, under `api_keys`.
    pub key_name: Option<&'a HeaderValue>,
    /// The request id, under its configured name.
    pub id: (&'a HeaderName, &'a HeaderValue),
}

/// The fields sluice adds to a request for its upstream, after the client's own: X-Real-IP,
/// X-Forwarded-For, -Proto and -Host, X-Sluice-Client and the request id. An HTTP/1.1 head
/// takes them as written text ([`Added::write`]), sparing a map insert (a hash, maybe a
/// growth) per field on every request; HTTP/2 takes them into the map ([`Added::insert_into`]).
#[derive(Debug)]
pub struct Added<'a> {
    hop: Hop<'a>,
    /// The X-Forwarded-For lines the request came with, each followed by `, `.
    prior: String,
    /// Whether X-Forwarded-Proto is sluice's to set: not when a trusted peer set its own.
    proto: bool,
    /// X-Forwarded-Host, unless a trusted peer set its own.
    host: Option<HeaderValue>,
}

/// The names [`Added`] writes, each a bit in [`set_forwarded`]'s look at the request's names;
/// the request id's name, configured, is the sixth.
const ADDED: [&str; 5] = [
    "x-real-ip",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-sluice-client",
];
const FOR: u8 = 1 << 1;
const PROTO: u8 = 1 << 2;
const HOST: u8 = 1 << 3;
const ID: u8 = 1 << 5;

/// Takes out of `headers` what the client sent of the fields sluice sets, and returns those
/// fields for the hop: X-Forwarded-For with the peer appended, -Proto and -Host, X-Real-IP
/// (the client as sluice determined it), the key's name and the request id. A trusted peer's
/// own -Proto and -Host are kept: it saw the original. An untrusted peer's `Forwarded` and
/// `True-Client-IP` go: an upstream that believes them would take the client for whoever it
/// claims to be.
pub fn set_forwarded<'a>(headers: &mut HeaderMap, hop: Hop<'a>) -> Added<'a> {
    // One look at the names finds every kind; nearly every request has none of them.
    let (mut posing, mut claiming, mut found) = (false, false, 0u8);
    let mut host = None;
    for (name, value) in headers.iter() {
        if *name == header::HOST {
            host = host.or(Some(value));
            continue;
        }
        if name == hop.id.0 {
            found |= ID;
        }
        let name = name.as_str();
        posing |= name.contains('_');
        claiming |= name == FORWARDED.as_str() || name == TRUE_CLIENT_IP.as_str();
        if let Some(i) = ADDED.iter().position(|&added| added == name) {
            found |= 1 << i;
        }
    }
    let host = host.cloned();
    if posing {
        remove_posing(headers);
    }
    if claiming && !hop.peer_trusted {
        headers.remove(FORWARDED);
        headers.remove(&TRUE_CLIENT_IP);
    }
    // Every line counts: a proxy in front may add its own line rather than append to one.
    let mut prior = String::new();
    if found & FOR != 0 {
        for line in headers.get_all(&X_FORWARDED_FOR) {
            let line = line.to_str().map_or("", str::trim);
            if !line.is_empty() {
                prior.push_str(line);
                prior.push_str(", ");
            }
        }
    }
    // A trusted peer's own -Proto and -Host stay; whatever else was found goes.
    let kept = if hop.peer_trusted {
        found & (PROTO | HOST)
    } else {
        0
    };
    let (proto, host) = (kept & PROTO == 0, host.filter(|_| kept & HOST == 0));
    let names: [&HeaderName; 6] = [
        &X_REAL_IP,
        &X_FORWARDED_FOR,
        &X_FORWARDED_PROTO,
        &X_FORWARDED_HOST,
        &X_SLUICE_CLIENT,
        hop.id.0,
    ];
    for (i, name) in names.into_iter().enumerate() {
        if (found & !kept) & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    Added {
        hop,
        prior,
        proto,
        host,
    }
}

impl Added<'_> {
    /// Writes the fields into an HTTP/1.1 head, each line ending in CRLF. By hand, in few
    /// pieces: it runs for every request.
    pub fn write(&self, out: &mut Vec<u8>) {
        let Hop {
            peer,
            client,
            tls,
            key_name,
            id,
            ..
        } = self.hop;
        let mut buf = [0u8; 64];
        let client_text = format_ip(client, &mut buf);
        out.extend_from_slice(b"x-real-ip: ");
        out.extend_from_slice(client_text);
        out.extend_from_slice(b"\r\nx-forwarded-for: ");
        out.extend_from_slice(self.prior.as_bytes());
        if peer == client {
            out.extend_from_slice(client_text); // the usual case: no trusted proxy in between
        } else {
            out.extend_from_slice(format_ip(peer, &mut [0; 64]));
        }
        out.extend_from_slice(b"\r\n");
        if self.proto {
            out.extend_from_slice(match tls {
                true => b"x-forwarded-proto: https\r\n",
                false => b"x-forwarded-proto: http\r\n",
            });
        }
        let mut field = |name: &[u8], value: &[u8]| {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        };
        if let Some(host) = &self.host {
            field(b"x-forwarded-host", host.as_bytes());
        }
        if let Some(name) = key_name {
            field(b"x-sluice-client", name.as_bytes());
        }
        field(id.0.as_str().as_bytes(), id.1.as_bytes());
    }

    /// Inserts the fields into `headers`, for an HTTP/2 upstream: read back from what
    /// [`Added::write`] writes, so that one place says what they are.
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        let mut text = Vec::new();
        self.write(&mut text);
        // Names have no colon and values no CR or LF: each line splits one way.
        for line in text.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii_start());
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            {
                headers.insert(name, value);
            }
        }
    }
}

/// Writes an IP address into a stack buffer, avoiding a heap String per request; IPv4 by
/// hand, as `fmt` costs more than the rest of the header rewrite.
fn format_ip(ip: IpAddr, buf: &mut [u8; 64]) -> &[u8] {
    use std::io::Write;
    if let IpAddr::V4(v4) = ip {
        let mut len = 0;
        for (i, octet) in v4.octets().into_iter().enumerate() {
            if i > 0 {
                buf[len] = b'.';
                len += 1;
            }
            if octet >= 100 {
                buf[len] = b'0' + octet / 100;
                len += 1;
            }
            if octet >= 10 {
                buf[len] = b'0' + octet / 10 % 10;
                len += 1;
            }
            buf[len] = b'0' + octet % 10;
            len += 1;
        }
        return &buf[..len];
    }
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(cursor, "{ip}");
    let len = cursor.position() as usize;
    &buf[..len]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_names_removed_are_the_names_found() {
        for (text, name) in HOP_BY_HOP.iter().zip(&HOP_BY_HOP_NAMES) {
            assert_eq!(name.as_str(), *text);
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic x"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn host_and_the_bodys_type_and_length_stay_even_when_connection_names_them() {
        let mut h = map(&[
            (
                "connection",
                "host, x-private, Content-Type, content-length",
            ),
            ("host", "api"),
            ("x-private", "1"),
            ("content-type", "application/json"),
            ("content-length", "2"),
        ]);
        strip_hop_by_hop(&mut h).unwrap();
        assert_eq!(h.len(), 3);
        assert_eq!(h["host"], "api");
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h["content-length"], "2");
    }

    #[test]
    fn transfer_encoding_takes_content_length_with_it() {
        for coding in ["chunked", "Chunked ", ", chunked", " ,chunked"] {
            let mut h = map(&[("transfer-encoding", coding), ("content-length", "2")]);
            strip_hop_by_hop(&mut h).unwrap();
            assert!(h.is_empty(), "{coding}: {h:?}");
        }
        let unknown = [
            "gzip, chunked",
            "gzip",
            "chunked, chunked",
            "chunked,",
            "chunked;q=1",
            "",
        ];
        for coding in unknown {
            let mut h = map(&[("transfer-encoding", coding), ("content-length", "2")]);
            assert_eq!(strip_hop_by_hop(&mut h), Err(UnknownCoding), "{coding}");
            assert!(h.is_empty(), "stripped all the same: {h:?}");
        }
        let mut h = map(&[
            ("transfer-encoding", "chunked"),
            ("transfer-encoding", "chunked"),
        ]);
        assert_eq!(
            strip_hop_by_hop(&mut h),
            Err(UnknownCoding),
            "twice, on two lines"
        );
    }

    #[test]
    fn addresses_are_written_as_std_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.200.3.45",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(format_ip(ip, &mut [0; 64]), ip.to_string().as_bytes());
        }
    }

    #[test]
    fn messages_without_hop_by_hop_headers_are_left_alone() {
        let mut h = map(&[("host", "a"), ("x-api-key", "k"), ("accept", "*/*")]);
        let before = h.clone();
        strip_hop_by_hop(&mut h).unwrap();
        assert_eq!(h, before);
        let mut h = map(&[("host", "a"), ("transfer-encoding", "chunked")]);
        strip_hop_by_hop(&mut h).unwrap();
        assert_eq!(h.len(), 1);
    }

    static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

    fn hop(peer: IpAddr, peer_trusted: bool, client: IpAddr, tls: bool) -> Hop<'static> {
        static ID: HeaderValue = HeaderValue::from_static("r-1");
        Hop {
            peer,
            peer_trusted,
            client,
            tls,
            key_name: None,
            id: (&X_REQUEST_ID, &ID),
        }
    }

    /// What an HTTP/2 upstream gets: the fields sluice adds, in the map.
    fn forward(h: &mut HeaderMap, peer: IpAddr, trusted: bool, client: IpAddr, tls: bool) {
        set_forwarded(h, hop(peer, trusted, client, tls)).insert_into(h);
    }

    #[test]
    fn an_http1_head_gets_the_fields_an_http2_map_gets() {
        let name = HeaderValue::from_static("billing");
        let pairs = [
            ("x-forwarded-for", "203.0.113.9"),
            ("host", "api.example"),
            ("x-forwarded-proto", "https"),
        ];
        for trusted in [false, true] {
            let mut h = map(&pairs);
            let mut hop = hop("::1".parse().unwrap(), trusted, [192, 0, 2, 1].into(), true);
            hop.key_name = Some(&name);
            let added = set_forwarded(&mut h, hop);
            let mut written = Vec::new();
            added.write(&mut written);
            let mut inserted = h.clone();
            added.insert_into(&mut inserted);
            let mut from_text = h.clone();
            for line in String::from_utf8(written).unwrap().split_terminator("\r\n") {
                let (name, value) = line.split_once(": ").unwrap();
                from_text.append(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            assert_eq!(from_text, inserted, "trusted: {trusted}");
            assert_eq!(inserted["x-forwarded-for"], "203.0.113.9, ::1");
            assert_eq!(inserted["x-real-ip"], "192.0.2.1");
            assert_eq!(inserted["x-sluice-client"], "billing");
            assert_eq!(inserted["x-request-id"], "r-1");
            assert_eq!(inserted["x-forwarded-host"], "api.example");
        }
    }

    #[test]
    fn what_the_client_sent_of_the_fields_sluice_sets_goes() {
        let mut h = map(&[
            ("x-real-ip", "6.6.6.6"),
            ("x-sluice-client", "admin"),
            ("x-request-id", "mine"),
            ("x-forwarded-host", "evil"),
            ("x-kept", "1"),
        ]);
        let peer = "10.1.2.3".parse().unwrap();
        let added = set_forwarded(&mut h, hop(peer, false, peer, false));
        assert_eq!(h, map(&[("x-kept", "1")]), "left in the request's map");
        let mut written = Vec::new();
        added.write(&mut written);
        assert_eq!(
            String::from_utf8(written).unwrap(),
            "x-real-ip: 10.1.2.3\r\nx-forwarded-for: 10.1.2.3\r\n\
             x-forwarded-proto: http\r\nx-request-id: r-1\r\n",
            "no Host, so no X-Forwarded-Host; no key, so no X-Sluice-Client"
        );
    }

    #[test]
    fn forwarded_for_appends_the_peer() {
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("host", "api.example"),
            ("x-forwarded-proto", "https"),
        ]);
        let peer = "10.1.2.3".parse().unwrap();
        forward(&mut h, peer, false, peer, false);
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 10.1.2.3");
        assert_eq!(
            h["x-forwarded-proto"], "http",
            "an untrusted peer's proto is replaced"
        );
        assert_eq!(h["x-forwarded-host"], "api.example");
    }

    #[test]
    fn forwarded_for_keeps_every_line() {
        let mut h = map(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-for", " "),
            ("x-forwarded-for", "203.0.113.9, 192.0.2.7"),
        ]);
        let peer = "10.1.2.3".parse().unwrap();
        forward(&mut h, peer, false, peer, false);
        let all: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
        assert_eq!(all, ["198.51.100.1, 203.0.113.9, 192.0.2.7, 10.1.2.3"]);
    }

    #[test]
    fn underscore_spellings_of_what_sluice_sets_are_removed() {
        let mut h = map(&[
            ("x_sluice_client", "admin"),
            ("x_real_ip", "6.6.6.6"),
            ("x_forwarded_for", "6.6.6.6"),
            ("x_request_id", "kept"),
            ("x-sluice_clients", "kept"),
        ]);
        let peer = "10.1.2.3".parse().unwrap();
        forward(&mut h, peer, false, peer, false);
        assert!(h.get("x_sluice_client").is_none());
        assert!(h.get("x_real_ip").is_none());
        assert!(h.get("x_forwarded_for").is_none());
        assert_eq!(h["x_request_id"], "kept");
        assert_eq!(h["x-sluice_clients"], "kept");
        assert_eq!(h["x-real-ip"], "10.1.2.3");
    }

    #[test]
    fn a_trusted_peer_keeps_its_proto_and_host() {
        let mut h = map(&[
            ("host", "inner"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "outer"),
        ]);
        forward(
            &mut h,
            "::1".parse().unwrap(),
            true,
            "192.0.2.1".parse().unwrap(),
            false,
        );
        assert_eq!(h["x-real-ip"], "192.0.2.1");
        assert_eq!(h["x-forwarded-for"], "::1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "outer");
    }

    #[test]
    fn claims_of_who_the_client_is_go_unless_a_trusted_peer_made_them() {
        let claims = [
            ("forwarded", "for=6.6.6.6;proto=https"),
            ("true-client-ip", "6.6.6.6"),
            ("x-kept", "1"),
        ];
        let peer = "10.1.2.3".parse().unwrap();
        let mut h = map(&claims);
        forward(&mut h, peer, false, peer, false);
        assert!(h.get("forwarded").is_none());
        assert!(h.get("true-client-ip").is_none());
        assert_eq!(h["x-kept"], "1");
        let mut h = map(&claims);
        forward(&mut h, peer, true, "192.0.2.1".parse().unwrap(), false);
        assert_eq!(h["forwarded"], "for=6.6.6.6;proto=https");
        assert_eq!(h["true-client-ip"], "6.6.6.6");
    }
}
