//! Wiring: from a validated [`Config`] and bound listeners to a running proxy.
//!
//! Owns start-up order — open the audit trail, record `proxy.start`, build the resolver, serve —
//! and the final flush. The binary and the integration tests both start the proxy through here,
//! so they run the same code.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::audit::record::{self, PolicyLoad, ProxyStart, Record};
use crate::audit::{Audit, AuditError, SetupError, WriterHandle};
use crate::config::{Config, DriftAction};
use crate::egress::Egress;
use crate::policy::Policy;
use crate::proxy::Proxy;
use crate::server::{self, Listener};
pub use supervise::Control;
use supervise::Supervisor;

mod supervise;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    AuditSetup(#[from] SetupError),
    #[error("cannot write audit trail: {0}")]
    AuditWrite(#[from] AuditError),
    #[error("cannot set up the DNS resolver: {0}")]
    Resolver(std::io::Error),
    #[error("no listeners configured")]
    NoListeners,
    #[error("server failed: {0}")]
    Serve(std::io::Error),
    #[error("halted: the policy file changed on disk without a reload (policy.drift recorded)")]
    Halted,
}

/// Binds the anonymous listeners (`override_listen` replaces `[proxy] listen` when not empty)
/// and every plugin's listeners.
pub async fn bind(
    config: &Config,
    override_listen: &[SocketAddr],
) -> Result<Vec<Listener>, StartError> {
    let anonymous = if override_listen.is_empty() {
        &config.proxy.listen
    } else {
        override_listen
    };
    let mut listeners = Vec::new();
    for addr in anonymous {
        listeners.push(Listener::anonymous(bind_one(*addr).await?));
    }
    for (name, plugin) in &config.plugins {
        for addr in &plugin.listen {
            let plugin = Arc::from(name.as_str());
            listeners.push(Listener::for_plugin(bind_one(*addr).await?, plugin));
        }
    }
    if listeners.is_empty() {
        return Err(StartError::NoListeners);
    }
    Ok(listeners)
}

async fn bind_one(addr: SocketAddr) -> Result<TcpListener, StartError> {
    if !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "listening beyond loopback: anyone who can reach this address can use the proxy's allowlist"
        );
    }
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// Raises the soft open-file limit to the hard limit: every tunnel needs two descriptors, so the
/// usual soft limit of 1024 would make `max_connections` unreachable. Logs what it got.
pub fn raise_fd_limit(max_connections: usize) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let current = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: current.maximum,
        maximum: current.maximum,
    };
    if let Err(e) = setrlimit(Resource::Nofile, raised) {
        tracing::warn!(error = %e, "cannot raise the open-file limit");
    }
    let now = getrlimit(Resource::Nofile).current;
    let needed = (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(64);
    if now.is_some_and(|n| n < needed) {
        tracing::warn!(
            open_files = now,
            max_connections,
            "the open-file limit is below what max_connections needs (two descriptors per tunnel)"
        );
    }
}

/// A proxy that is set up (trail open, `proxy.start` recorded, resolver built) but not yet serving.
pub struct Running {
    proxy: Arc<Proxy>,
    writer: WriterHandle,
    listeners: Vec<Listener>,
    late_tx: mpsc::Sender<Listener>,
    late_rx: mpsc::Receiver<Listener>,
    control_tx: mpsc::Sender<Control>,
    control_rx: mpsc::Receiver<Control>,
    policy_path: PathBuf,
    on_drift: DriftAction,
}

/// Sets the proxy up on `listeners`: opens the trail, records `proxy.start`, builds the resolver.
pub async fn start(config: Config, listeners: Vec<Listener>) -> Result<Running, StartError> {
    let local: Vec<SocketAddr> = listeners
        .iter()
        .filter_map(|l| l.socket.local_addr().ok())
        .collect();
    let (audit, writer) = Audit::open(&config.audit, &config.sha256)?;
    let policy = Arc::new(Policy::compile(&config));
    audit
        .commit(Record::ProxyStart(ProxyStart {
            ts: record::now(),
            event: record::PROXY_START,
            policy_path: config.path.display().to_string(),
            policy_sha256: policy.sha256.clone(),
            listen: local.clone(),
            version: env!("CARGO_PKG_VERSION"),
        }))
        .await?;
    audit
        .commit(Record::PolicyLoad(PolicyLoad {
            ts: record::now(),
            event: record::POLICY_LOAD,
            path: config.path.display().to_string(),
            policy_sha256: policy.sha256.clone(),
        }))
        .await?;
    let egress = Egress::new(&config.dns, config.limits.connect_timeout, local)
        .map_err(StartError::Resolver)?;
    let proxy = Arc::new(Proxy::new(policy, egress, audit, config.limits.clone()));
    let (late_tx, late_rx) = mpsc::channel(64);
    let (control_tx, control_rx) = mpsc::channel(16);
    Ok(Running {
        proxy,
        writer,
        listeners,
        late_tx,
        late_rx,
        control_tx,
        control_rx,
        policy_path: config.path.clone(),
        on_drift: config.audit.on_drift,
    })
}

impl Running {
    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    pub fn audit(&self) -> &Audit {
        self.proxy.audit()
    }

    /// Adds listeners while serving (daemon mode: a launcher hands over a sandbox's sockets).
    pub fn listener_sender(&self) -> mpsc::Sender<Listener> {
        self.late_tx.clone()
    }

    /// Sends reload / reopen requests (the binary forwards SIGHUP and SIGUSR1 here).
    pub fn control_sender(&self) -> mpsc::Sender<Control> {
        self.control_tx.clone()
    }

    /// Serves until `shutdown` resolves (or the policy drifts and `on_drift = "halt"`), then
    /// drains and flushes the trail.
    ///
    /// The audit writer thread exits when the last `Audit` handle is dropped; drop any clone you
    /// took from [`Running::audit`] before this returns, or the final join waits up to 2 s for it.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
        let Running {
            proxy,
            writer,
            listeners,
            late_tx,
            late_rx,
            control_tx,
            control_rx,
            policy_path,
            on_drift,
        } = self;
        drop((late_tx, control_tx));
        let halt = proxy.halt_token();
        let supervisor = tokio::spawn(
            Supervisor {
                proxy: proxy.clone(),
                path: policy_path,
                on_drift,
                halt: halt.clone(),
            }
            .run(control_rx),
        );
        let stop = {
            let halt = halt.clone();
            async move {
                tokio::select! {
                    _ = shutdown => {}
                    _ = halt.cancelled() => {}
                }
            }
        };
        for l in &listeners {
            if let Ok(addr) = l.socket.local_addr() {
                tracing::info!(%addr, plugin = l.plugin.as_deref().unwrap_or("-"), "listening");
            }
        }
        let result = server::run(listeners, late_rx, proxy.clone(), stop).await;
        supervisor.abort();
        let _ = supervisor.await;
        drop(proxy);
        // The writer exits once every Audit handle is gone; a tunnel that outlived the drain may
        // still hold one, so wait only briefly (everything queued was flushed by `server::run`).
        let join = tokio::task::spawn_blocking(move || writer.join());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), join).await;
        result.map_err(StartError::Serve)?;
        if halt.is_cancelled() {
            return Err(StartError::Halted);
        }
        Ok(())
    }
}

/// Sets up and runs the proxy on `listeners` until `shutdown` resolves.
pub async fn serve(
    config: Config,
    listeners: Vec<Listener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    start(config, listeners).await?.serve(shutdown).await
}
