//! Steps of tenant offboarding, passed on with their failures counted.

use async_trait::async_trait;
use mnvault_core::id::{TenantId, Token};
use mnvault_core::store::{OffboardingReadTx, OffboardingWriteTx, ReadTx, RecordRow, StoreError, WriteTx};

use super::MeteredTx;

#[async_trait]
impl<T: ReadTx + ?Sized> OffboardingReadTx for MeteredTx<T> {
    async fn tenant_shredded_at(&mut self, tenant: &TenantId) -> Result<Option<i64>, StoreError> {
        let result = self.inner.tenant_shredded_at(tenant).await;
        self.metrics.counted(result)
    }

    async fn count_tenant_records(&mut self, tenant: &TenantId, created_until: i64) -> Result<u64, StoreError> {
        let result = self.inner.count_tenant_records(tenant, created_until).await;
        self.metrics.counted(result)
    }

    async fn tenant_records_page(
        &mut self,
        tenant: &TenantId,
        after: Option<&Token>,
        created_until: i64,
        limit: u32,
    ) -> Result<Vec<(RecordRow, Vec<u8>)>, StoreError> {
        let result = self.inner.tenant_records_page(tenant, after, created_until, limit).await;
        self.metrics.counted(result)
    }

    async fn tenant_job_ids(&mut self, tenant: &TenantId, after: &str, limit: u32) -> Result<Vec<String>, StoreError> {
        let result = self.inner.tenant_job_ids(tenant, after, limit).await;
        self.metrics.counted(result)
    }
}

#[async_trait]
impl<T: WriteTx + ?Sized> OffboardingWriteTx for MeteredTx<T> {
    async fn shred_tenant_keys(&mut self, tenant: &TenantId, at: i64) -> Result<bool, StoreError> {
        let result = self.inner.shred_tenant_keys(tenant, at).await;
        self.metrics.counted(result)
    }

    async fn delete_tenant_records(&mut self, tenant: &TenantId, limit: u32) -> Result<u64, StoreError> {
        let result = self.inner.delete_tenant_records(tenant, limit).await;
        self.metrics.counted(result)
    }
}
