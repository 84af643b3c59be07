//! Address policy primitives: "is this IP public?" and "what IPv4 address would
//! a C resolver read from this host string?".
//!
//! This module owns:
//!
//! * the list of non-public address blocks ([`classify`]): every block of the
//!   IANA IPv4 and IPv6 Special-Purpose Address Registries that is not
//!   globally reachable, plus a few deliberate extras (cloud metadata
//!   endpoints, anycast service blocks, everything outside IPv6 global
//!   unicast `2000::/3`, and every IPv6 prefix that embeds an IPv4 address);
//! * the inet_aton-style reading of numeric host strings
//!   ([`parse_ipv4_loose`], [`looks_numeric_but_invalid`]), so that a host such
//!   as `0x7f.1` is recognised as `127.0.0.1` instead of being sent to DNS.
//!
//! It must never resolve names, perform I/O, read configuration or the
//! environment, allocate, or panic. Every function here is pure and
//! deterministic; `classify` runs on every dial and is a short linear scan of
//! constant tables using mask arithmetic.
//!
//! Policy is fail-closed: when in doubt an address is non-public. In
//! particular IPv4-mapped, IPv4-compatible, IPv4-translated, NAT64, 6to4 and
//! Teredo addresses are non-public whatever IPv4 address they embed, so a
//! caller never needs to unwrap an embedded address to be safe.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is not public: the registry block it falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NonPublic {
    /// The matching block in CIDR notation, e.g. `"127.0.0.0/8"`.
    pub block: &'static str,
    /// Short human-readable name of the block, e.g. `"loopback"`.
    pub name: &'static str,
}

/// Result of [`classify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Globally reachable unicast address; the proxy may dial it.
    Public,
    /// Not public; the proxy must refuse to dial it.
    NonPublic(NonPublic),
}

/// Classifies `ip` as public or non-public.
///
/// Pure, allocation-free and constant-time in practice (a scan of a few dozen
/// table entries). The most specific matching block is reported, e.g.
/// `169.254.169.254` is "cloud metadata" rather than "link-local".
pub fn classify(ip: IpAddr) -> Class {
    let hit = match ip {
        IpAddr::V4(v4) => lookup_v4(v4),
        IpAddr::V6(v6) => lookup_v6(v6),
    };
    match hit {
        Some(info) => Class::NonPublic(info),
        None => Class::Public,
    }
}

/// Parses `s` the way a C resolver (`inet_aton`) reads an IPv4 address.
///
/// Accepts 1 to 4 dot-separated parts. Each part is decimal, octal (leading
/// `0`, e.g. `0177`; `0` and `00` are zero) or hexadecimal (`0x`/`0X` prefix
/// followed by at least one hex digit). All parts but the last are one byte
/// each; the last part fills the remaining bytes:
///
/// | form      | last part       |
/// |-----------|-----------------|
/// | `a.b.c.d` | `d` ≤ `0xff`    |
/// | `a.b.c`   | `c` ≤ `0xffff`  |
/// | `a.b`     | `b` ≤ `0xffffff`|
/// | `a`       | `a` ≤ `0xffffffff` |
///
/// A single trailing dot is ignored (`127.0.0.1.`), as resolvers treat it as
/// the root label. Returns `None` for anything else: empty parts, digits
/// invalid for their base (`08`), a bare `0x`, signs, whitespace, exponent
/// notation, more than four parts, or a value that overflows its position.
///
/// This matches glibc's `inet_aton` with two deliberate differences: glibc
/// rejects the trailing dot, and glibc ignores anything after the first
/// whitespace, which is an error here.
pub fn parse_ipv4_loose(s: &str) -> Option<Ipv4Addr> {
    let s = s.strip_suffix('.').unwrap_or(s);

    let mut parts = [0u32; 4];
    let mut count = 0usize;
    for part in s.split('.') {
        if count == parts.len() {
            return None;
        }
        parts[count] = parse_part(part)?;
        count += 1;
    }
    // `split` always yields at least one item, so `count >= 1` here.
    let (leading, last) = parts[..count].split_at(count - 1);
    let last = last[0];

    let mut bits: u32 = 0;
    for (i, &byte) in leading.iter().enumerate() {
        if byte > 0xff {
            return None;
        }
        bits |= byte << (24 - 8 * i);
    }
    // Bytes left for the last part: 4 for `a`, 3 for `a.b`, 2 for `a.b.c`, 1 for `a.b.c.d`.
    let last_bits = 8 * (5 - count) as u32;
    if u64::from(last) >> last_bits != 0 {
        return None;
    }
    Some(Ipv4Addr::from_bits(bits | last))
}

/// Returns true if `s` looks like a numeric IPv4 spelling but is not one that
/// [`parse_ipv4_loose`] accepts, e.g. `08.0.0.1`, `1.2.3.4.5`, `256.1.1.1`,
/// `0x1g.1`.
///
/// Rule: after stripping one trailing dot, the last dot-separated label is
/// non-empty and starts with an ASCII digit, and `parse_ipv4_loose(s)` is
/// `None`. No real top-level domain starts with a digit, so callers should
/// reject such hosts as malformed instead of sending them to DNS, where a
/// resolver might read them differently.
///
/// Callers must handle IPv6 literals before calling this: a string such as
/// `::ffff:1.2.3.4` also returns true.
pub fn looks_numeric_but_invalid(s: &str) -> bool {
    let trimmed = s.strip_suffix('.').unwrap_or(s);
    let last_label = trimmed.rsplit('.').next().unwrap_or("");
    last_label
        .as_bytes()
        .first()
        .is_some_and(u8::is_ascii_digit)
        && parse_ipv4_loose(s).is_none()
}

/// Parses one inet_aton part: decimal, `0`-prefixed octal or `0x`-prefixed hex.
/// Rejects empty parts, invalid digits and values above `u32::MAX`.
fn parse_part(part: &str) -> Option<u32> {
    let bytes = part.as_bytes();
    let (digits, radix) = if let Some(hex) = bytes
        .strip_prefix(b"0x")
        .or_else(|| bytes.strip_prefix(b"0X"))
    {
        (hex, 16)
    } else if bytes.len() > 1 && bytes[0] == b'0' {
        (&bytes[1..], 8)
    } else {
        (bytes, 10)
    };
    if digits.is_empty() {
        return None;
    }
    let mut value: u32 = 0;
    for &b in digits {
        // `to_digit` only accepts ASCII digits/letters valid for `radix`.
        let digit = char::from(b).to_digit(radix)?;
        value = value.checked_mul(radix)?.checked_add(digit)?;
    }
    Some(value)
}

// ---------------------------------------------------------------------------
// Block tables
// ---------------------------------------------------------------------------

/// [`NonPublic::name`] of every cloud instance-metadata endpoint (AWS/GCP/Azure
/// IMDS, AWS ECS, Alibaba, Oracle, Azure wire server, AWS IMDS over IPv6).
/// Callers compare against this to keep metadata blocked even when other
/// non-public space is allowed.
pub const CLOUD_METADATA: &str = "cloud metadata";
/// Name for IPv6 space outside global unicast that has no more specific entry.
const NOT_GLOBAL_UNICAST: &str = "not global unicast (outside 2000::/3)";

/// One IPv4 table row: `network/prefix_len`, its CIDR text and its name.
struct V4Block {
    network: u32,
    prefix_len: u8,
    info: NonPublic,
}

/// One IPv6 table row: `network/prefix_len`, its CIDR text and its name.
struct V6Block {
    network: u128,
    prefix_len: u8,
    info: NonPublic,
}

const fn mask_v4(prefix_len: u8) -> u32 {
    if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - prefix_len as u32)
    }
}

const fn mask_v6(prefix_len: u8) -> u128 {
    if prefix_len == 0 {
        0
    } else {
        u128::MAX << (128 - prefix_len as u32)
    }
}

/// Builds an IPv4 row; rejects (at compile time, since the tables are
/// `const`) prefix lengths over 32 and networks with host bits set.
const fn v4(octets: [u8; 4], prefix_len: u8, block: &'static str, name: &'static str) -> V4Block {
    assert!(prefix_len <= 32, "IPv4 prefix length over 32");
    let network = u32::from_be_bytes(octets);
    assert!(
        network & !mask_v4(prefix_len) == 0,
        "IPv4 network has host bits set"
    );
    V4Block {
        network,
        prefix_len,
        info: NonPublic { block, name },
    }
}

/// Builds an IPv6 row; rejects (at compile time) prefix lengths over 128 and
/// networks with host bits set.
const fn v6(
    segments: [u16; 8],
    prefix_len: u8,
    block: &'static str,
    name: &'static str,
) -> V6Block {
    assert!(prefix_len <= 128, "IPv6 prefix length over 128");
    let [a, b, c, d, e, f, g, h] = segments;
    let network = Ipv6Addr::new(a, b, c, d, e, f, g, h).to_bits();
    assert!(
        network & !mask_v6(prefix_len) == 0,
        "IPv6 network has host bits set"
    );
    V6Block {
        network,
        prefix_len,
        info: NonPublic { block, name },
    }
}

/// Non-public IPv4 blocks, matched first to last. A more specific block must
/// come before any block that contains it (checked by a unit test), so that
/// the reported name is the most precise one.
///
/// Deliberate choices beyond "registry says not globally reachable":
/// * `192.0.0.0/24` is non-public as a whole, including `192.0.0.9/32` (PCP
///   anycast) and `192.0.0.10/32` (TURN anycast), which the registry marks
///   globally reachable: a forward proxy has no business dialling them and a
///   single /24 is simpler to audit.
/// * `192.31.196.0/24`, `192.52.193.0/24`, `192.175.48.0/24` (AS112, AMT)
///   are anycast service blocks, registry-reachable but never a legitimate
///   egress destination.
/// * `192.88.99.0/24` is the deprecated 6to4 relay anycast block.
/// * `224.0.0.0/4` multicast (its own IANA registry).
/// * Cloud metadata endpoints, including `168.63.129.16` in public space.
#[rustfmt::skip]
const V4_BLOCKS: &[V4Block] = &[
    // Cloud metadata endpoints: before any enclosing block.
    v4([169, 254, 169, 254], 32, "169.254.169.254/32", CLOUD_METADATA), // AWS, GCP, Azure, ...
    v4([169, 254, 170, 2],   32, "169.254.170.2/32",   CLOUD_METADATA), // AWS ECS task metadata
    v4([100, 100, 100, 200], 32, "100.100.100.200/32", CLOUD_METADATA), // Alibaba Cloud
    v4([192, 0, 0, 192],     32, "192.0.0.192/32",     CLOUD_METADATA), // Oracle Cloud
    v4([168, 63, 129, 16],   32, "168.63.129.16/32",   CLOUD_METADATA), // Azure wire server
    // IANA IPv4 Special-Purpose Address Registry (+ multicast), ascending.
    v4([0, 0, 0, 0],         8,  "0.0.0.0/8",          "this network"),
    v4([10, 0, 0, 0],        8,  "10.0.0.0/8",         "private-use"),
    v4([100, 64, 0, 0],      10, "100.64.0.0/10",      "shared address space"),
    v4([127, 0, 0, 0],       8,  "127.0.0.0/8",        "loopback"),
    v4([169, 254, 0, 0],     16, "169.254.0.0/16",     "link-local"),
    v4([172, 16, 0, 0],      12, "172.16.0.0/12",      "private-use"),
    v4([192, 0, 0, 0],       24, "192.0.0.0/24",       "IETF protocol assignments"),
    v4([192, 0, 2, 0],       24, "192.0.2.0/24",       "documentation (TEST-NET-1)"),
    v4([192, 31, 196, 0],    24, "192.31.196.0/24",    "AS112-v4"),
    v4([192, 52, 193, 0],    24, "192.52.193.0/24",    "AMT"),
    v4([192, 88, 99, 0],     24, "192.88.99.0/24",     "deprecated 6to4 relay anycast"),
    v4([192, 168, 0, 0],     16, "192.168.0.0/16",     "private-use"),
    v4([192, 175, 48, 0],    24, "192.175.48.0/24",    "direct delegation AS112 service"),
    v4([198, 18, 0, 0],      15, "198.18.0.0/15",      "benchmarking"),
    v4([198, 51, 100, 0],    24, "198.51.100.0/24",    "documentation (TEST-NET-2)"),
    v4([203, 0, 113, 0],     24, "203.0.113.0/24",     "documentation (TEST-NET-3)"),
    v4([224, 0, 0, 0],       4,  "224.0.0.0/4",        "multicast"),
    v4([255, 255, 255, 255], 32, "255.255.255.255/32", "limited broadcast"), // before 240/4
    v4([240, 0, 0, 0],       4,  "240.0.0.0/4",        "reserved"),
];

/// Non-public IPv6 blocks, matched first to last; same ordering rule as
/// [`V4_BLOCKS`].
///
/// Deliberate choices beyond "registry says not globally reachable":
/// * `2001::/23` is non-public as a whole (it contains several registry
///   entries marked globally reachable, e.g. `2001:1::1/128` PCP anycast,
///   `2001:3::/32` AMT, `2001:4:112::/48` AS112-v6); `2001::/32` is named
///   "Teredo".
/// * Every prefix that embeds an IPv4 address (`::/96`, `::ffff:0:0/96`,
///   `::ffff:0:0:0/96`, `64:ff9b::/96`, `64:ff9b:1::/48`, `2001::/32`,
///   `2002::/16`) is non-public whatever the embedded address is.
/// * `2620:4f:8000::/48` (direct delegation AS112 service) mirrors the IPv4
///   `192.175.48.0/24` entry.
/// * Everything outside global unicast `2000::/3` is non-public; the last
///   three rows (`::/3`, `4000::/2`, `8000::/1`) are exactly the complement of
///   `2000::/3`, so they must stay last.
#[rustfmt::skip]
const V6_BLOCKS: &[V6Block] = &[
    // AWS IMDS over IPv6: before fc00::/7.
    v6([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254], 128, "fd00:ec2::254/128", CLOUD_METADATA),
    v6([0, 0, 0, 0, 0, 0, 0, 0],         128, "::/128",            "unspecified"),
    v6([0, 0, 0, 0, 0, 0, 0, 1],         128, "::1/128",           "loopback"),
    v6([0, 0, 0, 0, 0, 0, 0, 0],         96,  "::/96",             "ipv4-compatible (deprecated)"),
    v6([0, 0, 0, 0, 0, 0xffff, 0, 0],    96,  "::ffff:0:0/96",     "ipv4-mapped"),
    v6([0, 0, 0, 0, 0xffff, 0, 0, 0],    96,  "::ffff:0:0:0/96",   "ipv4-translated (deprecated)"),
    v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96,  "64:ff9b::/96",      "NAT64"),
    v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48,  "64:ff9b:1::/48",    "local-use NAT64"),
    v6([0x100, 0, 0, 0, 0, 0, 0, 0],     64,  "100::/64",          "discard-only"),
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0],    32,  "2001::/32",         "Teredo"), // before 2001::/23
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0],    23,  "2001::/23",         "IETF protocol assignments"),
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32, "2001:db8::/32",     "documentation"),
    v6([0x2002, 0, 0, 0, 0, 0, 0, 0],    16,  "2002::/16",         "6to4"),
    v6([0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0], 48, "2620:4f:8000::/48", "direct delegation AS112 service"),
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0],    20,  "3fff::/20",         "documentation"),
    v6([0x5f00, 0, 0, 0, 0, 0, 0, 0],    16,  "5f00::/16",         "SRv6 SIDs"),
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0],    7,   "fc00::/7",          "unique-local"),
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0],    10,  "fe80::/10",         "link-local"),
    v6([0xfec0, 0, 0, 0, 0, 0, 0, 0],    10,  "fec0::/10",         "site-local (deprecated)"),
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0],    8,   "ff00::/8",          "multicast"),
    // Complement of 2000::/3: must stay last.
    v6([0, 0, 0, 0, 0, 0, 0, 0],         3,   "::/3",              NOT_GLOBAL_UNICAST),
    v6([0x4000, 0, 0, 0, 0, 0, 0, 0],    2,   "4000::/2",          NOT_GLOBAL_UNICAST),
    v6([0x8000, 0, 0, 0, 0, 0, 0, 0],    1,   "8000::/1",          NOT_GLOBAL_UNICAST),
];

fn lookup_v4(ip: Ipv4Addr) -> Option<NonPublic> {
    let bits = ip.to_bits();
    V4_BLOCKS
        .iter()
        .find(|b| bits & mask_v4(b.prefix_len) == b.network)
        .map(|b| b.info)
}

fn lookup_v6(ip: Ipv6Addr) -> Option<NonPublic> {
    let bits = ip.to_bits();
    V6_BLOCKS
        .iter()
        .find(|b| bits & mask_v6(b.prefix_len) == b.network)
        .map(|b| b.info)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses a test address literal; panics on typos in the test tables.
    fn ip(s: &str) -> IpAddr {
        s.parse()
            .unwrap_or_else(|e| panic!("bad test literal {s:?}: {e}"))
    }

    /// Expected classification: `None` = public, else `(block, name)`.
    type Expect = Option<(&'static str, &'static str)>;

    fn expected(e: Expect) -> Class {
        match e {
            None => Class::Public,
            Some((block, name)) => Class::NonPublic(NonPublic { block, name }),
        }
    }

    fn check_table(table: &[(&str, Expect)]) {
        let mut failures = Vec::new();
        for &(addr, want) in table {
            let got = classify(ip(addr));
            if got != expected(want) {
                failures.push(format!("{addr}: got {got:?}, want {want:?}"));
            }
        }
        assert!(
            failures.is_empty(),
            "misclassified:\n{}",
            failures.join("\n")
        );
    }

    const PUB: Expect = None;
    const META4_AWS: Expect = Some(("169.254.169.254/32", CLOUD_METADATA));
    const META4_ECS: Expect = Some(("169.254.170.2/32", CLOUD_METADATA));
    const META4_ALI: Expect = Some(("100.100.100.200/32", CLOUD_METADATA));
    const META4_ORACLE: Expect = Some(("192.0.0.192/32", CLOUD_METADATA));
    const META4_AZURE: Expect = Some(("168.63.129.16/32", CLOUD_METADATA));
    const THIS_NET: Expect = Some(("0.0.0.0/8", "this network"));
    const TEN: Expect = Some(("10.0.0.0/8", "private-use"));
    const SHARED: Expect = Some(("100.64.0.0/10", "shared address space"));
    const LOOP4: Expect = Some(("127.0.0.0/8", "loopback"));
    const LINK4: Expect = Some(("169.254.0.0/16", "link-local"));
    const P172: Expect = Some(("172.16.0.0/12", "private-use"));
    const IETF4: Expect = Some(("192.0.0.0/24", "IETF protocol assignments"));
    const TEST1: Expect = Some(("192.0.2.0/24", "documentation (TEST-NET-1)"));
    const AS112: Expect = Some(("192.31.196.0/24", "AS112-v4"));
    const AMT: Expect = Some(("192.52.193.0/24", "AMT"));
    const RELAY: Expect = Some(("192.88.99.0/24", "deprecated 6to4 relay anycast"));
    const P192: Expect = Some(("192.168.0.0/16", "private-use"));
    const DD_AS112: Expect = Some(("192.175.48.0/24", "direct delegation AS112 service"));
    const BENCH: Expect = Some(("198.18.0.0/15", "benchmarking"));
    const TEST2: Expect = Some(("198.51.100.0/24", "documentation (TEST-NET-2)"));
    const TEST3: Expect = Some(("203.0.113.0/24", "documentation (TEST-NET-3)"));
    const MCAST4: Expect = Some(("224.0.0.0/4", "multicast"));
    const RESERVED: Expect = Some(("240.0.0.0/4", "reserved"));
    const BCAST: Expect = Some(("255.255.255.255/32", "limited broadcast"));

    #[test]
    fn ipv4_blocks_edges_and_neighbours() {
        check_table(&[
            // 0.0.0.0/8
            ("0.0.0.0", THIS_NET),
            ("0.255.255.255", THIS_NET),
            ("1.0.0.0", PUB),
            // 10.0.0.0/8
            ("9.255.255.255", PUB),
            ("10.0.0.0", TEN),
            ("10.255.255.255", TEN),
            ("11.0.0.0", PUB),
            // 100.64.0.0/10 with Alibaba metadata inside
            ("100.63.255.255", PUB),
            ("100.64.0.0", SHARED),
            ("100.127.255.255", SHARED),
            ("100.128.0.0", PUB),
            ("100.100.100.199", SHARED),
            ("100.100.100.200", META4_ALI),
            ("100.100.100.201", SHARED),
            // 127.0.0.0/8
            ("126.255.255.255", PUB),
            ("127.0.0.0", LOOP4),
            ("127.0.0.1", LOOP4),
            ("127.255.255.255", LOOP4),
            ("128.0.0.0", PUB),
            // Azure wire server in public space
            ("168.63.129.15", PUB),
            ("168.63.129.16", META4_AZURE),
            ("168.63.129.17", PUB),
            // 169.254.0.0/16 with AWS/GCP/Azure IMDS and ECS inside
            ("169.253.255.255", PUB),
            ("169.254.0.0", LINK4),
            ("169.254.255.255", LINK4),
            ("169.255.0.0", PUB),
            ("169.254.169.253", LINK4),
            ("169.254.169.254", META4_AWS),
            ("169.254.169.255", LINK4),
            ("169.254.170.1", LINK4),
            ("169.254.170.2", META4_ECS),
            ("169.254.170.3", LINK4),
            // 172.16.0.0/12
            ("172.15.255.255", PUB),
            ("172.16.0.0", P172),
            ("172.31.255.255", P172),
            ("172.32.0.0", PUB),
            // 192.0.0.0/24 (whole block, incl. .9/.10) with Oracle metadata
            ("191.255.255.255", PUB),
            ("192.0.0.0", IETF4),
            ("192.0.0.9", IETF4),
            ("192.0.0.10", IETF4),
            ("192.0.0.170", IETF4),
            ("192.0.0.191", IETF4),
            ("192.0.0.192", META4_ORACLE),
            ("192.0.0.193", IETF4),
            ("192.0.0.255", IETF4),
            ("192.0.1.0", PUB),
            // 192.0.2.0/24
            ("192.0.1.255", PUB),
            ("192.0.2.0", TEST1),
            ("192.0.2.255", TEST1),
            ("192.0.3.0", PUB),
            // 192.31.196.0/24
            ("192.31.195.255", PUB),
            ("192.31.196.0", AS112),
            ("192.31.196.255", AS112),
            ("192.31.197.0", PUB),
            // 192.52.193.0/24
            ("192.52.192.255", PUB),
            ("192.52.193.0", AMT),
            ("192.52.193.255", AMT),
            ("192.52.194.0", PUB),
            // 192.88.99.0/24
            ("192.88.98.255", PUB),
            ("192.88.99.0", RELAY),
            ("192.88.99.255", RELAY),
            ("192.88.100.0", PUB),
            // 192.168.0.0/16
            ("192.167.255.255", PUB),
            ("192.168.0.0", P192),
            ("192.168.255.255", P192),
            ("192.169.0.0", PUB),
            // 192.175.48.0/24
            ("192.175.47.255", PUB),
            ("192.175.48.0", DD_AS112),
            ("192.175.48.255", DD_AS112),
            ("192.175.49.0", PUB),
            // 198.18.0.0/15
            ("198.17.255.255", PUB),
            ("198.18.0.0", BENCH),
            ("198.19.255.255", BENCH),
            ("198.20.0.0", PUB),
            // 198.51.100.0/24
            ("198.51.99.255", PUB),
            ("198.51.100.0", TEST2),
            ("198.51.100.255", TEST2),
            ("198.51.101.0", PUB),
            // 203.0.113.0/24
            ("203.0.112.255", PUB),
            ("203.0.113.0", TEST3),
            ("203.0.113.255", TEST3),
            ("203.0.114.0", PUB),
            // 224.0.0.0/4
            ("223.255.255.255", PUB),
            ("224.0.0.0", MCAST4),
            ("239.255.255.255", MCAST4),
            // 240.0.0.0/4 and 255.255.255.255/32
            ("240.0.0.0", RESERVED),
            ("255.255.255.254", RESERVED),
            ("255.255.255.255", BCAST),
        ]);
    }

    const META6_AWS: Expect = Some(("fd00:ec2::254/128", CLOUD_METADATA));
    const UNSPEC6: Expect = Some(("::/128", "unspecified"));
    const LOOP6: Expect = Some(("::1/128", "loopback"));
    const COMPAT: Expect = Some(("::/96", "ipv4-compatible (deprecated)"));
    const MAPPED: Expect = Some(("::ffff:0:0/96", "ipv4-mapped"));
    const TRANSLATED: Expect = Some(("::ffff:0:0:0/96", "ipv4-translated (deprecated)"));
    const NAT64: Expect = Some(("64:ff9b::/96", "NAT64"));
    const NAT64_LOCAL: Expect = Some(("64:ff9b:1::/48", "local-use NAT64"));
    const DISCARD: Expect = Some(("100::/64", "discard-only"));
    const TEREDO: Expect = Some(("2001::/32", "Teredo"));
    const IETF6: Expect = Some(("2001::/23", "IETF protocol assignments"));
    const DOC6: Expect = Some(("2001:db8::/32", "documentation"));
    const SIX_TO_FOUR: Expect = Some(("2002::/16", "6to4"));
    const DD_AS112_6: Expect = Some(("2620:4f:8000::/48", "direct delegation AS112 service"));
    const DOC6_3FFF: Expect = Some(("3fff::/20", "documentation"));
    const SRV6: Expect = Some(("5f00::/16", "SRv6 SIDs"));
    const ULA: Expect = Some(("fc00::/7", "unique-local"));
    const LINK6: Expect = Some(("fe80::/10", "link-local"));
    const SITE6: Expect = Some(("fec0::/10", "site-local (deprecated)"));
    const MCAST6: Expect = Some(("ff00::/8", "multicast"));
    const OUT_LOW: Expect = Some(("::/3", NOT_GLOBAL_UNICAST));
    const OUT_4000: Expect = Some(("4000::/2", NOT_GLOBAL_UNICAST));
    const OUT_8000: Expect = Some(("8000::/1", NOT_GLOBAL_UNICAST));

    #[test]
    fn ipv6_blocks_edges_and_neighbours() {
        check_table(&[
            // ::/128, ::1/128, ::/96
            ("::", UNSPEC6),
            ("::1", LOOP6),
            ("::2", COMPAT),
            ("::8.8.8.8", COMPAT),
            ("::ffff:ffff", COMPAT),
            ("::1:0:0", OUT_LOW),
            // ::ffff:0:0/96
            ("::fffe:ffff:ffff", OUT_LOW),
            ("::ffff:0:0", MAPPED),
            ("::ffff:8.8.8.8", MAPPED),
            ("::ffff:1.1.1.1", MAPPED),
            ("::ffff:127.0.0.1", MAPPED),
            ("::ffff:ffff:ffff", MAPPED),
            ("::1:0:0:0", OUT_LOW),
            // ::ffff:0:0:0/96
            ("::ffff:0:0:0", TRANSLATED),
            ("::ffff:0:808:808", TRANSLATED),
            ("::ffff:0:ffff:ffff", TRANSLATED),
            ("::ffff:1:0:0", OUT_LOW),
            // 64:ff9b::/96
            ("64:ff9a:ffff:ffff:ffff:ffff:ffff:ffff", OUT_LOW),
            ("64:ff9b::", NAT64),
            ("64:ff9b::8.8.8.8", NAT64),
            ("64:ff9b::ffff:ffff", NAT64),
            ("64:ff9b::1:0:0", OUT_LOW),
            // 64:ff9b:1::/48
            ("64:ff9b:0:ffff:ffff:ffff:ffff:ffff", OUT_LOW),
            ("64:ff9b:1::", NAT64_LOCAL),
            ("64:ff9b:1:ffff:ffff:ffff:ffff:ffff", NAT64_LOCAL),
            ("64:ff9b:2::", OUT_LOW),
            // 100::/64
            ("ff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", OUT_LOW),
            ("100::", DISCARD),
            ("100::ffff:ffff:ffff:ffff", DISCARD),
            ("100:0:0:1::", OUT_LOW),
            // 2000::/3 lower edge, 2001::/32 Teredo, 2001::/23
            ("1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", OUT_LOW),
            ("2000::", PUB),
            ("2000:ffff:ffff:ffff:ffff:ffff:ffff:ffff", PUB),
            ("2001::", TEREDO),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", TEREDO),
            ("2001:0:ffff:ffff:ffff:ffff:ffff:ffff", TEREDO),
            ("2001:1::", IETF6),
            ("2001:1::1", IETF6),
            ("2001:2::1", IETF6),
            ("2001:4:112::1", IETF6),
            ("2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff", IETF6),
            ("2001:200::", PUB),
            ("2001:200::1", PUB),
            // 2001:db8::/32
            ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", PUB),
            ("2001:db8::", DOC6),
            ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", DOC6),
            ("2001:db9::", PUB),
            // 2002::/16
            ("2001:ffff:ffff:ffff:ffff:ffff:ffff:ffff", PUB),
            ("2002::", SIX_TO_FOUR),
            ("2002:808:808::1", SIX_TO_FOUR),
            ("2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff", SIX_TO_FOUR),
            ("2003::", PUB),
            // 2620:4f:8000::/48
            ("2620:4f:7fff:ffff:ffff:ffff:ffff:ffff", PUB),
            ("2620:4f:8000::", DD_AS112_6),
            ("2620:4f:8000:ffff:ffff:ffff:ffff:ffff", DD_AS112_6),
            ("2620:4f:8001::", PUB),
            // 3fff::/20 and 2000::/3 upper edge
            ("3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", PUB),
            ("3fff::", DOC6_3FFF),
            ("3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", DOC6_3FFF),
            ("3fff:1000::", PUB),
            ("3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", PUB),
            ("4000::", OUT_4000),
            ("4000::1", OUT_4000),
            // 5f00::/16
            ("5eff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", OUT_4000),
            ("5f00::", SRV6),
            ("5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff", SRV6),
            ("5f01::", OUT_4000),
            ("7fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", OUT_4000),
            ("8000::", OUT_8000),
            // fc00::/7 with AWS IMDS inside
            ("fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", OUT_8000),
            ("fc00::", ULA),
            ("fd00:ec2::253", ULA),
            ("fd00:ec2::254", META6_AWS),
            ("fd00:ec2::255", ULA),
            ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", ULA),
            ("fe00::", OUT_8000),
            // fe80::/10
            ("fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff", OUT_8000),
            ("fe80::", LINK6),
            ("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", LINK6),
            // fec0::/10
            ("fec0::", SITE6),
            ("feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", SITE6),
            // ff00::/8
            ("ff00::", MCAST6),
            ("ff02::1", MCAST6),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", MCAST6),
            // other space outside 2000::/3
            ("1::1", OUT_LOW),
        ]);
    }

    #[test]
    fn required_public_examples() {
        let public = [
            "8.8.8.8",
            "1.1.1.1",
            "9.9.9.9",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.0",
            "192.88.98.255",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "2001:200::1",
            "2a00::1",
        ];
        for addr in public {
            assert_eq!(classify(ip(addr)), Class::Public, "{addr}");
        }
    }

    #[test]
    fn embedded_ipv4_forms_are_never_public() {
        // Whatever public IPv4 address is embedded, the IPv6 form is non-public.
        for v4 in ["8.8.8.8", "1.1.1.1", "93.184.216.34"] {
            let a: Ipv4Addr = v4.parse().unwrap();
            let [o0, o1, o2, o3] = a.octets();
            let hi = u16::from_be_bytes([o0, o1]);
            let lo = u16::from_be_bytes([o2, o3]);
            let forms = [
                (Ipv6Addr::new(0, 0, 0, 0, 0, 0, hi, lo), COMPAT),
                (a.to_ipv6_mapped(), MAPPED),
                (Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, hi, lo), TRANSLATED),
                (Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, hi, lo), NAT64),
                (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, hi, lo), NAT64_LOCAL),
                (Ipv6Addr::new(0x2002, hi, lo, 0, 0, 0, 0, 1), SIX_TO_FOUR),
                (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, !hi, !lo), TEREDO),
            ];
            for (v6, want) in forms {
                assert_eq!(
                    classify(IpAddr::V6(v6)),
                    expected(want),
                    "{v6} embedding {v4}"
                );
            }
        }
    }

    #[test]
    fn table_block_strings_match_network_and_prefix() {
        for b in V4_BLOCKS {
            let (net, len) = b.info.block.split_once('/').expect("CIDR has '/'");
            let net: Ipv4Addr = net.parse().expect("CIDR network parses");
            let len: u8 = len.parse().expect("CIDR length parses");
            assert_eq!(
                (net.to_bits(), len),
                (b.network, b.prefix_len),
                "{}",
                b.info.block
            );
            assert!(!b.info.name.is_empty(), "{}", b.info.block);
        }
        for b in V6_BLOCKS {
            let (net, len) = b.info.block.split_once('/').expect("CIDR has '/'");
            let net: Ipv6Addr = net.parse().expect("CIDR network parses");
            let len: u8 = len.parse().expect("CIDR length parses");
            assert_eq!(
                (net.to_bits(), len),
                (b.network, b.prefix_len),
                "{}",
                b.info.block
            );
            assert!(!b.info.name.is_empty(), "{}", b.info.block);
        }
    }

    /// `inner` (network, len) lies entirely inside `outer`.
    fn v4_within(inner: &V4Block, outer: &V4Block) -> bool {
        inner.prefix_len >= outer.prefix_len
            && inner.network & mask_v4(outer.prefix_len) == outer.network
    }

    fn v6_within(inner: &V6Block, outer: &V6Block) -> bool {
        inner.prefix_len >= outer.prefix_len
            && inner.network & mask_v6(outer.prefix_len) == outer.network
    }

    #[test]
    fn tables_have_no_shadowed_entries() {
        // A later entry contained in (or equal to) an earlier one could never match.
        for (j, later) in V4_BLOCKS.iter().enumerate() {
            for earlier in &V4_BLOCKS[..j] {
                assert!(
                    !v4_within(later, earlier),
                    "{} is shadowed by earlier {}",
                    later.info.block,
                    earlier.info.block
                );
            }
        }
        for (j, later) in V6_BLOCKS.iter().enumerate() {
            for earlier in &V6_BLOCKS[..j] {
                assert!(
                    !v6_within(later, earlier),
                    "{} is shadowed by earlier {}",
                    later.info.block,
                    earlier.info.block
                );
            }
        }
    }

    #[test]
    fn cloud_metadata_entries_precede_their_enclosing_blocks() {
        let pos4 = |block: &str| {
            V4_BLOCKS
                .iter()
                .position(|b| b.info.block == block)
                .unwrap()
        };
        let pos6 = |block: &str| {
            V6_BLOCKS
                .iter()
                .position(|b| b.info.block == block)
                .unwrap()
        };
        assert!(pos4("169.254.169.254/32") < pos4("169.254.0.0/16"));
        assert!(pos4("169.254.170.2/32") < pos4("169.254.0.0/16"));
        assert!(pos4("100.100.100.200/32") < pos4("100.64.0.0/10"));
        assert!(pos4("192.0.0.192/32") < pos4("192.0.0.0/24"));
        assert!(pos4("255.255.255.255/32") < pos4("240.0.0.0/4"));
        assert!(pos6("fd00:ec2::254/128") < pos6("fc00::/7"));
        assert!(pos6("2001::/32") < pos6("2001::/23"));
        assert!(pos6("::/128") < pos6("::/96"));
        assert!(pos6("::1/128") < pos6("::/96"));
        let metadata4 = V4_BLOCKS
            .iter()
            .filter(|b| b.info.name == CLOUD_METADATA)
            .count();
        let metadata6 = V6_BLOCKS
            .iter()
            .filter(|b| b.info.name == CLOUD_METADATA)
            .count();
        assert_eq!((metadata4, metadata6), (5, 1));
    }

    #[test]
    fn every_table_entry_classifies_its_own_edges() {
        // First and last address of every entry map to that entry or to a more
        // specific entry listed earlier that contains the address.
        for (i, b) in V4_BLOCKS.iter().enumerate() {
            for bits in [b.network, b.network | !mask_v4(b.prefix_len)] {
                let got = lookup_v4(Ipv4Addr::from_bits(bits)).expect("non-public");
                let k = V4_BLOCKS.iter().position(|x| x.info == got).unwrap();
                assert!(k <= i && v4_within(&V4_BLOCKS[k], b), "{}", b.info.block);
            }
        }
        for (i, b) in V6_BLOCKS.iter().enumerate() {
            for bits in [b.network, b.network | !mask_v6(b.prefix_len)] {
                let got = lookup_v6(Ipv6Addr::from_bits(bits)).expect("non-public");
                let k = V6_BLOCKS.iter().position(|x| x.info == got).unwrap();
                assert!(k <= i && v6_within(&V6_BLOCKS[k], b), "{}", b.info.block);
            }
        }
    }

    #[test]
    fn ipv6_outside_2000_slash_3_is_never_public() {
        // Walk the top 16 bits: only 2000..=3fff may ever be public.
        for top in 0..=u16::MAX {
            let a = Ipv6Addr::new(top, 0x1234, 0, 0, 0, 0, 0, 1);
            if !(0x2000..=0x3fff).contains(&top) {
                assert_ne!(classify(IpAddr::V6(a)), Class::Public, "{a}");
            }
        }
    }

    #[test]
    fn parse_ipv4_loose_accepts() {
        let cases: &[(&str, [u8; 4])] = &[
            // Required spellings of 127.0.0.1.
            ("2130706433", [127, 0, 0, 1]),
            ("0x7f.1", [127, 0, 0, 1]),
            ("0177.0.0.1", [127, 0, 0, 1]),
            ("127.1", [127, 0, 0, 1]),
            ("0x7f000001", [127, 0, 0, 1]),
            ("017700000001", [127, 0, 0, 1]),
            ("127.0.0.1", [127, 0, 0, 1]),
            ("127.0.0.1.", [127, 0, 0, 1]),
            ("0X7F.0x0.0X0.0x1", [127, 0, 0, 1]),
            ("127.0.1", [127, 0, 0, 1]),
            ("0x7F.0.0.01", [127, 0, 0, 1]),
            // Zeros in every base.
            ("0", [0, 0, 0, 0]),
            ("00", [0, 0, 0, 0]),
            ("0x0", [0, 0, 0, 0]),
            ("0.0.0.0", [0, 0, 0, 0]),
            ("000000000000000000000000000000", [0, 0, 0, 0]),
            ("0x00000000000000000000000000001", [0, 0, 0, 1]),
            // Bases.
            ("010.010.010.010", [8, 8, 8, 8]),
            ("0x8.0x8.0x8.0x8", [8, 8, 8, 8]),
            ("0xA9.0xfE.0Xa9.0xFe", [169, 254, 169, 254]),
            ("0251.0376.0251.0376", [169, 254, 169, 254]),
            ("2852039166", [169, 254, 169, 254]),
            ("1.", [0, 0, 0, 1]),
            // Maximum value in each position and form.
            ("255.255.255.255", [255, 255, 255, 255]),
            ("4294967295", [255, 255, 255, 255]),
            ("0xffffffff", [255, 255, 255, 255]),
            ("037777777777", [255, 255, 255, 255]),
            ("1.16777215", [1, 255, 255, 255]),
            ("1.0xffffff", [1, 255, 255, 255]),
            ("1.1.65535", [1, 1, 255, 255]),
            ("1.1.0177777", [1, 1, 255, 255]),
            ("0xff.0377.255.0xff", [255, 255, 255, 255]),
            ("10.0.258", [10, 0, 1, 2]),
            ("10.65538", [10, 1, 0, 2]),
        ];
        for &(s, want) in cases {
            assert_eq!(parse_ipv4_loose(s), Some(Ipv4Addr::from(want)), "{s:?}");
        }
    }

    #[test]
    fn parse_ipv4_loose_rejects() {
        let cases = [
            "",
            ".",
            "..",
            "1..1",
            ".1",
            "1.2.3.4..",
            "127.0.0.1..",
            "0x",
            "0X",
            "0x.1",
            "1.0x",
            "08.0.0.1",
            "09",
            "0778",
            "256.0.0.1",
            "1.2.3.4.5",
            "1.2.3.4.5.",
            "4294967296",
            "1e3",
            "a.b.c.d",
            "-1",
            "+1",
            " 1",
            "1 ",
            "1.2.3.4 ",
            "127.0.0.1\0",
            "0x1g.1",
            "0xg",
            "00x1",
            "0x0x1",
            "١٢٧.0.0.1",
            "１２７.0.0.1",
            "example.com",
            "::1",
            // Overflow in every position.
            "256.1.1.1",
            "1.256.1.1",
            "1.1.256.1",
            "1.1.1.256",
            "0x100.0.0.1",
            "0400.0.0.1",
            "1.0x100.1.1",
            "1.1.0x100.1",
            "1.1.1.0x100",
            "1.16777216",
            "1.0x1000000",
            "1.1.65536",
            "1.1.0200000",
            "256.1",
            "256.1.1",
            "0x100000000",
            "040000000000",
            "99999999999999999999",
            "0xffffffffffffffffffffffff",
        ];
        for s in cases {
            assert_eq!(parse_ipv4_loose(s), None, "{s:?}");
        }
    }

    #[test]
    fn parse_ipv4_loose_round_trips_dotted_decimal_hex_and_octal() {
        // Deterministic sweep over the address space with a large odd stride.
        let mut x: u32 = 0;
        for _ in 0..50_000 {
            let a = Ipv4Addr::from_bits(x);
            let [o0, o1, o2, o3] = a.octets();
            let forms = [
                a.to_string(),
                format!("{a}."),
                x.to_string(),
                format!("0x{x:x}"),
                format!("0{x:o}"),
                format!("{o0}.{}", x & 0x00ff_ffff),
                format!("{o0}.{o1}.{}", x & 0xffff),
                format!("0x{o0:X}.0{o1:o}.{o2}.0x{o3:x}"),
            ];
            for f in &forms {
                assert_eq!(parse_ipv4_loose(f), Some(a), "{f:?}");
            }
            x = x.wrapping_add(0x9E37_79B1);
        }
    }

    #[test]
    fn looks_numeric_but_invalid_table() {
        let cases = [
            ("08.0.0.1", true),
            ("1.2.3.4.5", true),
            ("256.1.1.1", true),
            ("0x1g.1", true),
            ("0x", true),
            ("1.16777216", true),
            ("4294967296", true),
            ("1e3", true),
            ("1.2.3.4.5.", true),
            ("foo.1", true),
            ("example.123", true),
            // Valid numeric spellings are not "invalid".
            ("127.0.0.1", false),
            ("127.0.0.1.", false),
            ("0x7f.1", false),
            ("2130706433", false),
            ("00", false),
            // Names.
            ("example.com", false),
            ("example.com.", false),
            ("1.example", false),
            ("a1.b2", false),
            ("localhost", false),
            ("xn--80ak6aa92e.com", false),
            ("123.example.com", false),
            // Empty last label: not numeric-looking by this rule.
            ("", false),
            (".", false),
            ("1.2.3.4..", false),
        ];
        for (s, want) in cases {
            assert_eq!(looks_numeric_but_invalid(s), want, "{s:?}");
        }
    }
}
