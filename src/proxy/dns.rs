//! Name resolution with a timeout and a bounded cache.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::ProxyError;

const MAX_ENTRIES: usize = 10_000;

/// Resolves host names through the system resolver (`getaddrinfo`), caching
/// answers for `ttl`.
pub struct Resolver {
    ttl: Duration,
    cache: Mutex<HashMap<String, (Vec<IpAddr>, Instant)>>,
}

impl Resolver {
    /// A resolver caching answers for `ttl` (zero disables the cache).
    pub fn new(ttl: Duration) -> Self {
        Resolver {
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The addresses of `name`.
    ///
    /// # Errors
    /// `DnsTimeout` after `timeout`, `DnsError` when the name does not resolve.
    pub async fn lookup(&self, name: &str, timeout: Duration) -> Result<Vec<IpAddr>, ProxyError> {
        let now = Instant::now();
        if let Some((ips, until)) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            if *until > now {
                return Ok(ips.clone());
            }
        }
        let lookup = tokio::net::lookup_host((name, 0u16));
        let ips: Vec<IpAddr> = match tokio::time::timeout(timeout, lookup).await {
            Err(_) => return Err(ProxyError::DnsTimeout),
            Ok(Err(_)) => return Err(ProxyError::DnsError),
            Ok(Ok(addrs)) => {
                let mut v: Vec<IpAddr> = Vec::new();
                for a in addrs {
                    if !v.contains(&a.ip()) {
                        v.push(a.ip());
                    }
                }
                v
            }
        };
        if ips.is_empty() {
            return Err(ProxyError::DnsError);
        }
        if !self.ttl.is_zero() {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= MAX_ENTRIES {
                cache.retain(|_, (_, until)| *until > now);
                if cache.len() >= MAX_ENTRIES {
                    cache.clear();
                }
            }
            cache.insert(name.to_owned(), (ips.clone(), now + self.ttl));
        }
        Ok(ips)
    }
}
