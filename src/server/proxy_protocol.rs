//! PROXY protocol v1 and v2 (haproxy.org/download/2.9/doc/proxy-protocol.txt):
//! the real client address when authgate runs behind an L4 load balancer.
//!
//! Exactly the header's bytes are consumed (peek, then read), so whatever the
//! client sends next (HTTP, TLS) is untouched. On a listener with
//! `proxy_protocol = true` a connection without a valid header is closed;
//! `LOCAL` commands and non-TCP families (health checks) keep the peer address.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// v1 headers are at most 107 bytes including CRLF.
const V1_MAX: usize = 107;
/// Most v2 address + TLV bytes accepted.
const V2_MAX_LEN: usize = 4096;

fn bad(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reads a PROXY header; returns the client address it carries (`None` for
/// `LOCAL`/unknown, meaning "use the peer address").
///
/// # Errors
/// `InvalidData` for anything that is not a valid v1 or v2 header.
pub async fn read_header(stream: &mut TcpStream) -> io::Result<Option<SocketAddr>> {
    // Both forms are longer than 12 bytes ("PROXY UNKNOWN\r\n" is 15).
    let mut head = [0u8; 16];
    // A connection closed or reset before its first byte is a balancer's
    // TCP health check, not a bad header ([`unheard`]).
    let mut got = match stream.read(&mut head[..12]).await {
        Ok(0) | Err(_) => return Err(io::Error::other(Unheard)),
        Ok(n) => n,
    };
    // Bytes that begin neither form are refused as they come: a short
    // line of something else waited `header_read_timeout` for 12 bytes.
    // So is a v1 line that ends within them, shorter than any valid one:
    // `PROXY XXXX\r\n` waited for more, and was counted `timed_out`
    // (probe 277). (v2's signature holds line ends; it begins with `\r`.)
    let short_line = |bytes: &[u8]| bytes.first() == Some(&b'P') && bytes.contains(&b'\n');
    while got < 12 {
        if !could_begin_header(&head[..got]) {
            return Err(bad("not a PROXY header"));
        }
        if short_line(&head[..got]) {
            return Err(bad("malformed or overlong PROXY v1 header"));
        }
        match stream.read(&mut head[got..12]).await? {
            0 => return Err(bad("connection closed inside the PROXY header")),
            n => got += n,
        }
    }
    if short_line(&head[..12]) {
        return Err(bad("malformed or overlong PROXY v1 header"));
    }
    if head[..12] == V2_SIGNATURE[..] {
        // The version and command first: a byte no header has is refused
        // as it comes (it waited for the length after it; probe 90).
        stream.read_exact(&mut head[12..13]).await?;
        if !known_command(head[12]) {
            return Err(bad("bad PROXY v2 version or command"));
        }
        // So is a family the specification does not define (LOCAL's is
        // not read; it waited for the length too, probe 92).
        stream.read_exact(&mut head[13..14]).await?;
        if head[12] & 0x0f == 1 && !known_family(head[13]) {
            return Err(bad("bad PROXY v2 address family or protocol"));
        }
        stream.read_exact(&mut head[14..]).await?;
        let len = u16::from_be_bytes([head[14], head[15]]) as usize;
        if len > V2_MAX_LEN {
            return Err(bad("PROXY v2 header too long"));
        }
        let mut rest = vec![0u8; len];
        stream.read_exact(&mut rest).await?;
        return parse_v2(&head, &rest);
    }
    if !head.starts_with(b"PROXY ") {
        return Err(bad("not a PROXY header"));
    }
    // v1: consume up to the CRLF and not a byte further. Peek shows what has
    // arrived; all of it before the line end is header, so it is read (which
    // also makes the next peek wait for new bytes instead of spinning).
    let mut line = head[..12].to_vec();
    let mut buf = [0u8; V1_MAX];
    loop {
        let room = V1_MAX - line.len();
        let n = stream.peek(&mut buf[..room]).await?;
        if n == 0 {
            return Err(bad("connection closed inside the PROXY header"));
        }
        let take = buf[..n].iter().position(|&b| b == b'\n').map_or(n, |i| i + 1);
        stream.read_exact(&mut buf[..take]).await?;
        line.extend_from_slice(&buf[..take]);
        if line.ends_with(b"\r\n") {
            return parse_v1(&line[..line.len() - 2]);
        }
        if line.ends_with(b"\n") || line.len() >= V1_MAX {
            return Err(bad("malformed or overlong PROXY v1 header"));
        }
    }
}

/// Whether `bytes` (fewer than 12) may begin a v1 or a v2 header.
fn could_begin_header(bytes: &[u8]) -> bool {
    const V1: &[u8] = b"PROXY ";
    V2_SIGNATURE.starts_with(bytes) || bytes.starts_with(V1) || V1.starts_with(bytes)
}

/// The error of a connection closed or reset before its first byte.
#[derive(Debug)]
struct Unheard;

impl std::fmt::Display for Unheard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("closed before its first byte")
    }
}

impl std::error::Error for Unheard {}

/// Whether [`read_header`] failed because the connection closed or reset
/// before its first byte: what a load balancer's TCP health check does,
/// which the log does not report as a bad header (a warning per check).
pub fn unheard(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Unheard>())
}

/// Parses a v1 line without its CRLF.
pub fn parse_v1(line: &[u8]) -> io::Result<Option<SocketAddr>> {
    // UNKNOWN: "the receiver must ignore anything presented before the
    // CRLF", whatever its bytes (a non-ASCII byte there was refused, probe
    // 207).
    if line == b"PROXY UNKNOWN" || line.starts_with(b"PROXY UNKNOWN ") {
        return Ok(None);
    }
    let line = std::str::from_utf8(line).map_err(|_| bad("PROXY v1 header is not ASCII"))?;
    let parts: Vec<&str> = line.split(' ').collect();
    match parts.as_slice() {
        ["PROXY", fam @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            // The destination is checked as strictly as the source, though
            // unused: a header with a broken half is not a balancer's.
            let address = |a: &str| a.parse::<IpAddr>().ok().filter(|ip| (*fam == "TCP4") == ip.is_ipv4());
            let (Some(ip), Some(_)) = (address(src), address(dst)) else {
                return Err(bad("bad PROXY v1 address, or not of the family named"));
            };
            // 0 to 65535 (the spec's range; a balancer may say 0 where it
            // has no port: it was refused, probe 82), without leading
            // zeros, which the spec forbids (`05555` was taken, probe 207).
            let port = |p: &str| {
                (p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) && (p == "0" || !p.starts_with('0')))
                    .then(|| p.parse::<u16>().ok())
                    .flatten()
            };
            let sport = port(sport).ok_or_else(|| bad("bad PROXY v1 source port"))?;
            port(dport).ok_or_else(|| bad("bad PROXY v1 destination port"))?;
            Ok(Some(SocketAddr::new(ip, sport)))
        }
        _ => Err(bad("malformed PROXY v1 header")),
    }
}

/// Parses a v2 header: the 16 fixed bytes and the address block.
pub fn parse_v2(head: &[u8; 16], rest: &[u8]) -> io::Result<Option<SocketAddr>> {
    if head[..12] != V2_SIGNATURE[..] || !known_command(head[12]) {
        return Err(bad("bad PROXY v2 signature, version or command"));
    }
    if head[12] & 0x0f == 0 {
        return Ok(None); // LOCAL: a health check from the balancer itself
    }
    match head[13] {
        0x11 if rest.len() >= 12 => {
            let ip = Ipv4Addr::new(rest[0], rest[1], rest[2], rest[3]);
            Ok(Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([rest[8], rest[9]]))))
        }
        0x21 if rest.len() >= 36 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(&rest[..16]);
            Ok(Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(b)), u16::from_be_bytes([rest[32], rest[33]]))))
        }
        // A TCP block too short, and UDP's and unix sockets': they keep the
        // peer address, but their block must be whole too (a unix one of 2
        // bytes was taken, probe 207). UNSPEC has none.
        0x11 | 0x21 | 0x12 | 0x22 | 0x31 | 0x32 if rest.len() < block_len(head[13]) => {
            Err(bad("PROXY v2 address block too short"))
        }
        f if known_family(f) => Ok(None),
        _ => Err(bad("bad PROXY v2 address family or protocol")),
    }
}

/// The length of a v2 address block of family-and-protocol `b`: two
/// addresses and two ports (IPv4, IPv6), or two 108-byte paths (unix).
fn block_len(b: u8) -> usize {
    match b >> 4 {
        1 => 12,
        2 => 36,
        3 => 216,
        _ => 0,
    }
}

/// Whether a v2 version-and-command byte is one the specification defines:
/// version 2, and LOCAL (0) or PROXY (1).
fn known_command(b: u8) -> bool {
    b >> 4 == 2 && b & 0x0f <= 1
}

/// Whether a v2 family-and-protocol byte is one the specification defines:
/// UNSPEC, TCP or UDP over IPv4 or IPv6, unix stream or datagram. Its other
/// values "must be rejected as invalid by receivers" (they kept the peer
/// address: probe 82).
fn known_family(b: u8) -> bool {
    matches!(b, 0x00 | 0x11 | 0x12 | 0x21 | 0x22 | 0x31 | 0x32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_may_begin_a_header() {
        for may in [&b"P"[..], b"PROXY", b"PROXY ", b"PROXY TCP4 ", b"\r", b"\r\n\r\n\0\r\nQUI"] {
            assert!(could_begin_header(may), "{may:?}");
        }
        for not in [&b"G"[..], b"PROXX", b"PROXYX", b"HELLO\r\n", b"\r\n\r\n\n", b"\r\nGET"] {
            assert!(!could_begin_header(not), "{not:?}");
        }
    }

    #[test]
    fn v1_forms() {
        assert_eq!(
            parse_v1(b"PROXY TCP4 192.0.2.1 192.0.2.2 5000 3128").unwrap(),
            Some("192.0.2.1:5000".parse().unwrap())
        );
        assert_eq!(
            parse_v1(b"PROXY TCP6 2001:db8::1 2001:db8::2 5000 3128").unwrap(),
            Some("[2001:db8::1]:5000".parse().unwrap())
        );
        assert_eq!(parse_v1(b"PROXY UNKNOWN").unwrap(), None);
        // What follows UNKNOWN is ignored, whatever its bytes.
        assert_eq!(parse_v1(b"PROXY UNKNOWN \xff\x00 anything").unwrap(), None);
        assert!(parse_v1(b"PROXY UNKNOWNX").is_err());
        // Ports are 0 to 65535.
        assert_eq!(
            parse_v1(b"PROXY TCP4 192.0.2.1 127.0.0.1 0 0").unwrap(),
            Some("192.0.2.1:0".parse().unwrap())
        );
        for bad in [
            &b"PROXY TCP4 2001:db8::1 1.1.1.1 1 2"[..],
            b"PROXY TCP4 1.1.1.1 1.1.1.1 99999 1",
            b"PROXY TCP4 x y 1 2",
            // The destination half, unused, is checked too.
            b"PROXY TCP4 198.51.100.7 not-an-ip 4242 3128",
            b"PROXY TCP4 198.51.100.7 127.0.0.1 4242 99999999",
            b"PROXY TCP4 198.51.100.7 ::1 4242 3128",
            b"PROXY TCP6 2001:db8::7 ::1 4242 x",
            b"PROXY TCP6 2001:db8::7 ::1 4242 3128\r",
            b"PROXY TCP4 1.1.1.1 1.1.1.1 +1 2",
            b"PROXY TCP4 1.1.1.1 1.1.1.1 1 65536",
            b"PROXY TCP4 1.1.1.1 1.1.1.1  1 2",
            b"PROXY TCP4 1.1.1.1 1.1.1.1 000000000000000000001 2",
            // No leading zeros.
            b"PROXY TCP4 10.9.8.7 127.0.0.1 05555 3128",
            b"PROXY TCP4 10.9.8.7 127.0.0.1 5555 03128",
            b"PROXY TCP4 10.9.8.7 127.0.0.1 00 3128",
            b"PROXY",
            b"GET / HTTP/1.1",
        ] {
            assert!(parse_v1(bad).is_err());
        }
    }

    /// A connection closed or reset before its first byte is `unheard`
    /// (a health check), one that closes after some bytes is not.
    #[tokio::test]
    async fn a_connection_closed_before_its_first_byte_is_unheard() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        for (sent, reset, unheard_) in [(&b""[..], false, true), (b"", true, true), (b"PROX", false, false)] {
            let mut client = TcpStream::connect(addr).await.unwrap();
            let (mut server, _) = listener.accept().await.unwrap();
            client.write_all(sent).await.unwrap();
            if reset {
                socket2::SockRef::from(&client).set_linger(Some(std::time::Duration::ZERO)).unwrap();
            }
            drop(client);
            let e = read_header(&mut server).await.unwrap_err();
            assert_eq!(unheard(&e), unheard_, "{sent:?} reset={reset}: {e}");
        }
    }

    /// A v1 line that ends before 12 bytes, or at the 12th, is refused as
    /// it comes, with the connection left open: it waited for more bytes
    /// until `header_read_timeout` (probe 277).
    #[tokio::test]
    async fn a_short_v1_line_is_refused_without_waiting_for_more() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        for sent in [&b"PROXY \r\n"[..], b"PROXY TCP4\r\n", b"PROXY U\r\n", b"PROXY XXXX\r\n", b"PROXY\n"] {
            let mut client = TcpStream::connect(addr).await.unwrap();
            let (mut server, _) = listener.accept().await.unwrap();
            client.write_all(sent).await.unwrap();
            let read =
                tokio::time::timeout(std::time::Duration::from_secs(5), read_header(&mut server)).await;
            let e = read.unwrap_or_else(|_| panic!("{sent:?} waited for more")).unwrap_err();
            assert!(e.to_string().contains("PROXY"), "{sent:?}: {e}");
            drop(client);
        }
    }

    #[test]
    fn v2_forms() {
        let mut head = [0u8; 16];
        head[..12].copy_from_slice(V2_SIGNATURE);
        head[12] = 0x21;
        head[13] = 0x11;
        let rest = [192, 0, 2, 9, 10, 0, 0, 1, 0x13, 0x88, 0x0c, 0x38];
        assert_eq!(parse_v2(&head, &rest).unwrap(), Some("192.0.2.9:5000".parse().unwrap()));
        head[12] = 0x20;
        assert_eq!(parse_v2(&head, &rest).unwrap(), None);
        head[12] = 0x21;
        assert!(parse_v2(&head, &rest[..4]).is_err());
        head[12] = 0x11;
        assert!(parse_v2(&head, &rest).is_err());
        head[12] = 0x21;
        // UNSPEC, UDP, unix sockets keep the peer's address; a family or
        // protocol the spec does not define is refused.
        for (family, valid) in [(0x00, true), (0x12, true), (0x22, true), (0x31, true), (0x32, true)]
            .into_iter()
            .chain([0x01, 0x10, 0x13, 0x20, 0x23, 0x30, 0x41, 0xff].map(|f| (f, false)))
        {
            head[13] = family;
            assert_eq!(parse_v2(&head, &[0; 216]).is_ok(), valid, "{family:#04x}");
        }
        // Each family's address block must be whole; UNSPEC has none.
        for (family, len) in
            [(0x11, 12), (0x12, 12), (0x21, 36), (0x22, 36), (0x31, 216), (0x32, 216), (0x00, 0)]
        {
            head[13] = family;
            assert!(parse_v2(&head, &vec![0; len]).is_ok(), "{family:#04x}, {len} bytes");
            if len > 0 {
                assert!(parse_v2(&head, &vec![0; len - 1]).is_err(), "{family:#04x}, {} bytes", len - 1);
            }
        }
    }
}
