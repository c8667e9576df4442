//! Store steps of collections.

use async_trait::async_trait;

use super::{NewRecord, StoreError};
use crate::id::{CollectionId, TenantId, Token};

/// A collection as stored, unparsed: the core checks its tag before
/// believing any of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionRow {
    /// The `collection_id` column.
    pub collection_id: String,
    /// The `tenant` column.
    pub tenant: String,
    /// Keyed hash of the link's secret ([`crate::integrity::Integrity::link_hash`]).
    pub link_hash: Vec<u8>,
    /// Payroll's reference.
    pub reference: String,
    /// Relations asked for, in their stored form.
    pub relations: String,
    /// Purposes, in their stored form.
    pub purposes: String,
    /// Who asked for it.
    pub created_by: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
    pub expires_at: i64,
    /// The state's identifier.
    pub state: String,
    /// When the state was reached.
    pub settled_at: i64,
    /// The tokens, space-separated, once submitted.
    pub tokens: String,
    /// A re-issue's token whose number is replaced; empty for none.
    pub reissue_token: String,
    /// A submitted re-issue's token of the replaced number; empty otherwise.
    pub superseded_token: String,
    /// Sequence number of the audit entry that recorded the row's state: a
    /// row put back from before a later change is not the chain's latest.
    pub changed_seq: i64,
    /// The state tag (absent in a row nobody tagged).
    pub tag: Option<Vec<u8>>,
}

/// Read steps of collections; every [`super::ReadTx`] offers them.
#[async_trait]
pub trait CollectionReadTx: Send {
    /// The tenant's collections among `ids` (at most
    /// [`crate::collection::MAX_WATCHED`]), in no particular order.
    async fn collections(&mut self, tenant: &TenantId, ids: &[CollectionId]) -> Result<Vec<CollectionRow>, StoreError>;

    /// The collection whose link hashes to `link_hash`.
    async fn collection_by_link(&mut self, link_hash: &[u8]) -> Result<Option<CollectionRow>, StoreError>;

    /// Up to `limit` of the tenant's submitted re-issue collections whose
    /// `reissue_token` is one of `tokens`, in no particular order.
    async fn submitted_reissues(
        &mut self,
        tenant: &TenantId,
        tokens: &[Token],
        limit: u32,
    ) -> Result<Vec<CollectionRow>, StoreError>;
}

/// Write steps of collections; every [`super::WriteTx`] offers them.
#[async_trait]
pub trait CollectionWriteTx: Send {
    /// Stores a new collection.
    async fn insert_collection(&mut self, row: &CollectionRow) -> Result<(), StoreError>;

    /// The collection whose link hashes to `link_hash`, its row locked until commit.
    async fn lock_collection_by_link(&mut self, link_hash: &[u8]) -> Result<Option<CollectionRow>, StoreError>;

    /// The tenant's collection `id`, its row locked until commit.
    async fn lock_collection(
        &mut self,
        tenant: &TenantId,
        id: &CollectionId,
    ) -> Result<Option<CollectionRow>, StoreError>;

    /// Stores a collection's new state, settled time, tokens, superseded
    /// token, entry and tag.
    async fn settle_collection(&mut self, row: &CollectionRow) -> Result<(), StoreError>;

    /// Puts `record` (another number) in place of the record of its token
    /// in the tenant, if that row still has `old_tag`; `false` if not.
    async fn replace_record(
        &mut self,
        tenant: &TenantId,
        old_tag: &[u8],
        record: &NewRecord,
        created_at: i64,
    ) -> Result<bool, StoreError>;
}
