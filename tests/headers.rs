//! Header hygiene on forwarded requests and responses: hop-by-hop fields are
//! removed both ways, `Via` is added both ways, `Host` follows the URI, and a
//! request that already passed through authgate is stopped (508).

mod common;
#[path = "support/custom.rs"]
mod custom;

use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;

use common::*;

const USER: (&str, &str) = ("alice", "alice-pw");

/// Fields that must never cross authgate in either direction.
const HOP_BY_HOP: [&str; 5] = ["keep-alive", "proxy-connection", "te", "trailer", "upgrade"];

#[tokio::test]
async fn hop_by_hop_request_headers_are_removed() {
    let origin = spawn_echo_origin();
    let proxy = spawn_proxy("", &[USER]);
    let auth = basic(USER.0, USER.1);
    let host = origin.authority();
    let resp = get(
        proxy.addr,
        &origin.url("/hops?x=1"),
        &[
            ("Host", &host),
            ("Proxy-Authorization", &auth),
            ("Connection", "keep-alive, X-Hop-Secret"),
            ("X-Hop-Secret", "only-for-the-proxy"),
            ("Keep-Alive", "timeout=5, max=100"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "trailers"),
            ("Trailer", "X-Checksum"),
            ("Upgrade", "h2c"),
            ("X-End-To-End", "kept"),
            ("Accept", "text/plain"),
        ],
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.dump());
    let seen = Echoed::parse(&resp.body);
    assert_eq!(seen.request_line, "GET /hops?x=1 HTTP/1.1");
    for name in HOP_BY_HOP.iter().chain(&["x-hop-secret", "proxy-authorization"]) {
        assert!(!seen.has(name), "`{name}` reached the origin: {seen:?}");
    }
    for v in seen.header_all("connection") {
        assert!(!v.to_ascii_lowercase().contains("x-hop-secret"), "Connection forwarded as {v:?}");
    }
    assert_eq!(seen.header("x-end-to-end"), Some("kept"));
    assert_eq!(seen.header("accept"), Some("text/plain"));
}

/// The `_` twins of the framing and hop-by-hop fields do not reach the
/// origin: `Transfer_Encoding: chunked` beside a `Content-Length` went on
/// with both, and an origin that reads `_` as `-` would have ended the body
/// elsewhere than authgate did, reading the rest as a request of its own
/// (probe 204). Other names with `_` go on.
#[tokio::test]
async fn underscore_twins_of_framing_fields_do_not_reach_the_origin() {
    let origin = spawn_echo_origin();
    let proxy = spawn_proxy("", &[USER]);
    let (host, auth) = (origin.authority(), basic(USER.0, USER.1));
    let body = "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let length = body.len().to_string();
    let mut post = request(
        "POST",
        &origin.url("/twins"),
        &[
            ("Host", &host),
            ("Proxy-Authorization", &auth),
            ("Transfer_Encoding", "chunked"),
            ("Content_Length", "3"),
            ("Proxy_Authorization", "Basic eDp5"),
            ("Content-Length", &length),
            ("X_Request_Id", "kept"),
        ],
    );
    post.extend_from_slice(body.as_bytes());
    let mut c = RawConn::connect(proxy.addr).await;
    c.send(post).await;
    let resp = c.read_response("POST").await;
    assert_eq!(resp.status, 200, "{}", resp.dump());
    let seen = Echoed::parse(&resp.body);
    for name in ["transfer_encoding", "content_length", "proxy_authorization", "transfer-encoding"] {
        assert!(!seen.has(name), "`{name}` reached the origin: {seen:?}");
    }
    assert_eq!(seen.header("content-length"), Some(length.as_str()), "{seen:?}");
    assert_eq!(seen.body, body.as_bytes(), "the body as authgate framed it");
    assert_eq!(seen.header("x_request_id"), Some("kept"), "{seen:?}");
}

const HOPPY_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
Date: Tue, 01 Jul 2025 10:00:00 GMT\r\n\
Connection: keep-alive, X-Hop-Resp\r\n\
X-Hop-Resp: only-for-the-proxy\r\n\
Keep-Alive: timeout=5, max=100\r\n\
Proxy-Connection: keep-alive\r\n\
Trailer: X-Checksum\r\n\
TE: trailers\r\n\
X-End-To-End: kept\r\n\
Via: 1.1 cdn-edge\r\n\
Proxy-Authentication-Info: nextnonce=\"for-the-next-hop\"\r\n\
X-Spaced : before the colon\r\n\
Content-Length: 2\r\n\
\r\n\
ok";

/// An origin that answers each request head with exactly `response`, then
/// closes the connection (a body ended by the close).
fn spawn_answering_then_closing(response: &'static [u8]) -> Origin {
    spawn_raw_origin(move |mut s: tokio::net::TcpStream| async move {
        if read_request_head(&mut s).await.is_none() {
            return;
        }
        let _ = s.write_all(response).await;
    })
}

/// A proxy, and its answer to one authenticated GET to an origin that
/// answers with exactly `response`.
async fn get_from_canned_origin(response: &'static [u8]) -> (Proxy, RawResponse) {
    let origin = spawn_canned_origin(response, Arc::new(Mutex::new(Vec::new())));
    let proxy = spawn_proxy("", &[USER]);
    let auth = basic(USER.0, USER.1);
    let host = origin.authority();
    let resp = get(proxy.addr, &origin.url("/"), &[("Host", &host), ("Proxy-Authorization", &auth)]).await;
    (proxy, resp)
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_removed() {
    let (_proxy, resp) = get_from_canned_origin(HOPPY_RESPONSE).await;
    assert_eq!(resp.status, 200, "{}", resp.dump());
    assert_eq!(resp.body, b"ok");
    // Proxy-Authentication-Info is for the next outbound client (RFC 9110
    // §11.7.3), which is authgate: it must not read as authgate's own.
    for name in HOP_BY_HOP.iter().chain(&["x-hop-resp", "proxy-authentication-info"]) {
        assert!(resp.header(name).is_none(), "`{name}` reached the client:\n{}", resp.dump());
    }
    // RFC 9112 §5.1: a proxy removes whitespace before a response field's
    // colon, and passes the field on.
    assert_eq!(resp.header("x-spaced"), Some("before the colon"), "{}", resp.dump());
    for v in resp.header_all("connection") {
        assert!(!v.to_ascii_lowercase().contains("x-hop-resp"), "Connection passed on as {v:?}");
    }
    assert_eq!(resp.header("x-end-to-end"), Some("kept"));
    assert_eq!(
        resp.header_all("via").join(", "),
        "1.1 cdn-edge, 1.1 authgate",
        "Via must keep the origin's entries and add ours last"
    );
}

#[tokio::test]
async fn via_is_added_to_requests_and_responses() {
    let origin = spawn_echo_origin();
    let proxy = spawn_proxy("", &[USER]);
    let auth = basic(USER.0, USER.1);
    let host = origin.authority();
    let resp = get(
        proxy.addr,
        &origin.url("/"),
        &[("Host", &host), ("Proxy-Authorization", &auth), ("Via", "1.0 corp-gateway")],
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.dump());
    assert_eq!(resp.header_all("via"), ["1.1 authgate"]);
    let seen = Echoed::parse(&resp.body);
    assert_eq!(seen.header_all("via").join(", "), "1.0 corp-gateway, 1.1 authgate");
}

#[tokio::test]
async fn host_is_replaced_by_the_uri_authority() {
    let origin = spawn_echo_origin();
    let proxy = spawn_proxy("", &[USER]);
    let auth = basic(USER.0, USER.1);
    let resp =
        get(proxy.addr, &origin.url("/where"), &[("Host", "evil.example"), ("Proxy-Authorization", &auth)])
            .await;
    assert_eq!(resp.status, 200, "{}", resp.dump());
    let seen = Echoed::parse(&resp.body);
    assert_eq!(seen.header_all("host"), [origin.authority()]);
    assert_eq!(seen.request_line, "GET /where HTTP/1.1");
    // The port in normal form: a target's `:031850` is port 31850, and the
    // origin's `Host` says so (it got `:031850`; probe 258).
    let port = origin.addr.port();
    let padded = format!("http://127.0.0.1:00{port}/where");
    let resp = get(proxy.addr, &padded, &[("Host", "evil.example"), ("Proxy-Authorization", &auth)]).await;
    assert_eq!(resp.status, 200, "{}", resp.dump());
    assert_eq!(Echoed::parse(&resp.body).header_all("host"), [origin.authority()]);
}

/// RFC 9112 §3.2.1: an empty path goes out as `/`, also when the target
/// has a fragment (`http://host#top` went out as `GET  HTTP/1.1`, which an
/// origin reads as HTTP/0.9; probe 128), and a fragment never goes out.
#[tokio::test]
async fn an_empty_path_is_sent_as_a_slash_and_a_fragment_is_dropped() {
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let seen = Arc::new(Mutex::new(Vec::new()));
    let origin = spawn_canned_origin(OK, seen.clone());
    let proxy = spawn_proxy("", &[USER]);
    let auth = basic(USER.0, USER.1);
    let host = origin.authority();
    let cases = [
        ("#top", "GET / HTTP/1.1"),
        ("#", "GET / HTTP/1.1"),
        ("", "GET / HTTP/1.1"),
        ("?q=1#x", "GET /?q=1 HTTP/1.1"),
        ("/#x", "GET / HTTP/1.1"),
        ("/a#x", "GET /a HTTP/1.1"),
    ];
    for (rest, _) in cases {
        let target = format!("http://{host}{rest}");
        let resp = get(proxy.addr, &target, &[("Host", &host), ("Proxy-Authorization", &auth)]).await;
        assert_eq!(resp.status, 200, "{target}: {}", resp.dump());
    }
    let seen = seen.lock().unwrap();
    let lines: Vec<&str> = seen.iter().map(|h| h.lines().next().unwrap_or_default()).collect();
    assert_eq!(lines, cases.map(|c| c.1), "{seen:?}");
}

#[tokio::test]
async fn via_names_an_http_1_0_hop_as_1_0_and_can_be_turned_off() {
    let origin = spawn_echo_origin();
    let proxy = spawn_proxy("", &[USER]);
    let auth = basic(USER.0, USER.1);
    let host = origin.authority();
    // The request came in as HTTP/1.0: its Via entry says so (RFC 9110 §7.6.3).
    let mut c = RawConn::connect(proxy.addr).await;
    c.send(format!(
        "GET {} HTTP/1.0\r\nHost: {host}\r\nProxy-Authorization: {auth}\r\n\r\n",
        origin.url("/")
    ))
    .await;
    let resp = c.read_response("GET").await;
    assert_eq!(resp.status, 200, "{}", resp.dump());
    assert_eq!(Echoed::parse(&resp.body).header_all("via"), ["1.0 authgate"]);
    // `via = false`: neither direction gets one. The loop check still reads
    // a Via that arrives.
    let cfg = base_config("").replace("via = true", "via = false");
    let quiet = custom::spawn_custom(&cfg, &users_toml(&[USER]));
    let resp = get(quiet.addr, &origin.url("/"), &[("Host", &host), ("Proxy-Authorization", &auth)]).await;
    assert_eq!(resp.status, 200, "{}", resp.dump());
    assert!(resp.header("via").is_none(), "{}", resp.dump());
    assert!(!Echoed::parse(&resp.body).has("via"), "{}", resp.text());
    let looped = get(
        quiet.addr,
        &origin.url("/"),
        &[("Host", &host), ("Proxy-Authorization", &auth), ("Via", "1.1 authgate")],
    )
    .await;
    assert_proxy_error(&looped, 508, "proxy_loop_detected", "proxy_loop");
}

#[tokio::test]
async fn request_that_already_passed_authgate_gets_508_loop_detected() {
    let origin = spawn_echo_origin();
    let proxy = spawn_proxy("", &[USER]);
    let auth = basic(USER.0, USER.1);
    let host = origin.authority();
    let via = ("Via", "1.1 corp-gateway, 1.1 authgate");
    let resp =
        get(proxy.addr, &origin.url("/"), &[("Host", &host), ("Proxy-Authorization", &auth), via]).await;
    assert_proxy_error(&resp, 508, "proxy_loop_detected", "proxy_loop");
    // Checked before credentials: a looping request without them is not
    // answered with a challenge the client would retry.
    let resp = get(proxy.addr, &origin.url("/"), &[("Host", &host), via]).await;
    assert_proxy_error(&resp, 508, "proxy_loop_detected", "proxy_loop");
    assert_eq!(origin.hits(), 0, "a looping request must not be forwarded");
    // A comma in another proxy's comment does not start an entry that
    // names authgate (probe 216: it was a 508).
    let via = ("Via", "1.1 cache1 (Squid/5.7, via authgate pool)");
    let resp =
        get(proxy.addr, &origin.url("/"), &[("Host", &host), ("Proxy-Authorization", &auth), via]).await;
    assert_eq!(resp.status, 200, "{}", resp.dump());
}

/// A request authgate forwards to its own listener arrives there in
/// origin-form, carrying authgate's `Via`: that is the loop, and the client
/// is told so (it was told to set HTTP_PROXY: 400 `not_a_proxy_request`,
/// probe 156). The inner hop's 508 reaches the client through the outer one.
#[tokio::test]
async fn request_forwarded_to_authgate_itself_gets_508_loop_detected() {
    let proxy = spawn_proxy("", &[USER]);
    let auth = basic(USER.0, USER.1);
    let own = proxy.addr.to_string();
    let resp =
        get(proxy.addr, &format!("http://{own}/x"), &[("Host", &own), ("Proxy-Authorization", &auth)]).await;
    assert_eq!(resp.status, 508, "{}", resp.dump());
    assert!(resp.text().contains("\"code\":\"proxy_loop\""), "{}", resp.dump());
    // Relayed: the inner hop's member in authgate's name is dropped as any
    // origin's is (README, `proxy_loop`).
    assert!(resp.header("proxy-status").is_none(), "{}", resp.dump());
    // The origin-form request with a `Via` of authgate, sent straight.
    let mut c = RawConn::connect(proxy.addr).await;
    c.send(format!("GET /x HTTP/1.1\r\nHost: {own}\r\nVia: 1.1 authgate\r\n\r\n")).await;
    let resp = c.read_response("GET").await;
    assert_proxy_error(&resp, 508, "proxy_loop_detected", "proxy_loop");
    // A head without a valid `Host` is a 400 and the connection's end all
    // the same (RFC 9112 §3.2; it was a 508 on an open connection, probe
    // 158).
    for host in ["", "Host: a\r\nHost: b\r\n", "Host: a b\r\n"] {
        let mut c = RawConn::connect(proxy.addr).await;
        c.send(format!("GET http://{own}/x HTTP/1.1\r\n{host}Via: 1.1 authgate\r\n\r\n")).await;
        let resp = c.read_response("GET").await;
        assert_proxy_error(&resp, 400, "http_request_error", "malformed_request");
        assert!(c.is_closed().await, "{host:?}: the connection is closed");
    }
}

/// hyper takes off only the `chunked` framing; a `gzip` transfer coding under
/// it is still on the body and must travel on with it (RFC 9110 §7.6.1:
/// remove *or replace*), both ways, or the next hop reads gzip bytes as the
/// content.
#[tokio::test]
async fn transfer_codings_under_chunked_are_passed_on() {
    const GZIP_CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\n\
Transfer-Encoding: gzip, chunked\r\n\
\r\n\
4\r\nGZIP\r\n4\r\nDATA\r\n0\r\n\r\n";
    let (proxy, resp) = get_from_canned_origin(GZIP_CHUNKED).await;
    assert_eq!(resp.status, 200, "{}", resp.dump());
    assert_eq!(resp.header_all("transfer-encoding"), ["gzip, chunked"], "{}", resp.dump());
    assert_eq!(resp.body, b"GZIPDATA");

    posted_coded(&proxy, "gzip, chunked", b"4\r\nGZIP\r\n0\r\n\r\n", "gzip, chunked", b"GZIP").await;
}

/// POSTs `body` with `Transfer-Encoding: te` through `proxy` to an echo
/// origin, which must see `seen_te` and `seen_body`.
async fn posted_coded(proxy: &Proxy, te: &str, body: &[u8], seen_te: &str, seen_body: &[u8]) {
    let echo = spawn_echo_origin();
    let resp = post_coded(proxy, &echo, "/up", te, body).await;
    assert_eq!(resp.status, 200, "{}", resp.dump());
    let seen = Echoed::parse(&resp.body);
    assert_eq!(seen.header_all("transfer-encoding"), [seen_te], "{}", resp.text());
    assert_eq!(seen.body, seen_body);
}

/// RFC 9112 §5.2: a response field folded over several lines (obs-fold) is
/// a 502, which a proxy may answer (unfolding, which hyper offers, cost
/// every response 2 % more instructions).
#[tokio::test]
async fn a_folded_response_field_is_a_502() {
    const FOLDED: &[u8] = b"HTTP/1.1 200 OK\r\nX-Folded: first\r\n  second\r\nContent-Length: 2\r\n\r\nok";
    let (_proxy, resp) = get_from_canned_origin(FOLDED).await;
    assert_proxy_error(&resp, 502, "http_protocol_error", "upstream_protocol_error");
    assert_eq!(
        resp.header("proxy-status"),
        Some("authgate; error=http_protocol_error; details=\"malformed response\"")
    );
}

/// A close-delimited body with a transfer coding, to a client that asked
/// to close: the coding travels on (with the chunked framing put on it), and
/// `Connection` says only `close` (hyper 1.x appended `, chunked` to the
/// field it wrote after a Transfer-Encoding that did not end in chunked).
#[tokio::test]
async fn a_close_delimited_coded_body_keeps_the_connection_field_clean() {
    const GZIP_TO_CLOSE: &[u8] =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\nGZIPDATA";
    let origin = spawn_answering_then_closing(GZIP_TO_CLOSE);
    let proxy = spawn_proxy("", &[USER]);
    let auth = basic(USER.0, USER.1);
    let host = origin.authority();
    let resp = get(
        proxy.addr,
        &origin.url("/"),
        &[("Host", &host), ("Proxy-Authorization", &auth), ("Connection", "close")],
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.dump());
    assert_eq!(resp.header_all("transfer-encoding"), ["gzip, chunked"], "{}", resp.dump());
    assert_eq!(resp.header_all("connection"), ["close"], "{}", resp.dump());
    assert_eq!(resp.body, b"GZIPDATA");
}

/// `identity` is no transfer coding (HTTP/1.1 dropped it): it is not passed
/// on. Passed on as `identity, chunked`, a client that takes `chunked` only
/// alone (Python's http.client) read the chunk framing as content and then
/// waited for a close that never came, and an HTTP/1.0 client got a 502.
#[tokio::test]
async fn an_identity_transfer_coding_is_not_passed_on() {
    const IDENTITY_TO_CLOSE: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nhello-identity";
    let origin = spawn_answering_then_closing(IDENTITY_TO_CLOSE);
    let proxy = spawn_proxy("", &[USER]);
    let auth = basic(USER.0, USER.1);
    let host = origin.authority();
    let resp = get(proxy.addr, &origin.url("/"), &[("Host", &host), ("Proxy-Authorization", &auth)]).await;
    assert_eq!(resp.status, 200, "{}", resp.dump());
    assert_eq!(resp.header_all("transfer-encoding"), ["chunked"], "{}", resp.dump());
    assert_eq!(resp.body, b"hello-identity");
    // An HTTP/1.0 client, which no transfer coding may be sent to, gets the body.
    let head = format!("GET {} HTTP/1.0\r\nProxy-Authorization: {auth}\r\n\r\n", origin.url("/old"));
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(head.as_bytes()).await;
    let resp = conn.read_response("GET").await;
    assert_eq!(resp.status, 200, "{}", resp.dump());
    assert!(resp.header("transfer-encoding").is_none(), "{}", resp.dump());
    assert_eq!(resp.body, b"hello-identity");
    // A request's `identity` goes the same way.
    posted_coded(&proxy, "identity, chunked", b"4\r\nBODY\r\n0\r\n\r\n", "chunked", b"BODY").await;
}

/// RFC 9112 §6.1: `chunked` is applied once, last. A message that says
/// otherwise cannot be passed on as it is (hyper takes one `chunked` off,
/// and the next hop would read what is left wrong): a response is a 502, a
/// request a 400 that never reaches the origin. A coding under `chunked`
/// can only be named in `Transfer-Encoding`, which an HTTP/1.0 client must
/// not be sent: rather than gzip bytes unlabelled, that client gets a 502.
#[tokio::test]
async fn transfer_codings_that_cannot_be_passed_on_are_refused() {
    const CHUNKED_THEN_GZIP: &[u8] =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\nConnection: close\r\n\r\n4\r\nGZIP\r\n0\r\n\r\n";
    const CHUNKED_TWICE: &[u8] =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n\
9\r\n4\r\nGZIP\r\n\r\n5\r\n0\r\n\r\n\r\n0\r\n\r\n";
    // hyper decodes `chunked` only as the very last member: these are read
    // to the close, chunk framing and all, which the client took as content.
    const CHUNKED_COMMA: &[u8] =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    const CHUNKED_PARAM: &[u8] =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked;ext=1\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    for response in [CHUNKED_THEN_GZIP, CHUNKED_TWICE, CHUNKED_COMMA, CHUNKED_PARAM] {
        let (_proxy, resp) = get_from_canned_origin(response).await;
        assert_proxy_error(&resp, 502, "http_response_transfer_coding", "upstream_protocol_error");
        assert!(resp.json()["detail"].as_str().unwrap().contains("Transfer-Encoding"), "{}", resp.dump());
    }

    const GZIP_CHUNKED: &[u8] =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n8\r\nGZIPDATA\r\n0\r\n\r\n";
    let origin = spawn_canned_origin(GZIP_CHUNKED, Arc::new(Mutex::new(Vec::new())));
    let proxy = spawn_proxy("", &[USER]);
    let auth = basic(USER.0, USER.1);
    let head = format!("GET {} HTTP/1.0\r\nProxy-Authorization: {auth}\r\n\r\n", origin.url("/coded"));
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(head.as_bytes()).await;
    let resp = conn.read_response("GET").await;
    assert_proxy_error(&resp, 502, "http_protocol_error", "upstream_protocol_error");
    assert!(resp.json()["detail"].as_str().unwrap().contains("HTTP/1.0"), "{}", resp.dump());
    // A 1.0 HEAD has no body to mislabel: answered.
    let head = format!("HEAD {} HTTP/1.0\r\nProxy-Authorization: {auth}\r\n\r\n", origin.url("/coded"));
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(head.as_bytes()).await;
    assert_eq!(conn.read_response("HEAD").await.status, 200);

    let echo = spawn_echo_origin();
    // `chunked` twice, under a body framed as such.
    const TWICE: &[u8] = b"9\r\n4\r\nGZIP\r\n\r\n5\r\n0\r\n\r\n\r\n0\r\n\r\n";
    let resp = post_coded(&proxy, &echo, "/twice", "chunked, chunked", TWICE).await;
    assert_proxy_error(&resp, 400, "http_request_error", "malformed_request");
    // `chunked` with a parameter is `chunked` too.
    let resp = post_coded(&proxy, &echo, "/param", "chunked;x=1, chunked", TWICE).await;
    assert_proxy_error(&resp, 400, "http_request_error", "malformed_request");
    // Checked with the request's form, before credentials and rules, as
    // the README's order says: it got a 407 (then a 403) first.
    let mut post = request(
        "POST",
        &echo.url("/anon"),
        &[("Host", &echo.authority()), ("Transfer-Encoding", "chunked, chunked")],
    );
    post.extend_from_slice(TWICE);
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(post).await;
    assert_proxy_error(&conn.read_response("POST").await, 400, "http_request_error", "malformed_request");
    assert_eq!(echo.hits(), 0, "a malformed request must not be forwarded");
}

/// A POST of `body` (framed already) to `path` of `origin` as alice, on a
/// new connection, with `Transfer-Encoding: te`; the answer.
async fn post_coded(proxy: &Proxy, origin: &Origin, path: &str, te: &str, body: &[u8]) -> RawResponse {
    let auth = basic(USER.0, USER.1);
    let host = origin.authority();
    let mut post = request(
        "POST",
        &origin.url(path),
        &[("Host", &host), ("Proxy-Authorization", &auth), ("Transfer-Encoding", te)],
    );
    post.extend_from_slice(body);
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(post).await;
    conn.read_response("POST").await
}

/// `method url` through `proxy` with `Max-Forwards: hops`, with credentials
/// when `auth` is given.
async fn with_max_forwards(
    proxy: &Proxy,
    method: &str,
    url: &str,
    auth: Option<&str>,
    hops: &str,
) -> RawResponse {
    let host = url.trim_start_matches("http://").split('/').next().unwrap_or_default();
    let mut headers = vec![("Host", host), ("Max-Forwards", hops)];
    headers.extend(auth.map(|a| ("Proxy-Authorization", a)));
    send_one(proxy.addr, method, url, &headers).await
}

/// RFC 9110 §7.6.2: TRACE and OPTIONS carry `Max-Forwards`; authgate
/// decrements it, and answers itself when it reaches 0 (after the usual
/// authentication), echoing a TRACE without the credentials.
#[tokio::test]
async fn max_forwards_is_decremented_and_zero_is_answered_here() {
    let origin = spawn_echo_origin();
    let proxy = spawn_proxy("", &[USER]);
    let auth = basic(USER.0, USER.1);
    let url = origin.url("/mf");

    let resp = with_max_forwards(&proxy, "OPTIONS", &url, Some(&auth), "2").await;
    assert_eq!(resp.status, 200, "{}", resp.dump());
    assert_eq!(Echoed::parse(&resp.body).header("max-forwards"), Some("1"), "{}", resp.text());
    assert_eq!(origin.hits(), 1);

    let resp = with_max_forwards(&proxy, "TRACE", &url, None, "0").await;
    assert_eq!(resp.status, 407, "credentials first: {}", resp.dump());
    let resp = with_max_forwards(&proxy, "TRACE", &url, Some(&auth), "0").await;
    assert_eq!(resp.status, 200, "{}", resp.dump());
    assert_eq!(resp.header("content-type"), Some("message/http"));
    let echoed = resp.text();
    assert!(echoed.starts_with(&format!("TRACE {url} HTTP/1.1\r\n")), "{echoed}");
    assert!(echoed.contains("max-forwards: 0\r\n"), "{echoed}");
    assert!(!echoed.to_ascii_lowercase().contains("proxy-authorization"), "{echoed}");
    let resp = with_max_forwards(&proxy, "OPTIONS", &url, Some(&auth), "0").await;
    assert_eq!(resp.status, 200, "{}", resp.dump());
    assert_eq!(origin.hits(), 1, "a request with Max-Forwards: 0 never reaches the origin");
    // Such an answer reads no body: it says the connection closes (it
    // promised keep-alive, and the connection closed).
    let host = origin.authority();
    let headers = [("Host", host.as_str()), ("Proxy-Authorization", auth.as_str()), ("Max-Forwards", "0")];
    for method in ["TRACE", "OPTIONS"] {
        let mut c = RawConn::connect(proxy.addr).await;
        let mut req =
            request(method, &url, &[headers[0], headers[1], headers[2], ("Content-Length", "200000")]);
        req.extend_from_slice(&[b'x'; 100]);
        c.send(req).await;
        let resp = c.read_response(method).await;
        assert_eq!(resp.status, 200, "{}", resp.dump());
        assert_eq!(resp.header("connection"), Some("close"), "{method}: {}", resp.dump());
        // The echo is a whole message: the content is not echoed, and
        // neither is the length that announced it.
        assert!(!resp.text().to_ascii_lowercase().contains("content-length"), "{}", resp.dump());
    }
    // Nor does one to a request that asks for an upgrade keep the
    // connection: what the client sent behind it may be the new protocol's
    // bytes (RFC 9110 §7.8), and a request sent ahead was run (probe 350),
    // as for authgate's other answers to such requests.
    let upgrade = [("Connection", "upgrade"), ("Upgrade", "websocket")];
    for method in ["TRACE", "OPTIONS"] {
        let mut c = RawConn::connect(proxy.addr).await;
        let mut req = request(method, &url, &[headers[0], headers[1], headers[2], upgrade[0], upgrade[1]]);
        req.extend_from_slice(&request("GET", &origin.url("/ahead"), &headers[..2]));
        c.send(req).await;
        let resp = c.read_response(method).await;
        assert_eq!(resp.status, 200, "{}", resp.dump());
        assert_eq!(resp.header("connection"), Some("close"), "{method}: {}", resp.dump());
        assert!(c.is_closed().await, "{method}: the request sent ahead is not run");
    }
    assert_eq!(origin.hits(), 1, "the requests sent ahead never reached the origin");
}

/// A raw origin: for each request on a connection, reads the head and a
/// chunked body if there is one, records `head` + body, and answers with
/// `answer(&head)`. Returns the origin and what it received.
fn framing_origin(answer: fn(&str) -> &'static [u8]) -> (Origin, Arc<Mutex<Vec<String>>>) {
    use tokio::io::AsyncReadExt;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let origin = spawn_raw_origin(move |mut s: tokio::net::TcpStream| {
        let log = log.clone();
        async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            loop {
                let Some(end) = find(&buf, b"\r\n\r\n") else {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..end + 4]).to_ascii_lowercase();
                let mut used = end + 4;
                if head.contains("transfer-encoding: chunked") {
                    while find(&buf[used..], b"0\r\n\r\n").is_none() {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    used += find(&buf[used..], b"0\r\n\r\n").unwrap() + 5;
                }
                log.lock().unwrap().push(String::from_utf8_lossy(&buf[..used]).into_owned());
                buf.drain(..used);
                if s.write_all(answer(&head)).await.is_err() {
                    return;
                }
            }
        }
    });
    (origin, seen)
}

/// After an HTTP/1.0 answer, hyper speaks 1.0 on that connection, where a
/// chunked body cannot go: a pooled one sent the next POST without its body
/// (and the client got a 502). Such a connection is not reused.
#[tokio::test]
async fn a_connection_that_answered_in_http_1_0_is_not_reused() {
    let (origin, seen) =
        framing_origin(|_| b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 4\r\n\r\nokay");
    let proxy = spawn_proxy("", &[USER]);
    let auth = basic(USER.0, USER.1);
    let host = origin.authority();
    let mut c = RawConn::connect(proxy.addr).await;
    c.send(request("GET", &origin.url("/one"), &[("Host", &host), ("Proxy-Authorization", &auth)])).await;
    assert_eq!(c.read_response("GET").await.status, 200);
    let mut post = request(
        "POST",
        &origin.url("/upload"),
        &[("Host", &host), ("Proxy-Authorization", &auth), ("Transfer-Encoding", "chunked")],
    );
    post.extend_from_slice(b"5\r\nhello\r\n0\r\n\r\n");
    c.send(post).await;
    let resp = c.read_response("POST").await;
    assert_eq!(resp.status, 200, "{}", resp.dump());
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[1].starts_with("POST /upload HTTP/1.1\r\n"), "{}", seen[1]);
    assert!(seen[1].ends_with("5\r\nhello\r\n0\r\n\r\n"), "the body reached the origin: {}", seen[1]);
    assert_eq!(origin.hits(), 2, "the second request went on a new connection");
}

/// RFC 9110 §8.6: a server must not send Content-Length in a 204; one an
/// origin sent anyway is not passed on (it was, with the body dropped).
#[tokio::test]
async fn a_204_goes_on_without_the_content_length_an_origin_gave_it() {
    let (origin, _seen) =
        framing_origin(|_| b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nX-Kept: yes\r\n\r\nhello");
    let proxy = spawn_proxy("", &[USER]);
    let auth = basic(USER.0, USER.1);
    let host = origin.authority();
    // (hyper drops it from the answer to a GET itself, not to a HEAD.)
    for method in ["HEAD", "GET"] {
        let mut c = RawConn::connect(proxy.addr).await;
        c.send(request(method, &origin.url("/x"), &[("Host", &host), ("Proxy-Authorization", &auth)])).await;
        let resp = c.read_response(method).await;
        assert_eq!(resp.status, 204, "{}", resp.dump());
        assert_eq!(resp.header("x-kept"), Some("yes"));
        assert!(resp.header("content-length").is_none(), "{method}: {}", resp.dump());
    }
}

/// An origin that answers the first request on each connection and closes
/// the connection as the second one arrives, unanswered: what an origin's
/// keep-alive timeout does to a pooled connection at the wrong moment.
/// Returns the origin and the request lines it answered.
fn closes_under_the_second_request(after: std::time::Duration) -> (Origin, Arc<Mutex<Vec<String>>>) {
    writes_then_closes_under_the_second_request(b"", after)
}

/// The same, writing `first` to the second request before the wait.
fn writes_then_closes_under_the_second_request(
    first: &'static [u8],
    after: std::time::Duration,
) -> (Origin, Arc<Mutex<Vec<String>>>) {
    use tokio::io::AsyncWriteExt;
    let answered = Arc::new(Mutex::new(Vec::new()));
    let seen = answered.clone();
    let origin = spawn_raw_origin(move |mut s| {
        let seen = seen.clone();
        async move {
            let Some(head) = read_request_head(&mut s).await else { return };
            let head = String::from_utf8_lossy(&head).into_owned();
            if let Some(n) = head.to_ascii_lowercase().split("content-length: ").nth(1) {
                let n: usize = n.split("\r\n").next().and_then(|n| n.parse().ok()).unwrap_or(0);
                let mut body = vec![0u8; n];
                let _ = tokio::io::AsyncReadExt::read_exact(&mut s, &mut body).await;
            }
            seen.lock().unwrap().push(head.lines().next().unwrap_or("").to_owned());
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
            // The next request arrives, and the connection closes under it
            // (`after` later).
            if read_request_head(&mut s).await.is_some() {
                let _ = s.write_all(first).await;
                tokio::time::sleep(after).await;
            }
        }
    });
    (origin, answered)
}

/// RFC 9112 §9.3.1: a pooled origin connection that closes under an
/// idempotent request without a body (the origin's keep-alive timeout ran
/// out as the request went out) is not the client's problem: the request is
/// sent again on a new connection. It was a 502. A request with a body, or
/// one that is not idempotent, is not sent twice. (Only for connections
/// idle for 250 ms or more: a race with a keep-alive timeout needs that.)
#[tokio::test]
async fn a_pooled_connection_closing_under_a_get_is_retried_on_a_new_one() {
    let (origin, answered) = closes_under_the_second_request(std::time::Duration::ZERO);
    let proxy = spawn_proxy("", &[USER]);
    let auth = basic(USER.0, USER.1);
    let host = origin.authority();
    let mut c = RawConn::connect(proxy.addr).await;
    for path in ["/one", "/two", "/three"] {
        // Idle long enough for an origin's keep-alive timeout to be a risk.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        c.send(request("GET", &origin.url(path), &[("Host", &host), ("Proxy-Authorization", &auth)])).await;
        let resp = c.read_response("GET").await;
        assert_eq!((resp.status, resp.text().as_str()), (200, "ok"), "{path}: {}", resp.dump());
    }
    let lines = answered.lock().unwrap().clone();
    assert_eq!(lines, ["GET /one HTTP/1.1", "GET /two HTTP/1.1", "GET /three HTTP/1.1"]);
    assert_eq!(origin.hits(), 3, "each retry on a new connection");
    // A POST on the pooled connection that closes under it: 502, sent once.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut post = request(
        "POST",
        &origin.url("/post"),
        &[("Host", &host), ("Proxy-Authorization", &auth), ("Content-Length", "2")],
    );
    post.extend_from_slice(b"hi");
    c.send(post).await;
    let resp = c.read_response("POST").await;
    // Closed before a byte of its answer (those of the answers before it
    // on the connection do not count).
    assert_proxy_error(&resp, 502, "connection_terminated", "upstream_protocol_error");
    assert_eq!(origin.hits(), 3, "not sent again");
}

/// A client connection that has had `/one` answered and, 300 ms later
/// (the pooled origin connection idle long enough to be sent again on),
/// has sent `/two`, unanswered yet.
async fn second_request_sent_on_a_pooled_connection(proxy: std::net::SocketAddr, origin: &Origin) -> RawConn {
    let auth = basic(USER.0, USER.1);
    let host = origin.authority();
    let mut c = RawConn::connect(proxy).await;
    c.send(request("GET", &origin.url("/one"), &[("Host", &host), ("Proxy-Authorization", &auth)])).await;
    assert_eq!(c.read_response("GET").await.status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    c.send(request("GET", &origin.url("/two"), &[("Host", &host), ("Proxy-Authorization", &auth)])).await;
    c
}

/// A request is sent again only when the connection failed before a byte
/// of an answer came and within a second of sending it: an origin that
/// began an answer, or held the request for longer, worked on it. Both
/// were sent again, and the client waited up to twice
/// `upstream_response_timeout` (probe 124).
#[tokio::test]
async fn no_retry_after_part_of_an_answer_or_a_long_hold() {
    let long = std::time::Duration::from_millis(1500);
    let short = std::time::Duration::from_millis(100);
    for (first, after) in [(&b""[..], long), (b"HTTP/1.1 200 OK\r\nContent-Le", short), (b"H", short)] {
        let (origin, answered) = writes_then_closes_under_the_second_request(first, after);
        let proxy = spawn_proxy("", &[USER]);
        let mut c = second_request_sent_on_a_pooled_connection(proxy.addr, &origin).await;
        let resp = c.read_response("GET").await;
        let case = String::from_utf8_lossy(first);
        assert_eq!(resp.status, 502, "{case:?}: {}", resp.dump());
        assert_eq!(origin.hits(), 1, "{case:?}: not sent again on a new connection");
        assert_eq!(answered.lock().unwrap().len(), 1);
    }
}

/// A request is sent again only under the configuration it was checked
/// with: after a reload (which may forbid the origin) no new connection is
/// made for it, and the client gets the 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_retry_after_a_reload_landed_during_the_request() {
    let (origin, answered) = closes_under_the_second_request(std::time::Duration::from_millis(800));
    let proxy = custom::spawn_custom(&base_config("[reload]\nwatch = false\n"), &users_toml(&[USER]));
    let mut c = second_request_sent_on_a_pooled_connection(proxy.addr, &origin).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let state = proxy.state.clone();
    tokio::task::spawn_blocking(move || authgate::server::reload::reload(&state)).await.unwrap().unwrap();
    let resp = c.read_response("GET").await;
    assert_eq!(resp.status, 502, "{}", resp.dump());
    assert_eq!(answered.lock().unwrap().len(), 1);
    assert_eq!(origin.hits(), 1, "no new connection");
}

/// RFC 9112 §6.1: a response with both Transfer-Encoding and Content-Length
/// "ought to be handled as an error": its connection is not reused. And a
/// Content-Length listing one length twice goes on as that one length.
#[tokio::test]
async fn ambiguous_response_framing_ends_the_origin_connection_and_a_listed_length_is_made_single() {
    let (origin, _seen) = framing_origin(|head| {
        if head.starts_with("get /both") {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 100\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello"
        }
    });
    let proxy = spawn_proxy("", &[USER]);
    let auth = basic(USER.0, USER.1);
    let host = origin.authority();
    let mut c = RawConn::connect(proxy.addr).await;
    c.send(request("GET", &origin.url("/both"), &[("Host", &host), ("Proxy-Authorization", &auth)])).await;
    let first = c.read_response("GET").await;
    assert_eq!((first.status, first.text().as_str()), (200, "hello"), "{}", first.dump());
    c.send(request("GET", &origin.url("/listed"), &[("Host", &host), ("Proxy-Authorization", &auth)])).await;
    let second = c.read_response("GET").await;
    assert_eq!(second.header_all("content-length"), vec!["5"], "{}", second.dump());
    assert_eq!(second.text(), "hello");
    assert_eq!(origin.hits(), 2, "the first connection was not reused");
}

/// A `Content-Length` written with leading zeros (`010`) is 10 (RFC 9110
/// §8.6), and goes on as `10` both ways: a recipient that read it as octal
/// (8) would take the rest of the body for the next message (probe 194: it
/// went on as sent).
#[tokio::test]
async fn a_length_with_leading_zeros_goes_on_without_them() {
    let (origin, seen) =
        framing_origin(|_| b"HTTP/1.1 200 OK\r\nContent-Length: 005\r\nConnection: close\r\n\r\nhello");
    let proxy = spawn_proxy("", &[USER]);
    let auth = basic(USER.0, USER.1);
    let host = origin.authority();
    let mut c = RawConn::connect(proxy.addr).await;
    let mut req = request(
        "POST",
        &origin.url("/zeros"),
        &[("Host", &host), ("Proxy-Authorization", &auth), ("Content-Length", "010")],
    );
    req.extend_from_slice(b"0123456789");
    c.send(req).await;
    let resp = c.read_response("POST").await;
    assert_eq!((resp.status, resp.text().as_str()), (200, "hello"), "{}", resp.dump());
    assert_eq!(resp.header_all("content-length"), vec!["5"], "{}", resp.dump());
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].to_ascii_lowercase().contains("\r\ncontent-length: 10\r\n"), "{}", seen[0]);
}

/// A `Content-Length` that is not one length, in the answer to a `HEAD` or
/// in a `304` (where it frames no body, so hyper lets it through), is a
/// malformed response: a 502, as for a `GET`. (It went to the client as
/// it came, `-5`, `+5`, `abc`; two lengths that differed lost the field.)
/// Both say `malformed Content-Length` (a `GET`'s said "malformed
/// response").
/// One length, or one listed twice, still goes on as that length, and a
/// 204 loses the field, as before.
#[tokio::test]
async fn a_head_or_304_answer_with_a_malformed_content_length_is_a_502() {
    let (origin, _seen) = framing_origin(|head| {
        let path = head.split(' ').nth(1).unwrap_or("");
        let path = path.rsplit('/').next().unwrap_or("");
        match path {
            "minus" => b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
            "plus" => b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            "hex" => b"HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
            "empty" => b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
            "huge" => b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "differ" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n",
            "304" => b"HTTP/1.1 304 Not Modified\r\nContent-Length: abc\r\n\r\n",
            "listed" => b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
            "204" => b"HTTP/1.1 204 No Content\r\nContent-Length: -5\r\n\r\n",
            "past-i64" => b"HTTP/1.1 200 OK\r\nContent-Length: 9223372036854775808\r\n\r\n0123456789",
            "u64-max" => b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\n0123456789",
            "http10-te" => b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            _ => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
        }
    });
    let proxy = spawn_proxy("", &[USER]);
    let auth = basic(USER.0, USER.1);
    let host = origin.authority();
    for (method, path) in [
        ("HEAD", "minus"),
        ("HEAD", "plus"),
        ("HEAD", "hex"),
        ("HEAD", "empty"),
        ("HEAD", "huge"),
        ("HEAD", "differ"),
        ("GET", "304"),
        // Past 2^63 - 1: curl took a body cut short for a whole one (probe
        // 154).
        ("GET", "past-i64"),
        ("HEAD", "past-i64"),
        // The same lengths in the answer to a GET, where hyper refuses
        // them: told alike (they were "malformed response").
        ("GET", "minus"),
        ("GET", "plus"),
        ("GET", "hex"),
        ("GET", "empty"),
        ("GET", "huge"),
        ("GET", "differ"),
    ] {
        let mut c = RawConn::connect(proxy.addr).await;
        let url = origin.url(&format!("/{path}"));
        c.send(request(method, &url, &[("Host", &host), ("Proxy-Authorization", &auth)])).await;
        let r = c.read_response(method).await;
        // (The answer to a HEAD has no body: the Proxy-Status field says it.)
        assert_eq!(r.status, 502, "{path}: {}", r.dump());
        assert_eq!(
            r.header("proxy-status"),
            Some("authgate; error=http_protocol_error; details=\"malformed Content-Length\""),
            "{path}: {}",
            r.dump()
        );
    }
    // hyper's own refusal of 2^64 - 1 was told as a head too large.
    let mut c = RawConn::connect(proxy.addr).await;
    c.send(request("GET", &origin.url("/u64-max"), &[("Host", &host), ("Proxy-Authorization", &auth)])).await;
    let r = c.read_response("GET").await;
    assert!(
        r.header("proxy-status").is_some_and(|s| s.contains("or a Content-Length too large")),
        "{}",
        r.dump()
    );
    // An HTTP/1.0 origin's Transfer-Encoding is framing it cannot send
    // (RFC 9112 §6.1), told as that.
    let mut c = RawConn::connect(proxy.addr).await;
    c.send(request("GET", &origin.url("/http10-te"), &[("Host", &host), ("Proxy-Authorization", &auth)]))
        .await;
    let r = c.read_response("GET").await;
    assert_eq!(
        (r.status, r.header("proxy-status")),
        (
            502,
            Some(
                "authgate; error=http_protocol_error; details=\"Transfer-Encoding from an HTTP/1.0 origin\""
            )
        ),
        "{}",
        r.dump()
    );
    for (path, length) in [("listed", "5"), ("plain", "5")] {
        let mut c = RawConn::connect(proxy.addr).await;
        let url = origin.url(&format!("/{path}"));
        c.send(request("HEAD", &url, &[("Host", &host), ("Proxy-Authorization", &auth)])).await;
        let r = c.read_response("HEAD").await;
        assert_eq!(r.status, 200, "{}", r.dump());
        assert_eq!(r.header_all("content-length"), vec![length], "{}", r.dump());
    }
    // A 204's Content-Length is dropped, whatever it says (it was a 502
    // for a bad one, probe 84).
    let mut c = RawConn::connect(proxy.addr).await;
    c.send(request("GET", &origin.url("/204"), &[("Host", &host), ("Proxy-Authorization", &auth)])).await;
    let r = c.read_response("GET").await;
    assert_eq!((r.status, r.header("content-length")), (204, None), "{}", r.dump());
}

/// A chunked request body with trailers ends at its trailers, and is
/// answered; then the connection closes, saying so. hyper reads a trailer
/// section up to the next CRLF CRLF and parses it to its first blank line,
/// so one ended by a bare LF took the requests pipelined behind it along,
/// unanswered and unseen, and their client waited for `idle_timeout`
/// (probe 133). authgate cannot tell that section from a well-formed one;
/// the close tells the client that what it sent behind was not answered.
#[tokio::test]
async fn a_request_body_with_trailers_is_answered_and_its_connection_closed() {
    let (origin, seen) = framing_origin(|_| b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let proxy = spawn_proxy("", &[USER]);
    let auth = basic(USER.0, USER.1);
    let host = origin.authority();
    let mut c = RawConn::connect(proxy.addr).await;
    let mut post = request(
        "POST",
        &origin.url("/trailed"),
        &[("Host", &host), ("Proxy-Authorization", &auth), ("Transfer-Encoding", "chunked")],
    );
    post.extend_from_slice(b"5\r\nhello\r\n0\r\nX-Trailer: t1\r\n\r\n");
    post.extend_from_slice(&request(
        "GET",
        &origin.url("/next"),
        &[("Host", &host), ("Proxy-Authorization", &auth)],
    ));
    c.send(post).await;
    let first = c.read_response("POST").await;
    assert_eq!(first.status, 200, "{}", first.dump());
    assert_eq!(first.header("connection"), Some("close"), "{}", first.dump());
    assert!(c.is_closed().await, "the connection closes after the answer");
    assert_eq!(seen.lock().unwrap().len(), 1);
}

/// HTTP/1.0 clients: every answer closes the connection and says so, also
/// to a client that asked for keep-alive (a body of unknown length is ended
/// by the close; hyper said `keep-alive` and closed);
/// a 100-continue expectation from a 1.0 client is ignored (RFC 9110
/// §10.1.1), not sent on in the HTTP/1.1 request made of it.
#[tokio::test]
async fn http_1_0_clients_get_an_honest_close_and_no_expectation_is_sent_on() {
    let chunked_origin = spawn_origin(|_req| async { hyper::Response::new(chunked(&[b"hello ", b"world"])) });
    let echo = spawn_echo_origin();
    let proxy = spawn_proxy("", &[USER]);
    let auth = basic(USER.0, USER.1);

    let mut c = RawConn::connect(proxy.addr).await;
    c.send(format!(
        "GET {} HTTP/1.0\r\nHost: {}\r\nConnection: keep-alive\r\nProxy-Authorization: {auth}\r\n\r\n",
        chunked_origin.url("/chunked"),
        chunked_origin.authority()
    ))
    .await;
    let resp = c.read_response("GET").await;
    assert_eq!(resp.status, 200, "{}", resp.dump());
    assert_eq!(resp.header("connection"), Some("close"), "{}", resp.dump());
    assert_eq!(resp.header("transfer-encoding"), None, "{}", resp.dump());
    assert_eq!(resp.body, b"hello world");

    // authgate's own answer that closes (a body left unread) says just
    // `close` to a 1.0 client that asked for keep-alive (it said `close,
    // keep-alive`).
    let mut c = RawConn::connect(proxy.addr).await;
    c.send(format!(
        "POST {} HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\
         Proxy-Authorization: {auth}\r\n\r\nhello",
        echo.url("/x").replace("http://", "http://u:p@"),
    ))
    .await;
    let resp = c.read_response("POST").await;
    assert_proxy_error(&resp, 400, "http_request_error", "bad_target");
    assert_eq!(resp.header("connection"), Some("close"), "{}", resp.dump());

    // With a length too, the answer closes: "A proxy server MUST NOT
    // maintain a persistent connection with an HTTP/1.0 client" (RFC 9112
    // §9.3; probe 213: it served two requests on one connection). The
    // expectation is dropped in every spelling, other expectations kept:
    // one in a list, or in a field after another, went on (probe 303).
    for (path, fields, kept) in [
        ("/one", "Expect: 100-continue\r\n", vec![]),
        ("/two", "Expect: 100-continue\r\n", vec![]),
        ("/list", "Expect: 100-continue, foo\r\n", vec!["foo"]),
        ("/after", "Expect: foo\r\nExpect: 100-Continue\r\n", vec!["foo"]),
        ("/both", "Expect: a, 100-continue ,b\r\nExpect: c\r\n", vec!["a, b", "c"]),
        // A comma inside a quoted string separates nothing (probe 305).
        ("/quoted", "Expect: foo=\"a,100-continue,b\"\r\n", vec!["foo=\"a,100-continue,b\""]),
        ("/quoted-too", "Expect: f=\"a,\\\",b\", 100-continue\r\n", vec!["f=\"a,\\\",b\""]),
        // A quoted string begins only after `=` (probe 306).
        ("/stray", "Expect: a\"b, 100-continue\r\n", vec!["a\"b"]),
    ] {
        let mut c = RawConn::connect(proxy.addr).await;
        c.send(format!(
            "POST {} HTTP/1.0\r\nHost: {}\r\nConnection: keep-alive\r\n{fields}\
             Content-Length: 5\r\nProxy-Authorization: {auth}\r\n\r\nhello",
            echo.url(path),
            echo.authority()
        ))
        .await;
        let resp = c.read_response("POST").await;
        assert_eq!(resp.status, 200, "{}", resp.dump());
        assert_eq!(resp.header("connection"), Some("close"), "{}", resp.dump());
        assert!(c.is_closed().await, "the connection closes after the answer");
        let seen = Echoed::parse(&resp.body);
        let expect: Vec<&str> = seen
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("expect"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(expect, kept, "{fields:?}: {}", resp.text());
        assert_eq!(seen.body, b"hello");
    }
    // And authgate's own answers, the 407 included (a 1.0 client retries
    // on a new connection).
    let mut c = RawConn::connect(proxy.addr).await;
    c.send(format!(
        "GET {} HTTP/1.0\r\nHost: {}\r\nConnection: keep-alive\r\n\r\n",
        echo.url("/none"),
        echo.authority()
    ))
    .await;
    let resp = c.read_response("GET").await;
    assert_eq!(resp.status, 407, "{}", resp.dump());
    assert_eq!(resp.header("connection"), Some("close"), "{}", resp.dump());
    assert!(c.is_closed().await, "the connection closes after the 407");
}

/// A client's `Connection: close` is honoured in a field with a byte
/// outside ASCII too (RFC 9112 §9.6): hyper skips such a field, and the
/// connection stayed open after the answer; the field's other members were
/// already removed before forwarding.
#[tokio::test]
async fn a_close_in_a_connection_field_with_obs_text_ends_the_connection() {
    let origin = spawn_echo_origin();
    let proxy = spawn_proxy("", &[USER]);
    let auth = basic(USER.0, USER.1);
    let mut conn = RawConn::connect(proxy.addr).await;
    let mut head = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nProxy-Authorization: {auth}\r\nConnection: close, X-Hop, caf",
        origin.url("/close"),
        origin.authority()
    )
    .into_bytes();
    head.extend_from_slice(b"\xe9\r\nX-Hop: 1\r\n\r\n");
    conn.send(head).await;
    let resp = conn.read_response("GET").await;
    assert_eq!(resp.status, 200, "{}", resp.dump());
    assert_eq!(resp.header("connection"), Some("close"), "{}", resp.dump());
    let seen = Echoed::parse(&resp.body);
    assert!(!seen.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("x-hop")), "{:?}", seen.headers);
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), conn.is_closed()).await;
    assert_eq!(closed.ok(), Some(true), "the proxy closes after its answer");
}

/// An origin's `Connection: close` is honoured in a field with a byte
/// outside ASCII too (RFC 9112 §9.6: no request goes out on that connection
/// again). hyper skips such a field, and the connection went back into the
/// pool: the user's next request went out on it and got a 502 when the
/// origin closed it as it had said (probe 203).
#[tokio::test]
async fn an_origins_close_in_a_connection_field_with_obs_text_is_not_pooled() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    // Keeps the connection open and answers every request on it: a second
    // request on the same connection would be served by it.
    let origin = spawn_canned_origin(
        b"HTTP/1.1 200 OK\r\nConnection: close, caf\xe9\r\nContent-Length: 2\r\n\r\nok",
        seen.clone(),
    );
    let proxy = spawn_proxy("", &[USER]);
    let auth = basic(USER.0, USER.1);
    let head = [("Host", origin.authority()), ("Proxy-Authorization", auth)];
    let head: Vec<(&str, &str)> = head.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut conn = RawConn::connect(proxy.addr).await;
    for i in 0..2 {
        conn.send(request("GET", &origin.url("/"), &head)).await;
        let resp = conn.read_response("GET").await;
        assert_eq!(resp.status, 200, "request {i}: {}", resp.dump());
        assert_eq!(resp.body, b"ok");
    }
    assert_eq!(seen.lock().unwrap().len(), 2);
    assert_eq!(
        origin.hits(),
        2,
        "the second request went out on the connection the origin said it would close"
    );
}
