//! The audit trail: `net.req`, `policy.violation` and lifecycle records, one JSON object per line.
//!
//! Owns the single writer. Request tasks hand records to [`Audit`]; one dedicated thread appends
//! them in batches (a batch is one `write` and one flush), so concurrent requests never interleave
//! bytes and never contend on the file. [`Audit::commit`] resolves only once the record is written,
//! which is what lets the proxy refuse traffic it cannot account for. This module never decides
//! policy and never sees header values.

pub mod record;
pub mod redact;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use crate::config::AuditPath;
pub use record::Record;

/// How many records may wait for the writer before new ones are refused.
const QUEUE_DEPTH: usize = 65_536;
/// Largest number of records written in one batch.
const MAX_BATCH: usize = 1024;

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

type Ack = oneshot::Sender<Result<(), AuditError>>;

/// The bytes of an in-memory trail.
pub type MemoryTrail = Arc<std::sync::Mutex<Vec<u8>>>;

enum Job {
    Write(Box<Record>, Option<Ack>),
    Flush(Ack),
}

/// A handle to the audit trail; cheap to clone.
#[derive(Clone)]
pub struct Audit {
    tx: mpsc::Sender<Job>,
    ids: Arc<IdGenerator>,
}

/// Waits for the writer thread to drain and exit once every [`Audit`] handle is gone.
pub struct WriterHandle {
    thread: std::thread::JoinHandle<()>,
}

impl WriterHandle {
    /// Blocks until every queued record has been written.
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

impl Audit {
    /// Opens the trail (appending) and starts the writer thread.
    pub fn open(path: &AuditPath) -> io::Result<(Audit, WriterHandle)> {
        let sink = match path {
            AuditPath::Stdout => Sink::Stdout,
            AuditPath::File(p) => Sink::File(open_append(p)?, p.clone()),
        };
        Audit::start(sink)
    }

    fn start(sink: Sink) -> io::Result<(Audit, WriterHandle)> {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer_loop(sink, rx))?;
        let audit = Audit {
            tx,
            ids: Arc::new(IdGenerator::new()),
        };
        Ok((audit, WriterHandle { thread }))
    }

    /// A trail kept in memory (for fuzzing and tests): returns the handle and the shared buffer.
    #[doc(hidden)]
    pub fn in_memory() -> io::Result<(Audit, WriterHandle, MemoryTrail)> {
        let buffer = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (audit, writer) = Audit::start(Sink::Memory(buffer.clone()))?;
        Ok((audit, writer, buffer))
    }

    /// A fresh, unique audit id.
    pub fn next_id(&self) -> String {
        self.ids.next()
    }

    /// Writes a record and waits until it is in the trail.
    pub async fn commit(&self, record: Record) -> Result<(), AuditError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .try_send(Job::Write(Box::new(record), Some(ack)))
            .map_err(queue_error)?;
        done.await.unwrap_or(Err(AuditError::Closed))
    }

    /// Queues a record without waiting (for use where no task can wait, e.g. in `Drop`).
    pub fn submit(&self, record: Record) {
        if let Err(e) = self.tx.try_send(Job::Write(Box::new(record), None)) {
            tracing::error!(error = %queue_error(e), "audit record lost");
        }
    }

    /// Waits until everything queued so far is written.
    pub async fn flush(&self) -> Result<(), AuditError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Job::Flush(ack))
            .await
            .map_err(|_| AuditError::Closed)?;
        done.await.unwrap_or(Err(AuditError::Closed))
    }
}

fn queue_error<T>(e: mpsc::error::TrySendError<T>) -> AuditError {
    match e {
        mpsc::error::TrySendError::Full(_) => AuditError::Overloaded,
        mpsc::error::TrySendError::Closed(_) => AuditError::Closed,
    }
}

fn open_append(path: &PathBuf) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

enum Sink {
    Stdout,
    File(File, PathBuf),
    Memory(MemoryTrail),
}

impl Sink {
    fn write_batch(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(bytes)?;
                out.flush()
            }
            Sink::File(file, _) => file.write_all(bytes),
            Sink::Memory(buf) => {
                buf.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(bytes);
                Ok(())
            }
        }
    }
}

fn writer_loop(mut sink: Sink, mut rx: mpsc::Receiver<Job>) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut acks: Vec<Ack> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        buf.clear();
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(job) = next.take() {
            match job {
                Job::Write(record, ack) => {
                    serde_json::to_writer(&mut buf, &*record)
                        .expect("audit records always serialise");
                    buf.push(b'\n');
                    acks.extend(ack);
                }
                Job::Flush(ack) => acks.push(ack),
            }
            taken += 1;
            if taken < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        let result = sink.write_batch(&buf).map_err(|e| {
            let target = match &sink {
                Sink::Stdout => "stdout".to_string(),
                Sink::Memory(_) => "memory".to_string(),
                Sink::File(_, p) => p.display().to_string(),
            };
            tracing::error!(error = %e, trail = %target, "audit write failed");
            AuditError::Write(Arc::from(format!("{target}: {e}")))
        });
        for ack in acks.drain(..) {
            let _ = ack.send(result.clone());
        }
    }
}

/// Audit ids: a per-process random prefix and a counter, so ids are unique within a trail and
/// across restarts without a coordination point.
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

    fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}-{:010x}", self.prefix, n)
    }
}
