//! `authgate.toml` → validated settings, collecting every problem.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::error::{Collector, Problem, quoted};
use super::raw::{RawConfig, RawProxyProtocol};
use super::{Auth, Limits, Log, Server};
use crate::policy::Policy;
use crate::policy::egress::Egress;
use crate::telemetry::LogFormat;

/// Validated settings of the main config file.
pub struct Settings {
    pub server: Server,
    pub auth: Auth,
    pub log: Log,
    pub limits: Limits,
    pub egress: Egress,
    pub dns_servers: Vec<SocketAddr>,
    pub policy: Policy,
    pub watch: bool,
    pub upstream_ca: Option<std::path::PathBuf>,
    pub upstream_tls: std::sync::Arc<rustls::ClientConfig>,
    /// Files named that could not be used (a TLS certificate or key, a CA
    /// file): a refused reload watches them, as it does a users file.
    pub unusable: Vec<std::path::PathBuf>,
    pub admin: Option<SocketAddr>,
    pub metrics_per_user: bool,
    /// Where the config names its users file (line, column), when it does.
    pub users_file_at: Option<(usize, usize)>,
}

fn defaults(path: &Path) -> Settings {
    Settings {
        server: Server {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 3128))],
            realm: "authgate".into(),
            via: true,
            proxy_protocol: Vec::new(),
            proxy_protocol_from: Vec::new(),
            worker_threads: 0,
            tls: Vec::new(),
        },
        auth: Auth {
            users_file: path.parent().unwrap_or(Path::new(".")).join("users.toml"),
            cache_ttl: Duration::from_secs(300),
            max_pending: 256,
            verify_threads: 0,
            argon2: crate::auth::password::default_params(),
            throttle: crate::auth::throttle::Settings::default(),
        },
        log: Log { level: "info".into(), format: LogFormat::Text, access: true },
        limits: Limits::default(),
        egress: Egress::default(),
        dns_servers: Vec::new(),
        policy: Policy::default(),
        watch: true,
        upstream_ca: None,
        upstream_tls: crate::proxy::upstream_tls::trusting_nothing(),
        unusable: Vec::new(),
        admin: None,
        metrics_per_user: false,
        users_file_at: None,
    }
}

/// The longest duration any setting accepts. Timers are deadlines
/// (`Instant` + duration), and a duration such as `"500000000000y"` made
/// that sum overflow: a panic on every connection or login.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses a duration such as `5m`, `30s`, `1h 30m`, `250ms`; at most
/// [`MAX_DURATION`].
pub fn duration(c: &mut Collector<'_>, v: &Spanned<String>, what: &str) -> Option<Duration> {
    duration_within(c, v, what, (MAX_DURATION, "365 days"))
}

/// [`duration`] with a bound of its own (`max`, and how the message says
/// it): a setting whose bound is below 365 days was told "at most 365
/// days" first, for `"1y"`, and then its own bound (probe 133).
fn duration_within(
    c: &mut Collector<'_>,
    v: &Spanned<String>,
    what: &str,
    (max, said): (Duration, &str),
) -> Option<Duration> {
    let text = v.get_ref();
    // A problem with the value quoted: `what: bad duration `text`: why`.
    let mut bad = |why: &str| {
        c.at(v.span(), format!("{what}: bad duration {}{why}", quoted(text)));
        None
    };
    // humantime reads a capital `M` as months and refuses every other
    // capital unit: `"5M"` meant for minutes was a `cache_ttl` of five
    // months, a throttle `window` of `"1M"` a lockout of ten days, both
    // without a word (probe 160). `month` and `months` are written out.
    if text.split(|ch: char| !ch.is_ascii_alphabetic()).any(|unit| unit == "M") {
        return bad(": `M` is months; write `m` for minutes (\"5m\"), or `months`");
    }
    // humantime also reads digits across spaces as one number: `"1 0s"`
    // was 10 s, and a typo such as `"1 30m"` (for `"1h 30m"`) 130 minutes,
    // without a word (probe 228). Spaces go between a unit and a number.
    if split_number(text) {
        return bad(": a space inside a number; write a unit after each number (\"1h 30m\")");
    }
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d > max => {
            // humantime counts a year, `1y`, and twelve months as 365.25
            // days: the bare message read as wrong for them (probe 130).
            let message = if max != MAX_DURATION {
                format!("{what}: must be at most {said}")
            } else if text
                .split(|ch: char| !ch.is_ascii_alphabetic())
                .any(|unit| matches!(unit, "y" | "yr" | "yrs" | "year" | "years" | "M" | "month" | "months"))
            {
                format!("{what}: at most {said} (a year counts 365.25 days, a month 30.44: write `365d`)")
            } else {
                format!("{what}: at most {said}")
            };
            c.at(v.span(), message);
            None
        }
        Ok(d) => Some(d),
        // humantime's own words, "number is too large", read as wrong for
        // `"0.0001h"` (probe 228): it works out a fraction in whole
        // nanoseconds, of `h`, `d`, `w`, months and years in whole seconds,
        // and of `ns` not at all. Told so when the value without its
        // fractions reads (not for a number too large indeed; probe 229).
        Err(humantime::DurationError::NumberOverflow)
            if text.contains('.') && humantime::parse_duration(&without_fractions(text)).is_ok() =>
        {
            // The same length said in units humantime reads, worked out from
            // the value: a fixed example ("360ms", right for `"0.0001h"`
            // only) set `"0.001h"` ten times too short (probe 300).
            let instead = match exact_length(text) {
                Exact::Nanos(ns) => {
                    format!("; write \"{}\"", humantime::format_duration(Duration::from_nanos(ns)))
                }
                Exact::NotWhole => "; this one comes to part of a nanosecond".to_owned(),
                Exact::Long => "; and at most 365 days".to_owned(),
                Exact::Unread => String::new(),
            };
            bad(&format!(
                ": a fraction must come to whole nanoseconds, and to whole seconds for `h`, `d`, `w`, months and years (`ns` takes none){instead}"
            ))
        }
        // A number without a unit: humantime's example ("for example 0sec
        // or 0ms") dropped the value's fraction, and `0sec` is refused by
        // most settings (probe 300).
        Err(humantime::DurationError::UnknownUnit { unit, .. }) if unit.is_empty() => {
            let number = text.trim();
            bad(&format!(": a unit is needed (s, ms, m, h, d ...): write e.g. \"{number}s\""))
        }
        Err(e) => bad(&format!(" ({e}); use e.g. \"30s\", \"5m\", \"1h\"")),
    }
}

/// The length of a duration written with fractions (`"0.001h"`), worked
/// out exactly, each unit as long as humantime reads `1` of it (a month is
/// its 30.44 days: a table of units of its own had 30.4375, and missed
/// spellings such as `hrs`; probe 305).
fn exact_length(text: &str) -> Exact {
    let mut total: u128 = 0;
    let mut rest = text.trim();
    while !rest.is_empty() {
        let number_end = rest.find(|ch: char| !(ch.is_ascii_digit() || ch == '.')).unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_end);
        // (A space may stand between a number and its unit: `"30 s"`.)
        let after = after.trim_start();
        let unit_end = after.find(|ch: char| !ch.is_alphabetic()).unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let Ok(per) = humantime::parse_duration(&format!("1{unit}")) else { return Exact::Unread };
        let (whole, fraction) = match number.split_once('.') {
            // humantime reads neither `.5` nor `5.` nor `1.5.5`.
            Some((w, f)) if w.is_empty() || f.is_empty() || f.contains('.') => return Exact::Unread,
            Some(parts) => parts,
            None if number.is_empty() => return Exact::Unread,
            None => (number, ""),
        };
        let ns = match part_nanos(whole, fraction, per.as_nanos()) {
            Some(Ok(ns)) => ns,
            Some(Err(why)) => return why,
            None => return Exact::Unread,
        };
        let Some(sum) = total.checked_add(ns) else { return Exact::Long };
        total = sum;
        rest = after.trim_start();
    }
    match u64::try_from(total) {
        Ok(ns) if Duration::from_nanos(ns) <= MAX_DURATION => Exact::Nanos(ns),
        _ => Exact::Long,
    }
}

/// `whole.fraction` units of `per` nanoseconds, in nanoseconds (digits
/// only): `Err(Long)` when the whole part alone is too long, `Err(NotWhole)`
/// when the fraction comes to part of a nanosecond; `None` when a fraction
/// of more than 38 digits might still come to whole ones (not worked out).
/// The fraction is `f / 10^k` (its zeros at the end left out), and `f ×
/// per` must be a multiple of `10^k`; worked out without overflow: a long
/// fraction made the product overflow, which read as too long (probe 306).
fn part_nanos(whole: &str, fraction: &str, per: u128) -> Option<Result<u128, Exact>> {
    let whole = match whole.trim_start_matches('0') {
        "" => 0,
        digits => match digits.parse::<u128>() {
            Ok(n) => n,
            Err(_) => return Some(Err(Exact::Long)),
        },
    };
    let Some(whole_ns) = whole.checked_mul(per) else { return Some(Err(Exact::Long)) };
    let fraction = fraction.trim_end_matches('0');
    if fraction.is_empty() {
        return Some(Ok(whole_ns));
    }
    // A fraction `f / 10^k` that does not end in 0 is never a multiple of
    // both 2 and 5; so `f × per` is a multiple of `10^k` only if `per` is of
    // `2^k` or of `5^k`.
    let k = fraction.len();
    let (twos, fives) = (per.trailing_zeros() as usize, power_of_five(per));
    if k > twos.max(fives) {
        return Some(Err(Exact::NotWhole));
    }
    let scale = 10u128.checked_pow(u32::try_from(k).ok()?)?;
    let f: u128 = fraction.parse().ok()?;
    let g = gcd(per, scale);
    if !f.is_multiple_of(scale / g) {
        return Some(Err(Exact::NotWhole));
    }
    // (Less than `per`: no overflow.)
    let fraction_ns = f / (scale / g) * (per / g);
    Some(whole_ns.checked_add(fraction_ns).ok_or(Exact::Long))
}

/// The power of 5 in `n` (0 for 0).
fn power_of_five(mut n: u128) -> usize {
    let mut p = 0;
    while n != 0 && n.is_multiple_of(5) {
        n /= 5;
        p += 1;
    }
    p
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// What [`exact_length`] made of a duration.
enum Exact {
    /// This many nanoseconds, at most [`MAX_DURATION`].
    Nanos(u64),
    /// No whole number of nanoseconds.
    NotWhole,
    /// Longer than [`MAX_DURATION`].
    Long,
    /// Not read (a unit humantime does not know, a number too long).
    Unread,
}

/// `text` with every decimal point and the digits after it left out
/// (`"0.5h 1.25m"` is `"0h 1m"`).
fn without_fractions(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_fraction = false;
    for ch in text.trim().chars() {
        if ch == '.' {
            in_fraction = true;
        } else if !(in_fraction && ch.is_ascii_digit()) {
            in_fraction = false;
            out.push(ch);
        }
    }
    out
}

/// Whether whitespace stands between two parts of a number (digits or a
/// decimal point) in a duration: `"1 0s"`, `"1. 5s"`.
fn split_number(text: &str) -> bool {
    let numeric = |ch: char| ch.is_ascii_digit() || ch == '.';
    let mut last = None;
    let mut in_space = false;
    for ch in text.trim().chars() {
        if ch.is_whitespace() {
            in_space = true;
            continue;
        }
        if in_space && last.is_some_and(numeric) && numeric(ch) {
            return true;
        }
        in_space = false;
        last = Some(ch);
    }
    false
}

/// Whether an unknown key of the config file may be quoted in its error:
/// it has the shape of a setting's name, as a typo of one has (ASCII
/// letters, digits, `_` and `-`, at most 64 characters). A hash or a
/// passphrase has not.
fn setting_shaped(key: &str) -> bool {
    (1..=64).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The dotted name of the setting whose value is at `at` in `source`
/// (`server.via`, `server.tls.cert` in an array of tables), if it is a
/// setting's name: serde matched the key to a field before it read the
/// value's type. A table where a value belongs (`max_connections.x = 1`,
/// `[limits.idle_timeout]`) is the setting too, by its header or keys.
/// Each name comes with whether it is an array of tables.
fn setting_at(source: &str, at: usize) -> Option<Vec<(String, bool)>> {
    fn find(table: &dyn toml_edit::TableLike, at: usize, path: &mut Vec<(String, bool)>) -> bool {
        // (No setting is deeper than three; a hostile file's tables may
        // nest thousands deep.)
        if path.len() == 4 {
            return false;
        }
        for (key, item) in table.iter() {
            path.push((key.to_owned(), item.is_array_of_tables()));
            // (The first key of `watch.x = 1` is the table's own.)
            let named_here =
                || table.get_key_value(key).and_then(|(k, _)| k.span()).is_some_and(|s| s.contains(&at));
            let found = match item {
                toml_edit::Item::Table(t) => {
                    find(t, at, path) || named_here() || super::toml_terms::item_holds(item, at, 2)
                }
                toml_edit::Item::ArrayOfTables(tables) => tables.iter().any(|t| find(t, at, path)),
                toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => {
                    find(t, at, path) || t.span().is_some_and(|s| s.contains(&at))
                }
                toml_edit::Item::Value(v) => v.span().is_some_and(|s| s.contains(&at)),
                toml_edit::Item::None => false,
            };
            if found {
                return true;
            }
            path.pop();
        }
        false
    }
    let doc = toml_edit::ImDocument::parse(source).ok()?;
    let mut path = Vec::new();
    find(doc.as_table(), at, &mut path);
    (!path.is_empty() && path.iter().all(|(k, _)| setting_shaped(k))).then_some(path)
}

/// The table whose header is at `at` in `source` (where a missing key is
/// placed), named as other problems name it: ``rule `web` `` for a
/// `[[rules]]` of a valid name, else its dotted path (`server.tls`).
fn table_at(source: &str, at: usize) -> Option<String> {
    fn find(table: &toml_edit::Table, at: usize, path: &mut Vec<String>) -> Option<String> {
        // (No table with a required key is deeper than two.)
        if path.len() == 3 {
            return None;
        }
        for (key, item) in table.iter() {
            path.push(key.to_owned());
            // (A key not shaped as a setting's name is not shown.)
            let here =
                |t: &toml_edit::Table| t.span().is_some_and(|s| s.contains(&at)) && setting_shaped(key);
            let found = match item {
                toml_edit::Item::Table(t) if here(t) => Some(path.join(".")),
                toml_edit::Item::Table(t) => find(t, at, path),
                toml_edit::Item::ArrayOfTables(tables) => tables.iter().find_map(|t| {
                    if !here(t) {
                        return find(t, at, path);
                    }
                    let name = t
                        .get("name")
                        .and_then(toml_edit::Item::as_str)
                        .filter(|n| super::rules::valid_name(n));
                    Some(match name {
                        Some(name) if path.len() == 1 && key == "rules" => format!("rule `{name}`"),
                        _ => path.join("."),
                    })
                }),
                _ => None,
            };
            if found.is_some() {
                return found;
            }
            path.pop();
        }
        None
    }
    let doc = toml_edit::ImDocument::parse(source).ok()?;
    find(doc.as_table(), at, &mut Vec::new())
}

/// What the setting at `path` ([`setting_at`]'s) expects, in TOML's words
/// (`an integer`), as the reader says it of an empty inline table there:
/// of a table made by a header or dotted keys, it tells a setting read with
/// its place the wrong way (`max_connections.x = 1` "expected a string",
/// where an integer belongs; probe 272).
fn expected_of(path: &[(String, bool)]) -> Option<String> {
    let (leaf, tables) = path.split_last()?;
    let names: Vec<&str> = tables.iter().map(|(k, _)| k.as_str()).collect();
    let header = match tables.last() {
        None => String::new(),
        Some((_, true)) => format!("[[{}]]\n", names.join(".")),
        Some((_, false)) => format!("[{}]\n", names.join(".")),
    };
    let text = format!("{header}{} = {{}}\n", leaf.0);
    let e = toml::from_str::<RawConfig>(&text).err()?;
    let mut c = Collector::new(Path::new(""), &text);
    c.toml(&e);
    let message = c.problems.first()?.message.clone();
    message.strip_prefix("invalid type: an inline table, expected ").map(str::to_owned)
}

/// Validates `source` (the main config at `path`); returns the settings with
/// defaults where a value was missing or bad, and every problem found.
/// An unknown key is quoted only if it has the shape of a setting's name
/// ([`setting_shaped`]): a password or hash pasted where a key belongs
/// (`"$argon2id$…" = 1`) is not echoed, and a reload logs the message.
///
/// # Errors
/// The one problem that stopped parsing (TOML syntax, an unknown key, a
/// value of the wrong type): then no setting is known, not even which users
/// file to read.
pub fn config(path: &Path, source: &str) -> Result<(Settings, Vec<Problem>), Vec<Problem>> {
    let mut c = Collector::new(path, source);
    let mut s = defaults(path);
    if c.too_heavy(false) {
        return Err(c.problems);
    }
    let raw: RawConfig = match toml::from_str(source) {
        Ok(r) => r,
        Err(e) => {
            c.toml(&e);
            // A value of the wrong type: whose (it was "invalid type: a
            // string, expected a boolean", the setting unnamed).
            let typed = c.problems.iter().any(|p| p.message.starts_with("invalid type"));
            let path = e.span().filter(|_| typed).and_then(|at| setting_at(source, at.start));
            // A key missing: from which table (it was "missing field
            // `action`" at a `[[rules]]` header, neither named; probe 272).
            let missing = c.problems.iter().any(|p| p.message.starts_with("missing field"));
            let table = e.span().filter(|_| missing).and_then(|at| table_at(source, at.start));
            let setting =
                path.as_ref().map(|p| p.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join("."));
            for p in &mut c.problems {
                p.message = super::users::without_keys(&p.message, None, None, setting_shaped);
                if let Some(table) = table.as_ref().filter(|_| p.message.starts_with("missing field")) {
                    p.message = format!("{table}: {}", p.message);
                }
                if let Some(found) = p.message.strip_prefix("invalid type: a table, expected ")
                    && let Some(expected) = path.as_deref().and_then(expected_of)
                    && expected != found
                {
                    p.message = format!("invalid type: a table, expected {expected}");
                }
                // (Not where the message names it: "expected a [log] table".)
                if let Some(setting) = setting.as_ref().filter(|s| {
                    p.message.starts_with("invalid type") && !p.message.contains(&format!("[{s}]"))
                }) {
                    p.message = format!("{setting}: {}", p.message);
                }
            }
            return Err(c.problems);
        }
    };

    if let Some(listen) = &raw.server.listen {
        s.server.listen.clear();
        for (i, item) in listen.get_ref().iter().enumerate() {
            // Each is checked against the others: 300,000 took `check` 30 s
            // (probe 100).
            if i == MAX_LISTENERS {
                c.at(item.span(), format!("server.listen: more than {MAX_LISTENERS} addresses"));
                break;
            }
            match item.get_ref().trim().parse::<SocketAddr>() {
                Ok(a) => {
                    if let Some(why) = no_listener(a) {
                        c.at(item.span(), format!("server.listen: {a} {why}"));
                    } else if let Some(b) = s.server.listen.iter().find(|b| overlap(a, **b)) {
                        let said = if a == *b {
                            format!("server.listen: {a} is listed twice")
                        } else {
                            format!(
                                "server.listen: {a} overlaps {b}, listed before it: both bind port {} of one address",
                                a.port()
                            )
                        };
                        c.at(item.span(), said);
                    } else {
                        s.server.listen.push(a);
                    }
                }
                Err(_) => c.at(
                    item.span(),
                    not_an_address(
                        "server.listen",
                        item.get_ref(),
                        "e.g. \"127.0.0.1:3128\", \"0.0.0.0:3128\" or \"[::1]:3128\"",
                    ),
                ),
            }
        }
    }
    if let Some(realm) = &raw.server.realm {
        let r = realm.get_ref();
        // Printable ASCII: the realm goes into a quoted-string of the
        // Proxy-Authenticate field, where other bytes are obs-text that
        // clients decode differently (RFC 9110 §5.6.4).
        if r.is_empty()
            || r.len() > 100
            || r.chars().any(|ch| !matches!(ch, ' '..='~') || ch == '"' || ch == '\\')
        {
            c.at(
                realm.span(),
                "server.realm: must be 1-100 printable ASCII characters without quotes or backslashes",
            );
        } else {
            s.server.realm = r.clone();
        }
    }
    if let Some(via) = raw.server.via {
        s.server.via = via;
    }
    // Per listener too, as Squid's `require-proxy-header` is: with one
    // switch for all, a balancer's listener cut off the clients inside that
    // reach another without one (probe 143).
    if let Some(pp) = &raw.server.proxy_protocol {
        match pp.get_ref() {
            RawProxyProtocol::All(all) => {
                // With no plain listener, `true` applied to nothing: a TLS
                // listener's switch is in its own table (probe 207).
                if *all && s.server.listen.is_empty() && !raw.server.tls.is_empty() {
                    c.at(
                        pp.span(),
                        "server.proxy_protocol = true, but server.listen is empty: there is no plain listener \
                         for it; a [[server.tls]] listener takes proxy_protocol = true in its own table",
                    );
                } else if *all {
                    s.server.proxy_protocol.clone_from(&s.server.listen);
                }
            }
            RawProxyProtocol::Only(list) => {
                for item in list {
                    // The listener `a` names, written as there or not
                    // (`[::ffff:127.0.0.1]:P` for 127.0.0.1:P; probe 173).
                    let named =
                        |a: SocketAddr| s.server.listen.iter().copied().find(|&b| same_listener(a, b));
                    match item.get_ref().trim().parse::<SocketAddr>() {
                        Ok(a) => match named(a) {
                            Some(b) => {
                                if !s.server.proxy_protocol.contains(&b) {
                                    s.server.proxy_protocol.push(b);
                                }
                            }
                            None => {
                                // A TLS listener's is set in its own table
                                // (the error said only "not one of
                                // server.listen", probe 207).
                                let tls = raw.server.tls.iter().any(|t| {
                                    let listen = t.get_ref().listen.get_ref().trim();
                                    listen.parse().is_ok_and(|b| same_listener(a, b))
                                });
                                let hint = if tls {
                                    "; it is a [[server.tls]] listener: set proxy_protocol = true in its table"
                                } else {
                                    ""
                                };
                                c.at(
                                    item.span(),
                                    format!("server.proxy_protocol: {a} is not one of server.listen{hint}"),
                                )
                            }
                        },
                        Err(_) => c.at(
                            item.span(),
                            not_an_address(
                                "server.proxy_protocol",
                                item.get_ref(),
                                "write an entry of server.listen",
                            ),
                        ),
                    }
                }
            }
        }
    }
    for cidr in raw.server.proxy_protocol_from.iter().flatten() {
        match parse_cidr(cidr.get_ref()) {
            Ok(net) => s.server.proxy_protocol_from.push(net),
            Err(why) => c.at(cidr.span(), format!("server.proxy_protocol_from: {why}")),
        }
    }
    if let Some(w) = &raw.server.worker_threads {
        match usize::try_from(*w.get_ref()) {
            Ok(n) if n <= 1024 => s.server.worker_threads = n,
            _ => c.at(w.span(), "server.worker_threads: must be between 0 (one per core) and 1024"),
        }
    }
    let base = path.parent().unwrap_or(Path::new("."));
    if let Some(extra) = raw.server.tls.get(MAX_LISTENERS) {
        c.at(extra.span(), format!("server.tls: more than {MAX_LISTENERS} TLS listeners"));
    }
    // Every TLS listener's address, its certificate loaded or not: the
    // clash checks see them all. A listener whose certificate failed was
    // left out of them, and a clash that was one more problem showed only
    // after the certificate was fixed; and a clash skipped the certificate
    // (probe 136: `check` is to print every problem).
    let mut tls_addrs: Vec<SocketAddr> = Vec::new();
    for t in raw.server.tls.iter().take(MAX_LISTENERS) {
        let t = t.get_ref();
        let listen = t.listen.get_ref().trim().parse::<SocketAddr>();
        if listen.is_err() {
            c.at(
                t.listen.span(),
                not_an_address("server.tls.listen", t.listen.get_ref(), "e.g. \"0.0.0.0:3129\""),
            );
        }
        let cert = base.join(t.cert.get_ref());
        let key = base.join(t.key.get_ref());
        // An empty path named the folder, or nothing (probes 146, 147).
        let empty: Vec<_> = [("cert", &t.cert), ("key", &t.key)]
            .into_iter()
            .filter(|(_, p)| p.get_ref().trim().is_empty())
            .map(|(name, p)| (name, p.span()))
            .collect();
        for (name, span) in &empty {
            c.at(span.clone(), format!("server.tls.{name}: must not be empty"));
        }
        let clashes = listen.as_ref().ok().and_then(|a| clash(*a, &s.server.listen, &tls_addrs));
        if let Ok(a) = listen {
            if let Some(why) = no_listener(a) {
                c.at(t.listen.span(), format!("server.tls.listen: {a} {why}"));
            } else if let Some(other) = &clashes {
                c.at(
                    t.listen.span(),
                    format!("server.tls.listen: {a} is already a listener's address ({other})"),
                );
            }
            tls_addrs.push(a);
        }
        if !empty.is_empty() {
            // The other file's own problem too (probe 149).
            let other = match empty.as_slice() {
                [("cert", _)] => crate::server::tls::load_key(&key).err().map(|e| (e, t.key.span())),
                [("key", _)] => crate::server::tls::load_chain(&cert).err().map(|e| (e, t.cert.span())),
                _ => None,
            };
            if let Some((e, span)) = other {
                c.at(span, format!("server.tls: {e}"));
            }
            continue;
        }
        match (listen, crate::server::tls::load_certified_key(&cert, &key)) {
            (Ok(_), Ok(_)) if clashes.is_some() => {}
            (Ok(listen), Ok(certified)) => s.server.tls.push(super::TlsListener {
                listen,
                cert,
                key,
                proxy_protocol: t.proxy_protocol.unwrap_or(false),
                certified,
            }),
            (_, Err(e)) => {
                let at = match e.file {
                    crate::server::tls::TlsFile::Cert => t.cert.span(),
                    crate::server::tls::TlsFile::Key => t.key.span(),
                };
                c.at(at, format!("server.tls: {e}"));
                // The key's own problem too, which is read after the
                // certificate (only the first was said; probe 147).
                if e.file == crate::server::tls::TlsFile::Cert
                    && let Err(k) = crate::server::tls::load_key(&key)
                {
                    c.at(t.key.span(), format!("server.tls: {k}"));
                }
                s.unusable.extend([cert, key]);
            }
            _ => {}
        }
    }
    if let Some(listen) = &raw.server.listen
        && listen.get_ref().is_empty()
        && raw.server.tls.is_empty()
    {
        c.at(
            listen.span(),
            "server.listen: no listener at all; give an address here or add a [[server.tls]] listener",
        );
    }

    if let Some(f) = &raw.auth.users_file {
        let base = path.parent().unwrap_or(Path::new("."));
        if f.get_ref().trim().is_empty() {
            c.at(f.span(), "auth.users_file: must not be empty");
            // No file to read: the default one is not the one meant, and
            // its problems were a second, misleading line (probe 100).
            s.auth.users_file = std::path::PathBuf::new();
        } else {
            s.auth.users_file = base.join(f.get_ref());
            s.users_file_at = Some(super::error::line_col(source, f.span().start));
        }
    }
    if let Some(ttl) = &raw.auth.cache_ttl
        && let Some(d) = duration(&mut c, ttl, "auth.cache_ttl")
    {
        s.auth.cache_ttl = d;
    }
    if let Some(mp) = &raw.auth.max_pending {
        match usize::try_from(*mp.get_ref()) {
            Ok(n) if (1..=1_000_000).contains(&n) => s.auth.max_pending = n,
            _ => c.at(mp.span(), "auth.max_pending: must be between 1 and 1000000"),
        }
    }
    if let Some(v) = &raw.auth.verify_threads {
        match usize::try_from(*v.get_ref()) {
            Ok(n) if n <= 256 => s.auth.verify_threads = n,
            _ => c.at(v.span(), "auth.verify_threads: must be between 0 (half the cores) and 256"),
        }
    }
    let a = &raw.auth.argon2;
    let defaults = crate::auth::password::default_params();
    let mut get = |v: &Option<Spanned<i64>>,
                   default: u32,
                   name: &str,
                   range: std::ops::RangeInclusive<u32>|
     -> u32 {
        match v {
            None => default,
            Some(v) => match u32::try_from(*v.get_ref()) {
                Ok(n) if range.contains(&n) => n,
                _ => {
                    c.at(
                        v.span(),
                        format!("auth.argon2.{name}: must be between {} and {}", range.start(), range.end()),
                    );
                    default
                }
            },
        }
    };
    use crate::auth::password::{MAX_M_COST, MAX_P_COST, MAX_T_COST};
    let m = get(&a.m_cost, defaults.m_cost(), "m_cost", 8..=MAX_M_COST);
    let t = get(&a.t_cost, defaults.t_cost(), "t_cost", 1..=MAX_T_COST);
    let p = get(&a.p_cost, defaults.p_cost(), "p_cost", 1..=MAX_P_COST);
    match argon2::Params::new(m.max(8 * p), t, p, None) {
        Ok(params) => s.auth.argon2 = params,
        Err(e) => c.whole(format!("auth.argon2: {e}")),
    }

    let t = &raw.auth.throttle;
    if let Some(e) = t.enabled {
        s.auth.throttle.enabled = e;
    }
    if let Some(n) = &t.max_failures {
        match u32::try_from(*n.get_ref()) {
            Ok(v) if (1..=1_000_000).contains(&v) => s.auth.throttle.max_failures = v,
            _ => c.at(n.span(), "auth.throttle.max_failures: must be between 1 and 1000000"),
        }
    }
    if let Some(w) = &t.window {
        match duration(&mut c, w, "auth.throttle.window") {
            Some(d) if d.is_zero() => c.at(w.span(), "auth.throttle.window: must be greater than zero"),
            Some(d) => s.auth.throttle.window = d,
            None => {}
        }
    }
    if let Some(d) = &t.delay
        && let Some(v) = duration_within(&mut c, d, "auth.throttle.delay", (Duration::from_secs(60), "60s"))
    {
        s.auth.throttle.delay = v;
    }

    if let Some(level) = &raw.log.level {
        use crate::telemetry::NoFilter;
        match crate::telemetry::log_filter(level.get_ref()) {
            Ok(filter) => s.log.level = filter,
            Err(why @ (NoFilter::TooLong | NoFilter::Silent | NoFilter::FieldNames)) => {
                c.at(level.span(), format!("log.level: {why}"))
            }
            Err(NoFilter::NotAFilter) => c.at(
                level.span(),
                "log.level: not a level or a filter (use off, error, warn, info, debug or trace, or directives such as \"info,hyper=warn\")",
            ),
        }
    }
    if let Some(format) = &raw.log.format {
        match format.get_ref().as_str() {
            "text" => s.log.format = LogFormat::Text,
            "json" => s.log.format = LogFormat::Json,
            _ => c.at(format.span(), "log.format: must be \"text\" or \"json\""),
        }
    }
    if let Some(access) = raw.log.access {
        s.log.access = access;
    }
    limits(&mut c, &raw.limits, &mut s.limits);

    let mut allow = Vec::new();
    for cidr in &raw.egress.allow_cidrs {
        match parse_cidr(cidr.get_ref()) {
            Ok(net) => allow.push(net),
            Err(why) => c.at(cidr.span(), format!("egress.allow_cidrs: {why}")),
        }
    }
    s.egress = Egress::new(allow);

    if let Some(servers) = &raw.dns.servers {
        for server in servers {
            let text = server.get_ref().trim();
            // An IPv6 address goes in brackets: `::1:5353` was read as the
            // address ::1:5353, port 53, not ::1 port 5353 (probe 99).
            if text.parse::<std::net::Ipv6Addr>().is_ok() {
                c.at(
                    server.span(),
                    format!(
                        "dns.servers: write an IPv6 address in brackets, \"[{text}]\" (port 53) or with a \
                         port, \"[address]:port\": without, the last group could be a port"
                    ),
                );
                continue;
            }
            let bracketed = text.strip_prefix('[').and_then(|t| t.strip_suffix(']'));
            let parsed = text
                .parse::<SocketAddr>()
                .ok()
                .or_else(|| text.parse::<std::net::Ipv4Addr>().ok().map(|ip| SocketAddr::new(ip.into(), 53)))
                .or_else(|| {
                    bracketed?.parse::<std::net::Ipv6Addr>().ok().map(|ip| SocketAddr::new(ip.into(), 53))
                });
            match parsed {
                // (No server listens there: it was accepted, probe 83.)
                Some(a) if a.port() == 0 => {
                    c.at(server.span(), "dns.servers: port 0 is no server's; leave the port out for 53")
                }
                // (Also as `::ffff:0.0.0.0`, and broadcast or multicast:
                // probe 85; the rest of 0.0.0.0/8: probe 86.)
                Some(a) if no_server(a.ip().to_canonical()) => c.at(
                    server.span(),
                    "dns.servers: an unspecified (0.0.0.0/8, ::), broadcast or multicast address is no \
                     server's; write the server's (127.0.0.1 for one on this host)",
                ),
                // No query reaches fe80::/10 without a zone id, which
                // authgate takes nowhere (as for a listener; probe 300).
                Some(SocketAddr::V6(a)) if a.ip().is_unicast_link_local() => c.at(
                    server.span(),
                    "dns.servers: a link-local address (fe80::/10) needs a zone id, and authgate takes \
                     none: write the server's global or unique-local address",
                ),
                Some(a) => s.dns_servers.push(a),
                None => c.at(
                    server.span(),
                    format!(
                        "dns.servers: {} is not an address (e.g. \"10.0.0.2\" or \"127.0.0.1:5353\")",
                        quoted(text)
                    ),
                ),
            }
        }
    }
    s.policy = super::rules::policy(&mut c, &raw.policy, &raw.rules);
    // An empty `ca_file` named the folder, or nothing (probes 146, 147).
    let ca_empty = raw.upstream.ca_file.as_ref().filter(|ca| ca.get_ref().trim().is_empty());
    if let Some(ca) = ca_empty {
        c.at(
            ca.span(),
            "upstream.ca_file: must not be empty (leave it out for the system's CA certificates)",
        );
    }
    let ca = raw
        .upstream
        .ca_file
        .as_ref()
        .filter(|_| ca_empty.is_none())
        .map(|ca| (base.join(ca.get_ref()), ca.span()));
    // `https://` is forwarded on a TLS listener only: without one, the
    // system roots are not needed, nor read (an `SSL_CERT_FILE` problem
    // refused `authgate users`, whose [auth] alone is checked here).
    let wanted = ca.is_some() || !raw.server.tls.is_empty();
    match wanted.then(|| crate::proxy::upstream_tls::connector(ca.as_ref().map(|(p, _)| p.as_path()))) {
        None => {}
        Some(Ok(tls)) => {
            s.upstream_tls = tls;
            s.upstream_ca = ca.map(|(p, _)| p);
        }
        Some(Err(m)) => match ca {
            Some((path, span)) => {
                c.at(span, format!("upstream.ca_file: {m}"));
                s.unusable.push(path);
            }
            None => c.whole(format!("the system's CA certificates (no [upstream] ca_file): {m}")),
        },
    }
    if let Some(a) = &raw.admin.listen {
        match a.get_ref().trim().parse::<SocketAddr>() {
            Ok(addr) => match clash(addr, &s.server.listen, &tls_addrs) {
                Some(other) => {
                    c.at(a.span(), format!("admin.listen: must not be a proxy listener's address ({other})"))
                }
                None => match no_listener(addr) {
                    Some(why) => c.at(a.span(), format!("admin.listen: {addr} {why}")),
                    None => {
                        s.admin = Some(addr);
                        // Never a destination (see `Egress::with_admin`).
                        s.egress = std::mem::take(&mut s.egress).with_admin(s.admin);
                    }
                },
            },
            Err(_) => c.at(a.span(), not_an_address("admin.listen", a.get_ref(), "e.g. \"127.0.0.1:9090\"")),
        }
    }
    if let Some(p) = raw.metrics.per_user {
        s.metrics_per_user = p;
    }
    if let Some(w) = raw.reload.watch {
        s.watch = w;
    }
    Ok((s, c.into_problems()))
}

/// Whether `ip` can be no DNS server's: unspecified, in 0.0.0.0/8 ("this
/// network", a source address only: RFC 1122 3.2.1.3), broadcast,
/// multicast.
fn no_server(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.octets()[0] == 0 || v4.is_broadcast() || v4.is_multicast(),
        std::net::IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast(),
    }
}

/// Why `shown`, an IPv4 address or CIDR written with a leading zero in a
/// number, is refused: it reads as octal where a host is matched (a target,
/// a rule's `hosts`) and as decimal to other tools. Offers the readings that
/// are addresses (or ranges): `octal`, as a host reads it, and `decimal`;
/// `None` when neither is one (then it is no address at all).
pub(crate) fn leading_zero(shown: &str, octal: Option<String>, decimal: Option<String>) -> Option<String> {
    let write = match (octal, decimal) {
        (Some(octal), Some(decimal)) if octal != decimal => format!(
            "write the one you mean without it: \"{octal}\" (octal, as a host reads it) or \"{decimal}\" (decimal)"
        ),
        (Some(octal), None) => {
            format!("write \"{octal}\" if you mean it as a host reads it (as decimal it is no address)")
        }
        (Some(_), Some(decimal)) => format!("write it without (\"{decimal}\")"),
        (None, Some(decimal)) => {
            format!("a host refuses this one (8 and 9 are no octal digits): write it without (\"{decimal}\")")
        }
        (None, None) => return None,
    };
    Some(format!(
        "`{shown}` has a number with a leading zero, which reads as octal where a host is \
         matched (`010.0.0.1` is 8.0.0.1): {write}"
    ))
}

/// Parses `a.b.c.d/n`, `x::/n`, or a bare address (a /32 or /128).
///
/// # Errors
/// A one-line reason: not a CIDR; bits set past the prefix (`10.1.2.3/8`:
/// which was meant, the address or its /8?); or an IPv4-mapped form
/// (`::ffff:8.8.8.0/120`), which could never match: authgate compares
/// those addresses in their IPv4 form (see `policy::egress::canonical`),
/// so the reason names the IPv4 CIDR to write instead.
pub fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    let shown = s.chars().take(60).collect::<String>();
    // `010.0.0.0/24` was read as 10.0.0.0/24, where a rule's `hosts` read
    // `010.0.0.1` as inet_aton does, 8.0.0.1: one spelling, two addresses
    // in one file (probe 83).
    let (address, prefix) = s.split_once('/').map_or((s, None), |(a, p)| (a, Some(p)));
    // (Only a dotted quad of decimal numbers, and only when it is a CIDR
    // without the zeros: `0x0a.0.0.0`, `012`, `.010.0.0`, `0999.0.0.0` or
    // `010.0.0.0/33` are not CIDRs at all, and were told to drop a zero,
    // some to a spelling that is none either: probes 84, 85.)
    /// A number without its zeros, `0` for all zeros.
    fn unpadded(n: &str) -> &str {
        match n.trim_start_matches('0') {
            "" => "0",
            n => n,
        }
    }
    let numbers: Vec<&str> = address.split('.').collect();
    let quad =
        numbers.len() == 4 && numbers.iter().all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    // (The prefix without its zeros too: `/08` is 8, probe 86; an empty
    // one is none, not `/0`, probe 371.)
    let prefix_ok = prefix.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let prefix_text = || prefix.map(|p| format!("/{}", unpadded(p))).unwrap_or_default();
    let decimal = || {
        let numbers: Vec<&str> = numbers.iter().map(|n| unpadded(n)).collect();
        numbers.join(".") + &prefix_text()
    };
    // The reading of a target or a rule's `hosts` (`inet_aton`'s, which
    // takes no part longer than 12 characters), when it is an address:
    // `0177` is 127 there. Suggesting only the decimal one (177.0.0.0/8)
    // for `0177.0.0.0/8` steered a deny rule meant for loopback onto
    // public addresses (probe 363).
    let octal = || {
        let parts: Option<Vec<u8>> = numbers
            .iter()
            .map(|n| match n.strip_prefix('0') {
                _ if n.len() > 12 => None,
                Some(rest) if !rest.is_empty() => u8::from_str_radix(rest, 8).ok(),
                _ => n.parse().ok(),
            })
            .collect();
        let [a, b, c, d] = parts?[..] else { return None };
        Some(format!("{a}.{b}.{c}.{d}") + &prefix_text())
    };
    // A reading as this file takes a CIDR, its bits past the prefix
    // cleared: a suggestion the next load refuses is none (`0177.0.0.01/8`
    // was told "127.0.0.1/8", probe 371).
    let as_cidr = |text: String| {
        let net = text.parse::<ipnet::IpNet>().map(|n| n.trunc().to_string());
        net.or_else(|_| text.parse::<std::net::IpAddr>().map(|a| a.to_string())).ok()
    };
    if quad
        && prefix_ok
        && numbers.iter().any(|n| n.len() > 1 && n.starts_with('0'))
        && let Some(refusal) = leading_zero(&shown, octal().and_then(as_cidr), as_cidr(decimal()))
    {
        return Err(refusal);
    }
    let net = s
        .parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
        .ok_or_else(|| format!("{} is not a CIDR (e.g. \"10.1.0.0/16\" or \"fd00::/8\")", quoted(s)))?;
    if net != net.trunc() {
        return Err(format!(
            "`{shown}` has bits set past its /{}: write \"{}\" for the range, or the address alone",
            net.prefix_len(),
            net.trunc()
        ));
    }
    if let ipnet::IpNet::V6(v6) = net
        && let std::net::IpAddr::V4(v4) = crate::policy::egress::canonical(v6.network().into())
        && v6.prefix_len() >= 96
    {
        let len = v6.prefix_len() - 96;
        if len == 0 {
            // The whole mapped range: its IPv4 form would open or match
            // every IPv4 address.
            return Err(format!(
                "`{shown}` is an IPv6 form of IPv4 addresses, which authgate compares as IPv4; it stands for every IPv4 address (\"0.0.0.0/0\"): list the IPv4 ranges you mean instead"
            ));
        }
        let suggestion = ipnet::Ipv4Net::new(v4, len).map(|n| n.trunc().to_string()).unwrap_or_default();
        return Err(format!(
            "`{shown}` is an IPv6 form of IPv4 addresses, which authgate compares as IPv4: write \"{suggestion}\""
        ));
    }
    Ok(net)
}

fn limits(c: &mut Collector<'_>, raw: &super::raw::RawLimits, l: &mut Limits) {
    let durations: [(&Option<Spanned<String>>, &mut Duration, &str); 9] = [
        (&raw.header_read_timeout, &mut l.header_read_timeout, "limits.header_read_timeout"),
        (&raw.idle_timeout, &mut l.idle_timeout, "limits.idle_timeout"),
        (&raw.connect_timeout, &mut l.connect_timeout, "limits.connect_timeout"),
        (&raw.dns_timeout, &mut l.dns_timeout, "limits.dns_timeout"),
        (
            &raw.upstream_response_timeout,
            &mut l.upstream_response_timeout,
            "limits.upstream_response_timeout",
        ),
        (&raw.tunnel_idle_timeout, &mut l.tunnel_idle_timeout, "limits.tunnel_idle_timeout"),
        (&raw.upstream_idle_timeout, &mut l.upstream_idle_timeout, "limits.upstream_idle_timeout"),
        (&raw.send_timeout, &mut l.send_timeout, "limits.send_timeout"),
        (&raw.shutdown_grace, &mut l.shutdown_grace, "limits.shutdown_grace"),
    ];
    for (raw, slot, name) in durations {
        if let Some(v) = raw {
            match duration(c, v, name) {
                Some(d) if d.is_zero() && name != "limits.shutdown_grace" => {
                    c.at(v.span(), format!("{name}: must be greater than zero"))
                }
                Some(d) => *slot = d,
                None => {}
            }
        }
    }
    type Count<'a> = (&'a Option<Spanned<i64>>, &'a mut usize, &'static str, std::ops::RangeInclusive<i64>);
    let counts: [Count<'_>; 3] = [
        (&raw.max_header_bytes, &mut l.max_header_bytes, "limits.max_header_bytes", 8192..=1_048_576),
        (&raw.max_connections, &mut l.max_connections, "limits.max_connections", 1..=10_000_000),
        (
            &raw.max_connections_per_ip,
            &mut l.max_connections_per_ip,
            "limits.max_connections_per_ip",
            1..=10_000_000,
        ),
    ];
    for (raw, slot, name, range) in counts {
        if let Some(v) = raw {
            if range.contains(v.get_ref()) {
                *slot = *v.get_ref() as usize;
            } else {
                c.at(v.span(), format!("{name}: must be between {} and {}", range.start(), range.end()));
            }
        }
    }
}

/// Most addresses in `server.listen`, and most `[[server.tls]]` listeners.
pub(super) const MAX_LISTENERS: usize = 256;

/// Whether `a` names the listener at `b`, written as there or not
/// (`[::ffff:127.0.0.1]:P` for 127.0.0.1:P).
fn same_listener(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

/// Why `text`, the value of the listener setting `setting`, is not an IP
/// address and port, with `example` (what to write): a host name, a port
/// that is no number to 65535, no port, no address, IPv6 without brackets,
/// IPv4 in them, a zone id, a space, a URL. (One wording each setting had,
/// and a host name, a bad port and a missing one got the same; probes 160,
/// 161, 164, 166.)
fn not_an_address(setting: &str, text: &str, example: &str) -> String {
    let text = text.trim();
    format!(
        "{setting}: {} is not an IP address and port ({}; {example})",
        quoted(text),
        address_problem(text)
    )
}

/// What is wrong with `text` as an IP address and port (see
/// [`not_an_address`]).
fn address_problem(text: &str) -> &'static str {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if text.is_empty() {
        return "it is empty";
    }
    if text.contains(char::is_whitespace) {
        return "it holds a space";
    }
    if text.contains("://") {
        return "it is a URL: write the address and port alone";
    }
    if text.contains('%') {
        return "a zone id (`%…`) is not taken";
    }
    if text.parse::<std::net::Ipv6Addr>().is_ok() {
        return "an IPv6 address and port are written in brackets, `[::1]:3128`";
    }
    if text.parse::<IpAddr>().is_ok() {
        return "it has no port";
    }
    if digits(text) {
        return "it has no address: `0.0.0.0:PORT` is every IPv4 interface";
    }
    let (host, port) = match text.strip_prefix('[') {
        Some(rest) => {
            let Some((host, after)) = rest.split_once(']') else { return "its `[` is not closed" };
            if host.parse::<std::net::Ipv4Addr>().is_ok() {
                return "only an IPv6 address is written in brackets";
            }
            match after.strip_prefix(':') {
                None if after.is_empty() => return "it has no port",
                None => return "text follows its `]`",
                Some(port) => (host, port),
            }
        }
        None => match text.rsplit_once(':') {
            Some(pair) => pair,
            None => return "it has no port; host names are not taken",
        },
    };
    if port.is_empty() {
        return "it has no port";
    }
    if !digits(port) || port.parse::<u16>().is_err() {
        return "its port is no number from 0 to 65535";
    }
    if host.is_empty() {
        return "it has no address: `0.0.0.0:PORT` is every IPv4 interface";
    }
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        return "an IPv6 address is written in brackets";
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return if host.split('.').count() == 4 && host.split('.').all(digits) {
            "each of an IPv4 address's four numbers is 0 to 255, without leading zeros"
        } else {
            "an IPv4 address is four numbers, `127.0.0.1`"
        };
    }
    // A name as DNS writes one (letters, digits, `-`, `.`), with a letter.
    let name = host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && host.bytes().any(|b| b.is_ascii_alphabetic())
        && !host.starts_with(['-', '.']);
    if name { "host names are not taken" } else { "its address part is no IP address" }
}

/// Why a listener on `a` could take no connection, though `a` is an
/// address: `check` said ok, and the listener failed to bind ("Invalid
/// argument") or took nothing (probe 173).
fn no_listener(a: SocketAddr) -> Option<&'static str> {
    match a.ip().to_canonical() {
        ip if ip.is_multicast() => Some("is a multicast address, which takes no TCP connection"),
        IpAddr::V4(v4) if v4.is_broadcast() => {
            Some("is the broadcast address, which takes no TCP connection")
        }
        IpAddr::V6(v6) if v6.is_unicast_link_local() => Some(
            "is link-local, which needs a zone id, and authgate takes none: listen on `[::]` or on the interface's global address",
        ),
        _ => None,
    }
}

/// The listener that `a` would clash with, named for the message: one of
/// `server.listen`, else a TLS listener listed before.
fn clash(a: SocketAddr, plain: &[SocketAddr], tls: &[SocketAddr]) -> Option<String> {
    let found = |list: &[SocketAddr]| list.iter().copied().find(|b| overlap(a, *b));
    found(plain)
        .map(|b| format!("server.listen has {b}"))
        .or_else(|| found(tls).map(|b| format!("a [[server.tls]] listener has {b}")))
}

/// Whether two listen addresses cannot both be bound: the same port on the
/// same address, or on an address the other's wildcard covers (`0.0.0.0`
/// takes every IPv4 address, `[::]` every address). `check` said ok to
/// `admin.listen = "0.0.0.0:P"` beside `listen = ["127.0.0.1:P"]`, and the
/// start then failed with "Address already in use". Port 0 never clashes.
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() == 0 || a.port() != b.port() {
        return false;
    }
    // `[::ffff:127.0.0.1]` binds 127.0.0.1 (probe 170): compare as bound.
    match (a.ip().to_canonical(), b.ip().to_canonical()) {
        (x, y) if x == y => true,
        (IpAddr::V6(x), _) | (_, IpAddr::V6(x)) if x.is_unspecified() => true,
        (IpAddr::V4(x), IpAddr::V4(y)) => x.is_unspecified() || y.is_unspecified(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::{Exact, exact_length};
    use std::time::Duration;

    /// What a fraction error suggests is as long as what was written, read
    /// back as humantime reads it (probe 305: months were 216 s short).
    #[test]
    fn the_length_suggested_reads_back_as_the_same() {
        for (text, humantime_reads) in [
            ("0.0001h", Duration::from_millis(360)),
            ("0.0001months", Duration::from_micros(263_001_600)),
            ("1month 0.0001h", Duration::from_millis(2_630_016_360)),
            ("0.5y", Duration::from_secs(15_778_800)),
            ("0.0001 hrs 2.5 s", Duration::from_millis(2_860)),
            ("1.000000000000000000000000000000s", Duration::from_secs(1)),
        ] {
            let Exact::Nanos(ns) = exact_length(text) else { panic!("{text}: not worked out") };
            assert_eq!(Duration::from_nanos(ns), humantime_reads, "{text}");
            let suggested = humantime::format_duration(Duration::from_nanos(ns)).to_string();
            assert_eq!(humantime::parse_duration(&suggested), Ok(humantime_reads), "{text}: {suggested}");
        }
        assert!(matches!(exact_length("0.5ns"), Exact::NotWhole));
        assert!(matches!(exact_length("400d 0.5s"), Exact::Long));
        assert!(matches!(exact_length("0.5parsecs"), Exact::Unread));
        // Long fractions are told what they are, not "too long" (probe 306).
        for text in [
            "0.1666666666666666666666666667h",
            "1.000000000000000000000005w",
            "8760.9518267762838879195920766usec",
        ] {
            assert!(matches!(exact_length(text), Exact::NotWhole), "{text}");
        }
        let Exact::Nanos(ns) = exact_length("0.000000001000000000000000s") else { panic!("not worked out") };
        assert_eq!(ns, 1);
        // What humantime does not read is not worked out (probe 306).
        for text in ["0.0001h 1.5.5s", "0.0001h 5.s", "1h .5m", "0.5h 1"] {
            assert!(matches!(exact_length(text), Exact::Unread), "{text}");
        }
    }
}
