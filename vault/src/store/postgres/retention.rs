//! PostgreSQL steps of retention.

use std::ops::DerefMut;

use mnvault_core::store::{RetentionReadTx, RetentionWriteTx};
use sqlx::{PgConnection, Postgres, Transaction};

use super::PgTx;

impl<C> RetentionReadTx for PgTx<C> where C: DerefMut<Target = PgConnection> + Send {}

impl RetentionWriteTx for PgTx<Transaction<'static, Postgres>> {}
