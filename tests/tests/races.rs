//! Races and failures the service must survive, made certain rather than left to the scheduler: the
//! core's test points (fail-rs, cargo feature `failpoints`, `core::test_point`) hold a request
//! between its judgement or its store commit and what follows, or fail it there, while other
//! requests run over real gRPC on 127.0.0.1:0.
//!
//! Its own test binary: a configured point acts on every request of the process, so each test
//! configures its points inside a `fail::FailScenario` (one scenario at a time, all points cleared
//! at its end), and no other suite shares the process.

use ed25519_dalek::SigningKey;
use lobby_kiosk_client::proto as pv;
use lobby_service::core::healthcode::public_key_b64;
use lobby_tests::data_dir;
use lobby_tests::guests::{
    book, check_in, code_of, enrol, enrol_request, identities, outcome, reservation, set_health,
};
use lobby_tests::server::{scratch_dir, start_with, TestServer, PROPERTY};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tonic::Code;

/// How long a held request waits at its point: far longer than the other requests of a test take
/// to reach theirs, even on a busy 2-core machine.
const HOLD_MS: u64 = 3000;

/// A fresh server (liveness off: these are web photos, not live captures) and the first
/// uncropped identity with two photos or more.
async fn server(name: &str) -> Option<(TestServer, String, Vec<PathBuf>)> {
    let data = data_dir()?;
    let issuer = SigningKey::from_bytes(&[42u8; 32]);
    let s = start_with(&scratch_dir(name), &public_key_b64(&issuer), None, |st| {
        st.policy.liveness_threshold = 0.0;
    })
    .await?;
    let (id, photos) = identities(&data)
        .into_iter()
        .find(|(_, p)| p.len() >= 2)
        .expect("uncropped_identities has an identity with two photos");
    Some((s, id, photos))
}

async fn erase(s: &TestServer, id: &str) -> Result<pv::EraseGuestResponse, tonic::Status> {
    s.enroller()
        .await
        .erase_guest(pv::EraseGuestRequest {
            property_id: PROPERTY.into(),
            reservation_code: code_of(id),
            reason: "guest asked".into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// Four kiosks send the same guest at once and every one of them is judged APPROVED before any is
/// recorded (each is held 3 s between its judgement and its commit). Exactly one checks the guest
/// in; the three others go to the desk as ALREADY_CHECKED_IN: the approval is a compare-and-set on
/// the reservation in the decision's own transaction. Without it, all four would be APPROVED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_ins_judged_at_once_check_the_guest_in_once() {
    let Some((s, id, photos)) = server("race-check-in").await else {
        return;
    };
    let scenario = fail::FailScenario::setup();
    assert_eq!(enrol(&s, &id, &photos[0]).await.templates_stored, 1);
    set_health(&s, &id, pv::HealthColour::Green, true).await;
    fail::cfg("check_in::before_record", &format!("return({HOLD_MS})")).unwrap();
    let (code, p) = (code_of(&id), &photos[0]);
    let started = Instant::now();
    let (a, b, c, d) = tokio::join!(
        check_in(&s, p, &code, ""),
        check_in(&s, p, &code, ""),
        check_in(&s, p, &code, ""),
        check_in(&s, p, &code, "")
    );
    let took = started.elapsed();
    scenario.teardown();
    assert!(
        took >= Duration::from_millis(HOLD_MS),
        "the check-ins were not held ({took:?})"
    );
    let answers = [a, b, c, d];
    let approved = answers.iter().filter(|r| outcome(r) == pv::Outcome::Approved).count();
    assert_eq!(approved, 1, "{answers:?}");
    for r in answers.iter().filter(|r| outcome(r) != pv::Outcome::Approved) {
        assert_eq!(outcome(r), pv::Outcome::Review, "{r:?}");
        assert!(r.reasons.contains(&(pv::Reason::AlreadyCheckedIn as i32)), "{r:?}");
        // What the desk is told is what the kiosk was told.
        let record = s.record(&r.decision_id).await;
        assert_eq!(record.final_outcome, pv::Outcome::Review as i32, "{record:?}");
    }
    assert_eq!(
        reservation(&s, &id).await.status,
        pv::ReservationStatus::CheckedIn as i32
    );
    s.stop().await;
}

/// An erasure arrives while an enrolment of the same guest is between its store commit and its
/// index update (held there 3 s). The erasure waits for the enrolment, then takes everything out:
/// the guest ends erased, with nothing stored and nothing in the search index. Without the
/// reservation's lock, the erasure would finish first and the enrolment would then put the erased
/// guest's vectors back in the index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_during_an_enrolment_leaves_no_vector_in_the_index() {
    let Some((s, id, photos)) = server("race-erase").await else {
        return;
    };
    let scenario = fail::FailScenario::setup();
    book(&s, &id).await;
    assert_eq!(s.app().indexed_templates(PROPERTY), 0);
    fail::cfg("enrol::before_index", &format!("return({HOLD_MS})")).unwrap();
    let enrolling = async {
        s.enroller()
            .await
            .enroll_face(enrol_request(&id, &photos[0]))
            .await
            .map(|r| r.into_inner())
    };
    let erasing = async {
        // The enrolment's commit is visible (templates stored) while it is held before the index.
        let deadline = Instant::now() + Duration::from_secs(120);
        while reservation(&s, &id).await.templates == 0 {
            assert!(Instant::now() < deadline, "the enrolment never committed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(s.app().indexed_templates(PROPERTY), 0, "held before the index");
        erase(&s, &id).await
    };
    let (enrolled, erased) = tokio::join!(enrolling, erasing);
    scenario.teardown();
    let enrolled = enrolled.expect("the enrolment finishes before the erasure");
    assert!(enrolled.templates_stored >= 1);
    let erased = erased.expect("erasure");
    assert!(erased.templates_deleted >= 1, "{erased:?}");
    let gone = s
        .enroller()
        .await
        .get_reservation(pv::GetReservationRequest {
            property_id: PROPERTY.into(),
            reservation_code: code_of(&id),
        })
        .await;
    assert_eq!(
        gone.map(|r| r.into_inner().templates).map_err(|e| e.code()),
        Err(tonic::Code::NotFound),
        "the erased reservation is gone"
    );
    assert_eq!(
        s.app().indexed_templates(PROPERTY),
        0,
        "an erased guest's vectors are in the index"
    );
    let after = check_in(&s, &photos[1], "", "").await;
    assert_ne!(outcome(&after), pv::Outcome::Approved);
    assert!(s.record(&after.decision_id).await.reservation_code.is_empty());
    s.stop().await;
}

/// An enrolment that fails between its store commit and its index update (a failure injected
/// there) is answered as an error; its retry stores the same templates once (they replace the
/// first attempt's) and indexes them, and the guest then checks in by face. A third attempt changes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolment_failing_before_the_index_is_made_whole_by_its_retry() {
    let Some((s, id, photos)) = server("fail-enrol").await else {
        return;
    };
    let scenario = fail::FailScenario::setup();
    book(&s, &id).await;
    set_health(&s, &id, pv::HealthColour::Green, true).await;
    fail::cfg("enrol::before_index", "return(error)").unwrap();
    let failed = s
        .enroller()
        .await
        .enroll_face(enrol_request(&id, &photos[0]))
        .await
        .expect_err("the injected failure is answered");
    assert_eq!(failed.code(), Code::Internal, "{failed:?}");
    fail::remove("enrol::before_index");
    let stored = reservation(&s, &id).await.templates;
    assert!(stored >= 1, "the first attempt's commit stands until the retry");
    assert_eq!(s.app().indexed_templates(PROPERTY), 0);
    let retried = s
        .enroller()
        .await
        .enroll_face(enrol_request(&id, &photos[0]))
        .await
        .expect("the retry")
        .into_inner();
    assert_eq!(retried.templates_stored, 1);
    assert_eq!(reservation(&s, &id).await.templates, stored, "a second copy was stored");
    let indexed = s.app().indexed_templates(PROPERTY);
    assert!(indexed >= 1);
    s.enroller()
        .await
        .enroll_face(enrol_request(&id, &photos[0]))
        .await
        .expect("another retry");
    assert_eq!(reservation(&s, &id).await.templates, stored);
    assert_eq!(s.app().indexed_templates(PROPERTY), indexed);
    scenario.teardown();
    let r = check_in(&s, &photos[0], "", "").await;
    assert_eq!(outcome(&r), pv::Outcome::Approved, "{r:?}");
    s.stop().await;
}
