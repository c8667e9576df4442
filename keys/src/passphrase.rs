//! A root key sealed under a passphrase, for a single-box install where the
//! root key file should not be readable from a copy of the disk alone.
//!
//! The file is text, mode 0600:
//!
//! ```text
//! mnvault-sealed-root-key v1
//! kdf argon2id v=19 m=65536 t=3 p=4
//! salt <standard base64 of 16 random bytes>
//! sealed <standard base64 of nonce (12) ‖ encrypted root key (32) ‖ tag (16)>
//! ```
//!
//! Argon2id (RFC 9106) derives a key-encryption key from the passphrase, the
//! salt and the parameters of the `kdf` line; AES-256-GCM under it seals the
//! 32-byte root key, with the three header lines (newlines included) as
//! associated data, so a file whose parameters or salt were edited does not
//! open. Once opened, only the root key's wrapping subkey stays in memory, as
//! for [`crate::RootKeyFile`], and keys are wrapped in the same format.

use std::fmt;
use std::path::{Path, PathBuf};

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Nonce, Tag};
use data_encoding::BASE64;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::wrap::{read_private_file, write_new_private_file, SoftwareWrap};
use crate::{aes256gcm, random_nonce, KeyError, KeyMaterial, RootKeyProvider, WrapContext, WrappedKey};
use crate::{KEY_LEN, NONCE_LEN, TAG_LEN};

/// First line of a sealed root key file.
const HEADER: &str = "mnvault-sealed-root-key v1\n";
/// Length of the random salt.
const SALT_LEN: usize = 16;
/// A file longer than this is not a sealed root key file.
const FILE_MAX_LEN: usize = 512;
/// The longest passphrase accepted (bytes).
pub const MAX_PASSPHRASE_LEN: usize = 1024;

/// Argon2id cost parameters of a sealed root key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Params {
    /// Memory in KiB (`m`).
    pub memory_kib: u32,
    /// Passes over the memory (`t`).
    pub iterations: u32,
    /// Lanes (`p`).
    pub parallelism: u32,
}

impl Argon2Params {
    /// What [`PassphraseKeyFile::create`] uses: RFC 9106's second
    /// recommended option (64 MiB, 3 passes, 4 lanes).
    pub const RECOMMENDED: Self = Self { memory_kib: 64 * 1024, iterations: 3, parallelism: 4 };

    /// The cheapest accepted: OWASP's Argon2id floor (19 MiB, 2 passes).
    /// Cheaper files are refused, on creation and when opened.
    pub const MINIMUM: Self = Self { memory_kib: 19 * 1024, iterations: 2, parallelism: 1 };

    /// The most a file may ask for, so an edited file cannot make the vault
    /// allocate without bound (4 GiB, 16 passes, 16 lanes).
    const MAXIMUM: Self = Self { memory_kib: 4 * 1024 * 1024, iterations: 16, parallelism: 16 };

    fn in_range(&self) -> bool {
        let (min, max) = (Self::MINIMUM, Self::MAXIMUM);
        (min.memory_kib..=max.memory_kib).contains(&self.memory_kib)
            && (min.iterations..=max.iterations).contains(&self.iterations)
            && (min.parallelism..=max.parallelism).contains(&self.parallelism)
            // Argon2 needs 8 KiB per lane at least; the floor already covers it.
            && self.memory_kib >= 8 * self.parallelism
    }

    fn kdf_line(&self) -> String {
        format!("kdf argon2id v=19 m={} t={} p={}\n", self.memory_kib, self.iterations, self.parallelism)
    }

    fn parse_kdf_line(line: &str) -> Option<Self> {
        let rest = line.strip_prefix("kdf argon2id v=19 ")?;
        let mut fields = rest.split(' ');
        let mut number = |name: &str| -> Option<u32> {
            let value = fields.next()?.strip_prefix(name)?.strip_prefix('=')?;
            // Digits only: no sign, no leading zeros but "0" itself.
            if value.is_empty()
                || !value.bytes().all(|b| b.is_ascii_digit())
                || (value.len() > 1 && value.starts_with('0'))
            {
                return None;
            }
            value.parse().ok()
        };
        let params = Self { memory_kib: number("m")?, iterations: number("t")?, parallelism: number("p")? };
        fields.next().is_none().then_some(params)
    }
}

/// The root key in a file sealed under a passphrase (see the
/// [module documentation](self)). `Debug` shows the path only.
pub struct PassphraseKeyFile {
    path: PathBuf,
    wrapping: SoftwareWrap,
}

impl PassphraseKeyFile {
    /// Creates a new random root key sealed under `passphrase` with the
    /// [`Argon2Params::RECOMMENDED`] costs; mode 0600, never overwriting.
    pub fn create(path: &Path, passphrase: &SecretString) -> Result<Self, KeyError> {
        Self::create_with(path, passphrase, Argon2Params::RECOMMENDED)
    }

    /// [`PassphraseKeyFile::create`] with the given costs (at least
    /// [`Argon2Params::MINIMUM`]).
    pub fn create_with(path: &Path, passphrase: &SecretString, params: Argon2Params) -> Result<Self, KeyError> {
        check_passphrase(passphrase)?;
        if !params.in_range() {
            return Err(KeyError::SealedKeyFileMalformed {
                path: path.to_owned(),
                why: "its Argon2 parameters are outside the accepted range",
            });
        }
        // Fail before the slow derivation when the file is there already.
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(KeyError::KeyFileExists { path: path.to_owned() });
        }
        let root = KeyMaterial::generate();
        let mut salt = [0u8; SALT_LEN];
        {
            use rand::RngCore;
            rand::rngs::OsRng.fill_bytes(&mut salt);
        }
        let header = format!("{HEADER}{}salt {}\n", params.kdf_line(), BASE64.encode(&salt));
        let kek = derive_kek(passphrase, &salt, params, path)?;

        let nonce = random_nonce();
        let mut sealed = Zeroizing::new(Vec::with_capacity(NONCE_LEN + KEY_LEN + TAG_LEN));
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(root.expose_secret());
        let tag = aes256gcm(&kek)
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), header.as_bytes(), &mut sealed[NONCE_LEN..])
            .map_err(|_| KeyError::EncryptionFailed)?;
        sealed.extend_from_slice(&tag);

        let mut contents = Zeroizing::new(header.into_bytes());
        contents.extend_from_slice(b"sealed ");
        contents.extend_from_slice(BASE64.encode(&sealed).as_bytes());
        contents.push(b'\n');
        write_new_private_file(path, &contents)?;
        Ok(Self { path: path.to_owned(), wrapping: SoftwareWrap::new(&root) })
    }

    /// Opens a sealed root key file with `passphrase`. Refuses a file that
    /// grants group or others any permission ([`KeyError::KeyFilePermissions`]),
    /// one not in the format ([`KeyError::SealedKeyFileMalformed`]) and a
    /// passphrase that does not open it ([`KeyError::WrongPassphrase`]).
    pub fn open(path: &Path, passphrase: &SecretString) -> Result<Self, KeyError> {
        let malformed = |why| KeyError::SealedKeyFileMalformed { path: path.to_owned(), why };
        check_passphrase(passphrase)?;
        let contents = read_private_file(path, FILE_MAX_LEN)?.ok_or(malformed("it is not a regular file"))?;
        if contents.len() > FILE_MAX_LEN {
            return Err(malformed("it is too long"));
        }
        let text = std::str::from_utf8(&contents).map_err(|_| malformed("it is not text"))?;
        let text = text.strip_suffix('\n').unwrap_or(text);
        let lines: Vec<&str> = text.split('\n').collect();
        let [first, kdf, salt_line, sealed] = lines[..] else {
            return Err(malformed("it does not have the four lines of the format"));
        };
        if format!("{first}\n") != HEADER {
            return Err(malformed("its first line is not `mnvault-sealed-root-key v1`"));
        }
        let params = Argon2Params::parse_kdf_line(kdf).ok_or(malformed("its kdf line is not in the format"))?;
        if !params.in_range() {
            return Err(malformed("its Argon2 parameters are outside the accepted range"));
        }
        let salt = salt_line
            .strip_prefix("salt ")
            .and_then(|b64| BASE64.decode(b64.as_bytes()).ok())
            .filter(|salt| salt.len() == SALT_LEN)
            .ok_or(malformed("its salt line is not 16 base64-encoded bytes"))?;
        let sealed = sealed
            .strip_prefix("sealed ")
            .and_then(|b64| BASE64.decode(b64.as_bytes()).ok())
            .map(Zeroizing::new)
            .filter(|sealed| sealed.len() == NONCE_LEN + KEY_LEN + TAG_LEN)
            .ok_or(malformed("its sealed line is not 60 base64-encoded bytes"))?;
        // The three header lines as they are in the file, newlines included.
        let header_len = first.len() + kdf.len() + salt_line.len() + 3;
        let header = &contents[..header_len];

        let kek = derive_kek(passphrase, &salt, params, path)?;
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (ciphertext, tag) = rest.split_at(KEY_LEN);
        let mut root = Zeroizing::new([0u8; KEY_LEN]);
        root.copy_from_slice(ciphertext);
        aes256gcm(&kek)
            .decrypt_in_place_detached(Nonce::from_slice(nonce), header, &mut root[..], Tag::from_slice(tag))
            .map_err(|_| KeyError::WrongPassphrase { path: path.to_owned() })?;
        let root = KeyMaterial::from_bytes(*root);
        Ok(Self { path: path.to_owned(), wrapping: SoftwareWrap::new(&root) })
    }

    /// The path of the sealed file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads a passphrase or PIN from a file: refused when group or others may
/// read it ([`KeyError::KeyFilePermissions`]), one line of UTF-8 at most
/// [`MAX_PASSPHRASE_LEN`] bytes; a final newline is not part of it.
pub fn read_secret_file(path: &Path) -> Result<SecretString, KeyError> {
    let unusable = |reason: &str| KeyError::SecretUnavailable {
        what: format!("the secret in {}", path.display()),
        reason: reason.to_owned(),
    };
    let contents =
        read_private_file(path, MAX_PASSPHRASE_LEN + 2)?.ok_or_else(|| unusable("it is not a regular file"))?;
    let text = std::str::from_utf8(&contents).map_err(|_| unusable("it is not UTF-8 text"))?;
    let text = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(text);
    if text.contains('\n') {
        return Err(unusable("it holds more than one line"));
    }
    if text.is_empty() {
        return Err(unusable("it is empty"));
    }
    if text.len() > MAX_PASSPHRASE_LEN {
        return Err(unusable("it is longer than 1024 bytes"));
    }
    Ok(SecretString::from(text.to_owned()))
}

fn check_passphrase(passphrase: &SecretString) -> Result<(), KeyError> {
    let len = passphrase.expose_secret().len();
    if len == 0 {
        return Err(KeyError::UnusablePassphrase("is empty"));
    }
    if len > MAX_PASSPHRASE_LEN {
        return Err(KeyError::UnusablePassphrase("is longer than 1024 bytes"));
    }
    Ok(())
}

/// Argon2id(passphrase, salt) into a buffer wiped on drop. The argon2
/// crate's `zeroize` feature wipes its working memory too.
fn derive_kek(
    passphrase: &SecretString,
    salt: &[u8],
    params: Argon2Params,
    path: &Path,
) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyError> {
    let out_of_range = || KeyError::SealedKeyFileMalformed {
        path: path.to_owned(),
        why: "its Argon2 parameters are outside the accepted range",
    };
    let argon2_params = argon2::Params::new(params.memory_kib, params.iterations, params.parallelism, Some(KEY_LEN))
        .map_err(|_| out_of_range())?;
    let argon2 = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, argon2_params);
    let mut kek = Zeroizing::new([0u8; KEY_LEN]);
    argon2.hash_password_into(passphrase.expose_secret().as_bytes(), salt, &mut kek[..]).map_err(|_| out_of_range())?;
    Ok(kek)
}

impl RootKeyProvider for PassphraseKeyFile {
    fn describe(&self) -> String {
        format!("passphrase-sealed key file {}", self.path.display())
    }

    fn wrap(&self, key: &KeyMaterial, context: &WrapContext<'_>) -> Result<WrappedKey, KeyError> {
        self.wrapping.wrap(key, context)
    }

    fn unwrap(&self, wrapped: &WrappedKey, context: &WrapContext<'_>) -> Result<KeyMaterial, KeyError> {
        self.wrapping.unwrap(wrapped, context)
    }
}

impl fmt::Debug for PassphraseKeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PassphraseKeyFile").field("path", &self.path).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn secret(text: &str) -> SecretString {
        SecretString::from(text.to_owned())
    }

    /// The cheapest accepted costs keep the tests quick.
    fn create(path: &Path, passphrase: &str) -> PassphraseKeyFile {
        PassphraseKeyFile::create_with(path, &secret(passphrase), Argon2Params::MINIMUM).unwrap()
    }

    #[test]
    fn the_right_passphrase_opens_the_same_root_key_and_a_wrong_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.sealed");
        let created = create(&path, "correct horse battery staple");
        let ctx = WrapContext::TenantIndexKey { tenant: "acme" };
        let key = KeyMaterial::generate();
        let wrapped = created.wrap(&key, &ctx).unwrap();

        let opened = PassphraseKeyFile::open(&path, &secret("correct horse battery staple")).unwrap();
        assert_eq!(opened.unwrap(&wrapped, &ctx).unwrap().expose_secret(), key.expose_secret());

        for wrong in ["correct horse battery stapl", "Correct horse battery staple", "x"] {
            let error = PassphraseKeyFile::open(&path, &secret(wrong)).unwrap_err();
            assert!(matches!(&error, KeyError::WrongPassphrase { path: p } if p == &path), "{error:?}");
        }
        assert!(matches!(PassphraseKeyFile::open(&path, &secret("")), Err(KeyError::UnusablePassphrase(_))));
    }

    #[test]
    fn the_file_is_0600_in_the_documented_format_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.sealed");
        create(&path, "pass");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[0], "mnvault-sealed-root-key v1");
        assert_eq!(lines[1], "kdf argon2id v=19 m=19456 t=2 p=1");
        assert_eq!(BASE64.decode(lines[2].strip_prefix("salt ").unwrap().as_bytes()).unwrap().len(), SALT_LEN);
        assert_eq!(BASE64.decode(lines[3].strip_prefix("sealed ").unwrap().as_bytes()).unwrap().len(), 60);

        let before = std::fs::read(&path).unwrap();
        let error = PassphraseKeyFile::create_with(&path, &secret("pass"), Argon2Params::MINIMUM).unwrap_err();
        assert!(matches!(error, KeyError::KeyFileExists { .. }), "{error:?}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn a_file_readable_by_group_or_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.sealed");
        create(&path, "pass");
        for mode in [0o640, 0o604, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let error = PassphraseKeyFile::open(&path, &secret("pass")).unwrap_err();
            assert!(matches!(error, KeyError::KeyFilePermissions { mode: m, .. } if m == mode), "{error:?}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        PassphraseKeyFile::open(&path, &secret("pass")).unwrap();
    }

    #[test]
    fn an_edited_header_or_seal_does_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.sealed");
        create(&path, "pass");
        let original = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<String> = original.lines().map(str::to_owned).collect();
        let rewrite = |lines: &[String]| {
            std::fs::remove_file(&path).unwrap();
            write_new_private_file(&path, format!("{}\n", lines.join("\n")).as_bytes()).unwrap();
        };

        // Costs lowered (still in range): another key-encryption key, so the seal fails.
        let mut cheaper = lines.clone();
        cheaper[1] = "kdf argon2id v=19 m=19456 t=3 p=1".into();
        rewrite(&cheaper);
        assert!(matches!(PassphraseKeyFile::open(&path, &secret("pass")), Err(KeyError::WrongPassphrase { .. })));

        // Another salt, or one bit of the seal flipped.
        let mut salted = lines.clone();
        salted[2] = format!("salt {}", BASE64.encode(&[7u8; SALT_LEN]));
        rewrite(&salted);
        assert!(matches!(PassphraseKeyFile::open(&path, &secret("pass")), Err(KeyError::WrongPassphrase { .. })));
        let mut sealed = BASE64.decode(lines[3].strip_prefix("sealed ").unwrap().as_bytes()).unwrap();
        for i in [0, NONCE_LEN, NONCE_LEN + KEY_LEN, sealed.len() - 1] {
            sealed[i] ^= 1;
            let mut flipped = lines.clone();
            flipped[3] = format!("sealed {}", BASE64.encode(&sealed));
            rewrite(&flipped);
            let error = PassphraseKeyFile::open(&path, &secret("pass")).unwrap_err();
            assert!(matches!(error, KeyError::WrongPassphrase { .. }), "byte {i}: {error:?}");
            sealed[i] ^= 1;
        }

        // Out of the format or out of range: named as malformed, before any derivation.
        let too_cheap = "kdf argon2id v=19 m=1024 t=1 p=1";
        let too_dear = "kdf argon2id v=19 m=4294967295 t=3 p=4";
        for (line, text) in [
            (0, "mnvault-sealed-root-key v2"),
            (1, too_cheap),
            (1, too_dear),
            (1, "kdf argon2i v=19 m=19456 t=2 p=1"),
            (1, "kdf argon2id v=19 m=019456 t=2 p=1"),
            (2, "salt AAAA"),
            (3, "sealed AAAA"),
        ] {
            let mut edited = lines.clone();
            edited[line] = text.into();
            rewrite(&edited);
            let error = PassphraseKeyFile::open(&path, &secret("pass")).unwrap_err();
            assert!(matches!(error, KeyError::SealedKeyFileMalformed { .. }), "{text}: {error:?}");
        }
        rewrite(&lines[..3]);
        assert!(matches!(
            PassphraseKeyFile::open(&path, &secret("pass")),
            Err(KeyError::SealedKeyFileMalformed { .. })
        ));

        rewrite(&lines);
        PassphraseKeyFile::open(&path, &secret("pass")).expect("the original opens again");
    }

    #[test]
    fn creation_refuses_costs_below_the_floor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.sealed");
        let cheap = Argon2Params { memory_kib: 1024, iterations: 1, parallelism: 1 };
        assert!(matches!(
            PassphraseKeyFile::create_with(&path, &secret("pass"), cheap),
            Err(KeyError::SealedKeyFileMalformed { .. })
        ));
        assert!(!path.exists());
    }

    #[test]
    fn keys_wrapped_by_a_sealed_file_look_like_a_key_files_and_debug_shows_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.sealed");
        let sealed = create(&path, "hunter2-passphrase");
        let wrapped = sealed.wrap(&KeyMaterial::generate(), &WrapContext::AuditChainKey).unwrap();
        assert_eq!(wrapped.as_bytes().len(), 61);
        assert_eq!(wrapped.as_bytes()[0], crate::FORMAT_V1);
        for text in [format!("{sealed:?}"), sealed.describe()] {
            assert!(text.contains(&path.display().to_string()), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
    }
}
