//! Store steps of tenant offboarding: export and shred.

use async_trait::async_trait;

use super::{RecordRow, StoreError};
use crate::id::{TenantId, Token};

/// Read steps of tenant offboarding; every [`super::ReadTx`] offers them.
#[async_trait]
pub trait OffboardingReadTx: Send {
    /// When the tenant was shredded (Unix ms); `None` if it was not, or does
    /// not exist.
    async fn tenant_shredded_at(&mut self, tenant: &TenantId) -> Result<Option<i64>, StoreError>;
    /// How many records the tenant holds created at or before `created_until`.
    async fn count_tenant_records(&mut self, tenant: &TenantId, created_until: i64) -> Result<u64, StoreError>;
    /// Up to `limit` records of the tenant created at or before
    /// `created_until`, after token `after` (from the first when `None`), in
    /// token order, each with its sealed bytes.
    async fn tenant_records_page(
        &mut self,
        tenant: &TenantId,
        after: Option<&Token>,
        created_until: i64,
        limit: u32,
    ) -> Result<Vec<(RecordRow, Vec<u8>)>, StoreError>;
    /// Up to `limit` ids of the tenant's filing jobs after `after` (from the
    /// first when empty), in order.
    async fn tenant_job_ids(&mut self, tenant: &TenantId, after: &str, limit: u32) -> Result<Vec<String>, StoreError>;
}

/// Write steps of tenant offboarding; every [`super::WriteTx`] offers them.
#[async_trait]
pub trait OffboardingWriteTx: Send {
    /// Destroys the tenant's keys: its wrapped blind-index key is
    /// overwritten with nothing and every wrapped record-key version is
    /// deleted, and the tenant is marked shredded at `at` unless it was
    /// already. The keys are destroyed either way (the mark is under no tag);
    /// `false` if it was already marked. A backend that can should overwrite
    /// the freed bytes too (SQLite's `secure_delete`).
    async fn shred_tenant_keys(&mut self, tenant: &TenantId, at: i64) -> Result<bool, StoreError>;
    /// Deletes up to `limit` of the tenant's records (sealed numbers, blind
    /// indexes, tokens) with their retention rows (nothing is left to keep,
    /// so no later purge deletes or certifies them again); returns how many.
    async fn delete_tenant_records(&mut self, tenant: &TenantId, limit: u32) -> Result<u64, StoreError>;
}
