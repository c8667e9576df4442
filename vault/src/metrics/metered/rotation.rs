//! Steps of tenant key rotation, passed on with their failures counted.

use async_trait::async_trait;
use mnvault_core::id::{TenantId, Token};
use mnvault_core::store::{
    KeyVersionRow, ReadTx, RewrapScan, RewrappedRecord, RotationReadTx, RotationWriteTx, StoreError, WriteTx,
};
use mnvault_keys::WrappedKey;

use super::MeteredTx;

#[async_trait]
impl<T: ReadTx + ?Sized> RotationReadTx for MeteredTx<T> {
    async fn record_key_versions(&mut self, tenant: &TenantId) -> Result<Vec<KeyVersionRow>, StoreError> {
        let result = self.inner.record_key_versions(tenant).await;
        self.metrics.counted(result)
    }

    async fn records_per_key_version(&mut self, tenant: &TenantId) -> Result<Vec<(u32, u64)>, StoreError> {
        let result = self.inner.records_per_key_version(tenant).await;
        self.metrics.counted(result)
    }

    async fn any_record_under_version(&mut self, tenant: &TenantId, version: u32) -> Result<bool, StoreError> {
        let result = self.inner.any_record_under_version(tenant, version).await;
        self.metrics.counted(result)
    }

    async fn tenant_ids(&mut self, after: &str, limit: u32) -> Result<Vec<String>, StoreError> {
        let result = self.inner.tenant_ids(after, limit).await;
        self.metrics.counted(result)
    }

    async fn records_to_rewrap(
        &mut self,
        tenant: &TenantId,
        after: Option<&Token>,
        below: u32,
        window: u32,
        limit: u32,
    ) -> Result<RewrapScan, StoreError> {
        let result = self.inner.records_to_rewrap(tenant, after, below, window, limit).await;
        self.metrics.counted(result)
    }
}

#[async_trait]
impl<T: WriteTx + ?Sized> RotationWriteTx for MeteredTx<T> {
    async fn lock_record_key_versions(&mut self, tenant: &TenantId) -> Result<Vec<KeyVersionRow>, StoreError> {
        let result = self.inner.lock_record_key_versions(tenant).await;
        self.metrics.counted(result)
    }

    async fn insert_record_key(
        &mut self,
        tenant: &TenantId,
        version: u32,
        key: &WrappedKey,
        created_at: i64,
    ) -> Result<bool, StoreError> {
        let result = self.inner.insert_record_key(tenant, version, key, created_at).await;
        self.metrics.counted(result)
    }

    async fn delete_record_key(&mut self, tenant: &TenantId, version: u32) -> Result<bool, StoreError> {
        let result = self.inner.delete_record_key(tenant, version).await;
        self.metrics.counted(result)
    }

    async fn rewrap_records(&mut self, tenant: &TenantId, records: &[RewrappedRecord]) -> Result<u64, StoreError> {
        let result = self.inner.rewrap_records(tenant, records).await;
        self.metrics.counted(result)
    }
}
