//! egress-gate: an egress-enforcing HTTP(S) forward proxy.
#![forbid(unsafe_code)]

pub mod addr;
pub mod config;
pub mod target;
