//! Access rules (403 from the proxy) and egress safety (SSRF): black-box.

mod common;
#[path = "support/custom.rs"]
mod custom;
#[path = "support/dns.rs"]
mod dns;

use std::net::Ipv4Addr;
use std::process::Command;

use common::*;
use custom::spawn_custom;
use dns::Answer;

const USER: &str = "alice";
const PASS: &str = "wonder land";

fn auth() -> String {
    basic(USER, PASS)
}

/// A config with no loopback opening (the default egress policy), the fake
/// DNS server, and `extra` appended.
fn config(dns: Option<std::net::SocketAddr>, extra: &str) -> String {
    let dns = dns.map(|a| format!("[dns]\nservers = [\"{a}\"]\n")).unwrap_or_default();
    format!(
        "[server]\nrealm = \"t\"\n[auth]\nusers_file = \"users.toml\"\n[limits]\ndns_timeout = \"500ms\"\n{dns}\n{extra}\n"
    )
}

/// A config opening loopback, asking `dns` with `dns_timeout`.
fn loopback_config(dns: std::net::SocketAddr, dns_timeout: &str) -> String {
    format!(
        "[server]\nrealm = \"t\"\n[auth]\nusers_file = \"users.toml\"\n[limits]\ndns_timeout = \"{dns_timeout}\"\n[dns]\nservers = [\"{dns}\"]\n[egress]\nallow_cidrs = [\"127.0.0.0/8\"]\n"
    )
}

/// `r` is authgate's 403 for rule `rule` (its `Proxy-Status` names it);
/// `case` says which case failed.
#[track_caller]
fn assert_denied_by_rule(r: &RawResponse, rule: &str, case: &str) {
    assert_proxy_error(r, 403, "http_request_denied", "denied_by_rule");
    let expected = format!("authgate; error=http_request_denied; details=\"rule {rule}\"");
    assert_eq!(r.header("proxy-status"), Some(expected.as_str()), "{case}");
}

fn users() -> String {
    user_entry(USER, PASS, "disabled = false") + &user_entry("eve", "x", "")
}

/// Every spelling of a loopback address, as CONNECT authority and as URL
/// host, is refused with `destination_ip_prohibited`, and the origin listening
/// there sees nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssrf_bypass_forms_are_all_refused() {
    let origin = spawn_echo_origin();
    let port = origin.addr.port();
    let zone = vec![("loop.test", Answer::A(vec![vec![Ipv4Addr::LOCALHOST]], 60))];
    let fake = dns::spawn(zone).await;
    let proxy = spawn_custom(&config(Some(fake.addr), ""), &users());
    let hosts = [
        "127.0.0.1",
        "2130706433",
        "0177.0.0.1",
        "0x7f.1",
        "0x7f.0.0.1",
        "127.1",
        "0.0.0.0",
        "0",
        "localhost",
        "LOCALHOST.",
        "foo.localhost",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[::127.0.0.1]",
        "[::]",
        "loop.test",
    ];
    let a = auth();
    for host in hosts {
        let authority = format!("{host}:{port}");
        let r =
            send_one(proxy.addr, "CONNECT", &authority, &[("Host", &authority), ("Proxy-Authorization", &a)])
                .await;
        assert_proxy_error(&r, 403, "destination_ip_prohibited", "destination_ip_prohibited");
        let url = format!("http://{authority}/secret");
        let r = get(proxy.addr, &url, &[("Host", &authority), ("Proxy-Authorization", &a)]).await;
        assert_proxy_error(&r, 403, "destination_ip_prohibited", "destination_ip_prohibited");
    }
    // An IPv4-mapped address is refused as its IPv4 address, and named so
    // (it was named `::ffff:127.0.0.1`; probe 156).
    for host in ["[::ffff:127.0.0.1]", "[::ffff:7f00:1]"] {
        let authority = format!("{host}:{port}");
        let r = get(
            proxy.addr,
            &format!("http://{authority}/"),
            &[("Host", &authority), ("Proxy-Authorization", &a)],
        )
        .await;
        assert_eq!(
            r.header("proxy-status"),
            Some("authgate; error=destination_ip_prohibited; details=\"address 127.0.0.1\""),
            "{host}"
        );
    }
    // Zone ids are refused as a bad target.
    for authority in
        [format!("[fe80::1%eth0]:{port}"), format!("[::1%25lo]:{port}"), format!("[::1%]:{port}")]
    {
        let r = send_one(proxy.addr, "CONNECT", &authority, &[("Proxy-Authorization", &a)]).await;
        assert_proxy_error(&r, 400, "http_request_error", "bad_target");
    }
    assert_eq!(origin.hits(), 0, "no request may reach the loopback origin");
    // The proxy still serves: an opened range works.
    drop(proxy);
    let open = spawn_custom(&config(None, "[egress]\nallow_cidrs = [\"127.0.0.0/8\"]"), &users());
    let r = get(open.addr, &origin.url("/ok"), &[("Host", &origin.authority()), ("Proxy-Authorization", &a)])
        .await;
    assert_eq!(r.status, 200, "{}", r.dump());
}

/// With `allow_cidrs` opening everything and a `cidrs` deny rule for
/// loopback, the unspecified addresses in every spelling, and names that
/// resolve to them, are refused as `destination_ip_prohibited`: Linux takes
/// a connection to them to this host, and they reached the loopback origins
/// past the rule (probe 363).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unspecified_addresses_are_never_dialled_whatever_allow_cidrs_opens() {
    let (on_6, on_4) = same_port("[::1]:0", |port| std::net::TcpListener::bind(("127.0.0.1", port)).ok());
    let port = on_4.local_addr().unwrap().port();
    let (origin_4, origin_6) = (spawn_origin_on(on_4), spawn_origin_on(on_6));
    let zone = vec![
        ("zero.test", Answer::A(vec![vec![Ipv4Addr::UNSPECIFIED]], 60)),
        ("unspec6.test", Answer::Dual(vec![], vec![std::net::Ipv6Addr::UNSPECIFIED], 60)),
    ];
    let fake = dns::spawn(zone).await;
    let open = "[egress]\nallow_cidrs = [\"0.0.0.0/0\", \"::/0\"]\n[policy]\ndefault = \"allow\"\n\
        [[rules]]\nname = \"no-loopback\"\naction = \"deny\"\ncidrs = [\"127.0.0.0/8\", \"::1/128\"]";
    let proxy = spawn_custom(&config(Some(fake.addr), open), &users());
    let a = auth();
    for host in
        ["0.0.0.0", "0", "0x0", "[::]", "[::ffff:0.0.0.0]", "[::ffff:0:0]", "zero.test", "unspec6.test"]
    {
        let authority = format!("{host}:{port}");
        let r = send_one(proxy.addr, "CONNECT", &authority, &[("Proxy-Authorization", &a)]).await;
        assert_proxy_error(&r, 403, "destination_ip_prohibited", "destination_ip_prohibited");
        let url = format!("http://{authority}/");
        let r = get(proxy.addr, &url, &[("Host", &authority), ("Proxy-Authorization", &a)]).await;
        assert_proxy_error(&r, 403, "destination_ip_prohibited", "destination_ip_prohibited");
    }
    let authority = format!("0.0.0.0:{port}");
    let url = format!("http://{authority}/");
    let r = get(proxy.addr, &url, &[("Host", &authority), ("Proxy-Authorization", &a)]).await;
    assert_eq!(
        r.header("proxy-status"),
        Some("authgate; error=destination_ip_prohibited; details=\"address 0.0.0.0\"")
    );
    // Loopback itself meets the rule, as before.
    let authority = format!("127.0.0.1:{port}");
    let url = format!("http://{authority}/");
    let r = get(proxy.addr, &url, &[("Host", &authority), ("Proxy-Authorization", &a)]).await;
    assert_denied_by_rule(&r, "no-loopback", "127.0.0.1");
    assert_eq!((origin_4.hits(), origin_6.hits()), (0, 0), "nothing may reach the loopback origins");
}

/// A name whose answers alternate between an allowed and a forbidden address
/// (DNS rebinding, TTL 0): the forbidden address is never connected to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_rebinding_never_reaches_the_forbidden_address() {
    // The forbidden origin on 127.0.0.1 and the allowed one on 127.0.0.2.
    let (on_1, on_2) = same_port("127.0.0.1:0", |port| std::net::TcpListener::bind(("127.0.0.2", port)).ok());
    let port = on_1.local_addr().unwrap().port();
    let forbidden = spawn_origin_on(on_1);
    let good = spawn_origin_on(on_2);
    let zone = vec![
        ("rebind.test", Answer::A(vec![vec![Ipv4Addr::new(127, 0, 0, 2)], vec![Ipv4Addr::LOCALHOST]], 0)),
        ("mixed.test", Answer::A(vec![vec![Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::LOCALHOST]], 60)),
    ];
    let fake = dns::spawn(zone).await;
    let proxy =
        spawn_custom(&config(Some(fake.addr), "[egress]\nallow_cidrs = [\"127.0.0.2/32\"]"), &users());
    let a = auth();
    let mut statuses = Vec::new();
    for i in 0..12 {
        let url = format!("http://rebind.test:{port}/{i}");
        let r = get(
            proxy.addr,
            &url,
            &[("Host", "rebind.test"), ("Proxy-Authorization", &a), ("Connection", "close")],
        )
        .await;
        statuses.push(r.status);
        let authority = format!("rebind.test:{port}");
        let r = send_one(proxy.addr, "CONNECT", &authority, &[("Proxy-Authorization", &a)]).await;
        statuses.push(r.status);
    }
    assert!(statuses.iter().all(|s| *s == 200 || *s == 403), "{statuses:?}");
    assert!(statuses.contains(&403), "the forbidden answer was seen: {statuses:?}");
    assert_eq!(forbidden.hits(), 0, "127.0.0.1 must never be connected to");
    // A name with one allowed and one forbidden address is refused whole.
    let r =
        send_one(proxy.addr, "CONNECT", &format!("mixed.test:{port}"), &[("Proxy-Authorization", &a)]).await;
    assert_proxy_error(&r, 403, "destination_ip_prohibited", "destination_ip_prohibited");
    let ps = r.header("proxy-status").unwrap_or_default();
    assert!(ps.contains("details=\"address 127.0.0.1"), "the denied address is named: {ps}");
    assert_eq!(forbidden.hits(), 0);
    drop(good);
}

/// A pooled origin connection is used only for a request whose rules
/// checked its address: eve's connection to 127.0.0.2 went to alice too,
/// once the name's answer had changed to 127.0.0.1, past alice's rule
/// against 127.0.0.2 (probe 88). Connections are pooled per user now, so
/// here it is alice's own: made for a GET, which her rule lets through to
/// 127.0.0.2, it must not carry her POST, which the rule denies there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_is_not_used_past_a_rule_about_its_address() {
    let (on_1, on_2) = same_port("127.0.0.1:0", |port| std::net::TcpListener::bind(("127.0.0.2", port)).ok());
    let port = on_1.local_addr().unwrap().port();
    let ok = || async { hyper::Response::new(full("ok")) };
    let (origin_1, origin_2) =
        (spawn_origin_on_listener(on_1, move |_| ok()), spawn_origin_on_listener(on_2, move |_| ok()));
    // TTL 0: each lookup asks, and gets the next answer.
    let zone =
        vec![("flip.test", Answer::A(vec![vec![Ipv4Addr::new(127, 0, 0, 2)], vec![Ipv4Addr::LOCALHOST]], 0))];
    let fake = dns::spawn(zone).await;
    let rules = "[egress]\nallow_cidrs = [\"127.0.0.0/8\"]\n[policy]\ndefault = \"allow\"\n\n\
                 [[rules]]\nname = \"alice-posts-not-to-2\"\naction = \"deny\"\nusers = [\"alice\"]\n\
                 methods = [\"POST\"]\ncidrs = [\"127.0.0.2/32\"]\n";
    let proxy = spawn_custom(&config(Some(fake.addr), rules), &users());
    let url = format!("http://flip.test:{port}/");
    let host = format!("flip.test:{port}");
    let mut c = RawConn::connect(proxy.addr).await;
    // alice's GET: her rule does not deny it; to 127.0.0.2, and pooled.
    c.send(get_as(&url, &host, USER, PASS)).await;
    assert_eq!(c.read_response("GET").await.status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // Her POST: the rule is checked against 127.0.0.1, the answer now.
    let auth = basic(USER, PASS);
    let post = [("Host", host.as_str()), ("Proxy-Authorization", auth.as_str()), ("Content-Length", "0")];
    c.send(request("POST", &url, &post)).await;
    assert_eq!(c.read_response("POST").await.status, 200);
    assert_eq!(origin_2.hits(), 1, "alice's POST reached 127.0.0.2 through her GET's connection");
    assert_eq!(origin_1.hits(), 1);
}

/// A name with a dead address first (a server that silently drops
/// connections, as behind a firewall) and a live one second: the second is
/// tried a quarter of a second after the first, beside it (RFC 8305), and
/// both a forwarded request and a tunnel get through. Tried one after the
/// other, the first spent all of `connect_timeout` and the answer was a 504.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_drops_connections_does_not_keep_the_next_one_from_being_tried() {
    let (live, _hole) = same_port("127.0.0.1:0", |port| black_hole(("127.0.0.2", port)));
    let port = live.local_addr().unwrap().port();
    let origin = spawn_origin_on(live);
    let zone =
        vec![("half.test", Answer::A(vec![vec![Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::LOCALHOST]], 60))];
    let fake = dns::spawn(zone).await;
    let proxy = spawn_custom(&config(Some(fake.addr), "[egress]\nallow_cidrs = [\"127.0.0.0/8\"]"), &users());
    let a = auth();
    let url = format!("http://half.test:{port}/");
    let r = get(proxy.addr, &url, &[("Host", "half.test"), ("Proxy-Authorization", &a)]).await;
    assert_eq!(r.status, 200, "{}", r.dump());
    let authority = format!("half.test:{port}");
    let r = send_one(proxy.addr, "CONNECT", &authority, &[("Proxy-Authorization", &a)]).await;
    assert_eq!(r.status, 200, "{}", r.dump());
    assert_eq!(origin.hits(), 2);
}

/// A name whose A query is answered and whose AAAA query never is (a
/// resolver or a middlebox that drops AAAA): the A answer is used. And one
/// whose AAAA query gets NXDOMAIN before the A answer comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_whose_aaaa_query_goes_unanswered_is_reached_by_its_a_records() {
    let origin = spawn_echo_origin();
    let zone = vec![
        ("v4.test", Answer::NoAaaa(vec![Ipv4Addr::LOCALHOST], 60)),
        ("late-v4.test", Answer::LateA(vec![Ipv4Addr::LOCALHOST], 30)),
    ];
    let fake = dns::spawn(zone).await;
    let proxy = spawn_custom(&config(Some(fake.addr), "[egress]\nallow_cidrs = [\"127.0.0.0/8\"]"), &users());
    let a = auth();
    let url = format!("http://v4.test:{}/", origin.addr.port());
    let r = get(proxy.addr, &url, &[("Host", "v4.test"), ("Proxy-Authorization", &a)]).await;
    assert_eq!(r.status, 200, "{}", r.dump());
    // The AAAA query, left to run on, ends with the lookup's `dns_timeout`
    // (500 ms): it ran to hickory's own timeout and was sent again then, a
    // socket held for twice `dns_timeout` (probe 333).
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(fake.queries("v4.test silent AAAA"), 1, "sent once");
    // An NXDOMAIN to AAAA that comes before the A records (RFC 4074 §4.2)
    // does not end the wait for them.
    let url = format!("http://late-v4.test:{}/", origin.addr.port());
    let r = get(proxy.addr, &url, &[("Host", "late-v4.test"), ("Proxy-Authorization", &a)]).await;
    assert_eq!(r.status, 200, "{}", r.dump());
}

/// A name's IPv4 addresses are dialled before its IPv6 ones, and a name
/// with IPv6 addresses only is reached through them. (Which address got
/// the connection is seen at the origins, one on each family, same port.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_addresses_come_first_and_ipv6_ones_are_used() {
    let (on_6, on_4) = same_port("[::1]:0", |port| std::net::TcpListener::bind(("127.0.0.1", port)).ok());
    let port = on_4.local_addr().unwrap().port();
    let (origin_4, origin_6) = (spawn_origin_on(on_4), spawn_origin_on(on_6));
    let (v4, v6) = (Ipv4Addr::LOCALHOST, std::net::Ipv6Addr::LOCALHOST);
    let zone = vec![
        ("dual.test", Answer::Dual(vec![v4], vec![v6], 60)),
        ("six.test", Answer::Dual(vec![], vec![v6], 60)),
    ];
    let fake = dns::spawn(zone).await;
    let open = "[egress]\nallow_cidrs = [\"127.0.0.0/8\", \"::1/128\"]";
    let proxy = spawn_custom(&config(Some(fake.addr), open), &users());
    let a = auth();
    let connect = |name: &str| {
        let authority = format!("{name}:{port}");
        let a = a.clone();
        async move { send_one(proxy.addr, "CONNECT", &authority, &[("Proxy-Authorization", &a)]).await }
    };
    let r = connect("dual.test").await;
    assert_eq!(r.status, 200, "{}", r.dump());
    assert_eq!((origin_4.hits(), origin_6.hits()), (1, 0), "dual.test goes to its IPv4 address");
    let r = connect("six.test").await;
    assert_eq!(r.status, 200, "{}", r.dump());
    assert_eq!((origin_4.hits(), origin_6.hits()), (1, 1), "six.test goes to its IPv6 address");
}

/// An AAAA answer that comes after the Resolution Delay is not waited for,
/// but it is kept: the next lookup of the name has its IPv6 addresses.
/// It was dropped, so a name whose A records were kept (their TTL longer
/// than the AAAA ones') was IPv4-only at every lookup, and unreachable
/// when IPv4 was down (probe 331).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_aaaa_answer_is_kept_for_the_next_lookup() {
    let on_6 = std::net::TcpListener::bind("[::1]:0").unwrap();
    let port = on_6.local_addr().unwrap().port();
    let origin = spawn_origin_on(on_6);
    // Nothing listens on 127.0.0.1 at that port: the IPv4 address refuses.
    let zone = vec![(
        "late6.test",
        Answer::LateAaaa(vec![Ipv4Addr::LOCALHOST], vec![std::net::Ipv6Addr::LOCALHOST], 300),
    )];
    let fake = dns::spawn(zone).await;
    let open = "[egress]\nallow_cidrs = [\"127.0.0.0/8\", \"::1/128\"]";
    let proxy = spawn_custom(&config(Some(fake.addr), open), &users());
    let a = auth();
    let authority = format!("late6.test:{port}");
    let connect = async || send_one(proxy.addr, "CONNECT", &authority, &[("Proxy-Authorization", &a)]).await;
    // The first lookup has the A answer only: the IPv4 address refuses.
    assert_eq!(connect().await.status, 502);
    // The AAAA answer, come meanwhile, was kept.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let r = connect().await;
    assert_eq!(r.status, 200, "{}", r.dump());
    assert_eq!(origin.hits(), 1);
    assert_eq!(fake.queries("late6.test AAAA"), 1, "asked once, then kept");
}

/// A listener on `first` (port 0) and what `second` makes on the same port.
/// A port free on one address may be taken on the other (by any process's
/// connection), so ports are tried until both bind.
fn same_port<T>(first: &str, second: impl Fn(u16) -> Option<T>) -> (std::net::TcpListener, T) {
    (0..100)
        .find_map(|_| {
            let one = std::net::TcpListener::bind(first).expect("bind the first address");
            let two = second(one.local_addr().unwrap().port())?;
            Some((one, two))
        })
        .expect("no port free on both addresses")
}

/// A listener at `addr` that never accepts, its one-place queue filled:
/// the kernel drops every later SYN, and a connection to it neither
/// succeeds nor fails until the caller gives up. Kept open while held.
fn black_hole(addr: (&str, u16)) -> Option<(socket2::Socket, std::net::TcpStream)> {
    use socket2::{Domain, Socket, Type};
    let addr: std::net::SocketAddr = format!("{}:{}", addr.0, addr.1).parse().unwrap();
    let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    l.bind(&addr.into()).ok()?;
    l.listen(0).unwrap();
    let filler = std::net::TcpStream::connect(addr).unwrap();
    Some((l, filler))
}

/// An hyper origin (counting connections) on a bound listener.
fn spawn_origin_on(l: std::net::TcpListener) -> Origin {
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        let listener = tokio::net::TcpListener::from_std(l).unwrap();
        while let Ok((mut s, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ =
                    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").await;
            });
        }
    });
    Origin { addr, hits }
}

/// A query that gets no answer (a UDP packet lost on the way) is sent
/// again once half of `dns_timeout` has passed, as stub resolvers do: one
/// lost packet was a 504 `dns_timeout`. The first query is still waited
/// for: an answer to it that comes later than that, but in time, counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_dns_query_is_sent_again_within_dns_timeout() {
    let zone = vec![
        ("lossy.test", Answer::FirstLost(vec![Ipv4Addr::LOCALHOST], 60)),
        ("slow.test", Answer::LateA(vec![Ipv4Addr::LOCALHOST], 700)),
    ];
    let fake = dns::spawn(zone).await;
    let origin = spawn_echo_origin();
    let proxy = spawn_custom(&loopback_config(fake.addr, "1s"), &users());
    let url = format!("http://lossy.test:{}/", origin.addr.port());
    let r = get(proxy.addr, &url, &[("Host", "lossy.test"), ("Proxy-Authorization", &auth())]).await;
    assert_eq!(r.status, 200, "{}", r.dump());
    assert_eq!(fake.queries("lossy.test"), 4, "A and AAAA, each sent twice");
    let url = format!("http://slow.test:{}/", origin.addr.port());
    let r = get(proxy.addr, &url, &[("Host", "slow.test"), ("Proxy-Authorization", &auth())]).await;
    assert_eq!(r.status, 200, "an answer after 0.7 s of 1 s: {}", r.dump());
}

/// A name server that closes the TCP connection an answer too long for UDP
/// needs, unanswered, is asked again on a new connection (servers close
/// idle TCP connections, and one may close as a query goes out on it). One
/// that closes that one too could not be asked: a 504 `dns_timeout`, as
/// when it refuses the connection. It was a 502 `dns_error`, which says
/// the name does not resolve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_server_closing_the_tcp_connection_is_asked_again_on_a_new_one() {
    let zone = vec![
        ("closes.test", Answer::TcpCloses),
        ("closes-first.test", Answer::TcpClosesFirst(vec![Ipv4Addr::LOCALHOST])),
    ];
    let fake = dns::spawn_with_tcp(zone).await;
    let proxy = spawn_custom(&loopback_config(fake.addr, "1s"), &users());
    let origin = spawn_echo_origin();
    let url = format!("http://closes-first.test:{}/", origin.addr.port());
    let r = get(proxy.addr, &url, &[("Host", "closes-first.test"), ("Proxy-Authorization", &auth())]).await;
    assert_eq!(r.status, 200, "asked again on a new connection: {}", r.dump());
    let r = send_one(proxy.addr, "CONNECT", "closes.test:443", &[("Proxy-Authorization", &auth())]).await;
    assert_proxy_error(&r, 504, "dns_timeout", "dns_timeout");
    // Twice, on two connections, for A and for AAAA (2 or 4 queries: the
    // two kinds may share a connection, of which the server reads one).
    let queries = fake.queries("closes.test");
    assert!((2..=4).contains(&queries), "{queries} queries over TCP");
}

/// A name server that stops answering on its TCP connection without
/// closing it failed every later lookup needing TCP, for good: they all
/// went out on that connection. A lookup that got no answer now makes the
/// resolver anew, and the next lookups go out on a new connection (probe
/// 145).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_server_silent_on_its_tcp_connection_is_asked_on_a_new_one() {
    let zone = vec![
        ("big.test", Answer::TcpOnly(vec![Ipv4Addr::LOCALHOST], 0)),
        ("mute.test", Answer::TcpMute),
        ("big-after.test", Answer::TcpOnly(vec![Ipv4Addr::LOCALHOST], 0)),
    ];
    let fake = dns::spawn_with_tcp(zone).await;
    let config =
        loopback_config(fake.addr, "1s").replace("\"127.0.0.0/8\"]", "\"127.0.0.0/8\", \"::1/128\"]");
    let proxy = spawn_custom(&config, &users());
    let origin = spawn_echo_origin();
    // mute.test's A goes out on the TCP connection and is never answered,
    // its AAAA (::1, where nothing listens) comes over UDP: the lookup did
    // not fail whole, and the resolver was kept, and with it the dead
    // connection (probe 149).
    for (name, status) in [("big.test", 200), ("mute.test", 502), ("big-after.test", 200)] {
        let url = format!("http://{name}:{}/", origin.addr.port());
        let r = get(proxy.addr, &url, &[("Host", name), ("Proxy-Authorization", &auth())]).await;
        assert_eq!(r.status, status, "{name}: {}", r.dump());
    }
}

/// AAAA answers that need TCP, and a server that stops answering on its
/// TCP connection: each lookup is cut 50 ms after its A answer, its AAAA
/// query dropped unanswered, so none ever timed out and the resolver was
/// never made anew; the names' IPv6 addresses were lost for good (probe
/// 152). A second such lookup `dns_timeout` after the first makes it anew,
/// and AAAA goes out on a new connection. The origin listens on ::1 only:
/// a 200 needs the AAAA answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aaaa_queries_left_on_a_silent_tcp_connection_move_to_a_new_one() {
    let names: Vec<String> = (0..40).map(|i| format!("v6-{i}.test")).collect();
    let zone = names
        .iter()
        .map(|n| (n.as_str(), Answer::AaaaTcpMuteFirst(vec![Ipv4Addr::new(127, 0, 0, 9)])))
        .collect();
    let fake = dns::spawn_with_tcp(zone).await;
    let config =
        loopback_config(fake.addr, "1s").replace("\"127.0.0.0/8\"]", "\"127.0.0.0/8\", \"::1/128\"]");
    let proxy = spawn_custom(&config, &users());
    let v6 = match std::net::TcpListener::bind("[::1]:0") {
        Ok(l) => l,
        Err(e) => return eprintln!("skipped: no IPv6 loopback here ({e})"),
    };
    let port = v6.local_addr().unwrap().port();
    let _origin = spawn_origin_on(v6);
    let mut statuses = Vec::new();
    for name in &names {
        let url = format!("http://{name}:{port}/");
        let r = get(proxy.addr, &url, &[("Host", name), ("Proxy-Authorization", &auth())]).await;
        statuses.push(r.status);
        if r.status == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    }
    // The first lookups reach 127.0.0.9 only, where nothing listens.
    assert_eq!(statuses[0], 502, "{statuses:?}");
    assert_eq!(statuses.last(), Some(&200), "IPv6 never came back: {statuses:?}");
}

/// A reload that raises `dns_timeout` reaches the resolver's queries too:
/// they were given up after the value of the start, and an answer slower
/// than that never counted (probe 145).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_raises_dns_timeout_lets_slower_answers_count() {
    let zone = vec![
        ("late.test", Answer::LateA(vec![Ipv4Addr::LOCALHOST], 1500)),
        ("late2.test", Answer::LateA(vec![Ipv4Addr::LOCALHOST], 1500)),
    ];
    let fake = dns::spawn(zone).await;
    let proxy = spawn_custom(&loopback_config(fake.addr, "1s"), &users());
    let origin = spawn_echo_origin();
    let url = format!("http://late.test:{}/", origin.addr.port());
    let r = get(proxy.addr, &url, &[("Host", "late.test"), ("Proxy-Authorization", &auth())]).await;
    // No A answer in 1 s, and AAAA's NXDOMAIN: the name does not resolve.
    assert_proxy_error(&r, 502, "dns_error", "dns_error");
    std::fs::write(proxy.file("authgate.toml"), loopback_config(fake.addr, "4s")).unwrap();
    let state = proxy.state.clone();
    tokio::task::spawn_blocking(move || authgate::server::reload::reload(&state)).await.unwrap().unwrap();
    let url = format!("http://late2.test:{}/", origin.addr.port());
    let r = get(proxy.addr, &url, &[("Host", "late2.test"), ("Proxy-Authorization", &auth())]).await;
    assert_eq!(r.status, 200, "an answer after 1.5 s of 4 s: {}", r.dump());
}

/// A and AAAA asked on one TCP connection that the server closes: the
/// query the connection took down with it (hickory: "receiver was
/// canceled") could not be asked either, a 504; it was a 502 `dns_error`
/// one time in 3 to 12 (probe 121).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_a_closed_tcp_connection_takes_down_is_a_dns_timeout() {
    let names: Vec<String> = (0..24).map(|i| format!("closes{i}.test")).collect();
    let zone =
        names.iter().map(|n| (Box::leak(n.clone().into_boxed_str()) as &str, Answer::TcpCloses)).collect();
    let fake = dns::spawn_with_tcp(zone).await;
    let proxy = spawn_custom(&loopback_config(fake.addr, "1s"), &users());
    let asks: Vec<_> = names
        .iter()
        .map(|n| {
            let target = format!("{n}:443");
            tokio::spawn(async move {
                send_one(proxy.addr, "CONNECT", &target, &[("Proxy-Authorization", &auth())]).await
            })
        })
        .collect();
    for ask in asks {
        assert_proxy_error(&ask.await.unwrap(), 504, "dns_timeout", "dns_timeout");
    }
}

/// Answers that need TCP (too long for UDP), asked for many names at once:
/// hickory sends at most 32 queries at a time on its TCP connection, says
/// "busy" to the others and gives up on them after 0.3 s of retries. Each
/// of those was a 504 `dns_timeout` long before `dns_timeout`; now a query
/// told "busy" is asked again until the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_whose_answers_need_tcp_all_resolve_when_asked_for_at_once() {
    const NAMES: usize = 300;
    let names: Vec<String> = (0..NAMES).map(|i| format!("long{i}.test")).collect();
    let zone = names.iter().map(|n| (n.as_str(), Answer::TcpOnly(vec![Ipv4Addr::LOCALHOST], 400))).collect();
    let fake = dns::spawn_with_tcp(zone).await;
    let origin = spawn_echo_origin();
    let proxy = spawn_custom(&loopback_config(fake.addr, "5s"), &users());
    let a = auth();
    let port = origin.addr.port();
    let all = names.iter().map(|name| {
        let (url, host, a) = (format!("http://{name}:{port}/"), format!("{name}:{port}"), a.clone());
        let addr = proxy.addr;
        tokio::spawn(async move { get(addr, &url, &[("Host", &host), ("Proxy-Authorization", &a)]).await })
    });
    let mut failed = Vec::new();
    for (name, r) in names.iter().zip(all.collect::<Vec<_>>()) {
        let r = r.await.unwrap();
        if r.status != 200 {
            failed.push(format!(
                "{name}: {} {} (queries over TCP: {})",
                r.status,
                r.header("proxy-status").unwrap_or(""),
                fake.queries(name)
            ));
        }
    }
    assert!(failed.is_empty(), "{} of {NAMES} failed:\n{}", failed.len(), failed.join("\n"));
    // (Over UDP the answers hold no address. An AAAA query may be lost with
    // a connection hickory drops, and the lookup goes on without it once
    // the A answer is in.)
    assert!(names.iter().all(|n| fake.queries(n) >= 1), "the A query of each name was answered over TCP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_errors_are_502_and_timeouts_504_and_answers_are_cached_by_ttl() {
    let zone = vec![
        ("nx.test", Answer::NxDomain),
        ("slow.test", Answer::Silent),
        ("nx-v4.test", Answer::NxNoAaaa),
        ("tc.test", Answer::Truncated),
        ("ttl.test", Answer::A(vec![vec![Ipv4Addr::LOCALHOST]], 1)),
    ];
    let fake = dns::spawn(zone).await;
    let origin = spawn_echo_origin();
    let proxy = spawn_custom(&config(Some(fake.addr), "[egress]\nallow_cidrs = [\"127.0.0.0/8\"]"), &users());
    let a = auth();
    let r = send_one(proxy.addr, "CONNECT", "nx.test:443", &[("Proxy-Authorization", &a)]).await;
    assert_proxy_error(&r, 502, "dns_error", "dns_error");
    let r = get(proxy.addr, "http://nx.test/", &[("Host", "nx.test"), ("Proxy-Authorization", &a)]).await;
    assert_proxy_error(&r, 502, "dns_error", "dns_error");
    let r = send_one(proxy.addr, "CONNECT", "slow.test:443", &[("Proxy-Authorization", &a)]).await;
    assert_proxy_error(&r, 504, "dns_timeout", "dns_timeout");
    // NXDOMAIN to A says the name does not exist: the AAAA query, dropped
    // on the way, is not waited for.
    let r = send_one(proxy.addr, "CONNECT", "nx-v4.test:443", &[("Proxy-Authorization", &a)]).await;
    assert_proxy_error(&r, 502, "dns_error", "dns_error");
    // A long answer that must be asked again over TCP, which the resolver
    // refuses: it could not be asked, no answer to retry later, not a
    // name that does not resolve.
    let r = send_one(proxy.addr, "CONNECT", "tc.test:443", &[("Proxy-Authorization", &a)]).await;
    assert_proxy_error(&r, 504, "dns_timeout", "dns_timeout");

    let url = format!("http://ttl.test:{}/", origin.addr.port());
    for _ in 0..3 {
        let r = get(
            proxy.addr,
            &url,
            &[("Host", "ttl.test"), ("Proxy-Authorization", &a), ("Connection", "close")],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.dump());
    }
    assert_eq!(fake.queries("ttl.test"), 1, "answers are cached within their TTL");
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await; // let the 1 s TTL run out
    proxy.state.pool.retire(proxy.state.snapshot.load().id);
    let r = get(proxy.addr, &url, &[("Host", "ttl.test"), ("Proxy-Authorization", &a)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(fake.queries("ttl.test"), 2, "an expired answer is asked for again");
}

/// A silent name server gets two A and two AAAA queries per lookup, the
/// first and one sent again at half of `dns_timeout`, as the README says,
/// and never a third: hickory gave the first query up at the lookup's end
/// and, now and then, sent it once more as it did (2 lookups in 20, probe
/// 239).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_name_server_gets_two_queries_of_each_family_per_lookup() {
    const STREAMS: usize = 4;
    const EACH: usize = 8;
    let names: Vec<String> = (0..STREAMS * EACH).map(|i| format!("silent{i}.test")).collect();
    let zone = names.iter().map(|n| (n.as_str(), Answer::Silent)).collect();
    let fake = dns::spawn(zone).await;
    let proxy = spawn_custom(&loopback_config(fake.addr, "300ms"), &users());
    let streams = names.chunks(EACH).map(|chunk| {
        let (chunk, addr) = (chunk.to_vec(), proxy.addr);
        tokio::spawn(async move {
            for name in chunk {
                let target = format!("{name}:443");
                let r = send_one(addr, "CONNECT", &target, &[("Proxy-Authorization", &auth())]).await;
                assert_proxy_error(&r, 504, "dns_timeout", "dns_timeout");
            }
        })
    });
    for stream in streams.collect::<Vec<_>>() {
        stream.await.unwrap();
    }
    // Time for a late query to arrive.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let counts: Vec<_> = names
        .iter()
        .map(|n| (fake.queries(&format!("{n} silent A")), fake.queries(&format!("{n} silent AAAA"))))
        .collect();
    let odd: Vec<_> = names.iter().zip(&counts).filter(|(_, c)| **c != (2, 2)).collect();
    assert!(odd.is_empty(), "(A, AAAA) queries other than (2, 2): {odd:?}");
}

/// Host names with labels IDNA refuses but DNS holds (an underscore inside
/// a label, a leading hyphen, an `xn--` label that is not Punycode) are
/// asked for like any other: they were a 502 `dns_error` without a query
/// sent (probe 99).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_idna_refuses_are_still_looked_up() {
    let names = ["my_host.test", "a_.test", "-x.test", "xn--zz.test"];
    let zone = names.iter().map(|n| (*n, Answer::A(vec![vec![Ipv4Addr::LOCALHOST]], 60))).collect();
    let fake = dns::spawn(zone).await;
    let origin = spawn_echo_origin();
    let proxy = spawn_custom(&loopback_config(fake.addr, "2s"), &users());
    for name in names {
        let target = format!("{name}:{}", origin.addr.port());
        let r = send_one(proxy.addr, "CONNECT", &target, &[("Proxy-Authorization", &auth())]).await;
        assert_eq!(r.status, 200, "{name}: {}", r.dump());
        assert_eq!(fake.queries(name), 1, "{name}");
    }
}

/// A name with A records and none of type AAAA: the answer to AAAA says so
/// with an SOA whose negative TTL keeps it (RFC 2308 §5). Within that TTL
/// the AAAA question is not asked again; after it, it is. Without, every
/// connection to an IPv4-only name asked for its AAAA records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_without_records_is_kept_for_its_negative_ttl() {
    let zone = vec![("v4only.test", Answer::NoDataSoa(vec![Ipv4Addr::LOCALHOST], 60, 1))];
    let fake = dns::spawn(zone).await;
    let origin = spawn_echo_origin();
    let proxy = spawn_custom(&loopback_config(fake.addr, "2s"), &users());
    let target = format!("v4only.test:{}", origin.addr.port());
    let connect = || async {
        let r = send_one(proxy.addr, "CONNECT", &target, &[("Proxy-Authorization", &auth())]).await;
        assert_eq!(r.status, 200, "{}", r.dump());
    };
    let (within, past) = queries_within_and_past_a_ttl(&fake, "v4only.test AAAA", connect).await;
    assert_eq!(within, 1, "no data is kept for its negative TTL");
    assert_eq!(past, 2, "an expired no-data answer is asked for again");
}

/// Makes `request` three times, then once more after a negative TTL of
/// 1 s has run out; the queries `fake` counted under `key` after the
/// three, and after the fourth.
async fn queries_within_and_past_a_ttl<F, R>(fake: &dns::FakeDns, key: &str, request: F) -> (usize, usize)
where
    F: Fn() -> R,
    R: std::future::Future<Output = ()>,
{
    for _ in 0..3 {
        request().await;
    }
    let within = fake.queries(key);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    request().await;
    (within, fake.queries(key))
}

/// A negative answer reached through a CNAME is not kept: what is known
/// of the alias lasts only its own TTL, which the resolver does not pass
/// on. Kept for the target's negative TTL (60 s here), an alias of TTL 1
/// went on failing after it was fixed (probe 346).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negative_answer_through_a_cname_is_not_kept_past_the_alias() {
    let zone =
        vec![("alias.test", Answer::Cname("gone.test".into(), 1)), ("gone.test", Answer::NxDomainSoa(60))];
    let fake = dns::spawn(zone).await;
    let proxy = spawn_custom(&loopback_config(fake.addr, "2s"), &users());
    for _ in 0..2 {
        let r = send_one(proxy.addr, "CONNECT", "alias.test:443", &[("Proxy-Authorization", &auth())]).await;
        assert_proxy_error(&r, 502, "dns_error", "dns_error");
    }
    assert_eq!(fake.queries("gone.test nx"), 4, "the target asked for again, A and AAAA, at each request");
}

/// A name that does not exist, said with an SOA, is kept so for its
/// negative TTL (RFC 2308 §5), and answered as such, a 502 `dns_error`: it
/// was asked again, A and AAAA, at each request (probe 274). After the TTL
/// it is asked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_does_not_exist_is_kept_for_its_negative_ttl() {
    let zone = vec![("gone.test", Answer::NxDomainSoa(1))];
    let fake = dns::spawn(zone).await;
    let proxy = spawn_custom(&loopback_config(fake.addr, "2s"), &users());
    let refused = || async {
        let r = send_one(proxy.addr, "CONNECT", "gone.test:443", &[("Proxy-Authorization", &auth())]).await;
        assert_proxy_error(&r, 502, "dns_error", "dns_error");
    };
    let (within, past) = queries_within_and_past_a_ttl(&fake, "gone.test nx", refused).await;
    assert_eq!(within, 2, "one A and one AAAA query, kept");
    assert_eq!(past, 4, "an expired NXDOMAIN is asked for again");
    // Kept, it still says the name does not exist: with the AAAA query
    // unanswered, a 502 `dns_error`, not a 504 `dns_timeout`.
    let zone = vec![("half.test", Answer::NxSoaNoAaaa(60))];
    let fake = dns::spawn(zone).await;
    let proxy = spawn_custom(&loopback_config(fake.addr, "1s"), &users());
    for _ in 0..2 {
        let r = send_one(proxy.addr, "CONNECT", "half.test:443", &[("Proxy-Authorization", &auth())]).await;
        assert_proxy_error(&r, 502, "dns_error", "dns_error");
    }
    assert_eq!(fake.queries("half.test nx"), 1, "the A query's NXDOMAIN was kept");
}

/// A TTL with its top bit set is read as zero (RFC 2181 §8), for an answer
/// and for a negative TTL: neither is kept. Both were kept for a day
/// (probe 99).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttls_with_the_top_bit_set_are_not_kept() {
    let top = 0x8000_0000;
    let zone = vec![
        ("top.test", Answer::A(vec![vec![Ipv4Addr::LOCALHOST]], top)),
        ("v4top.test", Answer::NoDataSoa(vec![Ipv4Addr::LOCALHOST], 60, top)),
    ];
    let fake = dns::spawn(zone).await;
    let origin = spawn_echo_origin();
    let proxy = spawn_custom(&loopback_config(fake.addr, "2s"), &users());
    for name in ["top.test", "v4top.test", "top.test", "v4top.test"] {
        let target = format!("{name}:{}", origin.addr.port());
        let r = send_one(proxy.addr, "CONNECT", &target, &[("Proxy-Authorization", &auth())]).await;
        assert_eq!(r.status, 200, "{name}: {}", r.dump());
    }
    assert_eq!(fake.queries("top.test"), 2, "an answer with a TTL past 2^31 - 1 is not kept");
    assert_eq!(fake.queries("v4top.test AAAA"), 2, "nor is a negative TTL past 2^31 - 1");
}

/// A resolver that cannot be reached (nothing listens at its address) is
/// no answer, a 504 to retry later, as the README's catalogue says, not a
/// 502 "host name does not resolve", which would send users to check a
/// spelling that is right. (Names under `.invalid` never resolve, RFC 6761:
/// the resolver says so at once, a 502.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_resolver_is_a_dns_timeout_not_a_dns_error() {
    let nobody = format!("127.0.0.1:{}", closed_port()).parse().unwrap();
    let proxy = spawn_custom(&config(Some(nobody), ""), &users());
    let a = auth();
    let r = send_one(proxy.addr, "CONNECT", "example.test:443", &[("Proxy-Authorization", &a)]).await;
    assert_proxy_error(&r, 504, "dns_timeout", "dns_timeout");
    let r = get(proxy.addr, "http://example.test/", &[("Host", "example.test"), ("Proxy-Authorization", &a)])
        .await;
    assert_proxy_error(&r, 504, "dns_timeout", "dns_timeout");
    let r = send_one(proxy.addr, "CONNECT", "nothing.invalid:443", &[("Proxy-Authorization", &a)]).await;
    assert_proxy_error(&r, 502, "dns_error", "dns_error");
}

const RULES: &str = r#"
[egress]
allow_cidrs = ["127.0.0.0/8"]

[policy]
default = "deny"

[[rules]]
name = "no-smtp"
action = "deny"
ports = [25, 465, 587]

[[rules]]
name = "block-port"
action = "deny"
ports = ["PORT_DENIED"]

[[rules]]
name = "staff-all"
action = "allow"
groups = ["staff"]
methods = ["CONNECT", "GET"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_by_rule_is_a_403_from_the_proxy_and_never_reaches_the_origin() {
    let denied_origin = spawn_echo_origin();
    let ok_origin = spawn_echo_origin();
    let cfg = RULES.replace("\"PORT_DENIED\"", &denied_origin.addr.port().to_string());
    let users = user_entry(USER, PASS, "")
        + &format!("[users.bob]\npassword = {}\ngroups = [\"guests\"]\n", toml_str(&hash("pw")));
    let proxy = spawn_custom(&config(None, &cfg), &users);
    let a = auth();
    let d = denied_origin.authority();

    let r = send_one(proxy.addr, "CONNECT", &d, &[("Proxy-Authorization", &a)]).await;
    assert_denied_by_rule(&r, "block-port", "");
    let r = get(proxy.addr, &denied_origin.url("/x"), &[("Host", &d), ("Proxy-Authorization", &a)]).await;
    assert_proxy_error(&r, 403, "http_request_denied", "denied_by_rule");
    assert_eq!(denied_origin.hits(), 0, "a denied request never reaches the origin");

    // Method not in the allow rule → default deny.
    let r = send_one(
        proxy.addr,
        "POST",
        &ok_origin.url("/"),
        &[("Host", &ok_origin.authority()), ("Proxy-Authorization", &a), ("Content-Length", "0")],
    )
    .await;
    assert_proxy_error(&r, 403, "http_request_denied", "denied_by_rule");
    assert_eq!(r.header("proxy-status"), Some("authgate; error=http_request_denied; details=\"default\""));
    // Not in the group → default deny.
    let r = get(
        proxy.addr,
        &ok_origin.url("/"),
        &[("Host", &ok_origin.authority()), ("Proxy-Authorization", &basic("bob", "pw"))],
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(ok_origin.hits(), 0);
    // Allowed.
    let r = get(
        proxy.addr,
        &ok_origin.url("/y"),
        &[("Host", &ok_origin.authority()), ("Proxy-Authorization", &a)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.dump());
    assert_eq!(ok_origin.hits(), 1);
}

/// A group is one group however its name is written: compared after NFC, as
/// user names are. A deny rule for `café` (composed) let in a user whose
/// users-file entry spelled it decomposed (`cafe` + U+0301), and `users add`
/// stored both spellings as two groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_is_one_group_however_its_name_is_normalised() {
    let origin = spawn_echo_origin();
    let rules = "[egress]\nallow_cidrs = [\"127.0.0.0/8\"]\n[policy]\ndefault = \"allow\"\n\
                 [[rules]]\nname = \"no-cafe\"\naction = \"deny\"\ngroups = [\"caf\u{e9}\"]\n";
    let users = format!(
        "[users.alice]\npassword = {}\ngroups = [\"cafe\\u0301\"]\n[users.bob]\npassword = {}\ngroups = [\"staff\"]\n",
        toml_str(&hash(PASS)),
        toml_str(&hash("pw"))
    );
    let proxy = spawn_custom(&config(None, rules), &users);
    let host = origin.authority();
    let r = get(proxy.addr, &origin.url("/"), &[("Host", &host), ("Proxy-Authorization", &auth())]).await;
    assert_denied_by_rule(&r, "no-cafe", "");
    let r =
        get(proxy.addr, &origin.url("/"), &[("Host", &host), ("Proxy-Authorization", &basic("bob", "pw"))])
            .await;
    assert_eq!(r.status, 200, "{}", r.dump());
    assert_eq!(origin.hits(), 1);

    // `explain` says the same, and `users add` keeps one spelling, in NFC.
    let dir = TempDir::new();
    let path = dir.write("authgate.toml", config(None, rules));
    dir.write("users.toml", &users);
    let (code, text, _) = explain(&path, &["--user", USER, "127.0.0.1:80"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("decision deny by rule no-cafe"), "{text}");
    let mut add = authgate_bin()
        .args(["users", "--config"])
        .arg(&path)
        .args(["add", "dave", "--group", "caf\u{e9}", "--group", "cafe\u{301}", "--password-stdin"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut add.stdin.take().unwrap(), b"pw\n").unwrap();
    assert!(add.wait().unwrap().success());
    let written = std::fs::read_to_string(dir.path().join("users.toml")).unwrap();
    let dave = written.split("[users.dave]").nth(1).unwrap();
    assert!(dave.contains("groups = [\"caf\u{e9}\"]"), "{written}");
}

/// A deny rule on `methods` reads a request's method in any case: an origin
/// may take `post` for POST, and a rule denying POST let `post`, `Post` and
/// `pUT` through to it (probe 116). An allow rule matches only as listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_rule_on_methods_holds_for_every_spelling_of_the_method() {
    let origin = spawn_echo_origin();
    let rules = "[egress]\nallow_cidrs = [\"127.0.0.0/8\"]\n[policy]\ndefault = \"deny\"\n\n\
                 [[rules]]\nname = \"read-only\"\naction = \"deny\"\nmethods = [\"post\", \"PUT\"]\n\n\
                 [[rules]]\nname = \"reads\"\naction = \"allow\"\nmethods = [\"GET\", \"post\", \"Put\", \"patch\"]\n";
    let proxy = spawn_custom(&config(None, rules), &users());
    let a = auth();
    let send = |method: &'static str| {
        let (url, host) = (origin.url("/"), origin.authority());
        let a = a.clone();
        async move {
            send_one(
                proxy.addr,
                method,
                &url,
                &[("Host", &host), ("Proxy-Authorization", &a), ("Content-Length", "0")],
            )
            .await
        }
    };
    for method in ["POST", "post", "Post", "PUT", "pUT"] {
        let r = send(method).await;
        assert_denied_by_rule(&r, "read-only", method);
    }
    assert_eq!(origin.hits(), 0, "no spelling of a denied method reached the origin");
    // The allow rule: `GET` and `PATCH` as listed (upper case), not `get`.
    for (method, status) in [("GET", 200), ("PATCH", 200), ("get", 403), ("Patch", 403)] {
        assert_eq!(send(method).await.status, status, "{method}");
    }
    assert_eq!(origin.hits(), 2);
    // `explain` says what the proxy does.
    let url = origin.url("/");
    let (code, out, _) = explain(&proxy.file("authgate.toml"), &["--user", USER, "--method", "pUT", &url]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("decision deny by rule read-only") && out.contains("deny rules do"), "{out}");
}

/// A rule may name any method the proxy takes on the wire: every token
/// RFC 9110 §9.1 allows, digits and `.` too. `M2` and `GET.X` were refused
/// at load as "not an HTTP method", so no rule could deny them, while the
/// proxy forwarded them (probe 312).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_names_any_method_the_proxy_takes() {
    let origin = spawn_echo_origin();
    let rules = "[egress]\nallow_cidrs = [\"127.0.0.0/8\"]\n[policy]\ndefault = \"allow\"\n\n\
                 [[rules]]\nname = \"odd\"\naction = \"deny\"\nmethods = [\"M2\", \"get.x\", \"M-SEARCH\", \"X!~'\"]\n";
    let proxy = spawn_custom(&config(None, rules), &users());
    let (url, host, a) = (origin.url("/"), origin.authority(), auth());
    for method in ["M2", "GET.X", "M-SEARCH", "X!~'"] {
        let r = send_one(proxy.addr, method, &url, &[("Host", &host), ("Proxy-Authorization", &a)]).await;
        assert_denied_by_rule(&r, "odd", method);
    }
    assert_eq!(origin.hits(), 0, "a denied method reached the origin");
    let r = send_one(proxy.addr, "M3", &url, &[("Host", &host), ("Proxy-Authorization", &a)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(origin.hits(), 1);
    let (code, out, _) = explain(&proxy.file("authgate.toml"), &["--user", USER, "--method", "M2", &url]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("decision deny by rule odd"), "{out}");
}

/// A rule about an IPv4 address also holds for the IPv6 spellings that
/// reach it (`[::ffff:127.0.0.1]` went past a deny rule for `127.0.0.1` to
/// the origin), and a rule may name an address in either form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_rule_for_an_ipv4_address_holds_for_its_ipv6_spellings() {
    let origin = spawn_echo_origin();
    let port = origin.addr.port();
    let rules = format!(
        "[egress]\nallow_cidrs = [\"127.0.0.0/8\"]\n[policy]\ndefault = \"allow\"\n\n\
         [[rules]]\nname = \"no-origin\"\naction = \"deny\"\nhosts = [\"127.0.0.1\"]\nports = [{port}]\n\n\
         [[rules]]\nname = \"no-v6-written\"\naction = \"deny\"\nhosts = [\"::ffff:127.0.0.2\", \"::1\"]\n"
    );
    let proxy = spawn_custom(&config(None, &rules), &users());
    let a = auth();
    for host in ["127.0.0.1", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[0:0:0:0:0:ffff:127.0.0.1]"] {
        let authority = format!("{host}:{port}");
        let r = get(
            proxy.addr,
            &format!("http://{authority}/x"),
            &[("Host", &authority), ("Proxy-Authorization", &a)],
        )
        .await;
        assert_denied_by_rule(&r, "no-origin", &authority);
        let r = send_one(proxy.addr, "CONNECT", &authority, &[("Proxy-Authorization", &a)]).await;
        assert_proxy_error(&r, 403, "http_request_denied", "denied_by_rule");
    }
    assert_eq!(origin.hits(), 0, "no spelling reached the origin");
    // A pattern written in IPv6 (bare, without brackets) holds for the IPv4 target.
    for authority in ["127.0.0.2:9", "[::1]:9"] {
        let r = send_one(proxy.addr, "CONNECT", authority, &[("Proxy-Authorization", &a)]).await;
        assert_denied_by_rule(&r, "no-v6-written", authority);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_403_passes_untouched_without_proxy_status() {
    let origin = spawn_origin(|_req| async {
        hyper::Response::builder().status(403).header("x-origin", "yes").body(full("origin says no")).unwrap()
    });
    let cfg = RULES.replace("\"PORT_DENIED\"", "1");
    let proxy = spawn_custom(&config(None, &cfg), &user_entry(USER, PASS, ""));
    let r =
        get(proxy.addr, &origin.url("/"), &[("Host", &origin.authority()), ("Proxy-Authorization", &auth())])
            .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("proxy-status"), None, "an origin 403 carries no authgate Proxy-Status");
    assert_eq!(r.header("x-origin"), Some("yes"));
    assert_eq!(r.text(), "origin says no");
}

fn authgate_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_authgate"))
}

/// `authgate explain --config CONFIG ARGS`: exit code, stdout, stderr.
fn explain(config: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = authgate_bin().arg("explain").arg("--config").arg(config).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `explain` takes `[limits] max_header_bytes` as the proxy does: a
/// request line longer than it alone is the proxy's 431, and the method
/// counts too (both were explained as ALLOWED; probe 178).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_and_the_proxy_agree_on_a_request_line_over_max_header_bytes() {
    let origin = spawn_echo_origin();
    let cfg = "[server]\nrealm = \"t\"\n[auth]\nusers_file = \"users.toml\"\n[limits]\nmax_header_bytes = 8192\n\
               [egress]\nallow_cidrs = [\"127.0.0.0/8\"]\n";
    let proxy = spawn_custom(cfg, &users());
    let path = proxy.file("authgate.toml");
    let host = origin.authority();
    // (8132: a request line of 8172 bytes, under the limit alone, not with
    // the Host and Proxy-Authorization every request has; probe 181.)
    for (method, len, code, status) in
        [("GET", 8000, 0, 200), ("GET", 8132, 2, 431), ("GET", 9000, 2, 431), (&*"M".repeat(9000), 1, 2, 431)]
    {
        let url = origin.url(&format!("/{}", "p".repeat(len)));
        let (got, out, err) = explain(&path, &["--user", USER, "--method", method, &url]);
        assert_eq!(got, Some(code), "{len}: {out}{err}");
        if code == 2 {
            assert!(
                err.contains("max_header_bytes (8192)") && err.contains("431 request_head_too_large"),
                "{err}"
            );
        }
        let mut conn = RawConn::connect(proxy.addr).await;
        conn.send(request(method, &url, &[("Host", &host), ("Proxy-Authorization", &auth())])).await;
        assert_eq!(conn.read_response(method).await.status, status, "{len}");
    }
    // The proxy counts a head's bytes before it reads it: over the limit,
    // the 431 comes first whatever else is wrong with the head (an
    // unsupported scheme, a URL hyper cannot read). explain said those
    // (probe 184). But a space early in the line is hyper's 400 before the
    // limit is crossed.
    let long = "p".repeat(9000);
    // A space ends the target, and hyper fails at the first byte after it
    // that is not the version: a space as the limit's last byte is the
    // 431, one a byte earlier the 400 (probe 186). The head's first 4
    // bytes are `GET `.
    let prefix = origin.url("/");
    let upto = |n: usize| format!("{prefix}{} {}", "a".repeat(8191 - 4 - prefix.len() - n), "a".repeat(900));
    for (url, status) in [
        (format!("ftp://{host}/{long}"), 431),
        (format!("http://{host}/<a>{long}"), 431),
        (format!("http://{host}/{long} x"), 431),
        (format!("http://{host}/a b{long}"), 400),
        (upto(0), 431),
        (upto(1), 400),
        // `HTTP/1.0` is a version too: its last byte as the limit's last
        // byte, and the mismatch past it, is the 431 (probe 188).
        (format!("{prefix}{} HTTP/1.0 x", "A".repeat(8183 - 4 - prefix.len())), 431),
        (format!("{prefix}{} HTTP/1.0 x", "A".repeat(8183 - 5 - prefix.len())), 400),
        // The 400 hyper gives first, not the scheme's (probe 186).
        (format!("ftp://{host}/a b"), 400),
    ] {
        let (got, out, err) = explain(&path, &["--user", USER, &url]);
        assert_eq!(got, Some(2), "{out}{err}");
        let code = if status == 400 { "400 malformed_request" } else { "431 request_head_too_large" };
        assert!(err.contains(code), "{code}: {err}");
        let mut conn = RawConn::connect(proxy.addr).await;
        conn.send(request("GET", &url, &[("Host", &host), ("Proxy-Authorization", &auth())])).await;
        assert_eq!(conn.read_response("GET").await.status, status, "{url}");
    }
    // A method's first byte that is no token character, past the limit:
    // the 431 comes first (probe 188).
    for (at, status) in [(8192, 431), (8191, 400)] {
        let mut method = "G".repeat(8200);
        method.replace_range(at..=at, "(");
        let url = origin.url("/x");
        let (got, out, err) = explain(&path, &["--user", USER, "--method", &method, &url]);
        assert_eq!(got, Some(2), "{out}{err}");
        let code = if status == 400 { "400 malformed_request" } else { "431 request_head_too_large" };
        assert!(err.contains(code), "{at}: {err}");
        let mut conn = RawConn::connect(proxy.addr).await;
        conn.send(request(&method, &url, &[("Host", &host), ("Proxy-Authorization", &auth())])).await;
        assert_eq!(conn.read_response("GET").await.status, status, "{at}");
    }
    // `--method CONNECT` with another scheme's URL stands for the tunnel
    // `curl -p` opens for it (it was "unsupported scheme"; probe 186).
    let url = format!("ftp://{host}/x");
    let (got, out, err) = explain(&path, &["--user", USER, "--method", "CONNECT", &url]);
    assert_eq!(got, Some(0), "{out}{err}");
    assert!(out.contains(&format!("request  CONNECT {host}")), "{out}");
    let (got, _, err) = explain(&path, &["--user", USER, &url]);
    assert_eq!(got, Some(2), "{err}");
    assert!(err.contains("400 unsupported_scheme"), "{err}");
    // A fragment is not sent, however long (it was "longer than the proxy
    // reads"; probe 184).
    let url = format!("{}#{}", origin.url("/"), "f".repeat(70_000));
    let (got, out, err) = explain(&path, &["--user", USER, &url]);
    assert_eq!(got, Some(0), "{out}{err}");
    // An https:// URL stands for the tunnel a client opens for it, whose
    // head is short however long the URL: no 431 (it was; probe 181), nor
    // "longer than the proxy reads" past 65,534 bytes (probe 184).
    let url = format!("https://{host}/{}", "p".repeat(70_000));
    let (got, out, err) = explain(&path, &["--user", USER, &url]);
    assert_eq!(got, Some(0), "{out}{err}");
    let url = format!("https://{host}/{}", "p".repeat(9000));
    let (got, out, err) = explain(&path, &["--user", USER, &url]);
    assert_eq!(got, Some(0), "{out}{err}");
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(request("CONNECT", &host, &[("Host", &host), ("Proxy-Authorization", &auth())])).await;
    assert_eq!(conn.read_head().await.status, 200);
}

/// Past rule 99 the rule names stay in one column: the numbers were two
/// wide, and rule 100 on pushed its name, action and verdict one place
/// right (probe 218).
#[test]
fn explain_keeps_its_columns_past_rule_99() {
    let dir = TempDir::new();
    let rules: String =
        (1..=120).map(|i| format!("[[rules]]\nname = \"r{i}\"\naction = \"deny\"\nports = [9]\n")).collect();
    let path = dir
        .write("authgate.toml", config(None, &format!("[egress]\nallow_cidrs = [\"127.0.0.0/8\"]\n{rules}")));
    dir.write("users.toml", users());
    let (code, out, err) = explain(&path, &["--user", USER, "127.0.0.1:80"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let column = |name: &str| {
        let line = out.lines().find(|l| l.contains(&format!(". {name} "))).unwrap_or_else(|| panic!("{out}"));
        (line.find(name), line.find("no match"))
    };
    assert_eq!(column("r1"), column("r120"), "{out}");
    assert_eq!(column("r9"), column("r100"), "{out}");
    assert!(out.contains("\n    1. r1 ") && out.contains("\n  120. r120 "), "{out}");
}

#[test]
fn explain_prints_each_rule_and_exits_by_decision() {
    let dir = TempDir::new();
    let cfg = RULES.replace("\"PORT_DENIED\"", "8080");
    let path = dir.write("authgate.toml", config(None, &cfg));
    dir.write("users.toml", users());
    let run = |args: &[&str]| explain(&path, args);
    let (code, out, _) = run(&["--user", USER, "http://127.0.0.1:80/"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("staff-all") && out.contains("MATCH -> allow") && out.contains("result   ALLOWED"),
        "{out}"
    );
    assert!(out.contains("no-smtp") && out.contains("port differs"), "{out}");
    let (code, out, _) = run(&["--user", USER, "127.0.0.1:25"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("decision deny by rule no-smtp"), "{out}");
    // An IPv4-mapped address is shown as the IPv4 address the proxy dials
    // (probe 158).
    let (_, out, _) = run(&["--user", USER, "http://[::ffff:127.0.0.1]:80/"]);
    assert!(out.contains("\n         127.0.0.1 ") && !out.contains("         ::ffff:"), "{out}");
    let (code, out, _) = run(&["--user", USER, "--method", "DELETE", "http://127.0.0.1/"]);
    assert_eq!(code, Some(1));
    assert!(out.contains("by the default"), "{out}");
    // A method is taken as written, as the proxy takes it: `get` is not
    // `GET` (explain allowed it, the proxy refused it).
    let (code, out, _) = run(&["--user", USER, "--method", "get", "http://127.0.0.1/"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("request  get 127.0.0.1:80") && out.contains("is not `GET`"), "{out}");
    // Absolute-form https:// is forwarded on a TLS listener only: on this
    // config (none) the proxy answers 400, where explain said ALLOWED.
    // So is one whose host or port is bad too, or that holds a password:
    // the proxy refuses the scheme first (explain said bad_target; probe
    // 344).
    for url in ["https://127.0.0.1/", "https://u:p@a.test/", "https://a.test:0/", "https://1.2.3.999/"] {
        let (code, _, err) = run(&["--user", USER, "--method", "GET", url]);
        assert_eq!(code, Some(2), "{url}: {err}");
        assert!(
            err.contains("https:// is forwarded on a TLS listener only")
                && err.contains("unsupported_scheme"),
            "{url}: {err}"
        );
    }
    // A target's faults are told alike in both forms, the host's first
    // (`http://[[::1]]:80/` was "bad port", `[[::1]]:80` "bad IPv6
    // address"; probe 134), and a URL hyper cannot read as the 400 it
    // gets on the wire (probe 138).
    for (url, said) in [
        (
            "http://[[::1]]:80/",
            "a URL the proxy cannot read (bad IPv6 address): it answers 400 malformed_request",
        ),
        ("[[::1]]:80", "a target the proxy cannot read (bad IPv6 address): it answers 400 malformed_request"),
        ("http://[::1]80/", "bad port"),
        ("[::1]80", "bad port"),
        (
            "[::1:80",
            "a target the proxy cannot read (unclosed IPv6 bracket): it answers 400 malformed_request",
        ),
        // (It was "bad port"; probe 156.)
        ("127.0.0.1:80/", "a target the proxy cannot read (bad port): it answers 400 malformed_request"),
    ] {
        let (code, _, err) = run(&["--user", USER, url]);
        assert_eq!((code, err.trim()), (Some(2), format!("authgate: {said}").as_str()), "{url}");
    }
    // A report that cannot be written is an error (2), not "denied" (1).
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let out = authgate_bin()
        .arg("explain")
        .arg("--config")
        .arg(&path)
        .args(["--user", USER, "127.0.0.1:80"])
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    // host:port is CONNECT's form only (the proxy answers `connect` so with a
    // 400, where explain said ALLOWED).
    let (code, _, err) = run(&["--user", USER, "--method", "connect", "127.0.0.1:80"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("`connect` with a target that is no http:// URL: the proxy answers 400"), "{err}");
    // Not told it is host:port when it is not (probes 161, 164).
    for target in ["127.0.0.1", "/x", "*"] {
        let (code, _, err) = run(&["--user", USER, "--method", "GET", target]);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("`GET` with a target that is no http:// URL"), "{target}: {err}");
    }
    // Whatever its host and port, once hyper reads it (they were told
    // CONNECT's faults: "bad port"; probe 158).
    for (target, answer) in [
        ("127.0.0.1:0", "400 not_a_proxy_request"),
        ("[::1]", "400 not_a_proxy_request"),
        ("127.0.0.1:80/", "400 malformed_request"),
    ] {
        let (code, _, err) = run(&["--user", USER, "--method", "GET", target]);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains(answer), "{target}: {err}");
    }
    // Allowed by the rules but refused by the egress policy.
    let (code, out, _) = run(&["--user", USER, "169.254.169.254:80"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("DENIED: link-local"), "{out}");
    // IPv6 forms that name 127.0.0.1 through a translator are dialled as
    // IPv6: the loopback range opened in [egress] does not open them (one
    // was allowed, then dialled off the machine).
    for target in ["http://[::127.0.0.1]:80/", "http://[64:ff9b::127.0.0.1]:80/", "[2002:7f00:1::1]:80"] {
        let (code, out, _) = run(&["--user", USER, target]);
        assert_eq!(code, Some(1), "{target}: {out}");
        assert!(out.contains("DENIED: loopback"), "{target}: {out}");
    }
    let (code, out, _) = run(&["--user", USER, "http://[::ffff:127.0.0.1]:80/"]);
    assert_eq!(code, Some(0), "the mapped form is 127.0.0.1: {out}");
    let (code, _, err) = run(&["--user", "nobody", "127.0.0.1:80"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("no user `nobody`"), "{err}");
    let (code, _, err) = run(&["--user", "", "127.0.0.1:80"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--user: a user name must not be empty"), "{err}");
    // `name:password` typed for the name is not echoed.
    let (code, _, err) = run(&["--user", "alice:S3cretPW", "127.0.0.1:80"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("no such user") && !err.contains("S3cretPW"), "{err}");
    let (code, _, _) = run(&["--user", USER, "ftp://x/"]);
    assert_eq!(code, Some(2));
    // A rule with `cidrs` makes the proxy check the addresses first: a
    // denied one is its answer (`destination_ip_prohibited`), not the
    // default that explain named.
    let cidrs = "[egress]\nallow_cidrs = [\"127.0.0.0/8\"]\n[policy]\ndefault = \"deny\"\n\
                 [[rules]]\nname = \"lab\"\naction = \"allow\"\ncidrs = [\"127.0.0.0/8\"]\n";
    let lab = dir.write("lab.toml", config(None, cidrs));
    let (code, out, _) = explain(&lab, &["--user", USER, "http://[::1]:80/"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("decision deny by the egress policy"), "{out}");
    let (code, out, _) = explain(&lab, &["--user", USER, "http://127.0.0.1:80/"]);
    assert_eq!(code, Some(0), "{out}");
    // A name that does not resolve: the rule decides nothing, and the
    // proxy's answer is the lookup's 502 (explain named the rule).
    let (code, out, _) = explain(&lab, &["--user", USER, "http://nx.invalid/"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("decision none: rule lab needs the destination's addresses"), "{out}");
    assert!(out.contains("the proxy answers 502 dns_error"), "{out}");
    // Denied before any lookup: the proxy's answer is the 403, not the
    // lookup's error (explain named the 502; probe 101).
    let (code, out, _) = run(&["--user", USER, "nx.invalid:25"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("decision deny by rule no-smtp"), "{out}");
    assert!(out.contains("egress   cannot check: DNS lookup failed\n"), "{out}");
    // Arguments echoed in a message are escaped: they reached the terminal
    // with their control characters.
    let (code, _, err) = run(&["--user", USER, "--method", "\u{1b}[31mX\nY", "127.0.0.1:80"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("`\\u{1b}[31mX\\nY` is not an HTTP method"), "{err}");
    // Nor is a method with an `@` in it, a pasted password (probe 102).
    let (code, _, err) = run(&["--user", USER, "--method", "S3cret@x", "127.0.0.1:80"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--method (not shown") && !err.contains("S3cret"), "{err}");
    // (A scheme with a control character is hyper's 400 before its
    // scheme is looked at: not echoed at all.)
    let (code, _, err) = run(&["--user", USER, "ft\u{1b}p://x/"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("400 malformed_request"), "{err}");
    assert!(!err.contains('\u{1b}'), "{err}");
}

#[test]
fn rules_that_can_never_match_are_load_errors_with_line_and_column() {
    let dir = TempDir::new();
    let cfg = "[auth]\nusers_file = \"users.toml\"\n\n[[rules]]\nname = \"empty\"\naction = \"allow\"\nhosts = []\n\n[[rules]]\nname = \"inverted\"\naction = \"deny\"\nports = [\"9000-8000\"]\n\n[[rules]]\nname = \"pattern\"\naction = \"deny\"\nhosts = [\"foo*.com\"]\n\n[[rules]]\nname = \"verb\"\naction = \"maybe\"\n\n[[rules]]\nname = \"empty\"\naction = \"deny\"\n\n[[rules]]\nname = \"names\"\naction = \"allow\"\nusers = [\"x y\"]\ngroups = [\"web team\"]\n\n[[rules]]\nname = \"stars\"\naction = \"allow\"\nusers = [\"*\"]\ngroups = [\"eng\", \"*\"]\n\n[[rules]]\nname = \"named\"\naction = \"deny\"\nusers = [\"ops*\"]\n\n[[rules]]\nname = \" spaced \"\naction = \"deny\"\nports = [25]\n\n[[rules]]\nname = \"every\"\naction = \"deny\"\nmethods = [\"GET\", \"*\", \"ANY\", \".*\"]\n";
    let path = dir.write("authgate.toml", cfg);
    dir.write("users.toml", users());
    let out = authgate_bin().arg("check").arg("--config").arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let p = path.display().to_string();
    assert!(err.contains(&format!("{p}:7:9: rule `empty`: `hosts` is empty")), "{err}");
    assert!(
        err.contains(&format!("{p}:12:10: rule `inverted`: ports: range 9000-8000 is inverted")),
        "{err}"
    );
    assert!(err.contains(&format!("{p}:17:10: rule `pattern`: hosts:")), "{err}");
    assert!(err.contains(&format!("{p}:21:10: rule `verb`: action must be")), "{err}");
    // A second rule of a name is reported even when the first has errors of its own.
    assert!(err.contains(&format!("{p}:24:8: rule `empty`: duplicate rule name")), "{err}");
    // Names the users file refuses: no user or group can match them.
    // (A user name with a space is not quoted: it may be a passphrase.)
    assert!(
        err.contains(&format!("{p}:30:10: rule `names`: users: user name must not contain spaces")),
        "{err}"
    );
    assert!(!err.contains("x y"), "{err}");
    // (Nor a group with a space, as in the users file.)
    assert!(
        err.contains(&format!("{p}:31:11: rule `names`: groups: group names must not contain spaces")),
        "{err}"
    );
    assert!(!err.contains("web team"), "{err}");
    // `*` is no wildcard in users or groups: `users = ["*"]` matched only a
    // user named `*`, silently.
    for (line_col, key) in [("36:10", "users"), ("37:18", "groups")] {
        assert!(
            err.contains(&format!(
                "{p}:{line_col}: rule `stars`: {key}: `*` is not a wildcard in users or groups"
            )),
            "{err}"
        );
    }
    // A name with a `*` in it is a name (the users file takes `ops*`).
    assert!(!err.contains("rule `named`"), "{err}");
    // Spaces around a name are no part of any name (they were trimmed off
    // without a word; probe 147).
    assert!(err.contains(&format!("{p}:45:8: rule name: 1-64 characters from")), "{err}");
    // Nor in methods: `*` loaded as the method `*`, so a deny rule for
    // every method denied nothing (probe 380).
    for (col, method) in [(19, "*"), (24, "ANY"), (31, ".*")] {
        assert!(
            err.contains(&format!(
                "{p}:52:{col}: rule `every`: methods: `{method}` is not a wildcard in methods"
            )),
            "{err}"
        );
    }
}
