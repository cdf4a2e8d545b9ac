//! The cascade's second stage: two more embedders, consulted only for an unmasked probe whose
//! first-stage (student) score is neither a clear match nor a clear non-match.
//!
//! - the teacher: the mirror's undistilled MobileFaceNet 192-d (the student was distilled from it
//!   for masks, and is a little weaker on unmasked faces), on the ArcFace-aligned face;
//! - dlib's ResNet v1 128-d, on its own 150x150 chip (dlib's 5-point template, MANIFEST.md).
//!
//! Each can be run on the face and on its mirror image, the two embeddings summed and normalised
//! (flip averaging; `cascade.flip`). The scores are combined in `crate::matching`; this module
//! only embeds.

use super::detect::crop_resize;
use super::embed::{align_to, Embedding, ALIGNED_SIZE};
use super::geometry::{umeyama, BBox, Point};
use super::runtime::{self, Plan};
use super::VisionError;
use fast_image_resize::{FilterType, ResizeAlg};
use image::RgbImage;
use std::path::Path;

/// Side of dlib's face chip.
pub const DLIB_CHIP: u32 = 150;
pub const TEACHER_DIM: usize = 192;
pub const DLIB_DIM: usize = 128;

/// dlib's chip template (`get_face_chip(size=150, padding=0.25)`) in YuNet's landmark order: right
/// eye, left eye, nose, right mouth corner, left mouth corner (MANIFEST.md: measured on 296 LFW
/// chips made by dlib itself).
pub const DLIB_TEMPLATE: [Point; 5] = [
    Point::new(47.452, 44.078),
    Point::new(101.530, 44.574),
    Point::new(74.425, 77.113),
    Point::new(50.679, 102.706),
    Point::new(97.308, 103.114),
];

/// What the second stage reads of a face: the ArcFace-aligned 112x112 crop, and the part of the
/// photo dlib's chip is warped from (with the landmarks in its coordinates), shrunk to about the
/// chip's resolution when the face is larger: at most ~160x160 px, whatever the photo's size. Kept at
/// analysis time for unmasked faces (the chip itself is warped only when the cascade asks, for about
/// one check-in in five), in memory only while a check-in lasts.
#[derive(Debug, Clone)]
pub struct SecondInput {
    pub aligned: RgbImage,
    region: RgbImage,
    landmarks: [Point; 5],
}

impl SecondInput {
    pub fn new(img: &RgbImage, landmarks: &[Point; 5], aligned: &RgbImage) -> Result<SecondInput, VisionError> {
        let m = umeyama(landmarks, &DLIB_TEMPLATE).ok_or(VisionError::DegenerateLandmarks)?;
        let inv = m.inverse().ok_or(VisionError::DegenerateLandmarks)?;
        let s = DLIB_CHIP as f32;
        let corners = [
            Point::new(0.0, 0.0),
            Point::new(s, 0.0),
            Point::new(0.0, s),
            Point::new(s, s),
        ]
        .map(|p| inv.apply(p));
        // The chip's source square, a few pixels wider (bilinear taps, the antialiasing shrink),
        // clipped to the photo: outside it the warp fills black either way.
        let margin = 4.0 / m.scale().max(1e-3) as f32;
        let lo = |f: fn(&Point) -> f32| corners.iter().map(f).fold(f32::INFINITY, f32::min) - margin;
        let hi = |f: fn(&Point) -> f32| corners.iter().map(f).fold(f32::NEG_INFINITY, f32::max) + margin;
        let x0 = lo(|p| p.x).floor().clamp(0.0, img.width() as f32) as u32;
        let y0 = lo(|p| p.y).floor().clamp(0.0, img.height() as f32) as u32;
        let x1 = (hi(|p| p.x).ceil().clamp(0.0, img.width() as f32) as u32)
            .max(x0 + 1)
            .min(img.width());
        let y1 = (hi(|p| p.y).ceil().clamp(0.0, img.height() as f32) as u32)
            .max(y0 + 1)
            .min(img.height());
        let (rw, rh) = (x1.saturating_sub(x0), y1.saturating_sub(y0));
        let shift = Point::new(x0 as f32, y0 as f32);
        let mut landmarks = landmarks.map(|p| Point::new(p.x - shift.x, p.y - shift.y));
        let scale = m.scale() as f32;
        let region = if scale < 0.5 {
            // A large face: keep the region at the chip's resolution (the warp would shrink it to
            // that anyway, through the same antialiasing filter, `embed::align_to`).
            let (nw, nh) = (
                ((rw as f32 * scale).round() as u32).max(2),
                ((rh as f32 * scale).round() as u32).max(2),
            );
            let (kx, ky) = (nw as f32 / rw.max(1) as f32, nh as f32 / rh.max(1) as f32);
            landmarks = landmarks.map(|p| Point::new((p.x + 0.5) * kx - 0.5, (p.y + 0.5) * ky - 0.5));
            crop_resize(
                img,
                BBox {
                    x: x0 as f32,
                    y: y0 as f32,
                    w: rw.max(1) as f32,
                    h: rh.max(1) as f32,
                },
                nw,
                nh,
                ResizeAlg::Convolution(FilterType::Bilinear),
            )?
        } else {
            image::imageops::crop_imm(img, x0, y0, rw, rh).to_image()
        };
        Ok(SecondInput {
            aligned: aligned.clone(),
            region,
            landmarks,
        })
    }

    /// dlib's 150x150 chip of the face.
    pub fn chip(&self) -> Result<RgbImage, VisionError> {
        align_to(&self.region, &self.landmarks, &DLIB_TEMPLATE, DLIB_CHIP)
    }
}

/// The second-stage embeddings of one face (each flip-averaged, L2-normalised).
#[derive(Debug, Clone, PartialEq)]
pub struct SecondEmbeddings {
    pub teacher: Embedding,
    /// `None` when the dlib model is not consulted (its weight in the fusion is zero).
    pub dlib: Option<Embedding>,
}

pub struct SecondStage {
    teacher: Plan,
    dlib: Plan,
}

impl SecondStage {
    pub fn load(teacher: &Path, dlib: &Path, fast_ops: bool) -> Result<SecondStage, VisionError> {
        let side = ALIGNED_SIZE as usize;
        let chip = DLIB_CHIP as usize;
        Ok(SecondStage {
            teacher: runtime::load_fixed(teacher, &[1, 3, side, side], fast_ops)?,
            dlib: runtime::load_fixed(dlib, &[1, 3, chip, chip], fast_ops)?,
        })
    }

    pub(super) fn plans(&self) -> [&Plan; 2] {
        [&self.teacher, &self.dlib]
    }

    /// Embeds a face with the teacher and, when `with_dlib`, with dlib; each model flip-averaged
    /// where `flip` says so (teacher, dlib).
    pub fn embed(
        &self,
        input: &SecondInput,
        with_dlib: bool,
        flip: [bool; 2],
    ) -> Result<SecondEmbeddings, VisionError> {
        let teacher = self.views(&input.aligned, Model::Teacher, flip[0])?;
        let dlib = if with_dlib {
            Some(self.views(&input.chip()?, Model::Dlib, flip[1])?)
        } else {
            None
        };
        Ok(SecondEmbeddings {
            teacher: averaged(&teacher)?,
            dlib: dlib.as_deref().map(averaged).transpose()?,
        })
    }

    /// Every view's embedding (the face, then its mirror image) of both models, for measuring what
    /// flip averaging buys.
    pub fn all_views(&self, input: &SecondInput) -> Result<SecondViews, VisionError> {
        let t = self.views(&input.aligned, Model::Teacher, true)?;
        let d = self.views(&input.chip()?, Model::Dlib, true)?;
        let pair = |v: Vec<Embedding>| -> Result<[Embedding; 2], VisionError> {
            v.try_into()
                .map_err(|_| VisionError::Inference("expected two views".into()))
        };
        Ok(SecondViews {
            teacher: pair(t)?,
            dlib: pair(d)?,
        })
    }

    /// The model's normalised embedding of `img`, and of its mirror image when `flip`.
    fn views(&self, img: &RgbImage, model: Model, flip: bool) -> Result<Vec<Embedding>, VisionError> {
        let mirrored;
        let mut views = vec![img];
        if flip {
            mirrored = image::imageops::flip_horizontal(img);
            views.push(&mirrored);
        }
        views
            .into_iter()
            .map(|view| {
                let (plan, side, dim) = match model {
                    Model::Teacher => (&self.teacher, ALIGNED_SIZE as usize, TEACHER_DIM),
                    Model::Dlib => (&self.dlib, DLIB_CHIP as usize, DLIB_DIM),
                };
                let input = match model {
                    Model::Teacher => planes(view, |v| (v - 127.5) / 128.0),
                    // Raw 0-255: the graph subtracts dlib's mean and scales by 1/256 itself.
                    Model::Dlib => planes(view, |v| v),
                };
                let out = runtime::run(plan, &[1, 3, side, side], input)?;
                let v = out
                    .into_iter()
                    .next()
                    .filter(|v| v.len() == dim)
                    .ok_or_else(|| VisionError::Inference(format!("second-stage embedding is not {dim} values")))?;
                Embedding::normalised(v)
                    .ok_or_else(|| VisionError::Inference("second-stage embedding has zero norm".into()))
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy)]
enum Model {
    Teacher,
    Dlib,
}

/// Each model's embedding of a face and of its mirror image (normalised).
#[derive(Debug, Clone)]
pub struct SecondViews {
    pub teacher: [Embedding; 2],
    pub dlib: [Embedding; 2],
}

impl SecondViews {
    /// The embeddings the service would use with these flip settings (teacher, dlib).
    pub fn embeddings(&self, flip: [bool; 2]) -> Result<SecondEmbeddings, VisionError> {
        let pick = |v: &[Embedding; 2], f: bool| if f { averaged(v) } else { Ok(v[0].clone()) };
        Ok(SecondEmbeddings {
            teacher: pick(&self.teacher, flip[0])?,
            dlib: Some(pick(&self.dlib, flip[1])?),
        })
    }
}

/// The normalised sum of embeddings.
fn averaged(views: &[Embedding]) -> Result<Embedding, VisionError> {
    let mut sum = vec![0f32; views.first().map_or(0, |v| v.0.len())];
    for e in views {
        sum.iter_mut().zip(&e.0).for_each(|(s, x)| *s += x);
    }
    Embedding::normalised(sum).ok_or_else(|| VisionError::Inference("second-stage embedding has zero norm".into()))
}

/// RGB planes (NCHW) of `img`, each value mapped by `f`.
fn planes(img: &RgbImage, f: impl Fn(f32) -> f32) -> Vec<f32> {
    let plane = (img.width() * img.height()) as usize;
    let mut input = vec![0f32; 3 * plane];
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            input[c * plane + i] = f(px.0[c] as f32);
        }
    }
    input
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dlib_template_is_nearly_mirror_symmetric() {
        // Flip averaging assumes the chip's mirror image is a face in the same template.
        let mid = DLIB_CHIP as f32 / 2.0;
        let (re, le) = (DLIB_TEMPLATE[0], DLIB_TEMPLATE[1]);
        assert!(((mid - re.x) - (le.x - mid)).abs() < 1.5);
        assert!((DLIB_TEMPLATE[2].x - mid).abs() < 1.0);
    }

    #[test]
    fn the_chip_from_the_kept_region_equals_the_chip_from_the_whole_photo() {
        let img = RgbImage::from_fn(640, 480, |x, y| {
            image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x * y) % 239) as u8])
        });
        // A face of ~80 px eye distance in the middle, and one cut by the photo's left edge.
        for dx in [300.0f32, 10.0] {
            let lm = DLIB_TEMPLATE.map(|p| Point::new(p.x * 1.4 + dx, p.y * 1.4 + 150.0));
            let input = SecondInput::new(&img, &lm, &RgbImage::new(112, 112)).unwrap();
            let direct = align_to(&img, &lm, &DLIB_TEMPLATE, DLIB_CHIP).unwrap();
            let kept = input.chip().unwrap();
            let diff = direct
                .as_raw()
                .iter()
                .zip(kept.as_raw())
                .map(|(a, b)| (*a as i32 - *b as i32).abs())
                .max();
            assert!(diff.unwrap() <= 1, "face at x {dx}: max diff {diff:?}");
            assert!(input.region.width() < 640, "only the chip's part of the photo is kept");
        }
    }

    #[test]
    fn a_large_face_keeps_a_small_region_and_about_the_same_chip() {
        let img = RgbImage::from_fn(3000, 2000, |x, y| {
            let v = ((x as f32 / 40.0).sin() * 60.0 + (y as f32 / 55.0).cos() * 60.0 + 128.0) as u8;
            image::Rgb([v, v / 2, 255 - v])
        });
        let lm = DLIB_TEMPLATE.map(|p| Point::new(p.x * 8.0 + 900.0, p.y * 8.0 + 500.0));
        let input = SecondInput::new(&img, &lm, &RgbImage::new(112, 112)).unwrap();
        assert!(
            input.region.width() <= 200 && input.region.height() <= 200,
            "{:?}",
            input.region.dimensions()
        );
        let direct = align_to(&img, &lm, &DLIB_TEMPLATE, DLIB_CHIP).unwrap();
        let kept = input.chip().unwrap();
        let mean_diff = direct
            .as_raw()
            .iter()
            .zip(kept.as_raw())
            .map(|(a, b)| (*a as i32 - *b as i32).abs() as f64)
            .sum::<f64>()
            / direct.as_raw().len() as f64;
        assert!(mean_diff < 2.0, "mean diff {mean_diff}");
    }

    #[test]
    fn planes_are_channel_major() {
        let img = RgbImage::from_fn(2, 1, |x, _| image::Rgb([x as u8, 10, 20]));
        assert_eq!(planes(&img, |v| v), vec![0.0, 1.0, 10.0, 10.0, 20.0, 20.0]);
    }
}
