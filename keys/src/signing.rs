//! The vault signing key: Ed25519 signatures anyone can check offline with
//! the public key alone (deletion certificates; later signed audit
//! checkpoints).
//!
//! The key is a 32-byte seed stored wrapped by the root key
//! ([`crate::WrapContext::SigningKey`]), unwrapped into [`KeyMaterial`] and
//! turned into an `ed25519_dalek::SigningKey`, which wipes itself on drop
//! (its `zeroize` feature). Every signature is domain-separated: what is
//! signed is `domain label ‖ body` ([`SignatureDomain::label`]), so a
//! signature made for one kind of document never verifies as another. The
//! labels are prefix-free (a unit test checks it), which keeps the plain
//! concatenation unambiguous.

use std::fmt;

use ed25519_dalek::Signer as _;
use sha2::{Digest as _, Sha256};

use crate::KeyMaterial;

/// Length of an Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// What a signature is for. A new kind of signed document gets a new
/// variant and label; never reuse one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignatureDomain {
    /// A deletion certificate (廃棄証明書).
    DeletionCertificate,
    /// A signed head of the audit chain (a checkpoint).
    AuditCheckpoint,
    /// One signing key handing over to the next (signed by both).
    SigningKeySuccession,
}

impl SignatureDomain {
    /// Every domain (for the prefix-freedom test).
    pub const ALL: [SignatureDomain; 3] =
        [SignatureDomain::DeletionCertificate, SignatureDomain::AuditCheckpoint, SignatureDomain::SigningKeySuccession];

    /// The bytes put before the body: `mnvault/v1/<kind>`.
    pub fn label(self) -> &'static [u8] {
        match self {
            SignatureDomain::DeletionCertificate => b"mnvault/v1/deletion-certificate",
            SignatureDomain::AuditCheckpoint => b"mnvault/v1/audit-checkpoint",
            SignatureDomain::SigningKeySuccession => b"mnvault/v1/signing-key-succession",
        }
    }
}

/// The message actually signed: `label ‖ body`.
fn message(domain: SignatureDomain, body: &[u8]) -> Vec<u8> {
    [domain.label(), body].concat()
}

/// The vault's Ed25519 signing key. `Debug` shows only the key id.
pub struct VaultSigningKey {
    key: ed25519_dalek::SigningKey,
}

impl VaultSigningKey {
    /// The key whose seed is `material` (the unwrapped stored key).
    pub fn new(material: &KeyMaterial) -> Self {
        Self { key: ed25519_dalek::SigningKey::from_bytes(material.expose_secret()) }
    }

    /// The public key, to hand to whoever verifies.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.key.verifying_key().to_bytes())
    }

    /// Signs `body` for `domain`.
    pub fn sign(&self, domain: SignatureDomain, body: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.key.sign(&message(domain, body)).to_bytes()
    }
}

impl fmt::Debug for VaultSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VaultSigningKey({}, [redacted])", self.public_key().key_id())
    }
}

/// An Ed25519 public key of the vault. Its text form is
/// `ed25519:<standard base64 of the 32 bytes>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; PUBLIC_KEY_LEN]);

/// Prefix of a public key's text form.
const PUBLIC_KEY_PREFIX: &str = "ed25519:";

impl PublicKey {
    /// The key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; PUBLIC_KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Its bytes.
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.0
    }

    /// Parses the text form (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Option<Self> {
        let encoded = text.trim().strip_prefix(PUBLIC_KEY_PREFIX)?;
        let bytes = data_encoding::BASE64.decode(encoded.as_bytes()).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }

    /// A short name of the key: `ed25519:` and the first 8 bytes of SHA-256
    /// of its bytes, a letter a nibble (`a` = 0 … `p` = 15). Letters, not hex
    /// digits: after the prefix's `25519`, six hex digits in a row (one key
    /// in sixteen) would read as a number to the vault's own check
    /// (`mnvault_core::number::contains_number`) and be redacted from
    /// every message. Names the key, does not authenticate it.
    pub fn key_id(&self) -> String {
        let digest = Sha256::digest(self.0);
        let letters =
            digest[..8].iter().flat_map(|byte| [byte >> 4, byte & 0x0f]).map(|nibble| char::from(b'a' + nibble));
        format!("{PUBLIC_KEY_PREFIX}{}", letters.collect::<String>())
    }

    /// Whether `signature` is this key's signature of `body` for `domain`
    /// (strict verification: no malleable or small-order signatures).
    pub fn verify(&self, domain: SignatureDomain, body: &[u8], signature: &[u8]) -> bool {
        let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&self.0) else { return false };
        let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else { return false };
        key.verify_strict(&message(domain, body), &signature).is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_KEY_PREFIX}{}", data_encoding::BASE64.encode(&self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::assert_no_key_bytes;
    use crate::KEY_LEN;

    #[test]
    fn a_signature_verifies_only_for_its_domain_body_and_key() {
        let key = VaultSigningKey::new(&KeyMaterial::from_bytes([3; KEY_LEN]));
        let public = key.public_key();
        let signature = key.sign(SignatureDomain::DeletionCertificate, b"body");
        assert!(public.verify(SignatureDomain::DeletionCertificate, b"body", &signature));
        assert!(!public.verify(SignatureDomain::DeletionCertificate, b"bodY", &signature), "other body");
        let other = VaultSigningKey::new(&KeyMaterial::from_bytes([4; KEY_LEN])).public_key();
        assert!(!other.verify(SignatureDomain::DeletionCertificate, b"body", &signature), "other key");
        let mut bad = signature;
        bad[10] ^= 1;
        assert!(!public.verify(SignatureDomain::DeletionCertificate, b"body", &bad));
        assert!(!public.verify(SignatureDomain::DeletionCertificate, b"body", &signature[..63]), "short");
        // The domain is really part of what is signed.
        let raw = ed25519_dalek::SigningKey::from_bytes(&[3; KEY_LEN]).sign(b"body").to_bytes();
        assert!(!public.verify(SignatureDomain::DeletionCertificate, b"body", &raw));
    }

    #[test]
    fn the_same_seed_gives_the_same_key() {
        let a = VaultSigningKey::new(&KeyMaterial::from_bytes([5; KEY_LEN]));
        let b = VaultSigningKey::new(&KeyMaterial::from_bytes([5; KEY_LEN]));
        assert_eq!(a.public_key(), b.public_key());
        assert!(a.public_key().key_id().starts_with("ed25519:"));
        assert_eq!(a.public_key().key_id().len(), "ed25519:".len() + 16);
    }

    /// Review finding: a hex key id read as a number for one key in sixteen.
    #[test]
    fn a_key_id_is_letters_after_its_prefix() {
        for seed in 0..=255u8 {
            let id = VaultSigningKey::new(&KeyMaterial::from_bytes([seed; KEY_LEN])).public_key().key_id();
            let body = id.strip_prefix("ed25519:").unwrap();
            assert!(body.len() == 16 && body.bytes().all(|b| (b'a'..=b'p').contains(&b)), "{id}");
        }
    }

    #[test]
    fn the_public_key_text_round_trips() {
        let public = VaultSigningKey::new(&KeyMaterial::generate()).public_key();
        assert_eq!(PublicKey::parse(&format!("  {public}\n")), Some(public));
        assert_eq!(PublicKey::parse("ed25519:AAAA"), None);
        assert_eq!(PublicKey::parse(&public.to_string().replace("ed25519:", "")), None);
    }

    #[test]
    fn domain_labels_are_prefix_free() {
        for a in SignatureDomain::ALL {
            for b in SignatureDomain::ALL {
                if a != b {
                    assert!(!a.label().starts_with(b.label()), "{a:?} starts with {b:?}");
                }
            }
        }
    }

    #[test]
    fn debug_is_redacted() {
        let material = KeyMaterial::generate();
        let key = VaultSigningKey::new(&material);
        for debug in [format!("{key:?}"), format!("{key:#?}")] {
            assert!(debug.contains("redacted"), "{debug}");
            assert_no_key_bytes(&debug, material.expose_secret());
            assert_no_key_bytes(&debug, &key.key.to_keypair_bytes()[..32]);
        }
    }
}
