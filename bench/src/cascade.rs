//! Calibration of the cascade (`lobby_service::core::cascade`) on all pairs of a labelled image set:
//! z-normalisation statistics of each model's impostor cosines, then, for a target false-match rate
//! and a band of student scores, the fused-score threshold that keeps the overall false-match rate
//! at the target; and the check of a configured cascade (the service's own thresholds) on the same
//! pairs.

use lobby_service::config::{Cascade, CascadeBand, Policy};
use lobby_service::core::cascade::{fuse, judge, Mode, SecondCosines};
use serde::Serialize;

/// Cosines of every pair, per model, with the pair's labels.
#[derive(Debug, Clone, Default)]
pub struct PairScores {
    pub student: Vec<f32>,
    pub teacher: Vec<f32>,
    pub dlib: Vec<f32>,
    pub genuine: Vec<bool>,
    /// The pair's identities are among those the trained models never saw.
    pub held_out: Vec<bool>,
}

impl PairScores {
    pub fn len(&self) -> usize {
        self.student.len()
    }

    pub fn is_empty(&self) -> bool {
        self.student.is_empty()
    }

    fn impostors(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len()).filter(|&i| !self.genuine[i])
    }

    fn second(&self, i: usize, with_dlib: bool) -> SecondCosines {
        SecondCosines {
            teacher: self.teacher[i],
            dlib: with_dlib.then_some(self.dlib[i]),
        }
    }
}

/// Mean and standard deviation of each model's impostor cosines (student, teacher, dlib).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ZStats {
    pub mean: [f32; 3],
    pub sd: [f32; 3],
}

pub fn znorm_stats(s: &PairScores) -> ZStats {
    let mut mean = [0f32; 3];
    let mut sd = [0f32; 3];
    for (m, v) in [&s.student, &s.teacher, &s.dlib].into_iter().enumerate() {
        let (mut sum, mut sq, mut n) = (0f64, 0f64, 0f64);
        for i in s.impostors() {
            let x = v[i] as f64;
            sum += x;
            sq += x * x;
            n += 1.0;
        }
        let mu = sum / n.max(1.0);
        mean[m] = mu as f32;
        sd[m] = (sq / n.max(1.0) - mu * mu).max(1e-12).sqrt() as f32;
    }
    ZStats { mean, sd }
}

/// The smallest `t` with exactly `k` of `scores` (sorted descending) at or above it — the `>=` rule
/// the service applies: just above the (k+1)-th highest score.
fn threshold_admitting(sorted_desc: &[f32], k: usize) -> f32 {
    match sorted_desc.get(k) {
        Some(x) => next_up(*x),
        None => f32::NEG_INFINITY,
    }
}

fn next_up(x: f32) -> f32 {
    if x.is_nan() || x == f32::INFINITY {
        return x;
    }
    if x == 0.0 {
        return f32::from_bits(1);
    }
    let b = x.to_bits();
    f32::from_bits(if x > 0.0 { b + 1 } else { b - 1 })
}

/// The student's own threshold at a false-match rate (`>=` admits `floor(fmr * impostors)`).
pub fn student_threshold(s: &PairScores, fmr: f64) -> f32 {
    let mut imp: Vec<f32> = s.impostors().map(|i| s.student[i]).collect();
    imp.sort_unstable_by(|a, b| b.total_cmp(a));
    threshold_admitting(&imp, (fmr * imp.len() as f64).floor() as usize)
}

/// What a configured cascade (or the student alone) does on the pairs.
#[derive(Debug, Clone, Serialize)]
pub struct Operating {
    pub tar: f64,
    pub fmr: f64,
    pub false_matches: usize,
    pub tar_held_out: f64,
    /// Shares of genuine and impostor pairs whose student score fell in the band.
    pub genuine_in_band: f64,
    pub impostors_in_band: f64,
}

/// Runs the service's own decision rule (`matching::judge`) over every pair.
pub fn operate(s: &PairScores, p: &Policy, c: &Cascade, mode: Mode) -> Operating {
    let with_dlib = c.weights[2] > 0.0;
    let (mut gen, mut gen_ok, mut imp, mut imp_ok) = (0usize, 0usize, 0usize, 0usize);
    let (mut held, mut held_ok, mut gen_band, mut imp_band) = (0usize, 0usize, 0usize, 0usize);
    for i in 0..s.len() {
        let mut asked = false;
        let j = judge(p, c, mode, false, s.student[i], || {
            asked = true;
            Some(s.second(i, with_dlib))
        });
        if s.genuine[i] {
            gen += 1;
            gen_ok += j.accepted as usize;
            gen_band += asked as usize;
            if s.held_out[i] {
                held += 1;
                held_ok += j.accepted as usize;
            }
        } else {
            imp += 1;
            imp_ok += j.accepted as usize;
            imp_band += asked as usize;
        }
    }
    let r = |a: usize, b: usize| a as f64 / b.max(1) as f64;
    Operating {
        tar: r(gen_ok, gen),
        fmr: r(imp_ok, imp),
        false_matches: imp_ok,
        tar_held_out: r(held_ok, held),
        genuine_in_band: r(gen_band, gen),
        impostors_in_band: r(imp_band, imp),
    }
}

/// The fused-score threshold for a band `[lo, hi)` of student scores that keeps the overall
/// false-match rate at `fmr`: the impostors the student alone admits above `hi` count against the
/// allowance first; the rest of it goes to the band. `+inf` when nothing is left for the band.
pub fn calibrate_band(s: &PairScores, c: &Cascade, lo: f32, hi: f32, fmr: f64) -> CascadeBand {
    let with_dlib = c.weights[2] > 0.0;
    let n = s.impostors().count();
    let allowed = (fmr * n as f64).floor() as usize;
    let above = s.impostors().filter(|&i| s.student[i] >= hi).count();
    let mut band: Vec<f32> = s
        .impostors()
        .filter(|&i| s.student[i] >= lo && s.student[i] < hi)
        .map(|i| fuse(c, s.student[i], s.second(i, with_dlib)))
        .collect();
    band.sort_unstable_by(|a, b| b.total_cmp(a));
    let threshold = match allowed.checked_sub(above) {
        Some(k) => threshold_admitting(&band, k),
        None => f32::INFINITY,
    };
    CascadeBand {
        band: [lo, hi],
        threshold,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lobby_service::config::Settings;

    /// Impostors with student cosines 0.00..0.99 (100), teacher equal to student; genuine pairs high.
    fn scores() -> PairScores {
        let mut s = PairScores::default();
        for i in 0..100 {
            let x = i as f32 / 100.0;
            s.student.push(x);
            s.teacher.push(x);
            s.dlib.push(0.0);
            s.genuine.push(false);
            s.held_out.push(false);
        }
        for x in [0.95f32, 0.85, 0.5] {
            s.student.push(x);
            s.teacher.push(1.0);
            s.dlib.push(0.0);
            s.genuine.push(true);
            s.held_out.push(true);
        }
        s
    }

    #[test]
    fn thresholds_admit_exactly_the_allowance() {
        let s = scores();
        // FMR 0.05 of 100 impostors: 5 admitted, those at 0.95..0.99.
        let t = student_threshold(&s, 0.05);
        assert!(t > 0.94 && t <= 0.95 + 1e-6, "{t}");
        let above = s.impostors().filter(|&i| s.student[i] >= t).count();
        assert_eq!(above, 5);
    }

    #[test]
    fn the_band_gets_what_the_student_alone_leaves_and_the_rate_holds() {
        let s = scores();
        let mut settings = Settings::load_from(None, std::iter::empty()).unwrap();
        let c = &mut settings.cascade;
        c.enabled = true;
        c.weights = [0.0, 1.0, 0.0];
        c.impostor_mean = [0.0; 3];
        c.impostor_sd = [1.0; 3];
        // Band [0.80, 0.97): 3 impostors at >= 0.97 count first; allowance 10 leaves 7 for the band.
        let b = calibrate_band(&s, c, 0.80, 0.97, 0.10);
        c.one_to_n = b;
        let op = operate(&s, &settings.policy, &settings.cascade, Mode::OneToN);
        assert_eq!(op.false_matches, 10, "{op:?} {b:?}");
        // Genuine: 0.95 and 0.85 are in the band with teacher 1.0 (accepted); 0.5 is below it.
        assert!((op.tar - 2.0 / 3.0).abs() < 1e-9, "{op:?}");
        // An allowance smaller than what the student alone admits leaves the band nothing.
        assert_eq!(
            calibrate_band(&s, &settings.cascade, 0.5, 0.9, 0.05).threshold,
            f32::INFINITY
        );
    }

    #[test]
    fn znorm_uses_impostors_only() {
        let z = znorm_stats(&scores());
        assert!((z.mean[0] - 0.495).abs() < 1e-4);
        assert!((z.sd[0] - 0.2886).abs() < 1e-3);
    }
}
