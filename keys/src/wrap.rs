//! Wrapping stored keys under a root key.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use data_encoding::BASE64;
use zeroize::Zeroizing;

use crate::{
    aes256gcm, hkdf_derive, labels, random_nonce, KeyError, KeyMaterial, FORMAT_V1, KEY_LEN, NONCE_LEN, TAG_LEN,
};

/// What a wrapped key is for.
///
/// Its encoding is the AAD of the wrap, so a wrapped key copied into another
/// slot (another tenant, another version, another kind of key) fails to unwrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WrapContext<'a> {
    /// The never-rotated index key of a tenant (blind indexes, tokens).
    TenantIndexKey {
        /// The tenant name.
        tenant: &'a str,
    },
    /// One version of a tenant's record-sealing key.
    TenantRecordKey {
        /// The tenant name.
        tenant: &'a str,
        /// The key version (1 and up).
        version: u32,
    },
    /// The vault-wide audit-chain key.
    AuditChainKey,
    /// The vault-wide Ed25519 signing key's seed (`crate::VaultSigningKey`).
    SigningKey,
}

impl WrapContext<'_> {
    const KIND_TENANT_INDEX_KEY: u8 = 1;
    const KIND_TENANT_RECORD_KEY: u8 = 2;
    const KIND_AUDIT_CHAIN_KEY: u8 = 3;
    /// Far from the others, so kinds added meanwhile in order do not meet it.
    const KIND_SIGNING_KEY: u8 = 0x10;

    /// The AAD of the wrap: `labels::WRAP ‖ kind byte ‖ fields`, where a
    /// string field is its u32 big-endian byte length followed by its bytes and
    /// a version is a u32 big-endian.
    pub fn associated_data(&self) -> Vec<u8> {
        let mut aad = Vec::with_capacity(labels::WRAP.len() + 1 + 4 + 64 + 4);
        aad.extend_from_slice(labels::WRAP);
        match *self {
            WrapContext::TenantIndexKey { tenant } => {
                aad.push(Self::KIND_TENANT_INDEX_KEY);
                push_str_field(&mut aad, tenant);
            }
            WrapContext::TenantRecordKey { tenant, version } => {
                aad.push(Self::KIND_TENANT_RECORD_KEY);
                push_str_field(&mut aad, tenant);
                aad.extend_from_slice(&version.to_be_bytes());
            }
            WrapContext::AuditChainKey => aad.push(Self::KIND_AUDIT_CHAIN_KEY),
            WrapContext::SigningKey => aad.push(Self::KIND_SIGNING_KEY),
        }
        aad
    }
}

/// Appends `u32 BE length ‖ bytes`. Each context has at most one variable-length
/// field followed only by fixed-width ones, so the encoding stays injective even
/// for the (absurd) names over 4 GiB whose length saturates.
fn push_str_field(buf: &mut Vec<u8>, field: &str) {
    let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(field.as_bytes());
}

/// Opaque bytes of a key wrapped by a [`RootKeyProvider`], as stored in the
/// database. `Debug` shows only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey(Vec<u8>);

impl WrappedKey {
    /// Takes bytes read back from storage. They are checked only when unwrapped.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The bytes to store.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WrappedKey({} bytes)", self.0.len())
    }
}

/// Where the root key lives.
///
/// A key file ([`RootKeyFile`]), a passphrase-sealed key file
/// ([`crate::PassphraseKeyFile`]) or an HSM over PKCS#11
/// ([`crate::Pkcs11RootKey`]), where the root key's bytes never enter the
/// vault's memory — so the trait only wraps and unwraps, it never hands out
/// the root key. [`crate::RootKeyRing`] puts several together for a root key
/// rotation.
pub trait RootKeyProvider: Send + Sync {
    /// For logs and errors, e.g. "key file /var/lib/mnvault/root.key"; never key bytes.
    fn describe(&self) -> String;

    /// Encrypts `key` under the root key, bound to `context`.
    fn wrap(&self, key: &KeyMaterial, context: &WrapContext<'_>) -> Result<WrappedKey, KeyError>;

    /// Decrypts a key wrapped under the same root key and `context`.
    ///
    /// Any failure — other root key, other context, modified or truncated
    /// bytes — is [`KeyError::UnwrapFailed`], without detail.
    fn unwrap(&self, wrapped: &WrappedKey, context: &WrapContext<'_>) -> Result<KeyMaterial, KeyError>;

    /// Whether the provider can wrap and unwrap now: the vault's health
    /// check calls it every `server.health_check_interval_ms` and reports
    /// NOT_SERVING while it fails ([`KeyError::ProviderUnreachable`]). It
    /// must return promptly, bounding any wait of its own. The default
    /// succeeds: a provider that holds its key in memory, as [`RootKeyFile`]
    /// does once loaded, cannot become unreachable. A provider that talks to
    /// a device (an HSM over PKCS#11) asks the device; a provider that wraps
    /// another must pass this on to it.
    fn check(&self) -> Result<(), KeyError> {
        Ok(())
    }
}

/// Length of a v1 wrapped key: format byte, nonce, encrypted key, tag.
const WRAPPED_LEN: usize = 1 + NONCE_LEN + KEY_LEN + TAG_LEN;

/// First line of a root key file.
const FILE_HEADER: &[u8] = b"mnvault-root-key v1\n";
/// Length of the standard base64 (with padding) of 32 bytes.
const FILE_B64_LEN: usize = 44;
/// Anything longer than a valid file plus some slack is not a root key file;
/// reading is capped so a wrong path (a log, a device) is not read whole.
const FILE_MAX_LEN: usize = 256;

/// Root key in a file outside the database.
///
/// Only the derived wrapping key is kept in memory, not the root key itself.
/// `Debug` shows the path only.
pub struct RootKeyFile {
    path: PathBuf,
    wrapping: SoftwareWrap,
}

/// A root key held in the vault's memory as its wrapping subkey only: what
/// a key file and a passphrase-sealed key file both load.
pub(crate) struct SoftwareWrap {
    /// AES-256-GCM under HKDF(root key, `labels::WRAP`). Its AES round keys
    /// are zeroized on drop (the `aes` crate's `zeroize` feature), its GHASH
    /// key is not (see "Secret hygiene" in the crate documentation).
    wrap_cipher: Aes256Gcm,
}

impl SoftwareWrap {
    pub(crate) fn new(root: &KeyMaterial) -> Self {
        let wrap_key = hkdf_derive(root.expose_secret(), &[labels::WRAP]);
        Self { wrap_cipher: aes256gcm(&wrap_key) }
    }

    pub(crate) fn wrap(&self, key: &KeyMaterial, context: &WrapContext<'_>) -> Result<WrappedKey, KeyError> {
        let nonce = random_nonce();
        let mut out = Zeroizing::new(Vec::with_capacity(WRAPPED_LEN));
        out.push(FORMAT_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(key.expose_secret());
        let tag = self
            .wrap_cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), &context.associated_data(), &mut out[1 + NONCE_LEN..])
            .map_err(|_| KeyError::EncryptionFailed)?;
        out.extend_from_slice(&tag);
        // Only ciphertext is left in the buffer now; take it out of Zeroizing.
        Ok(WrappedKey(std::mem::take(&mut *out)))
    }

    pub(crate) fn unwrap(&self, wrapped: &WrappedKey, context: &WrapContext<'_>) -> Result<KeyMaterial, KeyError> {
        let bytes = wrapped.as_bytes();
        if bytes.len() != WRAPPED_LEN || bytes[0] != FORMAT_V1 {
            return Err(KeyError::UnwrapFailed);
        }
        let (nonce, rest) = bytes[1..].split_at(NONCE_LEN);
        let (ciphertext, tag) = rest.split_at(KEY_LEN);
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        key.copy_from_slice(ciphertext);
        self.wrap_cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(nonce),
                &context.associated_data(),
                &mut key[..],
                Tag::from_slice(tag),
            )
            .map_err(|_| KeyError::UnwrapFailed)?;
        Ok(KeyMaterial::from_bytes(*key))
    }
}

impl RootKeyFile {
    /// Creates a new random root key file with mode 0600.
    ///
    /// Refuses to overwrite an existing file ([`KeyError::KeyFileExists`]).
    /// The file is created with mode 0600 before any byte is written, then
    /// synced together with its directory entry.
    pub fn create(path: &Path) -> Result<Self, KeyError> {
        let key = KeyMaterial::generate();
        let mut contents = Zeroizing::new(Vec::with_capacity(FILE_HEADER.len() + FILE_B64_LEN + 1));
        contents.extend_from_slice(FILE_HEADER);
        let mut b64 = Zeroizing::new([0u8; FILE_B64_LEN]);
        BASE64.encode_mut(key.expose_secret(), &mut b64[..]);
        contents.extend_from_slice(&b64[..]);
        contents.push(b'\n');
        write_new_private_file(path, &contents)?;
        Ok(Self::from_material(path, &key))
    }

    /// Opens an existing root key file.
    ///
    /// Refuses ([`KeyError::KeyFilePermissions`]) a file that grants group or
    /// others any permission bit, like ssh does with private keys, and
    /// ([`KeyError::KeyFileMalformed`]) one that is not in the format.
    pub fn open(path: &Path) -> Result<Self, KeyError> {
        let malformed = || KeyError::KeyFileMalformed { path: path.to_owned() };
        let contents = read_private_file(path, FILE_MAX_LEN)?.ok_or_else(malformed)?;
        let key = parse_key_file(&contents).ok_or_else(malformed)?;
        Ok(Self::from_material(path, &key))
    }

    /// The path of the key file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn from_material(path: &Path, root: &KeyMaterial) -> Self {
        Self { path: path.to_owned(), wrapping: SoftwareWrap::new(root) }
    }
}

/// Reads a file holding a secret: at most `max_len` bytes, into a buffer
/// wiped on drop. Refuses ([`KeyError::KeyFilePermissions`]) a file that
/// grants group or others any permission bit, like ssh does with private
/// keys. `None`: not a regular file.
pub(crate) fn read_private_file(path: &Path, max_len: usize) -> Result<Option<Zeroizing<Vec<u8>>>, KeyError> {
    let io_err = |source| KeyError::KeyFileIo { path: path.to_owned(), source };
    let file = File::open(path).map_err(io_err)?;
    // Check the opened handle, not the path, so the file cannot be swapped
    // between the check and the read.
    let metadata = file.metadata().map_err(io_err)?;
    if !metadata.is_file() {
        return Ok(None);
    }
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::KeyFilePermissions { path: path.to_owned(), mode });
    }
    // Capacity reserved up front so reading never reallocates and leaves
    // an unzeroized copy of the secret behind.
    let mut contents = Zeroizing::new(Vec::with_capacity(max_len + 1));
    file.take(max_len as u64 + 1).read_to_end(&mut contents).map_err(io_err)?;
    Ok(Some(contents))
}

/// Creates `path` with mode 0600 (refusing an existing file with
/// [`KeyError::KeyFileExists`]), writes `contents` and syncs the file and
/// its directory entry. A file left half-written is removed.
pub(crate) fn write_new_private_file(path: &Path, contents: &[u8]) -> Result<(), KeyError> {
    let io_err = |source| KeyError::KeyFileIo { path: path.to_owned(), source };
    let mut file =
        OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|source| {
            match source.kind() {
                io::ErrorKind::AlreadyExists => KeyError::KeyFileExists { path: path.to_owned() },
                _ => io_err(source),
            }
        })?;
    let written = file.write_all(contents).and_then(|()| file.sync_all()).and_then(|()| sync_parent_dir(path));
    if let Err(source) = written {
        // A half-written file would block the next `create` with
        // KeyFileExists and then fail `open`; remove it so a retry works.
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(io_err(source));
    }
    Ok(())
}

/// Parses `header ‖ base64 ‖ "\n"`. The final newline may be missing (some
/// editors strip it); nothing else is tolerated.
fn parse_key_file(contents: &[u8]) -> Option<KeyMaterial> {
    let rest = contents.strip_prefix(FILE_HEADER)?;
    let b64 = rest.strip_suffix(b"\n").unwrap_or(rest);
    if b64.len() != FILE_B64_LEN {
        return None;
    }
    // decode_mut writes into our zeroized buffer, unlike decode's fresh Vec.
    let mut decoded = Zeroizing::new([0u8; KEY_LEN + 1]);
    if BASE64.decode_len(b64.len()).ok()? != decoded.len() {
        return None;
    }
    let n = BASE64.decode_mut(b64, &mut decoded[..]).ok()?;
    if n != KEY_LEN {
        return None;
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    key.copy_from_slice(&decoded[..KEY_LEN]);
    Some(KeyMaterial::from_bytes(*key))
}

/// Makes the new directory entry durable, not just the file's contents.
fn sync_parent_dir(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

impl RootKeyProvider for RootKeyFile {
    fn describe(&self) -> String {
        format!("key file {}", self.path.display())
    }

    fn wrap(&self, key: &KeyMaterial, context: &WrapContext<'_>) -> Result<WrappedKey, KeyError> {
        self.wrapping.wrap(key, context)
    }

    fn unwrap(&self, wrapped: &WrappedKey, context: &WrapContext<'_>) -> Result<KeyMaterial, KeyError> {
        self.wrapping.unwrap(wrapped, context)
    }
}

impl fmt::Debug for RootKeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootKeyFile").field("path", &self.path).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::assert_no_key_bytes;

    fn new_root(dir: &tempfile::TempDir, name: &str) -> RootKeyFile {
        RootKeyFile::create(&dir.path().join(name)).expect("create root key file")
    }

    fn read_root_bytes(path: &Path) -> [u8; KEY_LEN] {
        let text = std::fs::read_to_string(path).unwrap();
        let line = text.lines().nth(1).unwrap();
        BASE64.decode(line.as_bytes()).unwrap().try_into().unwrap()
    }

    #[test]
    fn wrap_unwrap_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let root = new_root(&dir, "root.key");
        let key = KeyMaterial::generate();
        let ctx = WrapContext::TenantRecordKey { tenant: "acme", version: 3 };

        let wrapped = root.wrap(&key, &ctx).unwrap();
        assert_eq!(wrapped.as_bytes().len(), WRAPPED_LEN);
        assert_eq!(wrapped.as_bytes()[0], FORMAT_V1);
        // The wrapped bytes must not contain the key in clear.
        assert!(!wrapped.as_bytes().windows(KEY_LEN).any(|w| w == key.expose_secret()));

        let unwrapped = root.unwrap(&wrapped, &ctx).unwrap();
        assert_eq!(unwrapped.expose_secret(), key.expose_secret());

        // Survives a trip through storage.
        let stored = WrappedKey::from_bytes(wrapped.as_bytes().to_vec());
        assert_eq!(stored, wrapped);
        assert_eq!(root.unwrap(&stored, &ctx).unwrap().expose_secret(), key.expose_secret());
    }

    #[test]
    fn wrapping_twice_uses_fresh_nonces() {
        let dir = tempfile::tempdir().unwrap();
        let root = new_root(&dir, "root.key");
        let key = KeyMaterial::generate();
        let ctx = WrapContext::AuditChainKey;
        assert_ne!(root.wrap(&key, &ctx).unwrap(), root.wrap(&key, &ctx).unwrap());
    }

    #[test]
    fn unwrap_in_another_context_fails() {
        let dir = tempfile::tempdir().unwrap();
        let root = new_root(&dir, "root.key");
        let key = KeyMaterial::generate();
        let ctx = WrapContext::TenantRecordKey { tenant: "acme", version: 1 };
        let wrapped = root.wrap(&key, &ctx).unwrap();

        let others = [
            WrapContext::TenantRecordKey { tenant: "globex", version: 1 },
            WrapContext::TenantRecordKey { tenant: "acme", version: 2 },
            WrapContext::TenantIndexKey { tenant: "acme" },
            WrapContext::AuditChainKey,
        ];
        for other in others {
            assert!(
                matches!(root.unwrap(&wrapped, &other), Err(KeyError::UnwrapFailed)),
                "unwrap under {other:?} must fail"
            );
        }
        assert!(root.unwrap(&wrapped, &ctx).is_ok());
    }

    #[test]
    fn unwrap_with_another_root_key_fails() {
        let dir = tempfile::tempdir().unwrap();
        let root = new_root(&dir, "a.key");
        let other = new_root(&dir, "b.key");
        let ctx = WrapContext::TenantIndexKey { tenant: "acme" };
        let wrapped = root.wrap(&KeyMaterial::generate(), &ctx).unwrap();
        assert!(matches!(other.unwrap(&wrapped, &ctx), Err(KeyError::UnwrapFailed)));
    }

    #[test]
    fn unwrap_of_tampered_or_truncated_bytes_fails() {
        let dir = tempfile::tempdir().unwrap();
        let root = new_root(&dir, "root.key");
        let ctx = WrapContext::AuditChainKey;
        let wrapped = root.wrap(&KeyMaterial::generate(), &ctx).unwrap();

        for i in 0..WRAPPED_LEN {
            let mut bytes = wrapped.as_bytes().to_vec();
            bytes[i] ^= 0x01;
            let result = root.unwrap(&WrappedKey::from_bytes(bytes), &ctx);
            assert!(matches!(result, Err(KeyError::UnwrapFailed)), "flipped byte {i}");
        }
        let truncated = WrappedKey::from_bytes(wrapped.as_bytes()[..WRAPPED_LEN - 1].to_vec());
        assert!(matches!(root.unwrap(&truncated, &ctx), Err(KeyError::UnwrapFailed)));
        assert!(matches!(root.unwrap(&WrappedKey::from_bytes(vec![]), &ctx), Err(KeyError::UnwrapFailed)));
    }

    #[test]
    fn associated_data_distinguishes_contexts() {
        let contexts = [
            WrapContext::TenantIndexKey { tenant: "acme" },
            WrapContext::TenantIndexKey { tenant: "acme1" },
            WrapContext::TenantRecordKey { tenant: "acme", version: 1 },
            WrapContext::TenantRecordKey { tenant: "acme", version: 2 },
            WrapContext::TenantRecordKey { tenant: "globex", version: 1 },
            WrapContext::AuditChainKey,
        ];
        let aads: Vec<Vec<u8>> = contexts.iter().map(WrapContext::associated_data).collect();
        for (i, a) in aads.iter().enumerate() {
            assert!(a.starts_with(labels::WRAP));
            for b in &aads[i + 1..] {
                assert_ne!(a, b);
            }
        }
        let mut expected = labels::WRAP.to_vec();
        expected.push(2);
        expected.extend_from_slice(&4u32.to_be_bytes());
        expected.extend_from_slice(b"acme");
        expected.extend_from_slice(&7u32.to_be_bytes());
        assert_eq!(WrapContext::TenantRecordKey { tenant: "acme", version: 7 }.associated_data(), expected);
    }

    #[test]
    fn create_writes_mode_0600_and_the_documented_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.key");
        let root = RootKeyFile::create(&path).unwrap();
        assert_eq!(root.path(), path);

        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines.len(), 3, "two lines and a trailing newline: {}", lines.len());
        assert_eq!(lines[0], "mnvault-root-key v1");
        assert_eq!(BASE64.decode(lines[1].as_bytes()).unwrap().len(), KEY_LEN);
        assert_eq!(lines[2], "");
    }

    #[test]
    fn create_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.key");
        RootKeyFile::create(&path).unwrap();
        let before = std::fs::read(&path).unwrap();

        let err = RootKeyFile::create(&path).unwrap_err();
        assert!(matches!(&err, KeyError::KeyFileExists { path: p } if p == &path), "{err:?}");
        assert_eq!(std::fs::read(&path).unwrap(), before, "existing key must be untouched");
    }

    #[test]
    fn create_in_missing_directory_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("root.key");
        assert!(matches!(RootKeyFile::create(&path), Err(KeyError::KeyFileIo { .. })));
    }

    #[test]
    fn open_refuses_group_or_world_accessible_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.key");
        RootKeyFile::create(&path).unwrap();

        for mode in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = RootKeyFile::open(&path).unwrap_err();
            assert!(
                matches!(&err, KeyError::KeyFilePermissions { mode: m, .. } if *m == mode),
                "mode {mode:o}: {err:?}"
            );
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
        // Owner-only modes stricter than 0600 are fine.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        RootKeyFile::open(&path).unwrap();
    }

    #[test]
    fn open_refuses_malformed_files() {
        let dir = tempfile::tempdir().unwrap();
        let good_b64 = BASE64.encode(&[9u8; KEY_LEN]);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("garbage", b"this is not a key\n".to_vec()),
            ("empty", Vec::new()),
            ("no header", format!("{good_b64}\n").into_bytes()),
            ("wrong version", format!("mnvault-root-key v2\n{good_b64}\n").into_bytes()),
            ("short key", format!("mnvault-root-key v1\n{}\n", BASE64.encode(&[9u8; 31])).into_bytes()),
            ("long key", format!("mnvault-root-key v1\n{}\n", BASE64.encode(&[9u8; 33])).into_bytes()),
            ("bad base64", format!("mnvault-root-key v1\n{}!\n", &good_b64[..43]).into_bytes()),
            ("extra line", format!("mnvault-root-key v1\n{good_b64}\nmore\n").into_bytes()),
            ("huge", vec![b'a'; 10_000]),
        ];
        for (name, contents) in cases {
            let path = dir.path().join(name);
            let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).unwrap();
            file.write_all(&contents).unwrap();
            drop(file);
            let err = RootKeyFile::open(&path).unwrap_err();
            assert!(matches!(err, KeyError::KeyFileMalformed { .. }), "{name}: {err:?}");
        }

        // The documented format is accepted, also without the final newline.
        for (name, contents) in [
            ("good", format!("mnvault-root-key v1\n{good_b64}\n")),
            ("good-no-newline", format!("mnvault-root-key v1\n{good_b64}")),
        ] {
            let path = dir.path().join(name);
            let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).unwrap();
            file.write_all(contents.as_bytes()).unwrap();
            drop(file);
            RootKeyFile::open(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn open_of_missing_file_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = RootKeyFile::open(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(&err, KeyError::KeyFileIo { source, .. } if source.kind() == io::ErrorKind::NotFound));
    }

    #[test]
    fn open_of_a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(matches!(RootKeyFile::open(&sub), Err(KeyError::KeyFileMalformed { .. })));
    }

    #[test]
    fn reopened_file_unwraps_what_the_created_one_wrapped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.key");
        let created = RootKeyFile::create(&path).unwrap();
        let key = KeyMaterial::generate();
        let ctx = WrapContext::TenantIndexKey { tenant: "acme" };
        let wrapped = created.wrap(&key, &ctx).unwrap();
        drop(created);

        let opened = RootKeyFile::open(&path).unwrap();
        assert_eq!(opened.unwrap(&wrapped, &ctx).unwrap().expose_secret(), key.expose_secret());
        // And the other way round.
        let wrapped2 = opened.wrap(&key, &WrapContext::AuditChainKey).unwrap();
        let reopened = RootKeyFile::open(&path).unwrap();
        assert!(reopened.unwrap(&wrapped2, &WrapContext::AuditChainKey).is_ok());
    }

    #[test]
    fn debug_and_describe_show_no_key_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.key");
        let root = RootKeyFile::create(&path).unwrap();
        let root_bytes = read_root_bytes(&path);
        let wrap_key = hkdf_derive(&root_bytes, &[labels::WRAP]);

        for text in [format!("{root:?}"), format!("{root:#?}"), root.describe()] {
            assert_no_key_bytes(&text, &root_bytes);
            assert_no_key_bytes(&text, &wrap_key[..]);
            assert!(text.contains(&path.display().to_string()), "{text}");
        }

        let wrapped = root.wrap(&KeyMaterial::generate(), &WrapContext::AuditChainKey).unwrap();
        assert_eq!(format!("{wrapped:?}"), format!("WrappedKey({WRAPPED_LEN} bytes)"));
    }
}
