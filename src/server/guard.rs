//! The client socket as hyper sees it, with the timers hyper does not have.
//!
//! hyper's own `header_read_timeout` closes a slow client silently and runs
//! from the end of the previous response, so it cannot tell an idle
//! keep-alive connection from a slowloris. [`Guarded`] tracks the phase of
//! the connection ([`Phase`]) and enforces:
//!
//! - **idle** (between requests): after `idle_timeout` the connection is
//!   closed quietly (a 408 there could be read as the answer to a request the
//!   client is sending at that very moment);
//! - **head** (first byte of a request seen, head not complete; empty lines
//!   before a request line do not start it but count against the limit): after
//!   `header_read_timeout` the client gets `408` with `Proxy-Status` and a
//!   problem body, then the connection closes; a head larger than
//!   `max_header_bytes` gets `431` the same way;
//! - **busy** (a request is being served) and **tunnel** (upgraded): no
//!   read timer here; bodies and tunnels have their own limits.
//!
//! Outside tunnels, a write the client does not accept for `send_timeout`
//! fails the connection (a slow-read client would otherwise hold its
//! connection slot and an origin connection for ever). The timer starts at
//! the first write that cannot proceed and is forgotten at the next one that
//! does, so a slow but moving download is not cut.
//!
//! The canned answers are written to the socket by this wrapper itself, then
//! hyper reads end-of-stream and closes. A head hyper cannot parse makes
//! hyper write a bare 400/414/431 of its own; the wrapper replaces it with
//! authgate's answer (with `Proxy-Status` and a problem body).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::limits::{GROWN_BUFFER, GROWN_IDLE};

const IDLE: u8 = 0;
const HEAD: u8 = 1;
const BUSY: u8 = 2;
const TUNNEL: u8 = 3;
/// The timer's use while the connection closes (not a phase).
const CLOSING: u8 = 4;
/// The response is handed to hyper whole, and may still be in its buffer:
/// idle once hyper has flushed it. Until then, hyper's writes are the
/// response's, never its own answer to a next head it could not parse.
const ENDED: u8 = 5;
/// The timer's use between requests on a TLS listener once a TLS record
/// has begun to arrive (not a phase; see [`Guarded::watch_records`]).
const RECORD: u8 = 6;

/// Longest wait, after our end is shut, for the client to stop sending.
const LINGER: Duration = Duration::from_secs(2);
/// Most bytes read and thrown away in that wait. Generous: a client that
/// sends a whole upload before it reads the answer (curl does, when it
/// stops waiting for `100 Continue`) gets a reset, which destroys the
/// part of a large answer not read yet, once this much is drained (1 MiB
/// cut a 4 MiB answer to an 8 MB upload).
const LINGER_MAX: usize = 64 << 20;

/// Where a client connection is in its request cycle; shared between the
/// socket wrapper, the service and the response body.
#[derive(Debug, Default)]
pub struct Phase {
    /// The state (`IDLE`, `HEAD`, `BUSY`, `ENDED` or `TUNNEL`), the drain
    /// (see [`Phase::draining`]) and the requests served so far, in one
    /// word (see [`Word`]): a drain ends in a task of its own, and with
    /// the three apart, its end could act on the next request (a pipelined
    /// one begun meanwhile), ending it while still busy or forgetting that
    /// its own body was still being drained.
    word: AtomicU64,
    /// Set by [`Phase::linger`].
    linger: AtomicBool,
    /// Why authgate closes the connection itself, if it does (see
    /// [`Phase::closed_by`]).
    closing: AtomicU8,
    /// See [`Phase::open_ended`].
    open_ended: AtomicBool,
    /// See [`Phase::origin_broke`].
    origin_broke: AtomicBool,
    /// The connection's task, waiting on the socket while a body is drained
    /// elsewhere: woken when the drain ends, so that the connection goes
    /// idle (and its idle timer starts) without a byte from the client.
    /// Set and taken under its lock together with the drain's checks, so
    /// that a drain ending meanwhile cannot miss it.
    drain_waker: std::sync::Mutex<Option<std::task::Waker>>,
}

const NOT_DRAINING: u8 = 0;
const DRAINING: u8 = 1;
/// Draining, and the answer has been handed to hyper whole.
const DRAINING_ANSWERED: u8 = 2;

/// [`Phase`]'s word, unpacked: the state in its low byte, the drain in the
/// next, the request count in the high half.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Word {
    state: u8,
    drain: u8,
    /// Requests served so far: tells the idle timer of one response from
    /// the next (a pipelined request goes from idle to busy without a
    /// read), and a drain's end from a later request.
    served: u32,
}

impl Word {
    fn unpack(w: u64) -> Self {
        Word { state: w as u8, drain: (w >> 8) as u8, served: (w >> 32) as u32 }
    }

    fn pack(self) -> u64 {
        u64::from(self.state) | u64::from(self.drain) << 8 | u64::from(self.served) << 32
    }
}

/// A drain in progress, of the body of one request (see
/// [`Phase::draining`]); given back to [`Phase::drained`] at its end.
#[derive(Debug)]
#[must_use = "a drain must be ended with Phase::drained"]
pub struct Drain {
    /// The request (`served` count) whose body is drained.
    of: u32,
}

/// Why authgate closed a client connection itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closer {
    /// Its user was removed, changed or disabled.
    Revocation = 1,
    /// Shutdown ran out of grace.
    Shutdown = 2,
    /// The client took no byte of a response for `send_timeout`.
    SendTimeout = 3,
}

impl Phase {
    fn load(&self) -> Word {
        Word::unpack(self.word.load(Ordering::Acquire))
    }

    /// Changes the word as `f` says, atomically; `f` returns `None` to
    /// leave it as it is. Returns whether it changed.
    fn update(&self, mut f: impl FnMut(Word) -> Option<Word>) -> bool {
        self.word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| f(Word::unpack(w)).map(Word::pack))
            .is_ok()
    }

    /// Moves the state from `from` to `to`, if it is `from`.
    fn shift(&self, from: u8, to: u8) -> bool {
        self.update(|w| (w.state == from).then_some(Word { state: to, ..w }))
    }

    /// Requests served so far.
    fn served(&self) -> u32 {
        self.load().served
    }

    /// A request head is complete and being served.
    pub fn busy(&self) {
        self.update(|w| Some(Word { state: BUSY, drain: NOT_DRAINING, served: w.served.wrapping_add(1) }));
    }

    /// The request's body is still being read, after its answer (the body
    /// of a request refused with a 407, read so that the client can retry
    /// on the connection): the request stays busy until
    /// [`Phase::drained`]. Its bytes, read after the answer, are not the
    /// start of a next request: they started its head timer (a retry sent
    /// `header_read_timeout` after the body got a 408) and counted against
    /// its size limit (a 431 for a request never sent).
    pub fn draining(&self) -> Drain {
        let mut of = 0;
        self.update(|w| {
            of = w.served;
            Some(Word { drain: DRAINING, ..w })
        });
        Drain { of }
    }

    /// The body [`Phase::draining`] spoke of has been read (or given up):
    /// if the answer is already out, the request is over. Nothing changes
    /// once a next request has begun: the drain was its predecessor's.
    pub fn drained(&self, drain: Drain) {
        let mut slot = self.drain_waker.lock().unwrap_or_else(|p| p.into_inner());
        self.update(|w| {
            if w.served != drain.of || w.drain == NOT_DRAINING {
                return None;
            }
            let state = if w.drain == DRAINING_ANSWERED && w.state == BUSY { ENDED } else { w.state };
            Some(Word { state, drain: NOT_DRAINING, ..w })
        });
        if let Some(waker) = slot.take() {
            drop(slot);
            waker.wake();
        }
    }

    /// Has `waker` woken when a drain in progress ends (see
    /// [`Phase::drained`]).
    fn wake_when_drained(&self, waker: &std::task::Waker) {
        if self.load().drain == NOT_DRAINING {
            return;
        }
        let mut slot = self.drain_waker.lock().unwrap_or_else(|p| p.into_inner());
        // Again under the lock: the drain may have ended since.
        if self.load().drain != NOT_DRAINING && !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }

    /// The response has been handed to hyper whole: the connection waits
    /// for the next request once hyper has flushed it (see `ENDED`; a
    /// pipelined head read before that made the rest of a large response
    /// look like hyper's own 400, which replaced it). Not after
    /// [`Phase::linger`]: the connection closes, and what hyper still reads
    /// of the unread request body must not count as the head of a next
    /// request (a large one became a 431 for a request never sent). While
    /// the request's body is still being drained, the request ends with the
    /// drain.
    pub fn idle(&self) {
        if self.linger.load(Ordering::Acquire) {
            return;
        }
        self.update(|w| match (w.drain, w.state) {
            (DRAINING, _) => Some(Word { drain: DRAINING_ANSWERED, ..w }),
            (NOT_DRAINING, BUSY) => Some(Word { state: ENDED, ..w }),
            _ => None,
        });
    }

    /// Whether the connection is between requests: the last response is
    /// out, and no byte of a next head has been read from the socket since
    /// (hyper may hold some it read before, see `server::rewind`).
    pub fn between_requests(&self) -> bool {
        self.get() == IDLE
    }

    /// Whether a response is under way: a request is being served and its
    /// answer is not yet all handed to hyper, or hyper may still hold part
    /// of it.
    pub fn mid_response(&self) -> bool {
        let w = self.load();
        match w.state {
            BUSY => w.drain != DRAINING_ANSWERED,
            ENDED => true,
            _ => false,
        }
    }

    /// Whether a request head has begun to arrive and is not yet whole.
    pub fn reading_head(&self) -> bool {
        self.get() == HEAD
    }

    /// authgate is closing the connection, for `why`: a response cut short
    /// by it is logged with that outcome, not as `forwarded`.
    pub fn closed_by(&self, why: Closer) {
        self.closing.store(why as u8, Ordering::Release);
    }

    /// How a response that did not reach its end ended: the outcome of
    /// [`Phase::closed_by`], else the client's leaving.
    pub fn cut_outcome(&self) -> &'static str {
        match self.closing.load(Ordering::Acquire) {
            x if x == Closer::Revocation as u8 => "user_revoked",
            x if x == Closer::Shutdown as u8 => "shutdown",
            x if x == Closer::SendTimeout as u8 => "send_timeout",
            _ => "client_gone",
        }
    }

    /// The connection is handed over to a tunnel: no more HTTP timers.
    pub fn tunnel(&self) {
        self.update(|w| Some(Word { state: TUNNEL, ..w }));
    }

    /// A response body delimited by the close of the connection (an
    /// HTTP/1.0 client's, of unknown length) is being sent: the last on the
    /// connection. Unless hyper ends the connection cleanly, with all of it
    /// written (the origin failed mid-body, a shutdown, a revocation, a
    /// send timeout, even after the body's end was read from the origin),
    /// the close is a reset, not a FIN, which the client would take for the
    /// body's end. Only then: a reset also discards what the client has not
    /// read yet. When the origin broke the body off, the reset waits for
    /// what the kernel still holds for the client to go out first, such as
    /// a whole response before it (see `server::reset`); when authgate cut
    /// the connection itself, it comes at once.
    pub fn open_ended(&self) {
        self.open_ended.store(true, Ordering::Release);
    }

    /// A response body broke off on the origin's side (it closed early,
    /// sent bad chunks or went silent): the connection ends as a cut. On
    /// the TLS listener that is a close without `close_notify`, which the
    /// client's TLS reads as a truncation; a `close_notify` there made the
    /// cut look like a clean end (probe 184).
    pub fn origin_broke(&self) {
        self.origin_broke.store(true, Ordering::Release);
    }

    /// Whether the origin broke off a response body (see
    /// [`Phase::origin_broke`]).
    pub fn broken_by_origin(&self) -> bool {
        self.origin_broke.load(Ordering::Acquire)
    }

    /// Whether a connection that did not end cleanly must end with a reset
    /// (see [`Phase::open_ended`]).
    pub fn resets(&self) -> bool {
        self.open_ended.load(Ordering::Acquire)
    }

    /// Whether authgate closed the connection itself (see
    /// [`Phase::closed_by`]).
    pub fn cut_here(&self) -> bool {
        self.closing.load(Ordering::Acquire) != 0
    }

    /// The connection closes after an answer given before the request's
    /// body was read: drain what the client still sends before closing,
    /// see [`Guarded`]'s `poll_shutdown`.
    pub fn linger(&self) {
        self.linger.store(true, Ordering::Release);
    }

    fn get(&self) -> u8 {
        self.load().state
    }
}

/// `send_timeout` for a socket's writes: a write that cannot proceed starts
/// the timer, one that does forgets it, so a slow but moving reader is not
/// cut; the timer's allocation is made at the first stall and reused.
pub(super) struct SendStall {
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    stalled: bool,
}

impl SendStall {
    pub(super) fn new(limit: Duration) -> Self {
        SendStall { limit, timer: None, stalled: false }
    }

    /// A write went through.
    pub(super) fn progress(&mut self) {
        self.stalled = false;
    }

    /// A write could not proceed: `Pending`, or a `TimedOut` error once
    /// none has for `limit`.
    pub(super) fn blocked<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if !self.stalled {
            self.stalled = true;
            let deadline = Instant::now() + self.limit;
            match self.timer.as_mut() {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        if self.timer.as_mut().is_some_and(|timer| timer.as_mut().poll(cx).is_ready()) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client accepted no data for limits.send_timeout",
            )));
        }
        Poll::Pending
    }

    /// Passes a write's result on, through [`SendStall::blocked`] when it
    /// could not proceed.
    pub(super) fn watch<T>(&mut self, cx: &mut Context<'_>, res: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if res.is_ready() {
            self.progress();
            return res;
        }
        self.blocked(cx)
    }
}

/// Limits the wrapper enforces.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Between requests.
    pub idle: Duration,
    /// From the first byte of a head to its end.
    pub head: Duration,
    /// A response write that cannot proceed for this long fails.
    pub send: Duration,
    /// Largest head.
    pub max_head: usize,
}

/// Why the wrapper answers a head itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The head did not arrive in time (408).
    HeadTimeout,
    /// The head is larger than allowed (431).
    HeadTooLarge,
    /// hyper could not parse the head and answered with this status.
    Unparsable(u16),
}

/// Builds the raw bytes of the answer for a [`Rejection`] to a head that
/// starts with `HEAD ` (then without a body, RFC 9110 §9.3.2) or not;
/// called at most once per connection.
pub type Canned = Box<dyn Fn(Rejection, bool) -> Vec<u8> + Send + Sync>;

/// A client socket with idle and head timers.
pub struct Guarded<S> {
    inner: S,
    phase: Arc<Phase>,
    limits: Timeouts,
    timer: Pin<Box<Sleep>>,
    armed_for: u8,
    /// Bytes of the head being read, up to its end.
    head_bytes: usize,
    /// The end of the head being read has been seen: what follows in the
    /// same read (a body, a tunnel's first bytes) is not part of it.
    head_ended: bool,
    /// The last two bytes of the head read so far, to find its end across
    /// reads.
    head_tail: [u8; 2],
    /// The request count ([`Phase`]'s `served`) the head bytes are counted
    /// after: the count starts again for each request.
    counted_after: u32,
    /// The empty lines before the head ended in a `\r` (see
    /// [`skip_empty_lines`]).
    blank_cr: bool,
    /// How many bytes of the HTTP/2 preface the head starts with so far
    /// (at least [`PREFACE`]'s length once it differs).
    preface: usize,
    /// The same for [`HEAD_METHOD`]: an answer to a `HEAD` has no body.
    method: usize,
    answer: Canned,
    reject: Option<(Vec<u8>, usize)>,
    /// Writes blocked by a client that does not read.
    send: SendStall,
    /// The request count ([`Phase`]'s `served`) the idle timer was started
    /// after.
    idle_after: u32,
    /// Bytes drained while closing; `None` until the write side is shut.
    lingered: Option<usize>,
    /// Where this connection counts while it lingers.
    lingering: Arc<Lingering>,
    /// Held while it lingers.
    lingers: Option<LingerSlot>,
    /// The request (`served` count) whose end of stream was held back once,
    /// see `poll_read`.
    eof_held_for: u32,
    /// The idle or head timer fired once and was given [`GRACE`] more.
    grace_given: bool,
    /// hyper offered a read of more than [`GROWN_BUFFER`]: its buffer is
    /// that large for good, and the connection is kept idle for
    /// [`GROWN_IDLE`] at most.
    grown: bool,
    /// See [`Guarded::watch_records`].
    record_begun: Option<Arc<AtomicBool>>,
    /// The idle deadline a record's timer replaced: it stands again if the
    /// record holds no head.
    idle_until: Instant,
}

/// How long a connection whose idle or head timer fired is still watched
/// for bytes that arrived in time, see `poll_read`.
const GRACE: Duration = Duration::from_millis(20);

impl<S> Guarded<S> {
    /// Wraps `inner`; `answer` makes the 408, 431 and unparsable-head answers.
    ///
    /// While it lingers after an answer (see `poll_linger`), the connection
    /// counts in `lingering`.
    pub fn new(
        inner: S,
        phase: Arc<Phase>,
        limits: Timeouts,
        answer: Canned,
        lingering: Arc<Lingering>,
    ) -> Self {
        Guarded {
            inner,
            phase,
            limits,
            timer: Box::pin(tokio::time::sleep(limits.idle)),
            armed_for: IDLE,
            head_bytes: 0,
            head_ended: false,
            head_tail: [0; 2],
            counted_after: 0,
            blank_cr: false,
            preface: 0,
            method: 0,
            answer,
            reject: None,
            send: SendStall::new(limits.send),
            idle_after: 0,
            lingered: None,
            lingering,
            lingers: None,
            eof_held_for: 0,
            grace_given: false,
            grown: false,
            record_begun: None,
            idle_until: Instant::now(),
        }
    }

    /// On a TLS listener: `begun` tells whether a TLS record has begun to
    /// arrive and is not yet whole (see `server::records`). Between
    /// requests such a record is taken for the start of a head, timed by
    /// `header_read_timeout` from when it was seen, and answered with the
    /// same 408 when its time runs out: a head's first record dripped a
    /// byte at a time was timed as an idle connection, which
    /// `idle_timeout` alone bounded (probe 340). A record that ends without
    /// a byte of a head (a `KeyUpdate`) leaves the connection idle again.
    pub fn watch_records(&mut self, begun: Arc<AtomicBool>) {
        self.record_begun = Some(begun);
    }

    /// Whether a TLS record has begun and is not yet whole (see
    /// [`Guarded::watch_records`]).
    fn record_midway(&self) -> bool {
        self.record_begun.as_ref().is_some_and(|b| b.load(Ordering::Acquire))
    }

    /// How long the connection may stay idle: `idle_timeout`, or less once
    /// its buffer grew.
    fn idle_limit(&self) -> Duration {
        if self.grown { self.limits.idle.min(GROWN_IDLE) } else { self.limits.idle }
    }

    /// The wrapped socket (for a tunnel that takes it over).
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The wrapped socket, borrowed.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Passes a write's result on; a write that stays blocked for the send
    /// timeout becomes an error, which makes hyper close the connection.
    fn watch_send<T>(&mut self, cx: &mut Context<'_>, res: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if res.is_ready() {
            self.send.progress();
            return res;
        }
        if self.phase.get() == TUNNEL {
            // Tunnels have their own idle timeout.
            return res;
        }
        self.stall(cx)
    }

    /// A write (or shutdown) cannot proceed: `Pending`, or the send timeout's
    /// error once it has not proceeded for that long. Also for authgate's
    /// own answers (408, 431, a refused head) and the shutdown after them,
    /// which hyper does not see: a client that reads nothing held such a
    /// connection, and its slot, until it closed.
    fn stall<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let res = self.send.blocked(cx);
        if res.is_ready() {
            self.phase.closed_by(Closer::SendTimeout);
        }
        res
    }

    /// Starts the idle timer as the response ends: hyper flushes the end of
    /// every response, in the task that will read the next request. Armed
    /// only in `poll_read`, the timer started at the task's next wake-up,
    /// the head deadline (request start + `header_read_timeout`), and after
    /// a request that outlasted that deadline never: the connection held
    /// its slot for good. (Waking the task from `Phase::idle` instead cost
    /// an extra poll per request, 6 % of a keep-alive request's
    /// instructions.)
    fn start_idle_timer(&mut self, cx: &mut Context<'_>) {
        if self.phase.get() != IDLE {
            return;
        }
        let served = self.phase.served();
        // (hyper flushes after each read: a record's timer stays.)
        if self.armed_for == RECORD && self.idle_after == served {
            return;
        }
        if self.armed_for != IDLE || self.idle_after != served {
            self.idle_after = served;
            self.armed_for = IDLE;
            self.grace_given = false;
            let idle = self.idle_limit();
            self.timer.as_mut().reset(Instant::now() + idle);
            // Registers this task: it is woken, and `poll_read` closes, when
            // the timer fires.
            let _ = self.timer.as_mut().poll(cx);
        }
    }

    fn arm(&mut self, phase: u8, d: Duration) {
        if self.armed_for != phase {
            self.armed_for = phase;
            self.grace_given = false;
            self.timer.as_mut().reset(Instant::now() + d);
        }
    }
}

impl<S> Guarded<S> {
    /// hyper had read `pending` of a next request head when it let go of
    /// the connection (see `server::rewind`), and a new connection reads
    /// them first: the head has begun, unless they are only the empty lines
    /// a request may follow. Its timer runs from now (when its first bytes
    /// came is not known), and they count against the head limit. Returns
    /// whether a head has begun.
    pub fn resume_head(&mut self, pending: &[u8]) -> bool {
        let mut cr = false;
        let Some(start) = skip_empty_lines(&mut cr, pending) else { return false };
        if !self.phase.shift(IDLE, HEAD) {
            return false;
        }
        self.counted_after = self.phase.served();
        self.head_bytes = pending.len();
        self.head_ended = false;
        self.head_tail = last_two([0; 2], &pending[start..]);
        // Not the HTTP/2 preface: hyper would have refused that already.
        self.preface = PREFACE.len() + 1;
        self.method = follow(HEAD_METHOD, 0, &pending[start..]);
        let d = self.limits.head;
        self.arm(HEAD, d);
        true
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Guarded<S> {
    /// Writes the pending canned answer, then reports end-of-stream.
    /// A write that does not proceed for the send timeout fails it.
    fn poll_reject(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some((bytes, written)) = self.reject.as_mut() else { return Poll::Ready(Ok(())) };
        while *written < bytes.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0) | Err(_)) => *written = bytes.len(),
                Poll::Ready(Ok(n)) => {
                    *written += n;
                    self.send.progress();
                }
                Poll::Pending => return self.stall(cx),
            }
        }
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.stall(cx),
            Poll::Ready(_) => {
                self.send.progress();
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.reject.is_some() {
            // The canned answer, then the end of the stream for hyper. hyper
            // takes that end mid-head as an error and drops the socket
            // without shutting it down, so the linger happens here: closed
            // with unread bytes (a head past 128 KiB), the socket sent a
            // reset that could destroy the answer.
            return this.poll_refuse(cx);
        }
        let phase = this.phase.get();
        // Between requests, a TLS record on its way is timed as a head.
        let record = phase == IDLE && this.armed_for == RECORD && this.record_midway();
        match phase {
            BUSY => this.phase.wake_when_drained(cx.waker()),
            // A record that ended without a head (a `KeyUpdate`) leaves the
            // idle deadline it found: restarted, records sent in two
            // pieces kept a connection open for good (probe 352).
            IDLE if !record && this.armed_for == RECORD => {
                this.armed_for = IDLE;
                this.grace_given = false;
                this.timer.as_mut().reset(this.idle_until);
            }
            IDLE if !record => {
                let d = this.idle_limit();
                this.arm(IDLE, d);
            }
            // Before the socket: bytes that keep coming must not keep a
            // head from timing out (slowloris). But the rest of a head that
            // arrived in time, while the process could not run (stopped,
            // starved of CPU), is still taken: the first time the timer is
            // seen fired, the socket gets one look of [`GRACE`] (the timer
            // can fire before the reactor has seen the socket's bytes).
            // Whatever a trickling client sends in it cannot keep the head
            // alive past that.
            HEAD | IDLE if this.timer.as_mut().poll(cx).is_ready() => {
                if this.grace_given {
                    this.reject = Some((this.canned(Rejection::HeadTimeout), 0));
                    return this.poll_refuse(cx);
                }
                this.grace_given = true;
                this.timer.as_mut().reset(Instant::now() + GRACE);
                // Registers this task for the grace's end.
                let _ = this.timer.as_mut().poll(cx);
            }
            _ => {}
        }
        let before = buf.filled().len();
        let room = buf.remaining() > 0;
        this.grown |= buf.remaining() > GROWN_BUFFER;
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        // (Not once the idle deadline has passed: the connection closes as
        // idle, as a plain listener's does; a record begun at each
        // deadline kept it open.)
        // (The clock read last: plain listeners never get that far.)
        if read.is_pending()
            && phase == IDLE
            && this.armed_for == IDLE
            && this.record_midway()
            && !this.grace_given
            && this.timer.deadline() > Instant::now()
        {
            // The first bytes of a record came, too few to decrypt: the
            // head timer starts now (see `watch_records`).
            this.armed_for = RECORD;
            this.grace_given = false;
            this.method = 0;
            this.idle_until = this.timer.deadline();
            this.timer.as_mut().reset(Instant::now() + this.limits.head);
            // Registers this task: it is woken when the timer fires.
            let _ = this.timer.as_mut().poll(cx);
            return Poll::Pending;
        }
        // Between requests the socket comes before the idle timer: after the
        // process could not run for a while (stopped, starved of CPU), a
        // request that arrived in time is served, not dropped with the
        // connection. A first byte starts the head timer.
        if read.is_pending()
            && phase == IDLE
            && this.armed_for == IDLE
            && this.timer.as_mut().poll(cx).is_ready()
        {
            if !this.grace_given {
                // The timer can be seen to fire before the reactor has
                // looked at the socket (after a stop, the two are handled
                // in either order): one short look more before closing.
                this.grace_given = true;
                this.timer.as_mut().reset(Instant::now() + GRACE);
                if this.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
            // Quiet close: hyper sees end-of-stream between requests.
            return Poll::Ready(Ok(()));
        }
        ready!(read)?;
        let n = buf.filled().len() - before;
        if n == 0 && room && phase == BUSY {
            // The client half-closed while its request is being served.
            // hyper (`half_close(false)`) takes that as the client gone and
            // drops the request unanswered, even when the answer is ready at
            // the service's first poll (a 407, a 400): with the end of stream
            // already there when hyper read on after the head, such answers
            // were lost (one in six, under load). The end is held back once
            // per request, so that hyper polls the service before it sees it;
            // a request still waiting (for its origin, a password check) is
            // then dropped as before.
            let served = this.phase.served();
            if this.eof_held_for != served {
                this.eof_held_for = served;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        if n > 0 && matches!(phase, IDLE | HEAD) {
            let read = &buf.filled()[before..];
            // Where the head starts in this read.
            let mut from = 0;
            if phase == IDLE {
                let served = this.phase.served();
                if this.counted_after != served {
                    this.counted_after = served;
                    this.head_bytes = 0;
                    this.head_ended = false;
                    this.blank_cr = false;
                }
                // Empty lines before a request line are skipped (RFC 9112
                // §2.2, and by hyper): they do not start the head timer (a
                // stray CRLF between requests made the next one a 408), but
                // they count against the head limit (blank lines, then a
                // head, got past it: they looked like the head's end).
                match skip_empty_lines(&mut this.blank_cr, read) {
                    Some(start) if this.phase.shift(IDLE, HEAD) => {
                        from = start;
                        this.head_tail = [0; 2];
                        this.preface = 0;
                        this.method = 0;
                        if this.armed_for == RECORD {
                            // Timed from the record's first bytes.
                            this.armed_for = HEAD;
                        } else {
                            let d = this.limits.head;
                            this.arm(HEAD, d);
                        }
                    }
                    _ => from = n,
                }
            }
            let head = &read[from..];
            if !this.head_ended {
                this.head_bytes += n;
                // Only past the limit is the read searched for the head's
                // end: a body (or a tunnel's first bytes) read with it is
                // not part of it (a large upload's next request got a 431).
                if this.head_bytes > this.limits.max_head
                    && let Some(end) = head_end(this.head_tail, head)
                {
                    this.head_bytes -= head.len() - end;
                    this.head_ended = true;
                }
                this.head_tail = last_two(this.head_tail, head);
            }
            // HTTP/2 with prior knowledge: hyper closes without a word on
            // its preface, where any other bytes that are not HTTP/1.1 get
            // a 400. (`PRI` is reserved for this preface, RFC 9113 §3.4.)
            // Followed across reads: split, it was closed on in silence.
            if this.preface < PREFACE.len() {
                this.preface = follow(PREFACE, this.preface, head);
                if this.preface == PREFACE.len() {
                    buf.set_filled(before);
                    this.reject = Some((this.canned(Rejection::Unparsable(400)), 0));
                    return this.poll_refuse(cx);
                }
            }
            this.method = follow(HEAD_METHOD, this.method, head);
            if this.head_bytes > this.limits.max_head && matches!(this.phase.get(), IDLE | HEAD) {
                // Drop what was read: hyper must not parse a partial head.
                buf.set_filled(before);
                this.reject = Some((this.canned(Rejection::HeadTooLarge), 0));
                return this.poll_refuse(cx);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S> Guarded<S> {
    /// The answer for `why` to the head being read.
    fn canned(&self, why: Rejection) -> Vec<u8> {
        (self.answer)(why, self.method == HEAD_METHOD.len())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Guarded<S> {
    /// A write while the head is still being read can only be hyper's own
    /// answer to a head it could not parse (400, 414, 431): no request
    /// reached the service. That bare answer is replaced by ours, with
    /// `Proxy-Status` and a problem body; hyper's bytes are reported written.
    fn poll_replace(&mut self, cx: &mut Context<'_>, first: &[u8], len: usize) -> Poll<io::Result<usize>> {
        if self.reject.is_none() {
            let status =
                first.get(9..12).and_then(|d| std::str::from_utf8(d).ok()).and_then(|d| d.parse().ok());
            self.reject = Some((self.canned(Rejection::Unparsable(status.unwrap_or(400))), 0));
        }
        ready!(self.poll_reject(cx))?;
        Poll::Ready(Ok(len))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.phase.get() == HEAD {
            return self.poll_replace(cx, buf, buf.len());
        }
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch_send(cx, res)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.phase.get() == HEAD {
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
            let len = bufs.iter().map(|b| b.len()).sum();
            return self.poll_replace(cx, first, len);
        }
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch_send(cx, res)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = Pin::new(&mut self.inner).poll_flush(cx);
        if matches!(res, Poll::Ready(Ok(()))) && self.phase.get() == ENDED {
            // hyper flushes its buffer before it flushes the socket: the
            // response is out.
            self.phase.shift(ENDED, IDLE);
        }
        self.start_idle_timer(cx);
        self.watch_send(cx, res)
    }

    /// Closing after an answer given before the request was read to its
    /// end (a refusal, a 408, a 431 ...): the client may still be sending
    /// its body, and closing a socket with unread data makes the kernel send
    /// a reset, which can destroy the answer before the client reads it
    /// (RFC 9112 §9.6). So the write side is shut first (the client sees
    /// the answer end), then what the client still sends is read and thrown
    /// away until it closes too, for at most `LINGER` and `LINGER_MAX`.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.reject.is_none() && !this.phase.linger.load(Ordering::Acquire) {
            // Under `send_timeout` too: over TLS the shutdown writes a
            // close_notify, which a client that reads nothing may never
            // make room for (probe 215, by reading; as `poll_linger` does).
            let res = Pin::new(&mut this.inner).poll_shutdown(cx);
            return this.watch_send(cx, res);
        }
        this.poll_linger(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Guarded<S> {
    /// Writes the canned answer, then lingers: what `poll_read` returns
    /// once an answer is decided.
    fn poll_refuse(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_reject(cx))?;
        self.poll_linger(cx)
    }

    /// Shuts the write side, then reads and drops what the client still
    /// sends until it closes, for at most [`LINGER`] and [`LINGER_MAX`]
    /// (see `poll_shutdown`). Done once; later calls return at once.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self;
        let drained = match this.lingered {
            Some(n) => n,
            None => {
                // Over TLS the shutdown writes a close_notify, which a
                // client that reads nothing never takes.
                match Pin::new(&mut this.inner).poll_shutdown(cx) {
                    Poll::Pending => return this.stall(cx),
                    Poll::Ready(r) => r?,
                }
                this.armed_for = CLOSING;
                this.timer.as_mut().reset(Instant::now() + LINGER);
                this.lingers = Some(LingerSlot::take(&this.lingering));
                *this.lingered.insert(0)
            }
        };
        let mut total = drained;
        let mut scratch = [0u8; 4096];
        while total < LINGER_MAX {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => break,
                Poll::Ready(Ok(())) => total += buf.filled().len(),
                Poll::Ready(Err(_)) => break,
                Poll::Pending => {
                    this.lingered = Some(total);
                    if this.timer.as_mut().poll(cx).is_ready() {
                        break;
                    }
                    return Poll::Pending;
                }
            }
        }
        this.lingered = Some(LINGER_MAX);
        this.lingers = None;
        Poll::Ready(Ok(()))
    }
}

/// How many connections are lingering: answered and closed on authgate's
/// side, waiting (up to 2 s) for the client to close its side too.
/// A shutdown waits for them, but they are no longer at work: its log
/// counts them apart from the connections still open.
#[derive(Debug, Default)]
pub struct Lingering(AtomicUsize);

impl Lingering {
    /// The connections lingering now.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// One lingering connection's place in [`Lingering`], given back on drop.
#[derive(Debug)]
struct LingerSlot(Arc<Lingering>);

impl LingerSlot {
    fn take(lingering: &Arc<Lingering>) -> Self {
        lingering.0.fetch_add(1, Ordering::Relaxed);
        LingerSlot(lingering.clone())
    }
}

impl Drop for LingerSlot {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The start of the HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2";

/// How a head starts when its method is `HEAD`.
pub(super) const HEAD_METHOD: &[u8] = b"HEAD ";

/// How many bytes of `prefix` a head has matched, `seen` before and `more`
/// read now: more than `prefix`'s length once they differ, so that a
/// prefix split across reads is followed.
pub(super) fn follow(prefix: &[u8], seen: usize, more: &[u8]) -> usize {
    let Some(want) = prefix.get(seen..).filter(|w| !w.is_empty()) else { return seen };
    let len = want.len().min(more.len());
    if want[..len] == more[..len] { seen + len } else { prefix.len() + 1 }
}

/// Where the first byte after the empty lines (`\r\n` or `\n`) that may
/// come before a request line is in `read`, if it is there; `cr` says the
/// bytes before ended in a `\r`, and is updated. A `\r` not followed by
/// `\n` starts the head (hyper answers it with a 400).
pub(super) fn skip_empty_lines(cr: &mut bool, read: &[u8]) -> Option<usize> {
    for (i, &b) in read.iter().enumerate() {
        match (b, *cr) {
            (b'\n', _) => *cr = false,
            (b'\r', false) => *cr = true,
            _ => return Some(i),
        }
    }
    None
}

/// The last two bytes read so far, `prev` before and `read` now.
fn last_two(prev: [u8; 2], read: &[u8]) -> [u8; 2] {
    match read {
        [.., a, b] => [*a, *b],
        [b] => [prev[1], *b],
        [] => prev,
    }
}

/// How many bytes of `read` belong to the head when its end (an empty line:
/// `\n\n` or `\n\r\n`, RFC 9112 §2.2 lets a recipient take a bare LF as a
/// line end) is in it; `tail` is the last two bytes read before it.
fn head_end(tail: [u8; 2], read: &[u8]) -> Option<usize> {
    let mut prev = tail;
    for (i, &b) in read.iter().enumerate() {
        if b == b'\n' && (prev[1] == b'\n' || prev == *b"\n\r") {
            return Some(i + 1);
        }
        prev = [prev[1], b];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn timeouts() -> Timeouts {
        Timeouts {
            idle: Duration::from_secs(60),
            head: Duration::from_secs(3),
            send: Duration::from_secs(10),
            max_head: 8192,
        }
    }

    /// A prefix is followed across reads, and given up at the first byte
    /// that differs.
    #[test]
    fn a_head_prefix_is_followed_across_reads() {
        assert_eq!(follow(HEAD_METHOD, 0, b"HE"), 2);
        assert_eq!(follow(HEAD_METHOD, 2, b"AD http://a/ HTTP/1.1"), HEAD_METHOD.len());
        assert_eq!(follow(HEAD_METHOD, HEAD_METHOD.len(), b"anything"), HEAD_METHOD.len());
        assert_eq!(follow(HEAD_METHOD, 0, b"HEADER"), HEAD_METHOD.len() + 1);
        assert_eq!(follow(HEAD_METHOD, 0, b"GET"), HEAD_METHOD.len() + 1);
        assert_eq!(follow(HEAD_METHOD, HEAD_METHOD.len() + 1, b"HEAD "), HEAD_METHOD.len() + 1);
        assert_eq!(follow(HEAD_METHOD, 3, b""), 3);
    }

    /// A client that sends part of a head and then reads nothing, with its
    /// receive buffer full: authgate's own 408 cannot be written. That write
    /// fails after the send timeout, and the connection with it; it was
    /// left pending for as long as the client kept the connection open.
    #[tokio::test(start_paused = true)]
    async fn a_canned_answer_the_client_does_not_take_fails_after_the_send_timeout() {
        // 64 bytes of buffer towards the client, which never reads them.
        let (mut client, server) = tokio::io::duplex(64);
        let answer: Canned = Box::new(|_, _| vec![b'x'; 4096]);
        let mut guarded =
            Guarded::new(server, Arc::new(Phase::default()), timeouts(), answer, Arc::default());
        client.write_all(b"GET http://127.0.0.1/ HTTP/1.1\r\nHost: 127").await.unwrap();
        let mut buf = [0u8; 1024];
        let n = guarded.read(&mut buf).await.unwrap();
        assert!(n > 0, "the partial head is read");

        let start = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(3600), guarded.read(&mut buf)).await;
        let Ok(Err(e)) = ended else { panic!("the connection is still open after an hour: {ended:?}") };
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        // The head timeout (and its short grace), then the send timeout.
        let took = start.elapsed();
        assert!(took >= Duration::from_secs(13) && took < Duration::from_secs(14), "{took:?}");
    }

    /// A request refused while its body is still coming: the answer goes
    /// out, the body is drained in a task of its own, and the request ends
    /// with whichever of the two comes last.
    #[test]
    fn a_drained_request_ends_with_the_later_of_its_answer_and_its_body() {
        let phase = Phase::default();
        phase.busy();
        let drain = phase.draining();
        phase.idle();
        assert_eq!(phase.get(), BUSY, "answered, but its body is still being read");
        phase.drained(drain);
        assert_eq!(phase.get(), ENDED);

        phase.shift(ENDED, IDLE);
        phase.busy();
        let drain = phase.draining();
        phase.drained(drain);
        assert_eq!(phase.get(), BUSY, "its body is read, but not its answer sent");
        phase.idle();
        assert_eq!(phase.get(), ENDED);
    }

    /// The drain runs in a task of its own and can end after hyper has
    /// begun the next, pipelined request: that request is not ended by it,
    /// and a drain of its own is not forgotten (its body's bytes would have
    /// been taken for the head of a request after it).
    #[test]
    fn a_drain_that_ends_after_the_next_request_began_leaves_that_request_alone() {
        let phase = Phase::default();
        phase.busy();
        let first = phase.draining();
        phase.idle();
        phase.busy();
        phase.drained(first);
        assert_eq!(phase.get(), BUSY, "the next request is still being served");

        let second = phase.draining();
        phase.idle();
        phase.busy();
        let third = phase.draining();
        phase.drained(second);
        phase.idle();
        assert_eq!(phase.get(), BUSY, "the third request's body is still being read");
        phase.drained(third);
        assert_eq!(phase.get(), ENDED);
    }

    /// The connection's task, waiting on the socket while the body is
    /// drained elsewhere, is woken when the drain ends (so that its idle
    /// timer starts without a byte from the client).
    #[test]
    fn the_end_of_a_drain_wakes_the_connection() {
        struct Flag(AtomicBool);
        impl std::task::Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::Release);
            }
        }
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = std::task::Waker::from(flag.clone());
        let phase = Phase::default();
        phase.busy();
        phase.wake_when_drained(&waker);
        let drain = phase.draining();
        phase.idle();
        phase.wake_when_drained(&waker);
        assert!(!flag.0.load(Ordering::Acquire));
        phase.drained(drain);
        assert!(flag.0.load(Ordering::Acquire), "not woken");
        assert_eq!(phase.get(), ENDED);
    }

    #[test]
    fn empty_lines_before_a_head_are_skipped_across_reads() {
        let mut cr = false;
        assert_eq!(skip_empty_lines(&mut cr, b"\r\n\nGET"), Some(3));
        assert_eq!(skip_empty_lines(&mut cr, b"\r"), None);
        assert!(cr);
        assert_eq!(skip_empty_lines(&mut cr, b"\nG"), Some(1));
        let mut cr = false;
        // A CR that does not end a line starts the head (hyper's 400).
        assert_eq!(skip_empty_lines(&mut cr, b"\r\rGET"), Some(1));
        let mut cr = false;
        assert_eq!(skip_empty_lines(&mut cr, b"\n\n\r\n"), None);
        assert!(!cr);
    }

    #[test]
    fn the_end_of_a_head_is_found_across_reads_and_with_bare_line_feeds() {
        assert_eq!(head_end([0; 2], b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_end([0; 2], b"GET / HTTP/1.1\n\nbody"), Some(16));
        assert_eq!(head_end(*b"\r\n", b"\r\nbody"), Some(2));
        assert_eq!(head_end(*b"\n\r", b"\nbody"), Some(1));
        assert_eq!(head_end(*b"x\n", b"\nbody"), Some(1));
        assert_eq!(head_end([0; 2], b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(head_end(*b"\r\n", b"Host: x"), None);
    }
}
