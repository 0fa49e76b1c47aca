//! CONNECT tunnels, and what a client sees when the target cannot be reached.

mod common;

use common::*;

const USER: (&str, &str) = ("alice", "alice-pw");

/// Opens a tunnel to `target` and returns the connection after the 200.
async fn open_tunnel(proxy: &Proxy, target: &str) -> RawConn {
    let auth = basic(USER.0, USER.1);
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(request("CONNECT", target, &[("Host", target), ("Proxy-Authorization", &auth)])).await;
    let head = conn.read_head().await;
    assert_eq!(head.status, 200, "{}", head.dump());
    assert!(head.status_line.starts_with("HTTP/1.1 200"), "{}", head.status_line);
    assert!(
        head.header("transfer-encoding").is_none(),
        "a 2xx to CONNECT has no body framing: {}",
        head.dump()
    );
    conn
}

#[tokio::test]
async fn connect_tunnel_carries_bytes_both_ways() {
    let origin = spawn_shout_origin();
    let proxy = spawn_proxy("", &[USER]);
    let mut tunnel = open_tunnel(&proxy, &origin.authority()).await;
    tunnel.send(b"hello through the tunnel").await;
    assert_eq!(tunnel.read_exact(24).await, b"HELLO THROUGH THE TUNNEL");
    // Bytes that look like HTTP are just bytes inside a tunnel.
    tunnel.send(b"GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(tunnel.read_exact(18).await, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn connect_tunnel_respects_half_close() {
    let origin = spawn_shout_origin();
    let proxy = spawn_proxy("", &[USER]);
    let mut tunnel = open_tunnel(&proxy, &origin.authority()).await;
    tunnel.send(b"last words").await;
    assert_eq!(tunnel.read_exact(10).await, b"LAST WORDS");
    // We are done sending; the origin answers our FIN with its final data,
    // which must still reach us, followed by EOF.
    tunnel.shutdown_write().await;
    assert_eq!(
        tunnel.read_to_end().await,
        b"BYE\n",
        "the origin's data after our half-close must arrive, then EOF"
    );
}

#[tokio::test]
async fn connect_tunnel_keeps_the_client_side_open_after_the_origin_finishes() {
    // The origin greets, shuts down its write side at once, then reads what
    // the client still has to say until the client's EOF.
    let (tx, rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
    let tx = std::sync::Mutex::new(Some(tx));
    let origin = spawn_raw_origin(move |mut stream: tokio::net::TcpStream| {
        let tx = tx.lock().unwrap().take();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = stream.write_all(b"greetings, then silence\n").await;
            let _ = stream.shutdown().await;
            let mut got = Vec::new();
            let _ = stream.read_to_end(&mut got).await;
            if let Some(tx) = tx {
                let _ = tx.send(got);
            }
        }
    });
    let proxy = spawn_proxy("", &[USER]);
    let mut tunnel = open_tunnel(&proxy, &origin.authority()).await;
    assert_eq!(tunnel.read_exact(24).await, b"greetings, then silence\n");
    assert!(tunnel.is_closed().await, "the origin's EOF should reach the client");
    // The client may still send after the origin finished.
    tunnel.send(b"the client still talks").await;
    tunnel.shutdown_write().await;
    let got = tokio::time::timeout(READ_DEADLINE, rx)
        .await
        .expect("origin never saw the client's EOF")
        .expect("origin handler gone");
    assert_eq!(got, b"the client still talks");
}

#[tokio::test]
async fn connect_without_credentials_gets_407() {
    let origin = spawn_shout_origin();
    let proxy = spawn_proxy("", &[USER]);
    let target = origin.authority();
    let resp = send_one(proxy.addr, "CONNECT", &target, &[("Host", &target)]).await;
    assert_proxy_error(&resp, 407, "http_request_denied", "proxy_auth_required");
    assert_eq!(
        resp.header("proxy-authenticate"),
        Some(format!("Basic realm=\"{REALM}\", charset=\"UTF-8\"").as_str())
    );
    assert_eq!(origin.hits(), 0, "no connection to the target without credentials");
}

/// A CONNECT answered 407 closes its connection, as every refused CONNECT
/// does: bytes a client sent ahead for the tunnel were read as its next
/// request, and one with credentials of its own went out to its own origin
/// (probe 132). The retry with credentials, on a new connection, opens the
/// tunnel.
#[tokio::test]
async fn connect_407_closes_and_the_retry_with_credentials_opens_the_tunnel() {
    let origin = spawn_shout_origin();
    let echo = spawn_echo_origin();
    let proxy = spawn_proxy("", &[USER]);
    let target = origin.authority();
    let auth = basic(USER.0, USER.1);
    let mut conn = RawConn::connect(proxy.addr).await;
    let mut ahead = request("CONNECT", &target, &[("Host", &target)]);
    // Sent ahead for the tunnel: a request of the proxy's form, with
    // credentials.
    let host = echo.authority();
    ahead.extend(request("GET", &echo.url("/ahead"), &[("Host", &host), ("Proxy-Authorization", &auth)]));
    conn.send(ahead).await;
    let first = conn.read_response("CONNECT").await;
    assert_eq!(first.status, 407, "{}", first.dump());
    assert_eq!(first.header("connection"), Some("close"), "{}", first.dump());
    assert!(conn.read_to_end().await.is_empty(), "nothing more on it");
    assert_eq!(echo.hits(), 0, "the bytes sent ahead were not run as a request");

    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(request("CONNECT", &target, &[("Host", &target), ("Proxy-Authorization", &auth)])).await;
    let second = conn.read_head().await;
    assert_eq!(second.status, 200, "{}", second.dump());
    conn.send(b"retry worked").await;
    assert_eq!(conn.read_exact(12).await, b"RETRY WORKED");
}

/// The same for an upgrade (`Upgrade: websocket`) authgate refuses, with a
/// 407 or a 403: a request sent ahead behind it was run (probe 165). Its
/// retry with credentials goes out.
#[tokio::test]
async fn a_refused_upgrade_closes_its_connection() {
    let echo = spawn_echo_origin();
    let denied = spawn_echo_origin();
    let port = denied.authority().rsplit_once(':').map(|(_, p)| p.to_owned()).unwrap();
    let rule = format!("[[rules]]\nname = \"no\"\naction = \"deny\"\nports = [{port}]\n");
    let proxy = spawn_proxy(&rule, &[USER]);
    let auth = basic(USER.0, USER.1);
    for (origin, creds, status) in [(&echo, None, 407), (&denied, Some(auth.as_str()), 403)] {
        let mut conn = RawConn::connect(proxy.addr).await;
        let host = origin.authority();
        let mut fields = vec![("Host", host.as_str()), ("Connection", "upgrade"), ("Upgrade", "websocket")];
        fields.extend(creds.map(|c| ("Proxy-Authorization", c)));
        let mut ahead = request("GET", &origin.url("/up"), &fields);
        let echo_host = echo.authority();
        ahead.extend(request(
            "GET",
            &echo.url("/ahead"),
            &[("Host", &echo_host), ("Proxy-Authorization", &auth)],
        ));
        conn.send(ahead).await;
        let first = conn.read_response("GET").await;
        assert_eq!(first.status, status, "{}", first.dump());
        assert_eq!(first.header("connection"), Some("close"), "{}", first.dump());
        assert!(conn.read_to_end().await.is_empty(), "nothing more on it");
        assert_eq!(echo.hits() + denied.hits(), 0, "the request sent ahead was not run");
    }
}

#[tokio::test]
async fn connect_with_wrong_password_gets_407() {
    let origin = spawn_shout_origin();
    let proxy = spawn_proxy("", &[USER]);
    let target = origin.authority();
    let auth = basic(USER.0, "nope");
    let resp =
        send_one(proxy.addr, "CONNECT", &target, &[("Host", &target), ("Proxy-Authorization", &auth)]).await;
    assert_proxy_error(&resp, 407, "http_request_denied", "proxy_auth_required");
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn connect_to_a_closed_port_gets_502_connection_refused() {
    let proxy = spawn_proxy("", &[USER]);
    let target = format!("127.0.0.1:{}", closed_port());
    let auth = basic(USER.0, USER.1);
    let resp =
        send_one(proxy.addr, "CONNECT", &target, &[("Host", &target), ("Proxy-Authorization", &auth)]).await;
    assert_proxy_error(&resp, 502, "connection_refused", "connection_refused");
    assert_eq!(resp.header("proxy-status"), Some("authgate; error=connection_refused"));
}

#[tokio::test]
async fn get_to_an_unreachable_origin_gets_502() {
    let proxy = spawn_proxy("", &[USER]);
    let target = format!("127.0.0.1:{}", closed_port());
    let auth = basic(USER.0, USER.1);
    let resp =
        get(proxy.addr, &format!("http://{target}/"), &[("Host", &target), ("Proxy-Authorization", &auth)])
            .await;
    assert_proxy_error(&resp, 502, "connection_refused", "connection_refused");
}

/// RFC 9110 §9.3.6: a CONNECT request has no content. One that declares a
/// body is refused and its connection closed, since whether the bytes after
/// the head are that body or tunnel data is ambiguous; `Content-Length: 0`
/// is accepted.
#[tokio::test]
async fn connect_that_declares_a_body_is_refused_and_closed() {
    let origin = spawn_shout_origin();
    let proxy = spawn_proxy("", &[USER]);
    let auth = basic(USER.0, USER.1);
    let target = origin.authority();
    for (name, value, body) in [
        ("Content-Length", "5", &b"hello"[..]),
        ("Transfer-Encoding", "chunked", &b"5\r\nhello\r\n0\r\n\r\n"[..]),
    ] {
        let mut conn = RawConn::connect(proxy.addr).await;
        let mut head =
            request("CONNECT", &target, &[("Host", &target), ("Proxy-Authorization", &auth), (name, value)]);
        head.extend_from_slice(body);
        conn.send(head).await;
        let resp = conn.read_response("GET").await;
        assert_proxy_error(&resp, 400, "http_request_error", "connect_with_body");
        assert_eq!(resp.header("connection"), Some("close"), "{}", resp.dump());
        assert!(conn.is_closed().await, "{name}: the connection is closed");
    }
    assert_eq!(origin.hits(), 0, "no tunnel was opened");

    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(request(
        "CONNECT",
        &target,
        &[("Host", &target), ("Proxy-Authorization", &auth), ("Content-Length", "0")],
    ))
    .await;
    assert_eq!(conn.read_head().await.status, 200);
    conn.send(b"ok").await;
    assert_eq!(conn.read_exact(2).await, b"OK");
}

/// hyper opens no tunnel for an HTTP/1.0 CONNECT that carries `Upgrade`:
/// it is refused before the target is dialled (it got a 200, then the
/// connection closed with nothing relayed, logged as the client gone;
/// probe 153). Over HTTP/1.1, and over HTTP/1.0 without `Upgrade`, the
/// tunnel works.
#[tokio::test]
async fn an_http_1_0_connect_with_upgrade_is_refused_before_the_dial() {
    let origin = spawn_shout_origin();
    let proxy = spawn_proxy("", &[USER]);
    let auth = basic(USER.0, USER.1);
    let target = origin.authority();
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(format!(
        "CONNECT {target} HTTP/1.0\r\nHost: {target}\r\nProxy-Authorization: {auth}\r\nUpgrade: foo\r\n\r\n"
    ))
    .await;
    let resp = conn.read_response("GET").await;
    assert_proxy_error(&resp, 400, "http_request_error", "malformed_request");
    assert!(resp.text().contains("HTTP/1.0 CONNECT with an Upgrade field"), "{}", resp.dump());
    assert!(conn.is_closed().await, "the connection is closed");
    assert_eq!(origin.hits(), 0, "the target was not dialled");
    for (version, upgrade) in [("1.1", "Upgrade: foo\r\n"), ("1.0", "")] {
        let mut conn = RawConn::connect(proxy.addr).await;
        conn.send(format!(
            "CONNECT {target} HTTP/{version}\r\nHost: {target}\r\nProxy-Authorization: {auth}\r\n{upgrade}\r\n"
        ))
        .await;
        assert_eq!(conn.read_head().await.status, 200, "HTTP/{version}");
        conn.send(b"ok").await;
        assert_eq!(conn.read_exact(2).await, b"OK", "HTTP/{version}");
    }
}

/// A client may send its first tunnel bytes right behind the CONNECT,
/// before the answer. When the tunnel is refused, those bytes must not be
/// read as the client's next request (here, one that would reach an origin
/// with the client's credentials): the connection closes after the refusal.
#[tokio::test]
async fn bytes_sent_ahead_of_a_refused_connect_are_never_run_as_a_request() {
    let origin = spawn_echo_origin();
    let denied = format!("127.0.0.1:{}", closed_port());
    let rules = format!(
        "[[rules]]\nname = \"no-closed-port\"\naction = \"deny\"\nports = [{}]\n",
        denied.rsplit(':').next().unwrap()
    );
    let proxy = spawn_proxy(&rules, &[USER]);
    let auth = basic(USER.0, USER.1);
    for target in [denied.clone(), format!("127.0.0.1:{}", closed_port())] {
        let mut conn = RawConn::connect(proxy.addr).await;
        let mut bytes = request("CONNECT", &target, &[("Host", &target), ("Proxy-Authorization", &auth)]);
        bytes.extend(request(
            "GET",
            &origin.url("/smuggled"),
            &[("Host", &origin.authority()), ("Proxy-Authorization", &auth)],
        ));
        conn.send(bytes).await;
        let refused = conn.read_response("CONNECT").await;
        assert!(refused.status == 403 || refused.status == 502, "{}", refused.dump());
        assert_eq!(refused.header("connection"), Some("close"), "{}", refused.dump());
        assert!(conn.is_closed().await, "closed after the refusal");
    }
    assert_eq!(origin.hits(), 0, "the bytes sent ahead never reached an origin");
}

/// An origin that sends its answer and then resets the connection, without
/// reading what the client still uploads (as a server refusing an upload
/// does): the client, which has not read the answer yet, still gets all of
/// it, then an ordinary close (README, "When one side of a tunnel resets or
/// fails"). authgate used to drop both sockets at the failure: the kernel
/// reset the client's, which held unread upload, and threw away what was
/// still queued for the client (probe 109: a 413 never arrived).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_resets_still_gets_its_answer_to_a_client_that_uploads() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // More than the client's small receive buffer holds, so that some of
    // it waits in the proxy when the origin resets; small enough to have
    // left the origin's socket by then (the reset throws away what is still
    // queued there): 512 KiB did too, here; 1 MiB did not.
    const ANSWER: usize = 256 * 1024;
    let origin = spawn_raw_origin(|mut s: tokio::net::TcpStream| async move {
        let _ = s.write_all(&pattern(0, ANSWER)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    });
    let proxy = spawn_proxy("", &[USER]);
    let target = origin.authority();
    for round in 0..3 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let mut stream = sock.connect(proxy.addr).await.unwrap();
        let auth = basic(USER.0, USER.1);
        stream
            .write_all(&request("CONNECT", &target, &[("Host", &target), ("Proxy-Authorization", &auth)]))
            .await
            .unwrap();
        let mut head = Vec::new();
        while find(&head, b"\r\n\r\n").is_none() {
            let mut byte = [0u8; 1];
            assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "closed before the 200");
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
        let (mut rd, mut wr) = stream.into_split();
        // More than the origin's and the proxy's buffers hold: some of it
        // is still unread in the proxy's socket when the origin resets.
        let upload = tokio::spawn(async move {
            let _ = wr.write_all(&vec![b'u'; 4 << 20]).await;
            wr
        });
        // The reset comes while the answer waits for this client.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let mut got = Vec::new();
        let end = tokio::time::timeout(READ_DEADLINE, rd.read_to_end(&mut got)).await.expect("no end");
        assert!(end.is_ok(), "round {round}: the client saw {end:?} after {} bytes, not a close", got.len());
        assert_eq!(got.len(), ANSWER, "round {round}: the answer was cut");
        assert!(got == pattern(0, ANSWER), "round {round}: the answer arrived garbled");
        drop(upload.await.unwrap());
    }
}

/// A client that resets its tunnel while the origin is silent: the origin
/// gets what the client sent, then an ordinary close at once, not after
/// the tunnel's idle timeout (an hour by default) with nothing more to come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_resets_closes_its_tunnel_to_a_silent_origin() {
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Option<usize>>();
    let origin = spawn_raw_origin(move |mut s: tokio::net::TcpStream| {
        let tx = tx.clone();
        async move {
            // Reports each read's total, then None at the end of the stream.
            let mut total = 0;
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = s.read(&mut chunk).await {
                total += n;
                let _ = tx.send(Some(total));
            }
            let _ = tx.send(None);
        }
    });
    let proxy = spawn_proxy("", &[USER]);
    let mut tunnel = open_tunnel(&proxy, &origin.authority()).await;
    tunnel.send(vec![b'c'; 1000]).await;
    while let Some(Some(total)) = rx.recv().await {
        if total == 1000 {
            break;
        }
    }
    let stream = tunnel.into_stream();
    socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)).unwrap();
    drop(stream);
    let end = tokio::time::timeout(READ_DEADLINE, rx.recv()).await;
    assert!(matches!(end, Ok(Some(None))), "the origin saw no close: {end:?}");
}

/// After a client resets its tunnel, authgate takes no more from the
/// origin than its buffers hold: it read and threw away up to 64 MiB of an
/// origin that kept sending, counted nowhere (probe 110: 68 MB in 45 ms,
/// for 35 bytes sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reset_does_not_have_authgate_drain_the_origin() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    let sent = std::sync::Arc::new(AtomicU64::new(0));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let counter = sent.clone();
    let origin = spawn_raw_origin(move |mut s: tokio::net::TcpStream| {
        let (counter, done_tx) = (counter.clone(), done_tx.clone());
        async move {
            let chunk = vec![b'o'; 64 * 1024];
            while s.write_all(&chunk).await.is_ok() {
                counter.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
            let _ = done_tx.send(());
        }
    });
    let proxy = spawn_proxy("", &[USER]);
    let mut tunnel = open_tunnel(&proxy, &origin.authority()).await;
    // A request went up just before: the download it asked for is given
    // up on. The origin was then read for 4 MiB and kept for the whole
    // 2 s linger (probe 293): only a client's half-close calls for that.
    tunnel.send(vec![b'r'; 200]).await;
    tunnel.read_exact(1024).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let at_reset = sent.load(Ordering::SeqCst);
    let stream = tunnel.into_stream();
    socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)).unwrap();
    drop(stream);
    let ended = tokio::time::timeout(Duration::from_secs(1), done_rx.recv()).await;
    assert!(ended.is_ok(), "the origin connection was not closed at once (the linger is 2 s)");
    let after = sent.load(Ordering::SeqCst) - at_reset;
    assert!(after < 16 << 20, "the origin sent {after} bytes after the client's reset");
}

/// A client that resets its tunnel while the origin, busy sending, has not
/// yet read what the client sent: all of it still reaches the origin,
/// then its end. authgate closed the origin's socket at once, with the
/// origin's bytes unread in it, which made the kernel reset it and throw
/// away what it still had to send: the client's last 33 to 176 KB, read
/// and counted in `bytes_up`, never arrived (probe 289). The same when the
/// client half-closed first: its end had gone to the origin already, and
/// the origin got 4 KiB of it (probe 292).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reset_still_delivers_what_it_sent_to_an_origin_that_reads_late() {
    // (64 KiB: all of it in authgate's socket, and its end passed on,
    // before the reset.)
    for (sent, half_close_first) in [(256 * 1024, false), (64 * 1024, true)] {
        let got = reset_while_a_slow_origin_sends(sent, half_close_first).await;
        assert_eq!(got, Some((sent, true)), "half-closed first: {half_close_first} (bytes intact, a FIN)");
    }
}

/// Sends `sent` bytes up a tunnel to an origin that sends all the time and
/// reads only after 500 ms, slowly, then resets (after a half-close if
/// asked); how many bytes the origin got intact, and whether a FIN ended
/// them.
async fn reset_while_a_slow_origin_sends(sent: usize, half_close_first: bool) -> Option<(usize, bool)> {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A small receive buffer, and a slow reader: what the client sent waits
    // in authgate's socket, not in the origin's.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(8).unwrap();
    let origin = listener.local_addr().unwrap();
    let reader = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let (mut r, mut w) = s.into_split();
        tokio::spawn(async move {
            let chunk = vec![b'o'; 64 * 1024];
            while w.write_all(&chunk).await.is_ok() {}
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (mut got, mut chunk) = (Vec::new(), [0u8; 2048]);
        let clean = loop {
            match r.read(&mut chunk).await {
                Ok(0) => break true,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(_) => break false,
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        (if got == pattern(0, sent) { got.len() } else { got.len() + usize::from(got.len() == sent) }, clean)
    });
    let proxy = spawn_proxy("", &[USER]);
    let mut tunnel = open_tunnel(&proxy, &origin.to_string()).await;
    tunnel.send(pattern(0, sent)).await;
    let mut stream = tunnel.into_stream();
    if half_close_first {
        stream.shutdown().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)).unwrap();
    drop(stream);
    tokio::time::timeout(READ_DEADLINE, reader).await.ok().map(Result::unwrap)
}

/// A bulk tunnel (its directions moved on to `splice(2)`) carries the bytes
/// behind TCP urgent data (`MSG_OOB`, which telnet and FTP send): splice
/// stops in front of the urgent byte, and authgate took that for the end of
/// the stream, or waited for good. Upload: the bytes behind it stalled, and
/// reached the origin only as a FIN without them. Download: the client got
/// the first half and a clean close (probe 210). The urgent byte itself is
/// dropped, as a reader that does not ask for it drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_behind_tcp_urgent_data_cross_a_bulk_tunnel_both_ways() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Far more than the 64 KiB after which a direction splices.
    const HALF: usize = 4 << 20;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
    let origin = spawn_raw_origin(move |mut s: tokio::net::TcpStream| {
        let tx = tx.clone();
        async move {
            let mut got = vec![0u8; 2 * HALF];
            let whole = s.read_exact(&mut got).await.is_ok() && got == pattern(0, 2 * HALF);
            let _ = tx.send(whole);
            // The same the other way: half, an urgent byte, half, a FIN.
            let _ = s.write_all(&pattern(0, HALF)).await;
            let _ = socket2::SockRef::from(&s).send_out_of_band(b"!");
            let _ = s.write_all(&pattern(HALF as u64, HALF)).await;
            let _ = s.shutdown().await;
            let _ = s.read_to_end(&mut Vec::new()).await;
        }
    });
    let proxy = spawn_proxy("", &[USER]);
    let mut stream = open_tunnel(&proxy, &origin.authority()).await.into_stream();
    stream.write_all(&pattern(0, HALF)).await.unwrap();
    socket2::SockRef::from(&stream).send_out_of_band(b"!").unwrap();
    stream.write_all(&pattern(HALF as u64, HALF)).await.unwrap();
    // No FIN: an interactive tunnel's bytes must go on without one.
    let up = tokio::time::timeout(READ_DEADLINE, rx.recv()).await;
    assert!(matches!(up, Ok(Some(true))), "the upload behind the urgent byte did not arrive whole: {up:?}");
    let mut down = Vec::new();
    let end = tokio::time::timeout(READ_DEADLINE, stream.read_to_end(&mut down)).await.expect("no end");
    assert!(end.is_ok(), "{end:?}");
    assert_eq!(down.len(), 2 * HALF, "the download ended at the urgent byte");
    assert!(down == pattern(0, 2 * HALF), "the download arrived garbled");
}

/// An urgent byte right before the client's end (its FIN), on an upload
/// that moved on to `splice(2)`: splice stops at the byte and sees the end,
/// and the byte stayed unread in authgate's socket, whose close was then a
/// reset that threw away the download the client had not read yet (probe
/// 395: up to 172 KB of 4 MB lost in 10 of 10 runs, the tunnel logged as
/// closed with all of it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_urgent_byte_before_the_clients_end_does_not_cost_it_the_download() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // More than the 64 KiB after which a direction splices.
    const UP: usize = 200_000;
    const DOWN: usize = 4 << 20;
    let origin = spawn_raw_origin(|mut s: tokio::net::TcpStream| async move {
        let mut got = Vec::new();
        if s.read_to_end(&mut got).await.is_ok() && got == pattern(0, UP) {
            let _ = s.write_all(&pattern(0, DOWN)).await;
        }
        let _ = s.shutdown().await;
    });
    let proxy = spawn_proxy("", &[USER]);
    for round in 0..3 {
        let mut stream = open_tunnel(&proxy, &origin.authority()).await.into_stream();
        stream.write_all(&pattern(0, UP)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        socket2::SockRef::from(&stream).send_out_of_band(b"!").unwrap();
        stream.shutdown().await.unwrap();
        // Read late: the download waits in the kernel's buffers meanwhile.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut down = Vec::new();
        let end = tokio::time::timeout(READ_DEADLINE, stream.read_to_end(&mut down)).await.expect("no end");
        assert!(end.is_ok(), "round {round}: {end:?} after {} bytes of {DOWN}", down.len());
        assert!(down == pattern(0, DOWN), "round {round}: {} bytes, or garbled", down.len());
    }
}

/// Bytes behind an urgent byte on a spliced upload, then the client's
/// reset: splice stops at the byte and, the reset having come, fails there,
/// with the bytes behind it still readable; they were read in the close's
/// drain and thrown away, where the README says bytes that reached authgate
/// before a reset still go out (probe 398: the last 1,000 bytes of 8 MiB
/// lost in 6 of 6 runs). The origin reads nothing for a while, so the
/// pipe is full when the reset comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_behind_an_urgent_byte_reach_the_origin_though_the_client_then_resets() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const BULK: usize = 8 << 20;
    const TAIL: usize = 1000;
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    socket.listen(8).unwrap();
    socket.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(socket.into()).unwrap();
    let origin = listener.local_addr().unwrap();
    let received = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut got = Vec::new();
        let _ = tokio::time::timeout(READ_DEADLINE, s.read_to_end(&mut got)).await;
        got
    });
    // The binary, for its access line.
    let dir = TempDir::new();
    let extra = "[policy]\ndefault = \"allow\"\n[log]\nlevel = \"info\"\n[reload]\nwatch = false\n";
    let bin = start_binary(&dir, extra, &users_toml(&[USER]), std::process::Stdio::piped());
    let mut conn = RawConn::connect(bin.addr).await;
    let target = origin.to_string();
    conn.send(request(
        "CONNECT",
        &target,
        &[("Host", &target), ("Proxy-Authorization", &basic(USER.0, USER.1))],
    ))
    .await;
    assert_eq!(conn.read_head().await.status, 200);
    let mut stream = conn.into_stream();
    stream.write_all(&pattern(0, BULK)).await.unwrap();
    socket2::SockRef::from(&stream).send_out_of_band(b"!").unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.write_all(&pattern(BULK as u64, TAIL)).await.unwrap();
    // Reset once authgate's kernel has taken every byte (the client's send
    // queue empty: a reset drops what it still holds).
    let local = stream.local_addr().unwrap();
    for _ in 0..500 {
        if send_queue(local) == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(send_queue(local), Some(0), "the client's bytes did not all leave it");
    stream.set_zero_linger().unwrap();
    drop(stream);
    let got = received.await.unwrap();
    assert_eq!(got.len(), BULK + TAIL, "the bytes behind the urgent byte");
    assert!(got == pattern(0, BULK + TAIL), "garbled");
    // And the reset is told as one: the error splice took at the urgent
    // byte came after those bytes, and the tunnel was logged as closed
    // (probe 399).
    let out = tokio::task::spawn_blocking(move || bin.stop()).await.unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    let line =
        log.lines().find(|l| l.contains("authgate::access") && l.contains("CONNECT")).unwrap_or_default();
    assert!(line.contains("outcome=\"tunnel_error\""), "{log}");
}

/// A tunnel authgate cuts ends with a reset on both sides: a side that took
/// nothing for `send_timeout`, and the end of shutdown's grace (a
/// revocation: `tests/reload.rs`). It ended with a FIN, which a reader of a
/// stream without a length (a download, an upload) takes for its whole end
/// (probe 210: 44 MB of 500 arrived as a clean download). A forwarded
/// response cut so ends with a reset too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_authgate_cuts_end_with_a_reset() {
    use std::time::Duration;
    let stalls = "[limits]\nsend_timeout = \"1s\"\ntunnel_idle_timeout = \"1s\"\n";
    let proxy = spawn_proxy(stalls, &[USER]);
    let stalled = OneWayTunnels::open(proxy.addr, USER, Duration::from_millis(2500)).await;
    assert_eq!(stalled.ends().await, (StreamEnd::Reset, StreamEnd::Reset), "readers that stalled");

    let proxy = spawn_proxy("[limits]\nshutdown_grace = \"300ms\"\n", &[USER]);
    let open = OneWayTunnels::open(proxy.addr, USER, Duration::ZERO).await;
    let stopping = tokio::spawn(proxy.stop());
    assert_eq!(open.ends().await, (StreamEnd::Reset, StreamEnd::Reset), "at the end of the grace");
    stopping.await.unwrap();
}

/// Bytes sent behind the urgent byte in [`send_urgently`].
const REST: usize = 300_000;

/// Urgent data at a tunnel's start, before any direction splices: a read
/// that stops at the urgent byte (recv(2) does, when it has bytes before
/// it) looks to tokio like a drained socket, and with the rest already
/// queued no wake-up came: 10 bytes crossed, then nothing until the idle
/// timeout, which ended the tunnel with a FIN as if all had (probe 212: 5
/// of 6 runs). Five rounds, as the stop needs the rest queued in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urgent_data_at_a_tunnels_start_does_not_stall_it() {
    use tokio::io::AsyncReadExt;
    let origin = spawn_raw_origin(|mut s: tokio::net::TcpStream| async move {
        let (mut rd, mut wr) = s.split();
        let mut got = vec![0u8; 10 + REST];
        if rd.read_exact(&mut got).await.is_ok() && got == pattern(0, 10 + REST) {
            send_urgently(&mut wr).await;
            let _ = rd.read_to_end(&mut Vec::new()).await;
        }
    });
    let proxy = spawn_proxy("", &[USER]);
    for round in 0..5 {
        let stream = open_tunnel(&proxy, &origin.authority()).await.into_stream();
        let (mut rd, mut wr) = stream.into_split();
        let writer = tokio::spawn(async move {
            send_urgently(&mut wr).await;
            wr
        });
        let mut down = vec![0u8; 10 + REST];
        let read = tokio::time::timeout(READ_DEADLINE, rd.read_exact(&mut down)).await;
        assert!(matches!(read, Ok(Ok(_))), "round {round}: the tunnel stalled at the urgent byte: {read:?}");
        assert!(down == pattern(0, 10 + REST), "round {round}: garbled");
        drop(writer.await.unwrap());
    }
}

/// An urgent byte among the bytes sent right behind the CONNECT head: hyper
/// read the head with tokio's `poll_read`, which stopped at the urgent byte
/// and took the short read for a drained socket, and the bytes queued
/// behind it waited for the idle timeout, then were lost behind a clean
/// close (probe 398: 2 of 10 runs). Twenty rounds, each sent at once from
/// a blocking socket so that the head is read with the rest queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_urgent_byte_right_behind_the_connect_head_does_not_stall_the_rest() {
    use std::io::{Read, Write};
    let origin = spawn_raw_origin(|mut s: tokio::net::TcpStream| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut got = [0u8; 7];
        if s.read_exact(&mut got).await.is_ok() {
            let _ = s.write_all(&got).await;
        }
        let _ = s.read_to_end(&mut Vec::new()).await;
    });
    let proxy = spawn_proxy("[limits]\ntunnel_idle_timeout = \"30s\"\n", &[USER]);
    let target = origin.authority();
    let head =
        request("CONNECT", &target, &[("Host", &target), ("Proxy-Authorization", &basic(USER.0, USER.1))]);
    let addr = proxy.addr;
    let rounds = tokio::task::spawn_blocking(move || {
        (0..20)
            .map(|round| {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.set_nodelay(true).unwrap();
                s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
                // `0000!`, the `!` urgent, right behind the head; then `def`.
                let sock = socket2::SockRef::from(&s);
                sock.send_out_of_band(&[&head[..], b"0000!"].concat()).unwrap();
                s.write_all(b"def").unwrap();
                let mut got = Vec::new();
                let mut byte = [0u8; 1];
                while !got.ends_with(b"0000def") {
                    match s.read(&mut byte) {
                        Ok(1) => got.push(byte[0]),
                        other => {
                            return Err(format!(
                                "round {round}: {other:?} after {:?}",
                                String::from_utf8_lossy(&got)
                            ));
                        }
                    }
                }
                Ok(())
            })
            .collect::<Result<Vec<()>, String>>()
    })
    .await
    .unwrap();
    assert!(rounds.is_ok(), "the bytes behind the urgent byte stalled: {rounds:?}");
}

/// The same for an upgrade: an urgent byte among the bytes an origin sends
/// right behind its 101, which hyper's client read with `poll_read`
/// (twenty rounds). The relay's first read of each plain TCP side goes to
/// the socket itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_urgent_byte_right_behind_a_101_does_not_stall_the_rest() {
    let origin = spawn_raw_origin(|mut s: tokio::net::TcpStream| async move {
        use tokio::io::AsyncReadExt;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).await.is_ok_and(|n| n == 1) {
            head.push(byte[0]);
        }
        let sock = socket2::SockRef::from(&s);
        let answer =
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n0000!";
        let _ = sock.send_out_of_band(answer);
        let _ = sock.send(b"def");
        let _ = s.read_to_end(&mut Vec::new()).await;
    });
    let proxy = spawn_proxy("[limits]\ntunnel_idle_timeout = \"30s\"\n", &[USER]);
    let target = origin.url("/ws");
    let host = origin.authority();
    let auth = basic(USER.0, USER.1);
    let ask = request(
        "GET",
        &target,
        &[
            ("Host", &host),
            ("Proxy-Authorization", &auth),
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
        ],
    );
    for round in 0..20 {
        let mut conn = RawConn::connect(proxy.addr).await;
        conn.send(&ask).await;
        assert_eq!(conn.read_head().await.status, 101, "round {round}");
        let rest = tokio::time::timeout(std::time::Duration::from_secs(5), conn.read_exact(7)).await;
        assert!(
            matches!(&rest, Ok(got) if got == b"0000def"),
            "round {round}: the bytes behind the urgent byte stalled"
        );
    }
}

/// Ten bytes, an urgent byte, then [`REST`] more, as fast as they go.
async fn send_urgently(w: &mut (impl tokio::io::AsyncWrite + Unpin + AsRef<tokio::net::TcpStream>)) {
    use tokio::io::AsyncWriteExt;
    let _ = w.write_all(&pattern(0, 10)).await;
    let _ = socket2::SockRef::from(w.as_ref()).send_out_of_band(b"!");
    let _ = w.write_all(&pattern(10, REST)).await;
}
