//! Listeners, the accept loop, per-connection serving and graceful shutdown.
//!
//! [`run`] takes listeners that are already bound and a shutdown future, so
//! tests bind `127.0.0.1:0` and stop the server whenever they like. On
//! shutdown: stop accepting, let in-flight requests finish (hyper's graceful
//! shutdown closes idle keep-alive connections), give tunnels
//! `limits.shutdown_grace`, then close whatever is left.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub mod reload;

use crate::proxy::State;
use crate::proxy::service::{self, Client};

/// Serves `listeners` until `shutdown` resolves, then shuts down gracefully.
///
/// # Errors
/// Never in practice: accept errors are logged and retried with backoff.
pub async fn run(
    state: Arc<State>,
    listeners: Vec<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let stop = CancellationToken::new();
    let mut accepts = Vec::new();
    for listener in listeners {
        accepts.push(tokio::spawn(accept_loop(state.clone(), listener, stop.clone())));
    }
    let watcher = tokio::spawn(reload::watch(state.clone(), stop.clone()));
    shutdown.await;
    tracing::info!("shutting down: no new connections; waiting for requests and tunnels");
    stop.cancel();
    for a in accepts {
        let _ = a.await;
    }
    let _ = watcher.await;
    state.tasks.close();
    let grace = state.snapshot.load().limits.shutdown_grace;
    if tokio::time::timeout(grace, state.tasks.wait()).await.is_err() {
        tracing::info!(grace_secs = grace.as_secs(), "grace period over: closing remaining tunnels");
        state.kill.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), state.tasks.wait()).await;
    }
    tracing::info!("stopped");
    Ok(())
}

async fn accept_loop(state: Arc<State>, listener: TcpListener, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                let state2 = state.clone();
                let stop = stop.clone();
                state.tasks.spawn(serve(state2, stream, peer, stop));
            }
            Err(e) => {
                // EMFILE and friends: wait and retry instead of spinning.
                tracing::warn!(error = %e, "accept failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

async fn serve(state: Arc<State>, stream: TcpStream, peer: SocketAddr, stop: CancellationToken) {
    let _ = stream.set_nodelay(true);
    let limits = state.snapshot.load().limits.clone();
    let guard = state.sessions.open(None);
    let revoked = guard.session.token.clone();
    let client = Client { addr: peer, session: guard.session.clone() };
    let svc_state = state.clone();
    let svc = service_fn(move |req| {
        let state = svc_state.clone();
        let client = client.clone();
        async move { Ok::<_, Infallible>(service::handle(state, client, req).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), svc).with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = revoked.cancelled() => {
            tracing::info!(client = %peer, "closing connection: its user was removed, changed or disabled");
            Ok(())
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                r = conn.as_mut() => r,
                _ = state.kill.cancelled() => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(client = %peer, error = %e, "client connection ended with an error");
    }
}
