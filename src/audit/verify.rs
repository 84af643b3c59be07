//! `egress-gate audit verify`: checks a trail (one file, or rotated files in order) against its
//! hash chain and says exactly where and how it is broken. Never trusts a line it has not
//! verified, and tells a torn final line (a crash mid-write) apart from tampering.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::chain::{ChainKey, GENESIS, parse_lower_hex, split_sealed};

/// A trail that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Hash of the last verified record: anchor it somewhere else to detect truncation later.
    pub head: [u8; 32],
    /// Set when the first record links to an earlier file that was not given.
    pub starts_after: Option<[u8; 32]>,
    /// A final line without its newline: the writer was cut off mid-record.
    pub truncated_tail: Option<TruncatedTail>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruncatedTail {
    pub file: PathBuf,
    pub line: usize,
    pub bytes: usize,
}

/// What is wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: usize,
    /// The sequence number the record claims, when it could be read.
    pub seq: Option<u64>,
    pub kind: ProblemKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemKind {
    Unreadable(String),
    NotJson,
    NotSealed,
    /// The hash does not match the record's bytes.
    Edited {
        keyed: bool,
    },
    Missing {
        expected_seq: u64,
        count: u64,
    },
    Reordered {
        expected_seq: u64,
    },
    /// `seq` is right but `prev` does not name the previous record.
    BrokenLink {
        expected_prev: [u8; 32],
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.file.display(), self.line)?;
        if let Some(seq) = self.seq {
            write!(f, "seq {seq}: ")?;
        }
        match &self.kind {
            ProblemKind::Unreadable(e) => write!(f, "cannot read: {e}"),
            ProblemKind::NotJson => write!(f, "not a JSON record (edited or corrupted)"),
            ProblemKind::NotSealed => write!(
                f,
                "record has no seq/prev/hash (not written by egress-gate, or edited)"
            ),
            ProblemKind::Edited { keyed: true } => {
                write!(
                    f,
                    "hash does not match: the record was edited, or the key is wrong"
                )
            }
            ProblemKind::Edited { keyed: false } => write!(
                f,
                "hash does not match: the record was edited (or the trail is HMAC-keyed: pass --key-file)"
            ),
            ProblemKind::Missing {
                expected_seq,
                count,
            } => {
                write!(
                    f,
                    "{count} record(s) missing before this one (expected seq {expected_seq})"
                )
            }
            ProblemKind::Reordered { expected_seq } => {
                write!(
                    f,
                    "out of order or duplicated (expected seq {expected_seq})"
                )
            }
            ProblemKind::BrokenLink { expected_prev } => write!(
                f,
                "prev does not link to the previous record (expected {}): a record was replaced",
                hex::encode(expected_prev)
            ),
        }
    }
}

#[derive(Deserialize)]
struct Link {
    seq: u64,
    prev: String,
}

/// Verifies `files` in order as one chain.
pub fn verify_files(files: &[PathBuf], key: &ChainKey) -> Result<Summary, Problem> {
    let mut v = Verifier::new(key);
    for (i, file) in files.iter().enumerate() {
        let bytes = std::fs::read(file).map_err(|e| Problem {
            file: file.clone(),
            line: 0,
            seq: None,
            kind: ProblemKind::Unreadable(e.to_string()),
        })?;
        v.feed(file, &bytes, i + 1 == files.len())?;
    }
    Ok(v.summary)
}

/// Verifies one trail held in memory (for fuzzing and tests).
pub fn verify_bytes(bytes: &[u8], key: &ChainKey) -> Result<Summary, Problem> {
    let mut v = Verifier::new(key);
    v.feed(Path::new("<memory>"), bytes, true)?;
    Ok(v.summary)
}

struct Verifier<'k> {
    key: &'k ChainKey,
    summary: Summary,
    /// `(next seq, head)` once the first record has been read.
    position: Option<(u64, [u8; 32])>,
}

impl<'k> Verifier<'k> {
    fn new(key: &'k ChainKey) -> Self {
        Verifier {
            key,
            summary: Summary {
                records: 0,
                first_seq: None,
                last_seq: None,
                head: GENESIS,
                starts_after: None,
                truncated_tail: None,
            },
            position: None,
        }
    }

    fn feed(&mut self, file: &Path, bytes: &[u8], last_file: bool) -> Result<(), Problem> {
        let mut line_no = 0;
        let mut rest = bytes;
        while !rest.is_empty() {
            line_no += 1;
            let (line, complete) = match rest.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    let line = &rest[..i];
                    rest = &rest[i + 1..];
                    (line, true)
                }
                None => {
                    let line = rest;
                    rest = &[];
                    (line, false)
                }
            };
            if !complete && last_file {
                // Whatever it holds, a record without its newline was never completely written.
                self.summary.truncated_tail = Some(TruncatedTail {
                    file: file.to_path_buf(),
                    line: line_no,
                    bytes: line.len(),
                });
                return Ok(());
            }
            self.check_line(file, line_no, line)?;
        }
        Ok(())
    }

    fn check_line(&mut self, file: &Path, line_no: usize, line: &[u8]) -> Result<(), Problem> {
        let problem = |seq: Option<u64>, kind: ProblemKind| Problem {
            file: file.to_path_buf(),
            line: line_no,
            seq,
            kind,
        };
        let link: Link =
            serde_json::from_slice(line).map_err(|_| problem(None, ProblemKind::NotJson))?;
        let seq = Some(link.seq);
        let (canonical, claimed) =
            split_sealed(line).ok_or_else(|| problem(seq, ProblemKind::NotSealed))?;
        if self.key.digest(&canonical) != claimed {
            return Err(problem(
                seq,
                ProblemKind::Edited {
                    keyed: self.key.algorithm() != "sha256",
                },
            ));
        }
        let prev = parse_lower_hex(link.prev.as_bytes())
            .ok_or_else(|| problem(seq, ProblemKind::NotSealed))?;
        match self.position {
            None => {
                self.summary.first_seq = Some(link.seq);
                if prev != GENESIS || link.seq != 0 {
                    self.summary.starts_after = Some(prev);
                }
            }
            Some((expected_seq, head)) => {
                if link.seq > expected_seq {
                    return Err(problem(
                        seq,
                        ProblemKind::Missing {
                            expected_seq,
                            count: link.seq - expected_seq,
                        },
                    ));
                }
                if link.seq < expected_seq {
                    return Err(problem(seq, ProblemKind::Reordered { expected_seq }));
                }
                if prev != head {
                    return Err(problem(
                        seq,
                        ProblemKind::BrokenLink {
                            expected_prev: head,
                        },
                    ));
                }
            }
        }
        self.position = Some((link.seq + 1, claimed));
        self.summary.records += 1;
        self.summary.last_seq = Some(link.seq);
        self.summary.head = claimed;
        Ok(())
    }
}
