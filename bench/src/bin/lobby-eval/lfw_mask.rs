//! LFW with a synthetic mask (`lfw_synthetic_mask`): the second image of each pair masked, scored
//! as the service scores a masked probe against a mask-aware enrolment.

use crate::pipeline::{kfold_subset, round, service_score, Done, MaskedProbe, EVAL_MASK_SEED, MASK_TRAIN_FOLDS};
use lobby_bench::datasets::Pair;
use lobby_bench::metrics::{self, kfold, tar_at_far};
use serde::Serialize;

#[derive(Serialize)]
pub struct LfwSyntheticMask {
    pub accuracy: f64,
    pub accuracy_at_unmasked_threshold: f64,
    pub accuracy_clean_template_only: f64,
    pub accuracy_held_out_folds: f64,
    pub accuracy_std: f64,
    pub masked_images_without_face: usize,
    pub note: String,
    pub probes_called_masked: usize,
    #[serde(rename = "tar_at_far_1e-3")]
    pub tar_at_far_1e_3: f64,
    pub threshold: f32,
}

/// The pairs with their second image masked: the service's scores (for the DET curve) and the report.
pub struct Scored {
    pub scores: Vec<f32>,
    pub report: LfwSyntheticMask,
}

/// One image of each pair masked: the first is enrolled (clean + masked template), the second is
/// the masked probe, scored as the service scores it. `threshold`: the unmasked pairs' best one.
pub fn synthetic_mask(done: &Done, pairs: &[Pair], threshold: f32) -> Scored {
    let labels: Vec<bool> = pairs.iter().map(|p| p.same).collect();
    let folds: Vec<usize> = pairs.iter().map(|p| p.fold).collect();
    let held_out = |p: &Pair| !MASK_TRAIN_FOLDS.contains(&p.fold);
    let probe = |p: &Pair| -> Option<&MaskedProbe> { done.get(&p.b).and_then(|x| x.masked_probe.as_ref()) };
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
    let mk_held = kfold_subset(&masked_scores, pairs, held_out);
    let mk_clean_only = kfold(&clean_only, &labels, &folds);
    let misses = pairs.iter().filter(|p| probe(p).is_some_and(|m| !m.redetected)).count();
    let report = LfwSyntheticMask {
        accuracy: round(mk.mean, 5),
        accuracy_std: round(mk.std, 5),
        accuracy_held_out_folds: round(mk_held.mean, 5),
        accuracy_clean_template_only: round(mk_clean_only.mean, 5),
        accuracy_at_unmasked_threshold: round(metrics::accuracy_at(&masked_scores, &labels, threshold), 5),
        tar_at_far_1e_3: round(tar_at_far(&masked_scores, &labels, 1e-3).0, 5),
        threshold: metrics::best_threshold(&masked_scores, &labels),
        masked_images_without_face: misses,
        probes_called_masked: pairs.iter().filter(|p| probe(p).is_some_and(|m| m.mask.masked)).count(),
        note: format!("second image of each pair masked by vision::mask (seed {EVAL_MASK_SEED} + the image's index among the sorted LFW images), detected again (clean landmarks when missed), scored as the service does against the first image's clean and masked templates; the mask models were trained on images of folds {MASK_TRAIN_FOLDS:?} (other masks), so accuracy_held_out_folds is the figure on unseen identities"),
    };
    Scored {
        scores: masked_scores,
        report,
    }
}
