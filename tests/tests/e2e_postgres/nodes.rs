//! Two Lobby nodes on one PostgreSQL database, each with its own galleries in memory, as behind a
//! load balancer: what one node does reaches the other within a second (the change log, LISTEN /
//! NOTIFY), a reservation is checked in once whichever nodes judge it, a REVIEW made on one node
//! is shown by the other's review stream, and both say NOT_SERVING while the database is down and
//! recover when it returns, with nothing acknowledged lost.

use lobby_kiosk_client::proto as pv;
use lobby_service::core::healthcode::public_key_b64;
use lobby_tests::guests::{check_in, code_of, enrol, identities, outcome, set_health};
use lobby_tests::server::{scratch_dir, start_with, TestServer, Tokens, PROPERTY};
use lobby_tests::{data_dir, pg};
use std::path::Path;
use std::time::{Duration, Instant};

fn issuer() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[7u8; 32])
}

fn same(t: &Tokens) -> Tokens {
    Tokens {
        kiosk: t.kiosk.clone(),
        other_kiosk: t.other_kiosk.clone(),
        staff: t.staff.clone(),
        enroller: t.enroller.clone(),
    }
}

/// Node A on a fresh database, then node B on the same database with A's template keys and audit
/// signing key (every node of one database shares them), and A's credentials.
async fn two_nodes(name: &str, cluster: &pg::Cluster) -> Option<(TestServer, TestServer)> {
    let (dir_a, dir_b) = (scratch_dir(&format!("{name}-a")), scratch_dir(&format!("{name}-b")));
    let url = cluster.database(&pg::db_name(&dir_a));
    let key = public_key_b64(&issuer());
    let (u, k) = (url.clone(), key.clone());
    let a = start_with(&dir_a, &key, None, move |st| {
        st.store.url = u;
        st.policy.liveness_threshold = 0.0;
    })
    .await?;
    for f in ["template.key", "audit-signing.key"] {
        std::fs::copy(dir_a.join(f), dir_b.join(f)).expect("share the node keys");
    }
    let b = start_with(&dir_b, &k, Some(same(&a.tokens)), move |st| {
        st.store.url = url;
        st.policy.liveness_threshold = 0.0;
    })
    .await?;
    Some((a, b))
}

/// Waits until `ok` holds (checked every 10 ms), at most `limit`; how long it took.
async fn within(limit: Duration, mut ok: impl FnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if ok() {
            return Some(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// The first identity with three photos or more.
fn guest(data: &Path) -> (String, Vec<std::path::PathBuf>) {
    identities(data)
        .into_iter()
        .find(|(_, p)| p.len() >= 3)
        .expect("an identity with three photos")
}

/// Enrol on A, check in on B: B's gallery holds the guest within 1 s and approves; erase on A: B's
/// gallery drops the guest within 1 s and B no longer matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolment_and_erasure_reach_the_other_node_within_a_second() {
    let Some(data) = data_dir() else { return };
    let Some(cluster) = pg::cluster() else { return };
    let Some((a, b)) = two_nodes("nodes-sync", cluster).await else {
        return;
    };
    let (id, photos) = guest(&data);
    let before = b.app().indexed_templates(PROPERTY);
    enrol(&a, &id, &photos[0]).await;
    let took = within(Duration::from_secs(1), || {
        b.app().indexed_templates(PROPERTY) == before + 2
    })
    .await
    .expect("B indexes A's enrolment within 1 s");
    eprintln!("enrolment reached node B in {} ms", took.as_millis());
    set_health(&a, &id, pv::HealthColour::Green, true).await;
    let r = check_in(&b, &photos[1], &code_of(&id), "").await;
    assert_eq!(outcome(&r), pv::Outcome::Approved, "{r:?}");

    a.enroller()
        .await
        .erase_guest(pv::EraseGuestRequest {
            property_id: PROPERTY.into(),
            reservation_code: code_of(&id),
            reason: "guest asked".into(),
        })
        .await
        .expect("erase on A");
    let took = within(Duration::from_secs(1), || b.app().indexed_templates(PROPERTY) == before)
        .await
        .expect("B drops the erased guest within 1 s");
    eprintln!("erasure reached node B in {} ms", took.as_millis());
    let after = check_in(&b, &photos[2], "", "").await;
    assert_ne!(outcome(&after), pv::Outcome::Approved);
    assert!(
        !after.reasons.contains(&(pv::Reason::Matched as i32)),
        "B still matches"
    );
    a.stop().await;
    b.stop().await;
}

/// The same reservation judged at once on A and on B: exactly one APPROVED, the other REVIEW
/// (already checked in); a REVIEW made on B appears in a review stream opened on A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_check_in_across_nodes_and_reviews_everywhere() {
    let Some(data) = data_dir() else { return };
    let Some(cluster) = pg::cluster() else { return };
    let Some((a, b)) = two_nodes("nodes-once", cluster).await else {
        return;
    };
    let (id, photos) = guest(&data);
    enrol(&a, &id, &photos[0]).await;
    set_health(&a, &id, pv::HealthColour::Green, true).await;
    within(Duration::from_secs(2), || b.app().indexed_templates(PROPERTY) >= 2)
        .await
        .expect("B indexes the guest");
    let code = code_of(&id);
    let (ra, rb) = tokio::join!(check_in(&a, &photos[1], &code, ""), check_in(&b, &photos[1], &code, ""));
    let outcomes = [outcome(&ra), outcome(&rb)];
    assert_eq!(
        outcomes.iter().filter(|o| **o == pv::Outcome::Approved).count(),
        1,
        "exactly one node checks the guest in: {outcomes:?}"
    );

    // A YELLOW guest's check-in on B is a REVIEW; A's review stream shows it.
    let (id2, photos2) = identities(&data)
        .into_iter()
        .filter(|(_, p)| p.len() >= 2)
        .find(|(i, _)| *i != id)
        .expect("a second identity");
    enrol(&b, &id2, &photos2[0]).await;
    set_health(&b, &id2, pv::HealthColour::Yellow, true).await;
    let mut reviews = a
        .staff()
        .await
        .stream_reviews(pv::StreamReviewsRequest::default())
        .await
        .unwrap()
        .into_inner();
    // The first node's REVIEW of the race (if the loser was recorded as one) may come first.
    let r = check_in(&b, &photos2[1], &code_of(&id2), "").await;
    assert_eq!(outcome(&r), pv::Outcome::Review, "{r:?}");
    let t = Instant::now();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), reviews.message())
            .await
            .expect("A's review stream shows B's REVIEW within 5 s")
            .unwrap()
            .unwrap();
        if next.decision_id == r.decision_id {
            eprintln!("B's REVIEW on A's stream after {} ms", t.elapsed().as_millis());
            break;
        }
    }
    a.stop().await;
    b.stop().await;
}

/// PostgreSQL stopped for 5 s: both nodes say NOT_SERVING, then SERVING again once it is back; a
/// reservation acknowledged before the outage is still there, and writes work again on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_nodes_say_not_serving_while_the_database_is_down() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let Some(data) = data_dir() else { return };
    // A cluster of its own: the others' tests keep theirs running.
    let Some(cluster) = pg::Cluster::start_new() else {
        return;
    };
    let Some((a, b)) = two_nodes("nodes-outage", &cluster).await else {
        return;
    };
    let (id, photos) = guest(&data);
    enrol(&a, &id, &photos[0]).await;
    async fn status(s: &TestServer) -> i32 {
        HealthClient::new(s.channel().await)
            .check(HealthCheckRequest { service: String::new() })
            .await
            .map(|r| r.into_inner().status)
            .unwrap_or(-1)
    }
    assert_eq!(status(&a).await, ServingStatus::Serving as i32);
    cluster.stop();
    let t = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut down = (false, false);
    while Instant::now() < deadline && down != (true, true) {
        down = (
            status(&a).await == ServingStatus::NotServing as i32,
            status(&b).await == ServingStatus::NotServing as i32,
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(down, (true, true), "both nodes NOT_SERVING while the database is down");
    eprintln!("NOT_SERVING after {} ms", t.elapsed().as_millis());
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(t.elapsed())).await;
    cluster.start();
    let t = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut up = (false, false);
    while Instant::now() < deadline && up != (true, true) {
        up = (
            status(&a).await == ServingStatus::Serving as i32,
            status(&b).await == ServingStatus::Serving as i32,
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(up, (true, true), "both nodes SERVING again");
    eprintln!("SERVING again {} ms after the database", t.elapsed().as_millis());
    // What was acknowledged before is there; both nodes write again.
    let res = b
        .enroller()
        .await
        .get_reservation(pv::GetReservationRequest {
            property_id: PROPERTY.into(),
            reservation_code: code_of(&id),
        })
        .await
        .expect("the reservation survived the outage")
        .into_inner();
    assert_eq!(res.templates, 4);
    set_health(&b, &id, pv::HealthColour::Green, true).await;
    set_health(&a, &id, pv::HealthColour::Green, true).await;
    let r = check_in(&a, &photos[1], &code_of(&id), "").await;
    assert_eq!(outcome(&r), pv::Outcome::Approved, "{r:?}");
    a.stop().await;
    b.stop().await;
}

/// Writes from two nodes at once (40 bookings, 20 through each, all in flight together) keep one
/// audit chain: every write is acknowledged, each has its entry, and the trail verifies on both
/// nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_from_both_nodes_at_once_keep_one_audit_chain() {
    let Some(_) = data_dir() else { return };
    let Some(cluster) = pg::cluster() else { return };
    let Some((a, b)) = two_nodes("nodes-chain", cluster).await else {
        return;
    };
    let before = lobby_tests::server::audit_entries(&a.data_dir, None).await.len();
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..40 {
        let mut rs = if i % 2 == 0 {
            a.enroller().await
        } else {
            b.enroller().await
        };
        writes.spawn(async move {
            rs.upsert_reservation(pv::UpsertReservationRequest {
                reservation: Some(pv::Reservation {
                    property_id: PROPERTY.into(),
                    reservation_code: format!("CHAIN-{i}"),
                    guest: Some(pv::Guest {
                        guest_id: String::new(),
                        full_name: format!("Chain Guest {i}"),
                        guest_ref: format!("chain-{i}"),
                    }),
                    arrival_date: lobby_tests::guests::today(),
                    departure_date: lobby_tests::guests::tomorrow(),
                    status: pv::ReservationStatus::Booked as i32,
                    ..Default::default()
                }),
            })
            .await
            .map(|_| ())
        });
    }
    while let Some(r) = writes.join_next().await {
        r.unwrap().expect("every write from either node is acknowledged");
    }
    let entries = lobby_tests::server::audit_entries(&a.data_dir, None).await;
    assert_eq!(entries.len(), before + 40, "one entry per write");
    for s in [&a, &b] {
        let v = s
            .staff()
            .await
            .verify_audit_trail(pv::VerifyAuditTrailRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(v.intact, "{v:?}");
    }
    a.stop().await;
    b.stop().await;
}
