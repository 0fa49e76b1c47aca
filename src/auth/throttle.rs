//! Repeat offenders: failed logins counted per client address.
//!
//! A token bucket per address (IPv6 per /64, since one host owns a whole /64):
//! each failed attempt takes a token, tokens come back at `max_failures` per
//! `window`. With no token left, the client gets 429 with `Retry-After` before
//! any argon2 work is spent. A verification takes its token up front, and a
//! success gives it back; while an address has none left but some being
//! verified, its next attempts wait for those verdicts rather than get the
//! 429, first come first served (see [`Throttle::attempt`]). A
//! verified-credential cache hit takes none, and from an address the
//! credentials are already known from it does not even look (a hit from
//! another address is refused while that address is throttled: see
//! `Authenticator::answer_hit`), so legitimate clients are not slowed. The
//! map is bounded.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

const MAX_TRACKED: usize = 100_000;

/// `[auth.throttle]` settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Whether throttling is on.
    pub enabled: bool,
    /// Failed attempts allowed in a burst.
    pub max_failures: u32,
    /// Time in which `max_failures` tokens come back.
    pub window: Duration,
    /// How long a throttled attempt waits before its 429: a flooding client
    /// then gets one answer per connection per `delay`, and its flood stops
    /// taking CPU from everyone else.
    pub delay: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            enabled: true,
            max_failures: 10,
            window: Duration::from_secs(60),
            delay: Duration::from_secs(1),
        }
    }
}

/// What an attempt does with its address's bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Looks for an attempt left, and takes none (a cache hit from an
    /// address the credentials are not known from).
    Look,
    /// Takes one for a failure that needs no verification (a malformed
    /// header).
    Fail,
    /// Takes one for a verification, which says when it has ended with
    /// [`Throttle::ended`], and gives it back with [`Throttle::refund`] if
    /// it did not fail.
    Verify,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// Attempts taken by a [`Use::Verify`] whose verification has not
    /// ended ([`Throttle::ended`]).
    verifying: u32,
    /// The attempts waiting for them, first come first served.
    line: VecDeque<Waiter>,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    turn: Arc<Notify>,
}

impl Bucket {
    fn full(s: &Settings, now: Instant) -> Self {
        Bucket { tokens: f64::from(s.max_failures), at: now, verifying: 0, line: VecDeque::new() }
    }

    /// Tells the waiters whose turn has come: the first in line when an
    /// attempt is left, all of them when none is and none will come back
    /// from a verification (each then gets its 429).
    fn call(&self) {
        if self.tokens >= 1.0 {
            if let Some(first) = self.line.front() {
                first.turn.notify_one();
            }
        } else if self.verifying == 0 {
            for waiter in &self.line {
                waiter.turn.notify_one();
            }
        }
    }

    /// Whether the bucket can be forgotten: full, and nothing in it.
    fn idle(&self, s: &Settings) -> bool {
        self.tokens >= f64::from(s.max_failures) && self.verifying == 0 && self.line.is_empty()
    }

    /// Why a newcomer gets no attempt now.
    fn no_attempt(&self, s: &Settings) -> NoAttempt {
        let pending = self.tokens >= 1.0 || self.verifying > 0;
        NoAttempt { retry_after: Throttle::retry_after(self, s), pending }
    }

    fn leave(&mut self, id: u64) {
        if let Some(at) = self.line.iter().position(|w| w.id == id) {
            self.line.remove(at);
        }
    }
}

/// No attempt left for an address.
#[derive(Debug)]
pub struct NoAttempt {
    /// When one comes back by itself.
    pub retry_after: Duration,
    /// Whether some may come back sooner, from attempts being verified (or
    /// whether others are already waiting for them): a success gives its
    /// attempt back, so those who are refused now may wait for it instead.
    /// (Refused at once, a few users behind one address who logged in at
    /// the same moment, all with their right passwords, got 429s past
    /// `max_failures`: probe 64.)
    pub pending: bool,
}

/// The per-address failure counter.
#[derive(Debug, Default)]
pub struct Throttle {
    map: Mutex<Tracked>,
}

#[derive(Debug, Default)]
struct Tracked {
    buckets: HashMap<IpAddr, Bucket>,
    /// When a full map was last swept for buckets that are full again.
    swept: Option<Instant>,
    /// The id of the next waiter.
    next: u64,
}

/// An attempt's place in its address's line, which it leaves when
/// dropped, also when its client hangs up: the next one's turn then comes.
struct Place<'a> {
    throttle: &'a Throttle,
    key: IpAddr,
    id: u64,
    turn: Arc<Notify>,
    /// Still in the line (not when its turn came).
    queued: bool,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if !self.queued {
            return;
        }
        let mut map = self.throttle.lock();
        if let Some(b) = map.buckets.get_mut(&self.key) {
            b.leave(self.id);
            b.call();
        }
    }
}

/// Least time between two sweeps of a full map: a sweep visits every
/// entry under the lock, and one per attempt from an untracked address
/// (100,000 entries each time) cut a flood's throughput, everyone's logins
/// included, by three quarters.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The unit a client address is counted in: IPv4 addresses one by one
/// (IPv4-mapped IPv6 as IPv4), IPv6 per /64, since one host owns a whole /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl Throttle {
    /// An empty throttle.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tracked> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refill(b: &mut Bucket, s: &Settings, now: Instant) {
        let rate = f64::from(s.max_failures) / s.window.as_secs_f64().max(0.001);
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(f64::from(s.max_failures));
        b.at = now;
    }

    /// An error when `ip` has no attempt left for a newcomer (also when
    /// others wait for one); takes nothing, and does not wait.
    pub fn check(&self, ip: IpAddr, s: &Settings, now: Instant) -> Result<(), NoAttempt> {
        if !s.enabled {
            return Ok(());
        }
        let mut map = self.lock();
        let Some(b) = map.buckets.get_mut(&client_key(ip)) else { return Ok(()) };
        Self::refill(b, s, now);
        if b.tokens >= 1.0 && b.line.is_empty() { Ok(()) } else { Err(b.no_attempt(s)) }
    }

    fn retry_after(b: &Bucket, s: &Settings) -> Duration {
        let rate = f64::from(s.max_failures) / s.window.as_secs_f64().max(0.001);
        Duration::from_secs_f64(((1.0 - b.tokens) / rate).max(1.0)).min(s.window)
    }

    /// An attempt of `ip` for `how`; `Ok(true)` when it was taken for a
    /// verification and counted (not when throttling is off, or the address
    /// is not tracked), which must then say when it has ended
    /// ([`Throttle::ended`]). Taken up front, a burst of concurrent attempts
    /// cannot all reach argon2 before the first failure is counted.
    ///
    /// While the address has none left but some being verified, the attempt
    /// waits for their verdicts (a success gives its attempt back), in line
    /// behind those that came before it: a newcomer does not take one that
    /// came back while others waited for it. (Woken all at once, and
    /// overtaken by newcomers, attempts over capacity waited at random: the
    /// p99 wait was 12.2 s against 5.2 s with the throttle not binding,
    /// probe 67.) Otherwise, with none left, the error is the time until one
    /// comes back by itself.
    pub async fn attempt(&self, how: Use, ip: IpAddr, s: &Settings) -> Result<bool, Duration> {
        let mut place = None;
        loop {
            let retry_after = match self.try_use(how, ip, s, Instant::now(), &mut place) {
                Ok(counted) => return Ok(counted),
                Err(NoAttempt { retry_after, pending }) if !pending => return Err(retry_after),
                Err(NoAttempt { retry_after, .. }) => retry_after,
            };
            // In line now: a turn that came since is kept for it.
            let Some(turn) = place.as_ref().map(|p: &Place<'_>| p.turn.clone()) else {
                return Err(retry_after);
            };
            turn.notified().await;
        }
    }

    /// One look at the bucket for `how`, from `place` in its line if it has
    /// one; an attempt that is to wait gets its place at the end of the line.
    fn try_use<'a>(
        &'a self,
        how: Use,
        ip: IpAddr,
        s: &Settings,
        now: Instant,
        place: &mut Option<Place<'a>>,
    ) -> Result<bool, NoAttempt> {
        if !s.enabled {
            return Ok(false);
        }
        let key = client_key(ip);
        let mut guard = self.lock();
        let map = &mut *guard;
        if !map.buckets.contains_key(&key) {
            if how == Use::Look {
                return Ok(false);
            }
            if map.buckets.len() >= MAX_TRACKED {
                if map.swept.is_none_or(|at| now.saturating_duration_since(at) >= SWEEP_EVERY) {
                    map.swept = Some(now);
                    // Forget addresses whose buckets are full again.
                    map.buckets.retain(|_, b| {
                        Self::refill(b, s, now);
                        !b.idle(s)
                    });
                }
                if map.buckets.len() >= MAX_TRACKED {
                    // Tracking is full of failing addresses: let this one be
                    // checked rather than refuse a client never seen failing.
                    // Its guesses are still bounded by the verification pool
                    // (`verify_threads`, `max_pending`).
                    return Ok(false);
                }
            }
        }
        let b = map.buckets.entry(key).or_insert_with(|| Bucket::full(s, now));
        Self::refill(b, s, now);
        let mine = place.as_ref().map(|p| p.id);
        let first = b.line.front().is_none_or(|w| Some(w.id) == mine);
        if first && b.tokens >= 1.0 {
            if let Some(p) = place.as_mut().filter(|p| p.queued) {
                b.leave(p.id);
                p.queued = false;
            }
            if how != Use::Look {
                b.tokens = (b.tokens - 1.0).max(0.0);
            }
            let counted = how == Use::Verify;
            b.verifying += u32::from(counted);
            b.call();
            return Ok(counted);
        }
        let refused = b.no_attempt(s);
        if !refused.pending {
            if let Some(p) = place.as_mut().filter(|p| p.queued) {
                b.leave(p.id);
                p.queued = false;
            }
            return Err(refused);
        }
        // Its turn will come: in line, if it is not yet.
        match place {
            Some(p) if b.line.iter().any(|w| w.id == p.id) => {}
            Some(p) => {
                b.line.push_back(Waiter { id: p.id, turn: p.turn.clone() });
                p.queued = true;
            }
            None => {
                let id = map.next;
                map.next += 1;
                let turn = Arc::new(Notify::new());
                b.line.push_back(Waiter { id, turn: turn.clone() });
                *place = Some(Place { throttle: self, key, id, turn, queued: true });
            }
        }
        Err(refused)
    }

    /// Gives back an attempt taken for a verification that succeeded (or
    /// was never checked): successes cost nothing.
    pub fn refund(&self, ip: IpAddr, s: &Settings) {
        if !s.enabled {
            return;
        }
        let key = client_key(ip);
        let mut map = self.lock();
        if let Some(b) = map.buckets.get_mut(&key) {
            b.tokens += 1.0;
            b.call();
            if b.idle(s) {
                // Full again: an address that never fails is not tracked.
                map.buckets.remove(&key);
            }
        }
    }

    /// The verification of an attempt counted for [`Use::Verify`] has
    /// ended (after its refund, if it succeeded), or will never run: the
    /// attempts waiting for it look again. With the settings it was taken
    /// under.
    pub fn ended(&self, ip: IpAddr, s: &Settings) {
        let key = client_key(ip);
        let mut map = self.lock();
        let Some(b) = map.buckets.get_mut(&key) else { return };
        b.verifying = b.verifying.saturating_sub(1);
        b.call();
        if b.idle(s) {
            map.buckets.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_burst_and_recovers() {
        let s = Settings { max_failures: 3, window: Duration::from_secs(30), ..Settings::default() };
        let t = Throttle::new();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(take(&t, ip, &s, t0).is_ok());
        }
        let retry = take(&t, ip, &s, t0).unwrap_err().retry_after;
        assert!(retry >= Duration::from_secs(1) && retry <= Duration::from_secs(10), "{retry:?}");
        assert!(take(&t, other, &s, t0).is_ok(), "other addresses are unaffected");
        assert!(take(&t, ip, &s, t0 + Duration::from_secs(10)).is_ok(), "a token came back");
    }

    #[test]
    fn successes_are_refunded_and_concurrent_attempts_are_bounded() {
        let s = Settings { max_failures: 2, ..Settings::default() };
        let t = Throttle::new();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let now = Instant::now();
        for _ in 0..10 {
            assert!(take(&t, ip, &s, now).is_ok());
            t.refund(ip, &s);
            t.ended(ip, &s);
        }
        assert!(t.map.lock().unwrap().buckets.is_empty(), "an address that never failed is not tracked");
        // Two attempts in flight at once use up the bucket: a third is
        // refused until one of them is refunded, and told to wait for them.
        assert!(take(&t, ip, &s, now).is_ok());
        assert!(take(&t, ip, &s, now).is_ok());
        assert!(take(&t, ip, &s, now).unwrap_err().pending, "attempts are being verified");
        let mut third = std::pin::pin!(t.attempt(Use::Verify, ip, &s));
        assert!(poll(third.as_mut()).is_none(), "it waits for them");
        t.refund(ip, &s);
        t.ended(ip, &s);
        assert_eq!(poll(third.as_mut()), Some(Ok(true)), "the end of an attempt wakes those waiting for it");
        // Failed, both: none left, and none to wait for.
        t.ended(ip, &s);
        t.ended(ip, &s);
        let no = t.check(ip, &s, now).unwrap_err();
        assert!(!no.pending, "nothing is being verified");
    }

    /// What `f` gives, polled once, if it is ready.
    fn poll<T>(f: std::pin::Pin<&mut impl std::future::Future<Output = T>>) -> Option<T> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match f.poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }

    /// An attempt for a verification by a newcomer, which does not wait.
    fn take(t: &Throttle, ip: IpAddr, s: &Settings, now: Instant) -> Result<bool, NoAttempt> {
        t.try_use(Use::Verify, ip, s, now, &mut None)
    }

    /// An attempt for a failure by a newcomer, which does not wait.
    fn failed(t: &Throttle, ip: IpAddr, s: &Settings, now: Instant) -> Result<bool, NoAttempt> {
        t.try_use(Use::Fail, ip, s, now, &mut None)
    }

    /// Attempts that wait take their turns in the order they came, whatever
    /// they are for and whoever looks first when one comes back: not a
    /// newcomer, and not one further back in line.
    #[test]
    fn waiters_take_their_turns_first_come_first_served() {
        let s = Settings { max_failures: 1, ..Settings::default() };
        let t = Throttle::new();
        let ip: IpAddr = "192.0.2.3".parse().unwrap();
        let now = Instant::now();
        assert_eq!(take(&t, ip, &s, now).ok(), Some(true));
        let mut first = std::pin::pin!(t.attempt(Use::Verify, ip, &s));
        let mut second = std::pin::pin!(t.attempt(Use::Look, ip, &s));
        let mut third = std::pin::pin!(t.attempt(Use::Fail, ip, &s));
        assert!(
            poll(first.as_mut()).is_none()
                && poll(second.as_mut()).is_none()
                && poll(third.as_mut()).is_none()
        );
        t.refund(ip, &s);
        t.ended(ip, &s);
        assert!(take(&t, ip, &s, now).unwrap_err().pending, "a newcomer waits behind them");
        assert!(t.check(ip, &s, now).unwrap_err().pending);
        assert!(poll(third.as_mut()).is_none() && poll(second.as_mut()).is_none(), "not their turn");
        assert_eq!(poll(first.as_mut()), Some(Ok(true)));
        assert!(poll(third.as_mut()).is_none() && poll(second.as_mut()).is_none(), "none left");
        t.refund(ip, &s);
        t.ended(ip, &s);
        assert!(poll(third.as_mut()).is_none(), "not its turn");
        assert_eq!(poll(second.as_mut()), Some(Ok(false)), "a look takes none");
        assert_eq!(poll(third.as_mut()), Some(Ok(false)), "taken, and not counted as being verified");
        assert!(!t.check(ip, &s, now).unwrap_err().pending, "none left, and nothing being verified");
    }

    /// An attempt whose client hangs up while it waits leaves the line, and
    /// passes its turn on if it had come; when none is left and nothing is
    /// being verified, everyone in line gets the time until one comes back.
    #[test]
    fn a_waiter_that_leaves_passes_its_turn_on() {
        let s = Settings { max_failures: 1, ..Settings::default() };
        let t = Throttle::new();
        let ip: IpAddr = "192.0.2.4".parse().unwrap();
        let now = Instant::now();
        assert_eq!(take(&t, ip, &s, now).ok(), Some(true));
        let mut first = Box::pin(t.attempt(Use::Verify, ip, &s));
        let mut second = Box::pin(t.attempt(Use::Verify, ip, &s));
        let mut third = Box::pin(t.attempt(Use::Verify, ip, &s));
        let mut fourth = Box::pin(t.attempt(Use::Verify, ip, &s));
        for f in [&mut first, &mut second, &mut third, &mut fourth] {
            assert!(poll(f.as_mut()).is_none());
        }
        drop(second);
        t.refund(ip, &s);
        t.ended(ip, &s);
        drop(first);
        assert_eq!(poll(third.as_mut()), Some(Ok(true)), "its turn came when the first left");
        // Failed: none left, nothing being verified.
        t.ended(ip, &s);
        let retry_after = poll(fourth.as_mut()).and_then(Result::err);
        assert!(retry_after.is_some_and(|d| d >= Duration::from_secs(1)), "{retry_after:?}");
        drop(fourth);
        let tracked = t.map.lock().unwrap();
        assert!(tracked.buckets.values().all(|b| b.line.is_empty()), "nobody is left in line");
    }

    /// A failure not taken in advance (a malformed header) takes its attempt
    /// in the same step as it looks for one, and says when there was none.
    #[test]
    fn a_failure_not_taken_in_advance_is_refused_when_none_is_left() {
        let s = Settings { max_failures: 2, ..Settings::default() };
        let t = Throttle::new();
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let now = Instant::now();
        assert_eq!(failed(&t, ip, &s, now).ok(), Some(false), "taken, and not counted as being verified");
        assert!(take(&t, ip, &s, now).is_ok());
        let none = failed(&t, ip, &s, now).unwrap_err();
        assert!(none.pending, "one attempt is being verified: wait for it");
        t.ended(ip, &s);
        assert!(!failed(&t, ip, &s, now).unwrap_err().pending);
    }

    /// One attempt taken and failed; whether there was one to take.
    fn fail(t: &Throttle, ip: IpAddr, s: &Settings, now: Instant) -> bool {
        let taken = take(t, ip, s, now).is_ok();
        if taken {
            t.ended(ip, s);
        }
        taken
    }

    #[test]
    fn a_full_map_is_swept_at_most_once_a_second() {
        let s = Settings { max_failures: 1, window: Duration::from_secs(3600), ..Settings::default() };
        let t = Throttle::new();
        let now = Instant::now();
        for i in 0..MAX_TRACKED as u32 {
            assert!(fail(&t, IpAddr::from((0x0a00_0000 + i).to_be_bytes()), &s, now));
        }
        // Full of failing addresses: a new one is let through, untracked,
        // and the sweep that found nothing to forget is not repeated for
        // the next ones (each went through all 100,000 entries).
        let new: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(fail(&t, new, &s, now));
        assert_eq!(t.map.lock().unwrap().swept, Some(now));
        assert!(fail(&t, new, &s, now + Duration::from_millis(500)));
        assert_eq!(t.map.lock().unwrap().swept, Some(now), "no second sweep within a second");
        // Later, once buckets are full again, a sweep frees room and new
        // addresses are tracked (and throttled) again.
        let later = now + Duration::from_secs(3601);
        assert!(fail(&t, new, &s, later));
        assert_eq!(t.map.lock().unwrap().buckets.len(), 1);
        assert!(!fail(&t, new, &s, later), "tracked again");
    }

    #[test]
    fn ipv6_counts_per_64_and_disabled_never_blocks() {
        let s = Settings { max_failures: 1, ..Settings::default() };
        let t = Throttle::new();
        let now = Instant::now();
        assert!(take(&t, "2001:db8::1".parse().unwrap(), &s, now).is_ok());
        assert!(take(&t, "2001:db8::ffff".parse().unwrap(), &s, now).is_err());
        assert!(take(&t, "2001:db8:0:1::1".parse().unwrap(), &s, now).is_ok());
        let off = Settings { enabled: false, ..s };
        let taken = take(&t, "2001:db8::1".parse().unwrap(), &off, now);
        assert_eq!(taken.ok(), Some(false), "let through, and not counted as being verified");
    }
}
