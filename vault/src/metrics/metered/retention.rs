//! Steps of retention, passed on with their failures counted.

use async_trait::async_trait;
use mnvault_core::id::{TenantId, Token};
use mnvault_core::store::{ReadTx, RetentionReadTx, RetentionRow, RetentionWriteTx, StoreError, TombstoneRow, WriteTx};

use super::MeteredTx;

#[async_trait]
impl<T: ReadTx + ?Sized> RetentionReadTx for MeteredTx<T> {
    async fn due_retention(
        &mut self,
        tenant: Option<&TenantId>,
        after: Option<(&str, &str)>,
        delete_on_max: i64,
        limit: u32,
    ) -> Result<Vec<RetentionRow>, StoreError> {
        let result = self.inner.due_retention(tenant, after, delete_on_max, limit).await;
        self.metrics.counted(result)
    }

    async fn count_held_due(&mut self, tenant: Option<&TenantId>, delete_on_max: i64) -> Result<u64, StoreError> {
        let result = self.inner.count_held_due(tenant, delete_on_max).await;
        self.metrics.counted(result)
    }

    async fn tombstones(&mut self, tenant: &TenantId, tokens: &[Token]) -> Result<Vec<TombstoneRow>, StoreError> {
        let result = self.inner.tombstones(tenant, tokens).await;
        self.metrics.counted(result)
    }

    async fn tombstones_between(
        &mut self,
        tenant: &TenantId,
        since_ms: i64,
        until_ms: i64,
        limit: u32,
    ) -> Result<Vec<TombstoneRow>, StoreError> {
        let result = self.inner.tombstones_between(tenant, since_ms, until_ms, limit).await;
        self.metrics.counted(result)
    }
}

#[async_trait]
impl<T: WriteTx + ?Sized> RetentionWriteTx for MeteredTx<T> {
    async fn upsert_retention(&mut self, rows: &[RetentionRow]) -> Result<(), StoreError> {
        let result = self.inner.upsert_retention(rows).await;
        self.metrics.counted(result)
    }

    async fn delete_records(&mut self, tenant: &TenantId, tokens: &[Token]) -> Result<u64, StoreError> {
        let result = self.inner.delete_records(tenant, tokens).await;
        self.metrics.counted(result)
    }

    async fn insert_tombstones(&mut self, rows: &[TombstoneRow]) -> Result<(), StoreError> {
        let result = self.inner.insert_tombstones(rows).await;
        self.metrics.counted(result)
    }
}
