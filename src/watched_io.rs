//! A socket whose writes, and reads that bring bytes, are reported to an
//! observer: the one way the admin port's send deadline and the upstream
//! pool's write record (and its note that an origin answered, for the
//! retry rule) see a socket, instead of two copies of the same delegation.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Sees the result of every write, flush and shutdown of a [`Watched`]
/// socket, and decides what the caller gets: the result itself, or
/// another (an error once a write has been blocked too long); and, if it
/// wants, each read that brought bytes.
pub trait IoObserver: Unpin {
    /// A read brought bytes into a buffer that had room for `offered`;
    /// nothing by default.
    fn read_some(&mut self, _offered: usize) {}

    /// A write (plain or vectored) of `offered` bytes returned `res`.
    fn write(
        &mut self,
        cx: &mut Context<'_>,
        offered: usize,
        res: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>>;

    /// A flush returned `res`.
    fn flush(&mut self, cx: &mut Context<'_>, res: Poll<io::Result<()>>) -> Poll<io::Result<()>>;

    /// A shutdown returned `res`; passed on unseen unless overridden.
    fn shutdown(&mut self, _cx: &mut Context<'_>, res: Poll<io::Result<()>>) -> Poll<io::Result<()>> {
        res
    }
}

/// `io`, with its writes reported to `observer`, and its reads that
/// brought bytes.
pub struct Watched<IO, O> {
    /// The socket.
    pub io: IO,
    /// What sees its writes.
    pub observer: O,
}

impl<IO: AsyncRead + Unpin, O: IoObserver> AsyncRead for Watched<IO, O> {
    // Inlined, as the plain delegation it replaced was: a call per read
    // cost 0.1k instructions a request.
    #[inline]
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let (before, offered) = (buf.filled().len(), buf.remaining());
        let res = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.observer.read_some(offered);
        }
        res
    }
}

impl<IO: AsyncWrite + Unpin, O: IoObserver> AsyncWrite for Watched<IO, O> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.io).poll_write(cx, buf);
        this.observer.write(cx, buf.len(), res)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.observer.write(cx, bufs.iter().map(|b| b.len()).sum(), res)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.io).poll_flush(cx);
        this.observer.flush(cx, res)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.io).poll_shutdown(cx);
        this.observer.shutdown(cx, res)
    }
}
