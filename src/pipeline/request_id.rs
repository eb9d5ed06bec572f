//! Request ids: the client's own when it sent a usable one, else a fresh one from this worker.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::HeaderValue;

/// Longest client-sent id that is kept; longer ones are replaced so logs stay sane.
const MAX_LEN: usize = 128;

/// Generates ids unique within the process: a bijective mix of (process seed, worker, counter).
#[derive(Debug)]
pub struct RequestIds {
    base: u64,
    counter: AtomicU64,
}

impl RequestIds {
    pub fn new(worker: usize) -> RequestIds {
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        RequestIds::with_seed(seed, worker)
    }

    fn with_seed(seed: u64, worker: usize) -> RequestIds {
        // The counter gets the low 40 bits, the worker the bits above: inputs never collide.
        let base = (seed & 0xff00_0000_0000_0000).wrapping_add((worker as u64) << 40);
        RequestIds {
            base,
            counter: AtomicU64::new(seed & 0xff_ffff),
        }
    }

    /// The id to use: the client's if present and sane, else a new 16-hex-digit one.
    pub fn pick(&self, sent: Option<&HeaderValue>) -> HeaderValue {
        match sent {
            Some(v) if !v.is_empty() && v.len() <= MAX_LEN && v.to_str().is_ok() => v.clone(),
            _ => self.next(),
        }
    }

    fn next(&self) -> HeaderValue {
        let n = self.counter.fetch_add(1, Ordering::Relaxed) & 0xff_ffff_ffff;
        let id = splitmix64(self.base | n);
        let mut buf = [0u8; 16];
        for (i, b) in buf.iter_mut().enumerate() {
            *b = b"0123456789abcdef"[((id >> (60 - 4 * i)) & 0xf) as usize];
        }
        // One allocation that the copies sent upstream and back to the client share; a value
        // copied from a slice would allocate again when first cloned.
        HeaderValue::from_maybe_shared(Bytes::from_owner(buf))
            .expect("hex digits are a valid header value")
    }
}

/// A bijection on u64 that scatters consecutive inputs (splitmix64's finalizer).
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sane_client_id_is_kept_else_one_is_made() {
        let ids = RequestIds::new(0);
        let sent = HeaderValue::from_static("req-42");
        assert_eq!(ids.pick(Some(&sent)), "req-42");
        let long = HeaderValue::from_str(&"x".repeat(200)).unwrap();
        assert_eq!(ids.pick(Some(&long)).len(), 16);
        assert_eq!(ids.pick(None).len(), 16);
    }

    #[test]
    fn ids_do_not_repeat_across_workers() {
        let mut seen = std::collections::HashSet::new();
        for worker in 0..4 {
            let ids = RequestIds::with_seed(7, worker);
            for _ in 0..10_000 {
                assert!(seen.insert(ids.pick(None)));
            }
        }
    }
}
