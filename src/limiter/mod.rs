//! Rate limiting: pure algorithms with the clock passed in, the [`Store`] trait that keeps
//! per-key state, and the in-memory [`MemoryStore`].
//!
//! - [`Policy`] (`policy.rs`): a name and one or two limits, all of which must admit a request.
//! - [`PolicyName`] (`name.rs`): a name the rate-limit headers can carry as it is.
//! - [`Gcra`] (`gcra.rs`): rate with burst, as a theoretical arrival time.
//! - [`Window`] (`window.rs`): at most N in any rolling window, never overshot; may admit up
//!   to [`Window::lateness`] later than an exact sliding log.
//! - [`Decision`] (`decision.rs`): allow or deny, and the key's state after the check, from
//!   which the wait and the rate-limit headers' figures are derived when asked.
//! - [`Clock`] (`clock.rs`): monotonic nanoseconds; a manual clock for tests.
//! - [`Store`] (`store.rs`): `check(policy, key, cost)` returns [`Checked`], a future that is
//!   ready at once for the in-memory store and pending for a remote one.
//! - [`MemoryStore`] (`memory.rs`): DashMap per policy, hashed keys, sweeper, `max_keys` cap;
//!   each key's state is a pair of atomics (`atomic.rs`), checked under the shard's read lock.
//! - [`redis::RedisStore`] (`redis/`): the same limits shared by replicas in Redis, checked by
//!   a Lua script in one round trip, or leased a few tokens at a time; falls back when Redis
//!   is unreachable.

mod atomic;
mod clock;
mod decision;
mod gcra;
mod memory;
mod name;
mod policy;
pub mod redis;
mod store;
mod window;

pub(crate) use clock::nanos;
pub use clock::{Clock, ManualClock, MonotonicClock, Nanos};
pub use decision::{
    Decision, LimitKind, LimitReport, MAX_LIMITS, Refusal, Report, State, ceil_secs,
};
pub use gcra::{Gcra, Rate};
pub use memory::MemoryStore;
pub use name::{InvalidPolicyName, PolicyName};
pub use policy::{InsufficientCapacity, Limit, Policy};
pub use store::{CALL_BUCKETS, Checked, Error, Health, Outcome, Store};
pub use window::Window;
