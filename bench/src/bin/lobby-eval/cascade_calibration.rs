//! The cascade (student, then teacher and dlib in the band) on every pair of LFW images: the
//! z-statistics and band thresholds each weighting calibrates to, and what the service's configured
//! thresholds do there, on single photos and on two frames fused.

use crate::pipeline::{folder_identity, Done, MASK_TRAIN_FOLDS};
use lobby_bench::cascade::{self, Operating, PairScores, ZStats};
use lobby_bench::datasets::Pair;
use lobby_service::config::{Cascade, Policy, Settings};
use lobby_service::core::cascade::Mode;
use lobby_service::vision::{Embedding, SecondEmbeddings};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

/// The report's `cascade` (under `lfw` and `calibration`).
#[derive(Clone, Serialize)]
pub struct CascadeCalibration {
    pub fused_two_frames: FusedTwoFrames,
    /// The pair counts, the student's thresholds and the student alone (the first flip variant).
    #[serde(flatten)]
    pub pairs: PairsAndStudent,
    pub note: &'static str,
    pub service: ServiceCascade,
    pub variants: BTreeMap<String, Variant>,
}

#[derive(Clone, Serialize)]
pub struct PairsAndStudent {
    pub genuine_pairs: usize,
    pub impostor_pairs: usize,
    pub pairs: usize,
    pub student_alone: Modes,
    pub student_thresholds: StudentThresholds,
}

/// How a decision rule operates 1:1 and 1:N.
#[derive(Clone, Serialize)]
pub struct Modes {
    pub one_to_n: Operating,
    pub one_to_one: Operating,
}

impl Modes {
    fn of(s: &PairScores, p: &Policy, c: &Cascade) -> Self {
        Modes {
            one_to_one: cascade::operate(s, p, c, Mode::OneToOne),
            one_to_n: cascade::operate(s, p, c, Mode::OneToN),
        }
    }
}

#[derive(Clone, Serialize)]
pub struct StudentThresholds {
    #[serde(rename = "fmr_1e-3")]
    pub fmr_1e_3: f32,
    #[serde(rename = "fmr_1e-4")]
    pub fmr_1e_4: f32,
    #[serde(rename = "fmr_1e-5")]
    pub fmr_1e_5: f32,
    #[serde(rename = "fmr_1e-6")]
    pub fmr_1e_6: f32,
}

/// One weighting (and flip choice) calibrated on the pairs.
#[derive(Clone, Serialize)]
pub struct Variant {
    pub flip: [bool; 2],
    pub one_to_n: BandOperating,
    pub one_to_one: BandOperating,
    pub weights: [f32; 3],
    pub znorm: ZStats,
}

#[derive(Clone, Serialize)]
pub struct BandOperating {
    pub band: [f32; 2],
    pub operating: Operating,
    pub threshold: f32,
}

/// The configured cascade run over the pairs.
#[derive(Clone, Serialize)]
pub struct ServiceCascade {
    pub cascade_enabled: bool,
    pub flip: [bool; 2],
    pub one_to_n: Operating,
    pub one_to_one: Operating,
    pub weights: [f32; 3],
}

#[derive(Clone, Serialize)]
pub struct FusedTwoFrames {
    pub genuine: usize,
    pub note: &'static str,
    pub probes_x_templates: usize,
    pub service: Modes,
    pub student_alone_at_its_own_thresholds: Modes,
    pub student_thresholds: FusedStudentThresholds,
}

#[derive(Clone, Serialize)]
pub struct FusedStudentThresholds {
    #[serde(rename = "fmr_1e-4")]
    pub fmr_1e_4: f32,
    #[serde(rename = "fmr_1e-5")]
    pub fmr_1e_5: f32,
}

/// The fold of each LFW identity in `pairs` (the last pair naming it decides).
fn folds_of(pairs: &[Pair]) -> HashMap<String, usize> {
    let mut fold_of: HashMap<String, usize> = HashMap::new();
    for p in pairs {
        for img in [&p.a, &p.b] {
            if let Some(id) = folder_identity(img) {
                fold_of.insert(id, p.fold);
            }
        }
    }
    fold_of
}

/// Concatenates the rows' scores in order.
fn concat(rows: Vec<PairScores>) -> PairScores {
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

/// Every pair of LFW images (identity = folder), scored by each of the three models; a pair is
/// held out when its identity's fold is one the trained models never saw.
fn all_pair_scores(done: &Done, pairs: &[Pair], flip: [bool; 2]) -> PairScores {
    let fold_of = folds_of(pairs);
    let mut items: Vec<(String, &Embedding, SecondEmbeddings)> = done
        .iter()
        .filter_map(|(p, x)| {
            let second = x.second.as_ref()?.embeddings(flip).ok()?;
            Some((folder_identity(p)?, x.embedding.as_ref()?, second))
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
    concat(rows)
}

/// Fused probes, as a check-in stream fuses several good frames of one guest: for every LFW identity
/// with three or more images, each pair of its first four images fused (the mean of each
/// model's embeddings) is a probe, scored against every other image (genuine when of the same
/// identity).
fn fused_probe_scores(done: &Done, pairs: &[Pair], flip: [bool; 2]) -> PairScores {
    let fold_of = folds_of(pairs);
    let mut items: Vec<(String, PathBuf, Embedding, SecondEmbeddings)> = done
        .iter()
        .filter_map(|(p, x)| {
            let second = x.second.as_ref()?.embeddings(flip).ok()?;
            Some((folder_identity(p)?, p.clone(), x.embedding.clone()?, second))
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
    concat(rows)
}

/// The cascade on LFW all pairs: z-normalisation statistics, the student's own thresholds, and for
/// each weighting the fused thresholds that keep 1:1 at FMR 1e-4 (band: the student's 1e-3..1e-5
/// thresholds) and 1:N at 1e-5 per comparison (band 1e-4..1e-6), with what each buys; then the
/// service's configured thresholds run over the same pairs.
pub fn cascade_calibration(done: &Done, pairs: &[Pair], settings: &Settings) -> CascadeCalibration {
    let p = &settings.policy;
    let mut variants = BTreeMap::new();
    let mut head = None;
    for flip in [[true, true], [true, false], [false, true], [false, false]] {
        let s = all_pair_scores(done, pairs, flip);
        let z = cascade::znorm_stats(&s);
        let t = |fmr: f64| cascade::student_threshold(&s, fmr);
        let (t3, t4, t5, t6) = (t(1e-3), t(1e-4), t(1e-5), t(1e-6));
        let mut student_policy = p.clone();
        student_policy.match_threshold = t4;
        student_policy.match_threshold_1n = t5;
        if head.is_none() {
            let mut alone = settings.cascade.clone();
            alone.enabled = false;
            head = Some(PairsAndStudent {
                pairs: s.len(),
                genuine_pairs: s.genuine.iter().filter(|g| **g).count(),
                impostor_pairs: s.genuine.iter().filter(|g| !**g).count(),
                student_thresholds: StudentThresholds {
                    fmr_1e_3: t3,
                    fmr_1e_4: t4,
                    fmr_1e_5: t5,
                    fmr_1e_6: t6,
                },
                student_alone: Modes::of(&s, &student_policy, &alone),
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
            let operating = Modes::of(&s, &student_policy, &c);
            variants.insert(
                key,
                Variant {
                    weights: w,
                    flip,
                    znorm: z,
                    one_to_one: BandOperating {
                        band: c.one_to_one.band,
                        threshold: c.one_to_one.threshold,
                        operating: operating.one_to_one,
                    },
                    one_to_n: BandOperating {
                        band: c.one_to_n.band,
                        threshold: c.one_to_n.threshold,
                        operating: operating.one_to_n,
                    },
                },
            );
        }
    }
    let Some(head) = head else {
        unreachable!("the loop over flips runs")
    };
    let s = all_pair_scores(done, pairs, settings.cascade.flip);
    // Two frames fused: does the service's decision keep its false-match rates?
    let f = fused_probe_scores(done, pairs, settings.cascade.flip);
    let mut fused_policy = p.clone();
    fused_policy.match_threshold = cascade::student_threshold(&f, 1e-4);
    fused_policy.match_threshold_1n = cascade::student_threshold(&f, 1e-5);
    let mut fused_alone = settings.cascade.clone();
    fused_alone.enabled = false;
    let fused = FusedTwoFrames {
        probes_x_templates: f.len(),
        genuine: f.genuine.iter().filter(|g| **g).count(),
        service: Modes::of(&f, p, &settings.cascade),
        student_thresholds: FusedStudentThresholds {
            fmr_1e_4: fused_policy.match_threshold,
            fmr_1e_5: fused_policy.match_threshold_1n,
        },
        student_alone_at_its_own_thresholds: Modes::of(&f, &fused_policy, &fused_alone),
        note: "probes: two images of an identity fused (the mean of each model's embeddings, not renormalised: the mean of the frames' scores), as the check-in stream fuses good frames; scored against every other image; 'service' applies the configured thresholds unchanged",
    };
    let service = Modes::of(&s, p, &settings.cascade);
    CascadeCalibration {
        pairs: head,
        fused_two_frames: fused,
        variants,
        service: ServiceCascade {
            cascade_enabled: settings.cascade.enabled,
            weights: settings.cascade.weights,
            flip: settings.cascade.flip,
            one_to_one: service.one_to_one,
            one_to_n: service.one_to_n,
        },
        note: "every pair of LFW images (folds 1-5 and the extra images per identity), unmasked probes; each variant's z-statistics and thresholds calibrated on these pairs; 'service' runs the configured thresholds (defaults.toml or --config) with cascade::judge; tar_held_out counts genuine pairs of the folds the trained models never saw",
    }
}
