//! A list of CIDR blocks asked, for an address, which of them holds it, in
//! time that does not grow with the list.
//!
//! A rule's `cidrs` and `[egress] allow_cidrs` were scanned whole for every
//! address of every request, on the runtime's threads: with a blocklist of
//! 100,000 blocks, a name of 64 addresses cost 8.8 ms a request, and 2.4
//! million blocks held other clients' answers for seconds (probe 339).
//!
//! Two blocks are either apart or one holds the other, so the blocks that
//! hold an address are one per prefix length at most: the address masked to
//! each length the list uses is looked up among the blocks of that length
//! (sorted, by binary search). A short list is scanned, as before.

use std::net::IpAddr;

use ipnet::IpNet;

/// Lists this long or shorter are scanned: a lookup per prefix length
/// costs more than a few comparisons.
const SCANNED: usize = 16;

/// CIDR blocks in the order they were written.
#[derive(Debug, Clone)]
pub struct CidrSet {
    nets: Vec<IpNet>,
    /// For a longer list: its blocks by family and prefix length.
    index: Option<Box<Index>>,
}

/// The blocks of each prefix length used, as (network, position in the
/// list) sorted by network, each network once, at its first position.
#[derive(Debug, Clone)]
struct Index {
    v4: Vec<(u8, Vec<(u32, u32)>)>,
    v6: Vec<(u8, Vec<(u128, u32)>)>,
}

impl CidrSet {
    /// The set of `nets`, which keep their order.
    pub fn new(nets: Vec<IpNet>) -> Self {
        let index = (nets.len() > SCANNED).then(|| Box::new(Index::of(&nets)));
        CidrSet { nets, index }
    }

    /// The first block, in the order written, that holds `ip`.
    pub fn first_holding(&self, ip: IpAddr) -> Option<&IpNet> {
        let Some(index) = &self.index else {
            return self.nets.iter().find(|n| n.contains(&ip));
        };
        let at = match ip {
            IpAddr::V4(v4) => {
                first(&index.v4, u32::from(v4), |len| u32::MAX.checked_shl(32 - len).unwrap_or(0))
            }
            IpAddr::V6(v6) => {
                first(&index.v6, u128::from(v6), |len| u128::MAX.checked_shl(128 - len).unwrap_or(0))
            }
        };
        at.and_then(|i| self.nets.get(i))
    }

    /// Whether a block holds `ip`.
    pub fn holds(&self, ip: IpAddr) -> bool {
        self.first_holding(ip).is_some()
    }
}

/// The least position among the blocks of `by_len` that hold `addr`;
/// `mask` gives the mask of a prefix length.
fn first<T: Copy + Ord + std::ops::BitAnd<Output = T>>(
    by_len: &[(u8, Vec<(T, u32)>)],
    addr: T,
    mask: impl Fn(u32) -> T,
) -> Option<usize> {
    by_len
        .iter()
        .filter_map(|(len, blocks)| {
            let network = addr & mask(u32::from(*len));
            let i = blocks.binary_search_by_key(&network, |&(n, _)| n).ok()?;
            blocks.get(i).map(|&(_, at)| at as usize)
        })
        .min()
}

impl Index {
    fn of(nets: &[IpNet]) -> Index {
        let mut v4: Vec<(u8, u32, u32)> = Vec::new();
        let mut v6: Vec<(u8, u128, u32)> = Vec::new();
        for (at, net) in nets.iter().enumerate() {
            // (A list this long is refused long before: the config's weight.)
            let at = u32::try_from(at).unwrap_or(u32::MAX);
            match net {
                IpNet::V4(n) => v4.push((n.prefix_len(), u32::from(n.network()), at)),
                IpNet::V6(n) => v6.push((n.prefix_len(), u128::from(n.network()), at)),
            }
        }
        Index { v4: by_len(v4), v6: by_len(v6) }
    }
}

/// `(length, network, position)` grouped by length, sorted by network, the
/// first position of each network kept.
fn by_len<T: Copy + Ord>(mut blocks: Vec<(u8, T, u32)>) -> Vec<(u8, Vec<(T, u32)>)> {
    blocks.sort_unstable();
    blocks.dedup_by_key(|&mut (len, network, _)| (len, network));
    let mut out: Vec<(u8, Vec<(T, u32)>)> = Vec::new();
    for (len, network, at) in blocks {
        match out.last_mut() {
            Some((l, list)) if *l == len => list.push((network, at)),
            _ => out.push((len, vec![(network, at)])),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The indexed lookup answers as the scan does, first block in the
    /// order written included, for both families and nested blocks.
    #[test]
    fn the_index_answers_as_a_scan_does() {
        let mut nets: Vec<IpNet> = [
            "10.0.0.0/8",
            "10.1.0.0/16",
            "10.1.2.0/24",
            "10.1.2.3/32",
            "0.0.0.0/0",
            "192.168.0.0/16",
            "10.1.0.0/16",
            "2001:db8::/32",
            "2001:db8:1::/48",
            "::/0",
            "::1/128",
            "172.16.5.0/24",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        // Past the length that is scanned, and in another order too.
        nets.extend(
            (0..40u32)
                .map(|i| IpNet::from(ipnet::Ipv4Net::new((0x0b00_0000 + (i << 8)).into(), 24).unwrap())),
        );
        for order in [nets.clone(), nets.iter().rev().copied().collect()] {
            let indexed = CidrSet::new(order.clone());
            assert!(indexed.index.is_some());
            let probes = [
                "10.1.2.3",
                "10.1.2.4",
                "10.1.9.9",
                "10.9.9.9",
                "11.0.5.1",
                "11.0.40.1",
                "192.168.1.1",
                "8.8.8.8",
                "2001:db8:1::5",
                "2001:db8:2::5",
                "::1",
                "fe80::1",
                "0.0.0.0",
                "255.255.255.255",
            ];
            for probe in probes {
                let ip: IpAddr = probe.parse().unwrap();
                let scanned = order.iter().find(|n| n.contains(&ip));
                assert_eq!(indexed.first_holding(ip), scanned, "{probe}");
            }
        }
        // Without `0.0.0.0/0`, an address outside every block is in none.
        let set = CidrSet::new(nets.iter().filter(|n| n.prefix_len() > 0).copied().collect());
        assert!(!set.holds("8.8.8.8".parse().unwrap()));
        assert!(!set.holds("fe80::1".parse().unwrap()));
        assert!(set.holds("11.0.39.200".parse().unwrap()));
    }
}
