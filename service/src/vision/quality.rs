//! Quality measures of a detected face, from its landmarks, its box and its aligned crop.

use super::detect::Face;
use super::embed::{alignment_transform, ALIGNED_SIZE};
use super::geometry::Point;
use image::RgbImage;

/// Faces whose size is at least this fraction of the largest face's count as "comparable": the
/// guest is the most central of them.
pub const COMPARABLE_SIZE_RATIO: f32 = 0.6;

/// A second face of comparable size whose centre lies in this central fraction of the photo's width
/// and height means "one person at a time": someone next to the guest in front of the kiosk. A face
/// further out (a companion at the frame's edge, a passer-by) or smaller (behind the guest) does
/// not: on LFW the rule that counted every comparable face anywhere sent 8.7 % of genuine photos
/// back without protecting matching at all (bench/RESULTS-log.md, "Capture checks").
pub const CENTRAL_REGION: f32 = 0.5;

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Quality {
    /// Shorter side of the face box, in photo pixels.
    pub face_size_px: f32,
    /// Variance of the Laplacian over the inner aligned face (higher is sharper).
    pub sharpness: f32,
    /// Mean luma of the inner aligned face, 0-255.
    pub brightness: f32,
    /// Head pose estimated from the landmarks, in degrees (approximate: a 2-D model).
    pub yaw_deg: f32,
    pub pitch_deg: f32,
    pub roll_deg: f32,
    /// Fraction of the aligned face square outside the photo (face cut by the border).
    pub out_of_frame: f32,
    /// Faces of comparable size to this one near the photo's centre, this one included
    /// ([`comparable_faces`]).
    pub comparable_faces: u32,
}

/// Head pose from the 5 landmarks (right eye, left eye, nose, right mouth, left mouth; image order).
/// Roll: angle of the eye line. Yaw: the nose's offset from the eye/mouth midline along the eye axis,
/// relative to half the eye distance. Pitch: where the nose sits between the eye line and the mouth
/// line, against the frontal ArcFace template (0.494 of the way down).
pub fn head_pose(l: &[Point; 5]) -> (f32, f32, f32) {
    let (re, le, nose, rm, lm) = (l[0], l[1], l[2], l[3], l[4]);
    let (ex, ey) = (le.x - re.x, le.y - re.y);
    let iod = (ex * ex + ey * ey).sqrt().max(1e-3);
    let roll = ey.atan2(ex).to_degrees();
    let (ux, uy) = (ex / iod, ey / iod); // eye axis
    let (vx, vy) = (-uy, ux); // face down axis
    let eye_mid = re.mid(le);
    let mouth_mid = rm.mid(lm);
    let mid = eye_mid.mid(mouth_mid);
    let along = (nose.x - mid.x) * ux + (nose.y - mid.y) * uy;
    let yaw = (along / (0.5 * iod)).clamp(-1.0, 1.0).asin().to_degrees();
    let down_nose = (nose.x - eye_mid.x) * vx + (nose.y - eye_mid.y) * vy;
    let down_mouth = ((mouth_mid.x - eye_mid.x) * vx + (mouth_mid.y - eye_mid.y) * vy).max(1e-3);
    let t = down_nose / down_mouth;
    let pitch = ((0.494 - t) * 2.0).clamp(-1.0, 1.0).asin().to_degrees();
    (yaw, pitch, roll)
}

/// Variance of the Laplacian and mean luma over the central 64x64 of an aligned 112x112 face
/// (the border holds background and, for faces near the photo's edge, black fill).
pub fn sharpness_brightness(aligned: &RgbImage) -> (f32, f32) {
    let (w, h) = (aligned.width() as usize, aligned.height() as usize);
    let luma: Vec<f32> = aligned
        .pixels()
        .map(|p| 0.299 * p.0[0] as f32 + 0.587 * p.0[1] as f32 + 0.114 * p.0[2] as f32)
        .collect();
    let (x0, x1, y0, y1) = (w / 2 - 32, w / 2 + 32, h / 2 - 28, h / 2 + 36);
    let (mut sum, mut n) = (0f64, 0f64);
    let mut laps = Vec::with_capacity(64 * 64);
    for y in y0..y1 {
        for x in x0..x1 {
            let c = luma[y * w + x];
            sum += c as f64;
            n += 1.0;
            let lap =
                luma[(y - 1) * w + x] + luma[(y + 1) * w + x] + luma[y * w + x - 1] + luma[y * w + x + 1] - 4.0 * c;
            laps.push(lap as f64);
        }
    }
    let mean_lap = laps.iter().sum::<f64>() / laps.len() as f64;
    let var = laps.iter().map(|v| (v - mean_lap).powi(2)).sum::<f64>() / laps.len() as f64;
    (var as f32, (sum / n) as f32)
}

/// Quality of `faces[index]` in a `width` x `height` photo, given its aligned crop.
pub fn measure(faces: &[Face], index: usize, width: u32, height: u32, aligned: &RgbImage) -> Quality {
    let face = &faces[index];
    let (yaw, pitch, roll) = head_pose(&face.landmarks);
    let (sharpness, brightness) = sharpness_brightness(aligned);
    Quality {
        face_size_px: face.size(),
        sharpness,
        brightness,
        yaw_deg: yaw,
        pitch_deg: pitch,
        roll_deg: roll,
        out_of_frame: aligned_square_outside(&face.landmarks, width, height),
        comparable_faces: comparable_faces(faces, index, width, height),
    }
}

/// Fraction of the aligned face square (the 112x112 template region, mapped back into the photo)
/// that lies outside the photo. The detector's box stops at the border, so the box alone cannot
/// tell a face cut by the border from one that touches it; the landmarks can.
pub fn aligned_square_outside(landmarks: &[Point; 5], width: u32, height: u32) -> f32 {
    let Some(inv) = alignment_transform(landmarks).ok().and_then(|m| m.inverse()) else {
        return 1.0;
    };
    const N: usize = 16;
    let step = ALIGNED_SIZE as f32 / N as f32;
    let mut outside = 0;
    for i in 0..N {
        for j in 0..N {
            let p = inv.apply(Point::new((i as f32 + 0.5) * step, (j as f32 + 0.5) * step));
            if p.x < 0.0 || p.y < 0.0 || p.x >= width as f32 || p.y >= height as f32 {
                outside += 1;
            }
        }
    }
    outside as f32 / (N * N) as f32
}

/// The guest (`faces[guest]`) and every other face at least [`COMPARABLE_SIZE_RATIO`] times the
/// guest's size whose centre lies in the photo's [`CENTRAL_REGION`].
pub fn comparable_faces(faces: &[Face], guest: usize, width: u32, height: u32) -> u32 {
    let Some(me) = faces.get(guest) else { return 0 };
    let (w, h) = (width as f32, height as f32);
    let (mx, my) = ((1.0 - CENTRAL_REGION) / 2.0 * w, (1.0 - CENTRAL_REGION) / 2.0 * h);
    let others = faces
        .iter()
        .enumerate()
        .filter(|(i, f)| {
            let c = f.bbox.center();
            *i != guest
                && f.size() >= COMPARABLE_SIZE_RATIO * me.size()
                && (mx..=w - mx).contains(&c.x)
                && (my..=h - my).contains(&c.y)
        })
        .count();
    1 + others as u32
}

/// The guest's face: among the faces of comparable size to the largest, the one nearest the centre.
pub fn primary_face(faces: &[Face], width: u32, height: u32) -> Option<usize> {
    let largest = faces.iter().map(Face::size).fold(0.0, f32::max);
    let centre = Point::new(width as f32 / 2.0, height as f32 / 2.0);
    faces
        .iter()
        .enumerate()
        .filter(|(_, f)| f.size() >= COMPARABLE_SIZE_RATIO * largest)
        .min_by(|(_, a), (_, b)| a.bbox.center().dist(centre).total_cmp(&b.bbox.center().dist(centre)))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vision::embed::ARCFACE_TEMPLATE;
    use crate::vision::geometry::BBox;

    #[test]
    fn the_frontal_template_has_no_pose() {
        let (y, p, r) = head_pose(&ARCFACE_TEMPLATE);
        assert!(y.abs() < 2.0 && p.abs() < 2.0 && r.abs() < 1.0, "{y} {p} {r}");
    }

    #[test]
    fn nose_to_the_side_is_yaw_and_tilted_eyes_are_roll() {
        let mut l = ARCFACE_TEMPLATE;
        l[2].x += 12.0;
        assert!(head_pose(&l).0 > 30.0);
        let a = 30f32.to_radians();
        let rot = ARCFACE_TEMPLATE.map(|p| Point::new(p.x * a.cos() - p.y * a.sin(), p.x * a.sin() + p.y * a.cos()));
        let (y, p, r) = head_pose(&rot);
        assert!((r - 30.0).abs() < 1.0 && y.abs() < 2.0 && p.abs() < 2.0);
    }

    #[test]
    fn primary_is_the_central_one_among_comparable_faces() {
        let f = |x: f32, s: f32| Face {
            bbox: BBox {
                x,
                y: 100.0,
                w: s,
                h: s,
            },
            landmarks: ARCFACE_TEMPLATE,
            score: 0.9,
        };
        let faces = vec![f(10.0, 100.0), f(300.0, 90.0), f(600.0, 20.0)];
        assert_eq!(primary_face(&faces, 700, 400), Some(1));
        // The face at the left edge is comparable but not near the centre; the small one is neither.
        assert_eq!(comparable_faces(&faces, 1, 700, 400), 1);
        let beside = vec![f(300.0, 90.0), f(390.0, 80.0), f(330.0, 30.0)];
        assert_eq!(comparable_faces(&beside, 0, 700, 400), 2);
        assert_eq!(primary_face(&[], 10, 10), None);
    }
}
