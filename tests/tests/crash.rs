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
