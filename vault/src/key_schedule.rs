//! The rotation schedule: with `[keys] rotate_every_days` set, `serve`
//! looks every `rotation_check_interval_ms` for tenants whose primary record
//! key is that old and adds their next version (`VaultCore::rotate_due_tenant_keys`),
//! audited as `keys.rotate` by [`SCHEDULER_PRINCIPAL`]. Replicas may all run
//! it: the core decides in a transaction, and a version another replica
//! added first is not added again. Records keep their version until
//! `mnvault keys rewrap` seals them again.

use std::time::Duration;

use mnvault_core::id::Principal;

use crate::service::Context;

/// The principal the schedule's audit entries name (reserved: no
/// certificate may take it).
pub const SCHEDULER_PRINCIPAL: &str = "mnvault-scheduler";

/// Default `keys.rotation_check_interval_ms`: an hour.
pub const DEFAULT_CHECK_INTERVAL_MS: u64 = 60 * 60 * 1000;

/// The longest `keys.rotate_every_days`: a hundred years.
pub const MAX_ROTATE_EVERY_DAYS: u32 = 36_500;

/// Bounds of `keys.rotation_check_interval_ms`.
const CHECK_INTERVAL_MS: std::ops::RangeInclusive<u64> = 100..=24 * 60 * 60 * 1000;

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// The schedule's settings out of range, as (key, reason).
pub fn problems(rotate_every_days: u32, check_interval_ms: u64) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if rotate_every_days > MAX_ROTATE_EVERY_DAYS {
        let reason = format!("may be at most {MAX_ROTATE_EVERY_DAYS} days (0 turns the schedule off)");
        problems.push(("keys.rotate_every_days".into(), reason));
    }
    if !CHECK_INTERVAL_MS.contains(&check_interval_ms) {
        let reason =
            format!("must be between {} and {} milliseconds", CHECK_INTERVAL_MS.start(), CHECK_INTERVAL_MS.end());
        problems.push(("keys.rotation_check_interval_ms".into(), reason));
    }
    problems
}

/// The running schedule; dropping it stops it.
pub(crate) struct Schedule(tokio::task::JoinHandle<()>);

impl Drop for Schedule {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the schedule, unless `rotate_every_days` is 0. It checks at once,
/// then every `check_interval_ms`, until the vault is stopping.
pub(crate) fn spawn(ctx: Context, rotate_every_days: u32, check_interval_ms: u64) -> Option<Schedule> {
    if rotate_every_days == 0 {
        return None;
    }
    let every = Duration::from_millis(u64::from(rotate_every_days).saturating_mul(DAY_MS));
    let interval = Duration::from_millis(check_interval_ms);
    let by = Principal::parse(SCHEDULER_PRINCIPAL).expect("the scheduler principal is a valid name");
    tracing::info!(rotate_every_days, check_interval_ms, "tenant key rotation schedule on");
    Some(Schedule(tokio::spawn(async move {
        loop {
            let check = ctx.core.rotate_due_tenant_keys(&by, every);
            let outcome = tokio::select! {
                () = ctx.stopping.cancelled() => return,
                outcome = check => outcome,
            };
            match outcome {
                Ok(rotated) => {
                    for key in rotated {
                        tracing::info!(tenant = %key.tenant, version = key.version, "tenant record key rotated by schedule");
                    }
                }
                Err(error) => tracing::warn!(%error, "the key rotation schedule could not check; it tries again"),
            }
            tokio::select! {
                () = ctx.stopping.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheduler_principal_parses_and_is_reserved() {
        assert!(Principal::parse(SCHEDULER_PRINCIPAL).is_ok());
        assert!(crate::identity::is_reserved(SCHEDULER_PRINCIPAL));
    }

    #[test]
    fn out_of_range_settings_are_named() {
        assert!(problems(0, DEFAULT_CHECK_INTERVAL_MS).is_empty());
        assert!(problems(MAX_ROTATE_EVERY_DAYS, 100).is_empty());
        let keys: Vec<String> = problems(MAX_ROTATE_EVERY_DAYS + 1, 99).into_iter().map(|(key, _)| key).collect();
        assert_eq!(keys, ["keys.rotate_every_days", "keys.rotation_check_interval_ms"]);
    }
}
