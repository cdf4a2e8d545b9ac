//! Durable state behind an async trait: reservations, guests, consent, templates, health status,
//! decisions, overrides and the audit trail. Every mutation appends its audit entry in the same
//! transaction. The default implementation is one SQLite file ([`SqliteStore`]: WAL,
//! `synchronous=FULL` so an acknowledged write survives a crash, `secure_delete` so erased templates
//! are overwritten), its calls run on the blocking pool, never on the async runtime's threads.
//!
//! The boundary is typed: outcomes, reasons, colours, steps, template kinds and override actions
//! are the [`crate::domain`] enums; a row that does not parse is a [`StoreError::Corrupt`] naming
//! the table and the key, never a silent default.

/// The audit trail's format and verification live with the API contract (`lobby_proto::audit`), so
/// that an exported trail is checked offline by the same code.
pub use lobby_proto::audit;
pub mod cipher;
mod pg_schema;
pub mod postgres;
mod rows;
mod sqlite;

pub use audit::{Checkpoint, Verification, Verifier};
pub use cipher::TemplateKeys;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// The store the settings name: PostgreSQL when `store.url` is set, otherwise the SQLite file in
/// the data directory; templates sealed with the template keys (`store.template_key_file`).
pub async fn open(settings: &crate::config::Settings) -> anyhow::Result<std::sync::Arc<dyn Store>> {
    let keys = std::sync::Arc::new(TemplateKeys::load(&settings.template_key_path())?);
    Ok(if settings.store.is_postgres() {
        std::sync::Arc::new(
            PgStore::open(
                &settings.store.url,
                settings.store.pool_size,
                &settings.store.ca_file,
                keys,
            )
            .await?,
        )
    } else {
        std::sync::Arc::new(SqliteStore::open(&settings.store_path(), keys)?)
    })
}

use crate::domain::{Colour, HealthRecord, Outcome, OverrideAction, Reason, ResStatus, Step, TemplateKind};
use chrono::NaiveDate;
use std::collections::HashSet;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("corrupt row in table {table} ({key}): {what}")]
    Corrupt {
        table: &'static str,
        key: String,
        what: String,
    },
    #[error("the store's schema is version {found}, newer than this server's {supported}; refusing to open")]
    NewerSchema { found: i64, supported: i64 },
    #[error("storage failure")]
    Db(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("storage task failed")]
    Task(#[source] tokio::task::JoinError),
    #[error("cannot create {path}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Db(Box::new(e))
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

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
}

/// What an upsert did: the reservation as stored, and, when the booking now names another person,
/// the first person's templates it deleted (their consent, health status and decisions' personal
/// fields went with them).
#[derive(Debug, Clone)]
pub struct Upserted {
    pub view: ReservationView,
    pub dropped_templates: Vec<i64>,
    pub person_changed: bool,
}

/// What an erasure deleted, and whether the WAL was checkpointed (no copy of the deleted rows left
/// in it); when it was not (a reader held it), the caller retries and reports.
#[derive(Debug, Clone)]
pub struct Erased {
    pub guest_id: String,
    pub templates: Vec<i64>,
    pub decisions_anonymised: usize,
    pub wal_cleared: bool,
}

/// The retention rules' cut-offs, worked out by the core from the clock and each property's
/// calendar.
#[derive(Debug, Clone, Default)]
pub struct PurgeRules {
    pub properties: Vec<PropertyCutoffs>,
    /// Decisions made before this instant are anonymised.
    pub decisions_before_ms: i64,
}

#[derive(Debug, Clone)]
pub struct PropertyCutoffs {
    pub property: String,
    /// Templates of reservations departing before this date are deleted.
    pub departed_before: NaiveDate,
    /// Templates of reservations still BOOKED that were due before this date (no-shows) are deleted.
    pub no_show_arrived_before: NaiveDate,
    /// Reservations departing before this date are forgotten with their guest, as at an erasure.
    pub forget_departed_before: NaiveDate,
}

/// What a purge removed: the templates (property, id) to take out of the indexes, and the counts
/// per rule (each rule that removed something leaves an audit entry with its counts).
#[derive(Debug, Clone, Default)]
pub struct Purged {
    pub templates: Vec<(String, i64)>,
    pub counts: std::collections::BTreeMap<String, std::collections::BTreeMap<String, usize>>,
    pub wal_cleared: bool,
}

impl Purged {
    pub fn count(&mut self, rule: &str, what: &str, n: usize) {
        *self
            .counts
            .entry(rule.to_string())
            .or_default()
            .entry(what.to_string())
            .or_default() += n;
    }

    /// The total of `what` over every rule.
    pub fn total(&self, what: &str) -> usize {
        self.counts.values().filter_map(|c| c.get(what)).sum()
    }
}

#[derive(Debug, Clone)]
pub struct ConsentRecord {
    pub method: String,
    pub text_version: String,
    pub at_ms: i64,
}

#[derive(Debug, Clone)]
pub struct NewTemplate {
    pub kind: TemplateKind,
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
    pub kind: TemplateKind,
    pub vector: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OverrideRow {
    pub action: OverrideAction,
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
    pub outcome: Outcome,
    pub reasons: Vec<Reason>,
    pub reservation_code: String,
    pub guest_id: Option<String>,
    pub match_score: f32,
    pub match_threshold: f32,
    pub live: bool,
    pub liveness_score: f32,
    pub masked: bool,
    pub health_colour: Colour,
    pub guest_message: String,
    pub final_outcome: Outcome,
    pub override_: Option<OverrideRow>,
    /// The escalation ladder's steps asked in the stream, in order.
    pub steps: Vec<Step>,
    /// Frames the kiosk sent for this decision, and good frames fused into it.
    pub frames: u32,
    pub fused_frames: u32,
    /// The cascade's fused score and threshold, when its second stage was consulted.
    pub cascade: Option<(f32, f32)>,
}

/// What an enrolment stored: the guest, the new template ids (in the order given), and the ids of
/// the templates it replaced.
#[derive(Debug, Clone, PartialEq)]
pub struct Enrolled {
    pub guest_id: String,
    pub added: Vec<i64>,
    pub replaced: Vec<i64>,
}

/// Where a page of pending reviews ends: the last decision's time and id (the order of the list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewCursor {
    pub created_at_ms: i64,
    pub id: String,
}

impl ReviewCursor {
    pub fn of(d: &DecisionRow) -> ReviewCursor {
        ReviewCursor {
            created_at_ms: d.created_at_ms,
            id: d.id.clone(),
        }
    }
}

/// An issued credential (`lobby-server credentials add`): only the token's sha256 is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct CredentialRow {
    /// The id inside the token (`lby_<token id>_<secret>`), for listing, revoking and logs.
    pub token_id: String,
    /// The person, kiosk or system it belongs to: the caller id in decisions and the audit trail.
    pub holder: String,
    pub role: crate::config::Role,
    pub property: Option<String>,
    pub sha256: String,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
}

/// Seals every template with a new template key and then drops the old keys from the key file
/// (`lobby-server rotate-template-key`; the server must be stopped, every node of a PostgreSQL
/// store, which then all need the new key file). Answers the new key's id, the old ids and how many
/// templates were re-sealed. Cut short, every row still opens with the keys left in the file, and
/// running it again finishes it.
pub async fn rotate_template_key(
    settings: &crate::config::Settings,
    actor: &str,
    now_ms: i64,
) -> anyhow::Result<(String, Vec<String>, usize)> {
    let old = TemplateKeys::load(&settings.template_key_path())?;
    let keys = std::sync::Arc::new(old.add_key()?);
    let n = if settings.store.is_postgres() {
        let store = PgStore::open(&settings.store.url, 1, &settings.store.ca_file, keys.clone()).await?;
        store.reseal_all(actor, now_ms).await?
    } else {
        let store = SqliteStore::open(&settings.store_path(), keys.clone())?;
        store.reseal_all(actor, now_ms)?
    };
    keys.keep_only_current()?;
    Ok((keys.current_id().to_string(), old.ids(), n))
}

#[tonic::async_trait]
pub trait Store: Send + Sync {
    /// The PostgreSQL store, when this is one: several nodes, and the change log they follow.
    fn postgres(&self) -> Option<&PgStore> {
        None
    }
    /// Whether the store answers now (the health check); an open SQLite file always does.
    async fn ping(&self) -> Result<()> {
        Ok(())
    }
    /// Creates or updates a reservation; a booking that now names another person (another
    /// `guest_ref`, or another name where a reference is missing) forgets the first one.
    async fn upsert_reservation(&self, r: &ReservationInput, actor: &str, now_ms: i64) -> Result<Upserted>;
    async fn get_reservation(&self, property: &str, code: &str) -> Result<Option<ReservationView>>;
    async fn reservation_of_guest(&self, guest_id: &str) -> Result<Option<ReservationView>>;
    /// The guests of `property` expected around `today`: BOOKED or CHECKED_IN, with
    /// `arrival - slack_days <= today < departure + slack_days` (the 1:N search's candidates).
    async fn expected_guests(&self, property: &str, today: NaiveDate, slack_days: i64) -> Result<HashSet<String>>;
    /// Records consent and stores the guest's templates, replacing any stored before (a retried
    /// enrolment stores no second copy); returns the guest, the new ids and the replaced ids.
    async fn enrol(
        &self,
        property: &str,
        code: &str,
        consent: &ConsentRecord,
        templates: &[NewTemplate],
        actor: &str,
        now_ms: i64,
    ) -> Result<Enrolled>;
    async fn set_health(
        &self,
        property: &str,
        code: &str,
        h: &HealthRecord,
        actor: &str,
        now_ms: i64,
    ) -> Result<ReservationView>;
    /// Forgets the guest: templates, reservation and guest rows deleted, the guest's decisions
    /// anonymised, the key of its pseudonymous reference gone; one audit entry by that reference.
    async fn erase_guest(&self, property: &str, code: &str, reason: &str, actor: &str, now_ms: i64) -> Result<Erased>;
    /// Checkpoints and truncates the WAL (retried a few times); whether it completed.
    async fn checkpoint_wal(&self) -> Result<bool>;
    /// The properties that have reservations.
    async fn properties(&self) -> Result<Vec<String>>;
    /// Applies the retention rules in one transaction, with an audit entry of counts per rule.
    async fn purge(&self, rules: &PurgeRules, now_ms: i64) -> Result<Purged>;
    /// Every stored template.
    async fn all_templates(&self) -> Result<Vec<StoredTemplate>>;
    /// The first stage's templates (clean and masked), to build the indexes at start.
    async fn indexed_templates(&self) -> Result<Vec<StoredTemplate>> {
        let all = self.all_templates().await?;
        Ok(all.into_iter().filter(|t| t.kind.indexed()).collect())
    }
    async fn guest_templates(&self, guest_id: &str) -> Result<Vec<StoredTemplate>>;
    /// Records a decision; when `check_in` is set, also marks that reservation checked in.
    /// Records a decision with its audit entry. With `if_taken` (an approval), the decision checks its
    /// reservation in only if the reservation is still BOOKED and its guest not erased at commit — a
    /// compare-and-set in the same transaction — and otherwise records `if_taken` instead (the
    /// loser's decision, REVIEW). Answers whether `d` itself was recorded.
    async fn record_decision(&self, d: &DecisionRow, if_taken: Option<&DecisionRow>, now_ms: i64) -> Result<bool>;
    async fn get_decision(&self, id: &str) -> Result<Option<DecisionRow>>;
    /// REVIEW decisions not yet overridden, oldest first: at most `limit` after `after` (a page).
    async fn pending_reviews(
        &self,
        property: Option<&str>,
        after: Option<&ReviewCursor>,
        limit: usize,
    ) -> Result<Vec<DecisionRow>>;
    async fn override_decision(
        &self,
        id: &str,
        ov: &OverrideRow,
        final_outcome: Outcome,
        check_in: bool,
    ) -> Result<DecisionRow>;
    /// The last audit entry's number and hash (None: the trail is empty).
    async fn audit_head(&self) -> Result<Option<(i64, String)>>;
    /// Stores a signed checkpoint (append-only).
    async fn add_checkpoint(&self, cp: &audit::Checkpoint) -> Result<()>;
    /// The stored checkpoints, oldest first.
    async fn checkpoints(&self) -> Result<Vec<audit::Checkpoint>>;
    /// At most `limit` audit entries after entry `after`, in order.
    async fn audit_page(&self, after: i64, limit: usize) -> Result<Vec<audit::AuditEntry>>;
    /// Each decision and override against its audit entry (the trail itself verified, `entries`
    /// long): the first that does not read as its entry says, with the entry's number.
    async fn cross_check_decisions(&self, entries: i64) -> Result<Option<(i64, String)>>;
    /// Feeds the whole trail to `v` a page at a time (the store is free for check-ins between
    /// pages), then cross-checks the decisions against it.
    async fn verify_audit(&self, mut v: audit::Verifier) -> Result<Verification> {
        const PAGE: usize = 2000;
        loop {
            let page = self.audit_page(v.last_seq(), PAGE).await?;
            let full = page.len() == PAGE;
            for e in &page {
                if !v.feed(e) {
                    return Ok(v.finish());
                }
            }
            if !full {
                break;
            }
        }
        let mut out = v.finish();
        if out.first_broken.is_none() {
            out.first_broken = self.cross_check_decisions(out.entries as i64).await?;
        }
        Ok(out)
    }
    /// Stores an issued credential with its audit entry (holder, role, property, expiry; no hash).
    async fn add_credential(&self, c: &CredentialRow, actor: &str, now_ms: i64) -> Result<()>;
    /// Every issued credential, revoked and expired ones included, oldest first.
    async fn credentials(&self) -> Result<Vec<CredentialRow>>;
    /// Marks a credential revoked (kept for the record) with its audit entry.
    async fn revoke_credential(&self, token_id: &str, actor: &str, now_ms: i64) -> Result<CredentialRow>;
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
