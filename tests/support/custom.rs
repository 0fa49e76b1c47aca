#![allow(dead_code)]
//! A proxy started from a whole config file (for tests that need sections
//! `common::base_config` fixes, such as `[egress]`).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::common::TempDir;

/// A running proxy; dropping it shuts it down.
pub struct Custom {
    pub addr: SocketAddr,
    pub dir: TempDir,
    pub state: Arc<authgate::State>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Custom {
    /// Path of a file in the proxy's config folder.
    pub fn file(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// Stops the proxy and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Custom {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Starts authgate in-process from `config` (the whole authgate.toml; its
/// `users_file` should be `users.toml`) and `users`.
pub fn spawn_custom(config: &str, users: &str) -> Custom {
    let dir = TempDir::new();
    let path = dir.write("authgate.toml", config);
    dir.write("users.toml", users);
    let snapshot =
        authgate::config::load(&path).unwrap_or_else(|e| panic!("test config does not load:\n{e}"));
    run_custom(dir, snapshot)
}

/// Runs authgate in-process on `snapshot`, loaded from the files in `dir`
/// (any time before: a test can change the files in between).
pub fn run_custom(dir: TempDir, snapshot: authgate::config::Snapshot) -> Custom {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    let listener = tokio::net::TcpListener::from_std(l).unwrap();
    // The one listener stands for the configured ones.
    let listener = authgate::server::Listener::plain(listener, !snapshot.server.proxy_protocol.is_empty());
    let state = authgate::State::new(snapshot);
    let (tx, task) = crate::common::serve(state.clone(), vec![listener]);
    Custom { addr, dir, state, stop: Some(tx), task: Some(task) }
}
