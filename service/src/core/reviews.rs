//! The front desk: decisions needing review (pending ones, then new ones as they happen),
//! overrides, and the audit trail's check.

use super::{now_ms, App, AppError, Caller, Result};
use crate::domain::{Outcome, OverrideAction, ResStatus};
use crate::store::{DecisionRow, OverrideRow, Verification};
use std::collections::{HashSet, VecDeque};
use tokio::sync::{broadcast, watch};

/// A front-desk subscription: REVIEW decisions not yet overridden, oldest first, then each new one
/// as it is recorded; each once, within the caller's property scope.
pub struct ReviewFeed {
    pending: VecDeque<DecisionRow>,
    live: broadcast::Receiver<DecisionRow>,
    filter: Option<String>,
    stop: watch::Receiver<bool>,
    seen: HashSet<String>,
}

impl ReviewFeed {
    /// The next decision to show; `None` when the server shuts down.
    pub async fn next(&mut self) -> Option<DecisionRow> {
        if let Some(d) = self.pending.pop_front() {
            self.seen.insert(d.id.clone());
            return Some(d);
        }
        loop {
            let next = tokio::select! {
                n = self.live.recv() => n,
                _ = self.stop.wait_for(|down| *down) => return None,
            };
            match next {
                Ok(d) => {
                    if self.filter.as_ref().is_some_and(|p| *p != d.property_id) || !self.seen.insert(d.id.clone()) {
                        continue;
                    }
                    return Some(d);
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "review subscriber lagged; it should reconnect for pending reviews"
                    );
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

impl App {
    pub async fn get_decision(&self, caller: &Caller, id: &str) -> Result<DecisionRow> {
        let d = self
            .store
            .get_decision(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("decision {id} not found")))?;
        caller.check_scope(&d.property_id)?;
        Ok(d)
    }

    /// The caller's review feed, for `property` (within the caller's scope; all the caller may see
    /// when `None`).
    pub async fn review_feed(&self, caller: &Caller, property: Option<&str>) -> Result<ReviewFeed> {
        let filter = caller.property_filter(property)?;
        // Subscribe before reading the pending ones, so nothing falls between the two.
        let live = self.reviews.subscribe();
        let stop = self.shutdown_signal();
        let pending = self.store.pending_reviews(filter.as_deref()).await?;
        Ok(ReviewFeed {
            pending: pending.into(),
            live,
            filter,
            stop,
            seen: HashSet::new(),
        })
    }

    /// A staff override: APPROVE checks the guest in, DENY refuses; reason required; audited.
    pub async fn override_decision(
        &self,
        caller: &Caller,
        id: &str,
        action: OverrideAction,
        reason: &str,
    ) -> Result<DecisionRow> {
        let d = self.get_decision(caller, id).await?;
        if d.outcome == Outcome::Retry {
            return Err(AppError::FailedPrecondition(
                "a RETRY is capture guidance, not a decision to override".into(),
            ));
        }
        let approve = action == OverrideAction::Approve;
        if approve && d.reservation_code.is_empty() {
            return Err(AppError::FailedPrecondition(
                "no reservation is attached to this decision; check the guest in at the desk".into(),
            ));
        }
        if approve {
            // The reservation as it is now, not as it was when the kiosk decided (the store checks
            // again, atomically, when it commits).
            let r = self.store.get_reservation(&d.property_id, &d.reservation_code).await?;
            let refused = match &r {
                None => Some("no longer exists"),
                Some(r) if r.erased => Some("belongs to an erased guest"),
                Some(r) => match r.status {
                    ResStatus::Booked => None,
                    ResStatus::Cancelled => Some("was cancelled"),
                    ResStatus::CheckedIn => Some("is already checked in"),
                    ResStatus::CheckedOut => Some("is checked out"),
                },
            };
            if let Some(why) = refused {
                return Err(AppError::FailedPrecondition(format!(
                    "reservation {} {why}; the override was not applied",
                    d.reservation_code
                )));
            }
        }
        let ov = OverrideRow {
            action,
            staff_id: caller.id.clone(),
            reason: reason.to_string(),
            at_ms: now_ms(),
        };
        let final_outcome = if approve { Outcome::Approved } else { Outcome::Denied };
        Ok(self.store.override_decision(id, &ov, final_outcome, approve).await?)
    }

    pub async fn verify_audit(&self) -> Result<Verification> {
        Ok(self.store.verify_audit().await?)
    }
}
