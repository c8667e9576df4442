//! PostgreSQL steps of tenant key rotation.

use std::ops::DerefMut;

use async_trait::async_trait;
use mnvault_core::id::{TenantId, Token};
use mnvault_core::store::{KeyVersionRow, RewrapScan, RewrappedRecord, RotationReadTx, RotationWriteTx, StoreError};
use mnvault_keys::WrappedKey;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Postgres, Transaction};

use super::{classify, get, get_u32, get_u64, record_row, PgTx, RECORD_COLUMNS};

fn key_version_row(row: &PgRow) -> Result<KeyVersionRow, StoreError> {
    Ok(KeyVersionRow {
        version: get_u32(row, "tenant_record_keys.version")?,
        created_at: get(row, "tenant_record_keys.created_at")?,
    })
}

/// The versions of `tenant`, locked (`FOR UPDATE`) or not.
async fn key_versions(
    conn: &mut PgConnection,
    tenant: &TenantId,
    lock: bool,
) -> Result<Vec<KeyVersionRow>, StoreError> {
    const SELECT: &str = "SELECT version, created_at FROM tenant_record_keys WHERE tenant = $1 ORDER BY version";
    let sql = if lock { format!("{SELECT} FOR UPDATE") } else { SELECT.to_owned() };
    let rows = sqlx::query(&sql).bind(tenant.as_str()).fetch_all(conn).await.map_err(classify)?;
    rows.iter().map(key_version_row).collect()
}

#[async_trait]
impl<C> RotationReadTx for PgTx<C>
where
    C: DerefMut<Target = PgConnection> + Send,
{
    async fn record_key_versions(&mut self, tenant: &TenantId) -> Result<Vec<KeyVersionRow>, StoreError> {
        key_versions(self.conn(), tenant, false).await
    }

    async fn records_per_key_version(&mut self, tenant: &TenantId) -> Result<Vec<(u32, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT key_version, count(*) AS records FROM records WHERE tenant = $1 GROUP BY key_version \
             ORDER BY key_version",
        )
        .bind(tenant.as_str())
        .fetch_all(self.conn())
        .await
        .map_err(classify)?;
        rows.iter().map(|row| Ok((get_u32(row, "records.key_version")?, get_u64(row, "records.records")?))).collect()
    }

    async fn any_record_under_version(&mut self, tenant: &TenantId, version: u32) -> Result<bool, StoreError> {
        // Byte 0 is the format, bytes 1 to 4 the version (substring counts from 1).
        let row = sqlx::query(
            "SELECT EXISTS (SELECT 1 FROM records WHERE tenant = $1 \
             AND (key_version = $2 OR substring(sealed FROM 2 FOR 4) = $3)) AS used",
        )
        .bind(tenant.as_str())
        .bind(i64::from(version))
        .bind(&version.to_be_bytes()[..])
        .fetch_one(self.conn())
        .await
        .map_err(classify)?;
        get(&row, "records.used")
    }

    async fn tenant_ids(&mut self, after: &str, limit: u32) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT tenant FROM tenants WHERE tenant > $1 ORDER BY tenant LIMIT $2")
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(self.conn())
            .await
            .map_err(classify)?;
        rows.iter().map(|row| get(row, "tenants.tenant")).collect()
    }

    async fn records_to_rewrap(
        &mut self,
        tenant: &TenantId,
        after: Option<&Token>,
        below: u32,
        window: u32,
        limit: u32,
    ) -> Result<RewrapScan, StoreError> {
        let after = after.map_or("", Token::as_str);
        // The window's end first, then one range scan of the primary key up
        // to it: no index on key_version is needed, nothing is sorted.
        let end =
            sqlx::query("SELECT token FROM records WHERE tenant = $1 AND token > $2 ORDER BY token LIMIT 1 OFFSET $3")
                .bind(tenant.as_str())
                .bind(after)
                .bind(i64::from(window.max(1)) - 1)
                .fetch_optional(self.conn())
                .await
                .map_err(classify)?;
        let window_end: Option<String> = end.map(|row| get(&row, "records.token")).transpose()?;
        // Two statements, not `$n IS NULL OR`: the bound must be the index
        // scan's own, or a window with nothing to rewrap would read on to the
        // tenant's last record.
        let sql = match window_end {
            Some(_) => format!(
                "SELECT {RECORD_COLUMNS}, sealed FROM records WHERE tenant = $1 AND token > $2 AND token <= $5 \
                 AND key_version < $3 ORDER BY token LIMIT $4"
            ),
            None => format!(
                "SELECT {RECORD_COLUMNS}, sealed FROM records WHERE tenant = $1 AND token > $2 \
                 AND key_version < $3 ORDER BY token LIMIT $4"
            ),
        };
        let mut query =
            sqlx::query(&sql).bind(tenant.as_str()).bind(after).bind(i64::from(below)).bind(i64::from(limit));
        if let Some(end) = &window_end {
            query = query.bind(end.as_str());
        }
        let rows = query.fetch_all(self.conn()).await.map_err(classify)?;
        let records = rows
            .iter()
            .map(|row| Ok((record_row(row)?, get::<Vec<u8>>(row, "records.sealed")?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(RewrapScan { records, window_end })
    }
}

#[async_trait]
impl RotationWriteTx for PgTx<Transaction<'static, Postgres>> {
    async fn lock_record_key_versions(&mut self, tenant: &TenantId) -> Result<Vec<KeyVersionRow>, StoreError> {
        key_versions(self.conn(), tenant, true).await
    }

    async fn insert_record_key(
        &mut self,
        tenant: &TenantId,
        version: u32,
        key: &WrappedKey,
        created_at: i64,
    ) -> Result<bool, StoreError> {
        // A concurrent rotation adding the same version makes this wait, then skip.
        let inserted = sqlx::query(
            "INSERT INTO tenant_record_keys (tenant, version, wrapped_key, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
        )
        .bind(tenant.as_str())
        .bind(i64::from(version))
        .bind(key.as_bytes())
        .bind(created_at)
        .execute(self.conn())
        .await
        .map_err(classify)?;
        Ok(inserted.rows_affected() == 1)
    }

    async fn delete_record_key(&mut self, tenant: &TenantId, version: u32) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM tenant_record_keys WHERE tenant = $1 AND version = $2")
            .bind(tenant.as_str())
            .bind(i64::from(version))
            .execute(self.conn())
            .await
            .map_err(classify)?;
        Ok(deleted.rows_affected() == 1)
    }

    async fn rewrap_records(&mut self, tenant: &TenantId, records: &[RewrappedRecord]) -> Result<u64, StoreError> {
        if records.is_empty() {
            return Ok(0);
        }
        // In token order, so two replicas rewrapping the same records lock
        // them in the same order and queue instead of deadlocking.
        let mut sorted: Vec<&RewrappedRecord> = records.iter().collect();
        sorted.sort_unstable_by(|a, b| a.token.as_str().cmp(b.token.as_str()));
        let tokens: Vec<&str> = sorted.iter().map(|r| r.token.as_str()).collect();
        let old_versions: Vec<i64> = sorted.iter().map(|r| i64::from(r.old_version)).collect();
        let old_tags: Vec<&[u8]> = sorted.iter().map(|r| &r.old_tag[..]).collect();
        let versions: Vec<i64> = sorted.iter().map(|r| i64::from(r.key_version)).collect();
        let sealed: Vec<&[u8]> = sorted.iter().map(|r| &r.sealed[..]).collect();
        let tags: Vec<&[u8]> = sorted.iter().map(|r| &r.tag[..]).collect();
        let updated = sqlx::query(
            "UPDATE records SET key_version = n.key_version, sealed = n.sealed, tag = n.tag \
             FROM UNNEST($2::text[], $3::bigint[], $4::bytea[], $5::bigint[], $6::bytea[], $7::bytea[]) \
             AS n (token, old_version, old_tag, key_version, sealed, tag) \
             WHERE records.tenant = $1 AND records.token = n.token AND records.key_version = n.old_version \
             AND records.tag = n.old_tag",
        )
        .bind(tenant.as_str())
        .bind(&tokens)
        .bind(&old_versions)
        .bind(&old_tags)
        .bind(&versions)
        .bind(&sealed)
        .bind(&tags)
        .execute(self.conn())
        .await
        .map_err(classify)?;
        Ok(updated.rows_affected())
    }
}
