//! Passive liveness: MiniFASNetV2 (crop x2.7) and MiniFASNetV1SE (crop x4.0); class 1 of each
//! softmax is "real", and the fused p(real) is the geometric mean of the two models' (both must
//! agree: on development data it separated attacks from real photos better than Minivision's mean,
//! bench/RESULTS.md "Liveness").

use super::detect::{crop_resize, resize_rgb, Face};
use super::geometry::BBox;
use super::runtime::{self, Plan};
use super::VisionError;
use fast_image_resize::{FilterType, ResizeAlg};
use image::RgbImage;
use std::path::Path;

const SIDE: u32 = 80;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LivenessScore {
    /// Fused probability that the face is a live person (geometric mean of the two models' p(real)).
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
    pub fn load(v2: &Path, v1se: &Path, fast_ops: bool) -> Result<Liveness, VisionError> {
        let shape = [1, 3, SIDE as usize, SIDE as usize];
        Ok(Liveness {
            v2: runtime::load_fixed(v2, &shape, fast_ops)?,
            v1se: runtime::load_fixed(v1se, &shape, fast_ops)?,
        })
    }

    pub(super) fn plans(&self) -> [&Plan; 2] {
        [&self.v2, &self.v1se]
    }

    /// Scores the face. When the face is larger than `max_face_px` (0: no limit), the photo is first
    /// scaled down with an antialiasing filter so the face is that size: the models were trained on
    /// crops of video frames, and the plain bilinear shrink of a crop from a high-resolution photo
    /// to 80x80 aliases into texture that looks like a print's.
    pub fn score(&self, img: &RgbImage, face: &Face, max_face_px: f32) -> Result<LivenessScore, VisionError> {
        let size = face.size();
        let scaled;
        let (img, bbox) = if max_face_px > 0.0 && size > max_face_px {
            let k = max_face_px / size;
            let (w, h) = (
                ((img.width() as f32 * k).round() as u32).max(1),
                ((img.height() as f32 * k).round() as u32).max(1),
            );
            scaled = resize_rgb(img, w, h, ResizeAlg::Convolution(FilterType::Bilinear))?;
            let b = face.bbox;
            let (kx, ky) = (w as f32 / img.width() as f32, h as f32 / img.height() as f32);
            (
                &scaled,
                BBox {
                    x: b.x * kx,
                    y: b.y * ky,
                    w: b.w * kx,
                    h: b.h * ky,
                },
            )
        } else {
            (img, face.bbox)
        };
        let a = self.run_one(&self.v2, img, &bbox, 2.7)?;
        let b = self.run_one(&self.v1se, img, &bbox, 4.0)?;
        Ok(LivenessScore {
            p_real: (a[1] * b[1]).max(0.0).sqrt(),
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
///
/// Only the part of the face box inside the photo counts. A box hanging off the photo (a tight crop,
/// a face cut by the frame's edge) would otherwise cap the scale below 1, so both crops would zoom
/// in past the face's own edges and lose the cues at a print's border: on NUAA's tight crops that
/// let 9 of 48 print attacks pass instead of 1 (bench/RESULTS.md, "Liveness").
pub fn crop_box(width: u32, height: u32, b: &BBox, scale: f32) -> BBox {
    let (wf, hf) = (width as f32, height as f32);
    let inside;
    let b = if b.x < 0.0 || b.y < 0.0 || b.x + b.w > wf || b.y + b.h > hf {
        let (x0, y0) = (b.x.max(0.0), b.y.max(0.0));
        let (x1, y1) = ((b.x + b.w).min(wf), (b.y + b.h).min(hf));
        inside = BBox {
            x: x0,
            y: y0,
            w: (x1 - x0).max(1.0),
            h: (y1 - y0).max(1.0),
        };
        &inside
    } else {
        b
    };
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
    fn a_box_hanging_off_the_photo_is_clipped_before_scaling() {
        // A tight crop: the detector's box sticks out above the photo. Scaled from the clipped box
        // (121 x 130 inside), the crop keeps the face's whole width instead of zooming in (~99 px).
        let b = BBox {
            x: 10.0,
            y: -30.0,
            w: 120.0,
            h: 160.0,
        };
        let c = crop_box(131, 131, &b, 2.7);
        assert_eq!((c.x, c.y, c.w, c.h), (10.0, 0.0, 121.0, 131.0), "{c:?}");
    }

    #[test]
    fn softmax_sums_to_one() {
        let p = softmax3([1.0, 3.0, -2.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[1] > p[0] && p[0] > p[2]);
    }
}
