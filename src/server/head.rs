//! The bytes of a client connection between requests, as they arrive: whether they open
//! HTTP/2, and where each HTTP/1.1 request head ends, within `max_header_bytes` and valid or
//! not. Heads are framed by `httparse`, the parser hyper uses, so both agree on where one ends.
//! Its framing fields are read strictly, from the bytes as they came: hyper resolves
//! `Content-Length` with `Transfer-Encoding`, or two `Content-Length`s, by a rule of its own
//! and then drops a line; sluice refuses such a head, as nginx does.

use std::mem::MaybeUninit;

use httparse::Status;

use crate::problem::Malformed;

/// The most fields a head may have: hyper's own limit, which it answers with a 431.
const MAX_FIELDS: usize = 100;

/// Enough of the HTTP/2 connection preface (RFC 9113 §3.4) to tell the protocols apart.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// What the bytes of a head so far say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The head goes on past these bytes.
    More,
    /// The head ended in the bytes just fed, this many of which were its own.
    Complete(usize),
    /// The bytes just fed, the first of the head, end a head and are all within the limit:
    /// the head ends in them (or is invalid), and nothing in them is too large. Left unparsed,
    /// as hyper parses them next: nearly every read on a kept-alive connection is one of these.
    Fits,
    /// The head is longer than the limit, or has more than 100 fields.
    TooLarge,
    /// The bytes are not the start of a valid HTTP/1.1 head.
    Invalid,
    /// The head ended, but its framing fields break a rule (see [`framing`]).
    Refused(Malformed),
}

/// Measures one request head, fed in reads of any size. A read that holds a whole head and
/// ends with it, as nearly all do, needs no parse; another first read is parsed where it lies.
/// A head split across reads is gathered, and parsed again only once its end may have come (or
/// the limit is reached): so at most twice in all.
#[derive(Debug)]
pub struct Meter {
    max: usize,
    /// The head so far, once it has taken more than one read; never more than `max` bytes.
    gathered: Vec<u8>,
    #[cfg(test)]
    parses: usize,
}

impl Meter {
    pub fn new(max: usize) -> Meter {
        Meter {
            max,
            gathered: Vec::new(),
            #[cfg(test)]
            parses: 0,
        }
    }

    /// Bytes of the head fed so far.
    pub fn seen(&self) -> usize {
        self.gathered.len()
    }

    /// Takes the next bytes read. Once the verdict is other than `More`, the head is judged:
    /// feed a new meter the next head.
    pub fn feed(&mut self, new: &[u8]) -> Verdict {
        let before = self.gathered.len();
        // A head within the limit ends within it: no byte past the limit is needed to judge it.
        let taken = new.len().min(self.max - before);
        let over = taken < new.len();
        if before == 0 {
            if !over && ends_head(new) {
                return checked(Verdict::Fits, new);
            }
            self.count_parse();
            let verdict = judge(&new[..taken], over, 0);
            if verdict == Verdict::More {
                self.gathered.extend_from_slice(new);
            }
            return checked(verdict, new);
        }
        self.gathered.extend_from_slice(&new[..taken]);
        if !over && !may_end(&self.gathered, before) {
            return Verdict::More;
        }
        self.count_parse();
        checked(judge(&self.gathered, over, before), &self.gathered)
    }

    fn count_parse(&mut self) {
        #[cfg(test)]
        {
            self.parses += 1;
        }
    }
}

/// Parses `bytes`, a head from its start, of which the first `before` were fed earlier;
/// `over` when more bytes came than the limit lets in. Kept out of line: its fields take 3 KiB
/// of stack, which a read that needs no parse should not set aside.
#[inline(never)]
fn judge(bytes: &[u8], over: bool, before: usize) -> Verdict {
    // Left uninitialized, as hyper does: httparse writes each field before reading it.
    let mut fields = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_FIELDS];
    let mut request = httparse::Request::new(&mut []);
    match request.parse_with_uninit_headers(bytes, &mut fields) {
        Ok(Status::Complete(n)) => Verdict::Complete(n.saturating_sub(before)),
        Ok(Status::Partial) if over => Verdict::TooLarge,
        Ok(Status::Partial) => Verdict::More,
        Err(httparse::Error::TooManyHeaders) => Verdict::TooLarge,
        Err(_) => Verdict::Invalid,
    }
}

/// `verdict`, unless it says the head at the start of `bytes` ended and its framing is refused.
fn checked(verdict: Verdict, bytes: &[u8]) -> Verdict {
    match verdict {
        Verdict::Fits | Verdict::Complete(_) => match framing(bytes) {
            Ok(()) => verdict,
            Err(rule) => Verdict::Refused(rule),
        },
        _ => verdict,
    }
}

/// Checks the framing fields of the head at the start of `bytes` (which may go on past it):
/// at most one `Content-Length`, or one `Transfer-Encoding` that says `chunked` and nothing
/// else, but not both (RFC 9112 §6.3 lets a server choose; a proxy that chooses may choose
/// otherwise than the server behind it). Spaces around the value are allowed; a tab is not, as
/// nginx allows none: `Transfer-Encoding:\tchunked` is read as chunked by some, not by others.
/// Names are compared without case; a line that is not a field is left to hyper to refuse.
pub fn framing(bytes: &[u8]) -> Result<(), Malformed> {
    let (mut lengths, mut codings, mut chunked) = (0u32, 0u32, true);
    let mut start = 0;
    let mut request_line = true;
    for end in memchr::memchr_iter(b'\n', bytes) {
        let line = &bytes[start..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        start = end + 1;
        if line.is_empty() {
            if request_line {
                continue; // empty lines before the request line, which httparse skips
            }
            break;
        }
        if std::mem::take(&mut request_line) {
            continue;
        }
        match line[0] | 0x20 {
            b'c' if is_field(line, b"content-length") => lengths += 1,
            b't' if is_field(line, b"transfer-encoding") => {
                codings += 1;
                let value = &line[b"transfer-encoding:".len()..];
                chunked &= trim_spaces(value).eq_ignore_ascii_case(b"chunked");
            }
            _ => {}
        }
    }
    match (lengths, codings) {
        (1.., 1..) => Err(Malformed::LengthAndCoding),
        (2.., _) => Err(Malformed::RepeatedLength),
        (_, 2..) => Err(Malformed::Coding),
        (_, 1) if !chunked => Err(Malformed::Coding),
        _ => Ok(()),
    }
}

/// Whether `line` is the field `name` (lower-case): the name in any case, then a colon.
fn is_field(line: &[u8], name: &[u8]) -> bool {
    line.len() > name.len()
        && line[name.len()] == b':'
        && line[..name.len()].eq_ignore_ascii_case(name)
}

/// `value` without the spaces (but not tabs) around it.
fn trim_spaces(value: &[u8]) -> &[u8] {
    let start = value.iter().position(|&b| b != b' ').unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|&b| b != b' ')
        .map_or(start, |last| last + 1);
    &value[start..end]
}

/// Whether a head may end in `bytes[from..]`: a line that is not empty, then an empty one.
/// httparse takes `\n` for `\r\n`, as hyper does, and skips empty lines before a request line,
/// which therefore end nothing.
fn may_end(bytes: &[u8], from: usize) -> bool {
    (from..bytes.len()).any(|i| bytes[i] == b'\n' && ends_head(&bytes[..=i]))
}

/// Whether `bytes` end with a line that is not empty and then an empty line.
fn ends_head(bytes: &[u8]) -> bool {
    // The usual end first, in one comparison.
    if let [.., last, b'\r', b'\n', b'\r', b'\n'] = bytes {
        return *last != b'\n';
    }
    let line = match bytes {
        [line @ .., b'\n', b'\r', b'\n'] | [line @ .., b'\n', b'\n'] => line,
        _ => return false,
    };
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    line.last().is_some_and(|&b| b != b'\n')
}

/// A connection's protocol, as its first bytes tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// Too few bytes yet: all of them begin the HTTP/2 preface.
    #[default]
    Unknown,
    Http1,
    Http2,
}

/// Tells HTTP/2 from HTTP/1.1 by a connection's first bytes, which may come in pieces.
#[derive(Debug, Default)]
pub struct Preface {
    protocol: Protocol,
    /// How many bytes of the preface the reads so far have matched.
    matched: usize,
}

impl Preface {
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Takes the next bytes read.
    pub fn sniff(&mut self, new: &[u8]) -> Protocol {
        if self.protocol != Protocol::Unknown {
            return self.protocol;
        }
        let rest = &H2_PREFACE[self.matched..];
        let n = rest.len().min(new.len());
        if new[..n] != rest[..n] {
            self.protocol = Protocol::Http1;
        } else {
            self.matched += n;
            if self.matched == H2_PREFACE.len() {
                self.protocol = Protocol::Http2;
            }
        }
        self.protocol
    }

    /// On HTTP/1.1, the bytes of earlier reads that matched the preface: the start of the first
    /// head. Given once; empty after that, and nearly always.
    pub fn take_matched(&mut self) -> &'static [u8] {
        if self.protocol != Protocol::Http1 {
            return &[];
        }
        let matched = &H2_PREFACE[..self.matched];
        self.matched = 0;
        matched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n";

    /// Feeds `reads` to a new meter: the verdict on each.
    fn verdicts(max: usize, reads: &[&[u8]]) -> Vec<Verdict> {
        let mut meter = Meter::new(max);
        reads.iter().map(|r| meter.feed(r)).collect()
    }

    fn byte_by_byte(max: usize, bytes: &[u8]) -> (Vec<Verdict>, usize) {
        let mut meter = Meter::new(max);
        let verdicts = bytes.chunks(1).map(|b| meter.feed(b)).collect();
        (verdicts, meter.parses)
    }

    #[test]
    fn a_read_that_ends_a_head_within_the_limit_fits_unparsed() {
        let mut meter = Meter::new(1024);
        assert_eq!(meter.feed(HEAD), Verdict::Fits);
        assert_eq!(meter.parses, 0);
        // Whatever it holds: pipelined heads, or a body that ends as a head would.
        let pipelined = [HEAD, b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"].concat();
        assert_eq!(verdicts(1024, &[&pipelined]), [Verdict::Fits]);
        // Garbage too: hyper parses it next, and refuses it.
        assert_eq!(verdicts(1024, &[b"GARBAGE\r\n\r\n"]), [Verdict::Fits]);
    }

    #[test]
    fn a_head_followed_by_more_in_one_read_is_parsed_for_its_end() {
        let with_body = [HEAD, b"{\"a\":1}"].concat();
        assert_eq!(
            verdicts(1024, &[&with_body]),
            [Verdict::Complete(HEAD.len())]
        );
        let pipelined = [HEAD, b"GET /b HTTP/1.1\r\n"].concat();
        assert_eq!(
            verdicts(1024, &[&pipelined]),
            [Verdict::Complete(HEAD.len())]
        );
        let short = b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n";
        let short_first = [&short[..], HEAD, b"x"].concat();
        let got = verdicts(1024, &[&short_first]);
        assert_eq!(got, [Verdict::Complete(short.len())]);
    }

    #[test]
    fn a_head_split_anywhere_ends_where_it_ends() {
        let bytes = [HEAD, b"next"].concat();
        for at in 1..HEAD.len() {
            let (a, b) = bytes.split_at(at);
            let rest = HEAD.len() - at;
            let got = verdicts(1024, &[a, b]);
            assert_eq!(
                got,
                [Verdict::More, Verdict::Complete(rest)],
                "split at {at}"
            );
        }
    }

    #[test]
    fn a_head_fed_byte_by_byte_is_parsed_at_most_twice() {
        let (got, parses) = byte_by_byte(1024, HEAD);
        assert!(got[..HEAD.len() - 1].iter().all(|v| *v == Verdict::More));
        assert_eq!(got[HEAD.len() - 1], Verdict::Complete(1));
        assert_eq!(parses, 2, "the first byte, then the end");
        // Empty lines before the request line end nothing (httparse skips them).
        let blank = [&b"\r\n\r\n\n\r\n"[..], HEAD].concat();
        let (got, parses) = byte_by_byte(1024, &blank);
        assert_eq!(got.last(), Some(&Verdict::Complete(1)));
        assert_eq!(parses, 2);
    }

    #[test]
    fn bare_line_feeds_end_a_head_as_they_do_for_hyper() {
        let head = b"GET / HTTP/1.1\nHost: x\n\n";
        assert_eq!(verdicts(1024, &[head]), [Verdict::Fits]);
        let with_body = [&head[..], b"body"].concat();
        assert_eq!(
            verdicts(1024, &[&with_body]),
            [Verdict::Complete(head.len())]
        );
        let (got, parses) = byte_by_byte(1024, head);
        assert_eq!(got.last(), Some(&Verdict::Complete(1)));
        assert_eq!(parses, 2);
        let mixed = b"GET / HTTP/1.1\r\nHost: x\n\r\n";
        let split = verdicts(1024, &[&mixed[..20], &mixed[20..]]);
        assert_eq!(split, [Verdict::More, Verdict::Complete(mixed.len() - 20)]);
        assert_eq!(
            byte_by_byte(1024, mixed).0.last(),
            Some(&Verdict::Complete(1))
        );
    }

    #[test]
    fn a_head_of_exactly_the_limit_fits_and_one_byte_more_does_not() {
        let max = HEAD.len();
        assert_eq!(verdicts(max, &[HEAD]), [Verdict::Fits]);
        assert_eq!(verdicts(max - 1, &[HEAD]), [Verdict::TooLarge]);
        // A body in the same read does not count.
        let with_body = [HEAD, &[b'x'; 100]].concat();
        assert_eq!(verdicts(max, &[&with_body]), [Verdict::Complete(max)]);
        // Split, and byte by byte: the verdict comes with the byte past the limit.
        let (a, b) = HEAD.split_at(10);
        assert_eq!(
            verdicts(max, &[a, b]),
            [Verdict::More, Verdict::Complete(b.len())]
        );
        assert_eq!(
            verdicts(max - 1, &[a, b]),
            [Verdict::More, Verdict::TooLarge]
        );
        assert_eq!(
            byte_by_byte(max, HEAD).0.last(),
            Some(&Verdict::Complete(1))
        );
        let (got, _) = byte_by_byte(max - 1, HEAD);
        assert_eq!(got[max - 2], Verdict::More);
        assert_eq!(got[max - 1], Verdict::TooLarge);
    }

    #[test]
    fn each_part_under_the_limit_but_together_over_it_is_too_large() {
        let a = [&b"GET / HTTP/1.1\r\nX-A: "[..], &[b'a'; 60], b"\r\n"].concat();
        let b = [&b"X-B: "[..], &[b'b'; 60], b"\r\n\r\n"].concat();
        assert_eq!(verdicts(100, &[&a, &b]), [Verdict::More, Verdict::TooLarge]);
    }

    #[test]
    fn more_than_100_fields_is_too_large_however_small() {
        let head = |n: usize| {
            let fields: String = (0..n).map(|i| format!("x-{i}: 1\r\n")).collect();
            format!("GET / HTTP/1.1\r\n{fields}\r\n").into_bytes()
        };
        // Followed by more in the same read, so that the read is parsed.
        let hundred = [head(100), b"x".to_vec()].concat();
        let len = hundred.len() - 1;
        assert_eq!(verdicts(4096, &[&hundred]), [Verdict::Complete(len)]);
        let over = [head(101), b"x".to_vec()].concat();
        assert_eq!(verdicts(4096, &[&over]), [Verdict::TooLarge]);
        assert_eq!(
            byte_by_byte(4096, &head(101)).0.last(),
            Some(&Verdict::TooLarge)
        );
    }

    #[test]
    fn garbage_is_invalid_once_a_parse_sees_it() {
        for bad in [
            &b"GARBAGE\r\n\r\n"[..],
            b"G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/7.0\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon in this line\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: 1\r\n\r\n",
        ] {
            let read = [bad, b"x"].concat();
            assert_eq!(verdicts(1024, &[&read]), [Verdict::Invalid], "{bad:?}");
            let (got, _) = byte_by_byte(1024, bad);
            assert_eq!(got.last(), Some(&Verdict::Invalid), "{bad:?}");
        }
        // A first read that does not end a head is parsed at once.
        assert_eq!(verdicts(1024, &[b"\x01"]), [Verdict::Invalid]);
        // Past the limit, garbage is invalid rather than too large; a valid start is too large.
        let garbage = [b'\x01'; 200];
        assert_eq!(
            verdicts(100, &[b"G", &garbage]),
            [Verdict::More, Verdict::Invalid]
        );
        let long = [&b"GET /"[..], &[b'a'; 200]].concat();
        assert_eq!(verdicts(100, &[&long]), [Verdict::TooLarge]);
        assert_eq!(
            verdicts(100, &[&long[..3], &long[3..]]),
            [Verdict::More, Verdict::TooLarge]
        );
    }

    fn post(fields: &str) -> Vec<u8> {
        format!("POST /a HTTP/1.1\r\nHost: x\r\n{fields}\r\n").into_bytes()
    }

    #[test]
    fn ambiguous_framing_is_refused_however_the_head_arrives() {
        for (fields, rule) in [
            (
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                Malformed::LengthAndCoding,
            ),
            (
                "transfer-encoding: chunked\r\ncontent-length: 5\r\n",
                Malformed::LengthAndCoding,
            ),
            (
                "Content-Length: 5\r\nContent-Length: 5\r\n",
                Malformed::RepeatedLength,
            ),
            ("Transfer-Encoding:\tchunked\r\n", Malformed::Coding),
            ("Transfer-Encoding: chunked\t\r\n", Malformed::Coding),
            ("Transfer-Encoding: gzip, chunked\r\n", Malformed::Coding),
            ("Transfer-Encoding: chunked, chunked\r\n", Malformed::Coding),
            ("Transfer-Encoding: xchunked\r\n", Malformed::Coding),
            ("Transfer-Encoding:\r\n", Malformed::Coding),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                Malformed::Coding,
            ),
            (
                "Transfer-Encoding: chunked\nContent-Length: 3\n",
                Malformed::LengthAndCoding,
            ),
        ] {
            let head = post(fields);
            assert_eq!(
                verdicts(1024, &[&head]),
                [Verdict::Refused(rule)],
                "{fields:?}"
            );
            let with_body = [&head[..], b"0\r\n\r\n"].concat();
            assert_eq!(verdicts(1024, &[&with_body]), [Verdict::Refused(rule)]);
            let (a, b) = head.split_at(20);
            assert_eq!(
                verdicts(1024, &[a, b]),
                [Verdict::More, Verdict::Refused(rule)]
            );
            assert_eq!(
                byte_by_byte(1024, &head).0.last(),
                Some(&Verdict::Refused(rule))
            );
        }
    }

    #[test]
    fn plain_framing_passes() {
        for fields in [
            "Content-Length: 5\r\n",
            "Transfer-Encoding: chunked\r\n",
            "transfer-encoding:  CHUNKED  \r\n",
            "Content-Length-Extra: 5\r\nX-Content-Length: 5\r\nContent-Length: 5\r\n",
            "X-Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
            "",
        ] {
            let head = post(fields);
            assert_eq!(verdicts(1024, &[&head]), [Verdict::Fits], "{fields:?}");
        }
        // Only the first head counts: each of two pipelined heads has its own length.
        let two = [post("Content-Length: 0\r\n"), post("Content-Length: 0\r\n")].concat();
        assert_eq!(verdicts(1024, &[&two]), [Verdict::Fits]);
        let body = [
            post("Content-Length: 5\r\n"),
            b"Content-Length: 1\r\n".to_vec(),
        ]
        .concat();
        assert_eq!(
            verdicts(1024, &[&body]),
            [Verdict::Complete(body.len() - 19)]
        );
        // Empty lines before the request line are skipped, not taken for the head's end.
        let blank = [
            b"\r\n".to_vec(),
            post("Content-Length: 1\r\nContent-Length: 1\r\n"),
        ]
        .concat();
        assert_eq!(framing(&blank), Err(Malformed::RepeatedLength));
    }

    #[test]
    fn the_end_of_a_head_is_a_line_then_an_empty_line() {
        assert!(ends_head(b"x\r\n\r\n"));
        assert!(ends_head(b"x\n\n"));
        assert!(ends_head(b"x\n\r\n"));
        assert!(ends_head(b"x\r\n\n"));
        assert!(!ends_head(b"\r\n\r\n"));
        assert!(!ends_head(b"\n\n"));
        assert!(!ends_head(b"x\r\n"));
        assert!(!ends_head(b"\r\n\r\n\r\n"));
        assert!(!ends_head(b"\n\r\n\r\n"));
        assert!(
            ends_head(b"x\r\r\n\r\n"),
            "a bare CR ends a line for httparse to refuse"
        );
        assert!(may_end(b"GET / HTTP/1.1\r\n\r\n", 17));
        assert!(!may_end(b"GET / HTTP/1.1\r\n\r\n", 18));
    }

    #[test]
    fn the_preface_tells_http2_from_http1_in_pieces() {
        let mut p = Preface::default();
        assert_eq!(p.sniff(b"PRI "), Protocol::Unknown);
        assert_eq!(p.sniff(b"* HTTP/2.0\r\n\r\nSM\r\n\r\n"), Protocol::Http2);
        assert_eq!(p.take_matched(), b"");
        let mut p = Preface::default();
        assert_eq!(p.sniff(b"GET / HTTP/1.1\r\n"), Protocol::Http1);
        assert_eq!(p.take_matched(), b"");
        let mut p = Preface::default();
        assert_eq!(p.sniff(b"P"), Protocol::Unknown);
        assert_eq!(p.sniff(b"RI"), Protocol::Unknown);
        assert_eq!(p.sniff(b"OST"), Protocol::Http1);
        assert_eq!(p.take_matched(), b"PRI");
        assert_eq!(p.take_matched(), b"");
        assert_eq!(p.sniff(b"PRI * HTTP/2.0"), Protocol::Http1);
    }
}
