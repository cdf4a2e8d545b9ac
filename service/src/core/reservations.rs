//! Reservations as the reservation system keeps them: upsert, read, health codes, erasure.

use super::{now_ms, App, AppError, Caller, Result};
use crate::domain::HealthRecord;
use crate::store::{ReservationInput, ReservationView};

impl App {
    pub async fn upsert_reservation(&self, caller: &Caller, r: &ReservationInput) -> Result<ReservationView> {
        caller.check_scope(&r.property_id)?;
        Ok(self.store.upsert_reservation(r, &caller.id, now_ms()).await?)
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

    /// Erases a guest: templates out of the store and the index, personal fields cleared, audited.
    pub async fn erase(&self, caller: &Caller, property: &str, code: &str, reason: &str) -> Result<(String, usize)> {
        caller.check_scope(property)?;
        let _lock = self.lock_reservation(property, code).await;
        let (guest_id, ids) = self
            .store
            .erase_guest(property, code, reason, &caller.id, now_ms())
            .await?;
        self.matcher.remove(property, &ids).await?;
        Ok((guest_id, ids.len()))
    }
}
