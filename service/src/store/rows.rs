//! The SQLite store's schema and the typed reading of its rows: every text column that holds an
//! enum, a date or JSON is parsed, and a value that does not parse is [`StoreError::Corrupt`].

use super::audit::{self, AuditEntry, AuditEvent};
use super::cipher::{template_aad, TemplateKeys};
use super::{DecisionRow, OverrideRow, ReservationView, Result, StoreError, StoredTemplate};
use crate::domain::{Colour, HealthRecord, Outcome, OverrideAction, Reason, ResStatus, Step, TemplateKind};
use chrono::NaiveDate;
use rusqlite::{params, OptionalExtension, Row, Transaction};

pub(super) const SCHEMA_VERSION: i64 = 5;

pub(super) const SCHEMA_V1: &str = r#"
CREATE TABLE guests (
    guest_id TEXT PRIMARY KEY,
    full_name TEXT NOT NULL,
    guest_ref TEXT NOT NULL,
    erased_at_ms INTEGER,
    consent_method TEXT,
    consent_text_version TEXT,
    consent_at_ms INTEGER,
    health_colour TEXT NOT NULL DEFAULT 'UNKNOWN',
    health_issued_at_ms INTEGER NOT NULL DEFAULT 0,
    health_expires_at_ms INTEGER NOT NULL DEFAULT 0,
    health_source TEXT NOT NULL DEFAULT ''
);
CREATE TABLE reservations (
    property_id TEXT NOT NULL,
    code TEXT NOT NULL,
    guest_id TEXT NOT NULL UNIQUE REFERENCES guests(guest_id),
    arrival TEXT NOT NULL,
    departure TEXT NOT NULL,
    status TEXT NOT NULL,
    checked_in_at_ms INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (property_id, code)
);
CREATE TABLE templates (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    guest_id TEXT NOT NULL REFERENCES guests(guest_id),
    property_id TEXT NOT NULL,
    model_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    vector BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX templates_by_guest ON templates(guest_id);
CREATE TABLE decisions (
    id TEXT PRIMARY KEY,
    property_id TEXT NOT NULL,
    kiosk_id TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    reasons TEXT NOT NULL,
    reservation_code TEXT NOT NULL,
    guest_id TEXT,
    match_score REAL NOT NULL,
    match_threshold REAL NOT NULL,
    live INTEGER NOT NULL,
    liveness_score REAL NOT NULL,
    masked INTEGER NOT NULL,
    health_colour TEXT NOT NULL,
    guest_message TEXT NOT NULL,
    final_outcome TEXT NOT NULL
);
CREATE INDEX decisions_pending ON decisions(final_outcome, created_at_ms);
CREATE TABLE overrides (
    decision_id TEXT PRIMARY KEY REFERENCES decisions(id),
    action TEXT NOT NULL,
    staff_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    subject TEXT NOT NULL,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
"#;

/// Version 2: what the escalation ladder and the cascade did, kept with each decision.
pub(super) const SCHEMA_V2: &str = r#"
ALTER TABLE decisions ADD COLUMN steps TEXT NOT NULL DEFAULT '[]';
ALTER TABLE decisions ADD COLUMN frames INTEGER NOT NULL DEFAULT 1;
ALTER TABLE decisions ADD COLUMN fused_frames INTEGER NOT NULL DEFAULT 1;
ALTER TABLE decisions ADD COLUMN cascade_score REAL;
ALTER TABLE decisions ADD COLUMN cascade_threshold REAL;
"#;

/// Issued credentials (hashes only).
pub(super) const SCHEMA_V3: &str = r#"
CREATE TABLE credentials (
    token_id TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    role TEXT NOT NULL,
    property_id TEXT,
    sha256 TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER,
    revoked_at_ms INTEGER
);
"#;

/// Signed audit checkpoints; the audit trail and its checkpoints are append-only (an UPDATE or a
/// DELETE is refused by the database itself; whoever removes the triggers with the file in hand is
/// caught by the checkpoints, `audit.rs`).
pub(super) const SCHEMA_V4: &str = r#"
CREATE TABLE audit_checkpoints (
    seq INTEGER PRIMARY KEY,
    head_hash TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    signature TEXT NOT NULL
);
-- Each decision and override is checked against its own entry (`cross_check_decisions`).
CREATE INDEX audit_subject ON audit(subject, kind);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
    BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
    BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
"#;

/// Version 5: records that forget. Templates are sealed (`key_id` names the template key; rows of
/// version 4 are sealed when the store opens); a guest's pseudonymous reference is a keyed hash
/// under `ref_key`, deleted with the guest's row; a decision's personal fields are vouched for in
/// the audit trail by keyed hashes under its own `mac_key`, cleared when it is anonymised. Erasure
/// now deletes the guest's and the reservation's rows: those erased under version 4 go now.
pub(super) const SCHEMA_V5: &str = r#"
ALTER TABLE guests ADD COLUMN ref_key BLOB;
UPDATE guests SET ref_key = randomblob(32) WHERE ref_key IS NULL;
ALTER TABLE templates ADD COLUMN key_id TEXT;
ALTER TABLE decisions ADD COLUMN subject_ref TEXT NOT NULL DEFAULT '';
ALTER TABLE decisions ADD COLUMN mac_key BLOB;
ALTER TABLE decisions ADD COLUMN anonymised_at_ms INTEGER;
CREATE INDEX decisions_by_guest ON decisions(guest_id);
CREATE INDEX decisions_by_subject ON decisions(subject_ref);
CREATE INDEX decisions_by_time ON decisions(created_at_ms);
DELETE FROM templates WHERE guest_id IN (SELECT guest_id FROM guests WHERE erased_at_ms IS NOT NULL);
DELETE FROM reservations WHERE guest_id IN (SELECT guest_id FROM guests WHERE erased_at_ms IS NOT NULL);
DELETE FROM guests WHERE erased_at_ms IS NOT NULL;
"#;

pub(super) const CRED_SELECT: &str =
    "SELECT token_id, holder, role, property_id, sha256, created_at_ms, expires_at_ms, revoked_at_ms FROM credentials";

pub(super) fn cred_row(r: &rusqlite::Row) -> rusqlite::Result<Result<super::CredentialRow>> {
    let token_id: String = r.get(0)?;
    let role: String = r.get(2)?;
    let Some(role) = crate::config::Role::parse(&role) else {
        return Ok(Err(corrupt("credentials", &token_id, format!("role = {role:?}"))));
    };
    Ok(Ok(super::CredentialRow {
        holder: r.get(1)?,
        role,
        property: r.get(3)?,
        sha256: r.get(4)?,
        created_at_ms: r.get(5)?,
        expires_at_ms: r.get(6)?,
        revoked_at_ms: r.get(7)?,
        token_id,
    }))
}

pub(super) fn vec_to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(super) fn corrupt(table: &'static str, key: &str, what: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        table,
        key: key.to_string(),
        what: what.into(),
    }
}

/// Parses a column value, or names the row it came from.
fn parsed<T>(v: Option<T>, table: &'static str, key: &str, column: &str, raw: &str) -> Result<T> {
    v.ok_or_else(|| corrupt(table, key, format!("{column} = {raw:?}")))
}

fn date(s: &str, table: &'static str, key: &str, column: &str) -> Result<NaiveDate> {
    parsed(NaiveDate::parse_from_str(s, "%Y-%m-%d").ok(), table, key, column, s)
}

/// The names in a JSON array column, each parsed by `f`.
fn names<T>(json: &str, f: fn(&str) -> Option<T>, table: &'static str, key: &str, column: &str) -> Result<Vec<T>> {
    let list: Vec<String> =
        serde_json::from_str(json).map_err(|_| corrupt(table, key, format!("{column} = {json:?}")))?;
    list.iter().map(|s| parsed(f(s), table, key, column, s)).collect()
}

pub(super) fn append_audit(tx: &Transaction, ev: &AuditEvent, now_ms: i64) -> Result<()> {
    let last: Option<(i64, String)> = tx
        .query_row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let (seq, prev) = last.map(|(s, h)| (s + 1, h)).unwrap_or((1, audit::GENESIS.to_string()));
    let e = AuditEntry::new(seq, now_ms, ev, &prev);
    tx.execute(
        "INSERT INTO audit (seq, at_ms, kind, actor, subject, details, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![e.seq, e.at_ms, e.kind, e.actor, e.subject, e.details, e.prev_hash, e.hash],
    )?;
    Ok(())
}

pub(super) const RES_SELECT: &str =
    "SELECT r.property_id, r.code, r.guest_id, g.full_name, g.guest_ref, r.arrival, r.departure, r.status,
    r.checked_in_at_ms, g.consent_at_ms IS NOT NULL, g.health_colour, g.health_issued_at_ms, g.health_expires_at_ms,
    g.health_source, (SELECT COUNT(*) FROM templates t WHERE t.guest_id = r.guest_id)
    FROM reservations r JOIN guests g ON g.guest_id = r.guest_id";

/// A reservation row as read, before its text columns are parsed.
pub(super) struct RawReservation {
    pub(super) v: ReservationView,
    pub(super) arrival: String,
    pub(super) departure: String,
    pub(super) status: String,
    pub(super) colour: String,
}

pub(super) fn res_row(r: &Row) -> rusqlite::Result<RawReservation> {
    Ok(RawReservation {
        v: ReservationView {
            property_id: r.get(0)?,
            code: r.get(1)?,
            guest_id: r.get(2)?,
            full_name: r.get(3)?,
            guest_ref: r.get(4)?,
            arrival: NaiveDate::MIN,
            departure: NaiveDate::MIN,
            status: ResStatus::Booked,
            checked_in_at_ms: r.get(8)?,
            consent: r.get(9)?,
            health: HealthRecord {
                colour: Colour::Unknown,
                issued_at_ms: r.get(11)?,
                expires_at_ms: r.get(12)?,
                source: r.get(13)?,
            },
            templates: r.get::<_, i64>(14)? as u32,
        },
        arrival: r.get(5)?,
        departure: r.get(6)?,
        status: r.get(7)?,
        colour: r.get(10)?,
    })
}

impl RawReservation {
    pub(super) fn parse(self) -> Result<ReservationView> {
        const T: &str = "reservations";
        let key = format!("{}/{}", self.v.property_id, self.v.code);
        let mut v = self.v;
        v.arrival = date(&self.arrival, T, &key, "arrival")?;
        v.departure = date(&self.departure, T, &key, "departure")?;
        v.status = parsed(ResStatus::parse(&self.status), T, &key, "status", &self.status)?;
        v.health.colour = parsed(
            Colour::parse(&self.colour),
            "guests",
            &v.guest_id,
            "health_colour",
            &self.colour,
        )?;
        Ok(v)
    }
}

pub(super) const TPL_SELECT: &str = "SELECT id, guest_id, property_id, model_id, kind, vector, key_id FROM templates";

/// A template row as read: the vector still sealed.
pub(super) struct RawTemplate {
    pub(super) t: StoredTemplate,
    pub(super) kind: String,
    pub(super) sealed: Vec<u8>,
    pub(super) key_id: Option<String>,
}

pub(super) fn tpl_row(r: &Row) -> rusqlite::Result<RawTemplate> {
    Ok(RawTemplate {
        t: StoredTemplate {
            id: r.get(0)?,
            guest_id: r.get(1)?,
            property_id: r.get(2)?,
            model_id: r.get(3)?,
            kind: TemplateKind::Clean,
            vector: Vec::new(),
        },
        kind: r.get(4)?,
        sealed: r.get(5)?,
        key_id: r.get(6)?,
    })
}

impl RawTemplate {
    pub(super) fn open(self, keys: &TemplateKeys) -> Result<StoredTemplate> {
        let mut t = self.t;
        let key = t.id.to_string();
        t.kind = parsed(TemplateKind::parse(&self.kind), "templates", &key, "kind", &self.kind)?;
        let aad = template_aad(&t.guest_id, &t.property_id, &self.kind, &t.model_id);
        let plain = self
            .key_id
            .as_deref()
            .and_then(|id| keys.open(id, &aad, &self.sealed))
            .ok_or_else(|| {
                corrupt(
                    "templates",
                    &key,
                    format!(
                        "does not open with template key {:?} (unknown key, or the row was altered)",
                        self.key_id.as_deref().unwrap_or("none")
                    ),
                )
            })?;
        t.vector = blob_to_vec(&plain)
            .ok_or_else(|| corrupt("templates", &key, format!("vector of {} bytes", plain.len())))?;
        Ok(t)
    }
}

impl RawTemplate {
    /// A row of schema version 4, its vector in the clear (sealed when the store opens).
    pub(super) fn in_the_clear(self) -> Result<StoredTemplate> {
        let mut t = self.t;
        let key = t.id.to_string();
        t.kind = parsed(TemplateKind::parse(&self.kind), "templates", &key, "kind", &self.kind)?;
        t.vector = blob_to_vec(&self.sealed)
            .ok_or_else(|| corrupt("templates", &key, format!("vector of {} bytes", self.sealed.len())))?;
        Ok(t)
    }
}

pub(super) fn blob_to_vec(b: &[u8]) -> Option<Vec<f32>> {
    b.len().is_multiple_of(4).then(|| {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    })
}

pub(super) const DEC_SELECT: &str =
    "SELECT d.id, d.property_id, d.kiosk_id, d.created_at_ms, d.outcome, d.reasons, d.reservation_code,
    d.guest_id, d.match_score, d.match_threshold, d.live, d.liveness_score, d.masked, d.health_colour, d.guest_message,
    d.final_outcome, o.action, o.staff_id, o.reason, o.at_ms, d.steps, d.frames, d.fused_frames, d.cascade_score,
    d.cascade_threshold
    FROM decisions d LEFT JOIN overrides o ON o.decision_id = d.id";

/// A decision row as read, before its text columns are parsed.
pub(super) struct RawDecision {
    pub(super) d: DecisionRow,
    pub(super) outcome: String,
    pub(super) reasons: String,
    pub(super) colour: String,
    pub(super) final_outcome: String,
    pub(super) action: Option<String>,
    pub(super) steps: String,
}

pub(super) fn dec_row(r: &Row) -> rusqlite::Result<RawDecision> {
    let action: Option<String> = r.get(16)?;
    Ok(RawDecision {
        d: DecisionRow {
            id: r.get(0)?,
            property_id: r.get(1)?,
            kiosk_id: r.get(2)?,
            created_at_ms: r.get(3)?,
            outcome: Outcome::Retry,
            reasons: Vec::new(),
            reservation_code: r.get(6)?,
            guest_id: r.get(7)?,
            match_score: r.get::<_, f64>(8)? as f32,
            match_threshold: r.get::<_, f64>(9)? as f32,
            live: r.get(10)?,
            liveness_score: r.get::<_, f64>(11)? as f32,
            masked: r.get(12)?,
            health_colour: Colour::Unknown,
            guest_message: r.get(14)?,
            final_outcome: Outcome::Retry,
            override_: match action {
                Some(_) => Some(OverrideRow {
                    action: OverrideAction::Deny,
                    staff_id: r.get(17)?,
                    reason: r.get(18)?,
                    at_ms: r.get(19)?,
                }),
                None => None,
            },
            steps: Vec::new(),
            frames: r.get::<_, i64>(21)? as u32,
            fused_frames: r.get::<_, i64>(22)? as u32,
            cascade: match (r.get::<_, Option<f64>>(23)?, r.get::<_, Option<f64>>(24)?) {
                (Some(s), Some(t)) => Some((s as f32, t as f32)),
                _ => None,
            },
        },
        outcome: r.get(4)?,
        reasons: r.get(5)?,
        colour: r.get(13)?,
        final_outcome: r.get(15)?,
        action,
        steps: r.get(20)?,
    })
}

impl RawDecision {
    pub(super) fn parse(self) -> Result<DecisionRow> {
        const T: &str = "decisions";
        let mut d = self.d;
        let key = d.id.clone();
        d.outcome = parsed(Outcome::parse(&self.outcome), T, &key, "outcome", &self.outcome)?;
        d.final_outcome = parsed(
            Outcome::parse(&self.final_outcome),
            T,
            &key,
            "final_outcome",
            &self.final_outcome,
        )?;
        d.health_colour = parsed(Colour::parse(&self.colour), T, &key, "health_colour", &self.colour)?;
        d.reasons = names(&self.reasons, Reason::parse, T, &key, "reasons")?;
        d.steps = names(&self.steps, Step::parse, T, &key, "steps")?;
        if let (Some(o), Some(a)) = (d.override_.as_mut(), self.action.as_deref()) {
            o.action = parsed(OverrideAction::parse(a), "overrides", &key, "action", a)?;
        }
        Ok(d)
    }
}

/// The names of enum values, as a JSON array (for a text column).
pub(super) fn names_json<T: Copy>(v: &[T], name: fn(T) -> &'static str) -> String {
    serde_json::Value::from(v.iter().map(|x| name(*x)).collect::<Vec<_>>()).to_string()
}

/// A decision with what its audit entries say of it, as either store reads it for
/// `verify_audit`'s cross-check.
pub(super) struct CrossRow {
    pub(super) id: String,
    pub(super) outcome: String,
    pub(super) final_outcome: String,
    /// The decision's entry: its number and the outcome it names.
    pub(super) seq: Option<i64>,
    pub(super) said: Option<String>,
    /// The override, if any, and its entry.
    pub(super) action: Option<String>,
    pub(super) reason: Option<String>,
    pub(super) oseq: Option<i64>,
    pub(super) said_action: Option<String>,
    pub(super) said_to: Option<String>,
    pub(super) said_reason: Option<String>,
    pub(super) code: String,
    pub(super) said_code: Option<String>,
    pub(super) guest_id: Option<String>,
    pub(super) subject_ref: String,
    pub(super) key: Option<Vec<u8>>,
    /// The entry was written by schema version 5 or later (it names a `ref`).
    pub(super) v5: bool,
    pub(super) said_ref: Option<String>,
    pub(super) said_code_mac: Option<String>,
    pub(super) said_reason_mac: Option<String>,
}

pub(super) fn code_mac(key: &[u8], code: &str) -> Option<String> {
    (!code.is_empty()).then(|| super::cipher::keyed_hash(key, code))
}

/// What is wrong with a decision against its audit entries, if anything: the entry's number and
/// why (the trail's end + 1 when it has no entry). The trail vouches for a decision's personal
/// fields by keyed hashes under the decision's key; once the decision is anonymised (no key) those
/// fields must be empty. Entries written before schema version 5 named the reservation code and
/// the override's reason in the clear.
pub(super) fn check_decision(r: &CrossRow, entries: i64) -> Option<(i64, String)> {
    let id = &r.id;
    let anonymised = r.code.is_empty() && r.guest_id.is_none();
    let Some(seq) = r.seq else {
        return Some((entries + 1, format!("decision {id} has no audit entry")));
    };
    let not_as_said = || Some((seq, format!("decision {id} does not read as its audit entry says")));
    if r.said.as_deref() != Some(r.outcome.as_str()) {
        return not_as_said();
    }
    if r.v5 {
        if r.said_ref.clone().unwrap_or_default() != r.subject_ref {
            return not_as_said();
        }
        match &r.key {
            Some(k) if code_mac(k, &r.code) != r.said_code_mac => return not_as_said(),
            None if !anonymised => {
                return Some((
                    seq,
                    format!("decision {id} holds personal fields its audit entry cannot vouch for"),
                ))
            }
            _ => {}
        }
    } else if r.said_code.as_deref() != Some(r.code.as_str()) && !(r.key.is_none() && anonymised) {
        return not_as_said();
    }
    match (&r.action, r.oseq) {
        (None, None) if r.final_outcome == r.outcome => None,
        (None, None) => Some((
            seq,
            format!("decision {id} was changed to {} without an override", r.final_outcome),
        )),
        (Some(_), None) => Some((entries + 1, format!("the override of decision {id} has no audit entry"))),
        (None, Some(oseq)) => Some((
            oseq,
            format!("the override of decision {id} is in the trail but not in the store"),
        )),
        (Some(action), Some(oseq)) => {
            let reason = r.reason.clone().unwrap_or_default();
            let reason_ok = match (&r.said_reason_mac, &r.key) {
                (Some(mac), Some(k)) => super::cipher::keyed_hash(k, &reason) == *mac,
                (Some(_), None) => reason.is_empty(),
                (None, _) => {
                    r.said_reason.as_deref() == Some(reason.as_str()) || (r.key.is_none() && reason.is_empty())
                }
            };
            (r.said_action.as_deref() != Some(action.as_str())
                || r.said_to.as_deref() != Some(r.final_outcome.as_str())
                || !reason_ok)
                .then(|| {
                    (
                        oseq,
                        format!("the override of decision {id} does not read as its audit entry says"),
                    )
                })
        }
    }
}
