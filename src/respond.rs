//! Every response authgate makes itself: status, `Proxy-Status`, body.
//!
//! One `match` ([`describe`]) maps a [`ProxyError`] to its status, its RFC 9209
//! `Proxy-Status` error type and a stable machine-readable `code`. The body is an
//! RFC 9457 `application/problem+json` document, or a small HTML page for a
//! client whose `Accept` prefers `text/html` (a browser). Responses that come
//! from an origin never pass through here.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use serde::Serialize;

use crate::body::ProxyBody;
use crate::error::{BadAnswer, ProxyError};

/// Where each error's `type` link points: the README's error catalogue.
pub const DOCS_BASE: &str = "https://github.com/authgate/authgate/blob/main/README.md#error-";

/// The name authgate uses in `Proxy-Status` and `Via`.
pub const PROXY_NAME: &str = "authgate";

/// Everything about an error that a client sees, decided in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Description {
    /// HTTP status of the response.
    pub status: StatusCode,
    /// RFC 9209 error type for `Proxy-Status`.
    pub proxy_status: &'static str,
    /// Stable `code` of the problem body; also the README anchor.
    pub code: &'static str,
    /// Short human title.
    pub title: &'static str,
}

/// Maps an error to its status, `Proxy-Status` type, `code` and title.
pub fn describe(err: &ProxyError) -> Description {
    use ProxyError::*;
    let (status, proxy_status, code, title) = match err {
        OriginForm => {
            (StatusCode::BAD_REQUEST, "http_request_error", "not_a_proxy_request", "Not a proxy request")
        }
        UnsupportedScheme { .. } => {
            (StatusCode::BAD_REQUEST, "http_request_error", "unsupported_scheme", "Unsupported scheme")
        }
        BadTarget { .. } => {
            (StatusCode::BAD_REQUEST, "http_request_error", "bad_target", "Bad request target")
        }
        MalformedRequest { .. } => {
            (StatusCode::BAD_REQUEST, "http_request_error", "malformed_request", "Malformed request")
        }
        ConnectWithBody => {
            (StatusCode::BAD_REQUEST, "http_request_error", "connect_with_body", "CONNECT with a body")
        }
        UriTooLong => {
            (StatusCode::URI_TOO_LONG, "http_request_error", "uri_too_long", "Request target too long")
        }
        HeadTimeout => {
            (StatusCode::REQUEST_TIMEOUT, "http_request_error", "request_timeout", "Request head timed out")
        }
        BodyTimeout => (
            StatusCode::REQUEST_TIMEOUT,
            "http_request_error",
            "request_body_timeout",
            "Request body timed out",
        ),
        BadBody { .. } => {
            (StatusCode::BAD_REQUEST, "http_request_error", "bad_request_body", "Bad request body")
        }
        TlsRequired => {
            (StatusCode::BAD_REQUEST, "http_request_error", "tls_required", "This port speaks TLS")
        }
        HeadTooLarge => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "http_request_error",
            "request_head_too_large",
            "Request head too large",
        ),
        ProxyAuthRequired => (
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            "http_request_denied",
            "proxy_auth_required",
            "Proxy authentication required",
        ),
        Throttled { .. } => {
            (StatusCode::TOO_MANY_REQUESTS, "http_request_denied", "auth_throttled", "Too many failed logins")
        }
        DeniedByRule { .. } => {
            (StatusCode::FORBIDDEN, "http_request_denied", "denied_by_rule", "Access denied by proxy policy")
        }
        DestinationIpProhibited { .. } => (
            StatusCode::FORBIDDEN,
            "destination_ip_prohibited",
            "destination_ip_prohibited",
            "Destination address prohibited",
        ),
        LoopDetected => {
            (StatusCode::LOOP_DETECTED, "proxy_loop_detected", "proxy_loop", "Proxy loop detected")
        }
        DnsError => (StatusCode::BAD_GATEWAY, "dns_error", "dns_error", "Host name does not resolve"),
        DnsTimeout => (StatusCode::GATEWAY_TIMEOUT, "dns_timeout", "dns_timeout", "DNS lookup timed out"),
        ConnectionRefused => {
            (StatusCode::BAD_GATEWAY, "connection_refused", "connection_refused", "Connection refused")
        }
        ConnectionTimeout => {
            (StatusCode::GATEWAY_TIMEOUT, "connection_timeout", "connection_timeout", "Connection timed out")
        }
        DestinationUnavailable => (
            StatusCode::BAD_GATEWAY,
            "destination_unavailable",
            "destination_unavailable",
            "Destination unavailable",
        ),
        UpstreamReadTimeout => (
            StatusCode::GATEWAY_TIMEOUT,
            "connection_read_timeout",
            "upstream_timeout",
            "Origin did not answer in time",
        ),
        UpstreamWriteTimeout => (
            StatusCode::GATEWAY_TIMEOUT,
            "connection_write_timeout",
            "upstream_write_timeout",
            "Origin stopped taking the request",
        ),
        UpstreamProtocol { bad, .. } => (
            StatusCode::BAD_GATEWAY,
            bad.proxy_status(),
            "upstream_protocol_error",
            "Bad answer from the origin",
        ),
        Upstream407 => (
            StatusCode::BAD_GATEWAY,
            "http_protocol_error",
            "upstream_407",
            "Origin asked for proxy credentials",
        ),
        UpstreamTls { .. } => (
            StatusCode::BAD_GATEWAY,
            "tls_certificate_error",
            "upstream_tls_error",
            "Origin certificate not trusted",
        ),
        AuthOverloaded { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "proxy_internal_error",
            "auth_overloaded",
            "Authentication busy",
        ),
        TooManyConnections => (
            StatusCode::SERVICE_UNAVAILABLE,
            "proxy_internal_error",
            "too_many_connections",
            "Too many connections",
        ),
        Internal => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "proxy_internal_error",
            "internal_error",
            "Internal proxy error",
        ),
    };
    Description { status, proxy_status, code, title }
}

/// The human `detail` of an error: says what to do, never echoes secrets.
fn detail(err: &ProxyError) -> String {
    use ProxyError::*;
    match err {
        OriginForm => "This is a forward proxy. Send absolute-form requests (GET http://host/path) or CONNECT host:port; set HTTP_PROXY/HTTPS_PROXY to this address.".into(),
        UnsupportedScheme { scheme } if scheme.eq_ignore_ascii_case("https") => "https:// requests are forwarded on authgate's TLS listener only; here use CONNECT (HTTPS_PROXY).".into(),
        UnsupportedScheme { scheme } => format!("authgate forwards http:// and https:// requests only (https through CONNECT, HTTPS_PROXY), not {scheme}://."),
        BadTarget { detail } => format!("The request target is not usable: {detail}."),
        HeadTimeout => "The request head did not arrive in time; the connection is closed.".into(),
        BodyTimeout => "The request body stopped arriving before its end; the connection is closed.".into(),
        BadBody { .. } => "The request body broke off before its end, or its chunked framing is not valid HTTP/1.1; the connection is closed.".into(),
        MalformedRequest { why: None } => "The request is not valid HTTP/1.1 (request line or header fields could not be parsed); the connection is closed.".into(),
        MalformedRequest { why: Some(why) } => format!("{why}; the connection is closed."),
        UriTooLong => "The request target is longer than this proxy accepts.".into(),
        TlsRequired => "This port is an HTTPS proxy: connections to it start with TLS. Give the proxy as https://HOST:PORT (curl: --proxy https://HOST:PORT), or use the proxy's plain-HTTP port; the connection is closed.".into(),
        ConnectWithBody => "A CONNECT request has no content, but this one declares a body (Content-Length or Transfer-Encoding); where the tunnel would begin is ambiguous, so the connection is closed.".into(),
        HeadTooLarge => "The request head (request line and header fields) is larger, or has more header fields (100), than this proxy accepts.".into(),
        ProxyAuthRequired => "This proxy needs your proxy user name and password: sign in when your browser asks; a command-line tool takes them in its proxy address (USER:PASSWORD@ before the host) and sends them in Proxy-Authorization (Basic).".into(),
        Throttled { retry_after } => format!("Too many failed logins from your address; retry in {} s.", retry_secs(*retry_after)),
        DeniedByRule { rule } => format!("Your account may not reach this destination ({rule}). Ask your proxy administrator for access; retrying will not help."),
        DestinationIpProhibited { .. } => "The destination resolves to an address that this proxy never connects to (internal, loopback, link-local or reserved).".into(),
        LoopDetected => "The request's Via already names authgate: it came back to this proxy, or a proxy before it uses the same name; check the proxy settings of the proxies before and after this one.".into(),
        DnsError => "The destination host name could not be resolved.".into(),
        DnsTimeout => "The DNS lookup for the destination did not finish in time.".into(),
        ConnectionRefused => "The destination refused the connection.".into(),
        ConnectionTimeout => "Connecting to the destination timed out.".into(),
        DestinationUnavailable => "The destination could not be reached.".into(),
        UpstreamReadTimeout => "The origin accepted the request but did not answer in time.".into(),
        UpstreamWriteTimeout => "The origin stopped reading the request body before its end and did not answer.".into(),
        UpstreamProtocol { bad: BadAnswer::Terminated, detail } => format!("The origin's connection ended before a byte of an answer came ({detail}); retry, or report it to the origin's owner."),
        UpstreamProtocol { bad: BadAnswer::Tls | BadAnswer::TlsAlert(_), detail } => format!("The TLS connection to the origin failed ({detail})."),
        UpstreamProtocol { detail, .. } => format!("The origin sent an invalid or incomplete response ({detail})."),
        Upstream407 => "The origin answered 407 Proxy Authentication Required; authgate does not pass that on, because it would be mistaken for authgate's own challenge.".into(),
        UpstreamTls { reason } => format!("The origin's TLS certificate could not be verified: {reason}."),
        AuthOverloaded { retry_after } => format!("Too many logins are being checked right now; retry in {} s.", retry_secs(*retry_after)),
        TooManyConnections => {
            "The proxy cannot take more connections now (a connection limit, or its open-files limit); retry shortly."
                .into()
        }
        Internal => "authgate failed internally; the request_id identifies it in the proxy's log.".into(),
    }
}

/// What the response needs to know about the request it answers.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    /// The id shared by this response and its log line.
    pub request_id: &'a str,
    /// The Basic realm for the 407 challenge.
    pub realm: &'a str,
    /// Whether the client prefers HTML (a browser).
    pub html: bool,
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    code: &'a str,
    timestamp: String,
    request_id: &'a str,
}

/// Quotes `s` as an RFC 8941 sf-string for `Proxy-Status` details: printable
/// ASCII only, `"` and `\` escaped.
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars().take(200) {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

/// The `details` parameter of `Proxy-Status`, when one helps.
fn proxy_status_details(err: &ProxyError) -> Option<String> {
    match err {
        ProxyError::DeniedByRule { rule } => Some(rule.clone()),
        ProxyError::DestinationIpProhibited { addr } => Some(format!("address {addr}")),
        ProxyError::Upstream407 | ProxyError::UpstreamProtocol { .. } | ProxyError::UpstreamTls { .. } => {
            log_detail(err).map(Into::into)
        }
        ProxyError::ProxyAuthRequired => Some("proxy authentication required".into()),
        ProxyError::Throttled { .. } => Some("too many failed logins".into()),
        _ => None,
    }
}

/// What the access line says of an error with the origin, beside its
/// `outcome`: the `Proxy-Status` details, where they are fixed words.
pub fn log_detail(err: &ProxyError) -> Option<&'static str> {
    match err {
        ProxyError::UpstreamProtocol { detail, .. } => Some(detail),
        ProxyError::UpstreamTls { reason } => Some(reason),
        ProxyError::Upstream407 => Some("upstream answered 407"),
        _ => None,
    }
}

/// Builds the `Proxy-Status` value for an error.
pub fn proxy_status_value(err: &ProxyError) -> String {
    let d = describe(err);
    let mut value = format!("{PROXY_NAME}; error={}", d.proxy_status);
    // RFC 9209 §2.3.15: the alert's number from the TLS Alerts registry.
    if let ProxyError::UpstreamProtocol { bad: BadAnswer::TlsAlert(id), .. } = err {
        let _ = write!(value, "; alert-id={id}");
    }
    if let Some(details) = proxy_status_details(err) {
        let _ = write!(value, "; details={}", sf_string(&details));
    }
    value
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Builds the complete response for `err`.
pub fn error_response(err: &ProxyError, ctx: &Context<'_>) -> Response<ProxyBody> {
    let d = describe(err);
    let detail = detail(err);
    let problem = Problem {
        kind: format!("{DOCS_BASE}{}", d.code.replace('_', "-")),
        title: d.title,
        status: d.status.as_u16(),
        detail: &detail,
        code: d.code,
        timestamp: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        request_id: ctx.request_id,
    };
    let (content_type, body) = if ctx.html {
        let page = format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{status} {title}</title></head>\n<body><h1>{status} {title}</h1>\n<p>{detail}</p>\n<p>code: <a href=\"{link}\">{code}</a><br>request_id: {rid}<br>time: {ts}</p>\n<p><small>authgate</small></p></body></html>\n",
            status = problem.status,
            title = html_escape(problem.title),
            detail = html_escape(problem.detail),
            link = html_escape(&problem.kind),
            code = problem.code,
            rid = html_escape(problem.request_id),
            ts = problem.timestamp,
        );
        ("text/html; charset=utf-8", page.into_bytes())
    } else {
        // Serialising a struct of strings and a u16 cannot fail.
        let json = serde_json::to_vec(&problem).unwrap_or_default();
        ("application/problem+json", json)
    };

    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = d.status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    insert_str(h, "proxy-status", &proxy_status_value(err));
    insert_str(h, "x-request-id", ctx.request_id);
    match err {
        ProxyError::ProxyAuthRequired => {
            let challenge = format!("Basic realm={}, charset=\"UTF-8\"", sf_string(ctx.realm));
            insert_str(h, header::PROXY_AUTHENTICATE.as_str(), &challenge);
        }
        ProxyError::Throttled { retry_after } | ProxyError::AuthOverloaded { retry_after } => {
            insert_str(h, header::RETRY_AFTER.as_str(), &retry_secs(*retry_after).to_string());
        }
        ProxyError::TooManyConnections => {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        _ => {}
    }
    resp
}

fn insert_str(h: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

/// Whole seconds until a retry can succeed, rounded up (RFC 9110 §10.2.3:
/// `Retry-After` is a whole number of seconds): rounded down, a client that
/// waited exactly that long was refused once more.
fn retry_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// The `Retry-After` hint for overload answers.
pub const OVERLOAD_RETRY: Duration = Duration::from_secs(1);

/// Whether the client's `Accept` prefers `text/html` over JSON strictly:
/// with a higher q-value than JSON, `application/*` and `*/*` (a tie,
/// `text/html, */*`, means JSON).
///
/// Only an explicit `text/html` counts; `*/*` alone means JSON.
pub fn prefers_html(accept: Option<&HeaderValue>) -> bool {
    let Some(accept) = accept.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mut q_html = 0.0f32;
    let mut q_json = 0.0f32;
    for item in accept.split(',').take(32) {
        let mut parts = item.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts.find_map(|p| {
            let (name, value) = p.split_once('=')?;
            name.trim().eq_ignore_ascii_case("q").then(|| qvalue(value.trim()))
        });
        // An item whose weight is not a qvalue is not read: `q=abc` and
        // `q=1.5` counted as 1, and got HTML (probe 202).
        let Some(q) = q.unwrap_or(Some(1.0)) else { continue };
        match media.as_str() {
            "text/html" | "application/xhtml+xml" => q_html = q_html.max(q),
            "application/problem+json" | "application/json" | "application/*" | "*/*" => {
                q_json = q_json.max(q)
            }
            _ => {}
        }
    }
    q_html > q_json
}

/// A weight as RFC 9110 §12.4.2 writes it: `0` to `1`, with at most three
/// decimals.
fn qvalue(text: &str) -> Option<f32> {
    let (whole, decimals) = text.split_once('.').unwrap_or((text, ""));
    let digits = decimals.len() <= 3 && decimals.bytes().all(|b| b.is_ascii_digit());
    match whole {
        "0" if digits => text.parse().ok(),
        "1" if digits && decimals.bytes().all(|b| b == b'0') => Some(1.0),
        _ => None,
    }
}

/// The same response as [`error_response`], serialised as HTTP/1.1 bytes
/// with `Connection: close`: for answers written straight to a socket
/// (408, 431, 503 at accept) where no HTTP machinery runs. To a `HEAD`
/// request (`head`) without its body, which `Content-Length` still gives
/// (RFC 9110 §9.3.2).
pub fn raw_error_response(err: &ProxyError, request_id: &str, head: bool) -> Vec<u8> {
    let ctx = Context { request_id, realm: PROXY_NAME, html: false };
    let resp = error_response(err, &ctx);
    let status = resp.status();
    let body = resp.body().full_bytes().unwrap_or_default();
    let mut out =
        format!("HTTP/1.1 {} {}\r\n", status.as_str(), status.canonical_reason().unwrap_or("Error"))
            .into_bytes();
    for (name, value) in resp.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // RFC 9110 §6.6.1: a server with a clock sends `Date` (hyper adds it to
    // every other answer).
    let date = httpdate::fmt_http_date(SystemTime::now());
    out.extend_from_slice(
        format!("date: {date}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len()).as_bytes(),
    );
    if !head {
        out.extend_from_slice(&body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsers_get_html_and_tools_get_json() {
        let browser =
            HeaderValue::from_static("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8");
        assert!(prefers_html(Some(&browser)));
        assert!(!prefers_html(Some(&HeaderValue::from_static("*/*"))));
        assert!(!prefers_html(None));
        assert!(!prefers_html(Some(&HeaderValue::from_static("application/json, text/html;q=0.5"))));
        // A tie is JSON, as the README says.
        assert!(!prefers_html(Some(&HeaderValue::from_static("text/html, */*"))));
        assert!(prefers_html(Some(&HeaderValue::from_static("text/html, */*;q=0.99"))));
        // A weight that is not a qvalue: the item is not read (probe 202).
        for accept in
            ["text/html;q=abc", "text/html;q=1.5", "text/html;q=0.1234", "text/html;q=-1", "text/html;q="]
        {
            assert!(!prefers_html(Some(&HeaderValue::from_static(accept))), "{accept}");
        }
        assert!(prefers_html(Some(&HeaderValue::from_static("text/html;Q=1.000, */*;q=0.5"))));
        assert!(prefers_html(Some(&HeaderValue::from_static("text/html;q=0.6, */*;q=0.5, x/y;q=abc"))));
    }

    #[test]
    fn sf_string_escapes_and_strips() {
        assert_eq!(sf_string("rule \"a\\b\""), "\"rule \\\"a\\\\b\\\"\"");
        assert_eq!(sf_string("ü"), "\"?\"");
    }

    #[test]
    fn an_unsupported_scheme_says_what_to_do_for_it() {
        let https = detail(&ProxyError::UnsupportedScheme { scheme: "https".into() });
        assert!(https.contains("TLS listener") && https.contains("CONNECT"), "{https}");
        let ftp = detail(&ProxyError::UnsupportedScheme { scheme: "ftp".into() });
        assert!(ftp.contains("not ftp://") && !ftp.contains("for https"), "{ftp}");
    }

    #[test]
    fn every_error_has_a_distinct_code_documented_in_the_readme() {
        use ProxyError::*;
        let all = [
            OriginForm,
            UnsupportedScheme { scheme: "ftp".into() },
            BadTarget { detail: "x" },
            HeadTimeout,
            BodyTimeout,
            BadBody { reset: false },
            TlsRequired,
            HeadTooLarge,
            MalformedRequest { why: None },
            ConnectWithBody,
            UriTooLong,
            ProxyAuthRequired,
            Throttled { retry_after: Duration::from_secs(1) },
            DeniedByRule { rule: "default".into() },
            DestinationIpProhibited { addr: [127, 0, 0, 1].into() },
            LoopDetected,
            DnsError,
            DnsTimeout,
            ConnectionRefused,
            ConnectionTimeout,
            DestinationUnavailable,
            UpstreamReadTimeout,
            UpstreamWriteTimeout,
            UpstreamProtocol { bad: crate::error::BadAnswer::Protocol, detail: "x" },
            Upstream407,
            UpstreamTls { reason: "x" },
            AuthOverloaded { retry_after: Duration::from_secs(1) },
            TooManyConnections,
            Internal,
        ];
        let mut codes: Vec<_> = all.iter().map(|e| describe(e).code).collect();
        // Each `type` link lands on the README's entry for its code.
        let readme = include_str!("../README.md");
        for code in &codes {
            let anchor = format!("<a id=\"error-{}\"></a>", code.replace('_', "-"));
            assert!(readme.contains(&anchor), "README has no {anchor}");
            assert!(readme.contains(&format!("### `{code}`")), "README has no section for {code}");
        }
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
    }
}
