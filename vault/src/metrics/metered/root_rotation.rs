//! Steps of root key rotation, passed on with their failures counted.

use async_trait::async_trait;
use mnvault_core::store::{
    ReadTx, RootRotationReadTx, RootRotationWriteTx, StoreError, StoredWrappedKey, WrappedKeySlot, WriteTx,
};
use mnvault_keys::WrappedKey;

use super::MeteredTx;

#[async_trait]
impl<T: ReadTx + ?Sized> RootRotationReadTx for MeteredTx<T> {
    async fn wrapped_keys(
        &mut self,
        after: Option<&WrappedKeySlot>,
        limit: u32,
    ) -> Result<Vec<StoredWrappedKey>, StoreError> {
        let result = self.inner.wrapped_keys(after, limit).await;
        self.metrics.counted(result)
    }
}

#[async_trait]
impl<T: WriteTx + ?Sized> RootRotationWriteTx for MeteredTx<T> {
    async fn replace_wrapped_key(
        &mut self,
        slot: &WrappedKeySlot,
        old: &WrappedKey,
        new: &WrappedKey,
    ) -> Result<bool, StoreError> {
        let result = self.inner.replace_wrapped_key(slot, old, new).await;
        self.metrics.counted(result)
    }
}
