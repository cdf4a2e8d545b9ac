//! The capture checks (`policy::capture_problems`): how often each sends a photo back, and what the
//! pairs it would have stopped look like.

use crate::pipeline::Done;
use lobby_bench::capture::{self, CaptureFacts, RuleCost, ScoredPair};
use lobby_service::config::Settings;
use lobby_service::vision::Embedding;
use serde::Serialize;
use std::path::Path;

/// `capture` of a dataset's report.
#[derive(Clone, Serialize)]
pub struct CaptureReport {
    pub false_matches_all_1to1: usize,
    pub false_matches_all_1ton: usize,
    pub genuine_pairs: usize,
    pub photos: usize,
    pub rules: Vec<RuleCost>,
    pub tar_all_1to1: f64,
}

/// Each capture check's cost on the photos of `done` (every photo's facts) and, over every pair of
/// them (identity from `id_of`), what it protects.
pub fn capture_costs(done: &Done, settings: &Settings, id_of: impl Fn(&Path) -> Option<String>) -> CaptureReport {
    let mut items: Vec<(String, &CaptureFacts, &Embedding)> = done
        .iter()
        .filter_map(|(p, x)| Some((id_of(p)?, x.capture.as_ref()?, x.embedding.as_ref()?)))
        .collect();
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let facts: Vec<CaptureFacts> = items.iter().map(|(_, f, _)| (*f).clone()).collect();
    let mut pairs = Vec::new();
    for i in 0..items.len() {
        for j in i + 1..items.len() {
            pairs.push(ScoredPair {
                a: i,
                b: j,
                score: items[i].2.cosine(items[j].2),
                genuine: items[i].0 == items[j].0,
            });
        }
    }
    let p = &settings.policy;
    CaptureReport {
        photos: facts.len(),
        genuine_pairs: pairs.iter().filter(|q| q.genuine).count(),
        tar_all_1to1: pairs
            .iter()
            .filter(|q| q.genuine && q.score >= p.match_threshold)
            .count() as f64
            / pairs.iter().filter(|q| q.genuine).count().max(1) as f64,
        false_matches_all_1to1: pairs
            .iter()
            .filter(|q| !q.genuine && q.score >= p.match_threshold)
            .count(),
        false_matches_all_1ton: pairs
            .iter()
            .filter(|q| !q.genuine && q.score >= p.match_threshold_1n)
            .count(),
        rules: capture::costs(p, &facts, &pairs),
    }
}
