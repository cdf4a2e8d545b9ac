//! Passive liveness: MiniFASNetV2 (crop x2.7) and MiniFASNetV1SE (crop x4.0), softmax outputs fused
//! by summing, as Minivision's `test.py` does. Class 1 is "real".

use super::detect::{crop_resize, Face};
use super::geometry::BBox;
use super::runtime::{self, Plan};
use super::VisionError;
use fast_image_resize::{FilterType, ResizeAlg};
use image::RgbImage;
use std::path::Path;

const SIDE: u32 = 80;

/// Default decision threshold on the fused p(real). Not tuned on the test photos: the plain
/// midpoint of the models' probability scale.
pub const DEFAULT_THRESHOLD: f32 = 0.5;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LivenessScore {
    /// Fused probability that the face is a live person (mean of the two models' p(real)).
    pub p_real: f32,
    /// Each model's p(real): MiniFASNetV2 at x2.7, MiniFASNetV1SE at x4.0.
    pub p_real_v2: f32,
    pub p_real_v1se: f32,
}

pub struct Liveness {
    v2: Plan,
    v1se: Plan,
}

impl Liveness {
    pub fn load(v2: &Path, v1se: &Path) -> Result<Liveness, VisionError> {
        let shape = [1, 3, SIDE as usize, SIDE as usize];
        Ok(Liveness {
            v2: runtime::load_fixed(v2, &shape)?,
            v1se: runtime::load_fixed(v1se, &shape)?,
        })
    }

    pub(super) fn plans(&self) -> [&Plan; 2] {
        [&self.v2, &self.v1se]
    }

    pub fn score(&self, img: &RgbImage, face: &Face) -> Result<LivenessScore, VisionError> {
        let a = self.run_one(&self.v2, img, &face.bbox, 2.7)?;
        let b = self.run_one(&self.v1se, img, &face.bbox, 4.0)?;
        Ok(LivenessScore {
            p_real: (a[1] + b[1]) / 2.0,
            p_real_v2: a[1],
            p_real_v1se: b[1],
        })
    }

    fn run_one(&self, plan: &Plan, img: &RgbImage, bbox: &BBox, scale: f32) -> Result<[f32; 3], VisionError> {
        let crop = crop_box(img.width(), img.height(), bbox, scale);
        let patch = crop_resize(img, crop, SIDE, SIDE, ResizeAlg::Interpolation(FilterType::Bilinear))?;
        let plane = (SIDE * SIDE) as usize;
        let mut input = vec![0f32; 3 * plane];
        for (i, px) in patch.pixels().enumerate() {
            // BGR, raw 0-255.
            input[i] = px.0[2] as f32;
            input[plane + i] = px.0[1] as f32;
            input[2 * plane + i] = px.0[0] as f32;
        }
        let out = runtime::run(plan, &[1, 3, SIDE as usize, SIDE as usize], input)?;
        let logits = out
            .first()
            .filter(|l| l.len() == 3)
            .ok_or_else(|| VisionError::Inference("liveness output is not 3 logits".into()))?;
        Ok(softmax3([logits[0], logits[1], logits[2]]))
    }
}

fn softmax3(l: [f32; 3]) -> [f32; 3] {
    let m = l[0].max(l[1]).max(l[2]);
    let e = l.map(|v| (v - m).exp());
    let s: f32 = e.iter().sum();
    e.map(|v| v / s)
}

/// Minivision's `CropImage._get_new_box`: the face box enlarged by `scale` (less if the photo is too
/// small) around its centre, shifted (not clipped) to stay inside the photo; integer corners.
pub fn crop_box(width: u32, height: u32, b: &BBox, scale: f32) -> BBox {
    let (wf, hf) = (width as f32, height as f32);
    let (bw, bh) = (b.w.max(1.0), b.h.max(1.0));
    let s = scale.min((hf - 1.0) / bh).min((wf - 1.0) / bw).max(0.0);
    let (nw, nh) = (bw * s, bh * s);
    let (cx, cy) = (b.x + bw / 2.0, b.y + bh / 2.0);
    let (mut lx, mut ly, mut rx, mut ry) = (cx - nw / 2.0, cy - nh / 2.0, cx + nw / 2.0, cy + nh / 2.0);
    if lx < 0.0 {
        rx -= lx;
        lx = 0.0;
    }
    if ly < 0.0 {
        ry -= ly;
        ly = 0.0;
    }
    if rx > wf - 1.0 {
        lx -= rx - wf + 1.0;
        rx = wf - 1.0;
    }
    if ry > hf - 1.0 {
        ly -= ry - hf + 1.0;
        ry = hf - 1.0;
    }
    let (l, t) = (lx.max(0.0).floor(), ly.max(0.0).floor());
    let (r, btm) = ((rx.floor() + 1.0).min(wf), (ry.floor() + 1.0).min(hf));
    BBox {
        x: l,
        y: t,
        w: (r - l).max(1.0),
        h: (btm - t).max(1.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_stays_inside_and_is_shifted_not_clipped() {
        let b = BBox {
            x: 5.0,
            y: 5.0,
            w: 40.0,
            h: 40.0,
        };
        let c = crop_box(200, 200, &b, 2.7);
        assert_eq!((c.x, c.y), (0.0, 0.0));
        assert!((c.w - 109.0).abs() <= 1.0 && (c.h - 109.0).abs() <= 1.0, "{c:?}");
        // A box too large for the scale uses the largest scale that fits.
        let c = crop_box(
            100,
            100,
            &BBox {
                x: 10.0,
                y: 10.0,
                w: 80.0,
                h: 80.0,
            },
            4.0,
        );
        assert!(
            c.x >= 0.0 && c.y >= 0.0 && c.x + c.w <= 100.0 && c.y + c.h <= 100.0,
            "{c:?}"
        );
    }

    #[test]
    fn softmax_sums_to_one() {
        let p = softmax3([1.0, 3.0, -2.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[1] > p[0] && p[0] > p[2]);
    }
}
