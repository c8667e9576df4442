//! `FilingService`: the only way a number leaves the vault. The rules are in
//! `mnvault_core::job`; this module translates.

use mnvault_core::audit::{AuditDraft, Operation};
use mnvault_core::authz::Role;
use mnvault_core::clock;
use mnvault_core::id::{JobId, TenantId, Token};
use mnvault_core::job::{Job, JobRequest, JobState};
use mnvault_core::purpose::Purpose;
use mnvault_core::text::FreeText;
use mnvault_proto::v1 as pb;
use pb::filing_service_server::FilingService;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use super::wire::{from_timestamp, timestamp};
use super::{Context, Feed, FeedStopped, ResponseStream, VaultContext};
use crate::error::VaultError;

/// The filing service.
pub struct FilingApi {
    ctx: Context,
}

impl FilingApi {
    /// The service over `ctx`.
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }
}

fn wire_state(state: JobState) -> pb::FilingJobState {
    match state {
        JobState::PendingApproval => pb::FilingJobState::PendingApproval,
        JobState::Approved => pb::FilingJobState::Approved,
        JobState::Cancelled => pb::FilingJobState::Cancelled,
        JobState::Expired => pb::FilingJobState::Expired,
    }
}

/// The job as the API shows it.
fn wire_job(job: &Job, now: i64) -> pb::FilingJob {
    let terms = &job.terms;
    pb::FilingJob {
        job_id: terms.job_id.to_string(),
        tenant: terms.tenant.to_string(),
        purpose: terms.purpose.id().to_owned(),
        state: wire_state(job.state(now)).into(),
        tokens: job
            .tokens
            .iter()
            .map(|(token, releases)| pb::FilingJobToken { token: token.to_string(), releases: *releases })
            .collect(),
        max_releases_per_token: terms.max_releases_per_token,
        note: terms.note.to_string(),
        created_by: terms.created_by.to_string(),
        created_at: Some(timestamp(terms.created_at)),
        expires_at: Some(timestamp(terms.expires_at)),
        approved_by: job.approved.as_ref().map(|s| s.by.to_string()).unwrap_or_default(),
        approved_at: job.approved.as_ref().map(|s| timestamp(s.at)),
        cancelled_by: job.cancelled.as_ref().map(|s| s.by.to_string()).unwrap_or_default(),
        cancelled_at: job.cancelled.as_ref().map(|s| timestamp(s.at)),
        approvals_required: terms.approvals_required,
        approvals: job
            .approvals()
            .map(|s| pb::FilingJobApproval { approved_by: s.by.to_string(), approved_at: Some(timestamp(s.at)) })
            .collect(),
    }
}

fn parse_tokens(tokens: &[String]) -> Result<Vec<Token>, VaultError> {
    tokens.iter().map(|token| Token::parse(token).map_err(VaultError::from)).collect()
}

fn job_request(request: &pb::CreateFilingJobRequest) -> Result<JobRequest, VaultError> {
    Ok(JobRequest {
        tenant: TenantId::parse(&request.tenant)?,
        purpose: request.purpose.parse::<Purpose>()?,
        tokens: parse_tokens(&request.tokens)?,
        expires_at: request
            .expires_at
            .as_ref()
            .map(from_timestamp)
            .ok_or_else(|| VaultError::InvalidArgument("a filing job needs an expiry".into()))?,
        max_releases_per_token: request.max_releases_per_token,
        note: FreeText::parse(&request.note, "note")?,
    })
}

/// Answers of a `Detokenize` stream queued ahead of the client.
const DETOKENIZE_BUFFER: usize = 64;

#[tonic::async_trait]
impl FilingService for FilingApi {
    async fn create_filing_job(
        &self,
        request: Request<pb::CreateFilingJobRequest>,
    ) -> Result<Response<pb::FilingJob>, Status> {
        let mut draft = AuditDraft::new(Operation::CreateFilingJob);
        let caller = self.ctx.authenticate(&request, &mut draft).await?;
        let request = request.into_inner();
        let result = async {
            draft.tenant = Some(TenantId::parse(&request.tenant)?);
            // Counted before a token is parsed; the refusal records the count, never the tokens.
            let limit = self.ctx.limits().max_job_tokens;
            VaultContext::check_count(request.tokens.len(), limit, "tokens", "max_job_tokens")?;
            let job = job_request(&request)?;
            draft.purpose = Some(job.purpose);
            self.ctx.core.create_job(&caller, &job, &mut draft).await
        }
        .await;
        if result.is_ok() {
            self.ctx.observe_job_created(&draft).await;
        }
        let job = self.ctx.settled(draft, result).await?;
        Ok(Response::new(wire_job(&job, clock::now_ms())))
    }

    async fn approve_filing_job(
        &self,
        request: Request<pb::ApproveFilingJobRequest>,
    ) -> Result<Response<pb::FilingJob>, Status> {
        let mut draft = AuditDraft::new(Operation::ApproveFilingJob);
        let caller = self.ctx.authenticate(&request, &mut draft).await?;
        let result = async {
            let job_id = JobId::parse(&request.get_ref().job_id)?;
            self.ctx.core.approve_job(&caller, &job_id, &mut draft).await
        }
        .await;
        let job = self.ctx.settled(draft, result).await?;
        Ok(Response::new(wire_job(&job, clock::now_ms())))
    }

    type DetokenizeStream = ResponseStream<pb::DetokenizeResponse>;

    async fn detokenize(
        &self,
        request: Request<pb::DetokenizeRequest>,
    ) -> Result<Response<Self::DetokenizeStream>, Status> {
        let mut draft = AuditDraft::new(Operation::Detokenize);
        let caller = self.ctx.authenticate(&request, &mut draft).await?;
        let result = async {
            let job_id = JobId::parse(&request.get_ref().job_id)?;
            draft.job_id = Some(job_id.clone());
            let limit = self.ctx.limits().max_job_tokens;
            VaultContext::check_count(request.get_ref().tokens.len(), limit, "tokens", "max_job_tokens")?;
            let asked = parse_tokens(&request.get_ref().tokens)?;
            let released = self.ctx.core.release(&caller, &job_id, &asked, &mut draft).await?;
            Ok((job_id, released))
        }
        .await;
        if let Ok((_, released)) = &result {
            self.ctx.observe_release(&draft, released.len() as u64).await;
        }
        let (job_id, released) = self.ctx.settled(draft, result).await?;
        self.ctx.metrics.numbers_released(released.len());
        // The audit entry is committed; only now do numbers leave. A client
        // that stops reading holds the channel's few answers, and after the
        // send timeout the rest is dropped (wiped) and the stream ends with
        // an error; the release stays counted and audited.
        let limits = self.ctx.limits();
        let (feed, responses) = Feed::new(DETOKENIZE_BUFFER, limits.stream_send_timeout());
        tokio::spawn(async move {
            let total = released.len();
            for (sent, released) in released.into_iter().enumerate() {
                let response =
                    pb::DetokenizeResponse { token: released.token.to_string(), number: released.number.to_string() };
                if let Err(stopped) = feed.send(Ok(response)).await {
                    if stopped == FeedStopped::Stalled {
                        tracing::warn!(%job_id, sent, total, "detokenize stream dropped: the client stopped reading");
                    }
                    return;
                }
            }
            feed.finish();
        }
        .instrument(tracing::Span::current()));
        Ok(Response::new(responses))
    }

    async fn get_filing_job(
        &self,
        request: Request<pb::GetFilingJobRequest>,
    ) -> Result<Response<pb::FilingJob>, Status> {
        let mut draft = AuditDraft::new(Operation::GetFilingJob);
        let caller = self.ctx.authenticate(&request, &mut draft).await?;
        let result = async {
            let job_id = JobId::parse(&request.get_ref().job_id)?;
            let roles = [Role::Requester, Role::Approver, Role::Filer, Role::Auditor];
            self.ctx.core.open_job(&caller, &job_id, &roles, &mut draft).await
        }
        .await;
        let job = self.ctx.audited(draft, result).await?;
        Ok(Response::new(wire_job(&job, clock::now_ms())))
    }

    async fn cancel_filing_job(
        &self,
        request: Request<pb::CancelFilingJobRequest>,
    ) -> Result<Response<pb::FilingJob>, Status> {
        let mut draft = AuditDraft::new(Operation::CancelFilingJob);
        let caller = self.ctx.authenticate(&request, &mut draft).await?;
        let result = async {
            let job_id = JobId::parse(&request.get_ref().job_id)?;
            self.ctx.core.cancel_job(&caller, &job_id, &mut draft).await
        }
        .await;
        let job = self.ctx.settled(draft, result).await?;
        Ok(Response::new(wire_job(&job, clock::now_ms())))
    }

    async fn list_purposes(
        &self,
        request: Request<pb::ListPurposesRequest>,
    ) -> Result<Response<pb::ListPurposesResponse>, Status> {
        let mut draft = AuditDraft::new(Operation::ListPurposes);
        self.ctx.authenticate(&request, &mut draft).await?;
        let purposes = Purpose::ALL
            .iter()
            .map(|p| pb::Purpose {
                id: p.id().into(),
                name_ja: p.name_ja().into(),
                submitted_to: p.submitted_to().into(),
            })
            .collect();
        let response = self.ctx.audited(draft, Ok(pb::ListPurposesResponse { purposes })).await?;
        Ok(Response::new(response))
    }
}
