//! egress-gate: an egress-enforcing HTTP(S) forward proxy.
// `deny`, not `forbid`: `sys` alone allows unsafe code for its system calls.
#![deny(unsafe_code)]

pub mod addr;
pub mod app;
pub mod audit;
pub mod config;
pub mod egress;
pub mod launch;
pub mod policy;
pub mod proxy;
pub mod server;
mod sys;
pub mod target;
