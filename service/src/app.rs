//! The check-in logic between the gRPC handlers and the backends: enrolment, erasure, reviews and
//! overrides here; check-in (pipeline, matching, policy, the escalation ladder) in
//! [`crate::checkin`]. Knows nothing of protobuf.

use crate::auth::Caller;
use crate::config::Settings;
use crate::gallery::{self, Gallery, GalleryError, TemplateKind};
use crate::health::{self, HealthRecord};
use crate::policy::Outcome;
use crate::store::{
    ConsentRecord, DecisionRow, NewTemplate, OverrideRow, ReservationInput, ReservationView, SqliteStore, Store,
    StoreError,
};
use crate::vision::{Analysis, Embedding, SecondInput, Vision, VisionConfig, VisionError, EMBEDDING_DIM};
use chrono::{Local, NaiveDate};
use ed25519_dalek::VerifyingKey;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, Semaphore};

/// Errors of the check-in layer; mapped to gRPC status in one place (`api::status`).
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
    #[error("{0}")]
    Internal(String),
}

impl From<VisionError> for AppError {
    fn from(e: VisionError) -> Self {
        if e.is_bad_input() {
            AppError::InvalidArgument(e.to_string())
        } else {
            AppError::Internal(e.to_string())
        }
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => AppError::NotFound(format!("{what} not found")),
            StoreError::Conflict(why) => AppError::FailedPrecondition(why),
            StoreError::Db(why) => AppError::Internal(why),
        }
    }
}

impl From<GalleryError> for AppError {
    fn from(e: GalleryError) -> Self {
        AppError::Internal(e.to_string())
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

/// What enrolment makes of one photo: its analysis, the masked template (mask-aware enrolment) and
/// the second-stage embeddings.
pub struct Enrolment {
    pub analysis: Analysis,
    pub masked: Option<Embedding>,
    pub second: Option<crate::vision::SecondEmbeddings>,
}

/// One enrolment photo's outcome.
#[derive(Debug, Clone)]
pub struct PhotoOutcome {
    pub faces_found: u32,
    pub quality: Option<crate::vision::Quality>,
    pub rejection: Option<&'static str>,
}

pub struct App {
    pub settings: Settings,
    pub vision: Arc<Vision>,
    pub store: Arc<dyn Store>,
    pub gallery: Gallery,
    pub(crate) issuers: Vec<VerifyingKey>,
    pub(crate) reviews: broadcast::Sender<DecisionRow>,
    analyses: Arc<Semaphore>,
    pub(crate) models: ModelIds,
    /// Flips to true when the server shuts down, so long-lived streams end and let it finish.
    shutdown: tokio::sync::watch::Sender<bool>,
}

pub(crate) fn require_property(c: &Caller) -> Result<&str> {
    c.property
        .as_deref()
        .ok_or_else(|| AppError::PermissionDenied("this kiosk credential names no property".into()))
}

pub(crate) fn new_decision_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut b);
    format!("d_{}", hex::encode(b))
}

impl App {
    /// Opens the store, loads the models (installing them from the configured source if missing)
    /// and builds every property's gallery from the stored templates.
    pub fn start(settings: Settings, vision: Arc<Vision>) -> anyhow::Result<App> {
        let store = Arc::new(SqliteStore::open(&settings.data_dir.join("lobby.sqlite3"))?);
        App::with_store(settings, vision, store)
    }

    pub fn with_store(settings: Settings, vision: Arc<Vision>, store: Arc<dyn Store>) -> anyhow::Result<App> {
        let gallery = Gallery::new(EMBEDDING_DIM as u32, &settings.gallery.index_factory)?;
        let models = ModelIds::new(&settings.cascade);
        let mut by_property: HashMap<String, Vec<gallery::Item>> = HashMap::new();
        let mut other_model = 0;
        for t in store.all_templates()? {
            // Only the first stage's templates are indexed; the second stage's are read per guest.
            let Some(kind) = TemplateKind::parse(&t.kind).filter(|k| k.indexed()) else {
                continue;
            };
            if t.model_id != models.student {
                other_model += 1;
                continue;
            }
            by_property
                .entry(t.property_id)
                .or_default()
                .push((t.id, t.guest_id, kind, t.vector));
        }
        for (p, items) in &by_property {
            gallery.add(p, items)?;
        }
        if other_model > 0 {
            tracing::warn!(
                templates = other_model,
                "templates of another embedder are not searched; re-enrol those guests"
            );
        }
        let issuers = settings
            .health
            .issuer_public_keys
            .iter()
            .map(|k| health::parse_public_key(k).map_err(|e| anyhow::anyhow!("health issuer key: {e}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (reviews, _) = broadcast::channel(256);
        let analyses = Arc::new(Semaphore::new(settings.limits.max_concurrent_analyses));
        tracing::info!(
            properties = by_property.len(),
            templates = by_property.values().map(Vec::len).sum::<usize>(),
            "galleries built"
        );
        let (shutdown, _) = tokio::sync::watch::channel(false);
        Ok(App {
            settings,
            vision,
            store,
            gallery,
            issuers,
            reviews,
            analyses,
            models,
            shutdown,
        })
    }

    pub fn vision_config(settings: &Settings) -> VisionConfig {
        let mut v = VisionConfig::default();
        v.decode.max_pixels = settings.limits.max_pixels;
        v.decode.max_bytes = settings.limits.max_message_bytes;
        v.liveness_max_face_px = settings.policy.liveness_max_face_px;
        v
    }

    /// Ends every long-lived stream (the server is shutting down).
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn shutdown_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn subscribe_reviews(&self) -> broadcast::Receiver<DecisionRow> {
        self.reviews.subscribe()
    }

    /// Runs `work` on the vision pipeline on a worker thread, within the concurrency bound.
    pub(crate) async fn with_vision<T: Send + 'static, E: Send + 'static>(
        &self,
        work: impl FnOnce(&Vision) -> std::result::Result<T, E> + Send + 'static,
    ) -> Result<T>
    where
        AppError: From<E>,
    {
        let wait = Duration::from_millis(self.settings.limits.queue_wait_ms);
        let permit = tokio::time::timeout(wait, self.analyses.clone().acquire_owned())
            .await
            .map_err(|_| AppError::Busy("too many photos in progress; try again shortly".into()))?
            .map_err(|_| AppError::Internal("analysis pool closed".into()))?;
        let vision = self.vision.clone();
        let r = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work(&vision)
        })
        .await
        .map_err(|_| AppError::Internal("analysis task failed".into()))?;
        Ok(r?)
    }

    /// Analyses a photo's guest face.
    pub async fn analyze(&self, photo: Vec<u8>) -> Result<Analysis> {
        self.with_vision(move |v| v.analyze_bytes(&photo)).await
    }

    /// [`App::analyze`] for an enrolment photo: also the masked template of the guest's face
    /// ([`Vision::masked_template`]) and the cascade's second-stage templates.
    pub async fn analyze_for_enrolment(&self, photo: Vec<u8>) -> Result<Enrolment> {
        let flip = self.settings.cascade.flip;
        self.with_vision(move |v| -> std::result::Result<Enrolment, VisionError> {
            let img = v.decode(&photo)?;
            let analysis = v.analyze(&img)?;
            let Some(f) = &analysis.primary else {
                return Ok(Enrolment {
                    analysis,
                    masked: None,
                    second: None,
                });
            };
            // Without a masked template the guest is still enrolled (masked check-ins then score
            // against the clean template), so a failure here does not fail the photo.
            let masked = v.masked_template(&img, &f.face).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "no masked template for this enrolment photo");
                None
            });
            // Without second-stage templates the guest is still enrolled (the first stage then
            // decides alone), so a failure here does not fail the photo either.
            let aligned = v.align(&img, &f.face)?;
            let second = SecondInput::new(&img, &f.face.landmarks, &aligned)
                .and_then(|input| v.second_embeddings(&input, true, flip))
                .map_err(|e| tracing::warn!(error = %e, "no second-stage templates for this enrolment photo"))
                .ok();
            Ok(Enrolment {
                analysis,
                masked,
                second,
            })
        })
        .await
    }

    pub fn upsert_reservation(&self, caller: &Caller, r: &ReservationInput) -> Result<ReservationView> {
        self.check_scope(caller, &r.property_id)?;
        Ok(self.store.upsert_reservation(r, &caller.id, now_ms())?)
    }

    pub fn get_reservation(&self, caller: &Caller, property: &str, code: &str) -> Result<ReservationView> {
        self.check_scope(caller, property)?;
        self.store
            .get_reservation(property, code)?
            .ok_or_else(|| AppError::NotFound(format!("reservation {property}/{code} not found")))
    }

    pub fn set_health(&self, caller: &Caller, property: &str, code: &str, h: &HealthRecord) -> Result<ReservationView> {
        self.check_scope(caller, property)?;
        Ok(self.store.set_health(property, code, h, &caller.id, now_ms())?)
    }

    /// A credential scoped to a property may only touch that property.
    fn check_scope(&self, caller: &Caller, property: &str) -> Result<()> {
        match &caller.property {
            Some(p) if p != property => Err(AppError::PermissionDenied(format!(
                "credential {} is not for property {property}",
                caller.id
            ))),
            _ => Ok(()),
        }
    }

    /// Enrols a guest's face from 1-5 photos. Stores templates (never photos) of the photos that
    /// pass the enrolment checks; answers per photo.
    pub async fn enrol(
        &self,
        caller: &Caller,
        property: &str,
        code: &str,
        photos: Vec<Vec<u8>>,
        consent: ConsentRecord,
    ) -> Result<(String, Vec<PhotoOutcome>, usize)> {
        self.check_scope(caller, property)?;
        let res = self.get_reservation(caller, property, code)?;
        if res.erased {
            return Err(AppError::FailedPrecondition(
                "the guest of this reservation was erased".into(),
            ));
        }
        let p = &self.settings.policy;
        let mut outcomes = Vec::new();
        let mut templates = Vec::new();
        for photo in photos {
            let Enrolment {
                analysis: a,
                masked,
                second,
            } = match self.analyze_for_enrolment(photo).await {
                Ok(a) => a,
                Err(AppError::InvalidArgument(_)) => {
                    outcomes.push(PhotoOutcome {
                        faces_found: 0,
                        quality: None,
                        rejection: Some("undecodable"),
                    });
                    continue;
                }
                Err(e) => return Err(e),
            };
            let faces_found = a.faces.len() as u32;
            let Some(f) = a.primary else {
                outcomes.push(PhotoOutcome {
                    faces_found,
                    quality: None,
                    rejection: Some("no_face"),
                });
                continue;
            };
            let q = f.quality;
            let rejection = if q.comparable_faces > 1 {
                Some("multiple_faces")
            } else if q.face_size_px < p.enrol_min_face_px {
                Some("face_too_small")
            } else if q.out_of_frame > p.max_out_of_frame {
                Some("face_out_of_frame")
            } else if q.brightness < p.min_brightness || q.brightness > p.max_brightness {
                Some("bad_lighting")
            } else if q.sharpness < p.min_sharpness {
                Some("blurred")
            } else if q.yaw_deg.abs() > p.enrol_max_yaw_deg.min(p.max_yaw_deg)
                || q.pitch_deg.abs() > p.max_pitch_deg
                || q.roll_deg.abs() > p.max_roll_deg
            {
                Some("head_turned")
            } else {
                None
            };
            if rejection.is_none() {
                let mut add = |kind: TemplateKind, vector: Vec<f32>| {
                    templates.push(NewTemplate {
                        kind: kind.as_str().into(),
                        model_id: self.models.of(kind).to_string(),
                        vector,
                    })
                };
                add(TemplateKind::Clean, f.embedding.0);
                // Mask-aware enrolment: the same photo with synthetic masks, for masked check-ins.
                if let Some(m) = masked {
                    add(TemplateKind::Masked, m.0);
                }
                // The cascade's second stage.
                if let Some(s) = second {
                    add(TemplateKind::Teacher, s.teacher.0);
                    if let Some(d) = s.dlib {
                        add(TemplateKind::Dlib, d.0);
                    }
                }
            }
            outcomes.push(PhotoOutcome {
                faces_found,
                quality: Some(q),
                rejection,
            });
        }
        if templates.is_empty() {
            return Ok((res.guest_id, outcomes, 0));
        }
        let (guest_id, ids) = self
            .store
            .enrol(property, code, &consent, &templates, &caller.id, now_ms())?;
        let items: Vec<gallery::Item> = ids
            .iter()
            .zip(templates)
            .filter_map(|(id, t)| {
                let kind = TemplateKind::parse(&t.kind).filter(|k| k.indexed())?;
                Some((*id, guest_id.clone(), kind, t.vector))
            })
            .collect();
        self.gallery.add(property, &items)?;
        let clean = items.iter().filter(|i| i.2 == TemplateKind::Clean).count();
        Ok((guest_id, outcomes, clean))
    }

    /// Erases a guest: templates out of the store and the index, personal fields cleared, audited.
    pub fn erase(&self, caller: &Caller, property: &str, code: &str, reason: &str) -> Result<(String, usize)> {
        self.check_scope(caller, property)?;
        let (guest_id, ids) = self.store.erase_guest(property, code, reason, &caller.id, now_ms())?;
        self.gallery.remove(property, &ids)?;
        Ok((guest_id, ids.len()))
    }

    pub fn get_decision(&self, caller: &Caller, id: &str) -> Result<DecisionRow> {
        let d = self
            .store
            .get_decision(id)?
            .ok_or_else(|| AppError::NotFound(format!("decision {id} not found")))?;
        self.check_scope(caller, &d.property_id)?;
        Ok(d)
    }

    pub fn pending_reviews(&self, property: Option<&str>) -> Result<Vec<DecisionRow>> {
        Ok(self.store.pending_reviews(property)?)
    }

    /// A staff override: APPROVE checks the guest in, DENY refuses; reason required; audited.
    pub fn override_decision(&self, caller: &Caller, id: &str, approve: bool, reason: &str) -> Result<DecisionRow> {
        let d = self.get_decision(caller, id)?;
        if d.outcome == Outcome::Retry.as_str() {
            return Err(AppError::FailedPrecondition(
                "a RETRY is capture guidance, not a decision to override".into(),
            ));
        }
        if approve && d.reservation_code.is_empty() {
            return Err(AppError::FailedPrecondition(
                "no reservation is attached to this decision; check the guest in at the desk".into(),
            ));
        }
        let ov = OverrideRow {
            action: if approve { "APPROVE" } else { "DENY" }.into(),
            staff_id: caller.id.clone(),
            reason: reason.to_string(),
            at_ms: now_ms(),
        };
        let final_outcome = if approve { Outcome::Approved } else { Outcome::Denied };
        Ok(self.store.override_decision(id, &ov, final_outcome.as_str(), approve)?)
    }

    pub fn verify_audit(&self) -> Result<crate::audit::Verification> {
        Ok(self.store.verify_audit()?)
    }
}
