//! Store steps of root key rotation: every wrapped key row, re-wrapped under a new root key.

use async_trait::async_trait;

/// Read steps of root key rotation; every [`super::ReadTx`] offers them.
#[async_trait]
pub trait RootRotationReadTx: Send {}

/// Write steps of root key rotation; every [`super::WriteTx`] offers them.
#[async_trait]
pub trait RootRotationWriteTx: Send {}
