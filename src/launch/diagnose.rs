//! Turning a failed launch step into a message a person can act on: what failed, the likely
//! cause (read from the kernel's own settings where it can tell), and the remedy.
//!
//! Only reads `/proc`; never changes anything and never retries.

use std::fmt;
use std::io;
use std::path::Path;

use super::sandbox::Step;

/// What failed, why, and what to do about it.
#[derive(Debug, Clone)]
pub struct Diagnosis {
    pub summary: String,
    pub cause: String,
    pub remedy: String,
}

impl fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}\n  cause: {}\n  remedy: {}",
            self.summary, self.cause, self.remedy
        )
    }
}

fn errno_name(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) => "EPERM",
        Some(libc::EACCES) => "EACCES",
        Some(libc::ENOSPC) => "ENOSPC",
        Some(libc::EINVAL) => "EINVAL",
        Some(libc::EUSERS) => "EUSERS",
        Some(libc::ENOMEM) => "ENOMEM",
        Some(libc::ENOENT) => "ENOENT",
        Some(libc::ECONNREFUSED) => "ECONNREFUSED",
        Some(libc::EADDRINUSE) => "EADDRINUSE",
        _ => "error",
    }
}

fn read_number(path: &str) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The `Seccomp:` mode of this process (0 none, 1 strict, 2 filter).
fn seccomp_mode() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Explains a failed sandbox step.
pub fn step(step: Step, error: io::Error, detail: &str) -> Diagnosis {
    let e = format!("{error} ({})", errno_name(&error));
    match step {
        Step::Unshare => unshare(error.raw_os_error(), e),
        Step::SetGroups | Step::UidMap | Step::GidMap => {
            let uid = rustix::process::geteuid().as_raw();
            Diagnosis {
                summary: format!("cannot map uid/gid {uid} into the plugin's user namespace: {e}"),
                cause: "the kernel refused the id mapping (a security module, or a \
                        setuid/setgid launcher whose effective ids differ from its real ids)"
                    .into(),
                remedy: "run egress-gate as an ordinary (not setuid) program".into(),
            }
        }
        Step::MountPrivate | Step::ResolvConf | Step::Hide => Diagnosis {
            summary: format!(
                "cannot set up the plugin's mount namespace{}: {e}",
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(" (covering {detail})")
                }
            ),
            cause: "a mount inside the new mount namespace was refused (a read-only or \
                    locked mount, or a security module)"
                .into(),
            remedy: if step == Step::Hide {
                "check the paths given with --hide; report a bug if it is a default path".into()
            } else {
                "report a bug with this message and your distribution".into()
            },
        },
        Step::Loopback | Step::Listen => Diagnosis {
            summary: format!(
                "cannot set up the sandbox's loopback proxy socket{}: {e}",
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({detail})")
                }
            ),
            cause: "the new network namespace refused the loopback or socket setup".into(),
            remedy: "retry with the default --proxy-port; report a bug if it persists".into(),
        },
        Step::DeathSignal | Step::NoNewPrivs | Step::DropCapabilities | Step::HandOver => {
            Diagnosis {
                summary: format!("cannot harden the plugin process ({step:?}): {e}"),
                cause: "the kernel refused a prctl(2) the launcher relies on".into(),
                remedy: "run on Linux 5.3 or newer without a policy that blocks prctl".into(),
            }
        }
    }
}

fn unshare(errno: Option<i32>, e: String) -> Diagnosis {
    let summary = format!(
        "cannot create the plugin's network sandbox: \
         unshare(CLONE_NEWUSER|CLONE_NEWNET|CLONE_NEWNS) failed: {e}"
    );
    let (cause, remedy): (String, String) = match errno {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            if seccomp_mode() == Some(2) {
                (
                    "a seccomp filter on this process forbids creating namespaces \
                     (/proc/self/status shows Seccomp: 2); container runtimes' default \
                     profiles do this"
                        .into(),
                    "run egress-gate outside the container, or give the container a seccomp \
                     profile that allows unshare(2) with CLONE_NEWUSER"
                        .into(),
                )
            } else if read_number("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
                == Some(1)
            {
                (
                    "AppArmor restricts unprivileged user namespaces \
                     (kernel.apparmor_restrict_unprivileged_userns = 1)"
                        .into(),
                    "install an AppArmor profile for the egress-gate binary that allows \
                     `userns,`, or set sysctl kernel.apparmor_restrict_unprivileged_userns=0"
                        .into(),
                )
            } else if read_number("/proc/sys/kernel/unprivileged_userns_clone") == Some(0) {
                (
                    "unprivileged user namespaces are disabled \
                     (kernel.unprivileged_userns_clone = 0)"
                        .into(),
                    "set sysctl kernel.unprivileged_userns_clone=1".into(),
                )
            } else {
                (
                    "the kernel or a security module refused to create a user namespace \
                     (also the case inside a chroot, or a container without user-namespace \
                     support)"
                        .into(),
                    "allow unprivileged user namespaces for this user, or run egress-gate \
                     where they are allowed"
                        .into(),
                )
            }
        }
        Some(libc::ENOSPC) => {
            let limits = [
                (
                    "user.max_user_namespaces",
                    "/proc/sys/user/max_user_namespaces",
                ),
                (
                    "user.max_net_namespaces",
                    "/proc/sys/user/max_net_namespaces",
                ),
                (
                    "user.max_mnt_namespaces",
                    "/proc/sys/user/max_mnt_namespaces",
                ),
            ];
            match limits.iter().find(|(_, path)| read_number(path) == Some(0)) {
                Some((name, path)) => (
                    format!("namespaces are disabled: {path} is 0 ({name} = 0)"),
                    format!(
                        "raise the limit, e.g. sysctl -w {name}=15000 (in the namespace \
                         egress-gate runs in)"
                    ),
                ),
                None => (
                    "a namespace limit (user.max_user_namespaces, user.max_net_namespaces or \
                     user.max_mnt_namespaces) is reached for this user or an enclosing namespace"
                        .into(),
                    "raise the limit with sysctl, or end processes holding namespaces".into(),
                ),
            }
        }
        Some(libc::EINVAL) => (
            "this kernel has no user or network namespace support (CONFIG_USER_NS, \
             CONFIG_NET_NS)"
                .into(),
            "run on a kernel built with user and network namespaces".into(),
        ),
        Some(libc::EUSERS) => (
            "user namespaces are nested 32 deep already".into(),
            "run egress-gate in a less deeply nested namespace".into(),
        ),
        _ => (
            "the kernel refused to create the namespaces".into(),
            "check the error above; user and network namespaces must be available".into(),
        ),
    };
    Diagnosis {
        summary,
        cause,
        remedy,
    }
}

/// Explains why the daemon's control socket could not be reached.
pub fn connect(path: &Path, error: &io::Error) -> Diagnosis {
    let e = format!("{error} ({})", errno_name(error));
    let (cause, remedy) = match error.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ECONNREFUSED) => (
            "no egress-gate daemon is serving on this path".to_string(),
            format!(
                "start one with `egress-gate serve --config FILE --control {}`, or run the \
                 plugin with its own proxy: `egress-gate run --config FILE --plugin NAME -- CMD`",
                path.display()
            ),
        ),
        Some(libc::EACCES) | Some(libc::EPERM) => (
            "the control socket belongs to another user (it is created with mode 0600)".to_string(),
            "run the launcher as the daemon's user, or have the daemon's operator grant your \
             uid with --control-uid and access to the socket file"
                .to_string(),
        ),
        _ => (
            "the control socket could not be connected".to_string(),
            "check the path and that the daemon is running".to_string(),
        ),
    };
    Diagnosis {
        summary: format!("cannot connect to the egress-gate daemon: {e}"),
        cause,
        remedy,
    }
}
