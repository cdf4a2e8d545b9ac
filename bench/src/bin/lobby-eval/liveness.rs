//! Liveness: APCER (attacks accepted as live) and BPCER (live faces rejected) at the service's
//! threshold and over a sweep of thresholds, per source and pooled.

use crate::pipeline::{round, write_det, Ctx};
use anyhow::Result;
use lobby_bench::datasets;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The thresholds of the sweep (`by_threshold`, `<rate>_by_threshold`).
const SWEEP: [f32; 10] = [0.05, 0.08, 0.10, 0.12, 0.15, 0.20, 0.30, 0.50, 0.70, 0.90];

const NOTE: &str = "APCER: NUAA print attacks and the phone-screen replays accepted as live; BPCER on real photos of real people (uncropped identities, 300 LFW images) and, separately, on NUAA's live webcam crops; 'bpcer' is the NUAA + screen-replay set's live images, as before. DET axes: false match rate = attacks accepted, false non-match rate = live rejected";

/// The report's `liveness`. A rate is `None` (null) where there was nothing to count.
#[derive(Serialize)]
pub struct Liveness {
    pub apcer: Option<f64>,
    pub attacks: usize,
    pub bpcer: Option<f64>,
    pub bpcer_lfw: Option<f64>,
    pub bpcer_nuaa_live: Option<f64>,
    pub bpcer_uncropped: Option<f64>,
    pub by_threshold: BTreeMap<String, SweepRow>,
    pub det_png: String,
    pub note: &'static str,
    pub samples: Vec<Sample>,
    pub sources: BTreeMap<String, SourceRates>,
    pub threshold: f32,
}

/// The pooled rates at one threshold of the sweep.
#[derive(Serialize)]
pub struct SweepRow {
    pub apcer_print_and_screen: Option<f64>,
    pub bpcer_lfw: Option<f64>,
    pub bpcer_nuaa_live: Option<f64>,
    pub bpcer_uncropped: Option<f64>,
}

/// One source's rates; its sweep is `apcer_by_threshold` when it has attacks, else
/// `bpcer_by_threshold`.
#[derive(Serialize)]
pub struct SourceRates {
    pub apcer: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apcer_by_threshold: Option<BTreeMap<String, Option<f64>>>,
    pub attacks: usize,
    pub bona_fide: usize,
    pub bpcer: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bpcer_by_threshold: Option<BTreeMap<String, Option<f64>>>,
    pub nearest_the_wrong_side: Option<Vec<Borderline>>,
    pub no_face: usize,
}

/// A sample near the wrong side of the threshold.
#[derive(Serialize)]
pub struct Borderline {
    pub image: String,
    pub p_real: f64,
}

/// Every sample's scores.
#[derive(Serialize)]
pub struct Sample {
    pub live: bool,
    pub p_models: Option<[f32; 2]>,
    pub p_real: Option<f32>,
    pub source: &'static str,
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

/// Per sample: p(real), or None when no face was found; and whether it is live.
type Scored = (Option<f32>, bool);

/// The share of `v`'s samples of the kind `live` that land on the wrong side of `t`; None when
/// there are none. No face found: nothing to accept, so an attack is stopped and a live guest is
/// rejected.
fn rate_at(v: &[Scored], t: f32, live: bool) -> Option<f64> {
    let of: Vec<bool> = v
        .iter()
        .filter(|(_, l)| *l == live)
        .map(|(p, _)| p.is_some_and(|p| p >= t))
        .collect();
    if of.is_empty() {
        return None;
    }
    let wrong = of.iter().filter(|acc| **acc != live).count();
    Some(round(wrong as f64 / of.len() as f64, 5))
}

pub fn eval_liveness(ctx: &Ctx, data: &Path, out: &Path, threshold: f32) -> Result<Option<Liveness>> {
    let mut samples = datasets::liveness_samples(data)?;
    if samples.is_empty() {
        return Ok(None);
    }
    samples.extend(real_photo_samples(data, 300));
    let paths: Vec<PathBuf> = samples.iter().map(|s| s.path.clone()).collect();
    eprintln!("liveness: {} images", paths.len());
    let done = ctx.process_all(&paths, false, true, false);
    let mut by_source: BTreeMap<&str, Vec<Scored>> = BTreeMap::new();
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
    let mut sources = BTreeMap::new();
    for (name, v) in &by_source {
        let attacks = v.iter().filter(|(_, l)| !*l).count();
        let at: BTreeMap<String, Option<f64>> = SWEEP
            .iter()
            .map(|t| (format!("{t:.2}"), rate_at(v, *t, attacks == 0)))
            .collect();
        let (apcer_by_threshold, bpcer_by_threshold) = if attacks > 0 {
            (Some(at), None)
        } else {
            (None, Some(at))
        };
        let nearest = borderline.get(name).map(|b| {
            b.iter()
                .map(|(p, f)| Borderline {
                    image: f.clone(),
                    p_real: round(p.abs() as f64, 4),
                })
                .collect()
        });
        sources.insert(
            name.to_string(),
            SourceRates {
                attacks,
                bona_fide: v.len() - attacks,
                apcer: rate_at(v, threshold, false),
                bpcer: rate_at(v, threshold, true),
                no_face: v.iter().filter(|(p, _)| p.is_none()).count(),
                nearest_the_wrong_side: nearest,
                apcer_by_threshold,
                bpcer_by_threshold,
            },
        );
    }
    // Attacks: NUAA prints and screen replays together; bona fide: the real photos.
    let attacks: Vec<Scored> = by_source.values().flatten().filter(|(_, l)| !*l).copied().collect();
    let pooled = |srcs: &[&str]| -> Vec<Scored> {
        srcs.iter()
            .filter_map(|s| by_source.get(s))
            .flatten()
            .copied()
            .collect()
    };
    let nuaa_live: Vec<Scored> = pooled(&["nuaa_print"]).into_iter().filter(|(_, l)| *l).collect();
    let scores: Vec<f32> = samples
        .iter()
        .map(|s| done.get(&s.path).and_then(|p| p.p_real).unwrap_or(0.0))
        .collect();
    let labels: Vec<bool> = samples.iter().map(|s| s.live).collect();
    let det = write_det(out, "liveness", "LIVENESS DET", &[("ALL", &scores, &labels)])?;
    let per_sample: Vec<Sample> = samples
        .iter()
        .map(|s| {
            let x = done.get(&s.path);
            Sample {
                source: s.source,
                live: s.live,
                p_real: x.and_then(|p| p.p_real),
                p_models: x.and_then(|p| p.p_real_models),
            }
        })
        .collect();
    let by_threshold: BTreeMap<String, SweepRow> = SWEEP
        .iter()
        .map(|t| {
            (
                format!("{t:.2}"),
                SweepRow {
                    apcer_print_and_screen: rate_at(&attacks, *t, false),
                    bpcer_uncropped: rate_at(&pooled(&["uncropped_real"]), *t, true),
                    bpcer_lfw: rate_at(&pooled(&["lfw_real"]), *t, true),
                    bpcer_nuaa_live: rate_at(&nuaa_live, *t, true),
                },
            )
        })
        .collect();
    Ok(Some(Liveness {
        threshold,
        apcer: rate_at(&attacks, threshold, false),
        bpcer_uncropped: rate_at(&pooled(&["uncropped_real"]), threshold, true),
        bpcer_lfw: rate_at(&pooled(&["lfw_real"]), threshold, true),
        bpcer_nuaa_live: rate_at(&nuaa_live, threshold, true),
        bpcer: rate_at(&pooled(&["nuaa_print", "edge_screen_replay"]), threshold, true),
        attacks: attacks.len(),
        by_threshold,
        sources,
        det_png: det.display().to_string(),
        samples: per_sample,
        note: NOTE,
    }))
}
