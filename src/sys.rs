//! Raw system calls that no well-kept crate wraps safely — the only `unsafe` code in the crate.
//! Nearly all of them are the launcher's; the audit writer uses one.
//!
//! Each function wraps one operation behind a safe signature, so the rest of the crate never
//! handles a raw pointer. Everything else (namespaces' uid maps, mounts, prctl, descriptor
//! passing, pidfds) goes through `rustix`'s safe wrappers. This module must never grow logic:
//! it performs a call and reports `errno`, nothing more.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use rustix::net::{AddressFamily, SocketType};
use rustix::thread::UnshareFlags;

/// Which side of a fork we are on.
pub enum Forked {
    Child,
    Parent(rustix::process::Pid),
}

/// Puts the calling thread under `SCHED_BATCH` (its nice value is kept): when it wakes up it no
/// longer preempts the thread that is running, and waits for that thread to block or for the
/// next scheduler tick instead.
pub fn batch_scheduling_for_current_thread() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid `sched_param` that outlives the call; pid 0 names the calling
    // thread, and SCHED_BATCH with static priority 0 needs no privilege.
    match unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// How many threads this process has right now.
pub fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// `fork()`, refused unless the process has exactly one thread.
///
/// A fork copies only the calling thread; with other threads alive, a lock one of them held
/// (the allocator's, stdio's) would stay locked forever in the child. With one thread the child
/// is a complete copy and may run ordinary Rust code. Namespace creation needs the same
/// condition: `unshare(CLONE_NEWUSER)` fails with EINVAL in a multi-threaded process.
pub fn fork_single_threaded() -> io::Result<Forked> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "the launcher must fork before any thread starts, but this process has {threads} threads"
        )));
    }
    // SAFETY: the process has exactly one thread (checked just above, and only this thread
    // could have started another), so the child is a full copy with no lock held by a thread
    // that does not exist there.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(
            rustix::process::Pid::from_raw(pid).ok_or_else(|| io::Error::other("fork: bad pid"))?,
        )),
    }
}

/// `unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS)` for the calling (single-threaded) process.
pub fn unshare_sandbox() -> io::Result<()> {
    let flags = UnshareFlags::NEWUSER | UnshareFlags::NEWNET | UnshareFlags::NEWNS;
    // SAFETY: rustix marks `unshare` unsafe only because CLONE_FILES could leave other threads
    // holding descriptors from a table this thread no longer shares. We never pass CLONE_FILES,
    // and the calling process has a single thread.
    unsafe { rustix::thread::unshare_unsafe(flags) }.map_err(io::Error::from)
}

/// Ends the process at once, without running exit handlers or flushing the parent's buffers
/// that this forked copy inherited.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` has no preconditions; it never returns.
    unsafe { libc::_exit(code) }
}

/// Restores default signal dispositions and an empty signal mask, as a freshly exec'd program
/// expects (ignored signals stay ignored across exec, and Rust ignores SIGPIPE).
pub fn default_signal_state() {
    // SAFETY: signal(2) with SIG_DFL installs no handler code; sigprocmask with an emptied set we
    // own only unblocks signals. The process is single-threaded and about to exec.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Replaces the process image. Returns only on failure, with the reason.
fn execve(path: &CStr, argv: &[CString], envp: &[CString]) -> io::Error {
    let argv: Vec<*const c_char> = argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const c_char> = envp
        .iter()
        .map(|e| e.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    // SAFETY: `path` and every element of `argv`/`envp` are NUL-terminated strings borrowed for
    // the whole call; both pointer arrays are null-terminated as execve(2) requires.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    io::Error::last_os_error()
}

/// The last step of the sandboxed child: closes every descriptor from 3 upwards except
/// `report` (so nothing the launcher inherited — an open file, a socket to a host service —
/// reaches the plugin) and executes the plugin. On failure writes `encode(error)` to `report`
/// and exits with 127 (not found) or 126 (found but not executable).
///
/// One function so that no Rust code that could use or drop a closed descriptor runs between
/// the close and the exec: `encode` is a plain function pointer and captures nothing.
pub fn close_inherited_and_exec(
    report: BorrowedFd<'_>,
    path: &CStr,
    argv: &[CString],
    envp: &[CString],
    encode: fn(&io::Error) -> Vec<u8>,
) -> ! {
    let error = match close_inherited_except(report.as_raw_fd()) {
        Ok(()) => execve(path, argv, envp),
        Err(e) => e,
    };
    let _ = rustix::io::write(report, &encode(&error));
    exit_now(if error.kind() == io::ErrorKind::NotFound {
        127
    } else {
        126
    })
}

fn close_inherited_except(keep: RawFd) -> io::Result<()> {
    let ranges: [(RawFd, RawFd); 2] = [(3, keep - 1), (keep + 1, RawFd::MAX)];
    for (first, last) in ranges {
        if first > last {
            continue;
        }
        // SAFETY: close_range(2) takes plain integers. Descriptors owned by live Rust values
        // are closed underneath them, which is sound here because the only caller goes straight
        // on to execve or _exit: nothing that owns them is used or dropped afterwards.
        let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last as libc::c_uint, 0) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ENOSYS) {
                return Err(err);
            }
            close_listed(first, last)?;
        }
    }
    Ok(())
}

/// Fallback for kernels before 5.9: close what /proc/self/fd lists.
fn close_listed(first: RawFd, last: RawFd) -> io::Result<()> {
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| (first..=last).contains(fd))
        .collect();
    for fd in fds {
        // SAFETY: as for close_range above; a descriptor that was the directory handle used
        // for the listing is already closed and yields EBADF, which is ignored.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// Brings the loopback interface of the current network namespace up (a new namespace starts
/// with `lo` down, so even 127.0.0.1 would be unreachable).
pub fn loopback_up() -> io::Result<()> {
    let sock = rustix::net::socket(AddressFamily::INET, SocketType::DGRAM, None)?;
    // SAFETY: `ifreq` is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the interface named in `req` and writes its flags into
    // `req.ifr_ifru`; `req` is a valid, exclusively borrowed ifreq for the call.
    if unsafe { libc::ioctl(sock.as_fd().as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS just filled `ifru_flags`, the union member being read.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads `req` (name and flags); it is valid for the call.
    if unsafe { libc::ioctl(sock.as_fd().as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Registers a descriptor with the tokio reactor (which must be running).
pub fn async_fd(
    fd: OwnedFd,
    interest: tokio::io::Interest,
) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: tokio requires the descriptor to stay open and the same for the AsyncFd's whole
    // lifetime; the AsyncFd owns the OwnedFd, which closes it only when dropped with it.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest) }
        .map_err(io::Error::from)
}

/// `SO_NETNS_COOKIE` for the architectures whose value is the generic one (Linux ≥ 5.14).
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64",
    target_arch = "loongarch64",
    target_arch = "s390x",
    target_arch = "powerpc64"
))]
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The cookie naming the network namespace a socket belongs to, or `None` where the kernel (or
/// this architecture) cannot say.
pub fn netns_cookie(fd: BorrowedFd<'_>) -> Option<u64> {
    #[cfg(any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64",
        target_arch = "loongarch64",
        target_arch = "s390x",
        target_arch = "powerpc64"
    ))]
    {
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `cookie`, a u64 we own, and updates
        // `len`; both pointers are valid for the call.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_NETNS_COOKIE,
                (&mut cookie as *mut u64).cast(),
                &mut len,
            )
        };
        (rc == 0 && len as usize == std::mem::size_of::<u64>()).then_some(cookie)
    }
    #[cfg(not(any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64",
        target_arch = "loongarch64",
        target_arch = "s390x",
        target_arch = "powerpc64"
    )))]
    {
        let _ = fd;
        None
    }
}
