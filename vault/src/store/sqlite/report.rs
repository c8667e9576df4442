//! SQLite steps of the incident report.
//!
//! Each step is one statement. Entries are found through the indexes on
//! `(operation, time)` (releases, alerts, changes), `(tenant, time)`, or
//! `time` where `outcome <> 'ok'` (refusals, migration 0009), and their
//! tokens through the primary key `(seq, position)` of `audit_entry_tokens`.
//! The token list is handed over row by row as SQLite produces it.
//!
//! The store keeps SQLite's temporary structures in memory (`temp_store =
//! MEMORY`), which suits the vault's statements, bounded by their chunks.
//! A report's sorts and distinct counts reach a million tokens: the steps
//! that join tokens switch their connection to temporary files for their
//! statement (deleted when closed; they hold tokens and names, never a
//! number), which took a sixth of the memory and less time on a
//! million-entry log, then switch it back.

use async_trait::async_trait;
use futures::TryStreamExt as _;
use mnvault_core::audit::report::{Grouping, ReleasedToken, ReportEntry, ReportFilter, ReportGroup};
use mnvault_core::store::{ReportReadTx, StoreError};
use sqlx::QueryBuilder;

use super::{classify, SqliteTx};
use crate::store::report_sql::{entry, group, push_group_by, push_group_select, push_where, released_token};

/// `PRAGMA temp_store` values.
const TEMP_STORE_FILE: i64 = 1;

impl SqliteTx {
    /// Puts this connection's temporary structures on files; the setting
    /// to restore, if it changed. SQLite refuses the change once the
    /// connection holds a temporary table: the statement then sorts in
    /// memory, as any other.
    pub(super) async fn sort_on_files(&mut self) -> Option<i64> {
        let current: i64 = sqlx::query_scalar("PRAGMA temp_store").fetch_one(self.conn()).await.ok()?;
        if current == TEMP_STORE_FILE {
            return None;
        }
        let changed = sqlx::query(&format!("PRAGMA temp_store = {TEMP_STORE_FILE}")).execute(self.conn()).await;
        changed.is_ok().then_some(current)
    }

    /// Undoes [`SqliteTx::sort_on_files`].
    pub(super) async fn restore_temp_store(&mut self, previous: Option<i64>) {
        if let Some(previous) = previous {
            if let Err(error) = sqlx::query(&format!("PRAGMA temp_store = {previous}")).execute(self.conn()).await {
                tracing::warn!(%error, "could not restore a reader connection's temporary store");
            }
        }
    }
}

#[async_trait]
impl ReportReadTx for SqliteTx {
    async fn report_token_groups(
        &mut self,
        filter: &ReportFilter,
        by: Grouping,
        limit: u32,
    ) -> Result<Vec<ReportGroup>, StoreError> {
        let mut query = QueryBuilder::new("");
        push_group_select(&mut query, by, "''");
        query.push(
            "COUNT(DISTINCT t.token) AS persons, COUNT(*) AS numbers, COUNT(DISTINCT e.seq) AS entries, \
             MIN(e.time) AS first, MAX(e.time) AS last \
             FROM audit_entries e JOIN audit_entry_tokens t ON t.seq = e.seq",
        );
        push_where(&mut query, filter);
        push_group_by(&mut query, by);
        query.push(" LIMIT ").push_bind(i64::from(limit));
        let previous = self.sort_on_files().await;
        let rows = query.build().fetch_all(self.conn()).await.map_err(classify);
        self.restore_temp_store(previous).await;
        rows?.iter().map(group).collect()
    }

    async fn report_entry_groups(
        &mut self,
        filter: &ReportFilter,
        by: Grouping,
        limit: u32,
    ) -> Result<Vec<ReportGroup>, StoreError> {
        let mut query = QueryBuilder::new("");
        push_group_select(&mut query, by, "''");
        query.push(
            "0 AS persons, CAST(COALESCE(SUM(e.record_count), 0) AS INTEGER) AS numbers, COUNT(*) AS entries, \
             MIN(e.time) AS first, MAX(e.time) AS last FROM audit_entries e",
        );
        push_where(&mut query, filter);
        push_group_by(&mut query, by);
        query.push(" LIMIT ").push_bind(i64::from(limit));
        let rows = query.build().fetch_all(self.conn()).await.map_err(classify)?;
        rows.iter().map(group).collect()
    }

    async fn report_entries(&mut self, filter: &ReportFilter, limit: u32) -> Result<Vec<ReportEntry>, StoreError> {
        let mut query = QueryBuilder::new(
            "SELECT e.seq AS seq, e.time AS time, e.principal AS principal, e.tenant AS tenant, \
             e.operation AS operation, e.outcome AS outcome, e.reason AS reason, e.job_id AS job_id, \
             e.purpose AS purpose, e.record_count AS record_count FROM audit_entries e",
        );
        push_where(&mut query, filter);
        // `+e.seq`: sorted after the index found the window's entries, never
        // by walking the whole table in sequence order looking for them.
        query.push(" ORDER BY +e.seq LIMIT ").push_bind(i64::from(limit));
        let rows = query.build().fetch_all(self.conn()).await.map_err(classify)?;
        rows.iter().map(entry).collect()
    }

    async fn report_tokens(
        &mut self,
        filter: &ReportFilter,
        each: &mut (dyn FnMut(ReleasedToken) -> bool + Send),
    ) -> Result<u64, StoreError> {
        let mut query = QueryBuilder::new(
            "SELECT e.tenant AS tenant, t.token AS token, COUNT(*) AS releases, MIN(e.time) AS first, \
             MAX(e.time) AS last FROM audit_entries e JOIN audit_entry_tokens t ON t.seq = e.seq",
        );
        push_where(&mut query, filter);
        query.push(" GROUP BY e.tenant, t.token ORDER BY e.tenant, t.token");
        let previous = self.sort_on_files().await;
        let handed = async {
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
        .await;
        self.restore_temp_store(previous).await;
        handed
    }
}
