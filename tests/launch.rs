//! The launcher, end to end: the real binary starts real plugins (curl, python3, sh) in a user +
//! network + mount namespace, and a real origin on the host's loopback is reachable only
//! through the proxy. Covers embedded and daemon mode, identity, exit statuses and signals,
//! unprivileged callers, and the refusal when namespaces are unavailable.
//!
//! No test sends traffic anywhere but the host's loopback or a namespace it created: the one
//! "outside" address dialled (192.0.2.1, TEST-NET-1) is dialled only from inside a sandbox after
//! the plugin has checked that its namespace has no route at all.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::launch::{
    self, Daemon, Setup, binary_for_nobody, eventually, net_reqs, output, policy, tool_exec,
};
use support::origin::Origin;

// === embedded mode ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_and_python_reach_an_allowed_origin_and_get_403_elsewhere() {
    let origin = Origin::start().await;
    let other = Origin::start().await;
    let port = origin.port();
    // Another plugin may use `other`'s port, and proves it with a token; a plugin on its own
    // listener cannot borrow that identity by sending the token.
    let token_sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"s3cret"));
    let setup = Setup::new(&format!(
        "{}[plugins.other]\ntoken_sha256 = \"{token_sha256}\"\n\
         [[plugins.other.allow]]\ncidr = \"127.0.0.1/32\"\nports = [{}]\n",
        policy(&[("weather", &[port])]),
        other.port()
    ));
    let script = format!(
        r#"
set -e
echo "curl-allowed $(curl -sS -o body.json -w '%{{http_code}}' http://127.0.0.1:{port}/forecast?city=x)"
echo "curl-denied-host $(curl -sS -o /dev/null -w '%{{http_code}}' http://denied.invalid/)"
echo "curl-denied-port $(curl -sS -o /dev/null -w '%{{http_code}}' -U other:s3cret http://127.0.0.1:{other}/)"
echo "curl-connect-denied $(curl -s -o /dev/null -w '%{{http_connect}}' https://denied.invalid/ || true)"
python3 - <<'EOF'
import urllib.request, urllib.error
print("python-allowed", urllib.request.urlopen("http://127.0.0.1:{port}/py").status)
try:
    urllib.request.urlopen("http://denied.invalid/")
except urllib.error.HTTPError as e:
    print("python-denied", e.code, e.headers["x-egress-gate-reason"])
EOF
"#,
        other = other.port()
    );
    let out = output(setup.run("weather", &["sh", "-c", &script])).await;
    assert_eq!(out.code, Some(0), "{}", out.show());
    for line in [
        "curl-allowed 200",
        "curl-denied-host 403",
        "curl-denied-port 403",
        "curl-connect-denied 403",
        "python-allowed 200",
        "python-denied 403 no_matching_rule",
    ] {
        assert!(
            out.stdout.contains(line),
            "missing {line:?}\n{}",
            out.show()
        );
    }
    // The origin saw exactly the two allowed requests, forwarded by the proxy.
    assert_eq!(origin.requests(), 2);
    assert_eq!(other.requests(), 0);
    let body: Value =
        serde_json::from_str(&std::fs::read_to_string(setup.path("body.json")).unwrap()).unwrap();
    assert_eq!(body["uri"], "/forecast?city=x");

    // Every request carries the plugin's name; the launch is recorded with the same policy hash.
    let records = setup.records();
    let reqs: Vec<&Value> = records.iter().filter(|r| r["event"] == "net.req").collect();
    assert_eq!(reqs.len(), 6, "{records:#?}");
    assert!(reqs.iter().all(|r| r["plugin"] == "weather"), "{reqs:#?}");
    let allowed = net_reqs(&records, "127.0.0.1", port);
    assert_eq!(allowed.len(), 2);
    assert!(
        allowed
            .iter()
            .all(|r| r["status"] == 200 && r["decision"] == "allow")
    );
    let denied = net_reqs(&records, "denied.invalid", 80);
    assert!(denied.iter().all(|r| r["status"] == 403));

    let exec = tool_exec(&records, "weather");
    assert_eq!(exec.len(), 2, "{records:#?}");
    let (start, exit) = (&exec[0], &exec[1]);
    assert_eq!(start["phase"], "start");
    assert_eq!(exit["phase"], "exit");
    assert_eq!(start["audit_id"], exit["audit_id"]);
    assert_eq!(start["pid"], exit["pid"]);
    assert_eq!(start["argv0"], "sh");
    assert_eq!(exit["status"], 0);
    assert!(start.get("status").is_none());
    let proxy_start = records
        .iter()
        .find(|r| r["event"] == "proxy.start")
        .unwrap();
    assert_eq!(start["policy_sha256"], proxy_start["policy_sha256"]);
    for r in &reqs {
        assert_eq!(r["policy_sha256"], start["policy_sha256"]);
    }
    // Records are in order: start before the first request, exit after the last.
    let position = |pred: &dyn Fn(&Value) -> bool| records.iter().position(pred).unwrap();
    let first_req = position(&|r| r["event"] == "net.req");
    let last_req = records
        .iter()
        .rposition(|r| r["event"] == "net.req")
        .unwrap();
    assert!(position(&|r| r["event"] == "tool.exec" && r["phase"] == "start") < first_req);
    assert!(position(&|r| r["event"] == "tool.exec" && r["phase"] == "exit") > last_req);
}

#[tokio::test]
async fn direct_connections_and_dns_fail_fast_inside_the_sandbox() {
    let origin = Origin::start().await;
    let setup = Setup::new(&policy(&[("probe", &[origin.port()])]));
    let script = format!(
        r#"
import errno, socket, sys, time
# Safety first: dial nothing unless this namespace really has no route and only `lo`.
routes = open("/proc/net/route").read().splitlines()[1:]
devices = [l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:]]
print("routes", len(routes), "devices", ",".join(devices))
if routes or devices != ["lo"]:
    sys.exit(99)

def dial(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    t = time.monotonic()
    try:
        s.connect((host, port))
        return "connected", time.monotonic() - t
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno)), time.monotonic() - t

for name, host, port in [("outside", "192.0.2.1", 80), ("host-origin", "127.0.0.1", {port})]:
    result, took = dial(host, port)
    print(name, result, "fast" if took < 1 else "slow %.2f" % took)

t = time.monotonic()
try:
    socket.getaddrinfo("example.com", 80)
    print("dns resolved")
except socket.gaierror as e:
    print("dns failed", "fast" if time.monotonic() - t < 1 else "slow")
"#,
        port = origin.port()
    );
    let out = output(setup.run("probe", &["python3", "-c", &script])).await;
    assert_eq!(out.code, Some(0), "{}", out.show());
    for line in [
        "routes 0 devices lo",
        "outside ENETUNREACH fast",
        // In the sandbox 127.0.0.1 is the sandbox's own loopback: the host's origin is not there.
        "host-origin ECONNREFUSED fast",
        "dns failed fast",
    ] {
        assert!(
            out.stdout.contains(line),
            "missing {line:?}\n{}",
            out.show()
        );
    }
    assert_eq!(origin.requests(), 0);
    assert_eq!(origin.connections(), 0);
    assert!(
        !setup.records().iter().any(|r| r["event"] == "net.req"),
        "nothing went through the proxy"
    );
}

#[tokio::test]
async fn the_plugin_gets_the_proxy_environment_and_nothing_else() {
    let setup = Setup::new(&policy(&[("plain", &[])]));
    // A Unix socket of a "host service": reachable unless covered with --hide.
    let hidden = setup.path("hidden.sock");
    let visible = setup.path("visible.sock");
    let _hidden = std::os::unix::net::UnixListener::bind(&hidden).unwrap();
    let _visible = std::os::unix::net::UnixListener::bind(&visible).unwrap();
    let script = r#"
import os, socket, sys
status = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
print("uid", os.getuid(), "gid", os.getgid())
print("NoNewPrivs", status["NoNewPrivs"].strip())
print("CapEff", status["CapEff"].strip(), "CapBnd", status["CapBnd"].strip())
for k in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy", "NO_PROXY", "no_proxy"]:
    print("env", k, repr(os.environ.get(k)))
print("fd7", os.path.exists("/proc/self/fd/7"))
print("resolv", repr(open("/etc/resolv.conf").read()))
for name in ["hidden.sock", "visible.sock"]:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(name)
        print(name, "connected")
    except OSError as e:
        print(name, type(e).__name__)
"#;
    // fd 7 is open (not close-on-exec) in the launcher; the plugin must not inherit it.
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(r#"exec 7</dev/null; exec "$@""#)
        .arg("sh")
        .arg(launch::BIN)
        .args(["run", "--config"])
        .arg(&setup.policy)
        .args(["--plugin", "plain", "--proxy-port", "4711", "--hide"])
        .arg(&hidden)
        .args(["--", "python3", "-c", script])
        .env("http_proxy", "http://attacker.example:1")
        .env("NO_PROXY", "*")
        .current_dir(setup.dir.path());
    let out = output(cmd).await;
    assert_eq!(out.code, Some(0), "{}", out.show());
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    let url = "'http://127.0.0.1:4711'";
    for line in [
        format!("uid {uid} gid {gid}"),
        "NoNewPrivs 1".into(),
        "CapEff 0000000000000000 CapBnd 0000000000000000".into(),
        format!("env HTTP_PROXY {url}"),
        format!("env HTTPS_PROXY {url}"),
        format!("env ALL_PROXY {url}"),
        format!("env http_proxy {url}"),
        format!("env https_proxy {url}"),
        format!("env all_proxy {url}"),
        "env NO_PROXY ''".into(),
        "env no_proxy ''".into(),
        "fd7 False".into(),
        "resolv ''".into(),
        "hidden.sock ConnectionRefusedError".into(),
        // The residual risk the README names: an uncovered pathname socket stays reachable.
        "visible.sock connected".into(),
    ] {
        assert!(
            out.stdout.contains(&line),
            "missing {line:?}\n{}",
            out.show()
        );
    }
}

#[tokio::test]
async fn exit_status_and_signals_propagate() {
    let setup = Setup::new(&policy(&[("p", &[])]));

    let out = output(setup.run("p", &["sh", "-c", "exit 7"])).await;
    assert_eq!(out.code, Some(7), "{}", out.show());

    let out = output(setup.run("p", &["sh", "-c", "kill -KILL $$"])).await;
    assert_eq!(out.code, Some(128 + 9), "{}", out.show());

    // SIGTERM to the launcher reaches the plugin, which handles it and exits 42.
    let ready = setup.path("ready");
    let handled = setup.path("handled");
    // SIGTERM is blocked before "ready" and taken with sigwait: no window in which it could
    // arrive unhandled (a Python-level handler can miss a signal that lands just before sleep).
    let script = r#"
import signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
open("ready", "w").write("1")
if signal.sigtimedwait({signal.SIGTERM}, 30) is None:
    sys.exit(1)
open("handled", "w").write("TERM")
sys.exit(42)
"#;
    let mut cmd = setup.run("p", &["python3", "-c", script]);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    eventually("the plugin to be ready", || ready.exists().then_some(())).await;
    launch::signal(child.id().unwrap(), libc::SIGTERM);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("launcher exited after SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(42));
    assert_eq!(std::fs::read_to_string(&handled).unwrap(), "TERM");

    // SIGINT kills a plugin that does not handle it: 128 + 2, and the exit is in the trail
    // before the launcher exits.
    std::fs::remove_file(&ready).unwrap();
    let mut cmd = setup.run("p", &["sh", "-c", "echo 1 > ready; exec sleep 30"]);
    cmd.kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    eventually("the plugin to be ready", || ready.exists().then_some(())).await;
    let started = Instant::now();
    launch::signal(child.id().unwrap(), libc::SIGINT);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("launcher exited after SIGINT")
        .unwrap();
    assert_eq!(status.code(), Some(128 + 2));
    assert!(started.elapsed() < Duration::from_secs(5));

    let exits: Vec<i64> = tool_exec(&setup.records(), "p")
        .iter()
        .filter(|r| r["phase"] == "exit")
        .map(|r| r["status"].as_i64().unwrap())
        .collect();
    assert_eq!(exits, vec![7, 137, 42, 130]);
}

#[tokio::test]
async fn the_plugin_dies_with_the_launcher() {
    let setup = Setup::new(&policy(&[("orphan", &[])]));
    let mut cmd = setup.run("orphan", &["sleep", "30"]);
    cmd.kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let pid = eventually("tool.exec start", || {
        tool_exec(&setup.records(), "orphan")
            .first()
            .map(|r| r["pid"].as_u64().unwrap())
    })
    .await;
    let comm = format!("/proc/{pid}/comm");
    eventually("the plugin to exec", || {
        (std::fs::read_to_string(&comm).ok()?.trim() == "sleep").then_some(())
    })
    .await;
    launch::signal(child.id().unwrap(), libc::SIGKILL);
    child.wait().await.unwrap();
    // PR_SET_PDEATHSIG: the plugin is killed with its launcher (gone, or a zombie awaiting its
    // new parent's reaping).
    eventually("the plugin to die", || {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => Some(()),
            Ok(stat) => {
                let state = stat.rsplit(") ").next()?.chars().next()?;
                (state == 'Z' || state == 'X').then_some(())
            }
        }
    })
    .await;
}

#[tokio::test]
async fn unknown_plugins_and_missing_commands_are_refused() {
    let setup = Setup::new(&policy(&[("known", &[]), ("other", &[])]));
    let marker = setup.path("ran");
    let touch = format!("touch {}", marker.display());

    let out = output(setup.run("nosuch", &["sh", "-c", &touch])).await;
    assert_eq!(out.code, Some(125), "{}", out.show());
    assert!(
        out.stderr
            .contains("refusing to start plugin \"nosuch\": the policy has no [plugins.nosuch]"),
        "{}",
        out.show()
    );
    assert!(
        out.stderr.contains("known plugins: known, other"),
        "{}",
        out.show()
    );

    let out = output(setup.run("known", &["no-such-command-egress-gate"])).await;
    assert_eq!(out.code, Some(127), "{}", out.show());
    assert!(out.stderr.contains("not found on PATH"), "{}", out.show());

    assert!(!marker.exists());
    assert!(tool_exec(&setup.records(), "nosuch").is_empty());
    assert!(tool_exec(&setup.records(), "known").is_empty());
}

// === refusing when namespaces are unavailable ===

/// A seccomp filter making unshare(2) fail with EPERM — what container runtimes' default
/// profiles do — installed in the launcher's process just before it execs.
fn deny_unshare_filter() -> Vec<libc::sock_filter> {
    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH: u32 = 0xC000_003E;
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH: u32 = 0xC000_00B7;
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    vec![
        op(LD_W_ABS, 0, 0, 4), // seccomp_data.arch
        op(JEQ_K, 0, 3, AUDIT_ARCH),
        op(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        op(JEQ_K, 0, 1, libc::SYS_unshare as u32),
        op(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        op(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[tokio::test]
async fn refused_when_seccomp_forbids_user_namespaces() {
    let setup = Setup::new(&policy(&[("boxed", &[])]));
    let marker = setup.path("ran");
    let touch = format!("touch {}", marker.display());
    let mut cmd = setup.run("boxed", &["sh", "-c", &touch]);
    let filter = deny_unshare_filter();
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2) with a
    // filter program that lives (in the parent's copied memory) for the whole call.
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = output(cmd).await;
    assert_eq!(out.code, Some(125), "{}", out.show());
    for text in [
        "refusing to start plugin \"boxed\"",
        "unshare(CLONE_NEWUSER|CLONE_NEWNET|CLONE_NEWNS) failed",
        "EPERM",
        "cause: a seccomp filter on this process forbids creating namespaces",
        "remedy: run egress-gate outside the container",
        "nothing was started",
    ] {
        assert!(
            out.stderr.contains(text),
            "missing {text:?}\n{}",
            out.show()
        );
    }
    assert!(!marker.exists(), "the plugin must not run unsandboxed");
    assert!(tool_exec(&setup.records(), "boxed").is_empty());
}

#[tokio::test]
async fn refused_when_max_user_namespaces_is_zero() {
    let setup = Setup::new(&policy(&[("boxed", &[])]));
    let marker = setup.path("ran");
    let touch = format!("touch {}", marker.display());
    // A user namespace of the test's own, in which the limit is 0: exactly what
    // `sysctl user.max_user_namespaces=0` does on a host.
    let mut cmd = tokio::process::Command::new("unshare");
    cmd.args(["--user", "--map-root-user", "sh", "-c"])
        .arg(r#"echo 0 > /proc/sys/user/max_user_namespaces && exec "$@""#)
        .arg("sh")
        .arg(launch::BIN)
        .args(["run", "--config"])
        .arg(&setup.policy)
        .args(["--plugin", "boxed", "--", "sh", "-c", &touch])
        .current_dir(setup.dir.path());
    let out = output(cmd).await;
    assert_eq!(out.code, Some(125), "{}", out.show());
    for text in [
        "unshare(CLONE_NEWUSER|CLONE_NEWNET|CLONE_NEWNS) failed",
        "ENOSPC",
        "cause: namespaces are disabled: /proc/sys/user/max_user_namespaces is 0",
        "remedy: raise the limit, e.g. sysctl -w user.max_user_namespaces=15000",
    ] {
        assert!(
            out.stderr.contains(text),
            "missing {text:?}\n{}",
            out.show()
        );
    }
    assert!(!marker.exists(), "the plugin must not run unsandboxed");
}

// === unprivileged callers ===

#[tokio::test]
async fn works_when_started_by_an_unprivileged_user() {
    const NOBODY: u32 = 65534;
    let origin = Origin::start().await;
    let port = origin.port();
    let setup = Setup::new(&policy(&[("lowly", &[port])]));
    std::os::unix::fs::chown(setup.dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(setup.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = binary_for_nobody(setup.dir.path());
    let script = format!(
        "echo uid $(id -u); echo status $(curl -sS -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{port}/)"
    );
    let mut cmd = tokio::process::Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .args(["run", "--config"])
        .arg(&setup.policy)
        .args(["--plugin", "lowly", "--", "sh", "-c", &script])
        .env("HOME", setup.dir.path())
        .current_dir(setup.dir.path());
    let out = output(cmd).await;
    assert_eq!(out.code, Some(0), "{}", out.show());
    assert!(out.stdout.contains("uid 65534"), "{}", out.show());
    assert!(out.stdout.contains("status 200"), "{}", out.show());
    assert_eq!(origin.requests(), 1);
    let records = setup.records();
    let reqs = net_reqs(&records, "127.0.0.1", port);
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0]["plugin"], "lowly");
    assert_eq!(tool_exec(&records, "lowly").len(), 2);
}

// === daemon mode ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_mode_serves_two_plugins_each_under_its_own_policy() {
    let a = Origin::start().await;
    let b = Origin::start().await;
    let daemon = Daemon::start(
        &policy(&[("alpha", &[a.port()]), ("beta", &[b.port()])]),
        &[],
    )
    .await;
    let mode = std::fs::metadata(&daemon.control)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "control socket mode");

    // Both plugins run at the same time against the one daemon.
    let script = |tag: &str| {
        format!(
            "echo {tag} a $(curl -sS -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{}/{tag}); \
             echo {tag} b $(curl -sS -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{}/{tag})",
            a.port(),
            b.port()
        )
    };
    let (sa, sb) = (script("alpha"), script("beta"));
    let (alpha, beta) = tokio::join!(
        output(daemon.run("alpha", &["sh", "-c", &sa])),
        output(daemon.run("beta", &["sh", "-c", &sb])),
    );
    assert_eq!(alpha.code, Some(0), "{}", alpha.show());
    assert_eq!(beta.code, Some(0), "{}", beta.show());
    assert!(alpha.stdout.contains("alpha a 200"), "{}", alpha.show());
    assert!(alpha.stdout.contains("alpha b 403"), "{}", alpha.show());
    assert!(beta.stdout.contains("beta a 403"), "{}", beta.show());
    assert!(beta.stdout.contains("beta b 200"), "{}", beta.show());
    assert_eq!((a.requests(), b.requests()), (1, 1));

    // Exit statuses pass through the daemon mode launcher too.
    let out = output(daemon.run("alpha", &["sh", "-c", "exit 3"])).await;
    assert_eq!(out.code, Some(3), "{}", out.show());

    let records = eventually("both exits recorded", || {
        let records = daemon.records();
        let exits = records
            .iter()
            .filter(|r| r["event"] == "tool.exec" && r["phase"] == "exit")
            .count();
        (exits == 3).then_some(records)
    })
    .await;
    for (plugin, allowed, refused) in [("alpha", a.port(), b.port()), ("beta", b.port(), a.port())]
    {
        let ok = net_reqs(&records, "127.0.0.1", allowed);
        let ok: Vec<_> = ok.iter().filter(|r| r["plugin"] == plugin).collect();
        assert_eq!(ok.len(), 1, "{plugin}: {records:#?}");
        assert_eq!(ok[0]["status"], 200);
        let no = net_reqs(&records, "127.0.0.1", refused);
        let no: Vec<_> = no.iter().filter(|r| r["plugin"] == plugin).collect();
        assert_eq!(no.len(), 1, "{plugin}: {records:#?}");
        assert_eq!(no[0]["status"], 403);
        let exec = tool_exec(&records, plugin);
        assert!(exec.len() >= 2);
        assert_eq!(exec[0]["phase"], "start");
        assert_eq!(exec[0]["argv0"], "sh");
        assert_eq!(exec[1]["audit_id"], exec[0]["audit_id"]);
        assert_eq!(exec[1]["status"], 0);
    }
    let alpha_exits: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == "tool.exec" && r["plugin"] == "alpha" && r["phase"] == "exit")
        .collect();
    assert_eq!(alpha_exits.last().unwrap()["status"], 3);

    // Stopping the daemon removes its control socket.
    let control = daemon.control.clone();
    let _setup = daemon.stop().await;
    assert!(!control.exists());
}

#[tokio::test]
async fn daemon_refuses_unknown_plugins_foreign_uids_and_plugins_themselves() {
    let daemon = Daemon::start(&policy(&[("alpha", &[])]), &[]).await;
    let marker = daemon.setup.path("ran");
    let touch = format!("touch {}", marker.display());

    let out = output(daemon.run("ghost", &["sh", "-c", &touch])).await;
    assert_eq!(out.code, Some(125), "{}", out.show());
    assert!(
        out.stderr
            .contains("the daemon refused: the daemon's policy has no [plugins.ghost] table"),
        "{}",
        out.show()
    );
    assert!(
        out.stderr.contains("remedy: add [plugins.ghost]"),
        "{}",
        out.show()
    );
    assert!(!marker.exists());

    // A plugin cannot reach the control socket (it is covered inside the sandbox), so it can
    // neither attach sockets under another name nor launch anything through the daemon.
    let control = daemon.control.to_str().unwrap().to_string();
    let nested = format!(
        "{} run --connect {control} --plugin alpha -- sh -c '{touch}'; echo nested $?",
        launch::BIN
    );
    let out = output(daemon.run("alpha", &["sh", "-c", &nested])).await;
    assert_eq!(out.code, Some(0), "{}", out.show());
    assert!(out.stdout.contains("nested 125"), "{}", out.show());
    assert!(
        out.stderr
            .contains("cannot connect to the egress-gate daemon"),
        "{}",
        out.show()
    );
    assert!(!marker.exists());

    // A launcher in another network namespace is refused even with an allowed uid: the daemon
    // compares the peer's namespace with its own, whatever path reached the socket.
    let mut cmd = tokio::process::Command::new("unshare");
    cmd.args(["--net", "--"]).arg(launch::BIN).args([
        "run",
        "--connect",
        &control,
        "--plugin",
        "alpha",
        "--",
        "sh",
        "-c",
        &touch,
    ]);
    let out = output(cmd).await;
    assert_eq!(out.code, Some(125), "{}", out.show());
    assert!(
        out.stderr
            .contains("the daemon refused: the launcher is not in the daemon's network namespace"),
        "{}",
        out.show()
    );
    assert!(!marker.exists());
    // Only the outer plugin of the nested attempt above ran.
    assert_eq!(tool_exec(&daemon.records(), "alpha").len(), 2);
    drop(daemon);

    // A daemon that accepts only uid 4242 refuses this (root) launcher by SO_PEERCRED.
    let daemon = Daemon::start(&policy(&[("alpha", &[])]), &["--control-uid", "4242"]).await;
    let out = output(daemon.run("alpha", &["sh", "-c", &touch])).await;
    assert_eq!(out.code, Some(125), "{}", out.show());
    let uid = rustix::process::getuid().as_raw();
    assert!(
        out.stderr.contains(&format!(
            "the daemon refused: uid {uid} may not launch plugins through this daemon"
        )),
        "{}",
        out.show()
    );
    assert!(out.stderr.contains("uid(s) 4242 only"), "{}", out.show());
    assert!(!daemon.setup.path("ran").exists());
    assert!(tool_exec(&daemon.records(), "alpha").is_empty());
}

#[tokio::test]
async fn run_without_a_daemon_says_how_to_start_one() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing.sock");
    let mut cmd = tokio::process::Command::new(launch::BIN);
    cmd.args(["run", "--connect"])
        .arg(&missing)
        .args(["--plugin", "x", "--", "true"]);
    let out = output(cmd).await;
    assert_eq!(out.code, Some(125), "{}", out.show());
    assert!(
        out.stderr
            .contains("cannot connect to the egress-gate daemon: No such file or directory"),
        "{}",
        out.show()
    );
    assert!(
        out.stderr
            .contains("remedy: start one with `egress-gate serve --config FILE --control"),
        "{}",
        out.show()
    );
}

#[tokio::test]
async fn daemon_records_the_end_of_a_plugin_whose_launcher_vanished() {
    let daemon = Daemon::start(&policy(&[("alpha", &[])]), &[]).await;
    let mut cmd = daemon.run("alpha", &["sleep", "30"]);
    cmd.kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let start = eventually("tool.exec start", || {
        tool_exec(&daemon.records(), "alpha").first().cloned()
    })
    .await;
    launch::signal(child.id().unwrap(), libc::SIGKILL);
    child.wait().await.unwrap();
    // The control connection closed without `exited`: the daemon still closes the record,
    // with no status (it cannot know one).
    let exit = eventually("tool.exec exit", || {
        tool_exec(&daemon.records(), "alpha").get(1).cloned()
    })
    .await;
    assert_eq!(exit["phase"], "exit");
    assert_eq!(exit["audit_id"], start["audit_id"]);
    assert!(exit.get("status").is_none(), "{exit}");
}

#[tokio::test]
async fn the_plugin_is_stopped_when_its_proxy_halts() {
    let setup = Setup::new(&policy(&[("p", &[])]));
    let mut cmd = setup.run("p", &["sleep", "30"]);
    cmd.stderr(std::process::Stdio::piped()).kill_on_drop(true);
    let child = cmd.spawn().unwrap();
    eventually("tool.exec start", || {
        tool_exec(&setup.records(), "p").first().map(|_| ())
    })
    .await;
    // Editing the policy without a reload is drift; with on_drift = "halt" (the default) the
    // proxy stops, and a plugin without its proxy is stopped too rather than left running.
    let mut text = std::fs::read_to_string(&setup.policy).unwrap();
    text.push_str("\n# edited\n");
    std::fs::write(&setup.policy, text).unwrap();
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("the launcher exits once its proxy halted")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(128 + 15), "{stderr}");
    assert!(
        stderr.contains("plugin \"p\": the proxy stopped: halted"),
        "{stderr}"
    );
    let records = setup.records();
    assert!(records.iter().any(|r| r["event"] == "policy.drift"));
    let exec = tool_exec(&records, "p");
    assert_eq!(exec.last().unwrap()["status"], 143, "{records:#?}");
}
