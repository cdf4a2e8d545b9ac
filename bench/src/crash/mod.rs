//! Crash trials (issue 18, point 6): a real `lobby-server` process under a seeded mix of writes from
//! several clients, killed with SIGKILL at a seeded moment, restarted on the same data directory,
//! then checked:
//!
//! - every write a client saw acknowledged reads back (reservations with their names, stay and
//!   status; health codes; enrolments' templates; decisions with their outcome and kiosk;
//!   overrides); an acknowledged erasure stays erased (erased, or not found), keeping no name,
//!   templates, consent or health code;
//! - nothing is half-written: a template count that no enrolment leaves, templates without consent
//!   or consent without templates, a decision without its audit entry (`VerifyAuditTrail`
//!   cross-checks every decision and override against the trail);
//! - the audit trail verifies against every signed checkpoint, right after the restart and after
//!   the checks, and has at least one entry per acknowledged write; the restarted server signs
//!   checkpoints (every 20 entries or 1 s here);
//! - each property's Faiss index equals the store: `FrontDeskService.CheckIndex` compares them by
//!   template id, and from outside, each enrolment photo finds its reservation at a 1:N check-in
//!   exactly when the store holds that reservation's templates (never once erased).
//!
//! A write whose answer the kill cut (or that failed with an error that does not say whether it was
//! committed) may or may not be there; each reservation is written by one client, one call at a
//! time, so what each field may read back is well defined ([`ledger`]). Each trial has its own data
//! directory (removed afterwards, kept when a violation is found); the operations and the kill
//! moment follow the seed, the interleaving of the clients does not.

pub mod check;
pub mod ledger;
pub mod load;
pub mod server;

use crate::e2e::{self, Guest};
use anyhow::{bail, Context, Result};
use ledger::{Counts, Ledger, KINDS};
use lobby_service::config::Role;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use server::{Credential, Launch, Server};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How to run the trials.
#[derive(Debug, Clone)]
pub struct Config {
    /// The `lobby-server` binary.
    pub server: PathBuf,
    /// Photos, in the layout of `../shared/data` (LFW identities with two or more photos).
    pub data: PathBuf,
    /// Installed, verified models (the server's `models.dir`).
    pub models: PathBuf,
    /// Each trial's directory goes here (`trial-NNN`: the data directory, the token file, the
    /// server's log).
    pub work: PathBuf,
    pub trials: usize,
    pub seed: u64,
    /// Clients at once, each with its own credentials and guests.
    pub clients: usize,
    /// Properties the clients are spread over.
    pub properties: usize,
    /// Guests each client books in a trial.
    pub guests: usize,
    /// The kill falls uniformly in [min, max] ms after the load starts.
    pub kill_ms: (u64, u64),
    /// Keep every trial's directory (by default only those with a violation).
    pub keep: bool,
    /// Run the server on PostgreSQL: a libpq connection string (without `dbname`) of a server
    /// where the harness may create databases; each trial gets a fresh one. `None`: SQLite in the
    /// trial's data directory.
    pub postgres: Option<String>,
}

/// One trial's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    pub trial: usize,
    pub seed: u64,
    /// When the SIGKILL was sent, after the load started.
    pub kill_ms: f64,
    /// First start to SERVING.
    pub start_ms: f64,
    /// Restart (on the same data directory) to SERVING.
    pub restart_ms: f64,
    /// Operations acknowledged before the kill, by kind.
    pub acked: BTreeMap<String, u64>,
    /// Calls the kill cut.
    pub cut: u64,
    /// RESOURCE_EXHAUSTED answers (nothing done).
    pub busy: u64,
    /// Answered "nothing done" on purpose (an APPROVE of a reservation no longer BOOKED, a
    /// refused enrolment photo).
    pub refused: u64,
    pub reservations_checked: usize,
    pub decisions_checked: usize,
    pub overrides_checked: usize,
    pub index_probes: usize,
    pub indexed_templates: u64,
    pub audit_entries: u64,
    pub checkpoints_at_restart: u64,
    pub checkpoints: u64,
    pub violations: Vec<String>,
    pub wall_s: f64,
    /// The trial's directory, when kept.
    pub kept: Option<String>,
}

impl Trial {
    /// One line for the console.
    pub fn line(&self) -> String {
        let acked: Vec<String> = KINDS
            .iter()
            .map(|k| format!("{k} {}", self.acked.get(*k).copied().unwrap_or(0)))
            .collect();
        format!(
            "trial {:>3}: SIGKILL at {:.2} s; acknowledged {}; cut {}, busy {}, refused {}; restart to SERVING {:.0} ms; checked {} reservations, {} decisions, {} overrides, {} index probes, {} templates indexed, audit {} entries / {} checkpoints ({} at restart); {} violations ({:.1} s)",
            self.trial,
            self.kill_ms / 1000.0,
            acked.join(", "),
            self.cut,
            self.busy,
            self.refused,
            self.restart_ms,
            self.reservations_checked,
            self.decisions_checked,
            self.overrides_checked,
            self.index_probes,
            self.indexed_templates,
            self.audit_entries,
            self.checkpoints,
            self.checkpoints_at_restart,
            self.violations.len(),
            self.wall_s
        )
    }
}

/// Runs the trials one after another; `each` sees every trial as it ends. An error is a failure
/// of the harness itself (no photos, the server does not start the first time); what the server
/// does wrong is in the trials' violations.
pub async fn run(cfg: &Config, mut each: impl FnMut(&Trial)) -> Result<Vec<Trial>> {
    if cfg.clients == 0 || cfg.properties == 0 || cfg.guests < 3 {
        bail!("at least one client and one property, and three guests per client");
    }
    if cfg.kill_ms.0 > cfg.kill_ms.1 {
        bail!("the kill window's start is after its end");
    }
    if !cfg.server.is_file() {
        bail!(
            "no server binary at {} (build it: cargo build --release -p lobby-service)",
            cfg.server.display()
        );
    }
    let (pool, _) = e2e::lfw(&cfg.data)?;
    let needed = cfg.clients * cfg.guests;
    if pool.len() < needed {
        bail!(
            "{} LFW identities with two photos under {}, {needed} needed",
            pool.len(),
            cfg.data.display()
        );
    }
    std::fs::create_dir_all(&cfg.work).with_context(|| format!("creating {}", cfg.work.display()))?;
    let totals = Arc::new(Mutex::new(HashMap::new()));
    let mut out = Vec::new();
    for t in 0..cfg.trials {
        let trial = one(cfg, t, &pool, &totals).await?;
        each(&trial);
        out.push(trial);
    }
    Ok(out)
}

/// The seed of trial `t`.
fn trial_seed(seed: u64, t: usize) -> u64 {
    seed ^ (t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

async fn one(cfg: &Config, t: usize, pool: &[Guest], totals: &Arc<Mutex<HashMap<PathBuf, u32>>>) -> Result<Trial> {
    let t_start = Instant::now();
    let seed = trial_seed(cfg.seed, t);
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = cfg.work.join(format!("trial-{t:03}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let props: Vec<String> = (0..cfg.properties).map(|p| format!("crash-hotel-{p}")).collect();

    // Credentials: per client a reservation system, a kiosk (of its property) and a front desk;
    // the checker's own.
    let clients: Vec<(Credential, Credential, Credential)> = (0..cfg.clients)
        .map(|c| {
            (
                Credential::new(&format!("crash-pms-{c}"), Role::Enroller, None),
                Credential::new(&format!("crash-kiosk-{c}"), Role::Kiosk, Some(&props[c % props.len()])),
                Credential::new(&format!("crash-desk-{c}"), Role::Staff, None),
            )
        })
        .collect();
    let checker = check::CheckerCreds {
        pms: Credential::new("crash-check-pms", Role::Enroller, None),
        desk: Credential::new("crash-check-desk", Role::Staff, None),
        kiosks: props
            .iter()
            .map(|p| Credential::new(&format!("crash-check-kiosk-{p}"), Role::Kiosk, Some(p)))
            .collect(),
    };
    let mut all: Vec<Credential> = clients
        .iter()
        .flat_map(|(a, b, c)| [a.clone(), b.clone(), c.clone()])
        .collect();
    all.extend([checker.pms.clone(), checker.desk.clone()]);
    all.extend(checker.kiosks.iter().cloned());
    let tokens = dir.join("tokens.toml");
    server::write_token_file(&tokens, &all)?;
    let mut env = server_env(cfg, &tokens)?;
    if let Some(base) = &cfg.postgres {
        let db = format!("crash_{}_{t:03}", std::process::id());
        fresh_database(base, &db).await?;
        env.push(("LOBBY__STORE__URL".into(), format!("{base} dbname={db}")));
    }
    let launch = Launch {
        binary: cfg.server.clone(),
        data_dir: dir.join("data"),
        log: dir.join("server.log"),
        env,
    };

    let (server, start) = Server::start(&launch).await.context("the server's first start")?;
    let addr = server.addr.clone();

    // Guests: distinct identities, a share per client.
    let mut picks: Vec<usize> = (0..pool.len()).collect();
    picks.shuffle(&mut rng);
    let today = chrono::Local::now().date_naive();
    let shared = Arc::new(load::Shared {
        props: props.clone(),
        ledger: Mutex::new(Ledger::default()),
        killed: Default::default(),
        photo_totals: totals.clone(),
        arrival: today.to_string(),
        departure: today
            .checked_add_days(chrono::Days::new(2))
            .unwrap_or(today)
            .to_string(),
    });
    let kill_after = Duration::from_millis(rng.gen_range(cfg.kill_ms.0..=cfg.kill_ms.1));
    let mut tasks = Vec::new();
    for (c, (pms, kiosk, desk)) in clients.into_iter().enumerate() {
        let guests = picks[c * cfg.guests..(c + 1) * cfg.guests]
            .iter()
            .map(|&i| pool[i].clone())
            .collect();
        let setup = load::ClientSetup {
            index: c,
            prop: c % props.len(),
            pms,
            kiosk,
            desk,
            guests,
            code_prefix: format!("T{t:03}-C{c}"),
            seed: rng.gen(),
        };
        tasks.push(tokio::spawn(load::client(shared.clone(), setup, addr.clone())));
    }
    let t_load = Instant::now();
    tokio::time::sleep(kill_after).await;
    shared.killed.store(true, Ordering::SeqCst);
    let kill_ms = t_load.elapsed().as_secs_f64() * 1000.0;
    server.kill()?;
    let mut counts = Counts::default();
    for task in tasks {
        match tokio::time::timeout(Duration::from_secs(120), task).await {
            Ok(Ok(c)) => counts.merge(&c),
            Ok(Err(e)) => bail!("a client task failed: {e}"),
            Err(_) => bail!("a client was still running 120 s after the kill"),
        }
    }

    let mut violations = Vec::new();
    let (restart_ms, checked) = match Server::start(&launch).await {
        Ok((server, restart)) => {
            let checked = check::check(&server.addr, &checker, &shared, counts.audited()).await;
            server.kill()?;
            (restart.as_secs_f64() * 1000.0, checked)
        }
        Err(e) => {
            violations.push(format!("the server does not start again on its data directory: {e:#}"));
            (f64::NAN, check::Checked::default())
        }
    };
    violations.extend(
        shared
            .ledger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .anomalies
            .iter()
            .cloned(),
    );
    for v in checked.violations.iter() {
        if !violations.contains(v) {
            violations.push(v.clone());
        }
    }
    let kept = if cfg.keep || !violations.is_empty() {
        Some(dir.display().to_string())
    } else {
        let _ = std::fs::remove_dir_all(&dir);
        None
    };
    Ok(Trial {
        trial: t,
        seed,
        kill_ms,
        start_ms: start.as_secs_f64() * 1000.0,
        restart_ms,
        acked: counts.acked.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
        cut: counts.cut,
        busy: counts.busy,
        refused: counts.refused,
        reservations_checked: checked.reservations,
        decisions_checked: checked.decisions,
        overrides_checked: checked.overrides,
        index_probes: checked.probes,
        indexed_templates: checked.indexed,
        audit_entries: checked.audit_entries,
        checkpoints_at_restart: checked.checkpoints_at_restart,
        checkpoints: checked.checkpoints,
        violations,
        wall_s: t_start.elapsed().as_secs_f64(),
        kept,
    })
}

/// Creates database `db` (dropping one of that name first) on the PostgreSQL server `base` names.
async fn fresh_database(base: &str, db: &str) -> Result<()> {
    let (c, conn) = tokio_postgres::connect(&format!("{base} dbname=postgres"), tokio_postgres::NoTls)
        .await
        .context("connecting to PostgreSQL")?;
    let driver = tokio::spawn(conn);
    c.batch_execute(&format!("DROP DATABASE IF EXISTS {db}")).await?;
    c.batch_execute(&format!("CREATE DATABASE {db}")).await?;
    drop(c);
    let _ = driver.await;
    Ok(())
}

/// The trial server's settings: the models, the token file, checkpoints every 20 entries or 1 s,
/// kiosk frame limits out of the way, a long queue wait (the load is not an overload test).
fn server_env(cfg: &Config, tokens: &Path) -> Result<Vec<(String, String)>> {
    let abs = |p: &Path| -> Result<String> {
        Ok(std::path::absolute(p)
            .with_context(|| format!("{}", p.display()))?
            .display()
            .to_string())
    };
    Ok(vec![
        ("LOBBY__MODELS__DIR".into(), abs(&cfg.models)?),
        ("LOBBY__AUTH__TOKEN_FILES".into(), format!("[{:?}]", abs(tokens)?)),
        ("LOBBY__AUDIT__CHECKPOINT_EVERY_ENTRIES".into(), "20".into()),
        ("LOBBY__AUDIT__CHECKPOINT_EVERY_SECS".into(), "1".into()),
        ("LOBBY__LIMITS__KIOSK_FRAMES_PER_MINUTE".into(), "1000000".into()),
        ("LOBBY__LIMITS__KIOSK_FRAME_BURST".into(), "100000".into()),
        ("LOBBY__LIMITS__QUEUE_WAIT_MS".into(), "30000".into()),
        ("OMP_NUM_THREADS".into(), "1".into()),
    ])
}

/// The figures of a run: totals, restart times, violations.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub trials: usize,
    pub trials_with_violations: usize,
    pub violations: usize,
    pub acked: BTreeMap<String, u64>,
    pub cut: u64,
    pub busy: u64,
    pub refused: u64,
    pub reservations_checked: usize,
    pub decisions_checked: usize,
    pub overrides_checked: usize,
    pub index_probes: usize,
    pub kill_ms_min: f64,
    pub kill_ms_max: f64,
    pub restart_ms_p50: f64,
    pub restart_ms_max: f64,
    pub wall_s: f64,
}

pub fn summarise(trials: &[Trial]) -> Summary {
    let mut acked: BTreeMap<String, u64> = KINDS.iter().map(|k| (k.to_string(), 0)).collect();
    for t in trials {
        for (k, n) in &t.acked {
            *acked.entry(k.clone()).or_default() += n;
        }
    }
    let restarts: Vec<f64> = trials.iter().map(|t| t.restart_ms).filter(|x| x.is_finite()).collect();
    let kills = trials.iter().map(|t| t.kill_ms);
    Summary {
        trials: trials.len(),
        trials_with_violations: trials.iter().filter(|t| !t.violations.is_empty()).count(),
        violations: trials.iter().map(|t| t.violations.len()).sum(),
        acked,
        cut: trials.iter().map(|t| t.cut).sum(),
        busy: trials.iter().map(|t| t.busy).sum(),
        refused: trials.iter().map(|t| t.refused).sum(),
        reservations_checked: trials.iter().map(|t| t.reservations_checked).sum(),
        decisions_checked: trials.iter().map(|t| t.decisions_checked).sum(),
        overrides_checked: trials.iter().map(|t| t.overrides_checked).sum(),
        index_probes: trials.iter().map(|t| t.index_probes).sum(),
        kill_ms_min: kills.clone().fold(f64::INFINITY, f64::min),
        kill_ms_max: kills.fold(0.0, f64::max),
        restart_ms_p50: crate::metrics::percentile(&restarts, 50.0),
        restart_ms_max: restarts.iter().copied().fold(0.0, f64::max),
        wall_s: trials.iter().map(|t| t.wall_s).sum(),
    }
}
