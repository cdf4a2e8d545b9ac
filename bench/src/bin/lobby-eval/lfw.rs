//! LFW: k-fold verification over the folds present (each fold's threshold chosen on the others),
//! TAR at fixed FARs, and, on the same images, every-pair calibration, the cascade, the capture
//! checks, the mask detector and the synthetic-mask protocol (`lfw_mask`).

use crate::calibration::{all_pairs_calibration, masked_probe_calibration, FmrThresholds, MaskedProbeCalibration};
use crate::capture_checks::{capture_costs, CaptureReport};
use crate::cascade_calibration::{cascade_calibration, CascadeCalibration};
use crate::lfw_mask::{synthetic_mask, LfwSyntheticMask};
use crate::mask_detector::LfwMaskDetector;
use crate::pipeline::{
    folder_identity, kfold_subset, pair_scores, round, unique_images, write_det, Ctx, MASK_TRAIN_FOLDS,
};
use anyhow::Result;
use lobby_bench::datasets::{self, Pair};
use lobby_bench::metrics::{self, kfold, tar_at_far};
use lobby_service::config::Settings;
use serde::Serialize;
use std::path::Path;

/// The report's `lfw`.
#[derive(Serialize)]
pub struct Lfw {
    pub accuracy: f64,
    pub accuracy_held_out_folds: f64,
    pub accuracy_std: f64,
    pub all_pairs: FmrThresholds,
    pub capture: CaptureReport,
    pub cascade: CascadeCalibration,
    pub det_png: String,
    pub faces_found: usize,
    pub fold_accuracies: Vec<f64>,
    pub fold_thresholds: Vec<f32>,
    pub folds: usize,
    pub images: usize,
    pub images_without_face: Vec<String>,
    pub impostor_pairs: usize,
    pub mask_detector: LfwMaskDetector,
    pub masked_probe_all_pairs: MaskedProbeCalibration,
    pub pairs: usize,
    #[serde(rename = "tar_at_far_1e-3")]
    pub tar_at_far_1e_3: f64,
    #[serde(rename = "tar_at_far_1e-4")]
    pub tar_at_far_1e_4: f64,
    pub threshold: f32,
    #[serde(rename = "threshold_at_far_1e-2")]
    pub threshold_at_far_1e_2: f32,
    #[serde(rename = "threshold_at_far_1e-3")]
    pub threshold_at_far_1e_3: f32,
    #[serde(rename = "threshold_at_far_1e-4")]
    pub threshold_at_far_1e_4: f32,
}

/// LFW's report and its synthetic-mask report.
pub fn eval_lfw(ctx: &Ctx, dir: &Path, out: &Path, settings: &Settings) -> Result<(Lfw, LfwSyntheticMask)> {
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
    let masked = synthetic_mask(&done, &pairs, threshold);
    let det = write_det(
        out,
        "lfw",
        "LFW DET",
        &[
            ("UNMASKED", &scores, &labels),
            ("ONE SYNTHETIC MASK", &masked.scores, &labels),
        ],
    )?;
    let missing: Vec<String> = done
        .iter()
        .filter(|(_, p)| p.embedding.is_none())
        .map(|(k, _)| k.display().to_string())
        .collect();
    let lfw = Lfw {
        accuracy: round(k.mean, 5),
        accuracy_std: round(k.std, 5),
        accuracy_held_out_folds: round(k_held.mean, 5),
        fold_accuracies: k.fold_accuracies.iter().map(|a| round(*a, 5)).collect(),
        folds: k.fold_accuracies.len(),
        fold_thresholds: k.fold_thresholds,
        tar_at_far_1e_3: round(tar3, 5),
        threshold_at_far_1e_3: thr3,
        tar_at_far_1e_4: round(tar4, 5),
        threshold_at_far_1e_4: thr4,
        threshold_at_far_1e_2: thr2,
        threshold,
        faces_found: found,
        images: images.len(),
        pairs: pairs.len(),
        impostor_pairs: labels.iter().filter(|l| !**l).count(),
        images_without_face: missing,
        det_png: det.display().to_string(),
        all_pairs: all_pairs_calibration(&done),
        masked_probe_all_pairs: masked_probe_calibration(&done, &pairs, held_out),
        cascade: cascade_calibration(&done, &pairs, settings),
        capture: capture_costs(&done, settings, folder_identity),
        mask_detector: LfwMaskDetector::of(&done),
    };
    Ok((lfw, masked.report))
}
