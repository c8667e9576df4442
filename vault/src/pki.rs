//! `mnvault pki issue`: client certificates with SPIFFE identities, signed
//! by a CA kept in a directory (`ca.pem`, `ca.key`), such as a dev vault's
//! `dev-pki/`.
//!
//! A certificate names its caller twice: the subject Common Name is the
//! person's `<name>` (for people reading it), and the one URI SAN is the
//! SPIFFE ID the vault reads ([`crate::identity`]). It is short-lived
//! ([`DEFAULT_LIFETIME_DAYS`]); reissuing is cheaper than revoking.
//!
//! The trust domain is the CA's: its certificate carries
//! `spiffe://<trust-domain>` as a URI SAN, as the dev CA's does.
//!
//! Files are written 0600, never over an existing file.

use std::fs;
use std::path::{Path, PathBuf};

use mnvault_core::identity::{Identity, TrustDomain, SPIFFE_PREFIX};
use rand::RngCore;
use rcgen::{Issuer, KeyPair, SerialNumber};
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;

use crate::dev_pki::{self, PkiError, CA_CERT_FILE, CA_KEY_FILE};

/// How long an issued client certificate is valid by default.
pub const DEFAULT_LIFETIME_DAYS: i64 = 30;
/// The longest lifetime `issue` accepts.
pub const MAX_LIFETIME_DAYS: i64 = 397;
/// How far back a certificate's validity starts, for clocks a little slow.
const BACKDATE: Duration = Duration::minutes(5);

/// A CA read from a directory.
pub struct CertificateAuthority {
    dir: PathBuf,
    cert_pem: String,
    key: KeyPair,
    trust_domain: TrustDomain,
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

impl CertificateAuthority {
    /// Reads `ca.pem` and `ca.key` from `dir`; the trust domain is the CA
    /// certificate's `spiffe://` URI SAN.
    pub fn open(dir: &Path) -> Result<Self, PkiError> {
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read_to_string(&path).map_err(|source| PkiError::Io { action: "read", path, source })
        };
        let cert_pem = read(CA_CERT_FILE)?;
        let key_pem = zeroize::Zeroizing::new(read(CA_KEY_FILE)?);
        let unusable = |reason: &'static str| PkiError::UnusableCa { path: dir.join(CA_CERT_FILE), reason };
        let key = KeyPair::from_pem(&key_pem).map_err(|_| unusable("ca.key is not a PEM private key"))?;
        let trust_domain = ca_trust_domain(&cert_pem).ok_or_else(|| {
            unusable("the CA certificate carries no spiffe://<trust-domain> URI SAN, so it names no trust domain")
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
        let cert = params.signed_by(&key, &issuer).map_err(generate)?;
        fs::DirBuilder::new().recursive(true).create(out).map_err(|source| PkiError::Io {
            action: "create directory",
            path: out.to_owned(),
            source,
        })?;
        dev_pki::write_new_file(&cert_path, &cert.pem(), 0o600)?;
        dev_pki::write_new_file(&key_path, &zeroize::Zeroizing::new(key.serialize_pem()), 0o600)?;
        let ca_copy = out.join(CA_CERT_FILE);
        if fs::symlink_metadata(&ca_copy).is_err() {
            dev_pki::write_new_file(&ca_copy, &self.cert_pem, 0o600)?;
        }
        Ok(Issued { cert: cert_path, key: key_path, serial: hex::encode(serial), not_after })
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
    }
}
