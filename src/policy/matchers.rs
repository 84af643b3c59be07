//! Rule lookup structures: exact names and wildcard suffixes in hash maps, address blocks bucketed
//! by prefix length. A lookup walks the labels of one name or the prefix lengths present, never
//! the list of rules.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::RuleId;
use crate::config::{HostPattern, Matcher, Ports, Rule};
use crate::target::{Host, Target};

/// One rule's port set and name, filed under the key it matches.
#[derive(Debug)]
struct Entry {
    ports: Ports,
    rule: RuleId,
}

/// Entries sharing a key; the first (in file order) whose ports match decides.
type Entries = Vec<Entry>;

fn first_match(entries: &Entries, port: u16) -> Option<&RuleId> {
    entries
        .iter()
        .find(|e| e.ports.contains(port))
        .map(|e| &e.rule)
}

#[derive(Debug, Default)]
pub(super) struct Matchers {
    exact: HashMap<Box<str>, Entries>,
    /// `*.example.com` is filed under `example.com` and matches names strictly below it.
    subdomains: HashMap<Box<str>, Entries>,
    /// `host = "*"`: every name and every address literal.
    any_host: Entries,
    cidrs: CidrTable,
}

impl Matchers {
    pub(super) fn compile(rules: &[Rule]) -> Matchers {
        let mut m = Matchers::default();
        for rule in rules {
            let entry = Entry {
                ports: rule.ports.clone(),
                rule: RuleId::from(rule.id.as_str()),
            };
            match &rule.matcher {
                Matcher::Host(HostPattern::Exact(n)) => {
                    m.exact.entry(n.clone()).or_default().push(entry)
                }
                Matcher::Host(HostPattern::Subdomains(n)) => {
                    m.subdomains.entry(n.clone()).or_default().push(entry)
                }
                Matcher::Host(HostPattern::Any) => m.any_host.push(entry),
                Matcher::Cidr(net) => m.cidrs.insert(*net, entry),
            }
        }
        m
    }

    /// The rule matching a target as named by the client.
    pub(super) fn match_target(&self, target: &Target) -> Option<&RuleId> {
        let port = target.port;
        let specific = match &target.host {
            Host::Name(name) => self.match_name(name, port),
            Host::Ip(ip) => self.cidrs.lookup(*ip, port),
        };
        specific.or_else(|| first_match(&self.any_host, port))
    }

    /// The `cidr` rule covering an address on a port, if any.
    pub(super) fn match_addr(&self, ip: IpAddr, port: u16) -> Option<&RuleId> {
        self.cidrs.lookup(ip, port)
    }

    fn match_name(&self, name: &str, port: u16) -> Option<&RuleId> {
        if let Some(rule) = self.exact.get(name).and_then(|e| first_match(e, port)) {
            return Some(rule);
        }
        // Walk the proper suffixes: "a.b.example.com" → "b.example.com", "example.com", "com".
        let mut rest = name;
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(rule) = self
                .subdomains
                .get(parent)
                .and_then(|e| first_match(e, port))
            {
                return Some(rule);
            }
            rest = parent;
        }
        None
    }
}

/// Address blocks grouped by (family, prefix length), longest prefix first.
#[derive(Debug, Default)]
struct CidrTable {
    buckets: Vec<(bool, u8, HashMap<IpAddr, Entries>)>,
}

impl CidrTable {
    fn insert(&mut self, net: IpNet, entry: Entry) {
        let key = (net.addr().is_ipv4(), net.prefix_len());
        let bucket = match self
            .buckets
            .iter()
            .position(|(v4, len, _)| (*v4, *len) == key)
        {
            Some(i) => i,
            None => {
                self.buckets.push((key.0, key.1, HashMap::new()));
                self.buckets.sort_by_key(|b| std::cmp::Reverse(b.1));
                self.buckets
                    .iter()
                    .position(|(v4, len, _)| (*v4, *len) == key)
                    .expect("just inserted")
            }
        };
        self.buckets[bucket]
            .2
            .entry(net.network())
            .or_default()
            .push(entry);
    }

    fn lookup(&self, ip: IpAddr, port: u16) -> Option<&RuleId> {
        self.buckets
            .iter()
            .filter(|(v4, _, _)| *v4 == ip.is_ipv4())
            .find_map(|(_, len, map)| {
                let net = IpNet::new(ip, *len).ok()?.trunc();
                map.get(&net.network()).and_then(|e| first_match(e, port))
            })
    }
}
