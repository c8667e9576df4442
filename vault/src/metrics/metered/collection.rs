//! Steps of collections, passed on with their failures counted.

use async_trait::async_trait;
use mnvault_core::id::{CollectionId, TenantId};
use mnvault_core::store::{CollectionReadTx, CollectionRow, CollectionWriteTx, ReadTx, StoreError, WriteTx};

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
}
