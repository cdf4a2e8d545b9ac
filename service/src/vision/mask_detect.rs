//! Mask detection: a logistic probe (`models/trained/mask_detector_probe.onnx`, trained by
//! `models/trained/train_mask_detector.py` on synthetic masks only), run by tract like the other
//! models, on the embedder's last feature map (`embed::OUTPUT_NODES[1]`, 512 x 7 x 7, averaged per
//! row), which the embedder's one inference gives alongside the embedding.
//! It costs a few thousand multiply-adds after the embedder.

use super::runtime::{self, Plan};
use super::VisionError;
use std::path::Path;

/// p(masked) at or above this counts as a masked face.
pub const DEFAULT_THRESHOLD: f32 = 0.5;

/// Shape of the feature map the probe reads.
pub const FEATURE_SHAPE: [usize; 4] = [1, 512, 7, 7];

/// What the mask detector says about a face.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaskScore {
    pub p_masked: f32,
    pub masked: bool,
}

pub struct MaskDetector {
    plan: Plan,
}

impl MaskDetector {
    pub fn load(path: &Path, fast_ops: bool) -> Result<MaskDetector, VisionError> {
        Ok(MaskDetector {
            plan: runtime::load_fixed(path, &FEATURE_SHAPE, fast_ops)?,
        })
    }

    pub fn score(&self, features: Vec<f32>) -> Result<MaskScore, VisionError> {
        if features.len() != FEATURE_SHAPE.iter().product::<usize>() {
            return Err(VisionError::Inference(
                "the embedder gave no feature map for the mask detector".into(),
            ));
        }
        let out = runtime::run(&self.plan, &FEATURE_SHAPE, features)?;
        let p = out
            .first()
            .and_then(|v| v.first())
            .copied()
            .filter(|p| p.is_finite())
            .ok_or_else(|| VisionError::Inference("mask detector gave no score".into()))?;
        Ok(MaskScore {
            p_masked: p,
            masked: p >= DEFAULT_THRESHOLD,
        })
    }
}
