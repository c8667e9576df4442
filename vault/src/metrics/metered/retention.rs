//! Steps of retention, passed on with their failures counted.

use mnvault_core::store::{RetentionReadTx, RetentionWriteTx, ReadTx, WriteTx};

use super::MeteredTx;

impl<T: ReadTx + ?Sized> RetentionReadTx for MeteredTx<T> {}

impl<T: WriteTx + ?Sized> RetentionWriteTx for MeteredTx<T> {}
