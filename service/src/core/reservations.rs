//! Reservations as the reservation system keeps them: upsert, read, health codes, erasure.

use super::{now_ms, App, AppError, Caller, Result};
use crate::domain::HealthRecord;
use crate::store::{Erased, ReservationInput, ReservationView};

impl App {
    pub async fn upsert_reservation(&self, caller: &Caller, r: &ReservationInput) -> Result<ReservationView> {
        caller.check_scope(&r.property_id)?;
        // A booking that now names another person drops the first one's templates: under the
        // reservation's lock, as an erasure.
        let _lock = self.lock_reservation(&r.property_id, &r.code).await;
        let up = self.store.upsert_reservation(r, &caller.id, now_ms()).await?;
        if up.person_changed {
            self.matcher.remove(&r.property_id, &up.dropped_templates).await?;
        }
        Ok(up.view)
    }

    pub async fn get_reservation(&self, caller: &Caller, property: &str, code: &str) -> Result<ReservationView> {
        caller.check_scope(property)?;
        self.store
            .get_reservation(property, code)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("reservation {property}/{code} not found")))
    }

    pub async fn set_health(
        &self,
        caller: &Caller,
        property: &str,
        code: &str,
        h: &HealthRecord,
    ) -> Result<ReservationView> {
        caller.check_scope(property)?;
        Ok(self.store.set_health(property, code, h, &caller.id, now_ms()).await?)
    }

    /// Erases a guest: templates out of the store and the index, the reservation and the guest's
    /// personal fields deleted, decisions anonymised, audited by pseudonym. A WAL that could not be
    /// cleared at once is retried until it is (and said so in the answer).
    pub async fn erase(&self, caller: &Caller, property: &str, code: &str, reason: &str) -> Result<Erased> {
        caller.check_scope(property)?;
        let _lock = self.lock_reservation(property, code).await;
        let e = self
            .store
            .erase_guest(property, code, reason, &caller.id, now_ms())
            .await?;
        self.matcher.remove(property, &e.templates).await?;
        self.wal_written(e.wal_cleared);
        Ok(e)
    }
}
