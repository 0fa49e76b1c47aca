//! Bodies stream both ways intact: chunked, large, bodiless responses,
//! `Expect: 100-continue`, and an HTTP upgrade carried across.

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;

const USER: (&str, &str) = ("alice", "alice-pw");
const LARGE: u64 = 20 * 1024 * 1024;

fn auth() -> String {
    basic(USER.0, USER.1)
}

/// Sends `req` to the proxy over a fresh hyper client connection.
async fn via_hyper<B>(proxy: SocketAddr, req: Request<B>) -> Response<Incoming>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    tx.send_request(req).await.expect("response from the proxy")
}

#[tokio::test]
async fn chunked_request_body_reaches_the_origin_intact() {
    let origin = spawn_echo_origin();
    let proxy = spawn_proxy("", &[USER]);
    let host = origin.authority();
    let auth = auth();
    let mut req = request(
        "POST",
        &origin.url("/chunked"),
        &[("Host", &host), ("Proxy-Authorization", &auth), ("Transfer-Encoding", "chunked")],
    );
    req.extend_from_slice(b"5\r\nhello\r\n7\r\n, world\r\n1;ext=1\r\n!\r\n0\r\n\r\n");
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(req).await;
    let resp = conn.read_response("POST").await;
    assert_eq!(resp.status, 200, "{}", resp.dump());
    let seen = Echoed::parse(&resp.body);
    assert_eq!(seen.request_line, "POST /chunked HTTP/1.1");
    assert_eq!(String::from_utf8_lossy(&seen.body), "hello, world!");
}

#[tokio::test]
async fn chunked_response_body_reaches_the_client_intact() {
    let origin = spawn_origin(|_req: Request<Incoming>| async {
        Response::new(chunked(&[b"first,", b"second,", b"", b"third"]))
    });
    let proxy = spawn_proxy("", &[USER]);
    let host = origin.authority();
    let auth = auth();
    let resp = get(proxy.addr, &origin.url("/"), &[("Host", &host), ("Proxy-Authorization", &auth)]).await;
    assert_eq!(resp.status, 200, "{}", resp.dump());
    assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
    assert!(resp.header("content-length").is_none());
    assert_eq!(resp.text(), "first,second,third");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_streams_through_with_matching_checksum() {
    let origin = spawn_checksum_origin();
    let proxy = spawn_proxy("", &[USER]);
    let req = Request::post(origin.url("/upload"))
        .header("host", origin.authority())
        .header("proxy-authorization", auth())
        .body(PatternBody::new(LARGE, true))
        .unwrap();
    let resp = via_hyper(proxy.addr, req).await;
    assert_eq!(resp.status(), 200);
    let got = resp.into_body().collect().await.unwrap().to_bytes();
    let mut want = Fnv::default();
    for start in (0..LARGE).step_by(1 << 20) {
        want.update(&pattern(start, 1 << 20));
    }
    assert_eq!(
        String::from_utf8_lossy(&got),
        format!("{LARGE} {:016x}", want.0),
        "origin got a different body (length checksum)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_chunked_download_streams_through_with_matching_checksum() {
    let origin = spawn_origin(|_req: Request<Incoming>| async {
        Response::new(PatternBody::new(LARGE, false).boxed())
    });
    let proxy = spawn_proxy("", &[USER]);
    let req = Request::get(origin.url("/download"))
        .header("host", origin.authority())
        .header("proxy-authorization", auth())
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = via_hyper(proxy.addr, req).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers().get("transfer-encoding").map(|v| v.as_bytes()), Some(&b"chunked"[..]));
    let mut body = resp.into_body();
    let mut got = Fnv::default();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("download broke off");
        if let Some(d) = frame.data_ref() {
            got.update(d);
            len += d.len() as u64;
        }
    }
    let mut want = Fnv::default();
    for start in (0..LARGE).step_by(1 << 20) {
        want.update(&pattern(start, 1 << 20));
    }
    assert_eq!(len, LARGE);
    assert_eq!(got, want, "downloaded body differs");
}

/// An origin with a few fixed answers, by path.
fn spawn_routes_origin() -> Origin {
    spawn_origin(|req: Request<Incoming>| async move {
        let b = Response::builder();
        match req.uri().path() {
            "/204" => b.status(204).header("x-route", "204").body(empty()),
            "/304" => b.status(304).header("etag", "\"v1\"").header("x-route", "304").body(empty()),
            // For HEAD hyper announces this length and sends no body.
            "/file" => b.header("content-type", "application/octet-stream").body(full(vec![b'x'; 1234])),
            _ => b.body(full("next")),
        }
        .unwrap()
    })
}

#[tokio::test]
async fn head_keeps_content_length_and_sends_no_body() {
    let origin = spawn_routes_origin();
    let proxy = spawn_proxy("", &[USER]);
    let host = origin.authority();
    let auth = auth();
    let headers = [("Host", host.as_str()), ("Proxy-Authorization", &auth)];
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(request("HEAD", &origin.url("/file"), &headers)).await;
    let head = conn.read_response("HEAD").await;
    assert_eq!(head.status, 200, "{}", head.dump());
    assert_eq!(head.header("content-length"), Some("1234"), "{}", head.dump());
    // If any body bytes followed the HEAD response, the next response on this
    // connection would not start with a status line.
    assert_next_request_is_clean(&mut conn, &origin, &headers).await;
}

#[tokio::test]
async fn no_content_204_and_not_modified_304_have_no_body() {
    let origin = spawn_routes_origin();
    let proxy = spawn_proxy("", &[USER]);
    let host = origin.authority();
    let auth = auth();
    let headers = [("Host", host.as_str()), ("Proxy-Authorization", &auth)];
    let mut conn = RawConn::connect(proxy.addr).await;

    conn.send(request("DELETE", &origin.url("/204"), &headers)).await;
    let r204 = conn.read_response("DELETE").await;
    assert_eq!(r204.status_line, "HTTP/1.1 204 No Content", "{}", r204.dump());
    assert_eq!(r204.header("x-route"), Some("204"));
    assert!(r204.header("transfer-encoding").is_none(), "{}", r204.dump());

    conn.send(request(
        "GET",
        &origin.url("/304"),
        &[("Host", host.as_str()), ("Proxy-Authorization", &auth), ("If-None-Match", "\"v1\"")],
    ))
    .await;
    let r304 = conn.read_response("GET").await;
    assert_eq!(r304.status_line, "HTTP/1.1 304 Not Modified", "{}", r304.dump());
    assert_eq!(r304.header("etag"), Some("\"v1\""));
    assert!(r304.header("transfer-encoding").is_none(), "{}", r304.dump());

    assert_next_request_is_clean(&mut conn, &origin, &headers).await;
}

#[tokio::test]
async fn expect_100_continue_gets_100_before_the_body_then_200() {
    let origin = spawn_echo_origin();
    let proxy = spawn_proxy("", &[USER]);
    let host = origin.authority();
    let auth = auth();
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(request(
        "POST",
        &origin.url("/expect"),
        &[
            ("Host", &host),
            ("Proxy-Authorization", &auth),
            ("Content-Length", "11"),
            ("Expect", "100-continue"),
        ],
    ))
    .await;
    let interim = conn.read_head().await;
    assert_eq!(interim.status_line, "HTTP/1.1 100 Continue", "{}", interim.dump());
    conn.send(b"hello world").await;
    let resp = conn.read_response("POST").await;
    assert_eq!(resp.status, 200, "{}", resp.dump());
    let seen = Echoed::parse(&resp.body);
    assert_eq!(seen.body, b"hello world");
}

/// A raw origin that reads a request head, says `100 Continue` if given
/// `said` (after a moment, raising `said` first), then reads a body of
/// `len` bytes and answers 200 with it.
fn body_echo_origin(len: usize, said: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>) -> Origin {
    spawn_raw_origin(move |mut s| {
        let said = said.clone();
        async move {
            let Some(_) = read_request_head(&mut s).await else { return };
            if let Some(said) = said {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                said.store(true, std::sync::atomic::Ordering::SeqCst);
                s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.unwrap();
            }
            let mut body = vec![0u8; len];
            s.read_exact(&mut body).await.unwrap();
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n");
            s.write_all(&[head.as_bytes(), &body].concat()).await.unwrap();
        }
    })
}

/// The head of a PUT to `origin` with `Expect: 100-continue` and a body of
/// `len` bytes.
fn put_expecting_100_head(origin: &Origin, path: &str, len: usize) -> Vec<u8> {
    request(
        "PUT",
        &origin.url(path),
        &[
            ("Host", &origin.authority()),
            ("Proxy-Authorization", &auth()),
            ("Content-Length", &len.to_string()),
            ("Expect", "100-continue"),
        ],
    )
}

/// Sends the head of a PUT with `Expect: 100-continue` and a body of `len`
/// bytes to `origin` through `proxy`.
async fn put_expecting_100(proxy: SocketAddr, origin: &Origin, len: usize) -> RawConn {
    let mut c = RawConn::connect(proxy).await;
    c.send(put_expecting_100_head(origin, "/up", len)).await;
    c
}

/// `Expect: 100-continue` is carried end to end (RFC 9110 §10.1.1): the
/// client hears `100 Continue` only after the origin said it, and an
/// origin that answers at once (here a 413) gets no body: the client gets
/// that answer with no `100` before it, and the origin connection, whose
/// request was never completed, is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_waits_for_the_origin() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let said_continue = Arc::new(AtomicBool::new(false));
    let patient = body_echo_origin(11, Some(said_continue.clone()));
    // Answers 413 without reading the body; counts body bytes that arrive anyway.
    let got = Arc::new(AtomicUsize::new(0));
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    let counted = got.clone();
    let refusing = spawn_raw_origin(move |mut s| {
        let (counted, closed_tx) = (counted.clone(), closed_tx.clone());
        async move {
            let Some(_) = read_request_head(&mut s).await else { return };
            s.write_all(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 4\r\n\r\nnope").await.unwrap();
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = s.read(&mut chunk).await {
                counted.fetch_add(n, Ordering::SeqCst);
            }
            let _ = closed_tx.send(());
        }
    });
    let proxy = spawn_proxy("", &[USER]);

    let mut c = put_expecting_100(proxy.addr, &patient, 11).await;
    let interim = c.read_head().await;
    assert_eq!(interim.status, 100, "{}", interim.dump());
    assert!(said_continue.load(Ordering::SeqCst), "the client heard 100 before the origin said it");
    c.send(b"hello world").await;
    let resp = c.read_response("PUT").await;
    assert_eq!(resp.status, 200, "{}", resp.dump());
    assert_eq!(resp.body, b"hello world");

    // The same when another expectation comes first, in a field of its
    // own: hyper reads the last field, and its 100 went out at once,
    // before the origin said a word (probe 303).
    said_continue.store(false, Ordering::SeqCst);
    let mut c = RawConn::connect(proxy.addr).await;
    let head = String::from_utf8(put_expecting_100_head(&patient, "/up", 11)).unwrap();
    c.send(head.replacen("\r\n", "\r\nExpect: foo\r\n", 1)).await;
    let interim = c.read_head().await;
    assert_eq!(interim.status, 100, "{}", interim.dump());
    assert!(said_continue.load(Ordering::SeqCst), "the client heard 100 before the origin said it");
    c.send(b"hello world").await;
    assert_eq!(c.read_response("PUT").await.status, 200);

    let mut c = put_expecting_100(proxy.addr, &refusing, 100_000).await;
    let resp = c.read_response("PUT").await;
    assert_eq!(resp.status, 413, "no 100 before the origin's answer: {}", resp.dump());
    assert_eq!(resp.body, b"nope");
    assert_eq!(resp.header("connection"), Some("close"), "{}", resp.dump());
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), closed.recv()).await;
    assert!(matches!(ended, Ok(Some(()))), "the origin connection stays open");
    assert_eq!(got.load(Ordering::SeqCst), 0, "body bytes reached the origin");
}

/// An origin that ignores `Expect: 100-continue` and just reads the body
/// still gets it (after the proxy's wait for a `100` that never comes).
#[tokio::test]
async fn expect_100_continue_to_an_origin_that_ignores_it_still_sends_the_body() {
    let origin = body_echo_origin(5, None);
    let proxy = spawn_proxy("", &[USER]);
    let mut c = put_expecting_100(proxy.addr, &origin, 5).await;
    let interim = c.read_head().await;
    assert_eq!(interim.status, 100, "{}", interim.dump());
    c.send(b"hello").await;
    let resp = c.read_response("PUT").await;
    assert_eq!(resp.status, 200, "{}", resp.dump());
    assert_eq!(resp.body, b"hello");

    // With an `upstream_response_timeout` shorter than the usual 1 s wait
    // for the `100`, the wait is shorter too: it counted against the
    // origin, which got a 504 for a body authgate was holding back.
    let impatient = spawn_proxy("[limits]\nupstream_response_timeout = \"400ms\"\n", &[USER]);
    let mut c = put_expecting_100(impatient.addr, &origin, 5).await;
    assert_eq!(c.read_head().await.status, 100);
    c.send(b"hello").await;
    let resp = c.read_response("PUT").await;
    assert_eq!(resp.status, 200, "{}", resp.dump());
}

#[tokio::test]
async fn websocket_upgrade_carries_bytes_both_ways() {
    let origin = spawn_origin(|mut req: Request<Incoming>| async move {
        let wants =
            req.headers().get("upgrade").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        if !wants {
            return Response::builder().status(400).body(full("expected an upgrade")).unwrap();
        }
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(up) = on.await else { return };
            let mut io = TokioIo::new(up);
            let mut buf = [0u8; 4096];
            loop {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut out = b"echo:".to_vec();
                        out.extend_from_slice(&buf[..n]);
                        if io.write_all(&out).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = io.shutdown().await;
        });
        Response::builder()
            .status(101)
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
            .body(empty())
            .unwrap()
    });
    let proxy = spawn_proxy("", &[USER]);
    let host = origin.authority();
    let auth = auth();
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(request(
        "GET",
        &origin.url("/ws"),
        &[
            ("Host", &host),
            ("Proxy-Authorization", &auth),
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ],
    ))
    .await;
    let head = conn.read_head().await;
    assert_eq!(head.status_line, "HTTP/1.1 101 Switching Protocols", "{}", head.dump());
    assert_eq!(head.header("upgrade"), Some("websocket"));
    assert_eq!(head.header("sec-websocket-accept"), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));

    conn.send(b"frame one").await;
    assert_eq!(conn.read_exact(14).await, b"echo:frame one");
    conn.send(b"frame two").await;
    assert_eq!(conn.read_exact(14).await, b"echo:frame two");
    conn.shutdown_write().await;
    assert!(conn.read_to_end().await.is_empty(), "after our FIN the origin closes and so must the proxy");
}

/// RFC 9110 §7.8: a 101 must name the protocol it switches to, one the
/// client offered. One that did not was relayed and the connection made a
/// tunnel: the client's next request, `Proxy-Authorization` and all, went
/// to the origin as raw bytes. Now it is a 502 that closes the connection,
/// as every upgrade authgate refuses (probe 165): what the client sent
/// behind its request never reaches anyone.
#[tokio::test]
async fn a_101_to_a_protocol_the_client_did_not_offer_is_a_502() {
    let next = spawn_echo_origin();
    let proxy = spawn_proxy("", &[USER]);
    let auth = auth();
    let answers: [&'static [u8]; 4] = [
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket, irc\r\n\r\n",
        // HTTP/1.0 has no 1xx (RFC 9110 §15.2; it was relayed, probe 177).
        b"HTTP/1.0 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    ];
    for answer in answers {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let origin = spawn_canned_origin(answer, seen.clone());
        let mut conn = RawConn::connect(proxy.addr).await;
        let upgrade = [
            ("Host", origin.authority()),
            ("Proxy-Authorization", auth.clone()),
            ("Connection", "Upgrade".to_string()),
            ("Upgrade", "websocket".to_string()),
        ];
        let upgrade: Vec<(&str, &str)> = upgrade.iter().map(|(n, v)| (*n, v.as_str())).collect();
        conn.send(request("GET", &origin.url("/ws"), &upgrade)).await;
        conn.send(request(
            "GET",
            &next.url("/after"),
            &[("Host", &next.authority()), ("Proxy-Authorization", &auth)],
        ))
        .await;
        let resp = conn.read_response("GET").await;
        assert_proxy_error(&resp, 502, "http_upgrade_failed", "upstream_protocol_error");
        assert_eq!(resp.header("connection"), Some("close"), "{}", resp.dump());
        assert!(conn.read_to_end().await.is_empty(), "nothing more on it");
        assert_eq!(next.hits(), 0, "the request behind it went nowhere");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "the origin got more than the upgrade request: {seen:?}");
    }
}

/// RFC 9110 §7.8: a server that switches protocols for a request with
/// `Expect: 100-continue` must send the 100 first. An origin that sent a
/// 101 (and a byte behind it) to such a POST, with its body held back for
/// that 100, kept both connections open until shutdown, hyper waiting for
/// good to send the body: a client slot and two sockets a request (probe
/// 174). Now a 502 that closes both, whether the request asked to upgrade
/// or not; and so does a 101 to a request whose body is still coming,
/// whether it asked to upgrade or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_that_skips_the_100_a_held_body_waits_for_is_a_502_that_closes_both_connections() {
    let proxy = spawn_proxy("", &[USER]);
    let auth = auth();
    // (Expect, Upgrade, body bytes sent, the 502's details.) The third: a
    // body cut short without the expectation, which kept the client's
    // connection open as long as the client did (probe 174).
    for (expect, upgrade, sent, detail) in [
        (true, false, "", "101 without an upgrade request"),
        (true, true, "", "101 before 100 Continue to a request with a body"),
        (false, false, "AB", "101 without an upgrade request"),
        // An upgrade's body cut short: held both connections for as long
        // as the origin kept its socket open, with no timer (probe 181).
        (false, true, "AB", "101 before the end of the request body"),
    ] {
        let (closed_tx, closed) = tokio::sync::mpsc::unbounded_channel::<()>();
        let origin = spawn_raw_origin(move |mut s: tokio::net::TcpStream| {
            let closed_tx = closed_tx.clone();
            async move {
                if read_request_head(&mut s).await.is_none() {
                    return;
                }
                let switch =
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nX";
                let _ = s.write_all(switch).await;
                // Open until the proxy closes: what did not end on its own.
                let mut buf = [0u8; 1024];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                let _ = closed_tx.send(());
            }
        });
        let mut closed = closed;
        let mut conn = RawConn::connect(proxy.addr).await;
        let host = origin.authority();
        let mut head =
            vec![("Host", host.as_str()), ("Proxy-Authorization", auth.as_str()), ("Content-Length", "5")];
        if expect {
            head.push(("Expect", "100-continue"));
        }
        if upgrade {
            head.extend([("Connection", "Upgrade"), ("Upgrade", "websocket")]);
        }
        let mut bytes = request("POST", &origin.url("/up"), &head);
        bytes.extend_from_slice(sent.as_bytes());
        conn.send(bytes).await;
        let resp = conn.read_response("POST").await;
        // A switch asked for that failed, or one nobody asked for.
        let proxy_status = if upgrade { "http_upgrade_failed" } else { "http_protocol_error" };
        assert_proxy_error(&resp, 502, proxy_status, "upstream_protocol_error");
        assert!(resp.header("proxy-status").is_some_and(|p| p.contains(detail)), "{}", resp.dump());
        assert!(conn.read_to_end().await.is_empty(), "the client's connection ends");
        let origin_closed = tokio::time::timeout(std::time::Duration::from_secs(10), closed.recv()).await;
        assert!(matches!(origin_closed, Ok(Some(()))), "the origin's connection was left open");
    }
}

/// RFC 9112 §8: a response cut short must not look whole. To an HTTP/1.0
/// client a body without a length runs to the close, so a chunked body
/// that broke off upstream ended in a FIN that looked like its end: the
/// connection now ends with a reset. A whole response still ends cleanly.
#[tokio::test]
async fn a_response_that_breaks_off_upstream_resets_an_http_1_0_client() {
    let proxy = spawn_proxy("", &[USER]);
    let auth = auth();
    for (answer, whole) in [
        (&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"[..], false),
        (&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"[..], true),
    ] {
        let origin = spawn_raw_origin(move |mut stream: tokio::net::TcpStream| async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while find(&head, b"\r\n\r\n").is_none() {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = stream.write_all(answer).await;
            // Then closes, mid-body for the first answer.
        });
        let mut conn = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let req = format!(
            "GET {} HTTP/1.0\r\nHost: {}\r\nProxy-Authorization: {auth}\r\n\r\n",
            origin.url("/"),
            origin.authority()
        );
        conn.write_all(req.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let read = conn.read_to_end(&mut got).await;
        if whole {
            assert!(read.is_ok(), "{read:?}");
            assert!(got.ends_with(b"\r\n\r\nabc"), "{}", String::from_utf8_lossy(&got));
        } else {
            let err = read.expect_err("a clean end after a body that broke off");
            assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
        }
    }
}

/// RFC 9110 §7.8: a server MUST ignore `Upgrade` in an HTTP/1.0 request.
/// It was passed on, and the 1.0 client was sent a `101` it cannot use.
#[tokio::test]
async fn an_upgrade_in_an_http_1_0_request_is_ignored() {
    let origin = spawn_echo_origin();
    let proxy = spawn_proxy("", &[USER]);
    let mut conn = RawConn::connect(proxy.addr).await;
    let head = format!(
        "GET {} HTTP/1.0\r\nHost: {}\r\nProxy-Authorization: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        origin.url("/ws10"),
        origin.authority(),
        auth()
    );
    conn.send(head.as_bytes()).await;
    let resp = conn.read_response("GET").await;
    assert_eq!(resp.status, 200, "{}", resp.dump());
    let seen = Echoed::parse(&resp.body);
    assert!(
        !seen.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("upgrade")),
        "Upgrade reached the origin: {:?}",
        seen.headers
    );
}

/// A further request on `conn` gets its own clean 200: nothing of the
/// previous response (no stray body bytes) is left on the connection.
async fn assert_next_request_is_clean(conn: &mut RawConn, origin: &Origin, headers: &[(&str, &str)]) {
    conn.send(request("GET", &origin.url("/next"), headers)).await;
    let next = conn.read_response("GET").await;
    assert_eq!(next.status_line, "HTTP/1.1 200 OK", "{}", next.dump());
    assert_eq!(next.text(), "next");
}

/// An origin answering `/small` (1 KiB) and `/large` (2 MiB); its `hits`
/// count the TCP connections it accepted.
fn spawn_counting_origin() -> Origin {
    spawn_raw_origin(|stream: tokio::net::TcpStream| async move {
        let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
            let len = if req.uri().path() == "/large" { 2 << 20 } else { 1024 };
            Ok::<_, std::convert::Infallible>(Response::new(full(vec![b'p'; len])))
        });
        let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
    })
}

/// The upstream pool: one client connection's requests, one after another,
/// reuse the proxy's connection to the origin, after small responses (read
/// whole with their head) and after a large one (streamed, so the
/// connection goes back to the pool only when its body is done).
#[tokio::test]
async fn upstream_connections_are_reused_after_small_and_large_responses() {
    let origin = spawn_counting_origin();
    let proxy = spawn_proxy("", &[USER]);
    let host = origin.authority();
    let auth = auth();
    let headers = [("Host", host.as_str()), ("Proxy-Authorization", &auth)];
    let mut conn = RawConn::connect(proxy.addr).await;
    let paths =
        ["/small", "/small", "/large", "/small", "/large", "/small", "/large", "/small", "/small", "/small"];
    for path in paths {
        conn.send(request("GET", &origin.url(path), &headers)).await;
        let resp = conn.read_response("GET").await;
        assert_eq!(resp.status, 200, "{path}: {}", resp.dump());
        let want = if path == "/large" { 2 << 20 } else { 1024 };
        assert_eq!(resp.body.len(), want, "{path}");
    }
    // Without reuse every request dials (10 connections); without reuse
    // after a large response, 4. A connection may rarely be dialled while the
    // previous one is still on its way back to the pool, hence not exactly 1.
    let dialled = origin.hits();
    assert!((1..=3).contains(&dialled), "{dialled} upstream connections for {} requests", paths.len());
}

/// A GET (or HEAD) may carry a chunked body (RFC 9110 §9.3.1 gives it no
/// meaning, but a proxy forwards it); hyper's client drops a body of
/// unknown length on those methods unless told to send it chunked.
#[tokio::test]
async fn a_chunked_body_on_a_get_reaches_the_origin() {
    let proxy = spawn_proxy("", &[USER]);
    let origin = spawn_echo_origin();
    let mut c = RawConn::connect(proxy.addr).await;
    c.send(format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nProxy-Authorization: {}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        origin.url("/get-with-body"),
        origin.authority(),
        basic(USER.0, USER.1)
    ))
    .await;
    let r = c.read_response("GET").await;
    assert_eq!(r.status, 200, "{}", r.dump());
    let echoed = Echoed::parse(&r.body);
    assert_eq!(echoed.body, b"hello world", "{}", r.text());
    assert_eq!(echoed.header("transfer-encoding"), Some("chunked"));
    // The connection stays in step: a second request on it works.
    c.send(request(
        "GET",
        &origin.url("/next"),
        &[("Host", &origin.authority()), ("Proxy-Authorization", &basic(USER.0, USER.1))],
    ))
    .await;
    let next = c.read_response("GET").await;
    assert!(Echoed::parse(&next.body).request_line.starts_with("GET /next "), "{}", next.text());
}

/// RFC 9112 §6.3: an origin response with both Transfer-Encoding and
/// Content-Length is framed by the chunks; the Content-Length must not go
/// on (it would cut the body, or make the client wait for more). The
/// origin's HTTP/1.0 status line is not relayed either (RFC 9110 §2.5).
#[tokio::test]
async fn a_response_with_both_framings_is_sent_by_its_chunks_in_our_version() {
    let proxy = spawn_proxy("", &[USER]);
    let both: &'static [u8] =
        b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let origin = spawn_canned_origin(both, std::sync::Arc::new(std::sync::Mutex::new(Vec::new())));
    let auth = basic(USER.0, USER.1);
    let mut c = RawConn::connect(proxy.addr).await;
    for path in ["/one", "/two"] {
        c.send(request(
            "GET",
            &origin.url(path),
            &[("Host", &origin.authority()), ("Proxy-Authorization", &auth)],
        ))
        .await;
        let r = c.read_response("GET").await;
        assert_eq!(r.status, 200, "{}", r.dump());
        assert_eq!(r.header("content-length"), None, "{}", r.dump());
        assert_eq!(r.body, b"abc", "{}", r.dump());
    }
    let old: &'static [u8] = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let origin = spawn_canned_origin(old, std::sync::Arc::new(std::sync::Mutex::new(Vec::new())));
    let r = get(
        proxy.addr,
        &origin.url("/old"),
        &[("Host", &origin.authority()), ("Proxy-Authorization", &auth)],
    )
    .await;
    assert_eq!(r.status_line, "HTTP/1.1 200 OK", "{}", r.dump());
    assert_eq!(r.header("via"), Some("1.0 authgate"), "Via still names the origin's version");
    assert_eq!(r.body, b"ok");
}

/// A request body that keeps arriving is not cut by
/// `upstream_response_timeout`: the wait for the response head counts from
/// the end of the upload (a slow upload of a large file is not an origin
/// that does not answer).
#[tokio::test]
async fn a_slow_upload_longer_than_the_response_timeout_goes_through() {
    let proxy = spawn_proxy("[limits]\nupstream_response_timeout = \"400ms\"\n", &[USER]);
    let origin = spawn_checksum_origin();
    let mut c = RawConn::connect(proxy.addr).await;
    let head = request(
        "POST",
        &origin.url("/upload"),
        &[
            ("Host", &origin.authority()),
            ("Proxy-Authorization", &basic(USER.0, USER.1)),
            ("Content-Length", "6"),
        ],
    );
    c.send(head).await;
    for part in [&b"ab"[..], b"cd", b"ef"] {
        c.send(part).await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let r = c.read_response("POST").await;
    assert_eq!(r.status, 200, "{}", r.dump());
    assert!(r.text().starts_with("6 "), "the origin got all 6 bytes: {}", r.text());
}

/// A body that has gone out whole counts as sent: an origin that then never
/// answers gets its 504 after `upstream_response_timeout`, as for a GET,
/// not after twice that (the writes of the request itself extended the wait).
#[tokio::test]
async fn a_request_with_a_body_waits_one_response_timeout() {
    let origin = spawn_raw_origin(|mut s: tokio::net::TcpStream| async move {
        let mut buf = [0u8; 4096];
        // Read the request, then hold the connection without a word.
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                return;
            }
        }
    });
    let proxy = spawn_proxy("[limits]\nupstream_response_timeout = \"1s\"\n", &[USER]);
    let mut c = RawConn::connect(proxy.addr).await;
    let mut bytes = request(
        "POST",
        &origin.url("/never"),
        &[
            ("Host", &origin.authority()),
            ("Proxy-Authorization", &basic(USER.0, USER.1)),
            ("Content-Length", "10"),
        ],
    );
    bytes.extend_from_slice(b"0123456789");
    let start = std::time::Instant::now();
    c.send(bytes).await;
    let r = c.read_response("POST").await;
    assert_eq!(r.status, 504, "{}", r.dump());
    // Twice the timeout (2 s) before the fix; the bound leaves room for a
    // loaded machine.
    assert!(start.elapsed() < std::time::Duration::from_millis(1800), "{:?}", start.elapsed());
}

/// A client whose body stops arriving gets 408 `request_body_timeout` (its
/// own doing), and one whose chunked framing is broken gets 400
/// `bad_request_body`; neither is blamed on the origin as a 5xx.
#[tokio::test]
async fn a_stalled_or_bad_request_body_is_the_clients_error() {
    let proxy = spawn_proxy("[limits]\nupstream_response_timeout = \"1s\"\n", &[USER]);
    let origin = spawn_checksum_origin();
    let auth = basic(USER.0, USER.1);
    let host = origin.authority();
    let mut c = RawConn::connect(proxy.addr).await;
    let mut bytes = request(
        "POST",
        &origin.url("/stall"),
        &[("Host", &host), ("Proxy-Authorization", &auth), ("Content-Length", "10")],
    );
    bytes.extend_from_slice(b"abc");
    c.send(bytes).await;
    let start = std::time::Instant::now();
    let r = c.read_response("POST").await;
    assert_proxy_error(&r, 408, "http_request_error", "request_body_timeout");
    // The timeout counts from the last byte: twice the timeout (2 s) before
    // the fix, as the head's write to the origin counted from the look that
    // found it; the bound leaves room for a loaded machine.
    assert!(start.elapsed() >= std::time::Duration::from_millis(950), "{:?}", start.elapsed());
    assert!(start.elapsed() < std::time::Duration::from_millis(1700), "{:?}", start.elapsed());
    assert!(c.is_closed().await, "the connection closes: the rest of the body would be read as a request");

    for bad_chunk in ["zz\r\nabc\r\n0\r\n\r\n", "0x3\r\nabc\r\n0\r\n\r\n"] {
        let mut c = RawConn::connect(proxy.addr).await;
        let mut bytes = request(
            "POST",
            &origin.url("/bad-chunk"),
            &[("Host", &host), ("Proxy-Authorization", &auth), ("Transfer-Encoding", "chunked")],
        );
        bytes.extend_from_slice(bad_chunk.as_bytes());
        c.send(bytes).await;
        let r = c.read_response("POST").await;
        assert_proxy_error(&r, 400, "http_request_error", "bad_request_body");
        assert!(c.is_closed().await);
    }
}

/// A chunked body whose last chunk ends with a bare LF (`0\r\n\n`) is a
/// 400 `bad_request_body`, and the connection closes: hyper read what
/// followed, up to the next blank line, as the body's trailer section and
/// dropped it, so a request pipelined behind was swallowed unanswered and
/// the client waited (probe 132). Trailers themselves still pass.
#[tokio::test]
async fn a_bare_lf_after_the_last_chunk_is_a_bad_body_and_swallows_nothing() {
    let proxy = spawn_proxy("", &[USER]);
    let origin = spawn_checksum_origin();
    let auth = basic(USER.0, USER.1);
    let host = origin.authority();
    let headers =
        [("Host", host.as_str()), ("Proxy-Authorization", auth.as_str()), ("Transfer-Encoding", "chunked")];
    let mut c = RawConn::connect(proxy.addr).await;
    let mut bytes = request("POST", &origin.url("/bare-lf"), &headers);
    bytes.extend_from_slice(b"5\r\nhello\r\n0\r\n\n");
    bytes.extend(request("GET", &origin.url("/behind"), &headers[..2]));
    c.send(bytes).await;
    let r = c.read_response("POST").await;
    assert_proxy_error(&r, 400, "http_request_error", "bad_request_body");
    assert!(c.is_closed().await, "nothing more is read on it");
    assert_eq!(origin.hits(), 0, "the origin got no whole request");

    // A trailer section ended by a bare LF: hyper parses it to that line
    // and drops the rest, the request behind included (probe 133). The
    // answer closes the connection, so the client is not left waiting for
    // the one behind.
    for trailers in ["X: y\n\n", "X: y\r\n\n", "X-Sum: 5\r\n\r\n"] {
        let mut c = RawConn::connect(proxy.addr).await;
        let mut bytes = request("POST", &origin.url("/trailers"), &headers);
        bytes.extend_from_slice(format!("5\r\nhello\r\n0\r\n{trailers}").as_bytes());
        bytes.extend(request("GET", &origin.url("/behind"), &headers[..2]));
        c.send(bytes).await;
        let r = c.read_response("POST").await;
        assert_eq!(r.status, 200, "{trailers:?}: {}", r.dump());
        assert_eq!(r.header("connection"), Some("close"), "{trailers:?}: {}", r.dump());
        assert!(c.is_closed().await, "{trailers:?}: not left open");
    }
}

/// An origin that stops reading an upload (with or without having said
/// `100 Continue`) and never answers is the origin's fault, not the
/// client's: 504 `upstream_write_timeout`, not 408. And both connections
/// are closed: the client's stayed open, and the origin's kept the rest of
/// the body waiting for as long as the origin held its socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_stops_reading_an_upload_is_cut_off_and_blamed() {
    let proxy = spawn_proxy("[limits]\nupstream_response_timeout = \"1s\"\n", &[USER]);
    let (release_tx, release_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let release_rx = std::sync::Arc::new(tokio::sync::Mutex::new(release_rx));
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    let origin = spawn_raw_origin(move |mut s| {
        let (release_rx, closed_tx) = (release_rx.clone(), closed_tx.clone());
        async move {
            let Some(head) = read_request_head(&mut s).await else { return };
            if String::from_utf8_lossy(&head).to_ascii_lowercase().contains("expect: 100-continue") {
                s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.unwrap();
            }
            // Reads nothing until the test has its answer, then drains: the
            // end of stream comes only if the proxy closed the connection.
            let _ = release_rx.lock().await.recv().await;
            let mut chunk = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = s.read(&mut chunk).await {
                let _ = n;
            }
            let _ = closed_tx.send(());
        }
    });
    let len = 16 * 1024 * 1024;
    for expect in [false, true] {
        let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let (mut rd, mut wr) = stream.into_split();
        let mut headers = vec![
            ("Host".to_owned(), origin.authority()),
            ("Proxy-Authorization".to_owned(), auth()),
            ("Content-Length".to_owned(), len.to_string()),
        ];
        if expect {
            headers.push(("Expect".to_owned(), "100-continue".to_owned()));
        }
        let h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let head = request("PUT", &origin.url("/stuck"), &h);
        let writer = tokio::spawn(async move {
            wr.write_all(&head).await.unwrap();
            let _ = wr.write_all(&vec![b'x'; len]).await;
            wr
        });
        let mut answer = Vec::new();
        let start = std::time::Instant::now();
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(15), rd.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "the client's connection stays open (expect: {expect})");
        // One timeout after the origin last took bytes (at once here): twice
        // the timeout before the fix.
        assert!(start.elapsed() < std::time::Duration::from_millis(1700), "{:?}", start.elapsed());
        let text = String::from_utf8_lossy(&answer);
        let last = text.rfind("HTTP/1.1 5").or_else(|| text.rfind("HTTP/1.1 4")).unwrap_or(0);
        let final_answer = &text[last..];
        assert!(final_answer.starts_with("HTTP/1.1 504 "), "expect: {expect}: {text}");
        assert!(final_answer.contains("error=connection_write_timeout"), "{final_answer}");
        assert!(final_answer.contains("upstream_write_timeout"), "{final_answer}");
        release_tx.send(()).unwrap();
        let ended = tokio::time::timeout(std::time::Duration::from_secs(10), closed.recv()).await;
        assert!(matches!(ended, Ok(Some(()))), "the origin connection stays open (expect: {expect})");
        writer.abort();
    }
}

/// A client that sends its whole upload at once (not waiting for `100
/// Continue`) while it reads, to an origin that answers at once with a
/// large body: the answer arrives whole. The proxy drains the upload it
/// will not send before it closes; with only 1 MiB drained, the close
/// reset the connection and cut the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_early_answer_reaches_a_client_that_sends_its_whole_upload() {
    const ANSWER: usize = 4 * 1024 * 1024;
    const UPLOAD: usize = 8 * 1024 * 1024;
    let origin = spawn_raw_origin(|mut s| async move {
        let Some(_) = read_request_head(&mut s).await else { return };
        let head = format!("HTTP/1.1 401 Unauthorized\r\nContent-Length: {ANSWER}\r\n\r\n");
        let _ = s.write_all(head.as_bytes()).await;
        let _ = s.write_all(&vec![b'n'; ANSWER]).await;
        // Keeps the connection; whatever else arrives is read and dropped.
        let mut chunk = vec![0u8; 64 * 1024];
        while let Ok(1..) = s.read(&mut chunk).await {}
    });
    let proxy = spawn_proxy("", &[USER]);
    // Several times: whether the reset came before the client had read
    // the answer is a matter of timing (with 1 MiB drained, two runs of
    // this test in three failed).
    for _ in 0..16 {
        early_answer_whole(proxy.addr, &origin, ANSWER, UPLOAD).await;
    }
}

async fn early_answer_whole(proxy: SocketAddr, origin: &Origin, answer_len: usize, upload: usize) {
    let stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let head = put_expecting_100_head(origin, "/big", upload);
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&head).await;
        let _ = wr.write_all(&vec![b'x'; upload]).await;
        wr
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), rd.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "no end of the answer");
    let _ = writer.await;
    let text = String::from_utf8_lossy(&answer[..answer.len().min(300)]).into_owned();
    assert!(text.starts_with("HTTP/1.1 401 "), "{text}");
    let body_start = find(&answer, b"\r\n\r\n").expect("a complete head") + 4;
    assert_eq!(answer.len() - body_start, answer_len, "the answer was cut: {text}");
}

/// An origin that goes silent in the middle of its body does not hold the
/// client (and the connection slot) forever: after `upstream_response_timeout`
/// of silence the response is cut off and both connections close. A body
/// that keeps coming, with pauses shorter than that, is relayed whole.
#[tokio::test]
async fn an_origin_that_stalls_mid_body_is_cut_off_and_a_slow_one_is_not() {
    let proxy = spawn_proxy("[limits]\nupstream_response_timeout = \"400ms\"\n", &[USER]);
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    let closed_tx = std::sync::Arc::new(std::sync::Mutex::new(Some(closed_tx)));
    let origin = spawn_raw_origin(move |mut s: tokio::net::TcpStream| {
        let closed_tx = closed_tx.clone();
        async move {
            let Some(head) = read_request_head(&mut s).await else { return };
            let stall = String::from_utf8_lossy(&head).contains("/stall");
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\nConnection: close\r\n\r\n").await;
            for i in 0..3 {
                let _ = s.write_all(b"0123456789").await;
                if stall && i == 0 {
                    // Silent from here on; the proxy must let go.
                    let mut rest = Vec::new();
                    let _ = s.read_to_end(&mut rest).await;
                    if let Some(tx) = closed_tx.lock().unwrap().take() {
                        let _ = tx.send(());
                    }
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        }
    });
    let auth = basic(USER.0, USER.1);
    let host = origin.authority();
    let slow =
        get(proxy.addr, &origin.url("/slow"), &[("Host", &host), ("Proxy-Authorization", &auth)]).await;
    assert_eq!(slow.status, 200, "{}", slow.dump());
    assert_eq!(slow.body.len(), 30, "a slow but moving body is relayed whole");

    let mut c = RawConn::connect(proxy.addr).await;
    c.send(request("GET", &origin.url("/stall"), &[("Host", &host), ("Proxy-Authorization", &auth)])).await;
    let head = c.read_head().await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("30"));
    let start = std::time::Instant::now();
    let rest = c.read_to_end().await;
    assert_eq!(rest, b"0123456789", "what came is relayed, then the connection closes short of 30 bytes");
    assert!(start.elapsed() >= std::time::Duration::from_millis(350), "{:?}", start.elapsed());
    tokio::time::timeout(std::time::Duration::from_secs(5), closed_rx)
        .await
        .expect("the origin connection is closed too")
        .unwrap();
}

/// Sends `head` and then `body_len` bytes of body on a fresh connection,
/// while reading everything the proxy answers until it closes.
async fn upload_and_read_all(proxy: SocketAddr, head: Vec<u8>, body_len: usize) -> String {
    let stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&head).await;
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while sent < body_len {
            let n = chunk.len().min(body_len - sent);
            if wr.write_all(&chunk[..n]).await.is_err() {
                return;
            }
            sent += n;
        }
    });
    let mut got = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), rd.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the proxy closes the connection; got so far:\n{}", String::from_utf8_lossy(&got));
    writer.abort();
    String::from_utf8_lossy(&got).into_owned()
}

/// An origin that answers a request's head with a 413 (`big`, closing)
/// and closes `after` that, having read none of the body.
fn refusing_origin(after: std::time::Duration) -> Origin {
    spawn_raw_origin(move |mut s: tokio::net::TcpStream| async move {
        if read_request_head(&mut s).await.is_none() {
            return;
        }
        let refusal = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbig";
        let _ = s.write_all(refusal).await;
        tokio::time::sleep(after).await;
    })
}

/// An answer given before the request body's end (an origin's 413 to a
/// large upload, authgate's own 407) is the only answer: the proxy says it
/// closes the connection and does. What it still read of the unread body
/// was taken for the head of a next request and answered with a 431.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_before_the_end_of_a_large_upload_is_the_only_answer() {
    // Closes a second later, having read none of the body.
    let origin = refusing_origin(std::time::Duration::from_secs(1));
    let proxy = spawn_proxy("", &[USER]);
    let host = origin.authority();
    let len = 4 * 1024 * 1024;
    let length = len.to_string();
    for (auth, status) in [(Some(auth()), "413"), (None, "407")] {
        let mut headers = vec![("Host", host.as_str()), ("Content-Length", length.as_str())];
        if let Some(a) = &auth {
            headers.push(("Proxy-Authorization", a));
        }
        let got =
            upload_and_read_all(proxy.addr, request("POST", &origin.url("/upload"), &headers), len).await;
        assert_eq!(got.matches("HTTP/1.1 ").count(), 1, "one answer only:\n{got}");
        assert!(got.starts_with(&format!("HTTP/1.1 {status} ")), "{got}");
        assert!(got.to_ascii_lowercase().contains("\r\nconnection: close\r\n"), "{got}");
    }
}

/// The same for an origin that closes at once, the body unread: its kernel
/// resets the connection, and the reset could fail authgate's next write
/// of the body before the answer waiting in the socket was read: the
/// client got a 502 (probe 341: 6 of 30 curl uploads of 3 MB, half of raw
/// ones). Twenty uploads, each of which must get the origin's answer.
/// Since stop 74 this one passes on this machine with the reset passed on
/// as an error too (hyper reads the answer before its next write, it
/// seems): the unit tests in `proxy::upstream_tls` are the ones that fail
/// without the reset taken as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_reaches_the_client_though_the_origin_then_resets() {
    // Closed at once with the body unread: a reset.
    let origin = refusing_origin(std::time::Duration::ZERO);
    let proxy = spawn_proxy("", &[USER]);
    let host = origin.authority();
    let len = 3 * 1024 * 1024;
    let length = len.to_string();
    let a = auth();
    let headers = [("Host", host.as_str()), ("Content-Length", length.as_str()), ("Proxy-Authorization", &a)];
    for i in 0..20 {
        let got =
            upload_and_read_all(proxy.addr, request("POST", &origin.url("/upload"), &headers), len).await;
        assert!(got.starts_with("HTTP/1.1 413 "), "upload {i}: {got}");
        assert!(got.ends_with("\r\n\r\nbig"), "upload {i}: {got}");
    }
}

/// An origin that answers an upload with a body ended by the close, and
/// then resets (the upload unread): its kernel drops what it had not sent
/// yet, so the body is cut, and the client must be able to tell. The reset
/// met authgate's write of the upload, taken as written so that the answer
/// is read; the reads then gave an orderly end, and the cut body was
/// relayed as complete, its last chunk sent (probe 354: 5 of 5 runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_ended_by_a_reset_is_not_relayed_as_complete() {
    const SENT: usize = 8_000_000;
    let origin = spawn_raw_origin(|mut s: tokio::net::TcpStream| async move {
        if read_request_head(&mut s).await.is_none() {
            return;
        }
        let mut upload = vec![0u8; 2 * 1024 * 1024];
        if s.read_exact(&mut upload).await.is_err() {
            return;
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n").await;
        let _ = s.write_all(&vec![b'R'; SENT]).await;
        // Dropped with the rest of the upload unread: a reset.
    });
    let proxy = spawn_proxy("", &[USER]);
    let host = origin.authority();
    let len = 64 * 1024 * 1024;
    let length = len.to_string();
    let a = auth();
    let headers = [("Host", host.as_str()), ("Content-Length", length.as_str()), ("Proxy-Authorization", &a)];
    for i in 0..3 {
        let got =
            upload_and_read_all(proxy.addr, request("POST", &origin.url("/upload"), &headers), len).await;
        assert!(got.starts_with("HTTP/1.1 200 "), "upload {i}: {}", &got[..got.len().min(300)]);
        let body = got.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        let received = body.bytes().filter(|&b| b == b'R').count();
        assert!(
            !got.ends_with("\r\n0\r\n\r\n") || received == SENT,
            "upload {i}: {received} of {SENT} bytes relayed as a complete body"
        );
    }
}

/// An answer of authgate's own past authentication to a request whose
/// body it did not read says `Connection: close`: hyper closes there unless
/// the whole body was already in its buffer. A body behind `Expect:
/// 100-continue` is not even sent until the client hears `100`, and a small
/// one sent just after its head met a closed connection after an answer
/// that promised keep-alive.
#[tokio::test]
async fn an_answer_that_leaves_a_body_unread_says_the_connection_closes() {
    let proxy = spawn_proxy("", &[USER]);
    let target = format!("127.0.0.1:{}", closed_port());
    for expect in [true, false] {
        let mut c = RawConn::connect(proxy.addr).await;
        let a = auth();
        let mut headers =
            vec![("Host", target.as_str()), ("Proxy-Authorization", a.as_str()), ("Content-Length", "62")];
        if expect {
            headers.push(("Expect", "100-continue"));
        }
        c.send(request("POST", &format!("http://{target}/form"), &headers)).await;
        let resp = c.read_response("POST").await;
        assert_eq!(resp.status, 502, "{}", resp.dump());
        assert_eq!(resp.header("connection"), Some("close"), "expect {expect}: {}", resp.dump());
        if !expect {
            // The body, after the answer: read and dropped, then the close.
            c.send([b'x'; 62]).await;
        }
        let closed = tokio::time::timeout(std::time::Duration::from_secs(5), c.is_closed()).await;
        assert_eq!(closed.ok(), Some(true));
    }
}

/// An origin that reads an upload slowly but steadily (64 KiB every
/// 250 ms) is taking it: the upload goes through although it lasts four
/// `upstream_response_timeout`s. The proxy sees the origin read only through
/// its own writes; without a bound on the bytes its socket holds unsent
/// (megabytes on loopback), the whole upload went into the kernel's buffers
/// at once and the wait for the answer ran out while the origin was still
/// reading it. What the origin's own receive buffer holds stays invisible:
/// the origin must read that much, and answer, within the timeout after the
/// last write (here the buffer is fixed at 64 KiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_reads_an_upload_slowly_but_steadily_is_not_cut() {
    const LEN: usize = 2 * 1024 * 1024;
    let proxy = spawn_proxy("[limits]\nupstream_response_timeout = \"2s\"\n", &[USER]);
    // A fixed receive buffer, as an origin that does not read fast at first
    // has: what it holds is read within the timeout after the last write.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(16).unwrap();
    let origin = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else { return };
        if read_request_head(&mut s).await.is_none() {
            return;
        }
        let mut chunk = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < LEN {
            let want = chunk.len().min(LEN - got);
            if s.read_exact(&mut chunk[..want]).await.is_err() {
                return;
            }
            got += want;
            if got < LEN {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        }
        let body = format!("{got}");
        let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        let _ = s.write_all(answer.as_bytes()).await;
    });
    let bytes = request(
        "PUT",
        &format!("http://{origin}/slow-reader"),
        &[
            ("Host", &origin.to_string()),
            ("Proxy-Authorization", &auth()),
            ("Content-Length", &LEN.to_string()),
        ],
    );
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        wr.write_all(&bytes).await.unwrap();
        // A proxy that gives up closes while the body is still going out.
        let _ = wr.write_all(&vec![b'x'; LEN]).await;
        wr
    });
    let want = LEN.to_string();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    let start = std::time::Instant::now();
    while !answer.ends_with(want.as_bytes()) && start.elapsed() < std::time::Duration::from_secs(30) {
        match tokio::time::timeout(std::time::Duration::from_secs(30), rd.read(&mut chunk)).await {
            Ok(Ok(n @ 1..)) => answer.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    writer.abort();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(text.ends_with(&format!("\r\n\r\n{want}")), "the origin read the whole upload: {text}");
}

/// A large response the client has not read yet, and the client's next
/// request pipelined behind it: the response arrives whole, then the next
/// one. The connection went back to waiting for a head when the response
/// was handed to hyper, before hyper had written it, so the head that came
/// next made the rest of the response look like hyper's own error answer:
/// it was cut, followed by a 400 for a valid request. That happens when the
/// response is a little larger than the socket buffers hold, which depends
/// on the kernel's tuning, so the test tries sizes from 1 to 6 MiB at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_pipelined_behind_an_unread_large_response_does_not_cut_it() {
    let origin = spawn_origin(|req: Request<Incoming>| async move {
        let len = req.uri().path().trim_start_matches("/big/").parse().unwrap_or(2);
        Response::new(full(vec![b'b'; len]))
    });
    let proxy = spawn_proxy("", &[USER]);
    let (host, auth) = (origin.authority(), auth());
    let mut tries = tokio::task::JoinSet::new();
    for size in (1 << 20..6 << 20).step_by(64 << 10) {
        let (origin_url, host, auth) = (origin.url("/"), host.clone(), auth.clone());
        tries.spawn(async move {
            let headers = [("Host", host.as_str()), ("Proxy-Authorization", auth.as_str())];
            let mut c = RawConn::connect(proxy.addr).await;
            c.send(request("GET", &format!("{origin_url}big/{size}"), &headers)).await;
            // The proxy reads the whole answer from the origin and holds
            // what the client's socket cannot take yet.
            tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
            c.send(request("GET", &format!("{origin_url}small"), &headers)).await;
            let first = c.read_response("GET").await;
            assert_eq!(first.status, 200, "{}", first.status_line);
            assert_eq!(first.body.len(), size, "the large answer arrives whole");
            let second = c.read_response("GET").await;
            assert_eq!(second.status, 200, "after {size} bytes: {}", second.dump());
            assert_eq!(second.body, b"bb");
        });
    }
    while let Some(done) = tries.join_next().await {
        if let Err(e) = done {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// A head pipelined behind a large response that is still being written
/// counts against `max_header_bytes` like any other: read while the response
/// went out, after an upload had made hyper read in large pieces, a 60 KB
/// head got past an 8 KiB limit to the origin. Its 431 comes after the
/// response, which arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_pipelined_behind_a_large_response_counts_against_the_head_limit() {
    let origin = spawn_sized_origin();
    let proxy = spawn_proxy("[limits]\nmax_header_bytes = 8192\n", &[USER]);
    let second = head_behind_a_large_response(proxy.addr, &origin, USER, &origin.url("/small")).await;
    assert_proxy_error(&second, 431, "http_request_error", "request_head_too_large");
}

/// A request head followed at once by a body larger than `max_header_bytes`
/// (in one read, as after a large upload hyper reads in large pieces): only
/// the head counts against the limit. After a 4 MB upload, the next POST's
/// head and body were counted together and got a 431.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_read_with_its_head_does_not_count_against_the_head_limit() {
    let origin = spawn_checksum_origin();
    let proxy = spawn_proxy("[limits]\nmax_header_bytes = 8192\n", &[USER]);
    let (host, auth) = (origin.authority(), auth());
    let mut c = RawConn::connect(proxy.addr).await;
    for (len, lf_only) in [(4_000_000, false), (200_000, false), (300_000, true)] {
        let len_text = len.to_string();
        let mut bytes = request(
            "POST",
            &origin.url("/upload"),
            &[("Host", &host), ("Proxy-Authorization", &auth), ("Content-Length", &len_text)],
        );
        if lf_only {
            // A bare LF ends the lines as well (RFC 9112 §2.2).
            bytes = String::from_utf8(bytes).unwrap().replace("\r\n", "\n").into_bytes();
        }
        bytes.extend_from_slice(&vec![b'u'; len]);
        c.send(bytes).await;
        let r = c.read_response("POST").await;
        assert_eq!(r.status, 200, "{len} bytes: {}", r.dump());
        assert!(r.text().starts_with(&format!("{len} ")), "{}", r.text());
    }
    // A head that is itself too large still gets its 431.
    let long = "v".repeat(10_000);
    let r = send_one(
        proxy.addr,
        "GET",
        &origin.url("/"),
        &[("Host", &host), ("Proxy-Authorization", &auth), ("X-Long", &long)],
    )
    .await;
    assert_eq!(r.status, 431, "{}", r.dump());
}

/// An origin that answers a request without reading its body, and keeps
/// the connection (against RFC 9112 §9.3), later reads that body as a
/// request: whatever a client put there. The connection is then reused only
/// for that client's user, so another user never gets the answer to it
/// (probe 107: bob's GET got the answer to the GET in alice's POST body,
/// which had passed no rule and had no access line). A user's connections
/// are still reused, for that user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_an_origin_left_unread_never_answers_another_users_request() {
    // Answers each request head it reads with its path and the number of
    // its connection; `/early` waits, then answers without reading the
    // body, and so does the request in that body.
    let conns = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = conns.clone();
    let origin = spawn_raw_origin(move |mut s: tokio::net::TcpStream| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        async move {
            while let Some(head) = read_request_head(&mut s).await {
                let head = String::from_utf8_lossy(&head).into_owned();
                let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                // Late enough for the next request to be on its way.
                if path == "/early" || path == "/smuggled" {
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                }
                let body = format!("{path} on connection {n}");
                let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                if s.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    });
    let proxy = spawn_proxy("", &[USER, BOB]);
    let host = origin.authority();
    let smuggled = format!("GET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let len = smuggled.len().to_string();
    let mut alice = RawConn::connect(proxy.addr).await;
    alice
        .send(request(
            "POST",
            &origin.url("/early"),
            &[("Host", &host), ("Proxy-Authorization", &auth()), ("Content-Length", &len)],
        ))
        .await;
    alice.send(&smuggled).await;
    let early = alice.read_response("POST").await;
    assert_eq!(early.text(), "/early on connection 1", "{}", early.dump());
    // At once: the answer to the smuggled request is on its way.
    for round in 0..2 {
        let mine = get_from(proxy.addr, &origin, "/mine", BOB).await;
        assert_eq!(mine.text(), "/mine on connection 2", "round {round}: {}", mine.dump());
    }
    assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// A body an origin sends behind its answer to HEAD (or a 204, a 304) that
/// declares a length, in a later write than the head, is read as the answer
/// to the next request on that connection: that connection is then reused
/// only for the same user, so another user never gets it (probe 165: bob's
/// GET got `EVIL!` from the body of alice's HEAD answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_late_behind_a_head_answer_never_answers_another_users_request() {
    late_body_never_reaches_bob("HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 43\r\n\r\n", false).await;
}

/// The same for a 204 whose first Content-Length field says `0` and a
/// second one `43`: every field counts (probe 169: only the first was read,
/// and bob got `EVIL!`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_body_behind_a_204_with_a_second_content_length_never_answers_another_user() {
    late_body_never_reaches_bob(
        "GET",
        "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nContent-Length: 43\r\n\r\n",
        false,
    )
    .await;
}

/// And for an interim answer (1xx, which authgate does not pass on) that
/// declares a body: hyper's client reads past it, and the bytes sent late
/// were bob's answer (probe 172: a `103` with `Content-Length: 43`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_body_behind_an_interim_answer_that_declares_one_never_answers_another_user() {
    late_body_never_reaches_bob(
        "GET",
        "HTTP/1.1 103 Early Hints\r\nContent-Length: 43\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        false,
    )
    .await;
    late_body_never_reaches_bob(
        "GET",
        "HTTP/1.1 100 Continue\r\nTransfer-Encoding: chunked\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        false,
    )
    .await;
    // An interim answer that says `Connection: close`: the connection is
    // not used again (RFC 9112 §9.6; probe 174: it was pooled), not even
    // for alice herself.
    late_bytes_never_answer(
        "GET",
        "HTTP/1.1 103 Early Hints\r\nConnection: close\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        false,
        USER,
    )
    .await;
}

/// The same when alice's GET was sent again on a new connection, because
/// the pooled one closed under it: the request made again lost the hook
/// that sees interim answers (probe 174: bob got the bytes behind the
/// `103`). The hook still sees a `103` that says `Connection: close` on
/// the request sent again: that connection is not pooled, not even for
/// alice herself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_body_behind_an_interim_answer_to_a_request_sent_again_never_answers_another_user() {
    late_body_never_reaches_bob(
        "GET",
        "HTTP/1.1 103 Early Hints\r\nContent-Length: 43\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        true,
    )
    .await;
    late_bytes_never_answer(
        "GET",
        "HTTP/1.1 103 Early Hints\r\nConnection: close\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        true,
        USER,
    )
    .await;
}

/// And behind an ordinary, complete answer: an origin that sends a second,
/// unasked-for response in a later write has it read as the answer to the
/// next request on that connection, and each answer after it as the answer
/// to the request after its own, for as long as the connection is reused at
/// once (probe 193: 40 of 40 answers went to the wrong request, alice's to
/// bob and bob's to alice). Nothing on the wire tells such bytes from a real
/// answer, so a connection serves one user only: bob never gets them, nor
/// any answer of alice's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_second_response_behind_a_complete_answer_never_answers_another_user() {
    late_body_never_reaches_bob("GET", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false).await;
    late_body_never_reaches_bob("GET", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true).await;
}

/// [`late_bytes_never_answer`] with bob sending next.
async fn late_body_never_reaches_bob(method: &str, head: &'static str, retried: bool) {
    late_bytes_never_answer(method, head, retried, BOB).await;
}

const BOB: (&str, &str) = ("bob", "bob-pw");

/// Alice's `method` to `/late` is answered with `head` and, 300 ms later,
/// bytes that read as a response (`EVIL!`); `next`'s GET right after must
/// get its own answer, on a connection of its own. When `retried`, alice
/// first gets `/warm` and waits, and the origin's connection that answered
/// it closes as `/late` arrives on it: `/late` is sent again on a new one.
async fn late_bytes_never_answer(method: &str, head: &'static str, retried: bool, next: (&str, &str)) {
    let conns = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = conns.clone();
    let origin = spawn_raw_origin(move |mut s: tokio::net::TcpStream| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        async move {
            while let Some(request) = read_request_head(&mut s).await {
                let request = String::from_utf8_lossy(&request).into_owned();
                let path = request.split(' ').nth(1).unwrap_or("").to_owned();
                let answer = if retried && n == 1 && path.ends_with("/late") {
                    // Closed as the request arrives (a keep-alive timeout).
                    return;
                } else if path.ends_with("/late") {
                    // The head, then (late enough for the next request to be
                    // on its way) a body that reads as a response.
                    let _ = s.write_all(head.as_bytes()).await;
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                    "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!".to_owned()
                } else {
                    let body = format!("{path} on connection {n}");
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                };
                if s.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    });
    let proxy = spawn_proxy("", &[USER, BOB]);
    let host = origin.authority();
    let mut alice = RawConn::connect(proxy.addr).await;
    if retried {
        let warm = [("Host", host.as_str()), ("Proxy-Authorization", &auth())];
        alice.send(request("GET", &origin.url("/warm"), &warm)).await;
        let warm = alice.read_response("GET").await;
        assert_eq!(warm.text(), "/warm on connection 1", "{}", warm.dump());
        // Idle long enough for the request to be kept to send again.
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    }
    alice
        .send(request(method, &origin.url("/late"), &[("Host", &host), ("Proxy-Authorization", &auth())]))
        .await;
    let first = alice.read_response(method).await;
    assert!(matches!(first.status, 200 | 204), "{}", first.dump());
    // At once: the body is on its way.
    let mine = get_from(proxy.addr, &origin, "/mine", next).await;
    let expected = if retried { 3 } else { 2 };
    assert_eq!(mine.text(), format!("/mine on connection {expected}"), "{}", mine.dump());
    // That connection is pooled for its user.
    let again = get_from(proxy.addr, &origin, "/again", next).await;
    assert_eq!(again.text(), format!("/again on connection {expected}"), "{}", again.dump());
    assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), expected);
}
