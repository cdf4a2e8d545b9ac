//! What each capture check costs and what it protects: how often a rule sends a genuine photo back
//! (RETRY), and whether the photos it sends back would have been matched worse, or falsely, had they
//! gone through. Pure functions over what the pipeline measured per photo.

use lobby_service::config::Policy;
use lobby_service::vision::geometry::BBox;
use lobby_service::vision::quality::COMPARABLE_SIZE_RATIO;
use lobby_service::vision::Quality;
use serde::Serialize;

/// What the capture checks read of one photo.
#[derive(Debug, Clone)]
pub struct CaptureFacts {
    pub width: u32,
    pub height: u32,
    /// Every face found (boxes), and the guest's (primary) one.
    pub faces: Vec<BBox>,
    pub primary: usize,
    pub quality: Quality,
    /// The mask detector's verdict on the guest's face.
    pub masked: bool,
}

fn size(b: &BBox) -> f32 {
    b.w.min(b.h)
}

/// Another face at least `ratio` times the guest's size whose centre lies in the frame's central
/// region (the middle `central` fraction of its width and height): someone at the guest's side.
pub fn second_face_near_centre(f: &CaptureFacts, ratio: f32, central: f32) -> bool {
    let Some(me) = f.faces.get(f.primary) else {
        return false;
    };
    let (w, h) = (f.width as f32, f.height as f32);
    let (mx, my) = ((1.0 - central) / 2.0 * w, (1.0 - central) / 2.0 * h);
    f.faces.iter().enumerate().any(|(i, b)| {
        let c = b.center();
        i != f.primary && size(b) >= ratio * size(me) && c.x >= mx && c.x <= w - mx && c.y >= my && c.y <= h - my
    })
}

/// A capture rule: whether it sends the photo back.
pub type Rule<'a> = Box<dyn Fn(&CaptureFacts) -> bool + 'a>;

/// The rules, each by name, as the service applies them (`policy::capture_problems`), and the
/// alternatives measured.
pub fn rules(p: &Policy) -> Vec<(&'static str, Rule<'_>)> {
    vec![
        (
            "multiple_faces (service: >= 0.6 x the guest, centre in the middle half)",
            Box::new(|f: &CaptureFacts| f.quality.comparable_faces > 1),
        ),
        (
            "multiple_faces (before: any face >= 0.6 x the largest)",
            Box::new(|f: &CaptureFacts| {
                let largest = f.faces.iter().map(size).fold(0.0, f32::max);
                f.faces
                    .iter()
                    .filter(|b| size(b) >= COMPARABLE_SIZE_RATIO * largest)
                    .count()
                    > 1
            }),
        ),
        (
            "multiple_faces (>= 0.8 x the guest, centre in the middle half)",
            Box::new(|f: &CaptureFacts| second_face_near_centre(f, 0.8, 0.5)),
        ),
        (
            "face_too_small",
            Box::new(move |f: &CaptureFacts| f.quality.face_size_px < p.min_face_px),
        ),
        (
            "face_out_of_frame",
            Box::new(move |f: &CaptureFacts| f.quality.out_of_frame > p.max_out_of_frame),
        ),
        (
            "too_dark",
            Box::new(move |f: &CaptureFacts| f.quality.brightness < p.min_brightness),
        ),
        (
            "too_bright",
            Box::new(move |f: &CaptureFacts| f.quality.brightness > p.max_brightness),
        ),
        (
            "blurred",
            Box::new(move |f: &CaptureFacts| f.quality.sharpness < p.min_sharpness),
        ),
        (
            "head_turned (service: yaw/pitch for unmasked faces, roll)",
            Box::new(move |f: &CaptureFacts| {
                let q = &f.quality;
                (!f.masked && (q.yaw_deg.abs() > p.max_yaw_deg || q.pitch_deg.abs() > p.max_pitch_deg))
                    || q.roll_deg.abs() > p.max_roll_deg
            }),
        ),
        (
            "yaw > 35 (before: masked faces too)",
            Box::new(|f: &CaptureFacts| f.quality.yaw_deg.abs() > 35.0),
        ),
        ("yaw > 45", Box::new(|f: &CaptureFacts| f.quality.yaw_deg.abs() > 45.0)),
        (
            "pitch > 35",
            Box::new(|f: &CaptureFacts| f.quality.pitch_deg.abs() > 35.0),
        ),
        (
            "pitch > 45",
            Box::new(|f: &CaptureFacts| f.quality.pitch_deg.abs() > 45.0),
        ),
        (
            "roll > 30",
            Box::new(|f: &CaptureFacts| f.quality.roll_deg.abs() > 30.0),
        ),
        (
            "roll > 45",
            Box::new(|f: &CaptureFacts| f.quality.roll_deg.abs() > 45.0),
        ),
    ]
}

/// How often a rule sends a photo back, and what happens to the pairs it would have stopped.
#[derive(Debug, Clone, Serialize)]
pub struct RuleCost {
    pub rule: String,
    pub photos: usize,
    pub sent_back: usize,
    pub rate: f64,
    /// Genuine pairs with a photo the rule sends back, and their TAR at the 1:1 threshold (vs all
    /// genuine pairs' TAR): a rule that protects matching shows a much lower TAR here.
    pub genuine_pairs_hit: usize,
    pub tar_hit: Option<f64>,
    /// Impostor pairs with a photo the rule sends back, and their false matches at the 1:1 and the
    /// 1:N threshold: a rule that keeps false matches out shows a higher rate here than overall.
    pub impostor_pairs_hit: usize,
    pub false_matches_hit_1to1: usize,
    pub false_matches_hit_1ton: usize,
}

/// A scored pair of photos (indices into the facts) with its label.
pub struct ScoredPair {
    pub a: usize,
    pub b: usize,
    pub score: f32,
    pub genuine: bool,
}

/// Each rule's cost on `facts`, with `pairs` (may be empty) showing what it protects.
pub fn costs(p: &Policy, facts: &[CaptureFacts], pairs: &[ScoredPair]) -> Vec<RuleCost> {
    rules(p)
        .into_iter()
        .map(|(name, rule)| {
            let hit: Vec<bool> = facts.iter().map(&rule).collect();
            let sent_back = hit.iter().filter(|h| **h).count();
            let touched = |q: &ScoredPair| hit[q.a] || hit[q.b];
            let gen: Vec<&ScoredPair> = pairs.iter().filter(|q| q.genuine && touched(q)).collect();
            let imp: Vec<&ScoredPair> = pairs.iter().filter(|q| !q.genuine && touched(q)).collect();
            RuleCost {
                rule: name.to_string(),
                photos: facts.len(),
                sent_back,
                rate: sent_back as f64 / facts.len().max(1) as f64,
                genuine_pairs_hit: gen.len(),
                tar_hit: (!gen.is_empty())
                    .then(|| gen.iter().filter(|q| q.score >= p.match_threshold).count() as f64 / gen.len() as f64),
                impostor_pairs_hit: imp.len(),
                false_matches_hit_1to1: imp.iter().filter(|q| q.score >= p.match_threshold).count(),
                false_matches_hit_1ton: imp.iter().filter(|q| q.score >= p.match_threshold_1n).count(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bx(x: f32, y: f32, s: f32) -> BBox {
        BBox { x, y, w: s, h: s }
    }

    #[test]
    fn a_second_face_counts_only_near_the_centre_and_comparable() {
        let facts = |other: BBox| CaptureFacts {
            width: 640,
            height: 480,
            faces: vec![bx(270.0, 190.0, 100.0), other],
            primary: 0,
            quality: Quality::default(),
            masked: false,
        };
        // Beside the guest, as large: near the centre.
        assert!(second_face_near_centre(&facts(bx(380.0, 190.0, 90.0)), 0.6, 0.5));
        // In a corner of the frame.
        assert!(!second_face_near_centre(&facts(bx(560.0, 20.0, 90.0)), 0.6, 0.5));
        // Small, behind the guest.
        assert!(!second_face_near_centre(&facts(bx(300.0, 150.0, 40.0)), 0.6, 0.5));
    }
}
