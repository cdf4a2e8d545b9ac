//! Durable state behind a trait: reservations, guests, consent, templates, health status,
//! decisions, overrides and the audit trail. The default implementation is one SQLite file (WAL,
//! `synchronous=FULL`, so an acknowledged write survives a crash; `secure_delete` so erased templates
//! are overwritten, not left in free pages). Every mutation appends its audit entry in the same
//! transaction.

use crate::audit::{self, AuditEntry, AuditEvent, Verification};
use crate::health::{Colour, HealthRecord};
use chrono::NaiveDate;
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde_json::json;
use std::path::Path;
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("storage failure: {0}")]
    Db(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Db(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResStatus {
    Booked,
    Cancelled,
    CheckedIn,
    CheckedOut,
}

impl ResStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            ResStatus::Booked => "BOOKED",
            ResStatus::Cancelled => "CANCELLED",
            ResStatus::CheckedIn => "CHECKED_IN",
            ResStatus::CheckedOut => "CHECKED_OUT",
        }
    }
    fn parse(s: &str) -> ResStatus {
        match s {
            "CANCELLED" => ResStatus::Cancelled,
            "CHECKED_IN" => ResStatus::CheckedIn,
            "CHECKED_OUT" => ResStatus::CheckedOut,
            _ => ResStatus::Booked,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ReservationInput {
    pub property_id: String,
    pub code: String,
    pub full_name: String,
    pub guest_ref: String,
    pub arrival: NaiveDate,
    pub departure: NaiveDate,
    pub status: ResStatus,
}

#[derive(Debug, Clone)]
pub struct ReservationView {
    pub property_id: String,
    pub code: String,
    pub guest_id: String,
    pub full_name: String,
    pub guest_ref: String,
    pub arrival: NaiveDate,
    pub departure: NaiveDate,
    pub status: ResStatus,
    pub checked_in_at_ms: i64,
    pub consent: bool,
    pub health: HealthRecord,
    pub templates: u32,
    pub erased: bool,
}

#[derive(Debug, Clone)]
pub struct ConsentRecord {
    pub method: String,
    pub text_version: String,
    pub at_ms: i64,
}

#[derive(Debug, Clone)]
pub struct NewTemplate {
    /// "clean", "masked" (synthetic masks), or a second-stage kind ("teacher", "dlib").
    pub kind: String,
    /// The model that made it (file name and sha256 prefix).
    pub model_id: String,
    pub vector: Vec<f32>,
}

#[derive(Debug, Clone)]
pub struct StoredTemplate {
    pub id: i64,
    pub guest_id: String,
    pub property_id: String,
    pub model_id: String,
    pub kind: String,
    pub vector: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OverrideRow {
    pub action: String,
    pub staff_id: String,
    pub reason: String,
    pub at_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DecisionRow {
    pub id: String,
    pub property_id: String,
    pub kiosk_id: String,
    pub created_at_ms: i64,
    pub outcome: String,
    pub reasons: Vec<String>,
    pub reservation_code: String,
    pub guest_id: Option<String>,
    pub match_score: f32,
    pub match_threshold: f32,
    pub live: bool,
    pub liveness_score: f32,
    pub masked: bool,
    pub health_colour: String,
    pub guest_message: String,
    pub final_outcome: String,
    pub override_: Option<OverrideRow>,
    /// The escalation ladder's steps asked in the stream, in order (e.g. "SHOW_RESERVATION").
    pub steps: Vec<String>,
    /// Frames the kiosk sent for this decision, and good frames fused into it.
    pub frames: u32,
    pub fused_frames: u32,
    /// The cascade's fused score and threshold, when its second stage was consulted.
    pub cascade: Option<(f32, f32)>,
}

pub trait Store: Send + Sync {
    fn upsert_reservation(&self, r: &ReservationInput, actor: &str, now_ms: i64) -> Result<ReservationView>;
    fn get_reservation(&self, property: &str, code: &str) -> Result<Option<ReservationView>>;
    fn reservation_of_guest(&self, guest_id: &str) -> Result<Option<ReservationView>>;
    /// Records consent and stores templates; returns the template ids.
    fn enrol(
        &self,
        property: &str,
        code: &str,
        consent: &ConsentRecord,
        templates: &[NewTemplate],
        actor: &str,
        now_ms: i64,
    ) -> Result<(String, Vec<i64>)>;
    fn set_health(
        &self,
        property: &str,
        code: &str,
        h: &HealthRecord,
        actor: &str,
        now_ms: i64,
    ) -> Result<ReservationView>;
    /// Deletes the guest's templates and clears personal fields; returns the guest and deleted ids.
    fn erase_guest(
        &self,
        property: &str,
        code: &str,
        reason: &str,
        actor: &str,
        now_ms: i64,
    ) -> Result<(String, Vec<i64>)>;
    /// Every stored template (to build the indexes at start).
    fn all_templates(&self) -> Result<Vec<StoredTemplate>>;
    fn guest_templates(&self, guest_id: &str) -> Result<Vec<StoredTemplate>>;
    /// Records a decision; when `check_in` is set, also marks that reservation checked in.
    fn record_decision(&self, d: &DecisionRow, check_in: bool, now_ms: i64) -> Result<()>;
    fn get_decision(&self, id: &str) -> Result<Option<DecisionRow>>;
    /// REVIEW decisions not yet overridden, oldest first.
    fn pending_reviews(&self, property: Option<&str>) -> Result<Vec<DecisionRow>>;
    fn override_decision(&self, id: &str, ov: &OverrideRow, final_outcome: &str, check_in: bool)
        -> Result<DecisionRow>;
    fn verify_audit(&self) -> Result<Verification>;
}

const SCHEMA_VERSION: i64 = 2;

const SCHEMA_V1: &str = r#"
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
const SCHEMA_V2: &str = r#"
ALTER TABLE decisions ADD COLUMN steps TEXT NOT NULL DEFAULT '[]';
ALTER TABLE decisions ADD COLUMN frames INTEGER NOT NULL DEFAULT 1;
ALTER TABLE decisions ADD COLUMN fused_frames INTEGER NOT NULL DEFAULT 1;
ALTER TABLE decisions ADD COLUMN cascade_score REAL;
ALTER TABLE decisions ADD COLUMN cascade_threshold REAL;
"#;

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

fn vec_to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn blob_to_vec(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn date(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap_or_default()
}

fn append_audit(tx: &Transaction, ev: &AuditEvent, now_ms: i64) -> Result<()> {
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

const RES_SELECT: &str =
    "SELECT r.property_id, r.code, r.guest_id, g.full_name, g.guest_ref, r.arrival, r.departure, r.status,
    r.checked_in_at_ms, g.consent_at_ms IS NOT NULL, g.health_colour, g.health_issued_at_ms, g.health_expires_at_ms,
    g.health_source, (SELECT COUNT(*) FROM templates t WHERE t.guest_id = r.guest_id), g.erased_at_ms IS NOT NULL
    FROM reservations r JOIN guests g ON g.guest_id = r.guest_id";

fn res_row(r: &rusqlite::Row) -> rusqlite::Result<ReservationView> {
    Ok(ReservationView {
        property_id: r.get(0)?,
        code: r.get(1)?,
        guest_id: r.get(2)?,
        full_name: r.get(3)?,
        guest_ref: r.get(4)?,
        arrival: date(&r.get::<_, String>(5)?),
        departure: date(&r.get::<_, String>(6)?),
        status: ResStatus::parse(&r.get::<_, String>(7)?),
        checked_in_at_ms: r.get(8)?,
        consent: r.get(9)?,
        health: HealthRecord {
            colour: Colour::parse(&r.get::<_, String>(10)?),
            issued_at_ms: r.get(11)?,
            expires_at_ms: r.get(12)?,
            source: r.get(13)?,
        },
        templates: r.get::<_, i64>(14)? as u32,
        erased: r.get(15)?,
    })
}

const TPL_SELECT: &str = "SELECT id, guest_id, property_id, model_id, kind, vector FROM templates";

fn tpl_row(r: &rusqlite::Row) -> rusqlite::Result<StoredTemplate> {
    Ok(StoredTemplate {
        id: r.get(0)?,
        guest_id: r.get(1)?,
        property_id: r.get(2)?,
        model_id: r.get(3)?,
        kind: r.get(4)?,
        vector: blob_to_vec(&r.get::<_, Vec<u8>>(5)?),
    })
}

const DEC_SELECT: &str =
    "SELECT d.id, d.property_id, d.kiosk_id, d.created_at_ms, d.outcome, d.reasons, d.reservation_code,
    d.guest_id, d.match_score, d.match_threshold, d.live, d.liveness_score, d.masked, d.health_colour, d.guest_message,
    d.final_outcome, o.action, o.staff_id, o.reason, o.at_ms, d.steps, d.frames, d.fused_frames, d.cascade_score,
    d.cascade_threshold
    FROM decisions d LEFT JOIN overrides o ON o.decision_id = d.id";

fn dec_row(r: &rusqlite::Row) -> rusqlite::Result<DecisionRow> {
    let action: Option<String> = r.get(16)?;
    Ok(DecisionRow {
        id: r.get(0)?,
        property_id: r.get(1)?,
        kiosk_id: r.get(2)?,
        created_at_ms: r.get(3)?,
        outcome: r.get(4)?,
        reasons: serde_json::from_str(&r.get::<_, String>(5)?).unwrap_or_default(),
        reservation_code: r.get(6)?,
        guest_id: r.get(7)?,
        match_score: r.get::<_, f64>(8)? as f32,
        match_threshold: r.get::<_, f64>(9)? as f32,
        live: r.get(10)?,
        liveness_score: r.get::<_, f64>(11)? as f32,
        masked: r.get(12)?,
        health_colour: r.get(13)?,
        guest_message: r.get(14)?,
        final_outcome: r.get(15)?,
        override_: match action {
            Some(action) => Some(OverrideRow {
                action,
                staff_id: r.get(17)?,
                reason: r.get(18)?,
                at_ms: r.get(19)?,
            }),
            None => None,
        },
        steps: serde_json::from_str(&r.get::<_, String>(20)?).unwrap_or_default(),
        frames: r.get::<_, i64>(21)? as u32,
        fused_frames: r.get::<_, i64>(22)? as u32,
        cascade: match (r.get::<_, Option<f64>>(23)?, r.get::<_, Option<f64>>(24)?) {
            (Some(s), Some(t)) => Some((s as f32, t as f32)),
            _ => None,
        },
    })
}

impl SqliteStore {
    /// Opens (creating on first start) the store file and brings its schema up to date.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Db(format!("{}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA secure_delete = ON;
             PRAGMA busy_timeout = 5000;",
        )?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Db(format!(
                "store schema version {version} is newer than this server ({SCHEMA_VERSION}); refusing to open"
            )));
        }
        if version < 1 {
            conn.execute_batch(&format!("BEGIN; {SCHEMA_V1} PRAGMA user_version = 1; COMMIT;"))?;
        }
        if version < 2 {
            conn.execute_batch(&format!("BEGIN; {SCHEMA_V2} PRAGMA user_version = 2; COMMIT;"))?;
        }
        Ok(SqliteStore { conn: Mutex::new(conn) })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut c = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut c)
    }

    fn res_by_code(c: &Connection, property: &str, code: &str) -> Result<Option<ReservationView>> {
        Ok(c.query_row(
            &format!("{RES_SELECT} WHERE r.property_id = ?1 AND r.code = ?2"),
            params![property, code],
            res_row,
        )
        .optional()?)
    }

    fn res_required(c: &Connection, property: &str, code: &str) -> Result<ReservationView> {
        Self::res_by_code(c, property, code)?
            .ok_or_else(|| StoreError::NotFound(format!("reservation {property}/{code}")))
    }
}

fn new_guest_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut b);
    format!("g_{}", hex::encode(b))
}

impl Store for SqliteStore {
    fn upsert_reservation(&self, r: &ReservationInput, actor: &str, now_ms: i64) -> Result<ReservationView> {
        self.with(|c| {
            let tx = c.transaction()?;
            let existing = Self::res_by_code(&tx, &r.property_id, &r.code)?;
            let guest_id = match &existing {
                Some(e) if e.erased => {
                    return Err(StoreError::Conflict(format!("the guest of reservation {} was erased", r.code)))
                }
                Some(e) => {
                    tx.execute(
                        "UPDATE guests SET full_name = ?2, guest_ref = ?3 WHERE guest_id = ?1",
                        params![e.guest_id, r.full_name, r.guest_ref],
                    )?;
                    tx.execute(
                        "UPDATE reservations SET arrival = ?3, departure = ?4, status = ?5 WHERE property_id = ?1 AND code = ?2",
                        params![r.property_id, r.code, r.arrival.to_string(), r.departure.to_string(), r.status.as_str()],
                    )?;
                    e.guest_id.clone()
                }
                None => {
                    let gid = new_guest_id();
                    tx.execute(
                        "INSERT INTO guests (guest_id, full_name, guest_ref) VALUES (?1, ?2, ?3)",
                        params![gid, r.full_name, r.guest_ref],
                    )?;
                    tx.execute(
                        "INSERT INTO reservations (property_id, code, guest_id, arrival, departure, status) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![r.property_id, r.code, gid, r.arrival.to_string(), r.departure.to_string(), r.status.as_str()],
                    )?;
                    gid
                }
            };
            let ev = AuditEvent {
                kind: "reservation_upserted",
                actor: actor.into(),
                subject: format!("{}/{}", r.property_id, r.code),
                details: json!({"guest_id": guest_id, "arrival": r.arrival.to_string(), "departure": r.departure.to_string(),
                                "status": r.status.as_str(), "created": existing.is_none()}),
            };
            append_audit(&tx, &ev, now_ms)?;
            let view = Self::res_required(&tx, &r.property_id, &r.code)?;
            tx.commit()?;
            Ok(view)
        })
    }

    fn get_reservation(&self, property: &str, code: &str) -> Result<Option<ReservationView>> {
        self.with(|c| Self::res_by_code(c, property, code))
    }

    fn reservation_of_guest(&self, guest_id: &str) -> Result<Option<ReservationView>> {
        self.with(|c| {
            Ok(c.query_row(
                &format!("{RES_SELECT} WHERE r.guest_id = ?1"),
                params![guest_id],
                res_row,
            )
            .optional()?)
        })
    }

    fn enrol(
        &self,
        property: &str,
        code: &str,
        consent: &ConsentRecord,
        templates: &[NewTemplate],
        actor: &str,
        now_ms: i64,
    ) -> Result<(String, Vec<i64>)> {
        self.with(|c| {
            let tx = c.transaction()?;
            let res = Self::res_required(&tx, property, code)?;
            if res.erased {
                return Err(StoreError::Conflict("the guest was erased; upsert a new reservation".into()));
            }
            tx.execute(
                "UPDATE guests SET consent_method = ?2, consent_text_version = ?3, consent_at_ms = ?4 WHERE guest_id = ?1",
                params![res.guest_id, consent.method, consent.text_version, consent.at_ms],
            )?;
            let mut model_ids: Vec<&str> = templates.iter().map(|t| t.model_id.as_str()).collect();
            model_ids.sort_unstable();
            model_ids.dedup();
            let mut ids = Vec::new();
            for t in templates {
                tx.execute(
                    "INSERT INTO templates (guest_id, property_id, model_id, kind, vector, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![res.guest_id, property, t.model_id, t.kind, vec_to_blob(&t.vector), now_ms],
                )?;
                ids.push(tx.last_insert_rowid());
            }
            let ev = AuditEvent {
                kind: "face_enrolled",
                actor: actor.into(),
                subject: format!("{property}/{code}"),
                details: json!({"guest_id": res.guest_id, "templates_added": ids.len(), "model_ids": model_ids,
                                "consent_method": consent.method, "consent_text_version": consent.text_version,
                                "consent_at_ms": consent.at_ms}),
            };
            append_audit(&tx, &ev, now_ms)?;
            tx.commit()?;
            Ok((res.guest_id, ids))
        })
    }

    fn set_health(
        &self,
        property: &str,
        code: &str,
        h: &HealthRecord,
        actor: &str,
        now_ms: i64,
    ) -> Result<ReservationView> {
        self.with(|c| {
            let tx = c.transaction()?;
            let res = Self::res_required(&tx, property, code)?;
            if res.erased {
                return Err(StoreError::Conflict("the guest was erased".into()));
            }
            tx.execute(
                "UPDATE guests SET health_colour = ?2, health_issued_at_ms = ?3, health_expires_at_ms = ?4, health_source = ?5
                 WHERE guest_id = ?1",
                params![res.guest_id, h.colour.as_str(), h.issued_at_ms, h.expires_at_ms, h.source],
            )?;
            let ev = AuditEvent {
                kind: "health_updated",
                actor: actor.into(),
                subject: format!("{property}/{code}"),
                details: json!({"guest_id": res.guest_id, "colour": h.colour.as_str(), "issued_at_ms": h.issued_at_ms,
                                "expires_at_ms": h.expires_at_ms, "source": h.source}),
            };
            append_audit(&tx, &ev, now_ms)?;
            let view = Self::res_required(&tx, property, code)?;
            tx.commit()?;
            Ok(view)
        })
    }

    fn erase_guest(
        &self,
        property: &str,
        code: &str,
        reason: &str,
        actor: &str,
        now_ms: i64,
    ) -> Result<(String, Vec<i64>)> {
        let out = self.with(|c| {
            let tx = c.transaction()?;
            let res = Self::res_required(&tx, property, code)?;
            let ids: Vec<i64> = {
                let mut st = tx.prepare("SELECT id FROM templates WHERE guest_id = ?1")?;
                let rows = st.query_map(params![res.guest_id], |r| r.get(0))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            tx.execute("DELETE FROM templates WHERE guest_id = ?1", params![res.guest_id])?;
            tx.execute(
                "UPDATE guests SET full_name = '', guest_ref = '', erased_at_ms = ?2, consent_method = NULL,
                 consent_text_version = NULL, consent_at_ms = NULL, health_colour = 'UNKNOWN', health_issued_at_ms = 0,
                 health_expires_at_ms = 0, health_source = '' WHERE guest_id = ?1",
                params![res.guest_id, now_ms],
            )?;
            let ev = AuditEvent {
                kind: "guest_erased",
                actor: actor.into(),
                subject: format!("{property}/{code}"),
                details: json!({"guest_id": res.guest_id, "templates_deleted": ids.len(), "reason": reason}),
            };
            append_audit(&tx, &ev, now_ms)?;
            tx.commit()?;
            // Move the committed pages out of the WAL into the (secure-deleted) main file, so no copy
            // of the erased templates stays in the WAL.
            c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            Ok((res.guest_id, ids))
        })?;
        Ok(out)
    }

    fn all_templates(&self) -> Result<Vec<StoredTemplate>> {
        self.with(|c| {
            let mut st = c.prepare(&format!("{TPL_SELECT} ORDER BY id"))?;
            let rows = st.query_map([], tpl_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    fn guest_templates(&self, guest_id: &str) -> Result<Vec<StoredTemplate>> {
        self.with(|c| {
            let mut st = c.prepare(&format!("{TPL_SELECT} WHERE guest_id = ?1 ORDER BY id"))?;
            let rows = st.query_map(params![guest_id], tpl_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    fn record_decision(&self, d: &DecisionRow, check_in: bool, now_ms: i64) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO decisions (id, property_id, kiosk_id, created_at_ms, outcome, reasons, reservation_code, guest_id,
                 match_score, match_threshold, live, liveness_score, masked, health_colour, guest_message, final_outcome,
                 steps, frames, fused_frames, cascade_score, cascade_threshold)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)",
                params![
                    d.id,
                    d.property_id,
                    d.kiosk_id,
                    d.created_at_ms,
                    d.outcome,
                    serde_json::to_string(&d.reasons).unwrap_or_default(),
                    d.reservation_code,
                    d.guest_id,
                    d.match_score as f64,
                    d.match_threshold as f64,
                    d.live,
                    d.liveness_score as f64,
                    d.masked,
                    d.health_colour,
                    d.guest_message,
                    d.final_outcome,
                    serde_json::to_string(&d.steps).unwrap_or_default(),
                    d.frames,
                    d.fused_frames,
                    d.cascade.map(|c| c.0 as f64),
                    d.cascade.map(|c| c.1 as f64)
                ],
            )?;
            if check_in {
                tx.execute(
                    "UPDATE reservations SET status = 'CHECKED_IN', checked_in_at_ms = ?3 WHERE property_id = ?1 AND code = ?2",
                    params![d.property_id, d.reservation_code, now_ms],
                )?;
            }
            let ev = AuditEvent {
                kind: "decision",
                actor: d.kiosk_id.clone(),
                subject: d.id.clone(),
                details: json!({"property_id": d.property_id, "outcome": d.outcome, "reasons": d.reasons,
                                "reservation_code": d.reservation_code, "guest_id": d.guest_id,
                                "match_score": (d.match_score * 1e4).round() / 1e4,
                                "match_threshold": (d.match_threshold * 1e4).round() / 1e4,
                                "live": d.live, "masked": d.masked, "health_colour": d.health_colour,
                                "steps": d.steps, "frames": d.frames, "fused_frames": d.fused_frames,
                                "cascade_score": d.cascade.map(|c| (c.0 * 1e4).round() / 1e4),
                                "checked_in": check_in}),
            };
            append_audit(&tx, &ev, now_ms)?;
            tx.commit()?;
            Ok(())
        })
    }

    fn get_decision(&self, id: &str) -> Result<Option<DecisionRow>> {
        self.with(|c| {
            Ok(
                c.query_row(&format!("{DEC_SELECT} WHERE d.id = ?1"), params![id], dec_row)
                    .optional()?,
            )
        })
    }

    fn pending_reviews(&self, property: Option<&str>) -> Result<Vec<DecisionRow>> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "{DEC_SELECT} WHERE d.final_outcome = 'REVIEW' AND o.decision_id IS NULL
                 AND (?1 IS NULL OR d.property_id = ?1) ORDER BY d.created_at_ms, d.id"
            ))?;
            let rows = st.query_map(params![property], dec_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    fn override_decision(
        &self,
        id: &str,
        ov: &OverrideRow,
        final_outcome: &str,
        check_in: bool,
    ) -> Result<DecisionRow> {
        self.with(|c| {
            let tx = c.transaction()?;
            let d = tx
                .query_row(&format!("{DEC_SELECT} WHERE d.id = ?1"), params![id], dec_row)
                .optional()?
                .ok_or_else(|| StoreError::NotFound(format!("decision {id}")))?;
            if d.override_.is_some() {
                return Err(StoreError::Conflict(format!("decision {id} was already overridden")));
            }
            tx.execute(
                "INSERT INTO overrides (decision_id, action, staff_id, reason, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, ov.action, ov.staff_id, ov.reason, ov.at_ms],
            )?;
            tx.execute("UPDATE decisions SET final_outcome = ?2 WHERE id = ?1", params![id, final_outcome])?;
            if check_in && !d.reservation_code.is_empty() {
                tx.execute(
                    "UPDATE reservations SET status = 'CHECKED_IN', checked_in_at_ms = ?3 WHERE property_id = ?1 AND code = ?2",
                    params![d.property_id, d.reservation_code, ov.at_ms],
                )?;
            }
            let ev = AuditEvent {
                kind: "override",
                actor: ov.staff_id.clone(),
                subject: id.to_string(),
                details: json!({"action": ov.action, "reason": ov.reason, "from": d.final_outcome, "to": final_outcome,
                                "property_id": d.property_id, "reservation_code": d.reservation_code}),
            };
            append_audit(&tx, &ev, ov.at_ms)?;
            let out = tx.query_row(&format!("{DEC_SELECT} WHERE d.id = ?1"), params![id], dec_row)?;
            tx.commit()?;
            Ok(out)
        })
    }

    fn verify_audit(&self) -> Result<Verification> {
        self.with(|c| {
            let mut st =
                c.prepare("SELECT seq, at_ms, kind, actor, subject, details, prev_hash, hash FROM audit ORDER BY seq")?;
            let rows = st.query_map([], |r| {
                Ok(AuditEntry {
                    seq: r.get(0)?,
                    at_ms: r.get(1)?,
                    kind: r.get(2)?,
                    actor: r.get(3)?,
                    subject: r.get(4)?,
                    details: r.get(5)?,
                    prev_hash: r.get(6)?,
                    hash: r.get(7)?,
                })
            })?;
            let entries: Vec<AuditEntry> = rows.collect::<rusqlite::Result<_>>()?;
            Ok(audit::verify(&entries))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_store_opens_and_keeps_its_decisions_and_templates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lobby.sqlite3");
        {
            // A store as the server before schema version 2 left it.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(&format!("BEGIN; {SCHEMA_V1} PRAGMA user_version = 1; COMMIT;"))
                .unwrap();
            c.execute_batch(
                "INSERT INTO guests (guest_id, full_name, guest_ref) VALUES ('g1', 'A', 'r');
                 INSERT INTO templates (guest_id, property_id, model_id, kind, vector, created_at_ms)
                     VALUES ('g1', 'p', 'm', 'clean', x'0000803f', 1);
                 INSERT INTO decisions (id, property_id, kiosk_id, created_at_ms, outcome, reasons,
                     reservation_code, guest_id, match_score, match_threshold, live, liveness_score, masked,
                     health_colour, guest_message, final_outcome)
                     VALUES ('d1', 'p', 'k', 1, 'REVIEW', '[\"LOW_MATCH_SCORE\"]', 'R1', 'g1', 0.5, 0.6, 1, 0.9, 0,
                     'GREEN', 'm', 'REVIEW');",
            )
            .unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        let d = s.get_decision("d1").unwrap().expect("the old decision");
        assert_eq!((d.outcome.as_str(), d.reservation_code.as_str()), ("REVIEW", "R1"));
        assert!(d.steps.is_empty() && d.cascade.is_none());
        assert_eq!((d.frames, d.fused_frames), (1, 1));
        assert_eq!(s.pending_reviews(None).unwrap().len(), 1);
        let t = s.all_templates().unwrap();
        assert_eq!((t.len(), t[0].vector.as_slice()), (1, &[1.0f32][..]));
        let v: i64 = s
            .with(|c| Ok(c.query_row("PRAGMA user_version", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        // Opened again: nothing is migrated twice.
        drop(s);
        SqliteStore::open(&path).unwrap();
    }
}
