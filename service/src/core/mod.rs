//! The check-in core, between the gRPC layer and the backends. Knows nothing of protobuf. One file
//! per use case: [`reservations`] (reservations, health codes, erasure), [`enrolment`],
//! [`checkin`] (unary and streamed, with the escalation [`ladder`] and the [`policy`]), [`reviews`]
//! (the front desk's queue, overrides, the audit check). [`matcher`] owns the galleries and asks the
//! store; the face pipeline is reached through the [`Analyser`] trait, the store through
//! [`crate::store::Store`].

mod analyser;
mod anchor;
mod caller;
pub mod cascade;
pub mod checkin;
pub mod credentials;
mod enrolment;
mod follow;
pub mod healthcode;
mod index_check;
pub mod ladder;
mod matcher;
pub mod policy;
mod reservations;
mod retention;
mod reviews;

pub use analyser::{Analyser, Enrolment};
pub use anchor::{public_key_b64 as audit_key_b64, read_checkpoint_file};
pub use caller::Caller;
pub use checkin::{CheckIn, CheckInStream, Evaluated, StreamAnswer};
pub use enrolment::{Consent, PhotoOutcome, Rejection};
pub use index_check::IndexCheck;
pub use retention::Clock;
pub use reviews::{FeedEnd, ReviewFeed, REVIEW_PAGE};

use crate::config::Settings;
use crate::domain::TemplateKind;
use crate::gallery::GalleryError;
use crate::store::{DecisionRow, Store, StoreError};
use crate::vision::{VisionConfig, VisionError};
use chrono::{Local, NaiveDate};
use ed25519_dalek::VerifyingKey;
use matcher::Matcher;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch, Semaphore};

/// Errors of the core; the API layer maps each to a gRPC status in one place (`api::status`).
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Busy(String),
    #[error("store")]
    Store(#[source] StoreError),
    #[error("face pipeline")]
    Vision(#[source] VisionError),
    #[error("gallery")]
    Gallery(#[source] GalleryError),
    #[error("{0}")]
    Internal(String),
}

impl From<VisionError> for AppError {
    fn from(e: VisionError) -> Self {
        if e.is_bad_input() {
            AppError::InvalidArgument(e.to_string())
        } else {
            AppError::Vision(e)
        }
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => AppError::NotFound(format!("{what} not found")),
            StoreError::Conflict(why) => AppError::FailedPrecondition(why),
            e => AppError::Store(e),
        }
    }
}

impl From<GalleryError> for AppError {
    fn from(e: GalleryError) -> Self {
        AppError::Gallery(e)
    }
}

pub type Result<T> = std::result::Result<T, AppError>;

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub fn today() -> NaiveDate {
    Local::now().date_naive()
}

/// The embedder's identity, stored with every template. Templates of another embedder are not
/// comparable and are not searched.
pub fn model_id() -> String {
    model_id_of("embedder")
}

/// A model's identity (file name and sha256 prefix) by its manifest id.
pub fn model_id_of(id: &str) -> String {
    let m = lobby_models::Manifest::embedded();
    match m.get(id) {
        Some(s) => format!(
            "{}@{}",
            s.file.trim_end_matches(".onnx"),
            s.sha256.get(..12).unwrap_or(&s.sha256)
        ),
        None => format!("{id}@unknown"),
    }
}

/// The identity of the model that makes each kind of template.
#[derive(Debug, Clone)]
pub struct ModelIds {
    pub student: String,
    pub teacher: String,
    pub dlib: String,
}

impl ModelIds {
    /// The models of the manifest; a second-stage template made with flip averaging is another
    /// model's (`+flip`), since it is not comparable with one made without.
    pub fn new(cascade: &crate::config::Cascade) -> ModelIds {
        let flip = |id: &str, f: bool| format!("{}{}", model_id_of(id), if f { "+flip" } else { "" });
        ModelIds {
            student: model_id(),
            teacher: flip("teacher", cascade.flip[0]),
            dlib: flip("dlib", cascade.flip[1]),
        }
    }

    pub fn of(&self, kind: TemplateKind) -> &str {
        match kind {
            TemplateKind::Clean | TemplateKind::Masked => &self.student,
            TemplateKind::Teacher => &self.teacher,
            TemplateKind::Dlib => &self.dlib,
        }
    }
}

/// A point where the race and failure tests hold or fail a request (fail-rs, cargo feature
/// `failpoints`, which only the test suite turns on). Configured by `fail::cfg(name, ...)`:
/// `return(<ms>)` waits that long here, on the runtime's timer (no thread held); `return(error)`
/// fails the request here as an internal error. Without the feature it is nothing at all, and
/// nothing outside the process can configure it (the service never reads `FAILPOINTS`).
#[allow(unused_variables)]
pub(crate) async fn test_point(name: &str) -> Result<()> {
    #[cfg(feature = "failpoints")]
    {
        let action = (|| {
            fail::fail_point!(name, |a: Option<String>| a);
            None
        })();
        match action.as_deref() {
            None => {}
            Some("error") => return Err(AppError::Internal(format!("failure injected at {name}"))),
            Some(ms) => match ms.parse::<u64>() {
                Ok(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                Err(_) => return Err(AppError::Internal(format!("{name}: unknown test action {ms:?}"))),
            },
        }
    }
    Ok(())
}

pub(crate) fn new_decision_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut b);
    format!("d_{}", hex::encode(b))
}

pub struct App {
    settings: Settings,
    analyser: Arc<dyn Analyser>,
    store: Arc<dyn Store>,
    matcher: Matcher,
    issuers: Vec<VerifyingKey>,
    reviews: broadcast::Sender<DecisionRow>,
    analyses: Arc<Semaphore>,
    /// The threads that run the face pipeline: exactly `limits.max_concurrent_analyses` (the
    /// semaphore above admits no more at once, so none waits here). A fixed set rather than tokio's
    /// blocking pool, which grows to hundreds of short-lived threads under load: the pipeline's
    /// per-thread scratch buffers and the allocator's per-thread arenas then stay bounded by this
    /// count.
    analysis_pool: Arc<rayon::ThreadPool>,
    models: ModelIds,
    /// Flips to true when the server shuts down, so long-lived streams end and let it finish.
    shutdown: watch::Sender<bool>,
    /// Check-in frames per kiosk credential (a token bucket per kiosk).
    frames: governor::DefaultKeyedRateLimiter<String>,
    /// Enrolment and erasure of one reservation take its lock across the store's commit and the
    /// index update, so they cannot interleave (erased vectors back in the index). Striped: a
    /// fixed number of locks, a reservation's by the hash of its key.
    guest_locks: Vec<tokio::sync::Mutex<()>>,
    /// The audit trail's signing key and checkpoints.
    anchor: Arc<anchor::Anchor>,
    /// Long-lived streams open per credential holder.
    streams: Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>,
    /// The retention rules' clock.
    clock: Clock,
    /// A deletion left rows in the WAL (a reader held it): retried until cleared.
    wal_pending: std::sync::atomic::AtomicBool,
    /// The last change of the PostgreSQL change log applied to this node (`follow`).
    followed: tokio::sync::Mutex<i64>,
}

/// A task aborted when its handle is dropped.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A place among a caller's open streams (`limits.max_streams_per_caller`), given back on drop.
#[derive(Debug)]
pub struct StreamSlot {
    streams: Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>,
    holder: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut m = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.holder) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.holder);
            }
        }
    }
}

impl App {
    /// Opens the store the settings name (SQLite in the data directory, or PostgreSQL) and builds
    /// every property's gallery from the stored templates.
    pub async fn start(settings: Settings, analyser: Arc<dyn Analyser>) -> anyhow::Result<App> {
        let store = crate::store::open(&settings).await?;
        App::with_store(settings, analyser, store).await
    }

    pub async fn with_store(
        settings: Settings,
        analyser: Arc<dyn Analyser>,
        store: Arc<dyn Store>,
    ) -> anyhow::Result<App> {
        let last_checkpoint = store.checkpoints().await?.last().map(|c| c.seq).unwrap_or(0);
        let anchor = Arc::new(anchor::Anchor::open(&settings, last_checkpoint)?);
        // Several nodes: changes after this one are applied after the galleries are built from the
        // store (applying one already in them does nothing), so none falls in between.
        let followed = match store.postgres() {
            Some(pg) => pg.last_change().await?,
            None => 0,
        };
        let models = ModelIds::new(&settings.cascade);
        let matcher = Matcher::build(store.clone(), &settings, models.clone()).await?;
        let issuers = settings
            .health
            .issuer_public_keys
            .iter()
            .map(|k| healthcode::parse_public_key(k).map_err(|e| anyhow::anyhow!("health issuer key: {e}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (reviews, _) = broadcast::channel(256);
        let analyses = Arc::new(Semaphore::new(settings.limits.max_concurrent_analyses));
        let analysis_pool = rayon::ThreadPoolBuilder::new()
            .num_threads(settings.limits.max_concurrent_analyses)
            .thread_name(|i| format!("lobby-analysis-{i}"))
            // A panic in the pipeline is answered as an internal error (its reply channel is
            // dropped), not an abort of the server (rayon's default).
            .panic_handler(|_| tracing::error!("a photo analysis panicked; answered as an internal error"))
            .build()?;
        let (shutdown, _) = watch::channel(false);
        let l = &settings.limits;
        let quota = std::num::NonZeroU32::new(l.kiosk_frames_per_minute)
            .zip(std::num::NonZeroU32::new(l.kiosk_frame_burst))
            .map(|(rate, burst)| governor::Quota::per_minute(rate).allow_burst(burst))
            .ok_or_else(|| anyhow::anyhow!("limits.kiosk_frames_per_minute and kiosk_frame_burst must be positive"))?;
        let frames = governor::RateLimiter::keyed(quota);
        Ok(App {
            settings,
            analyser,
            store,
            matcher,
            issuers,
            reviews,
            analyses,
            analysis_pool: Arc::new(analysis_pool),
            models,
            shutdown,
            frames,
            streams: Arc::default(),
            guest_locks: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
            anchor,
            clock: Clock::default(),
            wal_pending: Default::default(),
            followed: tokio::sync::Mutex::new(followed),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Whether the store is PostgreSQL (several nodes may share it).
    pub fn shared_store(&self) -> bool {
        self.store.postgres().is_some()
    }

    /// Whether the store answers now (the health check).
    pub async fn store_answers(&self) -> bool {
        self.store.ping().await.is_ok()
    }

    /// Templates in a property's search index (in memory; the store holds them all).
    pub fn indexed_templates(&self, property: &str) -> usize {
        self.matcher.indexed(property)
    }

    /// The face pipeline's settings the service's settings call for.
    pub fn vision_config(settings: &Settings) -> VisionConfig {
        let mut v = VisionConfig::default();
        v.decode.max_pixels = settings.limits.max_pixels;
        v.decode.max_bytes = settings.limits.max_message_bytes;
        v.liveness_max_face_px = settings.policy.liveness_max_face_px;
        v
    }

    /// Takes one check-in frame from the kiosk's token bucket; `Busy` (RESOURCE_EXHAUSTED) when it
    /// is empty, before anything is decoded.
    fn take_frame(&self, caller: &Caller) -> Result<()> {
        self.frames.check_key(&caller.id).map_err(|_| {
            AppError::Busy(format!(
                "kiosk {} is sending frames faster than its limit; wait a moment",
                caller.id
            ))
        })
    }

    /// The lock of one reservation's templates (see `guest_locks`).
    async fn lock_reservation(&self, property: &str, code: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (property, code).hash(&mut h);
        self.guest_locks[(h.finish() % self.guest_locks.len() as u64) as usize]
            .lock()
            .await
    }

    /// Takes a place among the caller's open streams; `Busy` (RESOURCE_EXHAUSTED) when it has
    /// `limits.max_streams_per_caller` open already.
    pub(crate) fn stream_slot(&self, caller: &Caller) -> Result<StreamSlot> {
        let max = self.settings.limits.max_streams_per_caller;
        let mut m = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(caller.id.clone()).or_insert(0);
        if *n >= max {
            return Err(AppError::Busy(format!(
                "{} already has {max} streams open; close one first",
                caller.id
            )));
        }
        *n += 1;
        Ok(StreamSlot {
            streams: self.streams.clone(),
            holder: caller.id.clone(),
        })
    }

    /// Ends every long-lived stream (the server is shutting down).
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Runs `work` with the face pipeline on the analysis threads, within the bound on analyses
    /// at once (a request waits `limits.queue_wait_ms` for a place, then gets `Busy`).
    async fn with_analyser<T: Send + 'static>(
        &self,
        work: impl FnOnce(&dyn Analyser) -> std::result::Result<T, VisionError> + Send + 'static,
    ) -> Result<T> {
        let wait = Duration::from_millis(self.settings.limits.queue_wait_ms);
        let permit = tokio::time::timeout(wait, self.analyses.clone().acquire_owned())
            .await
            .map_err(|_| AppError::Busy("too many photos in progress; try again shortly".into()))?
            .map_err(|_| AppError::Internal("analysis pool closed".into()))?;
        let analyser = self.analyser.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.analysis_pool.spawn(move || {
            let _permit = permit;
            // The caller may have gone (a cancelled request): nobody to answer.
            let _ = tx.send(work(analyser.as_ref()));
        });
        let r = rx
            .await
            .map_err(|_| AppError::Internal("analysis task failed".into()))?;
        Ok(r?)
    }
}

#[cfg(test)]
mod tests;
