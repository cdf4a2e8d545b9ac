//! The PostgreSQL store's schema, one migration per version, applied in order at start under an
//! advisory lock (several nodes may start at once). Version 1 holds everything the SQLite store's
//! five versions built, in PostgreSQL's types, plus what several nodes need: the audit head row that
//! serialises every write, and the change log the nodes follow.

/// The advisory lock the migrations are applied under.
pub(super) const MIGRATION_LOCK: i64 = 0x4c6f_6262_7901;

pub(super) const MIGRATIONS: [&str; 1] = [V1];

/// The head row is seeded after it (with the genesis hash).
const V1: &str = r#"
CREATE TABLE guests (
    guest_id TEXT PRIMARY KEY,
    full_name TEXT NOT NULL,
    guest_ref TEXT NOT NULL,
    ref_key BYTEA NOT NULL,
    consent_method TEXT,
    consent_text_version TEXT,
    consent_at_ms BIGINT,
    health_colour TEXT NOT NULL DEFAULT 'UNKNOWN',
    health_issued_at_ms BIGINT NOT NULL DEFAULT 0,
    health_expires_at_ms BIGINT NOT NULL DEFAULT 0,
    health_source TEXT NOT NULL DEFAULT ''
);
CREATE TABLE reservations (
    property_id TEXT NOT NULL,
    code TEXT NOT NULL,
    guest_id TEXT NOT NULL UNIQUE REFERENCES guests(guest_id),
    arrival DATE NOT NULL,
    departure DATE NOT NULL,
    status TEXT NOT NULL,
    checked_in_at_ms BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (property_id, code)
);
CREATE TABLE templates (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    guest_id TEXT NOT NULL REFERENCES guests(guest_id),
    property_id TEXT NOT NULL,
    model_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    vector BYTEA NOT NULL,
    key_id TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX templates_by_guest ON templates(guest_id);
CREATE TABLE decisions (
    id TEXT PRIMARY KEY,
    property_id TEXT NOT NULL,
    kiosk_id TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    reasons TEXT NOT NULL,
    reservation_code TEXT NOT NULL,
    guest_id TEXT,
    match_score DOUBLE PRECISION NOT NULL,
    match_threshold DOUBLE PRECISION NOT NULL,
    live BOOLEAN NOT NULL,
    liveness_score DOUBLE PRECISION NOT NULL,
    masked BOOLEAN NOT NULL,
    health_colour TEXT NOT NULL,
    guest_message TEXT NOT NULL,
    final_outcome TEXT NOT NULL,
    steps TEXT NOT NULL DEFAULT '[]',
    frames BIGINT NOT NULL DEFAULT 1,
    fused_frames BIGINT NOT NULL DEFAULT 1,
    cascade_score DOUBLE PRECISION,
    cascade_threshold DOUBLE PRECISION,
    subject_ref TEXT NOT NULL DEFAULT '',
    mac_key BYTEA,
    anonymised_at_ms BIGINT
);
CREATE INDEX decisions_pending ON decisions(final_outcome, created_at_ms);
CREATE INDEX decisions_by_guest ON decisions(guest_id);
CREATE INDEX decisions_by_subject ON decisions(subject_ref);
CREATE INDEX decisions_by_time ON decisions(created_at_ms);
CREATE TABLE overrides (
    decision_id TEXT PRIMARY KEY REFERENCES decisions(id),
    action TEXT NOT NULL,
    staff_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    at_ms BIGINT NOT NULL
);
CREATE TABLE audit (
    seq BIGINT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    subject TEXT NOT NULL,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_subject ON audit(subject, kind);
-- The trail's head, and the change log's last number: every writing transaction locks this one
-- row first (SELECT ... FOR UPDATE), so the writes of every node are serialised, the trail stays
-- one chain, and change numbers become visible in order (never a gap a node could skip).
CREATE TABLE audit_head (
    one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    change_seq BIGINT NOT NULL
);
CREATE TABLE audit_checkpoints (
    seq BIGINT PRIMARY KEY,
    head_hash TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    signature TEXT NOT NULL
);
CREATE TABLE credentials (
    token_id TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    role TEXT NOT NULL,
    property_id TEXT,
    sha256 TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT,
    revoked_at_ms BIGINT
);
-- What every node must apply to its in-memory galleries and review feeds: templates added or
-- removed, REVIEW decisions; by ids only, never a guest (an erased guest leaves no trace here). Numbered under the audit head's lock; each commit notifies
-- `lobby_changes`, and a node that missed notifications reads on from its last number.
CREATE TABLE changes (
    seq BIGINT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    property_id TEXT NOT NULL,
    template_ids BIGINT[] NOT NULL DEFAULT '{}',
    decision_id TEXT,
    -- The node that made the change (it applied it already).
    origin TEXT NOT NULL
);
-- The trail and its checkpoints are append-only: the database itself refuses UPDATE, DELETE and
-- TRUNCATE (whoever drops the triggers is caught by the signed checkpoints).
CREATE FUNCTION lobby_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END
$$;
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION lobby_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION lobby_append_only();
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION lobby_append_only();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION lobby_append_only();
"#;
