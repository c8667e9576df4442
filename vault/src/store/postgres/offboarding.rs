//! PostgreSQL steps of tenant offboarding.
//!
//! PostgreSQL keeps a row's earlier versions until VACUUM reclaims them, and
//! its WAL and base backups keep them longer: a shred makes the keys
//! unreachable for the vault at once, and unreadable for anyone only once
//! the root key that wrapped them is rotated and destroyed (README, "Keys").

use std::ops::DerefMut;

use async_trait::async_trait;
use mnvault_core::id::{TenantId, Token};
use mnvault_core::store::{OffboardingReadTx, OffboardingWriteTx, RecordRow, StoreError};
use sqlx::{PgConnection, Postgres, Transaction};

use super::{classify, get, get_u64, record_row, PgTx, RECORD_COLUMNS};

#[async_trait]
impl<C> OffboardingReadTx for PgTx<C>
where
    C: DerefMut<Target = PgConnection> + Send,
{
    async fn tenant_shredded_at(&mut self, tenant: &TenantId) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query("SELECT shredded_at FROM tenants WHERE tenant = $1")
            .bind(tenant.as_str())
            .fetch_optional(self.conn())
            .await
            .map_err(classify)?;
        row.map(|row| get::<Option<i64>>(&row, "tenants.shredded_at")).transpose().map(Option::flatten)
    }

    async fn count_tenant_records(&mut self, tenant: &TenantId, created_until: i64) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS count FROM records WHERE tenant = $1 AND created_at <= $2")
            .bind(tenant.as_str())
            .bind(created_until)
            .fetch_one(self.conn())
            .await
            .map_err(classify)?;
        get_u64(&row, "records.count")
    }

    async fn tenant_records_page(
        &mut self,
        tenant: &TenantId,
        after: Option<&Token>,
        created_until: i64,
        limit: u32,
    ) -> Result<Vec<(RecordRow, Vec<u8>)>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {RECORD_COLUMNS}, sealed FROM records WHERE tenant = $1 AND token > $2 AND created_at <= $3 \
             ORDER BY token LIMIT $4"
        ))
        .bind(tenant.as_str())
        .bind(after.map_or("", Token::as_str))
        .bind(created_until)
        .bind(i64::from(limit))
        .fetch_all(self.conn())
        .await
        .map_err(classify)?;
        rows.iter().map(|row| Ok((record_row(row)?, get(row, "records.sealed")?))).collect()
    }

    async fn tenant_job_ids(&mut self, tenant: &TenantId, after: &str, limit: u32) -> Result<Vec<String>, StoreError> {
        let rows =
            sqlx::query("SELECT job_id FROM filing_jobs WHERE tenant = $1 AND job_id > $2 ORDER BY job_id LIMIT $3")
                .bind(tenant.as_str())
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(self.conn())
                .await
                .map_err(classify)?;
        rows.iter().map(|row| get(row, "filing_jobs.job_id")).collect()
    }
}

#[async_trait]
impl OffboardingWriteTx for PgTx<Transaction<'static, Postgres>> {
    async fn shred_tenant_keys(&mut self, tenant: &TenantId, at: i64) -> Result<bool, StoreError> {
        let marked = sqlx::query("UPDATE tenants SET shredded_at = $1 WHERE tenant = $2 AND shredded_at IS NULL")
            .bind(at)
            .bind(tenant.as_str())
            .execute(self.conn())
            .await
            .map_err(classify)?;
        sqlx::query("UPDATE tenants SET index_key_wrapped = ''::bytea WHERE tenant = $1")
            .bind(tenant.as_str())
            .execute(self.conn())
            .await
            .map_err(classify)?;
        sqlx::query("DELETE FROM tenant_record_keys WHERE tenant = $1")
            .bind(tenant.as_str())
            .execute(self.conn())
            .await
            .map_err(classify)?;
        Ok(marked.rows_affected() > 0)
    }

    async fn delete_tenant_records(&mut self, tenant: &TenantId, limit: u32) -> Result<u64, StoreError> {
        // The same first `limit` records, by key, in both statements.
        sqlx::query(
            "DELETE FROM retention WHERE tenant = $1 AND token IN \
             (SELECT token FROM records WHERE tenant = $1 ORDER BY token LIMIT $2)",
        )
        .bind(tenant.as_str())
        .bind(i64::from(limit))
        .execute(self.conn())
        .await
        .map_err(classify)?;
        let deleted = sqlx::query(
            "DELETE FROM records WHERE tenant = $1 AND token IN \
             (SELECT token FROM records WHERE tenant = $1 ORDER BY token LIMIT $2)",
        )
        .bind(tenant.as_str())
        .bind(i64::from(limit))
        .execute(self.conn())
        .await
        .map_err(classify)?;
        Ok(deleted.rows_affected())
    }
}
