//! Per-tenant keysets: blind index and record sealing.

use std::collections::BTreeMap;
use std::fmt;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::{
    aes256gcm, hkdf_derive, hmac_sha256, labels, random_nonce, KeyError, KeyMaterial, FORMAT_V1, NONCE_LEN, TAG_LEN,
};

/// Length of the header of a sealed record: format byte, key version, nonce.
const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;
/// Shortest possible sealed record (empty plaintext).
const MIN_SEALED_LEN: usize = HEADER_LEN + TAG_LEN;

/// The blind index of a number in one tenant: HMAC-SHA-256 under the tenant's
/// blind-index key. Lets the vault find a number without decrypting anything.
///
/// `Debug` prints `BlindIndex(..)`: an index is not a key, but it is a stable
/// pseudonym of a My Number and has no business in logs.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlindIndex(pub [u8; 32]);

impl fmt::Debug for BlindIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlindIndex(..)")
    }
}

/// One tenant's keys.
///
/// A stable index key (never rotated: tokens and blind indexes must not depend
/// on a key version) and one or more record-key versions; the highest version
/// is primary and seals new records, older ones still open (Tink keyset
/// model). Only derived subkeys are held, never the stored key material.
///
/// `Debug` shows the tenant and versions, never key bytes.
pub struct TenantKeys {
    tenant: String,
    /// Keyed once and cloned per call. hmac 0.12 cannot zeroize its state, so
    /// this copy of the derived key's pads, and each per-call clone, is not
    /// wiped on drop; it is derived for this tenant and purpose only, which
    /// limits what a leak reveals.
    index_mac: Hmac<Sha256>,
    /// Built once per version. The AES round keys are zeroized on drop (the
    /// `aes` crate's `zeroize` feature); the GHASH key each one keeps is not
    /// (see "Secret hygiene" in the crate documentation).
    record_ciphers: BTreeMap<u32, Aes256Gcm>,
}

impl TenantKeys {
    /// Derives purpose subkeys with HKDF-SHA256.
    ///
    /// * blind-index key = HKDF(ikm = `index_key`, info = [`labels::BLIND_INDEX`] ‖ tenant)
    /// * record key of version v = HKDF(ikm = record key v, info = [`labels::RECORD_SEAL`] ‖ tenant ‖ v as u32 BE)
    ///
    /// Errors: [`KeyError::NoKeyVersions`] if `record_keys` is empty,
    /// [`KeyError::InvalidKeyVersion`] for version 0,
    /// [`KeyError::DuplicateKeyVersion`] if a version appears twice.
    pub fn new(
        tenant: &str,
        index_key: &KeyMaterial,
        record_keys: impl IntoIterator<Item = (u32, KeyMaterial)>,
    ) -> Result<Self, KeyError> {
        let mut record_ciphers = BTreeMap::new();
        for (version, material) in record_keys {
            if version == 0 {
                return Err(KeyError::InvalidKeyVersion(version));
            }
            if record_ciphers.contains_key(&version) {
                // Silently keeping one of two keys would make half the records unreadable.
                return Err(KeyError::DuplicateKeyVersion(version));
            }
            let key = hkdf_derive(
                material.expose_secret(),
                &[labels::RECORD_SEAL, tenant.as_bytes(), &version.to_be_bytes()],
            );
            record_ciphers.insert(version, aes256gcm(&key));
        }
        if record_ciphers.is_empty() {
            return Err(KeyError::NoKeyVersions);
        }

        let index_key = hkdf_derive(index_key.expose_secret(), &[labels::BLIND_INDEX, tenant.as_bytes()]);
        Ok(Self { tenant: tenant.to_owned(), index_mac: hmac_sha256(&index_key), record_ciphers })
    }

    /// The tenant these keys belong to.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The version that seals new records: the highest one.
    pub fn primary_version(&self) -> u32 {
        *self.record_ciphers.keys().next_back().expect("TenantKeys::new guarantees at least one version")
    }

    /// All record-key versions, ascending.
    pub fn versions(&self) -> Vec<u32> {
        self.record_ciphers.keys().copied().collect()
    }

    /// HMAC-SHA-256 of the normalised 12 ASCII digits under the tenant's
    /// blind-index key. Normalisation is the caller's job: different spellings
    /// of one number must reach this function as the same bytes.
    #[must_use]
    pub fn blind_index(&self, normalized_number: &[u8]) -> BlindIndex {
        let mut mac = self.index_mac.clone();
        mac.update(normalized_number);
        BlindIndex(mac.finalize().into_bytes().into())
    }

    /// Seals `plaintext` with AES-256-GCM under the primary version and a
    /// random 96-bit nonce.
    ///
    /// AAD = [`labels::RECORD_AAD`] ‖ u32-BE-length-prefixed tenant ‖
    /// u32-BE-length-prefixed token ‖ version as u32 BE — so a ciphertext copied
    /// onto another token, tenant or version fails to open.
    ///
    /// Output ("sealed record") = `0x01` format ‖ key version as u32 BE ‖
    /// 12-byte nonce ‖ ciphertext ‖ 16-byte tag.
    pub fn seal(&self, token: &str, plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.seal_with_version(self.primary_version(), token, plaintext)
    }

    /// Same as [`seal`](Self::seal) but with an explicit version (used by
    /// re-encryption after rotation). [`KeyError::UnknownKeyVersion`] if the
    /// keyset has no such version.
    pub fn seal_with_version(&self, version: u32, token: &str, plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        let cipher = self.record_ciphers.get(&version).ok_or(KeyError::UnknownKeyVersion(version))?;
        let aad = record_aad(&self.tenant, token, version).ok_or(KeyError::EncryptionFailed)?;
        let nonce = random_nonce();

        // Encrypt in place in a buffer sized up front: no reallocation can
        // leave a stray plaintext copy, and Zeroizing wipes it if encryption fails.
        let mut out = Zeroizing::new(Vec::with_capacity(MIN_SEALED_LEN + plaintext.len()));
        out.push(FORMAT_V1);
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, &mut out[HEADER_LEN..])
            .map_err(|_| KeyError::EncryptionFailed)?;
        out.extend_from_slice(&tag);
        Ok(std::mem::take(&mut *out))
    }

    /// Opens a sealed record with the key of the version recorded in it.
    ///
    /// Errors: [`KeyError::MalformedRecord`] (too short or wrong format byte),
    /// [`KeyError::UnknownKeyVersion`], [`KeyError::IntegrityCheckFailed`]
    /// (wrong tenant, token or version, or tampered bytes).
    pub fn open(&self, token: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let version = sealed_key_version(sealed)?;
        let cipher = self.record_ciphers.get(&version).ok_or(KeyError::UnknownKeyVersion(version))?;
        // A token too long for the AAD encoding cannot have been sealed.
        let aad = record_aad(&self.tenant, token, version).ok_or(KeyError::IntegrityCheckFailed)?;

        let nonce = &sealed[1 + 4..HEADER_LEN];
        let (ciphertext, tag) = sealed[HEADER_LEN..].split_at(sealed.len() - MIN_SEALED_LEN);
        let mut plaintext = Zeroizing::new(ciphertext.to_vec());
        cipher
            .decrypt_in_place_detached(Nonce::from_slice(nonce), &aad, &mut plaintext[..], Tag::from_slice(tag))
            .map_err(|_| KeyError::IntegrityCheckFailed)?;
        Ok(plaintext)
    }
}

impl fmt::Debug for TenantKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantKeys")
            .field("tenant", &self.tenant)
            .field("versions", &self.versions())
            .field("primary_version", &self.primary_version())
            .field("keys", &format_args!("[redacted]"))
            .finish()
    }
}

/// `RECORD_AAD ‖ len(tenant) ‖ tenant ‖ len(token) ‖ token ‖ version`, or
/// `None` if a field is too long for its u32 length prefix (which would make
/// the encoding ambiguous).
fn record_aad(tenant: &str, token: &str, version: u32) -> Option<Vec<u8>> {
    let mut aad = Vec::with_capacity(labels::RECORD_AAD.len() + 4 + tenant.len() + 4 + token.len() + 4);
    aad.extend_from_slice(labels::RECORD_AAD);
    for field in [tenant, token] {
        aad.extend_from_slice(&u32::try_from(field.len()).ok()?.to_be_bytes());
        aad.extend_from_slice(field.as_bytes());
    }
    aad.extend_from_slice(&version.to_be_bytes());
    Some(aad)
}

/// The key version recorded in a sealed record, without decrypting.
///
/// [`KeyError::MalformedRecord`] if the record is too short or not in a known
/// format. The version is not authenticated until the record is opened.
pub fn sealed_key_version(sealed: &[u8]) -> Result<u32, KeyError> {
    if sealed.len() < MIN_SEALED_LEN || sealed[0] != FORMAT_V1 {
        return Err(KeyError::MalformedRecord);
    }
    let version: [u8; 4] = sealed[1..5].try_into().expect("length checked above");
    Ok(u32::from_be_bytes(version))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::assert_no_key_bytes;
    use crate::KEY_LEN;

    const NUMBER: &[u8] = b"123456789018";

    fn keys(tenant: &str, index: u8, versions: &[u32]) -> TenantKeys {
        TenantKeys::new(
            tenant,
            &KeyMaterial::from_bytes([index; KEY_LEN]),
            versions.iter().map(|&v| (v, KeyMaterial::from_bytes([v as u8 + 100; KEY_LEN]))),
        )
        .unwrap()
    }

    #[test]
    fn seal_open_round_trip() {
        let tk = keys("acme", 1, &[1]);
        let sealed = tk.seal("tok-1", NUMBER).unwrap();
        assert_eq!(sealed.len(), MIN_SEALED_LEN + NUMBER.len());
        assert_eq!(sealed[0], FORMAT_V1);
        assert!(!sealed.windows(NUMBER.len()).any(|w| w == NUMBER), "plaintext in clear");
        assert_eq!(&tk.open("tok-1", &sealed).unwrap()[..], NUMBER);

        // Empty plaintext works too.
        let empty = tk.seal("tok-1", b"").unwrap();
        assert!(tk.open("tok-1", &empty).unwrap().is_empty());
    }

    #[test]
    fn seal_uses_fresh_nonces() {
        let tk = keys("acme", 1, &[1]);
        assert_ne!(tk.seal("t", NUMBER).unwrap(), tk.seal("t", NUMBER).unwrap());
    }

    #[test]
    fn open_with_another_token_fails() {
        let tk = keys("acme", 1, &[1]);
        let sealed = tk.seal("tok-1", NUMBER).unwrap();
        assert!(matches!(tk.open("tok-2", &sealed), Err(KeyError::IntegrityCheckFailed)));
        assert!(matches!(tk.open("", &sealed), Err(KeyError::IntegrityCheckFailed)));
    }

    #[test]
    fn open_by_another_tenant_with_the_same_key_material_fails() {
        let acme = keys("acme", 1, &[1]);
        let globex = keys("globex", 1, &[1]);
        let sealed = acme.seal("tok-1", NUMBER).unwrap();
        assert!(matches!(globex.open("tok-1", &sealed), Err(KeyError::IntegrityCheckFailed)));
    }

    #[test]
    fn aad_length_prefixes_prevent_tenant_token_shifting() {
        // "ab" + "c" and "a" + "bc" concatenate alike; the length prefixes must tell them apart.
        assert_ne!(record_aad("ab", "c", 1), record_aad("a", "bc", 1));
        assert_ne!(record_aad("ab", "", 1), record_aad("a", "b", 1));
        let aad = record_aad("acme", "tok", 7).unwrap();
        let mut expected = labels::RECORD_AAD.to_vec();
        expected.extend_from_slice(&[0, 0, 0, 4]);
        expected.extend_from_slice(b"acme");
        expected.extend_from_slice(&[0, 0, 0, 3]);
        expected.extend_from_slice(b"tok");
        expected.extend_from_slice(&[0, 0, 0, 7]);
        assert_eq!(aad, expected);
    }

    #[test]
    fn changed_version_field_fails() {
        let tk = keys("acme", 1, &[1, 2]);
        let sealed = tk.seal_with_version(1, "tok", NUMBER).unwrap();

        // Pointing at another existing version: that key and the AAD both differ.
        let mut to_v2 = sealed.clone();
        to_v2[1..5].copy_from_slice(&2u32.to_be_bytes());
        assert!(matches!(tk.open("tok", &to_v2), Err(KeyError::IntegrityCheckFailed)));

        // Pointing at a version the keyset lacks.
        let mut to_v9 = sealed.clone();
        to_v9[4] = 9;
        assert!(matches!(tk.open("tok", &to_v9), Err(KeyError::UnknownKeyVersion(9))));
    }

    #[test]
    fn record_sealed_under_v1_is_not_opened_by_a_keyset_whose_v2_key_is_the_same_material() {
        // The version is in both the key derivation and the AAD: re-labelling a
        // record as v2 fails even if v1 and v2 were (wrongly) the same stored key.
        let same = || KeyMaterial::from_bytes([5; KEY_LEN]);
        let tk = TenantKeys::new("acme", &same(), [(1, same()), (2, same())]).unwrap();
        let mut sealed = tk.seal_with_version(1, "tok", NUMBER).unwrap();
        sealed[1..5].copy_from_slice(&2u32.to_be_bytes());
        assert!(matches!(tk.open("tok", &sealed), Err(KeyError::IntegrityCheckFailed)));
    }

    #[test]
    fn flipped_byte_fails_integrity_check() {
        let tk = keys("acme", 1, &[1]);
        let sealed = tk.seal("tok", NUMBER).unwrap();
        // Every byte after the version field: nonce, ciphertext, tag.
        for i in 1 + 4..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x80;
            assert!(matches!(tk.open("tok", &bad), Err(KeyError::IntegrityCheckFailed)), "byte {i}");
        }
    }

    #[test]
    fn truncated_or_unknown_format_is_malformed() {
        let tk = keys("acme", 1, &[1]);
        let sealed = tk.seal("tok", NUMBER).unwrap();
        for len in [0, 1, 5, HEADER_LEN, MIN_SEALED_LEN - 1] {
            assert!(matches!(tk.open("tok", &sealed[..len]), Err(KeyError::MalformedRecord)), "len {len}");
            assert!(matches!(sealed_key_version(&sealed[..len]), Err(KeyError::MalformedRecord)));
        }
        // Cut into the tag but still long enough to parse: the tag check catches it.
        let short = &sealed[..sealed.len() - 1];
        assert!(matches!(tk.open("tok", short), Err(KeyError::IntegrityCheckFailed)));

        let mut other_format = sealed.clone();
        other_format[0] = 0x02;
        assert!(matches!(tk.open("tok", &other_format), Err(KeyError::MalformedRecord)));
    }

    #[test]
    fn rotation_keeps_old_records_and_blind_indexes() {
        let index = || KeyMaterial::from_bytes([1; KEY_LEN]);
        let v1 = || KeyMaterial::from_bytes([11; KEY_LEN]);
        let v2 = || KeyMaterial::from_bytes([22; KEY_LEN]);

        let before = TenantKeys::new("acme", &index(), [(1, v1())]).unwrap();
        assert_eq!(before.primary_version(), 1);
        let old_record = before.seal("tok", NUMBER).unwrap();
        assert_eq!(sealed_key_version(&old_record).unwrap(), 1);

        // Order of the input does not matter; the highest version is primary.
        let after = TenantKeys::new("acme", &index(), [(2, v2()), (1, v1())]).unwrap();
        assert_eq!(after.primary_version(), 2);
        assert_eq!(after.versions(), vec![1, 2]);
        assert_eq!(&after.open("tok", &old_record).unwrap()[..], NUMBER);

        let new_record = after.seal("tok", NUMBER).unwrap();
        assert_eq!(sealed_key_version(&new_record).unwrap(), 2);
        assert!(matches!(before.open("tok", &new_record), Err(KeyError::UnknownKeyVersion(2))));

        // Re-encryption path: explicit version.
        let re_v1 = after.seal_with_version(1, "tok", NUMBER).unwrap();
        assert_eq!(sealed_key_version(&re_v1).unwrap(), 1);
        assert_eq!(&before.open("tok", &re_v1).unwrap()[..], NUMBER);
        assert!(matches!(after.seal_with_version(3, "tok", NUMBER), Err(KeyError::UnknownKeyVersion(3))));

        assert_eq!(before.blind_index(NUMBER), after.blind_index(NUMBER));
    }

    #[test]
    fn blind_index_is_deterministic_per_tenant() {
        let acme = keys("acme", 1, &[1]);
        let acme_again = keys("acme", 1, &[7]);
        let globex = keys("globex", 1, &[1]);

        assert_eq!(acme.blind_index(NUMBER), acme.blind_index(NUMBER));
        assert_eq!(acme.blind_index(NUMBER), acme_again.blind_index(NUMBER));
        assert_ne!(acme.blind_index(NUMBER), acme.blind_index(b"123456789026"));
        assert_ne!(acme.blind_index(NUMBER), globex.blind_index(NUMBER));
        assert_ne!(acme.blind_index(NUMBER), keys("acme", 2, &[1]).blind_index(NUMBER));
    }

    #[test]
    fn blind_index_key_is_a_derived_subkey() {
        // Not a plain HMAC under the stored index key: that key is never used directly.
        let tk = keys("acme", 1, &[1]);
        let mut direct = hmac_sha256(&[1; KEY_LEN]);
        direct.update(NUMBER);
        assert_ne!(tk.blind_index(NUMBER).0, <[u8; 32]>::from(direct.finalize().into_bytes()));

        let derived = hkdf_derive(&[1; KEY_LEN], &[labels::BLIND_INDEX, b"acme"]);
        let mut expected = hmac_sha256(&derived);
        expected.update(NUMBER);
        assert_eq!(tk.blind_index(NUMBER).0, <[u8; 32]>::from(expected.finalize().into_bytes()));
    }

    #[test]
    fn invalid_version_sets_are_rejected() {
        let index = KeyMaterial::from_bytes([1; KEY_LEN]);
        assert!(matches!(TenantKeys::new("acme", &index, std::iter::empty()), Err(KeyError::NoKeyVersions)));
        assert!(matches!(
            TenantKeys::new("acme", &index, [(0, KeyMaterial::generate())]),
            Err(KeyError::InvalidKeyVersion(0))
        ));
        assert!(matches!(
            TenantKeys::new("acme", &index, [(1, KeyMaterial::generate()), (1, KeyMaterial::generate())]),
            Err(KeyError::DuplicateKeyVersion(1))
        ));
    }

    #[test]
    fn debug_shows_no_key_bytes() {
        let index = KeyMaterial::generate();
        let record = KeyMaterial::generate();
        let record_bytes = *record.expose_secret();
        let tk = TenantKeys::new("acme", &index, [(3, record)]).unwrap();
        let index_subkey = hkdf_derive(index.expose_secret(), &[labels::BLIND_INDEX, b"acme"]);

        for debug in [format!("{tk:?}"), format!("{tk:#?}")] {
            assert_no_key_bytes(&debug, index.expose_secret());
            assert_no_key_bytes(&debug, &record_bytes);
            assert_no_key_bytes(&debug, &index_subkey[..]);
            assert!(debug.contains("redacted"), "{debug}");
            assert!(debug.contains("acme") && debug.contains('3'), "{debug}");
        }

        let bi = tk.blind_index(NUMBER);
        let debug = format!("{bi:?}");
        assert_eq!(debug, "BlindIndex(..)");
        assert_no_key_bytes(&debug, &bi.0);
    }
}
