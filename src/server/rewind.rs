//! A client connection served on after hyper let go of it, with the bytes
//! hyper had read and not used served first.
//!
//! At shutdown hyper closes a connection between requests at once, with
//! what it has read of a next request head (pipelined behind the previous
//! request, or sent while it ran) thrown away: the client's request, which
//! the drain is to serve, got a FIN (probe 182). hyper's own read buffer is
//! the only place that says whether such bytes exist, and it is handed back
//! with the socket (`Parts::read_buf`); a new connection over [`Rewind`]
//! reads them first, then the socket.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::rt::{Read, ReadBufCursor, Write};

/// `inner`, read after `pre`.
pub(crate) struct Rewind<T> {
    pre: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    /// Reads `pre`, then `inner`.
    pub(super) fn new(pre: Bytes, inner: T) -> Self {
        Rewind { pre, inner }
    }

    /// The connection underneath (what is left of `pre` is dropped).
    pub(super) fn into_inner(self) -> T {
        self.inner
    }

    /// What is left of `pre`, and the connection underneath.
    pub(crate) fn into_parts(self) -> (Bytes, T) {
        (self.pre, self.inner)
    }
}

impl<T: Read + Unpin> Read for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            let first = self.pre.split_to(n);
            buf.put_slice(&first);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Rewind<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
