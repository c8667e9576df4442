//! PostgreSQL steps of tenant offboarding.

use std::ops::DerefMut;

use mnvault_core::store::{OffboardingReadTx, OffboardingWriteTx};
use sqlx::{PgConnection, Postgres, Transaction};

use super::PgTx;

impl<C> OffboardingReadTx for PgTx<C> where C: DerefMut<Target = PgConnection> + Send {}

impl OffboardingWriteTx for PgTx<Transaction<'static, Postgres>> {}
