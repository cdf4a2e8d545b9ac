//! Uncropped identities (whole photos, as a kiosk takes them): verification at LFW's threshold,
//! rank-1 identification against a one-photo-per-person gallery, and the capture checks.

use crate::capture_checks::{capture_costs, CaptureReport};
use crate::pipeline::{pair_scores, round, unique_images, Ctx};
use anyhow::Result;
use lobby_bench::datasets;
use lobby_bench::metrics;
use lobby_service::config::Settings;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The report's `uncropped_identities`.
#[derive(Serialize)]
pub struct Uncropped {
    /// None (null) when LFW did not run.
    pub accuracy_at_lfw_threshold: Option<f64>,
    pub best_accuracy: f64,
    pub capture: CaptureReport,
    pub different_mean_cosine: f64,
    pub faces_found: usize,
    pub identification_gallery: usize,
    pub identification_probes: usize,
    pub identification_rank1: f64,
    pub images: usize,
    pub pairs: usize,
    pub same_mean_cosine: f64,
}

pub fn eval_uncropped(ctx: &Ctx, dir: &Path, lfw_threshold: Option<f32>, settings: &Settings) -> Result<Uncropped> {
    let (pairs, ids) = datasets::uncropped(dir)?;
    let mut images = unique_images(&pairs);
    images.extend(ids.iter().map(|(p, _)| p.clone()));
    images.sort();
    images.dedup();
    eprintln!("uncropped_identities: {} pairs, {} images", pairs.len(), images.len());
    let done = ctx.process_all(&images, true, false, false);
    let scores = pair_scores(&pairs, &done);
    let labels: Vec<bool> = pairs.iter().map(|p| p.same).collect();
    let mean = |want: bool| {
        let v: Vec<f32> = scores
            .iter()
            .zip(&labels)
            .filter(|(_, l)| **l == want)
            .map(|(s, _)| *s)
            .collect();
        v.iter().sum::<f32>() as f64 / v.len().max(1) as f64
    };
    // 1:N: per identity, the first image (by name) is the gallery; every other image is a probe.
    let mut by_id: BTreeMap<&str, Vec<&PathBuf>> = BTreeMap::new();
    for (p, id) in &ids {
        by_id.entry(id.as_str()).or_default().push(p);
    }
    let mut gallery = Vec::new();
    let mut probes = Vec::new();
    for (id, mut v) in by_id {
        v.sort();
        let mut emb = v
            .iter()
            .filter_map(|p| done.get(*p).and_then(|x| x.embedding.clone()).map(|e| (*p, e)));
        if let Some((_, g)) = emb.next() {
            gallery.push((id, g));
            probes.extend(emb.map(|(_, e)| (id, e)));
        }
    }
    let rank1 = probes
        .iter()
        .filter(|(id, e)| {
            gallery
                .iter()
                .max_by(|a, b| a.1.cosine(e).total_cmp(&b.1.cosine(e)))
                .map(|g| g.0 == *id)
                .unwrap_or(false)
        })
        .count();
    Ok(Uncropped {
        pairs: pairs.len(),
        images: images.len(),
        faces_found: done.values().filter(|p| p.embedding.is_some()).count(),
        accuracy_at_lfw_threshold: lfw_threshold.map(|t| round(metrics::accuracy_at(&scores, &labels, t), 5)),
        best_accuracy: round(
            metrics::accuracy_at(&scores, &labels, metrics::best_threshold(&scores, &labels)),
            5,
        ),
        same_mean_cosine: round(mean(true), 4),
        different_mean_cosine: round(mean(false), 4),
        identification_gallery: gallery.len(),
        identification_probes: probes.len(),
        identification_rank1: round(rank1 as f64 / probes.len().max(1) as f64, 5),
        capture: capture_costs(&done, settings, |p| {
            ids.iter().find(|(q, _)| q == p).map(|(_, id)| id.clone())
        }),
    })
}
