//! `AdminService`: tenant lifecycle, from creation to offboarding (export
//! and shred). The rules are in `mnvault_core::offboarding`.

use mnvault_core::audit::{AuditDraft, Operation};
use mnvault_core::error::VaultError;
use mnvault_core::id::{CertificateSerial, JobId, PolicyChangeId, TenantId};
use mnvault_core::offboarding::ExportRecipient;
use mnvault_core::revocation::Revocation;
use mnvault_core::tenant_policy::{AppliedTenantPolicy, PolicyProposal, TenantPolicy, TenantPolicyFields};
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
        let (caller, serial) = self.ctx.authenticate_certified(&request, &mut draft).await?;
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
                    // A certificate revoked while the export runs gets no page more.
                    let page = match ctx.recheck(&caller, serial.as_ref(), Operation::ExportTenant) {
                        Ok(()) => ctx.core.export_next(&mut export).await,
                        Err(refused) => Err(refused),
                    };
                    next = match page {
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

    async fn get_tenant_policy(
        &self,
        request: Request<pb::GetTenantPolicyRequest>,
    ) -> Result<Response<pb::TenantPolicyStatus>, Status> {
        let mut draft = AuditDraft::new(Operation::GetTenantPolicy);
        let caller = self.ctx.authenticate(&request, &mut draft).await?;
        let result = async {
            let tenant = TenantId::parse(&request.get_ref().tenant)?;
            draft.tenant = Some(tenant.clone());
            let (applied, pending) = self.ctx.core.tenant_policy(&caller, &tenant).await?;
            Ok(wire_policy_status(&tenant, &applied, pending.as_ref()))
        }
        .await;
        Ok(Response::new(self.ctx.audited(draft, result).await?))
    }

    async fn propose_tenant_policy(
        &self,
        request: Request<pb::ProposeTenantPolicyRequest>,
    ) -> Result<Response<pb::PolicyChange>, Status> {
        let mut draft = AuditDraft::new(Operation::ProposeTenantPolicy);
        let caller = self.ctx.authenticate(&request, &mut draft).await?;
        let result = async {
            let request = request.get_ref();
            let tenant = TenantId::parse(&request.tenant)?;
            draft.tenant = Some(tenant.clone());
            let policy = policy_of(request.policy.as_ref())?;
            let proposal = self.ctx.core.propose_tenant_policy(&caller, &tenant, policy, &mut draft).await?;
            Ok(wire_change(&tenant, &proposal))
        }
        .await;
        Ok(Response::new(self.ctx.settled(draft, result).await?))
    }

    async fn approve_tenant_policy(
        &self,
        request: Request<pb::ApproveTenantPolicyRequest>,
    ) -> Result<Response<pb::TenantPolicyStatus>, Status> {
        let mut draft = AuditDraft::new(Operation::ApproveTenantPolicy);
        let caller = self.ctx.authenticate(&request, &mut draft).await?;
        let result = async {
            let request = request.get_ref();
            let tenant = TenantId::parse(&request.tenant)?;
            draft.tenant = Some(tenant.clone());
            let change_id = PolicyChangeId::parse(&request.change_id)?;
            let applied = self.ctx.core.approve_tenant_policy(&caller, &tenant, &change_id, &mut draft).await?;
            Ok(wire_policy_status(&tenant, &applied, None))
        }
        .await;
        Ok(Response::new(self.ctx.settled(draft, result).await?))
    }

    async fn revoke_certificate(
        &self,
        request: Request<pb::RevokeCertificateRequest>,
    ) -> Result<Response<pb::CertificateRevocation>, Status> {
        let mut draft = AuditDraft::new(Operation::RevokeCertificate);
        let caller = self.ctx.authenticate(&request, &mut draft).await?;
        let result = async {
            let request = request.get_ref();
            let serial = CertificateSerial::parse(&request.serial)?;
            let note = FreeText::parse(&request.reason, "reason")?;
            let revocation = self.ctx.core.revoke_certificate(&caller, &serial, &note, &mut draft).await?;
            Ok(wire_revocation(&revocation))
        }
        .await;
        Ok(Response::new(self.ctx.settled(draft, result).await?))
    }

    async fn list_revoked_certificates(
        &self,
        request: Request<pb::ListRevokedCertificatesRequest>,
    ) -> Result<Response<pb::ListRevokedCertificatesResponse>, Status> {
        let mut draft = AuditDraft::new(Operation::ListRevokedCertificates);
        let caller = self.ctx.authenticate(&request, &mut draft).await?;
        let result = (|| {
            let after = match request.get_ref().after_serial.as_str() {
                "" => None,
                serial => Some(CertificateSerial::parse(serial)?),
            };
            let page = self.ctx.core.revoked_certificates(&caller, after.as_ref())?;
            Ok(pb::ListRevokedCertificatesResponse { revocations: page.iter().map(wire_revocation).collect() })
        })();
        Ok(Response::new(self.ctx.audited(draft, result).await?))
    }
}

/// A revocation as the API shows it.
fn wire_revocation(revocation: &Revocation) -> pb::CertificateRevocation {
    pb::CertificateRevocation {
        serial: revocation.serial.to_string(),
        revoked_at: Some(timestamp(revocation.revoked_at)),
        revoked_by: revocation.revoked_by.clone(),
        reason: revocation.note.clone(),
        audit_seq: revocation.seq,
    }
}

/// A policy as the caller sent it, checked against every bound; a field out
/// of its bounds is named, never echoed.
fn policy_of(policy: Option<&pb::TenantPolicy>) -> Result<TenantPolicy, VaultError> {
    let policy = policy.ok_or_else(|| VaultError::InvalidArgument("the policy is missing: send every field".into()))?;
    let fields = TenantPolicyFields {
        approvals_required: policy.approvals_required,
        max_tokens_per_job: policy.max_tokens_per_job,
        max_job_lifetime_days: policy.max_job_lifetime_days,
        allowed_purposes: policy.allowed_purposes.clone(),
        max_releases_per_filer_per_hour: policy.max_releases_per_filer_per_hour,
        max_releases_per_tenant_per_day: policy.max_releases_per_tenant_per_day,
        release_hours: policy.release_hours.clone(),
    };
    TenantPolicy::parse(&fields).map_err(|error| VaultError::InvalidArgument(error.to_string()))
}

/// A policy as the API shows it.
pub(crate) fn wire_policy(policy: &TenantPolicy) -> pb::TenantPolicy {
    let fields = policy.fields();
    pb::TenantPolicy {
        approvals_required: fields.approvals_required,
        max_tokens_per_job: fields.max_tokens_per_job,
        max_job_lifetime_days: fields.max_job_lifetime_days,
        allowed_purposes: fields.allowed_purposes,
        max_releases_per_filer_per_hour: fields.max_releases_per_filer_per_hour,
        max_releases_per_tenant_per_day: fields.max_releases_per_tenant_per_day,
        release_hours: fields.release_hours,
    }
}

fn wire_change(tenant: &TenantId, proposal: &PolicyProposal) -> pb::PolicyChange {
    pb::PolicyChange {
        change_id: proposal.change_id.to_string(),
        tenant: tenant.to_string(),
        policy: Some(wire_policy(&proposal.policy)),
        proposed_by: proposal.proposed_by.to_string(),
        proposed_at: Some(timestamp(proposal.proposed_at)),
    }
}

fn wire_policy_status(
    tenant: &TenantId,
    applied: &AppliedTenantPolicy,
    pending: Option<&PolicyProposal>,
) -> pb::TenantPolicyStatus {
    let change = applied.change.as_ref();
    pb::TenantPolicyStatus {
        tenant: tenant.to_string(),
        policy: Some(wire_policy(&applied.policy)),
        change_id: change.map(|c| c.change_id.to_string()).unwrap_or_default(),
        proposed_by: change.map(|c| c.proposed_by.to_string()).unwrap_or_default(),
        approved_by: change.map(|c| c.approved_by.to_string()).unwrap_or_default(),
        approved_at: change.map(|c| timestamp(c.approved_at)),
        pending: pending.map(|p| wire_change(tenant, p)),
    }
}
