//! `lobby-load`: closed-loop load against a running check-in server (Lobby's `lobby-server`, or the
//! Python peer, which serves the same `lobby.v1.KioskService.CheckIn`).
//!
//! N virtual kiosks, each on its own connection, send the kiosk frames (written by `lobby-stages`)
//! one after another for `--duration` seconds per concurrency level; the figures per level are
//! throughput, p50/p95/p99 latency and errors by gRPC code. The sweep ends with the highest
//! throughput whose p99 is at most `--p99-limit-ms`.
use anyhow::{Context, Result};
use clap::Parser;
use lobby_bench::{kiosk, metrics::percentile, record};
use lobby_kiosk_client::{connect, kiosk as kiosk_client, proto as pv, reservations};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Closed-loop check-in load against a running server, swept over concurrency")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: String,
    /// Token file with `kiosk=TOKEN` (and `enroller=TOKEN` for --enrol-from) lines, as the server
    /// writes to lobby-data/initial-tokens.txt. Without it, calls carry no usable token (the peer).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Kiosk frames (lobby-stages --frames-out).
    #[arg(long, default_value = "bench/out/frames")]
    frames: PathBuf,
    /// Concurrency levels (virtual kiosks), comma-separated.
    #[arg(long, default_value = "1,2,4,8", value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Seconds per level (after a warm-up of 2 s).
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Enrol one photo per identity of DATA/uncropped_identities first (needs the enroller token).
    #[arg(long)]
    enrol_from: Option<PathBuf>,
    /// Property the kiosk token is bound to (for --enrol-from).
    #[arg(long, default_value = "demo-hotel")]
    property: String,
    #[arg(long, default_value_t = 200.0)]
    p99_limit_ms: f64,
    /// Name of the system under test, for the report.
    #[arg(long, default_value = "lobby")]
    label: String,
    #[command(flatten)]
    out: record::Output,
}

fn token(file: &Option<PathBuf>, role: &str) -> Result<String> {
    let Some(f) = file else {
        return Ok("none".into());
    };
    let text = std::fs::read_to_string(f).with_context(|| f.display().to_string())?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{role}=")))
        .map(|t| t.trim().to_string())
        .with_context(|| format!("no {role}= line in {}", f.display()))
}

async fn enrol(args: &Args, data: &std::path::Path) -> Result<usize> {
    let mut c = reservations(connect(&args.addr).await?, &token(&args.token_file, "enroller")?)?;
    let split = kiosk::split(data)?;
    let today = chrono::Utc::now().date_naive();
    let mut n = 0;
    for (k, (path, id)) in split.enrol.iter().enumerate() {
        let code = format!("LOAD-{k:03}");
        c.upsert_reservation(pv::UpsertReservationRequest {
            reservation: Some(pv::Reservation {
                property_id: args.property.clone(),
                reservation_code: code.clone(),
                guest: Some(pv::Guest {
                    full_name: format!("Load guest {k} ({id})"),
                    guest_ref: format!("load-{k}"),
                    ..Default::default()
                }),
                arrival_date: today.format("%Y-%m-%d").to_string(),
                departure_date: (today + chrono::Days::new(2)).format("%Y-%m-%d").to_string(),
                status: pv::ReservationStatus::Booked as i32,
                ..Default::default()
            }),
        })
        .await?;
        let r = c
            .enroll_face(pv::EnrollFaceRequest {
                property_id: args.property.clone(),
                reservation_code: code,
                photos: vec![std::fs::read(path)?],
                consent: Some(pv::Consent {
                    granted: true,
                    method: "load-test".into(),
                    text_version: "v1".into(),
                    recorded_at_ms: 0,
                }),
            })
            .await?
            .into_inner();
        n += usize::from(r.templates_stored > 0);
    }
    Ok(n)
}

struct Level {
    concurrency: usize,
    ok: usize,
    errors: BTreeMap<String, usize>,
    lat_ms: Vec<f64>,
    secs: f64,
}

async fn run_level(args: &Args, frames: Arc<Vec<Vec<u8>>>, n: usize, secs: f64) -> Result<Level> {
    let tok = token(&args.token_file, "kiosk")?;
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(kiosk_client(connect(&args.addr).await?, &tok)?);
    }
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for (w, mut c) in clients.into_iter().enumerate() {
        let frames = frames.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors: BTreeMap<String, usize> = BTreeMap::new();
            let mut i = w * 7;
            while Instant::now() < end {
                let photo = frames[i % frames.len()].clone();
                i += 1;
                let t = Instant::now();
                let r = c
                    .check_in(pv::CheckInRequest {
                        photo,
                        ..Default::default()
                    })
                    .await;
                match r {
                    Ok(_) => lat.push(t.elapsed().as_secs_f64() * 1000.0),
                    Err(s) => *errors.entry(format!("{:?}", s.code())).or_default() += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut level = Level {
        concurrency: n,
        ok: 0,
        errors: BTreeMap::new(),
        lat_ms: Vec::new(),
        secs: 0.0,
    };
    for t in tasks {
        let (lat, errors) = t.await?;
        level.ok += lat.len();
        level.lat_ms.extend(lat);
        for (k, v) in errors {
            *level.errors.entry(k).or_default() += v;
        }
    }
    level.secs = start.elapsed().as_secs_f64();
    Ok(level)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let frames: Vec<Vec<u8>> = kiosk::read_frames(&args.frames)?.into_iter().map(|f| f.jpeg).collect();
    let frames = Arc::new(frames);
    if let Some(data) = &args.enrol_from {
        let n = enrol(&args, data).await?;
        eprintln!("enrolled {n} guests into {}", args.property);
    }
    let mut rows = Vec::new();
    let mut table = format!(
        "{}: closed loop, {} kiosk frames, {} s per level.\n\n| kiosks | check-ins/s | p50 ms | p95 ms | p99 ms | ok | errors |\n|---|---|---|---|---|---|---|\n",
        args.label,
        frames.len(),
        args.duration
    );
    let mut best: Option<(usize, f64)> = None;
    for &n in &args.concurrency {
        run_level(&args, frames.clone(), n, 2.0).await?; // warm-up
        let l = run_level(&args, frames.clone(), n, args.duration).await?;
        let tput = l.ok as f64 / l.secs;
        let (p50, p95, p99) = (
            percentile(&l.lat_ms, 50.0),
            percentile(&l.lat_ms, 95.0),
            percentile(&l.lat_ms, 99.0),
        );
        let errs: usize = l.errors.values().sum();
        let line = format!(
            "| {} | {tput:.1} | {p50:.1} | {p95:.1} | {p99:.1} | {} | {} |\n",
            l.concurrency,
            l.ok,
            if errs == 0 {
                "0".to_string()
            } else {
                format!("{:?}", l.errors)
            }
        );
        eprint!("{line}");
        table.push_str(&line);
        if p99 <= args.p99_limit_ms && errs == 0 && best.is_none_or(|b| tput > b.1) {
            best = Some((n, tput));
        }
        rows.push(
            json!({"concurrency": n, "throughput": tput, "p50_ms": p50, "p95_ms": p95, "p99_ms": p99,
                          "ok": l.ok, "errors": l.errors}),
        );
    }
    let verdict = match best {
        Some((n, t)) => format!(
            "\nHighest throughput with p99 <= {} ms and no errors: **{t:.1} check-ins/s** at {n} kiosks.\n",
            args.p99_limit_ms
        ),
        None => format!("\nNo level kept p99 <= {} ms without errors.\n", args.p99_limit_ms),
    };
    table.push_str(&verdict);
    println!("{table}");
    let report = json!({"label": args.label, "levels": rows,
        "best": best.map(|(n, t)| json!({"concurrency": n, "throughput": t})),
        "p99_limit_ms": args.p99_limit_ms, "machine": record::machine_facts()});
    args.out.emit("lobby-load", &table, &report)?;
    Ok(())
}
