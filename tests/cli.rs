//! The real binary: `check` output and exit codes, `serve` refusing bad policies, and `serve`
//! used the way people use it — curl with HTTP_PROXY / HTTPS_PROXY.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::origin::Origin;
use support::process::{BIN, KillOnDrop, free_port, serve_command, wait_listening_blocking};

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_the_shipped_default_policy() {
    let path = repo_file("config/egress.toml");
    let (code, out, err) = run(&["check", path.to_str().unwrap()]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains(": ok (sha256 "), "{out}");
}

#[test]
fn check_reports_every_error_with_file_line_col_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "version = 1\n[policy]\nprivate_ip_mode = \"allow\"\n[[policy.allow]]\nhost = \"*\"\n[[policy.allow]]\ncidr = \"::/0\"\nports = [0]\n",
    )
    .unwrap();
    let (code, out, err) = run(&["check", file.to_str().unwrap()]);
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    let f = file.display();
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines[0].starts_with(&format!("{f}:3:19: policy.private_ip_mode: ")),
        "{err}"
    );
    assert!(
        lines[1].starts_with(&format!("{f}:5:8: policy.allow[0].host: universal allow")),
        "{err}"
    );
    assert!(
        lines[2].starts_with(&format!("{f}:7:8: policy.allow[1].cidr: universal allow")),
        "{err}"
    );
    assert!(
        lines[3].starts_with(&format!(
            "{f}:8:10: policy.allow[1].ports[0]: 0 is not a port"
        )),
        "{err}"
    );
    assert!(lines[4].ends_with("4 error(s); policy refused"), "{err}");
}

#[test]
fn check_rejects_unknown_keys_and_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typo.toml");
    std::fs::write(&file, "version = 1\n[polcy]\n").unwrap();
    let (code, _, err) = run(&["check", file.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("{}:2:", file.display())) && err.contains("unknown field `polcy`"),
        "{err}"
    );

    let (code, _, err) = run(&["check", "/nonexistent/policy.toml"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("/nonexistent/policy.toml: cannot read policy file"),
        "{err}"
    );
}

#[test]
fn serve_refuses_to_start_without_a_valid_policy() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "version = 1\n[[policy.allow]]\nhost = \"*\"\n").unwrap();
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let (code, _, err) = run(&[
        "serve",
        "--config",
        file.to_str().unwrap(),
        "--listen",
        &listen,
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("{}:3:8: policy.allow[0].host", file.display())),
        "{err}"
    );
    let (code, _, err) = run(&[
        "serve",
        "--config",
        "/nonexistent.toml",
        "--listen",
        &listen,
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot read policy file"), "{err}");
    // Nothing is listening: the refusal happened before binding.
    assert!(std::net::TcpStream::connect(&listen).is_err());
}

/// A running `egress-gate serve` in its own working directory, killed on drop.
struct Served {
    child: KillOnDrop,
    dir: tempfile::TempDir,
    port: u16,
}

impl Served {
    fn start(policy: &Path) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = KillOnDrop(
            serve_command(policy, port)
                .current_dir(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_listening_blocking(port);
        Served { child, dir, port }
    }

    fn proxy_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGTERM, then wait: the process must exit cleanly and flush the trail.
    fn terminate(mut self) -> String {
        let status = self.child.terminate();
        assert!(status.success(), "serve exited with {status}");
        std::fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap_or_default()
    }
}

fn curl(args: &[&str], env: &[(&str, &str)]) -> (String, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10"]).args(args);
    for var in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let out = cmd
        .output()
        .expect("curl is installed (.ci/run installs it)");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_the_proxy_via_environment_variables() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "version = 1\n[[policy.allow]]\ncidr = \"127.0.0.1/32\"\nports = [{}]\n",
            origin.port()
        ),
    )
    .unwrap();
    let served = tokio::task::spawn_blocking(move || Served::start(&policy))
        .await
        .unwrap();
    let proxy = served.proxy_url();
    let allowed = format!("http://127.0.0.1:{}/via-env", origin.port());
    let (out, err) = tokio::task::spawn_blocking({
        let (proxy, allowed) = (proxy.clone(), allowed.clone());
        move || {
            let code = ["-o", "/dev/null", "-w", "%{http_code}"];
            let plain = curl(
                &[&code[..], &[allowed.as_str()]].concat(),
                &[("http_proxy", &proxy)],
            );
            // HTTPS_PROXY makes curl use CONNECT; --proxytunnel forces it for an http:// URL too.
            let tunnel = curl(
                &[&code[..], &["--proxytunnel", allowed.as_str()]].concat(),
                &[("HTTPS_PROXY", &proxy), ("http_proxy", &proxy)],
            );
            let denied = curl(
                &[&code[..], &["http://127.0.0.1:1/"]].concat(),
                &[("http_proxy", &proxy)],
            );
            let denied_tls = curl(&["https://example.com/"], &[("HTTPS_PROXY", &proxy)]);
            (
                format!("{} {} {}", plain.0, tunnel.0, denied.0),
                denied_tls.1,
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(out, "200 200 403", "curl output");
    assert!(
        err.contains("403"),
        "curl should report the CONNECT refusal: {err}"
    );
    assert_eq!(origin.requests(), 2);
    let trail = served.terminate();
    let records: Vec<serde_json::Value> = trail
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Records are written when each exchange ends; audit ids follow the order requests arrived.
    let mut net_records: Vec<&serde_json::Value> =
        records.iter().filter(|r| r["event"] == "net.req").collect();
    net_records.sort_by_key(|r| r["audit_id"].as_str().unwrap().to_string());
    let net: Vec<(&str, &str, u64)> = net_records
        .iter()
        .map(|r| {
            (
                r["method"].as_str().unwrap(),
                r["decision"].as_str().unwrap(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        net,
        vec![
            ("GET", "allow", 200),
            ("CONNECT", "allow", 200),
            ("GET", "deny", 403),
            ("CONNECT", "deny", 403)
        ],
        "{trail}"
    );
    assert_eq!(
        records
            .iter()
            .filter(|r| r["event"] == "policy.violation")
            .count(),
        2
    );
    assert_eq!(records[0]["event"], "trail.open");
    assert_eq!(records[1]["event"], "proxy.start");
    assert_eq!(records[2]["event"], "policy.load");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_default_config_runs_and_denies_internal_destinations() {
    let origin = Origin::start().await;
    let served = tokio::task::spawn_blocking(|| Served::start(&repo_file("config/egress.toml")))
        .await
        .unwrap();
    let proxy = served.proxy_url();
    let port = origin.port();
    let codes = tokio::task::spawn_blocking(move || {
        let w = ["-o", "/dev/null", "-w", "%{http_code}"];
        [
            format!("http://127.0.0.1:{port}/"),
            format!("http://localhost:{port}/"),
            "http://169.254.169.254/latest/meta-data/".to_string(),
            "http://2130706433/".to_string(),
        ]
        .iter()
        .map(|url| {
            curl(
                &[&w[..], &[url.as_str()]].concat(),
                &[("http_proxy", &proxy)],
            )
            .0
        })
        .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert_eq!(codes, vec!["403", "403", "403", "403"]);
    assert_eq!(origin.requests(), 0);
    let trail = served.terminate();
    assert_eq!(
        trail.matches("\"event\":\"policy.violation\"").count(),
        4,
        "{trail}"
    );
}
