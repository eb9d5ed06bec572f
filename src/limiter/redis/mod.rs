//! Limits shared by every replica, in Redis or Valkey (one server or a cluster).
//!
//! - **Exact** (`sync = "exact"`): each check is one call of a Lua script (`script.rs`,
//!   `limits.lua`) that decides and takes atomically, on Redis's clock, with the in-memory
//!   limiter's arithmetic: replicas together admit exactly what one process would.
//! - **Lease** (`sync = "lease"`): a replica takes up to `lease` tokens of a key at once and
//!   spends them locally (`local.rs`); with N replicas, admissions exceed the exact limit by
//!   at most N × `lease` in any window.
//! - **Refusals** are held locally until their wait is over, so a refused client that keeps
//!   trying costs no round trip.
//! - **Faults** (`link.rs`): a call past `timeout` fails; failures in a row open a breaker, and
//!   until a probe gets an answer checks go to `on_error`: this replica's own memory, allow,
//!   or deny.
//! - **Keys**: `sluice:{H}:P`, where `H` is an HMAC-SHA256 of the client key under
//!   `key_secret` (the key itself never reaches Redis) and `P` the policy's fingerprint. Both
//!   limits of a policy live in one key, so a cluster never splits them; each key expires when
//!   its state is a fresh key's again.

mod link;
mod local;
mod script;

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use self::link::{Link, Thread};
use self::local::{Found, Id, Local};
use self::script::{Reply, Take};
use super::clock::{Clock, MonotonicClock};
use super::decision::Decision;
use super::memory::MemoryStore;
use super::policy::{InsufficientCapacity, Policy};
use super::store::{Checked, Error, Health, Outcome, Store};

pub use self::link::PROBE_EVERY;

/// The Redis to use: one server, or the nodes of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Servers {
    /// `redis://` or `rediss://` URL.
    One(String),
    /// Seed nodes of a Redis Cluster.
    Cluster(Vec<String>),
}

impl fmt::Display for Servers {
    /// The addresses, without a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hide = |url: &str| match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}{}", &url[..scheme + 3], &url[at + 1..])
            }
            _ => url.to_string(),
        };
        match self {
            Servers::One(url) => f.write_str(&hide(url)),
            Servers::Cluster(nodes) => {
                let nodes: Vec<String> = nodes.iter().map(|n| hide(n)).collect();
                write!(f, "cluster {}", nodes.join(", "))
            }
        }
    }
}

/// How replicas share a key's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// One atomic round trip per check.
    Exact,
    /// Up to `tokens` taken at once, dropped if unspent after `ttl`.
    Lease { tokens: NonZeroU32, ttl: Duration },
}

/// What to do while the store is unreachable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Decide with this replica's own in-memory store.
    #[default]
    Local,
    /// Admit every request.
    Allow,
    /// Refuse every request (503).
    Deny,
}

/// A Redis store's settings, from `[store]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Settings {
    pub servers: Servers,
    /// The most a call may take before `on_error` applies.
    pub timeout: Duration,
    pub sharing: Sharing,
    pub on_error: OnError,
    /// The HMAC key client keys are hashed under; the same on every replica.
    pub key_secret: Vec<u8>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("servers", &self.servers.to_string())
            .field("timeout", &self.timeout)
            .field("sharing", &self.sharing)
            .field("on_error", &self.on_error)
            .finish_non_exhaustive()
    }
}

/// Limits kept in Redis, shared by every replica that uses the same Redis and `key_secret`.
pub struct RedisStore<C: Clock = MonotonicClock> {
    link: Arc<Link>,
    local: Local,
    fallback: Option<MemoryStore>,
    timeout: Duration,
    secret: Hmac<Sha256>,
    clock: C,
    /// Tests pass the time to the script instead of Redis's own clock.
    injected_time: bool,
    _thread: Thread,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store on Redis's clock; `max_keys` bounds what is held locally (and the fallback).
    /// Connects in the background: until Redis answers, checks go to `on_error`.
    pub fn start(settings: &Settings, max_keys: usize) -> std::io::Result<RedisStore> {
        RedisStore::with_clock(settings, max_keys, MonotonicClock::new(), false)
    }
}

impl<C: Clock> RedisStore<C> {
    /// A store whose local expiries follow `clock`; with `injected_time`, the script also
    /// takes its time from `clock` (nanoseconds since the Unix epoch) instead of Redis's.
    pub fn with_clock(
        settings: &Settings,
        max_keys: usize,
        clock: C,
        injected_time: bool,
    ) -> std::io::Result<RedisStore<C>> {
        let (link, thread) = link::start(settings.servers.clone(), settings.timeout)?;
        let lease = match settings.sharing {
            Sharing::Exact => None,
            Sharing::Lease { tokens, ttl } => Some((tokens, ttl)),
        };
        let secret = Hmac::<Sha256>::new_from_slice(&settings.key_secret)
            .expect("HMAC takes a key of any length");
        Ok(RedisStore {
            link,
            local: Local::new(max_keys, lease),
            fallback: (settings.on_error == OnError::Local).then(|| MemoryStore::new(max_keys)),
            timeout: settings.timeout,
            secret,
            clock,
            injected_time,
            _thread: thread,
        })
    }

    /// Waits (up to `within`) until Redis answers; whether it did.
    pub fn wait_until_up(&self, within: Duration) -> bool {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if self.link.is_up() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// A handle on this store's connections, for other state that replicas share.
    pub fn shared(&self) -> Shared {
        Shared {
            link: self.link.clone(),
            timeout: self.timeout,
        }
    }

    /// The Redis key of `key` under `policy`: `sluice:{HMAC}:FINGERPRINT`, the HMAC as a hash
    /// tag so that everything of one client shares a cluster slot.
    fn redis_key(&self, policy: &Policy, key: &[u8]) -> String {
        use std::fmt::Write;
        let mut mac = self.secret.clone();
        mac.update(key);
        let digest = mac.finalize().into_bytes();
        let mut name = String::with_capacity(64);
        name.push_str("sluice:{");
        for byte in &digest[..16] {
            let _ = write!(name, "{byte:02x}");
        }
        let _ = write!(name, "}}:{:016x}", policy.fingerprint());
        name
    }

    /// One call of the script; `None` when Redis is not reachable, fails or is too slow.
    async fn call(&self, policy: &Policy, key: &[u8], take: Take) -> Option<Reply> {
        let name = self.redis_key(policy, key);
        let now = self.injected_time.then(|| self.clock.now());
        let call = script::invocation(&name, policy, take, now);
        let values: Vec<i64> = self.link.run(call, self.timeout).await?;
        let reply = script::reply(policy, &values);
        if reply.is_none() {
            tracing::warn!(
                ?values,
                "limiter store: unexpected reply to the limits script"
            );
        }
        reply
    }

    /// A check decided without Redis: this replica's memory, or `Unavailable` for the caller
    /// to allow or deny.
    fn fall_back(&self, decide: impl FnOnce(&MemoryStore) -> Outcome) -> Outcome {
        self.link.fell_back();
        match &self.fallback {
            Some(memory) => decide(memory),
            None => Err(Error::Unavailable),
        }
    }

    async fn check_remote(
        &self,
        id: Id,
        policy: &Policy,
        key: &[u8],
        cost: NonZeroU32,
        take: Take,
    ) -> Outcome {
        // A check whose client went away mid-call must not leave its key marked as asking.
        let mut asking = Asking {
            local: &self.local,
            id: Some(id),
        };
        let reply = self.call(policy, key, take).await;
        let Some(reply) = reply else {
            drop(asking);
            return self.fall_back(|m| m.check_now(policy, key, cost));
        };
        asking.id = None;
        Ok(self
            .local
            .answered(id, policy, cost, take, reply, self.clock.now()))
    }

    /// Where `key` stands in Redis, taking nothing.
    async fn read(&self, policy: &Policy, key: &[u8]) -> Option<Reply> {
        self.call(policy, key, Take::READ).await
    }
}

/// The limiter store's connections to Redis, its breaker and its counters, lent to other
/// state the replicas share (idempotency keys): one set of connections per process.
#[derive(Clone)]
pub struct Shared {
    link: Arc<Link>,
    timeout: Duration,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    /// Whether calls go to Redis: its breaker is closed.
    pub fn is_up(&self) -> bool {
        self.link.is_up()
    }

    /// Runs a script within `[store] timeout`; `None` if Redis is unreachable, fails or is
    /// too slow (which counts towards the breaker, as the limiter's calls do).
    pub async fn run(&self, call: redis::ScriptInvocation<'static>) -> Option<redis::Value> {
        self.link.run(call, self.timeout).await
    }

    /// A call decided without Redis.
    pub fn fell_back(&self) {
        self.link.fell_back();
    }
}

/// A call on its way for a key: unless answered, the key may ask again once it ends.
struct Asking<'a> {
    local: &'a Local,
    id: Option<Id>,
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.local.failed(id);
        }
    }
}

fn capacity(policy: &Policy, cost: NonZeroU32) -> Result<(), Error> {
    if cost.get() > policy.capacity() {
        let capacity = policy.capacity();
        return Err(InsufficientCapacity {
            cost: cost.get(),
            capacity,
        }
        .into());
    }
    Ok(())
}

impl<C: Clock> Store for RedisStore<C> {
    fn check<'a>(&'a self, policy: &'a Policy, key: &'a [u8], cost: NonZeroU32) -> Checked<'a> {
        if let Err(e) = capacity(policy, cost) {
            return Checked::ready(Err(e));
        }
        let id = self.local.id(policy, key);
        let take = match self.local.check(id, policy, cost, self.clock.now()) {
            Found::Decided(decision) => {
                self.link
                    .answered_locally(usize::from(decision.is_allowed()));
                return Checked::ready(Ok(decision));
            }
            Found::Ask(take) => take,
        };
        if !self.link.is_up() {
            self.local.failed(id);
            return Checked::ready(self.fall_back(|m| m.check_now(policy, key, cost)));
        }
        Checked::Pending(Box::pin(self.check_remote(id, policy, key, cost, take)))
    }

    fn peek<'a>(&'a self, policy: &'a Policy, key: &'a [u8], cost: NonZeroU32) -> Checked<'a> {
        if let Err(e) = capacity(policy, cost) {
            return Checked::ready(Err(e));
        }
        let id = self.local.id(policy, key);
        if let Some(refused) = self.local.refused(id, policy, cost, self.clock.now()) {
            self.link.answered_locally(0);
            return Checked::ready(Ok(refused));
        }
        Checked::Pending(Box::pin(async move {
            match self.read(policy, key).await {
                Some(reply) => {
                    let mut state = reply.before;
                    Ok(policy.decide(&mut state, reply.now, cost)?)
                }
                None => self.fall_back(|m| m.peek_now(policy, key, cost)),
            }
        }))
    }

    fn standing<'a>(&'a self, policy: &'a Policy, key: &'a [u8]) -> Checked<'a> {
        Checked::Pending(Box::pin(async move {
            match self.read(policy, key).await {
                Some(reply) => Ok(Decision::new(reply.before, reply.now, 1, true)),
                None => self.fall_back(|m| Ok(m.standing_now(policy, key))),
            }
        }))
    }

    /// Keys held on this replica: refusals and leases, and the fallback's keys.
    fn tracked_keys(&self) -> usize {
        self.local.len() + self.fallback.as_ref().map_or(0, MemoryStore::tracked_keys)
    }

    fn sweep(&self) -> usize {
        let fallback = self.fallback.as_ref().map_or(0, MemoryStore::sweep);
        self.local.sweep(self.clock.now()) + fallback
    }

    /// Redis keys name the policy by its limits, so a changed policy starts afresh there;
    /// the fallback's keys are carried over as in memory.
    fn carry_over(&self, from: &Policy, to: &Policy) -> usize {
        self.fallback.as_ref().map_or(0, |m| m.carry_over(from, to))
    }

    fn health(&self) -> Health {
        self.link.health()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_shown_without_their_password() {
        let one = Servers::One("rediss://user:hunter2@cache:6380/1".into());
        assert_eq!(one.to_string(), "rediss://cache:6380/1");
        let nodes = Servers::Cluster(vec!["redis://:pw@a:1".into(), "redis://b:2".into()]);
        assert_eq!(nodes.to_string(), "cluster redis://a:1, redis://b:2");
        let settings = Settings {
            servers: one,
            timeout: Duration::from_millis(20),
            sharing: Sharing::Exact,
            on_error: OnError::Local,
            key_secret: b"top secret".to_vec(),
        };
        let shown = format!("{settings:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("top secret"),
            "{shown}"
        );
    }
}
