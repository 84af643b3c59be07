//! `cargo +nightly fuzz run audit_verify`: see `fuzz/README.md` and `checks/audit_verify.rs` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| egress_gate_fuzz::audit_verify::check(data));
