//! Copying bytes both ways through a tunnel, with half-close, an idle
//! timeout, byte counts that survive cancellation, and buffers that exist
//! only while data is moving.
//!
//! `tokio::io::copy_bidirectional` keeps two 8 KiB buffers per tunnel for its
//! whole life; most tunnels of an egress proxy sit idle (keep-alive TLS
//! sessions), so here a direction's buffer is released whenever its read
//! side has nothing to give. An idle tunnel then holds no copy buffer at all,
//! and a busy one reads in 64 KiB chunks (fewer syscalls for bulk transfers).
//!
//! Between two plain TCP sockets ([`Relay::run_tcp`]) a direction that
//! carries bulk data moves on to `splice(2)` (see `splice.rs`): no copy
//! through user space at all.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::io::poll_read_buf;

use super::splice::Pipe;
use crate::telemetry::metrics::Metrics;

/// First buffer of a direction that wakes up: small, since most wake-ups of
/// an interactive tunnel carry little.
const FIRST_CHUNK: usize = 8 * 1024;
/// Largest buffer: reached by doubling while reads keep filling the buffer
/// (a bulk transfer), for fewer syscalls per byte.
const CHUNK: usize = 64 * 1024;

/// One side of a tunnel.
///
/// A TLS session ends cleanly with a `close_notify` alert; a TCP close
/// without one says the stream was cut (RFC 8446 §6.1). After a side
/// failed, the other is not told that all went well: on TLS, its TCP
/// socket is shut instead, a bare FIN (a `close_notify` passed an origin's
/// reset, or a truncation without one, on as a clean end to a client of an
/// upgraded `https://` connection, and the other way round; probe 176).
pub trait Side: AsyncRead + AsyncWrite + Unpin {
    /// The TCP socket under a TLS session. `None`, the default, for a side
    /// whose `shutdown` says no more than a FIN (plain TCP), or one out of
    /// reach.
    fn under_tls(&self) -> Option<&TcpStream> {
        None
    }

    /// The TCP socket the side runs on, plain or under TLS, for a reset
    /// (see [`reset`]); `None` for one out of reach (hyper's upgrade wrapper).
    fn tcp(&self) -> Option<&TcpStream> {
        self.under_tls()
    }
}

impl Side for TcpStream {
    fn tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl Side for hyper_util::rt::TokioIo<hyper::upgrade::Upgraded> {}

impl<S: Side + ?Sized> Side for Box<S> {
    fn under_tls(&self) -> Option<&TcpStream> {
        (**self).under_tls()
    }

    fn tcp(&self) -> Option<&TcpStream> {
        (**self).tcp()
    }
}

/// A side whose type is known only at run time (plain or TLS).
pub type BoxedSide = Box<dyn Side + Send>;

/// Makes the close of `side` a reset, where its TCP socket is in reach: the
/// end of a tunnel authgate cuts (a shutdown, a revocation, a side that took
/// nothing for `send_timeout`). A FIN there told a peer whose stream ends at
/// the close (a download without a length, an upload) that it had all of
/// it (probe 210); a forwarded response cut so ends with a reset too.
pub fn reset(side: &impl Side) {
    if let Some(tcp) = side.tcp() {
        let _ = tcp.set_zero_linger();
    }
}

/// Reads from `r` into `buf` (empty, with room); `direct` says to read a
/// plain TCP socket past tokio's readiness, until it says `EAGAIN`.
///
/// A plain TCP socket is read with `try_read`, not tokio's `poll_read`:
/// tokio takes a read that returned less than asked for as a drained
/// socket and waits for the next readiness event. recv(2) stops in front
/// of TCP urgent data (`MSG_OOB`, as telnet and FTP send it) when it has
/// bytes before it, and with the rest of the stream already queued no
/// event came: the tunnel stalled until its idle timeout ended it with a
/// FIN, as if all had crossed (probe 212). `try_read` leaves the readiness
/// to an `EAGAIN`, so the next read steps over the urgent byte (dropping
/// it, as any reader that does not ask for it does). It costs no more
/// syscalls than tokio's way did with a look for urgent data after each
/// short read (the `EAGAIN` takes the look's place), and one fewer when the
/// peer's end comes with its last bytes.
///
/// hyper read a side first, with `poll_read` (a client's request head, an
/// origin's 101): a read that stopped at an urgent byte sent right behind
/// the head left tokio's readiness cleared with bytes queued, and they
/// waited for the idle timeout (probe 398: 2 of 10 runs). So a side's first
/// reads go to the socket itself (`direct`), until it says `EAGAIN`.
fn read_into<R: Side>(
    direct: &mut bool,
    cx: &mut Context<'_>,
    r: &mut R,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    let Some(tcp) = plain_tcp(r) else {
        return poll_read_buf(Pin::new(r), cx, buf);
    };
    if *direct {
        // Once per tunnel: the zeroing of the buffer does not matter.
        buf.resize(buf.capacity(), 0);
        let read = std::io::Read::read(&mut &*socket2::SockRef::from(tcp), buf);
        buf.truncate(*read.as_ref().unwrap_or(&0));
        match read {
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {
                *direct = false
            }
            read => return Poll::Ready(read),
        }
    }
    loop {
        ready!(tcp.poll_read_ready(cx))?;
        match tcp.try_read_buf(buf) {
            // The readiness was used up: the next poll waits for an event.
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
            read => return Poll::Ready(read),
        }
    }
}

/// The TCP socket of a side that is plain TCP (not TLS).
fn plain_tcp(side: &impl Side) -> Option<&TcpStream> {
    side.tcp().filter(|_| side.under_tls().is_none())
}

/// Ends `side`'s sending half without a clean TLS end, when it is TLS (see
/// [`Side`]); `None` for a side without TLS, to be shut as usual.
fn cut(side: &impl Side) -> Option<io::Result<()>> {
    side.under_tls().map(|tcp| socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Write))
}

#[derive(Default)]
struct Direction {
    /// Read but not yet written; `None` while the direction is idle.
    buf: Option<BytesMut>,
    /// Size of the next buffer (doubles while reads fill it).
    size: usize,
    eof: bool,
    done: bool,
    need_flush: bool,
    /// A flush could not finish: bytes the writer took (TLS: into its
    /// records) still wait for the socket.
    flushing: bool,
    moved: u64,
    /// Whether this direction moved on to `splice(2)`.
    splice: Splice,
    /// The other direction failed: this one's end is passed on as a cut
    /// (see [`Side`]), by [`close_gently`], not here: it first waits for
    /// what was written to go out (see [`sent_out`]).
    cut: bool,
    /// Read the socket itself until it says `EAGAIN` (see [`read_into`]).
    direct: bool,
    /// The error splice took at an urgent byte, to end this direction with
    /// instead of the end of the stream (see [`Pipe::error_after`]).
    error_at_end: Option<io::Error>,
    /// It failed; `read_failed` when reading (else writing).
    failed: bool,
    read_failed: bool,
}

/// A direction's use of `splice(2)` (two TCP sockets only).
#[derive(Default)]
enum Splice {
    /// Not yet: no bulk data seen.
    #[default]
    Untried,
    /// Carrying bulk data through this pipe.
    Piped(Pipe),
    /// No pipe could be had, splice(2) was refused, or it stood at TCP
    /// urgent data: copy for good.
    Off,
}

impl Direction {
    /// Whether it passed its reader's end on to its writer, as the reader
    /// ended it (not after a failure, nor cut because of one).
    fn ended_cleanly(&self) -> bool {
        self.done && !self.failed && !self.cut
    }

    /// Whether bytes wait here for the other side to accept them.
    fn blocked(&self) -> bool {
        self.flushing
            || self.buf.as_ref().is_some_and(|b| !b.is_empty())
            || matches!(&self.splice, Splice::Piped(pipe) if !pipe.is_empty())
    }

    /// After the other direction failed: once this one has nothing waiting
    /// and nothing to read at once, it ends as at an EOF (its writer is
    /// flushed and shut: a FIN after the last byte). Whether it was set so
    /// now (poll it again to carry that out).
    fn finish_after_failure(&mut self) -> bool {
        if self.eof || self.blocked() {
            return false;
        }
        self.eof = true;
        self.cut = true;
        true
    }

    /// Flushes `w`, noting whether bytes still wait in it; bytes that
    /// waited there and have gone are progress.
    fn flush<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        w: &mut W,
        progress: &mut bool,
    ) -> Poll<io::Result<()>> {
        let res = Pin::new(w).poll_flush(cx);
        *progress |= self.flushing && res.is_ready();
        self.flushing = res.is_pending();
        res
    }

    /// Copies from `r` to `w` until `r` has nothing to give or `w` takes
    /// nothing more (`Pending`), or the direction is done (`Ready`). With
    /// `to_pipe`, also `Ready` (not done) once reads have grown the buffer
    /// to its largest and all of it went out: the caller moves the
    /// direction on to a pipe (see [`Direction::poll_tcp`]). Reads of a
    /// plain TCP socket return `Pending` only when it is drained, so a
    /// bulk transfer whose data keeps coming would otherwise never leave
    /// this loop.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
        progress: &mut bool,
        to_pipe: bool,
    ) -> Poll<io::Result<()>>
    where
        R: Side,
        W: Side,
    {
        loop {
            let pending = self.buf.as_ref().map_or(0, |b| b.len());
            if pending == 0 && !self.eof {
                // Uninitialised capacity: no 64 KiB memset per read.
                let size = self.size.clamp(FIRST_CHUNK, CHUNK);
                let buf = self.buf.get_or_insert_with(|| BytesMut::with_capacity(size));
                // After `advance`, reclaims the consumed front (len is 0: no copy).
                buf.reserve(size);
                let room = buf.capacity();
                match read_into(&mut self.direct, cx, r, buf) {
                    Poll::Pending => {
                        // Nothing to read: give the buffer back and make sure
                        // what was written is on its way.
                        self.buf = None;
                        if self.need_flush {
                            ready!(self.flush(cx, w, progress))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => {
                        self.read_failed = true;
                        return Poll::Ready(Err(e));
                    }
                    Poll::Ready(Ok(0)) if self.error_at_end.is_some() => {
                        self.read_failed = true;
                        return Poll::Ready(Err(self
                            .error_at_end
                            .take()
                            .unwrap_or_else(|| io::ErrorKind::ConnectionReset.into())));
                    }
                    Poll::Ready(Ok(0)) => {
                        self.eof = true;
                        self.buf = None;
                    }
                    Poll::Ready(Ok(n)) => {
                        *progress = true;
                        if n >= room && size < CHUNK {
                            // The next `reserve` grows the buffer.
                            self.size = size * 2;
                        }
                    }
                }
            }
            while let Some(buf) = self.buf.as_mut().filter(|b| !b.is_empty()) {
                let n = ready!(Pin::new(&mut *w).poll_write(cx, buf))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                buf.advance(n);
                self.moved += n as u64;
                self.need_flush = true;
                *progress = true;
            }
            if let Some(buf) = self.buf.as_mut() {
                // Reuse the allocation for the next read.
                buf.clear();
            }
            if to_pipe && self.size >= CHUNK && !self.eof {
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                // Half-close: pass the end of this direction on, keep the other.
                ready!(self.flush(cx, w, progress))?;
                if !self.cut {
                    ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                }
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Like [`Direction::poll`], for two TCP sockets: once reads have grown
    /// the buffer to its largest size (a bulk transfer), the direction
    /// continues through a pipe with `splice(2)`.
    fn poll_tcp(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut TcpStream,
        w: &mut TcpStream,
        progress: &mut bool,
    ) -> Poll<io::Result<()>> {
        loop {
            let drained = self.buf.as_ref().is_none_or(|b| b.is_empty());
            // Not while reading past tokio (`direct`): a pipe's fill waits
            // for its readiness.
            let untried = matches!(self.splice, Splice::Untried) && !self.direct;
            if untried && self.size >= CHUNK && drained && !self.eof {
                self.splice = match Pipe::new() {
                    Ok(pipe) => {
                        self.buf = None;
                        Splice::Piped(pipe)
                    }
                    // Out of fds, or no large pipe: copy for good rather than
                    // fail the tunnel or try again at every wake-up.
                    Err(_) => Splice::Off,
                };
            }
            let Splice::Piped(pipe) = &mut self.splice else {
                let to_pipe = matches!(self.splice, Splice::Untried) && !self.direct;
                ready!(self.poll(cx, r, w, progress, to_pipe))?;
                if self.done {
                    return Poll::Ready(Ok(()));
                }
                // Bulk data: on to a pipe (see `poll`'s `to_pipe`).
                continue;
            };
            loop {
                if pipe.is_empty() && !self.eof {
                    match ready!(pipe.poll_fill(cx, r)) {
                        Ok(0) => self.eof = true,
                        Ok(_) => *progress = true,
                        Err(e) if Pipe::copy_instead(&e) => {
                            // Nothing moved: carry on copying.
                            self.splice = Splice::Off;
                            self.error_at_end = Pipe::error_after(&e);
                            return self.poll(cx, r, w, progress, false);
                        }
                        Err(e) => {
                            self.read_failed = true;
                            return Poll::Ready(Err(e));
                        }
                    }
                }
                while !pipe.is_empty() {
                    let n = ready!(pipe.poll_drain(cx, w))?;
                    self.moved += n as u64;
                    *progress = true;
                }
                if self.eof {
                    if !self.cut {
                        ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                    }
                    self.done = true;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

/// Which way a direction copies.
#[derive(Clone, Copy)]
enum Way {
    /// Client → origin.
    Up,
    /// Origin → client.
    Down,
}

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides finished.
    Closed,
    /// No byte moved for the idle timeout.
    Idle,
    /// Bytes waited for a side that accepted none of them for the
    /// longer of the two timeouts.
    Stalled,
    /// A side failed (reset, broken pipe).
    Error,
    /// A side that speaks TLS with authgate ended its TCP connection
    /// without a `close_notify` (a truncation, RFC 8446 §6.1), before any
    /// other failure (and, for the client, not after an end: see
    /// `ClientLeft`); ended as a failure is. Chromium closes every
    /// connection to a TLS proxy so, and its tunnels, all logged
    /// `tunnel_error`, could not be told from resets (probe 232).
    Truncated,
    /// The client's side failed first, but after the client had ended its
    /// own sending, or after it had been passed the origin's end and sent
    /// nothing more: a client that closes (or resets) its connection at
    /// once after its `close_notify`, as curl does, or after authgate's, as
    /// Chromium may. It left; ended as a failure is, logged as a close
    /// (such tunnels were `tunnel_error`: every curl tunnel on the TLS
    /// listener; probe 237). A client still uploading when it resets is an
    /// `Error` (probe 238).
    ClientLeft,
}

/// How long a tunnel may go without moving a byte.
///
/// The relay sees a byte move when it reads or writes one. A side that
/// reads slowly is seen only when its socket takes more: with the socket
/// buffers of a fast link (megabytes), a reader taking 256 KiB/s left the
/// relay blocked for seconds at a time while bytes still reached it, and a
/// short `idle` cut that moving download. So while bytes wait for a side
/// to accept them the tunnel is not idle: it ends only after the longer of
/// the two without progress.
#[derive(Debug, Clone, Copy)]
pub struct Quiet {
    /// Nothing to read either way and nothing waiting (`tunnel_idle_timeout`).
    pub idle: Duration,
    /// Bytes waiting for a side that accepts none (`send_timeout`).
    pub blocked: Duration,
}

/// A running relay; its byte counts stay readable after it was cancelled.
#[derive(Default)]
pub struct Relay {
    up: Direction,
    down: Direction,
    /// Where the bytes are counted as they move (see [`Relay::count_into`]).
    meter: Option<Arc<Metrics>>,
    /// The bytes (up, down) already added to `meter`.
    counted: [u64; 2],
    /// When bytes last moved up, once the relay has ended (`None` if none
    /// did): bytes written to the origin shortly before a failure may not
    /// have gone out yet (see [`close_gently`]).
    up_last: Option<Instant>,
}

impl Relay {
    /// Makes `early` the relay's first bytes up: what the client sent along
    /// with its CONNECT. They go out as the relay's first write, while the
    /// origin's bytes already flow down: written before the relay, they
    /// waited for an origin that sends a large banner before it reads, and
    /// that origin for a client the relay did not yet read for.
    pub fn send_first(&mut self, early: &[u8]) {
        if !early.is_empty() {
            self.up.buf = Some(BytesMut::from(early));
        }
    }

    /// Makes `early` the relay's first bytes down: what an origin sent
    /// along with its 101, read with it.
    pub fn send_first_down(&mut self, early: &[u8]) {
        if !early.is_empty() {
            self.down.buf = Some(BytesMut::from(early));
        }
    }

    /// Adds the bytes to `metrics` as they move, not at the end; whoever
    /// logs the tunnel must not count them again.
    pub fn count_into(&mut self, metrics: Arc<Metrics>) {
        self.meter = Some(metrics);
    }

    /// Bytes client → origin so far.
    pub fn up(&self) -> u64 {
        self.up.moved
    }

    /// Bytes origin → client so far.
    pub fn down(&self) -> u64 {
        self.down.moved
    }

    /// Copies until both directions are done, a side failed (and the other
    /// passed on what it held, see `Relay::drive`), or nothing moved for
    /// `quiet.idle` (see [`Quiet`]).
    pub async fn run<A, B>(&mut self, client: &mut A, origin: &mut B, quiet: Quiet) -> End
    where
        A: Side,
        B: Side,
    {
        // hyper read both before (a request head, a 101), or the origin is
        // new (see `read_into`); `direct` does nothing for TLS sides.
        self.up.direct = true;
        self.down.direct = true;
        let end = self
            .drive(quiet, |way, dir, cx, progress| match way {
                Way::Up => dir.poll(cx, client, origin, progress, false),
                Way::Down => dir.poll(cx, origin, client, progress, false),
            })
            .await;
        closed(end, client, origin, self.uploaded_lately()).await
    }

    /// [`Relay::run`] for two plain TCP sockets: bulk directions go through
    /// `splice(2)` instead of a user-space buffer.
    pub async fn run_tcp(&mut self, client: &mut TcpStream, origin: &mut TcpStream, quiet: Quiet) -> End {
        // hyper read the client's socket first (see `read_into`).
        self.up.direct = true;
        let end = self
            .drive(quiet, |way, dir, cx, progress| match way {
                Way::Up => dir.poll_tcp(cx, client, origin, progress),
                Way::Down => dir.poll_tcp(cx, origin, client, progress),
            })
            .await;
        closed(end, client, origin, self.uploaded_lately()).await
    }

    /// Whether the client ended its sending itself (a half-close, passed on
    /// to the origin before any failure) after bytes moved up within
    /// [`LINGER`] of now: the origin may still be taking them in, and its
    /// socket, already shut, cannot say (see [`close_gently`]). Not when
    /// the client only sent a request and then gave up on the answer: the
    /// origin was then read for up to 4 MiB and kept 2 s for nobody, at
    /// every cancelled download (probe 293).
    fn uploaded_lately(&self) -> bool {
        self.up.ended_cleanly() && self.up_last.is_some_and(|at| at.elapsed() < LINGER)
    }

    /// The loop shared by both relays: polls each direction with `step`,
    /// ends on both sides done or after a quiet spell. Each direction has
    /// its own clock: bytes moving one way do not keep alive bytes that
    /// wait, the other way, for a side that takes none (a client that
    /// stopped reading but sent a byte a second held its tunnel for good).
    ///
    /// When a direction fails (a reset, a broken pipe), the other one still
    /// passes on what it can read at once and what it already holds, then
    /// ends its side with a FIN (see [`Direction::finish_after_failure`]);
    /// the relay ends with [`End::Error`] once that is out. Ending at the
    /// failure dropped both sockets, and the kernel reset the one with
    /// unread data, throwing away what it still had to send (probe 109: an
    /// origin's 413 never reached a client that was still uploading).
    async fn drive<F>(&mut self, quiet: Quiet, mut step: F) -> End
    where
        F: FnMut(Way, &mut Direction, &mut Context<'_>, &mut bool) -> Poll<io::Result<()>>,
    {
        let start = Instant::now();
        // When each direction (up, down) last moved a byte.
        let mut last = [start, start];
        let mut timer = Box::pin(tokio::time::sleep(quiet.idle));
        let mut failed = false;
        // How the first failure ended the relay (see `End`).
        let mut failure = End::Error;
        // The bytes moved up by the time the origin's end had been passed
        // to the client: one that sent more after that was still
        // uploading, and its reset is no close (probe 238).
        let mut up_at_origins_end = None;
        let end = poll_fn(|cx| {
            let mut moved = [false, false];
            let failed_before_poll = failed;
            // Twice when a failure turns up in the second direction: the
            // first, polled before it, then has to finish too.
            for _ in 0..2 {
                let failed_before = failed;
                for (i, way) in [Way::Up, Way::Down].into_iter().enumerate() {
                    let dir = match way {
                        Way::Up => &mut self.up,
                        Way::Down => &mut self.down,
                    };
                    if dir.done {
                        continue;
                    }
                    dir.cut |= failed;
                    let mut res = step(way, dir, cx, &mut moved[i]);
                    if res.is_pending() && failed && dir.finish_after_failure() {
                        res = step(way, dir, cx, &mut moved[i]);
                    }
                    if let Poll::Ready(Err(e)) = res {
                        dir.done = true;
                        dir.failed = true;
                        // The client's socket: read going up, written going down.
                        let clients = matches!((way, dir.read_failed), (Way::Up, true) | (Way::Down, false));
                        let after_an_end = self.up.ended_cleanly()
                            || (self.down.ended_cleanly() && up_at_origins_end == Some(self.up.moved));
                        if !failed {
                            failure = if clients && after_an_end {
                                End::ClientLeft
                            } else if e.kind() == io::ErrorKind::UnexpectedEof {
                                End::Truncated
                            } else {
                                End::Error
                            };
                        }
                        failed = true;
                    }
                    if up_at_origins_end.is_none() && self.down.ended_cleanly() {
                        up_at_origins_end = Some(self.up.moved);
                    }
                }
                if failed == failed_before {
                    break;
                }
            }
            self.count(moved);
            if self.up.done && self.down.done {
                return Poll::Ready(if failed { failure } else { End::Closed });
            }
            // After a failure what still waits has `send_timeout` to go out,
            // the tunnel's idle time no longer applies: a reader that had
            // stalled held a failed tunnel for up to an hour, which then
            // said `tunnel_send_timeout` (probe 110).
            let (idle, stall) = if failed {
                (quiet.blocked, quiet.blocked)
            } else {
                (quiet.idle, quiet.idle.max(quiet.blocked))
            };
            if failed && !failed_before_poll {
                timer.as_mut().reset(Instant::now());
            }
            if moved[0] || moved[1] {
                let now = Instant::now();
                for (at, m) in last.iter_mut().zip(moved) {
                    if m {
                        *at = now;
                    }
                }
                // A stall's deadline, later than the idle one, no longer
                // applies once the bytes waiting are gone (with a send
                // timeout longer than the idle one, the tunnel went idle
                // that much late).
                if timer.deadline() > now + idle && !self.up.blocked() && !self.down.blocked() {
                    timer.as_mut().reset(now + idle);
                }
            }
            while timer.as_mut().poll(cx).is_ready() {
                let blocked = [self.up.blocked(), self.down.blocked()];
                // The first deadline that applies: a blocked direction's
                // stall, else (nothing waiting) the tunnel's idle time.
                let deadline = match (blocked[0], blocked[1]) {
                    (false, false) => last[0].max(last[1]) + idle,
                    (true, false) => last[0] + stall,
                    (false, true) => last[1] + stall,
                    (true, true) => last[0].min(last[1]) + stall,
                };
                if Instant::now() >= deadline {
                    return Poll::Ready(if failed {
                        failure
                    } else if blocked[0] || blocked[1] {
                        End::Stalled
                    } else {
                        End::Idle
                    });
                }
                timer.as_mut().reset(deadline);
            }
            Poll::Pending
        })
        .await;
        self.up_last = (self.up.moved > 0).then_some(last[0]);
        end
    }

    /// Adds the bytes moved since the last call to the metrics, if any, so
    /// that a tunnel's traffic shows while it runs (a tunnel can last hours:
    /// counted at its end only, `rate(authgate_bytes_total)` read 0 while it
    /// moved data, then jumped).
    fn count(&mut self, moved: [bool; 2]) {
        let Some(meter) = &self.meter else { return };
        if !(moved[0] || moved[1]) {
            return;
        }
        let (up, down) = (self.up.moved, self.down.moved);
        meter.bytes(up - self.counted[0], down - self.counted[1]);
        self.counted = [up, down];
    }

    /// Whether a direction moved on to `splice(2)` (for tests).
    #[cfg(test)]
    fn spliced(&self) -> (bool, bool) {
        let piped = |d: &Direction| matches!(d.splice, Splice::Piped(_));
        (piped(&self.up), piped(&self.down))
    }
}

/// Longest wait, after a tunnel failed, for the client to stop sending.
const LINGER: Duration = Duration::from_secs(2);
/// Most bytes read from the client and thrown away in that wait.
const LINGER_MAX: u64 = 64 << 20;
/// Most bytes read from the origin and thrown away in that wait, after
/// bytes went up lately (see [`close_gently`]): little, so that a failed
/// tunnel does not have authgate take much from an origin for nobody
/// (probe 110).
const ORIGIN_LINGER_MAX: u64 = 4 << 20;

/// Ends a relay that ended with `end`: after a failure, closes both sides
/// gently (see [`close_gently`]); when idle, ends them as usual (see
/// [`end_quietly`]). A stall is a cut, which the caller ends with a reset
/// (see [`reset`]), as it does one by a shutdown or a revocation.
async fn closed<A, B>(end: End, client: &mut A, origin: &mut B, uploaded_lately: bool) -> End
where
    A: Side,
    B: Side,
{
    match end {
        // Boxed: inline, it would grow every tunnel's task.
        End::Error | End::Truncated | End::ClientLeft => {
            Box::pin(close_gently(client, origin, uploaded_lately)).await
        }
        End::Idle => Box::pin(end_quietly(client, origin)).await,
        End::Stalled | End::Closed => {}
    }
    end
}

/// Ends both sides of a tunnel that went idle as an ordinary close: nothing
/// waits either way, so a side that speaks TLS gets its `close_notify`
/// (it got a FIN alone, which TLS reads as a truncation; probe 212), a
/// plain one its FIN. Within [`LINGER`]: a side that takes nothing does not
/// hold the tunnel.
async fn end_quietly<A: Side, B: Side>(client: &mut A, origin: &mut B) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(LINGER, async {
        let _ = client.shutdown().await;
        let _ = origin.shutdown().await;
    })
    .await;
}

/// Closes both sides of a tunnel that failed. Each side's write half is
/// shut (what was written still goes out, then a FIN), and what the client
/// still sends is read and thrown away until it closes too, for at most
/// [`LINGER`] and [`LINGER_MAX`]: closing a socket with unread data makes
/// the kernel reset it, which throws away what it still had to send (RFC
/// 9112 §9.6 gives the same reason for HTTP connections), such as the
/// origin's last answer.
///
/// What was written to the origin goes out before its FIN (see
/// [`sent_out`]). The origin's side is read only when the client had
/// half-closed after bytes went up within [`LINGER`] (`uploaded_lately`,
/// see [`Relay::uploaded_lately`]), until the origin closes too, and at
/// most [`ORIGIN_LINGER_MAX`] of it: it may still be taking them in. Read
/// as the client's side is, an origin that kept sending had authgate take
/// up to 64 MiB from it in 45 ms after a client reset, for nobody and
/// counted nowhere (probe 110); a download the client gave up on is not
/// read at all.
async fn close_gently<A, B>(client: &mut A, origin: &mut B, uploaded_lately: bool)
where
    A: Side,
    B: Side,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Neither side is told that all went well (see `Side`).
    async fn end(side: &mut impl Side) {
        if cut(side).is_none() {
            let _ = side.shutdown().await;
        }
    }
    let drain = async {
        // A side that failed is already closed: shut and read both fail.
        end(client).await;
        let mut scratch = vec![0u8; 8 * 1024];
        let mut total = 0u64;
        while total < LINGER_MAX {
            match client.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
        }
    };
    let origin_end = async {
        sent_out(origin).await;
        end(origin).await;
        // After a half-close that followed bytes sent up lately, the
        // origin may still be taking them in: its socket is kept until the
        // origin closes too, within the linger, so that the close is no
        // reset. A client that
        // half-closed, then reset, lost its last upload so: the origin's
        // end had gone already, and `sent_out` cannot see past it (probe
        // 292). Meanwhile the origin's bytes are read and thrown away, at
        // most ORIGIN_LINGER_MAX; past that they are left unread, which
        // stops the origin sending (its window closes) while it still reads.
        if uploaded_lately {
            let mut scratch = vec![0u8; 8 * 1024];
            let mut total = 0u64;
            loop {
                if total >= ORIGIN_LINGER_MAX {
                    std::future::pending::<()>().await;
                }
                match origin.read(&mut scratch).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n as u64,
                }
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, async { tokio::join!(drain, origin_end) }).await;
}

/// Waits until the kernel has sent all that was written to `side` (and
/// the peer has taken most of it), where its TCP socket is in reach.
///
/// The origin's socket is closed with the origin's bytes unread in it,
/// which makes the kernel reset it, and a reset throws away what the
/// socket still had to send: a client's last 33 to 176 KB, read and
/// counted in `bytes_up`, never reached an origin that read them slowly
/// after the client reset (probe 289). With `TCP_NOTSENT_LOWAT` at 1 the
/// socket polls writable only when nothing waits unsent (and its buffer is
/// not mostly unacknowledged); looked at every 10 ms, within the caller's
/// [`LINGER`]. On the failure path only.
async fn sent_out(side: &mut impl Side) {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    // (`&mut`: a shared borrow held across the sleep would need the side
    // to be `Sync`.)
    let sent = |side: &mut dyn Side| {
        let Some(tcp) = side.tcp() else { return true };
        let mut fds = [PollFd::new(tcp, PollFlags::OUT)];
        let now = Timespec { tv_sec: 0, tv_nsec: 0 };
        // Sent, or the socket failed (`ERR`, `HUP`): nothing to wait for.
        poll(&mut fds, Some(&now)).is_err() || !fds[0].revents().is_empty()
    };
    match side.tcp() {
        Some(tcp) if socket2::SockRef::from(tcp).set_tcp_notsent_lowat(1).is_ok() => {}
        _ => return,
    }
    while !sent(side) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    impl Side for DuplexStream {}

    /// `idle` seconds, and the default 60 s for a blocked side.
    fn quiet(idle: u64) -> Quiet {
        Quiet { idle: Duration::from_secs(idle), blocked: Duration::from_secs(60) }
    }

    /// A relay between two in-memory pipes of `size` bytes: the client's end,
    /// the origin's end, and the relay's task.
    fn relay_between(
        size: usize,
        quiet: Quiet,
    ) -> (tokio::io::DuplexStream, tokio::io::DuplexStream, tokio::task::JoinHandle<End>) {
        let (client, mut c_side) = duplex(size);
        let (mut o_side, origin) = duplex(size);
        let task = tokio::spawn(async move { Relay::default().run(&mut c_side, &mut o_side, quiet).await });
        (client, origin, task)
    }

    #[tokio::test(start_paused = true)]
    async fn a_side_that_reads_slowly_is_not_idle_and_one_that_stops_is_stalled() {
        let (mut client, mut origin, task) = relay_between(64, quiet(5));
        let _writer = tokio::spawn(async move {
            let _ = origin.write_all(&[b'x'; 64 * 1024]).await;
            origin
        });
        // Reads a little every 8 s: longer than the 5 s idle timeout, but
        // bytes keep moving to it (they were cut off after 5 s).
        let mut chunk = [0u8; 16];
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_secs(8)).await;
            client.read_exact(&mut chunk).await.unwrap();
        }
        assert!(!task.is_finished(), "a slow reader is not idle");
        // Stops reading: the relay waits the 60 s, not the 5.
        let stopped = tokio::time::Instant::now();
        assert_eq!(task.await.unwrap(), End::Stalled);
        assert!(stopped.elapsed() >= Duration::from_secs(59), "{:?}", stopped.elapsed());
    }

    /// A client that stops reading its download is stalled even while it
    /// keeps sending a byte a second the other way (the shared clock kept
    /// such a tunnel open for as long as the client went on).
    #[tokio::test(start_paused = true)]
    async fn bytes_moving_one_way_do_not_keep_a_stalled_other_way_alive() {
        let (mut client, origin, task) = relay_between(64, quiet(5));
        let _origin = tokio::spawn(async move {
            // Sends a download nobody reads, and drains what comes up.
            let (mut rd, mut wr) = tokio::io::split(origin);
            let drain = tokio::spawn(async move {
                let mut sink = [0u8; 64];
                while rd.read(&mut sink).await.is_ok_and(|n| n > 0) {}
            });
            let _ = wr.write_all(&[b'x'; 64 * 1024]).await;
            drain.await
        });
        let started = tokio::time::Instant::now();
        let mut end = None;
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if task.is_finished() {
                end = Some(started.elapsed());
                break;
            }
            let _ = client.write_all(b"k").await;
        }
        let took = end.unwrap_or_else(|| panic!("still open after 200 s of a byte a second up"));
        assert!(took >= Duration::from_secs(59) && took <= Duration::from_secs(62), "{took:?}");
        assert_eq!(task.await.unwrap(), End::Stalled);
    }

    /// Once bytes that waited for a side have gone, the tunnel is idle from
    /// its last move: with a send timeout longer than the idle one, the
    /// timer stayed on the stall's later deadline.
    #[tokio::test(start_paused = true)]
    async fn a_tunnel_is_idle_from_its_last_move_once_a_stall_cleared() {
        let quiet = Quiet { idle: Duration::from_secs(2), blocked: Duration::from_secs(6) };
        let started = tokio::time::Instant::now();
        let (mut client, mut origin, task) = relay_between(64, quiet);
        let _client = tokio::spawn(async move {
            let _ = client.write_all(&[b'u'; 4096]).await;
            client
        });
        // The origin takes nothing for 3 s, then all of it.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut got = vec![0u8; 4096];
        origin.read_exact(&mut got).await.unwrap();
        assert_eq!(task.await.unwrap(), End::Idle);
        let took = started.elapsed();
        assert!(took >= Duration::from_secs(5) && took < Duration::from_millis(5500), "{took:?}");
    }

    /// A side whose end reads as the error given: `UnexpectedEof`, what a
    /// TLS session that closed without `close_notify` reads (rustls's), or
    /// `ConnectionReset`, a reset.
    struct EndsIn(DuplexStream, io::ErrorKind);

    impl AsyncRead for EndsIn {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let before = buf.filled().len();
            ready!(Pin::new(&mut self.0).poll_read(cx, buf))?;
            if buf.filled().len() == before && buf.remaining() > 0 {
                return Poll::Ready(Err(self.1.into()));
            }
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for EndsIn {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    impl Side for EndsIn {}

    /// A client whose TLS was truncated before any other failure ends the
    /// relay as `Truncated` (`tunnel_truncated`), also when the download
    /// it no longer reads holds the tunnel until the send timeout (that
    /// one was `Error`; probe 235).
    #[tokio::test(start_paused = true)]
    async fn a_truncation_that_came_first_ends_the_relay_as_one() {
        for stalled in [false, true] {
            let (mut client, c_side) = duplex(64);
            let (mut o_side, mut origin) = duplex(64);
            let task = tokio::spawn(async move {
                Relay::default()
                    .run(&mut EndsIn(c_side, io::ErrorKind::UnexpectedEof), &mut o_side, quiet(5))
                    .await
            });
            client.write_all(b"hi").await.unwrap();
            let mut got = [0u8; 2];
            origin.read_exact(&mut got).await.unwrap();
            if stalled {
                // A download the client takes no more of.
                tokio::spawn(async move {
                    let _ = origin.write_all(&[b'x'; 64 * 1024]).await;
                    origin
                });
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            // The client's end closes: a truncation, read by the relay.
            client.shutdown().await.unwrap();
            let started = tokio::time::Instant::now();
            assert_eq!(task.await.unwrap(), End::Truncated, "stalled: {stalled}");
            let took = started.elapsed();
            assert_eq!(took >= Duration::from_secs(59), stalled, "{took:?}");
            drop(client);
        }
    }

    /// A client that leaves after it ended its own sending (curl: its
    /// `close_notify`, then the close at once, while the origin's last
    /// bytes are on their way), or after it was passed the origin's end
    /// (then resets), closed the tunnel: `ClientLeft`, logged
    /// `tunnel_closed` (both were `tunnel_error`; probe 237). A reset with
    /// nothing ended, one while the client still uploads after the
    /// origin's end (probe 238), and an origin's reset after the client's
    /// end, stay errors.
    #[tokio::test(start_paused = true)]
    async fn a_client_that_leaves_after_an_end_closed_the_tunnel() {
        use io::ErrorKind::ConnectionReset;
        // The client ends its sending, then goes while a download comes.
        let (mut client, mut c_side) = duplex(64);
        let (mut o_side, mut origin) = duplex(64);
        let task =
            tokio::spawn(async move { Relay::default().run(&mut c_side, &mut o_side, quiet(5)).await });
        client.write_all(b"bye").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        origin.read_to_end(&mut got).await.unwrap();
        drop(client);
        let _ = origin.write_all(&[b'x'; 64 * 1024]).await;
        assert_eq!(task.await.unwrap(), End::ClientLeft);

        // The origin's end is passed to the client, which then resets; or
        // goes on uploading, and its reset cuts that.
        for (uploading, end) in [(false, End::ClientLeft), (true, End::Error)] {
            let (mut client, c_side) = duplex(64);
            let (mut o_side, mut origin) = duplex(64);
            let task = tokio::spawn(async move {
                Relay::default().run(&mut EndsIn(c_side, ConnectionReset), &mut o_side, quiet(5)).await
            });
            origin.write_all(b"last").await.unwrap();
            origin.shutdown().await.unwrap();
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"last");
            if uploading {
                client.write_all(b"more").await.unwrap();
                origin.read_exact(&mut [0u8; 4]).await.unwrap();
            }
            drop(client);
            assert_eq!(task.await.unwrap(), end, "uploading: {uploading}");
            drop(origin);
        }

        // A client reset with nothing ended.
        let (client, c_side) = duplex(64);
        let (mut o_side, _origin) = duplex(64);
        let task = tokio::spawn(async move {
            Relay::default().run(&mut EndsIn(c_side, ConnectionReset), &mut o_side, quiet(5)).await
        });
        drop(client);
        assert_eq!(task.await.unwrap(), End::Error);

        // The origin resets after the client's end.
        let (mut client, mut c_side) = duplex(64);
        let (o_side, mut origin) = duplex(64);
        let task = tokio::spawn(async move {
            Relay::default().run(&mut c_side, &mut EndsIn(o_side, ConnectionReset), quiet(5)).await
        });
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        origin.read_to_end(&mut got).await.unwrap();
        drop(origin);
        assert_eq!(task.await.unwrap(), End::Error);
        drop(client);
    }

    #[tokio::test]
    async fn copies_both_ways_with_half_close() {
        let (mut client, mut c_side) = duplex(1024);
        let (mut o_side, mut origin) = duplex(1024);
        let task = tokio::spawn(async move {
            let mut r = Relay::default();
            let end = r.run(&mut c_side, &mut o_side, quiet(5)).await;
            (end, r.up(), r.down())
        });
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        origin.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        origin.write_all(b"bye!").await.unwrap();
        origin.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"bye!");
        assert_eq!(task.await.unwrap(), (End::Closed, 5, 4));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_tunnels_end_and_busy_ones_do_not() {
        let (mut client, _origin, task) = relay_between(1024, quiet(10));
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            client.write_all(b"x").await.unwrap();
        }
        assert!(!task.is_finished(), "activity every 6 s keeps a 10 s idle timer from firing");
        assert_eq!(task.await.unwrap(), End::Idle);
    }

    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    /// Sends `data` and half-closes, while reading everything that comes
    /// back; the task returns what was read.
    fn send_then_read(socket: TcpStream, data: Vec<u8>) -> tokio::task::JoinHandle<Vec<u8>> {
        tokio::spawn(async move {
            let (mut r, mut w) = socket.into_split();
            let ((), got) = tokio::join!(
                async {
                    w.write_all(&data).await.unwrap();
                    w.shutdown().await.unwrap();
                },
                async {
                    let mut got = Vec::new();
                    r.read_to_end(&mut got).await.unwrap();
                    got
                }
            );
            got
        })
    }

    #[tokio::test]
    async fn bulk_between_tcp_sockets_goes_through_splice_intact() {
        let (client, mut c_side) = tcp_pair().await;
        let (mut o_side, origin) = tcp_pair().await;
        let down: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let up: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 241) as u8).collect();
        let origin_task = send_then_read(origin, down.clone());
        let client_task = send_then_read(client, up.clone());
        // Let the socket buffers fill, so the relay's first reads are full
        // ones: the download is bulk from its start.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut relay = Relay::default();
        let end = relay.run_tcp(&mut c_side, &mut o_side, quiet(10)).await;
        assert_eq!(end, End::Closed);
        assert!(client_task.await.unwrap() == down, "download arrives intact");
        assert!(origin_task.await.unwrap() == up, "upload arrives intact");
        assert_eq!((relay.up(), relay.down()), (up.len() as u64, down.len() as u64));
        assert!(relay.spliced().1, "a 3 MiB download moves on to splice(2)");
    }
}
