//! Steps of tenant offboarding, passed on with their failures counted.

use mnvault_core::store::{OffboardingReadTx, OffboardingWriteTx, ReadTx, WriteTx};

use super::MeteredTx;

impl<T: ReadTx + ?Sized> OffboardingReadTx for MeteredTx<T> {}

impl<T: WriteTx + ?Sized> OffboardingWriteTx for MeteredTx<T> {}
