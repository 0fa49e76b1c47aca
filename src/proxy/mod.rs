//! The proxy: classify → authenticate → authorize → dispatch.
//!
//! [`service`] is the per-request entry point; [`tunnel`] carries CONNECT,
//! [`forward`] carries absolute-form `http://` requests (and `https://` ones
//! received on a TLS listener); [`connect`] is the one
//! place that resolves, checks and dials; [`headers`] does header hygiene;
//! [`max_forwards`] answers TRACE and OPTIONS aimed at this hop.

pub mod connect;
pub mod dns;
pub mod forward;
pub mod headers;
pub mod max_forwards;
pub mod pool;
pub mod relay;
pub mod service;
pub mod sessions;
pub mod splice;
pub mod tunnel;
pub mod upstream_tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::config::Snapshot;
use crate::server::limits::ConnLimiter;
use crate::server::reload::StartOnly;
use crate::server::tls::CertSlot;
use crate::telemetry::Metrics;
use connect::Connector;
use dns::Resolver;
use pool::Pool;
use sessions::Sessions;

/// Everything shared by all connections: the live snapshot and the engines.
pub struct State {
    /// The live configuration; replaced whole on reload.
    pub snapshot: ArcSwap<Snapshot>,
    /// Authentication engine (cache, argon2 pool).
    pub auth: Authenticator,
    /// Resolver + dialer.
    pub connector: Connector,
    /// Upstream keep-alive pool.
    pub pool: Arc<Pool>,
    /// Counters and gauges for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Every connection and tunnel task, for graceful shutdown.
    pub tasks: TaskTracker,
    /// Cancelled when shutdown begins: listeners stop, idle keep-alive
    /// connections close, tarpit waits end.
    pub stopping: CancellationToken,
    /// Cancelled when shutdown's grace period is over: closes tunnels.
    pub kill: CancellationToken,
    /// Client connections answered and closed on authgate's side, waiting
    /// for the client to close.
    pub lingering: Arc<crate::server::guard::Lingering>,
    /// Open connections and tunnels by user, for revocation on reload.
    pub sessions: Arc<Sessions>,
    /// Incremented each time a new snapshot is installed: a successful
    /// reload, or a users file applied on its own after a reload failed.
    pub generation: AtomicU64,
    /// Reloads that failed (the old configuration stayed; a users file that
    /// loads on its own may still have been applied).
    pub reload_failures: AtomicU64,
    /// Open client connections, overall and per address.
    pub conns: Arc<ConnLimiter>,
    /// The live certificate of each TLS listener, in the order of the
    /// first snapshot's `[[server.tls]]`, with its configured address.
    pub cert_slots: Vec<(SocketAddr, Arc<CertSlot>)>,
    /// The settings that need a restart, as this run has them.
    pub started: StartOnly,
    /// True while listeners are accepting (for `/readyz`).
    pub ready: AtomicBool,
    /// The listeners of the first snapshot, the ones bound for this run
    /// (a reload that changes them needs a restart), as the summary says them.
    pub listening: String,
    /// The SIGHUP listener of the binary's start, until the reload watcher
    /// takes it (see [`State::hand_over_hangup`]).
    pub hangup: std::sync::Mutex<Option<crate::server::reload::Hangup>>,
    /// Held while a reload installs its snapshot and says so; true once the
    /// shutdown is over (see [`State::close_installs`]).
    pub installs: std::sync::Mutex<bool>,
    ids: RequestIds,
}

impl State {
    /// Builds the shared state around a first snapshot.
    pub fn new(snapshot: Snapshot) -> Arc<Self> {
        let workers = match snapshot.auth.verify_threads {
            0 => crate::server::limits::half_the_cores(),
            n => n,
        };
        let metrics = Arc::new(Metrics::new(snapshot.metrics_per_user));
        let auth = Authenticator::new(workers, snapshot.auth.max_pending, metrics.clone());
        let cert_slots =
            snapshot.server.tls.iter().map(|t| (t.listen, CertSlot::new(t.certified.clone()))).collect();
        let started = StartOnly::of(&snapshot);
        let connector = Connector::new(Resolver::new(&snapshot.dns_servers, snapshot.limits.dns_timeout));
        let listening = snapshot.listening();
        let pool = Pool::new(snapshot.limits.upstream_idle_timeout, snapshot.id);
        pool.set_max_idle(crate::server::limits::idle_pool_cap(snapshot.limits.max_connections));
        Arc::new(State {
            snapshot: ArcSwap::from_pointee(snapshot),
            auth,
            connector,
            pool: Arc::new(pool),
            metrics,
            tasks: TaskTracker::new(),
            stopping: CancellationToken::new(),
            kill: CancellationToken::new(),
            lingering: Arc::default(),
            sessions: Arc::new(Sessions::default()),
            generation: AtomicU64::new(1),
            reload_failures: AtomicU64::new(0),
            conns: Arc::new(ConnLimiter::default()),
            cert_slots,
            started,
            ready: AtomicBool::new(false),
            listening,
            hangup: std::sync::Mutex::new(None),
            installs: std::sync::Mutex::new(false),
            ids: RequestIds::new(),
        })
    }

    /// Ends reloads, once the shutdown is over: a reload still running
    /// then changes nothing. One that is installing its snapshot is waited
    /// for (a few milliseconds at most: the files are read and checked
    /// before), so that what it did, the sessions it closed during the
    /// drain, is logged before the process ends.
    pub fn close_installs(&self) {
        *self.installs.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = true;
    }

    /// Gives the reload watcher the SIGHUP listener made before the
    /// configuration was read, so a SIGHUP sent during the start is acted on
    /// (not lost, and not fatal: see
    /// [`listen_for_hangup`](crate::server::reload::listen_for_hangup)).
    pub fn hand_over_hangup(&self, hangup: crate::server::reload::Hangup) {
        if let Ok(mut slot) = self.hangup.lock() {
            *slot = Some(hangup);
        }
    }

    /// A fresh request id.
    pub fn next_request_id(&self) -> Arc<str> {
        self.ids.next()
    }
}

/// Request ids: a random per-process start plus a counter (wrapping), as 16
/// hex digits.
struct RequestIds {
    base: u64,
    counter: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        RequestIds { base: rand_core::RngCore::next_u64(&mut rand_core::OsRng), counter: AtomicU64::new(0) }
    }

    fn next(&self) -> Arc<str> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        hex16(self.base.wrapping_add(n))
    }
}

/// `{:016x}` of `v`, written without `core::fmt` (one id per request).
fn hex16(v: u64) -> Arc<str> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = [0u8; 16];
    for (i, digit) in hex.iter_mut().enumerate() {
        *digit = DIGITS[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
    Arc::from(std::str::from_utf8(&hex).unwrap_or("0000000000000000"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_16_hex_digits_counting_up() {
        for v in [0, 1, 0xabc, u64::MAX, 0x0123_4567_89ab_cdef] {
            assert_eq!(&*hex16(v), format!("{v:016x}"));
        }
        let ids = RequestIds { base: u64::MAX, counter: AtomicU64::new(0) };
        assert_eq!((&*ids.next(), &*ids.next()), ("ffffffffffffffff", "0000000000000000"));
    }
}
