//! `AdminService`: tenant lifecycle, from creation to offboarding (export
//! and shred). The rules are in `mnvault_core::offboarding`.

use mnvault_core::audit::{AuditDraft, Operation};
use mnvault_core::error::VaultError;
use mnvault_core::id::{JobId, TenantId};
use mnvault_core::offboarding::ExportRecipient;
use mnvault_core::text::FreeText;
use mnvault_proto::v1 as pb;
use pb::admin_service_server::AdminService;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use super::wire::timestamp;
use super::{Context, Feed, FeedStopped, ResponseStream};

/// Chunks of an export queued ahead of the client (each a page of records,
/// a few tens of KiB of ciphertext).
const EXPORT_BUFFER: usize = 4;

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

    type ExportTenantStream = ResponseStream<pb::ExportTenantChunk>;

    async fn export_tenant(
        &self,
        request: Request<pb::ExportTenantRequest>,
    ) -> Result<Response<Self::ExportTenantStream>, Status> {
        let mut draft = AuditDraft::new(Operation::ExportTenant);
        let caller = self.ctx.authenticate(&request, &mut draft).await?;
        let result = async {
            let job_id = JobId::parse(&request.get_ref().job_id)?;
            draft.job_id = Some(job_id.clone());
            let recipient = ExportRecipient::parse(&request.get_ref().recipient)?;
            let mut export = self.ctx.core.start_export(&caller, &job_id, &recipient, &mut draft).await?;
            // The first page decides (already exported, not approved,
            // shredded): a refusal is the call's answer, not a cut stream.
            let first = self.ctx.core.export_next(&mut export).await?;
            Ok((export, first))
        }
        .await;
        let (mut export, mut next) = self.ctx.settled(draft, result).await?;
        // Each page was audited and counted before its chunk exists; a
        // client that stops reading is cut after the send timeout, and the
        // pages not yet exported are never read.
        let ctx = self.ctx.clone();
        let (feed, responses) = Feed::new(EXPORT_BUFFER, ctx.limits().stream_send_timeout());
        tokio::spawn(
            async move {
                let mut sent = 0;
                let mut total;
                while let Some(chunk) = next.take() {
                    ctx.metrics.numbers_released(usize::try_from(chunk.records - sent).unwrap_or(usize::MAX));
                    ctx.observe_release(export.draft(), chunk.records - sent).await;
                    sent = chunk.records;
                    total = chunk.total;
                    let message =
                        pb::ExportTenantChunk { chunk: chunk.bytes, records: chunk.records, total: chunk.total };
                    if let Err(stopped) = feed.send(Ok(message)).await {
                        if stopped == FeedStopped::Stalled {
                            let (job_id, tenant) = (export.job_id(), export.tenant());
                            tracing::warn!(%job_id, %tenant, sent, "export stream dropped: the client stopped reading");
                        }
                        // Its pages are audited as exported and its job is spent: say
                        // that the client never had the whole file.
                        let cut = VaultError::Unavailable(format!(
                            "the client stopped reading the export before its end ({sent} of {total} record(s) \
                             encrypted); the export is incomplete and its job has exported"
                        ));
                        ctx.refuse(export.draft().clone(), cut).await;
                        return;
                    }
                    // A required audit sink that fails or lags: no page more.
                    if let Err(refusal) = ctx.audit_sinks.check() {
                        tracing::debug!(reason = %refusal.detail, "export cut: a required audit sink is down");
                        let cut = VaultError::Unavailable(format!(
                            "{} ({sent} of {total} record(s) were exported before; the export is incomplete and its \
                             job has exported)",
                            refusal.message
                        ));
                        let status = ctx.refuse(export.draft().clone(), cut).await;
                        if feed.send(Err(status)).await.is_ok() {
                            feed.finish();
                        }
                        return;
                    }
                    next = match ctx.core.export_next(&mut export).await {
                        Ok(next) => next,
                        Err(error) => {
                            let status = ctx.refuse(export.draft().clone(), error).await;
                            if feed.send(Err(status)).await.is_ok() {
                                feed.finish();
                            }
                            return;
                        }
                    };
                }
                feed.finish();
            }
            .instrument(tracing::Span::current()),
        );
        Ok(Response::new(responses))
    }

    async fn shred_tenant(
        &self,
        request: Request<pb::ShredTenantRequest>,
    ) -> Result<Response<pb::ShredTenantResponse>, Status> {
        let mut draft = AuditDraft::new(Operation::ShredTenant);
        let caller = self.ctx.authenticate(&request, &mut draft).await?;
        let result = async {
            let tenant = TenantId::parse(&request.get_ref().tenant)?;
            draft.tenant = Some(tenant.clone());
            self.ctx.core.shred_tenant(&caller, &tenant, &draft).await
        }
        .await;
        let shredded = self.ctx.settled(draft, result).await?;
        Ok(Response::new(pb::ShredTenantResponse {
            tenant: shredded.tenant.to_string(),
            shredded_at: Some(timestamp(shredded.shredded_at)),
            records_deleted: shredded.records_deleted,
        }))
    }
}
