use std::path::PathBuf;

use super::record::{self, PolicyLoad, Record};
use super::verify::{ProblemKind, verify_files};
use super::*;
use crate::config::{AuditConfig, DriftAction};

fn config(path: &Path) -> AuditConfig {
    AuditConfig {
        path: AuditPath::File(path.to_path_buf()),
        key_file: None,
        fsync: FsyncMode::Always,
        max_bytes: None,
        keep: 3,
        on_drift: DriftAction::Halt,
    }
}

fn rec(n: usize) -> Record {
    Record::PolicyLoad(PolicyLoad {
        ts: record::now(),
        event: record::POLICY_LOAD,
        path: format!("p{n}.toml"),
        policy_sha256: "ab".repeat(32).into(),
    })
}

/// Writes `n` records through a real writer and closes it.
async fn write_trail(cfg: &AuditConfig, n: usize) {
    let (audit, writer) = Audit::open(cfg, "x").unwrap();
    for i in 0..n {
        audit.commit(rec(i)).await.unwrap();
    }
    drop(audit);
    writer.join();
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(
        path,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
}

fn verify(path: &Path) -> Result<verify::Summary, verify::Problem> {
    verify_files(&[path.to_path_buf()], &ChainKey::none())
}

#[tokio::test]
async fn a_written_trail_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    write_trail(&config(&path), 5).await;
    let s = verify(&path).unwrap();
    // trail.open + 5 records.
    assert_eq!(s.records, 6);
    assert_eq!((s.first_seq, s.last_seq), (Some(0), Some(5)));
    assert_eq!(s.starts_after, None);
    assert_eq!(s.truncated_tail, None);
    let first: serde_json::Value = serde_json::from_str(&lines(&path)[0]).unwrap();
    assert_eq!(first["event"], "trail.open");
    assert_eq!(first["chain"], "sha256");
}

#[tokio::test]
async fn editing_one_byte_is_detected_at_that_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    write_trail(&config(&path), 5).await;
    let mut l = lines(&path);
    l[3] = l[3].replacen("p2.toml", "p9.toml", 1);
    write_lines(&path, &l);
    let p = verify(&path).unwrap_err();
    assert_eq!((p.line, p.seq), (4, Some(3)));
    assert_eq!(p.kind, ProblemKind::Edited { keyed: false });
}

#[tokio::test]
async fn deleting_or_swapping_lines_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    write_trail(&config(&path), 5).await;
    let original = lines(&path);

    let mut deleted = original.clone();
    deleted.remove(2);
    write_lines(&path, &deleted);
    let p = verify(&path).unwrap_err();
    assert_eq!(p.line, 3);
    assert_eq!(
        p.kind,
        ProblemKind::Missing {
            expected_seq: 2,
            count: 1
        }
    );

    let mut swapped = original.clone();
    swapped.swap(2, 3);
    write_lines(&path, &swapped);
    let p = verify(&path).unwrap_err();
    assert_eq!(p.line, 3);
    assert_eq!(
        p.kind,
        ProblemKind::Missing {
            expected_seq: 2,
            count: 1
        }
    );

    // A record replaced by a validly hashed one with the right seq breaks the link.
    let mut forged = original.clone();
    let mut chain = chain::Chain::new(ChainKey::none(), 2, [7; 32]);
    let mut out = Vec::new();
    chain.seal(br#"{"event":"forged"}"#, &mut out);
    forged[2] = String::from_utf8(out).unwrap().trim_end().to_string();
    write_lines(&path, &forged);
    let p = verify(&path).unwrap_err();
    assert_eq!(p.line, 3);
    assert!(matches!(p.kind, ProblemKind::BrokenLink { .. }), "{p}");
}

#[tokio::test]
async fn a_keyed_trail_needs_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let key_path = dir.path().join("k");
    std::fs::write(&key_path, b"0123456789abcdef0123").unwrap();
    let mut cfg = config(&path);
    cfg.key_file = Some(key_path.clone());
    write_trail(&cfg, 3).await;
    let right = read_key_file(&key_path).unwrap();
    assert_eq!(
        verify_files(std::slice::from_ref(&path), &right)
            .unwrap()
            .records,
        4
    );
    let wrong = ChainKey::hmac(b"another key of enough length".to_vec());
    let p = verify_files(std::slice::from_ref(&path), &wrong).unwrap_err();
    assert_eq!(
        (p.line, p.kind.clone()),
        (1, ProblemKind::Edited { keyed: true })
    );
    assert!(p.to_string().contains("or the key is wrong"));
    let p = verify(&path).unwrap_err();
    assert!(p.to_string().contains("pass --key-file"), "{p}");

    std::fs::write(&key_path, b"short").unwrap();
    assert!(matches!(
        read_key_file(&key_path),
        Err(SetupError::KeyTooShort { .. })
    ));
}

#[tokio::test]
async fn a_torn_tail_is_reported_and_cut_when_the_trail_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    write_trail(&config(&path), 3).await;
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(br#"{"event":"net.req","audit_id":"abc","hos"#);
    std::fs::write(&path, &bytes).unwrap();
    let s = verify(&path).unwrap();
    assert_eq!(s.records, 4);
    let tail = s.truncated_tail.unwrap();
    assert_eq!((tail.line, tail.bytes), (5, 40));

    // Restarting cuts the torn line, says so, and continues the same chain.
    write_trail(&config(&path), 2).await;
    let s = verify(&path).unwrap();
    assert_eq!(s.truncated_tail, None);
    assert_eq!((s.records, s.last_seq), (7, Some(6)));
    let l = lines(&path);
    let reopened: serde_json::Value = serde_json::from_str(&l[4]).unwrap();
    assert_eq!(reopened["event"], "trail.open");
    assert_eq!(reopened["torn_bytes"], 40);
}

#[tokio::test]
async fn a_foreign_file_is_not_continued() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    std::fs::write(&path, "{\"not\":\"ours\"}\n").unwrap();
    assert!(matches!(
        Audit::open(&config(&path), "x"),
        Err(SetupError::Open(OpenError::NotATrail { .. }))
    ));
}

#[tokio::test]
async fn rotation_links_files_and_verify_follows_them_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let mut cfg = config(&path);
    cfg.max_bytes = Some(4096);
    write_trail(&cfg, 60).await;
    let rotated: Vec<PathBuf> = (1..=3)
        .rev()
        .map(|n| dir.path().join(format!("a.jsonl.{n}")))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(rotated.len(), 3, "expected keep = 3 rotated files");
    assert!(!dir.path().join("a.jsonl.4").exists());
    let mut all = rotated.clone();
    all.push(path.clone());
    let s = verify_files(&all, &ChainKey::none()).unwrap();
    // The oldest file was dropped, so the chain starts after it.
    assert!(s.starts_after.is_some());
    // Each file opens with trail.open, reason rotate (but the oldest kept, which may be either).
    let newest_first: serde_json::Value = serde_json::from_str(&lines(&path)[0]).unwrap();
    assert_eq!(newest_first["reason"], "rotate");
    // Out of order, they do not verify.
    all.swap(0, 1);
    assert!(verify_files(&all, &ChainKey::none()).is_err());
}

#[tokio::test]
async fn a_removed_file_is_recreated_and_the_chain_continues() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let (audit, writer) = Audit::open(&config(&path), "x").unwrap();
    audit.commit(rec(0)).await.unwrap();
    let before = verify(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    audit.commit(rec(1)).await.unwrap();
    drop(audit);
    writer.join();
    let after = verify(&path).unwrap();
    assert_eq!(after.starts_after, Some(before.head));
    let first: serde_json::Value = serde_json::from_str(&lines(&path)[0]).unwrap();
    assert_eq!(first["reason"], "recreated");
}

#[tokio::test]
async fn an_unwritable_trail_fails_commits() {
    let cfg = config(Path::new("/dev/full"));
    let (audit, writer) = Audit::open(&cfg, "x").unwrap();
    let err = audit.commit(rec(0)).await.unwrap_err();
    assert!(matches!(err, AuditError::Write(_)), "{err:?}");
    drop(audit);
    writer.join();
}

#[tokio::test]
async fn group_commit_acknowledges_every_waiter() {
    let (audit, writer, memory) = Audit::in_memory().unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let audit = audit.clone();
        tasks.push(tokio::spawn(async move { audit.commit(rec(i)).await }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    drop(audit);
    writer.join();
    let bytes = memory.lock().unwrap().clone();
    let s = verify::verify_bytes(&bytes, &ChainKey::none()).unwrap();
    assert_eq!(s.records, 201);
}

#[tokio::test]
async fn the_writer_thread_does_not_preempt_request_tasks() {
    let (audit, writer, _trail) = Audit::in_memory().unwrap();
    // Once a flush is answered, the writer has set its own scheduling policy.
    audit.flush().await.unwrap();
    // Field 41 of /proc/TID/stat is the scheduling policy; fields are counted from 1, and the
    // ones after the parenthesised name start at field 3.
    let policy_of = |task: &std::path::Path| -> Option<String> {
        let stat = std::fs::read_to_string(task.join("stat")).ok()?;
        let after_name = &stat[stat.rfind(')')? + 1..];
        Some(after_name.split_whitespace().nth(41 - 3)?.to_string())
    };
    let writers: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| t.ok().map(|t| t.path()))
        .filter(|t| {
            std::fs::read_to_string(t.join("comm")).is_ok_and(|c| c.trim() == "audit-writer")
        })
        .filter_map(|t| policy_of(&t))
        .collect();
    // Other tests' writers may be starting right now; ours is settled and must be SCHED_BATCH.
    assert!(
        writers.iter().any(|p| p == &libc::SCHED_BATCH.to_string()),
        "no audit-writer thread under SCHED_BATCH: {writers:?}"
    );
    drop(audit);
    writer.join();
}

#[tokio::test]
async fn a_record_nobody_waits_for_reaches_the_trail_without_further_traffic() {
    for fsync in [FsyncMode::Always, FsyncMode::Interval, FsyncMode::Never] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let cfg = AuditConfig {
            fsync,
            ..config(&path)
        };
        let (audit, writer) = Audit::open(&cfg, "x").unwrap();
        audit.submit(rec(1));
        // Nothing else is queued: the lazy record must still go out on its own (after at most
        // LAZY_DELAY), not wait for company that never comes.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while lines(&path).len() < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "{fsync:?}: the submitted record was not written"
            );
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        assert!(lines(&path)[1].contains("p1.toml"), "{fsync:?}");
        drop(audit);
        writer.join();
        verify(&path).unwrap();
    }
}

#[tokio::test]
async fn an_inline_trail_is_sealed_before_commit_returns() {
    let (audit, writer, memory) = Audit::in_memory_inline().unwrap();
    for i in 0..3 {
        audit.commit(rec(i)).await.unwrap();
        // No thread to wait for: the record is already in the trail.
        let text = String::from_utf8(memory.lock().unwrap().clone()).unwrap();
        assert!(text.contains(&format!("p{i}.toml")), "{text}");
    }
    audit.submit(rec(9));
    assert!(String::from_utf8_lossy(&memory.lock().unwrap()).contains("p9.toml"));
    drop(audit);
    writer.join();
    let bytes = memory.lock().unwrap().clone();
    let summary = verify::verify_bytes(&bytes, &ChainKey::none()).unwrap();
    // trail.open, three commits, one submit.
    assert_eq!(summary.records, 5);
}
