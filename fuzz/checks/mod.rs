//! The fuzz targets' checks: each takes arbitrary bytes and panics when an invariant of egress-gate
//! breaks.
//!
//! Shared by two callers, so that what CI guards on stable is exactly what the fuzzer explores:
//! the cargo-fuzz binaries in `fuzz/fuzz_targets/` (nightly, libFuzzer) and the corpus replay in
//! `tests/fuzz_replay.rs`, which includes this module by path and feeds it every file under
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`. A check never touches the network or
//! the file system, and is deterministic given its input (the request stream runs on a paused
//! clock). It may only use crates the main package also depends on.

pub mod audit_verify;
pub mod authority;
pub mod policy_toml;
pub mod reference;
pub mod request_stream;

/// Whether `EGRESS_GATE_FUZZ_KNOWN` (comma-separated) names `bug`: a known, reported product bug the
/// checks then tolerate, so a fuzzing run can get past it to find others. Never set in CI: without
/// it every invariant is enforced. Names: `hang` (a connection left open with no timeout armed).
pub fn known(bug: &str) -> bool {
    static KNOWN: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    KNOWN
        .get_or_init(|| {
            std::env::var("EGRESS_GATE_FUZZ_KNOWN")
                .unwrap_or_default()
                .split(',')
                .map(|s| s.trim().to_string())
                .collect()
        })
        .iter()
        .any(|k| k == bug)
}

/// A check: panics when an invariant breaks on this input.
pub type Check = fn(&[u8]);

/// Every target: its directory name under `fuzz/corpus/` and `fuzz/regressions/`, and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("audit_verify", audit_verify::check),
    ("authority", authority::check),
    ("policy_toml", policy_toml::check),
    ("request_stream", request_stream::check),
];
