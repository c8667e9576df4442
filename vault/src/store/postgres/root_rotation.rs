//! PostgreSQL steps of root key rotation.

use std::ops::DerefMut;

use async_trait::async_trait;
use mnvault_core::store::{RootRotationReadTx, RootRotationWriteTx, StoreError, StoredWrappedKey, WrappedKeySlot};
use mnvault_keys::WrappedKey;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Postgres, Transaction};

use super::{classify, get, get_u32, PgTx};

/// Each table of wrapped keys, in slot order, from `after` on.
#[async_trait]
impl<C> RootRotationReadTx for PgTx<C>
where
    C: DerefMut<Target = PgConnection> + Send,
{
    async fn wrapped_keys(
        &mut self,
        after: Option<&WrappedKeySlot>,
        limit: u32,
    ) -> Result<Vec<StoredWrappedKey>, StoreError> {
        let limit = i64::from(limit);
        let mut keys = Vec::new();
        // Which table the cursor is in: the ones before it are done.
        let stage = match after {
            None | Some(WrappedKeySlot::System(_)) => 0,
            Some(WrappedKeySlot::TenantIndex(_)) => 1,
            Some(WrappedKeySlot::TenantRecord(..)) => 2,
        };
        if stage == 0 {
            let name = match after {
                Some(WrappedKeySlot::System(name)) => Some(name.as_str()),
                _ => None,
            };
            let rows = sqlx::query(
                "SELECT name, wrapped_key FROM system_keys WHERE $1::text IS NULL OR name > $1 ORDER BY name LIMIT $2",
            )
            .bind(name)
            .bind(limit)
            .fetch_all(self.conn())
            .await
            .map_err(classify)?;
            for row in &rows {
                let slot = WrappedKeySlot::System(get(row, "system_keys.name")?);
                keys.push(stored(row, slot, "system_keys.wrapped_key")?);
            }
        }
        if stage <= 1 && (keys.len() as i64) < limit {
            let tenant = match after {
                Some(WrappedKeySlot::TenantIndex(tenant)) => Some(tenant.as_str()),
                _ => None,
            };
            let rows = sqlx::query(
                "SELECT tenant, index_key_wrapped FROM tenants \
                 WHERE octet_length(index_key_wrapped) > 0 AND ($1::text IS NULL OR tenant > $1) ORDER BY tenant \
                 LIMIT $2",
            )
            .bind(tenant)
            .bind(limit - keys.len() as i64)
            .fetch_all(self.conn())
            .await
            .map_err(classify)?;
            for row in &rows {
                let slot = WrappedKeySlot::TenantIndex(get(row, "tenants.tenant")?);
                keys.push(stored(row, slot, "tenants.index_key_wrapped")?);
            }
        }
        if (keys.len() as i64) < limit {
            let (tenant, version) = match after {
                Some(WrappedKeySlot::TenantRecord(tenant, version)) => (Some(tenant.as_str()), i64::from(*version)),
                _ => (None, 0),
            };
            let rows = sqlx::query(
                "SELECT tenant, version, wrapped_key FROM tenant_record_keys \
                 WHERE $1::text IS NULL OR tenant > $1 OR (tenant = $1 AND version > $2) ORDER BY tenant, version \
                 LIMIT $3",
            )
            .bind(tenant)
            .bind(version)
            .bind(limit - keys.len() as i64)
            .fetch_all(self.conn())
            .await
            .map_err(classify)?;
            for row in &rows {
                let tenant = get(row, "tenant_record_keys.tenant")?;
                let version = get_u32(row, "tenant_record_keys.version")?;
                keys.push(stored(
                    row,
                    WrappedKeySlot::TenantRecord(tenant, version),
                    "tenant_record_keys.wrapped_key",
                )?);
            }
        }
        Ok(keys)
    }
}

fn stored(row: &PgRow, slot: WrappedKeySlot, what: &'static str) -> Result<StoredWrappedKey, StoreError> {
    Ok(StoredWrappedKey { slot, wrapped: WrappedKey::from_bytes(get(row, what)?) })
}

#[async_trait]
impl RootRotationWriteTx for PgTx<Transaction<'static, Postgres>> {
    async fn replace_wrapped_key(
        &mut self,
        slot: &WrappedKeySlot,
        old: &WrappedKey,
        new: &WrappedKey,
    ) -> Result<bool, StoreError> {
        let query = match slot {
            WrappedKeySlot::System(name) => {
                sqlx::query("UPDATE system_keys SET wrapped_key = $1 WHERE name = $2 AND wrapped_key = $3")
                    .bind(new.as_bytes())
                    .bind(name.as_str())
                    .bind(old.as_bytes())
            }
            WrappedKeySlot::TenantIndex(tenant) => {
                sqlx::query("UPDATE tenants SET index_key_wrapped = $1 WHERE tenant = $2 AND index_key_wrapped = $3")
                    .bind(new.as_bytes())
                    .bind(tenant.as_str())
                    .bind(old.as_bytes())
            }
            WrappedKeySlot::TenantRecord(tenant, version) => sqlx::query(
                "UPDATE tenant_record_keys SET wrapped_key = $1 WHERE tenant = $2 AND version = $3 AND wrapped_key = $4",
            )
            .bind(new.as_bytes())
            .bind(tenant.as_str())
            .bind(i64::from(*version))
            .bind(old.as_bytes()),
        };
        let done = query.execute(self.conn()).await.map_err(classify)?;
        Ok(done.rows_affected() == 1)
    }
}
