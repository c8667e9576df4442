//! A tenant's policy: how many people approve a filing job, how large and
//! long-lived a job may be, which purposes the tenant files for, how many
//! numbers may leave per filer and per tenant, and when.
//!
//! Every rule the policy sets is decided here, once, for every backend:
//! [`TenantPolicy::check_job`] when a job is created,
//! [`TenantPolicy::check_release`] when numbers are released. A refusal is a
//! [`LimitRefusal`] naming its [`Limit`]; the edge maps it to
//! `RESOURCE_EXHAUSTED` (rates) or `PERMISSION_DENIED` (the rest) and raises
//! an alert for it.
//!
//! The policy is stored in the database, which must not be able to loosen
//! it: the stored row is tagged under the vault's state key, bound to the
//! tenant and to the audit entry that applied it, and a row older than the
//! last approved change the verified audit chain records (or missing while
//! the chain records one) is refused as tampering (see
//! [`crate::vault`]). A change is proposed by one key-admin and applied only
//! when another person approves it.
//!
//! Release counts are taken from the verified audit chain itself
//! ([`ReleaseCounts`]): every vault process walks the chain up to its locked
//! head before a release, so replicas see each other's releases, and a
//! database writer cannot lower a count without breaking the chain.

use std::collections::HashMap;
use std::fmt;

use crate::audit::alarm::ReleaseHours;
use crate::id::TenantId;
use crate::job::{MAX_JOB_LIFETIME_MS, MAX_JOB_TOKENS};
use crate::purpose::Purpose;

/// Most approvals a policy may ask for one job.
pub const MAX_APPROVALS: u32 = 5;

/// Longest job lifetime a policy may allow, in days.
pub const MAX_JOB_LIFETIME_DAYS: u32 = (MAX_JOB_LIFETIME_MS / DAY_MS) as u32;

/// Largest release rate a policy may set (numbers per window).
pub const MAX_RATE: u64 = 1_000_000_000;

const HOUR_MS: i64 = 60 * 60 * 1000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// A rule a tenant's policy (or a job) enforces. The identifiers are stored
/// in alert entries and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Limit {
    /// The job's purpose is not one the tenant files for.
    Purpose,
    /// The job lists more tokens than the policy allows.
    JobTokens,
    /// The job would run longer than the policy allows.
    JobLifetime,
    /// A release named tokens its job does not list.
    OutsideJob,
    /// A release outside the tenant's release hours.
    ReleaseHours,
    /// One filer (a person) would pass the numbers they may release in an hour.
    FilerHourly,
    /// The tenant would pass the numbers it may release in a day.
    TenantDaily,
}

impl Limit {
    /// Stable identifier: the first word of the alert's reason and its metric label.
    pub fn id(self) -> &'static str {
        match self {
            Limit::Purpose => "limit-purpose",
            Limit::JobTokens => "limit-job-tokens",
            Limit::JobLifetime => "limit-job-lifetime",
            Limit::OutsideJob => "limit-outside-job",
            Limit::ReleaseHours => "limit-release-hours",
            Limit::FilerHourly => "limit-filer-hourly",
            Limit::TenantDaily => "limit-tenant-daily",
        }
    }

    /// Whether the refusal is a rate: the same call may succeed later.
    pub fn is_rate(self) -> bool {
        matches!(self, Limit::FilerHourly | Limit::TenantDaily)
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// A call refused by a [`Limit`]: the message names the rule and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitRefusal {
    /// The rule.
    pub limit: Limit,
    /// What a person reads: the rule, its value, and what to do.
    pub message: String,
}

impl LimitRefusal {
    fn new(limit: Limit, message: String) -> Self {
        Self { limit, message }
    }
}

/// Why a policy did not parse. It never repeats the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TenantPolicyError {
    /// `approvals_required` is out of range.
    #[error("approvals_required must be between 1 and {MAX_APPROVALS}")]
    Approvals,
    /// `max_tokens_per_job` is out of range.
    #[error("max_tokens_per_job must be between 1 and {MAX_JOB_TOKENS}")]
    JobTokens,
    /// `max_job_lifetime_days` is out of range.
    #[error("max_job_lifetime_days must be between 1 and {MAX_JOB_LIFETIME_DAYS}")]
    JobLifetime,
    /// A purpose is unknown, or listed twice.
    #[error("allowed_purposes must name known filing purposes (see ListPurposes; not tenant-export), each once; an empty list allows every purpose")]
    Purposes,
    /// A rate is out of range.
    #[error("a release rate must be between 0 (no limit) and {MAX_RATE}")]
    Rate,
    /// The release hours do not parse.
    #[error(
        "release_hours must be empty (any time) or `HH:MM-HH:MM [days] [offset]`, e.g. `08:00-20:00 mon-fri +09:00`"
    )]
    Hours,
    /// A stored policy does not have the vault's canonical form.
    #[error("the stored policy is malformed")]
    Stored,
}

/// A tenant's policy. [`Default`] is the policy of a tenant nobody set one
/// for: one approval, the vault's own job bounds, every purpose, no rate
/// limit, any hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantPolicy {
    /// Distinct persons, none of them the creator, who must approve a job.
    pub approvals_required: u32,
    /// Most tokens one job may list.
    pub max_tokens_per_job: u32,
    /// Longest a job may run, in days.
    pub max_job_lifetime_days: u32,
    /// Purposes the tenant files for, in [`Purpose::ALL`] order; empty: every one.
    pub allowed_purposes: Vec<Purpose>,
    /// Most numbers one filer (a person) may release in an hour; 0: no limit.
    pub max_releases_per_filer_per_hour: u64,
    /// Most numbers the tenant may release in a day; 0: no limit.
    pub max_releases_per_tenant_per_day: u64,
    /// When numbers may be released; `None`: any time.
    pub release_hours: Option<ReleaseHours>,
}

impl Default for TenantPolicy {
    fn default() -> Self {
        Self {
            approvals_required: 1,
            max_tokens_per_job: MAX_JOB_TOKENS as u32,
            max_job_lifetime_days: MAX_JOB_LIFETIME_DAYS,
            allowed_purposes: Vec::new(),
            max_releases_per_filer_per_hour: 0,
            max_releases_per_tenant_per_day: 0,
            release_hours: None,
        }
    }
}

/// A policy as a caller or a store hands it over, before its rules are checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantPolicyFields {
    /// See [`TenantPolicy::approvals_required`].
    pub approvals_required: u32,
    /// See [`TenantPolicy::max_tokens_per_job`].
    pub max_tokens_per_job: u32,
    /// See [`TenantPolicy::max_job_lifetime_days`].
    pub max_job_lifetime_days: u32,
    /// Purpose identifiers; empty: every purpose.
    pub allowed_purposes: Vec<String>,
    /// See [`TenantPolicy::max_releases_per_filer_per_hour`].
    pub max_releases_per_filer_per_hour: u64,
    /// See [`TenantPolicy::max_releases_per_tenant_per_day`].
    pub max_releases_per_tenant_per_day: u64,
    /// `HH:MM-HH:MM [days] [offset]`; empty: any time.
    pub release_hours: String,
}

impl TenantPolicy {
    /// Checks every field against its bounds.
    pub fn parse(fields: &TenantPolicyFields) -> Result<Self, TenantPolicyError> {
        if !(1..=MAX_APPROVALS).contains(&fields.approvals_required) {
            return Err(TenantPolicyError::Approvals);
        }
        if !(1..=MAX_JOB_TOKENS as u32).contains(&fields.max_tokens_per_job) {
            return Err(TenantPolicyError::JobTokens);
        }
        if !(1..=MAX_JOB_LIFETIME_DAYS).contains(&fields.max_job_lifetime_days) {
            return Err(TenantPolicyError::JobLifetime);
        }
        if fields.allowed_purposes.len() > Purpose::ALL.len() {
            return Err(TenantPolicyError::Purposes);
        }
        let mut asked = Vec::with_capacity(fields.allowed_purposes.len());
        for id in &fields.allowed_purposes {
            let purpose = id.parse::<Purpose>().map_err(|_| TenantPolicyError::Purposes)?;
            // An export is an offboarding, not a filing: no purpose list governs it.
            if asked.contains(&purpose) || purpose == Purpose::TenantExport {
                return Err(TenantPolicyError::Purposes);
            }
            asked.push(purpose);
        }
        let allowed_purposes = Purpose::ALL.into_iter().filter(|p| asked.contains(p)).collect();
        for rate in [fields.max_releases_per_filer_per_hour, fields.max_releases_per_tenant_per_day] {
            if rate > MAX_RATE {
                return Err(TenantPolicyError::Rate);
            }
        }
        Ok(Self {
            approvals_required: fields.approvals_required,
            max_tokens_per_job: fields.max_tokens_per_job,
            max_job_lifetime_days: fields.max_job_lifetime_days,
            allowed_purposes,
            max_releases_per_filer_per_hour: fields.max_releases_per_filer_per_hour,
            max_releases_per_tenant_per_day: fields.max_releases_per_tenant_per_day,
            release_hours: parse_hours(&fields.release_hours)?,
        })
    }

    /// The fields, as [`TenantPolicy::parse`] reads them back.
    pub fn fields(&self) -> TenantPolicyFields {
        TenantPolicyFields {
            approvals_required: self.approvals_required,
            max_tokens_per_job: self.max_tokens_per_job,
            max_job_lifetime_days: self.max_job_lifetime_days,
            allowed_purposes: self.allowed_purposes.iter().map(|p| p.id().to_owned()).collect(),
            max_releases_per_filer_per_hour: self.max_releases_per_filer_per_hour,
            max_releases_per_tenant_per_day: self.max_releases_per_tenant_per_day,
            release_hours: self.release_hours.map(|hours| hours.canonical()).unwrap_or_default(),
        }
    }

    /// The one stored form: `key=value` lines in a fixed order. It is what
    /// the state tag covers, and what an audit entry of a change shows.
    pub fn encode(&self) -> String {
        let fields = self.fields();
        let purposes =
            if fields.allowed_purposes.is_empty() { "all".to_owned() } else { fields.allowed_purposes.join(",") };
        let hours = if fields.release_hours.is_empty() { "any".to_owned() } else { fields.release_hours };
        format!(
            "approvals_required={}\nmax_tokens_per_job={}\nmax_job_lifetime_days={}\nallowed_purposes={purposes}\n\
             max_releases_per_filer_per_hour={}\nmax_releases_per_tenant_per_day={}\nrelease_hours={hours}",
            fields.approvals_required,
            fields.max_tokens_per_job,
            fields.max_job_lifetime_days,
            fields.max_releases_per_filer_per_hour,
            fields.max_releases_per_tenant_per_day,
        )
    }

    /// Reads [`TenantPolicy::encode`]'s form, and only that form.
    pub fn decode(text: &str) -> Result<Self, TenantPolicyError> {
        const KEYS: [&str; 7] = [
            "approvals_required",
            "max_tokens_per_job",
            "max_job_lifetime_days",
            "allowed_purposes",
            "max_releases_per_filer_per_hour",
            "max_releases_per_tenant_per_day",
            "release_hours",
        ];
        let lines: Vec<&str> = text.split('\n').collect();
        if lines.len() != KEYS.len() {
            return Err(TenantPolicyError::Stored);
        }
        let mut values = [""; 7];
        for ((line, key), value) in lines.iter().zip(KEYS).zip(values.iter_mut()) {
            *value = line.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')).ok_or(TenantPolicyError::Stored)?;
        }
        let number = |text: &str| text.parse::<u64>().map_err(|_| TenantPolicyError::Stored);
        let small = |text: &str| text.parse::<u32>().map_err(|_| TenantPolicyError::Stored);
        let fields = TenantPolicyFields {
            approvals_required: small(values[0])?,
            max_tokens_per_job: small(values[1])?,
            max_job_lifetime_days: small(values[2])?,
            allowed_purposes: match values[3] {
                "all" => Vec::new(),
                list => list.split(',').map(str::to_owned).collect(),
            },
            max_releases_per_filer_per_hour: number(values[4])?,
            max_releases_per_tenant_per_day: number(values[5])?,
            release_hours: match values[6] {
                "any" => String::new(),
                hours => hours.to_owned(),
            },
        };
        let policy = Self::parse(&fields).map_err(|_| TenantPolicyError::Stored)?;
        // Only the canonical form: a row that decodes but re-encodes otherwise was not written by the vault.
        if policy.encode() != text {
            return Err(TenantPolicyError::Stored);
        }
        Ok(policy)
    }

    /// One line for people and audit entries: `approvals_required=2, …`.
    pub fn summary(&self) -> String {
        self.encode().replace('\n', ", ")
    }

    /// Whether the tenant files for `purpose`.
    pub fn allows_purpose(&self, purpose: Purpose) -> bool {
        self.allowed_purposes.is_empty() || self.allowed_purposes.contains(&purpose)
    }

    /// Refuses a job of `tenant` the policy does not allow: its purpose,
    /// its number of tokens, its lifetime. A tenant export is judged by its
    /// purpose only (it lists no tokens).
    pub fn check_job(
        &self,
        tenant: &TenantId,
        purpose: Purpose,
        tokens: usize,
        lifetime_ms: i64,
    ) -> Result<(), LimitRefusal> {
        self.check_purpose(tenant, purpose)?;
        if tokens > self.max_tokens_per_job as usize {
            return Err(LimitRefusal::new(
                Limit::JobTokens,
                format!(
                    "tenant \"{tenant}\"'s policy allows at most {} tokens per filing job ({}); this job lists {tokens}: \
                     split it",
                    self.max_tokens_per_job,
                    Limit::JobTokens
                ),
            ));
        }
        if lifetime_ms > i64::from(self.max_job_lifetime_days) * DAY_MS {
            return Err(LimitRefusal::new(
                Limit::JobLifetime,
                format!(
                    "tenant \"{tenant}\"'s policy allows filing jobs to run at most {} day(s) ({}); choose an earlier \
                     expiry",
                    self.max_job_lifetime_days,
                    Limit::JobLifetime
                ),
            ));
        }
        Ok(())
    }

    fn check_purpose(&self, tenant: &TenantId, purpose: Purpose) -> Result<(), LimitRefusal> {
        if self.allows_purpose(purpose) {
            return Ok(());
        }
        let allowed: Vec<&str> = self.allowed_purposes.iter().map(|p| p.id()).collect();
        Err(LimitRefusal::new(
            Limit::Purpose,
            format!(
                "tenant \"{tenant}\"'s policy does not allow purpose {} ({}); it allows {}",
                purpose.id(),
                Limit::Purpose,
                allowed.join(", ")
            ),
        ))
    }

    /// Refuses a release of `count` numbers from a job of `purpose` in
    /// `tenant` at `now`: a purpose the tenant no longer files for, outside
    /// the release hours, or past a rate given what `counts` already saw
    /// released by `person` and in `tenant`. All or nothing.
    pub fn check_release(
        &self,
        tenant: &TenantId,
        purpose: Purpose,
        person: &str,
        count: u64,
        counts: &ReleaseCounts,
        now: i64,
    ) -> Result<(), LimitRefusal> {
        self.check_purpose(tenant, purpose)?;
        if let Some(hours) = &self.release_hours {
            if !hours.allows(now) {
                return Err(LimitRefusal::new(
                    Limit::ReleaseHours,
                    format!(
                        "tenant \"{tenant}\"'s policy releases numbers only {hours} ({}); it is {} now: release \
                         within the hours",
                        Limit::ReleaseHours,
                        hours.describe(now)
                    ),
                ));
            }
        }
        let filer = self.max_releases_per_filer_per_hour;
        let released = counts.by_person_last_hour(tenant.as_str(), person, now);
        if filer > 0 && released.saturating_add(count) > filer {
            return Err(LimitRefusal::new(
                Limit::FilerHourly,
                format!(
                    "{person} may release at most {filer} numbers an hour in tenant \"{tenant}\" ({}); {released} \
                     released in the last hour, {count} asked: wait, or ask a key-admin to change the policy",
                    Limit::FilerHourly
                ),
            ));
        }
        let daily = self.max_releases_per_tenant_per_day;
        let released = counts.by_tenant_last_day(tenant.as_str(), now);
        if daily > 0 && released.saturating_add(count) > daily {
            return Err(LimitRefusal::new(
                Limit::TenantDaily,
                format!(
                    "tenant \"{tenant}\" may release at most {daily} numbers a day ({}); {released} released in the \
                     last 24 hours, {count} asked: wait, or ask a key-admin to change the policy",
                    Limit::TenantDaily
                ),
            ));
        }
        Ok(())
    }
}

/// `HH:MM-HH:MM [days] [offset]`: days default to every day, the offset to
/// Japan's.
fn parse_hours(text: &str) -> Result<Option<ReleaseHours>, TenantPolicyError> {
    // The longest valid form is well under this; longer is not split at all.
    if text.len() > 80 {
        return Err(TenantPolicyError::Hours);
    }
    let parts: Vec<&str> = text.split_whitespace().collect();
    let (hours, days, offset) = match parts.as_slice() {
        [] => return Ok(None),
        [hours] => (*hours, "mon-sun", "+09:00"),
        [hours, days] => (*hours, *days, "+09:00"),
        [hours, days, offset] => (*hours, *days, *offset),
        _ => return Err(TenantPolicyError::Hours),
    };
    ReleaseHours::parse(hours, days, offset).map(Some).map_err(|_| TenantPolicyError::Hours)
}

/// A tenant's policy as stored, with who applied it: the state a release
/// decision reads.
#[derive(Debug, Clone)]
pub struct AppliedTenantPolicy {
    /// The policy.
    pub policy: TenantPolicy,
    /// The change that applied it, who proposed and who approved it, and
    /// when; `None` for the default policy.
    pub change: Option<AppliedChange>,
}

/// Who changed a policy, and when.
#[derive(Debug, Clone)]
pub struct AppliedChange {
    /// The change.
    pub change_id: crate::id::PolicyChangeId,
    /// Its proposer.
    pub proposed_by: crate::id::Principal,
    /// Its approver.
    pub approved_by: crate::id::Principal,
    /// Unix milliseconds of the approval.
    pub approved_at: i64,
}

/// A change waiting for a second key-admin.
#[derive(Debug, Clone)]
pub struct PolicyProposal {
    /// Random identifier the approval names.
    pub change_id: crate::id::PolicyChangeId,
    /// The policy it would apply.
    pub policy: TenantPolicy,
    /// Its proposer.
    pub proposed_by: crate::id::Principal,
    /// Unix milliseconds.
    pub proposed_at: i64,
}

/// Numbers released, counted in time slices per filer (a person, in one
/// tenant) over an hour and per tenant over a day, from the verified audit
/// chain.
///
/// A window is counted in [`SLICES`] slices plus the one it starts in, so
/// a count covers between the window and a twelfth more: a limit may
/// refuse a little early, never let more through. Each key holds
/// `SLICES + 1` pairs (about 200 bytes). Keys whose slices are
/// all past their window are dropped when a map reaches [`MAX_KEYS`].
#[derive(Debug, Default)]
pub struct ReleaseCounts {
    by_person: HashMap<String, Slices>,
    by_tenant: HashMap<String, Slices>,
}

/// Slices a window is counted in.
pub const SLICES: usize = 12;

/// Keys each map holds before it drops those with nothing in their window.
pub const MAX_KEYS: usize = 100_000;

const PERSON_WINDOW_MS: i64 = HOUR_MS;

/// A filer's rate is per tenant: each tenant's policy counts only its own releases.
fn filer_in_tenant(tenant: &str, person: &str) -> String {
    format!("{tenant}/{person}")
}
const TENANT_WINDOW_MS: i64 = DAY_MS;

/// One key's counts: slot `i` holds slice number `index` when `index % len == i`.
#[derive(Debug, Clone)]
struct Slices {
    slots: [(i64, u64); SLICES + 1],
}

impl Slices {
    fn new() -> Self {
        Self { slots: [(i64::MIN, 0); SLICES + 1] }
    }

    fn add(&mut self, index: i64, count: u64) {
        let slot = &mut self.slots[index.rem_euclid(SLICES as i64 + 1) as usize];
        match slot.0.cmp(&index) {
            std::cmp::Ordering::Equal => slot.1 = slot.1.saturating_add(count),
            std::cmp::Ordering::Less => *slot = (index, count),
            // A newer slice holds the slot: this one is out of every window.
            std::cmp::Ordering::Greater => {}
        }
    }

    /// A slice newer than `now_index` counts too: a replica whose clock
    /// runs ahead recorded it, and it was released all the same.
    fn total(&self, now_index: i64) -> u64 {
        self.slots
            .iter()
            .filter(|(index, _)| *index >= now_index - SLICES as i64)
            .map(|(_, count)| count)
            .fold(0u64, |sum, count| sum.saturating_add(*count))
    }

    fn newest(&self) -> i64 {
        self.slots.iter().map(|(index, _)| *index).max().unwrap_or(i64::MIN)
    }
}

fn note_in(map: &mut HashMap<String, Slices>, key: &str, window_ms: i64, time_ms: i64, count: u64) {
    let slice_ms = window_ms / SLICES as i64;
    let index = time_ms.div_euclid(slice_ms);
    if map.len() >= MAX_KEYS && !map.contains_key(key) {
        map.retain(|_, slices| slices.newest() >= index - SLICES as i64);
        if map.len() >= MAX_KEYS {
            tracing::warn!(keys = map.len(), "release counts are full; the oldest key is dropped");
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.newest()).map(|(k, _)| k.clone()) {
                map.remove(&oldest);
            }
        }
    }
    map.entry(key.to_owned()).or_insert_with(Slices::new).add(index, count);
}

fn total_in(map: &HashMap<String, Slices>, key: &str, window_ms: i64, now: i64) -> u64 {
    let slice_ms = window_ms / SLICES as i64;
    map.get(key).map_or(0, |slices| slices.total(now.div_euclid(slice_ms)))
}

impl ReleaseCounts {
    /// Notes `count` numbers released at `time_ms` by `person` in `tenant`.
    pub fn note(&mut self, person: &str, tenant: &str, time_ms: i64, count: u64) {
        note_in(&mut self.by_person, &filer_in_tenant(tenant, person), PERSON_WINDOW_MS, time_ms, count);
        note_in(&mut self.by_tenant, tenant, TENANT_WINDOW_MS, time_ms, count);
    }

    /// Numbers `person` released in `tenant` within about the last hour.
    pub fn by_person_last_hour(&self, tenant: &str, person: &str, now: i64) -> u64 {
        total_in(&self.by_person, &filer_in_tenant(tenant, person), PERSON_WINDOW_MS, now)
    }

    /// Numbers released in `tenant` within about the last day.
    pub fn by_tenant_last_day(&self, tenant: &str, now: i64) -> u64 {
        total_in(&self.by_tenant, tenant, TENANT_WINDOW_MS, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Monday 2024-01-15 12:00 in Japan.
    const NOON_JST: i64 = 1_705_287_600_000;

    fn tenant() -> TenantId {
        TenantId::parse("acme").unwrap()
    }

    fn fields() -> TenantPolicyFields {
        TenantPolicy::default().fields()
    }

    #[test]
    fn the_stored_form_reads_back_and_only_it() {
        let policy = TenantPolicy::parse(&TenantPolicyFields {
            approvals_required: 2,
            max_tokens_per_job: 500,
            max_job_lifetime_days: 14,
            allowed_purposes: vec!["social-insurance-qualification".into(), "withholding-slip".into()],
            max_releases_per_filer_per_hour: 300,
            max_releases_per_tenant_per_day: 2_000,
            release_hours: "08:00-20:00 mon-fri".into(),
        })
        .unwrap();
        let text = policy.encode();
        assert_eq!(TenantPolicy::decode(&text).unwrap(), policy);
        assert!(text.contains("release_hours=08:00-20:00 mon,tue,wed,thu,fri +09:00"), "{text}");
        assert_eq!(TenantPolicy::decode(&TenantPolicy::default().encode()).unwrap(), TenantPolicy::default());
        for edited in [
            text.replace("approvals_required=2", "approvals_required=02"),
            text.replace("approvals_required=2", "approvals_required=9"),
            text.replace('\n', "\r\n"),
            format!("{text}\n"),
            text.replace("max_tokens_per_job", "max_tokens"),
        ] {
            assert_eq!(TenantPolicy::decode(&edited), Err(TenantPolicyError::Stored), "{edited}");
        }
    }

    #[test]
    fn each_field_is_bounded_and_named() {
        type Edit = fn(&mut TenantPolicyFields);
        let cases: [(Edit, TenantPolicyError); 8] = [
            (|f| f.approvals_required = 0, TenantPolicyError::Approvals),
            (|f| f.approvals_required = MAX_APPROVALS + 1, TenantPolicyError::Approvals),
            (|f| f.max_tokens_per_job = 0, TenantPolicyError::JobTokens),
            (|f| f.max_job_lifetime_days = MAX_JOB_LIFETIME_DAYS + 1, TenantPolicyError::JobLifetime),
            (|f| f.allowed_purposes = vec!["payroll-magic".into()], TenantPolicyError::Purposes),
            (
                |f| f.allowed_purposes = vec!["withholding-slip".into(), "withholding-slip".into()],
                TenantPolicyError::Purposes,
            ),
            (|f| f.max_releases_per_tenant_per_day = MAX_RATE + 1, TenantPolicyError::Rate),
            (|f| f.release_hours = "8-20".into(), TenantPolicyError::Hours),
        ];
        for (edit, expected) in cases {
            let mut fields = fields();
            edit(&mut fields);
            assert_eq!(TenantPolicy::parse(&fields), Err(expected));
        }
    }

    #[test]
    fn a_job_is_judged_by_purpose_size_and_lifetime() {
        let mut fields = fields();
        fields.allowed_purposes = vec!["social-insurance-qualification".into()];
        fields.max_tokens_per_job = 10;
        fields.max_job_lifetime_days = 7;
        let policy = TenantPolicy::parse(&fields).unwrap();
        assert!(policy.check_job(&tenant(), Purpose::SocialInsuranceQualification, 10, 7 * DAY_MS).is_ok());
        let refused = |purpose, tokens, lifetime| policy.check_job(&tenant(), purpose, tokens, lifetime).unwrap_err();
        assert_eq!(refused(Purpose::WithholdingSlip, 1, HOUR_MS).limit, Limit::Purpose);
        let tokens = refused(Purpose::SocialInsuranceQualification, 11, HOUR_MS);
        assert_eq!(tokens.limit, Limit::JobTokens);
        assert!(tokens.message.contains("at most 10 tokens") && tokens.message.contains("limit-job-tokens"));
        assert_eq!(refused(Purpose::SocialInsuranceQualification, 1, 7 * DAY_MS + 1).limit, Limit::JobLifetime);
    }

    #[test]
    fn releases_are_refused_past_each_rate_and_outside_the_hours() {
        let mut fields = fields();
        fields.max_releases_per_filer_per_hour = 10;
        fields.max_releases_per_tenant_per_day = 15;
        fields.release_hours = "08:00-20:00".into();
        let policy = TenantPolicy::parse(&fields).unwrap();
        let mut counts = ReleaseCounts::default();
        let check = |counts: &ReleaseCounts, person: &str, count, now| {
            policy.check_release(&tenant(), Purpose::WithholdingSlip, person, count, counts, now).map_err(|r| r.limit)
        };
        assert_eq!(check(&counts, "alice", 10, NOON_JST), Ok(()));
        assert_eq!(check(&counts, "alice", 11, NOON_JST), Err(Limit::FilerHourly));
        counts.note("alice", "acme", NOON_JST, 8);
        assert_eq!(check(&counts, "alice", 3, NOON_JST), Err(Limit::FilerHourly));
        assert_eq!(check(&counts, "alice", 2, NOON_JST), Ok(()));
        // Another person has their own hour, but the tenant's day is shared.
        assert_eq!(check(&counts, "bob", 7, NOON_JST), Ok(()));
        assert_eq!(check(&counts, "bob", 8, NOON_JST), Err(Limit::TenantDaily));
        // Past the hour (and its slice), alice may release again; the day still counts.
        let later = NOON_JST + HOUR_MS + HOUR_MS / SLICES as i64;
        assert_eq!(check(&counts, "alice", 7, later), Ok(()));
        assert_eq!(check(&counts, "alice", 8, later), Err(Limit::TenantDaily));
        assert_eq!(check(&counts, "alice", 1, NOON_JST + 9 * HOUR_MS), Err(Limit::ReleaseHours));
    }

    #[test]
    fn a_count_never_misses_a_release_within_its_window() {
        let mut counts = ReleaseCounts::default();
        // Released just after a slice starts; asked just under an hour later.
        let at = 1_700_000_000_000 - 1_700_000_000_000 % (HOUR_MS / SLICES as i64) + 1;
        counts.note("alice", "acme", at, 5);
        assert_eq!(counts.by_person_last_hour("acme", "alice", at + HOUR_MS - 1), 5);
        assert_eq!(counts.by_tenant_last_day("acme", at + DAY_MS - 1), 5);
        assert_eq!(counts.by_person_last_hour("acme", "alice", at + HOUR_MS + HOUR_MS / SLICES as i64), 0);
        // An older release noted late (a slower replica's) still counts in its slice.
        counts.note("alice", "acme", at - 1000, 2);
        assert_eq!(counts.by_person_last_hour("acme", "alice", at), 7);
    }
}
