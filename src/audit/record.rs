//! Audit record types: one struct per event, serialised as one JSON object per line.
//! Fields hold only what is safe to keep: no header values, no userinfo, redacted query strings.

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

/// Every event the trail can hold.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Record {
    NetReq(NetReq),
    Violation(Violation),
    ProxyStart(ProxyStart),
    ToolExec(ToolExec),
}

/// One request through the proxy: what was asked, what was decided, what was dialed, and how much
/// moved. Written once the exchange is over (or refused).
#[derive(Debug, Clone, Serialize)]
pub struct NetReq {
    pub ts: String,
    pub audit_id: String,
    pub event: &'static str,
    pub plugin: Option<String>,
    pub client: SocketAddr,
    pub method: String,
    pub host: String,
    pub port: u16,
    /// Plain-HTTP only: the path with secret-looking query values redacted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub resolved: Vec<IpAddr>,
    pub connected: Option<SocketAddr>,
    pub decision: &'static str,
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    pub policy_sha256: String,
    pub status: u16,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_ms: u64,
}

/// A denial (or, in report mode, what would have been one).
#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub ts: String,
    pub audit_id: String,
    pub event: &'static str,
    pub plugin: Option<String>,
    pub client: SocketAddr,
    pub method: String,
    pub host: String,
    pub port: u16,
    pub reason: &'static str,
    pub rule: Option<String>,
    /// The offending addresses for `non_public_address`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<IpAddr>,
    /// False when report mode let the request through.
    pub enforced: bool,
    pub policy_sha256: String,
}

/// The proxy started serving under a policy.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyStart {
    pub ts: String,
    pub event: &'static str,
    pub policy_path: String,
    pub policy_sha256: String,
    pub listen: Vec<SocketAddr>,
    pub version: &'static str,
}

/// A plugin process started or exited under the launcher. The start and exit records share an
/// `audit_id`; the plugin's `net.req` records carry the same `plugin` name.
#[derive(Debug, Clone, Serialize)]
pub struct ToolExec {
    pub ts: String,
    pub audit_id: String,
    pub event: &'static str,
    pub plugin: String,
    /// "start" or "exit".
    pub phase: &'static str,
    pub argv0: String,
    pub pid: u32,
    /// Exit code, or 128 + signal number when killed; only on "exit".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<i32>,
    pub policy_sha256: String,
}

pub const NET_REQ: &str = "net.req";
pub const TOOL_EXEC: &str = "tool.exec";
pub const POLICY_VIOLATION: &str = "policy.violation";
pub const PROXY_START: &str = "proxy.start";

/// The current time as RFC 3339 UTC with milliseconds.
pub fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
