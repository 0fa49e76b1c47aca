//! Warnings that would repeat for every request or connection while a
//! condition lasts (out of file descriptors): one line per period, with how
//! many were held back, rather than a flood in the middle of the incident.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Lets one occurrence through per `period` seconds.
pub struct Every {
    period: u64,
    /// Seconds since the epoch of the last occurrence let through.
    last: AtomicU64,
    /// Occurrences held back since then.
    held: AtomicU64,
}

impl Every {
    /// At most one occurrence every `period` seconds.
    pub const fn new(period: u64) -> Every {
        Every { period, last: AtomicU64::new(0), held: AtomicU64::new(0) }
    }

    /// `Some(held back since the last one)` when this occurrence is to be
    /// logged, `None` when it is held back (and counted).
    pub fn pass(&self) -> Option<u64> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let last = self.last.load(Ordering::Relaxed);
        if now >= last.saturating_add(self.period)
            && self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            Some(self.held.swap(0, Ordering::Relaxed))
        } else {
            self.held.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Every;

    #[test]
    fn one_passes_per_period_and_the_rest_are_counted() {
        let every = Every::new(3600);
        assert_eq!(every.pass(), Some(0));
        for _ in 0..5 {
            assert_eq!(every.pass(), None);
        }
        // A new period: the next one passes with the count of those held.
        every.last.store(0, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(every.pass(), Some(5));
        assert_eq!(every.pass(), None);
    }
}
