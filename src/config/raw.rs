//! Raw serde structs: exactly what the TOML files may contain.
//!
//! `deny_unknown_fields` everywhere, so a typo is an error with its position,
//! never a silently ignored setting. Values that need checking are
//! [`Spanned`] so that a problem can point at its line and column.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;
use toml::value::Datetime;

/// `authgate.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub egress: RawEgress,
    #[serde(default)]
    pub dns: RawDns,
    #[serde(default)]
    pub reload: RawReload,
    #[serde(default)]
    pub upstream: RawUpstream,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub policy: RawPolicy,
    #[serde(default)]
    pub rules: Vec<Spanned<RawRule>>,
}

/// `[admin]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Address of the admin listener (`/metrics`, `/healthz`, `/readyz`).
    pub listen: Option<Spanned<String>>,
}

/// `[metrics]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Per-user series (capped).
    pub per_user: Option<bool>,
}

/// `[upstream]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// CA certificates (PEM) that origins of `https://` requests must chain to.
    pub ca_file: Option<Spanned<String>>,
}

/// `[reload]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReload {
    /// Reload when the files change (SIGHUP always works).
    pub watch: Option<bool>,
}

/// `[dns]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    /// Name servers (`ip:port`); the system's when absent.
    pub servers: Option<Vec<Spanned<String>>>,
}

/// `[policy]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub default: Option<Spanned<String>>,
}

/// A port or a `"lo-hi"` range.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawPort {
    Num(i64),
    Range(String),
}

/// One `[[rules]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: Spanned<String>,
    pub action: Spanned<String>,
    pub users: Option<Spanned<Vec<Spanned<String>>>>,
    pub groups: Option<Spanned<Vec<Spanned<String>>>>,
    pub hosts: Option<Spanned<Vec<Spanned<String>>>>,
    pub ports: Option<Spanned<Vec<Spanned<RawPort>>>>,
    pub methods: Option<Spanned<Vec<Spanned<String>>>>,
    pub cidrs: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[limits]`: durations as strings ("30s"), sizes and counts as integers.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub header_read_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub dns_timeout: Option<Spanned<String>>,
    pub upstream_response_timeout: Option<Spanned<String>>,
    pub tunnel_idle_timeout: Option<Spanned<String>>,
    pub send_timeout: Option<Spanned<String>>,
    pub shutdown_grace: Option<Spanned<String>>,
    pub max_header_bytes: Option<Spanned<i64>>,
    pub max_connections: Option<Spanned<i64>>,
    pub max_connections_per_ip: Option<Spanned<i64>>,
}

/// `[egress]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEgress {
    #[serde(default)]
    pub allow_cidrs: Vec<Spanned<String>>,
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Spanned<Vec<Spanned<String>>>>,
    pub realm: Option<Spanned<String>>,
    pub via: Option<bool>,
    pub proxy_protocol: Option<bool>,
    pub worker_threads: Option<Spanned<i64>>,
    #[serde(default)]
    pub tls: Vec<Spanned<RawTls>>,
}

/// One `[[server.tls]]` listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub listen: Spanned<String>,
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
    pub proxy_protocol: Option<bool>,
}

/// `[auth]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub users_file: Option<Spanned<String>>,
    pub cache_ttl: Option<Spanned<String>>,
    pub max_pending: Option<Spanned<i64>>,
    pub verify_threads: Option<Spanned<i64>>,
    #[serde(default)]
    pub argon2: RawArgon2,
    #[serde(default)]
    pub throttle: RawThrottle,
}

/// `[auth.throttle]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawThrottle {
    pub enabled: Option<bool>,
    pub max_failures: Option<Spanned<i64>>,
    pub window: Option<Spanned<String>>,
    pub delay: Option<Spanned<String>>,
}

/// `[auth.argon2]`: parameters for new hashes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawArgon2 {
    pub m_cost: Option<Spanned<i64>>,
    pub t_cost: Option<Spanned<i64>>,
    pub p_cost: Option<Spanned<i64>>,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub level: Option<Spanned<String>>,
    pub format: Option<Spanned<String>>,
    pub access: Option<bool>,
}

/// `users.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUsers {
    #[serde(default)]
    pub users: BTreeMap<Spanned<String>, Spanned<RawUser>>,
}

/// One `[users.NAME]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    pub password: Spanned<String>,
    #[serde(default)]
    pub groups: Vec<Spanned<String>>,
    #[serde(default)]
    pub disabled: bool,
    pub expires: Option<Spanned<Datetime>>,
}
