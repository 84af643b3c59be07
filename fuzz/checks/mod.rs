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

/// A check: panics when an invariant breaks on this input.
pub type Check = fn(&[u8]);

/// Every target: its directory name under `fuzz/corpus/` and `fuzz/regressions/`, and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("audit_verify", audit_verify::check),
    ("authority", authority::check),
    ("policy_toml", policy_toml::check),
    ("request_stream", request_stream::check),
];
