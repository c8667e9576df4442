//! SQLite steps of tenant offboarding.

use mnvault_core::store::{OffboardingReadTx, OffboardingWriteTx};

use super::SqliteTx;

impl OffboardingReadTx for SqliteTx {}

impl OffboardingWriteTx for SqliteTx {}
