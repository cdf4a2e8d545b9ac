//! The mask detector: on RWMFD (every face masked, in the wild), on LFW's clean and synthetically
//! masked faces, and the top-level `mask_detector` section gathering it with MFR2's real labels.

use crate::lfw::Lfw;
use crate::mfr2::{Mfr2, Mfr2MaskDetector};
use crate::pipeline::{round, Ctx, Done};
use anyhow::Result;
use lobby_bench::datasets;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The report's `mask_detector`.
#[derive(Serialize)]
pub struct MaskDetector {
    pub accuracy_mfr2: Option<f64>,
    pub lfw: Option<LfwMaskDetector>,
    pub mfr2: Option<Mfr2MaskDetector>,
    pub model: &'static str,
    pub rwmfd_called_masked: Option<Rwmfd>,
    pub threshold: f32,
}

impl MaskDetector {
    pub fn gather(lfw: Option<&Lfw>, mfr2: Option<&Mfr2>, rwmfd: Option<Rwmfd>) -> Self {
        MaskDetector {
            accuracy_mfr2: mfr2.map(|m| m.mask_detector.accuracy),
            mfr2: mfr2.map(|m| m.mask_detector.clone()),
            rwmfd_called_masked: rwmfd,
            lfw: lfw.map(|l| l.mask_detector.clone()),
            threshold: lobby_service::vision::mask_detect::DEFAULT_THRESHOLD,
            model: "models/trained/mask_detector_probe.onnx (logistic probe on the embedding, trained on synthetic masks of LFW folds 0-2)",
        }
    }
}

/// A share of `true` verdicts, with the count.
#[derive(Clone, Serialize)]
pub struct Rate {
    pub n: usize,
    pub rate: f64,
}

/// Share of `true` in `it`, with the count.
fn rate_of(it: impl Iterator<Item = bool>) -> Rate {
    let (mut n, mut yes) = (0usize, 0usize);
    for b in it {
        n += 1;
        yes += b as usize;
    }
    Rate {
        rate: round(yes as f64 / n.max(1) as f64, 5),
        n,
    }
}

/// `lfw.mask_detector`: the detector on LFW's faces as they are and with a synthetic mask.
#[derive(Clone, Serialize)]
pub struct LfwMaskDetector {
    pub lfw_synthetic_masked_called_masked: Rate,
    pub lfw_unmasked_called_unmasked: Rate,
}

impl LfwMaskDetector {
    pub fn of(done: &Done) -> Self {
        LfwMaskDetector {
            lfw_unmasked_called_unmasked: rate_of(done.values().filter_map(|p| p.mask.map(|m| !m.masked))),
            lfw_synthetic_masked_called_masked: rate_of(
                done.values()
                    .filter_map(|p| p.masked_probe.as_ref().map(|m| m.mask.masked)),
            ),
        }
    }
}

/// `mask_detector.rwmfd_called_masked`.
#[derive(Serialize)]
pub struct Rwmfd {
    pub accuracy: f64,
    pub called_masked: usize,
    pub faces_found: usize,
    pub images: usize,
}

/// The mask detector on RWMFD (every face masked, in the wild).
pub fn eval_rwmfd(ctx: &Ctx, dir: &Path) -> Result<Rwmfd> {
    let csv = datasets::Csv::read(&dir.join("manifest.csv"))?;
    let col = csv.col("image")?;
    let paths: Vec<PathBuf> = csv.rows.iter().map(|r| dir.join(&r[col])).collect();
    eprintln!("rwmfd: {} images", paths.len());
    let done = ctx.process_all(&paths, true, false, false);
    let verdicts: Vec<bool> = paths
        .iter()
        .filter_map(|p| done.get(p).and_then(|x| x.mask).map(|m| m.masked))
        .collect();
    Ok(Rwmfd {
        images: paths.len(),
        faces_found: verdicts.len(),
        called_masked: verdicts.iter().filter(|v| **v).count(),
        accuracy: round(
            verdicts.iter().filter(|v| **v).count() as f64 / verdicts.len().max(1) as f64,
            5,
        ),
    })
}
