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
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;

use tokio::net::TcpStream;

use super::State;
use super::connect::Connector;
use super::relay::{BoxedSide, End, Quiet, Relay, Side, reset};
use super::service::{Client, Reply, connect_established};
use crate::auth::User;
use crate::config::Snapshot;
use crate::error::ProxyError;
use crate::server::guard::Guarded;
use crate::server::records::Records;
use crate::server::rewind::Rewind;
use crate::telemetry::AccessRecord;
use crate::telemetry::metrics::Outcome as Counted;
use tokio_util::sync::CancellationToken;

/// The far side of a tunnel.
pub enum Upstream {
    /// A TCP connection dialled for CONNECT.
    Tcp(TcpStream),
    /// The origin's side of an HTTP upgrade (101).
    Upgraded(OnUpgrade),
}

/// The client's side of an upgrade hyper prepared for a request (a
/// CONNECT, a request with `Upgrade`), held where the request and
/// [`service::handle`](super::service::handle) both reach it.
///
/// hyper keeps that upgrade pending whatever the answer, and when the
/// connection ends hands its socket to it: with nobody waiting, the socket
/// was dropped unclosed, so every refused CONNECT or upgrade (a 407 to a
/// CONNECT, the first answer most clients get) ended without the lingering
/// close and, on TLS, without `close_notify`: a reset when the client's
/// bytes still came in (probe 167). An upgrade nobody took is waited for,
/// and its socket shut down as any other connection's.
#[derive(Clone)]
pub struct ClientUpgrade(Arc<std::sync::Mutex<Option<OnUpgrade>>>);

impl ClientUpgrade {
    /// Takes hyper's upgrade out of `req` into a slot that `req` carries
    /// too (for [`ClientUpgrade::take`]).
    pub fn hold(req: &mut Request<Incoming>) -> ClientUpgrade {
        let held = ClientUpgrade(Arc::new(std::sync::Mutex::new(Some(hyper::upgrade::on(&mut *req)))));
        req.extensions_mut().insert(held.clone());
        held
    }

    /// The slot `req` carries, if any.
    pub fn of<B>(req: &Request<B>) -> Option<ClientUpgrade> {
        req.extensions().get::<ClientUpgrade>().cloned()
    }

    /// The upgrade, for the tunnel that takes the client's side; `None`
    /// once taken.
    pub fn take(&self) -> Option<OnUpgrade> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }

    /// Once hyper hands over the connection of an upgrade no tunnel took,
    /// shuts it down as any connection's end is (the lingering close of
    /// `Guarded`, and on TLS its `close_notify`). `slot`, the connection's
    /// place in the connection limits, is kept until then, as a tunnel
    /// keeps it (released at the handover, lingering sockets were outside
    /// `max_connections` and the gauge; probe 168).
    pub fn close_when_handed(self, slot: impl Send + 'static) {
        let Some(pending) = self.take() else { return };
        tokio::spawn(async move {
            if let Ok(upgraded) = pending.await {
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut TokioIo::new(upgraded)).await;
            }
            drop(slot);
        });
    }
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

/// Dials the CONNECT target's checked addresses (resolved and checked
/// against the egress policy by the caller); on success answers 200, and
/// notes the address connected to in `rec`.
///
/// # Errors
/// Connect failures, as authgate's own responses (see [`Connector::dial`]).
pub async fn open(
    snap: &Snapshot,
    addrs: Vec<SocketAddr>,
    mut req: Request<Incoming>,
    rec: &mut AccessRecord,
) -> Result<Reply, ProxyError> {
    let (stream, peer) = Connector::dial(&addrs, snap.limits.connect_timeout).await?;
    rec.upstream = Some(peer);
    let client = client_upgrade(&mut req);
    Ok(Reply::Tunnel(connect_established(), Job { client, upstream: Upstream::Tcp(stream), user: None }))
}

/// The client's side of the upgrade of `req`: from the slot
/// [`ClientUpgrade::hold`] made, else hyper's own (which fails if hyper
/// prepared none).
fn client_upgrade<B>(req: &mut Request<B>) -> OnUpgrade {
    ClientUpgrade::of(req).and_then(|held| held.take()).unwrap_or_else(|| hyper::upgrade::on(req))
}

/// Runs a tunnel in the background, tracked for graceful shutdown; logs its
/// access event when it ends.
pub fn spawn(state: &Arc<State>, job: Job, mut rec: AccessRecord, client: &Client, counted: Counted) {
    let (slot, phase) = (client.slot.clone(), client.phase.clone());
    let kill = state.kill.clone();
    let quiet = {
        let limits = &state.snapshot.load().limits;
        Quiet { idle: limits.tunnel_idle_timeout, blocked: limits.send_timeout }
    };
    let guard = state.sessions.open(job.user.as_deref());
    let metrics = state.metrics.clone();
    state.tasks.spawn(async move {
        // Held until the tunnel ends: a tunnel is a client connection.
        let _slot = slot;
        let revoked = guard.session.token.clone();
        // The HTTP timers stay until hyper has written the 2xx or 101: a
        // client that did not read it held the connection, and the origin's,
        // for as long as it stayed (send_timeout did not apply, and the
        // tunnel's own timers start after; probe 88).
        let client = match job.client.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "client upgrade failed");
                // The answer did not (all) go out.
                rec.status = 0;
                rec.outcome = phase.cut_outcome();
                metrics.request(Counted::Abandoned, rec.user.as_deref());
                rec.finish();
                return;
            }
        };
        phase.tunnel();
        metrics.request(counted, rec.user.as_deref());
        metrics.tunnels(1);
        let mut relay = Relay::default();
        relay.count_into(metrics.clone());
        let outcome = match job.upstream {
            Upstream::Tcp(mut tcp) => match take_tcp(client) {
                // Plain listener: back to the raw socket, hyper out of the path.
                Ok((mut sock, early)) => {
                    // What the client sent behind its CONNECT (up to a
                    // head's size) is the relay's first write up, under the
                    // tunnel's limits and counted like the rest; copied, as
                    // `early` may share hyper's whole read buffer, which is
                    // freed before the tunnel settles in for hours.
                    relay.send_first(&early);
                    drop(early);
                    let outcome = watch(relay.run_tcp(&mut sock, &mut tcp, quiet), &kill, &revoked).await;
                    reset_if_cut(outcome, &sock, &tcp)
                }
                Err(upgraded) => {
                    let (mut client, early) = client_side(upgraded);
                    relay.send_first(&early);
                    drop(early);
                    let outcome = watch(relay.run(&mut client, &mut tcp, quiet), &kill, &revoked).await;
                    reset_if_cut(outcome, &client, &tcp)
                }
            },
            Upstream::Upgraded(on) => match on.await {
                Ok(u) => {
                    let (mut client, early) = client_side(client);
                    relay.send_first(&early);
                    let (mut origin, late) = super::pool::upgraded_origin(u);
                    relay.send_first_down(&late);
                    drop((early, late));
                    let outcome = watch(relay.run(&mut client, &mut origin, quiet), &kill, &revoked).await;
                    reset_if_cut(outcome, &client, &origin)
                }
                Err(_) => "upstream_upgrade_failed",
            },
        };
        metrics.tunnels(-1);
        // The relay added its bytes to the metrics as they moved; those of
        // the request's body, before (an upgrade's), are counted here (they
        // were dropped with the relay's, probe 110).
        let before = rec.bytes_up.fetch_add(relay.up(), Ordering::Relaxed);
        if let Some(m) = rec.metrics.take() {
            m.bytes(before, 0);
        }
        rec.bytes_down = relay.down();
        rec.relayed = true;
        rec.outcome = outcome;
        rec.finish();
    });
}

/// The client's TCP socket and any bytes hyper read past the CONNECT head,
/// when the connection came in on a plain listener.
fn take_tcp(upgraded: Upgraded) -> Result<(TcpStream, bytes::Bytes), Upgraded> {
    take::<Guarded<TcpStream>>(upgraded).map(|(io, early)| (io.into_inner(), early))
}

/// The client's connection `T` and the bytes read past the request's head,
/// whether hyper served it as accepted or, in the shutdown drain, over a
/// [`Rewind`] (a head hyper had begun to read when the drain began, served
/// on a connection of its own). Without the second, such a tunnel had
/// neither its socket nor its TLS in reach: no reset at the grace's end
/// (a FIN, which tells a client reading to the end that it has it all), a
/// `close_notify` after a failure, and urgent data unread (probe 334).
fn take<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static>(
    upgraded: Upgraded,
) -> Result<(T, bytes::Bytes), Upgraded> {
    match upgraded.downcast::<TokioIo<T>>() {
        Ok(parts) => Ok((parts.io.into_inner(), parts.read_buf)),
        Err(upgraded) => upgraded.downcast::<Rewind<TokioIo<T>>>().map(|parts| {
            // hyper read from `pre` first: what is left of it follows
            // what hyper holds.
            let (pre, io) = parts.io.into_parts();
            let early = match pre.is_empty() {
                true => parts.read_buf,
                false => [parts.read_buf, pre].concat().into(),
            };
            (io.into_inner(), early)
        }),
    }
}

/// A client connection on a TLS listener, as a tunnel's side.
type TlsClient = Guarded<Box<tokio_rustls::server::TlsStream<Records>>>;

impl Side for TlsClient {
    fn under_tls(&self) -> Option<&TcpStream> {
        Some(self.get_ref().get_ref().0.tcp())
    }
}

/// The client's side of a tunnel, its TLS in reach when it came in on a
/// TLS listener (see [`Side`]), with the bytes hyper read past its
/// request, which go to the origin first.
fn client_side(upgraded: Upgraded) -> (BoxedSide, bytes::Bytes) {
    let upgraded = match take_tcp(upgraded) {
        Ok((sock, early)) => return (Box::new(sock), early),
        Err(upgraded) => upgraded,
    };
    match take::<TlsClient>(upgraded) {
        Ok((io, early)) => (Box::new(io), early),
        Err(upgraded) => (Box::new(TokioIo::new(upgraded)), bytes::Bytes::new()),
    }
}

/// How a tunnel ended: its relay's end, or a cut by the proxy.
enum Ending {
    /// The relay ended by itself.
    Relay(End),
    /// The proxy shut down.
    ShutDown,
    /// The tunnel's user was revoked.
    Revoked,
}

impl Ending {
    /// The access log's `outcome`.
    fn outcome(&self) -> &'static str {
        match self {
            Ending::Relay(End::Closed | End::ClientLeft) => "tunnel_closed",
            Ending::Relay(End::Idle) => "tunnel_idle_timeout",
            Ending::Relay(End::Stalled) => "tunnel_send_timeout",
            Ending::Relay(End::Error) => "tunnel_error",
            Ending::Relay(End::Truncated) => "tunnel_truncated",
            Ending::ShutDown => "tunnel_shutdown",
            Ending::Revoked => "user_revoked",
        }
    }
}

/// Waits for a relay to end, the proxy to shut down, or the user to be revoked.
async fn watch(
    relay: impl Future<Output = End>,
    kill: &CancellationToken,
    revoked: &CancellationToken,
) -> Ending {
    tokio::select! {
        end = relay => Ending::Relay(end),
        _ = kill.cancelled() => Ending::ShutDown,
        _ = revoked.cancelled() => Ending::Revoked,
    }
}

/// The outcome of a tunnel that ended as `ending`, once both sides of one
/// that authgate cut (a shutdown, a revocation, a side that took nothing
/// for `send_timeout`) are set to close with a reset (see [`reset`]).
fn reset_if_cut(ending: Ending, client: &impl Side, origin: &impl Side) -> &'static str {
    if matches!(ending, Ending::ShutDown | Ending::Revoked | Ending::Relay(End::Stalled)) {
        reset(client);
        reset(origin);
    }
    ending.outcome()
}
