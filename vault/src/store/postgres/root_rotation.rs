//! PostgreSQL steps of root key rotation.

use std::ops::DerefMut;

use mnvault_core::store::{RootRotationReadTx, RootRotationWriteTx};
use sqlx::{PgConnection, Postgres, Transaction};

use super::PgTx;

impl<C> RootRotationReadTx for PgTx<C> where C: DerefMut<Target = PgConnection> + Send {}

impl RootRotationWriteTx for PgTx<Transaction<'static, Postgres>> {}
