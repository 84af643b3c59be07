//! The launcher: `egress-gate run` starts a plugin whose only network path is the proxy.
//!
//! Owns the plugin's sandbox and lifetime. A forked child enters new user, network and mount
//! namespaces, brings up its own loopback, binds the proxy's listening sockets *inside* that
//! network namespace and hands them to the parent over a socket pair (SCM_RIGHTS). The proxy —
//! in this process (embedded mode) or in a running `serve --control` daemon (daemon mode) —
//! accepts on those sockets from the host's namespace, so the sandbox needs no bridge process
//! and has no route anywhere else. Every connection on them is the plugin's: identity comes from
//! the listener, never from anything the plugin sends.
//!
//! This module must never start a plugin it could not sandbox: every failure before `exec`
//! refuses the launch with a message naming the cause and the remedy (there is no
//! environment-variable-only fallback). Namespaces are created before any thread or async
//! runtime exists, and all `unsafe` code lives in `crate::sys`.

mod channel;
pub mod control;
mod diagnose;
mod sandbox;
mod supervise;

use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::app::{self, StartError};
use crate::audit::record::{self, Record, ToolExec};
use crate::audit::{Audit, AuditError};
use crate::config::Config;
use crate::server::Listener;
use channel::Channel;
pub use control::ControlSocket;
use diagnose::Diagnosis;
use sandbox::{Sandbox, Spec};
use supervise::Outcome;

/// Exit code when the launcher refused or failed to start the plugin (sandbox, policy, proxy or
/// daemon problem). 126 and 127 keep their shell meanings: found but not executable, not found.
pub const EXIT_REFUSED: u8 = 125;
pub const EXIT_CANNOT_EXECUTE: u8 = 126;
pub const EXIT_NOT_FOUND: u8 = 127;

/// The port the proxy listens on inside the sandbox unless `--proxy-port` says otherwise.
pub const DEFAULT_PROXY_PORT: u16 = 3128;

/// Pathname Unix sockets of host services that would let a plugin act outside its network
/// namespace (a container engine starts containers with host networking; D-Bus, nscd and
/// systemd-resolved resolve names — a DNS channel out). Those that exist are covered with
/// `/dev/null` in the sandbox's mount namespace. `{uid}` is the caller's uid.
pub const HIDDEN_BY_DEFAULT: &[&str] = &[
    "/run/docker.sock",
    "/var/run/docker.sock",
    "/run/containerd/containerd.sock",
    "/run/podman/podman.sock",
    "/run/crio/crio.sock",
    "/run/user/{uid}/docker.sock",
    "/run/user/{uid}/podman/podman.sock",
    "/run/dbus/system_bus_socket",
    "/var/run/dbus/system_bus_socket",
    "/run/user/{uid}/bus",
    "/run/systemd/resolve/io.systemd.Resolve",
    "/run/nscd/socket",
    "/var/run/nscd/socket",
];

/// Where the proxy for the plugin runs.
pub enum Mode {
    /// In this process, under this policy, for this plugin only.
    Embedded(Box<Config>),
    /// In a `serve --control PATH` daemon reached through this control socket.
    Daemon(PathBuf),
}

/// What to run and how.
pub struct RunOptions {
    /// The plugin's name in the policy: its identity and its rules.
    pub plugin: String,
    /// The proxy's port inside the sandbox (0: any free port).
    pub proxy_port: u16,
    /// Extra paths to cover inside the sandbox (files get `/dev/null`, directories an empty
    /// read-only tmpfs).
    pub hide: Vec<PathBuf>,
    /// The command and its arguments.
    pub command: Vec<OsString>,
}

/// Runs a plugin under the proxy and returns the exit code for this process: the plugin's own
/// (128 + signal when killed), or [`EXIT_REFUSED`] with a message on stderr when it was not
/// started.
///
/// Must be called before any thread or runtime exists: the sandbox is forked first.
pub fn run(mode: Mode, options: RunOptions) -> u8 {
    let plugin = options.plugin.clone();
    let result = match mode {
        Mode::Embedded(config) => run_embedded(*config, options),
        Mode::Daemon(path) => run_connected(&path, options),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}", e.report(&plugin));
            e.exit_code()
        }
    }
}

// === errors ===

/// Why a plugin was not started (or could not be run after its sandbox was ready).
#[derive(Debug)]
pub enum LaunchError {
    /// The policy (or the daemon's policy) has no `[plugins.NAME]`.
    UnknownPlugin { known: Vec<String> },
    /// The command was not found on `PATH`.
    NotFound { program: OsString },
    /// The sandbox could not be built; the diagnosis names cause and remedy.
    Sandbox(Diagnosis),
    /// The embedded proxy could not start.
    Proxy(StartError),
    /// The audit trail refused the `tool.exec` record.
    Audit(AuditError),
    /// The daemon could not be reached or refused the plugin.
    Daemon { path: PathBuf, diagnosis: Diagnosis },
    /// The sandbox was ready but `exec` failed.
    Exec { program: OsString, error: io::Error },
    /// Anything else the launcher needed from the system.
    System {
        what: &'static str,
        error: io::Error,
    },
}

impl LaunchError {
    fn exit_code(&self) -> u8 {
        match self {
            LaunchError::NotFound { .. } => EXIT_NOT_FOUND,
            LaunchError::Exec { error, .. } if error.kind() == io::ErrorKind::NotFound => {
                EXIT_NOT_FOUND
            }
            LaunchError::Exec { .. } => EXIT_CANNOT_EXECUTE,
            _ => EXIT_REFUSED,
        }
    }

    /// The multi-line message for stderr.
    pub fn report(&self, plugin: &str) -> String {
        let head = format!("egress-gate: refusing to start plugin {plugin:?}");
        let never =
            "  egress-gate never runs a plugin outside its network sandbox; nothing was started.";
        match self {
            LaunchError::UnknownPlugin { known } => format!(
                "{head}: the policy has no [plugins.{plugin}] table\n  known plugins: {}\n  remedy: add [plugins.{plugin}] with its allow rules to the policy, or pass --plugin with one of the known names",
                if known.is_empty() {
                    "(none)".to_string()
                } else {
                    known.join(", ")
                }
            ),
            LaunchError::NotFound { program } => format!(
                "{head}: command {:?} not found on PATH",
                program.to_string_lossy()
            ),
            LaunchError::Sandbox(d) => format!("{head}: {d}\n{never}"),
            LaunchError::Proxy(e) => format!("{head}: the proxy could not start: {e}\n{never}"),
            LaunchError::Audit(e) => format!(
                "{head}: cannot record the launch in the audit trail: {e}\n  remedy: make the [audit] path writable; a plugin is never run unrecorded\n{never}"
            ),
            LaunchError::Daemon { path, diagnosis } => format!(
                "{head}: control socket {}: {diagnosis}\n{never}",
                path.display()
            ),
            LaunchError::Exec { program, error } => format!(
                "egress-gate: plugin {plugin:?}: cannot execute {:?}: {error}",
                program.to_string_lossy()
            ),
            LaunchError::System { what, error } => format!("{head}: {what}: {error}\n{never}"),
        }
    }
}

impl fmt::Display for LaunchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.report("?"))
    }
}

impl std::error::Error for LaunchError {}

fn system(what: &'static str) -> impl FnOnce(io::Error) -> LaunchError {
    move |error| LaunchError::System { what, error }
}

// === embedded mode ===

fn run_embedded(config: Config, options: RunOptions) -> Result<u8, LaunchError> {
    if !config.plugins.contains_key(&options.plugin) {
        return Err(LaunchError::UnknownPlugin {
            known: config.plugins.keys().cloned().collect(),
        });
    }
    let spec = prepare(&options, None)?;
    let mut sandbox = Sandbox::create(&spec)?;
    let sockets = sandbox.take_listeners();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(system("cannot start the async runtime"))?;
    runtime.block_on(embedded(config, options, sandbox, sockets))
}

async fn embedded(
    config: Config,
    options: RunOptions,
    sandbox: Sandbox,
    sockets: Vec<std::net::TcpListener>,
) -> Result<u8, LaunchError> {
    let plugin: Arc<str> = Arc::from(options.plugin.as_str());
    let mut listeners = Vec::new();
    for socket in sockets {
        let socket = into_tokio(socket).map_err(system("cannot adopt the sandbox's socket"))?;
        listeners.push(Listener::for_plugin(socket, plugin.clone()));
    }
    let running = app::start(config, listeners)
        .await
        .map_err(LaunchError::Proxy)?;
    let audit = running.audit().clone();
    let exec = ExecRecord {
        audit_id: audit.next_id().to_string(),
        plugin: options.plugin.clone(),
        argv0: argv0(&options.command),
        pid: sandbox.pid(),
        policy_sha256: running.proxy().policy().sha256.clone(),
    };
    audit
        .commit(exec.start())
        .await
        .map_err(LaunchError::Audit)?;
    tracing::info!(plugin = %exec.plugin, pid = exec.pid, audit_id = %exec.audit_id, "plugin started");

    let (stop, stopped) = oneshot::channel::<()>();
    // Set when the proxy stops on its own (e.g. the policy drifted with on_drift = "halt"): the
    // plugin then has no way out at all, so it is stopped too rather than left hanging.
    let proxy_gone = CancellationToken::new();
    let serve = async {
        let served = running
            .serve(async {
                let _ = stopped.await;
            })
            .await;
        proxy_gone.cancel();
        served
    };
    let supervise = async {
        let outcome = sandbox.exec_and_wait(proxy_gone.clone()).await;
        record_exit(&audit, &exec, &outcome).await;
        // The trail's writer finishes once every handle is gone: release ours before stopping.
        drop(audit);
        let _ = stop.send(());
        outcome
    };
    let (served, outcome) = tokio::join!(serve, supervise);
    if let Err(e) = served {
        eprintln!(
            "egress-gate: plugin {:?}: the proxy stopped: {e}",
            options.plugin
        );
    }
    finish(&options, outcome)
}

fn into_tokio(socket: std::net::TcpListener) -> io::Result<tokio::net::TcpListener> {
    socket.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(socket)
}

/// The fields the `tool.exec` start and exit records share.
struct ExecRecord {
    audit_id: String,
    plugin: String,
    argv0: String,
    pid: u32,
    policy_sha256: Arc<str>,
}

impl ExecRecord {
    fn record(&self, phase: &'static str, status: Option<i32>) -> Record {
        Record::ToolExec(ToolExec {
            ts: record::now(),
            audit_id: self.audit_id.clone(),
            event: record::TOOL_EXEC,
            plugin: self.plugin.clone(),
            phase,
            argv0: self.argv0.clone(),
            pid: self.pid,
            status,
            policy_sha256: self.policy_sha256.clone(),
        })
    }

    fn start(&self) -> Record {
        self.record("start", None)
    }
}

async fn record_exit(audit: &Audit, exec: &ExecRecord, outcome: &Result<Outcome, LaunchError>) {
    let status = match outcome {
        Ok(o) => Some(o.code()),
        Err(e) => Some(i32::from(e.exit_code())),
    };
    if let Err(e) = audit.commit(exec.record("exit", status)).await {
        tracing::error!(error = %e, plugin = %exec.plugin, "cannot record the plugin's exit");
    }
}

/// The launcher's exit code for a finished plugin; a failed exec is reported on stderr.
fn finish(options: &RunOptions, outcome: Result<Outcome, LaunchError>) -> Result<u8, LaunchError> {
    let outcome = outcome?;
    if let Outcome::ExecFailed(error) = outcome {
        return Err(LaunchError::Exec {
            program: options.command[0].clone(),
            error,
        });
    }
    // Statuses are 0..=255 and 128 + signal ≤ 192, so the conversion cannot fail in practice.
    Ok(u8::try_from(outcome.code()).unwrap_or(EXIT_REFUSED))
}

// === daemon mode ===

/// How long the launcher waits for the daemon to answer one control message.
const DAEMON_REPLY_TIMEOUT: Duration = Duration::from_secs(10);

fn run_connected(path: &Path, options: RunOptions) -> Result<u8, LaunchError> {
    let daemon = |diagnosis| LaunchError::Daemon {
        path: path.to_path_buf(),
        diagnosis,
    };
    let control = Channel::connect(path).map_err(|e| daemon(diagnose::connect(path, &e)))?;
    control
        .set_recv_timeout(Some(DAEMON_REPLY_TIMEOUT))
        .map_err(system("cannot configure the control socket"))?;
    control::greeting(&control).map_err(&daemon)?;
    // The plugin must not reach the control socket: it could attach listeners of its own under
    // another plugin's name. Cover it in the sandbox (the daemon also refuses peers that are not
    // in its own network namespace).
    let spec = prepare(&options, Some(path))?;
    let mut sandbox = Sandbox::create(&spec)?;
    let sockets = sandbox.take_listeners();
    let argv0 = argv0(&options.command);

    let hello = control::Request::Attach {
        plugin: options.plugin.clone(),
        argv0,
    };
    control::call(&control, &hello, &sockets).map_err(&daemon)?;
    drop(sockets); // the daemon holds them now
    let started = control::Request::Started { pid: sandbox.pid() };
    control::call(&control, &started, &[]).map_err(&daemon)?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(system("cannot start the async runtime"))?;
    let outcome = runtime.block_on(sandbox.exec_and_wait(CancellationToken::new()));
    let status = match &outcome {
        Ok(o) => o.code(),
        Err(e) => i32::from(e.exit_code()),
    };
    if let Err(d) = control::call(&control, &control::Request::Exited { status }, &[]) {
        eprintln!(
            "egress-gate: warning: the daemon did not record plugin {:?}'s exit: {d}",
            options.plugin
        );
    }
    finish(&options, outcome)
}

// === preparing the sandbox ===

/// Resolves the command, builds the plugin's environment and the list of paths to cover.
fn prepare(options: &RunOptions, control: Option<&Path>) -> Result<Spec, LaunchError> {
    let Some(program) = options.command.first() else {
        return Err(LaunchError::NotFound {
            program: OsString::new(),
        });
    };
    let path = resolve_program(program).ok_or_else(|| LaunchError::NotFound {
        program: program.clone(),
    })?;
    let uid = rustix::process::geteuid().as_raw();
    let mut hide = Vec::new();
    for candidate in HIDDEN_BY_DEFAULT {
        let candidate = PathBuf::from(candidate.replace("{uid}", &uid.to_string()));
        if let Ok(real) = candidate.canonicalize() {
            hide.push(real);
        }
    }
    if let Some(control) = control
        && let Ok(real) = control.canonicalize()
    {
        hide.push(real);
    }
    for extra in &options.hide {
        let real = extra.canonicalize().map_err(|e| {
            LaunchError::Sandbox(Diagnosis {
                summary: format!("cannot hide {}: {e}", extra.display()),
                cause: "--hide names a path that does not exist or cannot be reached".into(),
                remedy: "pass existing files or directories to --hide".into(),
            })
        })?;
        hide.push(real);
    }
    hide.sort();
    hide.dedup();
    Ok(Spec {
        program: cstring(path.as_os_str()),
        argv: options.command.iter().map(|a| cstring(a)).collect(),
        env: inherited_env(),
        proxy_port: options.proxy_port,
        hide,
    })
}

fn cstring(s: &OsStr) -> CString {
    // Arguments and environment entries from the OS cannot contain NUL; replace defensively.
    CString::new(s.as_bytes()).unwrap_or_else(|_| {
        CString::new(
            s.as_bytes()
                .iter()
                .map(|&b| if b == 0 { b'?' } else { b })
                .collect::<Vec<_>>(),
        )
        .unwrap_or_default()
    })
}

/// `PATH` lookup the way a shell does it; a name with a slash is taken as given.
fn resolve_program(program: &OsStr) -> Option<PathBuf> {
    if program.as_bytes().contains(&b'/') {
        return Some(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Variables the launcher owns in the plugin's environment.
const PROXY_VARS: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
];
const NO_PROXY_VARS: &[&str] = &["NO_PROXY", "no_proxy"];

/// The caller's environment without any proxy variable; the sandbox adds its own once it knows
/// the port ([`proxy_env`]).
fn inherited_env() -> Vec<CString> {
    std::env::vars_os()
        .filter(|(k, _)| {
            let k = k.to_string_lossy();
            !PROXY_VARS.contains(&k.as_ref())
                && !NO_PROXY_VARS.contains(&k.as_ref())
                && !k.eq_ignore_ascii_case("ftp_proxy")
        })
        .map(|(k, v)| {
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            cstring(&kv)
        })
        .collect()
}

/// The proxy variables of the plugin's environment: all point at the sandbox's proxy, and
/// `NO_PROXY` is empty so no destination bypasses it (a bypass would fail anyway — there is no
/// route — but it would fail confusingly).
fn proxy_env(port: u16) -> impl Iterator<Item = CString> {
    let url = format!("http://127.0.0.1:{port}");
    PROXY_VARS
        .iter()
        .map(move |name| format!("{name}={url}"))
        .chain(NO_PROXY_VARS.iter().map(|name| format!("{name}=")))
        .filter_map(|kv| CString::new(kv).ok())
}

fn argv0(command: &[OsString]) -> String {
    command
        .first()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default()
}
