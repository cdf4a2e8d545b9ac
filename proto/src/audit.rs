//! The tamper-evident audit trail: append-only entries, each carrying the hash of the previous one.
//!
//! hash = sha256(canonical(seq, at_ms, kind, actor, subject, details, prev_hash)), where canonical
//! writes each field as an 8-byte big-endian length followed by its bytes, and `details` is JSON
//! with keys in sorted order. The first entry's prev_hash is 64 zeros. No biometric data, photos or
//! tokens ever go into an entry, and no guest's name, reservation code or id: a guest is named by a
//! pseudonymous reference (a keyed hash whose key the store deletes at erasure), a decision's
//! personal fields by keyed hashes under the decision's own key.
//!
//! An exported trail is a **bundle** (`lobby staff export-audit`): JSON lines, a header naming the
//! format and the server's public key, then every checkpoint, then every entry in order.
//! [`verify_bundle`] checks it with no server and no database (`lobby audit verify`).
//!
//! Anchors: a hash chain alone does not stop whoever can write the database from recomputing every
//! hash from the first entry, or cutting the last entries off. So the server signs **checkpoints**
//! (entry count, head hash, time) with its own Ed25519 key, keeps them in the database and appends
//! them to a file outside it (`[audit] checkpoint_file`, which an operator may put on write-once or
//! remote storage). The verifier checks every checkpoint's signature and that the chain passes
//! through each checkpoint's head: a rewritten chain or a cut tail no longer does.

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

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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
    /// Signed checkpoints the chain was checked against (each matched, when intact).
    pub checkpoints: u64,
}

/// A signed statement by the server: the trail had `seq` entries, the last with hash `head_hash`,
/// at `at_ms`. One JSON object per line in the checkpoint file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    pub seq: i64,
    pub head_hash: String,
    pub at_ms: i64,
    /// Ed25519 signature of [`Checkpoint::message`], hex.
    pub signature: String,
}

impl Checkpoint {
    /// What is signed: a domain tag, then the fields, each as an 8-byte big-endian length and its
    /// bytes (as the entries' hashes are made).
    pub fn message(seq: i64, head_hash: &str, at_ms: i64) -> Vec<u8> {
        let mut m = Vec::new();
        for field in [
            &b"lobby-audit-checkpoint-v1"[..],
            &seq.to_be_bytes()[..],
            head_hash.as_bytes(),
            &at_ms.to_be_bytes()[..],
        ] {
            m.extend_from_slice(&(field.len() as u64).to_be_bytes());
            m.extend_from_slice(field);
        }
        m
    }

    pub fn sign(key: &ed25519_dalek::SigningKey, seq: i64, head_hash: &str, at_ms: i64) -> Checkpoint {
        use ed25519_dalek::Signer;
        let sig = key.sign(&Checkpoint::message(seq, head_hash, at_ms));
        Checkpoint {
            seq,
            head_hash: head_hash.to_string(),
            at_ms,
            signature: hex::encode(sig.to_bytes()),
        }
    }

    /// Whether `key` signed this checkpoint as it reads.
    pub fn signed_by(&self, key: &ed25519_dalek::VerifyingKey) -> bool {
        let Some(sig) = hex::decode(&self.signature)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .map(|b| ed25519_dalek::Signature::from_bytes(&b))
        else {
            return false;
        };
        key.verify_strict(&Checkpoint::message(self.seq, &self.head_hash, self.at_ms), &sig)
            .is_ok()
    }
}

/// The checkpoints of the database and of the file, as one list by entry number. A checkpoint in
/// one and not the other is kept (the database's may have been deleted, the file's may lag); two
/// different checkpoints for the same entry are a broken trail.
pub fn merge_checkpoints(
    db: Vec<Checkpoint>,
    file: Vec<Checkpoint>,
) -> std::result::Result<Vec<Checkpoint>, (i64, String)> {
    let mut all = std::collections::BTreeMap::new();
    for c in db.into_iter().chain(file) {
        match all.get(&c.seq) {
            Some(prev) if prev != &c => {
                return Err((
                    c.seq,
                    format!("the database's and the file's checkpoints at entry {} differ", c.seq),
                ))
            }
            _ => {
                all.insert(c.seq, c);
            }
        }
    }
    Ok(all.into_values().collect())
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
    /// Signed checkpoints still ahead, by entry number.
    anchors: std::collections::BTreeMap<i64, Checkpoint>,
    /// The last entry a checkpoint vouched for (0: none yet).
    anchored: i64,
    matched: u64,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier {
            prev: GENESIS.to_string(),
            expected_seq: 1,
            n: 0,
            broken: None,
            anchors: Default::default(),
            anchored: 0,
            matched: 0,
        }
    }
}

impl Verifier {
    /// A verifier that also holds the chain to signed checkpoints: each must be signed by `key`,
    /// and the chain must pass through each one's head.
    pub fn anchored(checkpoints: Vec<Checkpoint>, key: &ed25519_dalek::VerifyingKey) -> Verifier {
        let mut v = Verifier::default();
        for c in checkpoints {
            if v.broken.is_none() && !c.signed_by(key) {
                v.broken = Some((
                    c.seq.max(1),
                    format!("the checkpoint at entry {} is not signed by the audit key", c.seq),
                ));
            }
            v.anchors.insert(c.seq, c);
        }
        v
    }

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
        if self.broken.is_none() {
            if let Some(c) = self.anchors.remove(&e.seq) {
                if c.head_hash == e.hash {
                    self.anchored = e.seq;
                    self.matched += 1;
                } else {
                    // The chain holds together but not through the signed head: it was recomputed.
                    // Somewhere after the last checkpoint that held.
                    self.broken = Some((
                        self.anchored + 1,
                        format!(
                            "entries {}-{} were rewritten: the signed checkpoint at entry {} names another head",
                            self.anchored + 1,
                            e.seq,
                            e.seq
                        ),
                    ));
                }
            }
        }
        self.prev = e.hash.clone();
        self.expected_seq += 1;
        self.broken.is_none()
    }

    /// The sequence number of the last entry checked (0: none).
    pub fn last_seq(&self) -> i64 {
        self.expected_seq - 1
    }

    pub fn finish(self) -> Verification {
        let last = self.expected_seq - 1;
        // A checkpoint beyond the last entry: the tail was cut off (or the table emptied).
        let broken = self.broken.or_else(|| {
            self.anchors.keys().next_back().map(|&seq| {
                (
                    last + 1,
                    format!(
                        "the trail ends at entry {last} but a signed checkpoint names entry {seq}: entries were removed from the end"
                    ),
                )
            })
        });
        Verification {
            entries: self.n,
            first_broken: broken,
            checkpoints: self.matched,
        }
    }
}

/// The bundle's first line.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BundleHeader {
    pub format: String,
    /// The server's audit public key, base64 (as printed at start and in `audit-signing.key.pub`).
    pub public_key: String,
    pub exported_at_ms: i64,
    pub checkpoints: u64,
    pub entries: u64,
}

pub const BUNDLE_FORMAT: &str = "lobby-audit-bundle-v1";

/// One line of a bundle after the header.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BundleLine {
    Checkpoint(Checkpoint),
    Entry(AuditEntry),
}

impl From<&AuditEntry> for crate::v1::AuditEntry {
    fn from(e: &AuditEntry) -> Self {
        crate::v1::AuditEntry {
            seq: e.seq,
            at_ms: e.at_ms,
            kind: e.kind.clone(),
            actor: e.actor.clone(),
            subject: e.subject.clone(),
            details: e.details.clone(),
            prev_hash: e.prev_hash.clone(),
            hash: e.hash.clone(),
        }
    }
}

impl From<crate::v1::AuditEntry> for AuditEntry {
    fn from(e: crate::v1::AuditEntry) -> Self {
        AuditEntry {
            seq: e.seq,
            at_ms: e.at_ms,
            kind: e.kind,
            actor: e.actor,
            subject: e.subject,
            details: e.details,
            prev_hash: e.prev_hash,
            hash: e.hash,
        }
    }
}

impl From<&Checkpoint> for crate::v1::AuditCheckpoint {
    fn from(c: &Checkpoint) -> Self {
        crate::v1::AuditCheckpoint {
            seq: c.seq,
            head_hash: c.head_hash.clone(),
            at_ms: c.at_ms,
            signature: c.signature.clone(),
        }
    }
}

impl From<&crate::v1::AuditCheckpoint> for Checkpoint {
    fn from(c: &crate::v1::AuditCheckpoint) -> Self {
        Checkpoint {
            seq: c.seq,
            head_hash: c.head_hash.clone(),
            at_ms: c.at_ms,
            signature: c.signature.clone(),
        }
    }
}

/// A base64 Ed25519 public key (32 bytes), as the server prints it.
pub fn parse_public_key(b64: &str) -> Result<ed25519_dalek::VerifyingKey, String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| "the public key is not base64".to_string())?;
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| "the public key is not 32 bytes".to_string())?;
    ed25519_dalek::VerifyingKey::from_bytes(&arr).map_err(|_| "not an Ed25519 public key".to_string())
}

/// Checks an exported bundle offline against the public key the operator trusts (not the one the
/// bundle says): every checkpoint signed by it, every entry's hash, the chain through every
/// checkpoint's head, the counts the header gives. A bundle that does not parse is an error; a
/// parsed bundle that does not hold is a [`Verification`] naming the first broken entry.
pub fn verify_bundle(
    text: impl std::io::BufRead,
    trusted: &ed25519_dalek::VerifyingKey,
) -> Result<Verification, String> {
    let mut lines = text.lines().enumerate();
    let header: BundleHeader = match lines.next() {
        Some((_, Ok(l))) => serde_json::from_str(&l).map_err(|e| format!("line 1 is not a bundle header: {e}"))?,
        Some((_, Err(e))) => return Err(format!("reading the bundle: {e}")),
        None => return Err("the bundle is empty".into()),
    };
    if header.format != BUNDLE_FORMAT {
        return Err(format!("format {:?}, expected {BUNDLE_FORMAT:?}", header.format));
    }
    if parse_public_key(&header.public_key)? != *trusted {
        return Err("the bundle names another public key than the one given: it was not exported by that server, or was altered".into());
    }
    let mut checkpoints = Vec::new();
    let mut n_checkpoints = 0u64;
    let mut v: Option<Verifier> = None;
    let mut broken = false;
    for (i, line) in lines {
        let line = line.map_err(|e| format!("reading the bundle: {e}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: BundleLine =
            serde_json::from_str(&line).map_err(|e| format!("line {} is not a bundle line: {e}", i + 1))?;
        match parsed {
            BundleLine::Checkpoint(c) if v.is_none() => {
                n_checkpoints += 1;
                checkpoints.push(c)
            }
            BundleLine::Checkpoint(_) => return Err(format!("line {}: a checkpoint after the entries", i + 1)),
            BundleLine::Entry(e) => {
                let v = v.get_or_insert_with(|| Verifier::anchored(std::mem::take(&mut checkpoints), trusted));
                if !broken && !v.feed(&e) {
                    broken = true;
                }
            }
        }
    }
    let v = v.unwrap_or_else(|| Verifier::anchored(checkpoints, trusted));
    let mut out = v.finish();
    if out.first_broken.is_none() && (out.entries, n_checkpoints) != (header.entries, header.checkpoints) {
        out.first_broken = Some((
            out.entries as i64 + 1,
            format!(
                "the header promises {} entries and {} checkpoints; the bundle holds {} and {}",
                header.entries, header.checkpoints, out.entries, n_checkpoints
            ),
        ));
    }
    Ok(out)
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
                first_broken: None,
                checkpoints: 0
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

    fn key() -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&[7u8; 32])
    }

    fn anchored(entries: &[AuditEntry], cps: Vec<Checkpoint>) -> Verification {
        let mut v = Verifier::anchored(cps, &key().verifying_key());
        for e in entries {
            if !v.feed(e) {
                break;
            }
        }
        v.finish()
    }

    #[test]
    fn checkpoints_catch_a_cut_tail_a_recomputed_chain_and_an_emptied_table() {
        let c = chain(6);
        let cps = vec![
            Checkpoint::sign(&key(), 2, &c[1].hash, 10),
            Checkpoint::sign(&key(), 5, &c[4].hash, 20),
        ];
        let ok = anchored(&c, cps.clone());
        assert_eq!((ok.first_broken, ok.checkpoints), (None, 2));
        // The tail cut at 4: the checkpoint at 5 names an entry that is gone.
        let cut = anchored(&c[..4], cps.clone());
        assert_eq!(cut.first_broken.unwrap().0, 5);
        // Emptied.
        assert_eq!(anchored(&[], cps.clone()).first_broken.unwrap().0, 1);
        // Recomputed from entry 4 on (a consistent chain, another head at 5): entries 3-5 named.
        let mut r = c[..3].to_vec();
        let mut prev = r[2].hash.clone();
        for i in 4..=6 {
            let ev = AuditEvent {
                kind: "decision",
                actor: "someone-else".into(),
                subject: format!("d{i}"),
                details: json!({}),
            };
            let e = AuditEntry::new(i, 1000 + i, &ev, &prev);
            prev = e.hash.clone();
            r.push(e);
        }
        assert!(verify(&r).first_broken.is_none(), "the chain alone holds");
        let (seq, why) = anchored(&r, cps.clone()).first_broken.unwrap();
        assert_eq!(seq, 3, "{why}");
        // A checkpoint not signed by the key (forged to fit the rewrite).
        let mut forged = cps.clone();
        forged[1] = Checkpoint::sign(&ed25519_dalek::SigningKey::from_bytes(&[8u8; 32]), 5, &r[4].hash, 20);
        assert!(anchored(&r, forged).first_broken.unwrap().1.contains("not signed"));
        // The database's and the file's copies disagree.
        let mut other = cps.clone();
        other[0].at_ms = 11;
        assert!(merge_checkpoints(cps.clone(), other).is_err());
        assert_eq!(merge_checkpoints(cps[..1].to_vec(), cps.clone()).unwrap(), cps);
    }

    #[test]
    fn details_are_canonical() {
        assert_eq!(
            canonical_json(&json!({"b": 1, "a": {"d": 2, "c": 3}})),
            r#"{"a":{"c":3,"d":2},"b":1}"#
        );
    }
}
