//! Conversions between the protobuf messages and the core's types: `From` for what the service
//! answers, `TryFrom` (validating) for what callers send.

use super::validate::{bad, date, ident, text};
use crate::core::{policy, AppError, CheckIn, Evaluated, PhotoOutcome};
use crate::domain::{Colour, HealthRecord, Outcome, OverrideAction, Reason, ResStatus, Step};
use crate::store::{DecisionRow, ReservationInput, ReservationView};
use crate::vision::Quality;
use lobby_proto::v1 as pv;

impl From<Colour> for pv::HealthColour {
    fn from(c: Colour) -> Self {
        match c {
            Colour::Unknown => pv::HealthColour::Unknown,
            Colour::Green => pv::HealthColour::Green,
            Colour::Yellow => pv::HealthColour::Yellow,
            Colour::Red => pv::HealthColour::Red,
        }
    }
}

impl From<pv::HealthColour> for Colour {
    fn from(c: pv::HealthColour) -> Self {
        match c {
            pv::HealthColour::Unknown => Colour::Unknown,
            pv::HealthColour::Green => Colour::Green,
            pv::HealthColour::Yellow => Colour::Yellow,
            pv::HealthColour::Red => Colour::Red,
        }
    }
}

impl From<&HealthRecord> for pv::HealthStatus {
    fn from(h: &HealthRecord) -> Self {
        pv::HealthStatus {
            colour: pv::HealthColour::from(h.colour) as i32,
            issued_at_ms: h.issued_at_ms,
            expires_at_ms: h.expires_at_ms,
            source: h.source.clone(),
        }
    }
}

impl TryFrom<pv::HealthStatus> for HealthRecord {
    type Error = AppError;
    fn try_from(s: pv::HealthStatus) -> Result<Self, AppError> {
        let colour = pv::HealthColour::try_from(s.colour).map_err(|_| bad("unknown health colour"))?;
        if s.expires_at_ms <= s.issued_at_ms {
            return Err(bad("expires_at_ms must be after issued_at_ms"));
        }
        Ok(HealthRecord {
            colour: colour.into(),
            issued_at_ms: s.issued_at_ms,
            expires_at_ms: s.expires_at_ms,
            source: text("status.source", &s.source, 64, true)?.into(),
        })
    }
}

impl From<ResStatus> for pv::ReservationStatus {
    fn from(s: ResStatus) -> Self {
        match s {
            ResStatus::Booked => pv::ReservationStatus::Booked,
            ResStatus::Cancelled => pv::ReservationStatus::Cancelled,
            ResStatus::CheckedIn => pv::ReservationStatus::CheckedIn,
            ResStatus::CheckedOut => pv::ReservationStatus::CheckedOut,
        }
    }
}

/// A status the reservation system sends; unset or unknown means BOOKED.
fn res_status(v: i32) -> ResStatus {
    match pv::ReservationStatus::try_from(v).unwrap_or(pv::ReservationStatus::Unspecified) {
        pv::ReservationStatus::Unspecified | pv::ReservationStatus::Booked => ResStatus::Booked,
        pv::ReservationStatus::Cancelled => ResStatus::Cancelled,
        pv::ReservationStatus::CheckedIn => ResStatus::CheckedIn,
        pv::ReservationStatus::CheckedOut => ResStatus::CheckedOut,
    }
}

impl TryFrom<pv::Reservation> for ReservationInput {
    type Error = AppError;
    fn try_from(r: pv::Reservation) -> Result<Self, AppError> {
        let guest = r.guest.unwrap_or_default();
        let arrival = date("arrival_date", &r.arrival_date)?;
        let departure = date("departure_date", &r.departure_date)?;
        if departure <= arrival {
            return Err(bad("departure_date must be after arrival_date"));
        }
        Ok(ReservationInput {
            property_id: ident("property_id", &r.property_id)?.into(),
            code: ident("reservation_code", &r.reservation_code)?.into(),
            full_name: text("guest.full_name", &guest.full_name, 200, true)?.into(),
            guest_ref: text("guest.guest_ref", &guest.guest_ref, 128, false)?.into(),
            arrival,
            departure,
            status: res_status(r.status),
        })
    }
}

impl From<&ReservationView> for pv::Reservation {
    fn from(r: &ReservationView) -> Self {
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
            status: pv::ReservationStatus::from(r.status) as i32,
            templates: r.templates,
            consent_recorded: r.consent,
            health: Some((&r.health).into()),
            checked_in_at_ms: r.checked_in_at_ms,
        }
    }
}

impl From<Outcome> for pv::Outcome {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Approved => pv::Outcome::Approved,
            Outcome::Review => pv::Outcome::Review,
            Outcome::Denied => pv::Outcome::Denied,
            Outcome::Retry => pv::Outcome::Retry,
        }
    }
}

impl From<Reason> for pv::Reason {
    fn from(r: Reason) -> Self {
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
            Reason::FaceDeclined => P::FaceDeclined,
            Reason::NoConsent => P::NoConsent,
        }
    }
}

impl From<Step> for pv::LadderStep {
    fn from(s: Step) -> Self {
        match s {
            Step::HoldStill => pv::LadderStep::HoldStill,
            Step::ShowReservation => pv::LadderStep::ShowReservation,
            Step::LowerMask => pv::LadderStep::LowerMask,
        }
    }
}

impl From<OverrideAction> for pv::OverrideAction {
    fn from(a: OverrideAction) -> Self {
        match a {
            OverrideAction::Approve => pv::OverrideAction::Approve,
            OverrideAction::Deny => pv::OverrideAction::Deny,
        }
    }
}

/// The action of an override request; UNSPECIFIED (or unknown) is refused.
pub fn override_action(v: i32) -> Result<OverrideAction, AppError> {
    match pv::OverrideAction::try_from(v).unwrap_or(pv::OverrideAction::Unspecified) {
        pv::OverrideAction::Approve => Ok(OverrideAction::Approve),
        pv::OverrideAction::Deny => Ok(OverrideAction::Deny),
        pv::OverrideAction::Unspecified => Err(bad("action must be APPROVE or DENY")),
    }
}

impl From<&Quality> for pv::FaceQuality {
    fn from(q: &Quality) -> Self {
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
}

/// One enrolment photo's result, by its place in the request.
pub fn photo_result(i: usize, o: &PhotoOutcome) -> pv::PhotoResult {
    {
        pv::PhotoResult {
            index: i as u32,
            faces_found: o.faces_found,
            quality: o.quality.as_ref().map(Into::into),
            accepted: o.rejection.is_none(),
            rejection_reason: o.rejection.map(|r| r.as_str()).unwrap_or_default().into(),
        }
    }
}

/// A check-in's answer to the kiosk: a recorded decision (`id`), or stream guidance (no id).
/// A check-in's answer to the kiosk: only what the kiosk's view allows (`policy::kiosk_view`).
pub fn check_in_response(id: &str, e: &Evaluated) -> pv::CheckInResponse {
    let v = policy::kiosk_view(&e.decision);
    let primary = e.analysis.primary.as_ref();
    pv::CheckInResponse {
        decision_id: id.to_string(),
        outcome: pv::Outcome::from(v.outcome) as i32,
        reasons: v.reasons.iter().map(|r| pv::Reason::from(*r) as i32).collect(),
        guest_message: v.guest_message,
        reservation_code: v.reservation_code.unwrap_or_default(),
        face: primary.map(|p| pv::FaceBox {
            x: p.face.bbox.x,
            y: p.face.bbox.y,
            width: p.face.bbox.w,
            height: p.face.bbox.h,
            score: p.face.score,
        }),
        quality: primary.map(|p| (&p.quality).into()),
    }
}

/// A recorded check-in's answer.
pub fn recorded_response(c: &CheckIn) -> pv::CheckInResponse {
    check_in_response(&c.id, &c.eval)
}

impl From<&DecisionRow> for pv::DecisionRecord {
    fn from(d: &DecisionRow) -> Self {
        pv::DecisionRecord {
            decision_id: d.id.clone(),
            property_id: d.property_id.clone(),
            kiosk_id: d.kiosk_id.clone(),
            created_at_ms: d.created_at_ms,
            outcome: pv::Outcome::from(d.outcome) as i32,
            reasons: d.reasons.iter().map(|r| pv::Reason::from(*r) as i32).collect(),
            reservation_code: d.reservation_code.clone(),
            match_score: d.match_score,
            match_threshold: d.match_threshold,
            live: d.live,
            liveness_score: d.liveness_score,
            masked: d.masked,
            health_colour: pv::HealthColour::from(d.health_colour) as i32,
            final_outcome: pv::Outcome::from(d.final_outcome) as i32,
            r#override: d.override_.as_ref().map(|o| pv::Override {
                action: pv::OverrideAction::from(o.action) as i32,
                staff_id: o.staff_id.clone(),
                reason: o.reason.clone(),
                at_ms: o.at_ms,
            }),
            guest_message: d.guest_message.clone(),
            ladder_steps: d.steps.iter().map(|s| pv::LadderStep::from(*s) as i32).collect(),
            frames: d.frames,
            fused_frames: d.fused_frames,
            cascade_used: d.cascade.is_some(),
            cascade_score: d.cascade.map(|c| c.0).unwrap_or(0.0),
            cascade_threshold: d.cascade.map(|c| c.1).unwrap_or(0.0),
        }
    }
}

/// The token of the page after `last` (`validate::page_token` reads it).
pub fn page_token(last: &DecisionRow) -> String {
    format!("{}.{}", last.created_at_ms, last.id)
}
