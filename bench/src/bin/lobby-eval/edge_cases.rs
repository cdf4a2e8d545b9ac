//! Edge cases: whether the detector counts the faces a photo's manifest asserts, and the capture
//! checks on the photos of several people ("one person at a time" should hold).

use crate::pipeline::Ctx;
use anyhow::Result;
use lobby_bench::capture::{self, CaptureFacts, RuleCost};
use lobby_bench::datasets;
use lobby_service::config::Policy;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The report's `edge_cases`.
#[derive(Serialize)]
pub struct EdgeCases {
    pub capture_multi_face: Vec<RuleCost>,
    pub count_asserted: usize,
    pub count_correct: usize,
    pub images: usize,
    pub per_image: Vec<EdgeImage>,
}

#[derive(Serialize)]
pub struct EdgeImage {
    pub category: String,
    pub error: Option<String>,
    pub expected_faces: Option<usize>,
    pub faces_found: usize,
    pub image: String,
}

pub fn eval_edge_cases(ctx: &Ctx, dir: &Path, policy: &Policy) -> Result<EdgeCases> {
    let cases = datasets::edge_cases(dir)?;
    let paths: Vec<PathBuf> = cases.iter().map(|c| c.path.clone()).collect();
    eprintln!("edge_cases: {} images", paths.len());
    let done = ctx.process_all(&paths, false, false, false);
    let (mut asserted, mut right) = (0, 0);
    let mut rows = Vec::new();
    for c in &cases {
        let p = &done[&c.path];
        if let Some(e) = c.expected_faces {
            asserted += 1;
            right += (p.faces == e) as usize;
        }
        rows.push(EdgeImage {
            image: c.rel.clone(),
            category: c.category.clone(),
            expected_faces: c.expected_faces,
            faces_found: p.faces,
            error: p.error.clone(),
        });
    }
    let multi: Vec<PathBuf> = cases
        .iter()
        .filter(|c| c.category == "multi_face")
        .map(|c| c.path.clone())
        .collect();
    let facts: Vec<CaptureFacts> = ctx
        .process_all(&multi, true, false, false)
        .into_values()
        .filter_map(|p| p.capture)
        .collect();
    Ok(EdgeCases {
        images: cases.len(),
        count_asserted: asserted,
        count_correct: right,
        per_image: rows,
        capture_multi_face: capture::costs(policy, &facts, &[]),
    })
}
