//! The check-in decision policy: a pure function of what the pipeline saw, what matching found, the
//! reservation's state and the guest's health status. No I/O here, so every rule is unit-tested.
//! What the server asks of the guest before a not-confident identity goes to the desk is the
//! escalation ladder's (`super::ladder`).

use super::cascade::{student_threshold, CascadeScore, Judged, Mode};
use super::healthcode::QrProblem;
use super::ladder::IdentityState;
use crate::config::{Policy, PolicyOutcome};
use crate::domain::{Colour, HealthRecord, ResStatus};
pub use crate::domain::{Outcome, Reason};
use crate::store::ReservationView;
use crate::vision::{FaceAnalysis, Quality};
use chrono::NaiveDate;

impl From<PolicyOutcome> for Outcome {
    fn from(p: PolicyOutcome) -> Self {
        match p {
            PolicyOutcome::Approved => Outcome::Approved,
            PolicyOutcome::Review => Outcome::Review,
            PolicyOutcome::Denied => Outcome::Denied,
        }
    }
}

/// What matching found, each score judged by [`super::cascade::judge`].
#[derive(Debug, Clone)]
pub enum MatchFacts {
    /// 1:1 against the reservation the guest named. `judged` is `None` when it has no templates.
    OneToOne {
        reservation: Option<ReservationView>,
        judged: Option<Judged>,
    },
    /// 1:N over the property's expected arrivals: the best guest, and the second-best guest's
    /// first-stage score.
    OneToN {
        best: Option<(ReservationView, Judged)>,
        second: Option<f32>,
    },
}

/// What the decision reads of the guest's face: its quality (capture checks), and the liveness and
/// mask verdicts (for a stream, of the frames fused).
#[derive(Debug, Clone, Copy)]
pub struct FaceFacts<'a> {
    pub quality: &'a Quality,
    pub p_real: f32,
    pub masked: bool,
}

impl<'a> FaceFacts<'a> {
    pub fn of(a: &'a FaceAnalysis) -> FaceFacts<'a> {
        FaceFacts {
            quality: &a.quality,
            p_real: a.liveness.p_real,
            masked: a.mask.masked,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Decision {
    pub outcome: Outcome,
    pub reasons: Vec<Reason>,
    pub guest_message: String,
    /// The reservation the face matched (confidently); only then is it named to the kiosk.
    pub reservation: Option<ReservationView>,
    /// For staff: the reservation the guest named (a code, 1:1) when identity was not confident.
    /// Never the nearest guest of a 1:N search.
    pub candidate: Option<ReservationView>,
    pub score: f32,
    pub threshold: f32,
    /// Set when the cascade's second stage was consulted.
    pub cascade: Option<CascadeScore>,
    pub live: bool,
    pub health_used: Option<HealthRecord>,
    /// What identity matching concluded, for the escalation ladder.
    pub identity: IdentityState,
}

/// Capture checks that make the kiosk ask for another photo. For a masked face only the roll (read
/// from the eyes) is checked of the head pose: yaw and pitch are read from the nose and the mouth
/// corners, which a mask hides and the detector guesses (on MFR2 the check sent 13 % of real masked
/// faces back for a turned head, bench/RESULTS-log.md "Capture checks").
pub fn capture_problems(p: &Policy, q: &Quality, masked: bool) -> Vec<Reason> {
    let mut r = Vec::new();
    if q.comparable_faces > 1 {
        r.push(Reason::MultipleFaces);
    }
    if q.face_size_px < p.min_face_px {
        r.push(Reason::FaceTooSmall);
    }
    if q.out_of_frame > p.max_out_of_frame {
        r.push(Reason::FaceOutOfFrame);
    }
    if q.brightness < p.min_brightness {
        r.push(Reason::TooDark);
    }
    if q.brightness > p.max_brightness {
        r.push(Reason::TooBright);
    }
    if q.sharpness < p.min_sharpness {
        r.push(Reason::Blurred);
    }
    let turned = !masked && (q.yaw_deg.abs() > p.max_yaw_deg || q.pitch_deg.abs() > p.max_pitch_deg);
    if turned || q.roll_deg.abs() > p.max_roll_deg {
        r.push(Reason::HeadTurned);
    }
    r
}

/// The guest-facing message of an outcome and its reasons.
pub fn message(outcome: Outcome, reasons: &[Reason]) -> String {
    let first = reasons.first().copied();
    match outcome {
        Outcome::Approved => "Welcome! You are checked in. Your room key is being prepared.".into(),
        Outcome::Review if first == Some(Reason::FaceDeclined) => {
            "Of course. A member of our front-desk team will check you in in a moment.".into()
        }
        Outcome::Review => "Thank you. A member of our front-desk team will be with you in a moment.".into(),
        Outcome::Denied => "We could not complete your check-in here. Please see the front desk.".into(),
        Outcome::Retry => match first {
            Some(Reason::NoFace) => "We could not see your face. Please look straight at the camera.",
            Some(Reason::MultipleFaces) => "One person at a time, please. Ask others to step back.",
            Some(Reason::FaceTooSmall) => "Please step a little closer to the camera.",
            Some(Reason::FaceOutOfFrame) => "Please move so your whole face is inside the frame.",
            Some(Reason::TooDark) => "It is too dark. Please face the light.",
            Some(Reason::TooBright) => "There is too much light behind or on you. Please move slightly.",
            Some(Reason::Blurred) => "The photo is blurred. Please hold still for a moment.",
            Some(Reason::HeadTurned) => "Please look straight at the camera.",
            Some(Reason::ShowReservation) => {
                "Please scan the QR code of your booking, or type your reservation code, while looking at the camera."
            }
            Some(Reason::LowerMask) => "Please lower your mask for a moment and look at the camera.",
            Some(Reason::HoldStill) => "Please keep looking at the camera for a moment.",
            _ => "Please try again.",
        }
        .into(),
    }
}

/// What a kiosk is told of a decision: the outcome, guidance, the guest message, and the guest's own
/// reservation code only when approved. Without a confident match, every identity reason is
/// "no match" (a low score, two guests close, an unknown code and a guest without templates look
/// alike), and nothing about any guest's stay or health is said.
#[derive(Debug, Clone, PartialEq)]
pub struct KioskView {
    pub outcome: Outcome,
    pub reasons: Vec<Reason>,
    pub guest_message: String,
    pub reservation_code: Option<String>,
}

pub fn kiosk_view(d: &Decision) -> KioskView {
    let matched = d.reservation.is_some() && d.reasons.contains(&Reason::Matched);
    let mut reasons: Vec<Reason> = Vec::with_capacity(d.reasons.len());
    for &r in &d.reasons {
        let shown = match r {
            Reason::NoFace
            | Reason::MultipleFaces
            | Reason::FaceTooSmall
            | Reason::FaceOutOfFrame
            | Reason::TooDark
            | Reason::TooBright
            | Reason::Blurred
            | Reason::HeadTurned
            | Reason::NotLive
            | Reason::ShowReservation
            | Reason::LowerMask
            | Reason::HoldStill
            | Reason::FaceDeclined => Some(r),
            Reason::Matched => matched.then_some(r),
            Reason::NoMatch
            | Reason::LowMatchScore
            | Reason::AmbiguousMatch
            | Reason::ReservationNotFound
            | Reason::NotEnrolled
            | Reason::NoConsent => Some(Reason::NoMatch),
            Reason::WrongArrivalDay
            | Reason::AlreadyCheckedIn
            | Reason::ReservationCancelled
            | Reason::HealthGreen
            | Reason::HealthYellow
            | Reason::HealthRed
            | Reason::HealthUnknown
            | Reason::HealthExpired
            | Reason::HealthQrInvalid
            | Reason::HealthQrStale
            | Reason::HealthQrOtherGuest => matched.then_some(r),
        };
        if let Some(r) = shown.filter(|r| !reasons.contains(r)) {
            reasons.push(r);
        }
    }
    KioskView {
        outcome: d.outcome,
        guest_message: message(d.outcome, &reasons),
        reservation_code: (d.outcome == Outcome::Approved)
            .then(|| d.reservation.as_ref().map(|r| r.code.clone()))
            .flatten(),
        reasons,
    }
}

/// Resolves the health status to use: a verified, fresh kiosk QR or the stored status, whichever was
/// issued last; an expired or absent status counts as UNKNOWN. A QR that fails verification adds
/// its reason and caps the decision at REVIEW.
fn resolve_health(
    p: &Policy,
    stored: &HealthRecord,
    qr: Option<&Result<HealthRecord, QrProblem>>,
    now_ms: i64,
    reasons: &mut Vec<Reason>,
) -> (Outcome, Option<HealthRecord>) {
    let mut cap = Outcome::Approved;
    let mut candidates: Vec<&HealthRecord> = Vec::new();
    match qr {
        Some(Ok(h)) => candidates.push(h),
        Some(Err(problem)) => {
            reasons.push(match problem {
                QrProblem::Invalid => Reason::HealthQrInvalid,
                QrProblem::Stale => Reason::HealthQrStale,
                QrProblem::OtherGuest => Reason::HealthQrOtherGuest,
            });
            cap = Outcome::Review;
        }
        None => {}
    }
    if stored.is_valid_at(now_ms) {
        candidates.push(stored);
    }
    let used = candidates
        .into_iter()
        .filter(|h| h.is_valid_at(now_ms))
        .max_by_key(|h| h.issued_at_ms)
        .cloned();
    let (colour, reason) = match &used {
        Some(h) => match h.colour {
            Colour::Green => (Colour::Green, Reason::HealthGreen),
            Colour::Yellow => (Colour::Yellow, Reason::HealthYellow),
            Colour::Red => (Colour::Red, Reason::HealthRed),
            Colour::Unknown => (Colour::Unknown, Reason::HealthUnknown),
        },
        None if stored.colour != Colour::Unknown => (Colour::Unknown, Reason::HealthExpired),
        None => (Colour::Unknown, Reason::HealthUnknown),
    };
    reasons.push(reason);
    let outcome: Outcome = match colour {
        Colour::Green => p.health_green.into(),
        Colour::Yellow => p.health_yellow.into(),
        Colour::Red => p.health_red.into(),
        Colour::Unknown => p.health_unknown.into(),
    };
    (outcome.max(cap), used)
}

/// The reason a score that was not accepted gets: close to the threshold, or not near it.
fn not_confident_reason(p: &Policy, j: &Judged) -> Reason {
    if j.score >= j.floor - p.review_band {
        Reason::LowMatchScore
    } else {
        Reason::NoMatch
    }
}

/// The guest declined face check-in (PIPL; the 2025 CAC rules require an alternative to face
/// recognition): the front desk checks them in. Never DENIED, never a RETRY. `candidate` is the
/// reservation whose code the kiosk sent, for staff only.
pub fn declined(candidate: Option<ReservationView>) -> Decision {
    let reasons = vec![Reason::FaceDeclined];
    Decision {
        outcome: Outcome::Review,
        guest_message: message(Outcome::Review, &reasons),
        reasons,
        reservation: None,
        candidate,
        score: -1.0,
        threshold: 0.0,
        cascade: None,
        live: false,
        health_used: None,
        identity: IdentityState::Final,
    }
}

/// Decides a check-in. `face` is the guest's face (None: no face found). An identity that is not
/// confident gives REVIEW here, never DENIED; the escalation ladder (`super::ladder`) may first
/// turn it into a RETRY that asks something of the guest.
pub fn decide(
    p: &Policy,
    face: Option<FaceFacts>,
    matching: Option<&MatchFacts>,
    qr: Option<&Result<HealthRecord, QrProblem>>,
    today: NaiveDate,
    now_ms: i64,
) -> Decision {
    let masked = face.is_some_and(|a| a.masked);
    let mode = match matching {
        Some(MatchFacts::OneToN { .. }) => Mode::OneToN,
        _ => Mode::OneToOne,
    };
    let student = student_threshold(p, mode, masked);
    let mut d = Decision {
        outcome: Outcome::Retry,
        reasons: Vec::new(),
        guest_message: String::new(),
        reservation: None,
        candidate: None,
        score: -1.0,
        threshold: student,
        cascade: None,
        live: false,
        health_used: None,
        identity: IdentityState::Final,
    };
    let finish = |mut d: Decision| {
        d.guest_message = message(d.outcome, &d.reasons);
        d
    };
    let Some(a) = face else {
        d.reasons.push(Reason::NoFace);
        return finish(d);
    };
    d.live = a.p_real >= p.liveness_threshold;
    let problems = capture_problems(p, a.quality, a.masked);
    if !problems.is_empty() {
        d.reasons = problems;
        return finish(d);
    }
    d.outcome = Outcome::Approved;
    if !d.live {
        d.reasons.push(Reason::NotLive);
        d.outcome = d.outcome.max(p.liveness_fail.into());
    }
    let judged = match matching {
        Some(MatchFacts::OneToOne { judged, .. }) => judged.as_ref(),
        Some(MatchFacts::OneToN { best, .. }) => best.as_ref().map(|(_, j)| j),
        None => None,
    };
    if let Some(j) = judged {
        d.score = j.score;
        d.threshold = j.threshold;
        d.cascade = j.cascade;
    }
    // Identity: a confident match names the reservation; anything else is not confident.
    let not_confident = |d: &mut Decision, reason: Reason, candidate: Option<&ReservationView>, state| {
        d.reasons.push(reason);
        d.candidate = candidate.cloned();
        d.identity = state;
        d.outcome = d.outcome.max(Outcome::Review);
    };
    match matching {
        None => not_confident(&mut d, Reason::NoMatch, None, IdentityState::Final),
        Some(MatchFacts::OneToOne { reservation: None, .. }) => {
            not_confident(&mut d, Reason::ReservationNotFound, None, IdentityState::UnknownCode)
        }
        Some(MatchFacts::OneToOne {
            reservation: Some(r),
            judged,
        }) => match judged {
            // No consent to face check-in: no templates either; the desk, and why.
            _ if !r.consent => not_confident(&mut d, Reason::NoConsent, Some(r), IdentityState::Final),
            None => not_confident(&mut d, Reason::NotEnrolled, Some(r), IdentityState::Final),
            Some(j) if j.accepted => {
                d.reasons.push(Reason::Matched);
                d.reservation = Some(r.clone());
                d.identity = IdentityState::Confident;
            }
            Some(j) => not_confident(&mut d, not_confident_reason(p, j), Some(r), IdentityState::NotConfident),
        },
        Some(MatchFacts::OneToN { best: None, .. }) => {
            not_confident(&mut d, Reason::NoMatch, None, IdentityState::NotConfident)
        }
        Some(MatchFacts::OneToN {
            best: Some((r, j)),
            second,
        }) => {
            // 1:N not confident: nobody is named, not even to staff. A stranger's record must not
            // carry the nearest enrolled guest (who is not involved), and the review band cannot
            // tell a stranger from the guest; the desk asks for the booking instead.
            if !j.accepted {
                let reason = not_confident_reason(p, j);
                not_confident(&mut d, reason, None, IdentityState::NotConfident)
            } else if second.is_some_and(|t| j.score - t < p.margin) {
                not_confident(&mut d, Reason::AmbiguousMatch, None, IdentityState::NotConfident)
            } else {
                d.reasons.push(Reason::Matched);
                d.reservation = Some(r.clone());
                d.identity = IdentityState::Confident;
            }
        }
    }
    if let Some(r) = d.reservation.clone() {
        // Stay.
        match r.status {
            ResStatus::Cancelled => {
                d.reasons.push(Reason::ReservationCancelled);
                d.outcome = d.outcome.max(Outcome::Denied);
            }
            ResStatus::CheckedIn => {
                d.reasons.push(Reason::AlreadyCheckedIn);
                d.outcome = d.outcome.max(Outcome::Review);
            }
            ResStatus::CheckedOut => {
                d.reasons.push(Reason::WrongArrivalDay);
                d.outcome = d.outcome.max(Outcome::Review);
            }
            ResStatus::Booked => {
                if today < r.arrival || today >= r.departure {
                    d.reasons.push(Reason::WrongArrivalDay);
                    d.outcome = d.outcome.max(Outcome::Review);
                }
            }
        }
        // Health.
        let (h_outcome, used) = resolve_health(p, &r.health, qr, now_ms, &mut d.reasons);
        d.outcome = d.outcome.max(h_outcome);
        d.health_used = used;
    }
    finish(d)
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
