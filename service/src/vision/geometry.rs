//! Plane geometry: points, 2x3 affine maps (with inverse), the 5-point similarity fit (Umeyama) and
//! the bilinear warp used for alignment and crops.

use image::RgbImage;

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Point {
    pub x: f32,
    pub y: f32,
}

impl Point {
    pub const fn new(x: f32, y: f32) -> Point {
        Point { x, y }
    }
    pub fn dist(self, o: Point) -> f32 {
        ((self.x - o.x).powi(2) + (self.y - o.y).powi(2)).sqrt()
    }
    pub fn mid(self, o: Point) -> Point {
        Point::new((self.x + o.x) / 2.0, (self.y + o.y) / 2.0)
    }
}

/// An axis-aligned box: top-left corner and size, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BBox {
    pub x: f32,
    pub y: f32,
    pub w: f32,
    pub h: f32,
}

impl BBox {
    pub fn area(&self) -> f32 {
        self.w.max(0.0) * self.h.max(0.0)
    }
    pub fn center(&self) -> Point {
        Point::new(self.x + self.w / 2.0, self.y + self.h / 2.0)
    }
    pub fn iou(&self, o: &BBox) -> f32 {
        let x1 = self.x.max(o.x);
        let y1 = self.y.max(o.y);
        let x2 = (self.x + self.w).min(o.x + o.w);
        let y2 = (self.y + self.h).min(o.y + o.h);
        let inter = (x2 - x1).max(0.0) * (y2 - y1).max(0.0);
        let union = self.area() + o.area() - inter;
        if union <= 0.0 {
            0.0
        } else {
            inter / union
        }
    }
}

/// The map between a photo and the canvas a model sees: `canvas = original * scale + offset`.
/// One type owns the transform and its inverse, so boxes and landmarks are mapped back one way only.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScaleOffset {
    pub scale: f32,
    pub offset: Point,
}

impl ScaleOffset {
    pub fn to_canvas(&self, p: Point) -> Point {
        Point::new(p.x * self.scale + self.offset.x, p.y * self.scale + self.offset.y)
    }
    pub fn to_original(&self, p: Point) -> Point {
        Point::new((p.x - self.offset.x) / self.scale, (p.y - self.offset.y) / self.scale)
    }
    pub fn box_to_original(&self, b: BBox) -> BBox {
        let p = self.to_original(Point::new(b.x, b.y));
        BBox {
            x: p.x,
            y: p.y,
            w: b.w / self.scale,
            h: b.h / self.scale,
        }
    }
}

/// A 2x3 affine map `[a b c; d e f]`: x' = a x + b y + c, y' = d x + e y + f.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine {
    pub m: [f64; 6],
}

impl Affine {
    pub fn apply(&self, p: Point) -> Point {
        let [a, b, c, d, e, f] = self.m;
        let (x, y) = (p.x as f64, p.y as f64);
        Point::new((a * x + b * y + c) as f32, (d * x + e * y + f) as f32)
    }

    pub fn inverse(&self) -> Option<Affine> {
        let [a, b, c, d, e, f] = self.m;
        let det = a * e - b * d;
        if det.abs() < 1e-12 || !det.is_finite() {
            return None;
        }
        let (ia, ib, id, ie) = (e / det, -b / det, -d / det, a / det);
        Some(Affine {
            m: [ia, ib, -(ia * c + ib * f), id, ie, -(id * c + ie * f)],
        })
    }

    /// Uniform scale of a similarity transform.
    pub fn scale(&self) -> f64 {
        (self.m[0] * self.m[4] - self.m[1] * self.m[3]).abs().sqrt()
    }
}

/// Least-squares similarity transform (rotation, uniform scale, translation; no reflection) that maps
/// `src` onto `dst` (Umeyama 1991). `None` when the points are degenerate (all equal).
pub fn umeyama(src: &[Point], dst: &[Point]) -> Option<Affine> {
    let n = src.len().min(dst.len());
    if n < 2 {
        return None;
    }
    let nf = n as f64;
    let (mut msx, mut msy, mut mdx, mut mdy) = (0.0, 0.0, 0.0, 0.0);
    for i in 0..n {
        msx += src[i].x as f64;
        msy += src[i].y as f64;
        mdx += dst[i].x as f64;
        mdy += dst[i].y as f64;
    }
    msx /= nf;
    msy /= nf;
    mdx /= nf;
    mdy /= nf;
    // Covariance dst^T src / n (2x2) and the variance of src.
    let (mut c00, mut c01, mut c10, mut c11, mut var_s) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for i in 0..n {
        let (sx, sy) = (src[i].x as f64 - msx, src[i].y as f64 - msy);
        let (dx, dy) = (dst[i].x as f64 - mdx, dst[i].y as f64 - mdy);
        c00 += dx * sx;
        c01 += dx * sy;
        c10 += dy * sx;
        c11 += dy * sy;
        var_s += sx * sx + sy * sy;
    }
    c00 /= nf;
    c01 /= nf;
    c10 /= nf;
    c11 /= nf;
    var_s /= nf;
    if var_s < 1e-12 {
        return None;
    }
    // For 2x2 the optimal rotation without reflection has a closed form: the covariance splits into
    // a similarity part [p -q; q p] and an anti-similarity part; R = rot(atan2(q, p)), and the scale
    // is sqrt(p^2 + q^2) / var_s (the sum of singular values with the reflection sign applied).
    let p = c00 + c11;
    let q = c10 - c01;
    let norm = (p * p + q * q).sqrt();
    if norm < 1e-12 {
        return None;
    }
    let (cos, sin) = (p / norm, q / norm);
    let scale = norm / var_s;
    let (a, b, d, e) = (scale * cos, -scale * sin, scale * sin, scale * cos);
    let c = mdx - (a * msx + b * msy);
    let f = mdy - (d * msx + e * msy);
    Some(Affine { m: [a, b, c, d, e, f] })
}

/// Samples `src` at (x, y) bilinearly; outside the image counts as black (a constant-0 border,
/// as OpenCV's `warpAffine` with `BORDER_CONSTANT`).
#[inline]
fn sample_bilinear(src: &RgbImage, x: f32, y: f32) -> [f32; 3] {
    let (w, h) = (src.width() as i64, src.height() as i64);
    let x0 = x.floor();
    let y0 = y.floor();
    let (fx, fy) = (x - x0, y - y0);
    let (x0, y0) = (x0 as i64, y0 as i64);
    let raw = src.as_raw();
    let px = |xi: i64, yi: i64| -> [f32; 3] {
        if xi < 0 || yi < 0 || xi >= w || yi >= h {
            [0.0; 3]
        } else {
            let o = ((yi * w + xi) * 3) as usize;
            [raw[o] as f32, raw[o + 1] as f32, raw[o + 2] as f32]
        }
    };
    let (p00, p10, p01, p11) = (px(x0, y0), px(x0 + 1, y0), px(x0, y0 + 1), px(x0 + 1, y0 + 1));
    let mut out = [0.0; 3];
    for c in 0..3 {
        let top = p00[c] + (p10[c] - p00[c]) * fx;
        let bot = p01[c] + (p11[c] - p01[c]) * fx;
        out[c] = top + (bot - top) * fy;
    }
    out
}

/// Warps `src` by `src_to_dst` into a `width` x `height` RGB image (bilinear, black border).
pub fn warp_affine(src: &RgbImage, src_to_dst: &Affine, width: u32, height: u32) -> Option<RgbImage> {
    let inv = src_to_dst.inverse()?;
    let mut out = RgbImage::new(width, height);
    let [a, b, c, d, e, f] = inv.m.map(|v| v as f32);
    for (x, y, px) in out.enumerate_pixels_mut() {
        let (xf, yf) = (x as f32, y as f32);
        let s = sample_bilinear(src, a * xf + b * yf + c, d * xf + e * yf + f);
        px.0 = s.map(|v| v.round().clamp(0.0, 255.0) as u8);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pts(v: &[(f32, f32)]) -> Vec<Point> {
        v.iter().map(|&(x, y)| Point::new(x, y)).collect()
    }

    #[test]
    fn umeyama_recovers_a_known_similarity() {
        let src = pts(&[(10.0, 20.0), (50.0, 22.0), (30.0, 40.0), (15.0, 60.0), (47.0, 61.0)]);
        let angle = 0.3f64;
        let s = 1.7f64;
        let truth = Affine {
            m: [
                s * angle.cos(),
                -s * angle.sin(),
                5.0,
                s * angle.sin(),
                s * angle.cos(),
                -3.0,
            ],
        };
        let dst: Vec<Point> = src.iter().map(|&p| truth.apply(p)).collect();
        let fit = umeyama(&src, &dst).unwrap();
        for (a, b) in fit.m.iter().zip(truth.m.iter()) {
            assert!((a - b).abs() < 1e-4, "{:?} vs {:?}", fit.m, truth.m);
        }
        assert!((fit.scale() - s).abs() < 1e-4);
    }

    #[test]
    fn affine_inverse_round_trips() {
        let t = Affine {
            m: [1.2, -0.4, 7.0, 0.4, 1.2, -2.5],
        };
        let inv = t.inverse().unwrap();
        for p in pts(&[(0.0, 0.0), (100.0, 3.0), (-20.0, 55.5)]) {
            let q = inv.apply(t.apply(p));
            assert!(p.dist(q) < 1e-3, "{p:?} {q:?}");
        }
    }

    #[test]
    fn scale_offset_round_trips_points_and_boxes() {
        let t = ScaleOffset {
            scale: 0.37,
            offset: Point::new(12.0, 40.0),
        };
        let p = Point::new(731.0, 18.5);
        assert!(t.to_original(t.to_canvas(p)).dist(p) < 1e-3);
        let b = BBox {
            x: 100.0,
            y: 50.0,
            w: 80.0,
            h: 120.0,
        };
        let canvas_box = BBox {
            x: t.to_canvas(Point::new(b.x, b.y)).x,
            y: t.to_canvas(Point::new(b.x, b.y)).y,
            w: b.w * t.scale,
            h: b.h * t.scale,
        };
        let back = t.box_to_original(canvas_box);
        assert!((back.x - b.x).abs() < 1e-3 && (back.w - b.w).abs() < 1e-3 && (back.h - b.h).abs() < 1e-3);
    }

    #[test]
    fn warp_moves_a_bright_dot_where_the_transform_says() {
        let mut src = RgbImage::new(64, 64);
        src.put_pixel(40, 20, image::Rgb([255, 255, 255]));
        let t = Affine {
            m: [0.5, 0.0, 3.0, 0.0, 0.5, 7.0],
        }; // (40,20) -> (23,17)
        let out = warp_affine(&src, &t, 32, 32).unwrap();
        let (mut best, mut at) = (0u8, (0, 0));
        for (x, y, p) in out.enumerate_pixels() {
            if p.0[0] > best {
                best = p.0[0];
                at = (x, y);
            }
        }
        assert_eq!(at, (23, 17));
    }
}
