//! Absolute-form `https://` requests sent to the TLS listener are forwarded
//! over TLS to the origin, which must verify against `[upstream] ca_file`.

mod common;
#[path = "support/dns.rs"]
mod dns;
#[path = "support/pki.rs"]
mod pki;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

/// A TLS origin (hyper behind tokio-rustls) answering `hello over tls`.
fn spawn_tls_origin(leaf: &pki::Leaf) -> SocketAddr {
    spawn_tls_origin_that(leaf, true)
}

/// A TLS origin that reads a request and, if `answers`, answers `hello over
/// tls`; else it closes the TCP connection without a word, `close_notify`
/// included.
fn spawn_tls_origin_that(leaf: &pki::Leaf, answers: bool) -> SocketAddr {
    spawn_tls_origin_with(leaf, None, answers)
}

/// [`spawn_tls_origin_that`], requiring a client certificate from
/// `client_ca` when there is one.
fn spawn_tls_origin_with(leaf: &pki::Leaf, client_ca: Option<&pki::Ca>, answers: bool) -> SocketAddr {
    spawn_tls_origin_noting(leaf, client_ca, answers, Arc::default())
}

/// [`spawn_tls_origin_with`], noting in `resumed`, for each handshake,
/// whether it resumed a session.
fn spawn_tls_origin_noting(
    leaf: &pki::Leaf,
    client_ca: Option<&pki::Ca>,
    answers: bool,
    resumed: Arc<std::sync::Mutex<Vec<bool>>>,
) -> SocketAddr {
    let acceptor = tls_acceptor(leaf, client_ca);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let l = tokio::net::TcpListener::from_std(l).unwrap();
        while let Ok((s, _)) = l.accept().await {
            let (acceptor, resumed) = (acceptor.clone(), resumed.clone());
            tokio::spawn(async move {
                // (Without, the answer could wait behind the session
                // tickets, unacknowledged yet, and go with the close.)
                let _ = s.set_nodelay(true);
                let Ok(mut tls) = acceptor.accept(s).await else { return };
                let kind = tls.get_ref().1.handshake_kind();
                resumed.lock().unwrap().push(kind == Some(rustls::HandshakeKind::Resumed));
                let mut buf = vec![0u8; 4096];
                let n = tls.read(&mut buf).await.unwrap_or(0);
                if !answers {
                    return;
                }
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                let body = format!("hello over tls; first line: {}", head.lines().next().unwrap_or(""));
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

/// The acceptor of a TLS origin serving `leaf`, requiring a client
/// certificate from `client_ca` when there is one.
fn tls_acceptor(leaf: &pki::Leaf, client_ca: Option<&pki::Ca>) -> tokio_rustls::TlsAcceptor {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes()).collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap()).unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(certs, key).unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// `policy`: the `[egress]`, `[policy]` and `[[rules]]` part of the config.
async fn spawn_tls_proxy(
    dir: &TempDir,
    proxy_ca: &pki::Ca,
    upstream_ca_pem: &str,
    policy: &str,
) -> (SocketAddr, SocketAddr, oneshot::Sender<()>) {
    let (plain, tls, stop, _) = spawn_tls_proxy_with_state(dir, proxy_ca, upstream_ca_pem, policy).await;
    (plain, tls, stop)
}

/// [`spawn_tls_proxy`], with the proxy's state (to reload it).
async fn spawn_tls_proxy_with_state(
    dir: &TempDir,
    proxy_ca: &pki::Ca,
    upstream_ca_pem: &str,
    policy: &str,
) -> (SocketAddr, SocketAddr, oneshot::Sender<()>, Arc<authgate::State>) {
    let leaf = proxy_ca.leaf("proxy");
    dir.write("proxy-cert.pem", &leaf.cert_pem);
    dir.write("proxy-key.pem", &leaf.key_pem);
    dir.write("upstream-ca.pem", upstream_ca_pem);
    let cfg = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncert = \"proxy-cert.pem\"\nkey = \"proxy-key.pem\"\n[auth]\nusers_file = \"users.toml\"\n[upstream]\nca_file = \"upstream-ca.pem\"\n{policy}"
    );
    let path = dir.write("authgate.toml", cfg);
    dir.write("users.toml", users_toml(&[("alice", "a1")]));
    let state = authgate::State::new(authgate::config::load(&path).unwrap_or_else(|e| panic!("{e}")));
    let listeners = authgate::server::bind_all(&state).await.unwrap();
    let plain = listeners[0].local_addr().unwrap();
    let tls = listeners[1].local_addr().unwrap();
    let (tx, _task) = serve(state.clone(), listeners);
    (plain, tls, tx, state)
}

/// The test origins are on loopback, which the default egress policy denies.
const LOOPBACK: &str = "[egress]\nallow_cidrs = [\"127.0.0.0/8\"]\n";

/// Sends `GET https://origin/` in absolute form over TLS to the proxy.
async fn get_https_via(proxy_tls: SocketAddr, proxy_ca_pem: &str, origin: SocketAddr) -> RawResponse {
    get_https_authority_via(proxy_tls, proxy_ca_pem, &format!("127.0.0.1:{}", origin.port())).await
}

/// Sends `GET https://authority/secure` in absolute form over TLS to the proxy.
async fn get_https_authority_via(proxy_tls: SocketAddr, proxy_ca_pem: &str, authority: &str) -> RawResponse {
    let connector = pki::connector(proxy_ca_pem);
    let tcp = tokio::net::TcpStream::connect(proxy_tls).await.unwrap();
    let mut tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    let req = request(
        "GET",
        &format!("https://{authority}/secure"),
        &[("Host", authority), ("Proxy-Authorization", &basic("alice", "a1")), ("Connection", "close")],
    );
    tls.write_all(&req).await.unwrap();
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw).await;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> RawResponse {
    let end =
        find(raw, b"\r\n\r\n").unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap().to_string();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers =
        lines.filter_map(|l| l.split_once(": ")).map(|(n, v)| (n.to_string(), v.to_string())).collect();
    RawResponse { raw: raw.to_vec(), status_line, status, headers, body: raw[end + 4..].to_vec() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_absolute_form_is_forwarded_over_verified_tls() {
    let proxy_ca = pki::Ca::new("proxy CA");
    let origin_ca = pki::Ca::new("origin CA");
    let origin = spawn_tls_origin(&origin_ca.leaf("origin"));
    let dir = TempDir::new();
    let (plain, tls, _stop) = spawn_tls_proxy(&dir, &proxy_ca, &origin_ca.cert_pem, LOOPBACK).await;
    let r = get_https_via(tls, &proxy_ca.cert_pem, origin).await;
    assert_eq!(r.status, 200, "{}", r.dump());
    assert!(r.text().contains("hello over tls; first line: GET /secure HTTP/1.1"), "{}", r.text());
    // An IPv4-mapped target is its IPv4 address for the certificate too, as
    // for the egress checks and the dial: the certificate for 127.0.0.1
    // serves it (it was checked against the mapped form and refused as "not
    // for this host name", probe 206).
    let mapped = format!("[::ffff:127.0.0.1]:{}", origin.port());
    let r = get_https_authority_via(tls, &proxy_ca.cert_pem, &mapped).await;
    assert_eq!(r.status, 200, "{}", r.dump());
    // The same request on the plain listener is refused: use CONNECT there.
    let req = format!("https://127.0.0.1:{}/secure", origin.port());
    let r = get(plain, &req, &[("Host", "x"), ("Proxy-Authorization", &basic("alice", "a1"))]).await;
    assert_proxy_error(&r, 400, "http_request_error", "unsupported_scheme");
}

/// A TLS origin that closes without answering, and without `close_notify`,
/// is a 502 saying the connection closed before a complete response, as
/// for a plain origin (it said "connection failed", probe 111).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_origin_that_closes_without_a_word_is_a_502_saying_so() {
    let proxy_ca = pki::Ca::new("proxy CA");
    let origin_ca = pki::Ca::new("origin CA");
    let origin = spawn_tls_origin_that(&origin_ca.leaf("origin"), false);
    let dir = TempDir::new();
    let (_plain, tls, _stop) = spawn_tls_proxy(&dir, &proxy_ca, &origin_ca.cert_pem, LOOPBACK).await;
    let r = get_https_via(tls, &proxy_ca.cert_pem, origin).await;
    assert_proxy_error(&r, 502, "connection_terminated", "upstream_protocol_error");
    let status = r.header("proxy-status").unwrap_or_default();
    assert!(status.contains("details=\"connection closed before a complete response\""), "{status}");
}

/// The first connection `l` accepts, once its TLS handshake is done and
/// the request head has been read from it.
async fn tls_request_read(
    l: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
) -> tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
    let (s, _) = l.accept().await.unwrap();
    let mut tls = acceptor.accept(s).await.unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while find(&head, b"\r\n\r\n").is_none() {
        let n = tls.read(&mut buf).await.unwrap();
        assert!(n > 0, "the request head");
        head.extend_from_slice(&buf[..n]);
    }
    tls
}

/// The answer to a GET of an `https://` origin through the TLS listener,
/// the origin doing `then` with its TLS stream once it has read the
/// request head.
async fn get_when_origin_then<F, Fut>(then: F) -> RawResponse
where
    F: FnOnce(tokio_rustls::server::TlsStream<tokio::net::TcpStream>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let proxy_ca = pki::Ca::new("proxy CA");
    let origin_ca = pki::Ca::new("origin CA");
    let acceptor = tls_acceptor(&origin_ca.leaf("origin"), None);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = l.local_addr().unwrap();
    tokio::spawn(async move { then(tls_request_read(l, acceptor).await).await });
    let dir = TempDir::new();
    let (_plain, tls, _stop) = spawn_tls_proxy(&dir, &proxy_ca, &origin_ca.cert_pem, LOOPBACK).await;
    get_https_via(tls, &proxy_ca.cert_pem, origin).await
}

/// A TLS origin whose connection breaks at the TLS layer after the
/// handshake (a record that does not decrypt) is a 502 typed
/// `tls_protocol_error` (RFC 9209 §2.3.13). It was `http_protocol_error`,
/// "connection failed" (probe 235).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_error_after_the_handshake_is_a_tls_protocol_error() {
    let r = get_when_origin_then(async |tls| {
        // An application-data record of 16 zero bytes, under the session.
        let (mut tcp, _) = tls.into_inner();
        tcp.write_all(&[0x17, 0x03, 0x03, 0x00, 0x10]).await.unwrap();
        tcp.write_all(&[0u8; 16]).await.unwrap();
        let _ = tcp.read(&mut [0u8; 64]).await;
    })
    .await;
    assert_proxy_error(&r, 502, "tls_protocol_error", "upstream_protocol_error");
    let status = r.header("proxy-status").unwrap_or_default();
    assert!(status.contains("details=\"TLS error on the connection to the origin\""), "{status}");
    assert!(r.text().contains("The TLS connection to the origin failed"), "{}", r.dump());
}

/// A TLS alert from the origin after the handshake (here `bad_record_mac`,
/// 20, which the origin sends when a record does not decrypt for it) is
/// typed `tls_alert_received` with its number, and worded as a TLS error on
/// the connection: it was "TLS handshake with the origin failed", for a
/// handshake that had succeeded (probe 239).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_alert_after_the_handshake_is_no_handshake_failure() {
    let r = get_when_origin_then(async |mut tls| {
        // The origin's own session is handed a record that does not
        // decrypt: rustls answers with a fatal alert, encrypted.
        let (tcp, session) = tls.get_mut();
        let record = [&[0x17, 0x03, 0x03, 0x00, 0x20][..], &[0u8; 32]].concat();
        session.read_tls(&mut &record[..]).unwrap();
        assert!(session.process_new_packets().is_err(), "the bad record was read");
        let mut alert = Vec::new();
        while session.wants_write() {
            session.write_tls(&mut alert).unwrap();
        }
        tcp.write_all(&alert).await.unwrap();
        let _ = tcp.read(&mut [0u8; 64]).await;
    })
    .await;
    assert_proxy_error(&r, 502, "tls_alert_received", "upstream_protocol_error");
    let status = r.header("proxy-status").unwrap_or_default();
    assert!(
        status.contains("; alert-id=20; details=\"TLS error on the connection to the origin\""),
        "{status}"
    );
}

/// An upgraded `https://` connection (WebSocket over TLS both ways) where
/// one side ends its TCP connection without `close_notify` (a truncation,
/// RFC 8446 §6.1): the other side is not sent a `close_notify` either, but
/// a bare FIN, so that its TLS reads the cut as one. authgate ends both
/// TLS sessions, and a clean end it made up hid the cut (probe 176).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_on_one_side_of_an_upgraded_https_connection_reaches_the_other_as_a_cut() {
    let proxy_ca = pki::Ca::new("proxy CA");
    let origin_ca = pki::Ca::new("origin CA");
    let dir = TempDir::new();
    let (_plain, proxy, _stop) = spawn_tls_proxy(&dir, &proxy_ca, &origin_ca.cert_pem, LOOPBACK).await;
    // Who ends: the origin with a cut, the client with one, the origin
    // cleanly (which the client is told as such).
    for (origin_cuts, origin_ends_cleanly) in [(true, false), (false, false), (false, true)] {
        // How the origin's TLS saw the end of the client's bytes.
        let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel::<std::io::Result<usize>>();
        let acceptor = tls_acceptor(&origin_ca.leaf("origin"), None);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = l.local_addr().unwrap();
        tokio::spawn(async move {
            let mut tls = tls_request_read(l, acceptor).await;
            let switch =
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
            tls.write_all(switch).await.unwrap();
            tls.write_all(b"DATA").await.unwrap();
            tls.flush().await.unwrap();
            if origin_cuts {
                // The TCP connection closed under the TLS session.
                drop(tls.into_inner().0);
                return;
            }
            if origin_ends_cleanly {
                tls.shutdown().await.unwrap();
            }
            let mut rest = Vec::new();
            let _ = ended_tx.send(tls.read_to_end(&mut rest).await);
        });
        let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
        let connector = pki::connector(&proxy_ca.cert_pem);
        let mut tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
        let authority = format!("127.0.0.1:{}", origin.port());
        let req = request(
            "GET",
            &format!("https://{authority}/ws"),
            &[
                ("Host", &authority),
                ("Proxy-Authorization", &basic("alice", "a1")),
                ("Connection", "Upgrade"),
                ("Upgrade", "websocket"),
            ],
        );
        tls.write_all(&req).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(b"DATA") {
            let n = tls.read(&mut buf).await.unwrap();
            assert!(n > 0, "{:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 101 "), "{:?}", String::from_utf8_lossy(&got));
        if origin_cuts || origin_ends_cleanly {
            let mut rest = Vec::new();
            let end = tls.read_to_end(&mut rest).await;
            let kind = end.as_ref().map_err(|e| e.kind()).copied();
            if origin_cuts {
                assert_eq!(
                    kind,
                    Err(std::io::ErrorKind::UnexpectedEof),
                    "the client saw a clean end: {end:?}"
                );
            } else {
                assert_eq!(kind, Ok(0), "the client saw no clean end: {end:?}");
            }
        } else {
            drop(tls.into_inner().0);
            let end = tokio::time::timeout(std::time::Duration::from_secs(10), ended.recv()).await;
            let kind = match &end {
                Ok(Some(read)) => Some(read.as_ref().map_err(|e| e.kind()).copied()),
                _ => None,
            };
            assert_eq!(
                kind,
                Some(Err(std::io::ErrorKind::UnexpectedEof)),
                "the origin saw a clean end: {end:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_certificate_from_the_wrong_ca_is_a_502() {
    let proxy_ca = pki::Ca::new("proxy CA");
    let origin_ca = pki::Ca::new("origin CA");
    let other_ca = pki::Ca::new("some other CA");
    let origin = spawn_tls_origin(&origin_ca.leaf("origin"));
    let dir = TempDir::new();
    let (_plain, tls, _stop) = spawn_tls_proxy(&dir, &proxy_ca, &other_ca.cert_pem, LOOPBACK).await;
    let r = get_https_via(tls, &proxy_ca.cert_pem, origin).await;
    assert_proxy_error(&r, 502, "tls_certificate_error", "upstream_tls_error");
}

/// A self-signed certificate marked `CA:TRUE` (what `openssl req -x509`
/// makes) is said to be one, also when it is in `ca_file` (it was "it is
/// not valid"); an origin that requires a client certificate says so under
/// TLS 1.3, where it learns it after the handshake (it was "connection
/// failed"); and a host name that is no TLS server name is refused before
/// anything is dialled (it was a 400 after the DNS query and a TCP
/// connection to the origin). Probe 146.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_tls_failures_are_worded_and_a_bad_name_dials_nothing() {
    let proxy_ca = pki::Ca::new("proxy CA");
    let own = pki::self_signed_ca_leaf("origin");
    let origin = spawn_tls_origin(&own);
    let dir = TempDir::new();
    let (_plain, tls, _stop) = spawn_tls_proxy(&dir, &proxy_ca, &own.cert_pem, LOOPBACK).await;
    let r = get_https_via(tls, &proxy_ca.cert_pem, origin).await;
    assert_proxy_error(&r, 502, "tls_certificate_error", "upstream_tls_error");
    let status = r.header("proxy-status").unwrap_or_default();
    assert!(
        status.contains("details=\"it is a CA certificate (CA:TRUE), which cannot be the origin's own\""),
        "{status}"
    );

    let origin_ca = pki::Ca::new("origin CA");
    let strict = spawn_tls_origin_with(&origin_ca.leaf("origin"), Some(&pki::Ca::new("client CA")), true);
    let dir = TempDir::new();
    let (_plain, tls, _stop) = spawn_tls_proxy(&dir, &proxy_ca, &origin_ca.cert_pem, LOOPBACK).await;
    let r = get_https_via(tls, &proxy_ca.cert_pem, strict).await;
    // RFC 9209 §2.3.15, with the alert's number (116, certificate_required).
    assert_proxy_error(&r, 502, "tls_alert_received", "upstream_protocol_error");
    let status = r.header("proxy-status").unwrap_or_default();
    assert!(
        status.contains(
            "; alert-id=116; details=\"the origin requires a client certificate, which authgate does not send\""
        ),
        "{status}"
    );

    // `-a.localhost` is loopback without DNS (127.0.0.1 and ::1), and no
    // TLS server name.
    let dir = TempDir::new();
    let both = "[egress]\nallow_cidrs = [\"127.0.0.0/8\", \"::1/128\"]\n";
    let (_plain, tls, _stop) = spawn_tls_proxy(&dir, &proxy_ca, &origin_ca.cert_pem, both).await;
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    silent.set_nonblocking(true).unwrap();
    let port = silent.local_addr().unwrap().port();
    let r = get_https_authority_via(tls, &proxy_ca.cert_pem, &format!("-a.localhost:{port}")).await;
    assert_proxy_error(&r, 400, "http_request_error", "bad_target");
    assert_eq!(silent.accept().map_err(|e| e.kind()).err(), Some(std::io::ErrorKind::WouldBlock), "dialled");
    // Nor looked up first by a rule that needs the addresses (probe 149).
    let fake =
        dns::spawn(vec![("-a.test", dns::Answer::A(vec![vec![std::net::Ipv4Addr::LOCALHOST]], 60))]).await;
    let dir = TempDir::new();
    let rules = format!(
        "{both}[dns]\nservers = [\"{}\"]\n[[rules]]\nname = \"lab\"\naction = \"allow\"\ncidrs = [\"127.0.0.0/8\"]\n",
        fake.addr
    );
    let (_plain, tls, _stop) = spawn_tls_proxy(&dir, &proxy_ca, &origin_ca.cert_pem, &rules).await;
    let r = get_https_authority_via(tls, &proxy_ca.cert_pem, &format!("-a.test:{port}")).await;
    assert_proxy_error(&r, 400, "http_request_error", "bad_target");
    assert_eq!(fake.queries("-a.test"), 0, "looked up");
}

/// Why a certificate was refused is in `details` (all were "could not be
/// verified", probe 111), and a `ca_file` replaced in place applies at the
/// next reload: it was ignored until a restart, without a word. One that
/// breaks fails the reload, and the one in use stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_file_replaced_in_place_applies_at_the_next_reload() {
    let proxy_ca = pki::Ca::new("proxy CA");
    let origin_ca = pki::Ca::new("origin CA");
    let origin = spawn_tls_origin(&origin_ca.leaf("origin"));
    let dir = TempDir::new();
    let other_ca = pki::Ca::new("some other CA").cert_pem;
    let (_plain, tls, _stop, state) = spawn_tls_proxy_with_state(&dir, &proxy_ca, &other_ca, LOOPBACK).await;
    let r = get_https_via(tls, &proxy_ca.cert_pem, origin).await;
    assert_proxy_error(&r, 502, "tls_certificate_error", "upstream_tls_error");
    let status = r.header("proxy-status").unwrap_or_default();
    assert!(status.contains("details=\"it is not issued by a CA authgate trusts"), "{status}");
    let reload = |state: Arc<authgate::State>| async move {
        tokio::task::spawn_blocking(move || {
            authgate::server::reload::reload(&state).map_err(|e| e.to_string())
        })
        .await
        .unwrap()
    };
    dir.write("upstream-ca.pem", &origin_ca.cert_pem);
    reload(state.clone()).await.unwrap();
    let r = get_https_via(tls, &proxy_ca.cert_pem, origin).await;
    assert_eq!(r.status, 200, "{}", r.dump());
    dir.write("upstream-ca.pem", "not a certificate\n");
    let err = reload(state.clone()).await.unwrap_err();
    assert!(err.contains("upstream.ca_file") && err.contains("not PEM"), "{err}");
    let r = get_https_via(tls, &proxy_ca.cert_pem, origin).await;
    assert_eq!(r.status, 200, "{}", r.dump());
}

/// A config in `dir` with a TLS listener and no `ca_file` (the system
/// roots are read for it, where `https://` is forwarded), and its users.
fn tls_listener_config(dir: &TempDir) -> std::path::PathBuf {
    let leaf = pki::Ca::new("listener CA").leaf("proxy");
    dir.write("cert.pem", &leaf.cert_pem);
    dir.write("key.pem", &leaf.key_pem);
    dir.write("users.toml", users_toml(&[("alice", "a1")]));
    let tls = "[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncert = \"cert.pem\"\nkey = \"key.pem\"\n";
    dir.write("authgate.toml", format!("{tls}[auth]\nusers_file = \"users.toml\"\n"))
}

/// `SSL_CERT_FILE` (read for the system roots when there is no `ca_file`)
/// naming a FIFO is an error `check` reports, not a proxy that never starts
/// (probe 111: it waited in `open` for a writer, without a word).
#[test]
fn ssl_cert_file_naming_a_fifo_is_refused() {
    let dir = TempDir::new();
    let fifo = dir.path().join("bundle.pem");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    // They are read for a TLS listener (where `https://` is forwarded).
    let config = tls_listener_config(&dir);
    // Not for `authgate users`, which checks [auth] alone: it was refused.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_authgate"))
        .args(["users", "--config", &config.display().to_string(), "list"])
        .env("SSL_CERT_FILE", &fifo)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_authgate"))
        .args(["check", "--config", &config.display().to_string()])
        .env("SSL_CERT_FILE", &fifo)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = output_within_20s(child, "check with SSL_CERT_FILE a FIFO");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("SSL_CERT_FILE") && err.contains("not a regular file"), "{err}");
    // Named on purpose with no certificate in it: it passed `check`, and
    // `run` verified nothing, without a word (probe 113).
    let empty = dir.write("empty.pem", "");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_authgate"))
        .args(["check", "--config", &config.display().to_string()])
        .env("SSL_CERT_FILE", &empty)
        .env_remove("SSL_CERT_DIR")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("SSL_CERT_FILE=") && err.contains("no CA certificate found"), "{err}");
}

/// `SSL_CERT_DIR`'s files are read as every file authgate reads is: one
/// over 64 MiB, or more than 64 MiB of them in all, is an error `check`
/// names, where rustls-native-certs read whatever it found (probe 380: a
/// 1 GiB file took 4 s and 1 GB, `/proc/kmsg` linked there hung `check` and
/// `run`). A valid certificate beside them changes nothing.
#[test]
fn ssl_cert_dir_files_are_bounded_as_every_file_read() {
    let dir = TempDir::new();
    let config = tls_listener_config(&dir);
    // `check` with `SSL_CERT_DIR` set to `certs`, or `SSL_CERT_FILE` to
    // it when it is a file.
    let check = |certs: &std::path::Path| {
        let (var, other) = match certs.is_file() {
            true => ("SSL_CERT_FILE", "SSL_CERT_DIR"),
            false => ("SSL_CERT_DIR", "SSL_CERT_FILE"),
        };
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_authgate"))
            .args(["check", "--config", &config.display().to_string()])
            .env(var, certs)
            .env_remove(other)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = output_within_20s(child, "check with SSL_CERT_DIR");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // (Sparse files: no disk is used.)
    let sized =
        |path: std::path::PathBuf, len: u64| std::fs::File::create(path).unwrap().set_len(len).unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    std::fs::write(certs.join("ca.pem"), pki::Ca::new("some root").cert_pem).unwrap();
    let (code, err) = check(&certs);
    assert_eq!(code, Some(0), "a directory of one root is taken: {err}");
    sized(certs.join("huge.pem"), (64 << 20) + 1);
    let (code, err) = check(&certs);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("SSL_CERT_DIR: ") && err.contains("huge.pem: larger than 64 MiB"), "{err}");
    std::fs::remove_file(certs.join("huge.pem")).unwrap();
    sized(certs.join("a.pem"), 40 << 20);
    sized(certs.join("b.pem"), 40 << 20);
    let (code, err) = check(&certs);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("the certificate files hold more than 64 MiB"), "{err}");
    std::fs::remove_file(certs.join("a.pem")).unwrap();
    std::fs::remove_file(certs.join("b.pem")).unwrap();
    // Links that lead nowhere (dangling, in a loop, through a file) and a
    // directory of the list that is not there are passed over, as OpenSSL
    // passes them; each stopped the proxy from starting (probe 385).
    std::os::unix::fs::symlink(certs.join("l2"), certs.join("l1")).unwrap();
    std::os::unix::fs::symlink(certs.join("l1"), certs.join("l2")).unwrap();
    std::os::unix::fs::symlink(certs.join("gone.pem"), certs.join("dangling")).unwrap();
    std::os::unix::fs::symlink(certs.join("ca.pem").join("x"), certs.join("through")).unwrap();
    let listed = format!("{}:{}", dir.path().join("none").display(), certs.display());
    let (code, err) = check(std::path::Path::new(&listed));
    assert_eq!(code, Some(0), "{err}");
    // A bad PEM section is an error naming the file: the certificates
    // after it were dropped without a word (probe 385).
    let root = pki::Ca::new("the root after");
    std::fs::write(
        certs.join("bundle.pem"),
        format!(
            "-----BEGIN CERTIFICATE-----\nMIIB!!!notbase64***\n-----END CERTIFICATE-----\n{}",
            root.cert_pem
        ),
    )
    .unwrap();
    let (code, err) = check(&certs);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("bundle.pem: a PEM section's base64 is not valid"), "{err}");
    // Read as `ca_file` is: a TRUSTED CERTIFICATE in `SSL_CERT_FILE` was
    // passed over without a word (probe 387), and is refused by name; in
    // a directory it is passed over, as a Red Hat system's holds a bundle
    // of them beside the plain one (its refusal stopped the proxy: probe
    // 388).
    let trusted = root.cert_pem.replace("BEGIN CERTIFICATE", "BEGIN TRUSTED CERTIFICATE");
    std::fs::write(certs.join("bundle.pem"), trusted.replace("END CERTIFICATE", "END TRUSTED CERTIFICATE"))
        .unwrap();
    let (code, err) = check(&certs);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = check(&certs.join("bundle.pem"));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("SSL_CERT_FILE: ") && err.contains("bundle.pem: it holds a TRUSTED CERTIFICATE"),
        "{err}"
    );
    // A file cut short is named: it lost its last certificates (probe 388).
    std::fs::write(certs.join("bundle.pem"), format!("{}-----BEGI", root.cert_pem)).unwrap();
    let (code, err) = check(&certs);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("bundle.pem: the file ends inside a PEM section's BEGIN line"), "{err}");
    // A byte order mark, at the start or before a later certificate (two
    // files joined with `cat`), hid the certificate after it; a second
    // mark before one leaves it to be skipped, as OpenSSL skips it, and is
    // refused, the line named (probe 390).
    std::fs::remove_file(certs.join("ca.pem")).unwrap();
    let bom = "\u{feff}";
    std::fs::write(certs.join("bundle.pem"), format!("{bom}{}{bom}{}", root.cert_pem, root.cert_pem))
        .unwrap();
    let (code, err) = check(&certs);
    assert_eq!(code, Some(0), "the root after a byte order mark is read: {err}");
    std::fs::write(certs.join("bundle.pem"), format!("{}{bom}{bom}{}", root.cert_pem, root.cert_pem))
        .unwrap();
    let (code, err) = check(&certs);
    assert_eq!(code, Some(1), "{err}");
    let line = root.cert_pem.lines().count() + 1;
    assert!(
        err.contains(&format!("bundle.pem: line {line}: a PEM section's BEGIN line has text before it")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_forwarding_goes_through_the_egress_checks_and_the_rules() {
    let proxy_ca = pki::Ca::new("proxy CA");
    let origin_ca = pki::Ca::new("origin CA");
    let origin = spawn_tls_origin(&origin_ca.leaf("origin"));
    // Default egress policy: loopback is internal, refused after the lookup.
    let dir = TempDir::new();
    let (_plain, tls, _stop) = spawn_tls_proxy(&dir, &proxy_ca, &origin_ca.cert_pem, "").await;
    let r = get_https_via(tls, &proxy_ca.cert_pem, origin).await;
    assert_proxy_error(&r, 403, "destination_ip_prohibited", "destination_ip_prohibited");
    // Loopback allowed, but a rule denies the port.
    let dir = TempDir::new();
    let rules = format!(
        "{LOOPBACK}[[rules]]\nname = \"no-test-origin\"\naction = \"deny\"\nports = [{}]\n",
        origin.port()
    );
    let (_plain, tls, _stop) = spawn_tls_proxy(&dir, &proxy_ca, &origin_ca.cert_pem, &rules).await;
    let r = get_https_via(tls, &proxy_ca.cert_pem, origin).await;
    assert_proxy_error(&r, 403, "http_request_denied", "denied_by_rule");
}

/// `connect_timeout` covers the origin's TLS handshake too (README,
/// `[limits]`): an origin that accepts TCP and never answers the
/// ClientHello is a 504 `connection_timeout`, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_never_finishes_the_tls_handshake_is_a_504_after_connect_timeout() {
    let proxy_ca = pki::Ca::new("proxy CA");
    let origin_ca = pki::Ca::new("origin CA");
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let mute = l.local_addr().unwrap();
    tokio::spawn(async move {
        let l = tokio::net::TcpListener::from_std(l).unwrap();
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    let dir = TempDir::new();
    let policy = format!("{LOOPBACK}[limits]\nconnect_timeout = \"500ms\"\n");
    let (_plain, tls, _stop) = spawn_tls_proxy(&dir, &proxy_ca, &origin_ca.cert_pem, &policy).await;
    let start = std::time::Instant::now();
    let r = get_https_via(tls, &proxy_ca.cert_pem, mute).await;
    assert_proxy_error(&r, 504, "connection_timeout", "connection_timeout");
    let took = start.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(450) && took < std::time::Duration::from_secs(5),
        "{took:?}"
    );
}

/// `connect_timeout` is one budget for the TCP connect and the TLS
/// handshake: each had its own (probe 111: 8 s for a 5 s timeout). Here the
/// TCP connect takes about 1 s (the origin's accept queue is full: the SYN
/// is dropped, and sent again after 1 s) and the handshake never ends: the
/// 504 comes at `connect_timeout`, 2 s, where it came at about 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_covers_the_tcp_connect_and_the_handshake_together() {
    let proxy_ca = pki::Ca::new("proxy CA");
    let origin_ca = pki::Ca::new("origin CA");
    let l = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    l.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    l.listen(0).unwrap();
    let slow = l.local_addr().unwrap().as_socket().unwrap();
    let filler = std::net::TcpStream::connect(slow).unwrap();
    let dir = TempDir::new();
    let policy = format!("{LOOPBACK}[limits]\nconnect_timeout = \"2s\"\n");
    let (_plain, tls, _stop) = spawn_tls_proxy(&dir, &proxy_ca, &origin_ca.cert_pem, &policy).await;
    // Room in the queue once the proxy's first SYN was dropped; what comes
    // in then is never answered.
    let held = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let first = l.accept().unwrap();
        std::thread::sleep(std::time::Duration::from_secs(5));
        drop((first, filler, l));
    });
    let start = std::time::Instant::now();
    let r = get_https_via(tls, &proxy_ca.cert_pem, slow).await;
    let took = start.elapsed();
    assert_proxy_error(&r, 504, "connection_timeout", "connection_timeout");
    assert!(
        took >= std::time::Duration::from_millis(1900) && took < std::time::Duration::from_millis(2600),
        "{took:?}"
    );
    held.join().unwrap();
}

#[test]
fn listener_certificates_load_with_ecdsa_and_ed25519_keys_and_a_chain() {
    let ca = pki::Ca::new("chain CA");
    let dir = TempDir::new();
    for (name, alg) in [
        ("p256", &rcgen::PKCS_ECDSA_P256_SHA256),
        ("p384", &rcgen::PKCS_ECDSA_P384_SHA384),
        ("ed25519", &rcgen::PKCS_ED25519),
    ] {
        let leaf = ca.leaf_with(name, alg);
        let cert = dir.write(&format!("{name}.pem"), format!("{}{}", leaf.cert_pem, ca.cert_pem));
        let key = dir.write(&format!("{name}.key"), &leaf.key_pem);
        let loaded =
            authgate::server::tls::load_certified_key(&cert, &key).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(loaded.cert.len(), 2, "{name}: the chain is kept");
    }
    // A key of a curve rustls does not sign with (P-521) is refused naming
    // the keys it takes: rustls said it could not read it "as RSA, ECDSA,
    // or EdDSA", of an ECDSA key (probe 106). (Made with openssl; a test
    // key, of no use elsewhere.)
    let cert = dir.write("p521.pem", P521_CERT);
    let key = dir.write("p521.key", P521_KEY);
    let err = authgate::server::tls::load_certified_key(&cert, &key).map(|_| ()).unwrap_err().to_string();
    assert!(
        err.contains("p521.key: unsupported private key") && err.contains("ECDSA keys on P-256 or P-384"),
        "{err}"
    );
    // RSA up to 4096 bits (ring signs with no larger key; the README and
    // this message said 8192, probe 108). Test keys made with openssl, of
    // no use elsewhere.
    let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/keys");
    let cert = dir.write("rsa4096.pem", include_str!("support/keys/rsa4096.pem"));
    let key = dir.write("rsa4096.key", include_str!("support/keys/rsa4096.key"));
    authgate::server::tls::load_certified_key(&cert, &key).unwrap_or_else(|e| panic!("rsa 4096: {e}"));
    // 3072 bits too; not 2560, inside the range the message and README
    // gave ("2048 to 4096"), which ring refuses (probe 219).
    let cert3072 = dir.write("rsa3072.pem", include_str!("support/keys/rsa3072.pem"));
    let key3072 = dir.write("rsa3072.key", include_str!("support/keys/rsa3072.key"));
    authgate::server::tls::load_certified_key(&cert3072, &key3072)
        .unwrap_or_else(|e| panic!("rsa 3072: {e}"));
    for size in ["4104", "2560"] {
        let key = dir.write(
            &format!("rsa{size}.key"),
            std::fs::read_to_string(keys.join(format!("rsa{size}.key"))).unwrap(),
        );
        let err = authgate::server::tls::load_certified_key(&cert, &key).map(|_| ()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("rsa{size}.key: unsupported private key"))
                && err.contains("RSA keys of 2048, 3072 or 4096 bits"),
            "{err}"
        );
        assert!(!err.contains("unexpected error"), "rustls's words for it, which named RSA: {err}");
    }
    // A damaged key in a sound PEM section may be damaged, not only of a
    // kind not taken: it was "unsupported" alone (probe 340).
    let damaged = dir.write(
        "damaged.key",
        "-----BEGIN PRIVATE KEY-----\nMIIBVAIBADANBgkqhkiG9w0BAQ==\n-----END PRIVATE KEY-----\n",
    );
    let err = authgate::server::tls::load_certified_key(&cert, &damaged).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("damaged.key: unsupported private key (or a damaged one)"), "{err}");
    // A key that does not belong to the certificate is refused with the file name.
    let other = ca.leaf_with("other", &rcgen::PKCS_ECDSA_P256_SHA256);
    let wrong_key = dir.write("wrong.key", &other.key_pem);
    let err =
        authgate::server::tls::load_certified_key(&dir.path().join("p256.pem"), &wrong_key).unwrap_err();
    assert_eq!(err.file, authgate::server::tls::TlsFile::Key, "{err}");
    let err = err.message;
    assert!(err.contains("wrong.key") && err.contains("does not match"), "{err}");
    // Byte order marks at line starts are skipped, in the chain and the
    // key: one before the intermediate dropped it, and the leaf alone was
    // served, `check` saying ok (probe 389).
    // What loading `cert` with `key` says of the certificate file.
    let cert_refused = |cert: &std::path::Path, key: &std::path::Path| {
        let err = authgate::server::tls::load_certified_key(cert, key).unwrap_err();
        assert_eq!(err.file, authgate::server::tls::TlsFile::Cert, "{err}");
        err.message
    };
    let bom = "\u{feff}";
    let chained = dir.write("bom-chain.pem", format!("{bom}{}{bom}{}", other.cert_pem, ca.cert_pem));
    let key = dir.write("bom.key", format!("{bom}{}", other.key_pem));
    let loaded = authgate::server::tls::load_certified_key(&chained, &key).unwrap();
    assert_eq!(loaded.cert.len(), 2, "the intermediate after a mark is read");
    // An intermediate whose BEGIN line has anything before it on its line
    // (a space, a second mark, the leaf's END line: files without a last
    // newline joined) is skipped by every PEM reader, and the leaf alone was
    // served, `check` saying ok (probe 390): refused, the line named.
    let leaf_lines = other.cert_pem.lines().count();
    for (name, joined, line) in [
        ("space.pem", format!("{} {}", other.cert_pem, ca.cert_pem), leaf_lines + 1),
        ("marks.pem", format!("{}{bom}{bom}{}", other.cert_pem, ca.cert_pem), leaf_lines + 1),
        ("no-newline.pem", format!("{}{}", other.cert_pem.trim_end(), ca.cert_pem), leaf_lines),
        ("comment.pem", format!("{}# the leaf's file ends{}", other.cert_pem, ca.cert_pem), leaf_lines + 1),
    ] {
        let err = cert_refused(&dir.write(name, joined), &key);
        assert!(
            err.contains(&format!("{name}: line {line}: a PEM section's BEGIN line has text before it")),
            "{err}"
        );
    }
    // A chain out of order, the key's certificate after another, is told
    // so (it was "key does not match"; probe 184).
    let reversed = dir.write("reversed.pem", format!("{}{}", ca.cert_pem, other.cert_pem));
    let err = cert_refused(&reversed, &wrong_key);
    assert!(
        err.contains("reversed.pem: the certificate of the key in ")
            && err.contains("wrong.key is number 2 of the chain, not the first"),
        "{err}"
    );
    // A certificate rustls cannot read is blamed on the certificate, not on
    // the (matching) key; an encrypted key is named as such.
    let garbage = dir.write("garbage.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
    let err = cert_refused(&garbage, &dir.path().join("p256.key"));
    assert!(
        err.contains("garbage.pem") && err.contains("cannot be used") && !err.contains("does not match"),
        "{err}"
    );
    // So is a chain with a certificate after the first that is not one:
    // rustls reads only the first, and every handshake failed (probe 118).
    let chain = dir.write(
        "chain-junk.pem",
        format!("{}-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", ca.leaf("junk").cert_pem),
    );
    let err = cert_refused(&chain, &dir.path().join("p256.key"));
    assert!(err.contains("chain-junk.pem: certificate 2 of the chain is not an X.509 certificate"), "{err}");
    // So is a chain longer than clients take in a handshake: one of the
    // leaf 20,000 times loaded, and every handshake failed (probe 380).
    let leaf = ca.leaf("long");
    let max = authgate::server::tls::MAX_CHAIN_BYTES;
    let long = dir.write("long.pem", leaf.cert_pem.repeat(max / leaf.der.len() + 1));
    let long_key = dir.write("long.key", &leaf.key_pem);
    let err = cert_refused(&long, &long_key);
    assert!(
        err.contains("long.pem: the chain is ") && err.contains("more than clients take (64000"),
        "{err}"
    );
    let short = dir.write("short.pem", leaf.cert_pem.repeat(max / (leaf.der.len() + 5) - 1));
    authgate::server::tls::load_certified_key(&short, &long_key).unwrap();
    // So is a first certificate whose dates are none (month 13): rustls
    // does not read them, and it loaded, long expired, without a word
    // (probe 123). (Its signature no longer holds: not what is looked at.)
    let leaf = ca.leaf_with("bad-date", &rcgen::PKCS_ECDSA_P256_SHA256);
    let mut der = leaf.der.clone();
    let at = der.windows(2).position(|w| w == [0x17, 0x0d]).unwrap() + 2;
    der[at + 2..at + 4].copy_from_slice(b"13");
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    let pem = format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n");
    let bad_date = dir.write("bad-date.pem", pem);
    let bad_key = dir.write("bad-date.key", &leaf.key_pem);
    let err =
        authgate::server::tls::load_certified_key(&bad_date, &bad_key).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("bad-date.pem: the first certificate's dates cannot be read"), "{err}");
    let encrypted = dir.write(
        "enc.key",
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHzBJBgkqhkiG9w0BBQ0wPDAbBgkqhkiG9w0BBQwwDgQI\n-----END ENCRYPTED PRIVATE KEY-----\n",
    );
    let err =
        authgate::server::tls::load_certified_key(&dir.path().join("p256.pem"), &encrypted).unwrap_err();
    assert_eq!(err.file, authgate::server::tls::TlsFile::Key, "{err}");
    let err = err.message;
    assert!(err.contains("enc.key") && err.contains("encrypted"), "{err}");
    // In a config, each problem points at the line of the file it is in.
    dir.write("users.toml", "");
    for (cert, key, at) in [
        ("p256.pem", "missing.key", ":6:7:"),
        ("p256.pem", "wrong.key", ":6:7:"),
        ("garbage.pem", "p256.key", ":5:8:"),
    ] {
        let config = dir.write(
            "tls.toml",
            format!("[auth]\nusers_file = \"users.toml\"\n[[server.tls]]\nlisten = \"127.0.0.1:3129\"\ncert = \"{cert}\"\nkey = \"{key}\"\n"),
        );
        let err = authgate::config::load(&config).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains(&format!("tls.toml{at} server.tls: ")), "{cert} {key} at {at}: {err}");
    }
    // `explain` of absolute-form https:// on a config with a TLS listener:
    // explained, with a note (above the result) that only the TLS
    // listeners forward it (on a config without one it is an error).
    dir.write("users.toml", users_toml(&[("alice", "a1")]));
    let config = dir.write(
        "tls.toml",
        "[auth]\nusers_file = \"users.toml\"\n[egress]\nallow_cidrs = [\"127.0.0.0/8\"]\n[[server.tls]]\nlisten = \"127.0.0.1:3129\"\ncert = \"p256.pem\"\nkey = \"p256.key\"\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_authgate"))
        .args(["explain", "--config"])
        .arg(&config)
        .args(["--user", "alice", "--method", "GET", "https://127.0.0.1:8443/"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let note = text.find("note     https:// is forwarded on the TLS listeners only").expect("the note");
    assert!(note < text.find("result   ALLOWED").expect("the result"), "{text}");
    // A host no TLS connection can be made to is the listener's 400
    // bad_target, before the rules and DNS (it was explained as ALLOWED;
    // probe 156). Its DNS server is a dead loopback port all the same.
    let config = dir.write(
        "tls.toml",
        format!(
            "[auth]\nusers_file = \"users.toml\"\n[dns]\nservers = [\"127.0.0.1:{}\"]\n[[server.tls]]\nlisten = \"127.0.0.1:3129\"\ncert = \"p256.pem\"\nkey = \"p256.key\"\n",
            closed_port()
        ),
    );
    for host in ["-x.test", "a-.test"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_authgate"))
            .args(["explain", "--config"])
            .arg(&config)
            .args(["--user", "alice", "--method", "GET", &format!("https://{host}:8443/")])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{host}: {err}");
        assert!(err.contains("no TLS server name") && err.contains("400 bad_target"), "{host}: {err}");
    }
}

/// A TLS handshake with the origin that fails (its certificate is from
/// another CA) names in the access line the address that served that
/// certificate: of a name's addresses, which one. It was `-`, as for a
/// dial that reached no origin.
#[test]
fn the_access_line_names_the_origin_whose_certificate_failed() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in = rt.enter();
    let proxy_ca = pki::Ca::new("proxy CA");
    let origin = spawn_tls_origin(&pki::Ca::new("origin CA").leaf("origin"));
    let dir = TempDir::new();
    let leaf = proxy_ca.leaf("proxy");
    dir.write("proxy-cert.pem", &leaf.cert_pem);
    dir.write("proxy-key.pem", &leaf.key_pem);
    dir.write("upstream-ca.pem", &pki::Ca::new("some other CA").cert_pem);
    let tls_port = closed_port();
    let extra = format!(
        "[[server.tls]]\nlisten = \"127.0.0.1:{tls_port}\"\ncert = \"proxy-cert.pem\"\nkey = \"proxy-key.pem\"\n[upstream]\nca_file = \"upstream-ca.pem\"\n"
    );
    let bin = start_binary(&dir, &extra, &users_toml(&[("alice", "a1")]), std::process::Stdio::piped());
    let tls = SocketAddr::from(([127, 0, 0, 1], tls_port));
    let r = rt.block_on(get_https_via(tls, &proxy_ca.cert_pem, origin));
    assert_proxy_error(&r, 502, "tls_certificate_error", "upstream_tls_error");
    let access = bin.stop_for_access_line("/secure");
    assert!(access.contains(&format!(" upstream={origin} ")), "{access}");
}

/// A failed read of the system roots is not kept: a reload that first
/// needed them (its `ca_file` taken out) and failed on a bad file of
/// `SSL_CERT_DIR` failed again at every later reload with the same message,
/// the file long fixed, while `check` said ok (probe 385).
#[test]
fn a_failed_read_of_the_system_roots_is_read_again_at_the_next_reload() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ca = pki::Ca::new("proxy CA");
    let dir = TempDir::new();
    let leaf = ca.leaf("proxy");
    dir.write("proxy-cert.pem", &leaf.cert_pem);
    dir.write("proxy-key.pem", &leaf.key_pem);
    dir.write("roots.pem", &ca.cert_pem);
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let bad = certs.join("bad.pem");
    std::fs::write(&bad, "-----BEGIN CERTIFICATE-----\nMIIB!!!\n-----END CERTIFICATE-----\n").unwrap();
    let (tls_port, admin_port) = (closed_port(), closed_port());
    let upstream = "[upstream]\nca_file = \"roots.pem\"\n";
    let extra = format!(
        "[[server.tls]]\nlisten = \"127.0.0.1:{tls_port}\"\ncert = \"proxy-cert.pem\"\nkey = \"proxy-key.pem\"\n\
         [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n[reload]\nwatch = false\n{upstream}"
    );
    let env = [("SSL_CERT_DIR", certs.to_str().unwrap()), ("SSL_CERT_FILE", "")];
    let bin =
        start_binary_env(&dir, &extra, &users_toml(&[("alice", "a1")]), std::process::Stdio::null(), &env);
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let wait_for = |series: &str, value: f64| {
        rt.block_on(async {
            for _ in 0..400 {
                if admin::scrape(admin).await.get(series) == Some(&value) {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            }
            panic!("{series} not {value} within 10 s");
        })
    };
    let config = dir.path().join("authgate.toml");
    let without_ca = std::fs::read_to_string(&config).unwrap().replace(upstream, "");
    std::fs::write(&config, without_ca).unwrap();
    bin.signal("HUP");
    wait_for("authgate_config_reloads_total{result=\"failed\"}", 1.0);
    std::fs::remove_file(&bad).unwrap();
    std::fs::write(certs.join("ca.pem"), &ca.cert_pem).unwrap();
    bin.signal("HUP");
    wait_for("authgate_config_generation", 2.0);
}

/// With the system's roots (no `ca_file`), a reload drops the TLS sessions
/// kept with origins, as it does with a `ca_file`: one connector was kept
/// for the life of the process, and its sessions with it (probe 340).
#[test]
fn a_reload_drops_the_tls_sessions_kept_with_origins_also_with_the_system_roots() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in = rt.enter();
    let proxy_ca = pki::Ca::new("proxy CA");
    let origin_ca = pki::Ca::new("origin CA");
    let resumed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let origin = spawn_tls_origin_noting(&origin_ca.leaf("origin"), None, true, resumed.clone());
    let dir = TempDir::new();
    let leaf = proxy_ca.leaf("proxy");
    dir.write("proxy-cert.pem", &leaf.cert_pem);
    dir.write("proxy-key.pem", &leaf.key_pem);
    let roots = dir.write("roots.pem", &origin_ca.cert_pem);
    let (tls_port, admin_port) = (closed_port(), closed_port());
    let extra = format!(
        "[[server.tls]]\nlisten = \"127.0.0.1:{tls_port}\"\ncert = \"proxy-cert.pem\"\nkey = \"proxy-key.pem\"\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n"
    );
    let env = [("SSL_CERT_FILE", roots.to_str().unwrap())];
    let bin =
        start_binary_env(&dir, &extra, &users_toml(&[("alice", "a1")]), std::process::Stdio::null(), &env);
    let tls = SocketAddr::from(([127, 0, 0, 1], tls_port));
    let get = || {
        let r = rt.block_on(get_https_via(tls, &proxy_ca.cert_pem, origin));
        assert_eq!(r.status, 200, "{}", r.dump());
        resumed.lock().unwrap().last().copied().unwrap()
    };
    assert!(!get(), "the first handshake is a full one");
    assert!(get(), "the second resumes (else this test would show nothing)");
    bin.signal("HUP");
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    rt.block_on(async {
        for _ in 0..400 {
            if admin::scrape(admin).await.get("authgate_config_generation") == Some(&2.0) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("no reload within 10 s");
    });
    assert!(!get(), "a session kept across the reload");
    assert!(get());
    drop(bin);
}

const P521_KEY: &str = "-----BEGIN EC PRIVATE KEY-----\nMIHcAgEBBEIA2eZ5nUdeU58D2C6sIs36HW7WeuX19Ry8jSa4LcHwR3MF7UlRqD1t\nB26+RIB0USXk3BHpWr398h0Z6DOWXtnAEvugBwYFK4EEACOhgYkDgYYABAHqZnsj\n+NALX0n5Wrt1ofXuFq2jBBieOMBCpo4k48rpl1uUX2zR6Tff2VpTBidWSrnoWAM0\nLLY4CzKpvk6tHhkfQgDSfZa39wYrJW6cGC4gf7sROJJehYNh1sEUlOPo5uFRmGxS\nKA88JhAEs6btnmR9TIycVsZkVLX14YS+j/vladOsTQ==\n-----END EC PRIVATE KEY-----\n";
const P521_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIICBTCCAWagAwIBAgIUSXGTrk4UfZPAPVJrUqoFvW3W4MUwCgYIKoZIzj0EAwIw\nFDESMBAGA1UEAwwJbG9jYWxob3N0MB4XDTI2MTIwMjA1MzAxNVoXDTM2MTEyOTA1\nMzAxNVowFDESMBAGA1UEAwwJbG9jYWxob3N0MIGbMBAGByqGSM49AgEGBSuBBAAj\nA4GGAAQB6mZ7I/jQC19J+Vq7daH17hatowQYnjjAQqaOJOPK6ZdblF9s0ek339la\nUwYnVkq56FgDNCy2OAsyqb5OrR4ZH0IA0n2Wt/cGKyVunBguIH+7ETiSXoWDYdbB\nFJTj6ObhUZhsUigPPCYQBLOm7Z5kfUyMnFbGZFS19eGEvo/75WnTrE2jUzBRMB0G\nA1UdDgQWBBQqY35t8OOcNsz6alpZvBKCgx5edDAfBgNVHSMEGDAWgBQqY35t8OOc\nNsz6alpZvBKCgx5edDAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA4GMADCB\niAJCAXXUc5NvWcEDip2fMd6sffKDG5hmTFoeFc4dKkMFkpXczqk3yEc7DdgR5aYI\nkA4ptyRw9FK1ZG8QWy4/uwcy9fl+AkIAqtnTh/qNP/O2uiBFXUSsJA8I0lpODGZw\nyVry7eJRVeeOLbgoGxPUA1T1Ju1RcSyvAWwsQ0kHwz2fizHNL7i0k9I=\n-----END CERTIFICATE-----\n";

/// A `ca_file` that is not what it should be is said so in words: a cut
/// PEM section was "missing section end marker: [67, 69, 82, …]", a key or
/// a DER file only "no CA certificate found" (probe 111). A byte order mark
/// before the first certificate is skipped.
#[test]
fn ca_file_problems_are_worded() {
    let ca = pki::Ca::new("worded CA");
    let dir = TempDir::new();
    let err = |name: &str, contents: &[u8]| {
        let path = dir.write(name, contents);
        authgate::proxy::upstream_tls::connector(Some(&path)).map(|_| ()).unwrap_err()
    };
    let cut = &ca.cert_pem[..ca.cert_pem.len() - 30];
    let e = err("cut.pem", cut.as_bytes());
    assert!(e.contains("cut.pem: a PEM section has no END line"), "{e}");
    let e = err("key.pem", ca.leaf("k").key_pem.as_bytes());
    assert!(e.contains("key.pem: no CA certificate found, only a private key"), "{e}");
    let e = err("der.crt", &[0x30, 0x82, 0x01, 0x0a, 0x02]);
    assert!(e.contains("der.crt: no CA certificate found: the file is not PEM"), "{e}");
    let e = err("empty.pem", b"");
    assert!(e.contains("empty.pem: the file is empty"), "{e}");
    let bom = dir.write("bom.pem", format!("\u{feff}{}", ca.cert_pem));
    authgate::proxy::upstream_tls::connector(Some(&bom)).unwrap_or_else(|e| panic!("{e}"));
    // A mark at the start of a base64 line, or two before a BEGIN line:
    // OpenSSL reads no certificate there, and authgate trusted one (probe
    // 390).
    let e = err("mark-in-base64.pem", ca.cert_pem.replacen("-----\n", "-----\n\u{feff}", 1).as_bytes());
    assert!(e.contains("mark-in-base64.pem: a PEM section's base64 is not valid"), "{e}");
    let e = err("two-marks.pem", format!("\u{feff}\u{feff}{}", ca.cert_pem).as_bytes());
    assert!(e.contains("two-marks.pem: line 1: a PEM section's BEGIN line has text before it"), "{e}");
}

/// An `https://` origin that answers an upload early (a 413) and closes
/// with the body unread is reset by its kernel; the reset failed a write of
/// the body inside TLS, and the answer already in the socket was never
/// read: the client got a 502 (probe 345: 16 of 30). As for a plain origin
/// (`bodies::an_early_answer_reaches_the_client_though_the_origin_then_resets`),
/// each of twenty uploads of 3 MB gets the origin's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_from_a_tls_origin_reaches_the_client_though_the_origin_then_resets() {
    let proxy_ca = pki::Ca::new("proxy CA");
    let origin_ca = pki::Ca::new("origin CA");
    let acceptor = tls_acceptor(&origin_ca.leaf("origin"), None);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // (Without, the answer could wait behind the session
                // tickets, unacknowledged yet, and go with the close.)
                let _ = s.set_nodelay(true);
                let Ok(mut tls) = acceptor.accept(s).await else { return };
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while find(&head, b"\r\n\r\n").is_none() {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let refusal =
                    b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbig";
                let _ = tls.write_all(refusal).await;
                let _ = tls.flush().await;
                // Dropped with the body unread: a reset.
            });
        }
    });
    let dir = TempDir::new();
    let (_plain, proxy, _stop) = spawn_tls_proxy(&dir, &proxy_ca, &origin_ca.cert_pem, LOOPBACK).await;
    let len = 3 * 1024 * 1024;
    let authority = format!("127.0.0.1:{}", origin.port());
    for i in 0..20 {
        let connector = pki::connector(&proxy_ca.cert_pem);
        let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
        let tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
        let (mut rd, mut wr) = tokio::io::split(tls);
        let length = len.to_string();
        let head = request(
            "POST",
            &format!("https://{authority}/upload"),
            &[
                ("Host", &authority),
                ("Proxy-Authorization", &basic("alice", "a1")),
                ("Content-Length", &length),
            ],
        );
        let writer = tokio::spawn(async move {
            let _ = wr.write_all(&head).await;
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0;
            while sent < len {
                if wr.write_all(&chunk).await.is_err() {
                    return;
                }
                sent += chunk.len();
            }
        });
        let mut got = Vec::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(20), rd.read_to_end(&mut got)).await;
        writer.abort();
        let got = String::from_utf8_lossy(&got).into_owned();
        assert!(read.is_ok(), "upload {i}: the proxy closes the connection; got so far:\n{got}");
        assert!(got.starts_with("HTTP/1.1 413 "), "upload {i}: {got}");
        assert!(got.ends_with("\r\n\r\nbig"), "upload {i}: {got}");
    }
}
