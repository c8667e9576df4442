//! Store steps of root key rotation: every wrapped key row, re-wrapped under a new root key.

use async_trait::async_trait;
use mnvault_keys::WrappedKey;

use super::StoreError;

/// Where a wrapped key is stored. Its order is the order a store pages
/// them in: system keys, then tenants' index keys, then tenants' record
/// key versions, each by name (and version).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WrappedKeySlot {
    /// A key of the vault itself, by its name in `system_keys`.
    System(String),
    /// A tenant's index key.
    TenantIndex(String),
    /// One version of a tenant's record key.
    TenantRecord(String, u32),
}

/// A stored wrapped key and where it is.
#[derive(Debug, Clone)]
pub struct StoredWrappedKey {
    /// Where.
    pub slot: WrappedKeySlot,
    /// The bytes as stored.
    pub wrapped: WrappedKey,
}

/// Read steps of root key rotation; every [`super::ReadTx`] offers them.
#[async_trait]
pub trait RootRotationReadTx: Send {
    /// Up to `limit` wrapped keys after `after` (from the first when
    /// `None`), in [`WrappedKeySlot`] order. A shredded tenant's emptied
    /// index key slot holds no key and is not listed.
    async fn wrapped_keys(
        &mut self,
        after: Option<&WrappedKeySlot>,
        limit: u32,
    ) -> Result<Vec<StoredWrappedKey>, StoreError>;
}

/// Write steps of root key rotation; every [`super::WriteTx`] offers them.
#[async_trait]
pub trait RootRotationWriteTx: Send {
    /// Puts `new` in `slot` if it still holds `old` (compare and swap);
    /// `false`, changing nothing, if it holds anything else or is gone.
    async fn replace_wrapped_key(
        &mut self,
        slot: &WrappedKeySlot,
        old: &WrappedKey,
        new: &WrappedKey,
    ) -> Result<bool, StoreError>;
}
