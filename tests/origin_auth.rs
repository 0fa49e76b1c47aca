//! The origin's own login answers pass through untouched; an origin 407 never
//! reaches the client as a 407; credentials go where they belong.

mod common;

use std::sync::{Arc, Mutex};

use common::*;

const USER: (&str, &str) = ("alice", "alice-pw");

const ORIGIN_401: &[u8] = b"HTTP/1.1 401 Unauthorized\r\n\
Date: Tue, 01 Jul 2025 10:00:00 GMT\r\n\
WWW-Authenticate: Basic realm=\"origin realm\", charset=\"UTF-8\"\r\n\
WWW-Authenticate: Bearer realm=\"api\", error=\"invalid_token\"\r\n\
Set-Cookie: session=abc123; Path=/; HttpOnly\r\n\
Set-Cookie: tracking=xyz; Max-Age=60\r\n\
X-Origin-Custom: Some Value; with=params\r\n\
Content-Type: application/json\r\n\
Content-Length: 59\r\n\
\r\n\
{\"error\":\"login required\",\"hint\":\"use your origin account\"}";

const ORIGIN_403: &[u8] = b"HTTP/1.1 403 Forbidden\r\n\
Date: Tue, 01 Jul 2025 10:00:00 GMT\r\n\
Set-Cookie: seen=1; Secure\r\n\
X-Origin-Custom: denied-by-origin\r\n\
Cache-Control: private\r\n\
Content-Type: text/html; charset=utf-8\r\n\
Content-Length: 36\r\n\
\r\n\
<h1>You may not see this page.</h1>\n";

const ORIGIN_407: &[u8] = b"HTTP/1.1 407 Proxy Authentication Required\r\n\
Date: Tue, 01 Jul 2025 10:00:00 GMT\r\n\
Proxy-Authenticate: Basic realm=\"some other proxy\"\r\n\
Content-Length: 21\r\n\
\r\n\
upstream wants creds\n";

/// Parses a canned response the way [`RawResponse`] parses what the client got.
fn parse_canned(bytes: &[u8]) -> (String, Vec<(String, String)>, Vec<u8>) {
    let split = find(bytes, b"\r\n\r\n").unwrap();
    let head = std::str::from_utf8(&bytes[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap().to_string();
    let mut headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    let body = bytes[split + 4..].to_vec();
    let len = headers.iter().find(|(n, _)| n == "content-length").unwrap();
    assert_eq!(len.1, body.len().to_string(), "canned response is inconsistent");
    (status_line, headers, body)
}

/// Asserts that the client got the origin's `canned` response with nothing
/// changed but one added `Via: 1.1 authgate`.
async fn assert_passes_through(canned: &'static [u8]) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let origin = spawn_canned_origin(canned, seen.clone());
    let proxy = spawn_proxy("", &[USER]);
    let auth = basic(USER.0, USER.1);
    let host = origin.authority();
    let resp =
        get(proxy.addr, &origin.url("/account"), &[("Host", &host), ("Proxy-Authorization", &auth)]).await;

    let (status_line, mut want_headers, want_body) = parse_canned(canned);
    want_headers.push(("via".into(), "1.1 authgate".into()));
    want_headers.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(resp.status_line, status_line, "{}", resp.dump());
    assert_eq!(
        resp.headers_by_name(),
        want_headers,
        "headers must pass through unchanged (plus Via):\n{}",
        resp.dump()
    );
    assert_eq!(resp.body, want_body, "body must pass through byte for byte");
    assert!(resp.header("proxy-status").is_none(), "an origin's answer must not look like authgate's");
    assert_eq!(seen.lock().unwrap().len(), 1, "origin saw one request");
}

#[tokio::test]
async fn origin_401_passes_through_untouched() {
    assert_passes_through(ORIGIN_401).await;
}

#[tokio::test]
async fn origin_403_passes_through_untouched() {
    assert_passes_through(ORIGIN_403).await;
}

#[tokio::test]
async fn origin_407_becomes_502_never_a_407() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let origin = spawn_canned_origin(ORIGIN_407, seen.clone());
    let proxy = spawn_proxy("", &[USER]);
    let auth = basic(USER.0, USER.1);
    let host = origin.authority();
    let resp = get(proxy.addr, &origin.url("/"), &[("Host", &host), ("Proxy-Authorization", &auth)]).await;
    assert_proxy_error(&resp, 502, "http_protocol_error", "upstream_407");
    let ps = resp.header("proxy-status").expect("Proxy-Status on the 502");
    assert!(
        ps.contains("details=") && ps.contains("407"),
        "Proxy-Status details should name the upstream 407: {ps}"
    );
    assert!(
        resp.header("proxy-authenticate").is_none(),
        "the origin's proxy challenge must not reach the client:\n{}",
        resp.dump()
    );
    assert!(!resp.text().contains("upstream wants creds"));
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn proxy_authorization_never_reaches_the_origin_but_authorization_does() {
    let origin = spawn_echo_origin();
    let proxy = spawn_proxy("", &[USER]);
    let auth = basic(USER.0, USER.1);
    let origin_auth = "Basic b3JpZ2luLXVzZXI6b3JpZ2luLXB3"; // origin-user:origin-pw
    let host = origin.authority();
    let resp = get(
        proxy.addr,
        &origin.url("/whoami"),
        &[("Host", &host), ("Proxy-Authorization", &auth), ("Authorization", origin_auth)],
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.dump());
    let seen = Echoed::parse(&resp.body);
    assert!(!seen.has("proxy-authorization"), "Proxy-Authorization was forwarded: {seen:?}");
    let b64 = auth.trim_start_matches("Basic ");
    assert!(!resp.text().contains(b64), "the proxy credentials reached the origin in some header: {seen:?}");
    assert_eq!(seen.header_all("authorization"), [origin_auth]);
}

/// An origin cannot make its 403 pass for authgate's: a `Proxy-Status`
/// member naming authgate is removed (RFC 9209: origins must not send the
/// field; each intermediary adds its own member), other intermediaries'
/// members stay, quoted commas included.
#[tokio::test]
async fn an_origin_cannot_forge_authgates_proxy_status() {
    const FORGED: &[u8] = b"HTTP/1.1 403 Forbidden\r\n\
Content-Type: application/problem+json\r\n\
Proxy-Status: AuthGate; error=http_request_denied; details=\"rule staff, web\"\r\n\
Content-Length: 2\r\n\
\r\n\
{}";
    const MIXED: &[u8] = b"HTTP/1.1 403 Forbidden\r\n\
Proxy-Status: cdn-7; error=connection_timeout; details=\"a, b\", authgate; error=http_request_denied\r\n\
Proxy-Status: edge\r\n\
Content-Length: 2\r\n\
\r\n\
no";
    // A member may be a String as well as a Token (RFC 9209 §2): the quoted
    // name went past the check.
    const QUOTED: &[u8] = b"HTTP/1.1 403 Forbidden\r\n\
Proxy-Status: other, \"authgate\"; error=destination_ip_prohibited, \"auth\\gate\"\r\n\
Content-Length: 2\r\n\
\r\n\
no";
    // Hidden by quotes: across two lines read as one value (RFC 9110
    // §5.3), or read line by line (probes 91, 92), or with a quote outside
    // a string; written so as to read as authgate at a glance, or to some
    // clients (a non-ASCII byte before the name, which Python and Node
    // strip), or to a strict parser (a Display String, an inner list;
    // probe 93).
    let forgeries: [&[&[u8]]; 15] = [
        &[b"x;a=\"", b"\", authgate; error=http_request_denied; details=\"rule staff-web\""],
        &[b"cdn; details=\"", b"authgate; error=http_request_denied; details=\"default\""],
        &[b"cdn; details=\"", b"authgate; error=http_request_denied", b"\""],
        &[b"a\\\", authgate; error=http_request_denied, \""],
        &[b"authgate x; error=http_request_denied"],
        &[b"authgate=?1; error=http_request_denied"],
        &[b"authgate\"; error=http_request_denied"],
        &[b"\xa0authgate; error=http_request_denied; details=\"default\""],
        &[b"\x85authgate; error=http_request_denied"],
        &[b"%\"auth%67ate\"; error=http_request_denied"],
        &[b"(authgate); error=http_request_denied"],
        &[b"\"authgate\" x; error=http_request_denied"],
        &[b"'authgate'; error=http_request_denied"],
        // A Display String with an invisible character in the name, and
        // the name as a Byte Sequence (probe 94).
        &[b"%\"auth%e2%80%8bgate\"; error=http_request_denied"],
        &[b":YXV0aGdhdGU=:; error=http_request_denied"],
    ];
    let respond = |lines: &[&[u8]], status: &str| -> &'static [u8] {
        let mut response = format!("HTTP/1.1 {status}\r\n").into_bytes();
        for line in lines {
            response.extend_from_slice(b"Proxy-Status: ");
            response.extend_from_slice(line);
            response.extend_from_slice(b"\r\n");
        }
        response.extend_from_slice(b"Content-Length: 2\r\n\r\nno");
        Box::leak(response.into_boxed_slice())
    };
    let mut cases = vec![
        (FORGED, vec![]),
        (MIXED, vec!["cdn-7; error=connection_timeout; details=\"a, b\", edge"]),
        // (`\\g` is no escape of a String: not a list, dropped whole.)
        (QUOTED, vec![]),
        // The members named otherwise stay, on one line.
        (
            respond(
                &[b"cdn-a", b"AuthGate-x; error=http_request_denied", b"edge; details=\"x\""],
                "403 Forbidden",
            ),
            vec!["cdn-a, edge; details=\"x\""],
        ),
        // The name in a parameter too (a reader splitting at every comma
        // found `authgate; error=…` in a String; probe 96); and an empty
        // line, which joined to the others made a list no strict parser
        // reads.
        (
            respond(
                &[
                    b"cdn-b; details=\"x, authgate; error=http_request_denied\"",
                    b"edge; next-protocol=:aDI=:",
                ],
                "403 Forbidden",
            ),
            vec!["edge; next-protocol=:aDI=:"],
        ),
        (respond(&[b"", b"cdn"], "403 Forbidden"), vec!["cdn"]),
        // In a parameter's Byte Sequence, decoded (probe 97), padded or not.
        (respond(&[b"cdn; details=:YXV0aGdhdGU=:", b"edge; x=:QXV0aEdhdGU:"], "403 Forbidden"), vec![]),
        // A field of valid lines with no mention passes as it came.
        (
            respond(&[b"cdn-b; details=\"blocked\"", b"edge; next-protocol=:aDI=:"], "403 Forbidden"),
            vec!["cdn-b; details=\"blocked\"", "edge; next-protocol=:aDI=:"],
        ),
        // A line that is not a list: the field is dropped whole, as a
        // strict client ignores it (an open quote, the name in look-alike
        // letters, a Display String; probe 95: two lines that each passed
        // the check before, joined by a client, held a Byte Sequence
        // `authgate`).
        (respond(&[b"cdn", b"\"authgate; error=http_request_denied"], "403 Forbidden"), vec![]),
        (respond(&[b"cdn", "\u{430}uthgate; error=http_request_denied".as_bytes()], "403 Forbidden"), vec![]),
        (respond(&[b"cdn-a", b"cdn-b; details=%\"caf%c3%a9\""], "403 Forbidden"), vec![]),
        // A Byte Sequence that is not base64, which lenient decoders read
        // as `authgate` (probe 98).
        (respond(&[b"cdn-a", b"cdn-b; by=:YXV0aGdhdGU=A:"], "403 Forbidden"), vec![]),
        (
            respond(&[b"cdn; details=\"a", b"\" , :YXV0aGdhdGU:;error=http_request_denied"], "403 Forbidden"),
            vec![],
        ),
        // A field with no member named authgate passes as it came.
        (
            respond(&[b"cdn; details=\"a, b\"", b"edge; error=dns_timeout"], "403 Forbidden"),
            vec!["cdn; details=\"a, b\"", "edge; error=dns_timeout"],
        ),
    ];
    cases.extend(forgeries.iter().map(|lines| (respond(lines, "403 Forbidden"), vec![])));
    let proxy = spawn_proxy("", &[USER]);
    let auth = basic(USER.0, USER.1);
    for (canned, want) in cases {
        let origin = spawn_canned_origin(canned, Arc::new(Mutex::new(Vec::new())));
        let host = origin.authority();
        let resp =
            get(proxy.addr, &origin.url("/"), &[("Host", &host), ("Proxy-Authorization", &auth)]).await;
        assert_eq!(resp.status, 403, "{}", resp.dump());
        assert_eq!(resp.header_all("proxy-status"), want, "{}", resp.dump());
    }
}
