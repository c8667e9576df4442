//! `AuditService`: reading and verifying the audit log.

use mnvault_core::audit::{AuditDraft, AuditRecord, Operation};
use mnvault_core::id::{JobId, RequestId, TenantId, Token};
use mnvault_core::store::{AuditFilter, AUDIT_PAGE_TOKENS};
use mnvault_proto::v1 as pb;
use pb::audit_service_server::AuditService;
use prost::Message as _;
use tonic::{Request, Response, Status};

use super::wire::{from_timestamp, optional, timestamp};
use super::Context;
use crate::config::{LimitSettings, TOKEN_WIRE_BYTES};
use crate::error::VaultError;

/// Memory one fetch from the store may take, whatever the entries hold.
const AUDIT_FETCH_BYTES: usize = 32 * 1024 * 1024;

/// Memory a token of a fetched entry may take (the string and its heap copy).
const TOKEN_MEMORY_BYTES: usize = 64;

/// Room a response keeps for its own framing and `next_after_seq`.
const RESPONSE_FRAMING_BYTES: usize = 1024;

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
        request_id: entry.request_id,
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

fn audit_filter(request: &pb::ListAuditEntriesRequest, limits: &LimitSettings) -> Result<AuditFilter, VaultError> {
    let page = limits.audit_page_entries;
    let limit = if request.limit == 0 { page } else { request.limit.min(page) };
    // Stored sequence numbers are signed 64-bit integers in both databases.
    if i64::try_from(request.after_seq).is_err() {
        return Err(VaultError::InvalidArgument(
            "after_seq is beyond the largest sequence number an entry can have (2^63 - 1)".into(),
        ));
    }
    Ok(AuditFilter {
        tenant: optional(&request.tenant, TenantId::parse)?,
        since_ms: request.since.as_ref().map(from_timestamp),
        until_ms: request.until.as_ref().map(from_timestamp),
        token: optional(&request.token, Token::parse)?,
        job_id: optional(&request.job_id, JobId::parse)?,
        operation: optional(&request.operation, operation_filter)?,
        request_id: optional(&request.request_id, RequestId::parse)?,
        principal: optional(&request.principal, mnvault_core::id::Principal::parse_recorded)?,
        outcome: optional(&request.outcome, |text| {
            mnvault_core::audit::export::outcome_id(text).ok_or_else(|| {
                VaultError::InvalidArgument(format!(
                    "the outcome is not one the audit log records: name one of {}",
                    mnvault_core::audit::export::outcome_ids()
                ))
            })
        })?,
        after_seq: request.after_seq,
        limit,
    })
}

/// Entries one fetch from the store asks for: even if each holds the most
/// tokens an entry can hold, the fetch stays within [`AUDIT_FETCH_BYTES`].
fn fetch_size(limits: &LimitSettings) -> u32 {
    let most_tokens = limits.max_job_tokens.max(limits.stream_batch_records);
    let entry_bytes = most_tokens.saturating_mul(TOKEN_MEMORY_BYTES).saturating_add(4096);
    u32::try_from(AUDIT_FETCH_BYTES / entry_bytes).unwrap_or(u32::MAX).clamp(1, limits.audit_page_entries)
}

impl AuditApi {
    /// One page of entries matching `filter`, fetched a few entries at a
    /// time, and cut short where the response would outgrow
    /// `limits.max_message_bytes`. Memory stays bounded whatever the filter
    /// and whatever the entries hold. The cursor is set whenever more may follow.
    async fn page(
        &self,
        caller: &mnvault_core::id::Principal,
        mut filter: AuditFilter,
    ) -> Result<pb::ListAuditEntriesResponse, VaultError> {
        let limits = &*self.ctx.limits();
        let page = filter.limit as usize;
        let fetch = fetch_size(limits);
        let budget = limits.max_message_bytes.saturating_sub(RESPONSE_FRAMING_BYTES);
        let mut entries: Vec<pb::AuditEntry> = Vec::new();
        let mut bytes = 0usize;
        let more = 'pages: loop {
            filter.limit = fetch.min(u32::try_from(page - entries.len()).unwrap_or(u32::MAX));
            let fetched = self.ctx.core.audit_entries(caller, &filter).await?;
            // A short fetch is the end only if the store did not cut it at
            // its page's worth of tokens.
            let tokens: usize = fetched.iter().map(|entry| entry.tokens.len()).sum();
            let exhausted = fetched.len() < filter.limit as usize && tokens < AUDIT_PAGE_TOKENS;
            for entry in fetched {
                let entry = wire_entry(entry);
                let size = entry.encoded_len() + 16; // field tag and length prefix
                if bytes + size > budget {
                    if entries.is_empty() {
                        return Err(VaultError::FailedPrecondition(format!(
                            "audit entry {} holds {} tokens, more than a message of {} bytes carries \
                             (limits.max_message_bytes, about {TOKEN_WIRE_BYTES} bytes a token); raise the limit \
                             to read it",
                            entry.seq,
                            entry.tokens.len(),
                            limits.max_message_bytes
                        )));
                    }
                    break 'pages true;
                }
                bytes += size;
                filter.after_seq = entry.seq;
                entries.push(entry);
            }
            if entries.len() >= page {
                break true;
            }
            if exhausted {
                break false;
            }
        };
        let next_after_seq = if more { entries.last().map_or(0, |e| e.seq) } else { 0 };
        Ok(pb::ListAuditEntriesResponse { entries, next_after_seq })
    }
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
            let filter = audit_filter(request.get_ref(), &self.ctx.limits())?;
            draft.tenant = filter.tenant.clone();
            self.page(&caller, filter).await
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

    async fn sign_checkpoint(
        &self,
        request: Request<pb::SignCheckpointRequest>,
    ) -> Result<Response<pb::SignCheckpointResponse>, Status> {
        let mut draft = AuditDraft::new(Operation::SignCheckpoint);
        let caller = self.ctx.authenticate(&request, &mut draft).await?;
        let result = async {
            let checkpoint = self.ctx.core.sign_checkpoint(&caller, &draft).await?;
            Ok(pb::SignCheckpointResponse {
                checkpoint_json: mnvault_core::audit::line::AuditLine::Checkpoint(checkpoint).to_json(),
            })
        }
        .await;
        Ok(Response::new(self.ctx.settled(draft, result).await?))
    }
}
