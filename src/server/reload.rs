//! Live reload of the config, the users file and TLS certificates.
//!
//! Triggers: SIGHUP, and a change of either file seen by polling their
//! metadata every [`POLL`] (following symlinks, so an editor's
//! write-to-temp-then-rename and Kubernetes' `..data` symlink swap of a
//! mounted Secret or ConfigMap are both seen). Polling is used rather than
//! inotify on purpose: inotify watches the inode, which a rename or a symlink
//! swap replaces, and the edge cases there are the usual source of "reload
//! did not fire" bugs; a stat of a few files four times a second costs nothing.
//! A change is acted on once the files have stopped changing for one poll
//! (debounce), so a half-written file is not even tried.
//!
//! A reload builds and validates a whole new snapshot; on any problem the old
//! snapshot keeps serving and every problem is logged with file:line:col.
//! After a swap, sessions of removed, changed or deactivated users are closed
//! and idle upstream connections are dropped (the egress policy may have
//! changed). Nothing else in flight is touched.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use crate::config::{self, ConfigError, Snapshot};
use crate::proxy::State;

/// How often the files are looked at.
pub const POLL: Duration = Duration::from_millis(250);

/// What identifies a version of a file: size, mtime, inode, and the path the
/// symlink chain resolves to.
type Stamp = Option<(u64, Option<SystemTime>, u64, PathBuf)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    let real = std::fs::canonicalize(path).unwrap_or_default();
    Some((meta.len(), meta.modified().ok(), meta.ino(), real))
}

fn stamps(snap: &Snapshot) -> Vec<Stamp> {
    watched(snap).iter().map(|p| stamp(p)).collect()
}

fn watched(snap: &Snapshot) -> Vec<PathBuf> {
    let mut files = vec![snap.config_path.clone(), snap.auth.users_file.clone()];
    for t in &snap.server.tls {
        files.push(t.cert.clone());
        files.push(t.key.clone());
    }
    files
}

/// Runs [`reload`] on tokio's blocking pool: a reload reads files and hashes
/// a dummy password with the users' argon2 costs (seconds, with large
/// costs), which on a worker thread stalled every connection sharing it.
async fn reload_off_runtime(state: &Arc<State>) {
    let state = state.clone();
    let _ = tokio::task::spawn_blocking(move || reload(&state)).await;
}

/// Reloads now. Returns the new generation.
///
/// # Errors
/// Every problem in the new files; the old snapshot stays live.
pub fn reload(state: &State) -> Result<u64, ConfigError> {
    let old = state.snapshot.load_full();
    let new = match config::load(&old.config_path) {
        Ok(s) => s,
        Err(e) => {
            for p in &e.problems {
                tracing::error!(problem = %p, "reload failed; the previous configuration stays in effect");
            }
            state.reload_failures.fetch_add(1, Ordering::Relaxed);
            state.metrics.reload(false);
            return Err(e);
        }
    };
    let listeners = |s: &Snapshot| -> Vec<(std::net::SocketAddr, bool)> {
        s.server
            .listen
            .iter()
            .map(|a| (*a, s.server.proxy_protocol))
            .chain(s.server.tls.iter().map(|t| (t.listen, t.proxy_protocol)))
            .collect()
    };
    // Settings read only at start: a change is kept in the new snapshot but
    // acts only after a restart, and the operator is told which ones.
    let restart_only = [
        ("server.listen/server.tls listeners/proxy_protocol", listeners(&new) != listeners(&old)),
        ("server.worker_threads", new.server.worker_threads != old.server.worker_threads),
        ("auth.verify_threads", new.auth.verify_threads != old.auth.verify_threads),
        ("auth.max_pending", new.auth.max_pending != old.auth.max_pending),
        ("upstream.ca_file", new.upstream_ca != old.upstream_ca),
        ("metrics.per_user", new.metrics_per_user != old.metrics_per_user),
        ("admin.listen", new.admin != old.admin),
        ("dns.servers", new.dns_servers != old.dns_servers),
        ("log.level/log.format", new.log.level != old.log.level || new.log.format != old.log.format),
    ];
    let changed: Vec<&str> = restart_only.iter().filter(|(_, c)| *c).map(|(name, _)| *name).collect();
    if !changed.is_empty() {
        tracing::warn!(settings = %changed.join(", "), "changed settings take effect only after a restart");
    }
    for (slot, t) in state.cert_slots.iter().zip(&new.server.tls) {
        slot.store(t.certified.clone());
    }
    let new = Arc::new(new);
    state.snapshot.store(new.clone());
    let generation = state.generation.fetch_add(1, Ordering::Relaxed) + 1;
    state.metrics.reload(true);
    let revoked = state.sessions.revoke_stale(&new.users, SystemTime::now());
    for user in old.users.iter() {
        if new.users.get(&user.name).is_none_or(|u| u.fingerprint != user.fingerprint) {
            state.auth.cache().forget_user(&user.name);
        }
    }
    state.pool.clear();
    // The listeners bound are those of the start until a restart.
    let summary = new.summary_listening(&state.listening);
    tracing::info!(generation, revoked_sessions = revoked, summary = %summary, "configuration reloaded");
    Ok(generation)
}

/// Watches for SIGHUP and file changes until shutdown begins; also closes
/// sessions of users whose `expires` passes while they are connected.
pub async fn watch(state: Arc<State>) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; file watching still works");
            None
        }
    };
    let mut seen = stamps(&state.snapshot.load());
    let mut pending: Option<Vec<Stamp>> = None;
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
            _ = state.stopping.cancelled() => return,
            _ = hup_recv => {
                tracing::info!("SIGHUP: reloading");
                reload_off_runtime(&state).await;
                seen = stamps(&state.snapshot.load());
                pending = None;
            }
            _ = tick.tick() => {
                let snap = state.snapshot.load_full();
                state.sessions.revoke_stale(&snap.users, SystemTime::now());
                if !snap.watch {
                    continue;
                }
                let now = stamps(&snap);
                if now == seen {
                    pending = None;
                    continue;
                }
                // Debounce: act once the files look the same on two polls.
                if pending.as_ref() == Some(&now) {
                    tracing::info!("configuration files changed: reloading");
                    reload_off_runtime(&state).await;
                    seen = stamps(&state.snapshot.load());
                    pending = None;
                } else {
                    pending = Some(now);
                }
            }
        }
    }
}
