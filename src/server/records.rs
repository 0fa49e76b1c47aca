//! A TLS listener's client socket, with the TLS records that come through
//! it followed: whether one has begun to arrive and is not yet whole.
//!
//! Above rustls, the connection's guard sees decrypted bytes only, and a
//! record gives none until its last byte is in. A client that dripped the
//! first record of a request head one byte at a time was timed as an idle
//! connection (`idle_timeout`), not as a head being read
//! (`header_read_timeout`): a slowloris held its connection for two
//! minutes where a plain listener's closes it in 30 s (probe 340). With
//! [`Records::begun`] the guard sees such a record begin (see
//! `Guarded::watch_records`).
//!
//! Only the 5-byte record headers are looked at, to know where each record
//! ends (RFC 8446 §5.1, the same framing in TLS 1.2): the bytes are passed
//! on as they came, and rustls alone judges them.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Bytes in a TLS record's header: type, version, length.
const HEADER: u8 = 5;

/// A client's TCP socket under TLS, reporting whether a record is partly
/// read (see the module's doc).
#[derive(Debug)]
pub struct Records {
    tcp: TcpStream,
    /// Where the reads stand in the record stream.
    at: Position,
    /// Whether a record has begun and not ended, for the guard.
    begun: Arc<AtomicBool>,
}

/// Where the bytes read so far end, in the record stream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Position {
    /// Bytes of the current record's header read (0 between records).
    header: u8,
    /// The high byte of its length, once read.
    len_high: u8,
    /// Bytes of its body still to come.
    body_left: usize,
}

impl Position {
    /// Where the stream stands after `bytes` more.
    fn after(mut self, mut bytes: &[u8]) -> Self {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(bytes.len());
                self.body_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            match self.header {
                3 => self.len_high = bytes[0],
                4 => self.body_left = usize::from(u16::from_be_bytes([self.len_high, bytes[0]])),
                _ => {}
            }
            self.header = (self.header + 1) % HEADER;
            bytes = &bytes[1..];
        }
        self
    }

    /// Whether a record has begun and not ended.
    fn midway(self) -> bool {
        self.header != 0 || self.body_left != 0
    }
}

impl Records {
    /// Follows the records read from `tcp`, from its first byte.
    pub fn new(tcp: TcpStream) -> Self {
        Records { tcp, at: Position::default(), begun: Arc::default() }
    }

    /// The socket.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// True while a record has begun to arrive and is not yet whole; kept
    /// up to date by each read.
    pub fn begun(&self) -> Arc<AtomicBool> {
        self.begun.clone()
    }
}

impl AsyncRead for Records {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.tcp).poll_read(cx, buf))?;
        let at = this.at.after(&buf.filled()[before..]);
        if at.midway() != this.at.midway() {
            this.begun.store(at.midway(), Ordering::Release);
        }
        this.at = at;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Records {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every split of a stream of records into reads, one byte at a time
    /// included, gives the same positions at the same offsets.
    #[test]
    fn a_record_is_midway_from_its_first_byte_to_its_last() {
        // Two records (application data of 3 bytes, then an empty one),
        // then the header of a third, cut short.
        let stream = [23, 3, 3, 0, 3, b'a', b'b', b'c', 23, 3, 3, 0, 0, 22, 3, 3, 1];
        let whole_at = [8, 13];
        for split in 1..stream.len() {
            let mut at = Position::default();
            let mut offset = 0;
            for chunk in stream.chunks(split) {
                at = at.after(chunk);
                offset += chunk.len();
                let expected = !whole_at.contains(&offset);
                assert_eq!(at.midway(), expected, "reads of {split}, at {offset}");
            }
        }
        // A record of the largest length: midway until its 65,535th byte.
        let at = Position::default().after(&[23, 3, 3, 0xff, 0xff]);
        assert!(at.after(&vec![0; 65_534]).midway());
        assert!(!at.after(&vec![0; 65_535]).midway());
    }
}
