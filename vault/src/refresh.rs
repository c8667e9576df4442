//! Reads, every second, what other replicas appended to the audit chain
//! (`VaultCore::refresh`), so that a certificate revoked on one replica is
//! refused on every other without a restart and without waiting for a
//! decision there to read the chain.

use std::time::Duration;

use crate::service::Context;

/// How often the chain is read: the longest a revocation made on another
/// replica goes unseen here.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// The running refresher; dropping it stops it.
pub(crate) struct Refresher(tokio::task::JoinHandle<()>);

impl Drop for Refresher {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts reading the chain every `interval` until the vault stops.
pub(crate) fn spawn(ctx: Context, interval: Duration) -> Refresher {
    Refresher(tokio::spawn(async move {
        let mut failing = false;
        loop {
            tokio::select! {
                () = ctx.stopping.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            match ctx.core.refresh().await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("the audit chain is read again: revocations from other replicas apply");
                }
                Ok(()) => {}
                // Once per outage, not once a second.
                Err(error) if !failing => {
                    failing = true;
                    tracing::warn!(%error, "could not bring the audit chain up to date; revocations made on other \
                        replicas apply here once it can be read and verifies again");
                }
                Err(_) => {}
            }
        }
    }))
}
