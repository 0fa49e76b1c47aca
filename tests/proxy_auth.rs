//! 407: when authgate wants credentials, and only then.
//!
//! Every kind of bad credentials gets the same 407 with the Basic challenge;
//! good credentials of every encoding a real client uses get through; and a
//! 407 on a keep-alive connection leaves it usable for the retry.

mod common;

use common::*;

const ALICE: (&str, &str) = ("alice", "alice-pw");

/// alice (enabled) and dave (disabled).
fn proxy_with_disabled_user() -> Proxy {
    let users = user_entry(ALICE.0, ALICE.1, "disabled = false")
        + &user_entry("dave", "dave-pw", "disabled = true")
        + &user_entry("erin", "erin-pw", "expires = 2001-01-01T00:00:00Z");
    spawn_proxy_with_users_file("", &users)
}

/// A GET through the proxy to `origin` with an optional `Proxy-Authorization`.
async fn get_with(proxy: &Proxy, origin: &Origin, auth: Option<&str>) -> RawResponse {
    let host = origin.authority();
    let mut headers = vec![("Host", host.as_str())];
    if let Some(a) = auth {
        headers.push(("Proxy-Authorization", a));
    }
    get(proxy.addr, &origin.url("/private"), &headers).await
}

/// Everything a 407 from authgate must carry.
fn assert_challenge(resp: &RawResponse, case: &str) {
    assert_eq!(
        resp.status_line,
        "HTTP/1.1 407 Proxy Authentication Required",
        "{case}: response:\n{}",
        resp.dump()
    );
    assert_eq!(
        resp.header_all("proxy-authenticate"),
        [format!("Basic realm=\"{REALM}\", charset=\"UTF-8\"")],
        "{case}: challenge"
    );
    assert_proxy_error(resp, 407, "http_request_denied", "proxy_auth_required");
    assert!(resp.header("proxy-status").unwrap().starts_with("authgate; error="), "{case}");
}

#[tokio::test]
async fn missing_credentials_get_407_with_basic_challenge() {
    let origin = spawn_echo_origin();
    let proxy = proxy_with_disabled_user();
    let resp = get_with(&proxy, &origin, None).await;
    assert_challenge(&resp, "missing");
    assert_eq!(origin.hits(), 0, "the origin must not be contacted");
}

#[tokio::test]
async fn malformed_base64_gets_407() {
    let origin = spawn_echo_origin();
    let proxy = proxy_with_disabled_user();
    let resp = get_with(&proxy, &origin, Some("Basic !!!not*base64!!!")).await;
    assert_challenge(&resp, "malformed base64");
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn bearer_scheme_gets_407() {
    let origin = spawn_echo_origin();
    let proxy = proxy_with_disabled_user();
    let resp = get_with(&proxy, &origin, Some("Bearer eyJhbGciOi.eyJzdWIi.c2ln")).await;
    assert_challenge(&resp, "wrong scheme");
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn wrong_password_gets_407() {
    let origin = spawn_echo_origin();
    let proxy = proxy_with_disabled_user();
    let resp = get_with(&proxy, &origin, Some(&basic("alice", "not-alices-pw"))).await;
    assert_challenge(&resp, "wrong password");
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn unknown_user_gets_407() {
    let origin = spawn_echo_origin();
    let proxy = proxy_with_disabled_user();
    let resp = get_with(&proxy, &origin, Some(&basic("mallory", "alice-pw"))).await;
    assert_challenge(&resp, "unknown user");
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn disabled_user_with_correct_password_gets_407() {
    let origin = spawn_echo_origin();
    let proxy = proxy_with_disabled_user();
    let resp = get_with(&proxy, &origin, Some(&basic("dave", "dave-pw"))).await;
    assert_challenge(&resp, "disabled user");
    assert_eq!(origin.hits(), 0);
}

/// Replaces the value of `"key":"..."` in `s` with `<x>`.
fn blank_json_string(s: &str, key: &str) -> String {
    let pat = format!("\"{key}\":\"");
    let Some(start) = s.find(&pat).map(|i| i + pat.len()) else {
        return s.to_string();
    };
    let end = start + s[start..].find('"').unwrap_or(0);
    format!("{}<x>{}", &s[..start], &s[end..])
}

/// The wire bytes with the per-response fields blanked: `Date`,
/// `x-request-id`, and the body's `timestamp` and `request_id`.
fn normalise(resp: &RawResponse) -> String {
    let wire = resp.dump();
    let (head, body) = wire.split_once("\r\n\r\n").unwrap();
    let head: Vec<String> = head
        .split("\r\n")
        .map(|line| match line.split_once(':') {
            Some((n, _)) if n.eq_ignore_ascii_case("date") || n.eq_ignore_ascii_case("x-request-id") => {
                format!("{n}: <x>")
            }
            _ => line.to_string(),
        })
        .collect();
    let body = blank_json_string(&blank_json_string(body, "timestamp"), "request_id");
    format!("{}\r\n\r\n{body}", head.join("\r\n"))
}

#[tokio::test]
async fn all_407s_are_identical_on_the_wire_so_users_cannot_be_enumerated() {
    let origin = spawn_echo_origin();
    let proxy = proxy_with_disabled_user();
    let cases: [(&str, Option<String>); 7] = [
        ("missing", None),
        ("malformed base64", Some("Basic !!!not*base64!!!".into())),
        ("wrong scheme", Some("Bearer abc.def.ghi".into())),
        ("wrong password", Some(basic("alice", "not-alices-pw"))),
        ("unknown user", Some(basic("mallory", "alice-pw"))),
        ("disabled user", Some(basic("dave", "dave-pw"))),
        ("expired user", Some(basic("erin", "erin-pw"))),
    ];
    let mut first: Option<(String, String)> = None;
    for (case, auth) in &cases {
        let resp = get_with(&proxy, &origin, auth.as_deref()).await;
        assert_challenge(&resp, case);
        let wire = normalise(&resp);
        match &first {
            None => first = Some((case.to_string(), wire)),
            Some((first_case, first_wire)) => assert_eq!(
                &wire, first_wire,
                "the 407 for `{case}` differs on the wire from the 407 for `{first_case}`"
            ),
        }
    }
}

#[tokio::test]
async fn a_bcrypt_user_imported_from_htpasswd_logs_in() {
    let origin = spawn_echo_origin();
    // Cost 4, the smallest bcrypt allows: the scheme, not the work factor, is under test.
    let hash = bcrypt::hash("bob-pw", 4).expect("bcrypt hash");
    let users = format!("[users.bob]\npassword = {}\ngroups = [\"staff\"]\n", toml_str(&hash));
    let proxy = spawn_proxy_with_users_file("", &users);
    let ok = get_with(&proxy, &origin, Some(&basic("bob", "bob-pw"))).await;
    assert_eq!(ok.status, 200, "{}", ok.dump());
    let wrong = get_with(&proxy, &origin, Some(&basic("bob", "bob-pW"))).await;
    assert_challenge(&wrong, "bcrypt user, wrong password");
    assert_eq!(origin.hits(), 1, "only the right password reached the origin");
}

#[tokio::test]
async fn valid_credentials_are_forwarded() {
    let origin = spawn_echo_origin();
    let proxy = proxy_with_disabled_user();
    let resp = get_with(&proxy, &origin, Some(&basic(ALICE.0, ALICE.1))).await;
    assert_eq!(resp.status, 200, "{}", resp.dump());
    assert!(resp.header("proxy-status").is_none());
    let seen = Echoed::parse(&resp.body);
    assert_eq!(seen.request_line, "GET /private HTTP/1.1");
    assert_eq!(origin.hits(), 1);
}

/// A `Proxy-Authorization` longer than 4 KiB is refused whether or not
/// its login is cached: padded with spaces, it got 407 first and 200 once
/// the same login had been verified (probe 105).
#[tokio::test]
async fn an_oversized_header_is_refused_also_when_its_login_is_cached() {
    let origin = spawn_echo_origin();
    let proxy = proxy_with_disabled_user();
    let token = basic(ALICE.0, ALICE.1);
    let padded = token.replacen("Basic ", &format!("Basic {}", " ".repeat(5000)), 1);
    assert_eq!(get_with(&proxy, &origin, Some(&padded)).await.status, 407);
    assert_eq!(get_with(&proxy, &origin, Some(&token)).await.status, 200);
    let resp = get_with(&proxy, &origin, Some(&padded)).await;
    assert_challenge(&resp, "oversized, cached");
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn utf8_username_and_password_are_accepted() {
    let origin = spawn_echo_origin();
    let proxy = spawn_proxy("", &[("jürgen", "pässwörd ☃ 密码")]);
    let resp = get_with(&proxy, &origin, Some(&basic("jürgen", "pässwörd ☃ 密码"))).await;
    assert_eq!(resp.status, 200, "{}", resp.dump());
    let wrong = get_with(&proxy, &origin, Some(&basic("jürgen", "passwort"))).await;
    assert_eq!(wrong.status, 407);
}

#[tokio::test]
async fn password_with_colons_and_spaces_is_accepted() {
    let origin = spawn_echo_origin();
    let pw = "a:b c: d :e ";
    let proxy = spawn_proxy("", &[("bob", pw)]);
    let resp = get_with(&proxy, &origin, Some(&basic("bob", pw))).await;
    assert_eq!(resp.status, 200, "{}", resp.dump());
    // Only the first `:` separates: "bob:a" + "b c..." must not match.
    let cut = get_with(&proxy, &origin, Some(&basic("bob", "a"))).await;
    assert_eq!(cut.status, 407);
}

#[tokio::test]
async fn latin1_encoded_credentials_are_accepted() {
    // Python requests and pip send `ü` as the single byte FC.
    let origin = spawn_echo_origin();
    let proxy = spawn_proxy("", &[("jürgen", "pässwörd")]);
    let resp = get_with(&proxy, &origin, Some(&basic_raw(b"j\xfcrgen:p\xe4ssw\xf6rd"))).await;
    assert_eq!(resp.status, 200, "{}", resp.dump());
}

#[tokio::test]
async fn decomposed_password_matches_composed_stored_password() {
    let origin = spawn_echo_origin();
    let composed = "p\u{e4}ssw\u{f6}rd";
    let decomposed = "pa\u{308}sswo\u{308}rd";
    assert_ne!(composed.as_bytes(), decomposed.as_bytes());
    let proxy = spawn_proxy("", &[("anna", composed)]);
    let resp = get_with(&proxy, &origin, Some(&basic("anna", decomposed))).await;
    assert_eq!(resp.status, 200, "{}", resp.dump());
}

#[tokio::test]
async fn credentials_after_407_on_the_same_keep_alive_connection_succeed() {
    let origin = spawn_echo_origin();
    let proxy = spawn_proxy("", &[ALICE]);
    let host = origin.authority();
    let url = origin.url("/again");
    let mut conn = RawConn::connect(proxy.addr).await;

    conn.send(request("GET", &url, &[("Host", &host)])).await;
    let first = conn.read_response("GET").await;
    assert_eq!(first.status, 407, "{}", first.dump());
    assert_ne!(
        first.header("connection").map(str::to_ascii_lowercase),
        Some("close".into()),
        "a 407 without a body must keep the connection open"
    );

    let auth = basic(ALICE.0, ALICE.1);
    conn.send(request("GET", &url, &[("Host", &host), ("Proxy-Authorization", &auth)])).await;
    let second = conn.read_response("GET").await;
    assert_eq!(second.status, 200, "{}", second.dump());
    assert_eq!(Echoed::parse(&second.body).request_line, "GET /again HTTP/1.1");
}

#[tokio::test]
async fn rejected_request_with_a_small_body_leaves_the_connection_usable() {
    let origin = spawn_echo_origin();
    let proxy = spawn_proxy("", &[ALICE]);
    let host = origin.authority();
    let url = origin.url("/form");
    let mut conn = RawConn::connect(proxy.addr).await;

    let mut rejected =
        request("POST", &url, &[("Host", &host), ("Content-Type", "text/plain"), ("Content-Length", "21")]);
    rejected.extend_from_slice(b"GET /smuggled HTTP/1.");
    conn.send(rejected).await;
    let first = conn.read_response("POST").await;
    assert_eq!(first.status, 407, "{}", first.dump());

    let auth = basic(ALICE.0, ALICE.1);
    let mut retry =
        request("POST", &url, &[("Host", &host), ("Proxy-Authorization", &auth), ("Content-Length", "5")]);
    retry.extend_from_slice(b"hello");
    conn.send(retry).await;
    let second = conn.read_response("POST").await;
    assert_eq!(
        second.status,
        200,
        "the retry on the same connection should be forwarded:\n{}",
        second.dump()
    );
    let seen = Echoed::parse(&second.body);
    assert_eq!(seen.request_line, "POST /form HTTP/1.1");
    assert_eq!(seen.body, b"hello");
    assert_eq!(origin.hits(), 1, "the rejected body must never reach the origin");
}

/// A client that sends its head before its body (a streaming upload) hears
/// its 407 at once, not once the body is in: the proxy reads the body while
/// the answer goes out, and the connection stays usable for the retry.
/// Read before the answer, a body still on its way held the 407 back (5 s
/// for one that never came) and then closed the connection.
#[tokio::test]
async fn a_407_does_not_wait_for_a_body_still_on_its_way() {
    let origin = spawn_echo_origin();
    let proxy = spawn_proxy("", &[ALICE]);
    let host = origin.authority();
    let url = origin.url("/form");
    let mut conn = RawConn::connect(proxy.addr).await;

    let mut rejected = request("POST", &url, &[("Host", &host), ("Content-Length", "10")]);
    rejected.extend_from_slice(b"hello");
    conn.send(rejected).await;
    // The rest of the body is sent only after the 407 has been read.
    let first = conn.read_response("POST").await;
    assert_eq!(first.status, 407, "{}", first.dump());
    assert_eq!(first.header("connection"), None, "the connection is kept for the retry:\n{}", first.dump());

    let mut rest = b"world".to_vec();
    let auth = basic(ALICE.0, ALICE.1);
    rest.extend(request(
        "POST",
        &url,
        &[("Host", &host), ("Proxy-Authorization", &auth), ("Content-Length", "2")],
    ));
    rest.extend_from_slice(b"ok");
    conn.send(rest).await;
    let second = conn.read_response("POST").await;
    assert_eq!(second.status, 200, "the retry on the same connection is forwarded:\n{}", second.dump());
    assert_eq!(Echoed::parse(&second.body).body, b"ok");
    assert_eq!(origin.hits(), 1, "the refused body never reaches the origin");
}

/// The body read after the 407 belongs to the refused request, not to the
/// client's next one: it neither starts the next head's timer (a retry sent
/// `header_read_timeout` after the body got a 408) nor counts against its
/// size limit (a body past `max_header_bytes` got a 431 for a request never
/// sent).
#[tokio::test]
async fn a_body_read_after_the_407_is_not_the_start_of_the_next_request() {
    let origin = spawn_echo_origin();
    let cfg = "[limits]\nheader_read_timeout = \"1s\"\nmax_header_bytes = 8192\n";
    let proxy = spawn_proxy(cfg, &[ALICE]);
    let host = origin.authority();
    let url = origin.url("/form");
    let auth = basic(ALICE.0, ALICE.1);
    // A body larger than a head may be, the retry at once; a small body,
    // the retry longer than header_read_timeout after it.
    for (len, pause) in [(10_000, 0), (10, 1500)] {
        let mut conn = RawConn::connect(proxy.addr).await;
        conn.send(request("POST", &url, &[("Host", &host), ("Content-Length", &len.to_string())])).await;
        let first = conn.read_response("POST").await;
        assert_eq!(first.status, 407, "{}", first.dump());
        conn.send(vec![b'x'; len]).await;
        tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
        conn.send(request("GET", &url, &[("Host", &host), ("Proxy-Authorization", &auth)])).await;
        let second = conn.read_response("GET").await;
        assert_eq!(second.status, 200, "body {len}, retry {pause} ms later:\n{}", second.dump());
    }
}

/// After a 407 whose body was read late, the connection is idle: closed
/// quietly after `idle_timeout` if no retry comes.
#[tokio::test]
async fn after_a_407_and_its_late_body_an_idle_connection_is_closed() {
    let origin = spawn_echo_origin();
    let proxy = spawn_proxy("[limits]\nidle_timeout = \"1s\"\n", &[ALICE]);
    let mut conn = RawConn::connect(proxy.addr).await;
    let host = origin.authority();
    conn.send(request("POST", &origin.url("/form"), &[("Host", &host), ("Content-Length", "10")])).await;
    assert_eq!(conn.read_response("POST").await.status, 407);
    conn.send(b"0123456789").await;
    let closed = tokio::time::timeout(std::time::Duration::from_secs(20), conn.is_closed()).await;
    assert_eq!(closed.ok(), Some(true), "closed once idle_timeout has passed");
}

/// A body announced with a 407's request that never comes is not waited
/// for beyond `header_read_timeout`: the connection is closed.
#[tokio::test]
async fn a_refused_body_that_never_comes_ends_the_connection() {
    let origin = spawn_echo_origin();
    let proxy = spawn_proxy("[limits]\nheader_read_timeout = \"1s\"\n", &[ALICE]);
    let host = origin.authority();
    let mut conn = RawConn::connect(proxy.addr).await;
    let mut rejected = request("POST", &origin.url("/form"), &[("Host", &host), ("Content-Length", "10")]);
    rejected.extend_from_slice(b"hel");
    conn.send(rejected).await;
    let first = conn.read_response("POST").await;
    assert_eq!(first.status, 407, "{}", first.dump());
    let closed = tokio::time::timeout(std::time::Duration::from_secs(20), conn.is_closed()).await;
    assert_eq!(closed.ok(), Some(true), "the proxy closes once header_read_timeout has passed");
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn rejected_request_with_a_large_body_gets_407_then_a_clean_close() {
    // Too large to drain: the proxy must answer and close, not read the next
    // request out of the middle of this body.
    let origin = spawn_echo_origin();
    let proxy = spawn_proxy("", &[ALICE]);
    let host = origin.authority();
    let mut conn = RawConn::connect(proxy.addr).await;
    let mut req = request("POST", &origin.url("/big"), &[("Host", &host), ("Content-Length", "10485760")]);
    req.extend_from_slice(&[b'a'; 1000]);
    conn.send(req).await;
    let resp = conn.read_response("POST").await;
    assert_eq!(resp.status, 407, "{}", resp.dump());
    assert_eq!(
        resp.header("connection").map(str::to_ascii_lowercase).as_deref(),
        Some("close"),
        "the client should be told the connection ends:\n{}",
        resp.dump()
    );
    assert!(conn.is_closed().await, "the proxy should close after the 407");
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn expect_100_continue_without_credentials_gets_407_not_100() {
    let origin = spawn_echo_origin();
    let proxy = spawn_proxy("", &[ALICE]);
    let host = origin.authority();
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(request(
        "PUT",
        &origin.url("/upload"),
        &[("Host", &host), ("Content-Length", "100000"), ("Expect", "100-continue")],
    ))
    .await;
    let resp = conn.read_response("PUT").await;
    assert_eq!(resp.status, 407, "the client must not be told to send its body:\n{}", resp.dump());
    assert_eq!(origin.hits(), 0);
}

/// Two `Proxy-Authorization` fields: which one a hop in front honoured is
/// unknown, so neither counts, in either order, even when both are valid.
#[tokio::test]
async fn two_proxy_authorization_fields_get_407_whatever_they_hold() {
    let origin = spawn_echo_origin();
    let proxy = spawn_proxy_with_users_file(
        "",
        &(user_entry(ALICE.0, ALICE.1, "") + &user_entry("bob", "bob-pw", "")),
    );
    let good = basic(ALICE.0, ALICE.1);
    let bad = basic(ALICE.0, "wrong");
    let bob = basic("bob", "bob-pw");
    let host = origin.authority();
    for (first, second) in [(&good, &bad), (&bad, &good), (&good, &bob), (&good, &good)] {
        let headers =
            [("Host", host.as_str()), ("Proxy-Authorization", first), ("Proxy-Authorization", second)];
        let resp = get(proxy.addr, &origin.url("/private"), &headers).await;
        assert_challenge(&resp, "two credentials");
    }
    assert_eq!(origin.hits(), 0);
    assert_eq!(get_with(&proxy, &origin, Some(&good)).await.status, 200, "one field still works");
}

/// A client still uploading when it is refused (here a 407 for a large
/// body) sees the answer and then an orderly close: the proxy shuts its
/// side and reads what is still coming instead of closing on unread data,
/// which makes the kernel reset the connection and can destroy the answer
/// before the client reads it (RFC 9112 §9.6).
#[tokio::test]
async fn a_client_refused_mid_upload_gets_an_orderly_close_not_a_reset() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = spawn_echo_origin();
    let proxy = spawn_proxy("", &[ALICE]);
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let head =
        request("POST", &origin.url("/big"), &[("Host", &origin.authority()), ("Content-Length", "8388608")]);
    s.write_all(&head).await.unwrap();
    s.write_all(&[b'a'; 16 * 1024]).await.unwrap();
    // The answer, read up to the end of the proxy's side.
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("the proxy answers and shuts its side")
            .expect("no reset while reading the answer");
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 407 "), "{}", String::from_utf8_lossy(&answer));
    // The client goes on sending the rest of its body, as an uploading
    // client does: the proxy still reads it, so no write is reset.
    for _ in 0..32 {
        s.write_all(&[b'b'; 16 * 1024]).await.expect("the proxy keeps reading while it closes");
    }
    assert_eq!(origin.hits(), 0);
}

/// A login whose hash asks for more memory than the process may have (a
/// memory limit: `ulimit -v`, a container's) is refused with the 407 of a
/// wrong password, and an error line says why; the allocation failure
/// aborted the whole proxy (probe 349). Other users go on being served.
#[test]
fn a_login_whose_hash_needs_memory_the_process_cannot_get_is_refused_and_the_proxy_lives() {
    use std::process::Stdio;
    let dir = TempDir::new();
    // A hash asking for 2 GiB (m=2097152 KiB), under a 1.5 GB address
    // space: the parameters only, the rest of the string is alice's.
    let alice = hash("a1");
    let (params, _) = alice.split_once(",t=").unwrap();
    let heavy = alice.replacen(params, "$argon2id$v=19$m=2097152", 1);
    let users = format!(
        "{}{}[users.heavy]\npassword = {}\n",
        user_entry("alice", "a1", ""),
        user_entry("bob", "b1", ""),
        toml_str(&heavy)
    );
    let bin = start_binary_under(&dir, &["prlimit", "--as=1500000000"], "", &users, Stdio::piped());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_rt = rt.enter();
    let origin = spawn_echo_origin();
    let status = |user: &str, password: &str| {
        let auth = basic(user, password);
        let r = rt.block_on(get(
            bin.addr,
            &origin.url("/"),
            &[("Host", &origin.authority()), ("Proxy-Authorization", &auth)],
        ));
        r.status
    };
    assert_eq!(status("heavy", "h1"), 407, "refused as a wrong password is");
    assert_eq!(status("alice", "a1"), 200, "the proxy lives and serves others");
    let out = bin.stop();
    assert!(out.status.code().is_some(), "ended by the stop, not by a signal of its own: {:?}", out.status);
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        log.contains("2097152 KiB of memory its argon2 cost (m) asks for could not be allocated"),
        "the reason is logged:\n{log}"
    );
}

/// Tasks (threads and processes) of the user `nobody` (65534).
fn tasks_of_nobody() -> usize {
    let out = std::process::Command::new("ps").args(["-L", "-u", "65534", "--no-headers"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Under a limit on threads (`ulimit -u`, a container's `pids.max`), a
/// login whose verification the system refuses a thread for gets a 503
/// `auth_overloaded` and an error line, and logins are verified again once
/// threads can be had. tokio panicked there: the client's connection was
/// dropped, and the verification, left queued with its worker slot, held
/// every later login until something else made a thread (probe 351).
/// Needs root, to run the proxy as `nobody` under `RLIMIT_NPROC`.
#[test]
fn a_login_refused_a_thread_gets_a_503_and_logins_resume_once_threads_can_be_had() {
    use std::process::{Command, Stdio};
    let as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
    if !Command::new(as_nobody[0]).args(&as_nobody[1..]).arg("true").status().is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: cannot run a process as nobody here (needs root and setpriv)");
        return;
    }
    // Room for the start (its worker threads are as many as the cores),
    // beside what other processes of nobody's already run: the limit
    // counts them too (execve refuses past it).
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let limit = tasks_of_nobody() + cores + 12;
    let dir = TempDir::new();
    let users = format!("{}{}", user_entry("alice", "a1", ""), user_entry("bob", "b1", ""));
    let nproc = format!("--nproc={limit}");
    let wrapper = [&["prlimit", nproc.as_str()][..], &as_nobody].concat();
    let config = "[auth.throttle]\nenabled = false\n";
    // (The files must be readable by nobody; the folder is.)
    let bin = start_binary_under(&dir, &wrapper, config, &users, Stdio::piped());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_rt = rt.enter();
    let origin = spawn_echo_origin();
    let status = |user: &str, password: &str| {
        let auth = basic(user, password);
        let headers = [("Host", origin.authority()), ("Proxy-Authorization", auth)];
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let got = rt.block_on(tokio::time::timeout(
            std::time::Duration::from_secs(10),
            send_one(bin.addr, "GET", &origin.url("/"), &headers),
        ));
        got.expect("an answer within 10 s").status
    };
    assert_eq!(status("alice", "a1"), 200);
    // The blocking pool's thread leaves after 10 s idle; then the user's
    // other processes take what the limit leaves.
    std::thread::sleep(std::time::Duration::from_secs(11));
    let mut fillers = Vec::new();
    for _ in tasks_of_nobody()..limit {
        let filler = Command::new(as_nobody[0]).args(&as_nobody[1..]).args(["sleep", "60"]).spawn().unwrap();
        fillers.push(filler);
    }
    while tasks_of_nobody() < limit {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(status("bob", "b1"), 503, "no thread for bob's verification: try again");
    // Nor for the next: it got no worker slot, which bob's queued
    // verification held (probe 353: logins hung for the whole refusal).
    assert_eq!(status("alice", "wrong"), 503);
    // A reload asked for meanwhile is made once threads can be had, once.
    bin.signal("HUP");
    std::thread::sleep(std::time::Duration::from_millis(300));
    for mut filler in fillers {
        let _ = filler.kill();
        let _ = filler.wait();
    }
    // Within the retries of a thread (every half second), and of the
    // reload (1 s, then 2 s).
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert_eq!(status("bob", "b1"), 200, "verified once a thread can be had");
    assert_eq!(status("alice", "wrong"), 407);
    let out = bin.stop();
    let log = String::from_utf8_lossy(&out.stdout);
    assert_eq!(log.matches("configuration reloaded").count(), 1, "{log}");
    assert!(log.contains("a login answered 503: the system refused a thread"), "{log}");
    assert!(log.contains("threads can be made again"), "{log}");
    // Said once, in the log: not tokio's panic message on standard error.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("OS can't spawn worker thread"), "{stderr}");
}
