//! Daemon mode: the control socket of `serve --control PATH` and the protocol `run --connect`
//! speaks over it.
//!
//! A launcher builds the sandbox itself, then hands the sandbox's listening sockets and the
//! plugin's name to the daemon; the daemon serves them with that identity, so many plugins share
//! one proxy and one audit trail. Who may do this is decided by the socket file's mode (0600)
//! and the peer's uid (SO_PEERCRED) against an allow list; a peer inside a sandbox (another
//! network namespace) is refused, so a plugin can never attach sockets under another name.
//!
//! Protocol (one JSON message per `SOCK_SEQPACKET` packet; every request gets a reply):
//! 0. on connect the daemon greets with `ok`, or refuses the peer (uid, namespace) outright —
//!    before the launcher builds anything.
//! 1. `attach {plugin, argv0}` with the listening sockets attached (SCM_RIGHTS) — the daemon
//!    checks the plugin exists and the sockets are loopback listeners from another namespace.
//! 2. `started {pid}` — the daemon records `tool.exec` start and begins serving the sockets;
//!    only after its `ok` is the plugin executed.
//! 3. `exited {status}` — the daemon records `tool.exec` exit. A connection that closes without
//!    it is recorded as an exit with no status.
//!
//! This module never decides policy; it only checks that the named plugin exists.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use super::channel::{AsyncChannel, Channel};
use super::diagnose::Diagnosis;
use crate::app::Running;
use crate::audit::Audit;
use crate::audit::record::{self, Record, ToolExec};
use crate::proxy::Proxy;
use crate::server::Listener;
use crate::sys;

/// How long the daemon waits for a launcher's next setup message.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Launcher → daemon.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Attach { plugin: String, argv0: String },
    Started { pid: u32 },
    Exited { status: i32 },
}

/// Daemon → launcher.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Ok,
    Refused {
        summary: String,
        cause: String,
        remedy: String,
    },
}

impl Reply {
    fn refused(d: Diagnosis) -> Reply {
        Reply::Refused {
            summary: d.summary,
            cause: d.cause,
            remedy: d.remedy,
        }
    }
}

// === launcher side ===

fn lost(e: io::Error) -> Diagnosis {
    Diagnosis {
        summary: format!("the daemon stopped answering: {e}"),
        cause: "the daemon exited, restarted or timed out during the launch".into(),
        remedy: "check the daemon's log and retry".into(),
    }
}

/// Waits for the daemon's greeting: whether it accepts this launcher at all.
pub(super) fn greeting(channel: &Channel) -> Result<(), Diagnosis> {
    reply(channel)
}

/// Sends one request (with `sockets` attached) and waits for the daemon's answer.
pub(super) fn call(
    channel: &Channel,
    request: &Request,
    sockets: &[TcpListener],
) -> Result<(), Diagnosis> {
    let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|s| s.as_fd()).collect();
    if let Err(e) = channel.send(request, &fds) {
        // The daemon may have refused and closed already: its reason is the better message.
        return match reply(channel) {
            Err(refused) => Err(refused),
            Ok(()) => Err(lost(e)),
        };
    }
    reply(channel)
}

fn reply(channel: &Channel) -> Result<(), Diagnosis> {
    match channel.recv::<Reply>().map_err(lost)? {
        Some((Reply::Ok, _)) => Ok(()),
        Some((
            Reply::Refused {
                summary,
                cause,
                remedy,
            },
            _,
        )) => Err(Diagnosis {
            summary: format!("the daemon refused: {summary}"),
            cause,
            remedy,
        }),
        None => Err(lost(io::Error::from(io::ErrorKind::UnexpectedEof))),
    }
}

// === daemon side ===

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("control socket {path}: {message}")]
pub struct ControlError {
    pub path: PathBuf,
    pub message: String,
}

/// A bound control socket, not yet served.
pub struct ControlSocket {
    fd: OwnedFd,
    path: PathBuf,
    identity: (u64, u64),
    uids: Vec<u32>,
}

impl ControlSocket {
    /// Creates the socket file with mode 0600. An existing socket nobody serves is replaced; a
    /// live one, or any other kind of file, is an error. `uids` may connect (empty: the
    /// daemon's own uid).
    ///
    /// Sets the process umask briefly: call it before other threads start.
    pub fn bind(path: &Path, uids: Vec<u32>) -> Result<ControlSocket, ControlError> {
        let fail = |message: String| ControlError {
            path: path.to_path_buf(),
            message,
        };
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(fail(
                    "exists and is not a socket; refusing to replace it (remove it or choose another path)".into(),
                ));
            }
            match Channel::connect(path) {
                Ok(_) => {
                    return Err(fail(
                        "another egress-gate daemon is serving on it (stop it or choose another path)"
                            .into(),
                    ));
                }
                Err(_) => {
                    std::fs::remove_file(path)
                        .map_err(|e| fail(format!("cannot remove the stale socket: {e}")))?;
                }
            }
        }
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| fail(format!("cannot create socket: {e}")))?;
        let addr = SocketAddrUnix::new(path).map_err(|e| fail(format!("bad path: {e}")))?;
        // The file is created 0600 from the start: no window in which others could connect.
        let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
        let bound = rustix::net::bind(&fd, &addr);
        rustix::process::umask(old);
        bound.map_err(|e| fail(format!("cannot bind: {e}")))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| fail(format!("cannot set mode 0600: {e}")))?;
        rustix::net::listen(&fd, 64).map_err(|e| fail(format!("cannot listen: {e}")))?;
        let meta = std::fs::symlink_metadata(path).map_err(|e| fail(e.to_string()))?;
        let uids = if uids.is_empty() {
            vec![rustix::process::geteuid().as_raw()]
        } else {
            uids
        };
        Ok(ControlSocket {
            fd,
            path: path.to_path_buf(),
            identity: (meta.dev(), meta.ino()),
            uids,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves the control socket for `running`'s proxy. Dropping the guard stops serving and
    /// removes the socket file.
    pub fn serve(self, running: &Running) -> io::Result<ControlGuard> {
        rustix::io::ioctl_fionbio(&self.fd, true)?;
        let listener = sys::async_fd(self.fd, tokio::io::Interest::READABLE)?;
        let daemon = Arc::new(Daemon {
            uids: self.uids,
            netns: std::fs::read_link("/proc/self/ns/net")?,
            proxy: running.proxy().clone(),
            audit: running.audit().clone(),
            listeners: running.listener_sender(),
        });
        tracing::info!(path = %self.path.display(), uids = ?daemon.uids, "control socket ready");
        Ok(ControlGuard {
            task: tokio::spawn(accept_loop(listener, daemon)),
            path: self.path,
            identity: self.identity,
        })
    }
}

/// Serving control socket; stops and removes the socket file when dropped.
pub struct ControlGuard {
    task: JoinHandle<()>,
    path: PathBuf,
    identity: (u64, u64),
}

impl Drop for ControlGuard {
    fn drop(&mut self) {
        self.task.abort();
        // Remove the file only if it is still ours (not replaced by another daemon).
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.identity
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

struct Daemon {
    /// Peers allowed to attach plugins (SO_PEERCRED uid).
    uids: Vec<u32>,
    /// This process's network namespace; launchers must be in it (plugins are not).
    netns: PathBuf,
    proxy: Arc<Proxy>,
    audit: Audit,
    listeners: mpsc::Sender<Listener>,
}

async fn accept_loop(listener: AsyncFd<OwnedFd>, daemon: Arc<Daemon>) {
    // Dropping the set (when this task is aborted) aborts every connection task with it.
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            guard = listener.readable() => {
                let Ok(mut guard) = guard else { return };
                match guard.try_io(|fd| {
                    rustix::net::accept_with(fd.get_ref(), SocketFlags::NONBLOCK | SocketFlags::CLOEXEC)
                        .map_err(io::Error::from)
                }) {
                    Ok(result) => result,
                    Err(_would_block) => continue,
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        match accepted {
            Ok(conn) => {
                let daemon = daemon.clone();
                connections.spawn(async move {
                    if let Err(e) = handle(conn, &daemon).await {
                        tracing::warn!(error = %e, "control connection failed");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "control accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(conn: OwnedFd, daemon: &Daemon) -> io::Result<()> {
    let channel = AsyncChannel::new(conn)?;
    let peer = rustix::net::sockopt::socket_peercred(&channel)?;
    let uid = peer.uid.as_raw();
    let pid = peer.pid.as_raw_nonzero().get();
    if let Some(refusal) = check_peer(daemon, uid, pid) {
        tracing::warn!(uid, pid, reason = %refusal.summary, "control connection refused");
        return channel.send(&Reply::refused(refusal)).await;
    }
    channel.send(&Reply::Ok).await?;

    // 1. attach
    let Some((request, fds)) = recv_setup(&channel).await? else {
        return Ok(());
    };
    let Request::Attach { plugin, argv0 } = request else {
        return channel
            .send(&Reply::refused(protocol("expected attach")))
            .await;
    };
    let policy = daemon.proxy.policy();
    if !policy.has_plugin(&plugin) {
        return channel
            .send(&Reply::refused(Diagnosis {
                summary: format!("the daemon's policy has no [plugins.{plugin}] table"),
                cause: "a plugin is judged by its own rules, so it must be declared".into(),
                remedy: format!(
                    "add [plugins.{plugin}] to the daemon's policy and reload it, or pass --plugin with a declared name"
                ),
            }))
            .await;
    }
    let sockets = match adopt(fds) {
        Ok(sockets) => sockets,
        Err(refusal) => return channel.send(&Reply::refused(refusal)).await,
    };
    channel.send(&Reply::Ok).await?;

    // 2. started: record, then serve
    let Some((Request::Started { pid: plugin_pid }, _)) = recv_setup(&channel).await? else {
        return Ok(()); // the launcher gave up; the sockets close here
    };
    let exec = ToolExec {
        ts: record::now(),
        audit_id: daemon.audit.next_id().to_string(),
        event: record::TOOL_EXEC,
        plugin: plugin.clone(),
        phase: "start",
        argv0,
        pid: plugin_pid,
        status: None,
        policy_sha256: policy.sha256.clone(),
    };
    if let Err(e) = daemon.audit.commit(Record::ToolExec(exec.clone())).await {
        return channel
            .send(&Reply::refused(Diagnosis {
                summary: format!("cannot record the launch: {e}"),
                cause: "the daemon's audit trail is not writable".into(),
                remedy: "fix the daemon's [audit] path; a plugin is never run unrecorded".into(),
            }))
            .await;
    }
    let name: Arc<str> = Arc::from(plugin.as_str());
    // Cancelled when the plugin's run is over, so its sockets (and with them its network
    // namespace) do not outlive it in the daemon.
    let retire = tokio_util::sync::CancellationToken::new();
    let _retire_on_return = retire.clone().drop_guard();
    for socket in sockets {
        let listener = Listener::for_plugin(socket, name.clone()).until(retire.clone());
        if daemon.listeners.send(listener).await.is_err() {
            return channel
                .send(&Reply::refused(Diagnosis {
                    summary: "the daemon is shutting down".into(),
                    cause: "the proxy no longer accepts new listeners".into(),
                    remedy: "retry once the daemon is back".into(),
                }))
                .await;
        }
    }
    tracing::info!(plugin = %plugin, pid = plugin_pid, uid, audit_id = %exec.audit_id, "plugin attached");

    // 3. exited (or the launcher vanished). From here on the start is on record, so the exit is
    // recorded on every path, even when the launcher is already gone.
    let status = match channel.send(&Reply::Ok).await {
        Ok(()) => match channel.recv::<Request>().await {
            Ok(Some((Request::Exited { status }, _))) => Some(status),
            _ => None,
        },
        Err(_) => None,
    };
    let exit = ToolExec {
        ts: record::now(),
        phase: "exit",
        status,
        ..exec
    };
    let committed = daemon.audit.commit(Record::ToolExec(exit)).await;
    if let Err(e) = &committed {
        tracing::error!(error = %e, plugin = %plugin, "cannot record the plugin's exit");
    }
    tracing::info!(plugin = %plugin, pid = plugin_pid, ?status, "plugin exited");
    if status.is_some() {
        let _ = channel.send(&Reply::Ok).await;
    }
    Ok(())
}

async fn recv_setup(channel: &AsyncChannel) -> io::Result<Option<(Request, Vec<OwnedFd>)>> {
    match tokio::time::timeout(SETUP_TIMEOUT, channel.recv::<Request>()).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "launcher sent nothing in time",
        )),
    }
}

fn protocol(what: &str) -> Diagnosis {
    Diagnosis {
        summary: format!("protocol error: {what}"),
        cause: "the launcher and the daemon speak different protocol versions".into(),
        remedy: "use the same egress-gate version for `run --connect` and `serve`".into(),
    }
}

fn check_peer(daemon: &Daemon, uid: u32, pid: i32) -> Option<Diagnosis> {
    if !daemon.uids.contains(&uid) {
        return Some(Diagnosis {
            summary: format!("uid {uid} may not launch plugins through this daemon"),
            cause: format!(
                "the daemon accepts launchers from uid(s) {} only (checked with SO_PEERCRED)",
                daemon
                    .uids
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            remedy: format!(
                "run the launcher as one of those users, or start the daemon with --control-uid {uid}"
            ),
        });
    }
    match std::fs::read_link(format!("/proc/{pid}/ns/net")) {
        Ok(ns) if ns == daemon.netns => None,
        Ok(_) => Some(Diagnosis {
            summary: "the launcher is not in the daemon's network namespace".into(),
            cause: "control connections from inside a sandbox are refused: a plugin could \
                    otherwise attach sockets under another plugin's name"
                .into(),
            remedy: "run `egress-gate run --connect` from the host, not from inside a plugin"
                .into(),
        }),
        Err(e) => Some(Diagnosis {
            summary: format!("cannot tell which network namespace the launcher is in: {e}"),
            cause: "/proc/PID/ns/net of the peer is not readable by the daemon".into(),
            remedy: "run the daemon as the launcher's user or as root".into(),
        }),
    }
}

/// Checks the received descriptors are what a sandbox sends — listening TCP sockets on
/// loopback in another network namespace — and adopts them.
fn adopt(fds: Vec<OwnedFd>) -> Result<Vec<tokio::net::TcpListener>, Diagnosis> {
    let bad = |what: String| Diagnosis {
        summary: format!("the launcher sent unusable sockets: {what}"),
        cause: "only loopback listening sockets created inside a sandbox are accepted".into(),
        remedy: "launch plugins with `egress-gate run --connect`".into(),
    };
    if fds.is_empty() || fds.len() > 2 {
        return Err(bad(format!("{} descriptors", fds.len())));
    }
    let ours = own_netns_cookie();
    let mut sockets = Vec::new();
    for fd in fds {
        let listening = rustix::net::sockopt::socket_acceptconn(&fd).unwrap_or(false);
        let stream = rustix::net::sockopt::socket_type(&fd).ok() == Some(SocketType::STREAM);
        if !listening || !stream {
            return Err(bad("not a listening TCP socket".into()));
        }
        if let (Some(ours), Some(theirs)) = (ours, sys::netns_cookie(fd.as_fd()))
            && ours == theirs
        {
            return Err(bad(
                "the socket is in the daemon's own network namespace".into()
            ));
        }
        let std = TcpListener::from(fd);
        match std.local_addr() {
            Ok(addr) if addr.ip().is_loopback() => {}
            Ok(addr) => return Err(bad(format!("bound to {addr}, not loopback"))),
            Err(e) => return Err(bad(e.to_string())),
        }
        let adopted = std
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(std))
            .map_err(|e| bad(e.to_string()))?;
        sockets.push(adopted);
    }
    Ok(sockets)
}

/// The cookie of the daemon's own network namespace (from a throwaway socket).
fn own_netns_cookie() -> Option<u64> {
    let probe = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).ok()?;
    sys::netns_cookie(probe.as_fd())
}
