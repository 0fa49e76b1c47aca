//! Live reload of the config, the users file and TLS certificates.
//!
//! Triggers: SIGHUP, and a change of any watched file (the config, the users
//! file, each TLS listener's certificate and key) seen by polling their
//! metadata every [`POLL`] (following symlinks, so an editor's
//! write-to-temp-then-rename and Kubernetes' `..data` symlink swap of a
//! mounted Secret or ConfigMap are both seen). Polling is used rather than
//! inotify on purpose: inotify watches the inode, which a rename or a symlink
//! swap replaces, and the edge cases there are the usual source of "reload
//! did not fire" bugs; a stat of a few files four times a second costs nothing.
//! A change is acted on once the files have stopped changing for one poll
//! (debounce), so a half-written file is not even tried; or once they have
//! kept changing for [`MAX_SETTLE`].
//!
//! A reload builds and validates a whole new snapshot; on any problem the old
//! snapshot keeps serving and every problem is logged with file:line:col.
//! After a swap, sessions of removed, changed or deactivated users are closed
//! and idle upstream connections are dropped (the egress policy may have
//! changed). Nothing else in flight is touched.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use std::net::SocketAddr;

use tokio::signal::unix::{Signal, SignalKind};

use crate::config::file::{Stamp, reads_short_of_resources, stamp};
use crate::config::{self, ConfigError, Snapshot};
use crate::proxy::State;
use crate::telemetry::LogFormat;

/// How often the files are looked at.
pub const POLL: Duration = Duration::from_millis(250);
/// The longest the debounce waits for files that keep changing: then they
/// are loaded as they are. Without a bound, a file rewritten more often
/// than [`POLL`] (a script running `authgate users` in a loop) held off
/// every reload for as long as it went on, a user's removal with it
/// (probe 175).
pub const MAX_SETTLE: Duration = Duration::from_secs(2);

fn stamps(paths: &[PathBuf]) -> Vec<Stamp> {
    paths.iter().map(|p| stamp(p)).collect()
}

/// Runs [`reload`] on tokio's blocking pool: a reload reads files and hashes
/// a dummy password with the users' argon2 costs (seconds, with large
/// costs), which on a worker thread stalled every connection sharing it.
///
/// Returns the files a refused configuration names (see
/// [`ConfigError::named`]).
///
/// It goes on during a shutdown's drain; the shutdown does not wait for it
/// when the drain is over (see [`State::close_installs`]): a reload of a
/// large users file or with large argon2 costs takes seconds.
///
/// Also tells whether it failed because a file could not be read for want
/// of file descriptors or memory (see [`reads_short_of_resources`]).
async fn reload_off_runtime(state: &Arc<State>) -> (Vec<(PathBuf, Stamp)>, bool) {
    let run = state.clone();
    let short_before = reads_short_of_resources();
    match crate::blocking::run(move || reload(&run)).await {
        Ok(Some(Err(e))) => (e.named, reads_short_of_resources() > short_before),
        // Tried again as one short of file descriptors or memory is: the
        // reload's task died with the refused thread, and no reload was
        // made again for the life of the process (probe 351). (The one
        // queued runs too, once a thread can be made.)
        Err(no) => {
            tracing::error!("reload not made: {no}; trying again");
            (Vec::new(), true)
        }
        Ok(_) => (Vec::new(), false),
    }
}

/// The first wait before a reload that ran short of file descriptors or
/// memory is tried again; each failure after doubles it, up to
/// [`MAX_RETRY_WAIT`].
const FIRST_RETRY_WAIT: Duration = Duration::from_secs(1);

/// The longest wait between tries of a reload that runs short of file
/// descriptors or memory.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);

/// A reload to try again: one failed because a file could not be read for
/// want of file descriptors or memory. The files had not changed since, so
/// nothing else would have read them again until a SIGHUP, and a user
/// disabled while the proxy was out of descriptors kept access (probe 205).
#[derive(Clone, Copy)]
struct Retry {
    at: tokio::time::Instant,
    wait: Duration,
}

impl Retry {
    /// The retry after a reload that did (`short`) or did not run short,
    /// `previous` being the one pending before it.
    fn after(previous: Option<Retry>, short: bool) -> Option<Retry> {
        if !short {
            return None;
        }
        let wait = previous.map_or(FIRST_RETRY_WAIT, |r| (r.wait * 2).min(MAX_RETRY_WAIT));
        tracing::warn!(
            retry_in = ?wait,
            "the reload ran short of file descriptors, memory or threads; it is tried again"
        );
        Some(Retry { at: tokio::time::Instant::now() + wait, wait })
    }
}

/// Runs a reload and returns the stamps the files had *before* it read them,
/// for [`watch`] to compare the next polls with: a change that lands while
/// the reload runs (a second or more with a large users file, or argon2
/// costs to check) is then seen at the next poll. Stamped after the reload,
/// such a change looked loaded already and waited for the next unrelated
/// one: a user removed meanwhile kept access. A file the new configuration
/// watches and the old one did not (a new `users_file`, certificate) gets
/// the stamp the load took of it ([`Snapshot::files_as_read`], as a refused
/// configuration's named files do); it got [`unseen`], and every reload
/// that named a new file ran twice, the second time for no change (probe
/// 130). [`unseen`] remains for one the load did not stamp.
///
/// After a refused reload, the files the refused configuration names are
/// watched too, with their stamps from before it read them: a new users
/// file that was missing or had an error, once fixed, was never read (only
/// the running configuration's files were watched), and a user removed in
/// it kept access until a SIGHUP (probe 112).
///
/// Returns the files to watch, their stamps, and whether the reload failed
/// for want of file descriptors or memory.
async fn reload_and_stamp(state: &Arc<State>) -> (Vec<PathBuf>, Vec<Stamp>, bool) {
    let before: Vec<(PathBuf, Stamp)> = state
        .snapshot
        .load()
        .watched()
        .into_iter()
        .map(|path| {
            let s = stamp(&path);
            (path, s)
        })
        .collect();
    let (refused, short) = reload_off_runtime(state).await;
    let snapshot = state.snapshot.load();
    let mut after = snapshot.watched();
    let mut seen: Vec<Stamp> = after
        .iter()
        .enumerate()
        .map(|(i, path)| match before.iter().find(|(p, _)| p == path) {
            Some((_, s)) => s.clone(),
            None => snapshot.files_as_read.get(i).cloned().unwrap_or_else(unseen),
        })
        .collect();
    for (path, as_read) in refused {
        if !after.contains(&path) {
            after.push(path);
            seen.push(as_read);
        }
    }
    (after, seen, short)
}

/// A stamp no file has (its size is `u64::MAX`): the file differs from it
/// at the next poll.
fn unseen() -> Stamp {
    Some((u64::MAX, None, (i64::MIN, 0), (u64::MAX, u64::MAX), PathBuf::new()))
}

/// The settings read only at start (a change needs a restart), as a
/// snapshot has them.
#[derive(Debug, Clone, PartialEq)]
pub struct StartOnly {
    /// The plain listeners' addresses, sorted.
    listen: Vec<SocketAddr>,
    /// The TLS listeners' addresses, sorted.
    tls_listen: Vec<SocketAddr>,
    /// The plain listeners that expect a PROXY header, sorted.
    proxy_protocol: Vec<SocketAddr>,
    /// The TLS listeners that expect a PROXY header, sorted.
    tls_proxy_protocol: Vec<SocketAddr>,
    worker_threads: usize,
    verify_threads: usize,
    max_pending: usize,
    metrics_per_user: bool,
    admin: Option<SocketAddr>,
    dns_servers: Vec<SocketAddr>,
    log: (String, LogFormat),
}

impl StartOnly {
    /// Those settings of `s`.
    pub fn of(s: &Snapshot) -> Self {
        // Sets: the same listeners in another order need no restart.
        let sorted = |mut v: Vec<SocketAddr>| {
            v.sort_unstable();
            v
        };
        StartOnly {
            listen: sorted(s.server.listen.clone()),
            tls_listen: sorted(s.server.tls.iter().map(|t| t.listen).collect()),
            proxy_protocol: sorted(
                s.server.listen.iter().filter(|a| s.server.proxy_protocol.contains(a)).copied().collect(),
            ),
            tls_proxy_protocol: sorted(
                s.server.tls.iter().filter(|t| t.proxy_protocol).map(|t| t.listen).collect(),
            ),
            worker_threads: s.server.worker_threads,
            verify_threads: s.auth.verify_threads,
            max_pending: s.auth.max_pending,
            metrics_per_user: s.metrics_per_user,
            admin: s.admin,
            dns_servers: s.dns_servers.clone(),
            log: (s.log.level.clone(), s.log.format),
        }
    }

    /// The names of the settings that differ in `other`, as the config
    /// file spells them (the listeners' three were named together whichever
    /// changed; probe 160). A listener's PROXY header setting differs when
    /// it does on an address both have: a listener moved to another port
    /// is a change of its address alone (it was named a `proxy_protocol`
    /// change too; probe 161).
    pub fn differences(&self, other: &StartOnly) -> Vec<&'static str> {
        // Whether `a` and `b`, the PROXY listeners of `listen_a` and of
        // `listen_b`, differ on an address both listen on.
        let flags_differ =
            |a: &[SocketAddr], listen_a: &[SocketAddr], b: &[SocketAddr], listen_b: &[SocketAddr]| {
                listen_a
                    .iter()
                    .filter(|addr| listen_b.contains(addr))
                    .any(|addr| a.contains(addr) != b.contains(addr))
            };
        [
            ("server.listen", self.listen != other.listen),
            ("server.tls listen", self.tls_listen != other.tls_listen),
            (
                "server.proxy_protocol",
                flags_differ(&self.proxy_protocol, &self.listen, &other.proxy_protocol, &other.listen),
            ),
            (
                "server.tls proxy_protocol",
                flags_differ(
                    &self.tls_proxy_protocol,
                    &self.tls_listen,
                    &other.tls_proxy_protocol,
                    &other.tls_listen,
                ),
            ),
            ("server.worker_threads", self.worker_threads != other.worker_threads),
            ("auth.verify_threads", self.verify_threads != other.verify_threads),
            ("auth.max_pending", self.max_pending != other.max_pending),
            ("metrics.per_user", self.metrics_per_user != other.metrics_per_user),
            ("admin.listen", self.admin != other.admin),
            ("dns.servers", self.dns_servers != other.dns_servers),
            ("log.level", self.log.0 != other.log.0),
            ("log.format", self.log.1 != other.log.1),
        ]
        .into_iter()
        .filter_map(|(name, differs)| differs.then_some(name))
        .collect()
    }
}

/// A listener bound with `proxy_protocol` expects PROXY headers until a
/// restart, whatever the files say since, and `proxy_protocol_from`, which
/// applies at once, is what still guards it. A new configuration that no
/// longer marks such a listener has no list meant for it: removing both in
/// one edit (as `check` advises for a list "that applies to nothing") left
/// the running listeners believing anyone's header, and so anyone could
/// name any client address for the logs, the throttle and the limits
/// (probe 348), also when another listener was marked in the new file
/// (probe 352). There, a new empty list keeps the one in effect: an empty
/// list is taken as meant only when every listener that runs with the
/// header is one the new file marks too.
fn keep_proxy_trust(state: &State, old: &Snapshot, new: &mut Snapshot) {
    let now = StartOnly::of(new);
    let uncovered = state.started.proxy_protocol.iter().any(|a| !now.proxy_protocol.contains(a))
        || state.started.tls_proxy_protocol.iter().any(|a| !now.tls_proxy_protocol.contains(a));
    if uncovered && new.server.proxy_protocol_from.is_empty() && !old.server.proxy_protocol_from.is_empty() {
        new.server.proxy_protocol_from = old.server.proxy_protocol_from.clone();
        tracing::warn!(
            "server.proxy_protocol_from: kept as it was, for the listeners that expect a PROXY header until a restart; \
             without it, whoever reaches them could name any client address"
        );
    }
}

/// Reloads now. Returns the new generation.
///
/// # Errors
/// Every problem in the new files; the old snapshot stays live.
pub fn reload(state: &State) -> Result<u64, ConfigError> {
    let old = state.snapshot.load_full();
    let mut new = match config::load_for_reload(&old.config_path, &old) {
        Ok(s) => s,
        Err(e) => {
            log_problems(&e, &old.config_path);
            state.reload_failures.fetch_add(1, Ordering::Relaxed);
            state.metrics.reload(false);
            // Unless the users file in force has a problem itself: a
            // problem in the config file, or in a file the new one names (a
            // new users file, a certificate), leaves that file's changes to
            // apply on their own (a user removed from it kept access while
            // a new users file had an error, probe 113).
            if !e.problems.iter().any(|p| p.file == old.auth.users_file) {
                users_alone(state, &old);
            }
            return Err(e);
        }
    };
    // Settings read only at start: a change is kept in the new snapshot but
    // acts only after a restart. The operator is told at every reload for
    // as long as the files ask for something else than what runs (told
    // once, a later reload hid that the process still ran the old ones).
    let changed = state.started.differences(&StartOnly::of(&new));
    if !changed.is_empty() {
        tracing::warn!(settings = &*changed.join(", "), "changed settings take effect only after a restart");
    }
    keep_proxy_trust(state, &old, &mut new);
    // The admin listener that runs is the start's until a restart: it stays
    // no destination, whatever the new file says of it (a reload that moved
    // or removed `[admin] listen` let users read the running one's
    // `/metrics` through the proxy; probe 399).
    new.egress = std::mem::take(&mut new.egress).with_admin(state.started.admin);
    // A list emptied, and kept empty (the new file marks the listeners that
    // run with the header): they believe anyone's now. Said as `check` says
    // it; a reload so opened them with "configuration reloaded" alone
    // (probe 390). Only when some listener runs with the header: one the
    // new file marks takes it after a restart (probe 394).
    let running = !state.started.proxy_protocol.is_empty() || !state.started.tls_proxy_protocol.is_empty();
    if running && new.server.proxy_protocol_from.is_empty() && !old.server.proxy_protocol_from.is_empty() {
        for line in config::proxy_protocol_hints(&new) {
            tracing::warn!("{line}");
        }
    }
    crate::server::tls::warn_if_out_of_date(&new.server.tls);
    if new.limits.max_connections > old.limits.max_connections {
        crate::server::limits::warn_if_open_files_short(new.limits.max_connections);
    }
    // Each TLS listener keeps its own certificate: slots are matched to the
    // new `[[server.tls]]` tables by address (by position, tables were
    // reordered or one removed gave a listener another's certificate). A
    // listener whose table is gone keeps the certificate it has.
    let mut taken = vec![false; new.server.tls.len()];
    for (addr, slot) in &state.cert_slots {
        let same = new.server.tls.iter().enumerate().find(|(j, t)| !taken[*j] && t.listen == *addr);
        if let Some((j, t)) = same {
            taken[j] = true;
            slot.store(t.certified.clone());
        }
    }
    let new = Arc::new(new);
    let id = new.id;
    let installed = install(state, &old, new.clone(), |generation, revoked| {
        state.metrics.reload(true);
        state.pool.retire(id);
        // The listeners bound are those of the start until a restart.
        let summary = new.summary_listening(&state.listening);
        tracing::info!(generation, revoked_sessions = revoked, summary = &*summary, "configuration reloaded");
    });
    // Not installed: the shutdown is over, and the process is ending.
    Ok(installed.unwrap_or_else(|| state.generation.load(Ordering::Relaxed)))
}

/// The most problems of one refused reload that are logged, a line each:
/// one with 400,000 bad items wrote 98 MB of log (probe 147). `authgate
/// check` says them all.
const MAX_LOGGED_PROBLEMS: usize = 100;

/// Logs the problems of a refused reload of `config`, at most
/// [`MAX_LOGGED_PROBLEMS`]. Each as a string, quoted in the text format as
/// the other problem fields are (it went out bare, `problem=a.toml:6:1:
/// unknown field …`, which a key=value reader cuts at the first space;
/// probe 160).
fn log_problems(e: &ConfigError, config: &std::path::Path) {
    for p in e.problems.iter().take(MAX_LOGGED_PROBLEMS) {
        tracing::error!(
            problem = &*p.to_string(),
            "reload failed; the previous configuration stays in effect"
        );
    }
    if let Some(more) = e.problems.len().checked_sub(MAX_LOGGED_PROBLEMS).filter(|n| *n > 0) {
        let check = config::command(config, "check");
        tracing::error!(
            more_problems = more,
            check = &*check,
            "reload failed; the previous configuration stays in effect; `check` lists the other problems"
        );
    }
}

/// After a reload refused for errors outside the users file in effect: that
/// file, if it changed and loads on its own, applies under the
/// configuration in effect. An admin who removes a user while an unrelated
/// typo sits in the config file (the reload's ERROR unread) would otherwise
/// leave that user in until someone fixes the typo.
fn users_alone(state: &State, old: &Arc<Snapshot>) {
    let users = match config::load_users(&old.auth, &old.config_path, &old.users) {
        Ok(u) => u,
        Err(e) => {
            log_problems(&e, &old.config_path);
            return;
        }
    };
    let same = users.len() == old.users.len()
        && old.users.iter().all(|u| users.get(&u.name).is_some_and(|n| n.fingerprint == u.fingerprint));
    if same {
        return;
    }
    let new = Arc::new(Snapshot { users: Arc::new(users), ..(**old).clone() });
    install(state, old, new, |generation, revoked| {
        tracing::warn!(
            generation,
            revoked_sessions = revoked,
            "users file reloaded on its own; the rest of the reload waits until its errors are fixed (see the ERROR lines)"
        );
    });
}

/// Makes `new` the live snapshot in place of `old`: a new generation, the
/// sessions and cached logins of users that changed or went closed and
/// forgotten; then has `announce` say so, with the generation and the number
/// of sessions closed. Returns the generation; `None`, with nothing done,
/// once the shutdown is over ([`State::close_installs`]).
///
/// All of it under the install lock: a reload that ended during the drain
/// closed a removed user's last tunnel, so the shutdown ended, and the
/// process with it, before its `configuration reloaded` line was written
/// (probe 179).
fn install(
    state: &State,
    old: &Snapshot,
    new: Arc<Snapshot>,
    announce: impl FnOnce(u64, usize),
) -> Option<u64> {
    let closed = state.installs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if *closed {
        return None;
    }
    // The generation first: whoever sees the new snapshot at work (an
    // answer under the new rules) then reads its generation, not the one
    // before (a test read that for a thread descheduled between the two).
    let generation = state.generation.fetch_add(1, Ordering::Relaxed) + 1;
    state.snapshot.store(new.clone());
    state.auth.reconfigure_throttle(&old.auth.throttle, &new.auth.throttle);
    state.pool.set_idle_timeout(new.limits.upstream_idle_timeout);
    state.pool.set_max_idle(super::limits::idle_pool_cap(new.limits.max_connections));
    let revoked = state.sessions.revoke_stale(&new.users, SystemTime::now());
    // The users changed in any way, and of those the ones whose cached
    // logins no longer count: a login stands for the user's name and hash
    // alone (see `User::credential`), so a change of groups keeps it.
    let (mut changed, mut new_credential) = (foldhash::HashSet::default(), foldhash::HashSet::default());
    for user in old.users.iter() {
        match new.users.get(&user.name) {
            Some(u) if u.fingerprint == user.fingerprint => {}
            Some(u) if u.credential == user.credential => {
                changed.insert(&*user.name);
            }
            _ => {
                changed.insert(&*user.name);
                new_credential.insert(&*user.name);
            }
        }
    }
    if !new_credential.is_empty() {
        state.auth.cache().forget_users(new.users.serial(), |name| new_credential.contains(name));
    }
    if !changed.is_empty() {
        state.pool.forget_users(|name| changed.contains(name));
    }
    // Of the users added or changed.
    new.users.warn_of_hashes(|u| old.users.get(&u.name).is_none_or(|o| o.fingerprint != u.fingerprint));
    announce(generation, revoked);
    Some(generation)
}

/// SIGHUP, listened for from the moment [`listen_for_hangup`] ran.
pub struct Hangup(io::Result<Signal>);

/// Takes SIGHUP over from the process's default action, which is to end it.
///
/// The binary calls this first, before the configuration is read: a reload
/// asked for while the proxy starts (a config tool that writes the files and
/// sends SIGHUP right after starting the service) killed it. A SIGHUP that
/// arrives from now on is kept and acted on once [`watch`] runs: the files
/// are read again then, as they may have changed since the start read them.
///
/// Works inside a tokio runtime or outside one (a short-lived one is made to
/// register the handler; the handler stays for the life of the process, and
/// any later runtime's signal driver delivers to the returned listener).
pub fn listen_for_hangup() -> Hangup {
    let listen = || tokio::signal::unix::signal(SignalKind::hangup());
    if tokio::runtime::Handle::try_current().is_ok() {
        return Hangup(listen());
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build();
    Hangup(runtime.and_then(|rt| {
        let _in = rt.enter();
        listen()
    }))
}

/// Watches for SIGHUP and file changes, a shutdown's drain included (a user
/// removed or expired then is cut off as at any other time; probe 179),
/// until [`run`](crate::server::run) ends it; also closes
/// sessions of users whose `expires` passes while they are connected, and
/// pooled origin connections idle for `upstream_idle_timeout`.
/// Listens for SIGHUP with the listener handed to the state by
/// [`State::hand_over_hangup`](crate::proxy::State::hand_over_hangup), or
/// with a new one.
pub async fn watch(state: Arc<State>) {
    let early = state.hangup.lock().ok().and_then(|mut h| h.take());
    let mut hup = match early.unwrap_or_else(listen_for_hangup).0 {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; file watching still works");
            None
        }
    };
    let mut files = Watched::of(&state);
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let hup_recv = async {
            match hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = hup_recv => {
                tracing::info!("SIGHUP: reloading");
                files.reload(&state).await;
            }
            _ = tick.tick() => {
                let snap = state.snapshot.load_full();
                state.sessions.revoke_stale(&snap.users, SystemTime::now());
                state.pool.sweep();
                // Also under `watch = false`: a SIGHUP's reload that ran
                // short is tried again as one that a change started.
                if files.retry.is_some_and(|r| r.at <= tokio::time::Instant::now()) {
                    tracing::info!("trying again the reload that ran short of file descriptors, memory or threads");
                    files.reload(&state).await;
                    continue;
                }
                if !snap.watch {
                    continue;
                }
                let now = stamps(&files.paths);
                if now == files.seen {
                    (files.pending, files.changing_since) = (None, None);
                    continue;
                }
                // Debounce: act once the files look the same on two polls,
                // or once they have changed for `MAX_SETTLE`.
                let since = *files.changing_since.get_or_insert_with(tokio::time::Instant::now);
                let settled = files.pending.as_ref() == Some(&now);
                if settled || since.elapsed() >= MAX_SETTLE {
                    if settled {
                        tracing::info!("configuration files changed: reloading");
                    } else {
                        tracing::info!(waited = ?MAX_SETTLE, "configuration files still changing: reloading them as they are");
                    }
                    files.reload(&state).await;
                } else {
                    files.pending = Some(now);
                }
            }
        }
    }
}

/// What [`watch`] knows of the files between its polls.
struct Watched {
    /// The files watched.
    paths: Vec<PathBuf>,
    /// Their stamps as last loaded (or tried).
    seen: Vec<Stamp>,
    /// Their stamps at the last poll, while they differ from `seen`.
    pending: Option<Vec<Stamp>>,
    /// When the files were first seen to differ from what is loaded.
    changing_since: Option<tokio::time::Instant>,
    /// A reload to try again, and when.
    retry: Option<Retry>,
}

impl Watched {
    /// The files as the running snapshot read them, not as they are now: a
    /// change that landed since (while the proxy started) was taken as
    /// loaded, and waited for the next unrelated one.
    fn of(state: &State) -> Watched {
        let snap = state.snapshot.load();
        Watched {
            paths: snap.watched(),
            seen: snap.files_as_read.clone(),
            pending: None,
            changing_since: None,
            retry: None,
        }
    }

    /// Reloads, and watches the files as that reload left them.
    async fn reload(&mut self, state: &Arc<State>) {
        let (paths, seen, short) = reload_and_stamp(state).await;
        (self.paths, self.seen) = (paths, seen);
        (self.pending, self.changing_since) = (None, None);
        self.retry = Retry::after(self.retry, short);
    }
}
