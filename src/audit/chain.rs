//! The hash chain that makes the trail tamper-evident.
//!
//! Every line is one JSON object whose last three members are `"seq"`, `"prev"` and `"hash"`.
//! The *canonical bytes* of a record are the line exactly as written with its trailing
//! `,"hash":"<64 hex>"` member removed (so they end in `"prev":"<hex>"}`); `hash` is SHA-256 of
//! those bytes, or HMAC-SHA256 under the trail key when one is configured. `prev` is the previous
//! record's `hash` (64 zeros for the first record of a new trail) and `seq` counts up by one, so
//! editing, removing or reordering any line breaks the chain. Verification works on the bytes as
//! written and never re-serialises JSON, so there is exactly one canonical form.

use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};

/// `prev` of the first record of a new trail.
pub const GENESIS: [u8; 32] = [0; 32];

/// The suffix every sealed line carries before its newline: `,"hash":"` + 64 hex + `"}`.
const HASH_MEMBER_LEN: usize = 9 + 64 + 2;

/// Key material for the chain: none (plain SHA-256) or an HMAC key.
#[derive(Clone, Default)]
pub struct ChainKey(Option<Vec<u8>>);

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str(if self.0.is_some() {
            "ChainKey(hmac)"
        } else {
            "ChainKey(sha256)"
        })
    }
}

impl ChainKey {
    pub fn none() -> Self {
        ChainKey(None)
    }

    pub fn hmac(key: Vec<u8>) -> Self {
        ChainKey(Some(key))
    }

    /// The chain's name as recorded: `sha256` or `hmac-sha256`.
    pub fn algorithm(&self) -> &'static str {
        if self.0.is_some() {
            "hmac-sha256"
        } else {
            "sha256"
        }
    }

    /// The digest of a record's canonical bytes.
    pub fn digest(&self, canonical: &[u8]) -> [u8; 32] {
        match &self.0 {
            None => Sha256::digest(canonical).into(),
            Some(key) => {
                let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key)
                    .expect("HMAC takes keys of any length");
                mac.update(canonical);
                mac.finalize().into_bytes().into()
            }
        }
    }
}

/// The writer's position in the chain.
#[derive(Debug, Clone)]
pub struct Chain {
    key: ChainKey,
    /// Sequence number the next record gets.
    pub next_seq: u64,
    /// Hash of the last record written.
    pub head: [u8; 32],
}

impl Chain {
    /// A chain that continues after `head` (GENESIS for a new trail) at `next_seq`.
    pub fn new(key: ChainKey, next_seq: u64, head: [u8; 32]) -> Self {
        Chain {
            key,
            next_seq,
            head,
        }
    }

    /// Seals a serialised record (a JSON object, `{…}`) into its line, newline included, and
    /// advances the chain. Appends to `out` so a batch is built in one buffer.
    pub fn seal(&mut self, record: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(record);
        self.seal_in_place(out, start);
    }

    /// Seals the record serialised at `out[start..]` where it lies: no copy of the record.
    pub fn seal_in_place(&mut self, out: &mut Vec<u8>, start: usize) {
        debug_assert!(out[start..].ends_with(b"}") && out.len() - start > 2);
        out.pop();
        out.extend_from_slice(b",\"seq\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.next_seq).as_bytes());
        out.extend_from_slice(b",\"prev\":\"");
        push_hex(out, &self.head);
        out.extend_from_slice(b"\"}");
        let hash = self.key.digest(&out[start..]);
        out.pop();
        out.extend_from_slice(b",\"hash\":\"");
        push_hex(out, &hash);
        out.extend_from_slice(b"\"}\n");
        self.next_seq += 1;
        self.head = hash;
    }
}

/// Appends the lower-case hex of a digest.
fn push_hex(out: &mut Vec<u8>, digest: &[u8; 32]) {
    let mut hex = [0u8; 64];
    hex::encode_to_slice(digest, &mut hex).expect("64 hex digits for 32 bytes");
    out.extend_from_slice(&hex);
}

/// A line split into its canonical bytes and claimed hash; `None` if it lacks the hash member.
pub fn split_sealed(line: &[u8]) -> Option<(Vec<u8>, [u8; 32])> {
    if line.len() < HASH_MEMBER_LEN + 2 || !line.ends_with(b"\"}") {
        return None;
    }
    let member = &line[line.len() - HASH_MEMBER_LEN..];
    if !member.starts_with(b",\"hash\":\"") {
        return None;
    }
    let hash = parse_lower_hex(&member[9..9 + 64])?;
    let mut canonical = line[..line.len() - HASH_MEMBER_LEN].to_vec();
    canonical.push(b'}');
    Some((canonical, hash))
}

/// Parses exactly 64 lower-case hex digits, the only spelling the writer produces: accepting
/// `A-F` too would let a line be modified (its case changed) and still verify.
pub fn parse_lower_hex(text: &[u8]) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_lines_verify_and_link() {
        let mut chain = Chain::new(ChainKey::none(), 0, GENESIS);
        let mut out = Vec::new();
        chain.seal(br#"{"event":"a"}"#, &mut out);
        chain.seal(br#"{"event":"b"}"#, &mut out);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with(r#"{"event":"a","seq":0,"prev":"0000"#),
            "{}",
            lines[0]
        );
        let (canon0, hash0) = split_sealed(lines[0].as_bytes()).unwrap();
        assert_eq!(ChainKey::none().digest(&canon0), hash0);
        let (canon1, hash1) = split_sealed(lines[1].as_bytes()).unwrap();
        assert_eq!(ChainKey::none().digest(&canon1), hash1);
        assert!(
            String::from_utf8(canon1)
                .unwrap()
                .contains(&hex::encode(hash0))
        );
        assert_eq!(chain.head, hash1);
        assert_eq!(chain.next_seq, 2);
    }

    #[test]
    fn only_lower_case_hashes_are_read() {
        let lower = "ab".repeat(32);
        assert_eq!(parse_lower_hex(lower.as_bytes()), Some([0xab; 32]));
        assert_eq!(parse_lower_hex(lower.to_uppercase().as_bytes()), None);
        assert_eq!(parse_lower_hex(b"abc"), None);
    }

    #[test]
    fn hmac_chains_differ_by_key() {
        let a = ChainKey::hmac(b"key-one".to_vec()).digest(b"x");
        let b = ChainKey::hmac(b"key-two".to_vec()).digest(b"x");
        let plain = ChainKey::none().digest(b"x");
        assert_ne!(a, b);
        assert_ne!(a, plain);
        assert_eq!(
            format!("{:?}", ChainKey::hmac(b"secret".to_vec())),
            "ChainKey(hmac)"
        );
    }
}
