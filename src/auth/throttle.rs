//! Repeat offenders: failed logins counted per client address.
//!
//! A token bucket per address (IPv6 per /64, since one host owns a whole /64):
//! each failed attempt takes a token, tokens come back at `max_failures` per
//! `window`. With no token left, the client gets 429 with `Retry-After` before
//! any argon2 work is spent. Successes never consume tokens, and a request a
//! verified-credential cache hit answers never reaches the throttle, so
//! legitimate clients are not slowed. The map is bounded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MAX_TRACKED: usize = 100_000;

/// `[auth.throttle]` settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Whether throttling is on.
    pub enabled: bool,
    /// Failed attempts allowed in a burst.
    pub max_failures: u32,
    /// Time in which `max_failures` tokens come back.
    pub window: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { enabled: true, max_failures: 10, window: Duration::from_secs(60) }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The per-address failure counter.
#[derive(Debug, Default)]
pub struct Throttle {
    map: Mutex<HashMap<IpAddr, Bucket>>,
}

/// The unit a client address is counted in: IPv4 addresses one by one
/// (IPv4-mapped IPv6 as IPv4), IPv6 per /64, since one host owns a whole /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl Throttle {
    /// An empty throttle.
    pub fn new() -> Self {
        Self::default()
    }

    fn refill(b: &mut Bucket, s: &Settings, now: Instant) {
        let rate = f64::from(s.max_failures) / s.window.as_secs_f64().max(0.001);
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(f64::from(s.max_failures));
        b.at = now;
    }

    /// `Err(retry_after)` when `ip` has no failed attempt left.
    pub fn check(&self, ip: IpAddr, s: &Settings, now: Instant) -> Result<(), Duration> {
        if !s.enabled {
            return Ok(());
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let Some(b) = map.get_mut(&client_key(ip)) else { return Ok(()) };
        Self::refill(b, s, now);
        if b.tokens >= 1.0 {
            Ok(())
        } else {
            let rate = f64::from(s.max_failures) / s.window.as_secs_f64().max(0.001);
            Err(Duration::from_secs_f64(((1.0 - b.tokens) / rate).max(1.0)).min(s.window))
        }
    }

    /// Records a failed attempt from `ip`.
    pub fn failed(&self, ip: IpAddr, s: &Settings, now: Instant) {
        if !s.enabled {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED && !map.contains_key(&client_key(ip)) {
            // Forget addresses whose buckets are full again.
            map.retain(|_, b| {
                Self::refill(b, s, now);
                b.tokens < f64::from(s.max_failures)
            });
            if map.len() >= MAX_TRACKED {
                return;
            }
        }
        let b = map.entry(client_key(ip)).or_insert(Bucket { tokens: f64::from(s.max_failures), at: now });
        Self::refill(b, s, now);
        b.tokens = (b.tokens - 1.0).max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_burst_and_recovers() {
        let s = Settings { enabled: true, max_failures: 3, window: Duration::from_secs(30) };
        let t = Throttle::new();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(t.check(ip, &s, t0).is_ok());
            t.failed(ip, &s, t0);
        }
        let retry = t.check(ip, &s, t0).unwrap_err();
        assert!(retry >= Duration::from_secs(1) && retry <= Duration::from_secs(10), "{retry:?}");
        assert!(t.check(other, &s, t0).is_ok(), "other addresses are unaffected");
        assert!(t.check(ip, &s, t0 + Duration::from_secs(10)).is_ok(), "a token came back");
    }

    #[test]
    fn ipv6_counts_per_64_and_disabled_never_blocks() {
        let s = Settings { enabled: true, max_failures: 1, window: Duration::from_secs(60) };
        let t = Throttle::new();
        let now = Instant::now();
        t.failed("2001:db8::1".parse().unwrap(), &s, now);
        assert!(t.check("2001:db8::ffff".parse().unwrap(), &s, now).is_err());
        assert!(t.check("2001:db8:0:1::1".parse().unwrap(), &s, now).is_ok());
        let off = Settings { enabled: false, ..s };
        assert!(t.check("2001:db8::1".parse().unwrap(), &off, now).is_ok());
    }
}
