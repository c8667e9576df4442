//! Who may do what. A caller is the identity its client certificate
//! proves. In production that is a SPIFFE ID ([`crate::identity`]), which
//! carries its one role and its tenant (or, for operators, every tenant); in
//! the compatibility mode ([`IdentitySource::CommonName`]) it is the
//! certificate's Common Name, and `[principals]` in `mnvault.toml` gives it
//! roles and tenants. Anything not granted is refused with
//! `PERMISSION_DENIED`.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::error::VaultError;
use crate::id::{Principal, TenantId};
use crate::identity::{Scope, TrustDomain};

/// What one principal may do, as the configuration grants it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalSettings {
    /// Its roles.
    pub roles: Vec<Role>,
    /// Tenants it may act on; `"*"` means all.
    pub tenants: Vec<String>,
}

/// A set of operations a principal may be granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Tokenize numbers and describe tokens (payroll systems).
    Payroll,
    /// Create, show and cancel filing jobs.
    Requester,
    /// Approve filing jobs created by someone else.
    Approver,
    /// Detokenize within approved filing jobs.
    Filer,
    /// Tenants, keys and retention (operators); never releases
    /// a number.
    KeyAdmin,
    /// Read and verify the audit log.
    Auditor,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 6] =
        [Role::Payroll, Role::Requester, Role::Approver, Role::Filer, Role::KeyAdmin, Role::Auditor];

    /// The name used in configuration, SPIFFE IDs and messages.
    pub fn id(self) -> &'static str {
        match self {
            Role::Payroll => "payroll",
            Role::Requester => "requester",
            Role::Approver => "approver",
            Role::Filer => "filer",
            Role::KeyAdmin => "key-admin",
            Role::Auditor => "auditor",
        }
    }

    /// The role named `id`.
    pub fn from_id(id: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.id() == id)
    }
}

/// Where callers' roles and tenants come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    /// The certificate's SPIFFE ID, which must be in this trust domain.
    Spiffe(TrustDomain),
    /// The certificate's Common Name, granted by `[principals]`: the
    /// compatibility mode, for certificates without SPIFFE IDs.
    CommonName,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Grant {
    roles: HashSet<Role>,
    all_tenants: bool,
    tenants: HashSet<String>,
}

/// The access policy built from the configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    grants: HashMap<String, Grant>,
    source: IdentitySource,
}

impl Policy {
    /// Builds the policy from `[principals]` (configured names, and the
    /// vault's own principals) and where callers' identities come from.
    pub fn new(principals: &BTreeMap<String, PrincipalSettings>, source: IdentitySource) -> Self {
        let grants = principals
            .iter()
            .map(|(name, settings)| {
                let grant = Grant {
                    roles: settings.roles.iter().copied().collect(),
                    all_tenants: settings.tenants.iter().any(|t| t == "*"),
                    tenants: settings.tenants.iter().filter(|t| *t != "*").cloned().collect(),
                };
                (name.clone(), grant)
            })
            .collect();
        Self { grants, source }
    }

    /// A policy that grants nothing: for the vault's own offline work, whose
    /// principals need no grant.
    pub fn none() -> Self {
        Self::new(&BTreeMap::new(), IdentitySource::CommonName)
    }

    /// Where callers' identities come from.
    pub fn source(&self) -> &IdentitySource {
        &self.source
    }

    fn grant(&self, principal: &Principal) -> Result<&Grant, VaultError> {
        self.grants.get(principal.as_str()).ok_or_else(|| {
            VaultError::PermissionDenied(format!(
                "principal {principal} has no grant in this vault; an operator must add it under [principals]"
            ))
        })
    }

    /// Refuses unless `principal` has one of `roles` and, when a tenant is
    /// named, may act on it.
    pub fn require(&self, principal: &Principal, roles: &[Role], tenant: Option<&TenantId>) -> Result<(), VaultError> {
        if let Some(scope) = self.identity_scope(principal, roles)? {
            return match (scope, tenant) {
                (Scope::Tenant(own), Some(tenant)) if own != *tenant => Err(VaultError::PermissionDenied(format!(
                    "{principal} acts for tenant \"{own}\" only, not \"{tenant}\""
                ))),
                _ => Ok(()),
            };
        }
        let grant = self.grant(principal)?;
        if !roles.iter().any(|role| grant.roles.contains(role)) {
            return Err(lacks_role(principal, roles));
        }
        if let Some(tenant) = tenant {
            if !grant.all_tenants && !grant.tenants.contains(tenant.as_str()) {
                return Err(VaultError::PermissionDenied(format!(
                    "principal {principal} may not act on tenant \"{tenant}\""
                )));
            }
        }
        Ok(())
    }

    /// For a principal that is an identity: its scope, once its trust
    /// domain and its role are checked. `None` for a configured name.
    fn identity_scope(&self, principal: &Principal, roles: &[Role]) -> Result<Option<Scope>, VaultError> {
        let Some(identity) = principal.identity() else {
            return Ok(None);
        };
        match &self.source {
            IdentitySource::Spiffe(domain) if domain == identity.trust_domain() => {}
            IdentitySource::Spiffe(domain) => {
                return Err(VaultError::PermissionDenied(format!(
                    "{principal} is not in this vault's trust domain \"{domain}\""
                )))
            }
            IdentitySource::CommonName => {
                return Err(VaultError::PermissionDenied(format!(
                    "{principal} is a SPIFFE identity, but this vault grants roles by Common Name (identity.source = \
                     \"common-name\")"
                )))
            }
        }
        if !roles.contains(&identity.role()) {
            return Err(lacks_role(principal, roles));
        }
        Ok(Some(identity.scope().clone()))
    }

    /// Whether `principal` may act on every tenant.
    pub fn covers_all_tenants(&self, principal: &Principal) -> bool {
        match principal.identity() {
            Some(identity) => {
                matches!(&self.source, IdentitySource::Spiffe(domain) if domain == identity.trust_domain())
                    && *identity.scope() == Scope::Operator
            }
            None => self.grants.get(principal.as_str()).is_some_and(|grant| grant.all_tenants),
        }
    }

    /// Which principals `new` grants differently from this policy: roles
    /// or tenants, compared as sets (the order in the file does not count).
    pub fn changes(&self, new: &Policy) -> PrincipalChanges {
        let mut changes = PrincipalChanges::default();
        for (name, grant) in &new.grants {
            match self.grants.get(name) {
                None => changes.added.push(name.clone()),
                Some(old) if old != grant => changes.changed.push(name.clone()),
                Some(_) => {}
            }
        }
        changes.removed = self.grants.keys().filter(|name| !new.grants.contains_key(*name)).cloned().collect();
        for names in [&mut changes.added, &mut changes.removed, &mut changes.changed] {
            names.sort_unstable();
        }
        changes
    }
}

fn lacks_role(principal: &Principal, roles: &[Role]) -> VaultError {
    let wanted: Vec<_> = roles.iter().map(|r| r.id()).collect();
    VaultError::PermissionDenied(format!(
        "principal {principal} lacks the {} role this call needs",
        wanted.join(" or ")
    ))
}

/// Principals a new policy adds, removes or grants differently, by their
/// names in the configuration, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrincipalChanges {
    /// Granted now, not before.
    pub added: Vec<String>,
    /// Granted before, not now.
    pub removed: Vec<String>,
    /// Granted before and now, with other roles or tenants.
    pub changed: Vec<String>,
}

impl PrincipalChanges {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        let mut principals = BTreeMap::new();
        principals
            .insert("payroll".into(), PrincipalSettings { roles: vec![Role::Payroll], tenants: vec!["acme".into()] });
        principals
            .insert("auditor".into(), PrincipalSettings { roles: vec![Role::Auditor], tenants: vec!["*".into()] });
        Policy::new(&principals, IdentitySource::CommonName)
    }

    #[test]
    fn roles_and_tenants_are_both_required() {
        let policy = policy();
        let p = |name: &str| Principal::parse(name).unwrap();
        let t = |name: &str| TenantId::parse(name).unwrap();
        assert!(policy.require(&p("payroll"), &[Role::Payroll], Some(&t("acme"))).is_ok());
        assert!(matches!(
            policy.require(&p("payroll"), &[Role::Payroll], Some(&t("other"))),
            Err(VaultError::PermissionDenied(_))
        ));
        assert!(matches!(
            policy.require(&p("payroll"), &[Role::Filer], Some(&t("acme"))),
            Err(VaultError::PermissionDenied(_))
        ));
        assert!(matches!(policy.require(&p("stranger"), &[Role::Payroll], None), Err(VaultError::PermissionDenied(_))));
        assert!(policy.require(&p("auditor"), &[Role::Auditor], Some(&t("anything"))).is_ok());
        assert!(policy.covers_all_tenants(&p("auditor")) && !policy.covers_all_tenants(&p("payroll")));
    }

    #[test]
    fn an_identity_acts_in_its_role_on_its_tenant_or_as_an_operator_on_every_tenant() {
        let domain = TrustDomain::parse("vault.example.jp").unwrap();
        let policy = Policy::new(&BTreeMap::new(), IdentitySource::Spiffe(domain));
        let id = |uri: &str| crate::identity::Identity::parse(uri).unwrap().principal();
        let t = |name: &str| TenantId::parse(name).unwrap();
        let filer = id("spiffe://vault.example.jp/tenant/acme/filer/alice");
        assert!(policy.require(&filer, &[Role::Filer], Some(&t("acme"))).is_ok());
        let denied = |result: Result<(), VaultError>| match result {
            Err(VaultError::PermissionDenied(message)) => message,
            other => panic!("{other:?}"),
        };
        assert!(denied(policy.require(&filer, &[Role::Filer], Some(&t("other")))).contains("tenant \"acme\" only"));
        assert!(denied(policy.require(&filer, &[Role::Approver], Some(&t("acme")))).contains("approver role"));
        assert!(!policy.covers_all_tenants(&filer));

        let operator = id("spiffe://vault.example.jp/operator/auditor/ops");
        assert!(policy.require(&operator, &[Role::Auditor], Some(&t("anything"))).is_ok());
        assert!(policy.require(&operator, &[Role::Auditor], None).is_ok());
        assert!(policy.covers_all_tenants(&operator));
        assert!(policy.require(&operator, &[Role::KeyAdmin], None).is_err());

        let foreign = id("spiffe://elsewhere.example/operator/auditor/ops");
        assert!(denied(policy.require(&foreign, &[Role::Auditor], None)).contains("trust domain"));
        assert!(!policy.covers_all_tenants(&foreign));

        // A configured name gets nothing it was not granted, in either mode.
        assert!(policy.require(&Principal::parse("auditor").unwrap(), &[Role::Auditor], None).is_err());
        // And an identity gets nothing from a vault that grants by Common Name.
        let compat = Policy::new(&BTreeMap::new(), IdentitySource::CommonName);
        assert!(denied(compat.require(&operator, &[Role::Auditor], None)).contains("common-name"));
        assert!(!compat.covers_all_tenants(&operator));
    }

    #[test]
    fn changes_name_added_removed_and_changed_principals_only() {
        let grant = |roles: Vec<Role>, tenants: &[&str]| PrincipalSettings {
            roles,
            tenants: tenants.iter().map(|t| t.to_string()).collect(),
        };
        let before = policy();
        assert!(before.changes(&policy()).is_empty());
        let mut principals = BTreeMap::new();
        principals.insert("auditor".into(), grant(vec![Role::Auditor], &["*"]));
        principals.insert("payroll".into(), grant(vec![Role::Payroll], &["acme", "other"]));
        principals.insert("filer".into(), grant(vec![Role::Filer], &["acme"]));
        let after = Policy::new(&principals, IdentitySource::CommonName);
        let changes = before.changes(&after);
        assert_eq!(changes.added, ["filer"]);
        assert_eq!(changes.changed, ["payroll"]);
        assert!(changes.removed.is_empty());
        let back = after.changes(&before);
        assert_eq!(
            (back.added.len(), back.removed, back.changed),
            (0, vec!["filer".to_owned()], vec!["payroll".to_owned()])
        );
    }
}
