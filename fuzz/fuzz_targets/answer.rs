//! Upstream answers: the head parsed off the front of the bytes read (`h1::take_answer`), and
//! the body taken out of the rest by its framing (`h1::Framing`), as an HTTP/1.1 upstream's
//! bytes arrive at sluice.
//!
//! The input: one byte of flags (whether the request was HEAD), two pairs for where the bytes
//! are cut into reads, then the bytes an upstream sends. Fed in one read, in three, and one
//! byte at a time, the head, its framing and the body that comes out must not depend on the
//! cuts; a head taken must be one httparse takes, and a body framed by a length must never
//! give more than that length.

#![no_main]

use bytes::BytesMut;
use http::HeaderMap;
use libfuzzer_sys::fuzz_target;
use sluice::h1::{Framing, Step, take_answer};

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let (control, stream) = data.split_at(5);
    let head = control[0] & 1 == 1;
    let word = |i: usize| usize::from(u16::from_le_bytes([control[i], control[i + 1]]));
    let mut cuts = [word(1) % (stream.len() + 1), word(3) % (stream.len() + 1)];
    cuts.sort_unstable();
    let byte_by_byte: Vec<usize> = (1..stream.len()).collect();
    let whole = receive(stream, head, &[]);
    for cut in [&cuts[..], &byte_by_byte] {
        assert_eq!(receive(stream, head, cut), whole, "the cuts changed it: {cut:?}");
    }
});

/// What came of the stream: the answer's status, fields and framing, and the body as far as
/// it went; or that it was refused (with the body so far).
#[derive(Debug, PartialEq, Eq)]
struct Received {
    head: Option<Result<(u16, Vec<(String, Vec<u8>)>, Framing, bool), ()>>,
    body: Vec<u8>,
    body_refused: bool,
    ended: bool,
}

/// Feeds `stream`, cut at `cuts` (ascending) into reads, as a connection reads an answer.
fn receive(stream: &[u8], head: bool, cuts: &[usize]) -> Received {
    let mut buf = BytesMut::new();
    let mut got = Received {
        head: None,
        body: Vec::new(),
        body_refused: false,
        ended: false,
    };
    let mut framing = None;
    let mut fed = 0;
    for end in cuts.iter().copied().chain([stream.len()]) {
        if end == fed {
            continue;
        }
        buf.extend_from_slice(&stream[fed..end]);
        fed = end;
        if framing.is_none() {
            match take_answer(&mut buf, head, &mut HeaderMap::new()) {
                Ok(None) => continue,
                Err(_) => {
                    got.head = Some(Err(()));
                    return got;
                }
                Ok(Some(answer)) => {
                    let fields = answer
                        .headers
                        .iter()
                        .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
                        .collect();
                    let code = answer.status.as_u16();
                    assert!((200..1000).contains(&code) || code == 101, "status {code}");
                    let parsed = (code, fields, answer.framing, answer.keep_alive);
                    got.head = Some(Ok(parsed));
                    framing = Some(answer.framing);
                }
            }
        }
        let Some(framing) = framing.as_mut() else {
            continue;
        };
        loop {
            match framing.next(&mut buf) {
                Ok(Step::Data(data)) => {
                    assert!(!data.is_empty(), "an empty frame");
                    got.body.extend_from_slice(&data);
                }
                Ok(Step::More) => break,
                Ok(Step::End) => {
                    got.ended = true;
                    return got;
                }
                Err(_) => {
                    got.body_refused = true;
                    return got;
                }
            }
        }
    }
    if let Some(Ok((_, _, Framing::Length(n), _))) = &got.head {
        assert!(got.body.len() as u64 <= *n, "more than the length");
    }
    got
}
