//! Loading and validating a `network-egress` policy file into typed configuration.
//!
//! Owns the file format: the raw TOML shape (unknown keys are errors), the documented defaults,
//! and every load-time refusal (strict mode, malformed hosts, overlapping listeners). Every problem
//! is reported as `FILE:LINE:COL: key.path: message`, all of them at once where parsing got far
//! enough. It never compiles rules into matchers (that is `policy`) and never opens sockets.

mod diag;
mod raw;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use diag::Diagnostics;
pub use diag::{ConfigError, Diagnostic};
use raw::{RawFile, RawRule};

use crate::target::{self, Host};

/// The only policy format version this build understands.
pub const SUPPORTED_VERSION: i64 = 1;
/// Broadest `cidr` allow block strict mode accepts: several broad blocks could add up to
/// "everything" without any one of them being `/0`.
pub const STRICT_MIN_PREFIX_V4: u8 = 8;
pub const STRICT_MIN_PREFIX_V6: u8 = 16;
/// Ports an allow rule covers when it names none.
pub const DEFAULT_ALLOW_PORTS: [u16; 2] = [80, 443];

/// A validated policy file.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was loaded from, for messages and the `policy.load` record.
    pub path: PathBuf,
    /// SHA-256 of the exact file bytes, lower-case hex: binds audit records to the policy in force.
    pub sha256: String,
    pub proxy: ProxyConfig,
    pub audit: AuditConfig,
    pub dns: DnsConfig,
    pub limits: Limits,
    pub policy: PolicyConfig,
    /// Per-plugin capability declarations, by plugin name.
    pub plugins: BTreeMap<String, PluginConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Anonymous listeners: connections here have no plugin identity unless they authenticate.
    pub listen: Vec<SocketAddr>,
    /// Users allowed to launch plugins over the daemon's control socket (`serve --control`);
    /// empty means the daemon's own uid.
    pub control_uids: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditPath {
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    pub path: AuditPath,
    /// HMAC key for the hash chain; without one the chain is plain SHA-256.
    pub key_file: Option<PathBuf>,
    pub fsync: FsyncMode,
    /// Rotate the trail file before it would grow past this many bytes.
    pub max_bytes: Option<u64>,
    /// Rotated files kept (`audit.jsonl.1` … `.keep`).
    pub keep: u32,
    pub on_drift: DriftAction,
}

/// When trail writes are forced to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncMode {
    /// Before any request that depends on a record goes ahead (group commit batches waiters).
    Always,
    /// At most once a second; a power failure can lose the last second.
    Interval,
    /// Left to the operating system.
    Never,
}

/// What happens when the policy file changes on disk without a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriftAction {
    /// Record `policy.drift`, stop accepting, close tunnels, exit non-zero.
    Halt,
    /// Record `policy.drift` and reload as if on SIGHUP.
    Reload,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Resolvers to ask; empty means the system resolver configuration.
    pub nameservers: Vec<SocketAddr>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub connect_timeout: Duration,
    pub header_read_timeout: Duration,
    /// A tunnel or keep-alive connection with no traffic either way for this long is closed.
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// Largest request head (request line plus headers) accepted, in bytes.
    pub max_header_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Denials are enforced.
    Enforce,
    /// Rule denials are recorded as violations but let through (address-safety checks still hold).
    Report,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrivateIpMode {
    Deny,
    Allow,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    pub mode: Mode,
    pub strict: bool,
    pub private_ip_mode: PrivateIpMode,
    pub allow: Vec<Rule>,
    pub deny: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginConfig {
    /// Listeners whose connections are this plugin's, whatever they send.
    pub listen: Vec<SocketAddr>,
    /// SHA-256 of the plugin's proxy token, for identification by `Proxy-Authorization`.
    pub token_sha256: Option<[u8; 32]>,
    pub allow: Vec<Rule>,
    pub deny: Vec<Rule>,
}

/// One allow or deny rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Stable name of the rule in the file, e.g. `policy.allow[0]`; audit records cite it.
    pub id: String,
    pub matcher: Matcher,
    pub ports: Ports,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    Host(HostPattern),
    Cidr(IpNet),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Exactly this normalised name.
    Exact(Box<str>),
    /// Any name strictly below this one (`*.example.com`: not `example.com` itself).
    Subdomains(Box<str>),
    /// Every name (`*`); refused in strict mode.
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ports {
    All,
    List(Vec<u16>),
}

impl Ports {
    pub fn contains(&self, port: u16) -> bool {
        match self {
            Ports::All => true,
            Ports::List(list) => list.contains(&port),
        }
    }
}

// === loading ===

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}: cannot read policy file: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(#[from] ConfigError),
}

/// Reads and validates a policy file.
pub fn load(path: &Path) -> Result<Config, LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let text = match std::str::from_utf8(&bytes) {
        Ok(t) => t,
        Err(e) => {
            let mut diags = Diagnostics::new(path, "");
            diags.error(
                0..0,
                "",
                format!("file is not valid UTF-8 (byte {})", e.valid_up_to()),
            );
            return Err(diags.finish().unwrap_err().into());
        }
    };
    Ok(parse(path, text)?)
}

/// Validates policy text; `path` is used for messages only.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let mut diags = Diagnostics::new(path, text);
    let raw = match raw::deserialize(text) {
        Ok(raw) => raw,
        Err(e) => {
            diags.error(e.span.unwrap_or(0..0), e.key, e.message);
            return Err(diags.finish().unwrap_err());
        }
    };
    let config = build(path, text, raw, &mut diags);
    diags.finish()?;
    Ok(config)
}

fn build(path: &Path, text: &str, raw: RawFile, diags: &mut Diagnostics) -> Config {
    if *raw.version.get_ref() != SUPPORTED_VERSION {
        diags.error(
            raw.version.span(),
            "version",
            format!(
                "unsupported version {}; this build reads version {SUPPORTED_VERSION}",
                raw.version.get_ref()
            ),
        );
    }
    let proxy = raw.proxy.unwrap_or_default();
    let audit = raw.audit.unwrap_or_default();
    let dns = raw.dns.unwrap_or_default();
    let limits = raw.limits.unwrap_or_default();
    let policy = raw.policy.unwrap_or_default();
    let strict = policy.strict.unwrap_or(true);

    let mut seen_listen: HashSet<SocketAddr> = HashSet::new();
    let listen = match proxy.listen {
        Some(list) => listener_addrs(&list, "proxy.listen", &mut seen_listen, diags),
        None => vec![SocketAddr::from(([127, 0, 0, 1], 3128))],
    };

    let mut control_uids = Vec::new();
    for (i, uid) in proxy.control_uids.unwrap_or_default().iter().enumerate() {
        match u32::try_from(*uid.get_ref()) {
            Ok(u) if u != u32::MAX => control_uids.push(u),
            _ => diags.error(
                uid.span(),
                format!("proxy.control_uids[{i}]"),
                format!("{} is not a user id", uid.get_ref()),
            ),
        }
    }

    let audit_path = match audit.path {
        None => AuditPath::File(PathBuf::from("audit.jsonl")),
        Some(p) if p.get_ref() == "-" => AuditPath::Stdout,
        Some(p) if p.get_ref().is_empty() => {
            diags.error(
                p.span(),
                "audit.path",
                "must be a file path or \"-\" for stdout",
            );
            AuditPath::Stdout
        }
        Some(p) => AuditPath::File(PathBuf::from(p.into_inner())),
    };

    let key_file = audit.key_file.and_then(|k| {
        if k.get_ref().is_empty() {
            diags.error(
                k.span(),
                "audit.key_file",
                "must be a path to a file holding the HMAC key",
            );
            None
        } else {
            Some(PathBuf::from(k.into_inner()))
        }
    });
    let fsync = match audit
        .fsync
        .as_ref()
        .map(|m| (m.get_ref().as_str(), m.span()))
    {
        None | Some(("always", _)) => FsyncMode::Always,
        Some(("interval", _)) => FsyncMode::Interval,
        Some(("never", _)) => FsyncMode::Never,
        Some((other, span)) => {
            diags.error(
                span,
                "audit.fsync",
                format!("unknown value {other:?}; expected \"always\", \"interval\" or \"never\""),
            );
            FsyncMode::Always
        }
    };
    let on_drift = match audit
        .on_drift
        .as_ref()
        .map(|m| (m.get_ref().as_str(), m.span()))
    {
        None | Some(("halt", _)) => DriftAction::Halt,
        Some(("reload", _)) => DriftAction::Reload,
        Some((other, span)) => {
            diags.error(
                span,
                "audit.on_drift",
                format!("unknown value {other:?}; expected \"halt\" or \"reload\""),
            );
            DriftAction::Halt
        }
    };
    let max_bytes = audit
        .max_bytes
        .map(|m| bounded_int(Some(m), "audit.max_bytes", 0, 4096..=(1 << 40), diags) as u64);
    let keep = bounded_int(audit.keep, "audit.keep", 5, 1..=1000, diags) as u32;
    let audit = AuditConfig {
        path: audit_path,
        key_file,
        fsync,
        max_bytes,
        keep,
        on_drift,
    };

    let nameservers = socket_addrs(
        &dns.nameservers.unwrap_or_default(),
        "dns.nameservers",
        Some(53),
        diags,
    );
    let dns = DnsConfig {
        nameservers,
        timeout: duration(dns.timeout, "dns.timeout", Duration::from_secs(5), diags),
    };

    let limits = Limits {
        connect_timeout: duration(
            limits.connect_timeout,
            "limits.connect_timeout",
            Duration::from_secs(10),
            diags,
        ),
        header_read_timeout: duration(
            limits.header_read_timeout,
            "limits.header_read_timeout",
            Duration::from_secs(10),
            diags,
        ),
        idle_timeout: duration(
            limits.idle_timeout,
            "limits.idle_timeout",
            Duration::from_secs(300),
            diags,
        ),
        max_connections: bounded_int(
            limits.max_connections,
            "limits.max_connections",
            4096,
            1..=1_000_000,
            diags,
        ),
        max_header_bytes: bounded_int(
            limits.max_header_bytes,
            "limits.max_header_bytes",
            65536,
            8192..=1 << 20,
            diags,
        ),
    };

    let mode = match policy
        .mode
        .as_ref()
        .map(|m| (m.get_ref().as_str(), m.span()))
    {
        None | Some(("enforce", _)) => Mode::Enforce,
        Some(("report", _)) => Mode::Report,
        Some((other, span)) => {
            diags.error(
                span,
                "policy.mode",
                format!("unknown mode {other:?}; expected \"enforce\" or \"report\""),
            );
            Mode::Enforce
        }
    };
    let private_ip_mode = match policy
        .private_ip_mode
        .as_ref()
        .map(|m| (m.get_ref().as_str(), m.span()))
    {
        None | Some(("deny", _)) => PrivateIpMode::Deny,
        Some(("allow", span)) => {
            if strict {
                diags.error(
                    span,
                    "policy.private_ip_mode",
                    "\"allow\" is refused in strict mode; add a port-scoped `cidr` allow rule for the internal address you need, or set strict = false",
                );
            }
            PrivateIpMode::Allow
        }
        Some((other, span)) => {
            diags.error(
                span,
                "policy.private_ip_mode",
                format!("unknown value {other:?}; expected \"deny\" or \"allow\""),
            );
            PrivateIpMode::Deny
        }
    };

    let allow = rules(
        policy.allow.unwrap_or_default(),
        "policy.allow",
        RuleKind::Allow,
        strict,
        diags,
    );
    let deny = rules(
        policy.deny.unwrap_or_default(),
        "policy.deny",
        RuleKind::Deny,
        strict,
        diags,
    );

    let mut plugins = BTreeMap::new();
    for (name, plugin) in raw.plugins.unwrap_or_default() {
        let key = format!("plugins.{name}");
        let span = plugin.span();
        let plugin = plugin.into_inner();
        if !valid_plugin_name(&name) {
            diags.error(
                span.clone(),
                &key,
                "plugin names use only a-z, 0-9, '-' and '_' (1 to 64 characters)",
            );
        }
        let plugin_listen = listener_addrs(
            &plugin.listen.unwrap_or_default(),
            &format!("{key}.listen"),
            &mut seen_listen,
            diags,
        );
        let token_sha256 = plugin.token_sha256.and_then(|t| {
            let mut out = [0u8; 32];
            match hex::decode_to_slice(t.get_ref(), &mut out) {
                Ok(()) => Some(out),
                Err(_) => {
                    diags.error(
                        t.span(),
                        format!("{key}.token_sha256"),
                        "must be 64 hexadecimal characters (the SHA-256 of the token)",
                    );
                    None
                }
            }
        });
        let config = PluginConfig {
            listen: plugin_listen,
            token_sha256,
            allow: rules(
                plugin.allow.unwrap_or_default(),
                &format!("{key}.allow"),
                RuleKind::Allow,
                strict,
                diags,
            ),
            deny: rules(
                plugin.deny.unwrap_or_default(),
                &format!("{key}.deny"),
                RuleKind::Deny,
                strict,
                diags,
            ),
        };
        plugins.insert(name, config);
    }

    Config {
        path: path.to_path_buf(),
        sha256: hex::encode(Sha256::digest(text.as_bytes())),
        proxy: ProxyConfig {
            listen,
            control_uids,
        },
        audit,
        dns,
        limits,
        policy: PolicyConfig {
            mode,
            strict,
            private_ip_mode,
            allow,
            deny,
        },
        plugins,
    }
}

fn valid_plugin_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RuleKind {
    Allow,
    Deny,
}

fn rules(
    raw: Vec<toml::Spanned<RawRule>>,
    list_key: &str,
    kind: RuleKind,
    strict: bool,
    diags: &mut Diagnostics,
) -> Vec<Rule> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, spanned) in raw.into_iter().enumerate() {
        let id = format!("{list_key}[{i}]");
        let span = spanned.span();
        let rule = spanned.into_inner();
        let matcher = match (rule.host, rule.cidr) {
            (Some(host), None) => host_pattern(&host, &id, kind, strict, diags).map(Matcher::Host),
            (None, Some(cidr)) => cidr_matcher(&cidr, &id, kind, strict, diags).map(Matcher::Cidr),
            (Some(_), Some(_)) => {
                diags.error(span, &id, "a rule has either `host` or `cidr`, not both");
                None
            }
            (None, None) => {
                diags.error(span, &id, "a rule needs `host` or `cidr`");
                None
            }
        };
        let ports = match rule.ports {
            None if kind == RuleKind::Allow => Some(Ports::List(DEFAULT_ALLOW_PORTS.to_vec())),
            None => Some(Ports::All),
            Some(list) => port_list(&list, &format!("{id}.ports"), diags),
        };
        if let (Some(matcher), Some(ports)) = (matcher, ports) {
            out.push(Rule { id, matcher, ports });
        }
    }
    out
}

fn host_pattern(
    host: &toml::Spanned<String>,
    id: &str,
    kind: RuleKind,
    strict: bool,
    diags: &mut Diagnostics,
) -> Option<HostPattern> {
    let key = format!("{id}.host");
    let raw = host.get_ref().as_str();
    if raw == "*" {
        if strict && kind == RuleKind::Allow {
            diags.error(
                host.span(),
                key,
                "universal allow (`*`) is refused in strict mode: list the hosts this workload needs, or set strict = false",
            );
            return None;
        }
        return Some(HostPattern::Any);
    }
    let (wildcard, name) = match raw.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, raw),
    };
    if name.contains('*') {
        diags.error(
            host.span(),
            key,
            "`*` is only allowed as a whole leading label (`*.example.com`) or alone",
        );
        return None;
    }
    match target::normalize_host(name) {
        Ok(Host::Name(n)) if wildcard && strict && kind == RuleKind::Allow && !n.contains('.') => {
            diags.error(
                host.span(),
                key,
                format!("`*.{n}` allows a whole top-level domain and is refused in strict mode: name the domains you need"),
            );
            None
        }
        Ok(Host::Name(n)) if wildcard => Some(HostPattern::Subdomains(n)),
        Ok(Host::Name(n)) => Some(HostPattern::Exact(n)),
        Ok(Host::Ip(ip)) => {
            diags.error(
                host.span(),
                key,
                format!(
                    "{ip} is an address: use `cidr = \"{ip}/{}\"` for address rules",
                    if ip.is_ipv4() { 32 } else { 128 }
                ),
            );
            None
        }
        Err(e) => {
            diags.error(host.span(), key, format!("invalid host pattern: {e}"));
            None
        }
    }
}

fn cidr_matcher(
    cidr: &toml::Spanned<String>,
    id: &str,
    kind: RuleKind,
    strict: bool,
    diags: &mut Diagnostics,
) -> Option<IpNet> {
    let key = format!("{id}.cidr");
    let raw = cidr.get_ref().as_str();
    let net = match raw.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match raw.parse::<std::net::IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => {
                diags.error(
                    cidr.span(),
                    key,
                    format!("{raw:?} is not an address or CIDR block such as \"10.0.0.0/8\""),
                );
                return None;
            }
        },
    };
    if net.trunc() != net {
        diags.error(
            cidr.span(),
            key,
            format!("host bits are set; did you mean \"{}\"?", net.trunc()),
        );
        return None;
    }
    if strict && kind == RuleKind::Allow && net.prefix_len() == 0 {
        diags.error(
            cidr.span(),
            key,
            "universal allow (a /0 block) is refused in strict mode: allow the specific addresses this workload needs",
        );
        return None;
    }
    let broadest = if net.addr().is_ipv4() {
        STRICT_MIN_PREFIX_V4
    } else {
        STRICT_MIN_PREFIX_V6
    };
    if strict && kind == RuleKind::Allow && net.prefix_len() < broadest {
        diags.error(
            cidr.span(),
            key,
            format!("a /{} allow block is broader than strict mode accepts (/{broadest} at most): allow the specific addresses this workload needs", net.prefix_len()),
        );
        return None;
    }
    Some(net)
}

fn port_list(
    list: &toml::Spanned<Vec<toml::Spanned<i64>>>,
    key: &str,
    diags: &mut Diagnostics,
) -> Option<Ports> {
    if list.get_ref().is_empty() {
        diags.error(
            list.span(),
            key,
            "an empty port list matches nothing; omit `ports` for the default or list ports",
        );
        return None;
    }
    let mut ports = Vec::with_capacity(list.get_ref().len());
    let mut ok = true;
    for (i, p) in list.get_ref().iter().enumerate() {
        match u16::try_from(*p.get_ref()) {
            Ok(port) if port != 0 => ports.push(port),
            _ => {
                diags.error(
                    p.span(),
                    format!("{key}[{i}]"),
                    format!("{} is not a port from 1 to 65535", p.get_ref()),
                );
                ok = false;
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ok.then_some(Ports::List(ports))
}

fn socket_addrs(
    list: &[toml::Spanned<String>],
    key: &str,
    default_port: Option<u16>,
    diags: &mut Diagnostics,
) -> Vec<SocketAddr> {
    let mut out = Vec::with_capacity(list.len());
    for item in list {
        let raw = item.get_ref();
        let parsed = raw.parse::<SocketAddr>().ok().or_else(|| {
            let ip = raw.parse::<std::net::IpAddr>().ok()?;
            Some(SocketAddr::new(ip, default_port?))
        });
        match parsed {
            Some(addr) if addr.port() == 0 && default_port.is_some() => {
                diags.error(
                    item.span(),
                    key,
                    format!("{raw:?}: port 0 is not a DNS server port"),
                );
            }
            Some(addr) => out.push(addr),
            None => {
                let form = if default_port.is_some() {
                    "\"IP\" or \"IP:port\""
                } else {
                    "\"IP:port\" (e.g. \"127.0.0.1:3128\")"
                };
                diags.error(
                    item.span(),
                    key,
                    format!("{raw:?} is not an address of the form {form}"),
                );
            }
        }
    }
    out
}

/// Listener addresses: like `socket_addrs`, and each may be used once across all listeners.
fn listener_addrs(
    list: &[toml::Spanned<String>],
    key: &str,
    seen: &mut HashSet<SocketAddr>,
    diags: &mut Diagnostics,
) -> Vec<SocketAddr> {
    let mut out = Vec::with_capacity(list.len());
    for item in list {
        let Some(addr) = socket_addrs(std::slice::from_ref(item), key, None, diags).pop() else {
            continue;
        };
        if seen.insert(addr) {
            out.push(addr);
        } else {
            diags.error(
                item.span(),
                key,
                format!("{addr} is already used by another listener"),
            );
        }
    }
    out
}

fn duration(
    raw: Option<toml::Spanned<String>>,
    key: &str,
    default: Duration,
    diags: &mut Diagnostics,
) -> Duration {
    let Some(raw) = raw else { return default };
    match humantime::parse_duration(raw.get_ref()) {
        Ok(d) if !d.is_zero() => d,
        Ok(_) => {
            diags.error(raw.span(), key, "must be longer than zero");
            default
        }
        Err(e) => {
            diags.error(
                raw.span(),
                key,
                format!(
                    "{:?} is not a duration such as \"10s\" or \"5m\": {e}",
                    raw.get_ref()
                ),
            );
            default
        }
    }
}

fn bounded_int(
    raw: Option<toml::Spanned<i64>>,
    key: &str,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
    diags: &mut Diagnostics,
) -> usize {
    let Some(raw) = raw else { return default };
    match usize::try_from(*raw.get_ref()) {
        Ok(v) if range.contains(&v) => v,
        _ => {
            diags.error(
                raw.span(),
                key,
                format!("must be from {} to {}", range.start(), range.end()),
            );
            default
        }
    }
}

#[cfg(test)]
mod tests;
