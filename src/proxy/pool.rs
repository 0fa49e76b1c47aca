//! Pooled keep-alive HTTP/1.1 connections to origins.
//!
//! A connection goes back to the pool once its response has been read to the
//! end (hyper's `SendRequest` becomes ready again); a connection the origin
//! closed is noticed and dropped at checkout. When a pooled connection turns
//! out to be dead before the request was written, hyper hands the request
//! back and it is tried on the next idle connection or a new one. One the
//! origin closes as the request goes out is sent again only when that is
//! safe (see [`Pool::send`]); otherwise that race is a 502.

use foldhash::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use tokio::task::AbortHandle;

use super::upstream_tls::UpstreamIo;
use crate::body::{AbortOnDrop, RequestBody, Upload, UploadState};
use crate::error::{BadAnswer, ProxyError};
use crate::server::limits::{GROWN_BUFFER, GROWN_IDLE};
use crate::target::Target;
use crate::watched_io::IoObserver;

/// Pool key: the origin, whether it is spoken to over TLS, the
/// [`Snapshot::id`](crate::config::Snapshot::id) of the configuration the
/// connection was made and used under, and the account whose requests it
/// carries (see [`Account`]): a connection serves one user only.
///
/// Bytes an origin sends past the end of a response, in a later write (a
/// second, unasked-for response, a body longer than its `Content-Length`),
/// are read as the answer to the next request on the connection, and each
/// answer after them as the answer to the request after its own, for as
/// long as the connection is reused at once: nothing on the wire tells them
/// from a real answer (RFC 9112 §9.3). Shared between users, such a
/// connection gave bob alice's answers and alice bob's, 40 of 40 in a row
/// (probe 193). Kept per user, it can only give a user an answer of their
/// own. (A single user's load, the benchmarks', pools as before.)
pub type Key = (Target, bool, u64, Account);

/// A user's name and the [`fingerprint`](crate::auth::store::User::fingerprint)
/// of their entry: a user removed and made again under the same name, or
/// whose entry changed (password, groups, ...), is another account, which
/// the old one's connections do not serve. A users file applied on its own keeps the
/// configuration's id, and the new account took the old one's connection,
/// with the answer an origin sent late on it (probe 195).
pub type Account = (Arc<str>, u64);

/// A [`Pool::retire`] id no configuration has: nothing is pooled again.
pub const NO_CONFIGURATION: u64 = 0;

/// Idle connections kept per origin. Never more than were in use at once
/// before; 64 made every request beyond the 64th concurrent one to a busy
/// origin dial anew (benches/e2e.py at c = 1000: 13.8k req/s, 17.6k with 1024).
const MAX_IDLE_PER_ORIGIN: usize = 1024;
/// Pool keys (an origin and a user, see [`Key`]) with idle connections kept
/// at most; when there are this many, a connection of a new key makes room:
/// the key whose connection is idle longest has all of its closed. 4096
/// when keys were
/// origins alone; a key per user made that few for a company's users and
/// the sites they share. No more keys than idle connections can exist, and
/// these are `max_connections` at most, 16,384 by default.
const MAX_KEYS: usize = 16_384;

/// How many idle connections a [`Pool`] keeps for one key, and for how
/// many keys: [`MAX_IDLE_PER_ORIGIN`] and [`MAX_KEYS`], smaller in tests.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    per_key: usize,
    keys: usize,
}

/// The largest response head taken from an origin, and hyper's read buffer.
/// The buffer alone let a head somewhat larger through when its end came
/// in the read that filled it: a 270 KB head passed one time in two.
const MAX_RESPONSE_HEAD: usize = 256 * 1024;
/// A pooled connection idle this long may be closed by its origin as a
/// request goes out on it: origins close idle connections after their
/// keep-alive timeout, a second or more (Apache and Node 5 s, nginx 75 s).
/// A connection picked up sooner was in use a moment ago.
const REPLAY_AFTER: Duration = Duration::from_millis(250);

/// How soon after a request went out on a pooled connection the connection
/// must fail for the request to be sent again: the time for the close the
/// origin sent as the request went out to arrive, with room for a long
/// round trip.
const REPLAY_WITHIN: Duration = Duration::from_secs(1);

struct Idle {
    conn: Conn,
    since: Instant,
    /// Its number in [`Idles::order`].
    n: u64,
}

impl Idle {
    /// Whether it has been idle for `timeout`, or for [`GROWN_IDLE`] when
    /// its buffers grew (see [`GROWN_BUFFER`]).
    fn expired(&self, now: Instant, timeout: Duration) -> bool {
        let timeout =
            if self.conn.writes.grown.load(Ordering::Relaxed) { timeout.min(GROWN_IDLE) } else { timeout };
        now.duration_since(self.since) >= timeout
    }
}

/// An origin connection: the handle requests are sent on, the task that
/// drives it (which holds the request body being sent), and how its
/// writes go.
pub struct Conn {
    tx: SendRequest<RequestBody>,
    task: AbortHandle,
    writes: Arc<Writes>,
    /// The origin address it is connected to.
    pub peer: SocketAddr,
    /// Whether it may go back into the pool: not after an interim answer
    /// that said `Connection: close` (see [`Interims`]).
    reusable: bool,
}

/// How writes to an origin connection go: whether the origin takes what is
/// sent. A request body read whole from the client may still be on its way
/// to the origin, in hyper's buffer or stuck behind a full socket buffer.
///
/// Every write to an origin passes here: a clock reading per write that went
/// through (a forwarded GET makes one, head and all), no locked
/// read-modify-write.
#[derive(Debug)]
struct Writes {
    /// When the connection was made: `last` counts from here.
    base: Instant,
    /// When the last write went through, in nanoseconds after `base`.
    last: AtomicU64,
    /// The last write could not proceed: the origin is not reading.
    blocked: AtomicBool,
    /// Bytes came from the origin since `heard` was last cleared (before
    /// each request goes out on a pooled connection): an answer began.
    heard: AtomicBool,
    /// A read was offered more than [`GROWN_BUFFER`] bytes, or a request
    /// head that large went out: the buffers behind them are that large for
    /// good. (Not the size of a write: an upload's writes are its body's
    /// own chunks, which hyper does not copy, and counting them closed
    /// connections after 5 s idle that held nothing more; probe 225.)
    grown: AtomicBool,
    /// The origin reset the connection under a write, which was taken as
    /// written (by [`OriginTcp`](super::upstream_tls::OriginTcp), the
    /// socket's, whose flag this is): it is never pooled again.
    reset: Arc<AtomicBool>,
}

impl Writes {
    /// `reset` is the flag the socket sets (see the field).
    fn new(reset: Arc<AtomicBool>) -> Writes {
        Writes {
            base: Instant::now(),
            last: AtomicU64::new(0),
            blocked: AtomicBool::new(false),
            heard: AtomicBool::new(false),
            grown: AtomicBool::new(false),
            reset,
        }
    }

    /// Notes a read buffer or a request head of `size` bytes.
    #[inline]
    fn note_size(&self, size: usize) {
        if size > GROWN_BUFFER && !self.grown.load(Ordering::Relaxed) {
            self.grown.store(true, Ordering::Relaxed);
        }
    }

    /// Only the connection's own task writes, so plain stores do, and
    /// `blocked` is stored only when it changes.
    fn record<T>(&self, res: &Poll<io::Result<T>>) {
        if res.is_ready() {
            let nanos = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.last.store(nanos, Ordering::Relaxed);
        }
        self.note_blocked(res);
    }

    /// Whether the write (or flush: over TLS that is where the socket
    /// write happens) could not proceed.
    fn note_blocked<T>(&self, res: &Poll<T>) {
        let blocked = res.is_pending();
        if self.blocked.load(Ordering::Relaxed) != blocked {
            self.blocked.store(blocked, Ordering::Relaxed);
        }
    }

    /// When the last write went through (`base` if none did).
    fn last(&self) -> Instant {
        self.base + Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }
}

/// The origin socket as hyper's client sees it, reporting to [`Writes`].
type Watched = crate::watched_io::Watched<UpstreamIo, Arc<Writes>>;

/// The origin's side of an upgrade, as a tunnel's side of its own (its TLS
/// in reach, see [`Side`](super::relay::Side)), with the bytes hyper read
/// past the 101, which go to the client first.
pub fn upgraded_origin(upgraded: hyper::upgrade::Upgraded) -> (super::relay::BoxedSide, bytes::Bytes) {
    match upgraded.downcast::<TokioIo<Watched>>() {
        Ok(parts) => {
            let mut io = parts.io.into_inner().io;
            io.upgraded();
            (Box::new(io), parts.read_buf)
        }
        Err(upgraded) => (Box::new(TokioIo::new(upgraded)), bytes::Bytes::new()),
    }
}

impl IoObserver for Arc<Writes> {
    #[inline]
    fn read_some(&mut self, offered: usize) {
        if !self.heard.load(Ordering::Relaxed) {
            self.heard.store(true, Ordering::Relaxed);
        }
        self.note_size(offered);
    }

    fn write(
        &mut self,
        _cx: &mut Context<'_>,
        _offered: usize,
        res: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        // (A reset under a write arrives here as written: see `OriginTcp`.)
        self.record(&res);
        res
    }

    fn flush(&mut self, _cx: &mut Context<'_>, res: Poll<io::Result<()>>) -> Poll<io::Result<()>> {
        self.note_blocked(&res);
        res
    }
}

impl Conn {
    /// Whether the request is still on its way to the origin: its last
    /// write could not proceed (the origin stopped reading). An answer that
    /// comes then came before the origin read the whole request.
    pub fn still_sending(&self) -> bool {
        self.writes.blocked.load(Ordering::Relaxed)
    }

    /// Gives up the connection: it is closed, whatever it was doing, when
    /// the returned value is dropped. For an exchange that cannot finish
    /// (an upload the origin stopped reading, or one that will not be
    /// sent), which hyper would otherwise drive for as long as the origin
    /// keeps the socket open.
    pub fn close_on_drop(self) -> AbortOnDrop {
        AbortOnDrop(self.task)
    }
}

/// The idle connections, under the pool's lock.
#[derive(Default)]
struct Idles {
    /// Per origin, oldest first: a connection goes back at the end and is
    /// taken from the end.
    by_key: HashMap<Arc<Key>, Vec<Idle>>,
    /// How many there are, all origins together.
    count: usize,
    /// Every connection put back, by number and key, oldest first, also
    /// those taken, closed or expired since (skipped when met): where the
    /// one idle longest is, for a full pool to close. It was looked for
    /// at every key, under the lock, each time a connection came back to a
    /// full pool: with 5,000 keys (users times origins), `put` was a
    /// quarter of authgate's CPU samples (`benches/HISTORY.md`). Rebuilt
    /// from `by_key` when it holds over twice as many as are idle, plus
    /// 1,024.
    order: std::collections::VecDeque<(u64, Arc<Key>)>,
    /// The number of the next connection put back.
    next: u64,
}

impl Idles {
    /// Closes the connection idle longest, whoever's it is; `false` when
    /// there is none.
    fn close_oldest(&mut self) -> bool {
        while let Some((n, key)) = self.order.pop_front() {
            let Some(list) = self.by_key.get_mut(&*key) else { continue };
            // (Each list is in the order of its numbers.)
            let Ok(i) = list.binary_search_by_key(&n, |c| c.n) else { continue };
            list.remove(i);
            self.count -= 1;
            if list.is_empty() {
                self.by_key.remove(&*key);
            }
            return true;
        }
        false
    }

    /// Takes out every connection of the key whose connection is idle
    /// longest, to be closed; `None` when there is none.
    fn take_oldest_key(&mut self) -> Option<Vec<Idle>> {
        while let Some((n, key)) = self.order.pop_front() {
            // (The key's other entries in the order are skipped later, as
            // any whose connection is gone.)
            let Some(list) = self.by_key.get(&*key) else { continue };
            if list.binary_search_by_key(&n, |c| c.n).is_err() {
                continue;
            }
            let list = self.by_key.remove(&*key).unwrap_or_default();
            self.count -= list.len();
            return Some(list);
        }
        None
    }

    /// Adds `conn` at the end of `key`'s list, and of [`Idles::order`].
    fn push(&mut self, key: Arc<Key>, conn: Conn) {
        let n = self.next;
        self.next += 1;
        self.order.push_back((n, key.clone()));
        self.by_key.entry(key).or_default().push(Idle { conn, since: Instant::now(), n });
        self.count += 1;
        if self.order.len() > 2 * self.count + 1024 {
            let mut live: Vec<(u64, Arc<Key>)> =
                self.by_key.iter().flat_map(|(key, list)| list.iter().map(|c| (c.n, key.clone()))).collect();
            live.sort_unstable_by_key(|(n, _)| *n);
            self.order = live.into();
        }
    }
}

/// The upstream connection pool.
pub struct Pool {
    idle: Mutex<Idles>,
    /// `[limits] upstream_idle_timeout`, in nanoseconds (a reload sets it).
    idle_timeout: AtomicU64,
    /// The most kept idle at once (see [`Pool::set_max_idle`]).
    max_idle: AtomicUsize,
    /// The most kept idle per key, and the most keys.
    bounds: Bounds,
    /// The id of the live configuration, as [`Pool::retire`] last set it:
    /// connections of others are not taken back.
    live: AtomicU64,
}

/// A response plus what to do with its connection afterwards.
pub struct Sent {
    /// The origin's response.
    pub response: Response<Incoming>,
    /// The connection, to return to the pool once the response is consumed.
    pub conn: Conn,
}

/// Why a dial failed, and the origin address it had connected to when it
/// failed after the connect (the TLS handshake): the access line names it,
/// as the one that served a bad certificate.
pub type DialError = (ProxyError, Option<SocketAddr>);

/// How [`Pool::send`] waits for the answer, and where it says which origin
/// address the request went out to.
pub struct Exchange<'a> {
    /// The longest wait for the response head after the request's last
    /// progress (see `head_wait`).
    pub head_timeout: Duration,
    /// The request body's progress, when it has one.
    pub upload: Option<&'a Upload>,
    /// The address of the connection the request last went out on, as
    /// soon as it does (`None` until then): the access line names that
    /// origin whatever comes back, a bad answer, none in time, or none at
    /// all as the client left. It named none then, and which of a name's
    /// addresses failed was not said.
    pub reached: &'a mut Option<SocketAddr>,
    /// The addresses the rules checked for this request (a rule with
    /// `cidrs`), if they did: a pooled connection to another address is
    /// not used for it. It was made for a request the rules checked
    /// against another answer, perhaps for another user (a user's deny
    /// rule was passed when the name's answer changed, probe 88).
    pub only_to: Option<&'a [SocketAddr]>,
    /// What the interim (1xx) answers to the request said.
    pub interims: &'a Interims,
}

/// What the interim (1xx) answers to a request said, as hyper's
/// `on_informational` hook saw them (see `forward::watch_interims`); hyper
/// does not pass them on, and the request's answer is checked against them.
#[derive(Debug, Default)]
pub struct Interims {
    /// One said `Connection: close`: the connection is not used again (RFC
    /// 9112 §9.6; it was pooled, and the next user got the bytes the origin
    /// sent behind it, probe 174).
    pub close: AtomicBool,
    /// One had a head over 256 KiB (`MAX_RESPONSE_HEAD`): the answer is
    /// refused, as for a final head that large. hyper's bound on its read
    /// buffer let such a head through or not by how the reads fell (an
    /// interim head of 260 to 400 KiB passed in some runs and got a 502 in
    /// others, probe 203).
    pub oversized: AtomicBool,
}

impl Interims {
    /// Records what the interim answer of `headers` said.
    pub fn record(&self, headers: &http::HeaderMap) {
        if super::headers::closes(headers) {
            self.close.store(true, Ordering::Relaxed);
        }
        if head_len(headers) > MAX_RESPONSE_HEAD {
            self.oversized.store(true, Ordering::Relaxed);
        }
    }
}

impl Pool {
    /// An empty pool for the configuration `live`; idle connections older
    /// than `idle_timeout` are closed (by [`Pool::sweep`], or when found at
    /// checkout).
    pub fn new(idle_timeout: Duration, live: u64) -> Self {
        Pool::bounded(idle_timeout, live, Bounds { per_key: MAX_IDLE_PER_ORIGIN, keys: MAX_KEYS })
    }

    fn bounded(idle_timeout: Duration, live: u64, bounds: Bounds) -> Self {
        let pool = Pool {
            idle: Mutex::new(Idles::default()),
            idle_timeout: AtomicU64::new(0),
            max_idle: AtomicUsize::new(usize::MAX),
            bounds,
            live: AtomicU64::new(live),
        };
        pool.set_idle_timeout(idle_timeout);
        pool
    }

    /// Sets how long a connection may sit idle (after a reload).
    pub fn set_idle_timeout(&self, idle_timeout: Duration) {
        let nanos = u64::try_from(idle_timeout.as_nanos()).unwrap_or(u64::MAX);
        self.idle_timeout.store(nanos, Ordering::Relaxed);
    }

    /// Sets the most idle connections kept, all origins together. Each
    /// holds a descriptor: without a bound for all (there is one per origin
    /// and one on origins), one client's slow requests to a few origins
    /// filled the pool with 982 connections, the process ran out of
    /// descriptors, and other clients got 503 with 20 connections open
    /// (probe 121).
    pub fn set_max_idle(&self, max_idle: usize) {
        self.max_idle.store(max_idle, Ordering::Relaxed);
    }

    fn idle_timeout(&self) -> Duration {
        Duration::from_nanos(self.idle_timeout.load(Ordering::Relaxed))
    }

    /// Closes the connections idle for the idle timeout or longer, and
    /// drops those their origin has closed. Without it, one to an origin
    /// that keeps idle connections open (some never close them) and is not
    /// asked again stayed open for the life of the process, a descriptor
    /// and a socket buffer each; and those origins closed (after their
    /// keep-alive timeout, often seconds) counted against the bound on all
    /// idle connections until then: pooling stopped for every other origin
    /// while the metric said 0 (probe 122). A look at each connection, four
    /// times a second; the bound keeps them few.
    pub fn sweep(&self) {
        let timeout = self.idle_timeout();
        let now = Instant::now();
        let mut expired = Vec::new();
        {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.by_key.retain(|_, list| {
                expired.extend(list.extract_if(.., |c| c.expired(now, timeout) || c.conn.tx.is_closed()));
                !list.is_empty()
            });
            idle.count -= expired.len();
        }
        // Closed outside the lock: requests wait on it.
        drop(expired);
    }

    /// Closes the idle connections of the users `changed` names (removed, or
    /// whose entry changed), when a users file applies: they serve nobody
    /// again (see [`Account`]), and a user disabled and then enabled, or put
    /// back as they were, is the same account again, which took the old
    /// connection, with what an origin sent late on it (probe 196).
    pub fn forget_users(&self, changed: impl Fn(&str) -> bool) {
        let gone = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let Idles { by_key, count, .. } = &mut *idle;
            let mut gone = Vec::new();
            by_key.retain(|key, list| {
                if changed(&key.3.0) {
                    *count -= list.len();
                    gone.push(std::mem::take(list));
                    return false;
                }
                true
            });
            gone
        };
        // Closed outside the lock: requests wait on it.
        drop(gone);
    }

    /// How many connections are idle in the pool, not counting those the
    /// origin has closed meanwhile (dropped when next looked at). For the
    /// metrics: a look at each.
    pub fn idle_connections(&self) -> usize {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.by_key.values().flatten().filter(|c| !c.conn.tx.is_closed()).count()
    }

    /// The most recently used idle connection for `key` that is still
    /// open, and to one of `only_to` if given (see [`Exchange::only_to`]),
    /// with how long it sat idle; closed and expired ones met on the way
    /// are dropped.
    fn checkout(&self, key: &Key, only_to: Option<&[SocketAddr]>) -> Option<(Conn, Duration)> {
        let timeout = self.idle_timeout();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let Idles { by_key, count, .. } = &mut *idle;
        let list = by_key.get_mut(key)?;
        let now = Instant::now();
        let mut found = None;
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            let c = &list[i];
            let idle_for = now.duration_since(c.since);
            if !c.conn.tx.is_ready() || c.expired(now, timeout) {
                list.remove(i);
                *count -= 1;
            } else if only_to.is_none_or(|addrs| addrs.contains(&c.conn.peer)) {
                found = Some((list.remove(i).conn, idle_for));
                *count -= 1;
                break;
            }
        }
        if list.is_empty() {
            by_key.remove(key);
        }
        found
    }

    /// Closes every idle connection, and from now on takes back only those
    /// of configuration `live` (after a reload: the egress policy or the
    /// DNS answers they were made under may have changed; at shutdown,
    /// [`NO_CONFIGURATION`]). A connection in use now comes back after
    /// this; one of another configuration is then closed: it went back
    /// into the pool, and under a policy it was not checked against
    /// (probe 74). The keys keep a request from taking another
    /// configuration's connection meanwhile (probe 75). [`NO_CONFIGURATION`]
    /// is for good: a reload during the shutdown's drain does not have
    /// connections pooled again.
    pub fn retire(&self, live: u64) {
        let idle = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if self.live.load(Ordering::SeqCst) != NO_CONFIGURATION {
                self.live.store(live, Ordering::SeqCst);
            }
            std::mem::take(&mut *idle)
        };
        // Closed outside the lock: requests wait on it.
        drop(idle);
    }

    /// Returns a connection to the pool once its current response is done.
    pub fn checkin(self: &std::sync::Arc<Self>, key: Key, mut conn: Conn) {
        // Usually it is already: hyper read a small response whole before
        // handing over its head. Then no task is needed to wait for it.
        if conn.tx.is_ready() {
            self.put(key, conn);
            return;
        }
        let pool = self.clone();
        tokio::spawn(async move {
            if conn.tx.ready().await.is_ok() {
                pool.put(key, conn);
            }
        });
    }

    /// Adds a ready connection to the idle list of `key`, if it is one of
    /// the live configuration. When the pool holds as many as it may, the
    /// connection idle longest, whoever's it is, makes room: the pool is
    /// shared by its users' connections, and turned away instead, the new
    /// one was closed, so one user's burst held the whole pool until it
    /// timed out, and every other user's connections served one request
    /// each meanwhile (probe 195).
    fn put(&self, key: Key, conn: Conn) {
        if !conn.reusable || conn.writes.reset.load(Ordering::Relaxed) {
            return;
        }
        // Connections closed to make room, dropped after the lock: a
        // checkout waits on it.
        let mut closed = Vec::new();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if key.2 != self.live.load(Ordering::SeqCst) {
            return;
        }
        // The key as the pool holds it, if it does: one key shared by the
        // list and the order, not a copy each.
        let (key, idle_now) = match idle.by_key.get_key_value(&key) {
            Some((shared, list)) => (shared.clone(), list.len()),
            None => (Arc::new(key), 0),
        };
        // Past its own bound, it is closed before another makes room for it
        // in vain (probe 196).
        let Bounds { per_key, keys } = self.bounds;
        if idle_now >= per_key {
            return;
        }
        // A new key when the keys are full: the key whose connection is idle
        // longest makes room, whoever's it is, all its connections closed
        // (at most `per_key`; closing the ones idle longest until a key had
        // none left closed nearly the whole pool when the keys' connections
        // came in turns; probe 361). It was closed instead (after a sweep of
        // every key for closed and expired ones), so one user's idle
        // connections to 16,384 origins kept every other user's new ones
        // out of the pool (probe 359).
        if !idle.by_key.contains_key(&*key) && idle.by_key.len() >= keys {
            match idle.take_oldest_key() {
                Some(list) => closed = list,
                None => return,
            }
        }
        if idle.count >= self.max_idle.load(Ordering::Relaxed) && !idle.close_oldest() {
            return;
        }
        idle.push(key, conn);
        drop(idle);
        drop(closed);
    }

    /// Sends `req` to `key`, on a pooled connection if one is idle, else on a
    /// new one made by `dial` (which resolves, checks and connects).
    ///
    /// While `replayable` says so (an idempotent request without a body,
    /// RFC 9110 §9.2.2, under a configuration still live), a pooled
    /// connection that fails after taking the request, before a byte of an
    /// answer and within `REPLAY_WITHIN` of sending it (the origin closed
    /// it as it went out: its keep-alive timeout ran out), is not the
    /// client's problem: the request is sent again, once, on a new
    /// connection (RFC 9112 §9.3.1), as Squid and nginx do. Otherwise that
    /// race was a 502. An origin that began an answer, or that held the
    /// request longer, has worked on it: it is not sent again (it was, and
    /// the client waited twice `upstream_response_timeout`; probe 124).
    /// Only for a connection idle for
    /// `REPLAY_AFTER`: keeping the head to send again costs a copy of it
    /// (1.2k instructions, 2.5 % of a pooled request). `replayable` is asked
    /// again before the new connection is made: a reload meanwhile may have
    /// forbidden the origin.
    ///
    /// # Errors
    /// The dial error, `UpstreamProtocol`, `UpstreamReadTimeout`,
    /// `UpstreamWriteTimeout` or `BodyTimeout` (see `head_wait`).
    pub async fn send<D, F, R>(
        &self,
        key: &Key,
        mut req: Request<RequestBody>,
        exchange: Exchange<'_>,
        replayable: R,
        dial: D,
    ) -> Result<Sent, ProxyError>
    where
        D: FnOnce() -> F,
        F: Future<Output = Result<(UpstreamIo, SocketAddr), DialError>>,
        R: Fn() -> bool,
    {
        let Exchange { head_timeout, upload, reached, only_to, interims } = exchange;
        // hyper writes a request head from a buffer of its own, which
        // keeps its size.
        let large_head = request_head_len(&req) > GROWN_BUFFER;
        while let Some((mut conn, idle_for)) = self.checkout(key, only_to) {
            // What the origin sends from now on answers this request.
            conn.writes.heard.store(false, Ordering::Relaxed);
            // The head, kept to make the request again (the request itself
            // is gone once hyper took it).
            let again =
                (idle_for >= REPLAY_AFTER && replayable()).then(|| (Replay::of(&req), Instant::now()));
            let before = reached.replace(conn.peer);
            let sent = head_wait(head_timeout, upload, &conn.writes, conn.tx.try_send_request(req)).await;
            match sent {
                Ok(Ok(response)) => {
                    return Sent::checked(response, conn, interims).map(|s| s.marked(large_head));
                }
                Ok(Err(mut e)) => match (e.take_message(), again) {
                    // Not sent on it after all.
                    (Some(back), _) => {
                        *reached = before;
                        req = back;
                    }
                    (None, Some((again, sent_at)))
                        if closed_under_it(e.error())
                            && !conn.writes.heard.load(Ordering::Relaxed)
                            && sent_at.elapsed() < REPLAY_WITHIN
                            && replayable() =>
                    {
                        tracing::debug!(error = %e.error(), "pooled origin connection failed; sending the request again on a new one");
                        req = again.request();
                        break;
                    }
                    (None, _) => return Err(upstream_error(e.error(), &conn.writes)),
                },
                Err(e) => {
                    drop(conn.close_on_drop());
                    return Err(e);
                }
            }
        }
        // (A request sent again keeps the address it went out to until the
        // new connection is made: if none can be, that one is named.)
        // Boxed: dialing (resolve, connect, maybe a TLS handshake) and the
        // handshake make a future of about 1.5 KiB that only a new connection
        // needs; inline, it would enlarge the future of every request (pooled
        // ones included) and every copy hyper and tokio make of it.
        let exchange = Exchange { head_timeout, upload, reached, only_to, interims };
        Box::pin(send_new(req, exchange, dial())).await.map(|s| s.marked(large_head))
    }
}

/// The head of a request without a body, to make it again.
///
/// With its extensions: they hold hyper's `on_informational` hook (see
/// `forward::watch_interims`), and a request sent again without it had its
/// interim answers unseen (probe 174: bob got the bytes behind the `103`
/// with `Content-Length: 59` that answered alice's retried GET).
struct Replay {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
    extensions: http::Extensions,
}

impl Replay {
    fn of<B>(req: &Request<B>) -> Self {
        Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
            extensions: req.extensions().clone(),
        }
    }

    fn request(self) -> Request<RequestBody> {
        let mut req = Request::new(RequestBody::empty());
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers;
        *req.extensions_mut() = self.extensions;
        req
    }
}

/// Sends `req` on a new connection, the one `dial` makes.
async fn send_new(
    req: Request<RequestBody>,
    exchange: Exchange<'_>,
    dial: impl Future<Output = Result<(UpstreamIo, SocketAddr), DialError>>,
) -> Result<Sent, ProxyError> {
    let Exchange { head_timeout, upload, reached, interims, .. } = exchange;
    let (stream, peer) = match dial.await {
        Ok(dialed) => dialed,
        Err((e, connected)) => {
            if connected.is_some() {
                *reached = connected;
            }
            return Err(e);
        }
    };
    *reached = Some(peer);
    let writes = Arc::new(Writes::new(stream.reset_flag()));
    let io = Watched { io: stream, observer: writes.clone() };
    let (mut tx, conn) = http1::Builder::new()
        .max_buf_size(MAX_RESPONSE_HEAD)
        // RFC 9112 §5.1: a proxy MUST remove whitespace between a response
        // field's name and its colon, and pass the field on (hyper's default
        // refuses the response). What the client gets is framed by
        // authgate, so the field cannot be read two ways downstream.
        .allow_spaces_after_header_name_in_responses(true)
        .handshake::<_, RequestBody>(TokioIo::new(io))
        .await
        .map_err(|e| upstream_error(&e, &writes))?;
    let task = tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    })
    .abort_handle();
    let sent = head_wait(head_timeout, upload, &writes, tx.send_request(req)).await;
    let conn = Conn { tx, task, writes, peer, reusable: true };
    match sent {
        Ok(Ok(response)) => Sent::checked(response, conn, interims),
        Ok(Err(e)) => Err(upstream_error(&e, &conn.writes)),
        // No answer in time: the exchange is abandoned, and with it the
        // connection, which may still be sending the request body.
        Err(e) => {
            drop(conn.close_on_drop());
            Err(e)
        }
    }
}

/// Waits for the response head: `d` after the request's last progress (its
/// start, a piece of its body read from the client, or a write of it to the
/// origin going through). A body that keeps
/// arriving, or an origin that keeps taking it (slowly), moves the
/// deadline on. When it passes with the body unfinished, whoever stopped
/// is to blame: the client that sends nothing more (408), or the origin
/// that reads nothing more (504 `write`).
async fn head_wait<T>(
    d: Duration,
    upload: Option<&Upload>,
    writes: &Writes,
    f: impl Future<Output = T>,
) -> Result<T, ProxyError> {
    let mut f = std::pin::pin!(f);
    let mut deadline = tokio::time::Instant::now() + d;
    loop {
        match tokio::time::timeout_at(deadline, f.as_mut()).await {
            Ok(v) => return Ok(v),
            Err(_) => {
                let Some(upload) = upload else { return Err(ProxyError::UpstreamReadTimeout) };
                let now = Instant::now();
                // A write to the origin is progress too, counted from when
                // it went through (counted from the look that found it, a
                // stall took up to twice the timeout). And a body read whole
                // from the client may leave authgate seconds later, to an
                // origin that reads slowly: the wait for the answer runs
                // from its last write (it ran from the client's last byte,
                // and cut an origin that had just read the body).
                let next = upload.last_progress().max(writes.last()) + d;
                if next > now {
                    deadline = next.into();
                    continue;
                }
                let origin_stuck = writes.blocked.load(Ordering::Relaxed);
                return Err(match upload.state() {
                    UploadState::Sending if upload.waits_for_client() && !origin_stuck => {
                        ProxyError::BodyTimeout
                    }
                    // The client has more to send, or the origin has not
                    // taken all it was sent: the origin stopped reading (an
                    // upload it will not read), not the client's fault.
                    UploadState::Sending => ProxyError::UpstreamWriteTimeout,
                    _ if origin_stuck => ProxyError::UpstreamWriteTimeout,
                    _ => ProxyError::UpstreamReadTimeout,
                });
            }
        }
    }
}

impl Sent {
    /// Marks the connection's buffers as grown (see [`GROWN_BUFFER`]) when
    /// `large_head` says its request head was.
    fn marked(self, large_head: bool) -> Self {
        if large_head {
            self.conn.writes.note_size(usize::MAX);
        }
        self
    }

    /// The response, unless its head, or an interim answer's, is larger
    /// than [`MAX_RESPONSE_HEAD`] (counted as [`head_len`] does): then the
    /// connection is closed. After an interim answer that said `Connection:
    /// close` the connection is not pooled (see [`Interims`]).
    ///
    /// (An answer that has no body by its request or status but declares
    /// one, after which an origin may send that body in a later write, and a
    /// request body an origin may leave unread, need nothing here: the next
    /// answer on the connection may then not be the next request's, but the
    /// connection serves the same account only; see [`Key`].)
    fn checked(
        response: Response<Incoming>,
        mut conn: Conn,
        interims: &Interims,
    ) -> Result<Sent, ProxyError> {
        if head_len(response.headers()) > MAX_RESPONSE_HEAD || interims.oversized.load(Ordering::Relaxed) {
            drop(conn.close_on_drop());
            return Err(ProxyError::UpstreamProtocol {
                bad: BadAnswer::HeadTooLarge,
                detail: "response head over 256 KiB",
            });
        }
        if interims.close.load(Ordering::Relaxed) {
            conn.reusable = false;
        }
        Ok(Sent { response, conn })
    }
}

/// The size of a response head as sent, or less, never more: the status
/// line without its reason phrase, and each field with a colon and a line
/// end, without the whitespace that may surround its value. So a head of
/// 256 KiB or less always passes, and one above passes only by as much as
/// its reason phrase and that whitespace (a space per field, usually),
/// when hyper's reads let it (counted with the space, `Name:value` heads
/// under the limit were refused).
fn head_len(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .fold("HTTP/1.1 200\r\n\r\n".len(), |n, (name, value)| n + name.as_str().len() + 1 + value.len() + 2)
}

/// The size of a request head as hyper writes it, about: its method,
/// target and fields (see [`head_len`]).
fn request_head_len<B>(req: &Request<B>) -> usize {
    let target = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    req.method().as_str().len() + target + head_len(req.headers())
}

/// Whether the connection failed under the request (closed or reset, no
/// whole answer read), rather than answering badly or too late.
fn closed_under_it(e: &hyper::Error) -> bool {
    use std::error::Error as _;
    e.is_incomplete_message()
        || e.is_canceled()
        || e.is_closed()
        || e.source().is_some_and(|s| s.is::<io::Error>())
}

/// The TLS error under `e`, if that is what failed: an alert the origin
/// sent, a record that does not decrypt, ...
fn tls_error(e: &hyper::Error) -> Option<&rustls::Error> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let tls = s.downcast_ref::<io::Error>().and_then(|io| io.get_ref()?.downcast_ref::<rustls::Error>());
        if tls.is_some() {
            return tls;
        }
        source = s.source();
    }
    None
}

/// What was malformed in a response hyper could not parse: its framing
/// fields are told as authgate's own check of a `HEAD` answer tells them (a
/// `GET`'s bad `Content-Length` was "malformed response", the same answer
/// to a `HEAD` "malformed Content-Length"). hyper names the field only in
/// its message.
fn parse_detail(e: &hyper::Error) -> &'static str {
    let text = e.to_string();
    if text.starts_with("invalid content-length parsed") {
        "malformed Content-Length"
    } else if text.starts_with("unexpected transfer-encoding parsed") {
        // RFC 9112 §6.1: framing an HTTP/1.0 recipient cannot trust.
        "Transfer-Encoding from an HTTP/1.0 origin"
    } else {
        "malformed response"
    }
}

/// The error for `e`, which ended an exchange on the connection `writes`
/// watches.
fn upstream_error(e: &hyper::Error, writes: &Writes) -> ProxyError {
    // A TLS origin that closes without close_notify: rustls reports the
    // end of the stream as an error (it was "connection failed", probe 111).
    let kind = crate::error::io_kind(e);
    // Closed (or reset) before the answer's end: before its first byte, or in it.
    let cut =
        if writes.heard.load(Ordering::Relaxed) { BadAnswer::Incomplete } else { BadAnswer::Terminated };
    let (bad, detail) = if e.is_incomplete_message() || kind == Some(io::ErrorKind::UnexpectedEof) {
        (cut, "connection closed before a complete response")
    } else if e.is_parse_too_large() {
        // hyper's one error for the three (a length of 2^64 - 2 or more
        // was told as a head too large; probe 154), under the type of the
        // two that are the head's.
        (
            BadAnswer::HeadTooLarge,
            "response head over 256 KiB or over 100 fields, or a Content-Length too large",
        )
    } else if e.is_parse() || e.is_parse_status() {
        (BadAnswer::Protocol, parse_detail(e))
    } else if e.is_timeout() {
        return ProxyError::UpstreamReadTimeout;
    } else if e.is_user() {
        (BadAnswer::Protocol, "request could not be sent")
    } else if let Some(tls) = tls_error(e) {
        match tls {
            // After the handshake: an alert other than TLS 1.3's late
            // refusal of a client without a certificate is no handshake
            // failure (it was worded as one; probe 239).
            rustls::Error::AlertReceived(alert) => {
                let detail = match alert {
                    rustls::AlertDescription::CertificateRequired => {
                        super::upstream_tls::alert_detail(*alert)
                    }
                    _ => "TLS error on the connection to the origin",
                };
                (BadAnswer::TlsAlert(u8::from(*alert)), detail)
            }
            // A record that does not decrypt, say (it was "connection
            // failed", typed `http_protocol_error`; probe 235).
            _ => (BadAnswer::Tls, "TLS error on the connection to the origin"),
        }
    } else if matches!(
        kind,
        Some(io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe)
    ) {
        (cut, "connection failed")
    } else {
        (BadAnswer::Protocol, "connection failed")
    };
    ProxyError::UpstreamProtocol { bad, detail }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A write to an origin that does not read ends up blocked, and says so
    /// (an answer that comes then came before the origin read the whole
    /// request); once the origin reads, writes go on and count as progress.
    #[tokio::test]
    async fn writes_to_an_origin_that_stops_reading_are_seen_blocked() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (mut origin, _) = accepted.unwrap();
        let client = super::super::upstream_tls::OriginTcp::new(client.unwrap());
        let writes = Arc::new(Writes::new(Arc::default()));
        let mut io = Watched { io: UpstreamIo::Plain(client), observer: writes.clone() };
        let chunk = vec![b'x'; 256 * 1024];
        let mut written = 0usize;
        // Until the socket buffers are full: a write that does not finish.
        while tokio::time::timeout(Duration::from_millis(200), io.write_all(&chunk)).await.is_ok() {
            written += chunk.len();
            assert!(written < 512 * 1024 * 1024, "the buffers never filled");
        }
        assert!(writes.blocked.load(Ordering::Relaxed), "a write that cannot proceed is seen");
        let before = writes.last();
        // The origin reads everything: the writes go on.
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 1024 * 1024];
            while let Ok(1..) = origin.read(&mut buf).await {}
        });
        io.write_all(b"end").await.unwrap();
        assert!(!writes.blocked.load(Ordering::Relaxed));
        assert!(writes.last() > before, "a write that went through is progress");
        drop(io);
        reader.await.unwrap();
    }

    /// A connection to the origin at `listener`, made as `send_new` makes one,
    /// and the origin's end of it.
    async fn connection(listener: &TcpListener) -> (Conn, TcpStream) {
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let client = super::super::upstream_tls::OriginTcp::new(client.unwrap());
        let writes = Arc::new(Writes::new(Arc::default()));
        let io = Watched { io: UpstreamIo::Plain(client), observer: writes.clone() };
        let (mut tx, conn) = http1::handshake::<_, RequestBody>(TokioIo::new(io)).await.unwrap();
        let task = tokio::spawn(async move { drop(conn.await) }).abort_handle();
        tx.ready().await.unwrap();
        (Conn { tx, task, writes, peer: addr, reusable: true }, accepted.unwrap().0)
    }

    /// `user`'s key for the origin at `listener`, under configuration 1.
    fn key(listener: &TcpListener, user: &str) -> Key {
        let target = crate::target::parse_authority(&listener.local_addr().unwrap().to_string()).unwrap();
        (target, false, 1, (user.into(), 0))
    }

    /// One origin and user keep at most `per_key` idle connections: more are
    /// closed, not kept (1024 in the proxy: never more than were in use at
    /// once, and a descriptor each).
    #[tokio::test]
    async fn a_key_keeps_at_most_its_bound_of_idle_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Arc::new(Pool::bounded(Duration::from_secs(60), 1, Bounds { per_key: 2, keys: 8 }));
        let mut origin_ends = Vec::new();
        for _ in 0..3 {
            let (conn, origin_end) = connection(&listener).await;
            pool.checkin(key(&listener, "alice"), conn);
            origin_ends.push(origin_end);
        }
        assert_eq!(pool.idle_connections(), 2);
        // The third was closed: its origin reads the end of it.
        let mut last = origin_ends.pop().unwrap();
        let read = tokio::time::timeout(Duration::from_secs(10), last.read(&mut [0u8; 16])).await;
        assert!(matches!(read, Ok(Ok(0))), "{read:?}");
        // Another user's key has room of its own.
        let (conn, _bob_end) = connection(&listener).await;
        pool.checkin(key(&listener, "bob"), conn);
        assert_eq!(pool.idle_connections(), 3);
    }

    /// The pool keeps idle connections for at most `keys` keys (16,384 in
    /// the proxy): a connection of a new key makes room by closing those of
    /// the key whose connection is idle longest (all of them, and no
    /// other's, though the keys' connections came in turns); a key already
    /// there takes more without closing any.
    #[tokio::test]
    async fn the_pool_keeps_idle_connections_for_at_most_its_bound_of_keys() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Arc::new(Pool::bounded(Duration::from_secs(60), 1, Bounds { per_key: 8, keys: 2 }));
        let mut ends = Vec::new();
        for user in ["alice", "bob", "alice", "bob"] {
            let (conn, end) = connection(&listener).await;
            pool.checkin(key(&listener, user), conn);
            ends.push(end);
        }
        assert_eq!(pool.idle_connections(), 4);
        // Carol's takes the room of alice's two; bob keeps his.
        let (carol, _carol_end) = connection(&listener).await;
        pool.checkin(key(&listener, "carol"), carol);
        assert_eq!(pool.idle_connections(), 3);
        assert!(pool.checkout(&key(&listener, "alice"), None).is_none(), "alice's key made room");
        for i in [0, 2] {
            let mut read = [0u8; 1];
            let closed = tokio::time::timeout(Duration::from_secs(5), ends[i].read(&mut read)).await;
            assert!(matches!(closed, Ok(Ok(0))), "{closed:?}");
        }
        // A key already there still takes more, closing none.
        let (bob_again, _bob_again_end) = connection(&listener).await;
        pool.checkin(key(&listener, "bob"), bob_again);
        assert_eq!(pool.idle_connections(), 4);
        assert!(pool.checkout(&key(&listener, "carol"), None).is_some());
    }
}
