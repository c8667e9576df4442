//! State a database writer cannot forge: every row that a release decision,
//! or the answer to "which token is this number", depends on carries a tag
//! under the vault's [`StateKey`], which the database does not hold.
//!
//! - A **record** is tagged over its tenant, token, format, blind index, key
//!   version and creation time. Swapping two blind indexes, or moving a row to
//!   another token or tenant, breaks the tag, so tokenizing X can never
//!   answer Y's token. (The sealed number is itself bound to tenant, token and
//!   key version by its AEAD.)
//! - A **filing job's terms** (tenant, purpose, note, limit, creator, times)
//!   and its ordered token list are tagged once, at creation.
//! - A **filing job's state** (approval, cancellation, every token's release
//!   count, and `state_seq`) is tagged after every change, bound to the job id
//!   and its terms tag: a stamp copied from another job, or a count set back,
//!   does not verify.
//! - Replaying a job's *own* earlier state (row and tag from a backup) would
//!   verify, so the state also names `state_seq`, the audit entry that
//!   recorded its last change. Before every decision the core verifies the
//!   audit chain from where this process last verified it up to the locked
//!   head, and keeps each job's last allowed change from the entries that
//!   verified (`ChainWatch` in [`crate::vault`]); a job whose `state_seq` is
//!   older is refused, and so is every decision once the chain fails to
//!   verify or its head moves back. No query over the log's unauthenticated
//!   columns takes part. A database rolled back *whole* while the vault was
//!   stopped (rows, log tail and head together) is caught at the next start
//!   by the host's watermark ([`crate::vault::Watermark`]), the furthest
//!   position this host verified, kept outside the database. What stays open
//!   is an attacker who also rewrites that watermark (they hold the vault's
//!   host or, with SQLite, its data directory), or a host that never verified
//!   the part they cut: that needs the audit issue's signed checkpoints.
//!
//! A row that fails its check is refused as [`VaultError::DataLoss`] naming the
//! object (never a number), logged, and counted ([`Integrity::failures`]);
//! everything else keeps working.

use std::sync::atomic::{AtomicU64, Ordering};

use mnvault_keys::StateKey;

use crate::audit::{Operation, Outcome};
use crate::error::VaultError;
use crate::id::{TenantId, Token, TokenFormat};
use crate::job::{Job, JobTerms, Stamp};
use crate::store::{JobRow, RecordRow, StoreError};

/// Tag kinds: a tag of one kind never verifies as another.
mod kind {
    pub const RECORD: &[u8] = b"record";
    pub const JOB_TERMS: &[u8] = b"job-terms";
    pub const JOB_STATE: &[u8] = b"job-state";
    pub const TENANT_POLICY: &[u8] = b"tenant-policy";
    pub const POLICY_PROPOSAL: &[u8] = b"policy-proposal";
    pub const COLLECTION: &[u8] = b"collection";
    /// A re-issue collection: its own label over two more columns, so that
    /// neither kind of row can be passed off as the other, and rows written
    /// before re-issues existed keep their tags.
    pub const REISSUE_COLLECTION: &[u8] = b"reissue-collection";
    pub const COLLECTION_LINK: &[u8] = b"collection-link";
}

/// Operations whose allowed entries change a job's state; the rollback check
/// looks for the last of them.
pub const JOB_STATE_CHANGES: [Operation; 4] =
    [Operation::ApproveFilingJob, Operation::CancelFilingJob, Operation::Detokenize, Operation::ExportTenant];

/// The outcome of an entry that changed a job's state.
pub const CHANGED: Outcome = Outcome::Ok;

/// Computes and checks state tags; counts the rows that failed.
pub struct Integrity {
    key: StateKey,
    failures: AtomicU64,
}

impl std::fmt::Debug for Integrity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Integrity").field("failures", &self.failures()).finish_non_exhaustive()
    }
}

/// Whether a row's stored tag (absent in a row nobody tagged) is `expected`.
fn row_tag_matches(expected: &[u8; 32], stored: Option<&[u8]>) -> bool {
    stored.is_some_and(|tag| StateKey::matches(expected, tag))
}

/// A record whose binding to its tenant, token and blind index was checked.
#[derive(Debug, Clone)]
pub struct CheckedRecord {
    /// The token.
    pub token: Token,
    /// Its format.
    pub format: TokenFormat,
    /// Version of the key it is sealed under.
    pub key_version: u32,
    /// Unix milliseconds.
    pub created_at: i64,
}

impl Integrity {
    /// Checks and tags with `key`.
    pub fn new(key: StateKey) -> Self {
        Self { key, failures: AtomicU64::new(0) }
    }

    /// How many stored objects failed their check since the vault started.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// A tag of `kind` over `fields`, for state rows whose rules live in
    /// their own module (retention rows, tombstones: `crate::vault::retention`).
    pub(crate) fn tag_of<'a>(&self, kind: &[u8], fields: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
        self.key.tag(kind, fields)
    }

    /// The tag of a record row.
    pub fn record_tag(
        &self,
        tenant: &TenantId,
        token: &Token,
        format: TokenFormat,
        blind_index: &[u8],
        key_version: u32,
        created_at: i64,
    ) -> [u8; 32] {
        self.key.tag(
            kind::RECORD,
            [
                tenant.as_str().as_bytes(),
                token.as_str().as_bytes(),
                format.id().as_bytes(),
                blind_index,
                &key_version.to_be_bytes(),
                &created_at.to_be_bytes(),
            ],
        )
    }

    /// Parses a record row of `tenant` and checks its tag; `expected_index`,
    /// when given, must be the blind index the row was looked up by.
    pub fn check_record(
        &self,
        tenant: &TenantId,
        row: &RecordRow,
        expected_index: Option<&[u8]>,
    ) -> Result<CheckedRecord, VaultError> {
        let parsed = Token::parse(&row.token)
            .ok()
            .and_then(|token| TokenFormat::from_id(&row.format).map(|format| (token, format)));
        let Some((token, format)) = parsed else {
            return Err(self.tampered(format!("a record of tenant \"{tenant}\"")));
        };
        let expected = self.record_tag(tenant, &token, format, &row.blind_index, row.key_version, row.created_at);
        let tag_ok = row_tag_matches(&expected, row.tag.as_deref());
        if !tag_ok || expected_index.is_some_and(|index| index != row.blind_index.as_slice()) {
            return Err(self.tampered(format!("the record for token {token}")));
        }
        Ok(CheckedRecord { token, format, key_version: row.key_version, created_at: row.created_at })
    }

    /// The tag of a job's terms and token list.
    pub fn terms_tag(&self, terms: &JobTerms, tokens: &[Token]) -> [u8; 32] {
        let max = terms.max_releases_per_token.to_be_bytes();
        let created_at = terms.created_at.to_be_bytes();
        let expires_at = terms.expires_at.to_be_bytes();
        let count = (tokens.len() as u64).to_be_bytes();
        let head: [&[u8]; 10] = [
            terms.job_id.as_str().as_bytes(),
            terms.tenant.as_str().as_bytes(),
            terms.purpose.id().as_bytes(),
            terms.note.as_str().as_bytes(),
            &max,
            terms.created_by.as_str().as_bytes(),
            &created_at,
            &expires_at,
            // The count makes the token list's end unambiguous.
            b"tokens",
            &count,
        ];
        let required = terms.approvals_required.to_be_bytes();
        // A job of one approval tags as jobs did before policies, so theirs still verify.
        let approvals: Vec<&[u8]> =
            if terms.approvals_required > 1 { vec![b"approvals", &required] } else { Vec::new() };
        self.key
            .tag(kind::JOB_TERMS, head.into_iter().chain(tokens.iter().map(|t| t.as_str().as_bytes())).chain(approvals))
    }

    /// The tag of a job's state: its stamps, release counts and `state_seq`,
    /// bound to its id and terms tag.
    pub fn state_tag(&self, job: &Job, terms_tag: &[u8; 32]) -> [u8; 32] {
        fn stamp(stamp: &Option<Stamp>) -> [Vec<u8>; 2] {
            match stamp {
                // The marker byte fixes how many fields follow: one here, two otherwise.
                None => [vec![0], Vec::new()],
                Some(Stamp { by, at }) => [[&[1u8][..], &at.to_be_bytes()].concat(), by.as_str().as_bytes().to_vec()],
            }
        }
        let approved = stamp(&job.approved);
        let cancelled = stamp(&job.cancelled);
        // Like the terms: a job without earlier approvals tags as before.
        let earlier_text = crate::job::encode_approvals(&job.earlier_approvals);
        let state_seq = job.state_seq.to_be_bytes();
        let count = (job.tokens.len() as u64).to_be_bytes();
        let counts: Vec<[u8; 4]> = job.tokens.iter().map(|(_, releases)| releases.to_be_bytes()).collect();
        let head: [&[u8]; 8] = [
            job.terms.job_id.as_str().as_bytes(),
            terms_tag,
            &approved[0],
            &approved[1],
            &cancelled[0],
            &cancelled[1],
            &state_seq,
            &count,
        ];
        let per_token = job
            .tokens
            .iter()
            .zip(&counts)
            .flat_map(|((token, _), releases)| [token.as_str().as_bytes(), &releases[..]]);
        let earlier: Vec<&[u8]> = if job.earlier_approvals.is_empty() {
            Vec::new()
        } else {
            vec![b"earlier-approvals", earlier_text.as_bytes()]
        };
        self.key.tag(kind::JOB_STATE, head.into_iter().chain(per_token).chain(earlier))
    }

    /// The tag of a tenant's applied policy row, bound to the tenant, the
    /// change, who proposed and approved it, and the audit entry that
    /// recorded the approval.
    pub fn tenant_policy_tag(&self, row: &crate::store::TenantPolicyRow) -> [u8; 32] {
        self.key.tag(
            kind::TENANT_POLICY,
            [
                row.tenant.as_bytes(),
                row.policy.as_bytes(),
                row.change_id.as_bytes(),
                row.proposed_by.as_bytes(),
                row.approved_by.as_bytes(),
                &row.approved_at.to_be_bytes(),
                &row.applied_seq.to_be_bytes(),
            ],
        )
    }

    /// The tag of a proposed policy change, bound to its tenant, id and the
    /// audit entry that recorded it.
    pub fn policy_proposal_tag(&self, row: &crate::store::PolicyProposalRow) -> [u8; 32] {
        self.key.tag(
            kind::POLICY_PROPOSAL,
            [
                row.tenant.as_bytes(),
                row.change_id.as_bytes(),
                row.policy.as_bytes(),
                row.proposed_by.as_bytes(),
                &row.proposed_at.to_be_bytes(),
                &row.proposed_seq.to_be_bytes(),
            ],
        )
    }

    /// The tag of a collection's row: every column, so a database writer can
    /// neither move a collection to another tenant, reopen a settled one,
    /// lengthen its life nor swap its tokens.
    pub fn collection_tag(&self, row: &crate::store::CollectionRow) -> [u8; 32] {
        let columns = [
            row.collection_id.as_bytes(),
            row.tenant.as_bytes(),
            &row.link_hash[..],
            row.reference.as_bytes(),
            row.relations.as_bytes(),
            row.purposes.as_bytes(),
            row.created_by.as_bytes(),
            &row.created_at.to_be_bytes(),
            &row.expires_at.to_be_bytes(),
            row.state.as_bytes(),
            &row.settled_at.to_be_bytes(),
            row.tokens.as_bytes(),
            &row.changed_seq.to_be_bytes(),
        ];
        if row.reissue_token.is_empty() && row.superseded_token.is_empty() {
            return self.key.tag(kind::COLLECTION, columns);
        }
        let reissue = [row.reissue_token.as_bytes(), row.superseded_token.as_bytes()];
        self.key.tag(kind::REISSUE_COLLECTION, columns.into_iter().chain(reissue))
    }

    /// The keyed hash a collection is found by: the link's secret is never
    /// stored, and a database writer cannot make a link of their own work.
    pub fn link_hash(&self, link: &crate::collection::LinkSecret) -> [u8; 32] {
        self.key.tag(kind::COLLECTION_LINK, [link.expose().as_bytes()])
    }

    /// Whether a row's stored tag is `expected`; a row that fails is
    /// counted and named as tampered.
    pub fn check_tag(
        &self,
        expected: &[u8; 32],
        stored: Option<&[u8]>,
        object: impl FnOnce() -> String,
    ) -> Result<(), VaultError> {
        if row_tag_matches(expected, stored) {
            Ok(())
        } else {
            Err(self.tampered(object()))
        }
    }

    /// Parses a job row and checks both of its tags.
    pub fn check_job(&self, row: JobRow) -> Result<Job, VaultError> {
        self.check_job_and_terms(row).map(|(job, _)| job)
    }

    /// [`Integrity::check_job`], also handing back the verified terms tag,
    /// which tags the job's next state.
    pub fn check_job_and_terms(&self, row: JobRow) -> Result<(Job, [u8; 32]), VaultError> {
        let job_id = row.job_id.clone();
        let terms_tag_stored = row.terms_tag.clone();
        let state_tag = row.state_tag.clone();
        let job = match Job::from_row(row) {
            Ok(job) => job,
            Err(StoreError::Corrupt { what }) => {
                tracing::error!(what, "a filing job row does not parse");
                return Err(self.tampered(match crate::id::JobId::parse(&job_id) {
                    Ok(id) => format!("filing job {id}"),
                    Err(_) => "a filing job".into(),
                }));
            }
            Err(other) => return Err(other.into()),
        };
        let described = || format!("filing job {}", job.terms.job_id);
        let tokens: Vec<Token> = job.tokens.iter().map(|(token, _)| token.clone()).collect();
        let terms_tag = self.terms_tag(&job.terms, &tokens);
        if !row_tag_matches(&terms_tag, terms_tag_stored.as_deref()) {
            return Err(self.tampered(described()));
        }
        if !row_tag_matches(&self.state_tag(&job, &terms_tag), state_tag.as_deref()) {
            return Err(self.tampered(described()));
        }
        Ok((job, terms_tag))
    }

    /// Refuses a job whose state is older than its audit log: an allowed
    /// change recorded after the one its state names means the row was
    /// rolled back to an earlier, genuinely tagged, state.
    pub fn check_not_rolled_back(&self, job: &Job, last_change: Option<u64>) -> Result<(), VaultError> {
        match last_change {
            Some(seq) if seq > job.state_seq => {
                tracing::error!(job_id = %job.terms.job_id, state_seq = job.state_seq, last_change = seq,
                    "a filing job's state is older than its audit log");
                Err(self.tampered(format!("filing job {}", job.terms.job_id)))
            }
            _ => Ok(()),
        }
    }

    /// Logs and counts a tampered object; the error names it, never a number.
    pub(crate) fn tampered(&self, object: String) -> VaultError {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::error!(%object, integrity_failures = failures, "stored object failed its integrity check");
        VaultError::DataLoss(format!(
            "{object} failed its integrity check (the database was changed outside the vault), so it was not used \
             and nothing was released; tell the vault's operator"
        ))
    }
}

#[cfg(test)]
mod tests {
    use mnvault_keys::{KeyMaterial, KEY_LEN};

    use super::*;
    use crate::id::{JobId, Principal};
    use crate::mint::{draw_job_id, draw_token};
    use crate::purpose::Purpose;
    use crate::text::FreeText;

    fn integrity(byte: u8) -> Integrity {
        Integrity::new(StateKey::new(&KeyMaterial::from_bytes([byte; KEY_LEN])))
    }

    fn principal(name: &str) -> Principal {
        Principal::parse(name).unwrap()
    }

    /// A job's row as a store would hand it back, tagged by `integrity`.
    fn stored_job(integrity: &Integrity, job_id: &JobId, tokens: &[Token], approved: bool) -> JobRow {
        let terms = JobTerms {
            job_id: job_id.clone(),
            tenant: TenantId::parse("demo").unwrap(),
            purpose: Purpose::WithholdingSlip,
            note: FreeText::default(),
            max_releases_per_token: 1,
            approvals_required: 1,
            created_by: principal("requester"),
            created_at: 1,
            expires_at: 2,
        };
        let terms_tag = integrity.terms_tag(&terms, tokens);
        let approved = approved.then(|| Stamp { by: principal("approver"), at: 1 });
        let job = Job {
            terms,
            approved: approved.clone(),
            earlier_approvals: Vec::new(),
            cancelled: None,
            tokens: tokens.iter().map(|t| (t.clone(), 0)).collect(),
            state_seq: 7,
        };
        let state_tag = integrity.state_tag(&job, &terms_tag);
        JobRow {
            job_id: job_id.to_string(),
            tenant: "demo".into(),
            purpose: Purpose::WithholdingSlip.id().into(),
            note: String::new(),
            max_releases_per_token: 1,
            created_by: "requester".into(),
            created_at: 1,
            expires_at: 2,
            approved_by: approved.as_ref().map(|s| s.by.to_string()),
            approved_at: approved.as_ref().map(|s| s.at),
            cancelled_by: None,
            cancelled_at: None,
            approvals_required: 1,
            earlier_approvals: String::new(),
            tokens: tokens.iter().map(|t| (t.to_string(), 0)).collect(),
            terms_tag: Some(terms_tag.to_vec()),
            state_tag: Some(state_tag.to_vec()),
            state_seq: 7,
        }
    }

    #[test]
    fn a_genuine_job_passes_and_every_edit_fails() {
        let integrity = integrity(1);
        let tokens = [draw_token(TokenFormat::Opaque), draw_token(TokenFormat::Opaque)];
        let row = stored_job(&integrity, &draw_job_id(), &tokens, true);
        assert!(integrity.check_job(row.clone()).is_ok());
        type Edit = Box<dyn Fn(&mut JobRow)>;
        let edits: Vec<(&str, Edit)> = vec![
            ("release count", Box::new(|r| r.tokens[0].1 = 1)),
            ("limit", Box::new(|r| r.max_releases_per_token = 2)),
            ("expiry", Box::new(|r| r.expires_at = 3)),
            ("approver", Box::new(|r| r.approved_by = Some("other".into()))),
            (
                "cancellation",
                Box::new(|r| {
                    r.cancelled_by = Some("x".into());
                    r.cancelled_at = Some(1);
                }),
            ),
            ("token order", Box::new(|r| r.tokens.swap(0, 1))),
            ("token removed", Box::new(|r| drop(r.tokens.pop()))),
            ("state_seq", Box::new(|r| r.state_seq = 8)),
            ("approvals required", Box::new(|r| r.approvals_required = 2)),
            ("earlier approval", Box::new(|r| r.earlier_approvals = "1 other".into())),
            ("missing tag", Box::new(|r| r.state_tag = None)),
            ("short tag", Box::new(|r| r.terms_tag.as_mut().unwrap().truncate(31))),
        ];
        for (what, edit) in edits {
            let mut edited = row.clone();
            edit(&mut edited);
            assert!(matches!(integrity.check_job(edited), Err(VaultError::DataLoss(_))), "{what}");
        }
        assert_eq!(integrity.failures(), 12);
        assert!(matches!(self::integrity(2).check_job(row), Err(VaultError::DataLoss(_))), "another vault's key");
    }

    #[test]
    fn one_jobs_approval_and_state_do_not_fit_another() {
        let integrity = integrity(1);
        let tokens = [draw_token(TokenFormat::Opaque)];
        let approved = stored_job(&integrity, &draw_job_id(), &tokens, true);
        let mut pending = stored_job(&integrity, &draw_job_id(), &tokens, false);
        pending.approved_by = approved.approved_by.clone();
        pending.approved_at = approved.approved_at;
        pending.state_tag = approved.state_tag.clone();
        assert!(matches!(integrity.check_job(pending), Err(VaultError::DataLoss(_))));
    }

    #[test]
    fn a_state_older_than_the_log_is_refused() {
        let integrity = integrity(1);
        let job = integrity.check_job(stored_job(&integrity, &draw_job_id(), &[draw_token(TokenFormat::Opaque)], true));
        let job = job.unwrap();
        assert!(integrity.check_not_rolled_back(&job, None).is_ok());
        assert!(integrity.check_not_rolled_back(&job, Some(7)).is_ok());
        assert!(matches!(integrity.check_not_rolled_back(&job, Some(8)), Err(VaultError::DataLoss(_))));
    }

    #[test]
    fn a_record_is_bound_to_its_token_index_and_tenant() {
        let integrity = integrity(1);
        let tenant = TenantId::parse("demo").unwrap();
        let token = draw_token(TokenFormat::Opaque);
        let tag = integrity.record_tag(&tenant, &token, TokenFormat::Opaque, &[5; 32], 1, 9);
        let row = RecordRow {
            token: token.to_string(),
            format: "opaque".into(),
            blind_index: vec![5; 32],
            key_version: 1,
            created_at: 9,
            tag: Some(tag.to_vec()),
        };
        assert_eq!(integrity.check_record(&tenant, &row, Some(&[5; 32])).unwrap().token, token);
        let other = TenantId::parse("other").unwrap();
        assert!(integrity.check_record(&other, &row, None).is_err(), "another tenant");
        assert!(integrity.check_record(&tenant, &row, Some(&[6; 32])).is_err(), "looked up by another index");
        let moved = RecordRow { token: draw_token(TokenFormat::Opaque).to_string(), ..row.clone() };
        assert!(integrity.check_record(&tenant, &moved, None).is_err(), "another token");
        let swapped = RecordRow { blind_index: vec![6; 32], ..row.clone() };
        assert!(integrity.check_record(&tenant, &swapped, Some(&[6; 32])).is_err(), "swapped index");
        let untagged = RecordRow { tag: None, ..row };
        assert!(integrity.check_record(&tenant, &untagged, None).is_err(), "no tag");
    }
}
