//! Request heads: the meter that frames and measures a head as it arrives
//! (`server::head::Meter`), the strict check of its framing fields (`framing`), and the
//! sniffing of HTTP/2 by its preface (`Preface`).
//!
//! The input: two bytes for the limit, two pairs for where the bytes are cut into reads,
//! then the bytes a client sends. The meter is fed them in one read, in two, in three, and
//! one byte at a time; its verdict, in positions of the whole stream, must not depend on the
//! cuts, and must be what httparse (the parser hyper uses) says of the whole stream. The
//! framing rules are checked against the fields httparse finds in the head.

#![no_main]

use httparse::Status;
use libfuzzer_sys::fuzz_target;
use sluice::problem::Malformed;
use sluice::server::head::{Meter, Preface, Protocol, Verdict, framing};

/// hyper's limit on fields, which the meter applies too.
const MAX_FIELDS: usize = 100;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

fuzz_target!(|data: &[u8]| {
    if data.len() < 6 {
        return;
    }
    let (control, stream) = data.split_at(6);
    let word = |i: usize| usize::from(u16::from_le_bytes([control[i], control[i + 1]]));
    // Limits from 0 up: small ones reach `TooLarge` often.
    let max = word(0) % 4096;
    let mut cuts = [word(2) % (stream.len() + 1), word(4) % (stream.len() + 1)];
    cuts.sort_unstable();

    let whole = reference(stream, max);
    let byte_by_byte: Vec<usize> = (1..stream.len()).collect();
    let outcomes = [
        measure(stream, max, &[]),
        measure(stream, max, &cuts[..1]),
        measure(stream, max, &cuts),
        measure(stream, max, &byte_by_byte),
    ];
    for (i, outcome) in outcomes.iter().enumerate() {
        check(stream, max, whole, *outcome);
        for other in &outcomes[i + 1..] {
            assert!(
                agree(*outcome, *other, whole),
                "the cuts changed the verdict: {outcome:?} and {other:?} (max {max}, cuts {cuts:?})"
            );
        }
    }
    sniff(stream, max, &cuts);
    check_framing(stream);
});

/// What feeding a stream in some reads came to, in positions of the whole stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Every read said `More`.
    Pending,
    /// `Fits` on the first read, this long: left for hyper to parse.
    Unmeasured(usize),
    /// The head ends this far into the stream.
    Ends(usize),
    /// Refused by the meter itself, whatever the cuts: too large, invalid, or framing.
    Refused(Verdict),
}

/// Feeds `stream`, cut at `cuts` (ascending) into reads, to a new meter of limit `max`.
fn measure(stream: &[u8], max: usize, cuts: &[usize]) -> Outcome {
    let mut meter = Meter::new(max);
    let mut fed = 0;
    for end in cuts.iter().copied().chain([stream.len()]) {
        if end == fed {
            continue; // a cut where the last was: no read is empty
        }
        let before = fed;
        fed = end;
        if let Some(outcome) = outcome(meter.feed(&stream[before..end]), before, end - before, max)
        {
            return outcome;
        }
        assert_eq!(
            meter.seen(),
            fed,
            "the meter holds every byte of the head so far"
        );
        assert!(fed <= max, "more than the limit, still measuring");
    }
    Outcome::Pending
}

/// The one place a verdict is read: what it says of a read of `len` bytes that came after
/// `before` bytes of the head, in positions of the whole stream; `None` while it goes on.
fn outcome(verdict: Verdict, before: usize, len: usize, max: usize) -> Option<Outcome> {
    match verdict {
        Verdict::More => None,
        Verdict::Fits => {
            assert_eq!(before, 0, "`Fits` only for the head's first read");
            assert!(len <= max, "`Fits` a read over the limit");
            Some(Outcome::Unmeasured(len))
        }
        Verdict::Complete(n) => {
            assert!(
                (1..=len).contains(&n),
                "`Complete({n})` of a read of {len} bytes"
            );
            Some(Outcome::Ends(before + n))
        }
        // A new verdict that refuses a head goes here, and needs nothing else.
        v @ (Verdict::TooLarge | Verdict::Invalid | Verdict::Refused(_)) => {
            Some(Outcome::Refused(v))
        }
    }
}

/// What httparse says of bytes from the start of a head, as the meter should.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parse {
    Ends(usize),
    Partial,
    /// Past the limit, and not ended.
    TooLarge,
    /// More than 100 fields within the limit: too large too, once the meter parses them.
    TooManyFields,
    Invalid,
}

/// httparse on the first `max` bytes of `stream`, with hyper's limit on fields.
fn reference(stream: &[u8], max: usize) -> Parse {
    let within = &stream[..stream.len().min(max)];
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    match httparse::Request::new(&mut fields).parse(within) {
        Ok(Status::Complete(n)) => Parse::Ends(n),
        Ok(Status::Partial) if stream.len() > max => Parse::TooLarge,
        Ok(Status::Partial) => Parse::Partial,
        Err(httparse::Error::TooManyHeaders) => Parse::TooManyFields,
        Err(_) => Parse::Invalid,
    }
}

/// The outcome of one way of cutting the stream against httparse on the whole of it.
fn check(stream: &[u8], max: usize, whole: Parse, outcome: Outcome) {
    match outcome {
        // Nothing judged yet: the head has not ended within the limit. One with too many
        // fields, or invalid, may go unjudged until its end may have come.
        Outcome::Pending => assert!(
            matches!(
                whole,
                Parse::Partial | Parse::TooManyFields | Parse::Invalid
            ),
            "no verdict, but httparse says {whole:?}"
        ),
        // Left unparsed: the first read must end a head (or be one hyper refuses).
        Outcome::Unmeasured(len) => {
            let first = reference(&stream[..len], max);
            assert!(
                first != Parse::Partial,
                "`Fits` for {len} bytes that do not end a head"
            );
            if let Parse::Ends(n) = whole {
                assert_eq!(fields_say(&stream[..n]), Ok(()), "framing passed, wrongly");
            }
        }
        Outcome::Ends(n) => {
            assert_eq!(whole, Parse::Ends(n), "the head ends at {n}");
            assert_eq!(fields_say(&stream[..n]), Ok(()), "framing passed, wrongly");
        }
        Outcome::Refused(Verdict::TooLarge) => assert!(
            matches!(whole, Parse::TooLarge | Parse::TooManyFields),
            "`TooLarge`, but httparse says {whole:?}"
        ),
        Outcome::Refused(Verdict::Invalid) => {
            assert_eq!(whole, Parse::Invalid, "`Invalid`")
        }
        // Framing is checked once a head has ended: one httparse takes (then the rule is the
        // one its fields break), or a first read that ends a head hyper would refuse anyway.
        Outcome::Refused(Verdict::Refused(rule)) => match whole {
            Parse::Ends(n) => assert_eq!(fields_say(&stream[..n]), Err(rule), "framing"),
            Parse::Invalid | Parse::TooManyFields => {}
            _ => panic!("{rule:?} for a head httparse says is {whole:?}"),
        },
        Outcome::Refused(_) => {}
    }
}

/// Whether two ways of cutting the same stream, which httparse says `whole` of, came to the
/// same.
fn agree(a: Outcome, b: Outcome, whole: Parse) -> bool {
    match (a, b) {
        // hyper judges what the meter left unparsed.
        (Outcome::Unmeasured(_), _) | (_, Outcome::Unmeasured(_)) => true,
        // A first read that ends a head is checked for framing before hyper parses it: a head
        // both invalid (or of too many fields) and badly framed may be refused for either.
        (Outcome::Refused(Verdict::Refused(_)), Outcome::Refused(_) | Outcome::Pending)
        | (Outcome::Refused(_) | Outcome::Pending, Outcome::Refused(Verdict::Refused(_)))
            if matches!(whole, Parse::Invalid | Parse::TooManyFields) =>
        {
            true
        }
        // An invalid head, or one of too many fields, may go unjudged until its end may
        // have come.
        (Outcome::Pending, Outcome::Refused(v)) | (Outcome::Refused(v), Outcome::Pending) => {
            v == Verdict::Invalid || (v == Verdict::TooLarge && whole == Parse::TooManyFields)
        }
        _ => a == b,
    }
}

/// The preface: HTTP/2 exactly when the stream begins with it, whatever the cuts; on
/// HTTP/1.1, the bytes held back are the head's start, and a meter given them first (as a
/// connection does) measures the head as one given the stream whole.
fn sniff(stream: &[u8], max: usize, cuts: &[usize]) {
    let expected = if stream.starts_with(H2_PREFACE) {
        Protocol::Http2
    } else if H2_PREFACE.starts_with(stream) {
        Protocol::Unknown
    } else {
        Protocol::Http1
    };
    let mut preface = Preface::default();
    let mut fed = 0;
    let mut decided_at = None;
    for end in cuts.iter().copied().chain([stream.len()]) {
        if end == fed {
            continue;
        }
        let got = preface.sniff(&stream[fed..end]);
        assert_eq!(got, preface.protocol());
        if got == Protocol::Unknown {
            assert!(H2_PREFACE.starts_with(&stream[..end]));
        } else if decided_at.is_none() {
            decided_at = Some(fed);
        }
        fed = end;
    }
    assert_eq!(preface.protocol(), expected, "the protocol of {stream:?}");
    let Some(at) = decided_at.filter(|_| expected == Protocol::Http1) else {
        assert_eq!(preface.take_matched(), b"");
        return;
    };
    // The bytes before the read that decided were held back: they start the head.
    let matched = preface.take_matched();
    assert_eq!(matched, &stream[..at]);
    assert_eq!(preface.take_matched(), b"", "given once");
    // As the connection does: the held-back bytes first, their verdict set aside. It relies
    // on the limit being far above them: the config's least is 256.
    if matched.is_empty() || max < 256 {
        return;
    }
    let mut meter = Meter::new(max);
    if outcome(meter.feed(matched), 0, matched.len(), max).is_some() {
        // `PRI * HTTP/2` is no HTTP/1.1 request line: hyper refuses the head.
        assert_eq!(reference(stream, max), Parse::Invalid, "{matched:?} judged");
        return;
    }
    let rest = &stream[at..];
    let composed = outcome(meter.feed(rest), at, rest.len(), max).unwrap_or(Outcome::Pending);
    check(stream, max, reference(stream, max), composed);
}

/// `framing` on any bytes: where httparse takes a head from their start, its verdict is the
/// one the head's fields, as httparse found them, call for.
fn check_framing(stream: &[u8]) {
    let got = framing(stream);
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    if let Ok(Status::Complete(n)) = httparse::Request::new(&mut fields).parse(stream) {
        assert_eq!(
            got,
            fields_say(&stream[..n]),
            "framing of {:?}",
            &stream[..n]
        );
    }
}

/// The framing rules, applied to the fields httparse parses from `head` (a whole head): at
/// most one `Content-Length`, or one `Transfer-Encoding` of exactly `chunked` (spaces around
/// it, not tabs), never both. The value is read from the line as it came, as httparse trims
/// tabs too.
fn fields_say(head: &[u8]) -> Result<(), Malformed> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut request = httparse::Request::new(&mut fields);
    let Ok(Status::Complete(_)) = request.parse(head) else {
        panic!("not a head httparse takes: {head:?}");
    };
    let (mut lengths, mut codings, mut chunked) = (0, 0, true);
    for field in request.headers.iter() {
        if field.name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
        } else if field.name.eq_ignore_ascii_case("transfer-encoding") {
            codings += 1;
            // From the colon, which follows the name, to the end of the line.
            let from = field.name.as_ptr() as usize - head.as_ptr() as usize + field.name.len() + 1;
            let line = &head[from..];
            let line = &line[..line.iter().position(|&b| b == b'\n').unwrap_or(line.len())];
            let value = line.strip_suffix(b"\r").unwrap_or(line);
            let value = trim_matches(value, b' ');
            chunked &= value.eq_ignore_ascii_case(b"chunked");
        }
    }
    if lengths > 0 && codings > 0 {
        Err(Malformed::LengthAndCoding)
    } else if lengths > 1 {
        Err(Malformed::RepeatedLength)
    } else if codings > 1 || (codings == 1 && !chunked) {
        Err(Malformed::Coding)
    } else {
        Ok(())
    }
}

fn trim_matches(mut bytes: &[u8], byte: u8) -> &[u8] {
    while let [first, rest @ ..] = bytes
        && *first == byte
    {
        bytes = rest;
    }
    while let [rest @ .., last] = bytes
        && *last == byte
    {
        bytes = rest;
    }
    bytes
}
