//! SQLite steps of tenant key rotation.

use async_trait::async_trait;
use mnvault_core::id::{TenantId, Token};
use mnvault_core::store::{KeyVersionRow, RewrapScan, RewrappedRecord, RotationReadTx, RotationWriteTx, StoreError};
use mnvault_keys::WrappedKey;
use sqlx::Row;

use super::{chunks_of, classify, column, record_row, to_u32, SqliteTx, RECORD_COLUMNS};

/// Records one rewrap statement writes: a statement per record cost a
/// round trip to sqlx's worker each, most of a rewrap's time. At most 64,
/// not the 512 of other steps: each row evaluates five `CASE`s of that many
/// arms.
const REWRAP_CHUNKS: [usize; 3] = [64, 8, 1];

/// Most record-key versions counted in one pass of sums; a tenant with more
/// is counted by a sort on temporary files.
const MAX_SUMMED_VERSIONS: usize = 256;

/// One `UPDATE` of `size` records, each written only where its row still has
/// the version and tag it was read with: the new values and the conditions
/// are picked per row by token (`CASE token WHEN ? THEN ? … END`), the rows
/// found through the primary key (`token IN (…)`). Bare placeholders, bound
/// in order of appearance (see `rows_of`).
fn rewrap_statement(size: usize) -> String {
    let case = vec!["WHEN ? THEN ?"; size].join(" ");
    format!(
        "UPDATE records SET key_version = CASE token {case} END, sealed = CASE token {case} END, \
         tag = CASE token {case} END WHERE tenant = ? AND token IN ({}) \
         AND key_version = CASE token {case} END AND tag = CASE token {case} END",
        super::list(size)
    )
}

fn key_version_row(row: &sqlx::sqlite::SqliteRow) -> Result<KeyVersionRow, StoreError> {
    Ok(KeyVersionRow {
        version: to_u32(column(row, "version", "tenant_record_keys.version")?, "tenant_record_keys.version")?,
        created_at: column(row, "created_at", "tenant_record_keys.created_at")?,
    })
}

#[async_trait]
impl RotationReadTx for SqliteTx {
    async fn record_key_versions(&mut self, tenant: &TenantId) -> Result<Vec<KeyVersionRow>, StoreError> {
        let rows = sqlx::query("SELECT version, created_at FROM tenant_record_keys WHERE tenant = ? ORDER BY version")
            .bind(tenant.as_str())
            .fetch_all(self.conn())
            .await
            .map_err(classify)?;
        rows.iter().map(key_version_row).collect()
    }

    async fn records_per_key_version(&mut self, tenant: &TenantId) -> Result<Vec<(u32, u64)>, StoreError> {
        // No index leads with the version (0004 dropped it), so a GROUP BY
        // would sort every record of the tenant in memory. One pass of sums,
        // one per version the tenant has, holds nothing; a record under any
        // other version (none, unless the table was edited) falls back to
        // the sort, on temporary files.
        let versions: Vec<u32> = self.record_key_versions(tenant).await?.iter().map(|key| key.version).collect();
        if !versions.is_empty() && versions.len() <= MAX_SUMMED_VERSIONS {
            let sums: String = versions.iter().map(|_| ", coalesce(sum(key_version = ?), 0)").collect();
            let sql = format!("SELECT count(*){sums} FROM records WHERE tenant = ?");
            let query = versions.iter().fold(sqlx::query(&sql), |query, version| query.bind(i64::from(*version)));
            let row = query.bind(tenant.as_str()).fetch_one(self.conn()).await.map_err(classify)?;
            let count = |index: usize| -> Result<u64, StoreError> {
                let count: i64 = row.try_get(index).map_err(|_| StoreError::Corrupt { what: "records.key_version" })?;
                Ok(u64::try_from(count).unwrap_or(0))
            };
            let counts: Vec<(u32, u64)> = versions
                .iter()
                .enumerate()
                .map(|(index, version)| Ok((*version, count(index + 1)?)))
                .collect::<Result<_, StoreError>>()?;
            if counts.iter().map(|(_, n)| n).sum::<u64>() == count(0)? {
                return Ok(counts.into_iter().filter(|(_, n)| *n > 0).collect());
            }
        }
        let previous = self.sort_on_files().await;
        let rows = sqlx::query(
            "SELECT key_version, count(*) AS records FROM records WHERE tenant = ? GROUP BY key_version \
             ORDER BY key_version",
        )
        .bind(tenant.as_str())
        .fetch_all(self.conn())
        .await
        .map_err(classify);
        self.restore_temp_store(previous).await;
        rows?
            .iter()
            .map(|row| {
                let version = to_u32(column(row, "key_version", "records.key_version")?, "records.key_version")?;
                let count: i64 = column(row, "records", "records.key_version")?;
                Ok((version, u64::try_from(count).unwrap_or(0)))
            })
            .collect()
    }

    async fn any_record_under_version(&mut self, tenant: &TenantId, version: u32) -> Result<bool, StoreError> {
        // Byte 0 is the format, bytes 1 to 4 the version (substr counts from 1).
        let row = sqlx::query(
            "SELECT EXISTS (SELECT 1 FROM records WHERE tenant = ? AND (key_version = ? OR substr(sealed, 2, 4) = ?)) \
             AS used",
        )
        .bind(tenant.as_str())
        .bind(i64::from(version))
        .bind(&version.to_be_bytes()[..])
        .fetch_one(self.conn())
        .await
        .map_err(classify)?;
        Ok(row.get::<i64, _>("used") != 0)
    }

    async fn tenant_ids(&mut self, after: &str, limit: u32) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT tenant FROM tenants WHERE tenant > ? ORDER BY tenant LIMIT ?")
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(self.conn())
            .await
            .map_err(classify)?;
        rows.iter().map(|row| column(row, "tenant", "tenants.tenant")).collect()
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
        let conn = self.conn();
        // The window's end first (the primary key's index alone), then one
        // range search of that index up to it: no index on key_version is
        // needed, and nothing is copied or sorted (a subquery with its own
        // LIMIT was: every row of the window, sealed bytes and all).
        let end =
            sqlx::query("SELECT token FROM records WHERE tenant = ? AND token > ? ORDER BY token LIMIT 1 OFFSET ?")
                .bind(tenant.as_str())
                .bind(after)
                .bind(i64::from(window.max(1)) - 1)
                .fetch_optional(&mut *conn)
                .await
                .map_err(classify)?;
        let window_end: Option<String> = end.map(|row| column(&row, "token", "records.token")).transpose()?;
        let upto = if window_end.is_some() { "AND token <= ?" } else { "" };
        let sql = format!(
            "SELECT {RECORD_COLUMNS}, sealed FROM records WHERE tenant = ? AND token > ? {upto} AND key_version < ? \
             ORDER BY token LIMIT ?"
        );
        let mut query = sqlx::query(&sql).bind(tenant.as_str()).bind(after);
        if let Some(end) = &window_end {
            query = query.bind(end.as_str());
        }
        let rows = query.bind(i64::from(below)).bind(i64::from(limit)).fetch_all(&mut *conn).await.map_err(classify)?;
        let records = rows
            .iter()
            .map(|row| Ok((record_row(row)?, column(row, "sealed", "records.sealed")?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(RewrapScan { records, window_end })
    }
}

#[async_trait]
impl RotationWriteTx for SqliteTx {
    async fn lock_record_key_versions(&mut self, tenant: &TenantId) -> Result<Vec<KeyVersionRow>, StoreError> {
        // BEGIN IMMEDIATE already holds the database's write lock.
        self.record_key_versions(tenant).await
    }

    async fn insert_record_key(
        &mut self,
        tenant: &TenantId,
        version: u32,
        key: &WrappedKey,
        created_at: i64,
    ) -> Result<bool, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO tenant_record_keys (tenant, version, wrapped_key, created_at) VALUES (?, ?, ?, ?) \
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
        let deleted = sqlx::query("DELETE FROM tenant_record_keys WHERE tenant = ? AND version = ?")
            .bind(tenant.as_str())
            .bind(i64::from(version))
            .execute(self.conn())
            .await
            .map_err(classify)?;
        Ok(deleted.rows_affected() == 1)
    }

    async fn rewrap_records(&mut self, tenant: &TenantId, records: &[RewrappedRecord]) -> Result<u64, StoreError> {
        let conn = self.conn();
        let mut written = 0;
        // Statements of a few fixed shapes, so each is prepared once.
        for chunk in chunks_of(records, &REWRAP_CHUNKS) {
            let sql = rewrap_statement(chunk.len());
            let mut query = sqlx::query(&sql);
            for record in chunk {
                query = query.bind(record.token.as_str()).bind(i64::from(record.key_version));
            }
            for record in chunk {
                query = query.bind(record.token.as_str()).bind(&record.sealed[..]);
            }
            for record in chunk {
                query = query.bind(record.token.as_str()).bind(&record.tag[..]);
            }
            query = query.bind(tenant.as_str());
            for record in chunk {
                query = query.bind(record.token.as_str());
            }
            for record in chunk {
                query = query.bind(record.token.as_str()).bind(i64::from(record.old_version));
            }
            for record in chunk {
                query = query.bind(record.token.as_str()).bind(&record.old_tag[..]);
            }
            written += query.execute(&mut *conn).await.map_err(classify)?.rows_affected();
        }
        Ok(written)
    }
}
