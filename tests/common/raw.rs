//! A raw-socket HTTP/1.1 client: bytes in, exact bytes out.
//!
//! Used where the wire is the point (exact status lines and headers, keep-alive
//! reuse, `100 Continue`, tunnels). Every read has a generous deadline so that a
//! proxy bug shows up as a clear failure rather than a hung test; the deadline
//! is a guard, never a way to wait for something to happen.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any single read may take before the test fails.
pub const READ_DEADLINE: Duration = Duration::from_secs(15);

/// A client connection that keeps unread bytes between responses.
pub struct RawConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// One parsed response, with the exact bytes it came in.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// Everything read for this response: head and body as framed on the wire.
    pub raw: Vec<u8>,
    /// E.g. `HTTP/1.1 407 Proxy Authentication Required`.
    pub status_line: String,
    pub status: u16,
    /// Header names as sent (case kept), values as sent, in wire order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}):\n{}", self.text()))
    }

    /// The whole response as text (lossy), for failure messages.
    pub fn dump(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }

    /// Headers as `(lower-case name, value)`, sorted by name only (a stable
    /// sort, so several values of one field keep their order).
    pub fn headers_by_name(&self) -> Vec<(String, String)> {
        let mut h: Vec<(String, String)> =
            self.headers.iter().map(|(n, v)| (n.to_ascii_lowercase(), v.clone())).collect();
        h.sort_by(|a, b| a.0.cmp(&b.0));
        h
    }
}

impl RawConn {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream =
            TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
        stream.set_nodelay(true).unwrap();
        RawConn { stream, buf: Vec::new() }
    }

    /// Wraps an already connected stream (e.g. one bound to a chosen source).
    pub fn from_stream(stream: TcpStream) -> RawConn {
        stream.set_nodelay(true).unwrap();
        RawConn { stream, buf: Vec::new() }
    }

    /// The connection itself (bytes read but not consumed are dropped).
    #[allow(dead_code)]
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// Writes all of `bytes`.
    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream.write_all(bytes.as_ref()).await.expect("write to proxy");
    }

    /// Shuts down the write half (sends FIN).
    pub async fn shutdown_write(&mut self) {
        self.stream.shutdown().await.expect("shutdown write");
    }

    /// Reads more bytes into the buffer; returns how many (0 at EOF).
    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(READ_DEADLINE, self.stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no data within {READ_DEADLINE:?}; read so far: {:?}",
                    String::from_utf8_lossy(&self.buf)
                )
            })
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// Takes exactly `n` bytes (panics at EOF).
    pub async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            if self.fill().await == 0 {
                panic!("EOF after {} of {n} bytes: {:?}", self.buf.len(), String::from_utf8_lossy(&self.buf));
            }
        }
        self.buf.drain(..n).collect()
    }

    /// Reads until the peer closes; returns everything not yet consumed.
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        while self.fill().await > 0 {}
        std::mem::take(&mut self.buf)
    }

    /// Whether the peer has closed the connection with nothing more to read.
    pub async fn is_closed(&mut self) -> bool {
        self.buf.is_empty() && self.fill().await == 0
    }

    /// Reads up to and including `\r\n\r\n`; returns those bytes.
    pub async fn read_head_bytes(&mut self) -> Vec<u8> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                return self.buf.drain(..i + 4).collect();
            }
            if self.fill().await == 0 {
                panic!(
                    "connection closed before a complete response head; got {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
            }
        }
    }

    /// Reads one response head (for 1xx, `CONNECT` 2xx and `101`, where no
    /// body follows in HTTP framing).
    pub async fn read_head(&mut self) -> RawResponse {
        let raw = self.read_head_bytes().await;
        parse_head(raw)
    }

    /// Reads one complete response to a request with `method`.
    pub async fn read_response(&mut self, method: &str) -> RawResponse {
        let mut resp = self.read_head().await;
        let no_body = method.eq_ignore_ascii_case("HEAD")
            || (100..200).contains(&resp.status)
            || resp.status == 204
            || resp.status == 304
            || (method.eq_ignore_ascii_case("CONNECT") && (200..300).contains(&resp.status));
        if no_body {
            return resp;
        }
        let chunked =
            resp.header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            loop {
                let line = self.read_line().await;
                resp.raw.extend_from_slice(&line);
                let text = String::from_utf8_lossy(&line);
                let size_text = text.trim_end().split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size_text, 16)
                    .unwrap_or_else(|_| panic!("bad chunk size line {text:?}"));
                if size == 0 {
                    // Trailer section: lines until an empty one.
                    loop {
                        let t = self.read_line().await;
                        resp.raw.extend_from_slice(&t);
                        if t == b"\r\n" {
                            break;
                        }
                    }
                    break;
                }
                let data = self.read_exact(size + 2).await;
                assert_eq!(&data[size..], b"\r\n", "chunk not followed by CRLF");
                resp.body.extend_from_slice(&data[..size]);
                resp.raw.extend_from_slice(&data);
            }
        } else if let Some(len) = resp.header("content-length") {
            let len: usize = len.trim().parse().expect("numeric content-length");
            let data = self.read_exact(len).await;
            resp.body = data.clone();
            resp.raw.extend_from_slice(&data);
        } else {
            let data = self.read_to_end().await;
            resp.body = data.clone();
            resp.raw.extend_from_slice(&data);
        }
        resp
    }

    async fn read_line(&mut self) -> Vec<u8> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                return self.buf.drain(..i + 2).collect();
            }
            if self.fill().await == 0 {
                panic!("EOF inside a chunked body");
            }
        }
    }
}

fn parse_head(raw: Vec<u8>) -> RawResponse {
    let text = String::from_utf8_lossy(&raw).into_owned();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("").to_string();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap_or_else(|| panic!("bad header line {l:?}"));
            (n.to_string(), v.trim().to_string())
        })
        .collect();
    RawResponse { raw, status_line, status, headers, body: Vec::new() }
}

/// Position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A request head: `METHOD TARGET HTTP/1.1`, the given header lines, blank line.
pub fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut s = format!("{method} {target} HTTP/1.1\r\n");
    for (n, v) in headers {
        s.push_str(&format!("{n}: {v}\r\n"));
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// On one connection to `proxy`, with `user`'s credentials: a 4 MB upload
/// to `origin` (a [`super::spawn_sized_origin`]), which makes the proxy read
/// in large pieces; a GET of 8 MB left unread for 500 ms; and pipelined
/// behind it, read by the proxy while that response goes out, a GET of
/// `target` with a 60 KB header field. Checks the first two answers, and
/// returns the third.
pub async fn head_behind_a_large_response(
    proxy: SocketAddr,
    origin: &super::Origin,
    (user, pass): (&str, &str),
    target: &str,
) -> RawResponse {
    let (host, auth) = (origin.authority(), super::basic(user, pass));
    let headers = [("Host", host.as_str()), ("Proxy-Authorization", auth.as_str())];
    let mut c = RawConn::connect(proxy).await;
    let mut upload =
        request("POST", &origin.url("/upload"), &[headers[0], headers[1], ("Content-Length", "4000000")]);
    upload.extend_from_slice(&vec![b'u'; 4_000_000]);
    c.send(upload).await;
    assert_eq!(c.read_response("POST").await.text(), "4000000");
    c.send(request("GET", &origin.url("/big/8000000"), &headers)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let long = "v".repeat(60_000);
    c.send(request("GET", target, &[headers[0], headers[1], ("X-Long", &long)])).await;
    let first = c.read_response("GET").await;
    assert_eq!(first.status, 200, "{}", first.status_line);
    assert_eq!(first.body.len(), 8_000_000, "the large answer arrives whole");
    c.read_response("GET").await
}

/// A GET of `url` with `Host: host` and Basic proxy credentials, as raw bytes.
pub fn get_as(url: &str, host: &str, user: &str, pass: &str) -> Vec<u8> {
    request("GET", url, &[("Host", host), ("Proxy-Authorization", &super::basic(user, pass))])
}

/// `GET path` of `origin` through the proxy on a fresh connection, with
/// the origin's `Host` and `user`'s Basic proxy credentials.
pub async fn get_from(
    proxy: SocketAddr,
    origin: &super::origin::Origin,
    path: &str,
    (user, pass): (&str, &str),
) -> RawResponse {
    let mut c = RawConn::connect(proxy).await;
    c.send(get_as(&origin.url(path), &origin.authority(), user, pass)).await;
    c.read_response("GET").await
}

/// Sends one request on a fresh connection and reads its response.
pub async fn send_one(
    proxy: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> RawResponse {
    let mut c = RawConn::connect(proxy).await;
    c.send(request(method, target, headers)).await;
    c.read_response(method).await
}

/// `GET url` through the proxy with `headers` (add the `Host` yourself).
pub async fn get(proxy: SocketAddr, url: &str, headers: &[(&str, &str)]) -> RawResponse {
    send_one(proxy, "GET", url, headers).await
}

/// Asserts that `resp` is a response authgate made itself: `Proxy-Status`
/// naming authgate with `error=<error>`, and a problem+json body with `code`.
pub fn assert_proxy_error(resp: &RawResponse, status: u16, error: &str, code: &str) {
    assert_eq!(resp.status, status, "status; response:\n{}", resp.dump());
    let ps =
        resp.header("proxy-status").unwrap_or_else(|| panic!("no Proxy-Status header:\n{}", resp.dump()));
    assert!(
        ps.starts_with(&format!("authgate; error={error}")),
        "Proxy-Status {ps:?} should start with `authgate; error={error}`"
    );
    assert_eq!(
        resp.header("content-type"),
        Some("application/problem+json"),
        "content type; response:\n{}",
        resp.dump()
    );
    let json = resp.json();
    assert_eq!(json["code"], code, "problem code; body {json}");
    assert_eq!(json["status"], status, "problem status; body {json}");
    for field in ["type", "title", "detail", "timestamp", "request_id"] {
        assert!(json[field].as_str().is_some_and(|s| !s.is_empty()), "problem body lacks `{field}`: {json}");
    }
    assert_eq!(
        resp.header("x-request-id"),
        json["request_id"].as_str(),
        "x-request-id should match the body's request_id"
    );
    // The type is the code's entry in the README's error catalogue, and no
    // cache keeps an answer about this client's credentials or this moment.
    let anchor = format!("README.md#error-{}", code.replace('_', "-"));
    assert!(
        json["type"].as_str().is_some_and(|t| t.ends_with(&anchor)),
        "type should end with {anchor}: {json}"
    );
    assert_eq!(resp.header("cache-control"), Some("no-store"), "cache-control; response:\n{}", resp.dump());
}
