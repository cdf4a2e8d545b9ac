//! `lobby-soak`: one server on loopback, many kiosks, for a long while (issue 17, point 7).
//!
//! Starts a real server in this process (`lobby_service::server::run` on 127.0.0.1:0, its own data
//! directory under `target/`, the embedded default settings, one credential per kiosk, one staff, one
//! reservation system), enrols a first gallery of guests per property (LFW identities with two or
//! more photos, MFR2 identities from an unmasked photo), then for `--duration-secs` drives it with:
//!
//! - `--kiosks` kiosks (spread over `--properties` properties), each on its own connection, each
//!   mixing unary 1:N check-ins of enrolled guests, unary 1:1 check-ins with the guest's code,
//!   strangers (LFW identities never enrolled: 1:N, and 1:1 with a real guest's code) and check-in
//!   streams through the escalation ladder (`lobby_kiosk_client::ladder::drive`, a guest who gives
//!   the code when asked four times in five, lowers the mask when asked), pausing 0-2x `--think-ms`
//!   between check-ins;
//! - a reservation system enrolling new guests (upsert, health code, EnrollFace), re-enrolling guests
//!   once the identities run out, re-booking guests checked in (so they can check in again),
//!   renaming bookings, updating health codes (GREEN, YELLOW, RED) and erasing guests;
//! - a front desk paging through the pending reviews and overriding some (APPROVE when a
//!   reservation is attached, in half of those, else DENY, always with a reason), and checking the
//!   audit trail every minute.
//!
//! Deliberate overload: in the last `--overload-secs` of every `--overload-every` seconds the
//! kiosks stop pausing and each sends `--overload-parallel` unary check-ins at once, half of them
//! full-size photos (`uncropped_identities`, up to 7360 px), so the analysis queue overflows; RESOURCE_EXHAUSTED is then the expected answer and is
//! counted apart (by phase and cause). Any other error code is a failure. FAILED_PRECONDITION for a
//! staff APPROVE whose reservation is no longer BOOKED is a legitimate answer, counted apart.
//!
//! Approvals of someone other than the reservation's guest are counted (wrong guest, stranger) and
//! attributed: the datasets overlap by name (LFW's one-photo `Imran_Khan`, a "stranger", is MFR2's
//! enrolled `ImranKhan`; `uncropped_identities/joe_biden` is MFR2's `JoeBiden`), so each such
//! approval is classed as the same person enrolled from another dataset, an unnamed person
//! (deepface, CompreFace, InspireFace photos), or a different person.
//!
//! Every acknowledged write is recorded and checked afterwards against the server (GetReservation:
//! name of the last acknowledged upsert, templates, health code of the last acknowledged update,
//! erased; GetDecision for every decision id a kiosk was given: property, kiosk, outcome, and the
//! override exactly when one was acknowledged), and VerifyAuditTrail must report the trail intact
//! with at least as many entries as acknowledged audited writes.
//!
//! The process's RSS (`/proc/self/status` VmRSS: the server's and the clients', one process) and its
//! thread count are sampled every second, check-in p99 per 10 s window; all plotted to `--plot` (PNG).
//!
//! Bounded: a fixed number of tasks; each stops starting calls at the end of the duration and every
//! call still in flight is cut `--grace-secs` later (the hard stop); loopback only.
#![recursion_limit = "256"] // the report's `json!`

use anyhow::{bail, Context, Result};
use chrono::Days;
use clap::Parser;
use lobby_bench::e2e::{self, Guest};
use lobby_bench::metrics::percentile;
use lobby_bench::plot;
use lobby_bench::record;
use lobby_kiosk_client::ladder::{drive, LadderRun, ScriptedGuest};
use lobby_kiosk_client::proto::front_desk_service_client::FrontDeskServiceClient;
use lobby_kiosk_client::proto::kiosk_service_client::KioskServiceClient;
use lobby_kiosk_client::proto::reservation_service_client::ReservationServiceClient;
use lobby_kiosk_client::{connect, kiosk, outcome_name, proto as pv, reservations, staff, Authed};
use lobby_models::{default_model_dir, ensure, Source};
use lobby_service::auth::{hash_token, hex_digest, new_token, Credentials};
use lobby_service::config::{Role, Settings, TokenEntry};
use lobby_service::core::App;
use lobby_service::vision::Vision;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod desk;
mod kiosk;
mod pms;
mod server;
mod verify;
mod world;

use desk::*;
use kiosk::*;
use pms::*;
use server::*;
use verify::*;
use world::*;

#[derive(Parser)]
#[command(about = "Soak: one loopback server, many kiosks, writes checked afterwards, RSS and p99 over time")]
struct Args {
    #[arg(long, default_value = "../shared/data", env = "LOBBY_TEST_DATA")]
    data: PathBuf,
    #[arg(long)]
    models: Option<PathBuf>,
    /// How long the kiosks, the reservation system and the front desk run.
    #[arg(long, default_value_t = 600)]
    duration_secs: u64,
    /// Kiosks at once, each with its own credential and connection.
    #[arg(long, default_value_t = 64)]
    kiosks: usize,
    /// Properties the kiosks (round-robin) and guests are spread over.
    #[arg(long, default_value_t = 4)]
    properties: usize,
    /// Guests enrolled per property before the soak starts.
    #[arg(long, default_value_t = 25)]
    initial_guests: usize,
    /// A kiosk's mean pause between check-ins outside overload (uniform 0-2x), ms.
    #[arg(long, default_value_t = 1000)]
    think_ms: u64,
    /// Overload: the last --overload-secs of every --overload-every seconds (0: never).
    #[arg(long, default_value_t = 150)]
    overload_every: u64,
    #[arg(long, default_value_t = 30)]
    overload_secs: u64,
    /// Check-ins each kiosk sends at once during overload (half of them full-size photos).
    #[arg(long, default_value_t = 4)]
    overload_parallel: usize,
    /// Calls still in flight this long after the end are cut (the hard stop).
    #[arg(long, default_value_t = 30)]
    grace_secs: u64,
    /// RSS and p99 over time (PNG).
    #[arg(long, default_value = "bench/soak.png")]
    plot: PathBuf,
    #[arg(long, default_value_t = 20261207)]
    seed: u64,
    /// Keep the server's data directory (target/lobby-soak/<pid>) afterwards.
    #[arg(long)]
    keep_data: bool,
    #[command(flatten)]
    out: record::Output,
}

/// Photos that decode within the server's pixel bound, for the overload windows.
fn heavy_photos(data: &Path, max_pixels: u64) -> Vec<(String, PathBuf)> {
    let dir = data.join("uncropped_identities").join("images");
    let mut out = Vec::new();
    let Ok(ids) = std::fs::read_dir(&dir) else {
        return out;
    };
    let mut ids: Vec<PathBuf> = ids.filter_map(|e| e.ok().map(|e| e.path())).collect();
    ids.sort();
    for id in ids {
        let Ok(files) = std::fs::read_dir(&id) else { continue };
        let mut files: Vec<PathBuf> = files.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files {
            let dims = image::ImageReader::open(&f)
                .and_then(|r| r.with_guessed_format())
                .ok()
                .and_then(|r| r.into_dimensions().ok());
            if let Some((w, h)) = dims {
                if (w as u64) * (h as u64) <= max_pixels && w.max(h) >= 1000 {
                    let who = id.file_name().and_then(|n| n.to_str()).unwrap_or("unknown");
                    out.push((format!("uncropped:{who}"), f));
                }
            }
        }
    }
    out
}

fn percentile_of(v: &[f64], p: f64) -> f64 {
    (percentile(v, p) * 10.0).round() / 10.0
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if std::env::var_os("OMP_NUM_THREADS").is_none() {
        bail!("set OMP_NUM_THREADS=1 (Faiss and OpenBLAS must not start their own thread pools)");
    }
    if args.kiosks == 0 || args.properties == 0 || args.duration_secs == 0 {
        bail!("--kiosks, --properties and --duration-secs must be at least 1");
    }
    let rss_before = rss_mib();
    let t_setup = Instant::now();
    let (lfw_guests, lfw_strangers) = e2e::lfw(&args.data)?;
    let mut guests: Vec<Arc<Guest>> = lfw_guests.into_iter().map(Arc::new).collect();
    guests.extend(e2e::mfr2(&args.data)?.into_iter().map(Arc::new));
    let mut rng = StdRng::seed_from_u64(args.seed);
    guests.shuffle(&mut rng);
    let strangers: Vec<(String, PathBuf)> = lfw_strangers
        .into_iter()
        .map(|(id, p)| (format!("lfw:{id}"), p))
        .collect();
    if strangers.is_empty() || guests.is_empty() {
        bail!("no LFW guests or strangers under {}", args.data.display());
    }
    let props: Vec<String> = (0..args.properties).map(|i| format!("soak-hotel-{i}")).collect();
    let server = start(&args, &props).await?;
    let settings = Settings::load_from(None, std::iter::empty())?;
    let heavy = heavy_photos(&args.data, settings.limits.max_pixels);
    let rss_server_up = rss_mib();
    eprintln!(
        "lobby-soak: server on {} ({} kiosks over {} properties); {} identities to enrol, {} strangers, {} full-size photos; RSS {rss_server_up:.0} MiB",
        server.addr,
        args.kiosks,
        props.len(),
        guests.len(),
        strangers.len(),
        heavy.len()
    );
    // The clock starts after the first gallery is enrolled; placeholders until then.
    let placeholder = Instant::now() + Duration::from_secs(365 * 24 * 3600);
    let mut world = World {
        addr: server.addr.clone(),
        props: props.clone(),
        kiosk_ids: server.kiosk_ids.clone(),
        active: (0..props.len()).map(|_| Mutex::new(Vec::new())).collect(),
        rebook: Mutex::new(Vec::new()),
        ledger: Mutex::new(Ledger::default()),
        identity_of: Mutex::new(BTreeMap::new()),
        strangers,
        heavy,
        overload_parallel: args.overload_parallel.max(1),
        clock: Clock {
            start: Instant::now(),
            end: placeholder,
            hard: placeholder,
            every: args.overload_every,
            over: args.overload_secs,
        },
        next_code: AtomicU64::new(1),
        n_calls: AtomicU64::new(0),
        n_exhausted: AtomicU64::new(0),
        n_errors: AtomicU64::new(0),
    };

    // The first gallery, two enrolments at a time.
    let mut pool: VecDeque<Arc<Guest>> = guests.into_iter().collect();
    let mut setup = Tally::default();
    {
        let w = &world;
        let n0 = args.initial_guests * props.len();
        let mut firsts: Vec<(usize, Arc<Guest>)> = Vec::new();
        for i in 0..n0 {
            if let Some(g) = pool.pop_front() {
                firsts.push((i % props.len(), g));
            }
        }
        let half = firsts.len().div_ceil(2);
        let (a, b) = firsts.split_at(half);
        let mut c1 = reservations(connect(&w.addr).await?, &server.enroller)?;
        let mut c2 = reservations(connect(&w.addr).await?, &server.enroller)?;
        let f1 = async {
            let mut t = Tally::default();
            let mut back = Vec::new();
            for (p, g) in a {
                if !enrol_new(w, &mut c1, &mut t, *p, g.clone()).await {
                    back.push(g.clone());
                }
            }
            (t, back)
        };
        let f2 = async {
            let mut t = Tally::default();
            let mut back = Vec::new();
            for (p, g) in b {
                if !enrol_new(w, &mut c2, &mut t, *p, g.clone()).await {
                    back.push(g.clone());
                }
            }
            (t, back)
        };
        let ((t1, b1), (t2, b2)) = tokio::join!(f1, f2);
        setup.merge(t1);
        setup.merge(t2);
        // Identities refused at enrolment go to the back of the queue.
        pool.extend(b1);
        pool.extend(b2);
    }
    let enrolled0: usize = world
        .active
        .iter()
        .map(|a| a.lock().map(|v| v.len()).unwrap_or(0))
        .sum();
    let setup_s = t_setup.elapsed().as_secs_f64();
    eprintln!(
        "first gallery: {enrolled0} guests enrolled in {setup_s:.0} s ({} RESOURCE_EXHAUSTED, {} errors)",
        setup.exhausted.values().sum::<u64>(),
        setup.errors.values().sum::<u64>()
    );

    // Connections before the clock starts.
    let mut kiosks = Vec::new();
    for (i, tok) in server.kiosk_tokens.iter().enumerate() {
        kiosks.push((i, kiosk(connect(&server.addr).await?, tok)?));
    }
    let pms = reservations(connect(&server.addr).await?, &server.enroller)?;
    let desk = staff(connect(&server.addr).await?, &server.staff)?;

    let start = Instant::now();
    world.clock.start = start;
    world.clock.end = start + Duration::from_secs(args.duration_secs);
    world.clock.hard = world.clock.end + Duration::from_secs(args.grace_secs);
    let clock = world.clock;
    let w = Arc::new(world);

    // RSS and threads every second, until told to stop.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (sampling, w) = (sampling.clone(), w.clone());
        tokio::spawn(async move {
            let (mut v, mut th) = (Vec::<(f64, f64)>::new(), Vec::<(f64, f64)>::new());
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut last_print = 0u64;
            while sampling.load(Ordering::Relaxed) {
                tick.tick().await;
                let t = w.clock.t(Instant::now());
                let (rss, n_threads) = (rss_mib(), threads());
                v.push((t, rss));
                th.push((t, n_threads));
                let s = t as u64;
                if s >= last_print + 30 && t <= w.clock.t(w.clock.end) + 1.0 {
                    last_print = s;
                    let active: usize = w.active.iter().map(|a| a.lock().map(|v| v.len()).unwrap_or(0)).sum();
                    eprintln!(
                        "t={s:>4}s{} calls {} | RESOURCE_EXHAUSTED {} | errors {} | guests enrolled {active} | RSS {rss:.0} MiB, {n_threads} threads",
                        if w.clock.overloaded_at(t) { " [overload]" } else { "" },
                        w.n_calls.load(Ordering::Relaxed),
                        w.n_exhausted.load(Ordering::Relaxed),
                        w.n_errors.load(Ordering::Relaxed),
                    );
                }
            }
            (v, th)
        })
    };

    let mut tasks: Vec<tokio::task::JoinHandle<Tally>> = Vec::new();
    for (i, k) in kiosks {
        tasks.push(tokio::spawn(kiosk_loop(
            w.clone(),
            i,
            k,
            args.seed ^ (1000 + i as u64),
            args.think_ms,
        )));
    }
    tasks.push(tokio::spawn(pms_loop(w.clone(), pms, pool, args.seed ^ 7)));
    tasks.push(tokio::spawn(desk_loop(w.clone(), desk, args.seed ^ 11)));
    let mut total = Tally::default();
    let mut aborted = 0usize;
    for t in tasks {
        // Every call is cut at the hard stop; a task still running a few seconds after it is aborted.
        let wait = clock.hard.saturating_duration_since(Instant::now()) + Duration::from_secs(5);
        let abort = t.abort_handle();
        match tokio::time::timeout(wait, t).await {
            Ok(Ok(tally)) => total.merge(tally),
            Ok(Err(e)) => {
                aborted += 1;
                eprintln!("a task failed: {e}");
            }
            Err(_) => {
                abort.abort();
                aborted += 1;
            }
        }
    }
    let soak_s = clock.t(Instant::now());
    let rss_soak_end = rss_mib();
    eprintln!(
        "soak over after {soak_s:.0} s; checking every acknowledged write ({} decision ids)",
        total.decisions.len()
    );
    let t_verify = Instant::now();
    let checked = verify(&w, &server, &total.decisions).await?;
    let verify_s = t_verify.elapsed().as_secs_f64();
    sampling.store(false, Ordering::Relaxed);
    let (rss_series, thread_series) = sampler.await.unwrap_or_default();
    let threads_max = thread_series.iter().map(|x| x.1).fold(0.0, f64::max);
    let hwm = hwm_mib();
    server.loopback.stop().await.context("server")?;
    if !args.keep_data {
        let _ = std::fs::remove_dir_all(&server.dir);
    }

    // ---- figures
    let dur = args.duration_secs as f64;
    let soak_rss: Vec<(f64, f64)> = rss_series.iter().copied().filter(|(t, _)| *t <= dur + 0.5).collect();
    let rss_at = |t: f64| -> f64 {
        soak_rss
            .iter()
            .min_by(|a, b| (a.0 - t).abs().total_cmp(&(b.0 - t).abs()))
            .map(|x| x.1)
            .unwrap_or(0.0)
    };
    let rss_start = rss_at(0.0);
    let rss_1min = rss_at(60.0_f64.min(dur));
    let rss_end = rss_at(dur);
    let rss_max = soak_rss.iter().map(|x| x.1).fold(0.0, f64::max);
    // Slope over the second half (MiB per minute), least squares.
    let half: Vec<&(f64, f64)> = soak_rss.iter().filter(|(t, _)| *t >= dur / 2.0).collect();
    let slope = {
        let n = half.len() as f64;
        if n < 3.0 {
            0.0
        } else {
            let mx = half.iter().map(|p| p.0).sum::<f64>() / n;
            let my = half.iter().map(|p| p.1).sum::<f64>() / n;
            let sxy: f64 = half.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
            let sxx: f64 = half.iter().map(|p| (p.0 - mx).powi(2)).sum();
            if sxx > 0.0 {
                sxy / sxx * 60.0
            } else {
                0.0
            }
        }
    };
    let growth = if rss_1min > 0.0 {
        (rss_end - rss_1min) / rss_1min
    } else {
        0.0
    };
    // Per cycle (an overload period, or a quarter of the run without overload): the trough and the
    // peak, reported. Bounded: the peak of the second half of the run within 15 % of the first
    // half's (with the defaults each half meets two overload windows).
    let cycle = if args.overload_every > 0 && args.overload_secs > 0 {
        args.overload_every as f64
    } else {
        (dur / 4.0).max(1.0)
    };
    let ncycles = (dur / cycle).ceil().max(1.0) as usize;
    let cycles: Vec<(f64, f64)> = (0..ncycles)
        .map(|k| {
            let v: Vec<f64> = soak_rss
                .iter()
                .filter(|(t, _)| *t >= k as f64 * cycle && *t < (k + 1) as f64 * cycle)
                .map(|x| x.1)
                .collect();
            (
                v.iter().copied().fold(0.0, f64::max),
                v.iter().copied().fold(f64::INFINITY, f64::min),
            )
        })
        .collect();
    let peak = |a: f64, b: f64| {
        soak_rss
            .iter()
            .filter(|(t, _)| *t >= a && *t < b)
            .map(|x| x.1)
            .fold(0.0, f64::max)
    };
    let (peak_first, peak_second) = (peak(0.0, dur / 2.0), peak(dur / 2.0, dur + 0.5));
    let half_growth = if peak_first > 0.0 {
        (peak_second - peak_first) / peak_first
    } else {
        0.0
    };
    let rss_bounded = half_growth <= 0.15;
    let cycles_text: Vec<String> = cycles
        .iter()
        .enumerate()
        .map(|(k, (hi, lo))| {
            format!(
                "{}-{} s: {lo:.0}-{hi:.0}",
                (k as f64 * cycle) as u64,
                (((k + 1) as f64 * cycle).min(dur)) as u64
            )
        })
        .collect();

    // p99 per 10 s window: unary check-ins and streams, successful calls.
    let nwin = (dur / 10.0).ceil() as usize;
    let mut win_unary: Vec<Vec<f64>> = vec![Vec::new(); nwin];
    let mut win_stream: Vec<Vec<f64>> = vec![Vec::new(); nwin];
    let mut win_heavy: Vec<Vec<f64>> = vec![Vec::new(); nwin];
    let mut win_ex = vec![0u64; nwin];
    for &(t, kind, ms) in &total.lat {
        let i = ((t as f64) / 10.0) as usize;
        if i < nwin {
            if is_stream(kind) {
                win_stream[i].push(ms as f64);
            } else if kind == K_HEAVY {
                win_heavy[i].push(ms as f64);
            } else {
                win_unary[i].push(ms as f64);
            }
        }
    }
    for &t in &total.exhausted_at {
        let i = ((t as f64) / 10.0) as usize;
        if i < nwin {
            win_ex[i] += 1;
        }
    }
    let p99_of = |v: &Vec<f64>| if v.is_empty() { f64::NAN } else { percentile(v, 99.0) };
    let windows: Vec<Value> = (0..nwin)
        .map(|i| {
            let t = i as f64 * 10.0;
            json!({"t_s": t, "overload": clock.overloaded_at(t + 5.0),
                   "unary_n": win_unary[i].len(), "unary_p50_ms": percentile_of(&win_unary[i], 50.0),
                   "unary_p99_ms": percentile_of(&win_unary[i], 99.0),
                   "stream_n": win_stream[i].len(), "stream_p99_ms": percentile_of(&win_stream[i], 99.0),
                   "full_size_n": win_heavy[i].len(), "full_size_p99_ms": percentile_of(&win_heavy[i], 99.0),
                   "resource_exhausted": win_ex[i]})
        })
        .collect();
    let normal_p99: Vec<f64> = (0..nwin)
        .filter(|&i| !clock.overloaded_at(i as f64 * 10.0 + 5.0))
        .map(|i| p99_of(&win_unary[i]))
        .filter(|x| x.is_finite())
        .collect();
    let over_p99: Vec<f64> = (0..nwin)
        .filter(|&i| clock.overloaded_at(i as f64 * 10.0 + 5.0))
        .map(|i| p99_of(&win_unary[i]))
        .filter(|x| x.is_finite())
        .collect();
    let all_unary: Vec<f64> = total
        .lat
        .iter()
        .filter(|x| !is_stream(x.1) && x.1 != K_HEAVY)
        .map(|x| x.2 as f64)
        .collect();
    let all_stream: Vec<f64> = total
        .lat
        .iter()
        .filter(|x| is_stream(x.1))
        .map(|x| x.2 as f64)
        .collect();
    let med = |v: &[f64]| percentile_of(v, 50.0);
    let maxf = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let first_half_p99: Vec<f64> = normal_p99.iter().take(normal_p99.len() / 2).copied().collect();
    let second_half_p99: Vec<f64> = normal_p99.iter().skip(normal_p99.len() / 2).copied().collect();

    // Plot.
    let p_unary: Vec<(f64, f64)> = (0..nwin)
        .map(|i| (i as f64 * 10.0 + 5.0, p99_of(&win_unary[i])))
        .collect();
    let p_stream: Vec<(f64, f64)> = (0..nwin)
        .map(|i| (i as f64 * 10.0 + 5.0, p99_of(&win_stream[i])))
        .collect();
    let p_heavy: Vec<(f64, f64)> = (0..nwin)
        .map(|i| (i as f64 * 10.0 + 5.0, p99_of(&win_heavy[i])))
        .collect();
    let shaded = clock.windows();
    let x_max = rss_series.last().map(|x| x.0).unwrap_or(dur).max(dur);
    let title = format!(
        "LOBBY-SOAK: {} KIOSKS, {} S, ONE PROCESS (SERVER + CLIENTS)",
        args.kiosks, args.duration_secs
    );
    if let Some(dir) = args.plot.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    plot::time_png(
        &args.plot,
        &title,
        x_max,
        &shaded,
        Some(dur),
        &[
            plot::Panel {
                y_label: "RSS (MIB), SAMPLED EVERY SECOND",
                log: false,
                series: vec![plot::Series {
                    label: "VMRSS",
                    points: &rss_series,
                    color: [31, 119, 180],
                }],
            },
            plot::Panel {
                y_label: "THREADS (SERVER + CLIENTS)",
                log: false,
                series: vec![plot::Series {
                    label: "THREADS",
                    points: &thread_series,
                    color: [255, 127, 14],
                }],
            },
            plot::Panel {
                y_label: "P99 (MS, LOG SCALE) PER 10 S WINDOW, ANSWERED CALLS",
                log: true,
                series: vec![
                    plot::Series {
                        label: "UNARY CHECK-IN (KIOSK PHOTO)",
                        points: &p_unary,
                        color: [214, 39, 40],
                    },
                    plot::Series {
                        label: "CHECK-IN STREAM",
                        points: &p_stream,
                        color: [44, 160, 44],
                    },
                    plot::Series {
                        label: "FULL-SIZE PHOTO (OVERLOAD)",
                        points: &p_heavy,
                        color: [148, 103, 189],
                    },
                ],
            },
        ],
    )?;

    // Outcomes table.
    let mut table = String::from(
        "| check-in | answered | APPROVED | REVIEW | DENIED | RETRY | none | RESOURCE_EXHAUSTED | other errors |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut answered_total = 0u64;
    for k in KINDS {
        let m = total.outcomes.get(k).cloned().unwrap_or_default();
        let n: u64 = m.values().sum();
        answered_total += n;
        let g = |o: &str| m.get(o).copied().unwrap_or(0);
        let ex = total.exhausted_by_op.get(k).copied().unwrap_or(0);
        let er: u64 = total
            .errors
            .iter()
            .filter(|(key, _)| key.starts_with(&format!("{k}:")))
            .map(|x| x.1)
            .sum();
        table.push_str(&format!(
            "| {k} | {n} | {} | {} | {} | {} | {} | {ex} | {er} |\n",
            g("APPROVED"),
            g("REVIEW"),
            g("DENIED"),
            g("RETRY"),
            g("NONE")
        ));
    }
    let l = w.ledger.lock().unwrap_or_else(|e| e.into_inner());
    let errors_total: u64 = total.errors.values().sum::<u64>() + setup.errors.values().sum::<u64>();
    let exhausted_total: u64 = total.exhausted.values().sum();
    let audit_ok = checked.audit.intact && checked.audit.entries >= checked.audit_lower_bound;
    let mid_audits_ok = l.audit_checks.iter().all(|v| v["intact"].as_bool() == Some(true));
    let verified_ok = checked.reservation_mismatches.is_empty()
        && checked.decision_mismatches.is_empty()
        && checked.duplicate_ids == 0;
    let pass = errors_total == 0 && verified_ok && audit_ok && mid_audits_ok && aborted == 0;
    let active_end: usize = w.active.iter().map(|a| a.lock().map(|v| v.len()).unwrap_or(0)).sum();
    let body = format!(
        "One in-process server on loopback (`{}`), {} kiosks (own credential and connection each) over {} properties, one reservation system, one front desk; {} s (hard stop {} s later), kiosks pausing 0-{} ms between check-ins; deliberate overload in the last {} s of every {} s (no pauses, {} unary check-ins at once per kiosk, half of them full-size `uncropped_identities` photos, {} of them). Setup (models, server, first gallery of {enrolled0} guests) {setup_s:.0} s; checks afterwards {verify_s:.0} s.\n\n\
**Verdict: {}.** Errors other than RESOURCE_EXHAUSTED: **{errors_total}**; acknowledged writes not as acknowledged: **{}**; audit trail intact: **{}** ({} entries, at least {} expected; {} checks during the run, all intact: {}); RSS {} (peak of the second half vs the first {:+.1} %; end vs 1 min {:+.1} %).\n\n\
{table}\n\
{answered_total} check-ins answered ({:.1}/s), {} calls in all. Wrong guest APPROVED: {}; stranger APPROVED: {} (who they were, by name across the datasets: {}). Calls cut at the hard stop: {}; tasks aborted: {aborted}.\n\n\
RESOURCE_EXHAUSTED: **{exhausted_total}** ({}); by call: {}. Other errors: {}.\n\n\
Writes acknowledged and verified: {} reservation upserts, {} enrolments storing templates ({} refused every photo, not a write), {} health-code updates, {} erasures, {} overrides ({} APPROVEs refused with FAILED_PRECONDITION, the reservation no longer BOOKED: legitimate), {} decision ids given to kiosks (all read back with GetDecision: property, kiosk, outcome, override exactly when acknowledged; {} overrides matched). {} reservations read back; mismatches: reservations {}, decisions {}, duplicate decision ids {}. Guests enrolled at the end: {active_end}.\n\n\
RSS (VmRSS of the one process: server and all clients; `/proc/self/status` every second): before the server {rss_before:.0} MiB, server up {rss_server_up:.0} MiB, start of the soak {rss_start:.0}, at 1 min {rss_1min:.0}, at the end {rss_end:.0}, max {rss_max:.0} MiB (VmHWM {hwm:.0}); slope over the second half {slope:+.1} MiB/min; trough-peak per cycle (MiB) {}. After the soak ({rss_soak_end:.0} MiB). Threads at most {threads_max:.0}.\n\n\
Latency of answered calls, ms: unary check-ins with kiosk photos (full-size photos apart) p50 {} / p99 {} (max {}), streams p50 {} / p99 {}. p99 of unary check-ins per 10 s window: outside overload median {} (first half {}, second half {}), max {}; in overload median {}, max {}. Plot: `{}`.\n\n\
Server settings: {}.\n",
        server.addr,
        args.kiosks,
        props.len(),
        args.duration_secs,
        args.grace_secs,
        2 * args.think_ms,
        args.overload_secs,
        args.overload_every,
        w.overload_parallel,
        w.heavy.len(),
        if pass { "PASS" } else { "FAIL" },
        checked.reservation_mismatches.len() + checked.decision_mismatches.len(),
        checked.audit.intact,
        checked.audit.entries,
        checked.audit_lower_bound,
        l.audit_checks.len(),
        mid_audits_ok,
        if rss_bounded { "bounded" } else { "GREW" },
        half_growth * 100.0,
        growth * 100.0,
        answered_total as f64 / dur,
        w.n_calls.load(Ordering::Relaxed),
        total.wrong_guest_approved,
        total.stranger_approved,
        serde_json::to_string(&total.approvals)?,
        total.cut,
        serde_json::to_string(&total.exhausted)?,
        serde_json::to_string(&total.exhausted_by_op)?,
        serde_json::to_string(&total.errors)?,
        l.upserts,
        l.enrolments,
        l.enrolments_refused,
        l.health,
        l.erasures,
        l.overrides_n,
        l.approve_refused,
        checked.decisions,
        checked.overrides_checked,
        checked.reservations,
        checked.reservation_mismatches.len(),
        checked.decision_mismatches.len(),
        checked.duplicate_ids,
        cycles_text.join(", "),
        med(&all_unary),
        percentile_of(&all_unary, 99.0),
        (maxf(&all_unary) * 10.0).round() / 10.0,
        med(&all_stream),
        percentile_of(&all_stream, 99.0),
        med(&normal_p99),
        med(&first_half_p99),
        med(&second_half_p99),
        (maxf(&normal_p99) * 10.0).round() / 10.0,
        med(&over_p99),
        (maxf(&over_p99) * 10.0).round() / 10.0,
        args.plot.display(),
        server.settings_note,
    );
    println!("{body}");
    for s in &total.approval_details {
        println!("approval: {s}");
    }
    for s in total.error_samples.iter().chain(&setup.error_samples) {
        println!("error: {s}");
    }
    for s in checked.reservation_mismatches.iter().take(20) {
        println!("reservation mismatch: {s}");
    }
    for s in checked.decision_mismatches.iter().take(20) {
        println!("decision mismatch: {s}");
    }
    let report = json!({
        "pass": pass,
        "duration_s": args.duration_secs, "kiosks": args.kiosks, "properties": props.len(),
        "think_ms": args.think_ms, "overload_every_s": args.overload_every, "overload_s": args.overload_secs, "overload_parallel": args.overload_parallel,
        "setup_s": setup_s, "verify_s": verify_s, "first_gallery": enrolled0,
        "outcomes": total.outcomes, "answers": total.answers, "answered": answered_total, "calls": w.n_calls.load(Ordering::Relaxed),
        "wrong_guest_approved": total.wrong_guest_approved, "stranger_approved": total.stranger_approved,
        "approvals_not_own": total.approvals, "approvals_not_own_detail": total.approval_details,
        "errors": total.errors, "setup_errors": setup.errors, "error_samples": total.error_samples,
        "resource_exhausted": total.exhausted, "resource_exhausted_by_call": total.exhausted_by_op,
        "resource_exhausted_setup": setup.exhausted, "cut_at_hard_stop": total.cut, "tasks_aborted": aborted,
        "writes": {"upserts": l.upserts, "enrolments": l.enrolments, "enrolments_refused": l.enrolments_refused,
                   "health": l.health, "erasures": l.erasures, "overrides": l.overrides_n,
                   "approve_refused_failed_precondition": l.approve_refused},
        "verified": {"reservations": checked.reservations, "reservation_mismatches": checked.reservation_mismatches,
                     "decisions": checked.decisions, "decision_mismatches": checked.decision_mismatches,
                     "overrides": checked.overrides_checked, "duplicate_decision_ids": checked.duplicate_ids},
        "audit": {"intact": checked.audit.intact, "entries": checked.audit.entries,
                  "first_broken_seq": checked.audit.first_broken_seq, "detail": checked.audit.detail,
                  "expected_at_least": checked.audit_lower_bound, "during_run": l.audit_checks},
        "rss_mib": {"before_server": rss_before, "server_up": rss_server_up, "start": rss_start, "at_1min": rss_1min,
                    "end": rss_end, "max": rss_max, "hwm": hwm, "after_soak": rss_soak_end,
                    "slope_second_half_mib_per_min": slope, "growth_end_vs_1min": growth, "bounded": rss_bounded,
                    "cycle_s": cycle, "cycles_trough_peak": cycles_text, "peak_first_half": peak_first, "peak_second_half": peak_second, "growth_peak_second_vs_first_half": half_growth,
                    "threads_max": threads_max,
                    "series": rss_series.iter().map(|(t, r)| json!([(t * 10.0).round() / 10.0, (r * 10.0).round() / 10.0])).collect::<Vec<_>>()},
        "latency_ms": {"unary_p50": med(&all_unary), "unary_p99": percentile_of(&all_unary, 99.0),
                       "stream_p50": med(&all_stream), "stream_p99": percentile_of(&all_stream, 99.0)},
        "windows": windows,
        "plot": args.plot.display().to_string(),
        "settings": server.settings_note,
        "machine": record::machine_facts(),
    });
    drop(l);
    args.out.emit("lobby-soak", &body, &report)?;
    if !pass {
        bail!("the soak failed (see above)");
    }
    Ok(())
}
