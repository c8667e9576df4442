//! SQLite steps of tenant key rotation.

use mnvault_core::store::{RotationReadTx, RotationWriteTx};

use super::SqliteTx;

impl RotationReadTx for SqliteTx {}

impl RotationWriteTx for SqliteTx {}
