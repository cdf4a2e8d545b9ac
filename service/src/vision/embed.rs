//! Alignment to the ArcFace 112x112 template and the 192-d MobileFaceNet embedding.

use super::detect::crop_resize;
use super::geometry::{umeyama, warp_affine, Affine, BBox, Point};
use super::runtime::{self, Plan};
use super::VisionError;
use fast_image_resize::{FilterType, ResizeAlg};
use image::RgbImage;
use std::path::Path;

pub const ALIGNED_SIZE: u32 = 112;
pub const EMBEDDING_DIM: usize = 192;

/// ArcFace 112x112 template, in YuNet's landmark order (right eye, left eye, nose, right mouth
/// corner, left mouth corner), as OpenCV's `FaceRecognizerSF::alignCrop` uses.
pub const ARCFACE_TEMPLATE: [Point; 5] = [
    Point::new(38.2946, 51.6963),
    Point::new(73.5318, 51.5014),
    Point::new(56.0252, 71.7366),
    Point::new(41.5493, 92.3655),
    Point::new(70.7299, 92.2041),
];

/// The similarity transform from the photo to the 112x112 template.
pub fn alignment_transform(landmarks: &[Point; 5]) -> Result<Affine, VisionError> {
    umeyama(landmarks, &ARCFACE_TEMPLATE).ok_or(VisionError::DegenerateLandmarks)
}

/// Aligns a face: 5-point similarity transform to the template, bilinear warp, black border.
pub fn align(img: &RgbImage, landmarks: &[Point; 5]) -> Result<RgbImage, VisionError> {
    align_to(img, landmarks, &ARCFACE_TEMPLATE, ALIGNED_SIZE)
}

/// Aligns a face to any 5-point `template` of a `size` x `size` crop (similarity transform,
/// bilinear warp, black border).
///
/// When the face is much larger than the crop, the face region is first shrunk with an antialiasing
/// filter so the warp does not alias (a plain bilinear warp samples only 4 of every many pixels).
pub fn align_to(
    img: &RgbImage,
    landmarks: &[Point; 5],
    template: &[Point; 5],
    size: u32,
) -> Result<RgbImage, VisionError> {
    let m = umeyama(landmarks, template).ok_or(VisionError::DegenerateLandmarks)?;
    let scale = m.scale();
    if scale >= 0.5 {
        return warp_affine(img, &m, size, size).ok_or(VisionError::DegenerateLandmarks);
    }
    // Source region that the output square comes from, clipped to the photo.
    let inv = m.inverse().ok_or(VisionError::DegenerateLandmarks)?;
    let s = size as f32;
    let corners = [
        Point::new(0.0, 0.0),
        Point::new(s, 0.0),
        Point::new(0.0, s),
        Point::new(s, s),
    ]
    .map(|p| inv.apply(p));
    // A margin of a few output pixels, so bilinear taps at the square's edge stay inside the region.
    let margin = (3.0 / scale) as f32;
    let min_of = |f: fn(&Point) -> f32| corners.iter().map(f).fold(f32::INFINITY, f32::min) - margin;
    let max_of = |f: fn(&Point) -> f32| corners.iter().map(f).fold(f32::NEG_INFINITY, f32::max) + margin;
    let x0 = min_of(|p| p.x).floor().max(0.0);
    let y0 = min_of(|p| p.y).floor().max(0.0);
    let x1 = max_of(|p| p.x).ceil().min(img.width() as f32);
    let y1 = max_of(|p| p.y).ceil().min(img.height() as f32);
    if x1 - x0 < 2.0 || y1 - y0 < 2.0 {
        return warp_affine(img, &m, size, size).ok_or(VisionError::DegenerateLandmarks);
    }
    let region = BBox {
        x: x0,
        y: y0,
        w: x1 - x0,
        h: y1 - y0,
    };
    let nw = ((region.w as f64 * scale).round() as u32).max(2);
    let nh = ((region.h as f64 * scale).round() as u32).max(2);
    let small = crop_resize(img, region, nw, nh, ResizeAlg::Convolution(FilterType::Bilinear))?;
    // Small-image pixel p' is photo pixel origin + (p' + 0.5) * step - 0.5 (pixel centres).
    let (sx, sy) = (region.w as f64 / nw as f64, region.h as f64 / nh as f64);
    let (ox, oy) = (x0 as f64 + 0.5 * sx - 0.5, y0 as f64 + 0.5 * sy - 0.5);
    let [a, b, c, d, e, f] = m.m;
    let composed = Affine {
        m: [a * sx, b * sy, a * ox + b * oy + c, d * sx, e * sy, d * ox + e * oy + f],
    };
    warp_affine(&small, &composed, size, size).ok_or(VisionError::DegenerateLandmarks)
}

/// An L2-normalised face embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding(pub Vec<f32>);

impl Embedding {
    /// `v / |v|`; `None` for a zero or non-finite vector.
    pub fn normalised(v: Vec<f32>) -> Option<Embedding> {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        (norm.is_finite() && norm > 0.0).then(|| Embedding(v.into_iter().map(|x| x / norm).collect()))
    }

    pub fn cosine(&self, other: &Embedding) -> f32 {
        self.0.iter().zip(other.0.iter()).map(|(a, b)| a * b).sum()
    }
}

pub struct Embedder {
    plan: Plan,
}

/// The graph nodes the embedder is run to: the embedding, and the last 512 x 7 x 7 feature map
/// (before the global depthwise pooling), which the mask detector reads.
pub const OUTPUT_NODES: [&str; 2] = ["embedding", "MobileFaceNet/MobileFaceNet/Conv2d_7/add"];

impl Embedder {
    pub fn load(path: &Path, fast_ops: bool) -> Result<Embedder, VisionError> {
        let shape = [1, 3, ALIGNED_SIZE as usize, ALIGNED_SIZE as usize];
        let plan = runtime::load_fixed_with_outputs(path, &shape, &OUTPUT_NODES, fast_ops)?;
        Ok(Embedder { plan })
    }

    pub(super) fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Embeds an aligned 112x112 RGB face: input RGB, (x - 127.5) / 128, NCHW; output L2-normalised.
    pub fn embed(&self, aligned: &RgbImage) -> Result<Embedding, VisionError> {
        Ok(self.embed_with_features(aligned)?.0)
    }

    /// The embedding, and the feature map the mask detector reads (`OUTPUT_NODES[1]`, 512 x 7 x 7),
    /// from one inference.
    pub fn embed_with_features(&self, aligned: &RgbImage) -> Result<(Embedding, Vec<f32>), VisionError> {
        if aligned.width() != ALIGNED_SIZE || aligned.height() != ALIGNED_SIZE {
            return Err(VisionError::Inference(format!(
                "embedder needs {ALIGNED_SIZE}x{ALIGNED_SIZE}"
            )));
        }
        let plane = (ALIGNED_SIZE * ALIGNED_SIZE) as usize;
        let mut input = vec![0f32; 3 * plane];
        for (i, px) in aligned.pixels().enumerate() {
            for c in 0..3 {
                input[c * plane + i] = (px.0[c] as f32 - 127.5) / 128.0;
            }
        }
        let mut out =
            runtime::run(&self.plan, &[1, 3, ALIGNED_SIZE as usize, ALIGNED_SIZE as usize], input)?.into_iter();
        let v = out
            .next()
            .ok_or_else(|| VisionError::Inference("embedder gave no output".into()))?;
        let features = out.next().unwrap_or_default();
        if v.len() != EMBEDDING_DIM {
            return Err(VisionError::Inference(format!(
                "embedding has {} values, expected {EMBEDDING_DIM}",
                v.len()
            )));
        }
        let e = Embedding::normalised(v).ok_or_else(|| VisionError::Inference("embedding has zero norm".into()))?;
        Ok((e, features))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligning_the_template_itself_is_the_identity() {
        let m = alignment_transform(&ARCFACE_TEMPLATE).unwrap();
        for p in ARCFACE_TEMPLATE {
            assert!(m.apply(p).dist(p) < 1e-3);
        }
    }

    #[test]
    fn landmarks_of_a_scaled_rotated_face_land_on_the_template() {
        // Place the template in a photo at 5x scale, rotated 20 degrees, shifted.
        let (s, a) = (5.0f64, 20f64.to_radians());
        let place = Affine {
            m: [s * a.cos(), -s * a.sin(), 900.0, s * a.sin(), s * a.cos(), 300.0],
        };
        let lms = ARCFACE_TEMPLATE.map(|p| place.apply(p));
        let m = alignment_transform(&lms).unwrap();
        for (p, t) in lms.iter().zip(ARCFACE_TEMPLATE.iter()) {
            assert!(m.apply(*p).dist(*t) < 1e-2);
        }
        assert!((m.scale() - 1.0 / s).abs() < 1e-6);
    }

    #[test]
    fn large_face_alignment_matches_plain_warp_on_smooth_image() {
        // On a smooth gradient, the antialiased path must agree with the plain warp.
        let img = RgbImage::from_fn(1200, 1200, |x, y| image::Rgb([(x / 5) as u8, (y / 5) as u8, 128]));
        let place = Affine {
            m: [6.0, 0.0, 200.0, 0.0, 6.0, 150.0],
        };
        let lms = ARCFACE_TEMPLATE.map(|p| place.apply(p));
        let fast = align(&img, &lms).unwrap();
        let plain = warp_affine(&img, &alignment_transform(&lms).unwrap(), 112, 112).unwrap();
        let max_diff = fast
            .as_raw()
            .iter()
            .zip(plain.as_raw())
            .map(|(a, b)| (*a as i32 - *b as i32).abs())
            .max()
            .unwrap();
        assert!(max_diff <= 3, "max diff {max_diff}");
    }
}
