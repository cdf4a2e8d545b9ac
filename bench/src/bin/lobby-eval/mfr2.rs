//! MFR2 (real masks): stratified k-fold verification scored as the service scores a probe against a
//! mask-aware enrolment, the masked-probe subset with its own thresholds, and the mask detector
//! against MFR2's labels.

use crate::capture_checks::{capture_costs, CaptureReport};
use crate::pipeline::{folder_identity, kfold_subset, round, service_score, unique_images, write_det, Ctx};
use anyhow::Result;
use lobby_bench::datasets::{self, Pair};
use lobby_bench::metrics::{self, kfold, tar_at_far};
use lobby_service::config::Settings;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The report's `mfr2`.
#[derive(Serialize)]
pub struct Mfr2 {
    pub accuracy: f64,
    pub accuracy_std: f64,
    pub capture: CaptureReport,
    pub det_png: String,
    pub faces_found: usize,
    pub images: usize,
    pub mask_detector: Mfr2MaskDetector,
    pub masked_probe_accuracy: f64,
    pub masked_probe_accuracy_clean_template_only: f64,
    pub masked_probe_accuracy_std: f64,
    pub masked_probe_impostor_pairs: usize,
    pub masked_probe_pairs: usize,
    #[serde(rename = "masked_probe_tar_at_far_1e-2")]
    pub masked_probe_tar_at_far_1e_2: f64,
    #[serde(rename = "masked_probe_tar_at_far_1e-2_clean_template_only")]
    pub masked_probe_tar_at_far_1e_2_clean_template_only: f64,
    #[serde(rename = "masked_probe_threshold_at_far_1e-2")]
    pub masked_probe_threshold_at_far_1e_2: f32,
    pub note: &'static str,
    pub pairs: usize,
    #[serde(rename = "tar_at_far_1e-2")]
    pub tar_at_far_1e_2: f64,
    pub threshold: f32,
    #[serde(rename = "threshold_at_far_1e-2")]
    pub threshold_at_far_1e_2: f32,
}

/// The mask detector against MFR2's real labels, one verdict per image.
#[derive(Clone, Serialize)]
pub struct Mfr2MaskDetector {
    pub accuracy: f64,
    pub images: usize,
    pub masked: usize,
    pub masked_right: usize,
    pub unmasked: usize,
    pub unmasked_right: usize,
}

pub fn eval_mfr2(ctx: &Ctx, dir: &Path, out: &Path, settings: &Settings) -> Result<Mfr2> {
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
    Ok(Mfr2 {
        accuracy: round(k.mean, 5),
        accuracy_std: round(k.std, 5),
        masked_probe_accuracy: round(one.mean, 5),
        masked_probe_accuracy_std: round(one.std, 5),
        masked_probe_accuracy_clean_template_only: round(one_plain.mean, 5),
        masked_probe_pairs: one_idx.len(),
        masked_probe_impostor_pairs: one_labels.iter().filter(|l| !**l).count(),
        tar_at_far_1e_2: round(tar2, 5),
        threshold_at_far_1e_2: thr2,
        masked_probe_tar_at_far_1e_2: round(one_tar2, 5),
        masked_probe_threshold_at_far_1e_2: one_thr2,
        masked_probe_tar_at_far_1e_2_clean_template_only: round(
            tar_at_far(&one_plain_scores, &one_labels, 1e-2).0,
            5,
        ),
        threshold: metrics::best_threshold(&scores, &labels),
        faces_found: found,
        images: images.len(),
        pairs: pairs.len(),
        mask_detector: Mfr2MaskDetector {
            accuracy: round(right as f64 / verdicts.len().max(1) as f64, 5),
            images: verdicts.len(),
            masked_right: verdicts.iter().filter(|(l, v)| *l && *v).count(),
            masked: verdicts.iter().filter(|(l, _)| *l).count(),
            unmasked_right: verdicts.iter().filter(|(l, v)| !*l && !*v).count(),
            unmasked: verdicts.iter().filter(|(l, _)| !*l).count(),
        },
        det_png: det.display().to_string(),
        capture: capture_costs(&done, settings, folder_identity),
        note: "pairs scored as the service scores them: the unmasked image enrolled mask-aware, the other the probe; k-fold accuracy, the masked-probe subset with its own thresholds",
    })
}
