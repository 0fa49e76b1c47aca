//! Egress IP policy: which addresses authgate will connect to at all.
//!
//! Independent of the access rules and checked on every address a name
//! resolves to, right before connecting to that same address. Denied unless
//! opened with `[egress] allow_cidrs`: loopback, RFC 1918 private, CGNAT,
//! link-local (incl. the cloud metadata address 169.254.169.254), unique-local,
//! unspecified, broadcast, multicast, documentation and benchmarking ranges,
//! the other rows of IANA's special-purpose registries that are not globally
//! reachable (but for the anycast services inside them that are routed on
//! the Internet), and every IPv6 address outside IANA's global unicast space
//! `2000::/3` (the rest is reserved or local; NAT64 `64:ff9b::/96` is judged
//! by the IPv4 host it names). An IPv4-mapped address (`::ffff:a.b.c.d`) is the IPv4
//! address it maps (a connection to it goes there). The IPv6 forms that
//! name an IPv4 host through a translator or relay (IPv4-compatible
//! `::a.b.c.d`, IPv4-translated `::ffff:0:a.b.c.d`, NAT64
//! `64:ff9b::a.b.c.d`, 6to4 `2002:aabb:ccdd::/48`) are
//! denied when that IPv4 address is, and otherwise judged as the IPv6
//! addresses they are: they are dialled as such, so opening an IPv4 range
//! never opens them. The unspecified addresses `0.0.0.0` and `::` (a
//! connection to them reaches this host) are denied whatever `allow_cidrs`
//! opens.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

use super::cidr_set::CidrSet;

/// Ranges denied by default, with the reason shown by `explain`.
const DENIED: &[(&str, &str)] = &[
    ("0.0.0.0/8", "unspecified / this network"),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("100.64.0.0/10", "carrier-grade NAT (RFC 6598)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local / cloud metadata"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation (TEST-NET-1)"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("198.18.0.0/15", "benchmarking (RFC 2544)"),
    ("198.51.100.0/24", "documentation (TEST-NET-2)"),
    ("203.0.113.0/24", "documentation (TEST-NET-3)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved / broadcast"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "IPv4-compatible (deprecated)"),
    ("::ffff:0:0:0/96", "IPv4-translated (SIIT)"),
    ("100::/64", "discard-only"),
    ("100:0:0:1::/64", "dummy prefix (RFC 9780)"),
    ("64:ff9b:1::/48", "local-use NAT64 (RFC 8215)"),
    ("2001::/23", "IETF protocol assignments"),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation (RFC 9637)"),
    ("5f00::/16", "SRv6 segment identifiers (RFC 9602)"),
    ("fc00::/7", "unique-local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
];

/// Blocks inside a [`DENIED`] row that are routed on the Internet: anycast
/// services that IANA's special-purpose registries mark globally reachable.
/// ORCHIDv2 `2001:20::/28` and drone DETs `2001:30::/28`, marked reachable
/// too, are identifiers that are not routed, so an address there that
/// answers is on the operator's own network: they stay denied.
const ROUTED_WITHIN_DENIED: &[&str] = &[
    "192.0.0.9/32",    // PCP anycast (RFC 7723)
    "192.0.0.10/32",   // TURN anycast (RFC 8155)
    "2001:1::1/128",   // PCP anycast (RFC 7723)
    "2001:1::2/128",   // TURN anycast (RFC 8155)
    "2001:3::/32",     // AMT relays (RFC 7450)
    "2001:4:112::/48", // AS112-v6 (RFC 7535)
];

/// The egress policy: default-denied ranges minus `allow_cidrs`.
#[derive(Debug, Clone)]
pub struct Egress {
    denied: Vec<(IpNet, &'static str)>,
    routed: Vec<IpNet>,
    allowed: CidrSet,
    /// The proxy's own admin listener (see [`Egress::with_admin`]).
    admin: Option<std::net::SocketAddr>,
}

impl Default for Egress {
    fn default() -> Self {
        Egress::new(Vec::new())
    }
}

/// The verdict on one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// authgate may connect.
    Allowed,
    /// Opened by `allow_cidrs` although in a denied range.
    AllowedByConfig(IpNet),
    /// In a denied range (the reason names it).
    Denied(&'static str),
}

impl Egress {
    /// A policy that additionally allows `allowed`.
    pub fn new(allowed: Vec<IpNet>) -> Self {
        let denied =
            DENIED.iter().filter_map(|(net, why)| net.parse::<IpNet>().ok().map(|n| (n, *why))).collect();
        let routed = ROUTED_WITHIN_DENIED.iter().filter_map(|net| net.parse::<IpNet>().ok()).collect();
        Egress { denied, routed, allowed: CidrSet::new(allowed), admin: None }
    }

    /// This policy, denying also the proxy's own admin listener at `admin`,
    /// whatever `allow_cidrs` opens: it asks for no credentials, and a user
    /// whose rules reached its address and port read `/metrics` through the
    /// proxy (with `per_user`, other users' names) and used up the admin
    /// connections of the proxy's own address, locking out a health check
    /// on the same host (probe 396). Bound to an unspecified address, it is
    /// denied at the loopback addresses; the host's others are not known
    /// here.
    pub fn with_admin(self, admin: Option<std::net::SocketAddr>) -> Self {
        Egress { admin, ..self }
    }

    /// [`Egress::check`] of a destination with its port: the admin
    /// listener (see [`Egress::with_admin`]) is denied.
    pub fn check_at(&self, addr: std::net::SocketAddr) -> Verdict {
        // (The port first: on the request path, most destinations stop there.)
        let own = self.admin.is_some_and(|admin| {
            admin.port() == addr.port() && {
                let ip = canonical(addr.ip());
                canonical(admin.ip()) == ip || (admin.ip().is_unspecified() && ip.is_loopback())
            }
        });
        match own {
            true => Verdict::Denied(OWN_ADMIN),
            false => self.check(addr.ip()),
        }
    }

    /// Whether connecting to `addr` is allowed (see [`Egress::check_at`]).
    pub fn permits_at(&self, addr: std::net::SocketAddr) -> bool {
        !matches!(self.check_at(addr), Verdict::Denied(_))
    }

    /// Checks one address: an IPv4-mapped one as its IPv4 address; an IPv6
    /// form that names an IPv4 host ([`embedded_v4`]) is denied when that
    /// host is denied by default (a translator would take the connection
    /// there), unless `allow_cidrs` opens the IPv6 address itself, and is
    /// otherwise judged as itself. An `allow_cidrs` entry for IPv4 never
    /// opens an IPv6 address: authgate dials the address it checked.
    pub fn check(&self, ip: IpAddr) -> Verdict {
        let ip = canonical(ip);
        // No destination (RFC 1122 §3.2.1.3, RFC 4291 §2.5.2), yet Linux
        // takes a connection to it to this host, past any rule about
        // loopback: with `allow_cidrs` opening `0.0.0.0/0` and a deny rule
        // for `127.0.0.0/8`, `http://0.0.0.0:P/` reached 127.0.0.1:P
        // (probe 363). Never dialled, whatever `allow_cidrs` opens.
        if ip.is_unspecified() {
            return Verdict::Denied(UNSPECIFIED);
        }
        if let Some(v4) = embedded_v4(ip)
            && let Some(why) = self.denied_reason(v4.into())
        {
            return match self.allowed.first_holding(ip) {
                Some(net) => Verdict::AllowedByConfig(*net),
                None => Verdict::Denied(why),
            };
        }
        if let Some(net) = self.allowed.first_holding(ip) {
            return match self.denied_reason(ip) {
                Some(_) => Verdict::AllowedByConfig(*net),
                None => Verdict::Allowed,
            };
        }
        match self.denied_reason(ip) {
            Some(why) => Verdict::Denied(why),
            None => Verdict::Allowed,
        }
    }

    /// Whether connecting to `ip` is allowed.
    pub fn permits(&self, ip: IpAddr) -> bool {
        !matches!(self.check(ip), Verdict::Denied(_))
    }

    fn denied_reason(&self, ip: IpAddr) -> Option<&'static str> {
        match self.denied.iter().find(|(n, _)| n.contains(&ip)) {
            Some(_) if self.routed.iter().any(|n| n.contains(&ip)) => None,
            Some((_, why)) => Some(why),
            None => beyond_global_unicast(ip).then_some(BEYOND_GLOBAL_UNICAST),
        }
    }
}

/// Why the admin listener's address and port are denied.
const OWN_ADMIN: &str = "the proxy's own admin listener (`[admin] listen`: as the file says it; a running proxy refuses the one it started with until a restart)";

/// Why `0.0.0.0` and `::` are denied, whatever `allow_cidrs` opens.
const UNSPECIFIED: &str = "unspecified (a connection to it reaches this host)";

/// Why an IPv6 address outside `2000::/3` that no row of [`DENIED`] names
/// is denied.
const BEYOND_GLOBAL_UNICAST: &str = "outside global unicast 2000::/3 (reserved by IETF)";

/// Whether `ip` is an IPv6 address outside `2000::/3`, the only space IANA
/// gives out for global unicast, other than NAT64 `64:ff9b::/96` (globally
/// reachable, and judged by the IPv4 host it names). The rest of the space
/// is local, multicast or reserved: nothing there is on the Internet, so an
/// address there that answers is on the operator's own network, as an
/// internal range would be. Denying it as a whole also denies what IANA
/// sets aside there later (`5f00::/16` came in 2024).
fn beyond_global_unicast(ip: IpAddr) -> bool {
    let IpAddr::V6(v6) = ip else { return false };
    let s = v6.segments();
    s[0] & 0xe000 != 0x2000 && !matches!(s, [0x64, 0xff9b, 0, 0, 0, 0, _, _])
}

/// The address a connection to `ip` reaches: an IPv4-mapped IPv6 address
/// (`::ffff:a.b.c.d`, as a dual-stack socket reports an IPv4 peer) is that
/// IPv4 address; every other address is itself.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// `ips` each [`canonical`], each once, in their order: the addresses a
/// name's answers make the proxy dial (an A record and the same address
/// IPv4-mapped in AAAA are one).
pub fn canonical_distinct(ips: impl IntoIterator<Item = IpAddr>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for ip in ips.into_iter().map(canonical) {
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// `addr` with its address [`canonical`]: a client of a dual-stack `[::]`
/// listener, or one a PROXY header names, as `::ffff:a.b.c.d` is a.b.c.d.
pub fn canonical_addr(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    std::net::SocketAddr::new(canonical(addr.ip()), addr.port())
}

/// The IPv4 host an IPv6 address names through a translator or relay:
/// IPv4-compatible `::a.b.c.d` (deprecated), IPv4-translated (SIIT)
/// `::ffff:0:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d` and 6to4
/// `2002:aabb:ccdd::/48`. Such an address is dialled as IPv6, so it is
/// used only to deny: to the egress checks, and to deny rules.
pub fn embedded_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    let s = v6.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        // IPv4-compatible; ::, ::1 stay IPv6 (their own ranges apply).
        [0, 0, 0, 0, 0, 0, hi, _] if hi != 0 => Some(tail),
        // IPv4-translated: a site that opens its SIIT prefix reached the
        // hosts its deny rules name this way (probe 116).
        [0, 0, 0, 0, 0xffff, 0, _, _] => Some(tail),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail),
        [0x2002, a, b, ..] => Some(Ipv4Addr::new((a >> 8) as u8, a as u8, (b >> 8) as u8, b as u8)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denied(e: &Egress, s: &str) -> bool {
        !e.permits(s.parse().unwrap())
    }

    #[test]
    fn internal_ranges_are_denied_by_default() {
        let e = Egress::default();
        for s in [
            "127.0.0.1",
            "127.255.255.254",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "2002:7f00:1::",
            "::ffff:10.0.0.1",
            // IPv4-compatible and -translated forms, local-use NAT64.
            "::2",
            "::0.0.1.1",
            "::ffff:0:7f00:1",
            "::ffff:0:a00:1",
            "64:ff9b:1::7f00:1",
            "64:ff9b:1::808:808",
            // Each remaining row of the README's table, at both ends.
            "0.255.255.255",
            "100.127.255.255",
            "192.0.0.1",
            "192.0.0.255",
            "192.88.99.1",
            "198.19.255.255",
            "239.255.255.255",
            "240.0.0.1",
            "100::1",
            "100::ffff:ffff:ffff:ffff",
            "2001::1",
            "2001:1ff:ffff::1",
            "2001:db8:ffff::1",
            "fec0::1",
            "feff::1",
            // The rows IANA added since: a dummy prefix, documentation, SRv6.
            "100:0:0:1::1",
            "100::1:ffff:ffff:ffff:ffff",
            "3fff::1",
            "3fff:fff:ffff::1",
            "5f00::1",
            "5f00:ffff::1",
        ] {
            assert!(denied(&e, s), "{s} should be denied");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        let e = Egress::default();
        for s in [
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "192.0.1.1",
            "198.20.0.1",
            "2001:200::1",
            "3fff:1000::1",
            "2000::1",
            "3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "223.255.255.255",
        ] {
            assert!(!denied(&e, s), "{s} should be allowed");
        }
    }

    #[test]
    fn allow_cidrs_opens_exactly_that_range() {
        let e = Egress::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(!denied(&e, "127.0.0.1"));
        assert!(!denied(&e, "::ffff:127.0.0.1"));
        assert!(denied(&e, "10.0.0.1"));
        assert!(denied(&e, "::1"));
        assert!(matches!(e.check("127.0.0.1".parse().unwrap()), Verdict::AllowedByConfig(_)));
        // The IPv6 forms that name 127.0.0.1 through a translator or relay are
        // dialled as IPv6 (off the machine): opening 127/8 does not open them.
        for v6 in ["::127.0.0.1", "64:ff9b::127.0.0.1", "2002:7f00:1::1", "2002:7f00:1:ffff::1"] {
            assert_eq!(e.check(v6.parse().unwrap()), Verdict::Denied("loopback"), "{v6}");
        }
        // Only allow_cidrs for the IPv6 range itself opens them.
        let nat64: IpNet = "64:ff9b::/96".parse().unwrap();
        let e = Egress::new(vec![nat64]);
        assert_eq!(e.check("64:ff9b::10.0.0.1".parse().unwrap()), Verdict::AllowedByConfig(nat64));
        assert!(denied(&e, "10.0.0.1"));
    }

    /// `0.0.0.0` and `::` in every spelling stay denied when `allow_cidrs`
    /// opens everything: a connection to them reaches this host (probe
    /// 363). The rest of `0.0.0.0/8` opens as listed.
    /// The admin listener is denied with its port, whatever `allow_cidrs`
    /// opens; bound to an unspecified address, at the loopback addresses
    /// (probe 396).
    #[test]
    fn the_admin_listener_is_denied_whatever_is_opened() {
        let all = || Egress::new(vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()]);
        let at = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
        let e = all().with_admin(Some(at("127.0.0.1:9090")));
        assert_eq!(e.check_at(at("127.0.0.1:9090")), Verdict::Denied(OWN_ADMIN));
        assert_eq!(e.check_at(at("[::ffff:127.0.0.1]:9090")), Verdict::Denied(OWN_ADMIN));
        assert!(e.permits_at(at("127.0.0.1:9091")) && e.permits_at(at("127.0.0.2:9090")));
        let e = all().with_admin(Some(at("0.0.0.0:9090")));
        for own in ["127.0.0.1:9090", "127.9.9.9:9090", "[::1]:9090"] {
            assert_eq!(e.check_at(at(own)), Verdict::Denied(OWN_ADMIN), "{own}");
        }
        assert!(e.permits_at(at("10.0.0.1:9090")) && e.permits_at(at("127.0.0.1:80")));
        assert!(all().permits_at(at("127.0.0.1:9090")), "no admin listener, nothing denied");
    }

    #[test]
    fn the_unspecified_addresses_stay_denied_whatever_is_opened() {
        let all = Egress::new(vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()]);
        for ip in ["0.0.0.0", "::", "::ffff:0.0.0.0"] {
            assert_eq!(all.check(ip.parse().unwrap()), Verdict::Denied(UNSPECIFIED), "{ip}");
        }
        let exact = Egress::new(vec!["0.0.0.0/32".parse().unwrap(), "::/128".parse().unwrap()]);
        assert!(denied(&exact, "0.0.0.0") && denied(&exact, "::"));
        assert!(!denied(&all, "0.0.0.1") && !denied(&all, "127.0.0.1") && !denied(&all, "::1"));
    }

    /// The anycast services inside denied rows that are routed on the
    /// Internet are reachable; their neighbours, and the identifier blocks
    /// that are not routed, keep their row's reason.
    #[test]
    fn routed_anycast_within_denied_rows_is_allowed() {
        let e = Egress::default();
        for s in [
            "192.0.0.9",
            "192.0.0.10",
            "2001:1::1",
            "2001:1::2",
            "2001:3::1",
            "2001:3:ffff:ffff:ffff:ffff:ffff:ffff",
            "2001:4:112::1",
            "2001:4:112:ffff::1",
            "2002:c000:9::1",
        ] {
            assert_eq!(e.check(s.parse().unwrap()), Verdict::Allowed, "{s}");
        }
        for (s, why) in [
            ("192.0.0.8", "IETF protocol assignments"),
            ("192.0.0.11", "IETF protocol assignments"),
            ("2001:1::", "IETF protocol assignments"),
            ("2001:1::3", "IETF protocol assignments"),
            ("2001:2::1", "IETF protocol assignments"),
            ("2001:4:113::1", "IETF protocol assignments"),
            ("2001:20::1", "IETF protocol assignments"),
            ("2001:30::1", "IETF protocol assignments"),
            ("2002:c000:8::1", "IETF protocol assignments"),
        ] {
            assert_eq!(e.check(s.parse().unwrap()), Verdict::Denied(why), "{s}");
        }
    }

    /// A NAT64 or 6to4 address of a public IPv4 host is a public IPv6
    /// address; a mapped one is the IPv4 address.
    #[test]
    fn transition_forms_of_public_hosts_are_public() {
        let e = Egress::default();
        for s in ["64:ff9b::8.8.8.8", "2002:808:808::1", "::ffff:8.8.8.8"] {
            assert_eq!(e.check(s.parse().unwrap()), Verdict::Allowed, "{s}");
        }
        assert_eq!(canonical("::ffff:8.8.8.8".parse().unwrap()), "8.8.8.8".parse::<IpAddr>().unwrap());
        assert_eq!(
            canonical("64:ff9b::8.8.8.8".parse().unwrap()),
            "64:ff9b::808:808".parse::<IpAddr>().unwrap()
        );
        // How clients are logged: as the IPv4 address a dual-stack socket maps.
        let mapped: std::net::SocketAddr = "[::ffff:127.0.0.1]:4242".parse().unwrap();
        assert_eq!(canonical_addr(mapped).to_string(), "127.0.0.1:4242");
        let v6: std::net::SocketAddr = "[::1]:4242".parse().unwrap();
        assert_eq!(canonical_addr(v6), v6);
    }

    /// IPv6 space that IANA has not given out for global unicast is denied
    /// as a whole, with its own reason, and `allow_cidrs` opens it as any
    /// denied range.
    #[test]
    fn ipv6_outside_global_unicast_is_denied() {
        let e = Egress::default();
        for s in [
            "::1:0:0:1",
            "0:0:0:1::1",
            "1::1",
            "100:0:0:2::1",
            "1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "4000::1",
            "8000::1",
            "c000::1",
            "e000::1",
            "f800::1",
            "fe00::1",
        ] {
            assert_eq!(e.check(s.parse().unwrap()), Verdict::Denied(BEYOND_GLOBAL_UNICAST), "{s}");
        }
        // A named row keeps its own reason.
        assert_eq!(
            e.check("5f00::1".parse().unwrap()),
            Verdict::Denied("SRv6 segment identifiers (RFC 9602)")
        );
        assert_eq!(e.check("::1".parse().unwrap()), Verdict::Denied("loopback"));
        let open: IpNet = "4000::/16".parse().unwrap();
        let e = Egress::new(vec![open]);
        assert_eq!(e.check("4000::1".parse().unwrap()), Verdict::AllowedByConfig(open));
        assert!(denied(&e, "4001::1"));
    }
}
