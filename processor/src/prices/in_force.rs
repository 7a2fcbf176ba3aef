//! Whether this processor's derived windows are the ones in force ([`InForce`]): what decides whether it
//! consumes prices at all.
//!
//! A processor left on other windows than the stored values' (a rolling update that changed them, the
//! old processes not yet stopped) can commit no price batch: each is refused ([`super::WindowsChanged`]).
//! Once one is, the processor stands aside from prices: it stops its shared price consumer, and in an
//! elastic group takes no price partition (its record says so: `aside`), so the processors with the
//! windows in force get every price at once instead of after its failures and their backoff. It checks
//! `settings` every [`RECHECK`] and takes prices again once the windows in force are its own (a
//! rollback). Its other consumers go on.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tributary_store::sqlx::{self, PgPool};

/// How often a processor standing aside asks whether its windows are in force again.
pub const RECHECK: Duration = Duration::from_secs(1);

/// Whether this processor's windows are the ones the stored derived values are computed with, as far as
/// it knows: yes until a price batch is refused, then no until `settings` records its windows again.
#[derive(Clone)]
pub struct InForce {
    pool: PgPool,
    /// This processor's windows, as `settings` records them.
    ours: serde_json::Value,
    state: Arc<watch::Sender<bool>>,
}

impl InForce {
    /// In force until a batch finds otherwise.
    pub fn new(pool: PgPool, ours: serde_json::Value) -> Self {
        metrics::gauge!(tributary_broker::metric_names::WINDOWS_IN_FORCE).set(1.0);
        InForce { pool, ours, state: Arc::new(watch::Sender::new(true)) }
    }

    /// Whether the windows are in force, as last found.
    pub fn is(&self) -> bool {
        *self.state.borrow()
    }

    /// A price batch was refused: the stored values are of the windows `stored`.
    pub(crate) fn refused(&self, stored: &serde_json::Value) {
        if self.state.send_replace(false) {
            tracing::warn!(
                stored = %stored, ours = %self.ours,
                "the derived windows in force are not this processor's: standing aside from prices until they are"
            );
            metrics::gauge!(tributary_broker::metric_names::WINDOWS_IN_FORCE).set(0.0);
        }
    }

    /// Waits until a batch is refused.
    pub async fn lost(&self) {
        let mut state = self.state.subscribe();
        let _ = state.wait_for(|in_force| !*in_force).await;
    }

    /// Waits until the windows are in force (at once if they are): [`InForce::recheck`] finds when.
    pub async fn found(&self) {
        let mut state = self.state.subscribe();
        let _ = state.wait_for(|in_force| *in_force).await;
    }

    /// Asks `settings` whether the windows in force are this processor's again; if they are, takes prices
    /// again. Whether they are in force now.
    pub async fn check(&self) -> Result<bool, sqlx::Error> {
        if self.is() {
            return Ok(true);
        }
        let mut tx = self.pool.begin().await?;
        let stored = tributary_store::prices::stored_windows(&mut tx).await?;
        tx.rollback().await?;
        let in_force = stored.as_ref() == Some(&self.ours);
        if in_force && !self.state.send_replace(true) {
            tracing::info!(windows = %self.ours, "the derived windows in force are this processor's again: taking prices");
            metrics::gauge!(tributary_broker::metric_names::WINDOWS_IN_FORCE).set(1.0);
        }
        Ok(in_force)
    }

    /// Until `stop`: whenever a batch is refused, asks `settings` every [`RECHECK`] until the windows in
    /// force are this processor's again. The one task that asks, so that waiting for them
    /// ([`InForce::found`]) and the group's heartbeat ([`InForce::is`]) never wait on PostgreSQL.
    pub async fn recheck(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.lost() => {}
            }
            loop {
                match self.check().await {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot read the derived windows in force; asking again"),
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(RECHECK) => {}
                }
            }
        }
    }
}
