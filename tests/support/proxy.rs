#![allow(dead_code)]
//! Starts the real proxy (`app::serve`, the same path the binary takes) on loopback port 0 with a
//! policy written to a temporary directory, and reads back its audit trail.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use egress_gate::app;
use egress_gate::server::Listener;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestProxy {
    /// The anonymous listener.
    pub addr: SocketAddr,
    /// Each plugin's listener, for plugins asked for in `start_with_plugins`.
    pub plugin_addrs: HashMap<String, SocketAddr>,
    pub audit_path: PathBuf,
    pub policy_path: PathBuf,
    dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), app::StartError>>>,
    control: tokio::sync::mpsc::Sender<app::Control>,
    audit_options: String,
}

fn policy_text(policy: &str, audit_path: &std::path::Path, audit_options: &str) -> String {
    format!(
        "{policy}\n[audit]\npath = {:?}\n{audit_options}\n",
        audit_path.display().to_string()
    )
}

impl TestProxy {
    /// Starts the proxy on `policy` (which must not contain an `[audit]` table: the harness adds
    /// one pointing into its temporary directory).
    pub async fn start(policy: &str) -> TestProxy {
        TestProxy::start_with_plugins(policy, &[]).await
    }

    /// Like `start`, plus one loopback listener per named plugin, tagged with that identity.
    pub async fn start_with_plugins(policy: &str, plugins: &[&str]) -> TestProxy {
        let anonymous = TcpListener::bind("127.0.0.1:0").await.unwrap();
        TestProxy::start_bound(policy, anonymous, plugins).await
    }

    /// Like `start_with_plugins`, on an anonymous listener the test bound itself (so the policy
    /// can name its port).
    pub async fn start_bound(policy: &str, anonymous: TcpListener, plugins: &[&str]) -> TestProxy {
        TestProxy::start_full(policy, "", anonymous, plugins).await
    }

    /// Like `start`, with extra lines for the harness's `[audit]` table (e.g. `on_drift = "reload"`).
    pub async fn start_with_audit_options(policy: &str, audit_options: &str) -> TestProxy {
        let anonymous = TcpListener::bind("127.0.0.1:0").await.unwrap();
        TestProxy::start_full(policy, audit_options, anonymous, &[]).await
    }

    async fn start_full(
        policy: &str,
        audit_options: &str,
        anonymous: TcpListener,
        plugins: &[&str],
    ) -> TestProxy {
        let dir = tempfile::tempdir().unwrap();
        let audit_path = dir.path().join("audit.jsonl");
        let policy_path = dir.path().join("policy.toml");
        let text = policy_text(policy, &audit_path, audit_options);
        std::fs::write(&policy_path, &text).unwrap();
        let config = egress_gate::config::load(&policy_path)
            .unwrap_or_else(|e| panic!("test policy invalid:\n{e}"));

        let addr = anonymous.local_addr().unwrap();
        let mut listeners = vec![Listener::anonymous(anonymous)];
        let mut plugin_addrs = HashMap::new();
        for name in plugins {
            let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
            plugin_addrs.insert(name.to_string(), socket.local_addr().unwrap());
            listeners.push(Listener::for_plugin(socket, Arc::from(*name)));
        }
        let (tx, rx) = oneshot::channel::<()>();
        let running = app::start(config, listeners).await.expect("proxy starts");
        let control = running.control_sender();
        let task = tokio::spawn(running.serve(async {
            let _ = rx.await;
        }));
        let proxy = TestProxy {
            addr,
            plugin_addrs,
            audit_path,
            policy_path,
            dir,
            shutdown: Some(tx),
            task: Some(task),
            control,
            audit_options: audit_options.to_string(),
        };
        // `proxy.start` is committed before the server accepts; wait for it so tests start clean.
        proxy.wait_for(|r| r["event"] == "proxy.start").await;
        proxy
    }

    /// Every record in the trail so far.
    pub fn records(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.audit_path).unwrap_or_default();
        text.lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// Waits (bounded) until a record matching `pred` is in the trail and returns it.
    pub async fn wait_for(&self, pred: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..500 {
            if let Some(r) = self.records().into_iter().find(|r| pred(r)) {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "no matching audit record within 5 s; trail:\n{:#?}",
            self.records()
        );
    }

    /// The `net.req` record of a request, waiting for it.
    pub async fn net_req(&self, audit_id: &str) -> Value {
        self.wait_for(|r| r["event"] == "net.req" && r["audit_id"] == audit_id)
            .await
    }

    /// The `net.req` record of the only request to `host:port` (waits; panics on more than one).
    pub async fn net_req_to(&self, host: &str, port: u16) -> Value {
        let r = self
            .wait_for(|r| r["event"] == "net.req" && r["host"] == host && r["port"] == port)
            .await;
        let all: Vec<Value> = self
            .records()
            .into_iter()
            .filter(|r| r["event"] == "net.req" && r["host"] == host && r["port"] == port)
            .collect();
        assert_eq!(
            all.len(),
            1,
            "expected one net.req for {host}:{port}: {all:#?}"
        );
        r
    }

    /// `policy.violation` records with this audit id.
    pub fn violations(&self, audit_id: &str) -> Vec<Value> {
        self.records()
            .into_iter()
            .filter(|r| r["event"] == "policy.violation" && r["audit_id"] == audit_id)
            .collect()
    }

    /// Asks the proxy to reload its policy file (what SIGHUP does).
    pub async fn reload(&self) {
        self.control.send(app::Control::Reload).await.unwrap();
    }

    /// Rewrites the policy file (the harness's `[audit]` table is kept).
    pub fn rewrite_policy(&self, policy: &str) {
        std::fs::write(
            &self.policy_path,
            policy_text(policy, &self.audit_path, &self.audit_options),
        )
        .unwrap();
    }

    /// Waits (bounded) for the proxy to stop by itself and returns how it ended.
    pub async fn wait_exit(&mut self) -> Result<(), app::StartError> {
        let task = self.task.take().expect("proxy still running");
        tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .expect("proxy stopped by itself in time")
            .unwrap()
    }

    /// Stops the proxy, waits for it to drain and flush, and returns the final trail.
    pub async fn stop(mut self) -> String {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("proxy stopped in time")
                .unwrap()
                .unwrap();
        }
        std::fs::read_to_string(&self.audit_path).unwrap()
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
