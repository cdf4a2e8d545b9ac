//! The PostgreSQL store (`store.url = "postgres://…"`), for several Lobby nodes on one database:
//! the same rules as [`super::SqliteStore`] in PostgreSQL's terms. A pool of connections
//! (deadpool-postgres on tokio-postgres, async: nothing blocks a runtime thread); the schema's
//! versions applied at start under an advisory lock (`pg_schema`).
//!
//! Every writing transaction first locks the audit head row (`Writer::begin`), so writes are
//! serialised across nodes as the SQLite file serialises them within one: the trail stays one
//! chain, the check-in compare-and-set and the "another person on the booking" rule see a settled
//! reservation, and change numbers commit in order. A transaction that changed what the nodes hold
//! in memory (templates, REVIEW decisions) appends to `changes` and notifies `lobby_changes` at
//! commit (`follow_changes`).
//!
//! Erasure deletes the rows at once and then VACUUMs the personal tables, so their space is
//! reclaimed; unlike SQLite's `secure_delete`, PostgreSQL does not overwrite freed space, and its
//! WAL and any base backups hold old row versions until they are recycled (README, "Several nodes
//! on PostgreSQL": what erasure means there).

use super::audit::{self, AuditEntry, AuditEvent};
use super::cipher::{self, template_aad, TemplateKeys};
use super::pg_schema::{MIGRATIONS, MIGRATION_LOCK};
use super::rows::{
    check_decision, code_mac, corrupt, names_json, vec_to_blob, CrossRow, RawDecision, RawReservation, RawTemplate,
    CRED_SELECT, TPL_SELECT,
};
use super::{
    ConsentRecord, CredentialRow, DecisionRow, Enrolled, Erased, NewTemplate, OverrideRow, PurgeRules, Purged,
    ReservationInput, ReservationView, Result, ReviewCursor, Store, StoreError, StoredTemplate, Upserted,
};
use crate::domain::{Colour, HealthRecord, Outcome, OverrideAction, ResStatus, TemplateKind};
use chrono::NaiveDate;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row, Transaction};
use tokio_postgres_rustls::MakeRustlsConnect;

/// Where Debian keeps the system's CA bundle.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// TLS to PostgreSQL (rustls): the server's certificate verified against `ca_file` (PEM), or the
/// system's roots when it is empty.
fn tls_connector(ca_file: &str) -> Result<MakeRustlsConnect> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let db = |what: String| StoreError::Db(what.into());
    let mut roots = rustls::RootCertStore::empty();
    let file = if ca_file.is_empty() { SYSTEM_ROOTS } else { ca_file };
    match CertificateDer::pem_file_iter(file) {
        Ok(certs) => {
            for c in certs {
                let c = c.map_err(|e| db(format!("{file}: {e}")))?;
                roots.add(c).map_err(|e| db(format!("{file}: {e}")))?;
            }
        }
        Err(e) if !ca_file.is_empty() => return Err(db(format!("store.ca_file {file}: {e}"))),
        Err(_) => {}
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| db(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// The schema version this server writes.
pub const PG_SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The channel each writing commit notifies (payload: the last change number).
pub const CHANGES_CHANNEL: &str = "lobby_changes";

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::Db(Box::new(e))
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Db(Box::new(e))
    }
}

pub struct PgStore {
    pool: Pool,
    keys: Arc<TemplateKeys>,
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    /// This process's name in the change log (random per start).
    node: String,
}

/// One change the nodes apply (`changes` table).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub seq: i64,
    pub kind: ChangeKind,
    pub property_id: String,
    pub template_ids: Vec<i64>,
    pub decision_id: Option<String>,
    /// The node that made it.
    pub origin: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// A guest's templates were stored (enrolment): add them.
    TemplatesAdded,
    /// Templates were deleted (re-enrolment, erasure, another person, retention): take them out.
    TemplatesRemoved,
    /// A REVIEW decision was recorded: show it in the review feeds.
    Review,
}

impl ChangeKind {
    fn as_str(self) -> &'static str {
        match self {
            ChangeKind::TemplatesAdded => "templates_added",
            ChangeKind::TemplatesRemoved => "templates_removed",
            ChangeKind::Review => "review",
        }
    }
    fn parse(s: &str) -> Option<ChangeKind> {
        Some(match s {
            "templates_added" => ChangeKind::TemplatesAdded,
            "templates_removed" => ChangeKind::TemplatesRemoved,
            "review" => ChangeKind::Review,
            _ => return None,
        })
    }
}

/// A writing transaction: it holds the audit head row's lock from `begin` to `commit`, appends
/// audit entries and changes, and at commit moves the head and notifies the other nodes.
struct Writer<'a> {
    tx: Transaction<'a>,
    node: &'a str,
    seq: i64,
    hash: String,
    change_seq: i64,
    changed: bool,
}

impl<'a> Writer<'a> {
    async fn begin(c: &'a mut tokio_postgres::Client, node: &'a str) -> Result<Writer<'a>> {
        let tx = c.transaction().await?;
        let head = tx
            .query_one("SELECT seq, hash, change_seq FROM audit_head WHERE one FOR UPDATE", &[])
            .await?;
        Ok(Writer {
            seq: head.try_get(0)?,
            hash: head.try_get(1)?,
            change_seq: head.try_get(2)?,
            tx,
            node,
            changed: false,
        })
    }

    async fn audit(&mut self, ev: &AuditEvent, now_ms: i64) -> Result<()> {
        let e = AuditEntry::new(self.seq + 1, now_ms, ev, &self.hash);
        self.tx
            .execute(
                "INSERT INTO audit (seq, at_ms, kind, actor, subject, details, prev_hash, hash)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &e.seq,
                    &e.at_ms,
                    &e.kind,
                    &e.actor,
                    &e.subject,
                    &e.details,
                    &e.prev_hash,
                    &e.hash,
                ],
            )
            .await?;
        self.seq = e.seq;
        self.hash = e.hash;
        Ok(())
    }

    async fn change(
        &mut self,
        kind: ChangeKind,
        property: &str,
        template_ids: &[i64],
        decision_id: Option<&str>,
        now_ms: i64,
    ) -> Result<()> {
        if template_ids.is_empty() && kind != ChangeKind::Review {
            return Ok(());
        }
        self.change_seq += 1;
        self.tx
            .execute(
                "INSERT INTO changes (seq, at_ms, kind, property_id, template_ids, decision_id, origin)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &self.change_seq,
                    &now_ms,
                    &kind.as_str(),
                    &property,
                    &template_ids,
                    &decision_id,
                    &self.node,
                ],
            )
            .await?;
        self.changed = true;
        Ok(())
    }

    async fn commit(self) -> Result<()> {
        self.tx
            .execute(
                "UPDATE audit_head SET seq = $1, hash = $2, change_seq = $3 WHERE one",
                &[&self.seq, &self.hash, &self.change_seq],
            )
            .await?;
        if self.changed {
            // Delivered to the listeners when (and only if) the transaction commits.
            self.tx
                .execute(
                    "SELECT pg_notify($1, $2)",
                    &[&CHANGES_CHANNEL, &self.change_seq.to_string()],
                )
                .await?;
        }
        self.tx.commit().await?;
        Ok(())
    }
}

fn get<'r, T: tokio_postgres::types::FromSql<'r>>(r: &'r Row, i: usize) -> Result<T> {
    Ok(r.try_get(i)?)
}

const RES_SELECT: &str = "SELECT r.property_id, r.code, r.guest_id, g.full_name, g.guest_ref, r.arrival::text,
    r.departure::text, r.status, r.checked_in_at_ms, g.consent_at_ms IS NOT NULL, g.health_colour,
    g.health_issued_at_ms, g.health_expires_at_ms, g.health_source,
    (SELECT COUNT(*) FROM templates t WHERE t.guest_id = r.guest_id)
    FROM reservations r JOIN guests g ON g.guest_id = r.guest_id";

fn res_of(r: &Row) -> Result<ReservationView> {
    RawReservation {
        v: ReservationView {
            property_id: get(r, 0)?,
            code: get(r, 1)?,
            guest_id: get(r, 2)?,
            full_name: get(r, 3)?,
            guest_ref: get(r, 4)?,
            arrival: NaiveDate::MIN,
            departure: NaiveDate::MIN,
            status: ResStatus::Booked,
            checked_in_at_ms: get(r, 8)?,
            consent: get(r, 9)?,
            health: HealthRecord {
                colour: Colour::Unknown,
                issued_at_ms: get(r, 11)?,
                expires_at_ms: get(r, 12)?,
                source: get(r, 13)?,
            },
            templates: get::<i64>(r, 14)? as u32,
        },
        arrival: get(r, 5)?,
        departure: get(r, 6)?,
        status: get(r, 7)?,
        colour: get(r, 10)?,
    }
    .parse()
}

fn tpl_of(r: &Row, keys: &TemplateKeys) -> Result<StoredTemplate> {
    RawTemplate {
        t: StoredTemplate {
            id: get(r, 0)?,
            guest_id: get(r, 1)?,
            property_id: get(r, 2)?,
            model_id: get(r, 3)?,
            kind: TemplateKind::Clean,
            vector: Vec::new(),
        },
        kind: get(r, 4)?,
        sealed: get(r, 5)?,
        key_id: get(r, 6)?,
    }
    .open(keys)
}

const DEC_SELECT: &str = "SELECT d.id, d.property_id, d.kiosk_id, d.created_at_ms, d.outcome, d.reasons,
    d.reservation_code, d.guest_id, d.match_score, d.match_threshold, d.live, d.liveness_score, d.masked,
    d.health_colour, d.guest_message, d.final_outcome, o.action, o.staff_id, o.reason, o.at_ms, d.steps, d.frames,
    d.fused_frames, d.cascade_score, d.cascade_threshold
    FROM decisions d LEFT JOIN overrides o ON o.decision_id = d.id";

fn dec_of(r: &Row) -> Result<DecisionRow> {
    let action: Option<String> = get(r, 16)?;
    RawDecision {
        d: DecisionRow {
            id: get(r, 0)?,
            property_id: get(r, 1)?,
            kiosk_id: get(r, 2)?,
            created_at_ms: get(r, 3)?,
            outcome: Outcome::Retry,
            reasons: Vec::new(),
            reservation_code: get(r, 6)?,
            guest_id: get(r, 7)?,
            match_score: get::<f64>(r, 8)? as f32,
            match_threshold: get::<f64>(r, 9)? as f32,
            live: get(r, 10)?,
            liveness_score: get::<f64>(r, 11)? as f32,
            masked: get(r, 12)?,
            health_colour: Colour::Unknown,
            guest_message: get(r, 14)?,
            final_outcome: Outcome::Retry,
            override_: match action {
                Some(_) => Some(OverrideRow {
                    action: OverrideAction::Deny,
                    staff_id: get(r, 17)?,
                    reason: get(r, 18)?,
                    at_ms: get(r, 19)?,
                }),
                None => None,
            },
            steps: Vec::new(),
            frames: get::<i64>(r, 21)? as u32,
            fused_frames: get::<i64>(r, 22)? as u32,
            cascade: match (get::<Option<f64>>(r, 23)?, get::<Option<f64>>(r, 24)?) {
                (Some(s), Some(t)) => Some((s as f32, t as f32)),
                _ => None,
            },
        },
        outcome: get(r, 4)?,
        reasons: get(r, 5)?,
        colour: get(r, 13)?,
        final_outcome: get(r, 15)?,
        action,
        steps: get(r, 20)?,
    }
    .parse()
}

fn cred_of(r: &Row) -> Result<CredentialRow> {
    let token_id: String = get(r, 0)?;
    let role: String = get(r, 2)?;
    let role = crate::config::Role::parse(&role)
        .ok_or_else(|| corrupt("credentials", &token_id, format!("role = {role:?}")))?;
    Ok(CredentialRow {
        holder: get(r, 1)?,
        role,
        property: get(r, 3)?,
        sha256: get(r, 4)?,
        created_at_ms: get(r, 5)?,
        expires_at_ms: get(r, 6)?,
        revoked_at_ms: get(r, 7)?,
        token_id,
    })
}

async fn res_by_code<C: GenericClient>(c: &C, property: &str, code: &str) -> Result<Option<ReservationView>> {
    c.query_opt(
        &format!("{RES_SELECT} WHERE r.property_id = $1 AND r.code = $2"),
        &[&property, &code],
    )
    .await?
    .map(|r| res_of(&r))
    .transpose()
}

async fn res_required<C: GenericClient>(c: &C, property: &str, code: &str) -> Result<ReservationView> {
    res_by_code(c, property, code)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("reservation {property}/{code}")))
}

async fn decision<C: GenericClient>(c: &C, id: &str) -> Result<Option<DecisionRow>> {
    c.query_opt(&format!("{DEC_SELECT} WHERE d.id = $1"), &[&id])
        .await?
        .map(|r| dec_of(&r))
        .transpose()
}

/// The guest's pseudonymous reference (a keyed hash under the key in the guest's row).
async fn ref_of_guest<C: GenericClient>(c: &C, guest_id: &str) -> Result<String> {
    let key: Option<Vec<u8>> = c
        .query_opt("SELECT ref_key FROM guests WHERE guest_id = $1", &[&guest_id])
        .await?
        .map(|r| get(&r, 0))
        .transpose()?;
    key.map(|k| cipher::guest_ref(&k)).ok_or_else(|| StoreError::Corrupt {
        table: "guests",
        key: "(a guest)".into(),
        what: "no reference key".into(),
    })
}

async fn new_guest(tx: &Transaction<'_>, full_name: &str, guest_ref: &str) -> Result<String> {
    let gid = super::sqlite::new_guest_id();
    tx.execute(
        "INSERT INTO guests (guest_id, full_name, guest_ref, ref_key) VALUES ($1, $2, $3, $4)",
        &[&gid, &full_name, &guest_ref, &cipher::new_subject_key()],
    )
    .await?;
    Ok(gid)
}

async fn insert_reservation(tx: &Transaction<'_>, r: &ReservationInput, guest_id: &str) -> Result<()> {
    tx.execute(
        "INSERT INTO reservations (property_id, code, guest_id, arrival, departure, status)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &r.property_id,
            &r.code,
            &guest_id,
            &r.arrival,
            &r.departure,
            &r.status.as_str(),
        ],
    )
    .await?;
    Ok(())
}

/// Clears the personal fields of the decisions `filter` selects (a condition on `decisions` whose
/// parameters are `p`, numbered from `$2`; `$1` is the time) and the keys that vouched for them,
/// with their overrides' reasons; outcome, reasons and scores stay. Returns how many.
async fn anonymise_decisions(
    tx: &Transaction<'_>,
    filter: &str,
    p: &[&(dyn ToSql + Sync)],
    now_ms: i64,
) -> Result<usize> {
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&now_ms];
    params.extend_from_slice(p);
    let ids: Vec<String> = tx
        .query(
            &format!(
                "UPDATE decisions SET reservation_code = '', guest_id = NULL, mac_key = NULL, anonymised_at_ms = $1
                 WHERE anonymised_at_ms IS NULL AND ({filter}) RETURNING id"
            ),
            &params,
        )
        .await?
        .iter()
        .map(|r| get(r, 0))
        .collect::<Result<_>>()?;
    if !ids.is_empty() {
        tx.execute("UPDATE overrides SET reason = '' WHERE decision_id = ANY($1)", &[&ids])
            .await?;
    }
    Ok(ids.len())
}

/// Deletes a guest entirely (templates, reservation and guest rows, decisions anonymised); the
/// deleted template ids and how many decisions were anonymised.
async fn forget_guest(tx: &Transaction<'_>, res: &ReservationView, now_ms: i64) -> Result<(Vec<i64>, usize)> {
    let gref = ref_of_guest(tx, &res.guest_id).await?;
    let ids = delete_templates(tx, &res.guest_id).await?;
    let decisions = anonymise_decisions(
        tx,
        "guest_id = $2 OR subject_ref = $3 OR (property_id = $4 AND reservation_code = $5)",
        &[&res.guest_id, &gref, &res.property_id, &res.code],
        now_ms,
    )
    .await?;
    tx.execute(
        "DELETE FROM reservations WHERE property_id = $1 AND code = $2",
        &[&res.property_id, &res.code],
    )
    .await?;
    tx.execute("DELETE FROM guests WHERE guest_id = $1", &[&res.guest_id])
        .await?;
    Ok((ids, decisions))
}

async fn delete_templates(tx: &Transaction<'_>, guest_id: &str) -> Result<Vec<i64>> {
    let mut ids: Vec<i64> = tx
        .query("DELETE FROM templates WHERE guest_id = $1 RETURNING id", &[&guest_id])
        .await?
        .iter()
        .map(|r| get(r, 0))
        .collect::<Result<_>>()?;
    ids.sort_unstable();
    Ok(ids)
}

impl PgStore {
    /// Connects (a pool of `pool_size`), and brings the schema up to date.
    pub async fn open(url: &str, pool_size: usize, ca_file: &str, keys: Arc<TemplateKeys>) -> Result<PgStore> {
        let tls = tls_connector(ca_file)?;
        let mut config: tokio_postgres::Config = url.parse()?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config.application_name("lobby-server");
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| StoreError::Db(Box::new(e)))?;
        let node = {
            use rand::RngCore;
            let mut b = [0u8; 6];
            rand::thread_rng().fill_bytes(&mut b);
            format!("n_{}", hex::encode(b))
        };
        let store = PgStore {
            pool,
            keys,
            config,
            tls,
            node,
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<()> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS lobby_schema (version BIGINT NOT NULL)")
            .await?;
        let version: i64 = match tx.query_opt("SELECT version FROM lobby_schema", &[]).await? {
            Some(r) => get(&r, 0)?,
            None => {
                tx.execute("INSERT INTO lobby_schema (version) VALUES (0)", &[]).await?;
                0
            }
        };
        if version > PG_SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                found: version,
                supported: PG_SCHEMA_VERSION,
            });
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.batch_execute(m).await?;
            if i == 0 {
                tx.execute(
                    "INSERT INTO audit_head (seq, hash, change_seq) VALUES (0, $1, 0)",
                    &[&audit::GENESIS],
                )
                .await?;
            }
        }
        tx.execute("UPDATE lobby_schema SET version = $1", &[&PG_SCHEMA_VERSION])
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        Ok(self.pool.get().await?)
    }

    /// The connection settings (for the change listener's own connection).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// This process's name in the change log.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Listens on [`CHANGES_CHANNEL`] on a connection of its own and wakes `wake` at each
    /// notification (and once when listening starts, to catch up on what came before). Returns
    /// when that connection fails; the caller reconnects.
    pub async fn listen(&self, wake: Arc<tokio::sync::Notify>) -> Result<()> {
        let (client, mut conn) = self.config.connect(self.tls.clone()).await?;
        // The connection's messages, notifications among them, are read here; reading them also
        // drives the client's queries below.
        let w = wake.clone();
        let mut driver = tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                    Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => w.notify_one(),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(StoreError::from(e)),
                    None => return Ok(()),
                }
            }
        });
        let r = async {
            client.batch_execute(&format!("LISTEN {CHANGES_CHANNEL}")).await?;
            wake.notify_one();
            // Until the connection ends; a query now and then notices a silent loss.
            loop {
                tokio::select! {
                    d = &mut driver => return d.map_err(StoreError::Task)?,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {
                        client.simple_query("SELECT 1").await?;
                    }
                }
            }
        }
        .await;
        driver.abort();
        r
    }

    /// The last change number committed.
    pub async fn last_change(&self) -> Result<i64> {
        let c = self.client().await?;
        let r = c.query_one("SELECT change_seq FROM audit_head WHERE one", &[]).await?;
        get(&r, 0)
    }

    /// At most `limit` changes after `after`, in order.
    pub async fn changes_after(&self, after: i64, limit: i64) -> Result<Vec<Change>> {
        let c = self.client().await?;
        c.query(
            "SELECT seq, kind, property_id, template_ids, decision_id, origin FROM changes
             WHERE seq > $1 ORDER BY seq LIMIT $2",
            &[&after, &limit],
        )
        .await?
        .iter()
        .map(|r| {
            let kind: String = get(r, 1)?;
            let seq: i64 = get(r, 0)?;
            Ok(Change {
                seq,
                kind: ChangeKind::parse(&kind)
                    .ok_or_else(|| corrupt("changes", &seq.to_string(), format!("kind = {kind:?}")))?,
                property_id: get(r, 2)?,
                template_ids: get(r, 3)?,
                decision_id: get(r, 4)?,
                origin: get(r, 5)?,
            })
        })
        .collect()
    }

    /// The stored templates with these ids (those still there).
    pub async fn templates_by_id(&self, ids: &[i64]) -> Result<Vec<StoredTemplate>> {
        let c = self.client().await?;
        c.query(&format!("{TPL_SELECT} WHERE id = ANY($1) ORDER BY id"), &[&ids])
            .await?
            .iter()
            .map(|r| tpl_of(r, &self.keys))
            .collect()
    }

    /// Re-seals every template not sealed with the current key, with its audit entry; how many.
    pub async fn reseal_all(&self, actor: &str, now_ms: i64) -> Result<usize> {
        let mut c = self.client().await?;
        let mut w = Writer::begin(&mut c, &self.node).await?;
        let current = self.keys.current_id().to_string();
        let rows =
            w.tx.query(&format!("{TPL_SELECT} WHERE key_id <> $1"), &[&current])
                .await?;
        let templates: Vec<StoredTemplate> = rows.iter().map(|r| tpl_of(r, &self.keys)).collect::<Result<_>>()?;
        for t in &templates {
            let aad = template_aad(&t.guest_id, &t.property_id, t.kind.as_str(), &t.model_id);
            let (key_id, sealed) = self.keys.seal(&aad, &vec_to_blob(&t.vector));
            w.tx.execute(
                "UPDATE templates SET vector = $2, key_id = $3 WHERE id = $1",
                &[&t.id, &sealed, &key_id],
            )
            .await?;
        }
        let ev = AuditEvent {
            kind: "template_key_rotated",
            actor: actor.to_string(),
            subject: current,
            details: json!({"templates_resealed": templates.len()}),
        };
        w.audit(&ev, now_ms).await?;
        w.commit().await?;
        Ok(templates.len())
    }

    /// VACUUMs the tables that held personal data, so the space of deleted rows is reclaimed;
    /// whether it ran (it gives up after a short wait for a lock).
    async fn vacuum(&self) -> Result<bool> {
        // Best effort after a committed deletion: any failure (a lock held, the connection gone)
        // answers "not yet", and the server retries (`clear_wal_if_pending`).
        let run = async {
            let c = self.client().await?;
            // One statement per call: VACUUM cannot run inside a multi-statement string's
            // implicit transaction.
            c.batch_execute("SET lock_timeout = '2s'").await?;
            let r = c
                .batch_execute("VACUUM templates, guests, reservations, decisions, overrides")
                .await;
            c.batch_execute("RESET lock_timeout").await?;
            Ok::<_, StoreError>(r?)
        };
        match run.await {
            Ok(()) => Ok(true),
            Err(e) => {
                tracing::warn!(error = %e, "VACUUM after a deletion did not run; retried later");
                Ok(false)
            }
        }
    }

    async fn cross_check_rows(&self, entries: i64) -> Result<Option<(i64, String)>> {
        const PAGE: i64 = 2000;
        let mut after = String::new();
        loop {
            let c = self.client().await?;
            let rows = c
                .query(
                    "SELECT d.id, d.id, d.outcome, d.final_outcome, a.seq, (a.details::jsonb)->>'outcome',
                            o.action, o.reason, oa.seq, (oa.details::jsonb)->>'action',
                            (oa.details::jsonb)->>'to', (oa.details::jsonb)->>'reason',
                            d.reservation_code, (a.details::jsonb)->>'reservation_code',
                            d.guest_id, d.subject_ref, d.mac_key, COALESCE((a.details::jsonb) ? 'ref', FALSE),
                            (a.details::jsonb)->>'ref', (a.details::jsonb)->>'code_mac',
                            (oa.details::jsonb)->>'reason_mac'
                     FROM decisions d
                     LEFT JOIN audit a ON a.subject = d.id AND a.kind = 'decision'
                     LEFT JOIN overrides o ON o.decision_id = d.id
                     LEFT JOIN audit oa ON oa.subject = d.id AND oa.kind = 'override'
                     WHERE d.id > $1 ORDER BY d.id LIMIT $2",
                    &[&after, &PAGE],
                )
                .await?;
            drop(c);
            for r in &rows {
                let row = CrossRow {
                    id: get(r, 1)?,
                    outcome: get(r, 2)?,
                    final_outcome: get(r, 3)?,
                    seq: get(r, 4)?,
                    said: get(r, 5)?,
                    action: get(r, 6)?,
                    reason: get(r, 7)?,
                    oseq: get(r, 8)?,
                    said_action: get(r, 9)?,
                    said_to: get(r, 10)?,
                    said_reason: get(r, 11)?,
                    code: get(r, 12)?,
                    said_code: get(r, 13)?,
                    guest_id: get(r, 14)?,
                    subject_ref: get(r, 15)?,
                    key: get(r, 16)?,
                    v5: get(r, 17)?,
                    said_ref: get(r, 18)?,
                    said_code_mac: get(r, 19)?,
                    said_reason_mac: get(r, 20)?,
                };
                if let Some(b) = check_decision(&row, entries) {
                    return Ok(Some(b));
                }
                after = row.id;
            }
            if (rows.len() as i64) < PAGE {
                return Ok(None);
            }
        }
    }
}

#[tonic::async_trait]
impl Store for PgStore {
    async fn cross_check_decisions(&self, entries: i64) -> Result<Option<(i64, String)>> {
        self.cross_check_rows(entries).await
    }

    fn postgres(&self) -> Option<&PgStore> {
        Some(self)
    }

    async fn ping(&self) -> Result<()> {
        self.client().await?.simple_query("SELECT 1").await?;
        Ok(())
    }

    async fn upsert_reservation(&self, r: &ReservationInput, actor: &str, now_ms: i64) -> Result<Upserted> {
        let mut c = self.client().await?;
        let mut w = Writer::begin(&mut c, &self.node).await?;
        let existing = res_by_code(&w.tx, &r.property_id, &r.code).await?;
        let (mut dropped, mut decisions, mut person_changed) = (Vec::new(), 0, false);
        let guest_id = match &existing {
            Some(e) => {
                person_changed = if !e.guest_ref.is_empty() && !r.guest_ref.is_empty() {
                    e.guest_ref != r.guest_ref
                } else {
                    !super::sqlite::same_name(&e.full_name, &r.full_name)
                };
                if person_changed {
                    (dropped, decisions) = forget_guest(&w.tx, e, now_ms).await?;
                    let gid = new_guest(&w.tx, &r.full_name, &r.guest_ref).await?;
                    insert_reservation(&w.tx, r, &gid).await?;
                    gid
                } else {
                    w.tx.execute(
                        "UPDATE guests SET full_name = $2, guest_ref = $3 WHERE guest_id = $1",
                        &[&e.guest_id, &r.full_name, &r.guest_ref],
                    )
                    .await?;
                    w.tx.execute(
                        "UPDATE reservations SET arrival = $3, departure = $4, status = $5
                         WHERE property_id = $1 AND code = $2",
                        &[&r.property_id, &r.code, &r.arrival, &r.departure, &r.status.as_str()],
                    )
                    .await?;
                    e.guest_id.clone()
                }
            }
            None => {
                let gid = new_guest(&w.tx, &r.full_name, &r.guest_ref).await?;
                insert_reservation(&w.tx, r, &gid).await?;
                gid
            }
        };
        let ev = AuditEvent {
            kind: "reservation_upserted",
            actor: actor.to_string(),
            subject: ref_of_guest(&w.tx, &guest_id).await?,
            details: json!({"property_id": r.property_id, "arrival": r.arrival.to_string(),
                            "departure": r.departure.to_string(), "status": r.status.as_str(),
                            "created": existing.is_none(), "person_changed": person_changed,
                            "templates_deleted": dropped.len(), "decisions_anonymised": decisions}),
        };
        w.audit(&ev, now_ms).await?;
        w.change(ChangeKind::TemplatesRemoved, &r.property_id, &dropped, None, now_ms)
            .await?;
        let view = res_required(&w.tx, &r.property_id, &r.code).await?;
        w.commit().await?;
        drop(c);
        if person_changed {
            self.vacuum().await?;
        }
        Ok(Upserted {
            view,
            dropped_templates: dropped,
            person_changed,
        })
    }

    async fn get_reservation(&self, property: &str, code: &str) -> Result<Option<ReservationView>> {
        let c = self.client().await?;
        res_by_code(&**c, property, code).await
    }

    async fn reservation_of_guest(&self, guest_id: &str) -> Result<Option<ReservationView>> {
        let c = self.client().await?;
        c.query_opt(&format!("{RES_SELECT} WHERE r.guest_id = $1"), &[&guest_id])
            .await?
            .map(|r| res_of(&r))
            .transpose()
    }

    async fn expected_guests(&self, property: &str, today: NaiveDate, slack_days: i64) -> Result<HashSet<String>> {
        let c = self.client().await?;
        let slack = slack_days.clamp(-100_000, 100_000) as i32;
        c.query(
            "SELECT guest_id FROM reservations
             WHERE property_id = $1 AND status IN ($2, $3) AND arrival - $4::int <= $5 AND $5 < departure + $4::int",
            &[
                &property,
                &ResStatus::Booked.as_str(),
                &ResStatus::CheckedIn.as_str(),
                &slack,
                &today,
            ],
        )
        .await?
        .iter()
        .map(|r| get(r, 0))
        .collect()
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
        let mut c = self.client().await?;
        let mut w = Writer::begin(&mut c, &self.node).await?;
        let res = res_required(&w.tx, property, code).await?;
        w.tx.execute(
            "UPDATE guests SET consent_method = $2, consent_text_version = $3, consent_at_ms = $4 WHERE guest_id = $1",
            &[&res.guest_id, &consent.method, &consent.text_version, &consent.at_ms],
        )
        .await?;
        let mut model_ids: Vec<&str> = templates.iter().map(|t| t.model_id.as_str()).collect();
        model_ids.sort_unstable();
        model_ids.dedup();
        let replaced = delete_templates(&w.tx, &res.guest_id).await?;
        let mut ids = Vec::new();
        for t in templates {
            let aad = template_aad(&res.guest_id, property, t.kind.as_str(), &t.model_id);
            let (key_id, sealed) = self.keys.seal(&aad, &vec_to_blob(&t.vector));
            let row =
                w.tx.query_one(
                    "INSERT INTO templates (guest_id, property_id, model_id, kind, vector, created_at_ms, key_id)
                     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                    &[
                        &res.guest_id,
                        &property,
                        &t.model_id,
                        &t.kind.as_str(),
                        &sealed,
                        &now_ms,
                        &key_id,
                    ],
                )
                .await?;
            ids.push(get::<i64>(&row, 0)?);
        }
        let ev = AuditEvent {
            kind: "face_enrolled",
            actor: actor.to_string(),
            subject: ref_of_guest(&w.tx, &res.guest_id).await?,
            details: json!({"property_id": property, "templates_added": ids.len(),
                            "templates_replaced": replaced.len(), "model_ids": model_ids,
                            "consent_method": consent.method, "consent_text_version": consent.text_version,
                            "consent_at_ms": consent.at_ms}),
        };
        w.audit(&ev, now_ms).await?;
        w.change(ChangeKind::TemplatesRemoved, property, &replaced, None, now_ms)
            .await?;
        w.change(ChangeKind::TemplatesAdded, property, &ids, None, now_ms)
            .await?;
        w.commit().await?;
        Ok(Enrolled {
            guest_id: res.guest_id,
            added: ids,
            replaced,
        })
    }

    async fn set_health(
        &self,
        property: &str,
        code: &str,
        h: &HealthRecord,
        actor: &str,
        now_ms: i64,
    ) -> Result<ReservationView> {
        let mut c = self.client().await?;
        let mut w = Writer::begin(&mut c, &self.node).await?;
        let res = res_required(&w.tx, property, code).await?;
        w.tx.execute(
            "UPDATE guests SET health_colour = $2, health_issued_at_ms = $3, health_expires_at_ms = $4, health_source = $5
             WHERE guest_id = $1",
            &[&res.guest_id, &h.colour.as_str(), &h.issued_at_ms, &h.expires_at_ms, &h.source],
        )
        .await?;
        let ev = AuditEvent {
            kind: "health_updated",
            actor: actor.to_string(),
            subject: ref_of_guest(&w.tx, &res.guest_id).await?,
            details: json!({"property_id": property, "colour": h.colour.as_str(), "issued_at_ms": h.issued_at_ms,
                            "expires_at_ms": h.expires_at_ms, "source": h.source}),
        };
        w.audit(&ev, now_ms).await?;
        let view = res_required(&w.tx, property, code).await?;
        w.commit().await?;
        Ok(view)
    }

    async fn erase_guest(&self, property: &str, code: &str, reason: &str, actor: &str, now_ms: i64) -> Result<Erased> {
        let mut c = self.client().await?;
        let mut w = Writer::begin(&mut c, &self.node).await?;
        let res = res_required(&w.tx, property, code).await?;
        let gref = ref_of_guest(&w.tx, &res.guest_id).await?;
        let (ids, decisions) = forget_guest(&w.tx, &res, now_ms).await?;
        let ev = AuditEvent {
            kind: "guest_erased",
            actor: actor.to_string(),
            subject: gref,
            details: json!({"property_id": property, "templates_deleted": ids.len(),
                            "decisions_anonymised": decisions, "reason": reason}),
        };
        w.audit(&ev, now_ms).await?;
        w.change(ChangeKind::TemplatesRemoved, property, &ids, None, now_ms)
            .await?;
        w.commit().await?;
        drop(c);
        let wal_cleared = self.vacuum().await?;
        Ok(Erased {
            guest_id: res.guest_id,
            templates: ids,
            decisions_anonymised: decisions,
            wal_cleared,
        })
    }

    async fn checkpoint_wal(&self) -> Result<bool> {
        self.vacuum().await
    }

    async fn properties(&self) -> Result<Vec<String>> {
        let c = self.client().await?;
        c.query(
            "SELECT DISTINCT property_id FROM reservations ORDER BY property_id",
            &[],
        )
        .await?
        .iter()
        .map(|r| get(r, 0))
        .collect()
    }

    async fn purge(&self, rules: &PurgeRules, now_ms: i64) -> Result<Purged> {
        let mut c = self.client().await?;
        let mut w = Writer::begin(&mut c, &self.node).await?;
        let mut out = Purged::default();
        let mut removed: Vec<(String, Vec<i64>)> = Vec::new();
        for p in &rules.properties {
            let template_rules: [(&str, &str, Option<NaiveDate>); 3] = [
                ("templates_after_departure", "r.departure < $2", Some(p.departed_before)),
                (
                    "templates_of_no_shows",
                    "r.status = 'BOOKED' AND r.arrival < $2",
                    Some(p.no_show_arrived_before),
                ),
                (
                    "templates_of_cancelled",
                    "r.status = 'CANCELLED' AND $2::date IS NULL",
                    None,
                ),
            ];
            let mut gone_ids = Vec::new();
            for (rule, cond, date) in template_rules {
                let rows =
                    w.tx.query(
                        &format!(
                            "DELETE FROM templates t USING reservations r
                             WHERE r.guest_id = t.guest_id AND r.property_id = $1 AND {cond}
                             RETURNING t.id, t.guest_id"
                        ),
                        &[&p.property, &date],
                    )
                    .await?;
                let mut guests = HashSet::new();
                for r in &rows {
                    let id: i64 = get(r, 0)?;
                    guests.insert(get::<String>(r, 1)?);
                    out.templates.push((p.property.clone(), id));
                    gone_ids.push(id);
                }
                out.count(rule, "templates_deleted", rows.len());
                out.count(rule, "guests", guests.len());
            }
            let gone: Vec<String> =
                w.tx.query(
                    "SELECT code FROM reservations WHERE property_id = $1 AND departure < $2",
                    &[&p.property, &p.forget_departed_before],
                )
                .await?
                .iter()
                .map(|r| get(r, 0))
                .collect::<Result<_>>()?;
            for code in &gone {
                let res = res_required(&w.tx, &p.property, code).await?;
                let (ids, decisions) = forget_guest(&w.tx, &res, now_ms).await?;
                out.templates.extend(ids.iter().map(|id| (p.property.clone(), *id)));
                gone_ids.extend(&ids);
                out.count("guests_after_departure", "guests_forgotten", 1);
                out.count("guests_after_departure", "templates_deleted", ids.len());
                out.count("guests_after_departure", "decisions_anonymised", decisions);
            }
            removed.push((p.property.clone(), gone_ids));
        }
        let n = anonymise_decisions(&w.tx, "created_at_ms < $2", &[&rules.decisions_before_ms], now_ms).await?;
        out.count("decisions", "decisions_anonymised", n);
        for (rule, counts) in &out.counts {
            if counts.values().any(|n| *n > 0) {
                let ev = AuditEvent {
                    kind: "retention_purge",
                    actor: "retention".into(),
                    subject: rule.clone(),
                    details: json!(counts),
                };
                w.audit(&ev, now_ms).await?;
            }
        }
        for (property, ids) in &removed {
            w.change(ChangeKind::TemplatesRemoved, property, ids, None, now_ms)
                .await?;
        }
        w.commit().await?;
        drop(c);
        out.wal_cleared = if out.counts.values().any(|c| c.values().any(|n| *n > 0)) {
            self.vacuum().await?
        } else {
            true
        };
        Ok(out)
    }

    async fn all_templates(&self) -> Result<Vec<StoredTemplate>> {
        let c = self.client().await?;
        c.query(&format!("{TPL_SELECT} ORDER BY id"), &[])
            .await?
            .iter()
            .map(|r| tpl_of(r, &self.keys))
            .collect()
    }

    /// In parallel: the id range cut into 64 slices, read on up to 8 pooled connections at once,
    /// each slice's rows opened (decrypted) on the blocking pool as soon as it arrives and then
    /// dropped, so only a few slices of raw rows are held at any time.
    async fn indexed_templates(&self) -> Result<Vec<StoredTemplate>> {
        const SLICES: i64 = 64;
        let c = self.client().await?;
        let r = c
            .query_one("SELECT COALESCE(MIN(id), 0), COALESCE(MAX(id), 0) FROM templates", &[])
            .await?;
        drop(c);
        let (lo, hi): (i64, i64) = (get(&r, 0)?, get(&r, 1)?);
        let step = ((hi - lo + 1).max(1) + SLICES - 1) / SLICES;
        let at_once = Arc::new(tokio::sync::Semaphore::new(self.pool.status().max_size.clamp(1, 8)));
        let mut reads = tokio::task::JoinSet::new();
        for i in 0..SLICES {
            let (from, to) = (lo + i * step, lo + (i + 1) * step);
            let (pool, keys, at_once) = (self.pool.clone(), self.keys.clone(), at_once.clone());
            reads.spawn(async move {
                let _permit = at_once.acquire_owned().await.map_err(|e| StoreError::Db(Box::new(e)))?;
                let c = pool.get().await?;
                let rows = c
                    .query(
                        &format!("{TPL_SELECT} WHERE id >= $1 AND id < $2 AND kind IN ('clean', 'masked')"),
                        &[&from, &to],
                    )
                    .await?;
                drop(c);
                tokio::task::spawn_blocking(move || {
                    use rayon::prelude::*;
                    rows.par_iter().map(|r| tpl_of(r, &keys)).collect::<Result<Vec<_>>>()
                })
                .await
                .map_err(StoreError::Task)?
            });
        }
        let mut out = Vec::new();
        while let Some(r) = reads.join_next().await {
            out.extend(r.map_err(StoreError::Task)??);
        }
        out.sort_unstable_by_key(|t| t.id);
        Ok(out)
    }

    async fn guest_templates(&self, guest_id: &str) -> Result<Vec<StoredTemplate>> {
        let c = self.client().await?;
        c.query(&format!("{TPL_SELECT} WHERE guest_id = $1 ORDER BY id"), &[&guest_id])
            .await?
            .iter()
            .map(|r| tpl_of(r, &self.keys))
            .collect()
    }

    async fn record_decision(&self, d: &DecisionRow, if_taken: Option<&DecisionRow>, now_ms: i64) -> Result<bool> {
        let mut c = self.client().await?;
        let mut w = Writer::begin(&mut c, &self.node).await?;
        let mut d = d.clone();
        let mut as_decided = true;
        let check_in = match if_taken {
            Some(taken) => {
                // Compare-and-set: only a reservation still BOOKED, of a guest not erased.
                let n =
                    w.tx.execute(
                        "UPDATE reservations SET status = $4, checked_in_at_ms = $3
                         WHERE property_id = $1 AND code = $2 AND status = $5",
                        &[
                            &d.property_id,
                            &d.reservation_code,
                            &now_ms,
                            &ResStatus::CheckedIn.as_str(),
                            &ResStatus::Booked.as_str(),
                        ],
                    )
                    .await?;
                if n == 0 {
                    d = taken.clone();
                    as_decided = false;
                }
                n > 0
            }
            None => false,
        };
        let reasons = names_json(&d.reasons, |r| r.as_str());
        let steps = names_json(&d.steps, |s| s.as_str());
        let guest = match &d.guest_id {
            Some(g) => Some(g.clone()),
            None if !d.reservation_code.is_empty() => {
                w.tx.query_opt(
                    "SELECT guest_id FROM reservations WHERE property_id = $1 AND code = $2",
                    &[&d.property_id, &d.reservation_code],
                )
                .await?
                .map(|r| get::<String>(&r, 0))
                .transpose()?
            }
            None => None,
        };
        let subject_ref = match &guest {
            Some(g) => ref_of_guest(&w.tx, g).await?,
            None => String::new(),
        };
        let mac_key = cipher::new_subject_key();
        let code_mac = code_mac(&mac_key, &d.reservation_code);
        let (frames, fused) = (d.frames as i64, d.fused_frames as i64);
        let (cs, ct) = (d.cascade.map(|c| c.0 as f64), d.cascade.map(|c| c.1 as f64));
        w.tx.execute(
            "INSERT INTO decisions (id, property_id, kiosk_id, created_at_ms, outcome, reasons, reservation_code, guest_id,
             match_score, match_threshold, live, liveness_score, masked, health_colour, guest_message, final_outcome,
             steps, frames, fused_frames, cascade_score, cascade_threshold, subject_ref, mac_key)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23)",
            &[
                &d.id,
                &d.property_id,
                &d.kiosk_id,
                &d.created_at_ms,
                &d.outcome.as_str(),
                &reasons,
                &d.reservation_code,
                &d.guest_id,
                &(d.match_score as f64),
                &(d.match_threshold as f64),
                &d.live,
                &(d.liveness_score as f64),
                &d.masked,
                &d.health_colour.as_str(),
                &d.guest_message,
                &d.final_outcome.as_str(),
                &steps,
                &frames,
                &fused,
                &cs,
                &ct,
                &subject_ref,
                &mac_key,
            ],
        )
        .await?;
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
        w.audit(&ev, now_ms).await?;
        if d.final_outcome == Outcome::Review {
            w.change(ChangeKind::Review, &d.property_id, &[], Some(&d.id), now_ms)
                .await?;
        }
        w.commit().await?;
        Ok(as_decided)
    }

    async fn get_decision(&self, id: &str) -> Result<Option<DecisionRow>> {
        let c = self.client().await?;
        decision(&**c, id).await
    }

    async fn pending_reviews(
        &self,
        property: Option<&str>,
        after: Option<&ReviewCursor>,
        limit: usize,
    ) -> Result<Vec<DecisionRow>> {
        let (after_ms, after_id) = after
            .map(|c| (c.created_at_ms, c.id.clone()))
            .unwrap_or((i64::MIN, String::new()));
        let limit = limit as i64;
        let c = self.client().await?;
        c.query(
            &format!(
                "{DEC_SELECT} WHERE d.final_outcome = $2 AND o.decision_id IS NULL
                 AND ($1::text IS NULL OR d.property_id = $1)
                 AND (d.created_at_ms > $3 OR (d.created_at_ms = $3 AND d.id > $4))
                 ORDER BY d.created_at_ms, d.id LIMIT $5"
            ),
            &[&property, &Outcome::Review.as_str(), &after_ms, &after_id, &limit],
        )
        .await?
        .iter()
        .map(dec_of)
        .collect()
    }

    async fn override_decision(
        &self,
        id: &str,
        ov: &OverrideRow,
        final_outcome: Outcome,
        check_in: bool,
    ) -> Result<DecisionRow> {
        let mut c = self.client().await?;
        let mut w = Writer::begin(&mut c, &self.node).await?;
        let d = decision(&w.tx, id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("decision {id}")))?;
        if d.override_.is_some() {
            return Err(StoreError::Conflict(format!("decision {id} was already overridden")));
        }
        let row =
            w.tx.query_one("SELECT subject_ref, mac_key FROM decisions WHERE id = $1", &[&id])
                .await?;
        let (subject_ref, mac_key): (String, Option<Vec<u8>>) = (get(&row, 0)?, get(&row, 1)?);
        let Some(mac_key) = mac_key else {
            return Err(StoreError::Conflict(format!(
                "decision {id} was anonymised (retention or erasure); it can no longer be overridden"
            )));
        };
        w.tx.execute(
            "INSERT INTO overrides (decision_id, action, staff_id, reason, at_ms) VALUES ($1, $2, $3, $4, $5)",
            &[&id, &ov.action.as_str(), &ov.staff_id, &ov.reason, &ov.at_ms],
        )
        .await?;
        w.tx.execute(
            "UPDATE decisions SET final_outcome = $2 WHERE id = $1",
            &[&id, &final_outcome.as_str()],
        )
        .await?;
        if check_in {
            let n =
                w.tx.execute(
                    "UPDATE reservations SET status = $4, checked_in_at_ms = $3
                     WHERE property_id = $1 AND code = $2 AND status = $5",
                    &[
                        &d.property_id,
                        &d.reservation_code,
                        &ov.at_ms,
                        &ResStatus::CheckedIn.as_str(),
                        &ResStatus::Booked.as_str(),
                    ],
                )
                .await?;
            if n == 0 {
                return Err(StoreError::Conflict(format!(
                    "reservation {} is no longer booked (cancelled, checked in or out, or erased); nothing was changed",
                    d.reservation_code
                )));
            }
        }
        let red_override = check_in && d.outcome == Outcome::Denied && d.health_colour == Colour::Red;
        let ev = AuditEvent {
            kind: "override",
            actor: ov.staff_id.clone(),
            subject: id.to_string(),
            details: json!({"action": ov.action.as_str(), "reason_mac": cipher::keyed_hash(&mac_key, &ov.reason),
                            "from": d.final_outcome.as_str(), "to": final_outcome.as_str(),
                            "property_id": d.property_id, "ref": subject_ref,
                            "overrides_red_health_code": red_override}),
        };
        w.audit(&ev, ov.at_ms).await?;
        let out = decision(&w.tx, id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("decision {id}")))?;
        w.commit().await?;
        Ok(out)
    }

    async fn audit_head(&self) -> Result<Option<(i64, String)>> {
        let c = self.client().await?;
        let r = c.query_one("SELECT seq, hash FROM audit_head WHERE one", &[]).await?;
        let seq: i64 = get(&r, 0)?;
        Ok((seq > 0).then(|| get(&r, 1)).transpose()?.map(|h| (seq, h)))
    }

    async fn add_checkpoint(&self, cp: &audit::Checkpoint) -> Result<()> {
        let c = self.client().await?;
        // Several nodes may sign the same head: the first one stored stands.
        c.execute(
            "INSERT INTO audit_checkpoints (seq, head_hash, at_ms, signature) VALUES ($1, $2, $3, $4)
             ON CONFLICT (seq) DO NOTHING",
            &[&cp.seq, &cp.head_hash, &cp.at_ms, &cp.signature],
        )
        .await?;
        Ok(())
    }

    async fn checkpoints(&self) -> Result<Vec<audit::Checkpoint>> {
        let c = self.client().await?;
        c.query(
            "SELECT seq, head_hash, at_ms, signature FROM audit_checkpoints ORDER BY seq",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(audit::Checkpoint {
                seq: get(r, 0)?,
                head_hash: get(r, 1)?,
                at_ms: get(r, 2)?,
                signature: get(r, 3)?,
            })
        })
        .collect()
    }

    async fn audit_page(&self, after: i64, limit: usize) -> Result<Vec<AuditEntry>> {
        let c = self.client().await?;
        c.query(
            "SELECT seq, at_ms, kind, actor, subject, details, prev_hash, hash FROM audit
             WHERE seq > $1 ORDER BY seq LIMIT $2",
            &[&after, &(limit as i64)],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(AuditEntry {
                seq: get(r, 0)?,
                at_ms: get(r, 1)?,
                kind: get(r, 2)?,
                actor: get(r, 3)?,
                subject: get(r, 4)?,
                details: get(r, 5)?,
                prev_hash: get(r, 6)?,
                hash: get(r, 7)?,
            })
        })
        .collect()
    }

    async fn add_credential(&self, cr: &CredentialRow, actor: &str, now_ms: i64) -> Result<()> {
        let mut c = self.client().await?;
        let mut w = Writer::begin(&mut c, &self.node).await?;
        w.tx.execute(
            "INSERT INTO credentials (token_id, holder, role, property_id, sha256, created_at_ms, expires_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &cr.token_id,
                &cr.holder,
                &cr.role.as_str(),
                &cr.property,
                &cr.sha256,
                &cr.created_at_ms,
                &cr.expires_at_ms,
            ],
        )
        .await?;
        let ev = AuditEvent {
            kind: "credential_added",
            actor: actor.to_string(),
            subject: cr.token_id.clone(),
            details: json!({"holder": cr.holder, "role": cr.role.as_str(), "property": cr.property,
                            "expires_at_ms": cr.expires_at_ms}),
        };
        w.audit(&ev, now_ms).await?;
        w.commit().await?;
        Ok(())
    }

    async fn credentials(&self) -> Result<Vec<CredentialRow>> {
        let c = self.client().await?;
        c.query(&format!("{CRED_SELECT} ORDER BY created_at_ms, token_id"), &[])
            .await?
            .iter()
            .map(cred_of)
            .collect()
    }

    async fn revoke_credential(&self, token_id: &str, actor: &str, now_ms: i64) -> Result<CredentialRow> {
        let mut c = self.client().await?;
        let mut w = Writer::begin(&mut c, &self.node).await?;
        let n =
            w.tx.execute(
                "UPDATE credentials SET revoked_at_ms = $2 WHERE token_id = $1 AND revoked_at_ms IS NULL",
                &[&token_id, &now_ms],
            )
            .await?;
        let row =
            w.tx.query_opt(&format!("{CRED_SELECT} WHERE token_id = $1"), &[&token_id])
                .await?
                .map(|r| cred_of(&r))
                .transpose()?
                .ok_or_else(|| StoreError::NotFound(format!("credential {token_id}")))?;
        if n == 0 {
            return Err(StoreError::Conflict(format!(
                "credential {token_id} is already revoked"
            )));
        }
        let ev = AuditEvent {
            kind: "credential_revoked",
            actor: actor.to_string(),
            subject: token_id.to_string(),
            details: json!({"holder": row.holder, "role": row.role.as_str(), "property": row.property}),
        };
        w.audit(&ev, now_ms).await?;
        w.commit().await?;
        Ok(row)
    }
}
