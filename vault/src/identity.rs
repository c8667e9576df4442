//! Who is calling: the identity a verified client certificate proves.
//!
//! This is the production authentication step. The TLS layer has already
//! verified the certificate chain against the configured client CA (and its
//! validity period) by the time this runs; here the identity is read from
//! the certificate:
//!
//! - `identity.source = "spiffe"`: the one URI SAN, a SPIFFE ID in the
//!   vault's trust domain ([`mnvault_core::identity::Identity`]), which
//!   carries the caller's role and tenant;
//! - `identity.source = "common-name"` (compatibility): the subject Common
//!   Name, parsed into a [`Principal`], whose grants `[principals]` holds.
//!
//! Either way the principal's grammar admits no control character and no
//! number, so it may go into audit entries and logs as it is.

use mnvault_core::authz::IdentitySource;
use mnvault_core::id::{CertificateSerial, Principal};
use mnvault_core::identity::{Identity, SPIFFE_PREFIX};
use x509_parser::extensions::GeneralName;

/// The names the vault's own audit entries carry (initialisation, restore
/// and adoption, reload): no certificate or configured principal may take
/// one, so no caller writes entries the vault would take for its own.
pub const RESERVED_PRINCIPALS: [&str; 7] = [
    crate::root_key::ROTATION_PRINCIPAL,
    crate::datadir::INIT_PRINCIPAL,
    crate::backup::RESTORE_PRINCIPAL,
    crate::reload::RELOAD_PRINCIPAL,
    crate::key_schedule::SCHEDULER_PRINCIPAL,
    mnvault_core::vault::PURGE_PRINCIPAL,
    mnvault_core::vault::COLLECTION_PAGE_PRINCIPAL,
];

/// Whether `name` is one of [`RESERVED_PRINCIPALS`].
pub fn is_reserved(name: &str) -> bool {
    RESERVED_PRINCIPALS.contains(&name)
}

/// Why a client certificate names no usable principal. Never repeats the
/// certificate's text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The bytes are not a single DER-encoded X.509 certificate.
    #[error("the client certificate is not a valid DER X.509 certificate")]
    CertificateParse,
    /// No URI SAN is a SPIFFE ID.
    #[error(
        "the client certificate has no SPIFFE ID: this vault needs one URI SAN \
         spiffe://<trust-domain>/tenant/<tenant>/<role>/<name> or spiffe://<trust-domain>/operator/<role>/<name> \
         (issue it with `mnvault pki issue`)"
    )]
    MissingSpiffeId,
    /// More than one URI SAN: the identity is ambiguous.
    #[error("the client certificate has more than one URI SAN; a SPIFFE certificate carries exactly one")]
    MultipleUris,
    /// The SPIFFE ID does not parse.
    #[error("the client certificate's SPIFFE ID is not usable: {0}")]
    InvalidSpiffeId(#[from] mnvault_core::identity::IdentityError),
    /// The SPIFFE ID is of another trust domain.
    #[error("the client certificate's SPIFFE ID is not in this vault's trust domain \"{0}\"")]
    OtherTrustDomain(String),
    /// The subject has no Common Name, so it names no principal.
    #[error("the client certificate's subject has no Common Name (CN); reissue it with CN set to the principal name")]
    MissingCommonName,
    /// The subject has more than one Common Name: the principal is ambiguous.
    #[error(
        "the client certificate's subject has more than one Common Name (CN); reissue it with exactly one CN, the \
         principal name"
    )]
    MultipleCommonNames,
    /// The Common Name is not a UTF-8 (or ASCII) string type.
    #[error(
        "the client certificate's subject Common Name (CN) is not valid UTF-8; reissue it with the CN as a \
         UTF8String or PrintableString"
    )]
    CommonNameNotUtf8,
    /// The Common Name is one of the vault's own names.
    #[error(
        "the client certificate's Common Name (CN) is a name the vault keeps for its own audit entries; reissue it \
         with another principal name"
    )]
    ReservedPrincipal,
    /// The Common Name is not a valid principal name.
    #[error("the client certificate's Common Name (CN) is not usable: {0}")]
    InvalidPrincipal(#[from] mnvault_core::id::IdError),
}

/// The principal a verified client certificate (DER) proves, read as
/// `source` says.
pub fn principal_from_certificate(der: &[u8], source: &IdentitySource) -> Result<Principal, IdentityError> {
    certified_caller(der, source).map(|(principal, _)| principal)
}

/// The principal a verified client certificate (DER) proves, read as
/// `source` says, and its serial (`None` for one that cannot be revoked by
/// serial, see [`CertificateSerial::from_bytes`]), from one parse.
pub fn certified_caller(
    der: &[u8],
    source: &IdentitySource,
) -> Result<(Principal, Option<CertificateSerial>), IdentityError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| IdentityError::CertificateParse)?;
    if !rest.is_empty() {
        return Err(IdentityError::CertificateParse);
    }
    let principal = match source {
        IdentitySource::Spiffe(domain) => {
            let identity = spiffe_identity(&cert)?;
            if identity.trust_domain() != domain {
                return Err(IdentityError::OtherTrustDomain(domain.to_string()));
            }
            identity.principal()
        }
        IdentitySource::CommonName => common_name_principal(&cert)?,
    };
    Ok((principal, CertificateSerial::from_bytes(cert.raw_serial())))
}

/// The identity of the certificate's one URI SAN.
fn spiffe_identity(cert: &x509_parser::certificate::X509Certificate<'_>) -> Result<Identity, IdentityError> {
    let san = cert.subject_alternative_name().map_err(|_| IdentityError::CertificateParse)?;
    let mut uris = san.iter().flat_map(|san| san.value.general_names.iter()).filter_map(|name| match name {
        GeneralName::URI(uri) => Some(*uri),
        _ => None,
    });
    let uri = uris.next().ok_or(IdentityError::MissingSpiffeId)?;
    if uris.next().is_some() {
        return Err(IdentityError::MultipleUris);
    }
    if !uri.starts_with(SPIFFE_PREFIX) {
        return Err(IdentityError::MissingSpiffeId);
    }
    Ok(Identity::parse(uri)?)
}

/// The principal the subject's one Common Name names.
fn common_name_principal(cert: &x509_parser::certificate::X509Certificate<'_>) -> Result<Principal, IdentityError> {
    let mut common_names = cert.subject().iter_common_name();
    let cn = common_names.next().ok_or(IdentityError::MissingCommonName)?;
    if common_names.next().is_some() {
        return Err(IdentityError::MultipleCommonNames);
    }
    let name = cn.as_str().map_err(|_| IdentityError::CommonNameNotUtf8)?;
    let principal = Principal::parse(name)?;
    if is_reserved(principal.as_str()) {
        return Err(IdentityError::ReservedPrincipal);
    }
    Ok(principal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mnvault_core::identity::TrustDomain;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    const CN: IdentitySource = IdentitySource::CommonName;

    fn spiffe() -> IdentitySource {
        IdentitySource::Spiffe(TrustDomain::parse("vault.example.jp").unwrap())
    }

    fn cert_with_uris(uris: &[&str]) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "alice");
        params.subject_alt_names = uris.iter().map(|uri| SanType::URI(uri.to_string().try_into().unwrap())).collect();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_spiffe_vault_reads_the_one_uri_san_in_its_trust_domain() {
        let uri = "spiffe://vault.example.jp/tenant/acme/filer/alice";
        assert_eq!(principal_from_certificate(&cert_with_uris(&[uri]), &spiffe()).unwrap().as_str(), uri);
        // The compatibility mode reads the Common Name, never the URI.
        assert_eq!(principal_from_certificate(&cert_with_uris(&[uri]), &CN).unwrap().as_str(), "alice");
        type Case<'a> = (&'a [&'a str], fn(&IdentityError) -> bool);
        let cases: [Case<'_>; 5] = [
            (&[], |e| matches!(e, IdentityError::MissingSpiffeId)),
            (&["https://vault.example.jp/tenant/acme/filer/alice"], |e| matches!(e, IdentityError::MissingSpiffeId)),
            (&[uri, "spiffe://vault.example.jp/tenant/acme/approver/alice"], |e| {
                matches!(e, IdentityError::MultipleUris)
            }),
            (&["spiffe://elsewhere.example/tenant/acme/filer/alice"], |e| {
                matches!(e, IdentityError::OtherTrustDomain(_))
            }),
            (&["spiffe://vault.example.jp/operator/filer/alice"], |e| matches!(e, IdentityError::InvalidSpiffeId(_))),
        ];
        for (uris, expected) in cases {
            let error = principal_from_certificate(&cert_with_uris(uris), &spiffe()).unwrap_err();
            assert!(expected(&error), "{uris:?}: {error}");
        }
    }

    fn cert_with_subject(dn: DistinguishedName) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = dn;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_certificate_naming_a_reserved_principal_is_refused() {
        for name in RESERVED_PRINCIPALS {
            assert!(Principal::parse(name).is_ok(), "{name}");
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, name);
            assert!(
                matches!(
                    principal_from_certificate(&cert_with_subject(dn), &CN),
                    Err(IdentityError::ReservedPrincipal)
                ),
                "{name}"
            );
        }
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        for bytes in [&b""[..], b"not a certificate", &[0x30, 0x82, 0xff, 0xff, 0x00]] {
            assert!(
                matches!(principal_from_certificate(bytes, &CN), Err(IdentityError::CertificateParse)),
                "{bytes:?}"
            );
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "admin");
        let mut der = cert_with_subject(dn);
        assert_eq!(principal_from_certificate(&der, &CN).unwrap().as_str(), "admin");
        der.push(0);
        assert!(matches!(principal_from_certificate(&der, &CN), Err(IdentityError::CertificateParse)));
    }

    #[test]
    fn unusable_common_names_are_rejected() {
        let mut none = DistinguishedName::new();
        none.push(DnType::OrganizationName, "mnvault");
        assert!(matches!(
            principal_from_certificate(&cert_with_subject(none), &CN),
            Err(IdentityError::MissingCommonName)
        ));

        // rcgen keeps one value per DnType, so spell the second CN by OID.
        let mut two = DistinguishedName::new();
        two.push(DnType::CommonName, "admin");
        two.push(DnType::CustomDnType(vec![2, 5, 4, 3]), "auditor");
        assert!(matches!(
            principal_from_certificate(&cert_with_subject(two), &CN),
            Err(IdentityError::MultipleCommonNames)
        ));

        let mut bmp = DistinguishedName::new();
        bmp.push(DnType::CommonName, rcgen::DnValue::BmpString("admin".try_into().unwrap()));
        assert!(matches!(
            principal_from_certificate(&cert_with_subject(bmp), &CN),
            Err(IdentityError::CommonNameNotUtf8)
        ));

        for bad in ["", "admin\nrole=auditor", "x621498320257"] {
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, bad);
            assert!(
                matches!(
                    principal_from_certificate(&cert_with_subject(dn), &CN),
                    Err(IdentityError::InvalidPrincipal(_))
                ),
                "{bad:?}"
            );
        }
    }
}
