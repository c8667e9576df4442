//! Store steps of retention: deletion dates, legal holds, purges and their tombstones.

use async_trait::async_trait;

/// Read steps of retention; every [`super::ReadTx`] offers them.
#[async_trait]
pub trait RetentionReadTx: Send {}

/// Write steps of retention; every [`super::WriteTx`] offers them.
#[async_trait]
pub trait RetentionWriteTx: Send {}
