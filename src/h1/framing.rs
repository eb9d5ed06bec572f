//! An answer's body taken out of the bytes read, as its framing says (RFC 9112 §6.3, §7.1):
//! pure, over the connection's read buffer.

use bytes::{Buf, Bytes, BytesMut};

use super::Bad;

/// The longest chunk-size line, or trailer field, taken.
const MAX_LINE: usize = 8 * 1024;

/// Where an answer's body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// This many bytes still to come (never 0: that is `Done`).
    Length(u64),
    /// In chunks.
    Chunked(Chunk),
    /// Until the upstream closes the connection.
    Close,
    /// Whole.
    Done,
}

/// Where a chunked body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Before a chunk's size line.
    Size,
    /// This many bytes of a chunk's data still to come.
    Data(u64),
    /// Before the line end that closes a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields (dropped), up to an empty line.
    Trailers,
}

/// What the bytes read so far give of a body.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Data(Bytes),
    /// Nothing until more is read.
    More,
    /// The body has ended.
    End,
}

impl Framing {
    /// A body of `n` bytes.
    pub fn length(n: u64) -> Framing {
        if n == 0 {
            Framing::Done
        } else {
            Framing::Length(n)
        }
    }

    /// A chunked body, from its start.
    pub fn chunked() -> Framing {
        Framing::Chunked(Chunk::Size)
    }

    /// The next piece of the body, taken off the front of `buf`. Data comes out as it arrives,
    /// without waiting for the rest of its chunk.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Step, Bad> {
        loop {
            match self {
                Framing::Done => return Ok(Step::End),
                Framing::Length(left) => {
                    let Some(data) = take(buf, left) else {
                        return Ok(Step::More);
                    };
                    if *left == 0 {
                        *self = Framing::Done;
                    }
                    return Ok(Step::Data(data));
                }
                Framing::Close if buf.is_empty() => return Ok(Step::More),
                Framing::Close => return Ok(Step::Data(buf.split().freeze())),
                Framing::Chunked(Chunk::Size) => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((line, size))) => {
                        buf.advance(line);
                        *self = Framing::Chunked(match size {
                            0 => Chunk::Trailers,
                            n => Chunk::Data(n),
                        });
                    }
                    Ok(httparse::Status::Partial) if buf.len() < MAX_LINE => {
                        return Ok(Step::More);
                    }
                    _ => return Err(Bad),
                },
                Framing::Chunked(Chunk::Data(left)) => {
                    let Some(data) = take(buf, left) else {
                        return Ok(Step::More);
                    };
                    if *left == 0 {
                        *self = Framing::Chunked(Chunk::DataEnd);
                    }
                    return Ok(Step::Data(data));
                }
                Framing::Chunked(Chunk::DataEnd) => match buf.get(..2) {
                    None => return Ok(Step::More),
                    Some(b"\r\n") => {
                        buf.advance(2);
                        *self = Framing::chunked();
                    }
                    Some(_) => return Err(Bad),
                },
                Framing::Chunked(Chunk::Trailers) => match memchr::memmem::find(buf, b"\r\n") {
                    Some(0) => {
                        buf.advance(2);
                        *self = Framing::Done;
                    }
                    Some(field) => buf.advance(field + 2),
                    None if buf.len() < MAX_LINE => return Ok(Step::More),
                    None => return Err(Bad),
                },
            }
        }
    }

    /// Whether the body has ended whole when the connection ends here; a body framed by the
    /// close has.
    pub fn ends_at_close(&mut self) -> bool {
        if *self == Framing::Close {
            *self = Framing::Done;
        }
        *self == Framing::Done
    }
}

/// Up to `left` bytes off the front of `buf`, counted off `left`; `None` if there are none.
fn take(buf: &mut BytesMut, left: &mut u64) -> Option<Bytes> {
    if buf.is_empty() {
        return None;
    }
    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
    *left -= n as u64;
    Some(buf.split_to(n).freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` one byte at a time (the worst case for a parser that resumes), and returns
    /// the body's data and whether it ended.
    fn bytewise(mut framing: Framing, wire: &[u8]) -> Result<(Vec<u8>, bool), Bad> {
        let (mut buf, mut body) = (BytesMut::new(), Vec::new());
        for byte in wire {
            buf.extend_from_slice(&[*byte]);
            loop {
                match framing.next(&mut buf)? {
                    Step::Data(data) => body.extend_from_slice(&data),
                    Step::More => break,
                    Step::End => return Ok((body, buf.is_empty())),
                }
            }
        }
        Ok((body, false))
    }

    #[test]
    fn a_length_ends_after_its_bytes_and_leaves_the_rest() {
        let mut buf = BytesMut::from("abcdeXYZ");
        let mut framing = Framing::length(5);
        assert_eq!(framing.next(&mut buf), Ok(Step::Data(Bytes::from("abcde"))));
        assert_eq!(framing, Framing::Done);
        assert_eq!(&buf[..], b"XYZ");
        assert_eq!(Framing::length(0), Framing::Done);
    }

    #[test]
    fn chunks_come_out_as_they_arrive_with_extensions_and_trailers_dropped() {
        let wire = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Sum: 9\r\n\r\n";
        assert_eq!(
            bytewise(Framing::chunked(), wire),
            Ok((b"hello, world".to_vec(), true))
        );
    }

    #[test]
    fn malformed_chunks_are_bad() {
        for wire in [&b"zz\r\n"[..], b"5\r\nhelloXY", b"ffffffffffffffffff\r\n"] {
            assert_eq!(bytewise(Framing::chunked(), wire), Err(Bad), "{wire:?}");
        }
        let endless = vec![b'a'; MAX_LINE + 1];
        let mut trailers = b"0\r\n".to_vec();
        trailers.extend_from_slice(&endless);
        assert_eq!(bytewise(Framing::chunked(), &trailers), Err(Bad));
    }

    #[test]
    fn only_a_body_framed_by_the_close_ends_whole_there() {
        let mut close = Framing::Close;
        let mut buf = BytesMut::from("all of it");
        assert_eq!(
            close.next(&mut buf),
            Ok(Step::Data(Bytes::from("all of it")))
        );
        assert!(close.ends_at_close());
        assert!(!Framing::length(3).ends_at_close());
        assert!(!Framing::chunked().ends_at_close());
    }
}
