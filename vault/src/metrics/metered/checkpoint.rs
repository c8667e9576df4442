//! Steps of signed checkpoints, passed on with their failures counted.

use async_trait::async_trait;
use mnvault_core::audit::checkpoint::{SignedCheckpoint, SigningKeyRecord};
use mnvault_core::store::{CheckpointReadTx, CheckpointWriteTx, ReadTx, StoreError, WriteTx};

use super::MeteredTx;

#[async_trait]
impl<T: ReadTx + ?Sized> CheckpointReadTx for MeteredTx<T> {
    async fn audit_checkpoints(&mut self, after_seq: u64, limit: u32) -> Result<Vec<SignedCheckpoint>, StoreError> {
        let result = self.inner.audit_checkpoints(after_seq, limit).await;
        self.metrics.counted(result)
    }

    async fn audit_checkpoint_at_or_before(&mut self, seq: u64) -> Result<Option<SignedCheckpoint>, StoreError> {
        let result = self.inner.audit_checkpoint_at_or_before(seq).await;
        self.metrics.counted(result)
    }

    async fn audit_checkpoint_signed_before(&mut self, time_ms: i64) -> Result<Option<SignedCheckpoint>, StoreError> {
        let result = self.inner.audit_checkpoint_signed_before(time_ms).await;
        self.metrics.counted(result)
    }

    async fn latest_audit_checkpoint(&mut self) -> Result<Option<SignedCheckpoint>, StoreError> {
        let result = self.inner.latest_audit_checkpoint().await;
        self.metrics.counted(result)
    }

    async fn signing_keys(&mut self, limit: u32) -> Result<Vec<SigningKeyRecord>, StoreError> {
        let result = self.inner.signing_keys(limit).await;
        self.metrics.counted(result)
    }
}

#[async_trait]
impl<T: WriteTx + ?Sized> CheckpointWriteTx for MeteredTx<T> {
    async fn insert_audit_checkpoint(&mut self, checkpoint: &SignedCheckpoint) -> Result<(), StoreError> {
        let result = self.inner.insert_audit_checkpoint(checkpoint).await;
        self.metrics.counted(result)
    }

    async fn insert_signing_key(&mut self, record: &SigningKeyRecord) -> Result<(), StoreError> {
        let result = self.inner.insert_signing_key(record).await;
        self.metrics.counted(result)
    }
}
