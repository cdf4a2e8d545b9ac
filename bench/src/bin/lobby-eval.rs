//! `lobby-eval --data DIR --out FILE.json`: accuracy of the face pipeline on a folder with the layout
//! of `../shared/data`, per-stage latency, and a DET curve per dataset written next to the JSON.
//!
//! Protocols: LFW k-fold over the folds present, each fold's threshold chosen on the other folds;
//! MFR2 stratified 10-fold likewise; TAR at a fixed FAR pooled over all impostor pairs. Liveness:
//! APCER (attacks accepted as live) and BPCER (live faces rejected) at the service's threshold.

use anyhow::{Context, Result};
use clap::Parser;
use lobby_bench::capture::{self, CaptureFacts, ScoredPair};
use lobby_bench::cascade::{self, PairScores};
use lobby_bench::datasets::{self, Pair};
use lobby_bench::metrics::{self, det_points, kfold, percentile, tar_at_far};
use lobby_bench::plot::{det_png, Curve, COLORS};
use lobby_models::{default_model_dir, ensure, Source};
use lobby_service::core::App;
use lobby_service::config::Settings;
use lobby_service::gallery::fused;
use lobby_service::core::cascade::Mode;
use lobby_bench::masks::{random_mask, SplitMix};
use lobby_service::vision::mask_render;
use lobby_service::vision::second::SecondViews;
use lobby_service::vision::{Embedding, Face, MaskScore, SecondEmbeddings, SecondInput, Vision};
use rayon::prelude::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

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

#[derive(Default)]
struct Timings(BTreeMap<&'static str, Vec<f64>>);

impl Timings {
    fn add(&mut self, stage: &'static str, ms: f64) {
        self.0.entry(stage).or_default().push(ms);
    }
}

struct Ctx {
    vision: Vision,
    timings: Mutex<Timings>,
}

/// What the pipeline made of one image.
#[derive(Clone, Default)]
struct Processed {
    faces: usize,
    /// The guest (primary) face.
    face: Option<Face>,
    embedding: Option<Embedding>,
    /// The mask detector on the face as it is.
    mask: Option<MaskScore>,
    p_real: Option<f32>,
    /// Each liveness model's p(real): MiniFASNetV2 (x2.7), MiniFASNetV1SE (x4.0).
    p_real_models: Option<[f32; 2]>,
    error: Option<String>,
    /// Mask-aware enrolment's masked template of this face (`Vision::masked_template`).
    masked_template: Option<Embedding>,
    /// The photo with a synthetic mask (`vision::mask`, drawn from the image's seed), analysed as a
    /// kiosk photo: detected again (clean landmarks when missed), embedded, mask detector run.
    masked_probe: Option<MaskedProbe>,
    /// The cascade's second-stage embeddings (teacher and dlib, the face and its mirror apart).
    second: Option<SecondViews>,
    /// What the capture checks read (with the embedding).
    capture: Option<CaptureFacts>,
}

#[derive(Clone)]
struct MaskedProbe {
    embedding: Embedding,
    mask: MaskScore,
    redetected: bool,
}

/// Seeds of the synthetic masks drawn on evaluation probes: this base plus the image's index in
/// the sorted image list. Training used seeds from 7e9 on (`lobby-maskdata`).
const EVAL_MASK_SEED: u64 = 20261121;

impl Ctx {
    fn time<T>(&self, stage: &'static str, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = f();
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        self.timings.lock().unwrap_or_else(|e| e.into_inner()).add(stage, ms);
        r
    }

    /// Decode, detect, pick the primary face; then embed (and, with `second`, the second-stage
    /// embeddings) and/or run liveness; with `mask_seed`, also the masked template and a
    /// synthetically masked probe.
    fn process(&self, path: &Path, embed: bool, liveness: bool, mask_seed: Option<u64>, second: bool) -> Processed {
        let fail = |e: String| Processed {
            error: Some(e),
            ..Processed::default()
        };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => return fail(format!("{}: {e}", path.display())),
        };
        let img = match self.time("decode", || self.vision.decode(&bytes)) {
            Ok(i) => i,
            Err(e) => return fail(format!("{}: {e}", path.display())),
        };
        let faces = match self.time("detect", || self.vision.detect(&img)) {
            Ok(f) => f,
            Err(e) => return fail(format!("{}: {e}", path.display())),
        };
        let mut out = Processed {
            faces: faces.len(),
            ..Processed::default()
        };
        let Some(i) = lobby_service::vision::quality::primary_face(&faces, img.width(), img.height()) else {
            return out;
        };
        let face = &faces[i];
        out.face = Some(face.clone());
        if embed {
            let r = self
                .time("align", || self.vision.align(&img, face))
                .and_then(|aligned| {
                    out.capture = Some(CaptureFacts {
                        width: img.width(),
                        height: img.height(),
                        faces: faces.iter().map(|f| f.bbox).collect(),
                        primary: i,
                        quality: lobby_service::vision::quality::measure(
                            &faces,
                            i,
                            img.width(),
                            img.height(),
                            &aligned,
                        ),
                        masked: false,
                    });
                    let (e, m) = self.time("embed", || self.vision.embed_and_mask(&aligned))?;
                    let s = if second {
                        let input = SecondInput::new(&img, &face.landmarks, &aligned)?;
                        Some(self.time("second_stage", || self.vision.second_views(&input))?)
                    } else {
                        None
                    };
                    Ok((e, m, s))
                });
            match r {
                Ok((e, m, s)) => {
                    if let Some(c) = out.capture.as_mut() {
                        c.masked = m.masked;
                    }
                    out.mask = Some(m);
                    out.embedding = Some(e);
                    out.second = s;
                }
                Err(e) => out.error = Some(format!("{}: {e}", path.display())),
            }
        }
        if let Some(seed) = mask_seed {
            out.masked_template = self.vision.masked_template(&img, face).ok().flatten();
            out.masked_probe = self.masked_probe(&img, face, seed);
        }
        if liveness {
            match self.time("liveness", || self.vision.liveness(&img, face)) {
                Ok(l) => {
                    out.p_real = Some(l.p_real);
                    out.p_real_models = Some([l.p_real_v2, l.p_real_v1se]);
                }
                Err(e) => out.error = Some(format!("{}: {e}", path.display())),
            }
        }
        out
    }

    fn masked_probe(&self, img: &image::RgbImage, clean: &Face, seed: u64) -> Option<MaskedProbe> {
        let spec = random_mask(&mut SplitMix::new(seed));
        let masked = mask_render::render(img, &clean.landmarks, &spec)?;
        let faces = self.vision.detect(&masked).ok()?;
        let (face, redetected) =
            match lobby_service::vision::quality::primary_face(&faces, masked.width(), masked.height()) {
                Some(k) => (&faces[k], true),
                None => (clean, false),
            };
        let (embedding, mask) = self
            .vision
            .embed_and_mask(&self.vision.align(&masked, face).ok()?)
            .ok()?;
        Some(MaskedProbe {
            embedding,
            mask,
            redetected,
        })
    }

    /// `process` over sorted `paths`; `masked` adds the mask extras, image i's probe mask drawn from
    /// seed `EVAL_MASK_SEED + i`.
    fn process_all(&self, paths: &[PathBuf], embed: bool, liveness: bool, masked: bool) -> HashMap<PathBuf, Processed> {
        self.process_all_with(paths, embed, liveness, masked, false)
    }

    /// [`Ctx::process_all`], with the second-stage embeddings when `second`.
    fn process_all_with(
        &self,
        paths: &[PathBuf],
        embed: bool,
        liveness: bool,
        masked: bool,
        second: bool,
    ) -> HashMap<PathBuf, Processed> {
        paths
            .par_iter()
            .enumerate()
            .map(|(i, p)| {
                let seed = masked.then_some(EVAL_MASK_SEED + i as u64);
                (p.clone(), self.process(p, embed, liveness, seed, second))
            })
            .collect()
    }
}

fn unique_images(pairs: &[Pair]) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = pairs.iter().flat_map(|p| [p.a.clone(), p.b.clone()]).collect();
    v.sort();
    v.dedup();
    v
}

/// Cosine score per pair; a pair with an image where no face was found scores -1 (a non-match).
fn pair_scores(pairs: &[Pair], done: &HashMap<PathBuf, Processed>) -> Vec<f32> {
    pairs
        .iter()
        .map(|p| {
            match (
                done.get(&p.a).and_then(|x| x.embedding.as_ref()),
                done.get(&p.b).and_then(|x| x.embedding.as_ref()),
            ) {
                (Some(a), Some(b)) => a.cosine(b),
                _ => -1.0,
            }
        })
        .collect()
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

fn write_det(out: &Path, name: &str, title: &str, curves: &[(&str, &[f32], &[bool])]) -> Result<PathBuf> {
    let stem = out.file_stem().and_then(|s| s.to_str()).unwrap_or("eval");
    let path = out.with_file_name(format!("{stem}.{name}.det.png"));
    let pts: Vec<Vec<(f64, f64)>> = curves.iter().map(|(_, s, l)| det_points(s, l)).collect();
    let cs: Vec<Curve> = curves
        .iter()
        .zip(pts.iter())
        .enumerate()
        .map(|(i, ((label, _, _), p))| Curve {
            label,
            points: p,
            color: COLORS[i % COLORS.len()],
        })
        .collect();
    det_png(&path, title, "FALSE MATCH RATE", "FALSE NON-MATCH RATE", &cs)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// LFW folds of `pairs.txt` (zero-based) whose images trained the mask models
/// (`models/trained/README.md`); the others are identities those models never saw.
const MASK_TRAIN_FOLDS: [usize; 3] = [0, 1, 2];

/// The service's score for a probe against an enrolled face (`gallery::fused`): clean similarity for
/// a probe the mask detector calls unmasked, else the mean of its similarity to the clean and the
/// masked template.
fn service_score(enrolled: &Processed, probe: &Embedding, probe_masked: bool) -> Option<f32> {
    let clean = enrolled.embedding.as_ref()?.cosine(probe);
    let masked = enrolled.masked_template.as_ref().map(|t| t.cosine(probe));
    Some(fused(probe_masked, clean, masked))
}

/// Accuracy (k-fold over the folds present) of `scores` restricted to the pairs `keep` accepts.
fn kfold_subset(scores: &[f32], pairs: &[Pair], keep: impl Fn(&Pair) -> bool) -> metrics::KFold {
    let idx: Vec<usize> = (0..pairs.len()).filter(|&i| keep(&pairs[i])).collect();
    let s: Vec<f32> = idx.iter().map(|&i| scores[i]).collect();
    let l: Vec<bool> = idx.iter().map(|&i| pairs[i].same).collect();
    let f: Vec<usize> = idx.iter().map(|&i| pairs[i].fold).collect();
    kfold(&s, &l, &f)
}

fn eval_lfw(ctx: &Ctx, dir: &Path, out: &Path, settings: &Settings) -> Result<(Value, Value, f32)> {
    let pairs = datasets::lfw_pairs(dir)?;
    let images = unique_images(&pairs);
    eprintln!(
        "lfw: {} pairs, {} images (each also masked, and enrolled mask-aware; second-stage embeddings)",
        pairs.len(),
        images.len()
    );
    let done = ctx.process_all_with(&images, true, false, true, true);
    let found = done.values().filter(|p| p.embedding.is_some()).count();
    let scores = pair_scores(&pairs, &done);
    let labels: Vec<bool> = pairs.iter().map(|p| p.same).collect();
    let folds: Vec<usize> = pairs.iter().map(|p| p.fold).collect();
    let k = kfold(&scores, &labels, &folds);
    let held_out = |p: &Pair| !MASK_TRAIN_FOLDS.contains(&p.fold);
    let k_held = kfold_subset(&scores, &pairs, held_out);
    let threshold = metrics::best_threshold(&scores, &labels);
    let (tar3, thr3) = tar_at_far(&scores, &labels, 1e-3);
    let (tar4, thr4) = tar_at_far(&scores, &labels, 1e-4);
    let (_, thr2) = tar_at_far(&scores, &labels, 1e-2);
    // One image of each pair masked: the first is enrolled (clean + masked template), the second is
    // the masked probe, scored as the service scores it.
    let probe = |p: &Pair| done.get(&p.b).and_then(|x| x.masked_probe.as_ref());
    let masked_scores: Vec<f32> = pairs
        .iter()
        .map(|p| {
            let (Some(e), Some(m)) = (done.get(&p.a), probe(p)) else {
                return -1.0;
            };
            service_score(e, &m.embedding, m.mask.masked).unwrap_or(-1.0)
        })
        .collect();
    let clean_only: Vec<f32> = pairs
        .iter()
        .map(
            |p| match (done.get(&p.a).and_then(|x| x.embedding.as_ref()), probe(p)) {
                (Some(e), Some(m)) => e.cosine(&m.embedding),
                _ => -1.0,
            },
        )
        .collect();
    let mk = kfold(&masked_scores, &labels, &folds);
    let mk_held = kfold_subset(&masked_scores, &pairs, held_out);
    let mk_clean_only = kfold(&clean_only, &labels, &folds);
    let misses = pairs.iter().filter(|p| probe(p).is_some_and(|m| !m.redetected)).count();
    let det = write_det(
        out,
        "lfw",
        "LFW DET",
        &[
            ("UNMASKED", &scores, &labels),
            ("ONE SYNTHETIC MASK", &masked_scores, &labels),
        ],
    )?;
    let all_pairs = all_pairs_calibration(&done);
    let masked_calibration = masked_probe_calibration(&done, &pairs, held_out);
    let cascade = cascade_calibration(&done, &pairs, settings);
    let capture = capture_costs(&done, settings, |p| {
        p.parent()
            .and_then(|d| d.file_name())
            .and_then(|n| n.to_str())
            .map(str::to_string)
    });
    let synthetic = json!({
        "accuracy": round(mk.mean, 5),
        "accuracy_std": round(mk.std, 5),
        "accuracy_held_out_folds": round(mk_held.mean, 5),
        "accuracy_clean_template_only": round(mk_clean_only.mean, 5),
        "accuracy_at_unmasked_threshold": round(metrics::accuracy_at(&masked_scores, &labels, threshold), 5),
        "tar_at_far_1e-3": round(tar_at_far(&masked_scores, &labels, 1e-3).0, 5),
        "threshold": metrics::best_threshold(&masked_scores, &labels),
        "masked_images_without_face": misses,
        "probes_called_masked": pairs.iter().filter(|p| probe(p).is_some_and(|m| m.mask.masked)).count(),
        "note": format!("second image of each pair masked by vision::mask (seed {EVAL_MASK_SEED} + the image's index among the sorted LFW images), detected again (clean landmarks when missed), scored as the service does against the first image's clean and masked templates; the mask models were trained on images of folds {MASK_TRAIN_FOLDS:?} (other masks), so accuracy_held_out_folds is the figure on unseen identities"),
    });
    let missing: Vec<String> = done
        .iter()
        .filter(|(_, p)| p.embedding.is_none())
        .map(|(k, _)| k.display().to_string())
        .collect();
    let mask_detector = json!({
        "lfw_unmasked_called_unmasked": rate_of(done.values().filter_map(|p| p.mask.map(|m| !m.masked))),
        "lfw_synthetic_masked_called_masked": rate_of(done.values().filter_map(|p| p.masked_probe.as_ref().map(|m| m.mask.masked))),
    });
    let v = json!({
        "accuracy": round(k.mean, 5),
        "accuracy_std": round(k.std, 5),
        "accuracy_held_out_folds": round(k_held.mean, 5),
        "fold_accuracies": k.fold_accuracies.iter().map(|a| round(*a, 5)).collect::<Vec<_>>(),
        "fold_thresholds": k.fold_thresholds,
        "folds": k.fold_accuracies.len(),
        "tar_at_far_1e-3": round(tar3, 5),
        "threshold_at_far_1e-3": thr3,
        "tar_at_far_1e-4": round(tar4, 5),
        "threshold_at_far_1e-4": thr4,
        "threshold_at_far_1e-2": thr2,
        "threshold": threshold,
        "faces_found": found,
        "images": images.len(),
        "pairs": pairs.len(),
        "impostor_pairs": labels.iter().filter(|l| !**l).count(),
        "images_without_face": missing,
        "det_png": det.display().to_string(),
        "all_pairs": all_pairs,
        "masked_probe_all_pairs": masked_calibration,
        "cascade": cascade,
        "capture": capture,
        "mask_detector": mask_detector,
    });
    Ok((v, synthetic, threshold))
}

/// Share of `true` in `it`, with the count.
fn rate_of(it: impl Iterator<Item = bool>) -> Value {
    let (mut n, mut yes) = (0usize, 0usize);
    for b in it {
        n += 1;
        yes += b as usize;
    }
    json!({"rate": round(yes as f64 / n.max(1) as f64, 5), "n": n})
}

/// Thresholds for masked probes at the same FMRs as the unmasked ones: every masked probe of a
/// held-out fold's image against every other held-out image enrolled mask-aware, scored as the
/// service does (the probe's own mask verdict decides clean or mean scoring).
fn masked_probe_calibration(done: &HashMap<PathBuf, Processed>, pairs: &[Pair], keep: impl Fn(&Pair) -> bool) -> Value {
    let mut paths: Vec<&PathBuf> = pairs.iter().filter(|p| keep(p)).flat_map(|p| [&p.a, &p.b]).collect();
    paths.sort();
    paths.dedup();
    let items: Vec<(String, &Processed)> = paths
        .iter()
        .filter_map(|p| {
            let id = p.parent()?.file_name()?.to_str()?.to_string();
            let x = done.get(*p)?;
            x.embedding.as_ref()?;
            Some((id, x))
        })
        .collect();
    let per_probe: Vec<(Vec<f32>, Vec<f32>)> = items
        .par_iter()
        .enumerate()
        .map(|(i, (id, x))| {
            let (mut imp, mut gen) = (Vec::new(), Vec::new());
            let Some(m) = x.masked_probe.as_ref() else {
                return (imp, gen);
            };
            for (j, (id2, y)) in items.iter().enumerate() {
                if i == j {
                    continue;
                }
                let Some(s) = service_score(y, &m.embedding, m.mask.masked) else {
                    continue;
                };
                if id == id2 {
                    gen.push(s)
                } else {
                    imp.push(s)
                }
            }
            (imp, gen)
        })
        .collect();
    let impostor: Vec<f32> = per_probe.iter().flat_map(|p| p.0.iter().copied()).collect();
    let genuine: Vec<f32> = per_probe.iter().flat_map(|p| p.1.iter().copied()).collect();
    let mut v = thresholds_at_fmr(impostor, &genuine, &[("1e-3", 1e-3), ("1e-4", 1e-4), ("1e-5", 1e-5)]);
    v["images"] = json!(items.len());
    v["source"] = json!("LFW images of the folds the mask models did not train on, each masked once (probe) against every other one enrolled mask-aware");
    v
}

/// The threshold at each false-match rate (the score the impostors exceed at that rate) and the TAR
/// of the genuine scores there.
fn thresholds_at_fmr(mut impostor: Vec<f32>, genuine: &[f32], fmrs: &[(&str, f64)]) -> Value {
    let n = impostor.len();
    impostor.sort_unstable_by(|a, b| b.total_cmp(a));
    let mut rows = serde_json::Map::new();
    for (name, fmr) in fmrs {
        let k = (fmr * n as f64).floor() as usize;
        if k == 0 || k >= n {
            continue;
        }
        let t = impostor[k];
        let tar = genuine.iter().filter(|s| **s > t).count() as f64 / genuine.len().max(1) as f64;
        rows.insert(format!("fmr_{name}"), json!({"threshold": t, "tar": round(tar, 5)}));
    }
    json!({"impostor_pairs": n, "genuine_pairs": genuine.len(), "at": rows})
}

/// Thresholds at low false-match rates need far more impostor pairs than the 1500 of the protocol:
/// every pair of LFW images of different people (identity = folder name) gives millions. Genuine
/// pairs: every pair of images of the same person.
fn all_pairs_calibration(done: &HashMap<PathBuf, Processed>) -> Value {
    let mut items: Vec<(String, &Embedding)> = done
        .iter()
        .filter_map(|(p, x)| {
            let id = p.parent()?.file_name()?.to_str()?.to_string();
            Some((id, x.embedding.as_ref()?))
        })
        .collect();
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let (mut impostor, mut genuine) = (Vec::new(), Vec::new());
    for i in 0..items.len() {
        for j in i + 1..items.len() {
            let s = items[i].1.cosine(items[j].1);
            if items[i].0 == items[j].0 {
                genuine.push(s)
            } else {
                impostor.push(s)
            }
        }
    }
    thresholds_at_fmr(
        impostor,
        &genuine,
        &[("1e-3", 1e-3), ("1e-4", 1e-4), ("1e-5", 1e-5), ("1e-6", 1e-6)],
    )
}

/// Every pair of LFW images (identity = folder), scored by each of the three models; a pair is
/// held out when its identity's fold is one the trained models never saw.
fn all_pair_scores(done: &HashMap<PathBuf, Processed>, pairs: &[Pair], flip: [bool; 2]) -> PairScores {
    let mut fold_of: HashMap<String, usize> = HashMap::new();
    let id_of = |p: &Path| {
        p.parent()
            .and_then(|d| d.file_name())
            .and_then(|n| n.to_str())
            .map(str::to_string)
    };
    for p in pairs {
        for img in [&p.a, &p.b] {
            if let Some(id) = id_of(img) {
                fold_of.insert(id, p.fold);
            }
        }
    }
    let mut items: Vec<(String, &Embedding, SecondEmbeddings)> = done
        .iter()
        .filter_map(|(p, x)| {
            let second = x.second.as_ref()?.embeddings(flip).ok()?;
            Some((id_of(p)?, x.embedding.as_ref()?, second))
        })
        .collect();
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let rows: Vec<PairScores> = (0..items.len())
        .into_par_iter()
        .map(|i| {
            let mut s = PairScores::default();
            let (id, e, x) = &items[i];
            let held = !fold_of.get(id).is_some_and(|f| MASK_TRAIN_FOLDS.contains(f));
            for (id2, e2, x2) in &items[i + 1..] {
                s.student.push(e.cosine(e2));
                s.teacher.push(x.teacher.cosine(&x2.teacher));
                s.dlib.push(match (&x.dlib, &x2.dlib) {
                    (Some(a), Some(b)) => a.cosine(b),
                    _ => -1.0,
                });
                s.genuine.push(id == id2);
                s.held_out.push(held);
            }
            s
        })
        .collect();
    let mut all = PairScores::default();
    for r in rows {
        all.student.extend(r.student);
        all.teacher.extend(r.teacher);
        all.dlib.extend(r.dlib);
        all.genuine.extend(r.genuine);
        all.held_out.extend(r.held_out);
    }
    all
}

/// Fused probes, as a check-in stream fuses several good frames of one guest: for every LFW identity
/// with three or more images, each pair of its first four images fused (the mean of each
/// model's embeddings) is a probe, scored against every other image (genuine when of the same
/// identity).
fn fused_probe_scores(done: &HashMap<PathBuf, Processed>, pairs: &[Pair], flip: [bool; 2]) -> PairScores {
    let id_of = |p: &Path| {
        p.parent()
            .and_then(|d| d.file_name())
            .and_then(|n| n.to_str())
            .map(str::to_string)
    };
    let mut fold_of: HashMap<String, usize> = HashMap::new();
    for p in pairs {
        for img in [&p.a, &p.b] {
            if let Some(id) = id_of(img) {
                fold_of.insert(id, p.fold);
            }
        }
    }
    let mut items: Vec<(String, PathBuf, Embedding, SecondEmbeddings)> = done
        .iter()
        .filter_map(|(p, x)| {
            let second = x.second.as_ref()?.embeddings(flip).ok()?;
            Some((id_of(p)?, p.clone(), x.embedding.clone()?, second))
        })
        .collect();
    items.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    // As the service fuses frames (`ladder::mean_embedding`).
    let mean = |a: &Embedding, b: &Embedding| {
        lobby_service::core::ladder::mean_embedding([a, b].into_iter()).unwrap_or_else(|| a.clone())
    };
    let mut probes: Vec<(usize, usize)> = Vec::new();
    let mut start = 0;
    while start < items.len() {
        let end = (start..items.len())
            .find(|&k| items[k].0 != items[start].0)
            .unwrap_or(items.len());
        if end - start >= 3 {
            let first = start..(start + 4).min(end);
            for i in first.clone() {
                for j in i + 1..first.end {
                    probes.push((i, j));
                }
            }
        }
        start = end;
    }
    let rows: Vec<PairScores> = probes
        .par_iter()
        .map(|&(i, j)| {
            let (id, _, e1, s1) = &items[i];
            let (_, _, e2, s2) = &items[j];
            let e = mean(e1, e2);
            let t = mean(&s1.teacher, &s2.teacher);
            let d = match (&s1.dlib, &s2.dlib) {
                (Some(a), Some(b)) => Some(mean(a, b)),
                _ => None,
            };
            let held = !fold_of.get(id).is_some_and(|f| MASK_TRAIN_FOLDS.contains(f));
            let mut s = PairScores::default();
            for (k, (id2, _, e3, s3)) in items.iter().enumerate() {
                if k == i || k == j {
                    continue;
                }
                s.student.push(e.cosine(e3));
                s.teacher.push(t.cosine(&s3.teacher));
                s.dlib.push(match (&d, &s3.dlib) {
                    (Some(a), Some(b)) => a.cosine(b),
                    _ => -1.0,
                });
                s.genuine.push(id == id2);
                s.held_out.push(held);
            }
            s
        })
        .collect();
    let mut all = PairScores::default();
    for r in rows {
        all.student.extend(r.student);
        all.teacher.extend(r.teacher);
        all.dlib.extend(r.dlib);
        all.genuine.extend(r.genuine);
        all.held_out.extend(r.held_out);
    }
    all
}

/// Each capture check's cost on the photos of `done` (every photo's facts) and, over every pair of
/// them (identity from `id_of`), what it protects.
fn capture_costs(
    done: &HashMap<PathBuf, Processed>,
    settings: &Settings,
    id_of: impl Fn(&Path) -> Option<String>,
) -> Value {
    let mut items: Vec<(String, &CaptureFacts, &Embedding)> = done
        .iter()
        .filter_map(|(p, x)| Some((id_of(p)?, x.capture.as_ref()?, x.embedding.as_ref()?)))
        .collect();
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let facts: Vec<CaptureFacts> = items.iter().map(|(_, f, _)| (*f).clone()).collect();
    let mut pairs = Vec::new();
    for i in 0..items.len() {
        for j in i + 1..items.len() {
            pairs.push(ScoredPair {
                a: i,
                b: j,
                score: items[i].2.cosine(items[j].2),
                genuine: items[i].0 == items[j].0,
            });
        }
    }
    let p = &settings.policy;
    json!({
        "photos": facts.len(),
        "genuine_pairs": pairs.iter().filter(|q| q.genuine).count(),
        "tar_all_1to1": pairs.iter().filter(|q| q.genuine && q.score >= p.match_threshold).count() as f64
            / pairs.iter().filter(|q| q.genuine).count().max(1) as f64,
        "false_matches_all_1to1": pairs.iter().filter(|q| !q.genuine && q.score >= p.match_threshold).count(),
        "false_matches_all_1ton": pairs.iter().filter(|q| !q.genuine && q.score >= p.match_threshold_1n).count(),
        "rules": capture::costs(p, &facts, &pairs),
    })
}

/// The cascade on LFW all pairs: z-normalisation statistics, the student's own thresholds, and for
/// each weighting the fused thresholds that keep 1:1 at FMR 1e-4 (band: the student's 1e-3..1e-5
/// thresholds) and 1:N at 1e-5 per comparison (band 1e-4..1e-6), with what each buys; then the
/// service's configured thresholds run over the same pairs.
fn cascade_calibration(done: &HashMap<PathBuf, Processed>, pairs: &[Pair], settings: &Settings) -> Value {
    let p = &settings.policy;
    let mut variants = serde_json::Map::new();
    let mut head = Value::Null;
    for flip in [[true, true], [true, false], [false, true], [false, false]] {
        let s = all_pair_scores(done, pairs, flip);
        let z = cascade::znorm_stats(&s);
        let t = |fmr: f64| cascade::student_threshold(&s, fmr);
        let (t3, t4, t5, t6) = (t(1e-3), t(1e-4), t(1e-5), t(1e-6));
        let mut student_policy = p.clone();
        student_policy.match_threshold = t4;
        student_policy.match_threshold_1n = t5;
        if head.is_null() {
            let mut alone = settings.cascade.clone();
            alone.enabled = false;
            head = json!({
                "pairs": s.len(),
                "genuine_pairs": s.genuine.iter().filter(|g| **g).count(),
                "impostor_pairs": s.genuine.iter().filter(|g| !**g).count(),
                "student_thresholds": {"fmr_1e-3": t3, "fmr_1e-4": t4, "fmr_1e-5": t5, "fmr_1e-6": t6},
                "student_alone": {
                    "one_to_one": cascade::operate(&s, &student_policy, &alone, Mode::OneToOne),
                    "one_to_n": cascade::operate(&s, &student_policy, &alone, Mode::OneToN),
                },
            });
        }
        for (name, w) in [
            ("student_teacher_dlib", [0.1, 0.7, 0.2]),
            ("student_teacher", [0.1, 0.9, 0.0]),
        ] {
            let mut c = settings.cascade.clone();
            c.enabled = true;
            c.weights = w;
            c.flip = flip;
            c.impostor_mean = z.mean;
            c.impostor_sd = z.sd;
            c.one_to_one = cascade::calibrate_band(&s, &c, t3, t5, 1e-4);
            c.one_to_n = cascade::calibrate_band(&s, &c, t4, t6, 1e-5);
            let key = format!(
                "{name}{}{}",
                if flip[0] { "+teacher_flip" } else { "" },
                if flip[1] && w[2] > 0.0 { "+dlib_flip" } else { "" }
            );
            if variants.contains_key(&key) {
                continue;
            }
            variants.insert(
                key,
                json!({
                    "weights": w,
                    "flip": flip,
                    "znorm": z,
                    "one_to_one": {"band": c.one_to_one.band, "threshold": c.one_to_one.threshold,
                                    "operating": cascade::operate(&s, &student_policy, &c, Mode::OneToOne)},
                    "one_to_n": {"band": c.one_to_n.band, "threshold": c.one_to_n.threshold,
                                  "operating": cascade::operate(&s, &student_policy, &c, Mode::OneToN)},
                }),
            );
        }
    }
    let s = all_pair_scores(done, pairs, settings.cascade.flip);
    // Two frames fused: does the service's decision keep its false-match rates?
    let f = fused_probe_scores(done, pairs, settings.cascade.flip);
    let mut fused_policy = p.clone();
    fused_policy.match_threshold = cascade::student_threshold(&f, 1e-4);
    fused_policy.match_threshold_1n = cascade::student_threshold(&f, 1e-5);
    let mut fused_alone = settings.cascade.clone();
    fused_alone.enabled = false;
    let fused = json!({
        "probes_x_templates": f.len(),
        "genuine": f.genuine.iter().filter(|g| **g).count(),
        "service": {
            "one_to_one": cascade::operate(&f, p, &settings.cascade, Mode::OneToOne),
            "one_to_n": cascade::operate(&f, p, &settings.cascade, Mode::OneToN),
        },
        "student_thresholds": {"fmr_1e-4": fused_policy.match_threshold, "fmr_1e-5": fused_policy.match_threshold_1n},
        "student_alone_at_its_own_thresholds": {
            "one_to_one": cascade::operate(&f, &fused_policy, &fused_alone, Mode::OneToOne),
            "one_to_n": cascade::operate(&f, &fused_policy, &fused_alone, Mode::OneToN),
        },
        "note": "probes: two images of an identity fused (the mean of each model's embeddings, not renormalised: the mean of the frames' scores), as the check-in stream fuses good frames; scored against every other image; 'service' applies the configured thresholds unchanged",
    });
    let mut out = head;
    out["fused_two_frames"] = fused;
    out["variants"] = Value::Object(variants);
    out["service"] = json!({
        "cascade_enabled": settings.cascade.enabled,
        "weights": settings.cascade.weights,
        "flip": settings.cascade.flip,
        "one_to_one": cascade::operate(&s, p, &settings.cascade, Mode::OneToOne),
        "one_to_n": cascade::operate(&s, p, &settings.cascade, Mode::OneToN),
    });
    out["note"] = json!("every pair of LFW images (folds 1-5 and the extra images per identity), unmasked probes; each variant's z-statistics and thresholds calibrated on these pairs; 'service' runs the configured thresholds (defaults.toml or --config) with matching::judge; tar_held_out counts genuine pairs of the folds the trained models never saw");
    out
}

fn eval_mfr2(ctx: &Ctx, dir: &Path, out: &Path, settings: &Settings) -> Result<Value> {
    let pairs = datasets::mfr2_pairs(dir)?;
    let images = unique_images(&pairs);
    eprintln!("mfr2: {} pairs, {} images", pairs.len(), images.len());
    let done = ctx.process_all(&images, true, false, true);
    let found = done.values().filter(|p| p.embedding.is_some()).count();
    let labels: Vec<bool> = pairs.iter().map(|p| p.same).collect();
    let folds: Vec<usize> = pairs.iter().map(|p| p.fold).collect();
    // As the service would: the unmasked photo of a pair (the first when both are alike) is the
    // enrolment (clean + masked template), the other the kiosk probe, scored by its mask verdict.
    let scored = |p: &Pair, clean_only: bool| -> f32 {
        let (e, q) = if p.masked.0 && !p.masked.1 {
            (&p.b, &p.a)
        } else {
            (&p.a, &p.b)
        };
        let (Some(e), Some(q)) = (done.get(e), done.get(q)) else {
            return -1.0;
        };
        let (Some(emb), Some(m)) = (q.embedding.as_ref(), q.mask) else {
            return -1.0;
        };
        if clean_only {
            return e.embedding.as_ref().map(|c| c.cosine(emb)).unwrap_or(-1.0);
        }
        service_score(e, emb, m.masked).unwrap_or(-1.0)
    };
    let scores: Vec<f32> = pairs.iter().map(|p| scored(p, false)).collect();
    let plain: Vec<f32> = pairs.iter().map(|p| scored(p, true)).collect();
    let k = kfold(&scores, &labels, &folds);
    let (tar2, thr2) = tar_at_far(&scores, &labels, 1e-2);
    // Masked probe: exactly one of the two images masked (enrol unmasked, probe masked), with its
    // own threshold (the condition-specific one), k-fold like the rest.
    let one_masked = |p: &Pair| p.masked.0 != p.masked.1;
    let one = kfold_subset(&scores, &pairs, one_masked);
    let one_plain = kfold_subset(&plain, &pairs, one_masked);
    let one_idx: Vec<usize> = (0..pairs.len()).filter(|&i| one_masked(&pairs[i])).collect();
    let one_scores: Vec<f32> = one_idx.iter().map(|&i| scores[i]).collect();
    let one_labels: Vec<bool> = one_idx.iter().map(|&i| labels[i]).collect();
    let one_plain_scores: Vec<f32> = one_idx.iter().map(|&i| plain[i]).collect();
    let (one_tar2, one_thr2) = tar_at_far(&one_scores, &one_labels, 1e-2);
    let det = write_det(
        out,
        "mfr2",
        "MFR2 DET (REAL MASKS)",
        &[
            ("ALL PAIRS", &scores, &labels),
            ("ONE MASKED", &one_scores, &one_labels),
            ("CLEAN TPL ONLY", &one_plain_scores, &one_labels),
        ],
    )?;
    // The mask detector against MFR2's real labels, one verdict per image.
    let mut label_of: BTreeMap<&PathBuf, bool> = BTreeMap::new();
    for p in &pairs {
        label_of.insert(&p.a, p.masked.0);
        label_of.insert(&p.b, p.masked.1);
    }
    let verdicts: Vec<(bool, bool)> = label_of
        .iter()
        .filter_map(|(path, l)| done.get(*path).and_then(|x| x.mask).map(|m| (*l, m.masked)))
        .collect();
    let right = verdicts.iter().filter(|(l, v)| l == v).count();
    Ok(json!({
        "accuracy": round(k.mean, 5),
        "accuracy_std": round(k.std, 5),
        "masked_probe_accuracy": round(one.mean, 5),
        "masked_probe_accuracy_std": round(one.std, 5),
        "masked_probe_accuracy_clean_template_only": round(one_plain.mean, 5),
        "masked_probe_pairs": one_idx.len(),
        "masked_probe_impostor_pairs": one_labels.iter().filter(|l| !**l).count(),
        "tar_at_far_1e-2": round(tar2, 5),
        "threshold_at_far_1e-2": thr2,
        "masked_probe_tar_at_far_1e-2": round(one_tar2, 5),
        "masked_probe_threshold_at_far_1e-2": one_thr2,
        "masked_probe_tar_at_far_1e-2_clean_template_only": round(tar_at_far(&one_plain_scores, &one_labels, 1e-2).0, 5),
        "threshold": metrics::best_threshold(&scores, &labels),
        "faces_found": found,
        "images": images.len(),
        "pairs": pairs.len(),
        "mask_detector": {
            "accuracy": round(right as f64 / verdicts.len().max(1) as f64, 5),
            "images": verdicts.len(),
            "masked_right": verdicts.iter().filter(|(l, v)| *l && *v).count(),
            "masked": verdicts.iter().filter(|(l, _)| *l).count(),
            "unmasked_right": verdicts.iter().filter(|(l, v)| !*l && !*v).count(),
            "unmasked": verdicts.iter().filter(|(l, _)| !*l).count(),
        },
        "det_png": det.display().to_string(),
        "capture": capture_costs(&done, settings, |p| {
            p.parent().and_then(|d| d.file_name()).and_then(|n| n.to_str()).map(str::to_string)
        }),
        "note": "pairs scored as the service scores them: the unmasked image enrolled mask-aware, the other the probe; k-fold accuracy, the masked-probe subset with its own thresholds",
    }))
}

/// The mask detector on RWMFD (every face masked, in the wild).
fn eval_rwmfd(ctx: &Ctx, dir: &Path) -> Result<Value> {
    let csv = datasets::Csv::read(&dir.join("manifest.csv"))?;
    let col = csv.col("image")?;
    let paths: Vec<PathBuf> = csv.rows.iter().map(|r| dir.join(&r[col])).collect();
    eprintln!("rwmfd: {} images", paths.len());
    let done = ctx.process_all(&paths, true, false, false);
    let verdicts: Vec<bool> = paths
        .iter()
        .filter_map(|p| done.get(p).and_then(|x| x.mask).map(|m| m.masked))
        .collect();
    Ok(json!({
        "images": paths.len(),
        "faces_found": verdicts.len(),
        "called_masked": verdicts.iter().filter(|v| **v).count(),
        "accuracy": round(verdicts.iter().filter(|v| **v).count() as f64 / verdicts.len().max(1) as f64, 5),
    }))
}

/// Real photos of real people as further bona fide liveness samples: every uncropped identity's
/// photo, and the first photo of the first `lfw_n` LFW identities (sorted).
fn real_photo_samples(data: &Path, lfw_n: usize) -> Vec<datasets::LiveSample> {
    let mut out = Vec::new();
    let files = |dir: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    for id in files(&data.join("uncropped_identities/images")) {
        for path in files(&id) {
            out.push(datasets::LiveSample {
                path,
                live: true,
                source: "uncropped_real",
            });
        }
    }
    for id in files(&data.join("lfw/images")).into_iter().take(lfw_n) {
        if let Some(path) = files(&id).into_iter().next() {
            out.push(datasets::LiveSample {
                path,
                live: true,
                source: "lfw_real",
            });
        }
    }
    out
}

fn eval_liveness(ctx: &Ctx, data: &Path, out: &Path, threshold: f32) -> Result<Option<Value>> {
    let mut samples = datasets::liveness_samples(data)?;
    if samples.is_empty() {
        return Ok(None);
    }
    samples.extend(real_photo_samples(data, 300));
    let paths: Vec<PathBuf> = samples.iter().map(|s| s.path.clone()).collect();
    eprintln!("liveness: {} images", paths.len());
    let done = ctx.process_all(&paths, false, true, false);
    // Per source: (p_real or None when no face was found, live).
    let mut by_source: BTreeMap<&str, Vec<(Option<f32>, bool)>> = BTreeMap::new();
    // The samples nearest the wrong side: live photos scored lowest, attacks scored highest.
    let mut borderline: BTreeMap<&str, Vec<(f32, String)>> = BTreeMap::new();
    for s in &samples {
        let p = done.get(&s.path).and_then(|p| p.p_real);
        by_source.entry(s.source).or_default().push((p, s.live));
        let rel = s.path.strip_prefix(data).unwrap_or(&s.path).display().to_string();
        borderline
            .entry(s.source)
            .or_default()
            .push((if s.live { p.unwrap_or(0.0) } else { -p.unwrap_or(0.0) }, rel));
    }
    for v in borderline.values_mut() {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v.truncate(8);
    }
    // No face found: nothing to accept, so an attack is stopped and a live guest is rejected.
    let rate_at = |v: &[(Option<f32>, bool)], t: f32, live: bool| -> Value {
        let of: Vec<bool> = v
            .iter()
            .filter(|(_, l)| *l == live)
            .map(|(p, _)| p.is_some_and(|p| p >= t))
            .collect();
        if of.is_empty() {
            return Value::Null;
        }
        let wrong = of.iter().filter(|acc| **acc != live).count();
        json!(round(wrong as f64 / of.len() as f64, 5))
    };
    let sweep = [0.05f32, 0.08, 0.10, 0.12, 0.15, 0.20, 0.30, 0.50, 0.70, 0.90];
    let mut sources = serde_json::Map::new();
    for (name, v) in &by_source {
        let attacks = v.iter().filter(|(_, l)| !*l).count();
        let live = v.len() - attacks;
        let key = if attacks > 0 { "apcer" } else { "bpcer" };
        let at: BTreeMap<String, Value> = sweep
            .iter()
            .map(|t| (format!("{t:.2}"), rate_at(v, *t, attacks == 0)))
            .collect();
        sources.insert(
            name.to_string(),
            json!({
                "attacks": attacks, "bona_fide": live,
                "apcer": rate_at(v, threshold, false), "bpcer": rate_at(v, threshold, true),
                "no_face": v.iter().filter(|(p, _)| p.is_none()).count(),
                "nearest_the_wrong_side": borderline.get(name).map(|b| b.iter().map(|(p, f)| json!({"image": f, "p_real": round(p.abs() as f64, 4)})).collect::<Vec<_>>()),
                format!("{key}_by_threshold"): at,
            }),
        );
    }
    // Attacks: NUAA prints and screen replays together; bona fide: the real photos.
    let attacks: Vec<(Option<f32>, bool)> = by_source.values().flatten().filter(|(_, l)| !*l).copied().collect();
    let pooled = |srcs: &[&str]| -> Vec<(Option<f32>, bool)> {
        srcs.iter()
            .filter_map(|s| by_source.get(s))
            .flatten()
            .copied()
            .collect()
    };
    let nuaa_live: Vec<(Option<f32>, bool)> = pooled(&["nuaa_print"]).into_iter().filter(|(_, l)| *l).collect();
    let scores: Vec<f32> = samples
        .iter()
        .map(|s| done.get(&s.path).and_then(|p| p.p_real).unwrap_or(0.0))
        .collect();
    let labels: Vec<bool> = samples.iter().map(|s| s.live).collect();
    let det = write_det(out, "liveness", "LIVENESS DET", &[("ALL", &scores, &labels)])?;
    let per_sample: Vec<Value> = samples
        .iter()
        .map(|s| {
            let x = done.get(&s.path);
            json!({"source": s.source, "live": s.live, "p_real": x.and_then(|p| p.p_real),
                   "p_models": x.and_then(|p| p.p_real_models)})
        })
        .collect();
    let sweep_rows: BTreeMap<String, Value> = sweep
        .iter()
        .map(|t| {
            (
                format!("{t:.2}"),
                json!({
                    "apcer_print_and_screen": rate_at(&attacks, *t, false),
                    "bpcer_uncropped": rate_at(&pooled(&["uncropped_real"]), *t, true),
                    "bpcer_lfw": rate_at(&pooled(&["lfw_real"]), *t, true),
                    "bpcer_nuaa_live": rate_at(&nuaa_live, *t, true),
                }),
            )
        })
        .collect();
    Ok(Some(json!({
        "threshold": threshold,
        "apcer": rate_at(&attacks, threshold, false),
        "bpcer_uncropped": rate_at(&pooled(&["uncropped_real"]), threshold, true),
        "bpcer_lfw": rate_at(&pooled(&["lfw_real"]), threshold, true),
        "bpcer_nuaa_live": rate_at(&nuaa_live, threshold, true),
        "bpcer": rate_at(&pooled(&["nuaa_print", "edge_screen_replay"]), threshold, true),
        "attacks": attacks.len(),
        "by_threshold": sweep_rows,
        "sources": sources,
        "det_png": det.display().to_string(),
        "samples": per_sample,
        "note": "APCER: NUAA print attacks and the phone-screen replays accepted as live; BPCER on real photos of real people (uncropped identities, 300 LFW images) and, separately, on NUAA's live webcam crops; 'bpcer' is the NUAA + screen-replay set's live images, as before. DET axes: false match rate = attacks accepted, false non-match rate = live rejected",
    })))
}

fn eval_edge_cases(ctx: &Ctx, dir: &Path, settings_policy: &lobby_service::config::Policy) -> Result<Value> {
    let cases = datasets::edge_cases(dir)?;
    let paths: Vec<PathBuf> = cases.iter().map(|c| c.path.clone()).collect();
    eprintln!("edge_cases: {} images", paths.len());
    let done = ctx.process_all(&paths, false, false, false);
    let (mut asserted, mut right) = (0, 0);
    let mut rows = Vec::new();
    for c in &cases {
        let p = &done[&c.path];
        if let Some(e) = c.expected_faces {
            asserted += 1;
            right += (p.faces == e) as usize;
        }
        rows.push(json!({"image": c.rel, "category": c.category, "expected_faces": c.expected_faces, "faces_found": p.faces, "error": p.error}));
    }
    // The capture checks on the photos of several people ("one person at a time" should hold).
    let multi: Vec<PathBuf> = cases
        .iter()
        .filter(|c| c.category == "multi_face")
        .map(|c| c.path.clone())
        .collect();
    let facts: Vec<CaptureFacts> = ctx
        .process_all(&multi, true, false, false)
        .into_values()
        .filter_map(|p| p.capture)
        .collect();
    Ok(
        json!({"images": cases.len(), "count_asserted": asserted, "count_correct": right, "per_image": rows,
              "capture_multi_face": capture::costs(settings_policy, &facts, &[])}),
    )
}

fn eval_uncropped(ctx: &Ctx, dir: &Path, lfw_threshold: Option<f32>, settings: &Settings) -> Result<Value> {
    let (pairs, ids) = datasets::uncropped(dir)?;
    let mut images = unique_images(&pairs);
    images.extend(ids.iter().map(|(p, _)| p.clone()));
    images.sort();
    images.dedup();
    eprintln!("uncropped_identities: {} pairs, {} images", pairs.len(), images.len());
    let done = ctx.process_all(&images, true, false, false);
    let scores = pair_scores(&pairs, &done);
    let labels: Vec<bool> = pairs.iter().map(|p| p.same).collect();
    let mean = |want: bool| {
        let v: Vec<f32> = scores
            .iter()
            .zip(&labels)
            .filter(|(_, l)| **l == want)
            .map(|(s, _)| *s)
            .collect();
        v.iter().sum::<f32>() as f64 / v.len().max(1) as f64
    };
    // 1:N: per identity, the first image (by name) is the gallery; every other image is a probe.
    let mut by_id: BTreeMap<&str, Vec<&PathBuf>> = BTreeMap::new();
    for (p, id) in &ids {
        by_id.entry(id.as_str()).or_default().push(p);
    }
    let mut gallery = Vec::new();
    let mut probes = Vec::new();
    for (id, mut v) in by_id {
        v.sort();
        let mut emb = v
            .iter()
            .filter_map(|p| done.get(*p).and_then(|x| x.embedding.clone()).map(|e| (*p, e)));
        if let Some((_, g)) = emb.next() {
            gallery.push((id, g));
            probes.extend(emb.map(|(_, e)| (id, e)));
        }
    }
    let rank1 = probes
        .iter()
        .filter(|(id, e)| {
            gallery
                .iter()
                .max_by(|a, b| a.1.cosine(e).total_cmp(&b.1.cosine(e)))
                .map(|g| g.0 == *id)
                .unwrap_or(false)
        })
        .count();
    Ok(json!({
        "pairs": pairs.len(),
        "images": images.len(),
        "faces_found": done.values().filter(|p| p.embedding.is_some()).count(),
        "accuracy_at_lfw_threshold": lfw_threshold.map(|t| round(metrics::accuracy_at(&scores, &labels, t), 5)),
        "best_accuracy": round(metrics::accuracy_at(&scores, &labels, metrics::best_threshold(&scores, &labels)), 5),
        "same_mean_cosine": round(mean(true), 4),
        "different_mean_cosine": round(mean(false), 4),
        "identification_gallery": gallery.len(),
        "identification_probes": probes.len(),
        "identification_rank1": round(rank1 as f64 / probes.len().max(1) as f64, 5),
        "capture": capture_costs(&done, settings, |p| {
            ids.iter().find(|(q, _)| q == p).map(|(_, id)| id.clone())
        }),
    }))
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
    let mut report = serde_json::Map::new();
    let mut skipped = Vec::new();
    let started = Instant::now();

    let want = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    let mut lfw_threshold = None;
    if !want("lfw") {
        skipped.push("lfw (--only)");
    } else if data.join("lfw/pairs.txt").exists() {
        let (v, masked, t) = eval_lfw(&ctx, &data.join("lfw"), &args.out, &settings)?;
        lfw_threshold = Some(t);
        report.insert("lfw".into(), v);
        report.insert("lfw_synthetic_mask".into(), masked);
    } else {
        skipped.push("lfw");
    }
    if !want("mfr2") {
        skipped.push("mfr2 (--only)");
    } else if data.join("mfr2/pairs.csv").exists() {
        report.insert(
            "mfr2".into(),
            eval_mfr2(&ctx, &data.join("mfr2"), &args.out, &settings)?,
        );
    } else {
        skipped.push("mfr2");
    }
    let rwmfd = data.join("rwmfd_masked_in_the_wild");
    let rwmfd = if !want("rwmfd") {
        skipped.push("rwmfd (--only)");
        None
    } else if rwmfd.join("manifest.csv").exists() {
        Some(eval_rwmfd(&ctx, &rwmfd)?)
    } else {
        skipped.push("rwmfd_masked_in_the_wild");
        None
    };
    report.insert(
        "mask_detector".into(),
        json!({
            "accuracy_mfr2": report.get("mfr2").map(|m| m["mask_detector"]["accuracy"].clone()),
            "mfr2": report.get("mfr2").map(|m| m["mask_detector"].clone()),
            "rwmfd_called_masked": rwmfd,
            "lfw": report.get("lfw").map(|l| l["mask_detector"].clone()),
            "threshold": lobby_service::vision::mask_detect::DEFAULT_THRESHOLD,
            "model": "models/trained/mask_detector_probe.onnx (logistic probe on the embedding, trained on synthetic masks of LFW folds 0-2)",
        }),
    );
    if want("liveness") {
        match eval_liveness(&ctx, data, &args.out, settings.policy.liveness_threshold)? {
            Some(v) => {
                report.insert("liveness".into(), v);
            }
            None => skipped.push("liveness"),
        }
    } else {
        skipped.push("liveness (--only)");
    }
    if !want("edge_cases") {
        skipped.push("edge_cases (--only)");
    } else if data.join("edge_cases/manifest.csv").exists() {
        report.insert(
            "edge_cases".into(),
            eval_edge_cases(&ctx, &data.join("edge_cases"), &settings.policy)?,
        );
    } else {
        skipped.push("edge_cases");
    }
    if !want("uncropped") {
        skipped.push("uncropped (--only)");
    } else if data.join("uncropped_identities/pairs.csv").exists() {
        report.insert(
            "uncropped_identities".into(),
            eval_uncropped(&ctx, &data.join("uncropped_identities"), lfw_threshold, &settings)?,
        );
    } else {
        skipped.push("uncropped_identities");
    }

    // Thresholds for the service, at stated false-match rates on the LFW impostor pairs.
    if let Some(lfw) = report.get("lfw") {
        report.insert(
            "calibration".into(),
            json!({
                "masked_probe": lfw["masked_probe_all_pairs"],
                "unmasked": {
                    "source": "lfw impostor pairs",
                    "impostor_pairs": lfw["impostor_pairs"],
                    "threshold_at_fmr_1e-2": lfw["threshold_at_far_1e-2"],
                    "threshold_at_fmr_1e-3": lfw["threshold_at_far_1e-3"],
                    "max_accuracy_threshold": lfw["threshold"],
                    "all_pairs": lfw["all_pairs"],
                },
                "cascade": lfw["cascade"],
            }),
        );
    }
    let timings = ctx.timings.lock().unwrap_or_else(|e| e.into_inner());
    let timing: BTreeMap<&str, Value> = timings
        .0
        .iter()
        .map(|(k, v)| {
            (
                *k,
                json!({"p50": round(percentile(v, 50.0), 3), "p99": round(percentile(v, 99.0), 3), "n": v.len()}),
            )
        })
        .collect();
    report.insert("timing_ms".into(), json!(timing));
    report.insert("threads".into(), json!(args.threads));
    report.insert(
        "detector_first_pass_long_side".into(),
        json!(ctx.vision.config().detector.first_pass_long_side),
    );
    report.insert("skipped".into(), json!(skipped));
    report.insert("data".into(), json!(data.display().to_string()));
    report.insert("wall_seconds".into(), json!(round(started.elapsed().as_secs_f64(), 1)));
    let report = Value::Object(report);
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
