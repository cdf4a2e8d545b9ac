//! Thresholds for the service at stated false-match rates: LFW's every-pair impostors (unmasked and
//! with a synthetic mask on the probe), and the top-level `calibration` section gathered from LFW.

use crate::cascade_calibration::CascadeCalibration;
use crate::lfw::Lfw;
use crate::pipeline::{folder_identity, round, service_score, Done, Processed};
use lobby_bench::datasets::Pair;
use lobby_service::vision::Embedding;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The threshold at a false-match rate and the TAR of the genuine scores there.
#[derive(Clone, Serialize)]
pub struct FmrRow {
    pub tar: f64,
    pub threshold: f32,
}

/// Thresholds at several false-match rates (`at`, keyed `fmr_<rate>`).
#[derive(Clone, Serialize)]
pub struct FmrThresholds {
    pub at: BTreeMap<String, FmrRow>,
    pub genuine_pairs: usize,
    pub impostor_pairs: usize,
}

/// [`FmrThresholds`] of masked probes, with the images they come from.
#[derive(Clone, Serialize)]
pub struct MaskedProbeCalibration {
    pub at: BTreeMap<String, FmrRow>,
    pub genuine_pairs: usize,
    pub images: usize,
    pub impostor_pairs: usize,
    pub source: &'static str,
}

/// The report's `calibration`: thresholds for the service, at stated false-match rates on the LFW
/// impostor pairs.
#[derive(Serialize)]
pub struct Calibration {
    pub cascade: CascadeCalibration,
    pub masked_probe: MaskedProbeCalibration,
    pub unmasked: UnmaskedCalibration,
}

#[derive(Serialize)]
pub struct UnmaskedCalibration {
    pub all_pairs: FmrThresholds,
    pub impostor_pairs: usize,
    pub max_accuracy_threshold: f32,
    pub source: &'static str,
    #[serde(rename = "threshold_at_fmr_1e-2")]
    pub threshold_at_fmr_1e_2: f32,
    #[serde(rename = "threshold_at_fmr_1e-3")]
    pub threshold_at_fmr_1e_3: f32,
}

impl Calibration {
    /// Gathered from the LFW report.
    pub fn from_lfw(lfw: &Lfw) -> Self {
        Calibration {
            masked_probe: lfw.masked_probe_all_pairs.clone(),
            unmasked: UnmaskedCalibration {
                source: "lfw impostor pairs",
                impostor_pairs: lfw.impostor_pairs,
                threshold_at_fmr_1e_2: lfw.threshold_at_far_1e_2,
                threshold_at_fmr_1e_3: lfw.threshold_at_far_1e_3,
                max_accuracy_threshold: lfw.threshold,
                all_pairs: lfw.all_pairs.clone(),
            },
            cascade: lfw.cascade.clone(),
        }
    }
}

/// Thresholds for masked probes at the same FMRs as the unmasked ones: every masked probe of a
/// held-out fold's image against every other held-out image enrolled mask-aware, scored as the
/// service does (the probe's own mask verdict decides clean or mean scoring).
pub fn masked_probe_calibration(done: &Done, pairs: &[Pair], keep: impl Fn(&Pair) -> bool) -> MaskedProbeCalibration {
    let mut paths: Vec<&PathBuf> = pairs.iter().filter(|p| keep(p)).flat_map(|p| [&p.a, &p.b]).collect();
    paths.sort();
    paths.dedup();
    let items: Vec<(String, &Processed)> = paths
        .iter()
        .filter_map(|p| {
            let id = folder_identity(p)?;
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
    let t = thresholds_at_fmr(impostor, &genuine, &[("1e-3", 1e-3), ("1e-4", 1e-4), ("1e-5", 1e-5)]);
    MaskedProbeCalibration {
        at: t.at,
        genuine_pairs: t.genuine_pairs,
        images: items.len(),
        impostor_pairs: t.impostor_pairs,
        source: "LFW images of the folds the mask models did not train on, each masked once (probe) against every other one enrolled mask-aware",
    }
}

/// The threshold at each false-match rate (the score the impostors exceed at that rate) and the TAR
/// of the genuine scores there.
fn thresholds_at_fmr(mut impostor: Vec<f32>, genuine: &[f32], fmrs: &[(&str, f64)]) -> FmrThresholds {
    let n = impostor.len();
    impostor.sort_unstable_by(|a, b| b.total_cmp(a));
    let mut rows = BTreeMap::new();
    for (name, fmr) in fmrs {
        let k = (fmr * n as f64).floor() as usize;
        if k == 0 || k >= n {
            continue;
        }
        let t = impostor[k];
        let tar = genuine.iter().filter(|s| **s > t).count() as f64 / genuine.len().max(1) as f64;
        rows.insert(
            format!("fmr_{name}"),
            FmrRow {
                threshold: t,
                tar: round(tar, 5),
            },
        );
    }
    FmrThresholds {
        impostor_pairs: n,
        genuine_pairs: genuine.len(),
        at: rows,
    }
}

/// Thresholds at low false-match rates need far more impostor pairs than the 1500 of the protocol:
/// every pair of LFW images of different people (identity = folder name) gives millions. Genuine
/// pairs: every pair of images of the same person.
pub fn all_pairs_calibration(done: &Done) -> FmrThresholds {
    let mut items: Vec<(String, &Embedding)> = done
        .iter()
        .filter_map(|(p, x)| Some((folder_identity(p)?, x.embedding.as_ref()?)))
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
