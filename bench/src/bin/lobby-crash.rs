//! `lobby-crash`: crash trials (issue 18, point 6). Per trial a real `lobby-server` process runs a
//! seeded mix of bookings, enrolments (real photos), health codes, check-ins (unary, streams,
//! declines), staff overrides and erasures from several clients, is killed with SIGKILL at a seeded
//! moment, restarted on the same data directory, and checked: every acknowledged write present (an
//! acknowledged erasure erased), nothing half-written, the audit trail and its checkpoints
//! verified, each property's index equal to the store. Exits non-zero on any violation.
//! What is checked and how: `lobby_bench::crash`.

use anyhow::{bail, Result};
use clap::Parser;
use lobby_bench::crash::{self, Config};
use lobby_bench::record;
use lobby_models::{default_model_dir, ensure, Source};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Crash trials: SIGKILL a loaded lobby-server, restart it, check every acknowledged write")]
struct Args {
    #[arg(long, default_value_t = 100)]
    trials: usize,
    #[arg(long, default_value_t = 20261207)]
    seed: u64,
    /// Clients at once (each its own reservation system, kiosk and front desk, and guests).
    #[arg(long, default_value_t = 4)]
    clients: usize,
    #[arg(long, default_value_t = 2)]
    properties: usize,
    /// Guests each client books per trial.
    #[arg(long, default_value_t = 8)]
    guests: usize,
    /// The SIGKILL falls uniformly between these, ms after the load starts.
    #[arg(long, default_value_t = 500)]
    kill_min_ms: u64,
    #[arg(long, default_value_t = 5000)]
    kill_max_ms: u64,
    /// The server binary [default: lobby-server beside this binary].
    #[arg(long)]
    server: Option<PathBuf>,
    #[arg(long, default_value = "../shared/data", env = "LOBBY_TEST_DATA")]
    data: PathBuf,
    /// Installed models [default: LOBBY_MODEL_DIR, else lobby-data/models].
    #[arg(long)]
    models: Option<PathBuf>,
    /// Where the trials' directories go.
    #[arg(long, default_value = "target/lobby-crash")]
    work: PathBuf,
    /// Keep every trial's directory (those with a violation are always kept).
    #[arg(long)]
    keep: bool,
    /// Run the server on PostgreSQL: a libpq connection string without `dbname` (e.g.
    /// `host=/tmp/pg port=5432 user=postgres`) of a server where a database is created per trial.
    #[arg(long)]
    postgres: Option<String>,
    #[command(flatten)]
    out: record::Output,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let server = match args.server.clone() {
        Some(s) => s,
        None => std::env::current_exe()?.with_file_name("lobby-server"),
    };
    let models = args.models.clone().unwrap_or_else(default_model_dir);
    ensure(&models, &Source::from_env())?;
    let cfg = Config {
        server,
        data: args.data.clone(),
        models,
        work: args.work.clone(),
        trials: args.trials,
        seed: args.seed,
        clients: args.clients,
        properties: args.properties,
        guests: args.guests,
        kill_ms: (args.kill_min_ms, args.kill_max_ms),
        keep: args.keep,
        postgres: args.postgres.clone(),
    };
    let t0 = Instant::now();
    let trials = crash::run(&cfg, |t| {
        println!("{}", t.line());
        for v in &t.violations {
            println!("  VIOLATION: {v}");
        }
        if let Some(d) = &t.kept {
            println!("  kept: {d}");
        }
    })
    .await?;
    let wall_s = t0.elapsed().as_secs_f64();
    let s = crash::summarise(&trials);
    let acked: Vec<String> = s.acked.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let total: u64 = s.acked.values().sum();
    let body = format!(
        "{} trials ({} clients over {} properties, {} guests each; SIGKILL {}-{} ms into the load, seed {}): \
**{} violations** ({} trials with any). Acknowledged before the kills: {total} operations ({}); \
{} calls cut by the kills, {} RESOURCE_EXHAUSTED, {} refused on purpose. Checked after the restarts: \
{} reservations, {} decisions, {} overrides, {} 1:N probes of the index. Restart to SERVING: p50 \
{:.0} ms, max {:.0} ms. Wall time {:.0} s.",
        s.trials,
        cfg.clients,
        cfg.properties,
        cfg.guests,
        cfg.kill_ms.0,
        cfg.kill_ms.1,
        cfg.seed,
        s.violations,
        s.trials_with_violations,
        acked.join(", "),
        s.cut,
        s.busy,
        s.refused,
        s.reservations_checked,
        s.decisions_checked,
        s.overrides_checked,
        s.index_probes,
        s.restart_ms_p50,
        s.restart_ms_max,
        wall_s
    );
    println!("\n{body}");
    let report = serde_json::json!({
        "summary": s,
        "trials": trials,
        "machine": record::machine_facts(),
    });
    args.out.emit("lobby-crash", &body, &report)?;
    if s.violations > 0 {
        bail!("{} violations in {} trials", s.violations, s.trials_with_violations);
    }
    Ok(())
}
