//! A stored answer (status, end-to-end headers, body) and the request it answered (its
//! fingerprint), with the byte form they take in Redis.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use sha2::{Digest, Sha256};

use crate::problem::Mismatch;

/// What identifies a request beside its key: its method, its path with query, and its body,
/// each hashed on its own so that a mismatch can be named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    method: [u8; 16],
    target: [u8; 16],
    body: [u8; 32],
}

impl Fingerprint {
    /// The byte length of [`Fingerprint::to_bytes`].
    pub const LEN: usize = 64;

    /// `target` is the path with its query, as forwarded.
    pub fn new(method: &Method, target: &str, body: &[u8]) -> Fingerprint {
        let short = |bytes: &[u8]| {
            let digest = Sha256::digest(bytes);
            let mut out = [0u8; 16];
            out.copy_from_slice(&digest[..16]);
            out
        };
        Fingerprint {
            method: short(method.as_str().as_bytes()),
            target: short(target.as_bytes()),
            body: Sha256::digest(body).into(),
        }
    }

    /// What differs from `other`; `None` if nothing does.
    pub fn mismatch(&self, other: &Fingerprint) -> Option<Mismatch> {
        let m = Mismatch {
            method: self.method != other.method,
            path: self.target != other.target,
            body: self.body != other.body,
        };
        (m != Mismatch::default()).then_some(m)
    }

    pub fn to_bytes(self) -> [u8; Fingerprint::LEN] {
        let mut out = [0u8; Fingerprint::LEN];
        out[..16].copy_from_slice(&self.method);
        out[16..32].copy_from_slice(&self.target);
        out[32..].copy_from_slice(&self.body);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Fingerprint> {
        let bytes: &[u8; Fingerprint::LEN] = bytes.try_into().ok()?;
        let mut f = Fingerprint {
            method: [0; 16],
            target: [0; 16],
            body: [0; 32],
        };
        f.method.copy_from_slice(&bytes[..16]);
        f.target.copy_from_slice(&bytes[16..32]);
        f.body.copy_from_slice(&bytes[32..]);
        Some(f)
    }
}

/// Where a key is kept: a SHA-256 of the client's limit key, the route and the key, so that
/// one client's key never answers another client or another route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope(pub [u8; 32]);

impl Scope {
    pub fn new(client: &[u8], route: &str, key: &[u8]) -> Scope {
        let mut h = Sha256::new();
        // Each part with its length first, so that no two triples hash the same bytes.
        for part in [client, route.as_bytes(), key] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        Scope(h.finalize().into())
    }
}

/// An upstream's complete answer, as replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: StatusCode,
    /// End to end only: hop-by-hop headers were dropped before it was stored.
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// Roughly what it holds in memory: its bytes and each header's.
    pub fn size(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        self.body.len() + headers + 64
    }

    /// Its byte form: status, header count, each header as length and bytes, then the body.
    pub fn encode(&self, into: &mut BytesMut) {
        into.reserve(self.size());
        into.put_u16(self.status.as_u16());
        into.put_u16(u16::try_from(self.headers.len()).unwrap_or(u16::MAX));
        for (name, value) in self.headers.iter().take(usize::from(u16::MAX)) {
            for part in [name.as_str().as_bytes(), value.as_bytes()] {
                // A head is bounded far below 64 KiB per line by the HTTP client.
                let len = u16::try_from(part.len()).unwrap_or(u16::MAX);
                into.put_u16(len);
                into.put_slice(&part[..usize::from(len)]);
            }
        }
        into.put_slice(&self.body);
    }

    /// An answer from [`Answer::encode`]'s bytes; `None` if they are not that.
    pub fn decode(mut bytes: Bytes) -> Option<Answer> {
        let take_u16 = |b: &mut Bytes| (b.remaining() >= 2).then(|| b.get_u16());
        let status = StatusCode::from_u16(take_u16(&mut bytes)?).ok()?;
        let count = take_u16(&mut bytes)?;
        let mut headers = HeaderMap::with_capacity(usize::from(count));
        for _ in 0..count {
            let mut part = || {
                let len = usize::from(take_u16(&mut bytes)?);
                (bytes.remaining() >= len).then(|| bytes.split_to(len))
            };
            let name = HeaderName::from_bytes(&part()?).ok()?;
            let value = HeaderValue::from_maybe_shared(part()?).ok()?;
            headers.append(name, value);
        }
        Some(Answer {
            status,
            headers,
            body: bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_comes_back_from_its_bytes_as_it_was() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("set-cookie", HeaderValue::from_static("a=1"));
        headers.append("set-cookie", HeaderValue::from_static("b=2"));
        let answer = Answer {
            status: StatusCode::CREATED,
            headers,
            body: Bytes::from_static(b"{\"id\":1}\x00\xff"),
        };
        let mut bytes = BytesMut::new();
        answer.encode(&mut bytes);
        assert_eq!(Answer::decode(bytes.freeze()), Some(answer));
        assert_eq!(Answer::decode(Bytes::from_static(b"\x00")), None);
        assert_eq!(
            Answer::decode(Bytes::from_static(b"\x00\xc8\x00\x01\x00\x05ab")),
            None
        );
    }

    #[test]
    fn a_mismatch_names_what_differs() {
        let first = Fingerprint::new(&Method::POST, "/v1/candidates", b"{\"name\":\"Ada\"}");
        let same = Fingerprint::new(&Method::POST, "/v1/candidates", b"{\"name\":\"Ada\"}");
        assert_eq!(first.mismatch(&same), None);
        let other = Fingerprint::new(&Method::PATCH, "/v1/candidates", b"{}");
        let m = first.mismatch(&other).unwrap();
        assert_eq!(m.names().collect::<Vec<_>>(), ["method", "body"]);
        assert_eq!(Fingerprint::from_bytes(&first.to_bytes()), Some(first));
    }

    #[test]
    fn scopes_of_different_parts_differ() {
        let a = Scope::new(b"alice", "/", b"k1");
        assert_eq!(a, Scope::new(b"alice", "/", b"k1"));
        assert_ne!(a, Scope::new(b"bob", "/", b"k1"));
        assert_ne!(a, Scope::new(b"alice", "/v1", b"k1"));
        assert_ne!(Scope::new(b"ab", "/", b"c"), Scope::new(b"a", "/", b"bc"));
    }
}
