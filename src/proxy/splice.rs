//! Zero-copy moving of tunnel bytes between two TCP sockets with Linux
//! `splice(2)`: socket → pipe → socket, the data never enters user space.
//!
//! A bulk download through a copying relay costs two copies per byte (kernel
//! to user and back) plus a syscall per 64 KiB each way; with splice the
//! kernel hands the socket's pages to the pipe and on to the other socket.
//! The relay switches a direction to a pipe only once it has seen bulk data
//! (see `relay.rs`), so idle and interactive tunnels hold no pipe fds.
//!
//! Readiness comes from tokio's registration of the sockets; the pipe itself
//! is never polled: it is filled only when empty, so it can neither be full
//! when filled nor empty when drained.

use std::io;
use std::os::fd::OwnedFd;
use std::task::{Context, Poll, ready};

use rustix::pipe::{PipeFlags, SpliceFlags, fcntl_getpipe_size, fcntl_setpipe_size, pipe_with, splice};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Pipe capacity asked for: four times Linux's 64 KiB default, for a quarter
/// of the syscalls on bulk transfers. Within the unprivileged limit
/// (`/proc/sys/fs/pipe-max-size`, 1 MiB by default); if refused, the default
/// capacity is kept.
const PIPE_SIZE: usize = 256 * 1024;

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
    /// Opens a pipe (two fds).
    ///
    /// # Errors
    /// When the process is out of file descriptors; the caller keeps copying.
    pub fn new() -> io::Result<Pipe> {
        let (read, write) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
        let capacity = fcntl_setpipe_size(&write, PIPE_SIZE).or_else(|_| fcntl_getpipe_size(&write))?;
        Ok(Pipe { read, write, pending: 0, capacity })
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
            let moved = from.try_io(Interest::READABLE, || {
                splice(from, None, &self.write, None, room, FLAGS).map_err(io::Error::from)
            });
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
