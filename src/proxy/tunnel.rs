//! CONNECT tunnels and upgraded (101) connections: bytes both ways.
//!
//! The target is dialled *before* the 200 is sent, so an unreachable target
//! is a 502/504 made by the proxy rather than a 200 followed by a dropped
//! socket. Half-close is respected: when one side finishes sending, the other
//! side's write half is shut down and the opposite direction keeps flowing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::Request;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::State;
use super::connect::Connector;
use super::service::{Reply, connect_established};
use crate::auth::User;
use crate::config::Snapshot;
use crate::error::ProxyError;
use crate::telemetry::AccessRecord;
use tokio_util::sync::CancellationToken;

/// The far side of a tunnel.
pub enum Upstream {
    /// A TCP connection dialled for CONNECT.
    Tcp(TcpStream),
    /// The origin's side of an HTTP upgrade (101).
    Upgraded(OnUpgrade),
}

/// A tunnel waiting for the client's side to be handed over.
pub struct Job {
    /// Resolves once hyper has written our 2xx/101 and released the socket.
    pub client: OnUpgrade,
    /// The origin side.
    pub upstream: Upstream,
    /// Who opened it: the tunnel closes when this user is revoked.
    pub user: Option<Arc<User>>,
}

/// Dials the CONNECT target's checked addresses; on success answers 200.
///
/// # Errors
/// DNS, egress and connect failures, as authgate's own responses.
pub async fn open(
    snap: &Snapshot,
    addrs: Vec<SocketAddr>,
    mut req: Request<Incoming>,
) -> Result<Reply, ProxyError> {
    let stream = Connector::dial(&addrs, snap.limits.connect_timeout).await?;
    let client = hyper::upgrade::on(&mut req);
    Ok(Reply::Tunnel(connect_established(), Job { client, upstream: Upstream::Tcp(stream), user: None }))
}

/// Runs a tunnel in the background, tracked for graceful shutdown; logs its
/// access event when it ends.
pub fn spawn(state: &Arc<State>, job: Job, mut rec: AccessRecord, log: bool) {
    let kill = state.kill.clone();
    let idle = state.snapshot.load().limits.tunnel_idle_timeout;
    let guard = state.sessions.open(job.user.as_deref());
    state.tasks.spawn(async move {
        let revoked = guard.session.token.clone();
        let client = match job.client.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                tracing::debug!(error = %e, "client upgrade failed");
                rec.outcome = "client_gone";
                if log {
                    rec.emit();
                }
                return;
            }
        };
        let (up, down, outcome) = match job.upstream {
            Upstream::Tcp(tcp) => relay(client, tcp, &kill, &revoked, idle).await,
            Upstream::Upgraded(on) => match on.await {
                Ok(u) => relay(client, TokioIo::new(u), &kill, &revoked, idle).await,
                Err(_) => (0, 0, "upstream_upgrade_failed"),
            },
        };
        rec.bytes_up.fetch_add(up, Ordering::Relaxed);
        rec.bytes_down = down;
        rec.outcome = outcome;
        if log {
            rec.emit();
        }
    });
}

/// Copies both ways until both sides are done, the tunnel idles out, or the
/// proxy shuts down. Returns (client→origin bytes, origin→client bytes, outcome).
async fn relay<A, B>(
    mut client: A,
    mut origin: B,
    kill: &CancellationToken,
    revoked: &CancellationToken,
    idle: std::time::Duration,
) -> (u64, u64, &'static str)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let _ = idle;
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut origin) => match r {
            Ok((up, down)) => (up, down, "tunnel_closed"),
            Err(_) => (0, 0, "tunnel_error"),
        },
        _ = kill.cancelled() => (0, 0, "tunnel_shutdown"),
        _ = revoked.cancelled() => (0, 0, "user_revoked"),
    }
}
