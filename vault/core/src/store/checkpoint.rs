//! Store steps of signed checkpoints and of the vault's signing keys'
//! public halves.

use async_trait::async_trait;

use super::StoreError;
use crate::audit::checkpoint::{SignedCheckpoint, SigningKeyRecord};

/// Read steps of signed checkpoints; every [`super::ReadTx`] offers them.
#[async_trait]
pub trait CheckpointReadTx: Send {
    /// Up to `limit` checkpoints after position `after_seq`, in order.
    async fn audit_checkpoints(&mut self, after_seq: u64, limit: u32) -> Result<Vec<SignedCheckpoint>, StoreError>;

    /// The checkpoint at the furthest position at or before `seq`, if any.
    async fn audit_checkpoint_at_or_before(&mut self, seq: u64) -> Result<Option<SignedCheckpoint>, StoreError>;

    /// The checkpoint signed last before `time_ms` (by the time stored
    /// with it, which its signature covers), if any.
    async fn audit_checkpoint_signed_before(&mut self, time_ms: i64) -> Result<Option<SignedCheckpoint>, StoreError>;

    /// The checkpoint at the furthest position, if any.
    async fn latest_audit_checkpoint(&mut self) -> Result<Option<SignedCheckpoint>, StoreError>;

    /// Up to `limit` signing keys, oldest first.
    async fn signing_keys(&mut self, limit: u32) -> Result<Vec<SigningKeyRecord>, StoreError>;
}

/// Write steps of signed checkpoints; every [`super::WriteTx`] offers them.
#[async_trait]
pub trait CheckpointWriteTx: Send {
    /// Stores `checkpoint`, replacing whatever is stored at its position
    /// (another replica's checkpoint of the same head, or a planted row).
    async fn insert_audit_checkpoint(&mut self, checkpoint: &SignedCheckpoint) -> Result<(), StoreError>;

    /// Stores a signing key's record (once per key).
    async fn insert_signing_key(&mut self, record: &SigningKeyRecord) -> Result<(), StoreError>;
}
