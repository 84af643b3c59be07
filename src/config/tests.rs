use super::*;

fn parse_str(text: &str) -> Result<Config, ConfigError> {
    parse(Path::new("p.toml"), text)
}

fn errors(text: &str) -> Vec<String> {
    parse_str(text)
        .expect_err("policy should be refused")
        .diagnostics
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn minimal_file_gets_documented_defaults() {
    let c = parse_str("version = 1\n").unwrap();
    assert_eq!(c.proxy.listen, vec!["127.0.0.1:3128".parse().unwrap()]);
    assert_eq!(c.audit.path, AuditPath::File("audit.jsonl".into()));
    assert!(c.dns.nameservers.is_empty());
    assert_eq!(c.dns.timeout, Duration::from_secs(5));
    assert_eq!(c.limits.connect_timeout, Duration::from_secs(10));
    assert_eq!(c.limits.header_read_timeout, Duration::from_secs(10));
    assert_eq!(c.limits.idle_timeout, Duration::from_secs(300));
    assert_eq!(c.limits.max_connections, 4096);
    assert_eq!(c.policy.mode, Mode::Enforce);
    assert!(c.policy.strict);
    assert_eq!(c.policy.private_ip_mode, PrivateIpMode::Deny);
    assert!(c.policy.allow.is_empty() && c.policy.deny.is_empty());
    assert_eq!(c.sha256.len(), 64);
}

#[test]
fn only_version_and_one_plugin_is_valid() {
    let c =
        parse_str("version = 1\n[plugins.x]\n[[plugins.x.allow]]\nhost = \"a.example\"\n").unwrap();
    let x = &c.plugins["x"];
    assert_eq!(x.allow.len(), 1);
    assert_eq!(x.allow[0].id, "plugins.x.allow[0]");
    assert_eq!(x.allow[0].ports, Ports::List(vec![80, 443]));
}

#[test]
fn rules_are_typed_with_defaults_per_kind() {
    let c = parse_str(
        r#"version = 1
[[policy.allow]]
host = "API.GitHub.com."
ports = [443, 443, 8443]
[[policy.allow]]
host = "*.example.com"
[[policy.allow]]
cidr = "127.0.0.1"
ports = [18080]
[[policy.deny]]
host = "*.evil.example"
"#,
    )
    .unwrap();
    let a = &c.policy.allow;
    assert_eq!(
        a[0].matcher,
        Matcher::Host(HostPattern::Exact("api.github.com".into()))
    );
    assert_eq!(a[0].ports, Ports::List(vec![443, 8443]));
    assert_eq!(
        a[1].matcher,
        Matcher::Host(HostPattern::Subdomains("example.com".into()))
    );
    assert_eq!(a[2].matcher, Matcher::Cidr("127.0.0.1/32".parse().unwrap()));
    assert_eq!(c.policy.deny[0].ports, Ports::All);
}

#[test]
fn unknown_keys_are_errors_with_position_and_path() {
    assert_eq!(
        errors("version = 1\n[policy]\nmode = \"enforce\"\nstrickt = true\n"),
        vec![
            "p.toml:4:1: policy.strickt: unknown field `strickt`, expected one of `mode`, `strict`, `private_ip_mode`, `allow`, `deny`"
        ]
    );
    let e = errors("version = 1\n[[policy.allow]]\nhost = \"a.com\"\nport = [1]\n");
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("p.toml:4:1: policy.allow[0].port: unknown field `port`"),
        "{e:?}"
    );
}

#[test]
fn syntax_errors_point_at_the_line() {
    let e = errors("version = 1\n[proxy\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("p.toml:2:"), "{e:?}");
}

#[test]
fn type_errors_name_the_key() {
    let e = errors("version = 1\n[limits]\nmax_connections = \"many\"\n");
    assert!(
        e[0].starts_with("p.toml:3:19: limits.max_connections: invalid type"),
        "{e:?}"
    );
}

#[test]
fn missing_version_is_refused() {
    let e = errors("[proxy]\n");
    assert!(e[0].contains("missing field `version`"), "{e:?}");
    assert_eq!(
        errors("version = 2\n"),
        vec!["p.toml:1:11: version: unsupported version 2; this build reads version 1"]
    );
}

#[test]
fn strict_mode_refuses_universal_egress_and_reports_every_error() {
    let e = errors(
        r#"version = 1
[policy]
private_ip_mode = "allow"
[[policy.allow]]
host = "*"
[[policy.allow]]
cidr = "0.0.0.0/0"
[[policy.allow]]
cidr = "::/0"
"#,
    );
    assert_eq!(e.len(), 4, "{e:?}");
    assert!(
        e[0].starts_with(
            "p.toml:3:19: policy.private_ip_mode: \"allow\" is refused in strict mode"
        )
    );
    assert!(e[1].starts_with("p.toml:5:8: policy.allow[0].host: universal allow"));
    assert!(e[2].starts_with("p.toml:7:8: policy.allow[1].cidr: universal allow"));
    assert!(e[3].starts_with("p.toml:9:8: policy.allow[2].cidr: universal allow"));
}

#[test]
fn non_strict_mode_permits_wildcards_and_private_mode() {
    let c = parse_str(
        "version = 1\n[policy]\nstrict = false\nprivate_ip_mode = \"allow\"\n[[policy.allow]]\nhost = \"*\"\n",
    )
    .unwrap();
    assert_eq!(c.policy.allow[0].matcher, Matcher::Host(HostPattern::Any));
    assert_eq!(c.policy.private_ip_mode, PrivateIpMode::Allow);
}

#[test]
fn deny_star_is_fine_in_strict_mode() {
    let c = parse_str("version = 1\n[[policy.deny]]\nhost = \"*\"\n").unwrap();
    assert_eq!(c.policy.deny[0].matcher, Matcher::Host(HostPattern::Any));
}

#[test]
fn bad_values_are_each_reported() {
    let e = errors(
        r#"version = 1
[proxy]
listen = ["localhost:3128"]
[dns]
timeout = "soon"
[limits]
max_header_bytes = 10
[[policy.allow]]
host = "a..b"
[[policy.allow]]
host = "10.0.0.1"
[[policy.allow]]
cidr = "10.0.0.1/8"
[[policy.allow]]
host = "foo.*.com"
[[policy.allow]]
host = "a.com"
ports = [0, 70000]
[[policy.allow]]
host = "a.com"
cidr = "10.0.0.0/8"
[[policy.allow]]
ports = [1]
[plugins.Bad]
token_sha256 = "xyz"
"#,
    );
    let keys: Vec<&str> = e.iter().map(|l| l.split(": ").nth(1).unwrap()).collect();
    assert_eq!(
        keys,
        vec![
            "proxy.listen",
            "dns.timeout",
            "limits.max_header_bytes",
            "policy.allow[0].host",
            "policy.allow[1].host",
            "policy.allow[2].cidr",
            "policy.allow[3].host",
            "policy.allow[4].ports[0]",
            "policy.allow[4].ports[1]",
            "policy.allow[5]",
            "policy.allow[6]",
            "plugins.Bad",
            "plugins.Bad.token_sha256",
        ],
        "{e:#?}"
    );
    assert!(e[4].contains("use `cidr = \"10.0.0.1/32\"`"));
    assert!(e[5].contains("did you mean \"10.0.0.0/8\""));
}

#[test]
fn listeners_may_not_overlap() {
    let e = errors(
        "version = 1\n[proxy]\nlisten = [\"127.0.0.1:3128\"]\n[plugins.a]\nlisten = [\"127.0.0.1:3128\"]\n",
    );
    assert_eq!(e.len(), 1);
    assert!(
        e[0].contains("plugins.a.listen: 127.0.0.1:3128 is already used"),
        "{e:?}"
    );
}

#[test]
fn nameservers_default_to_port_53_and_stdout_audit() {
    let c = parse_str(
        "version = 1\n[dns]\nnameservers = [\"10.0.0.2\", \"[::1]:5353\"]\n[audit]\npath = \"-\"\n",
    )
    .unwrap();
    assert_eq!(
        c.dns.nameservers,
        vec![
            "10.0.0.2:53".parse().unwrap(),
            "[::1]:5353".parse().unwrap()
        ]
    );
    assert_eq!(c.audit.path, AuditPath::Stdout);
}

#[test]
fn missing_file_is_a_read_error() {
    let err = load(Path::new("/nonexistent/egress.toml")).unwrap_err();
    assert!(matches!(err, LoadError::Read { .. }));
    assert!(
        err.to_string()
            .starts_with("/nonexistent/egress.toml: cannot read policy file")
    );
}

#[test]
fn strict_mode_refuses_piecewise_universal_allows() {
    let e = errors(
        "version = 1\n[[policy.allow]]\ncidr = \"0.0.0.0/1\"\n[[policy.allow]]\ncidr = \"2000::/3\"\n[[policy.allow]]\nhost = \"*.com\"\n",
    );
    assert_eq!(e.len(), 3, "{e:?}");
    assert!(e[0].contains("policy.allow[0].cidr: a /1 allow block is broader"));
    assert!(e[1].contains("policy.allow[1].cidr: a /3 allow block is broader"));
    assert!(e[2].contains("policy.allow[2].host: `*.com` allows a whole top-level domain"));
    // Not strict: allowed. Deny rules may always be broad.
    assert!(
        parse_str("version = 1\n[policy]\nstrict = false\n[[policy.allow]]\nhost = \"*.com\"\n")
            .is_ok()
    );
    assert!(parse_str("version = 1\n[[policy.deny]]\ncidr = \"0.0.0.0/1\"\n").is_ok());
    assert!(parse_str("version = 1\n[[policy.allow]]\ncidr = \"10.0.0.0/8\"\n").is_ok());
}

#[test]
fn listeners_are_unique_and_nameservers_need_a_port() {
    let e = errors(
        "version = 1\n[proxy]\nlisten = [\"127.0.0.1:3128\", \"127.0.0.1:3128\"]\n[dns]\nnameservers = [\"127.0.0.1:0\"]\n",
    );
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].starts_with("p.toml:3:29: proxy.listen: 127.0.0.1:3128 is already used"),
        "{e:?}"
    );
    assert!(
        e[1].contains("dns.nameservers: \"127.0.0.1:0\": port 0"),
        "{e:?}"
    );
}

#[test]
fn control_uids_are_user_ids() {
    let c = parse_str("version = 1\n[proxy]\ncontrol_uids = [0, 1000]\n").unwrap();
    assert_eq!(c.proxy.control_uids, vec![0, 1000]);
    assert!(
        parse_str("version = 1\n")
            .unwrap()
            .proxy
            .control_uids
            .is_empty()
    );
    let e = errors("version = 1\n[proxy]\ncontrol_uids = [-1]\n");
    assert_eq!(
        e,
        vec!["p.toml:3:17: proxy.control_uids[0]: -1 is not a user id"]
    );
}
