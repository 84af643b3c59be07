//! `audit_verify`: arbitrary trail files, and arbitrary edits of a genuine trail, through
//! `audit::verify::verify_bytes`.
//!
//! Invariants:
//! - verifying never panics, with or without an HMAC key;
//! - when it says ok, every complete line really is a sealed record whose hash (lower-case hex, as
//!   the writer writes it) is the digest of its canonical bytes, with `seq` counting up by one and
//!   `prev` naming the previous hash, and the summary counts and names them correctly (checked by
//!   an independent line parser here, not the verifier's);
//! - **a modified trail is never reported ok**: the input is also applied as a list of edits
//!   (overwrite, insert, delete, swap, duplicate or replace lines, change case, truncate) to a
//!   genuine trail sealed by `audit::chain::Chain`; if the result verifies, the records it vouches
//!   for are byte for byte a contiguous run of the original ones, so the only undetected edits are
//!   cutting whole records off either end (which the summary shows: `starts_after` or a different
//!   `head` and count) or a torn final line (reported as `truncated_tail`).

use std::sync::OnceLock;

use egress_gate::audit::chain::{Chain, ChainKey, GENESIS};
use egress_gate::audit::verify::{Summary, verify_bytes};

/// Key of the keyed variant (the writer requires at least 32 bytes of key material).
const KEY: &[u8] = b"fuzz-audit-key-0123456789abcdef-0123456789";

/// Records as the proxy writes them (before sealing).
const RECORDS: &[&str] = &[
    r#"{"ts":"2026-11-22T02:40:12.000Z","event":"trail.open","reason":"start","chain":"sha256","torn_bytes":0,"policy_sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}"#,
    r#"{"ts":"2026-11-22T02:40:12.100Z","event":"proxy.start","policy_path":"config/egress.toml","policy_sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","listen":["127.0.0.1:3128"],"version":"0.1.0"}"#,
    r#"{"ts":"2026-11-22T02:40:12.177Z","audit_id":"6852a19e-0000000003","event":"net.open","plugin":null,"client":"127.0.0.1:56052","method":"CONNECT","host":"api.github.com","port":443,"resolved":["140.82.121.6"],"decision":"allow","rule":"policy.allow[0]","policy_sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}"#,
    r#"{"ts":"2026-11-22T02:40:12.408Z","audit_id":"6852a19e-0000000003","event":"net.req","plugin":null,"client":"127.0.0.1:56052","method":"CONNECT","host":"api.github.com","port":443,"resolved":["140.82.121.6"],"connected":"140.82.121.6:443","decision":"allow","rule":"policy.allow[0]","policy_sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","status":200,"bytes_up":812,"bytes_down":5120,"duration_ms":231}"#,
    r#"{"ts":"2026-11-22T02:40:13.001Z","audit_id":"6852a19e-0000000004","event":"policy.violation","plugin":"weather","client":"127.0.0.1:56060","method":"GET","host":"169.254.169.254","port":80,"reason":"non_public_address","rule":null,"addresses":["169.254.169.254"],"enforced":true,"policy_sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}"#,
    r#"{"ts":"2026-11-22T02:40:13.002Z","audit_id":"6852a19e-0000000004","event":"net.req","plugin":"weather","client":"127.0.0.1:56060","method":"GET","host":"169.254.169.254","port":80,"path":"/latest?token=REDACTED","resolved":[],"connected":null,"decision":"deny","rule":null,"reason":"non_public_address","policy_sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","status":403,"bytes_up":0,"bytes_down":0,"duration_ms":0}"#,
];

/// A genuine trail and its lines (newline included), sealed under `key`.
struct Genuine {
    key: ChainKey,
    bytes: Vec<u8>,
    lines: Vec<Vec<u8>>,
}

fn genuine() -> &'static [Genuine; 2] {
    static TRAILS: OnceLock<[Genuine; 2]> = OnceLock::new();
    TRAILS.get_or_init(|| {
        [ChainKey::none(), ChainKey::hmac(KEY.to_vec())].map(|key| {
            let mut chain = Chain::new(key.clone(), 0, GENESIS);
            let mut lines = Vec::new();
            for record in RECORDS {
                let mut line = Vec::new();
                chain.seal(record.as_bytes(), &mut line);
                lines.push(line);
            }
            Genuine {
                key,
                bytes: lines.concat(),
                lines,
            }
        })
    })
}

pub fn check(data: &[u8]) {
    let trails = genuine();
    for trail in trails {
        if let Ok(summary) = verify_bytes(data, &trail.key) {
            independent_recheck(data, &trail.key, &summary);
        }
        let edited = edit(&trail.bytes, data);
        if let Ok(summary) = verify_bytes(&edited, &trail.key) {
            independent_recheck(&edited, &trail.key, &summary);
            only_whole_records_cut(trail, &edited, &summary);
        }
    }
    // A keyed trail never verifies without its key, nor an unkeyed one with a key.
    assert!(verify_bytes(&trails[1].bytes, &trails[0].key).is_err());
    assert!(verify_bytes(&trails[0].bytes, &trails[1].key).is_err());
}

/// Complete lines (without their newline) and the torn final line, if any.
fn split_lines(bytes: &[u8]) -> (Vec<&[u8]>, Option<&[u8]>) {
    let mut parts: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    let tail = parts.pop().filter(|t| !t.is_empty());
    (parts, tail)
}

/// Re-derives what the verifier claims, with a parser of its own.
fn independent_recheck(bytes: &[u8], key: &ChainKey, summary: &Summary) {
    let (lines, tail) = split_lines(bytes);
    assert_eq!(summary.records, lines.len() as u64, "records counted wrong");
    assert_eq!(
        summary.truncated_tail.as_ref().map(|t| t.bytes),
        tail.map(<[u8]>::len),
        "torn tail reported wrong"
    );
    let mut previous: Option<(u64, [u8; 32])> = None;
    for (i, line) in lines.iter().enumerate() {
        let text = std::str::from_utf8(line).expect("a verified line is UTF-8");
        let value: serde_json::Value = serde_json::from_str(text).expect("a verified line is JSON");
        assert!(value.is_object(), "line {}: not an object", i + 1);
        // `…,"seq":N,"prev":"<hex>","hash":"<hex>"}`, hash in the writer's lower-case hex.
        let (canonical, hash_hex) = text
            .strip_suffix("\"}")
            .and_then(|t| t.rsplit_once(",\"hash\":\""))
            .expect("a verified line ends with its hash member");
        assert!(
            hash_hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "line {}: verified although its hash is not lower-case hex: {hash_hex:?}",
            i + 1
        );
        let canonical = format!("{canonical}}}");
        let digest = key.digest(canonical.as_bytes());
        assert_eq!(hex::encode(digest), hash_hex, "line {}: wrong hash", i + 1);
        let seq = value["seq"].as_u64().expect("seq");
        let prev = value["prev"].as_str().expect("prev");
        assert!(
            canonical.ends_with(&format!(",\"seq\":{seq},\"prev\":\"{prev}\"}}")),
            "line {}: seq and prev are not the last members",
            i + 1
        );
        match previous {
            None => {
                assert_eq!(summary.first_seq, Some(seq));
                let genesis = seq == 0 && prev == hex::encode(GENESIS);
                assert_eq!(summary.starts_after.is_none(), genesis, "line 1");
            }
            Some((last_seq, last_hash)) => {
                assert_eq!(seq, last_seq + 1, "line {}: seq does not count up", i + 1);
                assert_eq!(prev, hex::encode(last_hash), "line {}: broken link", i + 1);
            }
        }
        previous = Some((seq, digest));
    }
    assert_eq!(summary.last_seq, previous.map(|p| p.0));
    assert_eq!(summary.head, previous.map_or(GENESIS, |p| p.1));
}

/// A trail that verified after editing holds a contiguous, unchanged run of the original records.
fn only_whole_records_cut(trail: &Genuine, edited: &[u8], summary: &Summary) {
    let (lines, _) = split_lines(edited);
    if lines.is_empty() {
        return;
    }
    let original: Vec<&[u8]> = trail.lines.iter().map(|l| &l[..l.len() - 1]).collect();
    let start = original
        .iter()
        .position(|l| *l == lines[0])
        .unwrap_or_else(|| {
            panic!(
                "a modified record verified as ok: {:?}",
                String::from_utf8_lossy(lines[0])
            )
        });
    for (k, line) in lines.iter().enumerate() {
        assert!(
            original.get(start + k) == Some(line),
            "a modified or moved record verified as ok (line {}): {:?}",
            k + 1,
            String::from_utf8_lossy(line)
        );
    }
    // Whatever was cut, the summary says so: records cut at the front leave `starts_after`, at
    // the end a different head.
    assert_eq!(summary.starts_after.is_some(), start > 0);
    let end = start + lines.len();
    if end < original.len() {
        assert_ne!(
            summary.head,
            genuine_head(trail),
            "records cut at the end, same head"
        );
    }
}

fn genuine_head(trail: &Genuine) -> [u8; 32] {
    let summary = verify_bytes(&trail.bytes, &trail.key).expect("the genuine trail verifies");
    summary.head
}

// === edits ===

/// Largest trail the edits may grow before the rest of them are ignored.
const MAX_EDITED: usize = 64 * 1024;

/// Reads edit operations from the input and applies them to `trail`.
fn edit(trail: &[u8], ops: &[u8]) -> Vec<u8> {
    let mut out = trail.to_vec();
    let mut input = ops;
    let mut take = |n: usize| -> Option<&[u8]> {
        if input.len() < n {
            return None;
        }
        let (head, rest) = input.split_at(n);
        input = rest;
        Some(head)
    };
    // Duplicating a line that earlier edits merged into one doubles the trail: stop at a bound.
    while let Some(&[op, a, b]) = take(3) {
        if out.len() > MAX_EDITED {
            break;
        }
        let pos = |len: usize| {
            if len == 0 {
                0
            } else {
                (usize::from(a) << 8 | usize::from(b)) % len
            }
        };
        match op % 9 {
            0 => {
                let Some(&[v]) = take(1) else { break };
                if !out.is_empty() {
                    let p = pos(out.len());
                    out[p] = v;
                }
            }
            1 => {
                let Some(&[n]) = take(1) else { break };
                let Some(payload) = take(usize::from(n % 32)) else {
                    break;
                };
                let p = pos(out.len() + 1);
                out.splice(p..p, payload.iter().copied());
            }
            2 => {
                let Some(&[n]) = take(1) else { break };
                let p = pos(out.len() + 1);
                let end = (p + usize::from(n)).min(out.len());
                out.drain(p..end);
            }
            3..=6 => {
                let mut lines: Vec<Vec<u8>> = out
                    .split_inclusive(|c| *c == b'\n')
                    .map(<[u8]>::to_vec)
                    .collect();
                if lines.is_empty() {
                    continue;
                }
                let i = pos(lines.len());
                let j = usize::from(b) % lines.len();
                match op % 9 {
                    3 => lines.swap(i, j),
                    4 => {
                        lines.remove(i);
                    }
                    5 => lines.insert(j, lines[i].clone()),
                    _ => {
                        let Some(&[n]) = take(1) else { break };
                        let Some(payload) = take(usize::from(n % 64)) else {
                            break;
                        };
                        lines[i] = payload.to_vec();
                    }
                }
                out = lines.concat();
            }
            7 => {
                if !out.is_empty() {
                    let p = pos(out.len());
                    out[p] = if out[p].is_ascii_lowercase() {
                        out[p].to_ascii_uppercase()
                    } else {
                        out[p].to_ascii_lowercase()
                    };
                }
            }
            _ => {
                let p = pos(out.len() + 1);
                out.truncate(p);
            }
        }
    }
    out
}
