//! The error type of this crate.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong with keys, wrapping and sealing.
///
/// Messages name files and key versions but never contain key bytes or
/// plaintext, so they are safe to log. Cryptographic failures deliberately say
/// nothing about *why* a check failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// [`RootKeyFile::create`](crate::RootKeyFile::create) found a file already at the path.
    #[error(
        "root key file {} already exists; refusing to overwrite it (replacing the root key makes every key wrapped by it unreadable — move the old file away first only if that is really intended)",
        .path.display()
    )]
    KeyFileExists {
        /// The path of the existing file.
        path: PathBuf,
    },

    /// Reading, writing or syncing the root key file failed.
    #[error(
        "cannot access root key file {}; check that the path is right and that the vault's user may read it",
        .path.display()
    )]
    KeyFileIo {
        /// The path of the root key file.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },

    /// The root key file grants some permission to group or others.
    #[error(
        "root key file {} is accessible by group or others (mode {mode:04o}); run `chmod 600 {}` and consider whether the key has leaked",
        .path.display(),
        .path.display()
    )]
    KeyFilePermissions {
        /// The path of the root key file.
        path: PathBuf,
        /// The permission bits found (`st_mode & 0o7777`).
        mode: u32,
    },

    /// The root key file is not in the root key file format.
    #[error(
        "root key file {} is not a mnvault root key (expected the line `mnvault-root-key v1` followed by a line with 32 base64-encoded bytes); check that the path points at the right file",
        .path.display()
    )]
    KeyFileMalformed {
        /// The path of the root key file.
        path: PathBuf,
    },

    /// A wrapped key did not unwrap: other root key, other slot, or modified bytes.
    #[error(
        "a stored key could not be unwrapped: it was wrapped by a different root key, was copied from another slot, or was modified; check that the vault uses the root key it was initialised with"
    )]
    UnwrapFailed,

    /// A tenant keyset was built without any record-key version.
    #[error("no record key versions were given for the tenant; at least one is needed to seal records")]
    NoKeyVersions,

    /// A record-key version is not valid (versions start at 1).
    #[error("record key version {0} is invalid; versions start at 1")]
    InvalidKeyVersion(u32),

    /// The same record-key version was given twice when building a keyset.
    #[error("record key version {0} was given more than once; each version must have exactly one key")]
    DuplicateKeyVersion(u32),

    /// A sealed record, or a requested seal, uses a version the keyset does not have.
    #[error(
        "key version {0} is not in this tenant's keyset; load every record key version still in use (an earlier rotation may not have finished)"
    )]
    UnknownKeyVersion(u32),

    /// A sealed record is too short or has an unknown format byte.
    #[error("sealed record is malformed (truncated or of an unknown format); it was not produced by this vault or was damaged in storage")]
    MalformedRecord,

    /// A sealed record failed authentication.
    #[error(
        "sealed record failed its integrity check: it was modified, or it belongs to another tenant, token or key version"
    )]
    IntegrityCheckFailed,

    /// AES-GCM refused to encrypt (input beyond its size limits).
    #[error("encryption failed: the input exceeds the size limits of AES-256-GCM")]
    EncryptionFailed,

    /// A passphrase-sealed root key file is not in its format, or names
    /// Argon2 parameters outside the accepted range.
    #[error(
        "sealed root key file {} is not a mnvault passphrase-sealed root key ({why}); check that the path points at the right file",
        .path.display()
    )]
    SealedKeyFileMalformed {
        /// The path of the file.
        path: PathBuf,
        /// What is wrong, in a fixed sentence.
        why: &'static str,
    },

    /// The passphrase does not open a sealed root key file (or the file was modified).
    #[error(
        "the passphrase does not open the sealed root key file {} (a wrong passphrase, or the file was modified); check root_key.passphrase_file or root_key.passphrase_credential",
        .path.display()
    )]
    WrongPassphrase {
        /// The path of the file.
        path: PathBuf,
    },

    /// A passphrase is unusable (empty, or longer than the vault reads).
    #[error("the root key passphrase {0}")]
    UnusablePassphrase(&'static str),

    /// A passphrase or PIN could not be had from where the configuration says.
    #[error("{what}: {reason}")]
    SecretUnavailable {
        /// Which secret and where from, e.g. "the root key passphrase (root_key.passphrase_file /etc/x)".
        what: String,
        /// Why, and what to do.
        reason: String,
    },

    /// The PKCS#11 provider is set up wrongly: module, token, PIN or key.
    #[error("the root key provider ({provider}): {reason}")]
    Pkcs11 {
        /// The provider, as [`RootKeyProvider::describe`](crate::RootKeyProvider::describe) names it.
        provider: String,
        /// What is wrong and what to do (never a PIN or key bytes).
        reason: String,
    },

    /// `create` found a key with the configured label already on the token.
    #[error(
        "the root key provider ({provider}) already holds a key with that label; refusing to create another (replacing the root key makes every key wrapped by it unreadable)"
    )]
    Pkcs11KeyExists {
        /// The provider.
        provider: String,
    },

    /// The root key provider (a device, a service) does not answer now.
    #[error("the root key provider ({provider}) does not answer; check that it is up and reachable from the vault")]
    ProviderUnreachable {
        /// The provider, as [`RootKeyProvider::describe`](crate::RootKeyProvider::describe) names it.
        provider: String,
    },

    /// A signing key on a PKCS#11 token (the CA key of `mnvault pki init
    /// --hsm`) cannot be made or used: module, token, PIN or key.
    #[error("the signing key ({key}): {reason}")]
    Pkcs11SigningKey {
        /// The key, token and module, as [`Pkcs11SigningKey::describe`](crate::Pkcs11SigningKey::describe) names them.
        key: String,
        /// What is wrong and what to do (never a PIN).
        reason: String,
    },

    /// The token holding a signing key does not answer.
    #[error("the signing key ({key}) does not answer; check that its token is plugged in, or reachable, and named by its label")]
    Pkcs11SigningKeyUnreachable {
        /// The key, token and module.
        key: String,
    },
}
