//! [`super::VaultCore`] operations of tenant offboarding: exporting a tenant's
//! records encrypted to the client ([`VaultCore::start_export`],
//! [`VaultCore::export_next`]) and shredding it ([`VaultCore::shred_tenant`]).
//! The rules are in [`crate::offboarding`].
//!
//! An export runs page by page, each page one transaction: lock the job
//! (chain verified, rollback checked), check it may still export, read and
//! check a page of records, append the page's entry naming its tokens, which
//! also moves the job's state (so the job's own row says it has exported),
//! commit; only then are the page's numbers encrypted and the ciphertext
//! handed out. Memory holds one page, whatever the tenant's size.
//!
//! "Has this job exported?" is read from the entry the job's state names
//! (`state_seq`), checked under the chain key on its own: the job row's tags
//! bind `state_seq`, and a process knows each job's last change from entries
//! it verified itself, so neither the row nor that entry can be set back.

use std::sync::Arc;

use mnvault_keys::TenantKeys;
use zeroize::Zeroizing;

use super::{append, commit_audited, open_record, VaultCore};
use crate::audit::{AuditDraft, ChainVerifier, Operation};
use crate::authz::Role;
use crate::clock;
use crate::error::VaultError;
use crate::id::{JobId, Principal, TenantId, Token};
use crate::integrity::CHANGED;
use crate::job::{Job, JobState};
use crate::offboarding::{check_export, shredded, ExportCipher, ExportRecipient};
use crate::purpose::Purpose;
use crate::store::{AuditFilter, OffboardingReadTx, WriteTx};

/// Records per page of an export: one transaction, one audit entry naming
/// its tokens, one chunk of ciphertext at most a few tens of KiB.
pub const EXPORT_PAGE: u32 = 1_000;

/// Sealed records a shred deletes per transaction.
const SHRED_PAGE: u32 = 5_000;

/// Filing jobs read per page when a shred looks for open ones.
const JOB_PAGE: u32 = 100;

/// Open jobs a refused shred names; the rest are counted.
const NAMED_JOBS: usize = 5;

/// An export under way: where it stands, and the age file being written.
/// Not `Debug`: it holds the tenant's keys.
pub struct TenantExport {
    job_id: JobId,
    tenant: TenantId,
    /// Records created up to here (the job's creation) are exported.
    created_until: i64,
    keys: Arc<TenantKeys>,
    /// `None` once the file is finished.
    cipher: Option<ExportCipher>,
    /// What every page's entry says besides its tokens.
    draft: AuditDraft,
    /// Last token exported.
    after: Option<Token>,
    /// The entry of the last page (0 before the first): the job's state
    /// must still name it, or someone changed the job meanwhile.
    last_seq: u64,
    total: u64,
    exported: u64,
}

impl TenantExport {
    /// The tenant exported.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The job it runs under.
    pub fn job_id(&self) -> &JobId {
        &self.job_id
    }

    /// Records exported so far.
    pub fn exported(&self) -> u64 {
        self.exported
    }

    /// The draft every entry of the export starts from (for its refusals).
    pub fn draft(&self) -> &AuditDraft {
        &self.draft
    }
}

/// The next bytes of an export's age file.
#[derive(Debug)]
pub struct ExportChunk {
    /// Ciphertext, to append to what came before.
    pub bytes: Vec<u8>,
    /// Records exported so far, this chunk's included.
    pub records: u64,
    /// Records the export holds in all.
    pub total: u64,
}

/// What a shred did.
#[derive(Debug, Clone)]
pub struct Shredded {
    /// The tenant.
    pub tenant: TenantId,
    /// When its keys were destroyed (Unix ms).
    pub shredded_at: i64,
    /// Sealed records deleted by this call.
    pub records_deleted: u64,
}

/// Refuses a call for `tenant` once it is shredded: checked inside the
/// transaction that would write for it, since another replica may still
/// hold the tenant's keys in its cache.
pub(super) async fn refuse_if_shredded(
    tx: &mut (impl OffboardingReadTx + ?Sized),
    tenant: &TenantId,
) -> Result<(), VaultError> {
    match tx.tenant_shredded_at(tenant).await? {
        Some(at) => Err(shredded(tenant, at)),
        None => Ok(()),
    }
}

impl VaultCore {
    /// Starts exporting the tenant of `job_id` to `recipient`, as a filer.
    /// Nothing is released yet: [`VaultCore::export_next`] does, page by page.
    pub async fn start_export(
        &self,
        caller: &Principal,
        job_id: &JobId,
        recipient: &ExportRecipient,
        draft: &mut AuditDraft,
    ) -> Result<TenantExport, VaultError> {
        let job = self.open_job(caller, job_id, &[Role::Filer], draft).await?;
        // Refused early when it plainly cannot export; decided under the lock.
        check_export(&job, clock::now_ms())?;
        let tenant = job.terms.tenant.clone();
        let keys = self.keyring.tenant_keys(&tenant).await?;
        Ok(TenantExport {
            job_id: job_id.clone(),
            tenant,
            created_until: job.terms.created_at,
            keys,
            cipher: Some(ExportCipher::new(recipient)?),
            draft: draft.clone(),
            after: None,
            last_seq: 0,
            total: 0,
            exported: 0,
        })
    }

    /// The next chunk of `export`, or `None` once the file is complete. Each
    /// page is counted against the job and audited, in one transaction that
    /// commits before its numbers are encrypted and handed out. An error
    /// leaves the file incomplete (it does not decrypt); the job has then
    /// exported and a new one is needed.
    pub async fn export_next(&self, export: &mut TenantExport) -> Result<Option<ExportChunk>, VaultError> {
        let Some(cipher) = export.cipher.as_mut() else { return Ok(None) };
        let tenant = export.tenant.clone();
        let mut tx = self.store.begin_write().await?;
        let (mut job, terms_tag, now) = self.lock_job(tx.as_mut(), &export.job_id).await?;
        check_export(&job, now)?;
        refuse_if_shredded(tx.as_mut(), &tenant).await?;
        if export.last_seq == 0 {
            if let Some(seq) = self.exported_in(tx.as_mut(), &job).await? {
                return Err(VaultError::FailedPrecondition(format!(
                    "filing job {} has already exported tenant \"{tenant}\" (audit entry #{seq}); a tenant-export job \
                     exports once: create a new job",
                    export.job_id
                )));
            }
            export.total = tx.count_tenant_records(&tenant, export.created_until).await?;
        } else if job.state_seq != export.last_seq {
            return Err(VaultError::FailedPrecondition(format!(
                "filing job {} changed during the export, which is therefore incomplete: discard what was received",
                export.job_id
            )));
        }
        let page = tx.tenant_records_page(&tenant, export.after.as_ref(), export.created_until, EXPORT_PAGE).await?;
        let last_page = page.len() < EXPORT_PAGE as usize;
        // Records rotated or rewrapped since the keys were taken (on this
        // replica or another) name a version they lack: read them again once.
        let versions: Vec<u32> =
            page.iter().filter_map(|(_, sealed)| mnvault_keys::sealed_key_version(sealed).ok()).collect();
        export.keys = self.keyring.keys_holding(&tenant, export.keys.clone(), versions).await?;
        let mut opened: Vec<(Token, Zeroizing<String>)> = Vec::with_capacity(page.len());
        for (row, sealed) in &page {
            let record = self.integrity.check_record(&tenant, row, None)?;
            let position = usize::try_from(export.exported).unwrap_or(usize::MAX).saturating_add(opened.len() + 1);
            let number = open_record(&export.keys, &record.token, position, sealed, &row.blind_index)?;
            opened.push((record.token, number));
        }
        drop(page);
        let exported = export.exported + opened.len() as u64;
        if last_page && exported != export.total {
            tracing::error!(job_id = %export.job_id, %tenant, total = export.total, exported,
                "the tenant's records changed during an export");
            return Err(VaultError::DataLoss(format!(
                "tenant \"{tenant}\" held {} record(s) when the export began but {exported} were found; the export \
                 is incomplete: discard it and tell the vault's operator",
                export.total
            )));
        }
        let draft = AuditDraft {
            tokens: opened.iter().map(|(token, _)| token.clone()).collect(),
            record_count: opened.len() as u64,
            ..export.draft.clone()
        };
        // Counted and audited: the entry and the job's new state commit
        // together, before any number of the page is encrypted.
        self.commit_job_change(tx, &mut job, &terms_tag, &draft, now).await?;
        export.last_seq = job.state_seq;
        for (token, number) in &opened {
            cipher.write_record(token, number.as_bytes())?;
        }
        export.exported = exported;
        export.after = opened.last().map(|(token, _)| token.clone());
        drop(opened);
        let bytes = if last_page {
            let mut bytes = cipher.take();
            if let Some(cipher) = export.cipher.take() {
                bytes.extend(cipher.finish()?);
            }
            bytes
        } else {
            cipher.take()
        };
        Ok(Some(ExportChunk { bytes, records: export.exported, total: export.total }))
    }

    /// The entry that exported with `job`, if its state names one: the
    /// entry at its `state_seq`, verified on its own under the chain key.
    async fn exported_in(&self, tx: &mut dyn WriteTx, job: &Job) -> Result<Option<u64>, VaultError> {
        if job.terms.purpose != Purpose::TenantExport || job.state_seq == 0 {
            return Ok(None);
        }
        let job_id = &job.terms.job_id;
        let filter = AuditFilter { after_seq: job.state_seq - 1, limit: 1, ..AuditFilter::default() };
        let entry = tx.audit_entries(&filter).await?.pop().filter(|entry| entry.seq == job.state_seq);
        let Some(entry) = entry else {
            return Err(self.integrity.tampered(format!("the audit entry of filing job {job_id}'s last change")));
        };
        if ChainVerifier::resume(&self.audit_key, entry.seq - 1, entry.prev_hash).check(&entry).is_err() {
            return Err(self.integrity.tampered(format!("the audit entry of filing job {job_id}'s last change")));
        }
        let exported = entry.operation == Operation::ExportTenant.id()
            && entry.outcome == CHANGED.id()
            && entry.job_id == job_id.as_str();
        Ok(exported.then_some(entry.seq))
    }

    /// Shreds `tenant` as an admin: its keys are destroyed and it is marked
    /// shredded in one audited transaction, then its sealed numbers are
    /// deleted page by page. Refused while one of its filing jobs is open.
    /// Asked again after an interrupted shred, it deletes what is left.
    pub async fn shred_tenant(
        &self,
        caller: &Principal,
        tenant: &TenantId,
        draft: &AuditDraft,
    ) -> Result<Shredded, VaultError> {
        self.policy().require(caller, &[Role::KeyAdmin], Some(tenant))?;
        let mut tx = self.store.begin_write().await?;
        let now = clock::now_ms();
        let Some(stored) = tx.tenant(tenant).await? else {
            return Err(VaultError::NotFound(format!("tenant \"{tenant}\" does not exist")));
        };
        let keys_left = !stored.record_keys.is_empty() || !stored.index_key.as_bytes().is_empty();
        drop(stored);
        let left = tx.count_tenant_records(tenant, i64::MAX).await?;
        // `shredded_at` is under no tag: a database writer may set it. It
        // decides nothing here but the refusal of a shred with nothing left
        // to destroy; keys still stored are destroyed whatever it says.
        let shredded_at = match tx.tenant_shredded_at(tenant).await? {
            Some(at) if left == 0 && !keys_left => {
                return Err(VaultError::FailedPrecondition(format!(
                    "tenant \"{tenant}\" was already shredded at {}; nothing of it is left to destroy",
                    clock::rfc3339(at)
                )))
            }
            // An earlier shred was cut short after destroying the keys (or
            // the database was marked by someone else: counted as tampering).
            Some(at) => {
                if keys_left {
                    drop(self.integrity.tampered(format!("the shredded mark of tenant \"{tenant}\"")));
                    tx.shred_tenant_keys(tenant, at).await?;
                }
                at
            }
            None => {
                self.refuse_open_jobs(tx.as_mut(), tenant, now).await?;
                if !tx.shred_tenant_keys(tenant, now).await? {
                    tracing::error!(%tenant, "a tenant read as not shredded was shredded in the same transaction");
                    return Err(VaultError::Internal);
                }
                now
            }
        };
        let draft = AuditDraft { record_count: left, ..draft.clone() };
        append(tx.as_mut(), &self.audit_key, draft, now).await?;
        commit_audited(tx).await?;
        self.keyring.forget(tenant);
        // The keys that opened them are gone; now the ciphertext itself.
        let mut deleted = 0;
        loop {
            let mut tx = self.store.begin_write().await?;
            let count = tx.delete_tenant_records(tenant, SHRED_PAGE).await?;
            tx.commit().await?;
            deleted += count;
            if count < u64::from(SHRED_PAGE) {
                break;
            }
        }
        // Until then the database file itself still holds the pages as they
        // were before the shred (SQLite: beside the WAL that holds them zeroed).
        match self.store.settle_deletions().await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(%tenant, "readers kept the shred's pages from being folded into the database \
                file; the next checkpoint does it"),
            Err(error) => tracing::warn!(%tenant, %error, "could not fold the shred's pages into the database file; \
                the next checkpoint does it"),
        }
        Ok(Shredded { tenant: tenant.clone(), shredded_at, records_deleted: deleted })
    }

    /// Refuses a shred while a filing job of `tenant` is pending or approved
    /// (a tenant-export job that has exported excepted): someone is about
    /// to file with it, and should be asked first.
    async fn refuse_open_jobs(&self, tx: &mut dyn WriteTx, tenant: &TenantId, now: i64) -> Result<(), VaultError> {
        let mut open: Vec<JobId> = Vec::new();
        let mut after = String::new();
        loop {
            let ids = tx.tenant_job_ids(tenant, &after, JOB_PAGE).await?;
            let Some(last) = ids.last() else { break };
            after = last.clone();
            for id in ids {
                let Ok(job_id) = JobId::parse(&id) else { continue };
                // A job that does not verify releases nothing; `audit verify` names it.
                let row = match tx.job(&job_id).await {
                    Ok(Some(row)) => row,
                    Ok(None) | Err(crate::store::StoreError::Corrupt { .. }) => continue,
                    Err(other) => return Err(other.into()),
                };
                let Ok(job) = self.integrity.check_job(row) else { continue };
                if !matches!(job.state(now), JobState::PendingApproval | JobState::Approved) {
                    continue;
                }
                if self.exported_in(tx, &job).await?.is_some() {
                    continue;
                }
                open.push(job_id);
            }
        }
        if open.is_empty() {
            return Ok(());
        }
        let named: Vec<&str> = open.iter().take(NAMED_JOBS).map(JobId::as_str).collect();
        let more = open.len().saturating_sub(NAMED_JOBS);
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        Err(VaultError::FailedPrecondition(format!(
            "tenant \"{tenant}\" has {} open filing job(s) ({}{more}); cancel them (`mnvault job cancel`) or let them \
             expire before shredding it",
            open.len(),
            named.join(", ")
        )))
    }
}
