//! The SQLite store: one file (0600), WAL, `synchronous=FULL`, `secure_delete`, schema versions
//! applied at open; templates sealed with the template keys (`cipher`). Each call runs on the
//! blocking pool (`spawn_blocking`) with the one connection.

use super::audit::{self, AuditEntry, AuditEvent};
use super::cipher::{self, template_aad, TemplateKeys};
use super::rows::{
    append_audit, check_decision, code_mac, cred_row, dec_row, names_json, res_row, tpl_row, vec_to_blob, CrossRow,
    CRED_SELECT, DEC_SELECT, RES_SELECT, SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5, SCHEMA_VERSION,
    TPL_SELECT,
};
use super::{
    ConsentRecord, CredentialRow, DecisionRow, Enrolled, Erased, NewTemplate, OverrideRow, PurgeRules, Purged,
    ReservationInput, ReservationView, Result, ReviewCursor, Store, StoreError, StoredTemplate, Upserted,
};
use crate::domain::{HealthRecord, Outcome, ResStatus};
use chrono::NaiveDate;
use rusqlite::{params, Connection, OptionalExtension, ToSql, Transaction};
use serde_json::json;
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

const BUSY_TIMEOUT_MS: u64 = 5000;

pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    keys: Arc<TemplateKeys>,
}

/// The guest's pseudonymous reference (a keyed hash under the key in the guest's row).
fn ref_of_guest(c: &Connection, guest_id: &str) -> Result<String> {
    let key: Option<Vec<u8>> = c
        .query_row(
            "SELECT ref_key FROM guests WHERE guest_id = ?1",
            params![guest_id],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    key.map(|k| cipher::guest_ref(&k)).ok_or_else(|| StoreError::Corrupt {
        table: "guests",
        key: "(a guest)".into(),
        what: "no reference key".into(),
    })
}

fn new_guest(tx: &Transaction, full_name: &str, guest_ref: &str) -> Result<String> {
    let gid = new_guest_id();
    tx.execute(
        "INSERT INTO guests (guest_id, full_name, guest_ref, ref_key) VALUES (?1, ?2, ?3, ?4)",
        params![gid, full_name, guest_ref, cipher::new_subject_key()],
    )?;
    Ok(gid)
}

/// Clears the personal fields of the decisions `filter` selects (a condition on `decisions`) and
/// the keys that vouched for them in the audit trail, with their overrides' reasons; outcome,
/// reasons and scores stay, for statistics. Returns how many.
fn anonymise_decisions(tx: &Transaction, filter: &str, p: &[&dyn ToSql], now_ms: i64) -> Result<usize> {
    let ids: Vec<String> = {
        let mut st = tx.prepare(&format!(
            "SELECT id FROM decisions WHERE anonymised_at_ms IS NULL AND ({filter})"
        ))?;
        let rows = st.query_map(p, |r| r.get(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for id in &ids {
        tx.execute(
            "UPDATE decisions SET reservation_code = '', guest_id = NULL, mac_key = NULL, anonymised_at_ms = ?2
             WHERE id = ?1",
            params![id, now_ms],
        )?;
        tx.execute("UPDATE overrides SET reason = '' WHERE decision_id = ?1", params![id])?;
    }
    Ok(ids.len())
}

/// Deletes a guest entirely: templates, the guest's decisions' personal fields, the reservation
/// and guest rows (the reference key with them). Returns the deleted template ids and how many
/// decisions were anonymised.
fn forget_guest(tx: &Transaction, res: &ReservationView, now_ms: i64) -> Result<(Vec<i64>, usize)> {
    let gref = ref_of_guest(tx, &res.guest_id)?;
    let ids = template_ids(tx, &res.guest_id)?;
    tx.execute("DELETE FROM templates WHERE guest_id = ?1", params![res.guest_id])?;
    let decisions = anonymise_decisions(
        tx,
        "guest_id = ?1 OR subject_ref = ?2 OR (property_id = ?3 AND reservation_code = ?4)",
        &[&res.guest_id, &gref, &res.property_id, &res.code],
        now_ms,
    )?;
    tx.execute(
        "DELETE FROM reservations WHERE property_id = ?1 AND code = ?2",
        params![res.property_id, res.code],
    )?;
    tx.execute("DELETE FROM guests WHERE guest_id = ?1", params![res.guest_id])?;
    Ok((ids, decisions))
}

fn template_ids(c: &Connection, guest_id: &str) -> Result<Vec<i64>> {
    let mut st = c.prepare("SELECT id FROM templates WHERE guest_id = ?1")?;
    let rows = st.query_map(params![guest_id], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Moves the WAL's committed pages into the (secure-deleted) main file and truncates it, so no
/// copy of deleted rows stays in the WAL: retried a few times while a reader holds it; answers
/// whether it completed.
fn checkpoint_wal(c: &Connection) -> Result<bool> {
    // A short wait per attempt (not the connection's 5 s busy timeout): the connection serves
    // every other call meanwhile.
    c.busy_timeout(std::time::Duration::from_millis(50))?;
    let mut done = Ok(false);
    for attempt in 0..4 {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(20 << attempt));
        }
        match c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0)) {
            Ok(0) => {
                done = Ok(true);
                break;
            }
            Ok(_) => {}
            Err(e) => {
                done = Err(e.into());
                break;
            }
        }
    }
    c.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
    done
}

/// Two names of one person: the same letters, case and spacing aside.
pub(super) fn same_name(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
    norm(a) == norm(b)
}

pub(super) fn new_guest_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut b);
    format!("g_{}", hex::encode(b))
}

fn res_by_code(c: &Connection, property: &str, code: &str) -> Result<Option<ReservationView>> {
    c.query_row(
        &format!("{RES_SELECT} WHERE r.property_id = ?1 AND r.code = ?2"),
        params![property, code],
        res_row,
    )
    .optional()?
    .map(|r| r.parse())
    .transpose()
}

fn res_required(c: &Connection, property: &str, code: &str) -> Result<ReservationView> {
    res_by_code(c, property, code)?.ok_or_else(|| StoreError::NotFound(format!("reservation {property}/{code}")))
}

fn decision(c: &Connection, id: &str) -> Result<Option<DecisionRow>> {
    c.query_row(&format!("{DEC_SELECT} WHERE d.id = ?1"), params![id], dec_row)
        .optional()?
        .map(|r| r.parse())
        .transpose()
}

impl SqliteStore {
    /// Opens (creating on first start) the store file and brings its schema up to date.
    /// The file, its WAL and its directory are made private (0600, 0700) on first start.
    pub fn open(path: &Path, keys: Arc<TemplateKeys>) -> Result<SqliteStore> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                let mut b = std::fs::DirBuilder::new();
                b.recursive(true);
                #[cfg(unix)]
                std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
                b.create(dir).map_err(io(dir))?;
            }
        }
        // SQLite makes the WAL and its index with the main file's mode: a private file first.
        #[cfg(unix)]
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(io(path))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io(path))?;
        }
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA secure_delete = ON;
             PRAGMA busy_timeout = 5000;",
        )?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        if version < 1 {
            conn.execute_batch(&format!("BEGIN; {SCHEMA_V1} PRAGMA user_version = 1; COMMIT;"))?;
        }
        if version < 2 {
            conn.execute_batch(&format!("BEGIN; {SCHEMA_V2} PRAGMA user_version = 2; COMMIT;"))?;
        }
        if version < 3 {
            conn.execute_batch(&format!("BEGIN; {SCHEMA_V3} PRAGMA user_version = 3; COMMIT;"))?;
        }
        if version < 4 {
            conn.execute_batch(&format!("BEGIN; {SCHEMA_V4} PRAGMA user_version = 4; COMMIT;"))?;
        }
        let mut conn = conn;
        if version < 5 {
            let tx = conn.transaction()?;
            tx.execute_batch(SCHEMA_V5)?;
            // Templates stored in the clear by version 4 are sealed now.
            reseal_templates(&tx, &keys, true)?;
            tx.execute_batch("PRAGMA user_version = 5;")?;
            tx.commit()?;
            checkpoint_wal(&conn)?;
        }
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            keys,
        })
    }

    /// Re-seals every template not sealed with the current key (`lobby-server
    /// rotate-template-key`), in one transaction with its audit entry; returns how many.
    pub fn reseal_all(&self, actor: &str, now_ms: i64) -> Result<usize> {
        let keys = self.keys.clone();
        self.with(|c| {
            let tx = c.transaction()?;
            let n = reseal_templates(&tx, &keys, false)?;
            let ev = AuditEvent {
                kind: "template_key_rotated",
                actor: actor.to_string(),
                subject: keys.current_id().to_string(),
                details: json!({"templates_resealed": n}),
            };
            append_audit(&tx, &ev, now_ms)?;
            tx.commit()?;
            checkpoint_wal(c)?;
            Ok(n)
        })
    }

    /// Each decision and override agrees with its audit entry (the trail itself verified): a
    /// decision row without one, or whose outcome, reservation or final outcome differs from what
    /// the trail says, is named with its entry's number (the trail's end + 1 when it has none).
    /// Decisions are read in pages, so the connection is free between them.
    async fn cross_check_rows(&self, entries: i64) -> Result<Option<(i64, String)>> {
        const PAGE: i64 = 2000;
        let mut after = 0i64;
        loop {
            // (what is broken, the page's last rowid; None when it was the last page)
            let (found, next) = self
                .run(move |c| {
                    let mut st = c.prepare(
                        "SELECT d.rowid, d.id, d.outcome, d.final_outcome, a.seq, json_extract(a.details, '$.outcome'),
                                o.action, o.reason, oa.seq, json_extract(oa.details, '$.action'),
                                json_extract(oa.details, '$.to'), json_extract(oa.details, '$.reason'),
                                d.reservation_code, json_extract(a.details, '$.reservation_code'),
                                d.guest_id, d.subject_ref, d.mac_key, json_type(a.details, '$.ref') IS NOT NULL,
                                json_extract(a.details, '$.ref'), json_extract(a.details, '$.code_mac'),
                                json_extract(oa.details, '$.reason_mac')
                         FROM decisions d
                         LEFT JOIN audit a ON a.subject = d.id AND a.kind = 'decision'
                         LEFT JOIN overrides o ON o.decision_id = d.id
                         LEFT JOIN audit oa ON oa.subject = d.id AND oa.kind = 'override'
                         WHERE d.rowid > ?1 ORDER BY d.rowid LIMIT ?2",
                    )?;
                    let mut rows = st.query(params![after, PAGE])?;
                    let (mut last, mut n) = (after, 0);
                    while let Some(r) = rows.next()? {
                        n += 1;
                        last = r.get::<_, i64>(0)?;
                        let broken = check_decision(&cross_row(r)?, entries);
                        if broken.is_some() {
                            return Ok((broken, None));
                        }
                    }
                    Ok((None, (n == PAGE).then_some(last)))
                })
                .await?;
            match (found, next) {
                (Some(b), _) => return Ok(Some(b)),
                (None, Some(last)) => after = last,
                (None, None) => return Ok(None),
            }
        }
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn run<T: Send + 'static>(&self, f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static) -> Result<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut c)
        })
        .await
        .map_err(StoreError::Task)?
    }

    /// The same, on the calling thread (tests and tools outside a runtime).
    pub fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut c = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut c)
    }
}

#[tonic::async_trait]
impl Store for SqliteStore {
    async fn cross_check_decisions(&self, entries: i64) -> Result<Option<(i64, String)>> {
        self.cross_check_rows(entries).await
    }

    async fn upsert_reservation(&self, r: &ReservationInput, actor: &str, now_ms: i64) -> Result<Upserted> {
        let (r, actor) = (r.clone(), actor.to_string());
        self.run(move |c| {
            let tx = c.transaction()?;
            let existing = res_by_code(&tx, &r.property_id, &r.code)?;
            let (mut dropped, mut decisions, mut person_changed) = (Vec::new(), 0, false);
            let guest_id = match &existing {
                Some(e) => {
                    // Another person on the same booking: the first person's templates, consent,
                    // health status and decisions are not theirs; forgotten as at an erasure.
                    person_changed = if !e.guest_ref.is_empty() && !r.guest_ref.is_empty() {
                        e.guest_ref != r.guest_ref
                    } else {
                        !same_name(&e.full_name, &r.full_name)
                    };
                    if person_changed {
                        (dropped, decisions) = forget_guest(&tx, e, now_ms)?;
                        let gid = new_guest(&tx, &r.full_name, &r.guest_ref)?;
                        tx.execute(
                            "INSERT INTO reservations (property_id, code, guest_id, arrival, departure, status) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                            params![r.property_id, r.code, gid, r.arrival.to_string(), r.departure.to_string(), r.status.as_str()],
                        )?;
                        gid
                    } else {
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
                }
                None => {
                    let gid = new_guest(&tx, &r.full_name, &r.guest_ref)?;
                    tx.execute(
                        "INSERT INTO reservations (property_id, code, guest_id, arrival, departure, status) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![r.property_id, r.code, gid, r.arrival.to_string(), r.departure.to_string(), r.status.as_str()],
                    )?;
                    gid
                }
            };
            let ev = AuditEvent {
                kind: "reservation_upserted",
                actor,
                subject: ref_of_guest(&tx, &guest_id)?,
                details: json!({"property_id": r.property_id, "arrival": r.arrival.to_string(),
                                "departure": r.departure.to_string(), "status": r.status.as_str(),
                                "created": existing.is_none(), "person_changed": person_changed,
                                "templates_deleted": dropped.len(), "decisions_anonymised": decisions}),
            };
            append_audit(&tx, &ev, now_ms)?;
            let view = res_required(&tx, &r.property_id, &r.code)?;
            tx.commit()?;
            if person_changed {
                checkpoint_wal(c)?;
            }
            Ok(Upserted {
                view,
                dropped_templates: dropped,
                person_changed,
            })
        })
        .await
    }

    async fn get_reservation(&self, property: &str, code: &str) -> Result<Option<ReservationView>> {
        let (property, code) = (property.to_string(), code.to_string());
        self.run(move |c| res_by_code(c, &property, &code)).await
    }

    async fn reservation_of_guest(&self, guest_id: &str) -> Result<Option<ReservationView>> {
        let guest_id = guest_id.to_string();
        self.run(move |c| {
            c.query_row(
                &format!("{RES_SELECT} WHERE r.guest_id = ?1"),
                params![guest_id],
                res_row,
            )
            .optional()?
            .map(|r| r.parse())
            .transpose()
        })
        .await
    }

    async fn expected_guests(&self, property: &str, today: NaiveDate, slack_days: i64) -> Result<HashSet<String>> {
        let property = property.to_string();
        self.run(move |c| {
            let mut st = c.prepare(
                "SELECT r.guest_id FROM reservations r
                 WHERE r.property_id = ?1 AND r.status IN (?2, ?3)
                 AND date(r.arrival, printf('-%d days', ?4)) <= ?5 AND ?5 < date(r.departure, printf('+%d days', ?4))",
            )?;
            let rows = st.query_map(
                params![
                    property,
                    ResStatus::Booked.as_str(),
                    ResStatus::CheckedIn.as_str(),
                    slack_days,
                    today.to_string()
                ],
                |r| r.get(0),
            )?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn enrol(
        &self,
        property: &str,
        code: &str,
        consent: &ConsentRecord,
        templates: &[NewTemplate],
        actor: &str,
        now_ms: i64,
    ) -> Result<Enrolled> {
        let (property, code, consent, templates, actor) = (
            property.to_string(),
            code.to_string(),
            consent.clone(),
            templates.to_vec(),
            actor.to_string(),
        );
        let keys = self.keys.clone();
        self.run(move |c| {
            let tx = c.transaction()?;
            let res = res_required(&tx, &property, &code)?;
            tx.execute(
                "UPDATE guests SET consent_method = ?2, consent_text_version = ?3, consent_at_ms = ?4 WHERE guest_id = ?1",
                params![res.guest_id, consent.method, consent.text_version, consent.at_ms],
            )?;
            let mut model_ids: Vec<&str> = templates.iter().map(|t| t.model_id.as_str()).collect();
            model_ids.sort_unstable();
            model_ids.dedup();
            // An enrolment replaces the guest's templates: a retried request gives the same result,
            // never a second copy.
            let replaced = template_ids(&tx, &res.guest_id)?;
            tx.execute("DELETE FROM templates WHERE guest_id = ?1", params![res.guest_id])?;
            let mut ids = Vec::new();
            for t in &templates {
                let aad = template_aad(&res.guest_id, &property, t.kind.as_str(), &t.model_id);
                let (key_id, sealed) = keys.seal(&aad, &vec_to_blob(&t.vector));
                tx.execute(
                    "INSERT INTO templates (guest_id, property_id, model_id, kind, vector, created_at_ms, key_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![res.guest_id, property, t.model_id, t.kind.as_str(), sealed, now_ms, key_id],
                )?;
                ids.push(tx.last_insert_rowid());
            }
            let ev = AuditEvent {
                kind: "face_enrolled",
                actor,
                subject: ref_of_guest(&tx, &res.guest_id)?,
                details: json!({"property_id": property, "templates_added": ids.len(),
                                "templates_replaced": replaced.len(), "model_ids": model_ids,
                                "consent_method": consent.method, "consent_text_version": consent.text_version,
                                "consent_at_ms": consent.at_ms}),
            };
            append_audit(&tx, &ev, now_ms)?;
            tx.commit()?;
            Ok(Enrolled {
                guest_id: res.guest_id,
                added: ids,
                replaced,
            })
        })
        .await
    }

    async fn set_health(
        &self,
        property: &str,
        code: &str,
        h: &HealthRecord,
        actor: &str,
        now_ms: i64,
    ) -> Result<ReservationView> {
        let (property, code, h, actor) = (property.to_string(), code.to_string(), h.clone(), actor.to_string());
        self.run(move |c| {
            let tx = c.transaction()?;
            let res = res_required(&tx, &property, &code)?;
            tx.execute(
                "UPDATE guests SET health_colour = ?2, health_issued_at_ms = ?3, health_expires_at_ms = ?4, health_source = ?5
                 WHERE guest_id = ?1",
                params![res.guest_id, h.colour.as_str(), h.issued_at_ms, h.expires_at_ms, h.source],
            )?;
            let ev = AuditEvent {
                kind: "health_updated",
                actor,
                subject: ref_of_guest(&tx, &res.guest_id)?,
                details: json!({"property_id": property, "colour": h.colour.as_str(), "issued_at_ms": h.issued_at_ms,
                                "expires_at_ms": h.expires_at_ms, "source": h.source}),
            };
            append_audit(&tx, &ev, now_ms)?;
            let view = res_required(&tx, &property, &code)?;
            tx.commit()?;
            Ok(view)
        })
        .await
    }

    async fn erase_guest(&self, property: &str, code: &str, reason: &str, actor: &str, now_ms: i64) -> Result<Erased> {
        let (property, code, reason, actor) = (
            property.to_string(),
            code.to_string(),
            reason.to_string(),
            actor.to_string(),
        );
        self.run(move |c| {
            let tx = c.transaction()?;
            let res = res_required(&tx, &property, &code)?;
            let gref = ref_of_guest(&tx, &res.guest_id)?;
            let (ids, decisions) = forget_guest(&tx, &res, now_ms)?;
            let ev = AuditEvent {
                kind: "guest_erased",
                actor,
                subject: gref,
                details: json!({"property_id": property, "templates_deleted": ids.len(),
                                "decisions_anonymised": decisions, "reason": reason}),
            };
            append_audit(&tx, &ev, now_ms)?;
            tx.commit()?;
            let wal_cleared = checkpoint_wal(c)?;
            Ok(Erased {
                guest_id: res.guest_id,
                templates: ids,
                decisions_anonymised: decisions,
                wal_cleared,
            })
        })
        .await
    }

    async fn checkpoint_wal(&self) -> Result<bool> {
        self.run(|c| checkpoint_wal(c)).await
    }

    async fn properties(&self) -> Result<Vec<String>> {
        self.run(|c| {
            let mut st = c.prepare("SELECT DISTINCT property_id FROM reservations ORDER BY property_id")?;
            let rows = st.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn purge(&self, rules: &PurgeRules, now_ms: i64) -> Result<Purged> {
        let rules = rules.clone();
        self.run(move |c| {
            let tx = c.transaction()?;
            let mut out = Purged::default();
            // Templates: (rule, the condition on `r`, its date).
            for p in &rules.properties {
                let template_rules: [(&str, &str, Option<NaiveDate>); 3] = [
                    ("templates_after_departure", "r.departure < ?2", Some(p.departed_before)),
                    (
                        "templates_of_no_shows",
                        "r.status = 'BOOKED' AND r.arrival < ?2",
                        Some(p.no_show_arrived_before),
                    ),
                    ("templates_of_cancelled", "r.status = 'CANCELLED' AND ?2 IS NULL", None),
                ];
                for (rule, cond, date) in template_rules {
                    let rows: Vec<(i64, String)> = {
                        let mut st = tx.prepare(&format!(
                            "SELECT t.id, t.guest_id FROM templates t JOIN reservations r ON r.guest_id = t.guest_id
                             WHERE r.property_id = ?1 AND {cond}"
                        ))?;
                        let rows = st.query_map(params![p.property, date.map(|d| d.to_string())], |r| {
                            Ok((r.get(0)?, r.get(1)?))
                        })?;
                        rows.collect::<rusqlite::Result<_>>()?
                    };
                    for (id, _) in &rows {
                        tx.execute("DELETE FROM templates WHERE id = ?1", params![id])?;
                        out.templates.push((p.property.clone(), *id));
                    }
                    let guests: HashSet<&String> = rows.iter().map(|(_, g)| g).collect();
                    out.count(rule, "templates_deleted", rows.len());
                    out.count(rule, "guests", guests.len());
                }
                // Guests forgotten: the reservation and the person, as at an erasure.
                let gone: Vec<String> = {
                    let mut st =
                        tx.prepare("SELECT code FROM reservations WHERE property_id = ?1 AND departure < ?2")?;
                    let rows = st.query_map(params![p.property, p.forget_departed_before.to_string()], |r| r.get(0))?;
                    rows.collect::<rusqlite::Result<_>>()?
                };
                for code in &gone {
                    let res = res_required(&tx, &p.property, code)?;
                    let (ids, decisions) = forget_guest(&tx, &res, now_ms)?;
                    out.templates.extend(ids.iter().map(|id| (p.property.clone(), *id)));
                    out.count("guests_after_departure", "guests_forgotten", 1);
                    out.count("guests_after_departure", "templates_deleted", ids.len());
                    out.count("guests_after_departure", "decisions_anonymised", decisions);
                }
            }
            let n = anonymise_decisions(&tx, "created_at_ms < ?1", &[&rules.decisions_before_ms], now_ms)?;
            out.count("decisions", "decisions_anonymised", n);
            for (rule, counts) in &out.counts {
                if counts.values().any(|n| *n > 0) {
                    let ev = AuditEvent {
                        kind: "retention_purge",
                        actor: "retention".into(),
                        subject: rule.clone(),
                        details: json!(counts),
                    };
                    append_audit(&tx, &ev, now_ms)?;
                }
            }
            tx.commit()?;
            if out.counts.values().any(|c| c.values().any(|n| *n > 0)) {
                out.wal_cleared = checkpoint_wal(c)?;
            } else {
                out.wal_cleared = true;
            }
            Ok(out)
        })
        .await
    }

    async fn all_templates(&self) -> Result<Vec<StoredTemplate>> {
        let keys = self.keys.clone();
        self.run(move |c| {
            let mut st = c.prepare(&format!("{TPL_SELECT} ORDER BY id"))?;
            let rows = st.query_map([], tpl_row)?;
            rows.map(|r| r?.open(&keys)).collect()
        })
        .await
    }

    async fn indexed_templates(&self) -> Result<Vec<StoredTemplate>> {
        let keys = self.keys.clone();
        self.run(move |c| {
            let mut st = c.prepare(&format!("{TPL_SELECT} WHERE kind IN ('clean', 'masked') ORDER BY id"))?;
            let rows = st.query_map([], tpl_row)?;
            rows.map(|r| r?.open(&keys)).collect()
        })
        .await
    }

    async fn guest_templates(&self, guest_id: &str) -> Result<Vec<StoredTemplate>> {
        let (guest_id, keys) = (guest_id.to_string(), self.keys.clone());
        self.run(move |c| {
            let mut st = c.prepare(&format!("{TPL_SELECT} WHERE guest_id = ?1 ORDER BY id"))?;
            let rows = st.query_map(params![guest_id], tpl_row)?;
            rows.map(|r| r?.open(&keys)).collect()
        })
        .await
    }

    async fn record_decision(&self, d: &DecisionRow, if_taken: Option<&DecisionRow>, now_ms: i64) -> Result<bool> {
        let (mut d, if_taken) = (d.clone(), if_taken.cloned());
        self.run(move |c| {
            let tx = c.transaction()?;
            let mut as_decided = true;
            let check_in = match if_taken {
                Some(taken) => {
                    // Compare-and-set: only a reservation still BOOKED, of a guest not erased.
                    let n = tx.execute(
                        "UPDATE reservations SET status = ?4, checked_in_at_ms = ?3
                         WHERE property_id = ?1 AND code = ?2 AND status = ?5",
                        params![
                            d.property_id,
                            d.reservation_code,
                            now_ms,
                            ResStatus::CheckedIn.as_str(),
                            ResStatus::Booked.as_str()
                        ],
                    )?;
                    if n == 0 {
                        d = taken;
                        as_decided = false;
                    }
                    n > 0
                }
                None => false,
            };
            let reasons = names_json(&d.reasons, |r| r.as_str());
            let steps = names_json(&d.steps, |s| s.as_str());
            // The guest the decision is about, by pseudonym; its personal fields vouched for in the
            // trail by keyed hashes under the decision's own key (cleared when it is anonymised).
            let guest = match &d.guest_id {
                Some(g) => Some(g.clone()),
                None if !d.reservation_code.is_empty() => tx
                    .query_row(
                        "SELECT guest_id FROM reservations WHERE property_id = ?1 AND code = ?2",
                        params![d.property_id, d.reservation_code],
                        |r| r.get::<_, String>(0),
                    )
                    .optional()?,
                None => None,
            };
            let subject_ref = match &guest {
                Some(g) => ref_of_guest(&tx, g)?,
                None => String::new(),
            };
            let mac_key = cipher::new_subject_key();
            let code_mac = code_mac(&mac_key, &d.reservation_code);
            tx.execute(
                "INSERT INTO decisions (id, property_id, kiosk_id, created_at_ms, outcome, reasons, reservation_code, guest_id,
                 match_score, match_threshold, live, liveness_score, masked, health_colour, guest_message, final_outcome,
                 steps, frames, fused_frames, cascade_score, cascade_threshold, subject_ref, mac_key)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)",
                params![
                    d.id,
                    d.property_id,
                    d.kiosk_id,
                    d.created_at_ms,
                    d.outcome.as_str(),
                    reasons,
                    d.reservation_code,
                    d.guest_id,
                    d.match_score as f64,
                    d.match_threshold as f64,
                    d.live,
                    d.liveness_score as f64,
                    d.masked,
                    d.health_colour.as_str(),
                    d.guest_message,
                    d.final_outcome.as_str(),
                    steps,
                    d.frames,
                    d.fused_frames,
                    d.cascade.map(|c| c.0 as f64),
                    d.cascade.map(|c| c.1 as f64),
                    subject_ref,
                    mac_key
                ],
            )?;
            let ev = AuditEvent {
                kind: "decision",
                actor: d.kiosk_id.clone(),
                subject: d.id.clone(),
                details: json!({"property_id": d.property_id, "outcome": d.outcome.as_str(),
                                "reasons": d.reasons.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
                                "ref": subject_ref, "code_mac": code_mac,
                                "match_score": (d.match_score * 1e4).round() / 1e4,
                                "match_threshold": (d.match_threshold * 1e4).round() / 1e4,
                                "live": d.live, "masked": d.masked, "health_colour": d.health_colour.as_str(),
                                "steps": d.steps.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
                                "frames": d.frames, "fused_frames": d.fused_frames,
                                "cascade_score": d.cascade.map(|c| (c.0 * 1e4).round() / 1e4),
                                "checked_in": check_in}),
            };
            append_audit(&tx, &ev, now_ms)?;
            tx.commit()?;
            Ok(as_decided)
        })
        .await
    }

    async fn get_decision(&self, id: &str) -> Result<Option<DecisionRow>> {
        let id = id.to_string();
        self.run(move |c| decision(c, &id)).await
    }

    async fn pending_reviews(
        &self,
        property: Option<&str>,
        after: Option<&ReviewCursor>,
        limit: usize,
    ) -> Result<Vec<DecisionRow>> {
        let property = property.map(str::to_string);
        let (after_ms, after_id) = after
            .map(|c| (c.created_at_ms, c.id.clone()))
            .unwrap_or((i64::MIN, String::new()));
        let limit = limit as i64;
        self.run(move |c| {
            let mut st = c.prepare(&format!(
                "{DEC_SELECT} WHERE d.final_outcome = ?2 AND o.decision_id IS NULL
                 AND (?1 IS NULL OR d.property_id = ?1)
                 AND (d.created_at_ms > ?3 OR (d.created_at_ms = ?3 AND d.id > ?4))
                 ORDER BY d.created_at_ms, d.id LIMIT ?5"
            ))?;
            let rows = st.query_map(
                params![property, Outcome::Review.as_str(), after_ms, after_id, limit],
                dec_row,
            )?;
            rows.map(|r| r?.parse()).collect()
        })
        .await
    }

    async fn override_decision(
        &self,
        id: &str,
        ov: &OverrideRow,
        final_outcome: Outcome,
        check_in: bool,
    ) -> Result<DecisionRow> {
        let (id, ov) = (id.to_string(), ov.clone());
        self.run(move |c| {
            let tx = c.transaction()?;
            let d = decision(&tx, &id)?.ok_or_else(|| StoreError::NotFound(format!("decision {id}")))?;
            if d.override_.is_some() {
                return Err(StoreError::Conflict(format!("decision {id} was already overridden")));
            }
            let (subject_ref, mac_key): (String, Option<Vec<u8>>) = tx.query_row(
                "SELECT subject_ref, mac_key FROM decisions WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let Some(mac_key) = mac_key else {
                return Err(StoreError::Conflict(format!(
                    "decision {id} was anonymised (retention or erasure); it can no longer be overridden"
                )));
            };
            tx.execute(
                "INSERT INTO overrides (decision_id, action, staff_id, reason, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, ov.action.as_str(), ov.staff_id, ov.reason, ov.at_ms],
            )?;
            tx.execute(
                "UPDATE decisions SET final_outcome = ?2 WHERE id = ?1",
                params![id, final_outcome.as_str()],
            )?;
            if check_in {
                // Compare-and-set, as for a kiosk's approval: a reservation cancelled, checked in or
                // out, or erased since the decision is not checked in by an override.
                let n = tx.execute(
                    "UPDATE reservations SET status = ?4, checked_in_at_ms = ?3
                     WHERE property_id = ?1 AND code = ?2 AND status = ?5",
                    params![
                        d.property_id,
                        d.reservation_code,
                        ov.at_ms,
                        ResStatus::CheckedIn.as_str(),
                        ResStatus::Booked.as_str()
                    ],
                )?;
                if n == 0 {
                    return Err(StoreError::Conflict(format!(
                        "reservation {} is no longer booked (cancelled, checked in or out, or erased); nothing was changed",
                        d.reservation_code
                    )));
                }
            }
            // Approving a guest the policy denied for a RED health code is flagged as such.
            let red_override =
                check_in && d.outcome == Outcome::Denied && d.health_colour == crate::domain::Colour::Red;
            let ev = AuditEvent {
                kind: "override",
                actor: ov.staff_id.clone(),
                subject: id.clone(),
                details: json!({"action": ov.action.as_str(), "reason_mac": cipher::keyed_hash(&mac_key, &ov.reason),
                                "from": d.final_outcome.as_str(), "to": final_outcome.as_str(),
                                "property_id": d.property_id, "ref": subject_ref,
                                "overrides_red_health_code": red_override}),
            };
            append_audit(&tx, &ev, ov.at_ms)?;
            let out = decision(&tx, &id)?.ok_or_else(|| StoreError::NotFound(format!("decision {id}")))?;
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    async fn audit_head(&self) -> Result<Option<(i64, String)>> {
        self.run(|c| {
            Ok(
                c.query_row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?,
            )
        })
        .await
    }

    async fn add_checkpoint(&self, cp: &audit::Checkpoint) -> Result<()> {
        let cp = cp.clone();
        self.run(move |c| {
            c.execute(
                "INSERT INTO audit_checkpoints (seq, head_hash, at_ms, signature) VALUES (?1, ?2, ?3, ?4)",
                params![cp.seq, cp.head_hash, cp.at_ms, cp.signature],
            )?;
            Ok(())
        })
        .await
    }

    async fn checkpoints(&self) -> Result<Vec<audit::Checkpoint>> {
        self.run(|c| {
            let mut st = c.prepare("SELECT seq, head_hash, at_ms, signature FROM audit_checkpoints ORDER BY seq")?;
            let rows = st.query_map([], |r| {
                Ok(audit::Checkpoint {
                    seq: r.get(0)?,
                    head_hash: r.get(1)?,
                    at_ms: r.get(2)?,
                    signature: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn audit_page(&self, after: i64, limit: usize) -> Result<Vec<AuditEntry>> {
        let limit = limit as i64;
        self.run(move |c| {
            let mut st = c.prepare(
                "SELECT seq, at_ms, kind, actor, subject, details, prev_hash, hash FROM audit
                 WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = st.query_map(params![after, limit], |r| {
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
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn add_credential(&self, cr: &CredentialRow, actor: &str, now_ms: i64) -> Result<()> {
        let (cr, actor) = (cr.clone(), actor.to_string());
        self.run(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO credentials (token_id, holder, role, property_id, sha256, created_at_ms, expires_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    cr.token_id,
                    cr.holder,
                    cr.role.as_str(),
                    cr.property,
                    cr.sha256,
                    cr.created_at_ms,
                    cr.expires_at_ms
                ],
            )?;
            let ev = AuditEvent {
                kind: "credential_added",
                actor,
                subject: cr.token_id.clone(),
                details: json!({"holder": cr.holder, "role": cr.role.as_str(), "property": cr.property,
                                "expires_at_ms": cr.expires_at_ms}),
            };
            append_audit(&tx, &ev, now_ms)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn credentials(&self) -> Result<Vec<CredentialRow>> {
        self.run(|c| {
            let mut st = c.prepare(&format!("{CRED_SELECT} ORDER BY created_at_ms, token_id"))?;
            let rows = st.query_map([], cred_row)?;
            rows.map(|r| r?).collect()
        })
        .await
    }

    async fn revoke_credential(&self, token_id: &str, actor: &str, now_ms: i64) -> Result<CredentialRow> {
        let (token_id, actor) = (token_id.to_string(), actor.to_string());
        self.run(move |c| {
            let tx = c.transaction()?;
            let n = tx.execute(
                "UPDATE credentials SET revoked_at_ms = ?2 WHERE token_id = ?1 AND revoked_at_ms IS NULL",
                params![token_id, now_ms],
            )?;
            let row = tx
                .query_row(
                    &format!("{CRED_SELECT} WHERE token_id = ?1"),
                    params![token_id],
                    cred_row,
                )
                .optional()?
                .transpose()?
                .ok_or_else(|| StoreError::NotFound(format!("credential {token_id}")))?;
            if n == 0 {
                return Err(StoreError::Conflict(format!(
                    "credential {token_id} is already revoked"
                )));
            }
            let ev = AuditEvent {
                kind: "credential_revoked",
                actor,
                subject: token_id.clone(),
                details: json!({"holder": row.holder, "role": row.role.as_str(), "property": row.property}),
            };
            append_audit(&tx, &ev, now_ms)?;
            tx.commit()?;
            Ok(row)
        })
        .await
    }
}

/// Seals the templates not sealed with the current key (`plain`: rows of schema version 4, stored
/// in the clear); returns how many.
fn reseal_templates(tx: &Transaction, keys: &TemplateKeys, plain: bool) -> Result<usize> {
    let current = keys.current_id().to_string();
    let rows: Vec<super::StoredTemplate> = {
        let mut st = tx.prepare(&format!(
            "{TPL_SELECT} WHERE {}",
            if plain { "key_id IS NULL" } else { "key_id IS NOT ?1" }
        ))?;
        let raw: Vec<_> = if plain {
            st.query_map([], tpl_row)?.collect::<rusqlite::Result<_>>()?
        } else {
            st.query_map(params![current], tpl_row)?
                .collect::<rusqlite::Result<_>>()?
        };
        raw.into_iter()
            .map(|r| if plain { r.in_the_clear() } else { r.open(keys) })
            .collect::<Result<_>>()?
    };
    for t in &rows {
        let aad = template_aad(&t.guest_id, &t.property_id, t.kind.as_str(), &t.model_id);
        let (key_id, sealed) = keys.seal(&aad, &vec_to_blob(&t.vector));
        tx.execute(
            "UPDATE templates SET vector = ?2, key_id = ?3 WHERE id = ?1",
            params![t.id, sealed, key_id],
        )?;
    }
    Ok(rows.len())
}

/// One row of `cross_check_decisions`' query (after its rowid).
fn cross_row(r: &rusqlite::Row) -> rusqlite::Result<CrossRow> {
    Ok(CrossRow {
        id: r.get(1)?,
        outcome: r.get(2)?,
        final_outcome: r.get(3)?,
        seq: r.get(4)?,
        said: r.get(5)?,
        action: r.get(6)?,
        reason: r.get(7)?,
        oseq: r.get(8)?,
        said_action: r.get(9)?,
        said_to: r.get(10)?,
        said_reason: r.get(11)?,
        code: r.get(12)?,
        said_code: r.get(13)?,
        guest_id: r.get(14)?,
        subject_ref: r.get(15)?,
        key: r.get(16)?,
        v5: r.get(17)?,
        said_ref: r.get(18)?,
        said_code_mac: r.get(19)?,
        said_reason_mac: r.get(20)?,
    })
}
