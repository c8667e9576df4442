//! Steps of root key rotation, passed on with their failures counted.

use mnvault_core::store::{RootRotationReadTx, RootRotationWriteTx, ReadTx, WriteTx};

use super::MeteredTx;

impl<T: ReadTx + ?Sized> RootRotationReadTx for MeteredTx<T> {}

impl<T: WriteTx + ?Sized> RootRotationWriteTx for MeteredTx<T> {}
