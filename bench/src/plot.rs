//! Small plotters that write PNG with the `image` crate and a built-in 5x7 pixel font (no font files
//! or system libraries needed): DET curves ([`det_png`]: log-log axes, decade grid, one or more
//! curves) and time series ([`time_png`]: panels stacked over one time axis, as `lobby-soak` draws
//! RSS and latency).

use image::{Rgb, RgbImage};
use std::path::Path;

const W: u32 = 720;
const H: u32 = 560;
const LEFT: i32 = 90;
const RIGHT: i32 = 30;
const TOP: i32 = 50;
const BOTTOM: i32 = 70;
const DECADES_MIN: i32 = -4; // axes run 1e-4 .. 1

pub struct Curve<'a> {
    pub label: &'a str,
    pub points: &'a [(f64, f64)],
    pub color: [u8; 3],
}

pub const COLORS: [[u8; 3]; 4] = [[31, 119, 180], [214, 39, 40], [44, 160, 44], [148, 103, 189]];

/// Draws FNMR against FMR (log scales, 1e-4 to 1) and saves a PNG.
pub fn det_png(path: &Path, title: &str, x_label: &str, y_label: &str, curves: &[Curve]) -> image::ImageResult<()> {
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    let (pw, ph) = (W as i32 - LEFT - RIGHT, H as i32 - TOP - BOTTOM);
    let to_px = |fmr: f64, fnmr: f64| -> (i32, i32) {
        let lx = fmr.max(1e-4).log10();
        let ly = fnmr.max(1e-4).log10();
        let x = LEFT + ((lx - DECADES_MIN as f64) / (-DECADES_MIN as f64) * pw as f64).round() as i32;
        let y = TOP + ph - ((ly - DECADES_MIN as f64) / (-DECADES_MIN as f64) * ph as f64).round() as i32;
        (x, y)
    };
    let grey = Rgb([220, 220, 220]);
    let black = Rgb([0, 0, 0]);
    for d in DECADES_MIN..=0 {
        let v = 10f64.powi(d);
        let (x, _) = to_px(v, 1.0);
        let (_, y) = to_px(1.0, v);
        line(&mut img, x, TOP, x, TOP + ph, grey);
        line(&mut img, LEFT, y, LEFT + pw, y, grey);
        let lab = if d == 0 { "1".to_string() } else { format!("1E{d}") };
        text(&mut img, x - text_width(&lab, 2) / 2, TOP + ph + 8, &lab, 2, black);
        text(&mut img, LEFT - text_width(&lab, 2) - 8, y - 7, &lab, 2, black);
    }
    rect(&mut img, LEFT, TOP, LEFT + pw, TOP + ph, black);
    text(&mut img, LEFT, 8, title, 2, black);
    text(
        &mut img,
        LEFT + pw / 2 - text_width(x_label, 2) / 2,
        H as i32 - 30,
        x_label,
        2,
        black,
    );
    text(&mut img, 8, TOP - 16, y_label, 2, black);
    for (ci, c) in curves.iter().enumerate() {
        let col = Rgb(c.color);
        let mut prev: Option<(i32, i32)> = None;
        for &(fmr, fnmr) in c.points {
            // Points off the log axes (rates of 0) are clamped to the edge.
            let p = to_px(fmr, fnmr);
            if let Some(q) = prev {
                // DET curves are staircases: go across, then down.
                line(&mut img, q.0, q.1, p.0, q.1, col);
                line(&mut img, p.0, q.1, p.0, p.1, col);
            }
            prev = Some(p);
        }
        let ly = TOP + 12 + ci as i32 * 20;
        line(&mut img, LEFT + pw - 200, ly + 6, LEFT + pw - 170, ly + 6, col);
        line(&mut img, LEFT + pw - 200, ly + 7, LEFT + pw - 170, ly + 7, col);
        text(&mut img, LEFT + pw - 162, ly, c.label, 2, black);
    }
    img.save(path)
}

pub struct Series<'a> {
    pub label: &'a str,
    /// NaN y breaks the line.
    pub points: &'a [(f64, f64)],
    pub color: [u8; 3],
}

pub struct Panel<'a> {
    pub y_label: &'a str,
    pub series: Vec<Series<'a>>,
    /// Logarithmic y axis (decades), for latencies that span milliseconds to tens of seconds.
    pub log: bool,
}

const TIME_W: i32 = 960;
const TIME_PANEL_H: i32 = 300;
const TIME_TOP: i32 = 72;
const TIME_GAP: i32 = 70;

fn nice_step(max: f64) -> f64 {
    let raw = (max / 5.0).max(1e-9);
    let p = 10f64.powf(raw.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= raw {
            return m * p;
        }
    }
    10.0 * p
}

/// Panels stacked over one time axis (0..x_max seconds); `shaded` spans are drawn in light red
/// (overload windows), `mark` as a dashed vertical line (the end of the soak).
pub fn time_png(
    path: &Path,
    title: &str,
    x_max: f64,
    shaded: &[(f64, f64)],
    mark: Option<f64>,
    panels: &[Panel],
) -> image::ImageResult<()> {
    let h = TIME_TOP + panels.len() as i32 * (TIME_PANEL_H + TIME_GAP) + 10;
    let mut img = RgbImage::from_pixel(TIME_W as u32, h as u32, Rgb([255, 255, 255]));
    let black = Rgb([0, 0, 0]);
    let grey = Rgb([225, 225, 225]);
    let pw = TIME_W - LEFT - RIGHT;
    text(&mut img, LEFT, 12, title, 2, black);
    let x_max = x_max.max(1.0);
    let xs = nice_step(x_max);
    let px = |x: f64| LEFT + (x / x_max * pw as f64).round() as i32;
    for (pi, p) in panels.iter().enumerate() {
        let top = TIME_TOP + pi as i32 * (TIME_PANEL_H + TIME_GAP);
        let ys_all: Vec<f64> = p
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|q| q.1))
            .filter(|y| y.is_finite() && (!p.log || *y > 0.0))
            .collect();
        let y_hi = ys_all.iter().copied().fold(0.0f64, f64::max).max(1e-9);
        // Linear: 0..1.1x the largest; log: the decades around the values.
        let (lo, hi) = if p.log {
            let lo = ys_all.iter().copied().fold(f64::INFINITY, f64::min).max(1e-3);
            let lo = if lo.is_finite() { lo } else { 1.0 };
            (lo.log10().floor(), y_hi.log10().ceil().max(lo.log10().floor() + 1.0))
        } else {
            (0.0, y_hi * 1.1)
        };
        let fy = |y: f64| if p.log { y.max(1e-12).log10() } else { y };
        let py = |y: f64| {
            let f = ((fy(y) - lo) / (hi - lo)).clamp(0.0, 1.0);
            top + TIME_PANEL_H - (f * TIME_PANEL_H as f64).round() as i32
        };
        for &(a, b) in shaded {
            for x in px(a)..=px(b.min(x_max)) {
                line(&mut img, x, top, x, top + TIME_PANEL_H, Rgb([253, 225, 225]));
            }
        }
        let mut x = 0.0;
        while x <= x_max + 1e-9 {
            line(&mut img, px(x), top, px(x), top + TIME_PANEL_H, grey);
            let lab = format!("{}", x.round() as i64);
            text(
                &mut img,
                px(x) - text_width(&lab, 2) / 2,
                top + TIME_PANEL_H + 8,
                &lab,
                2,
                black,
            );
            x += xs;
        }
        let ticks: Vec<f64> = if p.log {
            (lo as i32..=hi as i32).map(|d| 10f64.powi(d)).collect()
        } else {
            let ys = nice_step(hi);
            (0..).map(|i| i as f64 * ys).take_while(|y| *y <= hi + 1e-9).collect()
        };
        for y in ticks {
            line(&mut img, LEFT, py(y), LEFT + pw, py(y), grey);
            let lab = if y >= 1.0 || y == 0.0 {
                format!("{}", y.round() as i64)
            } else {
                format!("{y}")
            };
            text(&mut img, LEFT - text_width(&lab, 2) - 8, py(y) - 7, &lab, 2, black);
        }
        if let Some(m) = mark {
            let mut yy = top;
            while yy < top + TIME_PANEL_H {
                line(&mut img, px(m), yy, px(m), (yy + 5).min(top + TIME_PANEL_H), black);
                yy += 10;
            }
        }
        rect(&mut img, LEFT, top, LEFT + pw, top + TIME_PANEL_H, black);
        text(&mut img, LEFT, top - 18, p.y_label, 2, black);
        for (si, s) in p.series.iter().enumerate() {
            let col = Rgb(s.color);
            let mut prev: Option<(i32, i32)> = None;
            for &(x, y) in s.points {
                if !y.is_finite() {
                    prev = None;
                    continue;
                }
                let q = (px(x), py(y));
                match prev {
                    Some(a) => {
                        line(&mut img, a.0, a.1, q.0, q.1, col);
                        line(&mut img, a.0, a.1 + 1, q.0, q.1 + 1, col);
                    }
                    None => {
                        line(&mut img, q.0 - 1, q.1, q.0 + 1, q.1, col);
                    }
                }
                prev = Some(q);
            }
            let ly = top + 10 + si as i32 * 20;
            let lx = LEFT + pw - 420;
            line(&mut img, lx, ly + 6, lx + 30, ly + 6, col);
            line(&mut img, lx, ly + 7, lx + 30, ly + 7, col);
            text(&mut img, lx + 38, ly, s.label, 2, black);
        }
    }
    let lab = "TIME (S); SHADED: OVERLOAD; DASHED: END";
    text(&mut img, LEFT + pw / 2 - text_width(lab, 2) / 2, h - 24, lab, 2, black);
    img.save(path)
}

fn put(img: &mut RgbImage, x: i32, y: i32, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

fn line(img: &mut RgbImage, x0: i32, y0: i32, x1: i32, y1: i32, c: Rgb<u8>) {
    let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
    let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
    let (mut x, mut y, mut err) = (x0, y0, dx + dy);
    loop {
        put(img, x, y, c);
        if x == x1 && y == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

fn rect(img: &mut RgbImage, x0: i32, y0: i32, x1: i32, y1: i32, c: Rgb<u8>) {
    line(img, x0, y0, x1, y0, c);
    line(img, x1, y0, x1, y1, c);
    line(img, x1, y1, x0, y1, c);
    line(img, x0, y1, x0, y0, c);
}

fn text_width(s: &str, scale: i32) -> i32 {
    s.chars().count() as i32 * 6 * scale
}

fn text(img: &mut RgbImage, x: i32, y: i32, s: &str, scale: i32, c: Rgb<u8>) {
    for (i, ch) in s.chars().enumerate() {
        let rows = glyph(ch.to_ascii_uppercase());
        for (r, bits) in rows.iter().enumerate() {
            for col in 0..5 {
                if bits & (0x10 >> col) != 0 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            put(img, x + (i as i32 * 6 + col) * scale + dx, y + r as i32 * scale + dy, c);
                        }
                    }
                }
            }
        }
    }
}

/// 5x7 glyphs, one byte a row, bit 4 leftmost.
fn glyph(c: char) -> [u8; 7] {
    match c {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        ',' => [0, 0, 0, 0, 0x0C, 0x04, 0x08],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        ';' => [0, 0x0C, 0x0C, 0, 0x0C, 0x04, 0x08],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '=' => [0, 0, 0x1F, 0, 0x1F, 0, 0],
        '/' => [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
        '@' => [0x0E, 0x11, 0x01, 0x0D, 0x15, 0x15, 0x0E],
        '+' => [0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0],
        _ => [0; 7],
    }
}
