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

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
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
        /// The username as presented (decoded and NFC-normalised, as looked up), if the
        /// header parsed.
        username: Option<String>,
    },
    /// The verification queue is full: answer 503, spend no argon2.
    Overloaded,
    /// Too many failures from this address: answer 429, spend no argon2.
    Throttled {
        /// When the address may try again.
        retry_after: Duration,
        /// The username as presented (decoded and NFC-normalised, as looked up), if the header
        /// parsed (audit log only).
        username: Option<String>,
    },
}

/// The shared authentication engine.
pub struct Authenticator {
    cache: Arc<VerifiedCache>,
    permits: Arc<Semaphore>,
    /// The number of permits.
    workers: usize,
    /// The verifications let in: running or waiting for a worker, at most
    /// `workers` + `max_pending`.
    admitted: Arc<Semaphore>,
    /// `workers` + `max_pending`.
    places: usize,
    throttle: Arc<throttle::Throttle>,
    metrics: Arc<crate::telemetry::Metrics>,
    memory: Arc<MemoryPool>,
    inflight: Arc<Inflight>,
}

/// Verifications in progress, by credentials (the MAC of their normal
/// form, [`VerifiedCache::credentials_key`]): every spelling of one login
/// queues together. (By the header as sent, nine spellings of one password
/// sent at once ran argon2 eight times.)
#[derive(Default)]
struct Inflight {
    map: std::sync::Mutex<std::collections::HashMap<CredentialsKey, Queue>>,
}

/// The clients of one login, and the turn they wait for.
struct Queue {
    turn: Arc<tokio::sync::Mutex<Turn>>,
    /// The [`Gate`]s held: the queue is removed with the last.
    gates: usize,
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

/// A hold on the queue of one login, kept by a client waiting for its
/// turn, and by a verification until argon2 ends; the queue is removed
/// with the last hold. (The holds are counted under the map's lock. The
/// count of the turn's references, read there before, could include one
/// that a hold given up at the same moment on another thread had not yet
/// let go of, and then nobody removed the queue: a unit test saw it in 13
/// runs of 20.)
struct Gate {
    owner: Arc<Inflight>,
    key: CredentialsKey,
    turn: Arc<tokio::sync::Mutex<Turn>>,
}

impl Inflight {
    fn enter(self: &Arc<Self>, key: CredentialsKey) -> Gate {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let queue = map.entry(key.clone()).or_insert_with(|| Queue { turn: Arc::default(), gates: 0 });
        queue.gates += 1;
        Gate { owner: self.clone(), key, turn: queue.turn.clone() }
    }
}

impl Gate {
    async fn lock(&self) -> tokio::sync::OwnedMutexGuard<Turn> {
        self.turn.clone().lock_owned().await
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let mut map = self.owner.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(queue) = map.get_mut(&self.key) {
            queue.gates -= 1;
            if queue.gates == 0 {
                map.remove(&self.key);
            }
        }
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

/// What the end of a verification records, on the blocking pool where
/// argon2 runs, whether or not its client is still there: the verdict, for
/// the clients waiting on the same login (who get their turn only then);
/// and for a yes its cache entry, and the throttle attempt it took, given
/// back. (Recorded by the request, a client that hung up while its own
/// right password was verified kept a failed attempt for each such
/// connection, and got a 429 past `max_failures` (probe 62); the next
/// client waiting on the login ran argon2 again at once; and giving the
/// attempt back without the cache entry let a client with one valid
/// account run argon2 without limit by hanging up each time (probe 63).
/// Now a login of the same credentials that comes while argon2 runs waits
/// for its verdict, and one after it is a cache hit, unless `cache_ttl` is
/// zero.) A login given up before argon2 ran for it (while it waited for a
/// worker) keeps its attempt, and records nothing.
struct Settle {
    /// The login's turn, held until the verdict is in.
    turn: tokio::sync::OwnedMutexGuard<Turn>,
    /// Its hold on the queue, which stays until then.
    _gate: Gate,
    users: Arc<UserStore>,
    cache: Arc<VerifiedCache>,
    /// The client's throttle unit, which the entry is known from.
    from: IpAddr,
    ttl: Duration,
    entry: Entry,
    /// Who audits a refusal.
    hearing: Arc<std::sync::Mutex<Hearing>>,
    /// The throttle attempt, which ends last: after its refund, and after
    /// the turn is given up.
    attempt: Verifying,
}

/// A throttle attempt being verified, which ends when dropped (see
/// [`throttle::Throttle::ended`]), if the throttle counted it.
struct Verifying {
    throttle: Arc<throttle::Throttle>,
    client: IpAddr,
    settings: throttle::Settings,
    counted: bool,
}

impl Verifying {
    /// Gives the attempt back: it did not fail. (Only one the throttle
    /// counted: one from an address it did not track took none, and given
    /// back, it added an attempt to a bucket made for the address since.)
    fn refund(&self) {
        if self.counted {
            self.throttle.refund(self.client, &self.settings);
        }
    }

    /// Gives the attempt back after an overload, if it was its address's
    /// only one being verified (see [`throttle::Throttle::refund_overloaded`]).
    fn refund_overloaded(&self) {
        if self.counted {
            self.throttle.refund_overloaded(self.client, &self.settings);
        }
    }
}

impl Drop for Verifying {
    fn drop(&mut self) {
        if self.counted {
            self.throttle.ended(self.client, &self.settings);
        }
    }
}

/// Where a success is cached: respelled credentials by the key of their
/// normal form, others by the header.
enum Entry {
    Credentials(CredentialsKey),
    Header(Box<[u8]>),
}

impl Settle {
    /// Records the verdict on `password`.
    fn record(mut self, outcome: &Result<Arc<User>, Refusal>, password: &str) {
        if let Ok(user) = outcome {
            // Except a bcrypt password longer than bcrypt reads: each of its
            // endless spellings (any bytes after the 72nd) is a login of its
            // own, with a cache entry of its own, and refunded, they let
            // anyone who knew one run bcrypt without limit, and keep other
            // users' logins at 503 (probe 64). One such login per cache
            // lifetime, its owner's, costs one attempt.
            if !user.hash().ignores_part_of(password) {
                self.attempt.refund();
            }
            let (header, normal) = match &self.entry {
                Entry::Credentials(key) => (&[][..], Some(key)),
                Entry::Header(header) => (&header[..], None),
            };
            remember(&self.cache, (header, normal), user, &self.users, self.from, self.ttl);
        }
        if let Err(reason) = outcome {
            let mut hearing = self.hearing.lock().unwrap_or_else(|p| p.into_inner());
            match std::mem::take(&mut *hearing) {
                Hearing::Gone(line) => line.emit(*reason),
                _ => *hearing = Hearing::Refused(*reason),
            }
        }
        self.turn.verdict = Some(Verdict { users: self.users, outcome: outcome.clone() });
    }
}

/// Caches a success for `ttl`, verified against `users`: respelled
/// credentials by their normal form (`normal`), others by the header.
fn remember(
    cache: &VerifiedCache,
    (header, normal): (&[u8], Option<&CredentialsKey>),
    user: &User,
    users: &UserStore,
    from: IpAddr,
    ttl: Duration,
) {
    let verified = (user.name.clone(), user.credential, from);
    cache.insert_verified(header, normal, verified, ttl, Instant::now(), users.serial());
}

/// Who audits a verification's refusal: the request, which answers it; or,
/// when its client hung up first, the verification, where it ends; never
/// both. (A wrong password given up while argon2 ran left no audit line,
/// only an access line that said `client_gone`; and since a right one
/// given up that way is cached, its next connection answered at once, a
/// client could learn that a guess was wrong without leaving one.)
#[derive(Default)]
enum Hearing {
    /// The request waits for the verdict.
    #[default]
    Waiting,
    /// The request is gone: a refusal is audited with this.
    Gone(AuditLine),
    /// The verdict is a refusal the request has not taken.
    Refused(Refusal),
}

/// An audit line's fields besides the reason.
struct AuditLine {
    request_id: Box<str>,
    client: SocketAddr,
    target: Box<str>,
    username: Box<str>,
}

impl AuditLine {
    fn emit(&self, reason: Refusal) {
        crate::telemetry::AuditEvent {
            request_id: &self.request_id,
            client: self.client,
            username: Some(&self.username),
            reason: reason.as_str(),
            target: &self.target,
        }
        .emit();
    }
}

/// The request's side of a [`Hearing`], while it waits for its verdict.
struct Listener<'a> {
    hearing: Option<Arc<std::sync::Mutex<Hearing>>>,
    audit: Audit<'a>,
    username: &'a str,
}

impl Listener<'_> {
    /// The verdict came: the request answers it, and audits a refusal.
    fn heard(mut self) {
        self.hearing = None;
    }
}

impl Drop for Listener<'_> {
    fn drop(&mut self) {
        let Some(hearing) = self.hearing.take() else { return };
        let line = AuditLine {
            request_id: self.audit.request_id.into(),
            client: self.audit.client,
            target: self.audit.target.into(),
            username: self.username.into(),
        };
        let mut hearing = hearing.lock().unwrap_or_else(|p| p.into_inner());
        match std::mem::take(&mut *hearing) {
            // It came as the client left.
            Hearing::Refused(reason) => line.emit(reason),
            _ => *hearing = Hearing::Gone(line),
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

/// What the audit line of a refused login says of its request, for a
/// refusal its client does not stay to hear, which `authenticate` audits
/// itself (the verification where it ends, or the request as it is
/// dropped).
#[derive(Debug, Clone, Copy)]
pub struct Audit<'a> {
    /// The request's id, which its access line has too.
    pub request_id: &'a str,
    /// The client's address and port.
    pub client: SocketAddr,
    /// The request target.
    pub target: &'a str,
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
    /// The request, for the audit line of a refusal its client does not
    /// stay to hear. (One it hears is the caller's to audit.)
    pub audit: Audit<'a>,
}

impl Authenticator {
    /// `workers` argon2 verifications run at once; up to `max_pending` more wait.
    pub fn new(workers: usize, max_pending: usize, metrics: Arc<crate::telemetry::Metrics>) -> Self {
        Authenticator {
            cache: Arc::new(VerifiedCache::new()),
            permits: Arc::new(Semaphore::new(workers.max(1))),
            workers: workers.max(1),
            admitted: Arc::new(Semaphore::new(workers.max(1) + max_pending)),
            places: workers.max(1) + max_pending,
            throttle: Arc::new(throttle::Throttle::new()),
            metrics,
            memory: Arc::new(MemoryPool::default()),
            inflight: Arc::default(),
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
    fn current(&self, users: &UserStore, (name, credential, known): Found) -> Option<(Arc<User>, bool)> {
        let user = users.get(&name)?;
        (user.credential == credential && user.active_at(SystemTime::now()).is_ok())
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
    /// An address whose attempts are all held by verifications in progress
    /// is not throttled yet: the hit waits for their verdicts, in line with
    /// the address's other attempts (it got a 429 at once, probe 67).
    async fn answer_hit(
        &self,
        (user, known): (Arc<User>, bool),
        client: IpAddr,
        throttle: &throttle::Settings,
        vouch: impl FnOnce(),
        username: impl FnOnce() -> Option<String>,
    ) -> Outcome {
        self.metrics.cache(true);
        if !known {
            if let Err(retry_after) = self.throttle.attempt(throttle::Use::Look, client, throttle).await {
                return Outcome::Throttled { retry_after, username: username() };
            }
            vouch();
        }
        Outcome::Ok(user)
    }

    /// `[auth.throttle]` settings a reload made live in place of `old`: the
    /// logins waiting in an address's line for an attempt look again under
    /// them, and the time before it counted at the old rate
    /// ([`throttle::Throttle::reconfigure`]).
    pub fn reconfigure_throttle(&self, old: &throttle::Settings, s: &throttle::Settings) {
        self.throttle.reconfigure(old, s, std::time::Instant::now());
    }

    /// Resolves once a reload has turned throttling off (at once if the
    /// last one did): a login refused by the throttle and held in the
    /// tarpit is then checked after all.
    pub async fn throttle_turned_off(&self) {
        self.throttle.turned_off().await;
    }

    /// How many logins it holds now: verifications running and waiting for
    /// a worker, and logins waiting for a throttle attempt.
    pub fn load(&self) -> crate::telemetry::metrics::AuthLoad {
        let running = self.workers.saturating_sub(self.permits.available_permits());
        crate::telemetry::metrics::AuthLoad {
            running,
            queued: self.places.saturating_sub(self.admitted.available_permits()).saturating_sub(running),
            throttle_waiting: self.throttle.waiting(),
        }
    }

    /// The verified-credential cache.
    pub fn cache(&self) -> &VerifiedCache {
        &self.cache
    }

    /// Checks a `Proxy-Authorization` value against the users.
    pub async fn authenticate(&self, req: Request<'_>) -> Outcome {
        let Request { users, header, ttl, client, throttle, audit } = req;
        let Some(header) = header else {
            return Outcome::Refused { reason: Refusal::Missing, username: None };
        };
        let now = Instant::now();
        let from = throttle::client_key(client);
        if let Some(hit) = self.cached(&req, header, from, now) {
            let username = || basic::parse(header).ok().map(|c| c.username);
            // (A hit on the header's own entry: credentials sent in their normal
            // form, cached by the header.)
            return self
                .answer_hit(hit, client, throttle, || self.cache.vouch(header, None, from), username)
                .await;
        }
        // Parsed first, so that a throttled attempt is audited with the
        // username it tried.
        let parsed = basic::parse(header);
        let normal = parsed.as_ref().ok().filter(|c| c.respelled).map(|c| self.cache.credentials_key(c));
        if let Some(hit) = self.cached_normal(&req, normal.as_ref(), from, now) {
            let vouch = || self.cache.vouch(header, normal.as_ref(), from);
            return self.answer_hit(hit, client, throttle, vouch, || parsed.ok().map(|c| c.username)).await;
        }
        // Each request with credentials counts once in the cache metric: a
        // miss here, or after the wait below, where the cache can answer.
        let held = match self.throttle.check(client, throttle, now) {
            Ok(()) => false,
            // None left, but some held by verifications in progress: a login
            // waits for their verdicts when it takes its attempt, in its
            // credentials' turn. (Waiting here, before joining the queue of
            // its credentials, the connections of one login each ran argon2
            // again once their login's verification had ended, its verdict
            // gone with its queue: with `cache_ttl = "0s"`, 1,225 runs for
            // 60 logins, probe 67.)
            Err(throttle::NoAttempt { pending: true, .. }) => true,
            Err(throttle::NoAttempt { retry_after, pending: false }) => {
                self.metrics.cache(false);
                return Outcome::Throttled { retry_after, username: parsed.ok().map(|c| c.username) };
            }
        };
        let Ok(creds) = parsed else {
            self.metrics.cache(false);
            // Malformed, it joins no login's queue: it waits here, in its
            // address's line, and takes its attempt in the same step as it
            // looks for one. (Looked for, then taken, two woken at once both
            // found the last one, and both got a 407: probe 68.)
            return match self.throttle.attempt(throttle::Use::Fail, client, throttle).await {
                Ok(_) => Outcome::Refused { reason: Refusal::Malformed, username: None },
                Err(retry_after) => Outcome::Throttled { retry_after, username: None },
            };
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
        let turn = gate.lock().await;
        waiting.turn_came();
        let now = Instant::now();
        // (The address was not throttled a moment ago: a hit counts. One
        // whose attempts were all held by verifications in progress waits
        // for their verdicts as any hit from it does: it got in at once,
        // probe 342.)
        if let Some((user, known)) = self
            .cached(&req, header, from, now)
            .or_else(|| self.cached_normal(&req, normal.as_ref(), from, now))
        {
            if held {
                // Out of the credentials' line first: the logins behind it,
                // from other addresses, are not held by this one's address
                // (they waited for its verdicts, probe 343).
                drop(turn);
                let vouch = || self.cache.vouch(header, normal.as_ref(), from);
                return self.answer_hit((user, known), client, throttle, vouch, || Some(username)).await;
            }
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
            // (Likewise a verdict shared from an address with none left,
            // out of the line first.)
            if held {
                let user = user.clone();
                drop(turn);
                if let Err(retry_after) = self.throttle.attempt(throttle::Use::Look, client, throttle).await {
                    return Outcome::Throttled { retry_after, username: Some(username) };
                }
                remember(&self.cache, (header, normal.as_ref()), &user, users, from, ttl);
                return Outcome::Ok(user);
            }
            // A success takes no attempt from the address (several right
            // logins at once from one address took one each, and past
            // `max_failures` got a 429).
            remember(&self.cache, (header, normal.as_ref()), user, users, from, ttl);
            return Outcome::Ok(user.clone());
        }
        // The attempt is counted before argon2 and given back unless it
        // fails: concurrent wrong passwords from one address cannot all reach
        // argon2 before the first failure is known. A client that hangs up
        // before its verdict keeps it spent, unless argon2 ran and said yes
        // (see [`Settle`]): a refund on drop would let a flood of abandoned
        // attempts run argon2 without ever being throttled.
        let counted = match self.throttle.attempt(throttle::Use::Verify, client, throttle).await {
            Ok(counted) => counted,
            Err(retry_after) => return Outcome::Throttled { retry_after, username: Some(username) },
        };
        let attempt = Verifying { throttle: self.throttle.clone(), client, settings: *throttle, counted };
        // A shared refusal is a failed attempt of this address, as any other.
        if let Some(Err(reason)) = shared {
            return Outcome::Refused { reason, username: Some(username) };
        }
        let hearing = Arc::new(std::sync::Mutex::new(Hearing::Waiting));
        let listener = Listener { hearing: Some(hearing.clone()), audit, username: &username };
        let settle = Settle {
            turn,
            _gate: gate,
            users: users.clone(),
            cache: self.cache.clone(),
            from,
            ttl,
            entry: match normal {
                Some(key) => Entry::Credentials(key),
                None => Entry::Header(header.into()),
            },
            hearing,
            attempt,
        };
        let verified = self.verify_bounded(creds, settle).await;
        listener.heard();
        let Some(outcome) = verified else {
            return Outcome::Overloaded;
        };
        match outcome {
            Ok(user) => Outcome::Ok(user),
            Err(reason) => Outcome::Refused { reason, username: Some(username) },
        }
    }

    /// Runs one verification on the blocking pool, where its end is
    /// recorded (`settle`); `None` when the queue is full.
    async fn verify_bounded(
        &self,
        creds: basic::Credentials,
        settle: Settle,
    ) -> Option<Result<Arc<User>, Refusal>> {
        // Let in while a worker or one of the `max_pending` places is free.
        // The place is an owned permit: given back when the client hangs up
        // while it waits, too (kept after a wait cut short, once
        // `max_pending` had been, every login that had to wait got a 503
        // until a restart). Refused for overload, the attempt is given back
        // before it ends, so that the attempts waiting for its end find it.
        let Ok(admitted) = self.admitted.clone().try_acquire_owned() else {
            settle.attempt.refund_overloaded();
            return None;
        };
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let Ok(permit) = self.permits.clone().acquire_owned().await else {
                    settle.attempt.refund_overloaded();
                    return None;
                };
                permit
            }
        };
        let metrics = self.metrics.clone();
        let pool = self.memory.clone();
        // Where the verification's holdings wait for it: taken back if the
        // system refuses it a thread (see below).
        let job = Arc::new(std::sync::Mutex::new(Some((settle, admitted, permit, creds))));
        let queued = job.clone();
        let joined = crate::blocking::run(move || {
            let (settle, admitted, permit, creds) =
                queued.lock().unwrap_or_else(|p| p.into_inner()).take()?;
            let started = Instant::now();
            let mut memory = pool.take();
            let verdict = settle.users.verify_in(&creds, SystemTime::now(), &mut memory);
            pool.give(memory);
            metrics.argon2(started.elapsed());
            // The worker and the place are free before the attempt is given
            // back: the login it wakes (of the same address, waiting for an
            // attempt) found them still taken, and got a 503 with a place
            // about to be free (probe 309). The place goes back here, not
            // when the next login in line takes the worker, which it does
            // only once its task runs. (The place first: a gauge read
            // between the two sees no login waiting, rather than one
            // waiting while the worker is free; probe 310.)
            drop(admitted);
            drop(permit);
            settle.record(&verdict, &creds.password);
            Some(verdict)
        })
        .await;
        match joined {
            Ok(Some(Some(verdict))) => Some(verdict),
            // A panic inside argon2 would be a bug; treat it as a refusal.
            Ok(_) => Some(Err(Refusal::BadPassword)),
            // Answered as an overload (503, retry), as when the queue is
            // full: its worker slot, its place, its turn and its attempt
            // are given back now. Left with the queued work, they held
            // every login behind them until a thread could be made
            // (probe 353: 10 of 11 logins hung for the 80 s of a refusal).
            Err(no) => {
                let taken = job.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some((settle, ..)) = taken {
                    settle.attempt.refund_overloaded();
                }
                static NO_THREAD: crate::telemetry::Every =
                    crate::telemetry::Every::new(10, "a login answered 503: no thread to verify it");
                if let Some(held) = NO_THREAD.pass() {
                    tracing::error!(held_back = held, "a login answered 503: {no}");
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::task::Poll;

    use crate::telemetry::Captured;

    /// A login from 127.0.0.1 with `header`.
    fn login<'a>(
        users: &'a Arc<UserStore>,
        header: &'a [u8],
        ttl: Duration,
        throttle: &'a throttle::Settings,
    ) -> Request<'a> {
        Request {
            users,
            header: Some(header),
            ttl,
            client: IpAddr::from([127, 0, 0, 1]),
            throttle,
            audit: Audit {
                request_id: "r1",
                client: ([127, 0, 0, 1], 5000).into(),
                target: "http://t.test/",
            },
        }
    }

    fn audit_lines(log: &Captured) -> usize {
        log.text().matches("authgate::audit").count()
    }

    /// A refusal that comes while its request is not being polled, the
    /// request then dropped (its client hung up as argon2 ended), is
    /// audited once, by the request as it goes: the verification left it
    /// for the request, which was no longer there to hear it.
    #[test]
    fn a_refusal_that_came_as_its_client_left_is_audited_once() {
        let params = argon2::Params::new(64, 1, 1, None).unwrap();
        let hash = password::hash_password("a1", params.clone()).unwrap().to_string();
        let alice = User::new("alice".into(), store::StoredHash::parse(&hash).unwrap(), vec![], false, None);
        let users = Arc::new(UserStore::new(vec![alice], params, None).unwrap());
        let auth = Authenticator::new(1, 4, Arc::new(crate::telemetry::Metrics::new(false)));
        let settings = throttle::Settings::default();
        // alice:wrong
        let req = login(&users, b"Basic YWxpY2U6d3Jvbmc=", Duration::from_secs(60), &settings);
        let log = Captured::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).finish();
        let _log = tracing::subscriber::set_default(subscriber);
        // One blocking thread, kept busy until the request has been polled:
        // argon2 cannot end before (it did, once in a while, when it ran at
        // once).
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(1)
            .build()
            .unwrap();
        rt.block_on(async {
            let (go, busy) = std::sync::mpsc::channel::<()>();
            let busy = tokio::task::spawn_blocking(move || busy.recv());
            let mut request = Box::pin(auth.authenticate(req));
            let first = std::future::poll_fn(|cx| Poll::Ready(request.as_mut().poll(cx))).await;
            assert!(first.is_pending(), "argon2 waits for the thread");
            go.send(()).unwrap();
            busy.await.unwrap().unwrap();
            // The verification has ended once it lets go of the login's queue.
            while !auth.inflight.map.lock().unwrap().is_empty() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            assert_eq!(audit_lines(&log), 0, "the request may still hear the refusal");
            drop(request);
        });
        assert_eq!(audit_lines(&log), 1);
    }

    /// Whether `f` is still pending, polled once.
    async fn waits<F: Future>(mut f: std::pin::Pin<&mut F>) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx).is_pending())).await
    }

    /// Users with these names and passwords, hashed with `m_cost` KiB of
    /// argon2 memory and one pass.
    fn store_of(m_cost: u32, logins: &[(&str, &str)]) -> Arc<UserStore> {
        let params = argon2::Params::new(m_cost, 1, 1, None).unwrap();
        let users = logins.iter().map(|(name, password)| {
            let hash = password::hash_password(password, params.clone()).unwrap().to_string();
            User::new((*name).into(), store::StoredHash::parse(&hash).unwrap(), vec![], false, None)
        });
        Arc::new(UserStore::new(users.collect(), params.clone(), None).unwrap())
    }

    /// Logins from one address that wait for an attempt get it in the order
    /// they came: a login that comes when a verification has just given its
    /// attempt back waits behind the one that was already waiting for it,
    /// rather than take it first.
    #[test]
    fn a_login_that_comes_later_waits_behind_those_already_waiting() {
        let users = store_of(4096, &[("alice", "a1"), ("bob", "b1"), ("carol", "c1")]);
        let auth = Authenticator::new(2, 4, Arc::new(crate::telemetry::Metrics::new(false)));
        // One attempt, and no cache: each login runs argon2 with the attempt.
        let settings = throttle::Settings { max_failures: 1, ..throttle::Settings::default() };
        let login = |header| login(&users, header, Duration::ZERO, &settings);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            // alice:a1, bob:b1, carol:c1
            let mut alice = Box::pin(auth.authenticate(login(b"Basic YWxpY2U6YTE=")));
            let mut bob = Box::pin(auth.authenticate(login(b"Basic Ym9iOmIx")));
            // The workers are busy until both have been polled: alice's
            // verification cannot end before bob waits for it.
            let busy = auth.permits.clone().try_acquire_many_owned(2).unwrap();
            assert!(waits(alice.as_mut()).await, "alice's password waits for a worker");
            assert!(waits(bob.as_mut()).await, "bob waits for the attempt alice holds");
            drop(busy);
            assert!(matches!(alice.await, Outcome::Ok(_)), "alice is in, and her attempt given back");
            // Carol comes before bob has looked again.
            let mut carol = Box::pin(auth.authenticate(login(b"Basic Y2Fyb2w6YzE=")));
            assert!(waits(carol.as_mut()).await);
            let first = tokio::select! {
                biased;
                verdict = &mut carol => ("carol", verdict),
                verdict = &mut bob => ("bob", verdict),
            };
            assert_eq!(first.0, "bob", "bob was first in line");
            assert!(matches!(first.1, Outcome::Ok(_)));
            assert!(matches!(carol.await, Outcome::Ok(_)), "carol's turn came next");
        });
    }

    /// A login woken by the attempt a success gave back finds the success's
    /// worker and place free. The place was given back when the next login
    /// in line, handed the worker, next ran: the woken login found every
    /// place still taken and got a 503 (probe 309, 5 runs of 8).
    #[test]
    fn a_login_woken_by_a_success_finds_a_place() {
        let users = store_of(64, &[("alice", "a1"), ("bob", "b1"), ("carol", "c1"), ("dave", "d1")]);
        // One worker and two places.
        let auth = Authenticator::new(1, 2, Arc::new(crate::telemetry::Metrics::new(false)));
        // Two attempts per address, and no cache.
        let settings = throttle::Settings { max_failures: 2, ..throttle::Settings::default() };
        let login = |header| login(&users, header, Duration::ZERO, &settings);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let busy = auth.permits.clone().try_acquire_owned().unwrap();
            // alice:a1 and bob:b1 take the address's two attempts and wait
            // for the worker; carol:c1 waits for an attempt.
            let mut alice = Box::pin(auth.authenticate(login(b"Basic YWxpY2U6YTE=")));
            let mut bob = Box::pin(auth.authenticate(login(b"Basic Ym9iOmIx")));
            let mut carol = Box::pin(auth.authenticate(login(b"Basic Y2Fyb2w6YzE=")));
            assert!(waits(alice.as_mut()).await && waits(bob.as_mut()).await && waits(carol.as_mut()).await);
            drop(busy);
            assert!(waits(alice.as_mut()).await, "alice runs");
            // dave:d1, from another address, takes the last place.
            let mut dave = login(b"Basic ZGF2ZTpkMQ==");
            dave.client = IpAddr::from([127, 0, 0, 2]);
            let mut dave = Box::pin(auth.authenticate(dave));
            assert!(waits(dave.as_mut()).await, "dave waits for the worker");
            // alice's success gives her attempt back and wakes carol; the
            // worker goes to bob, whose task has not run since.
            assert!(matches!(alice.await, Outcome::Ok(_)));
            assert!(waits(carol.as_mut()).await, "carol waits for the worker, not refused");
            for (name, login) in [("bob", bob), ("dave", dave), ("carol", carol)] {
                assert!(matches!(login.await, Outcome::Ok(_)), "{name} is in");
            }
        });
    }

    /// A success gives back only an attempt the throttle counted: one from
    /// an address it did not track (its map full) took none.
    #[test]
    fn an_attempt_not_counted_is_not_given_back() {
        let throttle = Arc::new(throttle::Throttle::new());
        let settings = throttle::Settings { max_failures: 1, ..throttle::Settings::default() };
        let client = IpAddr::from([192, 0, 2, 1]);
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let failed = rt.block_on(throttle.attempt(throttle::Use::Fail, client, &settings));
        assert_eq!(failed, Ok(false), "one failure: none left");
        let success = Verifying { throttle: throttle.clone(), client, settings, counted: false };
        success.refund();
        drop(success);
        assert!(throttle.check(client, &settings, Instant::now()).is_err(), "still none left");
    }

    /// A login's queue goes with its last hold, also when holds are given
    /// up at the same moment on several threads (as a verification ending
    /// on the blocking pool and its client hanging up do).
    #[test]
    fn a_login_queue_goes_with_its_last_hold() {
        let inflight = Arc::new(Inflight::default());
        let creds = basic::parse(b"Basic YWxpY2U6YTE=").unwrap();
        let key = VerifiedCache::new().credentials_key(&creds);
        let threads = 2;
        let [entered, dropped, looked] = [(); 3].map(|()| std::sync::Barrier::new(threads + 1));
        let mut left = Vec::new();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    for _ in 0..2_000 {
                        let gate = inflight.enter(key.clone());
                        entered.wait();
                        drop(gate);
                        dropped.wait();
                        looked.wait();
                    }
                });
            }
            for _ in 0..2_000 {
                entered.wait();
                dropped.wait();
                left.push(inflight.map.lock().unwrap().len());
                looked.wait();
            }
        });
        assert!(left.iter().all(|&n| n == 0), "queues left after their holds were given up: {left:?}");
        let (first, second) = (inflight.enter(key.clone()), inflight.enter(key.clone()));
        drop(first);
        assert_eq!(inflight.map.lock().unwrap().len(), 1, "a hold is still kept");
        drop(second);
        assert_eq!(inflight.map.lock().unwrap().len(), 0);
    }
}
