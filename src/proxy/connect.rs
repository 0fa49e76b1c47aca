//! The one place that resolves, checks and dials upstream.
//!
//! Every address a name resolves to is checked against the egress policy, and
//! the connection goes to an address that was checked — never to a name that
//! is resolved again — so DNS rebinding cannot slip past the check.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::dns::Resolver;
use crate::error::ProxyError;
use crate::policy::egress::Egress;
use crate::target::{Host, Target};
use crate::telemetry::Every;

/// Resolves and dials targets.
pub struct Connector {
    resolver: Resolver,
}

impl Connector {
    /// A connector using `resolver`.
    pub fn new(resolver: Resolver) -> Self {
        Connector { resolver }
    }

    /// The addresses of `host`, unchecked.
    ///
    /// # Errors
    /// `DnsError` / `DnsTimeout`.
    pub async fn resolve(&self, host: &Host, dns_timeout: Duration) -> Result<Vec<IpAddr>, ProxyError> {
        match host {
            Host::Ip(ip) => Ok(vec![*ip]),
            Host::Name(name) => self.resolver.lookup(name, dns_timeout).await,
        }
    }

    /// Resolves `target` and returns its addresses if `egress` permits every
    /// one of them.
    ///
    /// # Errors
    /// DNS errors, or `DestinationIpProhibited` naming the first refused
    /// address when any address is refused. A name with some internal and
    /// some public addresses is refused whole: a mixed answer is the shape of
    /// a rebinding attack.
    pub async fn resolve_checked(
        &self,
        target: &Target,
        egress: &Egress,
        dns_timeout: Duration,
    ) -> Result<Vec<SocketAddr>, ProxyError> {
        let ips = self.resolve(&target.host, dns_timeout).await?;
        // An IPv4-mapped address (`::ffff:127.0.0.2`) is its IPv4 address:
        // checked, dialled, logged and refused as such (the access line said
        // `upstream=[::ffff:127.0.0.2]:80`; probe 156).
        let ips = crate::policy::egress::canonical_distinct(ips);
        if let Some(bad) = ips.iter().find(|ip| !egress.permits_at(SocketAddr::new(**ip, target.port))) {
            return Err(ProxyError::DestinationIpProhibited { addr: *bad });
        }
        Ok(ips.into_iter().map(|ip| SocketAddr::new(ip, target.port)).collect())
    }

    /// Connects to the first address that answers, within `timeout` overall;
    /// the connection and the address it went to.
    ///
    /// With several addresses the attempts race, as RFC 8305 ("Happy
    /// Eyeballs") describes, in turns of family ([`in_turns`]): the next
    /// address is tried when the last attempt started has failed, or has
    /// not connected within [`ATTEMPT_DELAY`], while the earlier one goes on.
    /// The first to connect wins; the others are dropped. An address that
    /// silently drops connections (a dead server behind one of a name's A
    /// records, an IPv6 route that leads nowhere) so costs a quarter of a
    /// second, not the whole `timeout`.
    ///
    /// A proxy makes these for many clients at once, and every attempt
    /// holds a descriptor: at most [`MAX_RACING`] run at a time, each given
    /// an even share of the time left (at least [`MIN_SHARE`]) before it is
    /// dropped for the next address, as Go's dialer does; the last one
    /// tried runs until `timeout`. The first [`MAX_ADDRESSES`] are tried.
    ///
    /// # Errors
    /// `ConnectionRefused`, `ConnectionTimeout`, `DestinationUnavailable`, or
    /// `TooManyConnections` when file descriptors run out (at once: other
    /// addresses would fail the same way). When every address failed, the
    /// error of the last one that did; when the time ran out first,
    /// `ConnectionTimeout`.
    pub async fn dial(
        addrs: &[SocketAddr],
        timeout: Duration,
    ) -> Result<(TcpStream, SocketAddr), ProxyError> {
        let end = Instant::now() + timeout;
        let attempt = async {
            match addrs {
                [] => Err(ProxyError::DestinationUnavailable),
                [one] => connect(*one).await.map(|s| (s, *one)).map_err(|e| classify(&e)),
                // Boxed: the race's state (its timer, the attempts) would
                // otherwise enlarge every dial's future, single-address
                // ones included.
                many => {
                    let mut addrs = in_turns(many);
                    addrs.truncate(MAX_ADDRESSES);
                    Box::pin(race(addrs, end)).await
                }
            }
        };
        match tokio::time::timeout_at(end, attempt).await {
            Ok(r) => r,
            Err(_) => Err(ProxyError::ConnectionTimeout),
        }
    }
}

/// How long a connection attempt runs alone before the next address is
/// tried beside it: RFC 8305 §5's recommended "Connection Attempt Delay".
pub const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Connection attempts of one dial that run at the same time.
pub const MAX_RACING: usize = 2;

/// Addresses of one name tried at the most, the first ones in the order of
/// [`in_turns`] (Squid stops after 25 tries too, `forward_max_tries`): a
/// name with thousands of addresses (a DNS answer over TCP holds about
/// 4,000) would otherwise make one request send thousands of SYNs.
pub const MAX_ADDRESSES: usize = 25;

/// The least time an attempt gets before it may be dropped for the next
/// address (Go's dialer uses the same floor): a far origin, or one whose
/// first SYN was lost (Linux sends it again after 1 s), still connects.
pub const MIN_SHARE: Duration = Duration::from_secs(2);

async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect(addr).await?;
    let _ = s.set_nodelay(true);
    bound_unsent(&s);
    Ok(s)
}

/// Connection attempts to `addrs`, in order, by `end`; the first
/// connection. A new attempt starts when fewer than [`MAX_RACING`] run and
/// the last one started has run [`ATTEMPT_DELAY`] or has ended (at once:
/// a refused address costs no timer tick). Each attempt gets the time left
/// divided by the addresses not yet tried, itself included (at least
/// [`MIN_SHARE`]); after it, it is dropped as timed out if an address is
/// still waiting for its turn, and otherwise goes on until `end`.
async fn race(addrs: Vec<SocketAddr>, end: Instant) -> Result<(TcpStream, SocketAddr), ProxyError> {
    let mut waiting = addrs.into_iter();
    // How many addresses wait for their turn, as the attempts see it.
    let left = AtomicUsize::new(waiting.len());
    let left = &left;
    let mut racing = FuturesUnordered::new();
    let mut last = ProxyError::DestinationUnavailable;
    let mut next_start = Instant::now();
    let tick = tokio::time::sleep_until(next_start);
    tokio::pin!(tick);
    loop {
        while racing.len() < MAX_RACING && (racing.is_empty() || Instant::now() >= next_start) {
            let Some(addr) = waiting.next() else { break };
            left.store(waiting.len(), Ordering::Relaxed);
            let now = Instant::now();
            let share = (end.saturating_duration_since(now) / (waiting.len() as u32 + 1)).max(MIN_SHARE);
            racing.push(async move {
                let connecting = connect(addr);
                tokio::pin!(connecting);
                let done = match tokio::time::timeout_at(now + share, &mut connecting).await {
                    Ok(done) => done,
                    Err(_) if left.load(Ordering::Relaxed) > 0 => return Err(ProxyError::ConnectionTimeout),
                    Err(_) => connecting.await,
                };
                done.map(|s| (s, addr)).map_err(|e| classify(&e))
            });
            next_start = now + ATTEMPT_DELAY;
        }
        tick.as_mut().reset(next_start);
        tokio::select! {
            biased;
            Some(done) = racing.next() => match done {
                Ok(stream) => return Ok(stream),
                Err(ProxyError::TooManyConnections) => return Err(ProxyError::TooManyConnections),
                Err(e) => {
                    last = e;
                    // RFC 8305 §5: a failure starts the next attempt at once.
                    next_start = Instant::now();
                }
            },
            () = &mut tick, if waiting.len() > 0 && racing.len() < MAX_RACING => {}
            else => return Err(last),
        }
    }
}

/// `addrs` with the two address families in turns, starting with the
/// family of the first (RFC 8305 §4), each family in its own order: when
/// one family is broken on the path to the origin, the other's first
/// address is the second attempt, not the last.
pub fn in_turns(addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    let Some(first) = addrs.first() else { return Vec::new() };
    let (same, other): (Vec<SocketAddr>, Vec<SocketAddr>) =
        addrs.iter().partition(|a| a.is_ipv4() == first.is_ipv4());
    let mut out = Vec::with_capacity(addrs.len());
    let (mut same, mut other) = (same.into_iter(), other.into_iter());
    loop {
        match (same.next(), other.next()) {
            (None, None) => return out,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
}

/// Bytes a connection may hold written but not yet sent
/// (`TCP_NOTSENT_LOWAT`), on every client and origin connection.
///
/// authgate sees a peer take bytes only through its own writes going
/// through, and every "took nothing for this long" limit (`send_timeout`,
/// the upload's share of `upstream_response_timeout`, a tunnel's) counts
/// from the last one. With the socket's default a write went through only
/// after the peer had read about a third of a send buffer that grows to
/// 4 MiB on a fast link: a client reading a download at 16 KiB/s was cut by
/// the 60 s `send_timeout`, an origin reading an upload slowly was taken for
/// one that stopped. With the bound a write goes through each time the peer
/// has taken about half of it, and a slow peer no longer parks megabytes in
/// the kernel. 128 KiB is the size the option's author gives as enough for
/// throughput ("128 KB or less is OK", Linux commit c9bee3b7fdec).
pub const MAX_UNSENT: u32 = 128 * 1024;

/// Sets [`MAX_UNSENT`] on `socket`. Linux copies it from a listening socket
/// to each accepted one. Where the option is missing (not Linux), writes
/// show progress late, as they did before it: a slow peer may be cut
/// sooner, never later.
pub fn bound_unsent(socket: &impl std::os::fd::AsFd) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = socket2::SockRef::from(socket).set_tcp_notsent_lowat(MAX_UNSENT);
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = socket;
}

fn classify(e: &io::Error) -> ProxyError {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => ProxyError::ConnectionRefused,
        io::ErrorKind::TimedOut => ProxyError::ConnectionTimeout,
        _ if out_of_descriptors(e) => {
            warn_out_of_descriptors(e);
            ProxyError::TooManyConnections
        }
        _ => ProxyError::DestinationUnavailable,
    }
}

/// Whether `e` says the process (EMFILE) or the system (ENFILE) has no
/// file descriptor left: the proxy's own limit, not the destination's
/// fault, so the client gets a 503 to retry, not a 502 blaming the origin.
pub(crate) fn out_of_descriptors(e: &io::Error) -> bool {
    rustix::io::Errno::from_io_error(e)
        .is_some_and(|n| n == rustix::io::Errno::MFILE || n == rustix::io::Errno::NFILE)
}

/// The operator is told, at most once every 10 s (when the descriptors run
/// out every request fails, and a line for each would flood the log).
pub(super) fn warn_out_of_descriptors(e: &io::Error) {
    const LINE: &str = "out of file descriptors: cannot open connections to origins (answered 503); raise the open-files limit (LimitNOFILE, ulimit -n) or lower limits.max_connections";
    static EVERY: Every = Every::new(10, LINE);
    if let Some(held) = EVERY.pass() {
        tracing::warn!(error = %e, held_back = held, "{LINE}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn families_take_turns_from_the_first_ones() {
        let got = in_turns(&[
            addr("192.0.2.1:80"),
            addr("192.0.2.2:80"),
            addr("192.0.2.3:80"),
            addr("[2001:db8::1]:80"),
            addr("[2001:db8::2]:80"),
        ]);
        let want = ["192.0.2.1:80", "[2001:db8::1]:80", "192.0.2.2:80", "[2001:db8::2]:80", "192.0.2.3:80"];
        assert_eq!(got, want.map(addr));
        let got = in_turns(&[addr("[2001:db8::1]:80"), addr("192.0.2.1:80"), addr("[2001:db8::2]:80")]);
        assert_eq!(got, ["[2001:db8::1]:80", "192.0.2.1:80", "[2001:db8::2]:80"].map(addr));
        assert!(in_turns(&[]).is_empty());
    }

    /// A loopback port nothing listens on, nor can: bound without
    /// listening (a SYN to it is refused), and kept bound for the life of
    /// the test process. Freed at once, as it was, the port could be given
    /// to another test's [`black_hole`] while a dial to it was still going
    /// out: that test then counted one attempt in flight too many.
    fn refused() -> SocketAddr {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.bind(&addr("127.0.0.1:0").into()).unwrap();
        let at = s.local_addr().unwrap().as_socket().unwrap();
        std::mem::forget(s);
        at
    }

    /// A listener that never accepts, its one-place queue filled: later
    /// connections hang (the kernel drops their SYNs).
    fn black_hole() -> (socket2::Socket, std::net::TcpStream, SocketAddr) {
        use socket2::{Domain, Socket, Type};
        let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        l.bind(&addr("127.0.0.1:0").into()).unwrap();
        l.listen(0).unwrap();
        let at = l.local_addr().unwrap().as_socket().unwrap();
        let filler = std::net::TcpStream::connect(at).unwrap();
        (l, filler, at)
    }

    /// Sockets of this process's network namespace in SYN-SENT towards
    /// `ports` on 127.0.0.1 (`/proc/net/tcp`: state 02).
    fn syn_sent_to(ports: &[u16]) -> usize {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        table
            .lines()
            .skip(1)
            .filter(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let port = fields[2].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
                fields[3] == "02"
                    && fields[2].starts_with("0100007F:")
                    && port.is_some_and(|p| ports.contains(&p))
            })
            .count()
    }

    /// A name with many dead addresses holds at most [`MAX_RACING`]
    /// sockets at a time (each a descriptor, and a proxy dials for many
    /// clients at once), and still works through them: an attempt that has
    /// had its share of the time left is dropped for the next address.
    #[tokio::test]
    async fn dead_addresses_are_worked_through_a_few_sockets_at_a_time() {
        let holes: Vec<_> = (0..6).map(|_| black_hole()).collect();
        let ports: Vec<u16> = holes.iter().map(|h| h.2.port()).collect();
        let addrs: Vec<SocketAddr> = holes.iter().map(|h| h.2).collect();
        let dial = tokio::spawn(async move { Connector::dial(&addrs, Duration::from_secs(3)).await });
        let mut most = 0;
        while !dial.is_finished() {
            // Two reads that agree: the kernel's table is not read at one
            // instant, and an attempt dropped for the next one could be
            // seen with it in a single read (once, in CI-like load).
            let (a, b) = (syn_sent_to(&ports), syn_sent_to(&ports));
            if a == b {
                most = most.max(a);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(most, MAX_RACING, "attempts in flight at once");
        let r = dial.await.unwrap();
        assert!(matches!(r, Err(ProxyError::ConnectionTimeout)), "{r:?}");

        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_at = live.local_addr().unwrap();
        let s = Connector::dial(&[holes[0].2, holes[1].2, live_at], Duration::from_secs(6)).await;
        assert_eq!(s.unwrap().1, live_at, "the third address gets its turn");
    }

    /// An attempt past its share of the time goes on when no other address
    /// is left to try: here the origin's listen queue frees up after 2.6 s
    /// (Linux then completes the handshake about half a second later, on a
    /// retransmission), past the attempt's 2.5 s share of the 5 s. Dropped
    /// at its share, the dial failed at 2.5 s.
    #[tokio::test]
    async fn the_last_attempt_left_runs_until_the_timeout() {
        let (hole, filler, late_at) = black_hole();
        let freed = tokio::task::spawn_blocking(move || {
            std::thread::sleep(Duration::from_millis(2600));
            let accepted = hole.accept().unwrap();
            (hole, filler, accepted)
        });
        let s = Connector::dial(&[late_at, refused()], Duration::from_secs(5)).await;
        assert_eq!(s.unwrap().1, late_at);
        drop(freed.await.unwrap());
    }

    /// Only the first [`MAX_ADDRESSES`] of a name are tried.
    #[tokio::test]
    async fn addresses_past_the_limit_are_not_tried() {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut addrs: Vec<SocketAddr> = (0..MAX_ADDRESSES).map(|_| refused()).collect();
        addrs.push(live.local_addr().unwrap());
        let r = Connector::dial(&addrs, Duration::from_secs(5)).await;
        assert!(matches!(r, Err(ProxyError::ConnectionRefused)), "{r:?}");
        addrs.remove(0);
        assert!(Connector::dial(&addrs, Duration::from_secs(5)).await.is_ok());
    }

    #[tokio::test]
    async fn the_first_address_to_connect_wins_and_failures_are_told_apart() {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_at = live.local_addr().unwrap();
        let (_hole, _filler, hole_at) = black_hole();
        let long = Duration::from_secs(20);

        // A refused address and a silent one before the live one.
        let (s, at) = Connector::dial(&[refused(), hole_at, live_at], long).await.unwrap();
        assert_eq!((s.peer_addr().unwrap(), at), (live_at, live_at));
        let (s, at) = Connector::dial(&[hole_at, live_at], long).await.unwrap();
        assert_eq!((s.peer_addr().unwrap(), at), (live_at, live_at));

        let all_refused = Connector::dial(&[refused(), refused()], long).await;
        assert!(matches!(all_refused, Err(ProxyError::ConnectionRefused)), "{all_refused:?}");
        let silent = Connector::dial(&[hole_at, refused()], Duration::from_millis(600)).await;
        assert!(matches!(silent, Err(ProxyError::ConnectionTimeout)), "{silent:?}");
        let none = Connector::dial(&[], long).await;
        assert!(matches!(none, Err(ProxyError::DestinationUnavailable)), "{none:?}");
    }
}
