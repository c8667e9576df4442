//! Steps of collections, passed on with their failures counted.

use async_trait::async_trait;
use mnvault_core::id::{CollectionId, TenantId, Token};
use mnvault_core::store::{CollectionReadTx, CollectionRow, CollectionWriteTx, NewRecord, ReadTx, StoreError, WriteTx};

use super::MeteredTx;

#[async_trait]
impl<T: ReadTx + ?Sized> CollectionReadTx for MeteredTx<T> {
    async fn collections(&mut self, tenant: &TenantId, ids: &[CollectionId]) -> Result<Vec<CollectionRow>, StoreError> {
        let result = self.inner.collections(tenant, ids).await;
        self.metrics.counted(result)
    }

    async fn collection_by_link(&mut self, link_hash: &[u8]) -> Result<Option<CollectionRow>, StoreError> {
        let result = self.inner.collection_by_link(link_hash).await;
        self.metrics.counted(result)
    }

    async fn submitted_reissues(
        &mut self,
        tenant: &TenantId,
        tokens: &[Token],
        limit: u32,
    ) -> Result<Vec<CollectionRow>, StoreError> {
        let result = self.inner.submitted_reissues(tenant, tokens, limit).await;
        self.metrics.counted(result)
    }
}

#[async_trait]
impl<T: WriteTx + ?Sized> CollectionWriteTx for MeteredTx<T> {
    async fn insert_collection(&mut self, row: &CollectionRow) -> Result<(), StoreError> {
        let result = self.inner.insert_collection(row).await;
        self.metrics.counted(result)
    }

    async fn lock_collection_by_link(&mut self, link_hash: &[u8]) -> Result<Option<CollectionRow>, StoreError> {
        let result = self.inner.lock_collection_by_link(link_hash).await;
        self.metrics.counted(result)
    }

    async fn lock_collection(
        &mut self,
        tenant: &TenantId,
        id: &CollectionId,
    ) -> Result<Option<CollectionRow>, StoreError> {
        let result = self.inner.lock_collection(tenant, id).await;
        self.metrics.counted(result)
    }

    async fn settle_collection(&mut self, row: &CollectionRow) -> Result<(), StoreError> {
        let result = self.inner.settle_collection(row).await;
        self.metrics.counted(result)
    }

    async fn replace_record(
        &mut self,
        tenant: &TenantId,
        old_tag: &[u8],
        record: &NewRecord,
        created_at: i64,
    ) -> Result<bool, StoreError> {
        let result = self.inner.replace_record(tenant, old_tag, record, created_at).await;
        self.metrics.counted(result)
    }
}
