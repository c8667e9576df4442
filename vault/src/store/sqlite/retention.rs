//! SQLite steps of retention.

use mnvault_core::store::{RetentionReadTx, RetentionWriteTx};

use super::SqliteTx;

impl RetentionReadTx for SqliteTx {}

impl RetentionWriteTx for SqliteTx {}
