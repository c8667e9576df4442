//! [`super::VaultCore`] operations of root key rotation.
//!
//! Every stored key (the system keys, each tenant's index key and record
//! key versions) is wrapped by a root key. A root key rotation configures a
//! new root key as primary and keeps the old one as previous
//! ([`RootKeyRing`]); then [`VaultCore::rotate_root_key`] re-wraps each
//! stored key that the primary does not open yet under the primary. No
//! record is touched: the keys themselves do not change, only what wraps
//! them.
//!
//! - Keys are read a page at a time and re-wrapped outside any transaction;
//!   each page is written in one small transaction, each key only if its
//!   row still holds exactly the bytes that were read (compare and swap), so
//!   a key changed meanwhile (a tenant shredded, a version retired, a run
//!   beside this one) is left as it is now.
//! - A new wrap is unwrapped again with the primary before it is written:
//!   a device that wraps wrongly cannot leave a key unreadable.
//! - Interrupted (or stopped after `limit` keys), the vault still opens
//!   every key with the ring; running it again finds only what is left.
//! - One audit entry per run, `keys.rotate-root`, counting the keys it
//!   re-wrapped.
//!
//! [`root_key_census`] counts which configured root key opens each stored
//! key: when the previous ones open none, they can be removed from the
//! configuration and destroyed.

use mnvault_keys::{KeyError, Opened, RootKeyProvider, RootKeyRing, WrapContext};

use super::VaultCore;
use crate::audit::{AuditDraft, Operation, Outcome};
use crate::error::VaultError;
use crate::id::Principal;
use crate::keyring::{AUDIT_CHAIN_KEY_NAME, ROOT_KEY_UNAVAILABLE, SIGNING_KEY_NAME};
use crate::store::{Store, StoredWrappedKey, WrappedKeySlot};

/// Keys read, re-wrapped and written per transaction.
pub const ROOT_ROTATION_PAGE: u32 = 100;

/// What a root key rotation did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RootRotation {
    /// Keys looked at.
    pub seen: u64,
    /// Re-wrapped under the primary by this run.
    pub rewrapped: u64,
    /// Already under the primary.
    pub already: u64,
    /// Changed by someone else between the read and the write: left as
    /// they are now (a later run looks again).
    pub changed: u64,
    /// Opened by no configured root key (or of a kind this vault does not know).
    pub unopened: u64,
    /// Stopped at the `limit` before the last key.
    pub stopped: bool,
}

/// Which configured root key opens the stored keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RootKeyCensus {
    /// Per member of the ring (the primary first): the keys it opens first.
    pub opened_by: Vec<u64>,
    /// Keys none opens.
    pub unopened: u64,
}

impl RootKeyCensus {
    /// Stored keys counted.
    pub fn total(&self) -> u64 {
        self.opened_by.iter().sum::<u64>() + self.unopened
    }
}

/// The wrap context of a stored slot; `None` for a system key this vault
/// does not know (added by a newer mnvault).
pub fn slot_context(slot: &WrappedKeySlot) -> Option<WrapContext<'_>> {
    match slot {
        WrappedKeySlot::System(name) if name == AUDIT_CHAIN_KEY_NAME => Some(WrapContext::AuditChainKey),
        WrappedKeySlot::System(name) if name == SIGNING_KEY_NAME => Some(WrapContext::SigningKey),
        WrappedKeySlot::System(_) => None,
        WrappedKeySlot::TenantIndex(tenant) => Some(WrapContext::TenantIndexKey { tenant }),
        WrappedKeySlot::TenantRecord(tenant, version) => {
            Some(WrapContext::TenantRecordKey { tenant, version: *version })
        }
    }
}

/// How many wrapped keys the store holds (read only, nothing unwrapped).
pub async fn count_wrapped_keys(store: &dyn Store) -> Result<u64, VaultError> {
    let mut count = 0;
    let mut after = None;
    loop {
        let page = store.begin_read().await?.wrapped_keys(after.as_ref(), ROOT_ROTATION_PAGE).await?;
        count += page.len() as u64;
        match page.into_iter().last() {
            Some(last) => after = Some(last.slot),
            None => return Ok(count),
        }
    }
}

/// Counts, for every stored key, the first member of `ring` that opens it
/// (read only). `progress` is told the keys counted so far.
pub async fn root_key_census(
    store: &dyn Store,
    ring: &RootKeyRing,
    mut progress: impl FnMut(u64),
) -> Result<RootKeyCensus, VaultError> {
    let mut census = RootKeyCensus { opened_by: vec![0; ring.members().len()], unopened: 0 };
    let mut after = None;
    loop {
        let page = store.begin_read().await?.wrapped_keys(after.as_ref(), ROOT_ROTATION_PAGE).await?;
        for key in &page {
            match open(ring, key)? {
                Some(opened) => census.opened_by[opened.member] += 1,
                None => census.unopened += 1,
            }
        }
        progress(census.total());
        match page.into_iter().last() {
            Some(last) => after = Some(last.slot),
            None => return Ok(census),
        }
    }
}

/// Opens `key` with the ring; `None` when no member does. A member that
/// does not answer stops everything: the key might have been its.
fn open(ring: &RootKeyRing, key: &StoredWrappedKey) -> Result<Option<Opened>, VaultError> {
    let Some(context) = slot_context(&key.slot) else {
        tracing::warn!(slot = ?key.slot, "a stored key of a kind this mnvault does not know; left as it is");
        return Ok(None);
    };
    match ring.open(&key.wrapped, &context) {
        Ok(opened) => Ok(Some(opened)),
        Err(KeyError::UnwrapFailed) => {
            tracing::warn!(slot = ?key.slot, "a stored key opens with no configured root key");
            Ok(None)
        }
        Err(error) => Err(provider_failed(ring, error)),
    }
}

fn provider_failed(ring: &RootKeyRing, error: KeyError) -> VaultError {
    tracing::error!(%error, provider = %ring.describe(), "root key provider failed");
    match error {
        KeyError::ProviderUnreachable { .. } => VaultError::Unavailable(ROOT_KEY_UNAVAILABLE.into()),
        _ => VaultError::Internal,
    }
}

impl VaultCore {
    /// Re-wraps under `ring`'s primary every stored key it does not open
    /// yet, at most `limit` of them (all when `None`), as `by`; see the
    /// [module documentation](self). `progress` is told after every page.
    pub async fn rotate_root_key(
        &self,
        ring: &RootKeyRing,
        by: &Principal,
        limit: Option<u64>,
        mut progress: impl FnMut(&RootRotation),
    ) -> Result<RootRotation, VaultError> {
        let mut done = RootRotation::default();
        let walked = self.rewrap_pages(ring, limit, &mut done, &mut progress).await;
        let mut draft = AuditDraft::by(by, Operation::RotateRootKey, None);
        draft.record_count = done.rewrapped;
        if let Err(error) = &walked {
            draft.outcome = Outcome::Failed;
            draft.reason = error.public_message();
        }
        // Recorded even when the walk failed: what it re-wrapped is in the database.
        let recorded = self.record(draft).await;
        walked?;
        recorded?;
        Ok(done)
    }

    async fn rewrap_pages(
        &self,
        ring: &RootKeyRing,
        limit: Option<u64>,
        done: &mut RootRotation,
        progress: &mut impl FnMut(&RootRotation),
    ) -> Result<(), VaultError> {
        let primary = ring.primary();
        let mut after: Option<WrappedKeySlot> = None;
        loop {
            let page = self.store.begin_read().await?.wrapped_keys(after.as_ref(), ROOT_ROTATION_PAGE).await?;
            let Some(last) = page.last() else { return Ok(()) };
            after = Some(last.slot.clone());
            let mut replacements = Vec::new();
            for key in &page {
                if limit.is_some_and(|limit| done.rewrapped + replacements.len() as u64 >= limit) {
                    done.stopped = true;
                    break;
                }
                done.seen += 1;
                let Some(opened) = open(ring, key)? else {
                    done.unopened += 1;
                    continue;
                };
                if opened.member == 0 {
                    done.already += 1;
                    continue;
                }
                let context = slot_context(&key.slot).expect("opened, so its context is known");
                let new = primary.wrap(&opened.key, &context).map_err(|error| provider_failed(ring, error))?;
                let check = primary.unwrap(&new, &context).map_err(|error| provider_failed(ring, error))?;
                if check.expose_secret() != opened.key.expose_secret() {
                    tracing::error!(provider = %primary.describe(), "the primary root key does not unwrap what it wrapped");
                    return Err(VaultError::Internal);
                }
                replacements.push((key, new));
            }
            if !replacements.is_empty() {
                let mut tx = self.store.begin_write().await?;
                let mut swapped = 0;
                for (key, new) in &replacements {
                    if tx.replace_wrapped_key(&key.slot, &key.wrapped, new).await? {
                        swapped += 1;
                    }
                }
                tx.commit().await?;
                done.rewrapped += swapped;
                done.changed += replacements.len() as u64 - swapped;
            }
            progress(done);
            if done.stopped {
                return Ok(());
            }
        }
    }
}
