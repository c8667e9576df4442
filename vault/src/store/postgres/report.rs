//! PostgreSQL steps of the incident report.
//!
//! Each step is one statement. Entries are found through the indexes on
//! `(operation, time)` (releases, alerts, changes), `(tenant, time)`, or
//! `time` where `outcome <> 'ok'` (refusals, migration 0009), and their
//! tokens through the primary key `(seq, position)` of `audit_entry_tokens`.
//! The token list is handed over row by row as the server sends it.
//!
//! A report reads a whole window, which may take longer than the pool's
//! `statement_timeout` (the write timeout, a few seconds): each step raises
//! it for its own transaction only ([`REPORT_STATEMENT_TIMEOUT`]).

use async_trait::async_trait;
use futures::TryStreamExt as _;
use mnvault_core::audit::report::{Grouping, ReleasedToken, ReportEntry, ReportFilter, ReportGroup};
use mnvault_core::store::{ReportReadTx, StoreError};
use std::ops::DerefMut;

use sqlx::{PgConnection, QueryBuilder};

use super::{classify, PgTx};
use crate::store::report_sql::{entry, group, push_group_by, push_group_select, push_where, released_token};

/// How long one statement of a report may run (its transaction's
/// `statement_timeout`; the pool's is the write timeout).
const REPORT_STATEMENT_TIMEOUT: &str = "10min";

impl<C> PgTx<C>
where
    C: DerefMut<Target = PgConnection> + Send,
{
    /// Lets this transaction's statements run as long as a report needs.
    async fn report_timeout(&mut self) -> Result<(), StoreError> {
        sqlx::query(&format!("SET LOCAL statement_timeout = '{REPORT_STATEMENT_TIMEOUT}'"))
            .execute(self.conn())
            .await
            .map_err(classify)?;
        Ok(())
    }
}

#[async_trait]
impl<C> ReportReadTx for PgTx<C>
where
    C: DerefMut<Target = PgConnection> + Send,
{
    async fn report_token_groups(
        &mut self,
        filter: &ReportFilter,
        by: Grouping,
        limit: u32,
    ) -> Result<Vec<ReportGroup>, StoreError> {
        self.report_timeout().await?;
        let mut query = QueryBuilder::new("");
        push_group_select(&mut query, by, "CAST('' AS TEXT)");
        query.push(
            "COUNT(DISTINCT t.token) AS persons, COUNT(*) AS numbers, COUNT(DISTINCT e.seq) AS entries, \
             MIN(e.time) AS first, MAX(e.time) AS last \
             FROM audit_entries e JOIN audit_entry_tokens t ON t.seq = e.seq",
        );
        push_where(&mut query, filter);
        push_group_by(&mut query, by);
        query.push(" LIMIT ").push_bind(i64::from(limit));
        let rows = query.build().fetch_all(self.conn()).await.map_err(classify)?;
        rows.iter().map(group).collect()
    }

    async fn report_entry_groups(
        &mut self,
        filter: &ReportFilter,
        by: Grouping,
        limit: u32,
    ) -> Result<Vec<ReportGroup>, StoreError> {
        self.report_timeout().await?;
        let mut query = QueryBuilder::new("");
        push_group_select(&mut query, by, "CAST('' AS TEXT)");
        query.push(
            "CAST(0 AS BIGINT) AS persons, CAST(COALESCE(SUM(e.record_count), 0) AS BIGINT) AS numbers, COUNT(*) AS entries, \
             MIN(e.time) AS first, MAX(e.time) AS last FROM audit_entries e",
        );
        push_where(&mut query, filter);
        push_group_by(&mut query, by);
        query.push(" LIMIT ").push_bind(i64::from(limit));
        let rows = query.build().fetch_all(self.conn()).await.map_err(classify)?;
        rows.iter().map(group).collect()
    }

    async fn report_entries(&mut self, filter: &ReportFilter, limit: u32) -> Result<Vec<ReportEntry>, StoreError> {
        self.report_timeout().await?;
        let mut query = QueryBuilder::new(
            "SELECT e.seq AS seq, e.time AS time, e.principal AS principal, e.tenant AS tenant, \
             e.operation AS operation, e.outcome AS outcome, e.reason AS reason, e.job_id AS job_id, \
             e.purpose AS purpose, e.record_count AS record_count FROM audit_entries e",
        );
        push_where(&mut query, filter);
        query.push(" ORDER BY e.seq LIMIT ").push_bind(i64::from(limit));
        let rows = query.build().fetch_all(self.conn()).await.map_err(classify)?;
        rows.iter().map(entry).collect()
    }

    async fn report_tokens(
        &mut self,
        filter: &ReportFilter,
        each: &mut (dyn FnMut(ReleasedToken) -> bool + Send),
    ) -> Result<u64, StoreError> {
        self.report_timeout().await?;
        let mut query = QueryBuilder::new(
            "SELECT e.tenant AS tenant, t.token AS token, COUNT(*) AS releases, MIN(e.time) AS first, \
             MAX(e.time) AS last FROM audit_entries e JOIN audit_entry_tokens t ON t.seq = e.seq",
        );
        push_where(&mut query, filter);
        query.push(" GROUP BY e.tenant, t.token ORDER BY e.tenant, t.token");
        let query = query.build();
        let mut rows = query.fetch(self.conn());
        let mut handed = 0;
        while let Some(row) = rows.try_next().await.map_err(classify)? {
            handed += 1;
            if !each(released_token(&row)?) {
                break;
            }
        }
        Ok(handed)
    }
}
