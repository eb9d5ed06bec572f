//! `max_connections`, held without locking everyone out. A connection over the cap makes room
//! by closing connections that hold a slot without using it: first those that have never sent
//! a whole head (a TLS handshake or a head not yet done, or nothing at all: what a flood of
//! idle sockets is made of), oldest first; then kept-alive ones between requests. The new
//! connection is then served. Only when every open connection has a request in progress is it
//! refused, with a 503.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use super::activity::ConnState;

/// Every open connection across the workers, oldest first. Taken at each accept, never by a
/// request.
#[derive(Debug, Default)]
pub struct Cap {
    open: Mutex<VecDeque<Weak<ConnState>>>,
}

/// What `Cap::admit` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// Whether the new connection is served; if not, it is answered 503.
    pub served: bool,
    /// Connections asked to close to make room for it.
    pub evicted: usize,
}

impl Cap {
    /// Takes in a new connection, `open` being open with it, of at most `max`.
    pub fn admit(&self, conn: &Arc<ConnState>, open: usize, max: usize) -> Admitted {
        let mut list = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let mut admitted = Admitted {
            served: true,
            evicted: 0,
        };
        if open > max {
            let excess = open - max;
            // Connections already asked to close are on their way out: they make room too.
            let leaving = list.iter().filter(|c| is_leaving(c)).count();
            let wanted = excess.saturating_sub(leaving);
            admitted.evicted = evict(&list, wanted, |c| c.never_asked() && !c.busy());
            if admitted.evicted < wanted {
                let more = wanted - admitted.evicted;
                admitted.evicted += evict(&list, more, |c| !c.busy());
            }
            admitted.served = leaving + admitted.evicted >= excess;
        }
        // Entries of closed connections are dropped once they are as many as the open ones.
        if list.len() > 2 * open + 64 {
            list.retain(|c| c.strong_count() > 0);
        }
        list.push_back(Arc::downgrade(conn));
        admitted
    }
}

fn is_leaving(conn: &Weak<ConnState>) -> bool {
    conn.upgrade().is_some_and(|c| c.evicted())
}

/// Asks up to `n` open connections that `pick` chooses to close, oldest first; how many.
fn evict(list: &VecDeque<Weak<ConnState>>, n: usize, pick: impl Fn(&ConnState) -> bool) -> usize {
    let mut evicted = 0;
    for conn in list.iter().filter_map(Weak::upgrade) {
        if evicted == n {
            break;
        }
        if !conn.evicted() && pick(&conn) {
            conn.evict();
            evicted += 1;
        }
    }
    evicted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::activity::Active;

    /// `n` connections admitted under a cap they fit.
    fn open(cap: &Cap, n: usize) -> Vec<Arc<ConnState>> {
        (0..n)
            .map(|_| {
                let c = Arc::new(ConnState::default());
                assert!(cap.admit(&c, 1, usize::MAX).served);
                c
            })
            .collect()
    }

    #[test]
    fn under_the_cap_nothing_is_closed() {
        let cap = Cap::default();
        let conns = open(&cap, 3);
        let new = Arc::new(ConnState::default());
        let got = cap.admit(&new, 4, 4);
        assert_eq!(
            got,
            Admitted {
                served: true,
                evicted: 0
            }
        );
        assert!(conns.iter().all(|c| !c.evicted()));
    }

    #[test]
    fn over_it_the_oldest_that_never_asked_go_first_then_those_between_requests() {
        let cap = Cap::default();
        let conns = open(&cap, 4);
        // 0 asked and is between requests, 1 is answering one, 2 and 3 never asked.
        drop(Active::new(&conns[0]));
        let _busy = Active::new(&conns[1]);
        let new = Arc::new(ConnState::default());
        assert_eq!(
            cap.admit(&new, 5, 4),
            Admitted {
                served: true,
                evicted: 1
            }
        );
        let evicted: Vec<bool> = conns.iter().map(|c| c.evicted()).collect();
        assert_eq!(evicted, [false, false, true, false]);
        // Still over while 2 has not closed: it counts as room made.
        let _asking = Active::new(&new);
        let newer = Arc::new(ConnState::default());
        assert_eq!(
            cap.admit(&newer, 6, 4),
            Admitted {
                served: true,
                evicted: 1
            }
        );
        assert!(conns[3].evicted());
        // Next, the one between requests; never one answering a request.
        let _asking = Active::new(&newer);
        let newest = Arc::new(ConnState::default());
        assert_eq!(
            cap.admit(&newest, 7, 4),
            Admitted {
                served: true,
                evicted: 1
            }
        );
        assert!(conns[0].evicted() && !conns[1].evicted());
        // A new connection that has not asked yet goes before one between requests.
        drop(_asking);
        let last = Arc::new(ConnState::default());
        assert_eq!(
            cap.admit(&last, 8, 4),
            Admitted {
                served: true,
                evicted: 1
            }
        );
        assert!(newest.evicted() && !newer.evicted());
    }

    #[test]
    fn when_every_connection_is_busy_the_newcomer_is_refused() {
        let cap = Cap::default();
        let conns = open(&cap, 2);
        let _busy: Vec<Active> = conns.iter().map(Active::new).collect();
        let new = Arc::new(ConnState::default());
        assert_eq!(
            cap.admit(&new, 3, 2),
            Admitted {
                served: false,
                evicted: 0
            }
        );
    }

    #[test]
    fn closed_connections_leave_no_entries_behind_for_long() {
        let cap = Cap::default();
        for _ in 0..1000 {
            let c = Arc::new(ConnState::default());
            cap.admit(&c, 1, 10);
        }
        assert!(cap.open.lock().unwrap().len() <= 2 + 64 + 1);
    }
}
