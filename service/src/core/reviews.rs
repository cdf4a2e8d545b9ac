//! The front desk: decisions needing review (pending ones, then new ones as they happen),
//! overrides, and the audit trail's check.

use super::{now_ms, App, AppError, Caller, Result};
use crate::domain::{Outcome, OverrideAction, ResStatus};
use crate::store::{DecisionRow, OverrideRow, ReviewCursor};
use std::collections::{HashSet, VecDeque};
use tokio::sync::{broadcast, watch};

/// Pending reviews read from the store at a time (a feed and a listing page at most this many).
pub const REVIEW_PAGE: usize = 100;

/// A front-desk subscription: REVIEW decisions not yet overridden, oldest first (read from the
/// store a page at a time), then each new one as it is recorded; each once, within the caller's
/// property scope. Bounded: it holds one page, and remembers only the pending decisions recorded
/// after it subscribed (the only ones that can also arrive live).
pub struct ReviewFeed {
    store: std::sync::Arc<dyn crate::store::Store>,
    page: VecDeque<DecisionRow>,
    cursor: Option<ReviewCursor>,
    pending_done: bool,
    subscribed_at_ms: i64,
    live: broadcast::Receiver<DecisionRow>,
    filter: Option<String>,
    stop: watch::Receiver<bool>,
    overlap: HashSet<String>,
    _slot: super::StreamSlot,
}

/// Why a feed ended.
#[derive(Debug, PartialEq, Eq)]
pub enum FeedEnd {
    /// The server is shutting down.
    Shutdown,
    /// The subscriber fell behind the live decisions; it should reconnect (and gets the pending
    /// reviews again).
    Lagged(u64),
}

impl ReviewFeed {
    /// The next decision to show.
    pub async fn next(&mut self) -> Result<std::result::Result<DecisionRow, FeedEnd>> {
        if !self.pending_done {
            if self.page.is_empty() {
                let page = self
                    .store
                    .pending_reviews(self.filter.as_deref(), self.cursor.as_ref(), REVIEW_PAGE)
                    .await?;
                self.pending_done = page.len() < REVIEW_PAGE;
                self.page = page.into();
            }
            if let Some(d) = self.page.pop_front() {
                self.cursor = Some(ReviewCursor::of(&d));
                // Clocks: a second of slack for a decision timed just before the subscription.
                if d.created_at_ms >= self.subscribed_at_ms - 1000 {
                    self.overlap.insert(d.id.clone());
                }
                return Ok(Ok(d));
            }
        }
        loop {
            let next = tokio::select! {
                n = self.live.recv() => n,
                _ = self.stop.wait_for(|down| *down) => return Ok(Err(FeedEnd::Shutdown)),
            };
            match next {
                Ok(d) => {
                    if self.filter.as_ref().is_some_and(|p| *p != d.property_id) || self.overlap.remove(&d.id) {
                        continue;
                    }
                    return Ok(Ok(d));
                }
                Err(broadcast::error::RecvError::Lagged(n)) => return Ok(Err(FeedEnd::Lagged(n))),
                Err(broadcast::error::RecvError::Closed) => return Ok(Err(FeedEnd::Shutdown)),
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
        let slot = self.stream_slot(caller)?;
        let live = self.reviews.subscribe();
        Ok(ReviewFeed {
            _slot: slot,
            store: self.store.clone(),
            page: VecDeque::new(),
            cursor: None,
            pending_done: false,
            subscribed_at_ms: now_ms(),
            live,
            filter,
            stop: self.shutdown_signal(),
            overlap: HashSet::new(),
        })
    }

    /// A page of pending reviews (oldest first) after `after`, within the caller's scope; at most
    /// [`REVIEW_PAGE`].
    pub async fn pending_reviews(
        &self,
        caller: &Caller,
        property: Option<&str>,
        after: Option<&ReviewCursor>,
        limit: usize,
    ) -> Result<Vec<DecisionRow>> {
        let filter = caller.property_filter(property)?;
        let limit = limit.clamp(1, REVIEW_PAGE);
        Ok(self.store.pending_reviews(filter.as_deref(), after, limit).await?)
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
}
