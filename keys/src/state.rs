//! MAC of the vault's own state: what a database writer must not be able to
//! forge, edit or copy from one row to another.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::{hkdf_derive, hmac_sha256, labels, KeyMaterial};

/// Length of a state tag.
pub const STATE_TAG_LEN: usize = 32;

/// MAC key of the vault's state rows (a record's binding to its token and
/// blind index, a filing job's terms, approval, cancellation and release
/// counts).
///
/// Derived with HKDF (info = [`labels::STATE_TAG`]) from the same stored
/// system key as the [`crate::AuditChainKey`], which is wrapped by the root
/// key: someone who can write the database but does not hold the root key
/// cannot compute a tag. Each tag starts with a `kind` label and covers its
/// fields length-prefixed, so a tag made for one kind of object or one row
/// never verifies for another. `Debug` is redacted.
pub struct StateKey {
    /// Keyed once and cloned per tag; neither it nor the clones are wiped on
    /// drop (see `TenantKeys` on why hmac state is not zeroized).
    mac: Hmac<Sha256>,
}

impl StateKey {
    /// Derives the state MAC key from the stored system key material.
    pub fn new(material: &KeyMaterial) -> Self {
        let key = hkdf_derive(material.expose_secret(), &[labels::STATE_TAG]);
        Self { mac: hmac_sha256(&key) }
    }

    /// HMAC-SHA-256 over `kind` and each field, every one preceded by its
    /// length (u64 BE), so no two field lists encode the same.
    #[must_use]
    pub fn tag<'a>(&self, kind: &[u8], fields: impl IntoIterator<Item = &'a [u8]>) -> [u8; STATE_TAG_LEN] {
        let mut mac = self.mac.clone();
        mac.update(&(kind.len() as u64).to_be_bytes());
        mac.update(kind);
        for field in fields {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field);
        }
        mac.finalize().into_bytes().into()
    }

    /// Whether `tag` is the tag of `kind` and `fields`, compared in constant
    /// time. A tag of the wrong length never verifies.
    #[must_use]
    pub fn verify<'a>(&self, kind: &[u8], fields: impl IntoIterator<Item = &'a [u8]>, tag: &[u8]) -> bool {
        Self::matches(&self.tag(kind, fields), tag)
    }

    /// Whether a stored `tag` equals the `expected` one, in constant time; a
    /// tag of the wrong length never matches.
    #[must_use]
    pub fn matches(expected: &[u8; STATE_TAG_LEN], tag: &[u8]) -> bool {
        tag.len() == STATE_TAG_LEN && bool::from(expected.ct_eq(tag))
    }
}

impl fmt::Debug for StateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StateKey([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::assert_no_key_bytes;
    use crate::{AuditChainKey, GENESIS_HASH, KEY_LEN};

    fn key(byte: u8) -> StateKey {
        StateKey::new(&KeyMaterial::from_bytes([byte; KEY_LEN]))
    }

    #[test]
    fn a_tag_verifies_only_for_its_kind_fields_and_key() {
        let k = key(1);
        let fields: [&[u8]; 2] = [b"job_1", b"approved"];
        let tag = k.tag(b"job-state", fields);
        assert!(k.verify(b"job-state", fields, &tag));
        assert!(!k.verify(b"job-terms", fields, &tag), "other kind");
        assert!(!k.verify(b"job-state", [&b"job_2"[..], b"approved"], &tag), "other row");
        assert!(!key(2).verify(b"job-state", fields, &tag), "other key");
        assert!(!k.verify(b"job-state", fields, &tag[..31]), "short tag");
        let mut bad = tag;
        bad[0] ^= 1;
        assert!(!k.verify(b"job-state", fields, &bad));
    }

    #[test]
    fn field_boundaries_are_part_of_the_tag() {
        let k = key(1);
        assert_ne!(k.tag(b"k", [&b"ab"[..], b"c"]), k.tag(b"k", [&b"a"[..], b"bc"]));
        assert_ne!(k.tag(b"k", [&b""[..]]), k.tag(b"k", []));
    }

    #[test]
    fn the_state_key_is_not_the_audit_chain_key() {
        // Same stored material, different labels: a chain link is never a state tag.
        let material = KeyMaterial::from_bytes([7; KEY_LEN]);
        let link = AuditChainKey::new(&material).link(&GENESIS_HASH, b"e");
        assert_ne!(StateKey::new(&material).tag(b"", [&GENESIS_HASH[..], b"e"]), link);
    }

    #[test]
    fn debug_is_redacted() {
        let material = KeyMaterial::generate();
        let subkey = hkdf_derive(material.expose_secret(), &[labels::STATE_TAG]);
        let debug = format!("{:?}", StateKey::new(&material));
        assert!(debug.contains("redacted"), "{debug}");
        assert_no_key_bytes(&debug, material.expose_secret());
        assert_no_key_bytes(&debug, &subkey[..]);
    }
}
