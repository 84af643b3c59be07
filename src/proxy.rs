//! The proxy service: one request in, one decision, one response out.
//!
//! Owns the request pipeline — identify the plugin, parse and normalise the target, decide,
//! resolve and vet through `egress`, then hand over to the tunnel (CONNECT) or the forwarder
//! (absolute-form `http://`). Every request leaves exactly one `net.req` record, and every refusal
//! also a `policy.violation`. It never opens a socket itself and never re-resolves a name.

mod exchange;
mod forward;
mod identity;
mod pool;
pub mod respond;
mod tunnel;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use http::{Method, Request, Response, header};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::Audit;
use crate::config::Limits;
use crate::egress::{Egress, EgressError, Resolved};
use crate::policy::{Decision, Outcome, Policy};
use crate::target::{self, Target};
use exchange::Exchange;
pub use respond::{Body, ProxyError};

/// State shared by every connection.
pub struct Proxy {
    /// The policy in force; replaced as a whole on reload, never edited in place.
    policy: RwLock<Arc<Policy>>,
    egress: Egress,
    audit: Audit,
    limits: Limits,
    pool: Arc<pool::Pool>,
    /// Open tunnels, so shutdown can wait for them.
    tunnels: TaskTracker,
    /// Cancelled when the proxy halts (policy drift): tunnels close at once instead of draining.
    halt: CancellationToken,
}

/// What the server knows about a client connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub client: SocketAddr,
    /// Set when the connection arrived on a plugin's own listener.
    pub plugin: Option<Arc<str>>,
    /// The connection's slot under `max_connections`; a tunnel keeps it until it closes.
    pub slot: Option<Arc<tokio::sync::OwnedSemaphorePermit>>,
}

impl Proxy {
    pub fn new(policy: Arc<Policy>, egress: Egress, audit: Audit, limits: Limits) -> Proxy {
        Proxy {
            policy: RwLock::new(policy),
            egress,
            audit,
            pool: Arc::new(pool::Pool::new(limits.idle_timeout)),
            limits,
            tunnels: TaskTracker::new(),
            halt: CancellationToken::new(),
        }
    }

    /// The token that halts the proxy: cancelling it closes every tunnel.
    pub fn halt_token(&self) -> CancellationToken {
        self.halt.clone()
    }

    /// The policy in force right now.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Swaps in a new policy; requests already decided keep the one they started with.
    pub fn replace_policy(&self, policy: Arc<Policy>) {
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = policy;
    }

    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Tunnels still running; the server waits on this at shutdown.
    pub fn tunnels(&self) -> &TaskTracker {
        &self.tunnels
    }

    /// Handles one request. Never fails: every error becomes a response.
    pub async fn serve(
        self: Arc<Self>,
        conn: Arc<ConnInfo>,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        let policy = self.policy();
        let mut ex = Exchange::new(self.audit.next_id(), &conn, &req, Instant::now());
        match self.process(&policy, &conn, &mut ex, req).await {
            Ok(resp) => Ok(resp),
            Err(err) => Ok(self.refuse(&policy, ex, err).await),
        }
    }

    async fn process(
        self: &Arc<Self>,
        policy: &Arc<Policy>,
        conn: &Arc<ConnInfo>,
        ex: &mut Exchange,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, ProxyError> {
        ex.plugin = identity::identify(conn.plugin.as_ref(), req.headers(), policy)?;
        let target = parse_target(&req)?;
        ex.set_target(&target, &req);
        let decision = policy.decide(ex.plugin.as_deref(), &target);
        ex.rule = decision.rule().cloned();
        match (&decision.outcome, decision.permits()) {
            (Outcome::Deny { reason, rule }, false) => {
                return Err(ProxyError::Denied {
                    reason: reason.clone(),
                    rule: rule.clone(),
                });
            }
            (Outcome::Deny { reason, rule }, true) => {
                // Report mode: record what enforce mode would have refused, then go ahead.
                let record = ex.violation(policy, reason.code(), rule.as_ref(), Vec::new(), false);
                self.audit.commit(record).await.map_err(ProxyError::Audit)?;
            }
            (Outcome::Allow { .. }, _) => {}
        }
        let resolved = self.resolve(policy, ex, &target, &decision).await?;
        // Durable before egress: the decision is in the trail before any byte goes upstream,
        // and if it cannot be recorded the request does not happen.
        self.audit
            .commit(ex.net_open(policy))
            .await
            .map_err(ProxyError::Audit)?;
        if req.method() == Method::CONNECT {
            tunnel::open(self, policy, conn, ex, resolved, req).await
        } else {
            forward::send(self, policy, ex, &target, resolved, req).await
        }
    }

    async fn resolve(
        &self,
        policy: &Policy,
        ex: &mut Exchange,
        target: &Target,
        decision: &Decision,
    ) -> Result<Resolved, ProxyError> {
        match self
            .egress
            .resolve(policy, ex.plugin.as_deref(), target, decision)
            .await
        {
            Ok(resolved) => {
                ex.resolved = resolved.ips().into();
                // Only when the rules allowed the name: a literal's deny was reported already.
                if let (Some(rule), Outcome::Allow { .. }) =
                    (&resolved.reported_rule, &decision.outcome)
                {
                    let record =
                        ex.violation(policy, "deny_rule", Some(rule), ex.resolved.to_vec(), false);
                    self.audit.commit(record).await.map_err(ProxyError::Audit)?;
                }
                Ok(resolved)
            }
            Err(EgressError::Denied { denial, resolved }) => {
                ex.resolved = resolved.into();
                ex.rule = denial.rule.clone();
                Err(ProxyError::Denied {
                    reason: denial.reason,
                    rule: denial.rule,
                })
            }
            Err(e) => Err(egress_error(e)),
        }
    }

    /// Writes the records for a refused or failed request and builds its response.
    async fn refuse(&self, policy: &Policy, ex: Exchange, err: ProxyError) -> Response<Body> {
        let status = err.status().as_u16();
        tracing::info!(
            audit_id = %ex.audit_id,
            plugin = ex.plugin.as_deref().unwrap_or("-"),
            host = %ex.host,
            port = ex.port,
            status,
            reason = err.reason(),
            "refused"
        );
        if err.is_refusal() {
            let addresses = match &err {
                ProxyError::Denied {
                    reason: crate::policy::DenyReason::NonPublicAddress(a),
                    ..
                } => a.clone(),
                _ => Vec::new(),
            };
            let rule = match &err {
                ProxyError::Denied { rule, .. } => rule.clone(),
                _ => None,
            };
            self.audit
                .submit(ex.violation(policy, err.reason(), rule.as_ref(), addresses, true));
        }
        let decision = if err.is_refusal() { "deny" } else { "allow" };
        let record = ex.net_req(policy, decision, Some(err.reason()), status, 0, 0);
        // The refusal is the response either way; an unwritable trail is logged by the writer.
        let _ = self.audit.commit(record).await;
        err.into_response(&ex.audit_id)
    }
}

/// Maps an egress failure (other than an address denial) to the error clients see.
fn egress_error(e: EgressError) -> ProxyError {
    match e {
        EgressError::Dns(msg) => ProxyError::Dns(msg),
        EgressError::ConnectTimeout => ProxyError::ConnectTimeout,
        EgressError::ConnectRefused => ProxyError::ConnectRefused,
        EgressError::Connect(io) => ProxyError::Connect(io.to_string()),
        EgressError::NotPermitted => ProxyError::Denied {
            reason: crate::policy::DenyReason::NoMatchingRule,
            rule: None,
        },
        EgressError::Denied { denial, .. } => ProxyError::Denied {
            reason: denial.reason,
            rule: denial.rule,
        },
    }
}

/// Reads the destination from a CONNECT authority or an absolute-form URI.
fn parse_target(req: &Request<Incoming>) -> Result<Target, ProxyError> {
    if req.method() == Method::CONNECT {
        if has_body(req) {
            return Err(ProxyError::BadRequest {
                reason: "connect_with_body",
                detail: "a CONNECT request must not carry a body",
            });
        }
        let authority = req.uri().authority().ok_or(ProxyError::BadRequest {
            reason: "invalid_target",
            detail: "CONNECT needs host:port",
        })?;
        if req.uri().scheme().is_some()
            || req
                .uri()
                .path_and_query()
                .is_some_and(|p| p.as_str() != "/")
        {
            return Err(ProxyError::BadRequest {
                reason: "invalid_target",
                detail: "CONNECT needs host:port",
            });
        }
        return target::parse_connect_authority(authority.as_str()).map_err(ProxyError::Target);
    }
    target::parse_absolute_uri(req.uri()).map_err(ProxyError::Target)
}

fn has_body(req: &Request<Incoming>) -> bool {
    let h = req.headers();
    h.contains_key(header::TRANSFER_ENCODING)
        || h.get_all(header::CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes() != b"0")
}
