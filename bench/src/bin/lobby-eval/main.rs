//! `lobby-eval --data DIR --out FILE.json`: accuracy of the face pipeline on a folder with the layout
//! of `../shared/data`, per-stage latency, and a DET curve per dataset written next to the JSON.
//!
//! Protocols: LFW k-fold over the folds present, each fold's threshold chosen on the other folds;
//! MFR2 stratified 10-fold likewise; TAR at a fixed FAR pooled over all impostor pairs. Liveness:
//! APCER (attacks accepted as live) and BPCER (live faces rejected) at the service's threshold.
//!
//! Each part of the report has its module and its typed section; `Report` gathers them.

mod calibration;
mod capture_checks;
mod cascade_calibration;
mod edge_cases;
mod lfw;
mod lfw_mask;
mod liveness;
mod mask_detector;
mod mfr2;
mod pipeline;
mod timing;
mod uncropped;

use anyhow::{Context, Result};
use calibration::Calibration;
use clap::Parser;
use edge_cases::EdgeCases;
use lfw::Lfw;
use lfw_mask::LfwSyntheticMask;
use liveness::Liveness;
use lobby_models::{default_model_dir, ensure, Source};
use lobby_service::config::Settings;
use lobby_service::core::App;
use lobby_service::vision::Vision;
use mask_detector::MaskDetector;
use mfr2::Mfr2;
use pipeline::{round, Ctx};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;
use timing::{StageTiming, Timings};
use uncropped::Uncropped;

#[derive(Parser)]
#[command(name = "lobby-eval", about = "Evaluate Lobby's face pipeline on a data folder")]
struct Args {
    /// Folder with the layout of ../shared/data.
    #[arg(long)]
    data: PathBuf,
    /// JSON report; DET curves are written next to it.
    #[arg(long)]
    out: PathBuf,
    /// Installed models [env LOBBY_MODEL_DIR, default lobby-data/models]; installed from the mirror
    /// (LOBBY_MODEL_MIRROR, default ../shared/models) or LOBBY_MODEL_BASE_URL when missing.
    #[arg(long)]
    models: Option<PathBuf>,
    /// Worker threads; each inference runs on one thread. Per-stage timings are cleanest at 1.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// The detector's first-pass long side in px (the service's default when not given), for
    /// measuring the resize policy's effect on accuracy.
    #[arg(long)]
    detector_first_pass: Option<f32>,
    /// The service's settings file whose thresholds are checked (`calibration.cascade.service`);
    /// the embedded defaults (and LOBBY__ variables) when not given.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Only these sections (comma-separated: lfw, mfr2, rwmfd, liveness, edge_cases, uncropped);
    /// all when not given.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Liveness sees faces at most this large (px, 0: as they are); the service's setting when not given.
    #[arg(long)]
    liveness_max_face: Option<f32>,
}

/// The JSON report. A section that did not run is left out (and named in `skipped`).
#[derive(Serialize)]
struct Report {
    /// Thresholds for the service, at stated false-match rates on the LFW impostor pairs.
    #[serde(skip_serializing_if = "Option::is_none")]
    calibration: Option<Calibration>,
    data: String,
    detector_first_pass_long_side: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    edge_cases: Option<EdgeCases>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lfw: Option<Lfw>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lfw_synthetic_mask: Option<LfwSyntheticMask>,
    #[serde(skip_serializing_if = "Option::is_none")]
    liveness: Option<Liveness>,
    mask_detector: MaskDetector,
    #[serde(skip_serializing_if = "Option::is_none")]
    mfr2: Option<Mfr2>,
    skipped: Vec<&'static str>,
    threads: usize,
    timing_ms: BTreeMap<&'static str, StageTiming>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uncropped_identities: Option<Uncropped>,
    wall_seconds: f64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    // Faiss/OpenBLAS are not used here, but keep the whole process single-threaded per worker.
    let model_dir = args.models.clone().unwrap_or_else(default_model_dir);
    let source = Source::from_env();
    let paths = ensure(&model_dir, &source).with_context(|| format!("models in {}", model_dir.display()))?;
    let settings = Settings::load(args.config.as_deref())?;
    let t0 = Instant::now();
    let mut cfg = App::vision_config(&settings);
    if let Some(px) = args.liveness_max_face {
        cfg.liveness_max_face_px = px;
    }
    if let Some(px) = args.detector_first_pass {
        cfg.detector.first_pass_long_side = px;
    }
    let vision = Vision::load(&paths, cfg)?;
    eprintln!("models loaded and planned in {:.1} s", t0.elapsed().as_secs_f64());
    rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads.max(1))
        .build_global()?;
    let ctx = Ctx {
        vision,
        timings: Mutex::new(Timings::default()),
    };
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let data = &args.data;
    let mut skipped = Vec::new();
    let started = Instant::now();

    let want = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    let (mut lfw, mut lfw_synthetic_mask) = (None, None);
    if !want("lfw") {
        skipped.push("lfw (--only)");
    } else if data.join("lfw/pairs.txt").exists() {
        let (l, masked) = lfw::eval_lfw(&ctx, &data.join("lfw"), &args.out, &settings)?;
        lfw = Some(l);
        lfw_synthetic_mask = Some(masked);
    } else {
        skipped.push("lfw");
    }
    let lfw_threshold = lfw.as_ref().map(|l| l.threshold);
    let mut mfr2 = None;
    if !want("mfr2") {
        skipped.push("mfr2 (--only)");
    } else if data.join("mfr2/pairs.csv").exists() {
        mfr2 = Some(mfr2::eval_mfr2(&ctx, &data.join("mfr2"), &args.out, &settings)?);
    } else {
        skipped.push("mfr2");
    }
    let rwmfd = data.join("rwmfd_masked_in_the_wild");
    let rwmfd = if !want("rwmfd") {
        skipped.push("rwmfd (--only)");
        None
    } else if rwmfd.join("manifest.csv").exists() {
        Some(mask_detector::eval_rwmfd(&ctx, &rwmfd)?)
    } else {
        skipped.push("rwmfd_masked_in_the_wild");
        None
    };
    let mask_detector = MaskDetector::gather(lfw.as_ref(), mfr2.as_ref(), rwmfd);
    let mut liveness = None;
    if want("liveness") {
        liveness = liveness::eval_liveness(&ctx, data, &args.out, settings.policy.liveness_threshold)?;
        if liveness.is_none() {
            skipped.push("liveness");
        }
    } else {
        skipped.push("liveness (--only)");
    }
    let mut edge_cases = None;
    if !want("edge_cases") {
        skipped.push("edge_cases (--only)");
    } else if data.join("edge_cases/manifest.csv").exists() {
        edge_cases = Some(edge_cases::eval_edge_cases(
            &ctx,
            &data.join("edge_cases"),
            &settings.policy,
        )?);
    } else {
        skipped.push("edge_cases");
    }
    let mut uncropped_identities = None;
    if !want("uncropped") {
        skipped.push("uncropped (--only)");
    } else if data.join("uncropped_identities/pairs.csv").exists() {
        uncropped_identities = Some(uncropped::eval_uncropped(
            &ctx,
            &data.join("uncropped_identities"),
            lfw_threshold,
            &settings,
        )?);
    } else {
        skipped.push("uncropped_identities");
    }

    let timing_ms = ctx.timings.lock().unwrap_or_else(|e| e.into_inner()).report();
    let report = Report {
        calibration: lfw.as_ref().map(Calibration::from_lfw),
        lfw,
        lfw_synthetic_mask,
        mfr2,
        mask_detector,
        liveness,
        edge_cases,
        uncropped_identities,
        timing_ms,
        threads: args.threads,
        detector_first_pass_long_side: ctx.vision.config().detector.first_pass_long_side,
        skipped,
        data: data.display().to_string(),
        wall_seconds: round(started.elapsed().as_secs_f64(), 1),
    };
    // Through `Value`: its maps order keys alphabetically and it holds every float as an f64 (an
    // f32 written as the f64 it widens to), so the file reads as it always has.
    let report = serde_json::to_value(&report)?;
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)? + "\n")?;
    print_summary(&report);
    println!("report: {}", args.out.display());
    Ok(())
}
fn pct(v: &Value) -> String {
    v.as_f64()
        .map(|x| format!("{:.2} %", x * 100.0))
        .unwrap_or_else(|| "-".into())
}

fn print_summary(r: &Value) {
    println!("== lobby-eval ==");
    if let Some(l) = r.get("lfw") {
        println!(
            "LFW      accuracy {} ± {}  TAR@FAR1e-3 {}  threshold {:.4}  faces {}/{} images, {} pairs",
            pct(&l["accuracy"]),
            pct(&l["accuracy_std"]),
            pct(&l["tar_at_far_1e-3"]),
            l["threshold"].as_f64().unwrap_or(0.0),
            l["faces_found"],
            l["images"],
            l["pairs"]
        );
    }
    if let Some(m) = r.get("lfw_synthetic_mask") {
        println!(
            "LFW+mask accuracy {} ± {}  held-out folds {}  clean template only {}  (masked faces not re-detected: {})",
            pct(&m["accuracy"]),
            pct(&m["accuracy_std"]),
            pct(&m["accuracy_held_out_folds"]),
            pct(&m["accuracy_clean_template_only"]),
            m["masked_images_without_face"]
        );
    }
    if let Some(m) = r.get("mfr2") {
        println!(
            "MFR2     accuracy {}  masked-probe {} ({} pairs) TAR@FAR1e-2 {}  [clean template only: {} / {}]  faces {}/{}",
            pct(&m["accuracy"]),
            pct(&m["masked_probe_accuracy"]),
            m["masked_probe_pairs"],
            pct(&m["masked_probe_tar_at_far_1e-2"]),
            pct(&m["masked_probe_accuracy_clean_template_only"]),
            pct(&m["masked_probe_tar_at_far_1e-2_clean_template_only"]),
            m["faces_found"],
            m["images"]
        );
    }
    if let Some(d) = r.get("mask_detector") {
        println!(
            "Mask det accuracy on MFR2 labels {}  RWMFD called masked {}  LFW clean called unmasked {}  LFW synthetic called masked {}",
            pct(&d["accuracy_mfr2"]),
            pct(&d["rwmfd_called_masked"]["accuracy"]),
            pct(&d["lfw"]["lfw_unmasked_called_unmasked"]["rate"]),
            pct(&d["lfw"]["lfw_synthetic_masked_called_masked"]["rate"])
        );
    }
    if let Some(c) = r.get("calibration") {
        for (name, k) in [("unmasked", "all_pairs"), ("masked_probe", "")] {
            let v = if k.is_empty() { &c[name] } else { &c[name][k] };
            if let Some(Value::Object(at)) = v.get("at") {
                let row: Vec<String> = at
                    .iter()
                    .map(|(f, x)| {
                        format!(
                            "{f} {:.4} (TAR {})",
                            x["threshold"].as_f64().unwrap_or(0.0),
                            pct(&x["tar"])
                        )
                    })
                    .collect();
                println!("Thresholds {name}: {}", row.join("  "));
            }
        }
    }
    if let Some(c) = r.get("calibration").and_then(|c| c.get("cascade")) {
        let row = |o: &Value| {
            format!(
                "TAR {} (held out {}) FMR {:.2e} ({} false), in band: genuine {} impostors {}",
                pct(&o["tar"]),
                pct(&o["tar_held_out"]),
                o["fmr"].as_f64().unwrap_or(0.0),
                o["false_matches"],
                pct(&o["genuine_in_band"]),
                pct(&o["impostors_in_band"])
            )
        };
        println!(
            "Cascade  {} pairs; student alone: 1:1 {} | 1:N {}",
            c["pairs"],
            row(&c["student_alone"]["one_to_one"]),
            row(&c["student_alone"]["one_to_n"])
        );
        if let Some(Value::Object(vs)) = c.get("variants") {
            for (name, v) in vs {
                println!(
                    "Cascade  {name}: 1:1 thr {:.3} {} | 1:N thr {:.3} {}",
                    v["one_to_one"]["threshold"].as_f64().unwrap_or(f64::NAN),
                    row(&v["one_to_one"]["operating"]),
                    v["one_to_n"]["threshold"].as_f64().unwrap_or(f64::NAN),
                    row(&v["one_to_n"]["operating"])
                );
            }
        }
        println!(
            "Service  (cascade {}): 1:1 {} | 1:N {}",
            c["service"]["cascade_enabled"],
            row(&c["service"]["one_to_one"]),
            row(&c["service"]["one_to_n"])
        );
        let f = &c["fused_two_frames"];
        println!(
            "Fused 2 frames ({} comparisons), service thresholds: 1:1 {} | 1:N {}; student's own thresholds there: 1e-4 {:.4} 1e-5 {:.4}",
            f["probes_x_templates"],
            row(&f["service"]["one_to_one"]),
            row(&f["service"]["one_to_n"]),
            f["student_thresholds"]["fmr_1e-4"].as_f64().unwrap_or(0.0),
            f["student_thresholds"]["fmr_1e-5"].as_f64().unwrap_or(0.0)
        );
    }
    if let Some(l) = r.get("liveness") {
        println!(
            "Liveness at p(real) >= {}: APCER {} (NUAA prints + screen replays, {})  BPCER uncropped {}  LFW {}  NUAA live {}",
            l["threshold"],
            pct(&l["apcer"]),
            l["attacks"],
            pct(&l["bpcer_uncropped"]),
            pct(&l["bpcer_lfw"]),
            pct(&l["bpcer_nuaa_live"])
        );
        if let Some(Value::Object(rows)) = l.get("by_threshold") {
            for (t, v) in rows {
                println!(
                    "Liveness   {t}: APCER {}  BPCER uncropped {}  LFW {}  NUAA live {}",
                    pct(&v["apcer_print_and_screen"]),
                    pct(&v["bpcer_uncropped"]),
                    pct(&v["bpcer_lfw"]),
                    pct(&v["bpcer_nuaa_live"])
                );
            }
        }
    }
    if let Some(e) = r.get("edge_cases") {
        println!(
            "Edges    face count right on {}/{} asserted images",
            e["count_correct"], e["count_asserted"]
        );
    }
    if let Some(u) = r.get("uncropped_identities") {
        println!(
            "Uncropped accuracy at LFW threshold {}  rank-1 identification {} ({} probes)  faces {}/{}",
            pct(&u["accuracy_at_lfw_threshold"]),
            pct(&u["identification_rank1"]),
            u["identification_probes"],
            u["faces_found"],
            u["images"]
        );
    }
    for (name, c) in [
        ("LFW", r.get("lfw").map(|x| &x["capture"])),
        ("uncropped", r.get("uncropped_identities").map(|x| &x["capture"])),
        ("MFR2", r.get("mfr2").map(|x| &x["capture"])),
        ("edge multi_face", r.get("edge_cases").map(|x| &x["capture_multi_face"])),
    ] {
        let rules = c.and_then(|c| c.get("rules").or(Some(c))).and_then(|v| v.as_array());
        if let Some(rules) = rules {
            println!(
                "Capture  {name}: photos sent back per rule (TAR of genuine pairs hit at 1:1 / false matches 1:1, 1:N)"
            );
            for x in rules {
                println!(
                    "Capture    {:<64} {:>4}/{:<5} {:>7}  TAR hit {}  FM {} / {}",
                    x["rule"].as_str().unwrap_or(""),
                    x["sent_back"],
                    x["photos"],
                    pct(&x["rate"]),
                    pct(&x["tar_hit"]),
                    x["false_matches_hit_1to1"],
                    x["false_matches_hit_1ton"]
                );
            }
        }
    }
    if let Some(Value::Object(t)) = r.get("timing_ms") {
        for (k, v) in t {
            println!(
                "time     {k:<9} p50 {:>8.2} ms  p99 {:>8.2} ms  (n={})",
                v["p50"].as_f64().unwrap_or(0.0),
                v["p99"].as_f64().unwrap_or(0.0),
                v["n"]
            );
        }
    }
    if let Some(Value::Array(s)) = r.get("skipped") {
        if !s.is_empty() {
            println!("skipped (absent): {s:?}");
        }
    }
}
