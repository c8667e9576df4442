//! A throwaway certificate authority for `mnvault serve --dev`.
//!
//! Every mnvault connection is mutual TLS, so even a local trial run needs a
//! CA, a server certificate and one client certificate per principal. This
//! module generates all of them in one directory so a developer can start the
//! vault and talk to it on loopback without running a PKI of their own:
//!
//! * `ca.pem` / `ca.key` — a self-signed CA ("mnvault dev CA") that may only
//!   issue end-entity certificates (path length 0);
//! * `server.crt` / `server.key` — valid for `localhost`, `127.0.0.1` and `::1`
//!   only;
//! * `<principal>.crt` / `<principal>.key` — client certificates whose subject
//!   Common Name is the principal and, for the dev principals, whose URI SAN
//!   is a SPIFFE ID in [`DEV_TRUST_DOMAIN`] ([`dev_identity`]), as
//!   `mnvault pki issue` makes them, so a dev vault authenticates callers
//!   the way a production vault does.
//!
//! The CA certificate carries `spiffe://<trust domain>` as its URI SAN, so
//! `mnvault pki issue --ca-dir` knows which trust domain it issues in.
//!
//! **Never use this for anything but a development vault on loopback.** The CA
//! key sits unencrypted next to the certificates it signs, so anyone who can
//! read the directory can mint a certificate for any principal, `admin`
//! included. Production deployments use the operator's own CA, with its key
//! kept offline, and never call [`create_dev_pki`].
//!
//! Every certificate names [`DEV_PKI_ORGANIZATION`] as its organization (so
//! every one it signs names it as issuer): a production start refuses any
//! certificate that carries it ([`is_dev_pki_pem`]).
//!
//! Every file is written with mode 0600 inside a 0700 directory, and no
//! existing file is ever overwritten. Unix only.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use mnvault_core::authz::Role;
use mnvault_core::id::TenantId;
use mnvault_core::identity::{Identity, Scope, TrustDomain};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// The principals the dev PKI issues client certificates for; see
/// [`dev_identity`] for the identity each gets.
pub const DEV_PRINCIPALS: [&str; 6] = ["payroll", "requester", "approver", "filer", "admin", "auditor"];

/// The SPIFFE trust domain of dev vaults (`.invalid`: it names nothing real).
pub const DEV_TRUST_DOMAIN: &str = "mnvault-dev.invalid";

/// The tenant a dev vault creates, whose people the dev principals are.
pub const DEV_TENANT: &str = "demo";

/// The identity of dev principal `name`: `admin` is the operator with the
/// key-admin role, `auditor` the operator auditor, and the others act for
/// the dev tenant in the role of their name. `None` for other names.
pub fn dev_identity(name: &str) -> Option<Identity> {
    let domain = TrustDomain::parse(DEV_TRUST_DOMAIN).expect("a valid trust domain");
    let tenant = || Scope::Tenant(TenantId::parse(DEV_TENANT).expect("a valid tenant"));
    let (scope, role) = match name {
        "admin" => (Scope::Operator, Role::KeyAdmin),
        "auditor" => (Scope::Operator, Role::Auditor),
        other => (tenant(), Role::from_id(other)?),
    };
    Identity::new(domain, scope, role, name).ok()
}

/// File names inside the PKI directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA's private key (PKCS#8 PEM, mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";
/// The server certificate (PEM).
pub const SERVER_CERT_FILE: &str = "server.crt";
/// The server's private key (PKCS#8 PEM, mode 0600).
pub const SERVER_KEY_FILE: &str = "server.key";

/// Common Name of the dev CA certificate (also how a dev PKI made before
/// [`DEV_PKI_ORGANIZATION`] is recognised).
const CA_COMMON_NAME: &str = "mnvault dev CA";
/// Organization (O) of every dev PKI certificate, the marker a production
/// start looks for in subjects and issuers.
pub const DEV_PKI_ORGANIZATION: &str = "mnvault dev PKI - DEVELOPMENT ONLY, never trust in production";
/// Common Name of the server certificate.
const SERVER_COMMON_NAME: &str = "localhost";
/// 825 days is the longest leaf lifetime browsers and most TLS stacks accept;
/// long enough that a dev directory does not expire mid-project.
const VALIDITY_DAYS: i64 = 825;
/// Longest principal name accepted by [`create_dev_pki`]; also keeps file names short.
const MAX_PRINCIPAL_LEN: usize = 64;

/// File name of the client certificate for `name`: `"<name>.crt"`.
pub fn client_cert_file(name: &str) -> String {
    format!("{name}.crt")
}

/// File name of the client private key for `name`: `"<name>.key"`.
pub fn client_key_file(name: &str) -> String {
    format!("{name}.key")
}

/// Whether `pem` holds a certificate of a dev PKI: one whose subject or
/// issuer carries [`DEV_PKI_ORGANIZATION`], or names the dev CA. Blocks
/// that do not parse are skipped (whoever loads the file reports them).
pub fn is_dev_pki_pem(pem: &[u8]) -> bool {
    x509_parser::pem::Pem::iter_from_buffer(pem)
        .filter_map(Result::ok)
        .any(|block| block.parse_x509().is_ok_and(|cert| names_dev_pki(cert.subject()) || names_dev_pki(cert.issuer())))
}

fn names_dev_pki(name: &x509_parser::x509::X509Name<'_>) -> bool {
    let is =
        |value: &x509_parser::x509::AttributeTypeAndValue<'_>, wanted: &str| value.as_str().is_ok_and(|v| v == wanted);
    name.iter_organization().any(|value| is(value, DEV_PKI_ORGANIZATION))
        || name.iter_common_name().any(|value| is(value, CA_COMMON_NAME))
}

/// Why the dev PKI could not be created, or a certificate issued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// A file the dev PKI would write is already there; nothing was overwritten.
    #[error(
        "{} already exists; refusing to overwrite an existing dev PKI (reuse it, or delete the directory to start over)",
        path.display()
    )]
    AlreadyExists {
        /// The file that is in the way.
        path: PathBuf,
    },

    /// The PKI directory already exists, holds other files, and other users can reach into it.
    #[error(
        "{} is accessible to other users (mode {mode:03o}) and would hold private keys; run `chmod 700 {}` or choose a new directory",
        path.display(),
        path.display()
    )]
    InsecureDirectory {
        /// The PKI directory.
        path: PathBuf,
        /// Its current permission bits.
        mode: u32,
    },

    /// A principal name cannot be used as a certificate Common Name and file name.
    // The name is not repeated: what fails validation is not known to be safe to print.
    #[error("a principal name is not valid: {reason}")]
    InvalidPrincipal {
        /// The rejected name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A filesystem operation failed.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        /// What was being attempted, e.g. "create directory".
        action: &'static str,
        /// The path it was attempted on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A CA directory's certificate or key cannot be used.
    #[error("the CA in {} cannot be used: {reason}", path.display())]
    UnusableCa {
        /// The CA certificate.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },

    /// An identity of another trust domain than the CA's was asked for.
    #[error("this CA issues identities in trust domain \"{ca}\" only")]
    OtherTrustDomain {
        /// The CA's trust domain.
        ca: String,
    },

    /// A certificate lifetime out of range was asked for.
    #[error("a client certificate lives at least a day and at most {max_days} days")]
    Lifetime {
        /// The longest lifetime accepted.
        max_days: i64,
    },

    /// `pki init` found a CA file in the directory; nothing was written.
    #[error("{} already exists: a CA directory is never overwritten; choose a new directory", path.display())]
    CaExists {
        /// The file in the way.
        path: PathBuf,
    },

    /// A CA lifetime out of range was asked for.
    #[error("a CA certificate lives at least a day and at most {max_days} days")]
    CaLifetime {
        /// The longest lifetime accepted.
        max_days: i64,
    },

    /// A CA key is encrypted and no passphrase was given.
    #[error(
        "{} is encrypted: give its passphrase with --passphrase-file FILE (mode 0600) or the environment variable \
         {}",
        path.display(),
        crate::pki::PASSPHRASE_VARIABLE
    )]
    PassphraseNeeded {
        /// The encrypted key.
        path: PathBuf,
    },

    /// The passphrase given for a CA key is empty.
    #[error("the CA key passphrase is empty; give one that is not")]
    EmptyPassphrase,

    /// The passphrase file cannot be used (unreadable, readable by others, empty).
    #[error(transparent)]
    PassphraseFile(#[from] mnvault_keys::KeyError),

    /// The passphrase does not decrypt the CA key.
    #[error(
        "the passphrase does not decrypt {}: it is the wrong passphrase, or the file is damaged",
        path.display()
    )]
    WrongPassphrase {
        /// The encrypted key.
        path: PathBuf,
    },

    /// Encrypting a new CA key failed.
    #[error("could not encrypt the CA key: {reason}")]
    Encrypt {
        /// Why (no key material in it).
        reason: String,
    },

    /// A line of a CA directory's index of issued certificates does not read.
    #[error("{}, line {line}: {reason}", path.display())]
    Index {
        /// The index file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A CA directory holds both key forms, `ca.key` and `ca-key.toml`.
    #[error(
        "{} holds both ca.key (a key file) and ca-key.toml (a key on a PKCS#11 token); a CA has one key: remove \
         the file that is not this CA's key, as ca.pem's public key tells",
        dir.display()
    )]
    TwoCaKeys {
        /// The CA directory.
        dir: PathBuf,
    },

    /// A CA directory holds neither key form.
    #[error(
        "{} holds neither ca.key nor ca-key.toml, so it has no CA key; give the directory `mnvault pki init` made",
        dir.display()
    )]
    NoCaKey {
        /// The CA directory.
        dir: PathBuf,
    },

    /// A CA's `ca-key.toml` does not read.
    #[error("{} does not name a key on a token: {reason}", path.display())]
    KeyReference {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A CA's key is on a token, and no token configuration was given.
    #[error(
        "the key of the CA in {} is on a PKCS#11 token (ca-key.toml); give the vault configuration whose [root_key] \
         names that token (--data-dir or --config), which holds its PIN",
        dir.display()
    )]
    TokenNeeded {
        /// The CA directory.
        dir: PathBuf,
    },

    /// The configuration's token is not the one the CA's key is on.
    #[error(
        "the CA key is on token \"{key_token}\" (ca-key.toml), but the vault configuration's [root_key] names token \
         \"{configured}\", whose PIN would be used; give the configuration of the CA's token"
    )]
    OtherToken {
        /// The token `ca-key.toml` names.
        key_token: String,
        /// The token the configuration names.
        configured: String,
    },

    /// The token refused, or does not answer, or its key cannot be used.
    #[error(transparent)]
    Token(mnvault_keys::KeyError),

    /// Generating a key pair or signing a certificate failed.
    #[error("could not generate the {what}: {source}")]
    Generate {
        /// Which key or certificate, e.g. "server certificate".
        what: String,
        /// The underlying error.
        #[source]
        source: rcgen::Error,
    },
}

/// Creates `dir` (mode 0700) and writes a fresh CA (ca.pem, ca.key), a server certificate for localhost / 127.0.0.1 / ::1 (server.crt, server.key) and one client certificate per principal (`<name>.crt`, `<name>.key`), all signed by the CA. Refuses if `dir` already contains ca.pem (PkiError::AlreadyExists).
///
/// Principal names must be 1–64 characters of `a-z`, `0-9`, `-` and `_`, must
/// not repeat, and must not be `ca` or `server` (their files would collide).
/// An existing `dir` that other users can access is tightened to 0700 if it is
/// empty and refused ([`PkiError::InsecureDirectory`]) otherwise. Every file
/// name is checked before anything is written, so a refusal leaves the
/// directory as it was.
pub fn create_dev_pki(dir: &Path, principals: &[&str]) -> Result<(), PkiError> {
    validate_principals(principals)?;

    // Check every target first so a refusal leaves no half-written PKI, and
    // before the directory checks so an existing PKI always reports
    // AlreadyExists. ca.pem goes first: it is the file that marks a PKI.
    let mut names =
        vec![CA_CERT_FILE.to_owned(), CA_KEY_FILE.to_owned(), SERVER_CERT_FILE.to_owned(), SERVER_KEY_FILE.to_owned()];
    for name in principals {
        names.push(client_cert_file(name));
        names.push(client_key_file(name));
    }
    for name in &names {
        let path = dir.join(name);
        // symlink_metadata so that a dangling symlink also counts as "in the way".
        match fs::symlink_metadata(&path) {
            Ok(_) => return Err(PkiError::AlreadyExists { path }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(PkiError::Io { action: "inspect", path, source }),
        }
    }

    prepare_dir(dir)?;

    // Generate everything before writing, so a generation failure writes nothing.
    let (not_before, not_after) = validity_period();

    let ca_key = generate_key("CA key")?;
    let mut ca_params = ca_params(CA_COMMON_NAME, not_before, not_after);
    let trust_domain = format!("{}{DEV_TRUST_DOMAIN}", mnvault_core::identity::SPIFFE_PREFIX);
    ca_params.subject_alt_names =
        vec![SanType::URI(trust_domain.try_into().map_err(|source| generate_error("CA certificate", source))?)];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(|source| generate_error("CA certificate", source))?;
    let ca_cert_pem = ca_cert.pem();
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let mut files = vec![(CA_CERT_FILE.to_owned(), ca_cert_pem), (CA_KEY_FILE.to_owned(), ca_key_pem)];

    let server_key = generate_key("server key")?;
    let mut server_params = leaf_params(SERVER_COMMON_NAME, not_before, not_after);
    server_params.subject_alt_names = vec![
        SanType::DnsName("localhost".try_into().map_err(|source| generate_error("server certificate", source))?),
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ];
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert =
        server_params.signed_by(&server_key, &issuer).map_err(|source| generate_error("server certificate", source))?;
    files.push((SERVER_CERT_FILE.to_owned(), server_cert.pem()));
    files.push((SERVER_KEY_FILE.to_owned(), server_key.serialize_pem()));

    for name in principals {
        let key = generate_key(&format!("key for principal {name}"))?;
        let identity = dev_identity(name);
        let params = client_params(name, identity.as_ref(), not_before, not_after)
            .map_err(|source| generate_error(&format!("certificate for principal {name}"), source))?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|source| generate_error(&format!("certificate for principal {name}"), source))?;
        files.push((client_cert_file(name), cert.pem()));
        files.push((client_key_file(name), key.serialize_pem()));
    }

    for (name, contents) in &files {
        // Certificates too: everything in a data directory is its user's alone.
        write_new_file(&dir.join(name), contents, 0o600)?;
    }
    Ok(())
}

fn validate_principals(principals: &[&str]) -> Result<(), PkiError> {
    let invalid = |name: &str, reason| PkiError::InvalidPrincipal { name: name.to_owned(), reason };
    for (i, name) in principals.iter().enumerate() {
        if name.is_empty() {
            return Err(invalid(name, "it is empty"));
        }
        if name.len() > MAX_PRINCIPAL_LEN {
            return Err(invalid(name, "it is longer than 64 characters"));
        }
        // The name becomes a file name, so nothing that could leave `dir`;
        // lowercase only, because "Admin.key" and "admin.key" are one file on
        // case-insensitive filesystems.
        if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_') {
            return Err(invalid(name, "use only a-z, 0-9, '-' and '_'"));
        }
        if *name == "ca" || *name == "server" {
            return Err(invalid(name, "its files would collide with the CA or server files"));
        }
        if principals[..i].contains(name) {
            return Err(invalid(name, "it is listed more than once"));
        }
    }
    Ok(())
}

/// Creates `dir` with mode 0700. An existing directory that others can access
/// is tightened to 0700 if it is empty, and refused otherwise.
pub(crate) fn prepare_dir(dir: &Path) -> Result<(), PkiError> {
    let io_error = |action, source| PkiError::Io { action, path: dir.to_owned(), source };
    DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|source| io_error("create directory", source))?;
    let mode = fs::metadata(dir).map_err(|source| io_error("inspect", source))?.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    // An empty directory was made for us (`mkdir`, a temp dir), so tightening
    // it is expected; chmod-ing one with other contents (a home directory?)
    // would be a surprise, so leave that decision to the user.
    let is_empty = fs::read_dir(dir).map_err(|source| io_error("list", source))?.next().is_none();
    if !is_empty {
        return Err(PkiError::InsecureDirectory { path: dir.to_owned(), mode });
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|source| io_error("restrict permissions of", source))
}

/// Writes a file that must not exist yet, with `mode` applied at creation so a
/// private key is never readable by others, not even briefly.
pub(crate) fn write_new_file(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            PkiError::AlreadyExists { path: path.to_owned() }
        } else {
            PkiError::Io { action: "create", path: path.to_owned(), source }
        }
    })?;
    file.write_all(contents.as_bytes()).and_then(|()| file.sync_all()).map_err(|source| PkiError::Io {
        action: "write",
        path: path.to_owned(),
        source,
    })
}

fn validity_period() -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    // Backdated a day so a peer with a slightly slow clock still accepts it.
    (now - Duration::days(1), now + Duration::days(VALIDITY_DAYS))
}

/// The parameters of a CA that signs leaves only (path length 0).
pub(crate) fn ca_params(common_name: &str, not_before: OffsetDateTime, not_after: OffsetDateTime) -> CertificateParams {
    let mut params = params_with_cn(common_name, not_before, not_after);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// The parameters of a client certificate: Common Name `name` and, when
/// given, the identity's SPIFFE ID as its one URI SAN (rustls checks no
/// name on client certificates; the vault reads the URI).
pub(crate) fn client_params(
    name: &str,
    identity: Option<&Identity>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, rcgen::Error> {
    let mut params = leaf_params(name, not_before, not_after);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if let Some(identity) = identity {
        params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
    }
    Ok(params)
}

fn params_with_cn(common_name: &str, not_before: OffsetDateTime, not_after: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    // A fresh name: the default one carries rcgen's placeholder CN.
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, DEV_PKI_ORGANIZATION);
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.not_before = not_before;
    params.not_after = not_after;
    params
}

fn leaf_params(common_name: &str, not_before: OffsetDateTime, not_after: OffsetDateTime) -> CertificateParams {
    let mut params = params_with_cn(common_name, not_before, not_after);
    params.is_ca = IsCa::ExplicitNoCa;
    // digitalSignature is all an ECDSA TLS key needs.
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params
}

fn generate_key(what: &str) -> Result<KeyPair, PkiError> {
    KeyPair::generate().map_err(|source| generate_error(what, source))
}

fn generate_error(what: &str, source: rcgen::Error) -> PkiError {
    PkiError::Generate { what: what.to_owned(), source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::certificate::X509Certificate;
    use x509_parser::extensions::GeneralName;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn read_der(path: &Path) -> Vec<u8> {
        let pem_bytes = fs::read(path).unwrap();
        let (rest, pem) = x509_parser::pem::parse_x509_pem(&pem_bytes).unwrap();
        assert!(rest.iter().all(u8::is_ascii_whitespace), "{}", path.display());
        assert_eq!(pem.label, "CERTIFICATE");
        pem.contents
    }

    fn parse(der: &[u8]) -> X509Certificate<'_> {
        let (rest, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        assert!(rest.is_empty());
        cert
    }

    /// A fresh PKI in a not-yet-existing subdirectory of a temp dir.
    fn fresh_pki() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        create_dev_pki(&dir, &DEV_PRINCIPALS).unwrap();
        (tmp, dir)
    }

    #[test]
    fn writes_every_file_with_the_documented_names() {
        let (_tmp, dir) = fresh_pki();
        let mut expected = vec![
            CA_CERT_FILE.to_owned(),
            CA_KEY_FILE.to_owned(),
            SERVER_CERT_FILE.to_owned(),
            SERVER_KEY_FILE.to_owned(),
        ];
        for name in DEV_PRINCIPALS {
            expected.push(client_cert_file(name));
            expected.push(client_key_file(name));
        }
        expected.sort();
        let mut found: Vec<String> =
            fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        found.sort();
        assert_eq!(found, expected);
        assert_eq!(client_cert_file("admin"), "admin.crt");
        assert_eq!(client_key_file("admin"), "admin.key");

        for name in &expected {
            let text = fs::read_to_string(dir.join(name)).unwrap();
            let label =
                if name.ends_with(".key") { "-----BEGIN PRIVATE KEY-----" } else { "-----BEGIN CERTIFICATE-----" };
            assert!(text.starts_with(label), "{name} is not PEM: {text:.40}");
        }
    }

    #[test]
    fn every_file_is_0600_and_the_directory_0700() {
        let (_tmp, dir) = fresh_pki();
        assert_eq!(mode_of(&dir), 0o700);
        let mut files = 0;
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            assert_eq!(mode_of(&path), 0o600, "{}", path.display());
            files += 1;
        }
        assert_eq!(files, 4 + 2 * DEV_PRINCIPALS.len());
    }

    #[test]
    fn every_certificate_is_recognised_as_the_dev_pki() {
        let (_tmp, dir) = fresh_pki();
        let mut certificates = 0;
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let pem = fs::read(&path).unwrap();
            // Keys carry no name; certificates, server and clients and CA alike, do.
            assert_eq!(is_dev_pki_pem(&pem), path.extension().is_some_and(|e| e != "key"), "{}", path.display());
            certificates += usize::from(is_dev_pki_pem(&pem));
        }
        assert_eq!(certificates, 2 + DEV_PRINCIPALS.len());
        // In a bundle, behind another certificate.
        let other = other_ca_pem();
        assert!(!is_dev_pki_pem(other.as_bytes()));
        let bundle = [other.as_bytes(), &fs::read(dir.join(CA_CERT_FILE)).unwrap()].concat();
        assert!(is_dev_pki_pem(&bundle));
        assert!(!is_dev_pki_pem(b"not PEM at all"));
    }

    #[test]
    fn a_dev_ca_from_before_the_marker_is_recognised_by_its_name() {
        let key = KeyPair::generate().unwrap();
        let (not_before, not_after) = validity_period();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, CA_COMMON_NAME);
        params.distinguished_name = dn;
        params.not_before = not_before;
        params.not_after = not_after;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        assert!(is_dev_pki_pem(params.self_signed(&key).unwrap().pem().as_bytes()));
    }

    /// A CA certificate that is not the dev PKI's.
    fn other_ca_pem() -> String {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Example payroll company");
        dn.push(DnType::CommonName, "Example vault CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn creating_twice_is_refused_and_changes_nothing() {
        let (_tmp, dir) = fresh_pki();
        let ca_before = fs::read(dir.join(CA_CERT_FILE)).unwrap();
        let key_before = fs::read(dir.join(CA_KEY_FILE)).unwrap();
        match create_dev_pki(&dir, &DEV_PRINCIPALS) {
            Err(PkiError::AlreadyExists { path }) => assert_eq!(path, dir.join(CA_CERT_FILE)),
            other => panic!("expected AlreadyExists, got {other:?}"),
        }
        assert_eq!(fs::read(dir.join(CA_CERT_FILE)).unwrap(), ca_before);
        assert_eq!(fs::read(dir.join(CA_KEY_FILE)).unwrap(), key_before);
    }

    #[test]
    fn a_stray_key_file_is_not_overwritten_and_nothing_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::write(dir.join("admin.key"), "mine").unwrap();
        match create_dev_pki(dir, &DEV_PRINCIPALS) {
            Err(PkiError::AlreadyExists { path }) => assert_eq!(path, dir.join("admin.key")),
            other => panic!("expected AlreadyExists, got {other:?}"),
        }
        assert_eq!(fs::read_to_string(dir.join("admin.key")).unwrap(), "mine");
        assert!(!dir.join(CA_CERT_FILE).exists());
    }

    #[test]
    fn an_empty_open_directory_is_tightened_and_used() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("open");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        create_dev_pki(&dir, &DEV_PRINCIPALS).unwrap();
        assert_eq!(mode_of(&dir), 0o700);
        assert!(dir.join(CA_CERT_FILE).exists());
    }

    #[test]
    fn a_non_empty_open_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("open");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("notes.txt"), "hello").unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        match create_dev_pki(&dir, &DEV_PRINCIPALS) {
            Err(PkiError::InsecureDirectory { mode, .. }) => assert_eq!(mode, 0o755),
            other => panic!("expected InsecureDirectory, got {other:?}"),
        }
        assert_eq!(mode_of(&dir), 0o755);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
    }

    #[test]
    fn unsafe_principal_names_are_refused_before_touching_the_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        for bad in [&["../evil"][..], &[""], &["Admin"], &["server"], &["ca"], &["admin", "admin"]] {
            assert!(matches!(create_dev_pki(&dir, bad), Err(PkiError::InvalidPrincipal { .. })), "{bad:?}");
        }
        assert!(!dir.exists());
    }

    #[test]
    fn client_certificates_name_their_principal() {
        let (_tmp, dir) = fresh_pki();
        for name in DEV_PRINCIPALS {
            let der = read_der(&dir.join(client_cert_file(name)));
            let cn = mnvault_core::authz::IdentitySource::CommonName;
            assert_eq!(crate::identity::principal_from_certificate(&der, &cn).unwrap().as_str(), name);
            let domain = TrustDomain::parse(DEV_TRUST_DOMAIN).unwrap();
            let spiffe = mnvault_core::authz::IdentitySource::Spiffe(domain);
            let identity = dev_identity(name).expect("every dev principal has an identity");
            assert_eq!(crate::identity::principal_from_certificate(&der, &spiffe).unwrap(), identity.principal());
        }
    }

    #[test]
    fn server_certificate_is_for_loopback() {
        let (_tmp, dir) = fresh_pki();
        let der = read_der(&dir.join(SERVER_CERT_FILE));
        let cert = parse(&der);
        let sans = &cert.subject_alternative_name().unwrap().expect("server cert has SANs").value.general_names;
        assert!(sans.contains(&GeneralName::DNSName("localhost")));
        assert!(sans.contains(&GeneralName::IPAddress(&[127, 0, 0, 1])));
        assert!(sans.contains(&GeneralName::IPAddress(&Ipv6Addr::LOCALHOST.octets())));
        assert_eq!(sans.len(), 3);
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        assert!(cert.key_usage().unwrap().unwrap().value.digital_signature());
        assert!(!cert.is_ca());
    }

    #[test]
    fn ca_certificate_is_a_self_signed_ca() {
        let (_tmp, dir) = fresh_pki();
        let der = read_der(&dir.join(CA_CERT_FILE));
        let cert = parse(&der);
        let bc = cert.basic_constraints().unwrap().expect("CA has basic constraints");
        assert!(bc.critical);
        assert!(bc.value.ca);
        assert_eq!(bc.value.path_len_constraint, Some(0));
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        assert_eq!(cert.subject(), cert.issuer());
        assert_eq!(cert.subject().iter_common_name().next().unwrap().as_str().unwrap(), CA_COMMON_NAME);
        cert.verify_signature(None).expect("self-signed");
    }

    #[test]
    fn leaves_are_issued_and_signed_by_the_ca() {
        let (_tmp, dir) = fresh_pki();
        let ca_der = read_der(&dir.join(CA_CERT_FILE));
        let ca = parse(&ca_der);
        let mut leaves = vec![SERVER_CERT_FILE.to_owned()];
        leaves.extend(DEV_PRINCIPALS.iter().map(|n| client_cert_file(n)));
        for file in leaves {
            let der = read_der(&dir.join(&file));
            let cert = parse(&der);
            assert_eq!(cert.issuer(), ca.subject(), "{file}");
            cert.verify_signature(Some(ca.public_key())).unwrap_or_else(|e| panic!("{file} not signed by the CA: {e}"));
            let validity = cert.validity();
            let now = OffsetDateTime::now_utc();
            assert!(validity.not_before.to_datetime() < now - Duration::hours(23));
            assert!(validity.not_after.to_datetime() > now + Duration::days(824));
            if file != SERVER_CERT_FILE {
                let eku = cert.extended_key_usage().unwrap().unwrap().value;
                assert!(eku.client_auth && !eku.server_auth, "{file}");
                assert!(cert.key_usage().unwrap().unwrap().value.digital_signature());
            }
        }
        // A key other than the CA's must not verify, or the check above proves nothing.
        let server_der = read_der(&dir.join(SERVER_CERT_FILE));
        let server = parse(&server_der);
        let admin_der = read_der(&dir.join(client_cert_file("admin")));
        assert!(parse(&admin_der).verify_signature(Some(server.public_key())).is_err());
    }

    #[test]
    fn two_pkis_do_not_trust_each_other() {
        let (_tmp1, dir1) = fresh_pki();
        let (_tmp2, dir2) = fresh_pki();
        let ca1_der = read_der(&dir1.join(CA_CERT_FILE));
        let admin2_der = read_der(&dir2.join(client_cert_file("admin")));
        assert!(parse(&admin2_der).verify_signature(Some(parse(&ca1_der).public_key())).is_err());
    }
}
