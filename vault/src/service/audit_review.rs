//! `AuditService`: reading and verifying the audit log.

use mnvault_keys::AuditChainKey;
use mnvault_proto::v1 as pb;
use pb::audit_service_server::AuditService;
use tonic::{Request, Response, Status};

use super::Context;
use crate::audit::{AuditDraft, AuditRecord, ChainBreak, ChainVerifier, Operation, VerifiedChain};
use crate::authz::Role;
use crate::clock;
use crate::error::VaultError;
use crate::store::{AuditFilter, Store, StoreError};

/// Entries per page, for listing and for verification.
pub const AUDIT_PAGE: u32 = 1_000;

/// Walks the whole chain in pages; `progress` is told how many entries have
/// been checked so far.
pub async fn verify_chain(
    store: &dyn Store,
    key: &AuditChainKey,
    mut progress: impl FnMut(u64),
) -> Result<Result<VerifiedChain, ChainBreak>, StoreError> {
    // The chain is checked up to the head read here; entries appended while
    // walking (the vault may be running) are left for the next verification.
    let (head_seq, head_hash) = store.audit_head().await?;
    let mut verifier = ChainVerifier::new(key);
    let mut filter = AuditFilter { limit: AUDIT_PAGE, ..AuditFilter::default() };
    let mut checked = 0;
    while filter.after_seq < head_seq {
        filter.limit = AUDIT_PAGE.min((head_seq - filter.after_seq).try_into().unwrap_or(AUDIT_PAGE));
        let page = store.audit_entries(&filter).await?;
        let Some(last) = page.last() else { break };
        filter.after_seq = last.seq;
        for entry in page.iter().filter(|entry| entry.seq <= head_seq) {
            if let Err(broken) = verifier.check(entry) {
                return Ok(Err(broken));
            }
            checked += 1;
        }
        progress(checked);
    }
    Ok(verifier.finish(head_seq, &head_hash))
}

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
        time: Some(clock::timestamp(entry.time_ms)),
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

fn non_empty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_entries(
        &self,
        request: Request<pb::ListAuditEntriesRequest>,
    ) -> Result<Response<pb::ListAuditEntriesResponse>, Status> {
        let draft = AuditDraft::new("", Operation::ListAuditEntries, &request.get_ref().tenant);
        let (caller, draft) = self.ctx.authenticate(&request, draft).await?;
        let request = request.into_inner();
        let result = async {
            let tenant = non_empty(request.tenant);
            self.ctx.policy.require(&caller, &[Role::Auditor], tenant.as_deref())?;
            if tenant.is_none() && !self.ctx.policy.covers_all_tenants(&caller) {
                return Err(VaultError::PermissionDenied(format!(
                    "principal {caller:?} may audit only some tenants; name one with the tenant field"
                )));
            }
            let limit = if request.limit == 0 { AUDIT_PAGE } else { request.limit.min(AUDIT_PAGE) };
            let filter = AuditFilter {
                tenant,
                since_ms: request.since.as_ref().map(clock::from_timestamp),
                until_ms: request.until.as_ref().map(clock::from_timestamp),
                token: non_empty(request.token),
                job_id: non_empty(request.job_id),
                operation: non_empty(request.operation),
                after_seq: request.after_seq,
                limit,
            };
            let entries = self.ctx.store.audit_entries(&filter).await?;
            let next_after_seq = if entries.len() == limit as usize { entries.last().map_or(0, |e| e.seq) } else { 0 };
            Ok(pb::ListAuditEntriesResponse { entries: entries.into_iter().map(wire_entry).collect(), next_after_seq })
        }
        .await;
        Ok(Response::new(self.ctx.audited(draft, result).await?))
    }

    async fn verify_audit_chain(
        &self,
        request: Request<pb::VerifyAuditChainRequest>,
    ) -> Result<Response<pb::VerifyAuditChainResponse>, Status> {
        let draft = AuditDraft::new("", Operation::VerifyAuditChain, "");
        let (caller, draft) = self.ctx.authenticate(&request, draft).await?;
        let result = async {
            self.ctx.policy.require(&caller, &[Role::Auditor], None)?;
            if !self.ctx.policy.covers_all_tenants(&caller) {
                return Err(VaultError::PermissionDenied(format!(
                    "verifying the chain reads every tenant's entries; principal {caller:?} may audit only some"
                )));
            }
            let verdict = verify_chain(self.ctx.store.as_ref(), &self.ctx.audit_key, |_| {}).await?;
            Ok(match verdict {
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
