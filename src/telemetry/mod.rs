//! Logging: tracing setup and the access event.
//!
//! One access event (target `authgate::access`) per request or tunnel, with
//! stable field names. Credentials never reach a log: the request's headers are
//! never logged as a whole, and the user is logged only once authenticated.

mod access;
mod line;
pub mod metrics;
mod sink;

pub use access::{AccessRecord, AuditEvent, sanitize_username};
pub use metrics::Metrics;
pub use sink::LogGuard;

use std::sync::{Arc, OnceLock};

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

/// A client's text (a username, a request target) for a field of a log
/// line. The text format quotes and escapes such fields itself (`{:?}`);
/// JSON escapes only what it must (`"`, `\`, U+0000–U+001F), so for it the
/// characters that would still act on a terminal or hide in a line (C1
/// controls, bidirectional and zero-width characters, line and paragraph
/// separators) are written as `\u{…}`.
pub fn for_log(s: &str) -> std::borrow::Cow<'_, str> {
    let json = matches!(INSTALLED.get(), Some((_, LogFormat::Json)));
    let hidden = |c: char| {
        crate::config::invisible(c)
            || ('\u{7f}'..='\u{9f}').contains(&c)
            || matches!(c, '\u{2028}' | '\u{2029}')
    };
    if !json || !s.chars().any(hidden) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if hidden(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Writes the buffered log lines now (before `std::process::exit`).
pub fn flush() {
    if let Some((sink, _)) = INSTALLED.get() {
        sink.flush();
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

/// Installs the global tracing subscriber writing to stdout.
///
/// Lines are formatted on the calling thread into a shared buffer that a
/// background thread writes out in batches, at most 100 ms late (see
/// `sink.rs` for the measurements behind this). Nothing is dropped. `RUST_LOG`,
/// when set, overrides `level`.
pub fn init(level: &str, format: LogFormat) -> LogGuard {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = sink::start(Box::new(std::io::stdout()));
    let sink = writer.sink();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_target(true);
    let installed = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    if installed.is_ok() {
        let _ = INSTALLED.set((sink, format));
    }
    guard
}
