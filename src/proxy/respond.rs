//! The one place errors become HTTP responses: status line, reason code, audit id.
//! Every refusal the proxy makes goes through [`ProxyError::into_response`].

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use crate::audit::AuditError;
use crate::policy::{DenyReason, RuleId};
use crate::target::TargetError;

/// The response body type of the proxy service.
pub type Body = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

/// Header carrying the reason code on every refusal.
pub const REASON_HEADER: &str = "x-egress-gate-reason";
/// Header carrying the audit id on every response the proxy itself produces.
pub const AUDIT_ID_HEADER: &str = "x-egress-gate-audit-id";

/// Everything that can stop a request, each with one status and one reason code.
#[derive(Debug)]
pub enum ProxyError {
    /// The destination could not be parsed.
    Target(TargetError),
    /// The request is malformed or not something a forward proxy accepts.
    BadRequest {
        reason: &'static str,
        detail: &'static str,
    },
    /// `Proxy-Authorization` was present but did not identify a plugin.
    ProxyAuth {
        detail: &'static str,
    },
    /// The connection's listener belongs to a plugin the policy (since a reload) no longer declares.
    UnknownPlugin,
    /// The policy refused the destination.
    Denied {
        reason: DenyReason,
        rule: Option<RuleId>,
    },
    Dns(String),
    ConnectTimeout,
    ConnectRefused,
    Connect(String),
    Upstream(String),
    UpstreamTimeout,
    /// The client's request body could not be decoded (bad chunked framing) or broke off; the
    /// upstream request was abandoned unfinished.
    ClientBody(String),
    /// The trail cannot record the request, so it does not happen.
    Audit(AuditError),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Target(_) | ProxyError::BadRequest { .. } | ProxyError::ClientBody(_) => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::ProxyAuth { .. } => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            ProxyError::Denied { .. } | ProxyError::UnknownPlugin => StatusCode::FORBIDDEN,
            ProxyError::Dns(_)
            | ProxyError::ConnectRefused
            | ProxyError::Connect(_)
            | ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::ConnectTimeout | ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Audit(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable, documented reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::Target(e) => e.reason(),
            ProxyError::BadRequest { reason, .. } => reason,
            ProxyError::ProxyAuth { .. } => "proxy_auth_failed",
            ProxyError::Denied { reason, .. } => reason.code(),
            ProxyError::UnknownPlugin => "unknown_plugin",
            ProxyError::Dns(_) => "dns_failure",
            ProxyError::ConnectTimeout => "connect_timeout",
            ProxyError::ConnectRefused => "connect_refused",
            ProxyError::Connect(_) => "connect_failed",
            ProxyError::Upstream(_) => "upstream_error",
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::ClientBody(_) => "bad_request_body",
            ProxyError::Audit(_) => "audit_unavailable",
        }
    }

    /// Whether this is a refusal of the request itself (recorded as a `policy.violation`), as
    /// opposed to a failure on the way to an allowed destination.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            ProxyError::Target(_)
                | ProxyError::BadRequest { .. }
                | ProxyError::ProxyAuth { .. }
                | ProxyError::Denied { .. }
                | ProxyError::UnknownPlugin
        )
    }

    /// One human-readable line of detail. Never contains header values or secrets.
    fn detail(&self) -> String {
        match self {
            ProxyError::Target(e) => e.to_string(),
            ProxyError::BadRequest { detail, .. } | ProxyError::ProxyAuth { detail } => {
                detail.to_string()
            }
            ProxyError::Denied {
                reason: DenyReason::NonPublicAddress(addrs),
                ..
            } => {
                let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                format!(
                    "destination resolves to non-public address {}",
                    list.join(", ")
                )
            }
            ProxyError::Denied {
                reason: DenyReason::DenyRule,
                rule,
            } => {
                format!("denied by rule {}", rule.as_deref().unwrap_or("?"))
            }
            ProxyError::Denied {
                reason: DenyReason::NoMatchingRule,
                ..
            } => "no allow rule matches this host and port".into(),
            ProxyError::UnknownPlugin => {
                "this listener's plugin is no longer declared in the policy".into()
            }
            ProxyError::Dns(e) => e.clone(),
            ProxyError::ConnectTimeout => "upstream connect timed out".into(),
            ProxyError::ConnectRefused => "upstream refused the connection".into(),
            ProxyError::Connect(e) | ProxyError::Upstream(e) | ProxyError::ClientBody(e) => {
                e.clone()
            }
            ProxyError::UpstreamTimeout => "upstream did not answer in time".into(),
            ProxyError::Audit(e) => e.to_string(),
        }
    }

    /// The response for this error: `STATUS reason=CODE audit_id=ID: detail`.
    pub fn into_response(self, audit_id: &str) -> Response<Body> {
        let status = self.status();
        let reason = self.reason();
        let body = format!(
            "{} reason={reason} audit_id={audit_id}: {}\n",
            status.as_u16(),
            self.detail()
        );
        let mut resp = Response::new(full(body));
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(REASON_HEADER, HeaderValue::from_static(reason));
        if let Ok(v) = HeaderValue::from_str(audit_id) {
            headers.insert(AUDIT_ID_HEADER, v);
        }
        if status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
            headers.insert(
                header::PROXY_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"egress-gate\""),
            );
        }
        if status == StatusCode::BAD_REQUEST {
            // After a malformed request the stream position is not trustworthy.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// A complete in-memory body.
pub fn full(content: impl Into<Bytes>) -> Body {
    Full::new(content.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}
