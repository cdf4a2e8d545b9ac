//! `lobby-stages`: where one check-in's time goes, stage by stage, on one thread.
//!
//! Runs the service's own check-in path in process (`App::evaluate` + `App::record`: decode, detect,
//! quality, liveness, align, embed + mask, 1:N search, decision, the audited SQLite write) on
//! kiosk-like 640x480 JPEGs made from `uncropped_identities` (one photo per identity enrolled, the
//! others framed as a kiosk camera would), one request at a time, with one compute thread. Prints
//! p50/p99 per stage and in total, then each model's inference time alone (for the comparison with
//! onnxruntime, `bench/peer/`). Writes the frames (`--frames-out`) so the peer runs on the same bytes.
use anyhow::{Context, Result};
use chrono::Days;
use clap::Parser;
use lobby_bench::{kiosk, metrics::percentile, record};
use lobby_models::{default_model_dir, ensure, Source};
use lobby_service::config::{Role, Settings};
use lobby_service::core::Caller;
use lobby_service::core::Consent;
use lobby_service::core::{today, App};
use lobby_service::domain::ResStatus;
use lobby_service::store::ReservationInput;
use lobby_service::vision::{Vision, VisionConfig};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Per-stage check-in latency on one thread, on kiosk-like frames")]
struct Args {
    #[arg(long, default_value = "../shared/data", env = "LOBBY_TEST_DATA")]
    data: PathBuf,
    #[arg(long)]
    models: Option<PathBuf>,
    /// Passes over all the frames (after one warm-up pass).
    #[arg(long, default_value_t = 5)]
    passes: usize,
    /// Runs per model for the model-only timings.
    #[arg(long, default_value_t = 50)]
    model_runs: usize,
    /// Where to write the kiosk frames (JPEGs + frames.csv) for the peer and the load test.
    #[arg(long, default_value = "bench/out/frames")]
    frames_out: PathBuf,
    /// Only print each model's per-operator profile (tract) and exit.
    #[arg(long)]
    profile: bool,
    /// With `--profile`: one row per node (id, operator, parameters, input shape), all of them,
    /// instead of the 8 costliest operators.
    #[arg(long, requires = "profile")]
    per_node: bool,
    /// Plan the models with tract's own operators only (no `fastops` rewrite), to measure what the
    /// rewrite buys.
    #[arg(long)]
    tract_only: bool,
    #[command(flatten)]
    out: record::Output,
}

const PROPERTY: &str = "bench-hotel";

fn stats(v: &[f64]) -> serde_json::Value {
    json!({
        "p50": (percentile(v, 50.0) * 1000.0).round() / 1000.0,
        "p99": (percentile(v, 99.0) * 1000.0).round() / 1000.0,
        "mean": ((v.iter().sum::<f64>() / v.len().max(1) as f64) * 1000.0).round() / 1000.0,
        "n": v.len(),
    })
}

fn main() -> Result<()> {
    // One compute thread: Faiss/OpenBLAS single-threaded, tract is single-threaded per run.
    std::env::set_var("OMP_NUM_THREADS", "1");
    let args = Args::parse();
    if !args.data.join("uncropped_identities").exists() {
        anyhow::bail!(
            "{}: no uncropped_identities (set --data or LOBBY_TEST_DATA)",
            args.data.display()
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let model_dir = args.models.clone().unwrap_or_else(default_model_dir);
    let paths =
        ensure(&model_dir, &Source::from_env()).with_context(|| format!("models in {}", model_dir.display()))?;
    let scratch = std::env::temp_dir().join(format!("lobby-stages-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let mut settings = Settings::load_from(None, std::iter::empty())?;
    settings.data_dir = scratch.clone();
    settings.limits.max_concurrent_analyses = 1;
    // One bench kiosk sends every frame back to back: the per-kiosk frame budget (issue 17) is not
    // what this measures.
    settings.limits.kiosk_frames_per_minute = 1_000_000;
    settings.limits.kiosk_frame_burst = 100_000;
    let t0 = Instant::now();
    let vision_config = VisionConfig {
        fast_ops: !args.tract_only,
        ..App::vision_config(&settings)
    };
    let vision = Arc::new(Vision::load(&paths, vision_config)?);
    let load_s = t0.elapsed().as_secs_f64();
    if args.profile {
        for (name, shape, ops) in lobby_bench::profile::model_profile(&vision, args.model_runs, args.per_node)? {
            let total: f64 = ops.iter().map(|o| o.2).sum();
            println!("{name} {shape:?}: {total:.2} ms per run");
            let rows = if args.per_node { ops.len() } else { 8 };
            for (op, nodes, ms) in ops.iter().take(rows) {
                println!("  {ms:7.2} ms {:5.1} %  {op} ({nodes} nodes)", 100.0 * ms / total);
            }
        }
        return Ok(());
    }
    let app = Arc::new(rt.block_on(App::start(settings, vision.clone()))?);

    // Enrol one photo per identity; frame the others.
    let split = kiosk::split(&args.data)?;
    let enroller = Caller {
        id: "bench-pms".into(),
        role: Role::Enroller,
        property: None,
    };
    let kiosk_caller = Caller {
        id: "bench-kiosk".into(),
        role: Role::Kiosk,
        property: Some(PROPERTY.into()),
    };
    let day = today();
    let mut enrolled = 0;
    for (k, (path, id)) in split.enrol.iter().enumerate() {
        let code = format!("R{k:03}");
        rt.block_on(app.upsert_reservation(
            &enroller,
            &ReservationInput {
                property_id: PROPERTY.into(),
                code: code.clone(),
                full_name: id.clone(),
                guest_ref: format!("ref-{k}"),
                arrival: day,
                departure: day.checked_add_days(Days::new(2)).unwrap_or(day),
                status: ResStatus::Booked,
            },
        ))?;
        let photo = std::fs::read(path)?;
        let consent = Consent {
            granted: true,
            method: "bench".into(),
            text_version: "bench".into(),
            at_ms: 0,
        };
        let (_, _, stored) = rt.block_on(app.enrol(&enroller, PROPERTY, &code, vec![photo], consent))?;
        enrolled += usize::from(stored > 0);
    }
    let frames = kiosk::make_frames(&vision, &split)?;
    kiosk::write_frames(&args.frames_out, &frames)?;
    eprintln!(
        "models loaded in {load_s:.1} s; {enrolled}/{} guests enrolled; {} kiosk frames written to {}",
        split.enrol.len(),
        frames.len(),
        args.frames_out.display()
    );

    let mut t: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut cascade_runs = 0usize;
    for pass in 0..=args.passes {
        for f in &frames {
            let t_all = Instant::now();
            let eval = rt.block_on(app.evaluate(&kiosk_caller, f.jpeg.clone(), "", ""))?;
            let t_rec = Instant::now();
            let checkin = rt.block_on(app.record(&kiosk_caller, eval))?;
            let record_ms = t_rec.elapsed().as_secs_f64() * 1000.0;
            let total_ms = t_all.elapsed().as_secs_f64() * 1000.0;
            if pass == 0 {
                continue; // warm-up
            }
            let e = &checkin.eval;
            let s = e.analysis.timings;
            for (name, v) in [
                ("1 decode", s.decode_ms),
                ("2 detect", s.detect_ms),
                ("3 align", s.align_ms),
                ("4 quality", s.quality_ms),
                ("5 liveness", s.liveness_ms),
                ("6 embed+mask", s.embed_ms),
                ("7 search", e.search_ms),
                ("7b second stage", e.second_ms),
                ("8 decide", e.decide_ms),
                ("9 record", record_ms),
                ("total", total_ms),
            ] {
                t.entry(name).or_default().push(v);
            }
            *outcomes.entry(e.decision.outcome.as_str().to_string()).or_default() += 1;
            cascade_runs += e.decision.cascade.is_some() as usize;
        }
    }
    let mut table = String::from("| stage | p50 ms | p99 ms | mean ms |\n|---|---|---|---|\n");
    let mut stages = serde_json::Map::new();
    for (name, v) in &t {
        table.push_str(&format!(
            "| {name} | {:.2} | {:.2} | {:.2} |\n",
            percentile(v, 50.0),
            percentile(v, 99.0),
            v.iter().sum::<f64>() / v.len() as f64
        ));
        stages.insert(name.to_string(), stats(v));
    }
    let models = lobby_bench::profile::model_latency(&vision, args.model_runs)?;
    let mut mtable = String::from("| model (tract, alone) | input | p50 ms | p99 ms |\n|---|---|---|---|\n");
    let mut mjson = Vec::new();
    for (name, shape, v) in &models {
        mtable.push_str(&format!(
            "| {name} | {shape:?} | {:.2} | {:.2} |\n",
            percentile(v, 50.0),
            percentile(v, 99.0)
        ));
        mjson.push(json!({"model": name, "shape": shape, "ms": stats(v)}));
    }
    let n = t.get("total").map_or(0, Vec::len);
    let body = format!(
        "{n} check-ins (1:N over {enrolled} enrolled guests, {} frames x {} passes after a warm-up pass), one at a time, one compute thread; outcomes {outcomes:?}; the cascade's second stage ran for {cascade_runs}.\n\n{table}\n{mtable}",
        frames.len(),
        args.passes
    );
    println!("{body}");
    let report = json!({"checkins": n, "outcomes": outcomes, "second_stage_runs": cascade_runs, "stages": stages, "models": mjson, "machine": record::machine_facts()});
    args.out.emit("lobby-stages", &body, &report)?;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}
