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
//! and cached. Every pass scales the photo's long side to a fixed length, so the canvases a request
//! can reach form a small set whatever the photo's size or aspect ratio ([`reachable_canvases`]: 68
//! with the default first pass of 480 px, 29 of 480 x (32..=480) or (32..=480) x 480 and 39 of
//! 640 x (32..=640) or (32..=640) x 640; at most 76 for any whole-pixel first-pass length). The
//! plan cache (`plan_cache.rs`) is an LRU sized to hold that whole set, so no sequence of photos
//! (cycling aspect ratios included) rebuilds a plan once each size has been planned, and a size is
//! planned once even when several requests ask for it at once. Measured (x86-64, one core): a plan
//! takes ~40 ms to build and ~0.45 MB of memory (RSS +28-30 MB for 67 plans), so the whole set
//! holds ~30 MB.

use super::geometry::{BBox, Point, ScaleOffset};
use super::plan_cache::PlanCache;
use super::runtime::{self, Plan};
use super::VisionError;
use fast_image_resize::{images::Image, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tract_onnx::prelude::InferenceModel;

const STRIDES: [usize; 3] = [8, 16, 32];
const FULL_PASS_LONG_SIDE: f32 = 640.0;
const BORDER_PASS_BORDER: f32 = 0.5;
/// Largest face (canvas px) the model handles well.
const MODEL_MAX_FACE: f32 = 300.0;
/// Canvas sides are padded to multiples of this (YuNet's largest stride).
const CANVAS_STEP: usize = 32;

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
    /// One plan per canvas (w, h), room for every canvas [`reachable_canvases`] lists.
    plans: PlanCache<(usize, usize), Plan, VisionError>,
    cfg: DetectorConfig,
    fast_ops: bool,
}

impl Detector {
    pub fn load(path: &Path, cfg: DetectorConfig, fast_ops: bool) -> Result<Detector, VisionError> {
        Detector::load_with_capacity(path, cfg, fast_ops, reachable_canvases(&cfg).len())
    }

    /// [`Detector::load`] with a plan cache of `capacity` plans (a test's small one).
    fn load_with_capacity(
        path: &Path,
        cfg: DetectorConfig,
        fast_ops: bool,
        capacity: usize,
    ) -> Result<Detector, VisionError> {
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
            plans: PlanCache::new(capacity),
            cfg,
            fast_ops,
        };
        // Plan a kiosk frame's first-pass canvas now, so the first check-in does not pay for it.
        let (w, h) = d.kiosk_canvas();
        d.plan_for(w, h)?;
        Ok(d)
    }

    /// The plan for a `w` x `h` canvas: cached, or built now (outside the cache's lock: a new size
    /// does not stall detections at known sizes), once even when several requests ask at once.
    pub(super) fn plan_for(&self, w: usize, h: usize) -> Result<Plan, VisionError> {
        self.plans
            .get_or_build(&(w, h), || {
                runtime::plan(&self.model, &[1, 3, h, w], &self.path, self.fast_ops)
            })
            .map_err(|e| same_error(&e))
    }

    /// Number of cached plans (one per canvas size seen, at most [`Detector::plan_capacity`]).
    pub fn cached_plans(&self) -> usize {
        self.plans.len()
    }

    /// Number of plans built since the detector was loaded (the one built at load included).
    pub fn plans_built(&self) -> usize {
        self.plans.builds()
    }

    /// The most plans the cache holds: the number of canvases a request can reach.
    pub fn plan_capacity(&self) -> usize {
        self.plans.capacity()
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
        let mut scale = first_pass_scale(&self.cfg, long);
        let mut first = self.detect_pass(img, scale, 0.0)?;
        if first.is_empty() && scale < full_pass_scale(long) {
            scale = full_pass_scale(long);
            first = self.detect_pass(img, scale, 0.0)?;
        }
        let too_big = first.iter().any(|f| f.size() * scale > MODEL_MAX_FACE);
        if first.is_empty() || too_big {
            let (scale, border) = border_pass(long);
            let second = self.detect_pass(img, scale, border)?;
            if !second.is_empty() {
                return Ok(second);
            }
        }
        Ok(first)
    }

    /// One pass: the photo scaled by `scale`, placed at (`border`, `border`) on a black canvas.
    fn detect_pass(&self, img: &RgbImage, scale: f32, border: f32) -> Result<Vec<Face>, VisionError> {
        let PassGeometry { tf, nw, nh, cw, ch } = pass_geometry(img.width(), img.height(), scale, border);
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

/// The first pass' scale for a photo whose long side is `long` px.
fn first_pass_scale(cfg: &DetectorConfig, long: f32) -> f32 {
    cfg.first_pass_long_side.clamp(32.0, FULL_PASS_LONG_SIDE) / long
}

/// The full pass' scale for a photo whose long side is `long` px.
fn full_pass_scale(long: f32) -> f32 {
    FULL_PASS_LONG_SIDE / long
}

/// The border pass' (scale, border in canvas px) for a photo whose long side is `long` px.
fn border_pass(long: f32) -> (f32, f32) {
    let scale = FULL_PASS_LONG_SIDE / (long * (1.0 + 2.0 * BORDER_PASS_BORDER));
    (scale, BORDER_PASS_BORDER * long * scale)
}

/// Where a pass puts the photo: scaled to `nw` x `nh` at `tf`'s offset on a `cw` x `ch` canvas.
struct PassGeometry {
    tf: ScaleOffset,
    nw: u32,
    nh: u32,
    cw: usize,
    ch: usize,
}

/// The geometry of a pass over a `w` x `h` photo scaled by `scale`, with `border` px of black around.
fn pass_geometry(w: u32, h: u32, scale: f32, border: f32) -> PassGeometry {
    let tf = ScaleOffset {
        scale,
        offset: Point::new(border.round(), border.round()),
    };
    let nw = ((w as f32 * scale).round() as u32).max(1);
    let nh = ((h as f32 * scale).round() as u32).max(1);
    let cw = (tf.offset.x as usize * 2 + nw as usize).div_ceil(CANVAS_STEP) * CANVAS_STEP;
    let ch = (tf.offset.y as usize * 2 + nh as usize).div_ceil(CANVAS_STEP) * CANVAS_STEP;
    PassGeometry { tf, nw, nh, cw, ch }
}

/// Every canvas (w, h) that [`Detector::detect`] can plan with `cfg`, sorted, whatever the photo.
///
/// Each pass scales the photo's long side to a fixed length `L` (the first pass' length; 640 for
/// the full pass; 320 plus a border of 160 on each side, 640 in all, for the border pass) and the
/// short side to 1..=L px, so its canvases are `ceil32(L)` by each multiple of 32 up to it, in
/// both orientations. The first pass' length is rounded from a float: both roundings are counted.
/// The border pass' canvases (640 by 352..=640) are among the full pass' ones, and when the first
/// pass is the full pass (its length 640) among the first pass' ones. A test checks this set
/// against the passes' own arithmetic over photos of every aspect ratio.
pub fn reachable_canvases(cfg: &DetectorConfig) -> Vec<(usize, usize)> {
    let first = cfg.first_pass_long_side.clamp(32.0, FULL_PASS_LONG_SIDE);
    let ceil_step = |px: usize| px.max(1).div_ceil(CANVAS_STEP) * CANVAS_STEP;
    let mut set = BTreeSet::new();
    let mut add = |long: usize, short_from: usize| {
        for short in (short_from..=long).step_by(CANVAS_STEP) {
            set.insert((long, short));
            set.insert((short, long));
        }
    };
    for long in [first.floor(), first.ceil()] {
        add(ceil_step(long as usize), CANVAS_STEP);
    }
    let full = FULL_PASS_LONG_SIDE as usize;
    if first < FULL_PASS_LONG_SIDE {
        add(full, CANVAS_STEP);
    }
    let border = (BORDER_PASS_BORDER * FULL_PASS_LONG_SIDE / (1.0 + 2.0 * BORDER_PASS_BORDER)).round() as usize;
    add(full, ceil_step(2 * border + 1));
    set.into_iter().collect()
}

/// A copy of a build error, for each request that waited on the failed build.
fn same_error(e: &VisionError) -> VisionError {
    match e {
        VisionError::EmptyImage => VisionError::EmptyImage,
        VisionError::ImageTooLarge { what } => VisionError::ImageTooLarge { what: what.clone() },
        VisionError::UnsupportedFormat(s) => VisionError::UnsupportedFormat(s.clone()),
        VisionError::UndecodableImage(s) => VisionError::UndecodableImage(s.clone()),
        VisionError::ModelLoad { file, reason } => VisionError::ModelLoad {
            file: file.clone(),
            reason: reason.clone(),
        },
        VisionError::Inference(s) => VisionError::Inference(s.clone()),
        VisionError::DegenerateLandmarks => VisionError::DegenerateLandmarks,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Barrier, OnceLock};
    use std::time::Instant;

    fn in_ci() -> bool {
        std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false)
    }

    /// Fails under CI, otherwise prints a loud skip notice (as `lobby-tests`' `missing`).
    fn missing<T>(what: &str) -> Option<T> {
        if in_ci() {
            panic!("{what} — required under CI=true");
        }
        eprintln!("\n!!!!!!!! SKIPPED: {what} !!!!!!!!\n");
        None
    }

    /// The detector's model file, the models installed from the mirror on first use as the end-to-end
    /// tests install them (`tests/src/lib.rs`: `LOBBY_MODEL_DIR`, default `target/lobby-test-models`,
    /// from `LOBBY_MODEL_BASE_URL`, else `LOBBY_MODEL_MIRROR`, default `../shared/models`).
    fn detector_model() -> Option<PathBuf> {
        static PATHS: OnceLock<Result<lobby_models::ModelPaths, String>> = OnceLock::new();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("service/ has a parent")
            .to_path_buf();
        let r = PATHS.get_or_init(|| {
            let dir = std::env::var_os("LOBBY_MODEL_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target/lobby-test-models"));
            let source = match std::env::var("LOBBY_MODEL_BASE_URL").ok().filter(|u| !u.is_empty()) {
                Some(url) => lobby_models::Source::BaseUrl(url),
                None => lobby_models::Source::Mirror(
                    std::env::var_os("LOBBY_MODEL_MIRROR")
                        .map(PathBuf::from)
                        .unwrap_or_else(|| root.join("../shared/models")),
                ),
            };
            lobby_models::ensure(&dir, &source).map_err(|e| e.to_string())
        });
        match r {
            Ok(p) => Some(p.detector.clone()),
            Err(e) => missing(&format!("models unavailable: {e}")),
        }
    }

    /// Resident memory of this process in kB (Linux), for the log.
    fn rss_kb() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Every canvas the passes of [`Detector::detect`] compute (with its own arithmetic) for photos
    /// of many sizes, each at every aspect ratio from 1:1 to its long side : 1, both ways round.
    fn canvases_of_photos(cfg: &DetectorConfig) -> BTreeSet<(usize, usize)> {
        let mut seen = BTreeSet::new();
        let longs = [
            1, 2, 3, 31, 32, 33, 100, 319, 320, 321, 479, 480, 481, 500, 639, 640, 641, 1000, 1280, 1920, 4000, 7360,
            39_999_999,
        ];
        for long in longs {
            let shorts: Vec<u32> = if long <= 2000 {
                (1..=long).collect()
            } else {
                (1..=2000)
                    .chain((2000..=long).step_by((long as usize / 1000).max(1)))
                    .collect()
            };
            for short in shorts {
                for (w, h) in [(long, short), (short, long)] {
                    let l = long as f32;
                    let mut add = |scale: f32, border: f32| {
                        let g = pass_geometry(w, h, scale, border);
                        seen.insert((g.cw, g.ch));
                    };
                    add(first_pass_scale(cfg, l), 0.0);
                    if first_pass_scale(cfg, l) < full_pass_scale(l) {
                        add(full_pass_scale(l), 0.0);
                    }
                    let (scale, border) = border_pass(l);
                    add(scale, border);
                }
            }
        }
        seen
    }

    #[test]
    fn reachable_canvases_are_exactly_those_the_passes_compute() {
        for first in [
            32.0, 100.0, 320.0, 480.0, 500.0, 608.0, 620.0, 640.0, 1000.0, 512.5, 0.0,
        ] {
            let cfg = DetectorConfig {
                first_pass_long_side: first,
                ..DetectorConfig::default()
            };
            let reachable: BTreeSet<_> = reachable_canvases(&cfg).into_iter().collect();
            let seen = canvases_of_photos(&cfg);
            let extra: Vec<_> = seen.difference(&reachable).collect();
            assert!(extra.is_empty(), "first pass {first}: canvases not counted: {extra:?}");
            if first.fract() == 0.0 {
                let unseen: Vec<_> = reachable.difference(&seen).collect();
                assert!(
                    unseen.is_empty(),
                    "first pass {first}: canvases never reached: {unseen:?}"
                );
                assert!(
                    reachable.len() <= 76,
                    "first pass {first}: {} canvases",
                    reachable.len()
                );
            }
        }
        let cfg = DetectorConfig::default();
        let reachable = reachable_canvases(&cfg);
        assert_eq!(reachable.len(), 68);
        let kiosk = (640.0 * first_pass_scale(&cfg, 640.0)).round() as usize;
        assert!(reachable.contains(&(kiosk.div_ceil(32) * 32, 384)));
        assert!(reachable.contains(&(640, 480)), "kiosk_plans' full-pass canvas");
    }

    /// The reachable canvases in an order that swings between aspect ratios: the widest, the
    /// tallest, the next widest, the next tallest, ...
    fn cycling_order(all: &[(usize, usize)]) -> Vec<(usize, usize)> {
        let mut by_ratio = all.to_vec();
        by_ratio.sort_by(|a, b| (a.0 * b.1).cmp(&(b.0 * a.1)));
        let (mut lo, mut hi) = (0, by_ratio.len());
        let mut out = Vec::with_capacity(by_ratio.len());
        while lo < hi {
            hi -= 1;
            out.push(by_ratio[hi]);
            if lo < hi {
                out.push(by_ratio[lo]);
                lo += 1;
            }
        }
        out
    }

    #[test]
    fn cycling_every_reachable_canvas_builds_each_plan_once() {
        let Some(model) = detector_model() else {
            return;
        };
        let cfg = DetectorConfig::default();
        let d = Detector::load(&model, cfg, true).expect("detector loads");
        let all = reachable_canvases(&cfg);
        assert_eq!(d.plan_capacity(), all.len());
        assert_eq!(
            (d.plans_built(), d.cached_plans()),
            (1, 1),
            "the kiosk canvas is planned at load"
        );
        let order = cycling_order(&all);
        assert_eq!(order.len(), all.len());

        // First round: every size planned once, on as many threads as there are cores (different
        // sizes build in parallel).
        let (t, rss) = (Instant::now(), rss_kb());
        let next = AtomicUsize::new(0);
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    while let Some(&(w, h)) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
                        d.plan_for(w, h).expect("plan");
                    }
                });
            }
        });
        let first_round = t.elapsed();
        assert_eq!(d.plans_built(), all.len(), "each reachable size planned once");
        assert_eq!(d.cached_plans(), all.len(), "all of them kept");
        let mut kept = d.plans.keys_lru_first();
        kept.sort();
        assert_eq!(kept, all);
        let grown = rss.zip(rss_kb()).map(|(a, b)| b.saturating_sub(a));
        eprintln!(
            "planned {} canvases in {:.1} s on {threads} threads; RSS +{grown:?} kB (other tests run \
             beside this one)",
            all.len() - 1,
            first_round.as_secs_f64()
        );

        // Then cycle through every aspect ratio twice more, both ways: nothing is rebuilt.
        let t = Instant::now();
        for (w, h) in order.iter().chain(order.iter().rev()) {
            d.plan_for(*w, *h).expect("plan");
        }
        assert_eq!(d.plans_built(), all.len(), "no plan rebuilt while cycling");
        assert!(t.elapsed().as_secs_f64() < 1.0, "cached plans are served at once");

        // Black photos of extreme and ordinary aspect ratios go through every pass (nothing is
        // found) and plan nothing new.
        for (w, h) in [
            (1, 1),
            (4000, 1),
            (1, 4000),
            (2000, 37),
            (37, 2000),
            (640, 480),
            (480, 640),
            (333, 331),
        ] {
            let faces = d.detect(&RgbImage::new(w, h)).expect("detect");
            assert!(faces.is_empty(), "{w}x{h}: {faces:?}");
        }
        assert_eq!(d.plans_built(), all.len(), "detect reached only reachable canvases");
    }

    #[test]
    fn requests_for_one_new_canvas_at_once_build_its_plan_once() {
        let Some(model) = detector_model() else {
            return;
        };
        let d = Detector::load(&model, DetectorConfig::default(), true).expect("detector loads");
        let before = d.plans_built();
        let n = 8;
        let barrier = Barrier::new(n);
        let plans: Vec<Plan> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..n)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        d.plan_for(640, 96).expect("plan")
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        assert_eq!(d.plans_built(), before + 1, "{n} requests at once, one build");
        assert!(
            plans.iter().all(|p| Arc::ptr_eq(p, &plans[0])),
            "everyone got that plan"
        );
        assert_eq!(d.cached_plans(), 2);
    }

    #[test]
    fn the_least_recently_used_plan_is_evicted() {
        let Some(model) = detector_model() else {
            return;
        };
        let d = Detector::load_with_capacity(&model, DetectorConfig::default(), true, 3).expect("detector loads");
        let kiosk = d.kiosk_canvas();
        let (a, b, c) = ((32, 480), (480, 32), (640, 32));
        let plan = |(w, h): (usize, usize)| d.plan_for(w, h).expect("plan");
        plan(a);
        plan(b);
        assert_eq!(d.plans.keys_lru_first(), [kiosk, a, b]);
        plan(kiosk);
        assert_eq!(d.plans_built(), 3, "the kiosk canvas was served from the cache");
        assert_eq!(d.plans.keys_lru_first(), [a, b, kiosk]);
        plan(c);
        assert_eq!(
            d.plans.keys_lru_first(),
            [b, kiosk, c],
            "a, the least recently used, evicted"
        );
        assert_eq!(d.plans_built(), 4);
        plan(a);
        assert_eq!(d.plans_built(), 5, "a evicted, so planned again");
        assert_eq!(d.plans.keys_lru_first(), [kiosk, c, a]);
        assert_eq!((d.cached_plans(), d.plan_capacity()), (3, 3));
    }
}
