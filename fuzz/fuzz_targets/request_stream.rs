//! `cargo +nightly fuzz run request_stream`: see `fuzz/README.md` and `checks/request_stream.rs` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| egress_gate_fuzz::request_stream::check(data));
