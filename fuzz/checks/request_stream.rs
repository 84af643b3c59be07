//! `request_stream`: arbitrary bytes as one whole client connection into the real proxy service.
//!
//! The bytes are written into `server::serve_stream` (the function every accepted TCP connection
//! runs) over an in-memory pipe, with the real policy, the real resolve-and-vet path over a fixed
//! name table, and a `RecordingDialer` in place of the network. The clock is paused, so timeouts
//! cost nothing and the run is deterministic. Each input runs twice: under the fuzz policy in
//! enforce mode and in report mode (which must never switch off the address checks).
//!
//! Invariants:
//! - nothing panics, in the connection or in any task it spawns (libFuzzer aborts on any panic;
//!   the replay test counts them);
//! - the proxy closes the connection by itself: never a connection left open with no timeout
//!   armed (a hang, detected by a watchdog thread; see `HangWatch`), and within its limits in
//!   virtual time; whatever
//!   it writes first is an HTTP/1.x status line;
//! - **the dialer is never asked for the proxy's own listener, nor for a non-public address that no
//!   port-scoped exception in the policy covers** (checked against `EXCEPTIONS` and `addr::classify`,
//!   not against the policy code);
//! - the trail the real writer produced verifies (`audit::verify`), with no torn record;
//! - every dial is accounted for: some `net.req` names it as `connected`; a request that was
//!   dialed resolved only to acceptable addresses; a 400 never dialed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use egress_gate::addr::{self, Class};
use egress_gate::audit::chain::ChainKey;
use egress_gate::audit::verify::verify_bytes;
use egress_gate::audit::{Audit, WriterHandle};
use egress_gate::config::{self, Limits};
use egress_gate::egress::{Egress, RecordingDialer};
use egress_gate::policy::Policy;
use egress_gate::proxy::{ConnInfo, Proxy};
use egress_gate::server::serve_stream;
use ipnet::IpNet;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// The fuzz policy: host rules, a `*.` wildcard, a universal rule on port 80 (so every literal and
/// every name reaches the address checks), one port-scoped `cidr` exception, an exception that
/// covers the proxy's own listener (which must still never be dialed), deny rules, and a plugin
/// reachable with `Proxy-Authorization: Basic d2lkZTpmdXp6LXRva2Vu` (`wide:fuzz-token`).
pub const POLICY: &str = r#"version = 1
[limits]
connect_timeout = "1s"
header_read_timeout = "2s"
idle_timeout = "3s"
max_header_bytes = 8192

[policy]
mode = "MODE"
strict = false

[[policy.allow]]
host = "api.github.com"
ports = [443]

[[policy.allow]]
host = "*.example.com"
ports = [80, 443, 3128, 8080, 8443]

[[policy.allow]]
host = "*"
ports = [80]

[[policy.allow]]
cidr = "10.20.0.0/24"
ports = [8443]
comment = "the one internal service: this block, this port"

[[policy.allow]]
cidr = "127.0.0.1/32"
ports = [3128]
comment = "covers the proxy's own listener, which must still never be dialed"

[[policy.allow]]
cidr = "::ffff:127.0.0.1/128"
ports = [3128]
comment = "the same listener spelled as an IPv4-mapped address"

[[policy.deny]]
host = "blocked.example.com"

[[policy.deny]]
cidr = "93.184.216.0/24"
ports = [8080]

[plugins.wide]
token_sha256 = "33cc09ba35314d19e32ed9a5a30fca56eebbfab5faec7247fd0403cd26e155b5"

[[plugins.wide.allow]]
host = "*"
ports = [22, 443, 3128, 8443]
"#;

/// Non-public destinations the policy lets through, as (block, port). Kept apart from the policy
/// code on purpose: the check must not trust what it checks.
pub const EXCEPTIONS: &[(&str, u16)] = &[
    ("10.20.0.0/24", 8443),
    ("127.0.0.1/32", 3128),
    ("::ffff:127.0.0.1/128", 3128),
];

/// The proxy's own listener, as `Egress` is told.
pub const OWN_LISTENER: &str = "127.0.0.1:3128";

/// The fixed name table: public, private, mixed, metadata and IPv4-embedding answers.
pub const NAMES: &[(&str, &[&str])] = &[
    ("api.github.com", &["140.82.121.6"]),
    ("example.com", &["93.184.216.34"]),
    (
        "www.example.com",
        &["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"],
    ),
    ("public.example.com", &["1.1.1.1"]),
    ("private.example.com", &["10.0.0.5"]),
    ("loopback.example.com", &["127.0.0.1"]),
    ("localhost", &["127.0.0.1", "::1"]),
    ("mixed.example.com", &["93.184.216.34", "192.168.1.10"]),
    ("mixed6.example.com", &["2606:4700::1111", "fd12:3456::1"]),
    ("metadata.example.com", &["169.254.169.254"]),
    ("azure.example.com", &["168.63.129.16"]),
    ("mapped.example.com", &["::ffff:10.0.0.1"]),
    ("nat64.example.com", &["64:ff9b::a9fe:a9fe"]),
    ("sixtofour.example.com", &["2002:a00:1::1"]),
    ("internal.example.com", &["10.20.0.7"]),
    ("internal-mixed.example.com", &["10.20.0.7", "10.21.0.1"]),
    ("proxy.example.com", &["127.0.0.1"]),
    ("blocked.example.com", &["1.0.0.1"]),
    ("xn--bcher-kva.example.com", &["8.8.4.4"]),
];

const CLIENT: &str = "127.0.0.1:40000";

struct Setup {
    limits: Limits,
    policies: Vec<Arc<Policy>>,
    exceptions: Vec<(IpNet, u16)>,
    own: SocketAddr,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let mut limits = None;
        let policies = ["enforce", "report"]
            .iter()
            .map(|mode| {
                let text = POLICY.replace("MODE", mode);
                let config = config::parse(Path::new("request_stream.toml"), &text)
                    .unwrap_or_else(|e| panic!("the fuzz policy is invalid:\n{e}"));
                limits = Some(config.limits.clone());
                Arc::new(Policy::compile(&config))
            })
            .collect();
        Setup {
            limits: limits.expect("two policies"),
            policies,
            exceptions: EXCEPTIONS
                .iter()
                .map(|(net, port)| (net.parse().expect("exception block"), *port))
                .collect(),
            own: OWN_LISTENER.parse().expect("own listener"),
        }
    })
}

fn names() -> HashMap<String, Vec<IpAddr>> {
    NAMES
        .iter()
        .map(|(name, ips)| {
            let ips = ips.iter().map(|ip| ip.parse().expect("table address"));
            (name.to_string(), ips.collect())
        })
        .collect()
}

pub fn check(data: &[u8]) {
    observe(data);
}

/// What one conversation did, for tests that pin the harness to the proxy's real behaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The first line the proxy wrote, if any.
    pub status_line: Option<String>,
    /// Every address the dialer was asked for.
    pub dialed: Vec<SocketAddr>,
}

/// Runs the checks on `data` under the enforce-mode policy, then the report-mode one.
pub fn observe(data: &[u8]) -> [Observed; 2] {
    let setup = setup();
    let mut seen = Vec::with_capacity(2);
    for policy in &setup.policies {
        let watch = HangWatch::start();
        let (parked, unparked) = (watch.parked.clone(), watch.parked.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            // The audit trail is written inline (no writer thread), so nothing outside this
            // runtime can wake a task: parking with a timer pending may jump the paused clock.
            .on_thread_park(move || *lock(&parked) = Some(std::time::Instant::now()))
            .on_thread_unpark(move || *lock(&unparked) = None)
            .build()
            .expect("a runtime");
        let (observed, writer) =
            runtime.block_on(conversation(data, setup, policy.clone(), &watch.hung));
        drop(runtime);
        writer.join();
        drop(watch);
        seen.push(observed);
    }
    seen.try_into().expect("one per policy")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// With `EGRESS_GATE_FUZZ_KNOWN=hang`, a hung connection is hung up by the client and the other
/// invariants are still checked, so a fuzzing run gets past the known hang; otherwise a hang fails.
fn tolerate_hangs() -> bool {
    super::known("hang")
}

/// Detects a conversation that can never end. On the paused clock every timeout is free, so a
/// runtime that parks with nothing left to wake it (no timer, no I/O, no audit writer reply) is
/// stuck for good: the proxy left the connection open with no timeout armed. A thread watches how
/// long the runtime has been parked, in real time, and notifies `hung` past a threshold (short
/// when tolerating hangs, where a false alarm only makes the client hang up early).
struct HangWatch {
    parked: Arc<Mutex<Option<std::time::Instant>>>,
    hung: Arc<tokio::sync::Notify>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HangWatch {
    fn start() -> HangWatch {
        let threshold = if tolerate_hangs() {
            Duration::from_millis(50)
        } else {
            Duration::from_secs(5)
        };
        let parked: Arc<Mutex<Option<std::time::Instant>>> = Arc::default();
        let hung = Arc::new(tokio::sync::Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let (p, h, s) = (parked.clone(), hung.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                std::thread::park_timeout(threshold / 5);
                let since = *lock(&p);
                if since.is_some_and(|t| t.elapsed() > threshold) {
                    h.notify_one();
                    // One alarm per park.
                    while lock(&p).is_some_and(|t| Some(t) == since) && !s.load(Ordering::SeqCst) {
                        std::thread::park_timeout(threshold / 5);
                    }
                }
            }
        });
        HangWatch {
            parked,
            hung,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HangWatch {
    /// Also on a failed check, so no watchdog thread outlives its input.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// Whether the dialer may be asked for `addr`. The own listener is refused in every spelling that
/// reaches it: an IPv4-mapped IPv6 address connects to the IPv4 socket.
fn acceptable(setup: &Setup, addr: SocketAddr) -> bool {
    let same_socket = addr.port() == setup.own.port() && addr.ip().to_canonical() == setup.own.ip();
    !same_socket
        && (addr::classify(addr.ip()) == Class::Public
            || setup
                .exceptions
                .iter()
                .any(|(net, port)| net.contains(&addr.ip()) && *port == addr.port()))
}

/// The longest the proxy may take to finish with a connection, in virtual time: every request the
/// input could hold may wait out each limit once.
fn bound(limits: &Limits, input_len: usize) -> Duration {
    let per_request = limits.header_read_timeout + limits.connect_timeout + limits.idle_timeout;
    // The shortest request head, `GET / HTTP/1.1\r\n\r\n`, is 18 bytes.
    let requests = u32::try_from(input_len / 16 + 2).unwrap_or(u32::MAX);
    per_request.saturating_mul(requests)
}

async fn conversation(
    data: &[u8],
    setup: &Setup,
    policy: Arc<Policy>,
    hung: &tokio::sync::Notify,
) -> (Observed, WriterHandle) {
    let limits = setup.limits.clone();
    let dialer = Arc::new(RecordingDialer::default());
    let egress = Egress::offline(
        names(),
        dialer.clone(),
        limits.connect_timeout,
        vec![setup.own],
    );
    let (audit, writer, trail) = Audit::in_memory_inline().expect("an in-memory trail");
    let proxy = Arc::new(Proxy::new(policy, egress, audit.clone(), limits.clone()));
    let info = Arc::new(ConnInfo {
        client: CLIENT.parse().expect("client address"),
        plugin: None,
        slot: None,
    });
    let (client, server) = tokio::io::duplex(64 * 1024);
    let started = tokio::time::Instant::now();
    let served = tokio::spawn(serve_stream(
        server,
        info,
        proxy.clone(),
        CancellationToken::new(),
    ));

    // Write everything and keep the write side open: the proxy must close on its own (answer and
    // close, header-read timeout, idle timeout), not because the client hung up.
    let (mut rd, mut wr) = tokio::io::split(client);
    let write = async move {
        let _ = wr.write_all(data).await;
        wr
    };
    let read = async move {
        let mut out = Vec::new();
        let _ = rd.read_to_end(&mut out).await;
        (rd, out)
    };
    let exchange = async { tokio::join!(write, read) };
    let hang_msg = "HANG: the proxy keeps the connection open with no timeout armed";
    let finished = tokio::select! {
        (wr, (rd, out)) = exchange => {
            let took = started.elapsed();
            drop(rd.unsplit(wr));
            Some((took, out))
        }
        _ = hung.notified() => {
            assert!(tolerate_hangs(), "{hang_msg}");
            // Tolerated: the client hangs up (dropping the exchange drops its stream).
            None
        }
    };
    tokio::select! {
        joined = served => {
            if let Err(e) = joined {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        _ = hung.notified() => panic!("{hang_msg}, even after the client hung up"),
    }
    proxy.tunnels().close();
    tokio::select! {
        _ = proxy.tunnels().wait() => {}
        _ = hung.notified() => panic!("HANG: a tunnel outlives its client with no timeout armed"),
    }
    let status_line = finished.as_ref().and_then(|(_, out)| {
        let end = out.windows(2).position(|w| w == b"\r\n")?;
        Some(String::from_utf8_lossy(&out[..end]).into_owned())
    });
    if let Some((took, out)) = finished {
        let limit = bound(&limits, data.len());
        assert!(
            took <= limit,
            "the connection stayed open {took:?} (virtual), more than {limit:?}"
        );
        if !out.is_empty() {
            assert!(
                out.starts_with(b"HTTP/1.1 ") || out.starts_with(b"HTTP/1.0 "),
                "the proxy's first bytes are not a status line: {:?}",
                String::from_utf8_lossy(&out[..out.len().min(64)])
            );
        }
    }

    let dialed = dialer.dialed();
    for addr in &dialed {
        assert!(
            acceptable(setup, *addr),
            "DIALED {addr}: the proxy's own listener or a non-public address no exception covers"
        );
    }

    let _ = audit.flush().await;
    let trail = trail.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match verify_bytes(&trail, &ChainKey::none()) {
        Ok(summary) => assert!(
            summary.truncated_tail.is_none(),
            "the trail ends mid-record"
        ),
        Err(problem) => panic!("the writer's own trail does not verify: {problem}"),
    }
    let records = records(&trail);
    let connected: Vec<&str> = records
        .iter()
        .filter(|r| r["event"] == "net.req")
        .filter_map(|r| r["connected"].as_str())
        .collect();
    for addr in &dialed {
        let shown = addr.to_string();
        assert!(
            connected.contains(&shown.as_str()),
            "{addr} was dialed but no net.req names it as connected"
        );
    }
    for r in records.iter().filter(|r| r["event"] == "net.req") {
        let Some(to) = r["connected"].as_str() else {
            continue;
        };
        // A 400 is a refusal decided before any dial — except `bad_request_body`, which is found
        // while relaying the body of a request that was allowed and sent.
        if r["reason"] != "bad_request_body" {
            assert_ne!(r["status"], 400, "a 400 dialed: {r}");
        }
        let to: SocketAddr = to.parse().expect("connected is ip:port");
        let resolved: Vec<IpAddr> = r["resolved"]
            .as_array()
            .expect("resolved is a list")
            .iter()
            .map(|ip| {
                ip.as_str()
                    .and_then(|s| s.parse().ok())
                    .expect("an address")
            })
            .collect();
        assert!(
            resolved.contains(&to.ip()),
            "connected outside resolved: {r}"
        );
        for ip in resolved {
            assert!(
                acceptable(setup, SocketAddr::new(ip, to.port())),
                "connected although the answer held {ip}: {r}"
            );
        }
    }
    let observed = Observed {
        status_line,
        dialed,
    };
    (observed, writer)
}

/// The trail's records; every line must be a JSON object naming its event.
fn records(trail: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(trail).expect("the trail is UTF-8");
    text.lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("trail line is not JSON ({e}): {line}"));
            assert!(v["event"].is_string(), "record without an event: {line}");
            v
        })
        .collect()
}
