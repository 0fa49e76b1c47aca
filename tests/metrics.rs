//! Metrics, the admin endpoints, and JSON logs.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

const RULES: &str =
    "[policy]\ndefault = \"allow\"\n[[rules]]\nname = \"no-port\"\naction = \"deny\"\nports = [PORT]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_exactly_for_a_scripted_sequence() {
    let origin = spawn_origin(|_req| async {
        hyper::Response::builder()
            .status(401)
            .header("www-authenticate", "Basic realm=\"o\"")
            .body(full("no"))
            .unwrap()
    });
    let denied_port = closed_port();
    let (run, _state) = spawn_with_admin(&RULES.replace("PORT", &denied_port.to_string())).await;
    let r = send_one(run.admin, "GET", "/readyz", &[("Host", "a")]).await;
    assert_eq!(r.status, 200, "ready once listening");
    let before = scrape(run.admin).await;
    for (k, v) in &before {
        if k.starts_with("authgate_requests_total") || k.starts_with("authgate_upstream_responses_total") {
            assert_eq!(*v, 0.0, "{k} starts at 0");
        }
    }
    let a = basic("alice", "a1");
    // 1. a 407 (no credentials)
    let r = get(run.proxy, &origin.url("/"), &[("Host", &origin.authority())]).await;
    assert_eq!(r.status, 407);
    // 2. a forwarded 401 from the origin (first login: one argon2, a cache miss)
    let r =
        get(run.proxy, &origin.url("/"), &[("Host", &origin.authority()), ("Proxy-Authorization", &a)]).await;
    assert_eq!(r.status, 401);
    // 3. a 403 from a rule (cache hit)
    let r =
        send_one(run.proxy, "CONNECT", &format!("127.0.0.1:{denied_port}"), &[("Proxy-Authorization", &a)])
            .await;
    assert_eq!(r.status, 403);
    // 4. a tunnel, closed by the client (cache hit)
    let shout = spawn_shout_origin();
    let mut c = RawConn::connect(run.proxy).await;
    c.send(request("CONNECT", &shout.authority(), &[("Proxy-Authorization", &a)])).await;
    assert_eq!(c.read_head().await.status, 200);
    c.send(b"abc").await;
    assert_eq!(c.read_exact(3).await, b"ABC");
    c.shutdown_write().await;
    assert_eq!(c.read_to_end().await, b"BYE\n");
    // 5. a request its client abandons while the origin has not answered (cache hit)
    let mut silent = spawn_silent_origin();
    let mut c = RawConn::connect(run.proxy).await;
    let host = silent.origin.authority();
    c.send(request("GET", &silent.origin.url("/"), &[("Host", &host), ("Proxy-Authorization", &a)])).await;
    silent.next_head().await;
    drop(c);
    silent.next_close().await;
    // The tunnel's end is counted when its task finishes.
    let deadline = Instant::now() + Duration::from_secs(5);
    let after = loop {
        let m = scrape(run.admin).await;
        if m["authgate_active_tunnels"] == 0.0
            && m["authgate_bytes_total{direction=\"up\"}"] >= 3.0
            && m["authgate_requests_total{outcome=\"abandoned\"}"] >= 1.0
        {
            break m;
        }
        assert!(Instant::now() < deadline, "tunnel never finished: {m:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let d = |k: &str| after[k] - before.get(k).copied().unwrap_or(0.0);
    assert_eq!(d("authgate_requests_total{outcome=\"proxy_auth_required\"}"), 1.0);
    assert_eq!(d("authgate_requests_total{outcome=\"forwarded\"}"), 1.0);
    assert_eq!(d("authgate_requests_total{outcome=\"denied\"}"), 1.0);
    assert_eq!(d("authgate_requests_total{outcome=\"tunnel\"}"), 1.0);
    assert_eq!(d("authgate_requests_total{outcome=\"upstream_error\"}"), 0.0);
    assert_eq!(d("authgate_requests_total{outcome=\"abandoned\"}"), 1.0);
    assert_eq!(d("authgate_proxy_auth_failures_total{reason=\"missing\"}"), 1.0);
    assert_eq!(d("authgate_proxy_auth_failures_total{reason=\"invalid\"}"), 0.0);
    assert_eq!(d("authgate_upstream_responses_total{class=\"401\"}"), 1.0);
    assert_eq!(d("authgate_upstream_responses_total{class=\"4xx\"}"), 0.0, "401 is counted on its own");
    assert_eq!(d("authgate_auth_cache_total{result=\"miss\"}"), 1.0);
    assert_eq!(d("authgate_auth_cache_total{result=\"hit\"}"), 3.0);
    assert_eq!(d("authgate_argon2_verifications_total"), 1.0);
    assert_eq!(d("authgate_argon2_duration_seconds_count"), 1.0);
    // tunnel: 3 bytes up; down: "ABC" + "BYE\n" = 7, plus the 401 body "no" = 9
    assert_eq!(d("authgate_bytes_total{direction=\"up\"}"), 3.0);
    assert_eq!(d("authgate_bytes_total{direction=\"down\"}"), 9.0);
    assert_eq!(after["authgate_config_generation"], 1.0);
    assert_eq!(after["authgate_build_info{version=\"0.1.0\"}"], 1.0);
    // The admin listener is not a proxy.
    let r = send_one(run.admin, "GET", "/nope", &[("Host", "a")]).await;
    assert_eq!(r.status, 404);
    // Other methods: 405 with the Allow field RFC 9110 §15.5.6 requires.
    let r = send_one(run.admin, "POST", "/healthz", &[("Host", "a"), ("Content-Length", "0")]).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    // RFC 9112 §3.2: 400 to an HTTP/1.1 request without Host, with two, or
    // with one that is not host[:port] (it answered 200: probe 117).
    for hosts in [&[][..], &[("Host", "a"), ("Host", "b")], &[("Host", "a b/c")]] {
        let r = send_one(run.admin, "GET", "/healthz", hosts).await;
        assert_eq!(r.status, 400, "{hosts:?}");
    }
    let mut c = RawConn::connect(run.admin).await;
    c.send(b"GET /healthz HTTP/1.0\r\n\r\n".to_vec()).await;
    assert_eq!(c.read_response("GET").await.status, 200, "HTTP/1.0 needs no Host");
}

/// The proxy's own admin listener is no destination, whatever the rules
/// and `allow_cidrs` open: a user read `/metrics` through the proxy (with
/// `per_user`, other users' names) and, with tunnels to it from the
/// proxy's own address, used up that address's admin connections, locking
/// out a health check on the same host (probe 396).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_is_no_destination_through_the_proxy() {
    let admin_port = closed_port();
    let dir = TempDir::new();
    let cfg = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[auth]\nusers_file = \"users.toml\"\n[egress]\n\
         allow_cidrs = [\"127.0.0.0/8\"]\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n[policy]\ndefault = \"allow\"\n"
    );
    let path = dir.write("authgate.toml", cfg);
    dir.write("users.toml", users_toml(&[("alice", "a1")]));
    let state = authgate::State::new(authgate::config::load(&path).unwrap_or_else(|e| panic!("{e}")));
    let listeners = authgate::server::bind_all(&state).await.unwrap();
    let proxy = listeners[0].local_addr().unwrap();
    let (_stop, _task) = serve(state.clone(), listeners);
    let admin = format!("127.0.0.1:{admin_port}");
    let auth = basic("alice", "a1");
    let get_through = async |target: &str| {
        let url = format!("http://{target}/metrics");
        send_one(proxy, "GET", &url, &[("Host", target), ("Proxy-Authorization", &auth)]).await
    };
    let refused = "destination_ip_prohibited";
    assert_proxy_error(&get_through(&admin).await, 403, refused, refused);
    let mut tunnel = RawConn::connect(proxy).await;
    tunnel.send(request("CONNECT", &admin, &[("Host", &admin), ("Proxy-Authorization", &auth)])).await;
    assert_proxy_error(&tunnel.read_response("CONNECT").await, 403, refused, refused);
    // The admin port itself answers, and another port of the address is
    // no admin listener.
    assert_eq!(
        send_one(SocketAddr::from(([127, 0, 0, 1], admin_port)), "GET", "/healthz", &[("Host", "a")])
            .await
            .status,
        200
    );
    // A reload that moves or removes `[admin] listen` (a restart setting)
    // leaves the running listener refused (probe 399).
    for moved in [format!("[admin]\nlisten = \"127.0.0.1:{}\"\n", closed_port()), String::new()] {
        let text = std::fs::read_to_string(&path).unwrap();
        let start = text.find("[admin]").unwrap_or(text.len());
        let end = text[start..].find("[policy]").map_or(text.len(), |i| start + i);
        std::fs::write(&path, format!("{}{moved}{}", &text[..start], &text[end..])).unwrap();
        let reloading = state.clone();
        tokio::task::spawn_blocking(move || authgate::server::reload::reload(&reloading))
            .await
            .unwrap()
            .unwrap();
        assert_proxy_error(&get_through(&admin).await, 403, refused, refused);
    }
    let other = format!("127.0.0.1:{}", closed_port());
    assert_proxy_error(&get_through(&other).await, 502, "connection_refused", "connection_refused");
}

/// A health check that sends its request and at once shuts its sending
/// side (`nc -N`, a probe script's `shutdown(SHUT_WR)`) is answered: hyper
/// took the end of the stream right behind the head for a connection to
/// close, and 10 of 1,000 such checks got no answer (probe 175).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_request_followed_at_once_by_a_half_close_is_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (run, _state) = spawn_with_admin("").await;
    for i in 0..1500 {
        let mut s = tokio::net::TcpStream::connect(run.admin).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut got)).await;
        assert!(matches!(read, Ok(Ok(_))), "try {i}: {read:?}");
        assert!(got.starts_with(b"HTTP/1.1 200 "), "try {i}: {:?}", String::from_utf8_lossy(&got));
    }
}

/// The admin port (no credentials asked) holds at most
/// `MAX_ADMIN_CONNECTIONS` connections, and `MAX_ADMIN_CONNECTIONS_PER_ADDRESS`
/// from one address: one past them is closed unanswered, those open are
/// served, another address is served while one is at its share, the proxy
/// port is not affected, and a slot freed is taken again. (Without a bound,
/// kept-alive `/healthz` connections took every file descriptor and a proxy
/// request went unanswered; with one for all, 64 held from one address kept
/// every health check out.)
/// `authgate_upstream_idle_connections` counts the origin connections idle
/// in the pool: one after a request to a keep-alive origin, none once
/// `upstream_idle_timeout` has closed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_origin_connections_are_a_gauge_that_falls_when_they_expire() {
    let (run, _state) = spawn_with_admin("[limits]\nupstream_idle_timeout = \"1s\"\n").await;
    let origin = spawn_echo_origin();
    let gauge = async || scrape(run.admin).await["authgate_upstream_idle_connections"];
    assert_eq!(gauge().await, 0.0);
    let r = get_from(run.proxy, &origin, "/", ("alice", "a1")).await;
    assert_eq!(r.status, 200, "{}", r.dump());
    assert_eq!(gauge().await, 1.0);
    let start = std::time::Instant::now();
    while gauge().await != 0.0 {
        assert!(start.elapsed() < Duration::from_secs(10), "still pooled after 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An origin connection that carried a download of 1 MB (hyper's read
/// buffer grew for it, and keeps its size), or a request head of 40 KiB,
/// leaves the pool after about 5 s idle, not `upstream_idle_timeout`; one
/// that carried a small answer stays, and so does one that carried a 1 MB
/// upload, which hyper writes from the body's own chunks (probe 224: 300
/// connections idle after 4 MB downloads held 70 MB for the whole minute;
/// probe 225: uploads were taken for grown too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_buffers_grew_leaves_the_pool_sooner() {
    let (run, _state) = spawn_with_admin("[limits]\nupstream_idle_timeout = \"60s\"\n").await;
    let small = spawn_origin(|_req| async { http::Response::new(full(vec![b's'; 100])) });
    let big = spawn_origin(|_req| async { http::Response::new(full(vec![b'b'; 1 << 20])) });
    let long_head = spawn_echo_origin();
    let upload = spawn_checksum_origin();
    let gauge = async || scrape(run.admin).await["authgate_upstream_idle_connections"];
    for origin in [&small, &big] {
        let r = get_from(run.proxy, origin, "/", ("alice", "a1")).await;
        assert_eq!(r.status, 200);
    }
    let auth = basic("alice", "a1");
    let pad = "p".repeat(40 * 1024);
    let head = [("Host", &*long_head.authority()), ("Proxy-Authorization", &auth), ("X-Pad", &pad)];
    let r = send_one_raw(run.proxy, request("GET", &long_head.url("/"), &head), "GET").await;
    assert_eq!(r.status, 200, "{}", r.dump());
    let post = || {
        let length = (1usize << 20).to_string();
        let head =
            [("Host", &*upload.authority()), ("Proxy-Authorization", &auth), ("Content-Length", &length)];
        let mut post = request("POST", &upload.url("/"), &head);
        post.extend_from_slice(&vec![b'u'; 1 << 20]);
        post
    };
    assert_eq!(send_one_raw(run.proxy, post(), "POST").await.status, 200);
    assert_eq!(gauge().await, 4.0);
    let start = Instant::now();
    while gauge().await != 2.0 {
        assert!(start.elapsed() < Duration::from_secs(10), "not 2 pooled after 10 s: {}", gauge().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The two left are the small answer's and the upload's: asking those
    // origins again takes them, and makes no other.
    let r = get_from(run.proxy, &small, "/", ("alice", "a1")).await;
    assert_eq!(r.status, 200);
    assert_eq!(send_one_raw(run.proxy, post(), "POST").await.status, 200);
    assert_eq!(gauge().await, 2.0);
}

/// Sends `bytes` on a new connection to `proxy` and reads the response.
async fn send_one_raw(proxy: SocketAddr, bytes: Vec<u8>, method: &str) -> RawResponse {
    let mut c = RawConn::connect(proxy).await;
    c.send(bytes).await;
    c.read_response(method).await
}

/// The pool keeps at most `max_connections` idle origin connections, all
/// origins together: one client's slow requests to a few origins filled it
/// with 982 (1024 allowed per origin), the process ran out of descriptors
/// and other clients got 503 (probe 121). Requests past the bound are
/// served all the same; their connections are closed after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_pool_keeps_at_most_max_connections_for_all_origins() {
    let (run, _state) = spawn_with_admin("[limits]\nmax_connections = 6\nmax_connections_per_ip = 6\n").await;
    // Slow answers: the requests to one origin overlap, a connection each.
    let slow = || {
        spawn_origin(|_req: hyper::Request<hyper::body::Incoming>| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            hyper::Response::new(full("ok"))
        })
    };
    let origins = [slow(), slow(), slow()];
    for origin in &origins {
        let requests: Vec<_> = (0..3)
            .map(|_| {
                let (proxy, url, host) = (run.proxy, origin.url("/"), origin.authority());
                tokio::spawn(async move {
                    get(proxy, &url, &[("Host", &host), ("Proxy-Authorization", &basic("alice", "a1"))]).await
                })
            })
            .collect();
        for r in requests {
            let r = r.await.unwrap();
            assert_eq!(r.status, 200, "{}", r.dump());
        }
    }
    assert_eq!(scrape(run.admin).await["authgate_upstream_idle_connections"], 6.0, "3 × 3 kept as 6");
}

/// Pooled connections their origins closed (after a short keep-alive
/// timeout) do not count against that bound: they kept pooling stopped for
/// every other origin until `upstream_idle_timeout` while the metric said
/// 0 (probe 122).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_their_origins_closed_leave_room_in_the_pool() {
    let (run, _state) = spawn_with_admin("[limits]\nmax_connections = 2\nmax_connections_per_ip = 2\n").await;
    // An origin that answers one request on a keep-alive connection, then
    // closes it 100 ms later; and one that keeps connections, counting them.
    let origin = |close_after: Option<Duration>| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let mut stream = stream;
                    let mut buf = [0u8; 4096];
                    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {
                        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                        if let Some(after) = close_after {
                            std::thread::sleep(after);
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    };
    let ask = async |addr: SocketAddr| {
        let url = format!("http://{addr}/");
        let r = get(
            run.proxy,
            &url,
            &[("Host", &addr.to_string()), ("Proxy-Authorization", &basic("alice", "a1"))],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.dump());
    };
    for _ in 0..2 {
        ask(origin(Some(Duration::from_millis(100))).0).await;
    }
    // Closed by their origins; the pool's sweep runs four times a second.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(scrape(run.admin).await["authgate_upstream_idle_connections"], 0.0);
    let (keeps, accepted) = origin(None);
    for _ in 0..3 {
        ask(keeps).await;
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "pooled and taken again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_holds_a_bounded_number_of_connections() {
    use authgate::server::{MAX_ADMIN_CONNECTIONS, MAX_ADMIN_CONNECTIONS_PER_ADDRESS as PER_ADDRESS};
    let origin = spawn_echo_origin();
    let (run, _state) = spawn_with_admin("").await;
    let from = |i: usize| format!("127.0.0.{}", 2 + i);
    let served = |mut conn: RawConn, path: &'static str| async move {
        conn.send(request("GET", path, &[("Host", "a")])).await;
        assert_eq!(conn.read_response("GET").await.status, 200, "{path}");
        conn
    };
    let closed_at_once = |mut conn: RawConn| async move {
        let closed = tokio::time::timeout(Duration::from_secs(5), conn.is_closed()).await;
        assert_eq!(closed.ok(), Some(true), "a connection past the bound is closed at once");
    };
    // One address holds its share: its next connection is closed, another
    // address's (a load balancer's health check) is served.
    let mut held = Vec::new();
    for _ in 0..PER_ADDRESS {
        held.push(served(RawConn::from_stream(connect_from(&from(0), run.admin).await), "/healthz").await);
    }
    closed_at_once(RawConn::from_stream(connect_from(&from(0), run.admin).await)).await;
    held.push(served(RawConn::from_stream(connect_from(&from(1), run.admin).await), "/healthz").await);
    // All the slots, from as many addresses as that takes.
    let mut i = PER_ADDRESS + 1;
    while held.len() < MAX_ADMIN_CONNECTIONS {
        held.push(
            served(RawConn::from_stream(connect_from(&from(i / PER_ADDRESS), run.admin).await), "/healthz")
                .await,
        );
        i += 1;
    }
    let fresh = from(MAX_ADMIN_CONNECTIONS / PER_ADDRESS + 1);
    closed_at_once(RawConn::from_stream(connect_from(&fresh, run.admin).await)).await;
    let last = held.pop().unwrap();
    held.push(served(last, "/readyz").await);
    let r = get_from(run.proxy, &origin, "/through", ("alice", "a1")).await;
    assert_eq!(r.status, 200, "the proxy port serves: {}", r.dump());
    // A slot freed is taken again.
    held.truncate(MAX_ADMIN_CONNECTIONS - 1);
    let mut served_again = false;
    for _ in 0..50 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut conn = connect_from(&fresh, run.admin).await;
        let _ = conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut got)).await;
        if got.starts_with(b"HTTP/1.1 200") {
            served_again = true;
            break;
        }
    }
    assert!(served_again, "a freed slot serves a new connection");
    let _ = run.stop.send(());
}

#[test]
fn json_logs_are_one_object_per_line_without_credentials() {
    let dir = TempDir::new();
    let users = users_toml(&[("alice", "s3cret-pw")]);
    let bin = start_binary(&dir, "[log]\nformat = \"json\"\nlevel = \"info\"\n", &users, Stdio::piped());
    let proxy = bin.addr;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let origin = spawn_echo_origin();
        wait_listening(proxy).await;
        let ok = basic("alice", "s3cret-pw");
        let bad = basic("alice\u{1b}[31m", "wrong-pw");
        assert_eq!(
            get(
                proxy,
                &origin.url("/x?token=abc"),
                &[("Host", &origin.authority()), ("Proxy-Authorization", &ok)]
            )
            .await
            .status,
            200
        );
        assert_eq!(
            get(proxy, &origin.url("/y"), &[("Host", &origin.authority()), ("Proxy-Authorization", &bad)])
                .await
                .status,
            407
        );
        // Characters JSON leaves raw that reorder or hide text, in a
        // username and in a request target.
        let bidi = basic("admin\u{202e}gnp\\x\u{85}\u{e0041}\u{3164}", "wrong-pw");
        let h = [("Host", origin.authority()), ("Proxy-Authorization", bidi)];
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(get(proxy, &origin.url("/z"), &h).await.status, 407);
        let h = [("Host", origin.authority()), ("Proxy-Authorization", ok.clone())];
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(get(proxy, &origin.url("/r\u{202e}l"), &h).await.status, 200);
    });
    let out = bin.stop();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut access = Vec::new();
    let mut audit = Vec::new();
    for line in stdout.lines().filter(|l| !l.is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string() && v["target"].is_string(), "{line}");
        match v["target"].as_str() {
            Some("authgate::access") => access.push(v),
            Some("authgate::audit") => audit.push(v),
            _ => {}
        }
    }
    assert_eq!(access.len(), 4, "{stdout}");
    let raw = ['\u{202e}', '\u{85}', '\u{1b}', '\u{e0041}', '\u{3164}'];
    assert!(!stdout.contains(raw), "no raw bidi, invisible or control character: {stdout}");
    let ok = &access[0];
    for field in [
        "request_id",
        "client",
        "user",
        "method",
        "target",
        "status",
        "bytes_up",
        "bytes_down",
        "duration_ms",
        "outcome",
        "rule",
    ] {
        assert!(!ok[field].is_null(), "access event lacks {field}: {ok}");
    }
    assert_eq!(ok["user"], "alice");
    assert_eq!(ok["status"], 200);
    let logged = ok["request_target"].as_str().unwrap();
    assert!(logged.ends_with("/x"), "{logged}");
    assert!(!logged.contains("token"), "query strings are not logged");
    assert_eq!(audit.len(), 2);
    assert_eq!(audit[0]["reason"], "unknown_user");
    // Escaped once, by JSON: the name decodes as sent (it was escaped
    // before JSON escaped it again, so `\` came out doubled).
    assert_eq!(audit[0]["username"], "alice\u{1b}[31m", "{}", audit[0]);
    // What JSON leaves raw is written as a JSON escape: the value read back
    // is the name as sent, and the line shows no such character.
    assert_eq!(audit[1]["username"], "admin\u{202e}gnp\\x\u{85}\u{e0041}\u{3164}", "{}", audit[1]);
    assert!(stdout.contains(r#""username":"admin\u202egnp\\x\u0085\udb40\udc41\u3164""#), "{stdout}");
    assert_eq!(access[3]["request_target"].as_str().unwrap().rsplit('/').next(), Some("r\u{202e}l"));
    let everything = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for secret in ["s3cret-pw", "wrong-pw", &b64(b"alice:s3cret-pw")] {
        assert!(!everything.contains(secret), "log contains a credential: {secret}");
    }
}

#[test]
fn every_refusal_reason_but_no_credentials_reaches_the_audit_log() {
    let dir = TempDir::new();
    let users = user_entry("alice", "a1", "")
        + &user_entry("dave", "d1", "disabled = true")
        + &user_entry("erin", "e1", "expires = 2001-01-01T00:00:00Z");
    let extra =
        "[log]\nformat = \"json\"\nlevel = \"info\"\n[auth.throttle]\nmax_failures = 5\ndelay = \"10ms\"\n";
    let bin = start_binary(&dir, extra, &users, Stdio::piped());
    let proxy = bin.addr;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let statuses = rt.block_on(async {
        let origin = spawn_echo_origin();
        wait_listening(proxy).await;
        let mut statuses = Vec::new();
        for auth in [
            None,
            Some("Basic !!!".to_string()),
            Some(basic("mallory", "m1")),
            Some(basic("alice", "wrong")),
            Some(basic("dave", "d1")),
            Some(basic("erin", "e1")),
            Some(basic("alice", "wrong again")),
        ] {
            let mut headers = vec![("Host".to_string(), origin.authority())];
            if let Some(a) = auth {
                headers.push(("Proxy-Authorization".to_string(), a));
            }
            let h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            statuses.push(get(proxy, &origin.url("/"), &h).await.status);
        }
        statuses
    });
    assert_eq!(statuses, [407, 407, 407, 407, 407, 407, 429]);
    let out = bin.stop();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let audit: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "authgate::audit")
        .collect();
    let reasons: Vec<&str> = audit.iter().map(|v| v["reason"].as_str().unwrap_or_default()).collect();
    assert_eq!(
        reasons,
        ["malformed", "unknown_user", "bad_password", "disabled", "expired", "throttled"],
        "no audit line for a request without credentials (a challenge, not a login): {stdout}"
    );
    // The username as sent, the throttled attempt's too ("-" was logged).
    let names: Vec<&str> = audit.iter().map(|v| v["username"].as_str().unwrap_or_default()).collect();
    assert_eq!(names, ["-", "mallory", "alice", "dave", "erin", "alice"], "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_the_admin_listener_too() {
    let (run, _state) = spawn_with_admin("").await;
    assert_eq!(send_one(run.admin, "GET", "/healthz", &[("Host", "a")]).await.status, 200);
    let _ = run.stop.send(());
    for (what, addr) in [("admin", run.admin), ("proxy", run.proxy)] {
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            while tokio::net::TcpStream::connect(addr).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(closed.is_ok(), "the {what} listener stops accepting on shutdown");
    }
}

/// A `Max-Forwards: 0` request answered by authgate itself is counted as
/// `answered_here`, as the access log says, not as `forwarded`: it was, and
/// traffic that never reached an origin looked like traffic that did, with
/// `forwarded` above the sum of the origins' answers. Nor is an origin's
/// response that authgate replaced with a 502 (`chunked` twice) counted
/// among those passed to clients: it was, as a 2xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_max_forwards_answer_made_here_is_not_counted_as_forwarded() {
    let origin = spawn_echo_origin();
    let (run, _state) = spawn_with_admin("[policy]\ndefault = \"allow\"\n").await;
    let a = basic("alice", "a1");
    let host = origin.authority();
    let before = scrape(run.admin).await;
    for method in ["OPTIONS", "TRACE"] {
        let r = send_one(
            run.proxy,
            method,
            &origin.url("/"),
            &[("Host", &host), ("Max-Forwards", "0"), ("Proxy-Authorization", &a)],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.dump());
    }
    let r =
        send_one(run.proxy, "GET", &origin.url("/"), &[("Host", &host), ("Proxy-Authorization", &a)]).await;
    assert_eq!(r.status, 200, "{}", r.dump());
    let twice = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n";
    let odd = spawn_canned_origin(twice, std::sync::Arc::default());
    let r =
        send_one(run.proxy, "GET", &odd.url("/"), &[("Host", &odd.authority()), ("Proxy-Authorization", &a)])
            .await;
    assert_eq!(r.status, 502, "{}", r.dump());
    let after = scrape(run.admin).await;
    let d = |k: &str| after[k] - before.get(k).copied().unwrap_or(0.0);
    assert_eq!(d("authgate_requests_total{outcome=\"answered_here\"}"), 2.0);
    assert_eq!(d("authgate_requests_total{outcome=\"forwarded\"}"), 1.0);
    assert_eq!(d("authgate_requests_total{outcome=\"upstream_error\"}"), 1.0);
    assert_eq!(d("authgate_upstream_responses_total{class=\"2xx\"}"), 1.0, "the 502's origin answer is not");
    assert_eq!(origin.hits(), 1, "only the GET reached the origin");
    let _ = run.stop.send(());
}

/// The spellings of one password (composed or decomposed accents, UTF-8 or
/// ISO-8859-1) are one login to the verified-credential cache: the first
/// costs an argon2 run, every other spelling is a cache hit. Keyed on the
/// header as sent, each spelling cost a run and an entry of its own, and
/// one user could fill the cache (65,536 entries), which is then cleared
/// for everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spellings_of_a_password_share_one_cache_entry() {
    let origin = spawn_echo_origin();
    let (run, _state) =
        spawn_with_admin_for("[policy]\ndefault = \"allow\"\n", &[("carol", "\u{e9}t\u{e9}")]).await;
    let before = scrape(run.admin).await;
    let mut spellings: Vec<String> = Vec::new();
    for first in ["\u{e9}", "e\u{301}"] {
        for second in ["\u{e9}", "e\u{301}"] {
            spellings.push(basic("carol", &format!("{first}t{second}")));
        }
    }
    spellings.push(basic_raw(b"carol:\xe9t\xe9"));
    for _ in 0..2 {
        for auth in &spellings {
            let r = send_one(
                run.proxy,
                "GET",
                &origin.url("/"),
                &[("Host", &origin.authority()), ("Proxy-Authorization", auth)],
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.dump());
        }
    }
    let after = scrape(run.admin).await;
    let d = |k: &str| after[k] - before.get(k).copied().unwrap_or(0.0);
    // One run for the composed spelling (the header as sent is its entry),
    // one for the first other spelling (the normal form is theirs).
    assert_eq!(d("authgate_argon2_verifications_total"), 2.0);
    assert_eq!(d("authgate_auth_cache_total{result=\"hit\"}"), 8.0);
    let _ = run.stop.send(());
}

/// Bytes a client sends in the same packet as its CONNECT (hyper reads them
/// with the head) go to the target first and are counted like the rest of
/// the tunnel: they were missing from `bytes_up` and the metrics. A
/// tunnel's bytes are counted while it is open, and once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_sent_with_a_connect_are_counted() {
    let (run, _state) = spawn_with_admin("[policy]\ndefault = \"allow\"\n").await;
    let before = scrape(run.admin).await;
    let shout = spawn_shout_origin();
    let mut c = RawConn::connect(run.proxy).await;
    let mut bytes = request("CONNECT", &shout.authority(), &[("Proxy-Authorization", &basic("alice", "a1"))]);
    bytes.extend_from_slice(b"hello");
    c.send(bytes).await;
    assert_eq!(c.read_head().await.status, 200);
    assert_eq!(c.read_exact(5).await, b"HELLO");
    c.send(b"abc").await;
    assert_eq!(c.read_exact(3).await, b"ABC");
    // Counted as they move, not when the tunnel ends (it can last hours):
    // a graph of `rate(authgate_bytes_total)` read 0 meanwhile.
    let open = scrape(run.admin).await;
    let d = |k: &str| open[k] - before.get(k).copied().unwrap_or(0.0);
    assert_eq!(open["authgate_active_tunnels"], 1.0);
    assert_eq!(d("authgate_bytes_total{direction=\"up\"}"), 8.0, "hello + abc, tunnel open");
    assert_eq!(d("authgate_bytes_total{direction=\"down\"}"), 8.0, "HELLO + ABC, tunnel open");
    c.shutdown_write().await;
    assert_eq!(c.read_to_end().await, b"BYE\n");
    let deadline = Instant::now() + Duration::from_secs(5);
    let after = loop {
        let m = scrape(run.admin).await;
        if m["authgate_active_tunnels"] == 0.0 && m["authgate_requests_total{outcome=\"tunnel\"}"] >= 1.0 {
            break m;
        }
        assert!(Instant::now() < deadline, "tunnel never finished: {m:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let d = |k: &str| after[k] - before.get(k).copied().unwrap_or(0.0);
    assert_eq!(d("authgate_bytes_total{direction=\"up\"}"), 8.0, "hello + abc");
    assert_eq!(d("authgate_bytes_total{direction=\"down\"}"), 12.0, "HELLO + ABC + BYE");
    let _ = run.stop.send(());
}

/// A target listening with a 4 KiB receive buffer, so that what it does
/// not read soon backs up to the proxy.
fn small_buffer_target() -> (tokio::net::TcpListener, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let target = socket.listen(4).unwrap();
    let addr = target.local_addr().unwrap();
    (target, addr)
}

/// On a fresh connection, a 4 MB upload to `origin` (so that hyper reads
/// in large pieces), then a CONNECT to `target` with `early` bytes of `e`
/// in the same write, which hyper takes with its head; returns the
/// connection after the 200.
async fn connect_with_early_bytes(
    proxy: SocketAddr,
    origin: &Origin,
    target: SocketAddr,
    early: usize,
) -> RawConn {
    let auth = basic("alice", "a1");
    let mut c = RawConn::connect(proxy).await;
    let mut upload = request(
        "POST",
        &origin.url("/upload"),
        &[("Host", &origin.authority()), ("Proxy-Authorization", &auth), ("Content-Length", "4000000")],
    );
    upload.extend_from_slice(&vec![b'u'; 4_000_000]);
    c.send(upload).await;
    assert_eq!(c.read_response("POST").await.status, 200);
    let mut bytes = request("CONNECT", &target.to_string(), &[("Proxy-Authorization", &auth)]);
    bytes.extend_from_slice(&vec![b'e'; early]);
    c.send(bytes).await;
    assert_eq!(c.read_head().await.status, 200);
    c
}

/// Bytes sent with a CONNECT that its target stops taking are counted as far
/// as they went out: the write's timeout left them all out (`bytes_up` 0 for
/// about 130 KB delivered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_sent_with_a_connect_are_counted_when_the_target_stops_taking_them() {
    let (run, _state) = spawn_with_admin(
        "[policy]\ndefault = \"allow\"\n[limits]\nsend_timeout = \"1s\"\ntunnel_idle_timeout = \"1s\"\n",
    )
    .await;
    let origin = spawn_checksum_origin();
    // A target that accepts and never reads.
    let (target, target_addr) = small_buffer_target();
    let holder = tokio::spawn(async move {
        let (held, _) = target.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(held);
    });
    let before = scrape(run.admin).await;
    let mut c = connect_with_early_bytes(run.proxy, &origin, target_addr, 200_000).await;
    assert!(c.is_closed().await, "closed when the target took nothing for a second");
    let deadline = Instant::now() + Duration::from_secs(5);
    let up = loop {
        let m = scrape(run.admin).await;
        if m["authgate_active_tunnels"] == 0.0 && m["authgate_requests_total{outcome=\"tunnel\"}"] >= 1.0 {
            let k = "authgate_bytes_total{direction=\"up\"}";
            break m[k] - before.get(k).copied().unwrap_or(0.0) - 4_000_000.0;
        }
        assert!(Instant::now() < deadline, "tunnel never finished: {m:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(up > 0.0 && up < 200_000.0, "{up} bytes counted up, of 200000 sent");
    holder.abort();
    let _ = run.stop.send(());
}

/// Bytes sent with a CONNECT do not hold up what the target sends first: a
/// target that writes a large banner before it reads anything got nothing
/// read from it while the early bytes waited for it, and the tunnel ended
/// after the send timeout with the client given none of the banner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_bytes_do_not_hold_up_a_target_that_speaks_first() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const BANNER: usize = 4 << 20;
    const EARLY: usize = 200_000;
    let (run, _state) = spawn_with_admin("[policy]\ndefault = \"allow\"\n").await;
    let origin = spawn_checksum_origin();
    // Writes its banner whole, then reads.
    let (target, target_addr) = small_buffer_target();
    let speaker = tokio::spawn(async move {
        let (mut s, _) = target.accept().await.unwrap();
        s.write_all(&vec![b'b'; BANNER]).await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        got.len()
    });
    let mut c = connect_with_early_bytes(run.proxy, &origin, target_addr, EARLY).await;
    let banner = tokio::time::timeout(Duration::from_secs(30), c.read_exact(BANNER))
        .await
        .expect("the banner is held up behind the early bytes");
    assert!(banner.iter().all(|&b| b == b'b'));
    c.shutdown_write().await;
    assert_eq!(speaker.await.unwrap(), EARLY, "the target got every early byte");
    let _ = run.stop.send(());
}

/// Admin connections that pipeline requests and read none of the answers
/// are closed once their writes have been blocked for `send_timeout`, and
/// their slots are free again: they held them for as long as the client
/// kept them open, which kept that address's health checks out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_that_read_nothing_are_closed_after_the_send_timeout() {
    use authgate::server::MAX_ADMIN_CONNECTIONS_PER_ADDRESS as PER_ADDRESS;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (run, _state) = spawn_with_admin("[limits]\nsend_timeout = \"1s\"\n").await;
    let from = "127.0.0.30";
    let pipelined = b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n".repeat(3000);
    let mut held = Vec::new();
    for _ in 0..PER_ADDRESS {
        let mut conn = connect_from(from, run.admin).await;
        conn.write_all(&pipelined).await.unwrap();
        held.push(conn);
    }
    let start = Instant::now();
    let healthz = || async {
        let mut conn = connect_from(from, run.admin).await;
        let _ = conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut got)).await;
        got.starts_with(b"HTTP/1.1 200")
    };
    assert!(!healthz().await, "the address is at its share while the answers wait");
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if healthz().await {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "the stalled admin connections kept their slots");
    }
    assert!(start.elapsed() >= Duration::from_millis(900), "{:?}", start.elapsed());
    let _ = run.stop.send(());
}

/// An upgrade whose request had a body: the body's bytes are in
/// `authgate_bytes_total` as in the access line (they were dropped with the
/// relay's, which are counted as they move, probe 110).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_requests_body_is_counted_with_its_relay() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (run, _state) = spawn_with_admin("[policy]\ndefault = \"allow\"\n").await;
    let origin = spawn_raw_origin(|mut s: tokio::net::TcpStream| async move {
        let Some(_) = read_request_head(&mut s).await else { return };
        let mut body = [0u8; 10];
        if s.read_exact(&mut body).await.is_err() {
            return;
        }
        let _ = s
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n")
            .await;
        let mut chunk = [0u8; 64];
        while let Ok(n @ 1..) = s.read(&mut chunk).await {
            let _ = s.write_all(&chunk[..n]).await;
        }
    });
    let before = scrape(run.admin).await;
    let mut c = RawConn::connect(run.proxy).await;
    let head = [
        ("Host", origin.authority()),
        ("Proxy-Authorization", basic("alice", "a1")),
        ("Connection", "Upgrade".into()),
        ("Upgrade", "foo".into()),
        ("Content-Length", "10".into()),
    ];
    let head: Vec<(&str, &str)> = head.iter().map(|(n, v)| (*n, v.as_str())).collect();
    c.send(request("GET", &origin.url("/up"), &head)).await;
    c.send(b"0123456789").await;
    assert_eq!(c.read_head().await.status, 101);
    c.send(b"hello").await;
    assert_eq!(c.read_exact(5).await, b"hello");
    c.shutdown_write().await;
    assert!(c.read_to_end().await.is_empty());
    let deadline = Instant::now() + Duration::from_secs(5);
    let after = loop {
        let m = scrape(run.admin).await;
        if m["authgate_active_tunnels"] == 0.0 && m["authgate_bytes_total{direction=\"up\"}"] > 0.0 {
            break m;
        }
        assert!(Instant::now() < deadline, "the upgrade never ended: {m:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let d = |k: &str| after[k] - before.get(k).copied().unwrap_or(0.0);
    assert_eq!(d("authgate_bytes_total{direction=\"up\"}"), 15.0, "the body and hello");
    assert_eq!(d("authgate_bytes_total{direction=\"down\"}"), 5.0);
    let _ = run.stop.send(());
}

/// The status of a GET of `url` through `proxy` as `user`, on a client
/// connection of its own.
async fn status_as(
    proxy: std::net::SocketAddr,
    url: String,
    host: String,
    user: &'static str,
    password: &'static str,
) -> u16 {
    let auth = basic(user, password);
    let mut c = RawConn::connect(proxy).await;
    c.send(request("GET", &url, &[("Host", host.as_str()), ("Proxy-Authorization", auth.as_str())])).await;
    c.read_response("GET").await.status
}

/// A full pool makes room for a connection coming back by closing the one
/// idle longest: turned away instead, the new one was closed, and one user's
/// burst that filled the pool left every other user a new origin connection
/// per request until it timed out (probe 195). The one closed is closed at
/// the origin too, not kept open out of the pool's sight. Here the pool
/// holds 6.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_makes_room_by_closing_the_connection_idle_longest() {
    let (run, _state) = spawn_with_admin_for(
        "[policy]\ndefault = \"allow\"\n[limits]\nmax_connections = 6\n",
        &[("alice", "a1"), ("bob", "b2")],
    )
    .await;
    // Answers after 300 ms, keeping the connection: six of alice's at once
    // take six connections. Counts the connections authgate closed.
    let closed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let origin = spawn_raw_origin({
        let closed = closed.clone();
        move |mut s: tokio::net::TcpStream| {
            let closed = closed.clone();
            async move {
                use tokio::io::AsyncWriteExt;
                while read_request_head(&mut s).await.is_some() {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.is_err() {
                        break;
                    }
                }
                closed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let closed_count = || closed.load(std::sync::atomic::Ordering::SeqCst);
    let get = |user, password| status_as(run.proxy, origin.url("/"), origin.authority(), user, password);
    let burst: Vec<_> = (0..6).map(|_| tokio::spawn(get("alice", "a1"))).collect();
    for g in burst {
        assert_eq!(g.await.unwrap(), 200);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while scrape(run.admin).await["authgate_upstream_idle_connections"] < 6.0 {
        assert!(Instant::now() < deadline, "alice's connections did not all go idle");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(origin.hits(), 6);
    assert_eq!(closed_count(), 0);
    for round in 0..3 {
        assert_eq!(get("bob", "b2").await, 200);
        assert_eq!(origin.hits(), 7, "round {round}: bob's connection was not kept");
        let deadline = Instant::now() + Duration::from_secs(5);
        while closed_count() < 1 {
            assert!(Instant::now() < deadline, "the connection the pool let go is still open at the origin");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(closed_count(), 1, "more than one connection was closed");
    let _ = run.stop.send(());
}

/// The connection a full pool closes is the one idle longest, also after
/// many connections have gone back and been taken again: the pool keeps
/// the order they went back in (it looked at every key instead, a quarter
/// of authgate's CPU with 5,000 keys), skips the ones taken since, and
/// rebuilds that record when it holds over twice the idle connections plus
/// 1,024. Here the pool holds 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_closes_the_connection_idle_longest_after_many_returns() {
    let (run, _state) = spawn_with_admin_for(
        "[policy]\ndefault = \"allow\"\n[limits]\nmax_connections = 3\n",
        &[("alice", "a1"), ("bob", "b2"), ("carol", "c3"), ("dave", "d4")],
    )
    .await;
    // Answers `/slow` after 300 ms and the rest at once, keeping the
    // connection.
    let origin = spawn_raw_origin(|mut s: tokio::net::TcpStream| async move {
        use tokio::io::AsyncWriteExt;
        while let Some(head) = read_request_head(&mut s).await {
            if String::from_utf8_lossy(&head).contains("/slow") {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.is_err() {
                return;
            }
        }
    });
    let get = |path: &str, user, password| {
        status_as(run.proxy, origin.url(path), origin.authority(), user, password)
    };
    let idle_reaches = |n: f64| async move {
        let deadline = Instant::now() + Duration::from_secs(5);
        while scrape(run.admin).await["authgate_upstream_idle_connections"] != n {
            assert!(Instant::now() < deadline, "the pool never held {n}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    // bob's connection goes back first, then two of alice's: the pool is
    // full.
    assert_eq!(get("/", "bob", "b2").await, 200);
    idle_reaches(1.0).await;
    let burst: Vec<_> = (0..2).map(|_| tokio::spawn(get("/slow", "alice", "a1"))).collect();
    for g in burst {
        assert_eq!(g.await.unwrap(), 200);
    }
    idle_reaches(3.0).await;
    assert_eq!(origin.hits(), 3);
    // bob takes his and gives it back: the first return on record is
    // now of one taken since. carol's new connection makes room, and the
    // one closed is alice's older one, not bob's.
    // (Each of `users` is served on the connection kept for them.)
    let all_kept = async |users: [(&'static str, &'static str); 3], hits| {
        idle_reaches(3.0).await;
        for (user, password) in users {
            assert_eq!(get("/", user, password).await, 200);
            assert_eq!(origin.hits(), hits, "{user}'s connection was closed");
        }
    };
    assert_eq!(get("/", "bob", "b2").await, 200);
    assert_eq!(get("/", "carol", "c3").await, 200);
    assert_eq!(origin.hits(), 4);
    all_kept([("bob", "b2"), ("carol", "c3"), ("alice", "a1")], 4).await;
    // bob takes his and gives it back 1,100 times, on one client
    // connection: the record of the order is rebuilt meanwhile, and
    // carol's is now the one idle longest.
    let auth = basic("bob", "b2");
    let head = [("Host", origin.authority()), ("Proxy-Authorization", auth)];
    let head: Vec<(&str, &str)> = head.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut c = RawConn::connect(run.proxy).await;
    for i in 0..1100 {
        c.send(request("GET", &origin.url("/"), &head)).await;
        assert_eq!(c.read_response("GET").await.status, 200, "request {i}");
    }
    drop(c);
    assert_eq!(origin.hits(), 4, "bob's connection was not taken again each time");
    // dave's new connection makes room: carol's goes, and only hers.
    assert_eq!(get("/", "dave", "d4").await, 200);
    assert_eq!(origin.hits(), 5);
    all_kept([("bob", "b2"), ("alice", "a1"), ("dave", "d4")], 5).await;
    assert_eq!(get("/", "carol", "c3").await, 200);
    assert_eq!(origin.hits(), 6, "carol's connection was kept, and another closed");
    let _ = run.stop.send(());
}

/// Connections are pooled per user: a user's many uploads to one origin at
/// once leave all of their connections idle for that user (they were held
/// to 32 when connections were shared, as one that carried a body was that
/// user's alone and filled the origin's list), another user's request takes
/// none of them, and the user's own next request does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_idle_connections_serve_that_user_only() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (run, _state) =
        spawn_with_admin_for("[policy]\ndefault = \"allow\"\n", &[("alice", "a1"), ("bob", "b2")]).await;
    // Reads each request and its one-byte body if it has one, then answers
    // after 300 ms, keeping the connection.
    let origin = spawn_raw_origin(|mut s: tokio::net::TcpStream| async move {
        while let Some(head) = read_request_head(&mut s).await {
            if String::from_utf8_lossy(&head).to_ascii_lowercase().contains("content-length: 1") {
                let mut body = [0u8; 1];
                if s.read_exact(&mut body).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.is_err() {
                return;
            }
        }
    });
    let host = origin.authority();
    let uploads = (0..40).map(|_| {
        let (url, host, auth) = (origin.url("/up"), host.clone(), basic("alice", "a1"));
        tokio::spawn(async move {
            let head =
                [("Host", host.as_str()), ("Proxy-Authorization", auth.as_str()), ("Content-Length", "1")];
            let mut c = RawConn::connect(run.proxy).await;
            let mut bytes = request("POST", &url, &head);
            bytes.push(b'x');
            c.send(bytes).await;
            c.read_response("POST").await.status
        })
    });
    for upload in uploads.collect::<Vec<_>>() {
        assert_eq!(upload.await.unwrap(), 200);
    }
    let idle_reaches = |n: f64| async move {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let idle = scrape(run.admin).await["authgate_upstream_idle_connections"];
            if idle == n {
                return;
            }
            assert!(idle < n && Instant::now() < deadline, "{idle} idle connections, not {n}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    idle_reaches(40.0).await;
    assert_eq!(origin.hits(), 40);
    let get = |user, password| status_as(run.proxy, origin.url("/get"), host.clone(), user, password);
    assert_eq!(get("bob", "b2").await, 200);
    assert_eq!(origin.hits(), 41, "bob's request took one of alice's connections");
    idle_reaches(41.0).await;
    assert_eq!(get("alice", "a1").await, 200);
    assert_eq!(origin.hits(), 41, "alice's request did not take one of her connections");
    let _ = run.stop.send(());
}

/// A listener configured with port 0 gets a free port, and the log says
/// which: the start's summary says the configured address, and the port
/// was nowhere (probe 300).
#[test]
fn the_port_given_for_port_0_is_logged() {
    use std::io::{Read, Write};
    let dir = TempDir::new();
    let log_path = dir.path().join("out.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let bin = start_binary(&dir, "[admin]\nlisten = \"127.0.0.1:0\"\n", &users_toml(&[]), Stdio::from(log));
    let deadline = Instant::now() + Duration::from_secs(10);
    let admin: SocketAddr = loop {
        let written = std::fs::read_to_string(&log_path).unwrap();
        let said = written.lines().find_map(|l| {
            let rest = l.split("listening on ").nth(1)?;
            rest.strip_suffix(" (admin): a free port, for 127.0.0.1:0 in the configuration")?.parse().ok()
        });
        if let Some(a) = said {
            break a;
        }
        assert!(Instant::now() < deadline, "no port in the log:\n{written}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_ne!(admin.port(), 0);
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    let _ = bin.stop();
}
