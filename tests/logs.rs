//! No credential ever reaches a log line: the real `authgate` binary runs at
//! the most verbose level while clients send good and bad passwords, and its
//! whole output is searched for the passwords and their base64 forms.

mod common;
#[path = "support/dns.rs"]
mod dns;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use common::*;

const USER: &str = "alice";
const PASSWORD: &str = "Tr0ub4dor&3 horse:staple";
const WRONG_PASSWORD: &str = "n0t-the-Pa55word-at-all";

/// Kills the child if the test ends early (a panic), so no proxy outlives it.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Forwards every line of `r` to `tx`, tagged with `tag`.
fn pump(r: impl std::io::Read + Send + 'static, tag: &'static str, tx: mpsc::UnboundedSender<String>) {
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(format!("{tag}: {line}")).is_err() {
                break;
            }
        }
    });
}

/// Reads output lines into `all` until one satisfies `pred`.
async fn wait_for(
    rx: &mut mpsc::UnboundedReceiver<String>,
    all: &mut Vec<String>,
    what: &str,
    pred: impl Fn(&str) -> bool,
) {
    if all.iter().any(|l| pred(l)) {
        return;
    }
    loop {
        match tokio::time::timeout(Duration::from_secs(15), rx.recv()).await {
            Ok(Some(line)) => {
                let hit = pred(&line);
                all.push(line);
                if hit {
                    return;
                }
            }
            Ok(None) => panic!("authgate exited before {what}; output:\n{}", all.join("\n")),
            Err(_) => panic!("no {what} within 15 s; output so far:\n{}", all.join("\n")),
        }
    }
}

#[tokio::test]
async fn credentials_never_appear_in_logs() {
    let origin = spawn_echo_origin();
    let tunnel_origin = spawn_shout_origin();

    let dir = TempDir::new();
    let port = closed_port();
    let config = format!(
        r#"[server]
listen = ["127.0.0.1:{port}"]
realm = "{REALM}"

[auth]
users_file = "users.toml"

[log]
level = "trace"
format = "text"
access = true

[limits]
shutdown_grace = "1s"

[egress]
allow_cidrs = ["127.0.0.0/8", "::1/128"]
"#
    );
    let config_path = dir.write("authgate.toml", config);
    dir.write("users.toml", users_toml(&[(USER, PASSWORD)]));

    let mut child = Command::new(env!("CARGO_BIN_EXE_authgate"))
        .args(["run", "--config"])
        .arg(&config_path)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the authgate binary");
    let (tx, mut rx) = mpsc::unbounded_channel();
    pump(child.stdout.take().unwrap(), "stdout", tx.clone());
    pump(child.stderr.take().unwrap(), "stderr", tx);
    let running = Running(child);
    let mut lines = Vec::new();
    wait_for(&mut rx, &mut lines, "the startup line", |l| l.contains("authgate started")).await;

    let proxy: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let good = basic(USER, PASSWORD);
    let bad = basic(USER, WRONG_PASSWORD);
    let host = origin.authority();

    // A forwarded request.
    let ok = get(proxy, &origin.url("/ok"), &[("Host", &host), ("Proxy-Authorization", &good)]).await;
    assert_eq!(ok.status, 200, "{}", ok.dump());
    // One carrying the credentials in the URL userinfo: refused (RFC 9110
    // §4.2.4), and logged without them.
    let in_url = get(
        proxy,
        &origin.url("/in-url").replace("http://", &format!("http://{}:{}@", USER, percent_encode(PASSWORD))),
        &[("Host", &host), ("Proxy-Authorization", &good)],
    )
    .await;
    assert_proxy_error(&in_url, 400, "http_request_error", "bad_target");

    // Unencoded, a `/`, `?` or `#` in a URL's password ends the authority
    // before the `@`: `alice:Sl4sh` reads as a host and a port. Refused
    // (bad port), and no part of the password is logged (the access line
    // had `http://alice:Sl4sh/Part2@…`, probe 82).
    // Digits that are no port (0, past 65535) are taken for the same, and a
    // `@` in the password leaves what follows the last `@` (it logged the
    // part between, `http://At5ign/x@…`, probe 84).
    for raw in [
        "Sl4sh/Part2",
        "Fr4g#Part2",
        "Qu3ry?Part2",
        "00/Zer0Part",
        "99999/Big9Part",
        "pa@At5ign/x",
        "x[]Br4cket/y",
        "[Br4cket]/y",
        // A `@` then a `?` or `#`: what follows the last `@` before them
        // was logged as the host (`http://Qm4rk/`, probe 128).
        "pa@Qm4rk?Part2",
        "pa@H4sh#Part2",
    ] {
        let url = origin.url("/raw-userinfo").replace("http://", &format!("http://{USER}:{raw}@"));
        let r = get(proxy, &url, &[("Host", &host), ("Proxy-Authorization", &good)]).await;
        assert_proxy_error(&r, 400, "http_request_error", "bad_target");
    }
    // The origin form with `//` is an authority in all but name: logged
    // after its last `@` when that is the `Host`, else as `//…`.
    // A `?` or `#` in the password ends the path before the `@`: the `@`
    // is looked for in the query, and a `user:` cut short by `#` is `//…`
    // (`//alice:s3cr` was logged, probe 129).
    for (raw, host_field) in [
        ("0r1gin", host.as_str()),
        ("pa@0rQm?Part2", "elsewhere"),
        ("0rQ?m4rk", host.as_str()),
        ("0rH4sh#x", host.as_str()),
    ] {
        let target = format!("//{USER}:{raw}@{host}/o");
        let r = get(proxy, &target, &[("Host", host_field), ("Proxy-Authorization", &good)]).await;
        assert_proxy_error(&r, 400, "http_request_error", "not_a_proxy_request");
    }
    // One `/` of `http://` dropped: the same (it was logged whole, probe
    // 137).
    // Also with a `/` in the user's name (probe 144), and for `//`.
    for target in
        ["S1ngle", "S1nQ?x", "S1nH#x"].into_iter().map(|raw| format!("/{USER}:{raw}@{host}/o")).chain([
            format!("/al/ice:S1nSl4sh@{host}/o"),
            format!("/al/ice:S1nSlH#x@{host}/o"),
            format!("//al/ice:S1nSlD#x@{host}/o"),
        ])
    {
        let r = get(proxy, &target, &[("Host", &host), ("Proxy-Authorization", &good)]).await;
        assert_proxy_error(&r, 400, "http_request_error", "not_a_proxy_request");
    }
    // Nor its query, as no target's (`?api_key=…` was logged, probe 133),
    // also where the last `@` is in the query (probe 134).
    for target in [
        format!("//{USER}:0r1gin@{host}/o?api_key=K3yQuery"),
        format!("//{host}/o?u=a@{host}/QK3yPath?k=K3yQuery"),
    ] {
        let r = get(proxy, &target, &[("Host", &host), ("Proxy-Authorization", &good)]).await;
        assert_proxy_error(&r, 400, "http_request_error", "not_a_proxy_request");
    }
    let mut c = RawConn::connect(proxy).await;
    c.send(request("CONNECT", &format!("{USER}:C0nnect"), &[("Proxy-Authorization", &good)])).await;
    assert_eq!(c.read_response("CONNECT").await.status, 400);

    // A rejected one.
    let refused =
        get(proxy, &origin.url("/refused"), &[("Host", &host), ("Proxy-Authorization", &bad)]).await;
    assert_eq!(refused.status, 407, "{}", refused.dump());
    let refused_id = refused.header("x-request-id").unwrap().to_string();

    // A CONNECT with the credentials as userinfo: refused, and its logged
    // target must not carry them either.
    let mut c = RawConn::connect(proxy).await;
    let with_userinfo = format!("{USER}:{}@{}", percent_encode(PASSWORD), tunnel_origin.authority());
    c.send(request("CONNECT", &with_userinfo, &[("Proxy-Authorization", &good)])).await;
    assert_eq!(c.read_response("CONNECT").await.status, 400);

    // A tunnel.
    let target = tunnel_origin.authority();
    let mut tunnel = RawConn::connect(proxy).await;
    tunnel.send(request("CONNECT", &target, &[("Host", &target), ("Proxy-Authorization", &good)])).await;
    assert_eq!(tunnel.read_head().await.status, 200);
    tunnel.send(b"secret payload").await;
    assert_eq!(tunnel.read_exact(14).await, b"SECRET PAYLOAD");
    tunnel.shutdown_write().await;
    assert_eq!(tunnel.read_to_end().await, b"BYE\n");
    drop(tunnel);

    // Every request has been logged before we stop the process.
    wait_for(&mut rx, &mut lines, "the access line of the 200", |l| {
        l.contains("authgate::access") && l.contains("/ok")
    })
    .await;
    wait_for(&mut rx, &mut lines, "the access line of the 407", |l| {
        l.contains(&refused_id) && l.contains("authgate::access")
    })
    .await;
    wait_for(&mut rx, &mut lines, "the access line of the tunnel", |l| {
        l.contains("authgate::access") && l.contains("CONNECT") && l.contains("status=200")
    })
    .await;
    wait_for(&mut rx, &mut lines, "the access line of the userinfo URL", |l| {
        l.contains("authgate::access") && l.contains("/in-url") && l.contains("status=400")
    })
    .await;
    wait_for(&mut rx, &mut lines, "the access line of the refused CONNECT", |l| {
        l.contains("authgate::access") && l.contains("CONNECT") && l.contains("status=400")
    })
    .await;
    // Nine GETs, the CONNECT and two origin forms, shown as `http://…`
    // (not a host and a port, or not the `Host`), `//…` or `http://alice:…`
    // (a port out of range); the GET whose password has a `@`, and two
    // origin forms, after their last `@`; and two whose last `@` is in the
    // query, as the host alone.
    let after_at = format!("request_target={}", origin.url("/raw-userinfo"));
    let origin_form = format!("request_target=//{host}/o ");
    let host_alone = format!("request_target=//{host} ");
    let count = |lines: &[String], what: &str| {
        lines.iter().filter(|l| l.contains("authgate::access") && l.contains(what)).count()
    };
    while count(&lines, "…") < 12
        || count(&lines, &origin_form) < 2
        || count(&lines, &host_alone) < 2
        || count(&lines, &after_at) < 1
        || count(&lines, &format!("request_target=/{host}/o ")) < 1
        || count(&lines, &format!("request_target=/{host} ")) < 1
    {
        match tokio::time::timeout(Duration::from_secs(15), rx.recv()).await {
            Ok(Some(line)) => lines.push(line),
            _ => panic!("no access lines of the raw userinfo:\n{}", lines.join("\n")),
        }
    }

    let pid = running.0.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
    assert!(killed.success(), "kill -TERM {pid} failed");
    // Both pipes close when the process exits.
    loop {
        match tokio::time::timeout(Duration::from_secs(15), rx.recv()).await {
            Ok(Some(line)) => lines.push(line),
            Ok(None) => break,
            Err(_) => panic!("authgate did not exit within 15 s of SIGTERM"),
        }
    }
    drop(running);

    let output = lines.join("\n");
    assert!(
        output.contains("alice"),
        "the log should name the user (sanity check that logs were captured):\n{output}"
    );
    let forbidden = [
        PASSWORD.to_string(),
        WRONG_PASSWORD.to_string(),
        percent_encode(PASSWORD),
        good.trim_start_matches("Basic ").to_string(),
        bad.trim_start_matches("Basic ").to_string(),
        b64(PASSWORD.as_bytes()),
        b64(WRONG_PASSWORD.as_bytes()),
        "Tr0ub4dor".to_string(),
        "n0t-the-Pa55word".to_string(),
        "Sl4sh".to_string(),
        "Fr4g".to_string(),
        "Qu3ry".to_string(),
        "Part2".to_string(),
        "C0nnect".to_string(),
        "Zer0Part".to_string(),
        "Big9Part".to_string(),
        "At5ign".to_string(),
        "Br4cket".to_string(),
        "Qm4rk".to_string(),
        "H4sh".to_string(),
        "0r1gin".to_string(),
        "0rQm".to_string(),
        "0rQ".to_string(),
        "0rH4sh".to_string(),
        "K3yQuery".to_string(),
        "QK3yPath".to_string(),
        "S1ngle".to_string(),
        "S1nQ".to_string(),
        "S1nH".to_string(),
        "S1nSl".to_string(),
    ];
    for secret in &forbidden {
        assert!(!output.contains(secret.as_str()), "the log contains the credential {secret:?}:\n{output}");
    }
}

/// Runs the binary with `log_section`, makes one authenticated request
/// through it, stops it with SIGTERM and returns everything it wrote to
/// stdout.
fn stdout_after_one_request(log_section: &str) -> String {
    stdout_after_one_request_env(log_section, &[])
}

/// [`stdout_after_one_request`] with `env` set for the binary.
fn stdout_after_one_request_env(log_section: &str, env: &[(&str, &str)]) -> String {
    let dir = TempDir::new();
    let bin = start_binary_env(&dir, log_section, &users_toml(&[(USER, PASSWORD)]), Stdio::piped(), env);
    let proxy = bin.addr;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let origin = spawn_echo_origin();
        wait_listening(proxy).await;
        let auth = basic(USER, PASSWORD);
        let r = get(
            proxy,
            &origin.url("/filtered"),
            &[("Host", &origin.authority()), ("Proxy-Authorization", &auth)],
        )
        .await;
        assert_eq!(r.status, 200);
        // And one that never became a request: a short access event.
        let mut c = RawConn::connect(proxy).await;
        c.send("GARBAGE\r\n\r\n").await;
        let answer = String::from_utf8_lossy(&c.read_to_end().await).into_owned();
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    });
    let out = bin.stop();
    assert!(out.status.success(), "SIGTERM exits 0: {:?}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An IPv4-mapped target (`[::ffff:127.0.0.1]`) is its IPv4 address: the
/// access line names the origin as `127.0.0.1:port`, as the egress check
/// and the connection take it (it said `[::ffff:127.0.0.1]:port`; probe 156).
#[test]
fn an_ipv4_mapped_target_is_logged_as_its_ipv4_address() {
    let dir = TempDir::new();
    let bin =
        start_binary(&dir, "[log]\nlevel = \"info\"\n", &users_toml(&[(USER, PASSWORD)]), Stdio::piped());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let port = rt.block_on(async {
        let origin = spawn_echo_origin();
        wait_listening(bin.addr).await;
        let port = origin.addr.port();
        let url = format!("http://[::ffff:7f00:1]:{port}/mapped");
        let r = get(
            bin.addr,
            &url,
            &[("Host", &format!("[::ffff:7f00:1]:{port}")), ("Proxy-Authorization", &basic(USER, PASSWORD))],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.dump());
        port
    });
    let access = bin.stop_for_access_line("/mapped");
    assert!(access.contains(&format!(" upstream=127.0.0.1:{port} ")), "{access}");
}

#[test]
fn the_log_filter_and_the_access_switch_silence_access_lines() {
    let on = stdout_after_one_request("[log]\nlevel = \"info\"\n");
    assert!(on.lines().any(|l| l.contains("INFO authgate::access:") && l.contains("/filtered")), "{on}");
    assert!(
        on.lines()
            .any(|l| l.contains("INFO authgate::access:") && l.contains("outcome=\"malformed_request\"")),
        "{on}"
    );

    // A filter directive reaches the access line, which does not go through
    // tracing's formatter.
    let filtered = stdout_after_one_request("[log]\nlevel = \"info,authgate::access=off\"\n");
    assert!(filtered.contains("authgate started"), "other INFO lines stay: {filtered}");
    assert!(!filtered.contains("authgate::access"), "{filtered}");

    let warn_only = stdout_after_one_request("[log]\nlevel = \"warn\"\n");
    assert!(!warn_only.contains("authgate::access"), "{warn_only}");

    let switched_off = stdout_after_one_request("[log]\naccess = false\n");
    assert!(switched_off.contains("authgate started"), "{switched_off}");
    assert!(!switched_off.contains("authgate::access"), "{switched_off}");
}

/// `RUST_LOG`, when set, overrides `[log] level` both ways (README,
/// `[log]`); an invalid `RUST_LOG` falls back to the configured level.
#[test]
fn rust_log_overrides_the_configured_level() {
    let louder = stdout_after_one_request_env("[log]\nlevel = \"warn\"\n", &[("RUST_LOG", "info")]);
    assert!(louder.contains("authgate started"), "{louder}");
    assert!(
        louder.lines().any(|l| l.contains("INFO authgate::access:") && l.contains("/filtered")),
        "{louder}"
    );

    let quieter = stdout_after_one_request_env("[log]\nlevel = \"info\"\n", &[("RUST_LOG", "warn")]);
    assert!(!quieter.contains("authgate started"), "{quieter}");
    assert!(!quieter.contains("authgate::access"), "{quieter}");

    let invalid = stdout_after_one_request_env("[log]\nlevel = \"info\"\n", &[("RUST_LOG", "=!=")]);
    assert!(invalid.contains("authgate started"), "the configured level applies: {invalid}");
    // And it says so (it was ignored without a word), also for a bare
    // word that is not a level, which silenced every line (probe 101).
    for rust_log in ["=!=", "warning"] {
        let out = stdout_after_one_request_env("[log]\nlevel = \"info\"\n", &[("RUST_LOG", rust_log)]);
        assert!(
            out.lines().any(|l| l.contains("WARN") && l.contains("RUST_LOG is not a level or a log filter")),
            "{rust_log}: {out}"
        );
        assert!(out.contains("authgate::access"), "{rust_log}: {out}");
    }
    // One that lets no authgate line through (span directives alone; its
    // lines are in no span) says so, and `level` applies (probe 380).
    let out = stdout_after_one_request_env("[log]\nlevel = \"info\"\n", &[("RUST_LOG", "[]")]);
    assert!(
        out.lines()
            .any(|l| l.contains("WARN")
                && l.contains("RUST_LOG is a filter that lets no authgate line through")),
        "{out}"
    );
    assert!(out.contains("authgate::access"), "{out}");
    // Under a `level` that lets no warning of authgate's through, the
    // warning goes to standard error: it was lost (probe 388).
    let dir = TempDir::new();
    let env = [("RUST_LOG", "Authgate=debug")];
    let bin = start_binary_env(
        &dir,
        "[log]\nlevel = \"error\"\n",
        &users_toml(&[(USER, PASSWORD)]),
        Stdio::piped(),
        &env,
    );
    let err = String::from_utf8_lossy(&bin.stop().stderr).into_owned();
    assert!(
        err.contains("authgate: warning: RUST_LOG is a filter that lets no authgate line through"),
        "{err}"
    );
    // One that is not UTF-8 was passed over without a word (probe 380).
    let dir = TempDir::new();
    let not_utf8 = ["sh", "-c", "RUST_LOG=$(printf 'info\\377') exec \"$0\" \"$@\""];
    let bin = start_binary_under(
        &dir,
        &not_utf8,
        "[log]\nlevel = \"info\"\n",
        &users_toml(&[(USER, PASSWORD)]),
        Stdio::piped(),
    );
    let out = String::from_utf8_lossy(&bin.stop().stdout).into_owned();
    assert!(
        out.lines().any(|l| l.contains("WARN") && l.contains("RUST_LOG is not UTF-8; [log] level applies")),
        "{out}"
    );
    assert!(out.contains("authgate started"), "{out}");
    // One too long says so (it was "not a level or a log filter"; probe 338).
    let long = vec!["t=info"; 65].join(",");
    let out = stdout_after_one_request_env("[log]\nlevel = \"info\"\n", &[("RUST_LOG", &long)]);
    assert!(
        out.lines().any(|l| l.contains("WARN")
            && l.contains(
                "RUST_LOG is too long (at most 4096 bytes and 64 directives); [log] level applies"
            )),
        "{out}"
    );
    assert!(out.contains("authgate::access"), "{out}");
    // A level with spaces around it, which `check` accepts, is that level
    // (it was a target, and nothing was logged).
    let spaced = stdout_after_one_request("[log]\nlevel = \" info \"\n");
    assert!(spaced.contains("authgate started") && spaced.contains("authgate::access"), "{spaced}");
}

/// The resolver's own lines are off unless the filter names them: hickory
/// writes a warning for every DNS reply it drops, and anyone who reaches
/// the resolver's port can send forged ones at will (probe 99).
#[test]
fn forged_dns_replies_write_no_line_unless_asked_for() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (fake, origin) = rt.block_on(async {
        let fake =
            dns::spawn(vec![("forged.test", dns::Answer::ForgedFirst(vec![std::net::Ipv4Addr::LOCALHOST]))])
                .await;
        (fake, spawn_echo_origin())
    });
    let run = |level: &str| {
        let dir = TempDir::new();
        let extra = format!("[dns]\nservers = [\"{}\"]\n[log]\nlevel = \"{level}\"\n", fake.addr);
        let bin = start_binary_env(&dir, &extra, &users_toml(&[(USER, PASSWORD)]), Stdio::piped(), &[]);
        rt.block_on(async {
            wait_listening(bin.addr).await;
            let target = format!("forged.test:{}", origin.addr.port());
            let r =
                send_one(bin.addr, "CONNECT", &target, &[("Proxy-Authorization", &basic(USER, PASSWORD))])
                    .await;
            assert_eq!(r.status, 200, "{}", r.dump());
        });
        let out = bin.stop();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let quiet = run("info");
    assert!(quiet.contains("authgate::access"), "{quiet}");
    assert!(!quiet.contains("hickory"), "{quiet}");
    // (A directive for another target with `hickory` in its name is not one.)
    let other = run("info,nothickory=info");
    assert!(!other.contains("hickory_proto"), "{other}");
    let asked = run("info,hickory_proto=warn");
    assert!(asked.lines().any(|l| l.contains("WARN hickory_proto")), "{asked}");
    // Asked for at debug, hickory prints whole DNS messages over several
    // lines; each event is still one line of the log (probe 286).
    let debug = run("info,hickory_proto=debug,hickory_resolver=debug");
    assert!(debug.lines().any(|l| l.contains("DEBUG hickory") && l.contains("\\u{a}")), "{debug}");
    for line in debug.lines() {
        assert!(line.starts_with("20") && line.contains('Z'), "a line that is no event: {line:?}\n{debug}");
    }
}

/// How a request that waits on a silent origin ends before its answer.
enum Abandon {
    /// The client closes its connection.
    ClientCloses,
    /// The user is removed from the users file (SIGHUP reload).
    UserRemoved,
    /// The client closes its connection in the middle of its request body.
    MidBody,
    /// The client resets its connection in the middle of its request body.
    MidBodyReset,
    /// The client stops reading the response (and keeps its connection).
    StopsReading,
}

/// Runs the binary, sends one request to an origin that never answers, ends
/// it the way `how` says, and returns the access line of that request.
fn access_line_of_an_abandoned_request(how: Abandon) -> String {
    let dir = TempDir::new();
    let extra = "[log]\nlevel = \"info\"\n[reload]\nwatch = false\n";
    let bin = start_binary(&dir, extra, &users_toml(&[(USER, PASSWORD), ("bob", "b1")]), Stdio::piped());
    let proxy = bin.addr;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut silent = spawn_silent_origin();
        wait_listening(proxy).await;
        let auth = basic(USER, PASSWORD);
        let host = silent.origin.authority();
        let mut conn = RawConn::connect(proxy).await;
        let url = silent.origin.url("/abandoned");
        match how {
            Abandon::MidBody | Abandon::MidBodyReset => {
                let head =
                    &[("Host", host.as_str()), ("Proxy-Authorization", &auth), ("Content-Length", "10")];
                let mut bytes = request("POST", &url, head);
                bytes.extend_from_slice(b"abc");
                conn.send(bytes).await;
            }
            _ => conn.send(request("GET", &url, &[("Host", &host), ("Proxy-Authorization", &auth)])).await,
        }
        silent.next_head().await;
        match how {
            Abandon::ClientCloses | Abandon::MidBody | Abandon::StopsReading => drop(conn),
            Abandon::MidBodyReset => {
                let stream = conn.into_stream();
                socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)).unwrap();
                drop(stream);
            }
            Abandon::UserRemoved => {
                std::fs::write(&bin.users, users_toml(&[("bob", "b1")])).unwrap();
                bin.signal("HUP");
                assert!(
                    conn.read_to_end().await.is_empty(),
                    "the revoked user's connection closes, unanswered"
                );
            }
        }
        // The proxy let go of the origin: the request is over.
        silent.next_close().await;
    });
    bin.stop_for_access_line("/abandoned")
}

/// A request that ends before its answer still gets its one access line,
/// with status 0 (nothing was sent) and why it ended.
#[test]
fn a_request_dropped_before_its_answer_is_logged_once_with_why() {
    for (how, status, outcome) in [
        (Abandon::ClientCloses, 0, "client_gone"),
        (Abandon::UserRemoved, 0, "user_revoked"),
        // The client's doing, not the origin's (this was a 502
        // upstream_protocol_error once). A FIN may close only the client's
        // sending side, so it is answered.
        (Abandon::MidBody, 400, "bad_request_body"),
        // A reset is not answered: nothing can reach the client (it was
        // logged as a 400 sent, probe 107).
        (Abandon::MidBodyReset, 0, "client_gone"),
    ] {
        let line = access_line_of_an_abandoned_request(how);
        for field in ["user=\"alice\"", &format!(" status={status} "), &format!("outcome=\"{outcome}\"")] {
            assert!(line.contains(field), "{field} in {line}");
        }
    }
}

/// Runs the binary, has an origin send the head and the first 10 body
/// bytes and then stall (or, for a client that stops reading, send on), ends
/// the exchange the way `how` says (the client leaves, its user is removed,
/// or it stops reading for `send_timeout`), and returns the access line.
fn access_line_of_a_cut_response(how: Abandon) -> String {
    use tokio::io::AsyncWriteExt;
    let dir = TempDir::new();
    let extra = "[log]\nlevel = \"info\"\n[reload]\nwatch = false\n[limits]\nsend_timeout = \"500ms\"\n";
    let flood = matches!(how, Abandon::StopsReading);
    let bin = start_binary(&dir, extra, &users_toml(&[(USER, PASSWORD), ("bob", "b1")]), Stdio::piped());
    let proxy = bin.addr;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (closed_tx, mut closed) = mpsc::unbounded_channel();
        let origin = spawn_raw_origin(move |mut s| {
            let closed_tx = closed_tx.clone();
            async move {
                if read_request_head(&mut s).await.is_some() {
                    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n0123456789";
                    let _ = s.write_all(head).await;
                    if flood {
                        let chunk = vec![b'x'; 64 * 1024];
                        while s.write_all(&chunk).await.is_ok() {}
                    }
                    let mut rest = [0u8; 64];
                    while let Ok(1..) = s.read(&mut rest).await {}
                }
                let _ = closed_tx.send(());
            }
        });
        wait_listening(proxy).await;
        let mut conn = RawConn::connect(proxy).await;
        conn.send(get_as(&origin.url("/cut"), &origin.authority(), USER, PASSWORD)).await;
        assert_eq!(conn.read_head().await.status, 200);
        assert_eq!(conn.read_exact(10).await, b"0123456789");
        match how {
            Abandon::UserRemoved => {
                std::fs::write(&bin.users, users_toml(&[("bob", "b1")])).unwrap();
                bin.signal("HUP");
                assert!(conn.read_to_end().await.is_empty(), "the revoked user's connection closes");
            }
            // The proxy gives up on it after send_timeout.
            Abandon::StopsReading => {
                let gone = tokio::time::timeout(Duration::from_secs(10), closed.recv()).await;
                assert!(matches!(gone, Ok(Some(()))), "the origin connection stayed open");
                drop(conn);
                return;
            }
            _ => drop(conn),
        }
        // The proxy let go of the origin: the exchange is over.
        let gone = tokio::time::timeout(Duration::from_secs(10), closed.recv()).await;
        assert!(matches!(gone, Ok(Some(()))), "the origin connection stayed open");
    });
    bin.stop_for_access_line("/cut")
}

/// A response cut short on the client's side is logged with why, not as
/// `forwarded` (a download a revocation cut looked like a whole one).
#[test]
fn a_response_cut_short_is_logged_with_why() {
    for (how, outcome) in [(Abandon::ClientCloses, "client_gone"), (Abandon::UserRemoved, "user_revoked")] {
        let line = access_line_of_a_cut_response(how);
        for field in ["user=\"alice\"", " status=200 ", " bytes_down=10 ", &format!("outcome=\"{outcome}\"")]
        {
            assert!(line.contains(field), "{field} in {line}");
        }
    }
    // authgate closed it, not the client.
    let line = access_line_of_a_cut_response(Abandon::StopsReading);
    for field in ["user=\"alice\"", " status=200 ", "outcome=\"send_timeout\""] {
        assert!(line.contains(field), "{field} in {line}");
    }
}

/// The binary logging at INFO, with one user, alice.
/// The access line of the request for `path` (the target ends there) in
/// `stdout`.
fn access_line<'a>(stdout: &'a str, path: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.contains("authgate::access") && l.contains(&format!("{path} ")))
        .unwrap_or_else(|| panic!("no access line for {path}:\n{stdout}"))
}

fn alice_at_info(dir: &TempDir, stdout: Stdio) -> Binary {
    start_binary(dir, "[log]\nlevel = \"info\"\n", &users_toml(&[(USER, PASSWORD)]), stdout)
}

/// A chunked response that ends with trailers is whole: logged `forwarded`
/// with all its bytes, whether or not the client asked for the trailers
/// (`TE: trailers`), and the connection stays open for the next request. It
/// was logged `client_gone`: hyper stops reading a body at its trailers.
#[test]
fn a_chunked_response_with_trailers_is_logged_as_forwarded() {
    use tokio::io::AsyncWriteExt;
    let dir = TempDir::new();
    let bin = alice_at_info(&dir, Stdio::piped());
    let proxy = bin.addr;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let origin = spawn_raw_origin(|mut s| async move {
            while read_request_head(&mut s).await.is_some() {
                let answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n\
                    5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 11\r\n\r\n";
                if s.write_all(answer).await.is_err() {
                    return;
                }
            }
        });
        wait_listening(proxy).await;
        let auth = basic(USER, PASSWORD);
        let host = origin.authority();
        let mut conn = RawConn::connect(proxy).await;
        for (path, te) in [("/trailers-asked", "trailers"), ("/trailers-not-asked", "")] {
            let mut head = vec![("Host", host.as_str()), ("Proxy-Authorization", auth.as_str())];
            if !te.is_empty() {
                head.push(("TE", te));
            }
            conn.send(request("GET", &origin.url(path), &head)).await;
            let resp = conn.read_response("GET").await;
            assert_eq!((resp.status, resp.body.as_slice()), (200, &b"hello world"[..]), "{}", resp.dump());
            assert!(
                !resp.dump().contains("X-Sum"),
                "trailers are dropped, as the README says: {}",
                resp.dump()
            );
        }
        // One connection carried both: it stayed open.
        drop(conn);
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
    let out = bin.stop();
    let stdout = String::from_utf8_lossy(&out.stdout);
    for path in ["/trailers-asked", "/trailers-not-asked"] {
        let line = access_line(&stdout, path);
        for field in [" status=200 ", " bytes_down=11 ", "outcome=\"forwarded\""] {
            assert!(line.contains(field), "{field} in {line}");
        }
    }
}

/// An origin whose body breaks off before its first byte, in the write of
/// its head or after a wait: the client gets the head, then the close, as
/// it would from the origin, and the access line says the status it saw,
/// `bytes_down=0` and `upstream_body_error`. Broken in the head's write, the
/// client saw only a close, which it took for a stale keep-alive
/// connection: curl sent a POST again (probe 257).
#[test]
fn a_body_broken_before_its_first_byte_still_sends_the_head() {
    use tokio::io::AsyncWriteExt;
    let dir = TempDir::new();
    let bin = alice_at_info(&dir, Stdio::piped());
    let proxy = bin.addr;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let paths = ["/at-once-1", "/at-once-2", "/at-once-3", "/at-once-4", "/at-once-5", "/late"];
    let seen: Vec<Vec<u8>> = rt.block_on(async {
        let origin = spawn_raw_origin(|mut s| async move {
            let Some(head) = read_request_head(&mut s).await else { return };
            let head = String::from_utf8_lossy(&head).into_owned();
            // A chunk size no body has, in the same write as the head, or
            // after a wait.
            let bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n";
            if head.contains("/late") {
                let (head, body) = bad.split_at(bad.len() - 8);
                let _ = s.write_all(head).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
                let _ = s.write_all(body).await;
            } else {
                let _ = s.write_all(bad).await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        });
        wait_listening(proxy).await;
        let auth = basic(USER, PASSWORD);
        let mut seen = Vec::new();
        for path in paths {
            let mut c = RawConn::connect(proxy).await;
            c.send(request(
                "POST",
                &origin.url(path),
                &[("Host", &origin.authority()), ("Proxy-Authorization", &auth), ("Content-Length", "0")],
            ))
            .await;
            seen.push(c.read_to_end().await);
        }
        seen
    });
    let out = bin.stop();
    let stdout = String::from_utf8_lossy(&out.stdout);
    for (path, got) in paths.iter().zip(&seen) {
        let got = String::from_utf8_lossy(got);
        // The head, and nothing after it: no last chunk, which would make
        // the cut body look whole.
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{path}: {got}");
        assert_eq!(got.find("\r\n\r\n").map(|i| i + 4), Some(got.len()), "{path}: {got}");
        let line = access_line(&stdout, path);
        for field in [" status=200 ", " bytes_down=0 ", "outcome=\"upstream_body_error\""] {
            assert!(line.contains(field), "{path}: {field} in {line}");
        }
    }
}

/// An origin's error is told apart in the access line by `detail`, the
/// words of the `Proxy-Status` details the client got (the outcome alone
/// said `upstream_protocol_error` for all of them: probe 124); a line
/// without such an error has no `detail`.
#[test]
fn an_upstream_error_is_detailed_in_the_access_line() {
    use tokio::io::AsyncWriteExt;
    let dir = TempDir::new();
    let bin = alice_at_info(&dir, Stdio::piped());
    let proxy = bin.addr;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let origin = spawn_raw_origin(|mut s| async move {
            let Some(head) = read_request_head(&mut s).await else { return };
            let answer: &[u8] = if String::from_utf8_lossy(&head).contains("/six-hundred") {
                b"HTTP/1.1 600 Nope\r\ncontent-length: 0\r\n\r\n"
            } else if String::from_utf8_lossy(&head).contains("/proxy-auth") {
                b"HTTP/1.1 407 Nope\r\ncontent-length: 0\r\n\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
            };
            let _ = s.write_all(answer).await;
        });
        wait_listening(proxy).await;
        let auth = basic(USER, PASSWORD);
        for (path, status) in [("/six-hundred", 502), ("/proxy-auth", 502), ("/fine", 200)] {
            let resp = get(
                proxy,
                &origin.url(path),
                &[("Host", &origin.authority()), ("Proxy-Authorization", &auth)],
            )
            .await;
            assert_eq!(resp.status, status, "{path}: {}", resp.dump());
        }
    });
    let out = bin.stop();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = |path: &str| access_line(&stdout, path);
    let six = line("/six-hundred");
    assert!(
        six.contains("outcome=\"upstream_protocol_error\"")
            && six.ends_with(" detail=\"malformed response\""),
        "{six}"
    );
    let proxy_auth = line("/proxy-auth");
    assert!(proxy_auth.ends_with(" detail=\"upstream answered 407\""), "{proxy_auth}");
    let fine = line("/fine");
    assert!(fine.contains(" status=200 ") && !fine.contains("detail="), "{fine}");
}

/// An origin that resets a tunnel: every byte the proxy took from it before
/// the reset still reaches the client, then the client's side closes (RFC
/// 9110 §9.3.6: the intermediary MUST attempt to send the outstanding data
/// that came from the closed side, then close both), and the access line
/// says `tunnel_error`. The client reads slowly at first (a small receive
/// buffer, a pause), so bytes wait in the proxy's send buffer when the reset
/// comes: passing the reset on (a zero-linger close) would throw them away.
#[test]
fn an_origin_reset_inside_a_tunnel_delivers_what_came_before_it_and_is_logged() {
    use tokio::io::AsyncWriteExt;
    const SENT: usize = 1024 * 1024;
    let dir = TempDir::new();
    let bin = alice_at_info(&dir, Stdio::piped());
    let proxy = bin.addr;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let got = rt.block_on(async {
        let origin = spawn_raw_origin(|mut s| async move {
            // The client's first byte: the relay runs.
            let mut go = [0u8; 1];
            if s.read_exact(&mut go).await.is_err() {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(300), s.write_all(&pattern(0, SENT))).await;
            // A zero-linger close sends a reset.
            s.set_zero_linger().unwrap();
        });
        wait_listening(proxy).await;
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut tunnel = RawConn::from_stream(socket.connect(proxy).await.unwrap());
        let target = origin.authority();
        let auth = basic(USER, PASSWORD);
        tunnel.send(request("CONNECT", &target, &[("Host", &target), ("Proxy-Authorization", &auth)])).await;
        assert_eq!(tunnel.read_head().await.status, 200);
        tunnel.send(b"g").await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        tunnel.read_to_end().await
    });
    assert!(!got.is_empty() && got == pattern(0, got.len()), "{} bytes, in order", got.len());
    let out = bin.stop();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("authgate::access") && l.contains("method=\"CONNECT\""))
        .unwrap_or_else(|| panic!("no access line for the tunnel:\n{stdout}"));
    for field in [" status=200 ", &format!(" bytes_down={} ", got.len()), "outcome=\"tunnel_error\""] {
        assert!(line.contains(field), "{field} in {line}");
    }
}

/// A log consumer that dies (stdout a pipe nobody reads any more) costs log
/// lines, but not silently: stderr says so once, and once stdout takes lines
/// again a WARN line counts those lost. The proxy serves on throughout.
#[test]
fn a_failing_stdout_is_reported_on_stderr_and_the_lost_lines_counted() {
    use std::io::{BufRead, BufReader, Read};
    let dir = TempDir::new();
    let fifo = dir.path().join("log.fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    // Opening either end of a FIFO waits for the other.
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::File::open(fifo).unwrap())
    };
    let writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    let mut first = BufReader::new(reader.join().unwrap());
    let bin = alice_at_info(&dir, writer.into());
    let mut line = String::new();
    while !line.contains("authgate started") {
        line.clear();
        if first.read_line(&mut line).unwrap() == 0 {
            let stderr = bin.stop().stderr;
            panic!("the log pipe closed before the start line:\n{}", String::from_utf8_lossy(&stderr));
        }
    }
    // The consumer dies: the pipe has no reader, every write fails.
    drop(first);
    let proxy = bin.addr;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let origin = rt.block_on(async { spawn_echo_origin() });
    let get = |path: &str| {
        rt.block_on(async {
            let mut c = RawConn::connect(proxy).await;
            c.send(get_as(&origin.url(path), &origin.authority(), USER, PASSWORD)).await;
            c.read_response("GET").await.status
        })
    };
    assert_eq!(get("/while-broken-1"), 200);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get("/while-broken-2"), 200);
    std::thread::sleep(Duration::from_millis(300));
    // A new consumer.
    let second = std::thread::spawn({
        let fifo = fifo.clone();
        move || {
            let mut text = String::new();
            let _ = std::fs::File::open(fifo).unwrap().read_to_string(&mut text);
            text
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(get("/after"), 200);
    std::thread::sleep(Duration::from_millis(300));
    let out = bin.stop();
    let log = second.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}\n{stderr}", out.status);
    let told: Vec<&str> =
        stderr.lines().filter(|l| l.contains("cannot write the log to standard output")).collect();
    assert_eq!(told.len(), 1, "told once for the whole failure:\n{stderr}");
    assert!(told[0].contains("Broken pipe"), "{}", told[0]);
    let warn = log
        .lines()
        .find(|l| l.contains("log lines lost"))
        .unwrap_or_else(|| panic!("no count of lost lines once stdout works again:\n{log}"));
    let lost: u64 = warn
        .split("lost_lines=")
        .nth(1)
        .and_then(|v| v.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("lost_lines in {warn}"));
    assert!(lost >= 2, "both access lines written while broken are counted: {warn}");
    assert!(log.contains("/after"), "lines reach stdout again:\n{log}");
    assert!(!log.contains("/while-broken"), "{log}");
}

/// A log file that reaches the file-size limit (`ulimit -f`, `LimitFSIZE=`)
/// costs log lines, told on stderr, not the process: SIGXFSZ, which the
/// kernel sends on such a write, ended it. Once there is room again, lines
/// are written whole: after the limit was lifted the first was glued to
/// the end of the line the limit had cut, and in a file emptied by
/// logrotate's `copytruncate` (opened for appending, as `>>` does) the rest
/// of the cut line came first, left in std's stdout buffer.
#[test]
fn a_log_file_at_the_file_size_limit_does_not_end_the_process() {
    let dir = TempDir::new();
    let path = dir.path().join("out.log");
    let file = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
    let mut bin = alice_at_info(&dir, file.into());
    let proxy = bin.addr;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let origin = rt.block_on(async {
        wait_listening(proxy).await;
        spawn_echo_origin()
    });
    std::thread::sleep(Duration::from_millis(300));
    let limit = std::fs::metadata(&path).unwrap().len() + 1000;
    let limited = Command::new("prlimit")
        .args([&format!("--fsize={limit}:unlimited"), "--pid", &bin.child.id().to_string()])
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(limited.success());
    let get = |path: &str| {
        rt.block_on(async {
            let mut c = RawConn::connect(proxy).await;
            c.send(get_as(&origin.url(path), &origin.authority(), USER, PASSWORD)).await;
            c.read_response("GET").await.status
        })
    };
    // Each access line is over 200 bytes: the file reaches the limit.
    let size = || std::fs::metadata(&path).unwrap().len();
    let fill = |round: &str| {
        for i in 0..40 {
            if size() == limit {
                break;
            }
            assert_eq!(get(&format!("/filling-{round}-{i}")), 200);
            std::thread::sleep(Duration::from_millis(150));
        }
        assert_eq!(size(), limit, "the log file reached its limit");
    };
    fill("a");
    assert!(bin.child.try_wait().unwrap().is_none(), "the process ended: {:?}", bin.child.try_wait());
    assert_eq!(get("/after-the-limit"), 200, "it serves on");
    // Emptied as `copytruncate` does: the lines written next are whole.
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(0).unwrap();
    assert_eq!(get("/once-emptied"), 200);
    std::thread::sleep(Duration::from_millis(300));
    let emptied = std::fs::read_to_string(&path).unwrap();
    assert!(emptied.contains("/once-emptied"), "lines are written once there is room:\n{emptied}");
    let whole = |l: &str| l.starts_with("20") && l.matches("authgate::").count() == 1;
    let torn: Vec<&str> = emptied.lines().filter(|l| !l.is_empty() && !whole(l)).collect();
    assert!(torn.is_empty(), "lines not whole in the emptied file: {torn:?}\n{emptied}");
    fill("b");
    // The limit lifted: lines are written again, and the first is whole,
    // not glued to the part of a line the limit cut (which went out in
    // part: the file ended mid-line).
    let lifted = Command::new("prlimit")
        .args(["--fsize=unlimited:unlimited", "--pid", &bin.child.id().to_string()])
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(lifted.success());
    assert_eq!(get("/once-lifted"), 200);
    std::thread::sleep(Duration::from_millis(300));
    let out = bin.stop();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}\n{stderr}", out.status);
    let told: Vec<&str> =
        stderr.lines().filter(|l| l.contains("cannot write the log to standard output")).collect();
    // Once per run of failures: the limit was reached twice.
    assert_eq!(told.len(), 2, "{stderr}");
    assert!(told.iter().all(|l| l.contains("File too large")), "{told:?}");
    let log = std::fs::read_to_string(&path).unwrap();
    assert!(log.contains("/once-lifted"), "lines are written once the limit is lifted:\n{log}");
    let glued: Vec<&str> = log.lines().filter(|l| l.matches("authgate::").count() > 1).collect();
    assert!(glued.is_empty(), "a line begun on the end of a cut one: {glued:?}");
    assert!(log.contains("lost_lines="), "the lines lost are counted:\n{log}");
}

/// Stops the binary, reads the rest of its output into `lines`, and
/// returns its JSON log events.
async fn stop_for_events(
    bin: Binary,
    rx: &mut mpsc::UnboundedReceiver<String>,
    lines: &mut Vec<String>,
) -> Vec<serde_json::Value> {
    drop(bin.stop());
    while let Some(line) = rx.recv().await {
        lines.push(line);
    }
    lines.iter().filter_map(|l| serde_json::from_str(l.strip_prefix("stdout: ")?).ok()).collect()
}

/// The events of log target `target` whose request target ends with `path`.
fn events_of<'a>(events: &'a [serde_json::Value], target: &str, path: &str) -> Vec<&'a serde_json::Value> {
    events
        .iter()
        .filter(|v| v["target"] == target && v["request_target"].as_str().is_some_and(|t| t.ends_with(path)))
        .collect()
}

/// The access line names the origin address a request went to or a tunnel
/// connected to (`upstream`): for a name that resolves to several
/// addresses, or to other addresses later, the target alone does not say
/// which one was reached. Also when the origin answered badly or not in
/// time, or the client left before it answered (it was `-` then: which of
/// a name's addresses failed was not said). `-` when the request went out
/// on no origin connection. In the JSON format and in the text one.
#[tokio::test]
async fn the_access_line_names_the_origin_address_reached() {
    let origin = spawn_echo_origin();
    let tunnel_origin = spawn_shout_origin();
    let malformed = spawn_canned_origin(b"HTTP/1.1 abc Nope\r\n\r\n", std::sync::Arc::default());
    let mut silent = spawn_silent_origin();
    let closed = format!("127.0.0.1:{}", closed_port());
    let dir = TempDir::new();
    let users = users_toml(&[(USER, PASSWORD)]);
    let cfg = "[log]\nformat = \"json\"\nlevel = \"info\"\n[limits]\nupstream_response_timeout = \"1s\"\n";
    let mut bin = start_binary(&dir, cfg, &users, Stdio::piped());
    let (tx, mut rx) = mpsc::unbounded_channel();
    pump(bin.child.stdout.take().unwrap(), "stdout", tx);
    let mut lines = Vec::new();
    wait_listening(bin.addr).await;
    let good = basic(USER, PASSWORD);
    let host = origin.authority();
    let r =
        get(bin.addr, &origin.url("/forwarded"), &[("Host", &host), ("Proxy-Authorization", &good)]).await;
    assert_eq!(r.status, 200, "{}", r.dump());
    let r = get(bin.addr, &origin.url("/refused"), &[("Host", &host)]).await;
    assert_eq!(r.status, 407, "{}", r.dump());
    let answer = |url: String, host: String| {
        let auth = good.clone();
        async move { get(bin.addr, &url, &[("Host", &host), ("Proxy-Authorization", &auth)]).await.status }
    };
    assert_eq!(answer(malformed.url("/malformed"), malformed.authority()).await, 502);
    let timed_out = answer(silent.origin.url("/silent"), silent.origin.authority());
    let (status, ()) = tokio::join!(timed_out, silent.next_head());
    assert_eq!(status, 504);
    assert_eq!(answer(format!("http://{closed}/closed"), closed.clone()).await, 502);
    // A client that leaves while the origin keeps it waiting.
    let mut gone = RawConn::connect(bin.addr).await;
    let host = silent.origin.authority();
    gone.send(request(
        "GET",
        &silent.origin.url("/gone"),
        &[("Host", &host), ("Proxy-Authorization", &good)],
    ))
    .await;
    silent.next_head().await;
    drop(gone);
    wait_for(&mut rx, &mut lines, "the left request's access line", |l| l.contains("/gone")).await;
    // A pooled connection that closes under a request sent again on a new
    // one, which cannot be made: the origin it went out to is named.
    let (once, once_at) = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = l.local_addr().unwrap();
        (l, at)
    };
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let (mut s, _) = once.accept().await.unwrap();
        drop(once); // later connections are refused
        read_request_head(&mut s).await;
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.unwrap();
        read_request_head(&mut s).await; // and closed under the second
    });
    let url = |path: &str| format!("http://{once_at}{path}");
    assert_eq!(answer(url("/pooled"), once_at.to_string()).await, 200);
    tokio::time::sleep(Duration::from_millis(300)).await; // past the replay threshold
    assert_eq!(answer(url("/sent-again"), once_at.to_string()).await, 502);
    let target = tunnel_origin.authority();
    let mut tunnel = RawConn::connect(bin.addr).await;
    tunnel.send(request("CONNECT", &target, &[("Host", &target), ("Proxy-Authorization", &good)])).await;
    assert_eq!(tunnel.read_head().await.status, 200);
    tunnel.shutdown_write().await;
    assert_eq!(tunnel.read_to_end().await, b"BYE\n");
    wait_for(&mut rx, &mut lines, "the tunnel's access line", |l| {
        l.contains("authgate::access") && l.contains("CONNECT")
    })
    .await;
    let events = stop_for_events(bin, &mut rx, &mut lines).await;
    let upstream = |path: &str| {
        let access = events_of(&events, "authgate::access", path);
        assert_eq!(access.len(), 1, "{path}: {}", lines.join("\n"));
        access[0]["upstream"].as_str().unwrap_or_default().to_string()
    };
    assert_eq!(upstream("/forwarded"), origin.addr.to_string());
    assert_eq!(upstream("/refused"), "-");
    assert_eq!(upstream("/malformed"), malformed.addr.to_string());
    assert_eq!(upstream("/silent"), silent.origin.addr.to_string());
    assert_eq!(upstream("/gone"), silent.origin.addr.to_string());
    assert_eq!(upstream("/sent-again"), once_at.to_string());
    let gone = events_of(&events, "authgate::access", "/gone");
    assert_eq!((gone[0]["status"].as_u64(), gone[0]["outcome"].as_str()), (Some(0), Some("client_gone")));
    assert_eq!(upstream("/closed"), "-", "connection refused: no origin connection");
    assert_eq!(upstream(&target), tunnel_origin.addr.to_string());

    // (It runs a runtime of its own: on a thread of its own.)
    let text = std::thread::spawn(|| stdout_after_one_request("[log]\nlevel = \"info\"\n")).join().unwrap();
    let access = text.lines().find(|l| l.contains("authgate::access")).expect("an access line");
    assert!(access.contains(" upstream=127.0.0.1:"), "{access}");
}

/// A wrong password whose client hangs up while argon2 verifies it is
/// audited all the same, once, when its verification ends, with the
/// request id of its access line (`client_gone`). It left no audit line;
/// and since a right password given up that way is cached (its next
/// connection answered at once), a client could learn that a guess was
/// wrong without leaving one. A right password given up is not audited.
#[tokio::test]
async fn a_wrong_password_given_up_while_it_is_verified_is_audited_once() {
    let origin = spawn_echo_origin();
    let dir = TempDir::new();
    let hash = costly_hash(PASSWORD);
    let users = format!("[users.{USER}]\npassword = {}\n", toml_str(&hash));
    let mut bin = start_binary(&dir, "[log]\nformat = \"json\"\nlevel = \"info\"\n", &users, Stdio::piped());
    let (tx, mut rx) = mpsc::unbounded_channel();
    pump(bin.child.stdout.take().unwrap(), "stdout", tx);
    let mut lines = Vec::new();
    let head = |path: &str, password: &str| {
        let auth = basic(USER, password);
        request("GET", &origin.url(path), &[("Host", &origin.authority()), ("Proxy-Authorization", &auth)])
    };
    let mut give_up = async |path: &str, password: &str, lines: &mut Vec<String>| {
        let mut conn = RawConn::connect(bin.addr).await;
        conn.send(head(path, password)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(conn);
        wait_for(&mut rx, lines, "the access line", |l| l.contains("authgate::access") && l.contains(path))
            .await;
    };
    give_up("/right", PASSWORD, &mut lines).await;
    // The right one's verification is over (this one waited for it), so the
    // wrong one runs argon2 at once.
    let after = get(
        bin.addr,
        &origin.url("/after"),
        &[("Host", &origin.authority()), ("Proxy-Authorization", &basic(USER, PASSWORD))],
    )
    .await;
    assert_eq!(after.status, 200);
    give_up("/wrong", WRONG_PASSWORD, &mut lines).await;
    let last = get(
        bin.addr,
        &origin.url("/last"),
        &[("Host", &origin.authority()), ("Proxy-Authorization", &basic(USER, "another guess"))],
    )
    .await;
    assert_eq!(last.status, 407);
    wait_for(&mut rx, &mut lines, "the audit line", |l| {
        l.contains("authgate::audit") && l.contains("/wrong")
    })
    .await;
    let events = stop_for_events(bin, &mut rx, &mut lines).await;
    let of = |target: &str, path: &str| events_of(&events, target, path);
    for path in ["/right", "/wrong"] {
        let access = of("authgate::access", path);
        assert_eq!(access.len(), 1, "{path}: {access:?}");
        assert_eq!(access[0]["outcome"], "client_gone", "{path}: given up before its answer: {}", access[0]);
    }
    assert!(
        of("authgate::audit", "/right").is_empty(),
        "a right password is not audited:\n{}",
        lines.join("\n")
    );
    let wrong = of("authgate::audit", "/wrong");
    assert_eq!(wrong.len(), 1, "audited once:\n{}", lines.join("\n"));
    assert_eq!(wrong[0]["reason"], "bad_password");
    assert_eq!(wrong[0]["username"], USER);
    assert_eq!(wrong[0]["request_id"], of("authgate::access", "/wrong")[0]["request_id"], "{}", wrong[0]);
    assert_eq!(of("authgate::audit", "/last").len(), 1, "a refusal heard is audited once, as before");
}

/// A throttled attempt is audited once whether its client waits for the
/// 429 or hangs up during the tarpit's delay (then as it leaves, with the
/// request id of its access line). One that hung up left no audit line, so
/// a flood that hung up on every throttled guess showed in no audit line
/// past the first `max_failures`.
#[tokio::test]
async fn a_throttled_attempt_is_audited_once_also_when_its_client_leaves_during_the_delay() {
    let origin = spawn_echo_origin();
    let dir = TempDir::new();
    let users = format!("[users.{USER}]\npassword = {}\n", toml_str(&hash(PASSWORD)));
    let extra =
        "[log]\nformat = \"json\"\nlevel = \"info\"\n[auth.throttle]\nmax_failures = 1\ndelay = \"2s\"\n";
    let mut bin = start_binary(&dir, extra, &users, Stdio::piped());
    let (tx, mut rx) = mpsc::unbounded_channel();
    pump(bin.child.stdout.take().unwrap(), "stdout", tx);
    let mut lines = Vec::new();
    let guess = |path: &str| {
        let auth = basic(USER, WRONG_PASSWORD);
        request("GET", &origin.url(path), &[("Host", &origin.authority()), ("Proxy-Authorization", &auth)])
    };
    let wrong = [("Host", origin.authority()), ("Proxy-Authorization", basic(USER, WRONG_PASSWORD))];
    let wrong: Vec<(&str, &str)> = wrong.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(get(bin.addr, &origin.url("/first"), &wrong).await.status, 407, "the only attempt");
    let mut conn = RawConn::connect(bin.addr).await;
    conn.send(guess("/gone")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(conn);
    wait_for(&mut rx, &mut lines, "the access line", |l| {
        l.contains("authgate::access") && l.contains("/gone")
    })
    .await;
    assert_eq!(get(bin.addr, &origin.url("/waited"), &wrong).await.status, 429);
    wait_for(&mut rx, &mut lines, "the audit line", |l| {
        l.contains("authgate::audit") && l.contains("/waited")
    })
    .await;
    let events = stop_for_events(bin, &mut rx, &mut lines).await;
    let of = |target: &str, path: &str| events_of(&events, target, path);
    let gone = of("authgate::access", "/gone");
    assert_eq!(gone.len(), 1, "{gone:?}");
    assert_eq!(gone[0]["outcome"], "client_gone", "left during the delay: {}", gone[0]);
    for path in ["/gone", "/waited"] {
        let audit = of("authgate::audit", path);
        assert_eq!(audit.len(), 1, "{path}: audited once:\n{}", lines.join("\n"));
        assert_eq!(audit[0]["reason"], "throttled", "{path}");
        assert_eq!(audit[0]["username"], USER, "{path}");
        assert_eq!(audit[0]["request_id"], of("authgate::access", path)[0]["request_id"], "{path}");
    }
    assert_eq!(of("authgate::audit", "/first")[0]["reason"], "bad_password");
}

/// A throttled attempt that a reload lets through during the tarpit's delay
/// (the throttle turned off) has its password checked then: it is audited
/// once, for what the check found, not also as throttled.
#[tokio::test]
async fn a_tarpitted_attempt_let_through_by_a_reload_is_audited_for_its_password() {
    let origin = spawn_echo_origin();
    let dir = TempDir::new();
    let users = format!("[users.{USER}]\npassword = {}\n", toml_str(&hash(PASSWORD)));
    let extra =
        "[log]\nformat = \"json\"\nlevel = \"info\"\n[auth.throttle]\nmax_failures = 1\ndelay = \"60s\"\n";
    let mut bin = start_binary(&dir, extra, &users, Stdio::piped());
    let (tx, mut rx) = mpsc::unbounded_channel();
    pump(bin.child.stdout.take().unwrap(), "stdout", tx);
    let mut lines = Vec::new();
    let wrong = [("Host", origin.authority()), ("Proxy-Authorization", basic(USER, WRONG_PASSWORD))];
    let wrong: Vec<(&str, &str)> = wrong.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(get(bin.addr, &origin.url("/first"), &wrong).await.status, 407, "the only attempt");
    let mut conn = RawConn::connect(bin.addr).await;
    conn.send(request("GET", &origin.url("/held"), &wrong)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cfg = std::fs::read_to_string(&bin.config).unwrap();
    std::fs::write(&bin.config, cfg.replace("[auth.throttle]\n", "[auth.throttle]\nenabled = false\n"))
        .unwrap();
    bin.signal("HUP");
    let r = tokio::time::timeout(Duration::from_secs(20), conn.read_response("GET"))
        .await
        .expect("checked once the reload turns the throttle off, not after the 60 s delay");
    assert_eq!(r.status, 407, "{}", r.dump());
    wait_for(&mut rx, &mut lines, "the audit line", |l| l.contains("authgate::audit") && l.contains("/held"))
        .await;
    let events = stop_for_events(bin, &mut rx, &mut lines).await;
    let audit = events_of(&events, "authgate::audit", "/held");
    assert_eq!(audit.len(), 1, "audited once:\n{}", lines.join("\n"));
    assert_eq!(audit[0]["reason"], "bad_password", "{}", audit[0]);
    assert_eq!(audit[0]["request_id"], events_of(&events, "authgate::access", "/held")[0]["request_id"]);
}

/// In the text format an audit line's username is quoted and escaped once,
/// by the format: it was escaped before too, so a CR showed as `\\r`.
#[test]
fn the_text_audit_line_escapes_a_username_once() {
    let dir = TempDir::new();
    let bin = alice_at_info(&dir, Stdio::piped());
    let proxy = bin.addr;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let origin = spawn_echo_origin();
        wait_listening(proxy).await;
        let bad = basic("ev\r\nil\\x\u{202e}", "wrong-pw");
        let r =
            get(proxy, &origin.url("/a"), &[("Host", &origin.authority()), ("Proxy-Authorization", &bad)])
                .await;
        assert_eq!(r.status, 407);
    });
    let out = bin.stop();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find(|l| l.contains("authgate::audit")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(line.contains(r#"username="ev\r\nil\\x\u{202e}" "#), "{line}");
    // Free text with spaces and commas is quoted too, so that key=value
    // parsers read the line.
    let started =
        stdout.lines().find(|l| l.contains("authgate started")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(started.contains(r#" summary="1 user(s), "#), "{started}");
}

/// A request target with `"`, `\` or UTF-8 controls (which hyper accepts)
/// is quoted and escaped in the text access line: written bare, it forged
/// fields (`a"b=c`) and put C1 controls (`CSI`) on the terminal of whoever
/// read the log.
#[test]
fn a_hostile_request_target_cannot_forge_access_log_fields_or_controls() {
    let dir = TempDir::new();
    let bin = start_binary(&dir, "", &users_toml(&[(USER, PASSWORD)]), Stdio::piped());
    let proxy = bin.addr;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let authority = rt.block_on(async {
        let origin = spawn_echo_origin();
        wait_listening(proxy).await;
        let auth = basic(USER, PASSWORD);
        for path in ["/a\"b=c\\d", "/csi\u{9b}31m", "/ls\u{2028}x"] {
            let r = get(
                proxy,
                &format!("http://{}{path}", origin.authority()),
                &[("Host", &origin.authority()), ("Proxy-Authorization", &auth)],
            )
            .await;
            assert_eq!(r.status, 200, "{path:?}: {}", r.dump());
        }
        origin.authority()
    });
    let out = bin.stop();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    for written in [
        format!(r#"request_target="http://{authority}/a\"b=c\\d" upstream={authority} status=200"#),
        format!(r#"request_target="http://{authority}/csi\u{{9b}}31m" upstream={authority} status=200"#),
        format!(r#"request_target="http://{authority}/ls\u{{2028}}x" upstream={authority} status=200"#),
    ] {
        assert!(stdout.contains(&written), "{written} not in:\n{stdout}");
    }
    assert!(!stdout.contains('\u{9b}') && !stdout.contains('\u{2028}'), "{stdout}");
}

/// A connection refused over the connection limit gets a 503 whose
/// `x-request-id` is in the log line that records the refusal; further
/// refusals within 10 s are counted in the next line, not logged one by one,
/// or in a summary line when none follows.
#[test]
fn the_request_id_of_a_503_at_the_connection_limit_is_logged_once_per_10_s() {
    let dir = TempDir::new();
    let bin = start_binary(
        &dir,
        "[limits]\nmax_connections = 1\n",
        &users_toml(&[(USER, PASSWORD)]),
        Stdio::piped(),
    );
    let proxy = bin.addr;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ids = rt.block_on(async {
        wait_listening(proxy).await;
        // wait_listening's connection holds the one slot until the proxy
        // has seen it close.
        tokio::time::sleep(Duration::from_millis(300)).await;
        // A connection that holds the one slot: one refused instead gets
        // its 503 at once (2 s: a loaded machine took longer than 300 ms,
        // and the refused connection was taken for the held one).
        let mut ids = Vec::new();
        let mut held = loop {
            let mut held = RawConn::connect(proxy).await;
            match tokio::time::timeout(Duration::from_secs(2), held.read_response("GET")).await {
                Err(_) => break held,
                Ok(r) => ids.push(r.header("x-request-id").expect("the 503 has an x-request-id").to_owned()),
            }
        };
        for _ in 0..5 {
            let mut refused = RawConn::connect(proxy).await;
            let r = refused.read_response("GET").await;
            assert_proxy_error(&r, 503, "proxy_internal_error", "too_many_connections");
            ids.push(r.header("x-request-id").expect("the 503 has an x-request-id").to_owned());
        }
        // A 503 that reached the held connection late counts too.
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(500), held.read_response("GET")).await {
            ids.push(r.header("x-request-id").expect("the 503 has an x-request-id").to_owned());
        }
        ids
    });
    let out = bin.stop();
    let log = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("connection limit reached")).collect();
    let (summaries, refusals): (Vec<&str>, Vec<&str>) = lines.iter().partition(|l| l.contains("(summary"));
    assert_eq!(refusals.len(), 1, "one line for {} refusals:\n{log}", ids.len());
    assert!(
        ids.iter().any(|id| refusals[0].contains(&format!("request_id=\"{id}\""))),
        "the line names none of the 503s' request ids {ids:?}:\n{log}"
    );
    // Those held back are not lost: with no refusal after them to carry
    // their count, a summary line says it at shutdown.
    assert_eq!(summaries.len(), 1, "{log}");
    let held_back = |line: &str| -> usize {
        let n = line.split("held_back=").nth(1).expect("held_back");
        n.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    };
    let total: usize = refusals.len() + lines.iter().map(|l| held_back(l)).sum::<usize>();
    assert_eq!(total, ids.len(), "the lines account for every refusal:\n{log}");
}

/// The binary logging at INFO on one plain listener with `proxy_protocol`
/// (which [`start_binary`]'s `[server]` cannot take), stdout piped.
fn proxy_protocol_binary(dir: &TempDir) -> Binary {
    binary_with_server(dir, "proxy_protocol = true\n")
}

/// [`proxy_protocol_binary`] with `server` as the rest of its `[server]`.
fn binary_with_server(dir: &TempDir, server: &str) -> Binary {
    let port = closed_port();
    let config = dir.write(
        "authgate.toml",
        format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\n{server}[auth]\nusers_file = \"users.toml\"\n[log]\nlevel = \"info\"\n"
        ),
    );
    let users = dir.write("users.toml", users_toml(&[(USER, PASSWORD)]));
    let child = Command::new(env!("CARGO_BIN_EXE_authgate"))
        .arg("--config")
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Binary { child, addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)), config, users }
}

/// A PROXY listener that believes anyone's header is warned of in the log,
/// as `check` warns of it: at the start, and at a reload that empties
/// `proxy_protocol_from` (`check` alone said it, and such a reload opened
/// the listener with "configuration reloaded" alone logged; probe 390).
#[test]
fn a_proxy_listener_open_to_anyone_is_warned_of_at_start_and_at_reload() {
    const OPEN: &str = "server.proxy_protocol_from is empty: whoever reaches a PROXY protocol listener";
    let dir = TempDir::new();
    let bin = proxy_protocol_binary(&dir);
    let open = std::fs::read_to_string(&bin.config).unwrap();
    let listed = open
        .replace("proxy_protocol = true\n", "proxy_protocol = true\nproxy_protocol_from = [\"192.0.2.1\"]\n");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(wait_listening(bin.addr));
    for config in [&listed, &open] {
        std::fs::write(&bin.config, config).unwrap();
        bin.signal("HUP");
        std::thread::sleep(std::time::Duration::from_millis(1500));
    }
    let out = bin.stop();
    let log = String::from_utf8_lossy(&out.stdout);
    let reloads: Vec<&str> = log.lines().filter(|l| l.contains("configuration reloaded")).collect();
    assert!(reloads.len() >= 2, "both edits reloaded:\n{log}");
    let warned: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ") && l.contains(OPEN)).collect();
    assert_eq!(warned.len(), 2, "at the start and when the list was emptied:\n{log}");

    // Not when no listener runs with the header: one the new file marks
    // takes it after a restart (probe 394).
    let dir = TempDir::new();
    let bin = binary_with_server(&dir, "proxy_protocol_from = [\"192.0.2.1\"]\n");
    rt.block_on(wait_listening(bin.addr));
    let marked = std::fs::read_to_string(&bin.config)
        .unwrap()
        .replace("proxy_protocol_from = [\"192.0.2.1\"]\n", "proxy_protocol = true\n");
    std::fs::write(&bin.config, marked).unwrap();
    bin.signal("HUP");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let out = bin.stop();
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("take effect only after a restart"), "the reload:\n{log}");
    assert!(!log.contains(OPEN), "no listener takes a header yet:\n{log}");
}

/// A client named in IPv4-mapped form (as a dual-stack `[::]` listener
/// reports an IPv4 peer, or as a PROXY header may name it) is logged as
/// the IPv4 address, as on an IPv4 listener: a search for the address finds
/// every line of that client.
#[test]
fn a_mapped_client_address_is_logged_as_ipv4() {
    let dir = TempDir::new();
    let bin = proxy_protocol_binary(&dir);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        wait_listening(bin.addr).await;
        let mut conn = RawConn::connect(bin.addr).await;
        let mut bytes = b"PROXY TCP6 ::ffff:192.0.2.9 ::1 4000 3128\r\n".to_vec();
        // No credentials: answered at once with a 407, and logged.
        bytes.extend(request("GET", "http://127.0.0.1:9/mapped", &[("Host", "127.0.0.1:9")]));
        conn.send(bytes).await;
        assert_eq!(conn.read_response("GET").await.status, 407);
    });
    let line = bin.stop_for_access_line("/mapped");
    assert!(line.contains("client=192.0.2.9:4000"), "{line}");
}

/// A head over `max_header_bytes` that the proxy's service refuses (one
/// pipelined behind a large response, read while it went out: the reader
/// did not count it) is logged without a password cut out of a malformed
/// URL: `http://alice:Hu6e/Head@host/` (authority `alice:Hu6e`, not a host
/// and a port) is logged as `http://…`, as for a bad target (it would log
/// `http://alice:Hu6e/Head@host/`).
#[test]
fn a_head_too_large_is_logged_without_a_password_in_its_target() {
    let dir = TempDir::new();
    let extra = "[log]\nlevel = \"info\"\n[reload]\nwatch = false\n[limits]\nmax_header_bytes = 8192\n";
    let bin = start_binary(&dir, extra, &users_toml(&[(USER, PASSWORD)]), Stdio::piped());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let origin = spawn_sized_origin();
        wait_listening(bin.addr).await;
        let target = origin.url("/too-large").replace("http://", "http://alice:Hu6e/Head@");
        let second = head_behind_a_large_response(bin.addr, &origin, (USER, PASSWORD), &target).await;
        assert_proxy_error(&second, 431, "http_request_error", "request_head_too_large");
    });
    let out = bin.stop();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("Hu6e"), "the password is logged:\n{stdout}");
    let line = stdout.lines().find(|l| l.contains("authgate::access") && l.contains("status=431"));
    assert!(
        line.is_some_and(|l| l.contains("request_target=\"http://…\"")),
        "the 431's access line:\n{stdout}"
    );
}

/// A request target is logged cut to its first 4,096 bytes and `…`, in the
/// access line of a forwarded request, of a refusal, and in the audit line
/// of a wrong password: whole, a 60 KB path made about 120 KB of log per
/// request, and a line over 16 KiB is split by container log drivers. What
/// goes to the origin is not cut. A method (any token) is cut to 64 bytes.
#[test]
fn a_long_request_target_or_method_is_logged_cut_and_forwarded_whole() {
    let dir = TempDir::new();
    let bin = alice_at_info(&dir, Stdio::piped());
    let proxy = bin.addr;
    let path = format!("/long-{}", "p".repeat(9_000));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let authority = rt.block_on(async {
        let origin = spawn_echo_origin();
        wait_listening(proxy).await;
        let host = [("Host", origin.authority())];
        let good = basic(USER, PASSWORD);
        let bad = basic(USER, WRONG_PASSWORD);
        let r = get(proxy, &origin.url(&path), &[("Host", &host[0].1), ("Proxy-Authorization", &good)]).await;
        assert_eq!(r.status, 200, "{}", r.dump());
        assert!(r.text().contains(&format!("GET {path} ")), "the origin got a cut path: {}", r.dump());
        let r = get(proxy, &origin.url(&path), &[("Host", &host[0].1), ("Proxy-Authorization", &bad)]).await;
        assert_eq!(r.status, 407, "{}", r.dump());
        // Origin form: refused before it is classified, logged as its path.
        let mut c = RawConn::connect(proxy).await;
        c.send(&format!("GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", host[0].1)).await;
        let answer = String::from_utf8_lossy(&c.read_to_end().await).into_owned();
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        // A method is any token: a long one is cut too (probe 192).
        let mut c = RawConn::connect(proxy).await;
        let method = "M".repeat(30_000);
        let url = origin.url("/method-cut");
        c.send(&format!("{method} {url} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", host[0].1)).await;
        let answer = String::from_utf8_lossy(&c.read_to_end().await).into_owned();
        assert!(answer.starts_with("HTTP/1.1 407 "), "{answer}");
        origin.authority()
    });
    let out = bin.stop();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find(|l| l.contains("/method-cut")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(line.contains(&format!("method=\"{}…\" ", "M".repeat(64))), "{line}");
    assert!(line.len() < 1_000, "{} bytes", line.len());
    let url = format!("http://{authority}{path}");
    let cut = |whole: &str| format!("request_target=\"{}…\"", &whole[..4096]);
    let lines: Vec<&str> = stdout.lines().filter(|l| l.contains("/long-")).collect();
    for (what, status, target) in [
        ("forwarded", "status=200", cut(&url)),
        ("refused", "status=407", cut(&url)),
        ("audited", "reason=\"bad_password\"", cut(&url)),
        ("origin form", "status=400", cut(&path)),
    ] {
        let line = lines.iter().find(|l| l.contains(status)).unwrap_or_else(|| panic!("{what}: {stdout}"));
        assert!(line.contains(&target), "{what}: the target is not cut at 4,096 bytes: {line}");
        assert!(line.len() < 5_000, "{what}: {} bytes", line.len());
    }
}

/// On a PROXY-protocol listener, a connection closed or reset before its
/// first byte (a load balancer's TCP health check) is not warned about: a
/// warning per check drowned the log. A bad header still is, and one
/// shorter than a header is refused at once (it waited 30 s,
/// `header_read_timeout`, for 12 bytes, or for 16 after a v2 signature).
#[test]
fn a_health_check_on_a_proxy_protocol_listener_is_not_warned_about() {
    use tokio::io::AsyncWriteExt;
    let dir = TempDir::new();
    let bin = proxy_protocol_binary(&dir);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        wait_listening(bin.addr).await;
        for _ in 0..3 {
            // Closed, and reset, before a byte.
            drop(tokio::net::TcpStream::connect(bin.addr).await.unwrap());
            let reset = tokio::net::TcpStream::connect(bin.addr).await.unwrap();
            reset.set_zero_linger().unwrap();
            drop(reset);
        }
        // Bad headers, last: once they are answered, the checks before them
        // have been seen. All short of a whole header (the second and the
        // third, a v2 signature and a version or family byte no header
        // has, waited for the length).
        for bytes in [&b"HELLO\r\n"[..], b"\r\n\r\n\0\r\nQUIT\nX", b"\r\n\r\n\0\r\nQUIT\n\x21\xff"] {
            let mut bad = tokio::net::TcpStream::connect(bin.addr).await.unwrap();
            bad.write_all(bytes).await.unwrap();
            let mut rest = Vec::new();
            let closed = tokio::time::timeout(Duration::from_secs(10), bad.read_to_end(&mut rest)).await;
            assert!(closed.is_ok(), "{bytes:?}: a short bad header is refused at once");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    });
    let out = bin.stop();
    let log = [String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)].concat();
    // (Beside the start's warning of a listener without `proxy_protocol_from`.)
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("PROXY") && !l.contains("proxy_protocol_from"))
        .collect();
    assert!(warned.iter().all(|w| w.contains("bad or missing PROXY protocol header")), "{log}");
    // At most one line every 10 s, the others counted in `held_back` (of
    // the next line, or of the summary at shutdown): anyone who reaches
    // the listener can make one per connection (probe 106: 600 lines in
    // 0.1 s).
    let held = |l: &&str| {
        l.split("held_back=")
            .nth(1)
            .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next()?.parse::<usize>().ok())
    };
    assert_eq!(warned.len(), 2, "the first, and a summary at shutdown:\n{log}");
    let lines = warned.iter().filter(|l| !l.contains("(summary")).count();
    assert_eq!(lines + warned.iter().filter_map(held).sum::<usize>(), 3, "each bad header counted:\n{log}");
}

/// A request in authority form that is not a CONNECT (`GET host:port`) is
/// refused as no proxy request, and its access line names the target sent,
/// without a password in it: `request_target` was empty (probe 108).
#[test]
fn an_authority_form_get_is_logged_with_its_target() {
    let dir = TempDir::new();
    let extra = "[log]\nlevel = \"info\"\n[reload]\nwatch = false\n";
    let bin = start_binary(&dir, extra, &users_toml(&[(USER, PASSWORD)]), Stdio::piped());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        wait_listening(bin.addr).await;
        let auth = basic(USER, PASSWORD);
        for target in ["127.0.0.1:7", "alice:hunter2@127.0.0.2:7"] {
            let r =
                send_one(bin.addr, "GET", target, &[("Host", "127.0.0.1:7"), ("Proxy-Authorization", &auth)])
                    .await;
            assert_proxy_error(&r, 400, "http_request_error", "not_a_proxy_request");
        }
    });
    let out = bin.stop();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().filter(|l| l.contains("authgate::access")).collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].contains(" request_target=127.0.0.1:7 "), "{}", lines[0]);
    assert!(lines[1].contains(" request_target=127.0.0.2:7 "), "{}", lines[1]);
    assert!(!stdout.contains("hunter2"), "{stdout}");
}

/// A tunnel whose origin resets while its client has stopped reading (and
/// sends a byte that finds the origin gone) ends `send_timeout` later,
/// logged `tunnel_error`: the tunnel's idle timeout
/// (30 s here, an hour by default) held it, and it was logged
/// `tunnel_send_timeout` (probe 110).
#[test]
fn a_failed_tunnel_with_a_stalled_reader_ends_after_send_timeout_as_an_error() {
    use tokio::io::AsyncWriteExt;
    let dir = TempDir::new();
    let extra = "[log]\nlevel = \"info\"\n[reload]\nwatch = false\n[limits]\nsend_timeout = \"1s\"\ntunnel_idle_timeout = \"30s\"\n";
    let bin = start_binary(&dir, extra, &users_toml(&[(USER, PASSWORD)]), Stdio::piped());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tunnel = rt.block_on(async {
        // Sends until the buffers are full, then resets.
        let origin = spawn_raw_origin(|mut s: tokio::net::TcpStream| async move {
            let chunk = vec![b'o'; 64 * 1024];
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                while s.write_all(&chunk).await.is_ok() {}
            })
            .await;
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        });
        wait_listening(bin.addr).await;
        let target = origin.authority();
        let auth = basic(USER, PASSWORD);
        let mut tunnel = RawConn::connect(bin.addr).await;
        tunnel.send(request("CONNECT", &target, &[("Host", &target), ("Proxy-Authorization", &auth)])).await;
        assert_eq!(tunnel.read_head().await.status, 200);
        // A byte up after the reset, which finds the origin gone. Then
        // never read, nor closed: the tunnel ends by itself, or at the
        // shutdown below.
        tokio::time::sleep(Duration::from_secs(1)).await;
        tunnel.send(b"x").await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        tunnel
    });
    let line = bin.stop_for_access_line("CONNECT");
    drop(tunnel);
    assert!(line.contains("outcome=\"tunnel_error\""), "{line}");
    // Before the shutdown (at 4 s), not when the idle timeout or the
    // shutdown's grace ran out.
    let ms: f64 = line
        .split(" duration_ms=")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no duration in {line}"));
    assert!(ms < 4000.0, "{line}");
}

/// A log consumer that stopped reading does not keep the process from
/// ending: SIGTERM, and a second one, waited without end for the write of
/// the last lines to a full pipe, and only SIGKILL ended it (probe 117).
/// The exit waits for stdout a bounded time, then says on stderr that the
/// lines still waiting are lost.
///
/// Also when standard error is the same pipe (`2>&1` into the consumer):
/// the exit then blocked for good in the write of that message, and a
/// second signal in the write of its own (probe 205). Those lines are lost
/// then, as the log lines are.
#[test]
fn a_stopped_log_consumer_does_not_keep_sigterm_from_ending_the_process() {
    for second_signal in [false, true] {
        for one_pipe in [false, true] {
            stopped_log_consumer_then_sigterm(second_signal, one_pipe);
        }
    }
}

fn stopped_log_consumer_then_sigterm(second_signal: bool, one_pipe: bool) {
    let dir = TempDir::new();
    // A long grace: the second signal has to cut it.
    let grace = if second_signal { "60s" } else { "1s" };
    let extra = format!("[limits]\nshutdown_grace = \"{grace}\"\n");
    let users = users_toml(&[(USER, PASSWORD)]);
    // The pipe's reading end, held unread until the process has ended.
    let (mut bin, _unread) = if one_pipe {
        let (bin, reader) = start_binary_to_one_pipe(&dir, &extra, &users);
        (bin, Some(reader))
    } else {
        (start_binary(&dir, &extra, &users, Stdio::piped()), None)
    };
    // Far more than a pipe holds (64 KiB): access lines of 407s.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        wait_listening(bin.addr).await;
        for _ in 0..600 {
            let r = get(bin.addr, "http://127.0.0.1:9/a-line-for-the-log", &[("Host", "127.0.0.1:9")]).await;
            assert_eq!(r.status, 407);
        }
    });
    // (The writer thread writes every 100 ms: it is stuck by now.)
    std::thread::sleep(Duration::from_millis(500));
    // A head still arriving holds the shutdown for the grace period.
    let mut held = std::net::TcpStream::connect(bin.addr).unwrap();
    std::io::Write::write_all(&mut held, b"GET http://127.0.0.1:9/ HTTP/1.1\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let started = std::time::Instant::now();
    bin.signal("TERM");
    if second_signal {
        std::thread::sleep(Duration::from_millis(300));
        bin.signal("TERM");
    }
    let status = loop {
        if let Some(status) = bin.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "not ended 20 s after SIGTERM (second signal: {second_signal}, stderr in the same pipe: {one_pipe})"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(if second_signal { 1 } else { 0 }), "{status:?}");
    if one_pipe {
        return;
    }
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut bin.child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("standard output took no log lines for "), "{stderr}");
}

/// `authgate check` on `config`, which must pass: its standard error.
fn check_passes(config: &std::path::Path) -> String {
    let check = Command::new(env!("CARGO_BIN_EXE_authgate"))
        .arg("check")
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&check.stderr).into_owned();
    assert!(check.status.success(), "{err}");
    err
}

/// An argon2 hash whose tag is not a length tools write (here cut from 32
/// bytes to 30, as when it was copied short) is warned of: by `check`
/// (which says `ok`), at the start, and at a reload that brings it. It
/// passed `check`, and its user was refused as a wrong password (probe 118).
#[test]
fn a_hash_cut_short_is_warned_of() {
    let good = hash(PASSWORD);
    let (head, tag) = good.rsplit_once('$').unwrap();
    assert_eq!(tag.len(), 43, "a 32-byte tag");
    let cut = format!("{head}${}", &tag[..40]);
    let dir = TempDir::new();
    let users = format!(
        "[users.alice]\npassword = {}\n[users.bob]\npassword = {}\n",
        toml_str(&good),
        toml_str(&cut)
    );
    let bin = start_binary(&dir, "", &users, Stdio::piped());
    let err = check_passes(&bin.config);
    assert!(
        err.contains("authgate: warning: ")
            && err.contains("users.toml: user `bob`: its argon2 hash has a 30-byte tag"),
        "{err}"
    );
    assert!(!err.contains("alice") && !err.contains(&tag[..40]), "{err}");
    // A reload that brings another such hash warns of that user only, the
    // name escaped once, by the log format (it was escaped for a terminal
    // first, and a backslash came out as four).
    let more = format!("{users}[users.\"car\\\\ol\"]\npassword = {}\n", toml_str(&cut));
    std::fs::write(&bin.users, more).unwrap();
    bin.signal("HUP");
    std::thread::sleep(Duration::from_millis(1500));
    let out = bin.stop();
    let log = String::from_utf8_lossy(&out.stdout);
    let warned: Vec<&str> = log.lines().filter(|l| l.contains("a hash that may never verify")).collect();
    assert_eq!(warned.len(), 2, "bob at the start, carol at the reload:\n{log}");
    assert!(warned[0].contains("user=\"bob\"") && warned[1].contains("user=\"car\\\\ol\""), "{warned:?}");
}

/// A hash whose costs make each login slow (within the bounds a hash is
/// loaded with) is warned of by `check` and at the start: `m=4194304` took
/// 6 s a login at `t=1` and 39 s at `t=10`, right password or wrong, and
/// every other uncached login waited behind it, without a word (probe 315).
#[test]
fn a_hash_slow_to_verify_is_warned_of() {
    let good = hash(PASSWORD);
    // Never verified here: only its costs are read at load.
    let costly = |params: &str| format!("$argon2id$v=19${params}$c2FsdHNhbHQ${}", "A".repeat(43));
    let bcrypt = bcrypt::hash_with_result("pw", 4).unwrap().format_for_version(bcrypt::Version::TwoB);
    let users = format!(
        "[users.alice]\npassword = {}\n[users.big]\npassword = {}\n[users.long]\npassword = {}\n\
         [users.fine]\npassword = {}\n[users.old]\npassword = {}\n[users.oldfine]\npassword = {}\n\
         [users.\"$2y$05$S3cretS3cretS3cretS3cuQ\"]\npassword = {}\n",
        toml_str(&good),
        toml_str(&costly("m=4194304,t=1,p=1")),
        toml_str(&costly("m=65536,t=100,p=1")),
        toml_str(&costly("m=262144,t=3,p=4")),
        toml_str(&bcrypt.replacen("$04$", "$17$", 1)),
        toml_str(&bcrypt.replacen("$04$", "$12$", 1)),
        toml_str(&costly("m=4194304,t=2,p=1")),
    );
    let dir = TempDir::new();
    let bin = start_binary(&dir, "", &users, Stdio::piped());
    let err = check_passes(&bin.config);
    let warned: Vec<&str> = err.lines().filter(|l| l.contains("users.toml: user `")).collect();
    assert_eq!(warned.len(), 3, "big, long and old:\n{err}");
    assert!(
        warned[0].contains("user `big`: its hash (m=4194304, t=1) takes about 107 times the work")
            && warned[0].contains("and 4096 MiB of memory, and other logins wait"),
        "{err}"
    );
    assert!(warned[1].contains("user `long`: its hash (m=65536, t=100) takes about 168 times"), "{err}");
    assert!(warned[1].contains("that long and 64 MiB of memory"), "{err}");
    assert!(warned[2].contains("user `old`: its hash (bcrypt cost 17) takes about 481 times"), "{err}");
    // A name that may hold a password (a hash pasted as the name) is not
    // shown in the warning (it was; probe 329).
    assert!(!err.contains("S3cret"), "{err}");
    assert!(
        err.contains("a user (the name is not shown: it may hold a password): its hash (m=4194304, t=2)"),
        "{err}"
    );
    let out = bin.stop();
    let log = String::from_utf8_lossy(&out.stdout);
    let warned: Vec<&str> = log.lines().filter(|l| l.contains("a hash that is slow to verify")).collect();
    assert_eq!(warned.len(), 4, "{log}");
    assert!(warned[1].contains("user=\"big\""), "{warned:?}");
    assert!(!log.contains("S3cret"), "{log}");
    assert!(warned[0].contains("(the name is not shown: it may hold a password)"), "{warned:?}");
}

/// `[auth.argon2]` costs that make every new hash slow to verify are said
/// by `check`, at the thresholds of a stored hash (`check` said nothing,
/// and each hash `users add` then wrote was warned of; probe 329).
#[test]
fn argon2_costs_that_make_slow_hashes_are_warned_of() {
    let dir = TempDir::new();
    let users = users_toml(&[(USER, PASSWORD)]);
    for (costs, warned) in
        [("m_cost = 19456\nt_cost = 100\n", true), ("m_cost = 19456\nt_cost = 99\n", false)]
    {
        let config = format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[auth]\nusers_file = \"users.toml\"\n[auth.argon2]\n{costs}"
        );
        let config = dir.write("authgate.toml", &config);
        dir.write("users.toml", &users);
        let err = check_passes(&config);
        let line = "authgate: warning: auth.argon2: new hashes (m=19456, t=100) take about 50 times the work";
        assert_eq!(err.contains(line), warned, "{costs}: {err}");
        assert_eq!(err.contains("auth.argon2: new hashes"), warned, "{costs}: {err}");
    }
}

/// A log reader that is slow but keeps reading gets every line at exit:
/// the exit waits while standard output takes lines (a wait of 2 s in all
/// lost 1621 of 2000 access lines to a reader taking 300 KB/s: probe 119).
#[test]
fn a_slow_log_reader_gets_every_line_at_exit() {
    let dir = TempDir::new();
    let mut bin = start_binary(&dir, "", &users_toml(&[(USER, PASSWORD)]), Stdio::piped());
    let mut stdout = bin.child.stdout.take().unwrap();
    let (go, slow) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match std::io::Read::read(&mut stdout, &mut buf) {
                Ok(0) | Err(_) => return all,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
            // Fast until the burst is sent, then about 300 KB/s.
            if slow.try_recv().is_ok() || all.len() > 64 * 1024 {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    });
    // About 1 MB of access lines (long paths), sent at once on one connection.
    let path = format!("/{}", "p".repeat(1500));
    let n = 600;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        wait_listening(bin.addr).await;
        let mut c = RawConn::connect(bin.addr).await;
        let one = format!("GET http://127.0.0.1:9{path} HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n");
        c.send(one.repeat(n).into_bytes()).await;
        for _ in 0..n {
            assert_eq!(c.read_response("GET").await.status, 407);
        }
    });
    let _ = go.send(());
    bin.signal("TERM");
    let status = bin.child.wait().unwrap();
    let log = String::from_utf8_lossy(&reader.join().unwrap()).into_owned();
    assert!(status.success(), "{status:?}");
    let lines = log.lines().filter(|l| l.contains("authgate::access") && l.contains("status=407")).count();
    let mut err = String::new();
    let _ = std::io::Read::read_to_string(&mut bin.child.stderr.take().unwrap(), &mut err);
    assert_eq!(
        lines,
        n,
        "every access line reached the slow reader; stderr: {err}\n{}",
        log.lines().filter(|l| !l.contains("authgate::access")).collect::<Vec<_>>().join("\n")
    );
    assert!(log.contains("stopped"), "the last line too");
}

/// A reload that ends during the shutdown's drain, and closes the last
/// tunnel there (its user was removed), is logged before the process ends:
/// the tunnel's end ended the drain, and the process, before the reload
/// wrote its `configuration reloaded` line (probe 179, 4 of 4). A users
/// file of 30,000 entries makes the reload outlast the 100 ms between the
/// SIGHUP and the SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_closes_the_last_tunnel_of_the_drain_is_logged() {
    let shout = spawn_shout_origin();
    let dir = TempDir::new();
    let filler_hash = toml_str(&hash("x"));
    let mut others = String::new();
    for i in 0..30_000 {
        others.push_str(&format!("[users.u{i:05}]\npassword = {filler_hash}\n"));
    }
    let users = format!("{}{others}", users_toml(&[(USER, PASSWORD)]));
    let cfg = "[log]\nlevel = \"info\"\n[reload]\nwatch = false\n[limits]\nshutdown_grace = \"30s\"\n";
    let bin = start_binary(&dir, cfg, &users, Stdio::piped());
    let mut tunnel = RawConn::connect(bin.addr).await;
    tunnel
        .send(request("CONNECT", &shout.authority(), &[("Proxy-Authorization", &basic(USER, PASSWORD))]))
        .await;
    assert_eq!(tunnel.read_head().await.status, 200);
    let next = dir.write("users.toml.new", others);
    std::fs::rename(next, &bin.users).unwrap();
    bin.signal("HUP");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let out = tokio::task::spawn_blocking(move || bin.stop()).await.unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{:?}\n{log}", out.status);
    assert!(log.contains("outcome=\"user_revoked\""), "the tunnel is closed by the reload:\n{log}");
    assert!(log.contains("configuration reloaded"), "the reload is not logged:\n{log}");
}
