//! Tenant policies: read one, propose a change, approve another key-admin's.

use mnvault_proto::v1 as pb;

pub use mnvault_proto::v1::{PolicyChange, TenantPolicy, TenantPolicyStatus};

use crate::{ClientError, VaultClient};

impl VaultClient {
    /// The tenant's applied policy and its pending change (key-admin or auditor).
    pub async fn tenant_policy(&self, tenant: &str) -> Result<TenantPolicyStatus, ClientError> {
        let request = pb::GetTenantPolicyRequest { tenant: tenant.to_owned() };
        Ok(self.admin.clone().get_tenant_policy(request).await?.into_inner())
    }

    /// Proposes `policy`, whole, for the tenant; it applies once another
    /// key-admin approves the returned change id.
    pub async fn propose_tenant_policy(&self, tenant: &str, policy: TenantPolicy) -> Result<PolicyChange, ClientError> {
        let request = pb::ProposeTenantPolicyRequest { tenant: tenant.to_owned(), policy: Some(policy) };
        Ok(self.admin.clone().propose_tenant_policy(request).await?.into_inner())
    }

    /// Approves the tenant's pending change `change_id` (as a key-admin
    /// other than its proposer), which applies it.
    pub async fn approve_tenant_policy(
        &self,
        tenant: &str,
        change_id: &str,
    ) -> Result<TenantPolicyStatus, ClientError> {
        let request = pb::ApproveTenantPolicyRequest { tenant: tenant.to_owned(), change_id: change_id.to_owned() };
        Ok(self.admin.clone().approve_tenant_policy(request).await?.into_inner())
    }
}
