//! `AdminService`: tenant lifecycle.

use mnvault_core::audit::{AuditDraft, Operation};
use mnvault_core::id::TenantId;
use mnvault_core::text::FreeText;
use mnvault_proto::v1 as pb;
use pb::admin_service_server::AdminService;
use tonic::{Request, Response, Status};

use super::wire::timestamp;
use super::Context;

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

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_tenant(&self, request: Request<pb::CreateTenantRequest>) -> Result<Response<pb::Tenant>, Status> {
        let mut draft = AuditDraft::new(Operation::CreateTenant);
        let caller = self.ctx.authenticate(&request, &mut draft).await?;
        let request = request.into_inner();
        let result = async {
            let tenant = TenantId::parse(&request.tenant)?;
            draft.tenant = Some(tenant.clone());
            let display_name = FreeText::parse(&request.display_name, "display name")?;
            let created = self.ctx.core.create_tenant(&caller, &tenant, display_name, &draft).await?;
            Ok(pb::Tenant {
                tenant: created.tenant.to_string(),
                display_name: created.display_name.to_string(),
                created_at: Some(timestamp(created.created_at)),
                primary_key_version: created.primary_key_version,
            })
        }
        .await;
        Ok(Response::new(self.ctx.settled(draft, result).await?))
    }
}
