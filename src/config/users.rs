//! `users.toml` → validated users, collecting every problem.
//!
//! Messages name the user and the position, never the hash.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use super::error::{Collector, Problem};
use super::raw::RawUsers;
use crate::auth::basic::nfc;
use crate::auth::store::{Costs, StoredHash, User};

/// Longest accepted user name, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// Checks a user name: what Basic auth can carry and a log can show.
///
/// # Errors
/// A message saying what is wrong with the name.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("user name must not be empty".into());
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(format!("user name longer than {MAX_NAME_CHARS} characters"));
    }
    if name.contains(':') {
        return Err("user name must not contain ':' (Basic auth separates name and password with it)".into());
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("user name must not contain spaces or control characters".into());
    }
    if name.chars().any(invisible) {
        return Err(
            "user name must not contain invisible or direction-changing characters (such as U+200B, U+202E)"
                .into(),
        );
    }
    if name == "*" {
        return Err(STAR.into());
    }
    Ok(())
}

/// Why `*` is no user or group name: a rule could not name it, since
/// `users = ["*"]` in a rule is refused as the wildcard it is not (probe
/// 122).
const STAR: &str = "`*` is not a name (a rule could not name it: `*` there reads as a wildcard, which users and groups do not have)";

/// `problem`, the reason [`check_name`] refused `name`, with the name as
/// `shown` writes it, or without it: a name refused for a `:`, whitespace,
/// a control character or its length is most likely something else typed
/// where a name belongs (`name:password` from an htpasswd line, a
/// passphrase, a hash), and a reload logs the problem. Only a name refused
/// for invisible characters is quoted, which is the point of showing it
/// (with them made visible).
pub fn refused_name(name: &str, problem: &str, shown: impl Fn(&str) -> String) -> String {
    if name.is_empty() {
        problem.to_owned()
    } else if may_hold_a_password(name) {
        format!("{problem} {NOT_SHOWN}")
    } else {
        format!("user `{}`: {problem}", shown(name))
    }
}

/// A user's name as messages show it (escaped, see
/// [`crate::telemetry::sanitize_username`]), or `None` for a valid name that
/// [`may_hold_a_password`], such as a hash pasted as the name: problems and
/// warnings then locate the user, or say [`NOT_SHOWN`], without the name.
pub fn shown_user(name: &str) -> Option<String> {
    (!may_hold_a_password(name)).then(|| crate::telemetry::sanitize_username(name))
}

/// What a problem says in place of a name that [`may_hold_a_password`].
pub const NOT_SHOWN: &str = "(the name is not shown: it may hold a password)";

/// Whether a user or group name given where one belongs looks like more
/// than a name (`name:password`, a passphrase, a hash): a `:`, whitespace,
/// a control character, more than `MAX_NAME_CHARS` (64) characters, or the
/// shape of a crypt hash (`$2y$10$…`, three `$` or more: a bcrypt hash
/// fits in 64 characters, and was shown, probe 166; so was a PHC string
/// without its first `$`, probe 200). Such a name is located in problems,
/// not quoted. The length is counted as typed and in NFC, as
/// [`check_name`] counts it: NFC can lengthen a name, and one of 46
/// characters as typed, 86 in NFC, was refused as too long and shown
/// (probe 200).
pub fn may_hold_a_password(name: &str) -> bool {
    let long = |name: &str| name.chars().count() > MAX_NAME_CHARS;
    long(name)
        || name.chars().any(|c| c == ':' || c.is_control() || c.is_whitespace())
        || name.matches('$').count() >= 3
        || long(&nfc(name))
}

/// Checks a group name (users file and `users --group`): non-empty, and
/// none of the characters a user name may not have (`:`, whitespace,
/// control, invisible or direction-changing ones), nor `,`, which
/// `users list` separates groups with (and whitespace its columns).
///
/// # Errors
/// Why the name is refused.
pub fn check_group(group: &str) -> Result<(), String> {
    if group.is_empty() {
        return Err("group names must not be empty".into());
    }
    if group.contains(':') {
        return Err("group names must not contain ':'".into());
    }
    if group.chars().any(char::is_whitespace) {
        return Err(
            "group names must not contain spaces (`users list` separates its columns with them)".into()
        );
    }
    if group.chars().any(|c| c.is_control() || invisible(c)) {
        return Err(
            "group names must not contain control, invisible or direction-changing characters (such as U+200B, U+202E)"
                .into(),
        );
    }
    if group.contains(',') {
        return Err("group names must not contain ',' (`users list` separates groups with it)".into());
    }
    if group == "*" {
        return Err(STAR.into());
    }
    Ok(())
}

/// Characters that show as nothing or reorder the text around them: two
/// names that look the same in a list, a log line or a metric label must be
/// the same name. Every Unicode format character (category Cf: zero-width
/// and bidirectional controls, soft hyphen, word joiners, the byte-order
/// mark, tag characters ...), variation selectors, the combining grapheme
/// joiner, the Hangul and Khitan fillers, every code point Unicode keeps
/// for more of these (U+2065, U+FFF0 to U+FFF8, U+E0000 to U+E0FFF: its
/// default-ignorable set, drawn as nothing even where unassigned; they
/// were taken, probe 338), and the blank Braille pattern
/// (U+2800: no format character, but it shows as a space; `alice` with one
/// behind it listed as a second `alice`, probe 336). The log sink writes
/// them escaped too.
pub(crate) fn invisible(c: char) -> bool {
    matches!(c,
        '\u{AD}' | '\u{34F}' | '\u{600}'..='\u{605}' | '\u{61C}' | '\u{6DD}' | '\u{70F}'
        | '\u{890}'..='\u{891}' | '\u{8E2}' | '\u{115F}'..='\u{1160}' | '\u{17B4}'..='\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{2800}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}'
        | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF0}'..='\u{FFFB}' | '\u{110BD}' | '\u{110CD}'
        | '\u{13430}'..='\u{1343F}' | '\u{16FE4}' | '\u{1BCA0}'..='\u{1BCA3}' | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0000}'..='\u{E0FFF}')
}

/// The user whose table starts on `line`: `[users.NAME]` or `NAME = {`
/// (the name as TOML reads it: unquoted, its escapes decoded, so that
/// `"alice\u003aS3cret"` is seen to hold a `:`; it was shown as typed,
/// probe 155). A header is read as TOML reads it, spaces and quotes
/// included (`[ users . alice ]`, `["users"]` were not seen; probe 161).
fn user_at(line: &str, header: Option<&str>) -> Option<String> {
    if let Some(mut path) = table_path(line) {
        return (path.len() == 2 && path[0] == "users").then(|| path.pop()).flatten();
    }
    // `NAME = {` names a user in `[users]` only: at the top, `users = { … }`
    // is the table of users (it was blamed on a user `users`; probe 158).
    if header.and_then(table_path).is_none_or(|p| p != ["users"]) {
        return None;
    }
    let key = line.split_once('=').filter(|(_, v)| v.trim_start().starts_with('{'))?.0;
    read_key(key.trim()).filter(|name| !name.is_empty())
}

/// A key as written in a line or a parser's message (bare, or quoted as
/// TOML quotes it: `"café"`), read; `None` for a dotted key (`bob.x`, a key
/// of user `bob`'s, not his name) or what is no key.
fn read_key(key: &str) -> Option<String> {
    // One key, not a dotted one: a table of one integer.
    let read: toml::Table = toml::from_str(&format!("{key} = 0")).ok()?;
    let one = read.len() == 1;
    let (name, value) = read.into_iter().next()?;
    (one && value.is_integer()).then_some(name)
}

/// The keys of the table header `line` (`[a."b c"]` is `a`, `b c`), as
/// TOML reads them; `None` for a line that is no `[table]` header.
fn table_path(line: &str) -> Option<Vec<String>> {
    let line = line.trim_start();
    if !line.starts_with('[') || line.starts_with("[[") {
        return None;
    }
    let mut table: toml::Table = toml::from_str(line).ok()?;
    let mut path = Vec::new();
    while table.len() == 1 {
        let Some((key, toml::Value::Table(inner))) = table.into_iter().next() else { return None };
        path.push(key);
        table = inner;
    }
    (table.is_empty() && !path.is_empty()).then_some(path)
}

/// Parses the users file; returns the valid users and every problem.
/// `config` is the config file that names it, for the commands messages
/// suggest.
pub fn parse(path: &Path, source: &str, config: &Path) -> (Vec<User>, Vec<Problem>) {
    let mut c = Collector::new(path, source);
    if c.too_heavy(true) {
        return (Vec::new(), c.problems);
    }
    // A value of the wrong type or an unknown key ends serde's reading of
    // the whole file: each such error is recorded, its user's table left
    // out (blanked, so that offsets stay), and the rest read again, so that
    // one bad value does not hide the problems of other users (probe 190).
    // Bounded: each round parses the file again.
    let mut text = std::borrow::Cow::Borrowed(source);
    let mut rounds = (RE_READ_BYTES / source.len().max(1)).clamp(1, MAX_RE_READS);
    // Names of the users whose tables were blanked.
    let mut left_out: Vec<String> = Vec::new();
    let raw: RawUsers = loop {
        let e = match toml::from_str(&text) {
            Ok(r) => break r,
            Err(e) => e,
        };
        // The text as TOML reads it, spans and all: where the problem is
        // and whose (parsed once a round for the three, not once each).
        let doc = toml_edit::ImDocument::parse(&*text).ok();
        let at = e.span().zip(doc.as_ref());
        let table = at.clone().and_then(|(at, doc)| user_table_at(doc, at));
        // In a table left out (a `[users.NAME.x]` sub-table of one, or
        // `[users.NAME]` after one): fallout of the blanking, not the file's.
        if table.as_ref().is_some_and(|(_, name)| left_out.contains(name)) {
            return (Vec::new(), c.into_problems());
        }
        let first_new = c.problems.len();
        c.toml(&e);
        for p in &mut c.problems[first_new..] {
            let lines: Vec<&str> = source.lines().take(p.line).collect();
            let line = p.line.checked_sub(1).and_then(|n| lines.get(n).copied());
            // The header of the table the line is in.
            let header = lines.iter().rev().skip(1).map(|l| l.trim()).find(|l| l.starts_with('['));
            p.message = without_values(&without_secret_keys(&p.message, line, header));
            // Which user lacks it: the problem points at the user's
            // table (`[users.bob]`, `bob = { … }`), unnamed (probe 100).
            if p.message.starts_with("missing field")
                && let Some(name) = line.and_then(|l| user_at(l, header))
                && !name.is_empty()
                && !may_hold_a_password(&name)
            {
                p.message = format!("user `{}`: {}", crate::telemetry::sanitize_username(&name), p.message);
            }
            // A value of the wrong type: whose and which (it named
            // neither; probe 161).
            p.message =
                typed_value_problem(&p.message, at.clone().and_then(|(at, doc)| value_owner(doc, at.start)));
            // An unknown key: whose (it named no user, though a typo in a
            // user's table is the usual case; probe 197).
            if (p.message.starts_with("unknown field") || p.message.starts_with("unknown key"))
                && let Some(name) = at.clone().and_then(|(at, doc)| key_owner(doc, at.start))
                && !name.is_empty()
                && !may_hold_a_password(&name)
            {
                p.message = format!("user `{}`: {}", crate::telemetry::sanitize_username(&name), p.message);
            }
        }
        // (Not held while the rest is parsed again.)
        drop(doc);
        rounds -= 1;
        // Read past only in a file that is TOML: not after a syntax error,
        // whose fallout cannot be told from real problems. (Checked once:
        // a blanked text is checked as it is made.)
        let once_blanked = !left_out.is_empty();
        let toml = || once_blanked || toml::from_str::<toml::Table>(source).is_ok();
        match table.filter(|_| rounds > 0 && toml()).and_then(|(at, name)| Some((blanked(&text, at)?, name)))
        {
            Some((rest, name)) => {
                text = std::borrow::Cow::Owned(rest);
                left_out.push(name);
            }
            None => return (Vec::new(), c.into_problems()),
        }
    };
    let mut users = Vec::new();
    // Each name after NFC, and where it was first: (as written, offset).
    let mut seen: HashMap<String, (Option<String>, usize)> = HashMap::new();
    // In file order, so that a duplicate is the later entry.
    let mut entries: Vec<_> = raw.users.into_iter().collect();
    entries.sort_by_key(|(name, _)| name.span().start);
    for (name, user) in entries {
        let span = name.span();
        let raw_name = name.into_inner();
        // Checked as compared and as `authgate users` checks it: after NFC,
        // which can lengthen a name (U+0958 is two characters in NFC) or
        // shorten it (`e` + U+0301 is one).
        let name = nfc(&raw_name);
        if let Err(m) = check_name(&name) {
            let typed: String = raw_name.chars().take(MAX_NAME_CHARS).collect();
            c.at(span.clone(), refused_name(&name, &m, |_| typed.escape_default().to_string()));
            continue;
        }
        // A name that passed, as every problem about it shows it (a
        // backslash doubled, as in the problems about a value's type: it
        // was shown raw in these and escaped in those); none for a valid
        // name that may hold a password, such as a hash pasted as the name
        // (it was shown, probe 329): its problems are located only.
        let shown = shown_user(&raw_name);
        let about = |problem: String| match &shown {
            Some(name) => format!("user `{name}`: {problem}"),
            None => problem,
        };
        if let Some((other, at)) = seen.get(&name) {
            // Counted only here: counted for every name, it made a large
            // file's load quadratic.
            let line = c.line_of(*at);
            let other = match other {
                Some(other) => format!("user `{other}` (line {line})"),
                None => format!("the user on line {line}"),
            };
            c.at(span.clone(), about(format!("same name as {other} after Unicode normalisation")));
            continue;
        }
        seen.insert(name.clone(), (shown.clone(), span.start));
        // Each of the user's values is checked, all problems said: a bad
        // password hid a bad group until it was fixed (probe 89).
        let hash = match StoredHash::parse(user.password.get_ref()) {
            Ok(h) => Some(h),
            Err(m) => {
                c.at(
                    user.password.span(),
                    about(format!(
                        "password: {m}; make one with `{}`",
                        super::command(config, "hash-password")
                    )),
                );
                None
            }
        };
        let mut groups = Vec::new();
        // (A set beside the list: a scan of the list for each group made a
        // user with 160,000 groups take over 20 s to check, probe 83.)
        let mut known = std::collections::HashSet::new();
        for g in &user.groups {
            // Compared after NFC, as user names are (and as rules name
            // groups): `café` composed or decomposed is one group.
            let group = nfc(g.get_ref());
            match check_group(&group) {
                // Located, not quoted: what was typed there may be a
                // password (a passphrase with spaces pasted into the list),
                // and a reload logs the problem.
                Err(m) => c.at(g.span(), about(format!("a group: {m}"))),
                Ok(()) => {
                    let group = Arc::<str>::from(group);
                    if known.insert(group.clone()) {
                        groups.push(group);
                    }
                }
            }
        }
        let expires = match &user.expires {
            None => Some(None),
            Some(dt) => match to_system_time(dt.get_ref()) {
                Some(t) => Some(Some(t)),
                // A second 60 is RFC 3339, and only wrong where no leap
                // second goes: said so (probe 150).
                None if misplaced_leap_second(dt.get_ref()) => {
                    c.at(dt.span(), about(format!("expires: {LEAP_ONLY}")));
                    None
                }
                None => {
                    c.at(dt.span(), about("expires: use an RFC 3339 date-time with offset (2027-03-31T00:00:00Z) or a date (2027-03-31, midnight UTC), from 1970 to 9999".into()));
                    None
                }
            },
        };
        if let (Some(hash), Some(expires)) = (hash, expires) {
            users.push(User::new(name.into(), hash, groups, user.disabled, expires));
        }
    }
    (users, c.into_problems())
}

/// How many times [`parse`] reads a users file again after a value of the
/// wrong type or an unknown key, at most, and how many bytes in all.
const MAX_RE_READS: usize = 50;
const RE_READ_BYTES: usize = 4 << 20;

/// A users file as TOML reads it, with the place of each item.
type Toml<'a> = toml_edit::ImDocument<&'a str>;

/// Where the `[users.NAME…]` table that holds `at` (a value of the wrong
/// type, an unknown key) is in `doc`, its header to its last value, and
/// NAME; `None` when `at` is in no such table (a user written inline, or
/// dotted, in `[users]`, at the top). Found as TOML
/// reads the file: a search of the lines for the next `[` took one inside
/// a multi-line string for a header, and the rest of the string was read
/// as a user of its own (probe 200).
fn user_table_at(doc: &Toml, at: std::ops::Range<usize>) -> Option<(std::ops::Range<usize>, String)> {
    /// The span of `table` or of a table under it that holds `at`.
    fn holding(table: &toml_edit::Table, at: &std::ops::Range<usize>) -> Option<std::ops::Range<usize>> {
        let own = table.span().filter(|_| !table.is_implicit() && !table.is_dotted());
        if let Some(span) = own.filter(|s| s.start <= at.start && at.end <= s.end) {
            return Some(span);
        }
        table.iter().find_map(|(_, item)| holding(item.as_table()?, at))
    }
    let users = doc.get("users")?.as_table()?;
    users.iter().find_map(|(name, user)| Some((holding(user.as_table()?, &at)?, name.to_owned())))
}

/// `text` with `range` blanked: every character but line ends made spaces,
/// so that offsets, lines and columns stay; `None` when what is left is no
/// TOML (the range was not the table it seemed): reading on would report
/// problems the file does not have. `text` must be TOML.
fn blanked(text: &str, range: std::ops::Range<usize>) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..range.start]);
    out.extend(text[range.clone()].chars().flat_map(|ch| {
        let blank = if ch == '\n' || ch == '\r' { ch } else { ' ' };
        std::iter::repeat_n(blank, ch.len_utf8())
    }));
    out.push_str(&text[range.end..]);
    toml::from_str::<toml::Table>(&out).ok().map(|_| out)
}

/// A TOML offset date-time (or a bare date, taken as midnight UTC) as a
/// `SystemTime`, within [`expiry_in_range`].
///
/// Worked out from the fields (days since 1970, the time, less the offset),
/// not by a text parser: humantime's `parse_rfc3339_weak` took
/// `09:00:00.5+02:00` for 09:00:00.5 UTC, dropping the offset after a
/// fraction of a second, and such a user logged in for two hours past
/// their expiry (probe 226).
pub fn to_system_time(dt: &toml::value::Datetime) -> Option<SystemTime> {
    use toml::value::{Offset, Time};
    let midnight = Time { hour: 0, minute: 0, second: 0, nanosecond: 0 };
    let (date, time, offset_minutes) = match (dt.date, dt.time, dt.offset) {
        (Some(d), Some(t), Some(Offset::Z)) => (d, t, 0),
        (Some(d), Some(t), Some(Offset::Custom { minutes })) => (d, t, i64::from(minutes)),
        (Some(d), None, None) => (d, midnight, 0),
        _ => return None,
    };
    let (year, month, day) = (i64::from(date.year), i64::from(date.month), i64::from(date.day));
    let days = crate::calendar::days_from_civil(year, month, day);
    // A date that does not exist (`02-30`) comes back as another one.
    let real = crate::calendar::civil_from_days(days) == (year, u32::from(date.month), u32::from(date.day));
    if !real || time.hour > 23 || time.minute > 59 || time.second > 60 || time.nanosecond > 999_999_999 {
        return None;
    }
    // A leap second (`23:59:60`) is the second after `:59`: it was read as
    // `:59`, and the user expired a second early (probe 137). Only where
    // leap seconds go, the last second of a UTC day (probe 144).
    let leap = time.second == 60;
    let second = i64::from(time.second.min(59));
    let seconds = days * 86_400 + i64::from(time.hour) * 3600 + i64::from(time.minute) * 60 + second
        - offset_minutes * 60;
    if leap && seconds.rem_euclid(86_400) != 86_399 {
        return None;
    }
    let seconds = u64::try_from(seconds + i64::from(leap)).ok()?;
    SystemTime::UNIX_EPOCH
        .checked_add(std::time::Duration::new(seconds, time.nanosecond))
        .filter(|t| expiry_in_range(*t))
}

/// Why an expiry with a second 60 elsewhere than at a UTC day's end is
/// refused.
pub const LEAP_ONLY: &str = "a second 60 (a leap second) is taken only at the end of a UTC day (23:59:60Z, or the same instant at another offset), from 1970 to 9999";

/// Whether `dt` has a second 60 where no leap second goes: not in the
/// last second of a UTC day (a leap second there past the range is out of
/// range, not misplaced), in an expiry that is valid with second 59 (one
/// without an offset, or a time without a date, is wrong for that, and was
/// told about leap seconds; probe 152).
pub fn misplaced_leap_second(dt: &toml::value::Datetime) -> bool {
    let Some(time) = dt.time.filter(|t| t.second == 60) else { return false };
    let mut at59 = *dt;
    at59.time = Some(toml::value::Time { second: 59, ..time });
    to_system_time(&at59).is_some_and(|t| !ends_a_utc_day(t))
}

/// Whether `t` is within the last second of a UTC day, where a leap second
/// (`23:59:60Z`, or the same instant at another offset) follows.
fn ends_a_utc_day(t: SystemTime) -> bool {
    t.duration_since(SystemTime::UNIX_EPOCH).is_ok_and(|d| d.as_secs() % 86_400 == 86_399)
}

/// Whether an expiry, in UTC, lies from 1970-01-01T00:00:00Z to
/// 9999-12-31T23:59:59Z: what RFC 3339 (four-digit years) and the time
/// formatting of `users list` can show. `1970-01-01T00:00:00+01:00` (before
/// the epoch in UTC) and `9999-12-31T23:59:59-23:59` (in year 10000) made
/// `users list` panic.
pub fn expiry_in_range(t: SystemTime) -> bool {
    const LAST: u64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    t.duration_since(SystemTime::UNIX_EPOCH).is_ok_and(|d| d.as_secs() <= LAST)
}

/// The hash scheme and costs most users have, for the dummy hash; of
/// those that tie, the least work ([`Costs::work`]). (The costliest won
/// a tie: one user imported at the largest cost allowed, beside one at the
/// usual cost, made every login with an unknown name, which anyone can
/// send, cost 4 GiB and seconds, and so every `check` and reload: probe
/// 83. bcrypt users were not counted: probe 131.)
pub fn common_costs(users: &[User]) -> Option<Costs> {
    let mut counts: HashMap<Costs, usize> = HashMap::new();
    for u in users {
        if let Some(c) = u.costs() {
            *counts.entry(c).or_default() += 1;
        }
    }
    counts.into_iter().max_by_key(|(k, n)| (*n, std::cmp::Reverse((k.work(), *k)))).map(|(k, _)| k)
}

/// The names a users file uses for its tables and settings.
const NAMES: [&str; 5] = ["users", "password", "groups", "disabled", "expires"];

/// `message` (from the TOML parser or serde) with the keys it quotes left
/// out unless they are, or are close to, the name of a setting (a typo:
/// `pasword`), or are user names (a user defined twice). A password or hash
/// typed where a key belongs (`"$argon2id$…" = 1`, `hunter2 = 1`, a table
/// `[users.a.S3cret]`) must not be echoed, and a reload logs the message.
/// The keys are written as they are, so a backtick in one ends the quote
/// early: a key runs to the last of the texts that can follow it.
fn without_secret_keys(message: &str, line: Option<&str>, header: Option<&str>) -> String {
    without_keys(message, line, header, near_a_name)
}

/// A users file problem about a value, whose `owner` (user, key) is known
/// or not: a type error is told with them (``user `alice`: expires:
/// invalid type: …``), a date-time is told to drop its quotes only when it
/// has them, and a table where a date-time belongs is not toml's "expected
/// field with custom name" (it named neither user nor key; probe 161).
fn typed_value_problem(message: &str, owner: Option<(String, &str)>) -> String {
    let message = match message {
        // (toml's words for a table there, with keys or without.)
        "expected field with custom name" | "datetime key not found" => {
            "invalid type: a table, expected a date-time (such as 2027-03-31)".to_owned()
        }
        m if m.starts_with("invalid type: a string") => m.to_owned(),
        m if m.starts_with("invalid type: ") => {
            m.replace("(written without quotes: 2027-03-31)", "(such as 2027-03-31)")
        }
        m => return m.to_owned(),
    };
    match owner {
        Some((name, key)) if !name.is_empty() && !may_hold_a_password(&name) => {
            format!("user `{}`: {key}: {message}", crate::telemetry::sanitize_username(&name))
        }
        Some((_, key)) => format!("{key}: {message}"),
        None => message,
    }
}

/// The user and the key of the value of the users file `doc` that holds
/// byte `at`, as TOML reads the file (a search of the text for `KEY =`
/// found one in a comment, a string or a value, and a user in a multi-line
/// string; probe 164). `None` unless it is certain.
fn value_owner(doc: &Toml, at: usize) -> Option<(String, &'static str)> {
    const KEYS: [&str; 4] = ["password", "groups", "disabled", "expires"];
    let users = doc.get("users")?.as_table_like()?;
    users.iter().find_map(|(name, user)| {
        let user = user.as_table_like()?;
        // (A table where a value belongs, `password.x = …` or
        // `[users.bob.password]`, by its keys or header; probe 272.)
        let key = KEYS.into_iter().find(|k| {
            user.get_key_value(k).is_some_and(|(key, item)| {
                key.span().is_some_and(|s| s.contains(&at)) || super::toml_terms::item_holds(item, at, 2)
            })
        })?;
        Some((name.to_owned(), key))
    })
}

/// The user whose table has a key at byte `at` of the users file `doc`
/// (an unknown key, `pasword = …`, in `[users.bob]`, `bob = { … }` or
/// `bob.pasword`), as TOML reads the file. `None` unless it is certain.
fn key_owner(doc: &Toml, at: usize) -> Option<String> {
    let users = doc.get("users")?.as_table_like()?;
    users.iter().find_map(|(name, user)| {
        let user = user.as_table_like()?;
        let here = |key: &str| {
            user.get_key_value(key).and_then(|(key, _)| key.span()).is_some_and(|s| s.contains(&at))
        };
        user.iter().any(|(key, _)| here(key)).then(|| name.to_owned())
    })
}

/// `message` with the keys it quotes (and the tables it names) left out
/// unless `shown` says a key may be shown (or, in the users file, it is a
/// user's name); see [`without_secret_keys`].
pub(super) fn without_keys(
    message: &str,
    line: Option<&str>,
    header: Option<&str>,
    shown: fn(&str) -> bool,
) -> String {
    const OPENINGS: [&str; 3] = ["unknown field `", "duplicate key `", "dotted key `"];
    const CLOSINGS: [&str; 4] =
        ["` in table `", "` in document root", "` attempted to extend", "`, expected"];
    let Some((at, opening)) =
        OPENINGS.iter().filter_map(|o| message.find(o).map(|at| (at, *o))).min_by_key(|(at, _)| *at)
    else {
        return message.to_owned();
    };
    let inside = &message[at + opening.len()..];
    let end = CLOSINGS
        .iter()
        .filter_map(|c| inside.rfind(c))
        .max()
        .or_else(|| inside.strip_suffix('`').map(str::len));
    let (key, rest) = match end {
        Some(end) => (&inside[..end], &inside[end + 1..]),
        None => (inside, ""),
    };
    // `in table `users.a.S3cret`` names the tables a key is in: beyond the
    // user's, their names are keys too.
    let (rest, table) = match rest.strip_prefix(" in table `").and_then(|t| t.rsplit_once('`')) {
        Some((table, after)) => (after, Some(table)),
        None => (rest, None),
    };
    // A key the parser places in `users` is a user's name only where the
    // line defines one: `[users.KEY]`, or `KEY = …` in `[users]` (`KEY.x =
    // …` is a key of that user's, which the parser places in `users` too,
    // and so is a key in `[[users]]`).
    // (The header read as TOML reads it: `[users."alice"]` and `[users
    // .alice]` name `alice` too, and were not shown; probe 190.)
    let user_name = table == Some("users")
        && line.map(str::trim_start).is_some_and(|l| {
            table_path(l)
                .is_some_and(|p| p.len() == 2 && p[0] == "users" && Some(&p[1]) == read_key(key).as_ref())
                || (header.and_then(table_path).is_some_and(|p| p == ["users"])
                    && l.split_once('=')
                        .is_some_and(|(k, _)| read_key(k.trim()).is_some_and(|k| read_key(key) == Some(k))))
        });
    // A table's name is keys too: beyond `users` and the user's name, or
    // all of it outside `users`; and the user's name is shown only when it
    // could be one (`users.alice:S3cret`, `users.$argon2id$…` were quoted
    // whole; probe 155).
    let table_shown = table.map(|t| {
        let mut segments = t.split('.');
        let hidden = match segments.next() {
            Some("users") => {
                segments.next().is_some_and(may_hold_a_password) || segments.any(|segment| !shown(segment))
            }
            _ => t.split('.').any(|segment| !shown(segment)),
        };
        if hidden { " in a table whose name is not shown".to_owned() } else { format!(" in table `{t}`") }
    });
    let kind = &opening[..opening.len() - 2];
    // (A user's name only when it could be one: `[users."alice:S3cret"]`
    // defined twice is a password typed as a name, twice.)
    // (The name as TOML reads it: the message writes a control character
    // escaped, `"b0b\tS3cret"`, and the name was shown; probe 315.)
    let read = read_key(key);
    let key_shown = if (user_name && !may_hold_a_password(read.as_deref().unwrap_or(key))) || shown(key) {
        format!("{kind} `{key}`")
    } else {
        let kind = kind.replace("field", "key");
        format!("{kind} (not shown: not a setting name, and it may be a secret)")
    };
    format!("{}{key_shown}{}{rest}", &message[..at], table_shown.unwrap_or_default())
}

/// Whether `key` is one of [`NAMES`] or differs from one by at most two
/// letters (a typo), in lowercase ASCII.
fn near_a_name(key: &str) -> bool {
    key.len() <= 12
        && key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && NAMES.iter().any(|name| strsim::levenshtein(key, name) <= 2)
}

/// `message` with the values serde quotes (`invalid type: string "…",
/// expected a boolean`, ``integer `31415926` ``, ``boolean `true` ``) left
/// out: in the users file such a value may be a password or hash typed under
/// the wrong key (a password of digits typed without quotes is an integer),
/// and a reload logs the message.
fn without_values(message: &str) -> String {
    // How serde's `Unexpected` writes a value, and what is shown instead.
    const KINDS: [(&str, char, &str); 5] = [
        ("string \"", '"', "a string"),
        ("integer `", '`', "an integer"),
        ("floating point `", '`', "a number"),
        ("boolean `", '`', "a boolean"),
        ("character `", '`', "a character"),
    ];
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some((at, (opening, close, shown))) =
        KINDS.iter().filter_map(|k| rest.find(k.0).map(|at| (at, k))).min_by_key(|(at, _)| *at)
    {
        out.push_str(&rest[..at]);
        out.push_str(shown);
        let inside = &rest[at + opening.len()..];
        // The closing mark is the first one not escaped (serde writes a
        // string as Rust's `Debug` does); none: the rest is the value.
        let mut escaped = false;
        let end = inside
            .char_indices()
            .find(|&(_, ch)| {
                let closes = ch == *close && !escaped;
                escaped = ch == '\\' && !escaped;
                closes
            })
            .map_or(inside.len(), |(i, _)| i + 1);
        rest = &inside[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The users `parse` reads from the users file `body`, and its
    /// problems as `check` prints them.
    fn problems_of(body: &str) -> (Vec<User>, Vec<String>) {
        let (users, problems) = parse(Path::new("users.toml"), body, Path::new(super::super::DEFAULT_PATH));
        (users, problems.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn a_value_of_the_wrong_type_is_named_as_toml_names_it() {
        let hash = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA";
        for (body, said) in [
            ("password = 1979-05-27".to_string(), "invalid type: a date or time, expected a string"),
            ("password = 1979-05-27T07:32:00Z".into(), "invalid type: a date or time, expected a string"),
            ("password = 07:32:00".into(), "invalid type: a date or time, expected a string"),
            ("password = [ \"x\" ]".into(), "invalid type: an array, expected a string"),
            ("password = { a = \"x\" }".into(), "invalid type: an inline table, expected a string"),
            ("password.SECRET = \"v\"".into(), "invalid type: a table, expected a string"),
            ("password = 31415926".into(), "invalid type: an integer, expected a string"),
            ("password = 0x1e".into(), "invalid type: an integer, expected a string"),
            ("password = -3.5e2".into(), "invalid type: a floating-point number, expected a string"),
            ("password = -inf".into(), "invalid type: a floating-point number, expected a string"),
            ("password = true".into(), "invalid type: a boolean, expected a string"),
            (
                format!("password = \"{hash}\"\ngroups = [1979-05-27]"),
                "invalid type: a date or time, expected a string",
            ),
            (format!("password = \"{hash}\"\ngroups = \"x\""), "invalid type: a string, expected an array"),
            ("password.\"x\" = \"s\"".into(), "invalid type: a table, expected a string"),
            ("[users.a.password]\nx = 1".into(), "invalid type: a table, expected a string"),
            ("password = [[1], [2]]".into(), "invalid type: an array, expected a string"),
        ] {
            let (_, problems) = parse(
                Path::new("users.toml"),
                &format!("[users.a]\n{body}\n"),
                Path::new(super::super::DEFAULT_PATH),
            );
            let shown: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
            // (After the user and key, where the value is named.)
            assert!(shown.len() == 1 && shown[0].ends_with(said), "{body}: {shown:?}");
        }
    }

    #[test]
    fn a_value_under_the_wrong_key_is_not_quoted_in_the_problem() {
        let source = "[users.alice]\npassword = \"$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA\"\ndisabled = \"s3cr3t \\\" pw\"\n";
        let (users, shown) = problems_of(source);
        assert!(users.is_empty());
        assert_eq!(shown.len(), 1, "{shown:?}");
        assert!(!shown[0].contains("s3cr3t") && !shown[0].contains(" pw"), "{shown:?}");
        assert!(
            shown[0].contains(
                "users.toml:3:12: user `alice`: disabled: invalid type: a string, expected a boolean"
            ),
            "{shown:?}"
        );
    }

    /// A name with a backslash is shown one way in every problem about it,
    /// with the backslash doubled: it was raw in the problems about a value
    /// (`password`, a group, `expires`) and doubled in those about a type.
    #[test]
    fn a_backslash_in_a_name_is_shown_alike_in_every_problem() {
        let source = "[users.\"ev\\\\il\"]\npassword = \"not a hash\"\n[users.\"b\\\\ob\"]\npassword = 1\n";
        let (users, shown) = problems_of(source);
        assert!(users.is_empty());
        assert_eq!(shown.len(), 2, "{shown:?}");
        assert!(
            shown.iter().any(|p| p.contains("user `ev\\\\il`: password: not a valid PHC string")),
            "{shown:?}"
        );
        assert!(shown.iter().any(|p| p.contains("user `b\\\\ob`: password: invalid type")), "{shown:?}");
    }

    /// A key no user has names the user whose table it is in, however the
    /// table is written, unless the name may be a password (probe 197).
    #[test]
    fn an_unknown_key_names_its_user() {
        let hash = FULL_HASH;
        for (body, said) in [
            (
                format!(
                    "[users.alice]\npassword = \"{hash}\"\n[users.bob]\npassword = \"{hash}\"\npasword = 1"
                ),
                "users.toml:5:1: user `bob`: unknown field `pasword`, expected one of `password`",
            ),
            (
                format!(
                    "[users]\nalice = {{ password = \"{hash}\" }}\nbob = {{ password = \"{hash}\", grups = [] }}"
                ),
                "users.toml:3:117: user `bob`: unknown field `grups`",
            ),
            (
                format!("[users]\nbob.password = \"{hash}\"\nbob.disabeld = true"),
                "users.toml:3:5: user `bob`: unknown field `disabeld`",
            ),
            (
                format!("[users.\"ev\\\\il\"]\npassword = \"{hash}\"\nhunter2hunter2 = true"),
                "users.toml:3:1: user `ev\\\\il`: unknown key (not shown",
            ),
        ] {
            let (_, shown) = problems_of(&body);
            assert!(shown.len() == 1 && shown[0].starts_with(said), "{body}: {shown:?}");
        }
        // An empty name is not shown as ``user ``: `` (probe 200).
        let (_, shown) = problems_of(&format!("[users.\"\"]\npassword = \"{hash}\"\npasword = 1"));
        assert!(
            shown.len() == 1 && shown[0].starts_with("users.toml:3:1: unknown field `pasword`"),
            "{shown:?}"
        );
        let (_, shown) = problems_of("[users.\"\"]\npassword = 1");
        assert!(
            shown.len() == 1 && shown[0].starts_with("users.toml:2:12: password: invalid type"),
            "{shown:?}"
        );
        // A name that may be a password is still not shown: with a `:`,
        // long only in NFC (46 characters as typed, 86 in NFC: U+0958 is
        // two), or a PHC string without its first `$` (probe 200).
        let long_in_nfc = format!("S3cret{}", "\u{958}".repeat(40));
        let body = format!(
            "[users.\"{long_in_nfc}\"]\npassword = \"{hash}\"\npasword = 1\n[users.bob]\npassword = 1"
        );
        let (_, shown) = problems_of(&body);
        assert!(shown.len() == 2 && shown.iter().all(|p| !p.contains("S3cret")), "{shown:?}");
        let body = format!(
            "[users.\"argon2id$v=19$m=8,t=1,p=1$S3cretsalt$aGFzaA\"]\npassword = \"{hash}\"\npasword = 1"
        );
        let (_, shown) = problems_of(&body);
        assert!(shown.len() == 1 && !shown[0].contains("S3cret"), "{shown:?}");
        let body = format!("[users.\"b0b:S3cret\"]\npassword = \"{hash}\"\npasword = 1");
        let (_, shown) = problems_of(&body);
        assert!(
            !shown.is_empty() && shown.iter().all(|p| !p.contains("S3cret") && !p.contains("b0b")),
            "{shown:?}"
        );
    }

    /// A line that starts with `[` inside a multi-line string is no
    /// header: the table left out after a bad key ends where TOML says. The
    /// rest of the string was read as a user of its own, with problems of
    /// its own, or its keys blamed on the user before it (probe 200).
    #[test]
    fn a_table_left_out_ends_where_toml_says() {
        let bob = format!("[users.bob]\npassword = \"{FULL_HASH}\"\n");
        for (string, said) in [
            ("[users.Tr0ub4dor]\ngroups = [] # ", "users.toml:2:1: user `alice`: unknown field `pasword`"),
            ("[users.Tr0ub4dor]\npassw0rd = 1 # ", "users.toml:2:1: user `alice`: unknown field `pasword`"),
            ("[users.x]\ngroups = [1] # ", "users.toml:2:1: user `alice`: unknown field `pasword`"),
            ("\ngroups = 1\n", "users.toml:2:1: user `alice`: unknown field `pasword`"),
        ] {
            let body = format!(
                "[users.alice]\npasword = 1\npassword = \"\"\"\n{string}\"\"\"\n{bob}[users.carol]\npassword = 5\n"
            );
            let (_, shown) = problems_of(&body);
            assert!(shown.len() == 2 && shown[0].starts_with(said), "{body}: {shown:?}");
            assert!(
                shown[1].contains("user `carol`: password: invalid type: an integer"),
                "{body}: {shown:?}"
            );
        }
    }

    #[test]
    fn a_password_of_digits_typed_without_quotes_is_not_shown() {
        let (users, problems) = parse(
            Path::new("users.toml"),
            "[users.bob]\npassword = 31415926\n",
            Path::new(super::super::DEFAULT_PATH),
        );
        assert!(users.is_empty());
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(!shown.is_empty() && shown.iter().all(|p| !p.contains("31415926")), "{shown:?}");
        assert!(
            shown[0].contains(
                "users.toml:2:12: user `bob`: password: invalid type: an integer, expected a string"
            ),
            "{shown:?}"
        );
    }

    /// A hash of the usual length (a 16-byte salt, a 32-byte hash).
    const FULL_HASH: &str =
        "$argon2id$v=19$m=8,t=1,p=1$9B5FgT2TkzMTLZUfWLtwuQ$KMQ5Os13iPGYeET0Gm5LSMQkiaEqzwLVneQV5GkH9UE";

    #[test]
    fn a_key_is_shown_only_when_it_is_near_a_setting_name_or_a_user_name() {
        let hash = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA";
        let user = format!("[users.a]\npassword = \"{hash}\"\n");
        for (body, secret, said) in [
            (format!("{user}\"{hash}\" = 1"), hash, "users.toml:3:1: user `a`: unknown key (not shown"),
            (
                format!("{user}hunter2hunter2 = true"),
                "hunter2",
                "users.toml:3:1: user `a`: unknown key (not shown",
            ),
            (
                format!("{user}\"a`b, expected x\" = 1"),
                "a`b",
                "users.toml:3:1: user `a`: unknown key (not shown",
            ),
            (format!("{user}\"S3cret\" = 1\n\"S3cret\" = 1"), "S3cret", "duplicate key (not shown"),
            (format!("{user}\"S3cret\" = 1\n\"S3cret\".x = 2"), "S3cret", "dotted key (not shown"),
            (format!("{user}[users.a.S3cret]\n[users.a.S3cret]"), "S3cret", "duplicate key (not shown"),
            (format!("{user}[users.a.S3cret]\nx = 1\nx = 2"), "S3cret", "in a table whose name is not shown"),
            (format!("{user}x = {{ \"S3cret\" = 1, \"S3cret\" = 2 }}"), "S3cret", "duplicate key (not shown"),
            (format!("[S3cret]\n[S3cret]\n{user}"), "S3cret", "duplicate key (not shown"),
            (
                format!("[users]\nb.password = \"{hash}\"\nb.Hunter2 = 1\nb.Hunter2 = 2"),
                "Hunter2",
                "duplicate key (not shown: not a setting name, and it may be a secret) in table `users`",
            ),
            (format!("[TopS3cret]\nx = 1\nx = 2\n{user}"), "TopS3cret", "in a table whose name is not shown"),
            (
                format!("[\"hunter2pass\".y]\nx = 1\nx = 2\n{user}"),
                "hunter2pass",
                "in a table whose name is not shown",
            ),
            ("[[users]]\nhunter2x = 1\nhunter2x = 2".into(), "hunter2x", "duplicate key (not shown"),
            // A user's name, but one no user can have: `name:password`.
            (
                format!("{user}[users.\"b0b:S3cret\"]\n[users.\"b0b:S3cret\"]"),
                "S3cret",
                "duplicate key (not shown",
            ),
            (format!("{user}[users.\"B0b S\"]\n[users.\"B0b S\"]"), "B0b S", "duplicate key (not shown"),
            // A control character, which the message writes escaped
            // (`"b0b\tS3cret"`): the name was shown (probe 315).
            (
                format!("{user}[users.\"b0b\\tS3cret\"]\n[users.\"b0b\\tS3cret\"]"),
                "S3cret",
                "duplicate key (not shown",
            ),
            (
                format!("{user}[users]\n\"b0b\\u007fS3cret\" = {{}}\n\"b0b\\u007fS3cret\" = 1"),
                "S3cret",
                "duplicate key (not shown",
            ),
            // (In the name of a table, it was not.)
            (
                format!("{user}[users.\"b0b\\rS3cret\"]\ngroups = []\ngroups = []"),
                "S3cret",
                "in a table whose name is not shown",
            ),
            // A key twice in the table of a user whose name is a password
            // or a hash: the table was named (probe 155).
            (
                format!("{user}[users.\"b0b:S3cret\"]\ngroups = []\ngroups = []"),
                "S3cret",
                "in a table whose name is not shown",
            ),
            (
                format!("{user}[users.\"{FULL_HASH}\"]\ndisabled = true\ndisabled = true"),
                "9B5FgT2TkzMTLZUfWLtwuQ",
                "in a table whose name is not shown",
            ),
            (
                format!("{user}[users.\"my pass phrase\"]\npassword = \"{hash}\"\ngroups = []\ngroups = []"),
                "pass phrase",
                "in a table whose name is not shown",
            ),
        ] {
            let (users, shown) = problems_of(&body);
            assert!(users.is_empty());
            assert_eq!(shown.len(), 1, "{shown:?}");
            assert!(!shown[0].contains(secret), "{shown:?}");
            assert!(shown[0].contains(said), "{shown:?}");
        }
        // Typos, settings and user names are shown.
        for (body, said) in [
            (format!("{user}pasword = 1"), "unknown field `pasword`, expected one of `password`"),
            (format!("{user}groups = []\ngroups = []"), "duplicate key `groups` in table `users.a`"),
            (
                format!("{user}[users.\"B0b.S\"]\n[users.\"B0b.S\"]"),
                "duplicate key `\"B0b.S\"` in table `users`",
            ),
            (
                format!("[users]\nbob = {{ password = \"{hash}\" }}\nbob = 1"),
                "duplicate key `bob` in table `users`",
            ),
            // A name written another way the second time (probe 190).
            (format!("{user}[users.\"a\"]"), "duplicate key `a` in table `users`"),
            (format!("{user}[users .a]"), "duplicate key `a` in table `users`"),
            (
                format!("[users.\"caf\u{e9}\"]\npassword = \"{hash}\"\n[users.\"caf\\u00e9\"]"),
                "duplicate key `\"caf\u{e9}\"` in table `users`",
            ),
            (
                format!("[users]\nbob = {{ password = \"{hash}\" }}\n\"bob\" = 1"),
                "duplicate key `bob` in table `users`",
            ),
        ] {
            let (_, shown) = problems_of(&body);
            assert!(shown.iter().any(|p| p.contains(said)), "{body}: {shown:?}");
        }
    }

    #[test]
    fn quoted_values_are_left_out_whatever_they_hold() {
        assert_eq!(
            without_values(r#"invalid type: string "a\"b", expected x"#),
            "invalid type: a string, expected x"
        );
        assert_eq!(without_values(r#"string "x\\" then "y""#), r#"a string then "y""#);
        assert_eq!(without_values(r#"cut string "abc"#), "cut a string");
        assert_eq!(without_values("no value here"), "no value here");
        assert_eq!(
            without_values("invalid type: integer `31415926`, expected a string"),
            "invalid type: an integer, expected a string"
        );
        assert_eq!(
            without_values("floating point `3.5`, boolean `true`, character `x`, string \"s\""),
            "a number, a boolean, a character, a string"
        );
    }

    /// The dummy hash's parameters are those most users have; of a tie,
    /// the cheapest: one user imported at the largest cost allowed beside
    /// one at the usual cost does not make every unknown name cost 4 GiB.
    #[test]
    fn the_dummy_takes_the_cheapest_of_the_most_common_parameters() {
        let file = |costs: &[&str]| {
            costs
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    format!(
                        "[users.u{i}]\npassword = \"$argon2id$v=19${c}$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\"\n"
                    )
                })
                .collect::<String>()
        };
        let common = |costs: &[&str]| {
            let (users, problems) =
                parse(Path::new("users.toml"), &file(costs), Path::new(super::super::DEFAULT_PATH));
            assert!(problems.is_empty(), "{problems:?}");
            match common_costs(&users).unwrap() {
                Costs::Argon2 { m, t, p } => (m, t, p),
                Costs::Bcrypt { cost } => panic!("bcrypt {cost}"),
            }
        };
        assert_eq!(common(&["m=4194304,t=100,p=1", "m=8,t=1,p=1"]), (8, 1, 1));
        assert_eq!(common(&["m=8,t=1,p=1", "m=4194304,t=100,p=1"]), (8, 1, 1));
        assert_eq!(common(&["m=19456,t=2,p=1", "m=65536,t=3,p=4", "m=65536,t=3,p=4"]), (65536, 3, 4));
    }

    /// bcrypt users count too (imported from htpasswd): most users bcrypt,
    /// the dummy is bcrypt at their most common cost, so that an unknown
    /// name costs what a known one does (an argon2 dummy told them apart:
    /// 14 ms against 56, probe 131). A tie goes to the least work.
    #[test]
    fn bcrypt_users_count_for_the_dummy() {
        let bcrypt = |cost: u32| bcrypt::hash("pw", cost).unwrap();
        let argon = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".to_owned();
        let costs = |hashes: &[String]| {
            let file: String = hashes
                .iter()
                .enumerate()
                .map(|(i, h)| format!("[users.u{i}]\npassword = \"{h}\"\n"))
                .collect();
            let (users, problems) =
                parse(Path::new("users.toml"), &file, Path::new(super::super::DEFAULT_PATH));
            assert!(problems.is_empty(), "{problems:?}");
            common_costs(&users).unwrap()
        };
        assert_eq!(costs(&[bcrypt(5), bcrypt(5), argon.clone()]), Costs::Bcrypt { cost: 5 });
        assert_eq!(costs(&[bcrypt(6), bcrypt(4), bcrypt(6)]), Costs::Bcrypt { cost: 6 });
        assert_eq!(costs(&[bcrypt(6), bcrypt(4)]), Costs::Bcrypt { cost: 4 });
        assert_eq!(costs(&[bcrypt(4), argon]), Costs::Argon2 { m: 8, t: 1, p: 1 });
        // A tie across schemes goes to the least work: one argon2 user at
        // a high cost beside one bcrypt user set every unknown name's cost
        // (probe 133).
        let costly = "$argon2id$v=19$m=65536,t=4,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".to_owned();
        assert_eq!(costs(&[costly.clone(), bcrypt(4)]), Costs::Bcrypt { cost: 4 });
        assert_eq!(costs(&[bcrypt(4), costly]), Costs::Bcrypt { cost: 4 });
    }

    /// A user's groups are kept once each, in their order, compared after
    /// NFC.
    #[test]
    fn a_users_groups_are_kept_once_each_in_order() {
        let src = "[users.a]\npassword = \"$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\"\ngroups = [\"b\", \"caf\\u00e9\", \"a\", \"b\", \"cafe\\u0301\"]\n";
        let (users, problems) = parse(Path::new("users.toml"), src, Path::new(super::super::DEFAULT_PATH));
        assert!(problems.is_empty(), "{problems:?}");
        let groups: Vec<&str> = users[0].groups.iter().map(|g| &**g).collect();
        assert_eq!(groups, ["b", "caf\u{e9}", "a"]);
    }
}
