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

use super::embed::{align_to, Embedding, ALIGNED_SIZE};
use super::geometry::Point;
use super::runtime::{self, Plan};
use super::VisionError;
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

/// What the second stage reads of a face: the ArcFace-aligned 112x112 crop and dlib's chip. Made at
/// analysis time for unmasked faces (cheap warps) and kept only in memory while a check-in lasts.
#[derive(Debug, Clone)]
pub struct SecondInput {
    pub aligned: RgbImage,
    pub chip: RgbImage,
}

impl SecondInput {
    pub fn new(img: &RgbImage, landmarks: &[Point; 5], aligned: &RgbImage) -> Result<SecondInput, VisionError> {
        Ok(SecondInput {
            aligned: aligned.clone(),
            chip: align_to(img, landmarks, &DLIB_TEMPLATE, DLIB_CHIP)?,
        })
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
    pub fn load(teacher: &Path, dlib: &Path) -> Result<SecondStage, VisionError> {
        let side = ALIGNED_SIZE as usize;
        let chip = DLIB_CHIP as usize;
        Ok(SecondStage {
            teacher: runtime::load_fixed(teacher, &[1, 3, side, side])?,
            dlib: runtime::load_fixed(dlib, &[1, 3, chip, chip])?,
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
            Some(self.views(&input.chip, Model::Dlib, flip[1])?)
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
        let d = self.views(&input.chip, Model::Dlib, true)?;
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
    fn planes_are_channel_major() {
        let img = RgbImage::from_fn(2, 1, |x, _| image::Rgb([x as u8, 10, 20]));
        assert_eq!(planes(&img, |v| v), vec![0.0, 1.0, 10.0, 10.0, 20.0, 20.0]);
    }
}
