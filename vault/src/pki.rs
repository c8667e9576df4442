//! `mnvault pki`: a CA for offices without a PKI of their own (`init`),
//! client certificates with SPIFFE identities signed by it (`issue`), and
//! the record of what it signed (`list`). A CA is a directory: `ca.pem`,
//! `ca.key` and `issued.tsv`; a dev vault's `dev-pki/` is one too (its key
//! unencrypted).
//!
//! A certificate names its caller twice: the subject Common Name is the
//! person's `<name>` (for people reading it), and the one URI SAN is the
//! SPIFFE ID the vault reads ([`crate::identity`]). It is short-lived
//! ([`DEFAULT_LIFETIME_DAYS`]); reissuing is cheaper than revoking.
//!
//! The trust domain is the CA's: its certificate carries
//! `spiffe://<trust-domain>` as a URI SAN, as the dev CA's does.
//!
//! The key `init` makes is encrypted PKCS#8 (PBES2: scrypt, AES-256-CBC)
//! under a passphrase from a file ([`mnvault_keys::read_secret_file`]: mode
//! 0600) or [`PASSPHRASE_VARIABLE`], never from the command line, where
//! other users can read it. `issue` asks for one only when the key is
//! encrypted.
//!
//! With `--hsm`, `init` makes the key pair on the PKCS#11 token of the
//! vault configuration's `[root_key]` instead (through
//! [`mnvault_keys::Pkcs11SigningKey`]: it cannot leave the token), labelled
//! `mnvault-ca-<serial>`, and writes [`CA_KEY_REF_FILE`] in place of
//! `ca.key`: which module, token and label, never the PIN, which `issue`
//! reads from the same configuration as the vault does. So the CA key has
//! the custody the root key has. A directory with both files, or neither, is
//! refused: which key signs is never a guess.
//!
//! Every certificate `issue` signs is appended to the CA's index,
//! [`ISSUED_INDEX_FILE`], before its files are written: `list` reads it.
//!
//! Files are written 0600 in a 0700 directory, never over an existing file.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use std::sync::Mutex;

use mnvault_core::identity::{Identity, TrustDomain, SPIFFE_PREFIX};
use mnvault_keys::{KeyError, Pkcs11Config, Pkcs11SigningKey};
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData, SanType, SerialNumber, SignatureAlgorithm, SigningKey,
};
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;
use zeroize::Zeroizing;

use crate::dev_pki::{self, PkiError, CA_CERT_FILE, CA_KEY_FILE};

/// How long an issued client certificate is valid by default.
pub const DEFAULT_LIFETIME_DAYS: i64 = 30;
/// The longest lifetime `issue` accepts.
pub const MAX_LIFETIME_DAYS: i64 = 397;
/// How far back a certificate's validity starts, for clocks a little slow.
const BACKDATE: Duration = Duration::minutes(5);
/// How long the CA `init` makes is valid by default: ten years.
pub const DEFAULT_CA_LIFETIME_DAYS: i64 = 3650;
/// The longest CA lifetime `init` accepts.
pub const MAX_CA_LIFETIME_DAYS: i64 = 7300;
/// The environment variable a CA key's passphrase may come from.
pub const PASSPHRASE_VARIABLE: &str = "MNVAULT_CA_PASSPHRASE";
/// The CA directory's index of what `issue` signed: one line per
/// certificate, `serial`, SPIFFE ID, not-before, not-after (RFC 3339),
/// separated by tabs.
pub const ISSUED_INDEX_FILE: &str = "issued.tsv";
const INDEX_HEADER: &str = "# serial\tspiffe_id\tnot_before\tnot_after\n";
/// The PEM label of an encrypted PKCS#8 key.
const ENCRYPTED_KEY_LABEL: &str = "ENCRYPTED PRIVATE KEY";
/// The file of a CA directory that names its key on a PKCS#11 token, in
/// place of `ca.key` ([`TokenKeyReference`]).
pub const CA_KEY_REF_FILE: &str = "ca-key.toml";
/// The label of a CA key on a token: this, then the CA's serial in hex.
pub const TOKEN_KEY_LABEL_PREFIX: &str = "mnvault-ca-";
/// The only provider [`CA_KEY_REF_FILE`] names today.
const PKCS11: &str = "pkcs11";
const KEY_REF_HEADER: &str = "# The key of this CA is on a PKCS#11 token and never leaves it. `mnvault pki issue`\n\
                              # logs in with the PIN of the vault configuration's [root_key] (pin_file or\n\
                              # pin_credential); no PIN is kept here.\n";

/// Where a CA's key is on a token: the content of [`CA_KEY_REF_FILE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenKeyReference {
    /// Always `"pkcs11"`.
    pub provider: String,
    /// The PKCS#11 library.
    pub module: PathBuf,
    /// The token's label.
    pub token_label: String,
    /// The key pair's label (`CKA_LABEL`), `mnvault-ca-<serial>`.
    pub key_label: String,
}

/// Which key a CA directory holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaKeyForm {
    /// `ca.key`, a PEM key (encrypted, or a dev PKI's in the clear).
    File,
    /// [`CA_KEY_REF_FILE`]: a key on a token.
    Token(TokenKeyReference),
}

/// A CA read from a directory.
pub struct CertificateAuthority {
    dir: PathBuf,
    cert_pem: String,
    key: CaKey,
    trust_domain: TrustDomain,
}

/// The CA's signing key, as rcgen signs with it.
enum CaKey {
    File(KeyPair),
    Token(TokenKey),
}

/// A key on a token, for rcgen. rcgen's remote-key error says nothing of
/// its cause, so the token's own error is kept for the caller to report.
struct TokenKey {
    key: Pkcs11SigningKey,
    failure: Mutex<Option<KeyError>>,
}

impl TokenKey {
    fn new(key: Pkcs11SigningKey) -> Self {
        Self { key, failure: Mutex::new(None) }
    }

    /// The error of a signature rcgen could not make: the token's, if it was the token.
    fn signing_failed(&self, what: String, source: rcgen::Error) -> PkiError {
        let failure = self.failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        failure.map_or(PkiError::Generate { what, source }, PkiError::Token)
    }
}

impl PublicKeyData for TokenKey {
    fn der_bytes(&self) -> &[u8] {
        self.key.public_key()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl SigningKey for TokenKey {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.key.sign(message).map_err(|error| {
            *self.failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(error);
            rcgen::Error::RemoteKeyError
        })
    }
}

impl CaKey {
    fn signing_failed(&self, what: String, source: rcgen::Error) -> PkiError {
        match self {
            Self::File(_) => PkiError::Generate { what, source },
            Self::Token(key) => key.signing_failed(what, source),
        }
    }
}

impl PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        match self {
            Self::File(key) => key.der_bytes(),
            Self::Token(key) => key.der_bytes(),
        }
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        match self {
            Self::File(key) => key.algorithm(),
            Self::Token(key) => key.algorithm(),
        }
    }
}

impl SigningKey for CaKey {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        match self {
            Self::File(key) => key.sign(message),
            Self::Token(key) => key.sign(message),
        }
    }
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("dir", &self.dir)
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

/// What `issue` wrote.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PKCS#8 PEM, 0600).
    pub key: PathBuf,
    /// The certificate's serial number, in hex.
    pub serial: String,
    /// When it stops being valid.
    pub not_after: OffsetDateTime,
}

/// What `init` made.
#[derive(Debug, Clone)]
pub struct NewCa {
    /// The CA certificate (PEM), to give the vault as `tls.client_ca`.
    pub cert: PathBuf,
    /// Its private key, encrypted (0600); or, with the key on a token, the
    /// file naming it ([`CA_KEY_REF_FILE`]).
    pub key: PathBuf,
    /// The certificate's serial number, in hex.
    pub serial: String,
    /// When it stops being valid.
    pub not_after: OffsetDateTime,
}

/// A certificate `issue` signed, as the CA's index records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedRecord {
    /// The SPIFFE ID in its URI SAN.
    pub spiffe_id: String,
    /// Its serial number, in hex as `issue` prints it.
    pub serial: String,
    /// When it starts being valid.
    pub not_before: OffsetDateTime,
    /// When it stops being valid.
    pub not_after: OffsetDateTime,
}

impl IssuedRecord {
    /// Whether it is past its not-after at `now`.
    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        now > self.not_after
    }
}

/// The passphrase of a CA key: the file's when one is given
/// (`--passphrase-file`, read with [`mnvault_keys::read_secret_file`]),
/// else the value of [`PASSPHRASE_VARIABLE`] in `environment`, else none.
/// An empty one is refused.
pub fn passphrase(file: Option<&Path>, environment: Option<String>) -> Result<Option<SecretString>, PkiError> {
    if let Some(file) = file {
        return Ok(Some(mnvault_keys::read_secret_file(file)?));
    }
    match environment.map(SecretString::from) {
        Some(secret) if secret.expose_secret().is_empty() => Err(PkiError::EmptyPassphrase),
        other => Ok(other),
    }
}

/// Creates a CA in `dir` (made 0700) for `trust_domain`, valid from a few
/// minutes ago for `lifetime`: `ca.pem`, whose URI SAN is
/// `spiffe://<trust-domain>`, `ca.key` encrypted under `passphrase`, and
/// an empty index. Nothing is written when any of them is there already.
pub fn init_ca(
    dir: &Path,
    trust_domain: &TrustDomain,
    lifetime: Duration,
    passphrase: &SecretString,
) -> Result<NewCa, PkiError> {
    if passphrase.expose_secret().is_empty() {
        return Err(PkiError::EmptyPassphrase);
    }
    let (serial, params) = new_ca_params(dir, trust_domain, lifetime)?;
    let generate = |source| PkiError::Generate { what: "CA certificate".into(), source };
    let key = KeyPair::generate().map_err(generate)?;
    let cert = params.self_signed(&key).map_err(generate)?;
    let sealed_key = encrypt_key(&key, passphrase)?;
    write_new_ca(dir, CA_KEY_FILE, &sealed_key, &cert.pem(), serial, params.not_after)
}

/// [`init_ca`] with the key pair made on the token `token` names (its
/// `key_label` is not used: the key's is `mnvault-ca-<serial>`), and
/// [`CA_KEY_REF_FILE`] naming it in place of `ca.key`.
pub fn init_ca_on_token(
    dir: &Path,
    trust_domain: &TrustDomain,
    lifetime: Duration,
    token: Pkcs11Config,
) -> Result<NewCa, PkiError> {
    let (serial, params) = new_ca_params(dir, trust_domain, lifetime)?;
    let reference = TokenKeyReference {
        provider: PKCS11.into(),
        module: token.module.clone(),
        token_label: token.token_label.clone(),
        key_label: format!("{TOKEN_KEY_LABEL_PREFIX}{}", hex::encode(serial)),
    };
    let text = toml::to_string(&reference)
        .map_err(|error| PkiError::KeyReference { path: dir.join(CA_KEY_REF_FILE), reason: error.to_string() })?;
    let config = Pkcs11Config { key_label: reference.key_label.clone(), ..token };
    let key = TokenKey::new(Pkcs11SigningKey::generate(config, &serial).map_err(PkiError::Token)?);
    let made = params.self_signed(&key).map_err(|source| key.signing_failed("CA certificate".into(), source)).and_then(
        |cert| {
            write_new_ca(
                dir,
                CA_KEY_REF_FILE,
                &format!("{KEY_REF_HEADER}{text}"),
                &cert.pem(),
                serial,
                params.not_after,
            )
        },
    );
    if made.is_err() {
        // No CA came of it: its key must not stay on the token, unreferenced.
        if let Err(error) = key.key.destroy() {
            tracing::warn!(key_label = %reference.key_label, %error, "could not destroy the key of a CA that was not made");
        }
    }
    made
}

/// A new CA's serial and certificate parameters, whichever its key: checked
/// first that `dir` holds no CA file and that `lifetime` is in range.
fn new_ca_params(
    dir: &Path,
    trust_domain: &TrustDomain,
    lifetime: Duration,
) -> Result<([u8; 16], CertificateParams), PkiError> {
    if lifetime < Duration::days(1) || lifetime > Duration::days(MAX_CA_LIFETIME_DAYS) {
        return Err(PkiError::CaLifetime { max_days: MAX_CA_LIFETIME_DAYS });
    }
    for name in [CA_CERT_FILE, CA_KEY_FILE, CA_KEY_REF_FILE, ISSUED_INDEX_FILE] {
        let path = dir.join(name);
        if fs::symlink_metadata(&path).is_ok() {
            return Err(PkiError::CaExists { path });
        }
    }
    let generate = |source| PkiError::Generate { what: "CA certificate".into(), source };
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, format!("mnvault CA {trust_domain}"));
    (params.not_before, params.not_after) = (now - BACKDATE, now + lifetime);
    // Signs client certificates only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let uri = format!("{SPIFFE_PREFIX}{trust_domain}");
    params.subject_alt_names = vec![SanType::URI(uri.try_into().map_err(generate)?)];
    let serial = random_serial();
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    Ok((serial, params))
}

/// Writes a new CA directory: its key file (`key_name`), certificate and
/// empty index.
fn write_new_ca(
    dir: &Path,
    key_name: &str,
    key_text: &str,
    cert_pem: &str,
    serial: [u8; 16],
    not_after: OffsetDateTime,
) -> Result<NewCa, PkiError> {
    let (cert_path, key_path, index_path) = (dir.join(CA_CERT_FILE), dir.join(key_name), dir.join(ISSUED_INDEX_FILE));
    dev_pki::prepare_dir(dir)?;
    dev_pki::write_new_file(&key_path, key_text, 0o600)?;
    dev_pki::write_new_file(&cert_path, cert_pem, 0o600)?;
    dev_pki::write_new_file(&index_path, INDEX_HEADER, 0o600)?;
    Ok(NewCa { cert: cert_path, key: key_path, serial: hex::encode(serial), not_after })
}

/// Which key the CA directory `dir` holds; refuses both and neither.
pub fn ca_key_form(dir: &Path) -> Result<CaKeyForm, PkiError> {
    let (file, reference) = (dir.join(CA_KEY_FILE), dir.join(CA_KEY_REF_FILE));
    match (fs::symlink_metadata(&file).is_ok(), fs::symlink_metadata(&reference).is_ok()) {
        (true, true) => Err(PkiError::TwoCaKeys { dir: dir.to_owned() }),
        (false, false) => Err(PkiError::NoCaKey { dir: dir.to_owned() }),
        (true, false) => Ok(CaKeyForm::File),
        (false, true) => {
            let text = fs::read_to_string(&reference).map_err(|source| PkiError::Io {
                action: "read",
                path: reference.clone(),
                source,
            })?;
            let broken = |reason: String| PkiError::KeyReference { path: reference.clone(), reason };
            let parsed: TokenKeyReference = toml::from_str(&text).map_err(|error| broken(error.to_string()))?;
            if parsed.provider != PKCS11 {
                return Err(broken(format!("provider is \"{}\"; only \"{PKCS11}\" is known", parsed.provider)));
            }
            Ok(CaKeyForm::Token(parsed))
        }
    }
}

/// `key` as encrypted PKCS#8 PEM under `passphrase` (scrypt at its
/// recommended cost, AES-256-CBC, random salt and IV).
fn encrypt_key(key: &KeyPair, passphrase: &SecretString) -> Result<Zeroizing<String>, PkiError> {
    let failed = |error: pkcs8::Error| PkiError::Encrypt { reason: error.to_string() };
    let der = Zeroizing::new(key.serialize_der());
    let info = pkcs8::PrivateKeyInfo::try_from(der.as_slice()).map_err(failed)?;
    let sealed = info.encrypt(rand::rngs::OsRng, passphrase.expose_secret().as_bytes()).map_err(failed)?;
    sealed.to_pem(ENCRYPTED_KEY_LABEL, pkcs8::LineEnding::LF).map_err(|error| failed(error.into()))
}

/// The key in the encrypted PKCS#8 PEM `pem` (the file `path`).
fn decrypt_key(path: &Path, pem: &str, passphrase: &SecretString) -> Result<KeyPair, PkiError> {
    let wrong = || PkiError::WrongPassphrase { path: path.to_owned() };
    let (_, document) = pkcs8::der::Document::from_pem(pem).map_err(|_| wrong())?;
    let info = pkcs8::EncryptedPrivateKeyInfo::try_from(document.as_bytes()).map_err(|_| wrong())?;
    let plain = info.decrypt(passphrase.expose_secret().as_bytes()).map_err(|_| wrong())?;
    // A wrong passphrase may still unpad; what it yields is no key.
    KeyPair::try_from(plain.as_bytes()).map_err(|_| wrong())
}

/// Every certificate `issue` has signed from the CA in `dir`, oldest first.
pub fn list_issued(dir: &Path) -> Result<Vec<IssuedRecord>, PkiError> {
    let path = dir.join(ISSUED_INDEX_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        // A CA that never issued (a dev PKI made before the index) has none.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let ca = dir.join(CA_CERT_FILE);
            fs::metadata(&ca).map_err(|source| PkiError::Io { action: "read", path: ca, source })?;
            return Ok(Vec::new());
        }
        Err(source) => return Err(PkiError::Io { action: "read", path, source }),
    };
    let mut records = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let broken = |reason| PkiError::Index { path: path.clone(), line: index + 1, reason };
        let fields: Vec<&str> = line.split('\t').collect();
        let [serial, spiffe_id, not_before, not_after] = fields[..] else {
            return Err(broken("expected 4 fields separated by tabs: serial, SPIFFE ID, not-before, not-after"));
        };
        if serial.is_empty() || hex::decode(serial).is_err() {
            return Err(broken("the serial is not hex"));
        }
        let identity = Identity::parse(spiffe_id).map_err(|_| broken("the SPIFFE ID does not parse"))?;
        let time = |text| OffsetDateTime::parse(text, &Rfc3339).map_err(|_| broken("a time is not RFC 3339"));
        records.push(IssuedRecord {
            spiffe_id: identity.to_string(),
            serial: serial.to_owned(),
            not_before: time(not_before)?,
            not_after: time(not_after)?,
        });
    }
    Ok(records)
}

impl CertificateAuthority {
    /// Reads `ca.pem` and an unencrypted `ca.key` (a dev PKI's) from `dir`;
    /// see [`CertificateAuthority::open_with`].
    pub fn open(dir: &Path) -> Result<Self, PkiError> {
        Self::open_with(dir, None)
    }

    /// Reads `ca.pem` and `ca.key` from `dir`, decrypting the key with
    /// `passphrase` when it is encrypted; the trust domain is the CA
    /// certificate's `spiffe://` URI SAN.
    /// A CA whose key is on a token ([`PkiError::TokenNeeded`]) is refused.
    pub fn open_with(dir: &Path, passphrase: Option<&SecretString>) -> Result<Self, PkiError> {
        if let CaKeyForm::Token(_) = ca_key_form(dir)? {
            return Err(PkiError::TokenNeeded { dir: dir.to_owned() });
        }
        let key_pem = Zeroizing::new(read_ca_file(dir, CA_KEY_FILE)?);
        let unusable = |reason: &'static str| PkiError::UnusableCa { path: dir.join(CA_CERT_FILE), reason };
        let key = if key_pem.contains(&format!("-----BEGIN {ENCRYPTED_KEY_LABEL}-----")) {
            let key_path = dir.join(CA_KEY_FILE);
            let passphrase = passphrase.ok_or_else(|| PkiError::PassphraseNeeded { path: key_path.clone() })?;
            decrypt_key(&key_path, &key_pem, passphrase)?
        } else {
            KeyPair::from_pem(&key_pem).map_err(|_| unusable("ca.key is not a PEM private key"))?
        };
        Self::with_key(dir, CaKey::File(key))
    }

    /// Reads `ca.pem` and [`CA_KEY_REF_FILE`] from `dir` and opens the key
    /// on its token, logged in with `token`'s PIN: `token` is the vault
    /// configuration's `[root_key]`, which must name the same token. The
    /// key must be `ca.pem`'s.
    pub fn open_on_token(dir: &Path, token: Pkcs11Config) -> Result<Self, PkiError> {
        let CaKeyForm::Token(reference) = ca_key_form(dir)? else {
            let reason = "ca.key is a key file: its CA is opened with a passphrase, not a token";
            return Err(PkiError::UnusableCa { path: dir.join(CA_KEY_FILE), reason });
        };
        if reference.token_label != token.token_label {
            return Err(PkiError::OtherToken { key_token: reference.token_label, configured: token.token_label });
        }
        let config = Pkcs11Config { module: reference.module, key_label: reference.key_label, ..token };
        let key = Pkcs11SigningKey::open(config).map_err(PkiError::Token)?;
        let ca = Self::with_key(dir, CaKey::Token(TokenKey::new(key)))?;
        if ca_public_key(&ca.cert_pem).as_deref() != Some(ca.key.der_bytes()) {
            let reason = "the key ca-key.toml names on the token is not the key of ca.pem";
            return Err(PkiError::UnusableCa { path: dir.join(CA_CERT_FILE), reason });
        }
        Ok(ca)
    }

    /// The CA of `dir` with `key`; its trust domain is its certificate's.
    fn with_key(dir: &Path, key: CaKey) -> Result<Self, PkiError> {
        let cert_pem = read_ca_file(dir, CA_CERT_FILE)?;
        let trust_domain = ca_trust_domain(&cert_pem).ok_or_else(|| PkiError::UnusableCa {
            path: dir.join(CA_CERT_FILE),
            reason: "the CA certificate carries no spiffe://<trust-domain> URI SAN, so it names no trust domain",
        })?;
        Ok(Self { dir: dir.to_owned(), cert_pem, key, trust_domain })
    }

    /// The trust domain it issues identities in.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Issues a client certificate for `identity`, valid from a few minutes
    /// ago for `lifetime`, into `out` as `<name>.crt` and `<name>.key` (and
    /// `ca.pem`, when `out` has none, so the directory is all a client needs).
    pub fn issue(&self, identity: &Identity, lifetime: Duration, out: &Path) -> Result<Issued, PkiError> {
        if lifetime <= Duration::ZERO || lifetime > Duration::days(MAX_LIFETIME_DAYS) {
            return Err(PkiError::Lifetime { max_days: MAX_LIFETIME_DAYS });
        }
        let now = OffsetDateTime::now_utc();
        self.issue_valid(identity, now - BACKDATE, now + lifetime, out)
    }

    /// [`CertificateAuthority::issue`] with the validity period given.
    pub fn issue_valid(
        &self,
        identity: &Identity,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        out: &Path,
    ) -> Result<Issued, PkiError> {
        if identity.trust_domain() != &self.trust_domain {
            return Err(PkiError::OtherTrustDomain { ca: self.trust_domain.to_string() });
        }
        let name = identity.name();
        let (cert_path, key_path) =
            (out.join(dev_pki::client_cert_file(name)), out.join(dev_pki::client_key_file(name)));
        for path in [&cert_path, &key_path] {
            if fs::symlink_metadata(path).is_ok() {
                return Err(PkiError::AlreadyExists { path: path.clone() });
            }
        }
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)
            .map_err(|source| PkiError::Generate { what: "CA issuer".into(), source })?;
        let generate = |source| PkiError::Generate { what: format!("certificate for {identity}"), source };
        let key = KeyPair::generate().map_err(generate)?;
        let mut params = dev_pki::client_params(name, Some(identity), not_before, not_after).map_err(generate)?;
        // The subject is the person's name only, without the dev PKI's marker.
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let serial = random_serial();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|source| self.key.signing_failed(format!("certificate for {identity}"), source))?;
        // Recorded before it is handed out, so that `list` shows everything signed.
        self.record(&hex::encode(serial), identity, not_before, not_after)?;
        fs::DirBuilder::new().recursive(true).create(out).map_err(|source| PkiError::Io {
            action: "create directory",
            path: out.to_owned(),
            source,
        })?;
        dev_pki::write_new_file(&cert_path, &cert.pem(), 0o600)?;
        dev_pki::write_new_file(&key_path, &Zeroizing::new(key.serialize_pem()), 0o600)?;
        let ca_copy = out.join(CA_CERT_FILE);
        if fs::symlink_metadata(&ca_copy).is_err() {
            dev_pki::write_new_file(&ca_copy, &self.cert_pem, 0o600)?;
        }
        Ok(Issued { cert: cert_path, key: key_path, serial: hex::encode(serial), not_after })
    }

    /// Appends a signed certificate to the index (made 0600 when missing).
    fn record(
        &self,
        serial: &str,
        identity: &Identity,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<(), PkiError> {
        let path = self.dir.join(ISSUED_INDEX_FILE);
        let io = |action, source| PkiError::Io { action, path: path.clone(), source };
        // Certificates hold whole seconds.
        let time = |at: OffsetDateTime| at.replace_nanosecond(0).ok().and_then(|at| at.format(&Rfc3339).ok());
        let (Some(not_before), Some(not_after)) = (time(not_before), time(not_after)) else {
            let invalid = std::io::Error::new(std::io::ErrorKind::InvalidInput, "a validity time is not RFC 3339");
            return Err(io("append to", invalid));
        };
        let line = format!("{serial}\t{identity}\t{not_before}\t{not_after}\n");
        let mut file =
            fs::OpenOptions::new().append(true).create(true).mode(0o600).open(&path).map_err(|e| io("open", e))?;
        file.write_all(line.as_bytes()).and_then(|()| file.sync_all()).map_err(|e| io("append to", e))
    }
}

/// 16 random bytes, the first with its top bit clear (a positive integer),
/// drawn again until their hex holds no run that reads as a number: the
/// serial is printed and pasted into tickets.
fn random_serial() -> [u8; 16] {
    loop {
        let mut serial = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut serial);
        serial[0] &= 0x7f;
        serial[0] |= 0x01;
        if !mnvault_core::number::contains_number(&hex::encode(serial)) {
            return serial;
        }
    }
}

/// The file `name` of the CA directory `dir`.
fn read_ca_file(dir: &Path, name: &str) -> Result<String, PkiError> {
    let path = dir.join(name);
    fs::read_to_string(&path).map_err(|source| PkiError::Io { action: "read", path, source })
}

/// The subjectPublicKey of a CA certificate (for an EC key, its point).
fn ca_public_key(pem: &str) -> Option<Vec<u8>> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(cert.public_key().subject_public_key.data.to_vec())
}

/// The trust domain of a CA certificate's `spiffe://<trust-domain>` URI SAN.
fn ca_trust_domain(pem: &str) -> Option<TrustDomain> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => TrustDomain::parse(uri.strip_prefix(SPIFFE_PREFIX)?).ok(),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev_pki::{create_dev_pki, DEV_TRUST_DOMAIN};
    use mnvault_core::authz::IdentitySource;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_dev_pki_issues_identities_of_its_trust_domain_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        create_dev_pki(&dir, &["payroll"]).unwrap();
        let ca = CertificateAuthority::open(&dir).unwrap();
        assert_eq!(ca.trust_domain().as_str(), DEV_TRUST_DOMAIN);

        let uri = format!("spiffe://{DEV_TRUST_DOMAIN}/tenant/acme/approver/alice");
        let identity = Identity::parse(&uri).unwrap();
        let out = tmp.path().join("alice");
        let issued = ca.issue(&identity, Duration::days(1), &out).unwrap();
        for path in [&issued.cert, &issued.key, &out.join(CA_CERT_FILE)] {
            assert_eq!(fs::metadata(path).unwrap().permissions().mode() & 0o777, 0o600, "{}", path.display());
        }
        assert_eq!(issued.serial.len(), 32);
        let pem = fs::read(&issued.cert).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        let source = IdentitySource::Spiffe(TrustDomain::parse(DEV_TRUST_DOMAIN).unwrap());
        assert_eq!(crate::identity::principal_from_certificate(&pem.contents, &source).unwrap().as_str(), uri);
        let cert = pem.parse_x509().unwrap();
        assert_eq!(hex::encode(cert.raw_serial()), issued.serial);
        assert!(!mnvault_core::number::contains_number(&issued.serial));
        // Not marked as the dev PKI's: only `create_dev_pki` marks what it makes.
        assert!(cert.subject().iter_organization().next().is_none());
        assert_eq!(cert.subject().iter_common_name().next().unwrap().as_str().unwrap(), "alice");

        // Never over an existing file; never outside its trust domain; never for long.
        assert!(matches!(ca.issue(&identity, Duration::days(1), &out), Err(PkiError::AlreadyExists { .. })));
        let foreign = Identity::parse("spiffe://elsewhere.example/tenant/acme/approver/bob").unwrap();
        assert!(matches!(ca.issue(&foreign, Duration::days(1), &out), Err(PkiError::OtherTrustDomain { .. })));
        let bob = Identity::parse(&format!("spiffe://{DEV_TRUST_DOMAIN}/tenant/acme/approver/bob")).unwrap();
        assert!(matches!(ca.issue(&bob, Duration::days(MAX_LIFETIME_DAYS + 1), &out), Err(PkiError::Lifetime { .. })));

        // The one certificate signed is recorded, as `issue` printed it.
        let records = list_issued(&dir).unwrap();
        assert_eq!(records.len(), 1, "{records:?}");
        assert_eq!((records[0].spiffe_id.as_str(), records[0].serial.as_str()), (uri.as_str(), issued.serial.as_str()));
        assert_eq!(records[0].not_after.unix_timestamp(), issued.not_after.unix_timestamp());
        assert_eq!(fs::metadata(dir.join(ISSUED_INDEX_FILE)).unwrap().permissions().mode() & 0o777, 0o600);
    }

    fn secret(text: &str) -> SecretString {
        SecretString::from(text.to_owned())
    }

    #[test]
    fn init_makes_a_ca_whose_key_opens_only_with_its_passphrase() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let domain = TrustDomain::parse("vault.example.jp").unwrap();
        let made = init_ca(&dir, &domain, Duration::days(30), &secret("correct horse")).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        for name in [CA_CERT_FILE, CA_KEY_FILE, ISSUED_INDEX_FILE] {
            assert_eq!(fs::metadata(dir.join(name)).unwrap().permissions().mode() & 0o777, 0o600, "{name}");
        }
        // The key on disk is no plain key, and holds no plain key's bytes.
        let key_pem = fs::read_to_string(&made.key).unwrap();
        assert!(key_pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"), "{key_pem}");
        assert!(KeyPair::from_pem(&key_pem).is_err());
        assert!(matches!(CertificateAuthority::open(&dir), Err(PkiError::PassphraseNeeded { .. })));
        let wrong = CertificateAuthority::open_with(&dir, Some(&secret("wrong horse"))).unwrap_err();
        assert!(matches!(wrong, PkiError::WrongPassphrase { .. }), "{wrong:?}");
        assert!(wrong.to_string().contains("wrong passphrase"), "{wrong}");

        let ca = CertificateAuthority::open_with(&dir, Some(&secret("correct horse"))).unwrap();
        assert_eq!(ca.trust_domain(), &domain);
        let pem = fs::read(&made.cert).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        let cert = pem.parse_x509().unwrap();
        assert!(cert.is_ca());
        assert_eq!(hex::encode(cert.raw_serial()), made.serial);
        // Not the dev PKI's: a production vault takes it.
        assert!(!dev_pki::is_dev_pki_pem(&fs::read(&made.cert).unwrap()));
        assert!(list_issued(&dir).unwrap().is_empty());

        let identity = Identity::parse("spiffe://vault.example.jp/operator/auditor/kato").unwrap();
        let issued = ca.issue(&identity, Duration::days(1), &tmp.path().join("kato")).unwrap();
        let records = list_issued(&dir).unwrap();
        assert_eq!(records.iter().map(|r| r.serial.as_str()).collect::<Vec<_>>(), [issued.serial.as_str()]);
        assert!(!records[0].is_expired(OffsetDateTime::now_utc()));
        assert!(records[0].is_expired(OffsetDateTime::now_utc() + Duration::days(2)));

        // Never over an existing CA; never without a passphrase; never for ever.
        let again = init_ca(&dir, &domain, Duration::days(30), &secret("other"));
        assert!(matches!(again, Err(PkiError::CaExists { .. })), "{again:?}");
        let other = tmp.path().join("other");
        assert!(matches!(init_ca(&other, &domain, Duration::days(30), &secret("")), Err(PkiError::EmptyPassphrase)));
        let forever = init_ca(&other, &domain, Duration::days(MAX_CA_LIFETIME_DAYS + 1), &secret("x"));
        assert!(matches!(forever, Err(PkiError::CaLifetime { .. })));
        assert!(!other.exists(), "a refused init writes nothing");
    }

    #[test]
    fn a_ca_directory_holds_exactly_one_key_form() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let domain = TrustDomain::parse("vault.example.jp").unwrap();
        init_ca(&dir, &domain, Duration::days(30), &secret("correct horse")).unwrap();
        assert_eq!(ca_key_form(&dir).unwrap(), CaKeyForm::File);
        let reference = TokenKeyReference {
            provider: PKCS11.into(),
            module: "/usr/lib/softhsm/libsofthsm2.so".into(),
            token_label: "office".into(),
            key_label: format!("{TOKEN_KEY_LABEL_PREFIX}01"),
        };
        fs::write(dir.join(CA_KEY_REF_FILE), toml::to_string(&reference).unwrap()).unwrap();
        let both = CertificateAuthority::open_with(&dir, Some(&secret("correct horse"))).unwrap_err();
        assert!(matches!(both, PkiError::TwoCaKeys { .. }), "{both:?}");

        fs::remove_file(dir.join(CA_KEY_FILE)).unwrap();
        assert_eq!(ca_key_form(&dir).unwrap(), CaKeyForm::Token(reference));
        let on_token = CertificateAuthority::open_with(&dir, Some(&secret("correct horse"))).unwrap_err();
        assert!(matches!(on_token, PkiError::TokenNeeded { .. }), "{on_token:?}");
        // A new CA never goes where a key reference is.
        let lone = tmp.path().join("lone");
        fs::create_dir(&lone).unwrap();
        fs::copy(dir.join(CA_KEY_REF_FILE), lone.join(CA_KEY_REF_FILE)).unwrap();
        let again = init_ca(&lone, &domain, Duration::days(30), &secret("x")).unwrap_err();
        assert!(matches!(again, PkiError::CaExists { ref path } if path.ends_with(CA_KEY_REF_FILE)), "{again:?}");

        for broken in
            ["provider = \"pkcs11\"\n", "provider = \"kms\"\nmodule = \"m\"\ntoken_label = \"t\"\nkey_label = \"k\"\n"]
        {
            fs::write(dir.join(CA_KEY_REF_FILE), broken).unwrap();
            assert!(matches!(ca_key_form(&dir), Err(PkiError::KeyReference { .. })), "{broken}");
        }
        fs::remove_file(dir.join(CA_KEY_REF_FILE)).unwrap();
        assert!(matches!(ca_key_form(&dir), Err(PkiError::NoCaKey { .. })));
    }

    #[test]
    fn the_passphrase_comes_from_the_file_first_and_is_never_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("passphrase");
        fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&file).unwrap();
        fs::write(&file, "from the file\n").unwrap();
        let read = passphrase(Some(&file), Some("from the environment".into())).unwrap().unwrap();
        assert_eq!(read.expose_secret(), "from the file");
        let read = passphrase(None, Some("from the environment".into())).unwrap().unwrap();
        assert_eq!(read.expose_secret(), "from the environment");
        assert!(passphrase(None, None).unwrap().is_none());
        assert!(matches!(passphrase(None, Some(String::new())), Err(PkiError::EmptyPassphrase)));
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(passphrase(Some(&file), None), Err(PkiError::PassphraseFile(_))));
    }

    #[test]
    fn a_damaged_index_is_named_by_line() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join(ISSUED_INDEX_FILE), format!("{INDEX_HEADER}abc\tnot an id\n")).unwrap();
        let error = list_issued(tmp.path()).unwrap_err();
        assert!(matches!(error, PkiError::Index { line: 2, .. }), "{error:?}");
        // No index and no CA: nothing to list from.
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(list_issued(empty.path()), Err(PkiError::Io { .. })));
    }
}
