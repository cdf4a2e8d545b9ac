//! Seeded random masks for evaluation and training data (not the service's: enrolment draws the
//! fixed `ENROLMENT_MASKS`). [`random_mask`] draws a plain one (evaluation masks: plain fabric, even
//! light); [`random_varied_mask`] adds what real masks in the lobby show and the plain ones lack, for
//! training the mask detector: printed patterns in a second colour (stripes, dots, checks, plaid,
//! blotches, specks), any colour, uneven light and sensor grain.

use lobby_service::vision::mask_render::{MaskSpec, MaskStyle, Print, CLOTH_COLOURS, N95_COLOURS, SURGICAL_COLOURS};

/// A small deterministic generator (SplitMix64), so masks are reproducible from a seed without
/// depending on a random-number crate's stream.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

pub fn random_mask(rng: &mut SplitMix) -> MaskSpec {
    let style = match rng.below(3) {
        0 => MaskStyle::Surgical,
        1 => MaskStyle::Cloth,
        _ => MaskStyle::N95,
    };
    let colour = match style {
        MaskStyle::Surgical => SURGICAL_COLOURS[rng.below(SURGICAL_COLOURS.len())],
        MaskStyle::Cloth => CLOTH_COLOURS[rng.below(CLOTH_COLOURS.len())],
        MaskStyle::N95 => N95_COLOURS[rng.below(N95_COLOURS.len())],
    };
    MaskSpec {
        style,
        colour,
        top_shift: rng.unit() * 6.0 - 3.0,
        texture: rng.next_u64() as u32,
        ..MaskSpec::plain(style, colour)
    }
}

/// A mask as [`random_mask`] draws it (the same draws first, so the shapes match), then
/// dressed with what plain renders lack: half the time a colour drawn from the whole colour
/// space instead of the palette, in 70 % of cloth and a fifth of other masks a printed pattern
/// at any scale from the weave's (2 template pixels) to a bold print's (16), uneven light
/// (gain 0.55-1.15, gradient up to +-35 %) and grain up to 8 levels.
pub fn random_varied_mask(rng: &mut SplitMix) -> MaskSpec {
    let mut m = random_mask(rng);
    if rng.unit() < 0.5 {
        m.colour = random_colour(rng);
    }
    m.colour2 = random_colour(rng);
    let printed = if m.style == MaskStyle::Cloth { 0.7 } else { 0.2 };
    if rng.unit() < printed {
        // Log-uniform sizes, so fine weaves are as likely as bold prints.
        let size = |rng: &mut SplitMix, lo: f32, hi: f32| lo * (hi / lo).powf(rng.unit());
        m.print = match rng.below(6) {
            0 => Print::Stripes {
                period: size(rng, 2.0, 16.0),
                angle: rng.unit() * std::f32::consts::PI,
            },
            1 => Print::Dots {
                period: size(rng, 2.5, 15.0),
                radius: 0.2 + rng.unit() * 0.25,
            },
            2 => Print::Checks {
                period: size(rng, 2.0, 12.0),
            },
            3 => Print::Plaid {
                period: size(rng, 2.0, 12.0),
            },
            4 => Print::Blotches {
                scale: 0.12 + rng.unit() * 0.35,
            },
            _ => Print::Speckle {
                density: 0.05 + rng.unit() * 0.4,
            },
        };
    }
    m.gain = 0.55 + rng.unit() * 0.6;
    m.gradient = rng.unit() * 0.7 - 0.35;
    m.grain = rng.unit() * 8.0;
    m
}

/// A colour from the whole space: hue uniform, saturation 0-1, value 0.12-1.
fn random_colour(rng: &mut SplitMix) -> [u8; 3] {
    let h = rng.unit() * 6.0;
    let s = rng.unit();
    let v = 0.12 + rng.unit() * 0.88;
    let f = h - h.floor();
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    let (r, g, b) = match h as u32 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    };
    [r, g, b].map(|c| (c * 255.0).round().clamp(0.0, 255.0) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::RgbImage;
    use lobby_service::vision::embed::ARCFACE_TEMPLATE;
    use lobby_service::vision::geometry::{Affine, Point};
    use lobby_service::vision::mask_render::render;

    /// A grey photo and the landmarks of a face on it (the template, scaled 2.5x and moved).
    fn grey_photo_and_face() -> (RgbImage, [Point; 5]) {
        let img = RgbImage::from_pixel(400, 400, image::Rgb([128, 128, 128]));
        let place = Affine {
            m: [2.5, 0.0, 60.0, 0.0, 2.5, 40.0],
        };
        (img, ARCFACE_TEMPLATE.map(|p| place.apply(p)))
    }

    #[test]
    fn random_masks_cover_mouth_not_eyes() {
        let (img, lms) = grey_photo_and_face();
        for spec in [
            random_mask(&mut SplitMix::new(1)),
            random_mask(&mut SplitMix::new(2)),
            random_varied_mask(&mut SplitMix::new(3)),
            random_varied_mask(&mut SplitMix::new(4)),
        ] {
            let out = render(&img, &lms, &spec).unwrap();
            let at = |p: Point| out.get_pixel(p.x.round() as u32, p.y.round() as u32).0;
            let grey = [128, 128, 128];
            assert_ne!(at(lms[3].mid(lms[4])), grey, "{spec:?}: mouth not covered");
            assert_eq!(at(lms[0]), grey, "{spec:?}: eye covered");
        }
    }

    #[test]
    fn random_specs_are_reproducible_and_varied() {
        let a: Vec<MaskSpec> = (0..20).map(|i| random_mask(&mut SplitMix::new(i))).collect();
        let b: Vec<MaskSpec> = (0..20).map(|i| random_mask(&mut SplitMix::new(i))).collect();
        assert_eq!(a, b);
        for s in [MaskStyle::Surgical, MaskStyle::Cloth, MaskStyle::N95] {
            assert!(a.iter().any(|m| m.style == s), "{s:?} never drawn");
        }
        // Plain draws stay plain (the evaluation's masks do not change with the training variety).
        assert!(a
            .iter()
            .all(|m| m.print == Print::Plain && m.gain == 1.0 && m.grain == 0.0));
    }

    #[test]
    fn varied_specs_keep_the_shape_and_add_prints_and_light() {
        let plain: Vec<MaskSpec> = (0..200).map(|i| random_mask(&mut SplitMix::new(i))).collect();
        let varied: Vec<MaskSpec> = (0..200).map(|i| random_varied_mask(&mut SplitMix::new(i))).collect();
        for (p, v) in plain.iter().zip(&varied) {
            assert_eq!((p.style, p.top_shift, p.texture), (v.style, v.top_shift, v.texture));
            assert!((0.55..=1.15).contains(&v.gain) && v.gradient.abs() <= 0.35);
        }
        let printed = varied.iter().filter(|m| m.print != Print::Plain).count();
        assert!((40..=120).contains(&printed), "{printed} of 200 printed");
        for kind in 0..6 {
            assert!(
                varied.iter().any(|m| matches!(
                    (kind, m.print),
                    (0, Print::Stripes { .. })
                        | (1, Print::Dots { .. })
                        | (2, Print::Checks { .. })
                        | (3, Print::Plaid { .. })
                        | (4, Print::Blotches { .. })
                        | (5, Print::Speckle { .. })
                )),
                "print kind {kind} never drawn"
            );
        }
        // A printed mask really shows both colours.
        let (img, lms) = grey_photo_and_face();
        let spec = MaskSpec {
            print: Print::Checks { period: 8.0 },
            colour: [250, 250, 250],
            colour2: [10, 10, 10],
            ..MaskSpec::surgical_blue()
        };
        let out = render(&img, &lms, &spec).unwrap();
        let mouth = lms[3].mid(lms[4]);
        let patch: Vec<u8> = (-20..20)
            .flat_map(|d| {
                let p = out.get_pixel((mouth.x + d as f32) as u32, (mouth.y + 20.0) as u32).0;
                [p[0]]
            })
            .collect();
        assert!(
            patch.iter().any(|&v| v > 200) && patch.iter().any(|&v| v < 40),
            "{patch:?}"
        );
    }
}
