//! The background purge: with `[retention] purge_interval_minutes` set,
//! `serve` deletes the numbers past their deletion date and not on legal
//! hold, at once and then every interval (`VaultCore::purge_in_background`),
//! audited as `retention.delete` by `mnvault-purge`. Replicas may all run
//! it: each batch locks the audit chain head, so they take turns and none
//! deletes twice.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::service::Context;

/// The longest `retention.purge_interval_minutes`: a week.
pub const MAX_PURGE_INTERVAL_MINUTES: u64 = 7 * 24 * 60;

/// `[retention]`: the background purge.
///
/// | key | default | what it does |
/// |---|---|---|
/// | `purge_interval_minutes` | 0 (off) | minutes between purges (at most 10080, a week); `mnvault purge` runs one by hand |
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSettings {
    /// Minutes between background purges; 0 turns them off.
    pub purge_interval_minutes: u64,
    /// An interval below a minute, set only by code (the tests): no file
    /// or variable can, so no configuration makes the vault purge in a loop.
    #[serde(skip)]
    pub interval_override: Option<Duration>,
}

impl RetentionSettings {
    /// Whether nothing is set (the section is then left out of `config check`'s output).
    pub fn is_unset(&self) -> bool {
        self == &Self::default()
    }

    /// Every value out of range, as (key, reason).
    pub fn problems(&self) -> Vec<(String, String)> {
        if self.purge_interval_minutes > MAX_PURGE_INTERVAL_MINUTES {
            let reason = format!("may be at most {MAX_PURGE_INTERVAL_MINUTES} (a week); 0 turns the purge off");
            return vec![("retention.purge_interval_minutes".into(), reason)];
        }
        Vec::new()
    }
}

/// The running purge; dropping it stops it.
pub(crate) struct Purge(tokio::task::JoinHandle<()>);

impl Drop for Purge {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the purge, unless it is off.
pub(crate) fn spawn(ctx: Context, settings: &RetentionSettings) -> Option<Purge> {
    let interval = match (settings.interval_override, settings.purge_interval_minutes) {
        (Some(interval), _) => interval,
        (None, 0) => return None,
        (None, minutes) => Duration::from_secs(minutes.saturating_mul(60)),
    };
    tracing::info!(interval_s = interval.as_secs(), "background purge on");
    Some(Purge(tokio::spawn(async move {
        loop {
            let purge = ctx.core.purge_in_background();
            let outcome = tokio::select! {
                () = ctx.stopping.cancelled() => return,
                outcome = purge => outcome,
            };
            match outcome {
                Ok(report) if report.deleted_tokens == 0 && report.tampered == 0 => {}
                Ok(report) => tracing::info!(
                    deleted = report.deleted_tokens,
                    held = report.held,
                    tampered = report.tampered,
                    "background purge done"
                ),
                Err(error) => tracing::warn!(%error, "the background purge failed; it tries again"),
            }
            tokio::select! {
                () = ctx.stopping.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    })))
}
