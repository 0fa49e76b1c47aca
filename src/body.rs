//! The body types that cross authgate, with byte counting and the access log.
//!
//! [`ProxyBody`] is what authgate answers with: either a small body it made
//! itself or the origin's body streamed frame by frame (never buffered whole).
//! It carries the request's [`AccessRecord`] and emits the access event when
//! the body is finished or dropped, so each request logs exactly once, with the
//! bytes that really went out. [`RequestBody`] counts what the client uploads.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::server::guard::Phase;
use crate::telemetry::AccessRecord;

/// Error type of [`ProxyBody`]: the origin's body broke off.
pub type BodyError = hyper::Error;

enum Kind {
    Full(Option<Bytes>),
    Upstream(Incoming),
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

    /// The origin's response body, streamed through.
    pub fn upstream(body: Incoming) -> Self {
        ProxyBody { kind: Kind::Upstream(body), sent: 0, log: None, done: None }
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

    /// Marks the connection idle again when this body is finished.
    pub fn on_done(mut self, phase: Arc<Phase>) -> Self {
        self.done = Some(phase);
        self
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if let Some(phase) = self.done.take() {
            phase.idle();
        }
        if let Some(mut record) = self.log.take() {
            record.bytes_down = self.sent;
            record.relayed = matches!(self.kind, Kind::Upstream(_));
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
            Kind::Upstream(body) => Pin::new(body).poll_frame(cx),
        };
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.sent += data.len() as u64;
        }
        if let (Poll::Ready(Some(Err(_))), Some(log)) = (&polled, this.log.as_mut()) {
            log.outcome = "upstream_body_error";
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Upstream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream(b) => b.size_hint(),
        }
    }
}

/// The client's request body on its way upstream, counting bytes.
pub struct RequestBody {
    inner: Incoming,
    count: Arc<AtomicU64>,
}

impl RequestBody {
    /// Wraps `inner`; every data byte is added to `count`.
    pub fn new(inner: Incoming, count: Arc<AtomicU64>) -> Self {
        RequestBody { inner, count }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
