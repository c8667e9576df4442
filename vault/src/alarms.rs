//! `[alarms]`: release patterns that do not fit a filing job. The rules and
//! their counting live in `mnvault_core::audit::alarm`; this module reads
//! their settings and raises what they decide.
//!
//! An alarm refuses nothing. Each alert is:
//! - an audit entry of the vault's own, `audit.alert`, naming the
//!   principal that triggered it, the tenant, the job, and a reason naming
//!   the rule and its threshold (`mnvault audit alerts` lists them);
//! - `mnvault_alerts_total{rule="…"}`;
//! - a log line at warn level.
//!
//! Successful releases (`Detokenize`, each page of an `ExportTenant`) and
//! filing jobs created are counted in memory by each vault process: replicas
//! count separately, and a restart starts from zero. A reload (SIGHUP)
//! applies changed settings at once.

use std::sync::PoisonError;

use mnvault_core::audit::alarm::{AlarmRules, Alarms, Alert, CountRule, HoursError, Occasion, ReleaseHours};
use mnvault_core::audit::AuditDraft;
use mnvault_core::clock;
use serde::{Deserialize, Serialize};

use crate::service::VaultContext;

/// The longest `alarms.burst_window_seconds`: a day.
pub const MAX_BURST_WINDOW_SECONDS: u64 = 24 * 60 * 60;

/// `release_hours` that turns the outside-hours alarm off.
pub const OFF: &str = "off";

const HOUR_MS: i64 = 60 * 60 * 1000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// `[alarms]`: when the vault raises an alert. A count of 0 turns its rule
/// off; `release_hours = "off"` turns the hours off.
///
/// | key | default | raises an alert when |
/// |---|---|---|
/// | `burst_max_numbers` | 1000 | one principal releases more numbers than this within `burst_window_seconds` |
/// | `burst_window_seconds` | 60 | (the burst window, 1 to 86400) |
/// | `requester_max_jobs_per_day` | 30 | one principal creates more filing jobs than this within 24 hours (all tenants) |
/// | `release_hours` | `"07:00-22:00"` | numbers are released outside these hours (`HH:MM-HH:MM`; `22:00-06:00` crosses midnight; `"off"`) |
/// | `release_days` | `"mon-sun"` | … or on another day (`mon-fri`, `mon-fri,sat`; public holidays are not known) |
/// | `utc_offset` | `"+09:00"` | (the offset from UTC the hours and days are read in) |
/// | `tenant_max_numbers_per_hour` | 10000 | more numbers than this are released in one tenant within an hour, by anyone |
///
/// Each alert is raised once per rule and principal (burst, jobs), tenant
/// (rate), or both (hours) per window (an hour for the hours).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlarmSettings {
    /// Numbers one principal may release within the burst window; 0: off.
    pub burst_max_numbers: u64,
    /// The burst window, in seconds.
    pub burst_window_seconds: u64,
    /// Filing jobs one principal may create within a day; 0: off.
    pub requester_max_jobs_per_day: u64,
    /// `HH:MM-HH:MM`, or `off`.
    pub release_hours: String,
    /// Days or ranges of days, e.g. `mon-fri`.
    pub release_days: String,
    /// `+HH:MM` or `-HH:MM`.
    pub utc_offset: String,
    /// Numbers one tenant may have released within an hour; 0: off.
    pub tenant_max_numbers_per_hour: u64,
}

impl Default for AlarmSettings {
    fn default() -> Self {
        Self {
            burst_max_numbers: 1_000,
            burst_window_seconds: 60,
            requester_max_jobs_per_day: 30,
            release_hours: "07:00-22:00".into(),
            release_days: "mon-sun".into(),
            utc_offset: "+09:00".into(),
            tenant_max_numbers_per_hour: 10_000,
        }
    }
}

impl AlarmSettings {
    /// Whether nothing differs from the defaults (the section is then left
    /// out of `config check`'s output).
    pub fn is_unset(&self) -> bool {
        self == &Self::default()
    }

    /// Every value out of range, as (key, reason).
    pub fn problems(&self) -> Vec<(String, String)> {
        self.rules().err().into_iter().collect()
    }

    /// The rules these settings turn on, or the first problem as (key, reason).
    pub fn rules(&self) -> Result<AlarmRules, (String, String)> {
        if self.burst_max_numbers > 0 && !(1..=MAX_BURST_WINDOW_SECONDS).contains(&self.burst_window_seconds) {
            let reason = format!("must be from 1 to {MAX_BURST_WINDOW_SECONDS} (a day)");
            return Err(("alarms.burst_window_seconds".into(), reason));
        }
        // Days and offset are checked even with the hours off: a typo
        // shows before the hours are turned on.
        let off = self.release_hours.trim().eq_ignore_ascii_case(OFF);
        let hours = if off { "00:00-24:00" } else { &self.release_hours };
        let hours = ReleaseHours::parse(hours, &self.release_days, &self.utc_offset).map_err(|error| {
            let key = match error {
                HoursError::Days => "alarms.release_days",
                HoursError::Offset => "alarms.utc_offset",
                _ => "alarms.release_hours",
            };
            (key.to_owned(), error.to_string())
        })?;
        let release_hours = (!off).then_some(hours);
        let per = |max: u64, window_ms: i64| CountRule::new(max, window_ms);
        let burst_window_ms = i64::try_from(self.burst_window_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
        Ok(AlarmRules {
            burst: per(self.burst_max_numbers, burst_window_ms),
            requester_jobs: per(self.requester_max_jobs_per_day, DAY_MS),
            release_hours,
            tenant_rate: per(self.tenant_max_numbers_per_hour, HOUR_MS),
        })
    }
}

/// The alarms a new context starts with: the defaults' rules.
pub(crate) fn default_alarms() -> std::sync::Mutex<Alarms> {
    std::sync::Mutex::new(Alarms::new(AlarmSettings::default().rules().unwrap_or_default()))
}

impl VaultContext {
    /// The context raising alerts by `settings` (checked when loaded).
    pub fn with_alarms(self, settings: &AlarmSettings) -> Self {
        self.set_alarms(settings);
        self
    }

    /// Applies `settings` from now on (a start or a reload); what the
    /// rules counted is kept while their windows stay the same.
    pub(crate) fn set_alarms(&self, settings: &AlarmSettings) {
        match settings.rules() {
            Ok(rules) => self.alarms.lock().unwrap_or_else(PoisonError::into_inner).set_rules(rules),
            // Loading the configuration refused it already.
            Err((key, reason)) => tracing::error!(key, reason, "alarm settings not applied"),
        }
    }

    /// `count` numbers released (committed and audited) by the call of
    /// `draft`: raises the alerts this crosses.
    pub(crate) async fn observe_release(&self, draft: &AuditDraft, count: u64) {
        let Some(occasion) = Occasion::of(draft) else { return };
        let alerts = self.alarms.lock().unwrap_or_else(PoisonError::into_inner).observe_release(
            &occasion,
            count,
            clock::now_ms(),
        );
        self.raise(alerts).await;
    }

    /// A filing job created (committed) by the call of `draft`.
    pub(crate) async fn observe_job_created(&self, draft: &AuditDraft) {
        let Some(occasion) = Occasion::of(draft) else { return };
        let alerts =
            self.alarms.lock().unwrap_or_else(PoisonError::into_inner).observe_job_created(&occasion, clock::now_ms());
        self.raise(alerts).await;
    }

    /// Counts, logs and audits each alert. An alert that cannot be audited
    /// is still counted and logged, and the failure logged at error level.
    async fn raise(&self, alerts: Vec<Alert>) {
        for alert in alerts {
            let rule = alert.rule.id();
            self.metrics.alert_raised(alert.rule);
            let Occasion { principal, tenant, job, .. } = &alert.occasion;
            let job = job.as_ref().map(|job| job.as_str()).unwrap_or_default();
            tracing::warn!(rule, %principal, %tenant, job, reason = %alert.reason, "alarm raised");
            if let Err(error) = self.core.record(alert.draft()).await {
                tracing::error!(rule, %principal, %tenant, %error, "an alarm was raised but could not be audited");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_turn_every_rule_on() {
        let rules = AlarmSettings::default().rules().unwrap();
        assert_eq!(rules.burst, CountRule::new(1_000, 60_000));
        assert_eq!(rules.requester_jobs, CountRule::new(30, DAY_MS));
        assert_eq!(rules.tenant_rate, CountRule::new(10_000, HOUR_MS));
        let hours = rules.release_hours.unwrap();
        // Monday 2024-01-15 12:00 in Japan, and 23:00.
        assert!(hours.allows(1_705_287_600_000));
        assert!(!hours.allows(1_705_287_600_000 + 11 * HOUR_MS));
        assert!(AlarmSettings::default().is_unset());
    }

    #[test]
    fn each_rule_turns_off_and_a_bad_value_names_its_key() {
        let off: AlarmSettings = toml::from_str(
            "burst_max_numbers = 0\nrequester_max_jobs_per_day = 0\nrelease_hours = \"off\"\n\
             tenant_max_numbers_per_hour = 0\nburst_window_seconds = 0",
        )
        .unwrap();
        assert_eq!(off.rules().unwrap(), AlarmRules::default());
        assert!(off.problems().is_empty(), "a window of 0 is fine when the burst rule is off");

        for (toml, key) in [
            ("burst_window_seconds = 0", "alarms.burst_window_seconds"),
            ("burst_window_seconds = 86401", "alarms.burst_window_seconds"),
            ("release_hours = \"8-20\"", "alarms.release_hours"),
            ("release_days = \"weekdays\"", "alarms.release_days"),
            ("utc_offset = \"JST\"", "alarms.utc_offset"),
        ] {
            let settings: AlarmSettings = toml::from_str(toml).unwrap();
            let problems = settings.problems();
            assert_eq!(problems.len(), 1, "{toml}");
            assert_eq!(problems[0].0, key, "{toml}");
            assert!(!problems[0].1.contains("weekdays") && !problems[0].1.contains("JST"), "{}", problems[0].1);
        }
        assert!(toml::from_str::<AlarmSettings>("burst = 5").is_err(), "unknown keys are refused");
    }
}
