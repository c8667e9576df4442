//! SQLite steps of collections. Rows are locked by the write transaction
//! itself (`BEGIN IMMEDIATE` holds the database's write lock).

use async_trait::async_trait;
use mnvault_core::id::{CollectionId, TenantId};
use mnvault_core::store::{CollectionReadTx, CollectionRow, CollectionWriteTx, StoreError};

use super::super::rows::{collection, insert_collection, settle_collection, COLLECTION_COLUMNS};
use super::{classify, SqliteTx};

#[async_trait]
impl CollectionReadTx for SqliteTx {
    async fn collections(&mut self, tenant: &TenantId, ids: &[CollectionId]) -> Result<Vec<CollectionRow>, StoreError> {
        let sql = format!("SELECT {COLLECTION_COLUMNS} FROM collections WHERE tenant = ? AND collection_id = ?");
        let mut rows = Vec::with_capacity(ids.len());
        for id in ids {
            let row = sqlx::query(&sql)
                .bind(tenant.as_str())
                .bind(id.as_str())
                .fetch_optional(self.conn())
                .await
                .map_err(classify)?;
            if let Some(row) = row {
                rows.push(collection(&row)?);
            }
        }
        Ok(rows)
    }

    async fn collection_by_link(&mut self, link_hash: &[u8]) -> Result<Option<CollectionRow>, StoreError> {
        let sql = format!("SELECT {COLLECTION_COLUMNS} FROM collections WHERE link_hash = ?");
        let row = sqlx::query(&sql).bind(link_hash).fetch_optional(self.conn()).await.map_err(classify)?;
        row.as_ref().map(collection).transpose()
    }
}

#[async_trait]
impl CollectionWriteTx for SqliteTx {
    async fn insert_collection(&mut self, row: &CollectionRow) -> Result<(), StoreError> {
        insert_collection(row).build().execute(self.conn()).await.map_err(classify)?;
        Ok(())
    }

    async fn lock_collection_by_link(&mut self, link_hash: &[u8]) -> Result<Option<CollectionRow>, StoreError> {
        self.collection_by_link(link_hash).await
    }

    async fn lock_collection(
        &mut self,
        tenant: &TenantId,
        id: &CollectionId,
    ) -> Result<Option<CollectionRow>, StoreError> {
        Ok(self.collections(tenant, std::slice::from_ref(id)).await?.pop())
    }

    async fn settle_collection(&mut self, row: &CollectionRow) -> Result<(), StoreError> {
        settle_collection(row).build().execute(self.conn()).await.map_err(classify)?;
        Ok(())
    }
}
