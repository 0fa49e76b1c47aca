//! A proxy with an admin listener, run in the test's process, and a
//! scrape of its `/metrics`.

use std::collections::HashMap;
use std::net::SocketAddr;

use tokio::sync::oneshot;

use super::*;

/// A proxy running in the test's process, with an `[admin]` listener.
pub struct Running {
    /// The proxy listener.
    pub proxy: SocketAddr,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`).
    pub admin: SocketAddr,
    /// The directory of its configuration.
    pub dir: TempDir,
    /// Sending (or dropping) it shuts the proxy down.
    pub stop: oneshot::Sender<()>,
}

/// A proxy with `rules` and the user `alice` (password `a1`).
pub async fn spawn_with_admin(rules: &str) -> (Running, std::sync::Arc<authgate::State>) {
    spawn_with_admin_for(rules, &[("alice", "a1")]).await
}

/// A proxy with `rules` and `users`; the state is returned for checks on it.
pub async fn spawn_with_admin_for(
    rules: &str,
    users: &[(&str, &str)],
) -> (Running, std::sync::Arc<authgate::State>) {
    let dir = TempDir::new();
    let cfg = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[auth]\nusers_file = \"users.toml\"\n[egress]\nallow_cidrs = [\"127.0.0.0/8\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n{rules}"
    );
    let path = dir.write("authgate.toml", cfg);
    dir.write("users.toml", users_toml(users));
    let state = authgate::State::new(authgate::config::load(&path).unwrap_or_else(|e| panic!("{e}")));
    // Not serving yet: not ready, but alive.
    assert_eq!(authgate::server::admin::respond(&state, &http::Method::GET, "/readyz").status(), 503);
    assert_eq!(authgate::server::admin::respond(&state, &http::Method::GET, "/healthz").status(), 200);
    let listeners = authgate::server::bind_all(&state).await.unwrap();
    let proxy = listeners[0].local_addr().unwrap();
    let admin = listeners[1].local_addr().unwrap();
    let (tx, _task) = super::serve(state.clone(), listeners);
    (Running { proxy, admin, dir, stop: tx }, state)
}

/// Scrapes `/metrics` and returns `series -> value`.
pub async fn scrape(admin: SocketAddr) -> HashMap<String, f64> {
    let r = send_one(admin, "GET", "/metrics", &[("Host", "admin")]).await;
    assert_eq!(r.status, 200, "{}", r.dump());
    assert!(r.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
    r.text()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(k, v)| (k.to_string(), v.parse::<f64>().unwrap()))
        .collect()
}
