#![allow(dead_code)]
//! Running the real `egress-gate` binary from tests: free ports, waiting for a listener, and
//! child processes that are always killed and reaped, whatever path a test takes.

use std::process::{Child, ExitStatus};
use std::time::Duration;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_egress-gate");

/// `egress-gate serve --config POLICY --listen 127.0.0.1:PORT` with stdout and stderr discarded
/// (callers may redirect them again).
pub fn serve_command(policy: &std::path::Path, port: u16) -> std::process::Command {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args([
        "serve",
        "--config",
        policy.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{port}"),
    ])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    cmd
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (bounded) until something accepts on 127.0.0.1:`port`.
pub async fn wait_listening(port: u16) {
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("nothing started listening on port {port}");
}

/// Blocking flavour of [`wait_listening`].
pub fn wait_listening_blocking(port: u16) {
    for _ in 0..500 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("nothing started listening on port {port}");
}

/// A child process that is killed and reaped on drop.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        signal(self.id(), "TERM");
        for _ in 0..1000 {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("process {} did not exit after SIGTERM", self.id());
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends a signal by name (`TERM`, `KILL`, `HUP`, …) to a process.
pub fn signal(pid: u32, name: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{name} {pid} failed");
}
