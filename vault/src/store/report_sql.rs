//! The statements of the incident report's steps, built once for either
//! backend: the grouping columns, the `WHERE` of a [`ReportFilter`], and
//! the decoding of their rows. What differs (SQLite's temporary store,
//! PostgreSQL's statement timeout, the planner hints) stays in each store.

use mnvault_core::audit::report::{
    Grouping, OutcomeFilter, ReleasedToken, ReportEntry, ReportFilter, ReportGroup, TenantFilter,
};
use mnvault_core::store::StoreError;
use sqlx::{ColumnIndex, Database, Decode, Encode, QueryBuilder, Row, Type};

use super::rows::{column, position};

/// The columns a report can group by, in the order they are grouped and sorted.
const GROUP_COLUMNS: [(&str, &str); 6] = [
    ("tenant", "e.tenant"),
    ("principal", "e.principal"),
    ("purpose", "e.purpose"),
    ("job_id", "e.job_id"),
    ("operation", "e.operation"),
    ("outcome", "e.outcome"),
];

fn grouped(by: Grouping) -> [bool; 6] {
    [by.tenant, by.principal, by.purpose, by.job, by.operation, by.outcome]
}

/// `SELECT` of the grouping columns: each grouped one, or `empty_text` (the
/// backend's empty text literal) under its name.
pub(crate) fn push_group_select<DB: Database>(query: &mut QueryBuilder<'_, DB>, by: Grouping, empty_text: &str) {
    query.push("SELECT ");
    for ((name, column), on) in GROUP_COLUMNS.iter().zip(grouped(by)) {
        if on {
            query.push(format_args!("{column} AS {name}, "));
        } else {
            query.push(format_args!("{empty_text} AS {name}, "));
        }
    }
}

/// `GROUP BY … ORDER BY …` of the grouped columns (nothing when none is).
pub(crate) fn push_group_by<DB: Database>(query: &mut QueryBuilder<'_, DB>, by: Grouping) {
    let columns: Vec<&str> =
        GROUP_COLUMNS.iter().zip(grouped(by)).filter(|(_, on)| *on).map(|((_, column), _)| *column).collect();
    if !columns.is_empty() {
        let list = columns.join(", ");
        query.push(format_args!(" GROUP BY {list} ORDER BY {list}"));
    }
}

/// The `WHERE` clause of `filter` over `audit_entries e`. The outcome is
/// written as a literal, so the partial indexes on `outcome <> 'ok'` apply.
pub(crate) fn push_where<'args, DB>(query: &mut QueryBuilder<'args, DB>, filter: &ReportFilter)
where
    DB: Database,
    i64: Encode<'args, DB> + Type<DB>,
    String: Encode<'args, DB> + Type<DB>,
    &'static str: Encode<'args, DB> + Type<DB>,
{
    query
        .push(" WHERE e.time >= ")
        .push_bind(filter.since_ms)
        .push(" AND e.time < ")
        .push_bind(filter.until_ms)
        .push(" AND e.seq <= ")
        .push_bind(i64::try_from(filter.up_to_seq).unwrap_or(i64::MAX));
    if filter.after_seq > 0 {
        query.push(" AND e.seq > ").push_bind(i64::try_from(filter.after_seq).unwrap_or(i64::MAX));
    }
    match &filter.tenant {
        TenantFilter::Any => {}
        TenantFilter::Only(tenant) => {
            query.push(" AND e.tenant = ").push_bind(tenant.as_str().to_owned());
        }
        TenantFilter::NoTenant => {
            query.push(" AND e.tenant = ''");
        }
    }
    if !filter.operations.is_empty() {
        query.push(" AND e.operation IN (");
        let mut list = query.separated(", ");
        for operation in &filter.operations {
            list.push_bind(*operation);
        }
        query.push(")");
    }
    match filter.outcome {
        OutcomeFilter::Any => {}
        OutcomeFilter::Ok => {
            query.push(" AND e.outcome = 'ok'");
        }
        OutcomeFilter::NotOk => {
            query.push(" AND e.outcome <> 'ok'");
        }
    }
}

fn count<'r, R>(row: &'r R, name: &str, what: &'static str) -> Result<u64, StoreError>
where
    R: Row,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'c> &'c str: ColumnIndex<R>,
{
    position(column(row, name, what)?, what)
}

/// A row of a grouping step.
pub(crate) fn group<'r, R>(row: &'r R) -> Result<ReportGroup, StoreError>
where
    R: Row,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    for<'c> &'c str: ColumnIndex<R>,
{
    Ok(ReportGroup {
        tenant: column(row, "tenant", "audit_entries.tenant")?,
        principal: column(row, "principal", "audit_entries.principal")?,
        purpose: column(row, "purpose", "audit_entries.purpose")?,
        job_id: column(row, "job_id", "audit_entries.job_id")?,
        operation: column(row, "operation", "audit_entries.operation")?,
        outcome: column(row, "outcome", "audit_entries.outcome")?,
        persons: count(row, "persons", "audit_entry_tokens.token")?,
        numbers: count(row, "numbers", "audit_entries.record_count")?,
        entries: count(row, "entries", "audit_entries.seq")?,
        first_ms: column(row, "first", "audit_entries.time")?,
        last_ms: column(row, "last", "audit_entries.time")?,
    })
}

/// A row of `report_entries`.
pub(crate) fn entry<'r, R>(row: &'r R) -> Result<ReportEntry, StoreError>
where
    R: Row,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    for<'c> &'c str: ColumnIndex<R>,
{
    Ok(ReportEntry {
        seq: count(row, "seq", "audit_entries.seq")?,
        time_ms: column(row, "time", "audit_entries.time")?,
        principal: column(row, "principal", "audit_entries.principal")?,
        tenant: column(row, "tenant", "audit_entries.tenant")?,
        operation: column(row, "operation", "audit_entries.operation")?,
        outcome: column(row, "outcome", "audit_entries.outcome")?,
        reason: column(row, "reason", "audit_entries.reason")?,
        job_id: column(row, "job_id", "audit_entries.job_id")?,
        purpose: column(row, "purpose", "audit_entries.purpose")?,
        record_count: count(row, "record_count", "audit_entries.record_count")?,
    })
}

/// A row of `report_tokens`.
pub(crate) fn released_token<'r, R>(row: &'r R) -> Result<ReleasedToken, StoreError>
where
    R: Row,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    for<'c> &'c str: ColumnIndex<R>,
{
    Ok(ReleasedToken {
        tenant: column(row, "tenant", "audit_entries.tenant")?,
        token: column(row, "token", "audit_entry_tokens.token")?,
        releases: count(row, "releases", "audit_entry_tokens.seq")?,
        first_ms: column(row, "first", "audit_entries.time")?,
        last_ms: column(row, "last", "audit_entries.time")?,
    })
}
