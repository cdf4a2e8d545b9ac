//! Several nodes on one PostgreSQL database (issue 19): check-ins per second of one node against
//! two, each node pinned to its own core (`taskset`), and how long an enrolment and an erasure
//! acknowledged by node A take to reach node B's index.
//!
//! Real `lobby-server` processes, real photos (LFW guests with two photos: enrolled from the first
//! through node A, checked in 1:N with the second), a database created for the run on the
//! PostgreSQL server `--postgres` names (start one as in the README).
//!
//!   lobby-nodes --postgres "host=/tmp/pg port=5432 user=postgres" [--guests 40] [--duration 20]

use anyhow::{Context, Result};
use clap::Parser;
use lobby_bench::crash::server::{write_token_file, Credential, Launch, Server};
use lobby_bench::{e2e, record};
use lobby_kiosk_client::{self as client, proto as pv};
use lobby_service::config::Role;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Two Lobby nodes on one PostgreSQL: throughput of one node vs two, propagation delay")]
struct Args {
    /// A libpq connection string without `dbname`, of a server where a database is created.
    #[arg(long)]
    postgres: String,
    #[arg(long, env = "LOBBY_TEST_DATA", default_value = "../shared/data")]
    data: PathBuf,
    /// The server binary [default: lobby-server beside this binary].
    #[arg(long)]
    server: Option<PathBuf>,
    /// Installed models [default: LOBBY_MODEL_DIR].
    #[arg(long, env = "LOBBY_MODEL_DIR")]
    models: PathBuf,
    /// Guests enrolled (and checked in round after round).
    #[arg(long, default_value_t = 40)]
    guests: usize,
    /// Kiosks per node in the throughput runs (closed loop).
    #[arg(long, default_value_t = 4)]
    kiosks: usize,
    /// Seconds per throughput run.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Enrolments and erasures timed for the propagation delay.
    #[arg(long, default_value_t = 40)]
    samples: usize,
    #[arg(long, default_value = "target/lobby-nodes")]
    work: PathBuf,
    #[command(flatten)]
    out: record::Output,
}

const PROPERTY: &str = "nodes-hotel";
const DB: &str = "lobby_nodes_bench";

fn pin(server: &Server, core: usize) -> Result<()> {
    let st = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", &core.to_string(), &server.pid().to_string()])
        .output()
        .context("taskset")?;
    anyhow::ensure!(st.status.success(), "taskset: {}", String::from_utf8_lossy(&st.stderr));
    Ok(())
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

async fn indexed(addr: &str, token: &str) -> Result<u64> {
    Ok(client::staff(client::connect(addr).await?, token)?
        .check_index(pv::CheckIndexRequest {
            property_id: PROPERTY.into(),
        })
        .await?
        .into_inner()
        .indexed)
}

fn booking(code: &str, who: &str) -> pv::UpsertReservationRequest {
    let today = chrono::Local::now().date_naive();
    pv::UpsertReservationRequest {
        reservation: Some(pv::Reservation {
            property_id: PROPERTY.into(),
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
    }
}

fn enrolment(code: &str, photo: &[u8]) -> pv::EnrollFaceRequest {
    pv::EnrollFaceRequest {
        property_id: PROPERTY.into(),
        reservation_code: code.into(),
        photos: vec![photo.to_vec()],
        consent: Some(pv::Consent {
            granted: true,
            method: "booking-form".into(),
            text_version: "v1".into(),
            recorded_at_ms: 0,
        }),
    }
}

/// Check-ins per second with `kiosks` closed-loop kiosks on each address, for `secs`.
async fn throughput(addrs: &[String], kiosk: &str, kiosks: usize, probes: Arc<Vec<Vec<u8>>>, secs: f64) -> Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for (n, addr) in addrs.iter().enumerate() {
        for k in 0..kiosks {
            let mut c = client::kiosk(client::connect(addr).await?, kiosk)?;
            let (done, errors, probes) = (done.clone(), errors.clone(), probes.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = n * 7919 + k * 104_729;
                while Instant::now() < end {
                    let r = c
                        .check_in(pv::CheckInRequest {
                            photo: probes[i % probes.len()].clone(),
                            ..Default::default()
                        })
                        .await;
                    match r {
                        Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                    i += 1;
                }
            }));
        }
    }
    for t in tasks {
        t.await?;
    }
    let e = errors.load(Ordering::Relaxed);
    if e > 0 {
        eprintln!("{e} check-ins answered with an error");
    }
    Ok(done.load(Ordering::Relaxed) as f64 / secs)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let server = match &args.server {
        Some(s) => s.clone(),
        None => std::env::current_exe()?.with_file_name("lobby-server"),
    };
    let (pool, _) = e2e::lfw(&args.data)?;
    let guests: Vec<_> = pool.into_iter().take(args.guests + args.samples).collect();
    anyhow::ensure!(guests.len() == args.guests + args.samples, "not enough LFW guests");
    let _ = std::fs::remove_dir_all(&args.work);
    std::fs::create_dir_all(&args.work)?;
    let (admin, conn) = tokio_postgres::connect(&format!("{} dbname=postgres", args.postgres), tokio_postgres::NoTls)
        .await
        .context("connecting to PostgreSQL")?;
    let h = tokio::spawn(conn);
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
        .await?;
    admin.batch_execute(&format!("CREATE DATABASE {DB}")).await?;
    drop(admin);
    let _ = h.await;
    let url = format!("{} dbname={DB}", args.postgres);
    let pms = Credential::new("nodes-pms", Role::Enroller, None);
    let desk = Credential::new("nodes-desk", Role::Staff, None);
    let kiosk = Credential::new("nodes-kiosk", Role::Kiosk, Some(PROPERTY));
    let tokens = args.work.join("tokens.toml");
    write_token_file(&tokens, &[pms.clone(), desk.clone(), kiosk.clone()])?;
    let abs = |p: &std::path::Path| std::path::absolute(p).map(|p| p.display().to_string());
    let launch = |node: &str| -> Result<Launch> {
        Ok(Launch {
            binary: server.clone(),
            data_dir: args.work.join(node),
            log: args.work.join(format!("{node}.log")),
            env: vec![
                ("LOBBY__STORE__URL".into(), url.clone()),
                ("LOBBY__MODELS__DIR".into(), abs(&args.models)?),
                ("LOBBY__AUTH__TOKEN_FILES".into(), format!("[{:?}]", abs(&tokens)?)),
                ("LOBBY__POLICY__LIVENESS_THRESHOLD".into(), "0".into()),
                ("LOBBY__LIMITS__KIOSK_FRAMES_PER_MINUTE".into(), "1000000".into()),
                ("LOBBY__LIMITS__KIOSK_FRAME_BURST".into(), "100000".into()),
                ("LOBBY__LIMITS__MAX_CONCURRENT_ANALYSES".into(), "1".into()),
                ("LOBBY__LIMITS__QUEUE_WAIT_MS".into(), "30000".into()),
                ("OMP_NUM_THREADS".into(), "1".into()),
            ],
        })
    };
    let (a, _) = Server::start(&launch("a")?).await.context("node A")?;
    std::fs::create_dir_all(args.work.join("b"))?;
    for f in ["template.key", "audit-signing.key"] {
        std::fs::copy(args.work.join("a").join(f), args.work.join("b").join(f))?;
    }
    let (b, _) = Server::start(&launch("b")?).await.context("node B")?;
    pin(&a, 0)?;
    pin(&b, 1)?;

    // Guests, enrolled through A.
    let mut rs_a = client::reservations(client::connect(&a.addr).await?, &pms.token)?;
    let mut probes = Vec::new();
    for (i, g) in guests.iter().take(args.guests).enumerate() {
        let code = format!("N-{i}");
        rs_a.upsert_reservation(booking(&code, &g.identity)).await?;
        for p in &g.enrol {
            if rs_a.enroll_face(enrolment(&code, &std::fs::read(p)?)).await.is_ok() {
                break;
            }
        }
        probes.push(std::fs::read(&g.probes[0])?);
    }
    let probes = Arc::new(probes);

    // Propagation: each enrolment and erasure acknowledged by A, until B's index shows it.
    let mut enrol_ms = Vec::new();
    let mut erase_ms = Vec::new();
    for (i, g) in guests.iter().skip(args.guests).enumerate() {
        let code = format!("P-{i}");
        rs_a.upsert_reservation(booking(&code, &g.identity)).await?;
        let photo = std::fs::read(&g.enrol[0])?;
        if rs_a.enroll_face(enrolment(&code, &photo)).await.is_err() {
            continue;
        }
        // A indexed the templates before it answered: B must come to hold as many.
        let t = Instant::now();
        let target = indexed(&a.addr, &desk.token).await?;
        while indexed(&b.addr, &desk.token).await? != target {
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(10),
                "enrolment {code} never reached B"
            );
        }
        enrol_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        rs_a.erase_guest(pv::EraseGuestRequest {
            property_id: PROPERTY.into(),
            reservation_code: code.clone(),
            reason: "benchmark".into(),
        })
        .await?;
        let t = Instant::now();
        let target = indexed(&a.addr, &desk.token).await?;
        while indexed(&b.addr, &desk.token).await? != target {
            anyhow::ensure!(t.elapsed() < Duration::from_secs(10), "erasure {code} never reached B");
        }
        erase_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }

    // Throughput: A alone, then A and B (each pinned to its core), the same kiosks per node.
    throughput(
        std::slice::from_ref(&a.addr),
        &kiosk.token,
        args.kiosks,
        probes.clone(),
        3.0,
    )
    .await?;
    let one = throughput(
        std::slice::from_ref(&a.addr),
        &kiosk.token,
        args.kiosks,
        probes.clone(),
        args.duration,
    )
    .await?;
    let two = throughput(
        &[a.addr.clone(), b.addr.clone()],
        &kiosk.token,
        args.kiosks,
        probes.clone(),
        args.duration,
    )
    .await?;
    drop((a, b));

    let n = enrol_ms.len();
    let text = format!(
        "Two nodes on one PostgreSQL (each `lobby-server` pinned to one core with `taskset`; PostgreSQL and the load generator share the machine's cores): {} guests enrolled through node A, checked in 1:N with their second photo by {} closed-loop kiosks per node for {:.0} s. **One node {one:.1} check-ins/s, two nodes {two:.1}/s ({:.2}x).** Propagation to node B's index, from node A's acknowledgement ({n} each): enrolment p50 **{:.1} ms**, p99 **{:.1} ms**; erasure p50 **{:.1} ms**, p99 **{:.1} ms** (B's index polled over gRPC).",
        args.guests,
        args.kiosks,
        args.duration,
        two / one,
        percentile(&mut enrol_ms.clone(), 0.5),
        percentile(&mut enrol_ms.clone(), 0.99),
        percentile(&mut erase_ms.clone(), 0.5),
        percentile(&mut erase_ms.clone(), 0.99),
    );
    println!("{text}");
    let report = serde_json::json!({
        "one_node_per_s": one, "two_nodes_per_s": two, "guests": args.guests, "kiosks_per_node": args.kiosks,
        "duration_s": args.duration, "enrol_ms": enrol_ms, "erase_ms": erase_ms, "machine": record::machine_facts(),
    });
    args.out.emit("lobby-nodes", &text, &report)?;
    Ok(())
}
