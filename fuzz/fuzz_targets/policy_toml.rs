//! `cargo +nightly fuzz run policy_toml`: see `fuzz/README.md` and `checks/policy_toml.rs` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| egress_gate_fuzz::policy_toml::check(data));
