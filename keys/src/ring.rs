//! Several root keys at once, for a root key rotation: the primary wraps,
//! and the primary or any previous root key unwraps.
//!
//! A rotation puts the new root key as primary and the old one as previous
//! on every vault, then re-wraps each stored key under the primary. Until it
//! has finished (it may be interrupted and resumed), every stored key opens
//! with one of the two, so the vault serves throughout.

use std::fmt;
use std::sync::Arc;

use crate::{KeyError, KeyMaterial, RootKeyProvider, WrapContext, WrappedKey};

/// A primary root key provider and previous ones (see the
/// [module documentation](self)).
#[derive(Clone)]
pub struct RootKeyRing {
    /// The primary first, then the previous ones in the order configured.
    members: Vec<Arc<dyn RootKeyProvider>>,
}

/// A key unwrapped by a ring, and which member opened it.
pub struct Opened {
    /// 0 for the primary, 1 and up for the previous ones in order.
    pub member: usize,
    /// The key.
    pub key: KeyMaterial,
}

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opened").field("member", &self.member).finish_non_exhaustive()
    }
}

impl RootKeyRing {
    /// A ring that wraps with `primary` and also unwraps with `previous`.
    pub fn new(primary: Arc<dyn RootKeyProvider>, previous: Vec<Arc<dyn RootKeyProvider>>) -> Self {
        let mut members = Vec::with_capacity(1 + previous.len());
        members.push(primary);
        members.extend(previous);
        Self { members }
    }

    /// The provider that wraps.
    pub fn primary(&self) -> &Arc<dyn RootKeyProvider> {
        &self.members[0]
    }

    /// Every provider, the primary first.
    pub fn members(&self) -> &[Arc<dyn RootKeyProvider>] {
        &self.members
    }

    /// Unwraps with the first member that opens `wrapped`, the primary
    /// first. When none does: [`KeyError::ProviderUnreachable`] if a member
    /// that did not answer might have (so a caller retries rather than
    /// believing the key is bad), else the first other failure.
    pub fn open(&self, wrapped: &WrappedKey, context: &WrapContext<'_>) -> Result<Opened, KeyError> {
        let mut unreachable = None;
        let mut other = None;
        for (member, provider) in self.members.iter().enumerate() {
            match provider.unwrap(wrapped, context) {
                Ok(key) => return Ok(Opened { member, key }),
                Err(KeyError::UnwrapFailed) => {}
                Err(error @ KeyError::ProviderUnreachable { .. }) => {
                    unreachable.get_or_insert(error);
                }
                Err(error) => {
                    other.get_or_insert(error);
                }
            }
        }
        Err(unreachable.or(other).unwrap_or(KeyError::UnwrapFailed))
    }
}

impl RootKeyProvider for RootKeyRing {
    fn describe(&self) -> String {
        match &self.members[..] {
            [primary] => primary.describe(),
            [primary, previous @ ..] => {
                let previous: Vec<String> = previous.iter().map(|p| p.describe()).collect();
                format!("{} (previous: {})", primary.describe(), previous.join(", "))
            }
            [] => unreachable!("a ring always has its primary"),
        }
    }

    fn wrap(&self, key: &KeyMaterial, context: &WrapContext<'_>) -> Result<WrappedKey, KeyError> {
        self.primary().wrap(key, context)
    }

    fn unwrap(&self, wrapped: &WrappedKey, context: &WrapContext<'_>) -> Result<KeyMaterial, KeyError> {
        self.open(wrapped, context).map(|opened| opened.key)
    }

    /// Every member must answer: a previous root key still configured is
    /// one some stored keys may need until `mnvault root-key status` says
    /// none does (then it is taken out of the configuration).
    fn check(&self) -> Result<(), KeyError> {
        self.members.iter().try_for_each(|member| member.check())
    }
}

impl fmt::Debug for RootKeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootKeyRing").field("providers", &self.describe()).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::RootKeyFile;

    /// A key file whose device can be unplugged.
    struct Unpluggable {
        inner: RootKeyFile,
        unplugged: AtomicBool,
    }

    impl RootKeyProvider for Unpluggable {
        fn describe(&self) -> String {
            "unpluggable".into()
        }
        fn wrap(&self, key: &KeyMaterial, context: &WrapContext<'_>) -> Result<WrappedKey, KeyError> {
            self.check()?;
            self.inner.wrap(key, context)
        }
        fn unwrap(&self, wrapped: &WrappedKey, context: &WrapContext<'_>) -> Result<KeyMaterial, KeyError> {
            self.check()?;
            self.inner.unwrap(wrapped, context)
        }
        fn check(&self) -> Result<(), KeyError> {
            if self.unplugged.load(Ordering::SeqCst) {
                return Err(KeyError::ProviderUnreachable { provider: self.describe() });
            }
            Ok(())
        }
    }

    fn file(dir: &tempfile::TempDir, name: &str) -> Arc<RootKeyFile> {
        Arc::new(RootKeyFile::create(&dir.path().join(name)).unwrap())
    }

    #[test]
    fn wraps_with_the_primary_and_unwraps_with_whichever_opens() {
        let dir = tempfile::tempdir().unwrap();
        let (new, old, other) = (file(&dir, "new.key"), file(&dir, "old.key"), file(&dir, "other.key"));
        let ring = RootKeyRing::new(new.clone(), vec![old.clone()]);
        let ctx = WrapContext::TenantRecordKey { tenant: "acme", version: 2 };
        let key = KeyMaterial::generate();

        let under_old = old.wrap(&key, &ctx).unwrap();
        let opened = ring.open(&under_old, &ctx).unwrap();
        assert_eq!((opened.member, opened.key.expose_secret()), (1, key.expose_secret()));

        let under_ring = ring.wrap(&key, &ctx).unwrap();
        assert_eq!(new.unwrap(&under_ring, &ctx).unwrap().expose_secret(), key.expose_secret());
        assert!(matches!(old.unwrap(&under_ring, &ctx), Err(KeyError::UnwrapFailed)), "the primary wraps");
        assert_eq!(ring.open(&under_ring, &ctx).unwrap().member, 0);

        // A root key not in the ring, or another slot: refused as any unwrap is.
        let under_other = other.wrap(&key, &ctx).unwrap();
        assert!(matches!(ring.unwrap(&under_other, &ctx), Err(KeyError::UnwrapFailed)));
        let elsewhere = WrapContext::TenantRecordKey { tenant: "acme", version: 3 };
        assert!(matches!(ring.unwrap(&under_old, &elsewhere), Err(KeyError::UnwrapFailed)));
    }

    #[test]
    fn a_member_that_does_not_answer_is_named_unless_another_opens_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let device = Arc::new(Unpluggable {
            inner: RootKeyFile::create(&dir.path().join("hsm.key")).unwrap(),
            unplugged: AtomicBool::new(false),
        });
        let old = file(&dir, "old.key");
        let ring = RootKeyRing::new(device.clone(), vec![old.clone()]);
        let ctx = WrapContext::AuditChainKey;
        let key = KeyMaterial::generate();
        let under_device = ring.wrap(&key, &ctx).unwrap();
        let under_old = old.wrap(&key, &ctx).unwrap();
        assert!(ring.check().is_ok());

        device.unplugged.store(true, Ordering::SeqCst);
        assert!(matches!(ring.check(), Err(KeyError::ProviderUnreachable { .. })));
        assert_eq!(ring.open(&under_old, &ctx).unwrap().member, 1, "the previous key still opens its keys");
        assert!(matches!(ring.unwrap(&under_device, &ctx), Err(KeyError::ProviderUnreachable { .. })));
        assert!(matches!(ring.wrap(&key, &ctx), Err(KeyError::ProviderUnreachable { .. })));

        device.unplugged.store(false, Ordering::SeqCst);
        assert!(ring.check().is_ok());
        assert_eq!(ring.open(&under_device, &ctx).unwrap().member, 0);
    }

    #[test]
    fn describe_names_the_primary_then_the_previous_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (new, old) = (file(&dir, "new.key"), file(&dir, "old.key"));
        let alone = RootKeyRing::new(new.clone(), Vec::new());
        assert_eq!(alone.describe(), new.describe());
        let both = RootKeyRing::new(new.clone(), vec![old.clone()]);
        assert_eq!(both.describe(), format!("{} (previous: {})", new.describe(), old.describe()));
    }
}
