//! SQLite steps of retention.

use async_trait::async_trait;
use mnvault_core::id::{TenantId, Token};
use mnvault_core::store::{RetentionReadTx, RetentionRow, RetentionWriteTx, StoreError, TombstoneRow};

use super::{chunks, classify, column, list, rows_of, SqliteTx};

const RETENTION_COLUMNS: &str = "tenant, token, classes, end_date, delete_on, legal_hold, set_at, set_seq, tag";
const TOMBSTONE_COLUMNS: &str = "tenant, token, deleted_at, classes, end_date, delete_on, audit_seq, tag";

fn retention_row(row: &sqlx::sqlite::SqliteRow) -> Result<RetentionRow, StoreError> {
    Ok(RetentionRow {
        tenant: column(row, "tenant", "retention.tenant")?,
        token: column(row, "token", "retention.token")?,
        classes: column(row, "classes", "retention.classes")?,
        end_date: column(row, "end_date", "retention.end_date")?,
        delete_on: column(row, "delete_on", "retention.delete_on")?,
        legal_hold: column(row, "legal_hold", "retention.legal_hold")?,
        set_at: column(row, "set_at", "retention.set_at")?,
        set_seq: column(row, "set_seq", "retention.set_seq")?,
        tag: column(row, "tag", "retention.tag")?,
    })
}

fn tombstone_row(row: &sqlx::sqlite::SqliteRow) -> Result<TombstoneRow, StoreError> {
    Ok(TombstoneRow {
        tenant: column(row, "tenant", "tombstones.tenant")?,
        token: column(row, "token", "tombstones.token")?,
        deleted_at: column(row, "deleted_at", "tombstones.deleted_at")?,
        classes: column(row, "classes", "tombstones.classes")?,
        end_date: column(row, "end_date", "tombstones.end_date")?,
        delete_on: column(row, "delete_on", "tombstones.delete_on")?,
        audit_seq: column(row, "audit_seq", "tombstones.audit_seq")?,
        tag: column(row, "tag", "tombstones.tag")?,
    })
}

#[async_trait]
impl RetentionReadTx for SqliteTx {
    async fn due_retention(
        &mut self,
        tenant: Option<&TenantId>,
        after: Option<(&str, &str)>,
        delete_on_max: i64,
        limit: u32,
    ) -> Result<Vec<RetentionRow>, StoreError> {
        let (after_tenant, after_token) = after.unwrap_or(("", ""));
        let sql = format!(
            "SELECT {RETENTION_COLUMNS} FROM retention WHERE delete_on <= ? AND legal_hold = 0 \
             AND (? IS NULL OR tenant = ?) AND (tenant, token) > (?, ?) ORDER BY tenant, token LIMIT ?"
        );
        let tenant = tenant.map(TenantId::as_str);
        let rows = sqlx::query(&sql)
            .bind(delete_on_max)
            .bind(tenant)
            .bind(tenant)
            .bind(after_tenant)
            .bind(after_token)
            .bind(i64::from(limit))
            .fetch_all(self.conn())
            .await
            .map_err(classify)?;
        rows.iter().map(retention_row).collect()
    }

    async fn count_held_due(&mut self, tenant: Option<&TenantId>, delete_on_max: i64) -> Result<u64, StoreError> {
        let tenant = tenant.map(TenantId::as_str);
        let held: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM retention WHERE delete_on <= ? AND legal_hold <> 0 AND (? IS NULL OR tenant = ?)",
        )
        .bind(delete_on_max)
        .bind(tenant)
        .bind(tenant)
        .fetch_one(self.conn())
        .await
        .map_err(classify)?;
        Ok(u64::try_from(held).unwrap_or(0))
    }

    async fn tombstones(&mut self, tenant: &TenantId, tokens: &[Token]) -> Result<Vec<TombstoneRow>, StoreError> {
        let mut found = Vec::new();
        for chunk in chunks(tokens) {
            let sql = format!(
                "SELECT {TOMBSTONE_COLUMNS} FROM tombstones WHERE tenant = ? AND token IN ({})",
                list(chunk.len())
            );
            let mut query = sqlx::query(&sql).bind(tenant.as_str());
            for token in chunk {
                query = query.bind(token.as_str());
            }
            let rows = query.fetch_all(self.conn()).await.map_err(classify)?;
            for row in &rows {
                found.push(tombstone_row(row)?);
            }
        }
        Ok(found)
    }

    async fn tombstones_between(
        &mut self,
        tenant: &TenantId,
        since_ms: i64,
        until_ms: i64,
        limit: u32,
    ) -> Result<Vec<TombstoneRow>, StoreError> {
        let sql = format!(
            "SELECT {TOMBSTONE_COLUMNS} FROM tombstones WHERE tenant = ? AND deleted_at >= ? AND deleted_at < ? \
             ORDER BY deleted_at, token LIMIT ?"
        );
        let rows = sqlx::query(&sql)
            .bind(tenant.as_str())
            .bind(since_ms)
            .bind(until_ms)
            .bind(i64::from(limit))
            .fetch_all(self.conn())
            .await
            .map_err(classify)?;
        rows.iter().map(tombstone_row).collect()
    }
}

#[async_trait]
impl RetentionWriteTx for SqliteTx {
    async fn upsert_retention(&mut self, rows: &[RetentionRow]) -> Result<(), StoreError> {
        for chunk in chunks(rows) {
            let sql =
                format!("INSERT OR REPLACE INTO retention ({RETENTION_COLUMNS}) VALUES {}", rows_of(chunk.len(), 9));
            let mut query = sqlx::query(&sql);
            for row in chunk {
                query = query
                    .bind(&row.tenant)
                    .bind(&row.token)
                    .bind(&row.classes)
                    .bind(row.end_date)
                    .bind(row.delete_on)
                    .bind(row.legal_hold)
                    .bind(row.set_at)
                    .bind(row.set_seq)
                    .bind(row.tag.as_deref());
            }
            query.execute(self.conn()).await.map_err(classify)?;
        }
        Ok(())
    }

    async fn delete_records(&mut self, tenant: &TenantId, tokens: &[Token]) -> Result<u64, StoreError> {
        let mut deleted = 0;
        for chunk in chunks(tokens) {
            for table in ["records", "retention"] {
                let sql = format!("DELETE FROM {table} WHERE tenant = ? AND token IN ({})", list(chunk.len()));
                let mut query = sqlx::query(&sql).bind(tenant.as_str());
                for token in chunk {
                    query = query.bind(token.as_str());
                }
                let done = query.execute(self.conn()).await.map_err(classify)?;
                if table == "records" {
                    deleted += done.rows_affected();
                }
            }
        }
        Ok(deleted)
    }

    async fn insert_tombstones(&mut self, rows: &[TombstoneRow]) -> Result<(), StoreError> {
        for chunk in chunks(rows) {
            let sql =
                format!("INSERT OR IGNORE INTO tombstones ({TOMBSTONE_COLUMNS}) VALUES {}", rows_of(chunk.len(), 8));
            let mut query = sqlx::query(&sql);
            for row in chunk {
                query = query
                    .bind(&row.tenant)
                    .bind(&row.token)
                    .bind(row.deleted_at)
                    .bind(&row.classes)
                    .bind(row.end_date)
                    .bind(row.delete_on)
                    .bind(row.audit_seq)
                    .bind(row.tag.as_deref());
            }
            query.execute(self.conn()).await.map_err(classify)?;
        }
        Ok(())
    }
}
