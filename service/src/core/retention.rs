//! What is kept for how long (`[retention]`): templates deleted a configured time after departure,
//! no-shows' after their arrival window, cancelled bookings' at once; reservations and their guests
//! forgotten some days after departure, as at an erasure; decisions anonymised after some days.
//! Every purge leaves an audit entry with counts only. The rules read the service's [`Clock`],
//! which the tests move.

use super::{App, Result};
use crate::store::{PropertyCutoffs, PurgeRules, Purged};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};

/// The service's clock: the system's, moved forward only by tests ([`Clock::advance`]) so that
/// the retention rules can be proved without waiting days.
#[derive(Debug, Default)]
pub struct Clock {
    offset_ms: AtomicI64,
}

impl Clock {
    pub fn now_ms(&self) -> i64 {
        super::now_ms() + self.offset_ms.load(Ordering::Relaxed)
    }

    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp_millis(self.now_ms()).unwrap_or_default()
    }

    pub fn advance(&self, by: chrono::Duration) {
        self.offset_ms.fetch_add(by.num_milliseconds(), Ordering::Relaxed);
    }
}

impl App {
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The retention rules' cut-offs now, per property (each in its own calendar).
    async fn purge_rules(&self) -> Result<PurgeRules> {
        let now = self.clock.now();
        let r = &self.settings.retention;
        let t = &self.settings.time;
        let mut rules = PurgeRules {
            decisions_before_ms: (now - chrono::Duration::days(r.decisions_after_days)).timestamp_millis(),
            properties: Vec::new(),
        };
        for property in self.store.properties().await? {
            let today = t.today_at(&property, now);
            rules.properties.push(PropertyCutoffs {
                // Departure day D ends at midnight; its templates go `templates_after_departure_hours`
                // later: D < the date that many hours ago.
                departed_before: t.today_at(
                    &property,
                    now - chrono::Duration::hours(r.templates_after_departure_hours),
                ),
                no_show_arrived_before: today - chrono::Days::new(r.no_show_after_arrival_days as u64),
                forget_departed_before: today - chrono::Days::new(r.guests_after_departure_days as u64),
                property,
            });
        }
        Ok(rules)
    }

    /// Applies the retention rules now: the store in one transaction (an audit entry of counts per
    /// rule), then the indexes. Enrolments and erasures wait meanwhile (every reservation's lock),
    /// so no template the purge deletes reaches an index after it.
    pub async fn run_retention(&self) -> Result<Purged> {
        let rules = self.purge_rules().await?;
        let mut locks = Vec::with_capacity(self.guest_locks.len());
        for l in &self.guest_locks {
            locks.push(l.lock().await);
        }
        let purged = self.store.purge(&rules, self.clock.now_ms()).await?;
        let mut by_property: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
        for (p, id) in &purged.templates {
            by_property.entry(p).or_default().push(*id);
        }
        for (p, ids) in by_property {
            self.matcher.remove(p, &ids).await?;
        }
        drop(locks);
        if purged.counts.values().any(|c| c.values().any(|n| *n > 0)) {
            tracing::info!(counts = ?purged.counts, "retention purge");
        }
        self.wal_written(purged.wal_cleared);
        Ok(purged)
    }

    /// After a deletion: a WAL not yet cleared of the deleted rows is retried by
    /// [`App::clear_wal_if_pending`] until it is, and reported.
    pub(crate) fn wal_written(&self, cleared: bool) {
        if !cleared {
            tracing::warn!("the WAL still holds deleted rows (a reader holds it); retrying every second");
            self.wal_pending.store(true, Ordering::Relaxed);
        }
    }

    /// Retries a WAL checkpoint left pending by a deletion; true when none is pending any more.
    pub async fn clear_wal_if_pending(&self) -> Result<bool> {
        if !self.wal_pending.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let done = self.store.checkpoint_wal().await?;
        if done {
            self.wal_pending.store(false, Ordering::Relaxed);
            tracing::info!("the WAL is cleared of deleted rows");
        }
        Ok(done)
    }
}
