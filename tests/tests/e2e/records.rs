//! Records that forget and keep their secrets (issue 18): retention rules proved with a moved
//! clock, templates sealed at rest and the key rotated, a booking given to another person, a busy
//! WAL retried and reported.

use chrono::Duration;
use lobby_kiosk_client::proto as pv;
use lobby_service::core::healthcode::public_key_b64;
use lobby_service::store::StoredTemplate;
use lobby_tests::data_dir;
use lobby_tests::guests::{book, check_in, code_of, enrol, enrol_request, identities, outcome, set_health};
use lobby_tests::server::{open_store, scratch_dir, side_store, start, TestServer, PROPERTY};
use std::path::{Path, PathBuf};
use tonic::Code;

fn issuer() -> String {
    public_key_b64(&ed25519_dalek::SigningKey::from_bytes(&[42u8; 32]))
}

/// Three identities with at least two photos each.
fn three(data: &Path) -> Vec<(String, Vec<PathBuf>)> {
    identities(data)
        .into_iter()
        .filter(|(_, p)| p.len() >= 2)
        .take(3)
        .collect()
}

async fn upsert(s: &TestServer, identity: &str, name: &str, guest_ref: &str, status: pv::ReservationStatus) {
    let today = chrono::Local::now().date_naive();
    s.enroller()
        .await
        .upsert_reservation(pv::UpsertReservationRequest {
            reservation: Some(pv::Reservation {
                property_id: PROPERTY.into(),
                reservation_code: code_of(identity),
                guest: Some(pv::Guest {
                    guest_id: String::new(),
                    full_name: name.into(),
                    guest_ref: guest_ref.into(),
                }),
                arrival_date: today.to_string(),
                departure_date: (today + Duration::days(1)).to_string(),
                status: status as i32,
                ..Default::default()
            }),
        })
        .await
        .expect("upsert");
}

async fn templates(s: &TestServer, identity: &str) -> Result<u32, Code> {
    s.enroller()
        .await
        .get_reservation(pv::GetReservationRequest {
            property_id: PROPERTY.into(),
            reservation_code: code_of(identity),
        })
        .await
        .map(|r| r.into_inner().templates)
        .map_err(|e| e.code())
}

/// The audit entries of the retention purges: (rule, details).
async fn purges(dir: &Path) -> Vec<(String, serde_json::Value)> {
    lobby_tests::server::audit_entries(dir, Some("retention_purge"))
        .await
        .into_iter()
        .map(|e| (e.subject, serde_json::from_str(&e.details).unwrap()))
        .collect()
}

/// Each retention rule, by moving the service's clock: a cancelled booking's templates go at the
/// next purge; a no-show's two days after arrival (arrival day + 1 day of grace ended); a departed
/// guest's 24 h after the end of the departure day; decisions are anonymised after 30 days and the
/// reservations and guests forgotten 30 days after departure. Every purge leaves an audit entry with
/// counts only, and the trail still verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_rules_with_a_moved_clock() {
    let Some(data) = data_dir() else { return };
    let dir = scratch_dir("retention");
    let Some(s) = start(&dir, &issuer(), None).await else {
        return;
    };
    let g = three(&data);
    let (stayer, no_show, cancelled) = (&g[0].0, &g[1].0, &g[2].0);
    for (id, photos) in &g {
        enrol(&s, id, &photos[0]).await;
        set_health(&s, id, pv::HealthColour::Green, true).await;
    }
    let per_guest = templates(&s, stayer).await.unwrap();
    assert!(per_guest >= 2);
    let stay = check_in(&s, &g[0].1[1], "", "").await;
    assert_eq!(outcome(&stay), pv::Outcome::Approved, "the stayer checks in");
    let app = s.app();
    // (The index holds the first-stage templates; the store all of them.)
    let indexed = app.indexed_templates(PROPERTY);
    assert!(indexed >= 3 && indexed % 3 == 0, "{indexed}");

    // Nothing is due: nothing goes, no audit entry.
    let p = app.run_retention().await.unwrap();
    assert_eq!(p.templates.len(), 0, "{:?}", p.counts);
    assert!(purges(&dir).await.is_empty());

    // A cancelled booking loses its templates at once.
    upsert(
        &s,
        cancelled,
        &format!("Guest {cancelled}"),
        cancelled,
        pv::ReservationStatus::Cancelled,
    )
    .await;
    let p = app.run_retention().await.unwrap();
    assert_eq!(p.total("templates_deleted"), per_guest as usize, "{:?}", p.counts);
    assert_eq!(templates(&s, cancelled).await, Ok(0));
    assert_eq!(app.indexed_templates(PROPERTY), indexed / 3 * 2);
    assert_eq!(templates(&s, no_show).await, Ok(per_guest));

    // A day later: the no-show may still come (the 1:N search expects them until the day after
    // arrival ends); the stayer departs today.
    app.clock().advance(Duration::days(1));
    let p = app.run_retention().await.unwrap();
    assert_eq!(p.templates.len(), 0, "{:?}", p.counts);
    // Two days later: the no-show's templates go, the stayer's stay (24 h after the departure day).
    app.clock().advance(Duration::days(1));
    let p = app.run_retention().await.unwrap();
    assert_eq!(
        p.counts["templates_of_no_shows"]["templates_deleted"],
        per_guest as usize
    );
    assert_eq!(templates(&s, no_show).await, Ok(0));
    assert_eq!(templates(&s, stayer).await, Ok(per_guest));
    // Three days later: the departed guest's templates go, from the store and the index.
    app.clock().advance(Duration::days(1));
    let p = app.run_retention().await.unwrap();
    assert_eq!(
        p.counts["templates_after_departure"]["templates_deleted"],
        per_guest as usize
    );
    assert_eq!(templates(&s, stayer).await, Ok(0));
    assert_eq!(app.indexed_templates(PROPERTY), 0);
    let again = check_in(&s, &g[0].1[1], "", "").await;
    assert_ne!(outcome(&again), pv::Outcome::Approved);

    // 31 days after the stay: decisions anonymised (outcome and reasons kept), reservations kept.
    app.clock().advance(Duration::days(28));
    let p = app.run_retention().await.unwrap();
    assert!(p.counts["decisions"]["decisions_anonymised"] >= 1, "{:?}", p.counts);
    let rec = s.record(&stay.decision_id).await;
    assert!(rec.reservation_code.is_empty(), "{rec:?}");
    assert_eq!(rec.outcome, pv::Outcome::Approved as i32);
    assert!(rec.reasons.contains(&(pv::Reason::Matched as i32)));
    assert_eq!(templates(&s, stayer).await, Ok(0));
    // 32 days: more than 30 after departure, the reservations and guests are forgotten.
    app.clock().advance(Duration::days(1));
    let p = app.run_retention().await.unwrap();
    assert_eq!(p.counts["guests_after_departure"]["guests_forgotten"], 3);
    for (id, _) in &g {
        assert_eq!(templates(&s, id).await, Err(Code::NotFound), "{id} forgotten");
    }

    // Every purge: one audit entry per rule, with counts only.
    let entries = purges(&dir).await;
    let rules: Vec<&str> = entries.iter().map(|(r, _)| r.as_str()).collect();
    for rule in [
        "templates_of_cancelled",
        "templates_of_no_shows",
        "templates_after_departure",
        "decisions",
        "guests_after_departure",
    ] {
        assert!(rules.contains(&rule), "no audit entry for {rule}: {rules:?}");
    }
    for (rule, d) in &entries {
        let o = d.as_object().unwrap();
        assert!(o.values().all(|v| v.is_u64()), "{rule}: {d}");
        for (id, _) in &g {
            assert!(!d.to_string().contains(id.as_str()), "{rule} names {id}");
        }
    }
    let trail = s
        .staff()
        .await
        .verify_audit_trail(pv::VerifyAuditTrailRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(trail.intact, "{trail:?}");
    s.stop().await;
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Whether `bytes` hold any 8-float run of any template's vector.
fn holds_a_template(bytes: &[u8], ts: &[StoredTemplate]) -> bool {
    ts.iter().any(|t| {
        t.vector.chunks(8).filter(|c| c.len() == 8).any(|c| {
            let needle: Vec<u8> = c.iter().flat_map(|x| x.to_le_bytes()).collect();
            bytes.windows(needle.len()).any(|w| w == needle.as_slice())
        })
    })
}

/// Templates are sealed at rest: the database and WAL bytes hold no template in the clear (on
/// PostgreSQL: no stored vector holds one); the store, WAL and key files are 0600. `rotate-template-key` re-seals every template under a new
/// key and drops the old one; the restarted server still recognises the guest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_are_sealed_at_rest_and_the_key_rotates() {
    let Some(data) = data_dir() else { return };
    let dir = scratch_dir("sealed");
    let Some(s) = start(&dir, &issuer(), None).await else {
        return;
    };
    let g = three(&data);
    for (id, photos) in &g[..2] {
        enrol(&s, id, &photos[0]).await;
        set_health(&s, id, pv::HealthColour::Yellow, true).await;
    }
    let plain = side_store(&dir).await.all_templates().await.unwrap();
    assert!(plain.len() >= 4);
    assert!(
        !holds_a_template(&stored_bytes(&dir).await, &plain),
        "a template in the clear in the database"
    );
    let mut private = vec!["template.key", "audit-signing.key"];
    if !lobby_tests::pg::enabled() {
        private.extend(["lobby.sqlite3", "lobby.sqlite3-wal"]);
    }
    for f in private {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    assert_eq!(key_ids(&dir).await, ["k1"]);
    let tokens = s.stop().await;

    let mut settings = lobby_service::config::Settings::load_from(None, std::iter::empty()).unwrap();
    settings.data_dir = dir.clone();
    if let Some(c) = lobby_tests::pg::enabled().then(lobby_tests::pg::cluster).flatten() {
        settings.store.url = c.url(&lobby_tests::pg::db_name(&dir));
    }
    let (new, old, n) =
        lobby_service::store::rotate_template_key(&settings, "test-operator", lobby_service::core::now_ms())
            .await
            .unwrap();
    assert_eq!((new.as_str(), old, n), ("k2", vec!["k1".to_string()], plain.len()));
    assert_eq!(key_ids(&dir).await, ["k2"]);
    let key_file = std::fs::read_to_string(dir.join("template.key")).unwrap();
    assert!(
        key_file.starts_with("k2:") && !key_file.contains("k1:"),
        "the old key is gone"
    );
    assert_eq!(mode(&dir.join("template.key")), 0o600);
    let resealed = side_store(&dir).await.all_templates().await.unwrap();
    assert_eq!(
        resealed.iter().map(|t| &t.vector).collect::<Vec<_>>(),
        plain.iter().map(|t| &t.vector).collect::<Vec<_>>()
    );
    assert!(!holds_a_template(&stored_bytes(&dir).await, &plain));

    let Some(s) = start(&dir, &issuer(), Some(tokens)).await else {
        return;
    };
    let c = check_in(&s, &g[0].1[1], "", "").await;
    assert!(
        c.reasons.contains(&(pv::Reason::Matched as i32)),
        "recognised after the rotation: {c:?}"
    );
    s.stop().await;
}

/// What the database holds: the SQLite file and its WAL, byte for byte; on PostgreSQL, every
/// stored template vector (the column as the server wrote it).
async fn stored_bytes(dir: &Path) -> Vec<u8> {
    if lobby_tests::pg::enabled() {
        let db = lobby_tests::pg::client(dir).await;
        let rows = db.query("SELECT vector FROM templates", &[]).await.unwrap();
        return rows.iter().flat_map(|r| r.get::<_, Vec<u8>>(0)).collect();
    }
    ["lobby.sqlite3", "lobby.sqlite3-wal"]
        .iter()
        .filter_map(|f| std::fs::read(dir.join(f)).ok())
        .collect::<Vec<_>>()
        .concat()
}

/// The template keys the stored templates name.
async fn key_ids(dir: &Path) -> Vec<String> {
    if lobby_tests::pg::enabled() {
        let db = lobby_tests::pg::client(dir).await;
        let rows = db.query("SELECT DISTINCT key_id FROM templates", &[]).await.unwrap();
        return rows.iter().map(|r| r.get(0)).collect();
    }
    open_store(dir)
        .with(|c| {
            let mut q = c.prepare("SELECT DISTINCT key_id FROM templates")?;
            let rows = q.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .unwrap()
}

/// A booking that now names another person (another guest reference) drops the first person's
/// templates, consent and health status, from the store and the index; a corrected name of the
/// same person keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_booking_given_to_another_person_drops_the_first_one() {
    let Some(data) = data_dir() else { return };
    let Some(s) = start(&scratch_dir("another-person"), &issuer(), None).await else {
        return;
    };
    let g = three(&data);
    let (id, photos) = &g[0];
    enrol(&s, id, &photos[0]).await;
    set_health(&s, id, pv::HealthColour::Green, true).await;
    let n = templates(&s, id).await.unwrap();
    assert!(n >= 2 && s.app().indexed_templates(PROPERTY) >= 2);
    // The same person, the name spelled again: kept.
    upsert(&s, id, &format!("  guest {id} "), id, pv::ReservationStatus::Booked).await;
    assert_eq!(templates(&s, id).await, Ok(n));
    // Another person on the booking.
    upsert(&s, id, "Someone Else", "another-ref", pv::ReservationStatus::Booked).await;
    let r = s
        .enroller()
        .await
        .get_reservation(pv::GetReservationRequest {
            property_id: PROPERTY.into(),
            reservation_code: code_of(id),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.templates, 0);
    assert!(!r.consent_recorded);
    assert_eq!(
        r.health.map(|h| h.colour),
        Some(pv::HealthColour::Unknown as i32),
        "the first person's health status is not the second's"
    );
    assert_eq!(s.app().indexed_templates(PROPERTY), 0);
    let c = check_in(&s, &photos[1], "", "").await;
    assert!(!c.reasons.contains(&(pv::Reason::Matched as i32)), "{c:?}");
    // The new person enrols afresh.
    let mut req = enrol_request(id, &g[1].1[0]);
    req.reservation_code = code_of(id);
    let e = s.enroller().await.enroll_face(req).await.unwrap().into_inner();
    assert!(e.templates_stored >= 1);
    s.stop().await;
}

/// An erasure while another process reads the store: the WAL cannot be checkpointed at once; the
/// answer says so, and the server retries until it is cleared. On PostgreSQL the same for the
/// VACUUM that follows an erasure, while another session holds a lock it needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_wal_is_retried_and_reported() {
    let Some(data) = data_dir() else { return };
    let dir = scratch_dir("busy-wal");
    let Some(s) = start(&dir, &issuer(), None).await else {
        return;
    };
    let g = three(&data);
    let (id, photos) = &g[0];
    enrol(&s, id, &photos[0]).await;
    book(&s, &g[1].0).await;
    if lobby_tests::pg::enabled() {
        // A session holding the lock VACUUM needs (another maintenance job, say).
        let other = lobby_tests::pg::client(&dir).await;
        other.batch_execute("BEGIN").await.unwrap();
        other
            .batch_execute("LOCK TABLE templates IN SHARE UPDATE EXCLUSIVE MODE")
            .await
            .unwrap();
        let e = s
            .enroller()
            .await
            .erase_guest(pv::EraseGuestRequest {
                property_id: PROPERTY.into(),
                reservation_code: code_of(id),
                reason: "guest asked".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!e.wal_cleared, "VACUUM cannot run while the lock is held: {e:?}");
        other.batch_execute("COMMIT").await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !s.app().clear_wal_if_pending().await.unwrap() {
            assert!(std::time::Instant::now() < deadline, "VACUUM never ran");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        let db = lobby_tests::pg::client(&dir).await;
        for table in ["guests", "reservations", "templates", "decisions", "audit", "changes"] {
            let n = lobby_tests::pg::rows_naming(&db, table, id).await;
            assert_eq!(n, 0, "{table} still names the erased guest");
        }
        s.stop().await;
        return;
    }
    // A reader holding a snapshot (an operator's backup tool, say).
    let reader = rusqlite::Connection::open(dir.join("lobby.sqlite3")).unwrap();
    reader.execute_batch("BEGIN; SELECT COUNT(*) FROM audit;").unwrap();
    let e = s
        .enroller()
        .await
        .erase_guest(pv::EraseGuestRequest {
            property_id: PROPERTY.into(),
            reservation_code: code_of(id),
            reason: "guest asked".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!e.wal_cleared, "a reader holds the WAL: {e:?}");
    reader.execute_batch("COMMIT;").unwrap();
    drop(reader);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !s.app().clear_wal_if_pending().await.unwrap() {
        assert!(std::time::Instant::now() < deadline, "the WAL was never cleared");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // (The WAL may hold newer writes by now, the audit checkpoints among them; never the guest.)
    for f in ["lobby.sqlite3", "lobby.sqlite3-wal"] {
        let bytes = std::fs::read(dir.join(f)).unwrap_or_default();
        assert!(
            !bytes.windows(id.len()).any(|w| w == id.as_bytes()),
            "the erased identity is in {f}"
        );
    }
    s.stop().await;
}

/// `lobby staff export-audit` writes a bundle that `lobby audit verify` checks with no server and
/// no database: intact as exported; an altered entry, a removed entry or a cut tail is named; a
/// bundle checked against another server's key is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exported_audit_bundle_verifies_offline() {
    let Some(data) = data_dir() else { return };
    let dir = scratch_dir("export-audit");
    let Some(s) = start(&dir, &issuer(), None).await else {
        return;
    };
    let g = three(&data);
    for (id, photos) in &g[..2] {
        enrol(&s, id, &photos[0]).await;
        set_health(&s, id, pv::HealthColour::Green, true).await;
        check_in(&s, &photos[1], "", "").await;
    }
    let bundle = dir.join("audit-bundle.jsonl");
    let (entries, checkpoints) = lobby_kiosk_client::audit::export(&mut s.staff().await, &bundle)
        .await
        .unwrap();
    assert!(
        entries >= 8 && checkpoints >= 1,
        "{entries} entries, {checkpoints} checkpoints"
    );
    let key = s.app().audit_public_key();
    s.stop().await;
    // Offline from here: the server is stopped.
    let v = lobby_kiosk_client::audit::verify_file(&bundle, &key).unwrap();
    assert_eq!((v.first_broken.as_ref(), v.entries), (None, entries), "{v:?}");
    assert!(v.checkpoints >= 1);
    // The key from the .pub file the server wrote works the same.
    let pub_file = dir.join("audit-signing.key.pub");
    assert!(
        lobby_kiosk_client::audit::verify_file(&bundle, pub_file.to_str().unwrap())
            .unwrap()
            .first_broken
            .is_none()
    );

    let lines: Vec<String> = std::fs::read_to_string(&bundle)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let first_entry = lines.iter().position(|l| l.starts_with("{\"entry\"")).unwrap();
    let check = |name: &str, lines: &[String]| {
        let f = dir.join(format!("{name}.jsonl"));
        std::fs::write(&f, lines.join("\n")).unwrap();
        lobby_kiosk_client::audit::verify_file(&f, &key)
    };
    // An altered entry (its details), the third.
    let mut altered = lines.clone();
    altered[first_entry + 2] = altered[first_entry + 2].replacen("\\\"", "\\\"x", 1);
    let v = check("altered", &altered).unwrap();
    assert_eq!(v.first_broken.as_ref().map(|b| b.0), Some(3), "{v:?}");
    // A removed entry, the fourth.
    let mut removed = lines.clone();
    removed.remove(first_entry + 3);
    let v = check("removed", &removed).unwrap();
    assert_eq!(v.first_broken.as_ref().map(|b| b.0), Some(4), "{v:?}");
    // The tail cut off: the last checkpoint names a later head.
    let cut = &lines[..lines.len() - 3];
    let v = check("cut", cut).unwrap();
    assert!(v.first_broken.is_some(), "{v:?}");
    // Another server's key.
    let other = public_key_b64(&ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]));
    let f = dir.join("other.jsonl");
    std::fs::write(&f, lines.join("\n")).unwrap();
    assert!(lobby_kiosk_client::audit::verify_file(&f, &other).is_err());
}
