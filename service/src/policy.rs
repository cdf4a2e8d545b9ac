//! The check-in decision policy: a pure function of what the pipeline saw, what matching found, the
//! reservation's state and the guest's health status. No I/O here, so every rule is unit-tested.

use crate::config::{Policy, PolicyOutcome};
use crate::health::{Colour, HealthRecord, QrProblem};
use crate::store::{ResStatus, ReservationView};
use crate::vision::FaceAnalysis;
use chrono::NaiveDate;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    // Ordered by severity: the final outcome is the most severe of the rules' outcomes.
    Approved,
    Review,
    Denied,
    Retry,
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Approved => "APPROVED",
            Outcome::Review => "REVIEW",
            Outcome::Denied => "DENIED",
            Outcome::Retry => "RETRY",
        }
    }
    pub fn parse(s: &str) -> Option<Outcome> {
        Some(match s {
            "APPROVED" => Outcome::Approved,
            "REVIEW" => Outcome::Review,
            "DENIED" => Outcome::Denied,
            "RETRY" => Outcome::Retry,
            _ => return None,
        })
    }
}

impl From<PolicyOutcome> for Outcome {
    fn from(p: PolicyOutcome) -> Self {
        match p {
            PolicyOutcome::Approved => Outcome::Approved,
            PolicyOutcome::Review => Outcome::Review,
            PolicyOutcome::Denied => Outcome::Denied,
        }
    }
}

/// Machine-readable reasons (stored by name, sent as the proto enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    NoFace,
    MultipleFaces,
    FaceTooSmall,
    FaceOutOfFrame,
    TooDark,
    TooBright,
    Blurred,
    HeadTurned,
    NotLive,
    Matched,
    NoMatch,
    LowMatchScore,
    AmbiguousMatch,
    ReservationNotFound,
    NotEnrolled,
    WrongArrivalDay,
    AlreadyCheckedIn,
    ReservationCancelled,
    HealthGreen,
    HealthYellow,
    HealthRed,
    HealthUnknown,
    HealthExpired,
    HealthQrInvalid,
    HealthQrStale,
    HealthQrOtherGuest,
}

impl Reason {
    pub const ALL: [Reason; 26] = [
        Reason::NoFace,
        Reason::MultipleFaces,
        Reason::FaceTooSmall,
        Reason::FaceOutOfFrame,
        Reason::TooDark,
        Reason::TooBright,
        Reason::Blurred,
        Reason::HeadTurned,
        Reason::NotLive,
        Reason::Matched,
        Reason::NoMatch,
        Reason::LowMatchScore,
        Reason::AmbiguousMatch,
        Reason::ReservationNotFound,
        Reason::NotEnrolled,
        Reason::WrongArrivalDay,
        Reason::AlreadyCheckedIn,
        Reason::ReservationCancelled,
        Reason::HealthGreen,
        Reason::HealthYellow,
        Reason::HealthRed,
        Reason::HealthUnknown,
        Reason::HealthExpired,
        Reason::HealthQrInvalid,
        Reason::HealthQrStale,
        Reason::HealthQrOtherGuest,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::NoFace => "NO_FACE",
            Reason::MultipleFaces => "MULTIPLE_FACES",
            Reason::FaceTooSmall => "FACE_TOO_SMALL",
            Reason::FaceOutOfFrame => "FACE_OUT_OF_FRAME",
            Reason::TooDark => "TOO_DARK",
            Reason::TooBright => "TOO_BRIGHT",
            Reason::Blurred => "BLURRED",
            Reason::HeadTurned => "HEAD_TURNED",
            Reason::NotLive => "NOT_LIVE",
            Reason::Matched => "MATCHED",
            Reason::NoMatch => "NO_MATCH",
            Reason::LowMatchScore => "LOW_MATCH_SCORE",
            Reason::AmbiguousMatch => "AMBIGUOUS_MATCH",
            Reason::ReservationNotFound => "RESERVATION_NOT_FOUND",
            Reason::NotEnrolled => "NOT_ENROLLED",
            Reason::WrongArrivalDay => "WRONG_ARRIVAL_DAY",
            Reason::AlreadyCheckedIn => "ALREADY_CHECKED_IN",
            Reason::ReservationCancelled => "RESERVATION_CANCELLED",
            Reason::HealthGreen => "HEALTH_GREEN",
            Reason::HealthYellow => "HEALTH_YELLOW",
            Reason::HealthRed => "HEALTH_RED",
            Reason::HealthUnknown => "HEALTH_UNKNOWN",
            Reason::HealthExpired => "HEALTH_EXPIRED",
            Reason::HealthQrInvalid => "HEALTH_QR_INVALID",
            Reason::HealthQrStale => "HEALTH_QR_STALE",
            Reason::HealthQrOtherGuest => "HEALTH_QR_OTHER_GUEST",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.as_str() == s)
    }
}

/// What matching found.
#[derive(Debug, Clone)]
pub enum MatchFacts {
    /// 1:1 against the reservation the guest named. `score` is `None` when it has no templates.
    OneToOne {
        reservation: Option<ReservationView>,
        score: Option<f32>,
    },
    /// 1:N over the property's expected arrivals: the best guest, and the second-best guest's score.
    OneToN {
        best: Option<(ReservationView, f32)>,
        second: Option<f32>,
    },
}

#[derive(Debug, Clone)]
pub struct Decision {
    pub outcome: Outcome,
    pub reasons: Vec<Reason>,
    pub guest_message: String,
    pub reservation: Option<ReservationView>,
    pub score: f32,
    pub threshold: f32,
    pub live: bool,
    pub health_used: Option<HealthRecord>,
}

/// Capture checks that make the kiosk ask for another photo.
pub fn capture_problems(p: &Policy, a: &FaceAnalysis) -> Vec<Reason> {
    let q = &a.quality;
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
    if q.yaw_deg.abs() > p.max_yaw_deg || q.pitch_deg.abs() > p.max_pitch_deg || q.roll_deg.abs() > p.max_roll_deg {
        r.push(Reason::HeadTurned);
    }
    r
}

fn message(outcome: Outcome, reasons: &[Reason]) -> String {
    let first = reasons.first().copied();
    match outcome {
        Outcome::Approved => "Welcome! You are checked in. Your room key is being prepared.".into(),
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
            Some(Reason::ReservationNotFound) => "We could not find that reservation code. Please check and try again.",
            _ => "Please try again.",
        }
        .into(),
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

/// Decides a check-in. `analysis` is the guest's face (None: no face found).
pub fn decide(
    p: &Policy,
    analysis: Option<&FaceAnalysis>,
    matching: Option<&MatchFacts>,
    qr: Option<&Result<HealthRecord, QrProblem>>,
    today: NaiveDate,
    now_ms: i64,
) -> Decision {
    let masked = analysis.is_some_and(|a| a.mask.masked);
    let threshold = match (matching, masked) {
        (Some(MatchFacts::OneToN { .. }), false) => p.match_threshold_1n,
        (Some(MatchFacts::OneToN { .. }), true) => p.match_threshold_1n_masked,
        (_, false) => p.match_threshold,
        (_, true) => p.match_threshold_masked,
    };
    let retry = |reasons: Vec<Reason>, live: bool| Decision {
        outcome: Outcome::Retry,
        guest_message: message(Outcome::Retry, &reasons),
        reasons,
        reservation: None,
        score: -1.0,
        threshold,
        live,
        health_used: None,
    };
    let Some(a) = analysis else {
        return retry(vec![Reason::NoFace], false);
    };
    let live = a.liveness.p_real >= p.liveness_threshold;
    let problems = capture_problems(p, a);
    if !problems.is_empty() {
        return retry(problems, live);
    }
    let mut reasons = Vec::new();
    let mut outcome = Outcome::Approved;
    if !live {
        reasons.push(Reason::NotLive);
        outcome = outcome.max(p.liveness_fail.into());
    }
    // Identity.
    let (reservation, score, id_outcome) = match matching {
        None => (None, -1.0, Outcome::Denied),
        Some(MatchFacts::OneToOne { reservation: None, .. }) => {
            return retry(vec![Reason::ReservationNotFound], live);
        }
        Some(MatchFacts::OneToOne {
            reservation: Some(r),
            score,
        }) => match score {
            _ if r.erased => {
                reasons.push(Reason::NotEnrolled);
                (None, -1.0, Outcome::Review)
            }
            None => {
                reasons.push(Reason::NotEnrolled);
                (Some(r.clone()), -1.0, Outcome::Review)
            }
            Some(s) if *s >= threshold => {
                reasons.push(Reason::Matched);
                (Some(r.clone()), *s, Outcome::Approved)
            }
            Some(s) if *s >= threshold - p.review_band => {
                reasons.push(Reason::LowMatchScore);
                (Some(r.clone()), *s, Outcome::Review)
            }
            Some(s) => {
                reasons.push(Reason::NoMatch);
                (None, *s, Outcome::Denied)
            }
        },
        Some(MatchFacts::OneToN { best: None, .. }) => {
            reasons.push(Reason::NoMatch);
            (None, -1.0, Outcome::Denied)
        }
        Some(MatchFacts::OneToN {
            best: Some((r, s)),
            second,
        }) => {
            if *s < threshold - p.review_band {
                reasons.push(Reason::NoMatch);
                (None, *s, Outcome::Denied)
            } else if *s < threshold {
                reasons.push(Reason::LowMatchScore);
                (Some(r.clone()), *s, Outcome::Review)
            } else if second.map(|t| s - t < p.margin).unwrap_or(false) {
                reasons.push(Reason::AmbiguousMatch);
                (Some(r.clone()), *s, Outcome::Review)
            } else {
                reasons.push(Reason::Matched);
                (Some(r.clone()), *s, Outcome::Approved)
            }
        }
    };
    outcome = outcome.max(id_outcome);
    let mut health_used = None;
    if let Some(r) = &reservation {
        // Stay.
        match r.status {
            ResStatus::Cancelled => {
                reasons.push(Reason::ReservationCancelled);
                outcome = outcome.max(Outcome::Denied);
            }
            ResStatus::CheckedIn => {
                reasons.push(Reason::AlreadyCheckedIn);
                outcome = outcome.max(Outcome::Review);
            }
            ResStatus::CheckedOut => {
                reasons.push(Reason::WrongArrivalDay);
                outcome = outcome.max(Outcome::Review);
            }
            ResStatus::Booked => {
                if today < r.arrival || today >= r.departure {
                    reasons.push(Reason::WrongArrivalDay);
                    outcome = outcome.max(Outcome::Review);
                }
            }
        }
        // Health.
        let (h_outcome, used) = resolve_health(p, &r.health, qr, now_ms, &mut reasons);
        outcome = outcome.max(h_outcome);
        health_used = used;
    }
    Decision {
        outcome,
        guest_message: message(outcome, &reasons),
        reasons,
        reservation,
        score,
        threshold,
        live,
        health_used,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::vision::detect::Face;
    use crate::vision::embed::ARCFACE_TEMPLATE;
    use crate::vision::geometry::BBox;
    use crate::vision::MaskScore;
    use crate::vision::{Embedding, LivenessScore, Quality};

    const NOW: i64 = 1_800_000_000_000;

    fn policy() -> Policy {
        Settings::load_from(None, std::iter::empty()).unwrap().policy
    }

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2027, 1, 15).unwrap()
    }

    fn face(p_real: f32) -> FaceAnalysis {
        FaceAnalysis {
            face: Face {
                bbox: BBox {
                    x: 100.0,
                    y: 100.0,
                    w: 150.0,
                    h: 190.0,
                },
                landmarks: ARCFACE_TEMPLATE,
                score: 0.95,
            },
            quality: Quality {
                face_size_px: 150.0,
                sharpness: 500.0,
                brightness: 120.0,
                yaw_deg: 2.0,
                pitch_deg: -5.0,
                roll_deg: 1.0,
                out_of_frame: 0.0,
                comparable_faces: 1,
            },
            liveness: LivenessScore {
                p_real,
                p_real_v2: p_real,
                p_real_v1se: p_real,
            },
            embedding: Embedding(vec![]),
            mask: MaskScore {
                p_masked: 0.02,
                masked: false,
            },
        }
    }

    fn reservation(colour: Colour) -> ReservationView {
        ReservationView {
            property_id: "p".into(),
            code: "R1".into(),
            guest_id: "g".into(),
            full_name: "A".into(),
            guest_ref: "ref".into(),
            arrival: today(),
            departure: today().succ_opt().unwrap(),
            status: ResStatus::Booked,
            checked_in_at_ms: 0,
            consent: true,
            health: HealthRecord {
                colour,
                issued_at_ms: NOW - 3600_000,
                expires_at_ms: NOW + 3600_000,
                source: "pms".into(),
            },
            templates: 1,
            erased: false,
        }
    }

    fn one_to_n(colour: Colour, s: f32, second: Option<f32>) -> MatchFacts {
        MatchFacts::OneToN {
            best: Some((reservation(colour), s)),
            second,
        }
    }

    fn one_to_one(r: &ReservationView, score: f32) -> MatchFacts {
        MatchFacts::OneToOne {
            reservation: Some(r.clone()),
            score: Some(score),
        }
    }

    fn run(a: Option<&FaceAnalysis>, m: Option<&MatchFacts>, qr: Option<&Result<HealthRecord, QrProblem>>) -> Decision {
        decide(&policy(), a, m, qr, today(), NOW)
    }

    #[test]
    fn green_match_is_approved() {
        let d = run(Some(&face(0.99)), Some(&one_to_n(Colour::Green, 0.8, Some(0.1))), None);
        assert_eq!(d.outcome, Outcome::Approved, "{:?}", d.reasons);
        assert!(d.reasons.contains(&Reason::Matched) && d.reasons.contains(&Reason::HealthGreen));
    }

    #[test]
    fn a_masked_face_is_judged_against_the_masked_thresholds() {
        let p = policy();
        let mut masked = face(0.99);
        masked.mask = MaskScore {
            p_masked: 0.97,
            masked: true,
        };
        let r = reservation(Colour::Green);
        for (m, unmasked_t, masked_t) in [
            (one_to_one(&r, 0.0), p.match_threshold, p.match_threshold_masked),
            (
                one_to_n(Colour::Green, 0.0, None),
                p.match_threshold_1n,
                p.match_threshold_1n_masked,
            ),
        ] {
            assert_eq!(run(Some(&face(0.99)), Some(&m), None).threshold, unmasked_t);
            assert_eq!(run(Some(&masked), Some(&m), None).threshold, masked_t);
        }
        // A score between the two thresholds: approved or not depending on the mask verdict.
        let (lo, hi) = (
            p.match_threshold_masked.min(p.match_threshold),
            p.match_threshold_masked.max(p.match_threshold),
        );
        let between = one_to_one(&r, (lo + hi) / 2.0);
        let a = run(Some(&face(0.99)), Some(&between), None).outcome;
        let b = run(Some(&masked), Some(&between), None).outcome;
        assert_ne!(a, b, "thresholds {lo} / {hi}");
    }

    #[test]
    fn health_colours_map_to_outcomes() {
        let f = face(0.99);
        let o = |c| run(Some(&f), Some(&one_to_n(c, 0.8, None)), None).outcome;
        assert_eq!(o(Colour::Yellow), Outcome::Review);
        assert_eq!(o(Colour::Red), Outcome::Denied);
        assert_eq!(o(Colour::Unknown), Outcome::Review);
        // Expired green is unknown.
        let mut r = reservation(Colour::Green);
        r.health.expires_at_ms = NOW - 1;
        let d = run(
            Some(&f),
            Some(&MatchFacts::OneToN {
                best: Some((r, 0.8)),
                second: None,
            }),
            None,
        );
        assert_eq!(d.outcome, Outcome::Review);
        assert!(d.reasons.contains(&Reason::HealthExpired));
    }

    #[test]
    fn a_bad_qr_never_approves_and_a_good_one_counts() {
        let f = face(0.99);
        let m = one_to_n(Colour::Green, 0.8, None);
        for p in [QrProblem::Invalid, QrProblem::Stale, QrProblem::OtherGuest] {
            let d = run(Some(&f), Some(&m), Some(&Err(p)));
            assert_eq!(d.outcome, Outcome::Review, "{p:?}");
        }
        // A fresh signed RED QR beats an older stored GREEN.
        let red = HealthRecord {
            colour: Colour::Red,
            issued_at_ms: NOW - 60_000,
            expires_at_ms: NOW + 60_000,
            source: "kiosk-qr".into(),
        };
        assert_eq!(run(Some(&f), Some(&m), Some(&Ok(red))).outcome, Outcome::Denied);
        // A fresh GREEN QR turns an unknown stored status into a pass.
        let green = HealthRecord {
            colour: Colour::Green,
            issued_at_ms: NOW - 60_000,
            expires_at_ms: NOW + 60_000,
            source: "kiosk-qr".into(),
        };
        assert_eq!(
            run(Some(&f), Some(&one_to_n(Colour::Unknown, 0.8, None)), Some(&Ok(green))).outcome,
            Outcome::Approved
        );
    }

    #[test]
    fn scores_margin_and_liveness() {
        let p = policy();
        let f = face(0.99);
        let t = p.match_threshold_1n;
        assert_eq!(
            run(
                Some(&f),
                Some(&one_to_n(Colour::Green, t - p.review_band / 2.0, None)),
                None
            )
            .outcome,
            Outcome::Review
        );
        assert_eq!(
            run(
                Some(&f),
                Some(&one_to_n(Colour::Green, t - p.review_band - 0.01, None)),
                None
            )
            .outcome,
            Outcome::Denied
        );
        let d = run(
            Some(&f),
            Some(&one_to_n(Colour::Green, t + 0.1, Some(t + 0.1 - p.margin / 2.0))),
            None,
        );
        assert_eq!(d.outcome, Outcome::Review);
        assert!(d.reasons.contains(&Reason::AmbiguousMatch));
        let spoof = face(0.1);
        let d = run(Some(&spoof), Some(&one_to_n(Colour::Green, 0.9, None)), None);
        assert_ne!(d.outcome, Outcome::Approved);
        assert!(d.reasons.contains(&Reason::NotLive));
        assert_eq!(
            run(
                Some(&f),
                Some(&MatchFacts::OneToN {
                    best: None,
                    second: None
                }),
                None
            )
            .outcome,
            Outcome::Denied
        );
    }

    #[test]
    fn capture_problems_ask_to_retry() {
        assert_eq!(run(None, None, None).outcome, Outcome::Retry);
        let mut two = face(0.99);
        two.quality.comparable_faces = 2;
        let d = run(Some(&two), Some(&one_to_n(Colour::Green, 0.9, None)), None);
        assert_eq!((d.outcome, d.reasons[0]), (Outcome::Retry, Reason::MultipleFaces));
        let mut dark = face(0.99);
        dark.quality.brightness = 10.0;
        assert_eq!(run(Some(&dark), None, None).reasons, vec![Reason::TooDark]);
    }

    #[test]
    fn stay_rules() {
        let f = face(0.99);
        let mut r = reservation(Colour::Green);
        r.status = ResStatus::CheckedIn;
        let d = run(Some(&f), Some(&one_to_one(&r, 0.9)), None);
        assert!(d.reasons.contains(&Reason::AlreadyCheckedIn) && d.outcome == Outcome::Review);
        r.status = ResStatus::Booked;
        r.arrival = today().succ_opt().unwrap();
        r.departure = r.arrival.succ_opt().unwrap();
        let d = run(Some(&f), Some(&one_to_one(&r, 0.9)), None);
        assert!(d.reasons.contains(&Reason::WrongArrivalDay) && d.outcome == Outcome::Review);
        r.status = ResStatus::Cancelled;
        let d = run(Some(&f), Some(&one_to_one(&r, 0.9)), None);
        assert_eq!(d.outcome, Outcome::Denied);
        let d = run(
            Some(&f),
            Some(&MatchFacts::OneToOne {
                reservation: None,
                score: None,
            }),
            None,
        );
        assert_eq!((d.outcome, d.reasons[0]), (Outcome::Retry, Reason::ReservationNotFound));
    }

    #[test]
    fn reasons_round_trip_by_name() {
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
        }
    }
}
