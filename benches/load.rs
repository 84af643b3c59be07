//! Load benchmark: egress-gate against going direct, a bare relay and Squid, in one run.
//!
//! `cargo bench --bench load` (add `-- --quick` for a short smoke run). It needs root only to
//! raise the descriptor limit for 10,000 idle tunnels, and `taskset` (util-linux). `wrk` and
//! `squid` are installed with apt-get when missing; if that fails their rows say so.
//!
//! Layout: this process pins itself to CPU 1 and runs the origin servers and the load generator
//! there (one thread); every proxy under test is a child process pinned to CPU 0 with
//! `taskset -c 0`, so its numbers are about the proxy alone. Proxy CPU is user+sys from
//! `/proc/PID/stat` (the process and its descendants), sampled around each run.
//!
//! What runs, each against a loopback origin:
//! - bulk: one CONNECT tunnel carrying N bytes origin → client (throughput, proxy CPU-s per GiB);
//! - exchange: 64 workers doing connect + CONNECT + one small HTTP request inside + close
//!   (rate, p50/p99 latency, proxy CPU-µs per exchange);
//! - http: `wrk -c64` keep-alive plain-HTTP forwarding (requests/s, proxy CPU-µs per request);
//! - idle: RSS growth per open idle tunnel with 10,000 held (fresh proxy process);
//! - the fsync cost: egress-gate runs twice, `[audit] fsync = "always"` and `"never"`, with its
//!   trail in `CARGO_TARGET_TMPDIR` (checked not to be tmpfs).
//!
//! The bare relay (`__relay` mode of this binary, `bare_relay` below) is the floor for a
//! user-space proxy: read the head, dial, 200, `copy_bidirectional` with 64 KiB buffers.

use std::fmt::Write as _;
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PROXY_CPU: usize = 0;
const LOAD_CPU: usize = 1;
const CONCURRENCY: usize = 64;
/// The small HTTP response the origin gives to every request.
const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nhello, world\n";
/// /proc times are in USER_HZ, which Linux fixes at 100 for userspace.
const TICK_S: f64 = 0.01;

// === settings ===

struct Settings {
    quick: bool,
    /// `LOAD_KINDS` (comma list of direct, relay, gate, never, squid): which contenders run.
    kinds: Option<String>,
    /// `LOAD_TESTS` (comma list of bulk, exchange, http, idle): which tests run.
    tests: Option<String>,
    bulk_bytes: u64,
    repeats: usize,
    run: Duration,
    idle_tunnels: usize,
}

impl Settings {
    fn from_args() -> Settings {
        let quick = std::env::args().any(|a| a == "--quick");
        let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        Settings {
            quick,
            kinds: std::env::var("LOAD_KINDS").ok(),
            tests: std::env::var("LOAD_TESTS").ok(),
            bulk_bytes: env("LOAD_BULK_MIB").unwrap_or(if quick { 128 } else { 2048 }) << 20,
            repeats: env("LOAD_REPEATS").unwrap_or(if quick { 1 } else { 5 }) as usize,
            run: Duration::from_secs(
                env("LOAD_RUN_S")
                    .unwrap_or(if quick { 1 } else { 2 })
                    .max(1),
            ),
            idle_tunnels: env("LOAD_IDLE_TUNNELS").unwrap_or(if quick { 1000 } else { 10_000 })
                as usize,
        }
    }
}

impl Settings {
    fn wants_kind(&self, k: Kind) -> bool {
        self.kinds
            .as_deref()
            .is_none_or(|list| list.split(',').any(|x| x.trim() == k.key()))
    }
    fn wants(&self, test: &str) -> bool {
        self.tests
            .as_deref()
            .is_none_or(|list| list.split(',').any(|x| x.trim() == test))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "__echo") {
        pin_to(LOAD_CPU);
        raise_nofile(200_000);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(echo_origin());
        return;
    }
    if args.iter().any(|a| a == "__http_origin") {
        // For profiling by hand: the HTTP origin alone, its address on stdout.
        pin_to(LOAD_CPU);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let http = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            println!("{}", http.local_addr().expect("address"));
            accept_loop(http, |s| async move {
                let _ = serve_http(s).await;
            })
            .await;
        });
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "__relay") {
        let listen: SocketAddr = args[i + 1].parse().expect("relay listen address");
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(bare_relay(listen));
        return;
    }
    let mut settings = Settings::from_args();
    pin_to(LOAD_CPU);
    let limit = raise_nofile(200_000);
    // Every idle tunnel costs the proxy two descriptors; stay under its (inherited) limit.
    let fit = (limit.saturating_sub(256) / 2) as usize;
    if settings.idle_tunnels > fit {
        eprintln!(
            "RLIMIT_NOFILE is {limit} (raising it needs CAP_SYS_RESOURCE): holding {fit} idle tunnels, not {}",
            settings.idle_tunnels
        );
        settings.idle_tunnels = fit;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(settings));
}

// === the bare relay baseline ===

/// A minimal CONNECT relay: no parsing beyond the request line, no policy, no audit.
async fn bare_relay(listen: SocketAddr) {
    let listener = TcpListener::bind(listen).await.expect("relay bind");
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = client.set_nodelay(true);
            let mut head = Vec::with_capacity(512);
            let mut buf = [0u8; 1024];
            let end = loop {
                let n = client.read(&mut buf).await.ok().filter(|n| *n > 0)?;
                head.extend_from_slice(&buf[..n]);
                if let Some(i) = find(&head, b"\r\n\r\n") {
                    break i + 4;
                }
                if head.len() > 8192 {
                    return None;
                }
            };
            let line = std::str::from_utf8(&head[..end]).ok()?.lines().next()?;
            let mut parts = line.split(' ');
            let (Some("CONNECT"), Some(authority)) = (parts.next(), parts.next()) else {
                return None;
            };
            let mut upstream = TcpStream::connect(authority).await.ok()?;
            let _ = upstream.set_nodelay(true);
            client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .ok()?;
            upstream.write_all(&head[end..]).await.ok()?;
            let sizes = 64 * 1024;
            tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, sizes, sizes)
                .await
                .ok()
        });
    }
}

// === origin servers (on the load CPU) ===

struct Origin {
    /// Reads a u64 (little endian) N, writes N bytes, closes.
    bulk: SocketAddr,
    /// HTTP/1.1 keep-alive: answers every request head with [`RESPONSE`]; honours `close`.
    http: SocketAddr,
    /// Echoes what it reads, until EOF (idle tunnels). A child process of its own, so the
    /// idle tunnels' two ends do not share one descriptor limit.
    echo: SocketAddr,
    echo_child: Child,
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.echo_child.kill();
        let _ = self.echo_child.wait();
    }
}

async fn start_origin() -> Origin {
    let bulk = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut echo_child = Command::new(std::env::current_exe().unwrap())
        .arg("__echo")
        .stdout(Stdio::piped())
        .spawn()
        .expect("echo origin");
    let mut line = String::new();
    io::BufRead::read_line(
        &mut io::BufReader::new(echo_child.stdout.take().unwrap()),
        &mut line,
    )
    .expect("echo origin port");
    let origin = Origin {
        bulk: bulk.local_addr().unwrap(),
        http: http.local_addr().unwrap(),
        echo: line.trim().parse().expect("echo origin address"),
        echo_child,
    };
    tokio::spawn(accept_loop(bulk, |s| async move {
        let _ = serve_bulk(s).await;
    }));
    tokio::spawn(accept_loop(http, |s| async move {
        let _ = serve_http(s).await;
    }));
    origin
}

/// The `__echo` child: prints its address, then echoes every connection until EOF.
async fn echo_origin() {
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("{}", echo.local_addr().unwrap());
    accept_loop(echo, |mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await;
}

async fn accept_loop<F, Fut>(listener: TcpListener, serve: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static + Send,
{
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let _ = s.set_nodelay(true);
                tokio::spawn(serve(s));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

async fn serve_bulk(mut s: TcpStream) -> io::Result<()> {
    static CHUNK: [u8; 256 * 1024] = [0x5a; 256 * 1024];
    let mut n = [0u8; 8];
    s.read_exact(&mut n).await?;
    let mut left = u64::from_le_bytes(n);
    while left > 0 {
        let k = left.min(CHUNK.len() as u64) as usize;
        s.write_all(&CHUNK[..k]).await?;
        left -= k as u64;
    }
    s.shutdown().await
}

async fn serve_http(mut s: TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut filled = 0;
    let mut out = Vec::with_capacity(4096);
    loop {
        let n = s.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        let mut start = 0;
        let mut close = false;
        while let Some(i) = find(&buf[start..filled], b"\r\n\r\n") {
            let head = &buf[start..start + i];
            close |= head
                .windows(17)
                .any(|w| w.eq_ignore_ascii_case(b"connection: close"));
            out.extend_from_slice(RESPONSE);
            start += i + 4;
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        if !out.is_empty() {
            s.write_all(&out).await?;
            out.clear();
        }
        if close {
            return s.shutdown().await;
        }
        if filled == buf.len() {
            return Err(io::Error::other("request head too large"));
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// === clients ===

/// Opens a connection to `origin`, through `via`'s CONNECT when given.
async fn open(via: Option<SocketAddr>, origin: SocketAddr) -> io::Result<TcpStream> {
    let mut s = TcpStream::connect(via.unwrap_or(origin)).await?;
    s.set_nodelay(true)?;
    if via.is_some() {
        let req = format!("CONNECT {origin} HTTP/1.1\r\nHost: {origin}\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut head = [0u8; 1024];
        let mut filled = 0;
        loop {
            let n = s.read(&mut head[filled..]).await?;
            if n == 0 || filled + n == head.len() {
                return Err(io::Error::other("proxy closed during CONNECT"));
            }
            filled += n;
            if find(&head[..filled], b"\r\n\r\n").is_some() {
                break;
            }
        }
        if !head.starts_with(b"HTTP/1.1 200") && !head.starts_with(b"HTTP/1.0 200") {
            let text = String::from_utf8_lossy(&head[..filled]).to_string();
            return Err(io::Error::other(format!("CONNECT refused: {text}")));
        }
    }
    Ok(s)
}

/// One bulk transfer of `bytes` origin → client; returns the wall time.
async fn bulk(via: Option<SocketAddr>, origin: SocketAddr, bytes: u64) -> io::Result<Duration> {
    let mut s = open(via, origin).await?;
    let started = Instant::now();
    s.write_all(&bytes.to_le_bytes()).await?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    if got != bytes {
        return Err(io::Error::other(format!(
            "bulk: got {got} of {bytes} bytes"
        )));
    }
    Ok(started.elapsed())
}

/// connect (+ CONNECT) + one small request + close.
async fn exchange(via: Option<SocketAddr>, origin: SocketAddr) -> io::Result<()> {
    let mut s = open(via, origin).await?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n")
        .await?;
    let mut buf = [0u8; 512];
    let mut filled = 0;
    loop {
        let n = s.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
        if filled == buf.len() {
            return Err(io::Error::other("response too long"));
        }
    }
    if buf[..filled] != *RESPONSE {
        return Err(io::Error::other("unexpected response"));
    }
    Ok(())
}

struct ExchangeRun {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    count: u64,
    errors: u64,
}

async fn exchange_run(via: Option<SocketAddr>, origin: SocketAddr, run: Duration) -> ExchangeRun {
    let deadline = Instant::now() + run;
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        workers.spawn(async move {
            let mut lat = Vec::with_capacity(64 * 1024);
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                match exchange(via, origin).await {
                    Ok(()) => lat.push(t.elapsed().as_micros() as u32),
                    Err(e) => {
                        errors += 1;
                        if errors == 1 {
                            eprintln!("  exchange error: {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            (lat, errors)
        });
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    while let Some(r) = workers.join_next().await {
        let (l, e) = r.expect("worker");
        lat.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(f64::NAN, |us| *us as f64 / 1000.0)
    };
    ExchangeRun {
        rate: lat.len() as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        count: lat.len() as u64,
        errors,
    }
}

// === proxies under test ===

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Direct,
    Relay,
    GateAlways,
    GateNever,
    Squid,
}

impl Kind {
    fn key(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Relay => "relay",
            Kind::GateAlways => "gate",
            Kind::GateNever => "never",
            Kind::Squid => "squid",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Relay => "bare relay",
            Kind::GateAlways => "egress-gate",
            Kind::GateNever => "eg fsync=never",
            Kind::Squid => "squid",
        }
    }
    fn forwards_http(self) -> bool {
        !matches!(self, Kind::Relay)
    }
}

struct Proxy {
    kind: Kind,
    addr: Option<SocketAddr>,
    child: Option<Child>,
}

impl Proxy {
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
    fn cpu(&self) -> Option<CpuSample> {
        self.pid().map(CpuSample::take)
    }
    fn rss_kib(&self) -> u64 {
        self.pid().map_or(0, tree_rss_kib)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> SocketAddr {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

async fn start_proxy(kind: Kind, origin: &Origin, dir: &Path) -> Option<Proxy> {
    let addr = free_port();
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &PROXY_CPU.to_string()]);
    let tag = kind.label().replace([' ', '='], "-");
    let log = std::fs::File::create(dir.join(format!("{tag}.log"))).ok()?;
    match kind {
        Kind::Direct => {
            return Some(Proxy {
                kind,
                addr: None,
                child: None,
            });
        }
        Kind::Relay => {
            cmd.arg(std::env::current_exe().ok()?)
                .args(["__relay", &addr.to_string()]);
        }
        Kind::GateAlways | Kind::GateNever => {
            let fsync = if kind == Kind::GateAlways {
                "always"
            } else {
                "never"
            };
            let run_dir = dir.join(&tag);
            let _ = std::fs::remove_dir_all(&run_dir);
            std::fs::create_dir_all(&run_dir).ok()?;
            let config = run_dir.join("policy.toml");
            let text = format!(
                "version = 1\n\
                 [audit]\npath = \"{}\"\nfsync = \"{fsync}\"\n\
                 [limits]\nmax_connections = 100000\n\
                 [[policy.allow]]\ncidr = \"127.0.0.1/32\"\nports = [{}, {}, {}]\n",
                run_dir.join("audit.jsonl").display(),
                origin.bulk.port(),
                origin.http.port(),
                origin.echo.port()
            );
            std::fs::write(&config, text).ok()?;
            cmd.arg(env!("CARGO_BIN_EXE_egress-gate"))
                .arg("serve")
                .arg("--config")
                .arg(&config)
                .arg("--listen")
                .arg(addr.to_string())
                .env("EGRESS_GATE_LOG", "warn");
        }
        Kind::Squid => {
            let squid = which("squid")?;
            let run_dir = dir.join("squid");
            let _ = std::fs::remove_dir_all(&run_dir);
            std::fs::create_dir_all(&run_dir).ok()?;
            // Squid drops root for its `proxy` user, which must be able to write its logs.
            set_mode_777(&run_dir);
            let d = run_dir.display();
            let conf = format!(
                "http_port {addr}\n\
                 acl CONNECT method CONNECT\n\
                 http_access allow all\n\
                 cache deny all\n\
                 cache_mem 0 MB\n\
                 access_log stdio:{d}/access.log\n\
                 cache_log {d}/cache.log\n\
                 pid_filename {d}/squid.pid\n\
                 coredump_dir {d}\n\
                 max_filedescriptors 65536\n\
                 workers 1\n\
                 pinger_enable off\n\
                 shutdown_lifetime 0 seconds\n\
                 via off\n\
                 forwarded_for delete\n"
            );
            let conf_path = run_dir.join("squid.conf");
            std::fs::write(&conf_path, conf).ok()?;
            cmd.arg(squid).arg("-N").arg("-f").arg(&conf_path);
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().ok()?)
        .stderr(log);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("  cannot start {}: {e}", kind.label());
            return None;
        }
    };
    let proxy = Proxy {
        kind,
        addr: Some(addr),
        child: Some(child),
    };
    // Ready when a CONNECT through it works.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if exchange(proxy.addr, origin.http).await.is_ok() {
            return Some(proxy);
        }
        if Instant::now() > deadline {
            eprintln!(
                "  {} did not come up; see {}",
                kind.label(),
                dir.join(format!("{tag}.log")).display()
            );
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// === /proc ===

/// (pid, ppid, utime + stime ticks, rss pages) of every process.
fn all_procs() -> Vec<(u32, u32, u64, u64)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name, which may hold spaces: state ppid … utime(14) stime(15).
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // rest[0] is field 3 (state), so field k is rest[k - 3].
        out.push((pid, num(1) as u32, num(11) + num(12), num(21)));
    }
    out
}

fn descendants(root: u32, procs: &[(u32, u32, u64, u64)]) -> Vec<usize> {
    let mut members = vec![root];
    let mut idx = Vec::new();
    let mut grew = true;
    while grew {
        grew = false;
        for (i, p) in procs.iter().enumerate() {
            if !idx.contains(&i) && members.contains(&p.0) {
                idx.push(i);
            }
            if members.contains(&p.1) && !members.contains(&p.0) {
                members.push(p.0);
                grew = true;
            }
        }
    }
    idx
}

/// CPU used so far by a process tree: nanoseconds on CPU summed over its live threads
/// (`/proc/PID/task/TID/schedstat`, precise) and utime + stime (`/proc/PID/stat`, 10 ms ticks,
/// but including threads that have exited).
struct CpuSample {
    ns: u64,
    /// The part of `ns` spent by egress-gate's audit writer thread.
    writer_ns: u64,
    ticks: u64,
    tids: Vec<u32>,
}

impl CpuSample {
    fn take(pid: u32) -> CpuSample {
        let procs = all_procs();
        let members = descendants(pid, &procs);
        let mut sample = CpuSample {
            ns: 0,
            writer_ns: 0,
            ticks: members.iter().map(|&i| procs[i].2).sum(),
            tids: Vec::new(),
        };
        for &i in &members {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", procs[i].0)) else {
                continue;
            };
            for task in tasks.flatten() {
                let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                    continue;
                };
                let stat =
                    std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
                let ns = stat
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                sample.ns += ns;
                let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
                if comm.trim() == "audit-writer" {
                    sample.writer_ns += ns;
                }
                sample.tids.push(tid);
            }
        }
        sample
    }

    /// Seconds of CPU between two samples: the precise per-thread sum when no thread went away
    /// in between, else the tick count.
    fn since(&self, earlier: &CpuSample) -> f64 {
        if earlier.tids.iter().all(|t| self.tids.contains(t)) && self.ns >= earlier.ns {
            (self.ns - earlier.ns) as f64 * 1e-9
        } else {
            self.ticks.saturating_sub(earlier.ticks) as f64 * TICK_S
        }
    }

    /// Seconds of CPU the audit writer thread used between two samples.
    fn writer_since(&self, earlier: &CpuSample) -> f64 {
        self.writer_ns.saturating_sub(earlier.writer_ns) as f64 * 1e-9
    }
}

fn tree_rss_kib(pid: u32) -> u64 {
    let procs = all_procs();
    descendants(pid, &procs)
        .iter()
        .map(|&i| procs[i].3 * 4)
        .sum()
}

// === the tests ===

#[derive(Default, Clone)]
struct Row {
    bulk_mibs: Vec<f64>,
    bulk_cpu_per_gib: Vec<f64>,
    x_rate: Vec<f64>,
    x_p50: Vec<f64>,
    x_p99: Vec<f64>,
    x_cpu_us: Vec<f64>,
    x_writer_us: Vec<f64>,
    x_errors: u64,
    http_rps: Vec<f64>,
    http_p50: Vec<f64>,
    http_p99: Vec<f64>,
    http_cpu_us: Vec<f64>,
    http_writer_us: Vec<f64>,
    idle_bytes: Option<f64>,
    notes: Vec<String>,
}

/// (total, audit writer) CPU seconds between two samples.
fn cpu_between(a: Option<CpuSample>, b: Option<CpuSample>) -> Option<(f64, f64)> {
    let (a, b) = (a?, b?);
    Some((b.since(&a), b.writer_since(&a)))
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

async fn run_bulk(p: &Proxy, origin: &Origin, s: &Settings, row: &mut Row) {
    let cpu0 = p.cpu();
    match bulk(p.addr, origin.bulk, s.bulk_bytes).await {
        Ok(t) => {
            settle().await;
            let gib = s.bulk_bytes as f64 / (1u64 << 30) as f64;
            row.bulk_mibs
                .push(s.bulk_bytes as f64 / (1 << 20) as f64 / t.as_secs_f64());
            if let (Some(c0), Some(c1)) = (cpu0, p.cpu()) {
                row.bulk_cpu_per_gib.push(c1.since(&c0) / gib);
            }
        }
        Err(e) => row.notes.push(format!("bulk failed: {e}")),
    }
}

async fn run_exchange(p: &Proxy, origin: &Origin, s: &Settings, row: &mut Row) {
    let cpu0 = p.cpu();
    let r = exchange_run(p.addr, origin.http, s.run).await;
    settle().await;
    let cpu = cpu_between(cpu0, p.cpu());
    row.x_rate.push(r.rate);
    row.x_p50.push(r.p50_ms);
    row.x_p99.push(r.p99_ms);
    row.x_errors += r.errors;
    if let (Some((cpu, writer)), true) = (cpu, r.count > 0) {
        row.x_cpu_us.push(cpu / r.count as f64 * 1e6);
        if writer > 0.0 {
            row.x_writer_us.push(writer / r.count as f64 * 1e6);
        }
    }
}

async fn run_wrk(p: &Proxy, origin: &Origin, s: &Settings, dir: &Path, row: &mut Row) {
    let Some(wrk) = which("wrk") else {
        return;
    };
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &LOAD_CPU.to_string()]).arg(wrk).args([
        "-t1",
        &format!("-c{CONCURRENCY}"),
        &format!("-d{}s", s.run.as_secs()),
        "--latency",
    ]);
    match p.addr {
        None => {
            cmd.arg(format!("http://{}/", origin.http));
        }
        Some(proxy) => {
            // Absolute-form requests to the proxy, Host naming the origin.
            let script = dir.join("wrk-proxy.lua");
            let text = format!(
                "wrk.path = \"http://{0}/\"\nwrk.headers[\"Host\"] = \"{0}\"\n",
                origin.http
            );
            std::fs::write(&script, text).expect("wrk script");
            cmd.arg("-s").arg(&script).arg(format!("http://{proxy}/"));
        }
    }
    let cpu0 = p.cpu();
    // wrk runs as its own process on the load CPU; let it have the CPU while we wait.
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join");
    settle().await;
    let cpu = cpu_between(cpu0, p.cpu());
    let out = match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).to_string(),
        Err(e) => {
            row.notes.push(format!("wrk failed: {e}"));
            return;
        }
    };
    let rps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok());
    let total = out
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok());
    let non2xx = out.lines().find(|l| l.contains("Non-2xx"));
    if let Some(l) = non2xx {
        row.notes.push(format!("wrk: {}", l.trim()));
    }
    let pct = |p: &str| {
        out.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(p))
            .and_then(|v| parse_wrk_time(v.trim()))
    };
    match rps {
        Some(r) => {
            row.http_rps.push(r);
            row.http_p50.extend(pct("50%"));
            row.http_p99.extend(pct("99%"));
            if let (Some(total), Some((cpu, writer))) = (total, cpu) {
                row.http_cpu_us.push(cpu / total * 1e6);
                if writer > 0.0 {
                    row.http_writer_us.push(writer / total * 1e6);
                }
            }
        }
        None => row.notes.push(format!("wrk output not understood: {out}")),
    }
}

fn parse_wrk_time(v: &str) -> Option<f64> {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

/// RSS growth per idle tunnel, on a fresh proxy process.
async fn run_idle(kind: Kind, origin: &Origin, s: &Settings, dir: &Path) -> Result<f64, String> {
    let p = start_proxy(kind, origin, dir)
        .await
        .ok_or_else(|| "did not start".to_string())?;
    // Warm up: the runtime's and allocator's one-time structures are not a per-tunnel cost.
    let warm = open_idle(p.addr, origin.echo, 200).await?;
    drop(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = p.rss_kib();
    let held = open_idle(p.addr, origin.echo, s.idle_tunnels).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = p.rss_kib();
    drop(held);
    Ok((after.saturating_sub(before)) as f64 * 1024.0 / s.idle_tunnels as f64)
}

/// Opens `n` tunnels to the echo origin, each moving one byte each way, and keeps them open.
async fn open_idle(
    via: Option<SocketAddr>,
    echo: SocketAddr,
    n: usize,
) -> Result<Vec<TcpStream>, String> {
    let permits = Arc::new(tokio::sync::Semaphore::new(256));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let permits = permits.clone();
        set.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore");
            let mut s = open(via, echo).await?;
            s.write_all(b"x").await?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await?;
            io::Result::Ok(s)
        });
    }
    let mut out = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        out.push(
            r.expect("join")
                .map_err(|e| format!("opening idle tunnels: {e}"))?,
        );
    }
    Ok(out)
}

// === driver ===

async fn run(s: Settings) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("load-bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");
    set_mode_777(&dir);
    ensure_tools();
    let origin = start_origin().await;
    let fs = fs_type(&dir);
    println!(
        "load bench: proxy on CPU {PROXY_CPU}, origin + load on CPU {LOAD_CPU}; bulk {} MiB, runs of {:?} x{}, {} idle tunnels; trail dir {} ({fs})",
        s.bulk_bytes >> 20,
        s.run,
        s.repeats,
        s.idle_tunnels,
        dir.display()
    );
    println!("machine: {}", machine_notes());
    println!("competing processes at the start: {}", busy_processes());
    let (f50, f99) = fsync_probe(&dir);
    println!(
        "fdatasync of a small append in the trail dir: p50 {f50:.2} ms, p99 {f99:.2} ms \
         (a group-committed trail waits for one of these per batch)"
    );

    let kinds = [
        Kind::Direct,
        Kind::Relay,
        Kind::GateAlways,
        Kind::GateNever,
        Kind::Squid,
    ];
    let mut proxies = Vec::new();
    for k in kinds.into_iter().filter(|k| s.wants_kind(*k)) {
        if let Some(p) = start_proxy(k, &origin, &dir).await {
            proxies.push(p);
        }
    }
    let mut rows: Vec<(Kind, Row)> = proxies.iter().map(|p| (p.kind, Row::default())).collect();
    // Interleaved repeats, so a noisy moment on the machine hits every contender alike.
    for rep in 0..s.repeats {
        eprintln!(
            "round {}/{} (loadavg {})",
            rep + 1,
            s.repeats,
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .split_whitespace()
                .next()
                .unwrap_or("?")
        );
        for (p, (_, row)) in proxies.iter().zip(rows.iter_mut()) {
            if p.kind != Kind::GateNever && s.wants("bulk") {
                run_bulk(p, &origin, &s, row).await;
            }
            if s.wants("exchange") {
                run_exchange(p, &origin, &s, row).await;
            }
            if p.kind.forwards_http() && s.wants("http") {
                run_wrk(p, &origin, &s, &dir, row).await;
            }
            eprintln!(
                "  {:<15} bulk {:>8.0} MiB/s  exchange {:>7.0}/s  http {:>7.0}/s",
                p.kind.label(),
                row.bulk_mibs.last().copied().unwrap_or(f64::NAN),
                row.x_rate.last().copied().unwrap_or(f64::NAN),
                row.http_rps.last().copied().unwrap_or(f64::NAN),
            );
        }
    }
    drop(proxies);
    for (kind, row) in rows.iter_mut() {
        if matches!(kind, Kind::Relay | Kind::GateAlways | Kind::Squid) && s.wants("idle") {
            match run_idle(*kind, &origin, &s, &dir).await {
                Ok(b) => row.idle_bytes = Some(b),
                Err(e) => row.notes.push(format!("idle: {e}")),
            }
        }
    }
    println!("{}", table(&rows, &s));
    println!("competing processes at the end: {}", busy_processes());
    if s.quick {
        println!("(--quick: short runs, numbers are rough)");
    }
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

fn table(rows: &[(Kind, Row)], s: &Settings) -> String {
    let get = |k: Kind, f: &dyn Fn(&Row) -> Option<f64>| {
        rows.iter().find(|(kk, _)| *kk == k).and_then(|(_, r)| f(r))
    };
    let direct = |f: &dyn Fn(&Row) -> Option<f64>| get(Kind::Direct, f);
    let relay = |f: &dyn Fn(&Row) -> Option<f64>| get(Kind::Relay, f);
    type Metric<'a> = (&'a str, &'a dyn Fn(&Row) -> Option<f64>, usize, Base);
    #[derive(Clone, Copy)]
    enum Base {
        Direct,
        Relay,
        None,
    }
    let metrics: Vec<Metric> = vec![
        (
            "tunnel throughput MiB/s",
            &|r: &Row| median(&r.bulk_mibs),
            0,
            Base::Direct,
        ),
        (
            "tunnel CPU-s per GiB",
            &|r: &Row| median(&r.bulk_cpu_per_gib),
            2,
            Base::Relay,
        ),
        (
            "CONNECT exchanges/s",
            &|r: &Row| median(&r.x_rate),
            0,
            Base::Direct,
        ),
        (
            "  p50 latency ms",
            &|r: &Row| median(&r.x_p50),
            2,
            Base::Direct,
        ),
        (
            "  p99 latency ms",
            &|r: &Row| median(&r.x_p99),
            2,
            Base::Direct,
        ),
        (
            "CPU-us per exchange",
            &|r: &Row| median(&r.x_cpu_us),
            0,
            Base::Relay,
        ),
        (
            "  of which audit writer",
            &|r: &Row| median(&r.x_writer_us),
            1,
            Base::None,
        ),
        (
            "HTTP req/s (keep-alive)",
            &|r: &Row| median(&r.http_rps),
            0,
            Base::Direct,
        ),
        (
            "  p50 latency ms",
            &|r: &Row| median(&r.http_p50),
            2,
            Base::Direct,
        ),
        (
            "  p99 latency ms",
            &|r: &Row| median(&r.http_p99),
            2,
            Base::Direct,
        ),
        (
            "CPU-us per HTTP request",
            &|r: &Row| median(&r.http_cpu_us),
            1,
            Base::Relay,
        ),
        (
            "  of which audit writer",
            &|r: &Row| median(&r.http_writer_us),
            1,
            Base::None,
        ),
        (
            "RSS bytes per idle tunnel",
            &|r: &Row| r.idle_bytes,
            0,
            Base::Relay,
        ),
    ];
    let mut out = String::new();
    let _ = write!(out, "\n| metric | ");
    for (k, _) in rows {
        let _ = write!(out, "{} | ", k.label());
    }
    let _ = writeln!(out);
    let _ = write!(out, "| --- |");
    for _ in rows {
        let _ = write!(out, " --- |");
    }
    let _ = writeln!(out);
    for (name, f, fmt, base) in &metrics {
        let base_val = match base {
            Base::Direct => direct(*f),
            Base::Relay => relay(*f),
            Base::None => None,
        };
        let base_name = match base {
            Base::Direct => "direct",
            Base::Relay => "relay",
            Base::None => "",
        };
        let _ = write!(out, "| {name} |");
        for (_, r) in rows {
            let cell = match f(r) {
                None => "–".to_string(),
                Some(v) => {
                    let num = format!("{v:.prec$}", prec = *fmt);
                    match base_val {
                        Some(b) if b > 0.0 && (v - b).abs() > f64::EPSILON => {
                            format!("{num} ({:.2}× {base_name})", v / b)
                        }
                        _ => num,
                    }
                }
            };
            let _ = write!(out, " {cell} |");
        }
        let _ = writeln!(out);
    }
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "n/a".to_string(),
    };
    let gate = |f: &dyn Fn(&Row) -> Option<f64>| get(Kind::GateAlways, f);
    let never = |f: &dyn Fn(&Row) -> Option<f64>| get(Kind::GateNever, f);
    let squid = |f: &dyn Fn(&Row) -> Option<f64>| get(Kind::Squid, f);
    let bulk_cpu = |r: &Row| median(&r.bulk_cpu_per_gib);
    let x_cpu = |r: &Row| median(&r.x_cpu_us);
    let x_rate = |r: &Row| median(&r.x_rate);
    let http = |r: &Row| median(&r.http_rps);
    let _ = writeln!(
        out,
        "\ntargets (egress-gate = fsync \"always\", the default):"
    );
    let _ = writeln!(
        out,
        "- tunnel CPU per GiB vs bare relay: {}× (target <= 1.10)",
        ratio(gate(&bulk_cpu), relay(&bulk_cpu))
    );
    let _ = writeln!(
        out,
        "- CPU per CONNECT exchange vs bare relay: {}× (target <= 1.25); fsync=never {}×; vs squid {}× (target < 1)",
        ratio(gate(&x_cpu), relay(&x_cpu)),
        ratio(never(&x_cpu), relay(&x_cpu)),
        ratio(gate(&x_cpu), squid(&x_cpu))
    );
    let _ = writeln!(
        out,
        "- HTTP req/s vs squid: {}× (fsync=never {}×); vs direct: {}× (fsync=never {}×) (target >= 2× squid or >= 0.9× direct, whichever is lower)",
        ratio(gate(&http), squid(&http)),
        ratio(never(&http), squid(&http)),
        ratio(gate(&http), direct(&http)),
        ratio(never(&http), direct(&http))
    );
    let _ = writeln!(
        out,
        "- RSS per idle tunnel: {} bytes (target <= 8192)",
        gate(&|r| r.idle_bytes).map_or("n/a".into(), |b| format!("{b:.0}"))
    );
    let _ = writeln!(
        out,
        "- fsync cost: CONNECT exchanges/s always vs never {}×, HTTP req/s {}×",
        ratio(gate(&x_rate), never(&x_rate)),
        ratio(gate(&http), never(&http))
    );
    for (k, r) in rows {
        if r.x_errors > 0 {
            let _ = writeln!(out, "{}: {} exchange errors", k.label(), r.x_errors);
        }
        for n in &r.notes {
            let _ = writeln!(out, "{}: {n}", k.label());
        }
    }
    let _ = writeln!(
        out,
        "bulk = one tunnel, {} MiB origin→client; exchange = {CONCURRENCY} workers, {:?} per run; \
         HTTP = wrk -t1 -c{CONCURRENCY}; medians of {} interleaved runs; idle = {} tunnels on a fresh process",
        s.bulk_bytes >> 20,
        s.run,
        s.repeats,
        s.idle_tunnels
    );
    out
}

// === environment ===

fn pin_to(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
        eprintln!("cannot pin the load generator to CPU {cpu}: {e}");
    }
}

/// Raises the descriptor limit as far as allowed; returns the limit in force.
fn raise_nofile(n: u64) -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let cur = getrlimit(Resource::Nofile);
    let want = Rlimit {
        current: Some(n),
        maximum: Some(n.max(cur.maximum.unwrap_or(n))),
    };
    if setrlimit(Resource::Nofile, want).is_err() {
        // Not root: take what the hard limit allows.
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: cur.maximum,
                maximum: cur.maximum,
            },
        );
    }
    getrlimit(Resource::Nofile).current.unwrap_or(1024)
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Installs wrk and squid from the distribution when missing (Debian/Ubuntu, as root).
fn ensure_tools() {
    let missing: Vec<&str> = ["wrk", "squid"]
        .into_iter()
        .filter(|t| which(t).is_none())
        .collect();
    if missing.is_empty() || which("apt-get").is_none() {
        return;
    }
    eprintln!("installing {missing:?} with apt-get");
    let _ = Command::new("apt-get")
        .args(["update", "-qq"])
        .stdout(Stdio::null())
        .status();
    let _ = Command::new("apt-get")
        .args(["install", "-y", "-qq"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status();
}

/// Latency of append + fdatasync in `dir`, the floor under `fsync = "always"`.
fn fsync_probe(dir: &Path) -> (f64, f64) {
    let path = dir.join("fsync-probe");
    let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    else {
        return (f64::NAN, f64::NAN);
    };
    let line = [b'x'; 400];
    let mut lat: Vec<f64> = (0..100)
        .map(|_| {
            let t = Instant::now();
            let _ = io::Write::write_all(&mut f, &line).and_then(|()| f.sync_data());
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    let _ = std::fs::remove_file(&path);
    lat.sort_by(|a, b| a.total_cmp(b));
    (lat[50], lat[99])
}

fn set_mode_777(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777));
}

fn fs_type(path: &Path) -> String {
    let out = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(path)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    // stat(1) names the shared ext2/3/4 magic "ext2/ext3".
    let out = if out == "ext2/ext3" {
        "ext2/3/4".to_string()
    } else {
        out
    };
    if out == "tmpfs" {
        eprintln!("WARNING: the trail directory is on tmpfs; the fsync numbers mean nothing");
    }
    out
}

/// Other processes using at least 5% of a CPU over one second (name, nice, CPU share): the
/// machine may be shared, and the reader should know with what.
fn busy_processes() -> String {
    let me = std::process::id();
    let sample = || -> Vec<(u32, u64, String, i64)> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| {
                let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let (head, rest) = stat.rsplit_once(')')?;
                let name = head.split_once('(')?.1.to_string();
                let f: Vec<&str> = rest.split_whitespace().collect();
                let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
                let nice = f.get(16)?.parse::<i64>().ok()?;
                Some((pid, ticks, name, nice))
            })
            .collect()
    };
    let before = sample();
    std::thread::sleep(Duration::from_secs(1));
    let mut busy: Vec<String> = sample()
        .into_iter()
        .filter(|(pid, ..)| *pid != me)
        .filter_map(|(pid, ticks, name, nice)| {
            let (_, t0, ..) = before.iter().find(|b| b.0 == pid)?;
            let pct = ticks.saturating_sub(*t0);
            (pct >= 5).then(|| format!("{name} (nice {nice}) {pct}%"))
        })
        .collect();
    if busy.is_empty() {
        busy.push("none".into());
    }
    busy.join(", ")
}

fn machine_notes() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpu}, {} CPUs, Linux {}, loadavg {}",
        std::fs::read_to_string("/proc/cpuinfo").map_or(0, |t| t
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count()),
        kernel.trim(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}
