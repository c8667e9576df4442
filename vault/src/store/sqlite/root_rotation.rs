//! SQLite steps of root key rotation.

use mnvault_core::store::{RootRotationReadTx, RootRotationWriteTx};

use super::SqliteTx;

impl RootRotationReadTx for SqliteTx {}

impl RootRotationWriteTx for SqliteTx {}
