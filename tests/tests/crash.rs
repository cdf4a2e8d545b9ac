//! Crash trials in the test suite (issue 18, point 6): five trials of `lobby-crash`
//! (`lobby_bench::crash`), smaller. Each runs a real server process (`lobby-server`'s source, built
//! by this package as `lobby-server-under-test`) under writes from three clients, kills it with
//! SIGKILL at a seeded moment, restarts it on the same data directory and checks every
//! acknowledged write, that nothing is half-written, the audit trail and its checkpoints, and each
//! property's index against the store. Real photos (`../shared/data`) and models; skipped loudly
//! without them, failed under CI=true.

use lobby_bench::crash::ledger::{K_CHECK_IN, K_ENROL, K_HEALTH, K_UPSERT};
use lobby_bench::crash::{self, Config};
use std::path::PathBuf;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_crash_trials_lose_no_acknowledged_write() {
    five_trials(None).await;
}

/// The same on PostgreSQL (a throwaway cluster, a fresh database per trial): the server process is
/// killed while the database lives on, and restarts on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_crash_trials_on_postgres_lose_no_acknowledged_write() {
    let Some(cluster) = lobby_tests::pg::cluster() else {
        return;
    };
    five_trials(Some(cluster.base_url())).await;
}

async fn five_trials(postgres: Option<String>) {
    let on = if postgres.is_some() { "pg" } else { "sqlite" };
    let Some(data) = lobby_tests::data_dir() else { return };
    if lobby_tests::model_paths().is_none() {
        return;
    }
    let work = lobby_tests::workspace_root()
        .join("target/lobby-test-data")
        .join(format!("crash-{on}-{}", std::process::id()));
    let cfg = Config {
        server: PathBuf::from(env!("CARGO_BIN_EXE_lobby-server-under-test")),
        data,
        models: lobby_tests::model_dir(),
        work: work.clone(),
        trials: 5,
        seed: 20261208,
        clients: 3,
        properties: 2,
        guests: 6,
        kill_ms: (500, 3000),
        keep: false,
        postgres,
    };
    let trials = crash::run(&cfg, |t| eprintln!("{}", t.line()))
        .await
        .expect("the trials ran");
    let violations: Vec<String> = trials
        .iter()
        .flat_map(|t| t.violations.iter().map(move |v| format!("trial {}: {v}", t.trial)))
        .collect();
    assert!(
        violations.is_empty(),
        "{} violations (trial directories kept under {}):\n{}",
        violations.len(),
        work.display(),
        violations.join("\n")
    );
    // Something was at stake: writes of each common kind acknowledged before the kills, and read
    // back after them.
    let s = crash::summarise(&trials);
    assert_eq!(s.trials, 5);
    for k in [K_UPSERT, K_ENROL, K_HEALTH, K_CHECK_IN] {
        assert!(s.acked.get(k).copied().unwrap_or(0) > 0, "no {k} acknowledged: {s:?}");
    }
    assert!(
        s.reservations_checked > 0 && s.decisions_checked > 0 && s.index_probes > 0,
        "{s:?}"
    );
    let _ = std::fs::remove_dir(&work);
}

/// Two `lobby-server` processes on one PostgreSQL database. A reservation system writes through
/// node A (bookings, enrolments) while its guests are checked on B; A is killed with SIGKILL
/// mid-load. B keeps serving; every write A acknowledged is in the database and visible on B, and
/// B's index holds every template the database holds. B takes writes alone, and A, restarted,
/// catches up on them (its index agrees with the store again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_nothing_and_the_other_keeps_serving() {
    use lobby_bench::crash::server::{write_token_file, Credential, Launch, Server};
    use lobby_kiosk_client::{self as client, proto as pv};
    use lobby_service::config::Role;
    use std::time::{Duration, Instant};

    let Some(data) = lobby_tests::data_dir() else { return };
    if lobby_tests::model_paths().is_none() {
        return;
    }
    let Some(cluster) = lobby_tests::pg::cluster() else {
        return;
    };
    let work = lobby_tests::server::scratch_dir("nodes-kill");
    let url = cluster.database(&lobby_tests::pg::db_name(&work));
    let property = "kill-hotel";
    let pms = Credential::new("kill-pms", Role::Enroller, None);
    let desk = Credential::new("kill-desk", Role::Staff, None);
    let kiosk = Credential::new("kill-kiosk", Role::Kiosk, Some(property));
    let tokens = work.join("tokens.toml");
    write_token_file(&tokens, &[pms.clone(), desk.clone(), kiosk.clone()]).unwrap();
    let launch = |node: &str| Launch {
        binary: PathBuf::from(env!("CARGO_BIN_EXE_lobby-server-under-test")),
        data_dir: work.join(node),
        log: work.join(format!("{node}.log")),
        env: vec![
            ("LOBBY__STORE__URL".into(), url.clone()),
            (
                "LOBBY__MODELS__DIR".into(),
                lobby_tests::model_dir().display().to_string(),
            ),
            (
                "LOBBY__AUTH__TOKEN_FILES".into(),
                format!("[{:?}]", tokens.display().to_string()),
            ),
            ("LOBBY__POLICY__LIVENESS_THRESHOLD".into(), "0".into()),
            ("LOBBY__LIMITS__KIOSK_FRAMES_PER_MINUTE".into(), "1000000".into()),
            ("LOBBY__LIMITS__KIOSK_FRAME_BURST".into(), "100000".into()),
            ("OMP_NUM_THREADS".into(), "1".into()),
        ],
    };
    let (a, _) = Server::start(&launch("a")).await.expect("node A starts");
    std::fs::create_dir_all(work.join("b")).unwrap();
    for f in ["template.key", "audit-signing.key"] {
        std::fs::copy(work.join("a").join(f), work.join("b").join(f)).expect("share the node keys");
    }
    let (b, _) = Server::start(&launch("b")).await.expect("node B starts");
    let rs = |addr: String| {
        let t = pms.token.clone();
        async move { client::reservations(client::connect(&addr).await.unwrap(), &t).unwrap() }
    };
    let today = chrono::Local::now().date_naive();
    let booking = move |code: &str, who: &str| pv::UpsertReservationRequest {
        reservation: Some(pv::Reservation {
            property_id: property.into(),
            reservation_code: code.into(),
            guest: Some(pv::Guest {
                guest_id: String::new(),
                full_name: format!("Guest {who}"),
                guest_ref: who.into(),
            }),
            arrival_date: today.to_string(),
            departure_date: (today + chrono::Duration::days(1)).to_string(),
            status: pv::ReservationStatus::Booked as i32,
            ..Default::default()
        }),
    };
    let enrolment = |code: &str, photo: &std::path::Path| pv::EnrollFaceRequest {
        property_id: property.into(),
        reservation_code: code.into(),
        photos: vec![std::fs::read(photo).unwrap()],
        consent: Some(pv::Consent {
            granted: true,
            method: "booking-form".into(),
            text_version: "v1".into(),
            recorded_at_ms: 0,
        }),
    };
    let photos: Vec<(String, Vec<PathBuf>)> = lobby_tests::guests::identities(&data)
        .into_iter()
        .filter(|(_, p)| p.len() >= 2)
        .take(12)
        .collect();

    // The load on A: bookings, each enrolled, until A is killed; what A acknowledged is noted.
    let a_addr = a.addr.clone();
    let load = {
        let (photos, rs_a) = (photos.clone(), rs(a_addr.clone()).await);
        tokio::spawn(async move {
            let mut rs_a = rs_a;
            let mut acked: Vec<(String, bool)> = Vec::new();
            for i in 0.. {
                let (who, ps) = &photos[i % photos.len()];
                let code = format!("K-{i}");
                if rs_a
                    .upsert_reservation(booking(&code, &format!("{who}-{i}")))
                    .await
                    .is_err()
                {
                    break;
                }
                acked.push((code.clone(), false));
                if i < photos.len() {
                    if rs_a.enroll_face(enrolment(&code, &ps[0])).await.is_err() {
                        break;
                    }
                    acked.last_mut().unwrap().1 = true;
                }
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(2500)).await;
    a.kill().expect("SIGKILL node A");
    let acked = load.await.unwrap();
    let enrolled = acked.iter().filter(|(_, e)| *e).count();
    eprintln!(
        "node A acknowledged {} bookings ({enrolled} enrolled) before the kill",
        acked.len()
    );
    assert!(
        acked.len() >= 3 && enrolled >= 1,
        "some load before the kill: {acked:?}"
    );

    // B keeps serving, and every acknowledged write is there.
    let mut rs_b = rs(b.addr.clone()).await;
    for (code, enrolled) in &acked {
        let r = rs_b
            .get_reservation(pv::GetReservationRequest {
                property_id: property.into(),
                reservation_code: code.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("{code}, acknowledged by A, not on B: {e}"))
            .into_inner();
        if *enrolled {
            assert_eq!(r.templates, 4, "{code}: enrolment acknowledged by A");
        }
    }
    let check_index = |addr: String| {
        let t = desk.token.clone();
        async move {
            client::staff(client::connect(&addr).await.unwrap(), &t)
                .unwrap()
                .check_index(pv::CheckIndexRequest {
                    property_id: property.into(),
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut idx = check_index(b.addr.clone()).await;
    while (idx.missing_from_index, idx.not_in_store) != (0, 0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        idx = check_index(b.addr.clone()).await;
    }
    assert_eq!(
        (idx.missing_from_index, idx.not_in_store),
        (0, 0),
        "B's index = the store: {idx:?}"
    );
    assert_eq!(idx.stored, 2 * enrolled as u64, "{idx:?}");

    // B alone takes a booking and an enrolment; A, restarted, catches up on them.
    let (who, ps) = &photos[photos.len() - 1];
    rs_b.upsert_reservation(booking("K-after", &format!("{who}-after")))
        .await
        .expect("B takes writes with A gone");
    rs_b.enroll_face(enrolment("K-after", &ps[0])).await.expect("B enrols");
    let (a, restart) = Server::start(&launch("a")).await.expect("node A restarts");
    eprintln!("node A restarted to SERVING in {} ms", restart.as_millis());
    let got = rs(a.addr.clone())
        .await
        .get_reservation(pv::GetReservationRequest {
            property_id: property.into(),
            reservation_code: "K-after".into(),
        })
        .await
        .expect("A sees what B took while it was down")
        .into_inner();
    assert_eq!(got.templates, 4);
    let idx = check_index(a.addr.clone()).await;
    assert_eq!(
        (idx.missing_from_index, idx.not_in_store),
        (0, 0),
        "A's index = the store: {idx:?}"
    );
    assert_eq!(idx.stored, 2 * enrolled as u64 + 2, "{idx:?}");
    drop((a, b));
    let _ = std::fs::remove_dir_all(&work);
}
