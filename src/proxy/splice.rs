//! Zero-copy moving of tunnel bytes between two TCP sockets with Linux
//! `splice(2)`: socket → pipe → socket, the data never enters user space.
//!
//! A bulk download through a copying relay costs two copies per byte (kernel
//! to user and back) plus a syscall per 64 KiB each way; with splice the
//! kernel hands the socket's pages to the pipe and on to the other socket.
//! The relay switches a direction to a pipe only once it has seen bulk data
//! (see `relay.rs`), so interactive tunnels, and idle ones that never
//! carried bulk data, hold no pipe fds. A direction keeps its pipe once it
//! has one, until the tunnel ends (the README says so), unless its socket
//! sends TCP urgent data, which splice cannot pass (see `fill`): from there
//! it copies.
//!
//! Readiness comes from tokio's registration of the sockets; the pipe itself
//! is never polled: it is filled only when empty, so it can neither be full
//! when filled nor empty when drained.

use std::io;
use std::os::fd::OwnedFd;
use std::task::{Context, Poll, ready};

use rustix::io::Errno;
use rustix::pipe::{PipeFlags, SpliceFlags, fcntl_getpipe_size, fcntl_setpipe_size, pipe_with, splice};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Pipe capacities tried, largest first. 1 MiB (Linux's unprivileged
/// maximum, `/proc/sys/fs/pipe-max-size`) measured best in scenario c of the
/// shared benchmark: 0.83x direct and 0.34 CPU-s per GiB, against 0.76x and
/// 0.42 with 256 KiB in the same run. A non-root user's pipes share
/// `fs.pipe-user-pages-soft` (64 MiB by default); past it the kernel refuses
/// large pipes, so smaller ones are tried.
const PIPE_SIZES: [usize; 3] = [1024 * 1024, 256 * 1024, 64 * 1024];

/// Below this capacity a pipe is slower than the relay's own 64 KiB copy
/// buffer, so it is not used.
const MIN_PIPE: usize = 64 * 1024;

const FLAGS: SpliceFlags = SpliceFlags::MOVE.union(SpliceFlags::NONBLOCK);

/// A non-blocking pipe carrying one direction of a tunnel.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes in the pipe, not yet passed on.
    pending: usize,
    capacity: usize,
}

impl Pipe {
    /// Opens a pipe (two fds) as large as the kernel allows, up to 1 MiB.
    ///
    /// # Errors
    /// When the process is out of file descriptors, or the kernel gives no
    /// pipe of at least 64 KiB; the caller keeps copying.
    pub fn new() -> io::Result<Pipe> {
        let (read, write) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
        let set = PIPE_SIZES.iter().find_map(|&size| fcntl_setpipe_size(&write, size).ok());
        let capacity = match set {
            Some(c) => c,
            None => fcntl_getpipe_size(&write)?,
        };
        if capacity < MIN_PIPE {
            return Err(io::Error::other("pipe smaller than the copy buffer"));
        }
        Ok(Pipe { read, write, pending: 0, capacity })
    }

    /// Whether `e`, from [`Pipe::poll_fill`], says splice cannot carry this
    /// socket's bytes: not at all (a seccomp filter, an exotic socket), or
    /// not from here on (TCP urgent data, see `fill`). The pipe is empty
    /// whenever it is filled, so no byte is lost: the caller can go back to
    /// copying.
    pub fn copy_instead(e: &io::Error) -> bool {
        Errno::from_io_error(e)
            .is_some_and(|n| [Errno::INVAL, Errno::NOSYS, Errno::PERM, Errno::OPNOTSUPP].contains(&n))
            || e.get_ref().is_some_and(|inner| inner.is::<AtUrgentMark>())
    }

    /// The error that comes after the bytes still readable, when `e` (see
    /// [`Pipe::copy_instead`]) was told at an urgent byte: the copying that
    /// reads those bytes then sees the stream end, the error having been
    /// taken by splice (a reset logged `tunnel_closed`; probe 399).
    pub fn error_after(e: &io::Error) -> Option<io::Error> {
        let mark = e.get_ref()?.downcast_ref::<AtUrgentMark>()?;
        mark.then.map(io::Error::from)
    }

    /// Whether everything taken in has been passed on.
    pub fn is_empty(&self) -> bool {
        self.pending == 0
    }

    /// Moves what `from` has received into the (empty) pipe; `Ok(0)` is the
    /// end of `from`'s stream.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>, from: &TcpStream) -> Poll<io::Result<usize>> {
        let room = self.capacity - self.pending;
        loop {
            ready!(from.poll_read_ready(cx))?;
            let moved = from.try_io(Interest::READABLE, || fill(from, &self.write, room));
            match moved {
                Ok(n) => {
                    self.pending += n;
                    return Poll::Ready(Ok(n));
                }
                // Readiness was stale; tokio cleared it, so the next poll waits.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Passes pipe contents on to `to`; returns how many bytes went.
    pub fn poll_drain(&mut self, cx: &mut Context<'_>, to: &TcpStream) -> Poll<io::Result<usize>> {
        loop {
            ready!(to.poll_write_ready(cx))?;
            let moved = to.try_io(Interest::WRITABLE, || {
                splice(&self.read, None, to, None, self.pending, FLAGS).map_err(io::Error::from)
            });
            match moved {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.pending -= n;
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// The reading socket stands at TCP urgent data, which splice cannot pass;
/// with the error splice told there, which the bytes behind the urgent byte
/// come before (see `fill`).
#[derive(Debug, Default)]
struct AtUrgentMark {
    then: Option<Errno>,
}

impl std::fmt::Display for AtUrgentMark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TCP urgent data: splice cannot read past it")
    }
}

impl std::error::Error for AtUrgentMark {}

/// One splice from `from` into the pipe, at most `room` bytes.
///
/// splice(2) stops in front of TCP urgent data (`MSG_OOB`, as telnet and
/// FTP send it): unlike recv(2) it never steps over the urgent byte, so it
/// says `EAGAIN`, or `0` once the peer's FIN has come, with bytes still
/// queued behind it. Taken at its word, a tunnel then stalled, or passed a
/// FIN on and lost the rest of the stream as if it had ended (probe 210).
/// So when splice moves nothing while recv(2) would read something (a peek,
/// before a second try that takes any bytes that came in between), the
/// direction goes back to copying ([`AtUrgentMark`]): recv(2) reads past
/// the urgent byte, dropping it as any reader that does not ask for it
/// does. (`FIONREAD` cannot tell: it counts only the bytes before the mark.)
fn fill(from: &TcpStream, pipe: &OwnedFd, room: usize) -> io::Result<usize> {
    let first = splice(from, None, pipe, None, room, FLAGS);
    if let Ok(moved @ 1..) = first {
        return Ok(moved);
    }
    match (first, readable(from)) {
        // A reset that came after an urgent byte is told by splice at the
        // byte, with bytes behind it that recv(2) still reads: copying
        // reads them before the error (they were read in the close's drain
        // and thrown away; probe 398).
        (Err(e), true) if e != Errno::AGAIN => Err(io::Error::other(AtUrgentMark { then: Some(e) })),
        (Ok(_), false) => end(from, pipe),
        (Err(e), false) => Err(e.into()),
        (_, true) => match splice(from, None, pipe, None, room, FLAGS) {
            Ok(0) | Err(Errno::AGAIN) => Err(io::Error::other(AtUrgentMark::default())),
            again => again.map_err(io::Error::from),
        },
    }
}

/// splice(2) says `from` has ended and a peek sees nothing before the end:
/// read it as recv(2) reads, which steps over an urgent byte right before
/// the peer's FIN. Left unread there, that byte made the close of the
/// socket a reset, which threw away what the peer had not yet received of
/// the other direction (probe 395: a client that sent an urgent byte, then
/// its FIN, then read a 4 MB download lost up to 172 KB of it, and the
/// tunnel was logged as closed with all of it). `Ok(0)` at the end; a byte
/// read (none can come after a FIN, but none is lost) goes into the empty
/// pipe.
fn end(from: &TcpStream, pipe: &OwnedFd) -> io::Result<usize> {
    let mut byte = [0u8; 1];
    match std::io::Read::read(&mut &*socket2::SockRef::from(from), &mut byte)? {
        0 => Ok(0),
        _ => Ok(rustix::io::write(pipe, &byte)?),
    }
}

/// Whether recv(2) would return a byte of `socket` now.
fn readable(socket: &TcpStream) -> bool {
    let mut byte = [std::mem::MaybeUninit::uninit()];
    socket2::SockRef::from(socket).peek(&mut byte).is_ok_and(|n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_errors_that_rule_splice_out_fall_back_to_copying() {
        for errno in [Errno::INVAL, Errno::NOSYS, Errno::PERM, Errno::OPNOTSUPP] {
            assert!(Pipe::copy_instead(&io::Error::from_raw_os_error(errno.raw_os_error())));
        }
        assert!(Pipe::copy_instead(&io::Error::other(AtUrgentMark::default())));
        let reset = io::Error::other(AtUrgentMark { then: Some(Errno::CONNRESET) });
        assert!(Pipe::copy_instead(&reset));
        assert_eq!(Pipe::error_after(&reset).map(|e| e.kind()), Some(io::ErrorKind::ConnectionReset));
        assert!(Pipe::error_after(&io::Error::other(AtUrgentMark::default())).is_none());
        for errno in [Errno::CONNRESET, Errno::PIPE, Errno::AGAIN] {
            assert!(!Pipe::copy_instead(&io::Error::from_raw_os_error(errno.raw_os_error())));
        }
        assert!(!Pipe::copy_instead(&io::Error::other("something else")));
    }
}
