//! Hashes and MAC of the tamper-evident audit chain.
//!
//! Since signed checkpoints, an entry's hash is public: SHA-256 over the
//! previous entry's hash and the digest of the entry's fields
//! ([`entry_hash`]), so anyone can walk the chain with no secret, and the
//! vault's Ed25519 signature over a head vouches for every entry before it.
//! The digest step lets an export leave out an entry's fields (a stub that
//! carries only its digest) and still link. Each entry also carries a MAC of
//! its hash under the chain key ([`AuditChainKey::mac`]), which only the vault
//! checks: a database writer cannot append an entry the vault will trust for
//! its own decisions, even after the last signed checkpoint. Entries written
//! before have the older form: the hash itself is an HMAC ([`AuditChainKey::link`]).

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use crate::{hkdf_derive, hmac_sha256, labels, KeyMaterial};

/// Hash that the first entry of the chain links to.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// SHA-256 of an entry's canonical encoding: what a stub of it carries.
#[must_use]
pub fn entry_digest(canonical: &[u8]) -> [u8; 32] {
    Sha256::digest(canonical).into()
}

/// The public hash of an entry: SHA-256([`labels::AUDIT_ENTRY`] ‖
/// `prev_hash` ‖ `digest`). Fixed-length inputs after a fixed label, so the
/// concatenation is unambiguous.
#[must_use]
pub fn entry_hash(prev_hash: &[u8; 32], digest: &[u8; 32]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(labels::AUDIT_ENTRY);
    hash.update(prev_hash);
    hash.update(digest);
    hash.finalize().into()
}

/// MAC key of the tamper-evident audit chain.
///
/// Derived with HKDF (info = [`labels::AUDIT_CHAIN`]) from a key that is
/// stored wrapped by the root key, so someone who can write the database
/// cannot recompute the chain after editing it. A plain hash chain would not
/// stop them. `Debug` is redacted.
pub struct AuditChainKey {
    /// Keyed once and cloned per link; neither it nor the clones are wiped on
    /// drop (see `TenantKeys` on why hmac state is not zeroized).
    mac: Hmac<Sha256>,
}

impl AuditChainKey {
    /// Derives the chain MAC key from the stored audit-chain key material.
    pub fn new(material: &KeyMaterial) -> Self {
        let key = hkdf_derive(material.expose_secret(), &[labels::AUDIT_CHAIN]);
        Self { mac: hmac_sha256(&key) }
    }

    /// HMAC-SHA-256(`prev_hash` ‖ `entry`). `entry` is the canonical encoding
    /// of the audit entry, built by the caller; `prev_hash` is fixed-length,
    /// so the concatenation is unambiguous.
    #[must_use]
    pub fn link(&self, prev_hash: &[u8; 32], entry: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(prev_hash);
        mac.update(entry);
        mac.finalize().into_bytes().into()
    }

    /// HMAC([`labels::AUDIT_MAC`] ‖ `hash`): the vault's own seal on an
    /// entry whose public hash is `hash`.
    #[must_use]
    pub fn mac(&self, hash: &[u8; 32]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(labels::AUDIT_MAC);
        mac.update(hash);
        mac.finalize().into_bytes().into()
    }

    /// Whether `mac == self.mac(hash)`, in constant time.
    #[must_use]
    pub fn verify_mac(&self, hash: &[u8; 32], mac: &[u8; 32]) -> bool {
        self.mac(hash).ct_eq(mac).into()
    }

    /// Whether `hash == link(prev_hash, entry)`, compared in constant time so
    /// a forger learns nothing from timing.
    #[must_use]
    pub fn verify(&self, prev_hash: &[u8; 32], entry: &[u8], hash: &[u8; 32]) -> bool {
        self.link(prev_hash, entry).ct_eq(hash).into()
    }
}

impl fmt::Debug for AuditChainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditChainKey([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::assert_no_key_bytes;
    use crate::KEY_LEN;

    fn key(byte: u8) -> AuditChainKey {
        AuditChainKey::new(&KeyMaterial::from_bytes([byte; KEY_LEN]))
    }

    #[test]
    fn link_is_deterministic_and_verifies() {
        let k = key(1);
        let h1 = k.link(&GENESIS_HASH, b"entry 1");
        assert_eq!(h1, k.link(&GENESIS_HASH, b"entry 1"));
        assert_eq!(h1, key(1).link(&GENESIS_HASH, b"entry 1"));
        assert!(k.verify(&GENESIS_HASH, b"entry 1", &h1));

        let h2 = k.link(&h1, b"entry 2");
        assert!(k.verify(&h1, b"entry 2", &h2));
        assert_ne!(h1, h2);
    }

    #[test]
    fn verify_fails_when_anything_changes() {
        let k = key(1);
        let h1 = k.link(&GENESIS_HASH, b"entry 1");
        let h2 = k.link(&h1, b"entry 2");

        assert!(!k.verify(&h1, b"entry 2 (edited)", &h2));
        assert!(!k.verify(&GENESIS_HASH, b"entry 2", &h2), "prev changed");
        let mut bad = h2;
        bad[31] ^= 1;
        assert!(!k.verify(&h1, b"entry 2", &bad));
        assert!(!key(2).verify(&h1, b"entry 2", &h2), "other key");
    }

    #[test]
    fn the_public_hash_needs_no_key_and_covers_both_inputs() {
        let digest = entry_digest(b"entry 1");
        let h1 = entry_hash(&GENESIS_HASH, &digest);
        assert_eq!(h1, entry_hash(&GENESIS_HASH, &entry_digest(b"entry 1")));
        assert_ne!(h1, entry_hash(&GENESIS_HASH, &entry_digest(b"entry 2")));
        assert_ne!(h1, entry_hash(&h1, &digest));
        // Labelled: not a plain hash of the concatenation.
        assert_ne!(h1, <[u8; 32]>::from(Sha256::digest([&GENESIS_HASH[..], &digest[..]].concat())));
    }

    #[test]
    fn a_mac_verifies_only_under_its_key_and_hash() {
        let hash = entry_hash(&GENESIS_HASH, &entry_digest(b"e"));
        let mac = key(1).mac(&hash);
        assert!(key(1).verify_mac(&hash, &mac));
        assert!(!key(2).verify_mac(&hash, &mac));
        assert!(!key(1).verify_mac(&entry_hash(&hash, &entry_digest(b"e")), &mac));
        // Not the same as a link over the same bytes.
        assert_ne!(mac, key(1).link(&GENESIS_HASH, &hash));
    }

    #[test]
    fn different_key_material_gives_different_links() {
        assert_ne!(key(1).link(&GENESIS_HASH, b"e"), key(2).link(&GENESIS_HASH, b"e"));
    }

    #[test]
    fn link_is_keyed_with_a_derived_subkey() {
        // Not HMAC under the stored key itself, and not an unkeyed hash.
        let mut direct = hmac_sha256(&[1; KEY_LEN]);
        direct.update(&GENESIS_HASH);
        direct.update(b"e");
        let direct: [u8; 32] = direct.finalize().into_bytes().into();
        assert_ne!(key(1).link(&GENESIS_HASH, b"e"), direct);
    }

    #[test]
    fn debug_is_redacted() {
        let material = KeyMaterial::generate();
        let k = AuditChainKey::new(&material);
        let subkey = hkdf_derive(material.expose_secret(), &[labels::AUDIT_CHAIN]);
        for debug in [format!("{k:?}"), format!("{k:#?}")] {
            assert!(debug.contains("redacted"), "{debug}");
            assert_no_key_bytes(&debug, material.expose_secret());
            assert_no_key_bytes(&debug, &subkey[..]);
        }
    }
}
