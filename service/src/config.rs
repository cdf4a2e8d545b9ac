//! Typed settings: embedded defaults, then a TOML file (`--config`), then environment overrides
//! (`LOBBY__SECTION__KEY=value`, e.g. `LOBBY__POLICY__MATCH_THRESHOLD=0.5`), validated at start.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The defaults, as a TOML document (also the reference for every setting).
pub const DEFAULTS_TOML: &str = include_str!("../config/defaults.toml");

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub models: ModelSettings,
    pub limits: Limits,
    pub gallery: GallerySettings,
    pub policy: Policy,
    pub cascade: Cascade,
    pub ladder: Ladder,
    pub health: HealthSettings,
    #[serde(default)]
    pub auth: AuthSettings,
    #[serde(default)]
    pub tls: TlsSettings,
    #[serde(default)]
    pub time: TimeSettings,
    #[serde(default)]
    pub audit: AuditSettings,
    #[serde(default)]
    pub store: StoreSettings,
    #[serde(default)]
    pub retention: RetentionSettings,
}

/// Where the records are kept, and the store's secrets at rest.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// The template keys (`<id>:<64 hex>` lines, the last current; made 0600 with one key on first
    /// start); empty: `<data_dir>/template.key`. The environment variable `LOBBY_TEMPLATE_KEYS`,
    /// when set, holds them instead. Every node of one PostgreSQL database needs the same keys.
    pub template_key_file: String,
    /// The PostgreSQL store, for several nodes on one database: a libpq URL
    /// (`postgres://user:password@host:port/db`, or `host=/run/postgresql dbname=lobby`); empty:
    /// SQLite in the data directory (`lobby.sqlite3`). `LOBBY__STORE__URL` sets it from the
    /// environment (where a password belongs).
    #[serde(default)]
    pub url: String,
    /// Connections in the PostgreSQL pool.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// The CA (PEM) that signs the PostgreSQL server's certificate; empty: the system's roots.
    /// TLS is used whenever the server offers it, with its certificate verified (chain and name);
    /// `sslmode=require` in `url` refuses a connection without it.
    #[serde(default)]
    pub ca_file: String,
}

fn default_pool_size() -> usize {
    16
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            template_key_file: String::new(),
            url: String::new(),
            pool_size: default_pool_size(),
            ca_file: String::new(),
        }
    }
}

/// A PostgreSQL connection string with its password replaced by `***` (URL form
/// `postgres://user:password@host/db`, or `password=...` in the key/value form).
pub fn redact_url(url: &str) -> String {
    if let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    {
        let scheme = &url[..url.len() - rest.len()];
        if let Some(at) = rest.find('@') {
            let (userinfo, host) = rest.split_at(at);
            if let Some(colon) = userinfo.find(':') {
                return format!("{scheme}{}:***{host}", &userinfo[..colon]);
            }
        }
        return url.to_string();
    }
    url.split_whitespace()
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => kv.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Settings {
    /// The effective settings as TOML, secrets redacted (`lobby-server check-config`).
    pub fn to_redacted_toml(&self) -> Result<String, ConfigError> {
        let mut s = self.clone();
        s.store.url = redact_url(&s.store.url);
        toml::to_string(&s).map_err(|e| ConfigError::Parse(e.to_string()))
    }
}

impl StoreSettings {
    /// Whether the store is PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        !self.url.trim().is_empty()
    }
}

/// What is kept for how long (`core::retention`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// A guest's templates are deleted this long after the end of the departure day.
    pub templates_after_departure_hours: i64,
    /// A reservation still BOOKED this many days after its arrival day (a no-show) loses its
    /// templates; at least `gallery.stay_slack_days`, so a guest the 1:N search still expects keeps them.
    pub no_show_after_arrival_days: i64,
    /// A reservation and its guest are forgotten (as at an erasure) this many days after departure.
    pub guests_after_departure_days: i64,
    /// Decisions are anonymised (no guest, no reservation code, no override reason) this old.
    pub decisions_after_days: i64,
    /// How often the rules are applied.
    pub every_secs: u64,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        RetentionSettings {
            templates_after_departure_hours: 24,
            no_show_after_arrival_days: 1,
            guests_after_departure_days: 30,
            decisions_after_days: 30,
            every_secs: 3600,
        }
    }
}

/// The audit trail's anchors (`store::audit`): signed checkpoints, in the database and in a file
/// outside it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    /// A checkpoint once this many entries are not covered by one...
    pub checkpoint_every_entries: u64,
    /// ...or once the newest entry is this old without one.
    pub checkpoint_every_secs: u64,
    /// The append-only checkpoint file (one JSON object per line); empty:
    /// `<data_dir>/audit-checkpoints.jsonl`. Point it at write-once or remote storage.
    pub checkpoint_file: String,
    /// The Ed25519 signing key (created 0600 on first start; its public key beside it, `.pub`);
    /// empty: `<data_dir>/audit-signing.key`.
    pub signing_key_file: String,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            checkpoint_every_entries: 100,
            checkpoint_every_secs: 60,
            checkpoint_file: String::new(),
            signing_key_file: String::new(),
        }
    }
}

/// Each property's calendar: "today" (arrival day, the 1:N search's expected guests) is the date in
/// the property's time zone, not the server's.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TimeSettings {
    /// The IANA time zone of every property not listed below (e.g. "Asia/Shanghai"); "local" is the
    /// server's own.
    pub zone: String,
    /// Per property: its IANA time zone.
    #[serde(default)]
    pub property_zones: std::collections::BTreeMap<String, String>,
}

impl Default for TimeSettings {
    fn default() -> Self {
        TimeSettings {
            zone: "local".into(),
            property_zones: Default::default(),
        }
    }
}

fn parse_zone(z: &str) -> Option<Option<chrono_tz::Tz>> {
    if z == "local" {
        Some(None)
    } else {
        z.parse::<chrono_tz::Tz>().ok().map(Some)
    }
}

impl TimeSettings {
    /// The date at `property` at the instant `now`.
    pub fn today_at(&self, property: &str, now: chrono::DateTime<chrono::Utc>) -> chrono::NaiveDate {
        let zone = self.property_zones.get(property).unwrap_or(&self.zone);
        match parse_zone(zone).flatten() {
            Some(tz) => now.with_timezone(&tz).date_naive(),
            // "local" (or, unreachable after validation, an unknown name): the server's zone.
            None => now.with_timezone(&chrono::Local).date_naive(),
        }
    }
}

/// TLS on the gRPC listener. Without `cert` and `key` the server speaks plaintext, which it does
/// only on a loopback address unless started with `--insecure-plaintext`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain of the server.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM private key of the server (keep it mode 0600).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// PEM CA certificate(s) that sign client certificates (mutual TLS). Set: a client may present a
    /// certificate, and one that does not chain to this CA is refused in the handshake.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: every kiosk call must come over a connection whose client certificate names
    /// that kiosk (`urn:lobby:kiosk:<property>:<kiosk id>`).
    #[serde(default)]
    pub require_kiosk_cert: bool,
}

impl TlsSettings {
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }
}

/// Who may use gRPC reflection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reflection {
    /// Not served (UNIMPLEMENTED).
    Off,
    /// Any valid credential.
    #[default]
    Authenticated,
    /// Anyone who can connect.
    Open,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    /// Where models are installed and loaded from; empty = `<data_dir>/models`.
    pub dir: String,
    /// Mirror folder to install from when a model is missing.
    pub mirror: String,
    /// Base URL to install from instead of the mirror, when set.
    pub base_url: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_pixels: u64,
    pub request_timeout_ms: u64,
    /// Photo analyses running at once; a request beyond this waits up to `queue_wait_ms`, then gets
    /// RESOURCE_EXHAUSTED.
    pub max_concurrent_analyses: usize,
    pub queue_wait_ms: u64,
    pub max_photos_per_enrolment: usize,
    /// On SIGTERM or Ctrl-C: how long calls in flight may take to finish before the server exits.
    pub shutdown_grace_ms: u64,
    /// Check-in frames (unary or streamed) one kiosk credential may send per minute, and in a burst;
    /// beyond them: RESOURCE_EXHAUSTED, nothing analysed.
    pub kiosk_frames_per_minute: u32,
    pub kiosk_frame_burst: u32,
    /// HTTP/2 streams (calls) one connection may have open at once.
    pub max_streams_per_connection: u32,
    /// Long-lived streams (check-in and review streams) one credential may have open at once;
    /// another is RESOURCE_EXHAUSTED.
    pub max_streams_per_caller: u32,
    /// A check-in stream ends after this long, however many frames it sent.
    pub check_in_stream_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GallerySettings {
    /// Faiss index factory string; the index is wrapped in an IDMap when it has none.
    pub index_factory: String,
    /// Days before arrival and after departure that a guest is still searched 1:N.
    pub stay_slack_days: i64,
    /// Candidates fetched from the index per 1:N search (before the stay filter).
    pub search_k: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyOutcome {
    Approved,
    Review,
    Denied,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The target false-match rate the thresholds were calibrated at (documentation and check).
    pub target_fmr: f64,
    /// 1:1 cosine threshold (unmasked probe), from `lobby-eval` calibration at `target_fmr`.
    pub match_threshold: f32,
    /// The per-comparison false-match rate for 1:N, stricter than 1:1 since N guests are compared.
    pub target_fmr_1n: f64,
    /// 1:N cosine threshold, calibrated at `target_fmr_1n`.
    pub match_threshold_1n: f32,
    /// The same two thresholds for a probe the mask detector calls masked: its score is the mean of
    /// its similarity to the clean and to the masked templates, calibrated by `lobby-eval` at the
    /// same false-match rates on synthetically masked probes.
    pub match_threshold_masked: f32,
    pub match_threshold_1n_masked: f32,
    /// Scores in [threshold - review_band, threshold) go to REVIEW rather than a plain no-match.
    pub review_band: f32,
    /// 1:N: the best guest must beat the second-best guest by this much, else REVIEW.
    pub margin: f32,
    pub liveness_threshold: f32,
    /// Liveness sees a face at most this large (px; 0: as it is): a larger one is first scaled down
    /// with an antialiasing filter, as a kiosk camera would see it.
    pub liveness_max_face_px: f32,
    /// What a face that fails liveness gets: review (front desk looks) or denied.
    pub liveness_fail: PolicyOutcome,
    pub min_face_px: f32,
    pub min_brightness: f32,
    pub max_brightness: f32,
    pub min_sharpness: f32,
    pub max_yaw_deg: f32,
    pub max_pitch_deg: f32,
    pub max_roll_deg: f32,
    pub max_out_of_frame: f32,
    /// Enrolment is stricter than check-in: a bad template hurts every later check-in.
    pub enrol_min_face_px: f32,
    pub enrol_max_yaw_deg: f32,
    pub health_green: PolicyOutcome,
    pub health_yellow: PolicyOutcome,
    pub health_red: PolicyOutcome,
    pub health_unknown: PolicyOutcome,
}

/// The cascade's second stage for unmasked probes (`vision::second`): where the student's score is
/// between `band[0]` and `band[1]`, the z-normalised cosines of student, teacher and dlib are fused
/// with `weights` and the fused score must reach `threshold`; at or above `band[1]` the student
/// alone decides. Every figure is calibrated by `lobby-eval` (`calibration.cascade`) so that the
/// overall false-match rate stays at the policy's target.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cascade {
    pub enabled: bool,
    /// Weights of the z-normalised cosines: student, teacher, dlib (dlib is not run at weight 0).
    pub weights: [f32; 3],
    /// Whether the teacher and dlib each also run on the mirror image (flip averaging).
    pub flip: [bool; 2],
    /// Mean and standard deviation of each model's impostor cosine (student, teacher, dlib).
    pub impostor_mean: [f32; 3],
    pub impostor_sd: [f32; 3],
    /// 1:1 (at `policy.target_fmr`).
    pub one_to_one: CascadeBand,
    /// 1:N (at `policy.target_fmr_1n` per comparison).
    pub one_to_n: CascadeBand,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CascadeBand {
    /// Student cosines [low, high): below low no match; at or above high a match on the student alone.
    pub band: [f32; 2],
    /// The fused z-score a probe in the band must reach.
    pub threshold: f32,
}

/// The escalation ladder of a check-in stream: what the server may ask of a guest before sending
/// them to the front desk.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Ladder {
    /// Frames a stream may send; then the guest goes to the desk (REVIEW).
    pub max_frames: u32,
    /// Frames a guest has to answer a step (show the booking code, lower the mask) before the ladder
    /// moves on without it.
    pub step_frames: u32,
    /// Good frames whose liveness is averaged before a face below the liveness threshold goes to the
    /// desk.
    pub liveness_frames: u32,
    /// Good frames of the same guest fused (mean of normalised embeddings) at most.
    pub max_fused_frames: u32,
    /// A frame joins the frames fused so far only if its cosine with every one of them reaches this
    /// (the same person); otherwise fusion starts again from it.
    pub same_person_min: f32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSettings {
    /// Ed25519 public keys (32 bytes, base64) of the health-code issuers whose QR codes count.
    pub issuer_public_keys: Vec<String>,
    /// A QR issued longer ago than this is stale, whatever its expiry says.
    pub qr_max_age_secs: i64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// Extra credential files (TOML with `[[token]]` entries) to load, besides `tokens` below.
    #[serde(default)]
    pub token_files: Vec<PathBuf>,
    #[serde(default)]
    pub tokens: Vec<TokenEntry>,
    /// How often issued credentials (`lobby-server credentials ...`) are re-read from the store.
    #[serde(default = "default_reload_ms")]
    pub reload_ms: u64,
    #[serde(default)]
    pub reflection: Reflection,
}

fn default_reload_ms() -> u64 {
    1000
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Kiosk,
    Staff,
    Enroller,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Kiosk => "kiosk",
            Role::Staff => "staff",
            Role::Enroller => "enroller",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "kiosk" => Some(Role::Kiosk),
            "staff" => Some(Role::Staff),
            "enroller" => Some(Role::Enroller),
            _ => None,
        }
    }
}

/// A credential: only the sha256 of the token is ever stored.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Who holds it (kiosk id, staff id, system name); recorded in the audit trail.
    pub id: String,
    pub role: Role,
    /// Hex sha256 of the bearer token.
    pub sha256: String,
    /// The property a kiosk serves (required for kiosks; optional scope for others).
    #[serde(default)]
    pub property: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("invalid config: {0}")]
    Parse(String),
    #[error("invalid setting {key}: {why}")]
    Invalid { key: &'static str, why: String },
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// `LOBBY__POLICY__MATCH_THRESHOLD=0.5` sets `policy.match_threshold`. Values are read as TOML
/// (numbers, booleans, arrays), falling back to a plain string.
fn env_overrides(vars: impl Iterator<Item = (String, String)>) -> toml::Value {
    let mut root = toml::Value::Table(Default::default());
    for (k, v) in vars {
        let Some(path) = k.strip_prefix("LOBBY__") else {
            continue;
        };
        let keys: Vec<String> = path.split("__").map(|s| s.to_ascii_lowercase()).collect();
        let value = toml::from_str::<toml::Table>(&format!("v = {v}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(v));
        let mut node = toml::Value::Table(Default::default());
        let mut leaf = Some(value);
        for key in keys.iter().rev() {
            let mut t = toml::Table::new();
            t.insert(key.clone(), leaf.take().unwrap_or(node));
            node = toml::Value::Table(t);
        }
        merge(&mut root, node);
    }
    root
}

impl Settings {
    /// Defaults, then `file` if given, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Settings::load_from(file, std::env::vars())
    }

    pub fn load_from(
        file: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let mut v: toml::Value =
            toml::from_str(DEFAULTS_TOML).map_err(|e| ConfigError::Parse(format!("defaults: {e}")))?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
                path: path.to_path_buf(),
                err,
            })?;
            let over: toml::Value =
                toml::from_str(&text).map_err(|e| ConfigError::Parse(format!("{}: {e}", path.display())))?;
            merge(&mut v, over);
        }
        merge(&mut v, env_overrides(env));
        let s: Settings = v
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        s.validate()?;
        Ok(s)
    }

    /// The SQLite store file in the data directory.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("lobby.sqlite3")
    }

    /// The audit checkpoint file.
    pub fn checkpoint_path(&self) -> PathBuf {
        match self.audit.checkpoint_file.as_str() {
            "" => self.data_dir.join("audit-checkpoints.jsonl"),
            f => PathBuf::from(f),
        }
    }

    /// The template keys' file.
    pub fn template_key_path(&self) -> PathBuf {
        match self.store.template_key_file.as_str() {
            "" => self.data_dir.join("template.key"),
            f => PathBuf::from(f),
        }
    }

    /// The audit signing key's file (the public key: the same name with `.pub` added).
    pub fn signing_key_path(&self) -> PathBuf {
        match self.audit.signing_key_file.as_str() {
            "" => self.data_dir.join("audit-signing.key"),
            f => PathBuf::from(f),
        }
    }

    pub fn model_dir(&self) -> PathBuf {
        if self.models.dir.is_empty() {
            self.data_dir.join("models")
        } else {
            PathBuf::from(&self.models.dir)
        }
    }

    pub fn model_source(&self) -> lobby_models::Source {
        if self.models.base_url.is_empty() {
            lobby_models::Source::Mirror(PathBuf::from(&self.models.mirror))
        } else {
            lobby_models::Source::BaseUrl(self.models.base_url.clone())
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &'static str, why: &str| {
            Err(ConfigError::Invalid {
                key,
                why: why.to_string(),
            })
        };
        if self.limits.max_streams_per_connection == 0
            || self.limits.max_streams_per_caller == 0
            || self.limits.check_in_stream_secs == 0
        {
            return bad(
                "limits.max_streams_per_connection / max_streams_per_caller / check_in_stream_secs",
                "must be positive",
            );
        }
        let r = &self.retention;
        if r.templates_after_departure_hours < 0
            || r.guests_after_departure_days < 1
            || r.decisions_after_days < 1
            || r.every_secs == 0
        {
            return bad(
                "retention",
                "templates_after_departure_hours must be >= 0; guests_after_departure_days, decisions_after_days and every_secs >= 1",
            );
        }
        if r.no_show_after_arrival_days < self.gallery.stay_slack_days {
            return bad(
                "retention.no_show_after_arrival_days",
                "must be at least gallery.stay_slack_days (the 1:N search still expects the guest until then)",
            );
        }
        if self.limits.kiosk_frames_per_minute == 0 || self.limits.kiosk_frame_burst == 0 {
            return bad("limits.kiosk_frames_per_minute / kiosk_frame_burst", "must be positive");
        }
        let p = &self.policy;
        let unit = |x: f32| (-1.0..=1.0).contains(&x);
        if ![
            p.match_threshold,
            p.match_threshold_1n,
            p.match_threshold_masked,
            p.match_threshold_1n_masked,
        ]
        .into_iter()
        .all(unit)
        {
            return bad("policy.match_threshold", "must be a cosine in [-1, 1]");
        }
        if !(0.0..=1.0).contains(&p.review_band) || !(0.0..=1.0).contains(&p.margin) {
            return bad("policy.review_band / policy.margin", "must be in [0, 1]");
        }
        if p.liveness_max_face_px.is_nan() || p.liveness_max_face_px < 0.0 {
            return bad("policy.liveness_max_face_px", "must be 0 (no limit) or a size in px");
        }
        if !(0.0..=1.0).contains(&p.liveness_threshold) {
            return bad("policy.liveness_threshold", "must be a probability in [0, 1]");
        }
        if p.liveness_fail == PolicyOutcome::Approved {
            return bad(
                "policy.liveness_fail",
                "a face that fails liveness can never be approved",
            );
        }
        if p.health_red == PolicyOutcome::Approved || p.health_unknown == PolicyOutcome::Approved {
            return bad(
                "policy.health_red / health_unknown",
                "RED or UNKNOWN health can never be approved",
            );
        }
        if !(p.target_fmr > 0.0 && p.target_fmr < 1.0 && p.target_fmr_1n > 0.0 && p.target_fmr_1n <= p.target_fmr) {
            return bad(
                "policy.target_fmr_1n",
                "FMR targets must be in (0, 1), the 1:N one no looser than 1:1",
            );
        }
        if p.match_threshold_1n < p.match_threshold || p.match_threshold_1n_masked < p.match_threshold_masked {
            return bad(
                "policy.match_threshold_1n",
                "must not be below the 1:1 threshold (its FMR is stricter)",
            );
        }
        let c = &self.cascade;
        if c.weights.iter().any(|w| !(0.0..=1.0).contains(w)) || c.weights[1] + c.weights[2] <= 0.0 {
            return bad("cascade.weights", "weights must be in [0, 1], teacher + dlib above 0");
        }
        if c.impostor_sd.iter().any(|sd| sd.is_nan() || *sd <= 0.0) {
            return bad("cascade.impostor_sd", "standard deviations must be positive");
        }
        for (key, b) in [("cascade.one_to_one", c.one_to_one), ("cascade.one_to_n", c.one_to_n)] {
            if !unit(b.band[0]) || !unit(b.band[1]) || b.band[0] > b.band[1] || !b.threshold.is_finite() {
                return bad(key, "band must be two cosines, low <= high, and the threshold finite");
            }
        }
        let l = &self.ladder;
        if l.max_frames == 0 || l.step_frames == 0 || l.liveness_frames == 0 || l.max_fused_frames == 0 {
            return bad("ladder", "frame counts must be positive");
        }
        if !unit(l.same_person_min) || l.same_person_min < p.match_threshold {
            return bad(
                "ladder.same_person_min",
                "must be a cosine in [-1, 1], not below the 1:1 threshold",
            );
        }
        if l.liveness_frames > l.max_fused_frames {
            return bad(
                "ladder.liveness_frames",
                "must not exceed max_fused_frames (the frames averaged are the frames fused)",
            );
        }
        for (key, b, t) in [
            ("cascade.one_to_one", c.one_to_one, p.match_threshold),
            ("cascade.one_to_n", c.one_to_n, p.match_threshold_1n),
        ] {
            if c.enabled && !(b.band[0] <= t && t <= b.band[1]) {
                return bad(
                    key,
                    "the band must contain the student-alone threshold (used when a guest has no second-stage template)",
                );
            }
        }
        if p.min_brightness >= p.max_brightness {
            return bad("policy.min_brightness", "must be below max_brightness");
        }
        let l = &self.limits;
        if l.max_message_bytes < 1024
            || l.max_pixels == 0
            || l.max_concurrent_analyses == 0
            || l.request_timeout_ms == 0
        {
            return bad("limits", "sizes, concurrency and timeout must be positive");
        }
        if l.max_photos_per_enrolment == 0 || l.max_photos_per_enrolment > 5 {
            return bad("limits.max_photos_per_enrolment", "must be 1-5");
        }
        if self.gallery.search_k == 0 || self.gallery.stay_slack_days < 0 {
            return bad("gallery", "search_k must be positive and stay_slack_days not negative");
        }
        for k in &self.health.issuer_public_keys {
            if crate::core::healthcode::parse_public_key(k).is_err() {
                return bad(
                    "health.issuer_public_keys",
                    "each key must be 32 bytes of base64 (Ed25519)",
                );
            }
        }
        if self.health.qr_max_age_secs <= 0 {
            return bad("health.qr_max_age_secs", "must be positive");
        }
        for z in std::iter::once(&self.time.zone).chain(self.time.property_zones.values()) {
            if parse_zone(z).is_none() {
                return bad(
                    "time.zone / time.property_zones",
                    "must be IANA time zone names (or \"local\")",
                );
            }
        }
        if self.audit.checkpoint_every_entries == 0 {
            return bad("audit.checkpoint_every_entries", "must be positive");
        }
        if self.audit.checkpoint_every_secs == 0 {
            return bad("audit.checkpoint_every_secs", "must be positive");
        }
        if self.auth.reload_ms == 0 {
            return bad("auth.reload_ms", "must be positive");
        }
        let t = &self.tls;
        if t.cert.is_some() != t.key.is_some() {
            return bad("tls.cert / tls.key", "give both or neither");
        }
        if t.client_ca.is_some() && !t.enabled() {
            return bad("tls.client_ca", "mutual TLS needs tls.cert and tls.key");
        }
        if t.require_kiosk_cert && t.client_ca.is_none() {
            return bad(
                "tls.require_kiosk_cert",
                "needs tls.client_ca to verify kiosk certificates",
            );
        }
        for t in &self.auth.tokens {
            if t.sha256.len() != 64 || hex::decode(&t.sha256).is_err() {
                return bad("auth.tokens.sha256", "must be 64 hex characters");
            }
            if t.role == Role::Kiosk && t.property.as_deref().unwrap_or("").is_empty() {
                return bad("auth.tokens.property", "a kiosk token must name its property");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_config_prints_no_database_password() {
        assert_eq!(
            redact_url("postgres://lobby:s3cret@db:5432/lobby?sslmode=require"),
            "postgres://lobby:***@db:5432/lobby?sslmode=require"
        );
        assert_eq!(redact_url("postgresql://lobby@db/lobby"), "postgresql://lobby@db/lobby");
        assert_eq!(
            redact_url("host=/run/postgresql user=lobby password=s3cret dbname=lobby"),
            "host=/run/postgresql user=lobby password=*** dbname=lobby"
        );
        let mut s = Settings::load_from(None, std::iter::empty()).unwrap();
        s.store.url = "postgres://lobby:s3cret@db/lobby".into();
        let text = s.to_redacted_toml().unwrap();
        assert!(!text.contains("s3cret") && text.contains("lobby:***@db"), "{text}");
        // What it prints loads back as the same settings (the password aside).
        let back: Settings = toml::from_str(&text).unwrap();
        assert_eq!(back.limits.max_pixels, s.limits.max_pixels);
    }

    #[test]
    fn defaults_load_and_validate() {
        let s = Settings::load_from(None, std::iter::empty()).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:50051");
        assert!(s.policy.match_threshold > 0.2 && s.policy.match_threshold < 0.6);
    }

    #[test]
    fn env_overrides_win_and_are_validated() {
        let env = vec![("LOBBY__POLICY__MATCH_THRESHOLD".to_string(), "0.50".to_string())];
        let s = Settings::load_from(None, env.into_iter()).unwrap();
        assert_eq!(s.policy.match_threshold, 0.50);
        let env = vec![("LOBBY__POLICY__LIVENESS_FAIL".to_string(), "approved".to_string())];
        assert!(matches!(
            Settings::load_from(None, env.into_iter()),
            Err(ConfigError::Invalid { .. })
        ));
        let env = vec![("LOBBY__LISTEN".to_string(), "127.0.0.1:1234".to_string())];
        assert_eq!(Settings::load_from(None, env.into_iter()).unwrap().listen.port(), 1234);
    }

    #[test]
    fn today_is_the_property_s_date_in_its_zone() {
        let env = vec![
            ("LOBBY__TIME__ZONE".to_string(), "Pacific/Kiritimati".to_string()),
            (
                "LOBBY__TIME__PROPERTY_ZONES".to_string(),
                "{ \"hotel-west\" = \"Etc/GMT+12\" }".to_string(),
            ),
        ];
        let s = Settings::load_from(None, env.into_iter()).unwrap();
        // 2026-12-05 11:30 UTC: 2026-12-06 01:30 at UTC+14, 2026-12-04 23:30 at UTC-12.
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-05T11:30:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let d = |s: &str| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        assert_eq!(s.time.today_at("hotel-east", now), d("2026-12-06"));
        assert_eq!(s.time.today_at("hotel-west", now), d("2026-12-04"));
        let env = vec![("LOBBY__TIME__ZONE".to_string(), "Mars/Olympus".to_string())];
        assert!(matches!(
            Settings::load_from(None, env.into_iter()),
            Err(ConfigError::Invalid { .. })
        ));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let env = vec![("LOBBY__POLICY__MATCH_TRESHOLD".to_string(), "0.5".to_string())];
        assert!(matches!(
            Settings::load_from(None, env.into_iter()),
            Err(ConfigError::Parse(_))
        ));
    }
}
