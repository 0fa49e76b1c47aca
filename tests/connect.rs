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

#[tokio::test]
async fn connect_407_then_credentials_on_the_same_connection_opens_the_tunnel() {
    let origin = spawn_shout_origin();
    let proxy = spawn_proxy("", &[USER]);
    let target = origin.authority();
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(request("CONNECT", &target, &[("Host", &target)])).await;
    let first = conn.read_response("CONNECT").await;
    assert_eq!(first.status, 407, "{}", first.dump());

    let auth = basic(USER.0, USER.1);
    conn.send(request("CONNECT", &target, &[("Host", &target), ("Proxy-Authorization", &auth)])).await;
    let second = conn.read_head().await;
    assert_eq!(second.status, 200, "{}", second.dump());
    conn.send(b"retry worked").await;
    assert_eq!(conn.read_exact(12).await, b"RETRY WORKED");
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
