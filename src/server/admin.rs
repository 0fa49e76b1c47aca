//! The admin listener: `/metrics` (Prometheus), `/healthz`, `/readyz`.
//!
//! Never on a proxy port, and it asks for no credentials: bind it to
//! loopback or a network only monitoring can reach.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::guard::SendStall;
use crate::proxy::State;
use crate::telemetry::metrics::Gauges;
use crate::watched_io::{IoObserver, Watched};

/// Answers one admin request.
pub fn respond(state: &State, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (method, path) {
        (&Method::GET | &Method::HEAD, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        (&Method::GET | &Method::HEAD, "/readyz") => {
            if !state.ready.load(Ordering::Acquire) {
                (StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n".to_string())
            } else if !super::spare_fds::one_is_free() {
                // The proxy's listeners cannot accept either: a balancer
                // should send new clients elsewhere (with the admin port's
                // spare descriptors, this said `ready` there; probe 330).
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: no file descriptor left\n".to_string(),
                )
            } else {
                (StatusCode::OK, "text/plain", "ready\n".to_string())
            }
        }
        (&Method::GET | &Method::HEAD, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics.render(&Gauges {
                generation: state.generation.load(Ordering::Relaxed),
                active_connections: state.conns.open(),
                pooled: state.pool.idle_connections(),
                auth: state.auth.load(),
                certificates: certificates(state),
                process: crate::telemetry::process::read(),
            }),
        ),
        (_, "/healthz" | "/readyz" | "/metrics") => {
            (StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n".to_string())
        }
        _ => (StatusCode::NOT_FOUND, "text/plain", "try /metrics, /healthz or /readyz\n".to_string()),
    };
    let mut resp = plain(status, content_type, Bytes::from(body));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        // RFC 9110 §15.5.6: a 405 MUST list the methods the resource has.
        resp.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
    }
    resp
}

/// An admin answer: `body` as `content_type`, never cached.
fn plain(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    resp.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    resp
}

/// The 503 to a scrape whose rendering did not finish (the runtime was
/// ending, or it panicked).
fn unavailable() -> Response<Full<Bytes>> {
    plain(StatusCode::SERVICE_UNAVAILABLE, "text/plain", Bytes::from_static(b"metrics unavailable\n"))
}

/// The 400 to a request whose `Host` fields RFC 9112 §3.2 refuses; the
/// connection is closed after it (the request's end is in doubt).
fn bad_host() -> Response<Full<Bytes>> {
    let mut resp = plain(StatusCode::BAD_REQUEST, "text/plain", Bytes::from_static(b"bad or missing Host\n"));
    resp.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    resp
}

/// Serves one admin connection; only one request on it when `spare` (it
/// holds a descriptor the admin port keeps for when there are none left,
/// see `spare_fds`): three connections kept open there took every spare,
/// and health checks failed until they were closed (probe 330).
pub async fn serve(state: Arc<State>, stream: TcpStream, spare: bool) {
    let send_timeout = state.snapshot.load().limits.send_timeout;
    let stream = Watched { io: stream, observer: SendStall::new(send_timeout) };
    let svc = service_fn(move |req: Request<Incoming>| {
        // RFC 9112 §3.2, as on the proxy port (it answered 200 without
        // Host, with two, or with `Host: a b/c`: probe 117).
        let valid = crate::target::host_fields_valid(req.headers(), req.version(), false);
        let state = state.clone();
        async move {
            if !valid {
                return Ok::<_, Infallible>(bad_host());
            }
            let (method, path) = (req.method().clone(), req.uri().path().to_owned());
            if path != "/metrics" {
                return Ok(respond(&state, &method, &path));
            }
            // Off the runtime: a scrape lists `/proc/self/fd` (tens of
            // milliseconds with 100,000 descriptors open) and writes every
            // per-user series, which would hold up the proxy's connections
            // sharing this thread.
            // (No thread to be had: a 503, not the connection dropped.)
            let rendered = crate::blocking::run(move || respond(&state, &method, &path)).await;
            Ok(rendered.ok().flatten().unwrap_or_else(unavailable))
        }
    });
    let mut builder = http1::Builder::new();
    // A request then a half-close (a health check's `nc -N`) is answered:
    // without, hyper took the end of the stream behind the head for the
    // connection's end, and some went unanswered (probe 175). Nothing here
    // is worth stopping for a client that left: each answer is at hand.
    let (head_within, keep_alive) = if spare { (SPARE_HEAD_WITHIN, false) } else { (HEAD_WITHIN, true) };
    builder.timer(TokioTimer::new()).header_read_timeout(head_within).keep_alive(keep_alive).half_close(true);
    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
}

/// How long an admin connection may take to send a request head (and sit
/// idle between requests).
const HEAD_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// [`HEAD_WITHIN`] for a connection accepted into a spare descriptor: a
/// health check sends its request at once.
const SPARE_HEAD_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// The admin socket's writes go through [`SendStall`]: one blocked for
/// `send_timeout` fails and ends the connection. hyper's head timer does
/// not run while it waits to write, so a client that pipelined requests and
/// read none of the answers held its admin slot for as long as it kept the
/// connection.
impl IoObserver for SendStall {
    fn write(
        &mut self,
        cx: &mut Context<'_>,
        _: usize,
        res: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        self.watch(cx, res)
    }

    fn flush(&mut self, cx: &mut Context<'_>, res: Poll<io::Result<()>>) -> Poll<io::Result<()>> {
        self.watch(cx, res)
    }

    fn shutdown(&mut self, cx: &mut Context<'_>, res: Poll<io::Result<()>>) -> Poll<io::Result<()>> {
        self.watch(cx, res)
    }
}

/// Each TLS listener's address (as bound, else as configured) and when the
/// chain it serves now expires.
fn certificates(state: &State) -> Vec<(std::net::SocketAddr, std::time::SystemTime)> {
    state
        .cert_slots
        .iter()
        .filter_map(|(addr, slot)| Some((slot.bound().unwrap_or(*addr), slot.expiry()?)))
        .collect()
}
