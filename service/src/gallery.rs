//! Per-property Faiss galleries: an IDMap over inner product (flat by default, any factory string),
//! keyed by template id, built from the store at start and updated on enrolment and erasure. Vectors
//! are L2-normalised, so inner product is cosine similarity.
//!
//! A guest has clean templates and, from mask-aware enrolment, masked ones (the enrolment photo with
//! synthetic masks). An unmasked probe is scored against the clean templates; a masked probe by the
//! mean of its best similarity to each kind (a reference study found the mean clearly better than
//! the max on real masked faces).

use faiss::index::IndexImpl;
use faiss::selector::IdSelector;
use faiss::{index_factory, Idx, Index, MetricType};
use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

#[derive(Debug, thiserror::Error)]
#[error("gallery: {0}")]
pub struct GalleryError(pub String);

pub use crate::domain::TemplateKind;

fn err(e: impl std::fmt::Display) -> GalleryError {
    GalleryError(e.to_string())
}

/// A template to index: id, guest, kind, vector.
pub type Item = (i64, String, TemplateKind, Vec<f32>);

struct PropertyIndex {
    index: IndexImpl,
    /// template id -> (guest id, kind)
    owner: HashMap<i64, (String, TemplateKind)>,
    /// guest id -> number of masked templates
    masked: HashMap<String, usize>,
}

/// A guest's score in a search: the best similarity to its clean and to its masked templates, and
/// the score the decision uses ([`fused`]).
#[derive(Debug, Clone, PartialEq)]
pub struct GuestHit {
    pub guest_id: String,
    pub clean: f32,
    pub masked: Option<f32>,
    pub score: f32,
}

/// The score of a probe against one guest: the best clean similarity for an unmasked probe; for a
/// masked probe the mean of the best clean and the best masked similarity (clean alone when the
/// guest has no masked template).
pub fn fused(masked_probe: bool, clean: f32, masked: Option<f32>) -> f32 {
    match (masked_probe, masked) {
        (true, Some(m)) => 0.5 * (clean + m),
        _ => clean,
    }
}

pub struct Gallery {
    dim: u32,
    factory: String,
    properties: RwLock<HashMap<String, Mutex<PropertyIndex>>>,
}

impl Gallery {
    /// `factory` is a Faiss index factory string (e.g. `Flat`, `HNSW32`); an `IDMap` is added in front
    /// unless the string already has one. Checked here, so a bad string stops the server at start.
    pub fn new(dim: u32, factory: &str) -> Result<Gallery, GalleryError> {
        let factory = if factory.contains("IDMap") {
            factory.to_string()
        } else {
            format!("IDMap,{factory}")
        };
        index_factory(dim, &factory, MetricType::InnerProduct).map_err(err)?;
        Ok(Gallery {
            dim,
            factory,
            properties: RwLock::new(HashMap::new()),
        })
    }

    fn with_property<T>(
        &self,
        property: &str,
        f: impl FnOnce(&mut PropertyIndex) -> Result<T, GalleryError>,
    ) -> Result<T, GalleryError> {
        {
            let map = self.properties.read().unwrap_or_else(|e| e.into_inner());
            if let Some(p) = map.get(property) {
                return f(&mut p.lock().unwrap_or_else(|e| e.into_inner()));
            }
        }
        let mut map = self.properties.write().unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(property) {
            let index = index_factory(self.dim, &self.factory, MetricType::InnerProduct).map_err(err)?;
            map.insert(
                property.to_string(),
                Mutex::new(PropertyIndex {
                    index,
                    owner: HashMap::new(),
                    masked: HashMap::new(),
                }),
            );
        }
        let p = map.get(property).ok_or_else(|| err("property index vanished"))?;
        let r = f(&mut p.lock().unwrap_or_else(|e| e.into_inner()));
        r
    }

    /// Adds templates `(template id, guest id, kind, vector)` to a property's index.
    pub fn add(&self, property: &str, items: &[Item]) -> Result<(), GalleryError> {
        if items.is_empty() {
            return Ok(());
        }
        for (id, _, kind, v) in items {
            if !kind.indexed() {
                return Err(err(format!(
                    "template {id} ({}) is not a first-stage template",
                    kind.as_str()
                )));
            }
            if v.len() != self.dim as usize {
                return Err(err(format!(
                    "template {id} has {} values, expected {}",
                    v.len(),
                    self.dim
                )));
            }
        }
        self.with_property(property, |p| {
            // Templates already indexed are skipped: adding is idempotent (a node applies the
            // change log's additions it made itself, too).
            let new: Vec<&Item> = items.iter().filter(|(id, ..)| !p.owner.contains_key(id)).collect();
            if new.is_empty() {
                return Ok(());
            }
            let mut data = Vec::with_capacity(new.len() * self.dim as usize);
            let mut ids = Vec::with_capacity(new.len());
            for (id, _, _, v) in &new {
                data.extend_from_slice(v);
                ids.push(Idx::new(*id as u64));
            }
            if !p.index.is_trained() {
                p.index.train(&data).map_err(err)?;
            }
            p.index.add_with_ids(&data, &ids).map_err(err)?;
            for (id, guest, kind, _) in new {
                p.owner.insert(*id, (guest.clone(), *kind));
                if *kind == TemplateKind::Masked {
                    *p.masked.entry(guest.clone()).or_default() += 1;
                }
            }
            Ok(())
        })
    }

    /// Removes templates by id from a property's index; returns how many were removed.
    pub fn remove(&self, property: &str, template_ids: &[i64]) -> Result<usize, GalleryError> {
        if template_ids.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Idx> = template_ids.iter().map(|i| Idx::new(*i as u64)).collect();
        self.with_property(property, |p| {
            let sel = IdSelector::batch(&ids).map_err(err)?;
            let n = p.index.remove_ids(&sel).map_err(err)?;
            for id in template_ids {
                if let Some((guest, TemplateKind::Masked)) = p.owner.remove(id) {
                    if let Some(c) = p.masked.get_mut(&guest) {
                        *c = c.saturating_sub(1);
                        if *c == 0 {
                            p.masked.remove(&guest);
                        }
                    }
                }
            }
            Ok(n)
        })
    }

    pub fn len(&self, property: &str) -> usize {
        let map = self.properties.read().unwrap_or_else(|e| e.into_inner());
        map.get(property)
            .map(|p| p.lock().unwrap_or_else(|e| e.into_inner()).owner.len())
            .unwrap_or(0)
    }

    pub fn is_empty(&self, property: &str) -> bool {
        self.len(property) == 0
    }

    /// A property's template ids, as the index maps them to guests, and the number of vectors its
    /// Faiss index holds (the two agree unless the index was corrupted).
    pub fn contents(&self, property: &str) -> (Vec<i64>, u64) {
        let map = self.properties.read().unwrap_or_else(|e| e.into_inner());
        match map.get(property) {
            Some(p) => {
                let p = p.lock().unwrap_or_else(|e| e.into_inner());
                (p.owner.keys().copied().collect(), p.index.ntotal())
            }
            None => (Vec::new(), 0),
        }
    }

    /// Score per guest among the guests `eligible` accepts, best first. Searches `k` nearest
    /// templates and widens the search until at least two eligible guests are seen with every
    /// score they need (clean, and masked for a masked probe when they have masked templates) or the
    /// whole index was covered, so a filter that rejects the nearest templates never hides a guest.
    pub fn search(
        &self,
        property: &str,
        query: &[f32],
        masked_probe: bool,
        k: usize,
        eligible: impl Fn(&str) -> bool,
    ) -> Result<Vec<GuestHit>, GalleryError> {
        if query.len() != self.dim as usize {
            return Err(err("query has the wrong dimension"));
        }
        let map = self.properties.read().unwrap_or_else(|e| e.into_inner());
        let Some(p) = map.get(property) else { return Ok(vec![]) };
        let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
        let total = p.index.ntotal() as usize;
        let mut k = k.max(1).min(total.max(1));
        loop {
            let res = p.index.search(query, k).map_err(err)?;
            // guest -> (best clean, best masked)
            let mut best: HashMap<&str, (Option<f32>, Option<f32>)> = HashMap::new();
            for (label, score) in res.labels.iter().zip(res.distances.iter()) {
                let Some(id) = label.get() else { continue };
                let Some((guest, kind)) = p.owner.get(&(id as i64)) else {
                    continue;
                };
                if !eligible(guest) {
                    continue;
                }
                let e = best.entry(guest.as_str()).or_default();
                let slot = match kind {
                    TemplateKind::Masked => &mut e.1,
                    _ => &mut e.0,
                };
                *slot = Some(slot.map_or(*score, |s: f32| s.max(*score)));
            }
            let complete = |g: &str, c: &(Option<f32>, Option<f32>)| {
                c.0.is_some() && (!masked_probe || c.1.is_some() || !p.masked.contains_key(g))
            };
            if best.iter().filter(|(g, c)| complete(g, c)).count() >= 2 || k >= total {
                let mut hits: Vec<GuestHit> = best
                    .into_iter()
                    .filter_map(|(g, (c, m))| {
                        let clean = c?;
                        Some(GuestHit {
                            guest_id: g.to_string(),
                            clean,
                            masked: m,
                            score: fused(masked_probe, clean, m),
                        })
                    })
                    .collect();
                hits.sort_by(|a, b| b.score.total_cmp(&a.score));
                return Ok(hits);
            }
            k = (k * 4).min(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(dim: usize, hot: usize) -> Vec<f32> {
        let mut v = vec![0.0; dim];
        v[hot] = 1.0;
        v
    }

    #[test]
    fn add_search_filter_and_remove() {
        let g = Gallery::new(8, "Flat").unwrap();
        let c = TemplateKind::Clean;
        g.add(
            "p1",
            &[
                (1, "alice".into(), c, unit(8, 0)),
                (2, "bob".into(), c, unit(8, 1)),
                (3, "alice".into(), c, unit(8, 2)),
            ],
        )
        .unwrap();
        g.add("p2", &[(4, "carol".into(), c, unit(8, 0))]).unwrap();
        let hits = g.search("p1", &unit(8, 0), false, 2, |_| true).unwrap();
        assert_eq!(hits[0].guest_id, "alice");
        assert!((hits[0].score - 1.0).abs() < 1e-6);
        // Properties are separate.
        assert_eq!(
            g.search("p2", &unit(8, 1), false, 5, |_| true).unwrap()[0].guest_id,
            "carol"
        );
        // The filter hides alice; bob is still found even though alice's templates are nearest.
        let hits = g.search("p1", &unit(8, 0), false, 1, |gid| gid != "alice").unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].guest_id, "bob");
        // Erasure removes alice from the index.
        assert_eq!(g.remove("p1", &[1, 3]).unwrap(), 2);
        let hits = g.search("p1", &unit(8, 0), false, 5, |_| true).unwrap();
        assert!(hits.iter().all(|h| h.guest_id != "alice"));
        assert_eq!(g.len("p1"), 1);
        assert!(g.search("nowhere", &unit(8, 0), false, 5, |_| true).unwrap().is_empty());
    }

    #[test]
    fn a_masked_probe_is_scored_by_the_mean_of_clean_and_masked_templates() {
        let g = Gallery::new(8, "Flat").unwrap();
        let mut near = unit(8, 0);
        near[1] = 1.0;
        let n = 2f32.sqrt();
        let near: Vec<f32> = near.iter().map(|x| x / n).collect();
        g.add(
            "p",
            &[
                (1, "alice".into(), TemplateKind::Clean, unit(8, 1)),
                (2, "alice".into(), TemplateKind::Masked, unit(8, 0)),
                (3, "bob".into(), TemplateKind::Clean, near),
                (4, "bob".into(), TemplateKind::Clean, unit(8, 5)),
            ],
        )
        .unwrap();
        // Unmasked probe along axis 0: bob's clean template is nearer than alice's.
        let hits = g.search("p", &unit(8, 0), false, 1, |_| true).unwrap();
        assert_eq!(hits[0].guest_id, "bob");
        // Masked probe: alice scores (0 + 1) / 2, bob (no masked template) his clean 0.707.
        let hits = g.search("p", &unit(8, 0), true, 1, |_| true).unwrap();
        let alice = hits.iter().find(|h| h.guest_id == "alice").unwrap();
        assert!((alice.score - 0.5).abs() < 1e-6 && alice.masked == Some(1.0));
        assert_eq!(hits[0].guest_id, "bob");
        // Erasing alice's masked template: her masked probe score falls back to clean.
        g.remove("p", &[2]).unwrap();
        let hits = g.search("p", &unit(8, 0), true, 4, |_| true).unwrap();
        let alice = hits.iter().find(|h| h.guest_id == "alice").unwrap();
        assert_eq!((alice.score, alice.masked), (0.0, None));
    }

    #[test]
    fn bad_factory_is_refused() {
        assert!(Gallery::new(8, "NoSuchIndex").is_err());
    }
}
