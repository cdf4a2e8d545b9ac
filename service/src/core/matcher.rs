//! Matching: the one type that owns the per-property Faiss galleries and asks the store about the
//! guests they hold. 1:1 against a named reservation's templates; 1:N over the property's expected
//! arrivals. Faiss runs on the blocking pool. Which score is a match is `cascade::judge`'s.

use super::{AppError, ModelIds, Result};
use crate::config::Settings;
use crate::domain::TemplateKind;
use crate::gallery::{self, Gallery};
use crate::store::{NewTemplate, ReservationView, Store};
use crate::vision::{Embedding, SecondEmbeddings, EMBEDDING_DIM};
use chrono::NaiveDate;
use std::collections::HashMap;
use std::sync::Arc;

/// A guest's templates, by kind, of the models now loaded.
#[derive(Debug, Default)]
pub struct GuestTemplates {
    clean: Vec<Embedding>,
    masked: Vec<Embedding>,
    teacher: Vec<Embedding>,
    dlib: Vec<Embedding>,
}

fn best(ts: &[Embedding], probe: &Embedding) -> Option<f32> {
    ts.iter().map(|t| probe.cosine(t)).reduce(f32::max)
}

impl GuestTemplates {
    /// The first stage's score (`gallery::fused`); `None` without a clean template.
    pub fn first_stage(&self, probe: &Embedding, masked_probe: bool) -> Option<f32> {
        Some(gallery::fused(
            masked_probe,
            best(&self.clean, probe)?,
            best(&self.masked, probe),
        ))
    }

    /// Whether the guest has the templates the second stage compares (dlib's when `with_dlib`).
    pub fn has_second_stage(&self, with_dlib: bool) -> bool {
        !self.teacher.is_empty() && (!with_dlib || !self.dlib.is_empty())
    }

    /// The second stage's cosines; `None` when the guest lacks a template the fusion needs.
    pub fn second(&self, probe: &SecondEmbeddings, with_dlib: bool) -> Option<super::cascade::SecondCosines> {
        let teacher = best(&self.teacher, &probe.teacher)?;
        let dlib = if with_dlib {
            Some(best(&self.dlib, probe.dlib.as_ref()?)?)
        } else {
            None
        };
        Some(super::cascade::SecondCosines { teacher, dlib })
    }
}

/// The best guest of a 1:N search (their reservation, first-stage score and templates), and the
/// second-best guest's score.
pub struct OneToN {
    pub best: Option<(ReservationView, f32, GuestTemplates)>,
    pub second: Option<f32>,
}

pub struct Matcher {
    gallery: Arc<Gallery>,
    store: Arc<dyn Store>,
    models: ModelIds,
    search_k: usize,
    slack_days: i64,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| AppError::Internal("gallery task failed".into()))?
}

impl Matcher {
    /// The galleries of every property, from the stored templates of the embedder now loaded
    /// (others are counted and ignored, with a warning: those guests must enrol again).
    pub async fn build(store: Arc<dyn Store>, settings: &Settings, models: ModelIds) -> anyhow::Result<Matcher> {
        let gallery = Arc::new(Gallery::new(EMBEDDING_DIM as u32, &settings.gallery.index_factory)?);
        let mut by_property: HashMap<String, Vec<gallery::Item>> = HashMap::new();
        let mut other_model = 0;
        for t in store.indexed_templates().await? {
            // Only the first stage's templates are indexed; the second stage's are read per guest.
            if !t.kind.indexed() {
                continue;
            }
            if t.model_id != models.student {
                other_model += 1;
                continue;
            }
            by_property
                .entry(t.property_id)
                .or_default()
                .push((t.id, t.guest_id, t.kind, t.vector));
        }
        let (properties, templates) = (by_property.len(), by_property.values().map(Vec::len).sum::<usize>());
        let g = gallery.clone();
        blocking(move || {
            for (p, items) in &by_property {
                g.add(p, items)?;
            }
            Ok(())
        })
        .await?;
        if other_model > 0 {
            tracing::warn!(
                templates = other_model,
                "templates of another embedder are not searched; re-enrol those guests"
            );
        }
        tracing::info!(properties, templates, "galleries built");
        Ok(Matcher {
            gallery,
            store,
            models,
            search_k: settings.gallery.search_k,
            slack_days: settings.gallery.stay_slack_days,
        })
    }

    /// Indexes a guest's newly stored templates (`ids` in the order of `templates`).
    pub async fn add(&self, property: &str, guest_id: &str, ids: &[i64], templates: Vec<NewTemplate>) -> Result<()> {
        let items: Vec<gallery::Item> = ids
            .iter()
            .zip(templates)
            .filter(|(_, t)| t.kind.indexed())
            .map(|(id, t)| (*id, guest_id.to_string(), t.kind, t.vector))
            .collect();
        let (g, property) = (self.gallery.clone(), property.to_string());
        blocking(move || Ok(g.add(&property, &items)?)).await
    }

    /// Indexes stored templates (another node's enrolment): the first stage's, of the embedder now
    /// loaded; those already indexed are skipped.
    pub async fn add_stored(&self, templates: Vec<crate::store::StoredTemplate>) -> Result<usize> {
        let mut by_property: HashMap<String, Vec<gallery::Item>> = HashMap::new();
        for t in templates {
            if t.kind.indexed() && t.model_id == self.models.student {
                by_property
                    .entry(t.property_id)
                    .or_default()
                    .push((t.id, t.guest_id, t.kind, t.vector));
            }
        }
        let n = by_property.values().map(Vec::len).sum();
        let g = self.gallery.clone();
        blocking(move || {
            for (p, items) in &by_property {
                g.add(p, items)?;
            }
            Ok(())
        })
        .await?;
        Ok(n)
    }

    /// Templates in a property's index.
    pub fn indexed(&self, property: &str) -> usize {
        self.gallery.len(property)
    }

    /// A property's template ids in the index, and the vectors its Faiss index holds.
    pub fn index_contents(&self, property: &str) -> (Vec<i64>, u64) {
        self.gallery.contents(property)
    }

    /// Takes templates out of a property's index.
    pub async fn remove(&self, property: &str, ids: &[i64]) -> Result<()> {
        let (g, property, ids) = (self.gallery.clone(), property.to_string(), ids.to_vec());
        blocking(move || Ok(g.remove(&property, &ids).map(|_| ())?)).await
    }

    pub async fn guest_templates(&self, guest_id: &str) -> Result<GuestTemplates> {
        let mut g = GuestTemplates::default();
        for t in self.store.guest_templates(guest_id).await? {
            if t.model_id != self.models.of(t.kind) {
                continue;
            }
            let e = Embedding(t.vector);
            match t.kind {
                TemplateKind::Clean => g.clean.push(e),
                TemplateKind::Masked => g.masked.push(e),
                TemplateKind::Teacher => g.teacher.push(e),
                TemplateKind::Dlib => g.dlib.push(e),
            }
        }
        Ok(g)
    }

    /// 1:1: the named reservation, and (when it has a clean template) the probe's
    /// first-stage score against it with the guest's templates.
    pub async fn one_to_one(
        &self,
        property: &str,
        code: &str,
        probe: &Embedding,
        masked: bool,
    ) -> Result<(Option<ReservationView>, Option<(f32, GuestTemplates)>)> {
        let reservation = self.store.get_reservation(property, code).await?;
        let scored = match &reservation {
            Some(r) => {
                let ts = self.guest_templates(&r.guest_id).await?;
                ts.first_stage(probe, masked).map(|s| (s, ts))
            }
            _ => None,
        };
        Ok((reservation, scored))
    }

    /// 1:N over the guests the property expects around `today`: the best guest and the second-best
    /// guest's score (first stage).
    pub async fn one_to_n(&self, property: &str, probe: &Embedding, masked: bool, today: NaiveDate) -> Result<OneToN> {
        let expected = self.store.expected_guests(property, today, self.slack_days).await?;
        let (g, p, q, k) = (
            self.gallery.clone(),
            property.to_string(),
            probe.0.clone(),
            self.search_k,
        );
        let hits = blocking(move || Ok(g.search(&p, &q, masked, k, |guest| expected.contains(guest))?)).await?;
        let best = match hits.first() {
            Some(h) => match self.store.reservation_of_guest(&h.guest_id).await? {
                Some(r) => Some((r, h.score, self.guest_templates(&h.guest_id).await?)),
                None => None,
            },
            None => None,
        };
        Ok(OneToN {
            best,
            second: hits.get(1).map(|h| h.score),
        })
    }
}
