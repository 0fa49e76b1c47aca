//! Tunnels that carry one stream each, without a length (what a FIN ends),
//! to see how each reader learns that authgate cut them.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Origin, RawConn, basic, request, spawn_raw_origin};

/// How a reader saw its stream end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// A FIN: the stream ended whole, for all the reader can tell.
    Fin,
    /// A reset: the stream was cut.
    Reset,
    /// Another error.
    Failed(std::io::ErrorKind),
}

/// Reads `stream` to its end, after `pause` without reading.
async fn read_until_end(stream: &mut (impl AsyncRead + Unpin), pause: Duration) -> StreamEnd {
    tokio::time::sleep(pause).await;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => return StreamEnd::Fin,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return StreamEnd::Reset,
            Err(e) => return StreamEnd::Failed(e.kind()),
        }
    }
}

/// Writes to `stream` until a write fails.
async fn write_until_refused(stream: &mut (impl AsyncWrite + Unpin)) {
    let chunk = vec![b's'; 16 * 1024];
    while stream.write_all(&chunk).await.is_ok() {}
}

/// A download and an upload, each in a tunnel of its own, both as one user.
pub struct OneWayTunnels {
    /// How the client saw the download end.
    download: JoinHandle<StreamEnd>,
    /// How the origin saw the upload end.
    upload: mpsc::UnboundedReceiver<StreamEnd>,
    _writer: JoinHandle<()>,
    _origin: Origin,
}

impl OneWayTunnels {
    /// Opens both tunnels through `proxy` as `user`: the origin sends on the
    /// first until it cannot, the client on the second. Each reader waits
    /// `pause` before it reads (a stalled reader, for `send_timeout`).
    pub async fn open(proxy: SocketAddr, (user, pass): (&str, &str), pause: Duration) -> OneWayTunnels {
        let (tx, upload) = mpsc::unbounded_channel();
        let origin = spawn_raw_origin(move |mut s: TcpStream| {
            let tx = tx.clone();
            async move {
                let mut way = [0u8; 1];
                if s.read_exact(&mut way).await.is_err() {
                    return;
                }
                if way[0] == b'd' {
                    write_until_refused(&mut s).await;
                } else {
                    let _ = tx.send(read_until_end(&mut s, pause).await);
                }
            }
        });
        let auth = basic(user, pass);
        let mut tunnels = Vec::new();
        for way in [b"d", b"u"] {
            let mut c = RawConn::connect(proxy).await;
            let target = origin.authority();
            c.send(request("CONNECT", &target, &[("Host", &target), ("Proxy-Authorization", &auth)])).await;
            assert_eq!(c.read_head().await.status, 200);
            c.send(way).await;
            tunnels.push(c.into_stream());
        }
        let (mut up, mut down) = (tunnels.pop().unwrap(), tunnels.pop().unwrap());
        let download = tokio::spawn(async move { read_until_end(&mut down, pause).await });
        let _writer = tokio::spawn(async move { write_until_refused(&mut up).await });
        OneWayTunnels { download, upload, _writer, _origin: origin }
    }

    /// How the client saw the download end and the origin the upload.
    pub async fn ends(mut self) -> (StreamEnd, StreamEnd) {
        let download = tokio::time::timeout(super::READ_DEADLINE, self.download).await;
        let upload = tokio::time::timeout(super::READ_DEADLINE, self.upload.recv()).await;
        (download.expect("the download went on").unwrap(), upload.expect("the upload went on").unwrap())
    }
}
