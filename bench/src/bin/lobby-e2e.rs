//! `lobby-e2e`: a property's day over gRPC, measured the way a hotel would.
//!
//! Starts a real server on loopback (its own data directory, models, credentials), enrols guests
//! as a reservation system would (LFW identities with two or more photos from their first photo;
//! MFR2 identities from an unmasked photo), GREEN health, arrivals today, split into properties of
//! `--arrivals` guests, each property with its own kiosk credential. Then every guest checks in
//! through the check-in stream with another photo, climbing the escalation ladder as a guest
//! would (MFR2 guests arrive masked and lower the mask when asked; every guest gives the booking
//! code when asked), and strangers (LFW identities never enrolled) try too: plain, with a
//! synthetic mask, and typing a real guest's booking code when asked.
//!
//! Reports the contactless rate (APPROVED for the right guest with no human), of all probes and
//! of usable captures (the photo passed the capture checks), outcomes and reasons, wrong-guest and
//! stranger approvals, ladder steps per guest and client-side latency; the LFW identities of folds
//! the trained models never saw are reported apart.
use anyhow::{bail, Context, Result};
use chrono::Days;
use clap::Parser;
use lobby_bench::e2e::{self, summarise, Attempt, Guest};
use lobby_bench::masks::{random_mask, SplitMix};
use lobby_bench::record;
use lobby_kiosk_client::ladder::{drive, ScriptedGuest};
use lobby_kiosk_client::{connect, kiosk, proto as pv, reservations};
use lobby_models::{default_model_dir, ensure, Source};
use lobby_service::auth::{hash_token, hex_digest, new_token, Credentials};
use lobby_service::config::{Role, Settings, TokenEntry};
use lobby_service::core::App;
use lobby_service::vision::mask_render;
use lobby_service::vision::{quality, Vision};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser)]
#[command(about = "A property's day over gRPC: contactless rate, ladder steps, wrong-guest and stranger approvals")]
struct Args {
    #[arg(long, default_value = "../shared/data", env = "LOBBY_TEST_DATA")]
    data: PathBuf,
    #[arg(long)]
    models: Option<PathBuf>,
    /// Service settings (TOML) over the embedded defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Expected arrivals per property (the 1:N gallery's size).
    #[arg(long, default_value_t = 100)]
    arrivals: usize,
    /// Strangers (LFW identities never enrolled), spread over the alphabet.
    #[arg(long, default_value_t = 300)]
    strangers: usize,
    /// Kiosks checking guests in at once.
    #[arg(long, default_value_t = 2)]
    kiosks: usize,
    /// Frames a kiosk sends in one stream at most.
    #[arg(long, default_value_t = 20)]
    max_frames: usize,
    /// Only the first N LFW guests (quick runs); all when not given.
    #[arg(long)]
    limit: Option<usize>,
    #[command(flatten)]
    out: record::Output,
}

struct Server {
    addr: String,
    kiosk_tokens: Vec<String>,
    enroller: String,
    loopback: lobby_service::server::Loopback,
    dir: PathBuf,
}

fn property(i: usize) -> String {
    format!("e2e-hotel-{i:02}")
}

async fn start(args: &Args, properties: usize) -> Result<Server> {
    let mut settings = Settings::load(args.config.as_deref())?;
    let dir = std::env::temp_dir().join(format!("lobby-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    settings.data_dir = dir.clone();
    // A day's arrivals per kiosk in minutes: the per-kiosk frame limit is not what is measured.
    settings.limits.kiosk_frames_per_minute = 1_000_000;
    settings.limits.kiosk_frame_burst = 100_000;
    let model_dir = args.models.clone().unwrap_or_else(default_model_dir);
    let paths = ensure(&model_dir, &Source::from_env())?;
    let vision = Arc::new(Vision::load(&paths, App::vision_config(&settings))?);
    let entry = |id: String, role, t: &str, p: Option<String>| TokenEntry {
        id,
        role,
        sha256: hex_digest(&hash_token(t)),
        property: p,
    };
    let enroller = new_token();
    let kiosk_tokens: Vec<String> = (0..properties).map(|_| new_token()).collect();
    let mut entries = vec![entry("e2e-pms".into(), Role::Enroller, &enroller, None)];
    for (i, t) in kiosk_tokens.iter().enumerate() {
        entries.push(entry(format!("e2e-kiosk-{i:02}"), Role::Kiosk, t, Some(property(i))));
    }
    let creds = Credentials::new(&entries).map_err(anyhow::Error::msg)?;
    let app = Arc::new(App::start(settings, vision).await?);
    let loopback = lobby_service::server::Loopback::start(app, Arc::new(creds)).await?;
    let addr = loopback.addr.clone();
    Ok(Server {
        addr,
        kiosk_tokens,
        enroller,
        loopback,
        dir,
    })
}

fn code_of(g: &Guest) -> String {
    format!("E2E-{}-{}", g.source.to_uppercase(), g.identity)
}

/// Upserts the guest's reservation (BOOKED, arriving today) at `prop`, GREEN health.
async fn book(
    c: &mut lobby_kiosk_client::proto::reservation_service_client::ReservationServiceClient<lobby_kiosk_client::Authed>,
    prop: &str,
    code: &str,
    name: &str,
) -> Result<()> {
    let today = chrono::Local::now().date_naive();
    c.upsert_reservation(pv::UpsertReservationRequest {
        reservation: Some(pv::Reservation {
            property_id: prop.into(),
            reservation_code: code.into(),
            guest: Some(pv::Guest {
                full_name: format!("Guest {name}"),
                guest_ref: format!("ref-{code}"),
                ..Default::default()
            }),
            arrival_date: today.to_string(),
            departure_date: today.checked_add_days(Days::new(2)).unwrap_or(today).to_string(),
            status: pv::ReservationStatus::Booked as i32,
            ..Default::default()
        }),
    })
    .await?;
    let now = chrono::Utc::now().timestamp_millis();
    c.update_health_code(pv::UpdateHealthCodeRequest {
        property_id: prop.into(),
        reservation_code: code.into(),
        status: Some(pv::HealthStatus {
            colour: pv::HealthColour::Green as i32,
            issued_at_ms: now - 60_000,
            expires_at_ms: now + 24 * 3_600_000,
            source: "e2e".into(),
        }),
    })
    .await?;
    Ok(())
}

/// Enrols a guest from the first photo the service accepts; returns that photo, or the reasons each
/// photo was refused.
async fn enrol(addr: &str, token: &str, prop: &str, g: &Guest) -> Result<std::result::Result<PathBuf, Vec<String>>> {
    let mut c = reservations(connect(addr).await?, token)?;
    let code = code_of(g);
    book(&mut c, prop, &code, &g.identity).await?;
    let mut refused = Vec::new();
    for photo in &g.enrol {
        let r = c
            .enroll_face(pv::EnrollFaceRequest {
                property_id: prop.into(),
                reservation_code: code.clone(),
                photos: vec![std::fs::read(photo)?],
                consent: Some(pv::Consent {
                    granted: true,
                    method: "booking-form".into(),
                    text_version: "v1".into(),
                    recorded_at_ms: 0,
                }),
            })
            .await?
            .into_inner();
        if r.templates_stored > 0 {
            return Ok(Ok(photo.clone()));
        }
        refused.extend(r.photos.iter().map(|p| p.rejection_reason.clone()));
    }
    Ok(Err(refused))
}

/// A stranger's photo with a synthetic mask drawn from the seed (`vision::mask`), as JPEG.
fn masked_photo(vision: &Vision, path: &Path, seed: u64) -> Result<Option<Vec<u8>>> {
    let img = vision.decode(&std::fs::read(path)?)?;
    let faces = vision.detect(&img)?;
    let Some(i) = quality::primary_face(&faces, img.width(), img.height()) else {
        return Ok(None);
    };
    let Some(masked) = mask_render::render(&img, &faces[i].landmarks, &random_mask(&mut SplitMix::new(seed))) else {
        return Ok(None);
    };
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(&masked)?;
    Ok(Some(out))
}

/// One kiosk check-in through the stream.
async fn attempt(
    addr: &str,
    token: &str,
    group: &'static str,
    who: String,
    own_code: Option<String>,
    mut guest: ScriptedGuest,
    max_frames: usize,
) -> Result<Attempt> {
    let mut k = kiosk(connect(addr).await?, token)?;
    let t = Instant::now();
    let run = drive(&mut k, &mut guest, None, "", max_frames).await?;
    Ok(Attempt {
        group,
        who,
        own_code,
        run,
        ms: t.elapsed().as_secs_f64() * 1000.0,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if std::env::var_os("OMP_NUM_THREADS").is_none() {
        bail!("set OMP_NUM_THREADS=1 (Faiss and OpenBLAS must not start their own thread pools)");
    }
    let t0 = Instant::now();
    let (mut lfw_guests, lfw_strangers) = e2e::lfw(&args.data)?;
    if let Some(n) = args.limit {
        lfw_guests = e2e::spread(&lfw_guests, n);
    }
    let mut guests = lfw_guests;
    guests.extend(e2e::mfr2(&args.data)?);
    let strangers = e2e::spread(&lfw_strangers, args.strangers);
    // Properties: guests dealt round-robin after a seeded shuffle, so LFW and MFR2 guests mix.
    let mut order: Vec<usize> = (0..guests.len()).collect();
    let mut rng = SplitMix::new(20261205);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let properties = guests.len().div_ceil(args.arrivals.max(1)).max(1);
    let prop_of: Vec<usize> = {
        let mut v = vec![0; guests.len()];
        for (k, &g) in order.iter().enumerate() {
            v[g] = k % properties;
        }
        v
    };
    let server = start(&args, properties).await?;
    let addr = server.addr.clone();
    let vision = {
        let paths = ensure(
            &args.models.clone().unwrap_or_else(default_model_dir),
            &Source::from_env(),
        )?;
        Vision::load(&paths, Default::default())?
    };
    eprintln!(
        "lobby-e2e: {} guests ({} LFW, {} MFR2) over {properties} properties, {} strangers; server on {addr}",
        guests.len(),
        guests.iter().filter(|g| g.source == "lfw").count(),
        guests.iter().filter(|g| g.source == "mfr2").count(),
        strangers.len()
    );

    // Enrolment, as the reservation system would, `kiosks` at a time.
    let t_enrol = Instant::now();
    let mut enrolled: Vec<Option<PathBuf>> = Vec::with_capacity(guests.len());
    let mut refusals: BTreeMap<String, usize> = BTreeMap::new();
    for chunk in (0..guests.len()).collect::<Vec<_>>().chunks(args.kiosks.max(1)) {
        let mut tasks = Vec::new();
        for &i in chunk {
            let (addr, tok, prop, g) = (
                addr.clone(),
                server.enroller.clone(),
                property(prop_of[i]),
                guests[i].clone(),
            );
            tasks.push(tokio::spawn(async move { enrol(&addr, &tok, &prop, &g).await }));
        }
        for t in tasks {
            match t.await?? {
                Ok(p) => enrolled.push(Some(p)),
                Err(why) => {
                    for w in why {
                        *refusals.entry(w).or_default() += 1;
                    }
                    enrolled.push(None);
                }
            }
        }
    }
    let enrol_s = t_enrol.elapsed().as_secs_f64();
    let not_enrolled: Vec<String> = guests
        .iter()
        .zip(&enrolled)
        .filter(|(_, e)| e.is_none())
        .map(|(g, _)| format!("{}:{}", g.source, g.identity))
        .collect();
    eprintln!(
        "enrolled {}/{} in {enrol_s:.0} s",
        guests.len() - not_enrolled.len(),
        guests.len()
    );

    // Check-ins: each guest's probes one after another (the reservation booked again between), the
    // guests `kiosks` at a time.
    let t_checkin = Instant::now();
    let mut attempts: Vec<Attempt> = Vec::new();
    let enrolled_idx: Vec<usize> = (0..guests.len()).filter(|&i| enrolled[i].is_some()).collect();
    for chunk in enrolled_idx.chunks(args.kiosks.max(1)) {
        let mut tasks = Vec::new();
        for &i in chunk {
            let g = guests[i].clone();
            let used = enrolled[i].clone();
            let prop = prop_of[i];
            let (addr, ktok, etok, max) = (
                addr.clone(),
                server.kiosk_tokens[prop].clone(),
                server.enroller.clone(),
                args.max_frames,
            );
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                let group = match (g.source, g.held_out) {
                    ("mfr2", _) => "mfr2_masked",
                    (_, true) => "lfw_held_out",
                    _ => "lfw_trained_folds",
                };
                // Asked to lower the mask, an MFR2 guest shows an unmasked photo other than the one
                // enrolled; LFW guests wear none.
                let lowered = if g.source == "mfr2" { g.enrol.as_slice() } else { &[] };
                let unmasked: Vec<Vec<u8>> = lowered
                    .iter()
                    .filter(|p| Some(*p) != used.as_ref())
                    .take(1)
                    .map(std::fs::read)
                    .collect::<std::io::Result<_>>()?;
                for (k, probe) in g.probes.iter().enumerate() {
                    if k > 0 {
                        let mut c = reservations(connect(&addr).await?, &etok)?;
                        book(&mut c, &property(prop), &code_of(&g), &g.identity).await?;
                    }
                    let guest = ScriptedGuest::new(vec![std::fs::read(probe)?], unmasked.clone(), Some(code_of(&g)));
                    let who = format!(
                        "{}:{}",
                        g.identity,
                        probe.file_name().and_then(|f| f.to_str()).unwrap_or("")
                    );
                    out.push(attempt(&addr, &ktok, group, who, Some(code_of(&g)), guest, max).await?);
                }
                anyhow::Ok(out)
            }));
        }
        for t in tasks {
            attempts.extend(t.await??);
        }
    }
    // Strangers: plain (no code: they go to the desk), masked, and with a real guest's code.
    let mut victims: Vec<Vec<String>> = vec![Vec::new(); properties];
    for &i in &enrolled_idx {
        victims[prop_of[i]].push(code_of(&guests[i]));
    }
    for chunk in strangers
        .iter()
        .enumerate()
        .collect::<Vec<_>>()
        .chunks(args.kiosks.max(1))
    {
        let mut tasks = Vec::new();
        for (k, (who, path)) in chunk.iter().cloned() {
            let who = who.clone();
            let prop = k % properties;
            let victim = victims[prop].get(k % victims[prop].len().max(1)).cloned();
            let masked = masked_photo(&vision, path, 7_000 + k as u64)?;
            let plain = std::fs::read(path)?;
            let (addr, ktok, max) = (addr.clone(), server.kiosk_tokens[prop].clone(), args.max_frames);
            tasks.push(tokio::spawn(async move {
                let mut out = vec![
                    attempt(
                        &addr,
                        &ktok,
                        "stranger",
                        who.clone(),
                        None,
                        ScriptedGuest::new(vec![plain.clone()], vec![], None),
                        max,
                    )
                    .await?,
                    attempt(
                        &addr,
                        &ktok,
                        "stranger_with_guest_code",
                        who.clone(),
                        None,
                        ScriptedGuest::new(vec![plain], vec![], victim),
                        max,
                    )
                    .await?,
                ];
                if let Some(m) = masked {
                    out.push(
                        attempt(
                            &addr,
                            &ktok,
                            "stranger_masked",
                            who,
                            None,
                            ScriptedGuest::new(vec![m], vec![], None),
                            max,
                        )
                        .await?,
                    );
                }
                anyhow::Ok(out)
            }));
        }
        for t in tasks {
            attempts.extend(t.await??);
        }
    }
    let checkin_s = t_checkin.elapsed().as_secs_f64();
    server.loopback.stop().await.context("server")?;
    let _ = std::fs::remove_dir_all(&server.dir);

    let groups = [
        "lfw_trained_folds",
        "lfw_held_out",
        "mfr2_masked",
        "stranger",
        "stranger_masked",
        "stranger_with_guest_code",
    ];
    let mut report = serde_json::Map::new();
    for g in groups {
        let a: Vec<&Attempt> = attempts.iter().filter(|a| a.group == g).collect();
        report.insert(g.into(), summarise(&a));
    }
    let lfw_all: Vec<&Attempt> = attempts.iter().filter(|a| a.group.starts_with("lfw")).collect();
    report.insert("lfw_all".into(), summarise(&lfw_all));
    let stranger_approved = attempts
        .iter()
        .filter(|a| a.group.starts_with("stranger") && a.approved())
        .count();
    let wrong_guest = attempts
        .iter()
        .filter(|a| a.own_code.is_some() && a.approved() && !a.approved_right())
        .count();
    let masked_denied = attempts
        .iter()
        .filter(|a| a.group == "mfr2_masked" && a.outcome() == "DENIED")
        .count();
    let mut table = String::from(
        "| group | probes | usable | contactless (all) | contactless (usable) | wrong guest | APPROVED / REVIEW / DENIED / none | mean steps | mean frames | p50 / p99 ms |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for g in [
        "lfw_all",
        "lfw_trained_folds",
        "lfw_held_out",
        "mfr2_masked",
        "stranger",
        "stranger_masked",
        "stranger_with_guest_code",
    ] {
        let v = &report[g];
        let o = |k: &str| v["outcomes"][k].as_u64().unwrap_or(0);
        table.push_str(&format!(
            "| {g} | {} | {} | {:.1} % | {:.1} % | {} | {} / {} / {} / {} | {} | {} | {} / {} |\n",
            v["probes"],
            v["usable"],
            v["contactless_rate"].as_f64().unwrap_or(0.0) * 100.0,
            v["contactless_rate_usable"].as_f64().unwrap_or(0.0) * 100.0,
            v["wrong_guest_approved"],
            o("APPROVED"),
            o("REVIEW"),
            o("DENIED"),
            o("NONE"),
            v["mean_steps"],
            v["mean_frames"],
            v["latency_ms"]["p50"],
            v["latency_ms"]["p99"],
        ));
    }
    let body = format!(
        "{} guests over {properties} properties of up to {} arrivals; {} strangers; {} kiosks at once; enrolment {enrol_s:.0} s, check-ins {checkin_s:.0} s, total {:.0} s. Not enrolled (every photo refused): {} ({refusals:?}).\n\n{table}\nStrangers APPROVED: **{stranger_approved}**; wrong guest APPROVED: **{wrong_guest}**; masked guests DENIED: **{masked_denied}**.\n\nLadder steps (guests): LFW {} | MFR2 {}\n\nFinal reasons: LFW {} | MFR2 {}\n",
        guests.len(), args.arrivals, strangers.len(), args.kiosks, t0.elapsed().as_secs_f64(), not_enrolled.len(),
        report["lfw_all"]["ladder_steps"], report["mfr2_masked"]["ladder_steps"],
        report["lfw_all"]["final_reasons"], report["mfr2_masked"]["final_reasons"],
    );
    println!("{body}");
    report.insert("stranger_approved".into(), json!(stranger_approved));
    report.insert("wrong_guest_approved".into(), json!(wrong_guest));
    report.insert("masked_guests_denied".into(), json!(masked_denied));
    report.insert("not_enrolled".into(), json!(not_enrolled));
    report.insert("machine".into(), json!(record::machine_facts()));
    args.out.emit("lobby-e2e", &body, &Value::Object(report))?;
    Ok(())
}
