//! Check-in: a frame through the pipeline, identity matching (1:1 against a named reservation or
//! 1:N over the property's expected arrivals, with the cascade's second stage), the decision policy
//! and the escalation ladder; then the audited record of the decision.
//!
//! A unary check-in is one frame with no memory: the ladder's next step comes back as a RETRY and
//! the kiosk calls again. A stream ([`CheckInStream`]) keeps the ladder's [`Session`]: frames are
//! fused, steps asked, and only the final decision is recorded — or, when the kiosk closes the
//! stream while a step is asked (the guest has no code, walks to the desk), the REVIEW the desk
//! gets.

use super::cascade::{self, judge, Judged, Mode};
use super::healthcode::{self, QrProblem};
use super::ladder::{FusedFrame, Fusion, Next, Session};
use super::matcher::GuestTemplates;
use super::policy::{self, Decision, FaceFacts, MatchFacts};
use super::{new_decision_id, now_ms, App, Caller, Result};
use crate::domain::{HealthRecord, Outcome, Reason, Step};
use crate::store::DecisionRow;
use crate::vision::{Analysis, Embedding};
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

impl Evaluated {
    /// A frame's evaluation as it starts: its decision so far, the session's steps and frames,
    /// nothing searched, fused or judged yet.
    fn new(decision: Decision, analysis: Analysis, session: &Session, started: Instant) -> Evaluated {
        Evaluated {
            decision,
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
            capture_problem: false,
        }
    }
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
#[derive(Debug)]
pub struct CheckInStream {
    session: Session,
    last: Option<Evaluated>,
    abandoned: Option<Evaluated>,
    /// When the stream must end, however many frames it sent (`limits.check_in_stream_secs`).
    pub deadline: tokio::time::Instant,
    _slot: super::StreamSlot,
}

impl CheckInStream {
    /// Whether the stream has sent all the frames it may (`ladder.max_frames`).
    pub fn out_of_frames(&self, s: &crate::config::Ladder) -> bool {
        self.session.out_of_frames(s)
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

impl App {
    /// The second stage's cosines of the fused frames against a guest's templates: each frame's
    /// second-stage embeddings are computed once (kept in the fusion), on the analysis threads within
    /// the analysis bound, then fused. Adds the time spent to `ms`. `None` (the student decides
    /// alone) when a frame has no second-stage input, the guest lacks templates, or the models fail
    /// (logged).
    async fn second_cosines(
        &self,
        fusion: &mut Fusion,
        ts: &GuestTemplates,
        ms: &mut f64,
    ) -> Result<Option<cascade::SecondCosines>> {
        let (with_dlib, flip) = (self.settings.cascade.weights[2] > 0.0, self.settings.cascade.flip);
        if !ts.has_second_stage(with_dlib) {
            return Ok(None);
        }
        let t = Instant::now();
        let mut inputs = Vec::new();
        for f in fusion.frames_mut().iter().filter(|f| f.second.is_none()) {
            match &f.second_input {
                Some(i) => inputs.push(i.clone()),
                None => return Ok(None),
            }
        }
        let computed = self
            .with_analyser(move |v| {
                Ok(inputs
                    .iter()
                    .map(|i| v.second_embeddings(i, with_dlib, flip))
                    .collect::<Vec<_>>())
            })
            .await?;
        *ms += ms_since(t);
        let mut computed = computed.into_iter();
        for f in fusion.frames_mut().iter_mut().filter(|f| f.second.is_none()) {
            match computed.next() {
                Some(Ok(e)) => f.second = Some(e),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "second stage failed; the first stage decides alone");
                    return Ok(None);
                }
                None => return Ok(None),
            }
        }
        Ok(fusion.second().and_then(|s| ts.second(&s, with_dlib)))
    }

    /// Judges a first-stage score, consulting the second stage in the cascade's band.
    async fn judged(
        &self,
        mode: Mode,
        masked: bool,
        score: f32,
        ts: &GuestTemplates,
        fusion: &mut Fusion,
        second_ms: &mut f64,
    ) -> Result<Judged> {
        let (p, c) = (&self.settings.policy, &self.settings.cascade);
        let second = if cascade::in_band(c, mode, masked, score) {
            self.second_cosines(fusion, ts, second_ms).await?
        } else {
            None
        };
        Ok(judge(p, c, mode, masked, score, || second))
    }

    /// Identity matching on the fused frames: 1:1 when the guest gave a code, else 1:N.
    async fn identify(
        &self,
        property: &str,
        fusion: &mut Fusion,
        masked: bool,
        code: Option<&str>,
        second_ms: &mut f64,
    ) -> Result<MatchFacts> {
        let probe: Embedding = fusion
            .embedding()
            .ok_or_else(|| super::AppError::Internal("no frame to match".into()))?;
        Ok(match code {
            Some(code) => {
                let (reservation, scored) = self.matcher.one_to_one(property, code, &probe, masked).await?;
                let judged = match scored {
                    Some((score, ts)) => Some(
                        self.judged(Mode::OneToOne, masked, score, &ts, fusion, second_ms)
                            .await?,
                    ),
                    None => None,
                };
                MatchFacts::OneToOne { reservation, judged }
            }
            None => {
                let today = self.settings.time.today_at(property, chrono::Utc::now());
                let found = self.matcher.one_to_n(property, &probe, masked, today).await?;
                let best = match found.best {
                    Some((r, score, ts)) => Some((
                        r,
                        self.judged(Mode::OneToN, masked, score, &ts, fusion, second_ms).await?,
                    )),
                    None => None,
                };
                MatchFacts::OneToN {
                    best,
                    second: found.second,
                }
            }
        })
    }

    /// One frame of a check-in: analysis, capture checks, fusion, matching, policy, ladder.
    async fn frame(
        &self,
        caller: &Caller,
        session: &mut Session,
        photo: Vec<u8>,
        code: &str,
        qr: &str,
    ) -> Result<(Evaluated, Option<Evaluated>)> {
        let started = Instant::now();
        let property = caller.kiosk_property()?.to_string();
        self.take_frame(caller)?;
        session.frame(code);
        let analysis = self.with_analyser(move |v| v.analyse(&photo)).await?;
        let (today, now) = (self.settings.time.today_at(&property, chrono::Utc::now()), now_ms());
        let p = &self.settings.policy;
        let ladder = &self.settings.ladder;
        let decision = policy::decide(p, analysis.primary.as_ref().map(FaceFacts::of), None, None, today, now);
        let mut eval = Evaluated::new(decision, analysis, session, started);
        eval.capture_problem = true;
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
        let t = Instant::now();
        let code = session.code.clone();
        let mut second_ms = 0.0;
        let matching = self
            .identify(
                &property,
                session.current_mut(),
                masked,
                code.as_deref(),
                &mut second_ms,
            )
            .await?;
        eval.search_ms = ms_since(t) - second_ms;
        eval.second_ms = second_ms;
        let t = Instant::now();
        let fused = session.current();
        // The QR counts only for the guest the face was matched to (or named).
        let candidate = match &matching {
            MatchFacts::OneToOne { reservation, .. } => reservation.as_ref(),
            MatchFacts::OneToN { best, .. } => best.as_ref().map(|(r, _)| r),
        };
        let qr_result: Option<std::result::Result<HealthRecord, QrProblem>> = match candidate {
            Some(r) if !qr.is_empty() => Some(healthcode::verify_qr(
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
            Next::Ask(step) => step.reason(),
        };
        let mut desk = eval.clone();
        eval.decision = ask(&decision, reason);
        desk.decision = decision;
        Ok((eval, Some(desk)))
    }

    /// Evaluates a unary check-in (one frame, no ladder memory: a step comes back as a RETRY);
    /// nothing is recorded.
    pub async fn evaluate(&self, caller: &Caller, photo: Vec<u8>, code: &str, qr: &str) -> Result<Evaluated> {
        let mut session = Session::unary();
        Ok(self.frame(caller, &mut session, photo, code, qr).await?.0)
    }

    /// A unary check-in, evaluated and recorded (RETRY answers included).
    pub async fn check_in(&self, caller: &Caller, photo: Vec<u8>, code: &str, qr: &str) -> Result<CheckIn> {
        let eval = self.evaluate(caller, photo, code, qr).await?;
        self.record(caller, eval).await
    }

    /// The guest declines face check-in: nothing is analysed (no photo is sent); a REVIEW with
    /// FACE_DECLINED is recorded and pushed to the front desk, naming for staff the reservation
    /// whose code the kiosk sent, if there is one (the kiosk is told the same whatever the code).
    pub async fn decline(&self, caller: &Caller, code: &str) -> Result<CheckIn> {
        self.declined(caller, code, Session::unary()).await
    }

    /// A stream's guest declines face check-in: the same, with the stream's frames and steps on
    /// record. The stream ends.
    pub async fn stream_decline(&self, caller: &Caller, stream: CheckInStream, code: &str) -> Result<CheckIn> {
        self.declined(caller, code, stream.session).await
    }

    async fn declined(&self, caller: &Caller, code: &str, mut session: Session) -> Result<CheckIn> {
        let started = Instant::now();
        let property = caller.kiosk_property()?.to_string();
        self.take_frame(caller)?;
        session.frame(code);
        let candidate = match &session.code {
            Some(code) => self.store.get_reservation(&property, code).await?,
            None => None,
        };
        let nothing = Analysis {
            width: 0,
            height: 0,
            faces: Vec::new(),
            primary: None,
            timings: Default::default(),
        };
        let eval = Evaluated::new(policy::declined(candidate), nothing, &session, started);
        self.record(caller, eval).await
    }

    /// Opens a check-in stream for a kiosk: a place among its open streams, and a deadline.
    pub fn open_check_in_stream(&self, caller: &Caller) -> Result<CheckInStream> {
        caller.kiosk_property()?;
        Ok(CheckInStream {
            session: Session::stream(),
            last: None,
            abandoned: None,
            deadline: tokio::time::Instant::now()
                + std::time::Duration::from_secs(self.settings.limits.check_in_stream_secs),
            _slot: self.stream_slot(caller)?,
        })
    }

    /// One frame of a check-in stream: guidance (RETRY, not recorded) or the final decision,
    /// recorded.
    pub async fn stream_frame(
        &self,
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
                return Ok(StreamAnswer::Final(self.record(caller, desk).await?));
            }
        }
        if eval.decision.outcome == Outcome::Retry {
            if desk.is_some() {
                stream.abandoned = desk;
            }
            stream.last = Some(eval.clone());
            return Ok(StreamAnswer::Guidance(eval));
        }
        Ok(StreamAnswer::Final(self.record(caller, eval).await?))
    }

    /// The kiosk closed the stream before a final decision. When the ladder had asked the guest
    /// something (a code they do not have, a step they cannot take), they go to the desk: the
    /// REVIEW is recorded and returned for the kiosk. Otherwise (only capture guidance was given)
    /// the last guidance is recorded and nothing is returned.
    pub async fn end_stream(&self, caller: &Caller, stream: CheckInStream) -> Result<Option<CheckIn>> {
        if let Some(desk) = stream.abandoned {
            return Ok(Some(self.record(caller, desk).await?));
        }
        if let Some(last) = stream.last {
            self.record(caller, last).await?;
        }
        Ok(None)
    }

    /// Records an evaluated check-in (audited); an approval checks the reservation in, a REVIEW is
    /// pushed to front-desk subscribers.
    ///
    /// An approval holds only if its reservation is still BOOKED when it is recorded (checked in by
    /// another kiosk, cancelled or erased since the frame was judged: compare-and-set in the store's
    /// transaction); otherwise the guest goes to the desk — REVIEW with ALREADY_CHECKED_IN — and that
    /// is what is recorded and answered.
    pub async fn record(&self, caller: &Caller, mut eval: Evaluated) -> Result<CheckIn> {
        // Between the judgement and its commit (the race tests hold check-ins here).
        super::test_point("check_in::before_record").await?;
        let d = &eval.decision;
        let id = new_decision_id();
        let named = d.reservation.as_ref().or(d.candidate.as_ref());
        let guest_id = named.map(|r| r.guest_id.clone());
        let row = DecisionRow {
            id: id.clone(),
            property_id: caller.property.clone().unwrap_or_default(),
            kiosk_id: caller.id.clone(),
            created_at_ms: now_ms(),
            outcome: d.outcome,
            reasons: d.reasons.clone(),
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
                .map(|h| h.colour)
                .unwrap_or(crate::domain::Colour::Unknown),
            guest_message: d.guest_message.clone(),
            final_outcome: d.outcome,
            override_: None,
            steps: eval.steps.clone(),
            frames: eval.frames,
            fused_frames: eval.fused_frames,
            cascade: d.cascade.map(|c| (c.fused, c.threshold)),
        };
        let approved = d.outcome == Outcome::Approved && d.reservation.is_some();
        let taken = approved.then(|| {
            let mut t = row.clone();
            t.outcome = Outcome::Review;
            t.final_outcome = Outcome::Review;
            t.reasons.push(Reason::AlreadyCheckedIn);
            t.guest_message = policy::message(Outcome::Review, &t.reasons);
            t
        });
        let as_decided = self
            .store
            .record_decision(&row, taken.as_ref(), row.created_at_ms)
            .await?;
        let row = match taken {
            Some(t) if !as_decided => {
                let d = &mut eval.decision;
                (d.outcome, d.reasons, d.guest_message) = (t.outcome, t.reasons.clone(), t.guest_message.clone());
                t
            }
            _ => row,
        };
        if row.outcome == Outcome::Review {
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
