//! The one place that resolves, checks and dials upstream.
//!
//! Every address a name resolves to is checked against the egress policy, and
//! the connection goes to an address that was checked — never to a name that
//! is resolved again — so DNS rebinding cannot slip past the check.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;

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
        if let Some(bad) = ips.iter().find(|ip| !egress.permits(**ip)) {
            return Err(ProxyError::DestinationIpProhibited { addr: *bad });
        }
        Ok(ips.into_iter().map(|ip| SocketAddr::new(ip, target.port)).collect())
    }

    /// Connects to the first address that answers, within `timeout` overall.
    ///
    /// # Errors
    /// `ConnectionRefused`, `ConnectionTimeout`, `DestinationUnavailable`, or
    /// `TooManyConnections` when file descriptors run out.
    pub async fn dial(addrs: &[SocketAddr], timeout: Duration) -> Result<TcpStream, ProxyError> {
        let attempt = async {
            let mut last = ProxyError::DestinationUnavailable;
            for addr in addrs {
                match TcpStream::connect(addr).await {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        bound_unsent(&s);
                        return Ok(s);
                    }
                    Err(e) => last = classify(&e),
                }
            }
            Err(last)
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(ProxyError::ConnectionTimeout),
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
fn out_of_descriptors(e: &io::Error) -> bool {
    rustix::io::Errno::from_io_error(e)
        .is_some_and(|n| n == rustix::io::Errno::MFILE || n == rustix::io::Errno::NFILE)
}

/// The operator is told, at most once every 10 s (when the descriptors run
/// out every request fails, and a line for each would flood the log).
fn warn_out_of_descriptors(e: &io::Error) {
    const LINE: &str = "out of file descriptors: cannot open connections to origins (answered 503); raise the open-files limit (LimitNOFILE, ulimit -n) or lower limits.max_connections";
    static EVERY: Every = Every::new(10, LINE);
    if let Some(held) = EVERY.pass() {
        tracing::warn!(error = %e, held_back = held, "{LINE}");
    }
}
