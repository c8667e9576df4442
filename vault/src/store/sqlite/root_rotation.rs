//! SQLite steps of root key rotation.

use async_trait::async_trait;
use mnvault_core::store::{RootRotationReadTx, RootRotationWriteTx, StoreError, StoredWrappedKey, WrappedKeySlot};
use mnvault_keys::WrappedKey;
use sqlx::sqlite::SqliteRow;

use super::{classify, column, to_u32, SqliteTx};

/// Each table of wrapped keys, in slot order, from `after` on.
#[async_trait]
impl RootRotationReadTx for SqliteTx {
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
                "SELECT name, wrapped_key FROM system_keys WHERE ? IS NULL OR name > ? ORDER BY name LIMIT ?",
            )
            .bind(name)
            .bind(name)
            .bind(limit)
            .fetch_all(self.conn())
            .await
            .map_err(classify)?;
            for row in &rows {
                keys.push(stored(
                    row,
                    WrappedKeySlot::System(column(row, "name", "system_keys.name")?),
                    "wrapped_key",
                )?);
            }
        }
        if stage <= 1 && (keys.len() as i64) < limit {
            let tenant = match after {
                Some(WrappedKeySlot::TenantIndex(tenant)) => Some(tenant.as_str()),
                _ => None,
            };
            let rows = sqlx::query(
                "SELECT tenant, index_key_wrapped FROM tenants WHERE length(index_key_wrapped) > 0 AND (? IS NULL OR tenant > ?) \
                 ORDER BY tenant LIMIT ?",
            )
            .bind(tenant)
            .bind(tenant)
            .bind(limit - keys.len() as i64)
            .fetch_all(self.conn())
            .await
            .map_err(classify)?;
            for row in &rows {
                let slot = WrappedKeySlot::TenantIndex(column(row, "tenant", "tenants.tenant")?);
                keys.push(stored(row, slot, "index_key_wrapped")?);
            }
        }
        if (keys.len() as i64) < limit {
            let (tenant, version) = match after {
                Some(WrappedKeySlot::TenantRecord(tenant, version)) => (Some(tenant.as_str()), i64::from(*version)),
                _ => (None, 0),
            };
            let rows = sqlx::query(
                "SELECT tenant, version, wrapped_key FROM tenant_record_keys \
                 WHERE ? IS NULL OR tenant > ? OR (tenant = ? AND version > ?) ORDER BY tenant, version LIMIT ?",
            )
            .bind(tenant)
            .bind(tenant)
            .bind(tenant)
            .bind(version)
            .bind(limit - keys.len() as i64)
            .fetch_all(self.conn())
            .await
            .map_err(classify)?;
            for row in &rows {
                let tenant = column(row, "tenant", "tenant_record_keys.tenant")?;
                let version =
                    to_u32(column(row, "version", "tenant_record_keys.version")?, "tenant_record_keys.version")?;
                keys.push(stored(row, WrappedKeySlot::TenantRecord(tenant, version), "wrapped_key")?);
            }
        }
        Ok(keys)
    }
}

fn stored(row: &SqliteRow, slot: WrappedKeySlot, name: &str) -> Result<StoredWrappedKey, StoreError> {
    let wrapped: Vec<u8> = column(row, name, "wrapped key")?;
    Ok(StoredWrappedKey { slot, wrapped: WrappedKey::from_bytes(wrapped) })
}

#[async_trait]
impl RootRotationWriteTx for SqliteTx {
    async fn replace_wrapped_key(
        &mut self,
        slot: &WrappedKeySlot,
        old: &WrappedKey,
        new: &WrappedKey,
    ) -> Result<bool, StoreError> {
        let query = match slot {
            WrappedKeySlot::System(name) => {
                sqlx::query("UPDATE system_keys SET wrapped_key = ? WHERE name = ? AND wrapped_key = ?")
                    .bind(new.as_bytes())
                    .bind(name.as_str())
            }
            WrappedKeySlot::TenantIndex(tenant) => {
                sqlx::query("UPDATE tenants SET index_key_wrapped = ? WHERE tenant = ? AND index_key_wrapped = ?")
                    .bind(new.as_bytes())
                    .bind(tenant.as_str())
            }
            WrappedKeySlot::TenantRecord(tenant, version) => sqlx::query(
                "UPDATE tenant_record_keys SET wrapped_key = ? WHERE tenant = ? AND version = ? AND wrapped_key = ?",
            )
            .bind(new.as_bytes())
            .bind(tenant.as_str())
            .bind(i64::from(*version)),
        };
        let done = query.bind(old.as_bytes()).execute(self.conn()).await.map_err(classify)?;
        Ok(done.rows_affected() == 1)
    }
}
