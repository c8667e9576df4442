//! Filing jobs: the only way a number leaves the vault, and every rule of it.
//!
//! A job declares a lawful purpose, its tokens and an expiry; a principal
//! other than its creator approves it; a filer then releases listed tokens,
//! each at most `max_releases_per_token` times, until the job expires or is
//! cancelled. The state is derived from the stamps and the time, never stored,
//! so there is one definition of it: [`Job::state`].

use std::collections::HashSet;

use crate::error::VaultError;
use crate::id::{JobId, Principal, TenantId, Token};
use crate::purpose::Purpose;
use crate::store::{JobRow, StoreError};

use crate::tenant_policy::{Limit, LimitRefusal};
use crate::text::FreeText;

/// The stored form of approvals: one `<unix ms> <principal>` line each.
pub fn encode_approvals(approvals: &[Stamp]) -> String {
    approvals.iter().map(|s| format!("{} {}", s.at, s.by)).collect::<Vec<_>>().join("\n")
}

/// Reads [`encode_approvals`]'s form; `None` when it is not that form.
fn decode_approvals(text: &str) -> Option<Vec<Stamp>> {
    if text.is_empty() {
        return Some(Vec::new());
    }
    let approvals = text
        .split('\n')
        .map(|line| {
            let (at, by) = line.split_once(' ')?;
            Some(Stamp { by: Principal::parse_recorded(by).ok()?, at: at.parse().ok()? })
        })
        .collect::<Option<Vec<_>>>()?;
    (encode_approvals(&approvals) == text && approvals.len() < crate::tenant_policy::MAX_APPROVALS as usize)
        .then_some(approvals)
}

/// Longest a job may run: filings are prepared in days, not seasons.
pub const MAX_JOB_LIFETIME_MS: i64 = 90 * 24 * 3600 * 1000;

/// Most tokens one job may list.
pub const MAX_JOB_TOKENS: usize = 100_000;

/// What a filing job declares when it is created; never changes afterwards.
#[derive(Debug, Clone)]
pub struct JobTerms {
    /// Random identifier.
    pub job_id: JobId,
    /// Tenant whose tokens it lists.
    pub tenant: TenantId,
    /// The lawful purpose.
    pub purpose: Purpose,
    /// Free text for reviewers.
    pub note: FreeText,
    /// Releases allowed per token.
    pub max_releases_per_token: u32,
    /// Distinct persons, none of them its creator, who must approve it: the
    /// tenant's policy when it was created.
    pub approvals_required: u32,
    /// Principal that created it.
    pub created_by: Principal,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
    pub expires_at: i64,
}

/// Who did something to a job, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// The principal.
    pub by: Principal,
    /// Unix milliseconds.
    pub at: i64,
}

/// A filing job as stored.
#[derive(Debug, Clone)]
pub struct Job {
    /// What it declared.
    pub terms: JobTerms,
    /// The approval that completed its approvals, once approved.
    pub approved: Option<Stamp>,
    /// Approvals given while it still needed more, in order.
    pub earlier_approvals: Vec<Stamp>,
    /// Its cancellation, once cancelled.
    pub cancelled: Option<Stamp>,
    /// Tokens with their release counts, in order.
    pub tokens: Vec<(Token, u32)>,
    /// Sequence number of the audit entry that recorded the last change of
    /// state (0 before any); see [`crate::integrity`].
    pub state_seq: u64,
}

/// Where a job stands at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Created, waiting for a second person.
    PendingApproval,
    /// Approved: releases listed tokens until it expires.
    Approved,
    /// Cancelled: releases nothing more.
    Cancelled,
    /// Past its expiry: releases nothing more.
    Expired,
}

/// What a requester asks for when creating a job (already parsed).
#[derive(Debug, Clone)]
pub struct JobRequest {
    /// Tenant.
    pub tenant: TenantId,
    /// Purpose.
    pub purpose: Purpose,
    /// Tokens as listed (duplicates allowed; the job keeps the first of each).
    pub tokens: Vec<Token>,
    /// Unix milliseconds.
    pub expires_at: i64,
    /// Releases per token; 0 means 1.
    pub max_releases_per_token: u32,
    /// Free text.
    pub note: FreeText,
}

impl JobRequest {
    /// The terms of the job this request creates at `now`, and its distinct
    /// tokens in order; refused when the request breaks a rule.
    pub fn terms(
        &self,
        job_id: JobId,
        created_by: &Principal,
        approvals_required: u32,
        now: i64,
    ) -> Result<(JobTerms, Vec<Token>), VaultError> {
        let mut seen = HashSet::new();
        let tokens: Vec<Token> = self.tokens.iter().filter(|t| seen.insert(*t)).cloned().collect();
        // A tenant export covers every record of the tenant up to its creation, once.
        let whole_tenant = self.purpose == Purpose::TenantExport;
        if whole_tenant && (!tokens.is_empty() || self.max_releases_per_token > 1) {
            return Err(VaultError::InvalidArgument(
                "a tenant-export job lists no tokens and releases once: it covers every token of the tenant as of \
                 its creation"
                    .into(),
            ));
        }
        if tokens.is_empty() && !whole_tenant {
            return Err(VaultError::InvalidArgument("a filing job must list at least one token".into()));
        }
        if tokens.len() > MAX_JOB_TOKENS {
            return Err(VaultError::InvalidArgument(format!(
                "a filing job may list at most {MAX_JOB_TOKENS} tokens; split it"
            )));
        }
        if self.expires_at <= now {
            return Err(VaultError::InvalidArgument(format!(
                "the expiry {} is in the past",
                crate::clock::rfc3339(self.expires_at)
            )));
        }
        if self.expires_at - now > MAX_JOB_LIFETIME_MS {
            return Err(VaultError::InvalidArgument("a filing job may run at most 90 days".into()));
        }
        let terms = JobTerms {
            job_id,
            tenant: self.tenant.clone(),
            purpose: self.purpose,
            note: self.note.clone(),
            max_releases_per_token: self.max_releases_per_token.max(1),
            approvals_required: approvals_required.max(1),
            created_by: created_by.clone(),
            created_at: now,
            expires_at: self.expires_at,
        };
        Ok((terms, tokens))
    }
}

impl Job {
    /// Parses a stored row; a column that does not parse is corrupt. Its tags
    /// are checked by [`crate::integrity::Integrity::check_job`], the only
    /// caller.
    pub fn from_row(row: JobRow) -> Result<Self, StoreError> {
        fn corrupt<E>(what: &'static str) -> impl Fn(E) -> StoreError {
            move |_| StoreError::Corrupt { what }
        }
        let stamp = |by: Option<String>, at: Option<i64>, what| -> Result<Option<Stamp>, StoreError> {
            match (by, at) {
                (Some(by), Some(at)) => {
                    Ok(Some(Stamp { by: Principal::parse_recorded(&by).map_err(corrupt(what))?, at }))
                }
                (None, None) => Ok(None),
                _ => Err(StoreError::Corrupt { what }),
            }
        };
        let tokens = row
            .tokens
            .into_iter()
            .map(|(token, releases)| {
                let token = Token::parse(&token).map_err(corrupt("filing_job_tokens.token"))?;
                let releases = u32::try_from(releases).map_err(corrupt("filing_job_tokens.releases"))?;
                Ok((token, releases))
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Job {
            terms: JobTerms {
                job_id: JobId::parse(&row.job_id).map_err(corrupt("filing_jobs.job_id"))?,
                tenant: TenantId::parse(&row.tenant).map_err(corrupt("filing_jobs.tenant"))?,
                purpose: row.purpose.parse::<Purpose>().map_err(corrupt("filing_jobs.purpose"))?,
                note: FreeText::parse(&row.note, "note").map_err(corrupt("filing_jobs.note"))?,
                max_releases_per_token: u32::try_from(row.max_releases_per_token)
                    .ok()
                    .filter(|max| *max > 0)
                    .ok_or(StoreError::Corrupt { what: "filing_jobs.max_releases_per_token" })?,
                approvals_required: u32::try_from(row.approvals_required)
                    .ok()
                    .filter(|n| (1..=crate::tenant_policy::MAX_APPROVALS).contains(n))
                    .ok_or(StoreError::Corrupt { what: "filing_jobs.approvals_required" })?,
                created_by: Principal::parse_recorded(&row.created_by).map_err(corrupt("filing_jobs.created_by"))?,
                created_at: row.created_at,
                expires_at: row.expires_at,
            },
            approved: stamp(row.approved_by, row.approved_at, "filing_jobs.approved_by")?,
            earlier_approvals: decode_approvals(&row.earlier_approvals)
                .ok_or(StoreError::Corrupt { what: "filing_jobs.earlier_approvals" })?,
            cancelled: stamp(row.cancelled_by, row.cancelled_at, "filing_jobs.cancelled_by")?,
            tokens,
            state_seq: u64::try_from(row.state_seq).map_err(corrupt("filing_jobs.state_seq"))?,
        })
    }

    /// The job's state at `now`: cancellation wins, then expiry, then approval.
    pub fn state(&self, now: i64) -> JobState {
        if self.cancelled.is_some() {
            JobState::Cancelled
        } else if self.terms.expires_at <= now {
            JobState::Expired
        } else if self.approved.is_some() {
            JobState::Approved
        } else {
            JobState::PendingApproval
        }
    }

    /// Refuses unless `approver` may approve the job at `now`: it is pending,
    /// and the approver is not the person who created it (whatever
    /// certificate either used: persons are compared, not principals).
    pub fn check_approval(&self, approver: &Principal, now: i64) -> Result<(), VaultError> {
        let job_id = &self.terms.job_id;
        if self.terms.created_by.is_same_person(approver) {
            let person = approver.person();
            return Err(VaultError::PermissionDenied(format!(
                "{person} created filing job {job_id}, so {person} cannot approve it, under any certificate; another \
                 approver must"
            )));
        }
        if let Some(earlier) = self.earlier_approvals.iter().find(|s| s.by.is_same_person(approver)) {
            let person = approver.person();
            return Err(VaultError::PermissionDenied(format!(
                "{person} approved filing job {job_id} already (as {}); it needs {} approvals by distinct persons, so \
                 another approver must",
                earlier.by, self.terms.approvals_required
            )));
        }
        match self.state(now) {
            JobState::PendingApproval => Ok(()),
            JobState::Approved => Err(VaultError::FailedPrecondition(format!(
                "filing job {job_id} is already approved by {}",
                self.approved.as_ref().map_or("?", |s| s.by.as_str())
            ))),
            JobState::Cancelled => {
                Err(VaultError::FailedPrecondition(format!("filing job {job_id} was cancelled; it cannot be approved")))
            }
            JobState::Expired => Err(VaultError::FailedPrecondition(format!(
                "filing job {job_id} expired at {}; it cannot be approved",
                crate::clock::rfc3339(self.terms.expires_at)
            ))),
        }
    }

    /// Records `approver`'s approval (checked by [`Job::check_approval`]):
    /// it completes the job's approvals, or waits for more. Returns whether
    /// the job is now approved.
    pub fn add_approval(&mut self, approval: Stamp) -> bool {
        if self.earlier_approvals.len() + 1 >= self.terms.approvals_required as usize {
            self.approved = Some(approval);
            true
        } else {
            self.earlier_approvals.push(approval);
            false
        }
    }

    /// Every approval given, in order.
    pub fn approvals(&self) -> impl Iterator<Item = &Stamp> {
        self.earlier_approvals.iter().chain(&self.approved)
    }

    /// Refuses to cancel a job that is already cancelled.
    pub fn check_cancel(&self) -> Result<(), VaultError> {
        match &self.cancelled {
            Some(_) => {
                Err(VaultError::FailedPrecondition(format!("filing job {} is already cancelled", self.terms.job_id)))
            }
            None => Ok(()),
        }
    }

    /// What a release asks for: `asked`, or every listed token when it is
    /// empty, in order and without duplicates.
    pub fn tokens_to_release(&self, asked: &[Token]) -> Vec<Token> {
        if asked.is_empty() {
            return self.tokens.iter().map(|(token, _)| token.clone()).collect();
        }
        let mut seen = HashSet::new();
        asked.iter().filter(|t| seen.insert(*t)).cloned().collect()
    }

    /// Which of `tokens` the job lists: only these may be recorded in an
    /// audit entry (a token the caller made up may be a mistyped number).
    pub fn listed_of(&self, tokens: &[Token]) -> Vec<Token> {
        let listed: HashSet<&Token> = self.tokens.iter().map(|(token, _)| token).collect();
        tokens.iter().filter(|token| listed.contains(token)).cloned().collect()
    }

    /// Refuses unless every one of `tokens` may be released at `now`: the job
    /// is approved and unexpired, each token is listed and under its limit.
    /// All or nothing: one refused token refuses the whole release. A refusal
    /// names a token by its position, never by its text.
    pub fn check_release(&self, tokens: &[Token], now: i64) -> Result<(), VaultError> {
        let job_id = &self.terms.job_id;
        if self.terms.purpose == Purpose::TenantExport {
            return Err(VaultError::FailedPrecondition(format!(
                "filing job {job_id} is a tenant export: it releases only as an encrypted export (`mnvault tenant \
                 export`), never through Detokenize"
            )));
        }
        match self.state(now) {
            JobState::Approved => {}
            JobState::PendingApproval if self.earlier_approvals.is_empty() => {
                return Err(VaultError::FailedPrecondition(format!(
                    "filing job {job_id} has not been approved; {} person(s) other than {} must approve it first",
                    self.terms.approvals_required, self.terms.created_by
                )))
            }
            JobState::PendingApproval => {
                return Err(VaultError::FailedPrecondition(format!(
                    "filing job {job_id} has {} of the {} approvals it needs; persons other than {} and the earlier \
                     approvers must approve it first",
                    self.earlier_approvals.len(),
                    self.terms.approvals_required,
                    self.terms.created_by
                )))
            }
            JobState::Cancelled => {
                return Err(VaultError::FailedPrecondition(format!(
                    "filing job {job_id} was cancelled by {}; create a new job",
                    self.cancelled.as_ref().map_or("?", |s| s.by.as_str())
                )))
            }
            JobState::Expired => {
                return Err(VaultError::FailedPrecondition(format!(
                    "filing job {job_id} expired at {}; create a new job",
                    crate::clock::rfc3339(self.terms.expires_at)
                )))
            }
        }
        let listed: std::collections::HashMap<&Token, u32> = self.tokens.iter().map(|(t, r)| (t, *r)).collect();
        let max = self.terms.max_releases_per_token;
        for (position, token) in (1usize..).zip(tokens) {
            match listed.get(token) {
                None => {
                    return Err(LimitRefusal {
                        limit: Limit::OutsideJob,
                        message: format!(
                            "token #{position} of the release is not listed in filing job {job_id} ({}); only listed \
                             tokens can be released",
                            Limit::OutsideJob
                        ),
                    }
                    .into())
                }
                Some(releases) if *releases >= max => {
                    return Err(VaultError::FailedPrecondition(format!(
                        "token #{position} of the release has already been released {releases} time(s), the most \
                         filing job {job_id} allows"
                    )))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::TokenFormat;
    use crate::mint::{draw_job_id, draw_token};

    const NOW: i64 = 1_800_000_000_000;

    fn principal(name: &str) -> Principal {
        Principal::parse(name).unwrap()
    }

    fn job(tokens: &[Token]) -> Job {
        let request = JobRequest {
            tenant: TenantId::parse("demo").unwrap(),
            purpose: Purpose::WithholdingSlip,
            tokens: tokens.to_vec(),
            expires_at: NOW + 3_600_000,
            max_releases_per_token: 1,
            note: FreeText::default(),
        };
        let (terms, tokens) = request.terms(draw_job_id(), &principal("requester"), 1, NOW).unwrap();
        Job {
            terms,
            approved: None,
            earlier_approvals: Vec::new(),
            cancelled: None,
            tokens: tokens.into_iter().map(|t| (t, 0)).collect(),
            state_seq: 0,
        }
    }

    #[test]
    fn the_state_follows_stamps_and_time() {
        let mut job = job(&[draw_token(TokenFormat::Opaque)]);
        assert_eq!(job.state(NOW), JobState::PendingApproval);
        job.approved = Some(Stamp { by: principal("approver"), at: NOW });
        assert_eq!(job.state(NOW), JobState::Approved);
        assert_eq!(job.state(NOW + 3_600_000), JobState::Expired);
        job.cancelled = Some(Stamp { by: principal("requester"), at: NOW });
        assert_eq!(job.state(NOW), JobState::Cancelled);
    }

    #[test]
    fn the_creator_never_approves_and_only_a_pending_job_is_approved() {
        let mut job = job(&[draw_token(TokenFormat::Opaque)]);
        assert!(matches!(job.check_approval(&principal("requester"), NOW), Err(VaultError::PermissionDenied(_))));
        assert!(job.check_approval(&principal("approver"), NOW).is_ok());
        assert!(matches!(
            job.check_approval(&principal("approver"), NOW + 3_600_000),
            Err(VaultError::FailedPrecondition(_))
        ));
        job.approved = Some(Stamp { by: principal("approver"), at: NOW });
        assert!(matches!(job.check_approval(&principal("other"), NOW), Err(VaultError::FailedPrecondition(_))));
    }

    #[test]
    fn one_person_under_two_certificates_never_approves_their_own_job() {
        let identity = |uri: &str| crate::identity::Identity::parse(uri).unwrap().principal();
        let mut job = job(&[draw_token(TokenFormat::Opaque)]);
        job.terms.created_by = identity("spiffe://td/tenant/acme/requester/alice");
        let same_person = identity("spiffe://td/tenant/acme/approver/alice");
        let (code, message) = match job.check_approval(&same_person, NOW) {
            Err(VaultError::PermissionDenied(message)) => ("denied", message),
            other => panic!("{other:?}"),
        };
        assert_eq!(code, "denied");
        assert!(message.starts_with("alice created filing job"), "{message}");
        assert!(job.check_approval(&identity("spiffe://td/tenant/acme/approver/bob"), NOW).is_ok());
    }

    #[test]
    fn a_job_needing_two_approvals_waits_for_a_second_distinct_person() {
        let identity = |uri: &str| crate::identity::Identity::parse(uri).unwrap().principal();
        let mut job = job(&[draw_token(TokenFormat::Opaque)]);
        job.terms.approvals_required = 2;
        let bob = identity("spiffe://td/tenant/acme/approver/bob");
        job.check_approval(&bob, NOW).unwrap();
        assert!(!job.add_approval(Stamp { by: bob, at: NOW }));
        assert_eq!(job.state(NOW), JobState::PendingApproval);
        assert!(
            matches!(job.check_release(&[], NOW), Err(VaultError::FailedPrecondition(m)) if m.contains("1 of the 2"))
        );
        // bob again, under another certificate of his: refused.
        let bob_again = identity("spiffe://td/tenant/acme/auditor/bob");
        assert!(
            matches!(job.check_approval(&bob_again, NOW), Err(VaultError::PermissionDenied(m)) if m.contains("already"))
        );
        let carol = identity("spiffe://td/tenant/acme/approver/carol");
        job.check_approval(&carol, NOW).unwrap();
        assert!(job.add_approval(Stamp { by: carol, at: NOW + 1 }));
        assert_eq!(job.state(NOW), JobState::Approved);
        assert_eq!(job.approvals().count(), 2);
        let stored = encode_approvals(&job.earlier_approvals);
        assert_eq!(decode_approvals(&stored), Some(job.earlier_approvals.clone()));
        for bad in [format!("{stored}\n"), format!(" {stored}"), "x spiffe://td/tenant/acme/approver/bob".into()] {
            assert_eq!(decode_approvals(&bad), None, "{bad}");
        }
    }

    #[test]
    fn only_listed_tokens_under_their_limit_are_released_from_an_approved_job() {
        let listed = draw_token(TokenFormat::Opaque);
        let other = draw_token(TokenFormat::Opaque);
        let mut job = job(std::slice::from_ref(&listed));
        assert!(matches!(
            job.check_release(std::slice::from_ref(&listed), NOW),
            Err(VaultError::FailedPrecondition(_))
        ));
        job.approved = Some(Stamp { by: principal("approver"), at: NOW });
        assert!(job.check_release(std::slice::from_ref(&listed), NOW).is_ok());
        assert!(matches!(
            job.check_release(&[listed.clone(), other.clone()], NOW),
            Err(VaultError::Limit(LimitRefusal { limit: Limit::OutsideJob, .. }))
        ));
        job.tokens[0].1 = 1;
        assert!(matches!(
            job.check_release(std::slice::from_ref(&listed), NOW),
            Err(VaultError::FailedPrecondition(_))
        ));
        assert_eq!(job.tokens_to_release(&[]), vec![listed.clone()]);
        assert_eq!(job.tokens_to_release(&[other.clone(), other.clone()]), vec![other]);
    }

    #[test]
    fn a_request_is_checked_for_tokens_expiry_and_lifetime() {
        let token = draw_token(TokenFormat::Opaque);
        let request = JobRequest {
            tenant: TenantId::parse("demo").unwrap(),
            purpose: Purpose::WithholdingSlip,
            tokens: vec![token.clone(), token.clone()],
            expires_at: NOW + 1,
            max_releases_per_token: 0,
            note: FreeText::default(),
        };
        let (terms, tokens) = request.terms(draw_job_id(), &principal("requester"), 1, NOW).unwrap();
        assert_eq!((tokens.len(), terms.max_releases_per_token), (1, 1));
        let refused = |request: JobRequest| request.terms(draw_job_id(), &principal("r"), 1, NOW).is_err();
        assert!(refused(JobRequest { tokens: vec![], ..request.clone() }));
        assert!(refused(JobRequest { expires_at: NOW, ..request.clone() }));
        assert!(refused(JobRequest { expires_at: NOW + MAX_JOB_LIFETIME_MS + 1, ..request }));
    }
}
