//! Name resolution: asynchronous, cached with the records' own TTLs, bounded
//! by a timeout.
//!
//! Uses hickory's resolver, without its cache (authgate keeps the addresses
//! it uses of each answer for the answer's TTL, see `Kept`), with either the
//! system's `/etc/resolv.conf` or the `[dns] servers` of the config.
//! `localhost` and `*.localhost` are loopback without asking anyone (RFC 6761
//! §6.3), so the egress check sees them as what they are.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{Name, ResolveError, TokioResolver};

use crate::error::ProxyError;

/// The resolver shared by all requests.
pub struct Resolver {
    /// hickory's resolver, made anew (see [`Resolver::fresh`]) when the
    /// `dns_timeout` asked for is not the one it was made with, and after
    /// a lookup in which a query went unanswered (see [`Resolver::renew`]).
    inner: arc_swap::ArcSwap<Made>,
    /// The servers and options it is made from (read once: the system's
    /// `/etc/resolv.conf` at the start).
    config: ResolverConfig,
    opts: ResolverOpts,
    /// When it was last made anew after an unanswered query.
    renewed: Mutex<Option<Instant>>,
    /// When a lookup was first cut to the Resolution Delay with its AAAA
    /// query unanswered, since the resolver was last made anew (see
    /// [`Resolver::aaaa_left_again`]).
    aaaa_left: Mutex<Option<Instant>>,
    /// The answers kept for their TTL (hickory keeps none, see [`Kept`]);
    /// shared with the queries left to finish on their own (see
    /// [`on_dns_thread`]).
    kept: Arc<Kept>,
}

/// A hickory resolver and the per-query timeout it was made with.
struct Made {
    resolver: TokioResolver,
    timeout: Duration,
}

/// Least time between two renewals after unanswered queries: a
/// dead server times every lookup out, and a new resolver per lookup would
/// cost a new TCP connection each.
const RENEW_EVERY: Duration = Duration::from_secs(1);

impl Resolver {
    /// A resolver asking `servers`, or the system's resolvers when empty.
    /// `timeout` (`dns_timeout`) bounds each lookup, and so the queries
    /// hickory sends (see `made`).
    pub fn new(servers: &[SocketAddr], timeout: Duration) -> Self {
        let (config, mut opts) = if servers.is_empty() {
            hickory_resolver::system_conf::read_system_conf().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read the system DNS configuration; names will not resolve");
                (ResolverConfig::new(), ResolverOpts::default())
            })
        } else {
            let mut config = ResolverConfig::new();
            for s in servers {
                config.add_name_server(NameServerConfig::new(*s, Protocol::Udp));
                config.add_name_server(NameServerConfig::new(*s, Protocol::Tcp));
            }
            (config, ResolverOpts::default())
        };
        opts.attempts = 1;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // Answers are kept by `Kept`, not by hickory: its cache holds each
        // answer's records whole (see `Kept`).
        opts.cache_size = 0;
        let made = made(&config, &opts, timeout);
        Resolver {
            inner: arc_swap::ArcSwap::from_pointee(made),
            config,
            opts,
            renewed: Mutex::new(None),
            aaaa_left: Mutex::new(None),
            kept: Arc::default(),
        }
    }

    /// The hickory resolver for lookups bounded by `timeout`: made anew
    /// when the one in use was made with another. A reload that changed
    /// `dns_timeout` reached only the whole lookup, and hickory still gave
    /// each query up after the old one: raised from 2 s to 6 s, answers that
    /// came in 2.5 s were never taken (probe 145).
    fn fresh(&self, timeout: Duration) -> std::sync::Arc<Made> {
        let current = self.inner.load_full();
        if current.timeout == timeout {
            return current;
        }
        let new = std::sync::Arc::new(made(&self.config, &self.opts, timeout));
        self.inner.store(new.clone());
        new
    }

    /// After a lookup with a query unanswered: a new hickory resolver, so
    /// that the next lookups go out on new connections. hickory sends every
    /// query over TCP on one connection per server, kept open: a server that
    /// stopped answering on it, and did not close it, failed every lookup
    /// needing TCP for good (probe 145).
    fn renew(&self) {
        let now = Instant::now();
        {
            let mut renewed = self.renewed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if renewed.is_some_and(|at| now.duration_since(at) < RENEW_EVERY) {
                return;
            }
            *renewed = Some(now);
        }
        *self.aaaa_left.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        let timeout = self.inner.load().timeout;
        self.inner.store(std::sync::Arc::new(made(&self.config, &self.opts, timeout)));
    }

    /// Whether a lookup cut to the Resolution Delay with its AAAA query
    /// unanswered comes `timeout` or more after the first such lookup since
    /// the resolver was made: the AAAA queries may be going out on a TCP
    /// connection that no longer answers. A cut query is dropped unanswered,
    /// so no lookup ever timed out on it and the resolver was never made
    /// anew: with AAAA answers too long for UDP and A ones not, a name's
    /// IPv6 addresses were lost for good (probe 152). At most a renewal
    /// more for a server whose AAAA answers take over 50 ms now and then.
    fn aaaa_left_again(&self, timeout: Duration) -> bool {
        let now = Instant::now();
        let mut first = self.aaaa_left.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match *first {
            Some(at) => now.duration_since(at) >= timeout,
            None => {
                *first = Some(now);
                false
            }
        }
    }

    /// The addresses of `name` (lower-case, no trailing dot), IPv4 first.
    ///
    /// A and AAAA are asked at once, each on its own: a resolver (or a
    /// middlebox) that drops one kind of query, typically AAAA, does not
    /// keep the other's answer from being used. Once the A answer has come
    /// with addresses, the AAAA answer is waited for only
    /// [`RESOLUTION_DELAY`] more (RFC 8305 §3); the other way round, the
    /// A answer is waited for until `timeout`. IPv4 comes first because an
    /// egress network more often has an IPv6 path that leads nowhere than a
    /// dead IPv4 one; the dialer tries the families in turns.
    ///
    /// # Errors
    /// `DnsTimeout` when no address came within `timeout` and a query was
    /// still unanswered or timed out, `DnsError` for any other failure (no
    /// such name, no address, an error answer). With no address, an
    /// NXDOMAIN answer to either query makes it a `DnsError`.
    pub async fn lookup(&self, name: &str, timeout: Duration) -> Result<Vec<IpAddr>, ProxyError> {
        if name == "localhost" || name.ends_with(".localhost") {
            return Ok(vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)]);
        }
        // A fully-qualified name: no search-domain guessing.
        let fqdn = format!("{name}.");
        // Boxed: hickory's lookup futures are over a kilobyte each, and
        // inline they would enlarge every request's future (and so every
        // copy of it, and every keep-alive connection's task) although IP
        // targets never get here.
        Box::pin(self.both_families(&fqdn, timeout)).await
    }

    async fn both_families(&self, fqdn: &str, timeout: Duration) -> Result<Vec<IpAddr>, ProxyError> {
        let deadline = Instant::now() + timeout;
        let resend_after = timeout / 2;
        let made = self.fresh(timeout);
        // Set when the AAAA query is left behind at the Resolution Delay:
        // it then runs on (within `timeout`), and its answer is kept for
        // the next lookup. Dropped with it, a name whose A records were
        // kept and whose AAAA ones were not (their TTLs differ) had its
        // AAAA query sent, cut at 50 ms and never kept, lookup after
        // lookup, with a resolver slower than that: the name was IPv4-only
        // until its A records expired, and unreachable with IPv4 down
        // (probe 331).
        let linger = Arc::new(AtomicBool::new(false));
        let v4 = patiently(deadline, resend_after, || self.addresses(&made.resolver, Family::V4, fqdn, None));
        let v6 = patiently(deadline, resend_after, || {
            self.addresses(&made.resolver, Family::V6, fqdn, Some((&linger, deadline)))
        });
        tokio::pin!(v4, v6);
        let give_up = tokio::time::sleep_until(deadline);
        tokio::pin!(give_up);
        let (mut a, mut aaaa) = (None, None);
        // Whether the wait was cut to the Resolution Delay (no answer to
        // AAAA is then a sign of a dead connection only when it recurs:
        // see `aaaa_left_again`).
        let mut cut_short = false;
        // An NXDOMAIN to one query does not end the wait for the other:
        // some servers say NXDOMAIN to AAAA for names that have A records
        // (RFC 4074 §4.2), and a resolver's cache can hold such an answer
        // after the A records expired.
        let no_such_name = |r: &Option<Result<Vec<IpAddr>, ResolveError>>| matches!(r, Some(Err(e)) if e.proto().is_some_and(|p| p.is_nx_domain()));
        while a.is_none() || aaaa.is_none() {
            tokio::select! {
                r = &mut v4, if a.is_none() => {
                    if aaaa.is_none() && r.as_ref().is_ok_and(|ips| !ips.is_empty()) {
                        give_up.as_mut().reset(deadline.min(Instant::now() + RESOLUTION_DELAY));
                        cut_short = true;
                    }
                    a = Some(r);
                }
                r = &mut v6, if aaaa.is_none() => aaaa = Some(r),
                () = &mut give_up => break,
            }
        }
        // A query of either family unanswered until the end makes the
        // resolver anew (see [`Resolver::renew`]): with A over a dead TCP
        // connection and AAAA over UDP, every lookup of such a name waited
        // the whole `dns_timeout` and lost its IPv4 addresses, without
        // ever failing whole (probe 149).
        let unanswered = |r: &Option<Result<Vec<IpAddr>, ResolveError>>| match r {
            None => true,
            Some(Err(e)) => matches!(classify(e), ProxyError::DnsTimeout),
            Some(Ok(_)) => false,
        };
        if cut_short && aaaa.is_none() {
            linger.store(true, Ordering::Relaxed);
        }
        let renew = if cut_short {
            aaaa.is_none() && self.aaaa_left_again(timeout)
        } else {
            unanswered(&a) || unanswered(&aaaa)
        };
        if renew {
            self.renew();
        }
        let ips = distinct([&a, &aaaa].into_iter().flatten().flatten().flatten().copied());
        if !ips.is_empty() {
            return Ok(ips);
        }
        // No address. A name one answer says does not exist is a
        // `DnsError`, whether or not the other came; otherwise the most
        // telling failure of the two.
        if no_such_name(&a) || no_such_name(&aaaa) {
            return Err(ProxyError::DnsError);
        }
        let failed = |r: &Option<Result<Vec<IpAddr>, ResolveError>>| match r {
            None => ProxyError::DnsTimeout,
            Some(Err(e)) => classify(e),
            Some(Ok(_)) => ProxyError::DnsError,
        };
        Err(match (failed(&a), failed(&aaaa)) {
            (e @ ProxyError::TooManyConnections, _) | (_, e @ ProxyError::TooManyConnections) => e,
            (e @ ProxyError::DnsTimeout, _) | (_, e @ ProxyError::DnsTimeout) => e,
            (e, _) => e,
        })
    }
}

/// Most addresses of one family used (and kept) from one answer. Only
/// these are checked and dialed: an answer can hold thousands (over TCP),
/// and the dialer gives up on a name long before it has tried 32.
const KEPT_ADDRS: usize = 32;

/// Most answers kept (a name's A and its AAAA count as two).
const KEPT_ANSWERS: usize = 4096;

/// An address family, as asked for.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Family {
    V4,
    V6,
}

/// The answers kept until their TTL ends: at most [`KEPT_ANSWERS`], each
/// the [`KEPT_ADDRS`] addresses used of it, so at most a few MiB in all.
/// hickory's cache (4096 answers) kept each answer's records whole, about
/// 1 MB for one of 3000 addresses: any user could make the proxy hold
/// gigabytes with names of a zone of theirs (probe 88). An answer with no
/// address of the family asked (an IPv4-only name's AAAA), and one that
/// says the name does not exist, are kept for their negative TTL, when the
/// server gave one (RFC 2308 §5); other failures are not kept. (SipHash:
/// the names are chosen by the users.)
#[derive(Default)]
struct Kept(Mutex<HashMap<(Family, Box<str>), Answer>>);

/// The addresses of one answer, or that the name does not exist (`nx`),
/// until when they hold, and when they were last used.
struct Answer {
    ips: Box<[IpAddr]>,
    nx: bool,
    until: std::time::Instant,
    used: std::time::Instant,
}

/// A kept answer: addresses (none for "no data"), or no such name.
#[derive(Debug, PartialEq)]
enum Held {
    Addresses(Vec<IpAddr>),
    NoSuchName,
}

/// The longest an answer is kept, whatever its TTL (hickory's bound).
const KEPT_TTL_MAX: Duration = Duration::from_secs(86_400);

impl Kept {
    /// The kept answer for `name`, while it holds.
    fn get(&self, family: Family, name: &str) -> Option<Held> {
        let key = (family, Box::from(name));
        let now = std::time::Instant::now();
        let mut kept = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let answer = kept.get_mut(&key)?;
        if answer.until > now {
            answer.used = now;
            return Some(if answer.nx { Held::NoSuchName } else { Held::Addresses(answer.ips.to_vec()) });
        }
        kept.remove(&key);
        None
    }

    /// Keeps `ips` for `name` until `until`. With [`KEPT_ANSWERS`] kept
    /// already, the expired ones go, or if none has expired, the one used
    /// least recently: by the one to expire first, names with long TTLs
    /// asked for once kept everyone's others from being kept at all
    /// (probe 90).
    fn put(&self, family: Family, name: &str, ips: &[IpAddr], until: std::time::Instant) {
        self.hold(family, name, ips, false, until);
    }

    /// [`Kept::put`] of `ips`, or of "no such name" when `nx`.
    fn hold(&self, family: Family, name: &str, ips: &[IpAddr], nx: bool, until: std::time::Instant) {
        let now = std::time::Instant::now();
        if until <= now {
            return;
        }
        let until = until.min(now + KEPT_TTL_MAX);
        let key = (family, Box::from(name));
        let mut kept = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if kept.len() >= KEPT_ANSWERS && !kept.contains_key(&key) {
            kept.retain(|_, a| a.until > now);
            if kept.len() >= KEPT_ANSWERS {
                let oldest = kept.iter().min_by_key(|(_, a)| a.used).map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    kept.remove(&oldest);
                }
            }
        }
        kept.insert(key, Answer { ips: ips.into(), nx, until, used: now });
    }

    /// Keeps an answer of no address for `name` when `e` is one that says
    /// the name has none of this family ("no data": it exists), or that it
    /// does not exist (NXDOMAIN, kept as such), for a negative TTL. Without,
    /// an IPv4-only name's AAAA was asked again at each lookup (probe 90),
    /// and a name that does not exist twice at each (probe 274; RFC 2308
    /// §5 asks for both to be kept).
    ///
    /// Not when the answer is another name's, reached through a CNAME:
    /// hickory says no more of the chain, so the alias's own TTL, which
    /// bounds what is known of it (RFC 2308 §5), is not known. Kept for the
    /// target's negative TTL, a broken alias fixed meanwhile went on
    /// failing for up to that long (30 s for a CNAME of TTL 2, probe 346).
    fn no_data(&self, family: Family, name: &str, e: &ResolveError) {
        if let Some(ProtoErrorKind::NoRecordsFound { negative_ttl: Some(ttl), response_code, soa, query, .. }) =
            e.proto().map(|p| p.kind())
            && matches!(*response_code, ResponseCode::NoError | ResponseCode::NXDomain)
            && same_name(query.name(), name)
            // (hickory has already bounded `ttl` to a day: the SOA says
            // whether one of the TTLs it is made of was past TTL_MAX.)
            && soa.as_ref().is_none_or(|soa| soa.ttl().max(soa.data().minimum()) <= TTL_MAX)
        {
            let until = std::time::Instant::now() + Duration::from_secs(u64::from(*ttl));
            self.hold(family, name, &[], *response_code == ResponseCode::NXDomain, until);
        }
    }
}

impl Resolver {
    /// The addresses of one family of `fqdn`: kept ones (see [`Kept`]), or
    /// asked for, then kept (also when the caller has stopped waiting and
    /// `linger`'s flag was set: see [`on_dns_thread`]; the query then ends
    /// by `linger`'s deadline, the lookup's own).
    async fn addresses(
        &self,
        resolver: &TokioResolver,
        family: Family,
        fqdn: &str,
        linger: Option<(&Arc<AtomicBool>, Instant)>,
    ) -> Result<Vec<IpAddr>, ResolveError> {
        match self.kept.get(family, fqdn) {
            Some(Held::Addresses(ips)) => return Ok(ips),
            // As the server said it: a name that does not exist is a
            // `DnsError` whatever the other family's query meets.
            Some(Held::NoSuchName) => return Err(no_such_name(family, fqdn)),
            None => {}
        }
        // Made only when it is asked for: not on the path of a kept answer.
        let name = query_name(fqdn)?;
        let resolver = resolver.clone();
        let (kept, key) = (self.kept.clone(), fqdn.to_owned());
        // Just past the lookup's deadline, which ends the wait first: a query
        // left to linger otherwise ran until hickory's own timeout, then
        // sent again from a new socket (its `attempts`), holding a socket
        // for twice `dns_timeout` (probe 333).
        let until = linger.map(|(_, deadline)| deadline + LINGER_OVERRUN);
        let lookup = async move {
            let query = async {
                match family {
                    Family::V4 => resolver.ipv4_lookup(name).await.map(|a| {
                        let ips = a.iter().take(KEPT_ADDRS).map(|a| IpAddr::V4(a.0)).collect::<Vec<_>>();
                        (ips, valid_until(a.as_lookup()))
                    }),
                    Family::V6 => resolver.ipv6_lookup(name).await.map(|a| {
                        let ips = a.iter().take(KEPT_ADDRS).map(|a| IpAddr::V6(a.0)).collect::<Vec<_>>();
                        (ips, valid_until(a.as_lookup()))
                    }),
                }
            };
            let answer = match until {
                Some(until) => tokio::time::timeout_at(until, query)
                    .await
                    .unwrap_or_else(|_| Err(ResolveError::from("the DNS query was not answered in time"))),
                None => query.await,
            };
            // Kept where the answer comes, so that one no longer waited
            // for is kept too.
            let (ips, until) = answer.inspect_err(|e| kept.no_data(family, &key, e))?;
            kept.put(family, &key, &ips, until);
            Ok(ips)
        };
        on_dns_thread(lookup, linger.map(|(flag, _)| flag.clone())).await
    }
}

/// The error of an NXDOMAIN answer to `family`'s query for `fqdn`, made
/// again from the cache.
fn no_such_name(family: Family, fqdn: &str) -> ResolveError {
    use hickory_resolver::proto::op::Query;
    use hickory_resolver::proto::rr::RecordType;
    let kind = match family {
        Family::V4 => RecordType::A,
        Family::V6 => RecordType::AAAA,
    };
    let query = Query::query(Name::from_ascii(fqdn).unwrap_or_default(), kind);
    hickory_resolver::proto::ProtoError::nx_error(
        Box::new(query),
        None,
        None,
        None,
        ResponseCode::NXDomain,
        false,
        None,
    )
    .into()
}

/// The runtime hickory's queries run on: a thread of its own, so that
/// reading answers takes no time from the threads that serve connections.
/// An answer of 4,000 addresses took about 1.5 ms to decode (before the
/// cut to [`KEPT_ADDRS`]): 300 such lookups a second, of names in a zone a
/// user controls, raised other clients' p99 latency from 3 to 27–39 ms
/// (probe 223). hickory spawns its connections' tasks, which read and
/// decode the answers, on the runtime a query is made from: this one.
/// `None` if the thread could not be made; queries then run in place.
/// Not while the system refuses threads (a limit on threads or processes):
/// tokio panics then, in the middle of the build, and the lookup's
/// connection was dropped (probe 351); the lookup runs in place, and the
/// next one looks again.
fn dns_runtime() -> Option<&'static tokio::runtime::Runtime> {
    static RUNTIME: std::sync::OnceLock<Option<tokio::runtime::Runtime>> = std::sync::OnceLock::new();
    if RUNTIME.get().is_none() && !crate::blocking::room_for_threads(2) {
        return None;
    }
    RUNTIME
        .get_or_init(|| {
            let built = std::panic::catch_unwind(|| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("authgate-dns")
                    .enable_all()
                    .build()
            });
            built
                .unwrap_or_else(|_| Err(std::io::Error::other(crate::blocking::NoThread.to_string())))
                .inspect_err(|e| tracing::warn!(error = %e, "cannot start the DNS thread; lookups run on the proxy's threads"))
                .ok()
        })
        .as_ref()
}

/// Runs `lookup` on [`dns_runtime`], and stops it when dropped (a client
/// that left, a lookup given up), as it would stop in place, unless
/// `linger` was set then (see `AbortUnlessLingering`).
async fn on_dns_thread<T: Send + 'static>(
    lookup: impl Future<Output = Result<T, ResolveError>> + Send + 'static,
    linger: Option<Arc<AtomicBool>>,
) -> Result<T, ResolveError> {
    on_dns_thread_within(lookup, linger, &LINGERING).await
}

/// [`on_dns_thread`] with the places for lingering queries `places`.
async fn on_dns_thread_within<T: Send + 'static>(
    lookup: impl Future<Output = Result<T, ResolveError>> + Send + 'static,
    linger: Option<Arc<AtomicBool>>,
    places: &'static Semaphore,
) -> Result<T, ResolveError> {
    let Some(runtime) = dns_runtime() else { return lookup.await };
    // The place a lingering query holds (see `AbortUnlessLingering`), given
    // back when the task ends: the task holds this too.
    let place: Arc<Mutex<Option<SemaphorePermit<'static>>>> = Arc::default();
    let held = place.clone();
    let handle = runtime.spawn(async move {
        let _held = held;
        lookup.await
    });
    let _abort = AbortUnlessLingering { task: handle.abort_handle(), linger, place, places };
    handle.await.unwrap_or_else(|e| Err(ResolveError::from(format!("the DNS lookup did not finish: {e}"))))
}

/// How long past its lookup's deadline a lingering query may run (see
/// [`Resolver::addresses`]): the lookup gives up at the deadline first.
const LINGER_OVERRUN: Duration = Duration::from_millis(100);

/// Most queries left running at once after their lookup stopped waiting
/// (see `AbortUnlessLingering`). Each holds a socket until it is answered
/// or its lookup's deadline has passed: a server that never answers AAAA
/// would otherwise leave one a lookup, thousands under load, where they
/// were dropped after 50 ms.
const MOST_LINGERING: usize = 64;

/// The places of [`MOST_LINGERING`].
static LINGERING: Semaphore = Semaphore::const_new(MOST_LINGERING);

/// Aborts a query no longer waited for, unless its `linger` flag was set
/// and one of [`MOST_LINGERING`] places is free: it then runs to its end
/// (until its lookup's deadline at most: see `Resolver::addresses`), and its answer is kept.
struct AbortUnlessLingering {
    task: tokio::task::AbortHandle,
    linger: Option<Arc<AtomicBool>>,
    place: Arc<Mutex<Option<SemaphorePermit<'static>>>>,
    places: &'static Semaphore,
}

impl Drop for AbortUnlessLingering {
    fn drop(&mut self) {
        let wanted = self.linger.as_ref().is_some_and(|l| l.load(Ordering::Relaxed));
        if wanted
            && !self.task.is_finished()
            && let Ok(permit) = self.places.try_acquire()
        {
            // Freed with the last of the two `Arc`s: when the task ends.
            *self.place.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(permit);
            return;
        }
        self.task.abort();
    }
}

/// A hickory resolver of `config` and `opts` for lookups bounded by
/// `timeout`: its own queries time out [`QUERY_OVERRUN`] later, so that the
/// lookup's deadline always comes first and drops them.
fn made(config: &ResolverConfig, opts: &ResolverOpts, timeout: Duration) -> Made {
    let mut opts = opts.clone();
    opts.timeout = timeout + QUERY_OVERRUN;
    let resolver = TokioResolver::builder_with_config(config.clone(), TokioConnectionProvider::default())
        .with_options(opts)
        .build();
    Made { resolver, timeout }
}

/// How much longer than `dns_timeout` hickory lets a query run. With the
/// same time, hickory gave the first query up at the very end of the
/// lookup, and its pool then sent it once more, now and then (for about
/// one lookup in three at a `dns_timeout` of 300 ms): a silent server got
/// three A or AAAA queries, not the two the README says (probe 239).
const QUERY_OVERRUN: Duration = Duration::from_millis(250);

/// The longest TTL: one with its top bit set is read as zero (RFC 2181 §8),
/// not kept; it was kept for a day (probe 99).
const TTL_MAX: u32 = i32::MAX.unsigned_abs();

/// Until when `answer` holds: its shortest TTL from now, or now when a
/// record's TTL is past [`TTL_MAX`].
fn valid_until(answer: &hickory_resolver::lookup::Lookup) -> std::time::Instant {
    if answer.records().iter().any(|r| r.ttl() > TTL_MAX) {
        return std::time::Instant::now();
    }
    answer.valid_until()
}

/// Whether `answered` (a negative answer's name) is `asked` (an FQDN as
/// authgate looks it up: lower case, with or without its final dot).
fn same_name(answered: &Name, asked: &str) -> bool {
    let answered = answered.to_ascii();
    answered.trim_end_matches('.').eq_ignore_ascii_case(asked.trim_end_matches('.'))
}

/// `fqdn` as the query names it: its labels as they are. hickory reads a
/// `&str` as IDNA (UTS 46, STD3 rules), and refused names the target
/// parser lets through (`a_b.test`, `-x.test`, `xn--zz.test`) without
/// sending a query: a 502 "does not resolve" for names the system
/// resolver answers (probe 99). The labels are ASCII letters, digits, `-`
/// and `_` (see `target::parse_host`), lower case.
fn query_name(fqdn: &str) -> Result<Name, ResolveError> {
    let labels = fqdn.strip_suffix('.').unwrap_or(fqdn).split('.').map(str::as_bytes);
    Ok(Name::from_labels(labels)?)
}

/// Runs `ask`, and again, until `deadline`: once more, alongside, when it
/// has not answered after `resend_after` (half of `dns_timeout`, as a stub
/// resolver sends a lost query again; the first answer of the two is
/// used, so a slow server's answer still counts), and after
/// [`BUSY_PAUSE`] when the resolver was too busy to send it. The other
/// failures are answers, or not worth asking again.
///
/// A lost UDP packet was a 504. And hickory sends at most 32 queries at a
/// time on a TCP connection to a server (answers too long for UDP come
/// that way) and says "busy" to the others once its own retries (0.3 s)
/// are over: with 300 lookups of such names at once, one in five was a 504
/// `dns_timeout` long before `dns_timeout`. It also makes a new connection
/// after each "busy", and a few queries handed to the connection it drops
/// are never sent: with only "busy" asked again, 5 to 84 of the 300 were a
/// 504 at `dns_timeout`, in 9 of 55 runs.
///
/// (hickory's own timeout and retry were tried for the resending first:
/// it drops the first query when it sends the second, and a server
/// answering in 2.5 to 5 s, which had been in time, no longer was.)
async fn patiently<T, F: Future<Output = Result<T, ResolveError>>>(
    deadline: Instant,
    resend_after: Duration,
    ask: impl Fn() -> F,
) -> Result<T, ResolveError> {
    let mut running = FuturesUnordered::new();
    running.push(ask());
    // When to send it again alongside, once per round.
    let mut resend = Some(Instant::now() + resend_after);
    loop {
        let again = resend.filter(|_| running.len() == 1);
        tokio::select! {
            Some(r) = running.next() => match r {
                Err(e) if worth_asking_again(&e) && Instant::now() + BUSY_PAUSE < deadline => {
                    if running.is_empty() {
                        tokio::time::sleep(BUSY_PAUSE).await;
                        running.push(ask());
                        resend = Some(Instant::now() + resend_after);
                    }
                }
                r => return r,
            },
            () = tokio::time::sleep_until(again.unwrap_or(deadline)), if again.is_some() => {
                running.push(ask());
                resend = None;
            }
            // (Never: one query at least is running at each turn.)
            else => return Err(ResolveError::from("no query running")),
        }
    }
}

/// Whether the query was not sent because the resolver's connections were
/// all full (`Busy`, or `NoConnections`, with which hickory's pool ends a
/// round in which every server was busy: with `Busy` alone asked again, 11
/// of 300 lookups still failed), or went unanswered for the attempt's
/// time. `NoConnections` also means no server is configured at all; such a
/// lookup now fails at `dns_timeout`, not at once, still as a 504
/// `dns_timeout`.
fn worth_asking_again(e: &ResolveError) -> bool {
    matches!(
        e.proto().map(|p| p.kind()),
        Some(ProtoErrorKind::Busy | ProtoErrorKind::NoConnections | ProtoErrorKind::Timeout)
    )
}

/// The pause before a query is asked again after a failure (hickory has
/// already waited 0.3 s before it says it is too busy).
const BUSY_PAUSE: Duration = Duration::from_millis(50);

/// `ips` without repeats, in their order. A set, not a scan of the list
/// so far: answers over TCP can hold thousands of addresses, and for 4,000
/// A and 4,000 AAAA records the scan took 10.9 ms of CPU against 0.3 ms
/// (optimised build), per lookup, so per request to such a name with TTL 0.
/// (SipHash: the addresses are chosen by whoever runs the name's zone.)
fn distinct(ips: impl Iterator<Item = IpAddr>) -> Vec<IpAddr> {
    let mut seen = std::collections::HashSet::new();
    ips.filter(|ip| seen.insert(*ip)).collect()
}

/// How long the AAAA answer is waited for after the A answer came with
/// addresses (RFC 8305 §3 recommends 50 ms): a late AAAA answer costs the
/// IPv6 addresses of that lookup, never the connection.
pub const RESOLUTION_DELAY: Duration = Duration::from_millis(50);

/// What a failed query tells the client. When the resolver could not be
/// asked (it refused the TCP connection a long answer needs or closed it
/// unanswered, it was too busy, no connection to it could be made) there
/// is no answer to retry later, a `DnsTimeout`, not a "does not resolve";
/// with no file descriptor left for the query, authgate's own limit, a 503.
fn classify(e: &ResolveError) -> ProxyError {
    match e.proto().map(|p| p.kind()) {
        Some(ProtoErrorKind::Io(io)) if super::connect::out_of_descriptors(io) => {
            super::connect::warn_out_of_descriptors(io);
            ProxyError::TooManyConnections
        }
        Some(
            ProtoErrorKind::Timeout
            | ProtoErrorKind::Io(_)
            | ProtoErrorKind::Busy
            | ProtoErrorKind::NoConnections,
        ) => ProxyError::DnsTimeout,
        // The server closed the TCP connection unanswered, also the new one
        // hickory then asked on (a server may close an idle connection as a
        // query goes out, RFC 7766 §6.2.3). hickory says so as a message
        // only; a broken pipe or a reset is an `Io` error, above. A query
        // the closed connection took down with it, before it went out (A
        // and AAAA share one), is "receiver was canceled": it was a 502
        // one time in 3 to 12 (probe 121).
        Some(ProtoErrorKind::Message(m)) if ["stream closed", "receiver was canceled"].contains(m) => {
            ProxyError::DnsTimeout
        }
        _ => ProxyError::DnsError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers are kept until their TTL ends, per family, and never more
    /// than `KEPT_ANSWERS`: past it, the one used least recently goes,
    /// however long its TTL.
    #[test]
    fn kept_answers_hold_for_their_ttl_and_are_bounded() {
        let kept = Kept::default();
        let now = std::time::Instant::now();
        let ip = |i: u32| IpAddr::V4(Ipv4Addr::from(i));
        kept.put(Family::V4, "a.test.", &[ip(1)], now + Duration::from_secs(60));
        assert_eq!(kept.get(Family::V4, "a.test."), Some(Held::Addresses(vec![ip(1)])));
        assert_eq!(kept.get(Family::V6, "a.test."), None, "per family");
        kept.put(Family::V4, "gone.test.", &[ip(2)], now);
        assert_eq!(kept.get(Family::V4, "gone.test."), None, "expired");
        let day = Duration::from_secs(86_400);
        for i in 0..KEPT_ANSWERS + 10 {
            kept.put(Family::V6, &format!("n{i}.test."), &[ip(3)], now + day);
            // a.test, used all along, stays.
            assert!(kept.get(Family::V4, "a.test.").is_some(), "{i}");
        }
        let len = kept.0.lock().unwrap().len();
        assert_eq!(len, KEPT_ANSWERS);
        assert_eq!(kept.get(Family::V6, "n0.test."), None, "the least recently used went");
        assert!(kept.get(Family::V6, &format!("n{}.test.", KEPT_ANSWERS + 9)).is_some());
    }

    /// An answer of no address of a family ("no data") is kept for its
    /// negative TTL, and so is one that the name does not exist, as such
    /// (it was not kept; probe 274); one without a negative TTL is not.
    #[test]
    fn no_data_is_kept_for_its_negative_ttl() {
        use hickory_resolver::proto::op::Query;
        let kept = Kept::default();
        let about = |name: &str, ttl, code| {
            let aaaa = hickory_resolver::proto::rr::RecordType::AAAA;
            let query = Box::new(Query::query(Name::from_ascii(name).unwrap(), aaaa));
            ResolveError::from(ProtoError::nx_error(query, None, None, ttl, code, false, None))
        };
        let nothing = |ttl, code| about("V4only.test.", ttl, code);
        kept.no_data(Family::V6, "v4only.test.", &nothing(Some(300), ResponseCode::NoError));
        assert_eq!(kept.get(Family::V6, "v4only.test."), Some(Held::Addresses(vec![])));
        kept.no_data(Family::V6, "nx.test.", &about("nx.test", Some(300), ResponseCode::NXDomain));
        assert_eq!(kept.get(Family::V6, "nx.test."), Some(Held::NoSuchName));
        assert_eq!(kept.get(Family::V4, "nx.test."), None, "per family");
        kept.no_data(Family::V6, "nottl.test.", &nothing(None, ResponseCode::NoError));
        kept.no_data(Family::V6, "nxnottl.test.", &nothing(None, ResponseCode::NXDomain));
        kept.no_data(Family::V6, "busy.test.", &busy());
        kept.no_data(Family::V6, "servfail.test.", &nothing(Some(300), ResponseCode::ServFail));
        // Another name's answer (the end of a CNAME chain): not kept, the
        // alias's own TTL unknown.
        kept.no_data(Family::V6, "alias.test.", &about("target.test.", Some(300), ResponseCode::NoError));
        kept.no_data(Family::V6, "alias2.test.", &about("target.test.", Some(300), ResponseCode::NXDomain));
        for name in
            ["nottl.test.", "nxnottl.test.", "busy.test.", "servfail.test.", "alias.test.", "alias2.test."]
        {
            assert_eq!(kept.get(Family::V6, name), None, "{name}");
        }
    }
    use hickory_resolver::proto::ProtoError;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn busy() -> ResolveError {
        ResolveError::from(ProtoError::from(ProtoErrorKind::Busy))
    }

    /// `patiently` with `dns_timeout` 1 s around `ask`, which is given the
    /// number of its call (from 0); the result and the number of calls.
    async fn run<F: Future<Output = Result<&'static str, ResolveError>>>(
        ask: impl Fn(usize) -> F,
    ) -> (Result<&'static str, ResolveError>, usize) {
        let calls = AtomicUsize::new(0);
        let deadline = Instant::now() + Duration::from_secs(1);
        let asking =
            patiently(deadline, Duration::from_millis(500), || ask(calls.fetch_add(1, Ordering::SeqCst)));
        // (`both_families` gives up at the deadline; here, a hang is a failure.)
        let r =
            tokio::time::timeout(Duration::from_secs(2), asking).await.expect("an answer by the deadline");
        (r, calls.load(Ordering::SeqCst))
    }

    #[tokio::test(start_paused = true)]
    async fn a_query_the_resolver_was_too_busy_for_is_asked_again() {
        let (r, calls) = run(async |n| if n < 2 { Err(busy()) } else { Ok("answer") }).await;
        assert_eq!((r.ok(), calls), (Some("answer"), 3));
        // Until the deadline, 50 ms apart.
        let start = Instant::now();
        let (r, calls) = run(async |_| Err(busy())).await;
        assert!(r.is_err_and(|e| e.proto().is_some_and(|p| p.is_busy())));
        assert_eq!((calls, start.elapsed().as_millis() / 50), (20, 19));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_query_is_sent_again_alongside_and_the_first_answer_wins() {
        // The first is lost: the second answers.
        let (r, calls) = run(async |n| {
            if n == 0 {
                std::future::pending::<()>().await;
            }
            Ok("second")
        })
        .await;
        assert_eq!((r.ok(), calls), (Some("second"), 2));
        // The first is slow, past the resend, but in time: it still counts.
        let (r, calls) = run(async |n| {
            if n == 0 {
                tokio::time::sleep(Duration::from_millis(700)).await;
                return Ok("first");
            }
            std::future::pending::<()>().await;
            Ok("second")
        })
        .await;
        assert_eq!((r.ok(), calls), (Some("first"), 2));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_is_not_asked_again() {
        let (r, calls) = run(async |_| Err(ResolveError::from("no such name"))).await;
        assert!(r.is_err());
        assert_eq!(calls, 1);
    }

    /// Lookups run on the DNS thread, and one given up there is stopped,
    /// unless it was told to linger.
    #[tokio::test]
    async fn lookups_run_on_the_dns_thread_and_stop_when_given_up() {
        let on = on_dns_thread(
            async { Ok::<_, ResolveError>(std::thread::current().name().map(str::to_owned)) },
            None,
        );
        assert_eq!(on.await.unwrap().as_deref(), Some("authgate-dns"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let linger = Arc::new(AtomicBool::new(false));
        let waits = on_dns_thread(
            async move {
                let _tx = tx;
                std::future::pending::<Result<(), ResolveError>>().await
            },
            Some(linger),
        );
        assert!(tokio::time::timeout(Duration::from_millis(50), waits).await.is_err());
        // Dropped with the timeout: the task on the DNS thread ends, and
        // with it the sender it held.
        assert!(tokio::time::timeout(Duration::from_secs(5), rx).await.is_ok_and(|r| r.is_err()));
        // Told to linger, it runs to its end.
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let waits = on_dns_thread(
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = tx.send(());
                Ok::<_, ResolveError>(())
            },
            Some(Arc::new(AtomicBool::new(true))),
        );
        assert!(tokio::time::timeout(Duration::from_millis(10), waits).await.is_err());
        assert!(tokio::time::timeout(Duration::from_secs(5), rx).await.is_ok_and(|r| r.is_ok()));
    }

    /// At most so many lookups linger at once: past that, one given up is
    /// stopped as before, and a place is free again once a lingering one
    /// has ended.
    #[tokio::test]
    async fn lingering_lookups_are_bounded() {
        static TWO: Semaphore = Semaphore::const_new(2);
        let linger = || Some(Arc::new(AtomicBool::new(true)));
        // Holds its sender until it ends, after `ms`.
        let lookup = |ms: u64| {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let task = async move {
                let _tx = tx;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok::<_, ResolveError>(())
            };
            (task, rx)
        };
        let mut ended = Vec::new();
        for _ in 0..3 {
            let (task, rx) = lookup(300);
            let waits = on_dns_thread_within(task, linger(), &TWO);
            assert!(tokio::time::timeout(Duration::from_millis(10), waits).await.is_err());
            ended.push(rx);
        }
        // The third was stopped at once: its sender is gone before 300 ms.
        let third = ended.pop().unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(200), third).await.is_ok());
        assert_eq!(TWO.available_permits(), 0, "two linger");
        for rx in ended {
            let _ = rx.await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(TWO.available_permits(), 2, "given back when they end");
    }

    #[test]
    fn repeats_are_dropped_and_the_order_kept() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let got = distinct(
            ["192.0.2.2", "2001:db8::1", "192.0.2.1", "192.0.2.2", "2001:db8::1"].map(ip).into_iter(),
        );
        assert_eq!(got, ["192.0.2.2", "2001:db8::1", "192.0.2.1"].map(ip));
    }
}
