//! The core's use cases on a fake face pipeline (no models, no photos) and a real SQLite store in a
//! temporary directory: enrolment, 1:1, 1:N, streamed RETRYs, overrides and erasure.
//!
//! A fake "photo" is a line of text: `person=7` (the face of person 7, embedded as a unit vector
//! of their own), with optional `masked`, `live=0.05` (p(real)), `dark` (fails the capture checks)
//! and `faces=2` (a second face of comparable size). Anything else does not decode.

use super::*;
use crate::config::Role;
use crate::domain::{Colour, HealthRecord, Outcome, OverrideAction, Reason, ResStatus, Step};
use crate::store::{ReservationInput, SqliteStore};
use crate::vision::geometry::{BBox, Point};
use crate::vision::{
    Analysis, Embedding, Face, FaceAnalysis, LivenessScore, MaskScore, Quality, SecondEmbeddings, SecondInput,
    StageTimings, EMBEDDING_DIM,
};

const PROPERTY: &str = "hz-west";

struct FakeAnalyser;

fn unit(person: usize) -> Embedding {
    let mut v = vec![0.0; EMBEDDING_DIM];
    v[person % EMBEDDING_DIM] = 1.0;
    Embedding(v)
}

impl Analyser for FakeAnalyser {
    fn analyse(&self, photo: &[u8]) -> std::result::Result<Analysis, VisionError> {
        let text = std::str::from_utf8(photo).map_err(|_| VisionError::UndecodableImage("not a fake photo".into()))?;
        let mut person = None;
        let (mut masked, mut p_real, mut brightness, mut faces) = (false, 0.9, 120.0, 1u32);
        for part in text.split_whitespace() {
            match part.split_once('=') {
                Some(("person", n)) => person = n.parse::<usize>().ok(),
                Some(("live", p)) => p_real = p.parse().unwrap_or(0.0),
                Some(("faces", n)) => faces = n.parse().unwrap_or(1),
                None if part == "masked" => masked = true,
                None if part == "dark" => brightness = 10.0,
                _ => return Err(VisionError::UndecodableImage(format!("unknown part {part}"))),
            }
        }
        let person = person.ok_or_else(|| VisionError::UndecodableImage("no person".into()))?;
        let face = Face {
            bbox: BBox {
                x: 100.0,
                y: 100.0,
                w: 200.0,
                h: 200.0,
            },
            landmarks: [Point::new(0.0, 0.0); 5],
            score: 0.99,
        };
        let primary = FaceAnalysis {
            face: face.clone(),
            quality: Quality {
                face_size_px: 200.0,
                sharpness: 200.0,
                brightness,
                yaw_deg: 0.0,
                pitch_deg: 0.0,
                roll_deg: 0.0,
                out_of_frame: 0.0,
                comparable_faces: faces,
            },
            liveness: LivenessScore {
                p_real,
                p_real_v2: p_real,
                p_real_v1se: p_real,
            },
            embedding: unit(person),
            mask: MaskScore {
                p_masked: if masked { 0.99 } else { 0.01 },
                masked,
            },
            second_input: None,
        };
        Ok(Analysis {
            width: 640,
            height: 480,
            faces: vec![face; faces as usize],
            primary: Some(primary),
            timings: StageTimings::default(),
        })
    }

    fn enrolment(&self, photo: &[u8], _flip: [bool; 2]) -> std::result::Result<Enrolment, VisionError> {
        let analysis = self.analyse(photo)?;
        let masked = analysis.primary.as_ref().map(|f| f.embedding.clone());
        Ok(Enrolment {
            analysis,
            masked,
            second: None,
        })
    }

    fn second_embeddings(
        &self,
        _input: &SecondInput,
        _with_dlib: bool,
        _flip: [bool; 2],
    ) -> std::result::Result<SecondEmbeddings, VisionError> {
        Err(VisionError::UndecodableImage("the fake has no second stage".into()))
    }
}

struct Fixture {
    app: App,
    store: Arc<SqliteStore>,
    _dir: tempfile::TempDir,
}

fn caller(role: Role, id: &str) -> Caller {
    Caller {
        id: id.into(),
        role,
        property: Some(PROPERTY.into()),
    }
}

fn kiosk() -> Caller {
    caller(Role::Kiosk, "kiosk-1")
}
fn staff() -> Caller {
    caller(Role::Staff, "staff-ana")
}
fn enroller() -> Caller {
    caller(Role::Enroller, "pms")
}

fn photo(spec: &str) -> Vec<u8> {
    spec.as_bytes().to_vec()
}

fn consent(granted: bool) -> Consent {
    Consent {
        granted,
        method: "kiosk-tablet".into(),
        text_version: "v3".into(),
        at_ms: 0,
    }
}

impl Fixture {
    async fn new() -> Fixture {
        Fixture::with(|_| {}).await
    }

    async fn with(tweak: impl FnOnce(&mut Settings)) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::load_from(None, std::iter::empty()).unwrap();
        settings.data_dir = dir.path().to_path_buf();
        tweak(&mut settings);
        let store = Arc::new(
            SqliteStore::open(
                &dir.path().join("lobby.sqlite3"),
                Arc::new(crate::store::TemplateKeys::ephemeral()),
            )
            .unwrap(),
        );
        let app = App::with_store(settings, Arc::new(FakeAnalyser), store.clone())
            .await
            .unwrap();
        Fixture { app, store, _dir: dir }
    }

    /// A reservation arriving today with a valid GREEN health status.
    async fn reservation(&self, code: &str) {
        self.reservation_from(code, today()).await
    }

    async fn reservation_from(&self, code: &str, arrival: chrono::NaiveDate) {
        let r = ReservationInput {
            property_id: PROPERTY.into(),
            code: code.into(),
            full_name: format!("Guest {code}"),
            guest_ref: format!("ref-{code}"),
            arrival,
            departure: arrival + chrono::Days::new(2),
            status: ResStatus::Booked,
        };
        self.app.upsert_reservation(&enroller(), &r).await.unwrap();
        let green = HealthRecord {
            colour: Colour::Green,
            issued_at_ms: now_ms() - 1000,
            expires_at_ms: now_ms() + 86_400_000,
            source: "test".into(),
        };
        self.app.set_health(&enroller(), PROPERTY, code, &green).await.unwrap();
    }

    /// A reservation whose guest (person `person`) is enrolled with consent.
    async fn enrolled(&self, code: &str, person: usize) {
        self.enrolled_from(code, person, today()).await
    }

    async fn enrolled_from(&self, code: &str, person: usize, arrival: chrono::NaiveDate) {
        self.reservation_from(code, arrival).await;
        let (_, outcomes, clean) = self
            .app
            .enrol(
                &enroller(),
                PROPERTY,
                code,
                vec![photo(&format!("person={person}"))],
                consent(true),
            )
            .await
            .unwrap();
        assert_eq!((clean, outcomes[0].rejection), (1, None));
    }

    fn count(&self, sql: &str) -> i64 {
        self.store.with(|c| Ok(c.query_row(sql, [], |r| r.get(0))?)).unwrap()
    }

    fn decisions(&self) -> i64 {
        self.count("SELECT COUNT(*) FROM decisions")
    }
}

#[tokio::test]
async fn enrolment_needs_consent_and_stores_templates_only_of_good_photos() {
    let f = Fixture::new().await;
    f.reservation("R1").await;
    let refused = f
        .app
        .enrol(&enroller(), PROPERTY, "R1", vec![photo("person=1")], consent(false))
        .await;
    assert!(matches!(refused, Err(AppError::FailedPrecondition(_))), "{refused:?}");
    assert_eq!(
        f.count("SELECT COUNT(*) FROM templates"),
        0,
        "nothing stored without consent"
    );

    let (_, outcomes, clean) = f
        .app
        .enrol(
            &enroller(),
            PROPERTY,
            "R1",
            vec![photo("person=1 faces=2"), photo("garbage"), photo("person=1")],
            consent(true),
        )
        .await
        .unwrap();
    let rejections: Vec<_> = outcomes.iter().map(|o| o.rejection).collect();
    assert_eq!(
        rejections,
        vec![Some(Rejection::MultipleFaces), Some(Rejection::Undecodable), None]
    );
    assert_eq!(clean, 1);
    // The clean and the masked template of the one good photo; no photo anywhere.
    assert_eq!(f.count("SELECT COUNT(*) FROM templates"), 2);
    assert_eq!(f.app.matcher.indexed(PROPERTY), 2);

    let other = Caller {
        property: Some("elsewhere".into()),
        ..enroller()
    };
    let scoped = f
        .app
        .enrol(&other, PROPERTY, "R1", vec![photo("person=1")], consent(true))
        .await;
    assert!(matches!(scoped, Err(AppError::PermissionDenied(_))), "{scoped:?}");
}

#[tokio::test]
async fn one_to_n_approves_the_guest_and_names_no_one_for_a_stranger() {
    let f = Fixture::new().await;
    f.enrolled("R1", 1).await;
    f.enrolled("R2", 2).await;

    let c = f.app.check_in(&kiosk(), photo("person=2"), "", "").await.unwrap();
    let d = &c.eval.decision;
    assert_eq!(d.outcome, Outcome::Approved, "{:?}", d.reasons);
    assert_eq!(d.reservation.as_ref().map(|r| r.code.as_str()), Some("R2"));
    let r2 = f.app.get_reservation(&staff(), PROPERTY, "R2").await.unwrap();
    assert_eq!(r2.status, ResStatus::CheckedIn);

    // A stranger is asked for a booking code (unary: a RETRY), and nobody is named.
    let c = f.app.check_in(&kiosk(), photo("person=9"), "", "").await.unwrap();
    let d = &c.eval.decision;
    assert_eq!(
        (d.outcome, d.reasons.as_slice()),
        (Outcome::Retry, &[Reason::ShowReservation][..])
    );
    assert!(d.reservation.is_none() && d.candidate.is_none());
    let r1 = f.app.get_reservation(&staff(), PROPERTY, "R1").await.unwrap();
    assert_eq!(r1.status, ResStatus::Booked);

    // 1:N searches only the guests expected around today: one arriving next week is not found.
    f.enrolled_from("R3", 3, today() + chrono::Days::new(7)).await;
    let c = f.app.check_in(&kiosk(), photo("person=3"), "", "").await.unwrap();
    assert_eq!(c.eval.decision.outcome, Outcome::Retry);
    assert!(c.eval.decision.reservation.is_none());
}

#[tokio::test]
async fn one_to_one_approves_only_the_guest_of_the_named_reservation() {
    let f = Fixture::new().await;
    f.enrolled("R1", 1).await;
    f.enrolled("R2", 2).await;

    // Person 1 naming R2: never approved, R2 stays booked.
    let c = f.app.check_in(&kiosk(), photo("person=1"), "R2", "").await.unwrap();
    assert_ne!(c.eval.decision.outcome, Outcome::Approved);
    assert!(c.eval.decision.reservation.is_none());
    let r2 = f.app.get_reservation(&staff(), PROPERTY, "R2").await.unwrap();
    assert_eq!(r2.status, ResStatus::Booked);

    let c = f.app.check_in(&kiosk(), photo("person=1"), "R1", "").await.unwrap();
    assert_eq!(
        c.eval.decision.outcome,
        Outcome::Approved,
        "{:?}",
        c.eval.decision.reasons
    );
    assert_eq!(c.eval.decision.reservation.map(|r| r.code), Some("R1".into()));

    // A code naming no reservation goes to the desk like a code whose guest the face does not
    // match (the desk sees why), and checks nobody in.
    let c = f.app.check_in(&kiosk(), photo("person=2"), "NOPE", "").await.unwrap();
    assert_eq!(c.eval.decision.reasons, vec![Reason::ReservationNotFound]);
    assert_eq!(c.eval.decision.outcome, Outcome::Review);
}

#[tokio::test]
async fn a_stream_records_only_its_end_and_the_desk_gets_the_step_the_guest_left() {
    let f = Fixture::new().await;
    f.enrolled("R1", 1).await;

    // A stranger is asked for a code; the guidance is not recorded.
    let mut s = f.app.open_check_in_stream(&kiosk()).unwrap();
    let a = f
        .app
        .stream_frame(&kiosk(), &mut s, photo("person=9"), "", "")
        .await
        .unwrap();
    let StreamAnswer::Guidance(g) = a else {
        panic!("expected guidance")
    };
    assert_eq!(g.decision.reasons, vec![Reason::ShowReservation]);
    assert_eq!(f.decisions(), 0, "guidance is not recorded");
    // The guest walks away: the desk gets a REVIEW naming the step asked.
    let desk = f.app.end_stream(&kiosk(), s).await.unwrap().expect("a desk decision");
    assert_eq!(desk.eval.decision.outcome, Outcome::Review);
    let row = f.app.get_decision(&staff(), &desk.id).await.unwrap();
    assert_eq!(
        (row.outcome, row.steps.as_slice()),
        (Outcome::Review, &[Step::ShowReservation][..])
    );
    // A stranger's REVIEW names no guest: the desk is not shown the nearest guest's booking.
    assert!(row.reservation_code.is_empty() && row.guest_id.is_none(), "{row:?}");
    assert_eq!(
        f.store.pending_reviews(Some(PROPERTY), None, 100).await.unwrap().len(),
        1
    );

    // A stream that only gave capture guidance records its last RETRY and answers nothing.
    let mut s = f.app.open_check_in_stream(&kiosk()).unwrap();
    let a = f
        .app
        .stream_frame(&kiosk(), &mut s, photo("person=1 dark"), "", "")
        .await
        .unwrap();
    assert!(matches!(a, StreamAnswer::Guidance(ref g) if g.capture_problem));
    assert!(f.app.end_stream(&kiosk(), s).await.unwrap().is_none());
    assert_eq!(f.decisions(), 2);
    assert_eq!(f.count("SELECT COUNT(*) FROM decisions WHERE outcome = 'RETRY'"), 1);

    // The guest's own face ends the stream with one recorded approval.
    let mut s = f.app.open_check_in_stream(&kiosk()).unwrap();
    let a = f
        .app
        .stream_frame(&kiosk(), &mut s, photo("person=1"), "", "")
        .await
        .unwrap();
    let StreamAnswer::Final(c) = a else {
        panic!("expected a final decision")
    };
    assert_eq!(c.eval.decision.outcome, Outcome::Approved);
    assert_eq!(f.decisions(), 3);
}

#[tokio::test]
async fn overrides_need_a_decision_and_approval_needs_a_reservation() {
    let f = Fixture::new().await;
    f.enrolled("R1", 1).await;

    // A RETRY (capture guidance) is not a decision staff can override, either way.
    let retry = f.app.check_in(&kiosk(), photo("person=1 dark"), "", "").await.unwrap();
    assert_eq!(retry.eval.decision.outcome, Outcome::Retry);
    for action in [OverrideAction::Approve, OverrideAction::Deny] {
        let r = f.app.override_decision(&staff(), &retry.id, action, "looks fine").await;
        assert!(matches!(r, Err(AppError::FailedPrecondition(_))), "{r:?}");
    }

    // A stranger's REVIEW names no reservation: it can be denied, not approved.
    let mut s = f.app.open_check_in_stream(&kiosk()).unwrap();
    f.app
        .stream_frame(&kiosk(), &mut s, photo("person=9"), "", "")
        .await
        .unwrap();
    let stranger = f.app.end_stream(&kiosk(), s).await.unwrap().unwrap();
    let r = f
        .app
        .override_decision(&staff(), &stranger.id, OverrideAction::Approve, "walk-in")
        .await;
    assert!(matches!(r, Err(AppError::FailedPrecondition(_))), "{r:?}");
    let denied = f
        .app
        .override_decision(&staff(), &stranger.id, OverrideAction::Deny, "not a guest")
        .await
        .unwrap();
    assert_eq!(denied.final_outcome, Outcome::Denied);

    // The guest's REVIEW (a photo held up: liveness fails) can be approved, which checks them in.
    let review = f
        .app
        .check_in(&kiosk(), photo("person=1 live=0.01"), "R1", "")
        .await
        .unwrap();
    assert_eq!(review.eval.decision.outcome, Outcome::Review);
    let approved = f
        .app
        .override_decision(&staff(), &review.id, OverrideAction::Approve, "passport checked")
        .await
        .unwrap();
    assert_eq!(approved.final_outcome, Outcome::Approved);
    assert_eq!(approved.override_.map(|o| o.staff_id), Some("staff-ana".into()));
    let r1 = f.app.get_reservation(&staff(), PROPERTY, "R1").await.unwrap();
    assert_eq!(r1.status, ResStatus::CheckedIn);
    assert!(f.app.verify_audit().await.unwrap().first_broken.is_none());
}

#[tokio::test]
async fn erasure_takes_the_guest_out_of_the_store_and_the_index() {
    let f = Fixture::new().await;
    f.enrolled("R1", 1).await;
    f.enrolled("R2", 2).await;
    assert_eq!(f.app.matcher.indexed(PROPERTY), 4);

    let e = f.app.erase(&enroller(), PROPERTY, "R1", "guest asked").await.unwrap();
    assert_eq!(e.templates.len(), 2);
    assert_eq!(
        f.app.matcher.indexed(PROPERTY),
        2,
        "the index keeps only R2's templates"
    );
    let left: i64 = f.count("SELECT COUNT(*) FROM templates");
    assert_eq!(left, 2);
    let c = f.app.check_in(&kiosk(), photo("person=1"), "", "").await.unwrap();
    assert_ne!(c.eval.decision.outcome, Outcome::Approved);
    let c = f.app.check_in(&kiosk(), photo("person=1"), "R1", "").await.unwrap();
    assert_ne!(c.eval.decision.outcome, Outcome::Approved);
    // The other guest is untouched.
    let c = f.app.check_in(&kiosk(), photo("person=2"), "", "").await.unwrap();
    assert_eq!(c.eval.decision.outcome, Outcome::Approved);
}

#[tokio::test]
async fn of_two_approvals_of_one_reservation_only_one_checks_in() {
    let f = Fixture::new().await;
    f.enrolled("R1", 1).await;
    // Two kiosks judge the guest before either records: both frames say APPROVED.
    let a = f.app.evaluate(&kiosk(), photo("person=1"), "", "").await.unwrap();
    let b = f.app.evaluate(&kiosk(), photo("person=1"), "", "").await.unwrap();
    assert_eq!(
        (a.decision.outcome, b.decision.outcome),
        (Outcome::Approved, Outcome::Approved)
    );
    let k = kiosk();
    let (a, b) = tokio::join!(f.app.record(&k, a), f.app.record(&k, b));
    let mut outcomes = [a.unwrap(), b.unwrap()];
    outcomes.sort_by_key(|c| c.eval.decision.outcome);
    assert_eq!(outcomes[0].eval.decision.outcome, Outcome::Approved);
    let lost = &outcomes[1];
    assert_eq!(lost.eval.decision.outcome, Outcome::Review);
    assert!(lost.eval.decision.reasons.contains(&Reason::AlreadyCheckedIn));
    let row = f.app.get_decision(&staff(), &lost.id).await.unwrap();
    assert_eq!((row.outcome, row.final_outcome), (Outcome::Review, Outcome::Review));
    assert_eq!(f.count("SELECT COUNT(*) FROM decisions WHERE outcome = 'APPROVED'"), 1);
}

#[tokio::test]
async fn an_override_cannot_check_in_a_reservation_that_changed_since() {
    let f = Fixture::new().await;
    f.enrolled("R1", 1).await;
    let review = f
        .app
        .check_in(&kiosk(), photo("person=1 live=0.01"), "R1", "")
        .await
        .unwrap();
    assert_eq!(review.eval.decision.outcome, Outcome::Review);
    // The reservation system cancels the booking before the desk looks at the review.
    let mut r = ReservationInput {
        property_id: PROPERTY.into(),
        code: "R1".into(),
        full_name: "Guest R1".into(),
        guest_ref: "ref-R1".into(),
        arrival: today(),
        departure: today() + chrono::Days::new(2),
        status: ResStatus::Cancelled,
    };
    f.app.upsert_reservation(&enroller(), &r).await.unwrap();
    let refused = f
        .app
        .override_decision(&staff(), &review.id, OverrideAction::Approve, "passport checked")
        .await;
    assert!(
        matches!(&refused, Err(AppError::FailedPrecondition(m)) if m.contains("cancelled")),
        "{refused:?}"
    );
    let row = f.app.get_decision(&staff(), &review.id).await.unwrap();
    assert!(row.override_.is_none(), "nothing applied");
    // Booked again, then erased: still refused.
    r.status = ResStatus::Booked;
    f.app.upsert_reservation(&enroller(), &r).await.unwrap();
    f.app.erase(&enroller(), PROPERTY, "R1", "guest asked").await.unwrap();
    let refused = f
        .app
        .override_decision(&staff(), &review.id, OverrideAction::Approve, "passport checked")
        .await;
    assert!(matches!(refused, Err(AppError::FailedPrecondition(_))), "{refused:?}");
    assert_eq!(
        f.count("SELECT COUNT(*) FROM reservations WHERE status = 'CHECKED_IN'"),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_enrolment_stores_no_second_copy_and_erasure_leaves_no_vector_behind() {
    let f = Fixture::new().await;
    f.enrolled("R1", 1).await;
    let (stored, indexed) = (
        f.count("SELECT COUNT(*) FROM templates"),
        f.app.matcher.indexed(PROPERTY),
    );
    assert!(stored >= 1 && indexed >= 1);
    // The same enrolment again (a client's retry): the same templates, once.
    f.enrolled("R1", 1).await;
    assert_eq!(f.count("SELECT COUNT(*) FROM templates"), stored);
    assert_eq!(f.app.matcher.indexed(PROPERTY), indexed);
    // Enrolment and erasure of one reservation at once, many times over: whichever goes first, the
    // guest ends erased with nothing stored and nothing indexed.
    for i in 0..24 {
        let code = format!("E{i}");
        f.reservation(&code).await;
        let (a, b) = (enroller(), enroller());
        let enrol = f.app.enrol(&a, PROPERTY, &code, vec![photo("person=2")], consent(true));
        let erase = f.app.erase(&b, PROPERTY, &code, "guest asked");
        let (_, erased) = tokio::join!(enrol, erase);
        erased.unwrap();
        match f.app.get_reservation(&staff(), PROPERTY, &code).await {
            Err(AppError::NotFound(_)) => {}
            other => panic!("{code}: after erasure {other:?}"),
        }
    }
    assert_eq!(f.count("SELECT COUNT(*) FROM templates"), stored);
    assert_eq!(
        f.app.matcher.indexed(PROPERTY),
        indexed,
        "an erased guest's vectors are indexed"
    );
}

#[tokio::test]
async fn check_index_names_templates_that_the_index_and_the_store_do_not_share() {
    let f = Fixture::new().await;
    f.enrolled("R1", 1).await;
    f.enrolled("R2", 2).await;
    let same = IndexCheck {
        indexed: 4,
        stored: 4,
        missing_from_index: 0,
        not_in_store: 0,
    };
    assert_eq!(f.app.check_index(&staff(), PROPERTY).await.unwrap(), same);
    // A stored template the index lost, and an indexed one whose row is gone.
    let ids: Vec<i64> = f
        .store
        .all_templates()
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.kind.indexed())
        .map(|t| t.id)
        .collect();
    f.app.matcher.remove(PROPERTY, &ids[..1]).await.unwrap();
    f.store
        .with(|c| Ok(c.execute("DELETE FROM templates WHERE id = ?1", [ids[1]])?))
        .unwrap();
    let v = f.app.check_index(&staff(), PROPERTY).await.unwrap();
    assert_eq!(
        v,
        IndexCheck {
            indexed: 3,
            stored: 3,
            missing_from_index: 1,
            not_in_store: 1,
        }
    );
    // Staff of another property may not look.
    let other = caller(Role::Staff, "staff-elsewhere");
    let other = Caller {
        property: Some("elsewhere".into()),
        ..other
    };
    assert!(f.app.check_index(&other, PROPERTY).await.is_err());
}

#[tokio::test]
async fn today_is_the_property_s_own_date() {
    // UTC-12 and UTC+14 are 26 hours apart: their dates always differ. A stay from yesterday to
    // tomorrow in UTC-12 is under way there, and over (departure reached) in UTC+14.
    let west_today = chrono::Utc::now()
        .with_timezone(&"Etc/GMT+12".parse::<chrono_tz::Tz>().unwrap())
        .date_naive();
    let arrival = west_today - chrono::Days::new(1);
    for (zone, expected) in [
        ("Etc/GMT+12", Outcome::Approved),
        ("Pacific/Kiritimati", Outcome::Review),
    ] {
        let f = Fixture::with(|s| {
            s.time.property_zones.insert(PROPERTY.into(), zone.into());
        })
        .await;
        f.enrolled_from("R1", 1, arrival).await;
        let c = f.app.check_in(&kiosk(), photo("person=1"), "R1", "").await.unwrap();
        let d = &c.eval.decision;
        assert_eq!(d.outcome, expected, "{zone}: {:?}", d.reasons);
        assert_eq!(
            d.reasons.contains(&Reason::WrongArrivalDay),
            expected == Outcome::Review,
            "{zone}"
        );
    }
}
