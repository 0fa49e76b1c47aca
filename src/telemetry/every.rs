//! Warnings that would repeat for every request or connection while a
//! condition lasts (out of file descriptors): one line per period, with how
//! many were held back, rather than a flood in the middle of the incident.
//!
//! What is held back is never lost: when no occurrence comes to carry the
//! count, a summary line says it a period after the next line could have
//! gone out (and at shutdown, see [`flush_all`]). So the occurrences of a warning are its
//! lines, each one of them, plus every line's `held_back`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// The clock [`Every`] reads: monotonic (a wall clock stepped back would
/// silence a warning for the length of the step), in milliseconds from here.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// The warnings with a count held back and a summary due: flushed at
/// shutdown, as the tasks that would write their summaries stop with the
/// runtime.
static DUE: Mutex<Vec<&'static Every>> = Mutex::new(Vec::new());

/// Lets one occurrence through per `period` seconds.
pub struct Every {
    period: u64,
    /// What the summary line says: the warning's own message.
    what: &'static str,
    /// Milliseconds after [`EPOCH`], plus one, of the last line (0: none yet).
    last: AtomicU64,
    /// Occurrences held back since then.
    held: AtomicU64,
    /// A summary is due (in [`DUE`], and a task waits to write it).
    due: AtomicBool,
}

fn now_ms() -> u64 {
    u64::try_from(EPOCH.elapsed().as_millis()).unwrap_or(u64::MAX).saturating_add(1)
}

impl Every {
    /// At most one line every `period` seconds for the warning `what`.
    pub const fn new(period: u64, what: &'static str) -> Every {
        Every { period, what, last: AtomicU64::new(0), held: AtomicU64::new(0), due: AtomicBool::new(false) }
    }

    /// `Some(held back since the last line)` when this occurrence is to be
    /// logged, `None` when it is held back (and counted, and a summary
    /// line made due).
    pub fn pass(&'static self) -> Option<u64> {
        self.pass_at(now_ms())
    }

    fn pass_at(&'static self, now: u64) -> Option<u64> {
        let last = self.last.load(Ordering::Relaxed);
        if self.open(last, now)
            && self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            return Some(self.held.swap(0, Ordering::Relaxed));
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        if !self.due.swap(true, Ordering::AcqRel) {
            DUE.lock().unwrap_or_else(|p| p.into_inner()).push(self);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(self.summarize_when_due(self.summary_from(last).saturating_sub(now)));
            }
        }
        None
    }

    /// When a summary may go out, the last line at `last`: a period after
    /// the next line could have, so that while occurrences go on a line
    /// (with its client and request id) carries the count, not a summary
    /// that took the period first.
    fn summary_from(&self, last: u64) -> u64 {
        last.saturating_add(2 * self.period * 1000)
    }

    /// Writes the summary once it is due, `wait` ms from now or later
    /// (a line that goes out meanwhile moves it on, or takes the count).
    async fn summarize_when_due(&'static self, mut wait: u64) {
        loop {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            match self.summary_at(now_ms()) {
                Some(0) => return,
                Some(held) => return self.write_summary(held),
                None => wait = self.summary_from(self.last.load(Ordering::Relaxed)).saturating_sub(now_ms()),
            }
        }
    }

    /// Whether a line may go out at `now`, the last one at `last`.
    fn open(&self, last: u64, now: u64) -> bool {
        last == 0 || now >= last.saturating_add(self.period * 1000)
    }

    /// The summary due at `now`: `None` while the period is not over (a
    /// line went out since the summary was made due); else the count held
    /// back, taken, and the period claimed for the summary line if there
    /// is one (0: a line that went out meanwhile took the count).
    fn summary_at(&'static self, now: u64) -> Option<u64> {
        loop {
            let last = self.last.load(Ordering::Relaxed);
            if now < self.summary_from(last) {
                return None;
            }
            self.settle();
            if self.held.load(Ordering::Relaxed) == 0 {
                return Some(0);
            }
            // A line passing meanwhile claims the period and the count.
            if self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
                return Some(self.held.swap(0, Ordering::Relaxed));
            }
        }
    }

    /// No summary is due any more: an occurrence held back from now on
    /// makes a new one due.
    fn settle(&'static self) {
        DUE.lock().unwrap_or_else(|p| p.into_inner()).retain(|e| !std::ptr::eq(*e, self));
        self.due.store(false, Ordering::Release);
    }

    fn write_summary(&self, held: u64) {
        tracing::warn!(held_back = held, "{} (summary: held back since the last line)", self.what);
    }
}

/// Writes the summaries still due: at shutdown, so that no count held back
/// is lost.
pub fn flush_all() {
    let due: Vec<&'static Every> = std::mem::take(&mut *DUE.lock().unwrap_or_else(|p| p.into_inner()));
    for every in due {
        // At once, period or not: the process is ending.
        every.settle();
        let held = every.held.swap(0, Ordering::Relaxed);
        if held > 0 {
            every.write_summary(held);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_passes_per_period_and_the_rest_are_counted() {
        static EVERY: Every = Every::new(3600, "test");
        assert_eq!(EVERY.pass_at(1_000), Some(0));
        for t in 0..5 {
            assert_eq!(EVERY.pass_at(1_001 + t), None);
        }
        // One millisecond short of the period, then the period: the next
        // line has the count of those held.
        assert_eq!(EVERY.pass_at(3_600_999), None);
        assert_eq!(EVERY.pass_at(3_601_000), Some(6));
        assert_eq!(EVERY.pass_at(3_601_001), None);
    }

    #[test]
    fn a_summary_waits_for_the_period_and_never_follows_a_line_within_it() {
        static EVERY: Every = Every::new(10, "test");
        assert_eq!(EVERY.pass_at(1_000), Some(0));
        assert_eq!(EVERY.pass_at(2_000), None);
        // Not before a period after the next line could have gone out.
        assert_eq!(EVERY.summary_at(11_000), None);
        assert_eq!(EVERY.summary_at(20_999), None);
        assert_eq!(EVERY.summary_at(21_000), Some(1));
        // It claimed the period: the next line waits for its end.
        assert_eq!(EVERY.pass_at(21_001), None);
        // A line that went out first took the count: nothing to say.
        assert_eq!(EVERY.pass_at(31_000), Some(1));
        assert_eq!(EVERY.summary_at(41_000), None);
        assert_eq!(EVERY.pass_at(31_500), None);
        assert_eq!(EVERY.summary_at(51_000), Some(1));
        assert_eq!(EVERY.summary_at(71_000), Some(0), "nothing held");
    }

    #[test]
    fn what_is_held_back_is_summarized_when_nothing_follows() {
        static EVERY: Every = Every::new(3600, "test");
        assert_eq!(EVERY.pass(), Some(0));
        assert_eq!(EVERY.pass(), None);
        assert_eq!(EVERY.pass(), None);
        assert!(EVERY.due.load(Ordering::Acquire));
        flush_all();
        assert_eq!(EVERY.held.load(Ordering::Relaxed), 0, "the summary took the count");
        assert!(!EVERY.due.load(Ordering::Acquire));
        // Counted anew afterwards.
        assert_eq!(EVERY.pass(), None);
        assert_eq!(EVERY.held.load(Ordering::Relaxed), 1);
        assert!(EVERY.due.load(Ordering::Acquire));
    }
}
