//! Steps of tenant policies, passed on with their failures counted.

use async_trait::async_trait;
use mnvault_core::id::TenantId;
use mnvault_core::store::{
    PolicyProposalRow, ReadTx, StoreError, TenantPolicyReadTx, TenantPolicyRow, TenantPolicyWriteTx, WriteTx,
};

use super::MeteredTx;

#[async_trait]
impl<T: ReadTx + ?Sized> TenantPolicyReadTx for MeteredTx<T> {
    async fn tenant_policy(&mut self, tenant: &TenantId) -> Result<Option<TenantPolicyRow>, StoreError> {
        let result = self.inner.tenant_policy(tenant).await;
        self.metrics.counted(result)
    }

    async fn policy_proposal(&mut self, tenant: &TenantId) -> Result<Option<PolicyProposalRow>, StoreError> {
        let result = self.inner.policy_proposal(tenant).await;
        self.metrics.counted(result)
    }
}

#[async_trait]
impl<T: WriteTx + ?Sized> TenantPolicyWriteTx for MeteredTx<T> {
    async fn put_tenant_policy(&mut self, row: &TenantPolicyRow) -> Result<(), StoreError> {
        let result = self.inner.put_tenant_policy(row).await;
        self.metrics.counted(result)
    }

    async fn put_policy_proposal(&mut self, row: &PolicyProposalRow) -> Result<(), StoreError> {
        let result = self.inner.put_policy_proposal(row).await;
        self.metrics.counted(result)
    }

    async fn delete_policy_proposal(&mut self, tenant: &TenantId) -> Result<(), StoreError> {
        let result = self.inner.delete_policy_proposal(tenant).await;
        self.metrics.counted(result)
    }
}
