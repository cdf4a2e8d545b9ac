//! Per-property Faiss galleries: an IDMap over inner product (flat by default, any factory string),
//! keyed by template id, built from the store at start and updated on enrolment and erasure. Vectors
//! are L2-normalised, so inner product is cosine similarity.

use faiss::index::IndexImpl;
use faiss::selector::IdSelector;
use faiss::{index_factory, Idx, Index, MetricType};
use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

#[derive(Debug, thiserror::Error)]
#[error("gallery: {0}")]
pub struct GalleryError(pub String);

fn err(e: impl std::fmt::Display) -> GalleryError {
    GalleryError(e.to_string())
}

struct PropertyIndex {
    index: IndexImpl,
    /// template id -> guest id
    owner: HashMap<i64, String>,
}

/// A guest's best score in a search.
#[derive(Debug, Clone, PartialEq)]
pub struct GuestHit {
    pub guest_id: String,
    pub score: f32,
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
                }),
            );
        }
        let p = map.get(property).ok_or_else(|| err("property index vanished"))?;
        let r = f(&mut p.lock().unwrap_or_else(|e| e.into_inner()));
        r
    }

    /// Adds templates `(template id, guest id, vector)` to a property's index.
    pub fn add(&self, property: &str, items: &[(i64, String, Vec<f32>)]) -> Result<(), GalleryError> {
        if items.is_empty() {
            return Ok(());
        }
        let mut data = Vec::with_capacity(items.len() * self.dim as usize);
        let mut ids = Vec::with_capacity(items.len());
        for (id, _, v) in items {
            if v.len() != self.dim as usize {
                return Err(err(format!(
                    "template {id} has {} values, expected {}",
                    v.len(),
                    self.dim
                )));
            }
            data.extend_from_slice(v);
            ids.push(Idx::new(*id as u64));
        }
        self.with_property(property, |p| {
            if !p.index.is_trained() {
                p.index.train(&data).map_err(err)?;
            }
            p.index.add_with_ids(&data, &ids).map_err(err)?;
            for (id, guest, _) in items {
                p.owner.insert(*id, guest.clone());
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
                p.owner.remove(id);
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

    /// Best score per guest among the guests `eligible` accepts, best first. Searches `k` nearest
    /// templates and widens the search until at least two eligible guests are seen or the whole
    /// index was covered, so a filter that rejects the nearest templates never hides a guest.
    pub fn search(
        &self,
        property: &str,
        query: &[f32],
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
            let mut best: HashMap<&str, f32> = HashMap::new();
            for (label, score) in res.labels.iter().zip(res.distances.iter()) {
                let Some(id) = label.get() else { continue };
                let Some(guest) = p.owner.get(&(id as i64)) else {
                    continue;
                };
                if !eligible(guest) {
                    continue;
                }
                let e = best.entry(guest.as_str()).or_insert(f32::NEG_INFINITY);
                *e = e.max(*score);
            }
            if best.len() >= 2 || k >= total {
                let mut hits: Vec<GuestHit> = best
                    .into_iter()
                    .map(|(g, s)| GuestHit {
                        guest_id: g.to_string(),
                        score: s,
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
        g.add(
            "p1",
            &[
                (1, "alice".into(), unit(8, 0)),
                (2, "bob".into(), unit(8, 1)),
                (3, "alice".into(), unit(8, 2)),
            ],
        )
        .unwrap();
        g.add("p2", &[(4, "carol".into(), unit(8, 0))]).unwrap();
        let hits = g.search("p1", &unit(8, 0), 2, |_| true).unwrap();
        assert_eq!(hits[0].guest_id, "alice");
        assert!((hits[0].score - 1.0).abs() < 1e-6);
        // Properties are separate.
        assert_eq!(g.search("p2", &unit(8, 1), 5, |_| true).unwrap()[0].guest_id, "carol");
        // The filter hides alice; bob is still found even though alice's templates are nearest.
        let hits = g.search("p1", &unit(8, 0), 1, |gid| gid != "alice").unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].guest_id, "bob");
        // Erasure removes alice from the index.
        assert_eq!(g.remove("p1", &[1, 3]).unwrap(), 2);
        let hits = g.search("p1", &unit(8, 0), 5, |_| true).unwrap();
        assert!(hits.iter().all(|h| h.guest_id != "alice"));
        assert_eq!(g.len("p1"), 1);
        assert!(g.search("nowhere", &unit(8, 0), 5, |_| true).unwrap().is_empty());
    }

    #[test]
    fn bad_factory_is_refused() {
        assert!(Gallery::new(8, "NoSuchIndex").is_err());
    }
}
