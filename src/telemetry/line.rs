//! The access line of the text log format, formatted straight into the log
//! buffer.
//!
//! There is one access line per request, so it is the one log line on the
//! hot path. `tracing-subscriber`'s generic formatter visits each field
//! through a `dyn` value and computes the calendar date anew for every line;
//! in scenario a of the shared benchmark the access event took 5.8 % of the
//! proxy's CPU samples (perf). Here the line is written field by field into
//! a reused per-thread buffer and the date part of the timestamp is computed
//! once a second: 3.0 % of the samples, and a +6 % req/s in a (same run,
//! 6 reps).
//!
//! The bytes are the same as `tracing-subscriber` writes for the event (a
//! test compares the two), except for a request target with bytes that
//! need escaping, which is quoted here (see [`push_target`]); JSON lines
//! still go through `tracing-subscriber`.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use super::AccessRecord;

/// Per-thread scratch space: the line being built and the cached date.
struct Scratch {
    line: String,
    /// The Unix second `date` is for (`u64::MAX`: none yet).
    second: u64,
    /// `YYYY-MM-DDTHH:MM:SS` of `second`.
    date: String,
}

impl Scratch {
    const NEW: Scratch = Scratch { line: String::new(), second: u64::MAX, date: String::new() };
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const { RefCell::new(Scratch::NEW) };
}

/// Formats the access line of `rec`, stamped `now`, and hands it to `out`.
pub fn write_access(rec: &AccessRecord, now: SystemTime, out: impl FnOnce(&[u8])) {
    SCRATCH.with(|cell| {
        // Re-entered only if `out` logged, which it does not; fall back to a
        // fresh buffer rather than panic.
        let mut fresh;
        let mut guard = cell.try_borrow_mut();
        let s: &mut Scratch = match guard.as_deref_mut() {
            Ok(s) => s,
            Err(_) => {
                fresh = Scratch::NEW;
                &mut fresh
            }
        };
        s.line.clear();
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        if s.second != since.as_secs() {
            s.second = since.as_secs();
            s.date.clear();
            push_date(&mut s.date, s.second);
        }
        let user: &str = rec.user.as_deref().unwrap_or("-");
        let rule: &str = rec.rule.as_deref().unwrap_or("-");
        // Field for field what `tracing-subscriber`'s default visitor writes:
        // strings quoted and escaped (`{:?}`), `%` fields as Display.
        let l = &mut s.line;
        l.push_str(&s.date);
        l.push('.');
        push_padded(l, since.subsec_micros(), 6);
        l.push_str("Z  INFO authgate::access: request_id=");
        push_quoted(l, &rec.request_id);
        l.push_str(" client=");
        push_addr(l, rec.client);
        l.push_str(" user=");
        push_quoted(l, user);
        l.push_str(" method=");
        push_quoted(l, &super::access::logged_method(&rec.method));
        l.push_str(" request_target=");
        push_target(l, &rec.target);
        l.push_str(" upstream=");
        match rec.upstream {
            Some(addr) => push_addr(l, addr),
            None => l.push('-'),
        }
        l.push_str(" status=");
        push_int(l, u64::from(rec.status));
        l.push_str(" bytes_up=");
        push_int(l, rec.bytes_up.load(Ordering::Relaxed));
        l.push_str(" bytes_down=");
        push_int(l, rec.bytes_down);
        l.push_str(" duration_ms=");
        push_millis(l, rec.started.elapsed());
        l.push_str(" outcome=");
        push_quoted(l, rec.outcome);
        l.push_str(" rule=");
        push_quoted(l, rule);
        if let Some(detail) = rec.detail {
            l.push_str(" detail=");
            push_quoted(l, detail);
        }
        l.push('\n');
        out(s.line.as_bytes());
    });
}

// The helpers below write what `{:?}` and `{}` would, without
// `core::fmt`'s machinery in the common cases: under callgrind, formatting
// the client address alone took 2.5k instructions of the 67k a CONNECT
// tunnel costs in user space, the five quoted strings 1.4k more.

/// Appends `s` as `{:?}` writes it: printable ASCII without `"` or `\` needs
/// no escaping; anything else goes through `Debug`.
fn push_quoted(out: &mut String, s: &str) {
    if s.bytes().all(|b| matches!(b, b' '..=b'~') && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        let _ = write!(out, "{s:?}");
    }
}

/// Appends the request target bare, as `{}` writes it, when it is printable
/// ASCII without `"` or `\\` (what well-behaved clients send); otherwise
/// quoted and escaped as `{:?}` writes it, as the user field is. hyper
/// accepts a target with `"`, `\\` and UTF-8, and written bare, those forged
/// fields (`a"b=c`) or reached a terminal as controls (C1 `CSI`, `NEL`, line
/// separators). The JSON format escapes them as JSON.
fn push_target(out: &mut String, s: &str) {
    if s.bytes().all(|b| matches!(b, b'!'..=b'~') && b != b'"' && b != b'\\') {
        out.push_str(s);
    } else {
        let _ = write!(out, "{s:?}");
    }
}

/// Appends `addr` as `{}` writes it (IPv6 through `Display`).
fn push_addr(out: &mut String, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(a) => {
            for (i, octet) in a.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_int(out, u64::from(octet));
            }
            out.push(':');
            push_int(out, u64::from(a.port()));
        }
        SocketAddr::V6(_) => {
            let _ = write!(out, "{addr}");
        }
    }
}

/// Appends `n` in decimal, as `{}` writes it (itoa: two digits a step, no
/// UTF-8 check; the access line writes about ten numbers).
fn push_int(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Appends `n` with at least `width` digits, as `{:0width$}` writes it.
fn push_padded(out: &mut String, n: u32, width: usize) {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(n);
    for _ in digits.len()..width {
        out.push('0');
    }
    out.push_str(digits);
}

/// Appends `d` in milliseconds as `{:?}` writes [`super::access::millis`]:
/// the nearest `f64` to a whole number of microseconds prints as that
/// number's exact decimal (`3.865`, `5.0`). Below 2^33 µs (2.4 hours) no
/// shorter decimal lies within half an ulp, so the digits can be written
/// directly; longer durations go through `Debug`.
fn push_millis(out: &mut String, d: std::time::Duration) {
    let micros = match u64::try_from(d.as_micros()) {
        Ok(m) if m < 1 << 33 => m,
        _ => {
            let _ = write!(out, "{:?}", super::access::millis(d));
            return;
        }
    };
    push_int(out, micros / 1000);
    out.push('.');
    let mut frac = micros % 1000;
    if frac == 0 {
        out.push('0');
        return;
    }
    let mut width = 3;
    while frac % 10 == 0 {
        frac /= 10;
        width -= 1;
    }
    push_padded(out, frac as u32, width);
}

/// Appends `YYYY-MM-DDTHH:MM:SS` (UTC) for a Unix time in seconds.
fn push_date(out: &mut String, unix: u64) {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let (y, m, d) = crate::calendar::civil_from_days(days);
    let _ = write!(out, "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Captured;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn dates_are_utc_calendar_dates() {
        let date = |unix: u64| {
            let mut s = String::new();
            push_date(&mut s, unix);
            s
        };
        assert_eq!(date(0), "1970-01-01T00:00:00");
        assert_eq!(date(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(date(951_868_799), "2000-02-29T23:59:59");
        assert_eq!(date(951_868_800), "2000-03-01T00:00:00");
        assert_eq!(date(1_796_000_000), "2026-11-30T00:53:20");
        assert_eq!(date(4_107_542_400), "2100-03-01T00:00:00");
        assert_eq!(date(253_402_300_799), "9999-12-31T23:59:59");
    }

    fn record(user: Option<&str>, target: &str) -> AccessRecord {
        record_from("[2001:db8::1]:40000", user, target)
    }

    fn record_from(client: &str, user: Option<&str>, target: &str) -> AccessRecord {
        let client: SocketAddr = client.parse().unwrap();
        let mut rec =
            AccessRecord::new("0123456789abcdef".into(), client, http::Method::CONNECT, target.into());
        rec.user = user.map(Arc::from);
        rec.status = 200;
        rec.bytes_down = 1_234_567;
        rec.bytes_up.store(89, Ordering::Relaxed);
        rec.outcome = "tunnel_closed";
        rec.rule = Some("staff \"quoted\"".into());
        rec
    }

    fn with_upstream(mut rec: AccessRecord, upstream: &str) -> AccessRecord {
        rec.upstream = Some(upstream.parse().unwrap());
        rec
    }

    fn with_detail(mut rec: AccessRecord, detail: &'static str) -> AccessRecord {
        rec.detail = Some(detail);
        rec
    }

    /// Everything after the timestamp, which the two ways take at
    /// different instants.
    fn after_stamp(line: &str) -> &str {
        line.split_once(' ').map_or("", |(_, rest)| rest)
    }

    /// The `duration_ms` value differs between two calls too.
    fn without_duration(line: &str) -> String {
        line.split(' ').filter(|f| !f.starts_with("duration_ms=")).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn the_line_is_what_tracing_subscriber_writes() {
        for rec in [
            record(Some("ällice\u{7}"), "example.com:443"),
            record(None, "http://[::1]:8080/a%20b"),
            record_from("127.0.0.1:40000", Some("bob"), "10.0.0.1:443"),
            with_upstream(record(None, "example.com:443"), "93.184.215.14:443"),
            with_upstream(
                record(Some("bob"), "http://example.com/"),
                "[2606:2800:21f:cb07:6820:80da:af6b:8b2c]:80",
            ),
            with_detail(record(Some("bob"), "http://example.com/"), "malformed response"),
        ] {
            let captured = Captured::default();
            let writer = captured.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .with_target(true)
                .finish();
            tracing::subscriber::with_default(subscriber, || rec.emit_through_tracing());
            let theirs = captured.text();
            let mut ours = Vec::new();
            write_access(&rec, SystemTime::now(), |b| ours.extend_from_slice(b));
            let ours = String::from_utf8(ours).unwrap();
            assert_eq!(without_duration(after_stamp(&ours)), without_duration(after_stamp(&theirs)));
            assert!(ours.ends_with('\n') && ours.lines().count() == 1, "{ours:?}");
            let stamp = ours.split(' ').next().unwrap();
            assert_eq!(stamp.len(), "2026-11-29T16:18:44.259082Z".len(), "{stamp}");
        }
    }

    #[test]
    fn a_target_that_could_forge_fields_or_terminal_controls_is_quoted_and_escaped() {
        let line = |target: &str| {
            let mut ours = Vec::new();
            write_access(&record(Some("bob"), target), SystemTime::now(), |b| ours.extend_from_slice(b));
            String::from_utf8(ours).unwrap()
        };
        assert!(line("http://h/a%20b?x=1").contains(" request_target=http://h/a%20b?x=1 upstream=- status="));
        for (target, written) in [
            ("http://h/a\"b=c\\d", r#"request_target="http://h/a\"b=c\\d" upstream=- status="#),
            ("http://h/nel\u{85}fake", r#"request_target="http://h/nel\u{85}fake" upstream=- status="#),
            ("http://h/csi\u{9b}31m", r#"request_target="http://h/csi\u{9b}31m" upstream=- status="#),
            ("http://h/ls\u{2028}x", r#"request_target="http://h/ls\u{2028}x" upstream=- status="#),
            ("http://h/é\u{202e}", r#"request_target="http://h/é\u{202e}" upstream=- status="#),
        ] {
            let l = line(target);
            assert!(l.contains(written), "{l}");
            assert!(l.is_ascii() || target.contains('é'), "{l}");
        }
    }

    #[test]
    fn fast_paths_write_what_core_fmt_writes() {
        for s in [
            "",
            "bob",
            "a b~",
            "say \"hi\"",
            "back\\slash",
            "tab\t",
            "\u{7f}",
            "ällice",
            "e\u{301}",
            "\u{200b}",
        ] {
            let mut ours = String::new();
            push_quoted(&mut ours, s);
            assert_eq!(ours, format!("{s:?}"));
        }
        for a in ["0.0.0.0:0", "127.0.0.1:40000", "255.255.255.255:65535", "10.9.100.1:8", "[::1]:443"] {
            let addr: SocketAddr = a.parse().unwrap();
            let mut ours = String::new();
            push_addr(&mut ours, addr);
            assert_eq!(ours, addr.to_string());
        }
        for n in [0, 9, 10, 99, 100, 65_535, 1_234_567, u64::MAX] {
            let mut ours = String::new();
            push_int(&mut ours, n);
            assert_eq!(ours, n.to_string());
        }
        for n in [0, 7, 42, 999_999] {
            let mut ours = String::new();
            push_padded(&mut ours, n, 6);
            assert_eq!(ours, format!("{n:06}"));
        }
        let long = (1u64 << 33) - 1;
        let samples = (0..200_000).chain((0..long).step_by(99_991)).chain(long - 2000..long + 2000);
        for micros in samples.chain([u64::MAX]) {
            let d = Duration::from_micros(micros);
            let mut ours = String::new();
            push_millis(&mut ours, d);
            assert_eq!(ours, format!("{:?}", crate::telemetry::access::millis(d)), "{micros} µs");
        }
    }

    #[test]
    fn microseconds_and_seconds_of_the_stamp() {
        let rec = record(Some("bob"), "example.com:443");
        let at = UNIX_EPOCH + Duration::from_micros(1_796_000_000_000_042);
        let mut ours = Vec::new();
        write_access(&rec, at, |b| ours.extend_from_slice(b));
        assert!(ours.starts_with(b"2026-11-30T00:53:20.000042Z  INFO authgate::access: request_id="));
    }
}
