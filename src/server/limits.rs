//! Connection limits: overall and per client address.
//!
//! The per-address limit (IPv6 per /64) is below the overall one by default
//! (the configuration may set it higher), so one client cannot take every
//! slot; a refused connection is closed at once
//! (plain listeners get a 503 first).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::auth::throttle::client_key;

/// Counts open client connections.
#[derive(Debug, Default)]
pub struct ConnLimiter {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Holds one connection slot until dropped.
#[derive(Debug)]
pub struct Permit {
    limiter: Arc<ConnLimiter>,
    /// The client's address key, once known ([`Permit::assign`]).
    key: Option<IpAddr>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limiter.total.fetch_sub(1, Ordering::AcqRel);
        let Some(key) = self.key else { return };
        let mut map = self.limiter.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&key);
            }
        }
    }
}

impl Permit {
    /// Counts this connection against `ip`'s limit; `false` (and nothing
    /// counted) when `ip` already has `max_per_ip` connections.
    pub fn assign(&mut self, ip: IpAddr, max_per_ip: usize) -> bool {
        debug_assert!(self.key.is_none(), "a permit is assigned once");
        let k = client_key(ip);
        let mut map = self.limiter.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(k).or_insert(0);
        if *n >= max_per_ip {
            if *n == 0 {
                map.remove(&k);
            }
            return false;
        }
        *n += 1;
        drop(map);
        self.key = Some(k);
        true
    }
}

impl ConnLimiter {
    /// Open connections.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// A slot counted against the overall limit only, or `None` when it is
    /// reached: taken when a connection is accepted, before its client is
    /// known (behind a PROXY header), then [`Permit::assign`]ed to it.
    pub fn reserve(self: &Arc<Self>, max_total: usize) -> Option<Permit> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Permit { limiter: self.clone(), key: None })
    }

    /// A slot for a connection from `ip`, or `None` when a limit is reached.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr, max_total: usize, max_per_ip: usize) -> Option<Permit> {
        let mut permit = self.reserve(max_total)?;
        permit.assign(ip, max_per_ip).then_some(permit)
    }
}

/// Descriptors a client connection takes in the common case: its socket and
/// its origin's. A tunnel moving bulk data takes up to six (a splice pipe,
/// two fds, each way).
const FDS_PER_CONNECTION: u64 = 2;

/// Raises the process's open-files limit to its hard limit, as far as the
/// service manager or shell allows, and warns when even that leaves less
/// room than `max_connections` asks for. A shell's soft limit is often
/// 1024, room for about 500 connections before `EMFILE`, while the hard
/// limit is often far higher. Returns the soft limit in effect (`None`:
/// unlimited).
pub fn raise_open_files_limit(max_connections: usize) -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let mut soft = limit.current;
    // (`None` is unlimited. Linux caps a hard limit at `fs.nr_open`, so an
    // unlimited one is not set as the soft limit.)
    if let (Some(current), Some(hard)) = (limit.current, limit.maximum)
        && current < hard
    {
        let raised = rustix::process::Rlimit { current: Some(hard), maximum: Some(hard) };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => soft = Some(hard),
            Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit to its hard limit"),
        }
    }
    warn_if_short(soft, max_connections);
    soft
}

/// Warns when the open-files limit in effect is short of what
/// `max_connections` asks for: at a reload that raises it (it was said at
/// the start only; probe 175).
pub fn warn_if_open_files_short(max_connections: usize) {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    warn_if_short(soft, max_connections);
}

fn warn_if_short(soft: Option<u64>, max_connections: usize) {
    let needed = (max_connections as u64).saturating_mul(FDS_PER_CONNECTION);
    if let Some(n) = soft
        && n < needed
    {
        tracing::warn!(
            open_files = n,
            max_connections,
            "the open-files limit allows about {} client connections (each takes 2 descriptors, a bulk tunnel up to 6), fewer than limits.max_connections: past it new connections wait unaccepted and requests get 503; raise LimitNOFILE or the hard `ulimit -n`",
            n / FDS_PER_CONNECTION
        );
    }
}

/// The most idle origin connections the pool keeps, all origins together
/// (see [`Pool::set_max_idle`](crate::proxy::pool::Pool::set_max_idle)):
/// `max_connections`, and at most a quarter of the open-files limit, so
/// that three quarters of the descriptors stay for connections in use.
pub fn idle_pool_cap(max_connections: usize) -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(u64::MAX);
    max_connections.min(usize::try_from(soft / 4).unwrap_or(usize::MAX))
}

/// Half the machine's cores, at least one: how many threads at most do the
/// costly work a flood can ask for without a password (argon2
/// verifications by default, a TLS listener's RSA signatures), so that the
/// rest is left for everyone else's traffic.
pub fn half_the_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// A connection whose buffers once held more than this keeps them: hyper
/// grows a connection's read buffer for a large read (a download from an
/// origin, an upload from a client, a large head), up to its bound (256
/// KiB; a client's is twice `max_header_bytes` past that), and never
/// shrinks it, nor the buffer a large request head was written from. Idle,
/// such a connection held up to about 250 KiB where one that carried small
/// exchanges held about 20 (probe 224: 300 origin connections idle after
/// 4 MB downloads held 70 MB for `upstream_idle_timeout`; 1,000 client
/// connections idle after a 1 MiB head and a 407 held 1 GB for
/// `idle_timeout`).
pub const GROWN_BUFFER: usize = 32 * 1024;

/// How long a connection whose buffers grew past [`GROWN_BUFFER`] is kept
/// idle at most, a client's or a pooled origin connection: long enough for
/// the next of a client's downloads or uploads one after another (and the
/// keep-alive timeout of Apache and Node, after which many origins close
/// anyway), not for minutes after a burst.
pub const GROWN_IDLE: std::time::Duration = std::time::Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_and_total_limits() {
        let l = Arc::new(ConnLimiter::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let p1 = l.try_acquire(a, 3, 2).unwrap();
        let _p2 = l.try_acquire(a, 3, 2).unwrap();
        assert!(l.try_acquire(a, 3, 2).is_none(), "per-ip limit");
        let _p3 = l.try_acquire(b, 3, 2).unwrap();
        assert!(l.try_acquire(b, 3, 2).is_none(), "total limit");
        drop(p1);
        let _p4 = l.try_acquire(b, 3, 2).expect("a slot was freed");
        assert_eq!(l.open(), 3);
    }
}
