use super::rows::{SCHEMA_V1, SCHEMA_VERSION};
use super::*;
use rusqlite::Connection;

/// A store as the server before schema version 2 left it, with one decision and one template.
fn version_1_store(path: &std::path::Path) {
    let c = Connection::open(path).unwrap();
    c.execute_batch(&format!("BEGIN; {SCHEMA_V1} PRAGMA user_version = 1; COMMIT;"))
        .unwrap();
    c.execute_batch(
        "INSERT INTO guests (guest_id, full_name, guest_ref) VALUES ('g1', 'A', 'r');
         INSERT INTO reservations (property_id, code, guest_id, arrival, departure, status)
             VALUES ('p', 'R1', 'g1', '2027-01-15', '2027-01-16', 'BOOKED');
         INSERT INTO templates (guest_id, property_id, model_id, kind, vector, created_at_ms)
             VALUES ('g1', 'p', 'm', 'clean', x'0000803f', 1);
         INSERT INTO decisions (id, property_id, kiosk_id, created_at_ms, outcome, reasons,
             reservation_code, guest_id, match_score, match_threshold, live, liveness_score, masked,
             health_colour, guest_message, final_outcome)
             VALUES ('d1', 'p', 'k', 1, 'REVIEW', '[\"LOW_MATCH_SCORE\"]', 'R1', 'g1', 0.5, 0.6, 1, 0.9, 0,
             'GREEN', 'm', 'REVIEW');",
    )
    .unwrap();
}

#[tokio::test]
async fn a_version_1_store_opens_and_keeps_its_decisions_and_templates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lobby.sqlite3");
    version_1_store(&path);
    let s = SqliteStore::open(&path, std::sync::Arc::new(TemplateKeys::ephemeral())).unwrap();
    let d = s.get_decision("d1").await.unwrap().expect("the old decision");
    assert_eq!((d.outcome, d.reservation_code.as_str()), (Outcome::Review, "R1"));
    assert_eq!(d.reasons, vec![Reason::LowMatchScore]);
    assert!(d.steps.is_empty() && d.cascade.is_none());
    assert_eq!((d.frames, d.fused_frames), (1, 1));
    assert_eq!(s.pending_reviews(None, None, 100).await.unwrap().len(), 1);
    let t = s.all_templates().await.unwrap();
    assert_eq!(
        (t.len(), t[0].kind, t[0].vector.as_slice()),
        (1, TemplateKind::Clean, &[1.0f32][..])
    );
    let v: i64 = s
        .with(|c| Ok(c.query_row("PRAGMA user_version", [], |r| r.get(0))?))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
    // Opened again: nothing is migrated twice.
    drop(s);
    SqliteStore::open(&path, std::sync::Arc::new(TemplateKeys::ephemeral())).unwrap();
}

/// A value the server never writes is named, with its table and key, not read as a default.
#[tokio::test]
async fn a_row_that_does_not_parse_is_corrupt_not_a_default() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lobby.sqlite3");
    version_1_store(&path);
    let s = SqliteStore::open(&path, std::sync::Arc::new(TemplateKeys::ephemeral())).unwrap();
    let corrupt = |sql: &'static str| s.with(move |c| Ok(c.execute_batch(sql)?)).unwrap();
    corrupt("UPDATE reservations SET arrival = 'soon'");
    match s.get_reservation("p", "R1").await {
        Err(StoreError::Corrupt { table, key, what }) => {
            assert_eq!((table, key.as_str()), ("reservations", "p/R1"));
            assert!(what.contains("arrival"), "{what}");
        }
        other => panic!("{other:?}"),
    }
    corrupt("UPDATE reservations SET arrival = '2027-01-15', status = 'MAYBE'");
    assert!(matches!(
        s.get_reservation("p", "R1").await,
        Err(StoreError::Corrupt { .. })
    ));
    corrupt("UPDATE decisions SET reasons = '[\"BECAUSE\"]'");
    match s.get_decision("d1").await {
        Err(StoreError::Corrupt { table, key, .. }) => assert_eq!((table, key.as_str()), ("decisions", "d1")),
        other => panic!("{other:?}"),
    }
    corrupt("UPDATE templates SET kind = 'blurry'");
    assert!(matches!(
        s.all_templates().await,
        Err(StoreError::Corrupt { table: "templates", .. })
    ));
}

#[tokio::test]
async fn expected_guests_are_the_ones_arriving_within_the_slack() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(
        &dir.path().join("lobby.sqlite3"),
        std::sync::Arc::new(TemplateKeys::ephemeral()),
    )
    .unwrap();
    let day = |d: u32| chrono::NaiveDate::from_ymd_opt(2027, 1, d).unwrap();
    for (code, arrival, departure, status) in [
        ("A", 15, 17, ResStatus::Booked),
        ("B", 17, 18, ResStatus::Booked),
        ("C", 10, 15, ResStatus::Booked),
        ("D", 15, 16, ResStatus::Cancelled),
        ("E", 14, 16, ResStatus::CheckedIn),
    ] {
        let r = ReservationInput {
            property_id: "p".into(),
            code: code.into(),
            full_name: code.into(),
            guest_ref: code.into(),
            arrival: day(arrival),
            departure: day(departure),
            status,
        };
        s.upsert_reservation(&r, "t", 0).await.unwrap();
    }
    let code_of = |g: &String| {
        let s = &s;
        let g = g.clone();
        async move { s.reservation_of_guest(&g).await.unwrap().unwrap().code }
    };
    let mut codes = Vec::new();
    for g in s.expected_guests("p", day(15), 0).await.unwrap() {
        codes.push(code_of(&g).await);
    }
    codes.sort();
    assert_eq!(codes, ["A", "E"]);
    // One day of slack: C (leaving today, the 15th) is searched still; B (arriving on the 17th) not yet.
    let mut codes = Vec::new();
    for g in s.expected_guests("p", day(15), 1).await.unwrap() {
        codes.push(code_of(&g).await);
    }
    codes.sort();
    assert_eq!(codes, ["A", "C", "E"]);
    assert!(s.expected_guests("other", day(15), 1).await.unwrap().is_empty());
}
