//! Store steps of retention: deletion dates, legal holds, purges and their tombstones.
//!
//! Rows come back unparsed; the core checks their state tag
//! ([`crate::integrity`]) before believing any of them. Dates are stored as
//! the integer `yyyymmdd` of a calendar date in Japan
//! ([`crate::retention::date_number`]).

use async_trait::async_trait;

use super::StoreError;
use crate::id::{TenantId, Token};

/// A token's retention as stored, unparsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionRow {
    /// The `tenant` column.
    pub tenant: String,
    /// The `token` column.
    pub token: String,
    /// Class identifiers, sorted, joined by `,`.
    pub classes: String,
    /// End of employment, `yyyymmdd`.
    pub end_date: Option<i64>,
    /// First day it may be deleted, `yyyymmdd`.
    pub delete_on: i64,
    /// Whether deletion is held.
    pub legal_hold: bool,
    /// Unix milliseconds of the `SetRetention` that wrote it.
    pub set_at: i64,
    /// Sequence number of the audit entry of that `SetRetention`.
    pub set_seq: i64,
    /// The `tag` column.
    pub tag: Option<Vec<u8>>,
}

/// What is kept of a token whose number was deleted: when and why, never
/// the number nor its blind index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TombstoneRow {
    /// The `tenant` column.
    pub tenant: String,
    /// The `token` column.
    pub token: String,
    /// Unix milliseconds.
    pub deleted_at: i64,
    /// Class identifiers, sorted, joined by `,`.
    pub classes: String,
    /// End of employment, `yyyymmdd`.
    pub end_date: Option<i64>,
    /// The deletion date applied, `yyyymmdd`.
    pub delete_on: i64,
    /// Sequence number of the `retention.delete` audit entry.
    pub audit_seq: i64,
    /// The `tag` column.
    pub tag: Option<Vec<u8>>,
}

/// Read steps of retention; every [`super::ReadTx`] offers them.
#[async_trait]
pub trait RetentionReadTx: Send {
    /// Up to `limit` retention rows whose `delete_on` is at most
    /// `delete_on_max` and that are not on legal hold, of `tenant` (every
    /// tenant when `None`), after (`tenant`, `token`) `after`, in (tenant,
    /// token) order. Held rows are left out so that they cannot fill a
    /// purge's batches and keep it from the rows it may delete.
    async fn due_retention(
        &mut self,
        tenant: Option<&TenantId>,
        after: Option<(&str, &str)>,
        delete_on_max: i64,
        limit: u32,
    ) -> Result<Vec<RetentionRow>, StoreError>;
    /// How many retention rows whose `delete_on` is at most `delete_on_max`
    /// are on legal hold, of `tenant` (every tenant when `None`).
    async fn count_held_due(&mut self, tenant: Option<&TenantId>, delete_on_max: i64) -> Result<u64, StoreError>;
    /// The tombstones of those of `tokens` that have one in the tenant.
    async fn tombstones(&mut self, tenant: &TenantId, tokens: &[Token]) -> Result<Vec<TombstoneRow>, StoreError>;
    /// Up to `limit` tombstones of the tenant deleted in [`since_ms`,
    /// `until_ms`), by time then token.
    async fn tombstones_between(
        &mut self,
        tenant: &TenantId,
        since_ms: i64,
        until_ms: i64,
        limit: u32,
    ) -> Result<Vec<TombstoneRow>, StoreError>;
}

/// Write steps of retention; every [`super::WriteTx`] offers them.
#[async_trait]
pub trait RetentionWriteTx: Send {
    /// Inserts or replaces the retention rows (key: tenant and token).
    async fn upsert_retention(&mut self, rows: &[RetentionRow]) -> Result<(), StoreError>;
    /// Deletes the records of `tokens` in the tenant (sealed number, blind
    /// index and all) and their retention rows; returns how many records
    /// were deleted.
    async fn delete_records(&mut self, tenant: &TenantId, tokens: &[Token]) -> Result<u64, StoreError>;
    /// Inserts tombstones (a token that has one already keeps the first).
    async fn insert_tombstones(&mut self, rows: &[TombstoneRow]) -> Result<(), StoreError>;
}
