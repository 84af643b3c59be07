//! Parsing and normalisation of where a client wants to go.
//!
//! This module owns the single definition of a *normalised host*: every host the proxy decides on,
//! and every host pattern in a policy, goes through [`normalize_host`], so a name can never be
//! matched in one spelling and resolved in another. A host an inet_aton-style parser would read as
//! an IPv4 address (`2130706433`, `0x7f.1`, `127.1`) becomes that address here and is never sent to
//! DNS. This module never resolves names and never does I/O.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use crate::addr;

/// Longest host name accepted (RFC 1035: 253 characters in presentation form).
pub const MAX_HOST_LEN: usize = 253;
/// Longest label accepted.
const MAX_LABEL_LEN: usize = 63;

/// A normalised destination host: a lower-case ASCII name (punycode, no trailing dot) or an address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Name(Box<str>),
    Ip(IpAddr),
}

/// A normalised destination: host plus port. Only this module constructs it from client input.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub host: Host,
    pub port: u16,
}

/// Why a destination was rejected as malformed. Each maps to a 400 with the given reason code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("host is empty")]
    EmptyHost,
    #[error("host is longer than {MAX_HOST_LEN} characters")]
    HostTooLong,
    #[error("host has an empty label")]
    EmptyLabel,
    #[error("host has a label longer than {MAX_LABEL_LEN} characters")]
    LabelTooLong,
    #[error("host contains a forbidden character {0:?}")]
    ForbiddenChar(char),
    #[error("host is not a valid internationalised domain name")]
    InvalidIdna,
    #[error("host looks like a numeric address but is not a valid one")]
    InvalidNumericHost,
    #[error("host is not a valid bracketed IPv6 address")]
    InvalidIpv6,
    #[error("IPv6 zone identifiers are not accepted")]
    Ipv6ZoneId,
    #[error("userinfo (user@) is not accepted in a proxy target")]
    Userinfo,
    #[error("port is missing")]
    MissingPort,
    #[error("port is not a number from 1 to 65535")]
    InvalidPort,
    #[error("only http:// URIs can be forwarded; use CONNECT for https")]
    UnsupportedScheme,
    #[error("request target is not absolute-form; configure this server as a proxy")]
    NotAbsoluteForm,
}

impl TargetError {
    /// The stable reason code clients and audit records see.
    pub fn reason(&self) -> &'static str {
        match self {
            TargetError::Userinfo => "userinfo_not_allowed",
            TargetError::MissingPort | TargetError::InvalidPort => "invalid_port",
            TargetError::UnsupportedScheme => "unsupported_scheme",
            TargetError::NotAbsoluteForm => "not_a_proxy_request",
            _ => "invalid_host",
        }
    }
}

// === impl Host ===

impl Host {
    /// The name, when this host is one.
    pub fn as_name(&self) -> Option<&str> {
        match self {
            Host::Name(n) => Some(n),
            Host::Ip(_) => None,
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

// === parsing ===

/// Parses a CONNECT request target (`host:port`, `[v6]:port`). The port is mandatory.
pub fn parse_connect_authority(authority: &str) -> Result<Target, TargetError> {
    let (host, port) = split_authority(authority)?;
    let port = port.ok_or(TargetError::MissingPort)?;
    Ok(Target {
        host: normalize_host(host)?,
        port: parse_port(port)?,
    })
}

/// Parses the target of an absolute-form request. Only `http` is forwarded; the port defaults to 80.
pub fn parse_absolute_uri(uri: &http::Uri) -> Result<Target, TargetError> {
    let authority = uri.authority().ok_or(TargetError::NotAbsoluteForm)?;
    match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => {}
        Some(_) => return Err(TargetError::UnsupportedScheme),
        None => return Err(TargetError::NotAbsoluteForm),
    }
    let (host, port) = split_authority(authority.as_str())?;
    Ok(Target {
        host: normalize_host(host)?,
        port: match port {
            Some(p) => parse_port(p)?,
            None => 80,
        },
    })
}

/// Splits `host[:port]`, handling brackets, and refuses userinfo.
fn split_authority(authority: &str) -> Result<(&str, Option<&str>), TargetError> {
    if authority.contains('@') {
        return Err(TargetError::Userinfo);
    }
    if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or(TargetError::InvalidIpv6)?;
        let host = &authority[..inside.len() + 2];
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err(TargetError::InvalidIpv6),
            },
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Ok((host, Some(port))),
        None => Ok((authority, None)),
    }
}

/// Parses a decimal port from 1 to 65535 (no sign, no leading `+`, at most 5 digits).
fn parse_port(port: &str) -> Result<u16, TargetError> {
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TargetError::InvalidPort);
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(TargetError::InvalidPort),
        Ok(p) => Ok(p),
    }
}

/// Normalises a host as written by a client (or a policy author) into a [`Host`].
///
/// Order matters: IDNA mapping runs before the numeric check, so full-width digits
/// (`１２７.０.０.１`) are read as the address they map to, not as a name.
pub fn normalize_host(raw: &str) -> Result<Host, TargetError> {
    if raw.is_empty() {
        return Err(TargetError::EmptyHost);
    }
    if let Some(c) = raw
        .chars()
        .find(|c| c.is_control() || c.is_whitespace() || matches!(c, '@' | '%' | '/' | '\\'))
    {
        return Err(match c {
            '@' => TargetError::Userinfo,
            '%' if raw.starts_with('[') => TargetError::Ipv6ZoneId,
            _ => TargetError::ForbiddenChar(c),
        });
    }
    if let Some(inner) = raw.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or(TargetError::InvalidIpv6)?;
        let ip: Ipv6Addr = inner.parse().map_err(|_| TargetError::InvalidIpv6)?;
        // An IPv4-mapped literal stays IPv6: every IPv4-embedding form is non-public on its own.
        return Ok(Host::Ip(IpAddr::V6(ip)));
    }
    if raw.len() > MAX_HOST_LEN * 4 {
        // Refuse to run IDNA over absurdly long input; no valid name is this long.
        return Err(TargetError::HostTooLong);
    }
    let ascii = idna::domain_to_ascii(raw).map_err(|_| TargetError::InvalidIdna)?;
    let name = ascii.strip_suffix('.').unwrap_or(&ascii);
    if name.is_empty() {
        return Err(TargetError::EmptyHost);
    }
    // Only one trailing dot is the root label; another is an empty label, also before the numeric
    // reading (which would otherwise take `127.0.0.1..` for 127.0.0.1).
    if name.ends_with('.') {
        return Err(TargetError::EmptyLabel);
    }
    if let Some(v4) = addr::parse_ipv4_loose(name) {
        return Ok(Host::Ip(IpAddr::V4(v4)));
    }
    if addr::looks_numeric_but_invalid(name) {
        return Err(TargetError::InvalidNumericHost);
    }
    validate_name(name)?;
    Ok(Host::Name(name.into()))
}

/// Checks an already IDNA-mapped, lower-case name: label lengths and the character set.
fn validate_name(name: &str) -> Result<(), TargetError> {
    if name.len() > MAX_HOST_LEN {
        return Err(TargetError::HostTooLong);
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(TargetError::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(TargetError::LabelTooLong);
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
        {
            return Err(TargetError::ForbiddenChar(c));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn name(s: &str) -> Host {
        Host::Name(s.into())
    }
    fn v4(a: u8, b: u8, c: u8, d: u8) -> Host {
        Host::Ip(IpAddr::V4(Ipv4Addr::new(a, b, c, d)))
    }

    #[test]
    fn names_are_normalised() {
        let cases = [
            ("Example.COM", name("example.com")),
            ("example.com.", name("example.com")),
            ("bücher.example", name("xn--bcher-kva.example")),
            ("ⓔⓥⓘⓛ.example", name("evil.example")),
            ("ＥＸＡＭＰＬＥ.com", name("example.com")),
            ("_srv.example", name("_srv.example")),
            ("2130706433", v4(127, 0, 0, 1)),
            ("0x7f.1", v4(127, 0, 0, 1)),
            ("0177.0.0.1", v4(127, 0, 0, 1)),
            ("127.1", v4(127, 0, 0, 1)),
            ("127.0.0.1.", v4(127, 0, 0, 1)),
            ("１２７.０.０.１", v4(127, 0, 0, 1)),
            ("[::1]", Host::Ip("::1".parse().unwrap())),
            (
                "[::ffff:169.254.169.254]",
                Host::Ip("::ffff:169.254.169.254".parse().unwrap()),
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize_host(raw), Ok(want), "{raw}");
        }
    }

    #[test]
    fn malformed_hosts_are_rejected() {
        let long = format!("{}.com", "a.".repeat(130));
        let long_label = format!("{}.com", "a".repeat(64));
        let cases: &[(&str, TargetError)] = &[
            ("", TargetError::EmptyHost),
            (".", TargetError::EmptyHost),
            ("a..b", TargetError::EmptyLabel),
            (".a", TargetError::EmptyLabel),
            ("example.com..", TargetError::EmptyLabel),
            ("127.0.0.1..", TargetError::EmptyLabel),
            ("16.36..", TargetError::EmptyLabel),
            ("a b", TargetError::ForbiddenChar(' ')),
            ("a\tb", TargetError::ForbiddenChar('\t')),
            ("a\0b", TargetError::ForbiddenChar('\0')),
            ("a\r\nb", TargetError::ForbiddenChar('\r')),
            ("user@host", TargetError::Userinfo),
            ("[fe80::1%eth0]", TargetError::Ipv6ZoneId),
            ("[::1", TargetError::InvalidIpv6),
            ("[nope]", TargetError::InvalidIpv6),
            ("08.0.0.1", TargetError::InvalidNumericHost),
            ("1.2.3.4.5", TargetError::InvalidNumericHost),
            ("256.0.0.1", TargetError::InvalidNumericHost),
            (&long, TargetError::HostTooLong),
            (&long_label, TargetError::LabelTooLong),
            ("exa*mple.com", TargetError::ForbiddenChar('*')),
            ("a/b", TargetError::ForbiddenChar('/')),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize_host(raw).as_ref(), Err(want), "{raw:?}");
        }
    }

    #[test]
    fn connect_authorities() {
        assert_eq!(
            parse_connect_authority("Example.com:443"),
            Ok(Target {
                host: name("example.com"),
                port: 443
            })
        );
        assert_eq!(
            parse_connect_authority("[2001:db8::1]:8443").map(|t| t.port),
            Ok(8443)
        );
        for (raw, want) in [
            ("example.com", TargetError::MissingPort),
            ("example.com:0", TargetError::InvalidPort),
            ("example.com:65536", TargetError::InvalidPort),
            ("example.com:+80", TargetError::InvalidPort),
            ("example.com:", TargetError::InvalidPort),
            ("u:p@example.com:443", TargetError::Userinfo),
            ("[::1]x:443", TargetError::InvalidIpv6),
        ] {
            assert_eq!(parse_connect_authority(raw), Err(want), "{raw}");
        }
    }

    #[test]
    fn absolute_uris() {
        let uri: http::Uri = "http://Example.com/path?q".parse().unwrap();
        assert_eq!(
            parse_absolute_uri(&uri),
            Ok(Target {
                host: name("example.com"),
                port: 80
            })
        );
        let uri: http::Uri = "https://example.com/".parse().unwrap();
        assert_eq!(
            parse_absolute_uri(&uri),
            Err(TargetError::UnsupportedScheme)
        );
        let uri: http::Uri = "/just/a/path".parse().unwrap();
        assert_eq!(parse_absolute_uri(&uri), Err(TargetError::NotAbsoluteForm));
        let uri: http::Uri = "http://user:pw@example.com/".parse().unwrap();
        assert_eq!(parse_absolute_uri(&uri), Err(TargetError::Userinfo));
    }
}
