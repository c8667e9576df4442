//! PostgreSQL steps of retention.

use std::ops::DerefMut;

use async_trait::async_trait;
use mnvault_core::id::{TenantId, Token};
use mnvault_core::store::{RetentionReadTx, RetentionRow, RetentionWriteTx, StoreError, TombstoneRow};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Postgres, Transaction};

use super::{classify, get, token_strs, PgTx};

const RETENTION_COLUMNS: &str = "tenant, token, classes, end_date, delete_on, legal_hold, set_at, set_seq, tag";
const TOMBSTONE_COLUMNS: &str = "tenant, token, deleted_at, classes, end_date, delete_on, audit_seq, tag";

fn retention_row(row: &PgRow) -> Result<RetentionRow, StoreError> {
    Ok(RetentionRow {
        tenant: get(row, "retention.tenant")?,
        token: get(row, "retention.token")?,
        classes: get(row, "retention.classes")?,
        end_date: get(row, "retention.end_date")?,
        delete_on: get(row, "retention.delete_on")?,
        legal_hold: get(row, "retention.legal_hold")?,
        set_at: get(row, "retention.set_at")?,
        set_seq: get(row, "retention.set_seq")?,
        tag: get(row, "retention.tag")?,
    })
}

fn tombstone_row(row: &PgRow) -> Result<TombstoneRow, StoreError> {
    Ok(TombstoneRow {
        tenant: get(row, "tombstones.tenant")?,
        token: get(row, "tombstones.token")?,
        deleted_at: get(row, "tombstones.deleted_at")?,
        classes: get(row, "tombstones.classes")?,
        end_date: get(row, "tombstones.end_date")?,
        delete_on: get(row, "tombstones.delete_on")?,
        audit_seq: get(row, "tombstones.audit_seq")?,
        tag: get(row, "tombstones.tag")?,
    })
}

#[async_trait]
impl<C> RetentionReadTx for PgTx<C>
where
    C: DerefMut<Target = PgConnection> + Send,
{
    async fn due_retention(
        &mut self,
        tenant: Option<&TenantId>,
        after: Option<(&str, &str)>,
        delete_on_max: i64,
        limit: u32,
    ) -> Result<Vec<RetentionRow>, StoreError> {
        let (after_tenant, after_token) = after.unwrap_or(("", ""));
        let sql = format!(
            "SELECT {RETENTION_COLUMNS} FROM retention WHERE delete_on <= $1 AND NOT legal_hold \
             AND ($2::text IS NULL OR tenant = $2) AND (tenant, token) > ($3, $4) ORDER BY tenant, token LIMIT $5"
        );
        let rows = sqlx::query(&sql)
            .bind(delete_on_max)
            .bind(tenant.map(TenantId::as_str))
            .bind(after_tenant)
            .bind(after_token)
            .bind(i64::from(limit))
            .fetch_all(self.conn())
            .await
            .map_err(classify)?;
        rows.iter().map(retention_row).collect()
    }

    async fn count_held_due(&mut self, tenant: Option<&TenantId>, delete_on_max: i64) -> Result<u64, StoreError> {
        let held: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM retention WHERE delete_on <= $1 AND legal_hold AND ($2::text IS NULL OR tenant = $2)",
        )
        .bind(delete_on_max)
        .bind(tenant.map(TenantId::as_str))
        .fetch_one(self.conn())
        .await
        .map_err(classify)?;
        Ok(u64::try_from(held).unwrap_or(0))
    }

    async fn tombstones(&mut self, tenant: &TenantId, tokens: &[Token]) -> Result<Vec<TombstoneRow>, StoreError> {
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!("SELECT {TOMBSTONE_COLUMNS} FROM tombstones WHERE tenant = $1 AND token = ANY($2::text[])");
        let rows = sqlx::query(&sql)
            .bind(tenant.as_str())
            .bind(token_strs(tokens))
            .fetch_all(self.conn())
            .await
            .map_err(classify)?;
        rows.iter().map(tombstone_row).collect()
    }

    async fn tombstones_between(
        &mut self,
        tenant: &TenantId,
        since_ms: i64,
        until_ms: i64,
        limit: u32,
    ) -> Result<Vec<TombstoneRow>, StoreError> {
        let sql = format!(
            "SELECT {TOMBSTONE_COLUMNS} FROM tombstones WHERE tenant = $1 AND deleted_at >= $2 AND deleted_at < $3 \
             ORDER BY deleted_at, token LIMIT $4"
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
impl RetentionWriteTx for PgTx<Transaction<'static, Postgres>> {
    async fn upsert_retention(&mut self, rows: &[RetentionRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "INSERT INTO retention ({RETENTION_COLUMNS}) SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], \
             $4::bigint[], $5::bigint[], $6::boolean[], $7::bigint[], $8::bigint[], $9::bytea[]) \
             ON CONFLICT (tenant, token) DO UPDATE SET classes = EXCLUDED.classes, end_date = EXCLUDED.end_date, \
             delete_on = EXCLUDED.delete_on, legal_hold = EXCLUDED.legal_hold, set_at = EXCLUDED.set_at, \
             set_seq = EXCLUDED.set_seq, tag = EXCLUDED.tag"
        );
        sqlx::query(&sql)
            .bind(rows.iter().map(|r| r.tenant.as_str()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.token.as_str()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.classes.as_str()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.end_date).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.delete_on).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.legal_hold).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.set_at).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.set_seq).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.tag.clone().unwrap_or_default()).collect::<Vec<_>>())
            .execute(self.conn())
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn delete_records(&mut self, tenant: &TenantId, tokens: &[Token]) -> Result<u64, StoreError> {
        if tokens.is_empty() {
            return Ok(0);
        }
        let deleted = sqlx::query("DELETE FROM records WHERE tenant = $1 AND token = ANY($2::text[])")
            .bind(tenant.as_str())
            .bind(token_strs(tokens))
            .execute(self.conn())
            .await
            .map_err(classify)?
            .rows_affected();
        sqlx::query("DELETE FROM retention WHERE tenant = $1 AND token = ANY($2::text[])")
            .bind(tenant.as_str())
            .bind(token_strs(tokens))
            .execute(self.conn())
            .await
            .map_err(classify)?;
        Ok(deleted)
    }

    async fn insert_tombstones(&mut self, rows: &[TombstoneRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "INSERT INTO tombstones ({TOMBSTONE_COLUMNS}) SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], \
             $4::text[], $5::bigint[], $6::bigint[], $7::bigint[], $8::bytea[]) ON CONFLICT DO NOTHING"
        );
        sqlx::query(&sql)
            .bind(rows.iter().map(|r| r.tenant.as_str()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.token.as_str()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.deleted_at).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.classes.as_str()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.end_date).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.delete_on).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.audit_seq).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.tag.clone().unwrap_or_default()).collect::<Vec<_>>())
            .execute(self.conn())
            .await
            .map_err(classify)?;
        Ok(())
    }
}
