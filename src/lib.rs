//! egress-gate: an egress-enforcing HTTP(S) forward proxy.
#![forbid(unsafe_code)]

pub mod addr;
pub mod app;
pub mod audit;
pub mod config;
pub mod egress;
pub mod policy;
pub mod proxy;
pub mod server;
pub mod target;
