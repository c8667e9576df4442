//! Store steps of tenant key rotation: new record-key versions, rewrapping records, key status, retiring versions.
//!
//! Records are found by version without an index on `key_version`
//! (migration 0004 dropped it): a rewrap walks the tenant's records in
//! token order, the primary key, a window at a time, and keeps those under
//! an older version. A whole rewrap reads each record once, which is what
//! it has to write anyway; an index would cost every tokenize an index write
//! for an operation run a few times a year.

use async_trait::async_trait;
use mnvault_keys::WrappedKey;

use super::{RecordRow, StoreError};
use crate::id::{TenantId, Token};

/// One record-key version of a tenant, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyVersionRow {
    /// The version.
    pub version: u32,
    /// When it was added (Unix milliseconds): from then on it was primary,
    /// until the next version was added.
    pub created_at: i64,
}

/// What one window of a rewrap walk found.
#[derive(Debug, Default)]
pub struct RewrapScan {
    /// Records under a version below the one asked for, in token order, with
    /// their sealed bytes; at most the limit asked for.
    pub records: Vec<(RecordRow, Vec<u8>)>,
    /// The token of the window's last record, or `None` when the window
    /// reached the end of the tenant's records.
    pub window_end: Option<String>,
}

/// A record sealed again under the primary version, to be written only if
/// its row is still what was read.
#[derive(Debug, Clone)]
pub struct RewrappedRecord {
    /// The record's token.
    pub token: Token,
    /// The version it was read under.
    pub old_version: u32,
    /// The tag it was read with (checked).
    pub old_tag: Vec<u8>,
    /// The version it is sealed under now.
    pub key_version: u32,
    /// The number sealed again.
    pub sealed: Vec<u8>,
    /// Its tag under the new version.
    pub tag: [u8; 32],
}

/// Read steps of tenant key rotation; every [`super::ReadTx`] offers them.
#[async_trait]
pub trait RotationReadTx: Send {
    /// The tenant's record-key versions, ascending (none: no such tenant).
    async fn record_key_versions(&mut self, tenant: &TenantId) -> Result<Vec<KeyVersionRow>, StoreError>;

    /// How many records of the tenant each key version seals, as (version,
    /// count), by the `key_version` column; versions without records are left out.
    async fn records_per_key_version(&mut self, tenant: &TenantId) -> Result<Vec<(u32, u64)>, StoreError>;

    /// Whether any record of the tenant names `version`, by its column or by
    /// the version written in its sealed bytes.
    async fn any_record_under_version(&mut self, tenant: &TenantId, version: u32) -> Result<bool, StoreError>;

    /// Up to `limit` tenant names after `after` ("" for the first), in order.
    async fn tenant_ids(&mut self, after: &str, limit: u32) -> Result<Vec<String>, StoreError>;

    /// Looks at the tenant's next `window` records after `after` (from the
    /// first when `None`), in token order, and returns at most `limit` of
    /// them whose key version is below `below`.
    async fn records_to_rewrap(
        &mut self,
        tenant: &TenantId,
        after: Option<&Token>,
        below: u32,
        window: u32,
        limit: u32,
    ) -> Result<RewrapScan, StoreError>;
}

/// Write steps of tenant key rotation; every [`super::WriteTx`] offers them.
#[async_trait]
pub trait RotationWriteTx: Send {
    /// The tenant's record-key versions, ascending, their rows locked until
    /// commit, so rotations and retirements of one tenant take turns.
    async fn lock_record_key_versions(&mut self, tenant: &TenantId) -> Result<Vec<KeyVersionRow>, StoreError>;

    /// Stores a new record-key version; `false` (and nothing written) if the
    /// tenant already has it.
    async fn insert_record_key(
        &mut self,
        tenant: &TenantId,
        version: u32,
        key: &WrappedKey,
        created_at: i64,
    ) -> Result<bool, StoreError>;

    /// Deletes a record-key version; `false` if there was none.
    async fn delete_record_key(&mut self, tenant: &TenantId, version: u32) -> Result<bool, StoreError>;

    /// Writes each record's new sealed bytes, version and tag, only where the
    /// row still has the token, old version and old tag it was read with;
    /// returns how many rows were written.
    async fn rewrap_records(&mut self, tenant: &TenantId, records: &[RewrappedRecord]) -> Result<u64, StoreError>;
}
