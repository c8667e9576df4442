//! Raw key material.

use std::fmt;

use secrecy::{ExposeSecret, SecretBox};
use zeroize::Zeroize;

/// Length in bytes of every key in the hierarchy (AES-256, HMAC-SHA-256 keys).
pub const KEY_LEN: usize = 32;

/// 32 bytes of secret key material.
///
/// Kept on the heap in a [`SecretBox`] so moving a `KeyMaterial` around does
/// not leave copies of the bytes on the stack, and zeroized on drop. Not
/// `Clone`: a copy of key bytes should be an explicit decision.
/// `Debug` prints `KeyMaterial([redacted])`.
pub struct KeyMaterial(SecretBox<[u8; KEY_LEN]>);

impl KeyMaterial {
    /// Fresh random key material from the operating system's CSPRNG.
    pub fn generate() -> Self {
        use rand::RngCore;
        Self(SecretBox::init_with_mut(|key: &mut [u8; KEY_LEN]| rand::rngs::OsRng.fill_bytes(key)))
    }

    /// Takes ownership of `bytes`; the by-value copy passed in is zeroized.
    /// The caller remains responsible for zeroizing its own copies.
    pub fn from_bytes(mut bytes: [u8; KEY_LEN]) -> Self {
        let material = Self(SecretBox::init_with_mut(|key: &mut [u8; KEY_LEN]| key.copy_from_slice(&bytes)));
        bytes.zeroize();
        material
    }

    /// The key bytes. Use only to feed them to a cipher, KDF or MAC.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        self.0.expose_secret()
    }
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyMaterial([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::assert_no_key_bytes;

    #[test]
    fn from_bytes_keeps_the_bytes() {
        let key = KeyMaterial::from_bytes([7; KEY_LEN]);
        assert_eq!(key.expose_secret(), &[7; KEY_LEN]);
    }

    #[test]
    fn generate_gives_distinct_keys() {
        let a = KeyMaterial::generate();
        let b = KeyMaterial::generate();
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_ne!(a.expose_secret(), &[0; KEY_LEN]);
    }

    #[test]
    fn debug_is_redacted() {
        let key = KeyMaterial::generate();
        let debug = format!("{key:?}");
        assert_eq!(debug, "KeyMaterial([redacted])");
        assert_no_key_bytes(&debug, key.expose_secret());
        assert_no_key_bytes(&format!("{key:#?}"), key.expose_secret());
    }
}
