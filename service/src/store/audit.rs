//! The tamper-evident audit trail: append-only entries, each carrying the hash of the previous one.
//!
//! hash = sha256(canonical(seq, at_ms, kind, actor, subject, details, prev_hash)), where canonical
//! writes each field as an 8-byte big-endian length followed by its bytes, and `details` is JSON
//! with keys in sorted order. The first entry's prev_hash is 64 zeros. No biometric data, photos or
//! tokens ever go into an entry: only ids, outcomes, reasons and scores.

use serde_json::Value;
use sha2::{Digest, Sha256};

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened, by whom, to what.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub kind: &'static str,
    pub actor: String,
    pub subject: String,
    pub details: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub seq: i64,
    pub at_ms: i64,
    pub kind: String,
    pub actor: String,
    pub subject: String,
    /// Canonical JSON text of the details.
    pub details: String,
    pub prev_hash: String,
    pub hash: String,
}

/// JSON text with object keys sorted at every level and no whitespace. Written out by hand so it
/// does not depend on how serde_json orders maps (its `preserve_order` feature may be on).
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                write_canonical(&m[k.as_str()], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

pub fn entry_hash(
    seq: i64,
    at_ms: i64,
    kind: &str,
    actor: &str,
    subject: &str,
    details: &str,
    prev_hash: &str,
) -> String {
    let mut h = Sha256::new();
    for field in [
        &seq.to_be_bytes()[..],
        &at_ms.to_be_bytes()[..],
        kind.as_bytes(),
        actor.as_bytes(),
        subject.as_bytes(),
        details.as_bytes(),
        prev_hash.as_bytes(),
    ] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field);
    }
    hex::encode(h.finalize())
}

impl AuditEntry {
    pub fn new(seq: i64, at_ms: i64, ev: &AuditEvent, prev_hash: &str) -> AuditEntry {
        let details = canonical_json(&ev.details);
        let hash = entry_hash(seq, at_ms, ev.kind, &ev.actor, &ev.subject, &details, prev_hash);
        AuditEntry {
            seq,
            at_ms,
            kind: ev.kind.to_string(),
            actor: ev.actor.clone(),
            subject: ev.subject.clone(),
            details,
            prev_hash: prev_hash.to_string(),
            hash,
        }
    }
}

/// Result of checking the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Verification {
    pub entries: u64,
    /// The first entry whose hash or link does not hold, and why.
    pub first_broken: Option<(i64, String)>,
}

/// Checks entries in sequence order: consecutive sequence numbers, each link to the previous hash,
/// and each hash recomputed from the entry's own fields.
pub fn verify<'a>(entries: impl IntoIterator<Item = &'a AuditEntry>) -> Verification {
    let mut v = Verifier::default();
    for e in entries {
        if !v.feed(e) {
            break;
        }
    }
    v.finish()
}

/// The same check fed one entry at a time, so a long trail can be read in pages (the store's lock
/// is not held for the whole table).
#[derive(Debug)]
pub struct Verifier {
    prev: String,
    expected_seq: i64,
    n: u64,
    broken: Option<(i64, String)>,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier {
            prev: GENESIS.to_string(),
            expected_seq: 1,
            n: 0,
            broken: None,
        }
    }
}

impl Verifier {
    /// Checks the next entry; false once the chain is broken (nothing more needs reading).
    pub fn feed(&mut self, e: &AuditEntry) -> bool {
        if self.broken.is_some() {
            return false;
        }
        self.n += 1;
        let expected = self.expected_seq;
        self.broken = if e.seq != expected {
            Some((expected, format!("entry {expected} is missing (found {})", e.seq)))
        } else if e.prev_hash != self.prev {
            Some((e.seq, "link to the previous entry is broken".into()))
        } else if entry_hash(e.seq, e.at_ms, &e.kind, &e.actor, &e.subject, &e.details, &e.prev_hash) != e.hash {
            Some((e.seq, "entry content does not match its hash".into()))
        } else {
            None
        };
        self.prev = e.hash.clone();
        self.expected_seq += 1;
        self.broken.is_none()
    }

    /// The sequence number of the last entry checked (0: none).
    pub fn last_seq(&self) -> i64 {
        self.expected_seq - 1
    }

    pub fn finish(self) -> Verification {
        Verification {
            entries: self.n,
            first_broken: self.broken,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chain(n: i64) -> Vec<AuditEntry> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|i| {
                let ev = AuditEvent {
                    kind: "decision",
                    actor: "kiosk-1".into(),
                    subject: format!("d{i}"),
                    details: json!({"b": 1, "a": i}),
                };
                let e = AuditEntry::new(i, 1000 + i, &ev, &prev);
                prev = e.hash.clone();
                e
            })
            .collect()
    }

    #[test]
    fn intact_chain_verifies() {
        assert_eq!(
            verify(&chain(5)),
            Verification {
                entries: 5,
                first_broken: None
            }
        );
    }

    #[test]
    fn altered_deleted_or_relinked_entries_are_named() {
        let mut c = chain(5);
        c[2].details = r#"{"a":3,"b":2}"#.into();
        assert_eq!(verify(&c).first_broken.unwrap().0, 3);
        let mut c = chain(5);
        c.remove(1);
        assert_eq!(verify(&c).first_broken.unwrap().0, 2);
        // Rewriting an entry and its own hash still breaks the next link.
        let mut c = chain(5);
        c[1].subject = "other".into();
        c[1].hash = entry_hash(
            2,
            c[1].at_ms,
            &c[1].kind,
            &c[1].actor,
            &c[1].subject,
            &c[1].details,
            &c[1].prev_hash,
        );
        assert_eq!(verify(&c).first_broken.unwrap().0, 3);
    }

    #[test]
    fn details_are_canonical() {
        assert_eq!(
            canonical_json(&json!({"b": 1, "a": {"d": 2, "c": 3}})),
            r#"{"a":{"c":3,"d":2},"b":1}"#
        );
    }
}
