//! Reference implementations the checks compare the product against.
//!
//! Written independently of `egress_gate::addr`: a different algorithm (split, then
//! `from_str_radix` over whole parts; CIDR lists parsed by `ipnet`) and, for classification, the
//! IANA special-purpose registries as published plus the standard library's own predicates. When
//! the product and a reference disagree, one of them is wrong, and a person decides which.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use ipnet::{Ipv4Net, Ipv6Net};

/// Reads `s` as glibc `inet_aton` does, except that one trailing dot is accepted (as the root
/// label) and nothing after the address is ignored.
pub fn inet_aton(s: &str) -> Option<Ipv4Addr> {
    let s = s.strip_suffix('.').unwrap_or(s);
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let values = parts
        .iter()
        .map(|p| inet_aton_part(p))
        .collect::<Option<Vec<u64>>>()?;
    let (last, leading) = values.split_last()?;
    // The last part fills every byte the leading parts did not: 4 bytes for `a`, 1 for `a.b.c.d`.
    let last_bytes = 4 - leading.len();
    if *last >= 1u64 << (8 * last_bytes) {
        return None;
    }
    let mut bytes = [0u8; 4];
    for (i, v) in leading.iter().enumerate() {
        bytes[i] = u8::try_from(*v).ok()?;
    }
    let mut addr = u32::from_be_bytes(bytes);
    addr |= u32::try_from(*last).ok()?;
    Some(Ipv4Addr::from(addr))
}

fn inet_aton_part(p: &str) -> Option<u64> {
    let (digits, radix) = match p.get(..2) {
        Some("0x" | "0X") => (&p[2..], 16),
        _ if p.len() > 1 && p.starts_with('0') => (&p[1..], 8),
        _ => (p, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    // Leading zeros never change the value; beyond 12 significant digits every base overflows u32.
    let significant = digits.trim_start_matches('0');
    if significant.len() > 12 {
        return None;
    }
    let value = if significant.is_empty() {
        0
    } else {
        u64::from_str_radix(significant, radix).ok()?
    };
    (value <= u64::from(u32::MAX)).then_some(value)
}

/// IPv4 blocks that are not globally reachable (IANA IPv4 Special-Purpose Address Registry, the
/// multicast and reserved space), plus the anycast service blocks and cloud metadata endpoints the
/// product refuses on purpose (see `addr.rs`).
const V4_NON_PUBLIC: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.31.196.0/24",
    "192.52.193.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "192.175.48.0/24",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "168.63.129.16/32",
];

/// Inside global unicast `2000::/3`, the blocks that are not public: IETF protocol assignments
/// (with Teredo), documentation, 6to4, the AS112 delegation and the 3fff::/20 documentation block.
/// Everything outside `2000::/3` is non-public, which covers every other IPv4-embedding prefix.
const V6_NON_PUBLIC_IN_GLOBAL: &[&str] = &[
    "2001::/23",
    "2001:db8::/32",
    "2002::/16",
    "2620:4f:8000::/48",
    "3fff::/20",
];

fn v4_blocks() -> &'static [Ipv4Net] {
    static BLOCKS: OnceLock<Vec<Ipv4Net>> = OnceLock::new();
    BLOCKS.get_or_init(|| V4_NON_PUBLIC.iter().map(|s| s.parse().unwrap()).collect())
}

fn v6_blocks() -> &'static [Ipv6Net] {
    static BLOCKS: OnceLock<Vec<Ipv6Net>> = OnceLock::new();
    BLOCKS.get_or_init(|| {
        V6_NON_PUBLIC_IN_GLOBAL
            .iter()
            .map(|s| s.parse().unwrap())
            .collect()
    })
}

/// Whether the reference considers `ip` public (dialable without an exception).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let std_says_internal = a.is_private()
                || a.is_loopback()
                || a.is_link_local()
                || a.is_multicast()
                || a.is_broadcast()
                || a.is_documentation()
                || a.is_unspecified();
            let listed = v4_blocks().iter().any(|n| n.contains(&a));
            assert!(
                listed || !std_says_internal,
                "reference table misses {a}, which std calls internal"
            );
            !listed
        }
        IpAddr::V6(a) => {
            let std_says_internal = a.is_loopback()
                || a.is_multicast()
                || a.is_unspecified()
                || a.is_unique_local()
                || a.is_unicast_link_local()
                || a.to_ipv4_mapped().is_some();
            let global_unicast = a.segments()[0] & 0xe000 == 0x2000;
            let listed = v6_blocks().iter().any(|n| n.contains(&a));
            let public = global_unicast && !listed;
            assert!(
                !(public && std_says_internal),
                "reference calls {a} public, std calls it internal"
            );
            public
        }
    }
}

/// Every IPv6 form that embeds `v4` (mapped, compatible, translated, NAT64 well-known and local,
/// 6to4, Teredo with the client address obfuscated): each must be non-public on its own.
pub fn embedded_forms(v4: Ipv4Addr) -> [Ipv6Addr; 7] {
    let [a, b, c, d] = v4.octets();
    let hi = u16::from_be_bytes([a, b]);
    let lo = u16::from_be_bytes([c, d]);
    [
        v4.to_ipv6_mapped(),
        Ipv6Addr::new(0, 0, 0, 0, 0, 0, hi, lo),
        Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, hi, lo),
        Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, hi, lo),
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, hi, lo),
        Ipv6Addr::new(0x2002, hi, lo, 0, 0, 0, 0, 1),
        Ipv6Addr::new(0x2001, 0, 0x4136, 0xe378, 0x8000, 0x63bf, !hi, !lo),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_inet_aton_reads_the_usual_spellings() {
        for s in ["2130706433", "0x7f.1", "0177.0.0.1", "127.1", "127.0.0.1."] {
            assert_eq!(inet_aton(s), Some(Ipv4Addr::LOCALHOST), "{s}");
        }
        for s in ["", ".", "08", "0x", "1.2.3.4.5", "256.1.1.1", "+1", "1..1"] {
            assert_eq!(inet_aton(s), None, "{s}");
        }
    }
}
