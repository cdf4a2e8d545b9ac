//! The search index against the store: after a restart (a crash included), an enrolment or an
//! erasure, a property's Faiss index must hold exactly the store's first-stage templates of the
//! embedder now loaded. Staff ask with `FrontDeskService.CheckIndex`; the crash trials
//! (`lobby-crash`) ask after every restart.

use super::{App, Caller, Result};
use std::collections::HashSet;

/// A property's index against the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexCheck {
    /// Vectors in the property's Faiss index.
    pub indexed: u64,
    /// Templates in the store the index should hold.
    pub stored: u64,
    /// Stored templates the index does not map.
    pub missing_from_index: u64,
    /// Templates the index maps that the store does not hold (erased, or never committed).
    pub not_in_store: u64,
}

impl App {
    /// Compares a property's index with the store. Every reservation's lock is held meanwhile, so
    /// no enrolment or erasure commits between the two reads. Reads every stored template: a
    /// check, not a hot path.
    pub async fn check_index(&self, caller: &Caller, property: &str) -> Result<IndexCheck> {
        caller.check_scope(property)?;
        // Taken in index order, as nothing else holds more than one.
        let mut locks = Vec::with_capacity(self.guest_locks.len());
        for l in &self.guest_locks {
            locks.push(l.lock().await);
        }
        let stored: HashSet<i64> = self
            .store
            .all_templates()
            .await?
            .into_iter()
            .filter(|t| t.property_id == property && t.kind.indexed() && t.model_id == self.models.student)
            .map(|t| t.id)
            .collect();
        let (ids, indexed) = self.matcher.index_contents(property);
        drop(locks);
        let ids: HashSet<i64> = ids.into_iter().collect();
        Ok(IndexCheck {
            indexed,
            stored: stored.len() as u64,
            missing_from_index: stored.difference(&ids).count() as u64,
            not_in_store: ids.difference(&stored).count() as u64,
        })
    }
}
