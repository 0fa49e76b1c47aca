//! Configuration: TOML files → validated, immutable [`Snapshot`].
//!
//! Loading never binds a port: it parses `authgate.toml` and the users file
//! into raw serde structs ([`raw`]), validates every value into types that
//! make bad states unrepresentable, and reports *all* problems with
//! file:line:col ([`ConfigError`]). The proxy reads one `Arc<Snapshot>` per
//! request; a reload builds a whole new snapshot and swaps it in.

mod error;
pub mod file;
mod rules;
mod toml_terms;

pub use rules::host_pattern;
pub mod raw;
mod users;
pub(crate) use users::invisible;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub(crate) use error::escaped;
pub use error::{ConfigError, Problem, command, line_col, shell_word, shown, shown_lines, shown_path};

/// The config file read when `--config` is not given.
pub const DEFAULT_PATH: &str = "config/authgate.toml";

use crate::auth::UserStore;
use crate::policy::egress::Egress;
use crate::policy::{Action, Policy};
use crate::telemetry::LogFormat;

/// `[server]` settings.
#[derive(Debug, Clone)]
pub struct Server {
    /// Plain-TCP proxy listeners.
    pub listen: Vec<SocketAddr>,
    /// Basic realm in the 407 challenge.
    pub realm: String,
    /// Whether to add `Via: 1.1 authgate` both ways.
    pub via: bool,
    /// The plain listeners (of `listen`) that expect a PROXY protocol
    /// header.
    pub proxy_protocol: Vec<SocketAddr>,
    /// The peers whose PROXY header is believed, on every listener that
    /// expects one; empty: any peer's.
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
    /// Async worker threads; 0 means one per core.
    pub worker_threads: usize,
    /// TLS listeners.
    pub tls: Vec<TlsListener>,
}

impl Server {
    /// Whether a connection from `peer` may send a PROXY header (which
    /// then names the client address for logs, rules and limits).
    pub fn may_send_proxy_header(&self, peer: std::net::IpAddr) -> bool {
        let peer = crate::policy::egress::canonical(peer);
        self.proxy_protocol_from.is_empty() || self.proxy_protocol_from.iter().any(|n| n.contains(&peer))
    }
}

/// One `[[server.tls]]` listener, its certificate already loaded.
#[derive(Clone)]
pub struct TlsListener {
    /// Where it listens.
    pub listen: SocketAddr,
    /// Certificate chain file (PEM).
    pub cert: PathBuf,
    /// Private key file (PEM).
    pub key: PathBuf,
    /// Whether it expects a PROXY protocol header.
    pub proxy_protocol: bool,
    /// The loaded certificate and key.
    pub certified: Arc<rustls::sign::CertifiedKey>,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("listen", &self.listen)
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

/// `[auth]` settings.
#[derive(Debug, Clone)]
pub struct Auth {
    /// Where the users file is (resolved against the config's folder).
    pub users_file: PathBuf,
    /// How long a verified `Proxy-Authorization` value is trusted.
    pub cache_ttl: Duration,
    /// How many verifications may wait for a worker before 503.
    pub max_pending: usize,
    /// Password verifications run at once; 0 means half the cores (at least 1).
    pub verify_threads: usize,
    /// Parameters for new hashes (`hash-password`, `users add`).
    pub argon2: argon2::Params,
    /// Failed-login throttling per client address.
    pub throttle: crate::auth::throttle::Settings,
}

/// `[log]` settings.
#[derive(Debug, Clone)]
pub struct Log {
    /// tracing filter directive, e.g. `info`.
    pub level: String,
    /// text or json.
    pub format: LogFormat,
    /// Whether the per-request access event is emitted.
    pub access: bool,
}

/// `[limits]`: timeouts and sizes that keep one client from hurting others.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time a client has to send a complete request head (slowloris).
    pub header_read_timeout: Duration,
    /// How long an idle keep-alive client connection is kept.
    pub idle_timeout: Duration,
    /// Time to establish the TCP connection upstream.
    pub connect_timeout: Duration,
    /// Time for a DNS answer.
    pub dns_timeout: Duration,
    /// Time from sending a request upstream to its response head.
    pub upstream_response_timeout: Duration,
    /// A tunnel with no bytes either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// A pooled origin connection unused for this long is closed.
    pub upstream_idle_timeout: Duration,
    /// A client that accepts no byte of its response for this long is
    /// disconnected (slow read).
    pub send_timeout: Duration,
    /// How long tunnels may keep running after a shutdown signal.
    pub shutdown_grace: Duration,
    /// Largest request head accepted (larger → 431).
    pub max_header_bytes: usize,
    /// Most client connections at once.
    pub max_connections: usize,
    /// Most client connections at once from one client address.
    pub max_connections_per_ip: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            dns_timeout: Duration::from_secs(5),
            upstream_response_timeout: Duration::from_secs(300),
            tunnel_idle_timeout: Duration::from_secs(3600),
            upstream_idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            max_connections: 16_384,
            max_connections_per_ip: 8192,
        }
    }
}

/// Everything a request needs, validated. Immutable; replaced whole on reload.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The config file this came from.
    pub config_path: PathBuf,
    /// `[server]`.
    pub server: Server,
    /// `[auth]`.
    pub auth: Auth,
    /// `[log]`.
    pub log: Log,
    /// `[limits]`.
    pub limits: Limits,
    /// `[egress]`: which addresses may be dialled.
    pub egress: Egress,
    /// `[dns] servers`; empty means the system's resolvers.
    pub dns_servers: Vec<SocketAddr>,
    /// `[policy]` and `[[rules]]`.
    pub policy: Policy,
    /// `[reload] watch`: reload when the files change.
    pub watch: bool,
    /// `[upstream] ca_file`: roots for `https://` origins (system roots when `None`).
    pub upstream_ca: Option<PathBuf>,
    /// TLS to `https://` origins, trusting `upstream_ca` (read with this
    /// configuration) or the system's roots.
    pub upstream_tls: std::sync::Arc<rustls::ClientConfig>,
    /// `[admin] listen`: the admin listener, off when `None`.
    pub admin: Option<SocketAddr>,
    /// `[metrics] per_user`.
    pub metrics_per_user: bool,
    /// The users.
    pub users: Arc<UserStore>,
    /// The files of [`Snapshot::watched`] as they were just before this
    /// snapshot read them (a TLS listener's certificate and key before
    /// the listener reads them), for the reload watcher's first look: a
    /// change that lands while the proxy starts is then seen. A reload of
    /// the users file alone keeps them; the watcher has its own by then.
    pub files_as_read: Vec<file::Stamp>,
    /// Unique to each configuration loaded (a users file applied on its own
    /// keeps it): origin connections are pooled under it, so one made under
    /// an egress policy never serves a request checked under another.
    pub id: u64,
}

/// The next [`Snapshot::id`].
static NEXT_SNAPSHOT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Snapshot {
    /// One-line summary for `authgate check` and the startup log.
    pub fn summary(&self) -> String {
        self.summary_listening(&self.listening())
    }

    /// The summary, saying `listening` for the listeners: after a reload
    /// that changed them, those still bound (the change needs a restart).
    pub fn summary_listening(&self, listening: &str) -> String {
        format!(
            "{} user(s), {} rule(s) (default {}); listening on {listening}; users file {}",
            self.users.len(),
            self.policy.rules.len(),
            self.policy.default.as_str(),
            error::shown_path(&self.auth.users_file)
        )
    }

    /// The files a reload watches: the config, the users file, each TLS
    /// listener's certificate and key, and `[upstream] ca_file`, in that
    /// order.
    pub fn watched(&self) -> Vec<PathBuf> {
        watched(&self.config_path, &self.auth.users_file, &self.server.tls, self.upstream_ca.as_deref())
    }

    /// The listeners of this snapshot, for the summary.
    pub fn listening(&self) -> String {
        let plain = |a: &SocketAddr| match self.server.proxy_protocol.contains(a) {
            true => format!("{a} (PROXY protocol)"),
            false => a.to_string(),
        };
        let mut listen: Vec<String> = self.server.listen.iter().map(plain).collect();
        listen.extend(self.server.tls.iter().map(|t| match t.proxy_protocol {
            true => format!("{} (TLS, PROXY protocol)", t.listen),
            false => format!("{} (TLS)", t.listen),
        }));
        if listen.is_empty() { "nothing".into() } else { listen.join(", ") }
    }
}

/// Reads and validates the config at `path` and the users file it names.
///
/// # Errors
/// Every problem found in either file, with file:line:col.
pub fn load(path: &Path) -> Result<Snapshot, ConfigError> {
    let config_as_read = file::stamp(path);
    load_source(path, &read(path)?, config_as_read, None)
}

/// [`load`] for a reload, which refuses two files that would open the proxy
/// by omission, as a file being written (`cat > file`, a truncated copy, a
/// slow `scp`) reads at a reload far more often than a wish for that:
///
/// - one without a single setting (empty, comments or table headers only,
///   `server = {}`): loaded, it would put every setting back to its default,
///   `[policy] default = "allow"` among them;
/// - one that says no `[policy] default` while the running configuration
///   denies by default: its absence means "allow". An admin who wants that
///   writes `default = "allow"`.
///
/// And a users file with no users and no `[users]` table, while the running
/// one has users (see `read_users`); and a TLS listener's certificate that
/// has expired, in place of the one in use (the old one keeps serving).
///
/// A start still accepts all four (the summary line says "default allow";
/// an expired certificate is a warning).
///
/// # Errors
/// As [`load`], plus those three.
pub fn load_for_reload(path: &Path, running: &Snapshot) -> Result<Snapshot, ConfigError> {
    let config_as_read = file::stamp(path);
    let source = read(path)?;
    let refuse = |message: &str| {
        Err(ConfigError::new(vec![Problem {
            file: path.to_path_buf(),
            line: 0,
            col: 0,
            message: message.to_owned(),
        }]))
    };
    // Weighed before the parse below, as `load_source` does before its own:
    // a reload parsed a file of any weight here first (probe 103: 6 MB
    // took 2.1 GB).
    let mut heavy = error::Collector::new(path, &source);
    if heavy.too_heavy(false) {
        return Err(ConfigError::new(heavy.problems));
    }
    // Text that is not TOML is left to `load_source`, which locates the error.
    let doc = source.parse::<toml_edit::DocumentMut>().ok();
    if doc.as_ref().is_some_and(|d| !has_setting(d.as_table())) {
        return refuse(
            "no settings at all (empty, only comments or table headers, or still being written): a \
             reload does not put every setting back to its default, which allows all traffic; restart \
             to run on defaults",
        );
    }
    // What is read of this tree past here, taken before the parse of
    // `load_source`: the tree was kept through it, and a reload of a heavy
    // file took 1.6 times the memory `check` takes (probe 356).
    let lacks =
        |p: Option<&toml_edit::Item>| p.is_none_or(|p| p.is_table_like() && p.get("default").is_none());
    let lacks_default = doc.as_ref().is_some_and(|d| lacks(d.get("policy")));
    let says_default = doc.as_ref().and_then(|d| d.get("policy")?.get("default")).is_some();
    let tls = doc.as_ref().and_then(|d| d.get("server")?.get("tls")).cloned();
    drop(doc);
    // Checked on a config that loads, so that a wrong value (`policy` not
    // a table, say) is reported as what it is, not as a missing default;
    // and added to the problems of one that does not, where the file
    // surely lacks it: it was told only once the others were fixed
    // (probe 160).
    let new = match load_source(path, &source, config_as_read, Some(&running.users)) {
        Ok(new) => new,
        Err(mut e) => {
            if running.policy.default == Action::Deny && lacks_default {
                e.problems.push(Problem {
                    file: path.to_path_buf(),
                    line: 0,
                    col: 0,
                    message: MISSING_DEFAULT.to_owned(),
                });
            }
            // And an expired certificate that would replace one in use,
            // read from the files the text names (it was told once the
            // other problems were fixed; probe 164).
            if let Some(tls) = &tls {
                e.problems.extend(expired_named(tls, path, running));
            }
            return Err(e);
        }
    };
    let opens =
        running.policy.default == Action::Deny && new.policy.default == Action::Allow && !says_default;
    let mut expired = expired_replacements(&new, running);
    if !expired.is_empty() {
        // Told with the expired certificate, not after it is renewed
        // (probe 161).
        if opens {
            expired.push(Problem {
                file: path.to_path_buf(),
                line: 0,
                col: 0,
                message: MISSING_DEFAULT.to_owned(),
            });
        }
        // Watched until fixed, as the files of any refused configuration.
        let named = new.watched().into_iter().zip(new.files_as_read.iter().cloned()).skip(1).collect();
        return Err(ConfigError { problems: expired, named });
    }
    if opens {
        return refuse(MISSING_DEFAULT);
    }
    Ok(new)
}

/// Why a reload refuses a config without `[policy] default` while the
/// running one denies by default.
const MISSING_DEFAULT: &str = "[policy] default is missing, and missing means \"allow\", where the running \
     configuration denies by default: a reload does not open the proxy by omission (the file may be half \
     written); write `default = \"deny\"` back, or `default = \"allow\"` to mean it";

/// What a reload refuses in place of a running configuration that has
/// users and denies by default: a config without `[policy] default`, a
/// users file with no users and no `[users]` table. `check` warns of them
/// (it said `ok`, and a `systemctl reload` that runs it first went on to a
/// reload that failed; probe 160), and refuses them with `--reload`.
pub fn reload_refusals(snap: &Snapshot) -> Vec<String> {
    let mut refusals: Vec<String> = default_refusal(&snap.config_path).into_iter().collect();
    if snap.users.is_empty() && said(&snap.auth.users_file, "users") == Some(false) {
        refusals.push(format!(
            "{}: no users and no [users] table: every login gets 407, and a reload refuses this file in \
             place of one that has users (write `[users]` to mean it)",
            shown_path(&snap.auth.users_file)
        ));
    }
    refusals
}

/// Whether the TOML file at `path` has `key` (`policy.default`, or a
/// top-level key); `None` when it cannot be read as TOML.
fn said(path: &Path, key: &str) -> Option<bool> {
    // Not a file past the weight `load` refuses unparsed: parsed here, a
    // refused 30 MB file took `check` to 3 GB (probe 218).
    let text = read(path).ok().filter(|s| toml_terms::past_max_weight(s).is_none())?;
    text.parse::<toml_edit::DocumentMut>().ok().map(|d| match key {
        "policy.default" => d.get("policy").and_then(|p| p.get("default")).is_some(),
        _ => d.contains_key(key),
    })
}

/// The [`reload_refusals`] line for a config file without `[policy]
/// default`, if it has none; of a file that does not load too, so that
/// `check --reload` says it with the other problems (it was said once they
/// were fixed; probe 166).
pub fn default_refusal(config: &Path) -> Option<String> {
    (said(config, "policy.default") == Some(false)).then(|| {
        format!(
            "{}: [policy] default is missing, so it is \"allow\"; a reload refuses this file in place of a \
             configuration that denies by default (write `default = \"allow\"` to mean it)",
            shown_path(config)
        )
    })
}

/// What `authgate check` warns of in the rules: groups no user is in, users
/// the users file has not, one line per rule; and rules named `default` or
/// `-`, and a user named `-`, which the logs write for the policy default
/// and for none. A rule with none of its
/// groups and users there matches nobody (`groups = ["staf"]` was `ok`;
/// probe 160); one that still reaches someone through the others is said
/// to (each missing group was a line of its own that said the rule matched
/// nobody, though a rule matches a user in any of its groups; probe 218).
pub fn rule_hints(snap: &Snapshot) -> Vec<String> {
    let mut hints = Vec::new();
    // Gathered once: each group a rule names looked through every user
    // (5,000 rules and 50,000 users: 7.6 s; probe 218).
    let held: std::collections::HashSet<&str> =
        snap.users.iter().flat_map(|u| u.groups.iter().map(|g| &**g)).collect();
    let file = shown_path(&snap.auth.users_file);
    for rule in &snap.policy.rules {
        let groups = rule.groups.as_deref().unwrap_or_default();
        let users = rule.users.as_deref().unwrap_or_default();
        let (known_groups, missing_groups): (Vec<_>, Vec<_>) =
            groups.iter().partition(|g| held.contains(&***g));
        let (known_users, missing_users): (Vec<_>, Vec<_>) =
            users.iter().partition(|u| snap.users.get(u).is_some());
        let mut said = Vec::new();
        if !missing_groups.is_empty() {
            said.push(format!("no user in {file} is in group {}", either(&missing_groups)));
        }
        if !missing_users.is_empty() {
            said.push(format!("no user {} in {file}", either(&missing_users)));
        }
        if said.is_empty() {
            continue;
        }
        let reach = if known_groups.is_empty() && known_users.is_empty() {
            "so it matches nobody yet"
        } else {
            "it matches only through its other groups and users (a misspelling?)"
        };
        hints.push(format!("rule `{}`: {}, {reach}", rule.name, said.join(", and ")));
    }
    // The access and audit lines write `default` for the policy default
    // and `-` for no rule or no user: a rule or user of those names reads
    // as them there (probe 375). Said, not refused: such a file loaded
    // before.
    for rule in snap.policy.rules.iter().filter(|r| matches!(&*r.name, "default" | "-")) {
        hints.push(format!(
            "rule `{}`: the access line's `rule` field writes `default` for the policy default and `-` for none, \
             so this rule's decisions read as those there; give it another name",
            rule.name
        ));
    }
    if snap.users.get("-").is_some() {
        hints.push(format!(
            "user `-` in {file}: the access and audit lines write `-` for no user, so this user's requests \
             read as nobody's there; give it another name"
        ));
    }
    hints
}

/// `a`, `a` or `b`, `a`, `b` or `c`: names as a hint lists them; one that
/// [may hold a password](may_hold_a_password) is not shown (it was; probe
/// 332).
fn either(names: &[&Arc<str>]) -> String {
    let quoted: Vec<String> = names
        .iter()
        .map(|n| match shown_user(n) {
            Some(n) => format!("`{n}`"),
            None => "one whose name is not shown (it may hold a password)".to_owned(),
        })
        .collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.concat(),
    }
}

/// What `check` says of PROXY protocol settings that do not do what they
/// seem to (both were `ok` without a word, probe 207): a list of trusted
/// balancers with no listener expecting the header, and listeners that
/// expect it from anyone.
pub fn proxy_protocol_hints(snap: &Snapshot) -> Vec<String> {
    let server = &snap.server;
    let expected = !server.proxy_protocol.is_empty() || server.tls.iter().any(|t| t.proxy_protocol);
    match (expected, server.proxy_protocol_from.is_empty()) {
        (false, false) => vec![
            "server.proxy_protocol_from: no listener expects a PROXY header (`proxy_protocol` in [server] for \
             plain listeners, in [[server.tls]] for TLS ones), so it applies to nothing"
                .to_string(),
        ],
        (true, true) => vec![
            "server.proxy_protocol_from is empty: whoever reaches a PROXY protocol listener can name any client \
             address (for the logs, the throttle and the limits); list the balancers there, or let only them \
             reach those listeners"
                .to_string(),
        ],
        _ => Vec::new(),
    }
}

/// The TLS listeners of `new` whose certificate has expired and is not the
/// one `running` serves on that address: a renewal gone wrong replaced a
/// working certificate with one every client refuses (probe 118). An
/// expired certificate already in use stays (a reload for another file
/// does not fail over it).
fn expired_replacements(new: &Snapshot, running: &Snapshot) -> Vec<Problem> {
    let problems = new
        .server
        .tls
        .iter()
        .flat_map(|t| expired_replacement(&t.cert, Some(t.listen), &t.certified.cert, running))
        .collect::<Vec<_>>();
    once_each(problems)
}

/// [`expired_replacements`] of a config that does not load, `tls` the
/// `server.tls` item of its text at `path`: the certificates its
/// `[[server.tls]]` tables name that can be read.
fn expired_named(tls: &toml_edit::Item, path: &Path, running: &Snapshot) -> Vec<Problem> {
    let base = path.parent().unwrap_or(Path::new("."));
    let tables = tls.as_array_of_tables();
    // (No more than a config may have: each reads its file.)
    let problems = tables
        .into_iter()
        .flatten()
        .take(validate::MAX_LISTENERS)
        .flat_map(|t| {
            let cert = base.join(t.get("cert").and_then(toml_edit::Item::as_str)?);
            let listen =
                t.get("listen").and_then(toml_edit::Item::as_str).and_then(|l| l.trim().parse().ok());
            let chain = crate::server::tls::load_chain(&cert).ok()?;
            Some(expired_replacement(&cert, listen, &chain, running))
        })
        .flatten()
        .collect::<Vec<_>>();
    once_each(problems)
}

/// `problems` each once, in order: one certificate file named by two
/// listeners was told twice, alike (probe 166). (Kept in a set: compared
/// with every one kept before, 128,000 expired intermediates took a reload
/// 44 s of CPU; probe 339.)
fn once_each(problems: Vec<Problem>) -> Vec<Problem> {
    let mut seen = std::collections::HashSet::new();
    problems.into_iter().filter(|p| seen.insert((p.file.clone(), p.message.clone()))).collect()
}

/// The problems of the chain read from `cert` for the listener on
/// `listen`: each certificate of it that has expired (the leaf, or one past
/// it that is no root: see [`ChainDateProblem::of_chain`]), and is not one
/// `running` serves there already: a leaf in use stays; so
/// does an intermediate sent along with the chain in use. All of them: a
/// reload told of the first only was refused again for the next (probe
/// 186).
///
/// [`ChainDateProblem::of_chain`]: crate::server::tls::ChainDateProblem::of_chain
fn expired_replacement(
    cert: &Path,
    listen: Option<std::net::SocketAddr>,
    chain: &[rustls::pki_types::CertificateDer<'_>],
    running: &Snapshot,
) -> Vec<Problem> {
    let problems = crate::server::tls::ChainDateProblem::of_chain(chain, std::time::SystemTime::now());
    // What the listener on `listen` serves now: its leaf, and the rest of
    // its chain in a set (one scan of it per certificate was quadratic).
    let serving = || running.server.tls.iter().filter(|r| Some(r.listen) == listen);
    let leaves: Vec<&[u8]> = serving().filter_map(|r| r.certified.cert.first().map(|c| c.as_ref())).collect();
    let sent_along: std::collections::HashSet<&[u8]> =
        serving().flat_map(|r| r.certified.cert.iter().skip(1).map(|c| c.as_ref())).collect();
    let in_use = |index: usize| {
        let Some(der) = chain.get(index).map(|c| c.as_ref()) else { return false };
        if index == 0 { leaves.contains(&der) } else { sent_along.contains(der) }
    };
    problems
        .into_iter()
        .filter(|p| p.problem.expired() && !in_use(p.index))
        .map(|problem| Problem {
            file: cert.to_path_buf(),
            line: 0,
            col: 0,
            message: format!(
                "{problem}; a reload does not put it in place of the certificate in use, which keeps serving"
            ),
        })
        .collect()
}

/// Whether a TOML table holds at least one key with a value, at any depth
/// (a table header alone is no setting).
fn has_setting(table: &dyn toml_edit::TableLike) -> bool {
    table.iter().any(|(_, item)| match item {
        toml_edit::Item::None => false,
        toml_edit::Item::Table(t) => has_setting(t),
        toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => has_setting(t),
        toml_edit::Item::ArrayOfTables(a) => !a.is_empty(),
        toml_edit::Item::Value(_) => true,
    })
}

/// [`Snapshot::watched`], of its parts.
fn watched(config: &Path, users: &Path, tls: &[TlsListener], upstream_ca: Option<&Path>) -> Vec<PathBuf> {
    let mut files = vec![config.to_path_buf(), users.to_path_buf()];
    for t in tls {
        files.push(t.cert.clone());
        files.push(t.key.clone());
    }
    files.extend(upstream_ca.map(Path::to_path_buf));
    files
}

/// [`load`] of the config text `source`, read from `path` when it had the
/// stamp `config_as_read`; for a reload, `running` are the users in effect.
fn load_source(
    path: &Path,
    source: &str,
    config_as_read: file::Stamp,
    running: Option<&UserStore>,
) -> Result<Snapshot, ConfigError> {
    let (settings, mut problems) = validate::config(path, source).map_err(ConfigError::new)?;
    // The config's own stamp is from before its text was read.
    let mut others =
        watched(path, &settings.auth.users_file, &settings.server.tls, settings.upstream_ca.as_deref());
    others.extend(settings.unusable.iter().cloned());
    let files_as_read: Vec<file::Stamp> =
        std::iter::once(config_as_read).chain(others.iter().skip(1).map(|f| file::stamp(f))).collect();
    let (users, mut p) = read_users(&settings.auth, path, running);
    // A users file that cannot be read is told with the setting that
    // names it, as a certificate or CA file is (it was the users file's
    // path alone; probe 272). (Still a problem of the users file: a reload
    // tells by that whether the users file in force can apply alone.)
    if let Some((line, col)) = settings.users_file_at {
        for p in p.iter_mut().filter(|p| p.line == 0 && p.message.starts_with("cannot read")) {
            p.message = format!("{} (auth.users_file, {}:{line}:{col})", p.message, shown_path(path));
        }
    }
    problems.extend(p);
    // Refused, the config still says which files to watch for a fix.
    let named = |problems: ConfigError| ConfigError {
        named: others.iter().cloned().zip(files_as_read.iter().cloned()).skip(1).collect(),
        ..problems
    };
    if !problems.is_empty() {
        return Err(named(ConfigError::new(problems)));
    }
    let store = user_store(users, &settings.auth, running).map_err(named)?;
    Ok(Snapshot {
        config_path: path.to_path_buf(),
        server: settings.server,
        auth: settings.auth,
        log: settings.log,
        limits: settings.limits,
        egress: settings.egress,
        dns_servers: settings.dns_servers,
        policy: settings.policy,
        watch: settings.watch,
        upstream_ca: settings.upstream_ca,
        upstream_tls: settings.upstream_tls,
        admin: settings.admin,
        metrics_per_user: settings.metrics_per_user,
        users: Arc::new(store),
        files_as_read,
        id: NEXT_SNAPSHOT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
    })
}

/// The users file `auth` names on its own, under those settings: a reload
/// whose config file has errors still applies it (a revocation must not
/// wait for a typo elsewhere). `running` are the users in effect; `config`
/// is the config file in effect, for the commands messages suggest.
///
/// # Errors
/// Every problem in the users file, and an unfinished one (see
/// `read_users`).
pub fn load_users(auth: &Auth, config: &Path, running: &UserStore) -> Result<UserStore, ConfigError> {
    let (users, problems) = read_users(auth, config, Some(running));
    if !problems.is_empty() {
        return Err(ConfigError::new(problems));
    }
    user_store(users, auth, Some(running))
}

/// The users in the users file `auth` names, and every problem in it.
///
/// At a reload (`running`, the users in effect, has some), a file with no
/// user and no `users` table (empty, only comments: most likely being
/// written, as `cat > file` or a shell's `>` empties it first) is a
/// problem too: loaded, it locked every user out and closed every
/// connection and tunnel, until the write ended. A file that means it says
/// `[users]`, as `authgate users remove` writes for the last user.
fn read_users(
    auth: &Auth,
    config: &Path,
    running: Option<&UserStore>,
) -> (Vec<crate::auth::store::User>, Vec<Problem>) {
    // `users_file = ""`, a problem of the config already.
    if auth.users_file.as_os_str().is_empty() {
        return (Vec::new(), Vec::new());
    }
    let src = match read(&auth.users_file) {
        Ok(src) => src,
        Err(e) => return (Vec::new(), e.problems),
    };
    let (users, mut problems) = users::parse(&auth.users_file, &src, config);
    // (Parsed again only when it holds no user: a small file.)
    let unfinished = || src.parse::<toml_edit::DocumentMut>().is_ok_and(|d| !d.contains_key("users"));
    if users.is_empty() && problems.is_empty() && running.is_some_and(|r| !r.is_empty()) && unfinished() {
        problems.push(Problem {
            file: auth.users_file.clone(),
            line: 0,
            col: 0,
            message: "no users and no [users] table (empty, only comments, or still being written): a \
                      reload does not remove every user, which would lock everyone out and close their \
                      connections; write `[users]` to mean it"
                .to_owned(),
        });
    }
    (users, problems)
}

fn user_store(
    users: Vec<crate::auth::store::User>,
    auth: &Auth,
    running: Option<&UserStore>,
) -> Result<UserStore, ConfigError> {
    let costs = users::common_costs(&users).unwrap_or_else(|| auth.argon2.clone().into());
    UserStore::new(users, costs, running).map_err(|m| {
        ConfigError::new(vec![Problem { file: auth.users_file.clone(), line: 0, col: 0, message: m }])
    })
}

/// Reads a file as UTF-8 text, naming the path it looked for when that
/// fails, and where the first byte that is not UTF-8 is.
fn read(path: &Path) -> Result<String, ConfigError> {
    let problem =
        |line, col, message| ConfigError::new(vec![Problem { file: path.to_path_buf(), line, col, message }]);
    let bytes =
        file::read_file(path).map_err(|e| problem(0, 0, format!("cannot read: {}", file::reason(&e))))?;
    file::utf8_text(bytes).map_err(|(line, col, message)| problem(line, col, message))
}

/// Whether a config or users file is light enough to be parsed (see
/// `toml_terms::MAX_WEIGHT`).
pub fn within_weight(source: &str) -> bool {
    toml_terms::past_max_weight(source).is_none()
}

/// The `[auth]` settings of a config, and the problems found elsewhere in it.
#[derive(Debug)]
pub struct AuthSettings {
    /// Users file path and argon2 parameters for new hashes.
    pub auth: Auth,
    /// Problems outside `[auth]`: the proxy will not load this config (nor
    /// reload it) until they are fixed, but users can still be managed.
    pub elsewhere: Vec<Problem>,
    /// `[reload] watch`: whether a proxy run with this config sees a change
    /// of the users file by itself; when the config has problems outside
    /// `[auth]`, as the file writes it, and `None` when it does not say a
    /// boolean there.
    pub watched: Option<bool>,
}

/// Reads just the `[auth]` settings of the config (users file path, argon2
/// parameters for new hashes), without reading the users file: for
/// `hash-password` and `users`, which must work while the users file is
/// missing or being repaired, and while someone fixes a rule or a listener:
/// a config whose problems all lie outside `[auth]` still gives them (with
/// those problems in [`AuthSettings::elsewhere`]), since locking a user out
/// must not wait for an unrelated typo to be found.
///
/// # Errors
/// Every problem in the config file, when the file is not TOML at all, has
/// no `[auth]` table, or its `[auth]` table has a problem of its own (those
/// problems are then listed with the others, where they are in the file).
pub fn auth_settings(path: &Path) -> Result<AuthSettings, ConfigError> {
    let source = read(path)?;
    let mut problems = match validate::config(path, &source) {
        Ok((settings, problems)) if problems.is_empty() => {
            return Ok(AuthSettings {
                auth: settings.auth,
                elsewhere: problems,
                watched: Some(settings.watch),
            });
        }
        Ok((_, problems)) | Err(problems) => problems,
    };
    // The whole file is not valid; its `[auth]` table alone may be. Only a
    // table that is there: without one (a typo in its header such as
    // `[Auth]`, a `users_file` whose header line was lost, a file that is
    // not an authgate config) the defaults would send the command to
    // another users file than the one the admin meant.
    let Some(alone) = auth_table_alone(&source) else {
        return Err(ConfigError::new(problems));
    };
    match validate::config(path, &alone) {
        Ok((settings, none)) if none.is_empty() => {
            Ok(AuthSettings { auth: settings.auth, elsewhere: problems, watched: watch_alone(&source) })
        }
        // What stops the command is in `[auth]`: say so even when the whole
        // file's check stopped at an earlier problem and never got there.
        Ok((_, in_auth)) | Err(in_auth) => {
            for p in in_auth {
                if !problems.contains(&p) {
                    problems.push(p);
                }
            }
            problems.sort_by_key(|p| (p.line, p.col));
            Err(ConfigError::new(problems))
        }
    }
}

/// `[reload] watch` as a config with problems writes it (`true` when it is
/// not there, its default). A `users` command warns that the change needs a
/// SIGHUP when it is `false`; with a problem elsewhere in the config (a bad
/// value in `[limits]`), it said nothing, and the change waited for a
/// SIGHUP no one was told to send (probe 202).
fn watch_alone(source: &str) -> Option<bool> {
    if toml_terms::past_max_weight(source).is_some() {
        return None;
    }
    let doc = toml_edit::ImDocument::parse(source).ok()?;
    match doc.as_table().get("reload") {
        None => Some(true),
        Some(reload) => match reload.get("watch") {
            None => Some(true),
            Some(watch) => watch.as_bool(),
        },
    }
}

/// The config with everything but its `[auth]` table (subtables and all)
/// blanked out: every other byte but line ends becomes a space, so that a
/// problem found in it is at its line and column in the real file. `None`
/// when the text is not TOML or has no `auth` table.
fn auth_table_alone(source: &str) -> Option<String> {
    if toml_terms::past_max_weight(source).is_some() {
        return None;
    }
    let doc = toml_edit::ImDocument::parse(source).ok()?;
    let root = doc.as_table();
    let auth = root.get("auth")?;
    // Another table meant as `[auth]` beside it (`[Auth]` with the
    // `users_file`, an `[auth.argon2]` elsewhere), or one of its keys
    // anywhere else (at the top, in `[server]`, a rule, `[argon2]`): the
    // command went to the default users file, and `add` created it
    // (probes 100, 101).
    let meant_as_auth = |(key, item): (&str, &toml_edit::Item)| {
        key != "auth" && (key.eq_ignore_ascii_case("auth") || auth_key(key) || holds_auth_keys(item))
    };
    if root.iter().any(meant_as_auth) {
        return None;
    }
    // Where each table's header starts, and whether the table is `[auth]`
    // or under it: a table's lines run from its header to the next one.
    let mut headers = Vec::new();
    collect_headers(root, true, false, &mut headers);
    headers.sort_unstable();
    let mut keep = vec![false; source.len()];
    for (i, &(start, is_auth)) in headers.iter().enumerate() {
        let end = headers.get(i + 1).map_or(source.len(), |h| h.0);
        if let Some(part) = keep.get_mut(start..end) {
            part.fill(is_auth);
        }
    }
    // `auth = { ... }` and `auth.key = ...` lines before the first header
    // (and only those: other keys there are not `[auth]`'s).
    if let Some(key) = root.key("auth") {
        keep_top_level_lines(source, key, auth, &mut keep);
    }
    let blanked: Vec<u8> =
        source.bytes().zip(keep).map(|(b, keep)| if keep || b == b'\n' { b } else { b' ' }).collect();
    // Only whole characters were blanked (a multi-byte one becomes spaces).
    String::from_utf8(blanked).ok()
}

/// A key that only `[auth]` (or its `argon2`) takes, in any case, with `-`
/// for `_` (`Users-File`: probe 102), or a name holding `argon2`: an
/// `m_cost` at the top, or a table `[auth_argon2]`, was passed over with a
/// warning, and `hash-password` wrote a hash with the default costs (probe
/// 380).
fn auth_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase().replace('-', "_");
    matches!(key.as_str(), "users_file" | "m_cost" | "t_cost" | "p_cost") || key.contains("argon2")
}

/// Whether `item` holds an [`auth_key`], at any depth (tables, inline
/// tables, arrays of either: `x = [{ users_file = … }]`, probe 102).
fn holds_auth_keys(item: &toml_edit::Item) -> bool {
    let in_table = |t: &dyn toml_edit::TableLike| t.iter().any(|(k, v)| auth_key(k) || holds_auth_keys(v));
    match item {
        toml_edit::Item::ArrayOfTables(a) => a.iter().any(|t| in_table(t)),
        toml_edit::Item::Value(v) => value_holds_auth_keys(v),
        _ => item.as_table_like().is_some_and(in_table),
    }
}

/// [`holds_auth_keys`] for a value: an inline table or an array.
fn value_holds_auth_keys(value: &toml_edit::Value) -> bool {
    match value {
        toml_edit::Value::Array(a) => a.iter().any(value_holds_auth_keys),
        toml_edit::Value::InlineTable(t) => t.iter().any(|(k, v)| auth_key(k) || value_holds_auth_keys(v)),
        _ => false,
    }
}

/// Marks in `keep` the key-value lines of `item` (under `key`) written
/// without a table header: an inline table, or each dotted key's line (from
/// its line's start to the end of its value, which may run over lines).
fn keep_top_level_lines(source: &str, key: &toml_edit::Key, item: &toml_edit::Item, keep: &mut [bool]) {
    match item {
        toml_edit::Item::Value(v) => {
            if let (Some(k), Some(v)) = (key.span(), v.span()) {
                let line_start = source.get(..k.start).and_then(|s| s.rfind('\n')).map_or(0, |i| i + 1);
                if let Some(part) = keep.get_mut(line_start..v.end) {
                    part.fill(true);
                }
            }
        }
        toml_edit::Item::Table(t) if t.is_dotted() => {
            for (name, inner) in t.iter() {
                if let Some(k) = t.key(name) {
                    keep_top_level_lines(source, k, inner, keep);
                }
            }
        }
        _ => {}
    }
}

/// The start of every table header under `table` (the document's root when
/// `root`), and whether it is `[auth]` or a table under it.
fn collect_headers(table: &toml_edit::Table, root: bool, under_auth: bool, out: &mut Vec<(usize, bool)>) {
    for (key, item) in table.iter() {
        let is_auth = under_auth || (root && key == "auth");
        let tables: Vec<&toml_edit::Table> = match item {
            toml_edit::Item::Table(t) => vec![t],
            toml_edit::Item::ArrayOfTables(a) => a.iter().collect(),
            _ => continue,
        };
        for t in tables {
            if let Some(span) = t.span() {
                out.push((span.start, is_auth));
            }
            collect_headers(t, false, is_auth, out);
        }
    }
}

/// Parses a users file on its own (for `users list` and checks after an
/// edit); `config` is the config file that names it, for the commands its
/// messages suggest.
///
/// # Errors
/// Every problem in the file, with line:col.
pub fn parse_users(path: &Path, source: &str, config: &Path) -> Result<Vec<crate::auth::User>, ConfigError> {
    let (users, problems) = users::parse(path, source, config);
    if problems.is_empty() { Ok(users) } else { Err(ConfigError::new(problems)) }
}

pub use users::{
    LEAP_ONLY, NOT_SHOWN, check_group, check_name, expiry_in_range, may_hold_a_password,
    misplaced_leap_second, refused_name, shown_user, to_system_time,
};

#[cfg(test)]
mod tests {
    use super::auth_table_alone;

    #[test]
    fn the_auth_table_alone_keeps_its_lines_where_they_were() {
        let source = "top = 1\n[server]\nx = \"auth\"\n[auth]\nusers_file = \"u.toml\"\n[server.auth]\nk = \"é\"\n[[rules]]\nname = \"r\"\n[auth.argon2]\nm_cost = 8\n";
        let alone = auth_table_alone(source).unwrap();
        assert_eq!(alone.len(), source.len());
        let lines: Vec<&str> = alone.lines().map(str::trim_end).collect();
        assert_eq!(
            lines,
            ["", "", "", "[auth]", "users_file = \"u.toml\"", "", "", "", "", "[auth.argon2]", "m_cost = 8"]
        );
        // Dotted or inline at the top: those lines are kept, and only those.
        let dotted = "bogus = 1\nauth.users_file = \"u.toml\"\nlimits.x = 2\nauth.argon2.m_cost = [\n  8\n]\n[server]\nx = 1\n";
        let alone = auth_table_alone(dotted).unwrap();
        assert_eq!(
            alone.lines().map(str::trim_end).collect::<Vec<_>>(),
            ["", "auth.users_file = \"u.toml\"", "", "auth.argon2.m_cost = [", "  8", "]", "", ""]
        );
        let inline = auth_table_alone("bogus = 1\nauth = { users_file = \"u.toml\" }\n").unwrap();
        assert_eq!(
            inline.lines().map(str::trim_end).collect::<Vec<_>>(),
            ["", "auth = { users_file = \"u.toml\" }"]
        );
        // No `auth` at the top (a typo, another table's `auth`), or not TOML.
        assert_eq!(auth_table_alone("[Auth]\nusers_file = \"u.toml\"\n"), None);
        assert_eq!(auth_table_alone("[server.auth]\nusers_file = \"u.toml\"\n"), None);
        assert_eq!(auth_table_alone("[auth\n"), None);
        // Beside another table meant as `[auth]`.
        assert_eq!(auth_table_alone("[auth.argon2]\nm_cost = 8\n[Auth]\nusers_file = \"u.toml\"\n"), None);
        assert_eq!(auth_table_alone("[auth]\ncache_ttl = \"5m\"\n[auht]\nusers_file = \"u.toml\"\n"), None);
        // Or one of its keys anywhere else (probe 101).
        for elsewhere in [
            "users_file = \"u.toml\"\n[auth.argon2]\nm_cost = 8\n",
            "[auth.argon2]\nm_cost = 8\n[server.auth]\nusers_file = \"u.toml\"\n",
            "[auth]\n[[rules]]\nname = \"r\"\nusers_file = \"u.toml\"\n",
            "[auth]\n[argon2]\nm_cost = 8\n",
            "[auth]\n[server]\nx = { argon2 = 1 }\n",
            "x = [{ users_file = \"u.toml\" }]\n[auth.argon2]\nm_cost = 8\n",
            "foo = [[{ argon2 = { m_cost = 8 } }]]\n[auth.argon2]\nm_cost = 8\n",
            "Users-File = \"u.toml\"\n[auth.argon2]\nm_cost = 8\n",
            "m_cost = 65536\n[auth]\nusers_file = \"u.toml\"\n",
            "[auth]\nusers_file = \"u.toml\"\n[server]\nT-Cost = 3\n",
            "[auth]\nusers_file = \"u.toml\"\n[auth_argon2]\nm_cost = 65536\n",
        ] {
            assert_eq!(auth_table_alone(elsewhere), None, "{elsewhere}");
        }
    }
}
