//! `authority`: arbitrary bytes as a host, a CONNECT authority and an absolute URI.
//!
//! Invariants:
//! - nothing panics;
//! - numeric IPv4 spellings are read exactly as the reference `inet_aton` reads them;
//! - an address classifies as the reference says (the first 4 and 16 input bytes are also
//!   classified as raw addresses, and every IPv6 form embedding an IPv4 address is non-public);
//! - a name comes out normalised (lower-case LDH, label and length limits, no trailing dot, never
//!   numeric-looking) and normalising it again changes nothing;
//! - a policy rule written with the same spelling as the request matches it, exactly as the rule
//!   written in normalised form would (`host` rules match the name, `*.` rules only names below);
//! - a parsed target's display form (what audit records and `Host` headers carry) parses back to
//!   the same target, and the `http` crate agrees on host and port for absolute URIs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use egress_gate::addr::{self, Class};
use egress_gate::config;
use egress_gate::policy::{DenyReason, Outcome, Policy};
use egress_gate::target::{self, Host, Target};

use super::reference;

pub fn check(data: &[u8]) {
    raw_addresses(data);
    let text = String::from_utf8_lossy(data);
    let s: &str = &text;
    assert_eq!(
        addr::parse_ipv4_loose(s),
        reference::inet_aton(s),
        "parse_ipv4_loose disagrees with the reference on {s:?}"
    );
    if addr::looks_numeric_but_invalid(s) {
        assert!(addr::parse_ipv4_loose(s).is_none(), "{s:?}");
    }
    host(s);
    connect_authority(s);
    absolute_uri(s);
}

/// The leading bytes as raw addresses, and the IPv6 forms embedding the IPv4 one.
fn raw_addresses(data: &[u8]) {
    if let Some(b) = data.first_chunk::<4>() {
        let v4 = Ipv4Addr::from(*b);
        classification(IpAddr::V4(v4));
        for v6 in reference::embedded_forms(v4) {
            assert_ne!(
                addr::classify(IpAddr::V6(v6)),
                Class::Public,
                "{v6} embeds {v4} and must not be public"
            );
        }
    }
    if let Some(b) = data.first_chunk::<16>() {
        classification(IpAddr::V6(Ipv6Addr::from(*b)));
    }
}

fn classification(ip: IpAddr) {
    let product = addr::classify(ip) == Class::Public;
    assert_eq!(
        product,
        reference::is_public(ip),
        "classify({ip}) = {:?} disagrees with the reference",
        addr::classify(ip)
    );
}

fn host(s: &str) {
    match target::normalize_host(s) {
        Ok(Host::Name(n)) => {
            name_shape(&n);
            assert_eq!(
                target::normalize_host(&n),
                Ok(Host::Name(n.clone())),
                "normalising {s:?} is not idempotent"
            );
            rules_agree(s, &n);
        }
        Ok(Host::Ip(ip)) => {
            classification(ip);
            let shown = Host::Ip(ip).to_string();
            assert_eq!(
                target::normalize_host(&shown),
                Ok(Host::Ip(ip)),
                "{shown:?} (from {s:?}) does not normalise back"
            );
            // Plain ASCII without brackets goes through IDNA (which only lower-cases it) and the
            // numeric reading: it must be exactly the reference's address.
            if let IpAddr::V4(v4) = ip
                && s.is_ascii()
                && !s.starts_with('[')
            {
                let lower = s.to_ascii_lowercase();
                assert_eq!(
                    reference::inet_aton(&lower),
                    Some(v4),
                    "{s:?} was read as {v4}, but the reference reads it differently"
                );
            }
        }
        Err(_) => {}
    }
}

/// What every normalised name looks like.
fn name_shape(n: &str) {
    assert!(!n.is_empty() && n.len() <= target::MAX_HOST_LEN, "{n:?}");
    assert!(!n.ends_with('.'), "{n:?} keeps a trailing dot");
    for label in n.split('.') {
        assert!((1..=63).contains(&label.len()), "bad label in {n:?}");
        assert!(
            label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'),
            "{n:?} has a character outside lower-case LDH"
        );
    }
    assert!(
        reference::inet_aton(n).is_none(),
        "{n:?} is an IPv4 address but became a name"
    );
    assert!(
        !addr::looks_numeric_but_invalid(n),
        "{n:?} looks numeric but became a name"
    );
}

/// A rule written with the request's own spelling matches it, and `*.` rules only match below.
fn rules_agree(raw: &str, n: &str) {
    let text = format!(
        "version = 1\n[policy]\nstrict = false\n\
         [[policy.allow]]\nhost = {exact}\nports = [443]\n\
         [[policy.allow]]\nhost = {wild}\nports = [8443]\n",
        exact = toml::Value::String(raw.to_string()),
        wild = toml::Value::String(format!("*.{raw}")),
    );
    let config = match config::parse(Path::new("authority.toml"), &text) {
        Ok(c) => c,
        Err(e) => {
            panic!("{raw:?} normalises to the name {n:?} but a rule spelled so is refused: {e}")
        }
    };
    let policy = Policy::compile(&config);
    let decide = |name: &str, port: u16| {
        policy
            .decide(
                None,
                &Target {
                    host: Host::Name(name.into()),
                    port,
                },
            )
            .outcome
    };
    let allowed_by = |rule: &str| Outcome::Allow { rule: rule.into() };
    let no_match = Outcome::Deny {
        reason: DenyReason::NoMatchingRule,
        rule: None,
    };
    let sub = format!("sub.{n}");
    assert_eq!(decide(n, 443), allowed_by("policy.allow[0]"), "{raw:?}");
    assert_eq!(
        decide(n, 8443),
        no_match,
        "`*.` rule matched its apex {n:?}"
    );
    assert_eq!(decide(&sub, 8443), allowed_by("policy.allow[1]"), "{raw:?}");
    assert_eq!(decide(&sub, 443), no_match, "exact rule matched {sub:?}");
    // The request spelled like the rule reaches the same decision.
    if let Ok(t) = target::parse_connect_authority(&format!("{raw}:443")) {
        assert_eq!(
            t.host,
            Host::Name(n.into()),
            "CONNECT {raw:?}:443 names another host than {raw:?} alone"
        );
        assert_eq!(
            policy.decide(None, &t).outcome,
            allowed_by("policy.allow[0]")
        );
    }
}

fn target_invariants(t: &Target, from: &str) {
    assert_ne!(t.port, 0, "{from:?}");
    match &t.host {
        Host::Name(n) => name_shape(n),
        Host::Ip(ip) => classification(*ip),
    }
}

fn connect_authority(s: &str) {
    let Ok(t) = target::parse_connect_authority(s) else {
        return;
    };
    assert!(!s.contains('@'), "userinfo accepted in {s:?}");
    target_invariants(&t, s);
    let shown = t.to_string();
    assert_eq!(
        target::parse_connect_authority(&shown).as_ref(),
        Ok(&t),
        "{shown:?} (from {s:?}) does not parse back"
    );
}

fn absolute_uri(s: &str) {
    for candidate in [format!("http://{s}/"), s.to_string()] {
        let Ok(uri) = candidate.parse::<http::Uri>() else {
            continue;
        };
        let Ok(t) = target::parse_absolute_uri(&uri) else {
            continue;
        };
        target_invariants(&t, &candidate);
        // The http crate's own reading of the authority names the same host and port.
        let host = uri.host().expect("an absolute URI has a host");
        assert_eq!(
            target::normalize_host(host).as_ref(),
            Ok(&t.host),
            "{candidate:?}: http reads host {host:?}"
        );
        assert_eq!(
            uri.port_u16().unwrap_or(80),
            t.port,
            "{candidate:?}: http reads another port"
        );
        let back: http::Uri = format!("http://{t}/")
            .parse()
            .expect("display form is a URI");
        assert_eq!(
            target::parse_absolute_uri(&back).as_ref(),
            Ok(&t),
            "{candidate:?}"
        );
    }
}
