//! PostgreSQL steps of collections. Locks are row locks (`FOR UPDATE`), so
//! two submits of one link, on any replicas, are serialised and the second
//! finds the collection submitted.

use std::ops::DerefMut;

use async_trait::async_trait;
use mnvault_core::id::{CollectionId, TenantId, Token};
use mnvault_core::store::{CollectionReadTx, CollectionRow, CollectionWriteTx, NewRecord, StoreError};
use sqlx::PgConnection;

use super::super::rows::{collection, insert_collection, replace_record, settle_collection, COLLECTION_COLUMNS};
use super::{classify, PgTx};

#[async_trait]
impl<C> CollectionReadTx for PgTx<C>
where
    C: DerefMut<Target = PgConnection> + Send,
{
    async fn collections(&mut self, tenant: &TenantId, ids: &[CollectionId]) -> Result<Vec<CollectionRow>, StoreError> {
        let ids: Vec<&str> = ids.iter().map(CollectionId::as_str).collect();
        let sql = format!("SELECT {COLLECTION_COLUMNS} FROM collections WHERE tenant = $1 AND collection_id = ANY($2)");
        let rows = sqlx::query(&sql).bind(tenant.as_str()).bind(&ids).fetch_all(self.conn()).await.map_err(classify)?;
        rows.iter().map(collection).collect()
    }

    async fn collection_by_link(&mut self, link_hash: &[u8]) -> Result<Option<CollectionRow>, StoreError> {
        let sql = format!("SELECT {COLLECTION_COLUMNS} FROM collections WHERE link_hash = $1");
        let row = sqlx::query(&sql).bind(link_hash).fetch_optional(self.conn()).await.map_err(classify)?;
        row.as_ref().map(collection).transpose()
    }

    async fn submitted_reissues(
        &mut self,
        tenant: &TenantId,
        tokens: &[Token],
        limit: u32,
    ) -> Result<Vec<CollectionRow>, StoreError> {
        let tokens: Vec<&str> = tokens.iter().map(Token::as_str).collect();
        let sql = format!(
            "SELECT {COLLECTION_COLUMNS} FROM collections WHERE tenant = $1 AND reissue_token = ANY($2) \
             AND reissue_token <> '' AND superseded_token <> '' LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(tenant.as_str())
            .bind(&tokens)
            .bind(i64::from(limit))
            .fetch_all(self.conn())
            .await
            .map_err(classify)?;
        rows.iter().map(collection).collect()
    }
}

#[async_trait]
impl<C> CollectionWriteTx for PgTx<C>
where
    C: DerefMut<Target = PgConnection> + Send,
{
    async fn insert_collection(&mut self, row: &CollectionRow) -> Result<(), StoreError> {
        insert_collection(row).build().execute(self.conn()).await.map_err(classify)?;
        Ok(())
    }

    async fn lock_collection_by_link(&mut self, link_hash: &[u8]) -> Result<Option<CollectionRow>, StoreError> {
        let sql = format!("SELECT {COLLECTION_COLUMNS} FROM collections WHERE link_hash = $1 FOR UPDATE");
        let row = sqlx::query(&sql).bind(link_hash).fetch_optional(self.conn()).await.map_err(classify)?;
        row.as_ref().map(collection).transpose()
    }

    async fn lock_collection(
        &mut self,
        tenant: &TenantId,
        id: &CollectionId,
    ) -> Result<Option<CollectionRow>, StoreError> {
        let sql =
            format!("SELECT {COLLECTION_COLUMNS} FROM collections WHERE tenant = $1 AND collection_id = $2 FOR UPDATE");
        let row = sqlx::query(&sql)
            .bind(tenant.as_str())
            .bind(id.as_str())
            .fetch_optional(self.conn())
            .await
            .map_err(classify)?;
        row.as_ref().map(collection).transpose()
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
