//! The access event and the authentication audit event.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use super::Metrics;

/// Everything the access event of one request or tunnel reports.
#[derive(Debug)]
pub struct AccessRecord {
    /// Shared with the response's `x-request-id` and problem body.
    pub request_id: Arc<str>,
    /// The client's address (from PROXY protocol when enabled).
    pub client: SocketAddr,
    /// The authenticated user, if any.
    pub user: Option<Arc<str>>,
    /// Request method.
    pub method: http::Method,
    /// `host:port` for CONNECT, `scheme://authority/path` otherwise (no query:
    /// query strings often carry tokens), cut to 4,096 bytes (`LOGGED_TARGET_MAX`).
    pub target: String,
    /// The origin address the request went to or the tunnel connected to;
    /// `None` when no origin connection served it (an answer of authgate's,
    /// a failure before one was made).
    pub upstream: Option<SocketAddr>,
    /// Status sent to the client.
    pub status: u16,
    /// Body bytes received from the client (tunnel: client → origin).
    pub bytes_up: Arc<AtomicU64>,
    /// Body bytes sent to the client (tunnel: origin → client).
    pub bytes_down: u64,
    /// When the request arrived.
    pub started: Instant,
    /// Short fixed word: `forwarded`, `answered_here`, how a tunnel ended
    /// (`tunnel_closed`, …), or the error's `code`.
    pub outcome: &'static str,
    /// The rule that decided, if any.
    pub rule: Option<Arc<str>>,
    /// What went wrong with the origin, as the `Proxy-Status` details say
    /// it to the client (`malformed response`, `certificate expired` ...):
    /// the outcome alone did not tell these apart (probe 124).
    pub detail: Option<&'static str>,
    /// Where byte counts go when the record finishes.
    pub metrics: Option<Arc<Metrics>>,
    /// Whether the access event is logged (`[log] access`).
    pub log: bool,
    /// Whether `bytes_down` came from the origin (not a body authgate made).
    pub relayed: bool,
}

impl AccessRecord {
    /// Starts a record for a request that just arrived.
    pub fn new(request_id: Arc<str>, client: SocketAddr, method: http::Method, target: String) -> Self {
        AccessRecord {
            request_id,
            client,
            user: None,
            method,
            target: logged_target(target),
            upstream: None,
            status: 0,
            bytes_up: Arc::new(AtomicU64::new(0)),
            bytes_down: 0,
            started: Instant::now(),
            outcome: "",
            rule: None,
            detail: None,
            metrics: None,
            log: true,
            relayed: false,
        }
    }

    /// Replaces the target as logged (cut as [`AccessRecord::new`] cuts it).
    pub fn set_target(&mut self, target: String) {
        self.target = logged_target(target);
    }

    /// The request is over: counts its bytes and logs the access event.
    pub fn finish(&self) {
        if let Some(m) = &self.metrics {
            let down = if self.relayed { self.bytes_down } else { 0 };
            m.bytes(self.bytes_up.load(Ordering::Relaxed), down);
        }
        if self.log {
            self.emit();
        }
    }

    /// Emits the access event: in the text format straight into the log
    /// buffer (see `line.rs`), otherwise through `tracing`. Either way the
    /// log filter (`[log] level`, `RUST_LOG`) decides whether it is written.
    pub fn emit(&self) {
        if !tracing::enabled!(target: "authgate::access", tracing::Level::INFO) {
            return;
        }
        match super::text_sink() {
            Some(sink) => super::line::write_access(self, SystemTime::now(), |line| sink.append(line)),
            None => self.emit_through_tracing(),
        }
    }

    /// The access event as a `tracing` event.
    pub(super) fn emit_through_tracing(&self) {
        let user: &str = self.user.as_deref().unwrap_or("-");
        let rule: &str = self.rule.as_deref().unwrap_or("-");
        tracing::info!(
            target: "authgate::access",
            request_id = &*self.request_id,
            client = %self.client,
            user,
            method = &*logged_method(&self.method),
            request_target = %self.target,
            upstream = %OrDash(self.upstream),
            status = self.status,
            bytes_up = self.bytes_up.load(Ordering::Relaxed),
            bytes_down = self.bytes_down,
            duration_ms = millis(self.started.elapsed()),
            outcome = self.outcome,
            rule,
            detail = self.detail,
        );
    }
}

/// Milliseconds with microsecond resolution: the nearest `f64` to a whole
/// number of microseconds prints short (`3.865`, not `3.8648749999999996`).
pub(super) fn millis(d: std::time::Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// An authentication failure, for the audit log (target `authgate::audit`).
#[derive(Debug)]
pub struct AuditEvent<'a> {
    /// Shared with the refusal's (407 or 429) `request_id`.
    pub request_id: &'a str,
    /// The client's address.
    pub client: SocketAddr,
    /// The username as sent (logged truncated); never the password.
    pub username: Option<&'a str>,
    /// `malformed`, `unknown_user`, `bad_password`, `disabled`, `expired`, `throttled`
    /// (no credentials at all is not audited).
    pub reason: &'static str,
    /// The request target.
    pub target: &'a str,
}

impl AuditEvent<'_> {
    /// Emits the audit event.
    pub fn emit(&self) {
        // Escaped once, by the log format and the sink (see `sink.rs`):
        // escaped here as well, a name came out of JSON with `\` doubled,
        // and out of the text format with its controls escaped twice.
        let username = self.username.map(truncated);
        tracing::warn!(
            target: "authgate::audit",
            request_id = self.request_id,
            client = %self.client,
            username = username.as_deref().unwrap_or("-"),
            reason = self.reason,
            request_target = self.target,
            "proxy authentication failed"
        );
    }
}

/// An audit event emitted when dropped: at the end of the scope that holds
/// it, or earlier, when the request that holds it is dropped before its
/// answer (its client left), so that it is emitted once either way.
#[derive(Debug)]
pub struct AuditOnDrop<'a>(pub AuditEvent<'a>);

impl AuditOnDrop<'_> {
    /// Drops it without the event: what it was to record did not happen.
    pub fn cancel(self) {
        std::mem::forget(self);
    }
}

impl Drop for AuditOnDrop<'_> {
    fn drop(&mut self) {
        self.0.emit();
    }
}

/// How many bytes of a request target the access and audit lines keep.
/// A target may be nearly as long as `max_header_bytes` (64 KiB): whole, a
/// client without valid credentials made about 120 KB of log (access and
/// audit line) with one 60 KB request, and a line over 16 KiB is split in
/// pieces by Docker's and containerd's log drivers, which breaks JSON lines.
pub const LOGGED_TARGET_MAX: usize = 4096;

/// `target` cut to [`LOGGED_TARGET_MAX`] bytes (at a character boundary),
/// with `…` appended when cut.
fn logged_target(mut target: String) -> String {
    if let Some(end) = head_within(&target, LOGGED_TARGET_MAX).map(str::len) {
        target.truncate(end);
        target.push('…');
    }
    target
}

/// When `s` is longer than `max` bytes, its longest start of at most `max`
/// bytes that ends at a character boundary; `None` when it fits.
fn head_within(s: &str, max: usize) -> Option<&str> {
    if s.len() <= max {
        return None;
    }
    let end = (0..=max).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
    s.get(..end)
}

/// A method as logged: cut to 64 bytes and `…`. hyper takes any token as a
/// method, as long as the head allows: a 30,000-byte method made a
/// 30 KB access line, from a client without credentials (probe 192).
pub(super) fn logged_method(method: &http::Method) -> std::borrow::Cow<'_, str> {
    let m = method.as_str();
    match head_within(m, 64) {
        Some(head) => std::borrow::Cow::Owned(format!("{head}…")),
        None => std::borrow::Cow::Borrowed(m),
    }
}

/// A username cut to 64 characters, so a hostile one cannot flood the log.
fn truncated(name: &str) -> std::borrow::Cow<'_, str> {
    match name.char_indices().nth(64) {
        Some((at, _)) => std::borrow::Cow::Owned(format!("{}…", &name[..at])),
        None => std::borrow::Cow::Borrowed(name),
    }
}

/// A username for a message printed as it is (a CLI error): control and
/// hidden characters (see `sink::hidden`) escaped (and `\\`, so that an
/// escaped CR cannot be mistaken for a name with a backslash in it),
/// truncated to 64 characters, so a
/// hostile name cannot forge lines or flood the output. (Log fields are
/// escaped by the log format and the log sink instead.)
pub fn sanitize_username(name: &str) -> String {
    let head = match name.char_indices().nth(64) {
        Some((end, _)) => &name[..end],
        None => name,
    };
    let mut out =
        crate::config::escaped(head, |c| c.is_control() || c == '\\' || super::sink::hidden(c)).into_owned();
    if head.len() < name.len() {
        out.push('…');
    }
    out
}

/// An address, or `-` for none, as the access line shows the upstream.
struct OrDash(Option<SocketAddr>);

impl std::fmt::Display for OrDash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("-"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_log_in_short_milliseconds() {
        assert_eq!(format!("{:?}", millis(Duration::from_nanos(3_864_875))), "3.864");
        assert_eq!(format!("{:?}", millis(Duration::from_micros(29_112_130))), "29112.13");
        assert_eq!(format!("{:?}", millis(Duration::from_micros(1))), "0.001");
        assert_eq!(format!("{:?}", millis(Duration::ZERO)), "0.0");
    }

    #[test]
    fn a_sanitized_control_character_cannot_be_taken_for_a_backslash() {
        assert_eq!(sanitize_username("ev\ril"), "ev\\ril");
        assert_eq!(sanitize_username("ev\\ril"), "ev\\\\ril");
        assert_ne!(sanitize_username("a\nb"), sanitize_username("a\\nb"));
        assert_eq!(sanitize_username("h\u{3164}f\u{2028}"), "h\\u{3164}f\\u{2028}");
        let long = "x".repeat(70);
        assert_eq!(sanitize_username(&long), format!("{}…", "x".repeat(64)));
    }

    #[test]
    fn logged_targets_are_cut_at_a_character_boundary() {
        let max = LOGGED_TARGET_MAX;
        assert_eq!(logged_target("a".repeat(max)), "a".repeat(max));
        assert_eq!(logged_target("a".repeat(max + 1)), format!("{}…", "a".repeat(max)));
        // `é` is two bytes: the one that would straddle the limit goes whole.
        let odd = format!("a{}", "é".repeat(max / 2));
        assert_eq!(logged_target(odd), format!("a{}…", "é".repeat(max / 2 - 1)));
    }

    #[test]
    fn logged_methods_are_cut_to_64_bytes() {
        let long = http::Method::from_bytes("M".repeat(100).as_bytes()).unwrap();
        assert_eq!(logged_method(&long), format!("{}…", "M".repeat(64)));
        let just = http::Method::from_bytes("M".repeat(64).as_bytes()).unwrap();
        assert_eq!(logged_method(&just), "M".repeat(64));
        assert_eq!(logged_method(&http::Method::GET), "GET");
    }

    #[test]
    fn audit_usernames_are_cut_to_64_characters_and_otherwise_kept() {
        assert_eq!(truncated(&"é".repeat(70)), format!("{}…", "é".repeat(64)));
        assert_eq!(truncated(&"é".repeat(64)), "é".repeat(64));
        assert_eq!(truncated("a\r\\b"), "a\r\\b");
    }
}
