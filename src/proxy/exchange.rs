//! What the proxy learns about one request as it goes, and the audit records made from it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request};

use super::ConnInfo;
use crate::audit::record::{self, NetOpen, NetReq, Record, RequestInfo, Violation};
use crate::audit::redact;
use crate::policy::{Policy, RuleId};
use crate::target::Target;

/// Longest raw request target kept in a record for a request that could not be parsed.
const MAX_RAW_HOST: usize = 300;

/// One request's audit context.
#[derive(Debug, Clone)]
pub(super) struct Exchange {
    pub audit_id: Arc<str>,
    pub started: Instant,
    pub plugin: Option<Arc<str>>,
    pub client: SocketAddr,
    pub method: Method,
    /// The normalised host once parsed; before that, the raw authority (truncated).
    pub host: Arc<str>,
    pub port: u16,
    pub path: Option<Arc<str>>,
    pub resolved: Arc<[IpAddr]>,
    pub connected: Option<SocketAddr>,
    pub rule: Option<RuleId>,
}

impl Exchange {
    pub fn new<B>(
        audit_id: Arc<str>,
        conn: &ConnInfo,
        req: &Request<B>,
        started: Instant,
    ) -> Exchange {
        let raw_host: String = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .unwrap_or_default()
            .chars()
            .take(MAX_RAW_HOST)
            .collect();
        Exchange {
            audit_id,
            started,
            plugin: conn.plugin.clone(),
            client: conn.client,
            method: req.method().clone(),
            // Userinfo never reaches a record, even from a request refused for carrying it.
            host: match raw_host.rsplit_once('@') {
                Some((_, host)) => host.into(),
                None => raw_host.into(),
            },
            port: 0,
            path: None,
            resolved: Arc::from([]),
            connected: None,
            rule: None,
        }
    }

    pub fn set_target<B>(&mut self, target: &Target, req: &Request<B>) {
        self.host = target.host.to_string().into();
        self.port = target.port;
        if req.method() != Method::CONNECT {
            self.path = Some(
                redact::redact_path_and_query(
                    req.uri().path_and_query().map_or("/", |p| p.as_str()),
                )
                .into(),
            );
        }
    }

    pub fn net_req(
        &self,
        policy: &Policy,
        decision: &'static str,
        reason: Option<&'static str>,
        status: u16,
        bytes_up: u64,
        bytes_down: u64,
    ) -> Record {
        Record::NetReq(NetReq {
            ts: record::now(),
            event: record::NET_REQ,
            request: self.request_info(),
            path: self.path.clone(),
            resolved: self.resolved.clone(),
            connected: self.connected,
            decision,
            rule: self.rule.clone(),
            reason,
            policy_sha256: policy.sha256.clone(),
            status,
            bytes_up,
            bytes_down,
            duration_ms: self.started.elapsed().as_millis() as u64,
        })
    }

    fn request_info(&self) -> RequestInfo {
        RequestInfo {
            audit_id: self.audit_id.clone(),
            plugin: self.plugin.clone(),
            client: self.client,
            method: self.method.clone(),
            host: self.host.clone(),
            port: self.port,
        }
    }

    /// The decision record written before the upstream connection is opened.
    pub fn net_open(&self, policy: &Policy) -> Record {
        Record::NetOpen(NetOpen {
            ts: record::now(),
            event: record::NET_OPEN,
            request: self.request_info(),
            path: self.path.clone(),
            resolved: self.resolved.clone(),
            decision: "allow",
            rule: self.rule.clone(),
            policy_sha256: policy.sha256.clone(),
        })
    }

    pub fn violation(
        &self,
        policy: &Policy,
        reason: &'static str,
        rule: Option<&RuleId>,
        addresses: Vec<IpAddr>,
        enforced: bool,
    ) -> Record {
        Record::Violation(Violation {
            ts: record::now(),
            event: record::POLICY_VIOLATION,
            request: self.request_info(),
            reason,
            rule: rule.cloned(),
            addresses,
            enforced,
            policy_sha256: policy.sha256.clone(),
        })
    }
}
