//! Steps of tenant key rotation, passed on with their failures counted.

use mnvault_core::store::{RotationReadTx, RotationWriteTx, ReadTx, WriteTx};

use super::MeteredTx;

impl<T: ReadTx + ?Sized> RotationReadTx for MeteredTx<T> {}

impl<T: WriteTx + ?Sized> RotationWriteTx for MeteredTx<T> {}
