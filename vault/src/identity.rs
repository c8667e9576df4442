//! Who is calling: the principal a verified client certificate names.
//!
//! This is the production authentication step. The TLS layer has already
//! verified the certificate chain against the configured client CA by the
//! time this runs; here the name is read from the certificate and parsed
//! into a [`Principal`], whose grammar admits no control character and no
//! number, so it may go into audit entries and logs as it is.

use mnvault_core::id::Principal;

/// The names the vault's own audit entries carry (initialisation, restore
/// and adoption, reload): no certificate or configured principal may take
/// one, so no caller writes entries the vault would take for its own.
pub const RESERVED_PRINCIPALS: [&str; 6] = [
    crate::root_key::ROTATION_PRINCIPAL,
    crate::datadir::INIT_PRINCIPAL,
    crate::backup::RESTORE_PRINCIPAL,
    crate::reload::RELOAD_PRINCIPAL,
    crate::key_schedule::SCHEDULER_PRINCIPAL,
    mnvault_core::vault::PURGE_PRINCIPAL,
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

/// The principal named by a verified client certificate (DER): its subject
/// Common Name, parsed.
pub fn principal_from_certificate(der: &[u8]) -> Result<Principal, IdentityError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| IdentityError::CertificateParse)?;
    if !rest.is_empty() {
        return Err(IdentityError::CertificateParse);
    }
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
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

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
                matches!(principal_from_certificate(&cert_with_subject(dn)), Err(IdentityError::ReservedPrincipal)),
                "{name}"
            );
        }
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        for bytes in [&b""[..], b"not a certificate", &[0x30, 0x82, 0xff, 0xff, 0x00]] {
            assert!(matches!(principal_from_certificate(bytes), Err(IdentityError::CertificateParse)), "{bytes:?}");
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "admin");
        let mut der = cert_with_subject(dn);
        assert_eq!(principal_from_certificate(&der).unwrap().as_str(), "admin");
        der.push(0);
        assert!(matches!(principal_from_certificate(&der), Err(IdentityError::CertificateParse)));
    }

    #[test]
    fn unusable_common_names_are_rejected() {
        let mut none = DistinguishedName::new();
        none.push(DnType::OrganizationName, "mnvault");
        assert!(matches!(principal_from_certificate(&cert_with_subject(none)), Err(IdentityError::MissingCommonName)));

        // rcgen keeps one value per DnType, so spell the second CN by OID.
        let mut two = DistinguishedName::new();
        two.push(DnType::CommonName, "admin");
        two.push(DnType::CustomDnType(vec![2, 5, 4, 3]), "auditor");
        assert!(matches!(principal_from_certificate(&cert_with_subject(two)), Err(IdentityError::MultipleCommonNames)));

        let mut bmp = DistinguishedName::new();
        bmp.push(DnType::CommonName, rcgen::DnValue::BmpString("admin".try_into().unwrap()));
        assert!(matches!(principal_from_certificate(&cert_with_subject(bmp)), Err(IdentityError::CommonNameNotUtf8)));

        for bad in ["", "admin\nrole=auditor", "x621498320257"] {
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, bad);
            assert!(
                matches!(principal_from_certificate(&cert_with_subject(dn)), Err(IdentityError::InvalidPrincipal(_))),
                "{bad:?}"
            );
        }
    }
}
