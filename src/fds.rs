//! The open file limit (`RLIMIT_NOFILE`), which bounds client and upstream connections
//! together. Raised to its hard limit at start, as nginx's `worker_rlimit_nofile` is set by
//! hand: the soft limit many systems start processes with (1,024) is far below what a proxy
//! needs, and the hard one is what the operator allowed.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Raises the soft limit to the hard one; the soft limit in force after, or an error (the old
/// limit stays).
pub fn raise() -> std::io::Result<u64> {
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        setrlimit(Resource::Nofile, raised)?;
    }
    Ok(soft_limit())
}

/// The soft limit in force: how many file descriptors the process may have open at once.
pub fn soft_limit() -> u64 {
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// File descriptors a server needs besides its connections: the few connections taken in over
/// the cap while room is made for them (32), standard streams, the admin listener, files read
/// at a reload, and for each worker its listener, its event queue and its store connection.
pub fn reserve(workers: usize) -> u64 {
    64 + 8 * workers as u64
}

/// The most client connections `limit` has room for beside the reserve.
pub fn connections_within(limit: u64, workers: usize) -> usize {
    let room = limit.saturating_sub(reserve(workers));
    usize::try_from(room).unwrap_or(usize::MAX)
}

/// Whether `limit` has room for `connections` clients and an upstream connection for each:
/// what they need when every one of them has a request in progress.
pub fn fits_with_upstreams(limit: u64, connections: usize, workers: usize) -> bool {
    2 * connections as u64 + reserve(workers) <= limit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_fit_beside_the_reserve() {
        assert_eq!(connections_within(20_000, 2), 20_000 - 80);
        assert_eq!(connections_within(1_024, 1), 1_024 - 72);
        assert_eq!(connections_within(50, 4), 0);
        assert!(fits_with_upstreams(20_080, 10_000, 2));
        assert!(!fits_with_upstreams(20_000, 10_000, 2));
        assert!(connections_within(u64::MAX, 1) > 1 << 40, "unlimited");
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let hard = getrlimit(Resource::Nofile).maximum.unwrap_or(u64::MAX);
        assert_eq!(raise().unwrap(), hard);
        assert_eq!(soft_limit(), hard);
    }
}
