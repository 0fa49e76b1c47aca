//! Listeners, the accept loop, per-connection serving and graceful shutdown.
//!
//! [`run`] takes listeners that are already bound and a shutdown future, so
//! tests bind `127.0.0.1:0` and stop the server whenever they like. Per
//! connection: connection limits, taken in the accept loop before anything
//! is read (the per-address one there too, unless a PROXY header is expected)
//! → PROXY header (if enabled), then the per-address limit for the client it
//! names → TLS handshake (if TLS) → HTTP/1.1 with hyper behind
//! [`guard::Guarded`]. On shutdown: stop
//! accepting, let in-flight requests finish (idle keep-alive connections are
//! closed), give tunnels `limits.shutdown_grace`, then close whatever is left.

pub mod admin;
pub mod guard;
pub mod limits;
pub mod proxy_protocol;
pub mod records;
pub mod reload;
mod reset;
pub(crate) mod rewind;
pub mod signals;
mod spare_fds;
pub mod tls;
pub mod x509;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::config::Limits;
use crate::error::ProxyError;
use crate::proxy::State;
use crate::proxy::service::{self, Client};
use crate::respond;
use crate::telemetry::Every;
use crate::telemetry::metrics::Outcome as Counted;
use crate::telemetry::metrics::ProxyHeaderRefusal;
use guard::{Canned, Closer, Guarded, Phase, Rejection, Timeouts};
use reset::Resettable;
use rewind::Rewind;
use spare_fds::SpareFds;

/// A bound listener and how to treat its connections.
pub struct Listener {
    tcp: TcpListener,
    how: Arc<Accepting>,
}

/// How a listener's connections are treated. Their tasks hold this, not
/// the [`Listener`]: the socket must close when the accept loop ends at
/// shutdown, not when the last request on it does (a shutdown with a
/// request in flight kept accepting connections it never served).
struct Accepting {
    tls: Option<TlsAcceptor>,
    proxy_protocol: bool,
    admin: bool,
    /// Accepted sockets come with `TCP_NODELAY` already set.
    nodelay_inherited: bool,
}

impl Listener {
    fn new(tcp: TcpListener, tls: Option<TlsAcceptor>, proxy_protocol: bool, admin: bool) -> Self {
        // Linux copies TCP_NODELAY from the listening socket to each accepted
        // one: set once here, it saves a setsockopt(2) per connection (one of
        // about 22 syscalls of a CONNECT tunnel, 10 of a one-shot request).
        let nodelay_inherited =
            cfg!(target_os = "linux") && socket2::SockRef::from(&tcp).set_tcp_nodelay(true).is_ok();
        // Inherited the same way, at no cost per connection.
        crate::proxy::connect::bound_unsent(&tcp);
        Listener { tcp, how: Arc::new(Accepting { tls, proxy_protocol, admin, nodelay_inherited }) }
    }

    /// A plain-TCP proxy listener.
    pub fn plain(tcp: TcpListener, proxy_protocol: bool) -> Self {
        Listener::new(tcp, None, proxy_protocol, false)
    }

    /// The admin listener (`/metrics`, `/healthz`, `/readyz`).
    pub fn admin(tcp: TcpListener) -> Self {
        Listener::new(tcp, None, false, true)
    }

    /// A TLS proxy listener.
    pub fn tls(tcp: TcpListener, acceptor: TlsAcceptor, proxy_protocol: bool) -> Self {
        Listener::new(tcp, Some(acceptor), proxy_protocol, false)
    }

    /// The bound address.
    ///
    /// # Errors
    /// As `TcpListener::local_addr`.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

impl From<TcpListener> for Listener {
    fn from(tcp: TcpListener) -> Self {
        Listener::plain(tcp, false)
    }
}

/// Why a listener could not be bound, in words for the admin: the system's
/// ("Cannot assign requested address (os error 99)") said what failed, not
/// what is wrong (probe 160).
fn bind_reason(e: &std::io::Error) -> String {
    match e.kind() {
        // (Not only by a listener: a connection of this machine's with it
        // as its local port holds it too; probe 162.)
        std::io::ErrorKind::AddrInUse => {
            "the address is in use (by a listener, or by a connection with it as its local port)".to_owned()
        }
        std::io::ErrorKind::AddrNotAvailable => {
            "no network interface of this machine has that address".to_owned()
        }
        std::io::ErrorKind::PermissionDenied => {
            "permission denied (a port below 1024 needs root or CAP_NET_BIND_SERVICE)".to_owned()
        }
        _ => e.to_string(),
    }
}

/// Binds a listener as [`TcpListener::bind`] does (`SO_REUSEADDR`), but
/// with a backlog of [`BACKLOG`], and an IPv6 one always takes IPv4
/// connections too
/// (`IPV6_V6ONLY` off), whatever `net.ipv6.bindv6only` says: `check` takes
/// `[::]:P` for every address on port P, and `[::ffff:127.0.0.1]:P` for
/// 127.0.0.1:P, and with the sysctl at 1 a system default had `check`
/// refuse `0.0.0.0:P` beside `[::]:P`, which bound, and pass a mapped
/// address that failed to bind ("Invalid argument"; probe 173).
fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// The listen backlog: connections the kernel completes and queues before
/// authgate accepts them; capped by the kernel at `net.core.somaxconn`
/// (4096 by default since Linux 5.4, as Go reads it). std's and tokio's
/// 128 overflowed in a burst of thousands of connects, and probe 222 saw
/// a client wait a second for its SYN to be sent again; 1024 still
/// overflowed in 2 of 3 runs of 4 bursts of 5,000 connects, on a quiet box
/// (3,484 and 570 dropped, one connect of another client waited 1,036 ms;
/// probe 223's script), when a burst came in under 65 ms.
const BACKLOG: i32 = 4096;

/// Binds every listener of the state's snapshot (plain, TLS, admin).
///
/// # Errors
/// A message naming the address that could not be bound.
pub async fn bind_all(state: &State) -> Result<Vec<Listener>, String> {
    let snap = state.snapshot.load_full();
    let mut out = Vec::new();
    for addr in &snap.server.listen {
        let tcp = bind_tcp(*addr).map_err(|e| format!("cannot listen on {addr}: {}", bind_reason(&e)))?;
        say_free_port(*addr, &tcp, "");
        out.push(Listener::plain(tcp, snap.server.proxy_protocol.contains(addr)));
    }
    for (i, t) in snap.server.tls.iter().enumerate() {
        let tcp = bind_tcp(t.listen)
            .map_err(|e| format!("cannot listen on {} (TLS): {}", t.listen, bind_reason(&e)))?;
        let slot = state
            .cert_slots
            .get(i)
            .map(|(_, s)| s.clone())
            .ok_or("TLS listener without a certificate slot")?;
        if let Ok(addr) = tcp.local_addr() {
            slot.bound_on(addr);
        }
        say_free_port(t.listen, &tcp, " (TLS)");
        out.push(Listener::tls(tcp, tls::acceptor(slot)?, t.proxy_protocol));
    }
    if let Some(addr) = snap.admin {
        let tcp =
            bind_tcp(addr).map_err(|e| format!("cannot listen on {addr} (admin): {}", bind_reason(&e)))?;
        say_free_port(addr, &tcp, " (admin)");
        out.push(Listener::admin(tcp));
    }
    Ok(out)
}

/// Logs the port a listener configured with port 0 was given: the start's
/// summary says the configured address, and the port was nowhere in the
/// log (probe 300).
fn say_free_port(configured: SocketAddr, tcp: &TcpListener, kind: &str) {
    if configured.port() == 0
        && let Ok(bound) = tcp.local_addr()
    {
        tracing::info!("listening on {bound}{kind}: a free port, for {configured} in the configuration");
    }
}

/// Serves `listeners` until `shutdown` resolves, then shuts down gracefully
/// (which cancels `state.stopping`: a `State` serves one run).
///
/// # Errors
/// Never in practice: accept errors are logged and retried with backoff.
pub async fn run<L: Into<Listener>>(
    state: Arc<State>,
    listeners: Vec<L>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut accepts = Vec::new();
    for listener in listeners {
        accepts.push(tokio::spawn(accept_loop(state.clone(), listener.into())));
    }
    state.ready.store(true, std::sync::atomic::Ordering::Release);
    let watcher = tokio::spawn(reload::watch(state.clone()));
    shutdown.await;
    state.ready.store(false, std::sync::atomic::Ordering::Release);
    tracing::info!("shutting down: no new connections; waiting for requests and tunnels");
    state.stopping.cancel();
    // Idle origin connections are closed now, not when the last request of
    // the grace period ends; those still in use are not pooled again.
    state.pool.retire(crate::proxy::pool::NO_CONFIGURATION);
    for a in accepts {
        let _ = a.await;
    }
    state.tasks.close();
    let grace = state.snapshot.load().limits.shutdown_grace;
    if tokio::time::timeout(grace, state.tasks.wait()).await.is_err() {
        // Connections already answered and closed on authgate's side, which
        // wait for their client to close (see `guard::Lingering`), are not
        // at work: counted apart (probe 294).
        let lingering = state.lingering.count();
        tracing::info!(
            grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
            open = state.tasks.len().saturating_sub(lingering),
            lingering,
            "grace period over: closing the connections and tunnels still open"
        );
        state.kill.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), state.tasks.wait()).await;
    }
    // Reloads went on during the drain (see `reload::watch`); from now on
    // they change nothing.
    watcher.abort();
    state.close_installs();
    crate::telemetry::flush_held_back();
    // Not a clean stop when a second signal cut it short, which a bare
    // `stopped` said too (probe 294): its handler says so as it exits.
    if !signals::cut_short() {
        tracing::info!("stopped");
    }
    Ok(())
}

async fn accept_loop(state: Arc<State>, listener: Listener) {
    // Out of descriptors, every listener fails every accept: one line per
    // 10 s for the whole process (one a second per listener flooded the log
    // during the very incident it reported).
    static ACCEPT_FAILED: Every = Every::new(10, "accept failed; retrying");
    let admin_slots = Arc::new(AdminSlots::default());
    let spares = listener.how.admin.then(|| Arc::new(SpareFds::new(spare_fds::ADMIN_SPARE_FDS)));
    // Whether the next admin connection is accepted into a spare just
    // freed for it (then served for one request only).
    let mut into_spare = false;
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            a = listener.tcp.accept() => a,
            _ = state.stopping.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) if listener.how.admin => {
                backoff = Duration::from_millis(5);
                admit_admin(
                    &state,
                    &admin_slots,
                    spares.clone(),
                    (stream, peer),
                    std::mem::take(&mut into_spare),
                );
            }
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                // An IPv4 client of a dual-stack `[::]` listener is
                // `::ffff:a.b.c.d`: logged, throttled and limited as
                // a.b.c.d, as on an IPv4 listener.
                let peer = crate::policy::egress::canonical_addr(peer);
                let admission = slot_for(&state, &listener.how, peer);
                state.tasks.spawn(serve(state.clone(), listener.how.clone(), stream, peer, admission));
            }
            // Out of descriptors on the admin port: free a spare and accept
            // into it at once (the listen queue still holds the connection).
            Err(e)
                if crate::proxy::connect::out_of_descriptors(&e)
                    && spares.as_ref().is_some_and(|s| s.free_one_for(&listener.tcp)) =>
            {
                into_spare = true;
            }
            Err(e) => {
                // EMFILE and friends: wait and retry instead of spinning.
                if let Some(held) = ACCEPT_FAILED.pass() {
                    tracing::warn!(error = %e, held_back = held, "accept failed; retrying");
                }
                // Shutdown is not held by the wait (up to a second).
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = state.stopping.cancelled() => return,
                }
                // The admin port looks again within 50 ms: a health check
                // waiting on it is answered from a spare descriptor before
                // its prober gives up (Kubernetes waits 1 s by default).
                let most = if spares.is_some() { Duration::from_millis(50) } else { Duration::from_secs(1) };
                backoff = (backoff * 2).min(most);
            }
        }
    }
}

/// Most admin connections open at once. A scraper or a health check needs
/// one or two; past this many a new one is closed at once, so that clients
/// of the admin port (which asks for no credentials) cannot take the file
/// descriptors the proxy's clients need (20,000 kept-alive `/healthz`
/// connections left a proxy request unanswered).
pub const MAX_ADMIN_CONNECTIONS: usize = 64;

/// Most admin connections open at once from one client address, so that one
/// client holding connections open cannot take every slot and keep a load
/// balancer's health checks (from another address) out.
pub const MAX_ADMIN_CONNECTIONS_PER_ADDRESS: usize = 8;

/// The admin listener's connection slots: [`MAX_ADMIN_CONNECTIONS`] in all,
/// [`MAX_ADMIN_CONNECTIONS_PER_ADDRESS`] per client address.
#[derive(Default)]
struct AdminSlots {
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One admin connection's slot, given back on drop.
struct AdminSlot {
    slots: Arc<AdminSlots>,
    ip: std::net::IpAddr,
}

impl AdminSlots {
    /// A slot for a connection from `ip`, or why there is none.
    fn take(self: &Arc<Self>, ip: std::net::IpAddr) -> Result<AdminSlot, String> {
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if open.values().sum::<usize>() >= MAX_ADMIN_CONNECTIONS {
            return Err(format!("{MAX_ADMIN_CONNECTIONS} admin connections are open already"));
        }
        let mine = open.entry(ip).or_default();
        if *mine >= MAX_ADMIN_CONNECTIONS_PER_ADDRESS {
            return Err(format!(
                "{MAX_ADMIN_CONNECTIONS_PER_ADDRESS} admin connections from this address (an IPv6 one's /64) are open already"
            ));
        }
        *mine += 1;
        Ok(AdminSlot { slots: self.clone(), ip })
    }
}

impl Drop for AdminSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// The warnings of a connection refused on a PROXY-protocol listener.
const NOT_ALLOWED_LINE: &str =
    "closing connection: PROXY protocol from an address not in server.proxy_protocol_from";
const BAD_HEADER_LINE: &str = "closing connection: bad or missing PROXY protocol header";
const NO_HEADER_LINE: &str = "closing connection: no PROXY protocol header in time";

/// Serves an admin connection if a slot is free, else closes it (with a
/// WARN at most every 10 s).
/// Once the connection is closed, the spare descriptors are opened again
/// (one may have been closed to accept it).
fn admit_admin(
    state: &Arc<State>,
    slots: &Arc<AdminSlots>,
    spares: Option<Arc<SpareFds>>,
    (stream, peer): (TcpStream, SocketAddr),
    into_spare: bool,
) {
    static FULL: Every = Every::new(10, "admin connection closed");
    let peer = crate::policy::egress::canonical_addr(peer);
    // IPv6 per /64, as the proxy's own per-address limit: one host owns a
    // whole /64.
    match slots.take(crate::auth::throttle::client_key(peer.ip())) {
        Ok(slot) => {
            let state = state.clone();
            tokio::spawn(async move {
                let _slot = slot;
                admin::serve(state, stream, into_spare).await;
                if let Some(spares) = spares {
                    spares.refill();
                }
            });
        }
        Err(why) => {
            drop(stream);
            if let Some(spares) = spares {
                spares.refill();
            }
            if let Some(held) = FULL.pass() {
                tracing::warn!(peer = %peer, held_back = held, "admin connection closed: {why}");
            }
        }
    }
}

/// What the accept loop decided for a connection (see [`slot_for`]).
enum Admission {
    /// Its connection slot.
    Slot(limits::Permit),
    /// A limit is reached: answered 503.
    Full,
    /// A peer of a PROXY listener that may not send a PROXY header:
    /// closed unanswered, without a slot.
    Unlisted,
}

/// The slot of a connection from `peer` just accepted on `listener`, or
/// why it has none: a limit is reached, or the peer may not send a PROXY
/// header (decided once, here: `serve` asked again, and a reload between
/// the two could give a listed peer no slot and a 503). Taken in the accept loop, in the order
/// the connections came: taken in each connection's task, a later one could
/// be counted first, get the last slot and leave an earlier one the 503 (4
/// of 16 runs of a probe). Counted before anything is read: a connection
/// waiting for its PROXY header holds a socket too (600 silent ones went
/// past a limit of 20); its client's own limit applies once the header
/// names it.
fn slot_for(state: &State, listener: &Accepting, peer: SocketAddr) -> Admission {
    let snap = state.snapshot.load();
    // A peer that may not send a PROXY header is closed unanswered (see
    // `serve`) and takes no slot on the way: a flood of them held slots
    // until their tasks ran, and a listed balancer's clients got 503s
    // with slots free (probe 378).
    if listener.proxy_protocol && !snap.server.may_send_proxy_header(peer.ip()) {
        return Admission::Unlisted;
    }
    let Some(mut permit) = state.conns.reserve(snap.limits.max_connections) else {
        return Admission::Full;
    };
    if !listener.proxy_protocol && !permit.assign(peer.ip(), snap.limits.max_connections_per_ip) {
        return Admission::Full;
    }
    Admission::Slot(permit)
}

async fn serve(
    state: Arc<State>,
    listener: Arc<Accepting>,
    mut stream: TcpStream,
    peer: SocketAddr,
    admission: Admission,
) {
    if !listener.nodelay_inherited {
        let _ = stream.set_nodelay(true);
    }
    // Anyone else could name any address on a PROXY listener, and so pass
    // for another client in the logs, the rules, the throttle and the
    // limits: closed without an answer, also when the connections are full
    // (it got the 503, a request id and an `overloaded` count, not
    // `peer_not_allowed`; probe 376). Each warning at most every 10 s:
    // anyone who reaches the listener can make one per connection (probe
    // 106: 600 lines in 0.1 s).
    if let Admission::Unlisted = admission {
        static NOT_ALLOWED: Every = Every::new(10, NOT_ALLOWED_LINE);
        state.metrics.proxy_header_refused(ProxyHeaderRefusal::PeerNotAllowed);
        if let Some(held) = NOT_ALLOWED.pass() {
            tracing::warn!(peer = %peer, held_back = held, "{NOT_ALLOWED_LINE}");
        }
        return;
    }
    let Admission::Slot(mut permit) = admission else {
        Box::pin(refuse_overloaded(&state, &listener, stream, peer)).await;
        return;
    };
    let limits = state.snapshot.load().limits.clone();
    // One deadline for the opening: the PROXY header, the first byte and
    // the TLS handshake together (each had one of its own, and a client
    // slow at all three held its slot for three times the timeout; probe
    // 157). The request head has its own (see `Guarded`).
    let opened_by = tokio::time::Instant::now() + limits.header_read_timeout;
    let client_addr = if listener.proxy_protocol {
        // (From a listed balancer: see `slot_for`.)
        static BAD_HEADER: Every = Every::new(10, BAD_HEADER_LINE);
        static NO_HEADER: Every = Every::new(10, NO_HEADER_LINE);
        let header = tokio::time::timeout_at(opened_by, proxy_protocol::read_header(&mut stream));
        let Some(header) = unless_stopping(&state, header).await else {
            tracing::debug!(peer = %peer, "closing connection at shutdown: no PROXY protocol header yet");
            return;
        };
        let addr = match header {
            Ok(Ok(addr)) => addr,
            // (A health check: one warning per check drowned the log, probe 85.)
            Ok(Err(e)) if proxy_protocol::unheard(&e) => {
                tracing::debug!(peer = %peer, "connection closed before its PROXY protocol header");
                return;
            }
            Ok(Err(e)) => {
                state.metrics.proxy_header_refused(ProxyHeaderRefusal::BadHeader);
                if let Some(held) = BAD_HEADER.pass() {
                    tracing::warn!(peer = %peer, error = %e, held_back = held, "{BAD_HEADER_LINE}");
                }
                return;
            }
            Err(_) => {
                state.metrics.proxy_header_refused(ProxyHeaderRefusal::TimedOut);
                if let Some(held) = NO_HEADER.pass() {
                    tracing::warn!(peer = %peer, held_back = held, "{NO_HEADER_LINE}");
                }
                return;
            }
        };
        let addr = addr.map_or(peer, crate::policy::egress::canonical_addr);
        if !permit.assign(addr.ip(), limits.max_connections_per_ip) {
            drop(permit);
            Box::pin(refuse_overloaded(&state, &listener, stream, addr)).await;
            return;
        }
        addr
    } else {
        peer
    };
    // Shared with the tunnels this connection may become, so that they
    // count against the limits for as long as they live.
    let slot = Arc::new(permit);
    match &listener.tls {
        None => serve_http(state, stream, client_addr, false, slot, &limits).await,
        Some(acceptor) => {
            let deadline = opened_by;
            let opening = tokio::time::timeout_at(deadline, tls::opening(&stream));
            let Some(opening) = unless_stopping(&state, opening).await else { return };
            if opening == Ok(tls::Opening::Closed) {
                return;
            }
            if opening == Ok(tls::Opening::PlainHttp) {
                // Boxed, as all rare paths here: inline, its state (a 4 KiB
                // drain buffer) made every connection's task larger, and each
                // spawn copies the task (memcpy per CONNECT tunnel: +2.9k
                // instructions).
                Box::pin(refuse_plain_http(&state, stream, client_addr, deadline)).await;
                return;
            }
            let handshake = accept_tls(acceptor, stream, client_addr, deadline, &state.metrics);
            if let Some(Some(tls)) = unless_stopping(&state, handshake).await {
                serve_http(state, tls, client_addr, true, slot, &limits).await;
            }
        }
    }
}

/// `step`'s result, or `None` once shutdown has begun: a connection still
/// owing its PROXY header or its TLS handshake has no request to finish,
/// and held the exit until `header_read_timeout` (5 s past a shorter
/// `shutdown_grace`, the most the end of a shutdown waits; probe 89), as
/// an idle keep-alive connection, closed at once, does not.
async fn unless_stopping<T>(state: &State, step: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        biased;
        r = step => Some(r),
        () = state.stopping.cancelled() => None,
    }
}

const REFUSED_LINE: &str = "connection refused: connection limit reached";

/// A connection over a limit: logged, counted, and on a plain listener
/// answered with 503 `too_many_connections` before it is closed.
async fn refuse_overloaded(state: &State, listener: &Accepting, stream: TcpStream, client: SocketAddr) {
    // The id the 503 carries (`x-request-id`, problem body) is in the log,
    // for one refusal per 10 s: a line per refusal made the log grow by
    // thousands of lines a second while the limit held off a flood.
    static REFUSED: Every = Every::new(10, REFUSED_LINE);
    let id = state.next_request_id();
    if let Some(held) = REFUSED.pass() {
        tracing::warn!(request_id = &*id, client = %client, held_back = held, "{REFUSED_LINE}");
    }
    state.metrics.request(Counted::Overloaded, None);
    if listener.tls.is_none() {
        // With a lingering close: the client's request, left unread, made
        // the close a reset, which could destroy the 503 before the client
        // read it (41 of 150 raw clients that sent at once). Half a second
        // at most (the 503 is a few hundred bytes, written at once), so
        // that a flood of refusals does not hold many descriptors.
        let bytes = respond::raw_error_response(&ProxyError::TooManyConnections, &id, false);
        answer_and_close(stream, &bytes, Duration::from_millis(500)).await;
    } else {
        // No answer before a handshake: a reset, which the client tells
        // from a close (refused at its accept, before its ClientHello was
        // in, it was a FIN in 9 of 10 tries, curl's "SSL_ERROR_SYSCALL";
        // probe 142).
        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    }
}

/// The TLS handshake of a connection on a TLS listener, before `deadline`.
///
/// The stream comes back boxed, and the handshake runs boxed: a rustls
/// connection is 1.2 KiB, and inline it would enlarge the task of every
/// connection, plain ones included (each task is copied when it is spawned).
async fn accept_tls(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    client: SocketAddr,
    deadline: tokio::time::Instant,
    metrics: &crate::telemetry::Metrics,
) -> Option<Box<tokio_rustls::server::TlsStream<records::Records>>> {
    let handshake = async {
        let start = tls::client_hello(stream).await?;
        tls::handshake(start, acceptor.config().clone()).await
    };
    match tokio::time::timeout_at(deadline, Box::pin(handshake)).await {
        Ok(Ok(tls)) => Some(Box::new(tls)),
        Ok(Err(e)) => {
            metrics.tls_handshake_failed(false);
            tracing::debug!(client = %client, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            metrics.tls_handshake_failed(true);
            tracing::debug!(client = %client, "TLS handshake timed out");
            None
        }
    }
}

/// Plain HTTP on a TLS listener: 400 `tls_required` in plain HTTP, which
/// the client can read (a TLS alert in answer left curl saying only "wrong
/// version number" or "Empty reply"), counted and logged like the other
/// answers to unusable requests.
async fn refuse_plain_http(
    state: &Arc<State>,
    mut stream: TcpStream,
    client: SocketAddr,
    deadline: tokio::time::Instant,
) {
    let err = ProxyError::TlsRequired;
    // Whether it is a `HEAD`, whose answer has no body: its first bytes are
    // there (they told it from a handshake), and more are waited for while
    // they may still spell `HEAD ` after the empty lines a request may
    // follow (RFC 9112 §2.2): a method split across reads was taken for
    // another, and its answer had the body (probe 328). Until the opening's
    // deadline (`header_read_timeout` from the accept), or the shutdown,
    // whichever comes first: a fresh wait held the exit with one `H` sent
    // (probe 330). They are read: the rest is dropped anyway.
    // (Followed as the guard follows it on a plain listener.)
    let mut seen = 0;
    let read = async {
        let (mut buf, mut total) = ([0u8; 512], 0);
        let (mut cr, mut started) = (false, false);
        // At most 64 KiB: empty lines may come first, any number.
        while seen < guard::HEAD_METHOD.len() && total < 64 * 1024 {
            let n = match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            total += n;
            let mut more = &buf[..n];
            if !started {
                let Some(at) = guard::skip_empty_lines(&mut cr, more) else { continue };
                (started, more) = (true, &more[at..]);
            }
            seen = guard::follow(guard::HEAD_METHOD, seen, more);
        }
    };
    let _ = unless_stopping(state, tokio::time::timeout_at(deadline, read)).await;
    let head = seen == guard::HEAD_METHOD.len();
    let answer = refused_head(state, client, &err, head);
    answer_and_close(stream, &answer, Duration::from_secs(2)).await;
}

/// Counts and logs (a short access event, unless `[log] access = false`)
/// an answer to a request that never became one; returns it, whole, or its
/// head alone to a `HEAD` request.
fn refused_head(state: &State, client: SocketAddr, err: &ProxyError, head: bool) -> Vec<u8> {
    let id = state.next_request_id();
    let d = respond::describe(err);
    state.metrics.request(Counted::BadRequest, None);
    // Was logged whatever `access` said (probe 140).
    if state.snapshot.load().log.access {
        tracing::info!(target: "authgate::access", request_id = &*id, client = %client, status = d.status.as_u16(), outcome = d.code);
    }
    respond::raw_error_response(err, &id, head)
}

/// Sends `answer` (a complete HTTP response) and closes the connection, all
/// `within` the time given.
///
/// What the client sent is read and dropped until it closes too (at most
/// 64 KiB): closing a socket with unread data in it sends a reset, which
/// can destroy the answer before the client reads it.
async fn answer_and_close(mut stream: TcpStream, answer: &[u8], within: Duration) {
    let _ = tokio::time::timeout(within, async {
        stream.write_all(answer).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut total = 0;
        while total < 64 * 1024 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => total += n,
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// The answers [`Guarded`] writes itself (408, 431, unparsable heads);
/// counted and logged here.
fn canned(state: &Arc<State>, client: SocketAddr) -> Canned {
    let state = state.clone();
    Box::new(move |why, head| {
        let err = match why {
            Rejection::HeadTimeout => ProxyError::HeadTimeout,
            Rejection::HeadTooLarge | Rejection::Unparsable(431) => ProxyError::HeadTooLarge,
            Rejection::Unparsable(414) => ProxyError::UriTooLong,
            Rejection::Unparsable(_) => ProxyError::MalformedRequest { why: None },
        };
        refused_head(&state, client, &err, head)
    })
}

async fn serve_http<S>(
    state: Arc<State>,
    io: S,
    addr: SocketAddr,
    tls: bool,
    slot: Arc<limits::Permit>,
    limits: &Limits,
) where
    S: AsyncRead + AsyncWrite + Resettable + Unpin + Send + 'static,
{
    let phase = Arc::new(Phase::default());
    let closing = phase.clone();
    let guard = state.sessions.open(None);
    let revoked = guard.session.token.clone();
    let max_head = limits.max_header_bytes;
    let client = Client { addr, session: guard.session.clone(), phase: phase.clone(), tls, slot, max_head };
    let timeouts = Timeouts {
        idle: limits.idle_timeout,
        head: limits.header_read_timeout,
        send: limits.send_timeout,
        max_head: limits.max_header_bytes,
    };
    let record_begun = io.record_begun();
    let mut io = Guarded::new(io, phase, timeouts, canned(&state, addr), state.lingering.clone());
    if let Some(begun) = record_begun {
        io.watch_records(begun);
    }
    let svc_state = state.clone();
    let svc = service_fn(move |req| {
        // Synchronously, before the future runs: the head is complete.
        client.phase.busy();
        let state = svc_state.clone();
        let client = client.clone();
        async move { Ok::<_, Infallible>(service::handle(state, client, req).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // hyper's own head timer (30 s by default once a timer is set) runs
        // from the end of a response to the next head: it closed keep-alive
        // connections after 30 s idle whatever `idle_timeout` said, and
        // armed a fresh timer per request. Guarded does both jobs instead
        // (idle: quiet close; head: 408) with the configured durations.
        .header_read_timeout(None)
        // Guarded enforces the head limit with a proper 431; hyper's buffer
        // must be larger so that its own bare 431 never fires first.
        .max_buf_size((limits.max_header_bytes * 2).max(256 * 1024))
        // A client that half-closes while its request runs has gone, as for
        // Squid (`half_closed_clients off`): the request, and its upstream
        // exchange, are dropped at once. Answers given without waiting
        // (400, 407) still reach it.
        .half_close(false)
        .keep_alive(true);
    let mut connection = builder.serve_connection(TokioIo::new(io), svc).with_upgrades();
    let mut conn = Pin::new(&mut connection);
    let revoke = || {
        tracing::info!(client = %addr, "closing connection: its user was removed, changed or disabled");
        closing.closed_by(Closer::Revocation);
        Ok(())
    };
    let ended = tokio::select! {
        r = conn.as_mut() => Ended::Done(r),
        _ = revoked.cancelled() => Ended::Done(revoke()),
        _ = state.stopping.cancelled() => {
            let drain = async {
                // hyper closes a connection between requests at once, even
                // with part of the next head read: that request, which the
                // drain is to serve, got a FIN (probe 179). Its head is
                // waited for first (bounded by the head timer and the grace).
                if let Some(ended) = finish_head(conn.as_mut(), &closing).await {
                    return Ended::Done(ended);
                }
                if closing.between_requests() {
                    // Bytes of it may be in hyper's buffer only (read with
                    // or during the previous request): see below.
                    return Ended::IdleAtStop;
                }
                conn.as_mut().graceful_shutdown();
                Ended::Done(conn.as_mut().await)
            };
            tokio::select! {
                r = drain => r,
                // A user removed, disabled or expired during the drain is
                // cut off as at any other time (probe 179).
                _ = revoked.cancelled() => Ended::Done(revoke()),
                _ = state.kill.cancelled() => {
                    closing.closed_by(Closer::Shutdown);
                    Ended::Done(Ok(()))
                }
            }
        }
    };
    let ended_clean = |result: &Result<(), hyper::Error>| result.is_ok() && !closing.cut_here();
    let (result, io) = match ended {
        Ended::Done(result) => {
            // (Taken apart only when the end needs the socket.)
            let io = if !ended_clean(&result) {
                connection.into_parts().map(|parts| parts.io.into_inner().into_inner())
            } else {
                None
            };
            (result, io)
        }
        Ended::IdleAtStop => {
            let Some(parts) = connection.into_parts() else { return };
            // Boxed: this path runs only at shutdown, and a second
            // connection's state inline would make every connection's task
            // larger.
            let resumed = Box::pin(async {
                let mut io = parts.io;
                // What hyper read of a next request (pipelined, or sent
                // while the previous one ran) is in its buffer, not in the
                // socket: closed at once, as hyper does, it was lost (probe
                // 182). It is served on a connection of its own, which
                // closes after it.
                if !io.inner_mut().resume_head(&parts.read_buf) {
                    let mut io = io.into_inner();
                    tokio::select! {
                        // As hyper closes: the write side (on TLS a
                        // `close_notify` first).
                        _ = io.shutdown() => {}
                        _ = state.kill.cancelled() => {}
                    }
                    return None;
                }
                builder.keep_alive(false);
                let mut next =
                    builder.serve_connection(Rewind::new(parts.read_buf, io), parts.service).with_upgrades();
                let result = tokio::select! {
                    r = &mut next => r,
                    _ = revoked.cancelled() => revoke(),
                    _ = state.kill.cancelled() => {
                        closing.closed_by(Closer::Shutdown);
                        Ok(())
                    }
                };
                Some((result, next.into_parts().map(|parts| parts.io.into_inner().into_inner().into_inner())))
            });
            let Some(ended) = resumed.await else { return };
            ended
        }
    };
    let clean = ended_clean(&result);
    if let Err(e) = result {
        tracing::debug!(client = %addr, error = %e, "client connection ended with an error");
    }
    if !clean && let Some(mut io) = io {
        if closing.resets() {
            // Cut by authgate itself (revocation, shutdown, a client that
            // took nothing for `send_timeout`): nothing more is owed, reset
            // at once.
            let within = if closing.cut_here() { Duration::ZERO } else { limits.send_timeout };
            reset::reset_once_sent(&io, within, &state.kill).await;
        } else {
            // A response cut short, by the origin or by authgate itself (a
            // shutdown, a revocation), ends as a cut: no `close_notify`,
            // which would tell the client that it ended whole (probes 184,
            // 185).
            let truncated = closing.broken_by_origin() || (closing.cut_here() && closing.mid_response());
            if !truncated {
                io.close_notify();
            }
        }
    }
}

/// How a client connection's service ended.
enum Ended {
    /// hyper is done with it, with this result.
    Done(Result<(), hyper::Error>),
    /// Shutdown began while it was between requests ([`Phase::between_requests`]),
    /// where hyper may hold part of a next head.
    IdleAtStop,
}

/// Drives `conn` while the client's next request head is arriving (see
/// [`Phase::reading_head`]): `Some` with how the connection ended if it
/// ended meanwhile, `None` once no head is under way (none was, or hyper
/// has it whole and the request runs).
fn finish_head<'a, F: Future + ?Sized>(
    mut conn: Pin<&'a mut F>,
    phase: &'a Phase,
) -> impl Future<Output = Option<F::Output>> + 'a {
    std::future::poll_fn(move |cx| {
        if !phase.reading_head() {
            return std::task::Poll::Ready(None);
        }
        match conn.as_mut().poll(cx) {
            std::task::Poll::Ready(ended) => std::task::Poll::Ready(Some(ended)),
            std::task::Poll::Pending if phase.reading_head() => std::task::Poll::Pending,
            std::task::Poll::Pending => std::task::Poll::Ready(None),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_come_with_nodelay_from_the_listener() {
        let listener = Listener::plain(TcpListener::bind("127.0.0.1:0").await.unwrap(), false);
        assert!(listener.how.nodelay_inherited);
        let addr = listener.local_addr().unwrap();
        let (_client, accepted) = tokio::join!(TcpStream::connect(addr), listener.tcp.accept());
        let (stream, _) = accepted.unwrap();
        // serve() skips its own set_nodelay on the strength of this.
        assert!(stream.nodelay().unwrap(), "Linux copies TCP_NODELAY to accepted sockets");
    }

    /// A peer outside `proxy_protocol_from` takes no connection slot on a
    /// PROXY listener (it is closed unanswered): a flood of them held slots
    /// until their tasks ran, and a listed balancer's clients got 503s with
    /// slots free (probe 378).
    #[tokio::test]
    async fn an_unlisted_peer_of_a_proxy_protocol_listener_takes_no_slot() {
        let dir = std::env::temp_dir().join(format!("authgate-slot-for-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("users.toml"), "[users]\n").unwrap();
        let config = "[server]\nlisten = [\"127.0.0.1:3128\"]\nproxy_protocol = true\n\
            proxy_protocol_from = [\"127.0.0.2/32\"]\n[auth]\nusers_file = \"users.toml\"\n\
            [limits]\nmax_connections = 1\n[policy]\ndefault = \"deny\"\n";
        std::fs::write(dir.join("authgate.toml"), config).unwrap();
        let snapshot = crate::config::load(&dir.join("authgate.toml"));
        std::fs::remove_dir_all(&dir).ok();
        let state = crate::State::new(snapshot.unwrap());
        let how = Accepting { tls: None, proxy_protocol: true, admin: false, nodelay_inherited: true };
        let unlisted: SocketAddr = "127.0.0.3:5000".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| slot_for(&state, &how, unlisted)).collect();
        assert!(held.iter().all(|a| matches!(a, Admission::Unlisted)), "an unlisted peer takes no slot");
        let balancer: SocketAddr = "127.0.0.2:5000".parse().unwrap();
        let first = slot_for(&state, &how, balancer);
        assert!(matches!(first, Admission::Slot(_)), "the one slot is the balancer's");
        assert!(matches!(slot_for(&state, &how, balancer), Admission::Full), "and there is one");
    }
}
