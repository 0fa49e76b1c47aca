//! Origin servers on `127.0.0.1:0`: hyper servers with a handler, the echo
//! origin, canned raw responses, and a TCP "shout" server for tunnels.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{Fnv, pattern_byte};

/// The body type origin handlers answer with.
pub type OriginBody = BoxBody<Bytes, Infallible>;

/// A running origin.
pub struct Origin {
    pub addr: SocketAddr,
    /// Requests (hyper origins) or connections (raw origins) seen so far.
    pub hits: Arc<AtomicUsize>,
}

impl Origin {
    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `127.0.0.1:PORT`.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn bind() -> (std::net::TcpListener, SocketAddr) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind origin");
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

/// A real hyper HTTP/1.1 origin (upgrades enabled) calling `handler` for
/// every request. Must be called inside a tokio runtime.
pub fn spawn_origin<H, F>(handler: H) -> Origin
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<OriginBody>> + Send + 'static,
{
    spawn_origin_on_listener(bind().0, handler)
}

/// [`spawn_origin`] on a listener bound by the caller; `hits` counts
/// requests.
pub fn spawn_origin_on_listener<H, F>(l: std::net::TcpListener, handler: H) -> Origin
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<OriginBody>> + Send + 'static,
{
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        let listener = TcpListener::from_std(l).unwrap();
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ =
                    http1::Builder::new().serve_connection(TokioIo::new(stream), svc).with_upgrades().await;
            });
        }
    });
    Origin { addr, hits }
}

/// A body made of `bytes`, sent with `Content-Length`.
pub fn full(bytes: impl Into<Bytes>) -> OriginBody {
    Full::new(bytes.into()).boxed()
}

/// An empty body.
pub fn empty() -> OriginBody {
    full(Bytes::new())
}

/// A body of several frames and no known length, so hyper sends it chunked.
pub fn chunked(parts: &[&[u8]]) -> OriginBody {
    Frames { parts: parts.iter().rev().map(|p| Bytes::copy_from_slice(p)).collect() }.boxed()
}

struct Frames {
    /// Reversed: popped from the end.
    parts: Vec<Bytes>,
}

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.parts.pop().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.parts.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// `len` bytes of the test pattern, generated 64 KiB at a time (never held
/// whole). With `exact` it announces its length (→ `Content-Length`);
/// without, hyper sends it chunked.
pub struct PatternBody {
    pub sent: u64,
    pub len: u64,
    pub exact: bool,
}

impl PatternBody {
    pub fn new(len: u64, exact: bool) -> Self {
        PatternBody { sent: 0, len, exact }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent >= self.len {
            return Poll::Ready(None);
        }
        let n = (self.len - self.sent).min(64 * 1024);
        let chunk: Vec<u8> = (self.sent..self.sent + n).map(pattern_byte).collect();
        self.sent += n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent >= self.len
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact { SizeHint::with_exact(self.len - self.sent) } else { SizeHint::default() }
    }
}

/// What the echo origin received: the request line, the header lines (names
/// as hyper reports them: lower case), and the body.
#[derive(Debug, Clone)]
pub struct Echoed {
    pub request_line: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Echoed {
    /// Parses an echo origin's response body.
    pub fn parse(bytes: &[u8]) -> Echoed {
        let split = super::find(bytes, b"\r\n\r\n")
            .unwrap_or_else(|| panic!("not an echo body: {:?}", String::from_utf8_lossy(bytes)));
        let head = String::from_utf8_lossy(&bytes[..split]).into_owned();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or("").to_string();
        let headers = lines
            .map(|l| {
                let (n, v) = l.split_once(": ").unwrap_or((l, ""));
                (n.to_string(), v.to_string())
            })
            .collect();
        Echoed { request_line, headers, body: bytes[split + 4..].to_vec() }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }

    pub fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
}

/// An origin that answers 200 with what it received: `METHOD URI VERSION`,
/// one `name: value` line per header, a blank line, then the request body.
pub fn spawn_echo_origin() -> Origin {
    spawn_origin(|req: Request<Incoming>| async move {
        let (parts, body) = req.into_parts();
        let mut out = format!("{} {} {:?}\r\n", parts.method, parts.uri, parts.version);
        for (n, v) in &parts.headers {
            out.push_str(&format!("{}: {}\r\n", n, String::from_utf8_lossy(v.as_bytes())));
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        match body.collect().await {
            Ok(b) => out.extend_from_slice(&b.to_bytes()),
            Err(e) => {
                return Response::builder()
                    .status(500)
                    .body(full(format!("origin could not read the body: {e}")))
                    .unwrap();
            }
        }
        Response::builder().header("content-type", "text/plain").body(full(out)).unwrap()
    })
}

/// An origin that answers a POST with the length of its body, and a GET of
/// `/big/N` with N bytes (2 for any other path).
pub fn spawn_sized_origin() -> Origin {
    spawn_origin(|req: Request<Incoming>| async move {
        if req.method() == hyper::Method::POST {
            let got = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
            return Response::new(full(got.to_string()));
        }
        let len = req.uri().path().trim_start_matches("/big/").parse().unwrap_or(2);
        Response::new(full(vec![b'b'; len]))
    })
}

/// An origin that streams the request body through FNV and answers
/// `"<length> <fnv hex>"`.
pub fn spawn_checksum_origin() -> Origin {
    spawn_origin(|req: Request<Incoming>| async move {
        let mut body = req.into_body();
        let mut fnv = Fnv::default();
        let mut len = 0u64;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Some(d) = f.data_ref() {
                        fnv.update(d);
                        len += d.len() as u64;
                    }
                }
                Err(e) => {
                    return Response::builder()
                        .status(500)
                        .body(full(format!("body broke off: {e}")))
                        .unwrap();
                }
            }
        }
        Response::new(full(format!("{len} {:016x}", fnv.0)))
    })
}

/// A raw TCP origin: `handler` gets every accepted connection.
pub fn spawn_raw_origin<H, F>(handler: H) -> Origin
where
    H: Fn(TcpStream) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let (l, addr) = bind();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        let listener = TcpListener::from_std(l).unwrap();
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(handler(stream));
        }
    });
    Origin { addr, hits }
}

/// A raw origin that answers every request head it reads (requests without
/// a body) with exactly `response`, keeping the connection open. The heads
/// it received are pushed to `seen`.
pub fn spawn_canned_origin(response: &'static [u8], seen: Arc<Mutex<Vec<String>>>) -> Origin {
    spawn_raw_origin(move |mut stream: TcpStream| {
        let seen = seen.clone();
        async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            loop {
                while let Some(i) = super::find(&buf, b"\r\n\r\n") {
                    let head: Vec<u8> = buf.drain(..i + 4).collect();
                    seen.lock().unwrap().push(String::from_utf8_lossy(&head).into_owned());
                    if stream.write_all(response).await.is_err() {
                        return;
                    }
                }
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        }
    })
}

/// A TCP server for tunnels: echoes every chunk upper-cased; when the client
/// shuts down its write side, sends `BYE\n` and closes.
pub fn spawn_shout_origin() -> Origin {
    spawn_raw_origin(|mut stream: TcpStream| async move {
        let mut chunk = [0u8; 8192];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) => {
                    let _ = stream.write_all(b"BYE\n").await;
                    let _ = stream.shutdown().await;
                    return;
                }
                Ok(n) => {
                    let up = chunk[..n].to_ascii_uppercase();
                    if stream.write_all(&up).await.is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    })
}

/// An origin that reads request heads and never answers; it reports each
/// head it received, and the end of each connection to it.
pub struct SilentOrigin {
    pub origin: Origin,
    /// One message per complete request head received.
    pub heads: tokio::sync::mpsc::UnboundedReceiver<()>,
    /// One message per connection the proxy closed.
    pub closed: tokio::sync::mpsc::UnboundedReceiver<()>,
}

/// Starts a [`SilentOrigin`].
pub fn spawn_silent_origin() -> SilentOrigin {
    let (head_tx, heads) = tokio::sync::mpsc::unbounded_channel();
    let (closed_tx, closed) = tokio::sync::mpsc::unbounded_channel();
    let origin = spawn_raw_origin(move |mut stream: TcpStream| {
        let (head_tx, closed_tx) = (head_tx.clone(), closed_tx.clone());
        async move {
            let mut seen = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = stream.read(&mut chunk).await {
                seen.extend_from_slice(&chunk[..n]);
                if super::find(&seen, b"\r\n\r\n").is_some() {
                    let _ = head_tx.send(());
                    seen.clear();
                }
            }
            let _ = closed_tx.send(());
        }
    });
    SilentOrigin { origin, heads, closed }
}

impl SilentOrigin {
    /// Waits (at most the raw client's read deadline) for the next head.
    pub async fn next_head(&mut self) {
        let got = tokio::time::timeout(super::READ_DEADLINE, self.heads.recv()).await;
        assert!(matches!(got, Ok(Some(()))), "no request reached the origin");
    }

    /// Waits (at most the raw client's read deadline) for a connection to end.
    pub async fn next_close(&mut self) {
        let got = tokio::time::timeout(super::READ_DEADLINE, self.closed.recv()).await;
        assert!(matches!(got, Ok(Some(()))), "the proxy's connection to the origin stayed open");
    }
}

/// Reads a request head from a raw origin's connection, byte by byte (so
/// nothing after it is consumed); `None` if the connection ends first.
pub async fn read_request_head(s: &mut TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.ok()?;
        head.push(byte[0]);
    }
    Some(head)
}
