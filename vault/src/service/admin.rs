//! `AdminService`: tenant lifecycle.

use mnvault_client::number::contains_number;
use mnvault_proto::v1 as pb;
use pb::admin_service_server::AdminService;
use tonic::{Request, Response, Status};

use super::Context;
use crate::audit::{AuditDraft, Operation};
use crate::authz::Role;
use crate::clock;
use crate::error::VaultError;

/// The admin service.
pub struct AdminApi {
    ctx: Context,
}

impl AdminApi {
    /// The service over `ctx`.
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }
}

/// Refuses a tenant identifier that is not lowercase kebab-case of 1 to 63
/// characters: identifiers appear in paths, logs and key-wrapping contexts.
pub fn check_tenant_id(tenant: &str) -> Result<(), VaultError> {
    let valid = (1..=63).contains(&tenant.len())
        && tenant.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && tenant.starts_with(|c: char| c.is_ascii_lowercase())
        && !tenant.ends_with('-')
        && !contains_number(tenant);
    if valid {
        Ok(())
    } else {
        Err(VaultError::InvalidArgument(format!(
            "tenant identifier {tenant:?} must be 1 to 63 lowercase letters, digits or inner hyphens, start with a \
             letter and hold no number, e.g. acme-corp"
        )))
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_tenant(&self, request: Request<pb::CreateTenantRequest>) -> Result<Response<pb::Tenant>, Status> {
        let draft = AuditDraft::new("", Operation::CreateTenant, &request.get_ref().tenant);
        let (caller, draft) = self.ctx.authenticate(&request, draft).await?;
        let request = request.into_inner();
        let now = clock::now_ms();
        let result = async {
            self.ctx.policy.require(&caller, &[Role::Admin], Some(&request.tenant))?;
            check_tenant_id(&request.tenant)?;
            let tenant = self.ctx.keyring.new_tenant(&request.tenant, &request.display_name, now)?;
            self.ctx.store.create_tenant(&tenant, draft.clone()).await?;
            Ok(pb::Tenant {
                tenant: tenant.tenant,
                display_name: tenant.display_name,
                created_at: Some(clock::timestamp(now)),
                primary_key_version: 1,
            })
        }
        .await;
        Ok(Response::new(self.ctx.settled(draft, result).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::check_tenant_id;

    #[test]
    fn tenant_identifiers_are_lowercase_kebab_case() {
        for good in ["demo", "acme-corp", "a", "tenant-2026"] {
            assert!(check_tenant_id(good).is_ok(), "{good}");
        }
        for bad in ["621498320257", "a-621498320257", "", "Demo", "-x", "x-", "a_b", "a b", "株式会社", &"a".repeat(64)]
        {
            assert!(check_tenant_id(bad).is_err(), "{bad}");
        }
    }
}
