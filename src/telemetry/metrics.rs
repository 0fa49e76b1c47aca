//! Prometheus metrics, kept in atomics and rendered as text on scrape.
//!
//! Every label comes from a fixed set, and every series exists (at 0) from
//! the start, so alerts on `rate()` work before the first event. Per-user
//! series exist only with `[metrics] per_user = true`, capped at
//! [`MAX_USERS`] users (the rest are counted as [`OTHER_USERS`]).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use super::process::ProcessStats;

/// Most users with their own per-user series.
pub const MAX_USERS: usize = 1000;
/// The `user` label of the users past [`MAX_USERS`]: no user name can
/// contain `:` (Basic separates name and password with it), so no user's
/// series can be taken for it.
pub const OTHER_USERS: &str = ":other";

/// How a request ended, for `authgate_requests_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Outcome {
    /// A response passed on from the origin (an upgrade's 101 included).
    Forwarded,
    /// CONNECT answered 200.
    Tunnel,
    /// A `TRACE` or `OPTIONS` with `Max-Forwards: 0`, answered by authgate
    /// itself: it never reaches an origin.
    AnsweredHere,
    /// 407 from authgate.
    ProxyAuthRequired,
    /// 403 by a rule.
    Denied,
    /// 403 by the egress IP policy.
    IpProhibited,
    /// 429.
    Throttled,
    /// 502/504 made by authgate.
    UpstreamError,
    /// 400/408/414/431/508 made by authgate.
    BadRequest,
    /// 503 made by authgate.
    Overloaded,
    /// 500 made by authgate.
    InternalError,
    /// Ended before an answer: the client left, or its connection was
    /// closed (user revoked, shutdown).
    Abandoned,
}

const OUTCOMES: [&str; 12] = [
    "forwarded",
    "tunnel",
    "answered_here",
    "proxy_auth_required",
    "denied",
    "ip_prohibited",
    "throttled",
    "upstream_error",
    "bad_request",
    "overloaded",
    "internal_error",
    "abandoned",
];

/// Why a 407 was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum AuthFailure {
    /// No header.
    Missing,
    /// Not valid Basic.
    Malformed,
    /// Unknown user, wrong password, disabled or expired.
    Invalid,
}

const AUTH_FAILURES: [&str; 3] = ["missing", "malformed", "invalid"];

const UPSTREAM_TYPES: [&str; 17] = [
    "dns_error",
    "dns_timeout",
    "connection_refused",
    "connection_timeout",
    "destination_unavailable",
    "connection_read_timeout",
    "connection_write_timeout",
    "connection_terminated",
    "http_response_incomplete",
    "http_response_header_section_size",
    "http_response_transfer_coding",
    "http_upgrade_failed",
    "http_protocol_error",
    "tls_protocol_error",
    "tls_alert_received",
    "tls_certificate_error",
    "other",
];

const CLASSES: [&str; 7] = ["1xx", "2xx", "3xx", "4xx", "5xx", "401", "403"];

const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

fn counters<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

/// How many logins the authenticator holds now, for the gauges.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AuthLoad {
    /// Verifications running on a worker.
    pub running: usize,
    /// Verifications waiting for a worker.
    pub queued: usize,
    /// Logins waiting in their address's line for a throttle attempt.
    pub throttle_waiting: usize,
}

/// What a scrape reads from outside [`Metrics`]: the state's gauges of now.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// The configuration's generation.
    pub generation: u64,
    /// Client connections open now.
    pub active_connections: usize,
    /// Origin connections idle in the pool now.
    pub pooled: usize,
    /// The authenticator's load now.
    pub auth: AuthLoad,
    /// Each TLS listener's address and when the chain it serves expires.
    pub certificates: Vec<(SocketAddr, SystemTime)>,
    /// The process's own figures.
    pub process: ProcessStats,
}

/// All counters and gauges.
#[derive(Debug)]
pub struct Metrics {
    requests: [AtomicU64; OUTCOMES.len()],
    auth_failures: [AtomicU64; 3],
    upstream_errors: [AtomicU64; UPSTREAM_TYPES.len()],
    upstream_responses: [AtomicU64; 7],
    active_tunnels: AtomicI64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    argon2_buckets: [AtomicU64; 12],
    argon2_count: AtomicU64,
    argon2_sum_micros: AtomicU64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    /// TLS handshakes on the listener that failed, and that timed out.
    tls_failed: [AtomicU64; 2],
    /// Connections closed on a PROXY protocol listener for their header, by
    /// [`ProxyHeaderRefusal`].
    proxy_refused: [AtomicU64; 3],
    per_user: Mutex<Option<HashMap<String, [u64; OUTCOMES.len()]>>>,
}

/// Why a connection on a PROXY protocol listener was closed for its header
/// (the `reason` of `authgate_proxy_protocol_refused_total`).
#[derive(Debug, Clone, Copy)]
pub enum ProxyHeaderRefusal {
    /// The peer is not in `proxy_protocol_from`.
    PeerNotAllowed = 0,
    /// The bytes were no valid PROXY header (a connection closed before its
    /// first byte, a health check, is not counted).
    BadHeader = 1,
    /// No whole header within `header_read_timeout`.
    TimedOut = 2,
}

impl Metrics {
    /// Fresh metrics; `per_user` enables the per-user series.
    pub fn new(per_user: bool) -> Self {
        Metrics {
            requests: counters(),
            auth_failures: counters(),
            upstream_errors: counters(),
            upstream_responses: counters(),
            active_tunnels: AtomicI64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            argon2_buckets: counters(),
            argon2_count: AtomicU64::new(0),
            argon2_sum_micros: AtomicU64::new(0),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            tls_failed: counters(),
            proxy_refused: counters(),
            per_user: Mutex::new(per_user.then(HashMap::new)),
        }
    }

    /// Counts a finished request.
    pub fn request(&self, outcome: Outcome, user: Option<&str>) {
        self.requests[outcome as usize].fetch_add(1, Ordering::Relaxed);
        if let Some(user) = user {
            let mut guard = self.per_user.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(map) = guard.as_mut() {
                let key = if map.contains_key(user) || map.len() < MAX_USERS { user } else { OTHER_USERS };
                map.entry(key.to_owned()).or_insert([0; OUTCOMES.len()])[outcome as usize] += 1;
            }
        }
    }

    /// Counts a 407 by reason.
    pub fn auth_failure(&self, reason: AuthFailure) {
        self.auth_failures[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an upstream error by its `Proxy-Status` type.
    pub fn upstream_error(&self, proxy_status: &str) {
        let i = UPSTREAM_TYPES.iter().position(|t| *t == proxy_status).unwrap_or(UPSTREAM_TYPES.len() - 1);
        self.upstream_errors[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an origin response passed to a client.
    pub fn upstream_response(&self, status: u16) {
        let i = match status {
            401 => 5,
            403 => 6,
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        };
        self.upstream_responses[i].fetch_add(1, Ordering::Relaxed);
    }

    /// A tunnel opened (+1) or closed (-1).
    pub fn tunnels(&self, delta: i64) {
        self.active_tunnels.fetch_add(delta, Ordering::Relaxed);
    }

    /// Payload bytes relayed.
    pub fn bytes(&self, up: u64, down: u64) {
        self.bytes_up.fetch_add(up, Ordering::Relaxed);
        self.bytes_down.fetch_add(down, Ordering::Relaxed);
    }

    /// A verified-credential cache lookup.
    pub fn cache(&self, hit: bool) {
        if hit { &self.cache_hits } else { &self.cache_misses }.fetch_add(1, Ordering::Relaxed);
    }

    /// One argon2 verification and how long it took.
    pub fn argon2(&self, took: Duration) {
        let secs = took.as_secs_f64();
        // The count first, and the bucket after it with `Release`, which
        // [`Metrics::render`] reads with `Acquire` before the count: a
        // scrape that sees a verification in a bucket sees it in the count
        // (`+Inf`) too, and never a bucket above `+Inf` (counted the other
        // way round, a scrape between the two could; probe 332). One
        // bucket, the one it falls in, which `render` adds up: with every
        // bucket from there up raised one after another, a scrape between
        // two saw a bucket above the next (probe 347, by reading).
        self.argon2_count.fetch_add(1, Ordering::Relaxed);
        self.argon2_sum_micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        if let Some(i) = BUCKETS.iter().position(|le| secs <= *le) {
            self.argon2_buckets[i].fetch_add(1, Ordering::Release);
        }
    }

    /// A TLS handshake on a TLS listener that failed (`timed_out`: not
    /// over within `header_read_timeout`). Nothing else records one: the
    /// client got a TLS alert or a close, and the log says it only at
    /// debug level, since anyone can send such bytes.
    pub fn tls_handshake_failed(&self, timed_out: bool) {
        self.tls_failed[usize::from(timed_out)].fetch_add(1, Ordering::Relaxed);
    }

    /// A connection on a PROXY protocol listener closed without an answer
    /// for its header. The log says it at most every 10 s (anyone who
    /// reaches the listener can make one per connection), so these count
    /// what it leaves out (probe 207: a balancer sending a broken header was
    /// a line every 10 s, and nothing in the metrics).
    pub fn proxy_header_refused(&self, why: ProxyHeaderRefusal) {
        self.proxy_refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A reload attempt.
    pub fn reload(&self, ok: bool) {
        if ok { &self.reloads_ok } else { &self.reloads_failed }.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition (version 0.0.4), with the gauges `now`
    /// read from the state.
    pub fn render(&self, now: &Gauges) -> String {
        let Gauges { generation, active_connections, pooled, auth, certificates, process } = now;
        let mut o = String::with_capacity(8192);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        family(&mut o, "authgate_requests_total", "counter", "Requests and CONNECTs by how they ended.");
        for (i, l) in OUTCOMES.iter().enumerate() {
            let _ = writeln!(o, "authgate_requests_total{{outcome=\"{l}\"}} {}", get(&self.requests[i]));
        }
        family(&mut o, "authgate_proxy_auth_failures_total", "counter", "407 responses by reason.");
        for (i, l) in AUTH_FAILURES.iter().enumerate() {
            let _ = writeln!(
                o,
                "authgate_proxy_auth_failures_total{{reason=\"{l}\"}} {}",
                get(&self.auth_failures[i])
            );
        }
        family(
            &mut o,
            "authgate_upstream_errors_total",
            "counter",
            "502/504 made by authgate, by Proxy-Status error type.",
        );
        for (i, l) in UPSTREAM_TYPES.iter().enumerate() {
            let _ = writeln!(
                o,
                "authgate_upstream_errors_total{{type=\"{l}\"}} {}",
                get(&self.upstream_errors[i])
            );
        }
        family(
            &mut o,
            "authgate_upstream_responses_total",
            "counter",
            "Origin responses passed to clients by status class (401 and 403 on their own).",
        );
        for (i, l) in CLASSES.iter().enumerate() {
            let _ = writeln!(
                o,
                "authgate_upstream_responses_total{{class=\"{l}\"}} {}",
                get(&self.upstream_responses[i])
            );
        }
        family(&mut o, "authgate_active_connections", "gauge", "Client connections open now.");
        let _ = writeln!(o, "authgate_active_connections {active_connections}");
        family(&mut o, "authgate_active_tunnels", "gauge", "Tunnels (CONNECT and upgrades) open now.");
        let _ = writeln!(o, "authgate_active_tunnels {}", self.active_tunnels.load(Ordering::Relaxed).max(0));
        family(
            &mut o,
            "authgate_upstream_idle_connections",
            "gauge",
            "Keep-alive connections to origins idle in the pool now.",
        );
        let _ = writeln!(o, "authgate_upstream_idle_connections {pooled}");
        family(&mut o, "authgate_bytes_total", "counter", "Payload bytes relayed.");
        let _ = writeln!(o, "authgate_bytes_total{{direction=\"up\"}} {}", get(&self.bytes_up));
        let _ = writeln!(o, "authgate_bytes_total{{direction=\"down\"}} {}", get(&self.bytes_down));
        family(&mut o, "authgate_auth_cache_total", "counter", "Verified-credential cache lookups.");
        let _ = writeln!(o, "authgate_auth_cache_total{{result=\"hit\"}} {}", get(&self.cache_hits));
        let _ = writeln!(o, "authgate_auth_cache_total{{result=\"miss\"}} {}", get(&self.cache_misses));
        family(&mut o, "authgate_auth_verifications_running", "gauge", "Password verifications running now.");
        let _ = writeln!(o, "authgate_auth_verifications_running {}", auth.running);
        family(
            &mut o,
            "authgate_auth_verifications_queued",
            "gauge",
            "Password verifications waiting for a worker now (at most [auth] max_pending).",
        );
        let _ = writeln!(o, "authgate_auth_verifications_queued {}", auth.queued);
        family(
            &mut o,
            "authgate_auth_throttle_waiting",
            "gauge",
            "Logins waiting in their address's line for a throttle attempt now.",
        );
        let _ = writeln!(o, "authgate_auth_throttle_waiting {}", auth.throttle_waiting);
        family(
            &mut o,
            "authgate_tls_handshake_failures_total",
            "counter",
            "TLS handshakes on TLS listeners that failed (an alert sent, or the client left) or timed out.",
        );
        for (i, l) in ["failed", "timed_out"].iter().enumerate() {
            let _ = writeln!(
                o,
                "authgate_tls_handshake_failures_total{{reason=\"{l}\"}} {}",
                get(&self.tls_failed[i])
            );
        }
        family(
            &mut o,
            "authgate_tls_certificate_expiry_timestamp_seconds",
            "gauge",
            "When the chain a TLS listener serves now expires: the earliest notAfter of its leaf and intermediates, in Unix seconds.",
        );
        for (listen, expiry) in certificates {
            let _ = writeln!(
                o,
                "authgate_tls_certificate_expiry_timestamp_seconds{{listen=\"{listen}\"}} {}",
                crate::calendar::unix_seconds(*expiry)
            );
        }
        family(
            &mut o,
            "authgate_proxy_protocol_refused_total",
            "counter",
            "Connections on PROXY protocol listeners closed without an answer for their PROXY header.",
        );
        for (i, l) in ["peer_not_allowed", "bad_header", "timed_out"].iter().enumerate() {
            let _ = writeln!(
                o,
                "authgate_proxy_protocol_refused_total{{reason=\"{l}\"}} {}",
                get(&self.proxy_refused[i])
            );
        }
        family(&mut o, "authgate_argon2_verifications_total", "counter", "Password verifications run.");
        let _ = writeln!(o, "authgate_argon2_verifications_total {}", get(&self.argon2_count));
        family(
            &mut o,
            "authgate_argon2_duration_seconds",
            "histogram",
            "Time of one password verification (queueing excluded).",
        );
        // Cumulative: each bucket holds the verifications that fell in it.
        let mut below = 0;
        for (i, le) in BUCKETS.iter().enumerate() {
            below += self.argon2_buckets[i].load(Ordering::Acquire);
            let _ = writeln!(o, "authgate_argon2_duration_seconds_bucket{{le=\"{le}\"}} {below}");
        }
        let count = get(&self.argon2_count);
        let _ = writeln!(o, "authgate_argon2_duration_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ =
            writeln!(o, "authgate_argon2_duration_seconds_sum {}", get(&self.argon2_sum_micros) as f64 / 1e6);
        let _ = writeln!(o, "authgate_argon2_duration_seconds_count {count}");
        family(&mut o, "authgate_config_reloads_total", "counter", "Reloads of config and users.");
        let _ = writeln!(o, "authgate_config_reloads_total{{result=\"ok\"}} {}", get(&self.reloads_ok));
        let _ =
            writeln!(o, "authgate_config_reloads_total{{result=\"failed\"}} {}", get(&self.reloads_failed));
        family(&mut o, "authgate_config_generation", "gauge", "Generation of the live configuration.");
        let _ = writeln!(o, "authgate_config_generation {generation}");
        render_process(&mut o, process);
        family(&mut o, "authgate_build_info", "gauge", "Always 1; labels describe the binary.");
        let _ = writeln!(o, "authgate_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
        // A copy, taken under the lock and written out after it: every
        // authenticated request takes the lock as it ends, on a worker
        // thread, and a scrape that held it while writing 1,000 users'
        // series stalled them (probe 396: p50 20 ms for a request under
        // 780 scrapes a second, against 0.4 ms for one that takes no lock).
        let per_user: Option<Vec<(String, [u64; OUTCOMES.len()])>> = {
            let guard = self.per_user.lock().unwrap_or_else(|p| p.into_inner());
            guard.as_ref().map(|map| map.iter().map(|(user, counts)| (user.clone(), *counts)).collect())
        };
        if let Some(mut users) = per_user {
            family(&mut o, "authgate_user_requests_total", "counter", "Requests per user (capped).");
            users.sort_by(|a, b| a.0.cmp(&b.0));
            for (user, counts) in users {
                let user = escape_label(&user);
                // Not the outcomes that come before a user is known (a 407,
                // a throttled login): always 0, they were 2,000 series at
                // the cap (probe 208).
                let known = |&(i, _): &(usize, &&str)| {
                    i != Outcome::ProxyAuthRequired as usize && i != Outcome::Throttled as usize
                };
                for (i, l) in OUTCOMES.iter().enumerate().filter(known) {
                    let _ = writeln!(
                        o,
                        "authgate_user_requests_total{{user=\"{user}\",outcome=\"{l}\"}} {}",
                        counts[i]
                    );
                }
            }
        }
        o
    }
}

/// The `# HELP` and `# TYPE` lines of a metric family.
fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The process's figures, those that could be read, as the Prometheus
/// client libraries name them.
fn render_process(o: &mut String, p: &ProcessStats) {
    let mut gauge = |name: &str, kind: &str, help: &str, value: Option<String>| {
        if let Some(v) = value {
            family(o, name, kind, help);
            let _ = writeln!(o, "{name} {v}");
        }
    };
    gauge(
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time used, in seconds.",
        p.cpu_seconds.map(|s| s.to_string()),
    );
    gauge(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        p.resident_bytes.map(|b| b.to_string()),
    );
    gauge(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        p.virtual_bytes.map(|b| b.to_string()),
    );
    gauge("process_open_fds", "gauge", "Open file descriptors.", p.open_fds.map(|n| n.to_string()));
    gauge(
        "process_max_fds",
        "gauge",
        "The soft limit of open file descriptors.",
        p.max_fds.map(|n| n.to_string()),
    );
    gauge(
        "process_start_time_seconds",
        "gauge",
        "When the process started, in seconds since the Unix epoch.",
        p.start_time
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64().to_string()),
    );
}

fn escape_label(s: &str) -> String {
    s.chars()
        .flat_map(|c| match c {
            '\\' => vec!['\\', '\\'],
            '"' => vec!['\\', '"'],
            '\n' => vec!['\\', 'n'],
            c => vec![c],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    /// Each kind of bad answer from an origin has a series of its own type,
    /// none is counted as `other` (probe 233 made them more specific).
    #[test]
    fn every_bad_answer_type_has_its_own_series() {
        use crate::error::BadAnswer::*;
        for bad in
            [Protocol, Terminated, Incomplete, HeadTooLarge, TransferCoding, UpgradeFailed, Tls, TlsAlert(40)]
        {
            let m = Metrics::new(false);
            m.upstream_error(bad.proxy_status());
            let text = m.render(&Gauges::default());
            let series = format!("authgate_upstream_errors_total{{type=\"{}\"}} 1", bad.proxy_status());
            assert!(text.contains(&series), "{bad:?}: {text}");
        }
    }

    #[test]
    fn every_series_exists_from_the_start_and_counts() {
        let m = Metrics::new(false);
        let text = m.render(&Gauges { generation: 1, ..Gauges::default() });
        assert!(text.contains("authgate_requests_total{outcome=\"throttled\"} 0"));
        m.request(Outcome::Denied, Some("alice"));
        m.upstream_response(401);
        m.upstream_error("dns_timeout");
        m.argon2(Duration::from_millis(20));
        m.argon2(Duration::from_millis(300));
        m.argon2(Duration::from_secs(9));
        let when = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let tls =
            [("127.0.0.1:3129".parse().unwrap(), when(2_208_988_800)), ("[::1]:0".parse().unwrap(), when(0))];
        let auth = AuthLoad { running: 1, queued: 2, throttle_waiting: 3 };
        let text = m.render(&Gauges {
            generation: 3,
            active_connections: 2,
            pooled: 4,
            auth,
            certificates: tls.to_vec(),
            process: ProcessStats::default(),
        });
        assert!(text.contains("authgate_requests_total{outcome=\"denied\"} 1"));
        assert!(text.contains("authgate_upstream_responses_total{class=\"401\"} 1"));
        assert!(text.contains("authgate_upstream_responses_total{class=\"4xx\"} 0"));
        assert!(text.contains("authgate_upstream_errors_total{type=\"dns_timeout\"} 1"));
        // Cumulative: each bucket counts every verification at or under it.
        for (le, n) in [("0.01", 0), ("0.025", 1), ("0.25", 1), ("0.5", 2), ("5", 2), ("+Inf", 3)] {
            let line = format!("authgate_argon2_duration_seconds_bucket{{le=\"{le}\"}} {n}");
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(text.contains("authgate_config_generation 3"));
        assert!(text.contains("authgate_active_connections 2"));
        assert!(text.contains("authgate_upstream_idle_connections 4"));
        assert!(text.contains("authgate_auth_verifications_running 1"));
        assert!(text.contains("authgate_auth_verifications_queued 2"));
        assert!(text.contains("authgate_auth_throttle_waiting 3"));
        assert!(!text.contains("alice"), "no per-user series unless enabled");
        let expiry = "authgate_tls_certificate_expiry_timestamp_seconds";
        assert!(text.contains(&format!("{expiry}{{listen=\"127.0.0.1:3129\"}} 2208988800\n")), "{text}");
        assert!(text.contains(&format!("{expiry}{{listen=\"[::1]:0\"}} 0\n")), "{text}");
    }

    /// Every family the exposition has is in the metrics tables of the
    /// README and of deploy/README.md, which operators and the alerts read.
    #[test]
    fn every_family_is_documented_in_both_readmes() {
        let m = Metrics::new(true);
        m.request(Outcome::Forwarded, Some("alice"));
        let tls = [("127.0.0.1:3129".parse().unwrap(), UNIX_EPOCH)];
        let process = crate::telemetry::process::read();
        let text = m.render(&Gauges { certificates: tls.to_vec(), process, ..Gauges::default() });
        let families: Vec<&str> =
            text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
        assert!(families.len() >= 20, "{families:?}");
        for (name, doc) in [
            ("README.md", include_str!("../../README.md")),
            ("deploy/README.md", include_str!("../../deploy/README.md")),
        ] {
            for family in &families {
                let named = format!("`{family}`");
                let row = doc.lines().any(|l| l.starts_with("| `") && l.contains(&named));
                assert!(row, "{family} is not in the metrics table of {name}");
            }
        }
    }

    #[test]
    fn per_user_series_are_capped() {
        let m = Metrics::new(true);
        // A user may be called `_other` (it was the overflow's label).
        m.request(Outcome::Forwarded, Some("_other"));
        for i in 1..(MAX_USERS + 5) {
            m.request(Outcome::Forwarded, Some(&format!("u{i}")));
        }
        let text = m.render(&Gauges { generation: 1, ..Gauges::default() });
        assert!(text.contains("authgate_user_requests_total{user=\":other\",outcome=\"forwarded\"} 5"));
        assert!(text.contains("authgate_user_requests_total{user=\"_other\",outcome=\"forwarded\"} 1"));
        assert_eq!(text.matches("outcome=\"forwarded\"} ").count(), 1 + MAX_USERS + 1);
        // A user's requests have no 407 or throttled series: those come
        // before a user is known.
        assert!(text.contains("authgate_user_requests_total{user=\"u1\",outcome=\"denied\"} 0"), "{text}");
        for outcome in ["proxy_auth_required", "throttled"] {
            assert!(text.contains(&format!("authgate_requests_total{{outcome=\"{outcome}\"}} 0")), "{text}");
            assert!(!text.contains(&format!("user=\"u1\",outcome=\"{outcome}\"")), "{outcome}");
        }
    }
}
