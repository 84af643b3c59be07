//! Audit record types: one struct per event, serialised as one JSON object per line.
//! Fields hold only what is safe to keep: no header values, no userinfo, redacted query strings.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde::Serialize;

/// Every event the trail can hold.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Record {
    NetReq(NetReq),
    Violation(Violation),
    ProxyStart(ProxyStart),
    ToolExec(ToolExec),
    NetOpen(NetOpen),
    TrailOpen(TrailOpen),
    PolicyLoad(PolicyLoad),
    PolicyReload(PolicyReload),
    PolicyReloadFailed(PolicyReloadFailed),
    PolicyDrift(PolicyDrift),
}

/// The decision to let a request out, written (and synced, with `fsync = "always"`) before the
/// upstream connection is opened. The request's `net.req` (same `audit_id`) closes it.
#[derive(Debug, Clone, Serialize)]
pub struct NetOpen {
    pub ts: Timestamp,
    pub event: &'static str,
    #[serde(flatten)]
    pub request: RequestInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<Arc<str>>,
    pub resolved: Arc<[IpAddr]>,
    pub decision: &'static str,
    pub rule: Option<Arc<str>>,
    pub policy_sha256: Arc<str>,
}

/// First record of every trail file: why the file starts, and which chain it uses.
#[derive(Debug, Clone, Serialize)]
pub struct TrailOpen {
    pub ts: Timestamp,
    pub event: &'static str,
    /// `start`, `rotate`, `reopen` (SIGUSR1) or `recreated` (the file was removed).
    pub reason: &'static str,
    /// `sha256` or `hmac-sha256`.
    pub chain: &'static str,
    /// Bytes of a torn final line cut off when resuming after a crash.
    pub torn_bytes: u64,
    pub policy_sha256: Arc<str>,
}

/// The policy the proxy starts with.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyLoad {
    pub ts: Timestamp,
    pub event: &'static str,
    pub path: String,
    pub policy_sha256: Arc<str>,
}

/// A valid policy swapped in on SIGHUP (or on drift with `on_drift = "reload"`).
#[derive(Debug, Clone, Serialize)]
pub struct PolicyReload {
    pub ts: Timestamp,
    pub event: &'static str,
    pub path: String,
    pub old_sha256: String,
    pub policy_sha256: Arc<str>,
}

/// A reload refused because the new file is invalid; the old policy stays in force.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyReloadFailed {
    pub ts: Timestamp,
    pub event: &'static str,
    pub path: String,
    /// The first diagnostics, `FILE:LINE:COL: key: message`.
    pub errors: Vec<String>,
    /// SHA-256 of the refused file's bytes, when it could be read.
    pub rejected_sha256: Option<String>,
    pub policy_sha256: Arc<str>,
}

/// The policy file changed on disk without a reload.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyDrift {
    pub ts: Timestamp,
    pub event: &'static str,
    pub path: String,
    /// SHA-256 of the file now (None when it is gone or unreadable).
    pub found_sha256: Option<String>,
    /// `halt` or `reload`.
    pub action: &'static str,
    pub policy_sha256: Arc<str>,
}

/// Who asked for what: the fields every per-request record shares. Shared (`Arc`) so the
/// records of one request cost no copies of them.
#[derive(Debug, Clone, Serialize)]
pub struct RequestInfo {
    pub audit_id: Arc<str>,
    pub plugin: Option<Arc<str>>,
    pub client: SocketAddr,
    #[serde(serialize_with = "method_str")]
    pub method: http::Method,
    pub host: Arc<str>,
    pub port: u16,
}

fn method_str<S: serde::Serializer>(method: &http::Method, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(method.as_str())
}

/// One request through the proxy: what was asked, what was decided, what was dialed, and how much
/// moved. Written once the exchange is over (or refused).
#[derive(Debug, Clone, Serialize)]
pub struct NetReq {
    pub ts: Timestamp,
    pub event: &'static str,
    #[serde(flatten)]
    pub request: RequestInfo,
    /// Plain-HTTP only: the path with secret-looking query values redacted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<Arc<str>>,
    pub resolved: Arc<[IpAddr]>,
    pub connected: Option<SocketAddr>,
    pub decision: &'static str,
    pub rule: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    pub policy_sha256: Arc<str>,
    pub status: u16,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_ms: u64,
}

/// A denial (or, in report mode, what would have been one).
#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub ts: Timestamp,
    pub event: &'static str,
    #[serde(flatten)]
    pub request: RequestInfo,
    pub reason: &'static str,
    pub rule: Option<Arc<str>>,
    /// The offending addresses for `non_public_address`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<IpAddr>,
    /// False when report mode let the request through.
    pub enforced: bool,
    pub policy_sha256: Arc<str>,
}

/// The proxy started serving under a policy.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyStart {
    pub ts: Timestamp,
    pub event: &'static str,
    pub policy_path: String,
    pub policy_sha256: Arc<str>,
    pub listen: Vec<SocketAddr>,
    pub version: &'static str,
}

/// A plugin process started or exited under the launcher. The start and exit records share an
/// `audit_id`; the plugin's `net.req` records carry the same `plugin` name.
#[derive(Debug, Clone, Serialize)]
pub struct ToolExec {
    pub ts: Timestamp,
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
    pub policy_sha256: Arc<str>,
}

pub const NET_REQ: &str = "net.req";
pub const NET_OPEN: &str = "net.open";
pub const TRAIL_OPEN: &str = "trail.open";
pub const POLICY_LOAD: &str = "policy.load";
pub const POLICY_RELOAD: &str = "policy.reload";
pub const POLICY_RELOAD_FAILED: &str = "policy.reload_failed";
pub const POLICY_DRIFT: &str = "policy.drift";
pub const TOOL_EXEC: &str = "tool.exec";
pub const POLICY_VIOLATION: &str = "policy.violation";
pub const PROXY_START: &str = "proxy.start";

/// When a record was made; written as RFC 3339 UTC with milliseconds. Kept as a clock reading
/// until the writer serialises it, so making a record formats nothing.
#[derive(Debug, Clone, Copy)]
pub struct Timestamp(std::time::SystemTime);

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(self.0))
    }
}

/// The current time.
pub fn now() -> Timestamp {
    Timestamp(std::time::SystemTime::now())
}
