//! Alarms: release patterns that do not fit a filing job. They refuse
//! nothing; they say so, as an audit entry of the vault's own
//! ([`Operation::RaiseAlert`], `audit.alert`), a metric and a log line.
//!
//! The rules, each off unless configured (the vault's `[alarms]` section
//! turns them on with defaults):
//! - [`Rule::Burst`]: more than `max` numbers released by one principal
//!   within the window (e.g. a minute);
//! - [`Rule::RequesterJobs`]: more than `max` filing jobs created by one
//!   principal within the window (a day);
//! - [`Rule::OutsideHours`]: a release outside the release hours and days,
//!   read in a fixed offset from UTC (Japan: +09:00);
//! - [`Rule::TenantRate`]: more than `max` numbers released in one tenant
//!   within the window (an hour), whoever released them.
//!
//! Each alert is raised once per rule and key (principal, tenant, or both)
//! per window: the releases that follow in the same burst add nothing. A
//! burst that goes on past the window raises it again.
//!
//! Counting is in memory, per process, and bounded: a window is counted in
//! [`SLICES`] slices (so it slides in steps of a twelfth of its length, and
//! covers between eleven and twelve twelfths of it), and each rule tracks at
//! most a fixed number of keys, dropping first those whose window has
//! passed, then the one seen longest ago. Replicas count separately: a
//! burst spread over several vault processes is seen by each in part.
//!
//! Time is passed in, never read here: every rule is a pure function of
//! what it was shown.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;

use crate::audit::{AuditDraft, Operation};
use crate::id::{JobId, Principal, TenantId};
use crate::purpose::Purpose;

/// Slices a window is counted in.
pub const SLICES: usize = 12;

/// Keys each rule tracks at most (by default).
pub const DEFAULT_CAPACITY: usize = 4_096;

/// How long an outside-hours alert for one principal and tenant stays
/// raised: a night of releases raises it at most once an hour.
pub const OUTSIDE_HOURS_REPEAT_MS: i64 = 60 * 60 * 1000;

const MINUTES_PER_DAY: i64 = 24 * 60;

/// An alarm rule. The identifiers are stored in entries and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// Many numbers released by one principal within a short window.
    Burst,
    /// Many filing jobs created by one principal within a day.
    RequesterJobs,
    /// A release outside the release hours.
    OutsideHours,
    /// Many numbers released in one tenant within an hour.
    TenantRate,
}

impl Rule {
    /// Every rule.
    pub const ALL: [Rule; 4] = [Rule::Burst, Rule::RequesterJobs, Rule::OutsideHours, Rule::TenantRate];

    /// Stable identifier: the first word of an alert's reason, and its
    /// metric label.
    pub fn id(self) -> &'static str {
        match self {
            Rule::Burst => "burst",
            Rule::RequesterJobs => "requester-jobs",
            Rule::OutsideHours => "outside-hours",
            Rule::TenantRate => "tenant-rate",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// "More than `max` within `window_ms`."
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountRule {
    /// The most that raises nothing.
    pub max: u64,
    /// The window, in milliseconds (at least one).
    pub window_ms: i64,
}

impl CountRule {
    /// The rule, or `None` (off) when `max` is 0 or the window empty.
    pub fn new(max: u64, window_ms: i64) -> Option<Self> {
        (max > 0 && window_ms > 0).then_some(Self { max, window_ms })
    }
}

/// Why release hours did not parse. It never repeats the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HoursError {
    /// The hours.
    #[error("write the hours as HH:MM-HH:MM with two different times, e.g. 08:00-20:00 (24:00 ends the day; 22:00-06:00 crosses midnight), or \"off\"")]
    Hours,
    /// The days.
    #[error("write the days as days or ranges of mon, tue, wed, thu, fri, sat, sun, separated by commas, e.g. mon-fri or mon-fri,sun")]
    Days,
    /// The offset.
    #[error("write the offset from UTC as +HH:MM or -HH:MM (hours up to 14), e.g. +09:00 for Japan")]
    Offset,
}

/// When numbers may leave without an alarm: a span of each allowed day,
/// in a fixed offset from UTC (no daylight saving; Japan has none).
///
/// A span that crosses midnight (`22:00-06:00`) is read on the day the
/// release falls on: each allowed day, from midnight to the end and from
/// the start to midnight. Public holidays are not known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReleaseHours {
    /// Minute of the day the span starts (inclusive), 0..1440.
    from: u16,
    /// Minute of the day it ends (exclusive), 1..=1440.
    to: u16,
    /// Allowed days, bit 0 Monday … bit 6 Sunday.
    days: u8,
    /// Offset from UTC in minutes.
    offset_minutes: i32,
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const EVERY_DAY: u8 = 0b111_1111;

impl ReleaseHours {
    /// Parses `hours` (`08:00-20:00`), `days` (`mon-fri`, `mon-sun`,
    /// `mon-fri,sat`) and `offset` (`+09:00`).
    pub fn parse(hours: &str, days: &str, offset: &str) -> Result<Self, HoursError> {
        let (from, to) = hours.trim().split_once('-').ok_or(HoursError::Hours)?;
        let (from, to) = (clock_minute(from, false), clock_minute(to, true));
        // "00:00-24:00" is every minute: allowed, if pointless.
        let (Some(from), Some(to)) = (from, to) else { return Err(HoursError::Hours) };
        if from == to {
            return Err(HoursError::Hours);
        }
        // Both are within 0..=1440.
        let (from, to) = (from as u16, to as u16);
        Ok(Self { from, to, days: parse_days(days)?, offset_minutes: parse_offset(offset)? })
    }

    /// Whether a release at `time_ms` (Unix milliseconds) is within the hours.
    pub fn allows(&self, time_ms: i64) -> bool {
        let (weekday, minute) = self.local(time_ms);
        let in_span = if self.from < self.to {
            (self.from..self.to).contains(&minute)
        } else {
            minute >= self.from || minute < self.to
        };
        in_span && self.days & (1 << weekday) != 0
    }

    /// Day of the week (0 Monday) and minute of the day of `time_ms`, locally.
    fn local(&self, time_ms: i64) -> (u8, u16) {
        let minutes = time_ms.div_euclid(60_000).saturating_add(i64::from(self.offset_minutes));
        let day = minutes.div_euclid(MINUTES_PER_DAY);
        // 1970-01-01 was a Thursday.
        let weekday = (day + 3).rem_euclid(7) as u8;
        (weekday, minutes.rem_euclid(MINUTES_PER_DAY) as u16)
    }

    /// The form [`ReleaseHours::parse`] reads back, in one string:
    /// `08:00-20:00 mon,tue,wed,thu,fri +09:00`.
    pub fn canonical(&self) -> String {
        let days: Vec<_> = (0..7).filter(|d| self.days & (1 << d) != 0).map(|d| DAY_NAMES[d]).collect();
        format!("{}-{} {} {}", clock(self.from), clock(self.to), days.join(","), offset_text(self.offset_minutes))
    }

    /// `time_ms` as people read it here: `Tue 23:10 +09:00`.
    pub fn describe(&self, time_ms: i64) -> String {
        let (weekday, minute) = self.local(time_ms);
        let name = DAY_NAMES[usize::from(weekday)];
        let day = format!("{}{}", name[..1].to_uppercase(), &name[1..]);
        format!("{day} {} {}", clock(minute), offset_text(self.offset_minutes))
    }
}

impl fmt::Display for ReleaseHours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{} ", clock(self.from), clock(self.to))?;
        if self.days == EVERY_DAY {
            f.write_str("every day")?;
        } else {
            let days: Vec<_> = (0..7).filter(|d| self.days & (1 << d) != 0).map(|d| DAY_NAMES[d]).collect();
            f.write_str(&days.join(","))?;
        }
        write!(f, " (UTC{})", offset_text(self.offset_minutes))
    }
}

/// `HH:MM` as minutes of the day; `24:00` only as an end.
fn clock_minute(text: &str, end: bool) -> Option<i64> {
    let (hours, minutes) = text.trim().split_once(':')?;
    let two_digits = |t: &str| match t.as_bytes() {
        [a @ b'0'..=b'9', b @ b'0'..=b'9'] => Some(i64::from(a - b'0') * 10 + i64::from(b - b'0')),
        _ => None,
    };
    let (hours, minutes) = (two_digits(hours)?, two_digits(minutes)?);
    match (hours, minutes) {
        (24, 0) if end => Some(1440),
        (0..=23, 0..=59) => Some(hours * 60 + minutes),
        _ => None,
    }
}

fn parse_days(text: &str) -> Result<u8, HoursError> {
    let day = |name: &str| DAY_NAMES.iter().position(|d| d.eq_ignore_ascii_case(name.trim()));
    let mut days = 0u8;
    for part in text.split(',') {
        let (first, last) = match part.split_once('-') {
            Some((first, last)) => (day(first), day(last)),
            None => (day(part), day(part)),
        };
        let (Some(first), Some(last)) = (first, last) else { return Err(HoursError::Days) };
        // A range may wrap the week: sat-mon.
        let mut d = first;
        loop {
            days |= 1 << d;
            if d == last {
                break;
            }
            d = (d + 1) % 7;
        }
    }
    Ok(days)
}

fn parse_offset(text: &str) -> Result<i32, HoursError> {
    let text = text.trim();
    let sign = match text.as_bytes().first() {
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => return Err(HoursError::Offset),
    };
    let minutes = clock_minute(&text[1..], false).ok_or(HoursError::Offset)?;
    if minutes > 14 * 60 {
        return Err(HoursError::Offset);
    }
    Ok(sign * minutes as i32)
}

fn clock(minute: u16) -> String {
    format!("{:02}:{:02}", minute / 60, minute % 60)
}

fn offset_text(minutes: i32) -> String {
    let sign = if minutes < 0 { '-' } else { '+' };
    format!("{sign}{}", clock(minutes.unsigned_abs() as u16))
}

/// A window as people read it: `60 s`, `5 min`, `24 h`.
fn span(ms: i64) -> String {
    match ms {
        ms if ms % 3_600_000 == 0 => format!("{} h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{} min", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{} s", ms / 1000),
        ms => format!("{ms} ms"),
    }
}

/// Which rules are on, and their thresholds. The default has every rule
/// off; the vault's configuration turns them on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlarmRules {
    /// [`Rule::Burst`], per principal.
    pub burst: Option<CountRule>,
    /// [`Rule::RequesterJobs`], per principal.
    pub requester_jobs: Option<CountRule>,
    /// [`Rule::OutsideHours`], per principal and tenant.
    pub release_hours: Option<ReleaseHours>,
    /// [`Rule::TenantRate`], per tenant.
    pub tenant_rate: Option<CountRule>,
}

/// Who did what, where: the parsed identifiers of a successful call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occasion {
    /// The caller.
    pub principal: Principal,
    /// The tenant.
    pub tenant: TenantId,
    /// The filing job.
    pub job: Option<JobId>,
    /// Its purpose.
    pub purpose: Option<Purpose>,
}

impl Occasion {
    /// The occasion `draft` (a call's entry) names, if it names a caller
    /// and a tenant.
    pub fn of(draft: &AuditDraft) -> Option<Self> {
        Some(Self {
            principal: draft.principal.clone()?,
            tenant: draft.tenant.clone()?,
            job: draft.job_id.clone(),
            purpose: draft.purpose,
        })
    }
}

/// An alert to raise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// The rule.
    pub rule: Rule,
    /// The call that crossed it.
    pub occasion: Occasion,
    /// What was seen and the threshold, naming its setting (no caller text).
    pub reason: String,
}

impl Alert {
    /// The vault's own audit entry of the alert: the principal that
    /// triggered it, the tenant, the job and the reason.
    pub fn draft(&self) -> AuditDraft {
        let Occasion { principal, tenant, job, purpose } = self.occasion.clone();
        let mut draft = AuditDraft::by(&principal, Operation::RaiseAlert, Some(&tenant));
        draft.job_id = job;
        draft.purpose = purpose;
        draft.reason = self.reason.clone();
        draft
    }
}

/// What one key has done lately.
/// How far back the clock must go, beyond a window, for a key's counts to
/// start again.
const CLOCK_STEP_RESET_MS: i64 = 60 * 60 * 1000;

#[derive(Debug, Clone)]
struct Slot {
    /// (slice number, amount) for the last [`SLICES`] slices, by slice number modulo [`SLICES`].
    slices: [(i64, u64); SLICES],
    /// The latest time seen: time never goes back for a key.
    latest_ms: i64,
    /// When its alert was raised last.
    alerted_ms: Option<i64>,
}

impl Slot {
    fn new(now_ms: i64) -> Self {
        Self { slices: [(i64::MIN, 0); SLICES], latest_ms: now_ms, alerted_ms: None }
    }

    /// Whether an alert raised at `alerted_ms` no longer covers `now`.
    fn may_alert(&self, now_ms: i64, window_ms: i64) -> bool {
        self.alerted_ms.is_none_or(|at| now_ms.saturating_sub(at) >= window_ms)
    }
}

/// Counts per key, for at most `capacity` keys.
#[derive(Debug)]
struct Tracker<K> {
    slots: HashMap<K, Slot>,
}

impl<K: Hash + Eq + Clone> Tracker<K> {
    fn new() -> Self {
        Self { slots: HashMap::new() }
    }

    /// The slot of `key`, made room for: past `capacity`, first the keys
    /// whose last `horizon_ms` was quiet go, then the one seen longest ago.
    fn slot(&mut self, key: &K, now_ms: i64, horizon_ms: i64, capacity: usize) -> &mut Slot {
        if !self.slots.contains_key(key) && self.slots.len() >= capacity {
            self.slots.retain(|_, slot| now_ms.saturating_sub(slot.latest_ms) < horizon_ms);
            while self.slots.len() >= capacity.max(1) {
                let Some(oldest) = self.slots.iter().min_by_key(|(_, slot)| slot.latest_ms).map(|(k, _)| k.clone())
                else {
                    break;
                };
                self.slots.remove(&oldest);
            }
        }
        let slot = self.slots.entry(key.clone()).or_insert_with(|| Slot::new(now_ms));
        // A clock stepped back by more than a window and an hour (after a
        // wrong step forward) would otherwise pile every count into one
        // slice of the future until real time caught up: start the key
        // afresh instead. Smaller steps back count at the latest time seen.
        if slot.latest_ms.saturating_sub(now_ms) > horizon_ms.max(CLOCK_STEP_RESET_MS) {
            tracing::warn!(behind_ms = slot.latest_ms - now_ms, "the clock went back; alarm counts start again");
            *slot = Slot::new(now_ms);
        }
        slot.latest_ms = slot.latest_ms.max(now_ms);
        slot
    }

    /// Adds `amount` for `key` at `now_ms`; the count within the window if
    /// it is more than the rule allows and no alert of it is raised yet.
    fn count(&mut self, key: &K, amount: u64, now_ms: i64, rule: CountRule, capacity: usize) -> Option<u64> {
        let slot = self.slot(key, now_ms, rule.window_ms, capacity);
        let now = slot.latest_ms;
        let slice_ms = (rule.window_ms + SLICES as i64 - 1) / SLICES as i64;
        let current = now.div_euclid(slice_ms);
        let entry = &mut slot.slices[current.rem_euclid(SLICES as i64) as usize];
        if entry.0 != current {
            *entry = (current, 0);
        }
        entry.1 = entry.1.saturating_add(amount);
        let oldest = current.saturating_sub(SLICES as i64 - 1);
        let total = slot
            .slices
            .iter()
            .filter(|(slice, _)| (oldest..=current).contains(slice))
            .fold(0u64, |total, (_, amount)| total.saturating_add(*amount));
        if total > rule.max && slot.may_alert(now, rule.window_ms) {
            slot.alerted_ms = Some(now);
            return Some(total);
        }
        None
    }

    /// Whether an alert for `key` is due at `now_ms`, once per `repeat_ms`.
    fn once(&mut self, key: &K, now_ms: i64, repeat_ms: i64, capacity: usize) -> bool {
        let slot = self.slot(key, now_ms, repeat_ms, capacity);
        let now = slot.latest_ms;
        if slot.may_alert(now, repeat_ms) {
            slot.alerted_ms = Some(now);
            return true;
        }
        false
    }

    fn len(&self) -> usize {
        self.slots.len()
    }

    fn clear(&mut self) {
        self.slots.clear();
    }
}

/// The alarms of one vault process: the rules and what each has counted.
#[derive(Debug)]
pub struct Alarms {
    rules: AlarmRules,
    capacity: usize,
    burst: Tracker<Principal>,
    requester_jobs: Tracker<Principal>,
    outside_hours: Tracker<(Principal, TenantId)>,
    tenant_rate: Tracker<TenantId>,
}

impl Default for Alarms {
    fn default() -> Self {
        Self::new(AlarmRules::default())
    }
}

impl Alarms {
    /// Alarms with `rules`, tracking [`DEFAULT_CAPACITY`] keys per rule.
    pub fn new(rules: AlarmRules) -> Self {
        Self::with_capacity(rules, DEFAULT_CAPACITY)
    }

    /// Alarms with `rules`, tracking at most `capacity` keys per rule.
    pub fn with_capacity(rules: AlarmRules, capacity: usize) -> Self {
        Self {
            rules,
            capacity: capacity.max(1),
            burst: Tracker::new(),
            requester_jobs: Tracker::new(),
            outside_hours: Tracker::new(),
            tenant_rate: Tracker::new(),
        }
    }

    /// The rules in force.
    pub fn rules(&self) -> &AlarmRules {
        &self.rules
    }

    /// Replaces the rules (a reload). What a rule counted is kept while
    /// its window stays the same, and forgotten when it changes or the rule
    /// goes off.
    pub fn set_rules(&mut self, rules: AlarmRules) {
        let window = |rule: Option<CountRule>| rule.map(|r| r.window_ms);
        if window(self.rules.burst) != window(rules.burst) {
            self.burst.clear();
        }
        if window(self.rules.requester_jobs) != window(rules.requester_jobs) {
            self.requester_jobs.clear();
        }
        if rules.release_hours.is_none() {
            self.outside_hours.clear();
        }
        if window(self.rules.tenant_rate) != window(rules.tenant_rate) {
            self.tenant_rate.clear();
        }
        self.rules = rules;
    }

    /// Keys tracked now, over every rule (at most four times the capacity).
    pub fn tracked(&self) -> usize {
        self.burst.len() + self.requester_jobs.len() + self.outside_hours.len() + self.tenant_rate.len()
    }

    /// `count` numbers released (committed) at `now_ms` on `occasion`: the
    /// alerts to raise, in the order of [`Rule::ALL`].
    pub fn observe_release(&mut self, occasion: &Occasion, count: u64, now_ms: i64) -> Vec<Alert> {
        let mut alerts = Vec::new();
        if count == 0 {
            return alerts;
        }
        let capacity = self.capacity;
        if let Some(rule) = self.rules.burst {
            if let Some(total) = self.burst.count(&occasion.principal, count, now_ms, rule, capacity) {
                let reason = format!(
                    "{}: {total} numbers released by this principal within {}, more than alarms.burst_max_numbers \
                     ({})",
                    Rule::Burst,
                    span(rule.window_ms),
                    rule.max
                );
                alerts.push(Alert { rule: Rule::Burst, occasion: occasion.clone(), reason });
            }
        }
        if let Some(hours) = self.rules.release_hours.filter(|hours| !hours.allows(now_ms)) {
            let key = (occasion.principal.clone(), occasion.tenant.clone());
            if self.outside_hours.once(&key, now_ms, OUTSIDE_HOURS_REPEAT_MS, capacity) {
                let reason = format!(
                    "{}: numbers released on {}, outside the release hours {hours} (alarms.release_hours, \
                     alarms.release_days)",
                    Rule::OutsideHours,
                    hours.describe(now_ms)
                );
                alerts.push(Alert { rule: Rule::OutsideHours, occasion: occasion.clone(), reason });
            }
        }
        if let Some(rule) = self.rules.tenant_rate {
            if let Some(total) = self.tenant_rate.count(&occasion.tenant, count, now_ms, rule, capacity) {
                let reason = format!(
                    "{}: {total} numbers released in this tenant within {}, more than \
                     alarms.tenant_max_numbers_per_hour ({})",
                    Rule::TenantRate,
                    span(rule.window_ms),
                    rule.max
                );
                alerts.push(Alert { rule: Rule::TenantRate, occasion: occasion.clone(), reason });
            }
        }
        alerts
    }

    /// A filing job created (committed) at `now_ms` on `occasion`: the
    /// alerts to raise.
    pub fn observe_job_created(&mut self, occasion: &Occasion, now_ms: i64) -> Vec<Alert> {
        let Some(rule) = self.rules.requester_jobs else { return Vec::new() };
        let Some(total) = self.requester_jobs.count(&occasion.principal, 1, now_ms, rule, self.capacity) else {
            return Vec::new();
        };
        let reason = format!(
            "{}: {total} filing jobs created by this principal within {}, more than \
             alarms.requester_max_jobs_per_day ({})",
            Rule::RequesterJobs,
            span(rule.window_ms),
            rule.max
        );
        vec![Alert { rule: Rule::RequesterJobs, occasion: occasion.clone(), reason }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60_000;
    const HOUR: i64 = 60 * MINUTE;
    const DAY: i64 = 24 * HOUR;
    /// Monday 2024-01-15 00:00 UTC (09:00 in Japan).
    const MONDAY_UTC: i64 = 1_705_276_800_000;

    fn occasion(principal: &str, tenant: &str) -> Occasion {
        Occasion {
            principal: Principal::parse(principal).unwrap(),
            tenant: TenantId::parse(tenant).unwrap(),
            job: Some(crate::mint::draw_job_id()),
            purpose: Some(Purpose::ALL[0]),
        }
    }

    fn rules(
        burst: Option<CountRule>,
        jobs: Option<CountRule>,
        hours: Option<&str>,
        rate: Option<CountRule>,
    ) -> AlarmRules {
        AlarmRules {
            burst,
            requester_jobs: jobs,
            release_hours: hours.map(|h| ReleaseHours::parse(h, "mon-sun", "+09:00").unwrap()),
            tenant_rate: rate,
        }
    }

    fn rules_of(alerts: &[Alert]) -> Vec<Rule> {
        alerts.iter().map(|a| a.rule).collect()
    }

    #[test]
    fn a_burst_is_raised_once_it_crosses_the_threshold_and_once_per_window() {
        let mut alarms = Alarms::new(rules(CountRule::new(100, MINUTE), None, None, None));
        let filer = occasion("filer", "demo");
        let t = MONDAY_UTC;
        assert!(alarms.observe_release(&filer, 60, t).is_empty());
        assert!(alarms.observe_release(&filer, 40, t + 1_000).is_empty(), "100 is not more than 100");
        let alerts = alarms.observe_release(&filer, 1, t + 2_000);
        assert_eq!(rules_of(&alerts), [Rule::Burst]);
        let alert = &alerts[0];
        assert!(alert.reason.starts_with("burst: 101 numbers"), "{}", alert.reason);
        assert!(alert.reason.contains("alarms.burst_max_numbers (100)") && alert.reason.contains("1 min"));
        // The rest of the same burst raises nothing more.
        for i in 0..10 {
            assert!(alarms.observe_release(&filer, 50, t + 3_000 + i * 1_000).is_empty());
        }
        // Another filer is counted apart.
        assert!(alarms.observe_release(&occasion("filer2", "demo"), 100, t + 20_000).is_empty());
        // A burst that goes on past the window raises it again.
        assert_eq!(rules_of(&alarms.observe_release(&filer, 200, t + 2_000 + MINUTE)), [Rule::Burst]);
    }

    #[test]
    fn a_window_slides_and_forgets_what_is_older() {
        let mut alarms = Alarms::new(rules(CountRule::new(100, MINUTE), None, None, None));
        let filer = occasion("filer", "demo");
        let t = MONDAY_UTC;
        assert!(alarms.observe_release(&filer, 90, t).is_empty());
        // Still within the window: 90 + 20.
        assert_eq!(rules_of(&alarms.observe_release(&filer, 20, t + 50_000)), [Rule::Burst]);

        let mut alarms = Alarms::new(rules(CountRule::new(100, MINUTE), None, None, None));
        assert!(alarms.observe_release(&filer, 90, t).is_empty());
        // A window later, the 90 are gone: 20 alone, then 80 more is 100.
        assert!(alarms.observe_release(&filer, 20, t + MINUTE + 5_000).is_empty());
        assert!(alarms.observe_release(&filer, 80, t + MINUTE + 10_000).is_empty());
        assert_eq!(rules_of(&alarms.observe_release(&filer, 1, t + MINUTE + 11_000)), [Rule::Burst]);
    }

    #[test]
    fn a_clock_that_goes_back_neither_hides_nor_doubles_a_count() {
        let mut alarms = Alarms::new(rules(CountRule::new(100, MINUTE), None, None, None));
        let filer = occasion("filer", "demo");
        assert!(alarms.observe_release(&filer, 90, MONDAY_UTC).is_empty());
        // Ten minutes back: counted at the latest time seen, with the 90.
        assert_eq!(rules_of(&alarms.observe_release(&filer, 20, MONDAY_UTC - 10 * MINUTE)), [Rule::Burst]);
    }

    /// Review finding: a clock stepped a day forward and back froze a
    /// principal's counts in one slice of the future.
    #[test]
    fn a_clock_stepped_forward_and_back_counts_afresh() {
        let mut alarms = Alarms::new(rules(CountRule::new(100, MINUTE), None, None, None));
        let filer = occasion("filer", "demo");
        assert_eq!(rules_of(&alarms.observe_release(&filer, 101, MONDAY_UTC + DAY)), [Rule::Burst]);
        // Back to the right time: a new burst is seen as one.
        assert!(alarms.observe_release(&filer, 60, MONDAY_UTC).is_empty());
        assert_eq!(rules_of(&alarms.observe_release(&filer, 60, MONDAY_UTC + 1_000)), [Rule::Burst]);
    }

    #[test]
    fn many_jobs_by_one_requester_in_a_day_raise_one_alert() {
        let mut alarms = Alarms::new(rules(None, CountRule::new(3, DAY), None, None));
        let requester = occasion("requester", "demo");
        let t = MONDAY_UTC;
        for i in 0..3 {
            assert!(alarms.observe_job_created(&requester, t + i * HOUR).is_empty());
        }
        // The fourth in another tenant still counts for the requester.
        let elsewhere = occasion("requester", "acme");
        let alerts = alarms.observe_job_created(&elsewhere, t + 4 * HOUR);
        assert_eq!(rules_of(&alerts), [Rule::RequesterJobs]);
        assert_eq!(alerts[0].occasion.tenant.as_str(), "acme");
        assert!(
            alerts[0].reason.contains("4 filing jobs") && alerts[0].reason.contains("24 h"),
            "{}",
            alerts[0].reason
        );
        assert!(alarms.observe_job_created(&requester, t + 5 * HOUR).is_empty(), "once per window");
        // Releases do not count as jobs, nor jobs as releases.
        assert!(alarms.observe_release(&requester, 1_000, t).is_empty());
        // A day later the count starts again.
        let mut fresh = Alarms::new(rules(None, CountRule::new(3, DAY), None, None));
        for i in 0..3 {
            assert!(fresh.observe_job_created(&requester, t + i * 9 * HOUR).is_empty());
        }
        assert!(fresh.observe_job_created(&requester, t + 27 * HOUR).is_empty(), "the first is over a day old");
    }

    #[test]
    fn releases_outside_hours_raise_one_alert_per_principal_and_tenant_an_hour() {
        // 08:00-20:00 in Japan is 23:00-11:00 UTC.
        let mut alarms = Alarms::new(rules(None, None, Some("08:00-20:00"), None));
        let filer = occasion("filer", "demo");
        assert!(alarms.observe_release(&filer, 5, MONDAY_UTC).is_empty(), "09:00 in Japan");
        assert!(alarms.observe_release(&filer, 5, MONDAY_UTC + 10 * HOUR + 59 * MINUTE).is_empty(), "19:59");
        let night = MONDAY_UTC + 11 * HOUR + 10 * MINUTE; // Monday 20:10 in Japan
        let alerts = alarms.observe_release(&filer, 1, night);
        assert_eq!(rules_of(&alerts), [Rule::OutsideHours]);
        assert!(alerts[0].reason.contains("Mon 20:10 +09:00"), "{}", alerts[0].reason);
        assert!(alerts[0].reason.contains("08:00-20:00 every day (UTC+09:00)"), "{}", alerts[0].reason);
        assert!(alarms.observe_release(&filer, 1, night + 30 * MINUTE).is_empty(), "once an hour");
        assert_eq!(alarms.observe_release(&occasion("filer", "acme"), 1, night).len(), 1, "another tenant");
        assert_eq!(alarms.observe_release(&filer, 1, night + HOUR).len(), 1, "an hour later");
    }

    #[test]
    fn release_hours_parse_and_read_days_offsets_and_midnight() {
        let weekdays = ReleaseHours::parse("08:00-20:00", "mon-fri", "+09:00").unwrap();
        let saturday_noon_japan = MONDAY_UTC + 5 * DAY + 3 * HOUR;
        assert!(!weekdays.allows(saturday_noon_japan));
        assert!(weekdays.allows(saturday_noon_japan - DAY), "Friday noon");
        let night_shift = ReleaseHours::parse("22:00-06:00", "mon-sun", "+00:00").unwrap();
        assert!(night_shift.allows(MONDAY_UTC + 23 * HOUR));
        assert!(night_shift.allows(MONDAY_UTC + 5 * HOUR));
        assert!(!night_shift.allows(MONDAY_UTC + 12 * HOUR));
        let whole_day = ReleaseHours::parse("00:00-24:00", "sat-mon", "-05:30").unwrap();
        assert!(whole_day.allows(MONDAY_UTC));
        assert!(!whole_day.allows(MONDAY_UTC + 2 * DAY), "Tuesday 18:30 local is not in sat-mon");
        assert_eq!(format!("{whole_day}"), "00:00-24:00 mon,sat,sun (UTC-05:30)");

        for (hours, days, offset, error) in [
            ("8-20", "mon-sun", "+09:00", HoursError::Hours),
            ("08:00-08:00", "mon-sun", "+09:00", HoursError::Hours),
            ("24:00-08:00", "mon-sun", "+09:00", HoursError::Hours),
            ("08:00-20:60", "mon-sun", "+09:00", HoursError::Hours),
            ("08:00-20:00", "weekdays", "+09:00", HoursError::Days),
            ("08:00-20:00", "", "+09:00", HoursError::Days),
            ("08:00-20:00", "mon-sun", "09:00", HoursError::Offset),
            ("08:00-20:00", "mon-sun", "+15:00", HoursError::Offset),
            ("08:00-20:00", "mon-sun", "JST", HoursError::Offset),
        ] {
            assert_eq!(ReleaseHours::parse(hours, days, offset), Err(error), "{hours} {days} {offset}");
        }
    }

    #[test]
    fn a_tenant_rate_counts_every_principal_of_the_tenant() {
        let mut alarms = Alarms::new(rules(None, None, None, CountRule::new(1_000, HOUR)));
        let t = MONDAY_UTC;
        assert!(alarms.observe_release(&occasion("filer", "demo"), 600, t).is_empty());
        assert!(alarms.observe_release(&occasion("filer", "acme"), 900, t).is_empty(), "another tenant");
        let alerts = alarms.observe_release(&occasion("admin", "demo"), 401, t + 30 * MINUTE);
        assert_eq!(rules_of(&alerts), [Rule::TenantRate]);
        assert_eq!(alerts[0].occasion.principal.as_str(), "admin", "who crossed it");
        assert!(alerts[0].reason.contains("1001 numbers") && alerts[0].reason.contains("1 h"), "{}", alerts[0].reason);
        assert!(alarms.observe_release(&occasion("filer", "demo"), 600, t + 40 * MINUTE).is_empty());
    }

    #[test]
    fn one_release_may_cross_several_rules_and_the_entry_names_who_where_and_why() {
        let mut alarms =
            Alarms::new(rules(CountRule::new(10, MINUTE), None, Some("08:00-20:00"), CountRule::new(10, HOUR)));
        let filer = occasion("filer", "demo");
        // 08:00 in Japan, the first minute of the hours.
        let alerts = alarms.observe_release(&filer, 11, MONDAY_UTC - HOUR);
        assert_eq!(rules_of(&alerts), [Rule::Burst, Rule::TenantRate]);
        // 07:00.
        let mut alarms =
            Alarms::new(rules(CountRule::new(10, MINUTE), None, Some("08:00-20:00"), CountRule::new(10, HOUR)));
        let alerts = alarms.observe_release(&filer, 11, MONDAY_UTC - 2 * HOUR);
        assert_eq!(rules_of(&alerts), [Rule::Burst, Rule::OutsideHours, Rule::TenantRate]);
        let draft = alerts[1].draft();
        assert_eq!(draft.operation, Operation::RaiseAlert);
        assert_eq!(draft.principal.as_ref().map(Principal::as_str), Some("filer"));
        assert_eq!(draft.tenant.as_ref().map(TenantId::as_str), Some("demo"));
        assert_eq!(draft.job_id, filer.job);
        assert_eq!(draft.purpose, filer.purpose);
        assert!(draft.tokens.is_empty() && draft.record_count == 0 && draft.request_id.is_none());
        assert!(draft.reason.starts_with("outside-hours: "), "{}", draft.reason);
        assert_eq!(alarms.observe_release(&filer, 0, MONDAY_UTC - 2 * HOUR), [], "nothing released, nothing seen");
    }

    #[test]
    fn rules_that_are_off_raise_nothing() {
        let mut alarms = Alarms::default();
        let filer = occasion("filer", "demo");
        assert!(alarms.observe_release(&filer, u64::MAX, MONDAY_UTC - 2 * HOUR).is_empty());
        assert!(alarms.observe_release(&filer, u64::MAX, MONDAY_UTC - 2 * HOUR).is_empty(), "no overflow");
        assert!((0..100).all(|i| alarms.observe_job_created(&filer, MONDAY_UTC + i).is_empty()));
        assert_eq!(alarms.tracked(), 0);
        assert_eq!(CountRule::new(0, MINUTE), None);
        assert_eq!(CountRule::new(10, 0), None);
    }

    #[test]
    fn memory_stays_bounded_whatever_the_keys() {
        let capacity = 16;
        let all =
            rules(CountRule::new(5, MINUTE), CountRule::new(5, DAY), Some("08:00-09:00"), CountRule::new(5, HOUR));
        let mut alarms = Alarms::with_capacity(all, capacity);
        for i in 0..500 {
            let who = occasion(&format!("filer{i}"), &format!("tenant{i}"));
            alarms.observe_release(&who, 1, MONDAY_UTC + 3 * HOUR + i);
            alarms.observe_job_created(&who, MONDAY_UTC + 3 * HOUR + i);
            assert!(alarms.tracked() <= 4 * capacity, "{} keys after {i}", alarms.tracked());
        }
        // The keys seen last are kept: their counts go on.
        let last = occasion("filer499", "tenant499");
        let alerts = alarms.observe_release(&last, 5, MONDAY_UTC + 3 * HOUR + 600);
        assert_eq!(rules_of(&alerts), [Rule::Burst, Rule::TenantRate]);
    }

    #[test]
    fn a_reload_keeps_counts_under_the_same_window_and_forgets_them_under_another() {
        let mut alarms = Alarms::new(rules(CountRule::new(100, MINUTE), None, None, None));
        let filer = occasion("filer", "demo");
        assert!(alarms.observe_release(&filer, 90, MONDAY_UTC).is_empty());
        alarms.set_rules(rules(CountRule::new(50, MINUTE), None, None, None));
        assert_eq!(rules_of(&alarms.observe_release(&filer, 1, MONDAY_UTC + 1)), [Rule::Burst], "a lower threshold");
        alarms.set_rules(rules(CountRule::new(50, 2 * MINUTE), None, None, None));
        assert!(alarms.observe_release(&filer, 1, MONDAY_UTC + 2).is_empty(), "counted afresh");
        assert_eq!(alarms.rules().burst, CountRule::new(50, 2 * MINUTE));
    }
}
