//! Properties of the crypto, over generated inputs: what is sealed or wrapped
//! comes back, and any change to the bytes or to where they belong (tenant,
//! token, key version, wrap slot) makes them refuse to open.

use std::sync::OnceLock;

use mnvault_keys::{
    sealed_key_version, AuditChainKey, KeyError, KeyMaterial, RootKeyFile, RootKeyProvider, TenantKeys, WrapContext,
    WrappedKey, KEY_LEN,
};
use proptest::prelude::*;

/// `format ‖ version ‖ nonce ‖ tag`: what a record adds to its plaintext.
const SEAL_OVERHEAD: usize = 1 + 4 + 12 + 16;

fn keyset(tenant: &str, index: [u8; KEY_LEN], records: &[(u32, [u8; KEY_LEN])]) -> TenantKeys {
    TenantKeys::new(
        tenant,
        &KeyMaterial::from_bytes(index),
        records.iter().map(|(version, key)| (*version, KeyMaterial::from_bytes(*key))),
    )
    .expect("keyset")
}

/// One root key file for the whole run: creating one per case would only
/// exercise the file system.
fn root() -> &'static RootKeyFile {
    static ROOT: OnceLock<(tempfile::TempDir, RootKeyFile)> = OnceLock::new();
    &ROOT
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let root = RootKeyFile::create(&dir.path().join("root.key")).expect("root key");
            (dir, root)
        })
        .1
}

fn tenant() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,20}"
}

/// Tokens of both formats and arbitrary text: the AAD takes any string.
fn token() -> impl Strategy<Value = String> {
    prop_oneof!["mnt_[a-z2-7]{26}", "[0-9]{12}", any::<String>()]
}

/// A keyset's distinct versions, ascending, with their key bytes.
fn versions() -> impl Strategy<Value = Vec<(u32, [u8; KEY_LEN])>> {
    proptest::collection::btree_map(1u32..=u32::MAX, any::<[u8; KEY_LEN]>(), 1..4)
        .prop_map(|versions| versions.into_iter().collect())
}

#[derive(Debug, Clone)]
enum Slot {
    Index(String),
    Record(String, u32),
    AuditChain,
}

impl Slot {
    fn context(&self) -> WrapContext<'_> {
        match self {
            Slot::Index(tenant) => WrapContext::TenantIndexKey { tenant },
            Slot::Record(tenant, version) => WrapContext::TenantRecordKey { tenant, version: *version },
            Slot::AuditChain => WrapContext::AuditChainKey,
        }
    }
}

fn slot() -> impl Strategy<Value = Slot> {
    prop_oneof![
        tenant().prop_map(Slot::Index),
        (tenant(), any::<u32>()).prop_map(|(tenant, version)| Slot::Record(tenant, version)),
        Just(Slot::AuditChain),
    ]
}

proptest! {
    #[test]
    fn seal_open_round_trip(
        tenant in tenant(),
        token in token(),
        plaintext in proptest::collection::vec(any::<u8>(), 0..256),
        index in any::<[u8; KEY_LEN]>(),
        versions in versions(),
        pick in any::<prop::sample::Index>(),
    ) {
        let keys = keyset(&tenant, index, &versions);
        let version = versions[pick.index(versions.len())].0;
        let sealed = keys.seal_with_version(version, &token, &plaintext).unwrap();
        prop_assert_eq!(sealed.len(), plaintext.len() + SEAL_OVERHEAD);
        prop_assert_eq!(sealed_key_version(&sealed).unwrap(), version);
        prop_assert_eq!(&keys.open(&token, &sealed).unwrap()[..], &plaintext[..]);
        // The primary version is the highest, and seal uses it.
        let primary = keys.seal(&token, &plaintext).unwrap();
        prop_assert_eq!(sealed_key_version(&primary).unwrap(), versions.last().unwrap().0);
        prop_assert_eq!(&keys.open(&token, &primary).unwrap()[..], &plaintext[..]);
        // Fresh nonces: sealing twice never gives the same bytes.
        prop_assert_ne!(keys.seal_with_version(version, &token, &plaintext).unwrap(), sealed);
    }

    #[test]
    fn a_changed_byte_never_opens(
        token in token(),
        plaintext in proptest::collection::vec(any::<u8>(), 0..64),
        at in any::<prop::sample::Index>(),
        mask in 1u8..,
    ) {
        let keys = keyset("acme", [1; KEY_LEN], &[(1, [2; KEY_LEN]), (2, [3; KEY_LEN])]);
        let sealed = keys.seal(&token, &plaintext).unwrap();
        let mut tampered = sealed.clone();
        let at = at.index(tampered.len());
        tampered[at] ^= mask;
        let result = keys.open(&token, &tampered);
        prop_assert!(result.is_err(), "byte {} changed and the record still opened", at);
        if at == 0 {
            prop_assert!(matches!(result, Err(KeyError::MalformedRecord)));
        }
    }

    #[test]
    fn a_cut_or_lengthened_record_never_opens(
        plaintext in proptest::collection::vec(any::<u8>(), 0..64),
        keep in any::<prop::sample::Index>(),
        extra in proptest::collection::vec(any::<u8>(), 1..32),
    ) {
        let keys = keyset("acme", [1; KEY_LEN], &[(1, [2; KEY_LEN])]);
        let sealed = keys.seal("mnt_aaaaaaaaaaaaaaaaaaaaaaaaaa", &plaintext).unwrap();
        let cut = &sealed[..keep.index(sealed.len())];
        prop_assert!(keys.open("mnt_aaaaaaaaaaaaaaaaaaaaaaaaaa", cut).is_err());
        let mut longer = sealed.clone();
        longer.extend_from_slice(&extra);
        prop_assert!(keys.open("mnt_aaaaaaaaaaaaaaaaaaaaaaaaaa", &longer).is_err());
    }

    /// The AAD binds tenant, token and version: the same bytes, opened for
    /// another tenant (same key material), another token or relabelled to
    /// another version (same key material), fail the integrity check.
    #[test]
    fn a_record_opens_only_where_it_was_sealed(
        tenant in tenant(),
        other_tenant in tenant(),
        token in token(),
        other_token in token(),
        plaintext in proptest::collection::vec(any::<u8>(), 0..64),
        material in any::<[u8; KEY_LEN]>(),
    ) {
        let same = [(1, material), (2, material)];
        let keys = keyset(&tenant, material, &same);
        let sealed = keys.seal_with_version(1, &token, &plaintext).unwrap();

        if other_tenant != tenant {
            let theirs = keyset(&other_tenant, material, &same);
            prop_assert!(matches!(theirs.open(&token, &sealed), Err(KeyError::IntegrityCheckFailed)));
        }
        if other_token != token {
            prop_assert!(matches!(keys.open(&other_token, &sealed), Err(KeyError::IntegrityCheckFailed)));
        }
        let mut relabelled = sealed.clone();
        relabelled[1..5].copy_from_slice(&2u32.to_be_bytes());
        prop_assert!(matches!(keys.open(&token, &relabelled), Err(KeyError::IntegrityCheckFailed)));
        relabelled[1..5].copy_from_slice(&3u32.to_be_bytes());
        prop_assert!(matches!(keys.open(&token, &relabelled), Err(KeyError::UnknownKeyVersion(3))));
        prop_assert_eq!(&keys.open(&token, &sealed).unwrap()[..], &plaintext[..]);
    }

    #[test]
    fn wrap_unwrap_round_trip(key in any::<[u8; KEY_LEN]>(), slot in slot()) {
        let root = root();
        let ctx = slot.context();
        let wrapped = root.wrap(&KeyMaterial::from_bytes(key), &ctx).unwrap();
        prop_assert!(!wrapped.as_bytes().windows(KEY_LEN).any(|w| w == key), "key in clear");
        let stored = WrappedKey::from_bytes(wrapped.as_bytes().to_vec());
        let unwrapped = root.unwrap(&stored, &ctx).unwrap();
        prop_assert_eq!(unwrapped.expose_secret(), &key);
    }

    #[test]
    fn a_wrapped_key_unwraps_only_in_its_slot_and_unchanged(
        key in any::<[u8; KEY_LEN]>(),
        slot in slot(),
        other in slot(),
        at in any::<prop::sample::Index>(),
        mask in 1u8..,
    ) {
        let root = root();
        let ctx = slot.context();
        let wrapped = root.wrap(&KeyMaterial::from_bytes(key), &ctx).unwrap();
        let other_ctx = other.context();
        if other_ctx != ctx {
            prop_assert_ne!(other_ctx.associated_data(), ctx.associated_data());
            prop_assert!(matches!(root.unwrap(&wrapped, &other_ctx), Err(KeyError::UnwrapFailed)));
        }
        let mut bytes = wrapped.as_bytes().to_vec();
        let at = at.index(bytes.len());
        bytes[at] ^= mask;
        prop_assert!(matches!(root.unwrap(&WrappedKey::from_bytes(bytes), &ctx), Err(KeyError::UnwrapFailed)));
    }

    #[test]
    fn blind_indexes_are_stable_per_tenant_and_differ_across_tenants(
        tenant in tenant(),
        other_tenant in tenant(),
        number in "[0-9]{12}",
        other_number in "[0-9]{12}",
        index in any::<[u8; KEY_LEN]>(),
    ) {
        let keys = keyset(&tenant, index, &[(1, [9; KEY_LEN])]);
        // A rotation adds a version; it must not move the index.
        let rotated = keyset(&tenant, index, &[(1, [9; KEY_LEN]), (2, [8; KEY_LEN])]);
        prop_assert_eq!(keys.blind_index(number.as_bytes()), rotated.blind_index(number.as_bytes()));
        if other_number != number {
            prop_assert_ne!(keys.blind_index(number.as_bytes()), keys.blind_index(other_number.as_bytes()));
        }
        if other_tenant != tenant {
            let theirs = keyset(&other_tenant, index, &[(1, [9; KEY_LEN])]);
            prop_assert_ne!(keys.blind_index(number.as_bytes()), theirs.blind_index(number.as_bytes()));
        }
    }

    #[test]
    fn an_audit_link_verifies_only_for_its_entry_and_predecessor(
        material in any::<[u8; KEY_LEN]>(),
        prev in any::<[u8; 32]>(),
        entry in proptest::collection::vec(any::<u8>(), 0..128),
        other_entry in proptest::collection::vec(any::<u8>(), 0..128),
        other_prev in any::<[u8; 32]>(),
    ) {
        let key = AuditChainKey::new(&KeyMaterial::from_bytes(material));
        let hash = key.link(&prev, &entry);
        prop_assert!(key.verify(&prev, &entry, &hash));
        if other_entry != entry {
            prop_assert!(!key.verify(&prev, &other_entry, &hash));
        }
        if other_prev != prev {
            prop_assert!(!key.verify(&other_prev, &entry, &hash));
        }
    }
}
