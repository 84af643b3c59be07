//! The policy's lifecycle while serving: reload on request (SIGHUP), trail reopen (SIGUSR1), and
//! drift detection — the policy file changing on disk without a reload, which halts the proxy
//! (seed invariant 5) unless `[audit] on_drift = "reload"`.
//!
//! A reload swaps in a new compiled policy atomically (requests already decided keep theirs) and
//! is recorded as `policy.reload`; an invalid file is refused, recorded as `policy.reload_failed`,
//! and the old policy stays. Only the rules and mode change on reload: `[proxy]`, `[dns]`,
//! `[limits]` and `[audit]` need a restart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::audit::record::{self, PolicyDrift, PolicyReload, PolicyReloadFailed, Record};
use crate::config::{self, DriftAction, LoadError};
use crate::policy::Policy;
use crate::proxy::Proxy;

/// How often the policy file is hashed to look for drift.
pub const DRIFT_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// How long the file may differ from the policy in force before that counts as drift: long
/// enough to edit the file and then send SIGHUP, short enough to be an immediate halt.
pub const DRIFT_GRACE: Duration = Duration::from_secs(2);
/// Most diagnostics copied into a `policy.reload_failed` record.
const MAX_RECORDED_ERRORS: usize = 10;

/// Requests from outside (signals) to the running proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Re-read the policy file (SIGHUP).
    Reload,
    /// Reopen the audit trail path (SIGUSR1).
    ReopenTrail,
}

pub(super) struct Supervisor {
    pub proxy: Arc<Proxy>,
    pub path: PathBuf,
    pub on_drift: DriftAction,
    /// Cancelled to halt the whole proxy.
    pub halt: CancellationToken,
}

impl Supervisor {
    pub async fn run(self, mut control: mpsc::Receiver<Control>) {
        let mut tick = tokio::time::interval(DRIFT_CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // When the file first stopped matching the policy in force, and what it hashed to.
        let mut differs_since: Option<(Instant, Option<String>)> = None;
        // The last drifted content already acted on, so one change is recorded once.
        let mut handled: Option<Option<String>> = None;
        let mut last_stamp: Option<FileStamp> = None;
        loop {
            tokio::select! {
                _ = self.halt.cancelled() => return,
                msg = control.recv() => match msg {
                    Some(Control::Reload) => {
                        self.reload("signal").await;
                        differs_since = None;
                        handled = None;
                    }
                    Some(Control::ReopenTrail) => self.proxy.audit().reopen(),
                    None => control = mpsc::channel(1).1,
                },
                _ = tick.tick() => {
                    // Hashing a large policy every tick would cost a core: hash only when the
                    // file's identity, size or mtime moved (or while a difference is pending).
                    let stamp = file_stamp(&self.path);
                    if stamp.is_some() && stamp == last_stamp && differs_since.is_none() {
                        continue;
                    }
                    last_stamp = stamp;
                    let on_disk = file_sha256(&self.path);
                    if on_disk.as_deref() == Some(&*self.proxy.policy().sha256) {
                        differs_since = None;
                        handled = None;
                        continue;
                    }
                    if handled.as_ref() == Some(&on_disk) {
                        continue;
                    }
                    match &differs_since {
                        Some((since, seen)) if *seen == on_disk => {
                            if since.elapsed() >= DRIFT_GRACE {
                                self.drift(on_disk.clone()).await;
                                handled = Some(on_disk);
                                differs_since = None;
                            }
                        }
                        _ => differs_since = Some((Instant::now(), on_disk)),
                    }
                }
            }
        }
    }

    async fn drift(&self, found: Option<String>) {
        let action = match self.on_drift {
            DriftAction::Halt => "halt",
            DriftAction::Reload => "reload",
        };
        tracing::error!(
            path = %self.path.display(),
            found = found.as_deref().unwrap_or("(unreadable)"),
            in_force = %self.proxy.policy().sha256,
            action,
            "policy file changed on disk without a reload"
        );
        let record = Record::PolicyDrift(PolicyDrift {
            ts: record::now(),
            event: record::POLICY_DRIFT,
            path: self.path.display().to_string(),
            found_sha256: found,
            action,
            policy_sha256: self.proxy.policy().sha256.clone(),
        });
        let recorded = self.proxy.audit().commit(record).await;
        match self.on_drift {
            DriftAction::Reload if recorded.is_ok() => self.reload("drift").await,
            // Halting is the safe answer both when asked for and when drift cannot be recorded.
            _ => self.halt.cancel(),
        }
    }

    async fn reload(&self, trigger: &str) {
        let old = self.proxy.policy();
        let record = match config::load(&self.path) {
            Ok(config) => {
                let new = Arc::new(Policy::compile(&config));
                let record = Record::PolicyReload(PolicyReload {
                    ts: record::now(),
                    event: record::POLICY_RELOAD,
                    path: self.path.display().to_string(),
                    old_sha256: old.sha256.to_string(),
                    policy_sha256: new.sha256.clone(),
                });
                tracing::info!(trigger, old = %old.sha256, new = %new.sha256, "policy reloaded");
                self.proxy.audit().set_policy(&new.sha256);
                self.proxy.replace_policy(new);
                record
            }
            Err(e) => {
                let errors: Vec<String> = match &e {
                    LoadError::Invalid(invalid) => invalid
                        .diagnostics
                        .iter()
                        .take(MAX_RECORDED_ERRORS)
                        .map(ToString::to_string)
                        .collect(),
                    LoadError::Read { .. } => vec![e.to_string()],
                };
                tracing::error!(trigger, error = %e, "policy reload refused; the old policy stays in force");
                Record::PolicyReloadFailed(PolicyReloadFailed {
                    ts: record::now(),
                    event: record::POLICY_RELOAD_FAILED,
                    path: self.path.display().to_string(),
                    errors,
                    rejected_sha256: file_sha256(&self.path),
                    policy_sha256: old.sha256.clone(),
                })
            }
        };
        if let Err(e) = self.proxy.audit().commit(record).await {
            tracing::error!(error = %e, "cannot record the policy reload");
        }
    }
}

/// What changes when a file is edited or replaced: (device, inode, size, mtime).
type FileStamp = (u64, u64, u64, i64, i64);

fn file_stamp(path: &std::path::Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// SHA-256 of a file's bytes, lower-case hex; `None` when it cannot be read.
fn file_sha256(path: &std::path::Path) -> Option<String> {
    std::fs::read(path)
        .ok()
        .map(|b| hex::encode(Sha256::digest(&b)))
}
