//! The single writer thread: batches records, seals them into the hash chain, appends, syncs,
//! rotates, and reports the outcome to every waiter.
//!
//! Group commit: everything queued when the thread wakes is sealed into one buffer, written with
//! one `write` and (with `fsync = "always"`) made durable with one `fdatasync`, then every waiter
//! in the batch is acknowledged. A failed batch is cut back off the file (`set_len`) and the chain
//! is not advanced, so a full disk never leaves a torn record inside the trail; the next batch
//! simply tries again, which is how service resumes by itself once writing works.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::chain::{Chain, ChainKey, GENESIS, split_sealed};
use super::queue::{Queue, Taken};
use super::record::{self, Record, TrailOpen};
use super::{Ack, AuditError, Job, MemoryTrail};
use crate::config::FsyncMode;

/// How often `fsync = "interval"` syncs.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Jobs' and records' buffer capacity kept between batches (a burst may grow them far beyond).
const KEEP_BATCH_CAPACITY: usize = 1024;
/// Bytes of the sealed-batch buffer kept between batches.
const KEEP_BUF_BYTES: usize = 64 * 1024;
/// Largest tail read back when resuming an existing trail.
const TAIL_WINDOW: u64 = 1 << 20;

/// Where the trail goes.
pub(super) enum Target {
    Stdout,
    File {
        path: PathBuf,
        max_bytes: Option<u64>,
        keep: u32,
    },
    Memory(MemoryTrail),
}

/// The buffers one batch passes through, kept between batches.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) jobs: Vec<Job>,
    records: Vec<Record>,
    acks: Vec<Ack>,
}

/// Everything the writer thread owns.
pub(super) struct Writer {
    target: Target,
    file: Option<OpenFile>,
    chain: Chain,
    algorithm: &'static str,
    fsync: FsyncMode,
    last_sync: Instant,
    unsynced: bool,
    /// The policy hash stamped on records the writer makes itself.
    policy_sha256: Arc<RwLock<Arc<str>>>,
    /// The `trail.open` record that must lead the current file, until it is written.
    pending_open: Option<TrailOpen>,
    buf: Vec<u8>,
}

struct OpenFile {
    file: File,
    len: u64,
    /// (device, inode) of what we opened: a different answer from the path means the file was
    /// removed or moved away, and the next batch recreates it.
    identity: (u64, u64),
}

/// Why the trail could not be opened at start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error(
        "{path}: the last record is not a sealed egress-gate record; move the file aside to start a new trail"
    )]
    NotATrail { path: String },
}

impl Writer {
    pub(super) fn open(
        target: Target,
        key: ChainKey,
        fsync: FsyncMode,
        policy_sha256: Arc<RwLock<Arc<str>>>,
    ) -> Result<Writer, OpenError> {
        let mut writer = Writer {
            algorithm: key.algorithm(),
            chain: Chain::new(key.clone(), 0, GENESIS),
            target,
            file: None,
            fsync,
            last_sync: Instant::now(),
            unsynced: false,
            policy_sha256,
            pending_open: None,
            buf: Vec::with_capacity(KEEP_BUF_BYTES),
        };
        let mut torn = 0;
        if let Target::File { path, .. } = &writer.target {
            let shown = path.display().to_string();
            let (file, resume) = open_and_resume(path).map_err(|source| OpenError::Io {
                path: shown.clone(),
                source,
            })?;
            torn = resume.torn_bytes;
            if open_len_is_nonzero(&file) {
                let (seq, head) = resume.last.ok_or(OpenError::NotATrail { path: shown })?;
                writer.chain = Chain::new(key, seq + 1, head);
            }
            writer.file = Some(file);
        }
        writer.pending_open = Some(writer.trail_open("start", torn));
        Ok(writer)
    }

    fn trail_open(&self, reason: &'static str, torn_bytes: u64) -> TrailOpen {
        TrailOpen {
            ts: record::now(),
            event: record::TRAIL_OPEN,
            reason,
            chain: self.algorithm,
            torn_bytes,
            policy_sha256: self
                .policy_sha256
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// Runs until every sender is gone, then syncs what is pending.
    pub(super) fn run(mut self, queue: &Queue<Job>) {
        // Waking this thread must not preempt a request task: on a busy CPU it then runs when
        // the runtime's thread waits anyway, and finds a bigger batch (see README, Performance).
        if let Err(e) = crate::sys::batch_scheduling_for_current_thread() {
            tracing::debug!(error = %e, "audit writer keeps the default scheduling policy");
        }
        let mut batch = Batch::default();
        loop {
            let deadline = self.unsynced.then(|| self.last_sync + SYNC_INTERVAL);
            match queue.take(deadline, &mut batch.jobs) {
                Taken::Jobs => self.process(&mut batch),
                Taken::Timeout => self.sync(),
                Taken::Closed => break,
            }
        }
        self.sync();
    }

    /// Writes one batch of jobs (as one write and at most one sync) and answers every waiter.
    pub(super) fn process(&mut self, batch: &mut Batch) {
        let mut flush = false;
        for job in batch.jobs.drain(..) {
            match job {
                Job::Write(record, ack) => {
                    batch.records.push(record);
                    batch.acks.extend(ack);
                }
                Job::Flush(ack) => {
                    flush = true;
                    batch.acks.push(ack);
                }
                Job::Reopen => self.reopen("reopen"),
                Job::SetPolicy(sha) => {
                    *self
                        .policy_sha256
                        .write()
                        .unwrap_or_else(|e| e.into_inner()) = sha;
                }
            }
        }
        let result = self.write_batch(&batch.records, flush);
        batch.records.clear();
        for ack in batch.acks.drain(..) {
            let _ = ack.send(result.clone());
        }
        // A burst can leave these buffers huge; keep what a busy steady state needs.
        batch.jobs.shrink_to(KEEP_BATCH_CAPACITY);
        batch.records.shrink_to(KEEP_BATCH_CAPACITY);
        self.buf.shrink_to(KEEP_BUF_BYTES);
    }

    fn write_batch(&mut self, records: &[Record], flush: bool) -> Result<(), AuditError> {
        if records.is_empty() {
            if flush {
                self.sync();
            }
            return Ok(());
        }
        self.ensure_file()?;
        self.maybe_rotate();
        let mut chain = self.chain.clone();
        self.buf.clear();
        if let Some(open) = &self.pending_open {
            seal(&mut chain, &Record::TrailOpen(open.clone()), &mut self.buf);
        }
        for record in records {
            seal(&mut chain, record, &mut self.buf);
        }
        self.append()?;
        self.chain = chain;
        self.pending_open = None;
        match self.fsync {
            FsyncMode::Always => self.sync(),
            FsyncMode::Interval if flush || self.last_sync.elapsed() >= SYNC_INTERVAL => {
                self.sync()
            }
            FsyncMode::Interval => self.unsynced = true,
            FsyncMode::Never => {}
        }
        Ok(())
    }

    /// Appends the batch, or leaves the trail exactly as it was.
    fn append(&mut self) -> Result<(), AuditError> {
        let result = match &mut self.target {
            Target::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(&self.buf).and_then(|()| out.flush())
            }
            Target::Memory(m) => {
                m.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&self.buf);
                Ok(())
            }
            Target::File { .. } => {
                let open = self.file.as_mut().expect("ensure_file opened it");
                match open.file.write_all(&self.buf) {
                    Ok(()) => {
                        open.len += self.buf.len() as u64;
                        Ok(())
                    }
                    Err(e) => {
                        // Cut off whatever part of the batch made it, so no torn record stays.
                        let _ = open.file.set_len(open.len);
                        Err(e)
                    }
                }
            }
        };
        result.map_err(|e| self.failure(e))
    }

    fn failure(&self, e: io::Error) -> AuditError {
        let target = match &self.target {
            Target::Stdout => "stdout".to_string(),
            Target::Memory(_) => "memory".to_string(),
            Target::File { path, .. } => path.display().to_string(),
        };
        tracing::error!(error = %e, trail = %target, "audit write failed; refusing new requests until it works");
        AuditError::Write(Arc::from(format!("{target}: {e}")))
    }

    fn sync(&mut self) {
        if let Some(open) = &self.file
            && let Err(e) = open.file.sync_data()
        {
            tracing::error!(error = %e, "audit fsync failed");
        }
        self.last_sync = Instant::now();
        self.unsynced = false;
    }

    /// Makes sure the file at the trail's path is the one we write: recreates it if it was
    /// removed or moved away.
    fn ensure_file(&mut self) -> Result<(), AuditError> {
        let Target::File { path, .. } = &self.target else {
            return Ok(());
        };
        let current = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
        match (&self.file, current) {
            (Some(open), Some(id)) if open.identity == id => Ok(()),
            _ => {
                let path = path.clone();
                let reason = if self.file.is_some() {
                    "recreated"
                } else {
                    "reopen"
                };
                self.file = Some(open_for_append(&path).map_err(|e| self.failure(e))?);
                tracing::warn!(trail = %path.display(), reason, "audit trail file (re)created");
                self.pending_open = Some(self.trail_open(reason, 0));
                Ok(())
            }
        }
    }

    /// SIGUSR1: start writing to whatever is at the path now (external rotation moved ours).
    fn reopen(&mut self, reason: &'static str) {
        let Target::File { path, .. } = &self.target else {
            return;
        };
        match open_for_append(path) {
            Ok(file) => {
                self.sync();
                self.file = Some(file);
                self.pending_open = Some(self.trail_open(reason, 0));
            }
            Err(e) => {
                tracing::error!(error = %e, trail = %path.display(), "audit reopen failed; keeping the current file");
            }
        }
    }

    /// Size-based rotation: `path` → `path.1` → … → `path.keep` (the oldest is dropped).
    fn maybe_rotate(&mut self) {
        let Target::File {
            path,
            max_bytes: Some(max),
            keep,
        } = &self.target
        else {
            return;
        };
        let Some(open) = &self.file else { return };
        if open.len < *max {
            return;
        }
        let (path, keep) = (path.clone(), *keep);
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
        self.sync();
        for n in (1..keep).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        if let Err(e) = std::fs::rename(&path, numbered(1)) {
            tracing::error!(error = %e, "audit rotation failed; continuing in the current file");
            return;
        }
        match open_for_append(&path) {
            Ok(file) => {
                self.file = Some(file);
                self.pending_open = Some(self.trail_open("rotate", 0));
            }
            Err(e) => {
                // The next batch's ensure_file retries the open and fails closed meanwhile.
                tracing::error!(error = %e, "cannot open a new audit file after rotation");
                self.file = None;
            }
        }
    }
}

fn seal(chain: &mut Chain, record: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    serde_json::to_writer(&mut *out, record).expect("audit records always serialise");
    chain.seal_in_place(out, start);
}

fn open_for_append(path: &Path) -> io::Result<OpenFile> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)?;
    let meta = file.metadata()?;
    Ok(OpenFile {
        len: meta.len(),
        identity: (meta.dev(), meta.ino()),
        file,
    })
}

/// Where an existing trail left off.
struct Resume {
    /// `(seq, hash)` of the last complete record, if it is a sealed record.
    last: Option<(u64, [u8; 32])>,
    /// Bytes of a torn final line that were cut off.
    torn_bytes: u64,
}

/// Opens the trail for appending; when it already holds records, finds where the chain left off
/// and cuts off a torn final line (a crash mid-write), which is then reported in `trail.open`.
fn open_and_resume(path: &Path) -> io::Result<(OpenFile, Resume)> {
    let mut open = open_for_append(path)?;
    if open.len == 0 {
        return Ok((
            open,
            Resume {
                last: None,
                torn_bytes: 0,
            },
        ));
    }
    let start = open.len.saturating_sub(TAIL_WINDOW);
    open.file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    (&open.file).take(TAIL_WINDOW).read_to_end(&mut tail)?;
    let complete_end = tail.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let torn = (tail.len() - complete_end) as u64;
    if torn > 0 {
        open.file.set_len(open.len - torn)?;
        open.len -= torn;
    }
    let complete = &tail[..complete_end];
    let last_line = complete
        .strip_suffix(b"\n")
        .map(|c| c.rsplit(|b| *b == b'\n').next().unwrap_or(c));
    let last = last_line.and_then(|line| {
        let (_, hash) = split_sealed(line)?;
        #[derive(serde::Deserialize)]
        struct Seq {
            seq: u64,
        }
        let seq: Seq = serde_json::from_slice(line).ok()?;
        Some((seq.seq, hash))
    });
    Ok((
        open,
        Resume {
            last,
            torn_bytes: torn,
        },
    ))
}

/// Whether an opened trail (after cutting a torn tail) still holds records to continue from.
fn open_len_is_nonzero(open: &OpenFile) -> bool {
    open.len > 0
}
