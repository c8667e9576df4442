//! Key hierarchy and record encryption of mnvault.
//!
//! This crate is pure, synchronous cryptography: no I/O except reading and
//! writing the root key file, no async runtime, no database. Everything the
//! vault stores encrypted or authenticated goes through it, so it can be
//! reviewed on its own.
//!
//! # Key hierarchy
//!
//! ```text
//! root key  (RootKeyProvider: a key file today, an HSM later)
//!  │  wraps, AES-256-GCM under HKDF(root, labels::WRAP),
//!  │  AAD = WrapContext::associated_data()
//!  ├── tenant index key         (one per tenant, never rotated)
//!  │     └── HKDF(info = labels::BLIND_INDEX ‖ tenant)      → blind-index HMAC key
//!  ├── tenant record key, v=1,2… (one per tenant and version)
//!  │     └── HKDF(info = labels::RECORD_SEAL ‖ tenant ‖ v)  → AES-256-GCM record key
//!  └── audit chain key          (one per vault, the "system key")
//!        ├── HKDF(info = labels::AUDIT_CHAIN)               → audit-chain HMAC key
//!        └── HKDF(info = labels::STATE_TAG)                 → state-tag HMAC key
//! ```
//!
//! The root key never leaves its [`RootKeyProvider`]: the trait only wraps
//! and unwraps, so a provider backed by an HSM can keep the root key in
//! hardware. All other keys are stored in the database as [`WrappedKey`]s and
//! are unwrapped into [`KeyMaterial`] when the vault starts.
//!
//! Stored keys are never used directly: each purpose gets its own subkey
//! derived with HKDF-SHA256 and a label from [`labels`], and tenant-specific
//! subkeys also bind the tenant name. A key used for one purpose or tenant
//! therefore never computes anything valid for another, even if the stored key
//! material were accidentally shared.
//!
//! # Binding ciphertexts to their place (AAD)
//!
//! * A wrapped key is bound to its slot by [`WrapContext::associated_data`]:
//!   a tenant's record key copied into another tenant's row, another version's
//!   row, or the index-key slot fails to unwrap ([`KeyError::UnwrapFailed`]).
//! * A sealed record is bound to its tenant, its token and its key version
//!   (see [`TenantKeys::seal`]): a ciphertext moved onto another token, tenant
//!   or version fails to open ([`KeyError::IntegrityCheckFailed`]). Someone who
//!   can write the database can delete records, but cannot swap them.
//!
//! * The vault's own state (a record's token, format and blind index, a filing
//!   job's terms, approval, cancellation and release counts) carries a
//!   [`StateKey`] tag over its fields and its identity: a database writer can
//!   neither edit such a row nor copy one row's state onto another.
//!
//! # Rotation
//!
//! [`TenantKeys`] follows the keyset model of Tink: any number of record-key
//! versions, the highest is primary and seals new records, all of them still
//! open old records. The version is recorded in clear in every sealed record
//! ([`sealed_key_version`]) so re-encryption can find records still sealed
//! under an old version. The index key is not versioned: tokens and blind
//! indexes must stay stable across rotations.
//!
//! # Formats
//!
//! All integers are big-endian. Each format starts with a format byte (`0x01`)
//! so it can evolve.
//!
//! * Root key file: text, `mnvault-root-key v1\n` followed by the standard
//!   base64 encoding (with padding) of the 32 key bytes and `\n`. Mode 0600.
//! * [`WrappedKey`]: `0x01 ‖ nonce (12) ‖ ciphertext (32) ‖ tag (16)`.
//! * Sealed record: `0x01 ‖ key version (u32) ‖ nonce (12) ‖ ciphertext ‖ tag (16)`.
//! * Audit chain: `hash_n = HMAC-SHA-256(key, hash_{n-1} ‖ entry_n)`, with
//!   `hash_0 =` [`GENESIS_HASH`].
//!
//! Nonces are 96 random bits from the operating system for every encryption.
//! The number of encryptions under one record key version must stay well
//! below 2³² (the random-nonce bound of AES-GCM); rotate before that.
//!
//! # Secret hygiene
//!
//! Wiped on drop: key bytes in [`KeyMaterial`] (a `secrecy::SecretBox`);
//! intermediate buffers holding keys or plaintext (HKDF output, the root key
//! file's contents, unwrapped keys, opened records), which are `Zeroizing`;
//! AES round keys, by the `aes` crate's `zeroize` feature; and each message's
//! GHASH state, by the `zeroize` features of `ghash` and `polyval`. These
//! three features are turned on in `Cargo.toml`: `aes-gcm`'s own `zeroize`
//! feature wipes only a temporary and does not forward to them.
//!
//! Not wiped, because the crates offer no way to:
//!
//! * the keyed HMAC-SHA-256 states (hmac 0.12, sha2 0.10) of the blind-index,
//!   audit-chain and state-tag keys, and their per-call clones: they hold the
//!   derived key XORed with the pads;
//! * the HKDF state of every derivation (hkdf 0.12 keeps the pseudorandom key
//!   in such an HMAC state);
//! * the GHASH key H = AES(K, 0) that each long-lived `Aes256Gcm` keeps
//!   (polyval 0.6's CPU-dispatching backend never drops its inner state);
//! * copies that moves leave on the stack.
//!
//! Each of these is a subkey derived for one purpose (and tenant): it
//! reveals neither the stored key nor the root key. No `Debug` implementation
//! and no [`KeyError`] message contains key bytes or plaintext.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod audit;
mod error;
mod material;
mod passphrase;
mod pkcs11;
mod pkcs11_signing;
mod ring;
mod signing;
mod state;
mod tenant;
mod wrap;

pub use audit::{entry_digest, entry_hash, AuditChainKey, GENESIS_HASH};
pub use error::KeyError;
pub use material::{KeyMaterial, KEY_LEN};
pub use passphrase::{read_secret_file, Argon2Params, PassphraseKeyFile, MAX_PASSPHRASE_LEN};
pub use pkcs11::{Pkcs11Config, Pkcs11RootKey};
pub use pkcs11_signing::Pkcs11SigningKey;
pub use ring::{Opened, RootKeyRing};
pub use signing::{PublicKey, SignatureDomain, VaultSigningKey, PUBLIC_KEY_LEN, SIGNATURE_LEN};
pub use state::{StateKey, STATE_TAG_LEN};
pub use tenant::{sealed_key_version, BlindIndex, TenantKeys};
pub use wrap::{RootKeyFile, RootKeyProvider, WrapContext, WrappedKey};

/// HKDF `info` labels and AAD labels.
///
/// Every derivation and every AAD starts with one of these, so no two purposes
/// can ever produce the same input. The `v1` is part of the label: a new
/// derivation scheme gets new labels rather than reusing these.
pub mod labels {
    /// HKDF info prefix of a tenant's blind-index HMAC key (followed by the tenant name).
    pub const BLIND_INDEX: &[u8] = b"mnvault/v1/blind-index";
    /// HKDF info prefix of a tenant's record-sealing key (followed by tenant name and version).
    pub const RECORD_SEAL: &[u8] = b"mnvault/v1/record-seal";
    /// HKDF info of the audit-chain HMAC key.
    pub const AUDIT_CHAIN: &[u8] = b"mnvault/v1/audit-chain";
    /// Prefix of what an audit entry's public hash covers (previous hash,
    /// then the digest of the entry's fields).
    pub const AUDIT_ENTRY: &[u8] = b"mnvault/v2/audit-entry";
    /// Prefix of what an audit entry's MAC covers (the entry's public hash).
    pub const AUDIT_MAC: &[u8] = b"mnvault/v2/audit-mac";
    /// HKDF info of the state-tag HMAC key (records' bindings, filing jobs).
    pub const STATE_TAG: &[u8] = b"mnvault/v1/state-tag";
    /// HKDF info of the key-wrapping subkey of a root key, and prefix of the wrap AAD.
    pub const WRAP: &[u8] = b"mnvault/v1/wrap";
    /// Prefix of the AAD of a sealed record.
    pub const RECORD_AAD: &[u8] = b"mnvault/v1/record-aad";
}

/// Length of an AES-GCM nonce.
const NONCE_LEN: usize = 12;
/// Length of an AES-GCM tag.
const TAG_LEN: usize = 16;
/// Format byte of the current wrapped-key and sealed-record formats.
const FORMAT_V1: u8 = 0x01;

/// Fresh random nonce. Random rather than counter-based because the vault may
/// run several processes against one database and has no shared counter.
fn random_nonce() -> [u8; NONCE_LEN] {
    use rand::RngCore;
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    nonce
}

/// HKDF-SHA256 without salt: the input keys are already uniformly random, so
/// the extract step needs no salt (RFC 5869, section 3.1). The output is
/// wiped on drop; the HKDF state (its pseudorandom key) is not, as hkdf 0.12
/// cannot.
fn hkdf_derive(ikm: &[u8; KEY_LEN], info: &[&[u8]]) -> zeroize::Zeroizing<[u8; KEY_LEN]> {
    let mut okm = zeroize::Zeroizing::new([0u8; KEY_LEN]);
    hkdf::Hkdf::<sha2::Sha256>::new(None, ikm)
        .expand_multi_info(info, &mut okm[..])
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    okm
}

/// Keyed HMAC-SHA-256 built from a derived key.
fn hmac_sha256(key: &[u8; KEY_LEN]) -> hmac::Hmac<sha2::Sha256> {
    use hmac::Mac;
    <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length")
}

/// AES-256-GCM instance for a derived key.
fn aes256gcm(key: &[u8; KEY_LEN]) -> aes_gcm::Aes256Gcm {
    use aes_gcm::KeyInit;
    aes_gcm::Aes256Gcm::new(aes_gcm::Key::<aes_gcm::Aes256Gcm>::from_slice(key))
}

#[cfg(test)]
mod test_util {
    /// Every rendering of key bytes a careless `Debug` might produce.
    pub(crate) fn renderings(bytes: &[u8]) -> Vec<String> {
        let hex_lower: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        vec![
            hex_lower.clone(),
            hex_lower.to_uppercase(),
            data_encoding::BASE64.encode(bytes),
            data_encoding::BASE64.encode(bytes).trim_end_matches('=').to_owned(),
            format!("{bytes:?}"),
            // A prefix catches partial dumps too.
            hex_lower[..16].to_owned(),
        ]
    }

    pub(crate) fn assert_no_key_bytes(debug: &str, bytes: &[u8]) {
        for r in renderings(bytes) {
            assert!(!debug.contains(&r), "Debug output {debug:?} leaks key bytes ({r})");
        }
    }
}
