use std::path::Path;

use super::*;
use crate::target::{Host, normalize_host};

fn policy(text: &str) -> Policy {
    Policy::compile(&crate::config::parse(Path::new("t.toml"), text).expect("valid policy"))
}

fn target(host: &str, port: u16) -> Target {
    Target {
        host: normalize_host(host).unwrap(),
        port,
    }
}

fn rule_of(d: &Decision) -> Option<&str> {
    d.rule().map(|r| &**r)
}

const BASE: &str = r#"version = 1
[[policy.allow]]
host = "api.github.com"
ports = [443]
[[policy.allow]]
host = "*.example.com"
[[policy.allow]]
cidr = "127.0.0.1/32"
ports = [18080]
[[policy.allow]]
cidr = "203.0.113.0/24"
[[policy.deny]]
host = "bad.example.com"
[[policy.deny]]
host = "*.evil.example"
[plugins.weather]
listen = ["127.0.0.1:3129"]
token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
[[plugins.weather.allow]]
host = "api.weather.gov"
[[plugins.weather.deny]]
host = "api.github.com"
[plugins.other]
"#;

#[test]
fn allowlist_first_exact_and_wildcard() {
    let p = policy(BASE);
    let d = p.decide(None, &target("api.github.com", 443));
    assert!(d.permits());
    assert_eq!(rule_of(&d), Some("policy.allow[0]"));

    let d = p.decide(None, &target("a.b.example.com", 80));
    assert_eq!(rule_of(&d), Some("policy.allow[1]"));
    // "*.example.com" is any subdomain, not the apex.
    let d = p.decide(None, &target("example.com", 443));
    assert_eq!(
        d.outcome,
        Outcome::Deny {
            reason: DenyReason::NoMatchingRule,
            rule: None
        }
    );
    assert!(!d.permits());
    // Similar-looking names do not match.
    assert!(!p.decide(None, &target("notexample.com", 443)).permits());
    assert!(
        !p.decide(None, &target("api.github.com.evil.example", 443))
            .permits()
    );
}

#[test]
fn ports_are_part_of_the_match() {
    let p = policy(BASE);
    assert!(!p.decide(None, &target("api.github.com", 80)).permits());
    assert!(p.decide(None, &target("x.example.com", 443)).permits());
    assert!(!p.decide(None, &target("x.example.com", 8080)).permits());
    assert!(p.decide(None, &target("127.0.0.1", 18080)).permits());
    assert!(!p.decide(None, &target("127.0.0.1", 18081)).permits());
}

#[test]
fn deny_beats_allow() {
    let p = policy(BASE);
    let d = p.decide(None, &target("bad.example.com", 443));
    assert_eq!(
        d.outcome,
        Outcome::Deny {
            reason: DenyReason::DenyRule,
            rule: Some("policy.deny[0]".into())
        }
    );
    // The plugin's own deny overrides the global allow for that plugin only.
    assert!(
        !p.decide(Some("weather"), &target("api.github.com", 443))
            .permits()
    );
    assert!(
        p.decide(Some("other"), &target("api.github.com", 443))
            .permits()
    );
}

#[test]
fn plugins_get_global_plus_their_own_rules() {
    let p = policy(BASE);
    let d = p.decide(Some("weather"), &target("api.weather.gov", 443));
    assert_eq!(rule_of(&d), Some("plugins.weather.allow[0]"));
    assert!(!p.decide(None, &target("api.weather.gov", 443)).permits());
    assert!(
        !p.decide(Some("other"), &target("api.weather.gov", 443))
            .permits()
    );
    assert!(
        p.decide(Some("weather"), &target("x.example.com", 443))
            .permits()
    );
}

#[test]
fn empty_policy_denies_everything() {
    let p = policy("version = 1\n");
    for (h, port) in [("example.com", 443), ("8.8.8.8", 53), ("127.0.0.1", 80)] {
        assert!(!p.decide(None, &target(h, port)).permits(), "{h}");
    }
}

#[test]
fn report_mode_permits_but_keeps_the_denial() {
    let p = policy("version = 1\n[policy]\nmode = \"report\"\n");
    let d = p.decide(None, &target("example.com", 443));
    assert!(d.permits());
    assert!(!d.enforced);
    assert!(matches!(d.outcome, Outcome::Deny { .. }));
}

#[test]
fn address_literals_only_match_cidr_rules() {
    let p = policy(BASE);
    assert!(p.decide(None, &target("203.0.113.7", 443)).permits());
    assert!(!p.decide(None, &target("8.8.8.8", 443)).permits());
    // Spellings of 127.0.0.1 all reach the same decision.
    for spelling in ["2130706433", "0x7f.1", "0177.0.0.1", "127.1"] {
        assert!(
            p.decide(None, &target(spelling, 18080)).permits(),
            "{spelling}"
        );
        assert!(
            !p.decide(None, &target(spelling, 80)).permits(),
            "{spelling}"
        );
    }
}

#[test]
fn non_public_addresses_need_a_port_scoped_exception() {
    let p = policy(BASE);
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    let meta: IpAddr = "169.254.169.254".parse().unwrap();
    let public: IpAddr = "93.184.216.34".parse().unwrap();
    assert_eq!(p.vet_addresses(None, 18080, &[lo], &[]), Ok(None));
    let err = p.vet_addresses(None, 80, &[lo], &[]).unwrap_err();
    assert_eq!(err.reason, DenyReason::NonPublicAddress(vec![lo]));
    assert_eq!(p.vet_addresses(None, 443, &[public], &[]), Ok(None));
    // Mixed public + private answers are refused as a whole, naming the offenders.
    let err = p
        .vet_addresses(None, 443, &[public, meta], &[])
        .unwrap_err();
    assert_eq!(err.reason, DenyReason::NonPublicAddress(vec![meta]));
    assert_eq!(err.reason.code(), "non_public_address");
}

#[test]
fn the_proxy_never_dials_its_own_listener() {
    let p = policy("version = 1\n[[policy.allow]]\ncidr = \"127.0.0.1/32\"\nports = [3128]\n");
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    let own: SocketAddr = "127.0.0.1:3128".parse().unwrap();
    assert_eq!(p.vet_addresses(None, 3128, &[lo], &[]), Ok(None));
    assert!(p.vet_addresses(None, 3128, &[lo], &[own]).is_err());
    let any: SocketAddr = "0.0.0.0:3128".parse().unwrap();
    assert!(p.vet_addresses(None, 3128, &[lo], &[any]).is_err());
    // The IPv4-mapped spelling of the listener's address is the listener too.
    let p = policy(
        "version = 1\n[policy]\nstrict = false\n[[policy.allow]]\ncidr = \"::ffff:0:0/96\"\nports = [3128]\n",
    );
    let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
    assert_eq!(p.vet_addresses(None, 3128, &[mapped], &[]), Ok(None));
    assert!(p.vet_addresses(None, 3128, &[mapped], &[own]).is_err());
}

#[test]
fn deny_cidr_applies_to_resolved_addresses() {
    let p = policy(
        "version = 1\n[[policy.allow]]\nhost = \"a.example\"\n[[policy.deny]]\ncidr = \"93.184.216.0/24\"\n",
    );
    let ip: IpAddr = "93.184.216.34".parse().unwrap();
    let err = p.vet_addresses(None, 443, &[ip], &[]).unwrap_err();
    assert_eq!(err.reason, DenyReason::DenyRule);
    assert_eq!(err.rule.as_deref(), Some("policy.deny[0]"));
}

#[test]
fn report_mode_reports_deny_cidr_but_never_relaxes_address_safety() {
    let p = policy(
        "version = 1\n[policy]\nmode = \"report\"\n[[policy.deny]]\ncidr = \"93.184.216.0/24\"\n",
    );
    let ip: IpAddr = "93.184.216.34".parse().unwrap();
    assert_eq!(
        p.vet_addresses(None, 443, &[ip], &[]),
        Ok(Some("policy.deny[0]".into()))
    );
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    assert!(p.vet_addresses(None, 443, &[lo], &[]).is_err());
}

#[test]
fn private_ip_mode_allow_still_guards_cloud_metadata() {
    let p = policy("version = 1\n[policy]\nstrict = false\nprivate_ip_mode = \"allow\"\n");
    let private: IpAddr = "10.1.2.3".parse().unwrap();
    let meta: IpAddr = "169.254.169.254".parse().unwrap();
    assert_eq!(p.vet_addresses(None, 443, &[private], &[]), Ok(None));
    assert!(p.vet_addresses(None, 80, &[meta], &[]).is_err());
}

#[test]
fn longest_prefix_with_a_matching_port_wins() {
    let p = policy(
        "version = 1\n[[policy.allow]]\ncidr = \"10.0.0.0/8\"\nports = [80]\n[[policy.allow]]\ncidr = \"10.1.0.0/16\"\nports = [443]\n",
    );
    let d = p.decide(None, &target("10.1.2.3", 80));
    assert_eq!(rule_of(&d), Some("policy.allow[0]"));
    let d = p.decide(None, &target("10.1.2.3", 443));
    assert_eq!(rule_of(&d), Some("policy.allow[1]"));
    assert!(!p.decide(None, &target("10.2.0.1", 443)).permits());
    assert!(!p.decide(None, &target("[::a01:203]", 80)).permits());
}

#[test]
fn universal_host_rule_in_non_strict_mode() {
    let p = policy("version = 1\n[policy]\nstrict = false\n[[policy.allow]]\nhost = \"*\"\n");
    assert!(p.decide(None, &target("anything.example", 443)).permits());
    assert!(!p.decide(None, &target("anything.example", 22)).permits());
    // The name is allowed, but a private answer is still refused.
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    assert!(p.vet_addresses(None, 443, &[lo], &[]).is_err());
}

#[test]
fn tokens_are_checked_against_their_hash() {
    let p = policy(BASE);
    assert_eq!(p.authenticate("weather", b"test"), Ok(()));
    assert_eq!(
        p.authenticate("weather", b"tesT"),
        Err(AuthError::WrongToken)
    );
    assert_eq!(p.authenticate("other", b"test"), Err(AuthError::NoToken));
    assert_eq!(
        p.authenticate("nobody", b"test"),
        Err(AuthError::UnknownPlugin)
    );
}

#[test]
fn idna_spellings_match_the_normalised_rule() {
    let p = policy(
        "version = 1\n[[policy.deny]]\nhost = \"evil.example\"\n[policy]\nstrict = false\n[[policy.allow]]\nhost = \"*\"\n",
    );
    let t = target("ⓔⓥⓘⓛ.example", 443);
    assert_eq!(t.host, Host::Name("evil.example".into()));
    assert!(!p.decide(None, &t).permits());
}
