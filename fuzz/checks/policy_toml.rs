//! `policy_toml`: arbitrary bytes as a policy file.
//!
//! Invariants:
//! - parsing never panics; a refusal carries at least one diagnostic, each with a 1-based line and
//!   column inside the text;
//! - whatever is accepted compiles (what `egress-gate check` does) and round-trips: written back
//!   out as canonical TOML from the typed configuration, it parses to the same configuration;
//! - an accepted policy is in normal form: host patterns are normalised names, blocks have no host
//!   bits, port lists are sorted, unique and never contain 0, limits are inside their ranges;
//! - strict mode really is strict: no universal, top-level-domain-wide or broader-than-/8 (/16)
//!   allow, no `private_ip_mode = "allow"`;
//! - the compiled matchers agree with the rules: each allow rule's own host (or block) on each of
//!   its ports is allowed (or denied by a deny rule, which always wins), and each deny rule's own
//!   host on a port it covers is denied.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use egress_gate::config::{
    self, AuditConfig, AuditPath, Config, DriftAction, FsyncMode, HostPattern, Matcher, Mode,
    Ports, PrivateIpMode, Rule,
};
use egress_gate::policy::{DenyReason, Outcome, Policy};
use egress_gate::target::{self, Host, Target};
use toml::{Table, Value};

pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match config::parse(Path::new("fuzz.toml"), text) {
        Ok(c) => c,
        Err(e) => {
            assert!(!e.diagnostics.is_empty(), "refused without a diagnostic");
            let lines = text.lines().count() + 1;
            for d in &e.diagnostics {
                assert!(d.line >= 1 && d.line <= lines && d.col >= 1, "{d}");
            }
            let _ = e.to_string();
            return;
        }
    };
    let policy = Policy::compile(&config);
    normal_form(&config);
    if config.policy.strict {
        strict(&config);
    }
    matchers_agree(&config, &policy);

    let rendered = render(&config);
    let again = config::parse(Path::new("fuzz.toml"), &rendered).unwrap_or_else(|e| {
        panic!("an accepted policy, written back out, is refused:\n{rendered}\n{e}")
    });
    same_config(&config, &again, &rendered);
}

fn all_rules(c: &Config) -> impl Iterator<Item = (Option<&str>, bool, &Rule)> {
    let global = c
        .policy
        .allow
        .iter()
        .map(|r| (None, true, r))
        .chain(c.policy.deny.iter().map(|r| (None, false, r)));
    let plugins = c.plugins.iter().flat_map(|(name, p)| {
        p.allow
            .iter()
            .map(move |r| (Some(name.as_str()), true, r))
            .chain(p.deny.iter().map(move |r| (Some(name.as_str()), false, r)))
    });
    global.chain(plugins)
}

fn normal_form(c: &Config) {
    for (_, _, rule) in all_rules(c) {
        match &rule.matcher {
            Matcher::Host(HostPattern::Exact(n) | HostPattern::Subdomains(n)) => {
                assert_eq!(
                    target::normalize_host(n),
                    Ok(Host::Name(n.clone())),
                    "{}: pattern {n:?} is not a normalised name",
                    rule.id
                );
            }
            Matcher::Host(HostPattern::Any) => {}
            Matcher::Cidr(net) => assert_eq!(net.trunc(), *net, "{}", rule.id),
        }
        if let Ports::List(ports) = &rule.ports {
            assert!(!ports.is_empty(), "{}", rule.id);
            assert!(!ports.contains(&0), "{}", rule.id);
            assert!(ports.windows(2).all(|w| w[0] < w[1]), "{}", rule.id);
        }
    }
    let l = &c.limits;
    assert!((8192..=1 << 20).contains(&l.max_header_bytes));
    assert!((1..=1_000_000).contains(&l.max_connections));
    for d in [
        l.connect_timeout,
        l.header_read_timeout,
        l.idle_timeout,
        c.dns.timeout,
    ] {
        assert!(!d.is_zero());
    }
}

fn strict(c: &Config) {
    assert_eq!(c.policy.private_ip_mode, PrivateIpMode::Deny);
    for (_, allow, rule) in all_rules(c) {
        if !allow {
            continue;
        }
        match &rule.matcher {
            Matcher::Host(HostPattern::Any) => panic!("{}: `*` allowed in strict mode", rule.id),
            Matcher::Host(HostPattern::Subdomains(n)) => {
                assert!(
                    n.contains('.'),
                    "{}: `*.{n}` allowed in strict mode",
                    rule.id
                )
            }
            Matcher::Host(HostPattern::Exact(_)) => {}
            Matcher::Cidr(net) => {
                let broadest = if net.addr().is_ipv4() {
                    config::STRICT_MIN_PREFIX_V4
                } else {
                    config::STRICT_MIN_PREFIX_V6
                };
                assert!(
                    net.prefix_len() >= broadest,
                    "{}: {net} in strict mode",
                    rule.id
                );
            }
        }
    }
}

/// A port the rule covers: its first listed port, or 443 for "every port".
fn some_port(ports: &Ports) -> u16 {
    match ports {
        Ports::All => 443,
        Ports::List(list) => list[0],
    }
}

fn matchers_agree(c: &Config, policy: &Policy) {
    for (plugin, allow, rule) in all_rules(c) {
        let host = match &rule.matcher {
            Matcher::Host(HostPattern::Exact(n)) => Host::Name(n.clone()),
            Matcher::Host(HostPattern::Subdomains(n)) => Host::Name(format!("sub.{n}").into()),
            Matcher::Host(HostPattern::Any) => Host::Name("any.example".into()),
            Matcher::Cidr(net) => Host::Ip(net.network()),
        };
        let ports: Vec<u16> = match &rule.ports {
            Ports::All => vec![1, 443, 65535],
            Ports::List(list) => list.iter().copied().take(8).collect(),
        };
        for port in ports {
            let t = Target {
                host: host.clone(),
                port,
            };
            let outcome = policy.decide(plugin, &t).outcome;
            match (&outcome, allow) {
                (Outcome::Allow { .. }, true) => {}
                (
                    Outcome::Deny {
                        reason: DenyReason::DenyRule,
                        ..
                    },
                    _,
                ) => {}
                _ => panic!("{}: its own target {t} decides {outcome:?}", rule.id),
            }
        }
        // Address rules also vet resolved addresses: an allow block is an exception for itself.
        if let (true, Matcher::Cidr(net)) = (allow, &rule.matcher) {
            let ip: IpAddr = net.network();
            let port = some_port(&rule.ports);
            let vetted = policy.vet_addresses(plugin, port, &[ip], &[]);
            assert!(
                !matches!(
                    vetted,
                    Err(ref d) if matches!(d.reason, DenyReason::NonPublicAddress(_))
                ),
                "{}: {ip} on {port} is refused as non-public despite its own exception",
                rule.id
            );
        }
    }
}

// === canonical rendering ===

fn duration(d: Duration) -> Value {
    Value::String(humantime::format_duration(d).to_string())
}

fn strings<T: ToString>(items: &[T]) -> Value {
    Value::Array(items.iter().map(|i| Value::String(i.to_string())).collect())
}

fn rule_table(rule: &Rule, allow: bool) -> Value {
    let mut t = Table::new();
    match &rule.matcher {
        Matcher::Host(HostPattern::Exact(n)) => {
            t.insert("host".into(), Value::String(n.to_string()));
        }
        Matcher::Host(HostPattern::Subdomains(n)) => {
            t.insert("host".into(), Value::String(format!("*.{n}")));
        }
        Matcher::Host(HostPattern::Any) => {
            t.insert("host".into(), Value::String("*".into()));
        }
        Matcher::Cidr(net) => {
            t.insert("cidr".into(), Value::String(net.to_string()));
        }
    }
    match &rule.ports {
        Ports::List(list) => {
            let ports = list.iter().map(|p| Value::Integer(i64::from(*p))).collect();
            t.insert("ports".into(), Value::Array(ports));
        }
        Ports::All => assert!(!allow, "{}: an allow rule covering every port", rule.id),
    }
    Value::Table(t)
}

fn rules(list: &[Rule], allow: bool) -> Value {
    Value::Array(list.iter().map(|r| rule_table(r, allow)).collect())
}

/// The configuration written back out with every key explicit.
fn render(c: &Config) -> String {
    let mut root = Table::new();
    root.insert("version".into(), Value::Integer(config::SUPPORTED_VERSION));

    let mut proxy = Table::new();
    proxy.insert("listen".into(), strings(&c.proxy.listen));
    root.insert("proxy".into(), Value::Table(proxy));

    root.insert("audit".into(), Value::Table(audit_table(&c.audit)));

    let mut dns = Table::new();
    dns.insert("nameservers".into(), strings(&c.dns.nameservers));
    dns.insert("timeout".into(), duration(c.dns.timeout));
    root.insert("dns".into(), Value::Table(dns));

    let l = &c.limits;
    let mut limits = Table::new();
    limits.insert("connect_timeout".into(), duration(l.connect_timeout));
    limits.insert(
        "header_read_timeout".into(),
        duration(l.header_read_timeout),
    );
    limits.insert("idle_timeout".into(), duration(l.idle_timeout));
    limits.insert(
        "max_connections".into(),
        Value::Integer(l.max_connections as i64),
    );
    limits.insert(
        "max_header_bytes".into(),
        Value::Integer(l.max_header_bytes as i64),
    );
    root.insert("limits".into(), Value::Table(limits));

    let p = &c.policy;
    let mut policy = Table::new();
    let mode = match p.mode {
        Mode::Enforce => "enforce",
        Mode::Report => "report",
    };
    policy.insert("mode".into(), Value::String(mode.into()));
    policy.insert("strict".into(), Value::Boolean(p.strict));
    let private = match p.private_ip_mode {
        PrivateIpMode::Deny => "deny",
        PrivateIpMode::Allow => "allow",
    };
    policy.insert("private_ip_mode".into(), Value::String(private.into()));
    policy.insert("allow".into(), rules(&p.allow, true));
    policy.insert("deny".into(), rules(&p.deny, false));
    root.insert("policy".into(), Value::Table(policy));

    let mut plugins = Table::new();
    for (name, plugin) in &c.plugins {
        let mut t = Table::new();
        t.insert("listen".into(), strings(&plugin.listen));
        if let Some(token) = &plugin.token_sha256 {
            t.insert("token_sha256".into(), Value::String(hex::encode(token)));
        }
        t.insert("allow".into(), rules(&plugin.allow, true));
        t.insert("deny".into(), rules(&plugin.deny, false));
        plugins.insert(name.clone(), Value::Table(t));
    }
    root.insert("plugins".into(), Value::Table(plugins));
    toml::to_string(&root).expect("a TOML table always serialises")
}

/// Destructured whole, so a new `[audit]` key fails to compile here until it is rendered too.
fn audit_table(a: &AuditConfig) -> Table {
    let AuditConfig {
        path,
        key_file,
        fsync,
        max_bytes,
        keep,
        on_drift,
    } = a;
    let text = |p: &Path| {
        p.to_str()
            .expect("paths come from TOML strings")
            .to_string()
    };
    let mut t = Table::new();
    let path = match path {
        AuditPath::Stdout => "-".to_string(),
        AuditPath::File(p) => text(p),
    };
    t.insert("path".into(), Value::String(path));
    if let Some(k) = key_file {
        t.insert("key_file".into(), Value::String(text(k)));
    }
    let fsync = match fsync {
        FsyncMode::Always => "always",
        FsyncMode::Interval => "interval",
        FsyncMode::Never => "never",
    };
    t.insert("fsync".into(), Value::String(fsync.into()));
    if let Some(m) = max_bytes {
        t.insert("max_bytes".into(), Value::Integer(*m as i64));
    }
    t.insert("keep".into(), Value::Integer(i64::from(*keep)));
    let on_drift = match on_drift {
        DriftAction::Halt => "halt",
        DriftAction::Reload => "reload",
    };
    t.insert("on_drift".into(), Value::String(on_drift.into()));
    t
}

fn same_config(a: &Config, b: &Config, rendered: &str) {
    let why = || format!("round trip changed the policy; written back as:\n{rendered}");
    assert_eq!(a.proxy, b.proxy, "{}", why());
    assert_eq!(a.audit, b.audit, "{}", why());
    assert_eq!(a.dns, b.dns, "{}", why());
    assert_eq!(a.limits, b.limits, "{}", why());
    assert_eq!(a.policy, b.policy, "{}", why());
    assert_eq!(a.plugins, b.plugins, "{}", why());
}
