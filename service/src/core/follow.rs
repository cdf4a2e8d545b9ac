//! Several nodes on one PostgreSQL database: each follows the store's change log, so that an
//! enrolment, erasure, cancellation or retention purge made on any node reaches this node's
//! galleries, and a REVIEW decision made on any node reaches this node's review feeds. Woken by
//! `LISTEN lobby_changes` (within milliseconds of the commit), and read by number from the last
//! change applied, so a notification missed (a reconnect, an outage) leaves no gap: the next wake,
//! or the poll every `FOLLOW_POLL`, reads on from there. Applying a change twice does nothing more.

use super::{App, Result};
use crate::store::postgres::{Change, ChangeKind};
use std::sync::Arc;
use std::time::Duration;

/// How often the change log is read even without a notification.
const FOLLOW_POLL: Duration = Duration::from_secs(2);
/// Changes read at a time.
const FOLLOW_PAGE: i64 = 500;

impl App {
    /// Follows the change log for the server's life (PostgreSQL stores only; returns at once on
    /// SQLite, where this process is the only node).
    pub async fn follow_changes(self: Arc<App>) {
        let Some(pg) = self.store.postgres() else { return };
        let wake = Arc::new(tokio::sync::Notify::new());
        let (app, w) = (self.clone(), wake.clone());
        let listener = tokio::spawn(async move {
            let Some(pg) = app.store.postgres() else { return };
            loop {
                if let Err(e) = pg.listen(w.clone()).await {
                    tracing::warn!(error = %e, "change notifications lost; reconnecting");
                }
                w.notify_one();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let _listener = super::AbortOnDrop(listener);
        let node = pg.node().to_string();
        loop {
            if let Err(e) = self.catch_up(&node).await {
                tracing::warn!(error = %e, "cannot read the change log; retrying");
            }
            let mut stop = self.shutdown_signal();
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
                _ = stop.wait_for(|down| *down) => return,
            }
        }
    }

    /// Applies every change after the last one applied; how many.
    pub async fn catch_up(&self, node: &str) -> Result<usize> {
        let Some(pg) = self.store.postgres() else { return Ok(0) };
        // One catch-up at a time (the poll and a notification may overlap).
        let mut last = self.followed.lock().await;
        let mut n = 0;
        loop {
            let page = pg.changes_after(*last, FOLLOW_PAGE).await?;
            for c in &page {
                self.apply_change(c, node).await?;
                *last = c.seq;
                n += 1;
            }
            if (page.len() as i64) < FOLLOW_PAGE {
                return Ok(n);
            }
        }
    }

    async fn apply_change(&self, c: &Change, node: &str) -> Result<()> {
        let Some(pg) = self.store.postgres() else { return Ok(()) };
        match c.kind {
            // Read from the store now: templates deleted since are not there to add.
            ChangeKind::TemplatesAdded => {
                let ts = pg.templates_by_id(&c.template_ids).await?;
                self.matcher.add_stored(ts).await?;
            }
            ChangeKind::TemplatesRemoved => self.matcher.remove(&c.property_id, &c.template_ids).await?,
            // This node's own REVIEWs went to its feeds when they were made.
            ChangeKind::Review if c.origin != node => {
                if let Some(id) = &c.decision_id {
                    if let Some(d) = self.store.get_decision(id).await? {
                        let _ = self.reviews.send(d);
                    }
                }
            }
            ChangeKind::Review => {}
        }
        Ok(())
    }

    /// The last change this node applied (PostgreSQL), for tests and health.
    pub async fn changes_applied(&self) -> i64 {
        *self.followed.lock().await
    }
}
