//! The face pipeline as the evaluation runs it: one image in, what each stage made of it out, with
//! per-stage timings; and the helpers every dataset's part shares.

use crate::timing::Timings;
use anyhow::{Context, Result};
use lobby_bench::capture::CaptureFacts;
use lobby_bench::datasets::Pair;
use lobby_bench::masks::{random_mask, SplitMix};
use lobby_bench::metrics::{self, det_points, kfold};
use lobby_bench::plot::{det_png, Curve, COLORS};
use lobby_service::gallery::fused;
use lobby_service::vision::mask_render;
use lobby_service::vision::second::SecondViews;
use lobby_service::vision::{Embedding, Face, MaskScore, SecondInput, Vision};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// Seeds of the synthetic masks drawn on evaluation probes: this base plus the image's index in
/// the sorted image list. Training used seeds from 7e9 on (`lobby-maskdata`).
pub const EVAL_MASK_SEED: u64 = 20261121;

/// LFW folds of `pairs.txt` (zero-based) whose images trained the mask models
/// (`models/trained/README.md`); the others are identities those models never saw.
pub const MASK_TRAIN_FOLDS: [usize; 3] = [0, 1, 2];

pub struct Ctx {
    pub vision: Vision,
    pub timings: Mutex<Timings>,
}

/// What the pipeline made of one image.
#[derive(Clone, Default)]
pub struct Processed {
    pub faces: usize,
    /// The guest (primary) face.
    pub face: Option<Face>,
    pub embedding: Option<Embedding>,
    /// The mask detector on the face as it is.
    pub mask: Option<MaskScore>,
    pub p_real: Option<f32>,
    /// Each liveness model's p(real): MiniFASNetV2 (x2.7), MiniFASNetV1SE (x4.0).
    pub p_real_models: Option<[f32; 2]>,
    pub error: Option<String>,
    /// Mask-aware enrolment's masked template of this face (`Vision::masked_template`).
    pub masked_template: Option<Embedding>,
    /// The photo with a synthetic mask (`vision::mask`, drawn from the image's seed), analysed as a
    /// kiosk photo: detected again (clean landmarks when missed), embedded, mask detector run.
    pub masked_probe: Option<MaskedProbe>,
    /// The cascade's second-stage embeddings (teacher and dlib, the face and its mirror apart).
    pub second: Option<SecondViews>,
    /// What the capture checks read (with the embedding).
    pub capture: Option<CaptureFacts>,
}

#[derive(Clone)]
pub struct MaskedProbe {
    pub embedding: Embedding,
    pub mask: MaskScore,
    pub redetected: bool,
}

/// Every image's result, by path.
pub type Done = HashMap<PathBuf, Processed>;

impl Ctx {
    pub fn time<T>(&self, stage: &'static str, f: impl FnOnce() -> T) -> T {
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
    pub fn process_all(&self, paths: &[PathBuf], embed: bool, liveness: bool, masked: bool) -> Done {
        self.process_all_with(paths, embed, liveness, masked, false)
    }

    /// [`Ctx::process_all`], with the second-stage embeddings when `second`.
    pub fn process_all_with(&self, paths: &[PathBuf], embed: bool, liveness: bool, masked: bool, second: bool) -> Done {
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

/// The identity of an image in a folder per identity (LFW, MFR2): the folder's name.
pub fn folder_identity(p: &Path) -> Option<String> {
    p.parent()
        .and_then(|d| d.file_name())
        .and_then(|n| n.to_str())
        .map(str::to_string)
}

pub fn unique_images(pairs: &[Pair]) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = pairs.iter().flat_map(|p| [p.a.clone(), p.b.clone()]).collect();
    v.sort();
    v.dedup();
    v
}

/// Cosine score per pair; a pair with an image where no face was found scores -1 (a non-match).
pub fn pair_scores(pairs: &[Pair], done: &Done) -> Vec<f32> {
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

pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// A labelled score set drawn as one DET curve.
pub type DetCurve<'a> = (&'a str, &'a [f32], &'a [bool]);

/// Writes `curves` as `<stem>.<name>.det.png` next to `out`; returns its path.
pub fn write_det(out: &Path, name: &str, title: &str, curves: &[DetCurve]) -> Result<PathBuf> {
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

/// The service's score for a probe against an enrolled face (`gallery::fused`): clean similarity for
/// a probe the mask detector calls unmasked, else the mean of its similarity to the clean and the
/// masked template.
pub fn service_score(enrolled: &Processed, probe: &Embedding, probe_masked: bool) -> Option<f32> {
    let clean = enrolled.embedding.as_ref()?.cosine(probe);
    let masked = enrolled.masked_template.as_ref().map(|t| t.cosine(probe));
    Some(fused(probe_masked, clean, masked))
}

/// Accuracy (k-fold over the folds present) of `scores` restricted to the pairs `keep` accepts.
pub fn kfold_subset(scores: &[f32], pairs: &[Pair], keep: impl Fn(&Pair) -> bool) -> metrics::KFold {
    let idx: Vec<usize> = (0..pairs.len()).filter(|&i| keep(&pairs[i])).collect();
    let s: Vec<f32> = idx.iter().map(|&i| scores[i]).collect();
    let l: Vec<bool> = idx.iter().map(|&i| pairs[i].same).collect();
    let f: Vec<usize> = idx.iter().map(|&i| pairs[i].fold).collect();
    kfold(&s, &l, &f)
}
