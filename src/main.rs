//! The `egress-gate` command line: `serve` runs the proxy, `run` starts a plugin under it,
//! `check` validates a policy file.
//! Argument handling and exit codes only; everything else lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use egress_gate::config::{self, Config, LoadError};
use egress_gate::{app, launch, policy::Policy};

/// mimalloc instead of the system allocator: per-request allocation and freeing across the
/// runtime's threads cost about a third less CPU with it (see the README's Performance section).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "egress-gate",
    version,
    about = "An egress-enforcing HTTP(S) forward proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// The network-egress policy file.
        #[arg(long, short)]
        config: PathBuf,
        /// Listen here instead of `[proxy] listen` (repeatable).
        #[arg(long = "listen", value_name = "ADDR")]
        listen: Vec<SocketAddr>,
        /// Also accept plugins from `egress-gate run --connect PATH` on this Unix socket (mode 0600).
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
        /// A uid allowed to launch plugins over the control socket (repeatable; replaces
        /// `[proxy] control_uids`; default: the daemon's own uid).
        #[arg(long = "control-uid", value_name = "UID", requires = "control")]
        control_uids: Vec<u32>,
    },
    /// Run a plugin whose only network path is the proxy (Linux user + network namespaces).
    Run {
        /// Run an embedded proxy under this policy for the plugin.
        #[arg(
            long,
            short,
            value_name = "FILE",
            required_unless_present = "connect",
            conflicts_with = "connect"
        )]
        config: Option<PathBuf>,
        /// Hand the plugin to the daemon serving this control socket (`serve --control PATH`).
        #[arg(long, value_name = "PATH")]
        connect: Option<PathBuf>,
        /// The plugin's name: its `[plugins.NAME]` rules and its identity in the audit trail.
        #[arg(long, short, value_name = "NAME")]
        plugin: String,
        /// The proxy's port inside the sandbox (0: any).
        #[arg(long, value_name = "PORT", default_value_t = egress_gate::launch::DEFAULT_PROXY_PORT)]
        proxy_port: u16,
        /// Cover this path inside the sandbox (e.g. a host service's socket; repeatable).
        #[arg(long = "hide", value_name = "PATH")]
        hide: Vec<PathBuf>,
        /// The plugin's command and arguments.
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CMD"
        )]
        command: Vec<std::ffi::OsString>,
    },
    /// Audit trail tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Validate a policy file: exit 0 with a summary, or 1 with every error as FILE:LINE:COL: key: message.
    Check {
        /// The network-egress policy file.
        #[arg(required_unless_present = "config", conflicts_with = "config")]
        file: Option<PathBuf>,
        /// The same, as a flag (matches `serve --config`).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify a trail's hash chain. Exit 0: intact; 1: broken (the first bad line is named);
    /// 2: intact up to a truncated final line (a crash mid-write).
    Verify {
        /// Trail files in order, oldest first (e.g. audit.jsonl.2 audit.jsonl.1 audit.jsonl).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The HMAC key file the trail was written with (`[audit] key_file`).
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { file, config } => match file.or(config) {
            Some(file) => check(&file),
            None => ExitCode::FAILURE,
        },
        Command::Serve {
            config,
            listen,
            control,
            control_uids,
        } => serve(&config, &listen, control.as_deref(), control_uids),
        Command::Run {
            config,
            connect,
            plugin,
            proxy_port,
            hide,
            command,
        } => run(config, connect, plugin, proxy_port, hide, command),
        Command::Audit {
            command: AuditCommand::Verify { files, key_file },
        } => audit_verify(&files, key_file.as_deref()),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EGRESS_GATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn load_or_report(file: &std::path::Path) -> Option<Config> {
    match config::load(file) {
        Ok(c) => Some(c),
        Err(LoadError::Invalid(e)) => {
            for d in &e.diagnostics {
                eprintln!("{d}");
            }
            eprintln!(
                "{}: {} error(s); policy refused",
                file.display(),
                e.diagnostics.len()
            );
            None
        }
        Err(e) => {
            eprintln!("{e}");
            None
        }
    }
}

fn check(file: &std::path::Path) -> ExitCode {
    let Some(config) = load_or_report(file) else {
        return ExitCode::FAILURE;
    };
    let p = &config.policy;
    let plugin_rules: usize = config
        .plugins
        .values()
        .map(|x| x.allow.len() + x.deny.len())
        .sum();
    println!(
        "{}: ok (sha256 {})\n  mode {:?}, strict {}, private_ip_mode {:?}\n  {} allow and {} deny rule(s) global; {} plugin(s) with {} rule(s)\n  listen {}",
        file.display(),
        config.sha256,
        p.mode,
        p.strict,
        p.private_ip_mode,
        p.allow.len(),
        p.deny.len(),
        config.plugins.len(),
        plugin_rules,
        config
            .proxy
            .listen
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    );
    // Compiling proves the rules load into matchers as the server would.
    let _ = Policy::compile(&config);
    ExitCode::SUCCESS
}

fn serve(
    file: &std::path::Path,
    listen: &[SocketAddr],
    control: Option<&std::path::Path>,
    control_uids: Vec<u32>,
) -> ExitCode {
    init_logging();
    let Some(config) = load_or_report(file) else {
        return ExitCode::FAILURE;
    };
    // `--control-uid` replaces `[proxy] control_uids`; both empty means the daemon's own uid.
    let control_uids = if control_uids.is_empty() {
        config.proxy.control_uids.clone()
    } else {
        control_uids
    };
    // Bound before the runtime starts: binding sets the umask for a moment.
    let control = match control.map(|path| launch::ControlSocket::bind(path, control_uids)) {
        None => None,
        Some(Ok(socket)) => Some(socket),
        Some(Err(e)) => {
            eprintln!("egress-gate: {e}");
            return ExitCode::FAILURE;
        }
    };
    app::raise_fd_limit(config.limits.max_connections);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let listeners = app::bind(&config, listen).await?;
        let running = app::start(config, listeners).await?;
        forward_control_signals(running.control_sender());
        let control = match control {
            Some(socket) => Some(socket.serve(&running).map_err(app::StartError::Serve)?),
            None => None,
        };
        running
            .serve(async move {
                shutdown_signal().await;
                drop(control); // stop taking plugins and remove the socket file
            })
            .await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("egress-gate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `run`: the sandbox is forked here, before any thread exists, so nothing may start one first.
fn run(
    config: Option<PathBuf>,
    connect: Option<PathBuf>,
    plugin: String,
    proxy_port: u16,
    hide: Vec<PathBuf>,
    command: Vec<std::ffi::OsString>,
) -> ExitCode {
    // Quiet by default: the plugin owns the terminal; problems still reach stderr.
    let filter = tracing_subscriber::EnvFilter::try_from_env("EGRESS_GATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let mode = match (config, connect) {
        (_, Some(path)) => launch::Mode::Daemon(path),
        (Some(file), None) => match load_or_report(&file) {
            Some(config) => launch::Mode::Embedded(Box::new(config)),
            None => return ExitCode::from(launch::EXIT_REFUSED),
        },
        (None, None) => return ExitCode::from(launch::EXIT_REFUSED),
    };
    let options = launch::RunOptions {
        plugin,
        proxy_port,
        hide,
        command,
    };
    ExitCode::from(launch::run(mode, options))
}

/// SIGHUP reloads the policy; SIGUSR1 reopens the audit trail path (external log rotation).
fn forward_control_signals(control: tokio::sync::mpsc::Sender<app::Control>) {
    use tokio::signal::unix::{SignalKind, signal};
    for (kind, message) in [
        (SignalKind::hangup(), app::Control::Reload),
        (SignalKind::user_defined1(), app::Control::ReopenTrail),
    ] {
        let control = control.clone();
        match signal(kind) {
            Ok(mut stream) => {
                tokio::spawn(async move {
                    while stream.recv().await.is_some() {
                        if control.send(message).await.is_err() {
                            return;
                        }
                    }
                });
            }
            Err(e) => tracing::error!(error = %e, ?message, "cannot watch signal"),
        }
    }
}

fn audit_verify(files: &[PathBuf], key_file: Option<&std::path::Path>) -> ExitCode {
    let key = match key_file {
        Some(path) => match egress_gate::audit::read_key_file(path) {
            Ok(key) => key,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
        None => egress_gate::audit::ChainKey::none(),
    };
    match egress_gate::audit::verify::verify_files(files, &key) {
        Ok(s) => {
            let last = s.last_seq.map_or("-".to_string(), |n| n.to_string());
            println!(
                "ok: {} records, last seq {last}, head {}",
                s.records,
                hex::encode(s.head)
            );
            if let Some(prev) = s.starts_after {
                println!(
                    "note: the chain starts after {} (earlier files were not given)",
                    hex::encode(prev)
                );
            }
            match s.truncated_tail {
                None => ExitCode::SUCCESS,
                Some(t) => {
                    println!(
                        "truncated tail: {}:{}: {} bytes of an unfinished record (the writer was cut off, e.g. a crash; not tampering)",
                        t.file.display(),
                        t.line,
                        t.bytes
                    );
                    ExitCode::from(2)
                }
            }
        }
        Err(problem) => {
            println!("FAILED: {problem}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
