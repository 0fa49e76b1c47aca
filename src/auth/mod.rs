//! Authentication: who is this client?
//!
//! [`Authenticator::authenticate`] turns a `Proxy-Authorization` value into a
//! [`User`] or a [`Refusal`]. The fast path is the verified-credential cache;
//! the slow path runs argon2 on the blocking pool behind a semaphore of
//! `auth.verify_threads` permits (by default half the cores), with a bounded
//! queue, so a flood of bad passwords cannot starve
//! the async runtime (tunnels, forwarding) nor grow memory without limit.

pub mod basic;
pub mod cache;
pub mod password;
pub mod store;
pub mod throttle;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Semaphore;

pub use cache::{CredentialsKey, Found, Hit, VerifiedCache};
pub use store::{Refusal, User, UserStore};

/// The result of authenticating one request.
#[derive(Debug)]
pub enum Outcome {
    /// Valid credentials of an active user.
    Ok(Arc<User>),
    /// Refused; `username` is what was sent (for the audit log only).
    Refused {
        /// Why (never shown to the client).
        reason: Refusal,
        /// The username as presented, if the header parsed.
        username: Option<String>,
    },
    /// The verification queue is full: answer 503, spend no argon2.
    Overloaded,
    /// Too many failures from this address: answer 429, spend no argon2.
    Throttled {
        /// When the address may try again.
        retry_after: Duration,
        /// The username as presented, if the header parsed (audit log only).
        username: Option<String>,
    },
}

/// The shared authentication engine.
pub struct Authenticator {
    cache: VerifiedCache,
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_pending: usize,
    throttle: throttle::Throttle,
    metrics: Arc<crate::telemetry::Metrics>,
    memory: Arc<MemoryPool>,
    inflight: Inflight,
}

/// Verifications in progress, by credentials (the MAC of their normal
/// form, [`VerifiedCache::credentials_key`]): every spelling of one login
/// queues together. (By the header as sent, nine spellings of one password
/// sent at once ran argon2 eight times.)
#[derive(Default)]
struct Inflight {
    map: std::sync::Mutex<std::collections::HashMap<CredentialsKey, Arc<tokio::sync::Mutex<Turn>>>>,
}

/// What the clients waiting together on one login share: the verdict of
/// the last of them to run argon2.
#[derive(Default)]
struct Turn {
    verdict: Option<Verdict>,
}

/// A verification's verdict, and the users it was made against (a reload
/// may have changed them since).
struct Verdict {
    users: Arc<UserStore>,
    outcome: Result<Arc<User>, Refusal>,
}

impl Turn {
    /// The verdict on these credentials against `users`, if a client
    /// before this one got it. (It depends on nothing else: the normal
    /// form of the credentials, the users, and the time, which only an
    /// expiry reads; a success is checked against it again.)
    fn verdict(&self, users: &Arc<UserStore>) -> Option<Result<Arc<User>, Refusal>> {
        self.verdict.as_ref().filter(|v| Arc::ptr_eq(&v.users, users)).map(|v| v.outcome.clone())
    }
}

/// A place in the queue for one login; removed when the last waiter leaves.
struct Gate<'a> {
    owner: &'a Inflight,
    key: CredentialsKey,
    lock: Arc<tokio::sync::Mutex<Turn>>,
}

impl Inflight {
    fn enter(&self, key: CredentialsKey) -> Gate<'_> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let lock = map.entry(key.clone()).or_default().clone();
        Gate { owner: self, key, lock }
    }
}

impl Gate<'_> {
    async fn lock(&self) -> tokio::sync::MutexGuard<'_, Turn> {
        self.lock.lock().await
    }
}

impl Drop for Gate<'_> {
    fn drop(&mut self) {
        let mut map = self.owner.map.lock().unwrap_or_else(|p| p.into_inner());
        // The map's reference and ours: nobody else waits.
        if Arc::strong_count(&self.lock) == 2 {
            map.remove(&self.key);
        }
    }
}

/// A verification's place in the queue for an argon2 worker, given back
/// when dropped: also when its client hangs up while it waits. (Given back
/// after the wait only, a wait cut short kept its place for good, and once
/// `max_pending` of them had, every login that had to wait got a 503 until
/// a restart.)
struct Place<'a>(&'a AtomicUsize);

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A login waiting for its turn in the single-flight queue, which is
/// counted in the cache metric once the turn comes. Given up before then
/// (its client hung up), it counts as a miss when dropped: the cache did
/// not answer it. (It was not counted at all, and the hit and miss counts
/// fell short of the logins.)
struct Waiting<'a>(Option<&'a crate::telemetry::Metrics>);

impl Waiting<'_> {
    /// The turn came: the login is counted where it is answered.
    fn turn_came(mut self) {
        self.0 = None;
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(metrics) = self.0 {
            metrics.cache(false);
        }
    }
}

/// argon2 working memory, one buffer per verification slot.
#[derive(Default)]
struct MemoryPool(std::sync::Mutex<Vec<password::Memory>>);

impl MemoryPool {
    fn take(&self) -> password::Memory {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_default()
    }

    fn give(&self, m: password::Memory) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(m);
    }
}

/// What [`Authenticator::authenticate`] needs besides the header.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The users of the live snapshot.
    pub users: &'a Arc<UserStore>,
    /// The raw `Proxy-Authorization` value, if any.
    pub header: Option<&'a [u8]>,
    /// How long a success is cached.
    pub ttl: Duration,
    /// The client's address, for throttling.
    pub client: IpAddr,
    /// Throttle settings.
    pub throttle: &'a throttle::Settings,
}

impl Authenticator {
    /// `workers` argon2 verifications run at once; up to `max_pending` more wait.
    pub fn new(workers: usize, max_pending: usize, metrics: Arc<crate::telemetry::Metrics>) -> Self {
        Authenticator {
            cache: VerifiedCache::new(),
            permits: Arc::new(Semaphore::new(workers.max(1))),
            waiting: AtomicUsize::new(0),
            max_pending,
            throttle: throttle::Throttle::new(),
            metrics,
            memory: Arc::new(MemoryPool::default()),
            inflight: Inflight::default(),
        }
    }

    /// The user a cache entry for `header` names, if it still counts, and
    /// whether the credentials are known from `from` (a throttle unit).
    fn cached(
        &self,
        req: &Request<'_>,
        header: &[u8],
        from: IpAddr,
        now: Instant,
    ) -> Option<(Arc<User>, bool)> {
        self.current(req.users, self.cache.get(header, from, now, req.ttl)?)
    }

    /// [`Authenticator::cached`] for credentials sent in another spelling
    /// than their normal form, which are cached by that form (`normal`,
    /// `None` for credentials sent in it).
    fn cached_normal(
        &self,
        req: &Request<'_>,
        normal: Option<&CredentialsKey>,
        from: IpAddr,
        now: Instant,
    ) -> Option<(Arc<User>, bool)> {
        self.current(req.users, self.cache.get_credentials(normal?, from, now, req.ttl)?)
    }

    /// The user of a cache entry, if it still counts, and whether the
    /// asking address is one the credentials are known from.
    fn current(&self, users: &UserStore, (name, fingerprint, known): Found) -> Option<(Arc<User>, bool)> {
        let user = users.get(&name)?;
        (user.fingerprint == fingerprint && user.active_at(SystemTime::now()).is_ok())
            .then(|| (user.clone(), known))
    }

    /// A cache hit counts at once from an address the credentials are known
    /// from (the one that verified them, or one where a hit counted since);
    /// from another, only while that address is not throttled, and then
    /// that address is known too (`vouch`): a user whose address is
    /// throttled later, by someone else's guesses behind the same NAT, keeps
    /// the fast path there. Otherwise a throttled address learnt in an
    /// instant, with no argon2 run, whether a guess was a password someone
    /// had recently used (200) or not (429): over many connections a faster
    /// oracle than guessing unthrottled.
    /// `username` names the attempt for the audit log, if it is throttled.
    /// A hit is counted as one whether or not the throttle refuses it.
    fn answer_hit(
        &self,
        (user, known): (Arc<User>, bool),
        client: IpAddr,
        throttle: &throttle::Settings,
        now: Instant,
        vouch: impl FnOnce(),
        username: impl FnOnce() -> Option<String>,
    ) -> Outcome {
        self.metrics.cache(true);
        if !known {
            if let Err(retry_after) = self.throttle.check(client, throttle, now) {
                return Outcome::Throttled { retry_after, username: username() };
            }
            vouch();
        }
        Outcome::Ok(user)
    }

    /// The verified-credential cache.
    pub fn cache(&self) -> &VerifiedCache {
        &self.cache
    }

    /// Checks a `Proxy-Authorization` value against the users.
    pub async fn authenticate(&self, req: Request<'_>) -> Outcome {
        let Request { users, header, ttl, client, throttle } = req;
        let Some(header) = header else {
            return Outcome::Refused { reason: Refusal::Missing, username: None };
        };
        let now = Instant::now();
        let from = throttle::client_key(client);
        if let Some(hit) = self.cached(&req, header, from, now) {
            let username = || basic::parse(header).ok().map(|c| c.username);
            // (A hit on the header's own entry: credentials sent in their normal
            // form, cached by the header.)
            return self.answer_hit(
                hit,
                client,
                throttle,
                now,
                || self.cache.vouch(header, None, from),
                username,
            );
        }
        // Parsed first, so that a throttled attempt is audited with the
        // username it tried.
        let parsed = basic::parse(header);
        let normal = parsed.as_ref().ok().filter(|c| c.respelled).map(|c| self.cache.credentials_key(c));
        if let Some(hit) = self.cached_normal(&req, normal.as_ref(), from, now) {
            let vouch = || self.cache.vouch(header, normal.as_ref(), from);
            return self.answer_hit(hit, client, throttle, now, vouch, || parsed.ok().map(|c| c.username));
        }
        // Each request with credentials counts once in the cache metric: a
        // miss here, or after the wait below, where the cache can answer.
        if let Err(retry_after) = self.throttle.check(client, throttle, now) {
            self.metrics.cache(false);
            return Outcome::Throttled { retry_after, username: parsed.ok().map(|c| c.username) };
        }
        let Ok(creds) = parsed else {
            self.metrics.cache(false);
            self.throttle.failed(client, throttle, now);
            return Outcome::Refused { reason: Refusal::Malformed, username: None };
        };
        let username = creds.username.clone();
        // Single flight: clients that open many connections at once with the
        // same credentials (in any spelling) wait for one verification and
        // share its verdict instead of each paying argon2, with or without a
        // cache: 30 connections opened at once with a wrong password ran it
        // in turn, the last answered after all of them; with `cache_ttl =
        // "0s"`, so did right ones. Only while clients wait together: no
        // verdict outlives its queue.
        let gate = self.inflight.enter(normal.clone().unwrap_or_else(|| self.cache.credentials_key(&creds)));
        let waiting = Waiting(Some(&self.metrics));
        let mut turn = gate.lock().await;
        waiting.turn_came();
        let now = Instant::now();
        // (The address was not throttled a moment ago: a hit counts.)
        if let Some((user, known)) = self
            .cached(&req, header, from, now)
            .or_else(|| self.cached_normal(&req, normal.as_ref(), from, now))
        {
            if !known {
                self.cache.vouch(header, normal.as_ref(), from);
            }
            self.metrics.cache(true);
            return Outcome::Ok(user);
        }
        self.metrics.cache(false);
        let shared = turn.verdict(users);
        if let Some(Ok(user)) = &shared
            && user.active_at(SystemTime::now()).is_ok()
        {
            // A success takes no attempt from the address (several right
            // logins at once from one address took one each, and past
            // `max_failures` got a 429).
            self.remember(header, normal.as_ref(), user, from, ttl);
            return Outcome::Ok(user.clone());
        }
        // The attempt is counted before argon2 and given back unless it
        // fails: concurrent wrong passwords from one address cannot all reach
        // argon2 before the first failure is known. A client that hangs up
        // before its verdict keeps it spent: a refund on drop would let a
        // flood of abandoned attempts run argon2 without ever being throttled.
        if let Err(retry_after) = self.throttle.take(client, throttle, Instant::now()) {
            return Outcome::Throttled { retry_after, username: Some(username) };
        }
        // A shared refusal is a failed attempt of this address, as any other.
        if let Some(Err(reason)) = shared {
            return Outcome::Refused { reason, username: Some(username) };
        }
        let Some(outcome) = self.verify_bounded(users, creds).await else {
            self.throttle.refund(client, throttle);
            return Outcome::Overloaded;
        };
        turn.verdict = Some(Verdict { users: users.clone(), outcome: outcome.clone() });
        match outcome {
            Ok(user) => {
                self.throttle.refund(client, throttle);
                self.remember(header, normal.as_ref(), &user, from, ttl);
                Outcome::Ok(user)
            }
            Err(reason) => Outcome::Refused { reason, username: Some(username) },
        }
    }

    /// Caches a success for `ttl`: respelled credentials by their normal
    /// form (`normal`), others by the header.
    fn remember(
        &self,
        header: &[u8],
        normal: Option<&CredentialsKey>,
        user: &User,
        from: IpAddr,
        ttl: Duration,
    ) {
        let verified = (user.name.clone(), user.fingerprint, from);
        let now = Instant::now();
        match normal {
            Some(key) => self.cache.insert_credentials(key, verified, ttl, now),
            None => self.cache.insert(header, verified, ttl, now),
        }
    }

    /// A place among the `max_pending` verifications waiting for a worker,
    /// or `None` when they are all taken.
    fn queue(&self) -> Option<Place<'_>> {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_pending {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Place(&self.waiting))
    }

    /// Runs one verification on the blocking pool; `None` when the queue is full.
    async fn verify_bounded(
        &self,
        users: &Arc<UserStore>,
        creds: basic::Credentials,
    ) -> Option<Result<Arc<User>, Refusal>> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let _place = self.queue()?;
                self.permits.clone().acquire_owned().await.ok()?
            }
        };
        let users = users.clone();
        let metrics = self.metrics.clone();
        let pool = self.memory.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let started = Instant::now();
            let mut memory = pool.take();
            let verdict = users.verify_in(&creds, SystemTime::now(), &mut memory);
            pool.give(memory);
            metrics.argon2(started.elapsed());
            verdict
        })
        .await;
        // A panic inside argon2 would be a bug; treat it as a refusal.
        Some(joined.unwrap_or(Err(Refusal::BadPassword)))
    }
}
