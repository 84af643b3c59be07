#![allow(dead_code)]
//! Runs the real `egress-gate run` (embedded and daemon mode) with policies written to a
//! temporary directory, bounded in time, and reads back the audit trail.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};

pub const BIN: &str = env!("CARGO_BIN_EXE_egress-gate");

/// Longest any single launcher run in these tests may take.
pub const RUN_LIMIT: Duration = Duration::from_secs(30);

/// A policy with one `[plugins.NAME]` per entry, each allowed to reach 127.0.0.1 on its ports.
pub fn policy(plugins: &[(&str, &[u16])]) -> String {
    let mut text = String::from("version = 1\n");
    for (name, ports) in plugins {
        text.push_str(&format!("[plugins.{name}]\n"));
        if !ports.is_empty() {
            let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
            text.push_str(&format!(
                "[[plugins.{name}.allow]]\ncidr = \"127.0.0.1/32\"\nports = [{}]\n",
                ports.join(", ")
            ));
        }
    }
    text
}

/// A temporary directory holding a policy (with `[audit] path` inside the directory).
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub policy: PathBuf,
    pub audit: PathBuf,
}

impl Setup {
    pub fn new(policy: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let audit = dir.path().join("audit.jsonl");
        let path = dir.path().join("policy.toml");
        std::fs::write(
            &path,
            format!(
                "{policy}\n[audit]\npath = {:?}\n",
                audit.display().to_string()
            ),
        )
        .unwrap();
        Setup {
            dir,
            policy: path,
            audit,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `egress-gate run --config POLICY --plugin PLUGIN -- CMD…`, run in the directory.
    pub fn run(&self, plugin: &str, cmd: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("run")
            .arg("--config")
            .arg(&self.policy)
            .args(["--plugin", plugin, "--"])
            .args(cmd)
            .current_dir(self.dir.path());
        c
    }

    /// Every record in the trail, each checked against the audit schema.
    pub fn records(&self) -> Vec<Value> {
        read_trail(&self.audit)
    }
}

pub fn read_trail(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    super::schema::check_trail(&text)
}

/// What a finished process left behind.
#[derive(Debug)]
pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn show(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs to completion within [`RUN_LIMIT`] (killed otherwise) with stdin closed.
pub async fn output(mut cmd: Command) -> Out {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().expect("spawn the launcher");
    let out = tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .expect("the launcher finished in time")
        .unwrap();
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Polls `check` every 10 ms for at most 10 s.
pub async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    for _ in 0..1000 {
        if let Some(v) = check() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A running `egress-gate serve --control`, killed on drop.
pub struct Daemon {
    pub setup: Setup,
    pub control: PathBuf,
    child: Child,
}

impl Daemon {
    pub async fn start(policy: &str, extra: &[&str]) -> Daemon {
        let setup = Setup::new(policy);
        let control = setup.path("control.sock");
        let child = Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(&setup.policy)
            .args(["--listen", "127.0.0.1:0", "--control"])
            .arg(&control)
            .args(extra)
            .current_dir(setup.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let daemon = Daemon {
            setup,
            control,
            child,
        };
        let audit = daemon.setup.audit.clone();
        eventually("the daemon to start", || {
            read_trail(&audit)
                .iter()
                .any(|r| r["event"] == "proxy.start")
                .then_some(())
        })
        .await;
        eventually("the control socket", || {
            daemon.control.exists().then_some(())
        })
        .await;
        daemon
    }

    /// `egress-gate run --connect CONTROL --plugin PLUGIN -- CMD…`.
    pub fn run(&self, plugin: &str, cmd: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("run")
            .arg("--connect")
            .arg(&self.control)
            .args(["--plugin", plugin, "--"])
            .args(cmd)
            .current_dir(self.setup.dir.path());
        c
    }

    pub fn records(&self) -> Vec<Value> {
        self.setup.records()
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("daemon running")
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    pub async fn stop(mut self) -> Setup {
        signal(self.pid(), libc::SIGTERM);
        let status = tokio::time::timeout(RUN_LIMIT, self.child.wait())
            .await
            .expect("daemon stopped in time")
            .unwrap();
        assert!(status.success(), "daemon exit: {status:?}");
        self.setup
    }
}

/// Sends a signal to a process this test started.
pub fn signal(pid: u32, sig: i32) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("pid");
    let sig = rustix::process::Signal::from_named_raw(sig).expect("signal");
    rustix::process::kill_process(pid, sig).expect("kill");
}

/// The `tool.exec` records of a plugin, start first.
pub fn tool_exec(records: &[Value], plugin: &str) -> Vec<Value> {
    records
        .iter()
        .filter(|r| r["event"] == "tool.exec" && r["plugin"] == plugin)
        .cloned()
        .collect()
}

/// The `net.req` records to `host:port`.
pub fn net_reqs(records: &[Value], host: &str, port: u16) -> Vec<Value> {
    records
        .iter()
        .filter(|r| r["event"] == "net.req" && r["host"] == host && r["port"] == port)
        .cloned()
        .collect()
}

/// A path the uid 65534 can execute: the test binary where it is, or a copy when some parent
/// directory is closed to other users.
pub fn binary_for_nobody(dir: &Path) -> PathBuf {
    let reachable = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "test",
            "-x",
            BIN,
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if reachable {
        return PathBuf::from(BIN);
    }
    let copy = dir.join("egress-gate");
    std::fs::copy(BIN, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    copy
}
