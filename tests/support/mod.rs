//! Shared integration-test support: a real origin, a real DNS responder, the real proxy on
//! loopback, and small clients that speak raw bytes so tests control exactly what is sent.
#![allow(dead_code)]

pub mod client;
pub mod dns;
pub mod launch;
pub mod origin;
pub mod process;
pub mod proxy;
pub mod schema;
