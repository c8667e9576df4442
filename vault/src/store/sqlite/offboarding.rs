//! SQLite steps of tenant offboarding.
//!
//! A shred's statements run with `secure_delete` on, so the pages SQLite
//! writes for them hold zeros where the wrapped keys and sealed numbers
//! were. In WAL mode those pages go to the WAL while the database file
//! keeps the old ones until a checkpoint: the shred ends with a TRUNCATE
//! checkpoint (`Store::settle_deletions`), which copies them over and
//! empties the WAL. Copies an earlier page split, update or rewrap left in
//! free space (written with `secure_delete` off) are not found this way,
//! nor are blocks the file system keeps: as for PostgreSQL and for backups,
//! only rotating the root key and destroying the old one makes every copy
//! of the wrapped keys unreadable.

use async_trait::async_trait;
use mnvault_core::id::{TenantId, Token};
use mnvault_core::store::{OffboardingReadTx, OffboardingWriteTx, RecordRow, StoreError};

use super::{classify, column, record_row, SqliteTx, RECORD_COLUMNS};

#[async_trait]
impl OffboardingReadTx for SqliteTx {
    async fn tenant_shredded_at(&mut self, tenant: &TenantId) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query("SELECT shredded_at FROM tenants WHERE tenant = ?")
            .bind(tenant.as_str())
            .fetch_optional(self.conn())
            .await
            .map_err(classify)?;
        row.map(|row| column(&row, "shredded_at", "tenants.shredded_at")).transpose().map(Option::flatten)
    }

    async fn count_tenant_records(&mut self, tenant: &TenantId, created_until: i64) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS count FROM records WHERE tenant = ? AND created_at <= ?")
            .bind(tenant.as_str())
            .bind(created_until)
            .fetch_one(self.conn())
            .await
            .map_err(classify)?;
        let count: i64 = column(&row, "count", "records.count")?;
        u64::try_from(count).map_err(|_| StoreError::Corrupt { what: "records.count" })
    }

    async fn tenant_records_page(
        &mut self,
        tenant: &TenantId,
        after: Option<&Token>,
        created_until: i64,
        limit: u32,
    ) -> Result<Vec<(RecordRow, Vec<u8>)>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {RECORD_COLUMNS}, sealed FROM records WHERE tenant = ? AND token > ? AND created_at <= ? \
             ORDER BY token LIMIT ?"
        ))
        .bind(tenant.as_str())
        .bind(after.map_or("", Token::as_str))
        .bind(created_until)
        .bind(i64::from(limit))
        .fetch_all(self.conn())
        .await
        .map_err(classify)?;
        rows.iter().map(|row| Ok((record_row(row)?, column(row, "sealed", "records.sealed")?))).collect()
    }

    async fn tenant_job_ids(&mut self, tenant: &TenantId, after: &str, limit: u32) -> Result<Vec<String>, StoreError> {
        let rows =
            sqlx::query("SELECT job_id FROM filing_jobs WHERE tenant = ? AND job_id > ? ORDER BY job_id LIMIT ?")
                .bind(tenant.as_str())
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(self.conn())
                .await
                .map_err(classify)?;
        rows.iter().map(|row| column(row, "job_id", "filing_jobs.job_id")).collect()
    }
}

/// Turns SQLite's `secure_delete` on or off for the connection (the writer
/// connection is shared: it is on only for a shred's statements).
async fn secure_delete(tx: &mut SqliteTx, on: bool) -> Result<(), StoreError> {
    let pragma = if on { "PRAGMA secure_delete = ON" } else { "PRAGMA secure_delete = OFF" };
    sqlx::query(pragma).execute(tx.conn()).await.map(|_| ()).map_err(classify)
}

#[async_trait]
impl OffboardingWriteTx for SqliteTx {
    async fn shred_tenant_keys(&mut self, tenant: &TenantId, at: i64) -> Result<bool, StoreError> {
        secure_delete(self, true).await?;
        let shredded = async {
            let marked = sqlx::query("UPDATE tenants SET shredded_at = ? WHERE tenant = ? AND shredded_at IS NULL")
                .bind(at)
                .bind(tenant.as_str())
                .execute(self.conn())
                .await
                .map_err(classify)?;
            sqlx::query("UPDATE tenants SET index_key_wrapped = x'' WHERE tenant = ?")
                .bind(tenant.as_str())
                .execute(self.conn())
                .await
                .map_err(classify)?;
            sqlx::query("DELETE FROM tenant_record_keys WHERE tenant = ?")
                .bind(tenant.as_str())
                .execute(self.conn())
                .await
                .map_err(classify)?;
            Ok(marked.rows_affected() > 0)
        }
        .await;
        secure_delete(self, false).await?;
        shredded
    }

    async fn delete_tenant_records(&mut self, tenant: &TenantId, limit: u32) -> Result<u64, StoreError> {
        secure_delete(self, true).await?;
        // The same first `limit` records, by key, in both statements.
        let retention = sqlx::query(
            "DELETE FROM retention WHERE tenant = ? AND token IN \
             (SELECT token FROM records WHERE tenant = ? ORDER BY token LIMIT ?)",
        )
        .bind(tenant.as_str())
        .bind(tenant.as_str())
        .bind(i64::from(limit))
        .execute(self.conn())
        .await
        .map_err(classify);
        let deleted = match retention {
            Err(error) => Err(error),
            Ok(_) => sqlx::query(
                "DELETE FROM records WHERE tenant = ? AND token IN \
                 (SELECT token FROM records WHERE tenant = ? ORDER BY token LIMIT ?)",
            )
            .bind(tenant.as_str())
            .bind(tenant.as_str())
            .bind(i64::from(limit))
            .execute(self.conn())
            .await
            .map(|done| done.rows_affected())
            .map_err(classify),
        };
        secure_delete(self, false).await?;
        deleted
    }
}
