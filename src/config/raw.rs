//! Raw serde structs: exactly what the TOML files may contain.
//!
//! `deny_unknown_fields` everywhere, so a typo is an error with its position,
//! never a silently ignored setting. Values that need checking are
//! [`Spanned`] so that a problem can point at its line and column.

use std::collections::BTreeMap;

use serde::de::value::MapAccessDeserializer;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use toml::Spanned;
use toml::value::Datetime;

/// `authgate.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "the authgate config: tables such as [server] and [auth]")]
pub struct RawConfig {
    /// `[server]`: listeners and protocol options.
    #[serde(default, deserialize_with = "table")]
    pub server: RawServer,
    /// `[auth]`: users file, verified cache, argon2 pool, throttle.
    #[serde(default, deserialize_with = "table")]
    pub auth: RawAuth,
    /// `[log]`: filter, format, access events.
    #[serde(default, deserialize_with = "table")]
    pub log: RawLog,
    /// `[limits]`: timeouts, sizes, connection caps.
    #[serde(default, deserialize_with = "table")]
    pub limits: RawLimits,
    /// `[egress]`: ranges opened in the default-deny egress policy.
    #[serde(default, deserialize_with = "table")]
    pub egress: RawEgress,
    /// `[dns]`: name servers.
    #[serde(default, deserialize_with = "table")]
    pub dns: RawDns,
    /// `[reload]`: file watching.
    #[serde(default, deserialize_with = "table")]
    pub reload: RawReload,
    /// `[upstream]`: TLS trust for `https://` origins.
    #[serde(default, deserialize_with = "table")]
    pub upstream: RawUpstream,
    /// `[admin]`: the admin listener.
    #[serde(default, deserialize_with = "table")]
    pub admin: RawAdmin,
    /// `[metrics]`: optional metric series.
    #[serde(default, deserialize_with = "table")]
    pub metrics: RawMetrics,
    /// `[policy]`: what happens when no rule matches.
    #[serde(default, deserialize_with = "table")]
    pub policy: RawPolicy,
    /// `[[rules]]`, first match wins.
    #[serde(default, deserialize_with = "tables")]
    pub rules: Vec<Spanned<RawRule>>,
}

/// `[admin]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "an [admin] table")]
pub struct RawAdmin {
    /// Address of the admin listener (`/metrics`, `/healthz`, `/readyz`).
    pub listen: Option<Spanned<String>>,
}

/// `[metrics]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a [metrics] table")]
pub struct RawMetrics {
    /// Per-user series (capped).
    pub per_user: Option<bool>,
}

/// `[upstream]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "an [upstream] table")]
pub struct RawUpstream {
    /// CA certificates (PEM) that origins of `https://` requests must chain to.
    pub ca_file: Option<Spanned<String>>,
}

/// `[reload]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a [reload] table")]
pub struct RawReload {
    /// Reload when the files change (SIGHUP always works).
    pub watch: Option<bool>,
}

/// `[dns]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a [dns] table")]
pub struct RawDns {
    /// Name servers (`ip` or `ip:port`, port 53 by default); the system's
    /// when absent or empty.
    pub servers: Option<Vec<Spanned<String>>>,
}

/// `[policy]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a [policy] table")]
pub struct RawPolicy {
    /// `"allow"` or `"deny"`.
    pub default: Option<Spanned<String>>,
}

/// `[server] proxy_protocol`: for every plain listener, or for those listed.
#[derive(Debug)]
pub enum RawProxyProtocol {
    /// Every plain listener, or none.
    All(bool),
    /// The listeners of these `server.listen` addresses, each where it is
    /// written (as untagged enum variants they lost their places, and each
    /// problem was put at the list's `[`; probe 147).
    Only(Vec<Spanned<String>>),
}

impl<'de> Deserialize<'de> for RawProxyProtocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> Visitor<'de> for Either {
            type Value = RawProxyProtocol;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("true, false or a list of server.listen addresses")
            }
            fn visit_bool<E: serde::de::Error>(self, all: bool) -> Result<Self::Value, E> {
                Ok(RawProxyProtocol::All(all))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut only = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<String>>()? {
                    only.push(item);
                }
                Ok(RawProxyProtocol::Only(only))
            }
        }
        d.deserialize_any(Either)
    }
}

/// A port or a `"lo-hi"` range.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
#[serde(expecting = "expected a port number or a range such as \"8000-8999\"")]
pub enum RawPort {
    /// A single port.
    Num(i64),
    /// `"lo-hi"`, inclusive.
    Range(String),
    /// Anything else (`443.0`, `true`): refused by the rule's check, which
    /// names the rule, the setting and the element (serde's message for
    /// it named none and pointed at the array; probe 230).
    Other(toml::Value),
}

/// One `[[rules]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a [[rules]] table")]
pub struct RawRule {
    /// Shown in 403 details, logs and `explain`.
    pub name: Spanned<String>,
    /// `"allow"` or `"deny"`.
    pub action: Spanned<String>,
    /// User names the rule applies to.
    pub users: Option<Spanned<Vec<Spanned<String>>>>,
    /// Groups the rule applies to.
    pub groups: Option<Spanned<Vec<Spanned<String>>>>,
    /// Host patterns: exact, `*.suffix`, `*`, or an IP address.
    pub hosts: Option<Spanned<Vec<Spanned<String>>>>,
    /// Target ports and ranges.
    pub ports: Option<Spanned<Vec<Spanned<RawPort>>>>,
    /// Request methods (`CONNECT` for tunnels).
    pub methods: Option<Spanned<Vec<Spanned<String>>>>,
    /// Ranges the target's resolved addresses must be in (allow) or touch (deny).
    pub cidrs: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[limits]`: durations as strings ("30s"), sizes and counts as integers.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a [limits] table")]
pub struct RawLimits {
    /// Time to receive a whole request head (408 after it).
    pub header_read_timeout: Option<Spanned<String>>,
    /// Keep-alive client connection with no request in progress.
    pub idle_timeout: Option<Spanned<String>>,
    /// Connecting to the origin (TCP and TLS).
    pub connect_timeout: Option<Spanned<String>>,
    /// Waiting for a DNS answer.
    pub dns_timeout: Option<Spanned<String>>,
    /// Waiting for the origin's response head.
    pub upstream_response_timeout: Option<Spanned<String>>,
    /// A tunnel with no byte in either direction.
    pub tunnel_idle_timeout: Option<Spanned<String>>,
    /// A pooled origin connection with no request on it.
    pub upstream_idle_timeout: Option<Spanned<String>>,
    /// A client that accepts no byte of a response.
    pub send_timeout: Option<Spanned<String>>,
    /// How long requests and tunnels may stay open after SIGTERM/SIGINT.
    pub shutdown_grace: Option<Spanned<String>>,
    /// Largest request head (431 beyond it).
    pub max_header_bytes: Option<Spanned<i64>>,
    /// Client connections at once.
    pub max_connections: Option<Spanned<i64>>,
    /// Client connections at once from one address (IPv6: /64).
    pub max_connections_per_ip: Option<Spanned<i64>>,
}

/// `[egress]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "an [egress] table")]
pub struct RawEgress {
    /// Ranges opened although the egress policy denies them by default.
    #[serde(default)]
    pub allow_cidrs: Vec<Spanned<String>>,
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a [server] table")]
pub struct RawServer {
    /// Plain-TCP proxy listeners (`"ip:port"`).
    pub listen: Option<Spanned<Vec<Spanned<String>>>>,
    /// Realm of the 407 challenge.
    pub realm: Option<Spanned<String>>,
    /// Add a `Via` header to forwarded messages.
    pub via: Option<bool>,
    /// The plain listeners that expect a PROXY protocol header: all, none
    /// or those listed.
    pub proxy_protocol: Option<Spanned<RawProxyProtocol>>,
    /// Peers allowed to send a PROXY header (CIDRs or addresses).
    pub proxy_protocol_from: Option<Vec<Spanned<String>>>,
    /// Async worker threads; 0 = one per core.
    pub worker_threads: Option<Spanned<i64>>,
    /// `[[server.tls]]` listeners.
    #[serde(default, deserialize_with = "tables")]
    pub tls: Vec<Spanned<RawTls>>,
}

/// One `[[server.tls]]` listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a [[server.tls]] table")]
pub struct RawTls {
    /// The TLS listener's address.
    pub listen: Spanned<String>,
    /// PEM certificate chain, leaf first.
    pub cert: Spanned<String>,
    /// PEM private key matching the certificate.
    pub key: Spanned<String>,
    /// This listener expects a PROXY header before the TLS handshake.
    pub proxy_protocol: Option<bool>,
}

/// `[auth]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "an [auth] table")]
pub struct RawAuth {
    /// The users file, relative to the config's folder.
    pub users_file: Option<Spanned<String>>,
    /// How long a verified `Proxy-Authorization` value is trusted.
    pub cache_ttl: Option<Spanned<String>>,
    /// Password verifications that may wait for a worker (503 beyond).
    pub max_pending: Option<Spanned<i64>>,
    /// Password verifications run at once; 0 = half the cores.
    pub verify_threads: Option<Spanned<i64>>,
    /// `[auth.argon2]`: parameters for new hashes.
    #[serde(default, deserialize_with = "table")]
    pub argon2: RawArgon2,
    /// `[auth.throttle]`: failed-login throttle.
    #[serde(default, deserialize_with = "table")]
    pub throttle: RawThrottle,
}

/// `[auth.throttle]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "an [auth.throttle] table")]
pub struct RawThrottle {
    /// Throttle clients with many failed logins.
    pub enabled: Option<bool>,
    /// Failed attempts allowed in a burst.
    pub max_failures: Option<Spanned<i64>>,
    /// Time in which `max_failures` attempts come back.
    pub window: Option<Spanned<String>>,
    /// Tarpit before a throttled 429.
    pub delay: Option<Spanned<String>>,
}

/// `[auth.argon2]`: parameters for new hashes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "an [auth.argon2] table")]
pub struct RawArgon2 {
    /// Memory in KiB.
    pub m_cost: Option<Spanned<i64>>,
    /// Iterations.
    pub t_cost: Option<Spanned<i64>>,
    /// Parallelism.
    pub p_cost: Option<Spanned<i64>>,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a [log] table")]
pub struct RawLog {
    /// A `tracing` filter (`RUST_LOG` overrides it).
    pub level: Option<Spanned<String>>,
    /// `"text"` or `"json"`.
    pub format: Option<Spanned<String>>,
    /// Emit the per-request access event.
    pub access: Option<bool>,
}

/// `users.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a users file: [users.NAME] tables")]
pub struct RawUsers {
    /// `[users.NAME]` tables by name.
    #[serde(default, deserialize_with = "user_tables")]
    pub users: BTreeMap<Spanned<String>, RawUser>,
}

/// Deserializes `T` from a table, and only a table: serde's derived
/// structs also take an array of their fields in order, and ignore extra
/// elements (`throttle = [true, 3]`, or a user as `["$argon2id$…", ["g"],
/// false, 2099-01-01, "extra"]`, were accepted).
fn table<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    TableOnly::deserialize(d).map(|TableOnly(t)| t)
}

/// An array of tables (`[[rules]]`), each one a table (see [`table`]).
fn tables<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<Spanned<T>>, D::Error> {
    let all: Vec<Spanned<TableOnly<T>>> = Vec::deserialize(d)?;
    Ok(all
        .into_iter()
        .map(|t| {
            let span = t.span();
            let TableOnly(inner) = t.into_inner();
            Spanned::new(span, inner)
        })
        .collect())
}

/// The users, each one a table (see [`table`]).
fn user_tables<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<Spanned<String>, RawUser>, D::Error> {
    let users: BTreeMap<Spanned<String>, TableOnly<RawUser>> = BTreeMap::deserialize(d)?;
    Ok(users.into_iter().map(|(name, TableOnly(user))| (name, user)).collect())
}

/// A `T` that was a table.
struct TableOnly<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for TableOnly<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(TableVisitor(std::marker::PhantomData))
    }
}

struct TableVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for TableVisitor<T> {
    type Value = TableOnly<T>;

    /// What `T` says it expects (`a [server] table`): its visitor's words,
    /// had from the error it gives for a unit value (only ever on the way
    /// to an error).
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = serde::de::value::UnitDeserializer::<serde::de::value::Error>::new();
        let said = T::deserialize(unit).err().map(|e| e.to_string());
        let what = said.as_deref().and_then(|m| m.split_once(", expected ")).map_or("a table", |(_, w)| w);
        f.write_str(what)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map)).map(TableOnly)
    }
}

/// One `[users.NAME]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a user table: password, and optionally groups, disabled, expires")]
pub struct RawUser {
    /// An argon2 PHC string or a legacy bcrypt hash.
    pub password: Spanned<String>,
    /// Group names used by rules.
    #[serde(default)]
    pub groups: Vec<Spanned<String>>,
    /// A disabled user is refused with 407.
    #[serde(default)]
    pub disabled: bool,
    /// From this instant the user is refused with 407.
    pub expires: Option<Spanned<Datetime>>,
}
