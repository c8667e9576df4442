//! Store steps of tenant offboarding: export and shred.

use async_trait::async_trait;

/// Read steps of tenant offboarding; every [`super::ReadTx`] offers them.
#[async_trait]
pub trait OffboardingReadTx: Send {}

/// Write steps of tenant offboarding; every [`super::WriteTx`] offers them.
#[async_trait]
pub trait OffboardingWriteTx: Send {}
