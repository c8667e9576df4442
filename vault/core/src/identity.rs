//! Identities: who a caller is, as its certificate's SPIFFE ID says.
//!
//! A production vault reads one URI SAN of the form
//! `spiffe://<trust-domain>/tenant/<tenant>/<role>/<name>` (a tenant's
//! services and people) or `spiffe://<trust-domain>/operator/<role>/<name>`
//! (operators, on every tenant). The identity carries its role and its
//! tenant, so the certificate authority decides who may do what and the
//! vault's configuration holds no list of names to get wrong.
//!
//! `<name>` is the person (or service): one person may hold several
//! certificates, under several roles, and is still one person, which is
//! what the rule "never approve a job you created" counts
//! ([`crate::id::Principal::person`]).
//!
//! An identity's principal (the name audit entries and jobs record) is its
//! SPIFFE ID in full. The grammar of a configured principal name admits
//! neither `:` nor `/`, so no Common Name can pass for an identity.

use std::fmt;

use crate::authz::Role;
use crate::id::{Principal, TenantId};
use crate::number::contains_number;

/// The scheme every identity starts with.
pub const SPIFFE_PREFIX: &str = "spiffe://";
/// Longest trust domain accepted (SPIFFE allows 255; a vault's is short).
pub const MAX_TRUST_DOMAIN_LEN: usize = 63;
/// Longest `<name>` accepted.
pub const MAX_NAME_LEN: usize = 63;
/// The path segment of identities bound to one tenant.
const TENANT_SEGMENT: &str = "tenant";
/// The path segment of operators' identities.
const OPERATOR_SEGMENT: &str = "operator";

/// Why a text is not a usable identity. Never repeats the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Not `spiffe://<trust-domain>/...`.
    #[error("the identity is not a SPIFFE ID: it must start with spiffe:// and a trust domain")]
    NotSpiffe,
    /// The trust domain does not follow its grammar.
    #[error(
        "the SPIFFE trust domain is not valid: use 1 to 63 lowercase letters, digits, `.`, `-` or `_`, e.g. \
         vault.example.jp"
    )]
    TrustDomain,
    /// The path is neither `/tenant/<t>/<role>/<name>` nor `/operator/<role>/<name>`.
    #[error(
        "the SPIFFE ID's path must be /tenant/<tenant>/<role>/<name> or /operator/<role>/<name> (issue it with \
         `mnvault pki issue`)"
    )]
    Path,
    /// The tenant segment is not a tenant identifier.
    #[error("the SPIFFE ID's tenant is not a valid tenant identifier")]
    Tenant,
    /// The role segment names no role.
    #[error("the SPIFFE ID's role is not one of payroll, requester, approver, filer, key-admin, auditor")]
    Role,
    /// The role exists, but not in this scope.
    #[error(
        "the SPIFFE ID's role does not belong to its scope: key-admin is an operator role; payroll, requester, \
         approver and filer are tenant roles; auditor is either"
    )]
    RoleScope,
    /// The name segment does not follow its grammar.
    #[error(
        "the SPIFFE ID's name is not valid: use 1 to 63 lowercase ASCII letters, digits, `.`, `_` or `-`, holding no \
         number (one person, one spelling)"
    )]
    Name,
}

/// A SPIFFE trust domain: the certificate authority's namespace.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a trust domain: lowercase letters, digits, `.`, `-`, `_`.
    pub fn parse(text: &str) -> Result<Self, IdentityError> {
        let valid = (1..=MAX_TRUST_DOMAIN_LEN).contains(&text.len())
            && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
            && !contains_number(text);
        valid.then(|| Self(text.to_owned())).ok_or(IdentityError::TrustDomain)
    }

    /// The trust domain's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

/// Where an identity may act.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// One tenant and nothing else.
    Tenant(TenantId),
    /// Every tenant (operators).
    Operator,
}

/// A caller's identity, parsed from its SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    trust_domain: TrustDomain,
    scope: Scope,
    role: Role,
    name: String,
}

impl Identity {
    /// Parses `spiffe://<trust-domain>/tenant/<tenant>/<role>/<name>` or
    /// `spiffe://<trust-domain>/operator/<role>/<name>`.
    pub fn parse(uri: &str) -> Result<Self, IdentityError> {
        let rest = uri.strip_prefix(SPIFFE_PREFIX).ok_or(IdentityError::NotSpiffe)?;
        let (domain, path) = rest.split_once('/').ok_or(IdentityError::Path)?;
        let trust_domain = TrustDomain::parse(domain)?;
        let segments: Vec<&str> = path.split('/').collect();
        let (scope, role, name) = match segments.as_slice() {
            [TENANT_SEGMENT, tenant, role, name] => {
                (Scope::Tenant(TenantId::parse(tenant).map_err(|_| IdentityError::Tenant)?), *role, *name)
            }
            [OPERATOR_SEGMENT, role, name] => (Scope::Operator, *role, *name),
            _ => return Err(IdentityError::Path),
        };
        let role = Role::from_id(role).ok_or(IdentityError::Role)?;
        Self::new(trust_domain, scope, role, name)
    }

    /// An identity from its parts, checked as [`Identity::parse`] checks them.
    pub fn new(trust_domain: TrustDomain, scope: Scope, role: Role, name: &str) -> Result<Self, IdentityError> {
        let fits = match (&scope, role) {
            (Scope::Operator, Role::KeyAdmin | Role::Auditor) => true,
            (Scope::Operator, _) | (Scope::Tenant(_), Role::KeyAdmin) => false,
            (Scope::Tenant(_), _) => true,
        };
        if !fits {
            return Err(IdentityError::RoleScope);
        }
        let valid_name = (1..=MAX_NAME_LEN).contains(&name.len())
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
            && name != "."
            && name != ".."
            && !contains_number(name);
        if !valid_name {
            return Err(IdentityError::Name);
        }
        Ok(Self { trust_domain, scope, role, name: name.to_owned() })
    }

    /// The trust domain that issued it.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Where it may act.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// Its one role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The person (or service) behind it: the last path segment.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The principal audit entries and jobs record for it: the SPIFFE ID.
    pub fn principal(&self) -> Principal {
        Principal::of_identity(&self.to_string())
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.scope {
            Scope::Tenant(tenant) => write!(
                f,
                "{SPIFFE_PREFIX}{}/{TENANT_SEGMENT}/{tenant}/{}/{}",
                self.trust_domain,
                self.role.id(),
                self.name
            ),
            Scope::Operator => {
                write!(f, "{SPIFFE_PREFIX}{}/{OPERATOR_SEGMENT}/{}/{}", self.trust_domain, self.role.id(), self.name)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_and_operator_identities_parse_and_print_back() {
        for uri in [
            "spiffe://vault.example.jp/tenant/acme/payroll/payroll-svc",
            "spiffe://vault.example.jp/tenant/acme/approver/yamada.hanako",
            "spiffe://vault.example.jp/tenant/acme/auditor/sato",
            "spiffe://vault.example.jp/operator/key-admin/suzuki",
            "spiffe://vault.example.jp/operator/auditor/ops_team",
        ] {
            let identity = Identity::parse(uri).unwrap();
            assert_eq!(identity.to_string(), uri);
            assert_eq!(identity.principal().as_str(), uri);
            assert_eq!(identity.principal().identity(), Some(identity.clone()));
        }
        let identity = Identity::parse("spiffe://td/tenant/acme/filer/alice").unwrap();
        assert_eq!(
            (identity.trust_domain().as_str(), identity.scope(), identity.role(), identity.name()),
            ("td", &Scope::Tenant(TenantId::parse("acme").unwrap()), Role::Filer, "alice")
        );
    }

    #[test]
    fn malformed_identities_are_refused_with_the_rule_they_break() {
        use IdentityError::*;
        for (uri, error) in [
            ("https://td/tenant/acme/filer/alice", NotSpiffe),
            ("spiffe://td", Path),
            ("spiffe:///tenant/acme/filer/alice", TrustDomain),
            ("spiffe://TD/tenant/acme/filer/alice", TrustDomain),
            ("spiffe://td:8443/tenant/acme/filer/alice", TrustDomain),
            ("spiffe://td/tenant/acme/filer", Path),
            ("spiffe://td/tenant/acme/filer/alice/", Path),
            ("spiffe://td/tenant/acme/filer/alice/extra", Path),
            ("spiffe://td//acme/filer/alice", Path),
            ("spiffe://td/operator/key-admin", Path),
            ("spiffe://td/tenant/Acme/filer/alice", Tenant),
            ("spiffe://td/tenant/acme/admin/alice", Role),
            ("spiffe://td/tenant/acme/key-admin/alice", RoleScope),
            ("spiffe://td/operator/filer/alice", RoleScope),
            ("spiffe://td/operator/payroll/alice", RoleScope),
            ("spiffe://td/tenant/acme/filer/..", Name),
            ("spiffe://td/tenant/acme/filer/", Name),
            ("spiffe://td/tenant/acme/filer/a%2Fb", Name),
            ("spiffe://td/tenant/acme/filer/x621498320257", Name),
            ("spiffe://td/tenant/acme/filer/al ice", Name),
            ("spiffe://td/tenant/acme/filer/Alice", Name),
        ] {
            assert_eq!(Identity::parse(uri), Err(error), "{uri}");
        }
        let long = format!("spiffe://td/operator/auditor/{}", "a".repeat(MAX_NAME_LEN + 1));
        assert_eq!(Identity::parse(&long), Err(IdentityError::Name));
    }

    #[test]
    fn the_errors_never_repeat_the_text() {
        let uri = "spiffe://td/tenant/acme/filer/x621498320257";
        let message = Identity::parse(uri).unwrap_err().to_string();
        assert!(!message.contains("621498320257"), "{message}");
    }
}
