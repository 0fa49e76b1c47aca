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

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// The attempts waiting for one, first come first served: by id, ids
    /// being handed out in the order attempts come. (A map, so that one
    /// that leaves from the middle costs no scan of the line, and an
    /// emptied line keeps no memory.)
    line: BTreeMap<u64, Arc<Notify>>,
}

impl Bucket {
    fn full(s: &Settings, now: Instant) -> Self {
        Bucket { tokens: f64::from(s.max_failures), at: now, verifying: 0, line: BTreeMap::new() }
    }

    /// Tells the waiters to look again after a change: all of them when
    /// there is none left and none will come back from a verification
    /// (each then gets its 429, unless one has come back with time since
    /// the bucket was last refilled), otherwise the first in line, which
    /// takes one if there is one, or else waits for one as the first.
    fn call(&self) {
        if self.tokens < 1.0 && self.verifying == 0 {
            for turn in self.line.values() {
                turn.notify_one();
            }
        } else if let Some((_, first)) = self.line.first_key_value() {
            first.notify_one();
        }
    }

    /// Whether the bucket can be forgotten: full, and nothing in it.
    fn idle(&self, max_failures: u32) -> bool {
        self.tokens >= f64::from(max_failures) && self.verifying == 0 && self.line.is_empty()
    }

    /// Why a newcomer gets no attempt now.
    fn no_attempt(&self, s: &Settings) -> NoAttempt {
        let pending = self.tokens >= 1.0 || self.verifying > 0;
        NoAttempt { retry_after: Throttle::retry_after(self, s), pending }
    }

    /// The time until an attempt comes back by itself.
    fn refilled_in(&self, s: &Settings) -> Duration {
        let rate = f64::from(s.max_failures) / s.window.as_secs_f64().max(0.001);
        Duration::from_secs_f64(((1.0 - self.tokens) / rate).max(0.001)).min(s.window)
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
    /// Attempts in the lines of all addresses, for the gauge.
    waiting: AtomicUsize,
    /// Told when a reload turns throttling off: attempts already refused
    /// and held in the tarpit are let through then ([`Throttle::turned_off`]).
    off: Notify,
}

#[derive(Debug, Default)]
struct Tracked {
    buckets: HashMap<IpAddr, Bucket>,
    /// When a full map was last swept for buckets that are full again.
    swept: Option<Instant>,
    /// The id of the next waiter.
    next: u64,
    /// The settings of the last reload, if any: an attempt that has waited
    /// looks again under them, not under those it came with.
    live: Option<Settings>,
}

/// An attempt's place in its address's line, which it leaves when
/// dropped, also when its client hangs up: the next one's turn then comes.
struct Place<'a> {
    throttle: &'a Throttle,
    key: IpAddr,
    id: u64,
    turn: Arc<Notify>,
    /// In the line: not once the attempt has left it, with an attempt or
    /// with the time until one comes back.
    queued: bool,
    /// The time until an attempt comes back by itself, when this one is
    /// the first in line and there is none left: it looks again then, if
    /// no verification has ended before.
    refilled_in: Option<Duration>,
    /// The settings' `max_failures`, to tell whether the bucket is left
    /// idle when the attempt leaves.
    max_failures: u32,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if !self.queued {
            return;
        }
        let mut map = self.throttle.lock();
        if let Some(b) = map.buckets.get_mut(&self.key) {
            self.throttle.left(b, self.id);
            b.call();
            if b.idle(self.max_failures) {
                map.buckets.remove(&self.key);
            }
        }
    }
}

/// Least time between two sweeps of a full map: a sweep visits every
/// entry under the lock, and one per attempt from an untracked address
/// (100,000 entries each time) cut a flood's throughput, everyone's logins
/// included, by three quarters.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The unit a client address is counted in: IPv4 addresses one by one,
/// IPv6 per /64, since one host owns a whole /64.
///
/// An IPv6 address that names an IPv4 host is that IPv4 address: mapped
/// (`::ffff:a.b.c.d`), and the forms a translator in front of authgate
/// gives its IPv4 clients (NAT64 `64:ff9b::a.b.c.d`, SIIT
/// `::ffff:0:a.b.c.d`, compatible `::a.b.c.d`; see
/// [`embedded_v4`](crate::policy::egress::embedded_v4)). Each address of
/// such a prefix is another host: per /64, a whole translator's IPv4
/// clients shared one throttle bucket and one connection limit (probe 207).
/// A 6to4 prefix (`2002:aabb:ccdd::/48`) is one site's, with /64s of its
/// own, and is counted as other IPv6 is.
pub fn client_key(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    let s = v6.segments();
    let v4 = match v6.to_ipv4_mapped() {
        Some(v4) => Some(v4),
        None if s[0] == 0x2002 => None,
        None => crate::policy::egress::embedded_v4(ip),
    };
    match v4 {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0)),
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

    /// An error when `ip` has no attempt left; takes nothing, and does not
    /// wait.
    pub fn check(&self, ip: IpAddr, s: &Settings, now: Instant) -> Result<(), NoAttempt> {
        if !s.enabled {
            return Ok(());
        }
        let mut map = self.lock();
        let Some(b) = map.buckets.get_mut(&client_key(ip)) else { return Ok(()) };
        Self::refill(b, s, now);
        if b.tokens >= 1.0 { Ok(()) } else { Err(b.no_attempt(s)) }
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
    /// waits for their verdicts (a success gives its attempt back), or for
    /// one to come back with time, in line behind those that came before
    /// it: a newcomer does not take one that came back while others waited
    /// for it. (Woken all at once, and overtaken by newcomers, attempts over
    /// capacity waited at random: the p99 wait was 12.2 s against 5.2 s with
    /// the throttle not binding, probe 67.) A [`Use::Look`] that finds one
    /// there goes at once, since it takes none; one that has to wait waits
    /// its turn as any other. Otherwise, with none left, the error is the
    /// time until one comes back by itself.
    pub async fn attempt(&self, how: Use, ip: IpAddr, s: &Settings) -> Result<bool, Duration> {
        let mut place = None;
        let mut settings = *s;
        loop {
            let refused = match self.try_use(how, ip, &settings, Instant::now(), &mut place) {
                Ok(counted) => return Ok(counted),
                Err(refused) => refused,
            };
            let Some(p) = place.as_ref().filter(|_| refused.pending) else {
                return Err(refused.retry_after);
            };
            // In line now: a turn that came since is kept for it.
            let (turn, refilled_in) = (p.turn.clone(), p.refilled_in);
            match refilled_in {
                Some(refilled_in) => {
                    tokio::select! {
                        () = turn.notified() => {}
                        () = tokio::time::sleep(refilled_in) => {}
                    }
                }
                None => turn.notified().await,
            }
            // A reload while it waited applies to it: throttling turned off
            // lets those already in line through, and new `max_failures` or
            // `window` set the pace at which attempts come back to them.
            // (They were answered under the settings they came with: a 429
            // after throttling was turned off, probe 70.)
            settings = self.lock().live.unwrap_or(*s);
        }
    }

    /// `id` leaves `b`'s line.
    fn left(&self, b: &mut Bucket, id: u64) {
        if b.line.remove(&id).is_some() {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Attempts waiting in the lines of all addresses now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Settings a reload made live in place of `old`, at `now`: the
    /// attempts waiting in line look again under them.
    ///
    /// The time that passed before the reload gives attempts back at the
    /// old rate, counted here, and only the time after it at the new one:
    /// an address keeps what it had earned. (A bucket is refilled when it
    /// is next used, and that counted all the time since its last use at
    /// the new rate: 25 s of a 3-in-30s window, worth 2.5 attempts, was
    /// worth none after a reload to 3 in 3000 s; probe 283.)
    pub fn reconfigure(&self, old: &Settings, s: &Settings, now: Instant) {
        let mut map = self.lock();
        map.live = Some(*s);
        let repriced = (old.max_failures, old.window) != (s.max_failures, s.window);
        for b in map.buckets.values_mut() {
            if repriced {
                Self::refill(b, old, now);
            }
            for turn in b.line.values() {
                turn.notify_one();
            }
        }
        drop(map);
        if !s.enabled {
            self.off.notify_waiters();
        }
    }

    /// Resolves once a reload has turned throttling off: at once if the
    /// last reload did. (Registered before it looks, so a reload between
    /// the two is not missed: [`Throttle::reconfigure`] records the
    /// settings before it tells.)
    pub async fn turned_off(&self) {
        let told = self.off.notified();
        tokio::pin!(told);
        told.as_mut().enable();
        if self.lock().live.is_some_and(|s| !s.enabled) {
            return;
        }
        told.await;
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
                        !b.idle(s.max_failures)
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
        let first = b.line.first_key_value().is_none_or(|(&id, _)| Some(id) == mine);
        if b.tokens >= 1.0 && (first || how == Use::Look) {
            if let Some(p) = place.as_mut().filter(|p| p.queued) {
                self.left(b, p.id);
                p.queued = false;
            }
            if how != Use::Look {
                b.tokens = (b.tokens - 1.0).max(0.0);
            }
            let counted = how == Use::Verify;
            b.verifying += u32::from(counted);
            b.call();
            if b.idle(s.max_failures) {
                map.buckets.remove(&key);
            }
            return Ok(counted);
        }
        let refused = b.no_attempt(s);
        if !refused.pending {
            if let Some(p) = place.as_mut().filter(|p| p.queued) {
                self.left(b, p.id);
                p.queued = false;
            }
            return Err(refused);
        }
        if b.tokens >= 1.0 {
            // There is one, and it is the first in line's: make sure it
            // knows (it came back with time, which wakes no one).
            b.call();
        }
        // Its turn will come: in line, if it is not yet.
        let place = match place {
            Some(p) => p,
            None => {
                let id = map.next;
                map.next += 1;
                let turn = Arc::new(Notify::new());
                let max_failures = s.max_failures;
                place.insert(Place {
                    throttle: self,
                    key,
                    id,
                    turn,
                    queued: false,
                    refilled_in: None,
                    max_failures,
                })
            }
        };
        if !place.queued {
            b.line.insert(place.id, place.turn.clone());
            self.waiting.fetch_add(1, Ordering::Relaxed);
            place.queued = true;
        }
        place.max_failures = s.max_failures;
        let first = b.line.first_key_value().is_some_and(|(&id, _)| id == place.id);
        place.refilled_in = (first && b.tokens < 1.0).then(|| b.refilled_in(s));
        Err(refused)
    }

    /// Gives back an attempt taken for a verification that succeeded (or
    /// was never checked): successes cost nothing.
    pub fn refund(&self, ip: IpAddr, s: &Settings) {
        self.give_back(ip, s, u32::MAX);
    }

    /// Gives back an attempt refused for overload, unless other
    /// verifications of its address are under way: an address that sends
    /// more at once than the queue holds spends those refused, and reaches
    /// its 429s. (Given back, they were taken again at once: one address
    /// flooding wrong passwords got about 15,000 503s a second and kept
    /// the queue, and every other address's logins, full, while
    /// `max_pending` + `verify_threads` < `max_failures`; probe 142.)
    pub fn refund_overloaded(&self, ip: IpAddr, s: &Settings) {
        self.give_back(ip, s, 1);
    }

    /// Gives back an attempt if at most `verifying` of its address's are
    /// being verified (its own included).
    fn give_back(&self, ip: IpAddr, s: &Settings, verifying: u32) {
        if !s.enabled {
            return;
        }
        let key = client_key(ip);
        let mut map = self.lock();
        if let Some(b) = map.buckets.get_mut(&key)
            && b.verifying <= verifying
        {
            b.tokens += 1.0;
            b.call();
            if b.idle(s.max_failures) {
                // Full again: an address that never fails is not tracked.
                map.buckets.remove(&key);
            }
        }
    }

    /// The verification of an attempt counted for [`Use::Verify`] has
    /// ended (after its refund, if it succeeded), or will never run: the
    /// attempts waiting for it are told (see `Bucket::call`). With the
    /// settings it was taken under.
    pub fn ended(&self, ip: IpAddr, s: &Settings) {
        let key = client_key(ip);
        let mut map = self.lock();
        let Some(b) = map.buckets.get_mut(&key) else { return };
        b.verifying = b.verifying.saturating_sub(1);
        b.call();
        if b.idle(s.max_failures) {
            map.buckets.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IPv4 hosts count one by one in every IPv6 form that names one, IPv6
    /// hosts per /64 (6to4 included, a site's prefix).
    #[test]
    fn clients_are_counted_per_ipv4_host_and_per_ipv6_64() {
        let key = |s: &str| client_key(s.parse().unwrap()).to_string();
        for (addr, counted_as) in [
            ("203.0.113.7", "203.0.113.7"),
            ("::ffff:203.0.113.7", "203.0.113.7"),
            ("64:ff9b::203.0.113.7", "203.0.113.7"),
            ("64:ff9b::203.0.113.8", "203.0.113.8"),
            ("::ffff:0:203.0.113.9", "203.0.113.9"),
            ("::203.0.113.10", "203.0.113.10"),
            ("::1", "::"),
            ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::"),
            ("2001:db8:1:2::7", "2001:db8:1:2::"),
            ("2002:cb00:7107:1::1", "2002:cb00:7107:1::"),
            ("2002:cb00:7107:1::2", "2002:cb00:7107:1::"),
        ] {
            assert_eq!(key(addr), counted_as, "{addr}");
        }
    }

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
        let rt = runtime();
        let _rt = rt.enter();
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

    /// An attempt refused for overload comes back only to an address with
    /// no other verification under way: one that sends more than the queue
    /// holds spends what it sent past it.
    #[test]
    fn an_overload_gives_the_attempt_back_only_to_an_address_verifying_nothing_else() {
        let rt = runtime();
        let _rt = rt.enter();
        let s = Settings { max_failures: 3, ..Settings::default() };
        let t = Throttle::new();
        let ip: IpAddr = "192.0.2.8".parse().unwrap();
        let now = Instant::now();
        assert!(take(&t, ip, &s, now).is_ok());
        assert!(take(&t, ip, &s, now).is_ok());
        // The second is refused for overload while the first is verified:
        // spent.
        t.refund_overloaded(ip, &s);
        t.ended(ip, &s);
        assert!(take(&t, ip, &s, now).is_ok(), "the third");
        assert!(take(&t, ip, &s, now).unwrap_err().pending, "none left");
        // The first fails; the third, alone now, is refused for overload:
        // given back.
        t.ended(ip, &s);
        t.refund_overloaded(ip, &s);
        t.ended(ip, &s);
        assert!(take(&t, ip, &s, now).is_ok(), "the third's, given back");
        t.ended(ip, &s);
        assert!(!t.check(ip, &s, now).unwrap_err().pending, "none left, none to wait for");
    }

    /// What `f` gives, polled once, if it is ready.
    fn poll<T>(f: std::pin::Pin<&mut (impl std::future::Future<Output = T> + ?Sized)>) -> Option<T> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match f.poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }

    /// An attempt for a verification by a newcomer that does not stay:
    /// refused, it leaves at once (from the line, if it joined it).
    fn take(t: &Throttle, ip: IpAddr, s: &Settings, now: Instant) -> Result<bool, NoAttempt> {
        t.try_use(Use::Verify, ip, s, now, &mut None)
    }

    /// An attempt for a failure by a newcomer that does not stay.
    fn failed(t: &Throttle, ip: IpAddr, s: &Settings, now: Instant) -> Result<bool, NoAttempt> {
        t.try_use(Use::Fail, ip, s, now, &mut None)
    }

    /// A runtime for the timer of the first in line, whose futures the
    /// tests poll by hand (its time does not pass by itself).
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap()
    }

    /// Attempts that wait take their turns in the order they came, whatever
    /// they are for and whoever looks first when one comes back: not a
    /// newcomer, and not one further back in line. A look that finds one
    /// there goes at once: it takes none.
    #[test]
    fn waiters_take_their_turns_first_come_first_served() {
        let rt = runtime();
        let _rt = rt.enter();
        let s = Settings { max_failures: 1, ..Settings::default() };
        let t = Throttle::new();
        let ip: IpAddr = "192.0.2.3".parse().unwrap();
        let now = Instant::now();
        assert_eq!(take(&t, ip, &s, now).ok(), Some(true));
        let mut first = std::pin::pin!(t.attempt(Use::Verify, ip, &s));
        let mut second = std::pin::pin!(t.attempt(Use::Fail, ip, &s));
        let mut third = std::pin::pin!(t.attempt(Use::Verify, ip, &s));
        assert!(
            poll(first.as_mut()).is_none()
                && poll(second.as_mut()).is_none()
                && poll(third.as_mut()).is_none()
        );
        t.refund(ip, &s);
        t.ended(ip, &s);
        assert!(take(&t, ip, &s, now).unwrap_err().pending, "a newcomer waits behind them");
        assert!(poll(third.as_mut()).is_none() && poll(second.as_mut()).is_none(), "not their turn");
        let mut newcomer = std::pin::pin!(t.attempt(Use::Look, ip, &s));
        assert_eq!(poll(newcomer.as_mut()), Some(Ok(false)), "a look takes none: it need not wait");
        assert_eq!(poll(first.as_mut()), Some(Ok(true)));
        assert!(poll(third.as_mut()).is_none() && poll(second.as_mut()).is_none(), "none left");
        t.refund(ip, &s);
        t.ended(ip, &s);
        assert!(poll(third.as_mut()).is_none(), "not its turn");
        assert_eq!(poll(second.as_mut()), Some(Ok(false)), "taken, and not counted as being verified");
        let retry_after = poll(third.as_mut()).and_then(Result::err);
        assert!(
            retry_after.is_some(),
            "none left, and nothing being verified: the time until one comes back"
        );
        assert!(!t.check(ip, &s, now).unwrap_err().pending);
    }

    /// A bucket left full and empty by the last attempt in its line is
    /// forgotten, as one left so by a refund or an end: whether that
    /// attempt got its turn or hung up.
    #[test]
    fn a_bucket_its_line_leaves_idle_is_forgotten() {
        let rt = runtime();
        let _rt = rt.enter();
        let s = Settings { max_failures: 1, ..Settings::default() };
        let t = Throttle::new();
        let ip: IpAddr = "192.0.2.5".parse().unwrap();
        for hang_up in [false, true] {
            assert_eq!(take(&t, ip, &s, Instant::now()).ok(), Some(true));
            let mut waiter = Box::pin(t.attempt(Use::Look, ip, &s));
            assert!(poll(waiter.as_mut()).is_none());
            t.refund(ip, &s);
            t.ended(ip, &s);
            if hang_up {
                drop(waiter);
            } else {
                assert_eq!(poll(waiter.as_mut()), Some(Ok(false)));
            }
            assert!(t.lock().buckets.is_empty(), "an address that never failed is not tracked");
        }
    }

    /// An attempt that comes back with time, while the attempts being
    /// verified have not ended (they may wait long for a worker), goes to
    /// the first in line: at once if a newcomer sees it, else when it is
    /// due (nothing wakes the line then).
    #[test]
    fn an_attempt_that_comes_back_with_time_goes_to_the_first_in_line() {
        let s = Settings { max_failures: 1, window: Duration::from_millis(50), ..Settings::default() };
        let t = Throttle::new();
        let ip: IpAddr = "192.0.2.6".parse().unwrap();
        let rt = runtime();
        rt.block_on(async {
            assert_eq!(take(&t, ip, &s, Instant::now()).ok(), Some(true), "being verified, for good");
            let mut waiter = Box::pin(t.attempt(Use::Verify, ip, &s));
            assert!(poll(waiter.as_mut()).is_none());
            std::thread::sleep(Duration::from_millis(100));
            let mut newcomer = Box::pin(t.attempt(Use::Verify, ip, &s));
            assert!(poll(newcomer.as_mut()).is_none(), "behind the line");
            assert_eq!(poll(waiter.as_mut()), Some(Ok(true)), "told by the newcomer");
            // The newcomer is first now, and nothing will end: it takes the
            // next one when it comes back.
            let got = tokio::time::timeout(Duration::from_secs(10), newcomer).await;
            assert_eq!(got.ok(), Some(Ok(true)));
        });
    }

    type Waiting<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool, Duration>> + 'a>>;

    /// Random sequences of attempts (for each use, under settings that
    /// change between them as a reload changes them), polls in any order,
    /// hang-ups (also between a waiter's wake and its look), refunds and
    /// ends: attempts that take one come in the order they came; whenever
    /// nothing is being verified, nobody is left waiting; at the end
    /// nothing is left in the throttle. (Review 69's test.)
    #[test]
    fn random_sequences_never_strand_a_waiter() {
        const SETTINGS: [Settings; 5] = [
            Settings {
                enabled: true,
                max_failures: 1,
                window: Duration::from_secs(3600),
                delay: Duration::ZERO,
            },
            Settings {
                enabled: true,
                max_failures: 2,
                window: Duration::from_secs(3600),
                delay: Duration::ZERO,
            },
            Settings {
                enabled: true,
                max_failures: 3,
                window: Duration::from_secs(3600),
                delay: Duration::ZERO,
            },
            Settings {
                enabled: false,
                max_failures: 1,
                window: Duration::from_secs(3600),
                delay: Duration::ZERO,
            },
            Settings {
                enabled: true,
                max_failures: 1,
                window: Duration::from_millis(1),
                delay: Duration::ZERO,
            },
        ];
        let rt = runtime();
        let _rt = rt.enter();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let ip: IpAddr = "192.0.2.50".parse().unwrap();
        for round in 0..20_000 {
            let t = Throttle::new();
            // (the attempt, its use, the order it came in, its settings)
            let mut waiters: Vec<(Waiting<'_>, Use, usize, usize)> = Vec::new();
            let mut counted: Vec<usize> = Vec::new();
            let mut came = 0;
            // Polls the waiters at `at` (all, if `None`), in their order in
            // `waiters`; whether any of them moved.
            let look = |waiters: &mut Vec<(Waiting<'_>, Use, usize, usize)>,
                        counted: &mut Vec<usize>,
                        pick: &mut dyn FnMut() -> bool| {
                let mut moved = false;
                let mut i = 0;
                while i < waiters.len() {
                    if !pick() {
                        i += 1;
                        continue;
                    }
                    let Some(got) = poll(waiters[i].0.as_mut()) else {
                        i += 1;
                        continue;
                    };
                    let (_, how, order, si) = waiters.remove(i);
                    if got.is_ok() && how != Use::Look {
                        let first = waiters.iter().all(|w| w.2 > order || w.1 == Use::Look);
                        assert!(first || !SETTINGS[si].enabled, "round {round}: out of turn");
                    }
                    if got == Ok(true) {
                        counted.push(si);
                    }
                    moved = true;
                }
                moved
            };
            for _ in 0..40 {
                match rnd(10) {
                    0..=4 => {
                        let how = [Use::Look, Use::Fail, Use::Verify, Use::Verify, Use::Verify][rnd(5)];
                        let si = rnd(SETTINGS.len());
                        let mut attempt: Waiting<'_> = Box::pin(t.attempt(how, ip, &SETTINGS[si]));
                        match poll(attempt.as_mut()) {
                            Some(got) => {
                                let overtook = got.is_ok() && how != Use::Look && SETTINGS[si].enabled;
                                assert!(
                                    !overtook || waiters.is_empty(),
                                    "round {round}: a newcomer overtook the line"
                                );
                                if got == Ok(true) {
                                    counted.push(si);
                                }
                            }
                            None => {
                                came += 1;
                                waiters.push((attempt, how, came, si));
                            }
                        }
                    }
                    5 | 6 if !waiters.is_empty() => {
                        drop(waiters.remove(rnd(waiters.len())));
                    }
                    7 | 8 if !counted.is_empty() => {
                        let si = counted.remove(rnd(counted.len()));
                        if rnd(10) < 7 {
                            t.refund(ip, &SETTINGS[si]);
                        }
                        t.ended(ip, &SETTINGS[si]);
                    }
                    _ => {}
                }
                // Some of them only, in any order.
                for i in (1..waiters.len()).rev() {
                    waiters.swap(i, rnd(i + 1));
                }
                look(&mut waiters, &mut counted, &mut || rnd(2) == 0);
                if rnd(3) != 0 {
                    continue;
                }
                while look(&mut waiters, &mut counted, &mut || true) {}
                let line = t.lock().buckets.get(&ip).map_or(0, |b| b.line.len());
                assert_eq!(line, waiters.len(), "round {round}: the line and the waiters disagree");
                if t.lock().buckets.get(&ip).is_none_or(|b| b.verifying == 0) && !waiters.is_empty() {
                    // Only the 1 ms window's refill can still be owed.
                    std::thread::sleep(Duration::from_millis(2));
                    while look(&mut waiters, &mut counted, &mut || true) {}
                    let verifying = t.lock().buckets.get(&ip).map_or(0, |b| b.verifying);
                    assert!(
                        verifying > 0 || waiters.is_empty(),
                        "round {round}: stranded with nothing verified"
                    );
                }
            }
            // Everything ends; the line drains.
            loop {
                while look(&mut waiters, &mut counted, &mut || true) {}
                if let Some(si) = counted.pop() {
                    t.ended(ip, &SETTINGS[si]);
                    continue;
                }
                if waiters.is_empty() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
                while look(&mut waiters, &mut counted, &mut || true) {}
                assert!(!counted.is_empty() || waiters.is_empty(), "round {round}: stuck at the end");
            }
            let map = t.lock();
            assert!(map.buckets.values().all(|b| b.verifying == 0 && b.line.is_empty()), "round {round}");
        }
    }

    /// A reload reaches the attempts already waiting in line: throttling
    /// turned off lets them through at once, and a shorter `window` brings
    /// the next attempt back sooner.
    #[test]
    fn a_reload_reaches_the_attempts_waiting_in_line() {
        let s = Settings { max_failures: 1, window: Duration::from_secs(3600), ..Settings::default() };
        let t = Throttle::new();
        let ip: IpAddr = "192.0.2.8".parse().unwrap();
        let rt = runtime();
        rt.block_on(async {
            assert_eq!(take(&t, ip, &s, Instant::now()).ok(), Some(true), "being verified, for good");
            let mut right = Box::pin(t.attempt(Use::Verify, ip, &s));
            let mut malformed = Box::pin(t.attempt(Use::Fail, ip, &s));
            assert!(poll(right.as_mut()).is_none() && poll(malformed.as_mut()).is_none());
            t.reconfigure(&s, &Settings { enabled: false, ..s }, Instant::now());
            assert_eq!(poll(malformed.as_mut()), Some(Ok(false)), "let through");
            assert_eq!(poll(right.as_mut()), Some(Ok(false)), "let through, and not counted");
            t.reconfigure(&s, &s, Instant::now());
            let mut next = Box::pin(t.attempt(Use::Verify, ip, &s));
            assert!(poll(next.as_mut()).is_none(), "an hour to wait");
            t.reconfigure(&s, &Settings { window: Duration::from_millis(50), ..s }, Instant::now());
            let got = tokio::time::timeout(Duration::from_secs(10), next).await;
            assert_eq!(got.ok(), Some(Ok(true)), "one came back within the new window");
        });
    }

    /// A reload that changes the rate counts the time before it at the old
    /// rate and only the time after it at the new one (probe 283): both
    /// ways, an address keeps what it had earned, and earns no more.
    #[test]
    fn a_reload_counts_the_time_before_it_at_the_old_rate() {
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let fast = Settings { max_failures: 3, window: Duration::from_secs(30), ..Settings::default() };
        let slow = Settings { window: Duration::from_secs(3000), ..fast };
        let t0 = Instant::now();
        let at = |secs: f64| t0 + Duration::from_secs_f64(secs);
        // 3 in 30 s, emptied; 25 s later (2.5 attempts back) the window
        // becomes 3000 s: two attempts are there, a third is not.
        let t = Throttle::new();
        for _ in 0..3 {
            assert!(failed(&t, ip, &fast, t0).is_ok());
        }
        t.reconfigure(&fast, &slow, at(25.0));
        assert!(failed(&t, ip, &slow, at(25.1)).is_ok());
        assert!(failed(&t, ip, &slow, at(25.2)).is_ok());
        assert!(failed(&t, ip, &slow, at(25.3)).is_err(), "half an attempt left");
        // The other way: emptied under 3 in 3000 s, 12 s later (0.012
        // attempts) the window becomes 30 s: nothing yet; 9.9 s after the
        // reload (0.99 more) still nothing, and one at 10.1 s.
        let t = Throttle::new();
        for _ in 0..3 {
            assert!(failed(&t, ip, &slow, t0).is_ok());
        }
        t.reconfigure(&slow, &fast, at(12.0));
        assert!(failed(&t, ip, &fast, at(12.1)).is_err(), "a whole attempt back at once");
        assert!(failed(&t, ip, &fast, at(12.0 + 9.8)).is_err());
        assert!(failed(&t, ip, &fast, at(12.0 + 10.1)).is_ok());
    }

    /// `turned_off` resolves when a reload turns throttling off, also when
    /// that reload came before it was called, and not for a reload that
    /// keeps it on or turns it on again.
    #[test]
    fn turned_off_hears_a_reload_before_or_after_it_is_called() {
        let s = Settings::default();
        let t = Throttle::new();
        runtime().block_on(async {
            let mut waiting = Box::pin(t.turned_off());
            assert!(poll(waiting.as_mut()).is_none(), "no reload yet");
            t.reconfigure(&s, &s, Instant::now());
            assert!(poll(waiting.as_mut()).is_none(), "still on");
            t.reconfigure(&s, &Settings { enabled: false, ..s }, Instant::now());
            assert_eq!(poll(waiting.as_mut()), Some(()), "turned off while it waited");
            assert_eq!(poll(Box::pin(t.turned_off()).as_mut()), Some(()), "off before it looked");
            t.reconfigure(&s, &s, Instant::now());
            assert!(poll(Box::pin(t.turned_off()).as_mut()).is_none(), "on again");
        });
    }

    /// An attempt whose client hangs up while it waits leaves the line, and
    /// passes its turn on if it had come; when none is left and nothing is
    /// being verified, everyone in line gets the time until one comes back.
    #[test]
    fn a_waiter_that_leaves_passes_its_turn_on() {
        let rt = runtime();
        let _rt = rt.enter();
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
