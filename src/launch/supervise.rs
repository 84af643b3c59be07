//! Waiting for the plugin and forwarding signals to it.
//!
//! Uses a pidfd: it becomes readable when the process exits, and a signal sent through it can
//! never hit a recycled pid. Never decides anything about policy; only reports how the plugin
//! ended.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use rustix::process::{Signal, WaitId, WaitIdOptions};
use tokio::io::Interest;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// How the plugin ended.
#[derive(Debug)]
pub enum Outcome {
    Exited(i32),
    Killed(i32),
    /// The sandbox was ready but the program could not be executed.
    ExecFailed(io::Error),
}

impl Outcome {
    /// The shell's convention: the exit code, 128 + signal when killed, 127 for a program that
    /// does not exist and 126 for one that cannot be executed.
    pub fn code(&self) -> i32 {
        match self {
            Outcome::Exited(code) => *code,
            Outcome::Killed(signal) => 128 + signal,
            Outcome::ExecFailed(e) if e.kind() == io::ErrorKind::NotFound => 127,
            Outcome::ExecFailed(_) => 126,
        }
    }
}

/// The signals forwarded to the plugin. Installed before the plugin starts, so none is lost.
pub struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> io::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
            quit: signal(SignalKind::quit())?,
        })
    }

    /// The next signal this process received.
    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::INT,
            _ = self.terminate.recv() => Signal::TERM,
            _ = self.hangup.recv() => Signal::HUP,
            _ = self.quit.recv() => Signal::QUIT,
        }
    }
}

/// How long a plugin asked to stop (because its proxy stopped) has before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Waits until the process behind `pidfd` exits, forwarding every signal in `signals` to it,
/// then reaps it. When `stop` fires (the proxy stopped under the plugin), the plugin gets
/// SIGTERM, and SIGKILL if it is still there [`STOP_GRACE`] later.
pub async fn wait(
    pidfd: OwnedFd,
    mut signals: Signals,
    stop: CancellationToken,
) -> io::Result<Outcome> {
    let exited = crate::sys::async_fd(pidfd, Interest::READABLE)?;
    let pidfd = exited.get_ref();
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            guard = exited.readable() => {
                let mut guard = guard?;
                match rustix::process::waitid(
                    WaitId::PidFd(pidfd.as_fd()),
                    WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
                )? {
                    Some(status) => {
                        if let Some(code) = status.exit_status() {
                            return Ok(Outcome::Exited(code));
                        }
                        if let Some(sig) = status.terminating_signal() {
                            return Ok(Outcome::Killed(sig));
                        }
                        // Stopped or continued: not an exit; keep waiting.
                        guard.clear_ready();
                    }
                    None => guard.clear_ready(),
                }
            }
            _ = stop.cancelled(), if deadline.is_none() => {
                let _ = rustix::process::pidfd_send_signal(pidfd, Signal::TERM);
                deadline = Some(tokio::time::Instant::now() + STOP_GRACE);
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                let _ = rustix::process::pidfd_send_signal(pidfd, Signal::KILL);
                deadline = Some(tokio::time::Instant::now() + Duration::from_secs(3600));
            }
            sig = signals.next() => {
                tracing::debug!(signal = ?sig, "forwarding signal to the plugin");
                if let Err(e) = rustix::process::pidfd_send_signal(pidfd, sig) {
                    tracing::debug!(error = %e, "could not forward the signal (plugin gone?)");
                }
            }
        }
    }
}
