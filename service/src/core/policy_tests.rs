use super::*;
use crate::config::Settings;
use crate::core::cascade::{judge, SecondCosines};

const NOW: i64 = 1_800_000_000_000;

fn policy() -> Policy {
    Settings::load_from(None, std::iter::empty()).unwrap().policy
}

fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2027, 1, 15).unwrap()
}

fn good_quality() -> Quality {
    Quality {
        face_size_px: 150.0,
        sharpness: 500.0,
        brightness: 120.0,
        yaw_deg: 2.0,
        pitch_deg: -5.0,
        roll_deg: 1.0,
        out_of_frame: 0.0,
        comparable_faces: 1,
    }
}

/// A face with good quality, this p(real) and mask verdict.
fn face(q: &Quality, p_real: f32, masked: bool) -> FaceFacts<'_> {
    FaceFacts {
        quality: q,
        p_real,
        masked,
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
            issued_at_ms: NOW - 3_600_000,
            expires_at_ms: NOW + 3_600_000,
            source: "pms".into(),
        },
        templates: 1,
    }
}

/// A first-stage score judged as the service judges it (cascade off in the defaults' test copy).
fn judged(mode: Mode, masked: bool, s: f32) -> Judged {
    let settings = Settings::load_from(None, std::iter::empty()).unwrap();
    let mut c = settings.cascade.clone();
    c.enabled = false;
    judge(&settings.policy, &c, mode, masked, s, || None::<SecondCosines>)
}

fn one_to_n(colour: Colour, s: f32, second: Option<f32>) -> MatchFacts {
    MatchFacts::OneToN {
        best: Some((reservation(colour), judged(Mode::OneToN, false, s))),
        second,
    }
}

fn one_to_one(r: &ReservationView, score: f32, masked: bool) -> MatchFacts {
    MatchFacts::OneToOne {
        reservation: Some(r.clone()),
        judged: Some(judged(Mode::OneToOne, masked, score)),
    }
}

fn run(a: Option<FaceFacts>, m: Option<&MatchFacts>, qr: Option<&Result<HealthRecord, QrProblem>>) -> Decision {
    decide(&policy(), a, m, qr, today(), NOW)
}

#[test]
fn green_match_is_approved() {
    let q = good_quality();
    let d = run(
        Some(face(&q, 0.99, false)),
        Some(&one_to_n(Colour::Green, 0.8, Some(0.1))),
        None,
    );
    assert_eq!(d.outcome, Outcome::Approved, "{:?}", d.reasons);
    assert!(d.reasons.contains(&Reason::Matched) && d.reasons.contains(&Reason::HealthGreen));
    assert_eq!(d.identity, IdentityState::Confident);
    assert_eq!(d.reservation.unwrap().code, "R1");
}

#[test]
fn a_masked_face_is_judged_against_the_masked_thresholds() {
    let p = policy();
    let q = good_quality();
    let r = reservation(Colour::Green);
    for (mode, unmasked_t, masked_t) in [
        (Mode::OneToOne, p.match_threshold, p.match_threshold_masked),
        (Mode::OneToN, p.match_threshold_1n, p.match_threshold_1n_masked),
    ] {
        let m = |masked| match mode {
            Mode::OneToOne => one_to_one(&r, 0.0, masked),
            Mode::OneToN => MatchFacts::OneToN {
                best: Some((r.clone(), judged(Mode::OneToN, masked, 0.0))),
                second: None,
            },
        };
        assert_eq!(
            run(Some(face(&q, 0.99, false)), Some(&m(false)), None).threshold,
            unmasked_t
        );
        assert_eq!(
            run(Some(face(&q, 0.99, true)), Some(&m(true)), None).threshold,
            masked_t
        );
    }
    // A score between the two thresholds: matched or not depending on the mask verdict.
    let (lo, hi) = (
        p.match_threshold_masked.min(p.match_threshold),
        p.match_threshold_masked.max(p.match_threshold),
    );
    let mid = (lo + hi) / 2.0;
    let a = run(Some(face(&q, 0.99, false)), Some(&one_to_one(&r, mid, false)), None);
    let b = run(Some(face(&q, 0.99, true)), Some(&one_to_one(&r, mid, true)), None);
    assert_ne!(a.identity, b.identity, "thresholds {lo} / {hi}");
}

#[test]
fn health_colours_map_to_outcomes() {
    let q = good_quality();
    let f = face(&q, 0.99, false);
    let o = |c| run(Some(f), Some(&one_to_n(c, 0.8, None)), None).outcome;
    assert_eq!(o(Colour::Yellow), Outcome::Review);
    assert_eq!(o(Colour::Red), Outcome::Denied);
    assert_eq!(o(Colour::Unknown), Outcome::Review);
    // Expired green is unknown.
    let mut r = reservation(Colour::Green);
    r.health.expires_at_ms = NOW - 1;
    let d = run(
        Some(f),
        Some(&MatchFacts::OneToN {
            best: Some((r, judged(Mode::OneToN, false, 0.8))),
            second: None,
        }),
        None,
    );
    assert_eq!(d.outcome, Outcome::Review);
    assert!(d.reasons.contains(&Reason::HealthExpired));
}

#[test]
fn a_bad_qr_never_approves_and_a_good_one_counts() {
    let q = good_quality();
    let f = face(&q, 0.99, false);
    let m = one_to_n(Colour::Green, 0.8, None);
    for p in [QrProblem::Invalid, QrProblem::Stale, QrProblem::OtherGuest] {
        let d = run(Some(f), Some(&m), Some(&Err(p)));
        assert_eq!(d.outcome, Outcome::Review, "{p:?}");
    }
    // A fresh signed RED QR beats an older stored GREEN.
    let red = HealthRecord {
        colour: Colour::Red,
        issued_at_ms: NOW - 60_000,
        expires_at_ms: NOW + 60_000,
        source: "kiosk-qr".into(),
    };
    assert_eq!(run(Some(f), Some(&m), Some(&Ok(red))).outcome, Outcome::Denied);
    // A fresh GREEN QR turns an unknown stored status into a pass.
    let green = HealthRecord {
        colour: Colour::Green,
        issued_at_ms: NOW - 60_000,
        expires_at_ms: NOW + 60_000,
        source: "kiosk-qr".into(),
    };
    assert_eq!(
        run(Some(f), Some(&one_to_n(Colour::Unknown, 0.8, None)), Some(&Ok(green))).outcome,
        Outcome::Approved
    );
}

#[test]
fn scores_margin_and_liveness() {
    let p = policy();
    let q = good_quality();
    let f = face(&q, 0.99, false);
    let t = p.match_threshold_1n;
    // Below the threshold: not confident, REVIEW (never DENIED), and the nearest guest is not named,
    // not even to staff (the face may be a stranger's).
    let d = run(
        Some(f),
        Some(&one_to_n(Colour::Green, t - p.review_band / 2.0, None)),
        None,
    );
    assert_eq!((d.outcome, d.identity), (Outcome::Review, IdentityState::NotConfident));
    assert!(d.reasons.contains(&Reason::LowMatchScore));
    assert!(d.reservation.is_none() && d.candidate.is_none());
    let d = run(
        Some(f),
        Some(&one_to_n(Colour::Green, t - p.review_band - 0.01, None)),
        None,
    );
    assert_eq!((d.outcome, d.reasons[0]), (Outcome::Review, Reason::NoMatch));
    // Not confident: a RED candidate is not DENIED (nobody was identified).
    let d = run(Some(f), Some(&one_to_n(Colour::Red, t - 0.01, None)), None);
    assert_eq!(d.outcome, Outcome::Review);
    let d = run(
        Some(f),
        Some(&one_to_n(Colour::Green, t + 0.1, Some(t + 0.1 - p.margin / 2.0))),
        None,
    );
    assert_eq!((d.outcome, d.identity), (Outcome::Review, IdentityState::NotConfident));
    assert!(d.reasons.contains(&Reason::AmbiguousMatch));
    assert!(d.candidate.is_none(), "two guests close: neither is named");
    let d = run(
        Some(face(&q, 0.1, false)),
        Some(&one_to_n(Colour::Green, 0.9, None)),
        None,
    );
    assert_ne!(d.outcome, Outcome::Approved);
    assert!(d.reasons.contains(&Reason::NotLive) && !d.live);
    let none = MatchFacts::OneToN {
        best: None,
        second: None,
    };
    let d = run(Some(f), Some(&none), None);
    assert_eq!((d.outcome, d.identity), (Outcome::Review, IdentityState::NotConfident));
}

#[test]
fn capture_problems_ask_to_retry() {
    assert_eq!(run(None, None, None).outcome, Outcome::Retry);
    let mut two = good_quality();
    two.comparable_faces = 2;
    let d = run(
        Some(face(&two, 0.99, false)),
        Some(&one_to_n(Colour::Green, 0.9, None)),
        None,
    );
    assert_eq!((d.outcome, d.reasons[0]), (Outcome::Retry, Reason::MultipleFaces));
    let mut dark = good_quality();
    dark.brightness = 10.0;
    assert_eq!(
        run(Some(face(&dark, 0.99, false)), None, None).reasons,
        vec![Reason::TooDark]
    );
    // Yaw read from landmarks a mask hides is not held against a masked face; roll is.
    let mut turned = good_quality();
    turned.yaw_deg = 60.0;
    let m = one_to_n(Colour::Green, 0.9, None);
    assert_eq!(
        run(Some(face(&turned, 0.99, false)), Some(&m), None).reasons,
        vec![Reason::HeadTurned]
    );
    assert_ne!(
        run(Some(face(&turned, 0.99, true)), Some(&m), None).outcome,
        Outcome::Retry
    );
    turned.roll_deg = 50.0;
    assert_eq!(
        run(Some(face(&turned, 0.99, true)), Some(&m), None).reasons,
        vec![Reason::HeadTurned]
    );
}

#[test]
fn stay_rules() {
    let q = good_quality();
    let f = face(&q, 0.99, false);
    let mut r = reservation(Colour::Green);
    r.status = ResStatus::CheckedIn;
    let d = run(Some(f), Some(&one_to_one(&r, 0.9, false)), None);
    assert!(d.reasons.contains(&Reason::AlreadyCheckedIn) && d.outcome == Outcome::Review);
    r.status = ResStatus::Booked;
    r.arrival = today().succ_opt().unwrap();
    r.departure = r.arrival.succ_opt().unwrap();
    let d = run(Some(f), Some(&one_to_one(&r, 0.9, false)), None);
    assert!(d.reasons.contains(&Reason::WrongArrivalDay) && d.outcome == Outcome::Review);
    r.status = ResStatus::Cancelled;
    let d = run(Some(f), Some(&one_to_one(&r, 0.9, false)), None);
    assert_eq!(d.outcome, Outcome::Denied);
    let d = run(
        Some(f),
        Some(&MatchFacts::OneToOne {
            reservation: None,
            judged: None,
        }),
        None,
    );
    assert_eq!(
        (d.reasons[0], d.identity),
        (Reason::ReservationNotFound, IdentityState::UnknownCode)
    );
    // A reservation without an enrolled face: nothing the guest can do at the kiosk.
    let d = run(
        Some(f),
        Some(&MatchFacts::OneToOne {
            reservation: Some(reservation(Colour::Green)),
            judged: None,
        }),
        None,
    );
    assert_eq!(
        (d.outcome, d.reasons[0], d.identity),
        (Outcome::Review, Reason::NotEnrolled, IdentityState::Final)
    );
}

#[test]
fn a_guest_who_declines_goes_to_the_desk_and_the_kiosk_hears_only_that() {
    let d = declined(None);
    assert_eq!(d.outcome, Outcome::Review);
    assert_eq!(d.reasons, vec![Reason::FaceDeclined]);
    assert!(d.reservation.is_none());
    let v = kiosk_view(&d);
    assert_eq!(v.outcome, Outcome::Review);
    assert_eq!(v.reasons, vec![Reason::FaceDeclined]);
    assert_eq!(v.reservation_code, None);
    assert!(v.guest_message.contains("front-desk"), "{}", v.guest_message);
    // NO_CONSENT is for staff: a kiosk hears NO_MATCH, as for any code it cannot use.
    let mut n = declined(None);
    n.reasons = vec![Reason::NoConsent];
    assert_eq!(kiosk_view(&n).reasons, vec![Reason::NoMatch]);
}
