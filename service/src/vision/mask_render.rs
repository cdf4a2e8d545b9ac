//! Synthetic face masks rendered from the 5 landmarks: one piece of code for training data,
//! mask-aware enrolment and evaluation.
//!
//! Each mask is a polygon in the ArcFace 112x112 template's coordinates (nose bridge to below the
//! chin), mapped into the photo by the inverse of the face's alignment transform, filled with 2x2
//! supersampled coverage, and shaded by style: surgical (pleats, light colours), cloth (woven
//! texture, darker colours), N95-like (cup with a centre seam). Rendering is deterministic given a
//! [`MaskSpec`]: enrolment uses the fixed [`ENROLMENT_MASKS`]; the seeded random draws used for
//! evaluation and training data (plain fabric, or printed patterns, any colour, uneven light and
//! grain) live with the benchmarks (`lobby_bench::masks`).

use super::embed::ARCFACE_TEMPLATE;
use super::geometry::{umeyama, Point};
use image::RgbImage;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskStyle {
    Surgical,
    Cloth,
    N95,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaskSpec {
    pub style: MaskStyle,
    pub colour: [u8; 3],
    /// Vertical shift of the top edge in template pixels (how high on the nose the mask sits).
    pub top_shift: f32,
    /// Texture seed (cloth weave phase, pleat jitter, print phase, grain).
    pub texture: u32,
    /// A printed pattern in `colour2`.
    pub print: Print,
    pub colour2: [u8; 3],
    /// Light on the mask: overall gain and a left-to-right gradient (1.0 and 0.0: as drawn).
    pub gain: f32,
    pub gradient: f32,
    /// Per-pixel noise amplitude in 0-255 units (0: none).
    pub grain: f32,
}

/// A printed pattern on the fabric; sizes in template pixels (the aligned face is 112 wide).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Print {
    Plain,
    Stripes {
        period: f32,
        angle: f32,
    },
    Dots {
        period: f32,
        radius: f32,
    },
    Checks {
        period: f32,
    },
    /// Stripes both ways, half-blended where they cross: three tones, as a woven plaid.
    Plaid {
        period: f32,
    },
    /// Overlapping waves thresholded into irregular patches (floral, camouflage, paisley-like).
    Blotches {
        scale: f32,
    },
    /// Single specks of `colour2` on a fraction `density` of the fabric's template pixels.
    Speckle {
        density: f32,
    },
}

pub const SURGICAL_COLOURS: [[u8; 3]; 4] = [[160, 206, 235], [236, 238, 240], [150, 205, 180], [40, 42, 46]];
pub const CLOTH_COLOURS: [[u8; 3]; 5] = [
    [30, 30, 34],
    [40, 60, 110],
    [120, 30, 40],
    [90, 90, 95],
    [200, 180, 150],
];
pub const N95_COLOURS: [[u8; 3]; 2] = [[238, 238, 232], [215, 215, 205]];

/// A number in [0, 1) from a seed (one SplitMix64 step): the texture's pseudo-random specks and
/// grain, reproducible from the mask's texture seed.
fn hash_unit(seed: u64) -> f32 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 24) as f32
}

impl MaskSpec {
    /// A light-blue surgical mask, as the reference study's `draw_mask`.
    pub fn surgical_blue() -> MaskSpec {
        MaskSpec::plain(MaskStyle::Surgical, SURGICAL_COLOURS[0])
    }

    pub const fn plain(style: MaskStyle, colour: [u8; 3]) -> MaskSpec {
        MaskSpec {
            style,
            colour,
            top_shift: 0.0,
            texture: 0,
            // Plain fabric, even light, no grain.
            print: Print::Plain,
            colour2: [0, 0, 0],
            gain: 1.0,
            gradient: 0.0,
            grain: 0.0,
        }
    }

    /// How much of `colour2` shows at template point (x, y): 0 (plain) to 1.
    fn print_share(&self, x: f32, y: f32) -> f32 {
        let ph = (self.texture % 997) as f32 * 0.37;
        match self.print {
            Print::Plain => 0.0,
            Print::Stripes { period, angle } => {
                let u = x * angle.cos() + y * angle.sin() + ph;
                if (u / period).rem_euclid(1.0) < 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Print::Dots { period, radius } => {
                let (u, v) = ((x + ph) / period, (y + ph * 0.7) / period);
                let (du, dv) = (u - u.round(), v - v.round());
                if du * du + dv * dv < radius * radius {
                    1.0
                } else {
                    0.0
                }
            }
            Print::Checks { period } => {
                let (u, v) = (((x + ph) / period).floor() as i64, ((y + ph) / period).floor() as i64);
                ((u + v).rem_euclid(2)) as f32
            }
            Print::Plaid { period } => {
                let band = |u: f32| {
                    if ((u + ph) / period).rem_euclid(1.0) < 0.5 {
                        0.5
                    } else {
                        0.0
                    }
                };
                band(x) + band(y)
            }
            Print::Speckle { density } => {
                let cell =
                    ((y.floor() as i64 as u64) << 20) ^ (x.floor() as i64 as u64) ^ ((self.texture as u64) << 40);
                if hash_unit(cell) < density {
                    1.0
                } else {
                    0.0
                }
            }
            Print::Blotches { scale } => {
                let w = (x * scale + ph).sin() * (y * scale * 1.3 + ph * 0.5).cos()
                    + (x * scale * 0.7 - y * scale * 0.9 + ph * 1.7).sin();
                if w > 0.35 {
                    1.0
                } else {
                    0.0
                }
            }
        }
    }
}

/// The masks drawn on an enrolment photo for its masked template: the commonest kinds (a light-blue
/// surgical mask, a dark cloth mask, a white N95), none of them a random draw, so the same photo
/// always gives the same template.
pub const ENROLMENT_MASKS: [MaskSpec; 3] = [
    MaskSpec::plain(MaskStyle::Surgical, SURGICAL_COLOURS[0]),
    MaskSpec {
        texture: 3,
        ..MaskSpec::plain(MaskStyle::Cloth, CLOTH_COLOURS[0])
    },
    MaskSpec::plain(MaskStyle::N95, N95_COLOURS[0]),
];

impl MaskSpec {
    /// The mask's outline in template coordinates.
    pub fn polygon(&self) -> Vec<Point> {
        let t = self.top_shift;
        let pts: &[(f32, f32)] = match self.style {
            // From just below the nose bridge down past the chin.
            MaskStyle::Surgical => &[
                (14.0, 64.0),
                (30.0, 58.0),
                (56.0, 55.0),
                (82.0, 58.0),
                (98.0, 64.0),
                (99.0, 84.0),
                (90.0, 104.0),
                (74.0, 116.0),
                (56.0, 121.0),
                (38.0, 116.0),
                (22.0, 104.0),
                (13.0, 84.0),
            ],
            // Higher on the nose, rounder at the chin.
            MaskStyle::Cloth => &[
                (12.0, 66.0),
                (26.0, 57.0),
                (44.0, 52.0),
                (56.0, 51.0),
                (68.0, 52.0),
                (86.0, 57.0),
                (100.0, 66.0),
                (101.0, 86.0),
                (92.0, 106.0),
                (76.0, 119.0),
                (56.0, 124.0),
                (36.0, 119.0),
                (20.0, 106.0),
                (11.0, 86.0),
            ],
            // A cup with a pointed nose bridge.
            MaskStyle::N95 => &[
                (16.0, 70.0),
                (34.0, 58.0),
                (56.0, 50.0),
                (78.0, 58.0),
                (96.0, 70.0),
                (96.0, 92.0),
                (84.0, 110.0),
                (56.0, 122.0),
                (28.0, 110.0),
                (16.0, 92.0),
            ],
        };
        pts.iter()
            .map(|&(x, y)| Point::new(x, if y < 75.0 { y + t } else { y }))
            .collect()
    }

    /// Shade at template point (x, y) inside the mask, as a multiplier of the base colour.
    fn shade(&self, x: f32, y: f32) -> f32 {
        match self.style {
            MaskStyle::Surgical => {
                // Three horizontal pleats, slightly darker, with a soft edge.
                let mut s: f32 = 1.0;
                for py in [74.0f32, 86.0, 98.0] {
                    let d = (y - py).abs();
                    if d < 2.0 {
                        s = s.min(0.86 + 0.07 * d);
                    }
                }
                s
            }
            MaskStyle::Cloth => {
                let ph = (self.texture % 7) as f32;
                0.92 + 0.08 * ((x * 1.7 + ph).sin() * (y * 1.7 + ph).cos())
            }
            MaskStyle::N95 => {
                // Centre seam and a little shading away from the centre.
                let seam = if (x - 56.0).abs() < 0.9 { 0.85 } else { 1.0 };
                seam * (1.0 - 0.10 * ((x - 56.0).abs() / 44.0).min(1.0))
            }
        }
    }
}

fn inside(poly: &[Point], p: Point) -> bool {
    let mut c = false;
    let n = poly.len();
    let mut j = n - 1;
    for i in 0..n {
        let (a, b) = (poly[i], poly[j]);
        if (a.y > p.y) != (b.y > p.y) && p.x < (b.x - a.x) * (p.y - a.y) / (b.y - a.y) + a.x {
            c = !c;
        }
        j = i;
    }
    c
}

/// Draws the mask on a copy of `img`, placed by the face's landmarks. `None` when the landmarks are
/// degenerate.
pub fn render(img: &RgbImage, landmarks: &[Point; 5], spec: &MaskSpec) -> Option<RgbImage> {
    // template -> photo, and photo -> template for the coverage test.
    let to_photo = umeyama(&ARCFACE_TEMPLATE, landmarks)?;
    let to_template = to_photo.inverse()?;
    let poly = spec.polygon();
    let mapped: Vec<Point> = poly.iter().map(|p| to_photo.apply(*p)).collect();
    let (w, h) = (img.width() as i64, img.height() as i64);
    let x0 = (mapped.iter().map(|p| p.x).fold(f32::INFINITY, f32::min).floor() as i64).max(0);
    let y0 = (mapped.iter().map(|p| p.y).fold(f32::INFINITY, f32::min).floor() as i64).max(0);
    let x1 = (mapped.iter().map(|p| p.x).fold(f32::NEG_INFINITY, f32::max).ceil() as i64).min(w - 1);
    let y1 = (mapped.iter().map(|p| p.y).fold(f32::NEG_INFINITY, f32::max).ceil() as i64).min(h - 1);
    let mut out = img.clone();
    if x1 < x0 || y1 < y0 {
        return Some(out);
    }
    const SUB: [f32; 2] = [0.25, 0.75];
    for y in y0..=y1 {
        for x in x0..=x1 {
            let mut cover = 0.0;
            let mut shade = 0.0;
            for sy in SUB {
                for sx in SUB {
                    let t = to_template.apply(Point::new(x as f32 + sx - 0.5, y as f32 + sy - 0.5));
                    if inside(&poly, t) {
                        cover += 0.25;
                        shade += 0.25 * spec.shade(t.x, t.y);
                    }
                }
            }
            if cover == 0.0 {
                continue;
            }
            let s = shade / cover;
            // The print, light and grain at the pixel's centre (the coverage above antialiases
            // only the outline).
            let t = to_template.apply(Point::new(x as f32, y as f32));
            let share = spec.print_share(t.x, t.y);
            let light = spec.gain * (1.0 + spec.gradient * (t.x - 56.0) / 56.0);
            let grain = if spec.grain > 0.0 {
                let h = hash_unit(((y as u64) << 32) ^ (x as u64) ^ ((spec.texture as u64) << 48));
                (h * 2.0 - 1.0) * spec.grain
            } else {
                0.0
            };
            let px = out.get_pixel_mut(x as u32, y as u32);
            for c in 0..3 {
                let base = spec.colour[c] as f32 * (1.0 - share) + spec.colour2[c] as f32 * share;
                let m = (base * s * light + grain).clamp(0.0, 255.0);
                px.0[c] = (px.0[c] as f32 * (1.0 - cover) + m * cover).round() as u8;
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vision::geometry::Affine;

    /// A grey photo and the landmarks of a face on it (the template, scaled 2.5x and moved).
    fn grey_photo_and_face() -> (RgbImage, [Point; 5]) {
        let img = RgbImage::from_pixel(400, 400, image::Rgb([128, 128, 128]));
        let place = Affine {
            m: [2.5, 0.0, 60.0, 0.0, 2.5, 40.0],
        };
        (img, ARCFACE_TEMPLATE.map(|p| place.apply(p)))
    }

    #[test]
    fn the_mask_covers_mouth_and_nose_tip_not_the_eyes() {
        let (img, lms) = grey_photo_and_face();
        for spec in [
            MaskSpec::surgical_blue(),
            MaskSpec {
                top_shift: 2.0,
                texture: 7,
                ..MaskSpec::plain(MaskStyle::Cloth, CLOTH_COLOURS[2])
            },
            MaskSpec::plain(MaskStyle::N95, N95_COLOURS[1]),
            MaskSpec {
                print: Print::Speckle { density: 0.3 },
                colour2: [200, 20, 20],
                grain: 6.0,
                gain: 0.7,
                gradient: 0.3,
                ..MaskSpec::plain(MaskStyle::Surgical, SURGICAL_COLOURS[1])
            },
        ] {
            let out = render(&img, &lms, &spec).unwrap();
            let at = |p: Point| out.get_pixel(p.x.round() as u32, p.y.round() as u32).0;
            let grey = [128, 128, 128];
            assert_ne!(at(lms[3].mid(lms[4])), grey, "{spec:?}: mouth not covered");
            assert_eq!(at(lms[0]), grey, "{spec:?}: eye covered");
            assert_eq!(at(lms[1]), grey, "{spec:?}: eye covered");
        }
    }
}
