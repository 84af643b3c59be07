//! Idle upstream HTTP/1.1 connections, keyed by the vetted address AND the host they were opened
//! for, so a connection is only reused for the exact (address, name) pair policy approved.
//!
//! A connection goes back into the pool as soon as its response body has been relayed in full,
//! even if its connection task has not yet noticed that the exchange is over; whoever takes it
//! out next waits (briefly) for it to be ready. That keeps checkin free of extra tasks and timers,
//! and a client's next request finds its connection instead of racing it and dialing a new one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::client::conn::http1::SendRequest;

use super::forward::UpBody;
use crate::egress::VettedAddr;

/// Most idle connections kept per key: enough for a busy client's whole set of keep-alive
/// connections to one origin (fewer, and every burst over the cap dials anew).
const MAX_IDLE_PER_KEY: usize = 256;
/// How long a checked-out connection may take to become ready before another is tried. A
/// connection whose last response was read completely is ready within one poll of its task;
/// this only bounds the wait on a starved or wedged one.
const READY_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct PoolKey {
    pub addr: VettedAddr,
    pub host: Arc<str>,
}

struct Idle {
    sender: SendRequest<UpBody>,
    since: Instant,
}

/// The idle-connection pool.
pub(super) struct Pool {
    idle: Mutex<IdleSet>,
    idle_timeout: Duration,
}

struct IdleSet {
    by_key: HashMap<PoolKey, Vec<Idle>>,
    /// When expired connections were last dropped from every key, including keys never asked
    /// for again (their connections would otherwise stay open).
    swept: Instant,
}

impl Pool {
    pub fn new(idle_timeout: Duration) -> Pool {
        Pool {
            idle: Mutex::new(IdleSet {
                by_key: HashMap::new(),
                swept: Instant::now(),
            }),
            idle_timeout,
        }
    }

    /// An idle connection for `key` that is open and ready to send, if any.
    pub async fn checkout(&self, key: &PoolKey) -> Option<SendRequest<UpBody>> {
        loop {
            let mut sender = self.pop(key)?;
            if sender.is_ready() {
                return Some(sender);
            }
            // Checked in right after its body ended: its task has yet to catch up.
            if let Ok(Ok(())) = tokio::time::timeout(READY_WAIT, sender.ready()).await {
                return Some(sender);
            }
        }
    }

    /// The most recently used connection for `key` that has not expired or closed.
    fn pop(&self, key: &PoolKey) -> Option<SendRequest<UpBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.by_key.get_mut(key)?;
        let found = loop {
            let Some(conn) = list.pop() else { break None };
            if self.usable(&conn) {
                break Some(conn.sender);
            }
        };
        if list.is_empty() {
            idle.by_key.remove(key);
        }
        found
    }

    /// Returns a connection whose last response has been read completely.
    pub fn checkin(&self, key: PoolKey, sender: SendRequest<UpBody>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if now.duration_since(idle.swept) >= self.idle_timeout / 2 {
            idle.swept = now;
            idle.by_key.retain(|_, list| {
                list.retain(|c| self.usable(c));
                !list.is_empty()
            });
        }
        let list = idle.by_key.entry(key).or_default();
        if list.len() >= MAX_IDLE_PER_KEY {
            list.retain(|c| self.usable(c));
        }
        if list.len() < MAX_IDLE_PER_KEY {
            list.push(Idle { sender, since: now });
        }
    }

    fn usable(&self, conn: &Idle) -> bool {
        conn.since.elapsed() < self.idle_timeout && !conn.sender.is_closed()
    }
}
