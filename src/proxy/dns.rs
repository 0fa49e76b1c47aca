//! Name resolution: asynchronous, cached with the records' own TTLs, bounded
//! by a timeout.
//!
//! Uses hickory's resolver (its cache honours each answer's TTL) with either
//! the system's `/etc/resolv.conf` or the `[dns] servers` of the config.
//! `localhost` and `*.localhost` are loopback without asking anyone (RFC 6761
//! §6.3), so the egress check sees them as what they are.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, TokioResolver};

use crate::error::ProxyError;

/// The resolver shared by all requests.
pub struct Resolver {
    inner: TokioResolver,
}

impl Resolver {
    /// A resolver asking `servers`, or the system's resolvers when empty.
    /// `timeout` bounds each query attempt.
    pub fn new(servers: &[SocketAddr], timeout: Duration) -> Self {
        let provider = TokioConnectionProvider::default();
        let mut builder = if servers.is_empty() {
            match TokioResolver::builder_tokio() {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the system DNS configuration; names will not resolve");
                    TokioResolver::builder_with_config(ResolverConfig::new(), provider)
                }
            }
        } else {
            let mut config = ResolverConfig::new();
            for s in servers {
                config.add_name_server(NameServerConfig::new(*s, Protocol::Udp));
                config.add_name_server(NameServerConfig::new(*s, Protocol::Tcp));
            }
            TokioResolver::builder_with_config(config, provider)
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.timeout = timeout;
        opts.attempts = 1;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.cache_size = 4096;
        Resolver { inner: builder.build() }
    }

    /// The addresses of `name` (lower-case, no trailing dot).
    ///
    /// # Errors
    /// `DnsTimeout` when no answer came within `timeout`, `DnsError` for
    /// any other failure (no such name, no address, an error answer).
    pub async fn lookup(&self, name: &str, timeout: Duration) -> Result<Vec<IpAddr>, ProxyError> {
        if name == "localhost" || name.ends_with(".localhost") {
            return Ok(vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)]);
        }
        // A fully-qualified name: no search-domain guessing.
        let fqdn = format!("{name}.");
        // Boxed: hickory's lookup future is 1.3 KiB, and inline it would
        // enlarge every request's future (and so every copy of it, and every
        // keep-alive connection's task) although IP targets never get here.
        let lookup = Box::pin(self.inner.lookup_ip(fqdn.as_str()));
        match tokio::time::timeout(timeout, lookup).await {
            Err(_) => Err(ProxyError::DnsTimeout),
            Ok(Err(e)) => Err(classify(&e)),
            Ok(Ok(answer)) => {
                let mut ips: Vec<IpAddr> = Vec::new();
                for ip in answer.iter() {
                    if !ips.contains(&ip) {
                        ips.push(ip);
                    }
                }
                if ips.is_empty() { Err(ProxyError::DnsError) } else { Ok(ips) }
            }
        }
    }
}

fn classify(e: &ResolveError) -> ProxyError {
    match e.proto().map(|p| p.kind()) {
        Some(ProtoErrorKind::Timeout) => ProxyError::DnsTimeout,
        _ => ProxyError::DnsError,
    }
}
