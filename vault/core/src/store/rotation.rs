//! Store steps of tenant key rotation: new record-key versions, rewrapping records, key status, retiring versions.

use async_trait::async_trait;

/// Read steps of tenant key rotation; every [`super::ReadTx`] offers them.
#[async_trait]
pub trait RotationReadTx: Send {}

/// Write steps of tenant key rotation; every [`super::WriteTx`] offers them.
#[async_trait]
pub trait RotationWriteTx: Send {}
