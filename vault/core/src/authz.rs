//! Who may do what. A principal is the name its client certificate proves;
//! `[principals]` in `mnvault.toml` gives it roles and the tenants it may act
//! on. Anything not granted is refused with `PERMISSION_DENIED`.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::error::VaultError;
use crate::id::{Principal, TenantId};

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
    Tokenizer,
    /// Create, show and cancel filing jobs.
    Requester,
    /// Approve filing jobs created by someone else.
    Approver,
    /// Detokenize within approved filing jobs.
    Filer,
    /// Create tenants.
    Admin,
    /// Read and verify the audit log.
    Auditor,
}

impl Role {
    /// The name used in configuration and messages.
    pub fn id(self) -> &'static str {
        match self {
            Role::Tokenizer => "tokenizer",
            Role::Requester => "requester",
            Role::Approver => "approver",
            Role::Filer => "filer",
            Role::Admin => "admin",
            Role::Auditor => "auditor",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Grant {
    roles: HashSet<Role>,
    all_tenants: bool,
    tenants: HashSet<String>,
}

/// The access policy built from the configuration.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    grants: HashMap<String, Grant>,
}

impl Policy {
    /// Builds the policy from `[principals]`.
    pub fn new(principals: &BTreeMap<String, PrincipalSettings>) -> Self {
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
        Self { grants }
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
        let grant = self.grant(principal)?;
        if !roles.iter().any(|role| grant.roles.contains(role)) {
            let wanted: Vec<_> = roles.iter().map(|r| r.id()).collect();
            return Err(VaultError::PermissionDenied(format!(
                "principal {principal} lacks the {} role this call needs",
                wanted.join(" or ")
            )));
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

    /// Whether `principal` may act on every tenant.
    pub fn covers_all_tenants(&self, principal: &Principal) -> bool {
        self.grants.get(principal.as_str()).is_some_and(|grant| grant.all_tenants)
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
            .insert("payroll".into(), PrincipalSettings { roles: vec![Role::Tokenizer], tenants: vec!["acme".into()] });
        principals
            .insert("auditor".into(), PrincipalSettings { roles: vec![Role::Auditor], tenants: vec!["*".into()] });
        Policy::new(&principals)
    }

    #[test]
    fn roles_and_tenants_are_both_required() {
        let policy = policy();
        let p = |name: &str| Principal::parse(name).unwrap();
        let t = |name: &str| TenantId::parse(name).unwrap();
        assert!(policy.require(&p("payroll"), &[Role::Tokenizer], Some(&t("acme"))).is_ok());
        assert!(matches!(
            policy.require(&p("payroll"), &[Role::Tokenizer], Some(&t("other"))),
            Err(VaultError::PermissionDenied(_))
        ));
        assert!(matches!(
            policy.require(&p("payroll"), &[Role::Filer], Some(&t("acme"))),
            Err(VaultError::PermissionDenied(_))
        ));
        assert!(matches!(
            policy.require(&p("stranger"), &[Role::Tokenizer], None),
            Err(VaultError::PermissionDenied(_))
        ));
        assert!(policy.require(&p("auditor"), &[Role::Auditor], Some(&t("anything"))).is_ok());
        assert!(policy.covers_all_tenants(&p("auditor")) && !policy.covers_all_tenants(&p("payroll")));
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
        principals.insert("payroll".into(), grant(vec![Role::Tokenizer], &["acme", "other"]));
        principals.insert("filer".into(), grant(vec![Role::Filer], &["acme"]));
        let after = Policy::new(&principals);
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
