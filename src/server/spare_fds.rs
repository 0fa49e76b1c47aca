//! Descriptors held back for the admin port, so that a scrape and a health
//! check are still answered when client connections have taken every other
//! one (probe 325: at `ulimit -n 64`, 60 idle client connections left
//! `/metrics` and `/healthz` unanswered; the scrape then failed, the
//! open-files alert lost its series, and a liveness probe on the admin port
//! had the pod restarted, cutting its tunnels).
//!
//! The admin accept loop holds a few descriptors open on `/dev/null`. When
//! an accept fails for want of a descriptor and a connection waits, it
//! closes one and accepts at once into the number just freed; when that
//! connection ends, the spare is opened again. (An accept takes its
//! descriptor before it looks at the queue: it fails the same whether or
//! not a connection waits, so the queue is asked first, with `poll`, or a
//! spare would be closed for nothing after every connection.) Best effort:
//! between the close and the accept another thread of the process may take
//! the number (an origin dialled, a client accepted), and then the admin
//! port waits as the proxy's do.

use std::fs::File;
use std::sync::{Mutex, PoisonError};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use tokio::net::TcpListener;

/// How many descriptors the admin port holds back: room for a scraper's
/// kept-alive connection and a health check or two at the limit.
pub const ADMIN_SPARE_FDS: usize = 3;

/// Spare descriptors, open on `/dev/null`.
pub struct SpareFds {
    held: Mutex<Vec<File>>,
    want: usize,
}

impl SpareFds {
    /// Holds up to `want` spares (fewer when the descriptors are short
    /// already, or there is no `/dev/null`; [`SpareFds::refill`] tries again).
    pub fn new(want: usize) -> Self {
        let spares = SpareFds { held: Mutex::new(Vec::with_capacity(want)), want };
        spares.refill();
        spares
    }

    /// Opens spares again up to the number wanted, as far as descriptors
    /// allow.
    pub fn refill(&self) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        while held.len() < self.want {
            match File::open("/dev/null") {
                Ok(f) => held.push(f),
                Err(_) => break,
            }
        }
    }

    /// Closes one spare for a connection waiting on `listener`, so that
    /// accepting it can take the spare's number; `false` when none waits
    /// or no spare is left.
    pub fn free_one_for(&self, listener: &TcpListener) -> bool {
        connection_waiting(listener) && self.release_one()
    }

    /// Closes one spare; `false` when none is left.
    fn release_one(&self) -> bool {
        self.held.lock().unwrap_or_else(PoisonError::into_inner).pop().is_some()
    }
}

/// Whether the process can open one more descriptor now (`/readyz`): when
/// it cannot, the proxy's listeners cannot accept a client either. Yes
/// when that cannot be told (no `/dev/null`).
pub fn one_is_free() -> bool {
    match File::open("/dev/null") {
        Ok(_) => true,
        Err(e) => !crate::proxy::connect::out_of_descriptors(&e),
    }
}

/// Whether a connection waits in `listener`'s queue, asked without
/// accepting it.
fn connection_waiting(listener: &TcpListener) -> bool {
    let mut fds = [PollFd::new(listener, PollFlags::IN)];
    let now = Timespec { tv_sec: 0, tv_nsec: 0 };
    matches!(poll(&mut fds, Some(&now)), Ok(n) if n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_spare_is_freed_only_for_a_waiting_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let spares = SpareFds::new(2);
        assert!(!spares.free_one_for(&listener), "nobody waits");
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert!(spares.free_one_for(&listener));
        assert!(spares.free_one_for(&listener), "still waiting: not accepted");
        assert!(!spares.free_one_for(&listener), "none left");
        let _ = listener.accept().await.unwrap();
        spares.refill();
        assert!(!spares.free_one_for(&listener), "accepted: nobody waits");
    }

    #[test]
    fn a_released_spare_is_opened_again_by_refill() {
        let spares = SpareFds::new(3);
        assert!(spares.release_one());
        assert!(spares.release_one());
        spares.refill();
        for _ in 0..3 {
            assert!(spares.release_one());
        }
        assert!(!spares.release_one(), "none left");
    }
}
