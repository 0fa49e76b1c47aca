//! Header hygiene: hop-by-hop removal, `Via`, loop detection.
//!
//! RFC 9110 §7.6.1: a proxy MUST remove the `Connection` header and every field
//! it names, plus the hop-by-hop fields (`Proxy-Connection`, `Keep-Alive`,
//! `TE`, `Transfer-Encoding`, `Upgrade` unless upgrading, `Trailer`), before
//! forwarding. `Proxy-Authorization` is consumed here (RFC 9110 §11.7.2: it
//! applies to the next inbound proxy only) and `Proxy-Authenticate` from an
//! origin is dropped. §7.6.3: a proxy MUST add `Via`.

use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::respond::PROXY_NAME;

/// Fields never forwarded, whatever `Connection` says: the hop-by-hop ones,
/// `Proxy-Authorization` (consumed here) and `Proxy-Authenticate` (an
/// origin's challenge is not for the client's proxy credentials).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// Whether the message asks to switch protocols (`Connection: upgrade` plus
/// an `Upgrade` field), e.g. a WebSocket handshake.
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_lists(headers, "upgrade")
}

fn connection_lists(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop fields; keeps `Upgrade` (and sets `Connection: upgrade`)
/// when `upgrade` is true.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let upgrade_value = if upgrade { headers.get(header::UPGRADE).cloned() } else { None };
    // One pass over the few names a message has, then a removal for each
    // one present: a hashed lookup for each of the ten names, most of them
    // absent, and a `HeaderName` made from each `Connection` token, were
    // 4.4k instructions per forwarded request (callgrind).
    let doomed: Vec<HeaderName> = {
        // Fields named by Connection, read before Connection goes away.
        let listed: Vec<&str> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        headers
            .keys()
            .filter(|name| {
                HOP_BY_HOP.contains(name) || listed.iter().any(|t| t.eq_ignore_ascii_case(name.as_str()))
            })
            .cloned()
            .collect()
    };
    for name in &doomed {
        headers.remove(name);
    }
    if let Some(v) = upgrade_value {
        headers.insert(header::UPGRADE, v);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Appends our `Via` entry for a message received with `version`.
pub fn add_via(headers: &mut HeaderMap, version: Version) {
    let v = match version {
        Version::HTTP_10 => "1.0 authgate",
        Version::HTTP_09 => "0.9 authgate",
        _ => "1.1 authgate",
    };
    headers.append(header::VIA, HeaderValue::from_static(v));
}

/// Whether a `Via` entry already names this proxy (a forwarding loop).
pub fn via_names_us(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|entry| entry.split_whitespace().nth(1))
        .any(|received_by| received_by.eq_ignore_ascii_case(PROXY_NAME))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn removes_hop_by_hop_and_connection_listed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic eDp5"),
            ("proxy-authenticate", "Basic realm=\"x\""),
            ("transfer-encoding", "chunked"),
            ("authorization", "Bearer t"),
            ("x-end", "kept"),
            ("x-end", "twice"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["authorization", "x-end"]);
        assert_eq!(h.get_all("x-end").iter().count(), 2);
        let mut plain = map(&[("host", "a"), ("accept", "*/*")]);
        strip_hop_by_hop(&mut plain, false);
        assert_eq!(plain.len(), 2);
    }

    #[test]
    fn upgrade_is_kept_when_upgrading() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket"), ("sec-websocket-key", "k")]);
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["sec-websocket-key"], "k");
    }

    #[test]
    fn via_loop_detection() {
        assert!(via_names_us(&map(&[("via", "1.1 other, 1.1 AuthGate")])));
        assert!(!via_names_us(&map(&[("via", "1.1 authgate-other")])));
        let mut h = HeaderMap::new();
        add_via(&mut h, Version::HTTP_11);
        assert!(via_names_us(&h));
    }
}
