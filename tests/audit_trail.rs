//! The audit trail under real conditions: policy reload and drift, a proxy killed with SIGKILL
//! under load, a full disk, secrets planted everywhere, and the verifier on real trails.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::client::{self, connect, get};
use support::origin::Origin;
use support::process::{BIN, KillOnDrop, free_port, serve_command, wait_listening};
use support::proxy::TestProxy;
use tokio::io::AsyncWriteExt;

fn allow_origin(port: u16) -> String {
    format!("version = 1\n[[policy.allow]]\ncidr = \"127.0.0.1/32\"\nports = [{port}]\n")
}

fn verify(files: &[&Path]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(["audit", "verify"])
        .args(files)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn every_request_is_decided_in_the_trail_before_egress_and_the_trail_verifies() {
    let origin = Origin::start().await;
    let proxy = TestProxy::start(&allow_origin(origin.port())).await;
    let ok = get(
        proxy.addr,
        &format!("http://127.0.0.1:{}/x", origin.port()),
        "",
    )
    .await;
    assert_eq!(ok.status, 200);
    let (resp, s) = connect(proxy.addr, &format!("127.0.0.1:{}", origin.port()), "").await;
    assert_eq!(resp.status, 200);
    drop(s);
    let denied = get(proxy.addr, "http://127.0.0.1:1/", "").await;
    assert_eq!(denied.status, 403);
    let trail = proxy.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let audit_path = dir.path().join("trail.jsonl");
    std::fs::write(&audit_path, &trail).unwrap();
    let records = support::schema::check_trail(&trail);
    // Each allowed request: net.open first, net.req later, same audit id.
    for r in records
        .iter()
        .filter(|r| r["event"] == "net.req" && r["decision"] == "allow")
    {
        let id = &r["audit_id"];
        let open = records
            .iter()
            .position(|o| o["event"] == "net.open" && &o["audit_id"] == id);
        let done = records
            .iter()
            .position(|o| o["event"] == "net.req" && &o["audit_id"] == id);
        assert!(
            open.is_some() && open < done,
            "net.open must precede net.req for {id}"
        );
    }
    // Denied requests never get a net.open.
    let denied_id = denied.header("x-egress-gate-audit-id").unwrap();
    assert!(
        !records
            .iter()
            .any(|r| r["event"] == "net.open" && r["audit_id"] == denied_id)
    );
    // Every record carries the policy hash; the trail starts with trail.open, proxy.start, policy.load.
    let sha = records[1]["policy_sha256"].as_str().unwrap().to_string();
    let events: Vec<&str> = records
        .iter()
        .take(3)
        .map(|r| r["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["trail.open", "proxy.start", "policy.load"]);
    assert!(records.iter().all(|r| r["policy_sha256"] == sha.as_str()));
    let (code, out) = verify(&[&audit_path]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with(&format!(
            "ok: {} records, last seq {}",
            records.len(),
            records.len() - 1
        )),
        "{out}"
    );
}

#[tokio::test]
async fn verify_names_the_first_bad_line_of_a_tampered_trail() {
    let origin = Origin::start().await;
    let proxy = TestProxy::start(&allow_origin(origin.port())).await;
    for i in 0..3 {
        get(
            proxy.addr,
            &format!("http://127.0.0.1:{}/{i}", origin.port()),
            "",
        )
        .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let trail = proxy.stop().await;
    let path = dir.path().join("original.jsonl");
    std::fs::write(&path, &trail).unwrap();
    let copy = dir.path().join("t.jsonl");
    // A status rewritten from 200 to 403 on line 5.
    let mut lines: Vec<String> = trail.lines().map(str::to_string).collect();
    lines[4] = lines[4].replacen("\"status\":200", "\"status\":403", 1);
    std::fs::write(&copy, lines.join("\n") + "\n").unwrap();
    let (code, out) = verify(&[&copy]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(":5: seq 4: hash does not match"), "{out}");
    // The untouched original still verifies.
    assert_eq!(verify(&[&path]).0, 0);
}

#[tokio::test]
async fn reload_swaps_a_valid_policy_and_refuses_an_invalid_one() {
    let origin = Origin::start().await;
    let url = format!("http://127.0.0.1:{}/", origin.port());
    let proxy = TestProxy::start("version = 1\n").await;
    assert_eq!(get(proxy.addr, &url, "").await.status, 403);

    proxy.rewrite_policy(&allow_origin(origin.port()));
    proxy.reload().await;
    let reload = proxy.wait_for(|r| r["event"] == "policy.reload").await;
    assert_ne!(reload["old_sha256"], reload["policy_sha256"]);
    assert_eq!(get(proxy.addr, &url, "").await.status, 200);

    proxy.rewrite_policy("version = 1\n[[policy.allow]]\nhost = \"*\"\n");
    proxy.reload().await;
    let failed = proxy
        .wait_for(|r| r["event"] == "policy.reload_failed")
        .await;
    assert!(
        failed["errors"][0]
            .as_str()
            .unwrap()
            .contains("policy.allow[0].host: universal allow"),
        "{failed}"
    );
    assert_eq!(
        failed["policy_sha256"], reload["policy_sha256"],
        "the old policy stays in force"
    );
    assert_eq!(get(proxy.addr, &url, "").await.status, 200);
    // Records written after the reload carry the new policy's hash.
    let last = proxy
        .wait_for(|r| r["event"] == "net.req" && r["status"] == 200)
        .await;
    assert_eq!(last["policy_sha256"], reload["policy_sha256"]);
    // Put the in-force policy back so the drift watcher has nothing to say before stop.
    proxy.rewrite_policy(&allow_origin(origin.port()));
    proxy.stop().await;
}

#[tokio::test]
async fn drift_without_reload_halts_the_proxy_and_closes_tunnels() {
    let origin = Origin::start().await;
    let mut proxy = TestProxy::start(&allow_origin(origin.port())).await;
    let (resp, mut tunnel) = connect(proxy.addr, &format!("127.0.0.1:{}", origin.port()), "").await;
    assert_eq!(resp.status, 200);
    // Someone edits the policy in place and never reloads.
    std::fs::write(
        &proxy.policy_path,
        "version = 1\n[policy]\nstrict = false\n[[policy.allow]]\nhost = \"*\"\n",
    )
    .unwrap();
    let ended = proxy.wait_exit().await;
    assert!(
        matches!(ended, Err(egress_gate::app::StartError::Halted)),
        "{ended:?}"
    );
    let drift = proxy.wait_for(|r| r["event"] == "policy.drift").await;
    assert_eq!(drift["action"], "halt");
    assert_ne!(drift["found_sha256"], drift["policy_sha256"]);
    // The open tunnel was closed, and nothing accepts any more.
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut tunnel, &mut buf),
    )
    .await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "tunnel still open: {read:?}"
    );
    assert!(tokio::net::TcpStream::connect(proxy.addr).await.is_err());
}

#[tokio::test]
async fn drift_with_on_drift_reload_reloads_instead() {
    let origin = Origin::start().await;
    let url = format!("http://127.0.0.1:{}/", origin.port());
    let proxy = TestProxy::start_with_audit_options("version = 1\n", "on_drift = \"reload\"").await;
    assert_eq!(get(proxy.addr, &url, "").await.status, 403);
    proxy.rewrite_policy(&allow_origin(origin.port()));
    let reload = proxy.wait_for(|r| r["event"] == "policy.reload").await;
    let drift = proxy.wait_for(|r| r["event"] == "policy.drift").await;
    assert_eq!(drift["action"], "reload");
    assert_eq!(drift["found_sha256"], reload["policy_sha256"]);
    assert_eq!(get(proxy.addr, &url, "").await.status, 200);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_leaves_a_verifiable_trail_covering_everything_that_went_out() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let trail = dir.path().join("audit.jsonl");
    let policy = dir.path().join("p.toml");
    std::fs::write(
        &policy,
        format!(
            "{}[audit]\npath = {:?}\nfsync = \"always\"\n",
            allow_origin(origin.port()),
            trail.display().to_string()
        ),
    )
    .unwrap();
    let port = free_port();
    let child = KillOnDrop(
        serve_command(&policy, port)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(port).await;
    let proxy: std::net::SocketAddr = ([127, 0, 0, 1], port).into();

    // Eight clients issue uniquely numbered requests until the proxy dies under them.
    let mut clients = Vec::new();
    for c in 0..8 {
        let oport = origin.port();
        clients.push(tokio::spawn(async move {
            for i in 0..10_000 {
                let Ok(mut s) = tokio::net::TcpStream::connect(proxy).await else { return };
                let req = format!("GET http://127.0.0.1:{oport}/c{c}/r{i} HTTP/1.1\r\nHost: 127.0.0.1:{oport}\r\nConnection: close\r\n\r\n");
                if s.write_all(req.as_bytes()).await.is_err() {
                    return;
                }
                let _ = tokio::time::timeout(Duration::from_secs(5), client::read_bytes_to_close_lossy(&mut s)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    support::process::signal(child.id(), "KILL");
    for c in clients {
        let _ = tokio::time::timeout(Duration::from_secs(20), c).await;
    }
    drop(child);

    let received = origin.uris();
    assert!(
        received.len() > 20,
        "load too light to mean anything: {} requests",
        received.len()
    );
    let (code, out) = verify(&[&trail]);
    assert!(
        code == 0 || code == 2,
        "trail does not verify after SIGKILL: {out}"
    );
    let text = std::fs::read_to_string(&trail).unwrap();
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    let records = support::schema::check_trail(complete);
    let opened: std::collections::HashSet<&str> = records
        .iter()
        .filter(|r| r["event"] == "net.open")
        .filter_map(|r| r["path"].as_str())
        .collect();
    let missing: Vec<&String> = received
        .iter()
        .filter(|u| !opened.contains(u.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "requests reached the origin without a decision record: {missing:?}"
    );
}

#[tokio::test]
async fn secrets_never_reach_the_trail_or_the_logs() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let trail = dir.path().join("audit.jsonl");
    let policy = dir.path().join("p.toml");
    // Token "tok-SECRET-1" hashes to this value.
    let token_hash = hex_sha256(b"tok-SECRET-1");
    std::fs::write(
        &policy,
        format!(
            "version = 1\n[audit]\npath = {:?}\n[plugins.w]\ntoken_sha256 = \"{token_hash}\"\n[[plugins.w.allow]]\ncidr = \"127.0.0.1/32\"\nports = [{}]\n",
            trail.display().to_string(),
            origin.port()
        ),
    )
    .unwrap();
    let port = free_port();
    let log = dir.path().join("stderr.log");
    let child = KillOnDrop(
        serve_command(&policy, port)
            .env("EGRESS_GATE_LOG", "trace")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_listening(port).await;
    let proxy: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let basic = base64_of("w:tok-SECRET-1");
    let oport = origin.port();
    let resp = get(
        proxy,
        &format!("http://127.0.0.1:{oport}/p?api_key=KEY-SECRET-2&token=TOK-SECRET-3&q=fine"),
        &format!(
            "Proxy-Authorization: Basic {basic}\r\nAuthorization: Bearer AUTH-SECRET-4\r\nCookie: session=COOKIE-SECRET-5\r\n"
        ),
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    // The origin got the end-to-end credentials (they are the client's business), not the proxy's.
    let echo = resp.body_text();
    assert!(
        echo.contains("AUTH-SECRET-4")
            && echo.contains("COOKIE-SECRET-5")
            && !echo.contains(&basic)
    );
    // Userinfo in the URL is refused, and not recorded either.
    let raw = format!("GET http://USER-SECRET-6:PASS-SECRET-7@127.0.0.1:{oport}/ HTTP/1.1\r\n\r\n");
    assert_eq!(client::roundtrip(proxy, raw.as_bytes()).await.status, 400);
    // A wrong token.
    let wrong = base64_of("w:WRONG-SECRET-8");
    let resp = get(
        proxy,
        &format!("http://127.0.0.1:{oport}/"),
        &format!("Proxy-Authorization: Basic {wrong}\r\n"),
    )
    .await;
    assert_eq!(resp.status, 407);
    // CONNECT with credentials.
    let (resp, s) = connect(
        proxy,
        &format!("127.0.0.1:{oport}"),
        &format!("Proxy-Authorization: Basic {basic}\r\n"),
    )
    .await;
    assert_eq!(resp.status, 200);
    drop(s);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut child = child;
    let status = tokio::task::spawn_blocking(move || child.terminate())
        .await
        .unwrap();
    assert!(status.success(), "serve exited with {status}");

    let trail_text = std::fs::read_to_string(&trail).unwrap();
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        trail_text.contains("api_key=REDACTED")
            && trail_text.contains("token=REDACTED")
            && trail_text.contains("q=fine")
    );
    for secret in [
        "SECRET-1",
        "KEY-SECRET-2",
        "TOK-SECRET-3",
        "AUTH-SECRET-4",
        "COOKIE-SECRET-5",
        "USER-SECRET-6",
        "PASS-SECRET-7",
        "WRONG-SECRET-8",
        &basic,
        &wrong,
    ] {
        assert!(!trail_text.contains(secret), "{secret} in the trail");
        assert!(!log_text.contains(secret), "{secret} in the logs");
    }
    assert!(
        log_text.len() > 100,
        "logging produced nothing, the scan would be vacuous"
    );
    support::schema::check_trail(&trail_text);
}

#[test]
fn a_full_disk_refuses_requests_with_503_and_service_resumes_when_space_returns() {
    // A tiny tmpfs in a private mount namespace (unprivileged user namespaces are available on
    // the machines this runs on); the test reaches the proxy's files through /proc/PID/root.
    let probe = Command::new("unshare").args(["-rm", "true"]).status();
    assert!(
        probe.map(|s| s.success()).unwrap_or(false),
        "unshare -rm is needed for this test"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let origin = Origin::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let trail = mnt.join("audit.jsonl");
        let policy = dir.path().join("p.toml");
        std::fs::write(
            &policy,
            format!("{}[audit]\npath = {:?}\n", allow_origin(origin.port()), trail.display().to_string()),
        )
        .unwrap();
        let port = free_port();
        let script = format!(
            "mount -t tmpfs -o size=64k none {mnt} && exec {BIN} serve --config {policy} --listen 127.0.0.1:{port}",
            mnt = mnt.display(),
            policy = policy.display()
        );
        let child = KillOnDrop(Command::new("unshare")
                .args(["-rm", "sh", "-c", &script])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap());
        wait_listening(port).await;
        let proxy: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let inside = PathBuf::from(format!("/proc/{}/root{}", child.id(), mnt.display()));
        let url = format!("http://127.0.0.1:{}/", origin.port());
        assert_eq!(get(proxy, &url, "").await.status, 200);

        // Fill the filesystem.
        let filler = inside.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![b'x'; 4096];
        while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
        drop(f);
        // The trail's last page may still have room for a few records; then requests must fail.
        let mut refused = None;
        for _ in 0..100 {
            let before = origin.requests();
            let resp = get(proxy, &url, "").await;
            if resp.status == 200 {
                continue;
            }
            assert_eq!(resp.status, 503, "{resp:?}");
            assert_eq!(resp.header("x-egress-gate-reason").as_deref(), Some("audit_unavailable"));
            assert_eq!(origin.requests(), before, "a request went out without being recorded");
            refused = Some(resp);
            break;
        }
        assert!(refused.is_some(), "the proxy kept serving with a full trail filesystem");

        // Space comes back: service resumes by itself.
        std::fs::remove_file(&filler).unwrap();
        assert_eq!(get(proxy, &url, "").await.status, 200);
        let copy = dir.path().join("copy.jsonl");
        std::fs::copy(inside.join("audit.jsonl"), &copy).unwrap();
        let (code, out) = verify(&[&copy]);
        assert_eq!(code, 0, "the trail is intact after the full disk: {out}");
    });
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}
