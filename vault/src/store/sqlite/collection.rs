//! SQLite steps of collections. Rows are locked by the write transaction
//! itself (`BEGIN IMMEDIATE` holds the database's write lock).

use async_trait::async_trait;
use mnvault_core::id::{CollectionId, TenantId, Token};
use mnvault_core::store::{CollectionReadTx, CollectionRow, CollectionWriteTx, NewRecord, StoreError};

use super::super::rows::{collection, insert_collection, replace_record, settle_collection, COLLECTION_COLUMNS};
use super::{chunks, classify, list, SqliteTx};

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

    async fn submitted_reissues(
        &mut self,
        tenant: &TenantId,
        tokens: &[Token],
        limit: u32,
    ) -> Result<Vec<CollectionRow>, StoreError> {
        let mut rows = Vec::new();
        for chunk in chunks(tokens) {
            let left = i64::from(limit) - rows.len() as i64;
            if left <= 0 {
                break;
            }
            let sql = format!(
                "SELECT {COLLECTION_COLUMNS} FROM collections WHERE tenant = ? AND reissue_token IN ({}) \
                 AND reissue_token <> '' AND superseded_token <> '' LIMIT ?",
                list(chunk.len())
            );
            let mut query = sqlx::query(&sql).bind(tenant.as_str());
            for token in chunk {
                query = query.bind(token.as_str());
            }
            for row in query.bind(left).fetch_all(self.conn()).await.map_err(classify)? {
                rows.push(collection(&row)?);
            }
        }
        Ok(rows)
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

    async fn replace_record(
        &mut self,
        tenant: &TenantId,
        old_tag: &[u8],
        record: &NewRecord,
        created_at: i64,
    ) -> Result<bool, StoreError> {
        let done =
            replace_record(tenant, old_tag, record, created_at).build().execute(self.conn()).await.map_err(classify)?;
        Ok(done.rows_affected() == 1)
    }
}
