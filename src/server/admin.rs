//! The admin listener: `/metrics` (Prometheus), `/healthz`, `/readyz`.
//!
//! Never on a proxy port, and it asks for no credentials: bind it to
//! loopback or a network only monitoring can reach.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
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
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::guard::SendStall;
use crate::proxy::State;

/// Answers one admin request.
pub fn respond(state: &State, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (method, path) {
        (&Method::GET | &Method::HEAD, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        (&Method::GET | &Method::HEAD, "/readyz") => {
            if state.ready.load(Ordering::Acquire) {
                (StatusCode::OK, "text/plain", "ready\n".to_string())
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n".to_string())
            }
        }
        (&Method::GET | &Method::HEAD, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics.render(state.generation.load(Ordering::Relaxed), state.conns.open()),
        ),
        (_, "/healthz" | "/readyz" | "/metrics") => {
            (StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n".to_string())
        }
        _ => (StatusCode::NOT_FOUND, "text/plain", "try /metrics, /healthz or /readyz\n".to_string()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    resp.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        // RFC 9110 §15.5.6: a 405 MUST list the methods the resource has.
        resp.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
    }
    resp
}

/// Serves one admin connection.
pub async fn serve(state: Arc<State>, stream: TcpStream) {
    let send_timeout = state.snapshot.load().limits.send_timeout;
    let stream = SendDeadline { io: stream, stall: SendStall::new(send_timeout) };
    let svc = service_fn(move |req: Request<Incoming>| {
        let resp = respond(&state, req.method(), req.uri().path());
        async move { Ok::<_, Infallible>(resp) }
    });
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(std::time::Duration::from_secs(10));
    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
}

/// The admin socket, where a write blocked for `send_timeout`
/// fails and ends the connection: hyper's head timer does not run while it
/// waits to write, so a client that pipelined requests and read none of the
/// answers held its admin slot for as long as it kept the connection.
struct SendDeadline {
    io: TcpStream,
    stall: SendStall,
}

impl AsyncRead for SendDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendDeadline {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.io).poll_write(cx, buf);
        self.stall.watch(cx, res)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.stall.watch(cx, res)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = Pin::new(&mut self.io).poll_flush(cx);
        self.stall.watch(cx, res)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = Pin::new(&mut self.io).poll_shutdown(cx);
        self.stall.watch(cx, res)
    }
}
