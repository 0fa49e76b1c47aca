//! The body types that cross authgate, with byte counting and the access log.
//!
//! [`ProxyBody`] is what authgate answers with: either a small body it made
//! itself or the origin's body streamed frame by frame (never buffered whole).
//! It carries the request's [`AccessRecord`] and emits the access event when
//! the body is finished or dropped, so each request logs exactly once, with the
//! bytes that really went out. [`RequestBody`] counts what the client uploads.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::server::guard::Phase;
use crate::telemetry::AccessRecord;

/// Error type of [`ProxyBody`]: the origin's body broke off, or went
/// silent for too long ([`UpstreamBodyTimeout`]).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The origin sent nothing of its response body for the whole idle limit.
#[derive(Debug, thiserror::Error)]
#[error("the origin's response body went silent")]
pub struct UpstreamBodyTimeout;

enum Kind {
    Full(Option<Bytes>),
    Upstream(Relay),
}

/// An origin's body on its way through, with the limit on its silences.
struct Relay {
    body: Incoming,
    /// The longest wait for the origin's next frame.
    idle: Duration,
    /// Made at the first wait (a body that is all there when it is read, as
    /// small responses are, never needs one).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The timer runs for the current wait; false after each frame, so that
    /// time in which the client was not reading does not count.
    waiting: bool,
    /// The body's end was read.
    ended: bool,
    /// Sent delimited by the close of the connection (to an HTTP/1.0
    /// client, a body of unknown length): see [`ProxyBody::open_ended`].
    open_ended: bool,
    /// The origin connection, when its exchange cannot finish (the request
    /// body is not all sent): closed when this answer is done.
    close: Option<AbortOnDrop>,
    /// The origin broke the body off: the error, held back for
    /// [`FLUSH_BEFORE_CUT`] (see [`Relay::hold`]).
    broken: Option<BodyError>,
}

/// How long the error of a body that broke off upstream is held back, so
/// that hyper writes the head and the bytes before it that it still holds:
/// at an error it drops them. A cut 100 KB body reached the client as its
/// first 8 KB in 87 of 200 tries (probe 256), and one cut before its first
/// byte as a close without a head (probe 257). The client of a cut download
/// keeps what came, to resume from.
const FLUSH_BEFORE_CUT: Duration = Duration::from_millis(250);

impl Relay {
    /// Holds `error` back and returns `Pending`: hyper, whose body then
    /// waits, writes what it holds, and the error comes at the next poll
    /// after [`FLUSH_BEFORE_CUT`] (see [`Relay::poll_held`]).
    fn hold(
        &mut self,
        error: BodyError,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.broken = Some(error);
        let deadline = tokio::time::Instant::now() + FLUSH_BEFORE_CUT;
        match self.timer.as_mut() {
            Some(t) => t.as_mut().reset(deadline),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        self.poll_held(cx)
    }

    /// The held error (see [`Relay::hold`]) once its time is up.
    fn poll_held(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(timer) = self.timer.as_mut()
            && timer.as_mut().poll(cx).is_pending()
        {
            return Poll::Pending;
        }
        Poll::Ready(self.broken.take().map(Err))
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Pending => {
                let deadline = tokio::time::Instant::now() + self.idle;
                let timer = match self.timer.as_mut() {
                    Some(t) => {
                        if !self.waiting {
                            t.as_mut().reset(deadline);
                        }
                        t
                    }
                    None => self.timer.insert(Box::pin(tokio::time::sleep_until(deadline))),
                };
                self.waiting = true;
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(UpstreamBodyTimeout)))),
                    Poll::Pending => Poll::Pending,
                }
            }
            Poll::Ready(frame) => {
                self.waiting = false;
                // Trailers are a body's last frame, and hyper's HTTP/1
                // server stops reading the body once it has them: ended
                // there, the response is whole (it was logged client_gone).
                self.ended |= frame.as_ref().is_none_or(|f| f.as_ref().is_ok_and(Frame::is_trailers));
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
        }
    }
}

/// The body of every response authgate sends to a client.
pub struct ProxyBody {
    kind: Kind,
    sent: u64,
    log: Option<Box<AccessRecord>>,
    done: Option<Arc<Phase>>,
}

impl ProxyBody {
    /// A body made by authgate itself.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        let kind = Kind::Full((!bytes.is_empty()).then_some(bytes));
        ProxyBody { kind, sent: 0, log: None, done: None }
    }

    /// An empty body (CONNECT 200, 101).
    pub fn empty() -> Self {
        ProxyBody { kind: Kind::Full(None), sent: 0, log: None, done: None }
    }

    /// The origin's response body, streamed through; cut off with an error
    /// when the origin sends nothing for `idle` while it is awaited.
    pub fn upstream(body: Incoming, idle: Duration) -> Self {
        let relay = Relay {
            body,
            idle,
            timer: None,
            waiting: false,
            ended: false,
            open_ended: false,
            close: None,
            broken: None,
        };
        ProxyBody { kind: Kind::Upstream(relay), sent: 0, log: None, done: None }
    }

    /// Attaches the access record that is emitted when this body ends.
    pub fn with_log(mut self, record: AccessRecord) -> Self {
        self.log = Some(Box::new(record));
        self
    }

    /// The bytes of a body authgate made itself (`None` for a streamed one).
    pub fn full_bytes(&self) -> Option<Bytes> {
        match &self.kind {
            Kind::Full(b) => Some(b.clone().unwrap_or_default()),
            Kind::Upstream(_) => None,
        }
    }

    /// Closes the origin connection behind this body (see
    /// [`AbortOnDrop`]) once the body is finished or dropped.
    pub fn closing(mut self, connection: AbortOnDrop) -> Self {
        if let Kind::Upstream(relay) = &mut self.kind {
            relay.close = Some(connection);
        }
        self
    }

    /// Marks this body as delimited by the close of the connection: unless
    /// the connection ends cleanly, with all of it written, its close is a
    /// reset (see [`Phase::open_ended`]), which the client cannot take for
    /// the body's end, as it would a FIN (RFC 9112 §8).
    pub fn open_ended(mut self) -> Self {
        if let Kind::Upstream(relay) = &mut self.kind {
            relay.open_ended = true;
        }
        self
    }

    /// Marks the connection idle again when this body is finished.
    pub fn on_done(mut self, phase: Arc<Phase>) -> Self {
        if let Kind::Upstream(relay) = &self.kind
            && relay.open_ended
        {
            phase.open_ended();
        }
        self.done = Some(phase);
        self
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        let phase = self.done.take();
        if let Some(phase) = &phase {
            phase.idle();
        }
        if let Some(mut record) = self.log.take() {
            record.bytes_down = self.sent;
            record.relayed = matches!(self.kind, Kind::Upstream(_));
            // Dropped before its end, with nothing gone wrong upstream: the
            // client's connection ended (the client left, or authgate closed
            // it for a revocation or at shutdown).
            if let (Kind::Upstream(relay), "forwarded", Some(phase)) = (&self.kind, record.outcome, &phase)
                && !relay.ended
                && !relay.body.is_end_stream()
            {
                record.outcome = phase.cut_outcome();
            }
            record.finish();
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(relay) if relay.broken.is_some() => return relay.poll_held(cx),
            Kind::Upstream(relay) => relay.poll_frame(cx),
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let silent = e.is::<UpstreamBodyTimeout>();
                if let Some(phase) = &this.done {
                    phase.origin_broke();
                }
                if let Some(log) = this.log.as_mut() {
                    log.outcome = if silent { "upstream_body_timeout" } else { "upstream_body_error" };
                }
                // hyper writes the head with the first body bytes, or when
                // the body first waits, and drops what it has not written at
                // an error: the error waits for the head and the bytes before
                // it to go out (after a silence, they went out as it was
                // waited through). Broken before its first byte, the client
                // saw only the close, which it took for a stale keep-alive
                // connection: curl sent a POST again (probe 257).
                match &mut this.kind {
                    Kind::Upstream(relay) if !silent => relay.hold(e, cx),
                    _ => Poll::Ready(Some(Err(e))),
                }
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Upstream(r) => r.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream(r) => r.body.size_hint(),
        }
    }
}

/// The client's request body on its way upstream, counting bytes.
///
/// Kept small: hyper moves every request whole several times on its way to
/// the origin, and one past a size LLVM copies inline costs a `memcpy` call
/// at each move (16 more bytes here were 500 instructions a request).
pub struct RequestBody {
    /// `None`: no body (a request made again, see [`RequestBody::empty`]).
    /// (The `Option` costs no byte: `Incoming` has a niche.)
    inner: Option<Incoming>,
    upload: Option<Arc<Upload>>,
    /// Behind `Expect: 100-continue`: resolves when the body may be read,
    /// see [`Continue`]. (Boxed twice: one thin pointer.)
    hold: Option<Box<Hold>>,
}

type Hold = Pin<Box<dyn Future<Output = ()> + Send>>;

impl RequestBody {
    /// Wraps `inner`; `upload`, for a request that has a body, follows its
    /// progress and counts its bytes.
    pub fn new(inner: Incoming, upload: Option<Arc<Upload>>) -> Self {
        RequestBody { inner: Some(inner), upload, hold: None }
    }

    /// No body: for a bodiless request sent again on another connection.
    pub fn empty() -> Self {
        RequestBody { inner: None, upload: None, hold: None }
    }

    /// Reads nothing of the body (so hyper sends the client no `100
    /// Continue`) until `gate` opens, or `patience` passes without a word
    /// from the origin; see [`Continue`].
    pub fn held_by(mut self, gate: Arc<Continue>, patience: Duration) -> Self {
        self.hold = Some(Box::new(Box::pin(gate.wait(patience))));
        self
    }
}

/// A chunked request body whose last chunk ended with a bare LF
/// (`0\r\n\n`): hyper read what followed, up to the next blank line, as
/// its trailer section (empty) and dropped it, a request pipelined behind
/// included (probe 132). The body is refused, and its connection closed.
#[derive(Debug, thiserror::Error)]
#[error("the request body's chunked framing ended with a bare LF")]
pub struct BareLfEnd;

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(hold) = self.hold.as_mut() {
            std::task::ready!(hold.as_mut().as_mut().poll(cx));
            self.hold = None;
        }
        let Some(inner) = self.inner.as_mut() else { return Poll::Ready(None) };
        let polled = match Pin::new(inner).poll_frame(cx) {
            // hyper makes a trailers frame only of a trailer section; an
            // empty one is what a bare LF after the last chunk leaves.
            Poll::Ready(Some(Ok(frame))) if frame.trailers_ref().is_some_and(http::HeaderMap::is_empty) => {
                if let Some(upload) = &self.upload {
                    upload.advanced(UploadState::Broken);
                }
                return Poll::Ready(Some(Err(Box::new(BareLfEnd))));
            }
            polled => polled,
        };
        if let Some(upload) = &self.upload {
            upload.client_turn.store(polled.is_pending(), Ordering::Relaxed);
        }
        if let (Poll::Ready(Some(Ok(frame))), Some(upload)) = (&polled, &self.upload) {
            if let Some(data) = frame.data_ref() {
                upload.count.fetch_add(data.len() as u64, Ordering::Relaxed);
            } else if frame.is_trailers() {
                upload.trailers.store(true, Ordering::Relaxed);
            }
        }
        if let (Poll::Ready(ready), Some(upload)) = (&polled, &self.upload) {
            match ready {
                // Trailers end a body (hyper's client polls no further, so
                // the `None` after them never came: the upload looked
                // unfinished and the client's connection was closed).
                Some(Ok(frame)) if !frame.is_trailers() && !self.is_end_stream() => {
                    upload.advanced(UploadState::Sending)
                }
                Some(Ok(_)) | None => upload.advanced(UploadState::Done),
                Some(Err(e)) if reset(e) => upload.advanced(UploadState::Reset),
                Some(Err(_)) => upload.advanced(UploadState::Broken),
            }
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or(SizeHint::with_exact(0), Incoming::size_hint)
    }
}

/// Whether a body read failed because the client reset its connection.
fn reset(e: &hyper::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionReset};
    matches!(crate::error::io_kind(e), Some(ConnectionReset | ConnectionAborted))
}

/// Aborts a task when dropped: the task driving an origin connection whose
/// exchange cannot finish, dropped with the answer it gave (see
/// [`ProxyBody::closing`]).
#[derive(Debug)]
pub struct AbortOnDrop(pub tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `Expect: 100-continue` carried end to end (RFC 9110 §10.1.1).
///
/// hyper's server answers `100 Continue` to the client as soon as the body
/// is first read, and hyper's client reads it right after the head is
/// sent: the client was told to send at once, whatever the origin would
/// say. So the body is held back until the origin says `100 Continue`
/// (then hyper tells the client the same), or until [`CONTINUE_WAIT`]
/// passes without a word (an origin that ignores the expectation waits for
/// the body; clients such as curl also stop waiting after a second). An
/// origin that answers first (a 401, a 413) is relayed without the body
/// ever being asked for; the body then waits for good, until the origin
/// connection, which holds it, is closed after that answer.
#[derive(Debug, Default)]
pub struct Continue {
    state: AtomicU8,
    notify: tokio::sync::Notify,
}

/// How long a held-back body waits for the origin's `100 Continue` (less
/// when `upstream_response_timeout` is shorter than twice this).
pub const CONTINUE_WAIT: Duration = Duration::from_secs(1);

const WAITING: u8 = 0;
const GO: u8 = 1;
/// The origin's answer came first: the body is never to be sent.
const ANSWERED: u8 = 2;

impl Continue {
    /// The origin said `100 Continue`: the body may go.
    pub fn go(&self) {
        if self.swap_from(WAITING, GO) {
            self.notify.notify_one();
        }
    }

    /// The origin's final answer has arrived: if the body was not asked
    /// for yet, it never is (the caller closes the connection). Whether it
    /// was not.
    pub fn answered(&self) -> bool {
        self.swap_from(WAITING, ANSWERED)
    }

    fn swap_from(&self, from: u8, to: u8) -> bool {
        self.state.compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Resolves when the body may be read.
    async fn wait(self: Arc<Self>, patience: Duration) {
        loop {
            match self.state.load(Ordering::Acquire) {
                GO => return,
                WAITING => {
                    let said = tokio::time::timeout(patience, self.notify.notified()).await;
                    if said.is_err() && self.swap_from(WAITING, GO) {
                        return;
                    }
                }
                _ => self.notify.notified().await,
            }
        }
    }
}

/// Where a client's request body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadState {
    /// More is to come.
    Sending,
    /// Read to its end.
    Done,
    /// It broke off: invalid chunked framing, or the client closed its
    /// connection before the end (either way the client's doing).
    Broken,
    /// The client reset its connection before the end.
    Reset,
}

/// The progress of a request body, so that a client whose upload stalls or
/// breaks is told apart from an origin that does not answer, and so that
/// the wait for the response head counts from the end of the upload.
#[derive(Debug)]
pub struct Upload {
    /// Data bytes read (the access record's `bytes_up`).
    count: Arc<AtomicU64>,
    base: Instant,
    /// Nanoseconds after `base` of the last frame (or the end).
    last: AtomicU64,
    state: AtomicU8,
    /// The last read of the body found nothing: it waits for the client,
    /// not for the origin to take more.
    client_turn: AtomicBool,
    /// The body ended with trailer fields (see [`Upload::had_trailers`]).
    trailers: AtomicBool,
}

impl Upload {
    /// A body that starts now; its data bytes are added to `count`.
    pub fn new(count: Arc<AtomicU64>) -> Self {
        Upload {
            count,
            base: Instant::now(),
            last: AtomicU64::new(0),
            state: AtomicU8::new(UploadState::Sending as u8),
            client_turn: AtomicBool::new(false),
            trailers: AtomicBool::new(false),
        }
    }

    /// Whether the body ended with trailer fields. hyper reads a trailer
    /// section up to the next CRLF CRLF and parses it to its first blank
    /// line: one ended by a bare LF (`X: y\n\n`) takes the requests
    /// pipelined behind it along, dropped unseen (probe 133). The client's
    /// connection is closed after such a request's answer, so that a client
    /// waiting for an answer to them learns there is none.
    pub fn had_trailers(&self) -> bool {
        self.trailers.load(Ordering::Relaxed)
    }

    fn advanced(&self, state: UploadState) {
        let nanos = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(nanos, Ordering::Relaxed);
        if state != UploadState::Sending {
            self.state.store(state as u8, Ordering::Relaxed);
        }
    }

    /// When the last frame (or the end) came in.
    pub fn last_progress(&self) -> Instant {
        self.base + std::time::Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }

    /// Whether an unfinished body is waiting for the client's bytes (`true`)
    /// or for the origin to take what was read (`false`; also before the
    /// origin has asked for any).
    pub fn waits_for_client(&self) -> bool {
        self.client_turn.load(Ordering::Relaxed)
    }

    /// Where the body stands.
    pub fn state(&self) -> UploadState {
        match self.state.load(Ordering::Relaxed) {
            s if s == UploadState::Done as u8 => UploadState::Done,
            s if s == UploadState::Broken as u8 => UploadState::Broken,
            s if s == UploadState::Reset as u8 => UploadState::Reset,
            _ => UploadState::Sending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The body of an origin's answer, `Content-Length: 10` and `abc`, with
    /// the origin's end of the stream then closed, or kept open and silent,
    /// streamed through with a silence limit of `idle`; and its first frame.
    async fn cut_short(closed: bool, idle: Duration) -> (ProxyBody, Bytes) {
        let (client, mut origin) = tokio::io::duplex(64 * 1024);
        let (mut tx, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(hyper_util::rt::TokioIo::new(client))
                .await
                .unwrap();
        tokio::spawn(conn);
        tokio::spawn(async move {
            let mut head = [0u8; 1024];
            let _ = origin.read(&mut head).await;
            origin.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc").await.unwrap();
            if !closed {
                std::future::pending::<()>().await;
            }
        });
        let resp = tx.send_request(http::Request::new(Empty::new())).await.unwrap();
        let mut body = ProxyBody::upstream(resp.into_body(), idle);
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        (body, first)
    }

    /// An origin's body that breaks off mid-way: its bytes come, then its
    /// error only after [`FLUSH_BEFORE_CUT`], during which the body waits
    /// and hyper writes what it holds (at an error it drops it; probes
    /// 256, 257). A silence cut is not held: what came went out while the
    /// silence was waited through.
    #[tokio::test(start_paused = true)]
    async fn a_broken_body_holds_its_error_back() {
        let (mut body, first) = cut_short(true, Duration::from_secs(60)).await;
        assert_eq!(first, "abc");
        let start = tokio::time::Instant::now();
        let held = tokio::time::timeout(FLUSH_BEFORE_CUT - Duration::from_millis(1), body.frame()).await;
        assert!(held.is_err(), "the error came before its time: {held:?}");
        let cut = body.frame().await;
        assert!(matches!(cut, Some(Err(ref e)) if !e.is::<UpstreamBodyTimeout>()), "{cut:?}");
        assert_eq!(start.elapsed(), FLUSH_BEFORE_CUT);

        let (mut body, _) = cut_short(false, Duration::from_secs(1)).await;
        let start = tokio::time::Instant::now();
        let cut = body.frame().await;
        assert!(matches!(cut, Some(Err(ref e)) if e.is::<UpstreamBodyTimeout>()), "{cut:?}");
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }
}
