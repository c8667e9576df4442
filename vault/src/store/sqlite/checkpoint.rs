//! SQLite steps of signed checkpoints and signing keys.

use async_trait::async_trait;
use mnvault_core::audit::checkpoint::{SignedCheckpoint, SigningKeyRecord};
use mnvault_core::store::{CheckpointReadTx, CheckpointWriteTx, StoreError};

use super::{classify, SqliteTx};

#[async_trait]
impl CheckpointReadTx for SqliteTx {
    async fn audit_checkpoints(&mut self, after_seq: u64, limit: u32) -> Result<Vec<SignedCheckpoint>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, hash, time, signed_form_from, signer, signature FROM audit_checkpoints WHERE seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(i64::try_from(after_seq).unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(self.conn())
        .await
        .map_err(classify)?;
        rows.iter().map(super::super::rows::checkpoint).collect()
    }

    async fn audit_checkpoint_at_or_before(&mut self, seq: u64) -> Result<Option<SignedCheckpoint>, StoreError> {
        let row = sqlx::query(
            "SELECT seq, hash, time, signed_form_from, signer, signature FROM audit_checkpoints WHERE seq <= ? \
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(i64::try_from(seq).unwrap_or(i64::MAX))
        .fetch_optional(self.conn())
        .await
        .map_err(classify)?;
        row.as_ref().map(super::super::rows::checkpoint).transpose()
    }

    async fn audit_checkpoint_signed_before(&mut self, time_ms: i64) -> Result<Option<SignedCheckpoint>, StoreError> {
        let row = sqlx::query(
            "SELECT seq, hash, time, signed_form_from, signer, signature FROM audit_checkpoints WHERE time < ? \
             ORDER BY time DESC, seq DESC LIMIT 1",
        )
        .bind(time_ms)
        .fetch_optional(self.conn())
        .await
        .map_err(classify)?;
        row.as_ref().map(super::super::rows::checkpoint).transpose()
    }

    async fn latest_audit_checkpoint(&mut self) -> Result<Option<SignedCheckpoint>, StoreError> {
        let row = sqlx::query("SELECT seq, hash, time, signed_form_from, signer, signature FROM audit_checkpoints ORDER BY seq DESC LIMIT 1")
            .fetch_optional(self.conn())
            .await
            .map_err(classify)?;
        row.as_ref().map(super::super::rows::checkpoint).transpose()
    }

    async fn signing_keys(&mut self, limit: u32) -> Result<Vec<SigningKeyRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT public_key, created_at, from_seq, previous, signed_by_previous, signed_by_self FROM signing_keys \
             ORDER BY created_at, public_key LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(self.conn())
        .await
        .map_err(classify)?;
        rows.iter().map(super::super::rows::signing_key).collect()
    }
}

#[async_trait]
impl CheckpointWriteTx for SqliteTx {
    async fn insert_audit_checkpoint(&mut self, checkpoint: &SignedCheckpoint) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_checkpoints (seq, hash, time, signed_form_from, signer, signature) VALUES (?, ?, ?, ?, ?, ?) \
             ON CONFLICT (seq) DO UPDATE SET hash = excluded.hash, time = excluded.time, \
             signed_form_from = excluded.signed_form_from, signer = excluded.signer, signature = excluded.signature",
        )
        .bind(i64::try_from(checkpoint.seq).map_err(|error| StoreError::Database(Box::new(error)))?)
        .bind(&checkpoint.hash[..])
        .bind(checkpoint.time_ms)
        .bind(i64::try_from(checkpoint.signed_form_from).map_err(|error| StoreError::Database(Box::new(error)))?)
        .bind(&checkpoint.signer.as_bytes()[..])
        .bind(&checkpoint.signature[..])
        .execute(self.conn())
        .await
        .map_err(classify)?;
        Ok(())
    }

    async fn insert_signing_key(&mut self, record: &SigningKeyRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO signing_keys (public_key, created_at, from_seq, previous, signed_by_previous, signed_by_self) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (public_key) DO NOTHING",
        )
        .bind(&record.public_key.as_bytes()[..])
        .bind(record.created_at_ms)
        .bind(i64::try_from(record.from_seq).map_err(|error| StoreError::Database(Box::new(error)))?)
        .bind(record.previous.as_ref().map(|key| &key.as_bytes()[..]))
        .bind(record.signed_by_previous.as_ref().map(|s| &s[..]))
        .bind(record.signed_by_self.as_ref().map(|s| &s[..]))
        .execute(self.conn())
        .await
        .map_err(classify)?;
        Ok(())
    }
}
