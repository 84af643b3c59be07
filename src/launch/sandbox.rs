//! The sandboxed child: its namespaces, its proxy sockets, and the hand-over to the parent.
//!
//! The parent forks (while it still has one thread); the child enters new user, network and
//! mount namespaces, maps the caller's own uid and gid, covers `/etc/resolv.conf` and host
//! service sockets, brings its loopback up, binds the proxy's listening sockets there and sends
//! them to the parent. It then waits for `go` — the parent first records the launch — closes
//! every other descriptor and execs the plugin. Each step that fails is reported to the parent
//! with its errno and the child exits: the plugin never runs half-sandboxed.

use std::ffi::CString;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use rustix::mount::{MountFlags, MountPropagationFlags};
use rustix::process::{Pid, PidfdFlags, Signal};
use rustix::thread::CapabilitySet;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::channel::Channel;
use super::diagnose::{self, Diagnosis};
use super::supervise::{self, Outcome};
use super::{LaunchError, proxy_env};
use crate::sys::{self, Forked};

/// How long the parent waits for the child to build the sandbox.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything the child needs, prepared before the fork.
pub struct Spec {
    /// The resolved program path.
    pub program: CString,
    pub argv: Vec<CString>,
    /// The caller's environment minus proxy variables (the child adds them with its port).
    pub env: Vec<CString>,
    pub proxy_port: u16,
    /// Canonical paths to cover inside the sandbox.
    pub hide: Vec<PathBuf>,
}

/// One step of building the sandbox; names the failure the parent diagnoses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    DeathSignal,
    Unshare,
    SetGroups,
    UidMap,
    GidMap,
    MountPrivate,
    ResolvConf,
    Hide,
    Loopback,
    Listen,
    NoNewPrivs,
    DropCapabilities,
    HandOver,
}

/// Child → parent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum FromChild {
    /// The sandbox is ready; its listening sockets are attached.
    Ready { port: u16 },
    /// A step failed; the child has exited or is about to.
    Failed {
        step: Step,
        errno: i32,
        detail: String,
    },
    /// `exec` failed after `go`.
    ExecFailed { errno: i32 },
}

/// Parent → child.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ToChild {
    Go,
}

/// A child whose sandbox is ready and which waits for `go`.
///
/// Dropping it without [`Sandbox::exec_and_wait`] aborts the launch: the child sees its channel
/// close and exits without running anything, and is reaped here.
pub struct Sandbox {
    pid: Pid,
    pidfd: Option<OwnedFd>,
    channel: Option<Channel>,
    listeners: Vec<TcpListener>,
}

impl Sandbox {
    /// Forks the child and waits until its sandbox is ready (or refused).
    pub fn create(spec: &Spec) -> Result<Sandbox, LaunchError> {
        let sys_err = |what| move |error| LaunchError::System { what, error };
        let (parent_end, child_end) =
            Channel::pair().map_err(sys_err("cannot create the sandbox channel"))?;
        let parent_pid = rustix::process::getpid();
        match sys::fork_single_threaded().map_err(sys_err("cannot fork the sandbox"))? {
            Forked::Child => {
                drop(parent_end);
                child(spec, child_end, parent_pid)
            }
            Forked::Parent(pid) => {
                drop(child_end);
                // The pidfd is taken before anything can reap the child, so it names this child.
                let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty()).ok();
                let mut sandbox = Sandbox {
                    pid,
                    pidfd,
                    channel: Some(parent_end),
                    listeners: Vec::new(),
                };
                sandbox.await_ready()?;
                if sandbox.pidfd.is_none() {
                    return Err(LaunchError::Sandbox(Diagnosis {
                        summary: "cannot open a pidfd for the plugin process".into(),
                        cause: "pidfd_open(2) is missing (Linux older than 5.3) or was refused"
                            .into(),
                        remedy: "run on Linux 5.3 or newer".into(),
                    }));
                }
                Ok(sandbox)
            }
        }
    }

    fn await_ready(&mut self) -> Result<(), LaunchError> {
        let channel = self.channel.as_ref().expect("channel present until exec");
        let io_err = |error| LaunchError::System {
            what: "cannot read from the sandbox",
            error,
        };
        channel
            .set_recv_timeout(Some(SETUP_TIMEOUT))
            .map_err(io_err)?;
        match channel.recv::<FromChild>().map_err(io_err)? {
            Some((FromChild::Ready { port }, fds)) => {
                for fd in fds {
                    self.listeners.push(TcpListener::from(fd));
                }
                if self.listeners.is_empty() {
                    return Err(io_err(io::Error::other("the sandbox sent no sockets")));
                }
                tracing::debug!(pid = self.pid.as_raw_nonzero().get(), port, "sandbox ready");
                channel.set_recv_timeout(None).map_err(io_err)?;
                Ok(())
            }
            Some((
                FromChild::Failed {
                    step,
                    errno,
                    detail,
                },
                _,
            )) => Err(LaunchError::Sandbox(diagnose::step(
                step,
                io::Error::from_raw_os_error(errno),
                &detail,
            ))),
            Some((FromChild::ExecFailed { .. }, _)) | None => Err(io_err(io::Error::other(
                "the sandbox process ended before it was ready",
            ))),
        }
    }

    /// The plugin's process id (the child's, which becomes the plugin's at exec).
    pub fn pid(&self) -> u32 {
        self.pid.as_raw_nonzero().get().unsigned_abs()
    }

    /// The proxy's listening sockets, bound inside the sandbox's network namespace.
    pub fn take_listeners(&mut self) -> Vec<TcpListener> {
        std::mem::take(&mut self.listeners)
    }

    /// Lets the child exec the plugin, forwards SIGINT/SIGTERM/SIGHUP/SIGQUIT to it, and waits
    /// until it exits.
    ///
    /// When `stop` fires, the plugin is asked to stop (SIGTERM, then SIGKILL).
    pub async fn exec_and_wait(mut self, stop: CancellationToken) -> Result<Outcome, LaunchError> {
        let channel = self.channel.take().expect("channel present until exec");
        let pidfd = self.pidfd.take().expect("pidfd checked at creation");
        // Forward signals from here on: a SIGINT between `go` and exec still reaches the plugin.
        let signals = supervise::Signals::install().map_err(|error| LaunchError::System {
            what: "cannot watch signals",
            error,
        })?;
        channel
            .send(&ToChild::Go, &[])
            .map_err(|error| LaunchError::System {
                what: "cannot start the plugin",
                error,
            })?;
        // The channel is close-on-exec in the child: end of file means exec succeeded.
        let exec_result = tokio::task::spawn_blocking(move || match channel.recv::<FromChild>() {
            Ok(Some((FromChild::ExecFailed { errno }, _))) => {
                Some(io::Error::from_raw_os_error(errno))
            }
            _ => None,
        });
        let waited = supervise::wait(pidfd, signals, stop).await;
        let status = waited.map_err(|error| LaunchError::System {
            what: "cannot wait for the plugin",
            error,
        })?;
        if let Ok(Some(error)) = exec_result.await {
            return Ok(Outcome::ExecFailed(error));
        }
        Ok(status)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Never told to exec: the launch was refused after the sandbox was built. The child has
        // not been reaped, so its pid is still ours to kill.
        if self.channel.take().is_some() {
            let _ = rustix::process::kill_process(self.pid, Signal::KILL);
            let _ = rustix::process::waitpid(Some(self.pid), rustix::process::WaitOptions::empty());
        }
    }
}

// === the child ===

/// The forked child. Never returns: it execs the plugin or exits.
fn child(spec: &Spec, channel: Channel, parent: Pid) -> ! {
    match build(spec, parent) {
        Ok((port, listeners)) => {
            let fds: Vec<_> = listeners.iter().map(|l| l.as_fd()).collect();
            if channel.send(&FromChild::Ready { port }, &fds).is_err() {
                sys::exit_now(125);
            }
            // The parent (or the daemon) holds the sockets now; the plugin must not.
            drop(listeners);
            match channel.recv::<ToChild>() {
                Ok(Some((ToChild::Go, _))) => {}
                _ => sys::exit_now(125),
            }
            let mut env = spec.env.clone();
            env.extend(proxy_env(port));
            // Rust ignores SIGPIPE in its own processes; the plugin gets the default, as
            // std::process::Command would give it.
            sys::default_signal_state();
            sys::close_inherited_and_exec(channel.as_fd(), &spec.program, &spec.argv, &env, |e| {
                serde_json::to_vec(&FromChild::ExecFailed {
                    errno: e.raw_os_error().unwrap_or(libc::EIO),
                })
                .unwrap_or_default()
            })
        }
        Err((step, error, detail)) => {
            let _ = channel.send(
                &FromChild::Failed {
                    step,
                    errno: error.raw_os_error().unwrap_or(libc::EIO),
                    detail,
                },
                &[],
            );
            sys::exit_now(125)
        }
    }
}

type StepError = (Step, io::Error, String);

trait At<T> {
    fn at(self, step: Step) -> Result<T, StepError>;
    fn at_path(self, step: Step, path: &std::path::Path) -> Result<T, StepError>;
}

impl<T, E: Into<io::Error>> At<T> for Result<T, E> {
    fn at(self, step: Step) -> Result<T, StepError> {
        self.map_err(|e| (step, e.into(), String::new()))
    }
    fn at_path(self, step: Step, path: &std::path::Path) -> Result<T, StepError> {
        self.map_err(|e| (step, e.into(), path.display().to_string()))
    }
}

/// Builds the sandbox in the child and returns the proxy port and its listening sockets.
fn build(spec: &Spec, parent: Pid) -> Result<(u16, Vec<TcpListener>), StepError> {
    // If the launcher dies, so does the plugin (it keeps this across exec; set before the
    // namespaces so no window exists in which the parent could die unnoticed).
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL)).at(Step::DeathSignal)?;
    if rustix::process::getppid() != Some(parent) {
        sys::exit_now(125);
    }
    let uid = rustix::process::geteuid().as_raw();
    let gid = rustix::process::getegid().as_raw();

    sys::unshare_sandbox().at(Step::Unshare)?;
    // Map the caller's own ids (the only mapping an unprivileged process may write); deny
    // setgroups first, as the kernel requires, which also stops the plugin dropping groups.
    std::fs::write("/proc/self/setgroups", "deny").at(Step::SetGroups)?;
    std::fs::write("/proc/self/uid_map", format!("{uid} {uid} 1\n")).at(Step::UidMap)?;
    std::fs::write("/proc/self/gid_map", format!("{gid} {gid} 1\n")).at(Step::GidMap)?;

    // Nothing mounted here may propagate back to the host.
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .at(Step::MountPrivate)?;
    // No nameserver: resolvers fall back to 127.0.0.1:53 in the sandbox, where nothing listens,
    // so a lookup fails at once (ECONNREFUSED) instead of hanging or leaking a query.
    let resolv = std::path::Path::new("/etc/resolv.conf");
    if let Ok(real) = resolv.canonicalize() {
        rustix::mount::mount_bind("/dev/null", &real).at_path(Step::ResolvConf, &real)?;
    }
    for path in &spec.hide {
        hide(path).at_path(Step::Hide, path)?;
    }

    sys::loopback_up().at(Step::Loopback)?;
    let v4 = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, spec.proxy_port)))
        .at(Step::Listen)?;
    let port = v4.local_addr().at(Step::Listen)?.port();
    let mut listeners = vec![v4];
    match TcpListener::bind(SocketAddr::from((Ipv6Addr::LOCALHOST, port))) {
        Ok(v6) => listeners.push(v6),
        // A kernel without IPv6 has no [::1]; the IPv4 socket is enough.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EADDRNOTAVAIL) | Some(libc::EAFNOSUPPORT)
            ) => {}
        Err(e) => return Err((Step::Listen, e, format!("[::1]:{port}"))),
    }

    rustix::thread::set_no_new_privs(true).at(Step::NoNewPrivs)?;
    drop_capabilities().at(Step::DropCapabilities)?;
    Ok((port, listeners))
}

/// Covers a path: a file with `/dev/null` (a Unix socket behind it refuses connections), a
/// directory with an empty read-only tmpfs.
fn hide(path: &std::path::Path) -> io::Result<()> {
    if std::fs::metadata(path)?.is_dir() {
        rustix::mount::mount(
            "none",
            path,
            "tmpfs",
            MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            c"size=4k,mode=0555",
        )?;
    } else {
        rustix::mount::mount_bind("/dev/null", path)?;
    }
    Ok(())
}

/// Empties the capability bounding set, so the plugin gains no capability at exec — not even
/// when it runs as uid 0 (the caller was root), where it would otherwise get every capability
/// inside its user namespace (and with it the power to undo the mounts above).
fn drop_capabilities() -> io::Result<()> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40)
        .min(63);
    for cap in 0..=last {
        rustix::thread::remove_capability_from_bounding_set(CapabilitySet::from_bits_retain(
            1u64 << cap,
        ))?;
    }
    Ok(())
}
