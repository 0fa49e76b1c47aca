//! Config problems with their file, line and column.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem in a config or users file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line, 0 when the problem concerns the whole file.
    pub line: usize,
    /// 1-based column, 0 when the problem concerns the whole file.
    pub col: usize,
    /// What is wrong, never including a password hash or secret.
    pub message: String,
}

/// One line, whatever the config held: control characters in the file name
/// or the message (both can quote the config: a path, a method, a host
/// pattern) are written escaped (`\n`, `\u{1b}`), and so are invisible and
/// direction-changing ones (`\u{202e}`), so that a value cannot break a
/// problem in two, forge another, reorder what a terminal shows, or send a
/// terminal escape sequence to whoever runs `authgate check`.
impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&shown_path(&self.file))?;
        if self.line != 0 {
            write!(f, ":{}:{}", self.line, self.col)?;
        }
        f.write_str(": ")?;
        f.write_str(&shown(&self.message))
    }
}

/// `text` for a terminal, on one line: control characters (line ends
/// included), Unicode spaces, and the invisible or direction-changing
/// characters that user names may not hold written as escapes (`\n`,
/// `\u{1b}`, `\u{a0}`, `\u{202e}`); text without them, nearly all, is
/// returned as it is.
pub fn shown(text: &str) -> Cow<'_, str> {
    escaped(text, odd)
}

/// A character [`shown`] writes as an escape.
fn odd(c: char) -> bool {
    c.is_control() || crate::telemetry::hidden(c) || unusual_space(c)
}

/// Whether toml's message is about an escape in a string (`"\é"`,
/// `"\u“abc"`): the character there is not the problem (probe 306).
fn in_escape(msg: &str) -> bool {
    msg.contains("escape") || msg.contains("unicode")
}

/// Quotes of typeset text (curly, low, primes, angle, full-width), which
/// pasted text brings where TOML takes `"` or `'`.
fn typographic_quote(ch: char) -> bool {
    matches!(
        ch,
        '\u{AB}'
            | '\u{BB}'
            | '\u{2018}'..='\u{201F}'
            | '\u{2032}'
            | '\u{2033}'
            | '\u{2039}'
            | '\u{203A}'
            | '\u{301D}'..='\u{301F}'
            | '\u{FF02}'
            | '\u{FF07}'
    )
}

/// A space other than the ASCII ones (U+00A0 no-break space, U+2000 to
/// U+200A, U+3000 ...): it looks like a space, or like nothing, in a
/// message (`localhost ` for `localhost\u{a0}`; probe 230).
fn unusual_space(c: char) -> bool {
    c.is_whitespace() && !c.is_ascii()
}

/// A path for a terminal, as [`shown`] writes text (a path can hold any
/// byte but `/` and NUL); a byte that is not UTF-8 as `\xff`: as U+FFFD,
/// two paths that differ there looked the same, and neither could be typed
/// back (probe 323). A backslash is doubled, so that an escape is never
/// the same as the text it stands for (`d\xff` typed showed as the byte
/// 0xff did; probe 329).
pub fn shown_path(path: &Path) -> String {
    let mut out = String::new();
    for chunk in path.as_os_str().as_encoded_bytes().utf8_chunks() {
        out.push_str(&escaped(chunk.valid(), |c| c == '\\' || odd(c)));
        for b in chunk.invalid() {
            // (Writing to a `String` cannot fail.)
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// `authgate SUB` for a message to suggest, with `--config` when `config`
/// is not the default one: a command suggested without it acts on another
/// configuration (probe 160). A path that begins with `-` is glued to the
/// option (`--config=-a.toml`: apart, it would be read as an option; probe
/// 161). The path is its bytes, whatever they are (one not UTF-8 was shown
/// with U+FFFD in their place, another file; probe 164).
pub fn command(config: &Path, sub: &str) -> String {
    if config == Path::new(super::DEFAULT_PATH) {
        format!("authgate {sub}")
    } else {
        let path = config.as_os_str().as_encoded_bytes();
        let glue = if path.starts_with(b"-") { "=" } else { " " };
        format!("authgate --config{glue}{} {sub}", shell_bytes(path))
    }
}

/// `text` as one word for a POSIX shell (see `shell_bytes`).
pub fn shell_word(text: &str) -> String {
    shell_bytes(text.as_bytes())
}

/// `bytes` as one word for a POSIX shell: as they are when they are
/// characters no shell reads specially; in single quotes when they are
/// text a terminal shows as it is; otherwise in `$'…'` (POSIX.1-2024, bash,
/// zsh, ksh), each control or invisible character (as [`shown`] picks
/// them) and each byte that is not UTF-8 written as `\x` escapes. (In
/// single quotes, a tab or a line end reached the terminal raw or was
/// escaped by [`shown`] into another name; an invisible letter, U+3164, was
/// taken as plain; probes 161, 164.)
fn shell_bytes(bytes: &[u8]) -> String {
    let raw = |c: char| c.is_control() || crate::telemetry::hidden(c);
    let plain = |c: char| c.is_alphanumeric() || "-_.@+=%,/:".contains(c);
    let text = std::str::from_utf8(bytes).ok();
    match text {
        Some(t) if !t.chars().any(raw) => {
            // (A leading `=` is a command's path to zsh.)
            return if !t.is_empty() && !t.starts_with('=') && t.chars().all(plain) {
                t.to_owned()
            } else {
                format!("'{}'", t.replace('\'', r"'\''"))
            };
        }
        _ => {}
    }
    let mut out = String::from("$'");
    let escape = |out: &mut String, bytes: &[u8]| {
        for b in bytes {
            out.push_str(&format!("\\x{b:02x}"));
        }
    };
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' | '\'' => {
                    out.push('\\');
                    out.push(c);
                }
                // Its UTF-8 bytes: `\u` depends on the locale (bash in the C
                // locale kept `\u202E` as text).
                c if raw(c) => escape(&mut out, c.encode_utf8(&mut [0; 4]).as_bytes()),
                c => out.push(c),
            }
        }
        escape(&mut out, chunk.invalid());
    }
    out.push('\'');
    out
}

/// Text of several lines for a terminal: as [`shown`], but its line ends
/// are kept.
pub fn shown_lines(text: &str) -> Cow<'_, str> {
    escaped(text, |c| (c.is_control() && c != '\n') || crate::telemetry::hidden(c))
}

/// `text` with each character `hide` picks written as its escape
/// (`\n`, `\u{1b}`); borrowed when there is none.
pub(crate) fn escaped(text: &str, hide: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !text.chars().any(&hide) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if hide(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Every problem found while loading, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// All problems, in file order.
    pub problems: Vec<Problem>,
    /// The other files the refused config names (its users file, TLS
    /// certificates and keys, CA file), with their stamps from before they
    /// were read, when it was read that far: a reload watches them until
    /// one loads (see `server::reload`).
    pub named: Vec<(std::path::PathBuf, super::file::Stamp)>,
}

impl ConfigError {
    /// An error of these problems.
    pub fn new(problems: Vec<Problem>) -> Self {
        ConfigError { problems, named: Vec::new() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Collects problems for one source file, turning byte spans into line:col.
pub struct Collector<'a> {
    file: &'a Path,
    source: &'a str,
    /// Problems found so far.
    pub problems: Vec<Problem>,
    /// Where each line of `source` starts, made at the first problem: a
    /// line:col counted from the top for each problem made a file with many
    /// problems quadratic (40,000 bad entries: 52 s).
    line_starts: std::cell::OnceCell<Vec<usize>>,
    /// The places already counted, by offset: (line, col). A problem
    /// counts its column on from the nearest one before it on its line.
    /// Counted from the line's start each time, 400,000 bad items on one
    /// line took `check` 17 s, and a reload as long (probe 147); counted
    /// on from the last problem only, problems placed out of order (a
    /// rule's keys in another order than they are checked) still did
    /// (probe 149).
    known: std::collections::BTreeMap<usize, (usize, usize)>,
}

impl<'a> Collector<'a> {
    /// The problems found, in file order (values are checked section by
    /// section, not in the order they are written).
    pub fn into_problems(mut self) -> Vec<Problem> {
        self.problems.sort_by_key(|p| (p.line, p.col));
        self.problems
    }

    /// A collector for `source`, read from `file`.
    pub fn new(file: &'a Path, source: &'a str) -> Self {
        Collector {
            file,
            source,
            problems: Vec::new(),
            line_starts: std::cell::OnceCell::new(),
            known: std::collections::BTreeMap::new(),
        }
    }

    /// Where each line of the source starts.
    fn line_starts(&self) -> &[usize] {
        self.line_starts.get_or_init(|| starts_of_lines(self.source))
    }

    /// The line of byte `offset` of the source, as [`line_col`] counts it,
    /// without counting the lines from the top each time: a problem that
    /// names another line (a user's twin), counted so, made a users file
    /// with 30,000 twins take `check` 73 s (probe 336).
    pub fn line_of(&self, offset: usize) -> usize {
        let offset = offset.min(self.source.len());
        self.line_starts().partition_point(|&start| start <= offset).max(1)
    }

    /// Records a problem at byte `span` of the source.
    pub fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        let starts = self.line_starts.get_or_init(|| starts_of_lines(self.source));
        let offset = span.start.min(self.source.len());
        let before = self.known.range(..=offset).next_back().map(|(&at, &(line, col))| (at, line, col));
        let (line, col) = line_col_in(self.source, starts, offset, before.unwrap_or((0, 0, 0)));
        self.known.insert(offset, (line, col));
        self.problems.push(Problem { file: self.file.to_path_buf(), line, col, message: message.into() });
    }

    /// Records a problem about the whole file.
    pub fn whole(&mut self, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.to_path_buf(),
            line: 0,
            col: 0,
            message: message.into(),
        });
    }

    /// Records a problem, where the bound is passed, when the file weighs
    /// more than is parsed (see `toml_terms::MAX_WEIGHT`); whether it did.
    /// `users` says the file is a users file, whose message tells how many
    /// users fit (a config file's said so too, of a file with no users).
    pub fn too_heavy(&mut self, users: bool) -> bool {
        let Some(at) = super::toml_terms::past_max_weight(self.source) else { return false };
        let fit = if users { "; about 113,000 users" } else { "" };
        self.at(
            at..at,
            format!(
                "too many keys, tables and items: past a weight of {} (a table 6, a dot 4, an inline \
                 table or an array 3, a key 2, a comma 1{fit}); not parsed, which would take about \
                 0.3 KB of memory for each",
                super::toml_terms::MAX_WEIGHT
            ),
        );
        true
    }

    /// Records a TOML syntax or type error.
    pub fn toml(&mut self, err: &toml::de::Error) {
        // toml's messages can span lines ("invalid table header" then
        // "duplicate key ..."); a problem is one line.
        let mut msg = err.message().trim().lines().map(str::trim).collect::<Vec<_>>().join(": ");
        // The parser says nothing of a control character where none is
        // allowed (in a comment, say: the problem was an empty message), or
        // something beside the point ("expected newline, `#`" for one in a
        // comment after a value, "invalid basic string" in a string): the
        // character is named. (Not a line end, where the parser's message
        // is about what came before it.)
        let rest = err.span().and_then(|span| self.source.get(span.start..)).unwrap_or_default();
        let at = rest.chars().next();
        // (A CR is a line end only before a LF: a lone one is named, probe 85.)
        let line_end = rest.starts_with('\n') || rest.starts_with("\r\n");
        match at {
            Some(ch) if ch.is_control() && ch != '\t' && !line_end => {
                msg = format!(
                    "control character U+{:04X} is not allowed here (TOML allows tab, and newlines between lines)",
                    u32::from(ch)
                );
                // A file saved as UTF-16 without a byte order mark reads as
                // text with a NUL after (or before) every ASCII character
                // (probe 230).
                let start = self.source.as_bytes().get(..2).unwrap_or_default();
                if ch == '\0' && start.contains(&0) {
                    msg.push_str("; the file looks like UTF-16: save it as UTF-8");
                }
            }
            // Pasted text brings spaces and marks that look like nothing:
            // the message pointed at a place where the admin saw nothing
            // wrong (`re\u{200b}alm = "x"`: "expected `.`, `=`"; probe 230).
            Some(ch) if unusual_space(ch) || super::invisible(ch) => {
                let what = if unusual_space(ch) { "a Unicode space" } else { "an invisible character" };
                msg = format!(
                    "{what}, U+{:04X}, is not allowed here (pasted text?); TOML takes a plain space or tab between items",
                    u32::from(ch)
                );
            }
            // Typographic quotes come with text pasted from a word
            // processor or a chat: "invalid string: expected `"`, `'`"
            // named neither (probe 300). Not after a backslash in a string,
            // where the escape is the problem and toml's message says so
            // (probe 305); nor, below, a letter there.
            Some(ch) if typographic_quote(ch) && !in_escape(&msg) => {
                msg = format!(
                    "a typographic quote, {ch} (U+{:04X}), is not a TOML quote (pasted text?): write \" or '",
                    u32::from(ch)
                );
            }
            // A letter that a key without quotes cannot have (`réalm`):
            // "expected `.`, `=`" (probe 300).
            Some(ch) if !ch.is_ascii() && ch.is_alphanumeric() && !in_escape(&msg) => {
                msg = format!(
                    "`{ch}` (U+{:04X}) is not allowed here: a key without quotes has only ASCII letters, digits, `-` and `_`, and a text value goes in quotes",
                    u32::from(ch)
                );
            }
            _ if msg.is_empty() => msg = "not valid TOML here".to_owned(),
            _ => {}
        }
        // A number written with a leading zero (`disabled = 0123`, `01.5`)
        // was "expected newline, `#`" just after the zero: the number is
        // named, at its start.
        let zero = err.span().and_then(|span| leading_zero(self.source, span.start));
        if zero.is_some() {
            msg = "a number may not start with 0 (TOML has no leading zeros: write 123, or 0o123 for octal)"
                .to_owned();
        }
        // An integer past i64 was "number too large to fit in target type",
        // with no setting and no range, where every other bad value names
        // both (probes 130, 133).
        if let Some(named) = number_out_of_range(self.source, err.span().map_or(0, |s| s.start), &msg) {
            msg = named;
        }
        // A date-time reaches serde as a map with one private key: where a
        // table belongs, the table's struct called it an unknown field.
        if msg.starts_with("unknown field `$__toml_private_datetime`") {
            msg = "invalid type: a date or time, expected a table".to_owned();
        }
        let found = err
            .span()
            .filter(|span| self.source.get(span.clone()).is_some())
            .map(|span| super::toml_terms::toml_kind(self.source, span.start));
        let mut msg = super::toml_terms::in_toml_terms(&msg, found);
        let mut span = zero.map(|at| at..at).or(err.span());
        if let Some(s) = span.as_mut().filter(|_| zero.is_none()) {
            // The parser places a string left open at the end of the file
            // (past its last line), and a bad escape after its letter: the
            // opening quotes, and the backslash (probe 147).
            let open = |delim: &str| opening(self.source, delim).filter(|_| s.start >= self.source.len());
            if msg.starts_with("invalid multiline basic string")
                && let Some(at) = open("\"\"\"")
            {
                (*s, msg) = (at..at, format!("{msg}: not closed (it opens here)"));
            } else if msg.starts_with("invalid multiline literal string")
                && let Some(at) = open("'''")
            {
                (*s, msg) = (at..at, format!("{msg}: not closed (it opens here)"));
            } else if (msg.starts_with("invalid escape sequence") || msg.starts_with("invalid unicode"))
                && let Some(at) = self.source.get(..s.start).and_then(|before| before.rfind('\\'))
            {
                *s = at..at;
            }
        }
        match span {
            Some(span) => self.at(span, msg),
            None => self.whole(msg),
        }
    }
}

/// Where a number starts whose leading `0` the parser stopped after, at
/// byte `at` of `source` (the next character a digit, or `_` and a digit):
/// `0123`, `-01`, `00`, `0_1`, `01.5`, as a value, in an array (on its
/// own line too) or an inline table. `None` anywhere else (a date-time's
/// `07:32` is past its zero).
fn leading_zero(source: &str, at: usize) -> Option<usize> {
    let before = source.get(..at)?.as_bytes();
    let mut after = source.get(at..)?.bytes();
    // A digit, or `_` and a digit (`0_` alone is a trailing underscore).
    let digits = match after.next()? {
        b'_' => after.next().is_some_and(|b| b.is_ascii_digit()),
        next => next.is_ascii_digit(),
    };
    let zero = at.checked_sub(1)?;
    let starts = |i: Option<usize>| {
        i.and_then(|i| before.get(i))
            .is_none_or(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'=' | b'[' | b',' | b'{'))
    };
    let signed = zero.checked_sub(1).and_then(|i| before.get(i)).is_some_and(|b| matches!(b, b'+' | b'-'));
    let first = if signed { zero.checked_sub(2) } else { zero.checked_sub(1) };
    (before.last() == Some(&b'0') && digits && starts(first)).then_some(if signed { zero - 1 } else { zero })
}

/// Where the string left open at the end of `source` opens: its last
/// `delim` (all after the opening one are the string's), not escaped, at
/// the start of its run of quotes (`\"\"\"\"` opens with the first three;
/// probe 149).
fn opening(source: &str, delim: &str) -> Option<usize> {
    let quote = delim.chars().next()?;
    let escaped = |at: usize| source[..at].chars().rev().take_while(|&c| c == '\\').count() % 2 == 1;
    let last =
        source.match_indices(delim).map(|(at, _)| at).filter(|&at| quote == '\'' || !escaped(at)).last()?;
    let run = source[..last].chars().rev().take_while(|&c| c == quote).count();
    Some(last - run * quote.len_utf8())
}

/// The offsets where the lines of `source` begin.
fn starts_of_lines(source: &str) -> Vec<usize> {
    std::iter::once(0).chain(source.match_indices('\n').map(|(i, _)| i + 1)).collect()
}

/// [`line_col`] with `starts`, the offsets where the lines of `source`
/// begin, and `(offset, line, col)` of a place already counted: from there
/// when `offset` is further on its line.
fn line_col_in(
    source: &str,
    starts: &[usize],
    offset: usize,
    known: (usize, usize, usize),
) -> (usize, usize) {
    let offset = offset.min(source.len());
    // The first line starts at 0, so at least one start is <= offset.
    let line = starts.partition_point(|&start| start <= offset).max(1);
    let first = past_bom(source, starts.get(line - 1).copied().unwrap_or(0));
    let (from, col) = match known {
        (at, known_line, col) if known_line == line && (first..=offset).contains(&at) => (at, col),
        _ => (first, 1),
    };
    let col = source.get(from..offset).map_or(0, |s| s.chars().count()) + col;
    (line, col)
}

/// Where the columns of the line starting at `line_start` are counted
/// from: past a byte order mark that begins the file, which editors do not
/// show (columns on line 1 were one too far right; probe 130).
fn past_bom(source: &str, line_start: usize) -> usize {
    if line_start == 0 && source.starts_with('\u{feff}') { '\u{feff}'.len_utf8() } else { line_start }
}

/// A value of a config as a message quotes it: its first 60 characters in
/// backticks, or, when it has an `@` (a pasted `user:password@host`), a
/// note that it is not shown (probe 100: a rule's `hosts` echoed it).
pub(crate) fn quoted(value: &str) -> String {
    if value.contains('@') {
        "(a value with `@`, not shown: it may hold a password)".to_owned()
    } else {
        format!("`{}`", value.chars().take(60).collect::<String>())
    }
}

/// The settings whose values are integers, as `table.key`: the only ones
/// [`number_out_of_range`] names. A key, or a table header read off an
/// earlier line (which may be inside a multi-line string), may be a
/// password typed there; a pair not in this list is not named (probe 134:
/// `S3cretPw.worker_threads` was).
const INTEGER_SETTINGS: [&str; 11] = [
    "limits.max_header_bytes",
    "limits.max_connections",
    "limits.max_connections_per_ip",
    "server.worker_threads",
    "auth.max_pending",
    "auth.verify_threads",
    "auth.throttle.max_failures",
    "auth.argon2.m_cost",
    "auth.argon2.t_cost",
    "auth.argon2.p_cost",
    "rules.ports",
];

/// The parser's "number too large (small) to fit in target type" for an
/// integer past i64 at byte `at`, said as the other range errors say it:
/// the setting (`limits.max_connections`, from the key on that line and
/// the table header above) and where its range is. `None` for any other
/// message, or a key that is no integer setting (a `via`, a `password`:
/// the parser's message, or its type error, stands).
fn number_out_of_range(source: &str, at: usize, message: &str) -> Option<String> {
    let size = ["large", "small"].into_iter().find(|s| message.starts_with(&format!("number too {s}")))?;
    let before = source.get(..at)?;
    let line = &before[before.rfind('\n').map_or(0, |i| i + 1)..];
    let key = line.split_once('=').map(|(k, _)| k.trim())?;
    let table = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|h| h.trim_start_matches('[').split(']').next().unwrap_or_default().trim())?;
    let setting = format!("{table}.{key}");
    INTEGER_SETTINGS
        .contains(&setting.as_str())
        .then(|| format!("{setting}: number too {size} (see the setting's range in the README)"))
}

/// 1-based line and column (in characters) of byte `offset` in `source`.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before.get(past_bom(source, line_start)..).map_or(0, |s| s.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each word as bash reads it back (`printf %s WORD`) is the text.
    #[test]
    fn a_shell_word_is_read_back_as_the_text() {
        let texts: [&[u8]; 13] = [
            b"a.toml",
            b"my config.toml",
            b"it's",
            b"t\tb",
            b"a'\n\\b",
            "\u{202e}x".as_bytes(),
            "\u{e0041}".as_bytes(),
            "\u{3164}.toml".as_bytes(),
            b"\xff\xfe.toml",
            b"d\xffx/'a\t.toml",
            b"-x",
            b"=eq/a.toml",
            b"",
        ];
        for text in texts {
            let word = shell_bytes(text);
            let out = std::process::Command::new("bash").arg("-c").arg(format!("printf %s {word}")).output();
            let out = out.map(|o| o.stdout).unwrap_or_default();
            assert_eq!(out, text, "{word}");
            // What a terminal shows of it is what is typed.
            assert_eq!(shown(&word), word, "{word}");
        }
        assert_eq!(command(Path::new(crate::config::DEFAULT_PATH), "check"), "authgate check");
        assert_eq!(command(Path::new("-a.toml"), "check"), "authgate --config=-a.toml check");
        let bytes = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"\xff.toml");
        assert_eq!(command(Path::new(bytes), "check"), r"authgate --config $'\xff.toml' check");
        // Shown for a terminal, each such byte is written as it is typed.
        let bytes = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"c\xff\xfe/\x1b\xe9.toml");
        assert_eq!(shown_path(Path::new(bytes)), r"c\xff\xfe/\u{1b}\xe9.toml");
        // What looks like an escape, typed, is not one (it was shown the same).
        assert_eq!(shown_path(Path::new(r"c\xff/\u{1b}")), r"c\\xff/\\u{1b}");
    }

    #[test]
    fn a_collector_places_problems_as_line_col_does() {
        for source in ["a = 1\n\nb = \"é€\"\n  c = [\n1]\nlast", "\u{feff}a = 1\nb"] {
            let mut c = Collector::new(Path::new("x.toml"), source);
            // Spans from the parser fall on character boundaries.
            let offsets: Vec<usize> =
                (0..=source.len() + 2).filter(|&i| source.is_char_boundary(i.min(source.len()))).collect();
            for &at in &offsets {
                c.at(at..at, "x");
            }
            for (p, &at) in c.problems.iter().zip(&offsets) {
                assert_eq!((p.line, p.col), line_col(source, at), "offset {at}");
            }
            // Counted on from the last problem when it is further on the
            // same line (probe 147), from the line's start otherwise.
            let mut c = Collector::new(Path::new("x.toml"), source);
            for &at in offsets.iter().rev().chain(&offsets).step_by(3) {
                c.at(at..at, "x");
                let p = c.problems.last().unwrap();
                assert_eq!((p.line, p.col), line_col(source, at), "offset {at}");
            }
        }
    }

    #[test]
    fn line_col_counts_from_one() {
        let s = "a = 1\nbb = 2\n";
        assert_eq!(line_col(s, 0), (1, 1));
        assert_eq!(line_col(s, 6), (2, 1));
        assert_eq!(line_col(s, 9), (2, 4));
        assert_eq!(line_col(s, 999), (3, 1));
        let c = Collector::new(Path::new("f"), s);
        for at in [0, 5, 6, 9, 10, 999] {
            assert_eq!(c.line_of(at), line_col(s, at).0, "{at}");
        }
        // A byte order mark is no column (editors do not show it).
        let bom = "\u{feff}a = 1\nb";
        assert_eq!(line_col(bom, 3), (1, 1));
        assert_eq!(line_col(bom, 7), (1, 5));
        assert_eq!(line_col(bom, 0), (1, 1));
        assert_eq!(line_col(bom, 9), (2, 1));
    }

    /// A control character where TOML allows none (in a comment, say) is
    /// named, in the config and the users file: the parser's own message
    /// for it is empty, and the problem was `file:1:4: ` (probe 83).
    #[test]
    fn a_control_character_in_a_comment_is_named() {
        for (ch, source, at) in ['\u{1}', '\0', '\u{1f}', '\u{7f}', '\r'].into_iter().flat_map(|ch| {
            [
                (ch, format!("# a{ch}b\n[server]\nrealm = \"x\"\n"), (1, 4)),
                (ch, format!("[server] # a{ch}b\nrealm = \"x\"\n"), (1, 13)),
                (ch, format!("[server]\nrealm = \"x\" # y{ch}z\n"), (2, 16)),
                (ch, format!("[server]\nrealm = \"a{ch}b\"\n"), (2, 11)),
            ]
        }) {
            let config = match crate::config::validate::config(Path::new("c.toml"), &source) {
                Err(problems) => problems,
                Ok(_) => panic!("accepted {ch:?}"),
            };
            let (_, users) = crate::config::users::parse(Path::new("u.toml"), &source, Path::new("a.toml"));
            for p in config.iter().chain(&users) {
                let want = format!("control character U+{:04X} is not allowed here", u32::from(ch));
                assert!(p.message.starts_with(&want), "{ch:?} {source:?}: {p:?}");
                assert_eq!((p.line, p.col), at, "{ch:?} {source:?}");
            }
            assert_eq!((config.len(), users.len()), (1, 1), "{config:?} {users:?}");
        }
    }

    /// A number with a leading zero is named, at its start, where the
    /// parser said "expected newline, `#`" after the zero; a date-time's
    /// zero is not taken for one.
    #[test]
    fn a_leading_zero_is_named() {
        let said = "a number may not start with 0";
        for (source, at) in [
            ("[limits]\nmax_connections = 0123\n", (2, 19)),
            ("[limits]\nmax_connections = -01\n", (2, 19)),
            ("[limits]\nmax_connections=00\n", (2, 17)),
            ("[limits]\nmax_connections = 0_1\n", (2, 19)),
            ("[server]\nlisten = [1, 02]\n", (2, 14)),
            ("[server]\nx = {a = 01.5}\n", (2, 10)),
            // An array element at the start of its line (probe 260).
            ("[server]\nx = [1,\n02]\n", (3, 1)),
            ("[server]\nx = [\n-01,\n]\n", (3, 1)),
        ] {
            let problems = match crate::config::validate::config(Path::new("c.toml"), source) {
                Err(problems) => problems,
                Ok(_) => panic!("accepted {source:?}"),
            };
            assert!(problems[0].message.starts_with(said), "{source:?}: {problems:?}");
            assert_eq!((problems[0].line, problems[0].col), at, "{source:?}");
        }
        // A trailing underscore is not a leading zero (probe 260).
        for source in [
            "[server]\nx = 07:32\n",
            "[server]\nx = 1979-05-27T07:3\n",
            "[server]\nx = 10 1\n",
            "[server]\nx = 0_\n",
        ] {
            let problems = crate::config::validate::config(Path::new("c.toml"), source).err().unwrap();
            assert!(!problems[0].message.starts_with(said), "{source:?}: {problems:?}");
        }
    }

    /// A Unicode space or an invisible character pasted where TOML takes
    /// none is named (the problem said "expected `.`, `=`" at a place that
    /// looked right; probe 230), and a Unicode space in a value a message
    /// quotes is written as an escape, not as a space.
    #[test]
    fn a_pasted_space_or_invisible_character_is_named() {
        for (source, at, what) in [
            ("[server]\nre\u{200b}alm = \"x\"\n", (2, 3), "an invisible character, U+200B"),
            ("[server]\nrealm\u{a0}= \"x\"\n", (2, 6), "a Unicode space, U+00A0"),
            ("[server]\n\u{feff}realm = \"x\"\n", (2, 1), "an invisible character, U+FEFF"),
            ("[server]\nrealm =\u{3000}\"x\"\n", (2, 8), "a Unicode space, U+3000"),
            // Curly quotes and a letter a bare key cannot have (probe 300).
            ("[server]\nrealm = \u{201c}x\u{201d}\n", (2, 9), "a typographic quote, \u{201c} (U+201C)"),
            ("[server]\nrealm = \u{2018}x\u{2019}\n", (2, 9), "a typographic quote, \u{2018} (U+2018)"),
            ("[server]\nr\u{e9}alm = \"x\"\n", (2, 2), "`\u{e9}` (U+00E9) is not allowed here"),
            ("[server]\nrealm = \u{201a}x\u{2018}\n", (2, 9), "a typographic quote, \u{201a} (U+201A)"),
            ("[server]\nrealm = \u{2033}x\u{2033}\n", (2, 9), "a typographic quote, \u{2033} (U+2033)"),
            // After a backslash in a string, the escape is the problem.
            ("[server]\nrealm = \"a\\\u{e9}\"\n", (2, 11), "invalid escape sequence"),
            ("[server]\nrealm = \"\\\u{201c}x\"\n", (2, 10), "invalid escape sequence"),
            ("[server]\nrealm = \"\\u\u{e9}\u{e9}\u{e9}\u{e9}\"\n", (2, 10), "invalid unicode"),
            ("[server]\nrealm = \"\\u\u{201c}abc\"\n", (2, 10), "invalid unicode"),
        ] {
            let problems = match crate::config::validate::config(Path::new("c.toml"), source) {
                Err(problems) => problems,
                Ok(_) => panic!("accepted {source:?}"),
            };
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(problems[0].message.starts_with(what), "{source:?}: {problems:?}");
            assert_eq!((problems[0].line, problems[0].col), at, "{source:?}");
        }
        assert_eq!(shown("localhost\u{a0}"), "localhost\\u{a0}");
        // UTF-16 without a byte order mark: NULs between the letters.
        let utf16: String = "[server]\n".chars().flat_map(|c| [c, '\0']).collect();
        let problems = crate::config::validate::config(Path::new("c.toml"), &utf16).err().unwrap();
        assert!(
            problems[0].message.ends_with("the file looks like UTF-16: save it as UTF-8"),
            "{problems:?}"
        );
        let nul_later = "[server]\nrealm = \"a\0b\"\n";
        let problems = crate::config::validate::config(Path::new("c.toml"), nul_later).err().unwrap();
        assert!(!problems[0].message.contains("UTF-16"), "{problems:?}");
        assert_eq!(shown("a b\tc"), "a b\\tc");
    }
}
