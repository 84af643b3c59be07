//! TEMPORARY stub until the classifier lands.
use std::net::{IpAddr, Ipv4Addr};
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NonPublic { pub block: &'static str, pub name: &'static str }
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class { Public, NonPublic(NonPublic) }
pub fn classify(ip: IpAddr) -> Class { if ip.is_loopback() { Class::NonPublic(NonPublic{block:"127.0.0.0/8",name:"loopback"}) } else { Class::Public } }
pub fn parse_ipv4_loose(s: &str) -> Option<Ipv4Addr> { s.parse().ok() }
pub fn looks_numeric_but_invalid(s: &str) -> bool { s.split('.').last().map_or(false, |l| l.starts_with(|c: char| c.is_ascii_digit())) && parse_ipv4_loose(s).is_none() }
