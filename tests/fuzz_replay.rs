//! Corpus replay on stable: every seed in `fuzz/corpus/<target>/` and every past crash in
//! `fuzz/regressions/<target>/` goes through the same check the cargo-fuzz target runs
//! (`fuzz/checks/`, included here by path), so CI guards them without nightly or libFuzzer.
//!
//! An empty or missing corpus fails: a replay over nothing would pass vacuously. Each input runs
//! on its own thread with a time bound, and a panic in any task the check spawned (which tokio
//! would otherwise swallow) fails the input too.

#[path = "../fuzz/checks/mod.rs"]
mod checks;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once, mpsc};
use std::time::Duration;

/// Bound on one input, in real time; a check that takes longer is hanging.
const PER_INPUT: Duration = Duration::from_secs(20);

static PANICS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Set on the test harness's own threads, whose panics (a failing assertion) are not a
    /// check's.
    static HARNESS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Counts every panic on any thread but the harness's (the default message is still printed).
fn count_panics() {
    static HOOK: Once = Once::new();
    HARNESS.with(|h| h.set(true));
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !HARNESS.with(|h| h.get()) {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `check` on `input` on a fresh thread; `Err` with a message on panic or timeout.
fn run_one(check: checks::Check, input: Vec<u8>) -> Result<(), String> {
    let before = PANICS.load(Ordering::SeqCst);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let outcome = std::panic::catch_unwind(|| check(&input));
        let _ = tx.send(outcome.is_ok());
    });
    match rx.recv_timeout(PER_INPUT) {
        Ok(true) if PANICS.load(Ordering::SeqCst) == before => Ok(()),
        Ok(true) => Err("a task spawned by the check panicked".into()),
        Ok(false) => Err("the check panicked".into()),
        Err(_) => Err(format!("no result within {PER_INPUT:?}: hang")),
    }
}

/// Runs every input in `paths` through `target`'s check; one message per input that failed.
fn replay_files(target: &str, paths: &[PathBuf]) -> Vec<String> {
    // One replay at a time, so a panic is always charged to the input that caused it.
    static SERIAL: Mutex<()> = Mutex::new(());
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    count_panics();
    let (_, check) = checks::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no check named {target}"));
    let mut failures = Vec::new();
    for path in paths {
        let input = std::fs::read(path).expect("readable input");
        if let Err(why) = run_one(*check, input) {
            failures.push(format!("{}: {why}", path.display()));
        }
    }
    failures
}

fn assert_none_failed(failures: &[String], inputs: usize) {
    assert!(
        failures.is_empty(),
        "{} of {inputs} input(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The seeds and the fixed regressions of one target.
fn replay(target: &str) {
    let mut inputs = files(&fuzz_dir().join("corpus").join(target));
    assert!(
        !inputs.is_empty(),
        "fuzz/corpus/{target}/ is missing or empty: the replay would pass vacuously"
    );
    inputs.extend(files(&fuzz_dir().join("regressions").join(target)));
    assert_none_failed(&replay_files(target, &inputs), inputs.len());
}

#[test]
fn every_target_is_replayed() {
    let mut dirs: Vec<String> = std::fs::read_dir(fuzz_dir().join("fuzz_targets"))
        .expect("fuzz/fuzz_targets exists")
        .map(|e| {
            let path = e.expect("entry").path();
            path.file_stem().unwrap().to_string_lossy().into_owned()
        })
        .collect();
    dirs.sort();
    let mut known: Vec<String> = checks::TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    known.sort();
    assert_eq!(
        dirs, known,
        "a fuzz target without a replay, or the reverse"
    );
}

#[test]
fn audit_verify_corpus() {
    replay("audit_verify");
}

#[test]
fn authority_corpus() {
    replay("authority");
}

#[test]
fn policy_toml_corpus() {
    replay("policy_toml");
}

#[test]
fn request_stream_corpus() {
    replay("request_stream");
}

/// Crashes found in code whose fix has not landed yet (`fuzz/regressions/<target>/open/`). Run with
/// `--ignored` to see which still fail; a fixed one moves up to `fuzz/regressions/<target>/`.
#[test]
#[ignore = "known open product bugs, reported with their inputs; see fuzz/README.md"]
fn open_regressions() {
    let (mut failures, mut inputs) = (Vec::new(), 0);
    for (target, _) in checks::TARGETS {
        let open = files(&fuzz_dir().join("regressions").join(target).join("open"));
        inputs += open.len();
        failures.extend(replay_files(target, &open));
    }
    assert_none_failed(&failures, inputs);
}

/// The request_stream harness really drives the proxy: known seeds get the answers and dials the
/// real proxy gives them. Without this, a harness that quietly stopped reaching the service (say,
/// every connection closed early) would pass every invariant vacuously.
#[test]
fn request_stream_seeds_reach_the_proxy() {
    use checks::request_stream::{Observed, observe};
    let seed = |name: &str| {
        let path = fuzz_dir().join("corpus/request_stream").join(name);
        observe(&std::fs::read(&path).expect("seed exists"))
    };
    let seen = |status: &str, dialed: &[&str]| Observed {
        status_line: Some(format!("HTTP/1.1 {status}")),
        dialed: dialed.iter().map(|a| a.parse().unwrap()).collect(),
    };
    let both = |o: Observed| [o.clone(), o];
    assert_eq!(
        seed("curl-connect"),
        both(seen("200 OK", &["140.82.121.6:443"]))
    );
    assert_eq!(
        seed("curl-get-absolute"),
        both(seen("200 OK", &["93.184.216.34:80"]))
    );
    assert_eq!(
        seed("connect-internal-exception"),
        both(seen("200 OK", &["10.20.0.7:8443"]))
    );
    assert_eq!(
        seed("plugin-wide-connect-literal"),
        both(seen("200 OK", &["10.20.0.9:8443"]))
    );
    for refused in [
        "connect-private-name",
        "connect-mixed-answer",
        "get-metadata-name",
        "connect-own-listener-by-name",
        "connect-own-listener-mapped",
    ] {
        assert_eq!(seed(refused), both(seen("403 Forbidden", &[])), "{refused}");
    }
    assert_eq!(seed("smuggle-obs-fold"), both(seen("400 Bad Request", &[])));
    // Report mode lets a rule denial through, never an address denial.
    assert_eq!(
        seed("no-rule-port"),
        [
            seen("403 Forbidden", &[]),
            seen("200 OK", &["93.184.216.34:22"])
        ]
    );
}
