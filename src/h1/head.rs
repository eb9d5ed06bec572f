//! A request's head written out, and an answer's head parsed (RFC 9112): pure, over buffers.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, DATE, SERVER, TRANSFER_ENCODING};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, StatusCode, Version};

use super::Framing;

/// The most fields an answer's head may have, as many as hyper takes.
const MAX_HEADERS: usize = 100;

/// The longest answer head taken: past this with no end in sight, the answer is refused.
/// Generous beside nginx's `proxy_buffer_size` (4 or 8 KiB).
pub const MAX_HEAD: usize = 64 * 1024;

/// What follows a request's head on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Out {
    /// Nothing: no body, or one of known length written right after the head.
    Whole,
    /// A streamed body of the `Content-Length` the client gave.
    Length,
    /// A streamed body in chunks.
    Chunked,
}

/// Writes the head of a request for an upstream into `out`: request line, the fields of
/// `req` (already prepared for the hop), those `added` writes, then the framing for its body.
/// `known`: the body's length if it is all at hand (`Some(0)` for none), or `None` for one
/// that streams.
pub fn write_request<B>(
    out: &mut Vec<u8>,
    req: &Request<B>,
    added: impl FnOnce(&mut Vec<u8>),
    known: Option<usize>,
) -> Out {
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let (mut length, mut chunked) = (false, false);
    for (name, value) in req.headers() {
        if *name == CONTENT_LENGTH {
            length = true;
            if known.is_some() {
                continue; // written below, for the body as it is
            }
        } else if *name == TRANSFER_ENCODING {
            chunked = true;
            if known.is_some() {
                continue;
            }
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    added(out);
    let framing = match known {
        // A bodiless request says nothing of a body, unless its client did.
        Some(0) if !length => Out::Whole,
        Some(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
            Out::Whole
        }
        None if chunked => Out::Chunked,
        None if length => Out::Length,
        None => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Out::Chunked
        }
    };
    out.extend_from_slice(b"\r\n");
    framing
}

/// An answer's head, parsed.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    /// How its body is framed.
    pub framing: Framing,
    /// Whether the connection may carry another request once the body has ended.
    pub keep_alive: bool,
}

/// An answer that is not HTTP/1.x, is too large, or whose body's end cannot be known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bad;

/// Takes an answer's head off the front of `buf`, passing over informational (1xx) answers
/// other than 101; `None` while it is not whole yet. `head`: whether the request was `HEAD`,
/// whose answer has no body whatever its head says. The answer's fields go into `map`,
/// emptied first and then taken: the request's own map, whose room then serves the answer and
/// the headers sluice adds to it, rather than a new map grown twice.
pub fn take_answer(
    buf: &mut BytesMut,
    head: bool,
    map: &mut HeaderMap,
) -> Result<Option<Answer>, Bad> {
    loop {
        let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut res,
            buf,
            &mut fields,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Ok(None),
            _ => return Err(Bad),
        };
        let code = res.code.unwrap_or_default();
        if (100..200).contains(&code) && code != 101 {
            let _ = buf.split_to(len); // 103 Early Hints and the like: the answer follows
            continue;
        }
        let status = StatusCode::from_u16(code).map_err(|_| Bad)?;
        let version = match res.version {
            Some(1) => Version::HTTP_11,
            _ => Version::HTTP_10,
        };
        // The fields as places in the head, so that their values can share its bytes once it
        // is split off the buffer, rather than be copied.
        let base = buf.as_ptr() as usize;
        let at = |s: &[u8]| {
            if s.is_empty() {
                0
            } else {
                s.as_ptr() as usize - base
            }
        };
        let mut places = [(0u16, 0u16, 0u16, 0u16); MAX_HEADERS];
        let mut seen = Seen::default();
        let count = res.headers.len();
        for (place, field) in places.iter_mut().zip(res.headers.iter()) {
            seen.field(field.name.as_bytes(), field.value);
            // Within MAX_HEAD, so each fits in 16 bits.
            *place = (
                at(field.name.as_bytes()) as u16,
                field.name.len() as u16,
                at(field.value) as u16,
                field.value.len() as u16,
            );
        }
        let framing = seen.framing(status, head)?;
        // After a 101 the connection speaks another protocol, if any.
        let keep_alive = framing != Framing::Close && code != 101 && seen.keeps_alive(version);
        let bytes = buf.split_to(len).freeze();
        let mut headers = std::mem::take(map);
        headers.clear();
        headers.reserve(count);
        for &(name, name_len, value, value_len) in &places[..count] {
            let (name, value) = (usize::from(name), usize::from(value));
            let name = &bytes[name..name + usize::from(name_len)];
            if seen.spent(name) {
                continue;
            }
            let name = field_name(name)?;
            let value = bytes.slice(value..value + usize::from(value_len));
            let value = HeaderValue::from_maybe_shared(value).map_err(|_| Bad)?;
            headers.append(name, value);
        }
        return Ok(Some(Answer {
            status,
            version,
            headers,
            framing,
            keep_alive,
        }));
    }
}

/// What an answer's fields say of its body's framing and of its connection, gathered as
/// they are parsed: by their bytes, with no lookup in the map they go into.
#[derive(Debug)]
struct Seen {
    /// A `Transfer-Encoding` came; whether its last coding is `chunked`.
    coded: Option<bool>,
    /// The `Content-Length`, if any; `Err` if it was not one length.
    length: Result<Option<u64>, Bad>,
    close: bool,
    keep_alive: bool,
    /// `Connection` names other fields, which the hop's rules remove (`strip_hop_by_hop`).
    names_fields: bool,
}

impl Default for Seen {
    fn default() -> Seen {
        Seen {
            coded: None,
            length: Ok(None),
            close: false,
            keep_alive: false,
            names_fields: false,
        }
    }
}

impl Seen {
    fn field(&mut self, name: &[u8], value: &[u8]) {
        if is_named(name, b"content-length") {
            // A list of equal lengths is one length (RFC 9110 §8.6); unequal ones, no length.
            for n in value.split(|b| *b == b',') {
                self.length = match (self.length, decimal(n.trim_ascii())) {
                    (Ok(None), Some(n)) => Ok(Some(n)),
                    (Ok(Some(l)), Some(n)) if l == n => Ok(Some(n)),
                    _ => Err(Bad),
                };
            }
        } else if is_named(name, b"transfer-encoding") {
            let last = value.rsplit(|b| *b == b',').map(<[u8]>::trim_ascii);
            let last = last.into_iter().find(|t| !t.is_empty());
            self.coded = Some(last.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")));
        } else if is_named(name, b"connection") {
            for token in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                let close = token.eq_ignore_ascii_case(b"close");
                let keep_alive = token.eq_ignore_ascii_case(b"keep-alive");
                self.close |= close;
                self.keep_alive |= keep_alive;
                self.names_fields |= !(close || keep_alive || token.is_empty());
            }
        }
    }

    /// How the body of an answer with this status is framed (RFC 9112 §6.3). `head`: whether
    /// the request was `HEAD`.
    fn framing(&self, status: StatusCode, head: bool) -> Result<Framing, Bad> {
        let bodiless = [StatusCode::NO_CONTENT, StatusCode::NOT_MODIFIED];
        if head || status.is_informational() || bodiless.contains(&status) {
            return Ok(Framing::Done);
        }
        // A coding other than chunked last leaves the body to end at the close.
        match self.coded {
            Some(true) => Ok(Framing::chunked()),
            Some(false) => Ok(Framing::Close),
            None => Ok(self.length?.map_or(Framing::Close, Framing::length)),
        }
    }

    /// Whether the field `name` has said all it had to once read here: `Connection` (unless it
    /// names other fields) and `Keep-Alive` describe this hop only, and would be removed from
    /// the client's answer at once.
    fn spent(&self, name: &[u8]) -> bool {
        is_named(name, b"keep-alive") || (!self.names_fields && is_named(name, b"connection"))
    }

    /// Whether the connection stays open after an answer of `version`.
    fn keeps_alive(&self, version: Version) -> bool {
        !self.close && (version == Version::HTTP_11 || self.keep_alive)
    }
}

/// The fields nearly every answer has, matched by their bytes before the general lookup
/// (which lowercases a name and searches every standard one).
const COMMON: [(&[u8], HeaderName); 4] = [
    (b"content-type", CONTENT_TYPE),
    (b"content-length", CONTENT_LENGTH),
    (b"date", DATE),
    (b"server", SERVER),
];

fn field_name(name: &[u8]) -> Result<HeaderName, Bad> {
    for (bytes, common) in &COMMON {
        if is_named(name, bytes) {
            return Ok(common.clone());
        }
    }
    HeaderName::from_bytes(name).map_err(|_| Bad)
}

/// Whether the field name `name` is `lower` (lower-case letters and `-`) in any case.
/// Setting a byte's 0x20 bit lowercases a letter and makes no other character that httparse
/// lets into a name a letter or `-`, so one pass with no branch per byte does what
/// `eq_ignore_ascii_case` does by lowercasing both sides byte by byte (a few hundred
/// instructions per answer, over its fields).
fn is_named(name: &[u8], lower: &[u8]) -> bool {
    name.len() == lower.len()
        && name
            .iter()
            .zip(lower)
            .fold(0, |diff, (a, b)| diff | ((a | 0x20) ^ b))
            == 0
}

/// Digits only, as `Content-Length` takes them: no sign, no space, no overflow.
fn decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut req = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.body(()).unwrap()
    }

    fn written(parts: &Request<()>, known: Option<usize>) -> (String, Out) {
        let mut out = Vec::new();
        let framing = write_request(&mut out, parts, |_| {}, known);
        (String::from_utf8(out).unwrap(), framing)
    }

    #[test]
    fn a_get_goes_out_as_its_fields_say() {
        let p = parts("GET", "/v1/items?page=2", &[("host", "api"), ("x-id", "7")]);
        let (head, out) = written(&p, Some(0));
        assert_eq!(
            head,
            "GET /v1/items?page=2 HTTP/1.1\r\nhost: api\r\nx-id: 7\r\n\r\n"
        );
        assert_eq!(out, Out::Whole);
    }

    #[test]
    fn a_body_at_hand_carries_its_own_length_whatever_the_fields_said() {
        let p = parts("POST", "/", &[("content-length", "99"), ("host", "a")]);
        let (head, _) = written(&p, Some(7));
        assert_eq!(
            head,
            "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 7\r\n\r\n"
        );
        let p = parts("POST", "/", &[("content-length", "0")]);
        assert_eq!(
            written(&p, Some(0)).0,
            "POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n"
        );
    }

    #[test]
    fn a_streamed_body_keeps_its_length_or_goes_in_chunks() {
        let p = parts("PUT", "/", &[("content-length", "5")]);
        assert_eq!(written(&p, None).1, Out::Length);
        let p = parts("PUT", "/", &[("transfer-encoding", "chunked")]);
        assert_eq!(written(&p, None).1, Out::Chunked);
        let (head, out) = written(&parts("PUT", "/", &[]), None);
        assert_eq!(head, "PUT / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n");
        assert_eq!(out, Out::Chunked);
    }

    fn take(text: &str, head: bool) -> Result<Option<Answer>, Bad> {
        take_answer(&mut BytesMut::from(text), head, &mut HeaderMap::new())
    }

    #[test]
    fn an_answer_head_is_parsed_once_its_end_has_come() {
        let mut buf = BytesMut::from("HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-A: b\r\n");
        let mut fields = HeaderMap::new();
        assert!(take_answer(&mut buf, false, &mut fields).unwrap().is_none());
        buf.extend_from_slice(b"\r\n{}");
        let answer = take_answer(&mut buf, false, &mut fields).unwrap().unwrap();
        assert_eq!(answer.status, 201);
        assert_eq!(answer.headers["x-a"], "b");
        assert_eq!(answer.framing, Framing::length(2));
        assert!(answer.keep_alive);
        assert_eq!(&buf[..], b"{}", "the body stays in the buffer");
    }

    #[test]
    fn informational_answers_are_passed_over_but_101() {
        let text = "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        let answer = take(text, false).unwrap().unwrap();
        assert_eq!(answer.status, 204);
        assert!(!answer.headers.contains_key("link"));
        let answer = take("HTTP/1.1 101 Switching\r\nUpgrade: x\r\n\r\n", false);
        let answer = answer.unwrap().unwrap();
        assert_eq!(answer.status, 101);
        assert!(!answer.keep_alive, "the connection is no longer HTTP/1.1");
    }

    #[test]
    fn the_body_s_framing_follows_rfc_9112() {
        let framing = |text: &str, head| take(text, head).map(|a| a.unwrap().framing);
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert_eq!(framing(chunked, false), Ok(Framing::chunked()));
        let to_close = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n";
        assert_eq!(framing(to_close, false), Ok(Framing::Close));
        let both = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(framing(both, false), Ok(Framing::chunked()));
        let listed = "HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(framing(listed, false), Ok(Framing::length(3)));
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true),
            Ok(Framing::Done)
        );
        assert_eq!(
            framing(
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\n\r\n",
                false
            ),
            Ok(Framing::Done)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\n\r\n", false),
            Ok(Framing::Close)
        );
        for bad in ["3, 4", "+3", "-1", "", "0x3", "99999999999999999999"] {
            let text = format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\n");
            assert_eq!(framing(&text, false), Err(Bad), "{bad:?}");
        }
    }

    #[test]
    fn the_connection_stays_open_as_version_and_connection_say() {
        let kept = |text: &str| take(text, false).unwrap().unwrap().keep_alive;
        assert!(kept("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(!kept(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!kept("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(kept(
            "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(
            !kept("HTTP/1.1 200 OK\r\n\r\n"),
            "a body to the close ends the connection"
        );
    }

    #[test]
    fn fields_of_this_hop_alone_are_left_out_but_a_connection_that_names_others() {
        let text = "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
                    Content-Type: application/json\r\nx-A: 1\r\nContent-Length: 0\r\n\r\n";
        let answer = take(text, false).unwrap().unwrap();
        let names: Vec<&str> = answer.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["content-type", "x-a", "content-length"]);
        let text = "HTTP/1.1 200 OK\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\n\r\n";
        let answer = take(text, false).unwrap().unwrap();
        assert_eq!(answer.headers["connection"], "close, X-Secret");
        assert!(!answer.keep_alive);
    }

    #[test]
    fn garbage_and_heads_too_large_are_bad() {
        assert_eq!(take("SSH-2.0-OpenSSH\r\n\r\n", false).unwrap_err(), Bad);
        assert_eq!(
            take("HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", false).unwrap_err(),
            Bad
        );
        let long = format!("HTTP/1.1 200 OK\r\nX-Filler: {}", "a".repeat(MAX_HEAD));
        assert_eq!(take(&long, false).unwrap_err(), Bad, "no end in sight");
        assert_eq!(
            take(&format!("{long}\r\n\r\n"), false).unwrap_err(),
            Bad,
            "an end too far"
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: 1\r\n")).collect();
        let text = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert_eq!(take(&text, false).unwrap_err(), Bad);
    }

    #[test]
    fn a_name_matches_in_any_case_and_only_itself() {
        assert!(is_named(b"Content-Length", b"content-length"));
        assert!(is_named(b"CONNECTION", b"connection"));
        assert!(!is_named(b"Content-Lengths", b"content-length"));
        assert!(!is_named(b"Content_Length", b"content-length"));
        assert!(!is_named(b"Keep-Alivf", b"keep-alive"));
        // Every character httparse lets into a name (RFC 9110's tchar) against every one the
        // names looked for are made of: the 0x20 bit says what eq_ignore_ascii_case says.
        let tchar =
            (0u8..=127).filter(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(c));
        for c in tchar {
            for lower in (b'a'..=b'z').chain([b'-']) {
                assert_eq!(
                    is_named(&[c], &[lower]),
                    c.eq_ignore_ascii_case(&lower),
                    "{c}"
                );
            }
        }
    }
}
