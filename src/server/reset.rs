//! Ending a client connection with a reset (`SO_LINGER` 0) after a
//! close-delimited response that broke off (see
//! [`Phase::open_ended`](super::guard::Phase::open_ended)): to an HTTP/1.0
//! client a FIN would mark the body's end.
//!
//! A reset also throws away what the kernel still holds for the client, so
//! it waits until all of that has gone out: a whole response pipelined ahead
//! of the cut one reaches a slow reader in full (it lost its last 100 KB or
//! more when the reset came at once), and so does what of the cut one had
//! reached the kernel. What hyper still held of it is lost with the
//! connection (`bytes_down` counts it: the README says so), which costs a
//! response that is incomplete whatever arrives. The receiver reads what
//! reached it before the reset.

use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, poll};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::records::Records;

/// A client socket that can be closed with a reset.
pub(super) trait Resettable {
    /// The TCP socket underneath.
    fn tcp(&self) -> &TcpStream;

    /// Before a close that is not a reset: on TLS, a `close_notify` alert,
    /// written if the socket takes it at once (RFC 8446 §6.1: each party
    /// sends one before closing, unless it sent an error alert). hyper
    /// sends one when it closes a connection itself, not when the
    /// connection ends in an error, as when a client's own `close_notify`
    /// cut its request: the client could not tell the close from a
    /// truncation (probe 157).
    fn close_notify(&mut self) {}

    /// On TLS, whether a record has begun to arrive and is not yet whole
    /// (see `server::records`).
    fn record_begun(&self) -> Option<Arc<AtomicBool>> {
        None
    }
}

impl Resettable for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Resettable for Box<tokio_rustls::server::TlsStream<Records>> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0.tcp()
    }

    fn record_begun(&self) -> Option<Arc<AtomicBool>> {
        Some(self.get_ref().0.begun())
    }

    fn close_notify(&mut self) {
        let (tcp, tls) = self.get_mut();
        tls.send_close_notify();
        // Without waiting: a client that reads nothing does not hold the
        // close (24 bytes, which an open socket takes).
        while tls.wants_write() {
            if !matches!(tls.write_tls(&mut NoWait(tcp.tcp())), Ok(n) if n > 0) {
                return;
            }
        }
    }
}

/// Writes to a socket what it takes at once.
struct NoWait<'a>(&'a TcpStream);

impl io::Write for NoWait<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How often the wait looks again when no readiness event came: the kernel
/// signals writability under `TCP_NOTSENT_LOWAT` on acknowledgements, and a
/// missed one must not hold the close until `within`.
const LOOK_AGAIN: Duration = Duration::from_millis(100);

/// Makes the close of `socket` a reset, once the kernel has sent everything
/// it holds for the client, or after `within` (a client that reads nothing
/// more: `send_timeout`; zero: at once), or at once when `kill` is
/// cancelled (shutdown's grace is over).
pub(super) async fn reset_once_sent(socket: &impl Resettable, within: Duration, kill: &CancellationToken) {
    let tcp = socket.tcp();
    if within.is_zero() {
        let _ = tcp.set_zero_linger();
        return;
    }
    // With a low-water mark of 1 byte, the socket is writable only when no
    // byte is left unsent.
    if socket2::SockRef::from(tcp).set_tcp_notsent_lowat(1).is_ok() {
        let sent = async {
            loop {
                // Readiness tokio saw before the mark was set says nothing:
                // cleared first, so an event after the look below counts.
                let _ = tcp.try_io(Interest::WRITABLE, || Err::<(), _>(io::ErrorKind::WouldBlock.into()));
                if all_sent(tcp) {
                    return;
                }
                let _ = tokio::time::timeout(LOOK_AGAIN, tcp.writable()).await;
            }
        };
        tokio::select! {
            _ = tokio::time::timeout(within, sent) => {}
            _ = kill.cancelled() => {}
        }
    }
    let _ = tcp.set_zero_linger();
}

/// Whether `tcp` has nothing left unsent (under `TCP_NOTSENT_LOWAT` 1), or
/// has failed: a socket in error has nothing more to wait for.
fn all_sent(tcp: &TcpStream) -> bool {
    let mut fds = [PollFd::new(tcp, PollFlags::OUT)];
    match poll(&mut fds, Some(&rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 })) {
        Ok(_) => !fds[0].revents().intersection(PollFlags::OUT | PollFlags::ERR | PollFlags::HUP).is_empty(),
        Err(_) => true,
    }
}
