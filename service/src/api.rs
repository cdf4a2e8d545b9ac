//! gRPC handlers: validation at the boundary, mapping between protobuf and the check-in layer, and
//! the one place where errors become gRPC status codes ([`status`]).

use crate::app::{App, AppError};
use crate::auth::caller;
use crate::checkin::{CheckIn, CheckInStream, Evaluated, StreamAnswer};
use crate::health::{Colour, HealthRecord};
use crate::ladder::Step;
use crate::policy::{Outcome, Reason};
use crate::store::{ConsentRecord, DecisionRow, ResStatus, ReservationInput, ReservationView};
use lobby_proto::v1 as pv;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// Every error of the check-in layer, as a gRPC status. Internal details are logged, not sent.
pub fn status(e: AppError) -> Status {
    match e {
        AppError::InvalidArgument(m) => Status::invalid_argument(m),
        AppError::NotFound(m) => Status::not_found(m),
        AppError::PermissionDenied(m) => Status::permission_denied(m),
        AppError::FailedPrecondition(m) => Status::failed_precondition(m),
        AppError::Busy(m) => Status::resource_exhausted(m),
        AppError::Internal(m) => {
            tracing::error!(error = %m, "internal error");
            Status::internal("internal error")
        }
    }
}

fn bad(m: impl Into<String>) -> Status {
    Status::invalid_argument(m.into())
}

/// Ids (property, reservation code, decision id): 1-64 characters of `A-Z a-z 0-9 _ - . :`.
fn ident<'a>(field: &str, v: &'a str) -> Result<&'a str, Status> {
    let ok = !v.is_empty() && v.len() <= 64 && v.chars().all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c));
    if ok {
        Ok(v)
    } else {
        Err(bad(format!(
            "{field} must be 1-64 characters of A-Z, a-z, 0-9, _ - . :"
        )))
    }
}

fn text<'a>(field: &str, v: &'a str, max: usize, required: bool) -> Result<&'a str, Status> {
    if required && v.trim().is_empty() {
        return Err(bad(format!("{field} is required")));
    }
    if v.chars().count() > max || v.chars().any(|c| c.is_control()) {
        return Err(bad(format!(
            "{field} must be at most {max} characters, without control characters"
        )));
    }
    Ok(v)
}

fn date(field: &str, v: &str) -> Result<chrono::NaiveDate, Status> {
    chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d").map_err(|_| bad(format!("{field} must be a date YYYY-MM-DD")))
}

fn colour_to_proto(c: Colour) -> pv::HealthColour {
    match c {
        Colour::Unknown => pv::HealthColour::Unknown,
        Colour::Green => pv::HealthColour::Green,
        Colour::Yellow => pv::HealthColour::Yellow,
        Colour::Red => pv::HealthColour::Red,
    }
}

fn health_to_proto(h: &HealthRecord) -> pv::HealthStatus {
    pv::HealthStatus {
        colour: colour_to_proto(h.colour) as i32,
        issued_at_ms: h.issued_at_ms,
        expires_at_ms: h.expires_at_ms,
        source: h.source.clone(),
    }
}

fn res_status_to_proto(s: ResStatus) -> pv::ReservationStatus {
    match s {
        ResStatus::Booked => pv::ReservationStatus::Booked,
        ResStatus::Cancelled => pv::ReservationStatus::Cancelled,
        ResStatus::CheckedIn => pv::ReservationStatus::CheckedIn,
        ResStatus::CheckedOut => pv::ReservationStatus::CheckedOut,
    }
}

fn reservation_to_proto(r: &ReservationView) -> pv::Reservation {
    pv::Reservation {
        property_id: r.property_id.clone(),
        reservation_code: r.code.clone(),
        guest: Some(pv::Guest {
            guest_id: r.guest_id.clone(),
            full_name: r.full_name.clone(),
            guest_ref: r.guest_ref.clone(),
        }),
        arrival_date: r.arrival.to_string(),
        departure_date: r.departure.to_string(),
        status: res_status_to_proto(r.status) as i32,
        templates: r.templates,
        consent_recorded: r.consent,
        health: Some(health_to_proto(&r.health)),
        checked_in_at_ms: r.checked_in_at_ms,
        erased: r.erased,
    }
}

fn outcome_to_proto(o: Outcome) -> pv::Outcome {
    match o {
        Outcome::Approved => pv::Outcome::Approved,
        Outcome::Review => pv::Outcome::Review,
        Outcome::Denied => pv::Outcome::Denied,
        Outcome::Retry => pv::Outcome::Retry,
    }
}

fn reason_to_proto(r: Reason) -> pv::Reason {
    use pv::Reason as P;
    match r {
        Reason::NoFace => P::NoFace,
        Reason::MultipleFaces => P::MultipleFaces,
        Reason::FaceTooSmall => P::FaceTooSmall,
        Reason::FaceOutOfFrame => P::FaceOutOfFrame,
        Reason::TooDark => P::TooDark,
        Reason::TooBright => P::TooBright,
        Reason::Blurred => P::Blurred,
        Reason::HeadTurned => P::HeadTurned,
        Reason::NotLive => P::NotLive,
        Reason::Matched => P::Matched,
        Reason::NoMatch => P::NoMatch,
        Reason::LowMatchScore => P::LowMatchScore,
        Reason::AmbiguousMatch => P::AmbiguousMatch,
        Reason::ReservationNotFound => P::ReservationNotFound,
        Reason::NotEnrolled => P::NotEnrolled,
        Reason::WrongArrivalDay => P::WrongArrivalDay,
        Reason::AlreadyCheckedIn => P::AlreadyCheckedIn,
        Reason::ReservationCancelled => P::ReservationCancelled,
        Reason::HealthGreen => P::HealthGreen,
        Reason::HealthYellow => P::HealthYellow,
        Reason::HealthRed => P::HealthRed,
        Reason::HealthUnknown => P::HealthUnknown,
        Reason::HealthExpired => P::HealthExpired,
        Reason::HealthQrInvalid => P::HealthQrInvalid,
        Reason::HealthQrStale => P::HealthQrStale,
        Reason::HealthQrOtherGuest => P::HealthQrOtherGuest,
        Reason::ShowReservation => P::ShowReservation,
        Reason::LowerMask => P::LowerMask,
        Reason::HoldStill => P::HoldStill,
    }
}

fn quality_to_proto(q: &crate::vision::Quality) -> pv::FaceQuality {
    pv::FaceQuality {
        face_size_px: q.face_size_px,
        sharpness: q.sharpness,
        brightness: q.brightness,
        yaw_deg: q.yaw_deg,
        pitch_deg: q.pitch_deg,
        roll_deg: q.roll_deg,
        out_of_frame: q.out_of_frame,
        comparable_faces: q.comparable_faces,
    }
}

fn checkin_to_proto(c: &CheckIn, liveness_threshold: f32) -> pv::CheckInResponse {
    eval_to_proto(&c.id, &c.eval, c.total_ms, liveness_threshold)
}

fn eval_to_proto(id: &str, e: &Evaluated, total_ms: f64, liveness_threshold: f32) -> pv::CheckInResponse {
    let d = &e.decision;
    let a = &e.analysis;
    let t = a.timings;
    let primary = a.primary.as_ref();
    pv::CheckInResponse {
        decision_id: id.to_string(),
        outcome: outcome_to_proto(d.outcome) as i32,
        reasons: d.reasons.iter().map(|r| reason_to_proto(*r) as i32).collect(),
        guest_message: d.guest_message.clone(),
        match_score: d.score,
        match_threshold: d.threshold,
        // The reservation is named only when the face matched it.
        reservation_code: d.reservation.as_ref().map(|r| r.code.clone()).unwrap_or_default(),
        live: d.live,
        liveness_score: e.p_real,
        liveness_threshold,
        masked: primary.is_some_and(|p| p.mask.masked),
        mask_score: primary.map(|p| p.mask.p_masked).unwrap_or(0.0),
        health_used: d.health_used.as_ref().map(health_to_proto),
        timings: Some(pv::StageTimings {
            decode_ms: t.decode_ms,
            detect_ms: t.detect_ms,
            quality_ms: t.quality_ms,
            liveness_ms: t.liveness_ms,
            align_ms: t.align_ms,
            embed_ms: t.embed_ms,
            search_ms: e.search_ms + e.second_ms,
            decide_ms: e.decide_ms,
            total_ms,
        }),
        face: primary.map(|p| pv::FaceBox {
            x: p.face.bbox.x,
            y: p.face.bbox.y,
            width: p.face.bbox.w,
            height: p.face.bbox.h,
            score: p.face.score,
        }),
        quality: primary.map(|p| quality_to_proto(&p.quality)),
    }
}

fn decision_to_proto(d: &DecisionRow) -> pv::DecisionRecord {
    let outcome = |s: &str| {
        Outcome::parse(s)
            .map(outcome_to_proto)
            .unwrap_or(pv::Outcome::Unspecified) as i32
    };
    pv::DecisionRecord {
        decision_id: d.id.clone(),
        property_id: d.property_id.clone(),
        kiosk_id: d.kiosk_id.clone(),
        created_at_ms: d.created_at_ms,
        outcome: outcome(&d.outcome),
        reasons: d
            .reasons
            .iter()
            .filter_map(|r| Reason::parse(r))
            .map(|r| reason_to_proto(r) as i32)
            .collect(),
        reservation_code: d.reservation_code.clone(),
        match_score: d.match_score,
        match_threshold: d.match_threshold,
        live: d.live,
        liveness_score: d.liveness_score,
        masked: d.masked,
        health_colour: colour_to_proto(Colour::parse(&d.health_colour)) as i32,
        final_outcome: outcome(&d.final_outcome),
        r#override: d.override_.as_ref().map(|o| pv::Override {
            action: if o.action == "APPROVE" {
                pv::OverrideAction::Approve
            } else {
                pv::OverrideAction::Deny
            } as i32,
            staff_id: o.staff_id.clone(),
            reason: o.reason.clone(),
            at_ms: o.at_ms,
        }),
        guest_message: d.guest_message.clone(),
        ladder_steps: d
            .steps
            .iter()
            .filter_map(|s| Step::parse(s))
            .map(|s| step_to_proto(s) as i32)
            .collect(),
        frames: d.frames,
        fused_frames: d.fused_frames,
        cascade_used: d.cascade.is_some(),
        cascade_score: d.cascade.map(|c| c.0).unwrap_or(0.0),
        cascade_threshold: d.cascade.map(|c| c.1).unwrap_or(0.0),
    }
}

fn step_to_proto(s: Step) -> pv::LadderStep {
    match s {
        Step::HoldStill => pv::LadderStep::HoldStill,
        Step::ShowReservation => pv::LadderStep::ShowReservation,
        Step::LowerMask => pv::LadderStep::LowerMask,
    }
}

// ---------------------------------------------------------------------------------------------

pub struct Reservations(pub Arc<App>);

#[tonic::async_trait]
impl pv::reservation_service_server::ReservationService for Reservations {
    async fn upsert_reservation(
        &self,
        req: Request<pv::UpsertReservationRequest>,
    ) -> Result<Response<pv::Reservation>, Status> {
        let c = caller(&req)?;
        let r = req
            .into_inner()
            .reservation
            .ok_or_else(|| bad("reservation is required"))?;
        let guest = r.guest.unwrap_or_default();
        let arrival = date("arrival_date", &r.arrival_date)?;
        let departure = date("departure_date", &r.departure_date)?;
        if departure <= arrival {
            return Err(bad("departure_date must be after arrival_date"));
        }
        let res_status = match pv::ReservationStatus::try_from(r.status).unwrap_or(pv::ReservationStatus::Unspecified) {
            pv::ReservationStatus::Unspecified | pv::ReservationStatus::Booked => ResStatus::Booked,
            pv::ReservationStatus::Cancelled => ResStatus::Cancelled,
            pv::ReservationStatus::CheckedIn => ResStatus::CheckedIn,
            pv::ReservationStatus::CheckedOut => ResStatus::CheckedOut,
        };
        let input = ReservationInput {
            property_id: ident("property_id", &r.property_id)?.into(),
            code: ident("reservation_code", &r.reservation_code)?.into(),
            full_name: text("guest.full_name", &guest.full_name, 200, true)?.into(),
            guest_ref: text("guest.guest_ref", &guest.guest_ref, 128, false)?.into(),
            arrival,
            departure,
            status: res_status,
        };
        let view = self.0.upsert_reservation(&c, &input).map_err(status)?;
        Ok(Response::new(reservation_to_proto(&view)))
    }

    async fn enroll_face(
        &self,
        req: Request<pv::EnrollFaceRequest>,
    ) -> Result<Response<pv::EnrollFaceResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let property = ident("property_id", &r.property_id)?.to_string();
        let code = ident("reservation_code", &r.reservation_code)?.to_string();
        let consent = r.consent.unwrap_or_default();
        if !consent.granted {
            return Err(Status::failed_precondition(
                "the guest's consent to face check-in is required before enrolment; without it, check the guest in at the desk",
            ));
        }
        let max = self.0.settings.limits.max_photos_per_enrolment;
        if r.photos.is_empty() || r.photos.len() > max {
            return Err(bad(format!("send 1-{max} photos")));
        }
        let consent = ConsentRecord {
            method: text("consent.method", &consent.method, 64, true)?.into(),
            text_version: text("consent.text_version", &consent.text_version, 64, true)?.into(),
            at_ms: if consent.recorded_at_ms > 0 {
                consent.recorded_at_ms
            } else {
                crate::app::now_ms()
            },
        };
        let (guest_id, outcomes, stored) = self
            .0
            .enrol(&c, &property, &code, r.photos, consent)
            .await
            .map_err(status)?;
        Ok(Response::new(pv::EnrollFaceResponse {
            guest_id,
            photos: outcomes
                .iter()
                .enumerate()
                .map(|(i, o)| pv::PhotoResult {
                    index: i as u32,
                    faces_found: o.faces_found,
                    quality: o.quality.as_ref().map(quality_to_proto),
                    accepted: o.rejection.is_none(),
                    rejection_reason: o.rejection.unwrap_or_default().into(),
                })
                .collect(),
            templates_stored: stored as u32,
        }))
    }

    async fn update_health_code(
        &self,
        req: Request<pv::UpdateHealthCodeRequest>,
    ) -> Result<Response<pv::Reservation>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let s = r.status.ok_or_else(|| bad("status is required"))?;
        let colour = match pv::HealthColour::try_from(s.colour).map_err(|_| bad("unknown health colour"))? {
            pv::HealthColour::Unknown => Colour::Unknown,
            pv::HealthColour::Green => Colour::Green,
            pv::HealthColour::Yellow => Colour::Yellow,
            pv::HealthColour::Red => Colour::Red,
        };
        if s.expires_at_ms <= s.issued_at_ms {
            return Err(bad("expires_at_ms must be after issued_at_ms"));
        }
        let h = HealthRecord {
            colour,
            issued_at_ms: s.issued_at_ms,
            expires_at_ms: s.expires_at_ms,
            source: text("status.source", &s.source, 64, true)?.into(),
        };
        let view = self
            .0
            .set_health(
                &c,
                ident("property_id", &r.property_id)?,
                ident("reservation_code", &r.reservation_code)?,
                &h,
            )
            .map_err(status)?;
        Ok(Response::new(reservation_to_proto(&view)))
    }

    async fn erase_guest(
        &self,
        req: Request<pv::EraseGuestRequest>,
    ) -> Result<Response<pv::EraseGuestResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let (guest_id, n) = self
            .0
            .erase(
                &c,
                ident("property_id", &r.property_id)?,
                ident("reservation_code", &r.reservation_code)?,
                text("reason", &r.reason, 500, true)?,
            )
            .map_err(status)?;
        Ok(Response::new(pv::EraseGuestResponse {
            guest_id,
            templates_deleted: n as u32,
        }))
    }

    async fn get_reservation(
        &self,
        req: Request<pv::GetReservationRequest>,
    ) -> Result<Response<pv::Reservation>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let view = self
            .0
            .get_reservation(
                &c,
                ident("property_id", &r.property_id)?,
                ident("reservation_code", &r.reservation_code)?,
            )
            .map_err(status)?;
        Ok(Response::new(reservation_to_proto(&view)))
    }
}

// ---------------------------------------------------------------------------------------------

pub struct Kiosk(pub Arc<App>);

fn checkin_fields(r: &pv::CheckInRequest) -> Result<(), Status> {
    if r.photo.is_empty() {
        return Err(bad("photo is required"));
    }
    if !r.reservation_code.is_empty() {
        ident("reservation_code", &r.reservation_code)?;
    }
    if r.health_qr.len() > crate::health::MAX_QR_LEN {
        return Err(bad("health_qr is too long"));
    }
    Ok(())
}

type RespStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pv::kiosk_service_server::KioskService for Kiosk {
    async fn check_in(&self, req: Request<pv::CheckInRequest>) -> Result<Response<pv::CheckInResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        checkin_fields(&r)?;
        let done = self
            .0
            .check_in(&c, r.photo, &r.reservation_code, &r.health_qr)
            .await
            .map_err(status)?;
        Ok(Response::new(checkin_to_proto(
            &done,
            self.0.settings.policy.liveness_threshold,
        )))
    }

    type CheckInStreamStream = RespStream<pv::CheckInResponse>;

    async fn check_in_stream(
        &self,
        req: Request<Streaming<pv::CheckInRequest>>,
    ) -> Result<Response<Self::CheckInStreamStream>, Status> {
        let c = caller(&req)?;
        let mut frames = req.into_inner();
        let app = self.0.clone();
        let liveness_threshold = app.settings.policy.liveness_threshold;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut stream = CheckInStream::new();
            // Every way out of the loop goes through `end_stream`, so a stream that stops early (the
            // kiosk closes it, goes away, sends a bad frame, or the server is full) still leaves
            // its record, and a guest the ladder had asked something goes to the desk.
            while let Some(frame) = frames.next().await {
                let Ok(frame) = frame else { break }; // the kiosk went away
                if let Err(e) = checkin_fields(&frame) {
                    let _ = tx.send(Err(e)).await;
                    break;
                }
                let answer = app
                    .stream_frame(&c, &mut stream, frame.photo, &frame.reservation_code, &frame.health_qr)
                    .await;
                let reply = match answer {
                    Ok(StreamAnswer::Guidance(e)) => Ok(eval_to_proto("", &e, 0.0, liveness_threshold)),
                    Ok(StreamAnswer::Final(done)) => {
                        let _ = tx.send(Ok(checkin_to_proto(&done, liveness_threshold))).await;
                        return;
                    }
                    Err(e) => {
                        // A bad frame (or a full server) ends the stream with its status.
                        let _ = tx.send(Err(status(e))).await;
                        break;
                    }
                };
                if tx.send(reply).await.is_err() {
                    break; // nobody reads the answers any more
                }
            }
            match app.end_stream(&c, stream) {
                Ok(Some(done)) => {
                    let _ = tx.send(Ok(checkin_to_proto(&done, liveness_threshold))).await;
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = tx.send(Err(status(e))).await;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

// ---------------------------------------------------------------------------------------------

pub struct FrontDesk(pub Arc<App>);

#[tonic::async_trait]
impl pv::front_desk_service_server::FrontDeskService for FrontDesk {
    type StreamReviewsStream = RespStream<pv::DecisionRecord>;

    async fn stream_reviews(
        &self,
        req: Request<pv::StreamReviewsRequest>,
    ) -> Result<Response<Self::StreamReviewsStream>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let filter = match (&c.property, r.property_id.is_empty()) {
            (Some(p), true) => Some(p.clone()),
            (Some(p), false) if *p != r.property_id => {
                return Err(Status::permission_denied(
                    "this staff credential is for another property",
                ))
            }
            (_, false) => Some(ident("property_id", &r.property_id)?.to_string()),
            (None, true) => None,
        };
        // Subscribe before reading the pending ones, so nothing falls between the two.
        let mut live = self.0.subscribe_reviews();
        let mut stop = self.0.shutdown_signal();
        let pending = self.0.pending_reviews(filter.as_deref()).map_err(status)?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut seen = std::collections::HashSet::new();
            for d in pending {
                seen.insert(d.id.clone());
                if tx.send(Ok(decision_to_proto(&d))).await.is_err() {
                    return;
                }
            }
            loop {
                let next = tokio::select! {
                    n = live.recv() => n,
                    _ = stop.wait_for(|down| *down) => return,
                };
                match next {
                    Ok(d) => {
                        if filter.as_ref().is_some_and(|p| *p != d.property_id) || !seen.insert(d.id.clone()) {
                            continue;
                        }
                        if tx.send(Ok(decision_to_proto(&d))).await.is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(
                            missed = n,
                            "review subscriber lagged; it should reconnect for pending reviews"
                        );
                    }
                    Err(_) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn override_decision(
        &self,
        req: Request<pv::OverrideDecisionRequest>,
    ) -> Result<Response<pv::DecisionRecord>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let approve = match pv::OverrideAction::try_from(r.action).unwrap_or(pv::OverrideAction::Unspecified) {
            pv::OverrideAction::Approve => true,
            pv::OverrideAction::Deny => false,
            pv::OverrideAction::Unspecified => return Err(bad("action must be APPROVE or DENY")),
        };
        let reason = text("reason", &r.reason, 500, true)?;
        let d = self
            .0
            .override_decision(&c, ident("decision_id", &r.decision_id)?, approve, reason)
            .map_err(status)?;
        Ok(Response::new(decision_to_proto(&d)))
    }

    async fn get_decision(&self, req: Request<pv::GetDecisionRequest>) -> Result<Response<pv::DecisionRecord>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let d = self
            .0
            .get_decision(&c, ident("decision_id", &r.decision_id)?)
            .map_err(status)?;
        Ok(Response::new(decision_to_proto(&d)))
    }

    async fn verify_audit_trail(
        &self,
        _req: Request<pv::VerifyAuditTrailRequest>,
    ) -> Result<Response<pv::VerifyAuditTrailResponse>, Status> {
        let v = self.0.verify_audit().map_err(status)?;
        Ok(Response::new(pv::VerifyAuditTrailResponse {
            intact: v.first_broken.is_none(),
            entries: v.entries,
            first_broken_seq: v.first_broken.as_ref().map(|(s, _)| *s as u64).unwrap_or(0),
            detail: v
                .first_broken
                .map(|(s, why)| format!("entry {s}: {why}"))
                .unwrap_or_else(|| "intact".into()),
        }))
    }
}
