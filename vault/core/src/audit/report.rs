//! The incident report (`mnvault audit report`): what the audit log says
//! about a window of time, laid out along the items of a leak report to the
//! PPC (漏えい等報告), with the evidence that the log was not altered.
//!
//! What it answers, from the log alone:
//! - how many distinct persons' numbers were released in the window (a
//!   person is a token of a tenant, counted once however often released),
//!   by tenant, principal, purpose and filing job, and which tokens, for the
//!   client company to map to people; a release is an entry of
//!   [`RELEASE_OPERATIONS`] carried out ([`super::Outcome::Ok`]);
//! - the refused attempts, the alerts ([`Operation::RaiseAlert`]), and the
//!   changes of keys, principals, tenants and retention
//!   ([`CHANGE_OPERATIONS`]);
//! - the chain and checkpoint evidence ([`ChainEvidence`]), and, when nothing
//!   was released, a statement that says so with that evidence.
//!
//! The rest of a leak report (cause, secondary damage, how the people were
//! told, publication, prevention) is marked "to be completed by the office".
//!
//! Every count is one aggregate statement of the store
//! ([`crate::store::ReportReadTx`]) over indexed columns, limited to the
//! entries the verification read (`up_to_seq`), so the numbers and the
//! evidence speak of the same log. The affected tokens are streamed from
//! the store to the output, never held together in memory: a window may
//! hold a million of them.
//!
//! Times are written in Japan time (RFC 3339, `+09:00`), hashes in
//! base64url: no long runs of digits, except in legacy tokens (twelve
//! digits with a wrong check digit), which the client company needs as they are.

use std::io::Write;

use futures::{StreamExt as _, TryStreamExt as _};
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

use super::checkpoint::{ChainEvidence, SignedCheckpoint};
use super::Operation;
use crate::id::TenantId;
use crate::store::{Store, StoreError};

/// The operations that release numbers: `Detokenize` (in plaintext, to a
/// filer) and the tenant export (encrypted to the client's age key).
pub const RELEASE_OPERATIONS: [Operation; 2] = [Operation::Detokenize, Operation::ExportTenant];

/// The operations that change keys, principals, tenants or retention, with
/// what they change, for people.
pub const CHANGE_OPERATIONS: [(Operation, &str); 10] = [
    (Operation::ReloadPrincipals, "principals and their grants"),
    (Operation::CreateTenant, "tenants"),
    (Operation::ShredTenant, "tenants"),
    (Operation::RotateTenantKey, "tenant keys"),
    (Operation::RetireKeyVersion, "tenant keys"),
    (Operation::RewrapTenantRecords, "tenant keys"),
    (Operation::RotateRootKey, "root key"),
    (Operation::RotateSigningKey, "signing key"),
    (Operation::SetRetention, "retention"),
    (Operation::DeleteRecords, "retention"),
];

/// Rows a breakdown (by job, by principal, refused attempts…) holds at
/// most; a longer one is cut and says so.
pub const MAX_GROUPS: u32 = 50_000;

/// Breakdowns of releases asked for at once: each sorts the window's
/// released tokens on its own read connection (SQLite's pool has four).
const CONCURRENT_BREAKDOWNS: usize = 2;

/// Entries listed at most (alerts, changes); the rest are counted.
pub const MAX_LISTED: u32 = 1_000;

/// The words for what the log cannot answer.
pub const TO_BE_COMPLETED: &str = "to be completed by the office";

/// Version of the JSON structure; changes only when a field changes meaning
/// or goes away.
pub const JSON_VERSION: u32 = 1;

// ---------------------------------------------------------------------------
// What the store is asked.

/// Which tenant's entries a report statement reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantFilter {
    /// Every tenant's, and the entries of none.
    Any,
    /// This tenant's only.
    Only(TenantId),
    /// Only entries filed under no tenant (the empty tenant column).
    NoTenant,
}

/// Which outcomes a report statement reads. A store writes these as the
/// literals `outcome = 'ok'` and `outcome <> 'ok'` (the identifier of
/// [`super::Outcome::Ok`]), which its partial indexes name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeFilter {
    /// Any outcome.
    Any,
    /// Carried out.
    Ok,
    /// Refused or failed.
    NotOk,
}

/// The entries a report statement reads: appended at a time in
/// [`since_ms`, `until_ms`), at a position up to `up_to_seq`.
#[derive(Debug, Clone)]
pub struct ReportFilter {
    /// From this time (Unix ms, inclusive).
    pub since_ms: i64,
    /// Before this time (Unix ms, exclusive).
    pub until_ms: i64,
    /// After this entry (0: from the first).
    pub after_seq: u64,
    /// Up to this entry (the head the verification read).
    pub up_to_seq: u64,
    /// Which tenant.
    pub tenant: TenantFilter,
    /// Only these operation identifiers (every operation when empty).
    pub operations: Vec<&'static str>,
    /// Which outcomes.
    pub outcome: OutcomeFilter,
}

/// The columns a breakdown groups by; none: one group of everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Grouping {
    /// By tenant.
    pub tenant: bool,
    /// By principal.
    pub principal: bool,
    /// By purpose.
    pub purpose: bool,
    /// By filing job.
    pub job: bool,
    /// By operation.
    pub operation: bool,
    /// By outcome.
    pub outcome: bool,
}

/// One row of a breakdown, as the store counted it. Columns not grouped by
/// are empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportGroup {
    /// The `tenant` column.
    pub tenant: String,
    /// The `principal` column.
    pub principal: String,
    /// The `purpose` column.
    pub purpose: String,
    /// The `job_id` column.
    pub job_id: String,
    /// The `operation` column.
    pub operation: String,
    /// The `outcome` column.
    pub outcome: String,
    /// Distinct tokens named (token breakdowns; 0 in entry breakdowns).
    pub persons: u64,
    /// Token rows (numbers sent, in a release breakdown); in an entry
    /// breakdown, the sum of the entries' record counts.
    pub numbers: u64,
    /// Entries.
    pub entries: u64,
    /// The first entry's time (Unix ms), if any.
    pub first_ms: Option<i64>,
    /// The last entry's time (Unix ms), if any.
    pub last_ms: Option<i64>,
}

/// An entry as a report lists it (without its tokens and chain fields).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportEntry {
    /// Position.
    pub seq: u64,
    /// Unix ms.
    pub time_ms: i64,
    /// The `principal` column.
    pub principal: String,
    /// The `tenant` column.
    pub tenant: String,
    /// The `operation` column.
    pub operation: String,
    /// The `outcome` column.
    pub outcome: String,
    /// The `reason` column.
    pub reason: String,
    /// The `job_id` column.
    pub job_id: String,
    /// The `purpose` column.
    pub purpose: String,
    /// The `record_count` column.
    pub record_count: u64,
}

/// A released token: one person of one tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReleasedToken {
    /// The tenant.
    pub tenant: String,
    /// The token.
    pub token: String,
    /// Release entries naming it.
    pub releases: u64,
    /// The first of them (Unix ms).
    pub first_ms: i64,
    /// The last of them (Unix ms).
    pub last_ms: i64,
}

// ---------------------------------------------------------------------------
// Gathering.

/// What a report is about.
#[derive(Debug, Clone)]
pub struct ReportQuery {
    /// From this time (Unix ms, inclusive).
    pub since_ms: i64,
    /// Before this time (Unix ms, exclusive).
    pub until_ms: i64,
    /// Only this tenant.
    pub tenant: Option<TenantId>,
}

/// Why a report's window was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WindowError(String);

impl ReportQuery {
    /// A report of `since` to `until` (each RFC 3339, or a date `YYYY-MM-DD`
    /// meaning midnight in Japan), for one tenant or all; `until` must be
    /// after `since`. The refusal names the option, never its text.
    pub fn parse(since: &str, until: &str, tenant: Option<TenantId>) -> Result<Self, WindowError> {
        let since_ms = parse_time(since).ok_or_else(|| WindowError(time_problem("--since")))?;
        let until_ms = parse_time(until).ok_or_else(|| WindowError(time_problem("--until")))?;
        if until_ms <= since_ms {
            return Err(WindowError("--until must be later than --since (the window is [since, until))".into()));
        }
        Ok(Self { since_ms, until_ms, tenant })
    }

    fn filter(&self, up_to_seq: u64, operations: Vec<&'static str>, outcome: OutcomeFilter) -> ReportFilter {
        ReportFilter {
            since_ms: self.since_ms,
            until_ms: self.until_ms,
            after_seq: 0,
            up_to_seq,
            tenant: self.tenant.clone().map_or(TenantFilter::Any, TenantFilter::Only),
            operations,
            outcome,
        }
    }
}

fn time_problem(option: &str) -> String {
    format!(
        "{option} is neither an RFC 3339 time (2026-11-05T09:30:00+09:00) nor a date (2026-11-05, midnight in Japan)"
    )
}

/// Japan Standard Time.
const JST: UtcOffset = match UtcOffset::from_hms(9, 0, 0) {
    Ok(offset) => offset,
    Err(_) => UtcOffset::UTC,
};

/// Unix ms of an RFC 3339 time, or of midnight in Japan starting a date
/// `YYYY-MM-DD`.
pub fn parse_time(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
        return Some(crate::clock::to_ms(at));
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let date = Date::parse(text, &format).ok()?;
    Some(crate::clock::to_ms(PrimitiveDateTime::new(date, Time::MIDNIGHT).assume_offset(JST)))
}

/// Unix ms as RFC 3339 in Japan time.
pub fn japan_time(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|at| at.to_offset(JST).format(&Rfc3339).ok())
        .unwrap_or_else(|| "a time out of range".to_owned())
}

/// The log's verification, as the report quotes it.
#[derive(Debug, Clone)]
pub struct Verification {
    /// What the public verification found.
    pub evidence: ChainEvidence,
    /// Whether the trusted keys came from the database itself (no pinned
    /// key, no key given, no saved checkpoint): said loudly.
    pub anchors_from_database: bool,
    /// The last entry the report reads: the verified head, or where the
    /// log ended when it did not verify.
    pub up_to_seq: u64,
}

/// How far beyond a report's window (in time) its verification reaches, so
/// that entries of the window written by a replica whose clock was off by
/// less than this are inside what was verified.
pub const WINDOW_MARGIN_MS: i64 = 60 * 60 * 1000;

/// Verifies the log with public keys only (`walk`, see
/// [`crate::vault::checkpoint::LogWalk`]) for a report on `query`'s window;
/// `progress` is told how many entries were checked.
///
/// Only the part of the log the window needs: from the checkpoint signed
/// last before it began (whose signature vouches for everything before), to
/// the first checkpoint signed after it ended (`WINDOW_MARGIN_MS` on either
/// side, for clocks that disagree); to the head when none was.
pub async fn verify_for_report(
    store: &dyn Store,
    walk: crate::vault::checkpoint::LogWalk,
    query: &ReportQuery,
    anchors_from_database: bool,
    progress: impl FnMut(u64) + Send,
) -> Result<Verification, StoreError> {
    use crate::vault::checkpoint::{verify_log_range, LogRange, StopAt};
    let mut read = store.begin_read().await?;
    let head = read.audit_head().await?;
    // Where to start rests on signed times only: after the checkpoint
    // signed last before the window's margin began, so that every entry
    // written in the window lies after it, whatever dates the database
    // gives them. Its stored time counts once the walk checks its
    // signature (a forged one fails there). A saved checkpoint must lie
    // inside the walk.
    let margin_start = query.since_ms.saturating_sub(WINDOW_MARGIN_MS);
    let external_seq = walk.external_seq();
    // (Checked here too: a database could answer with a later one.)
    let mut start_after =
        read.audit_checkpoint_signed_before(margin_start).await?.filter(|anchor| anchor.time_ms < margin_start);
    if let Some(external) = external_seq.filter(|seq| start_after.as_ref().is_some_and(|a| a.seq >= *seq)) {
        start_after = match external.checked_sub(1) {
            Some(before) if before > 0 => read.audit_checkpoint_at_or_before(before).await?,
            _ => None,
        };
    }
    drop(read);
    // Where to stop rests on signed times only: the first checkpoint signed
    // after the window's margin ended (and past the saved checkpoint).
    let stop =
        StopAt { from_seq: external_seq.unwrap_or(0), signed_from_ms: query.until_ms.saturating_add(WINDOW_MARGIN_MS) };
    let evidence = verify_log_range(store, walk, LogRange { start_after, stop: Some(stop) }, progress).await?;
    // Verified, the report reads what a signature made after the window
    // closed covers, when there is one (entries after it dated in the
    // window are counted apart), else up to where the walk ended; broken,
    // it reads the log as it stands, saying it does not verify.
    let last = evidence.first_seq.saturating_add(evidence.entries).saturating_sub(1);
    let up_to_seq = match (&evidence.broken, &evidence.last_checkpoint) {
        (Some(_), _) => head.seq.max(last),
        (None, Some(signed)) if signed.time_ms >= query.until_ms => signed.seq,
        (None, _) => last,
    };
    Ok(Verification { evidence, anchors_from_database, up_to_seq })
}

/// A breakdown and whether it was cut at [`MAX_GROUPS`].
#[derive(Debug, Clone, Default)]
pub struct Breakdown {
    /// The rows, sorted by their columns.
    pub rows: Vec<ReportGroup>,
    /// Whether there were more.
    pub truncated: bool,
}

/// What the log says about releases in the window.
#[derive(Debug, Clone, Default)]
pub struct Releases {
    /// Distinct persons (tokens of a tenant).
    pub persons: u64,
    /// Numbers sent (a person released twice counts twice).
    pub numbers: u64,
    /// Release entries (calls, export pages).
    pub entries: u64,
    /// By tenant.
    pub by_tenant: Breakdown,
    /// By tenant and principal.
    pub by_principal: Breakdown,
    /// By tenant and purpose.
    pub by_purpose: Breakdown,
    /// By tenant, job, purpose and principal.
    pub by_job: Breakdown,
}

/// Everything a report says but the token list.
#[derive(Debug, Clone)]
pub struct IncidentReport {
    /// The window and tenant.
    pub query: ReportQuery,
    /// When it was made (Unix ms).
    pub generated_ms: i64,
    /// The log's verification.
    pub verification: Verification,
    /// Releases.
    pub releases: Releases,
    /// Refused attempts by tenant, operation, principal and outcome.
    pub refused: Breakdown,
    /// Refused attempts in all.
    pub refused_entries: u64,
    /// For a one-tenant report: refused attempts in the window filed under
    /// no tenant (callers without a grant on any tenant they named), counted
    /// only: their principals may be another tenant's.
    pub refused_without_tenant: Option<u64>,
    /// Alerts, the first [`MAX_LISTED`].
    pub alerts: Vec<ReportEntry>,
    /// Alerts in all.
    pub alert_entries: u64,
    /// Changes carried out by operation, principal and tenant.
    pub change_counts: Breakdown,
    /// Changes, the first [`MAX_LISTED`].
    pub changes: Vec<ReportEntry>,
    /// Changes in all.
    pub change_entries: u64,
    /// Entries dated in the window written after the signature the report
    /// reads up to ([`Verification::up_to_seq`]): not counted above.
    pub after_signature: u64,
}

fn release_ids() -> Vec<&'static str> {
    RELEASE_OPERATIONS.iter().map(|op| op.id()).collect()
}

fn change_ids() -> Vec<&'static str> {
    CHANGE_OPERATIONS.iter().map(|(op, _)| op.id()).collect()
}

fn breakdown(mut rows: Vec<ReportGroup>) -> Breakdown {
    let truncated = rows.len() > MAX_GROUPS as usize;
    rows.truncate(MAX_GROUPS as usize);
    for g in &mut rows {
        for text in [&mut g.tenant, &mut g.principal, &mut g.purpose, &mut g.job_id, &mut g.operation, &mut g.outcome] {
            screen(text);
        }
    }
    Breakdown { rows, truncated }
}

/// Entries as the report lists them, screened.
fn listed(mut entries: Vec<ReportEntry>) -> Vec<ReportEntry> {
    for e in &mut entries {
        for text in [
            &mut e.principal,
            &mut e.tenant,
            &mut e.operation,
            &mut e.outcome,
            &mut e.reason,
            &mut e.job_id,
            &mut e.purpose,
        ] {
            screen(text);
        }
    }
    entries
}

/// Text read from the database, with any run of digits that could be a
/// number redacted. The vault never writes one there; an entry the walk
/// could not check (a broken log, a legacy entry) might hold one.
fn screen(text: &mut String) {
    if let std::borrow::Cow::Owned(redacted) = crate::number::redact_numbers(text) {
        *text = redacted;
    }
}

impl IncidentReport {
    /// Asks the store what the log says about `query`, up to the entry the
    /// verification read: a few aggregate statements.
    pub async fn gather(
        store: &dyn Store,
        query: ReportQuery,
        verification: Verification,
        generated_ms: i64,
    ) -> Result<Self, StoreError> {
        let up_to = verification.up_to_seq;
        let limit = MAX_GROUPS + 1;

        // The four breakdowns of releases each sort every released token of
        // the window: two at a time, each on its own read connection (what
        // they count lies below `up_to`, which no later write changes).
        let released = query.filter(up_to, release_ids(), OutcomeFilter::Ok);
        let by = |g: Grouping| Grouping { tenant: true, ..g };
        let groupings = [
            by(Grouping::default()),
            by(Grouping { principal: true, ..Grouping::default() }),
            by(Grouping { purpose: true, ..Grouping::default() }),
            by(Grouping { job: true, purpose: true, principal: true, ..Grouping::default() }),
        ];
        let released_ref = &released;
        let mut breakdowns: Vec<Breakdown> = futures::stream::iter(groupings)
            .map(|grouping| async move {
                let rows = store.begin_read().await?.report_token_groups(released_ref, grouping, limit).await?;
                Ok::<_, StoreError>(breakdown(rows))
            })
            .buffered(CONCURRENT_BREAKDOWNS)
            .try_collect()
            .await?;
        let by_job = breakdowns.pop().unwrap_or_default();
        let by_purpose = breakdowns.pop().unwrap_or_default();
        let by_principal = breakdowns.pop().unwrap_or_default();
        let by_tenant = breakdowns.pop().unwrap_or_default();
        let mut tx = store.begin_read().await?;
        // A person is a token of a tenant: the tenants' counts add up, if
        // none was cut off; else one count over all (tokens are drawn at
        // random, so one token in two tenants is not to be expected).
        let totals = if by_tenant.truncated {
            tx.report_token_groups(&released, Grouping::default(), 1).await?.pop().unwrap_or_default()
        } else {
            let sum = |f: fn(&ReportGroup) -> u64| by_tenant.rows.iter().map(f).sum::<u64>();
            ReportGroup {
                persons: sum(|g| g.persons),
                numbers: sum(|g| g.numbers),
                entries: sum(|g| g.entries),
                ..ReportGroup::default()
            }
        };
        let releases = Releases {
            persons: totals.persons,
            numbers: totals.numbers,
            entries: totals.entries,
            by_tenant,
            by_principal,
            by_purpose,
            by_job,
        };

        let refused_filter = query.filter(up_to, Vec::new(), OutcomeFilter::NotOk);
        let refused_by =
            Grouping { tenant: true, operation: true, principal: true, outcome: true, ..Grouping::default() };
        let refused = breakdown(tx.report_entry_groups(&refused_filter, refused_by, limit).await?);
        let refused_entries = count(tx.as_mut(), &refused_filter).await?;
        let refused_without_tenant = match &query.tenant {
            None => None,
            Some(_) => {
                let filter = ReportFilter { tenant: TenantFilter::NoTenant, ..refused_filter.clone() };
                Some(count(tx.as_mut(), &filter).await?)
            }
        };

        let alert_filter = query.filter(up_to, vec![Operation::RaiseAlert.id()], OutcomeFilter::Any);
        let alerts = listed(tx.report_entries(&alert_filter, MAX_LISTED).await?);
        let alert_entries = count(tx.as_mut(), &alert_filter).await?;

        let change_filter = query.filter(up_to, change_ids(), OutcomeFilter::Ok);
        let change_by = Grouping { operation: true, principal: true, tenant: true, ..Grouping::default() };
        let change_counts = breakdown(tx.report_entry_groups(&change_filter, change_by, limit).await?);
        let changes = listed(tx.report_entries(&change_filter, MAX_LISTED).await?);
        let change_entries = count(tx.as_mut(), &change_filter).await?;

        let mut beyond = query.filter(u64::MAX, Vec::new(), OutcomeFilter::Any);
        beyond.after_seq = up_to;
        let after_signature = count(tx.as_mut(), &beyond).await?;

        Ok(Self {
            query,
            generated_ms,
            verification,
            releases,
            refused,
            refused_entries,
            refused_without_tenant,
            alerts,
            alert_entries,
            change_counts,
            changes,
            change_entries,
            after_signature,
        })
    }

    /// Whether the log records no release in the window.
    pub fn nothing_released(&self) -> bool {
        self.releases.entries == 0 && self.releases.numbers == 0
    }

    fn release_filter(&self) -> ReportFilter {
        self.query.filter(self.verification.up_to_seq, release_ids(), OutcomeFilter::Ok)
    }
}

async fn count(tx: &mut dyn crate::store::ReadTx, filter: &ReportFilter) -> Result<u64, StoreError> {
    let all = tx.report_entry_groups(filter, Grouping::default(), 1).await?;
    Ok(all.first().map_or(0, |group| group.entries))
}

// ---------------------------------------------------------------------------
// The statement and the evidence, in words.

fn scope(query: &ReportQuery) -> String {
    match &query.tenant {
        Some(tenant) => format!(" for tenant \"{tenant}\""),
        None => String::new(),
    }
}

fn window(query: &ReportQuery) -> String {
    format!("between {} and {}", japan_time(query.since_ms), japan_time(query.until_ms))
}

fn b64(bytes: &[u8]) -> String {
    data_encoding::BASE64URL_NOPAD.encode(bytes)
}

fn plural(count: u64, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

impl IncidentReport {
    /// The statement at the top of the report: whether numbers left the
    /// vault in the window, and how far the evidence carries it. Plain
    /// sentences, one paragraph each.
    pub fn statement(&self) -> Vec<String> {
        let evidence = &self.verification.evidence;
        let (window, scope) = (window(&self.query), scope(&self.query));
        let mut paragraphs = Vec::new();
        if let Some(broken) = &evidence.broken {
            paragraphs.push(format!(
                "WARNING: the audit log does NOT verify: {broken}. What follows is what the log says as it stands; \
                 it cannot be relied on from that entry on. Run `mnvault audit verify` and investigate the log first."
            ));
        }
        if self.nothing_released() {
            let doubts = self.doubts();
            if doubts.is_empty() {
                paragraphs.push(format!(
                    "No number left the vault {window}{scope}, according to its audit log: the log records no \
                     release (no {} or {} carried out) in that window.",
                    Operation::Detokenize.id(),
                    Operation::ExportTenant.id()
                ));
            } else if evidence.broken.is_none() {
                paragraphs.push(format!(
                    "The audit log records no release {window}{scope}, but this is not conclusive evidence that no \
                     number left the vault: {}. See the evidence below.",
                    doubts.join("; ")
                ));
            } else {
                paragraphs.push(format!(
                    "The audit log records no release {window}{scope}, but since it does not verify this is not \
                     evidence that no number left the vault."
                ));
            }
        } else {
            let releases = &self.releases;
            paragraphs.push(format!(
                "Numbers of {} left the vault {window}{scope}, according to its audit log: {} sent in {} \
                 (see items 1 and 3, and appendix E for the tokens).",
                plural(releases.persons, "person", "persons"),
                plural(releases.numbers, "number", "numbers"),
                plural(releases.entries, "release", "releases"),
            ));
        }
        paragraphs.extend(self.evidence_sentences());
        paragraphs
    }

    /// Why the evidence falls short of proving the window's releases (none
    /// when the log verifies, a signature made after the window closed
    /// covers it, its keys did not come from the database, and every entry
    /// read could be checked): each a clause for people.
    pub fn doubts(&self) -> Vec<String> {
        let evidence = &self.verification.evidence;
        let mut doubts = Vec::new();
        if evidence.broken.is_some() {
            doubts.push("the log does not verify".to_owned());
        } else if !self.window_signed() {
            doubts.push("no signature made after the window closed covers it".to_owned());
        }
        if self.verification.anchors_from_database {
            doubts.push("the keys it was verified with were read from the database itself (UNPINNED)".to_owned());
        }
        if evidence.unchecked_legacy > 0 {
            doubts.push("entries written before signed checkpoints could be checked by their links only".to_owned());
        }
        if self.after_signature > 0 {
            doubts.push(format!(
                "{} dated in the window came after the last signature covering it and are not counted",
                plural(self.after_signature, "entry", "entries")
            ));
        }
        doubts
    }

    /// The evidence, in sentences.
    pub fn evidence_sentences(&self) -> Vec<String> {
        let evidence = &self.verification.evidence;
        let mut out = Vec::new();
        let checked = match &evidence.broken {
            None if evidence.first_seq > 1 => format!(
                "Evidence: the log verifies with public keys only from entry #{} to #{} (hash `{}`), starting after \
                 the signed checkpoint of #{} that vouches for every entry before it, trusting {}.",
                evidence.first_seq,
                self.verification.up_to_seq,
                b64(&evidence.head_hash),
                evidence.first_seq - 1,
                evidence.anchored_by
            ),
            None => format!(
                "Evidence: the log verifies with public keys only from entry #1 to #{} (hash `{}`), trusting {}.",
                self.verification.up_to_seq,
                b64(&evidence.head_hash),
                evidence.anchored_by
            ),
            Some(broken) => format!(
                "Evidence: with public keys only (trusting {}), the log verifies from entry #{} up to #{} and breaks \
                 at {broken}.",
                evidence.anchored_by,
                evidence.first_seq,
                evidence.first_seq.saturating_add(evidence.entries).saturating_sub(1)
            ),
        };
        out.push(checked);
        match &evidence.last_checkpoint {
            Some(last) => {
                out.push(format!(
                    "{} verified; the last covers entries #1 to #{}, signed at {} by {}.",
                    plural(evidence.checkpoints_verified, "signed checkpoint", "signed checkpoints"),
                    last.seq,
                    japan_time(last.time_ms),
                    last.signer.key_id()
                ));
                if self.window_signed() {
                    out.push(
                        "That signature was made after the window closed, so it covers every entry of the window: \
                         none can have been changed, removed, inserted or reordered without this verification \
                         failing."
                            .into(),
                    );
                } else if evidence.broken.is_none() {
                    out.push(format!(
                        "Caution: no signature made after the window closed covers it; the {} after the last \
                         checkpoint are covered by the hash chain only, so entries removed from the end of the log \
                         would not show. Sign a checkpoint now (`mnvault audit checkpoint --out FILE`) and compare \
                         with checkpoints kept outside the server (`--checkpoint FILE`).",
                        plural(evidence.unsigned_tail, "entry", "entries")
                    ));
                }
            }
            None => out.push(
                "Caution: no signed checkpoint was verified, so nothing but the hash chain vouches for the log; \
                 entries removed from its end, or a log rewritten whole, would not show."
                    .into(),
            ),
        }
        if self.after_signature > 0 {
            out.push(format!(
                "Caution: {} dated in the window {} written after that signature; the report does not count {}. \
                 A vault's clock set back, or entries appended by whoever holds the database: sign a checkpoint \
                 (`mnvault audit checkpoint --out FILE`) and report again.",
                plural(self.after_signature, "entry", "entries"),
                if self.after_signature == 1 { "was" } else { "were" },
                if self.after_signature == 1 { "it" } else { "them" },
            ));
        }
        if let Some(external) = &evidence.external_checkpoint {
            if evidence.broken.is_none() {
                out.push(format!(
                    "The log extends the saved checkpoint at entry #{} signed at {} by {}: it was neither cut back \
                     nor rewritten up to there.",
                    external.seq,
                    japan_time(external.time_ms),
                    external.signer.key_id()
                ));
            }
        }
        if self.verification.anchors_from_database {
            out.push(
                "Caution: the trusted signing keys were read from the database itself. Pin the vault's public key \
                 (`[audit] public_key`, or `--public-key`) or give a checkpoint kept outside the server \
                 (`--checkpoint FILE`) for evidence that does not rest on the database."
                    .into(),
            );
        }
        if evidence.unchecked_legacy > 0 {
            out.push(format!(
                "{} written before signed checkpoints {} checked by {} links only (their hashes need the vault's key).",
                plural(evidence.unchecked_legacy, "entry", "entries"),
                if evidence.unchecked_legacy == 1 { "was" } else { "were" },
                if evidence.unchecked_legacy == 1 { "its" } else { "their" },
            ));
        }
        out
    }
}

// ---------------------------------------------------------------------------
// Layout: one document, written as Markdown or HTML.

/// The formats a report is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    /// Markdown (GitHub tables).
    Markdown,
    /// One JSON object ([`JSON_VERSION`]).
    Json,
    /// One self-contained HTML page.
    Html,
}

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Reading the log failed.
    #[error("reading the audit log failed: {0}")]
    Store(#[from] StoreError),
    /// Writing the report failed.
    #[error("writing the report failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A piece of text in a paragraph or a cell.
#[derive(Debug, Clone)]
enum Span {
    /// Text from the log: everything escaped.
    Text(String),
    /// The report's own sentences: what stands between backticks is code.
    Prose(String),
    Code(String),
    Strong(String),
    /// "to be completed by the office".
    Todo,
}

#[derive(Debug, Clone)]
enum Block {
    Heading(u8, String),
    Para(Vec<Span>),
    Bullets(Vec<Vec<Span>>),
    Table(Vec<&'static str>, Vec<Vec<Span>>),
}

fn text(s: impl Into<String>) -> Span {
    Span::Text(s.into())
}

fn prose(s: impl Into<String>) -> Span {
    Span::Prose(s.into())
}

fn code(s: impl Into<String>) -> Span {
    Span::Code(s.into())
}

fn or_none(s: &str) -> Span {
    if s.is_empty() {
        text("(none)")
    } else {
        code(s)
    }
}

fn time_cell(ms: Option<i64>) -> Span {
    ms.map_or_else(|| text(""), |ms| text(japan_time(ms)))
}

fn number(n: u64) -> Span {
    text(n.to_string())
}

/// A column of a breakdown's table: its heading and its cell.
type GroupColumn = (&'static str, fn(&ReportGroup) -> Span);

/// The table of `breakdown`'s rows, one cell per column.
fn group_table(breakdown: &Breakdown, columns: &[GroupColumn]) -> Block {
    Block::Table(
        columns.iter().map(|(heading, _)| *heading).collect(),
        breakdown.rows.iter().map(|g| columns.iter().map(|(_, cell)| cell(g)).collect()).collect(),
    )
}

/// What a change operation changes, as Appendix D says it.
fn change_what(operation: &str) -> &'static str {
    CHANGE_OPERATIONS.iter().find(|(op, _)| op.id() == operation).map_or("", |(_, what)| what)
}

fn cut_note(breakdown: &Breakdown, what: &str) -> Option<Block> {
    breakdown.truncated.then(|| {
        Block::Para(vec![
            Span::Strong(format!("Only the first {MAX_GROUPS} {what} are listed.")),
            text(" Narrow the window or name a tenant (--tenant), or read the JSON format."),
        ])
    })
}

impl IncidentReport {
    fn document(&self) -> Vec<Block> {
        let q = &self.query;
        let r = &self.releases;
        let mut doc = Vec::new();
        doc.push(Block::Heading(1, "Incident report: what the vault's audit log shows (漏えい等報告の資料)".into()));
        doc.push(Block::Table(
            vec!["Field", "Value"],
            vec![
                vec![
                    text("Window"),
                    text(format!("{} (inclusive) to {} (exclusive)", japan_time(q.since_ms), japan_time(q.until_ms))),
                ],
                vec![text("Tenant"), q.tenant.as_ref().map_or_else(|| text("every tenant"), |t| code(t.as_str()))],
                vec![text("Log read up to"), text(format!("entry #{}", self.verification.up_to_seq))],
                vec![text("Produced"), prose(format!("{} by `mnvault audit report`", japan_time(self.generated_ms)))],
            ],
        ));
        doc.push(Block::Para(vec![
            text(
                "Laid out along the items of a leak report to the Personal Information Protection Commission. \
                  What the audit log cannot answer is marked ",
            ),
            Span::Todo,
            text("."),
        ]));

        doc.push(Block::Heading(2, "Statement".into()));
        let statement = self.statement();
        for (i, paragraph) in statement.into_iter().enumerate() {
            doc.push(Block::Para(vec![if i == 0 { Span::Strong(paragraph) } else { prose(paragraph) }]));
        }

        doc.push(Block::Heading(2, "1. What happened (概要)".into()));
        doc.push(Block::Para(vec![text(format!(
            "From the audit log, {}: {} released ({} sent in {}); {} refused; {}; {} of keys, principals, tenants or \
             retention.",
            window(q),
            plural(r.persons, "person's number", "persons' numbers"),
            plural(r.numbers, "number", "numbers"),
            plural(r.entries, "release", "releases"),
            plural(self.refused_entries, "attempt", "attempts"),
            plural(self.alert_entries, "alert", "alerts"),
            plural(self.change_entries, "change", "changes"),
        ))]));
        doc.push(Block::Para(vec![
            Span::Strong("How the incident was found, by whom and when, and what happened:".into()),
            text(" "),
            Span::Todo,
            text("."),
        ]));

        doc.push(Block::Heading(
            2,
            "2. Which data items (漏えい等が発生し、又は発生したおそれがある個人データの項目)".into(),
        ));
        doc.push(Block::Para(vec![text(format!(
            "Individual Numbers (個人番号) of the persons in appendix E. The vault holds numbers only, each under a \
             token: {} releases them in plaintext to a filer within an approved filing job; {} releases a tenant's \
             numbers encrypted to the client's age key (purpose tenant-export), which matters only if that key leaked.",
            Operation::Detokenize.id(),
            Operation::ExportTenant.id()
        ))]));
        doc.push(Block::Para(vec![
            Span::Strong("Other items of the same persons involved (names, addresses…):".into()),
            text(" "),
            Span::Todo,
            text("."),
        ]));

        doc.push(Block::Heading(2, "3. How many people (本人の数)".into()));
        doc.push(Block::Para(vec![text(format!(
            "{} whose numbers were released {}{}. A person is a token of a tenant, counted once however often it was \
             released; the client company maps tokens to people (appendix E).",
            plural(r.persons, "distinct person", "distinct persons"),
            window(q),
            scope(q)
        ))]));
        doc.push(group_table(
            &r.by_tenant,
            &[
                ("Tenant", |g| or_none(&g.tenant)),
                ("Persons", |g| number(g.persons)),
                ("Numbers sent", |g| number(g.numbers)),
                ("Releases", |g| number(g.entries)),
                ("First", |g| time_cell(g.first_ms)),
                ("Last", |g| time_cell(g.last_ms)),
            ],
        ));
        doc.extend(cut_note(&r.by_tenant, "tenants"));

        doc.push(Block::Heading(2, "4. Cause (原因)".into()));
        doc.push(Block::Para(vec![Span::Strong("Cause:".into()), text(" "), Span::Todo, text(".")]));
        doc.push(Block::Para(vec![text(
            "What the log shows that may bear on it: who released (appendix A), refused attempts (appendix B), \
             alerts (appendix C), changes of keys, principals, tenants and retention (appendix D).",
        )]));
        for (number, heading) in [
            (5, "Secondary damage (二次被害又はそのおそれの有無及びその内容)"),
            (6, "How the people were told (本人への対応の実施状況)"),
            (7, "Publication (公表の実施状況)"),
            (8, "Prevention (再発防止のための措置)"),
        ] {
            doc.push(Block::Heading(2, format!("{number}. {heading}")));
            doc.push(Block::Para(vec![Span::Todo, text(".")]));
        }

        doc.push(Block::Heading(2, "9. Evidence: the audit log's integrity (その他参考となる事項)".into()));
        doc.push(Block::Bullets(self.evidence_sentences().into_iter().map(|s| vec![prose(s)]).collect()));

        doc.push(Block::Heading(2, "Appendix A. Releases by principal, purpose and filing job".into()));
        doc.push(Block::Heading(3, "By principal".into()));
        doc.push(group_table(
            &r.by_principal,
            &[
                ("Tenant", |g| or_none(&g.tenant)),
                ("Principal", |g| or_none(&g.principal)),
                ("Persons", |g| number(g.persons)),
                ("Numbers sent", |g| number(g.numbers)),
                ("Releases", |g| number(g.entries)),
                ("First", |g| time_cell(g.first_ms)),
                ("Last", |g| time_cell(g.last_ms)),
            ],
        ));
        doc.extend(cut_note(&r.by_principal, "principals"));
        doc.push(Block::Heading(3, "By purpose".into()));
        doc.push(group_table(
            &r.by_purpose,
            &[
                ("Tenant", |g| or_none(&g.tenant)),
                ("Purpose", |g| or_none(&g.purpose)),
                ("Persons", |g| number(g.persons)),
                ("Numbers sent", |g| number(g.numbers)),
                ("Releases", |g| number(g.entries)),
            ],
        ));
        doc.extend(cut_note(&r.by_purpose, "purposes"));
        doc.push(Block::Heading(3, "By filing job".into()));
        doc.push(group_table(
            &r.by_job,
            &[
                ("Tenant", |g| or_none(&g.tenant)),
                ("Job", |g| or_none(&g.job_id)),
                ("Purpose", |g| or_none(&g.purpose)),
                ("Released to", |g| or_none(&g.principal)),
                ("Persons", |g| number(g.persons)),
                ("Numbers sent", |g| number(g.numbers)),
                ("Releases", |g| number(g.entries)),
                ("First", |g| time_cell(g.first_ms)),
                ("Last", |g| time_cell(g.last_ms)),
            ],
        ));
        doc.extend(cut_note(&r.by_job, "jobs"));

        doc.push(Block::Heading(2, "Appendix B. Refused attempts".into()));
        doc.push(Block::Para(vec![text(format!(
            "{} in the window (calls refused by a rule, malformed, naming what does not exist, or failed).",
            plural(self.refused_entries, "refused attempt", "refused attempts")
        ))]));
        if let Some(without) = self.refused_without_tenant {
            doc.push(Block::Para(vec![text(format!(
                "Besides, {} in the window named no tenant (callers without a grant on the tenant they named, or \
                 calls that named none); they are counted only, since their principals may be another tenant's: \
                 the report of every tenant lists them.",
                plural(without, "refused attempt", "refused attempts")
            ))]));
        }
        doc.push(group_table(
            &self.refused,
            &[
                ("Tenant", |g| or_none(&g.tenant)),
                ("Operation", |g| or_none(&g.operation)),
                ("Principal", |g| or_none(&g.principal)),
                ("Outcome", |g| or_none(&g.outcome)),
                ("Attempts", |g| number(g.entries)),
                ("First", |g| time_cell(g.first_ms)),
                ("Last", |g| time_cell(g.last_ms)),
            ],
        ));
        doc.extend(cut_note(&self.refused, "kinds of refusal"));

        doc.push(Block::Heading(2, "Appendix C. Alerts".into()));
        doc.push(Block::Para(vec![text(format!(
            "{} in the window ({}).",
            plural(self.alert_entries, "alert", "alerts"),
            Operation::RaiseAlert.id()
        ))]));
        doc.push(entry_table(&self.alerts));
        doc.extend(listed_note(self.alerts.len(), self.alert_entries, Operation::RaiseAlert.id()));

        doc.push(Block::Heading(2, "Appendix D. Changes of keys, principals, tenants and retention".into()));
        doc.push(group_table(
            &self.change_counts,
            &[
                ("Operation", |g| or_none(&g.operation)),
                ("What it changes", |g| text(change_what(&g.operation))),
                ("Principal", |g| or_none(&g.principal)),
                ("Tenant", |g| or_none(&g.tenant)),
                ("Entries", |g| number(g.entries)),
                ("First", |g| time_cell(g.first_ms)),
                ("Last", |g| time_cell(g.last_ms)),
            ],
        ));
        doc.extend(cut_note(&self.change_counts, "kinds of change"));
        doc.push(entry_table(&self.changes));
        doc.extend(listed_note(self.changes.len(), self.change_entries, "OPERATION"));

        doc.push(Block::Heading(2, "Appendix E. Affected tokens".into()));
        doc.push(Block::Para(vec![text(format!(
            "Every token whose number was released {}{}, by tenant and token ({} in all). The client company maps \
             each token to a person.",
            window(q),
            scope(q),
            plural(r.persons, "token", "tokens")
        ))]));
        doc
    }
}

const TOKEN_COLUMNS: [&str; 6] = ["No.", "Tenant", "Token", "Releases", "First release", "Last release"];

fn token_row(index: u64, token: &ReleasedToken) -> Vec<Span> {
    vec![
        number(index),
        or_none(&token.tenant),
        code(&token.token),
        number(token.releases),
        text(japan_time(token.first_ms)),
        text(japan_time(token.last_ms)),
    ]
}

fn entry_table(entries: &[ReportEntry]) -> Block {
    Block::Table(
        vec!["Entry no.", "Time", "Operation", "Principal", "Tenant", "Job", "Records", "Reason"],
        entries
            .iter()
            .map(|e| {
                vec![
                    number(e.seq),
                    text(japan_time(e.time_ms)),
                    or_none(&e.operation),
                    or_none(&e.principal),
                    or_none(&e.tenant),
                    or_none(&e.job_id),
                    number(e.record_count),
                    text(&e.reason),
                ]
            })
            .collect(),
    )
}

fn listed_note(listed: usize, total: u64, operation: &str) -> Option<Block> {
    ((listed as u64) < total).then(|| {
        Block::Para(vec![prose(format!(
            "Only the first {listed} of {total} are listed; `mnvault audit search --operation {operation} --since … \
             --until …` lists them all."
        ))])
    })
}

// Markdown.

/// Whether `s` may stand in a code span as it is: the characters of the
/// vault's identifiers.
fn plain(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-:@/+=()".contains(c))
}

fn md_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 1);
    if s.starts_with('#') || s.starts_with('-') || s.starts_with('+') {
        out.push('\\');
    }
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        rest = &rest[c.len_utf8()..];
        // What a GitHub-style viewer would turn into a link (`https://`,
        // `www.`, `name@host`) is broken up by escapes.
        let autolink = (c == ':' && rest.starts_with("//"))
            || (c == '.' && out.get(out.len().saturating_sub(3)..).is_some_and(|end| end.eq_ignore_ascii_case("www")))
            || c == '@';
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '|' | '!' | '~' => {
                out.push('\\');
                out.push(c);
            }
            c if autolink => {
                out.push('\\');
                out.push(c);
            }
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Pieces of prose: (is code, text), code between backticks.
fn prose_pieces(s: &str) -> impl Iterator<Item = (bool, &str)> {
    s.split('`').enumerate().filter(|(_, piece)| !piece.is_empty()).map(|(i, piece)| (i % 2 == 1, piece))
}

fn md_span(span: &Span) -> String {
    match span {
        Span::Text(s) => md_text(s),
        Span::Prose(s) => prose_pieces(s)
            .map(
                |(is_code, piece)| {
                    if is_code && !piece.contains(['|', '\n', '\r']) {
                        format!("`{piece}`")
                    } else {
                        md_text(piece)
                    }
                },
            )
            .collect(),
        Span::Code(s) if plain(s) => format!("`{s}`"),
        Span::Code(s) => md_text(s),
        Span::Strong(s) => format!("**{}**", md_span(&Span::Prose(s.clone()))),
        Span::Todo => format!("*{TO_BE_COMPLETED}*"),
    }
}

fn md_spans(spans: &[Span]) -> String {
    spans.iter().map(md_span).collect()
}

fn md_row(cells: &[Span]) -> String {
    let cells: Vec<String> = cells.iter().map(md_span).collect();
    format!("| {} |\n", cells.join(" | "))
}

fn md_table_head(headers: &[&str]) -> String {
    let cells: Vec<String> = headers.iter().map(|h| md_text(h)).collect();
    let rule: Vec<&str> = headers.iter().map(|_| "---").collect();
    format!("| {} |\n| {} |\n", cells.join(" | "), rule.join(" | "))
}

fn write_markdown(doc: &[Block], out: &mut dyn Write) -> std::io::Result<()> {
    for block in doc {
        match block {
            Block::Heading(level, title) => writeln!(out, "{} {}\n", "#".repeat(usize::from(*level)), md_text(title))?,
            Block::Para(spans) => writeln!(out, "{}\n", md_spans(spans))?,
            Block::Bullets(items) => {
                for item in items {
                    writeln!(out, "- {}", md_spans(item))?;
                }
                writeln!(out)?;
            }
            Block::Table(headers, rows) => {
                if rows.is_empty() {
                    writeln!(out, "None.\n")?;
                    continue;
                }
                out.write_all(md_table_head(headers).as_bytes())?;
                for row in rows {
                    out.write_all(md_row(row).as_bytes())?;
                }
                writeln!(out)?;
            }
        }
    }
    Ok(())
}

// HTML.

/// `s` escaped for HTML text and attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn html_span(span: &Span) -> String {
    match span {
        Span::Text(s) => html_escape(s),
        Span::Prose(s) => prose_pieces(s)
            .map(
                |(is_code, piece)| {
                    if is_code {
                        format!("<code>{}</code>", html_escape(piece))
                    } else {
                        html_escape(piece)
                    }
                },
            )
            .collect(),
        Span::Code(s) => format!("<code>{}</code>", html_escape(s)),
        Span::Strong(s) => format!("<strong>{}</strong>", html_span(&Span::Prose(s.clone()))),
        Span::Todo => format!("<em class=\"todo\">{TO_BE_COMPLETED}</em>"),
    }
}

fn html_spans(spans: &[Span]) -> String {
    spans.iter().map(html_span).collect()
}

fn html_row(cells: &[Span]) -> String {
    let cells: String = cells.iter().map(|c| format!("<td>{}</td>", html_span(c))).collect();
    format!("<tr>{cells}</tr>\n")
}

fn html_table_head(headers: &[&str]) -> String {
    let cells: String = headers.iter().map(|h| format!("<th>{}</th>", html_escape(h))).collect();
    format!("<table>\n<thead><tr>{cells}</tr></thead>\n<tbody>\n")
}

const HTML_STYLE: &str = "body{font-family:sans-serif;max-width:75em;margin:2em auto;padding:0 1em;line-height:1.5}\
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #999;padding:.2em .5em;text-align:left;\
vertical-align:top}th{background:#eee}code{font-family:monospace}.todo{color:#a00}";

fn write_html_head(title: &str, out: &mut dyn Write) -> std::io::Result<()> {
    write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n\
         <title>{}</title>\n<style>{HTML_STYLE}</style>\n</head>\n<body>\n",
        html_escape(title)
    )
}

fn write_html(doc: &[Block], out: &mut dyn Write) -> std::io::Result<()> {
    for block in doc {
        match block {
            Block::Heading(level, title) => writeln!(out, "<h{level}>{}</h{level}>", html_escape(title))?,
            Block::Para(spans) => writeln!(out, "<p>{}</p>", html_spans(spans))?,
            Block::Bullets(items) => {
                writeln!(out, "<ul>")?;
                for item in items {
                    writeln!(out, "<li>{}</li>", html_spans(item))?;
                }
                writeln!(out, "</ul>")?;
            }
            Block::Table(headers, rows) => {
                if rows.is_empty() {
                    writeln!(out, "<p>None.</p>")?;
                    continue;
                }
                out.write_all(html_table_head(headers).as_bytes())?;
                for row in rows {
                    out.write_all(html_row(row).as_bytes())?;
                }
                writeln!(out, "</tbody>\n</table>")?;
            }
        }
    }
    Ok(())
}

// JSON.

#[derive(Serialize)]
struct JsonReport<'a> {
    report: &'static str,
    version: u32,
    generated: String,
    window: JsonWindow,
    tenant: Option<&'a str>,
    up_to_seq: u64,
    nothing_released: bool,
    statement: Vec<String>,
    evidence: JsonEvidence<'a>,
    releases: JsonReleases<'a>,
    refused: JsonRefused<'a>,
    alerts: JsonListed<'a>,
    changes: JsonChanges<'a>,
    to_be_completed_by_the_office: [&'static str; 6],
}

#[derive(Serialize)]
struct JsonWindow {
    since: String,
    until: String,
}

#[derive(Serialize)]
struct JsonCheckpoint {
    seq: u64,
    hash: String,
    time: String,
    signer: String,
    key_id: String,
}

impl From<&SignedCheckpoint> for JsonCheckpoint {
    fn from(c: &SignedCheckpoint) -> Self {
        Self {
            seq: c.seq,
            hash: b64(&c.hash),
            time: japan_time(c.time_ms),
            signer: c.signer.to_string(),
            key_id: c.signer.key_id(),
        }
    }
}

#[derive(Serialize)]
struct JsonBreak<'a> {
    seq: u64,
    problem: &'a str,
}

#[derive(Serialize)]
struct JsonEvidence<'a> {
    verified: bool,
    entries: u64,
    head_hash: String,
    checkpoints_verified: u64,
    last_checkpoint: Option<JsonCheckpoint>,
    window_signed: bool,
    /// No doubt below: the log proves what the report says of the window.
    conclusive: bool,
    doubts: Vec<String>,
    after_signature: u64,
    unsigned_tail: u64,
    unchecked_legacy: u64,
    anchored_by: &'a str,
    anchors_from_database: bool,
    external_checkpoint: Option<JsonCheckpoint>,
    broken: Option<JsonBreak<'a>>,
}

#[derive(Serialize)]
struct JsonGroup<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    principal: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    purpose: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    job_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    operation: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    persons: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    numbers: Option<u64>,
    entries: u64,
    first: Option<String>,
    last: Option<String>,
}

fn json_groups(breakdown: &Breakdown, by: Grouping, tokens: bool) -> Vec<JsonGroup<'_>> {
    breakdown
        .rows
        .iter()
        .map(|g| JsonGroup {
            tenant: by.tenant.then_some(g.tenant.as_str()),
            principal: by.principal.then_some(g.principal.as_str()),
            purpose: by.purpose.then_some(g.purpose.as_str()),
            job_id: by.job.then_some(g.job_id.as_str()),
            operation: by.operation.then_some(g.operation.as_str()),
            outcome: by.outcome.then_some(g.outcome.as_str()),
            persons: tokens.then_some(g.persons),
            numbers: tokens.then_some(g.numbers),
            entries: g.entries,
            first: g.first_ms.map(japan_time),
            last: g.last_ms.map(japan_time),
        })
        .collect()
}

#[derive(Serialize)]
struct JsonReleases<'a> {
    persons: u64,
    numbers: u64,
    entries: u64,
    truncated: bool,
    by_tenant: Vec<JsonGroup<'a>>,
    by_principal: Vec<JsonGroup<'a>>,
    by_purpose: Vec<JsonGroup<'a>>,
    by_job: Vec<JsonGroup<'a>>,
}

#[derive(Serialize)]
struct JsonRefused<'a> {
    entries: u64,
    truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    without_tenant: Option<u64>,
    groups: Vec<JsonGroup<'a>>,
}

#[derive(Serialize)]
struct JsonEntry<'a> {
    seq: u64,
    time: String,
    operation: &'a str,
    outcome: &'a str,
    principal: &'a str,
    tenant: &'a str,
    job_id: &'a str,
    purpose: &'a str,
    record_count: u64,
    reason: &'a str,
}

fn json_entries(entries: &[ReportEntry]) -> Vec<JsonEntry<'_>> {
    entries
        .iter()
        .map(|e| JsonEntry {
            seq: e.seq,
            time: japan_time(e.time_ms),
            operation: &e.operation,
            outcome: &e.outcome,
            principal: &e.principal,
            tenant: &e.tenant,
            job_id: &e.job_id,
            purpose: &e.purpose,
            record_count: e.record_count,
            reason: &e.reason,
        })
        .collect()
}

#[derive(Serialize)]
struct JsonListed<'a> {
    entries: u64,
    listed: Vec<JsonEntry<'a>>,
}

#[derive(Serialize)]
struct JsonChanges<'a> {
    entries: u64,
    truncated: bool,
    by_operation: Vec<JsonGroup<'a>>,
    listed: Vec<JsonEntry<'a>>,
}

#[derive(Serialize)]
struct JsonToken<'a> {
    tenant: &'a str,
    token: &'a str,
    releases: u64,
    first: String,
    last: String,
}

impl IncidentReport {
    /// Whether a signature made after the window closed covers it.
    pub fn window_signed(&self) -> bool {
        let evidence = &self.verification.evidence;
        evidence.broken.is_none()
            && evidence.last_checkpoint.as_ref().is_some_and(|last| last.time_ms >= self.query.until_ms)
    }

    fn json_head(&self) -> String {
        let evidence = &self.verification.evidence;
        let r = &self.releases;
        let tenant_only = Grouping { tenant: true, ..Grouping::default() };
        let report = JsonReport {
            report: "mnvault incident report",
            version: JSON_VERSION,
            generated: japan_time(self.generated_ms),
            window: JsonWindow { since: japan_time(self.query.since_ms), until: japan_time(self.query.until_ms) },
            tenant: self.query.tenant.as_ref().map(TenantId::as_str),
            up_to_seq: self.verification.up_to_seq,
            nothing_released: self.nothing_released(),
            statement: self.statement(),
            evidence: JsonEvidence {
                verified: evidence.broken.is_none(),
                entries: evidence.entries,
                head_hash: b64(&evidence.head_hash),
                checkpoints_verified: evidence.checkpoints_verified,
                last_checkpoint: evidence.last_checkpoint.as_ref().map(JsonCheckpoint::from),
                window_signed: self.window_signed(),
                conclusive: self.doubts().is_empty(),
                doubts: self.doubts(),
                after_signature: self.after_signature,
                unsigned_tail: evidence.unsigned_tail,
                unchecked_legacy: evidence.unchecked_legacy,
                anchored_by: &evidence.anchored_by,
                anchors_from_database: self.verification.anchors_from_database,
                external_checkpoint: evidence.external_checkpoint.as_ref().map(JsonCheckpoint::from),
                broken: evidence.broken.as_ref().map(|b| JsonBreak { seq: b.seq, problem: &b.problem }),
            },
            releases: JsonReleases {
                persons: r.persons,
                numbers: r.numbers,
                entries: r.entries,
                truncated: [&r.by_tenant, &r.by_principal, &r.by_purpose, &r.by_job].iter().any(|b| b.truncated),
                by_tenant: json_groups(&r.by_tenant, tenant_only, true),
                by_principal: json_groups(&r.by_principal, Grouping { principal: true, ..tenant_only }, true),
                by_purpose: json_groups(&r.by_purpose, Grouping { purpose: true, ..tenant_only }, true),
                by_job: json_groups(
                    &r.by_job,
                    Grouping { job: true, purpose: true, principal: true, ..tenant_only },
                    true,
                ),
            },
            refused: JsonRefused {
                entries: self.refused_entries,
                truncated: self.refused.truncated,
                without_tenant: self.refused_without_tenant,
                groups: json_groups(
                    &self.refused,
                    Grouping { operation: true, principal: true, outcome: true, ..tenant_only },
                    false,
                ),
            },
            alerts: JsonListed { entries: self.alert_entries, listed: json_entries(&self.alerts) },
            changes: JsonChanges {
                entries: self.change_entries,
                truncated: self.change_counts.truncated,
                by_operation: json_groups(
                    &self.change_counts,
                    Grouping { operation: true, principal: true, ..tenant_only },
                    false,
                ),
                listed: json_entries(&self.changes),
            },
            to_be_completed_by_the_office: [
                "what happened: how the incident was found, by whom and when",
                "other data items of the persons involved",
                "cause",
                "secondary damage",
                "how the people were told",
                "publication and prevention",
            ],
        };
        serde_json::to_string(&report).expect("a report serializes")
    }

    /// Writes the report in `format` to `out`, the affected tokens streamed
    /// from the store as it reads them; returns how many were written.
    pub async fn write(
        &self,
        store: &dyn Store,
        format: ReportFormat,
        out: &mut (dyn Write + Send),
    ) -> Result<u64, ReportError> {
        match format {
            ReportFormat::Markdown => {
                write_markdown(&self.document(), out)?;
                if self.nothing_released() {
                    writeln!(out, "None.")?;
                    return Ok(0);
                }
                out.write_all(md_table_head(&TOKEN_COLUMNS).as_bytes())?;
                self.stream_tokens(store, out, |index, token| md_row(&token_row(index, token))).await
            }
            ReportFormat::Html => {
                write_html_head("Incident report: what the vault's audit log shows", out)?;
                write_html(&self.document(), out)?;
                let written = if self.nothing_released() {
                    writeln!(out, "<p>None.</p>")?;
                    0
                } else {
                    out.write_all(html_table_head(&TOKEN_COLUMNS).as_bytes())?;
                    let written =
                        self.stream_tokens(store, out, |index, token| html_row(&token_row(index, token))).await?;
                    writeln!(out, "</tbody>\n</table>")?;
                    written
                };
                writeln!(out, "</body>\n</html>")?;
                Ok(written)
            }
            ReportFormat::Json => {
                // The head object, then the tokens as its last member, streamed.
                let head = self.json_head();
                let open = head.strip_suffix('}').expect("a JSON object ends with a brace");
                write!(out, "{open},\"affected_tokens\":[")?;
                let written = self
                    .stream_tokens(store, out, |index, token| {
                        let json = serde_json::to_string(&JsonToken {
                            tenant: &token.tenant,
                            token: &token.token,
                            releases: token.releases,
                            first: japan_time(token.first_ms),
                            last: japan_time(token.last_ms),
                        })
                        .expect("a token serializes");
                        if index == 1 {
                            format!("\n{json}")
                        } else {
                            format!(",\n{json}")
                        }
                    })
                    .await?;
                writeln!(out, "],\"affected_tokens_written\":{written}}}")?;
                Ok(written)
            }
        }
    }

    /// Streams the affected tokens, each as `row(index from 1, token)`
    /// makes it, to `out`.
    async fn stream_tokens(
        &self,
        store: &dyn Store,
        out: &mut (dyn Write + Send),
        row: impl Fn(u64, &ReleasedToken) -> String + Send + Sync,
    ) -> Result<u64, ReportError> {
        let filter = self.release_filter();
        let mut written = 0u64;
        let mut failed: Option<std::io::Error> = None;
        let mut each = |mut token: ReleasedToken| {
            written += 1;
            // A token of either format (the legacy one is twelve digits by
            // design), nothing else the database might hold.
            if crate::id::Token::parse(&token.token).is_err() {
                token.token = "(not a token)".into();
            }
            screen(&mut token.tenant);
            match out.write_all(row(written, &token).as_bytes()) {
                Ok(()) => true,
                Err(error) => {
                    failed = Some(error);
                    false
                }
            }
        };
        let mut tx = store.begin_read().await?;
        tx.report_tokens(&filter, &mut each).await?;
        drop(tx);
        if let Some(error) = failed {
            return Err(ReportError::Io(error));
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(numbers: u64, last_checkpoint_ms: Option<i64>) -> IncidentReport {
        let signing = mnvault_keys::VaultSigningKey::new(&mnvault_keys::KeyMaterial::generate());
        let last_checkpoint = last_checkpoint_ms
            .map(|ms| SignedCheckpoint::sign(&signing, &crate::store::ChainHead { seq: 40, hash: [1; 32] }, ms));
        let evidence = ChainEvidence {
            entries: 42,
            checkpoints_verified: u64::from(last_checkpoint.is_some()),
            unsigned_tail: if last_checkpoint.is_some() { 2 } else { 42 },
            last_checkpoint,
            anchored_by: "the pinned key".into(),
            ..ChainEvidence::default()
        };
        let by_tenant = Breakdown {
            rows: if numbers > 0 {
                vec![ReportGroup { tenant: "demo".into(), persons: 3, numbers, entries: 2, ..ReportGroup::default() }]
            } else {
                vec![]
            },
            truncated: false,
        };
        let persons = by_tenant.rows.iter().map(|g| g.persons).sum();
        let entries = by_tenant.rows.iter().map(|g| g.entries).sum();
        IncidentReport {
            query: ReportQuery::parse("2026-11-01", "2026-11-08", None).unwrap(),
            generated_ms: 0,
            verification: Verification { evidence, anchors_from_database: false, up_to_seq: 42 },
            releases: Releases { persons, numbers, entries, by_tenant, ..Releases::default() },
            refused: Breakdown::default(),
            refused_entries: 0,
            refused_without_tenant: None,
            alerts: vec![],
            alert_entries: 0,
            change_counts: Breakdown::default(),
            changes: vec![],
            change_entries: 0,
            after_signature: 0,
        }
    }

    #[test]
    fn windows_are_rfc3339_or_dates_in_japan_and_refused_by_name() {
        let query = ReportQuery::parse("2026-11-01", "2026-11-01T10:00:00+09:00", None).unwrap();
        assert_eq!(japan_time(query.since_ms), "2026-11-01T00:00:00+09:00");
        assert_eq!(query.until_ms - query.since_ms, 10 * 3_600_000);
        assert_eq!(parse_time("2026-10-31T15:00:00Z"), Some(query.since_ms));
        let error = ReportQuery::parse("123456789012", "2026-11-02", None).unwrap_err().to_string();
        assert!(error.starts_with("--since is neither") && !error.contains("1234"), "{error}");
        assert!(ReportQuery::parse("2026-11-02", "2026-11-01", None).unwrap_err().to_string().contains("later"));
    }

    #[test]
    fn the_statement_says_no_number_left_only_with_a_verified_log() {
        let quiet = report(0, Some(crate::clock::to_ms(time::macros::datetime!(2026-11-09 00:00 UTC))));
        let statement = quiet.statement().join("\n");
        assert!(statement.contains("No number left the vault between 2026-11-01T00:00:00+09:00"), "{statement}");
        assert!(statement.contains("covers every entry of the window"), "{statement}");

        let unsigned_window = report(0, Some(crate::clock::to_ms(time::macros::datetime!(2026-11-02 00:00 UTC))));
        let statement = unsigned_window.statement().join("\n");
        assert!(statement.contains("Caution: no signature made after the window"), "{statement}");
        assert!(statement.contains("not conclusive evidence that no number left the vault: no signature made after"));
        assert!(!statement.contains("No number left"), "{statement}");

        // Keys from the database, or entries after the signature: no claim.
        let mut unpinned = report(0, Some(crate::clock::to_ms(time::macros::datetime!(2026-11-09 00:00 UTC))));
        unpinned.verification.anchors_from_database = true;
        unpinned.after_signature = 2;
        let statement = unpinned.statement().join("\n");
        assert!(!statement.contains("No number left"), "{statement}");
        assert!(
            statement.contains("read from the database itself (UNPINNED); 2 entries dated in the window came after")
        );
        assert!(statement.contains("Caution: 2 entries dated in the window were written after that signature"));

        let mut broken = report(0, None);
        broken.verification.evidence.broken = Some(super::super::ChainBreak { seq: 7, problem: "changed".into() });
        let statement = broken.statement().join("\n");
        assert!(!statement.contains("No number left"), "{statement}");
        assert!(statement.contains("does NOT verify: entry #7: changed"), "{statement}");

        let released = report(5, None).statement().join("\n");
        assert!(released.contains("Numbers of 3 persons left the vault"), "{released}");
    }

    #[test]
    fn markdown_and_html_escape_what_the_log_holds() {
        assert_eq!(md_span(&code("mnt_abc")), "`mnt_abc`");
        assert_eq!(md_span(&code("a|b`c")), "a\\|b\\`c");
        assert_eq!(md_span(&text("<script>*x*")), "&lt;script&gt;\\*x\\*");
        // No autolinks: a viewer would make these clickable.
        assert_eq!(
            md_text("see https://x.example or WWW.x.example, a@b"),
            "see https\\://x.example or WWW\\.x.example, a\\@b"
        );
        assert_eq!(md_text("09:30 at 3.5"), "09:30 at 3.5");
        assert_eq!(html_escape("<a href='x'>&\"</a>"), "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;");
    }

    #[test]
    fn text_from_the_database_is_screened_for_numbers() {
        let first_eleven = *b"30271591844";
        let mut number = String::from_utf8(first_eleven.to_vec()).unwrap();
        number.push(char::from(b'0' + crate::number::check_digit(&first_eleven)));
        let rows = vec![ReportGroup { principal: format!("p-{number}"), ..ReportGroup::default() }];
        let screened = breakdown(rows);
        assert!(!screened.rows[0].principal.contains(&number), "{:?}", screened.rows[0].principal);
        let entries = listed(vec![ReportEntry { reason: format!("x {number} y"), ..ReportEntry::default() }]);
        assert!(!entries[0].reason.contains(&number) && entries[0].reason.starts_with("x "), "{}", entries[0].reason);
    }

    #[test]
    fn the_json_head_is_one_object_without_long_digit_runs() {
        let head = report(5, Some(1_800_000_000_000)).json_head();
        let value: serde_json::Value = serde_json::from_str(&head).unwrap();
        assert_eq!(value["releases"]["persons"], 3);
        assert_eq!(value["version"], JSON_VERSION);
        let mut run = 0;
        for c in head.chars() {
            run = if c.is_ascii_digit() { run + 1 } else { 0 };
            assert!(run < 12, "{head}");
        }
    }
}
