//! The root key provider the configuration names (`[root_key]`, see
//! [`crate::config::RootKeySettings`]), built once here for `serve`, the
//! offline commands (`audit verify`, `backup`, `restore`, `root-key`) and
//! initialisation.
//!
//! The provider is always a [`RootKeyRing`]: `[root_key]` wraps and
//! unwraps, each `[[root_key.previous]]` only unwraps, during a root key
//! rotation. Secrets (a passphrase, a PIN) come from a file, a systemd
//! credential (`$CREDENTIALS_DIRECTORY/<name>`), or, for a passphrase only,
//! the terminal when standard input is one; never from the command line or
//! the configuration itself.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mnvault_keys::{
    read_secret_file, KeyError, PassphraseKeyFile, Pkcs11Config, Pkcs11RootKey, RootKeyFile, RootKeyProvider,
    RootKeyRing,
};
use secrecy::{ExposeSecret as _, SecretString};

use crate::config::{RootKeyProviderKind, RootKeySettings, Settings};

/// Who `mnvault root-key rotate`'s audit entry names.
pub const ROTATION_PRINCIPAL: &str = "mnvault-root-key";

/// The variable systemd sets to the directory of a service's credentials.
pub const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// The ring of every root key the settings name, each opened (an HSM
/// connected and logged in). A provider that does not answer is named in
/// the error ([`KeyError::ProviderUnreachable`]).
pub fn open_ring(settings: &Settings) -> Result<RootKeyRing, KeyError> {
    let primary = open_one(settings, &settings.root_key)?;
    let previous =
        settings.root_key.previous.iter().map(|entry| open_one(settings, entry)).collect::<Result<_, _>>()?;
    Ok(RootKeyRing::new(primary, previous))
}

/// [`open_ring`] as the provider the core uses.
pub fn open(settings: &Settings) -> Result<Arc<dyn RootKeyProvider>, KeyError> {
    Ok(Arc::new(open_ring(settings)?))
}

/// Creates the root key `[root_key]` names (a key file, a sealed key file,
/// or a key object in the HSM), refusing to replace one; the previous ones
/// are not touched. `mnvault init` and the first dev start use it too, with
/// a plain key file by default.
pub fn create(settings: &Settings) -> Result<Arc<dyn RootKeyProvider>, KeyError> {
    let entry = &settings.root_key;
    Ok(match entry.provider {
        RootKeyProviderKind::File => Arc::new(RootKeyFile::create(&settings.resolve(&entry.file))?),
        RootKeyProviderKind::Passphrase => {
            let path = settings.resolve(&entry.file);
            if std::fs::symlink_metadata(&path).is_ok() {
                return Err(KeyError::KeyFileExists { path });
            }
            let passphrase = passphrase(settings, entry, &path, Confirm::Twice)?;
            Arc::new(PassphraseKeyFile::create(&path, &passphrase)?)
        }
        RootKeyProviderKind::Pkcs11 => Arc::new(Pkcs11RootKey::create(pkcs11_config(settings, entry)?)?),
    })
}

/// The root key of a new data directory: [`create`].
pub fn create_initial(settings: &Settings) -> Result<Arc<dyn RootKeyProvider>, KeyError> {
    create(settings)
}

/// The configuration key a root key problem is reported under.
pub fn problem_key(settings: &Settings) -> &'static str {
    match (settings.root_key.provider, settings.root_key.previous.is_empty()) {
        (RootKeyProviderKind::File | RootKeyProviderKind::Passphrase, true) => "root_key.file",
        _ => "root_key",
    }
}

fn open_one(settings: &Settings, entry: &RootKeySettings) -> Result<Arc<dyn RootKeyProvider>, KeyError> {
    Ok(match entry.provider {
        RootKeyProviderKind::File => Arc::new(RootKeyFile::open(&settings.resolve(&entry.file))?),
        RootKeyProviderKind::Passphrase => {
            let path = settings.resolve(&entry.file);
            let passphrase = passphrase(settings, entry, &path, Confirm::Once)?;
            Arc::new(PassphraseKeyFile::open(&path, &passphrase)?)
        }
        RootKeyProviderKind::Pkcs11 => Arc::new(Pkcs11RootKey::open(pkcs11_config(settings, entry)?)?),
    })
}

/// Whether a passphrase typed on the terminal is asked for twice (a new one).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Confirm {
    Once,
    Twice,
}

fn passphrase(
    settings: &Settings,
    entry: &RootKeySettings,
    sealed: &Path,
    confirm: Confirm,
) -> Result<SecretString, KeyError> {
    if let Some(file) = &entry.passphrase_file {
        return read_secret_file(&settings.resolve(file));
    }
    if let Some(name) = &entry.passphrase_credential {
        return credential(name, "the root key passphrase (root_key.passphrase_credential)");
    }
    let what = format!("the passphrase of the sealed root key file {}", sealed.display());
    if !std::io::stdin().is_terminal() {
        return Err(KeyError::SecretUnavailable {
            what,
            reason: "no root_key.passphrase_file nor root_key.passphrase_credential is set, and standard input is \
                     not a terminal to ask on; set one of them"
                .into(),
        });
    }
    let ask = |prompt: &str| {
        rpassword::prompt_password(prompt).map(SecretString::from).map_err(|error| KeyError::SecretUnavailable {
            what: what.clone(),
            reason: format!("cannot read it from the terminal: {error}"),
        })
    };
    let typed = ask(&format!("Passphrase of the root key {}: ", sealed.display()))?;
    if confirm == Confirm::Twice {
        let again = ask("The same passphrase again: ")?;
        if again.expose_secret() != typed.expose_secret() {
            return Err(KeyError::SecretUnavailable {
                what,
                reason: "the two passphrases differ; nothing was created".into(),
            });
        }
    }
    Ok(typed)
}

/// A systemd credential's content.
fn credential(name: &str, what: &str) -> Result<SecretString, KeyError> {
    credential_in(std::env::var_os(CREDENTIALS_DIRECTORY), name, what)
}

/// `name`'s content in the credentials directory systemd gave, if it gave one.
fn credential_in(directory: Option<std::ffi::OsString>, name: &str, what: &str) -> Result<SecretString, KeyError> {
    let Some(directory) = directory else {
        return Err(KeyError::SecretUnavailable {
            what: what.to_owned(),
            reason: format!(
                "${CREDENTIALS_DIRECTORY} is not set: the vault is not running under systemd with \
                 LoadCredential=/LoadCredentialEncrypted= for \"{name}\""
            ),
        });
    };
    read_secret_file(&PathBuf::from(directory).join(name))
}

/// The token of `[root_key]` with its PIN, read as `serve` reads it, when
/// the provider is `"pkcs11"`; `None` for another provider. `mnvault pki
/// --hsm` keeps its CA key there, under the CA's own label.
pub fn pkcs11_token(settings: &Settings) -> Result<Option<Pkcs11Config>, KeyError> {
    match settings.root_key.provider {
        RootKeyProviderKind::Pkcs11 => pkcs11_config(settings, &settings.root_key).map(Some),
        RootKeyProviderKind::File | RootKeyProviderKind::Passphrase => Ok(None),
    }
}

fn pkcs11_config(settings: &Settings, entry: &RootKeySettings) -> Result<Pkcs11Config, KeyError> {
    // Validation ([`RootKeySettings::problems`]) has refused a missing one; say so again if not.
    let missing = |key: &str| KeyError::Pkcs11 {
        provider: "PKCS#11".into(),
        reason: format!("root_key.{key} is needed by provider \"pkcs11\""),
    };
    let pin = match (&entry.pin_file, &entry.pin_credential) {
        (Some(file), _) => read_secret_file(&settings.resolve(file))?,
        (None, Some(name)) => credential(name, "the token's user PIN (root_key.pin_credential)")?,
        (None, None) => return Err(missing("pin_file")),
    };
    Ok(Pkcs11Config {
        module: entry.module.clone().ok_or_else(|| missing("module"))?,
        token_label: entry.token_label.clone().ok_or_else(|| missing("token_label"))?,
        key_label: entry.key_label.clone().ok_or_else(|| missing("key_label"))?,
        pin,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;

    use super::*;

    #[test]
    fn a_credential_is_read_from_the_directory_systemd_gives_and_nowhere_else() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.path().join("mnvault-passphrase"))
            .unwrap();
        file.write_all(b"correct horse battery staple\n").unwrap();
        drop(file);

        let read = credential_in(Some(dir.path().into()), "mnvault-passphrase", "the passphrase").unwrap();
        assert_eq!(read.expose_secret(), "correct horse battery staple");

        // Not running under systemd with a credential: say so, naming it.
        let error = credential_in(None, "mnvault-passphrase", "the passphrase").unwrap_err().to_string();
        assert!(error.contains("CREDENTIALS_DIRECTORY") && error.contains("mnvault-passphrase"), "{error}");
        // A name systemd was not given is not found there.
        assert!(credential_in(Some(dir.path().into()), "other", "the passphrase").is_err());
    }
}
