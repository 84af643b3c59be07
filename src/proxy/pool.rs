//! Idle upstream HTTP/1.1 connections, keyed by the vetted address AND the host they were opened
//! for, so a connection is only reused for the exact (address, name) pair policy approved.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::client::conn::http1::SendRequest;

use super::forward::UpBody;
use crate::egress::VettedAddr;

/// Most idle connections kept per key.
const MAX_IDLE_PER_KEY: usize = 32;

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
    idle: Mutex<HashMap<PoolKey, Vec<Idle>>>,
    idle_timeout: Duration,
}

impl Pool {
    pub fn new(idle_timeout: Duration) -> Pool {
        Pool {
            idle: Mutex::new(HashMap::new()),
            idle_timeout,
        }
    }

    /// An idle connection for `key` that is still open and ready, if any.
    pub fn checkout(&self, key: &PoolKey) -> Option<SendRequest<UpBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(key)?;
        let found = loop {
            let Some(conn) = list.pop() else { break None };
            if conn.since.elapsed() < self.idle_timeout && conn.sender.is_ready() {
                break Some(conn.sender);
            }
        };
        if list.is_empty() {
            idle.remove(key);
        }
        found
    }

    /// Returns a connection whose last response has been read completely.
    pub fn checkin(self: &Arc<Self>, key: PoolKey, mut sender: SendRequest<UpBody>) {
        if sender.is_ready() {
            self.put(key, sender);
            return;
        }
        // The connection task may not have noticed the end of the body yet.
        let pool = self.clone();
        tokio::spawn(async move {
            if tokio::time::timeout(Duration::from_secs(1), sender.ready())
                .await
                .is_ok_and(|r| r.is_ok())
            {
                pool.put(key, sender);
            }
        });
    }

    fn put(&self, key: PoolKey, sender: SendRequest<UpBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(key).or_default();
        list.retain(|c| c.since.elapsed() < self.idle_timeout && !c.sender.is_closed());
        if list.len() < MAX_IDLE_PER_KEY {
            list.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }
}
