//! Request targets: `host:port`, parsed strictly and canonically.
//!
//! Every spelling of an IP address that some resolver or browser accepts is
//! turned into the address itself here, so the egress check sees what a
//! connect would reach: IPv4 in the `inet_aton` forms (`2130706433`,
//! `0177.0.0.1`, `0x7f.1`, `127.1`) and bracketed IPv6 (a zone id such as
//! `%25eth0` is refused). IPv4-mapped IPv6 stays IPv6 here; the egress check
//! and the rules compare it as the IPv4 address it maps
//! (`policy::egress::canonical`). A name whose last label is numeric but that is not a
//! valid IPv4 address is refused (as the WHATWG URL standard does) rather than
//! sent to DNS.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The host part of a target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A DNS name: lower-case ASCII, no trailing dot.
    Name(String),
    /// An IP address given literally.
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
            Host::Ip(IpAddr::V4(a)) => write!(f, "{a}"),
        }
    }
}

/// Where a request wants to go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The host.
    pub host: Host,
    /// The TCP port (never 0).
    pub port: u16,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Why a target is unusable; the message is safe to show the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadTarget(pub &'static str);

/// Parses a host as it appears in a URI or CONNECT authority (IPv6 in
/// brackets).
///
/// # Errors
/// [`BadTarget`] for an empty, oversized, or malformed host.
pub fn parse_host(raw: &str) -> Result<Host, BadTarget> {
    if raw.is_empty() {
        return Err(BadTarget("empty host"));
    }
    if raw.len() > 255 {
        return Err(BadTarget("host name too long"));
    }
    if let Some(inner) = raw.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or(BadTarget("unclosed IPv6 bracket"))?;
        // A zone id (`%25eth0`, RFC 6874) names an interface of this
        // machine, which only link-local addresses need and the egress
        // policy refuses; `[::1%lo]`, `[::1%]` and the like were accepted
        // with the zone silently dropped.
        if inner.contains('%') {
            return Err(BadTarget(ZONE_ID));
        }
        let v6: Ipv6Addr = inner.parse().map_err(|_| BadTarget("bad IPv6 address"))?;
        return Ok(Host::Ip(IpAddr::V6(v6)));
    }
    let name = raw.strip_suffix('.').unwrap_or(raw);
    if name.is_empty() {
        return Err(BadTarget("empty host"));
    }
    if name.len() > 253 {
        return Err(BadTarget("host name too long"));
    }
    // One pass over the bytes: labels of 1-63 letters, digits, `-`, `_`.
    let mut label = 0usize;
    for &b in name.as_bytes() {
        if b == b'.' {
            if label == 0 {
                return Err(BadTarget("bad host name"));
            }
            label = 0;
        } else if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            label += 1;
            if label > 63 {
                return Err(BadTarget("bad host name"));
            }
        } else {
            return Err(BadTarget("bad host name"));
        }
    }
    if label == 0 {
        return Err(BadTarget("bad host name"));
    }
    let last = name.rfind('.').map_or(name, |dot| &name[dot + 1..]);
    if looks_numeric(last) {
        return parse_ipv4_loose(name).map(|a| Host::Ip(IpAddr::V4(a))).ok_or(BadTarget("bad IPv4 address"));
    }
    Ok(Host::Name(name.to_ascii_lowercase()))
}

/// An authority (`user:password@host:port`) without its userinfo: that is a
/// credential, never logged, forwarded or echoed.
pub fn without_userinfo(authority: &str) -> &str {
    // Byte search: `str::rsplit` with a `char` runs a UTF-8 searcher,
    // several times the cost on this per-request path (callgrind).
    match authority.bytes().rposition(|b| b == b'@') {
        Some(i) => &authority[i + 1..],
        None => authority,
    }
}

/// Whether a `Host` field value has the syntax RFC 9110 §7.2 gives it:
/// `uri-host [ ":" port ]` (RFC 3986: an IP literal in brackets, or a
/// reg-name of unreserved characters, sub-delims and percent-encodings;
/// the port is digits). RFC 9112 §3.2 has a server answer 400 to a Host
/// that is not; userinfo (`user@host`) and spaces are the usual offenders.
/// An empty value is valid syntax (an empty reg-name).
pub fn valid_host_field(value: &[u8]) -> bool {
    let port = match value.strip_prefix(b"[") {
        Some(literal) => match literal.iter().position(|&b| b == b']') {
            Some(end) if ip_literal(&literal[..end]) => &literal[end + 1..],
            _ => return false,
        },
        None => &value[reg_name_len(value)..],
    };
    match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    }
}

/// Whether a request's `Host` fields pass RFC 9112 §3.2, which has a
/// server answer 400 to a request with two of them (a hop in front may
/// have read the other one), with one that is not `host[:port]`
/// ([`valid_host_field`]), and to an HTTP/1.1 request without one;
/// `missing_ok` lets a request without one pass (a CONNECT: such clients
/// exist in the wild).
pub fn host_fields_valid(headers: &http::HeaderMap, version: http::Version, missing_ok: bool) -> bool {
    let mut hosts = headers.get_all(http::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(host), None) => valid_host_field(host.as_bytes()),
        (None, _) => version != http::Version::HTTP_11 || missing_ok,
        (Some(_), Some(_)) => false,
    }
}

/// The detail of a target, or a `Host` field, with an IPv6 zone id.
pub const ZONE_ID: &str = "IPv6 zone identifiers are not supported";

/// Whether the one `Host` field is an IPv6 literal with a zone id
/// (`[fe80::1%25eth0]:80`, as curl copies it from the target): not a valid
/// field (RFC 9112 §3.2 takes RFC 3986's `host`, which has none).
pub fn host_field_has_zone(headers: &http::HeaderMap) -> bool {
    let mut hosts = headers.get_all(http::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(host), None) => {
            let host = host.as_bytes();
            host.starts_with(b"[") && host.iter().take_while(|&&b| b != b']').any(|&b| b == b'%')
        }
        _ => false,
    }
}

/// RFC 3986 `IP-literal` without its brackets: an IPv6 address (no zone
/// id), or `IPvFuture` (`v` HEXDIG+ `.` then unreserved, sub-delims, `:`).
fn ip_literal(inner: &[u8]) -> bool {
    match inner.split_first() {
        Some((b'v' | b'V', rest)) => {
            let hex = rest.iter().take_while(|b| b.is_ascii_hexdigit()).count();
            match rest[hex..].split_first() {
                Some((b'.', tail)) => {
                    hex > 0 && !tail.is_empty() && tail.iter().all(|&b| b == b':' || REG_NAME[usize::from(b)])
                }
                _ => false,
            }
        }
        _ => std::str::from_utf8(inner).is_ok_and(|s| s.parse::<Ipv6Addr>().is_ok()),
    }
}

/// The bytes of an RFC 3986 `reg-name` besides `%`: unreserved and
/// sub-delims. A table: this runs on every request, and a range test plus
/// a search of the sub-delims per byte was 270 instructions a request.
const REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        i += 1;
    }
    table
};

/// How many leading bytes of `s` form a reg-name (with `%` HEXDIG HEXDIG).
fn reg_name_len(s: &[u8]) -> usize {
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        if REG_NAME[usize::from(b)] {
            i += 1;
        } else if b == b'%' && s.get(i + 1..i + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
            i += 3;
        } else {
            break;
        }
    }
    i
}

/// Parses `host:port` (CONNECT authority-form).
///
/// # Errors
/// [`BadTarget`] when the port is missing, zero or not a number, or the host is bad.
pub fn parse_authority(raw: &str) -> Result<Target, BadTarget> {
    if raw.contains('@') {
        return Err(BadTarget("CONNECT takes host:port, without user:password@"));
    }
    // Split as a URL's authority is ([`split_port`]): an IPv6 literal's
    // port comes after its `]`, and anything else there is a bad port
    // (`[::1]443`); the host is read first, so that `[::1:443` (a bracket
    // never closed) and `[[::1]]:80` say what is wrong with them (special
    // cases on top of a split at the last `:` said "must be in brackets",
    // probes 128, 129, 133).
    let (host, port) = split_port(raw);
    if !host.starts_with('[') && host.contains(':') {
        return Err(BadTarget("IPv6 addresses must be in brackets"));
    }
    let host = parse_host(host)?;
    let port = uri_port(port.ok_or(BadTarget("CONNECT needs host:port"))?)?;
    Ok(Target { host, port })
}

/// The port of an absolute-form target's authority (`host:port`,
/// `[v6]:port`, userinfo already cut): its decimal value, or `default` when
/// there is none or it is empty (RFC 3986 §3.2.3). `http::Uri::port` cannot
/// be used: it says "no port" both for none and for one that is not a number
/// (`:65536`, `:8o`), and it takes `+80`.
///
/// # Errors
/// [`BadTarget`] for a port that is not a number 1-65535.
pub fn authority_port(authority: &str, default: u16) -> Result<u16, BadTarget> {
    match split_port(authority).1 {
        None | Some("") => Ok(default),
        Some(p) => uri_port(p),
    }
}

/// An authority (`host:port`, `[v6]:port`, `host`) cut at the `:` before
/// its port: the last `:`, or for an IPv6 literal the one right after its
/// `]`. Anything else after the `]` is returned as the port from the `]`
/// on, which no port starts with: a bad one (`[::1]80` was port 80, probe
/// 86). (A port with a `]` in it, `host:80[]`, was taken for no port, and
/// the request went to port 80: probe 85.)
pub fn split_port(authority: &str) -> (&str, Option<&str>) {
    if authority.starts_with('[')
        && let Some(end) = authority.find(']')
    {
        let (host, rest) = authority.split_at(end + 1);
        return match rest.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if rest.is_empty() => (host, None),
            None => (host, Some(&authority[end..])),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !authority.starts_with('[') => (host, Some(port)),
        _ => (authority, None),
    }
}

/// The `Host` field for a request to `authority`, which RFC 9112 §3.2.2
/// has a proxy make from the target: the authority as written, with its
/// port in normal form (RFC 3986 §6.2.3, RFC 9110 §4.2.3): an empty port
/// left out (`h:` is `h`) and leading zeros dropped (`h:0080` is `h:80`).
/// An origin that matches `Host` to its virtual hosts as text got `h:` or
/// `h:0080` (probe 258). A port written out, default or not, stays.
pub fn host_field(authority: &str) -> std::borrow::Cow<'_, str> {
    // Read from the end: the digits of a port, then its `:` (a host never
    // ends in `:`, and an IPv6 literal ends in `]`). Most targets need no
    // change and cost a few compares (`split_port` cost 200 instructions).
    let b = authority.as_bytes();
    let digits = b.iter().rev().take_while(|c| c.is_ascii_digit()).count();
    let port_at = b.len() - digits;
    if port_at == 0 || b[port_at - 1] != b':' {
        return authority.into();
    }
    let host = &authority[..port_at - 1];
    if digits == 0 {
        return host.into();
    }
    match authority[port_at..].trim_start_matches('0') {
        // No leading zero; or all zeros, port 0, refused before this.
        port if port.len() == digits || port.is_empty() => authority.into(),
        port => format!("{host}:{port}").into(),
    }
}

/// A port in a request target: RFC 3986 §3.2.3 `port = *DIGIT`, so leading
/// zeros are allowed (`:08080` is 8080, as for the `Host` field).
fn uri_port(raw: &str) -> Result<u16, BadTarget> {
    let digits = raw.trim_start_matches('0');
    // All zeros: port 0, refused with the rest.
    parse_port(if digits.is_empty() { "0" } else { digits })
}

/// Parses a decimal port 1-65535.
///
/// # Errors
/// [`BadTarget`] otherwise.
pub fn parse_port(raw: &str) -> Result<u16, BadTarget> {
    if raw.is_empty() || raw.len() > 5 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BadTarget("bad port"));
    }
    match raw.parse::<u16>() {
        Ok(0) | Err(_) => Err(BadTarget("bad port")),
        Ok(p) => Ok(p),
    }
}

fn looks_numeric(label: &str) -> bool {
    !label.is_empty()
        && (label.bytes().all(|b| b.is_ascii_digit())
            || label.as_bytes().split_at_checked(2).is_some_and(|(prefix, hex)| {
                prefix.eq_ignore_ascii_case(b"0x") && hex.iter().all(u8::is_ascii_hexdigit)
            }))
}

/// `inet_aton` semantics: 1-4 parts, each decimal, octal (leading 0) or hex
/// (`0x`); the last part fills the remaining bytes.
pub fn parse_ipv4_loose(s: &str) -> Option<Ipv4Addr> {
    // The usual dotted quad, as std reads it (four decimal parts of 0-255,
    // no leading zeros), means the same under inet_aton; std's parser is a
    // quarter of the instructions of the general one below.
    if let Ok(a) = s.parse::<Ipv4Addr>() {
        return Some(a);
    }
    let mut nums = [0u64; 4];
    let mut count = 0;
    for part in s.split('.') {
        *nums.get_mut(count)? = parse_part(part)?;
        count += 1;
    }
    let (last, init) = nums[..count].split_last()?;
    let mut value: u64 = 0;
    for (i, n) in init.iter().enumerate() {
        if *n > 255 {
            return None;
        }
        value |= n << (8 * (3 - i));
    }
    let remaining_bits = 8 * (4 - init.len() as u32);
    if remaining_bits < 64 && *last >= 1u64 << remaining_bits {
        return None;
    }
    value |= last;
    u32::try_from(value).ok().map(Ipv4Addr::from)
}

fn parse_part(p: &str) -> Option<u64> {
    if p.is_empty() || p.len() > 12 {
        return None;
    }
    if let Some(hex) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")) {
        if hex.is_empty() {
            return Some(0);
        }
        return u64::from_str_radix(hex, 16).ok();
    }
    if p.len() > 1 && p.starts_with('0') {
        return u64::from_str_radix(&p[1..], 8).ok();
    }
    p.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `Host` field takes the target's port in normal form, and the
    /// rest as written.
    #[test]
    fn the_host_field_has_the_port_in_normal_form() {
        for (authority, field) in [
            ("h:", "h"),
            ("h:0080", "h:80"),
            ("127.0.0.1:031850", "127.0.0.1:31850"),
            ("[::1]:", "[::1]"),
            ("[::1]:00443", "[::1]:443"),
            ("Example.COM:80", "Example.COM:80"),
            ("h:8080", "h:8080"),
            ("h:0", "h:0"),
            ("h:000", "h:000"),
            ("1.2.3.4", "1.2.3.4"),
            ("10.0.0.1:08", "10.0.0.1:8"),
            ("[::1]:0443", "[::1]:443"),
            ("h", "h"),
            ("[::1]", "[::1]"),
        ] {
            assert_eq!(host_field(authority), field, "{authority}");
        }
    }

    #[test]
    fn host_fields_are_checked_against_the_uri_host_port_grammar() {
        for good in [
            "example.com",
            "example.com:8080",
            "127.0.0.1:80",
            "[::1]:8080",
            "[2001:db8::1]",
            "[::ffff:127.0.0.1]:80",
            "[v1.fe80::a+en1]",
            "xn--bcher-kva.example",
            "a%20b",
            "host:",
            "",
        ] {
            assert!(valid_host_field(good.as_bytes()), "{good:?} is valid");
        }
        for bad in [
            "a b",
            "user@host",
            "user:pw@host:1",
            "<script>",
            "[::1",
            "[::1]x",
            "[]",
            "[foo]",
            "[::1::2]",
            "[1.2.3.4]",
            "[:]",
            "[v1.]",
            "[vx.a]",
            "[::1%25eth0]",
            "host:8o",
            "h:1:2",
            "a%2",
            "h\\",
        ] {
            assert!(!valid_host_field(bad.as_bytes()), "{bad:?} is not");
        }
    }

    #[test]
    fn userinfo_is_cut_off_up_to_the_last_at() {
        assert_eq!(without_userinfo("u:p@w@host:80"), "host:80");
        assert_eq!(without_userinfo("host:80"), "host:80");
        assert_eq!(without_userinfo("@[::1]:8080"), "[::1]:8080");
    }

    fn ip(s: &str) -> Host {
        Host::Ip(s.parse().unwrap())
    }

    #[test]
    fn every_spelling_of_loopback_is_an_ip() {
        for s in [
            "127.0.0.1",
            "2130706433",
            "0177.0.0.1",
            "0x7f.1",
            "127.1",
            "0x7f000001",
            "0x7F.0.0.1",
            "127.0.1",
            "0X7F000001",
            "127.0.0.0X1",
        ] {
            assert_eq!(parse_host(s), Ok(ip("127.0.0.1")), "{s}");
        }
        assert_eq!(parse_host("0.0.0.0"), Ok(ip("0.0.0.0")));
        assert_eq!(parse_host("0"), Ok(ip("0.0.0.0")));
        assert_eq!(parse_host("0X"), Ok(ip("0.0.0.0")), "inet_aton reads a bare 0x as 0");
        assert_eq!(parse_host("[::1]"), Ok(ip("::1")));
        assert_eq!(parse_host("[::ffff:127.0.0.1]"), Ok(ip("::ffff:127.0.0.1")));
        for zoned in ["[fe80::1%25eth0]", "[fe80::1%eth0]", "[::1%lo]", "[::1%25]", "[::1%]", "[::1%25%25]"] {
            assert_eq!(parse_host(zoned), Err(BadTarget(ZONE_ID)), "{zoned}");
        }
    }

    #[test]
    fn names_are_canonical() {
        assert_eq!(parse_host("Example.COM."), Ok(Host::Name("example.com".into())));
        assert_eq!(parse_host("localhost"), Ok(Host::Name("localhost".into())));
        let longest_label = format!("{}.Example", "A".repeat(63));
        assert_eq!(parse_host(&longest_label), Ok(Host::Name(longest_label.to_ascii_lowercase())));
    }

    #[test]
    fn bad_hosts_are_refused() {
        for s in [
            "",
            ".",
            "a..b",
            "256.1.1.1",
            "1.2.3.4.5",
            "a b",
            "[::1",
            "[zz::1]",
            "09.1.1.1",
            "4294967296",
            "1.2.3.999",
            ".a",
            "a..",
            "a.-.b/",
            &"x".repeat(64),
        ] {
            assert!(parse_host(s).is_err(), "{s} should fail");
        }
    }

    #[test]
    fn an_absolute_form_port_is_a_number_or_the_default() {
        for (authority, port) in [
            ("a.example", 80),
            ("a.example:", 80),
            ("a.example:8080", 8080),
            ("[::1]", 80),
            ("[::1]:443", 443),
            // RFC 3986 §3.2.3: `*DIGIT`.
            ("a.example:024001", 24001),
            ("a.example:0000000080", 80),
        ] {
            assert_eq!(authority_port(authority, 80), Ok(port), "{authority}");
        }
        for bad in [
            "a:65536",
            "a:0",
            "a:000",
            "a:065536",
            "a:+80",
            "a:-1",
            "a:8o",
            "a:0x50",
            "[::1]:x",
            "a:4294986406",
            // A `]` in the port is no IPv6 literal's: a bad port (it was
            // taken for none, so port 80).
            "a:80[]",
            "a:[]",
            "a:[x]",
            "[::1]x",
            "[::1]]:80",
            "[::1]80",
            "[::ffff:127.0.0.1]0042080",
        ] {
            assert!(authority_port(bad, 80).is_err(), "{bad}");
        }
    }

    #[test]
    fn authority_needs_a_port() {
        assert_eq!(parse_authority("example.com:443").unwrap().port, 443);
        assert_eq!(parse_authority("[::1]:8080").unwrap().host, ip("::1"));
        assert_eq!(parse_authority("example.com:0443").unwrap().port, 443);
        for s in ["example.com", "example.com:0", "example.com:99999", "example.com:+1", "::1:80", ":80"] {
            assert!(parse_authority(s).is_err(), "{s}");
        }
        // A bracketed address without a port was told to use brackets.
        for s in ["[::1]", "[2001:db8::1]"] {
            assert_eq!(parse_authority(s).err(), Some(BadTarget("CONNECT needs host:port")), "{s}");
        }
        // Bracketed, with something other than `:` after the `]`: the port
        // is what is wrong (it was "must be in brackets"; probe 128).
        for s in ["[::1]36402", "[::1]x:80", "[::1]]:80", "[fe80::1]/80", "[::1]:80]"] {
            assert_eq!(parse_authority(s).err(), Some(BadTarget("bad port")), "{s}");
        }
        assert_eq!(parse_authority("[::1:80").err(), Some(BadTarget("unclosed IPv6 bracket")));
        assert_eq!(parse_authority("[[::1]]:80").err(), Some(BadTarget("bad IPv6 address")));
        assert_eq!(parse_authority("::1:80").err(), Some(BadTarget("IPv6 addresses must be in brackets")));
    }
}
