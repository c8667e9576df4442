//! `FilingService`: the only way a number leaves the vault.
//!
//! A job declares a lawful purpose, its tokens and an expiry; a principal
//! other than its creator approves it; a filer then releases listed tokens,
//! each at most `max_releases_per_token` times, until the job expires or is
//! cancelled. Every refusal names the rule that refused it.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;

use futures::Stream;
use mnvault_client::purpose::Purpose;
use mnvault_proto::v1 as pb;
use pb::filing_service_server::FilingService;
use rand::RngCore;
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use super::{draw_without_number, Context};
use crate::audit::{AuditDraft, Operation};
use crate::authz::Role;
use crate::clock;
use crate::error::VaultError;
use crate::store::{JobTerms, NewJob, StoredJob};

/// Longest a job may run: filings are prepared in days, not seasons.
pub const MAX_JOB_LIFETIME_MS: i64 = 90 * 24 * 3600 * 1000;

/// Most tokens one job may list.
pub const MAX_JOB_TOKENS: usize = 100_000;

/// Prefix of job identifiers.
pub const JOB_ID_PREFIX: &str = "job_";

/// The filing service.
pub struct FilingApi {
    ctx: Context,
}

impl FilingApi {
    /// The service over `ctx`.
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }

    /// The start of every call on an existing job: authenticates the caller,
    /// loads the job and checks the caller may act on it with one of `roles`.
    /// Returns the caller, the job, and the call's audit draft naming the
    /// job's tenant and purpose and the `tokens` asked for. A refusal is
    /// audited here.
    async fn open_job<T>(
        &self,
        request: &Request<T>,
        job_id: &str,
        operation: Operation,
        roles: &[Role],
        tokens: Vec<String>,
    ) -> Result<(String, StoredJob, AuditDraft), Status> {
        let mut draft = AuditDraft::new("", operation, "");
        draft.job_id = job_id.to_owned();
        draft.tokens = tokens;
        let (caller, draft) = self.ctx.authenticate(request, draft).await?;
        let job = match self.ctx.store.job(job_id).await {
            Ok(Some(job)) => job,
            Ok(None) => {
                let error = VaultError::NotFound(format!("filing job {job_id} does not exist"));
                return Err(self.ctx.refuse(draft, error).await);
            }
            Err(error) => return Err(self.ctx.refuse(draft, error.into()).await),
        };
        let draft = AuditDraft { tokens: draft.tokens, ..job_draft(&caller, operation, &job) };
        match self.ctx.policy.require(&caller, roles, Some(&job.terms.tenant)) {
            Ok(()) => Ok((caller, job, draft)),
            Err(error) => Err(self.ctx.refuse(draft, error).await),
        }
    }
}

fn draw_job_id() -> String {
    draw_without_number(|| {
        let mut bytes = [0u8; 10];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        format!("{JOB_ID_PREFIX}{}", data_encoding::BASE32_NOPAD.encode(&bytes).to_ascii_lowercase())
    })
}

/// The job's state at `now`.
fn state(job: &StoredJob, now: i64) -> pb::FilingJobState {
    if job.cancelled_at.is_some() {
        pb::FilingJobState::Cancelled
    } else if job.terms.expires_at <= now {
        pb::FilingJobState::Expired
    } else if job.approved_at.is_some() {
        pb::FilingJobState::Approved
    } else {
        pb::FilingJobState::PendingApproval
    }
}

/// Refuses unless the job can release numbers at `now`.
fn require_releasable(job: &StoredJob, now: i64) -> Result<(), VaultError> {
    match state(job, now) {
        pb::FilingJobState::Approved => Ok(()),
        pb::FilingJobState::PendingApproval => Err(VaultError::FailedPrecondition(format!(
            "filing job {} has not been approved; a principal other than {} must approve it first",
            job.terms.job_id, job.terms.created_by
        ))),
        pb::FilingJobState::Cancelled => Err(VaultError::FailedPrecondition(format!(
            "filing job {} was cancelled by {}; create a new job",
            job.terms.job_id,
            job.cancelled_by.as_deref().unwrap_or("?")
        ))),
        _ => Err(VaultError::FailedPrecondition(format!(
            "filing job {} expired at {}; create a new job",
            job.terms.job_id,
            clock::rfc3339(job.terms.expires_at)
        ))),
    }
}

/// Refuses a note that holds a run of twelve or more digits: notes are stored,
/// and nothing the vault stores may hold a number.
fn check_note(note: &str) -> Result<(), VaultError> {
    let mut run = 0;
    for character in note.chars() {
        if character.is_ascii_digit() || ('０'..='９').contains(&character) {
            run += 1;
            if run >= 12 {
                return Err(VaultError::InvalidArgument(
                    "the note holds a run of 12 or more digits; notes must not contain a number, remove it".into(),
                ));
            }
        } else if !matches!(character, '-' | '－' | '‐' | '−' | ' ' | '\u{3000}') {
            run = 0;
        }
    }
    Ok(())
}

/// The job as the API shows it.
pub fn wire_job(job: &StoredJob, now: i64) -> pb::FilingJob {
    pb::FilingJob {
        job_id: job.terms.job_id.clone(),
        tenant: job.terms.tenant.clone(),
        purpose: job.terms.purpose.clone(),
        state: state(job, now).into(),
        tokens: job
            .tokens
            .iter()
            .map(|(token, releases)| pb::FilingJobToken { token: token.clone(), releases: *releases })
            .collect(),
        max_releases_per_token: job.terms.max_releases_per_token,
        note: job.terms.note.clone(),
        created_by: job.terms.created_by.clone(),
        created_at: Some(clock::timestamp(job.terms.created_at)),
        expires_at: Some(clock::timestamp(job.terms.expires_at)),
        approved_by: job.approved_by.clone().unwrap_or_default(),
        approved_at: job.approved_at.map(clock::timestamp),
        cancelled_by: job.cancelled_by.clone().unwrap_or_default(),
        cancelled_at: job.cancelled_at.map(clock::timestamp),
    }
}

fn job_draft(caller: &str, operation: Operation, job: &StoredJob) -> AuditDraft {
    let mut draft = AuditDraft::new(caller, operation, &job.terms.tenant);
    draft.job_id = job.terms.job_id.clone();
    draft.purpose = job.terms.purpose.clone();
    draft
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl FilingService for FilingApi {
    async fn create_filing_job(
        &self,
        request: Request<pb::CreateFilingJobRequest>,
    ) -> Result<Response<pb::FilingJob>, Status> {
        let mut draft = AuditDraft::new("", Operation::CreateFilingJob, &request.get_ref().tenant);
        draft.purpose = request.get_ref().purpose.clone();
        let (caller, draft) = self.ctx.authenticate(&request, draft).await?;
        let request = request.into_inner();
        let mut seen = HashSet::new();
        let tokens: Vec<String> = request.tokens.iter().filter(|t| seen.insert(t.as_str())).cloned().collect();
        let job_id = draw_job_id();
        let draft =
            AuditDraft { job_id: job_id.clone(), tokens: tokens.clone(), record_count: tokens.len() as u64, ..draft };
        let now = clock::now_ms();
        let result = async {
            self.ctx.policy.require(&caller, &[Role::Requester], Some(&request.tenant))?;
            let purpose: Purpose = request
                .purpose
                .parse()
                .map_err(|e: mnvault_client::purpose::UnknownPurpose| VaultError::InvalidArgument(e.to_string()))?;
            if tokens.is_empty() {
                return Err(VaultError::InvalidArgument("a filing job must list at least one token".into()));
            }
            if tokens.len() > MAX_JOB_TOKENS {
                return Err(VaultError::InvalidArgument(format!(
                    "a filing job may list at most {MAX_JOB_TOKENS} tokens; split it"
                )));
            }
            let expires_at = request
                .expires_at
                .as_ref()
                .map(clock::from_timestamp)
                .ok_or_else(|| VaultError::InvalidArgument("a filing job needs an expiry".into()))?;
            if expires_at <= now {
                return Err(VaultError::InvalidArgument(format!(
                    "the expiry {} is in the past",
                    clock::rfc3339(expires_at)
                )));
            }
            if expires_at - now > MAX_JOB_LIFETIME_MS {
                return Err(VaultError::InvalidArgument("a filing job may run at most 90 days".into()));
            }
            check_note(&request.note)?;
            self.ctx.keyring.tenant_keys(&request.tenant).await?;
            let missing = self.ctx.store.missing_tokens(&request.tenant, &tokens).await?;
            if let Some(first) = missing.first() {
                return Err(VaultError::NotFound(format!(
                    "{} token(s) do not exist in tenant {:?}, the first is {first}",
                    missing.len(),
                    request.tenant
                )));
            }
            let terms = JobTerms {
                job_id: job_id.clone(),
                tenant: request.tenant.clone(),
                purpose: purpose.id().to_owned(),
                note: request.note.clone(),
                max_releases_per_token: request.max_releases_per_token.max(1),
                created_by: caller.clone(),
                created_at: now,
                expires_at,
            };
            let job = NewJob { terms, tokens: tokens.clone() };
            self.ctx.store.create_job(&job, draft.clone()).await?;
            self.ctx.store.job(&job_id).await?.ok_or(VaultError::Internal)
        }
        .await;
        let job = self.ctx.settled(draft, result).await?;
        Ok(Response::new(wire_job(&job, now)))
    }

    async fn approve_filing_job(
        &self,
        request: Request<pb::ApproveFilingJobRequest>,
    ) -> Result<Response<pb::FilingJob>, Status> {
        let job_id = request.get_ref().job_id.clone();
        let (caller, job, draft) =
            self.open_job(&request, &job_id, Operation::ApproveFilingJob, &[Role::Approver], Vec::new()).await?;
        let now = clock::now_ms();
        let result = async {
            if job.terms.created_by == caller {
                return Err(VaultError::PermissionDenied(format!(
                    "{caller} created filing job {job_id}, so {caller} cannot approve it; another approver must"
                )));
            }
            let refused = match state(&job, now) {
                pb::FilingJobState::PendingApproval => None,
                pb::FilingJobState::Approved => Some(format!(
                    "filing job {job_id} is already approved by {}",
                    job.approved_by.as_deref().unwrap_or("?")
                )),
                pb::FilingJobState::Cancelled => {
                    Some(format!("filing job {job_id} was cancelled; it cannot be approved"))
                }
                _ => Some(format!(
                    "filing job {job_id} expired at {}; it cannot be approved",
                    clock::rfc3339(job.terms.expires_at)
                )),
            };
            if let Some(reason) = refused {
                return Err(VaultError::FailedPrecondition(reason));
            }
            self.ctx.store.approve_job(&job_id, &caller, draft.clone()).await?;
            self.ctx.store.job(&job_id).await?.ok_or(VaultError::Internal)
        }
        .await;
        let job = self.ctx.settled(draft, result).await?;
        Ok(Response::new(wire_job(&job, now)))
    }

    type DetokenizeStream = ResponseStream<pb::DetokenizeResponse>;

    async fn detokenize(
        &self,
        request: Request<pb::DetokenizeRequest>,
    ) -> Result<Response<Self::DetokenizeStream>, Status> {
        let job_id = request.get_ref().job_id.clone();
        let (_, job, draft) = self
            .open_job(&request, &job_id, Operation::Detokenize, &[Role::Filer], request.get_ref().tokens.clone())
            .await?;
        let request = request.into_inner();
        let now = clock::now_ms();
        let mut seen = HashSet::new();
        let tokens: Vec<String> = if request.tokens.is_empty() {
            job.tokens.iter().map(|(token, _)| token.clone()).collect()
        } else {
            request.tokens.into_iter().filter(|t| seen.insert(t.clone())).collect()
        };
        let draft = AuditDraft { tokens: tokens.clone(), record_count: tokens.len() as u64, ..draft };
        let result = async {
            require_releasable(&job, now)?;
            let listed: HashMap<&str, u32> =
                job.tokens.iter().map(|(token, releases)| (token.as_str(), *releases)).collect();
            for token in &tokens {
                match listed.get(token.as_str()) {
                    None => {
                        return Err(VaultError::PermissionDenied(format!(
                            "token {token} is not listed in filing job {job_id}; only listed tokens can be released"
                        )))
                    }
                    Some(releases) if *releases >= job.terms.max_releases_per_token => {
                        return Err(VaultError::FailedPrecondition(format!(
                            "token {token} has already been released {releases} time(s), the most filing job {job_id} allows"
                        )))
                    }
                    Some(_) => {}
                }
            }
            let keys = self.ctx.keyring.tenant_keys(&job.terms.tenant).await?;
            let open = |token: &str, sealed: &[u8]| {
                let plain = keys.open(token, sealed).ok()?;
                let digits = std::str::from_utf8(&plain).ok()?;
                Some(Zeroizing::new(digits.to_owned()))
            };
            Ok(self.ctx.store.release(&job_id, &tokens, &open, draft.clone()).await?)
        }
        .await;
        let released = self.ctx.settled(draft, result).await?;
        // The audit entry is committed; only now do numbers leave.
        let responses: Vec<Result<pb::DetokenizeResponse, Status>> = released
            .into_iter()
            .map(|(token, number)| Ok(pb::DetokenizeResponse { token, number: number.to_string() }))
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(responses))))
    }

    async fn get_filing_job(
        &self,
        request: Request<pb::GetFilingJobRequest>,
    ) -> Result<Response<pb::FilingJob>, Status> {
        let job_id = request.get_ref().job_id.clone();
        let (_, job, draft) = self
            .open_job(
                &request,
                &job_id,
                Operation::GetFilingJob,
                &[Role::Requester, Role::Approver, Role::Filer, Role::Auditor],
                Vec::new(),
            )
            .await?;
        let job = self.ctx.audited(draft, Ok(job)).await?;
        Ok(Response::new(wire_job(&job, clock::now_ms())))
    }

    async fn cancel_filing_job(
        &self,
        request: Request<pb::CancelFilingJobRequest>,
    ) -> Result<Response<pb::FilingJob>, Status> {
        let job_id = request.get_ref().job_id.clone();
        let (caller, job, draft) = self
            .open_job(&request, &job_id, Operation::CancelFilingJob, &[Role::Requester, Role::Approver], Vec::new())
            .await?;
        let now = clock::now_ms();
        let result = async {
            if job.cancelled_at.is_some() {
                return Err(VaultError::FailedPrecondition(format!("filing job {job_id} is already cancelled")));
            }
            self.ctx.store.cancel_job(&job_id, &caller, draft.clone()).await?;
            self.ctx.store.job(&job_id).await?.ok_or(VaultError::Internal)
        }
        .await;
        let job = self.ctx.settled(draft, result).await?;
        Ok(Response::new(wire_job(&job, now)))
    }

    async fn list_purposes(
        &self,
        request: Request<pb::ListPurposesRequest>,
    ) -> Result<Response<pb::ListPurposesResponse>, Status> {
        let draft = AuditDraft::new("", Operation::ListPurposes, "");
        let (_, draft) = self.ctx.authenticate(&request, draft).await?;
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

#[cfg(test)]
mod tests {
    use super::check_note;

    #[test]
    fn notes_with_a_number_shaped_run_are_refused() {
        assert!(check_note("2026 年末調整 (12 名)").is_ok());
        assert!(check_note("see 6214-9832-0257").is_err());
        assert!(check_note("６２１４　９８３２　０２５７").is_err());
        assert!(check_note("01234567890").is_ok());
    }
}
