//! PostgreSQL steps of tenant key rotation.

use std::ops::DerefMut;

use mnvault_core::store::{RotationReadTx, RotationWriteTx};
use sqlx::{PgConnection, Postgres, Transaction};

use super::PgTx;

impl<C> RotationReadTx for PgTx<C> where C: DerefMut<Target = PgConnection> + Send {}

impl RotationWriteTx for PgTx<Transaction<'static, Postgres>> {}
