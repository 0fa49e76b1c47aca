//! Logging: tracing setup and the access event.
//!
//! One access event (target `authgate::access`) per request or tunnel, with
//! stable field names. Credentials never reach a log: the request's headers are
//! never logged as a whole, and the user is logged only once authenticated.

mod access;
pub mod metrics;

pub use access::{AccessRecord, AuditEvent, sanitize_username};
pub use metrics::Metrics;

use tracing_subscriber::EnvFilter;

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
/// `RUST_LOG`, when set, overrides `level`. Calling it twice is harmless.
pub fn init(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stdout).with_target(true);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
}
