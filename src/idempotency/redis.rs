//! Keys shared by every replica in the limiter's Redis, on its connections: one Lua script
//! (`idempotency.lua`) begins, completes and releases a key atomically. Keys are
//! `sluice:idem:{HMAC}`, an HMAC-SHA256 of the scope under `key_secret`.

use std::sync::LazyLock;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::Begun;
use super::answer::{Answer, Fingerprint, Scope};
use crate::limiter::redis::Shared;

static SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("idempotency.lua")));

const IN_FLIGHT: u8 = b'L';
const COMPLETE: u8 = b'C';

/// The Redis side of the store.
pub(super) struct Redis {
    shared: Shared,
    secret: Hmac<Sha256>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").finish_non_exhaustive()
    }
}

/// Milliseconds, at least one (`PX 0` is an error).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Redis {
    pub(super) fn new(shared: Shared, key_secret: &[u8]) -> Redis {
        let secret = Hmac::<Sha256>::new_from_slice(key_secret).expect("any key length");
        Redis { shared, secret }
    }

    pub(super) fn is_up(&self) -> bool {
        self.shared.is_up()
    }

    pub(super) fn fell_back(&self) {
        self.shared.fell_back();
    }

    fn key(&self, scope: &Scope) -> String {
        use std::fmt::Write;
        let mut mac = self.secret.clone();
        mac.update(&scope.0);
        let digest = mac.finalize().into_bytes();
        let mut name = String::with_capacity(48);
        name.push_str("sluice:idem:{");
        for byte in &digest[..16] {
            let _ = write!(name, "{byte:02x}");
        }
        name.push('}');
        name
    }

    fn lock_value(fingerprint: &Fingerprint, token: u128) -> Vec<u8> {
        let mut v = Vec::with_capacity(1 + Fingerprint::LEN + 16);
        v.push(IN_FLIGHT);
        v.extend_from_slice(&fingerprint.to_bytes());
        v.extend_from_slice(&token.to_be_bytes());
        v
    }

    /// `None` when Redis could not be asked.
    pub(super) async fn begin(
        &self,
        scope: &Scope,
        fingerprint: &Fingerprint,
        token: u128,
        lock: Duration,
    ) -> Option<Begun> {
        let mut call = SCRIPT.key(self.key(scope));
        call.arg("begin")
            .arg(Redis::lock_value(fingerprint, token))
            .arg(millis(lock));
        match self.shared.run(call).await? {
            redis::Value::Int(_) => Some(Begun::Fresh),
            redis::Value::BulkString(held) => read(Bytes::from(held), fingerprint),
            other => {
                tracing::warn!(?other, "idempotency store: unexpected reply");
                None
            }
        }
    }

    pub(super) async fn complete(
        &self,
        scope: &Scope,
        fingerprint: &Fingerprint,
        token: u128,
        answer: &Answer,
        ttl: Duration,
    ) {
        let mut entry = BytesMut::with_capacity(1 + Fingerprint::LEN + answer.size());
        entry.extend_from_slice(&[COMPLETE]);
        entry.extend_from_slice(&fingerprint.to_bytes());
        answer.encode(&mut entry);
        let mut call = SCRIPT.key(self.key(scope));
        call.arg("complete")
            .arg(Redis::lock_value(fingerprint, token))
            .arg(&entry[..])
            .arg(millis(ttl));
        if self.shared.run(call).await.is_none() {
            tracing::warn!(
                "idempotency store: an answer could not be stored; its key is released when its lock expires"
            );
        }
    }

    pub(super) async fn release(&self, scope: &Scope, fingerprint: &Fingerprint, token: u128) {
        let mut call = SCRIPT.key(self.key(scope));
        call.arg("release")
            .arg(Redis::lock_value(fingerprint, token));
        let _ = self.shared.run(call).await;
    }
}

/// What an entry found in Redis means for a request with `fingerprint`.
fn read(held: Bytes, fingerprint: &Fingerprint) -> Option<Begun> {
    let kind = *held.first()?;
    let theirs = Fingerprint::from_bytes(held.get(1..1 + Fingerprint::LEN)?)?;
    if let Some(m) = theirs.mismatch(fingerprint) {
        return Some(Begun::Mismatch(m));
    }
    match kind {
        IN_FLIGHT => Some(Begun::InFlight),
        COMPLETE => Answer::decode(held.slice(1 + Fingerprint::LEN..)).map(Begun::Replay),
        _ => None,
    }
}
