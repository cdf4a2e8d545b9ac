//! When a probe's score is a match: the first stage (the student embedder) alone, or, for an
//! unmasked probe whose student score is uncertain, the cascade's second stage (teacher and dlib,
//! `vision::second`) fused with it. Pure functions of scores and settings, so every rule is
//! unit-tested; the scores themselves come from `checkin` (gallery and store).
//!
//! The cascade (bench/RESULTS.md, "Cascade"): the student decides alone above the top of a band
//! (its own false-match rate there is a tenth of the target) and below its bottom (ten times the
//! target); in between, the z-normalised cosines of the three models are summed with weights and
//! compared with a threshold calibrated so that the overall false-match rate stays at the target.

use crate::config::{Cascade, Policy};

/// 1:1 (the guest named the reservation) or 1:N (today's arrivals of the property).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    OneToOne,
    OneToN,
}

/// The second stage's cosines of a probe against one guest's second-stage templates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SecondCosines {
    pub teacher: f32,
    /// `None` when dlib is not consulted (weight 0) or the guest has no dlib template.
    pub dlib: Option<f32>,
}

/// The cascade's verdict on a probe in the band.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CascadeScore {
    /// The weighted sum of z-normalised cosines.
    pub fused: f32,
    pub threshold: f32,
}

/// How a score was judged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judged {
    /// The first-stage score (for a masked probe: the mean of its similarity to the clean and the
    /// masked templates).
    pub score: f32,
    /// The first-stage score at or above which the student alone accepts.
    pub threshold: f32,
    /// The bottom of the band in which a second opinion is asked (the threshold itself when none).
    pub floor: f32,
    /// Set when the second stage was consulted.
    pub cascade: Option<CascadeScore>,
    pub accepted: bool,
}

/// The student-alone threshold of a mode and mask condition (`policy`).
pub fn student_threshold(p: &Policy, mode: Mode, masked: bool) -> f32 {
    match (mode, masked) {
        (Mode::OneToOne, false) => p.match_threshold,
        (Mode::OneToOne, true) => p.match_threshold_masked,
        (Mode::OneToN, false) => p.match_threshold_1n,
        (Mode::OneToN, true) => p.match_threshold_1n_masked,
    }
}

/// The fused z-score of the three cosines (models of weight 0, or without a cosine, left out).
pub fn fuse(c: &Cascade, student: f32, second: SecondCosines) -> f32 {
    let z = |i: usize, cos: f32| c.weights[i] * (cos - c.impostor_mean[i]) / c.impostor_sd[i];
    z(0, student) + z(1, second.teacher) + second.dlib.map(|d| z(2, d)).unwrap_or(0.0)
}

/// Whether the second stage is consulted for a first-stage `score`: an unmasked probe, the cascade
/// on, the score in the mode's band.
pub fn in_band(c: &Cascade, mode: Mode, masked: bool, score: f32) -> bool {
    let b = band(c, mode).band;
    c.enabled && !masked && score >= b[0] && score < b[1]
}

fn band(c: &Cascade, mode: Mode) -> crate::config::CascadeBand {
    match mode {
        Mode::OneToOne => c.one_to_one,
        Mode::OneToN => c.one_to_n,
    }
}

/// Judges a first-stage `score`. `second` gives the second-stage cosines when asked (it runs two more
/// models, so it is called only inside the band); `None` from it (the guest has no second-stage
/// templates, e.g. enrolled before the cascade) falls back to the student-alone threshold.
pub fn judge(
    p: &Policy,
    c: &Cascade,
    mode: Mode,
    masked: bool,
    score: f32,
    second: impl FnOnce() -> Option<SecondCosines>,
) -> Judged {
    let single = student_threshold(p, mode, masked);
    let alone = |score: f32| Judged {
        score,
        threshold: single,
        floor: single,
        cascade: None,
        accepted: score >= single,
    };
    if !c.enabled || masked {
        return alone(score);
    }
    let b = band(c, mode);
    let (floor, top) = (b.band[0], b.band[1]);
    let judged = |cascade: Option<CascadeScore>, accepted: bool| Judged {
        score,
        threshold: top,
        floor,
        cascade,
        accepted,
    };
    if score >= top {
        return judged(None, true);
    }
    if score < floor {
        return judged(None, false);
    }
    match second() {
        Some(s) => {
            let fused = fuse(c, score, s);
            judged(
                Some(CascadeScore {
                    fused,
                    threshold: b.threshold,
                }),
                fused >= b.threshold,
            )
        }
        None => alone(score),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn settings() -> (Policy, Cascade) {
        let mut s = Settings::load_from(None, std::iter::empty()).unwrap();
        s.cascade.enabled = true;
        s.cascade.weights = [0.1, 0.7, 0.2];
        s.cascade.impostor_mean = [0.0, 0.1, 0.5];
        s.cascade.impostor_sd = [0.1, 0.1, 0.05];
        s.cascade.one_to_n.band = [0.55, 0.67];
        s.cascade.one_to_n.threshold = 3.0;
        s.cascade.one_to_one.band = [0.45, 0.60];
        s.cascade.one_to_one.threshold = 2.5;
        (s.policy, s.cascade)
    }

    const STRONG: SecondCosines = SecondCosines {
        teacher: 0.7,
        dlib: Some(0.9),
    };
    const WEAK: SecondCosines = SecondCosines {
        teacher: 0.15,
        dlib: Some(0.5),
    };

    #[test]
    fn the_student_alone_decides_outside_the_band_and_the_second_stage_is_not_run() {
        let (p, c) = settings();
        let never = || -> Option<SecondCosines> { panic!("second stage run outside the band") };
        let hi = judge(&p, &c, Mode::OneToN, false, 0.70, never);
        assert!(hi.accepted && hi.cascade.is_none());
        let lo = judge(&p, &c, Mode::OneToN, false, 0.50, never);
        assert!(!lo.accepted && lo.cascade.is_none());
    }

    #[test]
    fn in_the_band_the_fused_score_decides() {
        let (p, c) = settings();
        let yes = judge(&p, &c, Mode::OneToN, false, 0.60, || Some(STRONG));
        // 0.1 * 6 + 0.7 * 6 + 0.2 * 8 = 6.4 >= 3
        assert!(yes.accepted, "{yes:?}");
        assert!((yes.cascade.unwrap().fused - 6.4).abs() < 1e-4);
        let no = judge(&p, &c, Mode::OneToN, false, 0.60, || Some(WEAK));
        assert!(!no.accepted && no.cascade.is_some());
        // 1:1 has its own band: 0.5 is in it (and below the 1:N band).
        assert!(judge(&p, &c, Mode::OneToOne, false, 0.50, || Some(STRONG)).accepted);
    }

    #[test]
    fn masked_probes_and_a_disabled_cascade_use_the_student_threshold() {
        let (p, mut c) = settings();
        let never = || -> Option<SecondCosines> { panic!("second stage run for a masked probe") };
        let t = p.match_threshold_1n_masked;
        assert!(judge(&p, &c, Mode::OneToN, true, t, never).accepted);
        assert!(!judge(&p, &c, Mode::OneToN, true, t - 0.01, never).accepted);
        c.enabled = false;
        let t = p.match_threshold_1n;
        assert!(!judge(&p, &c, Mode::OneToN, false, t - 0.001, never).accepted);
        assert!(judge(&p, &c, Mode::OneToN, false, t, never).accepted);
    }

    #[test]
    fn a_guest_without_second_stage_templates_falls_back_to_the_student_threshold() {
        let (p, c) = settings();
        let t = p.match_threshold_1n;
        assert!(t > 0.55 && t < 0.67, "the default sits in the test band");
        assert!(judge(&p, &c, Mode::OneToN, false, t + 0.001, || None).accepted);
        assert!(!judge(&p, &c, Mode::OneToN, false, t - 0.001, || None).accepted);
    }

    #[test]
    fn dlib_left_out_when_absent() {
        let (_, c) = settings();
        let with = fuse(&c, 0.6, STRONG);
        let without = fuse(&c, 0.6, SecondCosines { dlib: None, ..STRONG });
        assert!((with - without - 0.2 * 8.0).abs() < 1e-4);
    }
}
