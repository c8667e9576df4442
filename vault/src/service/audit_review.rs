//! `AuditService`: reading and verifying the audit log.

use mnvault_core::audit::{AuditDraft, AuditRecord, Operation};
use mnvault_core::id::{JobId, TenantId, Token};
use mnvault_core::store::AuditFilter;
use mnvault_core::vault::AUDIT_PAGE;
use mnvault_proto::v1 as pb;
use pb::audit_service_server::AuditService;
use tonic::{Request, Response, Status};

use super::wire::{from_timestamp, optional, timestamp};
use super::Context;
use crate::error::VaultError;

/// The audit service.
pub struct AuditApi {
    ctx: Context,
}

impl AuditApi {
    /// The service over `ctx`.
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }
}

fn wire_entry(entry: AuditRecord) -> pb::AuditEntry {
    pb::AuditEntry {
        seq: entry.seq,
        time: Some(timestamp(entry.time_ms)),
        principal: entry.principal,
        tenant: entry.tenant,
        operation: entry.operation,
        outcome: entry.outcome,
        reason: entry.reason,
        job_id: entry.job_id,
        purpose: entry.purpose,
        tokens: entry.tokens,
        record_count: entry.record_count,
        prev_hash: hex::encode(entry.prev_hash),
        hash: hex::encode(entry.hash),
    }
}

/// The stored identifier of an operation a listing may filter on.
fn operation_filter(text: &str) -> Result<&'static str, VaultError> {
    Operation::ALL
        .iter()
        .map(|operation| operation.id())
        .find(|id| *id == text)
        .ok_or_else(|| VaultError::InvalidArgument("the operation is not one the audit log records".into()))
}

fn audit_filter(request: &pb::ListAuditEntriesRequest) -> Result<AuditFilter, VaultError> {
    let limit = if request.limit == 0 { AUDIT_PAGE } else { request.limit.min(AUDIT_PAGE) };
    Ok(AuditFilter {
        tenant: optional(&request.tenant, TenantId::parse)?,
        since_ms: request.since.as_ref().map(from_timestamp),
        until_ms: request.until.as_ref().map(from_timestamp),
        token: optional(&request.token, Token::parse)?,
        job_id: optional(&request.job_id, JobId::parse)?,
        operation: optional(&request.operation, operation_filter)?,
        after_seq: request.after_seq,
        limit,
    })
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_entries(
        &self,
        request: Request<pb::ListAuditEntriesRequest>,
    ) -> Result<Response<pb::ListAuditEntriesResponse>, Status> {
        let mut draft = AuditDraft::new(Operation::ListAuditEntries);
        let caller = self.ctx.authenticate(&request, &mut draft).await?;
        let result = async {
            let filter = audit_filter(request.get_ref())?;
            draft.tenant = filter.tenant.clone();
            let entries = self.ctx.core.audit_entries(&caller, &filter).await?;
            let full_page = entries.len() == filter.limit as usize;
            let next_after_seq = if full_page { entries.last().map_or(0, |e| e.seq) } else { 0 };
            Ok(pb::ListAuditEntriesResponse { entries: entries.into_iter().map(wire_entry).collect(), next_after_seq })
        }
        .await;
        Ok(Response::new(self.ctx.audited(draft, result).await?))
    }

    async fn verify_audit_chain(
        &self,
        request: Request<pb::VerifyAuditChainRequest>,
    ) -> Result<Response<pb::VerifyAuditChainResponse>, Status> {
        let mut draft = AuditDraft::new(Operation::VerifyAuditChain);
        let caller = self.ctx.authenticate(&request, &mut draft).await?;
        let result = async {
            Ok(match self.ctx.core.verify_chain(&caller).await? {
                Ok(chain) => pb::VerifyAuditChainResponse {
                    intact: true,
                    entries_checked: chain.entries,
                    first_bad_seq: 0,
                    problem: String::new(),
                    head_hash: hex::encode(chain.head_hash),
                },
                Err(broken) => pb::VerifyAuditChainResponse {
                    intact: false,
                    entries_checked: broken.seq.saturating_sub(1),
                    first_bad_seq: broken.seq,
                    problem: broken.problem,
                    head_hash: String::new(),
                },
            })
        }
        .await;
        Ok(Response::new(self.ctx.audited(draft, result).await?))
    }
}
