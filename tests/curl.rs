//! The real `curl` binary against authgate: credentials in the proxy URL,
//! CONNECT tunnels (`-p`), `--proxy-anyauth`, and the proxy from the
//! environment.

mod common;

use common::*;

const USER: (&str, &str) = ("alice", "p@ss: wörd");

#[tokio::test]
async fn curl_with_credentials_in_the_proxy_url() {
    let origin = spawn_echo_origin();
    let proxy = spawn_proxy("", &[USER]);
    let out = curl(&["-x", &proxy.url_with(USER.0, USER.1), &origin.url("/via-curl?q=1")], &[]).await;
    out.assert_success();
    let seen = Echoed::parse(&out.stdout);
    assert_eq!(seen.request_line, "GET /via-curl?q=1 HTTP/1.1");
    assert_eq!(seen.header_all("via"), ["1.1 authgate"]);
    assert!(!seen.has("proxy-authorization"), "{seen:?}");
}

#[tokio::test]
async fn curl_without_credentials_sees_407_with_the_challenge() {
    let origin = spawn_echo_origin();
    let proxy = spawn_proxy("", &[USER]);
    let out = curl(&["-D", "-", "-o", "/dev/null", "-x", &proxy.url(), &origin.url("/")], &[]).await;
    out.assert_success();
    let head = out.stdout_text();
    assert!(head.starts_with("HTTP/1.1 407 Proxy Authentication Required"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains(&format!(
            "proxy-authenticate: basic realm=\"{}\", charset=\"utf-8\"",
            REALM.to_ascii_lowercase()
        )),
        "{head}"
    );
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn curl_connect_tunnel_with_p() {
    let origin = spawn_echo_origin();
    let proxy = spawn_proxy("", &[USER]);
    let out =
        curl(&["-v", "-p", "-x", &proxy.url_with(USER.0, USER.1), &origin.url("/tunnelled")], &[]).await;
    out.assert_success();
    assert!(
        out.stderr.contains(&format!("CONNECT {} HTTP/1.1", origin.authority())),
        "curl should have used CONNECT:\n{}",
        out.stderr
    );
    let seen = Echoed::parse(&out.stdout);
    assert_eq!(seen.request_line, "GET /tunnelled HTTP/1.1");
    assert!(!seen.has("via"), "inside a tunnel authgate does not touch the request: {seen:?}");
    assert!(!seen.has("proxy-authorization"), "{seen:?}");
}

/// `curl --proxy-anyauth` (credentials only after a 407) for `path` of an
/// echo origin, through a tunnel with `tunnel`: the request line the origin
/// saw, `http_code num_connects`, and curl's stderr, after checking that
/// the 407 came first.
async fn anyauth(path: &str, tunnel: bool) -> (String, String, String) {
    let origin = spawn_echo_origin();
    let proxy = spawn_proxy("", &[USER]);
    let userpass = format!("{}:{}", USER.0, USER.1);
    let (proxy_url, url) = (proxy.url(), origin.url(path));
    let mut args = vec!["-v", "--proxy-anyauth", "-U", &userpass, "-x", &proxy_url];
    if tunnel {
        args.push("-p");
    }
    args.extend(["-w", "\n%{http_code} %{num_connects}", &url]);
    let out = curl(&args, &[]).await;
    out.assert_success();
    let stdout = out.stdout_text();
    let (body, summary) = stdout.rsplit_once('\n').unwrap();
    assert!(out.stderr.contains("407"), "curl should first have been challenged:\n{}", out.stderr);
    (Echoed::parse(body.as_bytes()).request_line, summary.to_owned(), out.stderr)
}

#[tokio::test]
async fn curl_proxy_anyauth_retries_on_the_same_connection() {
    let (request_line, summary, stderr) = anyauth("/anyauth", false).await;
    assert_eq!(
        summary, "200 1",
        "expected 200 over a single connection (the 407 must leave it usable):\n{stderr}"
    );
    assert_eq!(request_line, "GET /anyauth HTTP/1.1");
}

/// A CONNECT answered 407 closes its connection (bytes sent ahead for the
/// tunnel must never be read as a request): curl retries the CONNECT with
/// the credentials on a new one.
#[tokio::test]
async fn curl_proxy_anyauth_retries_a_connect_on_a_new_connection() {
    let (request_line, summary, stderr) = anyauth("/tunnelled", true).await;
    assert_eq!(summary, "200 2", "the retry on a second connection:\n{stderr}");
    assert_eq!(request_line, "GET /tunnelled HTTP/1.1");
}

#[tokio::test]
async fn curl_uses_http_proxy_from_the_environment() {
    let origin = spawn_echo_origin();
    let proxy = spawn_proxy("", &[USER]);
    let proxy_url = proxy.url_with(USER.0, USER.1);
    // curl reads only the lower-case `http_proxy` (httpoxy); set both as a
    // user's shell would. NO_PROXY is removed by the runner, so loopback is
    // not exempted.
    let out =
        curl(&[&origin.url("/from-env")], &[("http_proxy", &proxy_url), ("HTTP_PROXY", &proxy_url)]).await;
    out.assert_success();
    let seen = Echoed::parse(&out.stdout);
    assert_eq!(seen.request_line, "GET /from-env HTTP/1.1");
    assert_eq!(seen.header_all("via"), ["1.1 authgate"], "the request should have gone through authgate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_upload_with_expect_100_continue() {
    let origin = spawn_checksum_origin();
    let proxy = spawn_proxy("", &[USER]);
    let dir = TempDir::new();
    let len = 3 * 1024 * 1024;
    let data = pattern(0, len);
    let file = dir.write("upload.bin", &data);
    let mut want = Fnv::default();
    want.update(&data);
    let upload = format!("@{}", file.display());
    let out = curl(
        &[
            "-v",
            "-x",
            &proxy.url_with(USER.0, USER.1),
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            &upload,
            &origin.url("/upload"),
        ],
        &[],
    )
    .await;
    out.assert_success();
    assert!(
        out.stderr.contains("HTTP/1.1 100 Continue"),
        "the proxy should have answered 100 Continue:\n{}",
        out.stderr
    );
    assert_eq!(out.stdout_text(), format!("{len} {:016x}", want.0));
}
