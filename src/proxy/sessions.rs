//! Live client connections and tunnels, by user, so that revoking a user
//! closes what that user still has open.
//!
//! Each client connection and each tunnel is a [`Session`] with its own
//! cancellation token. A session is bound to the user who last authenticated
//! on it, together with that user's fingerprint. After a reload,
//! [`Sessions::revoke_stale`] cancels every session whose user is gone,
//! changed (password, groups, expiry) or no longer active; the connection or
//! tunnel task sees its token fire and closes within milliseconds. Other
//! users' sessions are untouched.

use foldhash::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use crate::auth::{User, UserStore};

/// One client connection or tunnel.
#[derive(Debug, Default)]
pub struct Session {
    user: Mutex<Option<(Arc<str>, u64)>>,
    /// Fires when the session must close.
    pub token: CancellationToken,
}

impl Session {
    /// Records that `user` authenticated on this session.
    pub fn bind(&self, user: &User) {
        let mut slot = self.user.lock().unwrap_or_else(|p| p.into_inner());
        match &*slot {
            Some((name, fp)) if *fp == user.fingerprint && **name == *user.name => {}
            _ => *slot = Some((user.name.clone(), user.fingerprint)),
        }
    }

    fn stale(&self, users: &UserStore, now: SystemTime) -> bool {
        let slot = self.user.lock().unwrap_or_else(|p| p.into_inner());
        match &*slot {
            None => false,
            Some((name, fp)) => match users.get(name) {
                None => true,
                Some(u) => u.fingerprint != *fp || u.active_at(now).is_err(),
            },
        }
    }
}

/// The registry of open sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    next: AtomicU64,
    open: AtomicUsize,
    map: Mutex<HashMap<u64, Arc<Session>>>,
}

/// Keeps a session registered; unregisters it when dropped.
#[derive(Debug)]
pub struct Guard {
    sessions: Arc<Sessions>,
    id: u64,
    /// The session itself.
    pub session: Arc<Session>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.sessions.map.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
        self.sessions.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Sessions {
    /// Registers a new session, optionally pre-bound to `user`.
    pub fn open(self: &Arc<Self>, user: Option<&User>) -> Guard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let session = Arc::new(Session::default());
        if let Some(u) = user {
            session.bind(u);
        }
        self.map.lock().unwrap_or_else(|p| p.into_inner()).insert(id, session.clone());
        self.open.fetch_add(1, Ordering::Relaxed);
        Guard { sessions: self.clone(), id, session }
    }

    /// Number of open sessions.
    pub fn len(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Cancels every session whose user is gone, changed or inactive in
    /// `users`; returns how many were cancelled.
    pub fn revoke_stale(&self, users: &UserStore, now: SystemTime) -> usize {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for s in map.values() {
            if !s.token.is_cancelled() && s.stale(users, now) {
                s.token.cancel();
                n += 1;
            }
        }
        n
    }
}
