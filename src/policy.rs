//! The compiled `network-egress` policy and the decisions it makes.
//!
//! Owns the allowlist-first semantics: deny rules beat allow rules, nothing matches by default, a
//! plugin sees the global rules plus its own, and a non-public address is reachable only through a
//! port-scoped `cidr` allow rule. Everything here is pure and synchronous: it never resolves a
//! name, never reads a file and never touches a socket. Rules are compiled once into hash maps
//! keyed by name, suffix and prefix length, so a decision costs the same with ten rules or a million.

mod matchers;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::addr::{self, Class};
use crate::config::{Config, Mode, PrivateIpMode, Rule};
use crate::target::Target;
use matchers::Matchers;

/// The name of the rule that decided, as written in the file (`policy.allow[3]`).
pub type RuleId = Arc<str>;

/// A compiled policy, immutable once built; shared behind an `Arc`.
#[derive(Debug)]
pub struct Policy {
    /// SHA-256 of the policy file, stamped on every audit record.
    pub sha256: Arc<str>,
    pub mode: Mode,
    private_ip_mode: PrivateIpMode,
    global: RuleSet,
    plugins: HashMap<Box<str>, Plugin>,
}

#[derive(Debug)]
struct Plugin {
    rules: RuleSet,
    token_sha256: Option<[u8; 32]>,
}

#[derive(Debug, Default)]
struct RuleSet {
    allow: Matchers,
    deny: Matchers,
}

/// What the rules say about a target, before any address is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Allow {
        rule: RuleId,
    },
    Deny {
        reason: DenyReason,
        rule: Option<RuleId>,
    },
}

/// Why a request was denied. `code()` is the stable reason code clients and records carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    /// No allow rule matched host and port.
    NoMatchingRule,
    /// A deny rule matched (it wins over every allow).
    DenyRule,
    /// The destination is, or resolved to, an address that is not public and no exception covers.
    NonPublicAddress(Vec<IpAddr>),
}

impl DenyReason {
    pub fn code(&self) -> &'static str {
        match self {
            DenyReason::NoMatchingRule => "no_matching_rule",
            DenyReason::DenyRule => "deny_rule",
            DenyReason::NonPublicAddress(_) => "non_public_address",
        }
    }
}

/// A decision: the rules' outcome and whether a denial is enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    /// False in report mode: the denial is recorded but the request goes ahead.
    pub enforced: bool,
}

impl Decision {
    /// Whether the request may go ahead.
    pub fn permits(&self) -> bool {
        matches!(self.outcome, Outcome::Allow { .. }) || !self.enforced
    }

    pub fn rule(&self) -> Option<&RuleId> {
        match &self.outcome {
            Outcome::Allow { rule } => Some(rule),
            Outcome::Deny { rule, .. } => rule.as_ref(),
        }
    }
}

/// Why an address set was refused after resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressDenial {
    pub reason: DenyReason,
    pub rule: Option<RuleId>,
}

/// Why a `Proxy-Authorization` token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no such plugin")]
    UnknownPlugin,
    #[error("plugin has no token configured")]
    NoToken,
    #[error("wrong token")]
    WrongToken,
}

// === impl Policy ===

impl Policy {
    /// Compiles a validated configuration.
    pub fn compile(config: &Config) -> Policy {
        let plugins = config
            .plugins
            .iter()
            .map(|(name, p)| {
                let plugin = Plugin {
                    rules: RuleSet::compile(&p.allow, &p.deny),
                    token_sha256: p.token_sha256,
                };
                (Box::from(name.as_str()), plugin)
            })
            .collect();
        Policy {
            sha256: config.sha256.as_str().into(),
            mode: config.policy.mode,
            private_ip_mode: config.policy.private_ip_mode,
            global: RuleSet::compile(&config.policy.allow, &config.policy.deny),
            plugins,
        }
    }

    /// Whether a plugin of this name is declared.
    pub fn has_plugin(&self, name: &str) -> bool {
        self.plugins.contains_key(name)
    }

    /// Checks a plugin's proxy token against its `token_sha256`, in constant time.
    pub fn authenticate(&self, plugin: &str, token: &[u8]) -> Result<(), AuthError> {
        let plugin = self.plugins.get(plugin).ok_or(AuthError::UnknownPlugin)?;
        let expected = plugin.token_sha256.ok_or(AuthError::NoToken)?;
        let actual: [u8; 32] = Sha256::digest(token).into();
        if bool::from(actual.ct_eq(&expected)) {
            Ok(())
        } else {
            Err(AuthError::WrongToken)
        }
    }

    /// Decides a target by its rules alone: deny rules first, then allow rules, global and the
    /// plugin's own; no match is a denial.
    pub fn decide(&self, plugin: Option<&str>, target: &Target) -> Decision {
        let outcome = self.outcome(plugin, target);
        Decision {
            enforced: self.mode == Mode::Enforce,
            outcome,
        }
    }

    fn outcome(&self, plugin: Option<&str>, target: &Target) -> Outcome {
        let plugin_rules = plugin.and_then(|p| self.plugins.get(p)).map(|p| &p.rules);
        let sets = [Some(&self.global), plugin_rules];
        for set in sets.iter().flatten() {
            if let Some(rule) = set.deny.match_target(target) {
                return Outcome::Deny {
                    reason: DenyReason::DenyRule,
                    rule: Some(rule.clone()),
                };
            }
        }
        for set in sets.iter().flatten() {
            if let Some(rule) = set.allow.match_target(target) {
                return Outcome::Allow { rule: rule.clone() };
            }
        }
        Outcome::Deny {
            reason: DenyReason::NoMatchingRule,
            rule: None,
        }
    }

    /// Vets every address a target resolved to (or the literal it named). If ANY address is refused
    /// the whole set is: an answer mixing public and private addresses is a rebinding attempt.
    ///
    /// Refused, always (also in report mode — report mode is for learning an allowlist, never for
    /// switching off SSRF protection): one of the proxy's own listening sockets, or an address that
    /// is not public and that no allow `cidr` rule covers on this port (with
    /// `private_ip_mode = "allow"` only the cloud-metadata endpoints still need such a rule).
    /// Then a deny `cidr` rule covering an address refuses the set in enforce mode; in report mode
    /// it is returned as `Ok(Some(rule))` for the caller to record.
    pub fn vet_addresses(
        &self,
        plugin: Option<&str>,
        port: u16,
        addrs: &[IpAddr],
        own_listeners: &[SocketAddr],
    ) -> Result<Option<RuleId>, AddressDenial> {
        let plugin_rules = plugin.and_then(|p| self.plugins.get(p)).map(|p| &p.rules);
        let sets = [Some(&self.global), plugin_rules];
        let refused: Vec<IpAddr> = addrs
            .iter()
            .copied()
            .filter(|&ip| {
                if is_own_listener(ip, port, own_listeners) {
                    return true;
                }
                let Class::NonPublic(np) = addr::classify(ip) else {
                    return false;
                };
                let waived =
                    self.private_ip_mode == PrivateIpMode::Allow && np.name != addr::CLOUD_METADATA;
                let excepted = || {
                    sets.iter()
                        .flatten()
                        .any(|s| s.allow.match_addr(ip, port).is_some())
                };
                !waived && !excepted()
            })
            .collect();
        if !refused.is_empty() {
            return Err(AddressDenial {
                reason: DenyReason::NonPublicAddress(refused),
                rule: None,
            });
        }
        let denied_by = addrs.iter().find_map(|&ip| {
            sets.iter()
                .flatten()
                .find_map(|s| s.deny.match_addr(ip, port))
        });
        match denied_by {
            None => Ok(None),
            Some(rule) if self.mode == Mode::Report => Ok(Some(rule.clone())),
            Some(rule) => Err(AddressDenial {
                reason: DenyReason::DenyRule,
                rule: Some(rule.clone()),
            }),
        }
    }
}

/// The proxy must never dial itself: that would loop a request back through its own policy.
/// For a wildcard listener this knows only loopback; `Egress` adds the machine's other addresses,
/// which it asks the kernel about (I/O has no place here).
fn is_own_listener(ip: IpAddr, port: u16, own: &[SocketAddr]) -> bool {
    // `::ffff:127.0.0.1` reaches a socket bound to 127.0.0.1: compare canonical forms.
    let ip = ip.to_canonical();
    own.iter().any(|l| {
        let listen_ip = l.ip().to_canonical();
        l.port() == port
            && (listen_ip == ip
                || (listen_ip.is_unspecified() && (ip.is_loopback() || ip.is_unspecified())))
    })
}

// === impl RuleSet ===

impl RuleSet {
    fn compile(allow: &[Rule], deny: &[Rule]) -> RuleSet {
        RuleSet {
            allow: Matchers::compile(allow),
            deny: Matchers::compile(deny),
        }
    }
}

#[cfg(test)]
mod tests;
