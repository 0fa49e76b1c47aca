//! `authgate explain [--method M] --user NAME TARGET`.

use http::Method;

use crate::config::Snapshot;
use crate::policy::explain::{Report, explain};
use crate::policy::rules::is_method_char;
use crate::proxy::dns::Resolver;
use crate::target::{Host, Target, authority_port, parse_authority, parse_host, split_port};

/// Parses TARGET (a URL or host:port) and the method it implies: `GET` for
/// `http://`, `CONNECT` for `https://` and host:port.
///
/// # Errors
/// A message saying what is wrong with TARGET.
pub fn parse_target(raw: &str) -> Result<(Target, Method), String> {
    parse_target_for(raw, None)
}

/// The method a client uses for TARGET: `CONNECT` for `https://` and
/// host:port, `GET` for any other URL.
fn implied_method(raw: &str) -> Method {
    match raw.split_once("://") {
        Some((scheme, _)) if !scheme.eq_ignore_ascii_case("https") => Method::GET,
        _ => Method::CONNECT,
    }
}

/// [`parse_target`] for a request with `method` (`None`: the one TARGET
/// implies), read as a client sends it: a fragment is never sent, and for a
/// tunnel (CONNECT to an `https://` URL) only the host and port are, so a
/// path the proxy could not read does not matter (one over 65,534 bytes
/// was explained as refused; probe 184).
fn parse_target_for(raw: &str, given: Option<&Method>) -> Result<(Target, Method), String> {
    parse_target_on(raw, given, true)
}

/// [`parse_target_for`] on a config that forwards absolute-form `https://`
/// (has a TLS listener) or not: where it does not, such a request is
/// refused for its scheme before its host and port are read, as the proxy
/// does (`GET https://u:p@a.test/` was told `bad_target`; probe 344).
fn parse_target_on(
    raw: &str,
    given: Option<&Method>,
    forwards_https: bool,
) -> Result<(Target, Method), String> {
    if let Some((scheme, rest)) = raw.split_once("://") {
        // Another scheme (`ftp://`) is refused by the proxy once hyper has
        // read the URL, unless it stands for a tunnel (`--method CONNECT`,
        // as `curl -p` opens for it; it was refused here; probe 186). Its
        // port has to be given: authgate knows no other scheme's default.
        let (default_port, method, known) = match scheme.to_ascii_lowercase().as_str() {
            "http" => (80, Method::GET, true),
            "https" => (443, Method::CONNECT, true),
            _ => (0, Method::GET, false),
        };
        let tunnel = *given.unwrap_or(&method) == Method::CONNECT;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        // A tunnel's CONNECT carries no `user:password@`: the client uses
        // it inside the tunnel (it was refused here; probe 188).
        let authority = if tunnel { without_userinfo(authority) } else { authority };
        // Host, then port, as the proxy reads them (an empty port is the
        // default): read port first, `http://[[::1]]:80/` was "bad port"
        // here and `[[::1]]:80` "bad IPv6 address" (probe 134).
        let parsed = || {
            let (host, _) = split_port(authority);
            let host = parse_host(&ascii_host(host)?).map_err(|e| e.0.to_string())?;
            let port = authority_port(authority, default_port).map_err(|e| e.0.to_string())?;
            Ok::<_, String>(Target { host, port })
        };
        // hyper reads the target before authgate does: what it cannot read
        // is a 400 malformed_request on the wire, whatever is in it
        // (`http://a.test:80\@b.test/` was explained as bad_target; probe
        // 138). A host typed in Unicode is sent in its ASCII form.
        let path = if tunnel { "".into() } else { sent_path(&rest[authority.len()..]) };
        let as_sent = if authority.is_ascii() { authority } else { "host" };
        let sent = format!("{scheme}://{as_sent}{path}");
        if http::Uri::try_from(sent.as_str()).is_err() {
            // (Not echoed, nor a detail read off a userinfo: a password.)
            let detail = match parsed() {
                Err(e) if !authority.contains('@') => format!(" ({e})"),
                _ => String::new(),
            };
            return Err(if sent.len() > MAX_TARGET {
                TOO_LONG.into()
            } else {
                format!("a URL the proxy cannot read{detail}: it answers 400 malformed_request")
            });
        }
        if !known && !tunnel {
            // As typed: `FTP` was shown `ftp` (probe 138).
            return Err(format!(
                "unsupported scheme `{}` (use http://, https:// or host:port): the proxy answers 400 \
                 unsupported_scheme",
                shown(scheme)
            ));
        }
        if let Some(m) = given.filter(|_| scheme.eq_ignore_ascii_case("https") && !tunnel && !forwards_https)
        {
            return Err(format!(
                "`{} https://…`: https:// is forwarded on a TLS listener only, and this config has none; \
                 the proxy answers 400 unsupported_scheme (clients send CONNECT for https://: leave out \
                 --method)",
                shown(m.as_str())
            ));
        }
        if !known && split_port(authority).1.is_none_or(str::is_empty) {
            return Err(format!(
                "a tunnel for `{}://` needs the port in the URL (authgate knows the default ports of http:// \
                 and https:// only)",
                shown(scheme)
            ));
        }
        // Refused by the proxy (RFC 9110 §4.2.4); it was explained as the
        // URL without it, "ALLOWED" (probe 91). Not echoed: a password.
        if authority.contains('@') {
            return Err(
                "user:password@ in the URL: the proxy answers 400 bad_target (send credentials in Proxy-Authorization)"
                    .into(),
            );
        }
        return parsed().map(|target| (target, method));
    }
    // `http:127.0.0.1:8080` was told "IPv6 addresses must be in brackets"
    // (probe 100). (`http:8080` is the host `http`, port 8080.)
    if let Some((scheme, rest)) = raw.split_once(':')
        && ["http", "https"].iter().any(|s| s.eq_ignore_ascii_case(scheme))
        && !rest.bytes().all(|b| b.is_ascii_digit())
    {
        // (Not echoed: `http:alice:S3cret@host` was, password and all;
        // probe 101.)
        return Err(format!("`{scheme}:` without `//` is no URL: write {scheme}://host/…"));
    }
    let raw = readable_authority(raw)?;
    parse_authority(&raw).map(|t| (t, Method::CONNECT)).map_err(|e| match e.0 {
        // No CONNECT was typed: what TARGET takes (probe 160).
        "CONNECT needs host:port" => NO_PORT.to_owned(),
        other => other.to_string(),
    })
}

/// A `host:port` target in the ASCII form a client sends, if hyper can
/// read it as a request target.
///
/// # Errors
/// What the proxy answers to one it cannot read.
fn readable_authority(raw: &str) -> Result<String, String> {
    let raw = ascii_host_port(raw)?;
    // As for a URL: what hyper cannot read is the wire's 400
    // malformed_request (`host:80/` was explained as "bad port"; probe 156).
    if raw.len() > MAX_TARGET {
        return Err(TOO_LONG.into());
    }
    if http::Uri::try_from(raw.as_str()).is_err() {
        let detail = match parse_authority(&raw) {
            Err(e) if !raw.contains('@') => format!(" ({})", e.0),
            _ => String::new(),
        };
        return Err(format!("a target the proxy cannot read{detail}: it answers 400 malformed_request"));
    }
    Ok(raw)
}

/// What explain says of a target without a port or scheme.
const NO_PORT: &str = "a target without a port: give host:port (a CONNECT) or a URL (http://host/…)";

/// A host name as a person types it (`bücher.example`) in the form a client
/// sends it (`xn--bcher-kva.example`), as `hosts` in the rules are read.
fn ascii_host(host: &str) -> Result<std::borrow::Cow<'_, str>, String> {
    if host.is_ascii() {
        return Ok(host.into());
    }
    idna::domain_to_ascii(host).map(Into::into).map_err(|_| "bad host name".to_owned())
}

/// What of a URL's path and query a client sends: all but a fragment, and
/// at least `/` (RFC 9112 §3.2.2: an empty path is sent as `/`).
fn sent_path(path: &str) -> std::borrow::Cow<'_, str> {
    let path = path.split('#').next().unwrap_or("");
    if path.starts_with('/') { path.into() } else { format!("/{path}").into() }
}

/// The size of the smallest head a client sends for `method` and `raw` as
/// `user`: the request line as it goes out (a tunnel's `CONNECT host:port`;
/// a URL's host in its ASCII form, without its fragment), `Host`, and
/// `Proxy-Authorization` with a one-character password. Read off TARGET as
/// typed, before it is parsed: the proxy counts a head's bytes before it
/// reads it, so a head over the limit is its 431 whatever else is wrong
/// with it (an unsupported scheme, a URL it cannot read; probe 184).
/// Returns the size, and the request line's target.
fn smallest_head(method: &Method, raw: &str, user: &str) -> (usize, String) {
    let (line_target, host) = match raw.split_once("://") {
        Some((scheme, rest)) => {
            let url_authority = rest.split(['/', '?', '#']).next().unwrap_or("");
            let tunnel = *method == Method::CONNECT;
            let (host, port) =
                split_port(if tunnel { without_userinfo(url_authority) } else { url_authority });
            let host = ascii_host(host).unwrap_or(host.into());
            if tunnel {
                let default = if scheme.eq_ignore_ascii_case("https") { "443" } else { "80" };
                let sent = format!("{host}:{}", port.filter(|p| !p.is_empty()).unwrap_or(default));
                (sent.clone(), sent)
            } else {
                let sent = match port {
                    Some(port) => format!("{host}:{port}"),
                    None => host.into_owned(),
                };
                (format!("{scheme}://{sent}{}", sent_path(&rest[url_authority.len()..])), sent)
            }
        }
        None => {
            let sent = readable_host_port(raw);
            (sent.clone(), sent)
        }
    };
    // base64 of `user:x`.
    let credentials = (user.len() + 2).div_ceil(3) * 4;
    let head =
        format!("{method} {line_target} HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: Basic \r\n\r\n")
            .len()
            + credentials;
    (head, line_target)
}

/// Whether the proxy answers 431 to TARGET for `method` as `user`: its
/// smallest head is over `max` bytes, and the request line does not break
/// before (a space or a control character in the target is hyper's 400 as
/// soon as it has read it: one within the first `max` bytes of the head
/// comes before the limit is crossed).
fn too_large(method: &Method, raw: &str, user: &str, max: usize) -> Option<usize> {
    let (head, line_target) = smallest_head(method, raw, user);
    let line = format!("{method} {line_target} HTTP/1.1\r\n");
    let early = line_breaks_at(line.as_bytes(), method.as_str().len() + 1).is_some_and(|at| at < max);
    (head > max && !early).then_some(head)
}

/// Where hyper finds the request line `line`, whose target starts at
/// `target`, broken: at a control character in the target, or, after a
/// space in it (which ends the target), at the first byte that is not the
/// version `HTTP/1.1` and the line's end: it waits for that byte (a space
/// in the last byte before the head limit was the proxy's 431, told as a
/// 400 here; probe 186). `None`: not broken.
fn line_breaks_at(line: &[u8], target: usize) -> Option<usize> {
    let end = line.len().checked_sub(b" HTTP/1.1\r\n".len())?;
    let at = target + line.get(target..end)?.iter().position(|&b| b <= b' ' || b == 0x7f)?;
    if line.get(at) != Some(&b' ') {
        return Some(at);
    }
    // (`HTTP/1.0` reads as a version too: probe 188.)
    let version = line.get(at + 1..).unwrap_or_default();
    let matched = version
        .iter()
        .zip(b"HTTP/1.1\r\n")
        .enumerate()
        .take_while(|&(i, (got, want))| got == want || (i == 7 && *got == b'0'))
        .count();
    Some(at + 1 + matched)
}

/// A URL's authority without its `user:password@`.
fn without_userinfo(authority: &str) -> &str {
    authority.rsplit_once('@').map_or(authority, |(_, host)| host)
}

/// host:port as a client sends it: the host in its ASCII form.
/// (As typed when the host has no ASCII form.)
fn readable_host_port(raw: &str) -> String {
    ascii_host_port(raw).unwrap_or_else(|_| raw.to_owned())
}

/// host:port (or a host alone) with the host in the ASCII form a client
/// sends.
///
/// # Errors
/// A host that has no ASCII form.
fn ascii_host_port(raw: &str) -> Result<String, String> {
    // Unicode without a port is still host without port (it was "bad host
    // name"; probe 138).
    Ok(match raw.rsplit_once(':') {
        _ if raw.is_ascii() => raw.to_owned(),
        Some((host, port)) => format!("{}:{port}", ascii_host(host)?),
        None => ascii_host(raw)?.into_owned(),
    })
}

/// Runs `explain`; `Err` is an error (exit 2), the report says allowed/denied.
///
/// # Errors
/// Unknown user, bad target or method.
pub async fn run(snap: &Snapshot, user: &str, method: Option<&str>, target: &str) -> Result<Report, String> {
    let name = crate::auth::basic::nfc(user);
    if name.is_empty() {
        return Err("--user: a user name must not be empty".into());
    }
    let user = snap.users.get(&name).ok_or_else(|| {
        let file = crate::config::shown_path(&snap.auth.users_file);
        // `alice:S3cret` typed for a name is not echoed.
        if crate::config::may_hold_a_password(&name) {
            format!("no such user in {file} {}", crate::config::NOT_SHOWN)
        } else {
            format!("no user `{}` in {file}", crate::telemetry::sanitize_username(user))
        }
    })?;
    let authority_form = !target.contains("://");
    let https = target.split_once("://").is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("https"));
    // As sent: methods are case-sensitive, and the proxy matches a rule's
    // `GET` against `GET` only.
    let given = method
        .map(|m| {
            Method::from_bytes(m.as_bytes()).map_err(|_| {
                // A method whose first byte that is no token character
                // lies past the head limit is the 431 first (probe 188).
                let bad = m.bytes().position(|b| !is_method_char(b)).unwrap_or(0);
                // (Not echoed with an `@` in it: a pasted password; probe 102.)
                let m = if m.contains('@') {
                    "--method (not shown: it has `@`)".to_owned()
                } else {
                    format!("`{}`", shown(m))
                };
                if bad >= snap.limits.max_header_bytes {
                    return format!(
                        "{m} is longer than [limits] max_header_bytes ({}) before its first character that \
                         is not allowed in a method: the proxy answers 431 request_head_too_large",
                        snap.limits.max_header_bytes
                    );
                }
                format!("{m} is not an HTTP method: the proxy answers 400 malformed_request")
            })
        })
        .transpose()?;
    // The proxy counts the whole head against `max_header_bytes`, before
    // it reads it: a request line longer than that alone was explained as
    // ALLOWED, where the proxy answers 431 (probe 178; the method counts
    // too). Counted as a client sends it: the head of a tunnel for an
    // https:// URL is short, and every head has a Host and credentials
    // (probe 181). First: a head over the limit is the 431 whatever else
    // is wrong with it (it was told as an unsupported scheme, or a URL the
    // proxy cannot read; probe 184).
    let method = given.clone().unwrap_or_else(|| implied_method(target));
    if let Some(head) = too_large(&method, target, &name, snap.limits.max_header_bytes) {
        return Err(format!(
            "the smallest request head a client sends for it (its request line, Host and \
             Proxy-Authorization) is {head} bytes, more than [limits] max_header_bytes ({}): the proxy \
             answers 431 request_head_too_large",
            snap.limits.max_header_bytes
        ));
    }
    // host:port is CONNECT's form only: any other method with it (`connect`
    // included: methods are case-sensitive) is not a proxy request, once
    // hyper has read it, whatever its host and port (`GET host:0` was told
    // "bad port", CONNECT's fault; probe 158).
    if let Some(m) = given.as_ref().filter(|m| authority_form && **m != Method::CONNECT) {
        readable_authority(target)?;
        // (Not told what form it has: `GET 127.0.0.1` was "with host:port",
        // then `/x` "a host and no scheme"; probes 161, 164.)
        return Err(format!(
            "`{}` with a target that is no http:// URL: the proxy answers 400 not_a_proxy_request (only \
             CONNECT takes host:port)",
            shown(m.as_str())
        ));
    }
    let (target, _) = parse_target_on(target, given.as_ref(), !snap.server.tls.is_empty())?;
    // An https:// URL with a method other than CONNECT is absolute-form
    // https://, forwarded on a TLS listener only: explained as ALLOWED on a
    // config without one, where the proxy answers 400 (probe 114).
    let absolute_https = https && method != Method::CONNECT;
    // The TLS listener refuses a name no TLS connection can be made to
    // (`-a.example`) before the rules and any DNS query; it was explained
    // as ALLOWED (probe 156).
    if absolute_https && crate::proxy::upstream_tls::server_name(&target.host).is_err() {
        return Err("the host is no TLS server name (a label that begins or ends with `-`, say): the proxy \
             answers 400 bad_target to https:// for it"
            .into());
    }
    let addrs = match &target.host {
        Host::Ip(ip) => Ok(vec![*ip]),
        Host::Name(n) => {
            let resolver = Resolver::new(&snap.dns_servers, snap.limits.dns_timeout);
            resolver.lookup(n, snap.limits.dns_timeout).await
        }
    };
    // As the proxy takes them: an IPv4-mapped address is its IPv4 address,
    // once (it was shown as `::ffff:a.b.c.d`, and counted twice beside the
    // same A record; probe 158).
    let addrs = addrs.map(crate::policy::egress::canonical_distinct);
    let mut report = explain(&snap.policy, &snap.egress, user, &method, &target, addrs.as_deref());
    if absolute_https {
        // Above the `result` line, the report's last.
        let at = report.text.rfind("result ").unwrap_or(report.text.len());
        report.text.insert_str(
            at,
            "note     https:// is forwarded on the TLS listeners only; a plain listener answers 400 \
             unsupported_scheme\n",
        );
    }
    Ok(report)
}

/// The longest request target hyper reads (`http::Uri`'s limit).
const MAX_TARGET: usize = 65_534;

/// What explain says of a target longer than [`MAX_TARGET`].
const TOO_LONG: &str =
    "longer than the proxy reads (65,534 bytes): it answers 431 request_head_too_large or 414 uri_too_long";

/// An argument as echoed in a message: at most 64 characters, control and
/// invisible characters escaped (they reached the terminal as they were).
fn shown(arg: &str) -> String {
    arg.chars().take(64).collect::<String>().escape_debug().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `http:host:port` (no `//`) is named as the URL it is not.
    #[test]
    fn a_url_without_slashes_is_named_so() {
        assert_eq!(
            parse_target("http:127.0.0.1:8080"),
            Err("`http:` without `//` is no URL: write http://host/…".into())
        );
        assert_eq!(
            parse_target("HTTPS:x"),
            Err("`HTTPS:` without `//` is no URL: write HTTPS://host/…".into())
        );
        let err = parse_target("http:alice:S3cret@127.0.0.1").unwrap_err();
        assert!(!err.contains("S3cret"), "{err}");
        assert!(parse_target("httpbin.org:443").is_ok());
        assert!(parse_target("http:8080").is_ok(), "the host `http`");
    }

    #[test]
    fn a_host_typed_in_unicode_is_explained_in_its_ascii_form() {
        let name = Host::Name("xn--bcher-kva.example".into());
        let (target, method) = parse_target("http://bücher.example:8000/x").unwrap();
        assert_eq!((target, method), (Target { host: name.clone(), port: 8000 }, Method::GET));
        let (target, method) = parse_target("BÜCHER.example:443").unwrap();
        assert_eq!((target, method), (Target { host: name, port: 443 }, Method::CONNECT));
        assert!(parse_target("http://bü cher.example/").is_err());
        // Without a port it is a host without a port, not a bad name.
        // (It said "CONNECT needs host:port" of what no CONNECT was typed
        // for; probe 160.)
        assert_eq!(parse_target("bücher.example"), Err(NO_PORT.into()));
        assert_eq!(parse_target("127.0.0.1"), Err(NO_PORT.into()));
    }

    /// What hyper cannot read is explained as the proxy's 400
    /// malformed_request, not as what authgate would have said of it.
    #[test]
    fn a_url_hyper_refuses_is_explained_as_malformed() {
        let err = parse_target(r"http://a.test:80\@b.test/").unwrap_err();
        assert!(err.ends_with("it answers 400 malformed_request"), "{err}");
        let err = parse_target("http://[::1:80/").unwrap_err();
        assert_eq!(
            err,
            "a URL the proxy cannot read (unclosed IPv6 bracket): it answers 400 malformed_request"
        );
        // No detail read off userinfo, which may be a password.
        let err = parse_target("http://alice:S3cr t@a.test/").unwrap_err();
        assert_eq!(err, "a URL the proxy cannot read: it answers 400 malformed_request");
        let long = format!("http://a.test/{}", "x".repeat(MAX_TARGET));
        assert!(parse_target(&long).unwrap_err().contains("414 uri_too_long"));
        // What hyper reads goes on to authgate's own checks.
        assert!(parse_target("http://alice:S3cret@a.test/").unwrap_err().contains("bad_target"));
        assert!(parse_target(&format!("http://a.test/{}", "x".repeat(60_000))).is_ok());
    }

    /// Read as a client sends it: a fragment is not sent, and for an
    /// https:// URL (a tunnel) only the host and port are. Both were told
    /// "longer than the proxy reads" or "cannot read" (probe 184).
    #[test]
    fn what_a_client_does_not_send_is_not_held_against_the_target() {
        let long = "x".repeat(70_000);
        let https = |url: &str| parse_target(url).map(|(t, m)| (t.port, m));
        assert_eq!(https(&format!("https://a.test/{long}")), Ok((443, Method::CONNECT)));
        assert_eq!(https("https://a.test/<a b>"), Ok((443, Method::CONNECT)));
        assert_eq!(https(&format!("http://a.test/#{long}")), Ok((80, Method::GET)));
        assert_eq!(https("http://a.test?q"), Ok((80, Method::GET)));
        // Sent as absolute-form https:// (a TLS listener's), the path counts.
        let get = Method::GET;
        assert!(parse_target_for(&format!("https://a.test/{long}"), Some(&get)).is_err());
        assert!(parse_target_for("https://a.test/<a b>", Some(&get)).is_err());
        // The smallest head: the tunnel's line for https://, `/` for an empty
        // path, no fragment.
        let head = |method: &Method, url: &str| smallest_head(method, url, "u").0;
        let connect = Method::CONNECT;
        assert_eq!(head(&connect, &format!("https://a.test/{long}")), head(&connect, "a.test:443"));
        assert_eq!(head(&get, &format!("http://a.test/#{long}")), head(&get, "http://a.test/"));
        assert_eq!(head(&get, "http://a.test?q"), head(&get, "http://a.test/?q"));
        assert_eq!(
            head(&get, "http://a.test/"),
            "GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nProxy-Authorization: Basic dTp4\r\n\r\n".len()
        );
    }

    #[test]
    fn an_unsupported_scheme_is_shown_as_typed() {
        let err = parse_target("FTP://a.test/").unwrap_err();
        assert!(err.starts_with("unsupported scheme `FTP`"), "{err}");
    }

    /// The port of a URL as the proxy reads it: an empty one is the
    /// scheme's, leading zeros are allowed (explain said "bad port" for
    /// `http://127.0.0.1:/`, which the proxy sends to port 80).
    #[test]
    fn a_url_port_is_read_as_the_proxy_reads_it() {
        let port = |url: &str| parse_target(url).map(|(t, _)| t.port);
        assert_eq!(port("http://127.0.0.1:/"), Ok(80));
        assert_eq!(port("https://127.0.0.1:"), Ok(443));
        assert_eq!(port("http://127.0.0.1:08080/x"), Ok(8080));
        assert_eq!(port("http://[::1]:/"), Ok(80));
        assert_eq!(port("http://[::1]/"), Ok(80));
        assert!(port("http://127.0.0.1:0/").is_err());
        assert!(port("http://127.0.0.1:65536/").is_err());
    }

    /// A URL with userinfo is the proxy's 400, not explained without it
    /// (it said ALLOWED), and the password is not echoed.
    #[test]
    fn a_url_with_userinfo_is_an_error() {
        for url in ["http://alice:S3cret@127.0.0.1:8080/x", "http://@h/"] {
            let err = parse_target(url).unwrap_err();
            assert!(err.contains("400 bad_target") && !err.contains("S3cret"), "{url}: {err}");
        }
        // Sent as absolute-form https:// too; but a tunnel's CONNECT
        // carries no userinfo, which the client uses inside the tunnel (it
        // was refused; probe 188).
        let get = Method::GET;
        let err = parse_target_for("https://alice:S3cret@example.com/", Some(&get)).unwrap_err();
        assert!(err.contains("400 bad_target") && !err.contains("S3cret"), "{err}");
        let tunnel = |url: &str, m: Option<&Method>| parse_target_for(url, m).map(|(t, _)| t.to_string());
        assert_eq!(tunnel("https://alice:S3cret@example.com/", None), Ok("example.com:443".into()));
        let connect = Method::CONNECT;
        assert_eq!(tunnel("ftp://u:p@127.0.0.1:21/", Some(&connect)), Ok("127.0.0.1:21".into()));
        assert_eq!(
            smallest_head(&connect, "https://alice:S3cret@example.com/", "u").0,
            smallest_head(&connect, "example.com:443", "u").0
        );
    }
}
