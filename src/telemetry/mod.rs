//! Logging: tracing setup and the access event.
//!
//! One access event (target `authgate::access`) per request or tunnel, with
//! stable field names. Credentials never reach a log: the request's headers are
//! never logged as a whole, and the user is logged only once authenticated.

mod access;
#[cfg(test)]
mod captured;
mod every;
mod line;
pub mod metrics;
pub mod process;
mod sink;

pub use access::{AccessRecord, AuditEvent, AuditOnDrop, sanitize_username};
#[cfg(test)]
pub(crate) use captured::Captured;
pub use every::{Every, flush_all as flush_held_back};
pub use metrics::Metrics;
pub(crate) use sink::hidden;
pub use sink::{LogGuard, tell_stderr_within};

use std::sync::{Arc, OnceLock};

use tracing::level_filters::LevelFilter;
use tracing_subscriber::EnvFilter;

/// The log buffer of the installed subscriber, and its format.
static INSTALLED: OnceLock<(Arc<sink::Sink>, LogFormat)> = OnceLock::new();

/// The log buffer when the text format is in use: access lines are
/// formatted by `line.rs` and appended to it directly.
fn text_sink() -> Option<&'static sink::Sink> {
    match INSTALLED.get() {
        Some((sink, LogFormat::Text)) => Some(sink),
        _ => None,
    }
}

/// Writes the buffered log lines now (before `std::process::exit`),
/// waiting for stdout `limit` at most (see [`sink::LogGuard`]).
pub fn flush(limit: std::time::Duration) {
    if let Some((sink, _)) = INSTALLED.get() {
        sink::flush_within(sink, limit);
    }
}

/// Makes a log write past the file-size limit (`ulimit -f`, systemd's
/// `LimitFSIZE=`) fail with `EFBIG`, told and counted like any failing
/// stdout, instead of ending the process: the default action of the
/// SIGXFSZ the kernel sends then. Call inside a tokio runtime; the handler
/// stays for the life of the process.
pub fn survive_file_size_limit() {
    let xfsz = tokio::signal::unix::SignalKind::from_raw(rustix::process::Signal::XFSZ.as_raw());
    if let Err(e) = tokio::signal::unix::signal(xfsz) {
        tracing::warn!(error = %e, "cannot catch SIGXFSZ: a log file that reaches the file-size limit ends the process");
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable `key=value` lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Standard output without std's line buffer: a descriptor of its own
/// (a duplicate of fd 1, the same open file), so a write the kernel takes
/// only in part says so. Through `std::io::stdout()`, a write cut by a full
/// disk or a file-size limit left the rest of the line in std's buffer,
/// counted as written: it went out with the next write that got through,
/// as the first bytes of a log file that logrotate's `copytruncate` had
/// emptied. Falls back to `stdout()` when the descriptor cannot be
/// duplicated (none left).
fn stdout_unbuffered() -> Box<dyn std::io::Write + Send> {
    use std::os::fd::AsFd;
    match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => Box::new(std::fs::File::from(fd)),
        Err(_) => Box::new(std::io::stdout()),
    }
}

/// `level` as a log filter, its directives trimmed, when it is a level or a
/// list of `tracing` directives whose bare words are levels; why not
/// otherwise. A bare word that is not a level parses as a directive too:
/// `"warning"` meant "everything from the target `warning`", so a typo
/// silenced every log line (the startup line, access and audit lines
/// included); and `"info "`, accepted by the config's check, was the target
/// `info ` at the start (probe 101), as `"hickory_proto =off"` was the
/// target `hickory_proto ` (probe 102): a space inside a directive's target
/// or level is refused. A target is a module path (`authgate::access`):
/// `"info;authgate=debug"` was the target `info;authgate`, `"info="` the
/// target `info` (at `trace`), and with no level for the rest, every
/// authgate line was off (probes 356 and 358); a target that reads as a
/// level (`"info=debug"`) is refused too. Some such filters stay: a target
/// that is a path but names nothing here (`"Authgate=info"`, `"all=info"`).
pub fn log_filter(level: &str) -> Result<String, NoFilter> {
    // As `tracing` reads a level: a name in any case, or a number to 5
    // (`""` is a level too, `error` alone and `trace` after `=`).
    let is_level = |word: &str| word.parse::<tracing::level_filters::LevelFilter>().is_ok();
    let is_path = |target: &str| {
        target.split("::").all(|ident| {
            ident.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && ident.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    };
    if level.len() > MAX_FILTER_BYTES || level.split(',').count() > MAX_FILTER_DIRECTIVES {
        return Err(NoFilter::TooLong);
    }
    let directives: Vec<&str> = level.split(',').map(str::trim).collect();
    let bare_words_are_levels = directives.iter().all(|d| {
        // The target (before any span or level), and what follows the
        // spans: `=` and the level, if any.
        let target = d.split(['[', '=']).next().unwrap_or_default();
        let tail = d.rsplit_once(']').map_or(*d, |(_, tail)| tail);
        let level = tail.split_once('=').map(|(_, level)| level);
        let spans_or_level = d.contains('[') || level.is_some();
        // Spans alone (`[request]=debug`) have no target.
        let target_ok = (target.is_empty() && d.starts_with('[')) || (is_path(target) && !is_level(target));
        !d.is_empty() && level.is_none_or(is_level) && if spans_or_level { target_ok } else { is_level(d) }
    });
    let filter = directives.join(",");
    if !(bare_words_are_levels && parse_filter(&filter).is_ok()) {
        return Err(NoFilter::NotAFilter);
    }
    // authgate's lines are in no span, and their targets and levels are
    // those of [`TARGETS`] (the modules that write lines, and three targets
    // lines name themselves): a filter of span directives alone (`[]`,
    // `[request]=debug`), of other targets alone (`Authgate=info`,
    // `authgate::acess=info`), or one that lets a target through only
    // below the levels it writes at (`authgate::access=warn`: access lines
    // are INFO) let none through, the startup line and a failed reload's
    // error included, without a word (probes 380, 385, 394). A bare level,
    // `off` too, and a directive that turns the whole crate off
    // (`authgate=off`) are meant. A target matches as `tracing` matches it:
    // as the start of a line's target (`authg` names every authgate line).
    //
    // A line takes the level of the directive with the longest target its
    // target starts with, the last of equal ones (`tracing`'s choice):
    // `authgate::access=info,authgate::access=off` lets nothing through
    // (probe 390; counting each directive on its own took the first).
    // Directives of field names without a span (`[{message}]=off`) filter
    // lines by the fields they carry, ranked above the others of their
    // target: `info,[{message}]=off` silenced every line (probe 394). This
    // check cannot follow them, and they are refused.
    if directives.iter().any(|d| field_names_alone(d)) {
        return Err(NoFilter::FieldNames);
    }
    // (target, level) of each directive outside spans; a bare level has the
    // empty target, the start of every line's, and an empty level after `=`
    // is `trace`, as `tracing` reads it.
    let level_of = |level: &str| match level {
        "" => Some(LevelFilter::TRACE),
        level => level.parse::<LevelFilter>().ok(),
    };
    let plain: Vec<(&str, LevelFilter)> = directives
        .iter()
        .filter(|d| !d.contains('['))
        .filter_map(|d| match d.split_once('=') {
            None => Some(("", level_of(d)?)),
            Some((target, level)) => Some((target, level_of(level)?)),
        })
        .collect();
    let let_through = |&(line, written): &(&str, tracing::Level)| {
        plain
            .iter()
            .filter(|(target, _)| line.starts_with(target))
            .max_by_key(|(target, _)| target.len())
            .is_some_and(|(_, level)| written <= *level)
    };
    // `off` is meant when nothing else asks for authgate's lines: with a
    // directive that does (`off,authgate::access=warn`, or a typo such as
    // `off,authgate::acess=info`), what it asked for was silenced too
    // (probe 397).
    let says_off =
        plain.iter().any(|(target, level)| *level == LevelFilter::OFF && "authgate".starts_with(target));
    // (One that a later directive for the same target replaces asks
    // nothing: `authgate=info,authgate=off` is off. A target asks in any
    // case, and with a span: `off,Authgate::access=info` and
    // `off,authgate::access[x]=info` let nothing through, `tracing`
    // matching case and authgate's lines being in no span; probe 399.)
    fn target_of(d: &str) -> &str {
        d.split(['[', '=']).next().unwrap_or_default()
    }
    let asks = directives.iter().enumerate().any(|(at, d)| {
        let target = target_of(d).to_ascii_lowercase();
        let names = target == "authgate"
            || target.starts_with("authgate::")
            || (!target.is_empty() && "authgate".starts_with(&target));
        let tail = d.rsplit_once(']').map_or(*d, |(_, tail)| tail);
        // A span directive without a level is `trace` (probe 400).
        let level = match tail.split_once('=') {
            Some((_, level)) => level_of(level),
            None => d.contains('[').then_some(LevelFilter::TRACE),
        };
        let replaced = !d.contains('[')
            && directives[at + 1..]
                .iter()
                .any(|later| !later.contains('[') && target_of(later) == target_of(d));
        names && level.is_some_and(|l| l != LevelFilter::OFF) && !replaced
    });
    let lets_some_through = TARGETS.iter().any(let_through) || (says_off && !asks);
    match lets_some_through {
        true => Ok(filter),
        false => Err(NoFilter::Silent),
    }
}

/// The targets of authgate's lines, each with the most severe level it
/// writes at: the module paths of the files that write lines without
/// naming a target (`authgate` for the binary's own), and the targets
/// lines name themselves. Checked against the source by a test.
const TARGETS: &[(&str, tracing::Level)] = &[
    ("authgate", tracing::Level::WARN),
    ("authgate::access", tracing::Level::INFO),
    ("authgate::audit", tracing::Level::WARN),
    ("authgate::log", tracing::Level::WARN),
    ("authgate::auth", tracing::Level::ERROR),
    ("authgate::auth::password", tracing::Level::ERROR),
    ("authgate::auth::store", tracing::Level::WARN),
    ("authgate::blocking", tracing::Level::ERROR),
    ("authgate::proxy::connect", tracing::Level::WARN),
    ("authgate::proxy::dns", tracing::Level::WARN),
    ("authgate::proxy::pool", tracing::Level::DEBUG),
    ("authgate::proxy::tunnel", tracing::Level::DEBUG),
    ("authgate::proxy::upstream_tls", tracing::Level::WARN),
    ("authgate::server", tracing::Level::WARN),
    ("authgate::server::limits", tracing::Level::WARN),
    ("authgate::server::reload", tracing::Level::ERROR),
    ("authgate::server::signals", tracing::Level::ERROR),
    ("authgate::server::tls", tracing::Level::WARN),
    ("authgate::telemetry", tracing::Level::WARN),
    ("authgate::telemetry::every", tracing::Level::WARN),
];

/// Whether directive `d` is field names alone, without a span name or a
/// value (`[{message}]`, `authgate[{user}]=off`): `tracing` applies
/// it to lines that carry those fields (see [`log_filter`]).
fn field_names_alone(d: &str) -> bool {
    let Some((_, inside)) = d.split_once('[') else {
        return false;
    };
    let inside = inside.split(']').next().unwrap_or_default();
    inside.starts_with('{') && !inside.contains('=')
}

/// Why [`log_filter`] took no filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoFilter {
    /// Past [`MAX_FILTER_BYTES`] or [`MAX_FILTER_DIRECTIVES`].
    TooLong,
    /// Not a level, nor a list of directives whose bare words are levels.
    NotAFilter,
    /// A filter that lets no authgate line through and does not say `off`:
    /// span directives alone, or directives for other targets alone.
    Silent,
    /// A directive of field names without a span (`[{message}]=off`).
    FieldNames,
}

impl std::fmt::Display for NoFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoFilter::TooLong => {
                write!(
                    f,
                    "too long (at most {MAX_FILTER_BYTES} bytes and {MAX_FILTER_DIRECTIVES} directives)"
                )
            }
            NoFilter::NotAFilter => f.write_str("not a level or a log filter"),
            NoFilter::Silent => f.write_str(
                "a filter that lets no authgate line through (its lines are in no span, their targets are \
                 `authgate` and the modules that write lines, and each writes at its own levels, access lines \
                 at `info`; say `off` to mean it)",
            ),
            NoFilter::FieldNames => f.write_str(
                "a directive of field names without a span (such as `[{message}]`) filters lines by the fields \
                 they carry, which authgate does not check a filter for: name targets instead \
                 (`authgate::access=off`)",
            ),
        }
    }
}

/// Longest log filter taken, in bytes, and most directives in it. A real
/// one has a few; the time `tracing` takes to read one grows faster than
/// its length (100,000 directives, 1.2 MB: 8.5 s at every `check`, reload
/// and `users` command; probe 336).
pub const MAX_FILTER_BYTES: usize = 4096;
/// See [`MAX_FILTER_BYTES`].
pub const MAX_FILTER_DIRECTIVES: usize = 64;

/// `filter` read by `tracing`, a field's value matched as text, not as a
/// regular expression: a pattern of 20 alternations (`[{x=(a|b)*a(a|b)…}]`,
/// under 200 bytes) took 890 MB and 11.5 s to compile at a reload, and
/// ended a proxy under a memory limit (probe 336).
fn parse_filter(filter: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    EnvFilter::builder().with_regex(false).parse(filter)
}

/// `filter` with the resolver's own lines (hickory's) off, unless one of
/// its directives is for them (`hickory_proto=warn`): hickory writes a
/// warning for each DNS reply it drops, forged or malformed, which anyone
/// who reaches the resolver's port can send at will, one line each (probe
/// 99). authgate says what a failed lookup did to a request in its access
/// line.
fn quiet_resolver(filter: &str) -> String {
    let mut quiet = filter.to_owned();
    for lib in ["hickory_proto", "hickory_resolver"] {
        // A directive for the whole crate, no module and no span: a more
        // specific one (`hickory_proto::udp=warn`) still wins over the
        // `off` added, and one such as `hickory_proto::x=off` turned the
        // whole crate on (probe 103), as `hickoryx=error` did (probe 102).
        let named = filter.split(',').any(|d| d.split('=').next().is_some_and(|target| target.trim() == lib));
        if !named {
            quiet.push_str(&format!(",{lib}=off"));
        }
    }
    quiet
}

/// Installs the global tracing subscriber writing to stdout.
///
/// Lines are formatted on the calling thread into a shared buffer that a
/// background thread writes out in batches, at most 100 ms late (see
/// `sink.rs` for the measurements behind this). Lines are lost only when
/// stdout stops taking them, and then counted (see `sink.rs`). `RUST_LOG`,
/// when set (and not empty), overrides `level`; one that is not a filter
/// is said in a warning, and `level` applies.
pub fn init(level: &str, format: LogFormat) -> LogGuard {
    let filter_of = |f: &str| parse_filter(&quiet_resolver(f)).unwrap_or_else(|_| EnvFilter::new("info"));
    // (One that is not UTF-8 was passed over without a word: probe 380.)
    let env = std::env::var("RUST_LOG");
    let not_utf8 = matches!(env, Err(std::env::VarError::NotUnicode(_)));
    let from_env = env.ok().filter(|v| !v.trim().is_empty());
    // Read as `[log] level` is: a bare word that is not a level
    // (`RUST_LOG=warning`) silenced every line without a word (probe 101).
    let (filter, bad_env) = match from_env.as_deref().map(log_filter) {
        Some(Ok(f)) => (filter_of(&f), None),
        Some(Err(why)) => (filter_of(level), Some(why)),
        None => (filter_of(level), None),
    };
    let (writer, guard) = sink::start(stdout_unbuffered(), format == LogFormat::Json);
    let sink = writer.sink();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_target(true);
    let installed = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    if installed.is_ok() {
        let _ = INSTALLED.set((sink, format));
    }
    // (Ignored without a word before: a mistyped override looked applied;
    // probe 100.)
    // (A filter too long was called no filter: probe 338.)
    let refused = match (bad_env, not_utf8) {
        (Some(why), _) => Some(format!("RUST_LOG is {why}; [log] level applies")),
        (None, true) => Some("RUST_LOG is not UTF-8; [log] level applies".to_owned()),
        (None, false) => None,
    };
    if let Some(refused) = refused {
        // In the log when `level` lets a warning of this module through;
        // on standard error otherwise: under `level = "error"`, or one for
        // the access lines alone, it was lost (probe 388).
        if tracing::enabled!(tracing::Level::WARN) {
            tracing::warn!("{refused}");
        } else {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "authgate: warning: {refused}");
        }
    }
    guard
}

#[cfg(test)]
mod filter_tests {
    use super::*;

    /// Levels and directives as `tracing` reads them, trimmed; a bare word
    /// that is not a level, or a space inside a directive, is no filter.
    #[test]
    fn log_filters_are_checked_and_trimmed() {
        assert_eq!(log_filter(" info , authgate::access=off ").as_deref(), Ok("info,authgate::access=off"));
        assert_eq!(log_filter("INFO").as_deref(), Ok("INFO"));
        assert_eq!(
            log_filter("warn,authgate[request]=debug,hickory_proto=3").as_deref(),
            Ok("warn,authgate[request]=debug,hickory_proto=3")
        );
        assert!(log_filter("off,[{x=\"a=b\"}]=info").is_ok());
        for good in
            ["warn,authgate=", "authgate=03", "authgate=+3", "off,[request]=debug", "authgate::proxy=info"]
        {
            assert_eq!(log_filter(good).as_deref(), Ok(good));
        }
        // Filters that let no authgate line through, without saying `off`
        // (authgate's lines are in no span; probe 380).
        for silent in [
            "[]",
            "[]=error",
            "[span]",
            "[request]=debug",
            "_x::y2=info",
            "Authgate=info",
            "authgate::x=info",
            "authgate::acess=info",
            "authgate::access=off",
            "authgate[x]=info",
            "authgate::server::relaod=info",
            "authgate::proxy::nosuch=info",
            "authgate::access::x=info",
            "authgate::config=debug",
            // The last of equal targets wins (probe 390).
            "authgate::access=info,authgate::access=off",
            "authgate::proxy=info,authgate::access=debug,authgate::proxy=off,authgate::access=off",
            // Below every level a target writes at (probe 394): access
            // lines are `info`, the pool's `debug`; the access module's
            // lines name their own targets.
            "authgate::access=warn",
            "authgate::access=error,authgate::audit=error",
            "authgate::proxy::pool=info",
            "authgate::telemetry::access=info",
            // An `off` beside a directive that asks for authgate's lines
            // (probe 397).
            "off,authgate::access=warn",
            "authgate=off,authgate::access=warn",
            "0,authgate::acess=info",
            "off,Authgate::access=info",
            "off,authgate::access[x]=info",
            "off,authgate::access[x]",
            "off,authgate[]",
        ] {
            assert_eq!(log_filter(silent), Err(NoFilter::Silent), "{silent}");
        }
        // Field names without a span: lines carrying them (every line has
        // a `message`), ranked above the rest (probe 394).
        for fields in ["info,[{message}]=off", "[{message}]=info", "warn,authgate[{user}]=off"] {
            assert_eq!(log_filter(fields), Err(NoFilter::FieldNames), "{fields}");
        }
        // What names authgate's lines as `tracing` matches a target (its
        // start), and what turns them all off on purpose (probe 385).
        for meant in [
            "authgate=off",
            "warn,authgate=off",
            "authg=info",
            "authgate::proxy::pool=debug",
            "authgate::ac=info",
            "authgate::access=off,authgate::access=info",
            "authgate::access=info",
            "authgate::proxy::pool=debug,authgate::server::reload=error",
            "off,authgate_x=info",
            "error",
            "authgate=info,authgate=off",
            "off,authgate=info,authgate=off,authgate::access=info",
        ] {
            assert_eq!(log_filter(meant).as_deref(), Ok(meant));
        }
        for bad in [
            "warning",
            "info,",
            "info,hickory_proto =off",
            "info,authgate::access= off",
            "=!=",
            "info=",
            "debug=",
            "info=debug",
            "info[x]=warn",
            "03=info",
            "authgate=verbose",
            "info;authgate=debug",
            "info:authgate=debug",
            "info|authgate=debug",
            "info.authgate=debug",
            "authgate{x}=info",
            "authgate]=info",
            "authgate-=info",
            "authgate:::access=info",
        ] {
            assert_eq!(log_filter(bad), Err(NoFilter::NotAFilter), "{bad}");
        }
        // Bounded in bytes and in directives.
        let many = |n: usize| vec!["authgate=info"; n].join(",");
        assert!(log_filter(&many(MAX_FILTER_DIRECTIVES)).is_ok());
        assert_eq!(log_filter(&many(MAX_FILTER_DIRECTIVES + 1)), Err(NoFilter::TooLong));
        let long = |n: usize| format!("info,{}=off", "a".repeat(n - 9));
        assert_eq!(long(MAX_FILTER_BYTES).len(), MAX_FILTER_BYTES);
        assert!(log_filter(&long(MAX_FILTER_BYTES)).is_ok());
        assert_eq!(log_filter(&long(MAX_FILTER_BYTES + 1)), Err(NoFilter::TooLong));
    }

    /// [`TARGETS`] is the module path of every file that writes lines
    /// without naming a target, and every target a line names itself, each
    /// with the most severe level its lines are written at, and nothing
    /// else: a filter for a target left out would be refused, one for a
    /// target listed that writes nothing, or not at that level, taken
    /// (probes 387, 394).
    #[test]
    fn the_targets_named_are_the_crates() {
        use tracing::Level;
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut found = std::collections::BTreeMap::<String, Level>::new();
        let mut files = vec![src.clone()];
        while let Some(path) = files.pop() {
            if path.is_dir() {
                files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let module = path.strip_prefix(&src).unwrap().with_extension("");
            let parts: Vec<_> = module.iter().map(|p| p.to_str().unwrap()).collect();
            let parts = match parts.split_last() {
                Some((&("main" | "lib" | "mod"), rest)) => rest.to_vec(),
                _ => parts,
            };
            let module = std::iter::once("authgate").chain(parts).collect::<Vec<_>>().join("::");
            for (name, level) in [
                ("error", Level::ERROR),
                ("warn", Level::WARN),
                ("info", Level::INFO),
                ("debug", Level::DEBUG),
            ] {
                for call in text.split(&format!("tracing::{name}!(")).skip(1) {
                    let target = match call.trim_start().strip_prefix("target: \"") {
                        Some(named) => named.split('"').next().unwrap().to_owned(),
                        None => module.clone(),
                    };
                    // The most severe: the least, as `tracing` orders levels.
                    let most = found.entry(target).or_insert(level);
                    *most = (*most).min(level);
                }
            }
        }
        let listed: std::collections::BTreeMap<String, Level> =
            TARGETS.iter().map(|&(t, level)| (t.to_string(), level)).collect();
        assert_eq!(listed, found);
    }

    /// A field's value is text to match (its `Debug` form: a string in
    /// quotes), not a regular expression, whose automaton grows
    /// exponentially with a pattern's length (probe 336): `x=a.c` matches
    /// no `abc`, and `x="a.c"` matches `a.c`.
    #[test]
    fn a_field_value_is_not_compiled_as_a_regular_expression() {
        for (directive, value, enabled) in
            [("[{x=a.c}]", "abc", false), ("[{x=\"a.c\"}]", "a.c", true), ("[{x=\"a.c\"}]", "abc", false)]
        {
            let filter = log_filter(&format!("off,{directive}=info")).map(|f| parse_filter(&f));
            let Ok(Ok(filter)) = filter else { panic!("{directive} not taken: {filter:?}") };
            let subscriber =
                tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::sink).finish();
            tracing::subscriber::with_default(subscriber, || {
                let span = tracing::info_span!("s", x = value);
                let _in = span.enter();
                assert_eq!(
                    tracing::enabled!(tracing::Level::INFO),
                    enabled,
                    "{directive} with x = {value:?}"
                );
            });
        }
    }

    /// hickory's crates are silenced unless a directive is for the crate
    /// or one of its modules.
    #[test]
    fn the_resolver_is_quiet_unless_named() {
        assert_eq!(quiet_resolver("info"), "info,hickory_proto=off,hickory_resolver=off");
        assert_eq!(
            quiet_resolver("info,hickoryx=error"),
            "info,hickoryx=error,hickory_proto=off,hickory_resolver=off"
        );
        assert_eq!(
            quiet_resolver("debug,hickory_proto=warn"),
            "debug,hickory_proto=warn,hickory_resolver=off"
        );
        assert_eq!(
            quiet_resolver("hickory_resolver::lookup=trace,hickory_proto[x]=off"),
            "hickory_resolver::lookup=trace,hickory_proto[x]=off,hickory_proto=off,hickory_resolver=off"
        );
    }
}
