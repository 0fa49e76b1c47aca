#![allow(dead_code)]
//! A tiny authoritative DNS server on 127.0.0.1:0 (UDP) for tests: answers A
//! queries from a table, NXDOMAIN for names it does not know, and never
//! answers names listed as "slow" (to test timeouts). AAAA gets an empty
//! answer, or none. Each name's answers can rotate (a DNS-rebinding attacker).
//! [`spawn_with_tcp`] also takes queries over TCP on the same port.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;

/// What the server answers for one name.
#[derive(Clone)]
pub enum Answer {
    /// A records with a TTL; with several sets, each query gets the next set.
    A(Vec<Vec<Ipv4Addr>>, u32),
    /// NXDOMAIN.
    NxDomain,
    /// No answer at all. Queries over UDP are counted under
    /// `"<name> silent A"` and `"<name> silent AAAA"`.
    Silent,
    /// A records with a TTL, and no answer at all to AAAA queries (a
    /// resolver or middlebox that drops them; counted under
    /// `"<name> silent AAAA"`).
    NoAaaa(Vec<Ipv4Addr>, u32),
    /// NXDOMAIN to A queries, and no answer at all to AAAA queries.
    NxNoAaaa,
    /// A records sent after a delay (milliseconds), and NXDOMAIN to AAAA
    /// at once (a server that says a name with A records does not exist
    /// when asked for AAAA, RFC 4074 §4.2).
    LateA(Vec<Ipv4Addr>, u64),
    /// A truncated answer (TC set, no records): the resolver must ask
    /// again over TCP, which this server does not take.
    Truncated,
    /// A and AAAA records with a TTL.
    Dual(Vec<Ipv4Addr>, Vec<Ipv6Addr>, u32),
    /// A records with a TTL; the first A query and the first AAAA query
    /// get no answer (lost packets).
    FirstLost(Vec<Ipv4Addr>, u32),
    /// Over UDP a truncated answer; over TCP (see [`spawn_with_tcp`]) A
    /// records, and an empty AAAA answer, each after a delay in
    /// milliseconds: an answer too long for UDP, from a server that takes
    /// a while.
    TcpOnly(Vec<Ipv4Addr>, u64),
    /// Over UDP a truncated answer; over TCP, the connection closed when
    /// the query has been read, unanswered.
    TcpCloses,
    /// Like [`Answer::TcpOnly`] without delay, except on the first TCP
    /// connection, closed like [`Answer::TcpCloses`] (a server that closed
    /// an idle connection as the query went out on it).
    TcpClosesFirst(Vec<Ipv4Addr>),
    /// A records with a TTL, and to AAAA queries an answer without
    /// records whose SOA gives a negative TTL (RFC 2308 §5: "no data",
    /// cacheable), in seconds. AAAA queries are counted under
    /// `"<name> AAAA"`.
    NoDataSoa(Vec<Ipv4Addr>, u32, u32),
    /// NXDOMAIN with an SOA whose negative TTL keeps it (RFC 2308 §5), in
    /// seconds. Queries are counted under `"<name> nx"`.
    NxDomainSoa(u32),
    /// [`Answer::NxDomainSoa`] to A queries, and no answer at all to AAAA
    /// queries.
    NxSoaNoAaaa(u32),
    /// To A over UDP a truncated answer; over TCP, the connection never
    /// answers again once it has read the query, and stays open (a server
    /// stuck on one connection, or a middlebox that still acknowledges
    /// it). To AAAA over UDP, ::1 (TTL 60).
    TcpMute,
    /// A records (TTL 60), each answer sent after a forged one: the same
    /// with a wrong query id (as an off-path attacker sends them).
    ForgedFirst(Vec<Ipv4Addr>),
    /// A records (TTL 60) over UDP; to AAAA over UDP a truncated answer,
    /// over TCP ::1 (TTL 60), except on the first TCP connection, which
    /// never answers and stays open (AAAA answers too long for UDP, from a
    /// server stuck on one connection).
    AaaaTcpMuteFirst(Vec<Ipv4Addr>),
    /// A records at once, AAAA records after a delay in milliseconds,
    /// both with TTL 60 (a server slower to answer AAAA than the
    /// Resolution Delay). AAAA queries are counted under `"<name> AAAA"`.
    LateAaaa(Vec<Ipv4Addr>, Vec<Ipv6Addr>, u64),
    /// A CNAME to this name (without trailing dot) with a TTL, to A and
    /// AAAA queries alike; the resolver asks for the target on its own.
    Cname(String, u32),
}

/// What [`spawn_with_tcp`] does with a query over TCP.
#[derive(Clone)]
enum OverTcp {
    /// These A records (no AAAA), after a delay in milliseconds.
    Answer(Vec<Ipv4Addr>, u64),
    /// The connection closed, unanswered.
    Close,
    /// Closed on the first connection, answered on the others.
    CloseFirst(Vec<Ipv4Addr>),
    /// Nothing more on this connection: read, never answered.
    Mute,
    /// ::1 to AAAA, except on the first connection: [`OverTcp::Mute`].
    AaaaMuteFirst,
}

/// A running fake DNS server.
pub struct FakeDns {
    pub addr: SocketAddr,
    queries: Arc<Mutex<HashMap<String, usize>>>,
}

impl FakeDns {
    /// A-queries seen for `name` (without trailing dot).
    pub fn queries(&self, name: &str) -> usize {
        *self.queries.lock().unwrap().get(name).unwrap_or(&0)
    }
}

/// Starts the server with `zone` (names without trailing dot).
pub async fn spawn(zone: Vec<(&str, Answer)>) -> FakeDns {
    let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = sock.local_addr().unwrap();
    let zone: HashMap<String, (Answer, AtomicUsize)> =
        zone.into_iter().map(|(n, a)| (n.to_string(), (a, AtomicUsize::new(0)))).collect();
    let queries = Arc::new(Mutex::new(HashMap::new()));
    let q2 = queries.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else { return };
            let Some((name, qtype, qend)) = parse_question(&buf[..n]) else { continue };
            let reply = match zone.get(&name) {
                Some((Answer::Silent, _)) => {
                    let family = if qtype == 1 { "A" } else { "AAAA" };
                    *q2.lock().unwrap().entry(format!("{name} silent {family}")).or_insert(0) += 1;
                    continue;
                }
                Some((Answer::NoAaaa(..) | Answer::NxNoAaaa, _)) if qtype != 1 => {
                    *q2.lock().unwrap().entry(format!("{name} silent AAAA")).or_insert(0) += 1;
                    continue;
                }
                Some((Answer::NxNoAaaa, _)) => response(&buf[..qend], 3, &[], 0),
                Some((Answer::AaaaTcpMuteFirst(ips), _)) if qtype == 1 => {
                    response(&buf[..qend], 0, &octets(ips), 60)
                }
                Some((Answer::TcpMute, _)) if qtype != 1 => {
                    response(&buf[..qend], 0, &[Ipv6Addr::LOCALHOST.octets().to_vec()], 60)
                }
                Some((
                    Answer::Truncated
                    | Answer::TcpOnly(..)
                    | Answer::TcpCloses
                    | Answer::TcpClosesFirst(_)
                    | Answer::TcpMute
                    | Answer::AaaaTcpMuteFirst(_),
                    _,
                )) => {
                    let mut r = response(&buf[..qend], 0, &[], 0);
                    r[2] |= 0x02; // TC
                    r
                }
                Some((Answer::LateA(ips, delay), _)) if qtype == 1 => {
                    let (reply, delay, sock) =
                        (response(&buf[..qend], 0, &octets(ips), 60), *delay, sock.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                        let _ = sock.send_to(&reply, peer).await;
                    });
                    continue;
                }
                Some((Answer::LateA(..), _)) => response(&buf[..qend], 3, &[], 0),
                Some((Answer::LateAaaa(v4, _, _), _)) if qtype == 1 => {
                    response(&buf[..qend], 0, &octets(v4), 60)
                }
                Some((Answer::LateAaaa(_, v6, delay), _)) => {
                    *q2.lock().unwrap().entry(format!("{name} AAAA")).or_insert(0) += 1;
                    let v6: Vec<Vec<u8>> = v6.iter().map(|ip| ip.octets().to_vec()).collect();
                    let (reply, delay, sock) = (response(&buf[..qend], 0, &v6, 60), *delay, sock.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                        let _ = sock.send_to(&reply, peer).await;
                    });
                    continue;
                }
                Some((Answer::NoAaaa(ips, ttl), _)) => {
                    *q2.lock().unwrap().entry(name.clone()).or_insert(0) += 1;
                    response(&buf[..qend], 0, &octets(ips), *ttl)
                }
                Some((Answer::FirstLost(ips, ttl), seen)) => {
                    *q2.lock().unwrap().entry(name.clone()).or_insert(0) += 1;
                    // Counts A (1) and AAAA (28) queries in separate halves.
                    let count = seen.fetch_add(if qtype == 1 { 1 } else { 1 << 16 }, Ordering::SeqCst);
                    if (qtype == 1 && count & 0xffff == 0) || (qtype != 1 && count >> 16 == 0) {
                        continue;
                    }
                    let answer = if qtype == 1 { octets(ips) } else { Vec::new() };
                    response(&buf[..qend], 0, &answer, *ttl)
                }
                Some((Answer::NoDataSoa(ips, ttl, _), _)) if qtype == 1 => {
                    response(&buf[..qend], 0, &octets(ips), *ttl)
                }
                Some((Answer::NoDataSoa(_, _, negative_ttl), _)) => {
                    *q2.lock().unwrap().entry(format!("{name} AAAA")).or_insert(0) += 1;
                    with_soa(response(&buf[..qend], 0, &[], 0), *negative_ttl)
                }
                Some((Answer::ForgedFirst(ips), _)) => {
                    let answer = if qtype == 1 { octets(ips) } else { Vec::new() };
                    let reply = response(&buf[..qend], 0, &answer, 60);
                    let mut forged = reply.clone();
                    forged[1] = forged[1].wrapping_add(1);
                    let _ = sock.send_to(&forged, peer).await;
                    reply
                }
                Some((Answer::Dual(v4, v6, ttl), _)) => {
                    let v6: Vec<Vec<u8>> = v6.iter().map(|ip| ip.octets().to_vec()).collect();
                    let answer = if qtype == 1 { octets(v4) } else { v6 };
                    response(&buf[..qend], 0, &answer, *ttl)
                }
                Some((Answer::NxSoaNoAaaa(_), _)) if qtype != 1 => continue,
                Some((Answer::NxDomainSoa(negative_ttl) | Answer::NxSoaNoAaaa(negative_ttl), _)) => {
                    *q2.lock().unwrap().entry(format!("{name} nx")).or_insert(0) += 1;
                    with_soa(response(&buf[..qend], 3, &[], 0), *negative_ttl)
                }
                Some((Answer::Cname(target, ttl), _)) => cname(&buf[..qend], target, *ttl),
                None | Some((Answer::NxDomain, _)) => response(&buf[..qend], 3, &[], 0),
                Some((Answer::A(sets, ttl), next)) => {
                    if qtype == 1 {
                        *q2.lock().unwrap().entry(name.clone()).or_insert(0) += 1;
                        let i = next.fetch_add(1, Ordering::SeqCst) % sets.len();
                        response(&buf[..qend], 0, &octets(&sets[i]), *ttl)
                    } else {
                        response(&buf[..qend], 0, &[], *ttl)
                    }
                }
            };
            let _ = sock.send_to(&reply, peer).await;
        }
    });
    FakeDns { addr, queries }
}

/// Like [`spawn`], and also listening for TCP on the same port, where it
/// answers [`Answer::TcpOnly`] names (after their delay, each query on its
/// own, many at once on one connection), closes the connection on a query
/// for an [`Answer::TcpCloses`] name (or an [`Answer::TcpClosesFirst`] one
/// on the first connection), and says NXDOMAIN to the others.
pub async fn spawn_with_tcp(zone: Vec<(&str, Answer)>) -> FakeDns {
    let tcp_zone: HashMap<String, OverTcp> = zone
        .iter()
        .filter_map(|(n, a)| match a {
            Answer::TcpOnly(ips, delay) => Some((n.to_string(), OverTcp::Answer(ips.clone(), *delay))),
            Answer::TcpCloses => Some((n.to_string(), OverTcp::Close)),
            Answer::TcpClosesFirst(ips) => Some((n.to_string(), OverTcp::CloseFirst(ips.clone()))),
            Answer::TcpMute => Some((n.to_string(), OverTcp::Mute)),
            Answer::AaaaTcpMuteFirst(_) => Some((n.to_string(), OverTcp::AaaaMuteFirst)),
            _ => None,
        })
        .collect();
    let tcp_zone = Arc::new(tcp_zone);
    let (fake, listener) = loop {
        let fake = spawn(zone.clone()).await;
        if let Ok(l) = tokio::net::TcpListener::bind(fake.addr).await {
            break (fake, l);
        }
    };
    let queries = fake.queries.clone();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((stream, _)) = listener.accept().await {
            let (zone, queries) = (tcp_zone.clone(), queries.clone());
            tokio::spawn(serve_tcp(stream, zone, queries, std::mem::take(&mut first)));
        }
    });
    fake
}

/// One TCP connection: length-prefixed queries (RFC 1035 §4.2.2), each
/// answered on its own after its name's delay.
async fn serve_tcp(
    stream: tokio::net::TcpStream,
    zone: Arc<HashMap<String, OverTcp>>,
    queries: Arc<Mutex<HashMap<String, usize>>>,
    first: bool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut rd, wr) = stream.into_split();
    let wr = Arc::new(tokio::sync::Mutex::new(wr));
    let mut mute = false;
    loop {
        let mut len = [0u8; 2];
        if rd.read_exact(&mut len).await.is_err() {
            return;
        }
        let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
        if rd.read_exact(&mut msg).await.is_err() {
            return;
        }
        let Some((name, qtype, qend)) = parse_question(&msg) else { return };
        if zone.contains_key(&name) {
            *queries.lock().unwrap().entry(name.clone()).or_insert(0) += 1;
        }
        mute |= matches!(zone.get(&name), Some(OverTcp::Mute))
            || (first && matches!(zone.get(&name), Some(OverTcp::AaaaMuteFirst)));
        if mute {
            // Kept open, never written to again (the writer is held).
            continue;
        }
        // A records to A, an empty answer to AAAA.
        let answer = |ips: &[Ipv4Addr]| {
            response(&msg[..qend], 0, &if qtype == 1 { octets(ips) } else { Vec::new() }, 60)
        };
        let (reply, delay) = match zone.get(&name) {
            Some(OverTcp::Close) => return,
            Some(OverTcp::CloseFirst(_)) if first => return,
            Some(OverTcp::CloseFirst(ips)) => (answer(ips), 0),
            Some(OverTcp::Answer(ips, delay)) => (answer(ips), *delay),
            Some(OverTcp::Mute) => continue,
            Some(OverTcp::AaaaMuteFirst) => {
                (response(&msg[..qend], 0, &[Ipv6Addr::LOCALHOST.octets().to_vec()], 60), 0)
            }
            None => (response(&msg[..qend], 3, &[], 0), 0),
        };
        // Length-prefixed, each answer on its own (after its delay).
        let framed = [&(reply.len() as u16).to_be_bytes()[..], &reply].concat();
        let wr = wr.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
            let _ = wr.lock().await.write_all(&framed).await;
        });
    }
}

/// (lower-case name, qtype, end of the question section).
fn parse_question(msg: &[u8]) -> Option<(String, u16, usize)> {
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *msg.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(msg.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*msg.get(i)?, *msg.get(i + 1)?]);
    Some((labels.join("."), qtype, i + 4))
}

fn octets(ips: &[Ipv4Addr]) -> Vec<Vec<u8>> {
    ips.iter().map(|ip| ip.octets().to_vec()).collect()
}

/// An answer to `query` with one record per address (4 bytes: A, 16: AAAA).
fn response(query: &[u8], rcode: u8, ips: &[Vec<u8>], ttl: u32) -> Vec<u8> {
    let mut r = Vec::with_capacity(query.len() + ips.len() * 28);
    r.extend_from_slice(&query[..2]); // id
    r.extend_from_slice(&[0x84 | (query[2] & 0x01), 0x80 | rcode]); // QR AA RD, RA rcode
    r.extend_from_slice(&[0, 1]); // qdcount
    r.extend_from_slice(&(ips.len() as u16).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(&query[12..]);
    for ip in ips {
        let kind = if ip.len() == 4 { 1 } else { 28 };
        r.extend_from_slice(&[0xc0, 0x0c, 0, kind, 0, 1]);
        r.extend_from_slice(&ttl.to_be_bytes());
        r.extend_from_slice(&(ip.len() as u16).to_be_bytes());
        r.extend_from_slice(ip);
    }
    r
}

/// An answer to `query` of one CNAME record, to `target`.
fn cname(query: &[u8], target: &str, ttl: u32) -> Vec<u8> {
    let mut r = response(query, 0, &[], 0);
    r[7] = 1; // ancount
    let mut rdata = Vec::new();
    for label in target.split('.') {
        rdata.push(label.len() as u8);
        rdata.extend_from_slice(label.as_bytes());
    }
    rdata.push(0);
    r.extend_from_slice(&[0xc0, 0x0c, 0, 5, 0, 1]);
    r.extend_from_slice(&ttl.to_be_bytes());
    r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    r.extend_from_slice(&rdata);
    r
}

/// `reply` (without records) with an SOA record for the root in its
/// authority section, whose TTL and MINIMUM are `negative_ttl`: the
/// negative TTL of the answer (RFC 2308 §5).
fn with_soa(mut reply: Vec<u8>, negative_ttl: u32) -> Vec<u8> {
    reply[9] = 1; // nscount
    // Root owner, type SOA (6), class IN, TTL.
    reply.extend_from_slice(&[0, 0, 6, 0, 1]);
    reply.extend_from_slice(&negative_ttl.to_be_bytes());
    // MNAME and RNAME (both the root), then serial, refresh, retry, expire,
    // minimum.
    let mut rdata = vec![0, 0];
    for field in [1, 3600, 600, 86400, negative_ttl] {
        rdata.extend_from_slice(&u32::to_be_bytes(field));
    }
    reply.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    reply.extend_from_slice(&rdata);
    reply
}
