//! The check-in logic between the gRPC handlers and the backends: enrolment, check-in (pipeline,
//! matching, policy), erasure, overrides. Knows nothing of protobuf.

use crate::auth::Caller;
use crate::config::Settings;
use crate::gallery::{self, Gallery, GalleryError, TemplateKind};
use crate::health::{self, HealthRecord, QrProblem};
use crate::policy::{self, Decision, MatchFacts, Outcome};
use crate::store::{
    ConsentRecord, DecisionRow, NewTemplate, OverrideRow, ResStatus, ReservationInput, ReservationView, SqliteStore,
    Store, StoreError,
};
use crate::vision::{Analysis, Embedding, Vision, VisionConfig, VisionError, EMBEDDING_DIM};
use chrono::{Local, NaiveDate};
use ed25519_dalek::VerifyingKey;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
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
    let m = lobby_models::Manifest::embedded();
    match m.get("embedder") {
        Some(s) => format!(
            "{}@{}",
            s.file.trim_end_matches(".onnx"),
            s.sha256.get(..12).unwrap_or(&s.sha256)
        ),
        None => "embedder@unknown".into(),
    }
}

/// One enrolment photo's outcome.
#[derive(Debug, Clone)]
pub struct PhotoOutcome {
    pub faces_found: u32,
    pub quality: Option<crate::vision::Quality>,
    pub rejection: Option<&'static str>,
}

/// A check-in evaluated but not yet recorded.
#[derive(Debug, Clone)]
pub struct Evaluated {
    pub decision: Decision,
    pub analysis: Analysis,
    pub search_ms: f64,
    pub decide_ms: f64,
    pub started: Instant,
    /// The guest the decision concerns (matched or named), for the record.
    pub guest_id: Option<String>,
}

/// A recorded check-in decision.
#[derive(Debug, Clone)]
pub struct CheckIn {
    pub id: String,
    pub eval: Evaluated,
    pub total_ms: f64,
}

pub struct App {
    pub settings: Settings,
    pub vision: Arc<Vision>,
    pub store: Arc<dyn Store>,
    pub gallery: Gallery,
    issuers: Vec<VerifyingKey>,
    reviews: broadcast::Sender<DecisionRow>,
    analyses: Arc<Semaphore>,
    model_id: String,
    /// Flips to true when the server shuts down, so long-lived streams end and let it finish.
    shutdown: tokio::sync::watch::Sender<bool>,
}

fn require_property(c: &Caller) -> Result<&str> {
    c.property
        .as_deref()
        .ok_or_else(|| AppError::PermissionDenied("this kiosk credential names no property".into()))
}

fn new_decision_id() -> String {
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
        let model_id = model_id();
        let mut by_property: HashMap<String, Vec<gallery::Item>> = HashMap::new();
        let mut other_model = 0;
        for t in store.all_templates()? {
            let kind = TemplateKind::parse(&t.kind);
            let Some(kind) = kind.filter(|_| t.model_id == model_id) else {
                other_model += 1;
                continue;
            };
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
            model_id,
            shutdown,
        })
    }

    pub fn vision_config(settings: &Settings) -> VisionConfig {
        let mut v = VisionConfig::default();
        v.decode.max_pixels = settings.limits.max_pixels;
        v.decode.max_bytes = settings.limits.max_message_bytes;
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
    async fn with_vision<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Vision) -> std::result::Result<T, VisionError> + Send + 'static,
    ) -> Result<T> {
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
    /// ([`Vision::masked_template`]).
    pub async fn analyze_for_enrolment(&self, photo: Vec<u8>) -> Result<(Analysis, Option<Embedding>)> {
        self.with_vision(move |v| {
            let img = v.decode(&photo)?;
            let a = v.analyze(&img)?;
            // Without a masked template the guest is still enrolled (masked check-ins then score
            // against the clean template), so a failure here does not fail the photo.
            let masked = match &a.primary {
                Some(f) => v.masked_template(&img, &f.face).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "no masked template for this enrolment photo");
                    None
                }),
                None => None,
            };
            Ok((a, masked))
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
            let (a, masked) = match self.analyze_for_enrolment(photo).await {
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
            } else if q.yaw_deg.abs() > p.max_yaw_deg
                || q.pitch_deg.abs() > p.max_pitch_deg
                || q.roll_deg.abs() > p.max_roll_deg
            {
                Some("head_turned")
            } else {
                None
            };
            if rejection.is_none() {
                templates.push(NewTemplate {
                    kind: TemplateKind::Clean.as_str().into(),
                    vector: f.embedding.0,
                });
                // Mask-aware enrolment: the same photo with synthetic masks, for masked check-ins.
                if let Some(m) = masked {
                    templates.push(NewTemplate {
                        kind: TemplateKind::Masked.as_str().into(),
                        vector: m.0,
                    });
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
        let (guest_id, ids) = self.store.enrol(
            property,
            code,
            &consent,
            &self.model_id,
            &templates,
            &caller.id,
            now_ms(),
        )?;
        let items: Vec<gallery::Item> = ids
            .iter()
            .zip(templates)
            .map(|(id, t)| {
                let kind = TemplateKind::parse(&t.kind).unwrap_or(TemplateKind::Clean);
                (*id, guest_id.clone(), kind, t.vector)
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

    fn eligible(&self, r: &ReservationView, today: NaiveDate) -> bool {
        let slack = chrono::Days::new(self.settings.gallery.stay_slack_days as u64);
        let from = r.arrival.checked_sub_days(slack).unwrap_or(r.arrival);
        let to = r.departure.checked_add_days(slack).unwrap_or(r.departure);
        !r.erased && matches!(r.status, ResStatus::Booked | ResStatus::CheckedIn) && from <= today && today < to
    }

    /// A probe's 1:1 score against one guest's templates (`gallery::fused`); `None` without a
    /// clean template.
    fn score_against(probe: &Embedding, masked_probe: bool, templates: &[(TemplateKind, Vec<f32>)]) -> Option<f32> {
        let best = |kind: TemplateKind| {
            templates
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, t)| probe.cosine(&Embedding(t.clone())))
                .reduce(f32::max)
        };
        Some(gallery::fused(
            masked_probe,
            best(TemplateKind::Clean)?,
            best(TemplateKind::Masked),
        ))
    }

    /// Runs the pipeline, matching and policy for one photo, without recording anything.
    pub async fn evaluate(&self, caller: &Caller, photo: Vec<u8>, code: &str, qr: &str) -> Result<Evaluated> {
        let started = Instant::now();
        let property = require_property(caller)?.to_string();
        let analysis = self.analyze(photo).await?;
        let t = Instant::now();
        let (today, now) = (today(), now_ms());
        let p = &self.settings.policy;
        let usable = analysis
            .primary
            .as_ref()
            .filter(|a| policy::capture_problems(p, a).is_empty());
        let matching = match usable {
            None => None,
            Some(a) if !code.is_empty() => {
                let reservation = self.store.get_reservation(&property, code)?;
                let score = match &reservation {
                    Some(r) if !r.erased => {
                        let ts: Vec<(TemplateKind, Vec<f32>)> = self
                            .store
                            .guest_templates(&r.guest_id)?
                            .into_iter()
                            .filter(|t| t.model_id == self.model_id)
                            .filter_map(|t| Some((TemplateKind::parse(&t.kind)?, t.vector)))
                            .collect();
                        Self::score_against(&a.embedding, a.mask.masked, &ts)
                    }
                    _ => None,
                };
                Some(MatchFacts::OneToOne { reservation, score })
            }
            Some(a) => {
                let cache: Mutex<HashMap<String, Option<ReservationView>>> = Mutex::new(HashMap::new());
                let lookup = |g: &str| -> Option<ReservationView> {
                    let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
                    c.entry(g.to_string())
                        .or_insert_with(|| self.store.reservation_of_guest(g).ok().flatten())
                        .clone()
                };
                let hits = self.gallery.search(
                    &property,
                    &a.embedding.0,
                    a.mask.masked,
                    self.settings.gallery.search_k,
                    |g| lookup(g).map(|r| self.eligible(&r, today)).unwrap_or(false),
                )?;
                let best = hits.first().and_then(|h| lookup(&h.guest_id).map(|r| (r, h.score)));
                Some(MatchFacts::OneToN {
                    best,
                    second: hits.get(1).map(|h| h.score),
                })
            }
        };
        let search_ms = t.elapsed().as_secs_f64() * 1000.0;
        let t = Instant::now();
        // The QR counts only for the guest the face was matched to (or named).
        let candidate = match &matching {
            Some(MatchFacts::OneToOne { reservation, .. }) => reservation.clone(),
            Some(MatchFacts::OneToN { best, .. }) => best.as_ref().map(|(r, _)| r.clone()),
            None => None,
        };
        let qr_result: Option<std::result::Result<HealthRecord, QrProblem>> = match (&candidate, qr.is_empty()) {
            (_, true) => None,
            (Some(r), false) => Some(health::verify_qr(
                qr,
                &self.issuers,
                &r.guest_ref,
                now,
                self.settings.health.qr_max_age_secs,
            )),
            (None, false) => None,
        };
        let decision = policy::decide(
            p,
            analysis.primary.as_ref(),
            matching.as_ref(),
            qr_result.as_ref(),
            today,
            now,
        );
        let decide_ms = t.elapsed().as_secs_f64() * 1000.0;
        let guest_id = decision
            .reservation
            .as_ref()
            .or(candidate.as_ref())
            .map(|r| r.guest_id.clone());
        Ok(Evaluated {
            decision,
            analysis,
            search_ms,
            decide_ms,
            started,
            guest_id,
        })
    }

    /// Records an evaluated check-in (audited); an approval checks the reservation in, a REVIEW is
    /// pushed to front-desk subscribers.
    pub fn record(&self, caller: &Caller, eval: Evaluated) -> Result<CheckIn> {
        let d = &eval.decision;
        let id = new_decision_id();
        let row = DecisionRow {
            id: id.clone(),
            property_id: caller.property.clone().unwrap_or_default(),
            kiosk_id: caller.id.clone(),
            created_at_ms: now_ms(),
            outcome: d.outcome.as_str().into(),
            reasons: d.reasons.iter().map(|r| r.as_str().to_string()).collect(),
            reservation_code: d.reservation.as_ref().map(|r| r.code.clone()).unwrap_or_default(),
            guest_id: eval.guest_id.clone(),
            match_score: d.score,
            match_threshold: d.threshold,
            live: d.live,
            liveness_score: eval.analysis.primary.as_ref().map(|a| a.liveness.p_real).unwrap_or(0.0),
            masked: eval.analysis.primary.as_ref().is_some_and(|a| a.mask.masked),
            health_colour: d
                .health_used
                .as_ref()
                .map(|h| h.colour.as_str())
                .unwrap_or("UNKNOWN")
                .into(),
            guest_message: d.guest_message.clone(),
            final_outcome: d.outcome.as_str().into(),
            override_: None,
        };
        let approved = d.outcome == Outcome::Approved && d.reservation.is_some();
        self.store.record_decision(&row, approved, row.created_at_ms)?;
        if d.outcome == Outcome::Review {
            let _ = self.reviews.send(row);
        }
        let total_ms = eval.started.elapsed().as_secs_f64() * 1000.0;
        Ok(CheckIn { id, eval, total_ms })
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
