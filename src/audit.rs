//! The audit trail: tamper-evident, durable before egress, redacted, fail-closed.
//!
//! Owns the single interface request code uses to record what happened. Records go to one writer
//! thread (see `writer`) which seals them into a hash chain (see `chain`), appends them in
//! batches and syncs according to `[audit] fsync`. [`Audit::commit`] resolves only once the
//! record is in the trail — and, with `fsync = "always"`, on stable storage — which is what lets
//! the proxy refuse traffic it cannot account for. This module never decides policy and never
//! sees header values.

pub mod chain;
mod queue;
pub mod record;
pub mod redact;
pub mod verify;
mod writer;

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::oneshot;

pub use chain::ChainKey;
pub use queue::LAZY_DELAY;
pub use record::Record;
pub use writer::{OpenError, SYNC_INTERVAL};

use crate::config::{AuditConfig, AuditPath, FsyncMode};
use queue::{Queue, Refused};
use writer::{Target, Writer};

/// How many records may wait for the writer before new ones are refused (fail closed, 503).
const QUEUE_DEPTH: usize = 16_384;
/// Shortest HMAC key accepted.
pub const MIN_KEY_BYTES: usize = 16;

/// Why a record could not be written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("audit trail is not writable: {0}")]
    Write(Arc<str>),
    #[error("audit writer has stopped")]
    Closed,
    #[error("audit queue is full")]
    Overloaded,
}

/// Why the trail could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot read audit key file {path}: {source}")]
    KeyRead { path: String, source: io::Error },
    #[error("audit key file {path} holds {len} bytes; use at least {MIN_KEY_BYTES} random bytes")]
    KeyTooShort { path: String, len: usize },
    #[error("cannot open audit trail {0}")]
    Open(#[from] OpenError),
    #[error("cannot start the audit writer: {0}")]
    Thread(io::Error),
}

type Ack = oneshot::Sender<Result<(), AuditError>>;

/// The bytes of an in-memory trail.
pub type MemoryTrail = Arc<std::sync::Mutex<Vec<u8>>>;

// Jobs sit inline in the queue's vector, so a record costs no allocation of its own; the rare
// small variants wasting space there does not matter.
#[allow(clippy::large_enum_variant)]
enum Job {
    Write(Record, Option<Ack>),
    Flush(Ack),
    /// SIGUSR1: reopen the path (external log rotation).
    Reopen,
    /// The policy changed: records the writer makes itself carry the new hash.
    SetPolicy(Arc<str>),
}

/// A handle to the audit trail; cheap to clone.
#[derive(Clone)]
pub struct Audit {
    tx: Arc<Sender>,
    ids: Arc<IdGenerator>,
}

/// Where jobs go; when the last handle drops, the writer drains and stops.
enum Sender {
    /// The writer thread's queue (the proxy).
    Thread(Arc<Queue<Job>>),
    /// The writer itself, run on the caller's thread, each job as its own batch: no second
    /// thread for a fuzzer's paused clock to wait on. Only for in-memory trails.
    Inline(Box<std::sync::Mutex<(Writer, writer::Batch)>>),
}

impl Sender {
    fn send(&self, job: Job, urgent: bool) -> Result<(), AuditError> {
        match self {
            Sender::Thread(queue) => queue.push(job, urgent).map_err(|refused| match refused {
                Refused::Full => AuditError::Overloaded,
                Refused::Closed => AuditError::Closed,
            }),
            Sender::Inline(writer) => {
                let mut guard = writer.lock().unwrap_or_else(|e| e.into_inner());
                let (writer, batch) = &mut *guard;
                batch.jobs.push(job);
                writer.process(batch);
                Ok(())
            }
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        if let Sender::Thread(queue) = self {
            queue.close();
        }
    }
}

/// Waits for the writer thread to drain and exit once every [`Audit`] handle is gone.
pub struct WriterHandle {
    /// `None` for an inline writer, which has no thread.
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WriterHandle {
    /// Blocks until every queued record has been written.
    pub fn join(self) {
        if let Some(thread) = self.thread {
            let _ = thread.join();
        }
    }
}

/// Reads an HMAC key file: its bytes are the key (at least [`MIN_KEY_BYTES`]).
pub fn read_key_file(path: &Path) -> Result<ChainKey, SetupError> {
    let shown = path.display().to_string();
    let key = std::fs::read(path).map_err(|source| SetupError::KeyRead {
        path: shown.clone(),
        source,
    })?;
    if key.len() < MIN_KEY_BYTES {
        return Err(SetupError::KeyTooShort {
            path: shown,
            len: key.len(),
        });
    }
    Ok(ChainKey::hmac(key))
}

impl Audit {
    /// Opens the trail configured in `[audit]` (continuing an existing chain) and starts the writer.
    pub fn open(
        config: &AuditConfig,
        policy_sha256: &str,
    ) -> Result<(Audit, WriterHandle), SetupError> {
        let key = match &config.key_file {
            Some(path) => read_key_file(path)?,
            None => ChainKey::none(),
        };
        let target = match &config.path {
            AuditPath::Stdout => Target::Stdout,
            AuditPath::File(path) => Target::File {
                path: path.clone(),
                max_bytes: config.max_bytes,
                keep: config.keep,
            },
        };
        Audit::start(target, key, config.fsync, policy_sha256)
    }

    /// A trail kept in memory (for fuzzing and tests): the handle and the shared buffer.
    #[doc(hidden)]
    pub fn in_memory() -> Result<(Audit, WriterHandle, MemoryTrail), SetupError> {
        let buffer = MemoryTrail::default();
        let (audit, writer) = Audit::start(
            Target::Memory(buffer.clone()),
            ChainKey::none(),
            FsyncMode::Never,
            "",
        )?;
        Ok((audit, writer, buffer))
    }

    /// Like [`Audit::in_memory`], but every record is sealed on the caller's thread before
    /// `commit` returns: no writer thread (for fuzzing on a paused clock).
    #[doc(hidden)]
    pub fn in_memory_inline() -> Result<(Audit, WriterHandle, MemoryTrail), SetupError> {
        let buffer = MemoryTrail::default();
        let sha = Arc::new(RwLock::new(Arc::from("")));
        let writer = Writer::open(
            Target::Memory(buffer.clone()),
            ChainKey::none(),
            FsyncMode::Never,
            sha,
        )?;
        let audit = Audit {
            tx: Arc::new(Sender::Inline(Box::new(std::sync::Mutex::new((
                writer,
                writer::Batch::default(),
            ))))),
            ids: Arc::new(IdGenerator::new()),
        };
        Ok((audit, WriterHandle { thread: None }, buffer))
    }

    fn start(
        target: Target,
        key: ChainKey,
        fsync: FsyncMode,
        policy_sha256: &str,
    ) -> Result<(Audit, WriterHandle), SetupError> {
        let sha = Arc::new(RwLock::new(Arc::from(policy_sha256)));
        let writer = Writer::open(target, key, fsync, sha)?;
        let queue = Arc::new(Queue::new(QUEUE_DEPTH));
        let rx = queue.clone();
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(&rx))
            .map_err(SetupError::Thread)?;
        let audit = Audit {
            tx: Arc::new(Sender::Thread(queue)),
            ids: Arc::new(IdGenerator::new()),
        };
        Ok((
            audit,
            WriterHandle {
                thread: Some(thread),
            },
        ))
    }

    /// A fresh, unique audit id.
    pub fn next_id(&self) -> Arc<str> {
        self.ids.next()
    }

    /// Writes a record and waits until it is in the trail (and synced, per `[audit] fsync`).
    pub async fn commit(&self, record: Record) -> Result<(), AuditError> {
        let (ack, done) = oneshot::channel();
        self.tx.send(Job::Write(record, Some(ack)), true)?;
        done.await.unwrap_or(Err(AuditError::Closed))
    }

    /// Queues a record without waiting, for records nothing has to wait for (the `net.req`
    /// that closes an exchange, also from `Drop`). It is written with the next batch, at most
    /// [`LAZY_DELAY`] later; a failure to write it is logged by the writer.
    pub fn submit(&self, record: Record) {
        if let Err(e) = self.tx.send(Job::Write(record, None), false) {
            tracing::error!(error = %e, "audit record lost");
        }
    }

    /// Waits until everything queued so far is written and synced.
    pub async fn flush(&self) -> Result<(), AuditError> {
        let (ack, done) = oneshot::channel();
        self.tx.send(Job::Flush(ack), true)?;
        done.await.unwrap_or(Err(AuditError::Closed))
    }

    /// Reopens the trail path (after an external tool moved the file away).
    pub fn reopen(&self) {
        let _ = self.tx.send(Job::Reopen, true);
    }

    /// Records the writer makes itself will carry this policy hash from now on.
    pub fn set_policy(&self, sha256: &str) {
        let _ = self.tx.send(Job::SetPolicy(Arc::from(sha256)), true);
    }
}

/// Audit ids: a per-process random prefix and a counter, so ids are unique within a trail and
/// across restarts without a coordination point, and sort in the order requests arrived.
struct IdGenerator {
    prefix: u32,
    counter: AtomicU64,
}

impl IdGenerator {
    fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.write_u32(std::process::id());
        Self {
            prefix: h.finish() as u32,
            counter: AtomicU64::new(0),
        }
    }

    fn next(&self) -> Arc<str> {
        use std::io::Write;
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        if n >= 1 << 40 {
            // Past ten hex digits the id only grows longer; it stays unique.
            return Arc::from(format!("{:08x}-{:010x}", self.prefix, n));
        }
        let mut id = [0u8; 19];
        write!(&mut id[..], "{:08x}-{:010x}", self.prefix, n).expect("19 bytes hold the id");
        Arc::from(std::str::from_utf8(&id).expect("hex digits are ASCII"))
    }
}

#[cfg(test)]
mod tests;
