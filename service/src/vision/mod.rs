//! The vision pipeline: decode, detect (YuNet), quality, liveness (MiniFASNet x2), align, embed
//! (MobileFaceNet-192), mask detection (a probe on the embedding). Every model is loaded once into an optimized tract plan; [`Vision`] is
//! `Send + Sync` and shared across threads behind an `Arc`.

pub mod decode;
pub mod detect;
pub mod embed;
mod fastops;
pub mod geometry;
pub mod liveness;
pub mod mask_detect;
pub mod mask_render;
mod plan_cache;
pub mod quality;
mod runtime;
pub mod second;

pub use runtime::Plan;

pub use decode::DecodeLimits;
pub use detect::{DetectorConfig, Face};
pub use embed::{Embedding, ALIGNED_SIZE, EMBEDDING_DIM};
pub use liveness::LivenessScore;
pub use mask_detect::MaskScore;
pub use quality::Quality;
pub use second::{SecondEmbeddings, SecondInput};

use image::RgbImage;
use lobby_models::ModelPaths;
use std::time::Instant;

/// Errors of the vision layer.
#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    #[error("the image is empty")]
    EmptyImage,
    #[error("the image is too large: {what}")]
    ImageTooLarge { what: String },
    #[error("unsupported image format: {0}; send JPEG, PNG or WebP")]
    UnsupportedFormat(String),
    #[error("the image cannot be decoded: {0}")]
    UndecodableImage(String),
    #[error("cannot load model {file}: {reason}")]
    ModelLoad { file: String, reason: String },
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("the face landmarks are degenerate")]
    DegenerateLandmarks,
}

impl VisionError {
    /// True when the caller's input is at fault (a bad request), false for a server-side failure.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            VisionError::EmptyImage
                | VisionError::ImageTooLarge { .. }
                | VisionError::UnsupportedFormat(_)
                | VisionError::UndecodableImage(_)
                | VisionError::DegenerateLandmarks
        )
    }
}

#[derive(Debug, Clone, Copy)]
pub struct VisionConfig {
    pub decode: DecodeLimits,
    pub detector: DetectorConfig,
    /// Liveness sees the face at most this large (px; 0: as it is): larger faces are first scaled
    /// down with an antialiasing filter ([`liveness::Liveness::score`]).
    pub liveness_max_face_px: f32,
    /// Plans swap tract's depthwise convolutions and 2x2 max-pools for the faster kernels of
    /// `fastops` (on; off only to measure tract alone).
    pub fast_ops: bool,
}

impl Default for VisionConfig {
    fn default() -> Self {
        VisionConfig {
            decode: DecodeLimits::default(),
            detector: DetectorConfig::default(),
            liveness_max_face_px: 0.0,
            fast_ops: true,
        }
    }
}

/// A figure about one model at one input shape: (model name, input shape, figure).
pub type PerModel<T> = (&'static str, Vec<usize>, T);

/// Milliseconds spent in each stage of one photo's analysis.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimings {
    pub decode_ms: f64,
    pub detect_ms: f64,
    pub quality_ms: f64,
    pub liveness_ms: f64,
    pub align_ms: f64,
    pub embed_ms: f64,
}

/// Everything the pipeline learns about the guest's face in one photo.
#[derive(Debug, Clone)]
pub struct FaceAnalysis {
    pub face: Face,
    pub quality: Quality,
    pub liveness: LivenessScore,
    pub embedding: Embedding,
    pub mask: MaskScore,
    /// What the cascade's second stage reads ([`Vision::second_embeddings`]); made only for faces the
    /// mask detector calls unmasked (masked probes are judged by the first stage alone).
    pub second_input: Option<std::sync::Arc<SecondInput>>,
}

/// One photo's analysis: every face found, and the guest's face (the primary one) analysed.
#[derive(Debug, Clone)]
pub struct Analysis {
    pub width: u32,
    pub height: u32,
    pub faces: Vec<Face>,
    pub primary: Option<FaceAnalysis>,
    pub timings: StageTimings,
}

pub struct Vision {
    detector: detect::Detector,
    embedder: embed::Embedder,
    liveness: liveness::Liveness,
    mask_detector: mask_detect::MaskDetector,
    second: second::SecondStage,
    cfg: VisionConfig,
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

impl Vision {
    /// Loads and plans every model. Call once; share the result.
    pub fn load(paths: &ModelPaths, cfg: VisionConfig) -> Result<Vision, VisionError> {
        Ok(Vision {
            detector: detect::Detector::load(&paths.detector, cfg.detector, cfg.fast_ops)?,
            embedder: embed::Embedder::load(&paths.embedder, cfg.fast_ops)?,
            liveness: liveness::Liveness::load(&paths.liveness_v2, &paths.liveness_v1se, cfg.fast_ops)?,
            mask_detector: mask_detect::MaskDetector::load(&paths.mask_detector, cfg.fast_ops)?,
            second: second::SecondStage::load(&paths.teacher, &paths.dlib, cfg.fast_ops)?,
            cfg,
        })
    }

    pub fn config(&self) -> &VisionConfig {
        &self.cfg
    }

    pub fn decode(&self, bytes: &[u8]) -> Result<RgbImage, VisionError> {
        decode::decode(bytes, &self.cfg.decode)
    }

    pub fn detect(&self, img: &RgbImage) -> Result<Vec<Face>, VisionError> {
        self.detector.detect(img)
    }

    pub fn align(&self, img: &RgbImage, face: &Face) -> Result<RgbImage, VisionError> {
        embed::align(img, &face.landmarks)
    }

    pub fn embed_aligned(&self, aligned: &RgbImage) -> Result<Embedding, VisionError> {
        self.embedder.embed(aligned)
    }

    pub fn liveness(&self, img: &RgbImage, face: &Face) -> Result<LivenessScore, VisionError> {
        self.liveness.score(img, face, self.cfg.liveness_max_face_px)
    }

    /// The embedding of an aligned face and the mask detector's verdict on it (one inference).
    pub fn embed_and_mask(&self, aligned: &RgbImage) -> Result<(Embedding, MaskScore), VisionError> {
        let (e, features) = self.embedder.embed_with_features(aligned)?;
        Ok((e, self.mask_detector.score(features)?))
    }

    /// The cascade's second-stage embeddings of a face (teacher, and dlib when `with_dlib`), each
    /// flip-averaged where `flip` (teacher, dlib) says so.
    pub fn second_embeddings(
        &self,
        input: &SecondInput,
        with_dlib: bool,
        flip: [bool; 2],
    ) -> Result<SecondEmbeddings, VisionError> {
        self.second.embed(input, with_dlib, flip)
    }

    /// Both second-stage models on the face and its mirror image, each view apart (evaluation).
    pub fn second_views(&self, input: &SecondInput) -> Result<second::SecondViews, VisionError> {
        self.second.all_views(input)
    }

    /// Mask-aware enrolment: the template of the face wearing a synthetic mask. The enrolment photo
    /// is drawn with each of [`mask_render::ENROLMENT_MASKS`], the face is detected again on each copy (as a
    /// kiosk would see it; the clean landmarks when the detector misses it) and embedded; the result
    /// is the normalised mean of those embeddings. `None` when no copy could be embedded.
    pub fn masked_template(&self, img: &RgbImage, face: &Face) -> Result<Option<Embedding>, VisionError> {
        let mut sum = vec![0f32; EMBEDDING_DIM];
        let mut n = 0;
        for spec in mask_render::ENROLMENT_MASKS {
            let Some(masked) = mask_render::render(img, &face.landmarks, &spec) else {
                continue;
            };
            let found = self.detect(&masked)?;
            let f = match quality::primary_face(&found, masked.width(), masked.height()) {
                Some(k) => &found[k],
                None => face,
            };
            let e = self.embed_aligned(&self.align(&masked, f)?)?;
            sum.iter_mut().zip(&e.0).for_each(|(s, x)| *s += x);
            n += 1;
        }
        Ok(Embedding::normalised(sum).filter(|_| n > 0))
    }

    /// Each model's plan at the input shape a kiosk check-in gives it, plus the detector's full
    /// 640x480 pass (run when the first pass finds nothing; kept for comparison with earlier runs):
    /// (name, input shape, plan), for
    /// timing and profiling each model alone (`lobby_bench::profile`).
    pub fn kiosk_plans(&self) -> Result<Vec<PerModel<Plan>>, VisionError> {
        let side = ALIGNED_SIZE as usize;
        let [v2, v1se] = self.liveness.plans();
        let [teacher, dlib] = self.second.plans();
        let chip = second::DLIB_CHIP as usize;
        let (lw, lh) = self.detector.kiosk_canvas();
        Ok(vec![
            ("detector", vec![1, 3, 480, 640], self.detector.plan_for(640, 480)?),
            (
                "detector_first_pass",
                vec![1, 3, lh, lw],
                self.detector.plan_for(lw, lh)?,
            ),
            ("embedder", vec![1, 3, side, side], self.embedder.plan().clone()),
            ("liveness_v2", vec![1, 3, 80, 80], v2.clone()),
            ("liveness_v1se", vec![1, 3, 80, 80], v1se.clone()),
            ("teacher", vec![1, 3, side, side], teacher.clone()),
            ("dlib", vec![1, 3, chip, chip], dlib.clone()),
        ])
    }

    /// Decodes a photo and analyses the guest's face in it.
    pub fn analyze_bytes(&self, bytes: &[u8]) -> Result<Analysis, VisionError> {
        let t = Instant::now();
        let img = self.decode(bytes)?;
        let decode_ms = ms_since(t);
        let mut a = self.analyze(&img)?;
        a.timings.decode_ms = decode_ms;
        Ok(a)
    }

    /// Analyses the guest's face in a decoded photo: detect, pick the primary face, align, quality,
    /// liveness, embed.
    pub fn analyze(&self, img: &RgbImage) -> Result<Analysis, VisionError> {
        let mut timings = StageTimings::default();
        let t = Instant::now();
        let faces = self.detect(img)?;
        timings.detect_ms = ms_since(t);
        let (width, height) = (img.width(), img.height());
        let Some(i) = quality::primary_face(&faces, width, height) else {
            return Ok(Analysis {
                width,
                height,
                faces,
                primary: None,
                timings,
            });
        };
        let face = faces[i].clone();
        let t = Instant::now();
        let aligned = self.align(img, &face)?;
        timings.align_ms = ms_since(t);
        let t = Instant::now();
        let quality = quality::measure(&faces, i, width, height, &aligned);
        timings.quality_ms = ms_since(t);
        let t = Instant::now();
        let liveness = self.liveness(img, &face)?;
        timings.liveness_ms = ms_since(t);
        let t = Instant::now();
        let (embedding, mask) = self.embed_and_mask(&aligned)?;
        // Without a second-stage input (degenerate landmarks for dlib's template) the first stage
        // decides alone; the photo is not refused for it.
        let second_input = if mask.masked {
            None
        } else {
            SecondInput::new(img, &face.landmarks, &aligned)
                .ok()
                .map(std::sync::Arc::new)
        };
        timings.embed_ms = ms_since(t);
        Ok(Analysis {
            width,
            height,
            faces,
            primary: Some(FaceAnalysis {
                face,
                quality,
                liveness,
                embedding,
                mask,
                second_input,
            }),
            timings,
        })
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Vision>();
}
