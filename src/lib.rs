//! egress-gate: an egress-enforcing HTTP(S) forward proxy.
#![forbid(unsafe_code)]

pub mod addr;
pub mod config;
pub mod policy;
pub mod target;
pub mod audit;
pub mod egress;
pub mod proxy;
pub mod server;
pub mod app;
