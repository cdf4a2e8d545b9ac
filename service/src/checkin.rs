//! Check-in: a frame through the pipeline, identity matching (1:1 against a named reservation or
//! 1:N over the property's expected arrivals, with the cascade's second stage), the decision policy
//! and the escalation ladder; then the audited record of the decision.
//!
//! A unary check-in is one frame with no memory: the ladder's next step comes back as a RETRY and
//! the kiosk calls again. A stream ([`CheckInStream`]) keeps the ladder's [`Session`]: frames are
//! fused, steps asked, and only the final decision is recorded — or, when the kiosk closes the
//! stream while a step is asked (the guest has no code, walks to the desk), the REVIEW the desk
//! gets.

use crate::app::{new_decision_id, now_ms, require_property, today, App, AppError, Result};
use crate::auth::Caller;
use crate::gallery::TemplateKind;
use crate::health::{self, HealthRecord, QrProblem};
use crate::ladder::{FusedFrame, Fusion, Next, Session, Step};
use crate::matching::{judge, Mode, SecondCosines};
use crate::policy::{self, Decision, FaceFacts, MatchFacts, Outcome, Reason};
use crate::store::{DecisionRow, ResStatus, ReservationView};
use crate::vision::{Analysis, Embedding, SecondEmbeddings, Vision};
use chrono::NaiveDate;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// A check-in frame evaluated but not yet recorded.
#[derive(Debug, Clone)]
pub struct Evaluated {
    pub decision: Decision,
    /// The frame's analysis.
    pub analysis: Analysis,
    pub search_ms: f64,
    /// The cascade's second stage (0 when not consulted).
    pub second_ms: f64,
    pub decide_ms: f64,
    pub started: Instant,
    /// The ladder's steps asked so far in the stream, frames received, good frames fused.
    pub steps: Vec<Step>,
    pub frames: u32,
    pub fused_frames: u32,
    /// The fused frames' p(real) and the frame's mask verdict.
    pub p_real: f32,
    pub masked: bool,
    /// The frame failed the capture checks (nothing was matched).
    pub capture_problem: bool,
}

/// A recorded check-in decision.
#[derive(Debug, Clone)]
pub struct CheckIn {
    pub id: String,
    pub eval: Evaluated,
    pub total_ms: f64,
}

/// A check-in stream's state in the core: the ladder's session, the last guidance given, and the
/// decision the desk gets if the guest leaves the ladder now.
#[derive(Debug, Default)]
pub struct CheckInStream {
    session: Session,
    last: Option<Evaluated>,
    abandoned: Option<Evaluated>,
}

impl CheckInStream {
    pub fn new() -> CheckInStream {
        CheckInStream {
            session: Session::stream(),
            ..CheckInStream::default()
        }
    }
}

/// A guest's templates, by kind, of the models now loaded.
#[derive(Debug, Default)]
struct GuestTemplates {
    clean: Vec<Embedding>,
    masked: Vec<Embedding>,
    teacher: Vec<Embedding>,
    dlib: Vec<Embedding>,
}

fn best(ts: &[Embedding], probe: &Embedding) -> Option<f32> {
    ts.iter().map(|t| probe.cosine(t)).reduce(f32::max)
}

impl GuestTemplates {
    /// The first stage's score (`gallery::fused`); `None` without a clean template.
    fn first_stage(&self, probe: &Embedding, masked_probe: bool) -> Option<f32> {
        Some(crate::gallery::fused(
            masked_probe,
            best(&self.clean, probe)?,
            best(&self.masked, probe),
        ))
    }

    /// The second stage's cosines; `None` when the guest lacks a template the fusion needs.
    fn second(&self, probe: &SecondEmbeddings, with_dlib: bool) -> Option<SecondCosines> {
        let teacher = best(&self.teacher, &probe.teacher)?;
        let dlib = if with_dlib {
            Some(best(&self.dlib, probe.dlib.as_ref()?)?)
        } else {
            None
        };
        Some(SecondCosines { teacher, dlib })
    }
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// A RETRY that asks the guest something, replacing the policy's decision on the kiosk's screen. It
/// tells nothing of the match: no reservation, score or health status (a HOLD_STILL for a face that
/// matched must not become an oracle for whoever holds a photo up).
fn ask(d: &Decision, reason: Reason) -> Decision {
    Decision {
        outcome: Outcome::Retry,
        reasons: vec![reason],
        guest_message: policy::message(Outcome::Retry, &[reason]),
        reservation: None,
        candidate: None,
        score: -1.0,
        cascade: None,
        health_used: None,
        ..d.clone()
    }
}

fn step_reason(s: Step) -> Reason {
    match s {
        Step::HoldStill => Reason::HoldStill,
        Step::ShowReservation => Reason::ShowReservation,
        Step::LowerMask => Reason::LowerMask,
    }
}

impl App {
    fn eligible(&self, r: &ReservationView, today: NaiveDate) -> bool {
        let slack = chrono::Days::new(self.settings.gallery.stay_slack_days as u64);
        let from = r.arrival.checked_sub_days(slack).unwrap_or(r.arrival);
        let to = r.departure.checked_add_days(slack).unwrap_or(r.departure);
        !r.erased && matches!(r.status, ResStatus::Booked | ResStatus::CheckedIn) && from <= today && today < to
    }

    fn guest_templates(&self, guest_id: &str) -> Result<GuestTemplates> {
        let mut g = GuestTemplates::default();
        for t in self.store.guest_templates(guest_id)? {
            let Some(kind) = TemplateKind::parse(&t.kind) else {
                continue;
            };
            if t.model_id != self.models.of(kind) {
                continue;
            }
            let e = Embedding(t.vector);
            match kind {
                TemplateKind::Clean => g.clean.push(e),
                TemplateKind::Masked => g.masked.push(e),
                TemplateKind::Teacher => g.teacher.push(e),
                TemplateKind::Dlib => g.dlib.push(e),
            }
        }
        Ok(g)
    }

    /// The second stage on the fused frames against a guest's templates: each frame's second-stage
    /// embeddings are computed once (and kept in the fusion), then fused. Adds the time spent to
    /// `ms`. `None` (the student decides alone) when a frame has no second-stage input, the guest
    /// lacks templates, or the models fail (logged).
    fn second_cosines(
        &self,
        v: &Vision,
        fusion: &mut Fusion,
        ts: &GuestTemplates,
        ms: &mut f64,
    ) -> Option<SecondCosines> {
        let with_dlib = self.settings.cascade.weights[2] > 0.0;
        if ts.teacher.is_empty() || (with_dlib && ts.dlib.is_empty()) {
            return None;
        }
        let t = Instant::now();
        let computed = fusion.frames_mut().iter_mut().all(|f| {
            if f.second.is_some() {
                return true;
            }
            let Some(input) = f.second_input.as_ref() else {
                return false;
            };
            match v.second_embeddings(input, with_dlib, self.settings.cascade.flip) {
                Ok(e) => {
                    f.second = Some(e);
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e, "second stage failed; the first stage decides alone");
                    false
                }
            }
        });
        *ms += ms_since(t);
        if !computed {
            return None;
        }
        ts.second(&fusion.second()?, with_dlib)
    }

    /// Identity matching on the fused frames (runs on a blocking thread: store, Faiss and, in the
    /// cascade's band, two more models). Returns the fusion (with any second-stage embeddings
    /// computed), what matching found, and the second stage's milliseconds.
    fn identify(
        &self,
        v: &Vision,
        property: &str,
        mut fusion: Fusion,
        masked: bool,
        code: Option<&str>,
        today: NaiveDate,
    ) -> Result<(Fusion, MatchFacts, f64)> {
        let probe = fusion
            .embedding()
            .ok_or_else(|| AppError::Internal("no frame to match".into()))?;
        let (p, c) = (&self.settings.policy, &self.settings.cascade);
        let mut second_ms = 0.0;
        let facts = match code {
            Some(code) => {
                let reservation = self.store.get_reservation(property, code)?;
                let judged = match &reservation {
                    Some(r) if !r.erased => {
                        let ts = self.guest_templates(&r.guest_id)?;
                        ts.first_stage(&probe, masked).map(|score| {
                            judge(p, c, Mode::OneToOne, masked, score, || {
                                self.second_cosines(v, &mut fusion, &ts, &mut second_ms)
                            })
                        })
                    }
                    _ => None,
                };
                MatchFacts::OneToOne { reservation, judged }
            }
            None => {
                let cache: RefCell<HashMap<String, Option<ReservationView>>> = RefCell::new(HashMap::new());
                let lookup = |g: &str| -> Option<ReservationView> {
                    let mut c = cache.borrow_mut();
                    c.entry(g.to_string())
                        .or_insert_with(|| self.store.reservation_of_guest(g).ok().flatten())
                        .clone()
                };
                let hits = self
                    .gallery
                    .search(property, &probe.0, masked, self.settings.gallery.search_k, |g| {
                        lookup(g).map(|r| self.eligible(&r, today)).unwrap_or(false)
                    })?;
                let best = match hits.first() {
                    Some(h) => match lookup(&h.guest_id) {
                        Some(r) => {
                            let ts = self.guest_templates(&h.guest_id)?;
                            let j = judge(p, c, Mode::OneToN, masked, h.score, || {
                                self.second_cosines(v, &mut fusion, &ts, &mut second_ms)
                            });
                            Some((r, j))
                        }
                        None => None,
                    },
                    None => None,
                };
                MatchFacts::OneToN {
                    best,
                    second: hits.get(1).map(|h| h.score),
                }
            }
        };
        Ok((fusion, facts, second_ms))
    }

    /// One frame of a check-in: analysis, capture checks, fusion, matching, policy, ladder.
    async fn frame(
        self: &Arc<Self>,
        caller: &Caller,
        session: &mut Session,
        photo: Vec<u8>,
        code: &str,
        qr: &str,
    ) -> Result<(Evaluated, Option<Evaluated>)> {
        let started = Instant::now();
        let property = require_property(caller)?.to_string();
        session.frame(code);
        let analysis = self.analyze(photo).await?;
        let (today, now) = (today(), now_ms());
        let p = &self.settings.policy;
        let ladder = &self.settings.ladder;
        let mut eval = Evaluated {
            decision: policy::decide(p, analysis.primary.as_ref().map(FaceFacts::of), None, None, today, now),
            analysis,
            search_ms: 0.0,
            second_ms: 0.0,
            decide_ms: 0.0,
            started,
            steps: session.steps().to_vec(),
            frames: session.frames,
            fused_frames: 0,
            p_real: 0.0,
            masked: false,
            capture_problem: true,
        };
        let Some(face) = eval
            .analysis
            .primary
            .as_ref()
            .filter(|a| policy::capture_problems(p, &a.quality, a.mask.masked).is_empty())
        else {
            // Capture guidance; after the stream's last frame the guest goes to the desk.
            if session.out_of_frames(ladder) {
                eval.decision.outcome = Outcome::Review;
                eval.decision.guest_message = policy::message(Outcome::Review, &[]);
            }
            return Ok((eval, None));
        };
        eval.capture_problem = false;
        let masked = face.mask.masked;
        let quality = face.quality;
        session.add_good(
            FusedFrame {
                embedding: face.embedding.clone(),
                p_real: face.liveness.p_real,
                second_input: face.second_input.clone(),
                second: None,
            },
            masked,
            ladder,
        );
        let fusion = std::mem::take(session.current_mut());
        let t = Instant::now();
        let (app, code) = (self.clone(), session.code.clone());
        let (fusion, matching, second_ms) = self
            .with_vision(move |v| app.identify(v, &property, fusion, masked, code.as_deref(), today))
            .await?;
        eval.search_ms = ms_since(t) - second_ms;
        eval.second_ms = second_ms;
        let t = Instant::now();
        *session.current_mut() = fusion;
        let fused = session.current();
        // The QR counts only for the guest the face was matched to (or named).
        let candidate = match &matching {
            MatchFacts::OneToOne { reservation, .. } => reservation.as_ref(),
            MatchFacts::OneToN { best, .. } => best.as_ref().map(|(r, _)| r),
        };
        let qr_result: Option<std::result::Result<HealthRecord, QrProblem>> = match candidate {
            Some(r) if !qr.is_empty() => Some(health::verify_qr(
                qr,
                &self.issuers,
                &r.guest_ref,
                now,
                self.settings.health.qr_max_age_secs,
            )),
            _ => None,
        };
        let facts = FaceFacts {
            quality: &quality,
            p_real: fused.p_real(),
            masked,
        };
        let decision = policy::decide(p, Some(facts), Some(&matching), qr_result.as_ref(), today, now);
        eval.p_real = facts.p_real;
        eval.masked = masked;
        eval.fused_frames = fused.len() as u32;
        let next = session.next(decision.identity, decision.live, ladder);
        eval.steps = session.steps().to_vec();
        eval.decide_ms = ms_since(t);
        // When the ladder asks something, the desk's decision (if the guest leaves now) is the
        // policy's own.
        let reason = match next {
            Next::Decide => {
                eval.decision = decision;
                return Ok((eval, None));
            }
            Next::Ask(step) => step_reason(step),
            Next::CodeNotFound => Reason::ReservationNotFound,
        };
        let mut desk = eval.clone();
        eval.decision = ask(&decision, reason);
        desk.decision = decision;
        Ok((eval, Some(desk)))
    }

    /// Evaluates a unary check-in (one frame, no ladder memory: a step comes back as a RETRY);
    /// nothing is recorded.
    pub async fn evaluate(
        self: &Arc<Self>,
        caller: &Caller,
        photo: Vec<u8>,
        code: &str,
        qr: &str,
    ) -> Result<Evaluated> {
        let mut session = Session::unary();
        Ok(self.frame(caller, &mut session, photo, code, qr).await?.0)
    }

    /// A unary check-in, evaluated and recorded (RETRY answers included).
    pub async fn check_in(self: &Arc<Self>, caller: &Caller, photo: Vec<u8>, code: &str, qr: &str) -> Result<CheckIn> {
        let eval = self.evaluate(caller, photo, code, qr).await?;
        self.record(caller, eval)
    }

    /// One frame of a check-in stream: guidance (RETRY, not recorded) or the final decision,
    /// recorded.
    pub async fn stream_frame(
        self: &Arc<Self>,
        caller: &Caller,
        stream: &mut CheckInStream,
        photo: Vec<u8>,
        code: &str,
        qr: &str,
    ) -> Result<StreamAnswer> {
        let (eval, desk) = self.frame(caller, &mut stream.session, photo, code, qr).await?;
        if eval.capture_problem && eval.decision.outcome != Outcome::Retry {
            // The stream's last frame failed the capture checks: the desk gets what the ladder had
            // established, if it had asked something, rather than the capture guidance.
            if let Some(mut desk) = stream.abandoned.take() {
                desk.frames = eval.frames;
                return Ok(StreamAnswer::Final(self.record(caller, desk)?));
            }
        }
        if eval.decision.outcome == Outcome::Retry {
            if desk.is_some() {
                stream.abandoned = desk;
            }
            stream.last = Some(eval.clone());
            return Ok(StreamAnswer::Guidance(eval));
        }
        Ok(StreamAnswer::Final(self.record(caller, eval)?))
    }

    /// The kiosk closed the stream before a final decision. When the ladder had asked the guest
    /// something (a code they do not have, a step they cannot take), they go to the desk: the
    /// REVIEW is recorded and returned for the kiosk. Otherwise (only capture guidance was given)
    /// the last guidance is recorded and nothing is returned.
    pub fn end_stream(&self, caller: &Caller, stream: CheckInStream) -> Result<Option<CheckIn>> {
        if let Some(desk) = stream.abandoned {
            return Ok(Some(self.record(caller, desk)?));
        }
        if let Some(last) = stream.last {
            self.record(caller, last)?;
        }
        Ok(None)
    }

    /// Records an evaluated check-in (audited); an approval checks the reservation in, a REVIEW is
    /// pushed to front-desk subscribers.
    pub fn record(&self, caller: &Caller, eval: Evaluated) -> Result<CheckIn> {
        let d = &eval.decision;
        let id = new_decision_id();
        let named = d.reservation.as_ref().or(d.candidate.as_ref());
        let guest_id = named.map(|r| r.guest_id.clone());
        let row = DecisionRow {
            id: id.clone(),
            property_id: caller.property.clone().unwrap_or_default(),
            kiosk_id: caller.id.clone(),
            created_at_ms: now_ms(),
            outcome: d.outcome.as_str().into(),
            reasons: d.reasons.iter().map(|r| r.as_str().to_string()).collect(),
            reservation_code: named.map(|r| r.code.clone()).unwrap_or_default(),
            guest_id,
            match_score: d.score,
            match_threshold: d.threshold,
            live: d.live,
            liveness_score: eval.p_real,
            masked: eval.masked,
            health_colour: d
                .health_used
                .as_ref()
                .map(|h| h.colour.as_str())
                .unwrap_or("UNKNOWN")
                .into(),
            guest_message: d.guest_message.clone(),
            final_outcome: d.outcome.as_str().into(),
            override_: None,
            steps: eval.steps.iter().map(|s| s.as_str().to_string()).collect(),
            frames: eval.frames,
            fused_frames: eval.fused_frames,
            cascade: d.cascade.map(|c| (c.fused, c.threshold)),
        };
        let approved = d.outcome == Outcome::Approved && d.reservation.is_some();
        self.store.record_decision(&row, approved, row.created_at_ms)?;
        if d.outcome == Outcome::Review {
            let _ = self.reviews.send(row);
        }
        let total_ms = ms_since(eval.started);
        Ok(CheckIn { id, eval, total_ms })
    }
}

/// A stream's answer to one frame.
#[derive(Debug)]
pub enum StreamAnswer {
    /// RETRY guidance (a capture problem or a ladder step); the stream goes on.
    Guidance(Evaluated),
    /// The final decision, recorded; the stream ends.
    Final(CheckIn),
}
