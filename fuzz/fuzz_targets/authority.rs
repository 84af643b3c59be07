//! `cargo +nightly fuzz run authority`: see `fuzz/README.md` and `checks/authority.rs` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| egress_gate_fuzz::authority::check(data));
