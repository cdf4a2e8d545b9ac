//! Face detection with YuNet (dynamic input size) and its 5 landmarks.
//!
//! Resize policy: YuNet is trained for faces of about 10-300 px, and its time grows with the canvas'
//! area (640x480: ~60 ms in tract on one core). A first pass scales the photo so its long side is
//! [`DetectorConfig::first_pass_long_side`] px (480 by default: a kiosk guest's face of 120-360 px is
//! 90-270 px there). When it finds nothing, a full pass scales the long side to 640 px for small faces
//! (1.6 % to ~47 % of the long side land in the model's range). When that finds nothing either, or
//! the face found is larger than the model's range, a last pass adds a black border of half of each
//! side and scales the long side to 640 px, which brings a face filling the whole photo down to
//! ~200 px.
//!
//! The first pass' size trades time for landmark precision, measured with `lobby-eval`
//! (`bench/RESULTS-log.md`, "Performance"): 480 px keeps the unmasked operating points of the 640-px pass
//! (LFW TAR at FMR 1e-4 / 1e-5) and raises the masked ones, at ~60 % of its time; 320 px is three
//! times faster but loses 1.5-2.5 points of TAR there. A second pass on a crop around the face, meant
//! to sharpen the landmarks at less cost, made them worse (YuNet's landmarks need the scene around the
//! face) and was dropped.
//!
//! Canvases are padded to multiples of 32; one optimized plan per canvas size is built on first use
//! and cached.

use super::geometry::{BBox, Point, ScaleOffset};
use super::runtime::{self, Plan};
use super::VisionError;
use fast_image_resize::{images::Image, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tract_onnx::prelude::InferenceModel;

const STRIDES: [usize; 3] = [8, 16, 32];
const FULL_PASS_LONG_SIDE: f32 = 640.0;
const BORDER_PASS_BORDER: f32 = 0.5;
/// Largest face (canvas px) the model handles well.
const MODEL_MAX_FACE: f32 = 300.0;
const MAX_CACHED_PLANS: usize = 64;

/// A detected face, in the coordinates of the photo passed to [`Detector::detect`].
#[derive(Debug, Clone, PartialEq)]
pub struct Face {
    pub bbox: BBox,
    /// Right eye (image-left), left eye, nose tip, right mouth corner, left mouth corner.
    pub landmarks: [Point; 5],
    pub score: f32,
}

impl Face {
    pub fn size(&self) -> f32 {
        self.bbox.w.min(self.bbox.h)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct DetectorConfig {
    pub score_threshold: f32,
    pub nms_iou: f32,
    /// Long side (px) the photo is scaled to for the first pass; 640 makes it the full pass.
    pub first_pass_long_side: f32,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            score_threshold: 0.6,
            nms_iou: 0.3,
            first_pass_long_side: 480.0,
        }
    }
}

pub struct Detector {
    model: InferenceModel,
    path: PathBuf,
    /// Index of each output (cls, obj, bbox, kps) for each stride.
    outputs: [[usize; 4]; 3],
    plans: Mutex<HashMap<(usize, usize), Plan>>,
    cfg: DetectorConfig,
    fast_ops: bool,
}

impl Detector {
    pub fn load(path: &Path, cfg: DetectorConfig, fast_ops: bool) -> Result<Detector, VisionError> {
        let model = runtime::parse(path)?;
        let names = runtime::output_names(&model)?;
        let find = |n: String| {
            names
                .iter()
                .position(|x| *x == n)
                .ok_or_else(|| VisionError::ModelLoad {
                    file: path.display().to_string(),
                    reason: format!("output {n} not found (outputs: {names:?})"),
                })
        };
        let mut outputs = [[0; 4]; 3];
        for (i, s) in STRIDES.iter().enumerate() {
            outputs[i] = [
                find(format!("cls_{s}"))?,
                find(format!("obj_{s}"))?,
                find(format!("bbox_{s}"))?,
                find(format!("kps_{s}"))?,
            ];
        }
        let d = Detector {
            model,
            path: path.to_path_buf(),
            outputs,
            plans: Mutex::new(HashMap::new()),
            cfg,
            fast_ops,
        };
        // Plan a kiosk frame's first-pass canvas now, so the first check-in does not pay for it.
        let (w, h) = d.kiosk_canvas();
        d.plan_for(w, h)?;
        Ok(d)
    }

    pub(super) fn plan_for(&self, w: usize, h: usize) -> Result<Plan, VisionError> {
        if let Some(p) = self.plans.lock().unwrap_or_else(|e| e.into_inner()).get(&(w, h)) {
            return Ok(p.clone());
        }
        // Planned outside the lock: a new size does not stall detections at known sizes.
        let plan = runtime::plan(&self.model, &[1, 3, h, w], &self.path, self.fast_ops)?;
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if plans.len() >= MAX_CACHED_PLANS {
            plans.clear();
        }
        Ok(plans.entry((w, h)).or_insert(plan).clone())
    }

    /// Number of cached plans (one per canvas size seen).
    pub fn cached_plans(&self) -> usize {
        self.plans.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The canvas (w, h) of a 640x480 kiosk frame's first pass.
    pub(super) fn kiosk_canvas(&self) -> (usize, usize) {
        let scale = self.cfg.first_pass_long_side.clamp(32.0, FULL_PASS_LONG_SIDE) / 640.0;
        let side = |px: f32| (((px * scale).round() as usize).max(1)).div_ceil(32) * 32;
        (side(640.0), side(480.0))
    }

    /// Detects faces in `img`, sorted by decreasing score (see the module's resize policy).
    pub fn detect(&self, img: &RgbImage) -> Result<Vec<Face>, VisionError> {
        let long = img.width().max(img.height()) as f32;
        let mut scale = self.cfg.first_pass_long_side.clamp(32.0, FULL_PASS_LONG_SIDE) / long;
        let mut first = self.detect_pass(img, scale, 0.0)?;
        if first.is_empty() && scale < FULL_PASS_LONG_SIDE / long {
            scale = FULL_PASS_LONG_SIDE / long;
            first = self.detect_pass(img, scale, 0.0)?;
        }
        let too_big = first.iter().any(|f| f.size() * scale > MODEL_MAX_FACE);
        if first.is_empty() || too_big {
            let scale = FULL_PASS_LONG_SIDE / (long * (1.0 + 2.0 * BORDER_PASS_BORDER));
            let second = self.detect_pass(img, scale, BORDER_PASS_BORDER * long * scale)?;
            if !second.is_empty() {
                return Ok(second);
            }
        }
        Ok(first)
    }

    /// One pass: the photo scaled by `scale`, placed at (`border`, `border`) on a black canvas.
    fn detect_pass(&self, img: &RgbImage, scale: f32, border: f32) -> Result<Vec<Face>, VisionError> {
        let tf = ScaleOffset {
            scale,
            offset: Point::new(border.round(), border.round()),
        };
        let nw = ((img.width() as f32 * scale).round() as u32).max(1);
        let nh = ((img.height() as f32 * scale).round() as u32).max(1);
        let cw = (tf.offset.x as usize * 2 + nw as usize).div_ceil(32) * 32;
        let ch = (tf.offset.y as usize * 2 + nh as usize).div_ceil(32) * 32;
        let resized = resize_rgb(img, nw, nh, ResizeAlg::Convolution(FilterType::Bilinear))?;
        let input = bgr_planes(&resized, cw, ch, tf.offset.x as usize, tf.offset.y as usize);
        let plan = self.plan_for(cw, ch)?;
        let out = runtime::run(&plan, &[1, 3, ch, cw], input)?;
        let mut faces = Vec::new();
        for (si, &s) in STRIDES.iter().enumerate() {
            let [ci, oi, bi, ki] = self.outputs[si];
            let (cls, obj, bb, kp) = (&out[ci], &out[oi], &out[bi], &out[ki]);
            let cols = cw / s;
            let n = (cw / s) * (ch / s);
            if cls.len() < n || obj.len() < n || bb.len() < n * 4 || kp.len() < n * 10 {
                return Err(VisionError::Inference(format!(
                    "detector output too short for stride {s}"
                )));
            }
            for idx in 0..n {
                let score = (cls[idx].clamp(0.0, 1.0) * obj[idx].clamp(0.0, 1.0)).sqrt();
                if score < self.cfg.score_threshold {
                    continue;
                }
                let (r, c) = ((idx / cols) as f32, (idx % cols) as f32);
                let sf = s as f32;
                let b = &bb[idx * 4..idx * 4 + 4];
                let (cx, cy) = ((c + b[0]) * sf, (r + b[1]) * sf);
                let (w, h) = (b[2].exp() * sf, b[3].exp() * sf);
                if !(w.is_finite() && h.is_finite()) {
                    continue;
                }
                let k = &kp[idx * 10..idx * 10 + 10];
                let mut landmarks = [Point::default(); 5];
                for (j, lm) in landmarks.iter_mut().enumerate() {
                    *lm = tf.to_original(Point::new((k[2 * j] + c) * sf, (k[2 * j + 1] + r) * sf));
                }
                let bbox = tf.box_to_original(BBox {
                    x: cx - w / 2.0,
                    y: cy - h / 2.0,
                    w,
                    h,
                });
                faces.push(Face { bbox, landmarks, score });
            }
        }
        Ok(nms(faces, self.cfg.nms_iou))
    }
}

/// Greedy non-maximum suppression by score (as OpenCV's `NMSBoxes`).
fn nms(mut faces: Vec<Face>, iou: f32) -> Vec<Face> {
    faces.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut keep: Vec<Face> = Vec::new();
    for f in faces {
        if keep.iter().all(|k| k.bbox.iou(&f.bbox) <= iou) {
            keep.push(f);
        }
    }
    keep
}

/// Resizes an RGB image with fast_image_resize.
pub fn resize_rgb(img: &RgbImage, w: u32, h: u32, alg: ResizeAlg) -> Result<RgbImage, VisionError> {
    if img.width() == w && img.height() == h {
        return Ok(img.clone());
    }
    let src = fast_image_resize::images::ImageRef::new(img.width(), img.height(), img.as_raw(), PixelType::U8x3)
        .map_err(|e| VisionError::Inference(e.to_string()))?;
    let mut dst = Image::new(w, h, PixelType::U8x3);
    Resizer::new()
        .resize(&src, &mut dst, &ResizeOptions::new().resize_alg(alg))
        .map_err(|e| VisionError::Inference(e.to_string()))?;
    RgbImage::from_raw(w, h, dst.into_vec()).ok_or_else(|| VisionError::Inference("resize buffer".into()))
}

/// Crops the box (`x`, `y`, `w`, `h`, sub-pixel) out of `img` and resizes it to `ow` x `oh`.
pub fn crop_resize(img: &RgbImage, crop: BBox, ow: u32, oh: u32, alg: ResizeAlg) -> Result<RgbImage, VisionError> {
    let src = fast_image_resize::images::ImageRef::new(img.width(), img.height(), img.as_raw(), PixelType::U8x3)
        .map_err(|e| VisionError::Inference(e.to_string()))?;
    let mut dst = Image::new(ow, oh, PixelType::U8x3);
    let opts = ResizeOptions::new()
        .resize_alg(alg)
        .crop(crop.x as f64, crop.y as f64, crop.w as f64, crop.h as f64);
    Resizer::new()
        .resize(&src, &mut dst, &opts)
        .map_err(|e| VisionError::Inference(e.to_string()))?;
    RgbImage::from_raw(ow, oh, dst.into_vec()).ok_or_else(|| VisionError::Inference("resize buffer".into()))
}

/// BGR planes (NCHW, raw 0-255) of `img` pasted at (`ox`, `oy`) on a zero canvas of `cw` x `ch`.
fn bgr_planes(img: &RgbImage, cw: usize, ch: usize, ox: usize, oy: usize) -> Vec<f32> {
    let plane = cw * ch;
    let mut out = vec![0f32; 3 * plane];
    let (w, h) = (img.width() as usize, img.height() as usize);
    let raw = img.as_raw();
    for y in 0..h.min(ch.saturating_sub(oy)) {
        for x in 0..w.min(cw.saturating_sub(ox)) {
            let i = (y * w + x) * 3;
            let o = (y + oy) * cw + x + ox;
            out[o] = raw[i + 2] as f32;
            out[plane + o] = raw[i + 1] as f32;
            out[2 * plane + o] = raw[i] as f32;
        }
    }
    out
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Detector>();
    is::<Arc<Detector>>();
}
