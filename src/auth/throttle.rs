//! Repeat offenders: failed logins counted per client address.
//!
//! A token bucket per address (IPv6 per /64, since one host owns a whole /64):
//! each failed attempt takes a token, tokens come back at `max_failures` per
//! `window`. With no token left, the client gets 429 with `Retry-After` before
//! any argon2 work is spent. A verification takes its token up front, and a
//! success gives it back; while an address has none left but some being
//! verified, its next attempts wait for those verdicts rather than get the
//! 429 (see [`NoAttempt::pending`]). A verified-credential cache hit takes none, and
//! from an address the credentials are already known from it does not even
//! look (a hit from another address is refused while that address is
//! throttled: see `Authenticator::answer_hit`), so legitimate clients are
//! not slowed. The map is bounded.

use std::collections::HashMap;
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

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// Attempts taken by [`Throttle::take`] whose verification has not
    /// ended ([`Throttle::ended`]).
    verifying: u32,
    /// Woken when one of them ends, for the attempts that wait for it.
    waiters: Option<Arc<Notify>>,
}

impl Bucket {
    fn full(s: &Settings, now: Instant) -> Self {
        Bucket { tokens: f64::from(s.max_failures), at: now, verifying: 0, waiters: None }
    }

    /// Why there is no attempt left: when one comes back by itself, and
    /// whether some may come back sooner, from attempts being verified.
    fn none_left(&mut self, s: &Settings) -> NoAttempt {
        let pending = (self.verifying > 0).then(|| self.waiters.get_or_insert_with(Default::default).clone());
        NoAttempt { retry_after: Throttle::retry_after(self, s), pending }
    }
}

/// No attempt left for an address.
#[derive(Debug)]
pub struct NoAttempt {
    /// When one comes back by itself.
    pub retry_after: Duration,
    /// Notified when an attempt of the address being verified ends, if any
    /// is: a success gives its attempt back, so those who are refused now
    /// may wait for it instead. (Refused at once, a few users behind one
    /// address who logged in at the same moment, all with their right
    /// passwords, got 429s past `max_failures`: probe 64.)
    pub pending: Option<Arc<Notify>>,
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

    fn refill(b: &mut Bucket, s: &Settings, now: Instant) {
        let rate = f64::from(s.max_failures) / s.window.as_secs_f64().max(0.001);
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(f64::from(s.max_failures));
        b.at = now;
    }

    /// An error when `ip` has no attempt left; takes nothing.
    pub fn check(&self, ip: IpAddr, s: &Settings, now: Instant) -> Result<(), NoAttempt> {
        if !s.enabled {
            return Ok(());
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let Some(b) = map.buckets.get_mut(&client_key(ip)) else { return Ok(()) };
        Self::refill(b, s, now);
        if b.tokens >= 1.0 { Ok(()) } else { Err(b.none_left(s)) }
    }

    fn retry_after(b: &Bucket, s: &Settings) -> Duration {
        let rate = f64::from(s.max_failures) / s.window.as_secs_f64().max(0.001);
        Duration::from_secs_f64(((1.0 - b.tokens) / rate).max(1.0)).min(s.window)
    }

    /// Records a failed attempt that was not taken in advance, in one step
    /// with the look for one left: an error when none is.
    pub fn failed(&self, ip: IpAddr, s: &Settings, now: Instant) -> Result<bool, NoAttempt> {
        self.take_one(ip, s, now, false)
    }

    /// Takes one attempt from `ip`'s bucket before its credentials are
    /// checked; an error when none is left. Taking it up front means a
    /// burst of concurrent attempts cannot all reach argon2 before the
    /// first failure is counted. Give it back with [`Throttle::refund`]
    /// when the attempt did not fail, and say when its verification has
    /// ended, whatever its verdict, with [`Throttle::ended`], if it was
    /// counted (`Ok(true)`: not when throttling is off, or the address is
    /// not tracked).
    pub fn take(&self, ip: IpAddr, s: &Settings, now: Instant) -> Result<bool, NoAttempt> {
        self.take_one(ip, s, now, true)
    }

    fn take_one(&self, ip: IpAddr, s: &Settings, now: Instant, verified: bool) -> Result<bool, NoAttempt> {
        if !s.enabled {
            return Ok(false);
        }
        let key = client_key(ip);
        let mut guard = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let map = &mut *guard;
        if map.buckets.len() >= MAX_TRACKED && !map.buckets.contains_key(&key) {
            if map.swept.is_none_or(|at| now.saturating_duration_since(at) >= SWEEP_EVERY) {
                map.swept = Some(now);
                // Forget addresses whose buckets are full again.
                map.buckets.retain(|_, b| {
                    Self::refill(b, s, now);
                    b.tokens < f64::from(s.max_failures) || b.verifying > 0
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
        let b = map.buckets.entry(key).or_insert_with(|| Bucket::full(s, now));
        Self::refill(b, s, now);
        if b.tokens >= 1.0 {
            b.tokens = (b.tokens - 1.0).max(0.0);
            b.verifying += u32::from(verified);
            Ok(verified)
        } else {
            Err(b.none_left(s))
        }
    }

    /// Gives back an attempt taken by [`Throttle::take`] that succeeded (or
    /// was never checked): successes cost nothing.
    pub fn refund(&self, ip: IpAddr, s: &Settings) {
        if !s.enabled {
            return;
        }
        let key = client_key(ip);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = map.buckets.get_mut(&key) {
            b.tokens += 1.0;
            if b.tokens >= f64::from(s.max_failures) && b.verifying == 0 {
                // Full again: an address that never fails is not tracked.
                map.buckets.remove(&key);
            }
        }
    }

    /// The verification of an attempt counted by [`Throttle::take`] has
    /// ended (after its refund, if it succeeded), or will never run: the
    /// attempts waiting for it look again. With the settings it was taken
    /// under.
    pub fn ended(&self, ip: IpAddr, s: &Settings) {
        let key = client_key(ip);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let Some(b) = map.buckets.get_mut(&key) else { return };
        b.verifying = b.verifying.saturating_sub(1);
        if let Some(waiters) = &b.waiters {
            waiters.notify_waiters();
        }
        if b.verifying == 0 {
            b.waiters = None;
            if b.tokens >= f64::from(s.max_failures) {
                map.buckets.remove(&key);
            }
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
            assert!(t.take(ip, &s, t0).is_ok());
        }
        let retry = t.take(ip, &s, t0).unwrap_err().retry_after;
        assert!(retry >= Duration::from_secs(1) && retry <= Duration::from_secs(10), "{retry:?}");
        assert!(t.take(other, &s, t0).is_ok(), "other addresses are unaffected");
        assert!(t.take(ip, &s, t0 + Duration::from_secs(10)).is_ok(), "a token came back");
    }

    #[test]
    fn successes_are_refunded_and_concurrent_attempts_are_bounded() {
        let s = Settings { max_failures: 2, ..Settings::default() };
        let t = Throttle::new();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let now = Instant::now();
        for _ in 0..10 {
            assert!(t.take(ip, &s, now).is_ok());
            t.refund(ip, &s);
            t.ended(ip, &s);
        }
        assert!(t.map.lock().unwrap().buckets.is_empty(), "an address that never failed is not tracked");
        // Two attempts in flight at once use up the bucket: a third is
        // refused until one of them is refunded, and told to wait for them.
        assert!(t.take(ip, &s, now).is_ok());
        assert!(t.take(ip, &s, now).is_ok());
        let no = t.take(ip, &s, now).unwrap_err();
        let pending = no.pending.expect("attempts are being verified");
        let mut ended = std::pin::pin!(pending.notified());
        ended.as_mut().enable();
        t.refund(ip, &s);
        t.ended(ip, &s);
        assert!(futures_ready(ended.as_mut()), "the end of an attempt wakes those waiting for it");
        assert!(t.take(ip, &s, now).is_ok());
        // Failed, both: none left, and none to wait for.
        t.ended(ip, &s);
        t.ended(ip, &s);
        let no = t.check(ip, &s, now).unwrap_err();
        assert!(no.pending.is_none(), "nothing is being verified");
    }

    /// Whether `f` is ready, polled once.
    fn futures_ready(f: std::pin::Pin<&mut impl std::future::Future>) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        f.poll(&mut cx).is_ready()
    }

    /// A failure not taken in advance (a malformed header) takes its attempt
    /// in the same step as it looks for one, and says when there was none.
    #[test]
    fn a_failure_not_taken_in_advance_is_refused_when_none_is_left() {
        let s = Settings { max_failures: 2, ..Settings::default() };
        let t = Throttle::new();
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let now = Instant::now();
        assert_eq!(t.failed(ip, &s, now).ok(), Some(false), "taken, and not counted as being verified");
        assert!(t.take(ip, &s, now).is_ok());
        let none = t.failed(ip, &s, now).unwrap_err();
        assert!(none.pending.is_some(), "one attempt is being verified: wait for it");
        t.ended(ip, &s);
        assert!(t.failed(ip, &s, now).unwrap_err().pending.is_none());
    }

    /// One attempt taken and failed; whether there was one to take.
    fn fail(t: &Throttle, ip: IpAddr, s: &Settings, now: Instant) -> bool {
        let taken = t.take(ip, s, now).is_ok();
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
        assert!(t.take("2001:db8::1".parse().unwrap(), &s, now).is_ok());
        assert!(t.take("2001:db8::ffff".parse().unwrap(), &s, now).is_err());
        assert!(t.take("2001:db8:0:1::1".parse().unwrap(), &s, now).is_ok());
        let off = Settings { enabled: false, ..s };
        let taken = t.take("2001:db8::1".parse().unwrap(), &off, now);
        assert_eq!(taken.ok(), Some(false), "let through, and not counted as being verified");
    }
}
